//! Tool implementations, one file per tool. Each returns structured JSON (sanitized by the
//! caller) or an outcome explaining why not.

mod account_summary;
mod accounts_list;
mod contracts_search;
mod health;
mod historical_bars;
mod market_status;
mod portfolio_snapshot;
mod positions_list;
mod quote;
mod quotes;
mod session_status;

use crate::cpgw::types::AuthStatus;
use crate::cpgw::{AccountCache, BrokerState, ConidCache, CpgwClient, CpgwError};
use crate::gates::{CheckedRequest, manual_login_action};
use protocol::catalog::ToolSpec;
use protocol::envelope::Outcome;
use serde_json::{Map, Value};
use shared_safety::ErrorCode;
use shared_safety::money::{Decimal, to_decimal_string};
use std::time::Duration;
use tokio::sync::watch;

/// What a tool may use.
pub struct ToolContext<'a> {
    /// The clock trading hours are judged by (system clock except in simulations).
    pub market_clock: &'a crate::market_clock::MarketClock,
    pub cpgw: &'a CpgwClient,
    pub broker: &'a watch::Sender<BrokerState>,
    pub sidecar_id: &'a str,
    /// Symbol -> US contract cache (`resolve_symbol`), shared with the order tools.
    pub contracts: &'a ConidCache,
    /// The selected account, cached per broker session.
    pub accounts: &'a AccountCache,
    /// How long the current relay connection has been up.
    pub connected_for: Duration,
    /// The `auth/status` gate f saw (broker tools only).
    pub auth: Option<AuthStatus>,
    /// Journal, trading policy and calendar of the order tools (`None`: journal unavailable,
    /// every order tool refuses with JOURNAL_ERROR).
    pub orders: Option<&'a crate::orders::OrdersRuntime>,
    /// Whether both the caller's token and the local pairing grant `ibkr:orders:live`.
    pub live_scope_granted: bool,
    /// Sends progress frames for this request (long calls such as `ibkr_wait_for_fill`).
    pub progress: Option<&'a crate::requests::ProgressSink>,
}

pub type ToolResult = Result<Value, Outcome>;

/// Tools that need an authenticated CPGW session before they run (gate f). `ibkr_health`
/// reports the session state instead of requiring it; `ibkr_market_status` never calls CPGW.
pub fn needs_broker_session(tool: &ToolSpec) -> bool {
    !matches!(tool.name, "ibkr_health" | "ibkr_market_status")
}

/// Runs a checked request.
pub async fn run(request: &CheckedRequest, context: &ToolContext<'_>) -> ToolResult {
    match request.tool.name {
        "ibkr_health" => health::run(context).await,
        "ibkr_session_status" => session_status::run(context).await,
        "ibkr_accounts_list" => accounts_list::run(context).await,
        "ibkr_market_status" => market_status::run(context.market_clock).await,
        "ibkr_contracts_search" => contracts_search::run(&request.arguments, context).await,
        "ibkr_quote" => quote::run(&request.arguments, context).await,
        "ibkr_quotes" => quotes::run(&request.arguments, context).await,
        "ibkr_historical_bars" => historical_bars::run(&request.arguments, context).await,
        "ibkr_account_summary" => account_summary::run(context).await,
        "ibkr_positions_list" => positions_list::run(context).await,
        "ibkr_portfolio_snapshot" => portfolio_snapshot::run(context).await,
        // Every order tool (preview, buy, sell, stops, cancel, status, lists, journal...).
        _ => crate::orders::run(request, context).await,
    }
}

/// A required string argument (the schema already checked it; this only reads it).
pub(crate) fn string_arg<'a>(
    arguments: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, Outcome> {
    arguments.get(key).and_then(Value::as_str).ok_or_else(|| {
        Outcome::Refused(ErrorCode::ArgumentsInvalid.body(Some(&format!("({key})"))))
    })
}

/// A decimal as a JSON string, or `null`.
pub(crate) fn decimal_value(value: Option<Decimal>) -> Value {
    value.map_or(Value::Null, |d| Value::String(to_decimal_string(d)))
}

/// The selected account, or a broker error when CPGW names none.
pub(crate) async fn selected_account(context: &ToolContext<'_>) -> Result<String, Outcome> {
    context
        .accounts
        .selected_account(context.cpgw)
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?
        .ok_or_else(|| {
            Outcome::Failed(
                ErrorCode::OrderAccountUnverified.body(Some("(CPGW names no selected account)")),
            )
        })
}

/// The outcome for a failed CPGW call inside a tool.
pub(crate) fn cpgw_failure(error: CpgwError, client: &CpgwClient) -> Outcome {
    match error {
        CpgwError::NotAuthenticated => {
            Outcome::ManualActionRequired(manual_login_action(&client.portal_location()))
        }
        other => Outcome::Failed(other.error_code().body(None)),
    }
}
