//! The authorization server's HTTP endpoints (paths in [`super::metadata`]).
//!
//! Errors follow the RFCs: the token, registration and revocation endpoints answer JSON
//! `{"error", "error_description"}` with the status RFC 6749 section 5.2 names; the
//! authorization endpoint redirects errors to the client once its client id and redirect URI
//! are known to be good, and shows them on a page (never redirecting) before that.

use super::AuthorizationServer;
use super::approvals::{ApprovalDesk, AskError, AuthorizeRequest, Stage, View};
use super::clients::{ClientMetadata, redirect_matches};
use super::errors::{OAuthError, OAuthErrorCode};
use super::grants::TokenForm;
use super::page;
use super::pkce::CodeChallenge;
use crate::http::limits::PeerAddr;
use crate::state::AppState;
use axum::Json;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use protocol::agents::ApprovalId;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shared_safety::scope::ScopeSet;
use std::sync::Arc;
use std::time::Duration;

/// Longest a status request waits for a change.
const MAX_STATUS_WAIT: Duration = Duration::from_secs(25);

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn oauth_error(error: &OAuthError) -> Response {
    let status = StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    no_store((status, Json(error.body())).into_response())
}

fn server(state: &AppState) -> Option<&Arc<AuthorizationServer>> {
    state.authz.as_ref()
}

fn not_served() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

pub(crate) async fn metadata(State(state): State<Arc<AppState>>) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let mut response = Json(super::metadata::document(
        &server.issuer,
        &state.resolved.allowed_scopes,
    ))
    .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

pub(crate) async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let mut response = Json(server.key.jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

pub(crate) async fn register(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let metadata: ClientMetadata = match serde_json::from_slice(&body) {
        Ok(metadata) => metadata,
        Err(_) => {
            return oauth_error(&OAuthError::new(
                OAuthErrorCode::InvalidClientMetadata,
                "The body must be a JSON object of client metadata (RFC 7591).",
            ));
        }
    };
    match server.clients.register(&metadata) {
        Ok(client) => no_store(
            (
                StatusCode::CREATED,
                Json(serde_json::json!({
                    "client_id": client.client_id,
                    "client_id_issued_at": crate::clock::unix_ms() / 1000,
                    "client_name": client.client_name,
                    "redirect_uris": client.redirect_uris,
                    "token_endpoint_auth_method": "none",
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                })),
            )
                .into_response(),
        ),
        Err(error) => oauth_error(&error),
    }
}

/// `GET /oauth/authorize`'s query (RFC 6749 section 4.1.1, RFC 7636, RFC 8707).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    resource: Option<String>,
    /// A page already opened (after the user id was sent, or on reload).
    request: Option<String>,
}

fn redirect_to(url: &str) -> Response {
    no_store(Redirect::to(url).into_response())
}

/// The cookie that binds a sign-in to the browser that opened its page. On `https` it takes
/// the `__Host-` prefix (Secure, whole host, set by this origin only).
fn cookie_name(state: &AppState) -> &'static str {
    if state.resolved.base_url.starts_with("https://") {
        "__Host-ibkr_authz"
    } else {
        "ibkr_authz"
    }
}

