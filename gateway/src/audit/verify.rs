//! `ibkr-gateway audit verify` and `ibkr-gateway audit reseal`: checking the whole audit
//! chain against `audit.head`, and starting it again after an operator has looked at a break.
//!
//! Verify reads the head, then the table in one read transaction, then the head again: the
//! head read first names a tip the snapshot must hold (the writer replaces the head only after
//! its rows are committed), and the one read after covers retention deletes the snapshot
//! already shows (the writer records a prune point before it deletes). So a running gateway
//! is verified without false alarms.

use super::chain::{
    ChainKey, GENESIS_HASH, Head, RowColumns, RowRef, canonical_row, pruned_through,
};
use super::log::{ROW_COLUMNS, insert_row, newest_row, read_row};
use crate::store::{StoreError, write_transaction};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

/// Opens what `audit verify` and `audit reseal` work on: a connection to the store in
/// `state_dir` (migrated like any open) and the chain key from the audit secret the gateway
/// runs with: the environment variable `secret_env` when set, else `state_dir/audit_hmac.key`;
/// never a new secret, which could verify nothing. Blocking.
pub fn open_trail(state_dir: &Path, secret_env: &str) -> Result<(Connection, ChainKey), String> {
    // The audit trail is in state_dir's SQLite file, whatever the store's backend.
    let store = crate::store::SqliteStore::open(state_dir).map_err(|e| e.to_string())?;
    let key = super::AuditKey::load_existing(secret_env, state_dir)
        .map_err(|e| format!("the audit HMAC secret: {e}"))?;
    let conn = crate::store::connect(store.path()).map_err(|e| e.to_string())?;
    Ok((conn, key.chain_key()))
}

/// The outcome of an operator's reseal, as stored in the marker record.
pub const RESEALED: &str = "AUDIT_RESEALED";

/// An operator's reseal found in the chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Reseal {
    pub id: i64,
    pub time_ms: i64,
    pub note: Option<String>,
}

/// What a check of the audit trail found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Rows read.
    pub records: u64,
    /// Rows before the chain (from before store version 4, or under an earlier audit secret):
    /// present, but not covered by the chain.
    pub unchained_records: u64,
    pub first_id: Option<i64>,
    pub last_id: Option<i64>,
    pub chain_start: Option<i64>,
    /// The newest row `audit.head` names.
    pub head_tip: Option<i64>,
    /// Rows up to this id may have been deleted by retention.
    pub pruned_through: Option<i64>,
    /// The first row that breaks the chain.
    pub broken_at_id: Option<i64>,
    pub problem: Option<String>,
    /// The table lacks the row `audit.head` names, or holds another one: its tail was cut or
    /// an older copy of the database was restored.
    pub truncated: bool,
    /// Rows committed after the head was last replaced (a crash in between; not a problem).
    pub records_after_head: u64,
    pub reseals: Vec<Reseal>,
}

impl VerifyReport {
    fn fail(&mut self, id: Option<i64>, problem: String) {
        if self.ok {
            self.ok = false;
            self.broken_at_id = id;
            self.problem = Some(problem);
        }
    }
}

fn read_head(state_dir: &Path, report: &mut VerifyReport) -> Option<Head> {
    match Head::read(state_dir) {
        Ok(head) => head,
        Err(error) => {
            report.fail(None, error.to_string());
            None
        }
    }
}

fn check_head(head: &Head, key: &ChainKey, report: &mut VerifyReport) {
    if head.key_id != key.key_id() {
        report.fail(
            None,
            "audit.head was written under another audit HMAC secret (is the secret the one the \
             gateway runs with?)"
                .into(),
        );
    } else if !head.verifies(key) {
        report.fail(
            None,
            "audit.head does not verify under the audit HMAC secret (edited)".into(),
        );
    }
}

/// How the walk stands between rows.
struct Walk {
    /// The previous chained row.
    previous: Option<RowRef>,
    chain_start: i64,
    pruned: Option<RowRef>,
    /// The row the head (read before the snapshot) names, and whether it was seen.
    tip: Option<RowRef>,
    tip_seen: bool,
    /// The row the head names is there but differs.
    tip_differs: bool,
}

impl Walk {
    fn pruned_through(&self) -> i64 {
        pruned_through(self.chain_start, self.pruned.as_ref())
    }

