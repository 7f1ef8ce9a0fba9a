//! The bearer-token layer in front of `/mcp`.
//!
//! Order of checks, cheapest first:
//! 1. a query-string `access_token` is refused outright (and never read): tokens in URLs end
//!    up in logs and referrers;
//! 2. exactly one `Authorization: Bearer` header, else 401 with the RFC 9728
//!    `resource_metadata` pointer so the client can discover the authorization server, and
//!    the RFC 6750 `scope` a client should ask for to begin with
//!    (`remote_mcp.challenge_scopes`, the read scopes by default);
//! 3. the JWT is validated (401 `invalid_token` otherwise, with the same pointer and scope);
//! 4. the per-subject rate limit (429 with `Retry-After`);
//! 5. for `POST`, the body (bounded in size and time) is peeked: a `tools/call` for a tool
//!    whose scope the token lacks gets 403 `insufficient_scope` naming exactly the scopes the
//!    token lacks for that call (step-up; the client keeps what it holds and adds these),
//!    before rmcp ever sees it; the refused call is audited. The buffered
//!    body is then handed on unchanged.
//!
//! 6. an `Mcp-Session-Id` must belong to the same subject (see
//!    [`crate::oauth::session_binding`]).
//!
//! The validated identity travels to the MCP handler as an [`AuthContext`] request extension;
//! the token itself goes no further than this function.

use crate::error::GatewayError;
use crate::oauth::session_binding::SessionLimit;
use crate::ops::metrics::RateLimitScope;
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use protocol::catalog::ToolSpec;
use shared_safety::ErrorCode;
use shared_safety::scope::ScopeSet;
use std::sync::Arc;
use std::time::Duration;

const MCP_SESSION_ID: &str = "mcp-session-id";

/// Largest `/mcp` request body accepted (also rmcp's limit).
pub const MAX_MCP_BODY_BYTES: usize = 256 * 1024;
/// Bound on receiving a `/mcp` request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling, as established by a valid token.
#[derive(Clone, Debug)]
pub struct AuthContext {
    pub subject: String,
    pub scopes: ScopeSet,
    /// HMAC of the token's `jti` (see [`crate::audit`]); never the token.
    pub token_id: Option<String>,
    pub client_id: Option<String>,
    /// The laptop's approval behind a token of the built-in authorization server.
    pub agent: Option<protocol::agents::ApprovalId>,
}

fn json_error(status: StatusCode, error: &GatewayError) -> Response {
    let mut response = (status, Json(error.to_json())).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 401 with the challenge: where the metadata is, and the baseline scopes to ask for (none
/// when the baseline is empty). `error` is the RFC 6750 error code when a token was presented.
pub(crate) fn unauthorized(state: &AppState, code: ErrorCode, error: Option<&str>) -> Response {
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\"",
        state.resolved.resource_metadata_url
    );
    if !state.resolved.challenge_scopes.is_empty() {
        challenge.push_str(&format!(
            ", scope=\"{}\"",
            state.resolved.challenge_scopes.join(" ")
        ));
    }
    if let Some(error) = error {
        challenge.push_str(&format!(", error=\"{error}\""));
    }
    let mut response = json_error(StatusCode::UNAUTHORIZED, &GatewayError::new(code));
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// 403 with the step-up challenge; `scope` is what the token lacks for the call
/// (space-separated).
fn insufficient_scope(state: &AppState, scope: &str, tool: &str) -> Response {
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{}\"",
        state.resolved.resource_metadata_url
    );
    let error = GatewayError::with_detail(
        ErrorCode::AuthInsufficientScope,
        format!("Tool {tool} needs scope {scope}."),
    );
    let mut response = json_error(StatusCode::FORBIDDEN, &error);
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Whether the request says its body is JSON.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// One JSON-RPC message, or the JSON-RPC error code and message to refuse it with: -32700
/// (parse error) for a body that is not JSON in UTF-8, -32600 (invalid request) for a batch or
/// anything that is not a JSON-RPC 2.0 message.
fn jsonrpc_message(bytes: &[u8]) -> Result<serde_json::Value, (i64, &'static str)> {
    let message: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|_| (-32700, "Parse error: the request body is not JSON (UTF-8)."))?;
    if message.is_array() {
        return Err((
            -32600,
            "Invalid Request: JSON-RPC batches are not supported; send one message per request.",
        ));
    }
    if <rmcp::model::ClientJsonRpcMessage as serde::Deserialize>::deserialize(&message).is_err() {
        return Err((
            -32600,
            "Invalid Request: not a JSON-RPC 2.0 message this server understands.",
        ));
    }
    Ok(message)
}

/// A 400 carrying a JSON-RPC error (the request had no usable id).
fn jsonrpc_refusal((code, message): (i64, &'static str)) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

pub(crate) fn too_many_requests(retry_after: Duration) -> Response {
    refused_for_a_while(GatewayError::new(ErrorCode::AuthRateLimited), retry_after)
}

/// A new MCP session refused at its user's (or the gateway's) cap.
fn session_limit(limit: SessionLimit) -> Response {
    match limit {
        SessionLimit::PerUser { limit, retry_after } => refused_for_a_while(
            GatewayError::with_detail(
                ErrorCode::McpSessionLimit,
                format!("(this user holds {limit} open sessions, the most allowed)"),
            ),
            retry_after,
        ),
        SessionLimit::Gateway { retry_after } => refused_for_a_while(
            GatewayError::with_detail(
                ErrorCode::McpSessionLimit,
                "(the gateway holds as many sessions as it allows in all)",
            ),
            retry_after,
        ),
    }
}

fn refused_for_a_while(error: GatewayError, retry_after: Duration) -> Response {
    let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, &error);
    let seconds = retry_after.as_secs().max(1);
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn query_has_access_token(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            name.eq_ignore_ascii_case("access_token")
        })
    })
}

