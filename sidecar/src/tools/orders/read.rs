//! Order status, waiting for a fill, open orders, executions, the trade history, cancel.

use super::facts::{account_identity, record_observation};
use super::ticket::text_arg;
use super::{now_ms, runtime};
use crate::cpgw::manual_login_action;
use crate::cpgw::marketdata::decimal_of;
use crate::cpgw::orders::{CancelReply, OrderStatusReply, SendFailure, order_id_segment};
use crate::cpgw::pacer::Lane;
use crate::cpgw::types::JsonText;
use crate::tools::context::{ToolContext, ToolResult, cpgw_failure};
use crate::trading::attempts::is_terminal_status;
use protocol::envelope::Outcome;
use serde_json::{Map, Value, json};
use shared_safety::ErrorCode;
use shared_safety::guards::{GuardContext, OrderIntentRole, OrderKind, Side, Tif, check_order};
use shared_safety::money::{Decimal, to_decimal_string};
use std::time::Duration;

/// Poll interval of `ibkr_wait_for_fill` (order status is not paced below the global rate).
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Default wait of `ibkr_wait_for_fill`.
const DEFAULT_WAIT_SECONDS: u64 = 60;

fn dec(text: &Option<JsonText>) -> Value {
    text.as_ref()
        .and_then(decimal_of)
        .map_or(Value::Null, |d| Value::String(to_decimal_string(d)))
}

fn order_id_arg(arguments: &Map<String, Value>) -> Result<String, Outcome> {
    text_arg(arguments, "order_id")
        .and_then(order_id_segment)
        .map(str::to_string)
        .ok_or_else(|| {
            Outcome::Refused(
                ErrorCode::ArgumentsInvalid.body(Some("(order_id must be the broker's digits)")),
            )
        })
}

fn status_json(reply: &OrderStatusReply) -> Value {
    json!({
        "order_id": reply.order_id.as_ref().map(JsonText::as_str),
        "status": reply.order_status,
        "symbol": reply.symbol,
        "side": reply.side,
        "order_type": reply.order_type,
        "tif": reply.tif,
        "quantity": dec(&reply.total_size),
        "filled_quantity": dec(&reply.cum_fill),
        "average_price": dec(&reply.average_price),
        "limit_price": dec(&reply.limit_price),
        "stop_price": dec(&reply.stop_price),
        "terminal": reply.order_status.as_deref().is_some_and(is_terminal_status),
    })
}

/// Journals what the broker says about an order of ours (a final state ends its commitment).
fn observe(context: &ToolContext<'_>, order_id: &str, reply: &OrderStatusReply) {
    let (Some(runtime), Some(status)) = (context.orders, reply.order_status.as_deref()) else {
        return;
    };
    if let Some(attempt) = runtime.journal.by_order_id(order_id) {
        let filled = reply
            .cum_fill
            .as_ref()
            .and_then(decimal_of)
            .map(to_decimal_string);
        record_observation(
            runtime,
            attempt.id,
            order_id,
            status,
            reply.side.as_deref(),
            filled,
        );
    }
}

/// `ibkr_order_status`.
pub async fn status(arguments: &Map<String, Value>, context: &ToolContext<'_>) -> ToolResult {
    let order_id = order_id_arg(arguments)?;
    match context.cpgw.order_status(&order_id, Lane::Read).await {
        Ok(Some(reply)) => {
            observe(context, &order_id, &reply);
            Ok(status_json(&reply))
        }
        Ok(None) => Err(Outcome::Refused(ErrorCode::OrderNotFound.body(None))),
        Err(error) => Err(cpgw_failure(error, context.cpgw)),
    }
}

