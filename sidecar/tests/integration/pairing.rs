//! `pair()` against a minimal gateway pairing endpoint on loopback, speaking the real SPAKE2
//! exchange from the protocol crate.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ibkr_agent::state::StateStore;
use protocol::identity::StaticKeypair;
use protocol::pairing::{self, GatewayInfo, GatewayPairing, PairFinish, PairStart, PairingCode};
use rand_core::OsRng;
use serde_json::json;
use shared_safety::ErrorCode;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

struct PairingServer {
    code: PairingCode,
    key: StaticKeypair,
    pending: Mutex<Option<GatewayPairing>>,
    seen_sidecar: Mutex<Option<pairing::SidecarInfo>>,
}

fn error(status: StatusCode, code: ErrorCode) -> Response {
    let body = code.body(None);
    (
        status,
        axum::Json(json!({"error": {"code": body.code, "message": body.message,
            "retryable": body.retryable, "user_action": body.user_action}})),
    )
        .into_response()
}

async fn start(State(server): State<Arc<PairingServer>>, body: Bytes) -> Response {
    let Ok(start) = pairing::decode::<PairStart>(&body) else {
        return error(StatusCode::BAD_REQUEST, ErrorCode::PairingCodeInvalid);
    };
    if start.code_id != server.code.code_id() {
        return error(StatusCode::NOT_FOUND, ErrorCode::PairingCodeInvalid);
    }
    let (pending, reply) =
        GatewayPairing::respond(&server.code, &start, [7; 16], &mut OsRng).unwrap();
    *server.pending.lock().unwrap() = Some(pending);
    pairing::encode(&reply).unwrap().into_response()
}

async fn finish(State(server): State<Arc<PairingServer>>, body: Bytes) -> Response {
    let Ok(finish) = pairing::decode::<PairFinish>(&body) else {
        return error(StatusCode::BAD_REQUEST, ErrorCode::PairingCodeInvalid);
    };
    let Some(pending) = server.pending.lock().unwrap().take() else {
        return error(StatusCode::BAD_REQUEST, ErrorCode::PairingCodeUsed);
    };
    let Ok(verified) = pending.verify(&finish) else {
        return error(StatusCode::UNAUTHORIZED, ErrorCode::PairingCodeInvalid);
    };
    *server.seen_sidecar.lock().unwrap() = Some(verified.sidecar.clone());
    let reply = verified
        .reply(&GatewayInfo {
            static_public: server.key.public(),
            instance_id: "remote-1".into(),
            user_id: "user-1".into(),
            pairing_id: [0x21; 16],
        })
        .unwrap();
    pairing::encode(&reply).unwrap().into_response()
}

async fn serve(server: Arc<PairingServer>) -> String {
    let router = Router::new()
        .route("/pair/start", post(start))
        .route("/pair/finish", post(finish))
        .with_state(server);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

fn server() -> Arc<PairingServer> {
    Arc::new(PairingServer {
        code: PairingCode::generate(&mut OsRng),
        key: StaticKeypair::generate(&mut OsRng),
        pending: Mutex::new(None),
        seen_sidecar: Mutex::new(None),
    })
}

#[tokio::test]
async fn pairing_pins_the_gateway_key_with_read_only_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let identity = ibkr_agent::create_identity(dir.path(), "laptop", None, None).unwrap();
    let server = server();
    let base = serve(server.clone()).await;
    let code = server.code.display();

    let record = ibkr_agent::pair(dir.path(), &base, &code, None)
        .await
        .unwrap();
    assert_eq!(record.remote_instance_id, "remote-1");
    assert_eq!(record.user_id, "user-1");
    assert_eq!(record.sidecar_id, identity.sidecar_id);
    assert_eq!(record.gateway_public_key, Some(server.key.public()));
    assert_eq!(
        record.relay_url.as_deref(),
        Some(format!("{}/relay", base.replacen("http", "ws", 1)).as_str())
    );
    assert_eq!(record.gateway_url.as_deref(), Some(base.as_str()));
    let scopes = record.local_scope_list();
    assert!(scopes.contains(&"ibkr:accounts:read".to_string()));
    assert!(!scopes.iter().any(|s| s.starts_with("ibkr:orders:write")));
    assert!(record.expires_at.is_none() && record.revoked_at.is_none());

    // The gateway learned our real public key and id.
    let seen = server.seen_sidecar.lock().unwrap().clone().unwrap();
    assert_eq!(seen.static_public, identity.public_key);
    assert_eq!(seen.sidecar_id, identity.sidecar_id);
    assert_eq!(seen.display_name, "laptop");

    // Persisted.
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(
        store.pairing("remote-1", &identity.sidecar_id).unwrap(),
        Some(record)
    );
}

