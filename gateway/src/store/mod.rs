//! The gateway's durable state, behind one seam: pairing codes, pairings, the last accepted
//! handshake timestamp per sidecar key, the gateway key's record, and (through the audit
//! trail, see `crate::audit`) the audit table.
//!
//! [`Store`] is what the rest of the gateway calls. It holds one backend and keeps, above
//! it, what is the same for every backend: the per-call pairing cache and when it must be
//! emptied. A backend keeps every atomic rule (single-use codes, attempt limits, strictly
//! increasing handshake timestamps, one active pairing per key and per sidecar id) in its
//! database, never in a process's memory, so the rules hold for every process that opens it.
//!
//! - [`records`]: what is stored, and the rules on a code's row, whatever the backend.
//! - [`sqlite`]: the embedded backend, one SQLite file in the state directory (the default).
//! - [`pairing_cache`]: the per-call pairing lookup, served from memory while the pairings
//!   generation (a counter every change of the pairings raises) is unchanged.
//! - [`keys`]: the gateway's static key, audit secret and instance id, as files in the state
//!   directory.

pub mod keys;
pub mod migrate;
pub mod pairing_cache;
pub mod postgres;
pub mod records;
pub mod sqlite;

pub use pairing_cache::UserPairings;
pub use postgres::{PostgresOptions, PostgresStore};
pub use records::{
    CodeCheck, CodeState, CompleteOutcome, NewPairing, NewPairingCode, NewRefreshToken,
    PairingExchange, PairingId, PairingRecord, RefreshGrant, RefreshSuccessor, RefreshUse,
};
pub use sqlite::SqliteStore;
pub(crate) use sqlite::{connect, write_transaction};

use protocol::identity::PublicKey;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The shared database could not be reached in time (down, or every connection busy).
    #[error("the shared database is unavailable: {0}")]
    Unavailable(String),
    #[error("store configuration: {0}")]
    Config(&'static str),
}

impl StoreError {
    pub(crate) fn from_pool(error: deadpool_postgres::PoolError) -> StoreError {
        match error {
            deadpool_postgres::PoolError::Backend(error) => StoreError::Postgres(error),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// What [`Store::check_gateway_key`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyContinuity {
    /// The key is the one the pairings were made with.
    Same,
    /// Nothing contradicted it; it is recorded now.
    Recorded,
    /// Active pairings were made with another key (or the key file is gone).
    Broken {
        recorded_fingerprint: String,
        active_pairings: u64,
        key_file_missing: bool,
    },
}

/// The backend a [`Store`] runs on.
#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Cloneable handle on the store.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    pairing_cache: Arc<pairing_cache::PairingCache>,
    /// The shared store's last answers about the pairings generation (see
    /// [`Store::user_pairings`]).
    shared_health: Arc<Mutex<SharedHealth>>,
}

/// How long a per-call read of the shared store's pairings generation may take.
const GENERATION_WAIT: Duration = Duration::from_secs(1);
/// After a failed read, how long calls are served from memory without asking again.
const OUTAGE_RETRY: Duration = Duration::from_secs(1);

/// What the replica last learned from the shared store.
#[derive(Debug, Default)]
struct SharedHealth {
    /// The pairings generation the last successful read saw.
    generation: Option<i64>,
    /// When a read last failed, while it has not succeeded since.
    failing_since: Option<Instant>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
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

pub(crate) fn create_private_file(path: &Path) -> Result<(), std::io::Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(|_| ())
}

impl Store {
    /// Opens (creating if needed) the embedded store in `state_dir`. Blocking: call it from
    /// `spawn_blocking` or before the runtime serves traffic.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::embedded(SqliteStore::open(state_dir)?))
    }

    /// The embedded store on an open SQLite file.
    pub fn embedded(sqlite: SqliteStore) -> Store {
        Store::on(Backend::Sqlite(sqlite))
    }

    /// Opens the cluster store: the shared PostgreSQL database (creating or upgrading its
    /// schema). Every replica opens the same one.
    pub async fn open_postgres(options: &PostgresOptions) -> Result<Store, StoreError> {
        Ok(Store::on(Backend::Postgres(
            PostgresStore::open(options).await?,
        )))
    }

    fn on(backend: Backend) -> Store {
        Store {
            backend,
            pairing_cache: Arc::new(pairing_cache::PairingCache::new(
                pairing_cache::MAX_CACHED_USERS,
            )),
            shared_health: Arc::new(Mutex::new(SharedHealth::default())),
        }
    }

