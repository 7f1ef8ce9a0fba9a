//! `ibkr-agent sidecar doctor` against a real gateway, a running daemon and the CPGW simulator:
//! it passes on a working setup without disturbing the daemon, and for each way a setup breaks
//! it names the failed check, its code and the fix.

use crate::trading_support::{call, ibkr_agent, ok, trading_system, trading_system_granting};
use e2e::cpgw_sim::AuthState;
use e2e::system::{System, SystemOptions};
use ibkr_agent::doctor::{CheckStatus, DoctorOptions, DoctorReport};
use ibkr_agent::trading::policy::TradingSection;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;

async fn doctor(system: &System) -> DoctorReport {
    ibkr_agent::doctor::run(&DoctorOptions {
        state_dir: system.sidecar_state_dir().to_path_buf(),
        config: None,
        symbol: "AAPL".into(),
        market_clock: ibkr_agent::market_clock::MarketClock::simulated_at(
            e2e::system::SIMULATED_MARKET_TIME,
        ),
    })
    .await
}

/// `ibkr-agent --json sidecar doctor`, in this process, exactly as the binary runs it.
async fn doctor_command(system: &System) -> ExitCode {
    ibkr_agent(system.sidecar_state_dir(), &["--json", "sidecar", "doctor"]).await
}

/// The statuses in check order, for readable failures.
fn statuses(report: &DoctorReport) -> Vec<(&'static str, CheckStatus)> {
    report
        .checks
        .iter()
        .map(|check| (check.name, check.status))
        .collect()
}

