//! The relay and pairing over real loopback sockets, driven by a hand-written sidecar built
//! on the protocol crate.

use crate::common::*;
use ibkr_gateway::{DropReason, SessionEvent};
use protocol::envelope::{Outcome, RelayProgress, RelayResponse};
use protocol::frame::{CloseReason, Frame};
use protocol::handshake::InitiatorHandshake;
use protocol::identity::StaticKeypair;
use protocol::wire::WireMessage;
use rand_core::OsRng;
use serde_json::json;
use std::time::Duration;
use tokio::sync::broadcast::error::TryRecvError;

#[tokio::test]
async fn pairing_exchanges_keys_once_and_refuses_bad_codes() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;

    let code = handle
        .issue_pairing_code("alice", Duration::from_secs(60))
        .await
        .unwrap();
    let key = StaticKeypair::generate(&mut OsRng);

    // A wrong secret under the right code id: refused, and it costs an attempt.
    let wrong = format!("{}-0000-0000", &code[..4]);
    let wrong = if wrong == code {
        format!("{}-1111-1111", &code[..4])
    } else {
        wrong
    };
    assert_eq!(
        pair_with_code(&handle, &wrong, &key, "laptop-1")
            .await
            .unwrap_err(),
        (401, "PAIRING_CODE_INVALID".to_string())
    );

    let info = pair_with_code(&handle, &code, &key, "laptop-1")
        .await
        .unwrap();
    assert_eq!(info.instance_id, "remote-1");
    assert_eq!(info.user_id, "alice");
    assert_eq!(info.static_public, handle.public_key());

    // Single use.
    assert_eq!(
        pair_with_code(&handle, &code, &key, "laptop-1")
            .await
            .unwrap_err(),
        (410, "PAIRING_CODE_USED".to_string())
    );
    // Unknown code id.
    let unknown = if code.starts_with("ZZZZ") {
        "YYYY-2222-2222"
    } else {
        "ZZZZ-2222-2222"
    };
    assert_eq!(
        pair_with_code(&handle, unknown, &key, "laptop-1")
            .await
            .unwrap_err(),
        (401, "PAIRING_CODE_INVALID".to_string())
    );

    // Another key cannot take over an active sidecar id.
    let code = handle
        .issue_pairing_code("alice", Duration::from_secs(60))
        .await
        .unwrap();
    let other = StaticKeypair::generate(&mut OsRng);
    assert_eq!(
        pair_with_code(&handle, &code, &other, "laptop-1")
            .await
            .unwrap_err(),
        (409, "SIDECAR_ID_CONFLICT".to_string())
    );

    // Attempts are limited (5 by default), however many client addresses guess (one address
    // gets two guesses on one code: see tests/integration/pairing.rs).
    let code = handle
        .issue_pairing_code("bob", Duration::from_secs(60))
        .await
        .unwrap();
    let wrong = format!("{}-0000-0000", &code[..4]);
    let other = StaticKeypair::generate(&mut OsRng);
    for address in 10..15 {
        let (status, error) =
            pair_with_code_from(&http_from(address), &handle, &wrong, &other, "laptop-2")
                .await
                .unwrap_err();
        assert_eq!((status, error.as_str()), (401, "PAIRING_CODE_INVALID"));
    }
    assert_eq!(
        pair_with_code_from(&http_from(15), &handle, &code, &other, "laptop-2")
            .await
            .unwrap_err(),
        (429, "PAIRING_ATTEMPTS_EXCEEDED".to_string())
    );

    handle.shutdown().await;
}

