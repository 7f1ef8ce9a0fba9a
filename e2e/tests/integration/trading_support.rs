//! What the trading tests share: a system whose laptop grants the trading scopes, calls
//! through a real MCP client, and reading its answers.
#![allow(dead_code)]

use e2e::system::{System, SystemOptions};
use ibkr_agent::trading::policy::TradingSection;
use protocol::catalog::scopes;
use rmcp::model::{CallToolRequestParams, CallToolResult, ProgressNotificationParam};
use rmcp::service::NotificationContext;
use rmcp::{ClientHandler, RoleClient};
use rust_decimal::Decimal;
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;

pub const TRADING_SCOPES: &[&str] = &[
    scopes::HEALTH_READ,
    scopes::MARKETDATA_READ,
    scopes::ACCOUNTS_READ,
    scopes::PORTFOLIO_READ,
    scopes::POSITIONS_READ,
    scopes::ORDERS_PREVIEW,
    scopes::ORDERS_READ,
    scopes::ORDERS_WRITE,
    scopes::AUDIT_READ,
];

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// A system whose laptop grants the non-live trading scopes locally, with the given policy.
pub async fn trading_system(trading: TradingSection) -> System {
    trading_system_with(SystemOptions {
        trading,
        ..SystemOptions::default()
    })
    .await
}

pub async fn trading_system_with(options: SystemOptions) -> System {
    trading_system_granting(options, TRADING_SCOPES).await
}

/// A system whose laptop grants `granted` locally.
pub async fn trading_system_granting(options: SystemOptions, granted: &[&str]) -> System {
    let mut system = System::start(SystemOptions {
        with_sidecar: false,
        ..options
    })
    .await
    .unwrap();
    let pairing = system.pair_sidecar().await.unwrap();
    let store = ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap();
    store
        .set_local_scopes(
            &pairing.remote_instance_id,
            &pairing.sidecar_id,
            &shared_safety::scope::ScopeSet::from_list(granted),
        )
        .unwrap();
    system.start_sidecar().await.unwrap();
    system
        .sim
        .set_price("AAPL", dec("200.00"), dec("199.98"), dec("200.02"));
    system
}

pub fn live_trading() -> TradingSection {
    TradingSection {
        dry_run: false,
        ..TradingSection::default()
    }
}

pub async fn call(system: &System, tool: &str, arguments: Value) -> CallToolResult {
    call_as(system, TRADING_SCOPES, tool, arguments).await
}

/// A call with a token holding `token_scopes`.
pub async fn call_as(
    system: &System,
    token_scopes: &[&str],
    tool: &str,
    arguments: Value,
) -> CallToolResult {
    let token = system.token(token_scopes).unwrap();
    let client = system.mcp_client(&token).await.unwrap();
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = arguments {
        params = params.with_arguments(map);
    }
    let result = client.call_tool(params).await.unwrap();
    let _ = client.cancel().await;
    result
}

pub fn ok(result: &CallToolResult) -> Value {
    assert_ne!(
        result.is_error,
        Some(true),
        "expected success, got {result:?}"
    );
    result.structured_content.clone().unwrap()
}

pub fn code(result: &CallToolResult) -> String {
    assert_eq!(
        result.is_error,
        Some(true),
        "expected a refusal, got {result:?}"
    );
    let structured = result.structured_content.as_ref().unwrap();
    structured["error"]["code"]
        .as_str()
        .or_else(|| structured["code"].as_str())
        .unwrap()
        .to_string()
}

/// A 30 USD buy of AAPL is refused with TRADING_PAUSED, naming the owner's `reason`.
pub async fn buy_refused_as_paused(system: &System, reason: &str) {
    let refused = call(
        system,
        "ibkr_buy",
        serde_json::json!({"symbol": "AAPL", "cash_amount": "30"}),
    )
    .await;
    assert_eq!(code(&refused), "TRADING_PAUSED", "{refused:?}");
    let message = &refused.structured_content.as_ref().unwrap()["error"]["message"];
    assert!(message.as_str().unwrap().contains(reason), "{message}");
}

/// Buys 30 USD of AAPL and checks the order reached the broker as its `orders_before + 1`th.
pub async fn buy_goes_out(system: &System, orders_before: usize) {
    let bought = ok(&call(
        system,
        "ibkr_buy",
        serde_json::json!({"symbol": "AAPL", "cash_amount": "30"}),
    )
    .await);
    assert_eq!(bought["status"], "sent", "{bought}");
    assert_eq!(system.sim.order_log().len(), orders_before + 1);
}

/// Runs one `ibkr-agent` command line, in this process, exactly as the binary would.
pub async fn ibkr_agent(state_dir: &Path, args: &[&str]) -> ExitCode {
    let mut argv = vec![
        "ibkr-agent".to_string(),
        "--state-dir".to_string(),
        state_dir.display().to_string(),
    ];
    argv.extend(args.iter().map(|arg| arg.to_string()));
    tokio::task::spawn_blocking(move || ibkr_agent::cli::main_from(argv))
        .await
        .unwrap()
}

/// Drives `pending` (a call placing one order) until the simulator holds that order's answer:
/// the order is at the broker and the call still waits. Panics if the call answers first.
/// The caller then breaks something and finishes or drops the call.
pub async fn until_order_held<F>(
    pending: &mut std::pin::Pin<&mut F>,
    hold: &e2e::cpgw_sim::OrderAnswerHold,
) where
    F: std::future::Future,
    F::Output: std::fmt::Debug,
{
    tokio::select! {
        answered = pending.as_mut() => panic!("answered before the order reached the broker: {answered:?}"),
        () = hold.wait_held(1) => {}
    }
}

/// Collects the progress notifications a client receives.
#[derive(Clone, Default)]
pub struct ProgressCollector(pub std::sync::Arc<std::sync::Mutex<Vec<ProgressNotificationParam>>>);

impl ClientHandler for ProgressCollector {
    fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.0.lock().unwrap().push(params);
        std::future::ready(())
    }
}

/// The files that make up a sidecar's journal (its entries and its head).
const JOURNAL_FILES: [&str; 2] = ["journal.jsonl", "journal.head"];

/// Copies a sidecar's journal from one directory to another (a backup, or putting one back).
pub fn copy_journal(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in JOURNAL_FILES {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}
