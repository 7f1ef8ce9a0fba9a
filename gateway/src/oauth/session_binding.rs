//! The MCP sessions (`Mcp-Session-Id`, 2025-11-25 and 2025-06-18 clients): who owns each, how
//! many one user may hold, and when an idle one is closed.
//!
//! - **Owner**: each session is bound to the OAuth subject whose `initialize` created it. Every
//!   request is authorized by its own token, so a borrowed session id grants no extra tool
//!   access; the binding also keeps one user from attaching to another user's session stream
//!   at all. A session id this map does not hold, or holds for another subject, is answered as
//!   if it did not exist (404), which reveals nothing about other users' sessions.
//! - **Per-user cap**: an `initialize` first reserves a slot (so concurrent ones cannot
//!   overshoot); at the cap it is refused with `MCP_SESSION_LIMIT` and a Retry-After that says
//!   when the user's longest-idle session expires.
//! - **Idle expiry**: each request through a session stamps it; [`McpSessions::expire_idle`]
//!   (run by a sweeper) closes sessions idle for longer than the timeout in rmcp's session
//!   manager and forgets them. rmcp's own keep-alive only stops a session's worker and leaves
//!   its entry in the manager's map, so without this sweep an abandoned session would stay
//!   counted and held for ever.
//! - **Across replicas** (cluster store): with [`SharedSessions`] the owner and the client's
//!   `initialize` parameters are also in the shared database, so a replica that does not hold
//!   a session adopts it for its owner (and rmcp rebuilds it) instead of answering 404. The
//!   per-user cap and the idle sweep stay per replica; see `shared_sessions`.

use super::shared_sessions::SharedSessions;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Why a new session was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionLimit {
    /// The user holds `limit` sessions; the first of them expires if idle in `retry_after`.
    PerUser { limit: usize, retry_after: Duration },
    /// The gateway as a whole is full.
    Gateway { retry_after: Duration },
}

struct Entry {
    subject: String,
    last_used: Instant,
    /// When the shared store last confirmed the session (cluster store only).
    shared_checked: Instant,
    /// Whether the shared store holds the session's owner (cluster store only). A session
    /// whose owner could not be recorded serves on this replica only, and is not checked
    /// against the shared store until it is recorded.
    shared_recorded: bool,
}

#[derive(Default)]
struct Usage {
    open: usize,
    reserved: usize,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    per_subject: HashMap<String, Usage>,
    reserved_total: usize,
}

impl Inner {
    fn remove(&mut self, session_id: &str) -> bool {
        let Some(entry) = self.sessions.remove(session_id) else {
            return false;
        };
        if let Some(usage) = self.per_subject.get_mut(&entry.subject) {
            usage.open = usage.open.saturating_sub(1);
            if usage.open == 0 && usage.reserved == 0 {
                self.per_subject.remove(&entry.subject);
            }
        }
        true
    }

    fn insert(&mut self, session_id: &str, subject: &str, now: Instant) {
        if self.sessions.contains_key(session_id) {
            return;
        }
        self.sessions.insert(
            session_id.to_string(),
            Entry {
                subject: subject.to_string(),
                last_used: now,
                shared_checked: now,
                shared_recorded: false,
            },
        );
        self.per_subject
            .entry(subject.to_string())
            .or_default()
            .open += 1;
    }

    fn release(&mut self, subject: &str) {
        self.reserved_total = self.reserved_total.saturating_sub(1);
        if let Some(usage) = self.per_subject.get_mut(subject) {
            usage.reserved = usage.reserved.saturating_sub(1);
            if usage.open == 0 && usage.reserved == 0 {
                self.per_subject.remove(subject);
            }
        }
    }
}

pub struct McpSessions {
    inner: Mutex<Inner>,
    manager: Arc<LocalSessionManager>,
    max_per_subject: usize,
    max_total: usize,
    idle_timeout: Duration,
    shared: Option<Arc<SharedSessions>>,
}

/// What the local map says about a session a request names.
enum Local {
    /// `confirm`: time to check it against the shared store; `recorded`: whether its owner is
    /// there.
    Served {
        confirm: bool,
        recorded: bool,
    },
    Refused,
    Unknown,
}

