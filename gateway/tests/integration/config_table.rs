//! The relay checklist of the seed, item by item, over both configuration paths.
//!
//! Each row removes or breaks one item of `docs/examples/gateway.yaml` (the YAML path) and of a
//! valid `GatewayConfiguration` built from it (the programmatic path), and expects a stable
//! code and the key at fault:
//! - in process: `GatewayConfiguration::from_yaml_str` and `validate` refuse, the rendered
//!   error names the key, and `ibkr_gateway::start` returns the same error without creating
//!   `state_dir`;
//! - as a process: `ibkr-gateway serve --config <file>` exits 2, prints the code and the key
//!   on stderr, binds no port (the chosen free port can be bound again afterwards) and creates
//!   no `state_dir`.
//!
//! A control run shows the unmodified example does start (binds its port, creates
//! `state_dir`), so the "nothing bound, nothing written" checks are not vacuous.

use ibkr_gateway::GatewayConfiguration;
use serde_yaml_ng::Value as Yaml;
use shared_safety::ErrorCode;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const EXAMPLE: &str = include_str!("../../../docs/examples/gateway.yaml");
/// Bound on one run of the binary; a refused configuration exits in milliseconds.
const PROCESS_LIMIT: Duration = Duration::from_secs(30);

/// One change to the example YAML: remove a key, or set it to a YAML value.
#[derive(Clone, Copy, Debug)]
enum Edit {
    Delete(&'static str),
    Set(&'static str, &'static str),
}

struct Row {
    /// What the row breaks.
    name: &'static str,
    /// The YAML edits (empty: the row has no YAML form).
    yaml: &'static [Edit],
    /// The programmatic mutation (`None`: the row cannot be expressed in Rust types, e.g. an
    /// algorithm the enum does not have).
    programmatic: Option<fn(&mut GatewayConfiguration)>,
    code: ErrorCode,
    /// The key the refusal must name (a prefix for serde-level errors such as `[0]`).
    key: &'static str,
}

use Edit::{Delete, Set};
const FORBIDDEN: ErrorCode = ErrorCode::ConfigSidecarForbidden;
const INVALID: ErrorCode = ErrorCode::ConfigInvalid;

fn rows() -> Vec<Row> {
    vec![
        // -- The seed's checklist --------------------------------------------------------
        Row {
            name: "sidecar.enabled missing (defaults to false)",
            yaml: &[Delete("sidecar.enabled")],
            programmatic: Some(|c| c.sidecar.enabled = false),
            code: FORBIDDEN,
            key: "sidecar.enabled",
        },
        Row {
            name: "sidecar.enabled false",
            yaml: &[Set("sidecar.enabled", "false")],
            programmatic: Some(|c| c.sidecar.enabled = false),
            code: FORBIDDEN,
            key: "sidecar.enabled",
        },
        Row {
            name: "safety.sidecar_enabled missing (defaults to false)",
            yaml: &[Delete("safety.sidecar_enabled")],
            programmatic: Some(|c| c.safety.sidecar_enabled = false),
            code: FORBIDDEN,
            key: "safety.sidecar_enabled",
        },
        Row {
            name: "both sidecar flags off",
            yaml: &[
                Set("sidecar.enabled", "false"),
                Set("safety.sidecar_enabled", "false"),
            ],
            programmatic: Some(|c| {
                c.sidecar.enabled = false;
                c.safety.sidecar_enabled = false;
            }),
            code: FORBIDDEN,
            key: "sidecar.enabled",
        },
        Row {
            name: "whole sidecar section missing",
            yaml: &[Delete("sidecar")],
            programmatic: Some(|c| c.sidecar = Default::default()),
            code: FORBIDDEN,
            key: "sidecar.enabled",
        },
        Row {
            name: "sidecar.remote_relay_url missing",
            yaml: &[Delete("sidecar.remote_relay_url")],
            programmatic: Some(|c| c.sidecar.remote_relay_url = None),
            code: INVALID,
            key: "sidecar.remote_relay_url",
        },
        Row {
            name: "sidecar.remote_relay_url plain ws:// off loopback",
            yaml: &[Set(
                "sidecar.remote_relay_url",
                "ws://gateway.example.com/relay",
            )],
            programmatic: Some(|c| {
                c.sidecar.remote_relay_url = Some("ws://gateway.example.com/relay".into())
            }),
            code: INVALID,
            key: "sidecar.remote_relay_url",
        },
        Row {
            name: "sidecar.remote_relay_url not a websocket URL",
            yaml: &[Set(
                "sidecar.remote_relay_url",
                "https://gateway.example.com/relay",
            )],
            programmatic: Some(|c| {
                c.sidecar.remote_relay_url = Some("https://gateway.example.com/relay".into())
            }),
            code: INVALID,
            key: "sidecar.remote_relay_url",
        },
        Row {
            name: "heartbeat timeout equal to the interval",
            yaml: &[Set("sidecar.heartbeat_timeout_seconds", "15")],
            programmatic: Some(|c| c.sidecar.heartbeat_timeout_seconds = 15),
            code: INVALID,
            key: "sidecar.heartbeat_timeout_seconds",
        },
        Row {
            name: "heartbeat timeout below the interval",
            yaml: &[Set("sidecar.heartbeat_timeout_seconds", "10")],
            programmatic: Some(|c| c.sidecar.heartbeat_timeout_seconds = 10),
            code: INVALID,
            key: "sidecar.heartbeat_timeout_seconds",
        },
        Row {
            name: "heartbeat interval raised above the default timeout",
            yaml: &[
                Delete("sidecar.heartbeat_timeout_seconds"),
                Set("sidecar.heartbeat_interval_seconds", "60"),
            ],
            programmatic: Some(|c| {
                c.sidecar.heartbeat_timeout_seconds = 45;
                c.sidecar.heartbeat_interval_seconds = 60;
            }),
            code: INVALID,
            key: "sidecar.heartbeat_timeout_seconds",
        },
        Row {
            name: "heartbeat interval zero",
            yaml: &[Set("sidecar.heartbeat_interval_seconds", "0")],
            programmatic: Some(|c| c.sidecar.heartbeat_interval_seconds = 0),
            code: INVALID,
            key: "sidecar.heartbeat_interval_seconds",
        },
        Row {
            name: "session TTL not above the heartbeat timeout",
            yaml: &[Set("sidecar.session_ttl_seconds", "45")],
            programmatic: Some(|c| c.sidecar.session_ttl_seconds = 45),
            code: INVALID,
            key: "sidecar.session_ttl_seconds",
        },
        Row {
            name: "remote_mcp.enabled missing (relay without remote MCP OAuth)",
            yaml: &[Delete("remote_mcp.enabled")],
            programmatic: Some(|c| c.remote_mcp.enabled = false),
            code: FORBIDDEN,
            key: "remote_mcp.enabled",
        },
        Row {
            name: "safety.remote_mcp_enabled missing",
            yaml: &[Delete("safety.remote_mcp_enabled")],
            programmatic: Some(|c| c.safety.remote_mcp_enabled = false),
            code: FORBIDDEN,
            key: "safety.remote_mcp_enabled",
        },
        Row {
            name: "whole remote_mcp section missing",
            yaml: &[Delete("remote_mcp")],
            programmatic: Some(|c| c.remote_mcp = Default::default()),
            code: FORBIDDEN,
            key: "remote_mcp.enabled",
        },
        // Without an issuer the gateway is its own authorization server: a JWKS URL then
        // means nothing, and a cluster cannot run it.
        Row {
            name: "remote_mcp.jwks_url without remote_mcp.issuer",
            yaml: &[Delete("remote_mcp.issuer")],
            programmatic: Some(|c| c.remote_mcp.issuer = None),
            code: INVALID,
            key: "remote_mcp.jwks_url",
        },
        Row {
            name: "the built-in authorization server on a cluster store",
            yaml: &[],
            programmatic: Some(|c| {
                c.remote_mcp.issuer = None;
                c.remote_mcp.jwks_url = None;
                c.store.backend = ibkr_gateway::config::StoreBackend::Postgres;
                c.store.postgres_url_env = Some("IBKR_GATEWAY_TEST_UNSET_URL".into());
            }),
            code: INVALID,
            key: "remote_mcp.issuer",
        },
        Row {
            name: "remote_mcp.issuer plain http off loopback",
            yaml: &[Set("remote_mcp.issuer", "http://auth.example.com/")],
            programmatic: Some(|c| c.remote_mcp.issuer = Some("http://auth.example.com/".into())),
            code: INVALID,
            key: "remote_mcp.issuer",
        },
        Row {
            name: "remote_mcp.issuer not a URL",
            yaml: &[Set("remote_mcp.issuer", "auth.example.com")],
            programmatic: Some(|c| c.remote_mcp.issuer = Some("auth.example.com".into())),
            code: INVALID,
            key: "remote_mcp.issuer",
        },
        Row {
            name: "remote_mcp.resource is not public_base_url + /mcp",
            yaml: &[Set("remote_mcp.resource", "https://other.example.com/mcp")],
            programmatic: Some(|c| {
                c.remote_mcp.resource = Some("https://other.example.com/mcp".into())
            }),
            code: INVALID,
            key: "remote_mcp.resource",
        },
        Row {
            name: "remote_mcp.audiences without the resource",
            yaml: &[Set(
                "remote_mcp.audiences",
                "[\"https://other.example.com/mcp\"]",
            )],
            programmatic: Some(|c| {
                c.remote_mcp.audiences = Some(vec!["https://other.example.com/mcp".into()])
            }),
            code: INVALID,
            key: "remote_mcp.audiences",
        },
        Row {
            name: "remote_mcp.audiences empty",
            yaml: &[Set("remote_mcp.audiences", "[]")],
            programmatic: Some(|c| c.remote_mcp.audiences = Some(vec![])),
            code: INVALID,
            key: "remote_mcp.audiences",
        },
        Row {
            name: "clock skew above 300 s",
            yaml: &[Set("remote_mcp.clock_skew_seconds", "301")],
            programmatic: Some(|c| c.remote_mcp.clock_skew_seconds = 301),
            code: INVALID,
            key: "remote_mcp.clock_skew_seconds",
        },
        Row {
            name: "jwks_url plain http off loopback",
            yaml: &[Set(
                "remote_mcp.jwks_url",
                "http://auth.example.com/jwks.json",
            )],
            programmatic: Some(|c| {
                c.remote_mcp.jwks_url = Some("http://auth.example.com/jwks.json".into())
            }),
            code: INVALID,
            key: "remote_mcp.jwks_url",
        },
        Row {
            name: "no allowed algorithms",
            yaml: &[Set("remote_mcp.allowed_algorithms", "[]")],
            programmatic: Some(|c| c.remote_mcp.allowed_algorithms = vec![]),
            code: INVALID,
            key: "remote_mcp.allowed_algorithms",
        },
        Row {
            name: "an HMAC algorithm (a verifier that could mint tokens)",
            yaml: &[Set("remote_mcp.allowed_algorithms", "[RS256, HS256]")],
            programmatic: None,
            code: INVALID,
            key: "remote_mcp.allowed_algorithms",
        },
        Row {
            name: "an unknown scope in allowed_scopes",
            yaml: &[Set("remote_mcp.allowed_scopes", "[\"ibkr:everything\"]")],
            programmatic: Some(|c| {
                c.remote_mcp.allowed_scopes = Some(vec!["ibkr:everything".into()])
            }),
            code: INVALID,
            key: "remote_mcp.allowed_scopes",
        },
        Row {
            name: "challenge_scopes empty",
            yaml: &[Set("remote_mcp.challenge_scopes", "[]")],
            programmatic: Some(|c| c.remote_mcp.challenge_scopes = Some(vec![])),
            code: INVALID,
            key: "remote_mcp.challenge_scopes",
        },
        Row {
            name: "challenge_scopes names a scope allowed_scopes leaves out",
            yaml: &[Set(
                "remote_mcp.challenge_scopes",
                "[\"ibkr:health:read\", \"ibkr:orders:write\"]",
            )],
            programmatic: Some(|c| {
                c.remote_mcp.challenge_scopes =
                    Some(vec!["ibkr:health:read".into(), "ibkr:orders:write".into()])
            }),
            code: INVALID,
            key: "remote_mcp.challenge_scopes",
        },
        Row {
            name: "token_id_hmac_secret_env empty",
            yaml: &[Set("remote_mcp.token_id_hmac_secret_env", "\"\"")],
            programmatic: Some(|c| c.remote_mcp.token_id_hmac_secret_env = String::new()),
            code: INVALID,
            key: "remote_mcp.token_id_hmac_secret_env",
        },
        Row {
            name: "token_id_hmac_secret_env not a variable name (a secret pasted in)",
            yaml: &[Set(
                "remote_mcp.token_id_hmac_secret_env",
                "\"s3cr3t value\"",
            )],
            programmatic: Some(|c| c.remote_mcp.token_id_hmac_secret_env = "s3cr3t value".into()),
            code: INVALID,
            key: "remote_mcp.token_id_hmac_secret_env",
        },
        // -- The rest of the file -----------------------------------------------------------
        Row {
            name: "listen missing",
            yaml: &[Delete("listen")],
            programmatic: Some(|c| c.listen = String::new()),
            code: INVALID,
            key: "listen",
        },
        Row {
            name: "public_base_url plain http off loopback",
            yaml: &[Set("public_base_url", "http://gateway.example.com")],
            programmatic: Some(|c| c.public_base_url = "http://gateway.example.com".into()),
            code: INVALID,
            key: "public_base_url",
        },
        Row {
            name: "public_base_url with a path",
            yaml: &[Set("public_base_url", "https://gateway.example.com/gw")],
            programmatic: Some(|c| c.public_base_url = "https://gateway.example.com/gw".into()),
            code: INVALID,
            key: "public_base_url",
        },
        Row {
            name: "state_dir missing",
            yaml: &[Delete("state_dir")],
            programmatic: Some(|c| c.state_dir = PathBuf::new()),
            code: INVALID,
            key: "state_dir",
        },
        Row {
            name: "instance_id with a space",
            yaml: &[Set("instance_id", "\"remote 1\"")],
            programmatic: Some(|c| c.instance_id = Some("remote 1".into())),
            code: INVALID,
            key: "instance_id",
        },
        Row {
            name: "an unknown key (a typo)",
            yaml: &[Set("sidecar.heartbeat_timeout_secs", "45")],
            programmatic: None,
            code: INVALID,
            key: "sidecar",
        },
        Row {
            name: "no connections per client address",
            yaml: &[Set("remote_mcp.max_connections_per_peer", "0")],
            programmatic: Some(|c| c.remote_mcp.max_connections_per_peer = 0),
            code: INVALID,
            key: "remote_mcp.max_connections_per_peer",
        },
        Row {
            name: "no relay connections",
            yaml: &[Set("remote_mcp.max_relay_connections", "0")],
            programmatic: Some(|c| c.remote_mcp.max_relay_connections = 0),
            code: INVALID,
            key: "remote_mcp.max_relay_connections",
        },
        Row {
            name: "first-byte deadline zero",
            yaml: &[Set("remote_mcp.first_byte_timeout_seconds", "0")],
            programmatic: Some(|c| c.remote_mcp.first_byte_timeout_seconds = 0),
            code: INVALID,
            key: "remote_mcp.first_byte_timeout_seconds",
        },
        Row {
            name: "first-byte deadline above a minute",
            yaml: &[Set("remote_mcp.first_byte_timeout_seconds", "61")],
            programmatic: Some(|c| c.remote_mcp.first_byte_timeout_seconds = 61),
            code: INVALID,
            key: "remote_mcp.first_byte_timeout_seconds",
        },
        Row {
            name: "pairing attempts out of range",
            yaml: &[Set("pairing.max_attempts_per_code", "0")],
            programmatic: Some(|c| c.pairing.max_attempts_per_code = 0),
            code: INVALID,
            key: "pairing.max_attempts_per_code",
        },
    ]
}

// -- Helpers ------------------------------------------------------------------------------

/// A port that was free a moment ago (bound, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn example_doc() -> Yaml {
    serde_yaml_ng::from_str(EXAMPLE).unwrap()
}

