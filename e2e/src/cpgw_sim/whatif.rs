//! `POST /iserver/account/{acct}/orders/whatif`: what an order would do,
//! without sending it.
//!
//! Shapes, from two sources (docs/cpgw-simulator.md):
//! - IBKR's endpoint reference example, for a quantity order:
//!   `"amount": {"amount": "1,977.60 USD (10 Shares)", "commission": "1 USD",
//!   "total": "1,978.60 USD"}`, `equity`/`initial`/`maintenance` as
//!   `{current, change, after}` whole-number strings with thousands
//!   separators (`"215,415,594"`, `"-1"`), `position` likewise, `warn` as
//!   `"<code>/<text>"` or null, `error` null.
//! - A live retail capture in pedrobraiti/mcp-ibkr-agent
//!   (tests/test_cpapi_broker.py, DECISIONS.md ADR-009), for a USD 2 cash
//!   buy: `"amount": "2 USD (0.0067 Shares)"`, `"commission": "0.02 USD"`,
//!   `"total": "2.02 USD"`, `equity` and `initial` null, a `warns` list
//!   beside `warn`, and the available-funds impact in `data` rows
//!   (`CURRENT_POS`, `CURRENT_FUNDS`, `AFTER_FUNDS`).

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use super::engine::commission;
use super::market::{Listing, usd_rate};
use super::orders::{OrderTicket, OrderType, Side, parse_tickets};
use super::questions::whatif_warns;
use super::routes::json_response;
use super::state::SharedState;
use super::trading_routes::{Prime, bad_request, gate};
use super::wire::{money, qty_str, whole_money};

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

fn trio(current: Decimal, change: Decimal) -> Value {
    json!({
        "current": whole_money(current),
        "change": whole_money(change),
        "after": whole_money(current + change),
    })
}

fn data_row(label: &str, name: &str, value: String) -> Value {
    json!({"V": [value], "L": label, "N": name})
}

pub(crate) async fn whatif(
    State(state): State<SharedState>,
    Path(acct): Path<String>,
    body: Bytes,
) -> Response {
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct), Prime::Iserver) {
        return refusal;
    }
    let tickets = match parse_tickets(
        &body,
        &guard.account,
        &guard.market,
        guard.scenario.reject_child_coid,
    ) {
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
    let held = guard.trading.book.held(ticket.conid);
    let after = match ticket.side {
        Side::Buy => held + quantity,
        Side::Sell => held - quantity,
    };
    let gross_change = (after.abs() - held.abs()) * price * rate;
    let cost = (amount + fee) * rate;
    let warns = whatif_warns(ticket, &guard.scenario);
    // The text of this error is not from a source.
    let error = (ticket.side == Side::Buy && cost > figures.available_funds)
        .then(|| "Your account has insufficient funds to place this order.".to_owned());
    let mut answer = json!({
        "amount": {
            "amount": format!("{} ({} Shares)", money(amount, currency), qty_str(quantity)),
            "commission": money(fee, currency),
            "total": money(amount + fee, currency),
        },
        "warn": warns.first(),
        "warns": warns,
        "error": error,
    });
    let Some(object) = answer.as_object_mut() else {
        return json_response(StatusCode::OK, answer);
    };
    if ticket.cash_qty.is_some() {
        // The live capture: margin blocks null, funds impact in `data`.
        let funds_after = figures.available_funds - cost;
        object.insert("equity".to_owned(), Value::Null);
        object.insert("initial".to_owned(), Value::Null);
        object.insert(
            "data".to_owned(),
            json!([
                data_row("Current Position", "CURRENT_POS", qty_str(held)),
                data_row(
                    "Available Funds",
                    "CURRENT_FUNDS",
                    whole_money(figures.available_funds)
                ),
                data_row(
                    "Post Trade Available Funds*",
                    "AFTER_FUNDS",
                    whole_money(funds_after)
                ),
            ]),
        );
    } else {
        object.insert(
            "equity".to_owned(),
            trio(figures.net_liquidation, -(fee * rate)),
        );
        object.insert(
            "initial".to_owned(),
            trio(figures.init_margin, gross_change * Decimal::new(5, 1)),
        );
        object.insert(
            "maintenance".to_owned(),
            trio(figures.maint_margin, gross_change * Decimal::new(25, 2)),
        );
        object.insert(
            "position".to_owned(),
            json!({
                "current": qty_str(held),
                "change": qty_str(after - held),
                "after": qty_str(after),
            }),
        );
    }
    json_response(StatusCode::OK, answer)
}
