//! What the daemon's tasks share: the state store, the identity, the configuration, the CPGW
//! client and the broker state channel.

use crate::alerts::AlertSink;
use crate::config::SidecarConfig;
use crate::cpgw::keepalive::SessionMonitor;
use crate::cpgw::{AccountCache, BrokerState, ConidCache, CpgwClient, QuoteCache};
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
    /// Symbol -> US contract cache (market data and orders).
    pub contracts: ConidCache,
    /// The selected account, cached per broker session.
    pub accounts: AccountCache,
    /// Snapshot quotes shared between the read tools' calls (never used by order guards).
    pub quotes: QuoteCache,
    /// The keep-alive's last `auth/status` (gate f uses it while fresh).
    pub monitor: Arc<SessionMonitor>,
    /// Session alerts (log + optional webhook).
    pub alerts: Arc<AlertSink>,
    pub frame_observer: Option<FrameObserver>,
    /// The clock trading hours are judged by (system clock except in simulations).
    pub market_clock: crate::market_clock::MarketClock,
    /// Order tools' journal and policy; `None` when the journal could not be opened.
    pub orders: Option<crate::trading::OrdersRuntime>,
    /// Calls that can change broker state, detached from their relay connection: they finish
    /// and journal their outcome even when the connection drops, and a graceful stop waits for
    /// them.
    pub order_work: tokio_util::task::TaskTracker,
    /// Cancelled only when the daemon dies without a graceful stop (its future dropped): order
    /// work then stops as it would in a crash.
    pub order_work_killed: tokio_util::sync::CancellationToken,
    /// Recent activity for the owner's console (relay connection, recent calls).
    pub activity: crate::console::Activity,
    /// Cancels [`crate::DaemonOptions::released`] when the last holder of the context lets go.
    pub _released: Option<tokio_util::sync::DropGuard>,
}

/// Sidecar build version as reported to the gateway (no paths, no account data).
pub const SIDECAR_VERSION: &str = env!("CARGO_PKG_VERSION");
