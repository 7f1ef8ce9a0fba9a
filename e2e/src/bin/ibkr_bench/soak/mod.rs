//! `ibkr-bench soak`: hundreds of MCP clients and a thousand connected sidecars for minutes,
//! with sidecars reconnecting and calls cancelled throughout. It counts lost responses,
//! responses delivered to the wrong caller and duplicated orders (all must be 0), follows the
//! gateway's resident memory and the latency over time, and prints the report (optionally
//! writing it to `docs/reliability.md`).
//!
//! Four processes, everything on 127.0.0.1:
//!
//! 1. the gateway alone ([`gateway`]), so that its memory is its own;
//! 2. the relay peers ([`peers`]): the sessions of most sidecars, answering the calls routed to
//!    them with who they are and what they were asked;
//! 3. a pairing helper, run first (the idle-session benchmark's): every sidecar is paired
//!    through the real pairing flow, one user each;
//! 4. this process: the development OAuth issuer, the MCP agents ([`agents`]), the real
//!    laptops ([`laptops`]: CPGW simulator and sidecar daemon for the users who place orders),
//!    the reconnects and restarts, and the report.

mod agents;
mod gateway;
mod laptops;
mod peers;
mod process;
pub(crate) mod report;
mod stats;
mod tracker;

use crate::{BenchResult, bench_error, pair_in_helper};
use agents::{Agent, OrderLedger, Rng, Shared, Target};
use e2e::dev_issuer::{DevIssuer, TokenRequest};
use e2e::system::loopback;
use gateway::GatewayProcess;
use laptops::Laptop;
use peers::{PeersProcess, ReconnectMode};
use protocol::catalog::scopes;
use report::{LaptopRow, Machine, Report};
use stats::Stats;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracker::Tracker;

/// Idle time before the start and after-load readings: two heartbeat rounds would need 30 s
/// at the product's 15 s heartbeat; this matches the idle benchmark's wait for tokio's idle
/// blocking threads (10 s keep-alive) to exit.
const SETTLE: Duration = Duration::from_secs(12);
/// Bound on waiting for every session to be registered.
const SESSIONS_LIMIT: Duration = Duration::from_secs(300);
/// Margin past the gateway's request timeout before a call counts as lost.
const LOST_MARGIN: Duration = Duration::from_secs(15);
/// Agents per laptop user.
const AGENTS_PER_LAPTOP: usize = 2;

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s or 5m"))?;
    match unit {
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "ms" => Ok(Duration::from_millis(value)),
        _ => Err(format!("{text:?}: the unit must be ms, s or m")),
    }
}

/// `ibkr-bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SoakArgs {
    /// Measured load time, after the warm-up (e.g. 300s or 5m).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// Load time before the "after warm-up" memory reading.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    warm_up: Duration,
    /// Concurrent MCP clients (agents), each its own session and token.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=2000))]
    clients: u64,
    /// Connected sidecars, each paired to its own user.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(2..=5000))]
    sidecars: u64,
    /// How many of the sidecars are real daemons with a CPGW simulator, whose agents buy.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=16))]
    laptops: u64,
    /// Mean pause between two calls of one client, in milliseconds (uniform from 0 to twice).
    #[arg(long, default_value_t = 1000)]
    think_ms: u64,
    /// Relay peer sessions dropped and re-established per minute (modes in turn: abrupt,
    /// graceful, replace, drain).
    #[arg(long, default_value_t = 120)]
    reconnects_per_minute: u32,
    /// Interval between graceful restarts of a laptop's daemon (in turn); 0 never restarts.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    laptop_restart_every: Duration,
    /// Width of the latency-over-time intervals.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    interval: Duration,
    /// Seed of every agent's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report into docs/reliability.md (under "## Soak").
    #[arg(long)]
    write_docs: bool,
    /// Also write the report into this file (under "## Soak").
    #[arg(long)]
    output: Option<PathBuf>,
}

/// `ibkr-bench soak-gateway` (hidden): the gateway helper process.
#[derive(clap::Args, Debug)]
pub(crate) struct GatewayHelperArgs {
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    issuer_url: String,
    #[arg(long)]
    sidecars: usize,
}

