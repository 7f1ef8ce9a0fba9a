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

/// Which accounts call an endpoint needs first in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prime {
    /// None (`/trsrv/...`, `/portfolio/accounts`).
    Nothing,
    /// `GET /iserver/accounts` (orders, snapshots, trades...).
    Iserver,
    /// `GET /portfolio/accounts` (summary, positions).
    Portfolio,
}

/// Refuses when the session is not usable, the accounts call the endpoint
/// needs has not been made in this brokerage session, or the path names
/// another account.
///
/// Client projects report `500 {"error":"Please query /accounts first"}`
/// from `/iserver/account/orders`, `/order/status`, `/marketdata/snapshot`
/// and `/account/trades` until `GET /iserver/accounts` ran once in the
/// session (again after the daily reset), and from `/portfolio/{acct}/summary`
/// until `GET /portfolio/accounts` did; IBKR's documentation: "/portfolio/accounts
/// ... must be called prior to calling other /portfolio endpoints".
pub(crate) fn gate(state: &SimState, account: Option<&str>, prime: Prime) -> Option<Response> {
    if !state.session_usable() {
        return Some(not_authenticated());
    }
    let primed = match prime {
        Prime::Nothing => true,
        Prime::Iserver => state.iserver_accounts_queried,
        Prime::Portfolio => state.portfolio_accounts_queried,
    };
    if state.scenario.accounts_priming && !primed {
        return Some(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "Please query /accounts first"}),
        ));
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
