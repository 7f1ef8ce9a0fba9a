//! Which sidecar sessions the gateway holds, from its own session events, and when each user's
//! session was disturbed (reconnecting, restarting, dropped).
//!
//! A call that ends in an error is *explained* when it overlapped a disturbance of its user's
//! session: from the moment the soak asked for a reconnect (or the gateway reported a drop) to
//! the gateway's registration of the new session, plus [`GRACE`]. Any other error answer is
//! unexplained, and reported as such.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// After a session registers again, how long errors of calls caught in the change still count
/// as explained: a replaced session's calls are failed just after its successor registered.
pub(super) const GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    end: Option<Instant>,
}

#[derive(Default)]
struct UserState {
    registrations: u64,
    windows: Vec<Window>,
}

impl UserState {
    fn open(&mut self, at: Instant) {
        if self
            .windows
            .last()
            .is_none_or(|window| window.end.is_some())
        {
            self.windows.push(Window {
                start: at,
                end: None,
            });
        }
    }

    fn close(&mut self, at: Instant) {
        if let Some(window) = self.windows.last_mut()
            && window.end.is_none()
        {
            window.end = Some(at);
        }
    }

    fn commanded_open(&self) -> bool {
        self.windows
            .last()
            .is_some_and(|window| window.end.is_none())
    }
}

#[derive(Default)]
struct State {
    /// Sessions per sidecar id (registrations minus drops), with their user. Counting rather
    /// than flagging keeps a replaced session's drop, which may come after its successor's
    /// registration, from hiding the successor.
    sessions: HashMap<String, (String, i64)>,
    users: HashMap<String, UserState>,
    /// Drops the soak did not ask for: (user, reason).
    unexpected_drops: Vec<(String, String)>,
    drops_by_reason: HashMap<String, u64>,
    registrations: u64,
    /// Session events the gateway helper could not deliver (its channel lagged).
    lagged: u64,
    /// The soak is stopping everything: drops are expected and no longer counted.
    tearing_down: bool,
}

pub(super) struct Tracker {
    state: Mutex<State>,
    /// Bumped on every registration and drop.
    changed: watch::Sender<u64>,
}

/// What the tracker saw, for the report.
#[derive(Clone, Debug, Default)]
pub(super) struct TrackerSummary {
    pub registrations: u64,
    pub drops_by_reason: Vec<(String, u64)>,
    pub unexpected_drops: Vec<(String, String)>,
    pub lagged: u64,
    pub windows: usize,
}

impl Tracker {
    pub(super) fn new() -> Self {
        Tracker {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The gateway registered a session.
    pub(super) fn registered(&self, sidecar_id: &str, user: &str, at: Instant) {
        {
            let mut state = self.state();
            state.registrations += 1;
            let entry = state
                .sessions
                .entry(sidecar_id.to_string())
                .or_insert_with(|| (user.to_string(), 0));
            entry.1 += 1;
            let user_state = state.users.entry(user.to_string()).or_default();
            user_state.registrations += 1;
            user_state.close(at);
        }
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// The gateway dropped a session. While another session of the sidecar is registered (a
    /// replaced one), nothing is disturbed: its calls' errors fall in the successor's window
    /// and grace.
    pub(super) fn dropped(&self, sidecar_id: &str, reason: &str, at: Instant) {
        self.note_drop(sidecar_id, reason, at);
        self.changed.send_modify(|generation| *generation += 1);
    }

    fn note_drop(&self, sidecar_id: &str, reason: &str, at: Instant) {
        let mut state = self.state();
        if state.tearing_down {
            return;
        }
        *state.drops_by_reason.entry(reason.to_string()).or_default() += 1;
        let Some((user, sessions)) = state.sessions.get_mut(sidecar_id) else {
            return;
        };
        *sessions -= 1;
        if *sessions > 0 {
            return;
        }
        let user = user.clone();
        let user_state = state.users.entry(user.clone()).or_default();
        let expected = user_state.commanded_open();
        user_state.open(at);
        if !expected {
            state.unexpected_drops.push((user, reason.to_string()));
        }
    }

    /// From now on the soak stops sessions itself.
    pub(super) fn tear_down(&self) {
        self.state().tearing_down = true;
    }

    /// The soak is about to disturb `user`'s session (reconnect, restart).
    pub(super) fn disturbing(&self, user: &str, at: Instant) {
        self.state()
            .users
            .entry(user.to_string())
            .or_default()
            .open(at);
    }

    pub(super) fn lagged(&self, missed: u64) {
        self.state().lagged += missed;
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Session events the gateway helper could not deliver.
    pub(super) fn missed(&self) -> u64 {
        self.state().lagged
    }

    /// Sidecars with a registered session.
    pub(super) fn live(&self) -> usize {
        self.state()
            .sessions
            .values()
            .filter(|(_, sessions)| *sessions > 0)
            .count()
    }

    pub(super) fn registrations_of(&self, user: &str) -> u64 {
        self.state()
            .users
            .get(user)
            .map_or(0, |user| user.registrations)
    }

    /// Whether a call of `user` from `start` to `end` overlapped a disturbance of its session.
    pub(super) fn explains(&self, user: &str, start: Instant, end: Instant) -> bool {
        let state = self.state();
        let Some(user_state) = state.users.get(user) else {
            return false;
        };
        user_state.windows.iter().any(|window| {
            let until = window.end.map_or(end, |window_end| window_end + GRACE);
            window.start <= end && start <= until
        })
    }

    /// Waits until `predicate` holds, re-checking on every session event.
    pub(super) async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        predicate: impl Fn(&Tracker) -> bool,
    ) -> Result<(), String> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if predicate(self) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(format!("session events ended before {what}")),
                Err(_) => return Err(format!("timed out waiting for {what}")),
            }
        }
    }

    pub(super) fn summary(&self) -> TrackerSummary {
        let state = self.state();
        let mut drops_by_reason: Vec<(String, u64)> = state
            .drops_by_reason
            .iter()
            .map(|(reason, count)| (reason.clone(), *count))
            .collect();
        drops_by_reason.sort();
        TrackerSummary {
            registrations: state.registrations,
            drops_by_reason,
            unexpected_drops: state.unexpected_drops.clone(),
            lagged: state.lagged,
            windows: state.users.values().map(|user| user.windows.len()).sum(),
        }
    }
}
