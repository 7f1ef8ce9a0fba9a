//! The one local state store: SQLite (WAL) in the state directory, shared by the CLI
//! primitives and the daemon.
//!
//! The daemon checks the pairing record for every relayed request, so a `revoke` or a scope
//! change made from the CLI in another process takes effect on the next call. It is served from
//! memory while nothing can have changed it (see [`StateStore::pairing`]): the connection's
//! `PRAGMA data_version` moves with every commit of another connection (the CLI, in any
//! process), and its `total_changes` with every row this connection writes, so the pair of them
//! is read per request and any move empties the cache. Secrets are never
//! stored here (the identity secret lives in `identity.key`); the store holds public keys,
//! identifiers, scopes and times.
//!
//! Times: `*_at` columns are unix seconds (wall clock). The anti-replay handshake timestamp is
//! unix milliseconds, as the protocol defines it.

use crate::error::SidecarError;
use crate::paths::{self, STATE_DB_FILE};
use protocol::identity::PublicKey;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use shared_safety::ErrorCode;
use shared_safety::scope::ScopeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The columns of a pairing row, in the order [`pairing_from_row`] and the writes use.
macro_rules! pairing_columns {
    () => {
        "remote_instance_id, sidecar_id, user_id, gateway_url, relay_url, \
         gateway_public_key_hex, local_scopes, created_at, expires_at, revoked_at, \
         gateway_pairing_id"
    };
}

/// The columns of a relay session row.
macro_rules! session_columns {
    () => {
        "session_id, remote_instance_id, sidecar_id, created_at, expires_at, last_heartbeat_at, \
         closed_at"
    };
}

// Constant statements, prepared once per connection and cached.
const SELECT_PAIRING: &str = concat!(
    "SELECT ",
    pairing_columns!(),
    " FROM pairings WHERE remote_instance_id = ?1 AND sidecar_id = ?2"
);
const SELECT_ALL_PAIRINGS: &str = concat!(
    "SELECT ",
    pairing_columns!(),
    " FROM pairings ORDER BY created_at DESC, rowid DESC"
);
const SELECT_DIALABLE_PAIRING: &str = concat!(
    "SELECT ",
    pairing_columns!(),
    " FROM pairings WHERE sidecar_id = ?1 AND revoked_at IS NULL \
     AND (expires_at IS NULL OR expires_at > ?2) AND gateway_public_key_hex IS NOT NULL \
     ORDER BY created_at DESC, rowid DESC LIMIT 1"
);
const WRITE_PAIRING: &str = concat!(
    "INSERT OR REPLACE INTO pairings (",
    pairing_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
);
const SELECT_IDENTITY: &str = "SELECT sidecar_id, display_name, public_key_hex, has_secret, \
     created_at FROM identity ORDER BY created_at LIMIT 1";
const WRITE_SESSION: &str = concat!(
    "INSERT OR REPLACE INTO relay_sessions (",
    session_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
);
const SELECT_SESSION: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM relay_sessions WHERE session_id = ?1"
);
const SELECT_ALL_SESSIONS: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM relay_sessions ORDER BY created_at DESC, rowid DESC"
);
const SELECT_BOUND_SESSIONS: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM relay_sessions WHERE remote_instance_id = ?1 AND sidecar_id = ?2 \
     AND closed_at IS NULL ORDER BY created_at DESC, rowid DESC"
);

/// How many pairing records [`StateStore::pairing`] keeps in memory (a daemon reads one).
const MAX_CACHED_PAIRINGS: usize = 16;

/// Schema version written to `PRAGMA user_version`. 2: pairings pin the gateway's pairing id.
/// 3: requests from the laptop's owner to the running daemon. 4: the relay's last outcome, so
/// `status` can say why the daemon is not connected. 5: the owner's pause of trading.
const SCHEMA_VERSION: i64 = 6;

const SCHEMA_V1: &str = "
CREATE TABLE identity (
    sidecar_id      TEXT PRIMARY KEY NOT NULL,
    display_name    TEXT NOT NULL,
    public_key_hex  TEXT NOT NULL,
    has_secret      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE TABLE pairings (
    remote_instance_id      TEXT NOT NULL,
    sidecar_id              TEXT NOT NULL,
    user_id                 TEXT NOT NULL,
    gateway_url             TEXT NULL,
    relay_url               TEXT NULL,
    gateway_public_key_hex  TEXT NULL,
    local_scopes            TEXT NOT NULL,
    created_at              INTEGER NOT NULL,
    expires_at              INTEGER NULL,
    revoked_at              INTEGER NULL,
    PRIMARY KEY (remote_instance_id, sidecar_id)
);
CREATE TABLE relay_sessions (
    session_id          TEXT PRIMARY KEY NOT NULL,
    remote_instance_id  TEXT NOT NULL,
    sidecar_id          TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    last_heartbeat_at   INTEGER NOT NULL,
    closed_at           INTEGER NULL
);
CREATE TABLE handshake_clock (
    sidecar_id          TEXT PRIMARY KEY NOT NULL,
    last_timestamp_ms   INTEGER NOT NULL
);
";

/// Version 1 -> 2: the gateway's id of the pairing, pinned at pairing (or, for a pairing made
/// before version 2, at the first handshake that names it).
const SCHEMA_V1_TO_V2: &str = "
ALTER TABLE pairings ADD COLUMN gateway_pairing_id TEXT NULL;
";

/// Version 2 -> 3: requests from the owner's commands to the daemon (see `crate::owner`).
const SCHEMA_V2_TO_V3: &str = "
CREATE TABLE owner_requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    result      TEXT NULL,
    handled_at  INTEGER NULL
);
";

/// Version 3 -> 4: what the daemon's relay loop last came to (see [`RelayStatusRecord`]).
const SCHEMA_V3_TO_V4: &str = "
CREATE TABLE relay_status (
    sidecar_id      TEXT PRIMARY KEY NOT NULL,
    updated_at      INTEGER NOT NULL,
    connected       INTEGER NOT NULL,
    code            TEXT NULL,
    detail          TEXT NOT NULL,
    connected_at    INTEGER NULL
);
";

/// Version 4 -> 5: the owner paused trading (one row while paused; see [`TradingPause`]).
const SCHEMA_V4_TO_V5: &str = "
CREATE TABLE trading_pause (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    paused_at   INTEGER NOT NULL,
    reason      TEXT NOT NULL
);
";

