//! The shared copy of the audit trail (cluster store): every replica copies the rows of its
//! own chain, with their chain columns, into PostgreSQL under its replica id
//! ([`crate::store::keys::REPLICA_FILE`]), so the cluster's trail is read in one place and
//! survives the loss of a replica's disk.
//!
//! - The local chain stays the authority, and the copy runs in a task of its own
//!   ([`spawn_copier`]) that reads the table on the store's connection, never the writer's: a
//!   record is acknowledged once the local chain holds it, and neither an order call nor the
//!   writer ever waits for the copy. The copier wakes on every committed batch, and every
//!   [`COPY_RETRY`] while it is behind or failing.
//! - Rows are keyed by replica and chain hash, and a row already there is never replaced: a
//!   local database put back from an older copy (or resealed, or a `replica.id` copied to
//!   another machine) reuses ids but never hashes, so the shared copy keeps both versions.
//!   At start the copier resumes after the newest local row the copy already holds.
//! - One batch is one statement (arrays unnested in the database), bounded by [`COPY_WAIT`].
//!   A failure is logged at once and then at most every [`FAILURE_LOG_INTERVAL`].

use super::chain::RowColumns;
use super::log::{ChainedRow, StoredAuditRecord, stored_record};
use crate::store::{PostgresStore, SqliteStore, StoreError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest wait on the shared database for one copy statement.
pub const COPY_WAIT: Duration = Duration::from_secs(5);
/// How often the copier tries again while it is behind or failing.
pub const COPY_RETRY: Duration = Duration::from_secs(5);
/// Most rows copied in one statement.
pub const COPY_BATCH: usize = 500;
/// Repeated failures are logged at most this often.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The key of a row in the shared copy.
fn row_key(id: i64, hash: Option<&str>) -> String {
    match hash {
        Some(hash) => hash.to_string(),
        None => format!("unchained-{id}"),
    }
}

async fn bounded<T>(
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    crate::store::postgres::within(COPY_WAIT, operation).await
}

/// Copies one replica's trail into the shared store.
pub struct SharedCopy {
    store: PostgresStore,
    local: SqliteStore,
    replica_id: String,
}

impl std::fmt::Debug for SharedCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCopy")
            .field("replica_id", &self.replica_id)
            .finish_non_exhaustive()
    }
}

impl SharedCopy {
    /// `local`: the replica's own SQLite file (its audit table).
    pub fn new(store: PostgresStore, local: SqliteStore, replica_id: String) -> SharedCopy {
        SharedCopy {
            store,
            local,
            replica_id,
        }
    }

