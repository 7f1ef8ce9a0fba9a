//! The sidecar's YAML configuration (`ibkr-agent sidecar run --config <yaml>`, or
//! `<state_dir>/sidecar.yaml`) and the programmatic [`SidecarConfig`].
//!
//! Fail closed, in the order of the seed's checklist:
//!
//! 1. `sidecar.enabled: true` and `safety.sidecar_enabled: true`, both stated explicitly;
//!    missing, false, or disagreeing -> CONFIG_SIDECAR_FORBIDDEN;
//! 2. `sidecar.remote_relay_url` (`wss://`, or `ws://` to a loopback host) and
//!    `sidecar.local_client_portal_base_url` (`https://`, or `http://` to a loopback host),
//!    both stated; missing or bad -> CONFIG_INVALID;
//! 3. `sidecar.heartbeat_interval_seconds` and `sidecar.heartbeat_timeout_seconds`, both stated,
//!    timeout greater than interval -> else CONFIG_INVALID.
//!
//! The remaining keys are optional with documented defaults. Unknown keys are refused (a typo
//! must not silently leave a safety switch at its default). Every error names the key path.
//! The YAML path and the programmatic path end in the same [`SidecarConfig::validate`]; the
//! CLI runs it before anything is dialed. See `docs/configuration-sidecar.md`.

use crate::alerts::AlertsSection;
use crate::error::SidecarError;
use crate::net::{self, UrlKind};
use serde::{Deserialize, Serialize};
use shared_safety::ErrorCode;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// The daemon's configuration file inside the state directory, read by `sidecar run` when no
/// `--config` is given and written by `sidecar pair` when absent.
pub const CONFIG_FILE: &str = "sidecar.yaml";

/// The Client Portal Gateway's own default address on the laptop.
pub const DEFAULT_CLIENT_PORTAL_BASE_URL: &str = "https://localhost:5000/v1/api";

/// Defaults of the optional keys (and the values `sidecar pair` writes for the required
/// heartbeat keys).
pub const DEFAULT_HEARTBEAT_INTERVAL_SECONDS: u64 = 15;
pub const DEFAULT_HEARTBEAT_TIMEOUT_SECONDS: u64 = 45;
/// The gateway's default `sidecar.max_in_flight_per_sidecar` is the same: the two halves agree
/// out of the box, and the gateway never sends more than the sidecar announces at the handshake.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 32;
pub const DEFAULT_RECONNECT_INITIAL_DELAY_MS: u64 = 500;
pub const DEFAULT_RECONNECT_MAX_DELAY_MS: u64 = 30_000;
pub const DEFAULT_TICKLE_INTERVAL_SECONDS: u64 = 60;
/// Shortest keep-alive interval: IBKR paces `/tickle` at one request per second, and each round
/// also asks `auth/status`.
pub const MIN_TICKLE_INTERVAL_SECONDS: u64 = 2;
/// How long one request to the Client Portal Gateway may take (connecting included).
pub const DEFAULT_CLIENT_PORTAL_TIMEOUT_SECONDS: u64 = 10;
/// Longest `client_portal_timeout_seconds` accepted: a relayed call waits 30 s by default, and
/// one tool may need several CPGW requests.
pub const MAX_CLIENT_PORTAL_TIMEOUT_SECONDS: u64 = 60;
/// How old a snapshot quote may be when a read tool reuses it instead of asking CPGW again.
pub const DEFAULT_QUOTE_MAX_AGE_MS: u64 = 1000;
/// Longest `quote_max_age_ms` accepted: older prices would mislead more than they save.
pub const MAX_QUOTE_MAX_AGE_MS: u64 = 10_000;

/// Upper bound for `max_concurrent_requests`: the relay is a personal channel, and each request
/// holds a CPGW connection.
pub const MAX_CONCURRENT_REQUESTS_LIMIT: usize = 256;