/// Version 5 -> 6: agent connections the owner approves (see `crate::agents`).
const SCHEMA_V5_TO_V6: &str = "
CREATE TABLE agents (
    approval_id       TEXT PRIMARY KEY,
    client_id         TEXT NOT NULL,
    client_name       TEXT NOT NULL,
    client_verified   INTEGER NOT NULL,
    redirect_uri      TEXT NOT NULL,
    requested_scopes  TEXT NOT NULL,
    granted_scopes    TEXT NOT NULL DEFAULT '',
    confirmation_code TEXT NOT NULL,
    status            TEXT NOT NULL,
    requested_at      INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    decided_at        INTEGER NULL,
    decided_by        TEXT NULL,
    decision_sent     INTEGER NOT NULL DEFAULT 0,
    revoke_acked      INTEGER NOT NULL DEFAULT 0,
    last_used_at      INTEGER NULL
);
CREATE INDEX agents_by_code ON agents (confirmation_code) WHERE status = 'pending';
";

/// Trading paused by the laptop's owner: every tool that could send a new order is refused
/// (`TRADING_PAUSED`) until they resume. Kept in `state.db`, so it survives a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TradingPause {
    /// Unix seconds.
    pub paused_at: i64,
    /// What the owner wrote, or empty.
    pub reason: String,
}

/// What the daemon's relay loop last came to, as it recorded it: connected, or why not (a
/// refusal code such as `GATEWAY_KEY_MISMATCH` and what to do). A daemon that was killed
/// leaves its last record, so `updated_at` says how old it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStatusRecord {
    pub sidecar_id: String,
    pub updated_at: i64,
    pub connected: bool,
    pub code: Option<String>,
    pub detail: String,
    /// When a relay session was last established.
    pub connected_at: Option<i64>,
}

/// One request from an owner's command to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRequestRow {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub created_at: i64,
    /// `pending`, `taken` (the daemon is applying it), `done`, `refused` or `withdrawn`.
    pub status: String,
    pub result: Option<String>,
}

/// The sidecar's identity as recorded (the secret, if any, is in `identity.key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    pub sidecar_id: String,
    pub display_name: String,
    pub public_key: PublicKey,
    /// False when created with `--public-key` (an externally held key): the daemon cannot run.
    pub has_secret: bool,
    pub created_at: i64,
}

impl IdentityRecord {
    pub fn fingerprint(&self) -> String {
        self.public_key.fingerprint()
    }
}

/// A local pairing record: which remote gateway instance this sidecar trusts, for which user,
/// and which scopes the laptop grants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingRecord {
    pub remote_instance_id: String,
    pub sidecar_id: String,
    pub user_id: String,
    pub gateway_url: Option<String>,
    pub relay_url: Option<String>,
    /// The gateway key pinned at pairing; the handshake authenticates against it.
    pub gateway_public_key: Option<PublicKey>,
    /// The gateway's id of this pairing; a handshake that names another is refused.
    pub gateway_pairing_id: Option<[u8; 16]>,
    /// Scopes granted locally (read-only by default).
    pub local_scopes: ScopeSet,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl PairingRecord {
    /// Active: not revoked and not expired at `now` (unix seconds).
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires| expires > now)
    }

    /// `active`, `revoked` or `expired`.
    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.is_active(now) {
            "active"
        } else {
            "expired"
        }
    }

    pub fn gateway_fingerprint(&self) -> Option<String> {
        self.gateway_public_key.map(|key| key.fingerprint())
    }

    /// Local scopes as a sorted list (for JSON output).
    pub fn local_scope_list(&self) -> Vec<String> {
        self.local_scopes.iter().map(str::to_string).collect()
    }
}

/// A relay session as the sidecar saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySessionRecord {
    /// 32 hex characters (the 16-byte id from the handshake).
    pub session_id: String,
    pub remote_instance_id: String,
    pub sidecar_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_heartbeat_at: i64,
    pub closed_at: Option<i64>,
}

impl RelaySessionRecord {
    pub fn is_open(&self, now: i64) -> bool {
        self.closed_at.is_none() && self.expires_at > now
    }

    /// `open`, `expired` or `closed`.
    pub fn status(&self, now: i64) -> &'static str {
        if self.closed_at.is_some() {
            "closed"
        } else if self.expires_at > now {
            "open"
        } else {
            "expired"
        }
    }
}

/// What [`StateStore::create_local_pairing`] did besides writing the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPairingWrite {
    /// The identity's previous sidecar id when the identity was bound to the pairing's id
    /// (only possible while the identity has no pairing record at all).
    pub rebound_from: Option<String>,
    /// An earlier record for the same (remote instance, sidecar id) was replaced.
    pub replaced: bool,
}

/// The SQLite store. One connection behind a mutex: every operation is a short local query.
pub struct StateStore {
    connection: Mutex<Connection>,
    /// Only touched with `connection` locked (so in its order: connection, then cache).
    pairing_cache: Mutex<PairingCache>,
    dir: PathBuf,
}

/// Pairing records as last read, valid while the connection's change tag is the same.
#[derive(Default)]
struct PairingCache {
    /// `(PRAGMA data_version, total_changes)` when the entries were read.
    tag: Option<(i64, u64)>,
    entries: Vec<((String, String), Option<PairingRecord>)>,
}

/// What moves whenever the database may have changed: `PRAGMA data_version` with every commit
/// of another connection (any process), `total_changes` with every row this connection
/// inserts, updates or deletes. Read it before the rows it vouches for.
fn change_tag(connection: &Connection) -> Result<(i64, u64), SidecarError> {
    let version: i64 = connection
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |row| row.get(0))?;
    Ok((version, connection.total_changes()))
}

/// Writes a pairing row. Its gateway key must have been validated when it entered the
/// process (the pairing exchange refuses a low-order key): it is not checked when read back.
fn write_pairing(connection: &Connection, record: &PairingRecord) -> Result<(), SidecarError> {
    connection.prepare_cached(WRITE_PAIRING)?.execute(params![
        record.remote_instance_id,
        record.sidecar_id,
        record.user_id,
        record.gateway_url,
        record.relay_url,
        record.gateway_public_key.map(|key| key.to_hex()),
        record.local_scopes.to_oauth(),
        record.created_at,
        record.expires_at,
        record.revoked_at,
        record.gateway_pairing_id.map(hex::encode)
    ])?;
    Ok(())
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").finish_non_exhaustive()
    }
}

/// A key read back from this store: written only from validated keys (the identity's own,
/// derived from its secret or checked when given with `--public-key`; the gateway's, checked
/// by the pairing exchange), so it is parsed without the low-order check, and the handshake
/// refuses a low-order gateway key anyway. See [`PublicKey::from_stored_hex`].
fn public_key_column(text: Option<String>, column: &str) -> rusqlite::Result<Option<PublicKey>> {
    match text {
        None => Ok(None),
        Some(text) => PublicKey::from_stored_hex(&text).map(Some).map_err(|_| {
            rusqlite::Error::InvalidColumnType(0, column.to_string(), rusqlite::types::Type::Text)
        }),
    }
}

