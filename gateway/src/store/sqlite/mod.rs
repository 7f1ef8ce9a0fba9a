//! The embedded backend: the gateway's state in one SQLite file in its state directory
//! (pairing codes, pairings, the last accepted handshake timestamp per sidecar key, the
//! gateway key's record, and, through the audit trail's own connection, see
//! `crate::audit::log`, the audit table).
//!
//! - [`pairing_codes`]: single-use codes and their attempt counters.
//! - [`pairings`]: who is paired with which key, and the rules that keep a pairing where it
//!   was made (never moved to another user, sidecar id or key).
//! - [`handshakes`]: the strictly increasing handshake timestamp per sidecar key.
//!
//! One connection behind a mutex; every call runs on the blocking pool (`spawn_blocking`) so
//! the async executor never waits on disk. The one exception is the per-call read of the
//! pairings generation: a one-row read on a second, read-only connection of its own, which in
//! WAL mode never waits for a writer. WAL mode plus a busy timeout let the
//! `ibkr-gateway pairing ...` CLI and the audit writer use the same file while a server runs.
//! Every transaction that may write begins IMMEDIATE: a deferred transaction that reads and then
//! writes is answered SQLITE_BUSY at once, without waiting, when another connection holds the
//! write lock, which turned ordinary concurrency into `STATE_STORE_ERROR`. Writes that must
//! survive a crash (attempt counters, code use) run with `synchronous=FULL`.

pub mod handshakes;
pub mod pairing_codes;
pub mod pairings;
pub mod refresh_tokens;

use super::{KeyContinuity, StoreError, create_private_file, ensure_state_dir};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The embedded store's file in `state_dir`.
pub const DATABASE_FILE: &str = "gateway.sqlite3";
/// 1: pairing codes, pairings, handshake timestamps. 2: + `audit`. 3: pairings get a
/// `pairing_id` and at most one active row per sidecar id and per key (enforced by unique
/// partial indexes); revoked rows are kept as history. 4: audit rows are chained
/// (`prev_hash`, `hash`) and carry the pairing and the sidecar journal entry of the call
/// (`pairing_id`, `journal_seq`, `journal_hash`) and an operator `note`; rows from before stay
/// unchained.
/// 5: `gateway_key` records the key the pairings were made with. 6: a pairing ended by a
/// gateway key rotation says so (`revoked_reason`), so its user is told why. 7: the
/// `pairings_generation` counter, raised by triggers on every change of `pairings` (see
/// [`crate::store::pairing_cache`]). 8: the built-in authorization server's refresh tokens.
const SCHEMA_VERSION: i64 = 8;
const REFRESH_TOKENS_TABLE: &str = "CREATE TABLE refresh_tokens (
     digest      BLOB PRIMARY KEY,
     family_id   TEXT NOT NULL,
     client_id   TEXT NOT NULL,
     subject     TEXT NOT NULL,
     scopes      TEXT NOT NULL,
     resource    TEXT NOT NULL,
     approval_id TEXT NOT NULL,
     created_at  INTEGER NOT NULL,
     expires_at  INTEGER NOT NULL,
     used_at     INTEGER,
     revoked_at  INTEGER
 );
 CREATE INDEX refresh_tokens_by_family ON refresh_tokens(family_id);
 CREATE INDEX refresh_tokens_by_approval ON refresh_tokens(approval_id);";
/// How long a connection waits for another one's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Cloneable handle on the SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Read-only, for the per-call read of the pairings generation only (held for
    /// microseconds, so the async thread can use it).
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Opens a connection to the database file with the settings every connection uses.
pub(crate) fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    Ok(conn)
}

/// A transaction that takes the write lock at once (waiting on the busy handler), for any
/// work that may write.
pub(crate) fn write_transaction(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

const PAIRING_CODES_TABLE: &str = "CREATE TABLE pairing_codes (
     code_id      TEXT PRIMARY KEY,
     secret       TEXT,
     user_id      TEXT NOT NULL,
     created_at   INTEGER NOT NULL,
     expires_at   INTEGER NOT NULL,
     attempts     INTEGER NOT NULL DEFAULT 0,
     max_attempts INTEGER NOT NULL,
     used_at      INTEGER
 );";

