//! The daemon against a fake gateway and a fake CPGW, over real loopback sockets.

use crate::common::*;
use ibkr_agent::state::StateStore;
use ibkr_agent::{DaemonOptions, SidecarConfig, run_daemon};
use protocol::envelope::{Outcome, RelayResponse};
use protocol::frame::{CloseReason, Frame};
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use shared_safety::scope::ScopeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

struct Running {
    shutdown: CancellationToken,
    daemon: tokio::task::JoinHandle<Result<(), ibkr_agent::DaemonError>>,
    observed: Arc<Mutex<Vec<Frame>>>,
}

/// A programmatic configuration: exactly what a caller must set, plus fast reconnects.
fn config(gateway: &FakeGateway, cpgw_url: &str, max_concurrent: usize) -> SidecarConfig {
    let mut config = SidecarConfig::default();
    config.sidecar.enabled = true;
    config.safety.sidecar_enabled = true;
    config.sidecar.remote_relay_url = Some(gateway.relay_url());
    config.sidecar.local_client_portal_base_url = cpgw_url.to_string();
    config.sidecar.max_concurrent_requests = max_concurrent;
    config.sidecar.reconnect_initial_delay_ms = 10;
    config.sidecar.reconnect_max_delay_ms = 50;
    config
}

fn start(dir: &Path, config: SidecarConfig) -> Running {
    let observed = Arc::new(Mutex::new(Vec::new()));
    let sink = observed.clone();
    let options = DaemonOptions {
        state_dir: dir.to_path_buf(),
        config,
        frame_observer: Some(Arc::new(move |frame: &Frame| {
            sink.lock().unwrap().push(frame.clone());
        })),
        market_clock: ibkr_agent::market_clock::MarketClock::system(),
        released: None,
    };
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(run_daemon(options, shutdown.clone()));
    Running {
        shutdown,
        daemon,
        observed,
    }
}

impl Running {
    async fn stop(self, connection: &mut GatewayConnection) {
        self.shutdown.cancel();
        // The sidecar says goodbye before closing.
        loop {
            match connection.recv().await {
                Some(Frame::Close { reason }) => {
                    assert_eq!(reason, CloseReason::Shutdown);
                    break;
                }
                Some(_) => continue,
                None => panic!("websocket closed without a Close frame"),
            }
        }
        within(self.daemon).await.unwrap().unwrap();
    }
}

fn result_json(response: &RelayResponse) -> Value {
    match &response.outcome {
        Outcome::Result { json } => serde_json::from_str(json).unwrap(),
        other => panic!("expected a result, got {other:?}"),
    }
}

