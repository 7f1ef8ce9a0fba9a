//! Market data, portfolio and order endpoints. Every one of them needs a
//! usable brokerage session (logged in, no competing session) and answers
//! 401 `{"error":"not authenticated"}` otherwise, like CPGW. The handlers
//! live by concern: `market_routes`, `portfolio_routes`, `order_routes` and
//! `whatif`.

use std::collections::HashMap;

use axum::{
    Router,
    http::StatusCode,
    response::Response,
    routing::{delete, get, post},
};
use serde_json::json;

use super::routes::{json_response, not_authenticated};
use super::state::{SharedState, SimState};
use super::{market_routes, order_routes, portfolio_routes, whatif};

pub(crate) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/trsrv/stocks", get(market_routes::stocks))
        .route("/iserver/marketdata/snapshot", get(market_routes::snapshot))
        .route("/iserver/marketdata/history", get(market_routes::history))
        .route("/portfolio/accounts", get(portfolio_routes::accounts))
        .route("/portfolio/{acct}/summary", get(portfolio_routes::summary))
        .route(
            "/portfolio/{acct}/positions/invalidate",
            post(portfolio_routes::invalidate),
        )
        .route(
            "/portfolio/{acct}/positions/{page}",
            get(portfolio_routes::positions),
        )
        .route(
            "/iserver/account/{acct}/orders",
            post(order_routes::place_orders),
        )
        .route(
            "/iserver/account/{acct}/orders/whatif",
            post(whatif::whatif),
        )
        .route("/iserver/reply/{id}", post(order_routes::reply))
        .route(
            "/iserver/account/order/status/{id}",
            get(order_routes::order_status),
        )
        .route("/iserver/account/orders", get(order_routes::live_orders))
        .route(
            "/iserver/account/{acct}/order/{id}",
            delete(order_routes::cancel_order),
        )
        .route("/iserver/account/trades", get(order_routes::trades))
}

pub(crate) fn query_map(query: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn bad_request(message: impl Into<String>) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"error": message.into()}))
}

/// Refuses when the session is not usable or the path names another account.
pub(crate) fn gate(state: &SimState, account: Option<&str>) -> Option<Response> {
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

pub(crate) fn doesnt_exist(order_id: &str) -> Response {
    match order_id.trim().parse::<u64>() {
        Ok(id) => bad_request(format!("OrderID {id} doesn't exist")),
        Err(_) => bad_request("OrderID doesn't exist"),
    }
}