/// Largest heartbeat timeout accepted (one hour).
const MAX_HEARTBEAT_TIMEOUT_SECONDS: u64 = 3600;

/// Largest backoff accepted (one hour).
const MAX_RECONNECT_DELAY_MS: u64 = 3_600_000;

/// The validated configuration.
///
/// Programmatic use: [`SidecarConfig::default`] is a *disabled* configuration with no URLs, so
/// a caller must set, at least, `sidecar.enabled = true`, `safety.sidecar_enabled = true`,
/// `sidecar.remote_relay_url = Some(..)` and `sidecar.local_client_portal_base_url`; the
/// heartbeat and the other keys default to valid values. [`SidecarConfig::validate`] (run by
/// [`crate::run_daemon`]) refuses anything else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarConfig {
    pub sidecar: SidecarSection,
    pub safety: SafetySection,
    /// Optional session alerts (webhook); see [`crate::alerts`].
    #[serde(default)]
    pub alerts: Option<AlertsSection>,
    /// Order guards and posture; see [`crate::trading::policy::TradingSection`].
    #[serde(default)]
    pub trading: crate::trading::policy::TradingSection,
    /// The owner's console on loopback; see [`crate::console`].
    #[serde(default)]
    pub console: crate::console::ConsoleSection,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarSection {
    /// Feature switch; must be true (and agree with `safety.sidecar_enabled`).
    pub enabled: bool,
    /// The gateway's relay websocket, dialed as is (`ws://` only to loopback hosts). Required.
    pub remote_relay_url: Option<String>,
    /// The local Client Portal Gateway, e.g. `https://localhost:5000/v1/api`. Required (empty
    /// means not set).
    pub local_client_portal_base_url: String,
    pub heartbeat_interval_seconds: u64,
    /// Must be greater than `heartbeat_interval_seconds`.
    pub heartbeat_timeout_seconds: u64,
    pub max_concurrent_requests: usize,
    pub reconnect_initial_delay_ms: u64,
    pub reconnect_max_delay_ms: u64,
    pub tickle_interval_seconds: u64,
    /// How long one CPGW request may take, connecting included, before it counts as failed
    /// (for an order: an unknown outcome once the request may have been sent).
    #[serde(default = "default_client_portal_timeout_seconds")]
    pub client_portal_timeout_seconds: u64,
    /// How old a snapshot quote `ibkr_quote` and `ibkr_quotes` may reuse is (0: never reuse;
    /// calls for the same contract at the same moment still share one CPGW request). Order
    /// guards always ask CPGW.
    #[serde(default = "default_quote_max_age_ms")]
    pub quote_max_age_ms: u64,
}

fn default_client_portal_timeout_seconds() -> u64 {
    DEFAULT_CLIENT_PORTAL_TIMEOUT_SECONDS
}