    /// The newest local row the copy already holds (0: none), looking back from the copy's
    /// newest id in windows of [`COPY_BATCH`].
    pub async fn resume_point(&self) -> Result<i64, StoreError> {
        let store = self.store.clone();
        let replica = self.replica_id.clone();
        let copied_max: Option<i64> = bounded(async move {
            let client = store.client().await?;
            Ok(client
                .query_one(
                    "SELECT MAX(id) FROM audit_records WHERE replica_id = $1",
                    &[&replica],
                )
                .await?
                .get(0))
        })
        .await?;
        let Some(copied_max) = copied_max else {
            return Ok(0);
        };
        let local_max = self
            .local
            .run(|conn| {
                Ok(
                    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM audit", [], |row| {
                        row.get::<_, i64>(0)
                    })?,
                )
            })
            .await?;
        let mut upper = copied_max.min(local_max);
        let window = i64::try_from(COPY_BATCH).unwrap_or(i64::MAX);
        while upper > 0 {
            let lower = upper.saturating_sub(window);
            let rows = self.rows(lower, upper).await?;
            let keys: Vec<(i64, String)> = rows
                .iter()
                .map(|(row, _, hash)| (row.id, row_key(row.id, hash.as_deref())))
                .collect();
            let store = self.store.clone();
            let replica = self.replica_id.clone();
            let wanted: Vec<String> = keys.iter().map(|(_, key)| key.clone()).collect();
            let present: Vec<String> = bounded(async move {
                let client = store.client().await?;
                let rows = client
                    .query(
                        "SELECT row_key FROM audit_records
                         WHERE replica_id = $1 AND row_key = ANY($2)",
                        &[&replica, &wanted],
                    )
                    .await?;
                Ok(rows.iter().map(|row| row.get(0)).collect())
            })
            .await?;
            if let Some((id, _)) = keys.iter().rev().find(|(_, key)| present.contains(key)) {
                if *id < copied_max {
                    tracing::warn!(
                        replica_id = %self.replica_id,
                        resume_after = id,
                        copied_max,
                        "the shared audit copy holds rows this replica's trail no longer has (a database put back, a reseal, or a copied replica.id); both versions are kept"
                    );
                }
                return Ok(*id);
            }
            upper = lower;
        }
        Ok(0)
    }

    /// Up to [`COPY_BATCH`] local rows with `after < id <= upper`, in order.
    async fn rows(&self, after: i64, upper: i64) -> Result<Vec<ChainedRow>, StoreError> {
        let limit = i64::try_from(COPY_BATCH).unwrap_or(i64::MAX);
        self.local
            .run(move |conn| {
                let mut statement = conn.prepare_cached(&format!(
                    "SELECT {} FROM audit WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
                    super::log::ROW_COLUMNS
                ))?;
                let rows = statement
                    .query_map(rusqlite::params![after, upper, limit], super::log::read_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Copies `rows` in one statement; a row already there is left as it is.
    pub async fn copy(&self, rows: &[ChainedRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut times = Vec::with_capacity(rows.len());
        let mut subjects = Vec::with_capacity(rows.len());
        let mut token_ids = Vec::with_capacity(rows.len());
        let mut client_ids = Vec::with_capacity(rows.len());
        let mut tools = Vec::with_capacity(rows.len());
        let mut scopes = Vec::with_capacity(rows.len());
        let mut request_ids = Vec::with_capacity(rows.len());
        let mut payload_hashes = Vec::with_capacity(rows.len());
        let mut sidecar_ids = Vec::with_capacity(rows.len());
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut latencies = Vec::with_capacity(rows.len());
        let mut pairing_ids = Vec::with_capacity(rows.len());
        let mut journal_seqs = Vec::with_capacity(rows.len());
        let mut journal_hashes = Vec::with_capacity(rows.len());
        let mut notes = Vec::with_capacity(rows.len());
        let mut prev_hashes = Vec::with_capacity(rows.len());
        let mut hashes = Vec::with_capacity(rows.len());
        let mut keys = Vec::with_capacity(rows.len());
        for (row, prev_hash, hash) in rows {
            ids.push(row.id);
            times.push(row.time_ms);
            subjects.push(row.subject.clone());
            token_ids.push(row.token_id_hmac.clone());
            client_ids.push(row.client_id.clone());
            tools.push(row.tool.clone());
            scopes.push(row.scope.clone());
            request_ids.push(row.request_id.clone());
            payload_hashes.push(row.payload_hash.clone());
            sidecar_ids.push(row.sidecar_id.clone());
            outcomes.push(row.outcome.clone());
            latencies.push(row.latency_ms);
            pairing_ids.push(row.pairing_id.clone());
            journal_seqs.push(row.journal_seq);
            journal_hashes.push(row.journal_hash.clone());
            notes.push(row.note.clone());
            prev_hashes.push(prev_hash.clone());
            hashes.push(hash.clone());
            keys.push(row_key(row.id, hash.as_deref()));
        }
        let store = self.store.clone();
        let replica = self.replica_id.clone();
        bounded(async move {
            let client = store.client().await?;
            let statement = client
                .prepare_cached(
                    "INSERT INTO audit_records (replica_id, id, time_ms, subject, token_id_hmac,
                         client_id, tool, scope, request_id, payload_hash, sidecar_id, outcome,
                         latency_ms, pairing_id, journal_seq, journal_hash, note, prev_hash, hash,
                         row_key)
                     SELECT $1, * FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::TEXT[],
                         $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[],
                         $11::TEXT[], $12::TEXT[], $13::BIGINT[], $14::TEXT[], $15::BIGINT[],
                         $16::TEXT[], $17::TEXT[], $18::TEXT[], $19::TEXT[], $20::TEXT[])
                     ON CONFLICT (replica_id, row_key) DO NOTHING",
                )
                .await?;
            client
                .execute(
                    &statement,
                    &[
                        &replica,
                        &ids,
                        &times,
                        &subjects,
                        &token_ids,
                        &client_ids,
                        &tools,
                        &scopes,
                        &request_ids,
                        &payload_hashes,
                        &sidecar_ids,
                        &outcomes,
                        &latencies,
                        &pairing_ids,
                        &journal_seqs,
                        &journal_hashes,
                        &notes,
                        &prev_hashes,
                        &hashes,
                        &keys,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Copies every local row after `through`; returns the last row the copy now holds.
    async fn catch_up(&self, mut through: i64) -> Result<i64, StoreError> {
        loop {
            let rows = self.rows(through, i64::MAX).await?;
            let Some(last) = rows.last().map(|(row, _, _)| row.id) else {
                return Ok(through);
            };
            self.copy(&rows).await?;
            through = last;
            if rows.len() < COPY_BATCH {
                return Ok(through);
            }
        }
    }
}

/// Runs the copy until `shutdown`: at start, after every committed batch (`commits`), and every
/// [`COPY_RETRY`]. Rows committed after the last pass before a stop are copied at the next
/// start.
pub fn spawn_copier(
    copy: SharedCopy,
    mut commits: watch::Receiver<u64>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut through: Option<i64> = None;
        let mut last_failure_log: Option<Instant> = None;
        loop {
            let outcome = async {
                let start = match through {
                    Some(through) => through,
                    None => copy.resume_point().await?,
                };
                copy.catch_up(start).await
            }
            .await;
            let failing = match outcome {
                Ok(copied) => {
                    if last_failure_log.take().is_some() {
                        tracing::info!(replica_id = %copy.replica_id, "the shared audit copy caught up");
                    }
                    through = Some(copied);
                    false
                }
                Err(error) => {
                    // Where the copy stands is asked again once the database answers.
                    through = None;
                    if last_failure_log.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL) {
                        tracing::warn!(%error, replica_id = %copy.replica_id, "the shared audit copy is behind; it catches up when the database answers");
                        last_failure_log = Some(Instant::now());
                    }
                    true
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = commits.changed(), if !failing => {
                    if changed.is_err() {
                        // The writer is gone; what it committed last is copied at the next
                        // start.
                        return;
                    }
                }
                () = tokio::time::sleep(COPY_RETRY) => {}
            }
        }
    })
}

/// One record of the shared copy, with the replica that wrote it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SharedAuditRecord {
    pub replica_id: String,
    #[serde(flatten)]
    pub stored: StoredAuditRecord,
}

/// The newest `limit` records of every replica, oldest first (by time, then replica and row).
pub async fn tail(store: &PostgresStore, limit: u32) -> Result<Vec<SharedAuditRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT replica_id, id, time_ms, subject, token_id_hmac, client_id, tool, scope,
                    request_id, payload_hash, sidecar_id, outcome, latency_ms, pairing_id,
                    journal_seq, journal_hash, note, hash
             FROM audit_records ORDER BY time_ms DESC, replica_id DESC, id DESC LIMIT $1",
            &[&i64::from(limit)],
        )
        .await?;
    let mut records: Vec<SharedAuditRecord> = rows
        .iter()
        .map(|row| SharedAuditRecord {
            replica_id: row.get(0),
            stored: stored_record(
                RowColumns {
                    id: row.get(1),
                    time_ms: row.get(2),
                    subject: row.get(3),
                    token_id_hmac: row.get(4),
                    client_id: row.get(5),
                    tool: row.get(6),
                    scope: row.get(7),
                    request_id: row.get(8),
                    payload_hash: row.get(9),
                    sidecar_id: row.get(10),
                    outcome: row.get(11),
                    latency_ms: row.get(12),
                    pairing_id: row.get(13),
                    journal_seq: row.get(14),
                    journal_hash: row.get(15),
                    note: row.get(16),
                },
                row.get(17),
            ),
        })
        .collect();
    records.reverse();
    Ok(records)
}
