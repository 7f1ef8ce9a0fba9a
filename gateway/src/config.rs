//! `GatewayConfiguration`: the one configuration model for the YAML file and for programmatic
//! use (tests, the demo). Both paths go through the same [`GatewayConfiguration::validate`],
//! which runs before any port is bound or any file is written.
//!
//! Fail closed: unknown keys are refused; this gateway only relays, so a configuration is
//! accepted only with `sidecar.enabled` and `safety.sidecar_enabled` both true *and* remote
//! MCP OAuth on (`remote_mcp.enabled` and `safety.remote_mcp_enabled`) and valid; anything
//! else is `CONFIG_SIDECAR_FORBIDDEN` (the flags) or `CONFIG_INVALID` (a missing or bad value),
//! and every refusal names the offending key. The reference is
//! `docs/configuration-gateway.md`; the checklist is tested row by row in
//! `tests/integration/config_table.rs`.

use crate::http::net::{HostRule, IpNet, normalize_origin};
use protocol::catalog::scopes;
use serde::{Deserialize, Serialize};
use shared_safety::ErrorCode;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use url::Url;

/// Largest accepted `remote_mcp.clock_skew_seconds`.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 300;

/// A configuration refusal: a stable code, the key path (e.g. `sidecar.heartbeat_timeout_seconds`)
/// and a message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {key}: {message}")]
pub struct ConfigError {
    pub code: ErrorCode,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            code: ErrorCode::ConfigInvalid,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn forbidden(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            code: ErrorCode::ConfigSidecarForbidden,
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Asymmetric JWS algorithms the gateway can verify. HMAC algorithms are deliberately absent:
/// a resource server that verifies with a shared secret could also mint tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            JwtAlgorithm::RS256 => A::RS256,
            JwtAlgorithm::RS384 => A::RS384,
            JwtAlgorithm::RS512 => A::RS512,
            JwtAlgorithm::PS256 => A::PS256,
            JwtAlgorithm::PS384 => A::PS384,
            JwtAlgorithm::PS512 => A::PS512,
            JwtAlgorithm::ES256 => A::ES256,
            JwtAlgorithm::ES384 => A::ES384,
            JwtAlgorithm::EdDSA => A::EdDSA,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfiguration {
    /// Socket address to bind, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Public origin of this gateway; the canonical resource URI is this plus `/mcp`.
    pub public_base_url: String,
    /// Holds the SQLite store and the gateway's static key.
    pub state_dir: PathBuf,
    /// Optional; generated once and persisted in `state_dir` when absent.
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub sidecar: SidecarSection,
    #[serde(default)]
    pub safety: SafetySection,
    #[serde(default)]
    pub remote_mcp: RemoteMcpSection,
    #[serde(default)]
    pub pairing: PairingSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub store: StoreSection,
    /// Routing between replicas (docs/scale-out.md); absent: one replica.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
}

/// How replicas reach each other: NATS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `nats://host:port` (comma-separated for several NATS servers); `tls://` for TLS.
    pub nats_url: String,
    /// The NATS user this replica authenticates as.
    #[serde(default)]
    pub nats_user: Option<String>,
    /// The NAME of the environment variable holding that user's password.
    #[serde(default)]
    pub nats_password_env: Option<String>,
    /// Or a file holding it (readable by the gateway's user only, e.g. a mounted secret).
    #[serde(default)]
    pub nats_password_file: Option<PathBuf>,
}

/// Where pairings, pairing codes, handshake timestamps and journal anchors live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// SQLite in `state_dir` (one gateway process, with its CLI).
    #[default]
    Embedded,
    /// A PostgreSQL database several replicas share.
    Postgres,
}

/// The store's backend (docs/scale-out.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    #[serde(default)]
    pub backend: StoreBackend,
    /// The NAME of the environment variable holding the PostgreSQL connection string (it
    /// usually holds a password, so it never sits in this file). Required with `postgres`.
    #[serde(default)]
    pub postgres_url_env: Option<String>,
    /// Connections each replica keeps to PostgreSQL.
    #[serde(default)]
    pub postgres_max_connections: Option<u32>,
}

impl GatewayConfiguration {
    /// How to reach NATS, the password read from the environment; `None` without a cluster.
    pub fn cluster_settings(&self) -> Result<Option<crate::cluster::ClusterSettings>, ConfigError> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let password = match (&cluster.nats_password_env, &cluster.nats_password_file) {
            (Some(variable), _) => Some(zeroize::Zeroizing::new(
                std::env::var(variable)
                    .ok()
                    .filter(|password| !password.is_empty())
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            "cluster.nats_password_env",
                            format!(
                                "the environment variable {variable} must hold the NATS password"
                            ),
                        )
                    })?,
            )),
            (None, Some(path)) => Some(zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .ok()
                    .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
                    .filter(|password| !password.is_empty())
                    .ok_or_else(|| {
                        ConfigError::invalid(
                            "cluster.nats_password_file",
                            format!("{} must hold the NATS password", path.display()),
                        )
                    })?,
            )),
            (None, None) => None,
        };
        Ok(Some(crate::cluster::ClusterSettings {
            url: cluster.nats_url.trim().to_string(),
            user: cluster.nats_user.clone(),
            password,
        }))
    }
}

impl StoreSection {
    pub const DEFAULT_POSTGRES_MAX_CONNECTIONS: u32 = 16;

    /// How to reach PostgreSQL, read from the environment; `None` for the embedded store.
    pub fn postgres_options(&self) -> Result<Option<crate::store::PostgresOptions>, ConfigError> {
        if self.backend != StoreBackend::Postgres {
            return Ok(None);
        }
        let variable = self.postgres_url_env.as_deref().unwrap_or_default();
        let url = std::env::var(variable)
            .ok()
            .filter(|url| !url.trim().is_empty())
            .ok_or_else(|| {
                ConfigError::invalid(
                    "store.postgres_url_env",
                    format!(
                        "the environment variable {variable} must hold the PostgreSQL connection string"
                    ),
                )
            })?;
        let mut options = crate::store::PostgresOptions::new(url);
        options.max_connections = usize::try_from(
            self.postgres_max_connections
                .unwrap_or(Self::DEFAULT_POSTGRES_MAX_CONNECTIONS),
        )
        .unwrap_or(usize::MAX);
        Ok(Some(options))
    }
}

/// The durable audit trail in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Records older than this many days are deleted, at start and then hourly. `0` keeps
    /// every record for ever.
    #[serde(default = "AuditSection::default_retention_days")]
    pub retention_days: u32,
    /// How long an order call waits for its audit record to be stored before it is refused
    /// with `AUDIT_UNAVAILABLE` (nothing is forwarded); also how long the audit writer waits
    /// for the database's write lock before a batch counts as lost.
    #[serde(default = "AuditSection::default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long the audit writer keeps a batch of records nobody waits for (read calls) open
    /// for more after its first record, so that one transaction (one fsync) covers them all.
    /// A batch holding an order call's record is committed at once, never held. `0` commits
    /// every batch as soon as the writer takes it.
    #[serde(default = "AuditSection::default_batch_window_ms")]
    pub batch_window_ms: u64,
    /// Most records the audit writer commits in one transaction.
    #[serde(default = "AuditSection::default_batch_max_records")]
    pub batch_max_records: u32,
}

impl AuditSection {
    fn default_retention_days() -> u32 {
        365
    }

    fn default_ack_timeout_ms() -> u64 {
        5_000
    }

    fn default_batch_window_ms() -> u64 {
        2
    }

    fn default_batch_max_records() -> u32 {
        256
    }

    /// How the audit writer groups records into transactions.
    pub fn batching(&self) -> crate::audit::Batching {
        crate::audit::Batching {
            window: std::time::Duration::from_millis(self.batch_window_ms),
            max_records: usize::try_from(self.batch_max_records).unwrap_or(usize::MAX),
        }
    }