const PAIRINGS_TABLE_V3: &str = "CREATE TABLE pairings (
     pairing_id         TEXT PRIMARY KEY,
     sidecar_id         TEXT NOT NULL,
     sidecar_public_key TEXT NOT NULL,
     user_id            TEXT NOT NULL,
     display_name       TEXT NOT NULL,
     created_at         INTEGER NOT NULL,
     revoked_at         INTEGER
 );
 CREATE UNIQUE INDEX pairings_active_sidecar_id ON pairings(sidecar_id) WHERE revoked_at IS NULL;
 CREATE UNIQUE INDEX pairings_active_key ON pairings(sidecar_public_key) WHERE revoked_at IS NULL;
 CREATE INDEX pairings_by_user ON pairings(user_id);";

const HANDSHAKES_TABLE: &str = "CREATE TABLE handshake_timestamps (
     sidecar_public_key TEXT PRIMARY KEY,
     last_timestamp_ms  INTEGER NOT NULL
 );";

const AUDIT_TABLE: &str = "CREATE TABLE audit (
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
 CREATE INDEX audit_by_time ON audit(time_ms);";

/// Version 3 -> 4: the audit chain and journal anchor columns, and the index the handshake
/// reads the newest anchor of a pairing through.
const AUDIT_V3_TO_V4: &str = "ALTER TABLE audit ADD COLUMN pairing_id TEXT;
 ALTER TABLE audit ADD COLUMN journal_seq INTEGER;
 ALTER TABLE audit ADD COLUMN journal_hash TEXT;
 ALTER TABLE audit ADD COLUMN note TEXT;
 ALTER TABLE audit ADD COLUMN prev_hash TEXT;
 ALTER TABLE audit ADD COLUMN hash TEXT;
 CREATE INDEX audit_journal_anchor ON audit(pairing_id, journal_seq)
     WHERE journal_seq IS NOT NULL;";

/// Version 2 -> 3: pairings keyed by a pairing id, with history kept. Version 2 allowed one
/// row per sidecar id and retired other active rows of a key on every pairing, so the unique
/// active indexes hold for the copied rows.
const PAIRINGS_V2_TO_V3: &str = "ALTER TABLE pairings RENAME TO pairings_v2;
 DROP INDEX IF EXISTS pairings_by_key;
 DROP INDEX IF EXISTS pairings_by_user;";

/// Version 4 -> 5: the public key the gateway's pairings were made with (one row).
const PAIRINGS_V5_TO_V6: &str = "ALTER TABLE pairings ADD COLUMN revoked_reason TEXT;";

/// Version 6 -> 7: a counter that every change of `pairings` raises, in the writer's own
/// transaction, whatever the process or code path.
const PAIRINGS_GENERATION: &str = "CREATE TABLE pairings_generation (
     id         INTEGER PRIMARY KEY CHECK (id = 1),
     generation INTEGER NOT NULL
 );
 INSERT INTO pairings_generation (id, generation) VALUES (1, 0);
 CREATE TRIGGER pairings_generation_insert AFTER INSERT ON pairings BEGIN
     UPDATE pairings_generation SET generation = generation + 1 WHERE id = 1;
 END;
 CREATE TRIGGER pairings_generation_update AFTER UPDATE ON pairings BEGIN
     UPDATE pairings_generation SET generation = generation + 1 WHERE id = 1;
 END;
 CREATE TRIGGER pairings_generation_delete AFTER DELETE ON pairings BEGIN
     UPDATE pairings_generation SET generation = generation + 1 WHERE id = 1;
 END;";

/// The per-call read of the pairings generation.
const SELECT_PAIRINGS_GENERATION: &str = "SELECT generation FROM pairings_generation WHERE id = 1";

