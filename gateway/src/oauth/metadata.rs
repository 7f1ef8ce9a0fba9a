//! RFC 9728 protected-resource metadata, served at `/.well-known/oauth-protected-resource`
//! and at the path-inserted form for the `/mcp` resource
//! (`/.well-known/oauth-protected-resource/mcp`), which MCP clients try first.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The metadata document for this gateway.
pub fn document(
    resource: &str,
    issuer: Option<&str>,
    scopes_supported: &[String],
) -> serde_json::Value {
    serde_json::json!({
        "resource": resource,
        "authorization_servers": issuer.map(|issuer| vec![issuer]).unwrap_or_default(),
        "scopes_supported": scopes_supported,
        "bearer_methods_supported": ["header"],
        "resource_name": "IBKR agent gateway",
    })
}

pub(crate) async fn protected_resource(State(state): State<Arc<AppState>>) -> Response {
    let resolved = &state.resolved;
    let body = document(
        &resolved.resource,
        resolved.issuer.as_deref(),
        &resolved.allowed_scopes,
    );
    let mut response = Json(body).into_response();
    // Public and identical for everybody; a short cache keeps clients from hammering it.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
