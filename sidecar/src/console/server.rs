//! The console's HTTP server: loopback only, every request through [`guard`], every response
//! through [`harden`], server-rendered pages, a server-sent event stream that tells the page
//! when to fetch its live part again, and the owner's actions as CSRF-checked form POSTs.

use super::pages::{self, FormContext};
use super::security::{self, Gate, OwnAddress, SessionAccess};
use super::view::{self, AccountProbe};
use crate::clock::now_unix_seconds;
use crate::context::DaemonContext;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, http};
use shared_safety::ErrorCode;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest form body accepted (a pause reason is at most 200 bytes).
const MAX_FORM_BYTES: usize = 8 * 1024;

/// The live stream also ticks on its own, so ages on the page (the heartbeat's) stay current
/// and a pause set from the command line (another process) shows up.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// What every handler shares. The daemon is held weakly: connections a browser keeps open (a
/// page's event stream) outlive the server's task when the daemon is killed, and must not keep
/// what it holds (the trade journal's lock) alive.
#[derive(Clone)]
pub struct ConsoleState {
    context: Weak<DaemonContext>,
    gate: Arc<Gate>,
    own: Arc<OwnAddress>,
    accounts: Arc<AccountProbe>,
    stop: CancellationToken,
}

impl ConsoleState {
    pub(crate) fn new(
        context: &Arc<DaemonContext>,
        gate: Arc<Gate>,
        own: OwnAddress,
        stop: CancellationToken,
    ) -> ConsoleState {
        ConsoleState {
            accounts: Arc::new(AccountProbe::new(context.broker.subscribe())),
            context: Arc::downgrade(context),
            gate,
            own: Arc::new(own),
            stop,
        }
    }

    /// The running daemon, or `CONSOLE_NOT_RUNNING` once it is gone (answer with [`refusal`]).
    pub(crate) fn daemon(&self) -> Result<Arc<DaemonContext>, ErrorCode> {
        self.context.upgrade().ok_or(ErrorCode::ConsoleNotRunning)
    }
}

/// The fields of a POST that passed every check (Host, Origin, Sec-Fetch-Site, session,
/// CSRF token); handlers of owner actions take it as `Extension<OwnerForm>`. The CSRF field
/// itself is not in it.
#[derive(Clone, Debug, Default)]
pub struct OwnerForm {
    fields: HashMap<String, String>,
}

impl OwnerForm {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// The answer to a finished owner action: every open page refreshes, and this one goes back
/// to the console (303, so a reload does not send the form again).
pub fn done(state: &ConsoleState) -> Response {
    if let Ok(daemon) = state.daemon() {
        daemon.activity.notify();
    }
    see_other("/")
}

fn see_other(location: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

pub(crate) fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/fragment", get(fragment))
        .route("/events", get(events))
        .route("/login", get(login))
        .route("/assets/console.css", get(stylesheet))
        .route("/assets/console.js", get(script))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .merge(super::approvals::routes())
        .merge(super::agents::routes())
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        // Outermost: refusals and 404s get the same headers as pages.
        .layer(middleware::from_fn(harden))
        .with_state(state)
}

/// Serves until `stop` (the daemon's stop) is cancelled.
pub(crate) async fn serve<L>(listener: L, state: ConsoleState)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let stop = state.stop.clone();
    let app = router(state);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(%error, "the console server stopped");
    }
}

