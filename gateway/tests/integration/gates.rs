//! Gates 2 to 4 and the argument checks as an MCP client sees them, over real loopback
//! sockets: each refusal arrives as a tool error with its own code.
//!
//! - gate 2: no pairing, and a pairing revoked by `ibkr-gateway pairing revoke` run as a
//!   separate process against the same state directory (`SIDECAR_PAIRING_REQUIRED`);
//! - gate 3: paired but not connected (`SIDECAR_UNAVAILABLE`);
//! - gate 4: a frozen sidecar (`SIDECAR_HEARTBEAT_STALE`) and a session that runs out
//!   without renewal (`SIDECAR_SESSION_EXPIRED`), both on the next call after the drop;
//! - arguments: sensitive material first, then the closed schema, never forwarded.
//!
//! The forwarded request and the audit line are in `tests/audit_log.rs`.

use crate::common::*;
use ibkr_gateway::{DropReason, SessionEvent};
use protocol::frame::{CloseReason, Frame};
use serde_json::json;

async fn client_for(issuer: &TestIssuer, handle: &ibkr_gateway::GatewayHandle) -> McpClient {
    let token = issuer.token(
        "alice",
        &handle.mcp_url(),
        &["ibkr:health:read", "ibkr:accounts:read"],
    );
    let mut client = McpClient::new(&handle.mcp_url(), &token);
    client.initialize().await;
    client
}

async fn registered(events: &mut tokio::sync::broadcast::Receiver<SessionEvent>) {
    wait_event(events, |e| matches!(e, SessionEvent::Registered { .. })).await;
}

async fn dropped(events: &mut tokio::sync::broadcast::Receiver<SessionEvent>) -> DropReason {
    match wait_event(events, |e| matches!(e, SessionEvent::Dropped { .. })).await {
        SessionEvent::Dropped { reason, .. } => reason,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_frozen_sidecar_reads_as_heartbeat_stale_on_the_next_call() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.sidecar.heartbeat_interval_seconds = 1;
    config.sidecar.heartbeat_timeout_seconds = 2;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut client = client_for(&issuer, &handle).await;
    let mut events = handle.subscribe_sessions();

    // Connected, then frozen: the socket stays open, nothing is read or sent.
    let frozen = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered(&mut events).await;
    assert_eq!(dropped(&mut events).await, DropReason::HeartbeatTimeout);
    assert_eq!(
        handle.last_session_end("laptop-1"),
        Some(DropReason::HeartbeatTimeout)
    );

    let answer = call(&mut client, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&answer), "SIDECAR_HEARTBEAT_STALE");
    assert_eq!(
        answer["result"]["structuredContent"]["error"]["retryable"],
        json!(true)
    );
    // ibkr_health reports the same state instead of failing.
    let health = call(&mut client, "ibkr_health", json!({})).await;
    let relay = &health["result"]["structuredContent"]["relay"];
    assert_eq!(relay["connected"], json!(false), "{health}");
    assert_eq!(relay["status"], "SIDECAR_HEARTBEAT_STALE");
    drop(frozen);

    // Reconnecting clears the remembered reason and calls flow again.
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered(&mut events).await;
    assert_eq!(handle.last_session_end("laptop-1"), None);
    let mut seen = answering_sidecar(sidecar);
    let answer = call(&mut client, "ibkr_accounts_list", json!({})).await;
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    assert!(matches!(next_seen(&mut seen).await, Frame::Request(_)));
    handle.shutdown().await;
}

#[tokio::test]
async fn a_session_that_expires_without_renewal_reads_as_session_expired() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.sidecar.heartbeat_interval_seconds = 1;
    config.sidecar.heartbeat_timeout_seconds = 2;
    config.sidecar.session_ttl_seconds = 3;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut client = client_for(&issuer, &handle).await;
    let mut events = handle.subscribe_sessions();

    // Heartbeats are answered, the session is never renewed.
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered(&mut events).await;
    let mut seen = answering_sidecar(sidecar);
    assert_eq!(
        next_seen(&mut seen).await,
        Frame::Close {
            reason: CloseReason::SessionExpired
        }
    );
    assert_eq!(dropped(&mut events).await, DropReason::SessionExpired);

    let answer = call(&mut client, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&answer), "SIDECAR_SESSION_EXPIRED");
    handle.shutdown().await;
}