fn refusal_code(response: &RelayResponse) -> String {
    match &response.outcome {
        Outcome::Refused(body) | Outcome::Failed(body) => body.code.clone(),
        Outcome::ManualActionRequired(action) => action.code.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_calls_over_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    let sidecar_id = provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));

    let mut connection = gateway.accept().await;
    assert_eq!(connection.client_hello.sidecar_id, sidecar_id);
    assert_eq!(connection.client_hello.remote_instance_id, INSTANCE_ID);
    // The first record is the key confirmation: the sidecar's status.
    match connection.recv().await {
        Some(Frame::SidecarStatus(status)) => {
            assert_eq!(status.sidecar_version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("expected SidecarStatus first, got {other:?}"),
    }

    // Heartbeat from the gateway is answered.
    connection.send(&Frame::Ping { seq: 41 }).await;
    loop {
        match connection.recv().await.unwrap() {
            Frame::Pong { seq } => {
                assert_eq!(seq, 41);
                break;
            }
            Frame::SidecarStatus(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }

    let health = connection
        .call(1, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    let health = result_json(&health);
    assert_eq!(health["sidecar"]["sidecar_id"], sidecar_id.as_str());
    assert_eq!(health["broker"]["state"], "ready");
    assert_eq!(health["broker"]["next_step"], Value::Null);

    let accounts = connection
        .call(2, "ibkr_accounts_list", "ibkr:accounts:read", json!({}))
        .await;
    let accounts = result_json(&accounts);
    assert_eq!(
        accounts,
        json!({
            "selected_account": "DU1234567",
            "accounts": [{
                "account_id": "DU1234567",
                "trading_mode": "paper",
                "supports_cash_qty": true,
                "supports_fractions": false,
            }]
        })
    );

    let status = connection
        .call(3, "ibkr_session_status", "ibkr:health:read", json!({}))
        .await;
    let status = result_json(&status);
    assert_eq!(status["account_id"], "DU1234567");
    assert_eq!(status["trading_mode"], "paper");
    assert_eq!(status["posture"]["safe_to_trade"], true);
    assert_eq!(status["posture"]["dry_run"], true);
    assert_eq!(status["posture"]["live_trading_allowed"], false);

    // Gates on the sidecar's side.
    let unknown = connection
        .call(
            4,
            "ibkr_accounts_list",
            "ibkr:accounts:read",
            json!({"extra": 1}),
        )
        .await;
    assert_eq!(refusal_code(&unknown), "ARGUMENTS_INVALID");
    let sensitive = connection
        .call(
            5,
            "ibkr_accounts_list",
            "ibkr:accounts:read",
            json!({"cookie": "x=1"}),
        )
        .await;
    assert_eq!(refusal_code(&sensitive), "SENSITIVE_MATERIAL_REFUSED");
    let unknown_tool = connection
        .call(6, "ibkr_launch_rockets", "ibkr:orders:preview", json!({}))
        .await;
    assert_eq!(refusal_code(&unknown_tool), "TOOL_UNKNOWN");

    // The observer saw exactly what the gateway sent.
    let observed = running.observed.lock().unwrap().clone();
    assert!(observed.contains(&Frame::Ping { seq: 41 }));
    assert!(
        observed
            .iter()
            .any(|f| matches!(f, Frame::Request(r) if r.tool_name == "ibkr_health"))
    );

    // `ibkr-agent sidecar pairing revoke` (another process on the same store) applies to the
    // very next call.
    let state_dir = dir.path().to_path_buf();
    let revoked_id = sidecar_id.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["sidecar", "pairing", "revoke", "--json"])
            .args([
                "--remote-instance-id",
                INSTANCE_ID,
                "--sidecar-id",
                &revoked_id,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let revoked: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(revoked["status"], "revoked");
    let store = StateStore::open(dir.path()).unwrap();
    let after_revoke = connection
        .call(7, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    assert_eq!(refusal_code(&after_revoke), "SIDECAR_PAIRING_REQUIRED");

    // The relay session was recorded.
    let sessions = store.relay_sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].session_id, "5a".repeat(16));
    assert_eq!(sessions[0].remote_instance_id, INSTANCE_ID);

    running.stop(&mut connection).await;
    let sessions = store.relay_sessions().unwrap();
    assert!(sessions[0].closed_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_never_carry_session_material() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));
    let mut connection = gateway.accept().await;
    for (id, tool, scope) in [
        (1, "ibkr_health", "ibkr:health:read"),
        (2, "ibkr_session_status", "ibkr:health:read"),
        (3, "ibkr_accounts_list", "ibkr:accounts:read"),
    ] {
        let response = connection.call(id, tool, scope, json!({})).await;
        let Outcome::Result { json } = &response.outcome else {
            panic!("{tool}: {:?}", response.outcome);
        };
        for needle in [
            "must-not-leak",
            "abcdef",
            "serverInfo",
            "MAC",
            "00:11",
            "session\"",
        ] {
            assert!(!json.contains(needle), "{tool} leaked {needle}: {json}");
        }
    }
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_out_broker_needs_a_person_and_unreachable_broker_fails() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::LoggedOut).await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));
    let mut connection = gateway.accept().await;

    let response = connection
        .call(1, "ibkr_accounts_list", "ibkr:accounts:read", json!({}))
        .await;
    let Outcome::ManualActionRequired(action) = &response.outcome else {
        panic!("expected a manual action, got {:?}", response.outcome);
    };
    assert_eq!(action.code, "BROKER_SESSION_REQUIRED");
    assert!(action.action.contains("Nothing logs in for you"));
    let origin = cpgw.base_url.trim_end_matches("/v1/api");
    assert_eq!(
        action.location,
        format!("{origin} on the laptop running the sidecar")
    );

    // Health reports the state instead of asking for the action.
    let health = connection
        .call(2, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    let health = result_json(&health);
    assert_eq!(health["broker"]["state"], "login_required");
    assert!(
        health["broker"]["next_step"]
            .as_str()
            .unwrap()
            .contains(origin)
    );
    // A logged-out CPGW is never "reopened": ssodh/init is only for connected sessions, and
    // no login endpoint exists to be called.
    assert_eq!(cpgw.shared.counters.lock().unwrap().ssodh_inits, 0);
    running.stop(&mut connection).await;

    // Now with nothing listening where CPGW should be.
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &dead_cpgw_url(), 8));
    let mut connection = gateway.accept().await;
    let response = connection
        .call(1, "ibkr_session_status", "ibkr:health:read", json!({}))
        .await;
    assert_eq!(refusal_code(&response), "BROKER_UNREACHABLE");
    assert!(matches!(response.outcome, Outcome::Failed(_)));
    let health = connection
        .call(2, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    assert_eq!(result_json(&health)["broker"]["state"], "unreachable");
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_scopes_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    provision(
        dir.path(),
        &gateway,
        ScopeSet::from_list(&["ibkr:health:read"]),
    );
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));
    let mut connection = gateway.accept().await;
    let response = connection
        .call(1, "ibkr_accounts_list", "ibkr:accounts:read", json!({}))
        .await;
    assert_eq!(refusal_code(&response), "SCOPE_NOT_GRANTED_LOCALLY");
    // Nothing reached CPGW for the refused call.
    assert_eq!(cpgw.shared.counters.lock().unwrap().accounts, 0);
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once_and_cancel_frees_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let mut cpgw = FakeCpgw::start(Login::LoggedIn).await;
    *cpgw.shared.block_accounts.lock().unwrap() = true;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 1));
    let mut connection = gateway.accept().await;

    // A occupies the only slot (its CPGW call is held).
    let first = connection
        .send_request(1, "ibkr_accounts_list", "ibkr:accounts:read", json!({}))
        .await;
    assert_eq!(within(cpgw.events.recv()).await, Some("entered"));
    // B is refused immediately.
    let second = connection
        .call(2, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    assert_eq!(refusal_code(&second), "RELAY_OVERLOADED");

    // Cancelling A aborts its task (its CPGW request is dropped) and answers nothing.
    connection.send(&Frame::Cancel { request_id: first }).await;
    assert_eq!(within(cpgw.events.recv()).await, Some("dropped"));
    let third = connection
        .call(3, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    assert!(matches!(third.outcome, Outcome::Result { .. }), "{third:?}");

    // With the slot free again, a held call completes when CPGW answers.
    let fourth = connection
        .send_request(4, "ibkr_accounts_list", "ibkr:accounts:read", json!({}))
        .await;
    assert_eq!(within(cpgw.events.recv()).await, Some("entered"));
    cpgw.shared.release.notify_one();
    let response = connection.expect_response().await;
    assert_eq!(response.request_id, fourth);
    assert!(matches!(response.outcome, Outcome::Result { .. }));
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_and_close_lead_to_a_fresh_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));

    let mut connection = gateway.accept().await;
    let first_timestamp = connection.client_hello.timestamp_ms;
    connection
        .send(&Frame::GoAway {
            retry_after_ms: 0,
            reason: CloseReason::Replaced,
        })
        .await;
    let mut connection = gateway.accept().await;
    let second_timestamp = connection.client_hello.timestamp_ms;
    assert!(second_timestamp > first_timestamp);

    connection
        .send(&Frame::Close {
            reason: CloseReason::SessionExpired,
        })
        .await;
    let connection = gateway.accept().await;
    assert!(connection.client_hello.timestamp_ms > second_timestamp);

    // A refused handshake is retried too (slowly when it needs a person).
    drop(connection);
    gateway.reject("HANDSHAKE_REPLAYED").await;
    let mut connection = gateway.accept().await;
    let health = connection
        .call(1, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    assert!(matches!(health.outcome, Outcome::Result { .. }));
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_renewal_is_requested_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = FakeGateway::start().await;
    // Short enough that the renewal point (2/3) comes quickly, long enough for no expiry.
    gateway.session_ttl_ms = 3_000;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));
    let mut connection = gateway.accept().await;
    match connection.recv_significant().await {
        Some(Frame::RenewSession) => {}
        other => panic!("expected RenewSession, got {other:?}"),
    }
    connection
        .send(&Frame::SessionRenewed {
            expires_in_ms: 3_600_000,
        })
        .await;
    let health = connection
        .call(1, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    assert!(
        matches!(health.outcome, Outcome::Result { .. }),
        "{health:?}"
    );
    running.stop(&mut connection).await;
}