#[tokio::test]
async fn handshake_gates_refuse_unpaired_misbound_and_replayed() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;

    // Unpaired key.
    let stranger = StaticKeypair::generate(&mut OsRng);
    let mut socket = connect(&handle).await;
    let (initiator, msg1) = InitiatorHandshake::start(
        &stranger,
        &handle.public_key(),
        &hello("laptop-1", "remote-1", unix_ms()),
        &mut OsRng,
    )
    .unwrap();
    match send_init(&mut socket, msg1, initiator).await {
        Handshake::Rejected(code) => assert_eq!(code, "SIDECAR_PAIRING_REQUIRED"),
        _ => panic!("unpaired key was not refused"),
    }

    // A message 1 for another gateway key does not decrypt.
    let mut socket = connect(&handle).await;
    let wrong_gateway = StaticKeypair::generate(&mut OsRng).public();
    let (initiator, msg1) = InitiatorHandshake::start(
        &stranger,
        &wrong_gateway,
        &hello("laptop-1", "remote-1", unix_ms()),
        &mut OsRng,
    )
    .unwrap();
    match send_init(&mut socket, msg1, initiator).await {
        Handshake::Rejected(code) => assert_eq!(code, "GATEWAY_KEY_MISMATCH"),
        _ => panic!("undecryptable message 1 was not refused"),
    }

    // A sidecar of the previous protocol version, sealing to this gateway's key: told to
    // upgrade, not that the keys disagree.
    let mut socket = connect(&handle).await;
    let mut old_hello = hello("laptop-1", "remote-1", unix_ms());
    old_hello.protocol_version = 2;
    let old = InitiatorHandshake::start_as_version(2, &stranger, &handle.public_key(), &old_hello)
        .unwrap();
    let (unused, _) = InitiatorHandshake::start(
        &stranger,
        &handle.public_key(),
        &hello("laptop-1", "remote-1", unix_ms()),
        &mut OsRng,
    )
    .unwrap();
    match send_init(&mut socket, old, unused).await {
        Handshake::Rejected(code) => assert_eq!(code, "SIDECAR_UPGRADE_REQUIRED"),
        _ => panic!("an older protocol's message 1 was not refused"),
    }

    let (key, _) = pair(&handle, "alice", "laptop-1").await;

    // Paired key, wrong sidecar id or wrong instance.
    for (sidecar_id, instance) in [("laptop-9", "remote-1"), ("laptop-1", "remote-2")] {
        let mut socket = connect(&handle).await;
        let (initiator, msg1) = InitiatorHandshake::start(
            &key,
            &handle.public_key(),
            &hello(sidecar_id, instance, unix_ms()),
            &mut OsRng,
        )
        .unwrap();
        match send_init(&mut socket, msg1, initiator).await {
            Handshake::Rejected(code) => assert_eq!(code, "SIDECAR_SESSION_INVALID"),
            _ => panic!("misbound session was not refused"),
        }
    }

    // A confirmed handshake, then its message 1 replayed.
    let mut socket = connect(&handle).await;
    let (initiator, msg1) = InitiatorHandshake::start(
        &key,
        &handle.public_key(),
        &hello("laptop-1", "remote-1", unix_ms()),
        &mut OsRng,
    )
    .unwrap();
    let recorded = msg1.clone();
    let Handshake::Accepted(initiator, msg2) = send_init(&mut socket, msg1, initiator).await else {
        panic!("paired handshake refused");
    };
    let mut events = handle.subscribe_sessions();
    let (mut transport, _) = initiator.finish(&msg2).unwrap();
    let record = transport.seal(&Frame::Ping { seq: 0 }).unwrap();
    send_wire(&mut socket, &WireMessage::Record(record)).await;
    wait_event(&mut events, |e| {
        matches!(e, SessionEvent::Registered { .. })
    })
    .await;

    let mut attacker = connect(&handle).await;
    send_wire(&mut attacker, &WireMessage::HandshakeInit(recorded)).await;
    match recv_wire(&mut attacker).await {
        Some(WireMessage::HandshakeRejected { code }) => assert_eq!(code, "HANDSHAKE_REPLAYED"),
        other => panic!("replay was not refused: {other:?}"),
    }
    // The live session was not disturbed.
    assert_eq!(handle.live_sidecars().len(), 1);

    handle.shutdown().await;
}

