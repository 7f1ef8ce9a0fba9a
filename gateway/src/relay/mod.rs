//! The gateway side of the relay: the websocket endpoint sidecars dial, one connection driver
//! per socket, the registry of live sessions, and the router that turns a tool call into an
//! encrypted request on the right session.
//!
//! - [`endpoint`]: `GET /relay` (upgrade with small, explicit websocket buffers).
//! - [`connection`]: handshake, key confirmation, heartbeat, expiry, frame dispatch.
//! - [`registry`]: live sessions and their pending calls; session events.
//! - [`router`]: the gates (pairing, session, heartbeat, expiry, load) and the call itself.
//! - [`cluster_routes`]: with several replicas, forwarding a call to the replica that holds
//!   the user's session, and serving the calls forwarded here.
//! - the revocation poll ([`Relay::close_revoked_sessions`]): pairings revoked from another
//!   process close their live sessions within [`REVOCATION_POLL`].

pub mod cluster_routes;
pub mod connection;
pub mod endpoint;
pub mod registry;
pub mod router;

pub use endpoint::{RelayWebsocketLimits, relay_websocket_limits};
pub use registry::{DropReason, LiveSidecar, SESSION_END_MEMORY, SessionEvent};
pub use router::{CallOutcome, CallTrace, ToolCall};

use crate::config::GatewayConfiguration;
use crate::store::Store;
use protocol::identity::StaticKeypair;
use protocol::liveness::HeartbeatConfig;
use registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the store is checked for pairings revoked by another process.
pub const REVOCATION_POLL: Duration = Duration::from_secs(2);

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
    /// The other replicas, when there are any (`cluster` in the configuration).
    pub(crate) cluster: Option<Arc<crate::cluster::ClusterLink>>,
    /// Where sidecars' answers about agent connections go (the built-in authorization
    /// server's approval desk), when it runs.
    pub(crate) agent_inbox: std::sync::OnceLock<tokio::sync::mpsc::Sender<AgentEvent>>,
    /// Agent messages one sidecar may send per minute (a person decides a few a day): a
    /// sidecar flooding them cannot crowd out other users' decisions.
    pub(crate) agent_messages: crate::http::rate_limit::RateLimiter,
}

/// Agent messages (decisions, revocations) one sidecar may send per minute.
const AGENT_MESSAGES_PER_MINUTE: u32 = 60;

/// A sidecar's message about an agent connection, as the relay hands it on.
#[derive(Debug)]
pub(crate) enum AgentEvent {
    /// The owner approved or denied an approval request.
    Decision {
        user_id: String,
        decision: protocol::agents::AgentDecision,
    },
    /// The owner revoked an agent; `reply` reaches the sidecar that said so.
    Revoked {
        user_id: String,
        approval_id: protocol::agents::ApprovalId,
        reply: tokio::sync::mpsc::Sender<protocol::frame::Frame>,
    },
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
        cluster: Option<Arc<crate::cluster::ClusterLink>>,
    ) -> Relay {
        Relay {
            settings,
            store,
            keypair,
            instance_id,
            registry: Registry::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            cluster,
            agent_inbox: std::sync::OnceLock::new(),
            agent_messages: crate::http::rate_limit::RateLimiter::new(AGENT_MESSAGES_PER_MINUTE),
        }
    }

    /// Sends `frame` to every live session of `user_id` on this replica; how many took it.
    pub(crate) fn send_to_user(&self, user_id: &str, frame: &protocol::frame::Frame) -> usize {
        self.registry
            .sessions_for_user(user_id)
            .iter()
            .filter(|session| session.outbound.try_send(frame.clone()).is_ok())
            .count()
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SessionEvent> {
        self.registry.subscribe()
    }

    pub fn live_sidecars(&self) -> Vec<LiveSidecar> {
        self.registry.live_sidecars()
    }

    /// How many relay sessions are registered.
    pub fn session_count(&self) -> usize {
        self.registry.all().len()
    }

    /// Why the last relay session of `sidecar_id` ended, if it ended within
    /// [`registry::SESSION_END_MEMORY`] and the sidecar has not registered since.
    pub fn last_session_end(&self, sidecar_id: &str) -> Option<DropReason> {
        self.registry.last_end_reason(sidecar_id)
    }

    /// Closes (`Close{PairingRevoked}`) every live session whose pairing is no longer
    /// active, when the pairings changed since the last look (the pairings generation: cheap when
    /// nothing changed). A `pairing revoke` run by the CLI in another process so cuts a live
    /// session within [`REVOCATION_POLL`], without waiting for its next call or renewal.
    pub(crate) async fn close_revoked_sessions(&self, seen_version: &mut Option<i64>) {
        // The sessions first: each was registered only after its pairing was seen active, so
        // a pairing created after this snapshot cannot be mistaken for a revoked one.
        let sessions = self.registry.all();
        match self.store.active_pairings_if_changed(*seen_version).await {
            Ok((version, changed)) => {
                *seen_version = Some(version);
                let Some(active) = changed else {
                    return;
                };
                for session in sessions {
                    if !active.contains(&session.pairing_id) {
                        tracing::info!(sidecar_id = %session.sidecar_id, "pairing revoked; closing its live session");
                        session.request_close(protocol::frame::CloseReason::PairingRevoked);
                    }
                }
            }
            Err(error) => {
                // The per-call and renewal checks still apply; try again next tick.
                tracing::warn!(%error, "revocation poll: store lookup failed");
            }
        }
    }

    /// Runs [`Relay::close_revoked_sessions`] every [`REVOCATION_POLL`] until shutdown.
    pub(crate) fn spawn_revocation_poll(self: &Arc<Self>) {
        let relay = Arc::clone(self);
        self.tasks.spawn(async move {
            let mut seen_version = None;
            let mut ticks = tokio::time::interval(REVOCATION_POLL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = relay.shutdown.cancelled() => break,
                    _ = ticks.tick() => relay.close_revoked_sessions(&mut seen_version).await,
                }
            }
        });
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
