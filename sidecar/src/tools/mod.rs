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

pub mod context;
pub mod orders;

use crate::gates::CheckedRequest;
use context::{ToolContext, ToolResult};
use protocol::catalog::ToolSpec;

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
        _ => orders::run(request, context).await,
    }
}
