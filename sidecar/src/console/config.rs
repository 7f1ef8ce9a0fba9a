//! The `console:` section of `sidecar.yaml`: whether the daemon serves the owner's console, and
//! where. Loopback only: the console can pause trading (and will approve orders), so an address
//! another machine can reach is refused before the daemon starts.

use crate::error::SidecarError;
use serde::{Deserialize, Serialize};
use shared_safety::ErrorCode;
use std::net::SocketAddr;

/// `127.0.0.1` on a port the system picks: nothing to collide with, and `sidecar console`
/// finds the port in `console.json`.
pub const DEFAULT_CONSOLE_LISTEN: &str = "127.0.0.1:0";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// Serve the console (default true).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// `ip:port` to listen on; a loopback address only. Port 0: any free port.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_enabled() -> bool {
    true
}

fn default_listen() -> String {
    DEFAULT_CONSOLE_LISTEN.to_string()
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection {
            enabled: default_enabled(),
            listen: default_listen(),
        }
    }
}

impl ConsoleSection {
    /// The address to bind, refused unless it is a loopback address. Checked even when the
    /// console is disabled: a file that would expose it once enabled is wrong already.
    pub fn listen_addr(&self) -> Result<SocketAddr, SidecarError> {
        let addr: SocketAddr = self.listen.trim().parse().map_err(|_| {
            SidecarError::new(
                ErrorCode::ConfigInvalid,
                "(console.listen must be an address and port such as 127.0.0.1:0; host names are \
                 not accepted, so no resolver can move the console off this laptop)",
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(SidecarError::new(
                ErrorCode::ConsoleListenNotLoopback,
                format!("(console.listen is {addr})"),
            ));
        }
        Ok(addr)
    }

    pub fn validate(&self) -> Result<(), SidecarError> {
        self.listen_addr().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_listen(listen: &str) -> ConsoleSection {
        ConsoleSection {
            enabled: true,
            listen: listen.into(),
        }
    }

    #[test]
    fn loopback_addresses_are_accepted_and_the_default_is_an_ephemeral_port() {
        let default = ConsoleSection::default();
        assert!(default.enabled);
        assert_eq!(
            default.listen_addr().unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        for listen in ["127.0.0.1:8765", "[::1]:0", "127.0.0.2:1"] {
            with_listen(listen).validate().unwrap();
        }
    }

    #[test]
    fn anything_another_machine_could_reach_is_refused_with_its_own_code() {
        for listen in ["0.0.0.0:0", "192.168.1.5:8765", "[::]:0", "10.0.0.1:80"] {
            let error = with_listen(listen).validate().unwrap_err();
            assert_eq!(
                error.code(),
                ErrorCode::ConsoleListenNotLoopback,
                "{listen}"
            );
            assert_eq!(error.exit_code(), 2);
        }
        // Disabled does not make a wrong address right.
        let disabled = ConsoleSection {
            enabled: false,
            listen: "0.0.0.0:0".into(),
        };
        assert!(disabled.validate().is_err());
    }

    #[test]
    fn host_names_and_garbage_are_refused_naming_the_key() {
        for listen in ["localhost:0", "127.0.0.1", "", "http://127.0.0.1:0"] {
            let error = with_listen(listen).validate().unwrap_err();
            assert_eq!(error.code(), ErrorCode::ConfigInvalid, "{listen}");
            assert!(error.body().message.contains("console.listen"));
        }
    }
}

#[cfg(test)]
mod yaml_tests {
    use crate::config::SidecarConfig;
    use shared_safety::ErrorCode;

    const BASE: &str = "sidecar:\n  enabled: true\n  remote_relay_url: \"ws://127.0.0.1:8080/relay\"\n  \
        local_client_portal_base_url: \"https://localhost:5000/v1/api\"\n  \
        heartbeat_interval_seconds: 15\n  heartbeat_timeout_seconds: 45\nsafety:\n  sidecar_enabled: true\n";

    #[test]
    fn the_section_is_optional_and_checked_when_present() {
        let config = SidecarConfig::from_yaml_str(BASE).unwrap();
        assert_eq!(config.console, super::ConsoleSection::default());
        let off =
            SidecarConfig::from_yaml_str(&format!("{BASE}console:\n  enabled: false\n")).unwrap();
        assert!(!off.console.enabled);
        assert_eq!(off.console.listen, super::DEFAULT_CONSOLE_LISTEN);
        let exposed = format!("{BASE}console:\n  listen: \"0.0.0.0:8765\"\n");
        let error = SidecarConfig::from_yaml_str(&exposed).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConsoleListenNotLoopback);
        let typo = format!("{BASE}console:\n  enable: true\n");
        let error = SidecarConfig::from_yaml_str(&typo).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigInvalid);
        // What to_yaml writes reads back the same.
        let text = config.to_yaml().unwrap();
        assert_eq!(SidecarConfig::from_yaml_str(&text).unwrap(), config);
    }
}