    /// See [`AuditSection::ack_timeout_ms`].
    pub fn ack_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ack_timeout_ms)
    }

    /// How long records are kept; `None` for ever.
    pub fn retention(&self) -> Option<std::time::Duration> {
        (self.retention_days > 0)
            .then(|| std::time::Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            retention_days: Self::default_retention_days(),
            ack_timeout_ms: Self::default_ack_timeout_ms(),
            batch_window_ms: Self::default_batch_window_ms(),
            batch_max_records: Self::default_batch_max_records(),
        }
    }
}

/// `GET /metrics` access. Loopback scrapers (with no forwarding headers) are always let in;
/// anybody else needs the bearer token named here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// The NAME of an environment variable holding a bearer token (at least 16 bytes) that
    /// grants `/metrics` to non-loopback scrapers. Absent: loopback only.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarSection {
    /// Absent means off: relaying must be asked for explicitly.
    #[serde(default)]
    pub enabled: bool,
    /// The URL sidecars dial (advertised to operators and in pairing output).
    #[serde(default)]
    pub remote_relay_url: Option<String>,
    /// Ignored: the gateway never calls the Client Portal Gateway; each sidecar names its own
    /// in its configuration. Accepted, unchecked, so files written when it was required still
    /// load; [`crate::start`] logs a warning when it is set (see
    /// [`GatewayConfiguration::ignored_keys`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_client_portal_base_url: Option<String>,
    #[serde(default = "SidecarSection::default_heartbeat_interval")]
    pub heartbeat_interval_seconds: u64,
    #[serde(default = "SidecarSection::default_heartbeat_timeout")]
    pub heartbeat_timeout_seconds: u64,
    #[serde(default = "SidecarSection::default_session_ttl")]
    pub session_ttl_seconds: u64,
    #[serde(default = "SidecarSection::default_request_timeout")]
    pub request_timeout_seconds: u64,
    #[serde(default = "SidecarSection::default_max_in_flight")]
    pub max_in_flight_per_sidecar: usize,
    #[serde(default = "SidecarSection::default_handshake_timeout")]
    pub handshake_timeout_seconds: u64,
}

impl SidecarSection {
    fn default_heartbeat_interval() -> u64 {
        15
    }
    fn default_heartbeat_timeout() -> u64 {
        45
    }
    fn default_session_ttl() -> u64 {
        3600
    }
    fn default_request_timeout() -> u64 {
        30
    }
    fn default_max_in_flight() -> usize {
        32
    }
    fn default_handshake_timeout() -> u64 {
        10
    }
}

impl Default for SidecarSection {
    fn default() -> Self {
        SidecarSection {
            enabled: false,
            remote_relay_url: None,
            local_client_portal_base_url: None,
            heartbeat_interval_seconds: Self::default_heartbeat_interval(),
            heartbeat_timeout_seconds: Self::default_heartbeat_timeout(),
            session_ttl_seconds: Self::default_session_ttl(),
            request_timeout_seconds: Self::default_request_timeout(),
            max_in_flight_per_sidecar: Self::default_max_in_flight(),
            handshake_timeout_seconds: Self::default_handshake_timeout(),
        }
    }
}

/// Independent safety switches: a relay needs both the feature flag and this flag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetySection {
    #[serde(default)]
    pub sidecar_enabled: bool,
    #[serde(default)]
    pub remote_mcp_enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteMcpSection {
    #[serde(default)]
    pub enabled: bool,
    /// Defaults to `public_base_url + "/mcp"`; must equal it when set.
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    /// When absent, discovered from the issuer's RFC 8414 (then OIDC) metadata.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Defaults to `[resource]`; must contain the resource.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Defaults to every catalog scope; token scopes outside this list are ignored.
    #[serde(default)]
    pub allowed_scopes: Option<Vec<String>>,
    /// The baseline a `401` from `/mcp` asks for in its `scope` parameter (RFC 6750 section 3,
    /// MCP authorization): what a client requests when it first signs in. Defaults to the
    /// read-only catalog scopes among `allowed_scopes`; anything more is asked for by the `403
    /// insufficient_scope` step-up when a tool needs it. Each entry must be in
    /// `allowed_scopes`.
    #[serde(default)]
    pub challenge_scopes: Option<Vec<String>>,
    #[serde(default = "RemoteMcpSection::default_algorithms")]
    pub allowed_algorithms: Vec<JwtAlgorithm>,
    #[serde(default = "RemoteMcpSection::default_skew")]
    pub clock_skew_seconds: u64,
    /// Require the RFC 9068 header `typ: at+jwt` (or `application/at+jwt`), so that another
    /// JWT of the same issuer and audience (an ID token, say) cannot pass as an access token.
    /// On by default; turn off only for an issuer that cannot set it.
    #[serde(default = "RemoteMcpSection::default_require_typ_at_jwt")]
    pub require_typ_at_jwt: bool,
    /// Concurrent HTTP connections (relay websockets have their own budget). When full, the
    /// longest-idle connection is evicted for a new one; only when every connection has a
    /// request in progress is a new one refused.
    #[serde(default = "RemoteMcpSection::default_max_connections")]
    pub max_connections: usize,
    /// Concurrent connections per client address (an IPv4 address or an IPv6 /64), relay
    /// websockets included. Behind a trusted proxy: requests in progress per forwarded client.
    #[serde(default = "RemoteMcpSection::default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// Concurrent `/relay` websockets, apart from `max_connections`.
    #[serde(default = "RemoteMcpSection::default_max_relay_connections")]
    pub max_relay_connections: usize,
    /// Time a new connection gets to send its first byte; then it is closed and its slot
    /// freed.
    #[serde(default = "RemoteMcpSection::default_first_byte_timeout")]
    pub first_byte_timeout_seconds: u64,
    /// Time a connection gets to deliver a complete request head once it is ready for one
    /// (from its first byte, or idle between keep-alive requests); then it is closed and its
    /// slot freed. Also the keep-alive idle timeout: keep it above a reverse proxy's upstream
    /// idle timeout.
    #[serde(default = "RemoteMcpSection::default_header_read_timeout")]
    pub header_read_timeout_seconds: u64,
    /// Open MCP sessions (2025-11-25 `Mcp-Session-Id` sessions) one user may hold at once;
    /// an `initialize` beyond it is refused with `MCP_SESSION_LIMIT`. Sessions the client
    /// deleted or that sat idle for `session_idle_timeout_seconds` do not count.
    #[serde(default = "RemoteMcpSection::default_max_sessions_per_user")]
    pub max_sessions_per_user: usize,
    /// Built-in authorization server: how long the laptop's owner has to approve a new agent
    /// once its page named the user (1 to 900 seconds).
    #[serde(default = "RemoteMcpSection::default_approval_timeout")]
    pub approval_timeout_seconds: u64,
    /// Open MCP sessions the whole gateway holds at once, every user's together; an
    /// `initialize` beyond it is refused with `MCP_SESSION_LIMIT` rather than memory grown
    /// without bound.
    #[serde(default = "RemoteMcpSection::default_max_sessions")]
    pub max_sessions: usize,
    /// An MCP session that receives no request for this long is closed (its client gets 404
    /// and initializes a new one, as the MCP specification has clients do).
    #[serde(default = "RemoteMcpSection::default_session_idle_timeout")]
    pub session_idle_timeout_seconds: u64,
    #[serde(default = "RemoteMcpSection::default_rate_subject")]
    pub rate_limit_per_subject_per_minute: u32,
    #[serde(default = "RemoteMcpSection::default_rate_peer")]
    pub rate_limit_per_peer_per_minute: u32,
    #[serde(default = "RemoteMcpSection::default_hmac_env")]
    pub token_id_hmac_secret_env: String,
    /// `Host` values `/mcp` accepts (DNS-rebinding protection): `host` (any port) or
    /// `host:port`. Defaults to the host of `public_base_url`.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins `/mcp` accepts in an `Origin` header, besides `public_base_url`'s own.
    /// A request without `Origin` (every non-browser client) is not affected.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Proxies (IPs or CIDR networks) whose `X-Forwarded-For` is believed for the per-peer
    /// rate and connection limits; their own addresses are not capped per peer. Empty: the
    /// socket peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl RemoteMcpSection {
    fn default_algorithms() -> Vec<JwtAlgorithm> {
        vec![
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
        ]
    }
    fn default_skew() -> u64 {
        60
    }
    fn default_require_typ_at_jwt() -> bool {
        true
    }
    fn default_max_connections() -> usize {
        1024
    }
    fn default_max_connections_per_peer() -> usize {
        64
    }
    fn default_max_relay_connections() -> usize {
        1024
    }
    fn default_first_byte_timeout() -> u64 {
        5
    }
    fn default_header_read_timeout() -> u64 {
        75
    }
    fn default_max_sessions_per_user() -> usize {
        64
    }
    fn default_approval_timeout() -> u64 {
        300
    }
    fn default_max_sessions() -> usize {
        10_000
    }
    fn default_session_idle_timeout() -> u64 {
        300
    }
    fn default_rate_subject() -> u32 {
        600
    }
    fn default_rate_peer() -> u32 {
        1200
    }
    fn default_hmac_env() -> String {
        "IBKR_GATEWAY_TOKEN_ID_HMAC_SECRET".to_string()
    }
}