/// RFC 6750 b64token characters.
fn is_token68(token: &str) -> bool {
    !token.is_empty()
        && token.bytes().all(|byte| {
            byte.is_ascii_alphanumeric()
                || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        })
}

enum BearerHeader<'a> {
    Missing,
    Malformed,
    Token(&'a str),
}

fn bearer_token(headers: &axum::http::HeaderMap) -> BearerHeader<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return BearerHeader::Missing;
    };
    if values.next().is_some() {
        return BearerHeader::Malformed;
    }
    let Ok(text) = value.to_str() else {
        return BearerHeader::Malformed;
    };
    let Some((scheme, token)) = text.trim().split_once(' ') else {
        return BearerHeader::Malformed;
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || !is_token68(token) {
        return BearerHeader::Malformed;
    }
    BearerHeader::Token(token)
}

/// The catalog tools a JSON-RPC message (or batch) calls with `tools/call`, in order.
/// Unknown names are left to the handler (`TOOL_UNKNOWN`).
fn called_tools(message: &serde_json::Value) -> Vec<&'static ToolSpec> {
    let one = |item: &serde_json::Value| -> Option<&'static ToolSpec> {
        if item.get("method").and_then(serde_json::Value::as_str) != Some("tools/call") {
            return None;
        }
        let name = item
            .get("params")
            .and_then(|params| params.get("name"))
            .and_then(serde_json::Value::as_str)?;
        protocol::catalog::find(name)
    };
    match message {
        serde_json::Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// When the token lacks a scope some called tool needs: exactly the scopes it lacks (sorted,
/// for the challenge; RFC 6750 section 3.1 names what the request needs beyond the token, and
/// MCP clients add it to what they already hold) and the refused tools.
fn missing_tool_scope(
    message: &serde_json::Value,
    scopes: &ScopeSet,
) -> Option<(String, Vec<&'static ToolSpec>)> {
    let refused: Vec<&'static ToolSpec> = called_tools(message)
        .into_iter()
        .filter(|tool| !scopes.allows(tool))
        .collect();
    if refused.is_empty() {
        return None;
    }
    let missing: std::collections::BTreeSet<&str> = refused.iter().map(|tool| tool.scope).collect();
    Some((missing.into_iter().collect::<Vec<_>>().join(" "), refused))
}

pub(crate) async fn require_bearer(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = tokio::time::Instant::now();
    if query_has_access_token(request.uri().query()) {
        return unauthorized(&state, ErrorCode::AuthInvalidToken, Some("invalid_request"));
    }
    let Some(validator) = state.validator.as_ref() else {
        // /mcp is only mounted with remote MCP on; this is a fail-closed backstop.
        return unauthorized(&state, ErrorCode::AuthRequired, None);
    };
    let (validated, token_id) = match bearer_token(request.headers()) {
        BearerHeader::Missing => return unauthorized(&state, ErrorCode::AuthRequired, None),
        BearerHeader::Malformed => {
            return unauthorized(&state, ErrorCode::AuthInvalidToken, Some("invalid_request"));
        }
        BearerHeader::Token(token) => match validator.validate(token).await {
            Ok(validated) => {
                let key = state.audit.key();
                let token_id = match validated.jti.as_deref() {
                    Some(jti) => key.token_id(jti),
                    None => token
                        .rsplit('.')
                        .next()
                        .and_then(|signature| key.token_signature_id(signature)),
                };
                (validated, token_id)
            }
            Err(reason) => {
                tracing::debug!(%reason, "bearer token refused");
                return unauthorized(&state, ErrorCode::AuthInvalidToken, Some("invalid_token"));
            }
        },
    };
    // An agent the laptop revoked: its access tokens end now, not when they expire.
    if let (Some(agent), Some(authz)) = (validated.agent.as_ref(), state.authz.as_ref())
        && authz.desk.is_revoked(agent, &validated.subject)
    {
        return unauthorized(&state, ErrorCode::AuthInvalidToken, Some("invalid_token"));
    }
    if let Err(retry_after) = state.subject_limiter.check(&validated.subject) {
        state.metrics.rate_limited(RateLimitScope::Subject);
        return too_many_requests(retry_after);
    }
    let context = AuthContext {
        token_id,
        subject: validated.subject,
        scopes: validated.scopes,
        client_id: validated.client_id,
        agent: validated.agent,
    };

    let (mut parts, body) = request.into_parts();
    let session_id = parts
        .headers
        .get(MCP_SESSION_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    if let Some(session_id) = &session_id
        && !state
            .mcp_sessions
            .permit(session_id, &context.subject)
            .await
    {
        tracing::warn!(subject = %context.subject, "MCP session used under another subject");
        return json_error(
            StatusCode::NOT_FOUND,
            &GatewayError::with_detail(
                ErrorCode::AuthInvalidToken,
                "This MCP session does not exist for this token; initialize a new one.",
            ),
        );
    }
    let subject = context.subject.clone();
    let method = parts.method.clone();
    // A client's DELETE ends the session everywhere: the shared row goes first, so no replica
    // rebuilds it afterwards; if it cannot go, the session is left as it is.
    if method == Method::DELETE
        && let Some(session_id) = &session_id
        && !state.mcp_sessions.delete_shared(session_id).await
    {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &GatewayError::with_detail(
                ErrorCode::SharedStoreUnavailable,
                "The MCP session could not be ended on every replica; it is left as it was.",
            ),
        );
    }
    let mut reservation = None;
    let body = if parts.method == Method::POST {
        let read = tokio::time::timeout(
            BODY_READ_TIMEOUT,
            axum::body::to_bytes(body, MAX_MCP_BODY_BYTES),
        )
        .await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(_)) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &GatewayError::with_detail(
                        ErrorCode::ArgumentsInvalid,
                        format!("The request body exceeds {MAX_MCP_BODY_BYTES} bytes."),
                    ),
                );
            }
            Err(_) => {
                return json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    &GatewayError::with_detail(
                        ErrorCode::RequestTimeout,
                        "The request body did not arrive in time.",
                    ),
                );
            }
        };
        // A JSON body that is not one JSON-RPC message gets the JSON-RPC error it deserves
        // (rmcp would answer 415, as if the media type were wrong). Other media types are
        // rmcp's to refuse.
        let message = if is_json(&parts.headers) {
            match jsonrpc_message(&bytes) {
                Ok(message) => Some(message),
                Err(refusal) => return jsonrpc_refusal(refusal),
            }
        } else {
            None
        };
        if let Some(message) = &message
            && let Some((scope, refused)) = missing_tool_scope(message, &context.scopes)
        {
            for tool in &refused {
                tracing::info!(subject = %context.subject, tool = tool.name, scope = tool.scope, "tool call refused: insufficient scope");
                crate::mcp::record_call(
                    &state,
                    &context,
                    Some(tool),
                    &crate::relay::CallTrace::default(),
                    ErrorCode::AuthInsufficientScope.code(),
                    started.elapsed(),
                );
            }
            let names: Vec<&str> = refused.iter().map(|tool| tool.name).collect();
            return insufficient_scope(&state, &scope, &names.join(", "));
        }
        // An `initialize` outside a session creates one: it needs a slot under the cap.
        if session_id.is_none()
            && message
                .as_ref()
                .and_then(|m| m.get("method"))
                .and_then(|m| m.as_str())
                == Some("initialize")
        {
            match state.mcp_sessions.reserve(&subject) {
                Ok(slot) => reservation = Some(slot),
                Err(limit) => {
                    tracing::info!(%subject, "MCP session refused: at the session limit");
                    return session_limit(limit);
                }
            }
        }
        Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(context);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    // rmcp acknowledges a session DELETE with 202; the session is gone at that point, and
    // clients (the official Python SDK among them) expect 200 or 204.
    if method == Method::DELETE && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    match &session_id {
        // A new session was created for this subject (a reservation that created none is
        // freed when dropped).
        None => {
            if let Some(created) = response
                .headers()
                .get(MCP_SESSION_ID)
                .and_then(|value| value.to_str().ok())
            {
                match reservation.take() {
                    Some(slot) => slot.bind(created),
                    None => state.mcp_sessions.bind_unreserved(created, &subject),
                }
                state.mcp_sessions.record_owner(created, &subject).await;
            }
        }
        Some(session_id) if method == Method::DELETE && response.status().is_success() => {
            state.mcp_sessions.forget(session_id);
        }
        Some(_) => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_detected_without_reading_them() {
        assert!(query_has_access_token(Some("access_token=abc")));
        assert!(query_has_access_token(Some("x=1&ACCESS_TOKEN=abc")));
        assert!(!query_has_access_token(Some("token=abc")));
        assert!(!query_has_access_token(None));
    }

    #[test]
    fn bearer_header_parsing_is_strict() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(matches!(bearer_token(&headers), BearerHeader::Missing));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(matches!(bearer_token(&headers), BearerHeader::Malformed));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer a.b.c"),
        );
        assert!(matches!(
            bearer_token(&headers),
            BearerHeader::Token("a.b.c")
        ));
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer d.e.f"),
        );
        assert!(matches!(bearer_token(&headers), BearerHeader::Malformed));
    }

    #[test]
    fn tools_call_scope_is_peeked() {
        let scopes = ScopeSet::from_oauth("ibkr:health:read");
        let call = |name: &str| serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":name}});
        let names = |found: Option<(String, Vec<&'static ToolSpec>)>| {
            found.map(|(scope, tools)| {
                (
                    scope,
                    tools.iter().map(|tool| tool.name).collect::<Vec<_>>(),
                )
            })
        };
        assert_eq!(
            names(missing_tool_scope(&call("ibkr_health"), &scopes)),
            None
        );
        assert_eq!(
            names(missing_tool_scope(&call("ibkr_accounts_list"), &scopes)),
            Some(("ibkr:accounts:read".into(), vec!["ibkr_accounts_list"]))
        );
        assert_eq!(
            names(missing_tool_scope(&call("no_such_tool"), &scopes)),
            None
        );
        let list = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
        assert_eq!(names(missing_tool_scope(&list, &scopes)), None);
        // A batch names exactly the scopes the token lacks, each once: not the granted
        // ones, nor any scope no refused tool needs.
        let batch = serde_json::json!([
            call("ibkr_health"),
            call("ibkr_quote"),
            call("ibkr_accounts_list"),
            call("ibkr_quotes")
        ]);
        assert_eq!(
            names(missing_tool_scope(&batch, &scopes)),
            Some((
                "ibkr:accounts:read ibkr:marketdata:read".into(),
                vec!["ibkr_quote", "ibkr_accounts_list", "ibkr_quotes"]
            ))
        );
        // A write tool asks for the write scope alone, not the preview or live scope.
        assert_eq!(
            names(missing_tool_scope(
                &call("ibkr_buy"),
                &ScopeSet::from_list(protocol::catalog::scopes::READ_ONLY)
            )),
            Some(("ibkr:orders:write".into(), vec!["ibkr_buy"]))
        );
    }
}
