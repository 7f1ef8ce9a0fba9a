//! The sidecar's YAML configuration (`ibkr-agent sidecar run --config <yaml>`).
//!
//! Unknown keys are refused (a typo must not silently leave a safety switch at its default),
//! and [`SidecarConfig::validate`] runs before anything is dialed. Relaying needs two
//! independent switches, `sidecar.enabled` and `safety.sidecar_enabled`, both true.

use crate::error::SidecarError;
use crate::net::{self, UrlKind};
use serde::{Deserialize, Serialize};
use shared_safety::ErrorCode;
use std::path::Path;
use std::time::Duration;

/// Default CPGW base URL: the Client Portal Gateway's own default on the laptop.
pub const DEFAULT_CLIENT_PORTAL_BASE_URL: &str = "https://localhost:5000/v1/api";

/// Upper bound for `max_concurrent_requests`: the relay is a personal channel, and each request
/// holds a CPGW connection.
pub const MAX_CONCURRENT_REQUESTS_LIMIT: usize = 256;

/// Largest backoff accepted (one hour).
const MAX_RECONNECT_DELAY_MS: u64 = 3_600_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarConfig {
    pub sidecar: SidecarSection,
    pub safety: SafetySection,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarSection {
    pub enabled: bool,
    /// Overrides the relay URL recorded at pairing (`ws://` only to loopback hosts).
    pub remote_relay_url: Option<String>,
    pub local_client_portal_base_url: String,
    pub heartbeat_interval_seconds: u64,
    /// Must be greater than `heartbeat_interval_seconds`.
    pub heartbeat_timeout_seconds: u64,
    pub max_concurrent_requests: usize,
    pub reconnect_initial_delay_ms: u64,
    pub reconnect_max_delay_ms: u64,
    pub tickle_interval_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetySection {
    pub sidecar_enabled: bool,
}

impl Default for SidecarSection {
    fn default() -> Self {
        SidecarSection {
            enabled: true,
            remote_relay_url: None,
            local_client_portal_base_url: DEFAULT_CLIENT_PORTAL_BASE_URL.to_string(),
            heartbeat_interval_seconds: 15,
            heartbeat_timeout_seconds: 45,
            max_concurrent_requests: 8,
            reconnect_initial_delay_ms: 500,
            reconnect_max_delay_ms: 30_000,
            tickle_interval_seconds: 60,
        }
    }
}

impl Default for SafetySection {
    fn default() -> Self {
        SafetySection {
            sidecar_enabled: true,
        }
    }
}

fn invalid(key: &str, why: impl std::fmt::Display) -> SidecarError {
    SidecarError::new(ErrorCode::ConfigInvalid, format!("({key} {why})"))
}

impl SidecarConfig {
    /// Parses YAML. Unknown keys and wrong types are CONFIG_INVALID naming the key.
    pub fn from_yaml_str(text: &str) -> Result<Self, SidecarError> {
        // An empty document means "all defaults", like an absent file.
        if text.trim().is_empty() {
            return Ok(SidecarConfig::default());
        }
        serde_yaml_ng::from_str(text).map_err(|error| {
            // serde_yaml_ng names the offending key and position, not secret values.
            SidecarError::new(ErrorCode::ConfigInvalid, format!("({error})"))
        })
    }

    /// Reads and parses a YAML file (validation is separate: see [`SidecarConfig::validate`]).
    pub fn load(path: &Path) -> Result<Self, SidecarError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            SidecarError::new(
                ErrorCode::ConfigInvalid,
                format!("(cannot read the configuration file: {})", error.kind()),
            )
        })?;
        Self::from_yaml_str(&text)
    }

    /// Checks everything before any network activity. Fails closed, naming the key.
    pub fn validate(&self) -> Result<(), SidecarError> {
        if !self.sidecar.enabled {
            return Err(SidecarError::new(
                ErrorCode::ConfigSidecarForbidden,
                "(sidecar.enabled is false)",
            ));
        }
        if !self.safety.sidecar_enabled {
            return Err(SidecarError::new(
                ErrorCode::ConfigSidecarForbidden,
                "(safety.sidecar_enabled is false)",
            ));
        }
        let s = &self.sidecar;
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
        if s.heartbeat_timeout_seconds > 3600 {
            return Err(invalid(
                "sidecar.heartbeat_timeout_seconds",
                "must be at most 3600",
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
        if s.tickle_interval_seconds == 0 || s.tickle_interval_seconds > 300 {
            // CPGW drops an idle session after about six minutes.
            return Err(invalid(
                "sidecar.tickle_interval_seconds",
                "must be between 1 and 300",
            ));
        }
        if let Some(relay) = &s.remote_relay_url {
            net::checked_url(relay, UrlKind::WebSocket)
                .map_err(|why| invalid("sidecar.remote_relay_url", why))?;
        }
        net::checked_url(&s.local_client_portal_base_url, UrlKind::Http)
            .map_err(|why| invalid("sidecar.local_client_portal_base_url", why))?;
        Ok(())
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

    pub fn reconnect_initial_delay(&self) -> Duration {
        Duration::from_millis(self.sidecar.reconnect_initial_delay_ms)
    }

    pub fn reconnect_max_delay(&self) -> Duration {
        Duration::from_millis(self.sidecar.reconnect_max_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(result: Result<(), SidecarError>) -> Option<ErrorCode> {
        result.err().map(|e| e.code())
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let config = SidecarConfig::default();
        config.validate().unwrap();
        assert_eq!(config.sidecar.heartbeat_interval_seconds, 15);
        assert_eq!(config.sidecar.heartbeat_timeout_seconds, 45);
        assert_eq!(config.sidecar.max_concurrent_requests, 8);
        assert_eq!(
            config.sidecar.local_client_portal_base_url,
            "https://localhost:5000/v1/api"
        );
    }

    #[test]
    fn documented_example_parses() {
        let yaml = r#"
sidecar:
  enabled: true
  remote_relay_url: "ws://127.0.0.1:8080/relay"
  local_client_portal_base_url: "https://localhost:5000/v1/api"
  heartbeat_interval_seconds: 15
  heartbeat_timeout_seconds: 45
  max_concurrent_requests: 8
  reconnect_initial_delay_ms: 500
  reconnect_max_delay_ms: 30000
  tickle_interval_seconds: 60
safety:
  sidecar_enabled: true
"#;
        let config = SidecarConfig::from_yaml_str(yaml).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.sidecar.remote_relay_url.as_deref(),
            Some("ws://127.0.0.1:8080/relay")
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_named() {
        let error = SidecarConfig::from_yaml_str("sidecar:\n  enabeld: true\n").unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigInvalid);
        assert!(error.detail().unwrap_or("").contains("enabeld"));
        let error = SidecarConfig::from_yaml_str("extra: 1\n").unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigInvalid);
    }

    #[test]
    fn both_switches_are_required() {
        let config = SidecarConfig::from_yaml_str("sidecar:\n  enabled: false\n").unwrap();
        assert_eq!(
            code_of(config.validate()),
            Some(ErrorCode::ConfigSidecarForbidden)
        );
        let config = SidecarConfig::from_yaml_str("safety:\n  sidecar_enabled: false\n").unwrap();
        let error = config.validate().unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigSidecarForbidden);
        assert!(
            error
                .detail()
                .unwrap_or("")
                .contains("safety.sidecar_enabled")
        );
    }

    #[test]
    fn heartbeat_timeout_must_exceed_interval() {
        let mut config = SidecarConfig::default();
        config.sidecar.heartbeat_timeout_seconds = 15;
        let error = config.validate().unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigInvalid);
        assert!(
            error
                .detail()
                .unwrap_or("")
                .contains("sidecar.heartbeat_timeout_seconds")
        );
    }

    #[test]
    fn urls_are_checked_and_named() {
        let mut config = SidecarConfig::default();
        config.sidecar.remote_relay_url = Some("ws://gateway.example.com/relay".into());
        let error = config.validate().unwrap_err();
        assert!(
            error
                .detail()
                .unwrap_or("")
                .contains("sidecar.remote_relay_url")
        );

        let mut config = SidecarConfig::default();
        config.sidecar.local_client_portal_base_url = "::not a url".into();
        let error = config.validate().unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigInvalid);
        assert!(
            error
                .detail()
                .unwrap_or("")
                .contains("sidecar.local_client_portal_base_url")
        );
    }

    #[test]
    fn other_bounds() {
        let mut config = SidecarConfig::default();
        config.sidecar.max_concurrent_requests = 0;
        assert_eq!(code_of(config.validate()), Some(ErrorCode::ConfigInvalid));
        let mut config = SidecarConfig::default();
        config.sidecar.reconnect_max_delay_ms = 100;
        assert_eq!(code_of(config.validate()), Some(ErrorCode::ConfigInvalid));
        let mut config = SidecarConfig::default();
        config.sidecar.tickle_interval_seconds = 0;
        assert_eq!(code_of(config.validate()), Some(ErrorCode::ConfigInvalid));
    }

    #[test]
    fn wrong_types_are_refused() {
        let error = SidecarConfig::from_yaml_str("sidecar:\n  heartbeat_interval_seconds: soon\n")
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigInvalid);
    }
}
