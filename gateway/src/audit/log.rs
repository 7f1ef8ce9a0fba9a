//! The audit table: what one audited tool call stores, the writer's own connection
//! (append, retention pruning) and reading the tail back.

use crate::store::{Store, StoreError, connect, write_transaction};
use rusqlite::{Connection, params};
use std::time::Duration;

/// Longest text stored in one audit column (values are ids, codes and names already bounded
/// upstream; this is a backstop).
const MAX_AUDIT_FIELD: usize = 256;

/// One audited tool call, as stored. Never holds the token or anything derived from it
/// except the HMAC of its id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub time_ms: i64,
    pub subject: String,
    pub token_id_hmac: Option<String>,
    pub client_id: Option<String>,
    /// The catalog tool name (`-` for an unknown tool name: agent input is not stored).
    pub tool: String,
    pub scope: Option<String>,
    pub request_id: Option<String>,
    pub payload_hash: Option<String>,
    pub sidecar_id: Option<String>,
    /// `ok`, `manual_action_required`, or the error code.
    pub outcome: String,
    pub latency_ms: i64,
}

/// An audit record with its row id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredAuditRecord {
    pub id: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
}

fn bounded_text(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_AUDIT_FIELD)
        .collect()
}

/// The audit writer's own connection to the store.
pub struct AuditLog {
    conn: Connection,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

/// Most audit records one pruning transaction deletes.
pub const AUDIT_PRUNE_BATCH: usize = 2_000;
/// Pause between pruning transactions.
const AUDIT_PRUNE_PAUSE: Duration = Duration::from_millis(10);

impl AuditLog {
    /// Opens a second connection to `store`'s database (the schema exists: the store created
    /// it). Blocking.
    pub fn open(store: &Store) -> Result<AuditLog, StoreError> {
        let conn = connect(store.path())?;
        Ok(AuditLog { conn })
    }

    /// Deletes the records older than `cutoff_ms` (Unix milliseconds); returns how many.
    /// Works in batches of [`AUDIT_PRUNE_BATCH`], each its own transaction, so a large backlog
    /// never holds the database's write lock for long (sidecar handshakes write to the same
    /// database). Blocking.
    pub fn prune_before(&mut self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "DELETE FROM audit WHERE id IN
                 (SELECT id FROM audit WHERE time_ms < ?1 LIMIT ?2)",
        )?;
        let mut deleted = 0;
        loop {
            let batch = statement.execute(params![cutoff_ms, AUDIT_PRUNE_BATCH as i64])?;
            deleted += batch;
            if batch < AUDIT_PRUNE_BATCH {
                return Ok(deleted);
            }
            // A window for writers waiting on the lock (their busy handler polls).
            std::thread::sleep(AUDIT_PRUNE_PAUSE);
        }
    }

    /// Appends records in one transaction. Blocking.
    pub fn append(&mut self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let tx = write_transaction(&mut self.conn)?;
        {
            let mut statement = tx.prepare_cached(
                "INSERT INTO audit (time_ms, subject, token_id_hmac, client_id, tool, scope,
                                    request_id, payload_hash, sidecar_id, outcome, latency_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for record in records {
                let optional = |value: &Option<String>| value.as_deref().map(bounded_text);
                statement.execute(params![
                    record.time_ms,
                    bounded_text(&record.subject),
                    optional(&record.token_id_hmac),
                    optional(&record.client_id),
                    bounded_text(&record.tool),
                    optional(&record.scope),
                    optional(&record.request_id),
                    optional(&record.payload_hash),
                    optional(&record.sidecar_id),
                    bounded_text(&record.outcome),
                    record.latency_ms,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// The newest `limit` audit records, oldest first.
pub async fn tail(store: &Store, limit: u32) -> Result<Vec<StoredAuditRecord>, StoreError> {
    store
        .run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, time_ms, subject, token_id_hmac, client_id, tool, scope, request_id,
                        payload_hash, sidecar_id, outcome, latency_ms
                 FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = statement.query_map(params![i64::from(limit)], |row| {
                Ok(StoredAuditRecord {
                    id: row.get(0)?,
                    record: AuditRecord {
                        time_ms: row.get(1)?,
                        subject: row.get(2)?,
                        token_id_hmac: row.get(3)?,
                        client_id: row.get(4)?,
                        tool: row.get(5)?,
                        scope: row.get(6)?,
                        request_id: row.get(7)?,
                        payload_hash: row.get(8)?,
                        sidecar_id: row.get(9)?,
                        outcome: row.get(10)?,
                        latency_ms: row.get(11)?,
                    },
                })
            })?;
            let mut records = Vec::new();
            for row in rows {
                records.push(row?);
            }
            records.reverse();
            Ok(records)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn audit_record(n: i64) -> AuditRecord {
        AuditRecord {
            time_ms: n,
            subject: "alice".into(),
            token_id_hmac: Some("00ff".into()),
            client_id: None,
            tool: "ibkr_quote".into(),
            scope: Some("ibkr:marketdata:read".into()),
            request_id: None,
            payload_hash: None,
            sidecar_id: Some("laptop-1".into()),
            outcome: "ok".into(),
            latency_ms: 3,
        }
    }

    #[tokio::test]
    async fn audit_records_append_and_tail_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut log = AuditLog::open(&store).unwrap();
        log.append(&[audit_record(1), audit_record(2)]).unwrap();
        log.append(&[audit_record(3)]).unwrap();
        let tail = tail(&store, 2).await.unwrap();
        assert_eq!(
            tail.iter().map(|r| r.record.time_ms).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(tail[1].record, audit_record(3));
        // The other connection's commits show up as a changed data_version.
        let (version, changed) = store.active_pairings_if_changed(None).await.unwrap();
        assert!(changed.is_some());
        let (same, unchanged) = store
            .active_pairings_if_changed(Some(version))
            .await
            .unwrap();
        assert_eq!((same, unchanged), (version, None));
        log.append(&[audit_record(4)]).unwrap();
        let (_, changed) = store
            .active_pairings_if_changed(Some(version))
            .await
            .unwrap();
        assert_eq!(changed, Some(HashSet::new()));
    }

    #[tokio::test]
    async fn pruning_deletes_only_older_records_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut log = AuditLog::open(&store).unwrap();
        let old: Vec<AuditRecord> = (0..2 * AUDIT_PRUNE_BATCH as i64 + 5)
            .map(audit_record)
            .collect();
        log.append(&old).unwrap();
        log.append(&[audit_record(1_000_000), audit_record(1_000_001)])
            .unwrap();
        assert_eq!(
            log.prune_before(1_000_000).unwrap(),
            2 * AUDIT_PRUNE_BATCH + 5
        );
        let kept = tail(&store, 10).await.unwrap();
        assert_eq!(
            kept.iter().map(|r| r.record.time_ms).collect::<Vec<_>>(),
            vec![1_000_000, 1_000_001]
        );
        assert_eq!(log.prune_before(1_000_000).unwrap(), 0);
    }
}
