//! The seed's relay checklist, item by item: a configuration missing or breaking any item is
//! refused with CONFIG_SIDECAR_FORBIDDEN or CONFIG_INVALID naming the key, through the YAML
//! path, the programmatic path (`SidecarConfig` + `run_daemon`) and the binary
//! (`ibkr-agent sidecar run --config`, exit 2), and nothing is dialed.
//!
//! "Nothing dialed": the relay URL (and the pairing's relay URL) point at a listener this test
//! bound on 127.0.0.1:0 and never accepts on; after the refusal, `accept()` on the non-blocking
//! listener must return WouldBlock. A positive control shows the same setup does dial with a
//! valid configuration.

use ibkr_agent::state::{PairingRecord, StateStore};
use ibkr_agent::{DaemonOptions, SidecarConfig, run_daemon};
use protocol::identity::StaticKeypair;
use rand_core::OsRng;
use serde_json::Value;
use shared_safety::ErrorCode;
use shared_safety::scope::ScopeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const FORBIDDEN: &str = "CONFIG_SIDECAR_FORBIDDEN";
const INVALID: &str = "CONFIG_INVALID";

fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}/relay", listener.local_addr().unwrap());
    (listener, url)
}

fn assert_nothing_dialed(listener: &TcpListener, case: &str) {
    match listener.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("{case}: something dialed the relay listener: {other:?}"),
    }
}

/// A state directory that would dial `relay_url` if the configuration let it: an identity with
/// its secret key and an active pairing with a pinned gateway key and that relay URL.
fn provisioned(dir: &Path, relay_url: &str) {
    let identity = ibkr_agent::create_identity(dir, "laptop", None, None).unwrap();
    StateStore::open(dir)
        .unwrap()
        .upsert_pairing(&PairingRecord {
            remote_instance_id: "remote-1".into(),
            sidecar_id: identity.sidecar_id,
            user_id: "user-1".into(),
            gateway_url: None,
            relay_url: Some(relay_url.into()),
            gateway_public_key: Some(StaticKeypair::generate(&mut OsRng).public()),
            gateway_pairing_id: None,
            local_scopes: ScopeSet::read_only_default(),
            created_at: ibkr_agent::clock::now_unix_seconds(),
            expires_at: None,
            revoked_at: None,
        })
        .unwrap();
}

fn valid_yaml(relay_url: &str) -> String {
    format!(
        "sidecar:\n  enabled: true\n  remote_relay_url: \"{relay_url}\"\n  \
         local_client_portal_base_url: \"https://localhost:5000/v1/api\"\n  \
         heartbeat_interval_seconds: 15\n  heartbeat_timeout_seconds: 45\n\
         safety:\n  sidecar_enabled: true\n"
    )
}

