//! The audit table: what one audited tool call stores, the writer's own connection (chained
//! append, retention pruning by prefix) and reading records back.
//!
//! Only the writer appends. It keeps the chain's tip in memory, numbers rows itself (no gaps),
//! and checks in every write transaction that the table still ends at that tip, so rows cut
//! from the tail while it runs stop it too. At open it checks the table against `audit.head`;
//! a table that lost rows the head names, a head written under another secret or a missing
//! head next to chained rows put the writer in a *broken* state: it stores nothing more (order
//! calls are refused, other calls count their records as lost) until an operator runs
//! `ibkr-gateway audit verify` and `ibkr-gateway audit reseal`.

use super::chain::{
    ChainKey, GENESIS_HASH, Head, RowColumns, RowRef, canonical_row, pruned_through,
};
use crate::store::{SqliteStore, StoreError, connect, write_transaction};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest text stored in one audit column (values are ids, codes and names already bounded
/// upstream; this is a backstop).
const MAX_AUDIT_FIELD: usize = 256;

/// One audited tool call, as stored. Never holds the token or anything derived from it
/// except the HMAC of its id.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
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
    /// `ok`, `manual_action_required`, `forwarding` (an order call's record made durable
    /// before it is forwarded), or the error code.
    pub outcome: String,
    pub latency_ms: i64,
    /// The pairing the call was routed through (hex), once known.
    pub pairing_id: Option<String>,
    /// The sidecar journal entry the call wrote last (order tools), from the sidecar's answer.
    pub journal_seq: Option<i64>,
    pub journal_hash: Option<String>,
}

/// An audit record with its row id and chain columns.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredAuditRecord {
    pub id: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Set on operator records (`audit reseal`).
    pub note: Option<String>,
    /// `None` on rows from before the chain (store version 3 and earlier).
    pub hash: Option<String>,
}

fn bounded_text(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_AUDIT_FIELD)
        .collect()
}

/// Why the audit log could not store records.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The chain cannot be continued without hiding a problem; the text says what to do.
    #[error("the audit chain is broken: {0}")]
    Broken(String),
    /// The rows were committed but `audit.head` could not be replaced.
    #[error("could not replace audit.head: {0}")]
    Head(std::io::Error),
}

impl From<rusqlite::Error> for AuditError {
    fn from(error: rusqlite::Error) -> Self {
        AuditError::Store(error.into())
    }
}

/// Where the chain stands.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chain {
    chain_start: i64,
    tip: RowRef,
    pruned: Option<RowRef>,
}

/// What the operator is told when the writer refuses to continue the chain.
const RESEAL_ADVICE: &str = "keep a copy of the database for the investigation, run \
     `ibkr-gateway audit verify`, then `ibkr-gateway audit reseal` and restart the gateway";

