//! `ibkr-agent sidecar run`: the long-running daemon, also callable in-process (e2e tests, the
//! demo) through [`run_daemon`].
//!
//! Everything that can be checked locally is checked before the first dial: the configuration
//! (first: an invalid one never even opens the state store), the identity and its secret key,
//! an active pairing with a pinned gateway key, and the CPGW URL. The relay URL dialed is the
//! configured `sidecar.remote_relay_url`; the pinned gateway key is what protects against a
//! wrong one. Then the keep-alive task and the reconnect loop run until `shutdown`.

use crate::alerts::AlertSink;
use crate::clock::now_unix_seconds;
use crate::config::SidecarConfig;
use crate::context::{DaemonContext, FrameObserver};
use crate::cpgw::keepalive::{Keepalive, SessionMonitor, run_keepalive};
use crate::cpgw::{AccountCache, BrokerState, ConidCache, CpgwClient, QuoteCache};
use crate::error::SidecarError;
use crate::identity::load_keypair;
use crate::relay::{dial, supervisor};
use crate::state::StateStore;
use shared_safety::ErrorCode;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Errors that stop the daemon (all before the first dial; afterwards it keeps retrying).
pub type DaemonError = SidecarError;

/// How to run the daemon.
#[derive(Clone)]
pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub config: SidecarConfig,
    /// Test/diagnostic hook: called with every frame received from the gateway after decryption
    /// (i.e. exactly what the gateway sent before encryption).
    pub frame_observer: Option<FrameObserver>,
    /// The clock trading hours are judged by: the system clock, except in simulations.
    pub market_clock: crate::market_clock::MarketClock,
    /// Cancelled once everything the daemon holds (the trade journal's lock included) is
    /// released, even when its future was dropped rather than stopped: what a process exit
    /// gives for free, for a daemon that runs as a task (tests, the demo).
    pub released: Option<CancellationToken>,
}

impl DaemonOptions {
    pub fn new(state_dir: PathBuf, config: SidecarConfig) -> Self {
        DaemonOptions {
            state_dir,
            config,
            frame_observer: None,
            market_clock: crate::market_clock::MarketClock::system(),
            released: None,
        }
    }
}

impl std::fmt::Debug for DaemonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonOptions")
            .field("config", &self.config)
            .field("frame_observer", &self.frame_observer.is_some())
            .finish_non_exhaustive()
    }
}

/// Runs the sidecar until `shutdown` is cancelled (then sends `Close { Shutdown }` and closes
/// the websocket). Returns an error only for problems found before dialing.
pub async fn run_daemon(
    options: DaemonOptions,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let context = Arc::new(prepare(options)?);
    // Dropped with this future: a daemon that dies takes its order work with it.
    let _kill_order_work = context.order_work_killed.clone().drop_guard();
    dial::ensure_crypto_provider();
    tracing::info!(
        sidecar_id = %context.identity.sidecar_id,
        fingerprint = %context.identity.fingerprint(),
        "sidecar starting"
    );

    let keepalive_stop = shutdown.child_token();
    // Aborted with this future: a daemon that dies leaves no keep-alive behind.
    let keepalive = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(run_keepalive(
        Keepalive {
            client: context.cpgw.clone(),
            interval: context.config.tickle_interval(),
            broker: context.broker.clone(),
            monitor: context.monitor.clone(),
            alerts: context.alerts.clone(),
        },
        keepalive_stop.clone(),
    )));
    let owner = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(crate::owner::serve(
        context.clone(),
        keepalive_stop.clone(),
    )));
    let approvals = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        crate::approvals::run_expiry(context.clone(), keepalive_stop.clone()),
    ));
    // Aborted with this future; stops with the keep-alive, after order work drained.
    let console = crate::console::start(&context, keepalive_stop.clone()).await;
    supervisor::run(context.clone(), shutdown.clone()).await;
    // A graceful stop lets orders being placed finish and journal their outcome.
    context.order_work.close();
    if !context.order_work.is_empty() {
        tracing::info!(
            orders = context.order_work.len(),
            "waiting for order calls in flight to finish before stopping"
        );
        if tokio::time::timeout(ORDER_WORK_GRACE, context.order_work.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "order calls still running at the stop; their outcomes stay unknown until reconciled"
            );
        }
    }
    keepalive_stop.cancel();
    let _ = keepalive.await;
    let _ = owner.await;
    let _ = approvals.await;
    if let Some(console) = console {
        let _ = console.await;
    }
    tracing::info!("sidecar stopped");
    Ok(())
}

/// Longest a graceful stop waits for order calls in flight (each is bounded by its own
/// deadline, the gateway's request timeout).
const ORDER_WORK_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// All local checks, in the order a person would fix them.
fn prepare(options: DaemonOptions) -> Result<DaemonContext, DaemonError> {
    options.config.validate()?;
    let store = StateStore::open(&options.state_dir)?;
    let (identity, keypair) = load_keypair(&options.state_dir, &store)?;
    if store
        .dialable_pairing(&identity.sidecar_id, now_unix_seconds())?
        .is_none()
    {
        let keyless = store.pairings()?.iter().any(|record| {
            record.sidecar_id == identity.sidecar_id && record.is_active(now_unix_seconds())
        });
        return Err(if keyless {
            SidecarError::new(
                ErrorCode::SidecarPairingRequired,
                "(the active pairing records were written by `ibkr-agent sidecar pairing create` \
                 and pin no gateway key, so there is nothing the daemon can authenticate; pair \
                 with `ibkr-agent sidecar pair`)",
            )
        } else {
            SidecarError::bare(ErrorCode::SidecarPairingRequired)
        });
    }
    let cpgw = CpgwClient::with_timeout(
        &options.config.sidecar.local_client_portal_base_url,
        options.config.client_portal_timeout(),
    )?;
    let (broker, _) = watch::channel(BrokerState::Unknown);
    let alerts = AlertSink::new(&identity.display_name, options.config.alerts.as_ref())?;
    let trading = options.config.trading.clone();
    Ok(DaemonContext {
        store,
        contracts: ConidCache::new(cpgw.clone()),
        accounts: AccountCache::new(broker.subscribe()),
        quotes: QuoteCache::new(broker.subscribe(), options.config.quote_max_age()),
        monitor: Arc::new(SessionMonitor::new()),
        alerts: Arc::new(alerts),
        identity,
        keypair,
        config: options.config,
        cpgw,
        broker,
        frame_observer: options.frame_observer,
        _released: options.released.map(CancellationToken::drop_guard),
        market_clock: options.market_clock.clone(),
        order_work: tokio_util::task::TaskTracker::new(),
        order_work_killed: tokio_util::sync::CancellationToken::new(),
        activity: crate::console::Activity::new(),
        orders: match crate::trading::OrdersRuntime::open(&options.state_dir, &trading) {
            Ok(mut runtime) => {
                runtime.clock = options.market_clock.clone();
                Some(runtime)
            }
            Err(error) => {
                tracing::error!(code = %error.code(), %error, "trade journal unavailable; order tools refuse (run `ibkr-agent journal verify`)");
                None
            }
        },
    })
}
