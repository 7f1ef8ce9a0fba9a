//! The speed run: what one relayed call costs next to the physical floors, and what the two
//! halves sustain under 1, 8 and 64 concurrent MCP sessions.
//!
//! The gateway and the sidecar daemon each run in their own process (this benchmark's binary,
//! re-executed as `serve-gateway` / `serve-sidecar`, which run the products' own command
//! lines), so their CPU time and context switches are their own (`procstat`). The CPGW
//! simulator (HTTPS), the development OAuth issuer and the MCP clients run in this process.
//! Everything listens on 127.0.0.1.
//!
//! Measured, each after a warm-up:
//! - floors: a websocket echo round trip (tokio-tungstenite on both ends, Nagle off) and an MCP
//!   `ping` through the gateway (authenticated, as every request is);
//! - the relay hop alone: `ibkr_market_status`, which the sidecar answers without CPGW;
//! - a full tool call: `ibkr_quote` through to the simulator, one call at a time, spaced so
//!   that IBKR's pacing (4 reads a second on the laptop) never makes a call wait, and rotating
//!   over five symbols so that no answer comes from the sidecar's quote reuse;
//! - closed-loop load from 1, 8 and 64 MCP sessions for both tools: calls a second, latency
//!   percentiles, refusals by code, CPGW requests, and the CPU and context switches of each
//!   process per call.

pub mod procstat;

use crate::{BenchResult, bench_error};
use e2e::system::{System, SystemOptions, loopback};
use futures_util::{SinkExt, StreamExt};
use procstat::{PerCall, ProcessCounters};
use protocol::catalog::scopes;
use rmcp::RoleClient;
use rmcp::model::{CallToolRequestParams, ClientRequest, PingRequest};
use rmcp::service::RunningService;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// The tool the sidecar answers without CPGW.
pub const HOP_TOOL: &str = "ibkr_market_status";
/// The tool that goes through to the simulator.
pub const FULL_TOOL: &str = "ibkr_quote";
/// Symbols the spaced full calls rotate over: each comes back after five calls, later than
/// the sidecar reuses a quote (1 s by default), so every call reaches CPGW.
const FULL_SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "SPY", "TSLA", "SHEL"];
/// Spacing of the full calls: IBKR's pacing lets reads through at 4 a second, and the
/// daemon's keep-alive (tickle, auth status) uses the same second; two calls a second leave
/// room for both, so no call waits for its turn.
const FULL_SPACING: Duration = Duration::from_millis(500);
/// Concurrency levels of the load runs.
pub const LOADS: [usize; 3] = [1, 8, 64];
/// Untimed calls before each timed series.
const WARM_UP: usize = 200;

/// What the speed run is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct SpeedSettings {
    /// Timed calls of each sequential floor and of the relay hop.
    pub sequential_calls: usize,
    /// Timed spaced full calls.
    pub full_calls: usize,
    /// Length of each timed load run.
    pub load_duration: Duration,
}

/// Latency percentiles of one series, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
        let at = |quantile: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((quantile * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            millis(samples[rank - 1])
        };
        let total: Duration = samples.iter().sum();
        Latency {
            calls: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: samples.last().copied().map_or(0.0, millis),
            mean_ms: if samples.is_empty() {
                0.0
            } else {
                millis(total) / samples.len() as f64
            },
        }
    }
}

/// CPU and context switches of both processes over a series, per call.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ProcessCost {
    pub gateway: PerCall,
    pub sidecar: PerCall,
    /// This process: the MCP clients, the CPGW simulator and the OAuth issuer, which share
    /// the machine's cores with the two halves.
    pub bench: PerCall,
}

impl ProcessCost {
    pub fn total_cpu_micros(&self) -> f64 {
        self.gateway.cpu_micros + self.sidecar.cpu_micros
    }
}

/// One closed-loop load run.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRun {
    pub tool: String,
    pub sessions: usize,
    pub seconds: f64,
    pub calls_per_second: f64,
    pub latency: Latency,
    /// Error results by code (a refused or failed call counts here, not in the latency).
    pub refusals: BTreeMap<String, usize>,
    /// Requests the simulator received during the run.
    pub cpgw_requests: usize,
    pub cost: ProcessCost,
}