    /// Checks one row of the chain; `Err` says what is wrong with it.
    fn row(
        &mut self,
        key: &ChainKey,
        columns: &RowColumns,
        prev_hash: Option<&str>,
        hash: Option<&str>,
    ) -> Result<(), String> {
        let id = columns.id;
        let (Some(prev_hash), Some(hash)) = (prev_hash, hash) else {
            return Err(format!("record {id} inside the chain has no hash (edited)"));
        };
        match &self.previous {
            Some(previous) if id != previous.id + 1 => {
                return Err(format!(
                    "records {} to {} are missing (removed)",
                    previous.id + 1,
                    id - 1
                ));
            }
            Some(previous) if prev_hash != previous.hash => {
                return Err(format!(
                    "record {id} does not follow the record before it (removed, reordered or \
                     edited)"
                ));
            }
            Some(_) => {}
            None => self.first_row(id, prev_hash)?,
        }
        if key.row_hash(prev_hash, &canonical_row(columns)) != hash {
            return Err(format!(
                "record {id}'s hash does not match its content and position (edited, or moved \
                 to another id)"
            ));
        }
        if let Some(pruned) = &self.pruned
            && pruned.id == id
            && pruned.hash != hash
        {
            return Err(format!(
                "record {id} is not the retention prune point audit.head names"
            ));
        }
        if let Some(tip) = &self.tip
            && tip.id == id
        {
            if tip.hash != hash {
                self.tip_differs = true;
                return Err(format!(
                    "record {id} is not the one audit.head names: an older or different copy \
                     of the database"
                ));
            }
            self.tip_seen = true;
        }
        self.previous = Some(RowRef {
            id,
            hash: hash.to_string(),
        });
        Ok(())
    }

    /// The first row of the chain must be its start, or continue the prune point.
    fn first_row(&self, id: i64, prev_hash: &str) -> Result<(), String> {
        let through = self.pruned_through();
        if id <= through {
            // Left over from a retention round that was interrupted: its predecessor is gone
            // by design.
            return Ok(());
        }
        if id > through + 1 {
            return Err(format!(
                "records {} to {} are missing from the start of the chain (deleted beyond the \
                 retention prune point)",
                through + 1,
                id - 1
            ));
        }
        let expected = match &self.pruned {
            Some(pruned) if pruned.id == through => pruned.hash.as_str(),
            _ => GENESIS_HASH,
        };
        if prev_hash != expected {
            return Err(format!(
                "record {id} does not continue the start of the chain or the retention prune \
                 point"
            ));
        }
        Ok(())
    }
}

/// Checks every row of the audit table against the chain and `audit.head`. Read only.
pub fn verify(
    conn: &mut Connection,
    state_dir: &Path,
    key: &ChainKey,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport {
        ok: true,
        ..VerifyReport::default()
    };
    let before = read_head(state_dir, &mut report);
    let tx = conn.transaction()?;
    // The first read fixes the snapshot; the head read after it covers its prune point.
    let (_rows, _newest): (i64, Option<i64>) =
        tx.query_row("SELECT COUNT(*), MAX(id) FROM audit", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    let after = read_head(state_dir, &mut report);
    for head in [&before, &after].into_iter().flatten() {
        check_head(head, key, &mut report);
    }
    let Some(head) = after.as_ref().or(before.as_ref()) else {
        let chained: Option<i64> = tx
            .query_row(
                "SELECT id FROM audit WHERE hash IS NOT NULL LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        if chained.is_some() {
            report.fail(
                None,
                "audit.head is missing although the table has chained records, so a cut tail \
                 cannot be ruled out"
                    .into(),
            );
        }
        return Ok(report);
    };
    let tip = before.as_ref().unwrap_or(head).tip.clone();
    let mut walk = Walk {
        previous: None,
        chain_start: head.chain_start,
        pruned: head.pruned.clone(),
        tip: None,
        tip_seen: false,
        tip_differs: false,
    };
    let tip_expected = tip.id > walk.pruned_through();
    walk.tip = tip_expected.then(|| tip.clone());
    report.chain_start = Some(head.chain_start);
    report.head_tip = Some(tip.id);
    report.pruned_through = Some(walk.pruned_through());

    let mut statement = tx.prepare(&format!("SELECT {ROW_COLUMNS} FROM audit ORDER BY id"))?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let (columns, prev_hash, hash) = read_row(row)?;
        report.records += 1;
        report.first_id.get_or_insert(columns.id);
        report.last_id = Some(columns.id);
        if columns.id < walk.chain_start {
            report.unchained_records += 1;
            continue;
        }
        if !report.ok {
            continue;
        }
        if let Err(problem) = walk.row(key, &columns, prev_hash.as_deref(), hash.as_deref()) {
            report.fail(Some(columns.id), problem);
            continue;
        }
        if columns.id > tip.id {
            report.records_after_head += 1;
        }
        if columns.outcome == RESEALED {
            report.reseals.push(Reseal {
                id: columns.id,
                time_ms: columns.time_ms,
                note: columns.note.clone(),
            });
        }
    }
    if walk.tip_differs {
        report.truncated = true;
    }
    if tip_expected && !walk.tip_seen && report.ok {
        report.truncated = true;
        report.fail(
            None,
            format!(
                "the table ends at record {} but audit.head names record {}: its tail was cut \
                 or an older copy of the database was restored",
                report
                    .last_id
                    .map_or_else(|| "none".into(), |id| id.to_string()),
                tip.id
            ),
        );
    }
    Ok(report)
}

