//! The trade journal's tamper evidence: keyed entry hashes, the key file, the head checkpoint,
//! and the check both `Journal::open` and `ibkr-agent journal verify` run.
//!
//! - `journal.key` (32 random bytes, 0600, created on first open, refused when others can
//!   read it): the HMAC-SHA256 key. An entry's `hash` is the hex HMAC of
//!   `"ibkr-agent journal entry v2\n" || prev_hash || "\n" || canonical entry without hash`,
//!   so whoever can write the journal but not read the key cannot recompute a chain.
//! - `journal.head` (0600, replaced atomically after every append): `{seq, hash, mac}` naming
//!   the newest entry, with `mac` = HMAC of `"ibkr-agent journal head v1\n" || seq || "\n" ||
//!   hash`. The journal must still hold that entry: cutting its tail or putting back an older
//!   copy of `journal.jsonl` alone is detected. Entries after the head are allowed (a crash
//!   between an append and the head's replacement).
//! - Journals written before keying (plain SHA-256 of the same input without the label) keep
//!   working: their chain is checked as it was, and the first keyed open appends a
//!   `chain_keyed` entry whose data names the unkeyed head (`sealed_seq`, `sealed_hash`). From
//!   then on every entry is keyed; an unkeyed entry after a keyed one is a break.
//!
//! The head is written once before the first keyed entry, so it can be missing only while the
//! journal holds no keyed entry; a missing head next to keyed entries is reported. Replacing
//! all three files with older copies is not detectable here: the gateway's anchor (the newest
//! entry it has on record, sent in every handshake) is what catches that.

use super::journal::{Entry, GENESIS_HASH, JournalError};
use crate::secret_file::{self, PrivateFileError};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use zeroize::Zeroizing;

/// The key file, next to the journal.
pub const KEY_FILE: &str = "journal.key";
/// The head checkpoint, next to the journal.
pub const HEAD_FILE: &str = "journal.head";
/// The event of the entry that seals an unkeyed chain when the journal is first keyed.
pub const KEYED_EVENT: &str = "chain_keyed";

const ENTRY_LABEL: &[u8] = b"ibkr-agent journal entry v2\n";
const HEAD_LABEL: &[u8] = b"ibkr-agent journal head v1\n";

/// The canonical form of an entry without its hash (sorted keys, no floats).
fn canonical(entry: &Entry) -> String {
    let mut object = Map::new();
    object.insert("seq".into(), json!(entry.seq));
    object.insert("at_ms".into(), json!(entry.at_ms));
    object.insert("attempt".into(), json!(entry.attempt));
    object.insert("event".into(), json!(entry.event));
    object.insert("data".into(), entry.data.clone());
    object.insert("prev_hash".into(), json!(entry.prev_hash));
    Value::Object(object).to_string()
}

/// The unkeyed hash journals had before keying: hex SHA-256 of `prev_hash || "\n" || canonical`.
pub fn unkeyed_hash(entry: &Entry) -> String {
    let mut hasher = Sha256::new();
    hasher.update(entry.prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical(entry).as_bytes());
    hex::encode(hasher.finalize())
}

/// The journal's HMAC key. Zeroized on drop, never printed.
pub struct JournalKey {
    secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for JournalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JournalKey(<redacted>)")
    }
}

impl JournalKey {
    /// The key in `dir`, or `None` when there is none yet. A key others can read, or of the
    /// wrong size, is an error: it is never used.
    pub fn load(dir: &Path) -> Result<Option<JournalKey>, JournalError> {
        match secret_file::read_private(&dir.join(KEY_FILE), 32) {
            Ok(secret) => Ok(Some(JournalKey { secret })),
            Err(PrivateFileError::Missing(_)) => Ok(None),
            Err(other) => Err(JournalError::Key(other)),
        }
    }

