//! After the operator rotates the gateway's key, nobody is left guessing: the laptop says the
//! gateway no longer holds the key it paired with (daemon record, `status`, `doctor`), and the
//! agent hears that a key rotation ended the pairing, not a bare "sidecar unavailable".

use crate::trading_support::{call, code, ok, trading_system};
use clap::Parser;
use ibkr_agent::doctor::{CheckStatus, DoctorOptions};
use ibkr_agent::state::StateStore;
use ibkr_agent::trading::policy::TradingSection;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_the_laptop_and_the_agent_are_told_why() {
    let mut system = trading_system(TradingSection::default()).await;
    system.write_sidecar_config().unwrap();
    ok(&call(&system, "ibkr_health", json!({})).await);
    let sidecar_id = system.gateway().unwrap().live_sidecars()[0]
        .sidecar_id
        .clone();
    let old_key = system.gateway().unwrap().public_key();

    system.stop_gateway().await;
    let config = system.write_gateway_config().unwrap();
    let config = config.display().to_string();
    let rotated = ibkr_gateway::cli::run(ibkr_gateway::cli::Cli::parse_from([
        "ibkr-gateway",
        "key",
        "rotate",
        "--config",
        &config,
        "--confirm",
    ]))
    .await;
    assert_eq!(rotated, ExitCode::SUCCESS);
    system.restart_gateway().await.unwrap();
    assert_ne!(system.gateway().unwrap().public_key(), old_key);

    // The daemon keeps dialing with the old pinned key and records what it is told. Nothing
    // signals that write to another process, so the test polls the state file it reads.
    let store = StateStore::open(system.sidecar_state_dir()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let record = loop {
        let record = store.relay_status(&sidecar_id).unwrap();
        if let Some(record) = record.filter(|r| r.code.as_deref() == Some("GATEWAY_KEY_MISMATCH")) {
            break record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon never recorded the key mismatch: {:?}",
            store.relay_status(&sidecar_id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!record.connected);
    assert!(
        record.detail.contains(&old_key.fingerprint()),
        "the record names the pinned fingerprint: {}",
        record.detail
    );
    assert!(record.connected_at.is_some(), "it was connected before");
    assert_eq!(
        crate::trading_support::ibkr_agent(
            system.sidecar_state_dir(),
            &["--json", "sidecar", "status"]
        )
        .await,
        ExitCode::SUCCESS
    );

    let report = ibkr_agent::doctor::run(&DoctorOptions {
        state_dir: system.sidecar_state_dir().to_path_buf(),
        config: None,
        symbol: "AAPL".into(),
        market_clock: ibkr_agent::market_clock::MarketClock::simulated_at(
            e2e::system::SIMULATED_MARKET_TIME,
        ),
    })
    .await;
    let gateway_check = report.check("gateway").unwrap();
    assert_eq!(gateway_check.status, CheckStatus::Fail, "{report:#?}");
    assert_eq!(gateway_check.code, Some("GATEWAY_KEY_MISMATCH"));
    assert!(
        gateway_check.detail.contains("rotated"),
        "{}",
        gateway_check.detail
    );
    assert!(
        gateway_check
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("pair again"),
        "{gateway_check:#?}"
    );

    // The agent: health says why there is no relay, and a tool call is refused with it.
    let health = ok(&call(&system, "ibkr_health", json!({})).await);
    assert_eq!(health["relay"]["connected"], false, "{health}");
    assert_eq!(health["relay"]["status"], "GATEWAY_KEY_ROTATED", "{health}");
    assert!(
        health["next_step"]
            .as_str()
            .unwrap_or_default()
            .contains("pair again"),
        "{health}"
    );
    let refused = call(&system, "ibkr_accounts_list", json!({})).await;
    assert_eq!(code(&refused), "GATEWAY_KEY_ROTATED");
    system.shutdown().await;
}
