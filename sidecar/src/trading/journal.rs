//! The trade journal: `<state_dir>/journal.jsonl`, append-only JSON lines, hash-chained.
//!
//! Each line is one [`Entry`]: `{seq, at_ms, attempt, event, data, prev_hash, hash}` where
//! `hash` is a keyed HMAC-SHA256 over `prev_hash` and the canonical JSON of the entry without
//! `hash` (serde_json with sorted keys, no floats: amounts are decimal strings). The first entry
//! chains from 64 zeros. The key lives apart from the data in `journal.key`, and a keyed head
//! checkpoint in `journal.head` names the newest entry, so an edited, removed or reordered
//! entry, a cut tail or an older copy of the file is detected: see [`super::journal_chain`]
//! (which also explains how journals written before keying carry over). An order attempt is
//! an `intent` entry (its `seq` is the attempt id) followed by outcome entries naming that
//! attempt: `sent`, `dry_run`, `blocked`, `declined`, `rejected`, `indeterminate`,
//! `reconciled`, `cancelled`.
//!
//! Durability: every append is written in one `write` and `fsync`'d before `append` returns, so
//! the intent is on disk before an order is sent; the head checkpoint is replaced after it. A
//! crash can leave at most a torn last line: [`verify`] reports it, [`Journal::open`] logs a
//! warning and cuts it off before appending (it was never acknowledged, so nothing depended on
//! it). An intent without an outcome that was not a dry run reads as *pending* (the order may
//! have been sent) until reconciled.
//!
//! Secrets never enter the journal: entries hold order fields, broker order ids, guard codes and
//! bounded broker texts only (no tokens, cookies or session ids).

pub use super::journal_chain::VerifyReport;
use super::journal_chain::{self, Head, JournalKey, KEYED_EVENT};
use protocol::envelope::JournalRef;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared_safety::money::{Decimal, parse_decimal_text};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The journal's file name inside the state directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why the journal could not be used. No order is sent when this happens.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the trade journal could not be read or written")]
    Io(#[from] std::io::Error),
    #[error("the trade journal is corrupt at line {line}")]
    Corrupt { line: usize },
    /// The journal as a whole cannot be trusted (cut tail, older copy, missing or foreign
    /// head); the text says which.
    #[error("the trade journal cannot be trusted: {0}")]
    Untrusted(String),
    #[error("the trade journal key cannot be used: {0}")]
    Key(crate::secret_file::PrivateFileError),
}

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: i64,
    /// The attempt this entry belongs to: the `seq` of its `intent` entry.
    pub attempt: u64,
    pub event: String,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The status of an attempt, from its latest outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Intent written, no outcome (crash or in flight); pending unless a dry run.
    Unresolved,
    Sent,
    DryRun,
    Blocked,
    Declined,
    Rejected,
    Indeterminate,
    ReconciledPlaced,
    ReconciledNotPlaced,
    Cancelled,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Unresolved => "unresolved",
            AttemptStatus::Sent => "sent",
            AttemptStatus::DryRun => "dry_run",
            AttemptStatus::Blocked => "blocked",
            AttemptStatus::Declined => "declined",
            AttemptStatus::Rejected => "rejected",
            AttemptStatus::Indeterminate => "indeterminate",
            AttemptStatus::ReconciledPlaced => "reconciled_placed",
            AttemptStatus::ReconciledNotPlaced => "reconciled_not_placed",
            AttemptStatus::Cancelled => "cancelled",
        }
    }
}

/// One attempt as the journal knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub id: u64,
    pub at_ms: i64,
    /// The intent entry's data.
    pub intent: Value,
    pub status: AttemptStatus,
    /// The data of the first outcome entry (what an idempotent retry answers).
    pub first_outcome: Option<(String, Value)>,
    /// The data of the latest outcome entry.
    pub last_outcome: Option<(String, Value)>,
}

