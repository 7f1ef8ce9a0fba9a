//! Market data, portfolio and order endpoints. Every one of them needs a
//! usable brokerage session (logged in, no competing session) and answers
//! 401 `{"error":"not authenticated"}` otherwise, like CPGW.

use std::collections::{HashMap, VecDeque};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::Response,
    routing::{delete, get, post},
};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Map, Value, json};

use super::engine::{CancelOutcome, Order, PendingSubmission, commission};
use super::market::{Listing, parse_duration_ms, usd_rate};
use super::orders::{OrderTicket, OrderType, Side, parse_tickets};
use super::routes::{json_response, not_authenticated};
use super::scenario::CancelAckShape;
use super::state::{SharedState, SimState, random_uuid_like};
use super::wire::{money, now_ms, num, order_time, price_str, qty_str, trade_time};

pub(crate) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/trsrv/stocks", get(stocks))
        .route("/iserver/marketdata/snapshot", get(snapshot))
        .route("/iserver/marketdata/history", get(history))
        .route("/portfolio/accounts", get(portfolio_accounts))
        .route("/portfolio/{acct}/summary", get(summary))
        .route(
            "/portfolio/{acct}/positions/invalidate",
            post(invalidate_positions),
        )
        .route("/portfolio/{acct}/positions/{page}", get(positions))
        .route("/iserver/account/{acct}/orders", post(place_orders))
        .route("/iserver/account/{acct}/orders/whatif", post(whatif))
        .route("/iserver/reply/{id}", post(reply))
        .route("/iserver/account/order/status/{id}", get(order_status))
        .route("/iserver/account/orders", get(live_orders))
        .route("/iserver/account/{acct}/order/{id}", delete(cancel_order))
        .route("/iserver/account/trades", get(trades))
}

fn query_map(query: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn bad_request(message: impl Into<String>) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"error": message.into()}))
}

/// Refuses when the session is not usable or the path names another account.
fn gate(state: &SimState, account: Option<&str>) -> Option<Response> {
    if !state.session_usable() {
        return Some(not_authenticated());
    }
    match account {
        Some(account) if account != state.account.account_id => {
            Some(bad_request("account not found"))
        }
        _ => None,
    }
}

fn doesnt_exist(order_id: &str) -> Response {
    match order_id.trim().parse::<u64>() {
        Ok(id) => bad_request(format!("OrderID {id} doesn't exist")),
        Err(_) => bad_request("OrderID doesn't exist"),
    }
}

// ---------------------------------------------------------------- market data

async fn stocks(State(state): State<SharedState>, RawQuery(query): RawQuery) -> Response {
    let params = query_map(query);
    let Some(symbols) = params.get("symbols") else {
        return bad_request("symbols is required");
    };
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, None) {
        return refusal;
    }
    let mut answer = Map::new();
    for symbol in symbols.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let symbol = symbol.to_ascii_uppercase();
        let listings: Vec<&Listing> = guard.market.listings_for(&symbol).collect();
        let Some(first) = listings.first() else {
            // Unknown symbols are simply absent, as in CPGW.
            continue;
        };
        let contracts: Vec<Value> = listings
            .iter()
            .map(|listing| {
                json!({
                    "conid": listing.instrument.conid,
                    "exchange": listing.instrument.exchange,
                    "isUS": listing.instrument.is_us,
                })
            })
            .collect();
        answer.insert(
            symbol.clone(),
            json!([{
                "name": first.instrument.name,
                "chineseName": null,
                "assetClass": "STK",
                "contracts": contracts,
            }]),
        );
    }
    json_response(StatusCode::OK, Value::Object(answer))
}