#[tokio::test]
async fn a_session_registers_only_after_key_confirmation() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();

    let mut socket = connect(&handle).await;
    let (initiator, msg1) = InitiatorHandshake::start(
        &key,
        &handle.public_key(),
        &hello("laptop-1", "remote-1", unix_ms()),
        &mut OsRng,
    )
    .unwrap();
    let Handshake::Accepted(initiator, msg2) = send_init(&mut socket, msg1, initiator).await else {
        panic!("paired handshake refused");
    };
    let (mut transport, server_hello) = initiator.finish(&msg2).unwrap();
    assert_eq!(server_hello.instance_id, "remote-1");
    assert_eq!(server_hello.heartbeat_interval_ms, 15_000);
    assert_eq!(server_hello.heartbeat_timeout_ms, 45_000);
    // Message 2 is out, but nothing is registered until a record decrypts.
    assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
    assert!(handle.live_sidecars().is_empty());

    let record = transport.seal(&Frame::Ping { seq: 7 }).unwrap();
    send_wire(&mut socket, &WireMessage::Record(record)).await;
    let event = wait_event(&mut events, |_| true).await;
    assert_eq!(
        event,
        SessionEvent::Registered {
            sidecar_id: "laptop-1".into(),
            user_id: "alice".into()
        }
    );
    let live = handle.live_sidecars();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].sidecar_id, "laptop-1");
    assert_eq!(live[0].user_id, "alice");
    // The confirming ping is answered.
    match recv_wire(&mut socket).await {
        Some(WireMessage::Record(record)) => {
            assert_eq!(transport.open(&record).unwrap(), Frame::Pong { seq: 7 })
        }
        other => panic!("expected a pong, got {other:?}"),
    }

    // A record that fails to decrypt closes the connection and drops the session.
    let mut forged = transport.seal(&Frame::Ping { seq: 8 }).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    send_wire(&mut socket, &WireMessage::Record(forged)).await;
    let event = wait_event(&mut events, |e| matches!(e, SessionEvent::Dropped { .. })).await;
    assert_eq!(
        event,
        SessionEvent::Dropped {
            sidecar_id: "laptop-1".into(),
            reason: DropReason::ProtocolError
        }
    );
    assert!(recv_wire(&mut socket).await.is_none());
    handle.shutdown().await;
}

#[tokio::test]
async fn tool_calls_travel_to_the_sidecar_and_back() {
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

    // The fake sidecar answers pings and tool calls until the socket closes.
    let sidecar_task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(frame) = sidecar.recv().await {
            match frame {
                Frame::Ping { seq } => sidecar.send(&Frame::Pong { seq }).await,
                Frame::Request(request) => {
                    request.validate().unwrap();
                    seen.push((request.tool_name.clone(), request.arguments().unwrap()));
                    let json = match request.tool_name.as_str() {
                        "ibkr_health" => {
                            json!({"sidecar": {"status": "ok"}, "broker": {"authenticated": true}, "gateway": "spoofed"})
                        }
                        _ => {
                            json!({"accounts": ["DU123"], "selectedAccount": "DU123", "cookie": "leak"})
                        }
                    };
                    sidecar
                        .send(&Frame::Progress(RelayProgress {
                            request_id: request.request_id,
                            progress: 1.0,
                            total: Some(2.0),
                            message: Some("working".into()),
                        }))
                        .await;
                    sidecar
                        .send(&Frame::Response(RelayResponse {
                            journal: None,
                            request_id: request.request_id,
                            outcome: Outcome::Result {
                                json: json.to_string(),
                            },
                        }))
                        .await;
                }
                Frame::Pong { .. } | Frame::GoAway { .. } | Frame::Close { .. } => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
        seen
    });

    let token = issuer.token(
        "alice",
        &handle.mcp_url(),
        &["ibkr:health:read", "ibkr:accounts:read"],
    );
    let mut client = McpClient::new(&handle.mcp_url(), &token);
    client.initialize().await;

    let accounts = client
        .request(
            "tools/call",
            json!({"name": "ibkr_accounts_list", "arguments": {}, "_meta": {"progressToken": "p1"}}),
        )
        .await;
    let result = &accounts["result"];
    assert_eq!(result["isError"], json!(false), "{accounts}");
    assert_eq!(result["structuredContent"]["accounts"], json!(["DU123"]));
    // Session material is stripped again at the gateway.
    assert!(result["structuredContent"].get("cookie").is_none());
    let text = result["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(text).unwrap(),
        result["structuredContent"]
    );

    let health = client
        .request(
            "tools/call",
            json!({"name": "ibkr_health", "arguments": {}}),
        )
        .await;
    let structured = &health["result"]["structuredContent"];
    assert_eq!(structured["relay"]["connected"], json!(true), "{health}");
    assert_eq!(structured["relay"]["sidecar_id"], "laptop-1");
    assert_eq!(structured["broker"]["authenticated"], json!(true));
    assert_eq!(structured["sidecar"]["status"], "ok");
    // The sidecar cannot overwrite the gateway's own report.
    assert_eq!(structured["gateway"]["status"], "ok");

    // Sensitive material never leaves the gateway.
    let refused = client
        .request(
            "tools/call",
            json!({"name": "ibkr_accounts_list", "arguments": {"authorization": "Bearer x"}}),
        )
        .await;
    assert_eq!(refused["result"]["isError"], json!(true));
    let error = &refused["result"]["structuredContent"]["error"];
    assert_eq!(error["code"], "SENSITIVE_MATERIAL_REFUSED");
    assert!(!error["message"].as_str().unwrap().contains("Bearer x"));

    // A user without a pairing gets the pairing gate.
    let token = issuer.token("mallory", &handle.mcp_url(), &["ibkr:accounts:read"]);
    let mut other = McpClient::new(&handle.mcp_url(), &token);
    other.initialize().await;
    let refused = other
        .request(
            "tools/call",
            json!({"name": "ibkr_accounts_list", "arguments": {}}),
        )
        .await;
    assert_eq!(
        refused["result"]["structuredContent"]["error"]["code"],
        "SIDECAR_PAIRING_REQUIRED"
    );

    handle.shutdown().await;
    let seen = sidecar_task.await.unwrap();
    let tools: Vec<&str> = seen.iter().map(|(tool, _)| tool.as_str()).collect();
    assert_eq!(tools, vec!["ibkr_accounts_list", "ibkr_health"]);
}