impl Attempt {
    fn text(&self, field: &str) -> Option<&str> {
        self.intent.get(field).and_then(Value::as_str)
    }
    pub fn dry_run(&self) -> bool {
        self.intent.get("dry_run").and_then(Value::as_bool) == Some(true)
    }
    pub fn fingerprint(&self) -> Option<&str> {
        self.text("fingerprint")
    }
    pub fn idempotency_key(&self) -> Option<&str> {
        self.text("idempotency_key")
    }
    pub fn coid(&self) -> Option<&str> {
        self.text("coid")
    }
    /// The value counted toward the daily cap (buy entries only).
    pub fn notional(&self) -> Option<Decimal> {
        self.text("notional")
            .and_then(|text| parse_decimal_text(text, "notional").ok())
    }
    /// Unknown outcome: it may have been placed (blocks identical retries, counts as spend).
    pub fn pending(&self) -> bool {
        match self.status {
            AttemptStatus::Indeterminate => true,
            AttemptStatus::Unresolved => !self.dry_run(),
            _ => false,
        }
    }
    /// Placed or possibly placed.
    pub fn counts_as_spend(&self) -> bool {
        self.pending()
            || matches!(
                self.status,
                AttemptStatus::Sent | AttemptStatus::ReconciledPlaced | AttemptStatus::Cancelled
            )
    }
}

fn status_of(event: &str, data: &Value) -> Option<AttemptStatus> {
    Some(match event {
        "sent" => AttemptStatus::Sent,
        "dry_run" => AttemptStatus::DryRun,
        "blocked" => AttemptStatus::Blocked,
        "declined" => AttemptStatus::Declined,
        "rejected" => AttemptStatus::Rejected,
        "indeterminate" => AttemptStatus::Indeterminate,
        "reconciled" => {
            if data.get("placed").and_then(Value::as_bool) == Some(true) {
                AttemptStatus::ReconciledPlaced
            } else {
                AttemptStatus::ReconciledNotPlaced
            }
        }
        "cancelled" => AttemptStatus::Cancelled,
        _ => return None,
    })
}

/// Checks the journal at `path` with the key and head next to it (read only). A missing file
/// is an empty journal.
pub fn verify(path: &Path) -> Result<VerifyReport, JournalError> {
    journal_chain::load(path).map(|(loaded, _, _)| loaded.report)
}

struct Inner {
    file: File,
    key: JournalKey,
    entries: Vec<Entry>,
    attempts: BTreeMap<u64, Attempt>,
    last_hash: String,
    next_seq: u64,
}

impl Inner {
    fn apply(&mut self, entry: &Entry) {
        if entry.event == "intent" {
            self.attempts.insert(
                entry.seq,
                Attempt {
                    id: entry.seq,
                    at_ms: entry.at_ms,
                    intent: entry.data.clone(),
                    status: AttemptStatus::Unresolved,
                    first_outcome: None,
                    last_outcome: None,
                },
            );
        } else if let Some(attempt) = self.attempts.get_mut(&entry.attempt)
            && let Some(status) = status_of(&entry.event, &entry.data)
        {
            attempt.status = status;
            if attempt.first_outcome.is_none() {
                attempt.first_outcome = Some((entry.event.clone(), entry.data.clone()));
            }
            attempt.last_outcome = Some((entry.event.clone(), entry.data.clone()));
        }
    }
}