async fn snapshot(State(state): State<SharedState>, RawQuery(query): RawQuery) -> Response {
    let params = query_map(query);
    let Some(conids) = params.get("conids") else {
        return bad_request("conids is required");
    };
    let fields: Vec<String> = params
        .get("fields")
        .map_or("31,84,86", String::as_str)
        .split(',')
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect();
    let now = now_ms();
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None) {
        return refusal;
    }
    // Each snapshot request is one tick of the price walk.
    guard.market.tick();
    guard.reevaluate(now);
    let state = &mut *guard;
    let mut rows = Vec::new();
    for conid in conids
        .split(',')
        .filter_map(|c| c.trim().parse::<i64>().ok())
    {
        let Some(listing) = state.market.by_conid(conid) else {
            continue;
        };
        let mut row = Map::new();
        row.insert("conid".to_owned(), json!(conid));
        row.insert("conidEx".to_owned(), json!(conid.to_string()));
        row.insert("_updated".to_owned(), json!(now));
        row.insert("server_id".to_owned(), json!("q0"));
        row.insert("6119".to_owned(), json!("q0"));
        let warming = state.scenario.snapshot_warmup && state.trading.snapshot_warmed.insert(conid);
        if !warming {
            let quote = listing.quote;
            for field in &fields {
                let value = match field.as_str() {
                    "31" => {
                        let prefix = state.scenario.price_prefix.map(String::from);
                        format!("{}{}", prefix.unwrap_or_default(), price_str(quote.last))
                    }
                    "84" => price_str(quote.bid),
                    "86" => price_str(quote.ask),
                    "85" | "88" => "100".to_owned(),
                    "55" => listing.instrument.symbol.to_owned(),
                    "7051" => listing.instrument.name.to_owned(),
                    "6509" => "RpB".to_owned(),
                    _ => continue,
                };
                row.insert(field.clone(), Value::String(value));
            }
        }
        rows.push(Value::Object(row));
    }
    json_response(StatusCode::OK, Value::Array(rows))
}

async fn history(State(state): State<SharedState>, RawQuery(query): RawQuery) -> Response {
    let params = query_map(query);
    let Some(conid) = params
        .get("conid")
        .and_then(|c| c.trim().parse::<i64>().ok())
    else {
        return bad_request("conid is required");
    };
    let period = params.get("period").map_or("1w", String::as_str);
    let bar = params.get("bar").map_or("1d", String::as_str);
    let (Some(period_ms), Some(bar_ms)) = (
        parse_duration_ms(period, false),
        parse_duration_ms(bar, true),
    ) else {
        return bad_request("invalid period or bar");
    };
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, None) {
        return refusal;
    }
    let (Some(listing), Some(bars)) = (
        guard.market.by_conid(conid),
        guard.market.history(conid, period_ms, bar_ms),
    ) else {
        return bad_request("No contract found for conid");
    };
    let high = bars.iter().map(|b| b.high).max().unwrap_or_default();
    let low = bars.iter().map(|b| b.low).min().unwrap_or_default();
    let data: Vec<Value> = bars
        .iter()
        .map(|b| {
            json!({
                "o": num(b.open),
                "c": num(b.close),
                "h": num(b.high),
                "l": num(b.low),
                "v": num(b.volume),
                "t": b.time_ms,
            })
        })
        .collect();
    let start = bars.first().map_or(0, |b| b.time_ms);
    let points = data.len().saturating_sub(1);
    json_response(
        StatusCode::OK,
        json!({
            "serverId": "20477",
            "symbol": listing.instrument.symbol,
            "text": listing.instrument.name,
            "priceFactor": 100,
            "startTime": trade_time(start),
            "high": format!("{}/0/0", (high * Decimal::ONE_HUNDRED).normalize()),
            "low": format!("{}/0/0", (low * Decimal::ONE_HUNDRED).normalize()),
            "timePeriod": period,
            "barLength": bar_ms / 1000,
            "mdAvailability": "S",
            "mktDataDelay": 0,
            "outsideRth": false,
            "volumeFactor": 1,
            "priceDisplayRule": 1,
            "priceDisplayValue": "2",
            "negativeCapable": false,
            "messageVersion": 2,
            "data": data,
            "points": points,
            "travelTime": 12,
        }),
    )
}

// ------------------------------------------------------------------ portfolio

