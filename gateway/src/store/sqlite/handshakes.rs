//! The anti-replay clock of the relay handshake: the last `ClientHello` timestamp accepted
//! per sidecar key. A replayed message 1 carries a timestamp that is not greater, so it is
//! refused before any session is set up.

use super::SqliteStore;
use crate::store::StoreError;
use protocol::identity::PublicKey;
use rusqlite::{OptionalExtension, params};

fn key_hex(key: &PublicKey) -> String {
    key.to_hex()
}

impl SqliteStore {
    /// The last handshake timestamp accepted from this key.
    pub(crate) async fn last_handshake_timestamp(
        &self,
        key: PublicKey,
    ) -> Result<Option<u64>, StoreError> {
        self.run(move |conn| {
            let value: Option<i64> = conn
                .prepare_cached(
                    "SELECT last_timestamp_ms FROM handshake_timestamps WHERE sidecar_public_key = ?1",
                )?
                .query_row(params![key_hex(&key)], |row| row.get(0))
                .optional()?;
            Ok(value.and_then(|v| u64::try_from(v).ok()))
        })
        .await
    }

    /// Records `timestamp_ms` for this key (validated by the handshake that carried it) only if it is strictly greater than the stored
    /// one (compare-and-set in one statement). Returns whether it was recorded.
    pub(crate) async fn accept_handshake_timestamp(
        &self,
        key: PublicKey,
        timestamp_ms: u64,
    ) -> Result<bool, StoreError> {
        let Ok(timestamp) = i64::try_from(timestamp_ms) else {
            return Ok(false);
        };
        self.run(move |conn| {
            let changed = conn
                .prepare_cached(
                    "INSERT INTO handshake_timestamps (sidecar_public_key, last_timestamp_ms) VALUES (?1, ?2)
                 ON CONFLICT(sidecar_public_key) DO UPDATE SET last_timestamp_ms = excluded.last_timestamp_ms
                 WHERE excluded.last_timestamp_ms > handshake_timestamps.last_timestamp_ms",
                )?
                .execute(params![key_hex(&key), timestamp])?;
            Ok(changed > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use protocol::identity::StaticKeypair;

    fn key(byte: u8) -> PublicKey {
        StaticKeypair::from_secret_bytes([byte; 32]).public()
    }

    #[tokio::test]
    async fn handshake_timestamps_strictly_increase() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_handshake_timestamp(key(1)).await.unwrap(), None);
        assert!(store.accept_handshake_timestamp(key(1), 100).await.unwrap());
        assert!(!store.accept_handshake_timestamp(key(1), 100).await.unwrap());
        assert!(!store.accept_handshake_timestamp(key(1), 99).await.unwrap());
        assert!(store.accept_handshake_timestamp(key(1), 101).await.unwrap());
        assert!(
            !store
                .accept_handshake_timestamp(key(1), u64::MAX)
                .await
                .unwrap()
        );
        assert_eq!(
            store.last_handshake_timestamp(key(1)).await.unwrap(),
            Some(101)
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.last_handshake_timestamp(key(1)).await.unwrap(),
            Some(101)
        );
    }
}