/// `ibkr-bench soak-peers` (hidden): the relay peers helper process.
#[derive(clap::Args, Debug)]
pub(crate) struct PeersHelperArgs {
    #[arg(long)]
    relay_url: String,
    #[arg(long)]
    sidecars_dir: PathBuf,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
}

pub(crate) async fn gateway_helper(args: GatewayHelperArgs) -> BenchResult<()> {
    gateway::run_gateway(&args.state_dir, &args.issuer_url, args.sidecars).await
}

pub(crate) async fn peers_helper(args: PeersHelperArgs) -> BenchResult<()> {
    peers::run_peers(&args.relay_url, &args.sidecars_dir, args.first, args.count).await
}

/// The user of paired sidecar `index` (the pairing helper's naming).
fn user_of(index: usize) -> String {
    format!("bench-user-{index:05}")
}

/// Which user each agent works for: two per laptop user, then the relay-peer agents over
/// three users for every four agents, so a third of those users have two agents (two agents of
/// one user must not get each other's answers).
fn plan_agents(
    clients: usize,
    laptops: &[(usize, String)],
    sidecars: usize,
) -> Vec<(usize, Target)> {
    let mut plan = Vec::with_capacity(clients);
    for (index, account) in laptops {
        for _ in 0..AGENTS_PER_LAPTOP {
            if plan.len() < clients {
                plan.push((
                    *index,
                    Target::Laptop {
                        account: account.clone(),
                    },
                ));
            }
        }
    }
    let rest = clients - plan.len();
    let peer_users = (rest * 3).div_ceil(4).min(sidecars - laptops.len()).max(1);
    for slot in 0..rest {
        plan.push((laptops.len() + slot % peer_users, Target::Peer));
    }
    plan
}

/// Reconnects relay peer sessions at a steady rate until `stop`, cycling through the modes.
async fn churn_peers(
    peers: Arc<PeersProcess>,
    tracker: Arc<Tracker>,
    stats: Arc<Stats>,
    every: Duration,
    candidates: (Vec<usize>, std::ops::Range<usize>),
    seed: u64,
    stop: CancellationToken,
) -> BenchResult<u64> {
    let (busy, all) = candidates;
    let mut rng = Rng::new(seed ^ 0x5EED_C4A7);
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut count: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(count),
            _ = ticker.tick() => {}
        }
        // Half the time a peer some agent is calling, else any peer.
        let index = if !busy.is_empty() && rng.percent(50) {
            busy[usize::try_from(rng.below(busy.len() as u64)).unwrap_or(0)]
        } else {
            all.start + usize::try_from(rng.below(all.len() as u64)).unwrap_or(0)
        };
        if peers.is_reconnecting(index) {
            continue;
        }
        let mode = ReconnectMode::ALL[usize::try_from(count % 4).unwrap_or(0)];
        let now = Instant::now();
        tracker.disturbing(&user_of(index), now);
        stats.disturbance(now);
        peers.reconnect(index, mode)?;
        count += 1;
    }
}

/// Restarts the laptops' daemons in turn, each time waiting for the gateway to register the
/// new session.
async fn restart_laptops(
    laptops: Arc<Vec<AsyncMutex<Laptop>>>,
    tracker: Arc<Tracker>,
    stats: Arc<Stats>,
    every: Duration,
    stop: CancellationToken,
) -> BenchResult<()> {
    if laptops.is_empty() || every.is_zero() {
        return Ok(());
    }
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut turn = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let mut laptop = laptops[turn % laptops.len()].lock().await;
        turn += 1;
        let user = laptop.user.clone();
        let before = tracker.registrations_of(&user);
        let now = Instant::now();
        tracker.disturbing(&user, now);
        stats.disturbance(now);
        laptop.restart_daemon().await?;
        drop(laptop);
        tracker
            .wait_for(
                Duration::from_secs(60),
                "a restarted laptop to register",
                |tracker| tracker.registrations_of(&user) > before,
            )
            .await
            .map_err(bench_error)?;
    }
}