    /// Creates the key in `dir` (never replacing one another process created meanwhile: then
    /// that one is loaded).
    pub fn create(dir: &Path) -> Result<JournalKey, JournalError> {
        let mut secret = Zeroizing::new(vec![0u8; 32]);
        OsRng.fill_bytes(&mut secret);
        match secret_file::create_new(dir, KEY_FILE, &secret) {
            Ok(()) => Ok(JournalKey { secret }),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                JournalKey::load(dir)?
                    .ok_or_else(|| JournalError::Io(std::io::Error::other("journal.key vanished")))
            }
            Err(error) => Err(JournalError::Io(error)),
        }
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this never falls back (the fallback only keeps the
        // code free of panics).
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        mac.update(label);
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// The keyed hash of an entry as it should be.
    pub fn entry_hash(&self, entry: &Entry) -> String {
        let canonical = canonical(entry);
        let mac = self.mac(
            ENTRY_LABEL,
            &[entry.prev_hash.as_bytes(), b"\n", canonical.as_bytes()],
        );
        hex::encode(mac.finalize().into_bytes())
    }

    fn head_mac(&self, seq: u64, hash: &str) -> Hmac<Sha256> {
        self.mac(
            HEAD_LABEL,
            &[seq.to_string().as_bytes(), b"\n", hash.as_bytes()],
        )
    }
}

/// `journal.head` as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The newest entry when the head was written (0: the journal was empty).
    pub seq: u64,
    /// That entry's hash (the genesis hash for an empty journal).
    pub hash: String,
    pub mac: String,
}

impl Head {
    pub fn new(key: &JournalKey, seq: u64, hash: &str) -> Head {
        Head {
            seq,
            hash: hash.to_string(),
            mac: hex::encode(key.head_mac(seq, hash).finalize().into_bytes()),
        }
    }

    /// Whether `key` wrote this head (constant-time comparison).
    pub fn verifies(&self, key: &JournalKey) -> bool {
        let Ok(mac) = hex::decode(&self.mac) else {
            return false;
        };
        key.head_mac(self.seq, &self.hash)
            .verify_slice(&mac)
            .is_ok()
    }

    /// The head in `dir`, `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Head>, JournalError> {
        match std::fs::read(dir.join(HEAD_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| {
                JournalError::Untrusted("journal.head is not a head checkpoint".into())
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(JournalError::Io(error)),
        }
    }

    /// Replaces the head in `dir` atomically (temp file, fsync, rename, directory fsync).
    pub fn write(&self, dir: &Path) -> Result<(), JournalError> {
        let mut bytes = serde_json::to_vec(self)
            .map_err(|_| JournalError::Io(std::io::Error::other("cannot encode the head")))?;
        bytes.push(b'\n');
        secret_file::replace(dir, HEAD_FILE, &bytes).map_err(JournalError::Io)
    }
}

/// What a check of the journal found (`ibkr-agent journal verify` prints it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub path: String,
    pub entries: u64,
    pub ok: bool,
    /// The first line (1-based) where the chain breaks (`None` for problems of the whole
    /// journal, such as a cut tail).
    pub broken_at_line: Option<usize>,
    pub problem: Option<String>,
    /// The last line is incomplete (a crash while writing); it is ignored.
    pub torn_tail: bool,
    pub last_hash: String,
    /// Entries are keyed with `journal.key` (false: an unkeyed journal not yet opened by a
    /// keying sidecar).
    pub keyed: bool,
    /// The first keyed entry (1 for a journal keyed from the start).
    pub keyed_from_seq: Option<u64>,
    /// The entry `journal.head` names, when there is a head.
    pub head_seq: Option<u64>,
    /// The journal lacks the entry `journal.head` names, or holds a different one: its tail
    /// was cut or an older copy was put back.
    pub truncated: bool,
}

/// A journal read back and checked.
pub(super) struct Loaded {
    pub entries: Vec<Entry>,
    /// Byte length of the valid prefix (complete, chained lines).
    pub valid_len: u64,
    pub report: VerifyReport,
}