async fn portfolio_accounts(State(state): State<SharedState>) -> Response {
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, None) {
        return refusal;
    }
    let id = guard.account.account_id.as_str();
    let kind = if id.starts_with("DU") {
        "DEMO"
    } else {
        "INDIVIDUAL"
    };
    json_response(
        StatusCode::OK,
        json!([{
            "id": id,
            "accountId": id,
            "accountVan": id,
            "accountTitle": "",
            "displayName": id,
            "accountAlias": null,
            "currency": "USD",
            "type": kind,
            "tradingType": "STKNOPT",
            "covestor": false,
            "parent": {},
            "desc": id,
        }]),
    )
}

fn summary_entry(amount: Decimal, now: i64) -> Value {
    json!({
        "amount": num(amount.round_dp(2)),
        "currency": "USD",
        "isNull": false,
        "timestamp": now,
        "value": null,
        "severity": 0,
    })
}

fn summary_text(text: &str, now: i64) -> Value {
    json!({
        "amount": 0.0,
        "currency": null,
        "isNull": false,
        "timestamp": now,
        "value": text,
        "severity": 0,
    })
}

async fn summary(State(state): State<SharedState>, Path(acct): Path<String>) -> Response {
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct)) {
        return refusal;
    }
    let now = now_ms();
    // What CPGW reports lags the fills like the positions do.
    let figures = guard.trading.reported.figures(&guard.market);
    json_response(
        StatusCode::OK,
        json!({
            "accountcode": summary_text(&guard.account.account_id, now),
            "accountready": summary_text("true", now),
            "accounttype": summary_text("INDIVIDUAL", now),
            "availablefunds": summary_entry(figures.available_funds, now),
            "buyingpower": summary_entry(figures.buying_power, now),
            "equitywithloanvalue": summary_entry(figures.net_liquidation, now),
            "excessliquidity": summary_entry(figures.excess_liquidity, now),
            "grosspositionvalue": summary_entry(figures.gross_position_value, now),
            "initmarginreq": summary_entry(figures.init_margin, now),
            "maintmarginreq": summary_entry(figures.maint_margin, now),
            "netliquidation": summary_entry(figures.net_liquidation, now),
            "settledcash": summary_entry(figures.total_cash, now),
            "totalcashvalue": summary_entry(figures.total_cash, now),
        }),
    )
}

async fn positions(
    State(state): State<SharedState>,
    Path((acct, page)): Path<(String, String)>,
) -> Response {
    let Ok(page) = page.parse::<usize>() else {
        return bad_request("page must be a number");
    };
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct)) {
        return refusal;
    }
    guard.trading.positions_request();
    let size = guard.scenario.positions_page_size.max(1);
    let account = guard.account.account_id.clone();
    let rows: Vec<Value> = guard
        .trading
        .reported
        .holdings
        .iter()
        .skip(page.saturating_mul(size))
        .take(size)
        .filter_map(|(conid, holding)| {
            let listing = guard.market.by_conid(*conid)?;
            let last = listing.quote.last;
            let avg = holding.avg_price.round_dp(4);
            Some(json!({
                "acctId": account,
                "conid": conid,
                "contractDesc": listing.instrument.symbol,
                "position": num(holding.quantity),
                "mktPrice": num(last),
                "mktValue": num((holding.quantity * last).round_dp(2)),
                "currency": listing.instrument.currency,
                "avgCost": num(avg),
                "avgPrice": num(avg),
                "realizedPnl": 0.0,
                "unrealizedPnl": num((holding.quantity * (last - holding.avg_price)).round_dp(2)),
                "exchs": null,
                "expiry": null,
                "putOrCall": null,
                "multiplier": 0.0,
                "strike": 0.0,
                "exerciseStyle": null,
                "conExchMap": [],
                "assetClass": "STK",
                "undConid": 0,
                "ticker": listing.instrument.symbol,
                "name": listing.instrument.name,
                "listingExchange": listing.instrument.listing_exchange,
                "isUS": listing.instrument.is_us,
            }))
        })
        .collect();
    json_response(StatusCode::OK, Value::Array(rows))
}

/// Acknowledged but does not skip the lag: CPGW's cache refresh is not
/// instant either. Tests use `settle_positions()`.
async fn invalidate_positions(
    State(state): State<SharedState>,
    Path(acct): Path<String>,
) -> Response {
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct)) {
        return refusal;
    }
    json_response(StatusCode::OK, json!({"message": "success"}))
}