/// Reads the gateway's memory at the end of every interval, and says how the run goes.
async fn sample(
    gateway: Arc<AsyncMutex<GatewayProcess>>,
    tracker: Arc<Tracker>,
    stats: Arc<Stats>,
    load_end: Instant,
    warm_up: Duration,
) -> BenchResult<()> {
    let mut slot = 0usize;
    loop {
        let boundary = (stats.load_start
            + stats.interval * u32::try_from(slot + 1).unwrap_or(u32::MAX))
        .min(load_end);
        tokio::time::sleep_until(tokio::time::Instant::from_std(boundary)).await;
        let memory = gateway.lock().await.memory()?;
        let sessions = tracker.live();
        stats.sample(slot, memory, sessions);
        let totals = stats.totals();
        let elapsed = boundary.saturating_duration_since(stats.load_start);
        eprintln!(
            "  [{:>4} s{}] calls {} (errors {}, cancelled {}, lost {}, misrouted {}, client failures {}), {} sessions, gateway VmRSS {:.1} MiB",
            elapsed.as_secs(),
            if elapsed <= warm_up { ", warm-up" } else { "" },
            totals.calls,
            totals.tool_errors,
            totals.cancelled,
            totals.lost,
            totals.misrouted + totals.progress_foreign,
            totals.transport,
            sessions,
            memory.rss as f64 / (1024.0 * 1024.0),
        );
        if boundary >= load_end {
            return Ok(());
        }
        slot += 1;
    }
}

/// The gateway's counters worth showing, from its `/metrics`.
async fn gateway_metrics(url: &str) -> Vec<(String, f64)> {
    let text = match reqwest::get(url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(error) => {
            eprintln!("  could not read the gateway's metrics: {error}");
            return Vec::new();
        }
    };
    let wanted = [
        "ibkr_gateway_relay_sessions",
        "ibkr_gateway_rate_limited_total",
        "ibkr_gateway_audit_dropped_total",
        "ibkr_gateway_audit_written_total",
        "ibkr_gateway_connections_rejected_total",
        "ibkr_gateway_connections_evicted_total",
    ];
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut calls_by_outcome: std::collections::BTreeMap<String, f64> = Default::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series.starts_with("ibkr_gateway_tool_calls_total{") {
            let outcome = series
                .split("outcome=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?");
            *calls_by_outcome.entry(outcome.to_string()).or_default() += value;
        } else if wanted
            .iter()
            .any(|name| series == *name || series.starts_with(&format!("{name}{{")))
        {
            rows.push((series.to_string(), value));
        }
    }
    for (outcome, value) in calls_by_outcome {
        rows.push((
            format!("ibkr_gateway_tool_calls_total{{outcome=\"{outcome}\"}} (all tools)"),
            value,
        ));
    }
    rows
}

/// The gateway's memory and its own count of registered sessions, now.
async fn reading(gateway: &AsyncMutex<GatewayProcess>) -> BenchResult<(crate::Memory, usize)> {
    let mut gateway = gateway.lock().await;
    let memory = gateway.memory()?;
    let live = gateway.live().await?;
    Ok((memory, live))
}

fn mint(
    issuer: &DevIssuer,
    subject: &str,
    audience: &str,
    scopes: &[&str],
    lifetime: Duration,
) -> BenchResult<String> {
    let mut request = TokenRequest::new(subject, audience, scopes);
    request.lifetime_seconds = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    Ok(issuer.mint(&request)?)
}

async fn wait_all_live(
    tracker: &Tracker,
    gateway: &AsyncMutex<GatewayProcess>,
    sidecars: usize,
) -> BenchResult<()> {
    tracker
        .wait_for(
            SESSIONS_LIMIT,
            "every session to be registered",
            |tracker| tracker.live() >= sidecars || tracker.missed() > 0,
        )
        .await
        .map_err(bench_error)?;
    if tracker.missed() > 0 {
        return Err(bench_error(
            "the gateway's session events lagged: the soak cannot follow the sessions",
        ));
    }
    let live = gateway.lock().await.live().await?;
    if live != sidecars {
        return Err(bench_error(format!(
            "the gateway has {live} live sessions, expected {sidecars}"
        )));
    }
    Ok(())
}