fn apply(doc: &mut Yaml, edit: Edit) {
    let path = match edit {
        Delete(path) | Set(path, _) => path,
    };
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts.split_last().unwrap();
    let mut node = doc;
    for part in parents {
        node = node
            .get_mut(*part)
            .unwrap_or_else(|| panic!("the example has no section {part} ({path})"));
    }
    let map = node.as_mapping_mut().unwrap();
    match edit {
        Delete(_) => assert!(
            map.remove(*last).is_some(),
            "the example has no key {path} to delete"
        ),
        Set(_, value) => {
            map.insert(
                Yaml::String((*last).to_string()),
                serde_yaml_ng::from_str(value).unwrap(),
            );
        }
    }
}

/// The example with `listen` on `port` and `state_dir` at `state_dir`, then `edits`.
fn yaml_text(edits: &[Edit], port: u16, state_dir: &Path) -> String {
    let mut doc = example_doc();
    let map = doc.as_mapping_mut().unwrap();
    map.insert("listen".into(), format!("127.0.0.1:{port}").into());
    map.insert(
        "state_dir".into(),
        state_dir.to_str().unwrap().to_string().into(),
    );
    for edit in edits {
        apply(&mut doc, *edit);
    }
    serde_yaml_ng::to_string(&doc).unwrap()
}

