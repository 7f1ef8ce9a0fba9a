//! The gateway's durable state in SQLite: pairing codes, pairings, the last accepted
//! handshake timestamp per sidecar key, and the audit trail of tool calls.
//!
//! The audit trail is written by [`AuditLog`], a second connection owned by the audit writer
//! task, so batched audit commits never hold the lock the request path uses.
//!
//! One connection behind a mutex; every call runs on the blocking pool
//! (`spawn_blocking`) so the async executor never waits on disk. WAL mode plus a busy timeout
//! let the `ibkr-gateway pairing ...` CLI write the same database while a server runs.
//! Writes that must survive a crash (attempt counters, code use) run with `synchronous=FULL`.

pub mod keys;

use protocol::identity::PublicKey;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeroize::Zeroizing;

const DATABASE_FILE: &str = "gateway.sqlite3";
/// 1: pairing codes, pairings, handshake timestamps. 2: + `audit`.
const SCHEMA_VERSION: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store lock was poisoned by a panic")]
    Poisoned,
    #[error("a store task failed to complete")]
    Join,
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
}

/// A pairing between this gateway and one sidecar key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingRecord {
    pub sidecar_id: String,
    pub sidecar_public_key: PublicKey,
    pub user_id: String,
    pub display_name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl PairingRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}

/// A pairing code to store.
#[derive(Debug)]
pub struct NewPairingCode {
    pub code_id: String,
    pub secret: Zeroizing<String>,
    pub user_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub max_attempts: u32,
}

/// The result of looking a code up at `/pair/start`.
#[derive(Debug)]
pub enum CodeCheck {
    /// The attempt was counted; run the PAKE with this secret.
    Accepted {
        user_id: String,
        secret: Zeroizing<String>,
    },
    Unknown,
    Expired,
    Used,
    AttemptsExceeded,
}

/// The result of committing a successful pairing.
#[derive(Debug, PartialEq, Eq)]
pub enum CompleteOutcome {
    Paired(PairingRecord),
    /// The code disappeared (replaced by a newer code with the same id).
    UnknownCode,
    CodeUsed,
    /// Another key holds this sidecar id in an active pairing.
    SidecarIdConflict,
}

/// One `pairing_codes` row as `/pair/start` needs it.
struct CodeRow {
    secret: Option<String>,
    user_id: String,
    expires_at: i64,
    attempts: i64,
    max_attempts: i64,
    used_at: Option<i64>,
}

/// Cloneable handle on the store.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Creates the state directory readable only by its owner.
pub fn ensure_state_dir(state_dir: &Path) -> Result<(), std::io::Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(state_dir)
    }
}

fn create_private_file(path: &Path) -> Result<(), std::io::Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(|_| ())
}

fn key_hex(key: &PublicKey) -> String {
    key.to_hex()
}

fn parse_key(text: &str) -> Result<PublicKey, StoreError> {
    PublicKey::from_hex(text).map_err(|_| StoreError::Corrupt("sidecar public key"))
}

fn pairing_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(PairingRecord, String)> {
    // The key is parsed by the caller so a corrupt row becomes a typed error, not a panic.
    let key_text: String = row.get(1)?;
    Ok((
        PairingRecord {
            sidecar_id: row.get(0)?,
            sidecar_public_key: PublicKey([0u8; 32]),
            user_id: row.get(2)?,
            display_name: row.get(3)?,
            created_at_ms: row.get(4)?,
            revoked_at_ms: row.get(5)?,
        },
        key_text,
    ))
}

fn finish_pairing_row(
    (mut record, key_text): (PairingRecord, String),
) -> Result<PairingRecord, StoreError> {
    record.sidecar_public_key = parse_key(&key_text)?;
    Ok(record)
}

const PAIRING_COLUMNS: &str =
    "sidecar_id, sidecar_public_key, user_id, display_name, created_at, revoked_at";

