//! What the daemon's tasks share: the state store, the identity, the configuration, the CPGW
//! client and the broker state channel.

use crate::config::SidecarConfig;
use crate::cpgw::{BrokerState, CpgwClient};
use crate::state::{IdentityRecord, StateStore};
use protocol::frame::Frame;
use protocol::identity::StaticKeypair;
use std::sync::Arc;
use tokio::sync::watch;

/// Test/diagnostic hook called with every frame received from the gateway after decryption.
pub type FrameObserver = Arc<dyn Fn(&Frame) + Send + Sync>;

pub(crate) struct DaemonContext {
    pub store: StateStore,
    pub identity: IdentityRecord,
    /// The identity's secret key (zeroized on drop, never logged).
    pub keypair: StaticKeypair,
    pub config: SidecarConfig,
    pub cpgw: CpgwClient,
    pub broker: watch::Sender<BrokerState>,
    pub frame_observer: Option<FrameObserver>,
}

/// Sidecar build version as reported to the gateway (no paths, no account data).
pub const SIDECAR_VERSION: &str = env!("CARGO_PKG_VERSION");