fn valid_programmatic(state_dir: &Path) -> GatewayConfiguration {
    let mut config = GatewayConfiguration::from_yaml_str(EXAMPLE).unwrap();
    config.listen = "127.0.0.1:0".into();
    config.state_dir = state_dir.to_path_buf();
    config
}

fn assert_names(row: &Row, code: ErrorCode, key: &str, rendered: &str) {
    assert_eq!(code, row.code, "{}: {rendered}", row.name);
    assert!(
        key.starts_with(row.key),
        "{}: key {key:?} does not name {:?}: {rendered}",
        row.name,
        row.key
    );
    assert!(
        rendered.contains(row.key) && rendered.contains(row.code.code()),
        "{}: the message must carry the code and name the key: {rendered}",
        row.name
    );
}

// -- Tests --------------------------------------------------------------------------------

#[test]
fn the_example_is_a_valid_relaying_deployment_and_validation_fetches_nothing() {
    // The issuer and JWKS hosts are placeholders that do not resolve: validating must not
    // touch the network (it would fail or hang otherwise).
    let config = GatewayConfiguration::from_yaml_str(EXAMPLE).unwrap();
    let resolved = config.resolve().unwrap();
    assert!(resolved.relay_enabled && resolved.mcp_enabled);
    assert_eq!(resolved.resource, "https://gateway.example.com/mcp");
    assert_eq!(
        resolved.relay_url.as_deref(),
        Some("wss://gateway.example.com/relay")
    );
    assert_eq!(
        resolved.issuer.as_deref(),
        Some("https://auth.example.com/")
    );
    assert!(config.remote_mcp.clock_skew_seconds <= 300);
    assert!(config.sidecar.heartbeat_timeout_seconds > config.sidecar.heartbeat_interval_seconds);

    // Optional keys really are optional: JWKS by discovery, audiences default to the resource.
    let mut doc = example_doc();
    apply(&mut doc, Delete("remote_mcp.jwks_url"));
    apply(&mut doc, Delete("remote_mcp.audiences"));
    apply(&mut doc, Delete("remote_mcp.resource"));
    apply(&mut doc, Delete("remote_mcp.allowed_scopes"));
    apply(&mut doc, Delete("remote_mcp.challenge_scopes"));
    apply(&mut doc, Delete("instance_id"));
    let minimal =
        GatewayConfiguration::from_yaml_str(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let resolved = minimal.resolve().unwrap();
    assert_eq!(resolved.jwks_url, None);
    assert_eq!(resolved.audiences, vec!["https://gateway.example.com/mcp"]);
    // The example spells out the default baseline: the read scopes.
    assert_eq!(
        resolved.challenge_scopes,
        config.resolve().unwrap().challenge_scopes
    );
}

#[test]
fn every_row_breaks_something_the_example_has() {
    // A row that deletes a key the example lacks would pass vacuously; `apply` panics then.
    let dir = tempfile::tempdir().unwrap();
    for row in rows() {
        yaml_text(row.yaml, 1, dir.path());
    }
    assert!(rows().len() >= 30);
}

#[tokio::test]
async fn yaml_rows_are_refused_in_process_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    for row in rows().iter().filter(|row| !row.yaml.is_empty()) {
        let state_dir = dir.path().join("state");
        let text = yaml_text(row.yaml, free_port(), &state_dir);
        let error = GatewayConfiguration::from_yaml_str(&text).unwrap_err();
        assert_names(row, error.code, &error.key, &error.to_string());

        // Where the YAML still deserializes, `start` (no separate validation step) refuses
        // with the same error.
        if let Ok(unvalidated) = serde_yaml_ng::from_str::<GatewayConfiguration>(&text) {
            let started = ibkr_gateway::start(unvalidated).await.unwrap_err();
            assert_names(
                row,
                started.code(),
                started.key().unwrap_or_default(),
                &started.to_string(),
            );
        }
        assert!(!state_dir.exists(), "{}: state_dir was created", row.name);
    }
}