enum Edit {
    /// Drop every line starting with this text.
    Remove(&'static str),
    Replace(&'static str, &'static str),
    Whole(&'static str),
}

struct YamlCase {
    name: &'static str,
    edits: &'static [Edit],
    code: &'static str,
    /// The key path the message must name.
    key: &'static str,
}

const YAML_CASES: &[YamlCase] = &[
    YamlCase {
        name: "sidecar.enabled missing",
        edits: &[Edit::Remove("  enabled:")],
        code: FORBIDDEN,
        key: "sidecar.enabled",
    },
    YamlCase {
        name: "sidecar.enabled false",
        edits: &[Edit::Replace("  enabled: true", "  enabled: false")],
        code: FORBIDDEN,
        key: "sidecar.enabled",
    },
    YamlCase {
        name: "safety.sidecar_enabled missing",
        edits: &[Edit::Remove("  sidecar_enabled:")],
        code: FORBIDDEN,
        key: "safety.sidecar_enabled",
    },
    YamlCase {
        name: "safety section missing",
        edits: &[Edit::Remove("safety:"), Edit::Remove("  sidecar_enabled:")],
        code: FORBIDDEN,
        key: "safety.sidecar_enabled",
    },
    YamlCase {
        name: "safety.sidecar_enabled false",
        edits: &[Edit::Replace(
            "  sidecar_enabled: true",
            "  sidecar_enabled: false",
        )],
        code: FORBIDDEN,
        key: "safety.sidecar_enabled",
    },
    YamlCase {
        name: "both switches false",
        edits: &[
            Edit::Replace("  enabled: true", "  enabled: false"),
            Edit::Replace("  sidecar_enabled: true", "  sidecar_enabled: false"),
        ],
        code: FORBIDDEN,
        key: "sidecar.enabled",
    },
    YamlCase {
        name: "empty file",
        edits: &[Edit::Whole("")],
        code: FORBIDDEN,
        key: "sidecar.enabled",
    },
    YamlCase {
        name: "remote_relay_url missing",
        edits: &[Edit::Remove("  remote_relay_url:")],
        code: INVALID,
        key: "sidecar.remote_relay_url",
    },
    YamlCase {
        name: "remote_relay_url plain ws off loopback",
        edits: &[Edit::Replace(
            "remote_relay_url: \"ws://127.0.0.1",
            "remote_relay_url: \"ws://gateway.example.com",
        )],
        code: INVALID,
        key: "sidecar.remote_relay_url",
    },
    YamlCase {
        name: "remote_relay_url wrong scheme",
        edits: &[Edit::Replace(
            "remote_relay_url: \"ws://",
            "remote_relay_url: \"http://",
        )],
        code: INVALID,
        key: "sidecar.remote_relay_url",
    },
    YamlCase {
        name: "remote_relay_url not a URL",
        edits: &[Edit::Replace(
            "remote_relay_url: \"ws://",
            "remote_relay_url: \"relay at ",
        )],
        code: INVALID,
        key: "sidecar.remote_relay_url",
    },
    YamlCase {
        name: "local_client_portal_base_url missing",
        edits: &[Edit::Remove("  local_client_portal_base_url:")],
        code: INVALID,
        key: "sidecar.local_client_portal_base_url",
    },
    YamlCase {
        name: "local_client_portal_base_url plain http off loopback",
        edits: &[Edit::Replace(
            "\"https://localhost:5000/v1/api\"",
            "\"http://cpgw.example.com:5000/v1/api\"",
        )],
        code: INVALID,
        key: "sidecar.local_client_portal_base_url",
    },
    YamlCase {
        name: "local_client_portal_base_url wrong scheme",
        edits: &[Edit::Replace(
            "\"https://localhost:5000/v1/api\"",
            "\"wss://localhost:5000/v1/api\"",
        )],
        code: INVALID,
        key: "sidecar.local_client_portal_base_url",
    },
    YamlCase {
        name: "heartbeat_interval_seconds missing",
        edits: &[Edit::Remove("  heartbeat_interval_seconds:")],
        code: INVALID,
        key: "sidecar.heartbeat_interval_seconds",
    },
    YamlCase {
        name: "heartbeat_timeout_seconds missing",
        edits: &[Edit::Remove("  heartbeat_timeout_seconds:")],
        code: INVALID,
        key: "sidecar.heartbeat_timeout_seconds",
    },
    YamlCase {
        name: "heartbeat timeout equal to interval",
        edits: &[Edit::Replace(
            "heartbeat_timeout_seconds: 45",
            "heartbeat_timeout_seconds: 15",
        )],
        code: INVALID,
        key: "sidecar.heartbeat_timeout_seconds",
    },
    YamlCase {
        name: "heartbeat timeout below interval",
        edits: &[Edit::Replace(
            "heartbeat_timeout_seconds: 45",
            "heartbeat_timeout_seconds: 10",
        )],
        code: INVALID,
        key: "sidecar.heartbeat_timeout_seconds",
    },
    YamlCase {
        name: "heartbeat interval zero",
        edits: &[Edit::Replace(
            "heartbeat_interval_seconds: 15",
            "heartbeat_interval_seconds: 0",
        )],
        code: INVALID,
        key: "sidecar.heartbeat_interval_seconds",
    },
    YamlCase {
        name: "heartbeat interval not a number",
        edits: &[Edit::Replace(
            "heartbeat_interval_seconds: 15",
            "heartbeat_interval_seconds: soon",
        )],
        code: INVALID,
        key: "heartbeat_interval_seconds",
    },
    YamlCase {
        name: "unknown key",
        edits: &[Edit::Replace(
            "  enabled: true",
            "  enabled: true\n  surprise: 1",
        )],
        code: INVALID,
        key: "surprise",
    },
];

fn apply(yaml: &str, edits: &[Edit]) -> String {
    let mut text = yaml.to_string();
    for edit in edits {
        text = match edit {
            Edit::Remove(prefix) => text
                .lines()
                .filter(|line| !line.starts_with(prefix))
                .map(|line| format!("{line}\n"))
                .collect(),
            Edit::Replace(from, to) => {
                assert!(text.contains(from), "edit does not apply: {from}");
                text.replacen(from, to, 1)
            }
            Edit::Whole(whole) => whole.to_string(),
        };
    }
    text
}

fn run_binary(state_dir: &Path, config: &Path) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(state_dir)
        .args(["sidecar", "run", "--json", "--config"])
        .arg(config)
        .env_remove("IBKR_AGENT_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {stdout}");
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(lines[0]).unwrap(),
    )
}

