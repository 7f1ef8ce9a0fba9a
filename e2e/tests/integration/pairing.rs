//! Pairing through the real CLI client (`ibkr_agent::pair`) against the real gateway endpoints:
//! each way a code can be wrong is refused with its own code.

use e2e::system::{System, SystemOptions};
use shared_safety::ErrorCode;
use std::time::Duration;

async fn system_without_sidecar() -> System {
    let system = System::start(SystemOptions {
        with_sidecar: false,
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    ibkr_agent::create_identity(system.sidecar_state_dir(), "laptop", None, None).unwrap();
    system
}

/// Flips one character of the secret part so the code id still matches.
fn wrong_secret(code: &str) -> String {
    let mut chars: Vec<char> = code.chars().collect();
    let last = chars.len() - 1;
    chars[last] = if chars[last] == '2' { '3' } else { '2' };
    chars.into_iter().collect()
}

async fn pair(system: &System, code: &str) -> Result<ibkr_agent::PairingRecord, ErrorCode> {
    let base = system.gateway().unwrap().base_url();
    ibkr_agent::pair(system.sidecar_state_dir(), &base, code, None)
        .await
        .map_err(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_code_pairs_once_and_is_then_used() {
    let system = system_without_sidecar().await;
    let gateway = system.gateway().unwrap();
    let code = gateway
        .issue_pairing_code("dev-user", Duration::from_secs(600))
        .await
        .unwrap();
    let record = pair(&system, &code).await.unwrap();
    assert_eq!(record.user_id, "dev-user");
    assert_eq!(record.remote_instance_id, gateway.instance_id());
    assert_eq!(record.gateway_public_key, Some(gateway.public_key()));
    // The local grant is read-only by default.
    assert!(record.local_scopes.contains("ibkr:accounts:read"));
    assert!(!record.local_scopes.contains("ibkr:orders:write"));
    assert_eq!(
        pair(&system, &code).await.unwrap_err(),
        ErrorCode::PairingCodeUsed
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_is_refused_and_guesses_are_limited() {
    let system = system_without_sidecar().await;
    let code = system
        .gateway()
        .unwrap()
        .issue_pairing_code("dev-user", Duration::from_secs(600))
        .await
        .unwrap();
    let wrong = wrong_secret(&code);
    // One client address gets two tested guesses on one code (the code itself allows five,
    // however many addresses guess: gateway/tests/integration/relay.rs), then is refused.
    for _ in 0..2 {
        assert_eq!(
            pair(&system, &wrong).await.unwrap_err(),
            ErrorCode::PairingCodeInvalid
        );
    }
    assert_eq!(
        pair(&system, &wrong).await.unwrap_err(),
        ErrorCode::AuthRateLimited
    );
    assert_eq!(
        pair(&system, &code).await.unwrap_err(),
        ErrorCode::AuthRateLimited
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_is_refused() {
    let system = system_without_sidecar().await;
    let code = system
        .gateway()
        .unwrap()
        .issue_pairing_code("dev-user", Duration::from_millis(1))
        .await
        .unwrap();
    // Expiry is judged when the exchange starts; a 1 ms code is past it by the time the
    // pairing request (identity load, HTTP round trip) reaches the gateway.
    assert_eq!(
        pair(&system, &code).await.unwrap_err(),
        ErrorCode::PairingCodeExpired
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_code_is_refused() {
    let system = system_without_sidecar().await;
    assert_eq!(
        pair(&system, "ZZZZ-ZZZZ-ZZZZ").await.unwrap_err(),
        ErrorCode::PairingCodeInvalid
    );
    system.shutdown().await;
}
