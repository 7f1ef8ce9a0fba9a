//! MCP sessions every replica can serve (cluster store only): a session created on one
//! replica is recorded in PostgreSQL with its owner and the client's `initialize`
//! parameters, and a replica that meets its `Mcp-Session-Id` for the first time rebuilds it
//! from there (rmcp replays the `initialize` handshake into a fresh local session).
//!
//! - The owner is checked before anything is rebuilt: a session id is served only to the
//!   subject that created it, on every replica, as on one.
//! - A row is keyed by a SHA-256 digest of the session id, so the table never holds an id a
//!   reader could present.
//! - A replica stamps a session it serves at most once per sweep interval, and learns then
//!   that a session was deleted or expired elsewhere; every replica forgets rows idle for
//!   longer than the idle timeout.
//! - Every database wait is bounded by [`SHARED_WAIT`]. Through an outage a replica keeps
//!   serving the sessions it already holds, and a session it does not hold is answered as
//!   unknown (404), which makes the client start a new one.

use crate::clock::unix_ms;
use crate::store::{PostgresStore, StoreError};
use rmcp::transport::streamable_http_server::session::{
    SessionState, SessionStore, SessionStoreError,
};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Longest wait on the shared database for a session lookup or stamp.
pub const SHARED_WAIT: Duration = Duration::from_secs(1);

pub struct SharedSessions {
    store: PostgresStore,
    idle_timeout: Duration,
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSessions").finish_non_exhaustive()
    }
}

fn digest(session_id: &str) -> [u8; 32] {
    Sha256::digest(session_id.as_bytes()).into()
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

async fn bounded<T>(
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    crate::store::postgres::within(SHARED_WAIT, operation).await
}

impl SharedSessions {
    pub fn new(store: PostgresStore, idle_timeout: Duration) -> SharedSessions {
        SharedSessions {
            store,
            idle_timeout,
        }
    }

    /// Records that `subject` created `session_id`.
    pub async fn record_owner(&self, session_id: &str, subject: &str) -> Result<(), StoreError> {
        bounded(
            self.store
                .record_mcp_session_owner(&digest(session_id), subject, unix_ms()),
        )
        .await
    }

    /// Whether another replica's session `session_id` may be served here to `subject`: it
    /// exists, is `subject`'s, has its `initialize` parameters and is not idle past the
    /// timeout. Stamps it as used if so.
    pub async fn adopt(&self, session_id: &str, subject: &str) -> Result<bool, StoreError> {
        let key = digest(session_id);
        let Some(stored) = bounded(self.store.mcp_session(&key)).await? else {
            return Ok(false);
        };
        let now = unix_ms();
        let fresh = now.saturating_sub(stored.last_used_at_ms) < duration_ms(self.idle_timeout);
        if stored.subject.as_deref() != Some(subject)
            || stored.initialize_params.is_none()
            || !fresh
        {
            return Ok(false);
        }
        bounded(self.store.touch_mcp_session(&key, subject, now)).await
    }

    /// Stamps a session this replica serves; `false` when it is gone from the shared store.
    pub async fn touch(&self, session_id: &str, subject: &str) -> Result<bool, StoreError> {
        bounded(
            self.store
                .touch_mcp_session(&digest(session_id), subject, unix_ms()),
        )
        .await
    }

    /// Deletes a session's row (the client's `DELETE`), so no replica rebuilds it.
    pub async fn delete(&self, session_id: &str) -> Result<(), StoreError> {
        bounded(self.store.delete_mcp_session(&digest(session_id))).await
    }

    /// Which of `session_ids` the shared store still holds (the others were deleted or
    /// expired through some replica).
    pub async fn still_shared<'a>(
        &self,
        session_ids: &[&'a str],
    ) -> Result<Vec<&'a str>, StoreError> {
        let digests: Vec<Vec<u8>> = session_ids.iter().map(|id| digest(id).to_vec()).collect();
        let existing = bounded(self.store.existing_mcp_sessions(&digests)).await?;
        Ok(session_ids
            .iter()
            .zip(&digests)
            .filter(|(_, digest)| existing.contains(digest))
            .map(|(id, _)| *id)
            .collect())
    }

    /// Forgets sessions idle past the timeout, whichever replica served them last.
    pub async fn expire_idle(&self) -> Result<u64, StoreError> {
        let before = unix_ms().saturating_sub(duration_ms(self.idle_timeout));
        bounded(self.store.expire_mcp_sessions(before)).await
    }
}

/// What rmcp stores after a successful `initialize`, loads to rebuild a session it does not
/// hold (only after the bearer middleware admitted the request through [`SharedSessions::adopt`]),
/// and deletes on the client's `DELETE`.
#[async_trait::async_trait]
impl SessionStore for SharedSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let stored = bounded(self.store.mcp_session(&digest(session_id))).await?;
        let Some(params) = stored.and_then(|stored| stored.initialize_params) else {
            return Ok(None);
        };
        Ok(Some(SessionState::new(serde_json::from_str(&params)?)))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let params = serde_json::to_string(&state.initialize_params)?;
        bounded(
            self.store
                .record_mcp_session_params(&digest(session_id), &params, unix_ms()),
        )
        .await?;
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        bounded(self.store.delete_mcp_session(&digest(session_id))).await?;
        Ok(())
    }
}