fn query_pairings(
    conn: &Connection,
    where_clause: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<PairingRecord>, StoreError> {
    let sql = format!("SELECT {PAIRING_COLUMNS} FROM pairings {where_clause}");
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params, pairing_from_row)?;
    let mut records = Vec::new();
    for row in rows {
        records.push(finish_pairing_row(row?)?);
    }
    Ok(records)
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir`. Blocking: call it from
    /// `spawn_blocking` or before the runtime serves traffic.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        ensure_state_dir(state_dir)?;
        let path = state_dir.join(DATABASE_FILE);
        create_private_file(&path)?;
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // WAL lets the CLI and a running server share the file; FULL makes every committed
        // attempt counter and code use survive a power cut.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             PRAGMA foreign_keys=ON;
             CREATE TABLE IF NOT EXISTS pairing_codes (
                 code_id      TEXT PRIMARY KEY,
                 secret       TEXT,
                 user_id      TEXT NOT NULL,
                 created_at   INTEGER NOT NULL,
                 expires_at   INTEGER NOT NULL,
                 attempts     INTEGER NOT NULL DEFAULT 0,
                 max_attempts INTEGER NOT NULL,
                 used_at      INTEGER
             );
             CREATE TABLE IF NOT EXISTS pairings (
                 sidecar_id         TEXT PRIMARY KEY,
                 sidecar_public_key TEXT NOT NULL,
                 user_id            TEXT NOT NULL,
                 display_name       TEXT NOT NULL,
                 created_at         INTEGER NOT NULL,
                 revoked_at         INTEGER
             );
             CREATE INDEX IF NOT EXISTS pairings_by_key ON pairings(sidecar_public_key);
             CREATE INDEX IF NOT EXISTS pairings_by_user ON pairings(user_id);
             CREATE TABLE IF NOT EXISTS handshake_timestamps (
                 sidecar_public_key TEXT PRIMARY KEY,
                 last_timestamp_ms  INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS audit (
                 id            INTEGER PRIMARY KEY AUTOINCREMENT,
                 time_ms       INTEGER NOT NULL,
                 subject       TEXT NOT NULL,
                 token_id_hmac TEXT,
                 client_id     TEXT,
                 tool          TEXT NOT NULL,
                 scope         TEXT,
                 request_id    TEXT,
                 payload_hash  TEXT,
                 sidecar_id    TEXT,
                 outcome       TEXT NOT NULL,
                 latency_ms    INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS audit_by_time ON audit(time_ms);",
        )?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        match version {
            // New file, or version 1 (the tables above were just added): both are current now.
            0 | 1 => conn.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}"))?,
            SCHEMA_VERSION => {}
            _ => return Err(StoreError::Corrupt("unsupported schema version")),
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the blocking pool with the connection locked.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Poisoned)?;
            work(&mut guard)
        })
        .await
        .map_err(|_| StoreError::Join)?
    }

    /// Stores a new code. Returns `false` when a live code already uses this id (the caller
    /// draws a new one). A dead code (used, expired or out of attempts) with the same id is
    /// replaced; old dead codes are purged on the way.
    pub async fn insert_pairing_code(&self, code: NewPairingCode) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            // Dead codes older than a week carry no information worth keeping.
            tx.execute(
                "DELETE FROM pairing_codes WHERE expires_at < ?1",
                params![code.created_at_ms - 7 * 86_400_000],
            )?;
            let existing: Option<(Option<i64>, i64, i64, i64)> = tx
                .query_row(
                    "SELECT used_at, expires_at, attempts, max_attempts FROM pairing_codes WHERE code_id = ?1",
                    params![code.code_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            if let Some((used_at, expires_at, attempts, max_attempts)) = existing {
                let live = used_at.is_none()
                    && expires_at > code.created_at_ms
                    && attempts < max_attempts;
                if live {
                    return Ok(false);
                }
                tx.execute(
                    "DELETE FROM pairing_codes WHERE code_id = ?1",
                    params![code.code_id],
                )?;
            }
            tx.execute(
                "INSERT INTO pairing_codes (code_id, secret, user_id, created_at, expires_at, attempts, max_attempts, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, NULL)",
                params![
                    code.code_id,
                    code.secret.as_str(),
                    code.user_id,
                    code.created_at_ms,
                    code.expires_at_ms,
                    i64::from(code.max_attempts)
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Looks a code up for `/pair/start` and, when it is usable, counts the attempt durably
    /// before the PAKE runs, so a crash cannot hand out free guesses.
    pub async fn begin_pairing_attempt(
        &self,
        code_id: String,
        now_ms: i64,
    ) -> Result<CodeCheck, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let row: Option<CodeRow> = tx
                .query_row(
                    "SELECT secret, user_id, expires_at, attempts, max_attempts, used_at
                     FROM pairing_codes WHERE code_id = ?1",
                    params![code_id],
                    |row| {
                        Ok(CodeRow {
                            secret: row.get(0)?,
                            user_id: row.get(1)?,
                            expires_at: row.get(2)?,
                            attempts: row.get(3)?,
                            max_attempts: row.get(4)?,
                            used_at: row.get(5)?,
                        })
                    },
                )
                .optional()?;
            let Some(CodeRow {
                secret,
                user_id,
                expires_at,
                attempts,
                max_attempts,
                used_at,
            }) = row
            else {
                return Ok(CodeCheck::Unknown);
            };
            let secret = secret.map(Zeroizing::new);
            let erase = |tx: &rusqlite::Transaction<'_>| -> Result<(), StoreError> {
                tx.execute(
                    "UPDATE pairing_codes SET secret = NULL WHERE code_id = ?1",
                    params![code_id],
                )?;
                Ok(())
            };
            let check = if now_ms >= expires_at {
                erase(&tx)?;
                CodeCheck::Expired
            } else if used_at.is_some() {
                CodeCheck::Used
            } else if attempts >= max_attempts {
                erase(&tx)?;
                CodeCheck::AttemptsExceeded
            } else {
                match secret {
                    None => CodeCheck::Unknown,
                    Some(secret) => {
                        tx.execute(
                            "UPDATE pairing_codes SET attempts = attempts + 1 WHERE code_id = ?1",
                            params![code_id],
                        )?;
                        if attempts + 1 >= max_attempts {
                            // This is the last attempt: the secret stays only in this
                            // exchange's memory.
                            erase(&tx)?;
                        }
                        CodeCheck::Accepted { user_id, secret }
                    }
                }
            };
            tx.commit()?;
            Ok(check)
        })
        .await
    }

    /// Commits a verified pairing in one transaction: marks the code used and erases its
    /// secret, refuses a sidecar id held by another active key, retires other active
    /// pairings of the same key (one key, one active pairing) and upserts the record.
    pub async fn complete_pairing(
        &self,
        code_id: String,
        sidecar_id: String,
        sidecar_public_key: PublicKey,
        display_name: String,
        now_ms: i64,
    ) -> Result<CompleteOutcome, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let code: Option<(String, Option<i64>)> = tx
                .query_row(
                    "SELECT user_id, used_at FROM pairing_codes WHERE code_id = ?1",
                    params![code_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((user_id, used_at)) = code else {
                return Ok(CompleteOutcome::UnknownCode);
            };
            if used_at.is_some() {
                return Ok(CompleteOutcome::CodeUsed);
            }
            let holder: Option<(String, Option<i64>)> = tx
                .query_row(
                    "SELECT sidecar_public_key, revoked_at FROM pairings WHERE sidecar_id = ?1",
                    params![sidecar_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let key_text = key_hex(&sidecar_public_key);
            if let Some((holder_key, revoked_at)) = holder
                && holder_key != key_text && revoked_at.is_none() {
                    return Ok(CompleteOutcome::SidecarIdConflict);
                }
            tx.execute(
                "UPDATE pairing_codes SET used_at = ?2, secret = NULL WHERE code_id = ?1",
                params![code_id, now_ms],
            )?;
            tx.execute(
                "UPDATE pairings SET revoked_at = ?3
                 WHERE sidecar_public_key = ?1 AND sidecar_id <> ?2 AND revoked_at IS NULL",
                params![key_text, sidecar_id, now_ms],
            )?;
            tx.execute(
                "INSERT INTO pairings (sidecar_id, sidecar_public_key, user_id, display_name, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL)
                 ON CONFLICT(sidecar_id) DO UPDATE SET
                     sidecar_public_key = excluded.sidecar_public_key,
                     user_id = excluded.user_id,
                     display_name = excluded.display_name,
                     created_at = excluded.created_at,
                     revoked_at = NULL",
                params![sidecar_id, key_text, user_id, display_name, now_ms],
            )?;
            tx.commit()?;
            Ok(CompleteOutcome::Paired(PairingRecord {
                sidecar_id,
                sidecar_public_key,
                user_id,
                display_name,
                created_at_ms: now_ms,
                revoked_at_ms: None,
            }))
        })
        .await
    }

    /// The active pairing of a sidecar key, if any.
    pub async fn active_pairing_by_key(
        &self,
        key: PublicKey,
    ) -> Result<Option<PairingRecord>, StoreError> {
        self.run(move |conn| {
            let mut records = query_pairings(
                conn,
                "WHERE sidecar_public_key = ?1 AND revoked_at IS NULL ORDER BY created_at DESC",
                params![key_hex(&key)],
            )?;
            Ok(if records.is_empty() {
                None
            } else {
                Some(records.swap_remove(0))
            })
        })
        .await
    }

    /// The active pairings serving an OAuth subject.
    pub async fn active_pairings_for_user(
        &self,
        user_id: String,
    ) -> Result<Vec<PairingRecord>, StoreError> {
        self.run(move |conn| {
            query_pairings(
                conn,
                "WHERE user_id = ?1 AND revoked_at IS NULL ORDER BY created_at DESC",
                params![user_id],
            )
        })
        .await
    }

    /// Whether `sidecar_id` is paired to `key` and not revoked.
    pub async fn pairing_is_active(
        &self,
        sidecar_id: String,
        key: PublicKey,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let found: Option<i64> = conn
                .query_row(
                    "SELECT 1 FROM pairings WHERE sidecar_id = ?1 AND sidecar_public_key = ?2 AND revoked_at IS NULL",
                    params![sidecar_id, key_hex(&key)],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(found.is_some())
        })
        .await
    }

    /// Every pairing, newest first, revoked ones included.
    pub async fn list_pairings(&self) -> Result<Vec<PairingRecord>, StoreError> {
        self.run(|conn| query_pairings(conn, "ORDER BY created_at DESC", []))
            .await
    }

    /// Revokes a pairing. Returns `false` if no active pairing has this id.
    pub async fn revoke_pairing(
        &self,
        sidecar_id: String,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE pairings SET revoked_at = ?2 WHERE sidecar_id = ?1 AND revoked_at IS NULL",
                params![sidecar_id, now_ms],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// A cheap round trip to the database (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            let _: i64 = conn.query_row("SELECT 1", [], |row| row.get(0))?;
            Ok(())
        })
        .await
    }

    /// For the revocation poll: when the database changed since `seen_version` (another
    /// connection committed: the `pairing` CLI, the audit writer), the set of active
    /// `(sidecar_id, sidecar public key hex)` pairs. Returns the new version either way.
    pub async fn active_pairings_if_changed(
        &self,
        seen_version: Option<i64>,
    ) -> Result<(i64, Option<HashSet<(String, String)>>), StoreError> {
        self.run(move |conn| {
            let version: i64 = conn.query_row("PRAGMA data_version", [], |row| row.get(0))?;
            if seen_version == Some(version) {
                return Ok((version, None));
            }
            let mut statement = conn.prepare_cached(
                "SELECT sidecar_id, sidecar_public_key FROM pairings WHERE revoked_at IS NULL",
            )?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            let mut active = HashSet::new();
            for row in rows {
                active.insert(row?);
            }
            Ok((version, Some(active)))
        })
        .await
    }

    /// The last handshake timestamp accepted from this key.
    pub async fn last_handshake_timestamp(
        &self,
        key: PublicKey,
    ) -> Result<Option<u64>, StoreError> {
        self.run(move |conn| {
            let value: Option<i64> = conn
                .query_row(
                    "SELECT last_timestamp_ms FROM handshake_timestamps WHERE sidecar_public_key = ?1",
                    params![key_hex(&key)],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(value.and_then(|v| u64::try_from(v).ok()))
        })
        .await
    }

    /// Records `timestamp_ms` for this key only if it is strictly greater than the stored
    /// one (compare-and-set in one statement). Returns whether it was recorded.
    pub async fn accept_handshake_timestamp(
        &self,
        key: PublicKey,
        timestamp_ms: u64,
    ) -> Result<bool, StoreError> {
        let Ok(timestamp) = i64::try_from(timestamp_ms) else {
            return Ok(false);
        };
        self.run(move |conn| {
            let changed = conn.execute(
                "INSERT INTO handshake_timestamps (sidecar_public_key, last_timestamp_ms) VALUES (?1, ?2)
                 ON CONFLICT(sidecar_public_key) DO UPDATE SET last_timestamp_ms = excluded.last_timestamp_ms
                 WHERE excluded.last_timestamp_ms > handshake_timestamps.last_timestamp_ms",
                params![key_hex(&key), timestamp],
            )?;
            Ok(changed > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::identity::StaticKeypair;

    fn key(byte: u8) -> PublicKey {
        StaticKeypair::from_secret_bytes([byte; 32]).public()
    }

    fn code(id: &str, now: i64, ttl_ms: i64, max_attempts: u32) -> NewPairingCode {
        NewPairingCode {
            code_id: id.into(),
            secret: Zeroizing::new("3XW9PT4R".into()),
            user_id: "alice".into(),
            created_at_ms: now,
            expires_at_ms: now + ttl_ms,
            max_attempts,
        }
    }

    fn secret_column(store: &Store, id: &str) -> Option<String> {
        let conn = store.conn.lock().unwrap();
        conn.query_row(
            "SELECT secret FROM pairing_codes WHERE code_id = ?1",
            params![id],
            |row| row.get(0),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn code_expiry_erases_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(
            store
                .insert_pairing_code(code("K7QM", 1_000, 60_000, 5))
                .await
                .unwrap()
        );
        assert!(matches!(
            store
                .begin_pairing_attempt("NOPE".into(), 2_000)
                .await
                .unwrap(),
            CodeCheck::Unknown
        ));
        assert!(matches!(
            store
                .begin_pairing_attempt("K7QM".into(), 61_000)
                .await
                .unwrap(),
            CodeCheck::Expired
        ));
        assert_eq!(secret_column(&store, "K7QM"), None);
    }

    #[tokio::test]
    async fn attempts_are_limited_and_counted_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .insert_pairing_code(code("K7QM", 0, 60_000, 2))
                .await
                .unwrap();
            match store.begin_pairing_attempt("K7QM".into(), 1).await.unwrap() {
                CodeCheck::Accepted { user_id, secret } => {
                    assert_eq!(user_id, "alice");
                    assert_eq!(secret.as_str(), "3XW9PT4R");
                }
                other => panic!("{other:?}"),
            }
        }
        // Reopen: the first attempt was persisted.
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            store.begin_pairing_attempt("K7QM".into(), 2).await.unwrap(),
            CodeCheck::Accepted { .. }
        ));
        // The last attempt erased the secret already.
        assert_eq!(secret_column(&store, "K7QM"), None);
        assert!(matches!(
            store.begin_pairing_attempt("K7QM".into(), 3).await.unwrap(),
            CodeCheck::AttemptsExceeded
        ));
    }

    #[tokio::test]
    async fn codes_are_single_use_and_pairings_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .insert_pairing_code(code("K7QM", 0, 60_000, 5))
                .await
                .unwrap();
            assert!(matches!(
                store.begin_pairing_attempt("K7QM".into(), 1).await.unwrap(),
                CodeCheck::Accepted { .. }
            ));
            let outcome = store
                .complete_pairing("K7QM".into(), "laptop-1".into(), key(1), "laptop".into(), 5)
                .await
                .unwrap();
            assert!(matches!(outcome, CompleteOutcome::Paired(_)));
            assert_eq!(secret_column(&store, "K7QM"), None);
            assert_eq!(
                store
                    .complete_pairing("K7QM".into(), "laptop-1".into(), key(1), "laptop".into(), 6)
                    .await
                    .unwrap(),
                CompleteOutcome::CodeUsed
            );
            assert!(matches!(
                store.begin_pairing_attempt("K7QM".into(), 7).await.unwrap(),
                CodeCheck::Used
            ));
        }
        let store = Store::open(dir.path()).unwrap();
        let record = store.active_pairing_by_key(key(1)).await.unwrap().unwrap();
        assert_eq!(record.sidecar_id, "laptop-1");
        assert_eq!(record.user_id, "alice");
        assert_eq!(
            store
                .active_pairings_for_user("alice".into())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .pairing_is_active("laptop-1".into(), key(1))
                .await
                .unwrap()
        );

        // A second code for the same user, a different key, the same sidecar id: conflict.
        store
            .insert_pairing_code(code("AB12", 10, 60_000, 5))
            .await
            .unwrap();
        assert_eq!(
            store
                .complete_pairing("AB12".into(), "laptop-1".into(), key(2), "other".into(), 11)
                .await
                .unwrap(),
            CompleteOutcome::SidecarIdConflict
        );
        // After revocation the id is free again.
        assert!(store.revoke_pairing("laptop-1".into(), 12).await.unwrap());
        assert!(!store.revoke_pairing("laptop-1".into(), 13).await.unwrap());
        assert!(store.active_pairing_by_key(key(1)).await.unwrap().is_none());
        assert!(matches!(
            store
                .complete_pairing("AB12".into(), "laptop-1".into(), key(2), "other".into(), 14)
                .await
                .unwrap(),
            CompleteOutcome::Paired(_)
        ));
        assert_eq!(store.list_pairings().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_live_code_id_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(
            store
                .insert_pairing_code(code("K7QM", 0, 60_000, 5))
                .await
                .unwrap()
        );
        assert!(
            !store
                .insert_pairing_code(code("K7QM", 1, 60_000, 5))
                .await
                .unwrap()
        );
        // Once expired, the id can be reused.
        assert!(
            store
                .insert_pairing_code(code("K7QM", 70_000, 60_000, 5))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_version_one_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            conn.execute_batch("DROP TABLE audit; PRAGMA user_version=1;")
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(
            crate::audit::log::tail(&store, 10)
                .await
                .unwrap()
                .is_empty()
        );
        {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            conn.execute_batch("PRAGMA user_version=99;").unwrap();
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Corrupt(_))
        ));
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
