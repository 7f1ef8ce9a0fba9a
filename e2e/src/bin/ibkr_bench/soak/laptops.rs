//! The soak's real laptops: a CPGW simulator (HTTPS) and a real sidecar daemon
//! (`ibkr_agent::run_daemon`, live paper trading: orders reach the simulator) per user, for the
//! users whose agents place orders. Each simulator has its own paper account id, so an answer
//! from another user's laptop is recognisable.
//!
//! At the end, each laptop's orders are audited against what its agents sent: every order at
//! the simulator is traced, by its client order id (`cOID`), to the journal attempt that sent it
//! and that attempt's idempotency key. More orders for one key than one is a duplicated order.

use crate::{BenchResult, bench_error, sidecar_dir};
use e2e::cpgw_sim::{CpgwSimulator, SimAccount, SimConfig};
use ibkr_agent::trading::journal::{JOURNAL_FILE, read_attempts};
use ibkr_agent::trading::policy::TradingSection;
use ibkr_agent::{DaemonOptions, SidecarConfig};
use protocol::catalog::scopes;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The scopes the laptops grant locally and the laptop agents' tokens carry.
pub(super) const LAPTOP_SCOPES: &[&str] = &[
    scopes::HEALTH_READ,
    scopes::ACCOUNTS_READ,
    scopes::MARKETDATA_READ,
    scopes::ORDERS_PREVIEW,
    scopes::ORDERS_READ,
    scopes::ORDERS_WRITE,
];

/// The symbol every soak order buys.
pub(super) const SYMBOL: &str = "AAPL";

/// How long a graceful daemon stop may take: it waits for order work in progress (up to two
/// minutes in the daemon) before it lets go of the journal.
const STOP_LIMIT: Duration = Duration::from_secs(150);

/// The paper account of laptop `index`.
pub(super) fn account_id(index: usize) -> String {
    format!("DU{:07}", 7_000_000 + index)
}

struct Daemon {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ibkr_agent::DaemonError>>,
    released: CancellationToken,
}

pub(super) struct Laptop {
    pub index: usize,
    pub user: String,
    pub account: String,
    sim: CpgwSimulator,
    state_dir: PathBuf,
    relay_url: String,
    daemon: Option<Daemon>,
    /// Daemon restarts done during the soak.
    pub restarts: u64,
    /// When each restarted daemon was started, on the simulator's clock (epoch ms), to set
    /// a pacing refusal beside.
    restarted_at_ms: Vec<i64>,
}

/// Orders at one laptop's broker, traced back to the keys the agents sent.
#[derive(Clone, Debug, Default)]
pub(super) struct LaptopAudit {
    pub user: String,
    /// Orders at the simulator.
    pub orders: usize,
    /// Distinct idempotency keys among them.
    pub keys_with_orders: usize,
    /// Orders beyond the first for one key, plus orders no journal attempt with a key explains.
    pub duplicated: usize,
    /// Orders whose client order id no journal attempt of this laptop names.
    pub untraced: usize,
    /// Orders whose key no agent of this user sent.
    pub foreign_keys: usize,
    /// Journal attempts, and those that placed an order.
    pub attempts: usize,
    /// Client order id -> the idempotency key of the attempt that sent it.
    pub coid_keys: HashMap<String, String>,
    /// Orders at the simulator per idempotency key.
    pub orders_per_key: BTreeMap<String, usize>,
    /// What the simulator's pacing limits refused (must be 0: a real CPGW would lock out).
    pub pacing_rejections: u64,
    /// The refusals by endpoint, the penalty boxes and the first refusal, when there were any.
    pub pacing_detail: Option<String>,
    /// Orders with a cash quantity other than the amount the key was sent with.
    pub amount_mismatches: usize,
}

impl Laptop {
    /// The laptop of paired sidecar `index`: grants the order scopes locally (as `ibkr-agent
    /// sidecar pairing grant` does), starts its simulator and its daemon.
    pub(super) async fn start(
        index: usize,
        sidecars_dir: &Path,
        relay_url: &str,
    ) -> BenchResult<Laptop> {
        let state_dir = sidecar_dir(sidecars_dir, index);
        let grant_dir = state_dir.clone();
        let user = tokio::task::spawn_blocking(move || -> BenchResult<String> {
            let store = ibkr_agent::StateStore::open(&grant_dir)?;
            let pairing = store
                .pairings()?
                .into_iter()
                .next()
                .ok_or_else(|| bench_error("a soak laptop has no pairing"))?;
            store.set_local_scopes(
                &pairing.remote_instance_id,
                &pairing.sidecar_id,
                &shared_safety::scope::ScopeSet::from_list(LAPTOP_SCOPES),
            )?;
            Ok(pairing.user_id)
        })
        .await??;
        let account = account_id(index);
        let sim = CpgwSimulator::start(SimConfig {
            account: SimAccount {
                account_id: account.clone(),
                ..SimAccount::paper()
            },
            seed: index as u64,
            ..SimConfig::default()
        })
        .await?;
        let price = |text: &str| text.parse::<Decimal>();
        sim.set_price(SYMBOL, price("200.00")?, price("199.98")?, price("200.02")?);
        let mut laptop = Laptop {
            index,
            user,
            account,
            sim,
            state_dir,
            relay_url: relay_url.to_string(),
            daemon: None,
            restarts: 0,
            restarted_at_ms: Vec::new(),
        };
        laptop.start_daemon();
        Ok(laptop)
    }