/// A refusal as the console answers it: the status, a page saying what to do, and the code in
/// `x-error-code`.
pub fn refusal(code: ErrorCode) -> Response {
    let status = match code {
        ErrorCode::ConsoleSessionRequired | ErrorCode::ConsoleLoginRefused => {
            StatusCode::UNAUTHORIZED
        }
        ErrorCode::ConsoleHostRefused
        | ErrorCode::ConsoleOriginRefused
        | ErrorCode::ConsoleCsrfInvalid => StatusCode::FORBIDDEN,
        ErrorCode::CliArgumentInvalid => StatusCode::BAD_REQUEST,
        ErrorCode::ConsoleNotRunning => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = (status, html_response(pages::refusal(code))).into_response();
    response
        .headers_mut()
        .insert("x-error-code", HeaderValue::from_static(code.code()));
    response
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Every request: the Host must be the console's own (DNS rebinding), an Origin must be the
/// console's own and a state-changing request must carry one, and fetch metadata must not say
/// another site started it. Then everything but `/login` and the static assets needs a live
/// session, and every POST the session's CSRF token in its form.
async fn guard(State(state): State<ConsoleState>, request: Request, next: Next) -> Response {
    match checked(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(code) => {
            tracing::debug!(code = code.code(), "console request refused");
            refusal(code)
        }
    }
}

async fn checked(state: &ConsoleState, mut request: Request) -> Result<Request, ErrorCode> {
    let headers = request.headers();
    state.own.check_host(header_text(headers, header::HOST))?;
    let state_changing = !matches!(*request.method(), Method::GET | Method::HEAD);
    state
        .own
        .check_origin(header_text(headers, header::ORIGIN), state_changing)?;
    let path = request.uri().path();
    // The login link arrives from outside the console (the CLI's opener page, a pasted link):
    // the secret it carries is what proves it.
    if path == "/login" && !state_changing {
        return Ok(request);
    }
    security::check_fetch_site(header_text(headers, "sec-fetch-site"))?;
    if path.starts_with("/assets/") && !state_changing {
        return Ok(request);
    }
    let access = state.gate.session(header_text(headers, header::COOKIE))?;
    if state_changing {
        let (parts, body) = request.into_parts();
        let is_form = header_text(&parts.headers, header::CONTENT_TYPE)
            .is_some_and(|kind| kind.starts_with("application/x-www-form-urlencoded"));
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| ErrorCode::ConsoleCsrfInvalid)?;
        let mut fields: HashMap<String, String> = if is_form {
            url::form_urlencoded::parse(&bytes).into_owned().collect()
        } else {
            HashMap::new()
        };
        access.check_csrf(fields.get("csrf").map(String::as_str))?;
        fields.remove("csrf");
        request = Request::from_parts(parts, Body::empty());
        request.extensions_mut().insert(OwnerForm { fields });
    }
    request.extensions_mut().insert(access);
    Ok(request)
}

/// Headers on every response: the strict CSP, no framing, no sniffing, no referrer to other
/// origins, no caching, no cross-origin embedding; and never a CORS header.
async fn harden(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: under it browsers send `Origin: null` with the console's own form
        // POSTs (Fetch standard), and the Origin check could not tell them from a sandboxed
        // attacker's. `same-origin` still sends no referrer to any other origin.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        http::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        http::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Exchanges the login link's secret for a session cookie, then leaves the secret's URL at
/// once: a 303 to `/`. A browser that arrived from another site (the CLI's forwarding page is
/// a `file:` page) would treat the whole redirect chain as cross-site and send no SameSite=Strict
/// cookie to `/`; it gets a page that moves on to `/` itself, a same-origin navigation.
async fn login(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let cookie = match state.gate.login(query.get("secret").map(String::as_str)) {
        Ok(cookie) => cookie,
        Err(code) => return refusal(code),
    };
    let Ok(set_cookie) = HeaderValue::from_str(&security::session_cookie(cookie.expose())) else {
        return refusal(ErrorCode::InternalError);
    };
    let mut response =
        if security::check_fetch_site(header_text(&headers, "sec-fetch-site")).is_ok() {
            see_other("/")
        } else {
            html_response(pages::continue_to_console())
        };
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie);
    tracing::info!("console: a browser opened a session");
    response
}

fn html_response(markup: maud::Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

async fn index(
    State(state): State<ConsoleState>,
    Extension(access): Extension<SessionAccess>,
) -> Response {
    let daemon = match state.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return refusal(code),
    };
    let view = view::gather(&daemon, &state.accounts).await;
    html_response(pages::page(&view, &FormContext { csrf: &access.csrf }))
}

async fn fragment(
    State(state): State<ConsoleState>,
    Extension(access): Extension<SessionAccess>,
) -> Response {
    let daemon = match state.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return refusal(code),
    };
    let view = view::gather(&daemon, &state.accounts).await;
    html_response(pages::live(&view, &FormContext { csrf: &access.csrf }))
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

/// One `changed` event whenever the daemon's activity or the broker state changes (and every
/// few seconds regardless); the page then fetches `/fragment`. Ends with the daemon, so a
/// graceful stop is not held up by open pages; and ends when the daemon is gone (its channels
/// close), since it holds no reference to it.
async fn events(State(state): State<ConsoleState>) -> Response {
    let daemon = match state.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return refusal(code),
    };
    struct Watch {
        activity: tokio::sync::watch::Receiver<u64>,
        broker: tokio::sync::watch::Receiver<crate::cpgw::BrokerState>,
        stop: CancellationToken,
        first: bool,
    }
    let start = Watch {
        activity: daemon.activity.subscribe(),
        broker: daemon.broker.subscribe(),
        stop: state.stop.clone(),
        first: true,
    };
    let stream = futures_util::stream::unfold(start, |mut watch| async move {
        if !watch.first {
            tokio::select! {
                _ = watch.stop.cancelled() => return None,
                changed = watch.activity.changed() => changed.ok()?,
                changed = watch.broker.changed() => changed.ok()?,
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
            }
        }
        watch.first = false;
        let event = Event::default()
            .event("changed")
            .data(now_unix_seconds().to_string());
        Some((Ok::<_, Infallible>(event), watch))
    });
    drop(daemon);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Pauses trading: the next order call is refused (the request path reads the pause from the
/// store on every call).
async fn pause(
    State(state): State<ConsoleState>,
    Extension(form): Extension<OwnerForm>,
) -> Response {
    let reason = match crate::cli::clean_pause_reason(form.field("reason").unwrap_or_default()) {
        Ok(reason) => reason,
        Err(error) => return refusal(error.code()),
    };
    let daemon = match state.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return refusal(code),
    };
    let paused = daemon.store.pause_trading(now_unix_seconds(), &reason);
    recorded(&state, paused, "trading paused from the console")
}

async fn resume(
    State(state): State<ConsoleState>,
    Extension(_form): Extension<OwnerForm>,
) -> Response {
    let daemon = match state.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return refusal(code),
    };
    let resumed = daemon.store.resume_trading();
    recorded(&state, resumed, "trading resumed from the console")
}

/// The answer to an action that wrote to the state store: logged and done, or the store's
/// refusal.
fn recorded<T>(
    state: &ConsoleState,
    result: Result<T, crate::error::SidecarError>,
    what: &'static str,
) -> Response {
    match result {
        Ok(_) => {
            tracing::warn!("{what}");
            done(state)
        }
        Err(error) => {
            tracing::error!(code = %error.code(), "console action failed: {what}");
            refusal(error.code())
        }
    }
}
