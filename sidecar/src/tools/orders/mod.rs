//! Order tools: preview, buy, sell, close, stops, brackets, cancel, status, wait, lists,
//! the trade history and reconciliation.
//!
//! - [`ticket`]: argument parsing into legs and guard intents, and the exact CPGW order JSON.
//! - [`facts`]: what a decision needs from the broker (account, fresh position, quote, the
//!   state of our open orders).
//! - [`place`]: local checks -> broker facts -> one critical section from the guards to the
//!   durable intent -> dry run or send; idempotency.
//! - [`send`]: the send and its confirmation loop; [`approved`]: the send of an order the
//!   laptop's owner approved, after checking it again.
//! - [`reconcile`]: unknown outcomes, settled only on evidence.
//! - [`preview`]: the what-if.
//! - [`read`]: status, wait for fill, lists, history, cancel.
//!
//! Failures are classified as *definitely not placed* or *unknown*; an unknown outcome keeps
//! counting toward the daily cap and blocks its instrument and side until it is proven placed
//! or the laptop owner settles it.

pub mod approved;
pub mod facts;
pub mod place;
pub mod preview;
pub mod read;
pub mod reconcile;
pub mod send;
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
        "ibkr_order_preview" => preview::preview(arguments, context).await,
        "ibkr_buy"
        | "ibkr_sell"
        | "ibkr_close_position"
        | "ibkr_stop_order"
        | "ibkr_trailing_stop"
        | "ibkr_bracket_order" => {
            let trading = context.cpgw.for_orders();
            place::place(request.tool.name, arguments, &context.with_cpgw(&trading)).await
        }
        "ibkr_order_cancel" => {
            let trading = context.cpgw.for_orders();
            read::cancel(arguments, &context.with_cpgw(&trading)).await
        }
        "ibkr_order_status" => read::status(arguments, context).await,
        "ibkr_wait_for_fill" => read::wait_for_fill(arguments, context).await,
        "ibkr_orders_list" => read::orders_list(context).await,
        "ibkr_executions_list" => read::executions_list(context).await,
        "ibkr_trade_history" => read::trade_history(arguments, context),
        "ibkr_reconcile_pending" => reconcile::reconcile_pending(context).await,
        _ => Err(Outcome::Refused(ErrorCode::ToolUnknown.body(Some(
            "(this sidecar version does not implement the tool)",
        )))),
    }
}