/// Whether one line continues the chain: `Ok(keyed)` or why not.
fn line_problem(
    entry: &Entry,
    report: &VerifyReport,
    key: Option<&JournalKey>,
) -> Result<bool, &'static str> {
    if entry.prev_hash != report.last_hash {
        return Err(
            "prev_hash does not match the previous entry (an entry was removed, reordered or edited)",
        );
    }
    let keyed = key.is_some_and(|key| key.entry_hash(entry) == entry.hash);
    if keyed {
        if report.keyed_from_seq.is_some() && entry.event == KEYED_EVENT {
            return Err("a second chain_keyed entry");
        }
        if report.keyed_from_seq.is_none() && entry.seq > 1 {
            // The first keyed entry after unkeyed ones must seal them.
            let sealed = entry.event == KEYED_EVENT
                && entry.data.get("sealed_seq").and_then(Value::as_u64) == Some(entry.seq - 1)
                && entry.data.get("sealed_hash").and_then(Value::as_str)
                    == Some(entry.prev_hash.as_str());
            if !sealed {
                return Err(
                    "keyed entries begin without a chain_keyed entry sealing the unkeyed ones",
                );
            }
        }
    } else {
        // Unkeyed entries are accepted only before the first keyed one.
        let unkeyed = report.keyed_from_seq.is_none()
            && entry.event != KEYED_EVENT
            && unkeyed_hash(entry) == entry.hash;
        if !unkeyed {
            return Err(if key.is_none() {
                "the entry's hash does not match its content (edited, or keyed and journal.key is missing)"
            } else {
                "the entry's hash does not match its content (edited, or not written with this journal.key)"
            });
        }
    }
    if entry.seq != report.entries + 1 {
        return Err("sequence number out of order");
    }
    Ok(keyed)
}

/// Checks the journal's lines against the key, then against the head. Read only.
pub(super) fn check(
    path: &Path,
    bytes: &[u8],
    key: Option<&JournalKey>,
    head: Option<&Head>,
) -> Loaded {
    let mut report = VerifyReport {
        path: path.display().to_string(),
        ok: true,
        last_hash: GENESIS_HASH.into(),
        ..VerifyReport::default()
    };
    let mut entries = Vec::new();
    let mut offset = 0usize;
    let mut line_no = 0usize;
    let mut valid_len = 0u64;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], true),
            None => (rest, false),
        };
        let parsed: Option<Entry> = serde_json::from_slice(line).ok();
        let checked = match &parsed {
            None => Err("the line is not a journal entry"),
            Some(entry) => line_problem(entry, &report, key),
        };
        if !complete {
            // A torn last line (a crash while appending), even if it happens to parse.
            report.torn_tail = true;
            break;
        }
        let keyed = match checked {
            Ok(keyed) => keyed,
            Err(problem) => {
                report.ok = false;
                report.broken_at_line = Some(line_no);
                report.problem = Some(problem.into());
                break;
            }
        };
        if let Some(entry) = parsed {
            if keyed && report.keyed_from_seq.is_none() {
                report.keyed_from_seq = Some(entry.seq);
            }
            report.entries += 1;
            report.last_hash = entry.hash.clone();
            entries.push(entry);
        }
        offset += line.len() + 1;
        valid_len = offset as u64;
    }
    report.keyed = report.keyed_from_seq.is_some();
    report.head_seq = head.map(|head| head.seq);
    if report.ok
        && let Some(problem) = head_problem(&entries, &mut report, key, head)
    {
        report.ok = false;
        report.problem = Some(problem);
    }
    Loaded {
        entries,
        valid_len,
        report,
    }
}

