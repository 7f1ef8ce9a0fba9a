//! The handshake anti-replay clock in PostgreSQL: one compare-and-set statement per accepted
//! handshake, so a message replayed to another replica is refused as well.

use super::PostgresStore;
use crate::store::StoreError;
use protocol::identity::PublicKey;

impl PostgresStore {
    /// See [`crate::store::Store::last_handshake_timestamp`].
    pub(crate) async fn last_handshake_timestamp(
        &self,
        key: PublicKey,
    ) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT last_timestamp_ms FROM handshake_timestamps WHERE sidecar_public_key = $1",
            )
            .await?;
        let value: Option<i64> = client
            .query_opt(&statement, &[&key.to_hex()])
            .await?
            .map(|row| row.get(0));
        Ok(value.and_then(|v| u64::try_from(v).ok()))
    }

    /// See [`crate::store::Store::accept_handshake_timestamp`].
    pub(crate) async fn accept_handshake_timestamp(
        &self,
        key: PublicKey,
        timestamp_ms: u64,
    ) -> Result<bool, StoreError> {
        let Ok(timestamp) = i64::try_from(timestamp_ms) else {
            return Ok(false);
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO handshake_timestamps (sidecar_public_key, last_timestamp_ms)
                 VALUES ($1, $2)
                 ON CONFLICT (sidecar_public_key) DO UPDATE
                     SET last_timestamp_ms = EXCLUDED.last_timestamp_ms
                     WHERE EXCLUDED.last_timestamp_ms > handshake_timestamps.last_timestamp_ms",
            )
            .await?;
        let changed = client
            .execute(&statement, &[&key.to_hex(), &timestamp])
            .await?;
        Ok(changed > 0)
    }
}