/// The open journal. Appends are serialized by a mutex and fsync'd.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Opens (or creates, mode 0600) the journal in `state_dir`. A broken chain refuses to open
    /// (fail closed: no order is sent on a journal that cannot be trusted); a torn last line is
    /// logged and cut off.
    pub fn open_in(state_dir: &Path) -> Result<Journal, JournalError> {
        Journal::open(&state_dir.join(JOURNAL_FILE))
    }

    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let (loaded, key, head) = journal_chain::load(path)?;
        if let Some(line) = loaded.report.broken_at_line {
            return Err(JournalError::Corrupt { line });
        }
        if let Some(problem) = &loaded.report.problem {
            return Err(JournalError::Untrusted(problem.clone()));
        }
        // The check refuses a head or keyed entries without a key, so a journal reaching here
        // without one is new or unkeyed: it gets its key now.
        let key = match key {
            Some(key) => key,
            None => JournalKey::create(dir)?,
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        if loaded.report.torn_tail {
            tracing::warn!(
                entries = loaded.report.entries,
                "the trade journal ends with an incomplete line (a crash while writing); it is ignored"
            );
            file.set_len(loaded.valid_len)?;
            file.sync_all()?;
        }
        let mut inner = Inner {
            file,
            key,
            entries: Vec::new(),
            attempts: BTreeMap::new(),
            last_hash: loaded.report.last_hash.clone(),
            next_seq: loaded.report.entries + 1,
        };
        for entry in &loaded.entries {
            inner.apply(entry);
        }
        inner.entries = loaded.entries;
        let journal = Journal {
            path: path.to_path_buf(),
            inner: Mutex::new(inner),
        };
        journal.seal(head.as_ref(), loaded.report.keyed)?;
        Ok(journal)
    }

    /// Brings the head up to the newest entry, and keys an unkeyed journal: the head is
    /// written before the first keyed entry (so it is never missing next to one), then a
    /// `chain_keyed` entry seals the unkeyed chain.
    fn seal(&self, head: Option<&Head>, keyed: bool) -> Result<(), JournalError> {
        let mut inner = self.lock()?;
        let tip = inner.next_seq - 1;
        if head.is_none_or(|head| head.seq != tip) {
            Head::new(&inner.key, tip, &inner.last_hash).write(self.dir())?;
        }
        if tip > 0 && !keyed {
            tracing::info!(
                entries = tip,
                "keying the trade journal: a chain_keyed entry seals its unkeyed entries"
            );
            let data = json!({"sealed_seq": tip, "sealed_hash": inner.last_hash});
            let at_ms = crate::trading::now_ms();
            Journal::append_locked(&mut inner, self.dir(), None, KEYED_EVENT, data, at_ms)?;
        }
        Ok(())
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, JournalError> {
        self.inner
            .lock()
            .map_err(|_| JournalError::Io(std::io::Error::other("journal lock poisoned")))
    }

    /// Appends one entry: one write, fsync'd, then the head replaced. The entry counts once
    /// it is on disk; a head that cannot be replaced afterwards is logged (the entry stays
    /// valid, only the tail's checkpoint lags until the next append).
    fn append_locked(
        inner: &mut Inner,
        dir: &Path,
        attempt: Option<u64>,
        event: &str,
        data: Value,
        at_ms: i64,
    ) -> Result<Entry, JournalError> {
        let seq = inner.next_seq;
        let mut entry = Entry {
            seq,
            at_ms,
            attempt: attempt.unwrap_or(seq),
            event: event.to_string(),
            data,
            prev_hash: inner.last_hash.clone(),
            hash: String::new(),
        };
        entry.hash = inner.key.entry_hash(&entry);
        let mut line = serde_json::to_vec(&entry)
            .map_err(|_| JournalError::Io(std::io::Error::other("cannot encode entry")))?;
        line.push(b'\n');
        inner.file.seek(SeekFrom::End(0))?;
        inner.file.write_all(&line)?;
        inner.file.sync_data()?;
        inner.next_seq += 1;
        inner.last_hash = entry.hash.clone();
        inner.apply(&entry);
        inner.entries.push(entry.clone());
        super::journal_tap::wrote(&entry);
        if let Err(error) = Head::new(&inner.key, entry.seq, &entry.hash).write(dir) {
            tracing::error!(%error, seq = entry.seq, "could not replace journal.head after an append; a cut tail is detected only from the previous entry on");
        }
        Ok(entry)
    }

    /// Whether the journal holds the entry `anchor` names (same sequence number and hash).
    pub fn holds(&self, anchor: &JournalRef) -> bool {
        let Ok(inner) = self.lock() else {
            return false;
        };
        usize::try_from(anchor.seq)
            .ok()
            .and_then(|seq| seq.checked_sub(1))
            .and_then(|index| inner.entries.get(index))
            .is_some_and(|entry| entry.hash == hex::encode(anchor.hash))
    }

    /// The newest entry's sequence number (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.lock().map(|inner| inner.next_seq - 1).unwrap_or(0)
    }

    /// Writes an attempt's intent durably; returns the attempt id.
    pub fn intent(&self, data: Value, at_ms: i64) -> Result<u64, JournalError> {
        let mut inner = self.lock()?;
        Journal::append_locked(&mut inner, self.dir(), None, "intent", data, at_ms)
            .map(|entry| entry.seq)
    }

    /// Appends an outcome of `attempt`.
    pub fn outcome(
        &self,
        attempt: u64,
        event: &str,
        data: Value,
        at_ms: i64,
    ) -> Result<(), JournalError> {
        let mut inner = self.lock()?;
        Journal::append_locked(&mut inner, self.dir(), Some(attempt), event, data, at_ms)
            .map(|_| ())
    }

    /// A copy of one attempt.
    pub fn attempt(&self, id: u64) -> Option<Attempt> {
        self.lock().ok()?.attempts.get(&id).cloned()
    }

    /// Buy value of attempts whose intent falls on `utc_day` (days since the Unix epoch) and
    /// that were placed or may have been (sent, indeterminate, unresolved, reconciled placed).
    pub fn spent_on_day(&self, utc_day: i64) -> Decimal {
        let Ok(inner) = self.lock() else {
            // Fail closed: an unreadable journal means "budget exhausted".
            return Decimal::MAX;
        };
        inner
            .attempts
            .values()
            .filter(|attempt| attempt.at_ms.div_euclid(86_400_000) == utc_day)
            .filter(|attempt| attempt.counts_as_spend())
            .filter_map(Attempt::notional)
            .fold(Decimal::ZERO, |total, value| {
                total.checked_add(value).unwrap_or(Decimal::MAX)
            })
    }

    /// Attempts whose outcome is unknown.
    pub fn pending(&self) -> Vec<Attempt> {
        self.lock()
            .map(|inner| {
                inner
                    .attempts
                    .values()
                    .filter(|attempt| attempt.pending())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// (an identical order was sent within `window_ms` before `now_ms`, an identical order is
    /// pending).
    pub fn identical(&self, fingerprint: &str, now_ms: i64, window_ms: i64) -> (bool, bool) {
        let Ok(inner) = self.lock() else {
            return (true, true);
        };
        let mut recent = false;
        let mut pending = false;
        for attempt in inner.attempts.values() {
            if attempt.fingerprint() != Some(fingerprint) {
                continue;
            }
            if attempt.pending() {
                pending = true;
            }
            if matches!(
                attempt.status,
                AttemptStatus::Sent | AttemptStatus::ReconciledPlaced
            ) && now_ms.saturating_sub(attempt.at_ms) < window_ms
            {
                recent = true;
            }
        }
        (recent, pending)
    }

    /// The attempts made with `idempotency_key`, oldest first.
    pub fn by_idempotency_key(&self, key: &str) -> Vec<Attempt> {
        self.lock()
            .map(|inner| {
                inner
                    .attempts
                    .values()
                    .filter(|attempt| attempt.idempotency_key() == Some(key))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The attempt that placed the order with broker id `order_id`, if any.
    pub fn by_order_id(&self, order_id: &str) -> Option<Attempt> {
        let inner = self.lock().ok()?;
        inner
            .attempts
            .values()
            .find(|attempt| {
                let mentions = |outcome: &Option<(String, Value)>| {
                    outcome
                        .as_ref()
                        .and_then(|(_, data)| data.get("order_ids"))
                        .and_then(Value::as_array)
                        .is_some_and(|ids| ids.iter().any(|id| id.as_str() == Some(order_id)))
                };
                mentions(&attempt.first_outcome) || mentions(&attempt.last_outcome)
            })
            .cloned()
    }

    /// The latest `limit` entries, newest first.
    pub fn recent_entries(&self, limit: usize) -> Vec<Entry> {
        self.lock()
            .map(|inner| inner.entries.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// The latest `limit` attempts, newest first.
    pub fn recent_attempts(&self, limit: usize) -> Vec<Attempt> {
        self.lock()
            .map(|inner| inner.attempts.values().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buy_intent(key: Option<&str>, notional: &str) -> Value {
        json!({"tool": "ibkr_buy", "symbol": "AAPL", "side": "BUY", "role": "entry",
               "fingerprint": "fp1-x", "notional": notional, "dry_run": false,
               "idempotency_key": key, "coid": "ia-1"})
    }

    #[test]
    fn chain_views_and_tamper_detection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let journal = Journal::open(&path).unwrap();
        let day_ms = 20_000 * 86_400_000;
        let a = journal
            .intent(buy_intent(Some("k1"), "50"), day_ms + 1)
            .unwrap();
        journal
            .outcome(a, "sent", json!({"order_ids": ["7"]}), day_ms + 2)
            .unwrap();
        let b = journal.intent(buy_intent(None, "20"), day_ms + 3).unwrap();
        journal
            .outcome(b, "indeterminate", json!({"reason": "503"}), day_ms + 4)
            .unwrap();
        let c = journal.intent(buy_intent(None, "30"), day_ms + 5).unwrap();
        journal
            .outcome(c, "rejected", json!({"reason": "no"}), day_ms + 6)
            .unwrap();
        let d = journal
            .intent(json!({"notional": "5", "dry_run": true}), day_ms + 7)
            .unwrap();
        let _ = d;
        assert_eq!(journal.spent_on_day(20_000), Decimal::from(70));
        assert_eq!(journal.pending().len(), 1);
        assert_eq!(journal.identical("fp1-x", day_ms + 10, 5_000), (true, true));
        assert_eq!(journal.by_idempotency_key("k1").len(), 1);
        assert_eq!(journal.by_order_id("7").map(|a| a.id), Some(a));
        drop(journal);

        let report = verify(&path).unwrap();
        assert!(report.ok && !report.torn_tail);
        assert_eq!(report.entries, 7);

        // Reopen: same views.
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.spent_on_day(20_000), Decimal::from(70));
        drop(journal);

        // Tamper with an amount: verify breaks at that line, open refuses.
        let text = std::fs::read_to_string(&path).unwrap();
        let tampered = text.replacen("\"notional\":\"50\"", "\"notional\":\"5\"", 1);
        std::fs::write(&path, tampered).unwrap();
        let report = verify(&path).unwrap();
        assert!(!report.ok);
        assert_eq!(report.broken_at_line, Some(1));
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::Corrupt { line: 1 })
        ));
    }

    #[test]
    fn torn_tail_is_reported_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let journal = Journal::open(&path).unwrap();
        let a = journal.intent(buy_intent(None, "10"), 1).unwrap();
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":2,\"at_ms\":2,\"att").unwrap();
        drop(file);
        let report = verify(&path).unwrap();
        assert!(report.ok && report.torn_tail);
        assert_eq!(report.entries, 1);
        let journal = Journal::open(&path).unwrap();
        // The intent has no outcome: pending.
        assert_eq!(journal.pending().first().map(|p| p.id), Some(a));
        journal
            .outcome(a, "reconciled", json!({"placed": false}), 3)
            .unwrap();
        drop(journal);
        let report = verify(&path).unwrap();
        assert!(report.ok && !report.torn_tail);
        assert_eq!(report.entries, 2);
    }
}
