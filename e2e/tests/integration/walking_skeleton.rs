//! The whole system in one process over real sockets: a real MCP client (rmcp) with real JWTs
//! -> the gateway -> the encrypted relay -> the sidecar daemon -> the CPGW simulator over HTTPS.

use e2e::cpgw_sim::AuthState;
use e2e::system::{System, SystemOptions, WAIT_LIMIT, tool_names, wait_registered};
use ibkr_gateway::{DropReason, SessionEvent};
use protocol::catalog::scopes;
use protocol::frame::Frame;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const READ_SCOPES: &[&str] = &[scopes::HEALTH_READ, scopes::ACCOUNTS_READ];

async fn call(system: &System, token: &str, tool: &str, arguments: Value) -> CallToolResult {
    let client = system.mcp_client(token).await.unwrap();
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = arguments {
        params = params.with_arguments(map);
    }
    let result = client.call_tool(params).await.unwrap();
    let _ = client.cancel().await;
    result
}

fn error_code(result: &CallToolResult) -> String {
    assert_eq!(
        result.is_error,
        Some(true),
        "expected an error result, got {result:?}"
    );
    let structured = result
        .structured_content
        .as_ref()
        .expect("structured error");
    structured["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_connect_and_call_a_tool_through_a_real_mcp_client() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    let token = system.token(READ_SCOPES).unwrap();

    let client = system.mcp_client(&token).await.unwrap();
    let tools = tool_names(&client).await.unwrap();
    assert_eq!(
        tools,
        ["ibkr_health", "ibkr_session_status", "ibkr_accounts_list"]
    );
    let result = client
        .call_tool(CallToolRequestParams::new("ibkr_accounts_list"))
        .await
        .unwrap();
    let _ = client.cancel().await;

    assert_ne!(result.is_error, Some(true), "{result:?}");
    let structured = result.structured_content.expect("structured content");
    assert_eq!(structured["selected_account"], "DU1234567");
    assert_eq!(structured["accounts"][0]["account_id"], "DU1234567");
    assert_eq!(structured["accounts"][0]["trading_mode"], "paper");
    assert_eq!(structured["accounts"][0]["supports_cash_qty"], true);
    // CPGW's session material never reaches the agent.
    let text = structured.to_string();
    assert!(
        !text.contains(&system.sim.session_id()),
        "session id leaked: {text}"
    );
    assert!(
        !text.contains(&system.sim.session_cookie_value()),
        "cookie leaked: {text}"
    );
    assert!(
        !text.contains("serverInfo") && !text.contains("MAC"),
        "{text}"
    );
    // The call really went to the simulator over HTTPS.
    assert!(
        system
            .sim
            .request_log()
            .iter()
            .any(|r| r.path.ends_with("/iserver/accounts"))
    );

    let health = call(&system, &token, "ibkr_health", json!({})).await;
    let health = health.structured_content.unwrap();
    assert_eq!(health["relay"]["connected"], true);
    assert_eq!(health["broker"]["state"], "ready");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpgw_logged_out_answers_manual_local_action() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    system.sim.set_auth_state(AuthState::LoggedOut);
    // Only what happens from the logout on matters: the sidecar warmed its caches before.
    system.sim.clear_request_log();
    let token = system.token(READ_SCOPES).unwrap();

    let result = call(&system, &token, "ibkr_accounts_list", json!({})).await;
    assert_eq!(result.is_error, Some(true));
    let structured = result.structured_content.expect("structured manual action");
    assert_eq!(structured["status"], "manual_action_required");
    assert_eq!(structured["code"], "BROKER_SESSION_REQUIRED");
    let place = structured["where"].as_str().unwrap();
    assert!(
        place.contains(&system.sim.local_addr().port().to_string()),
        "{place}"
    );
    assert!(
        structured["action"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("log in")
    );
    // Nothing tried to log in, and nothing but session checks and reads reached CPGW since the
    // logout. (A read may still be tried while the keep-alive's last "authenticated" is fresh;
    // CPGW answers 401 and the agent gets the same manual action.)
    let session_endpoints = [
        "/iserver/auth/status",
        "/tickle",
        "/iserver/auth/ssodh/init",
    ];
    for request in system.sim.request_log() {
        assert!(
            !request.path.contains("login"),
            "login attempted: {}",
            request.path
        );
        assert!(
            request.method == "GET" || session_endpoints.iter().any(|e| request.path.ends_with(e)),
            "unexpected {} {} while logged out",
            request.method,
            request.path
        );
    }
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_401_with_a_resource_metadata_challenge() {
    let system = System::start(SystemOptions {
        with_sidecar: false,
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let response = reqwest::Client::new()
        .post(system.mcp_url().unwrap())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let metadata_url = format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        system.gateway().unwrap().base_url()
    );
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    assert!(
        !challenge.contains("error="),
        "no token was presented: {challenge}"
    );

    let metadata: Value = reqwest::get(&metadata_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], system.mcp_url().unwrap());
    assert_eq!(
        metadata["authorization_servers"][0],
        system.issuer.issuer_url()
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_the_scope_is_403_insufficient_scope() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    let token = system.token(&[scopes::HEALTH_READ]).unwrap();

    // tools/list hides what the token cannot call.
    let client = system.mcp_client(&token).await.unwrap();
    let names = tool_names(&client).await.unwrap();
    assert!(
        !names.contains(&"ibkr_accounts_list".to_string()),
        "{names:?}"
    );
    let _ = client.cancel().await;

    let response = reqwest::Client::new()
        .post(system.mcp_url().unwrap())
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "ibkr_accounts_list", "arguments": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"ibkr:accounts:read\""),
        "{challenge}"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaired_then_disconnected_sidecar_get_their_own_codes() {
    let mut system = System::start(SystemOptions {
        with_sidecar: false,
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let token = system.token(READ_SCOPES).unwrap();
    let result = call(&system, &token, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&result), "SIDECAR_PAIRING_REQUIRED");

    system.pair_sidecar().await.unwrap();
    let result = call(&system, &token, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&result), "SIDECAR_UNAVAILABLE");
    let structured = result.structured_content.unwrap();
    assert_eq!(structured["error"]["retryable"], true);
    assert!(
        structured["error"]["user_action"]
            .as_str()
            .unwrap()
            .contains("ibkr-agent sidecar run")
    );

    // ibkr_health still answers, and says what is missing.
    let health = call(&system, &token, "ibkr_health", json!({})).await;
    assert_ne!(health.is_error, Some(true));
    assert_eq!(
        health.structured_content.unwrap()["relay"]["connected"],
        false
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sidecar_session_is_dropped_and_calls_say_unavailable() {
    let mut system = System::start(SystemOptions::default()).await.unwrap();
    let mut events = system.gateway().unwrap().subscribe_sessions();
    system.take_sidecar().unwrap().kill().await;

    let dropped = tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            if let Ok(SessionEvent::Dropped { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("the gateway dropped the killed sidecar's session");
    assert!(
        matches!(
            dropped,
            DropReason::PeerClosed | DropReason::HeartbeatTimeout
        ),
        "{dropped:?}"
    );
    assert!(system.gateway().unwrap().live_sidecars().is_empty());
    let token = system.token(READ_SCOPES).unwrap();
    let result = call(&system, &token, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&result), "SIDECAR_UNAVAILABLE");
    system.shutdown().await;
}

/// A sidecar that completes the handshake and then freezes (a laptop that hung with its TCP
/// connection still open): the gateway must notice on its own clock and drop the session within
/// the heartbeat timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_sidecar_is_dropped_within_the_heartbeat_timeout() {
    let mut system = System::start(SystemOptions {
        heartbeat_interval_seconds: 1,
        heartbeat_timeout_seconds: 2,
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    // Replace the real daemon with a hand-driven one holding the same (paired) key.
    let (raw, mut events) = system.replace_sidecar_with_raw().await.unwrap();

    // Freeze: keep the socket open, read nothing, answer nothing.
    let frozen = raw.freeze();
    let reason = tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            if let Ok(SessionEvent::Dropped { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("frozen session dropped");
    // The gateway heard the sidecar last no earlier than its last send, so this is a lower
    // bound on the silence the gateway measured.
    let silence = frozen
        .last_sent_at()
        .expect("the raw sidecar confirmed the handshake")
        .elapsed();
    assert_eq!(reason, DropReason::HeartbeatTimeout);
    assert!(
        silence >= Duration::from_secs(2),
        "dropped before the 2 s heartbeat timeout: {silence:?}"
    );
    // Generous: the point is that the gateway acts on its own clock, not to time a loaded
    // test machine.
    assert!(
        silence < Duration::from_secs(5),
        "dropped long after the 2 s heartbeat timeout: {silence:?}"
    );
    drop(frozen);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_gateway_gets_its_sidecar_back_with_the_pairing_intact() {
    let mut system = System::start(SystemOptions::default()).await.unwrap();
    let token = system.token(READ_SCOPES).unwrap();
    let instance_before = system.gateway().unwrap().instance_id();
    let key_before = system.gateway().unwrap().public_key();

    system.restart_gateway().await.unwrap();
    let gateway = system.gateway().unwrap();
    assert_eq!(gateway.instance_id(), instance_before);
    assert_eq!(gateway.public_key(), key_before);
    let mut events = gateway.subscribe_sessions();
    if gateway.live_sidecars().is_empty() {
        wait_registered(&mut events).await.unwrap();
    }

    let result = call(&system, &token, "ibkr_accounts_list", json!({})).await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(
        result.structured_content.unwrap()["selected_account"],
        "DU1234567"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_to_the_sidecar_carry_no_bearer_token_and_no_cookie() {
    let captured: Arc<Mutex<Vec<Frame>>> = Arc::default();
    let sink = captured.clone();
    let system = System::start(SystemOptions {
        frame_observer: Some(Arc::new(move |frame: &Frame| {
            sink.lock().unwrap().push(frame.clone())
        })),
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let token = system.token(READ_SCOPES).unwrap();
    let result = call(&system, &token, "ibkr_accounts_list", json!({})).await;
    assert_ne!(result.is_error, Some(true), "{result:?}");

    let frames = captured.lock().unwrap().clone();
    let request = frames
        .iter()
        .find_map(|frame| match frame {
            Frame::Request(request) if request.tool_name == "ibkr_accounts_list" => {
                Some(request.clone())
            }
            _ => None,
        })
        .expect("the tool call reached the sidecar as a Request frame");
    assert_eq!(request.scope, "ibkr:accounts:read");
    assert_eq!(request.payload, b"{}");
    assert_eq!(
        request.payload_hash,
        protocol::canonical::payload_hash("ibkr_accounts_list", b"{}")
    );

    // Every frame the gateway sent, as plaintext bytes (before encryption on the wire).
    let plaintext: Vec<u8> = frames
        .iter()
        .flat_map(|frame| frame.encode().unwrap())
        .collect();
    let needles = [
        token.as_bytes().to_vec(),
        token.split('.').nth(2).unwrap().as_bytes().to_vec(), // the signature alone
        b"Bearer".to_vec(),
        b"authorization".to_vec(),
        system.sim.session_cookie_value().into_bytes(),
        b"x-sess-uuid".to_vec(),
    ];
    for needle in needles {
        assert!(
            !plaintext
                .windows(needle.len())
                .any(|window| window == needle.as_slice()),
            "found {:?} in frames sent to the sidecar",
            String::from_utf8_lossy(&needle)
        );
    }
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_relay_connections_use_small_buffers() {
    let gateway = ibkr_gateway::relay_websocket_limits();
    assert_eq!(gateway.read_buffer_size, 4096);
    assert_eq!(gateway.write_buffer_size, 4096);
    assert_eq!(gateway.max_message_size, protocol::limits::MAX_WIRE_MESSAGE);
    let sidecar = ibkr_agent::relay_websocket_config();
    assert_eq!(sidecar.read_buffer_size, 4096);
    assert!(sidecar.write_buffer_size <= 4096);
    assert_eq!(
        sidecar.max_message_size,
        Some(protocol::limits::MAX_WIRE_MESSAGE)
    );
}
