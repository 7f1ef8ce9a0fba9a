//! `pair()` against a minimal gateway pairing endpoint on loopback, speaking the real SPAKE2
//! exchange from the protocol crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
    assert_eq!(error.code(), ErrorCode::ConfigInvalid);
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