#[tokio::test]
async fn startup_fails_closed_before_dialing() {
    let gateway = FakeGateway::start().await;
    let valid = config(&gateway, "https://localhost:5000/v1/api", 8);

    // No identity.
    let dir = tempfile::tempdir().unwrap();
    let error = run_daemon(
        DaemonOptions::new(dir.path().to_path_buf(), valid.clone()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::IdentityMissing);

    // Identity but no pairing.
    ibkr_agent::create_identity(dir.path(), "laptop", None, None).unwrap();
    let error = run_daemon(
        DaemonOptions::new(dir.path().to_path_buf(), valid.clone()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::SidecarPairingRequired);

    // Only a `pairing create` record (no pinned gateway key): nothing to authenticate.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
        .arg("--state-dir")
        .arg(dir.path())
        .args([
            "sidecar",
            "pairing",
            "create",
            "--remote-instance-id",
            "remote-1",
        ])
        .args([
            "--user-id",
            "local-user",
            "--ttl-seconds",
            "300",
            "--sidecar-id",
        ])
        .arg(
            StateStore::open(dir.path())
                .unwrap()
                .identity()
                .unwrap()
                .unwrap()
                .sidecar_id,
        )
        .output()
        .unwrap();
    assert!(output.status.success());
    let error = run_daemon(
        DaemonOptions::new(dir.path().to_path_buf(), valid.clone()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::SidecarPairingRequired);
    assert!(error.detail().unwrap().contains("pairing create"));

    // Relay disabled by the safety switch.
    let dir = tempfile::tempdir().unwrap();
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let mut disabled = valid.clone();
    disabled.safety.sidecar_enabled = false;
    let error = run_daemon(
        DaemonOptions::new(dir.path().to_path_buf(), disabled),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::ConfigSidecarForbidden);

    // The default programmatic configuration is not a runnable one.
    let error = run_daemon(
        DaemonOptions::new(dir.path().to_path_buf(), SidecarConfig::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::ConfigSidecarForbidden);

    // An identity holding only a public key cannot run.
    let dir = tempfile::tempdir().unwrap();
    let public = protocol::identity::StaticKeypair::from_secret_bytes([4; 32]).public();
    ibkr_agent::create_identity(dir.path(), "laptop", None, Some(&public.to_hex())).unwrap();
    let error = run_daemon(
        DaemonOptions::new(dir.path().to_path_buf(), valid),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::IdentityMissing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_reopens_a_connected_session_without_logging_in() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::ConnectedOnly).await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));
    let mut connection = gateway.accept().await;
    // The keep-alive round runs at start: connected-but-not-authenticated gets one ssodh/init,
    // and the state change reaches the gateway as a SidecarStatus.
    loop {
        match connection.recv().await.unwrap() {
            Frame::SidecarStatus(status) if status.broker_session == "ready" => break,
            Frame::SidecarStatus(_) | Frame::Pong { .. } => continue,
            Frame::Ping { seq } => connection.send(&Frame::Pong { seq }).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(cpgw.shared.counters.lock().unwrap().ssodh_inits, 1);
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_is_declared_dead_and_redialed() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let mut config = config(&gateway, &cpgw.base_url, 8);
    config.sidecar.heartbeat_interval_seconds = 1;
    config.sidecar.heartbeat_timeout_seconds = 2;
    let running = start(dir.path(), config);
    let mut connection = gateway.accept().await;
    // Never answer: the sidecar pings, then gives up after the timeout on its own clock.
    let mut pings = 0;
    loop {
        match connection.recv().await {
            Some(Frame::Ping { .. }) => pings += 1,
            Some(Frame::Close { reason }) => {
                assert_eq!(reason, CloseReason::HeartbeatTimeout);
                break;
            }
            Some(_) => continue,
            None => panic!("closed without saying why"),
        }
    }
    assert!(pings >= 1);
    let mut connection = gateway.accept().await;
    let health = connection
        .call(1, "ibkr_health", "ibkr:health:read", json!({}))
        .await;
    assert!(matches!(health.outcome, Outcome::Result { .. }));
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_closed_and_recorded_as_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = FakeGateway::start().await;
    // The gateway never answers the renewal, so the session lapses at its TTL.
    gateway.session_ttl_ms = 1_500;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));
    let mut connection = gateway.accept().await;
    let session_id = "5a".repeat(16);
    loop {
        match connection.recv_significant().await {
            Some(Frame::RenewSession) => continue,
            Some(Frame::Close { reason }) => {
                assert_eq!(reason, CloseReason::SessionExpired);
                break;
            }
            other => panic!("expected the session to expire, got {other:?}"),
        }
    }
    // The daemon comes back with a fresh handshake (after recording the end of the old
    // session); the lapsed session is closed in the store that `ibkr-agent sidecar session
    // list` and `relay accept` read.
    gateway
        .session_byte
        .store(0x6b, std::sync::atomic::Ordering::SeqCst);
    gateway.session_ttl_ms = 3_600_000;
    let mut connection = gateway.accept().await;
    // The key confirmation: the new session is running (a stop before it would race the
    // sidecar's side of the handshake).
    assert!(matches!(
        connection.recv().await,
        Some(Frame::SidecarStatus(_))
    ));
    let store = StateStore::open(dir.path()).unwrap();
    let lapsed = store
        .relay_sessions()
        .unwrap()
        .into_iter()
        .find(|s| s.session_id == session_id && s.closed_at.is_some());
    assert!(lapsed.is_some());
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_names_another_user_or_pairing_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    provision(dir.path(), &gateway, ScopeSet::read_only_default());
    // The gateway holds the pinned key (so the handshake authenticates it) but names another
    // user than the one this laptop was paired for.
    *gateway.named_user.lock().unwrap() = "mallory".into();
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));
    let mut refused = gateway.accept().await;
    // The sidecar hangs up without confirming the session: not one frame reaches the gateway.
    assert!(refused.recv().await.is_none());
    assert!(running.observed.lock().unwrap().is_empty());
    assert_eq!(cpgw.shared.counters.lock().unwrap().accounts, 0);

    // The gateway names the right user again: the next dial is served.
    *gateway.named_user.lock().unwrap() = USER_ID.into();
    let mut connection = gateway.accept().await;
    let response = connection
        .call(1, "ibkr_accounts_list", "ibkr:accounts:read", json!({}))
        .await;
    assert!(
        matches!(response.outcome, Outcome::Result { .. }),
        "{response:?}"
    );
    running.stop(&mut connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_behind_the_gateways_anchor_refuses_order_tools_and_serves_reads() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = FakeGateway::start().await;
    let cpgw = FakeCpgw::start(Login::LoggedIn).await;
    let scopes =
        ScopeSet::from_list(&["ibkr:accounts:read", "ibkr:orders:write", "ibkr:audit:read"]);
    provision(dir.path(), &gateway, scopes);
    // The gateway has entry 3 on record; this laptop's journal is empty.
    *gateway.journal_anchor.lock().unwrap() = Some(protocol::envelope::JournalRef {
        seq: 3,
        hash: [7; 32],
    });
    let running = start(dir.path(), config(&gateway, &cpgw.base_url, 8));

    let mut connection = gateway.accept().await;
    let buy = connection
        .call(
            1,
            "ibkr_buy",
            "ibkr:orders:write",
            json!({"symbol": "AAPL", "cash_amount": "5"}),
        )
        .await;
    assert_eq!(refusal_code(&buy), "JOURNAL_BEHIND_GATEWAY");
    assert_eq!(buy.journal, None, "a refused call writes no journal entry");
    let cancel = connection
        .call(
            2,
            "ibkr_order_cancel",
            "ibkr:orders:write",
            json!({"order_id": "1"}),
        )
        .await;
    assert_eq!(refusal_code(&cancel), "JOURNAL_BEHIND_GATEWAY");
    let accounts = connection
        .call(3, "ibkr_accounts_list", "ibkr:accounts:read", json!({}))
        .await;
    assert_eq!(
        result_json(&accounts)["accounts"][0]["account_id"],
        "DU1234567"
    );
    let history = connection
        .call(4, "ibkr_trade_history", "ibkr:audit:read", json!({}))
        .await;
    assert!(
        matches!(history.outcome, Outcome::Result { .. }),
        "{history:?}"
    );

    // A handshake without an anchor the journal lacks lifts the refusal.
    *gateway.journal_anchor.lock().unwrap() = None;
    connection
        .send(&Frame::GoAway {
            retry_after_ms: 0,
            reason: CloseReason::Replaced,
        })
        .await;
    let mut connection = gateway.accept().await;
    let cancel = connection
        .call(
            5,
            "ibkr_order_cancel",
            "ibkr:orders:write",
            json!({"order_id": "1"}),
        )
        .await;
    // Served (a dry run by default), and the answer names the journal entry it wrote.
    assert_eq!(result_json(&cancel)["status"], "dry_run");
    let written = cancel.journal.expect("the answer names its journal entry");
    let journal = std::fs::read_to_string(dir.path().join("journal.jsonl")).unwrap();
    let last: Value = serde_json::from_str(journal.lines().last().unwrap()).unwrap();
    assert_eq!(json!(written.seq), last["seq"]);
    assert_eq!(json!(hex::encode(written.hash)), last["hash"]);
    running.stop(&mut connection).await;
}