// --------------------------------------------------------------------- orders

/// The confirmation question for one warning id.
fn question(reply_id: &str, message_id: &str) -> Response {
    let text = match message_id {
        "o163" => {
            "The following order exceeds the price percentage limit of 3%. Are you sure you want to submit this order?"
        }
        "o354" => {
            "You are submitting an order without market data. We strongly recommend against this as it may result in suboptimal executions. Are you sure you want to submit this order?"
        }
        "o10152" => {
            "The order value is large compared to your account. Are you sure you want to submit this order?"
        }
        "o10164" => {
            "Traders are responsible for understanding cash quantity details, which are provided on a best efforts basis only. Are you sure you want to submit this order?"
        }
        "o10223" => {
            "Fractional share orders are routed as market orders and may execute at a different price. Are you sure you want to submit this order?"
        }
        "o10151" => {
            "You are about to submit a stop order. Please be aware of the various stop order types available. Are you sure you want to submit this order?"
        }
        "o10153" => {
            "Confirm mandatory cap price: the order may be capped to prevent executions far from the market. Are you sure you want to submit this order?"
        }
        _ => {
            "Simulated warning that the product has not seen before. Are you sure you want to submit this order?"
        }
    };
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
    let now = now_ms();
    let SimState {
        trading,
        market,
        scenario,
        account,
        ..
    } = state;
    let placed = match trading.place(tickets, &account.account_id, market, scenario, now) {
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
    if scenario.fail_with_503_after_landing > 0 {
        scenario.fail_with_503_after_landing -= 1;
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "Service Unavailable", "statusCode": 503}),
        );
    }
    json_response(StatusCode::OK, Value::Array(acks))
}

async fn place_orders(
    State(state): State<SharedState>,
    Path(acct): Path<String>,
    body: Bytes,
) -> Response {
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct)) {
        return refusal;
    }
    let tickets = match parse_tickets(&body, &guard.account, &guard.market)
        .and_then(|tickets| guard.trading.check_against_book(&tickets).map(|()| tickets))
    {
        Ok(tickets) => tickets,
        Err(error) => return bad_request(error),
    };
    let rounds: VecDeque<String> = guard.scenario.warning_rounds.iter().cloned().collect();
    if let Some(first) = rounds.front().cloned() {
        let reply_id = random_uuid_like();
        guard
            .trading
            .pending
            .insert(reply_id.clone(), PendingSubmission { tickets, rounds });
        return question(&reply_id, &first);
    }
    place_and_ack(&mut guard, tickets)
}

async fn reply(State(state): State<SharedState>, Path(id): Path<String>, body: Bytes) -> Response {
    let Some(confirmed) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| value.get("confirmed").and_then(Value::as_bool))
    else {
        return bad_request("body must be {\"confirmed\":true|false}");
    };
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None) {
        return refusal;
    }
    guard.trading.reply_log.push((id.clone(), confirmed));
    let Some(mut pending) = guard.trading.pending.remove(&id) else {
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
        guard.trading.pending.insert(reply_id.clone(), pending);
        return question(&reply_id, &next);
    }
    place_and_ack(&mut guard, pending.tickets)
}

/// The price a what-if assumes: the touch for market-like orders, the
/// limit or stop price otherwise.
fn whatif_price(ticket: &OrderTicket, listing: &Listing) -> Decimal {
    let touch = match ticket.side {
        Side::Buy => listing.quote.ask,
        Side::Sell => listing.quote.bid,
    };
    match ticket.order_type {
        OrderType::Market | OrderType::Trail => touch,
        OrderType::Limit | OrderType::Stop | OrderType::StopLimit => ticket.price.unwrap_or(touch),
    }
}

