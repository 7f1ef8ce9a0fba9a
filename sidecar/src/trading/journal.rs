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
//! `reconciled`, `settled` (the laptop owner's decision), `cancelled`, and `observed` facts
//! about its orders (status, fills) that change no outcome.
//!
//! One process writes the journal at a time: [`Journal::open`] takes an exclusive lock on the
//! file ([`JournalError::Locked`] otherwise); commands that only look use [`read_attempts`].
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

pub use super::attempts::AttemptBook;
use super::attempts::Commitments;
pub use super::attempts::{Attempt, AttemptStatus};
pub use super::journal_chain::VerifyReport;
use super::journal_chain::{self, Head, JournalKey, KEYED_EVENT};
use protocol::envelope::JournalRef;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared_safety::guards::Side;
use shared_safety::money::Decimal;
use std::collections::HashSet;
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
    /// Another process holds the journal (a running sidecar daemon).
    #[error("the trade journal is in use by another process (a running sidecar)")]
    Locked,
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

/// The attempts of the journal at `path`, read without taking it (a running daemon may hold
/// it): for commands that only look. A missing file is an empty journal; a journal that does
/// not verify is an error, as at open.
pub fn read_attempts(path: &Path) -> Result<AttemptBook, JournalError> {
    let (loaded, _, _) = journal_chain::load(path)?;
    if let Some(line) = loaded.report.broken_at_line {
        return Err(JournalError::Corrupt { line });
    }
    if let Some(problem) = &loaded.report.problem {
        return Err(JournalError::Untrusted(problem.clone()));
    }
    let mut book = AttemptBook::default();
    for entry in &loaded.entries {
        book.apply(
            entry.seq,
            entry.attempt,
            entry.at_ms,
            &entry.event,
            &entry.data,
        );
    }
    Ok(book)
}

/// Checks the journal at `path` with the key and head next to it (read only). A missing file
/// is an empty journal.
pub fn verify(path: &Path) -> Result<VerifyReport, JournalError> {
    journal_chain::load(path).map(|(loaded, _, _)| loaded.report)
}

/// Reads the journal at `path` (without its lock: a running daemon keeps it) and says whether
/// it is intact and holds the entry `anchor` names, as [`Journal::holds`] would at the next
/// connection. `anchor: None` (the gateway has no entry on record) is always held.
pub fn verify_with_anchor(
    path: &Path,
    anchor: Option<&JournalRef>,
) -> Result<(VerifyReport, bool), JournalError> {
    let (loaded, _, _) = journal_chain::load(path)?;
    let held = anchor.is_none_or(|anchor| {
        usize::try_from(anchor.seq)
            .ok()
            .and_then(|seq| seq.checked_sub(1))
            .and_then(|index| loaded.entries.get(index))
            .is_some_and(|entry| entry.hash == hex::encode(anchor.hash))
    });
    Ok((loaded.report, held))
}

struct Inner {
    file: File,
    key: JournalKey,
    entries: Vec<Entry>,
    book: AttemptBook,
    /// Attempts being placed by this process right now (their outcome is coming, not lost).
    in_flight: HashSet<u64>,
    last_hash: String,
    next_seq: u64,
}

/// What [`Journal::decide`] writes: an intent, and an outcome when the decision is already
/// final (a refusal).
#[derive(Debug)]
pub struct Decision<T> {
    pub intent: Value,
    /// `(event, data)` written right after the intent, e.g. `("blocked", ...)`.
    pub outcome: Option<(&'static str, Value)>,
    /// Whether the attempt is now being placed (in flight) by the caller.
    pub in_flight: bool,
    pub value: T,
}

/// What the journal says, for a decision taken under its lock.
pub struct JournalView<'a> {
    book: &'a AttemptBook,
    in_flight: &'a HashSet<u64>,
}

impl JournalView<'_> {
    pub fn book(&self) -> &AttemptBook {
        self.book
    }
    pub fn in_flight(&self, attempt: u64) -> bool {
        self.in_flight.contains(&attempt)
    }
    pub fn spent_on_day(&self, utc_day: i64) -> Decimal {
        self.book.spent_on_day(utc_day)
    }
    pub fn unresolved_on(&self, conid: i64, side: Side) -> Option<u64> {
        self.book.unresolved_on(conid, side, self.in_flight)
    }
    pub fn commitments(&self, conid: i64, side: Side, now_ms: i64, lag_ms: i64) -> Commitments {
        self.book.commitments(conid, side, now_ms, lag_ms)
    }
}