#[tokio::test]
async fn a_wrong_code_is_surfaced_with_the_gateways_code_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    ibkr_agent::create_identity(dir.path(), "laptop", None, None).unwrap();
    let server = server();
    let base = serve(server.clone()).await;
    // Right id, wrong secret: SPAKE2 fails the confirmation on the gateway.
    let wrong = format!("{}-0000-0000", server.code.code_id());
    let error = ibkr_agent::pair(dir.path(), &base, &wrong, None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::PairingCodeInvalid);
    // Unknown id.
    let other = PairingCode::generate(&mut OsRng);
    if other.code_id() != server.code.code_id() {
        let error = ibkr_agent::pair(dir.path(), &base, &other.display(), None)
            .await
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::PairingCodeInvalid);
    }
    let store = StateStore::open(dir.path()).unwrap();
    assert!(store.pairings().unwrap().is_empty());
}

#[tokio::test]
async fn local_preconditions_are_checked_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    // No identity yet.
    let error = ibkr_agent::pair(dir.path(), "http://127.0.0.1:9", "K7QM-3XW9-PT4R", None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::IdentityMissing);
    ibkr_agent::create_identity(dir.path(), "laptop", None, None).unwrap();
    // Plain http to a non-loopback host is refused before dialing.
    let error = ibkr_agent::pair(
        dir.path(),
        "http://gateway.example.com",
        "K7QM-3XW9-PT4R",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::CliArgumentInvalid);
    // A malformed code.
    let error = ibkr_agent::pair(dir.path(), "http://127.0.0.1:9", "nope", None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::PairingCodeInvalid);
    // Another sidecar id than this state directory's identity.
    let error = ibkr_agent::pair(
        dir.path(),
        "http://127.0.0.1:9",
        "K7QM-3XW9-PT4R",
        Some("sidecar-other"),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::IdentityMissing);
}

/// `ibkr-agent --state-dir <dir> <args>` with `stdin` fed; exit status and the JSON object.
async fn agent(dir: &std::path::Path, args: Vec<String>, stdin: &str) -> (i32, serde_json::Value) {
    let dir = dir.to_path_buf();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
            .arg("--state-dir")
            .arg(&dir)
            .args(&args)
            .env_remove("IBKR_AGENT_HOME")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
        (
            output.status.code().unwrap(),
            serde_json::from_str(stdout.trim()).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_pair_command_writes_a_complete_configuration_once() {
    let dir = tempfile::tempdir().unwrap();
    let identity = ibkr_agent::create_identity(dir.path(), "laptop", None, None).unwrap();
    let first = server();
    let base = serve(first.clone()).await;
    let args = |base: &str| -> Vec<String> {
        [
            "sidecar",
            "pair",
            "--gateway",
            base,
            "--code",
            "-",
            "--json",
        ]
        .into_iter()
        .map(str::to_string)
        .collect()
    };
    // The code travels on stdin, never on the command line.
    let (status, json) = agent(
        dir.path(),
        args(&base),
        &format!("{}\n", *first.code.display()),
    )
    .await;
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["config_file_written"], true);
    assert_eq!(json["status"], "active");
    assert!(json["gateway_fingerprint"].is_string());
    let relay_url = json["relay_url"].as_str().unwrap().to_string();

    let path = dir.path().join("sidecar.yaml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config = ibkr_agent::SidecarConfig::load(&path).unwrap();
    assert_eq!(config.relay_url(), Some(relay_url.as_str()));
    assert_eq!(
        config.sidecar.local_client_portal_base_url,
        "https://localhost:5000/v1/api"
    );
    let written = std::fs::read_to_string(&path).unwrap();

    // `pairing create` never silently drops the key `pair` pinned.
    let create: Vec<String> = [
        "sidecar",
        "pairing",
        "create",
        "--remote-instance-id",
        "remote-1",
        "--sidecar-id",
        &identity.sidecar_id,
        "--user-id",
        "u",
        "--ttl-seconds",
        "60",
        "--json",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    let (status, json) = agent(dir.path(), create, "").await;
    assert_eq!(status, 2, "{json}");
    assert_eq!(json["error"]["code"], "CLI_ARGUMENT_INVALID");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pairing grant --scope")
    );

    // Pairing again leaves the file as it is.
    let again = server();
    let base = serve(again.clone()).await;
    let (status, json) = agent(
        dir.path(),
        args(&base),
        &format!("{}\n", *again.code.display()),
    )
    .await;
    assert_eq!(status, 0, "{json}");
    assert_eq!(json["config_file_written"], false);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
}