const GATEWAY_KEY_TABLE: &str = "CREATE TABLE gateway_key (
     id          INTEGER PRIMARY KEY CHECK (id = 1),
     public_key  TEXT NOT NULL,
     recorded_at INTEGER NOT NULL
 );";

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = write_transaction(conn)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let has_tables: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'pairings'",
        [],
        |row| row.get(0),
    )?;
    match (version, has_tables) {
        (0, 0) => {
            tx.execute_batch(PAIRING_CODES_TABLE)?;
            tx.execute_batch(PAIRINGS_TABLE_V3)?;
            tx.execute_batch(HANDSHAKES_TABLE)?;
            tx.execute_batch(AUDIT_TABLE)?;
            tx.execute_batch(AUDIT_V3_TO_V4)?;
            tx.execute_batch(GATEWAY_KEY_TABLE)?;
            tx.execute_batch(PAIRINGS_V5_TO_V6)?;
            tx.execute_batch(PAIRINGS_GENERATION)?;
        }
        // Version 1 had no audit table; versions 0 (with tables: the very first builds) to 2
        // have the old pairings layout.
        (0..=2, _) => {
            if version < 2 {
                tx.execute_batch(AUDIT_TABLE)?;
            }
            tx.execute_batch(PAIRINGS_V2_TO_V3)?;
            tx.execute_batch(PAIRINGS_TABLE_V3)?;
            tx.execute(
                "INSERT INTO pairings (pairing_id, sidecar_id, sidecar_public_key, user_id,
                                       display_name, created_at, revoked_at)
                 SELECT lower(hex(randomblob(16))), sidecar_id, sidecar_public_key, user_id,
                        display_name, created_at, revoked_at
                 FROM pairings_v2",
                [],
            )?;
            tx.execute_batch("DROP TABLE pairings_v2;")?;
            tx.execute_batch(AUDIT_V3_TO_V4)?;
            tx.execute_batch(GATEWAY_KEY_TABLE)?;
            tx.execute_batch(PAIRINGS_V5_TO_V6)?;
            tx.execute_batch(PAIRINGS_GENERATION)?;
        }
        (3, _) => {
            tx.execute_batch(AUDIT_V3_TO_V4)?;
            tx.execute_batch(GATEWAY_KEY_TABLE)?;
            tx.execute_batch(PAIRINGS_V5_TO_V6)?;
            tx.execute_batch(PAIRINGS_GENERATION)?;
        }
        (4, _) => {
            tx.execute_batch(GATEWAY_KEY_TABLE)?;
            tx.execute_batch(PAIRINGS_V5_TO_V6)?;
            tx.execute_batch(PAIRINGS_GENERATION)?;
        }
        (5, _) => {
            tx.execute_batch(PAIRINGS_V5_TO_V6)?;
            tx.execute_batch(PAIRINGS_GENERATION)?;
        }
        (6, _) => tx.execute_batch(PAIRINGS_GENERATION)?,
        (7 | SCHEMA_VERSION, _) => {}
        _ => return Err(StoreError::Corrupt("unsupported schema version")),
    }
    if version < 8 {
        tx.execute_batch(REFRESH_TOKENS_TABLE)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `state_dir`. Blocking: call it from
    /// `spawn_blocking` or before the runtime serves traffic.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        ensure_state_dir(state_dir)?;
        let path = state_dir.join(DATABASE_FILE);
        create_private_file(&path)?;
        let mut conn = connect(&path)?;
        // WAL lets the CLI and a running server share the file.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        migrate(&mut conn)?;
        let reader = connect(&path)?;
        reader.pragma_update(None, "query_only", true)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            path,
        })
    }

    /// The pairings generation as last committed, by any process. Cheap and non-blocking
    /// (one row, on the read connection): fine on the async thread.
    pub(crate) fn pairings_generation(&self) -> Result<i64, StoreError> {
        let reader = self.reader.lock().map_err(|_| StoreError::Poisoned)?;
        let mut statement = reader.prepare_cached(SELECT_PAIRINGS_GENERATION)?;
        Ok(statement.query_row([], |row| row.get(0))?)
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

    /// Key continuity, checked at start before the key is used: the pairings were made with
    /// the recorded public key, and a gateway that would answer them with another one (its
    /// key file deleted, replaced or edited) must not start, or every paired laptop would
    /// fail its handshake with nothing but HANDSHAKE_FAILED to go on. Records `current` when
    /// there is nothing to contradict (no record yet, or no active pairing). Blocking.
    pub fn check_gateway_key(
        &self,
        current: Option<&protocol::identity::PublicKey>,
        now_unix: i64,
    ) -> Result<KeyContinuity, StoreError> {
        let mut guard = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let tx = write_transaction(&mut guard)?;
        let recorded: Option<String> = tx
            .query_row(
                "SELECT public_key FROM gateway_key WHERE id = 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let active: i64 = tx.query_row(
            "SELECT COUNT(*) FROM pairings WHERE revoked_at IS NULL",
            [],
            |row| row.get(0),
        )?;
        let verdict = super::records::key_continuity(recorded.as_deref(), current, active);
        if let KeyContinuity::Broken { .. } = verdict {
            return Ok(verdict);
        }
        let current_hex = current.map(protocol::identity::PublicKey::to_hex);
        if let (KeyContinuity::Recorded, Some(current)) = (&verdict, &current_hex) {
            tx.execute(
                "INSERT INTO gateway_key (id, public_key, recorded_at) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET public_key = excluded.public_key,
                                               recorded_at = excluded.recorded_at",
                rusqlite::params![current, now_unix],
            )?;
        }
        tx.commit()?;
        Ok(verdict)
    }

    /// The newest sidecar journal entry on record for a pairing: the highest sequence number
    /// an order call's answer named, read from the audit trail (which records every order
    /// call's answer durably).
    pub(crate) async fn journal_anchor(
        &self,
        pairing_id: crate::store::PairingId,
    ) -> Result<Option<protocol::envelope::JournalRef>, StoreError> {
        self.run(move |conn| {
            let row: Option<(i64, String)> = conn
                .prepare_cached(
                    "SELECT journal_seq, journal_hash FROM audit
                     WHERE pairing_id = ?1 AND journal_seq IS NOT NULL
                     ORDER BY journal_seq DESC LIMIT 1",
                )?
                .query_row(rusqlite::params![pairing_id.to_hex()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            row.map(|(seq, hash)| crate::store::records::journal_ref(seq, &hash))
                .transpose()
        })
        .await
    }

    /// A cheap round trip to the database (for `/readyz`).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            let _: i64 = conn.query_row("SELECT 1", [], |row| row.get(0))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use protocol::identity::StaticKeypair;
    use rusqlite::params;

    /// The version-2 layout, as the previous release created it.
    const V2_SCHEMA: &str = "
        CREATE TABLE pairing_codes (code_id TEXT PRIMARY KEY, secret TEXT, user_id TEXT NOT NULL,
            created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL, used_at INTEGER);
        CREATE TABLE pairings (sidecar_id TEXT PRIMARY KEY, sidecar_public_key TEXT NOT NULL,
            user_id TEXT NOT NULL, display_name TEXT NOT NULL, created_at INTEGER NOT NULL,
            revoked_at INTEGER);
        CREATE INDEX pairings_by_key ON pairings(sidecar_public_key);
        CREATE INDEX pairings_by_user ON pairings(user_id);
        CREATE TABLE handshake_timestamps (sidecar_public_key TEXT PRIMARY KEY,
            last_timestamp_ms INTEGER NOT NULL);
        CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL,
            subject TEXT NOT NULL, token_id_hmac TEXT, client_id TEXT, tool TEXT NOT NULL,
            scope TEXT, request_id TEXT, payload_hash TEXT, sidecar_id TEXT,
            outcome TEXT NOT NULL, latency_ms INTEGER NOT NULL);
        CREATE INDEX audit_by_time ON audit(time_ms);
        PRAGMA user_version=2;";

    #[tokio::test]
    async fn a_version_two_store_keeps_its_pairings_and_gains_pairing_ids() {
        let dir = tempfile::tempdir().unwrap();
        let key = StaticKeypair::from_secret_bytes([1; 32]).public();
        {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            conn.execute_batch(V2_SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO pairings VALUES ('laptop-1', ?1, 'alice', 'laptop', 5, NULL)",
                params![key.to_hex()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO pairings VALUES ('laptop-0', ?1, 'alice', 'old', 1, 2)",
                params![StaticKeypair::from_secret_bytes([2; 32]).public().to_hex()],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let record = store.active_pairing_by_key(key).await.unwrap().unwrap();
        assert_eq!(
            (record.sidecar_id.as_str(), record.user_id.as_str()),
            ("laptop-1", "alice")
        );
        assert_eq!(store.list_pairings().await.unwrap().len(), 2);
        assert!(store.pairing_is_active(record.pairing_id).await.unwrap());
        let generation = store.pairings_generation().await.unwrap();
        assert!(store.revoke_pairing("laptop-1".into(), 6).await.unwrap());
        assert!(store.pairings_generation().await.unwrap() > generation);
        // Reopening is a no-op; an unknown (newer) version is refused.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list_pairings().await.unwrap().len(), 2);
        drop(store);
        Connection::open(dir.path().join(DATABASE_FILE))
            .unwrap()
            .execute_batch("PRAGMA user_version=99;")
            .unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn a_version_three_store_keeps_its_audit_rows_unchained_and_chains_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            conn.execute_batch(V2_SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO audit (time_ms, subject, tool, outcome, latency_ms)
                 VALUES (1, 'alice', 'ibkr_quote', 'ok', 2)",
                [],
            )
            .unwrap();
        }
        // Through version 3 to 4 in one open, as a store two releases old would go.
        let store = Store::open(dir.path()).unwrap();
        let key = crate::audit::AuditKey::random();
        let mut log = crate::audit::log::AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        assert_eq!(log.broken(), None);
        log.append(&[crate::audit::log::AuditRecord {
            time_ms: 2,
            subject: "alice".into(),
            tool: "ibkr_buy".into(),
            outcome: "ok".into(),
            ..Default::default()
        }])
        .unwrap();
        let rows = crate::audit::log::tail(store.sqlite().unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].id, rows[0].hash.is_none()), (1, true));
        assert_eq!((rows[1].id, rows[1].hash.is_some()), (2, true));
        let mut conn = connect(store.path().unwrap()).unwrap();
        let report = crate::audit::verify::verify(&mut conn, dir.path(), &key.chain_key()).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!((report.unchained_records, report.chain_start), (1, Some(2)));
    }

    #[tokio::test]
    async fn a_version_six_store_gains_the_pairings_generation_and_its_triggers() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        Connection::open(dir.path().join(DATABASE_FILE))
            .unwrap()
            .execute_batch(
                "DROP TRIGGER pairings_generation_insert; DROP TRIGGER pairings_generation_update;
                 DROP TRIGGER pairings_generation_delete; DROP TABLE pairings_generation;
                 DROP TABLE refresh_tokens;
                 INSERT INTO pairings (pairing_id, sidecar_id, sidecar_public_key, user_id,
                                       display_name, created_at) VALUES
                     ('00112233445566778899aabbccddeeff', 'laptop-1',
                      '0101010101010101010101010101010101010101010101010101010101010101',
                      'alice', 'laptop', 1);
                 PRAGMA user_version=6;",
            )
            .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let generation = store.pairings_generation().await.unwrap();
        assert_eq!(store.user_pairings("alice").await.unwrap().active.len(), 1);
        assert!(store.revoke_pairing("laptop-1".into(), 2).await.unwrap());
        assert!(store.pairings_generation().await.unwrap() > generation);
        assert!(
            store
                .user_pairings("alice")
                .await
                .unwrap()
                .active
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_version_one_store_gains_the_audit_table() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
            conn.execute_batch(V2_SCHEMA).unwrap();
            conn.execute_batch("DROP TABLE audit; PRAGMA user_version=1;")
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(
            crate::audit::log::tail(store.sqlite().unwrap(), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