impl Default for RemoteMcpSection {
    fn default() -> Self {
        RemoteMcpSection {
            enabled: false,
            resource: None,
            issuer: None,
            jwks_url: None,
            audiences: None,
            allowed_scopes: None,
            challenge_scopes: None,
            allowed_algorithms: Self::default_algorithms(),
            clock_skew_seconds: Self::default_skew(),
            require_typ_at_jwt: Self::default_require_typ_at_jwt(),
            max_connections: Self::default_max_connections(),
            max_connections_per_peer: Self::default_max_connections_per_peer(),
            max_relay_connections: Self::default_max_relay_connections(),
            first_byte_timeout_seconds: Self::default_first_byte_timeout(),
            header_read_timeout_seconds: Self::default_header_read_timeout(),
            max_sessions_per_user: Self::default_max_sessions_per_user(),
            approval_timeout_seconds: Self::default_approval_timeout(),
            max_sessions: Self::default_max_sessions(),
            session_idle_timeout_seconds: Self::default_session_idle_timeout(),
            rate_limit_per_subject_per_minute: Self::default_rate_subject(),
            rate_limit_per_peer_per_minute: Self::default_rate_peer(),
            token_id_hmac_secret_env: Self::default_hmac_env(),
            allowed_hosts: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingSection {
    #[serde(default = "PairingSection::default_ttl")]
    pub code_ttl_seconds: u64,
    #[serde(default = "PairingSection::default_attempts")]
    pub max_attempts_per_code: u32,
}

impl PairingSection {
    fn default_ttl() -> u64 {
        600
    }
    fn default_attempts() -> u32 {
        5
    }
}

impl Default for PairingSection {
    fn default() -> Self {
        PairingSection {
            code_ttl_seconds: Self::default_ttl(),
            max_attempts_per_code: Self::default_attempts(),
        }
    }
}

/// True for `127.0.0.1`-style, `::1` and `localhost` hosts: the only hosts where plain http/ws
/// is accepted (development issuer, tests, the demo).
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Parses an absolute URL whose scheme is `secure`, or `insecure` on a loopback host only.
fn parse_url(key: &str, text: &str, secure: &str, insecure: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim())
        .map_err(|_| ConfigError::invalid(key, format!("must be an absolute {secure}:// URL")))?;
    if url.host().is_none() {
        return Err(ConfigError::invalid(key, "must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::invalid(
            key,
            "must not carry credentials in the URL",
        ));
    }
    if url.fragment().is_some() {
        return Err(ConfigError::invalid(key, "must not have a #fragment"));
    }
    let scheme = url.scheme();
    if scheme == secure || (scheme == insecure && is_loopback_host(&url)) {
        Ok(url)
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "must use {secure}:// ({insecure}:// is accepted only on a loopback host such as 127.0.0.1)"
            ),
        ))
    }
}

/// `Url` renders a bare origin with a trailing `/`; the canonical form here has none.
fn origin_string(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

fn check_id(key: &str, text: &str) -> Result<(), ConfigError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
        ))
    }
}

/// An environment variable NAME (so a pasted secret is refused).
fn check_env_name(key: &str, name: &str, example: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(ConfigError::invalid(
            key,
            format!("must be an environment variable name such as {example}"),
        ));
    }
    Ok(())
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// The catalog scopes `keep` selects, in catalog order, once each.
fn in_catalog_order(keep: impl Fn(&str) -> bool) -> Vec<String> {
    scopes::ALL
        .iter()
        .copied()
        .filter(|scope| keep(scope))
        .map(str::to_string)
        .collect()
}

/// The key a YAML reading error is about: the path serde reached, plus the field name for a
/// missing field (serde reports those at the enclosing section).
fn serde_error_key(path: &str, message: &str) -> String {
    let base = if path == "." { "" } else { path };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .filter(|field| !field.is_empty());
    match missing {
        Some(field) if base.is_empty() => field.to_string(),
        Some(field) => format!("{base}.{field}"),
        None => base.to_string(),
    }
}

/// The values derived from a validated configuration that the rest of the crate uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub listen: SocketAddr,
    /// `public_base_url` without a trailing slash.
    pub base_url: String,
    /// Canonical resource URI (`base_url + "/mcp"`).
    pub resource: String,
    /// RFC 9728 path-inserted metadata URL for the resource.
    pub resource_metadata_url: String,
    /// Always true once validated (the relay and remote MCP OAuth are required); kept so the
    /// router and the endpoints can refuse on their own as a fail-closed backstop.
    pub relay_enabled: bool,
    pub mcp_enabled: bool,
    pub relay_url: Option<String>,
    /// The issuer tokens must name: the external provider's, or `base_url` when the gateway
    /// is its own authorization server.
    pub issuer: Option<String>,
    /// True when `remote_mcp.issuer` is left out: the gateway's own authorization server runs.
    pub builtin_authorization_server: bool,
    pub jwks_url: Option<String>,
    pub audiences: Vec<String>,
    pub allowed_scopes: Vec<String>,
    /// The `scope` of the `401` challenge, in catalog order; empty: the challenge names none.
    pub challenge_scopes: Vec<String>,
    /// `public_base_url`'s origin as `scheme://host:port`.
    pub public_origin: String,
    /// `Host` values `/mcp` accepts.
    pub allowed_hosts: Vec<HostRule>,
    /// Normalized `Origin` values `/mcp` accepts (always including `public_origin`).
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
}