#[tokio::test]
async fn programmatic_rows_are_refused_by_validate_and_by_start() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    assert!(valid_programmatic(&state_dir).validate().is_ok());
    for row in rows() {
        let Some(mutate) = row.programmatic else {
            continue;
        };
        let mut config = valid_programmatic(&state_dir);
        mutate(&mut config);
        let error = config.validate().unwrap_err();
        assert_names(&row, error.code, &error.key, &error.to_string());

        let started = ibkr_gateway::start(config).await.unwrap_err();
        assert_names(
            &row,
            started.code(),
            started.key().unwrap_or_default(),
            &started.to_string(),
        );
        assert!(!state_dir.exists(), "{}: state_dir was created", row.name);
    }
}

/// Runs `ibkr-gateway serve --config <file>` to completion (bounded).
async fn serve_once(config: &Path) -> (Option<i32>, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ibkr-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    let finished = tokio::time::timeout(PROCESS_LIMIT, async {
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
            .await
            .unwrap();
        child.wait().await.unwrap()
    })
    .await;
    match finished {
        Ok(status) => (status.code(), text),
        Err(_) => {
            child.kill().await.unwrap();
            panic!("ibkr-gateway kept running on a configuration it should refuse");
        }
    }
}

#[tokio::test]
async fn the_binary_exits_2_naming_code_and_key_without_binding_or_writing() {
    let dir = tempfile::tempdir().unwrap();
    for (index, row) in rows().iter().enumerate() {
        if row.yaml.is_empty() {
            continue;
        }
        let state_dir = dir.path().join(format!("state-{index}"));
        let port = free_port();
        let file = dir.path().join(format!("gateway-{index}.yaml"));
        std::fs::write(&file, yaml_text(row.yaml, port, &state_dir)).unwrap();

        let (status, stderr) = serve_once(&file).await;
        assert_eq!(status, Some(2), "{}: {stderr}", row.name);
        assert!(
            stderr.contains(row.code.code()) && stderr.contains(row.key),
            "{}: stderr must carry {} and {}: {stderr}",
            row.name,
            row.code,
            row.key
        );
        assert!(
            stderr.contains("what to do:"),
            "{}: no advice: {stderr}",
            row.name
        );
        assert!(port_is_free(port), "{}: port {port} was bound", row.name);
        assert!(!state_dir.exists(), "{}: state_dir was created", row.name);
    }
}