fn default_quote_max_age_ms() -> u64 {
    DEFAULT_QUOTE_MAX_AGE_MS
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetySection {
    /// Independent safety switch; must be true (and agree with `sidecar.enabled`).
    pub sidecar_enabled: bool,
}

impl Default for SidecarSection {
    /// Relay off, no URLs: not a runnable configuration until the caller says otherwise.
    fn default() -> Self {
        SidecarSection {
            enabled: false,
            remote_relay_url: None,
            local_client_portal_base_url: String::new(),
            heartbeat_interval_seconds: DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
            heartbeat_timeout_seconds: DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            reconnect_initial_delay_ms: DEFAULT_RECONNECT_INITIAL_DELAY_MS,
            reconnect_max_delay_ms: DEFAULT_RECONNECT_MAX_DELAY_MS,
            tickle_interval_seconds: DEFAULT_TICKLE_INTERVAL_SECONDS,
            client_portal_timeout_seconds: DEFAULT_CLIENT_PORTAL_TIMEOUT_SECONDS,
            quote_max_age_ms: DEFAULT_QUOTE_MAX_AGE_MS,
        }
    }
}

// ---- the YAML file: every key optional here, presence checked explicitly --------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    sidecar: Option<FileSidecar>,
    safety: Option<FileSafety>,
    alerts: Option<AlertsSection>,
    trading: Option<crate::trading::policy::TradingSection>,
    console: Option<crate::console::ConsoleSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSidecar {
    enabled: Option<bool>,
    remote_relay_url: Option<String>,
    local_client_portal_base_url: Option<String>,
    heartbeat_interval_seconds: Option<u64>,
    heartbeat_timeout_seconds: Option<u64>,
    max_concurrent_requests: Option<usize>,
    reconnect_initial_delay_ms: Option<u64>,
    reconnect_max_delay_ms: Option<u64>,
    tickle_interval_seconds: Option<u64>,
    client_portal_timeout_seconds: Option<u64>,
    quote_max_age_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSafety {
    sidecar_enabled: Option<bool>,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> SidecarError {
    SidecarError::new(ErrorCode::ConfigInvalid, format!("({key} {why})"))
}

fn forbidden(detail: impl Into<String>) -> SidecarError {
    SidecarError::new(ErrorCode::ConfigSidecarForbidden, detail)
}

fn missing(key: &str, hint: &str) -> SidecarError {
    invalid(key, format!("is missing: {hint}"))
}

const ENABLE_HINT: &str =
    "set both sidecar.enabled: true and safety.sidecar_enabled: true to allow the relay";
const RELAY_URL_HINT: &str = "set it to the relay URL `ibkr-agent sidecar pair` printed, e.g. \
    wss://gateway.example.com/relay (ws:// only to a loopback host)";
const CPGW_URL_HINT: &str = "set it to the Client Portal Gateway on this laptop, e.g. \
    https://localhost:5000/v1/api";
const INTERVAL_HINT: &str = "state the heartbeat interval explicitly, e.g. 15";
const TIMEOUT_HINT: &str = "state the heartbeat timeout explicitly, greater than \
    sidecar.heartbeat_interval_seconds, e.g. 45";

/// Both switches must be true; the error names the key to change.
fn check_switches(enabled: bool, safety_enabled: bool) -> Result<(), SidecarError> {
    match (enabled, safety_enabled) {
        (true, true) => Ok(()),
        (false, false) => Err(forbidden(format!(
            "(sidecar.enabled and safety.sidecar_enabled are false: {ENABLE_HINT})"
        ))),
        (false, true) => Err(forbidden(format!(
            "(sidecar.enabled is false but safety.sidecar_enabled is true: the two switches \
             must agree; {ENABLE_HINT})"
        ))),
        (true, false) => Err(forbidden(format!(
            "(safety.sidecar_enabled is false but sidecar.enabled is true: the two switches \
             must agree; {ENABLE_HINT})"
        ))),
    }
}

impl FileConfig {
    /// Presence checks in the checklist's order, then conversion.
    fn into_config(self) -> Result<SidecarConfig, SidecarError> {
        let sidecar = self.sidecar.unwrap_or_default();
        let safety = self.safety.unwrap_or_default();
        let enabled = sidecar
            .enabled
            .ok_or_else(|| forbidden(format!("(sidecar.enabled is missing: {ENABLE_HINT})")))?;
        let safety_enabled = safety.sidecar_enabled.ok_or_else(|| {
            forbidden(format!(
                "(safety.sidecar_enabled is missing: {ENABLE_HINT})"
            ))
        })?;
        check_switches(enabled, safety_enabled)?;
        let remote_relay_url = sidecar
            .remote_relay_url
            .ok_or_else(|| missing("sidecar.remote_relay_url", RELAY_URL_HINT))?;
        let local_client_portal_base_url = sidecar
            .local_client_portal_base_url
            .ok_or_else(|| missing("sidecar.local_client_portal_base_url", CPGW_URL_HINT))?;
        let heartbeat_interval_seconds = sidecar
            .heartbeat_interval_seconds
            .ok_or_else(|| missing("sidecar.heartbeat_interval_seconds", INTERVAL_HINT))?;
        let heartbeat_timeout_seconds = sidecar
            .heartbeat_timeout_seconds
            .ok_or_else(|| missing("sidecar.heartbeat_timeout_seconds", TIMEOUT_HINT))?;
        Ok(SidecarConfig {
            sidecar: SidecarSection {
                enabled,
                remote_relay_url: Some(remote_relay_url),
                local_client_portal_base_url,
                heartbeat_interval_seconds,
                heartbeat_timeout_seconds,
                max_concurrent_requests: sidecar
                    .max_concurrent_requests
                    .unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS),
                reconnect_initial_delay_ms: sidecar
                    .reconnect_initial_delay_ms
                    .unwrap_or(DEFAULT_RECONNECT_INITIAL_DELAY_MS),
                reconnect_max_delay_ms: sidecar
                    .reconnect_max_delay_ms
                    .unwrap_or(DEFAULT_RECONNECT_MAX_DELAY_MS),
                tickle_interval_seconds: sidecar
                    .tickle_interval_seconds
                    .unwrap_or(DEFAULT_TICKLE_INTERVAL_SECONDS),
                client_portal_timeout_seconds: sidecar
                    .client_portal_timeout_seconds
                    .unwrap_or(DEFAULT_CLIENT_PORTAL_TIMEOUT_SECONDS),
                quote_max_age_ms: sidecar.quote_max_age_ms.unwrap_or(DEFAULT_QUOTE_MAX_AGE_MS),
            },
            safety: SafetySection {
                sidecar_enabled: safety_enabled,
            },
            alerts: self.alerts,
            trading: self.trading.unwrap_or_default(),
            console: self.console.unwrap_or_default(),
        })
    }
}

impl SidecarConfig {
    /// Parses YAML and validates it: unknown keys, wrong types, missing checklist items and bad
    /// values are refused, naming the key. Only a configuration that passes
    /// [`SidecarConfig::validate`] is returned.
    pub fn from_yaml_str(text: &str) -> Result<Self, SidecarError> {
        // An empty document parses as "nothing stated", which the checklist refuses.
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|error| {
                // serde_yaml_ng names the offending key and position, not secret values.
                SidecarError::new(
                    ErrorCode::ConfigInvalid,
                    format!("({error}; see docs/configuration-sidecar.md for the keys)"),
                )
            })?
        };
        let config = file.into_config()?;
        config.validate()?;
        Ok(config)
    }

    /// The whole configuration as YAML that [`SidecarConfig::from_yaml_str`] reads back as is
    /// (every checklist item stated): for writing a configuration built in code to a file.
    pub fn to_yaml(&self) -> Result<String, SidecarError> {
        serde_yaml_ng::to_string(self)
            .map_err(|_| SidecarError::internal("(cannot encode the configuration as YAML)"))
    }

    /// Reads, parses and validates a YAML file.
    pub fn load(path: &Path) -> Result<Self, SidecarError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            SidecarError::new(
                ErrorCode::ConfigInvalid,
                format!(
                    "(cannot read the configuration file: {}; pass an existing file with --config)",
                    error.kind()
                ),
            )
        })?;
        Self::from_yaml_str(&text)
    }

    /// The configuration for the daemon: `--config` if given, else `<state_dir>/sidecar.yaml`;
    /// neither -> CONFIG_INVALID saying how to get one.
    pub fn load_for_state_dir(
        explicit: Option<&Path>,
        state_dir: &Path,
    ) -> Result<Self, SidecarError> {
        if let Some(path) = explicit {
            return Self::load(path);
        }
        let path = state_dir.join(CONFIG_FILE);
        if !path.exists() {
            return Err(SidecarError::config(format!(
                "(no configuration: pass --config <file>, or run `ibkr-agent sidecar pair`, which \
                 writes {CONFIG_FILE} into the state directory; see docs/configuration-sidecar.md)"
            )));
        }
        Self::load(&path)
    }

    /// The one check both paths go through. Fails closed, naming the key.
    pub fn validate(&self) -> Result<(), SidecarError> {
        check_switches(self.sidecar.enabled, self.safety.sidecar_enabled)?;
        if let Some(alerts) = &self.alerts {
            alerts.validate()?;
        }
        self.trading.validate()?;
        self.console.validate()?;
        let s = &self.sidecar;
        let relay = s
            .remote_relay_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
            .ok_or_else(|| missing("sidecar.remote_relay_url", RELAY_URL_HINT))?;
        net::checked_url(relay, UrlKind::WebSocket)
            .map_err(|why| invalid("sidecar.remote_relay_url", why))?;
        if s.local_client_portal_base_url.trim().is_empty() {
            return Err(missing(
                "sidecar.local_client_portal_base_url",
                CPGW_URL_HINT,
            ));
        }
        net::checked_url(&s.local_client_portal_base_url, UrlKind::Http)
            .map_err(|why| invalid("sidecar.local_client_portal_base_url", why))?;
        if s.heartbeat_interval_seconds == 0 {
            return Err(invalid(
                "sidecar.heartbeat_interval_seconds",
                "must be greater than 0",
            ));
        }
        if s.heartbeat_timeout_seconds <= s.heartbeat_interval_seconds {
            return Err(invalid(
                "sidecar.heartbeat_timeout_seconds",
                "must be greater than sidecar.heartbeat_interval_seconds",
            ));
        }
        if s.heartbeat_timeout_seconds > MAX_HEARTBEAT_TIMEOUT_SECONDS {
            return Err(invalid(
                "sidecar.heartbeat_timeout_seconds",
                format!("must be at most {MAX_HEARTBEAT_TIMEOUT_SECONDS}"),
            ));
        }
        if s.max_concurrent_requests == 0
            || s.max_concurrent_requests > MAX_CONCURRENT_REQUESTS_LIMIT
        {
            return Err(invalid(
                "sidecar.max_concurrent_requests",
                format!("must be between 1 and {MAX_CONCURRENT_REQUESTS_LIMIT}"),
            ));
        }
        if s.reconnect_initial_delay_ms == 0 {
            return Err(invalid(
                "sidecar.reconnect_initial_delay_ms",
                "must be greater than 0",
            ));
        }
        if s.reconnect_max_delay_ms < s.reconnect_initial_delay_ms
            || s.reconnect_max_delay_ms > MAX_RECONNECT_DELAY_MS
        {
            return Err(invalid(
                "sidecar.reconnect_max_delay_ms",
                format!(
                    "must be at least sidecar.reconnect_initial_delay_ms and at most {MAX_RECONNECT_DELAY_MS}"
                ),
            ));
        }
        if !(MIN_TICKLE_INTERVAL_SECONDS..=300).contains(&s.tickle_interval_seconds) {
            // CPGW drops an idle session after about six minutes; IBKR paces /tickle at one
            // request per second, and each keep-alive round also asks auth/status.
            return Err(invalid(
                "sidecar.tickle_interval_seconds",
                format!("must be between {MIN_TICKLE_INTERVAL_SECONDS} and 300"),
            ));
        }
        if !(1..=MAX_CLIENT_PORTAL_TIMEOUT_SECONDS).contains(&s.client_portal_timeout_seconds) {
            return Err(invalid(
                "sidecar.client_portal_timeout_seconds",
                format!("must be between 1 and {MAX_CLIENT_PORTAL_TIMEOUT_SECONDS}"),
            ));
        }
        if s.quote_max_age_ms > MAX_QUOTE_MAX_AGE_MS {
            return Err(invalid(
                "sidecar.quote_max_age_ms",
                format!("must be between 0 and {MAX_QUOTE_MAX_AGE_MS}"),
            ));
        }
        Ok(())
    }

    /// The relay URL to dial (set after [`SidecarConfig::validate`] passed).
    pub fn relay_url(&self) -> Option<&str> {
        self.sidecar.remote_relay_url.as_deref()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.sidecar.heartbeat_interval_seconds)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.sidecar.heartbeat_timeout_seconds)
    }

    pub fn tickle_interval(&self) -> Duration {
        Duration::from_secs(self.sidecar.tickle_interval_seconds)
    }

    /// How long one CPGW request may take.
    pub fn client_portal_timeout(&self) -> Duration {
        Duration::from_secs(self.sidecar.client_portal_timeout_seconds)
    }

    /// How old a quote the read tools reuse may be (zero: never reused).
    pub fn quote_max_age(&self) -> Duration {
        Duration::from_millis(self.sidecar.quote_max_age_ms)
    }

    pub fn reconnect_initial_delay(&self) -> Duration {
        Duration::from_millis(self.sidecar.reconnect_initial_delay_ms)
    }

    pub fn reconnect_max_delay(&self) -> Duration {
        Duration::from_millis(self.sidecar.reconnect_max_delay_ms)
    }
}