/// Asserts that `name` failed with `code` and a fix containing `fix`.
fn assert_failed(report: &DoctorReport, name: &str, code: &str, fix: &str) {
    let check = report.check(name).expect(name);
    assert_eq!(check.status, CheckStatus::Fail, "{report:#?}");
    assert_eq!(check.code, Some(code), "{check:#?}");
    let given = check.fix.as_deref().unwrap_or_default();
    assert!(given.contains(fix), "fix for {name}: {given}");
    assert!(!report.ready_to_trade);
    assert_eq!(
        report.first_failure().map(|c| c.name),
        Some(name),
        "{report:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_setup_passes_and_the_running_daemon_keeps_its_session() {
    let system = trading_system(TradingSection::default()).await;
    system.write_sidecar_config().unwrap();
    // The agent has read the account once: the daemon's accounts query opened CPGW's
    // portfolio endpoints (the doctor leaves that paced query to the daemon).
    ok(&call(&system, "ibkr_account_summary", json!({})).await);
    let gateway = system.gateway().unwrap();
    let mut events = gateway.subscribe_sessions();

    let report = doctor(&system).await;
    assert!(report.ready_to_trade, "{report:#?}");
    let expected = [
        ("config", CheckStatus::Ok),
        ("key_files", CheckStatus::Ok),
        ("pairing", CheckStatus::Ok),
        ("local_grants", CheckStatus::Ok),
        // The default policy: dry runs, said as a warning with the switch to change.
        ("trading_policy", CheckStatus::Warn),
        ("gateway", CheckStatus::Ok),
        ("relay_session", CheckStatus::Ok),
        ("journal", CheckStatus::Ok),
        ("market_hours", CheckStatus::Ok),
        ("client_portal", CheckStatus::Ok),
        ("account", CheckStatus::Ok),
        ("balance", CheckStatus::Ok),
        ("quote", CheckStatus::Ok),
    ];
    assert_eq!(statuses(&report), expected);
    assert!(report.check("account").unwrap().detail.contains("paper"));
    assert!(
        report
            .check("trading_policy")
            .unwrap()
            .fix
            .as_deref()
            .unwrap()
            .contains("trading.dry_run: false")
    );

    // The probe stopped before the key confirmation: the daemon's session was never displaced.
    assert!(
        events.try_recv().is_err(),
        "the doctor disturbed the relay session"
    );
    assert_eq!(gateway.live_sidecars().len(), 1);
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);

    // The same through the command line, as a person runs it.
    let exit = doctor_command(&system).await;
    assert_eq!(exit, ExitCode::SUCCESS);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_client_portal_names_the_manual_login() {
    let system = trading_system(TradingSection::default()).await;
    system.write_sidecar_config().unwrap();
    system.sim.set_auth_state(AuthState::LoggedOut);
    let report = doctor(&system).await;
    assert_failed(
        &report,
        "client_portal",
        "BROKER_SESSION_REQUIRED",
        "Log in",
    );
    for name in ["account", "balance", "quote"] {
        assert_eq!(report.check(name).unwrap().status, CheckStatus::Skipped);
    }
    // Exit 3 from the command line: something blocks trading.
    let exit = doctor_command(&system).await;
    assert_eq!(exit, ExitCode::from(3));
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_is_named_with_what_to_check() {
    let mut system = trading_system(TradingSection::default()).await;
    system.write_sidecar_config().unwrap();
    system.stop_gateway().await;
    let report = doctor(&system).await;
    assert_failed(
        &report,
        "gateway",
        "SIDECAR_UNAVAILABLE",
        "sidecar.remote_relay_url",
    );
    assert!(
        report
            .check("gateway")
            .unwrap()
            .detail
            .contains("cannot reach"),
        "{report:#?}"
    );
    // The broker side is still examined: it is the laptop's half.
    assert_eq!(
        report.check("client_portal").unwrap().status,
        CheckStatus::Ok
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_the_pinned_key_is_not_trusted() {
    let system = trading_system(TradingSection::default()).await;
    system.write_sidecar_config().unwrap();
    // The laptop pinned another key than the one the gateway at the configured URL holds (the
    // URL now points at another server, or the gateway was re-keyed).
    let store = ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap();
    let mut pairing = store.pairings().unwrap().into_iter().next().unwrap();
    pairing.gateway_public_key =
        Some(protocol::identity::StaticKeypair::generate(&mut rand_core::OsRng).public());
    store.upsert_pairing(&pairing).unwrap();
    drop(store);

    let report = doctor(&system).await;
    assert_failed(&report, "gateway", "GATEWAY_KEY_MISMATCH", "pair again");
    assert!(
        report
            .check("gateway")
            .unwrap()
            .detail
            .contains("no longer holds the key this laptop paired with"),
        "{report:#?}"
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_laptop_that_grants_no_orders_names_the_grant_command() {
    let system = trading_system_granting(
        SystemOptions::default(),
        protocol::catalog::scopes::READ_ONLY,
    )
    .await;
    system.write_sidecar_config().unwrap();
    let report = doctor(&system).await;
    assert_failed(
        &report,
        "local_grants",
        "SCOPE_NOT_GRANTED_LOCALLY",
        "ibkr-agent sidecar pairing grant --scope ibkr:orders:write",
    );
    // Everything else holds: the one thing to do is the grant.
    assert_eq!(
        report
            .checks
            .iter()
            .filter(|check| check.status == CheckStatus::Fail)
            .count(),
        1,
        "{report:#?}"
    );
    // Nothing read the portfolio yet, and the doctor leaves the paced query that opens it to
    // the daemon: the balance is a warning that says so, not a failure.
    let balance = report.check("balance").unwrap();
    assert_eq!(balance.status, CheckStatus::Warn, "{balance:#?}");
    assert!(
        balance
            .fix
            .as_deref()
            .unwrap()
            .contains("ibkr_account_summary")
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_others_can_read_is_refused_with_chmod() {
    let system = trading_system(TradingSection::default()).await;
    system.write_sidecar_config().unwrap();
    let key = system.sidecar_state_dir().join("identity.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let report = doctor(&system).await;
    assert_failed(
        &report,
        "key_files",
        "STATE_STORE_ERROR",
        "chmod 600 identity.key",
    );
    assert_eq!(
        report.check("gateway").unwrap().status,
        CheckStatus::Skipped
    );
    // The JSON carries no local path.
    let text = serde_json::to_string(&report).unwrap();
    assert!(
        !text.contains(&system.sidecar_state_dir().display().to_string()),
        "{text}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    system.shutdown().await;
}
