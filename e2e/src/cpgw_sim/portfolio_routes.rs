//! Accounts, summary and positions. What they report lags the fills by the
//! positions lag, on the clock.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::clock::millis;
use super::routes::json_response;
use super::state::SharedState;
use super::trading_routes::{Prime, bad_request, gate};
use super::wire::num;

pub(crate) async fn accounts(State(state): State<SharedState>) -> Response {
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None, Prime::Nothing) {
        return refusal;
    }
    guard.portfolio_accounts_queried = true;
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

pub(crate) async fn summary(
    State(state): State<SharedState>,
    Path(acct): Path<String>,
) -> Response {
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct), Prime::Portfolio) {
        return refusal;
    }
    let now = guard.clock.now_ms();
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

pub(crate) async fn positions(
    State(state): State<SharedState>,
    Path((acct, page)): Path<(String, String)>,
) -> Response {
    let Ok(page) = page.parse::<usize>() else {
        return bad_request("page must be a number");
    };
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct), Prime::Portfolio) {
        return refusal;
    }
    let now = guard.clock.now_ms();
    let lag = millis(guard.scenario.positions_lag);
    // A read after `positions/invalidate` is fresh; otherwise fills show
    // once they are older than the lag (reference server ADR-008: cached,
    // "tens of seconds").
    guard.trading.settle_due(now, lag, true);
    let size = guard.scenario.positions_page_size.max(1);
    let keep_closed = guard.scenario.positions_keep_closed_rows;
    let account = guard.account.account_id.clone();
    let rows: Vec<Value> = guard
        .trading
        .reported
        .holdings
        .iter()
        .filter(|(_, holding)| keep_closed || !holding.quantity.is_zero())
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

/// `POST /portfolio/{acct}/positions/invalidate`: the next positions read
/// is fresh (IBKR: invalidates the backend cache of the positions). The
/// answer's shape is not from a source.
pub(crate) async fn invalidate(
    State(state): State<SharedState>,
    Path(acct): Path<String>,
) -> Response {
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, Some(&acct), Prime::Portfolio) {
        return refusal;
    }
    if guard.scenario.positions_invalidate_refreshes {
        guard.trading.invalidate_positions();
    }
    json_response(StatusCode::OK, json!({"message": "success"}))
}