/// The audit writer's own connection to the store.
pub struct AuditLog {
    conn: Connection,
    key: ChainKey,
    state_dir: PathBuf,
    chain: Result<Chain, String>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

/// Most audit records one pruning transaction deletes.
pub const AUDIT_PRUNE_BATCH: usize = 2_000;

/// The columns every read of rows selects, in [`read_row`]'s order.
pub(crate) const ROW_COLUMNS: &str = "id, time_ms, subject, token_id_hmac, client_id, tool, \
     scope, request_id, payload_hash, sidecar_id, outcome, latency_ms, pairing_id, \
     journal_seq, journal_hash, note, prev_hash, hash";

/// One row with its chain columns (`prev_hash`, `hash`).
pub type ChainedRow = (RowColumns, Option<String>, Option<String>);

/// One row as selected with [`ROW_COLUMNS`]: its columns, `prev_hash` and `hash`.
pub(crate) fn read_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(RowColumns, Option<String>, Option<String>)> {
    Ok((
        RowColumns {
            id: row.get(0)?,
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
            pairing_id: row.get(12)?,
            journal_seq: row.get(13)?,
            journal_hash: row.get(14)?,
            note: row.get(15)?,
        },
        row.get(16)?,
        row.get(17)?,
    ))
}

/// Inserts one chained row after `prev`; returns the new tip.
pub(crate) fn insert_row(
    conn: &Connection,
    key: &ChainKey,
    prev: &RowRef,
    mut row: RowColumns,
) -> Result<RowRef, StoreError> {
    row.id = prev.id + 1;
    let hash = key.row_hash(&prev.hash, &canonical_row(&row));
    let mut statement = conn.prepare_cached(
        "INSERT INTO audit (id, time_ms, subject, token_id_hmac, client_id, tool, scope,
                            request_id, payload_hash, sidecar_id, outcome, latency_ms,
                            pairing_id, journal_seq, journal_hash, note, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?;
    statement.execute(params![
        row.id,
        row.time_ms,
        row.subject,
        row.token_id_hmac,
        row.client_id,
        row.tool,
        row.scope,
        row.request_id,
        row.payload_hash,
        row.sidecar_id,
        row.outcome,
        row.latency_ms,
        row.pairing_id,
        row.journal_seq,
        row.journal_hash,
        row.note,
        prev.hash,
        hash,
    ])?;
    Ok(RowRef { id: row.id, hash })
}

/// The stored form of a record (texts bounded, controls removed).
fn columns(record: &AuditRecord) -> RowColumns {
    let optional = |value: &Option<String>| value.as_deref().map(bounded_text);
    RowColumns {
        id: 0,
        time_ms: record.time_ms,
        subject: bounded_text(&record.subject),
        token_id_hmac: optional(&record.token_id_hmac),
        client_id: optional(&record.client_id),
        tool: bounded_text(&record.tool),
        scope: optional(&record.scope),
        request_id: optional(&record.request_id),
        payload_hash: optional(&record.payload_hash),
        sidecar_id: optional(&record.sidecar_id),
        outcome: bounded_text(&record.outcome),
        latency_ms: record.latency_ms,
        pairing_id: optional(&record.pairing_id),
        journal_seq: record.journal_seq,
        journal_hash: optional(&record.journal_hash),
        note: None,
    }
}

/// The newest row of the table (chained or not), if any.
pub(crate) fn newest_row(conn: &Connection) -> Result<Option<(i64, Option<String>)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

/// The hash stored in row `id`, `None` when there is no such row (or it is unchained).
fn hash_of(conn: &Connection, id: i64) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT hash FROM audit WHERE id = ?1", params![id], |row| {
            row.get::<_, Option<String>>(0)
        })
        .optional()?
        .flatten())
}

/// Checks the table against `head` at open: the head must be ours, the table must still hold
/// the row it names, and rows committed after it (a crash before the head was replaced) must
/// chain on from it. Returns where the chain stands, or why it cannot be continued.
fn chain_at_open(
    conn: &Connection,
    key: &ChainKey,
    head: Option<Head>,
) -> Result<Result<Chain, String>, StoreError> {
    let Some(head) = head else {
        let chained: i64 = conn.query_row(
            "SELECT COUNT(*) FROM audit WHERE hash IS NOT NULL",
            [],
            |row| row.get(0),
        )?;
        if chained > 0 {
            return Ok(Err(
                "audit.head is missing although the audit table has chained records, so a cut \
                 tail cannot be ruled out"
                    .into(),
            ));
        }
        // A new chain after every existing (unchained) row.
        let chain_start = newest_row(conn)?.map_or(1, |(id, _)| id + 1);
        return Ok(Ok(Chain {
            chain_start,
            tip: RowRef {
                id: chain_start - 1,
                hash: GENESIS_HASH.into(),
            },
            pruned: None,
        }));
    };
    if head.key_id != key.key_id() {
        return Ok(Err(
            "audit.head was written under another audit HMAC secret (was the secret changed or \
             the environment variable not set?)"
                .into(),
        ));
    }
    if !head.verifies(key) {
        return Ok(Err(
            "audit.head does not verify under the audit HMAC secret (edited)".into(),
        ));
    }
    if head.tip.id > head.pruned_through() {
        match hash_of(conn, head.tip.id)? {
            None => {
                return Ok(Err(format!(
                    "the audit table lacks record {} that audit.head names: its tail was cut or \
                     an older copy of the database was restored",
                    head.tip.id
                )));
            }
            Some(hash) if hash != head.tip.hash => {
                return Ok(Err(format!(
                    "record {} is not the one audit.head names: an older or different copy of \
                     the database",
                    head.tip.id
                )));
            }
            Some(_) => {}
        }
    }
    // Rows after the head: committed, then a crash before the head was replaced.
    let mut tip = head.tip.clone();
    let mut statement = conn.prepare(&format!(
        "SELECT {ROW_COLUMNS} FROM audit WHERE id > ?1 ORDER BY id"
    ))?;
    let mut rows = statement.query(params![tip.id])?;
    while let Some(row) = rows.next()? {
        let (columns, prev_hash, hash) = read_row(row)?;
        let expected = key.row_hash(&tip.hash, &canonical_row(&columns));
        if columns.id != tip.id + 1
            || prev_hash.as_deref() != Some(tip.hash.as_str())
            || hash.as_deref() != Some(expected.as_str())
        {
            return Ok(Err(format!(
                "record {} after the one audit.head names does not continue the chain",
                columns.id
            )));
        }
        tip = RowRef {
            id: columns.id,
            hash: expected,
        };
    }
    Ok(Ok(Chain {
        chain_start: head.chain_start,
        tip,
        pruned: head.pruned,
    }))
}