/// What `reseal` did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resealed {
    /// The operator record that starts the resealed chain.
    pub marker_id: i64,
    /// The chain goes on from the rows before (same secret), or a new segment starts (another
    /// secret, or no chained row to continue).
    pub continued: bool,
    /// What verify found before the reseal.
    pub problem: String,
}

/// Why a reseal was not done.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("nothing to reseal: the audit trail verifies")]
    Intact,
    #[error("could not write audit.head: {0}")]
    Head(std::io::Error),
}

impl From<rusqlite::Error> for ResealError {
    fn from(error: rusqlite::Error) -> Self {
        ResealError::Store(error.into())
    }
}

/// After an operator has looked at a broken trail: appends an `AUDIT_RESEALED` record that
/// names what verify found and what the old head said, and writes a new head from it, so the
/// gateway can store records again. Rows are never changed or removed: an edited row keeps
/// failing verify, a cut tail stays visible in the marker's note. With the same secret the
/// chain goes on from the newest row; under a new secret (rotation) a new segment starts at
/// the marker and earlier rows count as unchained. Stop the gateway first. Blocking.
pub fn reseal(
    conn: &mut Connection,
    state_dir: &Path,
    key: &ChainKey,
    now_ms: i64,
) -> Result<Resealed, ResealError> {
    let report = verify(conn, state_dir, key)?;
    let Some(problem) = report.problem.clone() else {
        return Err(ResealError::Intact);
    };
    let old_head = Head::read(state_dir).ok().flatten();
    let trusted_head = old_head
        .as_ref()
        .filter(|head| head.key_id == key.key_id() && head.verifies(key));
    let tx = write_transaction(conn)?;
    let newest = newest_row(&tx)?;
    // The newest row can be continued if it is chained under this secret.
    let continuable = match &newest {
        Some((id, Some(hash))) => {
            let row = tx.query_row(
                &format!("SELECT {ROW_COLUMNS} FROM audit WHERE id = ?1"),
                [id],
                read_row,
            )?;
            let (columns, prev_hash, _) = row;
            prev_hash.is_some_and(|prev| key.row_hash(&prev, &canonical_row(&columns)) == *hash)
        }
        _ => false,
    };
    let newest_id = newest.as_ref().map_or(0, |(id, _)| *id);
    let (prev, chain_start, pruned) = if continuable {
        let prev = RowRef {
            id: newest_id,
            hash: newest.and_then(|(_, hash)| hash).unwrap_or_default(),
        };
        match trusted_head {
            Some(head) => (prev, head.chain_start, head.pruned.clone()),
            None => {
                // Without a head to trust, the chain is taken to start at the oldest chained
                // row; a predecessor it names counts as pruned.
                let (first_id, first_prev): (i64, String) = tx.query_row(
                    "SELECT id, prev_hash FROM audit WHERE hash IS NOT NULL ORDER BY id LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                let pruned = (first_prev != GENESIS_HASH).then(|| RowRef {
                    id: first_id - 1,
                    hash: first_prev,
                });
                (prev, first_id, pruned)
            }
        }
    } else {
        let start = newest_id + 1;
        (
            RowRef {
                id: newest_id,
                hash: GENESIS_HASH.into(),
            },
            start,
            None,
        )
    };
    let old = old_head.as_ref().map_or_else(
        || "none".to_string(),
        |head| {
            format!(
                "record {} ({}...)",
                head.tip.id,
                &head.tip.hash[..16.min(head.tip.hash.len())]
            )
        },
    );
    let note = format!(
        "resealed by the operator: {problem} (old audit.head tip: {old}; table ended at record {newest_id}; {})",
        if continuable {
            "the chain continues"
        } else {
            "a new chain segment starts here"
        }
    );
    let marker = insert_row(
        &tx,
        key,
        &prev,
        RowColumns {
            time_ms: now_ms,
            subject: "operator".into(),
            tool: "-".into(),
            outcome: RESEALED.into(),
            note: Some(note.chars().take(1024).collect()),
            ..RowColumns::default()
        },
    )?;
    tx.commit()?;
    let marker_id = marker.id;
    Head::new(key, chain_start, marker, pruned)
        .write(state_dir)
        .map_err(ResealError::Head)?;
    Ok(Resealed {
        marker_id,
        continued: continuable,
        problem,
    })
}