fn identity_from_row(row: &Row<'_>) -> rusqlite::Result<IdentityRecord> {
    let key: String = row.get("public_key_hex")?;
    let public_key = public_key_column(Some(key), "public_key_hex")?.ok_or(
        rusqlite::Error::InvalidColumnType(0, "public_key_hex".into(), rusqlite::types::Type::Null),
    )?;
    Ok(IdentityRecord {
        sidecar_id: row.get("sidecar_id")?,
        display_name: row.get("display_name")?,
        public_key,
        has_secret: row.get::<_, i64>("has_secret")? != 0,
        created_at: row.get("created_at")?,
    })
}

fn pairing_id_column(text: Option<String>) -> rusqlite::Result<Option<[u8; 16]>> {
    let invalid = || {
        rusqlite::Error::InvalidColumnType(
            0,
            "gateway_pairing_id".to_string(),
            rusqlite::types::Type::Text,
        )
    };
    match text {
        None => Ok(None),
        Some(text) => {
            let bytes = hex::decode(text).map_err(|_| invalid())?;
            Ok(Some(bytes.try_into().map_err(|_| invalid())?))
        }
    }
}

fn pairing_from_row(row: &Row<'_>) -> rusqlite::Result<PairingRecord> {
    let scopes: String = row.get("local_scopes")?;
    Ok(PairingRecord {
        remote_instance_id: row.get("remote_instance_id")?,
        sidecar_id: row.get("sidecar_id")?,
        user_id: row.get("user_id")?,
        gateway_url: row.get("gateway_url")?,
        relay_url: row.get("relay_url")?,
        gateway_public_key: public_key_column(
            row.get("gateway_public_key_hex")?,
            "gateway_public_key_hex",
        )?,
        gateway_pairing_id: pairing_id_column(row.get("gateway_pairing_id")?)?,
        local_scopes: ScopeSet::from_oauth(&scopes),
        created_at: row.get("created_at")?,
        expires_at: row.get("expires_at")?,
        revoked_at: row.get("revoked_at")?,
    })
}

fn select_pairing(
    connection: &Connection,
    remote_instance_id: &str,
    sidecar_id: &str,
) -> Result<Option<PairingRecord>, SidecarError> {
    Ok(connection
        .prepare_cached(SELECT_PAIRING)?
        .query_row(params![remote_instance_id, sidecar_id], pairing_from_row)
        .optional()?)
}