pub(crate) async fn run(args: SoakArgs) -> BenchResult<()> {
    let sidecars = usize::try_from(args.sidecars)?;
    let laptop_count = usize::try_from(args.laptops)?.min(sidecars - 1);
    let clients = usize::try_from(args.clients)?;
    if args.interval.is_zero() || args.duration.is_zero() {
        return Err(bench_error("--duration and --interval must be above 0"));
    }
    let exe = std::env::current_exe()?;
    let root = tempfile::tempdir()?;
    let gateway_state = root.path().join("gateway");
    let sidecars_dir = root.path().join("sidecars");
    eprintln!(
        "ibkr-bench soak: {clients} MCP clients, {sidecars} sidecars ({laptop_count} real laptops), {} s warm-up + {} s; everything on 127.0.0.1",
        args.warm_up.as_secs(),
        args.duration.as_secs()
    );

    eprintln!("[1/6] pairing {sidecars} sidecars (helper process) ...");
    let pairing = pair_in_helper(&exe, &gateway_state, &sidecars_dir, sidecars).await?;

    eprintln!("[2/6] gateway, relay peers and laptops ...");
    let issuer = DevIssuer::start(loopback(0)).await?;
    // What the gateway helper runs with (it builds the same configuration from the same
    // arguments).
    let gateway_config =
        gateway::soak_gateway_config(&issuer.issuer_url(), &gateway_state, sidecars);
    let tracker = Arc::new(Tracker::new());
    let gateway = GatewayProcess::start(
        &exe,
        &gateway_state,
        &issuer.issuer_url(),
        sidecars,
        Arc::clone(&tracker),
    )
    .await?;
    let relay_url = gateway.relay_url();
    let mcp_url = gateway.mcp_url();
    let metrics_url = gateway.metrics_url();
    eprintln!("  gateway pid {} at {}", gateway.pid(), mcp_url);
    let gateway = Arc::new(AsyncMutex::new(gateway));
    let peers = PeersProcess::start(
        &exe,
        &relay_url,
        &sidecars_dir,
        laptop_count,
        sidecars - laptop_count,
    )
    .await?;
    eprintln!(
        "  {} relay peer sessions open in {:.1} s (pid {})",
        peers.opened,
        peers.opening.as_secs_f64(),
        peers.pid()
    );
    let opening = peers.opening;
    let peers = Arc::new(peers);
    let mut laptop_list = Vec::with_capacity(laptop_count);
    for index in 0..laptop_count {
        laptop_list.push(AsyncMutex::new(
            Laptop::start(index, &sidecars_dir, &relay_url).await?,
        ));
    }
    let laptops = Arc::new(laptop_list);
    wait_all_live(&tracker, &gateway, sidecars).await?;

    eprintln!(
        "[3/6] idling {} s with every session open ...",
        SETTLE.as_secs()
    );
    tokio::time::sleep(SETTLE).await;
    let memory_start = reading(&gateway).await?;
    wait_all_live(&tracker, &gateway, sidecars).await?;

    // The agents.
    let mut laptop_accounts = Vec::new();
    for laptop in laptops.iter() {
        let laptop = laptop.lock().await;
        laptop_accounts.push((laptop.index, laptop.account.clone()));
    }
    let plan = plan_agents(clients, &laptop_accounts, sidecars);
    let total_load = args.warm_up + args.duration;
    let token_lifetime = total_load + Duration::from_secs(900);
    let mut agents = Vec::with_capacity(plan.len());
    for (id, (index, target)) in plan.into_iter().enumerate() {
        let user = user_of(index);
        let token_scopes: &[&str] = match target {
            Target::Peer => &[scopes::ORDERS_READ],
            Target::Laptop { .. } => laptops::LAPTOP_SCOPES,
        };
        agents.push(Agent {
            id,
            token: mint(&issuer, &user, &mcp_url, token_scopes, token_lifetime)?,
            user,
            target,
            stateless: id % 2 == 1,
        });
    }
    let busy_peers: Vec<usize> = {
        let mut busy: Vec<usize> = agents
            .iter()
            .filter(|agent| matches!(agent.target, Target::Peer))
            .filter_map(|agent| agent.user.trim_start_matches("bench-user-").parse().ok())
            .collect();
        busy.sort_unstable();
        busy.dedup();
        busy
    };
    let peer_users = busy_peers.len();

    eprintln!(
        "[4/6] load: {} agents for {} s ({} s warm-up) ...",
        agents.len(),
        total_load.as_secs(),
        args.warm_up.as_secs()
    );
    let load_average_start = report::load_average();
    let load_start = Instant::now();
    let load_end = load_start + total_load;
    let stats = Arc::new(Stats::new(load_start, args.interval));
    let orders = Arc::new(OrderLedger::default());
    let request_timeout = Duration::from_secs(gateway_config.sidecar.request_timeout_seconds);
    let shared = Arc::new(Shared {
        mcp_url: mcp_url.clone(),
        load_end,
        think: Duration::from_millis(args.think_ms),
        deadline: request_timeout + LOST_MARGIN,
        seed: args.seed,
        stats: Arc::clone(&stats),
        orders: Arc::clone(&orders),
    });
    let agent_count = agents.len();
    let mut agent_tasks = JoinSet::new();
    for agent in agents {
        agent_tasks.spawn(agents::run(Arc::clone(&shared), agent));
    }
    let stop_churn = CancellationToken::new();
    let reconnect_every = Duration::from_secs(60) / args.reconnects_per_minute.max(1);
    let peer_churn = (args.reconnects_per_minute > 0).then(|| {
        tokio::spawn(churn_peers(
            Arc::clone(&peers),
            Arc::clone(&tracker),
            Arc::clone(&stats),
            reconnect_every,
            (busy_peers, laptop_count..sidecars),
            args.seed,
            stop_churn.clone(),
        ))
    });
    let laptop_churn = tokio::spawn(restart_laptops(
        Arc::clone(&laptops),
        Arc::clone(&tracker),
        Arc::clone(&stats),
        args.laptop_restart_every,
        stop_churn.clone(),
    ));
    let sampler = tokio::spawn(sample(
        Arc::clone(&gateway),
        Arc::clone(&tracker),
        Arc::clone(&stats),
        load_end,
        args.warm_up,
    ));

    tokio::time::sleep_until(tokio::time::Instant::from_std(load_start + args.warm_up)).await;
    let memory_warm = reading(&gateway).await?;
    eprintln!(
        "  after warm-up: gateway VmRSS {:.2} MiB, {} sessions",
        memory_warm.0.rss as f64 / (1024.0 * 1024.0),
        memory_warm.1
    );
    tokio::time::sleep_until(tokio::time::Instant::from_std(load_end)).await;
    let memory_end = reading(&gateway).await?;
    let load_average_end = report::load_average();
    eprintln!(
        "  end: gateway VmRSS {:.2} MiB, {} sessions",
        memory_end.0.rss as f64 / (1024.0 * 1024.0),
        memory_end.1
    );

    eprintln!("[5/6] winding down ...");
    stop_churn.cancel();
    let reconnects_commanded = match peer_churn {
        Some(task) => task.await??,
        None => 0,
    };
    laptop_churn.await??;
    sampler.await??;
    let agents_done = async { while agent_tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.deadline + Duration::from_secs(60), agents_done)
        .await
        .is_err()
    {
        return Err(bench_error("some agents did not finish their last call"));
    }
    peers.settled(SESSIONS_LIMIT).await?;
    wait_all_live(&tracker, &gateway, sidecars).await?;
    tokio::time::sleep(SETTLE).await;
    let memory_after = reading(&gateway).await?;
    wait_all_live(&tracker, &gateway, sidecars).await?;
    let gateway_metrics = gateway_metrics(&metrics_url).await;
    let mut peers =
        Arc::try_unwrap(peers).map_err(|_| bench_error("the relay peers are still shared"))?;
    let peer_counters = peers.stats().await?;
    let reconnects = peers.reconnects();

    eprintln!("[6/6] stopping the laptops and auditing their orders ...");
    tracker.tear_down();
    let laptops =
        Arc::try_unwrap(laptops).map_err(|_| bench_error("the laptops are still shared"))?;
    let mut laptop_rows = Vec::new();
    let mut failures = Vec::new();
    for laptop in laptops {
        let mut laptop = laptop.into_inner();
        if laptop.daemon_failed() {
            failures.push(format!("the daemon of {} ended on its own", laptop.user));
        }
        laptop.stop_daemon().await?;
        let orders = orders.of(&laptop.user);
        let audit = laptop.audit(&orders.sent)?;
        let mut misrouted_orders = 0;
        let mut agent_duplicates = 0;
        for (key, coids) in &orders.placed {
            agent_duplicates += coids.len().saturating_sub(1);
            misrouted_orders += coids
                .iter()
                .filter(|coid| audit.coid_keys.get(*coid) != Some(key))
                .count();
        }
        laptop_rows.push(LaptopRow {
            audit,
            orders,
            restarts: laptop.restarts,
            misrouted_orders,
            agent_duplicates,
        });
        laptop.shutdown().await?;
    }
    peers.stop().await?;
    let gateway = Arc::try_unwrap(gateway)
        .map_err(|_| bench_error("the gateway is still shared"))?
        .into_inner();
    gateway.stop().await?;
    issuer.shutdown().await;

    let measured_from =
        usize::try_from(args.warm_up.as_nanos() / args.interval.as_nanos()).unwrap_or(0);
    let gathered = stats.gather(&tracker, measured_from);
    let gateway_rows = gateway::describe_config(&gateway_config);
    let command_line: Vec<String> = std::env::args().skip(1).collect();
    let report = Report {
        command: format!(
            "cargo run --release -p e2e --bin ibkr-bench -- {}",
            command_line.join(" ")
        ),
        machine: Machine::describe((load_average_start, load_average_end)),
        settings: vec![
            ("MCP clients".into(), format!("{agent_count} (half 2025-11-25 with sessions, half stateless 2026-07-28); {AGENTS_PER_LAPTOP} per laptop user, the rest over {peer_users} relay-peer users")),
            ("connected sidecars".into(), format!("{sidecars}: {} relay peers (helper process) + {laptop_count} real daemons with a CPGW simulator each", sidecars - laptop_count)),
            ("pause between a client's calls".into(), format!("uniform 0 to {} ms", 2 * args.think_ms)),
            ("relay peer reconnects".into(), format!("{} per minute ({reconnects_commanded} in all), modes in turn: abrupt, graceful, replace, drain", args.reconnects_per_minute)),
            ("laptop daemon restarts".into(), if args.laptop_restart_every.is_zero() { "none".into() } else { format!("one every {} s, in turn", args.laptop_restart_every.as_secs()) }),
            ("cancelled calls".into(), "40 % of ibkr_wait_for_fill (after 100 ms to its end), 2 % of ibkr_order_status (within 5 ms), 15 % of new buys (after 20 to 400 ms)".into()),
            ("a call is lost after".into(), format!("{} s without an answer (the gateway's request timeout + {} s)", shared.deadline.as_secs(), LOST_MARGIN.as_secs())),
            ("seed".into(), args.seed.to_string()),
        ],
        gateway_config: gateway_rows,
        sidecars,
        peers: sidecars - laptop_count,
        laptops: laptop_count,
        agents: agent_count,
        pairing,
        opening,
        warm_up: args.warm_up,
        duration: args.duration,
        interval: args.interval,
        measured_from,
        memory_start,
        memory_warm,
        memory_end,
        memory_after,
        gathered,
        tracker: tracker.summary(),
        reconnects,
        peer_counters,
        laptop_rows,
        gateway_metrics,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    if args.write_docs {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reliability.md");
        report::write_section(&path, &markdown)?;
        eprintln!("written to {}", path.display());
    }
    if let Some(path) = &args.output {
        report::write_section(path, &markdown)?;
        eprintln!("written to {}", path.display());
    }
    let verdict = report.verdict();
    if !failures.is_empty() {
        return Err(bench_error(failures.join("; ")));
    }
    if !verdict.passed() {
        return Err(bench_error("the soak failed a check (see the report)"));
    }
    Ok(())
}
