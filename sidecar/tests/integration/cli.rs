//! The `ibkr-agent` binary: JSON output, exit codes, file modes.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn ibkr_agent(state_dir: &std::path::Path, args: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env_remove("IBKR_AGENT_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON object on stdout: {stdout}"
    );
    (
        output.status.code().unwrap(),
        serde_json::from_str(lines[0]).unwrap(),
    )
}

#[test]
fn identity_create_json_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "identity",
            "create",
            "--display-name",
            "laptop",
            "--json",
        ],
    );
    assert_eq!(status, 0);
    let object = json.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "display_name",
            "fingerprint",
            "key_file_created",
            "public_key",
            "sidecar_id"
        ]
    );
    assert_eq!(json["key_file_created"], true);
    assert_eq!(json["public_key"].as_str().unwrap().len(), 64);
    assert!(json["sidecar_id"].as_str().unwrap().starts_with("sidecar-"));
    let key_mode = std::fs::metadata(state.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "identity",
            "create",
            "--display-name",
            "laptop",
            "--json",
        ],
    );
    assert_eq!(status, 3);
    assert_eq!(json["error"]["code"], "IDENTITY_EXISTS");
    assert!(json["error"]["user_action"].as_str().is_some());
}

#[test]
fn external_public_key_and_run_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let key = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    let (status, json) = ibkr_agent(
        dir.path(),
        &[
            "sidecar",
            "identity",
            "create",
            "--display-name",
            "ops",
            "--sidecar-id",
            "sidecar-example",
            "--public-key",
            key,
            "--json",
        ],
    );
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["sidecar_id"], "sidecar-example");
    assert_eq!(json["key_file_created"], false);
    assert!(!dir.path().join("identity.key").exists());

    // No --config and no <state_dir>/sidecar.yaml: a configuration error (exit 2) that says
    // what to do.
    let (status, json) = ibkr_agent(dir.path(), &["sidecar", "run", "--json"]);
    assert_eq!(status, 2);
    assert_eq!(json["error"]["code"], "CONFIG_INVALID");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--config") && message.contains("sidecar pair"),
        "{message}"
    );

    // A configuration that switches the relay off is a configuration error (exit 2).
    let config = dir.path().join("run.yaml");
    std::fs::write(&config, "sidecar:\n  enabled: false\n").unwrap();
    let (status, json) = ibkr_agent(
        dir.path(),
        &[
            "sidecar",
            "run",
            "--config",
            config.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(status, 2);
    assert_eq!(json["error"]["code"], "CONFIG_SIDECAR_FORBIDDEN");

    // A valid configuration (in the state directory), but this identity has no secret key: a
    // refusal (exit 3).
    std::fs::write(
        dir.path().join("sidecar.yaml"),
        "sidecar:\n  enabled: true\n  remote_relay_url: ws://127.0.0.1:9/relay\n  \
         local_client_portal_base_url: https://localhost:5000/v1/api\n  \
         heartbeat_interval_seconds: 15\n  heartbeat_timeout_seconds: 45\n\
         safety:\n  sidecar_enabled: true\n",
    )
    .unwrap();
    let (status, json) = ibkr_agent(dir.path(), &["sidecar", "run", "--json"]);
    assert_eq!(status, 3, "{json}");
    assert_eq!(json["error"]["code"], "IDENTITY_MISSING");
}

#[test]
fn pair_refuses_plain_http_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _) = ibkr_agent(
        dir.path(),
        &[
            "sidecar",
            "identity",
            "create",
            "--display-name",
            "laptop",
            "--json",
        ],
    );
    assert_eq!(status, 0);
    let (status, json) = ibkr_agent(
        dir.path(),
        &[
            "sidecar",
            "pair",
            "--gateway",
            "http://gateway.example.com",
            "--code",
            "K7QM-3XW9-PT4R",
            "--json",
        ],
    );
    assert_eq!(status, 2);
    assert_eq!(json["error"]["code"], "CLI_ARGUMENT_INVALID");
}