/// The complete configuration `sidecar pair` writes: both switches on, the pairing's relay URL,
/// the CPGW default and the default heartbeat, every checklist item stated.
pub fn default_config_yaml(remote_relay_url: &str) -> String {
    format!(
        "# ibkr-agent sidecar configuration, written by `ibkr-agent sidecar pair`.\n\
         # Every key is described in docs/configuration-sidecar.md. The relay runs only when\n\
         # both switches are true; the checklist items below must all be stated.\n\
         sidecar:\n\
         \x20 enabled: true\n\
         \x20 remote_relay_url: \"{remote_relay_url}\"\n\
         \x20 local_client_portal_base_url: \"{DEFAULT_CLIENT_PORTAL_BASE_URL}\"\n\
         \x20 heartbeat_interval_seconds: {DEFAULT_HEARTBEAT_INTERVAL_SECONDS}\n\
         \x20 heartbeat_timeout_seconds: {DEFAULT_HEARTBEAT_TIMEOUT_SECONDS}\n\
         \x20 max_concurrent_requests: {DEFAULT_MAX_CONCURRENT_REQUESTS}\n\
         \x20 reconnect_initial_delay_ms: {DEFAULT_RECONNECT_INITIAL_DELAY_MS}\n\
         \x20 reconnect_max_delay_ms: {DEFAULT_RECONNECT_MAX_DELAY_MS}\n\
         \x20 tickle_interval_seconds: {DEFAULT_TICKLE_INTERVAL_SECONDS}\n\
         \x20 client_portal_timeout_seconds: {DEFAULT_CLIENT_PORTAL_TIMEOUT_SECONDS}\n\
         \x20 quote_max_age_ms: {DEFAULT_QUOTE_MAX_AGE_MS}\n\
         safety:\n\
         \x20 sidecar_enabled: true\n"
    )
}