impl GatewayConfiguration {
    /// Parses YAML (unknown keys refused) and validates it.
    pub fn from_yaml_str(text: &str) -> Result<GatewayConfiguration, ConfigError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let config: GatewayConfiguration =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let key = serde_error_key(&error.path().to_string(), &error.inner().to_string());
                // The serde message names the field or type problem; it never holds a value
                // beyond what the operator typed into their own file.
                ConfigError::invalid(
                    &key,
                    format!("cannot read the configuration: {}", error.inner()),
                )
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a YAML file.
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<GatewayConfiguration, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::invalid(
                "",
                format!("cannot read configuration file {}: {error}", path.display()),
            )
        })?;
        Self::from_yaml_str(&text)
    }

    /// A complete development configuration: relay and remote MCP on, plain http on loopback,
    /// the given issuer. A `listen` port of 0 binds an ephemeral port; the URLs then carry
    /// port 0 and [`crate::start`] substitutes the bound port.
    pub fn for_dev(
        listen: SocketAddr,
        issuer_url: &str,
        state_dir: impl Into<PathBuf>,
    ) -> GatewayConfiguration {
        let host = match listen.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let origin = format!("{host}:{}", listen.port());
        GatewayConfiguration {
            listen: listen.to_string(),
            public_base_url: format!("http://{origin}"),
            state_dir: state_dir.into(),
            instance_id: None,
            log_format: LogFormat::Text,
            sidecar: SidecarSection {
                enabled: true,
                remote_relay_url: Some(format!("ws://{origin}/relay")),
                ..SidecarSection::default()
            },
            safety: SafetySection {
                sidecar_enabled: true,
                remote_mcp_enabled: true,
            },
            remote_mcp: RemoteMcpSection {
                enabled: true,
                issuer: Some(issuer_url.to_string()),
                ..RemoteMcpSection::default()
            },
            pairing: PairingSection::default(),
            metrics: MetricsSection::default(),
            audit: AuditSection::default(),
            store: StoreSection::default(),
            cluster: None,
        }
    }

    /// Keys that are set but have no effect (accepted so older files still load), each with
    /// the reason, for a warning at start.
    pub fn ignored_keys(&self) -> Vec<(&'static str, &'static str)> {
        let mut keys = Vec::new();
        if self.sidecar.local_client_portal_base_url.is_some() {
            keys.push((
                "sidecar.local_client_portal_base_url",
                "the gateway never calls the Client Portal Gateway; each sidecar sets its own",
            ));
        }
        keys
    }

    /// Checks everything; returns the first problem found, with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolve().map(|_| ())
    }

    /// Validates and derives the values the gateway runs on.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let listen: SocketAddr = self.listen.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "listen",
                "must be an address and port such as 127.0.0.1:8080",
            )
        })?;

        let base = parse_url("public_base_url", &self.public_base_url, "https", "http")?;
        if !(base.path().is_empty() || base.path() == "/") || base.query().is_some() {
            return Err(ConfigError::invalid(
                "public_base_url",
                "must be an origin without a path or query, e.g. https://gateway.example.com",
            ));
        }
        let base_port_zero = base.port() == Some(0);
        if base_port_zero && listen.port() != 0 {
            return Err(ConfigError::invalid(
                "public_base_url",
                "port 0 is only allowed when listen also uses port 0",
            ));
        }
        let base_url = origin_string(&base);
        let resource = format!("{base_url}/mcp");
        let resource_metadata_url = format!("{base_url}/.well-known/oauth-protected-resource/mcp");

        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "state_dir",
                "must name a directory for the store and the gateway key",
            ));
        }
        if let Some(id) = &self.instance_id {
            check_id("instance_id", id)?;
        }

        // The fail-closed checklist of the seed, in its order. This gateway exists only to
        // relay, so a deployment is always a relaying one: both sidecar flags must be on, and
        // relaying is refused without remote MCP OAuth (both of its flags on, then validated
        // below).
        if !self.sidecar.enabled || !self.safety.sidecar_enabled {
            let key = if !self.sidecar.enabled {
                "sidecar.enabled"
            } else {
                "safety.sidecar_enabled"
            };
            let state = if self.sidecar.enabled == self.safety.sidecar_enabled {
                "both are off"
            } else {
                "they disagree"
            };
            return Err(ConfigError::forbidden(
                key,
                format!(
                    "{key} is not true ({state}); this gateway only serves by relaying to paired sidecars, \
                     so set both sidecar.enabled and safety.sidecar_enabled to true"
                ),
            ));
        }
        if !self.remote_mcp.enabled || !self.safety.remote_mcp_enabled {
            let key = if !self.remote_mcp.enabled {
                "remote_mcp.enabled"
            } else {
                "safety.remote_mcp_enabled"
            };
            return Err(ConfigError::forbidden(
                key,
                format!(
                    "{key} is not true; relaying requires remote MCP OAuth: set remote_mcp.enabled \
                     and safety.remote_mcp_enabled to true and configure remote_mcp.issuer"
                ),
            ));
        }

        let sidecar = &self.sidecar;
        let text = sidecar.remote_relay_url.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                "sidecar.remote_relay_url",
                "must be set to the wss:// URL sidecars dial, e.g. wss://gateway.example.com/relay",
            )
        })?;
        let url = parse_url("sidecar.remote_relay_url", text, "wss", "ws")?;
        if url.port() == Some(0) && listen.port() != 0 {
            return Err(ConfigError::invalid(
                "sidecar.remote_relay_url",
                "port 0 is only allowed when listen also uses port 0",
            ));
        }
        let relay_url = Some(url.as_str().to_string());
        check_range(
            "sidecar.heartbeat_interval_seconds",
            sidecar.heartbeat_interval_seconds,
            1,
            3600,
        )?;
        if sidecar.heartbeat_timeout_seconds <= sidecar.heartbeat_interval_seconds {
            return Err(ConfigError::invalid(
                "sidecar.heartbeat_timeout_seconds",
                "must be greater than sidecar.heartbeat_interval_seconds",
            ));
        }
        check_range(
            "sidecar.heartbeat_timeout_seconds",
            sidecar.heartbeat_timeout_seconds,
            2,
            7200,
        )?;
        if sidecar.session_ttl_seconds <= sidecar.heartbeat_timeout_seconds {
            return Err(ConfigError::invalid(
                "sidecar.session_ttl_seconds",
                "must be greater than sidecar.heartbeat_timeout_seconds",
            ));
        }
        check_range(
            "sidecar.session_ttl_seconds",
            sidecar.session_ttl_seconds,
            1,
            7 * 86400,
        )?;
        check_range(
            "sidecar.request_timeout_seconds",
            sidecar.request_timeout_seconds,
            1,
            900,
        )?;
        check_range(
            "sidecar.max_in_flight_per_sidecar",
            sidecar.max_in_flight_per_sidecar as u64,
            1,
            1024,
        )?;
        check_range(
            "sidecar.handshake_timeout_seconds",
            sidecar.handshake_timeout_seconds,
            1,
            120,
        )?;

        let mut jwks_url = None;
        let mut audiences = vec![resource.clone()];
        let mut allowed_scopes: Vec<String> = scopes::ALL.iter().map(|s| s.to_string()).collect();
        let mcp = &self.remote_mcp;
        if let Some(configured) = &mcp.resource
            && configured.trim().trim_end_matches('/') != resource
        {
            return Err(ConfigError::invalid(
                "remote_mcp.resource",
                format!("must equal public_base_url + \"/mcp\" ({resource}) or be left out"),
            ));
        }
        // Without an external issuer the gateway is its own authorization server.
        let builtin_authorization_server = mcp.issuer.is_none();
        let issuer = match mcp.issuer.as_deref() {
            None => {
                if mcp.jwks_url.is_some() {
                    return Err(ConfigError::invalid(
                        "remote_mcp.jwks_url",
                        "is only read with remote_mcp.issuer; the built-in authorization server \
                         publishes its own keys",
                    ));
                }
                if self.store.backend == StoreBackend::Postgres {
                    return Err(ConfigError::invalid(
                        "remote_mcp.issuer",
                        "must be set on a cluster (store.backend: postgres): the built-in \
                         authorization server keeps its approvals and signing key on one gateway; \
                         use an external provider (docs/authorization.md)",
                    ));
                }
                base_url.clone()
            }
            Some(text) => {
                let url = parse_url("remote_mcp.issuer", text, "https", "http")?;
                if url.query().is_some() {
                    return Err(ConfigError::invalid(
                        "remote_mcp.issuer",
                        "must not have a query string",
                    ));
                }
                if let Some(text) = &mcp.jwks_url {
                    parse_url("remote_mcp.jwks_url", text, "https", "http")?;
                    jwks_url = Some(text.trim().to_string());
                }
                // Issuer comparison is exact (RFC 8414 / RFC 9068): keep the text as written.
                text.trim().to_string()
            }
        };
        let issuer = Some(issuer);
        if let Some(list) = &mcp.audiences {
            let normalized: Vec<String> = list
                .iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            if !normalized
                .iter()
                .any(|a| a.trim_end_matches('/') == resource)
            {
                return Err(ConfigError::invalid(
                    "remote_mcp.audiences",
                    format!("must contain the canonical resource URI {resource}"),
                ));
            }
            // Tokens must carry the canonical resource URI itself (RFC 8707): another audience
            // would accept tokens minted for some other resource.
            if let Some(other) = normalized
                .iter()
                .find(|a| a.trim_end_matches('/') != resource)
            {
                return Err(ConfigError::invalid(
                    "remote_mcp.audiences",
                    format!(
                        "may list only the canonical resource URI {resource} (found {other:?}); \
                         tokens must carry it in aud, so leave the key out"
                    ),
                ));
            }
            audiences = vec![resource.clone()];
        }
        if let Some(list) = &mcp.allowed_scopes {
            if list.is_empty() {
                return Err(ConfigError::invalid(
                    "remote_mcp.allowed_scopes",
                    "must list at least one scope, or be left out to allow every catalog scope",
                ));
            }
            if let Some(unknown) = list.iter().find(|s| !scopes::is_known(s)) {
                return Err(ConfigError::invalid(
                    "remote_mcp.allowed_scopes",
                    format!("unknown scope {unknown:?}; see the tool catalog for valid scopes"),
                ));
            }
            allowed_scopes = list.clone();
        }
        let challenge_scopes = match &mcp.challenge_scopes {
            None => in_catalog_order(|scope| {
                scopes::READ_ONLY.contains(&scope) && allowed_scopes.iter().any(|a| a == scope)
            }),
            Some(list) => {
                const KEY: &str = "remote_mcp.challenge_scopes";
                if list.is_empty() {
                    return Err(ConfigError::invalid(
                        KEY,
                        "must list at least one scope, or be left out to ask for the read scopes",
                    ));
                }
                if let Some(unknown) = list.iter().find(|s| !scopes::is_known(s)) {
                    return Err(ConfigError::invalid(
                        KEY,
                        format!("unknown scope {unknown:?}; see the tool catalog for valid scopes"),
                    ));
                }
                if let Some(ignored) = list.iter().find(|s| !allowed_scopes.contains(s)) {
                    return Err(ConfigError::invalid(
                        KEY,
                        format!(
                            "scope {ignored:?} is not in remote_mcp.allowed_scopes, so a token \
                             carrying it would have it ignored"
                        ),
                    ));
                }
                in_catalog_order(|scope| list.iter().any(|listed| listed == scope))
            }
        };
        if mcp.allowed_algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "remote_mcp.allowed_algorithms",
                "must list at least one algorithm such as RS256 or ES256",
            ));
        }
        if mcp.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
            return Err(ConfigError::invalid(
                "remote_mcp.clock_skew_seconds",
                format!("must be at most {MAX_CLOCK_SKEW_SECONDS}"),
            ));
        }
        check_range(
            "remote_mcp.max_connections",
            mcp.max_connections as u64,
            1,
            1_000_000,
        )?;
        check_range(
            "remote_mcp.max_connections_per_peer",
            mcp.max_connections_per_peer as u64,
            1,
            1_000_000,
        )?;
        check_range(
            "remote_mcp.max_relay_connections",
            mcp.max_relay_connections as u64,
            1,
            1_000_000,
        )?;
        check_range(
            "remote_mcp.approval_timeout_seconds",
            mcp.approval_timeout_seconds,
            1,
            900,
        )?;
        check_range(
            "remote_mcp.max_sessions_per_user",
            mcp.max_sessions_per_user as u64,
            1,
            10_000,
        )?;
        check_range(
            "remote_mcp.max_sessions",
            mcp.max_sessions as u64,
            1,
            1_000_000,
        )?;
        check_range(
            "remote_mcp.session_idle_timeout_seconds",
            mcp.session_idle_timeout_seconds,
            30,
            86_400,
        )?;
        check_range(
            "remote_mcp.first_byte_timeout_seconds",
            mcp.first_byte_timeout_seconds,
            1,
            60,
        )?;
        check_range(
            "remote_mcp.header_read_timeout_seconds",
            mcp.header_read_timeout_seconds,
            1,
            900,
        )?;
        check_range(
            "remote_mcp.rate_limit_per_subject_per_minute",
            u64::from(mcp.rate_limit_per_subject_per_minute),
            1,
            1_000_000,
        )?;
        check_range(
            "remote_mcp.rate_limit_per_peer_per_minute",
            u64::from(mcp.rate_limit_per_peer_per_minute),
            1,
            1_000_000,
        )?;
        check_env_name(
            "remote_mcp.token_id_hmac_secret_env",
            &mcp.token_id_hmac_secret_env,
            "IBKR_GATEWAY_TOKEN_ID_HMAC_SECRET",
        )?;
        let allowed_hosts = match &mcp.allowed_hosts {
            None => HostRule::for_url(&base).into_iter().collect::<Vec<_>>(),
            Some(list) => {
                if list.is_empty() {
                    return Err(ConfigError::invalid(
                        "remote_mcp.allowed_hosts",
                        "must list at least one host, or be left out to allow public_base_url's host",
                    ));
                }
                list.iter()
                    .enumerate()
                    .map(|(index, text)| {
                        HostRule::parse(text).map_err(|message| {
                            ConfigError::invalid(
                                &format!("remote_mcp.allowed_hosts[{index}]"),
                                message,
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let public_origin = normalize_origin(&base_url)
            .map_err(|message| ConfigError::invalid("public_base_url", message))?;
        let mut allowed_origins = vec![public_origin.clone()];
        for (index, text) in mcp.allowed_origins.iter().enumerate() {
            let origin = normalize_origin(text).map_err(|message| {
                ConfigError::invalid(&format!("remote_mcp.allowed_origins[{index}]"), message)
            })?;
            if !allowed_origins.contains(&origin) {
                allowed_origins.push(origin);
            }
        }
        let trusted_proxies = mcp
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(index, text)| {
                IpNet::parse(text).map_err(|message| {
                    ConfigError::invalid(&format!("remote_mcp.trusted_proxies[{index}]"), message)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(env) = &self.metrics.bearer_token_env {
            check_env_name(
                "metrics.bearer_token_env",
                env,
                "IBKR_GATEWAY_METRICS_TOKEN",
            )?;
        }
        match (&self.store.backend, &self.store.postgres_url_env) {
            (StoreBackend::Postgres, None) => {
                return Err(ConfigError::invalid(
                    "store.postgres_url_env",
                    "is required with store.backend: postgres (the NAME of the environment variable holding the connection string, e.g. IBKR_GATEWAY_DATABASE_URL)",
                ));
            }
            (StoreBackend::Embedded, Some(_)) => {
                return Err(ConfigError::invalid(
                    "store.postgres_url_env",
                    "is only used with store.backend: postgres",
                ));
            }
            (_, Some(env)) => {
                check_env_name("store.postgres_url_env", env, "IBKR_GATEWAY_DATABASE_URL")?
            }
            (StoreBackend::Embedded, None) => {}
        }
        if let Some(cluster) = &self.cluster {
            if self.store.backend != StoreBackend::Postgres {
                return Err(ConfigError::invalid(
                    "cluster",
                    "replicas must share their pairings: set store.backend: postgres",
                ));
            }
            let urls: Vec<&str> = cluster.nats_url.split(',').map(str::trim).collect();
            if urls.iter().any(|url| {
                !(url.starts_with("nats://") || url.starts_with("tls://")) || url.len() < 8
            }) {
                return Err(ConfigError::invalid(
                    "cluster.nats_url",
                    "must be nats://host:port or tls://host:port (comma-separated for several)",
                ));
            }
            let has_password =
                cluster.nats_password_env.is_some() || cluster.nats_password_file.is_some();
            if cluster.nats_password_env.is_some() && cluster.nats_password_file.is_some() {
                return Err(ConfigError::invalid(
                    "cluster.nats_password_file",
                    "set either cluster.nats_password_env or cluster.nats_password_file, not both",
                ));
            }
            if let Some(env) = &cluster.nats_password_env {
                check_env_name(
                    "cluster.nats_password_env",
                    env,
                    "IBKR_GATEWAY_NATS_PASSWORD",
                )?;
            }
            match (&cluster.nats_user, has_password) {
                (Some(user), true) => check_id("cluster.nats_user", user)?,
                (None, false) => {}
                (Some(_), false) => {
                    return Err(ConfigError::invalid(
                        "cluster.nats_password_env",
                        "is required with cluster.nats_user (or cluster.nats_password_file)",
                    ));
                }
                (None, true) => {
                    return Err(ConfigError::invalid(
                        "cluster.nats_user",
                        "is required with a NATS password",
                    ));
                }
            }
        }
        if let Some(connections) = self.store.postgres_max_connections {
            check_range(
                "store.postgres_max_connections",
                u64::from(connections),
                1,
                1000,
            )?;
        }

        check_range(
            "pairing.code_ttl_seconds",
            self.pairing.code_ttl_seconds,
            1,
            86400,
        )?;
        check_range(
            "pairing.max_attempts_per_code",
            u64::from(self.pairing.max_attempts_per_code),
            1,
            20,
        )?;
        check_range(
            "audit.retention_days",
            u64::from(self.audit.retention_days),
            0,
            36_500,
        )?;
        check_range(
            "audit.ack_timeout_ms",
            self.audit.ack_timeout_ms,
            50,
            60_000,
        )?;
        check_range("audit.batch_window_ms", self.audit.batch_window_ms, 0, 100)?;
        check_range(
            "audit.batch_max_records",
            u64::from(self.audit.batch_max_records),
            1,
            crate::audit::AUDIT_QUEUE as u64,
        )?;

        Ok(Resolved {
            listen,
            base_url,
            resource,
            resource_metadata_url,
            relay_enabled: true,
            mcp_enabled: true,
            relay_url,
            issuer,
            builtin_authorization_server,
            jwks_url,
            audiences,
            allowed_scopes,
            challenge_scopes,
            public_origin,
            allowed_hosts,
            allowed_origins,
            trusted_proxies,
        })
    }

    /// Replaces port 0 in the advertised loopback URLs with the port actually bound, so tests
    /// and the demo can bind an ephemeral port and still get a correct canonical resource URI.
    pub(crate) fn with_bound_port(&self, port: u16) -> GatewayConfiguration {
        fn fix(text: &str, port: u16) -> String {
            match Url::parse(text.trim()) {
                Ok(mut url) if url.port() == Some(0) && is_loopback_host(&url) => {
                    if url.set_port(Some(port)).is_ok() {
                        let rendered = url.as_str().to_string();
                        // Keep the caller's choice about a trailing slash on bare origins.
                        if !text.trim().ends_with('/') && url.path() == "/" {
                            return rendered.trim_end_matches('/').to_string();
                        }
                        return rendered;
                    }
                    text.to_string()
                }
                _ => text.to_string(),
            }
        }
        let mut config = self.clone();
        config.public_base_url = fix(&config.public_base_url, port);
        config.sidecar.remote_relay_url = config
            .sidecar
            .remote_relay_url
            .as_deref()
            .map(|u| fix(u, port));
        config.remote_mcp.resource = config.remote_mcp.resource.as_deref().map(|u| fix(u, port));
        config.remote_mcp.audiences = config
            .remote_mcp
            .audiences
            .as_ref()
            .map(|list| list.iter().map(|u| fix(u, port)).collect());
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> GatewayConfiguration {
        GatewayConfiguration::for_dev(
            "127.0.0.1:8080".parse().unwrap(),
            "http://127.0.0.1:9000",
            "/tmp/gw",
        )
    }

    /// Every key set, on loopback (the deployment example is docs/examples/gateway.yaml,
    /// tested in tests/integration/config_table.rs).
    const FULL_YAML: &str = r#"
listen: "127.0.0.1:8080"
public_base_url: "http://127.0.0.1:8080"
state_dir: "/var/lib/ibkr-gateway"
instance_id: "remote-1"
log_format: json
sidecar:
  enabled: true
  remote_relay_url: "ws://127.0.0.1:8080/relay"
  heartbeat_interval_seconds: 15
  heartbeat_timeout_seconds: 45
  session_ttl_seconds: 3600
  request_timeout_seconds: 30
  max_in_flight_per_sidecar: 32
  handshake_timeout_seconds: 10
safety:
  sidecar_enabled: true
  remote_mcp_enabled: true
remote_mcp:
  enabled: true
  resource: "http://127.0.0.1:8080/mcp"
  issuer: "https://issuer.example"
  jwks_url: "https://issuer.example/jwks.json"
  audiences: ["http://127.0.0.1:8080/mcp"]
  allowed_scopes: ["ibkr:health:read", "ibkr:accounts:read"]
  challenge_scopes: ["ibkr:health:read"]
  allowed_algorithms: [RS256, ES256, EdDSA]
  clock_skew_seconds: 60
  require_typ_at_jwt: false
  max_connections: 1024
  max_connections_per_peer: 64
  max_relay_connections: 1024
  first_byte_timeout_seconds: 5
  header_read_timeout_seconds: 75
  max_sessions_per_user: 64
  max_sessions: 10000
  session_idle_timeout_seconds: 300
  rate_limit_per_subject_per_minute: 600
  rate_limit_per_peer_per_minute: 1200
  token_id_hmac_secret_env: "IBKR_GATEWAY_TOKEN_ID_HMAC_SECRET"
  allowed_hosts: ["127.0.0.1:8080", "gateway.internal"]
  allowed_origins: ["http://localhost:6274"]
  trusted_proxies: ["127.0.0.1", "10.0.0.0/8", "fd00::/8"]
pairing:
  code_ttl_seconds: 600
  max_attempts_per_code: 5
metrics:
  bearer_token_env: "IBKR_GATEWAY_METRICS_TOKEN"
audit:
  retention_days: 365
  batch_window_ms: 5
  batch_max_records: 64
"#;

    #[test]
    fn a_complete_loopback_file_loads() {
        let config = GatewayConfiguration::from_yaml_str(FULL_YAML).unwrap();
        let resolved = config.resolve().unwrap();
        assert_eq!(resolved.resource, "http://127.0.0.1:8080/mcp");
        assert_eq!(
            resolved.resource_metadata_url,
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(resolved.allowed_scopes.len(), 2);
        assert_eq!(resolved.challenge_scopes, vec!["ibkr:health:read"]);
        // The file opts out of the RFC 9068 `typ` check; left out, it is on.
        assert!(!config.remote_mcp.require_typ_at_jwt);
        let yaml = FULL_YAML.replace("  require_typ_at_jwt: false\n", "");
        let config = GatewayConfiguration::from_yaml_str(&yaml).unwrap();
        assert!(config.remote_mcp.require_typ_at_jwt);
        assert!(dev().remote_mcp.require_typ_at_jwt);
        assert!(dev().validate().is_ok());
    }

    #[test]
    fn edge_keys_are_normalized_and_checked() {
        let config = GatewayConfiguration::from_yaml_str(FULL_YAML).unwrap();
        let resolved = config.resolve().unwrap();
        assert_eq!(
            resolved
                .allowed_hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["127.0.0.1:8080", "gateway.internal"]
        );
        assert_eq!(
            resolved.allowed_origins,
            vec!["http://127.0.0.1:8080", "http://localhost:6274"]
        );
        assert_eq!(resolved.trusted_proxies.len(), 3);
        assert_eq!(resolved.public_origin, "http://127.0.0.1:8080");

        // Defaults: the public host only, the public origin only, no trusted proxies.
        let resolved = dev().resolve().unwrap();
        assert_eq!(
            resolved
                .allowed_hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["127.0.0.1"]
        );
        assert_eq!(resolved.allowed_origins, vec!["http://127.0.0.1:8080"]);
        assert!(resolved.trusted_proxies.is_empty());

        let refused = |edit: fn(&mut GatewayConfiguration)| {
            let mut config = dev();
            edit(&mut config);
            config.validate().unwrap_err().key
        };
        assert_eq!(
            refused(|c| c.remote_mcp.allowed_hosts = Some(vec![])),
            "remote_mcp.allowed_hosts"
        );
        assert_eq!(
            refused(|c| c.remote_mcp.allowed_hosts =
                Some(vec!["ok.example".into(), "https://bad.example".into()])),
            "remote_mcp.allowed_hosts[1]"
        );
        assert_eq!(
            refused(|c| c.remote_mcp.allowed_origins = vec!["https://app.example/path".into()]),
            "remote_mcp.allowed_origins[0]"
        );
        assert_eq!(
            refused(|c| c.remote_mcp.trusted_proxies = vec!["10.0.0.1/8".into()]),
            "remote_mcp.trusted_proxies[0]"
        );
        assert_eq!(
            refused(|c| c.remote_mcp.trusted_proxies = vec!["proxy.internal".into()]),
            "remote_mcp.trusted_proxies[0]"
        );
        assert_eq!(
            refused(|c| c.metrics.bearer_token_env = Some("not a name".into())),
            "metrics.bearer_token_env"
        );
        // The shared store needs the name of the variable holding its connection string,
        // and only it may have one.
        assert_eq!(
            refused(|c| c.store.backend = StoreBackend::Postgres),
            "store.postgres_url_env"
        );
        assert_eq!(
            refused(|c| c.store.postgres_url_env = Some("IBKR_GATEWAY_DATABASE_URL".into())),
            "store.postgres_url_env"
        );
        assert_eq!(
            refused(|c| {
                c.store.backend = StoreBackend::Postgres;
                c.store.postgres_url_env = Some("postgres://user:secret@db/x".into());
            }),
            "store.postgres_url_env"
        );
        assert_eq!(
            refused(|c| {
                c.store.backend = StoreBackend::Postgres;
                c.store.postgres_url_env = Some("IBKR_GATEWAY_DATABASE_URL".into());
                c.store.postgres_max_connections = Some(0);
            }),
            "store.postgres_max_connections"
        );
        let mut shared = dev();
        shared.store.backend = StoreBackend::Postgres;
        shared.store.postgres_url_env = Some("IBKR_GATEWAY_UNSET_DATABASE_URL".into());
        shared.validate().unwrap();
        // At start, an unset variable is refused before anything is opened.
        assert_eq!(
            shared.store.postgres_options().unwrap_err().key,
            "store.postgres_url_env"
        );
        assert!(dev().store.postgres_options().unwrap().is_none());
        // Routing between replicas needs the shared store, a NATS URL, and a password with a
        // user (from one place only).
        let cluster = |url: &str| ClusterSection {
            nats_url: url.into(),
            nats_user: None,
            nats_password_env: None,
            nats_password_file: None,
        };
        let mut routed = shared.clone();
        routed.cluster = Some(cluster("nats://127.0.0.1:4222, tls://nats.internal:4222"));
        routed.validate().unwrap();
        let mut alone = dev();
        alone.cluster = Some(cluster("nats://127.0.0.1:4222"));
        assert_eq!(alone.validate().unwrap_err().key, "cluster");
        for (edit, key) in [
            (cluster("http://127.0.0.1:4222"), "cluster.nats_url"),
            (
                ClusterSection {
                    nats_user: Some("ibkr".into()),
                    ..cluster("nats://127.0.0.1:4222")
                },
                "cluster.nats_password_env",
            ),
            (
                ClusterSection {
                    nats_password_file: Some("/run/secrets/nats".into()),
                    ..cluster("nats://127.0.0.1:4222")
                },
                "cluster.nats_user",
            ),
            (
                ClusterSection {
                    nats_user: Some("ibkr".into()),
                    nats_password_env: Some("IBKR_GATEWAY_NATS_PASSWORD".into()),
                    nats_password_file: Some("/run/secrets/nats".into()),
                    ..cluster("nats://127.0.0.1:4222")
                },
                "cluster.nats_password_file",
            ),
        ] {
            let mut config = shared.clone();
            config.cluster = Some(edit);
            assert_eq!(config.validate().unwrap_err().key, key);
        }
        // A password file that is not there is refused at start, naming the key.
        let mut missing = shared.clone();
        missing.cluster = Some(ClusterSection {
            nats_user: Some("ibkr".into()),
            nats_password_file: Some("/nonexistent/nats-password".into()),
            ..cluster("nats://127.0.0.1:4222")
        });
        missing.validate().unwrap();
        assert_eq!(
            missing.cluster_settings().unwrap_err().key,
            "cluster.nats_password_file"
        );
        // Tokens must carry the canonical resource: no other audience may be configured.
        assert_eq!(
            refused(|c| c.remote_mcp.audiences = Some(vec![
                "http://127.0.0.1:8080/mcp".into(),
                "https://other.example/api".into()
            ])),
            "remote_mcp.audiences"
        );
        let mut config = dev();
        config.remote_mcp.audiences = Some(vec!["http://127.0.0.1:8080/mcp/".into()]);
        assert_eq!(
            config.resolve().unwrap().audiences,
            vec!["http://127.0.0.1:8080/mcp"]
        );
    }

    #[test]
    fn the_audit_batching_keys_load_default_and_are_bounded() {
        let config = GatewayConfiguration::from_yaml_str(FULL_YAML).unwrap();
        let batching = config.audit.batching();
        assert_eq!(batching.window, std::time::Duration::from_millis(5));
        assert_eq!(batching.max_records, 64);
        assert_eq!(
            AuditSection::default().batching(),
            crate::audit::Batching::default()
        );
        let yaml = FULL_YAML.replace("  batch_window_ms: 5\n", "");
        let config = GatewayConfiguration::from_yaml_str(&yaml).unwrap();
        assert_eq!(config.audit.batch_window_ms, 2);
        for (from, to, key) in [
            (
                "batch_window_ms: 5",
                "batch_window_ms: 101",
                "audit.batch_window_ms",
            ),
            (
                "batch_max_records: 64",
                "batch_max_records: 0",
                "audit.batch_max_records",
            ),
            (
                "batch_max_records: 64",
                "batch_max_records: 4097",
                "audit.batch_max_records",
            ),
        ] {
            let config = GatewayConfiguration::from_yaml_str(&FULL_YAML.replace(from, to));
            let error = config.and_then(|config| config.validate()).unwrap_err();
            assert_eq!(error.key(), key, "{error}");
        }
        let yaml = FULL_YAML.replace("batch_window_ms: 5", "batch_window_ms: 0");
        let config = GatewayConfiguration::from_yaml_str(&yaml).unwrap();
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let yaml = FULL_YAML.replace("  session_ttl_seconds: 3600", "  session_tll_seconds: 3600");
        let error = GatewayConfiguration::from_yaml_str(&yaml).unwrap_err();
        assert_eq!(error.code, ErrorCode::ConfigInvalid);
        assert!(error.key.starts_with("sidecar"), "{error}");
        let yaml = FULL_YAML.replace(
            "allowed_algorithms: [RS256, ES256, EdDSA]",
            "allowed_algorithms: [HS256]",
        );
        let error = GatewayConfiguration::from_yaml_str(&yaml).unwrap_err();
        assert!(
            error.key.starts_with("remote_mcp.allowed_algorithms"),
            "{error}"
        );
    }

    #[test]
    fn the_challenge_asks_for_the_read_scopes_unless_configured() {
        let challenge = |allowed: Option<&[&str]>, configured: Option<&[&str]>| {
            let list = |scopes: &[&str]| scopes.iter().map(|s| s.to_string()).collect();
            let mut config = dev();
            config.remote_mcp.allowed_scopes = allowed.map(list);
            config.remote_mcp.challenge_scopes = configured.map(list);
            config.resolve().unwrap().challenge_scopes
        };
        // Default: the catalog's read-only scopes, in catalog order.
        assert_eq!(challenge(None, None), scopes::READ_ONLY);
        // Only those the deployment honours.
        assert_eq!(
            challenge(
                Some(&[
                    "ibkr:orders:write",
                    "ibkr:marketdata:read",
                    "ibkr:health:read"
                ]),
                None
            ),
            ["ibkr:health:read", "ibkr:marketdata:read"]
        );
        // None of them read-only: the challenge names no scope.
        assert!(challenge(Some(&["ibkr:orders:preview"]), None).is_empty());
        // Configured: catalog order, once each, whatever order and repeats the file has.
        assert_eq!(
            challenge(
                None,
                Some(&[
                    "ibkr:orders:preview",
                    "ibkr:health:read",
                    "ibkr:orders:preview"
                ])
            ),
            ["ibkr:health:read", "ibkr:orders:preview"]
        );

        let refused = |edit: fn(&mut GatewayConfiguration)| {
            let mut config = dev();
            edit(&mut config);
            let error = config.validate().unwrap_err();
            assert_eq!(error.code, ErrorCode::ConfigInvalid);
            assert_eq!(error.key, "remote_mcp.challenge_scopes");
            error.message
        };
        assert!(refused(|c| c.remote_mcp.challenge_scopes = Some(vec![])).contains("at least"));
        assert!(
            refused(|c| c.remote_mcp.challenge_scopes = Some(vec!["ibkr:everything".into()]))
                .contains("unknown scope")
        );
        assert!(
            refused(|c| {
                c.remote_mcp.allowed_scopes = Some(vec!["ibkr:health:read".into()]);
                c.remote_mcp.challenge_scopes = Some(vec!["ibkr:accounts:read".into()]);
            })
            .contains("allowed_scopes")
        );
    }

    #[test]
    fn the_client_portal_url_is_optional_and_ignored() {
        // Left out (as in every current file): loads, nothing to warn about.
        let config = GatewayConfiguration::from_yaml_str(FULL_YAML).unwrap();
        assert_eq!(config.sidecar.local_client_portal_base_url, None);
        assert!(config.ignored_keys().is_empty());
        assert!(dev().ignored_keys().is_empty());
        // A file from when it was required still loads, whatever it says; it is named for
        // the start-up warning and not written back out.
        for value in ["\"https://localhost:5000/v1/api\"", "\"localhost:5000\""] {
            let yaml = FULL_YAML.replace(
                "  heartbeat_interval_seconds: 15\n",
                &format!(
                    "  local_client_portal_base_url: {value}\n  heartbeat_interval_seconds: 15\n"
                ),
            );
            let config = GatewayConfiguration::from_yaml_str(&yaml).unwrap();
            let ignored: Vec<&str> = config.ignored_keys().iter().map(|(key, _)| *key).collect();
            assert_eq!(ignored, vec!["sidecar.local_client_portal_base_url"]);
            assert_eq!(
                config.resolve().unwrap(),
                GatewayConfiguration::from_yaml_str(FULL_YAML)
                    .unwrap()
                    .resolve()
                    .unwrap()
            );
        }
        let written = serde_yaml_ng::to_string(&dev()).unwrap();
        assert!(
            !written.contains("local_client_portal_base_url"),
            "{written}"
        );
    }

    #[test]
    fn heartbeat_timeout_must_exceed_interval() {
        let mut config = dev();
        config.sidecar.heartbeat_timeout_seconds = config.sidecar.heartbeat_interval_seconds;
        let error = config.validate().unwrap_err();
        assert_eq!(error.code, ErrorCode::ConfigInvalid);
        assert_eq!(error.key, "sidecar.heartbeat_timeout_seconds");
        assert!(error.message.contains("greater than"));
    }

    #[test]
    fn disagreeing_sidecar_flags_are_forbidden() {
        let mut config = dev();
        config.safety.sidecar_enabled = false;
        let error = config.validate().unwrap_err();
        assert_eq!(error.code, ErrorCode::ConfigSidecarForbidden);
        assert_eq!(error.key, "safety.sidecar_enabled");

        let mut config = dev();
        config.sidecar.enabled = false;
        assert_eq!(config.validate().unwrap_err().key, "sidecar.enabled");

        // Both off is no deployment of this gateway either: it only relays.
        let mut config = dev();
        config.sidecar.enabled = false;
        config.safety.sidecar_enabled = false;
        let error = config.validate().unwrap_err();
        assert_eq!(error.code, ErrorCode::ConfigSidecarForbidden);
        assert_eq!(error.key, "sidecar.enabled");
        assert!(error.message.contains("both are off"), "{error}");
    }

    #[test]
    fn missing_yaml_fields_are_named_with_their_section() {
        assert_eq!(serde_error_key(".", "missing field `listen`"), "listen");
        assert_eq!(
            serde_error_key("sidecar", "missing field `enabled` at line 3"),
            "sidecar.enabled"
        );
        assert_eq!(
            serde_error_key(
                "remote_mcp.allowed_algorithms[0]",
                "unknown variant `HS256`"
            ),
            "remote_mcp.allowed_algorithms[0]"
        );
        let error = GatewayConfiguration::from_yaml_str(
            &FULL_YAML.replace("listen: \"127.0.0.1:8080\"\n", ""),
        )
        .unwrap_err();
        assert_eq!(error.key, "listen");
    }

    #[test]
    fn relaying_without_remote_oauth_is_forbidden() {
        let mut config = dev();
        config.remote_mcp.enabled = false;
        let error = config.validate().unwrap_err();
        assert_eq!(error.code, ErrorCode::ConfigSidecarForbidden);
        assert_eq!(error.key, "remote_mcp.enabled");

        let mut config = dev();
        config.safety.remote_mcp_enabled = false;
        let error = config.validate().unwrap_err();
        assert_eq!(error.code, ErrorCode::ConfigSidecarForbidden);
        assert_eq!(error.key, "safety.remote_mcp_enabled");
    }

    #[test]
    fn missing_urls_and_bad_values_are_invalid() {
        let mut config = dev();
        config.sidecar.remote_relay_url = None;
        assert_eq!(
            config.validate().unwrap_err().key,
            "sidecar.remote_relay_url"
        );

        let mut config = dev();
        config.remote_mcp.issuer = Some("http://issuer.example".into());
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "remote_mcp.issuer");
        assert!(error.message.contains("https"));

        let mut config = dev();
        config.remote_mcp.issuer = Some("not a url".into());
        assert_eq!(config.validate().unwrap_err().key, "remote_mcp.issuer");

        let mut config = dev();
        config.remote_mcp.clock_skew_seconds = 301;
        assert_eq!(
            config.validate().unwrap_err().key,
            "remote_mcp.clock_skew_seconds"
        );

        let mut config = dev();
        config.remote_mcp.audiences = Some(vec!["https://other.example/mcp".into()]);
        assert_eq!(config.validate().unwrap_err().key, "remote_mcp.audiences");

        let mut config = dev();
        config.remote_mcp.resource = Some("http://127.0.0.1:8080/other".into());
        assert_eq!(config.validate().unwrap_err().key, "remote_mcp.resource");

        let mut config = dev();
        config.listen = "nowhere".into();
        assert_eq!(config.validate().unwrap_err().key, "listen");
    }

    #[test]
    fn https_is_required_off_loopback_and_http_is_fine_on_it() {
        let mut config = dev();
        config.remote_mcp.jwks_url = Some("http://localhost:9000/jwks.json".into());
        assert!(config.validate().is_ok());
        config.remote_mcp.jwks_url = Some("http://[::1]:9000/jwks.json".into());
        assert!(config.validate().is_ok());
        config.remote_mcp.jwks_url = Some("http://10.0.0.1/jwks.json".into());
        assert_eq!(config.validate().unwrap_err().key, "remote_mcp.jwks_url");
    }

    #[test]
    fn port_zero_is_substituted_after_binding() {
        let config = GatewayConfiguration::for_dev(
            "127.0.0.1:0".parse().unwrap(),
            "http://127.0.0.1:9000",
            "/tmp/gw",
        );
        assert!(config.validate().is_ok());
        let bound = config.with_bound_port(4567);
        let resolved = bound.resolve().unwrap();
        assert_eq!(resolved.resource, "http://127.0.0.1:4567/mcp");
        assert_eq!(
            resolved.relay_url.as_deref(),
            Some("ws://127.0.0.1:4567/relay")
        );
    }
}
