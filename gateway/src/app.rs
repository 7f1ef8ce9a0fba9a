//! Assembling and running the gateway: validation, state, the axum router, the listener, and
//! the handle that tests, the demo and the CLI use to observe and stop it.
//!
//! Start order (each step fails closed before the next): validate the configuration, check the
//! secrets it names (metrics token, audit HMAC secret), open the store, the gateway key and the
//! audit key, bind, fetch the signing keys (not fatal; retried until loaded), start the audit
//! writer and the revocation poll, serve.
//!
//! Routes: `/.well-known/oauth-protected-resource[/mcp]`, `/pair/*`, `/relay` and `/mcp` behind
//! the per-peer rate limit; `/healthz`, `/readyz` and `/metrics` outside it. `/mcp` is layered
//! (outermost first) Host/Origin check, `no-store, private` cache headers, the request
//! deadline, the OAuth middleware, then rmcp's Streamable HTTP service.

use crate::audit::log::AuditLog;
use crate::audit::{Audit, AuditKey, AuditKeyError, KeySource};
use crate::config::{ConfigError, GatewayConfiguration};
use crate::error::{GatewayError, StartError};
use crate::http::limits::{ConnectionLimits, LimitSettings, PeerAddr};
use crate::http::listener::LimitedListener;
use crate::http::rate_limit::RateLimiter;
use crate::mcp::GatewayMcp;
use crate::oauth::jwks::{JwksCache, REFRESH_COOLDOWN};
use crate::oauth::metadata::protected_resource;
use crate::oauth::middleware::{MAX_MCP_BODY_BYTES, require_bearer, too_many_requests};
use crate::oauth::session_binding::McpSessions;
use crate::oauth::token::{TokenValidator, ValidatorSettings};
use crate::ops::metrics::{Metrics, RateLimitScope, Snapshot};
use crate::pairing::PairingService;
use crate::pairing::http::{MAX_PAIRING_BODY_BYTES, pair_finish, pair_start};
use crate::relay::endpoint::relay_upgrade;
use crate::relay::{LiveSidecar, Relay, RelaySettings, SessionEvent};
use crate::state::AppState;
use crate::store::keys;
use crate::store::{SqliteStore, Store};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use protocol::identity::PublicKey;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use shared_safety::ErrorCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;
use zeroize::Zeroizing;

/// How long shutdown waits for relay connections and then for HTTP connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Time an HTTP connection gets to finish its request in flight once shutdown starts; below
/// [`SHUTDOWN_GRACE`], so the server stops on its own.
const CONNECTION_DRAIN: Duration = Duration::from_secs(4);
/// Bound on the non-streaming endpoints (pairing, metadata, health, metrics).
const SHORT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body the authorization server's endpoints read (client metadata is far smaller).
const MAX_AUTHZ_BODY_BYTES: usize = 16 * 1024;
/// Bound on the store round trip of `/readyz`.
const READY_STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest `/metrics` bearer token accepted from the environment.
const MIN_METRICS_TOKEN_BYTES: usize = 16;

