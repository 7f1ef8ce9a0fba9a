//! Assembling and running the gateway: validation, state, the axum router, the listener, and
//! the handle that tests, the demo and the CLI use to observe and stop it.
//!
//! Start order (each step fails closed before the next): validate the configuration, open the
//! store and the gateway key, bind, fetch the signing keys (not fatal), serve.

use crate::audit::Audit;
use crate::config::GatewayConfiguration;
use crate::error::{GatewayError, StartError};
use crate::keys;
use crate::listener::{LimitedListener, PeerAddr};
use crate::mcp::GatewayMcp;
use crate::oauth::jwks::JwksCache;
use crate::oauth::metadata::protected_resource;
use crate::oauth::middleware::{MAX_MCP_BODY_BYTES, require_bearer, too_many_requests};
use crate::oauth::token::{TokenValidator, ValidatorSettings};
use crate::pairing::PairingService;
use crate::pairing_http::{MAX_PAIRING_BODY_BYTES, pair_finish, pair_start};
use crate::rate_limit::RateLimiter;
use crate::relay::endpoint::relay_upgrade;
use crate::relay::{LiveSidecar, Relay, RelaySettings, SessionEvent};
use crate::state::AppState;
use crate::store::Store;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use protocol::identity::PublicKey;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

/// How long shutdown waits for relay connections and then for HTTP connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bound on the non-streaming endpoints (pairing, metadata).
const SHORT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn peer_rate_limit(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(retry_after) = state.peer_limiter.check(&peer.0.ip().to_string()) {
        return too_many_requests(retry_after);
    }
    next.run(request).await
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

fn build_router(state: Arc<AppState>, server_shutdown: &CancellationToken) -> Router {
    let mut router = Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
        .route("/healthz", get(healthz))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            SHORT_REQUEST_TIMEOUT,
        ));

    if state.resolved.relay_enabled {
        let pairing = Router::new()
            .route("/pair/start", post(pair_start))
            .route("/pair/finish", post(pair_finish))
            .layer(DefaultBodyLimit::max(MAX_PAIRING_BODY_BYTES))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                SHORT_REQUEST_TIMEOUT,
            ));
        router = router.merge(pairing).route("/relay", get(relay_upgrade));
    }

    if state.resolved.mcp_enabled {
        let config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(state.resolved.allowed_hosts.clone())
            .with_cancellation_token(server_shutdown.child_token())
            .with_max_request_body_bytes(MAX_MCP_BODY_BYTES)
            .with_sse_keep_alive(Some(Duration::from_secs(15)));
        let factory_state = Arc::clone(&state);
        let service = StreamableHttpService::new(
            move || Ok(GatewayMcp::new(Arc::clone(&factory_state))),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let guarded = ServiceBuilder::new()
            .layer(from_fn_with_state(Arc::clone(&state), require_bearer))
            .service(service);
        router = router.nest_service("/mcp", guarded);
    }

    router
        .layer(from_fn_with_state(Arc::clone(&state), peer_rate_limit))
        .with_state(state)
}

/// A running gateway.
pub struct GatewayHandle {
    local_addr: SocketAddr,
    state: Arc<AppState>,
    public_key: PublicKey,
    server_shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("local_addr", &self.local_addr)
            .field("instance_id", &self.state.instance_id)
            .finish_non_exhaustive()
    }
}

impl GatewayHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `public_base_url` (with the bound port when it was configured as 0).
    pub fn base_url(&self) -> String {
        self.state.resolved.base_url.clone()
    }

    /// The canonical resource URI: what tokens must carry in `aud`.
    pub fn mcp_url(&self) -> String {
        self.state.resolved.resource.clone()
    }

    /// The websocket URL sidecars dial.
    pub fn relay_url(&self) -> String {
        match &self.state.resolved.relay_url {
            Some(url) => url.clone(),
            None => {
                let base = &self.state.resolved.base_url;
                let ws = base
                    .strip_prefix("https://")
                    .map(|rest| format!("wss://{rest}"))
                    .or_else(|| {
                        base.strip_prefix("http://")
                            .map(|rest| format!("ws://{rest}"))
                    })
                    .unwrap_or_else(|| base.clone());
                format!("{ws}/relay")
            }
        }
    }

    pub fn instance_id(&self) -> String {
        self.state.instance_id.clone()
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Issues a pairing code exactly as `ibkr-gateway pairing code` does.
    pub async fn issue_pairing_code(
        &self,
        user_id: &str,
        ttl: Duration,
    ) -> Result<String, GatewayError> {
        let issued = crate::pairing::issue_code(
            &self.state.store,
            user_id,
            ttl,
            self.state.config.pairing.max_attempts_per_code,
        )
        .await?;
        Ok(issued.code.to_string())
    }

    pub fn subscribe_sessions(&self) -> tokio::sync::broadcast::Receiver<SessionEvent> {
        self.state.relay.subscribe()
    }

    pub fn live_sidecars(&self) -> Vec<LiveSidecar> {
        self.state.relay.live_sidecars()
    }

    /// Why the last relay session of `sidecar_id` ended (heartbeat timeout, expiry, ...), as
    /// remembered for the gate-4 codes: `Some` until the sidecar registers again or
    /// [`crate::relay::SESSION_END_MEMORY`] passes. Lets tests and operators see what the next
    /// tool call will answer (`DropReason::HeartbeatTimeout` -> `SIDECAR_HEARTBEAT_STALE`,
    /// `DropReason::SessionExpired` -> `SIDECAR_SESSION_EXPIRED`).
    pub fn last_session_end(&self, sidecar_id: &str) -> Option<crate::relay::DropReason> {
        self.state.relay.last_session_end(sidecar_id)
    }

    /// Revokes a pairing; its live session is closed on its next use or renewal.
    pub async fn revoke_pairing(&self, sidecar_id: &str) -> Result<bool, GatewayError> {
        let revoked = self
            .state
            .store
            .revoke_pairing(sidecar_id.to_string(), crate::clock::unix_ms())
            .await
            .map_err(|_| GatewayError::new(shared_safety::ErrorCode::StateStoreError))?;
        if revoked {
            for session in self.state.relay.registry.all() {
                if session.sidecar_id == sidecar_id {
                    session.request_close(protocol::frame::CloseReason::PairingRevoked);
                }
            }
        }
        Ok(revoked)
    }

    /// Graceful stop: GoAway to every sidecar, stop accepting, drain HTTP connections
    /// (bounded), release the port.
    pub async fn shutdown(mut self) {
        self.state.relay.shut_down(SHUTDOWN_GRACE).await;
        self.server_shutdown.cancel();
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
        {
            tracing::warn!("HTTP connections did not drain in time; closing them");
            server.abort();
            let _ = server.await;
        }
        tracing::info!("gateway stopped");
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        // A handle dropped without `shutdown` must not leave a server running unobserved.
        self.state.relay.shutdown.cancel();
        self.server_shutdown.cancel();
    }
}

