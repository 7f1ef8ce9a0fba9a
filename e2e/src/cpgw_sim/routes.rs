//! HTTP surface of the simulator: one handler per CPGW endpoint plus the
//! middleware every real CPGW answer goes through (request log, session cookie).
//!
//! To add an endpoint: write a handler taking `State<SharedState>`, register it
//! in [`api_routes`] (trading endpoints live in `trading_routes`), and keep
//! any new scenario knobs in `SimScenario`.

use axum::{
    Router,
    body::{Body, Bytes, to_bytes},
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use super::state::{AuthState, LoggedRequest, SERVER_MAC, SharedState, random_hex, server_info};
use super::trading_routes;

/// Bodies larger than this are refused; no CPGW request comes close.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The whole application: `/v1/api` routes, a JSON 404 for everything else,
/// and the logging/cookie middleware around both.
pub(crate) fn router(state: SharedState) -> Router {
    Router::new()
        .nest("/v1/api", api_routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_and_set_cookie,
        ))
        .with_state(state)
}

fn api_routes() -> Router<SharedState> {
    Router::new()
        .route("/iserver/auth/status", post(auth_status).get(auth_status))
        .route("/tickle", post(tickle))
        .route("/iserver/auth/ssodh/init", post(ssodh_init))
        .route("/iserver/accounts", get(accounts))
        .merge(trading_routes::routes())
}

/// Every CPGW endpoint lives under this prefix.
const API_PREFIX: &str = "/v1/api";

/// Logs the request (with its body, so tests can assert what the product
/// sent), applies what the clock did since the last request (idle lapse,
/// nightly reset, expiry, positions lag), enforces pacing, and stamps the
/// session cookie the real gateway sets on every answer: the product must
/// never forward it, and tests check that it does not.
async fn record_and_set_cookie(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY_BYTES).await else {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "request body too large"}),
        );
    };
    let (cookie, refused) = {
        let mut guard = state.lock();
        let mut refused = false;
        if let Some(api_path) = parts.uri.path().strip_prefix(API_PREFIX) {
            let now = guard.clock.now_ms();
            // Time first: a request after the idle timeout finds the session
            // lapsed, then counts as activity.
            guard.on_time(now);
            guard.last_request_ms = now;
            let state = &mut *guard;
            if let Err(why) =
                state
                    .pacer
                    .admit(parts.method.as_str(), api_path, now, &state.scenario)
            {
                // Visible with RUST_LOG=e2e=info: which request tripped pacing.
                tracing::info!(method = %parts.method, path = api_path, ?why, "cpgw simulator answered 429");
                refused = true;
            }
        }
        guard.request_log.push(LoggedRequest {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            body: (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned()),
        });
        let cookie = format!(
            "x-sess-uuid={}; Path=/; Secure; HttpOnly",
            guard.cookie_value
        );
        (cookie, refused)
    };
    let mut response = if refused {
        too_many_requests()
    } else {
        next.run(Request::from_parts(parts, Body::from(bytes)))
            .await
    };
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// IBKR documents the status ("429 Too Many Requests") but not the body;
/// this one is shaped like the gateway's other errors.
fn too_many_requests() -> Response {
    json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": "Too Many Requests", "statusCode": 429}),
    )
}

async fn auth_status(State(state): State<SharedState>) -> Response {
    let (authenticated, connected, competing) = {
        let mut guard = state.lock();
        guard.counters.auth_status += 1;
        guard.auth_flags()
    };
    json_response(
        StatusCode::OK,
        json!({
            "authenticated": authenticated,
            "connected": connected,
            "competing": competing,
            "serverInfo": server_info(),
            "MAC": SERVER_MAC,
            "fail": "",
        }),
    )
}

async fn tickle(State(state): State<SharedState>) -> Response {
    let (auth_state, (authenticated, connected, competing)) = {
        let mut guard = state.lock();
        guard.counters.tickles += 1;
        (guard.auth_state, guard.auth_flags())
    };
    if auth_state == AuthState::LoggedOut {
        // The real gateway answers a tickle without a session with a bare 401.
        return StatusCode::UNAUTHORIZED.into_response();
    }
    json_response(
        StatusCode::OK,
        json!({
            "session": random_hex(16),
            "ssoExpires": 0,
            "collission": false,
            "userId": 1,
            "hmds": {"error": "no bridge"},
            "iserver": {
                "authStatus": {
                    "authenticated": authenticated,
                    "competing": competing,
                    "connected": connected,
                    "message": "",
                    "MAC": SERVER_MAC,
                    "serverInfo": server_info(),
                }
            }
        }),
    )
}

/// Reopens the brokerage session. Deliberately needs no credentials and
/// cannot log a user in: a logged-out session stays logged out, because the
/// real login is a browser flow the product must never automate. While
/// another session competes, only `"compete": true` takes the session back.
async fn ssodh_init(State(state): State<SharedState>, body: Bytes) -> Response {
    let compete = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| value.get("compete").and_then(Value::as_bool))
        .unwrap_or(false);
    let mut guard = state.lock();
    guard.counters.ssodh_inits += 1;
    if guard.auth_state == AuthState::LoggedOut {
        return not_authenticated();
    }
    if guard.ssodh_init_fails {
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "no bridge"}),
        );
    }
    if guard.scenario.competing {
        if !compete {
            return json_response(
                StatusCode::OK,
                json!({"authenticated": false, "connected": true, "competing": true}),
            );
        }
        // Taking the session back from TWS or mobile opens a new brokerage
        // session here.
        guard.scenario.competing = false;
        guard.begin_brokerage_session();
    }
    guard.set_auth_state(AuthState::LoggedIn);
    json_response(
        StatusCode::OK,
        json!({"authenticated": true, "connected": true, "competing": false}),
    )
}

async fn accounts(State(state): State<SharedState>) -> Response {
    let mut guard = state.lock();
    guard.counters.accounts += 1;
    if !guard.session_usable() {
        return not_authenticated();
    }
    guard.iserver_accounts_queried = true;
    json_response(StatusCode::OK, guard.accounts_json())
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "Not Found", "statusCode": 404}),
    )
}

pub(crate) fn not_authenticated() -> Response {
    json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "not authenticated"}),
    )
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}
