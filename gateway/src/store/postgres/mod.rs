//! The cluster backend: the gateway's state in PostgreSQL, shared by every replica.
//!
//! The same tables and the same rules as the embedded backend ([`super::sqlite`]), enforced by
//! the database for every replica at once:
//!
//! - a pairing code's row is locked (`SELECT ... FOR UPDATE`) by whoever counts a guess on it
//!   or finishes it, so two replicas finishing one code at once see it one after the other:
//!   exactly one pairs, the other finds it used;
//! - at most one active pairing per key and per sidecar id: unique partial indexes, so a race
//!   between two codes for one key ends in a constraint error for the second, never in two
//!   active rows;
//! - the handshake timestamp per key only grows: one `INSERT ... ON CONFLICT DO UPDATE ...
//!   WHERE` statement, a compare-and-set in the database;
//! - the pairings generation is raised by a trigger in the writer's own transaction, whichever
//!   replica or tool writes.
//!
//! Schema changes run in one transaction under an advisory lock, so replicas starting together
//! do not race to create the tables.
//!
//! - [`pairing_codes`], [`pairings`], [`handshakes`], [`anchors`], [`mcp_sessions`],
//!   [`exchanges`]: the operations, one file per concern.

pub mod anchors;
pub mod exchanges;
pub mod handshakes;
pub mod mcp_sessions;
pub mod pairing_codes;
pub mod pairings;
pub mod refresh_tokens;

use super::{KeyContinuity, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use protocol::identity::PublicKey;
use std::time::Duration;
use tokio_postgres::NoTls;

/// 1: pairing codes, pairings (with history), handshake timestamps, the gateway key's record,
/// the newest sidecar journal entry on record per pairing, and the pairings generation.
/// 2: MCP sessions (so any replica serves a session another created), pairing exchanges in
/// progress (so `/pair/finish` may reach another replica than `/pair/start`), and the copy
/// of every replica's audit chain.
/// 3: the built-in authorization server's refresh tokens.
const SCHEMA_VERSION: i32 = 3;

/// The oldest schema version whose gateways can still use a database at [`SCHEMA_VERSION`]
/// (recorded with it, so that during a rolling upgrade older replicas go on beside newer
/// ones): versions 2 and 3 only added tables.
const COMPATIBLE_SINCE: i32 = 1;

/// What the schema table says.
#[derive(Clone, Copy, Debug)]
struct RecordedSchema {
    version: i32,
    compatible_since: i32,
}

async fn recorded_schema(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<Option<RecordedSchema>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT version, compatible_since FROM ibkr_gateway_schema WHERE id = 1",
            &[],
        )
        .await?
        .map(|row| RecordedSchema {
            version: row.get(0),
            compatible_since: row.get(1),
        }))
}

/// Whether this gateway can use a database at `schema`: any version up to its own (it
/// upgrades older ones, unless `as_is`: then it needs its own), and a newer one whose writer
/// declared this version compatible.
fn check_schema(schema: RecordedSchema, as_is: bool) -> Result<(), StoreError> {
    if schema.version < 1 {
        return Err(StoreError::Corrupt("unsupported schema version"));
    }
    if schema.version > SCHEMA_VERSION && schema.compatible_since > SCHEMA_VERSION {
        return Err(StoreError::Config(
            "the shared store was upgraded by a newer gateway that this one cannot work with; upgrade this gateway",
        ));
    }
    if as_is && schema.version < SCHEMA_VERSION {
        return Err(StoreError::Config(
            "the shared store's schema is older than this gateway's: start a gateway of this version on it first",
        ));
    }
    Ok(())
}

/// The advisory lock key schema changes run under (any constant; "ibkrgw01" in ASCII).
const MIGRATION_LOCK: i64 = 0x6962_6b72_6777_3031;

