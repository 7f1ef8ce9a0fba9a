//! `ibkr-agent journal verify` as a person or a script runs it: one journal written by the
//! library, then each kind of tampering on a copy, each caught with a clear report and a
//! non-zero exit (3, `JOURNAL_ERROR`), with exactly one JSON object on stdout.

use ibkr_agent::trading::journal::{JOURNAL_FILE, Journal};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn verify(state_dir: &Path, json: bool) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"));
    command
        .arg("--state-dir")
        .arg(state_dir)
        .args(["journal", "verify"])
        .env_remove("IBKR_AGENT_HOME");
    if json {
        command.arg("--json");
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn verify_json(state_dir: &Path) -> (i32, Value) {
    let (status, stdout, _) = verify(state_dir, true);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON object: {stdout}");
    (status, serde_json::from_str(lines[0]).unwrap())
}

/// A state directory with a journal of six entries (three attempts).
fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join(JOURNAL_FILE)).unwrap();
    for n in 0..3 {
        let attempt = journal
            .intent(json!({"symbol": "AAPL", "notional": "25"}), n)
            .unwrap();
        journal
            .outcome(attempt, "sent", json!({"order_ids": [n.to_string()]}), n)
            .unwrap();
    }
    dir
}

fn rewrite(dir: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let path = dir.join(JOURNAL_FILE);
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    change(&mut lines);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

fn assert_broken(dir: &Path, broken_at_line: Value, truncated: bool, problem: &str) {
    let (status, report) = verify_json(dir);
    assert_eq!(status, 3, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["broken_at_line"], broken_at_line, "{report}");
    assert_eq!(report["truncated"], truncated, "{report}");
    assert!(
        report["problem"].as_str().unwrap().contains(problem),
        "{report}"
    );
    assert_eq!(report["error"]["code"], "JOURNAL_ERROR", "{report}");
    // People get the same verdict, with the problem on stderr.
    let (status, stdout, stderr) = verify(dir, false);
    assert_eq!(status, 3);
    assert!(stdout.contains("BROKEN"), "{stdout}");
    assert!(stderr.contains(problem), "{stderr}");
}

#[test]
fn an_intact_journal_verifies() {
    let dir = state_dir();
    let (status, report) = verify_json(dir.path());
    assert_eq!(status, 0, "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["entries"], 6);
    assert_eq!(report["keyed"], true);
    assert_eq!(report["keyed_from_seq"], 1);
    assert_eq!(report["head_seq"], 6);
    assert_eq!(report["truncated"], false);
    // The JSON never carries a local path.
    assert!(report.get("path").is_none());
    let (status, stdout, _) = verify(dir.path(), false);
    assert_eq!(status, 0);
    assert!(stdout.starts_with("Journal OK: 6 entries"), "{stdout}");
}

#[test]
fn journal_verify_fails_on_an_edited_entry() {
    let dir = state_dir();
    rewrite(dir.path(), |lines| {
        lines[2] = lines[2].replace("\"25\"", "\"2\"");
    });
    assert_broken(dir.path(), json!(3), false, "does not match its content");
}

#[test]
fn journal_verify_fails_on_a_removed_entry() {
    let dir = state_dir();
    rewrite(dir.path(), |lines| {
        lines.remove(2);
    });
    assert_broken(dir.path(), json!(3), false, "prev_hash");
}

#[test]
fn journal_verify_fails_on_reordered_entries() {
    let dir = state_dir();
    rewrite(dir.path(), |lines| lines.swap(3, 4));
    assert_broken(dir.path(), json!(4), false, "prev_hash");
}

#[test]
fn journal_verify_fails_on_a_cut_tail() {
    let dir = state_dir();
    rewrite(dir.path(), |lines| lines.truncate(4));
    assert_broken(dir.path(), Value::Null, true, "tail was cut");
}

#[test]
fn journal_verify_fails_on_an_older_copy_of_the_journal() {
    let dir = state_dir();
    let path = dir.path().join(JOURNAL_FILE);
    let older = std::fs::read(&path).unwrap();
    let journal = Journal::open(&path).unwrap();
    journal.intent(json!({"notional": "1"}), 7).unwrap();
    drop(journal);
    std::fs::write(&path, older).unwrap();
    assert_broken(dir.path(), Value::Null, true, "older copy");
}
