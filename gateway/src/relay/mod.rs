//! The gateway side of the relay: the websocket endpoint sidecars dial, one connection driver
//! per socket, the registry of live sessions, and the router that turns a tool call into an
//! encrypted request on the right session.
//!
//! - [`endpoint`]: `GET /relay` (upgrade with small, explicit websocket buffers).
//! - [`connection`]: handshake, key confirmation, heartbeat, expiry, frame dispatch.
//! - [`registry`]: live sessions and their pending calls; session events.
//! - [`router`]: the gates (pairing, session, heartbeat, expiry, load) and the call itself.

pub mod connection;
pub mod endpoint;
pub mod registry;
pub mod router;

pub use endpoint::{RelayWebsocketLimits, relay_websocket_limits};
pub use registry::{DropReason, LiveSidecar, SESSION_END_MEMORY, SessionEvent};
pub use router::{CallOutcome, CallTrace};

use crate::config::GatewayConfiguration;
use crate::store::Store;
use protocol::identity::StaticKeypair;
use protocol::liveness::HeartbeatConfig;
use registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Relay timings and bounds, from the validated configuration.
#[derive(Clone, Copy, Debug)]
pub struct RelaySettings {
    pub enabled: bool,
    pub heartbeat: HeartbeatConfig,
    pub session_ttl: Duration,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    pub handshake_timeout: Duration,
}

impl RelaySettings {
    pub fn from_config(config: &GatewayConfiguration, enabled: bool) -> RelaySettings {
        let sidecar = &config.sidecar;
        let interval = Duration::from_secs(sidecar.heartbeat_interval_seconds.max(1));
        let timeout = Duration::from_secs(sidecar.heartbeat_timeout_seconds);
        // Validation guarantees timeout > interval > 0; the fallback only guards programmatic
        // misuse and keeps the safe ordering.
        let heartbeat = HeartbeatConfig::new(interval, timeout)
            .or_else(|_| HeartbeatConfig::new(interval, interval * 3))
            .unwrap_or_else(|_| fallback_heartbeat());
        RelaySettings {
            enabled,
            heartbeat,
            session_ttl: Duration::from_secs(sidecar.session_ttl_seconds),
            request_timeout: Duration::from_secs(sidecar.request_timeout_seconds),
            max_in_flight: sidecar.max_in_flight_per_sidecar,
            handshake_timeout: Duration::from_secs(sidecar.handshake_timeout_seconds),
        }
    }
}

#[allow(clippy::expect_used)]
fn fallback_heartbeat() -> HeartbeatConfig {
    // Proven invariant: 15 s < 45 s and 15 s > 0, the only conditions `new` checks.
    HeartbeatConfig::new(Duration::from_secs(15), Duration::from_secs(45))
        .expect("15 s interval and 45 s timeout are a valid heartbeat configuration")
}

/// Everything the relay needs, shared by the endpoint, the drivers and the router.
pub struct Relay {
    pub(crate) settings: RelaySettings,
    pub(crate) store: Store,
    pub(crate) keypair: Arc<StaticKeypair>,
    pub(crate) instance_id: String,
    pub(crate) registry: Registry,
    /// Cancelled when the gateway shuts down: drivers send GoAway and close.
    pub(crate) shutdown: CancellationToken,
    /// Tracks connection drivers so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub(crate) fn new(
        settings: RelaySettings,
        store: Store,
        keypair: Arc<StaticKeypair>,
        instance_id: String,
    ) -> Relay {
        Relay {
            settings,
            store,
            keypair,
            instance_id,
            registry: Registry::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SessionEvent> {
        self.registry.subscribe()
    }

    pub fn live_sidecars(&self) -> Vec<LiveSidecar> {
        self.registry.live_sidecars()
    }

    /// Why the last relay session of `sidecar_id` ended, if it ended within
    /// [`registry::SESSION_END_MEMORY`] and the sidecar has not registered since.
    pub fn last_session_end(&self, sidecar_id: &str) -> Option<DropReason> {
        self.registry.last_end_reason(sidecar_id)
    }

    /// Tells every session to go away and waits (bounded) for the drivers to finish.
    pub(crate) async fn shut_down(&self, wait: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(wait, self.tasks.wait()).await.is_err() {
            tracing::warn!("relay connections did not close in time");
        }
    }
}
