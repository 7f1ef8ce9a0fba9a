//! The forwarded request and the audit line of a tool call, over real loopback sockets.
//!
//! This test has a binary of its own, apart from `tests/integration`: it captures `tracing`
//! output with a thread-local subscriber, and `tracing` caches per-callsite interest
//! process-wide, so tests running concurrently without a subscriber could hide the events from
//! it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is the failure report

#[path = "integration/common.rs"]
mod common;

use common::*;
use ibkr_gateway::SessionEvent;
use protocol::envelope::{Outcome, RelayRequest, RelayResponse};
use protocol::frame::Frame;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// Collects everything a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The `audit` events, as their JSON `fields`.
    fn audit_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["target"] == "audit")
            .map(|event| event["fields"].clone())
            .collect()
    }
}

/// The default `#[tokio::test]` runtime is single-threaded, so a thread-local subscriber sees
/// every event of the gateway's tasks.
#[tokio::test]
async fn the_forwarded_request_and_the_audit_line_carry_the_call_but_never_the_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let mut sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    wait_event(&mut events, |e| {
        matches!(e, SessionEvent::Registered { .. })
    })
    .await;
    // Answer pings and the one request, handing the request back to the test.
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(frame) = sidecar.recv().await {
            match frame {
                Frame::Ping { seq } => sidecar.send(&Frame::Pong { seq }).await,
                Frame::Request(request) => {
                    let request_id = request.request_id;
                    let _ = seen.send(request);
                    let outcome = Outcome::Result {
                        json: json!({"accounts": ["DU1"]}).to_string(),
                    };
                    sidecar
                        .send(&Frame::Response(RelayResponse {
                            journal: None,
                            request_id,
                            outcome,
                        }))
                        .await;
                }
                _ => {}
            }
        }
    });

    let claims = issuer.claims(
        "alice",
        &handle.mcp_url(),
        &["ibkr:health:read", "ibkr:accounts:read"],
    );
    let jti = claims["jti"].as_str().unwrap().to_string();
    let token = issuer.key.sign(&claims);
    let mut client = McpClient::new(&handle.mcp_url(), &token);
    client.initialize().await;
    let call = |arguments: Value| json!({"name": "ibkr_accounts_list", "arguments": arguments});
    let answer = client.request("tools/call", call(json!({}))).await;
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    let refused = client.request("tools/call", call(json!({"x": 1}))).await;
    assert_eq!(
        refused["result"]["structuredContent"]["error"]["code"],
        "ARGUMENTS_INVALID"
    );

    // What travelled: tool, scope, request id, payload and its hash, a deadline.
    let request: RelayRequest = tokio::time::timeout(WAIT, seen_rx.recv())
        .await
        .unwrap()
        .unwrap();
    request.validate().unwrap();
    assert_eq!(request.tool_name, "ibkr_accounts_list");
    assert_eq!(request.scope, "ibkr:accounts:read");
    assert!(request.deadline_ms > 0);
    assert_eq!(
        request.payload_hash,
        protocol::canonical::payload_hash(&request.tool_name, &request.payload)
    );

    // What was audited, for the forwarded call and the refused one.
    handle.shutdown().await;
    let lines = captured.audit_lines();
    assert_eq!(lines.len(), 2, "{lines:?} {}", captured.text());
    let forwarded = &lines[0];
    assert_eq!(forwarded["tool"], "ibkr_accounts_list");
    assert_eq!(forwarded["scope"], "ibkr:accounts:read");
    assert_eq!(forwarded["request_id"], json!(request.request_id.to_hex()));
    assert_eq!(
        forwarded["payload_hash"],
        json!(hex::encode(request.payload_hash))
    );
    assert_eq!(forwarded["sidecar_id"], "laptop-1");
    assert_eq!(forwarded["outcome"], "ok");
    assert_eq!(forwarded["subject"], "alice");
    assert!(forwarded["latency_ms"].is_u64(), "{forwarded}");
    let token_id = forwarded["token_id"].as_str().unwrap();
    assert_eq!(token_id.len(), 32);
    assert!(token_id.chars().all(|c| c.is_ascii_hexdigit()));

    let refused = &lines[1];
    assert_eq!(refused["outcome"], "ARGUMENTS_INVALID");
    assert_eq!(refused["scope"], "ibkr:accounts:read");
    assert_eq!(refused["request_id"], "-");
    assert_eq!(refused["payload_hash"], "-");
    // The same token is linkable across calls through its HMAC...
    assert_eq!(refused["token_id"], json!(token_id));

    // ... and neither the token nor its id appears anywhere in the logs.
    let everything = captured.text();
    assert!(!everything.contains(&token));
    assert!(!everything.contains(token.split('.').nth(2).unwrap()));
    assert!(!everything.contains(&jti));
}