/// Validates the configuration, opens the store, binds and serves.
pub async fn start(config: GatewayConfiguration) -> Result<GatewayHandle, StartError> {
    // Nothing is bound or written before the configuration is known to be good.
    let resolved = config.resolve()?;

    let state_dir = config.state_dir.clone();
    let configured_instance = config.instance_id.clone();
    let (store, keypair, instance_id) = tokio::task::spawn_blocking(move || {
        let store = Store::open(&state_dir).map_err(|e| StartError::Store(e.to_string()))?;
        let keypair = keys::load_or_create_keypair(&state_dir)
            .map_err(|e| StartError::Keys(e.to_string()))?;
        let instance_id =
            keys::load_or_create_instance_id(&state_dir, configured_instance.as_deref())
                .map_err(|e| StartError::Keys(e.to_string()))?;
        Ok::<_, StartError>((store, keypair, instance_id))
    })
    .await
    .map_err(|_| StartError::Store("startup task failed".into()))??;

    let listener = tokio::net::TcpListener::bind(resolved.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: resolved.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: resolved.listen,
        source,
    })?;
    let config = config.with_bound_port(local_addr.port());
    let resolved = config.resolve()?;

    let validator = match (&resolved.issuer, resolved.mcp_enabled) {
        (Some(issuer), true) => {
            let jwks = JwksCache::new(issuer, resolved.jwks_url.as_deref())
                .map_err(|e| StartError::Keys(e.to_string()))?;
            let jwks = Arc::new(jwks);
            if !jwks.initial_fetch().await {
                tracing::warn!(%issuer, "signing keys not available yet; tokens are refused until they are");
            }
            let settings = ValidatorSettings {
                issuer: issuer.clone(),
                audiences: resolved.audiences.clone(),
                algorithms: config
                    .remote_mcp
                    .allowed_algorithms
                    .iter()
                    .map(|alg| alg.to_jsonwebtoken())
                    .collect(),
                clock_skew_seconds: config.remote_mcp.clock_skew_seconds,
                require_typ_at_jwt: config.remote_mcp.require_typ_at_jwt,
                allowed_scopes: resolved.allowed_scopes.clone(),
            };
            Some(TokenValidator::new(settings, jwks))
        }
        _ => None,
    };

    let keypair = Arc::new(keypair);
    let public_key = keypair.public();
    let relay = Arc::new(Relay::new(
        RelaySettings::from_config(&config, resolved.relay_enabled),
        store.clone(),
        Arc::clone(&keypair),
        instance_id.clone(),
    ));
    let audit = if resolved.mcp_enabled {
        Audit::from_env(&config.remote_mcp.token_id_hmac_secret_env)
    } else {
        Audit::random()
    };
    let state = Arc::new(AppState {
        subject_limiter: RateLimiter::new(config.remote_mcp.rate_limit_per_subject_per_minute),
        peer_limiter: RateLimiter::new(config.remote_mcp.rate_limit_per_peer_per_minute),
        session_owners: crate::oauth::session_binding::SessionOwners::new(),
        pairing: PairingService::new(store.clone(), public_key, instance_id.clone()),
        resolved,
        store,
        instance_id,
        validator,
        audit,
        relay,
        config,
    });

    let server_shutdown = CancellationToken::new();
    let app = build_router(Arc::clone(&state), &server_shutdown);
    let listener = LimitedListener::new(listener, state.config.remote_mcp.max_connections);
    let token = server_shutdown.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<PeerAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server stopped with an error");
        }
    });
    tracing::info!(
        %local_addr,
        base_url = %state.resolved.base_url,
        instance_id = %state.instance_id,
        fingerprint = %public_key.fingerprint(),
        relay = state.resolved.relay_enabled,
        mcp = state.resolved.mcp_enabled,
        "gateway listening"
    );
    Ok(GatewayHandle {
        local_addr,
        state,
        public_key,
        server_shutdown,
        server: Some(server),
    })
}