#[test]
fn every_checklist_item_is_refused_through_yaml_and_the_binary_before_dialing() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, relay_url) = listener();
    provisioned(dir.path(), &relay_url);
    let base = valid_yaml(&relay_url);
    SidecarConfig::from_yaml_str(&base).unwrap();

    for case in YAML_CASES {
        let yaml = apply(&base, case.edits);
        // The library.
        let error = SidecarConfig::from_yaml_str(&yaml).unwrap_err();
        assert_eq!(error.code().code(), case.code, "{}: {error}", case.name);
        let message = error.body().message;
        assert!(message.contains(case.key), "{}: {message}", case.name);

        // The binary: exit 2, the code and the key in the JSON, nothing dialed.
        let file = dir.path().join("case.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let (status, json) = run_binary(dir.path(), &file);
        assert_eq!(status, 2, "{}: {json}", case.name);
        assert_eq!(json["error"]["code"], case.code, "{}: {json}", case.name);
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains(case.key), "{}: {message}", case.name);
        assert!(!json["error"]["user_action"].as_str().unwrap().is_empty());
        assert_nothing_dialed(&listener, case.name);
    }

    // Without --config and without <state_dir>/sidecar.yaml: refused too.
    let output = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["sidecar", "run", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains(INVALID));
    assert_nothing_dialed(&listener, "no configuration");
}

#[test]
fn the_same_setup_dials_with_a_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    // Blocking this time: the accept below is the proof that the binary dials.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_url = format!("ws://{}/relay", listener.local_addr().unwrap());
    provisioned(dir.path(), &relay_url);
    let file = dir.path().join("valid.yaml");
    std::fs::write(&file, valid_yaml(&relay_url)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(dir.path())
        .args(["sidecar", "run", "--config"])
        .arg(&file)
        .env_remove("IBKR_AGENT_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(listener.accept().map(|_| ()));
    });
    let dialed = receiver.recv_timeout(Duration::from_secs(20));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        matches!(dialed, Ok(Ok(()))),
        "the daemon never dialed: {dialed:?}"
    );
}

struct ProgrammaticCase {
    name: &'static str,
    change: fn(&mut SidecarConfig),
    code: ErrorCode,
    key: &'static str,
}