const SCHEMA_V1: &str = "
CREATE TABLE pairing_codes (
    code_id      TEXT PRIMARY KEY,
    secret       TEXT,
    user_id      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE TABLE pairings (
    seq                BIGSERIAL NOT NULL,
    pairing_id         TEXT PRIMARY KEY,
    sidecar_id         TEXT NOT NULL,
    sidecar_public_key TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    display_name       TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    revoked_reason     TEXT
);
CREATE UNIQUE INDEX pairings_active_sidecar_id ON pairings(sidecar_id) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX pairings_active_key ON pairings(sidecar_public_key) WHERE revoked_at IS NULL;
CREATE INDEX pairings_by_user ON pairings(user_id);
CREATE TABLE handshake_timestamps (
    sidecar_public_key TEXT PRIMARY KEY,
    last_timestamp_ms  BIGINT NOT NULL
);
CREATE TABLE gateway_key (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    public_key  TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE TABLE journal_anchors (
    pairing_id TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE TABLE pairings_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO pairings_generation (id, generation) VALUES (1, 0);
CREATE FUNCTION ibkr_raise_pairings_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pairings_generation SET generation = generation + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;
CREATE TRIGGER pairings_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pairings
    FOR EACH STATEMENT EXECUTE FUNCTION ibkr_raise_pairings_generation();
";

const SCHEMA_V2: &str = "
CREATE TABLE mcp_sessions (
    session_digest    BYTEA PRIMARY KEY,
    subject           TEXT,
    initialize_params TEXT,
    created_at        BIGINT NOT NULL,
    last_used_at      BIGINT NOT NULL
);
CREATE INDEX mcp_sessions_by_last_use ON mcp_sessions(last_used_at);
CREATE TABLE pairing_exchanges (
    exchange_id BYTEA PRIMARY KEY,
    code_id     TEXT NOT NULL,
    peer        TEXT NOT NULL,
    start       BYTEA NOT NULL,
    seed        BYTEA NOT NULL,
    decoy       TEXT,
    started_at  BIGINT NOT NULL
);
CREATE INDEX pairing_exchanges_by_start ON pairing_exchanges(started_at);
CREATE TABLE audit_records (
    replica_id    TEXT NOT NULL,
    id            BIGINT NOT NULL,
    time_ms       BIGINT NOT NULL,
    subject       TEXT NOT NULL,
    token_id_hmac TEXT,
    client_id     TEXT,
    tool          TEXT NOT NULL,
    scope         TEXT,
    request_id    TEXT,
    payload_hash  TEXT,
    sidecar_id    TEXT,
    outcome       TEXT NOT NULL,
    latency_ms    BIGINT NOT NULL,
    pairing_id    TEXT,
    journal_seq   BIGINT,
    journal_hash  TEXT,
    note          TEXT,
    prev_hash     TEXT,
    hash          TEXT,
    -- The row's chain hash (or `unchained-<id>` for rows from before the chain): a trail put
    -- back from an older copy reuses ids, never hashes, so both versions are kept.
    row_key       TEXT NOT NULL,
    PRIMARY KEY (replica_id, row_key)
);
CREATE INDEX audit_records_by_replica_id ON audit_records(replica_id, id);
CREATE INDEX audit_records_by_time ON audit_records(time_ms);
";

/// `operation`, or [`StoreError::Unavailable`] when it takes longer than `wait`: callers on
/// a request's path never wait on the shared database for long.
pub(crate) async fn within<T>(
    wait: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(wait, operation)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the shared store did not answer in time".into(),
            ))
        })
}