impl AuditLog {
    /// Opens a second connection to `store`'s database (the schema exists: the store created
    /// it) and checks the table against `audit.head` in `store`'s directory. A chain that
    /// cannot be continued is logged and leaves the log broken, not the gateway down.
    /// Blocking.
    pub fn open(store: &SqliteStore, secret: &super::AuditKey) -> Result<AuditLog, StoreError> {
        let path = store.path();
        let conn = connect(path)?;
        let key = secret.chain_key();
        let state_dir = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        let chain = match Head::read(&state_dir) {
            Ok(head) => chain_at_open(&conn, &key, head)?,
            Err(error) => Err(error.to_string()),
        };
        let mut log = AuditLog {
            conn,
            key,
            state_dir,
            chain,
        };
        match &log.chain {
            Ok(_) => {
                if let Err(error) = log.write_head() {
                    log.chain = Err(format!("audit.head cannot be written ({error})"));
                }
            }
            Err(problem) => {
                tracing::error!(problem = %problem, "audit trail: the chain cannot be continued; order tools are refused and other calls are not audited until an operator acts: {RESEAL_ADVICE}");
            }
        }
        Ok(log)
    }

    /// Sets how long a write waits for another connection's lock (the audit ack timeout, so
    /// a batch not stored by then is lost rather than stored long after its call was refused).
    pub fn set_busy_timeout(&self, limit: Duration) -> Result<(), StoreError> {
        Ok(self.conn.busy_timeout(limit)?)
    }

    /// Why the chain cannot be continued, if it cannot.
    pub fn broken(&self) -> Option<&str> {
        self.chain.as_ref().err().map(String::as_str)
    }

    fn chain(&self) -> Result<&Chain, AuditError> {
        self.chain
            .as_ref()
            .map_err(|problem| AuditError::Broken(format!("{problem}; {RESEAL_ADVICE}")))
    }

    fn write_head(&self) -> Result<(), AuditError> {
        let chain = self.chain()?;
        Head::new(
            &self.key,
            chain.chain_start,
            chain.tip.clone(),
            chain.pruned.clone(),
        )
        .write(&self.state_dir)
        .map_err(AuditError::Head)
    }

    /// Appends records in one transaction, chained after the tip, then replaces the head.
    /// Blocking.
    pub fn append(&mut self, records: &[AuditRecord]) -> Result<(), AuditError> {
        let chain = self.chain()?.clone();
        let tx = write_transaction(&mut self.conn)?;
        // Nobody else appends: a table that no longer ends at our tip lost rows (or was
        // resealed) while we ran.
        let newest = newest_row(&tx)?.map(|(id, _)| id);
        // While the chain is empty or wholly pruned, older rows may or may not remain.
        let through = pruned_through(chain.chain_start, chain.pruned.as_ref());
        let intact = if chain.tip.id > through {
            newest == Some(chain.tip.id)
        } else {
            newest.is_none_or(|id| id <= chain.tip.id)
        };
        if !intact {
            drop(tx);
            let problem = format!(
                "the audit table no longer ends at record {} (it ends at {:?})",
                chain.tip.id, newest
            );
            tracing::error!(%problem, "audit trail: rows vanished under the writer; {RESEAL_ADVICE}");
            self.chain = Err(problem.clone());
            return Err(AuditError::Broken(problem));
        }
        let mut tip = chain.tip.clone();
        for record in records {
            tip = insert_row(&tx, &self.key, &tip, columns(record))?;
        }
        tx.commit()?;
        if let Ok(chain) = self.chain.as_mut() {
            chain.tip = tip;
        }
        self.write_head()
    }

