//! The keyed audit chain through the real `ibkr-gateway audit verify` and `audit reseal`
//! binaries: a trail written by the audit log, then each kind of tampering done to the
//! database directly (as someone with the file but not the secret could), each caught with
//! exit 3 and a clear report; retention is told apart from a removed prefix.

use crate::common::*;
use ibkr_gateway::GatewayConfiguration;
use ibkr_gateway::audit::AuditKey;
use ibkr_gateway::audit::log::{AuditLog, AuditRecord};
use serde_json::Value;
use std::path::{Path, PathBuf};

struct Trail {
    _dir: tempfile::TempDir,
    state_dir: PathBuf,
    config_file: PathBuf,
    config: GatewayConfiguration,
}

fn record(n: i64) -> AuditRecord {
    AuditRecord {
        time_ms: n,
        subject: "alice".into(),
        tool: "ibkr_buy".into(),
        scope: Some("ibkr:orders:write".into()),
        outcome: "ok".into(),
        latency_ms: 2,
        ..AuditRecord::default()
    }
}

impl Trail {
    /// A state directory whose audit table holds six chained records.
    fn new() -> Trail {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let config = dev_config("http://127.0.0.1:9", &state_dir);
        let config_file = write_config(dir.path(), &config);
        let trail = Trail {
            _dir: dir,
            state_dir,
            config_file,
            config,
        };
        trail.append(&(1..=6).map(record).collect::<Vec<_>>());
        trail
    }

    fn key(&self) -> AuditKey {
        AuditKey::load(
            &self.config.remote_mcp.token_id_hmac_secret_env,
            &self.state_dir,
        )
        .unwrap()
        .0
    }

    fn log(&self) -> AuditLog {
        AuditLog::open(
            &ibkr_gateway::store::SqliteStore::open(&self.state_dir).unwrap(),
            &self.key(),
        )
        .unwrap()
    }

    fn append(&self, records: &[AuditRecord]) {
        self.log().append(records).unwrap();
    }

    fn sql(&self, statements: &str) {
        rusqlite::Connection::open(self.state_dir.join("gateway.sqlite3"))
            .unwrap()
            .execute_batch(statements)
            .unwrap();
    }

    async fn cli(&self, command: &str, json: bool) -> (i32, String, String) {
        let mut args = vec![
            "audit".into(),
            command.into(),
            "--config".into(),
            self.config_file.clone().into_os_string(),
        ];
        if json {
            args.push("--json".into());
        }
        let output = run_cli(args).await;
        (
            output.status.code().unwrap(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    }

    async fn verify(&self) -> (i32, Value) {
        let (status, stdout, _) = self.cli("verify", true).await;
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "one JSON object: {stdout}");
        (status, serde_json::from_str(lines[0]).unwrap())
    }

    async fn assert_broken(&self, broken_at_id: Value, truncated: bool, problem: &str) {
        let (status, report) = self.verify().await;
        assert_eq!(status, 3, "{report}");
        assert_eq!(report["ok"], false, "{report}");
        assert_eq!(report["broken_at_id"], broken_at_id, "{report}");
        assert_eq!(report["truncated"], truncated, "{report}");
        assert!(
            report["problem"].as_str().unwrap().contains(problem),
            "{report}"
        );
        let (status, stdout, stderr) = self.cli("verify", false).await;
        assert_eq!(status, 3);
        assert!(stdout.starts_with("Audit trail BROKEN"), "{stdout}");
        assert!(stderr.contains(problem), "{stderr}");
        assert!(stderr.contains("what to do"), "{stderr}");
    }
}

/// Copies the database consistently (WAL included) to `to`.
fn backup(state_dir: &Path, to: &Path) {
    rusqlite::Connection::open(state_dir.join("gateway.sqlite3"))
        .unwrap()
        .execute("VACUUM INTO ?1", [to.to_str().unwrap()])
        .unwrap();
}

/// Puts a copy made by [`backup`] back in place of the database.
fn restore(state_dir: &Path, from: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(state_dir.join(format!("gateway.sqlite3{suffix}")));
    }
    std::fs::copy(from, state_dir.join("gateway.sqlite3")).unwrap();
}

