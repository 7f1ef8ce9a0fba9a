//! Contract search, snapshots and bars.

use axum::{
    extract::{RawQuery, State},
    http::StatusCode,
    response::Response,
};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::market::{Listing, parse_duration_ms};
use super::routes::json_response;
use super::state::SharedState;
use super::trading_routes::{Prime, bad_request, gate, query_map};
use super::wire::{num, price_str, trade_time};

pub(crate) async fn stocks(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_map(query);
    let Some(symbols) = params.get("symbols") else {
        return bad_request("symbols is required");
    };
    let guard = state.lock();
    if let Some(refusal) = gate(&guard, None, Prime::Nothing) {
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

/// `GET /iserver/marketdata/snapshot`.
///
/// IBKR Web API documentation, "Top-of-Book Snapshots": "a "pre-flight"
/// request must be made ... This initial request will not deliver any data"
/// (the answer carries only `conid` and `conidEx`), and "Once a pre-flight
/// request has been made for a given conid, all requested fields will be
/// delivered with all future responses; future snapshot requests do not need
/// to repeat the desired fields". So a field is delivered once an earlier
/// request for the conid asked for it, per brokerage session.
pub(crate) async fn snapshot(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = query_map(query);
    let Some(conids) = params.get("conids") else {
        return bad_request("conids is required");
    };
    let asked: Vec<String> = params
        .get("fields")
        .map_or("", String::as_str)
        .split(',')
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect();
    let mut guard = state.lock();
    if let Some(refusal) = gate(&guard, None, Prime::Iserver) {
        return refusal;
    }
    let now = guard.clock.now_ms();
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
        let known = state.trading.snapshot_fields.entry(conid).or_default();
        let delivered: Vec<String> = if state.scenario.snapshot_warmup {
            let mut fields: Vec<String> = known.iter().cloned().collect();
            fields.sort();
            fields
        } else {
            asked.iter().chain(known.iter()).cloned().collect()
        };
        let first = known.is_empty();
        known.extend(asked.iter().cloned());
        let mut row = Map::new();
        row.insert("conid".to_owned(), json!(conid));
        row.insert("conidEx".to_owned(), json!(conid.to_string()));
        if state.scenario.snapshot_warmup && first {
            rows.push(Value::Object(row));
            continue;
        }
        row.insert("_updated".to_owned(), json!(now));
        row.insert("server_id".to_owned(), json!("q0"));
        row.insert("6119".to_owned(), json!("q0"));
        row.insert("6509".to_owned(), json!("RpB"));
        let quote = listing.quote;
        for field in &delivered {
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
                _ => continue,
            };
            row.insert(field.clone(), Value::String(value));
        }
        rows.push(Value::Object(row));
    }
    json_response(StatusCode::OK, Value::Array(rows))
}

pub(crate) async fn history(
    State(state): State<SharedState>,
    RawQuery(query): RawQuery,
) -> Response {
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
    if let Some(refusal) = gate(&guard, None, Prime::Iserver) {
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