/// `ibkr_wait_for_fill`: polls until a final state, the requested timeout or the relay deadline,
/// whichever comes first, reporting progress whenever the status or the filled quantity
/// changes. It never outlives the relay: at the deadline it answers the current status with
/// `timed_out: true`, and the agent can call it again.
pub async fn wait_for_fill(
    arguments: &Map<String, Value>,
    context: &ToolContext<'_>,
) -> ToolResult {
    let order_id = order_id_arg(arguments)?;
    let seconds = arguments
        .get("timeout_seconds")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_WAIT_SECONDS)
        .max(1);
    let requested_end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    // Keep one poll (and its answer) inside the relay deadline.
    let relay_end = context
        .deadline
        .checked_sub(WAIT_POLL_INTERVAL * 2)
        .unwrap_or(context.deadline);
    let end = requested_end.min(relay_end);
    let mut last: Option<(Option<String>, Value)> = None;
    let mut ticker = tokio::time::interval(WAIT_POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let reply = match context.cpgw.order_status(&order_id, Lane::Read).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(Outcome::Refused(ErrorCode::OrderNotFound.body(None))),
            Err(error) => return Err(cpgw_failure(error, context.cpgw)),
        };
        observe(context, &order_id, &reply);
        let filled = reply.cum_fill.as_ref().and_then(decimal_of);
        let total = reply.total_size.as_ref().and_then(decimal_of);
        let key = (reply.order_status.clone(), dec(&reply.cum_fill));
        if last.as_ref() != Some(&key) {
            if let Some(progress) = context.progress {
                progress.send(
                    decimal_f64(filled.unwrap_or(Decimal::ZERO)),
                    total.map(decimal_f64),
                    reply.order_status.clone(),
                );
            }
            last = Some(key);
        }
        let terminal = reply
            .order_status
            .as_deref()
            .is_some_and(is_terminal_status);
        if terminal || tokio::time::Instant::now() + WAIT_POLL_INTERVAL > end {
            let mut value = status_json(&reply);
            if let Value::Object(map) = &mut value {
                map.insert("timed_out".into(), json!(!terminal));
                if !terminal && end < requested_end {
                    map.insert(
                        "note".into(),
                        json!(
                            "The relay's deadline came before the requested timeout; call \
                               ibkr_wait_for_fill again to keep waiting."
                        ),
                    );
                }
            }
            return Ok(value);
        }
    }
}

/// A display-only conversion for MCP progress numbers (never used for money arithmetic).
fn decimal_f64(value: Decimal) -> f64 {
    to_decimal_string(value).parse().unwrap_or(0.0)
}

/// `ibkr_orders_list`: the broker's list of this session's orders. It can be empty or stale
/// right after a session starts (IBKR documents a pre-flight read), so the answer says so, and
/// the sidecar's own orders are always in `ibkr_trade_history`.
pub async fn orders_list(context: &ToolContext<'_>) -> ToolResult {
    let identity = account_identity(context).await?;
    let list = context
        .cpgw
        .live_orders(&identity.account)
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?;
    let orders: Vec<Value> = list
        .orders
        .iter()
        .map(|row| {
            json!({
                "order_id": row.order_id.as_ref().map(JsonText::as_str),
                "client_order_id": row.order_ref,
                "status": row.status,
                "symbol": row.ticker,
                "conid": row.conid.as_ref().map(JsonText::as_str),
                "side": row.side,
                "order_type": row.order_type,
                "tif": row.tif,
                "quantity": dec(&row.total_size),
                "filled_quantity": dec(&row.filled_quantity),
                "remaining_quantity": dec(&row.remaining_quantity),
                "average_price": dec(&row.avg_price),
                "price": dec(&row.price),
                "aux_price": dec(&row.aux_price),
            })
        })
        .collect();
    Ok(json!({
        "orders": orders,
        "may_be_incomplete": true,
        "note": "IBKR's order list is per brokerage session and can be empty or stale right \
                 after a session starts; orders placed through this sidecar are in \
                 ibkr_trade_history whatever this list says.",
    }))
}

/// `ibkr_executions_list`: today's executions and those of the last few days.
pub async fn executions_list(context: &ToolContext<'_>) -> ToolResult {
    let rows = context
        .cpgw
        .trades(7)
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?;
    let executions: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "execution_id": row.execution_id,
                "order_id": row.order_id.as_ref().map(JsonText::as_str),
                "client_order_id": row.order_ref,
                "symbol": row.symbol,
                "side": row.side,
                "quantity": dec(&row.size),
                "price": dec(&row.price),
                "commission": dec(&row.commission),
                "trade_time": row.trade_time,
            })
        })
        .collect();
    Ok(json!({"executions": executions}))
}

/// `ibkr_trade_history`: the journal's attempts, newest first. `attempt_id` is the journal's
/// sequence number of the attempt's intent.
pub fn trade_history(arguments: &Map<String, Value>, context: &ToolContext<'_>) -> ToolResult {
    let runtime = runtime(context)?;
    let limit = arguments
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(50)
        .clamp(1, 500) as usize;
    let in_flight_free = runtime.journal.pending();
    let chosen = match arguments.get("attempt_id").and_then(Value::as_u64) {
        Some(id) => match runtime.journal.attempt(id) {
            Some(attempt) => vec![attempt],
            None => {
                return Err(Outcome::Refused(
                    ErrorCode::OrderNotFound
                        .body(Some(&format!("(no attempt {id} in the trade journal)"))),
                ));
            }
        },
        None => runtime.journal.recent_attempts(limit),
    };
    let attempts: Vec<Value> = chosen
        .iter()
        .map(|attempt| {
            let intent = &attempt.intent;
            json!({
                "attempt_id": attempt.id,
                "at_ms": attempt.at_ms,
                "tool": intent.get("tool"),
                "symbol": intent.get("symbol"),
                "side": intent.get("side"),
                "legs": intent.get("legs"),
                "order_id": intent.get("order_id"),
                "order_ids": attempt.order_ids(),
                "estimated_value": intent.get("notional"),
                "dry_run": attempt.dry_run(),
                "client_order_id": attempt.coid(),
                "status": attempt.status.as_str(),
                "outcome_unknown": in_flight_free.iter().any(|p| p.id == attempt.id),
                "outcome": attempt.last_outcome.as_ref().map(|(_, data)| data.clone()),
                "approval": attempt.approval_request().map(|request| json!({
                    "reason": request.reason,
                    "expires_at_ms": request.expires_at_ms,
                })),
            })
        })
        .collect();
    Ok(json!({"attempts": attempts}))
}