#[tokio::test]
async fn silent_sidecars_are_dropped_after_the_heartbeat_timeout() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.sidecar.heartbeat_interval_seconds = 1;
    config.sidecar.heartbeat_timeout_seconds = 2;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let mut sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    assert_eq!(sidecar.server_hello.heartbeat_timeout_ms, 2000);

    // The gateway pings on its interval; the sidecar never answers.
    assert!(matches!(sidecar.recv().await, Some(Frame::Pong { seq: 0 })));
    assert!(matches!(sidecar.recv().await, Some(Frame::Ping { .. })));
    let event = wait_event(&mut events, |e| matches!(e, SessionEvent::Dropped { .. })).await;
    assert_eq!(
        event,
        SessionEvent::Dropped {
            sidecar_id: "laptop-1".into(),
            reason: DropReason::HeartbeatTimeout
        }
    );
    loop {
        match sidecar.recv().await {
            Some(Frame::Ping { .. }) => continue,
            Some(Frame::Close { reason }) => {
                assert_eq!(reason, CloseReason::HeartbeatTimeout);
                break;
            }
            other => panic!("expected Close, got {other:?}"),
        }
    }
    assert!(handle.live_sidecars().is_empty());
    handle.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_go_away_and_a_restart_keeps_pairings() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let port = handle.local_addr().port();
    let public_key = handle.public_key();
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let mut sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    wait_event(&mut events, |e| {
        matches!(e, SessionEvent::Registered { .. })
    })
    .await;
    assert!(matches!(sidecar.recv().await, Some(Frame::Pong { seq: 0 })));

    handle.shutdown().await;
    assert_eq!(
        sidecar.recv().await,
        Some(Frame::GoAway {
            retry_after_ms: 1000,
            reason: CloseReason::Shutdown
        })
    );
    assert_eq!(
        sidecar.recv().await,
        Some(Frame::Close {
            reason: CloseReason::Shutdown
        })
    );
    let event = wait_event(&mut events, |e| matches!(e, SessionEvent::Dropped { .. })).await;
    assert_eq!(
        event,
        SessionEvent::Dropped {
            sidecar_id: "laptop-1".into(),
            reason: DropReason::Shutdown
        }
    );

    // Same state dir, same port: same identity, pairing intact.
    let mut config = dev_config(&issuer.url(), dir.path());
    config.listen = format!("127.0.0.1:{port}");
    config.public_base_url = format!("http://127.0.0.1:{port}");
    config.sidecar.remote_relay_url = Some(format!("ws://127.0.0.1:{port}/relay"));
    let handle = ibkr_gateway::start(config).await.unwrap();
    assert_eq!(handle.local_addr().port(), port);
    assert_eq!(handle.public_key(), public_key);
    let mut events = handle.subscribe_sessions();
    let _sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    wait_event(&mut events, |e| {
        matches!(e, SessionEvent::Registered { .. })
    })
    .await;

    // Revocation closes the live session.
    assert!(handle.revoke_pairing("laptop-1").await.unwrap());
    let event = wait_event(&mut events, |e| matches!(e, SessionEvent::Dropped { .. })).await;
    assert_eq!(
        event,
        SessionEvent::Dropped {
            sidecar_id: "laptop-1".into(),
            reason: DropReason::PairingRevoked
        }
    );
    handle.shutdown().await;
}

