//! Users and their sidecars, over real loopback sockets with fake sidecars:
//!
//! - two users with two paired sidecars, calling concurrently: every request reaches only its
//!   own user's sidecar, and a user whose sidecar is offline is never routed to another's;
//! - `ibkr-gateway pairing revoke`, run as another process, closes the live session at once
//!   (`Close{PairingRevoked}`) without waiting for a call, and leaves other users alone;
//! - a sidecar that ends the pairing from its side (closes the session) is cut off at once.

use crate::common::*;
use ibkr_gateway::{DropReason, SessionEvent};
use protocol::frame::{CloseReason, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

/// A sidecar answering quotes with its own id, so answers show where they came from.
fn quoting_sidecar(sidecar: FakeSidecar, sidecar_id: &'static str) -> UnboundedReceiver<Frame> {
    scripted_sidecar(sidecar, move |request| {
        let symbol = request.arguments().unwrap()["symbol"].clone();
        vec![result_frame(
            request,
            json!({"symbol": symbol, "served_by": sidecar_id}),
        )]
    })
}

async fn quote(client: &mut McpClient, symbol: &str) -> Value {
    client
        .request(
            "tools/call",
            json!({"name": "ibkr_quote", "arguments": {"symbol": symbol}}),
        )
        .await
}

fn drain_symbols(seen: &mut UnboundedReceiver<Frame>) -> Vec<String> {
    let mut symbols = Vec::new();
    while let Ok(frame) = seen.try_recv() {
        match frame {
            Frame::Request(request) => {
                assert_eq!(request.tool_name, "ibkr_quote");
                symbols.push(
                    request.arguments().unwrap()["symbol"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    symbols
}

#[tokio::test]
async fn a_users_calls_reach_only_that_users_sidecar() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let (alice_key, _) = pair(&handle, "alice", "laptop-a").await;
    let (bob_key, _) = pair(&handle, "bob", "laptop-b").await;
    let mut events = handle.subscribe_sessions();
    let alice_sidecar = FakeSidecar::connect(&handle, &alice_key, "laptop-a").await;
    let bob_sidecar = FakeSidecar::connect(&handle, &bob_key, "laptop-b").await;
    registered_sessions(&mut events, 2).await;
    let mut alice_seen = quoting_sidecar(alice_sidecar, "laptop-a");
    let mut bob_seen = quoting_sidecar(bob_sidecar, "laptop-b");

    let url = handle.mcp_url();
    let scopes = ["ibkr:marketdata:read"];
    let mut alice = McpClient::new(&url, &issuer.token("alice", &url, &scopes));
    let mut bob = McpClient::new(&url, &issuer.token("bob", &url, &scopes));
    alice.initialize().await;
    bob.initialize().await;

    // Interleaved and concurrent, in both revisions.
    const CALLS: usize = 12;
    let alice_calls = async {
        let mut answers = Vec::new();
        for n in 0..CALLS {
            answers.push(quote(&mut alice, &format!("A{n}")).await);
        }
        answers
    };
    let bob_calls = async {
        let mut answers = Vec::new();
        for n in 0..CALLS {
            answers.push(quote(&mut bob, &format!("B{n}")).await);
        }
        answers
    };
    let stateless_client = http();
    let stateless_calls = async {
        let mut answers = Vec::new();
        for n in 0..CALLS {
            let (user, symbol) = if n % 2 == 0 {
                ("alice", format!("SA{n}"))
            } else {
                ("bob", format!("SB{n}"))
            };
            let response = stateless_request(
                &stateless_client,
                &url,
                &issuer.token(user, &url, &scopes),
                n as u64,
                "tools/call",
                json!({"name": "ibkr_quote", "arguments": {"symbol": symbol}}),
                json!({}),
            )
            .send()
            .await
            .unwrap();
            answers.push((
                user,
                read_jsonrpc_messages(response, n as u64)
                    .await
                    .pop()
                    .unwrap(),
            ));
        }
        answers
    };
    let (alice_answers, bob_answers, stateless_answers) =
        tokio::join!(alice_calls, bob_calls, stateless_calls);

    for answer in &alice_answers {
        assert_eq!(
            answer["result"]["structuredContent"]["served_by"], "laptop-a",
            "{answer}"
        );
    }
    for answer in &bob_answers {
        assert_eq!(
            answer["result"]["structuredContent"]["served_by"], "laptop-b",
            "{answer}"
        );
    }
    for (user, answer) in &stateless_answers {
        let expected = if *user == "alice" {
            "laptop-a"
        } else {
            "laptop-b"
        };
        assert_eq!(
            answer["result"]["structuredContent"]["served_by"], expected,
            "{answer}"
        );
    }
    let alice_symbols = drain_symbols(&mut alice_seen);
    let bob_symbols = drain_symbols(&mut bob_seen);
    assert_eq!(alice_symbols.len(), CALLS + CALLS / 2);
    assert_eq!(bob_symbols.len(), CALLS + CALLS / 2);
    assert!(
        alice_symbols
            .iter()
            .all(|s| s.starts_with('A') || s.starts_with("SA")),
        "{alice_symbols:?}"
    );
    assert!(
        bob_symbols
            .iter()
            .all(|s| s.starts_with('B') || s.starts_with("SB")),
        "{bob_symbols:?}"
    );

    // Bob's sidecar goes away: Bob is told so, and nothing of his reaches Alice's sidecar.
    let drop_bob = handle.revoke_pairing("laptop-b").await.unwrap();
    assert!(drop_bob);
    assert_eq!(
        next_seen(&mut bob_seen).await,
        Frame::Close {
            reason: CloseReason::PairingRevoked
        }
    );
    let answer = quote(&mut bob, "B99").await;
    assert_eq!(
        answer["result"]["structuredContent"]["error"]["code"], "SIDECAR_PAIRING_REQUIRED",
        "{answer}"
    );
    let answer = quote(&mut alice, "A99").await;
    assert_eq!(
        answer["result"]["structuredContent"]["served_by"],
        "laptop-a"
    );
    assert_eq!(drain_symbols(&mut alice_seen), vec!["A99".to_string()]);

    handle.shutdown().await;
}

#[tokio::test]
async fn a_revoke_from_the_cli_closes_the_live_session_without_waiting_for_a_call() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dev_config(&issuer.url(), dir.path());
    let handle = ibkr_gateway::start(config.clone()).await.unwrap();
    let file = write_config(dir.path(), &config);
    let (alice_key, _) = pair(&handle, "alice", "laptop-a").await;
    let (bob_key, _) = pair(&handle, "bob", "laptop-b").await;
    let mut events = handle.subscribe_sessions();
    let alice_sidecar = FakeSidecar::connect(&handle, &alice_key, "laptop-a").await;
    let bob_sidecar = FakeSidecar::connect(&handle, &bob_key, "laptop-b").await;
    registered_sessions(&mut events, 2).await;
    let mut alice_seen = quoting_sidecar(alice_sidecar, "laptop-a");
    let mut bob_seen = quoting_sidecar(bob_sidecar, "laptop-b");

    let output = run_cli(vec![
        "pairing".into(),
        "revoke".into(),
        "--sidecar-id".into(),
        "laptop-a".into(),
        "--config".into(),
        file.into(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // No call is made: the store poll notices the other process's write and closes it.
    assert_eq!(
        next_seen(&mut alice_seen).await,
        Frame::Close {
            reason: CloseReason::PairingRevoked
        }
    );
    let event = wait_event(&mut events, |e| matches!(e, SessionEvent::Dropped { .. })).await;
    assert_eq!(
        event,
        SessionEvent::Dropped {
            sidecar_id: "laptop-a".into(),
            reason: DropReason::PairingRevoked
        }
    );
    let live: Vec<String> = handle
        .live_sidecars()
        .into_iter()
        .map(|s| s.sidecar_id)
        .collect();
    assert_eq!(live, vec!["laptop-b".to_string()]);
    assert!(bob_seen.try_recv().is_err(), "bob's sidecar was disturbed");

    // The revoked key cannot come back.
    let mut socket = connect(&handle).await;
    let (initiator, msg1) = protocol::handshake::InitiatorHandshake::start(
        &alice_key,
        &handle.public_key(),
        &hello("laptop-a", &handle.instance_id(), unix_ms()),
        &mut rand_core::OsRng,
    )
    .unwrap();
    match send_init(&mut socket, msg1, initiator).await {
        Handshake::Rejected(code) => assert_eq!(code, "SIDECAR_PAIRING_REQUIRED"),
        _ => panic!("a revoked key was let back in"),
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_ending_the_session_from_its_side_is_cut_off_at_once() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let (key, _) = pair(&handle, "alice", "laptop-a").await;
    let mut events = handle.subscribe_sessions();
    let mut sidecar = FakeSidecar::connect(&handle, &key, "laptop-a").await;
    registered_sessions(&mut events, 1).await;

    // The laptop revoked its pairing locally and says goodbye.
    sidecar
        .send(&Frame::Close {
            reason: CloseReason::PairingRevoked,
        })
        .await;
    let event = wait_event(&mut events, |e| matches!(e, SessionEvent::Dropped { .. })).await;
    assert!(
        matches!(event, SessionEvent::Dropped { ref sidecar_id, .. } if sidecar_id == "laptop-a")
    );
    assert!(handle.live_sidecars().is_empty());

    let url = handle.mcp_url();
    let mut alice = McpClient::new(
        &url,
        &issuer.token("alice", &url, &["ibkr:marketdata:read"]),
    );
    alice.initialize().await;
    let answer = quote(&mut alice, "AAPL").await;
    assert_eq!(
        answer["result"]["structuredContent"]["error"]["code"], "SIDECAR_UNAVAILABLE",
        "{answer}"
    );
    handle.shutdown().await;
}