#[test]
fn orders_pending_and_settle_from_the_command_line() {
    use ibkr_agent::trading::journal::Journal;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let attempt = {
        let journal = Journal::open_in(&state).unwrap();
        let attempt = journal
            .intent(
                serde_json::json!({"tool": "ibkr_buy", "symbol": "AAPL", "side": "BUY",
                    "role": "entry", "conid": 265598, "fingerprint": "fp-1", "notional": "50",
                    "dry_run": false, "idempotency_key": null, "coid": "ia-cli-1"}),
                1,
            )
            .unwrap();
        journal
            .outcome(
                attempt,
                "indeterminate",
                serde_json::json!({"reason": "503"}),
                2,
            )
            .unwrap();
        attempt
    };

    let (status, json) = ibkr_agent(&state, &["sidecar", "orders", "pending", "--json"]);
    assert_eq!(status, 0);
    let pending = json["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["attempt_id"], attempt);
    assert_eq!(pending[0]["client_order_id"], "ia-cli-1");
    assert_eq!(pending[0]["symbol"], "AAPL");

    // Neither or both of --placed / --not-placed: a usage error, nothing journaled.
    let output = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(&state)
        .args(["sidecar", "orders", "settle", "--attempt", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));

    let attempt_text = attempt.to_string();
    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "orders",
            "settle",
            "--attempt",
            &attempt_text,
            "--not-placed",
            "--note",
            "checked in TWS: no such order",
            "--json",
        ],
    );
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["status"], "settled_not_placed");

    let (status, json) = ibkr_agent(&state, &["sidecar", "orders", "pending", "--json"]);
    assert_eq!(status, 0);
    assert_eq!(json["pending"], serde_json::json!([]));

    // A second settle of the same attempt is refused: its outcome is known now.
    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "orders",
            "settle",
            "--attempt",
            &attempt_text,
            "--placed",
            "--json",
        ],
    );
    assert_eq!(status, 3);
    assert_eq!(json["error"]["code"], "ORDER_NOT_FOUND", "{json}");

    // The journal still verifies, with the decision in it.
    let (status, json) = ibkr_agent(&state, &["journal", "verify", "--json"]);
    assert_eq!(status, 0);
    assert_eq!(json["ok"], true);
    assert_eq!(json["entries"], 3);
}

/// A state directory as `sidecar pair` leaves it: an identity and a pairing that pins the
/// gateway's key, with the read-only default grant.
fn paired_state(dir: &std::path::Path) -> std::path::PathBuf {
    use ibkr_agent::state::{IdentityRecord, PairingRecord};
    use protocol::identity::StaticKeypair;
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let store = ibkr_agent::StateStore::open(&state).unwrap();
    store
        .insert_identity(&IdentityRecord {
            sidecar_id: "sidecar-cli".into(),
            display_name: "laptop".into(),
            public_key: StaticKeypair::from_secret_bytes([4; 32]).public(),
            has_secret: false,
            created_at: 1,
        })
        .unwrap();
    store
        .upsert_pairing(&PairingRecord {
            remote_instance_id: "gw-1".into(),
            sidecar_id: "sidecar-cli".into(),
            user_id: "user-1".into(),
            gateway_url: Some("https://gateway.example".into()),
            relay_url: Some("wss://gateway.example/relay".into()),
            gateway_public_key: Some(StaticKeypair::from_secret_bytes([5; 32]).public()),
            gateway_pairing_id: Some([9; 16]),
            local_scopes: shared_safety::scope::ScopeSet::read_only_default(),
            created_at: 2,
            expires_at: None,
            revoked_at: None,
        })
        .unwrap();
    state
}