/// `ibkr_order_cancel`: guarded (account, live lock, hours policy for cancels), journaled. A
/// cancel never increases risk, so the symbol lists do not apply to it.
pub async fn cancel(arguments: &Map<String, Value>, context: &ToolContext<'_>) -> ToolResult {
    let runtime = runtime(context)?;
    let order_id = order_id_arg(arguments)?;
    let identity = account_identity(context).await?;
    let known = runtime.journal.by_order_id(&order_id);
    let symbol = known
        .as_ref()
        .and_then(|a| a.intent.get("symbol").and_then(Value::as_str))
        .unwrap_or_default()
        .to_string();
    let intent = super::ticket::intent(
        &symbol,
        Side::Sell,
        OrderKind::Market,
        OrderIntentRole::Cancel,
        Tif::Day,
    );
    let guard_context = GuardContext {
        account_mode: identity.mode,
        account_id: &identity.account,
        live_scope_granted: context.live_scope_granted,
        market_open: runtime.market_open(),
        quote: None,
        position_quantity: Decimal::ZERO,
        committed_same_side: Decimal::ZERO,
        spent_today: Decimal::ZERO,
        recent_identical_within_window: false,
        unresolved_same_instrument_side: false,
    };
    let data = json!({"tool": "ibkr_order_cancel", "symbol": symbol, "order_id": order_id,
    "account": identity.account, "dry_run": runtime.policy.dry_run,
    "account_mode": match identity.mode {
        shared_safety::guards::AccountMode::Live => "live",
        shared_safety::guards::AccountMode::Paper => "paper",
        shared_safety::guards::AccountMode::Unknown => "unknown",
    }});
    let attempt = runtime
        .journal
        .intent(data, now_ms())
        .map_err(|_| Outcome::Refused(ErrorCode::JournalError.body(None)))?;
    if let Err(refused) = check_order(&intent, &runtime.policy, &guard_context) {
        let _ = runtime.journal.outcome(
            attempt,
            "blocked",
            json!({"code": refused.code.code(), "guard": refused.guard, "detail": refused.detail}),
            now_ms(),
        );
        return Err(Outcome::Refused(refused.body()));
    }
    if runtime.policy.dry_run {
        let _ = runtime
            .journal
            .outcome(attempt, "dry_run", json!({}), now_ms());
        return Ok(json!({"status": "dry_run", "order_id": order_id, "attempt_id": attempt}));
    }
    match context
        .cpgw
        .cancel_order(&identity.account, &order_id)
        .await
    {
        Ok(CancelReply::Accepted { message }) => {
            let _ = runtime.journal.outcome(
                attempt,
                "cancelled",
                json!({"order_ids": [order_id], "message": message}),
                now_ms(),
            );
            Ok(
                json!({"status": "cancel_requested", "order_id": order_id, "message": message,
                      "attempt_id": attempt,
                      "note": "IBKR acknowledges the request, not the cancel itself: check \
                               ibkr_order_status until it says Cancelled."}),
            )
        }
        Ok(CancelReply::Refused { reason }) => {
            let _ =
                runtime
                    .journal
                    .outcome(attempt, "rejected", json!({"reason": reason}), now_ms());
            Err(Outcome::Refused(
                ErrorCode::OrderNotFound.body(Some(&format!("({reason})"))),
            ))
        }
        Err(SendFailure::NotAuthenticated) => {
            let _ = runtime.journal.outcome(
                attempt,
                "rejected",
                json!({"reason": "no authenticated CPGW session", "not_sent": true}),
                now_ms(),
            );
            Err(Outcome::ManualActionRequired(manual_login_action(
                &context.cpgw.portal_location(),
            )))
        }
        Err(failure) => {
            let event = if failure.definitely_not_placed() {
                "rejected"
            } else {
                "indeterminate"
            };
            let _ = runtime.journal.outcome(
                attempt,
                event,
                json!({"reason": format!("{failure:?}")}),
                now_ms(),
            );
            Err(Outcome::Failed(ErrorCode::BrokerError.body(Some(
                "(the cancel's outcome is unknown; check ibkr_order_status)",
            ))))
        }
    }
}