    /// Starts a retention round: the prefix of rows older than `cutoff_ms` (up to the first
    /// younger row) is marked in the head as pruned *before* anything is deleted, so verify
    /// tells the deleted prefix from a removed one. Returns the last row id to delete (0:
    /// nothing). Blocking.
    pub fn begin_prune(&mut self, cutoff_ms: i64) -> Result<i64, AuditError> {
        let chain = self.chain()?.clone();
        // In id order from the oldest, stopping at the first young row: the rows read are the
        // ones about to go (the time index would read all the young ones instead).
        let first_young: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM audit NOT INDEXED WHERE time_ms >= ?1 ORDER BY id LIMIT 1",
                params![cutoff_ms],
                |row| row.get(0),
            )
            .optional()?;
        let through = match first_young {
            Some(id) => id - 1,
            None => newest_row(&self.conn)?.map_or(0, |(id, _)| id),
        };
        let already = chain.pruned.as_ref().map_or(0, |pruned| pruned.id);
        if through > already && through >= chain.chain_start {
            let Some(hash) = hash_of(&self.conn, through)? else {
                return Err(AuditError::Broken(format!(
                    "record {through}, the new retention prune point, is missing or unchained"
                )));
            };
            if let Ok(chain) = self.chain.as_mut() {
                chain.pruned = Some(RowRef { id: through, hash });
            }
            self.write_head()?;
        }
        Ok(through.max(already))
    }

    /// Deletes at most [`AUDIT_PRUNE_BATCH`] of the oldest rows up to `through` in one
    /// transaction (so a large backlog never holds the write lock for long); returns how many.
    /// Blocking.
    pub fn prune_batch(&mut self, through: i64) -> Result<usize, AuditError> {
        let tx = write_transaction(&mut self.conn)?;
        let deleted = tx.execute(
            "DELETE FROM audit WHERE id IN
                 (SELECT id FROM audit WHERE id <= ?1 ORDER BY id LIMIT ?2)",
            params![through, AUDIT_PRUNE_BATCH as i64],
        )?;
        tx.commit()?;
        Ok(deleted)
    }
}

/// A stored row's record, without its chain columns.
pub(crate) fn stored_record(columns: RowColumns, hash: Option<String>) -> StoredAuditRecord {
    StoredAuditRecord {
        id: columns.id,
        note: columns.note,
        hash,
        record: AuditRecord {
            time_ms: columns.time_ms,
            subject: columns.subject,
            token_id_hmac: columns.token_id_hmac,
            client_id: columns.client_id,
            tool: columns.tool,
            scope: columns.scope,
            request_id: columns.request_id,
            payload_hash: columns.payload_hash,
            sidecar_id: columns.sidecar_id,
            outcome: columns.outcome,
            latency_ms: columns.latency_ms,
            pairing_id: columns.pairing_id,
            journal_seq: columns.journal_seq,
            journal_hash: columns.journal_hash,
        },
    }
}