const SCHEMA_V3: &str = "
CREATE TABLE refresh_tokens (
    digest      BYTEA PRIMARY KEY,
    family_id   TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens(family_id);
CREATE INDEX refresh_tokens_by_approval ON refresh_tokens(approval_id);
";

/// The one-row read of the pairings generation.
const SELECT_GENERATION: &str = "SELECT generation FROM pairings_generation WHERE id = 1";

/// How the cluster backend reaches PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// A libpq-style connection string or URL (`host=... user=... dbname=...` or
    /// `postgresql://user@host:port/db`). A Unix socket directory is a `host` that starts
    /// with `/`.
    pub url: String,
    /// Connections kept per replica.
    pub max_connections: usize,
    /// How long a call waits for a connection (to connect, or for a free one).
    pub connect_timeout: Duration,
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> PostgresOptions {
        PostgresOptions {
            url: url.into(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Cloneable handle on the shared database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it may hold a password.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, and creates or upgrades the schema.
    pub async fn open(options: &PostgresOptions) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::connect(options)?;
        store.migrate().await?;
        Ok(store)
    }

    /// The pool, before anything is asked of the database.
    fn connect(options: &PostgresOptions) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|_| StoreError::Config("the PostgreSQL connection string is not valid"))?;
        config.connect_timeout(options.connect_timeout);
        config.application_name("ibkr-gateway");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .timeouts(Timeouts {
                wait: Some(options.connect_timeout),
                create: Some(options.connect_timeout),
                recycle: Some(options.connect_timeout),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|_| StoreError::Config("the PostgreSQL pool could not be built"))?;
        Ok(PostgresStore { pool })
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(StoreError::from_pool)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS ibkr_gateway_schema (
                 id      INTEGER PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL
             );
             ALTER TABLE ibkr_gateway_schema
                 ADD COLUMN IF NOT EXISTS compatible_since INTEGER NOT NULL DEFAULT 1",
        )
        .await?;
        let recorded = recorded_schema(&tx).await?;
        // Each step upgrades by one version, so a database at any earlier version (or none)
        // arrives at the current one; one a newer gateway wrote is used as it is if that
        // gateway said this one can.
        let mut at = match recorded {
            None => {
                tx.batch_execute(SCHEMA_V1).await?;
                tx.execute(
                    "INSERT INTO ibkr_gateway_schema (id, version) VALUES (1, 1)",
                    &[],
                )
                .await?;
                1
            }
            Some(schema) => {
                check_schema(schema, false)?;
                if schema.version >= SCHEMA_VERSION {
                    tx.commit().await?;
                    return Ok(());
                }
                schema.version
            }
        };
        if at == 1 {
            tx.batch_execute(SCHEMA_V2).await?;
            at = 2;
        }
        if at == 2 {
            tx.batch_execute(SCHEMA_V3).await?;
            at = 3;
        }
        tx.execute(
            "UPDATE ibkr_gateway_schema SET version = $1, compatible_since = $2 WHERE id = 1",
            &[&at, &COMPATIBLE_SINCE],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Connects to a database a gateway already set up, without changing its schema (for
    /// commands that only read).
    pub async fn open_existing(options: &PostgresOptions) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::connect(options)?;
        let client = store.client().await?;
        let recorded = recorded_schema(&client).await?;
        match recorded {
            Some(schema) => check_schema(schema, true)?,
            None => {
                return Err(StoreError::Config(
                    "the shared store has no schema yet: start a gateway on it first",
                ));
            }
        }
        drop(client);
        Ok(store)
    }

    /// The pairings generation as last committed, by any replica.    /// The pairings generation as last committed, by any replica.
    pub(crate) async fn pairings_generation(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(SELECT_GENERATION).await?;
        Ok(client.query_one(&statement, &[]).await?.get(0))
    }

    /// See [`super::Store::check_gateway_key`]. The table is locked for the check, so replicas
    /// starting together record one key.
    pub(crate) async fn check_gateway_key(
        &self,
        current: Option<PublicKey>,
        now_unix: i64,
    ) -> Result<KeyContinuity, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE gateway_key IN EXCLUSIVE MODE")
            .await?;
        let recorded: Option<String> = tx
            .query_opt("SELECT public_key FROM gateway_key WHERE id = 1", &[])
            .await?
            .map(|row| row.get(0));
        let active: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM pairings WHERE revoked_at IS NULL",
                &[],
            )
            .await?
            .get(0);
        let verdict = super::records::key_continuity(recorded.as_deref(), current.as_ref(), active);
        if let KeyContinuity::Broken { .. } = verdict {
            return Ok(verdict);
        }
        let current_hex = current.as_ref().map(PublicKey::to_hex);
        if let (KeyContinuity::Recorded, Some(current)) = (&verdict, &current_hex) {
            tx.execute(
                "INSERT INTO gateway_key (id, public_key, recorded_at) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO UPDATE SET public_key = EXCLUDED.public_key,
                                                recorded_at = EXCLUDED.recorded_at",
                &[current, &now_unix],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(verdict)
    }

    /// A cheap round trip to the database (for `/readyz`).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}
