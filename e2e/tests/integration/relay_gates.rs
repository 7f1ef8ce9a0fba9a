//! The seed contract's five gates, end to end, each refusing with its own stable code:
//! 1. remote MCP OAuth validates the client token (AUTH_*);
//! 2. the local sidecar has an explicit pairing record for the remote instance
//!    (SIDECAR_PAIRING_REQUIRED, also when revoked on either side);
//! 3. the relay session is bound to the paired sidecar id (SIDECAR_SESSION_INVALID);
//! 4. heartbeat valid and session unexpired (SIDECAR_HEARTBEAT_STALE, SIDECAR_SESSION_EXPIRED);
//! 5. the local CPGW session is usable, else a manual local action (BROKER_SESSION_REQUIRED).

use e2e::cpgw_sim::AuthState;
use e2e::raw_sidecar::{Claims, Handshake, RawSidecar};
use e2e::system::{System, SystemOptions, WAIT_LIMIT};
use ibkr_gateway::{DropReason, SessionEvent};
use protocol::catalog::scopes;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const READ_SCOPES: &[&str] = &[scopes::HEALTH_READ, scopes::ACCOUNTS_READ];

async fn call(system: &System, token: &str, tool: &str) -> CallToolResult {
    let client = system.mcp_client(token).await.unwrap();
    let result = client
        .call_tool(CallToolRequestParams::new(tool.to_string()))
        .await
        .unwrap();
    let _ = client.cancel().await;
    result
}

fn error_code(result: &CallToolResult) -> String {
    assert_eq!(
        result.is_error,
        Some(true),
        "expected an error result, got {result:?}"
    );
    result.structured_content.as_ref().unwrap()["error"]["code"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_dropped(events: &mut broadcast::Receiver<SessionEvent>) -> DropReason {
    tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            if let Ok(SessionEvent::Dropped { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("session dropped")
}

async fn raw_post(system: &System, token: Option<&str>, body: Value) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .post(system.mcp_url().unwrap())
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_1_remote_mcp_oauth_refuses_bad_tokens_with_auth_codes() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});

    let (status, challenge, body) = raw_post(&system, None, list.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("AUTH_REQUIRED")),
        "{challenge}"
    );

    let token = system.token(READ_SCOPES).unwrap();
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (status, challenge, body) = raw_post(&system, Some(&forged), list.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("AUTH_INVALID_TOKEN"))
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    // No oracle: the client is not told why the token failed.
    assert!(
        !body.to_string().to_lowercase().contains("signature"),
        "{body}"
    );

    let narrow = system.token(&[scopes::HEALTH_READ]).unwrap();
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "ibkr_accounts_list", "arguments": {}}});
    let (status, challenge, body) = raw_post(&system, Some(&narrow), call).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("AUTH_INSUFFICIENT_SCOPE"))
    );
    assert!(
        challenge.contains("scope=\"ibkr:accounts:read\""),
        "{challenge}"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_2_pairing_revoked_on_the_gateway_refuses() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    let token = system.token(READ_SCOPES).unwrap();
    let sidecar_id = system.gateway().unwrap().live_sidecars()[0]
        .sidecar_id
        .clone();
    assert!(
        system
            .gateway()
            .unwrap()
            .revoke_pairing(&sidecar_id)
            .await
            .unwrap()
    );
    assert_eq!(
        error_code(&call(&system, &token, "ibkr_accounts_list").await),
        "SIDECAR_PAIRING_REQUIRED"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_2_pairing_revoked_on_the_laptop_refuses() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    let token = system.token(READ_SCOPES).unwrap();
    let store = ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap();
    let pairing = store.pairings().unwrap().remove(0);
    assert!(
        store
            .revoke_pairing(
                &pairing.remote_instance_id,
                &pairing.sidecar_id,
                ibkr_agent::clock::now_unix_seconds()
            )
            .unwrap()
    );
    // The sidecar re-reads its local pairing on every request (and drops the session on its
    // next heartbeat): either way the agent is told that pairing is required.
    assert_eq!(
        error_code(&call(&system, &token, "ibkr_accounts_list").await),
        "SIDECAR_PAIRING_REQUIRED"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_3_sessions_for_another_sidecar_id_or_instance_are_refused() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    let relay = system.gateway().unwrap().relay_url();
    for claims in [
        Claims {
            sidecar_id: Some("sidecar-someone-else".into()),
            ..Claims::default()
        },
        Claims {
            remote_instance_id: Some("remote-other".into()),
            ..Claims::default()
        },
    ] {
        match RawSidecar::connect(system.sidecar_state_dir(), &relay, claims.clone())
            .await
            .unwrap()
        {
            Handshake::Rejected { code } => {
                assert_eq!(code, "SIDECAR_SESSION_INVALID", "{claims:?}")
            }
            Handshake::Accepted(_) => {
                panic!("a session bound to the wrong identity was accepted: {claims:?}")
            }
        }
    }
    // The genuine session was not disturbed.
    let token = system.token(READ_SCOPES).unwrap();
    assert_ne!(
        call(&system, &token, "ibkr_accounts_list").await.is_error,
        Some(true)
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_4_stale_heartbeat_is_refused_with_its_own_code() {
    let mut system = System::start(SystemOptions {
        heartbeat_interval_seconds: 1,
        heartbeat_timeout_seconds: 2,
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let (raw, mut events) = system.replace_sidecar_with_raw().await.unwrap();
    let frozen = raw.freeze();
    assert_eq!(
        wait_dropped(&mut events).await,
        DropReason::HeartbeatTimeout
    );

    let token = system.token(READ_SCOPES).unwrap();
    assert_eq!(
        error_code(&call(&system, &token, "ibkr_accounts_list").await),
        "SIDECAR_HEARTBEAT_STALE"
    );
    drop(frozen);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_4_expired_session_is_refused_with_its_own_code() {
    let mut system = System::start(SystemOptions {
        heartbeat_interval_seconds: 1,
        heartbeat_timeout_seconds: 2,
        session_ttl_seconds: 3,
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let (raw, mut events) = system.replace_sidecar_with_raw().await.unwrap();
    // Alive (answers every ping) but never renews: only the session TTL can end it.
    let pinger = tokio::spawn(raw.answer_pings_only());
    assert_eq!(wait_dropped(&mut events).await, DropReason::SessionExpired);

    let token = system.token(READ_SCOPES).unwrap();
    assert_eq!(
        error_code(&call(&system, &token, "ibkr_accounts_list").await),
        "SIDECAR_SESSION_EXPIRED"
    );
    pinger.abort();
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_5_broker_login_needed_is_a_manual_local_action_for_the_agent() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    let token = system.token(READ_SCOPES).unwrap();
    for state in [AuthState::LoggedOut, AuthState::ConnectedOnly] {
        system.sim.set_auth_state(state);
        system.sim.set_ssodh_init_fails(true);
        let result = call(&system, &token, "ibkr_session_status").await;
        assert_eq!(result.is_error, Some(true), "{state:?}");
        let manual = result.structured_content.unwrap();
        assert_eq!(manual["status"], "manual_action_required", "{state:?}");
        assert_eq!(manual["code"], "BROKER_SESSION_REQUIRED", "{state:?}");
        // The text content tells a person the same thing.
        let text = format!("{:?}", result.content);
        assert!(text.contains("BROKER_SESSION_REQUIRED"), "{text}");
    }
    // No login was ever attempted.
    assert!(
        system
            .sim
            .request_log()
            .iter()
            .all(|request| !request.path.contains("login"))
    );
    system.shutdown().await;
}