/// Whether the head checkpoint agrees with the entries.
fn head_problem(
    entries: &[Entry],
    report: &mut VerifyReport,
    key: Option<&JournalKey>,
    head: Option<&Head>,
) -> Option<String> {
    let Some(head) = head else {
        return report.keyed.then(|| {
            "journal.head is missing although the journal has keyed entries, so a cut tail \
             cannot be ruled out"
                .to_string()
        });
    };
    let Some(key) = key else {
        return Some("journal.head exists but journal.key is missing".into());
    };
    if !head.verifies(key) {
        return Some(
            "journal.head does not verify with journal.key (edited, or another key)".into(),
        );
    }
    if head.seq == 0 {
        return (head.hash != GENESIS_HASH)
            .then(|| "journal.head names entry 0 with a hash other than the genesis hash".into());
    }
    let held = usize::try_from(head.seq - 1)
        .ok()
        .and_then(|index| entries.get(index));
    match held {
        None => {
            report.truncated = true;
            Some(format!(
                "the journal ends at entry {} but journal.head names entry {}: its tail was cut \
                 or an older copy was put back",
                entries.len(),
                head.seq
            ))
        }
        Some(entry) if entry.hash != head.hash => {
            report.truncated = true;
            Some(format!(
                "entry {} is not the one journal.head names: an older or different copy of the \
                 journal",
                head.seq
            ))
        }
        Some(_) => None,
    }
}

/// Reads and checks the journal at `path` with the key and head next to it. Read only; a
/// missing journal is an empty one. The head is read before the journal, so a journal being
/// appended to meanwhile is never judged against a newer head than its own content.
pub(super) fn load(
    path: &Path,
) -> Result<(Loaded, Option<JournalKey>, Option<Head>), JournalError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let head = Head::read(dir)?;
    let key = JournalKey::load(dir)?;
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    let loaded = check(path, &bytes, key.as_ref(), head.as_ref());
    Ok((loaded, key, head))
}

