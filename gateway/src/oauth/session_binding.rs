//! Binds each MCP session (`Mcp-Session-Id`) to the OAuth subject that created it.
//!
//! Every request is authorized by its own token, so a borrowed session id grants no extra
//! tool access; the binding additionally keeps one user from attaching to another user's
//! session stream at all. A session id used under a different subject is answered as if it
//! did not exist (404), which reveals nothing about other users' sessions.
//!
//! The map is bounded; when it overflows it is cleared, and sessions then re-bind to the first
//! subject rmcp serves them to (they are random 128-bit ids, so this only matters for a
//! leaked id).

use std::collections::HashMap;
use std::sync::Mutex;

const MAX_SESSIONS: usize = 100_000;

#[derive(Debug, Default)]
pub struct SessionOwners {
    owners: Mutex<HashMap<String, String>>,
}

impl SessionOwners {
    pub fn new() -> SessionOwners {
        SessionOwners::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Plain strings; a panic elsewhere cannot leave them half-written.
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `subject` may use `session_id`: refused only when another subject owns it.
    /// Unknown ids are not bound here (rmcp answers 404 for ids it does not know); a client
    /// cannot pre-claim ids it made up.
    pub fn permit(&self, session_id: &str, subject: &str) -> bool {
        self.map()
            .get(session_id)
            .is_none_or(|owner| owner == subject)
    }

    /// Binds a session rmcp served but the map did not know (after an overflow cleared it).
    pub fn bind_if_unknown(&self, session_id: &str, subject: &str) {
        let mut owners = self.map();
        if owners.contains_key(session_id) {
            return;
        }
        if owners.len() >= MAX_SESSIONS {
            owners.clear();
        }
        owners.insert(session_id.to_string(), subject.to_string());
    }

    /// Records the owner of a session the server just created.
    pub fn bind(&self, session_id: &str, subject: &str) {
        let mut owners = self.map();
        if owners.len() >= MAX_SESSIONS {
            owners.clear();
        }
        owners.insert(session_id.to_string(), subject.to_string());
    }

    /// Forgets a session (after the client deleted it).
    pub fn forget(&self, session_id: &str) {
        self.map().remove(session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_serves_only_its_subject() {
        let owners = SessionOwners::new();
        owners.bind("s1", "alice");
        assert!(owners.permit("s1", "alice"));
        assert!(!owners.permit("s1", "bob"));
        owners.forget("s1");
        // Unknown ids are not claimed by asking.
        assert!(owners.permit("s1", "bob"));
        assert!(owners.permit("s1", "alice"));
        owners.bind_if_unknown("s1", "bob");
        owners.bind_if_unknown("s1", "alice");
        assert!(!owners.permit("s1", "alice"));
    }
}