fn owner_request_from_row(row: &Row<'_>) -> rusqlite::Result<OwnerRequestRow> {
    Ok(OwnerRequestRow {
        id: row.get(0)?,
        kind: row.get(1)?,
        payload: row.get(2)?,
        created_at: row.get(3)?,
        status: row.get(4)?,
        result: row.get(5)?,
    })
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<RelaySessionRecord> {
    Ok(RelaySessionRecord {
        session_id: row.get("session_id")?,
        remote_instance_id: row.get("remote_instance_id")?,
        sidecar_id: row.get("sidecar_id")?,
        created_at: row.get("created_at")?,
        expires_at: row.get("expires_at")?,
        last_heartbeat_at: row.get("last_heartbeat_at")?,
        closed_at: row.get("closed_at")?,
    })
}

impl StateStore {
    /// Opens (creating if needed) the store in `state_dir`, which is created 0700.
    pub fn open(state_dir: &Path) -> Result<Self, SidecarError> {
        paths::ensure_state_dir(state_dir)?;
        let path = state_dir.join(STATE_DB_FILE);
        // Create the database file 0600 ourselves: SQLite would use the umask, and it gives
        // its -wal and -shm files the database file's permissions.
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|error| {
                SidecarError::state(format!("(cannot create state.db: {})", error.kind()))
            })?;
        for file in [STATE_DB_FILE, "state.db-wal", "state.db-shm"] {
            crate::secret_file::restrict_to_owner(&state_dir.join(file)).map_err(|error| {
                SidecarError::state(format!("(cannot make {file} private: {})", error.kind()))
            })?;
        }
        let connection = Connection::open(&path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        let store = StateStore {
            connection: Mutex::new(connection),
            pairing_cache: Mutex::new(PairingCache::default()),
            dir: state_dir.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Connection>, SidecarError> {
        self.connection
            .lock()
            .map_err(|_| SidecarError::state("(state store lock poisoned)"))
    }

    fn migrate(&self) -> Result<(), SidecarError> {
        let mut connection = self.lock()?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = transaction.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        match version {
            0..=5 => {
                if version == 0 {
                    transaction.execute_batch(SCHEMA_V1)?;
                }
                if version <= 1 {
                    transaction.execute_batch(SCHEMA_V1_TO_V2)?;
                }
                if version <= 2 {
                    transaction.execute_batch(SCHEMA_V2_TO_V3)?;
                }
                if version <= 3 {
                    transaction.execute_batch(SCHEMA_V3_TO_V4)?;
                }
                if version <= 4 {
                    transaction.execute_batch(SCHEMA_V4_TO_V5)?;
                }
                transaction.execute_batch(SCHEMA_V5_TO_V6)?;
                transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            SCHEMA_VERSION => {}
            newer => {
                return Err(SidecarError::state(format!(
                    "(state.db has schema version {newer}, newer than this build understands)"
                )));
            }
        }
        transaction.commit()?;
        Ok(())
    }

    // ---- identity -------------------------------------------------------------------------

    pub fn identity(&self) -> Result<Option<IdentityRecord>, SidecarError> {
        let connection = self.lock()?;
        Ok(connection
            .prepare_cached(SELECT_IDENTITY)?
            .query_row([], identity_from_row)
            .optional()?)
    }

    /// Records the identity; IDENTITY_EXISTS if one is already recorded (one per state dir).
    /// Its key is derived from the identity's secret or was validated when given.
    pub fn insert_identity(&self, record: &IdentityRecord) -> Result<(), SidecarError> {
        let mut connection = self.lock()?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: i64 =
            transaction.query_row("SELECT COUNT(*) FROM identity", [], |row| row.get(0))?;
        if existing > 0 {
            return Err(SidecarError::bare(ErrorCode::IdentityExists));
        }
        transaction.execute(
            "INSERT INTO identity (sidecar_id, display_name, public_key_hex, has_secret, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.sidecar_id,
                record.display_name,
                record.public_key.to_hex(),
                i64::from(record.has_secret),
                record.created_at
            ],
        )?;
        transaction.commit()?;
        Ok(())
    }

    // ---- pairings -------------------------------------------------------------------------

    /// Inserts or replaces the pairing for `(remote_instance_id, sidecar_id)`. Re-pairing is a
    /// fresh trust decision, so the replaced record's scopes and revocation do not carry over.
    /// The gateway key must come from the pairing exchange (which refuses a low-order key).
    pub fn upsert_pairing(&self, record: &PairingRecord) -> Result<(), SidecarError> {
        let connection = self.lock()?;
        write_pairing(&connection, record)
    }

    /// The pairing record for `(remote_instance_id, sidecar_id)` exactly as the database holds
    /// it now, whichever process wrote it last; read for every relayed request. Served from
    /// memory while the connection's change tag ([`change_tag`]: one `PRAGMA data_version`,
    /// no table read) is the one the record was read at. Time-dependent checks (expiry) are
    /// made on the record by the caller, never cached.
    pub fn pairing(
        &self,
        remote_instance_id: &str,
        sidecar_id: &str,
    ) -> Result<Option<PairingRecord>, SidecarError> {
        let connection = self.lock()?;
        // The tag first: a row read after it is at least as new as the tag says.
        let tag = change_tag(&connection)?;
        let mut cache = self
            .pairing_cache
            .lock()
            .map_err(|_| SidecarError::state("(pairing cache lock poisoned)"))?;
        if cache.tag != Some(tag) {
            cache.entries.clear();
            cache.tag = Some(tag);
        }
        let hit = cache
            .entries
            .iter()
            .find(|((remote, sidecar), _)| remote == remote_instance_id && sidecar == sidecar_id);
        if let Some((_, record)) = hit {
            return Ok(record.clone());
        }
        let record = select_pairing(&connection, remote_instance_id, sidecar_id)?;
        if cache.entries.len() >= MAX_CACHED_PAIRINGS {
            cache.entries.clear();
        }
        cache.entries.push((
            (remote_instance_id.to_string(), sidecar_id.to_string()),
            record.clone(),
        ));
        Ok(record)
    }

    /// Every pairing record, newest first.
    pub fn pairings(&self) -> Result<Vec<PairingRecord>, SidecarError> {
        let connection = self.lock()?;
        let mut statement = connection.prepare_cached(SELECT_ALL_PAIRINGS)?;
        let rows = statement.query_map([], pairing_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The pairing the daemon dials: active, with a pinned gateway key and a relay URL source
    /// (the newest if several). `None` means SIDECAR_PAIRING_REQUIRED.
    pub fn dialable_pairing(
        &self,
        sidecar_id: &str,
        now: i64,
    ) -> Result<Option<PairingRecord>, SidecarError> {
        let connection = self.lock()?;
        Ok(connection
            .prepare_cached(SELECT_DIALABLE_PAIRING)?
            .query_row(params![sidecar_id, now], pairing_from_row)
            .optional()?)
    }

    /// Marks a pairing revoked; false if there was no such unrevoked pairing.
    pub fn revoke_pairing(
        &self,
        remote_instance_id: &str,
        sidecar_id: &str,
        now: i64,
    ) -> Result<bool, SidecarError> {
        let connection = self.lock()?;
        let changed = connection.execute(
            "UPDATE pairings SET revoked_at = ?3 \
             WHERE remote_instance_id = ?1 AND sidecar_id = ?2 AND revoked_at IS NULL",
            params![remote_instance_id, sidecar_id, now],
        )?;
        Ok(changed > 0)
    }

    /// Pins the gateway's pairing id on a record made before pairing ids existed (the first
    /// handshake that names one, authenticated by the pinned gateway key). Never replaces an
    /// id already pinned; returns whether it pinned.
    pub fn pin_gateway_pairing_id(
        &self,
        remote_instance_id: &str,
        sidecar_id: &str,
        pairing_id: [u8; 16],
    ) -> Result<bool, SidecarError> {
        let connection = self.lock()?;
        let changed = connection.execute(
            "UPDATE pairings SET gateway_pairing_id = ?3 \
             WHERE remote_instance_id = ?1 AND sidecar_id = ?2 AND gateway_pairing_id IS NULL",
            params![remote_instance_id, sidecar_id, hex::encode(pairing_id)],
        )?;
        Ok(changed > 0)
    }

    /// Replaces the scopes granted locally to a pairing; false if there is no such pairing.
    pub fn set_local_scopes(
        &self,
        remote_instance_id: &str,
        sidecar_id: &str,
        scopes: &ScopeSet,
    ) -> Result<bool, SidecarError> {
        let connection = self.lock()?;
        let changed = connection.execute(
            "UPDATE pairings SET local_scopes = ?3 WHERE remote_instance_id = ?1 AND sidecar_id = ?2",
            params![remote_instance_id, sidecar_id, scopes.to_oauth()],
        )?;
        Ok(changed > 0)
    }

    /// Changes the scopes granted locally to a pairing in one write transaction, so two grant
    /// commands at once cannot lose each other's change: `change` gets the current record and
    /// returns the new set, or an error that leaves the record as it was. `Ok(None)`: no such
    /// pairing.
    pub fn update_local_scopes<F>(
        &self,
        remote_instance_id: &str,
        sidecar_id: &str,
        change: F,
    ) -> Result<Option<(PairingRecord, ScopeSet)>, SidecarError>
    where
        F: FnOnce(&PairingRecord) -> Result<ScopeSet, SidecarError>,
    {
        let mut connection = self.lock()?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(before) = select_pairing(&transaction, remote_instance_id, sidecar_id)? else {
            return Ok(None);
        };
        let scopes = change(&before)?;
        transaction.execute(
            "UPDATE pairings SET local_scopes = ?3 WHERE remote_instance_id = ?1 AND sidecar_id = ?2",
            params![remote_instance_id, sidecar_id, scopes.to_oauth()],
        )?;
        transaction.commit()?;
        Ok(Some((before, scopes)))
    }

    /// Writes an explicit local pairing record (`ibkr-agent sidecar pairing create`) for the
    /// local identity, in one transaction:
    ///
    /// - no identity: IDENTITY_MISSING;
    /// - the record names another sidecar id than the identity's: if the identity has no
    ///   pairing record yet (so no gateway knows it by its id), the identity is bound to the
    ///   record's id; otherwise IDENTITY_MISSING naming the identity's id;
    /// - an active record for the same (remote instance, sidecar id) that pins a gateway key
    ///   (made by `sidecar pair`) is never silently replaced: CONFIG_INVALID, revoke it first.
    ///   Revoked, expired or keyless records are replaced.
    pub fn create_local_pairing(
        &self,
        record: &PairingRecord,
        now: i64,
    ) -> Result<LocalPairingWrite, SidecarError> {
        let mut connection = self.lock()?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let identity = transaction
            .prepare_cached(SELECT_IDENTITY)?
            .query_row([], identity_from_row)
            .optional()?
            .ok_or_else(|| SidecarError::bare(ErrorCode::IdentityMissing))?;
        let mut rebound_from = None;
        if identity.sidecar_id != record.sidecar_id {
            let pairings: i64 =
                transaction.query_row("SELECT COUNT(*) FROM pairings", [], |row| row.get(0))?;
            if pairings > 0 {
                return Err(SidecarError::new(
                    ErrorCode::IdentityMissing,
                    format!(
                        "(this state directory's identity is {}, and it already has pairing \
                         records, so it cannot take the id {}; use --sidecar-id {})",
                        identity.sidecar_id, record.sidecar_id, identity.sidecar_id
                    ),
                ));
            }
            transaction.execute(
                "UPDATE identity SET sidecar_id = ?2 WHERE sidecar_id = ?1",
                params![identity.sidecar_id, record.sidecar_id],
            )?;
            rebound_from = Some(identity.sidecar_id);
        }
        let existing =
            select_pairing(&transaction, &record.remote_instance_id, &record.sidecar_id)?;
        if let Some(existing) = &existing
            && existing.is_active(now)
            && existing.gateway_public_key.is_some()
        {
            return Err(SidecarError::flag(format!(
                "(remote instance {} already has an active pairing made with `ibkr-agent sidecar \
                 pair` that pins the gateway's key; `pairing create` would drop that key. To \
                 change what it may do, use `ibkr-agent sidecar pairing grant --scope ...` or \
                 `pairing revoke-scope --scope ...`)",
                record.remote_instance_id
            )));
        }
        write_pairing(&transaction, record)?;
        transaction.commit()?;
        Ok(LocalPairingWrite {
            rebound_from,
            replaced: existing.is_some(),
        })
    }

    // ---- handshake anti-replay clock ------------------------------------------------------

    /// The timestamp for the next `ClientHello`: `now_ms`, or one more than the last one used
    /// if the clock has not moved past it (the gateway refuses a timestamp that does not
    /// increase). Persisted before it is used, so a restart never reuses one.
    pub fn next_handshake_timestamp(
        &self,
        sidecar_id: &str,
        now_ms: u64,
    ) -> Result<u64, SidecarError> {
        let mut connection = self.lock()?;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<i64> = transaction
            .query_row(
                "SELECT last_timestamp_ms FROM handshake_clock WHERE sidecar_id = ?1",
                params![sidecar_id],
                |row| row.get(0),
            )
            .optional()?;
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let next = match last {
            Some(last) if last >= now => last
                .checked_add(1)
                .ok_or_else(|| SidecarError::state("(handshake clock exhausted)"))?,
            _ => now,
        };
        transaction.execute(
            "INSERT INTO handshake_clock (sidecar_id, last_timestamp_ms) VALUES (?1, ?2) \
             ON CONFLICT(sidecar_id) DO UPDATE SET last_timestamp_ms = excluded.last_timestamp_ms",
            params![sidecar_id, next],
        )?;
        transaction.commit()?;
        u64::try_from(next).map_err(|_| SidecarError::state("(handshake clock negative)"))
    }

    // ---- trading pause --------------------------------------------------------------------

    /// Pauses trading (the first pause's time and reason are kept if already paused). Returns
    /// the pause in force.
    pub fn pause_trading(&self, now: i64, reason: &str) -> Result<TradingPause, SidecarError> {
        let connection = self.lock()?;
        connection
            .prepare_cached(
                "INSERT INTO trading_pause (id, paused_at, reason) VALUES (1, ?1, ?2) \
                 ON CONFLICT(id) DO NOTHING",
            )?
            .execute(params![now, reason])?;
        drop(connection);
        self.trading_pause()?
            .ok_or_else(|| SidecarError::state("(the pause was not recorded)"))
    }

    /// Resumes trading. Returns the pause that ended, if trading was paused.
    pub fn resume_trading(&self) -> Result<Option<TradingPause>, SidecarError> {
        let ended = self.trading_pause()?;
        let connection = self.lock()?;
        connection
            .prepare_cached("DELETE FROM trading_pause WHERE id = 1")?
            .execute([])?;
        Ok(ended)
    }

    /// The pause in force, if trading is paused. Read on every call that could send an order,
    /// so a pause from the CLI (another process) counts from the next one.
    pub fn trading_pause(&self) -> Result<Option<TradingPause>, SidecarError> {
        let connection = self.lock()?;
        Ok(connection
            .prepare_cached("SELECT paused_at, reason FROM trading_pause WHERE id = 1")?
            .query_row([], |row| {
                Ok(TradingPause {
                    paused_at: row.get(0)?,
                    reason: row.get(1)?,
                })
            })
            .optional()?)
    }

    // ---- relay status ---------------------------------------------------------------------

    /// Records what the relay loop came to. `connected` also stamps `connected_at`.
    pub fn record_relay_outcome(
        &self,
        sidecar_id: &str,
        now: i64,
        connected: bool,
        code: Option<&str>,
        detail: &str,
    ) -> Result<(), SidecarError> {
        let connection = self.lock()?;
        connection
            .prepare_cached(
                "INSERT INTO relay_status (sidecar_id, updated_at, connected, code, detail, \
                 connected_at) VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?3 THEN ?2 END) \
                 ON CONFLICT(sidecar_id) DO UPDATE SET updated_at = excluded.updated_at, \
                 connected = excluded.connected, code = excluded.code, detail = excluded.detail, \
                 connected_at = COALESCE(excluded.connected_at, relay_status.connected_at)",
            )?
            .execute(params![sidecar_id, now, connected, code, detail])?;
        Ok(())
    }

    /// The relay loop's last recorded outcome for `sidecar_id`.
    pub fn relay_status(
        &self,
        sidecar_id: &str,
    ) -> Result<Option<RelayStatusRecord>, SidecarError> {
        let connection = self.lock()?;
        Ok(connection
            .query_row(
                "SELECT sidecar_id, updated_at, connected, code, detail, connected_at \
                 FROM relay_status WHERE sidecar_id = ?1",
                params![sidecar_id],
                |row| {
                    Ok(RelayStatusRecord {
                        sidecar_id: row.get(0)?,
                        updated_at: row.get(1)?,
                        connected: row.get(2)?,
                        code: row.get(3)?,
                        detail: row.get(4)?,
                        connected_at: row.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    // ---- owner requests -------------------------------------------------------------------

    /// Leaves a request for the daemon; returns its id.
    pub fn insert_owner_request(
        &self,
        kind: &str,
        payload: &str,
        now: i64,
    ) -> Result<i64, SidecarError> {
        let connection = self.lock()?;
        connection
            .prepare_cached(
                "INSERT INTO owner_requests (kind, payload, created_at, status) \
                 VALUES (?1, ?2, ?3, 'pending')",
            )?
            .execute(params![kind, payload, now])?;
        Ok(connection.last_insert_rowid())
    }

    /// Requests the daemon has not handled yet, oldest first.
    pub fn pending_owner_requests(&self) -> Result<Vec<OwnerRequestRow>, SidecarError> {
        let connection = self.lock()?;
        let mut statement = connection.prepare_cached(
            "SELECT id, kind, payload, created_at, status, result FROM owner_requests \
             WHERE status = 'pending' ORDER BY id",
        )?;
        let rows = statement.query_map([], owner_request_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn owner_request(&self, id: i64) -> Result<Option<OwnerRequestRow>, SidecarError> {
        let connection = self.lock()?;
        Ok(connection
            .query_row(
                "SELECT id, kind, payload, created_at, status, result FROM owner_requests \
                 WHERE id = ?1",
                params![id],
                owner_request_from_row,
            )
            .optional()?)
    }

    /// The daemon takes a pending request before applying it, so a command that gives up
    /// waiting can no longer withdraw it; false when it was withdrawn first.
    pub fn take_owner_request(&self, id: i64, now: i64) -> Result<bool, SidecarError> {
        let connection = self.lock()?;
        let changed = connection
            .prepare_cached(
                "UPDATE owner_requests SET status = 'taken', handled_at = ?2 \
                 WHERE id = ?1 AND status = 'pending'",
            )?
            .execute(params![id, now])?;
        Ok(changed > 0)
    }

    /// Records how a request ended, if it is still in status `from` (`pending` for a command
    /// withdrawing its own request, `taken` for the daemon); false when it was not.
    pub fn finish_owner_request(
        &self,
        id: i64,
        from: &str,
        status: &str,
        result: &str,
        now: i64,
    ) -> Result<bool, SidecarError> {
        let connection = self.lock()?;
        let changed = connection
            .prepare_cached(
                "UPDATE owner_requests SET status = ?3, result = ?4, handled_at = ?5 \
                 WHERE id = ?1 AND status = ?2",
            )?
            .execute(params![id, from, status, result, now])?;
        Ok(changed > 0)
    }

    // ---- relay sessions -------------------------------------------------------------------

    pub fn insert_relay_session(&self, record: &RelaySessionRecord) -> Result<(), SidecarError> {
        let connection = self.lock()?;
        connection.prepare_cached(WRITE_SESSION)?.execute(params![
            record.session_id,
            record.remote_instance_id,
            record.sidecar_id,
            record.created_at,
            record.expires_at,
            record.last_heartbeat_at,
            record.closed_at
        ])?;
        Ok(())
    }

    pub fn relay_session(
        &self,
        session_id: &str,
    ) -> Result<Option<RelaySessionRecord>, SidecarError> {
        let connection = self.lock()?;
        Ok(connection
            .prepare_cached(SELECT_SESSION)?
            .query_row(params![session_id], session_from_row)
            .optional()?)
    }

    /// Every relay session, newest first.
    pub fn relay_sessions(&self) -> Result<Vec<RelaySessionRecord>, SidecarError> {
        let connection = self.lock()?;
        let mut statement = connection.prepare_cached(SELECT_ALL_SESSIONS)?;
        let rows = statement.query_map([], session_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Sessions bound to `(remote_instance_id, sidecar_id)` that were not closed, newest first.
    pub fn bound_relay_sessions(
        &self,
        remote_instance_id: &str,
        sidecar_id: &str,
    ) -> Result<Vec<RelaySessionRecord>, SidecarError> {
        let connection = self.lock()?;
        let mut statement = connection.prepare_cached(SELECT_BOUND_SESSIONS)?;
        let rows =
            statement.query_map(params![remote_instance_id, sidecar_id], session_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Closes every unclosed session bound to `(remote_instance_id, sidecar_id)`; returns how
    /// many.
    pub fn close_bound_relay_sessions(
        &self,
        remote_instance_id: &str,
        sidecar_id: &str,
        now: i64,
    ) -> Result<usize, SidecarError> {
        let connection = self.lock()?;
        Ok(connection
            .prepare_cached(
                "UPDATE relay_sessions SET closed_at = ?3 \
                 WHERE remote_instance_id = ?1 AND sidecar_id = ?2 AND closed_at IS NULL",
            )?
            .execute(params![remote_instance_id, sidecar_id, now])?)
    }

    pub fn touch_relay_session(&self, session_id: &str, now: i64) -> Result<(), SidecarError> {
        let connection = self.lock()?;
        connection
            .prepare_cached(
                "UPDATE relay_sessions SET last_heartbeat_at = ?2 WHERE session_id = ?1",
            )?
            .execute(params![session_id, now])?;
        Ok(())
    }

    pub fn renew_relay_session(
        &self,
        session_id: &str,
        expires_at: i64,
    ) -> Result<(), SidecarError> {
        let connection = self.lock()?;
        connection
            .prepare_cached("UPDATE relay_sessions SET expires_at = ?2 WHERE session_id = ?1")?
            .execute(params![session_id, expires_at])?;
        Ok(())
    }

    pub fn close_relay_session(&self, session_id: &str, now: i64) -> Result<(), SidecarError> {
        let connection = self.lock()?;
        connection
            .prepare_cached(
                "UPDATE relay_sessions SET closed_at = ?2 WHERE session_id = ?1 AND closed_at IS NULL",
            )?
            .execute(params![session_id, now])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::identity::StaticKeypair;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_pause_keeps_its_first_time_and_reason_and_is_seen_by_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        // Another connection, as the CLI in another process.
        let owner = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.trading_pause().unwrap(), None);
        assert_eq!(owner.resume_trading().unwrap(), None);
        let first = owner.pause_trading(100, "lunch").unwrap();
        assert_eq!(
            first,
            TradingPause {
                paused_at: 100,
                reason: "lunch".into()
            }
        );
        // Pausing again keeps the pause in force as it was.
        assert_eq!(owner.pause_trading(200, "other").unwrap(), first);
        assert_eq!(store.trading_pause().unwrap(), Some(first.clone()));
        assert_eq!(owner.resume_trading().unwrap(), Some(first));
        assert_eq!(store.trading_pause().unwrap(), None);
    }

    #[test]
    fn a_version_four_state_store_gains_the_pause_table() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateStore::open(dir.path()).unwrap());
        {
            let connection =
                Connection::open(dir.path().join(crate::paths::STATE_DB_FILE)).unwrap();
            connection
                .execute_batch(
                    "DROP TABLE trading_pause; DROP TABLE agents; PRAGMA user_version = 4;",
                )
                .unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.trading_pause().unwrap(), None);
        store.pause_trading(1, "").unwrap();
        assert!(store.trading_pause().unwrap().is_some());
        // Version 6's table came along.
        assert!(crate::agents::list(&store, 0).unwrap().is_empty());
    }

    #[test]
    fn the_relay_status_keeps_when_it_last_connected() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.relay_status("s").unwrap(), None);
        store
            .record_relay_outcome("s", 10, true, None, "connected")
            .unwrap();
        store
            .record_relay_outcome("s", 20, false, Some("GATEWAY_KEY_MISMATCH"), "re-keyed")
            .unwrap();
        let record = store.relay_status("s").unwrap().unwrap();
        assert!(!record.connected);
        assert_eq!(record.code.as_deref(), Some("GATEWAY_KEY_MISMATCH"));
        assert_eq!(record.detail, "re-keyed");
        assert_eq!((record.updated_at, record.connected_at), (20, Some(10)));
        assert_eq!(store.relay_status("other").unwrap(), None);
    }

    #[test]
    fn a_state_database_others_can_read_is_made_private_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateStore::open(dir.path()).unwrap());
        let path = dir.path().join(STATE_DB_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(store.pairings().unwrap().is_empty(), "the data is intact");
    }

    fn pairing(remote: &str, created_at: i64) -> PairingRecord {
        PairingRecord {
            remote_instance_id: remote.into(),
            sidecar_id: "sidecar-1".into(),
            user_id: "user-1".into(),
            gateway_url: Some("http://127.0.0.1:8080".into()),
            relay_url: Some("ws://127.0.0.1:8080/relay".into()),
            gateway_public_key: Some(StaticKeypair::from_secret_bytes([3; 32]).public()),
            gateway_pairing_id: Some([4; 16]),
            local_scopes: ScopeSet::read_only_default(),
            created_at,
            expires_at: None,
            revoked_at: None,
        }
    }

    fn scopes_of(store: &StateStore) -> String {
        store
            .pairing("remote-1", "sidecar-1")
            .unwrap()
            .unwrap()
            .local_scopes
            .to_oauth()
    }

    #[test]
    fn the_per_request_read_sees_every_change_at_once_from_this_process_or_another() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = StateStore::open(dir.path()).unwrap();
        daemon.upsert_pairing(&pairing("remote-1", 100)).unwrap();
        let read_only = ScopeSet::read_only_default().to_oauth();
        for _ in 0..3 {
            assert_eq!(scopes_of(&daemon), read_only);
        }
        // A command in another process (its own store and connection): a grant, then a revoke.
        let cli = StateStore::open(dir.path()).unwrap();
        let granted = ScopeSet::from_oauth(&format!("{read_only} ibkr:orders:write"));
        assert!(
            cli.set_local_scopes("remote-1", "sidecar-1", &granted)
                .unwrap()
        );
        assert_eq!(scopes_of(&daemon), granted.to_oauth());
        assert!(cli.revoke_pairing("remote-1", "sidecar-1", 200).unwrap());
        let record = daemon.pairing("remote-1", "sidecar-1").unwrap().unwrap();
        assert_eq!(record.revoked_at, Some(200));
        // This process, through the store and around it on the same connection.
        daemon.upsert_pairing(&pairing("remote-1", 300)).unwrap();
        assert_eq!(scopes_of(&daemon), read_only);
        daemon
            .lock()
            .unwrap()
            .execute("UPDATE pairings SET revoked_at = 400", [])
            .unwrap();
        let record = daemon.pairing("remote-1", "sidecar-1").unwrap().unwrap();
        assert_eq!(record.revoked_at, Some(400));
        // Unpaired from another process: the record is gone at once.
        cli.lock()
            .unwrap()
            .execute("DELETE FROM pairings", [])
            .unwrap();
        assert_eq!(daemon.pairing("remote-1", "sidecar-1").unwrap(), None);
        // Expiry is decided on the record at each use, never cached.
        let mut expiring = pairing("remote-1", 500);
        expiring.expires_at = Some(600);
        cli.upsert_pairing(&expiring).unwrap();
        let record = daemon.pairing("remote-1", "sidecar-1").unwrap().unwrap();
        assert!(record.is_active(599));
        let record = daemon.pairing("remote-1", "sidecar-1").unwrap().unwrap();
        assert!(!record.is_active(600));
    }

    #[test]
    fn an_unchanged_pairing_is_served_from_memory_and_a_change_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.upsert_pairing(&pairing("remote-1", 100)).unwrap();
        assert!(store.pairing("remote-1", "sidecar-1").unwrap().is_some());
        // Mark the cached record: only a read served from memory can return the mark.
        {
            let mut cache = store.pairing_cache.lock().unwrap();
            assert_eq!(cache.entries.len(), 1);
            if let Some(record) = cache.entries[0].1.as_mut() {
                record.user_id = "from-memory".into();
            }
        }
        let served = store.pairing("remote-1", "sidecar-1").unwrap().unwrap();
        assert_eq!(served.user_id, "from-memory");
        // Any write, here from another connection to a table the record is not in, drops it.
        let other = StateStore::open(dir.path()).unwrap();
        other.insert_owner_request("settle", "{}", 1).unwrap();
        let served = store.pairing("remote-1", "sidecar-1").unwrap().unwrap();
        assert_eq!(served.user_id, "user-1");
        // Bounded.
        for index in 0..(MAX_CACHED_PAIRINGS * 2) {
            assert_eq!(store.pairing(&format!("r-{index}"), "s").unwrap(), None);
        }
        assert!(store.pairing_cache.lock().unwrap().entries.len() <= MAX_CACHED_PAIRINGS);
    }

    #[test]
    fn database_file_is_owner_only_and_schema_is_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = StateStore::open(&state).unwrap();
        drop(store);
        let mode = std::fs::metadata(state.join(STATE_DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reopening an existing store works (migration is idempotent).
        StateStore::open(&state).unwrap();
    }

    #[test]
    fn pairing_records_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            store.upsert_pairing(&pairing("remote-1", 100)).unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        let record = store.pairing("remote-1", "sidecar-1").unwrap().unwrap();
        assert_eq!(record, pairing("remote-1", 100));
        assert!(record.local_scopes.contains("ibkr:accounts:read"));
        assert!(!record.local_scopes.contains("ibkr:orders:write"));
        assert_eq!(store.pairings().unwrap().len(), 1);
    }

    #[test]
    fn dialable_pairing_is_the_newest_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.dialable_pairing("sidecar-1", 1000).unwrap().is_none());
        store.upsert_pairing(&pairing("old", 100)).unwrap();
        store.upsert_pairing(&pairing("new", 200)).unwrap();
        let mut expired = pairing("expired", 300);
        expired.expires_at = Some(500);
        store.upsert_pairing(&expired).unwrap();
        let mut keyless = pairing("keyless", 400);
        keyless.gateway_public_key = None;
        store.upsert_pairing(&keyless).unwrap();

        let chosen = store.dialable_pairing("sidecar-1", 1000).unwrap().unwrap();
        assert_eq!(chosen.remote_instance_id, "new");
        assert!(store.revoke_pairing("new", "sidecar-1", 1001).unwrap());
        assert!(!store.revoke_pairing("new", "sidecar-1", 1002).unwrap());
        let chosen = store.dialable_pairing("sidecar-1", 1003).unwrap().unwrap();
        assert_eq!(chosen.remote_instance_id, "old");
        let revoked = store.pairing("new", "sidecar-1").unwrap().unwrap();
        assert!(!revoked.is_active(1003));
        assert_eq!(revoked.status(1003), "revoked");
        assert_eq!(
            store
                .pairing("expired", "sidecar-1")
                .unwrap()
                .unwrap()
                .status(1000),
            "expired"
        );
    }

    #[test]
    fn handshake_timestamps_strictly_increase_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.next_handshake_timestamp("s", 1000).unwrap(), 1000);
        // Same clock reading, and a clock that went backwards: still strictly increasing.
        assert_eq!(store.next_handshake_timestamp("s", 1000).unwrap(), 1001);
        assert_eq!(store.next_handshake_timestamp("s", 500).unwrap(), 1002);
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.next_handshake_timestamp("s", 900).unwrap(), 1003);
        assert_eq!(store.next_handshake_timestamp("s", 5000).unwrap(), 5000);
        // Per sidecar id.
        assert_eq!(store.next_handshake_timestamp("other", 10).unwrap(), 10);
    }

    #[test]
    fn relay_sessions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let record = RelaySessionRecord {
            session_id: "ab".repeat(16),
            remote_instance_id: "remote-1".into(),
            sidecar_id: "sidecar-1".into(),
            created_at: 10,
            expires_at: 100,
            last_heartbeat_at: 10,
            closed_at: None,
        };
        store.insert_relay_session(&record).unwrap();
        store.touch_relay_session(&record.session_id, 20).unwrap();
        store.renew_relay_session(&record.session_id, 200).unwrap();
        let read = store.relay_session(&record.session_id).unwrap().unwrap();
        assert_eq!((read.last_heartbeat_at, read.expires_at), (20, 200));
        assert!(read.is_open(150));
        store.close_relay_session(&record.session_id, 30).unwrap();
        let read = store.relay_session(&record.session_id).unwrap().unwrap();
        assert_eq!(read.closed_at, Some(30));
        assert!(!read.is_open(31));
        assert_eq!(store.relay_sessions().unwrap().len(), 1);
    }

    fn identity(id: &str) -> IdentityRecord {
        IdentityRecord {
            sidecar_id: id.into(),
            display_name: "laptop".into(),
            public_key: StaticKeypair::from_secret_bytes([8; 32]).public(),
            has_secret: false,
            created_at: 1,
        }
    }

    fn local(remote: &str, sidecar: &str) -> PairingRecord {
        PairingRecord {
            remote_instance_id: remote.into(),
            sidecar_id: sidecar.into(),
            user_id: "local-user".into(),
            gateway_url: None,
            relay_url: None,
            gateway_public_key: None,
            gateway_pairing_id: None,
            local_scopes: ScopeSet::read_only_default(),
            created_at: 100,
            expires_at: Some(400),
            revoked_at: None,
        }
    }

    #[test]
    fn local_pairing_binds_a_fresh_identity_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .create_local_pairing(&local("remote-1", "sidecar-example"), 100)
                .unwrap_err()
                .code(),
            ErrorCode::IdentityMissing
        );
        store.insert_identity(&identity("sidecar-default")).unwrap();
        let write = store
            .create_local_pairing(&local("remote-1", "sidecar-example"), 100)
            .unwrap();
        assert_eq!(write.rebound_from.as_deref(), Some("sidecar-default"));
        assert!(!write.replaced);
        assert_eq!(
            store.identity().unwrap().unwrap().sidecar_id,
            "sidecar-example"
        );
        // Once paired, the identity keeps its id.
        let error = store
            .create_local_pairing(&local("remote-2", "sidecar-other"), 100)
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::IdentityMissing);
        assert!(error.detail().unwrap_or("").contains("sidecar-example"));
        // The same pair again replaces the keyless record.
        let write = store
            .create_local_pairing(&local("remote-1", "sidecar-example"), 100)
            .unwrap();
        assert_eq!(
            write,
            LocalPairingWrite {
                rebound_from: None,
                replaced: true
            }
        );
    }

    #[test]
    fn local_pairing_never_drops_a_pinned_key_silently() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.insert_identity(&identity("sidecar-1")).unwrap();
        store.upsert_pairing(&pairing("remote-1", 100)).unwrap();
        let error = store
            .create_local_pairing(&local("remote-1", "sidecar-1"), 200)
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::CliArgumentInvalid);
        assert!(
            store
                .pairing("remote-1", "sidecar-1")
                .unwrap()
                .unwrap()
                .gateway_public_key
                .is_some()
        );
        assert!(store.revoke_pairing("remote-1", "sidecar-1", 201).unwrap());
        store
            .create_local_pairing(&local("remote-1", "sidecar-1"), 202)
            .unwrap();
        let record = store.pairing("remote-1", "sidecar-1").unwrap().unwrap();
        assert!(record.gateway_public_key.is_none() && record.revoked_at.is_none());
    }

    #[test]
    fn bound_sessions_and_closing_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        for (id, remote, created) in [
            ("a", "remote-1", 10),
            ("b", "remote-1", 20),
            ("c", "remote-2", 30),
        ] {
            store
                .insert_relay_session(&RelaySessionRecord {
                    session_id: id.into(),
                    remote_instance_id: remote.into(),
                    sidecar_id: "sidecar-1".into(),
                    created_at: created,
                    expires_at: 100,
                    last_heartbeat_at: created,
                    closed_at: None,
                })
                .unwrap();
        }
        let bound = store.bound_relay_sessions("remote-1", "sidecar-1").unwrap();
        assert_eq!(
            bound
                .iter()
                .map(|s| s.session_id.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(bound[0].status(50), "open");
        assert_eq!(bound[0].status(100), "expired");
        assert_eq!(
            store
                .close_bound_relay_sessions("remote-1", "sidecar-1", 60)
                .unwrap(),
            2
        );
        assert!(
            store
                .bound_relay_sessions("remote-1", "sidecar-1")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.relay_session("a").unwrap().unwrap().status(61),
            "closed"
        );
        assert_eq!(
            store
                .bound_relay_sessions("remote-2", "sidecar-1")
                .unwrap()
                .len(),
            1
        );
    }
}