/// Writes `<state_dir>/sidecar.yaml` (mode 0600) for `remote_relay_url` unless the file already
/// exists. Returns whether it was written. The content is validated before it is written.
pub fn write_default_config_if_absent(
    state_dir: &Path,
    remote_relay_url: &str,
) -> Result<bool, SidecarError> {
    let text = default_config_yaml(remote_relay_url);
    SidecarConfig::from_yaml_str(&text)?;
    let path = state_dir.join(CONFIG_FILE);
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(error) => {
            return Err(SidecarError::state(format!(
                "(cannot create {CONFIG_FILE}: {})",
                error.kind()
            )));
        }
    };
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| {
            SidecarError::state(format!("(cannot write {CONFIG_FILE}: {})", error.kind()))
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FULL: &str = r#"
sidecar:
  enabled: true
  remote_relay_url: "ws://127.0.0.1:8080/relay"
  local_client_portal_base_url: "https://localhost:5000/v1/api"
  heartbeat_interval_seconds: 15
  heartbeat_timeout_seconds: 45
safety:
  sidecar_enabled: true
"#;

    fn valid() -> SidecarConfig {
        SidecarConfig::from_yaml_str(FULL).unwrap()
    }

    fn refusal(result: Result<SidecarConfig, SidecarError>) -> (ErrorCode, String) {
        let error = result.unwrap_err();
        (error.code(), error.body().message)
    }

    #[test]
    fn a_configuration_written_as_yaml_reads_back_the_same() {
        let mut config = SidecarConfig::from_yaml_str(FULL).unwrap();
        config.trading.account_ids = vec!["DU1234567".into()];
        config.trading.dry_run = false;
        config.trading.max_daily_value = Some("250".into());
        let text = config.to_yaml().unwrap();
        assert_eq!(
            SidecarConfig::from_yaml_str(&text).unwrap(),
            config,
            "{text}"
        );
    }

    #[test]
    fn minimal_checklist_parses_with_documented_defaults() {
        let config = valid();
        assert_eq!(config.relay_url(), Some("ws://127.0.0.1:8080/relay"));
        assert_eq!(config.sidecar.heartbeat_interval_seconds, 15);
        assert_eq!(config.sidecar.heartbeat_timeout_seconds, 45);
        assert_eq!(config.sidecar.max_concurrent_requests, 32);
        assert_eq!(config.sidecar.reconnect_initial_delay_ms, 500);
        assert_eq!(config.sidecar.reconnect_max_delay_ms, 30_000);
        assert_eq!(config.sidecar.tickle_interval_seconds, 60);
        assert_eq!(config.sidecar.client_portal_timeout_seconds, 10);
        assert_eq!(config.client_portal_timeout(), Duration::from_secs(10));
        assert_eq!(config.sidecar.quote_max_age_ms, 1000);
        assert_eq!(config.quote_max_age(), Duration::from_millis(1000));
    }

    #[test]
    fn quote_reuse_can_be_switched_off_and_is_bounded() {
        for (value, accepted) in [("0", true), ("10000", true), ("10001", false)] {
            let yaml = FULL.replace("safety:", &format!("  quote_max_age_ms: {value}\nsafety:"));
            match SidecarConfig::from_yaml_str(&yaml) {
                Ok(config) => {
                    assert!(accepted, "{value} was accepted");
                    assert_eq!(config.sidecar.quote_max_age_ms.to_string(), value);
                }
                Err(error) => {
                    assert!(!accepted, "{value} was refused: {error}");
                    assert_eq!(error.code(), ErrorCode::ConfigInvalid);
                    assert!(error.body().message.contains("sidecar.quote_max_age_ms"));
                }
            }
        }
    }

    #[test]
    fn the_programmatic_default_is_disabled() {
        let (code, message) = refusal(SidecarConfig::default().validate().map(|()| valid()));
        assert_eq!(code, ErrorCode::ConfigSidecarForbidden);
        assert!(message.contains("sidecar.enabled"));
        let mut config = SidecarConfig::default();
        config.sidecar.enabled = true;
        config.safety.sidecar_enabled = true;
        let (code, message) = refusal(config.validate().map(|()| valid()));
        assert_eq!(code, ErrorCode::ConfigInvalid);
        assert!(message.contains("sidecar.remote_relay_url"));
        config.sidecar.remote_relay_url = Some("wss://gw.example.com/relay".into());
        let (_, message) = refusal(config.validate().map(|()| valid()));
        assert!(message.contains("sidecar.local_client_portal_base_url"));
        config.sidecar.local_client_portal_base_url = DEFAULT_CLIENT_PORTAL_BASE_URL.into();
        config.validate().unwrap();
    }

    #[test]
    fn an_empty_document_is_forbidden() {
        let (code, message) = refusal(SidecarConfig::from_yaml_str(""));
        assert_eq!(code, ErrorCode::ConfigSidecarForbidden);
        assert!(message.contains("sidecar.enabled is missing"));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_and_named() {
        let (code, message) = refusal(SidecarConfig::from_yaml_str(&format!("{FULL}extra: 1\n")));
        assert_eq!(code, ErrorCode::ConfigInvalid);
        assert!(message.contains("extra"), "{message}");
        let typo = FULL.replace("enabled: true\n  remote", "enabeld: true\n  remote");
        let (code, message) = refusal(SidecarConfig::from_yaml_str(&typo));
        assert_eq!(code, ErrorCode::ConfigInvalid);
        assert!(message.contains("enabeld"), "{message}");
        let soon = FULL.replace(
            "heartbeat_interval_seconds: 15",
            "heartbeat_interval_seconds: soon",
        );
        let (code, message) = refusal(SidecarConfig::from_yaml_str(&soon));
        assert_eq!(code, ErrorCode::ConfigInvalid);
        assert!(message.contains("heartbeat_interval_seconds"), "{message}");
    }

    #[test]
    fn other_bounds_are_named() {
        for (key, line, bad) in [
            (
                "sidecar.max_concurrent_requests",
                "max_concurrent_requests",
                "0",
            ),
            (
                "sidecar.max_concurrent_requests",
                "max_concurrent_requests",
                "257",
            ),
            (
                "sidecar.reconnect_initial_delay_ms",
                "reconnect_initial_delay_ms",
                "0",
            ),
            (
                "sidecar.reconnect_max_delay_ms",
                "reconnect_max_delay_ms",
                "100",
            ),
            (
                "sidecar.tickle_interval_seconds",
                "tickle_interval_seconds",
                "0",
            ),
            (
                "sidecar.tickle_interval_seconds",
                "tickle_interval_seconds",
                "301",
            ),
            (
                "sidecar.client_portal_timeout_seconds",
                "client_portal_timeout_seconds",
                "0",
            ),
            (
                "sidecar.client_portal_timeout_seconds",
                "client_portal_timeout_seconds",
                "61",
            ),
            ("sidecar.quote_max_age_ms", "quote_max_age_ms", "10001"),
        ] {
            let yaml = FULL.replace("safety:", &format!("  {line}: {bad}\nsafety:"));
            let (code, message) = refusal(SidecarConfig::from_yaml_str(&yaml));
            assert_eq!(code, ErrorCode::ConfigInvalid, "{yaml}");
            assert!(message.contains(key), "{key}: {message}");
        }
    }

    #[test]
    fn the_written_default_is_complete_owner_only_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_default_config_if_absent(dir.path(), "ws://127.0.0.1:9/relay").unwrap());
        let path = dir.path().join(CONFIG_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let config = SidecarConfig::load(&path).unwrap();
        assert_eq!(config.relay_url(), Some("ws://127.0.0.1:9/relay"));
        assert_eq!(
            config.sidecar.local_client_portal_base_url,
            DEFAULT_CLIENT_PORTAL_BASE_URL
        );
        // A second pairing leaves the operator's file alone.
        assert!(!write_default_config_if_absent(dir.path(), "ws://127.0.0.1:10/relay").unwrap());
        let config = SidecarConfig::load_for_state_dir(None, dir.path()).unwrap();
        assert_eq!(config.relay_url(), Some("ws://127.0.0.1:9/relay"));
        // A relay URL the policy refuses is never written.
        let other = tempfile::tempdir().unwrap();
        assert!(write_default_config_if_absent(other.path(), "ws://gw.example.com/relay").is_err());
        assert!(!other.path().join(CONFIG_FILE).exists());
    }

    #[test]
    fn no_configuration_at_all_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let (code, message) = refusal(SidecarConfig::load_for_state_dir(None, dir.path()));
        assert_eq!(code, ErrorCode::ConfigInvalid);
        assert!(message.contains("--config") && message.contains("sidecar pair"));
    }
}
