//! The live relay session as the per-request gates see it, and what a connection is bound to. The connection driver owns the
//! truth and updates the shared snapshot; request tasks read a copy.

use protocol::identity::PublicKey;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What this connection is bound to: the local identity and the pairing it dialed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub sidecar_id: String,
    pub remote_instance_id: String,
    /// The gateway key the handshake authenticated.
    pub gateway_public_key: PublicKey,
}

/// Everything gate c needs, on the monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub session_id: [u8; 16],
    pub sidecar_id: String,
    /// The instance id the gateway proved in its ServerHello.
    pub remote_instance_id: String,
    pub established_at: Instant,
    pub expires_at: Instant,
    /// When the last authenticated frame arrived.
    pub last_authentic: Instant,
    pub heartbeat_timeout: Duration,
    /// Set when the connection ends; requests still running then are refused.
    pub closed: bool,
}

impl SessionSnapshot {
    pub fn session_id_hex(&self) -> String {
        hex::encode(self.session_id)
    }
}

/// Shared between the driver and its request tasks.
#[derive(Clone, Debug)]
pub struct SharedSession(Arc<Mutex<SessionSnapshot>>);

impl SharedSession {
    pub fn new(snapshot: SessionSnapshot) -> Self {
        SharedSession(Arc::new(Mutex::new(snapshot)))
    }

    /// A copy of the current state. A poisoned lock reads as a closed session (fail closed).
    pub fn snapshot(&self) -> SessionSnapshot {
        match self.0.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => {
                let mut copy = poisoned.into_inner().clone();
                copy.closed = true;
                copy
            }
        }
    }

    pub fn update(&self, change: impl FnOnce(&mut SessionSnapshot)) {
        match self.0.lock() {
            Ok(mut guard) => change(&mut guard),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }
}