#[tokio::test]
async fn an_intact_trail_verifies() {
    let trail = Trail::new();
    let (status, report) = trail.verify().await;
    assert_eq!(status, 0, "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], 6);
    assert_eq!(report["chain_start"], 1);
    assert_eq!(report["head_tip"], 6);
    let (status, stdout, _) = trail.cli("verify", false).await;
    assert_eq!(status, 0);
    assert!(stdout.starts_with("Audit trail OK: 6 records"), "{stdout}");
}

#[tokio::test]
async fn audit_verify_fails_on_an_edited_record() {
    let trail = Trail::new();
    trail.sql("UPDATE audit SET outcome = 'ORDER_REJECTED' WHERE id = 3;");
    trail
        .assert_broken(Value::from(3), false, "does not match its content")
        .await;
}

#[tokio::test]
async fn audit_verify_fails_on_a_removed_record() {
    let trail = Trail::new();
    trail.sql("DELETE FROM audit WHERE id = 3;");
    trail
        .assert_broken(Value::from(4), false, "records 3 to 3 are missing")
        .await;
}

#[tokio::test]
async fn audit_verify_fails_on_reordered_records() {
    let trail = Trail::new();
    trail.sql(
        "UPDATE audit SET id = 100 WHERE id = 3;
         UPDATE audit SET id = 3 WHERE id = 4;
         UPDATE audit SET id = 4 WHERE id = 100;",
    );
    trail
        .assert_broken(
            Value::from(3),
            false,
            "does not follow the record before it",
        )
        .await;
}

#[tokio::test]
async fn audit_verify_fails_on_a_cut_tail() {
    let trail = Trail::new();
    trail.sql("DELETE FROM audit WHERE id >= 5;");
    trail.assert_broken(Value::Null, true, "tail was cut").await;
}

#[tokio::test]
async fn audit_verify_fails_on_an_older_copy_of_the_database() {
    let trail = Trail::new();
    let copy = trail.state_dir.join("older.sqlite3");
    backup(&trail.state_dir, &copy);
    trail.append(&[record(7)]);
    restore(&trail.state_dir, &copy);
    trail.assert_broken(Value::Null, true, "older copy").await;
}

#[tokio::test]
async fn retention_is_told_apart_from_a_removed_prefix() {
    // A prefix deleted by hand: no prune point covers it.
    let trail = Trail::new();
    trail.sql("DELETE FROM audit WHERE id <= 2;");
    trail
        .assert_broken(Value::from(3), false, "missing from the start")
        .await;

    // The same prefix deleted by retention verifies.
    let trail = Trail::new();
    let mut log = trail.log();
    assert_eq!(log.begin_prune(3).unwrap(), 2);
    while log.prune_batch(2).unwrap() > 0 {}
    let (status, report) = trail.verify().await;
    assert_eq!(status, 0, "{report}");
    assert_eq!(
        (report["first_id"].clone(), report["pruned_through"].clone()),
        (Value::from(3), Value::from(2))
    );
    // ... but not one record more.
    trail.sql("DELETE FROM audit WHERE id = 3;");
    trail
        .assert_broken(Value::from(4), false, "missing from the start")
        .await;
}

#[tokio::test]
async fn a_broken_trail_is_resealed_once_investigated_and_the_break_stays_on_record() {
    let trail = Trail::new();
    let (status, _, stderr) = trail.cli("reseal", false).await;
    assert_ne!(status, 0, "an intact trail is not resealed");
    assert!(stderr.contains("nothing to reseal"), "{stderr}");

    trail.sql("DELETE FROM audit WHERE id >= 5;");
    // The writer refuses to continue a chain whose tail is gone.
    let mut log = trail.log();
    assert!(log.broken().unwrap().contains("lacks record 6"));
    assert!(log.append(&[record(9)]).is_err());
    drop(log);

    let (status, stdout, stderr) = trail.cli("reseal", true).await;
    assert_eq!(status, 0, "{stderr}");
    let resealed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(resealed["marker_id"], 5);
    assert_eq!(resealed["continued"], true);
    let (status, report) = trail.verify().await;
    assert_eq!(status, 0, "{report}");
    assert_eq!(report["reseals"][0]["id"], 5);
    let note = report["reseals"][0]["note"].as_str().unwrap();
    assert!(note.contains("record 6"), "{note}");
    let (_, stdout, _) = trail.cli("verify", false).await;
    assert!(
        stdout.contains("resealed by an operator at record 5"),
        "{stdout}"
    );

    // The writer carries on after the operator record.
    trail.append(&[record(10)]);
    let (status, report) = trail.verify().await;
    assert_eq!((status, report["head_tip"].clone()), (0, Value::from(6)));
}

/// A gateway with a short audit ack timeout, a fake sidecar paired for alice that answers
/// every call (order tools with a journal entry), and a token for both kinds of tools.
struct Running {
    _dir: tempfile::TempDir,
    _issuer: TestIssuer,
    handle: ibkr_gateway::GatewayHandle,
    state_dir: PathBuf,
    key: protocol::identity::StaticKeypair,
    seen: tokio::sync::mpsc::UnboundedReceiver<protocol::frame::Frame>,
    client: McpClient,
    /// The anchor the first handshake named.
    first_anchor: Option<protocol::envelope::JournalRef>,
}

/// The journal entry the fake sidecar reports for every order call.
const WRITTEN: protocol::envelope::JournalRef = protocol::envelope::JournalRef {
    seq: 7,
    hash: [0x7a; 32],
};

impl Running {
    async fn start() -> Running {
        let issuer = TestIssuer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let mut config = dev_config(&issuer.url(), &state_dir);
        config.audit.ack_timeout_ms = 300;
        let handle = ibkr_gateway::start(config).await.unwrap();
        let (key, _) = pair(&handle, "alice", "laptop-1").await;
        let mut events = handle.subscribe_sessions();
        let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
        registered_sessions(&mut events, 1).await;
        let first_anchor = sidecar.server_hello.journal_anchor;
        let seen = scripted_sidecar(sidecar, |request| {
            let written = (request.tool_name == "ibkr_buy").then_some(WRITTEN);
            vec![protocol::frame::Frame::Response(
                protocol::envelope::RelayResponse {
                    journal: written,
                    request_id: request.request_id,
                    outcome: protocol::envelope::Outcome::Result {
                        json: serde_json::json!({"status": "dry_run"}).to_string(),
                    },
                },
            )]
        });
        let url = handle.mcp_url();
        let token = issuer.token("alice", &url, &["ibkr:accounts:read", "ibkr:orders:write"]);
        let mut client = McpClient::new(&url, &token);
        client.initialize().await;
        Running {
            _dir: dir,
            _issuer: issuer,
            handle,
            state_dir,
            key,
            seen,
            client,
            first_anchor,
        }
    }

    fn metric(&self, name: &str) -> u64 {
        let text = self.handle.metrics_text();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    }

    async fn next_tool_at_the_sidecar(&mut self) -> String {
        match next_seen(&mut self.seen).await {
            protocol::frame::Frame::Request(request) => request.tool_name,
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

fn buy() -> Value {
    serde_json::json!({"symbol": "AAPL", "cash_amount": "5"})
}

#[tokio::test]
async fn an_order_call_is_refused_unforwarded_while_the_audit_is_blocked_and_a_read_proceeds() {
    let mut running = Running::start().await;
    // Another connection holds the database's write lock for longer than the ack timeout.
    let holder = rusqlite::Connection::open(running.state_dir.join("gateway.sqlite3")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let refused = call(&mut running.client, "ibkr_buy", buy()).await;
    assert_eq!(error_code(&refused), "AUDIT_UNAVAILABLE");
    let error = &refused["result"]["structuredContent"]["error"];
    assert_eq!(error["retryable"], true, "{refused}");
    assert_eq!(running.metric("ibkr_gateway_audit_refused_total"), 1);

    let read = call(
        &mut running.client,
        "ibkr_accounts_list",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(read["result"]["isError"], false, "{read}");
    // The first request the sidecar ever saw is the read: the order call never left.
    assert_eq!(
        running.next_tool_at_the_sidecar().await,
        "ibkr_accounts_list"
    );
    // The read's record could not be stored either: lost, and counted.
    assert!(running.handle.flush_audit().await);
    assert!(running.metric("ibkr_gateway_audit_dropped_total") >= 1);

    holder.execute_batch("ROLLBACK").unwrap();
    let placed = call(&mut running.client, "ibkr_buy", buy()).await;
    assert_eq!(placed["result"]["isError"], false, "{placed}");
    assert_eq!(running.next_tool_at_the_sidecar().await, "ibkr_buy");
    assert!(running.handle.flush_audit().await);
    let records = ibkr_gateway::audit::log::tail(
        &ibkr_gateway::store::SqliteStore::open(&running.state_dir).unwrap(),
        10,
    )
    .await
    .unwrap();
    let outcomes: Vec<(&str, &str)> = records
        .iter()
        .map(|stored| (stored.record.tool.as_str(), stored.record.outcome.as_str()))
        .collect();
    // Nothing of the blocked time reached the table: no record is stored late.
    assert_eq!(outcomes, [("ibkr_buy", "forwarding"), ("ibkr_buy", "ok")]);
    running.handle.shutdown().await;
}

#[tokio::test]
async fn an_order_calls_journal_entry_is_audited_and_sent_back_as_the_anchor_at_the_next_handshake()
{
    let mut running = Running::start().await;
    assert_eq!(running.first_anchor, None, "no order call yet, no anchor");
    let placed = call(&mut running.client, "ibkr_buy", buy()).await;
    assert_eq!(placed["result"]["isError"], false, "{placed}");
    assert!(running.handle.flush_audit().await);
    let records = ibkr_gateway::audit::log::tail(
        &ibkr_gateway::store::SqliteStore::open(&running.state_dir).unwrap(),
        2,
    )
    .await
    .unwrap();
    let pairing_id = records[1].record.pairing_id.clone().unwrap();
    assert_eq!(records[0].record.outcome, "forwarding");
    assert_eq!(records[0].record.journal_seq, None);
    assert_eq!(records[1].record.journal_seq, Some(7));
    assert_eq!(
        records[1].record.journal_hash.as_deref(),
        Some(hex::encode([0x7a; 32]).as_str())
    );
    assert_eq!(
        records[0].record.pairing_id.as_deref(),
        Some(pairing_id.as_str())
    );

    let next = FakeSidecar::connect(&running.handle, &running.key, "laptop-1").await;
    assert_eq!(next.server_hello.journal_anchor, Some(WRITTEN));
    assert_eq!(hex::encode(next.server_hello.pairing_id), pairing_id);
    running.handle.shutdown().await;
}

#[tokio::test]
async fn a_trail_cut_under_a_running_gateway_stops_order_calls_until_an_operator_acts() {
    let mut running = Running::start().await;
    let placed = call(&mut running.client, "ibkr_buy", buy()).await;
    assert_eq!(placed["result"]["isError"], false, "{placed}");
    assert!(running.handle.flush_audit().await);
    rusqlite::Connection::open(running.state_dir.join("gateway.sqlite3"))
        .unwrap()
        .execute_batch("DELETE FROM audit WHERE id = (SELECT MAX(id) FROM audit);")
        .unwrap();

    // The writer notices at its next write: the call whose record that is gets refused, and
    // so does every later order call, while reads go on.
    let refused = call(&mut running.client, "ibkr_buy", buy()).await;
    assert_eq!(error_code(&refused), "AUDIT_UNAVAILABLE");
    let refused = call(
        &mut running.client,
        "ibkr_order_cancel",
        serde_json::json!({"order_id": "1"}),
    )
    .await;
    assert_eq!(error_code(&refused), "AUDIT_UNAVAILABLE");
    let read = call(
        &mut running.client,
        "ibkr_accounts_list",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(read["result"]["isError"], false, "{read}");
    assert_eq!(running.next_tool_at_the_sidecar().await, "ibkr_buy");
    assert_eq!(
        running.next_tool_at_the_sidecar().await,
        "ibkr_accounts_list"
    );
    assert_eq!(running.metric("ibkr_gateway_audit_refused_total"), 2);

    let config_file = running.state_dir.parent().unwrap().join("gateway.yaml");
    std::fs::write(
        &config_file,
        serde_yaml_ng::to_string(&dev_config("http://127.0.0.1:9", &running.state_dir)).unwrap(),
    )
    .unwrap();
    let output = run_cli(vec![
        "audit".into(),
        "verify".into(),
        "--config".into(),
        config_file.into_os_string(),
        "--json".into(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["truncated"], true, "{report}");
    running.handle.shutdown().await;
}
