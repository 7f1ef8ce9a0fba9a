//! The shared copy of the audit trail (cluster store): every replica copies the rows of its
//! own chain, with their chain columns, into PostgreSQL under its replica id
//! ([`crate::store::keys::REPLICA_FILE`]), so the cluster's trail is read in one place and
//! survives the loss of a replica's disk.
//!
//! - The local chain stays the authority: a record is acknowledged once it is committed
//!   there (and the head replaced), as on one gateway. The writer copies right after each
//!   commit, and every [`COPY_RETRY`] while the copy is behind, so a database outage delays
//!   the copy and loses nothing the replica's disk keeps.
//! - A row is copied once: `(replica_id, id)` is the key and a row already there is never
//!   replaced, so a local database put back from an older copy cannot rewrite what the
//!   shared copy already holds.
//! - Every wait on the database is bounded by [`COPY_WAIT`], and after a failure the copy is
//!   not tried again for [`COPY_RETRY`], so an outage never slows the writer down for long.

use super::chain::RowColumns;
use super::log::{ChainedRow, StoredAuditRecord, stored_record};
use crate::store::{PostgresStore, StoreError};
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait on the shared database for one copy step.
pub const COPY_WAIT: Duration = Duration::from_secs(1);
/// How long the copy waits after a failure, and how often it catches up while behind.
pub const COPY_RETRY: Duration = Duration::from_secs(5);
/// Most rows copied in one transaction.
pub const COPY_BATCH: usize = 500;

/// Where this replica's copy stands.
pub struct SharedCopy {
    store: PostgresStore,
    replica_id: String,
    /// The last row known to be in the shared copy; `None` until asked.
    copied_through: Option<i64>,
    /// No copy is tried before this (after a failure).
    paused_until: Option<Instant>,
}

impl std::fmt::Debug for SharedCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCopy")
            .field("replica_id", &self.replica_id)
            .field("copied_through", &self.copied_through)
            .finish_non_exhaustive()
    }
}

async fn bounded<T>(
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    crate::store::postgres::within(COPY_WAIT, operation).await
}

impl SharedCopy {
    pub fn new(store: PostgresStore, replica_id: String) -> SharedCopy {
        SharedCopy {
            store,
            replica_id,
            copied_through: None,
            paused_until: None,
        }
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The last row of this replica's chain the copy holds, asked once and then tracked;
    /// `None` while the copy is paused after a failure.
    pub async fn copied_through(&mut self) -> Option<i64> {
        if self
            .paused_until
            .is_some_and(|until| Instant::now() < until)
        {
            return None;
        }
        if let Some(through) = self.copied_through {
            return Some(through);
        }
        let store = self.store.clone();
        let replica = self.replica_id.clone();
        let asked = bounded(async move {
            let client = store.client().await?;
            let row = client
                .query_one(
                    "SELECT COALESCE(MAX(id), 0) FROM audit_records WHERE replica_id = $1",
                    &[&replica],
                )
                .await?;
            Ok(row.get::<_, i64>(0))
        })
        .await;
        match asked {
            Ok(through) => {
                self.copied_through = Some(through);
                Some(through)
            }
            Err(error) => {
                self.failed(&error);
                None
            }
        }
    }

    /// Copies `rows` (in order, after [`SharedCopy::copied_through`]) in one transaction.
    /// `false` when the database refused or did not answer (the copy pauses).
    pub async fn copy(&mut self, rows: &[ChainedRow]) -> bool {
        let Some(last) = rows.last().map(|(columns, _, _)| columns.id) else {
            return true;
        };
        let store = self.store.clone();
        let replica = self.replica_id.clone();
        let rows = rows.to_vec();
        let copied = bounded(async move {
            let mut client = store.client().await?;
            let tx = client.transaction().await?;
            let statement = tx
                .prepare_cached(
                    "INSERT INTO audit_records (replica_id, id, time_ms, subject, token_id_hmac,
                         client_id, tool, scope, request_id, payload_hash, sidecar_id, outcome,
                         latency_ms, pairing_id, journal_seq, journal_hash, note, prev_hash, hash)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                             $16, $17, $18, $19)
                     ON CONFLICT (replica_id, id) DO NOTHING",
                )
                .await?;
            for (row, prev_hash, hash) in &rows {
                tx.execute(
                    &statement,
                    &[
                        &replica,
                        &row.id,
                        &row.time_ms,
                        &row.subject,
                        &row.token_id_hmac,
                        &row.client_id,
                        &row.tool,
                        &row.scope,
                        &row.request_id,
                        &row.payload_hash,
                        &row.sidecar_id,
                        &row.outcome,
                        &row.latency_ms,
                        &row.pairing_id,
                        &row.journal_seq,
                        &row.journal_hash,
                        &row.note,
                        prev_hash,
                        hash,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await;
        match copied {
            Ok(()) => {
                self.copied_through = Some(last);
                self.paused_until = None;
                true
            }
            Err(error) => {
                self.failed(&error);
                false
            }
        }
    }

    fn failed(&mut self, error: &StoreError) {
        if self.paused_until.is_none() {
            tracing::warn!(%error, "the shared copy of the audit trail is behind; it catches up when the database answers");
        }
        self.paused_until = Some(Instant::now() + COPY_RETRY);
        // Asked again once the database answers (another process may have copied more).
        self.copied_through = None;
    }
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
