//! The relay primitives through the real `ibkr-agent` binary: the seed's typical local flow
//! verbatim, the refusals of `relay accept`, the listings, and the CPGW probe against a fake
//! CPGW on loopback.

use crate::common::{FakeCpgw, Login, dead_cpgw_url};
use ibkr_agent::clock::now_unix_seconds;
use ibkr_agent::state::StateStore;
use protocol::identity::StaticKeypair;
use rand_core::OsRng;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

/// The "Typical local flow" of the seed, character for character (line continuations
/// included); only `<public-key>` is replaced by a real key.
const SEED_FLOW: &str = r#"ibkr-agent sidecar identity create --public-key <public-key> --display-name laptop --json
ibkr-agent sidecar pairing create \
--remote-instance-id remote-1 \
--sidecar-id sidecar-example \
--user-id local-user \
--ttl-seconds 300 \
--json
ibkr-agent sidecar session create \
--remote-instance-id remote-1 \
--sidecar-id sidecar-example \
--ttl-seconds 300 \
--json
ibkr-agent sidecar relay accept \
--remote-instance-id remote-1 \
--sidecar-id sidecar-example \
--tool-name ibkr_accounts_list \
--scope ibkr:accounts:read \
--payload-json '{}' \
--json"#;

/// Splits the flow into its four commands (a line not ending in `\` ends a command).
fn seed_commands(public_key: &str) -> Vec<String> {
    let text = SEED_FLOW.replace("<public-key>", public_key);
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        current.push_str(line);
        current.push('\n');
        if !line.ends_with('\\') {
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

/// Runs one shell command line with `ibkr-agent` on PATH and `IBKR_AGENT_HOME` set.
fn shell(home: &Path, bin_dir: &Path, line: &str) -> (i32, String) {
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(line)
        .env("PATH", path)
        .env("IBKR_AGENT_HOME", home)
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

fn one_json(stdout: &str) -> Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON object on stdout: {stdout}"
    );
    serde_json::from_str(lines[0]).unwrap()
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort_unstable();
    keys
}

fn sorted(fields: &[&str]) -> Vec<String> {
    let mut fields: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
    fields.sort_unstable();
    fields
}

const PAIRING_FIELDS: &[&str] = &[
    "remote_instance_id",
    "sidecar_id",
    "user_id",
    "status",
    "local_scopes",
    "created_at",
    "expires_at",
    "revoked_at",
    "gateway_fingerprint",
    "gateway_url",
    "relay_url",
];

const SESSION_FIELDS: &[&str] = &[
    "session_id",
    "remote_instance_id",
    "sidecar_id",
    "status",
    "created_at",
    "expires_at",
    "last_heartbeat_at",
    "closed_at",
];

const FORWARDED_FIELDS: &[&str] = &[
    "forwarded",
    "request_id",
    "tool_name",
    "scope",
    "token_scopes",
    "payload_hash",
    "canonical_payload",
    "session_id",
    "remote_instance_id",
    "sidecar_id",
];

/// `ibkr-agent --state-dir <dir> <args...>`: exit status and the one JSON object.
fn agent(state_dir: &Path, args: &[&str]) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env_remove("IBKR_AGENT_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    (output.status.code().unwrap(), one_json(&stdout))
}

/// The seed flow's first three steps (through the binary) in `dir`.
fn paired_with_session(dir: &Path) -> String {
    let key = StaticKeypair::generate(&mut OsRng).public().to_hex();
    let (status, _) = agent(
        dir,
        &[
            "sidecar",
            "identity",
            "create",
            "--public-key",
            &key,
            "--display-name",
            "laptop",
            "--json",
        ],
    );
    assert_eq!(status, 0);
    let (status, _) = agent(
        dir,
        &[
            "sidecar",
            "pairing",
            "create",
            "--remote-instance-id",
            "remote-1",
            "--sidecar-id",
            "sidecar-example",
            "--user-id",
            "local-user",
            "--ttl-seconds",
            "300",
            "--json",
        ],
    );
    assert_eq!(status, 0);
    let (status, session) = agent(
        dir,
        &[
            "sidecar",
            "session",
            "create",
            "--remote-instance-id",
            "remote-1",
            "--sidecar-id",
            "sidecar-example",
            "--ttl-seconds",
            "300",
            "--json",
        ],
    );
    assert_eq!(status, 0);
    session["session_id"].as_str().unwrap().to_string()
}

fn accept_args<'a>(payload: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "sidecar",
        "relay",
        "accept",
        "--remote-instance-id",
        "remote-1",
        "--sidecar-id",
        "sidecar-example",
        "--tool-name",
        "ibkr_accounts_list",
        "--scope",
        "ibkr:accounts:read",
        "--payload-json",
        payload,
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

/// A refusal: exit 3, `"forwarded": false`, the code, and nothing that looks forwarded.
fn assert_refused(status: i32, json: &Value, code: &str) {
    assert_eq!(status, 3, "{json}");
    assert_eq!(json["forwarded"], false, "{json}");
    assert_eq!(json["error"]["code"], code, "{json}");
    for field in ["retryable", "user_action", "message"] {
        assert!(!json["error"][field].is_null(), "{json}");
    }
    for field in [
        "request_id",
        "payload_hash",
        "canonical_payload",
        "session_id",
    ] {
        assert!(json.get(field).is_none(), "{json}");
    }
}

#[test]
fn the_seed_flow_runs_verbatim_on_a_fresh_state_dir() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let bin_dir = root.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ibkr-agent"), bin_dir.join("ibkr-agent"))
        .unwrap();
    let public_key = StaticKeypair::generate(&mut OsRng).public().to_hex();
    let commands = seed_commands(&public_key);
    assert_eq!(commands.len(), 4);

    let (status, stdout) = shell(&home, &bin_dir, &commands[0]);
    assert_eq!(status, 0, "{stdout}");
    let identity = one_json(&stdout);
    assert_eq!(
        keys(&identity),
        sorted(&[
            "sidecar_id",
            "display_name",
            "public_key",
            "fingerprint",
            "created_at",
            "key_file_created"
        ])
    );
    assert_eq!(identity["public_key"], public_key.as_str());
    assert_eq!(identity["display_name"], "laptop");
    assert_eq!(identity["key_file_created"], false);
    assert!(!home.join("identity.key").exists());

    let before = now_unix_seconds();
    let (status, stdout) = shell(&home, &bin_dir, &commands[1]);
    assert_eq!(status, 0, "{stdout}");
    let pairing = one_json(&stdout);
    let mut fields = PAIRING_FIELDS.to_vec();
    fields.extend(["identity_rebound_from", "replaced"]);
    assert_eq!(keys(&pairing), sorted(&fields));
    assert_eq!(pairing["remote_instance_id"], "remote-1");
    assert_eq!(pairing["sidecar_id"], "sidecar-example");
    assert_eq!(pairing["user_id"], "local-user");
    assert_eq!(pairing["status"], "active");
    assert_eq!(pairing["identity_rebound_from"], identity["sidecar_id"]);
    let expires = pairing["expires_at"].as_i64().unwrap();
    let created = pairing["created_at"].as_i64().unwrap();
    assert_eq!(expires - created, 300);
    assert!(created >= before);
    let scopes: Vec<&str> = pairing["local_scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(scopes.contains(&"ibkr:accounts:read"));
    assert!(
        !scopes
            .iter()
            .any(|s| s.starts_with("ibkr:orders:write") || *s == "ibkr:orders:preview")
    );
    assert!(pairing["gateway_fingerprint"].is_null());

    let (status, stdout) = shell(&home, &bin_dir, &commands[2]);
    assert_eq!(status, 0, "{stdout}");
    let session = one_json(&stdout);
    assert_eq!(keys(&session), sorted(SESSION_FIELDS));
    assert_eq!(session["status"], "open");
    assert_eq!(session["sidecar_id"], "sidecar-example");
    assert_eq!(
        session["expires_at"].as_i64().unwrap() - session["created_at"].as_i64().unwrap(),
        300
    );
    assert_eq!(session["last_heartbeat_at"], session["created_at"]);
    let session_id = session["session_id"].as_str().unwrap();
    assert_eq!(session_id.len(), 32);

    let (status, stdout) = shell(&home, &bin_dir, &commands[3]);
    assert_eq!(status, 0, "{stdout}");
    let forwarded = one_json(&stdout);
    assert_eq!(keys(&forwarded), sorted(FORWARDED_FIELDS));
    assert_eq!(forwarded["forwarded"], true);
    assert_eq!(forwarded["tool_name"], "ibkr_accounts_list");
    assert_eq!(forwarded["scope"], "ibkr:accounts:read");
    assert_eq!(forwarded["canonical_payload"], "{}");
    assert_eq!(forwarded["token_scopes"], json!([forwarded["scope"]]));
    assert_eq!(forwarded["session_id"], session_id);
    assert_eq!(forwarded["remote_instance_id"], "remote-1");
    assert_eq!(forwarded["sidecar_id"], "sidecar-example");
    assert_eq!(forwarded["request_id"].as_str().unwrap().len(), 32);
    // The hash is the protocol's payload hash of exactly that canonical payload.
    let expected = protocol::canonical::payload_hash("ibkr_accounts_list", b"{}");
    assert_eq!(forwarded["payload_hash"], hex::encode(expected));
}

#[test]
fn sensitive_material_is_refused_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    paired_with_session(dir.path());
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXNlY3JldA";
    for (payload, needle) in [
        (r#"{"cookie":"x"}"#.to_string(), "\"x\""),
        (r#"{"symbol":"Bearer abc.def"}"#.to_string(), "abc.def"),
        (r#"{"authorization":"x"}"#.to_string(), "\"x\""),
        (format!(r#"{{"symbol":"{jwt}"}}"#), "eyJ"),
        (r#"{"symbol":"/home/u/.ssh/id_rsa"}"#.to_string(), "id_rsa"),
    ] {
        let (status, json) = agent(dir.path(), &accept_args(&payload, &[]));
        assert_refused(status, &json, "SENSITIVE_MATERIAL_REFUSED");
        let text = json.to_string();
        assert!(!text.contains(needle), "{payload} echoed: {text}");
        assert!(text.contains(" at /"), "the path is named: {text}");
    }
}

#[test]
fn every_gate_refuses_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let session_id = paired_with_session(dir.path());

    // Closed schema.
    let (status, json) = agent(dir.path(), &accept_args(r#"{"extra":1}"#, &[]));
    assert_refused(status, &json, "ARGUMENTS_INVALID");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field at /extra")
    );
    let (status, json) = agent(dir.path(), &accept_args("not json", &[]));
    assert_refused(status, &json, "ARGUMENTS_INVALID");

    // Catalog and scope.
    let mut args = accept_args("{}", &[]);
    args[8] = "ibkr_launch_rockets";
    let (status, json) = agent(dir.path(), &args);
    assert_refused(status, &json, "TOOL_UNKNOWN");
    let mut args = accept_args("{}", &[]);
    args[10] = "ibkr:health:read";
    let (status, json) = agent(dir.path(), &args);
    assert_refused(status, &json, "ARGUMENTS_INVALID");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requires ibkr:accounts:read")
    );

    // Wrong sidecar id: no pairing binds it.
    let mut args = accept_args("{}", &[]);
    args[6] = "sidecar-other";
    let (status, json) = agent(dir.path(), &args);
    assert_refused(status, &json, "SIDECAR_PAIRING_REQUIRED");

    // A second pairing, with no session of its own: the session gate refuses, also when
    // pointed at remote-1's session explicitly.
    let (status, _) = agent(
        dir.path(),
        &[
            "sidecar",
            "pairing",
            "create",
            "--remote-instance-id",
            "remote-2",
            "--sidecar-id",
            "sidecar-example",
            "--user-id",
            "local-user",
            "--ttl-seconds",
            "300",
            "--json",
        ],
    );
    assert_eq!(status, 0);
    let mut args = accept_args("{}", &[]);
    args[4] = "remote-2";
    let (status, json) = agent(dir.path(), &args);
    assert_refused(status, &json, "SIDECAR_SESSION_INVALID");
    args.extend_from_slice(&["--session-id", &session_id]);
    let (status, json) = agent(dir.path(), &args);
    assert_refused(status, &json, "SIDECAR_SESSION_INVALID");

    // A stale heartbeat (written through the store, as a lapse of time would).
    let store = StateStore::open(dir.path()).unwrap();
    store
        .touch_relay_session(&session_id, now_unix_seconds() - 100)
        .unwrap();
    let (status, json) = agent(dir.path(), &accept_args("{}", &[]));
    assert_refused(status, &json, "SIDECAR_HEARTBEAT_STALE");
    // The timeout comes from the configuration.
    let config = dir.path().join("lenient.yaml");
    std::fs::write(
        &config,
        "sidecar:\n  enabled: true\n  remote_relay_url: ws://127.0.0.1:9/relay\n  \
         local_client_portal_base_url: https://localhost:5000/v1/api\n  \
         heartbeat_interval_seconds: 60\n  heartbeat_timeout_seconds: 600\n\
         safety:\n  sidecar_enabled: true\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (status, json) = agent(dir.path(), &accept_args("{}", &["--config", config]));
    assert_eq!(status, 0, "{json}");
    // `session heartbeat` brings it back.
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "session",
            "heartbeat",
            "--session-id",
            &session_id,
            "--json",
        ],
    );
    assert_eq!(status, 0, "{json}");
    let (status, _) = agent(dir.path(), &accept_args("{}", &[]));
    assert_eq!(status, 0);

    // An expired session (expires_at written in the past through the store).
    store
        .renew_relay_session(&session_id, now_unix_seconds() - 1)
        .unwrap();
    let (status, json) = agent(dir.path(), &accept_args("{}", &[]));
    assert_refused(status, &json, "SIDECAR_SESSION_EXPIRED");
    let (status, json) = agent(
        dir.path(),
        &accept_args("{}", &["--session-id", &session_id]),
    );
    assert_refused(status, &json, "SIDECAR_SESSION_EXPIRED");

    // A fresh session works; then revocation refuses at once.
    let (status, _) = agent(
        dir.path(),
        &[
            "sidecar",
            "session",
            "create",
            "--remote-instance-id",
            "remote-1",
            "--sidecar-id",
            "sidecar-example",
            "--ttl-seconds",
            "300",
            "--json",
        ],
    );
    assert_eq!(status, 0);
    let (status, json) = agent(
        dir.path(),
        &accept_args("{}", &["--request-id", &"ab".repeat(16)]),
    );
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["request_id"], "ab".repeat(16));
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "pairing",
            "revoke",
            "--remote-instance-id",
            "remote-1",
            "--sidecar-id",
            "sidecar-example",
            "--json",
        ],
    );
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["status"], "revoked");
    // The expired session and the fresh one (neither was closed yet).
    assert_eq!(json["sessions_closed"], 2);
    let (status, json) = agent(dir.path(), &accept_args("{}", &[]));
    assert_refused(status, &json, "SIDECAR_PAIRING_REQUIRED");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    // Revoking again: nothing to revoke.
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "pairing",
            "revoke",
            "--remote-instance-id",
            "remote-1",
            "--sidecar-id",
            "sidecar-example",
            "--json",
        ],
    );
    assert_eq!(status, 3);
    assert_eq!(json["error"]["code"], "SIDECAR_PAIRING_REQUIRED");

    // A configuration given to relay accept goes through the same fail-closed validation.
    let disabled = dir.path().join("disabled.yaml");
    std::fs::write(&disabled, "sidecar:\n  enabled: false\n").unwrap();
    let (status, json) = agent(
        dir.path(),
        &accept_args("{}", &["--config", disabled.to_str().unwrap()]),
    );
    assert_eq!(status, 2, "{json}");
    assert_eq!(json["forwarded"], false);
    assert_eq!(json["error"]["code"], "CONFIG_SIDECAR_FORBIDDEN");

    // Usage errors exit 2, still with "forwarded": false.
    let (status, json) = agent(dir.path(), &accept_args("{}", &["--request-id", "xyz"]));
    assert_eq!(status, 2);
    assert_eq!(json["forwarded"], false);
    assert_eq!(json["error"]["code"], "CLI_ARGUMENT_INVALID");
}