/// Per-peer rate limit, before authentication. The peer is the client address as
/// [`crate::http::net::client_ip`] resolves it (the socket peer unless it is a trusted proxy).
async fn peer_rate_limit(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    let client = crate::http::net::client_ip(
        peer.0.ip(),
        request.headers(),
        &state.resolved.trusted_proxies,
    );
    if let Err(retry_after) = state
        .peer_limiter
        .check(&crate::http::net::rate_limit_key(client))
    {
        state.metrics.rate_limited(RateLimitScope::Peer);
        return too_many_requests(retry_after);
    }
    next.run(request).await
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /healthz`: the process is alive and serving.
async fn healthz() -> Response {
    no_store(axum::Json(serde_json::json!({"status": "ok"})).into_response())
}

/// `GET /readyz`: the store answers and the signing keys were loaded at least once.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store_ok = matches!(
        tokio::time::timeout(READY_STORE_TIMEOUT, state.store.ping()).await,
        Ok(Ok(()))
    );
    let keys_ok = state
        .validator
        .as_ref()
        .is_some_and(|validator| validator.jwks().loaded_once());
    let ready = store_ok && keys_ok;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": if store_ok { "ok" } else { "unavailable" },
        "signing_keys": if keys_ok { "loaded" } else { "not_loaded" },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    no_store((status, axum::Json(body)).into_response())
}

fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some((scheme, token)) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes()))
}

/// `GET /metrics`: Prometheus text. Served to a loopback peer that came through no proxy
/// (no forwarding headers), or to anybody presenting the `metrics.bearer_token_env` token.
async fn metrics(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    let local = crate::http::net::canonical(peer.0.ip()).is_loopback()
        && !crate::http::net::has_forwarding_headers(&headers);
    let token_ok = state
        .metrics_token
        .as_ref()
        .is_some_and(|expected| bearer_matches(&headers, expected));
    if !(local || token_ok) {
        let error = GatewayError::with_detail(
            ErrorCode::AuthRequired,
            "Metrics are served to loopback scrapers or with the metrics bearer token.",
        );
        let status = if state.metrics_token.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        let mut response = (status, axum::Json(error.to_json())).into_response();
        if state.metrics_token.is_some() {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metrics\""),
            );
        }
        return no_store(response);
    }
    let (jwks_refresh_success, jwks_refresh_failure) = state
        .validator
        .as_ref()
        .map(|validator| validator.jwks().refresh_counts())
        .unwrap_or_default();
    let text = state.metrics.render(Snapshot {
        relay_sessions: state.relay.session_count() as u64,
        jwks_refresh_success,
        jwks_refresh_failure,
    });
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    no_store(response)
}

fn short_timeout() -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, SHORT_REQUEST_TIMEOUT)
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
        .layer(short_timeout());

    if state.resolved.relay_enabled {
        let pairing = Router::new()
            .route("/pair/start", post(pair_start))
            .route("/pair/finish", post(pair_finish))
            .layer(DefaultBodyLimit::max(MAX_PAIRING_BODY_BYTES))
            .layer(short_timeout());
        router = router.merge(pairing).route("/relay", get(relay_upgrade));
    }

    if state.authz.is_some() {
        use crate::authz::metadata::{
            AUTHORIZE_PATH, JWKS_PATH, REGISTER_PATH, REVOKE_PATH, TOKEN_PATH,
        };
        use crate::authz::routes;
        let endpoints = Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(routes::metadata),
            )
            .route(JWKS_PATH, get(routes::jwks))
            .route(REGISTER_PATH, post(routes::register))
            .route(AUTHORIZE_PATH, get(routes::authorize).post(routes::ask))
            .route(TOKEN_PATH, post(routes::token))
            .route(REVOKE_PATH, post(routes::revoke))
            .layer(DefaultBodyLimit::max(MAX_AUTHZ_BODY_BYTES))
            .layer(short_timeout());
        // The page's long poll outlives the short timeout (it waits up to 25 s).
        let status = Router::new()
            .route("/oauth/authorize/status", get(routes::status))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            ));
        router = router.merge(endpoints).merge(status);
    }

    if state.resolved.mcp_enabled {
        // One endpoint, both revisions: with `legacy_session_mode` on, rmcp serves
        // `initialize` and every request of a 2025-11-25 (or 2025-06-18) client through an
        // `Mcp-Session-Id` session, and every request carrying the 2026-07-28 per-request
        // `_meta` (and `server/discover`) statelessly, checking `Mcp-Method`/`Mcp-Name`
        // against the body; GET and DELETE under 2026-07-28 are answered 405.
        let allowed_hosts: Vec<String> = state
            .resolved
            .allowed_hosts
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(true)
            .with_allowed_hosts(allowed_hosts)
            .with_allowed_origins(state.resolved.allowed_origins.clone())
            .enforce_origin_validation()
            .with_cancellation_token(server_shutdown.child_token())
            .with_max_request_body_bytes(MAX_MCP_BODY_BYTES)
            .with_sse_keep_alive(Some(Duration::from_secs(15)));
        // Cluster store: sessions recorded there, so any replica rebuilds one it does not hold.
        config.session_store = state.mcp_sessions.session_store();
        let factory_state = Arc::clone(&state);
        let service = StreamableHttpService::new(
            move || Ok(GatewayMcp::new(Arc::clone(&factory_state))),
            state.mcp_sessions.manager(),
            config,
        );
        // Outermost first: Host/Origin, cache headers (on every answer, refusals included),
        // the request deadline, then OAuth.
        let guarded = ServiceBuilder::new()
            .layer(from_fn_with_state(
                Arc::clone(&state),
                crate::http::edge::host_and_origin,
            ))
            .layer(from_fn(crate::http::edge::private_no_store))
            .layer(from_fn_with_state(
                Arc::clone(&state),
                crate::http::edge::deadline,
            ))
            .layer(from_fn_with_state(Arc::clone(&state), require_bearer))
            .service(service);
        router = router.nest_service("/mcp", guarded);
    }

    // Operations endpoints are not rate limited: a busy client must not make the load
    // balancer's health checks fail.
    let operations = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(short_timeout());

    router
        .layer(from_fn_with_state(Arc::clone(&state), peer_rate_limit))
        .merge(operations)
        .with_state(state)
}

/// A running gateway.
pub struct GatewayHandle {
    local_addr: SocketAddr,
    state: Arc<AppState>,
    public_key: PublicKey,
    server_shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    audit_writer: Option<JoinHandle<()>>,
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

    /// Waits until every audit record queued so far is in the store (bounded). Returns
    /// whether that happened.
    pub async fn flush_audit(&self) -> bool {
        self.state.audit.flush(SHUTDOWN_GRACE).await
    }

    /// The gateway's metrics in the Prometheus text format (what `GET /metrics` serves).
    pub fn metrics_text(&self) -> String {
        let (jwks_refresh_success, jwks_refresh_failure) = self
            .state
            .validator
            .as_ref()
            .map(|validator| validator.jwks().refresh_counts())
            .unwrap_or_default();
        self.state.metrics.render(Snapshot {
            relay_sessions: self.state.relay.session_count() as u64,
            jwks_refresh_success,
            jwks_refresh_failure,
        })
    }

    /// Every pairing, newest first, revoked ones included.
    pub async fn pairings(&self) -> Result<Vec<crate::store::PairingRecord>, GatewayError> {
        self.state.store.list_pairings().await.map_err(|error| {
            tracing::error!(%error, "could not list pairings");
            GatewayError::new(ErrorCode::StateStoreError)
        })
    }

    /// Revokes a pairing and closes its live session at once.
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
            tracing::warn!("the HTTP server did not stop in time; aborting it");
            server.abort();
            let _ = server.await;
        }
        // Every call has been answered: commit the audit records still queued.
        if !self.state.audit.stop(SHUTDOWN_GRACE).await {
            tracing::warn!("audit records could not all be stored before shutdown");
        }
        if let Some(writer) = self.audit_writer.take() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, writer).await;
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

/// The shared store, when the configuration names one (`store.backend: postgres`); the
/// embedded store is opened with the audit trail's file.
pub(crate) async fn open_shared_store(
    config: &GatewayConfiguration,
) -> Result<Option<Store>, StartError> {
    let Some(options) = config
        .store
        .postgres_options()
        .map_err(StartError::Config)?
    else {
        return Ok(None);
    };
    Store::open_postgres(&options)
        .await
        .map(Some)
        .map_err(|error| StartError::Store(format!("the PostgreSQL store: {error}")))
}

/// The gateway's static key, created on first start, and checked against the key its active
/// pairings were made with before anything uses it (see `Store::check_gateway_key`). Blocking.
pub(crate) fn load_gateway_key(
    store: &Store,
    state_dir: &std::path::Path,
) -> Result<protocol::identity::StaticKeypair, StartError> {
    let now = crate::clock::unix_ms() / 1000;
    if !keys::key_file_exists(state_dir) {
        refuse_changed_key(store.check_gateway_key(None, now))?;
    }
    let keypair =
        keys::load_or_create_keypair(state_dir).map_err(|e| StartError::Keys(e.to_string()))?;
    refuse_changed_key(store.check_gateway_key(Some(&keypair.public()), now))?;
    Ok(keypair)
}

/// Turns a broken key continuity into the start error that says what happened.
fn refuse_changed_key(
    checked: Result<crate::store::KeyContinuity, crate::store::StoreError>,
) -> Result<(), StartError> {
    match checked.map_err(|e| StartError::Store(e.to_string()))? {
        crate::store::KeyContinuity::Broken {
            recorded_fingerprint,
            active_pairings,
            key_file_missing,
        } => Err(StartError::KeyChanged(format!(
            "{active_pairings} active pairing(s) were made with the gateway key {recorded_fingerprint}, \
             and gateway.key in state_dir {}. Restore it from a backup; to replace the key on \
             purpose run `ibkr-gateway key rotate --config <file> --confirm` (it revokes every \
             pairing; each laptop then pairs again).",
            if key_file_missing {
                "is missing"
            } else {
                "holds another key"
            }
        ))),
        crate::store::KeyContinuity::Same | crate::store::KeyContinuity::Recorded => Ok(()),
    }
}

/// Validates the configuration, opens the store, binds and serves.
pub async fn start(config: GatewayConfiguration) -> Result<GatewayHandle, StartError> {
    start_with(config, None).await
}

/// [`start`] on a shared store the caller opened already ([`Store::open_postgres`]), as a
/// program that runs several replicas in one process does. The configuration must name the
/// shared backend (`store.backend: postgres`); its `store.postgres_url_env` is not read.
pub async fn start_on_shared_store(
    config: GatewayConfiguration,
    store: Store,
) -> Result<GatewayHandle, StartError> {
    if config.store.backend != crate::config::StoreBackend::Postgres {
        return Err(StartError::Config(ConfigError {
            code: ErrorCode::ConfigInvalid,
            key: "store.backend".into(),
            message: "must be postgres to start on a shared store".into(),
        }));
    }
    start_with(config, Some(store)).await
}

async fn start_with(
    config: GatewayConfiguration,
    provided: Option<Store>,
) -> Result<GatewayHandle, StartError> {
    // Nothing is bound or written before the configuration is known to be good.
    let resolved = config.resolve()?;
    for (key, reason) in config.ignored_keys() {
        tracing::warn!(
            key,
            "configuration key {key} is ignored ({reason}); remove it from the file"
        );
    }

    // Secrets named by the configuration must be usable before anything is written.
    let metrics_token = match &config.metrics.bearer_token_env {
        Some(variable) => match std::env::var(variable) {
            Ok(value) if value.len() >= MIN_METRICS_TOKEN_BYTES => Some(Zeroizing::new(value)),
            _ => {
                return Err(StartError::Config(ConfigError {
                    code: ErrorCode::ConfigInvalid,
                    key: "metrics.bearer_token_env".into(),
                    message: format!(
                        "the environment variable {variable} must hold a token of at least {MIN_METRICS_TOKEN_BYTES} bytes"
                    ),
                }));
            }
        },
        None => None,
    };
    let hmac_variable = config.remote_mcp.token_id_hmac_secret_env.clone();
    if std::env::var_os(&hmac_variable)
        .is_some_and(|value| value.len() < crate::audit::MIN_SECRET_BYTES)
    {
        return Err(StartError::Config(ConfigError {
            code: ErrorCode::ConfigInvalid,
            key: "remote_mcp.token_id_hmac_secret_env".into(),
            message: format!(
                "the environment variable {hmac_variable} is set but shorter than {} bytes; set a longer secret or unset it to use one generated in state_dir",
                crate::audit::MIN_SECRET_BYTES
            ),
        }));
    }

    let state_dir = config.state_dir.clone();
    let configured_instance = config.instance_id.clone();
    let shared = match provided {
        Some(store) => Some(store),
        None => open_shared_store(&config).await?,
    };
    let (store, local, keypair, instance_id, audit_key, audit_log) =
        tokio::task::spawn_blocking(move || {
            // The SQLite file in state_dir: the whole store when embedded, and the audit trail
            // either way.
            let local =
                SqliteStore::open(&state_dir).map_err(|e| StartError::Store(e.to_string()))?;
            let store = shared.unwrap_or_else(|| Store::embedded(local.clone()));
            let keypair = load_gateway_key(&store, &state_dir)?;
            let instance_id =
                keys::load_or_create_instance_id(&state_dir, configured_instance.as_deref())
                    .map_err(|e| StartError::Keys(e.to_string()))?;
            let (audit_key, source) =
                AuditKey::load(&hmac_variable, &state_dir).map_err(|error| match error {
                    AuditKeyError::TooShort(_) => StartError::Config(ConfigError {
                        code: ErrorCode::ConfigInvalid,
                        key: "remote_mcp.token_id_hmac_secret_env".into(),
                        message: error.to_string(),
                    }),
                    AuditKeyError::File(error) => StartError::Keys(error.to_string()),
                })?;
            if source == KeySource::StateDir {
                tracing::info!(
                    variable = %hmac_variable,
                    file = crate::store::keys::AUDIT_SECRET_FILE,
                    "audit HMAC secret not in the environment; using the one persisted in state_dir"
                );
            }
            let audit_log =
                AuditLog::open(&local, &audit_key).map_err(|e| StartError::Store(e.to_string()))?;
            Ok::<_, StartError>((store, local, keypair, instance_id, audit_key, audit_log))
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
    let server_shutdown = CancellationToken::new();

    // The built-in authorization server's signing key, when it runs.
    let authz_key = if resolved.builtin_authorization_server && resolved.mcp_enabled {
        let state_dir = config.state_dir.clone();
        let key = tokio::task::spawn_blocking(move || {
            crate::authz::signing::SigningKey::load_or_create(&state_dir)
        })
        .await
        .map_err(|_| StartError::Keys("startup task failed".into()))?
        .map_err(|e| StartError::Keys(e.to_string()))?;
        Some(Arc::new(key))
    } else {
        None
    };
    let validator = match (&resolved.issuer, resolved.mcp_enabled, &authz_key) {
        (Some(issuer), true, Some(key)) => {
            // The same validator as for an external issuer, its keys read in process.
            let published = Arc::clone(key);
            let jwks = Arc::new(JwksCache::local(move || published.jwks()));
            jwks.initial_fetch().await;
            let settings = ValidatorSettings {
                issuer: issuer.clone(),
                audiences: resolved.audiences.clone(),
                algorithms: vec![crate::authz::signing::SIGNING_ALGORITHM],
                clock_skew_seconds: config.remote_mcp.clock_skew_seconds,
                require_typ_at_jwt: true,
                allowed_scopes: resolved.allowed_scopes.clone(),
                agent_claim: true,
            };
            Some(TokenValidator::new(settings, jwks))
        }
        (Some(issuer), true, None) => {
            let jwks = JwksCache::new(issuer, resolved.jwks_url.as_deref())
                .map_err(|e| StartError::Keys(e.to_string()))?;
            let jwks = Arc::new(jwks);
            if !jwks.initial_fetch().await {
                tracing::warn!(%issuer, "signing keys not available yet; tokens are refused until they are");
                spawn_key_retry(Arc::clone(&jwks), server_shutdown.clone());
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
                agent_claim: false,
            };
            Some(TokenValidator::new(settings, jwks))
        }
        _ => None,
    };

    let keypair = Arc::new(keypair);
    let public_key = keypair.public();
    let cluster = match config.cluster_settings().map_err(StartError::Config)? {
        Some(settings) => Some(Arc::new(
            crate::cluster::ClusterLink::connect(&settings)
                .await
                .map_err(|error| StartError::Cluster(error.to_string()))?,
        )),
        None => None,
    };
    let relay = Arc::new(Relay::new(
        RelaySettings::from_config(&config, resolved.relay_enabled),
        store.clone(),
        Arc::clone(&keypair),
        instance_id.clone(),
        cluster,
    ));
    let metrics = Arc::new(Metrics::new());
    let (audit, audit_writer) = Audit::start(
        audit_key,
        audit_log,
        Arc::clone(&metrics),
        config.audit.retention(),
        config.audit.ack_timeout(),
        config.audit.batching(),
    );
    // On a cluster store this replica's audit rows are copied there under its replica id.
    if let Some(shared) = store.shared() {
        let state_dir = config.state_dir.clone();
        let replica_id =
            tokio::task::spawn_blocking(move || keys::load_or_create_replica_id(&state_dir))
                .await
                .map_err(|_| StartError::Store("startup task failed".into()))?
                .map_err(|e| StartError::Keys(e.to_string()))?;
        crate::audit::shared::spawn_copier(
            crate::audit::shared::SharedCopy::new(shared.clone(), local, replica_id),
            audit.subscribe_commits(),
            server_shutdown.clone(),
        );
    }
    let authz = match &authz_key {
        Some(key) => Some(Arc::new(
            build_authorization_server(&config, &resolved, &store, &relay, key, &server_shutdown)
                .await?,
        )),
        None => None,
    };
    let state = Arc::new(AppState {
        authz,
        subject_limiter: RateLimiter::new(config.remote_mcp.rate_limit_per_subject_per_minute),
        peer_limiter: RateLimiter::new(config.remote_mcp.rate_limit_per_peer_per_minute),
        mcp_sessions: Arc::new(mcp_sessions(&config, &store)),
        pairing: PairingService::new(store.clone(), public_key, instance_id.clone()),
        resolved,
        store,
        instance_id,
        validator,
        audit,
        metrics,
        metrics_token,
        relay,
        config,
    });
    state.relay.spawn_revocation_poll();
    state.relay.spawn_cluster_holder();
    state.mcp_sessions.spawn_sweeper(server_shutdown.clone());

    let app = build_router(Arc::clone(&state), &server_shutdown);
    let edge = &state.config.remote_mcp;
    let limits = ConnectionLimits::new(
        LimitSettings {
            max_connections: edge.max_connections,
            max_connections_per_peer: edge.max_connections_per_peer,
            max_relay_connections: edge.max_relay_connections,
            trusted_proxies: state.resolved.trusted_proxies.clone(),
        },
        Arc::clone(&state.metrics),
    );
    let listener = LimitedListener::new(listener, limits);
    let deadlines = crate::http::server::Deadlines {
        first_byte: Duration::from_secs(edge.first_byte_timeout_seconds),
        header_read: Duration::from_secs(edge.header_read_timeout_seconds),
        drain: CONNECTION_DRAIN,
    };
    let token = server_shutdown.clone();
    let server = tokio::spawn(async move {
        crate::http::server::serve(listener, app, deadlines, token).await;
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
        audit_writer: Some(audit_writer),
    })
}

/// The built-in authorization server: its client registry, approval desk (fed by the relay)
/// and token endpoint.
async fn build_authorization_server(
    config: &GatewayConfiguration,
    resolved: &crate::config::Resolved,
    store: &Store,
    relay: &Arc<Relay>,
    key: &Arc<crate::authz::signing::SigningKey>,
    shutdown: &CancellationToken,
) -> Result<crate::authz::AuthorizationServer, StartError> {
    use crate::authz::{AuthorizationServer, approvals::ApprovalDesk, codes::CodeBook};
    let issuer = resolved.base_url.clone();
    // Documents on loopback only for a gateway that is itself on loopback (development).
    let loopback_gateway = url::Url::parse(&resolved.base_url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string))
        .is_some_and(|host| {
            host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    let state_dir = config.state_dir.clone();
    let clients = tokio::task::spawn_blocking(move || {
        crate::authz::registry::ClientRegistry::open(&state_dir, loopback_gateway)
    })
    .await
    .map_err(|_| StartError::Keys("startup task failed".into()))?
    .map_err(|e| StartError::Keys(e.to_string()))?;
    let codes = Arc::new(CodeBook::default());
    let desk = Arc::new(ApprovalDesk::new(
        Arc::clone(relay),
        Arc::clone(&codes),
        store.clone(),
        issuer.clone(),
        Duration::from_secs(config.remote_mcp.approval_timeout_seconds),
    ));
    let (inbox_tx, inbox_rx) = tokio::sync::mpsc::channel(256);
    // Set once, here, before the server accepts any connection.
    let _ = relay.agent_inbox.set(inbox_tx);
    tokio::spawn(Arc::clone(&desk).run(inbox_rx, shutdown.clone()));
    Ok(AuthorizationServer {
        tokens: crate::authz::grants::TokenEndpoint {
            key: Arc::clone(key),
            codes,
            store: store.clone(),
            issuer: issuer.clone(),
            resource: resolved.resource.clone(),
        },
        issuer,
        key: Arc::clone(key),
        clients,
        desk,
    })
}

/// After a failed initial fetch: keeps trying (once per cooldown) until the signing keys are
/// loaded, so `/readyz` turns ready without waiting for token traffic.
fn spawn_key_retry(jwks: Arc<JwksCache>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        while !jwks.loaded_once() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH_COOLDOWN) => {}
            }
            let _ = jwks.keys().await;
        }
    });
}

/// rmcp's session manager. Its own keep-alive only stops an idle session's worker (the entry
/// stays in its map), so the gateway's sweeper closes idle sessions; rmcp's timer is a
/// backstop a minute later.
/// The MCP session registry; on a cluster store, sessions are shared by the replicas.
fn mcp_sessions(config: &GatewayConfiguration, store: &Store) -> McpSessions {
    let idle_timeout = Duration::from_secs(config.remote_mcp.session_idle_timeout_seconds);
    let sessions = McpSessions::new(
        mcp_session_manager(config),
        config.remote_mcp.max_sessions_per_user,
        config.remote_mcp.max_sessions,
        idle_timeout,
    );
    match store.shared() {
        Some(shared) => sessions.shared_through(
            crate::oauth::shared_sessions::SharedSessions::new(shared.clone(), idle_timeout),
        ),
        None => sessions,
    }
}

fn mcp_session_manager(config: &GatewayConfiguration) -> Arc<LocalSessionManager> {
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(Duration::from_secs(
        config.remote_mcp.session_idle_timeout_seconds + 60,
    ));
    Arc::new(manager)
}
