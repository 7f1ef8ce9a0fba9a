//! Order tools: preview, buy, sell, close, stops, brackets, cancel, status, wait, lists,
//! the trade history and reconciliation.
//!
//! - [`ticket`]: argument parsing into guard intents and the exact CPGW order JSON.
//! - [`place`]: guards -> journal intent -> dry-run or send (confirm loop, idempotency).
//! - [`read`]: status, wait for fill, lists, history, cancel, reconcile.
//!
//! Every placing tool follows the same path: parse (exact decimals), resolve the US conid,
//! read the account identity (paper/live), quote and position as needed, run
//! `shared_safety::guards::check_order`, journal the intent durably, then dry-run (default:
//! nothing is sent) or send. Failures are classified as *definitely not placed* or
//! *indeterminate*; only the latter blocks identical retries and counts toward the daily cap
//! until `ibkr_reconcile_pending` resolves it.

pub mod place;
pub mod read;
pub mod ticket;

use super::context::{ToolContext, ToolResult};
use crate::gates::CheckedRequest;
use crate::trading::OrdersRuntime;
pub(crate) use crate::trading::now_ms;
use protocol::envelope::Outcome;
use shared_safety::ErrorCode;

pub(crate) fn runtime<'a>(context: &ToolContext<'a>) -> Result<&'a OrdersRuntime, Outcome> {
    context.orders.ok_or_else(|| {
        Outcome::Refused(ErrorCode::JournalError.body(Some(
            "(the trade journal is not available in this sidecar; see its log)",
        )))
    })
}

/// Runs an order tool.
pub async fn run(request: &CheckedRequest, context: &ToolContext<'_>) -> ToolResult {
    let arguments = &request.arguments;
    match request.tool.name {
        "ibkr_order_preview" => place::preview(arguments, context).await,
        "ibkr_buy"
        | "ibkr_sell"
        | "ibkr_close_position"
        | "ibkr_stop_order"
        | "ibkr_trailing_stop"
        | "ibkr_bracket_order" => place::place(request.tool.name, arguments, context).await,
        "ibkr_order_cancel" => read::cancel(arguments, context).await,
        "ibkr_order_status" => read::status(arguments, context).await,
        "ibkr_wait_for_fill" => read::wait_for_fill(arguments, context).await,
        "ibkr_orders_list" => read::orders_list(context).await,
        "ibkr_executions_list" => read::executions_list(context).await,
        "ibkr_trade_history" => read::trade_history(arguments, context),
        "ibkr_reconcile_pending" => read::reconcile_pending(context).await,
        _ => Err(Outcome::Refused(ErrorCode::ToolUnknown.body(Some(
            "(this sidecar version does not implement the tool)",
        )))),
    }
}