#[cfg(test)]
mod tests {
    use super::super::journal::{JOURNAL_FILE, Journal, verify};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A journal of four entries (two attempts) in a fresh directory.
    fn journal() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let journal = Journal::open(&path).unwrap();
        for n in 0..2 {
            let attempt = journal
                .intent(
                    json!({"symbol": "AAPL", "notional": format!("{}", 10 + n)}),
                    n,
                )
                .unwrap();
            journal
                .outcome(attempt, "sent", json!({"order_ids": [n.to_string()]}), n)
                .unwrap();
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn entries(path: &Path) -> Vec<Entry> {
        lines(path)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn write_entries(path: &Path, entries: &[Entry]) {
        let lines: Vec<String> = entries
            .iter()
            .map(|entry| serde_json::to_string(entry).unwrap())
            .collect();
        write_lines(path, &lines);
    }

    /// An entry of event `intent` with empty data after `prev_hash` (hash left empty).
    fn bare_entry(seq: u64, prev_hash: String) -> Entry {
        Entry {
            seq,
            at_ms: 1,
            attempt: seq,
            event: "intent".into(),
            data: json!({}),
            prev_hash,
            hash: String::new(),
        }
    }

    /// Writes an unkeyed journal of `count` entries as the sidecar did before keying.
    fn write_unkeyed(path: &Path, count: u64) {
        let mut prev = GENESIS_HASH.to_string();
        let mut out = Vec::new();
        for seq in 1..=count {
            let mut entry = bare_entry(seq, prev.clone());
            entry.data = json!({"notional": "5", "dry_run": true});
            entry.hash = unkeyed_hash(&entry);
            prev = entry.hash.clone();
            out.push(entry);
        }
        write_entries(path, &out);
    }

    #[test]
    fn a_new_journal_is_keyed_with_a_private_key_and_a_head() {
        let (dir, path) = journal();
        let report = verify(&path).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(
            (report.entries, report.keyed_from_seq, report.head_seq),
            (4, Some(1), Some(4))
        );
        let key = dir.path().join(KEY_FILE);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::metadata(&key).unwrap().len(), 32);
        assert_eq!(
            std::fs::metadata(dir.path().join(HEAD_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // The hashes are keyed: the unkeyed formula does not produce them.
        let entries: Vec<Entry> = lines(&path)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert!(
            entries
                .iter()
                .all(|entry| unkeyed_hash(entry) != entry.hash)
        );
    }

    #[test]
    fn an_edited_entry_breaks_the_chain_even_with_its_hash_recomputed_unkeyed() {
        let (_dir, path) = journal();
        let mut all = lines(&path);
        all[1] = all[1].replace("\"sent\"", "\"rejected\"");
        write_lines(&path, &all);
        let report = verify(&path).unwrap();
        assert_eq!((report.ok, report.broken_at_line), (false, Some(2)));
        assert!(Journal::open(&path).is_err());

        // Whoever can write the file but not read the key cannot re-chain it.
        let (_dir, path) = journal();
        let mut all = entries(&path);
        all[3].event = "rejected".into();
        all[3].hash = unkeyed_hash(&all[3]);
        write_entries(&path, &all);
        let report = verify(&path).unwrap();
        assert_eq!((report.ok, report.broken_at_line), (false, Some(4)));
    }

    #[test]
    fn a_removed_or_reordered_entry_breaks_the_chain() {
        let (_dir, path) = journal();
        let mut all = lines(&path);
        all.remove(1);
        write_lines(&path, &all);
        let report = verify(&path).unwrap();
        assert_eq!((report.ok, report.broken_at_line), (false, Some(2)));

        let (_dir, path) = journal();
        let mut all = lines(&path);
        all.swap(1, 2);
        write_lines(&path, &all);
        let report = verify(&path).unwrap();
        assert_eq!((report.ok, report.broken_at_line), (false, Some(2)));
    }

    #[test]
    fn a_cut_tail_or_an_older_copy_is_detected_by_the_head() {
        let (_dir, path) = journal();
        let mut all = lines(&path);
        all.pop();
        write_lines(&path, &all);
        let report = verify(&path).unwrap();
        assert!(!report.ok && report.truncated, "{report:?}");
        assert_eq!(report.broken_at_line, None);
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::Untrusted(_))
        ));

        // An older copy of the file alone: the head names an entry it does not hold.
        let (dir, path) = journal();
        let older = std::fs::read(&path).unwrap();
        let journal = Journal::open(&path).unwrap();
        journal.intent(json!({"notional": "1"}), 9).unwrap();
        drop(journal);
        std::fs::write(&path, &older).unwrap();
        let report = verify(&path).unwrap();
        assert!(!report.ok && report.truncated, "{report:?}");

        // The same entry count with different content (a fork) is caught too.
        let journal_head = Head::read(dir.path()).unwrap().unwrap();
        let key = JournalKey::load(dir.path()).unwrap().unwrap();
        Head::new(&key, 4, &journal_head.hash)
            .write(dir.path())
            .unwrap();
        let report = verify(&path).unwrap();
        assert!(!report.ok && report.truncated, "{report:?}");
    }

    #[test]
    fn the_head_must_be_there_and_be_ours() {
        let (dir, path) = journal();
        std::fs::remove_file(dir.path().join(HEAD_FILE)).unwrap();
        let report = verify(&path).unwrap();
        assert!(!report.ok, "{report:?}");
        assert!(Journal::open(&path).is_err());

        let (dir, path) = journal();
        let mut head = Head::read(dir.path()).unwrap().unwrap();
        head.seq = 3;
        std::fs::write(
            dir.path().join(HEAD_FILE),
            serde_json::to_vec(&head).unwrap(),
        )
        .unwrap();
        let report = verify(&path).unwrap();
        assert!(!report.ok, "{report:?}");
        assert!(report.problem.unwrap().contains("does not verify"));
    }

    #[test]
    fn a_missing_or_shared_key_is_refused() {
        let (dir, path) = journal();
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(verify(&path), Err(JournalError::Key(_))));
        assert!(matches!(Journal::open(&path), Err(JournalError::Key(_))));

        std::fs::remove_file(&key).unwrap();
        let report = verify(&path).unwrap();
        assert_eq!((report.ok, report.broken_at_line), (false, Some(1)));
        // Never a new key over a keyed journal.
        assert!(Journal::open(&path).is_err());
        assert!(!key.exists());
    }