/// The open journal. Appends are serialized by a mutex and fsync'd.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// The sequence number of the last entry, for tasks waiting on an attempt's outcome.
    appended: tokio::sync::watch::Sender<u64>,
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
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        crate::secret_file::restrict_to_owner(path)?;
        // One writer at a time: a second process appending would break the chain. The lock
        // is the operating system's and goes with the file when the process ends.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked),
            Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
        }
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
            book: AttemptBook::default(),
            in_flight: HashSet::new(),
            last_hash: loaded.report.last_hash.clone(),
            next_seq: loaded.report.entries + 1,
        };
        for entry in &loaded.entries {
            inner.book.apply(
                entry.seq,
                entry.attempt,
                entry.at_ms,
                &entry.event,
                &entry.data,
            );
        }
        inner.entries = loaded.entries;
        let (appended, _) = tokio::sync::watch::channel(loaded.report.entries);
        let journal = Journal {
            path: path.to_path_buf(),
            inner: Mutex::new(inner),
            appended,
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
        #[cfg(feature = "fault-injection")]
        if faults::take(dir) {
            return Err(JournalError::Io(std::io::Error::from_raw_os_error(28)));
        }
        inner.file.seek(SeekFrom::End(0))?;
        inner.file.write_all(&line)?;
        inner.file.sync_data()?;
        inner.next_seq += 1;
        inner.last_hash = entry.hash.clone();
        inner.book.apply(
            entry.seq,
            entry.attempt,
            entry.at_ms,
            &entry.event,
            &entry.data,
        );
        if entry.event != "intent" && entry.event != "observed" {
            inner.in_flight.remove(&entry.attempt);
        }
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

    /// Tells the tasks waiting on outcomes that the journal grew.
    fn notify(&self, seq: u64) {
        self.appended.send_replace(seq);
    }

    /// Writes an attempt's intent durably; returns the attempt id.
    pub fn intent(&self, data: Value, at_ms: i64) -> Result<u64, JournalError> {
        let seq = {
            let dir = self.dir();
            let mut inner = self.lock()?;
            Journal::append_locked(&mut inner, dir, None, "intent", data, at_ms)?.seq
        };
        self.notify(seq);
        Ok(seq)
    }

    /// Appends an outcome of `attempt` (or an `observed` fact about its orders).
    pub fn outcome(
        &self,
        attempt: u64,
        event: &str,
        data: Value,
        at_ms: i64,
    ) -> Result<(), JournalError> {
        let seq = {
            let dir = self.dir();
            let mut inner = self.lock()?;
            Journal::append_locked(&mut inner, dir, Some(attempt), event, data, at_ms)?.seq
        };
        self.notify(seq);
        Ok(())
    }

    /// Takes a decision on a consistent view of the journal and writes its intent (and
    /// outcome, if final) before any other append can happen: parallel callers behave as if
    /// they ran one after the other. `decide` returns `Err` to write nothing.
    pub fn decide<T, E>(
        &self,
        at_ms: i64,
        decide: impl FnOnce(&JournalView<'_>) -> Result<Decision<T>, E>,
    ) -> Result<Result<(u64, T), E>, JournalError> {
        let (attempt, value, seq) = {
            let dir = self.dir();
            let mut inner = self.lock()?;
            let view = JournalView {
                book: &inner.book,
                in_flight: &inner.in_flight,
            };
            let decision = match decide(&view) {
                Ok(decision) => decision,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let entry =
                Journal::append_locked(&mut inner, dir, None, "intent", decision.intent, at_ms)?;
            let mut seq = entry.seq;
            if let Some((event, data)) = decision.outcome {
                seq = Journal::append_locked(&mut inner, dir, Some(entry.seq), event, data, at_ms)?
                    .seq;
            } else if decision.in_flight {
                inner.in_flight.insert(entry.seq);
            }
            (entry.seq, decision.value, seq)
        };
        self.notify(seq);
        Ok(Ok((attempt, value)))
    }

    /// The caller that was placing `attempt` stopped without writing its outcome (it failed,
    /// or the task was dropped): from now on its outcome counts as unknown.
    pub fn abandon(&self, attempt: u64) {
        if let Ok(mut inner) = self.lock() {
            inner.in_flight.remove(&attempt);
        }
        // Wakes the waiters without a new value. (Reading the current value inside the call
        // that replaces it would hold the watch's read lock while taking its write lock: a
        // deadlock.)
        self.appended.send_modify(|_| {});
    }

    /// Waits until `attempt` has a decisive outcome (other than waiting for approval) or is no
    /// longer in flight here, or `deadline` passes. Returns the attempt as it then is.
    pub async fn wait_settled(
        &self,
        attempt: u64,
        deadline: tokio::time::Instant,
    ) -> Option<Attempt> {
        let mut appended = self.appended.subscribe();
        loop {
            {
                let inner = self.lock().ok()?;
                let record = inner.book.get(attempt)?;
                let waiting = record.status == AttemptStatus::AwaitingApproval
                    || (record.status == AttemptStatus::Unresolved
                        && inner.in_flight.contains(&attempt));
                if !waiting {
                    return Some(record.clone());
                }
            }
            if tokio::time::timeout_at(deadline, appended.changed())
                .await
                .is_err()
            {
                return self.attempt(attempt);
            }
        }
    }

    /// Moves `attempt` from status `from` with `event`, atomically: `Ok(Err(status))` (nothing
    /// written) when its status is not `from` (or it does not exist: `None`). This is what
    /// makes an approval single use. `in_flight`: the caller sends the order next.
    pub fn transition(
        &self,
        attempt: u64,
        from: AttemptStatus,
        event: &str,
        data: Value,
        at_ms: i64,
        in_flight: bool,
    ) -> Result<Result<Attempt, Option<AttemptStatus>>, JournalError> {
        let (record, seq) = {
            let dir = self.dir();
            let mut inner = self.lock()?;
            let status = inner.book.get(attempt).map(|record| record.status);
            if status != Some(from) {
                return Ok(Err(status));
            }
            let entry = Journal::append_locked(&mut inner, dir, Some(attempt), event, data, at_ms)?;
            if in_flight {
                inner.in_flight.insert(attempt);
            }
            let record = inner.book.get(attempt).cloned();
            (record, entry.seq)
        };
        self.notify(seq);
        Ok(record.ok_or(None))
    }

    /// Checks an attempt in flight again on a consistent view of the journal (no other order
    /// decided in between); a refusal `(event, data)` is journaled as its outcome, which ends
    /// it. Returns whether it passed.
    pub fn recheck(
        &self,
        attempt: u64,
        check: impl FnOnce(&JournalView<'_>) -> Result<(), (&'static str, Value)>,
        at_ms: i64,
    ) -> Result<bool, JournalError> {
        let seq = {
            let dir = self.dir();
            let mut inner = self.lock()?;
            let view = JournalView {
                book: &inner.book,
                in_flight: &inner.in_flight,
            };
            match check(&view) {
                Ok(()) => return Ok(true),
                Err((event, data)) => {
                    Journal::append_locked(&mut inner, dir, Some(attempt), event, data, at_ms)?.seq
                }
            }
        };
        self.notify(seq);
        Ok(false)
    }

    /// Changes whenever the journal grows or an attempt stops being in flight.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// The attempts waiting for the owner's approval, oldest first.
    pub fn awaiting_approval(&self) -> Vec<Attempt> {
        self.with_book(|book, _| {
            book.iter()
                .filter(|attempt| attempt.status == AttemptStatus::AwaitingApproval)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
    }

    /// A copy of one attempt.
    pub fn attempt(&self, id: u64) -> Option<Attempt> {
        self.lock().ok()?.book.get(id).cloned()
    }

    /// Runs `read` on the journal's attempts.
    pub fn with_book<T>(&self, read: impl FnOnce(&AttemptBook, &HashSet<u64>) -> T) -> Option<T> {
        let inner = self.lock().ok()?;
        Some(read(&inner.book, &inner.in_flight))
    }

    /// Buy value of attempts whose intent falls on `utc_day` (days since the Unix epoch) and
    /// that were placed or may have been.
    pub fn spent_on_day(&self, utc_day: i64) -> Decimal {
        // Fail closed: an unreadable journal means "budget exhausted".
        self.with_book(|book, _| book.spent_on_day(utc_day))
            .unwrap_or(Decimal::MAX)
    }

    /// Attempts whose outcome is unknown.
    pub fn pending(&self) -> Vec<Attempt> {
        self.with_book(|book, in_flight| book.pending(in_flight).cloned().collect())
            .unwrap_or_default()
    }

    /// The attempts made with `idempotency_key`, oldest first.
    pub fn by_idempotency_key(&self, key: &str) -> Vec<Attempt> {
        self.with_book(|book, _| book.by_idempotency_key(key).into_iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The attempt that placed the order with broker id `order_id`, if any.
    pub fn by_order_id(&self, order_id: &str) -> Option<Attempt> {
        self.with_book(|book, _| book.by_order_id(order_id).cloned())
            .flatten()
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
            .map(|inner| inner.book.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }
}

/// Fault injection for the end-to-end tests (feature `fault-injection`, never in the
/// product's builds): the next appends to the journal in a state directory fail as on a full
/// disk, before anything is written.
#[cfg(feature = "fault-injection")]
pub mod faults {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static ARMED: Mutex<Option<HashMap<PathBuf, u32>>> = Mutex::new(None);

    /// Makes the next `count` appends to the journal in `state_dir` fail with ENOSPC.
    pub fn fail_next_appends(state_dir: &Path, count: u32) {
        let mut armed = ARMED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        armed
            .get_or_insert_with(HashMap::new)
            .insert(state_dir.to_path_buf(), count);
    }

    pub(super) fn take(dir: &Path) -> bool {
        let mut armed = ARMED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(left) = armed.as_mut().and_then(|map| map.get_mut(dir)) else {
            return false;
        };
        if *left == 0 {
            return false;
        }
        *left -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_order_moves_on_once_even_when_decisions_race() {
        let dir = tempfile::tempdir().unwrap();
        let journal = std::sync::Arc::new(Journal::open(&dir.path().join(JOURNAL_FILE)).unwrap());
        let attempt = journal.intent(buy_intent(None, "10"), 1).unwrap();
        journal
            .outcome(
                attempt,
                "awaiting_approval",
                json!({"expires_at_ms": 10}),
                2,
            )
            .unwrap();
        assert_eq!(
            journal.attempt(attempt).unwrap().status,
            AttemptStatus::AwaitingApproval
        );
        let deciders: Vec<_> = (0..8)
            .map(|i| {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    let (event, in_flight) = if i % 2 == 0 {
                        ("approved", true)
                    } else {
                        ("denied", false)
                    };
                    journal
                        .transition(
                            attempt,
                            AttemptStatus::AwaitingApproval,
                            event,
                            json!({}),
                            3,
                            in_flight,
                        )
                        .unwrap()
                        .is_ok()
                })
            })
            .collect();
        let won = deciders
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(won, 1, "exactly one decision is journaled");
        let decisions = journal
            .recent_entries(20)
            .iter()
            .filter(|entry| entry.event == "approved" || entry.event == "denied")
            .count();
        assert_eq!(decisions, 1);
        // An approved attempt is in flight like any order being sent; a denied one is done.
        let record = journal.attempt(attempt).unwrap();
        let in_flight = journal
            .with_book(|_, in_flight| in_flight.contains(&attempt))
            .unwrap();
        match record.status {
            AttemptStatus::Unresolved => assert!(in_flight && !record.unknown_outcome(true)),
            AttemptStatus::Denied => assert!(!in_flight && record.status.definitely_not_placed()),
            other => panic!("unexpected {other:?}"),
        }
        // Reopened from disk, the same status.
        let status = record.status;
        drop(journal);
        let reopened = read_attempts(&dir.path().join(JOURNAL_FILE)).unwrap();
        assert_eq!(reopened.get(attempt).unwrap().status, status);
    }

    #[test]
    fn a_journal_others_can_read_is_made_private_at_open() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let journal = Journal::open(&path).unwrap();
        journal.intent(buy_intent(None, "10"), 1).unwrap();
        drop(journal);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let journal = Journal::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(journal.last_seq(), 1, "the entries are intact");
    }

    fn buy_intent(key: Option<&str>, notional: &str) -> Value {
        json!({"tool": "ibkr_buy", "symbol": "AAPL", "side": "BUY", "role": "entry",
               "fingerprint": "fp1-x", "notional": notional, "dry_run": false,
               "idempotency_key": key, "coid": "ia-1"})
    }

    /// `abandon` runs when a placing task fails or is dropped, under load: it once read the
    /// watch's value inside the call that replaced it and deadlocked the sidecar's order path.
    #[tokio::test]
    async fn abandoning_an_attempt_returns_and_wakes_its_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let journal = std::sync::Arc::new(Journal::open(&dir.path().join(JOURNAL_FILE)).unwrap());
        let attempt = journal.intent(buy_intent(None, "5"), 1).unwrap();
        let mut appended = journal.appended.subscribe();
        appended.borrow_and_update();
        let abandoning = std::sync::Arc::clone(&journal);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            abandoning.abandon(attempt);
            let _ = done_tx.send(());
        });
        // A deadlock shows as no wake-up: bounded so the test fails instead of hanging.
        tokio::time::timeout(std::time::Duration::from_secs(30), appended.changed())
            .await
            .expect("abandon deadlocked: its waiters were never woken")
            .unwrap();
        done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("abandon did not return");
        assert_eq!(*appended.borrow(), attempt);
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
        assert!(
            journal
                .with_book(|book, _| book.recent_identical("fp1-x", day_ms + 10, 5_000))
                .unwrap()
        );
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