/// Runs `ibkr-gateway serve` on the example with `edits` until it logs that it listens (or
/// gives up); returns whether it did, whether the port was bound and `state_dir` created, and
/// the log lines up to then.
async fn serve_example(edits: &[Edit]) -> (bool, bool, bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let port = free_port();
    // Loopback issuer and JWKS on a closed port: the initial key fetch fails at once (the
    // gateway starts anyway and refuses tokens until keys arrive). Nothing leaves the host.
    let closed = free_port();
    let mut doc: Yaml = serde_yaml_ng::from_str(&yaml_text(edits, port, &state_dir)).unwrap();
    let issuer = format!("http://127.0.0.1:{closed}");
    let jwks = format!("http://127.0.0.1:{closed}/jwks.json");
    let mcp = doc.get_mut("remote_mcp").unwrap().as_mapping_mut().unwrap();
    mcp.insert("issuer".into(), issuer.into());
    mcp.insert("jwks_url".into(), jwks.into());
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ibkr-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let listening = tokio::time::timeout(PROCESS_LIMIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let listening = line.contains("gateway listening");
            seen.push(line);
            if listening {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let bound = !port_is_free(port);
    let created = state_dir.is_dir();
    child.kill().await.unwrap();
    (listening, bound, created, seen)
}

#[tokio::test]
async fn control_the_unmodified_example_binds_and_writes() {
    let (listening, bound, created, lines) = serve_example(&[]).await;
    assert!(listening, "the valid example did not start: {lines:#?}");
    assert!(bound, "the valid example did not bind its port");
    assert!(created, "the valid example did not create state_dir");
    assert!(
        !lines.iter().any(|line| line.contains("is ignored")),
        "{lines:#?}"
    );
}

/// `sidecar.local_client_portal_base_url` was once required here although the gateway never
/// calls the Client Portal Gateway: a file that still sets it (to anything) starts, with a
/// warning that names the key.
#[tokio::test]
async fn a_file_that_still_names_the_client_portal_url_starts_with_a_warning() {
    for value in ["https://localhost:5000/v1/api", "localhost:5000"] {
        let mut doc = example_doc();
        apply(&mut doc, Set("sidecar.local_client_portal_base_url", value));
        let config =
            GatewayConfiguration::from_yaml_str(&serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
        assert_eq!(
            config.resolve().unwrap(),
            GatewayConfiguration::from_yaml_str(EXAMPLE)
                .unwrap()
                .resolve()
                .unwrap()
        );
    }
    let (listening, bound, created, lines) = serve_example(&[Set(
        "sidecar.local_client_portal_base_url",
        "https://localhost:5000/v1/api",
    )])
    .await;
    assert!(listening && bound && created, "{lines:#?}");
    assert!(
        lines.iter().any(|line| line.contains("WARN")
            && line.contains("sidecar.local_client_portal_base_url")
            && line.contains("is ignored")),
        "no warning about the ignored key: {lines:#?}"
    );
}