const PROGRAMMATIC_CASES: &[ProgrammaticCase] = &[
    ProgrammaticCase {
        name: "sidecar.enabled false",
        change: |c| c.sidecar.enabled = false,
        code: ErrorCode::ConfigSidecarForbidden,
        key: "sidecar.enabled",
    },
    ProgrammaticCase {
        name: "safety.sidecar_enabled false",
        change: |c| c.safety.sidecar_enabled = false,
        code: ErrorCode::ConfigSidecarForbidden,
        key: "safety.sidecar_enabled",
    },
    ProgrammaticCase {
        name: "both switches false",
        change: |c| {
            c.sidecar.enabled = false;
            c.safety.sidecar_enabled = false;
        },
        code: ErrorCode::ConfigSidecarForbidden,
        key: "sidecar.enabled",
    },
    ProgrammaticCase {
        name: "remote_relay_url unset",
        change: |c| c.sidecar.remote_relay_url = None,
        code: ErrorCode::ConfigInvalid,
        key: "sidecar.remote_relay_url",
    },
    ProgrammaticCase {
        name: "remote_relay_url empty",
        change: |c| c.sidecar.remote_relay_url = Some(String::new()),
        code: ErrorCode::ConfigInvalid,
        key: "sidecar.remote_relay_url",
    },
    ProgrammaticCase {
        name: "remote_relay_url off loopback in plain text",
        change: |c| c.sidecar.remote_relay_url = Some("ws://gateway.example.com/relay".into()),
        code: ErrorCode::ConfigInvalid,
        key: "sidecar.remote_relay_url",
    },
    ProgrammaticCase {
        name: "local_client_portal_base_url unset",
        change: |c| c.sidecar.local_client_portal_base_url = String::new(),
        code: ErrorCode::ConfigInvalid,
        key: "sidecar.local_client_portal_base_url",
    },
    ProgrammaticCase {
        name: "local_client_portal_base_url off loopback in plain text",
        change: |c| {
            c.sidecar.local_client_portal_base_url = "http://cpgw.example.com/v1/api".into()
        },
        code: ErrorCode::ConfigInvalid,
        key: "sidecar.local_client_portal_base_url",
    },
    ProgrammaticCase {
        name: "heartbeat timeout not above interval",
        change: |c| {
            c.sidecar.heartbeat_interval_seconds = 30;
            c.sidecar.heartbeat_timeout_seconds = 30;
        },
        code: ErrorCode::ConfigInvalid,
        key: "sidecar.heartbeat_timeout_seconds",
    },
    ProgrammaticCase {
        name: "heartbeat interval zero",
        change: |c| c.sidecar.heartbeat_interval_seconds = 0,
        code: ErrorCode::ConfigInvalid,
        key: "sidecar.heartbeat_interval_seconds",
    },
];

/// What a programmatic caller must set (see the report / `SidecarConfig` docs).
fn programmatic(relay_url: &str) -> SidecarConfig {
    let mut config = SidecarConfig::default();
    config.sidecar.enabled = true;
    config.safety.sidecar_enabled = true;
    config.sidecar.remote_relay_url = Some(relay_url.into());
    config.sidecar.local_client_portal_base_url = "https://localhost:5000/v1/api".into();
    config
}

#[tokio::test]
async fn every_checklist_item_is_refused_through_the_programmatic_path_before_dialing() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, relay_url) = listener();
    provisioned(dir.path(), &relay_url);
    programmatic(&relay_url).validate().unwrap();
    // The default is not runnable.
    assert_eq!(
        SidecarConfig::default().validate().unwrap_err().code(),
        ErrorCode::ConfigSidecarForbidden
    );
    for case in PROGRAMMATIC_CASES {
        let mut config = programmatic(&relay_url);
        (case.change)(&mut config);
        let error = config.validate().unwrap_err();
        assert_eq!(error.code(), case.code, "{}: {error}", case.name);
        assert!(
            error.body().message.contains(case.key),
            "{}: {error}",
            case.name
        );
        let error = run_daemon(
            DaemonOptions::new(dir.path().to_path_buf(), config),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), case.code, "{}: {error}", case.name);
        assert_nothing_dialed(&listener, case.name);
    }
}

#[test]
fn the_documented_example_loads_and_names_every_key() {
    let example = include_str!("../../../docs/examples/sidecar.yaml");
    let config = SidecarConfig::from_yaml_str(example).unwrap();
    assert!(config.relay_url().unwrap().starts_with("wss://"));
    let reference = include_str!("../../../docs/configuration-sidecar.md");
    for key in [
        "sidecar.enabled",
        "sidecar.remote_relay_url",
        "sidecar.local_client_portal_base_url",
        "sidecar.heartbeat_interval_seconds",
        "sidecar.heartbeat_timeout_seconds",
        "sidecar.max_concurrent_requests",
        "sidecar.reconnect_initial_delay_ms",
        "sidecar.reconnect_max_delay_ms",
        "sidecar.tickle_interval_seconds",
        "sidecar.client_portal_timeout_seconds",
        "sidecar.quote_max_age_ms",
        "safety.sidecar_enabled",
        "console.enabled",
        "console.listen",
    ] {
        assert!(
            reference.contains(&format!("`{key}`")),
            "{key} is not documented"
        );
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            example.contains(&format!("{leaf}:")),
            "{key} is not in the example"
        );
    }
}