/// The browser's binding cookie, if it sent exactly one, of the right shape. Two cookies of
/// the name mean someone else planted one (another port on the same host, a sibling domain
/// on an old browser): neither is trusted.
fn browser_cookie(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(state);
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string());
    let first = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Some(first).filter(|value| {
        value.len() == 43
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Whether this request comes from the browser that opened `view`'s page.
fn same_browser(state: &AppState, headers: &HeaderMap, view: &View) -> bool {
    browser_cookie(state, headers).is_some_and(|cookie| digest(&cookie) == view.browser)
}

fn peer_key(state: &AppState, peer: &PeerAddr, headers: &HeaderMap) -> String {
    crate::http::net::rate_limit_key(crate::http::net::client_ip(
        peer.0.ip(),
        headers,
        &state.resolved.trusted_proxies,
    ))
}

/// An error found before anyone acted on the page: shown with its RFC name and a link back to
/// the client, never an automatic redirect (RFC 9700 section 4.11.2: anyone can register a
/// client, so an automatic redirect would make this page an open redirector).
fn early_error(
    desk: &ApprovalDesk,
    redirect_uri: &str,
    state: Option<&str>,
    error: &OAuthError,
) -> Response {
    page::error_with_return(
        StatusCode::BAD_REQUEST,
        error.code.as_str(),
        &error.description,
        &desk.error_redirect(redirect_uri, state, error),
    )
}

pub(crate) async fn authorize(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    if let Some(handle) = query.request.as_deref() {
        return show(&state, server, &headers, handle);
    }
    // Until the client and its redirect URI check out, errors stay on this page.
    let Some(client_id) = query.client_id.as_deref() else {
        return page::error(StatusCode::BAD_REQUEST, "The request names no client_id.");
    };
    let client = match server.clients.resolve(client_id).await {
        Ok(client) => client,
        Err(error) => return page::error(StatusCode::BAD_REQUEST, &error.description),
    };
    let (redirect_uri, redirect_uri_named) = match query.redirect_uri.as_deref() {
        // Taken only in the form it parses to, so what the laptop shows is what the browser
        // will be sent to (a parser drops tabs and newlines a raw string would keep).
        Some(uri)
            if uri.len() <= super::clients::MAX_REDIRECT_URI_BYTES
                && url::Url::parse(uri).is_ok_and(|parsed| parsed.as_str() == uri)
                && redirect_matches(&client.redirect_uris, uri) =>
        {
            (uri.to_string(), true)
        }
        Some(_) => {
            return page::error(
                StatusCode::BAD_REQUEST,
                "The redirect_uri is not one this client registered.",
            );
        }
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => {
            return page::error(
                StatusCode::BAD_REQUEST,
                "The request names no redirect_uri and the client registered several.",
            );
        }
    };
    let desk = &server.desk;
    let fail = |code: OAuthErrorCode, description: &str| {
        early_error(
            desk,
            &redirect_uri,
            query.state.as_deref(),
            &OAuthError::new(code, description),
        )
    };
    if query.response_type.as_deref() != Some("code") {
        return fail(
            OAuthErrorCode::UnsupportedResponseType,
            "Only response_type=code is supported.",
        );
    }
    if let Some(state) = query.state.as_deref()
        && state.len() > 1024
    {
        return fail(OAuthErrorCode::InvalidRequest, "state is too long.");
    }
    let challenge = match CodeChallenge::parse(
        query.code_challenge.as_deref().unwrap_or_default(),
        query.code_challenge_method.as_deref(),
    ) {
        Ok(challenge) => challenge,
        Err(error) => return fail(OAuthErrorCode::InvalidRequest, &error.to_string()),
    };
    let resource = match query.resource.as_deref() {
        None => state.resolved.resource.clone(),
        Some(resource) if resource.trim_end_matches('/') == state.resolved.resource => {
            state.resolved.resource.clone()
        }
        Some(_) => {
            return fail(
                OAuthErrorCode::InvalidTarget,
                "This server issues tokens for its own MCP resource only.",
            );
        }
    };
    let scopes = match query.scope.as_deref() {
        None => ScopeSet::from_list(&state.resolved.challenge_scopes),
        Some(text) => {
            let asked: Vec<&str> = text
                .split_whitespace()
                .filter(|scope| state.resolved.allowed_scopes.iter().any(|s| s == scope))
                .collect();
            if asked.is_empty() {
                return fail(
                    OAuthErrorCode::InvalidScope,
                    "None of the requested scopes is offered here.",
                );
            }
            ScopeSet::from_list(&asked)
        }
    };
    let request = AuthorizeRequest {
        client,
        redirect_uri: redirect_uri.clone(),
        redirect_uri_named,
        state: query.state.clone(),
        challenge,
        resource,
        scopes,
    };
    // One cookie per browser, reused across sign-ins and renewed with each; a new one when it
    // has none.
    let cookie = match browser_cookie(&state, &headers) {
        Some(cookie) => cookie,
        None => {
            let mut bytes = [0u8; 32];
            OsRng.fill_bytes(&mut bytes);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        }
    };
    match desk.open(request, digest(&cookie), &peer_key(&state, &peer, &headers)) {
        Ok(id) => {
            let Some(view) = desk.view(id) else {
                return expired_page();
            };
            let mut response = page::for_stage(&view, &id.to_hex());
            let secure = if cookie_name(&state).starts_with("__Host-") {
                "; Secure"
            } else {
                ""
            };
            let value = format!(
                "{}={cookie}; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600{secure}",
                cookie_name(&state)
            );
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        Err(error) => early_error(desk, &redirect_uri, query.state.as_deref(), &error),
    }
}

fn expired_page() -> Response {
    page::error(
        StatusCode::NOT_FOUND,
        "This authorization request is unknown or expired.",
    )
}

fn other_browser_page() -> Response {
    page::error(
        StatusCode::FORBIDDEN,
        "This sign-in was started in another browser. Start again from the application that \
         sent you here; never type a code from a page someone else opened.",
    )
}

fn show(
    state: &AppState,
    server: &AuthorizationServer,
    headers: &HeaderMap,
    handle: &str,
) -> Response {
    let Some(id) = ApprovalId::from_hex(handle) else {
        return expired_page();
    };
    match server.desk.view(id) {
        None => expired_page(),
        Some(view) if !same_browser(state, headers, &view) => other_browser_page(),
        Some(view) => match &view.stage {
            Stage::Finished { redirect, .. } => redirect_to(redirect),
            _ => page::for_stage(&view, &id.to_hex()),
        },
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct AskForm {
    request: String,
    user_id: String,
}

pub(crate) async fn ask(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Form(form): Form<AskForm>,
) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let Some(id) = ApprovalId::from_hex(&form.request) else {
        return expired_page();
    };
    let Some(view) = server.desk.view(id) else {
        return expired_page();
    };
    if !same_browser(&state, &headers, &view) {
        return other_browser_page();
    }
    let handle = id.to_hex();
    match server
        .desk
        .ask(id, &form.user_id, &peer_key(&state, &peer, &headers))
    {
        // Post/redirect/get: a reload shows the same code instead of asking again.
        Ok(_) | Err(AskError::AlreadyAsked) => redirect_to(&format!(
            "{}?request={handle}",
            super::metadata::AUTHORIZE_PATH
        )),
        Err(AskError::Unknown) => expired_page(),
        Err(AskError::Unsendable) => page::error(
            StatusCode::BAD_REQUEST,
            "This client's name, id or redirect URI cannot be shown safely on a laptop.",
        ),
        Err(AskError::BadUser) => page::ask_user(&view, &handle, Some("Enter a user id.")),
        Err(AskError::TooMany { retry_after }) => {
            let mut response = page::ask_user(
                &view,
                &handle,
                Some("Too many requests for this user id just now; wait a minute and try again."),
            );
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatusQuery {
    request: String,
    /// Seconds to wait for a change (long poll), at most 25.
    wait: Option<u64>,
}

/// The page's long poll. The confirmation code and the redirect (with the authorization code)
/// only go to the browser that opened the page.
pub(crate) async fn status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<StatusQuery>,
) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let unknown = || {
        no_store(
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"stage": "unknown"})),
            )
                .into_response(),
        )
    };
    let Some(id) = ApprovalId::from_hex(&query.request) else {
        return unknown();
    };
    match server.desk.view(id) {
        Some(view) if same_browser(&state, &headers, &view) => {}
        _ => return unknown(),
    }
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(MAX_STATUS_WAIT);
    let view = if wait.is_zero() {
        server.desk.view(id)
    } else {
        server.desk.wait_for_change(id, wait).await
    };
    let body = match view.map(|view| view.stage) {
        None => return unknown(),
        Some(Stage::Opened) => serde_json::json!({"stage": "opened"}),
        Some(Stage::Asked { code }) => serde_json::json!({"stage": "waiting", "code": code}),
        Some(Stage::Finished { outcome, redirect }) => {
            serde_json::json!({"stage": outcome.as_str(), "redirect": redirect})
        }
    };
    no_store(Json(body).into_response())
}

pub(crate) async fn token(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let form: TokenForm = match serde_urlencoded::from_bytes(&body) {
        Ok(form) => form,
        Err(_) => {
            return oauth_error(&OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "The body must be application/x-www-form-urlencoded with each field once.",
            ));
        }
    };
    match server.tokens.exchange(&form).await {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(error) => oauth_error(&error),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RevokeForm {
    token: Option<String>,
}

/// RFC 7009: revokes a refresh token's whole family, or an access token's agent connection.
/// Answers 200 for any token, known or not (section 2.2).
pub(crate) async fn revoke(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let Ok(form) = serde_urlencoded::from_bytes::<RevokeForm>(&body) else {
        return oauth_error(&OAuthError::new(
            OAuthErrorCode::InvalidRequest,
            "The body must be application/x-www-form-urlencoded.",
        ));
    };
    let Some(token) = form.token.filter(|token| !token.is_empty()) else {
        return oauth_error(&OAuthError::new(
            OAuthErrorCode::InvalidRequest,
            "token is required.",
        ));
    };
    if token.split('.').count() == 3 {
        if let Some(validator) = state.validator.as_ref()
            && let Ok(valid) = validator.validate(&token).await
            && let Some(agent) = valid.agent
        {
            server.desk.revoke(&valid.subject, agent).await;
        }
    } else {
        match server.tokens.spend_refresh_token(&token).await {
            Ok(Some(grant)) => {
                if let Some(agent) = ApprovalId::from_hex(&grant.approval_id) {
                    server.desk.revoke(&grant.subject, agent).await;
                }
            }
            Ok(None) => {}
            Err(error) => return oauth_error(&error),
        }
    }
    no_store(StatusCode::OK.into_response())
}