    /// The daemon's configuration: the product's defaults, live (not dry-run) paper trading,
    /// this laptop's simulator and the soak's gateway.
    fn config(&self) -> SidecarConfig {
        let mut config = SidecarConfig::default();
        config.sidecar.enabled = true;
        config.safety.sidecar_enabled = true;
        config.sidecar.remote_relay_url = Some(self.relay_url.clone());
        config.sidecar.local_client_portal_base_url = self.sim.base_url();
        config.trading = TradingSection {
            dry_run: false,
            ..TradingSection::default()
        };
        config
    }

    fn start_daemon(&mut self) {
        let shutdown = CancellationToken::new();
        let released = CancellationToken::new();
        let options = DaemonOptions {
            state_dir: self.state_dir.clone(),
            config: self.config(),
            frame_observer: None,
            released: Some(released.clone()),
            // The simulator trades on any day; the guards judge hours by a regular-hours time.
            market_clock: ibkr_agent::market_clock::MarketClock::simulated_at(
                e2e::system::SIMULATED_MARKET_TIME,
            ),
        };
        let task = tokio::spawn(ibkr_agent::run_daemon(options, shutdown.clone()));
        self.daemon = Some(Daemon {
            shutdown,
            task,
            released,
        });
    }

    /// Graceful stop: the daemon says goodbye to the gateway, finishes and journals any order
    /// work in progress, and lets go of its state.
    pub(super) async fn stop_daemon(&mut self) -> BenchResult<()> {
        let Some(daemon) = self.daemon.take() else {
            return Ok(());
        };
        daemon.shutdown.cancel();
        let ended = tokio::time::timeout(STOP_LIMIT, daemon.task)
            .await
            .map_err(|_| bench_error(format!("the daemon of {} did not stop", self.user)))?;
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(bench_error(format!(
                    "the daemon of {} failed: {error}",
                    self.user
                )));
            }
            Err(error) => return Err(bench_error(format!("daemon task: {error}"))),
        }
        tokio::time::timeout(STOP_LIMIT, daemon.released.cancelled())
            .await
            .map_err(|_| bench_error(format!("the daemon of {} kept its state", self.user)))?;
        Ok(())
    }

    /// A daemon restart: graceful stop, then a new daemon on the same state.
    pub(super) async fn restart_daemon(&mut self) -> BenchResult<()> {
        self.stop_daemon().await?;
        self.restarted_at_ms.push(self.sim.clock().now_ms());
        self.start_daemon();
        self.restarts += 1;
        Ok(())
    }

    /// Whether the daemon task ended on its own (it must not).
    pub(super) fn daemon_failed(&self) -> bool {
        self.daemon
            .as_ref()
            .is_none_or(|daemon| daemon.task.is_finished())
    }

    /// Audits the orders (call after [`Laptop::stop_daemon`], so every outcome is journaled).
    /// `sent_keys` are the idempotency keys this user's agents sent, with their amounts.
    pub(super) fn audit(&self, sent_keys: &HashMap<String, String>) -> BenchResult<LaptopAudit> {
        let journal = self.state_dir.join(JOURNAL_FILE);
        let book = if journal.exists() {
            Some(read_attempts(&journal)?)
        } else {
            None
        };
        let pacing = self.sim.pacing();
        let mut audit = LaptopAudit {
            user: self.user.clone(),
            pacing_rejections: pacing.rejected_total,
            pacing_detail: (pacing.rejected_total > 0).then(|| {
                format!(
                    "{} penalty box(es); refused: {:?}; first: {}; daemons restarted at {:?} ms",
                    pacing.penalty_boxes,
                    pacing.rejected,
                    pacing.first_refusal.as_deref().unwrap_or("-"),
                    self.restarted_at_ms
                )
            }),
            ..LaptopAudit::default()
        };
        if let Some(book) = &book {
            for attempt in book.iter() {
                audit.attempts += 1;
                let Some(key) = attempt.idempotency_key() else {
                    continue;
                };
                for coid in attempt.coids() {
                    audit.coid_keys.insert(coid, key.to_string());
                }
            }
        }
        let orders = self.sim.order_log();
        audit.orders = orders.len();
        let mut keys = BTreeSet::new();
        for order in &orders {
            let key = order
                .c_oid
                .as_ref()
                .and_then(|coid| audit.coid_keys.get(coid));
            let Some(key) = key else {
                audit.untraced += 1;
                continue;
            };
            keys.insert(key.clone());
            *audit.orders_per_key.entry(key.clone()).or_default() += 1;
            match sent_keys.get(key) {
                None => audit.foreign_keys += 1,
                Some(amount) => {
                    if order.cash_qty.as_deref().map(normalize) != Some(normalize(amount)) {
                        audit.amount_mismatches += 1;
                    }
                }
            }
        }
        audit.keys_with_orders = keys.len();
        audit.duplicated = audit
            .orders_per_key
            .values()
            .map(|count| count.saturating_sub(1))
            .sum::<usize>()
            + audit.untraced;
        Ok(audit)
    }

    pub(super) async fn shutdown(mut self) -> BenchResult<()> {
        let stopped = self.stop_daemon().await;
        self.sim.shutdown().await;
        stopped
    }
}

/// A decimal amount in one spelling ("30" and "30.00" are one amount).
fn normalize(amount: &str) -> String {
    amount
        .parse::<Decimal>()
        .map(|value| value.normalize().to_string())
        .unwrap_or_else(|_| amount.to_string())
}