#[tokio::test]
async fn pairing_gates_and_a_revoke_from_the_cli_in_another_process() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dev_config(&issuer.url(), dir.path());
    let handle = ibkr_gateway::start(config.clone()).await.unwrap();
    let mut client = client_for(&issuer, &handle).await;

    // Gate 2: no pairing.
    let answer = call(&mut client, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&answer), "SIDECAR_PAIRING_REQUIRED");

    // Gate 3: paired, no live session, nothing remembered.
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let answer = call(&mut client, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&answer), "SIDECAR_UNAVAILABLE");

    let mut events = handle.subscribe_sessions();
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered(&mut events).await;
    let mut seen = answering_sidecar(sidecar);
    let answer = call(&mut client, "ibkr_accounts_list", json!({})).await;
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    assert!(matches!(next_seen(&mut seen).await, Frame::Request(_)));

    // The operator revokes from the command line: another process, same state directory.
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ibkr-gateway"))
            .args(["pairing", "revoke", "--sidecar-id", "laptop-1", "--config"])
            .arg(&file)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The next call sees it, and the live session is closed on the way.
    let answer = call(&mut client, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&answer), "SIDECAR_PAIRING_REQUIRED");
    assert_eq!(
        next_seen(&mut seen).await,
        Frame::Close {
            reason: CloseReason::PairingRevoked
        }
    );
    assert_eq!(dropped(&mut events).await, DropReason::PairingRevoked);
    handle.shutdown().await;
}

#[tokio::test]
async fn arguments_are_checked_before_any_gate_and_never_forwarded() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let mut client = client_for(&issuer, &handle).await;

    // Even without a pairing, bad arguments are what the caller hears about.
    let answer = call(&mut client, "ibkr_accounts_list", json!({"colour": "x"})).await;
    assert_eq!(error_code(&answer), "ARGUMENTS_INVALID");

    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered(&mut events).await;
    let mut seen = answering_sidecar(sidecar);

    // The sanitizer runs first: a cookie is named as sensitive, not as an unknown field.
    let answer = call(
        &mut client,
        "ibkr_accounts_list",
        json!({"cookie": "JSESSIONID=abc123"}),
    )
    .await;
    assert_eq!(error_code(&answer), "SENSITIVE_MATERIAL_REFUSED");
    let message = answer["result"]["structuredContent"]["error"]["message"]
        .as_str()
        .unwrap();
    assert!(!message.contains("abc123"), "{message}");

    // Then the closed schema: path and rule, never the value.
    for (tool, arguments, path, rule) in [
        (
            "ibkr_accounts_list",
            json!({"account": "DU-value-9f3a"}),
            "/account",
            "unknown field",
        ),
        (
            "ibkr_health",
            json!({"verbose": "DU-value-9f3a"}),
            "/verbose",
            "unknown field",
        ),
    ] {
        let answer = call(&mut client, tool, arguments).await;
        assert_eq!(error_code(&answer), "ARGUMENTS_INVALID", "{tool}");
        let error = &answer["result"]["structuredContent"]["error"];
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(path) && message.contains(rule),
            "{message}"
        );
        assert!(!message.contains("DU-value-9f3a"), "{message}");
        assert_eq!(error["retryable"], json!(false));
        assert!(error["user_action"].as_str().is_some());
    }

    // Nothing of the above reached the sidecar: the next frame it sees is this good call.
    let answer = call(&mut client, "ibkr_accounts_list", json!({})).await;
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    let Frame::Request(request) = next_seen(&mut seen).await else {
        panic!("expected the good request");
    };
    assert_eq!(request.tool_name, "ibkr_accounts_list");
    assert_eq!(request.arguments().unwrap(), json!({}));
    handle.shutdown().await;
}