fn local_scopes(json: &serde_json::Value) -> Vec<String> {
    json["local_scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|scope| scope.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pairing_grant_and_revoke_scope_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = paired_state(dir.path());

    // The documented grant, on the pairing `sidecar pair` made, without naming it.
    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "pairing",
            "grant",
            "--scope",
            "ibkr:orders:preview,ibkr:orders:write",
            "--json",
        ],
    );
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["remote_instance_id"], "gw-1");
    assert_eq!(
        json["added"],
        serde_json::json!(["ibkr:orders:preview", "ibkr:orders:write"])
    );
    assert!(local_scopes(&json).contains(&"ibkr:orders:write".to_string()));

    // `status` shows the grant.
    let (status, json) = ibkr_agent(&state, &["sidecar", "status", "--json"]);
    assert_eq!(status, 0);
    let pairing = &json["pairings"][0];
    assert!(local_scopes(pairing).contains(&"ibkr:orders:write".to_string()));

    // Live without its confirmation: a flag error naming the flag, exit 2, nothing changed.
    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "pairing",
            "grant",
            "--scope",
            "ibkr:orders:live",
            "--json",
        ],
    );
    assert_eq!(status, 2);
    assert_eq!(json["error"]["code"], "CLI_ARGUMENT_INVALID");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--confirm-live")
    );
    assert!(
        !json["error"]["user_action"]
            .as_str()
            .unwrap()
            .contains("configuration file")
    );
    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "pairing",
            "grant",
            "--scope",
            "ibkr:orders:live",
            "--confirm-live",
            "--json",
        ],
    );
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["added"], serde_json::json!(["ibkr:orders:live"]));

    // Taking write back takes live with it.
    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "pairing",
            "revoke-scope",
            "--scope",
            "ibkr:orders:write",
            "--json",
        ],
    );
    assert_eq!(status, 0, "{json}");
    assert_eq!(
        json["removed"],
        serde_json::json!(["ibkr:orders:live", "ibkr:orders:write"])
    );
    let scopes = local_scopes(&json);
    assert!(scopes.contains(&"ibkr:orders:preview".to_string()));
    assert!(
        !scopes
            .iter()
            .any(|scope| scope.starts_with("ibkr:orders:w"))
    );

    // An unknown pairing named explicitly.
    let (status, json) = ibkr_agent(
        &state,
        &[
            "sidecar",
            "pairing",
            "grant",
            "--scope",
            "ibkr:orders:write",
            "--remote-instance-id",
            "gw-2",
            "--sidecar-id",
            "sidecar-cli",
            "--json",
        ],
    );
    assert_eq!(status, 3);
    assert_eq!(json["error"]["code"], "SIDECAR_PAIRING_REQUIRED");
}

#[test]
fn pair_checks_its_scopes_before_it_spends_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A gateway that does not exist: had the code been sent, this would be a network error.
    for (scope, expected) in [
        ("ibkr:everything", "not a known scope"),
        ("ibkr:orders:live", "--confirm-live"),
    ] {
        let (status, json) = ibkr_agent(
            &state,
            &[
                "sidecar",
                "pair",
                "--gateway",
                "http://127.0.0.1:9",
                "--code",
                "K7QM-3XW9-PT4R",
                "--scope",
                scope,
                "--json",
            ],
        );
        assert_eq!(status, 2, "{json}");
        assert_eq!(json["error"]["code"], "CLI_ARGUMENT_INVALID");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{json}"
        );
    }
}

/// Under a service manager stderr is a pipe into the journal or a log file: the daemon's log
/// lines carry no terminal colour codes there.
#[tokio::test]
async fn daemon_logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    use crate::common::{FakeGateway, dead_cpgw_url, provision};
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    provision(
        dir.path(),
        &gateway,
        shared_safety::scope::ScopeSet::read_only_default(),
    );
    std::fs::write(
        dir.path().join("sidecar.yaml"),
        format!(
            "sidecar:\n  enabled: true\n  remote_relay_url: {}\n  \
             local_client_portal_base_url: {}\n  heartbeat_interval_seconds: 15\n  \
             heartbeat_timeout_seconds: 45\nsafety:\n  sidecar_enabled: true\n",
            gateway.relay_url(),
            dead_cpgw_url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["sidecar", "run"])
        .env_remove("IBKR_AGENT_HOME")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !seen
        .iter()
        .any(|line: &String| line.contains("sidecar starting"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen.iter().any(|line| line.contains("sidecar starting")),
        "the daemon did not log its start: {seen:?}"
    );
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
    }
}