    #[test]
    fn an_unkeyed_journal_is_verified_then_sealed_and_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        write_unkeyed(&path, 3);
        let report = verify(&path).unwrap();
        assert!(report.ok && !report.keyed, "{report:?}");
        let unkeyed_head = report.last_hash.clone();

        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.last_seq(), 4);
        journal.intent(json!({"notional": "1"}), 2).unwrap();
        drop(journal);
        let marker = entries(&path).remove(3);
        assert_eq!(marker.event, KEYED_EVENT);
        assert_eq!(
            marker.data,
            json!({"sealed_seq": 3, "sealed_hash": unkeyed_head})
        );
        let report = verify(&path).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(
            (report.entries, report.keyed_from_seq, report.head_seq),
            (5, Some(4), Some(5))
        );
        // Reopening keys nothing twice.
        drop(Journal::open(&path).unwrap());
        assert_eq!(lines(&path).len(), 5);

        // The seal covers the unkeyed entries: rewriting one of them consistently breaks the
        // link to the keyed entry.
        let mut all = entries(&path);
        let mut prev = GENESIS_HASH.to_string();
        for entry in all.iter_mut().take(3) {
            entry.data = json!({"notional": "0", "dry_run": true});
            entry.prev_hash = prev;
            entry.hash = unkeyed_hash(entry);
            prev = entry.hash.clone();
        }
        write_entries(&path, &all);
        let report = verify(&path).unwrap();
        assert_eq!((report.ok, report.broken_at_line), (false, Some(4)));
    }

    #[test]
    fn unkeyed_entries_cannot_follow_keyed_ones_or_skip_the_seal() {
        // An unkeyed entry appended after keyed ones.
        let (_dir, path) = journal();
        let mut all = entries(&path);
        let mut forged = bare_entry(5, all[3].hash.clone());
        forged.hash = unkeyed_hash(&forged);
        all.push(forged);
        write_entries(&path, &all);
        let report = verify(&path).unwrap();
        assert_eq!((report.ok, report.broken_at_line), (false, Some(5)));

        // Keyed entries after unkeyed ones without the seal.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        write_unkeyed(&path, 1);
        let key = JournalKey::create(dir.path()).unwrap();
        let mut all = entries(&path);
        let mut keyed = bare_entry(2, all[0].hash.clone());
        keyed.hash = key.entry_hash(&keyed);
        all.push(keyed);
        write_entries(&path, &all);
        let report = verify(&path).unwrap();
        assert_eq!((report.ok, report.broken_at_line), (false, Some(2)));
    }

    #[test]
    fn a_crash_between_an_append_and_the_head_is_not_a_break() {
        let (dir, path) = journal();
        let head_before = std::fs::read(dir.path().join(HEAD_FILE)).unwrap();
        let journal = Journal::open(&path).unwrap();
        journal.intent(json!({"notional": "1"}), 9).unwrap();
        drop(journal);
        // The entry is on disk, the head still names the one before it.
        std::fs::write(dir.path().join(HEAD_FILE), head_before).unwrap();
        let report = verify(&path).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!((report.entries, report.head_seq), (5, Some(4)));
        // Opening brings the head up to date.
        drop(Journal::open(&path).unwrap());
        assert_eq!(verify(&path).unwrap().head_seq, Some(5));
    }

    #[tokio::test]
    async fn each_call_learns_the_last_entry_it_wrote() {
        let (_dir, path) = journal();
        let journal = std::sync::Arc::new(Journal::open(&path).unwrap());
        let (seq, written) = super::super::journal_tap::tapped(async {
            let attempt = journal.intent(json!({}), 1).unwrap();
            journal.outcome(attempt, "dry_run", json!({}), 1).unwrap();
            attempt
        })
        .await;
        let written = written.unwrap();
        assert_eq!(written.seq, seq + 1);
        assert!(journal.holds(&written));
        // Nothing written, nothing reported; a foreign hash is not held.
        let ((), nothing) = super::super::journal_tap::tapped(async {}).await;
        assert_eq!(nothing, None);
        let mut other = written;
        other.hash[0] ^= 1;
        assert!(!journal.holds(&other));
        other.seq = 99;
        assert!(!journal.holds(&other));
    }
}