/// The newest `limit` audit records, oldest first.
pub async fn tail(store: &SqliteStore, limit: u32) -> Result<Vec<StoredAuditRecord>, StoreError> {
    store
        .run(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = statement.query_map(params![i64::from(limit)], read_row)?;
            let mut records = Vec::new();
            for row in rows {
                let (columns, _, hash) = row?;
                records.push(stored_record(columns, hash));
            }
            records.reverse();
            Ok(records)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::super::AuditKey;
    use super::*;

    use crate::store::{PairingId, Store};

    fn pid(byte: u8) -> PairingId {
        PairingId([byte; 16])
    }

    fn audit_record(n: i64) -> AuditRecord {
        AuditRecord {
            time_ms: n,
            subject: "alice".into(),
            token_id_hmac: Some("00ff".into()),
            tool: "ibkr_quote".into(),
            scope: Some("ibkr:marketdata:read".into()),
            sidecar_id: Some("laptop-1".into()),
            outcome: "ok".into(),
            latency_ms: 3,
            ..AuditRecord::default()
        }
    }

    #[tokio::test]
    async fn audit_records_append_and_tail_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = AuditKey::random();
        let mut log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        log.append(&[audit_record(1), audit_record(2)]).unwrap();
        log.append(&[audit_record(3)]).unwrap();
        let newest = tail(store.sqlite().unwrap(), 2).await.unwrap();
        assert_eq!(
            newest.iter().map(|r| r.record.time_ms).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(newest[1].record, audit_record(3));
        assert_eq!(newest[1].id, 3);
        assert!(newest[1].hash.is_some());
        // The revocation poll reads the pairings generation: the audit trail's commits (on
        // every call) are not pairing changes and trigger no reload.
        let (generation, changed) = store.active_pairings_if_changed(None).await.unwrap();
        assert_eq!(changed, Some(std::collections::HashSet::new()));
        log.append(&[audit_record(4)]).unwrap();
        let (same, unchanged) = store
            .active_pairings_if_changed(Some(generation))
            .await
            .unwrap();
        assert_eq!((same, unchanged), (generation, None));
        // Reopened with the same secret, the chain continues.
        drop(log);
        let mut log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        assert_eq!(log.broken(), None);
        log.append(&[audit_record(5)]).unwrap();
        assert_eq!(tail(store.sqlite().unwrap(), 1).await.unwrap()[0].id, 5);
    }

    #[tokio::test]
    async fn pruning_deletes_the_old_prefix_in_batches_and_records_the_prune_point() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = AuditKey::random();
        let mut log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        let old: Vec<AuditRecord> = (0..2 * AUDIT_PRUNE_BATCH as i64 + 5)
            .map(audit_record)
            .collect();
        log.append(&old).unwrap();
        // A young row, then an old one behind it: only the prefix before the first young
        // row goes (keeping a record longer than asked is the safe failure).
        log.append(&[audit_record(1_000_000), audit_record(7)])
            .unwrap();
        let through = log.begin_prune(1_000_000).unwrap();
        assert_eq!(through, 2 * AUDIT_PRUNE_BATCH as i64 + 5);
        let head = Head::read(dir.path()).unwrap().unwrap();
        assert_eq!(head.pruned.as_ref().map(|p| p.id), Some(through));
        let mut deleted = 0;
        loop {
            let batch = log.prune_batch(through).unwrap();
            deleted += batch;
            if batch == 0 {
                break;
            }
        }
        assert_eq!(deleted, 2 * AUDIT_PRUNE_BATCH + 5);
        let kept = tail(store.sqlite().unwrap(), 10).await.unwrap();
        assert_eq!(
            kept.iter().map(|r| r.record.time_ms).collect::<Vec<_>>(),
            vec![1_000_000, 7]
        );
        assert_eq!(log.begin_prune(1_000_000).unwrap(), through);
        // The chain goes on after pruning, and across a reopen.
        log.append(&[audit_record(2_000_000)]).unwrap();
        drop(log);
        let log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        assert_eq!(log.broken(), None);
    }

    #[tokio::test]
    async fn a_cut_tail_a_lost_head_or_another_secret_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = AuditKey::random();
        let mut log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        log.append(&[audit_record(1), audit_record(2), audit_record(3)])
            .unwrap();

        // Rows cut while the writer runs: its next append notices.
        let other = connect(store.path().unwrap()).unwrap();
        other.execute("DELETE FROM audit WHERE id = 3", []).unwrap();
        assert!(matches!(
            log.append(&[audit_record(4)]),
            Err(AuditError::Broken(_))
        ));
        assert!(log.broken().is_some());
        // ... and at the next open, against the head.
        drop(log);
        let mut log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        assert!(log.broken().unwrap().contains("lacks record 3"));
        assert!(matches!(
            log.append(&[audit_record(4)]),
            Err(AuditError::Broken(_))
        ));
        drop(log);

        // Another secret.
        let log = AuditLog::open(store.sqlite().unwrap(), &AuditKey::random()).unwrap();
        assert!(log.broken().unwrap().contains("another audit HMAC secret"));
        // No head at all next to chained rows.
        std::fs::remove_file(dir.path().join(super::super::chain::HEAD_FILE)).unwrap();
        let log = AuditLog::open(store.sqlite().unwrap(), &key).unwrap();
        assert!(log.broken().unwrap().contains("audit.head is missing"));
    }

    #[tokio::test]
    async fn the_anchor_is_the_highest_journal_entry_on_record_for_the_pairing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut log = AuditLog::open(store.sqlite().unwrap(), &AuditKey::random()).unwrap();
        let anchored = |pairing: &str, seq: i64, byte: u8| AuditRecord {
            pairing_id: Some(pairing.into()),
            journal_seq: Some(seq),
            journal_hash: Some(hex::encode([byte; 32])),
            ..audit_record(seq)
        };
        assert_eq!(store.journal_anchor(pid(1)).await.unwrap(), None);
        // Answers may be recorded out of order (concurrent calls): the highest wins.
        log.append(&[
            anchored(&pid(1).to_hex(), 5, 5),
            anchored(&pid(1).to_hex(), 7, 7),
            anchored(&pid(1).to_hex(), 6, 6),
            anchored(&pid(2).to_hex(), 9, 9),
            audit_record(10),
        ])
        .unwrap();
        let anchor = store.journal_anchor(pid(1)).await.unwrap().unwrap();
        assert_eq!((anchor.seq, anchor.hash), (7, [7; 32]));
        assert_eq!(
            store.journal_anchor(pid(2)).await.unwrap().map(|a| a.seq),
            Some(9)
        );
    }
}