async fn whatif(
    State(state): State<SharedState>,
    Path(acct): Path<String>,
    body: Bytes,
) -> Response {
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct)) {
        return refusal;
    }
    let tickets = match parse_tickets(&body, &guard.account, &guard.market) {
        Ok(tickets) => tickets,
        Err(error) => return bad_request(error),
    };
    let Some(ticket) = tickets.first() else {
        return bad_request("orders must not be empty");
    };
    let Some(listing) = guard.market.by_conid(ticket.conid) else {
        return bad_request("No contract found for conid");
    };
    let currency = listing.instrument.currency;
    let rate = usd_rate(currency);
    let price = whatif_price(ticket, listing);
    let quantity = ticket.quantity.unwrap_or_else(|| {
        (ticket.cash_qty.unwrap_or_default() / price)
            .round_dp_with_strategy(4, RoundingStrategy::ToZero)
    });
    let amount = ticket.cash_qty.unwrap_or(quantity * price);
    let fee = commission(quantity, price);
    let figures = guard.trading.book.figures(&guard.market);
    let held = guard
        .trading
        .book
        .holdings
        .get(&ticket.conid)
        .map_or(Decimal::ZERO, |h| h.quantity);
    let after = match ticket.side {
        Side::Buy => held + quantity,
        Side::Sell => held - quantity,
    };
    let gross_change = (after.abs() - held.abs()) * price * rate;
    let init_change = gross_change * Decimal::new(5, 1);
    let maint_change = gross_change * Decimal::new(25, 2);
    let equity_change = -(fee * rate);
    let usd = |value: Decimal| money(value, "USD");
    let trio = |current: Decimal, change: Decimal| json!({"current": usd(current), "change": usd(change), "after": usd(current + change)});
    let warn = (!guard.scenario.market_open && !ticket.outside_rth).then(|| {
        "21/The market is closed: this order will be held until the market opens.".to_owned()
    });
    let cost = (amount + fee) * rate;
    let error = (ticket.side == Side::Buy && cost > figures.available_funds)
        .then(|| "Your account has insufficient funds to place this order.".to_owned());
    json_response(
        StatusCode::OK,
        json!({
            "amount": {
                "amount": money(amount, currency),
                "commission": money(fee, currency),
                "total": money(amount + fee, currency),
            },
            "equity": trio(figures.net_liquidation, equity_change),
            "initial": trio(figures.init_margin, init_change),
            "maintenance": trio(figures.maint_margin, maint_change),
            "position": {
                "current": qty_str(held),
                "change": qty_str(after - held),
                "after": qty_str(after),
            },
            "warn": warn,
            "error": error,
        }),
    )
}

/// One order as `/iserver/account/order/status/{id}` renders it.
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

async fn order_status(State(state): State<SharedState>, Path(id): Path<String>) -> Response {
    let now = now_ms();
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None) {
        return refusal;
    }
    let state = &mut *guard;
    let Some(index) = state.trading.index_of(&id) else {
        return doesnt_exist(&id);
    };
    state
        .trading
        .poll(index, &state.market, &state.scenario, now);
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

async fn live_orders(State(state): State<SharedState>, RawQuery(query): RawQuery) -> Response {
    // `filters=Submitted,PendingCancel` (also accepted: `pending_cancel`).
    let normalize = |status: &str| status.trim().replace('_', "").to_ascii_lowercase();
    let filters: Vec<String> = query_map(query)
        .get("filters")
        .map(|f| {
            f.split(',')
                .map(normalize)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None) {
        return refusal;
    }
    let state = &mut *guard;
    if state.scenario.orders_warmup && !state.trading.orders_warmed {
        state.trading.orders_warmed = true;
        return json_response(StatusCode::OK, json!({"orders": [], "snapshot": false}));
    }
    state.trading.orders_warmed = true;
    let mut rows = Vec::new();
    let mut shown = Vec::new();
    for (index, order) in state.trading.orders.iter().enumerate() {
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

async fn cancel_order(
    State(state): State<SharedState>,
    Path((acct, id)): Path<(String, String)>,
) -> Response {
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct)) {
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

async fn trades(State(state): State<SharedState>) -> Response {
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, None) {
        return refusal;
    }
    let account = guard.account.account_id.as_str();
    let rows: Vec<Value> = guard
        .trading
        .executions
        .iter()
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