/// Runs a fake sidecar that answers pings and reports every other frame on a channel.
fn spawn_recording_sidecar(
    mut sidecar: FakeSidecar,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<Frame>,
    tokio::sync::mpsc::UnboundedSender<Frame>,
) {
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (send_tx, mut send_rx) = tokio::sync::mpsc::unbounded_channel::<Frame>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                frame = sidecar.recv() => match frame {
                    Some(Frame::Ping { seq }) => sidecar.send(&Frame::Pong { seq }).await,
                    Some(Frame::Pong { .. }) => {}
                    Some(other) => { let _ = seen_tx.send(other); }
                    None => break,
                },
                Some(frame) = send_rx.recv() => sidecar.send(&frame).await,
            }
        }
    });
    (seen_rx, send_tx)
}

async fn next_seen(seen: &mut tokio::sync::mpsc::UnboundedReceiver<Frame>) -> Frame {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("timed out waiting for a frame at the sidecar")
        .expect("sidecar stopped")
}

#[tokio::test]
async fn timed_out_overloaded_and_cancelled_calls() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.sidecar.request_timeout_seconds = 1;
    config.sidecar.max_in_flight_per_sidecar = 1;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    wait_event(&mut events, |e| {
        matches!(e, SessionEvent::Registered { .. })
    })
    .await;
    let (mut seen, _send) = spawn_recording_sidecar(sidecar);

    let token = issuer.token("alice", &handle.mcp_url(), &["ibkr:accounts:read"]);
    let mut client = McpClient::new(&handle.mcp_url(), &token);
    client.initialize().await;
    let call = json!({"name": "ibkr_accounts_list", "arguments": {}});

    // A call the sidecar never answers times out, and the sidecar is told to cancel it.
    let mut first = client.clone();
    let params = call.clone();
    let timed_out =
        tokio::spawn(async move { first.request_with_id(100, "tools/call", params).await });
    let Frame::Request(request) = next_seen(&mut seen).await else {
        panic!("expected the request");
    };
    // While it is in flight, the in-flight bound (1) refuses another call.
    let overloaded = client
        .request_with_id(101, "tools/call", call.clone())
        .await;
    assert_eq!(
        overloaded["result"]["structuredContent"]["error"]["code"],
        "RELAY_OVERLOADED"
    );
    let timed_out = timed_out.await.unwrap();
    assert_eq!(
        timed_out["result"]["structuredContent"]["error"]["code"],
        "REQUEST_TIMEOUT"
    );
    assert_eq!(
        next_seen(&mut seen).await,
        Frame::Cancel {
            request_id: request.request_id
        }
    );

    // A call the MCP client cancels is cancelled at the sidecar too.
    let mut second = client.clone();
    let params = call.clone();
    let _pending =
        tokio::spawn(async move { second.request_with_id(102, "tools/call", params).await });
    let Frame::Request(request) = next_seen(&mut seen).await else {
        panic!("expected the request");
    };
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 102, "reason": "user gave up"}});
    assert!(
        client
            .post(&cancel)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert_eq!(
        next_seen(&mut seen).await,
        Frame::Cancel {
            request_id: request.request_id
        }
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn sessions_renew_through_the_channel_and_expire_otherwise() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.sidecar.heartbeat_interval_seconds = 1;
    config.sidecar.heartbeat_timeout_seconds = 2;
    config.sidecar.session_ttl_seconds = 3;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    assert_eq!(sidecar.server_hello.session_ttl_ms, 3000);
    wait_event(&mut events, |e| {
        matches!(e, SessionEvent::Registered { .. })
    })
    .await;
    let (mut seen, send) = spawn_recording_sidecar(sidecar);

    send.send(Frame::RenewSession).unwrap();
    assert_eq!(
        next_seen(&mut seen).await,
        Frame::SessionRenewed {
            expires_in_ms: 3000
        }
    );
    // Heartbeats keep it alive, but nothing renews it again: it expires.
    assert_eq!(
        next_seen(&mut seen).await,
        Frame::Close {
            reason: CloseReason::SessionExpired
        }
    );
    let event = wait_event(&mut events, |e| matches!(e, SessionEvent::Dropped { .. })).await;
    assert_eq!(
        event,
        SessionEvent::Dropped {
            sidecar_id: "laptop-1".into(),
            reason: DropReason::SessionExpired
        }
    );
    handle.shutdown().await;
}