#[test]
fn sessions_and_pairings_are_validated_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    // No identity yet.
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "pairing",
            "create",
            "--remote-instance-id",
            "remote-1",
            "--sidecar-id",
            "sidecar-example",
            "--user-id",
            "u",
            "--ttl-seconds",
            "300",
            "--json",
        ],
    );
    assert_eq!(status, 3);
    assert_eq!(json["error"]["code"], "IDENTITY_MISSING");
    let session_id = paired_with_session(dir.path());

    // TTL 0 and unknown scopes are usage errors; a session needs an active pairing.
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "session",
            "create",
            "--remote-instance-id",
            "remote-1",
            "--sidecar-id",
            "sidecar-example",
            "--ttl-seconds",
            "0",
            "--json",
        ],
    );
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (2, Some("CLI_ARGUMENT_INVALID"))
    );
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "session",
            "create",
            "--remote-instance-id",
            "remote-9",
            "--sidecar-id",
            "sidecar-example",
            "--ttl-seconds",
            "300",
            "--json",
        ],
    );
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (3, Some("SIDECAR_PAIRING_REQUIRED"))
    );
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "pairing",
            "create",
            "--remote-instance-id",
            "remote-2",
            "--sidecar-id",
            "sidecar-example",
            "--user-id",
            "u",
            "--ttl-seconds",
            "300",
            "--scope",
            "ibkr:everything",
            "--json",
        ],
    );
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (2, Some("CLI_ARGUMENT_INVALID"))
    );
    // Once the identity has a pairing, its sidecar id is fixed.
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "pairing",
            "create",
            "--remote-instance-id",
            "remote-2",
            "--sidecar-id",
            "sidecar-other",
            "--user-id",
            "u",
            "--ttl-seconds",
            "300",
            "--json",
        ],
    );
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (3, Some("IDENTITY_MISSING"))
    );
    // Extra scopes on top of the read-only default.
    let (status, json) = agent(
        dir.path(),
        &[
            "sidecar",
            "pairing",
            "create",
            "--remote-instance-id",
            "remote-2",
            "--sidecar-id",
            "sidecar-example",
            "--user-id",
            "u",
            "--ttl-seconds",
            "60",
            "--scope",
            "ibkr:orders:preview",
            "--json",
        ],
    );
    assert_eq!(status, 0, "{json}");
    assert!(
        json["local_scopes"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ibkr:orders:preview"))
    );
    assert!(
        json["local_scopes"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ibkr:health:read"))
    );

    let (status, json) = agent(dir.path(), &["sidecar", "pairing", "list", "--json"]);
    assert_eq!(status, 0);
    assert_eq!(keys(&json), ["pairings"]);
    let pairings = json["pairings"].as_array().unwrap();
    assert_eq!(pairings.len(), 2);
    for pairing in pairings {
        assert_eq!(keys(pairing), sorted(PAIRING_FIELDS));
    }

    let (status, json) = agent(dir.path(), &["sidecar", "session", "list", "--json"]);
    assert_eq!(status, 0);
    assert_eq!(keys(&json), ["sessions"]);
    assert_eq!(json["sessions"][0]["session_id"], session_id.as_str());
    assert_eq!(keys(&json["sessions"][0]), sorted(SESSION_FIELDS));

    let (status, json) = agent(dir.path(), &["sidecar", "status", "--json"]);
    assert_eq!(status, 0);
    assert_eq!(
        keys(&json),
        sorted(&[
            "identity",
            "pairings",
            "open_sessions",
            "relay",
            "trading_paused",
            "daemon_config"
        ])
    );
    assert!(json["trading_paused"].is_null());
    assert_eq!(json["identity"]["sidecar_id"], "sidecar-example");
    assert_eq!(json["pairings"].as_array().unwrap().len(), 2);
    assert_eq!(json["open_sessions"][0]["session_id"], session_id.as_str());
    assert_eq!(json["daemon_config"]["present"], false);
    // The JSON never names a local path.
    assert!(!json.to_string().contains(dir.path().to_str().unwrap()));

    // An invalid daemon configuration shows up as such.
    std::fs::write(
        dir.path().join("sidecar.yaml"),
        "sidecar:\n  enabled: true\n",
    )
    .unwrap();
    let (_, json) = agent(dir.path(), &["sidecar", "status", "--json"]);
    assert_eq!(json["daemon_config"]["present"], true);
    assert_eq!(json["daemon_config"]["valid"], false);
    assert_eq!(
        json["daemon_config"]["error"]["code"],
        "CONFIG_SIDECAR_FORBIDDEN"
    );

    // The human forms are for people: no JSON, the ids are there.
    let output = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["sidecar", "status"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("sidecar-example") && text.contains("INVALID"),
        "{text}"
    );
    assert!(serde_json::from_str::<Value>(&text).is_err());
}

fn yaml_for_cpgw(dir: &Path, cpgw_url: &str) -> String {
    let path = dir.join("probe.yaml");
    std::fs::write(
        &path,
        format!(
            "sidecar:\n  enabled: true\n  remote_relay_url: ws://127.0.0.1:9/relay\n  \
             local_client_portal_base_url: {cpgw_url}\n  heartbeat_interval_seconds: 15\n  \
             heartbeat_timeout_seconds: 45\nsafety:\n  sidecar_enabled: true\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

async fn agent_async(state_dir: &Path, args: Vec<String>) -> (i32, Value) {
    let state_dir = state_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent(&state_dir, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_is_asked_only_with_probe_broker() {
    let dir = tempfile::tempdir().unwrap();
    paired_with_session(dir.path());
    let cpgw = FakeCpgw::start(Login::LoggedOut).await;
    let config = yaml_for_cpgw(dir.path(), &cpgw.base_url);
    let owned = |extra: &[&str]| -> Vec<String> {
        accept_args("{}", extra)
            .into_iter()
            .map(str::to_string)
            .collect()
    };

    // Without --probe-broker: forwarded, CPGW untouched.
    let (status, json) = agent_async(dir.path(), owned(&["--config", &config])).await;
    assert_eq!(status, 0, "{json}");
    assert_eq!(cpgw.shared.counters.lock().unwrap().auth_status, 0);

    // Logged out: a manual local action, never a login attempt.
    let (status, json) =
        agent_async(dir.path(), owned(&["--config", &config, "--probe-broker"])).await;
    assert_refused(status, &json, "BROKER_SESSION_REQUIRED");
    let action = json["manual_action"]["action"].as_str().unwrap();
    assert!(action.contains("Nothing logs in for you"));
    let origin = cpgw.base_url.trim_end_matches("/v1/api");
    assert!(
        json["manual_action"]["location"]
            .as_str()
            .unwrap()
            .starts_with(origin)
    );
    assert_eq!(cpgw.shared.counters.lock().unwrap().auth_status, 1);
    assert_eq!(cpgw.shared.counters.lock().unwrap().ssodh_inits, 0);

    // Logged in: forwarded.
    cpgw.set_login(Login::LoggedIn);
    let (status, json) =
        agent_async(dir.path(), owned(&["--config", &config, "--probe-broker"])).await;
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["forwarded"], true);

    // Nothing listening: unreachable, also a gate refusal (exit 3).
    let dead = yaml_for_cpgw(dir.path(), &dead_cpgw_url());
    let (status, json) =
        agent_async(dir.path(), owned(&["--config", &dead, "--probe-broker"])).await;
    assert_refused(status, &json, "BROKER_UNREACHABLE");
}
