//! What the daemon did lately, kept in memory for the console: the relay connection as it is
//! now, a bounded ring of recent tool calls, and a change signal the console's live stream
//! waits on.
//!
//! Nothing here reaches the state store or the disk, and nothing here holds a call's
//! arguments: a call is its catalog tool name, its outcome code, its duration and its time.
//! Depends on nothing of the console's server, so the relay and the request path can record
//! into it without knowing the console exists.

use crate::session::SharedSession;
use protocol::envelope::Outcome;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Calls kept for the console's "recent tool calls".
pub const RECENT_CALLS: usize = 50;

/// One finished tool call, as the console lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// Unix milliseconds when the call finished.
    pub at_ms: i64,
    /// The catalog's name for the tool, or `unknown tool` for a name the catalog lacks (the
    /// gateway's string is not echoed).
    pub tool: &'static str,
    /// `OK`, `MANUAL_ACTION_REQUIRED`, a refusal or failure code, or `CANCELLED`.
    pub outcome: String,
    pub duration: Duration,
}

/// The relay as the console shows it (live, not the store's last record).
#[derive(Clone, Debug, Default)]
pub struct RelayLive {
    /// The relay session in force, if any: its snapshot says when the last authentic frame
    /// (a heartbeat answer or any other) arrived.
    pub session: Option<SharedSession>,
    /// Relay sessions established since the daemon started.
    pub sessions_established: u64,
    /// Unix seconds when the current (or last) session was established.
    pub connected_at: Option<i64>,
}

impl RelayLive {
    /// Sessions after the first: how often the daemon had to come back.
    pub fn reconnects(&self) -> u64 {
        self.sessions_established.saturating_sub(1)
    }

    /// Age of the last authenticated frame of the open session.
    pub fn heartbeat_age(&self) -> Option<Duration> {
        let snapshot = self.session.as_ref()?.snapshot();
        (!snapshot.closed)
            .then(|| Instant::now().saturating_duration_since(snapshot.last_authentic))
    }
}

/// The daemon's recent activity. One per daemon, shared through its context.
#[derive(Debug)]
pub struct Activity {
    calls: Mutex<VecDeque<CallRecord>>,
    relay: Mutex<RelayLive>,
    /// Bumped on every change; the console's event streams wait on it (a watch coalesces
    /// bursts, so a slow page never makes the daemon queue anything).
    changed: watch::Sender<u64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            calls: Mutex::new(VecDeque::with_capacity(RECENT_CALLS)),
            relay: Mutex::new(RelayLive::default()),
            changed: watch::channel(0).0,
        }
    }

    /// Tells every open console page that something changed (it fetches its view again).
    /// Anything that changes what the console shows, outside a relayed call, calls this.
    pub fn notify(&self) {
        self.changed
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// A receiver that sees every later [`Activity::notify`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Starts timing a call; the guard records it when finished (or as `CANCELLED` when the
    /// call is dropped, e.g. the gateway gave up on it).
    pub fn start_call<'a>(&'a self, tool_name: &str) -> CallTimer<'a> {
        CallTimer {
            activity: self,
            tool: protocol::catalog::find(tool_name).map_or("unknown tool", |spec| spec.name),
            started: Instant::now(),
            done: false,
        }
    }

    fn push_call(&self, record: CallRecord) {
        if let Ok(mut calls) = self.calls.lock() {
            if calls.len() == RECENT_CALLS {
                calls.pop_back();
            }
            calls.push_front(record);
        }
        self.notify();
    }

    /// Recent calls, newest first.
    pub fn recent_calls(&self) -> Vec<CallRecord> {
        self.calls
            .lock()
            .map(|calls| calls.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A relay session was established (after key confirmation).
    pub fn relay_connected(&self, session: SharedSession) {
        if let Ok(mut relay) = self.relay.lock() {
            relay.session = Some(session);
            relay.sessions_established = relay.sessions_established.saturating_add(1);
            relay.connected_at = Some(crate::clock::now_unix_seconds());
        }
        self.notify();
    }

    /// The relay session ended.
    pub fn relay_disconnected(&self) {
        if let Ok(mut relay) = self.relay.lock() {
            relay.session = None;
        }
        self.notify();
    }

    pub fn relay(&self) -> RelayLive {
        self.relay
            .lock()
            .map(|relay| relay.clone())
            .unwrap_or_default()
    }
}

/// Times one call; see [`Activity::start_call`].
pub struct CallTimer<'a> {
    activity: &'a Activity,
    tool: &'static str,
    started: Instant,
    done: bool,
}

impl CallTimer<'_> {
    pub fn finish(mut self, outcome: &Outcome) {
        self.done = true;
        self.record(outcome_code(outcome).to_string());
    }

    fn record(&self, outcome: String) {
        self.activity.push_call(CallRecord {
            at_ms: crate::trading::now_ms(),
            tool: self.tool,
            outcome,
            duration: self.started.elapsed(),
        });
    }
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record(shared_safety::ErrorCode::Cancelled.code().to_string());
        }
    }
}

/// The code the console shows for an outcome: never its detail, which may quote the agent.
pub fn outcome_code(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Result { .. } => "OK",
        Outcome::ManualActionRequired(_) => "MANUAL_ACTION_REQUIRED",
        Outcome::Refused(body) | Outcome::Failed(body) => &body.code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_safety::ErrorCode;

    #[test]
    fn the_ring_keeps_the_newest_calls_and_never_a_foreign_tool_name() {
        let activity = Activity::new();
        for _ in 0..RECENT_CALLS + 5 {
            activity
                .start_call("ibkr_quote")
                .finish(&Outcome::Result { json: "{}".into() });
        }
        activity.start_call("ibkr_buy").finish(&Outcome::Refused(
            ErrorCode::TradingPaused.body(Some("(lunch)")),
        ));
        activity
            .start_call("<script>alert(1)</script>")
            .finish(&Outcome::Refused(ErrorCode::ToolUnknown.body(None)));
        drop(activity.start_call("ibkr_wait_for_fill"));
        let calls = activity.recent_calls();
        assert_eq!(calls.len(), RECENT_CALLS);
        assert_eq!(calls[0].tool, "ibkr_wait_for_fill");
        assert_eq!(calls[0].outcome, "CANCELLED");
        assert_eq!(calls[1].tool, "unknown tool");
        assert_eq!(calls[2].tool, "ibkr_buy");
        assert_eq!(calls[2].outcome, "TRADING_PAUSED");
        assert_eq!(calls[3].outcome, "OK");
    }

    #[test]
    fn every_change_wakes_a_subscriber() {
        let activity = Activity::new();
        let mut changes = activity.subscribe();
        assert!(!changes.has_changed().unwrap());
        activity
            .start_call("ibkr_health")
            .finish(&Outcome::Result { json: "{}".into() });
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        activity.relay_disconnected();
        assert!(changes.has_changed().unwrap());
        assert_eq!(activity.relay().reconnects(), 0);
        assert!(activity.relay().heartbeat_age().is_none());
    }
}