impl std::fmt::Debug for McpSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpSessions")
            .field("max_per_subject", &self.max_per_subject)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// A slot for one session being created; dropped without [`Reservation::bind`], it is freed.
pub struct Reservation<'a> {
    sessions: &'a McpSessions,
    subject: String,
    bound: bool,
}

impl Reservation<'_> {
    /// The session rmcp created for this reservation.
    pub fn bind(mut self, session_id: &str) {
        let mut inner = self.sessions.lock();
        inner.release(&self.subject);
        inner.insert(session_id, &self.subject, Instant::now());
        self.bound = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.bound {
            self.sessions.lock().release(&self.subject);
        }
    }
}

impl McpSessions {
    pub fn new(
        manager: Arc<LocalSessionManager>,
        max_per_subject: usize,
        max_total: usize,
        idle_timeout: Duration,
    ) -> McpSessions {
        McpSessions {
            inner: Mutex::new(Inner::default()),
            manager,
            max_per_subject,
            max_total,
            idle_timeout,
            shared: None,
        }
    }

    /// The same registry, with sessions shared through the cluster store.
    pub fn shared_through(mut self, shared: SharedSessions) -> McpSessions {
        self.shared = Some(Arc::new(shared));
        self
    }

    /// The store rmcp records sessions in and rebuilds them from (cluster store only).
    pub fn session_store(
        &self,
    ) -> Option<Arc<dyn rmcp::transport::streamable_http_server::session::SessionStore>> {
        self.shared.clone().map(|shared| shared as _)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Counters and strings, each update complete under the lock: a panic elsewhere
        // cannot leave them half-written.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// rmcp's session manager, which this registry closes idle sessions in.
    pub fn manager(&self) -> Arc<LocalSessionManager> {
        Arc::clone(&self.manager)
    }

    /// The sweep period: often enough that an expired session is closed soon after its
    /// timeout, rarely enough to cost nothing.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Whether `subject` may use `session_id`, stamping it as used if so. Refused when the
    /// session is unknown (never created, deleted or expired) or another subject's. With a
    /// shared store, a session another replica created is adopted for its owner, and one this
    /// replica holds is confirmed there once per sweep interval.
    pub async fn permit(&self, session_id: &str, subject: &str) -> bool {
        let now = Instant::now();
        let local = {
            let mut inner = self.lock();
            match inner.sessions.get_mut(session_id) {
                Some(entry) if entry.subject == subject => {
                    entry.last_used = now;
                    Local::Served {
                        confirm: self.shared.is_some()
                            && now.saturating_duration_since(entry.shared_checked)
                                >= self.sweep_interval(),
                        recorded: entry.shared_recorded,
                    }
                }
                Some(_) => Local::Refused,
                None => Local::Unknown,
            }
        };
        let shared = match (local, &self.shared) {
            (Local::Served { confirm: false, .. }, _) => return true,
            (Local::Refused, _) | (Local::Unknown, None) => return false,
            (Local::Served { confirm: true, .. }, None) => return true,
            (
                Local::Served {
                    confirm: true,
                    recorded: false,
                },
                Some(_),
            ) => {
                // Its owner could not be recorded when it was created: try again, and keep
                // serving it here either way.
                self.record_owner(session_id, subject).await;
                self.stamp_checked(session_id, now);
                return true;
            }
            (
                Local::Served {
                    confirm: true,
                    recorded: true,
                },
                Some(shared),
            ) => {
                return match shared.touch(session_id, subject).await {
                    Ok(true) => {
                        self.stamp_checked(session_id, now);
                        true
                    }
                    // Deleted or expired elsewhere: gone here too.
                    Ok(false) => {
                        self.close(session_id).await;
                        false
                    }
                    // Through an outage, a session held here keeps serving its owner.
                    Err(error) => {
                        tracing::debug!(%error, "could not confirm an MCP session in the shared store");
                        true
                    }
                };
            }
            (Local::Unknown, Some(shared)) => shared,
        };
        // Another replica's session: it takes a slot under the caps here, as a new one would.
        let Ok(slot) = self.reserve(subject) else {
            return false;
        };
        match shared.adopt(session_id, subject).await {
            Ok(true) => {
                slot.bind(session_id);
                if let Some(entry) = self.lock().sessions.get_mut(session_id) {
                    entry.shared_recorded = true;
                }
                true
            }
            Ok(false) => false,
            Err(error) => {
                tracing::warn!(%error, "could not read an MCP session from the shared store");
                false
            }
        }
    }

    fn stamp_checked(&self, session_id: &str, now: Instant) {
        if let Some(entry) = self.lock().sessions.get_mut(session_id) {
            entry.shared_checked = now;
        }
    }

    /// Deletes a session from the shared store before the client's `DELETE` closes it here,
    /// so no replica rebuilds it afterwards. `false` when the shared store could not be told
    /// (the session is then left as it is). Always `true` without a shared store.
    pub async fn delete_shared(&self, session_id: &str) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        match shared.delete(session_id).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "could not delete an MCP session from the shared store");
                false
            }
        }
    }

    /// Records in the shared store (if any) that `subject` created `session_id`. A failure
    /// leaves the session serving on this replica only.
    pub async fn record_owner(&self, session_id: &str, subject: &str) {
        let Some(shared) = &self.shared else {
            return;
        };
        match shared.record_owner(session_id, subject).await {
            Ok(()) => {
                if let Some(entry) = self.lock().sessions.get_mut(session_id) {
                    entry.shared_recorded = true;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "MCP session not shared yet: other replicas will not serve it until it is");
            }
        }
    }

    /// Forgets a session here and closes it in rmcp's manager.
    async fn close(&self, session_id: &str) {
        self.lock().remove(session_id);
        let id: rmcp::transport::common::server_side_http::SessionId = session_id.into();
        if let Err(error) = self.manager.close_session(&id).await {
            tracing::debug!(%error, "closing an MCP session");
        }
    }

    /// A slot for a new session of `subject`, or why not.
    pub fn reserve(&self, subject: &str) -> Result<Reservation<'_>, SessionLimit> {
        let mut inner = self.lock();
        let now = Instant::now();
        let held = inner
            .per_subject
            .get(subject)
            .map_or(0, |usage| usage.open + usage.reserved);
        if held >= self.max_per_subject {
            let oldest_use = inner
                .sessions
                .values()
                .filter(|entry| entry.subject == subject)
                .map(|entry| entry.last_used)
                .min()
                .unwrap_or(now);
            let expires_in = (oldest_use + self.idle_timeout).saturating_duration_since(now);
            return Err(SessionLimit::PerUser {
                limit: self.max_per_subject,
                retry_after: expires_in + self.sweep_interval(),
            });
        }
        if inner.sessions.len() + inner.reserved_total >= self.max_total {
            return Err(SessionLimit::Gateway {
                retry_after: self.sweep_interval(),
            });
        }
        inner.reserved_total += 1;
        inner
            .per_subject
            .entry(subject.to_string())
            .or_default()
            .reserved += 1;
        Ok(Reservation {
            sessions: self,
            subject: subject.to_string(),
            bound: false,
        })
    }

    /// Records a session rmcp created without a reservation (it creates them only on
    /// `initialize`, which reserves; this keeps the owner known should that ever change).
    pub fn bind_unreserved(&self, session_id: &str, subject: &str) {
        self.lock().insert(session_id, subject, Instant::now());
    }

    /// Forgets a session the client deleted.
    pub fn forget(&self, session_id: &str) {
        self.lock().remove(session_id);
    }

    /// Sessions `subject` holds now.
    pub fn open_for(&self, subject: &str) -> usize {
        self.lock()
            .per_subject
            .get(subject)
            .map_or(0, |usage| usage.open)
    }

    /// Closes every session idle for longer than the timeout, in rmcp's manager too (which
    /// ends its worker and frees its memory). Returns how many.
    pub async fn expire_idle(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<String> = {
            let mut inner = self.lock();
            let idle: Vec<String> = inner
                .sessions
                .iter()
                .filter(|(_, entry)| {
                    now.saturating_duration_since(entry.last_used) >= self.idle_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &idle {
                inner.remove(id);
            }
            idle
        };
        for id in &expired {
            let id: rmcp::transport::common::server_side_http::SessionId = id.as_str().into();
            if let Err(error) = self.manager.close_session(&id).await {
                tracing::debug!(%error, "closing an idle MCP session");
            }
        }
        // Closing here leaves the shared row: another replica may be serving the session.
        // Rows idle everywhere go here, whichever replica sweeps first.
        let mut closed = expired.len();
        if let Some(shared) = &self.shared {
            if let Err(error) = shared.expire_idle().await {
                tracing::debug!(%error, "could not expire MCP sessions in the shared store");
            }
            closed += self.close_gone(shared).await;
        }
        closed
    }

    /// Closes the sessions held here whose shared row is gone (deleted or expired through
    /// another replica), so they end within a sweep even without a request (an open stream
    /// included).
    async fn close_gone(&self, shared: &SharedSessions) -> usize {
        let held: Vec<String> = self
            .lock()
            .sessions
            .iter()
            .filter(|(_, entry)| entry.shared_recorded)
            .map(|(id, _)| id.clone())
            .collect();
        if held.is_empty() {
            return 0;
        }
        let ids: Vec<&str> = held.iter().map(String::as_str).collect();
        let still = match shared.still_shared(&ids).await {
            Ok(still) => still,
            Err(error) => {
                tracing::debug!(%error, "could not check MCP sessions against the shared store");
                return 0;
            }
        };
        let gone: Vec<&str> = ids.into_iter().filter(|id| !still.contains(id)).collect();
        for id in &gone {
            self.close(id).await;
        }
        gone.len()
    }

    /// Runs [`McpSessions::expire_idle`] every sweep interval until `shutdown`.
    pub fn spawn_sweeper(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let sessions = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(sessions.sweep_interval());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {
                        let expired = sessions.expire_idle().await;
                        if expired > 0 {
                            tracing::debug!(expired, "idle MCP sessions closed");
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(max: usize) -> McpSessions {
        McpSessions::new(
            Arc::new(LocalSessionManager::default()),
            max,
            1_000,
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn a_session_serves_only_its_subject_and_unknown_ids_serve_nobody() {
        let sessions = sessions(4);
        sessions.reserve("alice").unwrap().bind("s1");
        assert!(sessions.permit("s1", "alice").await);
        assert!(!sessions.permit("s1", "bob").await);
        assert!(!sessions.permit("made-up", "alice").await);
        sessions.forget("s1");
        assert!(!sessions.permit("s1", "alice").await);
        assert!(!sessions.permit("s1", "bob").await);
    }

    #[tokio::test]
    async fn the_cap_counts_open_and_reserved_sessions_per_user() {
        let sessions = sessions(2);
        let first = sessions.reserve("alice").unwrap();
        let second = sessions.reserve("alice").unwrap();
        assert!(matches!(
            sessions.reserve("alice").err(),
            Some(SessionLimit::PerUser { limit: 2, .. })
        ));
        // Another user is not affected.
        sessions.reserve("bob").unwrap().bind("b1");
        // A reservation that created nothing frees its slot.
        drop(second);
        first.bind("a1");
        sessions.reserve("alice").unwrap().bind("a2");
        assert_eq!(sessions.open_for("alice"), 2);
        assert!(sessions.reserve("alice").is_err());
        sessions.forget("a1");
        assert!(sessions.reserve("alice").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_session_is_closed_in_rmcps_manager_too() {
        let sessions = sessions(2);
        let manager = sessions.manager();
        let (id, _transport) = manager.create_session().await.unwrap();
        sessions.reserve("alice").unwrap().bind(&id);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(sessions.expire_idle().await, 1);
        assert!(!manager.has_session(&id).await.unwrap());
        assert_eq!(sessions.open_for("alice"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_expire_and_free_their_slot_but_used_ones_stay() {
        let sessions = sessions(2);
        sessions.reserve("alice").unwrap().bind("idle");
        sessions.reserve("alice").unwrap().bind("busy");
        let Err(SessionLimit::PerUser { retry_after, .. }) = sessions.reserve("alice") else {
            panic!("the cap did not hold");
        };
        assert!(retry_after >= Duration::from_secs(60), "{retry_after:?}");
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(sessions.permit("busy", "alice").await);
        assert_eq!(sessions.expire_idle().await, 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(sessions.expire_idle().await, 1);
        assert!(!sessions.permit("idle", "alice").await);
        assert!(sessions.permit("busy", "alice").await);
        assert!(sessions.reserve("alice").is_ok());
    }
}
