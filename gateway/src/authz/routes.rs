//! The authorization server's HTTP endpoints (paths in [`super::metadata`]).
//!
//! Errors follow the RFCs: the token, registration and revocation endpoints answer JSON
//! `{"error", "error_description"}` with the status RFC 6749 section 5.2 names; the
//! authorization endpoint redirects errors to the client once its client id and redirect URI
//! are known to be good, and shows them on a page (never redirecting) before that.

use super::AuthorizationServer;
use super::approvals::{AskError, AuthorizeRequest, Stage};
use super::clients::{ClientMetadata, redirect_matches};
use super::errors::{OAuthError, OAuthErrorCode};
use super::grants::TokenForm;
use super::page;
use super::pkce::CodeChallenge;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use protocol::agents::ApprovalId;
use serde::Deserialize;
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

pub(crate) async fn authorize(
    State(state): State<Arc<AppState>>,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    if let Some(handle) = query.request.as_deref() {
        return show(server, handle);
    }
    // Until the client and its redirect URI check out, errors stay on this page.
    let Some(client_id) = query.client_id.as_deref() else {
        return page::error(StatusCode::BAD_REQUEST, "The request names no client_id.");
    };
    let client = match server.clients.resolve(client_id).await {
        Ok(client) => client,
        Err(error) => return page::error(StatusCode::BAD_REQUEST, &error.description),
    };
    let redirect_uri = match query.redirect_uri.as_deref() {
        Some(uri) if redirect_matches(&client.redirect_uris, uri) => uri.to_string(),
        Some(_) => {
            return page::error(
                StatusCode::BAD_REQUEST,
                "The redirect_uri is not one this client registered.",
            );
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return page::error(
                StatusCode::BAD_REQUEST,
                "The request names no redirect_uri and the client registered several.",
            );
        }
    };
    let desk = &server.desk;
    let fail = |code: OAuthErrorCode, description: &str| {
        redirect_to(&desk.error_redirect(
            &redirect_uri,
            query.state.as_deref(),
            &OAuthError::new(code, description),
        ))
    };
    if query.response_type.as_deref() != Some("code") {
        return fail(
            OAuthErrorCode::UnsupportedResponseType,
            "Only response_type=code is supported.",
        );
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
    if let Some(state) = query.state.as_deref()
        && state.len() > 1024
    {
        return fail(OAuthErrorCode::InvalidRequest, "state is too long.");
    }
    let request = AuthorizeRequest {
        client,
        redirect_uri: redirect_uri.clone(),
        state: query.state.clone(),
        challenge,
        resource,
        scopes,
    };
    match desk.open(request) {
        Ok(id) => show(server, &id.to_hex()),
        Err(error) => {
            redirect_to(&desk.error_redirect(&redirect_uri, query.state.as_deref(), &error))
        }
    }
}

fn expired_page() -> Response {
    page::error(
        StatusCode::NOT_FOUND,
        "This authorization request is unknown or expired.",
    )
}

fn show(server: &AuthorizationServer, handle: &str) -> Response {
    let Some(id) = ApprovalId::from_hex(handle) else {
        return expired_page();
    };
    match server.desk.view(id) {
        None => expired_page(),
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

pub(crate) async fn ask(State(state): State<Arc<AppState>>, Form(form): Form<AskForm>) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let Some(id) = ApprovalId::from_hex(&form.request) else {
        return expired_page();
    };
    let handle = id.to_hex();
    match server.desk.ask(id, &form.user_id) {
        // Post/redirect/get: a reload shows the same code instead of asking again.
        Ok(_) | Err(AskError::AlreadyAsked) => redirect_to(&format!(
            "{}?request={handle}",
            super::metadata::AUTHORIZE_PATH
        )),
        Err(AskError::Unknown) => expired_page(),
        Err(AskError::BadUser) => match server.desk.view(id) {
            Some(view) => page::ask_user(&view, &handle, Some("Enter a user id.")),
            None => expired_page(),
        },
        Err(AskError::TooMany { retry_after }) => match server.desk.view(id) {
            Some(view) => {
                let mut response = page::ask_user(
                    &view,
                    &handle,
                    Some(
                        "Too many requests for this user id just now; wait a minute and try again.",
                    ),
                );
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string())
                {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
            None => expired_page(),
        },
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatusQuery {
    request: String,
    /// Seconds to wait for a change (long poll), at most 25.
    wait: Option<u64>,
}

pub(crate) async fn status(
    State(state): State<Arc<AppState>>,
    Query(query): Query<StatusQuery>,
) -> Response {
    let Some(server) = server(&state) else {
        return not_served();
    };
    let Some(id) = ApprovalId::from_hex(&query.request) else {
        return no_store(
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"stage": "unknown"})),
            )
                .into_response(),
        );
    };
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(MAX_STATUS_WAIT);
    let view = if wait.is_zero() {
        server.desk.view(id)
    } else {
        server.desk.wait_for_change(id, wait).await
    };
    let body = match view.map(|view| view.stage) {
        None => serde_json::json!({"stage": "unknown"}),
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