impl LoadRun {
    pub fn refused(&self) -> usize {
        self.refusals.values().sum()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SpeedReport {
    pub websocket_echo: Latency,
    pub mcp_ping: Latency,
    pub relay_hop: Latency,
    pub relay_hop_cost: ProcessCost,
    pub full_call: Latency,
    pub full_call_cpgw_requests: usize,
    pub loads: Vec<LoadRun>,
}

/// A websocket echo server on 127.0.0.1 and `calls` timed round trips of a small binary
/// message through it.
async fn websocket_echo(calls: usize) -> BenchResult<Latency> {
    let listener = tokio::net::TcpListener::bind(loopback(0)).await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut socket = tokio_tungstenite::accept_async(socket).await?;
        while let Some(message) = socket.next().await {
            let message = message?;
            if message.is_binary() {
                socket.send(message).await?;
            } else if message.is_close() {
                break;
            }
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    });
    let (mut client, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{address}/"), None, true)
            .await?;
    let payload = vec![7u8; 64];
    let mut samples = Vec::with_capacity(calls);
    for index in 0..WARM_UP + calls {
        let started = Instant::now();
        client.send(Message::Binary(payload.clone().into())).await?;
        match client.next().await {
            Some(Ok(message)) if message.is_binary() => {}
            other => return Err(bench_error(format!("echo failed: {other:?}"))),
        }
        if index >= WARM_UP {
            samples.push(started.elapsed());
        }
    }
    let _ = client.close(None).await;
    let _ = server.await;
    Ok(Latency::of(samples))
}

type Client = RunningService<RoleClient, ()>;

/// What one call ended as.
enum Called {
    Answered,
    Refused(String),
}

async fn call_tool(client: &Client, tool: &str, arguments: &Value) -> BenchResult<Called> {
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = arguments
        && !map.is_empty()
    {
        params = params.with_arguments(map.clone());
    }
    let result = client.call_tool(params).await?;
    if result.is_error == Some(true) {
        let code = result
            .structured_content
            .as_ref()
            .and_then(|content| content["error"]["code"].as_str())
            .unwrap_or("UNKNOWN")
            .to_string();
        return Ok(Called::Refused(code));
    }
    Ok(Called::Answered)
}

/// `calls` timed sequential calls (after a warm-up), each of which must succeed.
async fn sequential(
    client: &Client,
    calls: usize,
    call: impl Fn(usize) -> (String, Value),
    spacing: Option<Duration>,
    warm_up: usize,
) -> BenchResult<Latency> {
    let mut samples = Vec::with_capacity(calls);
    for index in 0..warm_up + calls {
        let (tool, arguments) = call(index);
        let started = Instant::now();
        if let Called::Refused(code) = call_tool(client, &tool, &arguments).await? {
            return Err(bench_error(format!("{tool} refused with {code}")));
        }
        let took = started.elapsed();
        if index >= warm_up {
            samples.push(took);
        }
        if let Some(spacing) = spacing {
            tokio::time::sleep(spacing.saturating_sub(took)).await;
        }
    }
    Ok(Latency::of(samples))
}

async fn pings(client: &Client, calls: usize) -> BenchResult<Latency> {
    let mut samples = Vec::with_capacity(calls);
    for index in 0..WARM_UP + calls {
        let started = Instant::now();
        client
            .send_request(ClientRequest::PingRequest(PingRequest::default()))
            .await?;
        if index >= WARM_UP {
            samples.push(started.elapsed());
        }
    }
    Ok(Latency::of(samples))
}

/// The two products' processes and what the run needs to reach them.
struct Halves {
    system: System,
    gateway_pid: u32,
    sidecar_pid: u32,
    _gateway: e2e::processes::ChildProcess,
    _sidecar: e2e::processes::ChildProcess,
}

impl Halves {
    async fn start(exe: &Path) -> BenchResult<Halves> {
        let mut system = System::start(SystemOptions {
            // 64 agents of one user, all on this host: the per-subject and per-peer limits
            // would otherwise throttle the load runs (they guard against one abusive agent).
            rate_limit_per_minute: Some(1_000_000),
            max_connections_per_peer: Some(1024),
            ..SystemOptions::default()
        })
        .await
        .map_err(|error| bench_error(error.to_string()))?;
        // The sidecar first, while the gateway still runs here (its session event says it
        // registered); then the gateway moves to its own process on the same address and
        // state, and the sidecar reconnects to it.
        let sidecar = system
            .start_sidecar_process_with(exe, &["serve-sidecar"])
            .await
            .map_err(|error| bench_error(error.to_string()))?;
        let gateway = system
            .start_gateway_process_with(exe, &["serve-gateway"])
            .await
            .map_err(|error| bench_error(error.to_string()))?;
        system
            .wait_sidecar_connected()
            .await
            .map_err(|error| bench_error(error.to_string()))?;
        Ok(Halves {
            gateway_pid: gateway.pid(),
            sidecar_pid: sidecar.pid(),
            system,
            _gateway: gateway,
            _sidecar: sidecar,
        })
    }

    fn counters(&self) -> BenchResult<[ProcessCounters; 3]> {
        Ok([
            ProcessCounters::read(self.gateway_pid)?,
            ProcessCounters::read(self.sidecar_pid)?,
            ProcessCounters::read(std::process::id())?,
        ])
    }

    fn cost_since(&self, before: [ProcessCounters; 3], calls: usize) -> BenchResult<ProcessCost> {
        let [gateway, sidecar, bench] = self.counters()?;
        Ok(ProcessCost {
            gateway: before[0].per_call(gateway, calls),
            sidecar: before[1].per_call(sidecar, calls),
            bench: before[2].per_call(bench, calls),
        })
    }

    async fn client(&self) -> BenchResult<Client> {
        let token = self
            .system
            .token(&[scopes::MARKETDATA_READ, scopes::HEALTH_READ])
            .map_err(|error| bench_error(error.to_string()))?;
        self.system
            .mcp_client(&token)
            .await
            .map_err(|error| bench_error(error.to_string()))
    }
}

/// `sessions` MCP sessions call `tool` back to back for `duration` (after a short warm-up).
async fn load(
    halves: &Halves,
    tool: &'static str,
    arguments: Value,
    sessions: usize,
    duration: Duration,
) -> BenchResult<LoadRun> {
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        clients.push(Arc::new(halves.client().await?));
    }
    let arguments = Arc::new(arguments);
    // Warm-up: every session once, so connections and sessions exist.
    for client in &clients {
        call_tool(client, tool, &arguments).await?;
    }
    let requests_before = halves.system.sim.request_log().len();
    let before = halves.counters()?;
    let started = Instant::now();
    let until = started + duration;
    let mut workers = JoinSet::new();
    for client in &clients {
        let client = Arc::clone(client);
        let arguments = Arc::clone(&arguments);
        workers.spawn(async move {
            let mut samples = Vec::new();
            let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
            while Instant::now() < until {
                let call_started = Instant::now();
                match call_tool(&client, tool, &arguments).await? {
                    Called::Answered => samples.push(call_started.elapsed()),
                    Called::Refused(code) => *refusals.entry(code).or_default() += 1,
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((samples, refusals))
        });
    }
    let mut samples = Vec::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = workers.join_next().await {
        let (mut some, refused) = done??;
        samples.append(&mut some);
        for (code, count) in refused {
            *refusals.entry(code).or_default() += count;
        }
    }
    let elapsed = started.elapsed();
    let calls = samples.len() + refusals.values().sum::<usize>();
    let cost = halves.cost_since(before, calls)?;
    let cpgw_requests = halves
        .system
        .sim
        .request_log()
        .len()
        .saturating_sub(requests_before);
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            let _ = client.cancel().await;
        }
    }
    Ok(LoadRun {
        tool: tool.to_string(),
        sessions,
        seconds: elapsed.as_secs_f64(),
        calls_per_second: samples.len() as f64 / elapsed.as_secs_f64(),
        latency: Latency::of(samples),
        refusals,
        cpgw_requests,
        cost,
    })
}

pub async fn run(settings: SpeedSettings) -> BenchResult<SpeedReport> {
    let exe = std::env::current_exe()?;
    eprintln!("  websocket echo floor ...");
    let websocket_echo = websocket_echo(settings.sequential_calls).await?;

    eprintln!("  starting the gateway and the sidecar daemon in their own processes ...");
    let halves = Halves::start(&exe).await?;
    let client = halves.client().await?;

    eprintln!("  MCP ping floor ...");
    let mcp_ping = pings(&client, settings.sequential_calls).await?;

    eprintln!("  relay hop ({HOP_TOOL}), one call at a time ...");
    // Warm-up outside the CPU window.
    sequential(&client, 0, |_| (HOP_TOOL.into(), json!({})), None, WARM_UP).await?;
    let before = halves.counters()?;
    let relay_hop = sequential(
        &client,
        settings.sequential_calls,
        |_| (HOP_TOOL.into(), json!({})),
        None,
        0,
    )
    .await?;
    let relay_hop_cost = halves.cost_since(before, settings.sequential_calls)?;

    eprintln!(
        "  full call ({FULL_TOOL} to the simulator), {} calls spaced {} ms ...",
        settings.full_calls,
        FULL_SPACING.as_millis()
    );
    let quote = |index: usize| {
        (
            FULL_TOOL.to_string(),
            json!({"symbol": FULL_SYMBOLS[index % FULL_SYMBOLS.len()]}),
        )
    };
    // Each symbol once, so that its contract is cached as it is for an agent that quotes it
    // again.
    sequential(&client, 0, quote, Some(FULL_SPACING), FULL_SYMBOLS.len()).await?;
    let requests_before = halves.system.sim.request_log().len();
    let full_call = sequential(
        &client,
        settings.full_calls,
        move |index| quote(index + FULL_SYMBOLS.len()),
        Some(FULL_SPACING),
        0,
    )
    .await?;
    let full_call_cpgw_requests = halves
        .system
        .sim
        .request_log()
        .len()
        .saturating_sub(requests_before);
    let _ = client.cancel().await;

    let mut loads = Vec::new();
    for (tool, arguments) in [
        (HOP_TOOL, json!({})),
        (FULL_TOOL, json!({"symbol": "AAPL"})),
    ] {
        for sessions in LOADS {
            eprintln!(
                "  {tool} from {sessions} MCP sessions for {} s ...",
                settings.load_duration.as_secs()
            );
            loads.push(
                load(
                    &halves,
                    tool,
                    arguments.clone(),
                    sessions,
                    settings.load_duration,
                )
                .await?,
            );
        }
    }
    let Halves { system, .. } = halves;
    system.shutdown().await;
    Ok(SpeedReport {
        websocket_echo,
        mcp_ping,
        relay_hop,
        relay_hop_cost,
        full_call,
        full_call_cpgw_requests,
        loads,
    })
}
