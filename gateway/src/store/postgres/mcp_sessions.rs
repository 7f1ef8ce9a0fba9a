//! MCP sessions (`Mcp-Session-Id`) every replica can read: who owns each, the client's
//! `initialize` parameters (from which any replica rebuilds the session), and when it was last
//! used. Rows are keyed by a digest of the session id, never the id itself.

use super::PostgresStore;
use crate::store::StoreError;

/// One stored session, as read back.
#[derive(Clone, Debug)]
pub struct StoredMcpSession {
    /// The OAuth subject that created it; `None` only between rmcp storing the parameters and
    /// the gateway recording the owner (a session without an owner serves nobody).
    pub subject: Option<String>,
    pub initialize_params: Option<String>,
    pub last_used_at_ms: i64,
}

impl PostgresStore {
    /// Records who owns a session. Never changes an owner already recorded.
    pub(crate) async fn record_mcp_session_owner(
        &self,
        digest: &[u8],
        subject: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO mcp_sessions (session_digest, subject, created_at, last_used_at)
                 VALUES ($1, $2, $3, $3)
                 ON CONFLICT (session_digest) DO UPDATE SET subject = EXCLUDED.subject
                     WHERE mcp_sessions.subject IS NULL",
            )
            .await?;
        client
            .execute(&statement, &[&digest, &subject, &now_ms])
            .await?;
        Ok(())
    }

    /// Records a session's `initialize` parameters (JSON). Never replaces recorded ones.
    pub(crate) async fn record_mcp_session_params(
        &self,
        digest: &[u8],
        params_json: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO mcp_sessions (session_digest, initialize_params, created_at, last_used_at)
                 VALUES ($1, $2, $3, $3)
                 ON CONFLICT (session_digest) DO UPDATE
                     SET initialize_params = EXCLUDED.initialize_params
                     WHERE mcp_sessions.initialize_params IS NULL",
            )
            .await?;
        client
            .execute(&statement, &[&digest, &params_json, &now_ms])
            .await?;
        Ok(())
    }

    pub(crate) async fn mcp_session(
        &self,
        digest: &[u8],
    ) -> Result<Option<StoredMcpSession>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT subject, initialize_params, last_used_at FROM mcp_sessions
                 WHERE session_digest = $1",
            )
            .await?;
        Ok(client
            .query_opt(&statement, &[&digest])
            .await?
            .map(|row| StoredMcpSession {
                subject: row.get(0),
                initialize_params: row.get(1),
                last_used_at_ms: row.get(2),
            }))
    }

    /// Stamps a session of `subject` as used; `false` when it is gone (deleted or expired by
    /// any replica) or not `subject`'s.
    pub(crate) async fn touch_mcp_session(
        &self,
        digest: &[u8],
        subject: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE mcp_sessions SET last_used_at = GREATEST(last_used_at, $3)
                 WHERE session_digest = $1 AND subject = $2",
            )
            .await?;
        Ok(client
            .execute(&statement, &[&digest, &subject, &now_ms])
            .await?
            == 1)
    }

    pub(crate) async fn delete_mcp_session(&self, digest: &[u8]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("DELETE FROM mcp_sessions WHERE session_digest = $1")
            .await?;
        client.execute(&statement, &[&digest]).await?;
        Ok(())
    }

    /// Which of `digests` the table still holds.
    pub(crate) async fn existing_mcp_sessions(
        &self,
        digests: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT session_digest FROM mcp_sessions WHERE session_digest = ANY($1)",
            )
            .await?;
        Ok(client
            .query(&statement, &[&digests])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }

    /// Forgets sessions last used before `before_ms`. Returns how many.
    pub(crate) async fn expire_mcp_sessions(&self, before_ms: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("DELETE FROM mcp_sessions WHERE last_used_at < $1")
            .await?;
        Ok(client.execute(&statement, &[&before_ms]).await?)
    }
}