    fn note_generation(&self, generation: i64) {
        if let Ok(mut health) = self.shared_health.lock() {
            // Generations only grow; a slower read must not put an older one back.
            health.generation = Some(health.generation.map_or(generation, |g| g.max(generation)));
            health.failing_since = None;
        }
    }

    /// The shared store's pairings generation, bounded in time; after a failure, not asked
    /// again for [`OUTAGE_RETRY`], so calls during an outage do not each wait for it.
    async fn shared_generation(&self, postgres: &PostgresStore) -> Result<i64, StoreError> {
        let failing = self
            .shared_health
            .lock()
            .ok()
            .and_then(|health| health.failing_since)
            .is_some_and(|since| since.elapsed() < OUTAGE_RETRY);
        if failing {
            return Err(StoreError::Unavailable(
                "the shared store is unreachable".into(),
            ));
        }
        match postgres::within(GENERATION_WAIT, postgres.pairings_generation()).await {
            Ok(generation) => {
                self.note_generation(generation);
                Ok(generation)
            }
            Err(error) => {
                self.note_failure();
                Err(error)
            }
        }
    }

    fn note_failure(&self) {
        if let Ok(mut health) = self.shared_health.lock() {
            health.failing_since.get_or_insert_with(Instant::now);
        }
    }

    /// The shared database, for a cluster store.
    pub(crate) fn shared(&self) -> Option<&PostgresStore> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(postgres) => Some(postgres),
        }
    }

    /// The SQLite file of an embedded store (tests reach the audit table through it).
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> Result<&SqliteStore, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => Ok(sqlite),
            Backend::Postgres(_) => Err(StoreError::Config("not an embedded store")),
        }
    }

    /// The SQLite file's path, for an embedded store.
    #[cfg(test)]
    pub(crate) fn path(&self) -> Option<&Path> {
        self.sqlite().ok().map(SqliteStore::path)
    }

    /// The pairings generation as last committed, by any process (see [`pairing_cache`]).
    pub(crate) async fn pairings_generation(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.pairings_generation(),
            Backend::Postgres(postgres) => self.shared_generation(postgres).await,
        }
    }

    /// Key continuity, checked at start before the key is used: the pairings were made with
    /// the recorded public key, and a gateway that would answer them with another one (its
    /// key file deleted, replaced or edited) must not start, or every paired laptop would
    /// fail its handshake with nothing but HANDSHAKE_FAILED to go on. Records `current` when
    /// there is nothing to contradict (no record yet, or no active pairing). Blocking.
    pub fn check_gateway_key(
        &self,
        current: Option<&PublicKey>,
        now_unix: i64,
    ) -> Result<KeyContinuity, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.check_gateway_key(current, now_unix),
            // Called from the blocking pool (startup and the CLI), where a runtime handle
            // exists and may block.
            Backend::Postgres(postgres) => tokio::runtime::Handle::try_current()
                .map_err(|_| StoreError::Config("the cluster store needs a Tokio runtime"))?
                .block_on(postgres.check_gateway_key(current.cloned(), now_unix)),
        }
    }

    /// A cheap round trip to the database (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.ping().await,
            Backend::Postgres(postgres) => postgres.ping().await,
        }
    }

    // ---- pairing codes (single use, bounded tested guesses; see `sqlite::pairing_codes`)

    /// Stores a new code. Returns `false` when a live code already uses this id (the caller
    /// draws a new one). A dead code (used, expired or out of attempts) with the same id is
    /// replaced.
    pub async fn insert_pairing_code(&self, code: NewPairingCode) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.insert_pairing_code(code).await,
            Backend::Postgres(postgres) => postgres.insert_pairing_code(code).await,
        }
    }

    /// Looks a code up for `/pair/start`. Reads only: a start spends nothing.
    pub async fn lookup_pairing_code(
        &self,
        code_id: String,
        now_ms: i64,
    ) -> Result<CodeCheck, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.lookup_pairing_code(code_id, now_ms).await,
            Backend::Postgres(postgres) => postgres.lookup_pairing_code(code_id, now_ms).await,
        }
    }

    /// Counts one tested guess against a code, durably, before the gateway checks it. `Ok(None)`:
    /// counted, go ahead. `Ok(Some(state))`: the code died since the start; nothing was
    /// counted.
    pub async fn count_pairing_attempt(
        &self,
        code_id: String,
        now_ms: i64,
    ) -> Result<Option<CodeState>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.count_pairing_attempt(code_id, now_ms).await,
            Backend::Postgres(postgres) => postgres.count_pairing_attempt(code_id, now_ms).await,
        }
    }

    // ---- pairings

    /// Commits a verified pairing atomically: refuses a key or a sidecar id that is in an
    /// active pairing, records the new pairing, and marks the code used (erasing its secret).
    pub async fn complete_pairing(
        &self,
        pairing: NewPairing,
    ) -> Result<CompleteOutcome, StoreError> {
        let outcome = match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.complete_pairing(pairing).await,
            Backend::Postgres(postgres) => postgres.complete_pairing(pairing).await,
        };
        self.pairing_cache.clear();
        outcome
    }

    /// The active pairing of a sidecar key, if any (at most one: the database enforces it).
    pub async fn active_pairing_by_key(
        &self,
        key: PublicKey,
    ) -> Result<Option<PairingRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.active_pairing_by_key(key).await,
            Backend::Postgres(postgres) => postgres.active_pairing_by_key(key).await,
        }
    }

    /// The active pairings serving an OAuth subject, newest first, read from the database.
    pub async fn active_pairings_for_user(
        &self,
        user_id: String,
    ) -> Result<Vec<PairingRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.active_pairings_for_user(user_id).await,
            Backend::Postgres(postgres) => postgres.active_pairings_for_user(user_id).await,
        }
    }

    /// The per-call lookup: the user's active pairings (and, when there is none, whether a key
    /// rotation ended the last one), exactly as the database holds them now, whichever
    /// process changed them last. Served from memory while the pairings generation is the one
    /// the entry was read at (see [`pairing_cache`]).
    ///
    /// While the shared store cannot be read, a user's pairings read at the last generation
    /// this replica saw are served from memory, so live sessions keep serving through an
    /// outage: no revoke can commit while it lasts, and the revocation poll reads the
    /// generation every 2 s, so only a revoke committed in the poll interval before the outage
    /// may be missed until the store is back. A user not in memory is refused.
    pub async fn user_pairings(&self, user_id: &str) -> Result<Arc<UserPairings>, StoreError> {
        let generation = match self.pairings_generation().await {
            Ok(generation) => generation,
            Err(error) => {
                let last = match &self.backend {
                    Backend::Sqlite(_) => None,
                    Backend::Postgres(_) => self
                        .shared_health
                        .lock()
                        .ok()
                        .and_then(|health| health.generation),
                };
                return match last.and_then(|last| self.pairing_cache.get(user_id, last)) {
                    Some(hit) => Ok(hit),
                    None => Err(error),
                };
            }
        };
        if let Some(hit) = self.pairing_cache.get(user_id, generation) {
            return Ok(hit);
        }
        let (generation, pairings) = match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.read_user_pairings(user_id.to_string()).await?,
            Backend::Postgres(postgres) => postgres.read_user_pairings(user_id.to_string()).await?,
        };
        let pairings = Arc::new(pairings);
        self.pairing_cache
            .insert(user_id, generation, Arc::clone(&pairings));
        Ok(pairings)
    }

    /// Whether this pairing exists and is not revoked.
    pub async fn pairing_is_active(&self, pairing_id: PairingId) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.pairing_is_active(pairing_id).await,
            Backend::Postgres(postgres) => postgres.pairing_is_active(pairing_id).await,
        }
    }

    /// Every pairing, newest first, revoked ones included.
    pub async fn list_pairings(&self) -> Result<Vec<PairingRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.list_pairings().await,
            Backend::Postgres(postgres) => postgres.list_pairings().await,
        }
    }

    /// Revokes the active pairing with this sidecar id. Returns `false` if there is none.
    pub async fn revoke_pairing(
        &self,
        sidecar_id: String,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let revoked = match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.revoke_pairing(sidecar_id, now_ms).await,
            Backend::Postgres(postgres) => postgres.revoke_pairing(sidecar_id, now_ms).await,
        };
        self.pairing_cache.clear();
        revoked
    }

    /// Revokes every active pairing because the gateway's key is being replaced, in one
    /// transaction, and records that reason so each user is told why. Returns how many.
    pub async fn revoke_all_for_key_rotation(&self, now_ms: i64) -> Result<usize, StoreError> {
        let revoked = match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.revoke_all_for_key_rotation(now_ms).await,
            Backend::Postgres(postgres) => postgres.revoke_all_for_key_rotation(now_ms).await,
        };
        self.pairing_cache.clear();
        revoked
    }

    /// When the user has no active pairing: the time their newest pairing was revoked, if a
    /// gateway key rotation revoked it.
    pub async fn pairing_ended_by_key_rotation(
        &self,
        user_id: String,
    ) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.pairing_ended_by_key_rotation(user_id).await,
            Backend::Postgres(postgres) => postgres.pairing_ended_by_key_rotation(user_id).await,
        }
    }

    /// For the revocation poll: when the pairings changed since `seen_generation`, the ids of
    /// the active pairings. Returns the generation either way.
    pub async fn active_pairings_if_changed(
        &self,
        seen_generation: Option<i64>,
    ) -> Result<(i64, Option<HashSet<PairingId>>), StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.active_pairings_if_changed(seen_generation).await,
            Backend::Postgres(postgres) => {
                let read = postgres.active_pairings_if_changed(seen_generation).await;
                match &read {
                    Ok((generation, _)) => self.note_generation(*generation),
                    Err(_) => self.note_failure(),
                }
                read
            }
        }
    }

    // ---- journal anchors

    /// The newest sidecar journal entry on record for a pairing (the highest sequence number
    /// an order call's answer named), sent to the sidecar at every handshake.
    pub async fn journal_anchor(
        &self,
        pairing_id: PairingId,
    ) -> Result<Option<protocol::envelope::JournalRef>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.journal_anchor(pairing_id).await,
            Backend::Postgres(postgres) => postgres.journal_anchor(pairing_id).await,
        }
    }

    /// Records the journal entry an order call's answer named, for every replica's next
    /// handshake with that sidecar. The embedded store reads it from the audit trail, which
    /// holds it already.
    pub async fn record_journal_anchor(
        &self,
        pairing_id: PairingId,
        journal: protocol::envelope::JournalRef,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(postgres) => {
                postgres.record_journal_anchor(pairing_id, journal).await
            }
        }
    }

    // ---- handshake anti-replay

    /// The last handshake timestamp accepted from this key.
    pub async fn last_handshake_timestamp(
        &self,
        key: PublicKey,
    ) -> Result<Option<u64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.last_handshake_timestamp(key).await,
            Backend::Postgres(postgres) => postgres.last_handshake_timestamp(key).await,
        }
    }

    /// Records `timestamp_ms` for this key only if it is strictly greater than the stored one
    /// (compare-and-set in the database). Returns whether it was recorded.
    pub async fn accept_handshake_timestamp(
        &self,
        key: PublicKey,
        timestamp_ms: u64,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.accept_handshake_timestamp(key, timestamp_ms).await,
            Backend::Postgres(postgres) => {
                postgres.accept_handshake_timestamp(key, timestamp_ms).await
            }
        }
    }

    /// Keeps a refresh token (its digest and its family's terms).
    pub async fn insert_refresh_token(&self, token: NewRefreshToken) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.insert_refresh_token(token).await,
            Backend::Postgres(postgres) => postgres.insert_refresh_token(token).await,
        }
    }

    /// Spends a refresh token and stores its `successor`, in one transaction: a token is
    /// rotated once; presenting a spent one revokes its whole family (RFC 9700 section
    /// 4.14.2), the successor included, since the reuse waits for the rotation to commit.
    pub async fn use_refresh_token(
        &self,
        digest: [u8; 32],
        now_ms: i64,
        successor: RefreshSuccessor,
    ) -> Result<RefreshUse, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.use_refresh_token(digest, now_ms, successor).await,
            Backend::Postgres(postgres) => {
                postgres.use_refresh_token(digest, now_ms, successor).await
            }
        }
    }

    /// Revokes every refresh token from one approval (the owner revoked the agent, or one
    /// of its codes was reused). Returns how many were live.
    /// Revokes every refresh token of an approval; with `subject`, only if they are that
    /// user's (a revocation another user's laptop sends then changes nothing).
    pub async fn revoke_refresh_tokens_of_approval(
        &self,
        approval_id: String,
        subject: Option<String>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => {
                sqlite
                    .revoke_refresh_tokens_of_approval(approval_id, subject, now_ms)
                    .await
            }
            Backend::Postgres(postgres) => {
                postgres
                    .revoke_refresh_tokens_of_approval(approval_id, subject, now_ms)
                    .await
            }
        }
    }
}
