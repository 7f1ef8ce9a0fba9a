//! The state every handler shares, built once by [`crate::start`].

use crate::audit::Audit;
use crate::config::{GatewayConfiguration, Resolved};
use crate::http::rate_limit::RateLimiter;
use crate::oauth::session_binding::McpSessions;
use crate::oauth::token::TokenValidator;
use crate::ops::metrics::Metrics;
use crate::pairing::PairingService;
use crate::relay::Relay;
use crate::store::Store;
use std::sync::Arc;

pub(crate) struct AppState {
    /// The configuration with any port 0 replaced by the bound port.
    pub config: GatewayConfiguration,
    pub resolved: Resolved,
    pub store: Store,
    pub instance_id: String,
    /// Present when remote MCP is enabled.
    pub validator: Option<TokenValidator>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    /// The `/metrics` bearer token (from `metrics.bearer_token_env`), if configured.
    pub metrics_token: Option<zeroize::Zeroizing<String>>,
    pub subject_limiter: RateLimiter,
    pub peer_limiter: RateLimiter,
    pub mcp_sessions: Arc<McpSessions>,
    pub relay: Arc<Relay>,
    pub pairing: PairingService,
    /// The built-in authorization server, when no external issuer is configured.
    pub authz: Option<Arc<crate::authz::AuthorizationServer>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("instance_id", &self.instance_id)
            .field("resolved", &self.resolved)
            .finish_non_exhaustive()
    }
}
