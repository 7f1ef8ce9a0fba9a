//! `ibkr-bench`: what the product costs on this machine, next to the physical floors and the
//! targets, in one run (loopback only: every socket is on 127.0.0.1).
//!
//! 1. Speed ([`speed`]): a websocket echo and an MCP `ping` (the floors), the relay hop alone
//!    and a full tool call to the CPGW simulator, closed-loop load from 1, 8 and 64 MCP
//!    sessions, and the CPU time and context switches per call of the gateway and of the
//!    sidecar daemon, each in its own process.
//! 2. Idle relay sessions ([`idle_relay`]): the gateway's memory per idle relay session, then a
//!    gateway restart with all of them connected: the time until every sidecar is back.
//! 3. Idle MCP sessions ([`mcp_sessions`]): the gateway's memory per idle MCP session, and what
//!    is left after they close, over several rounds.
//!
//! It prints every figure next to its floor and target ([`report`]), and with `--write-docs`
//! writes the results into `docs/benchmarks.md` and `docs/benchmarks.json`.
//!
//! `ibkr-bench soak` is a separate run: hundreds of MCP clients and a thousand connected
//! sidecars for minutes, with reconnects and cancellations (see the `soak` module).
//! `ibkr-bench cluster` measures what a call that crosses gateway replicas costs next to the
//! same call on the replica that holds the sidecar (see the `cluster` module).
#![forbid(unsafe_code)]

mod cluster;
mod idle_relay;
mod mcp_sessions;
mod report;
mod soak;
mod speed;

pub(crate) use idle_relay::{
    Credentials, helper_command, is_loopback_relay, load_credentials, pair_in_helper,
    parse_numbers, send_frame, sidecar_dir,
};

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The products' allocator (see `gateway/src/main.rs`), so that `serve-gateway` and
/// `serve-sidecar` run as the released binaries do.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Debug)]
#[command(
    name = "ibkr-bench",
    about = "Measure the IBKR agent gateway and sidecar on this machine (loopback only): latency next to its floors, throughput, CPU per call, memory per session, reconnects"
)]
struct Args {
    /// Timed calls of each one-at-a-time series (floors and relay hop).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    calls: u32,
    /// Timed full calls to the simulator, one at a time (paced: 4 a second).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(5..=2000))]
    full_calls: u32,
    /// Seconds of each load run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=600))]
    load_seconds: u64,
    /// Idle relay sessions to hold open (memory) and to bring back after the restart.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=5000))]
    connections: u32,
    /// Idle MCP sessions per round of the MCP session run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    mcp_sessions: u32,
    /// Rounds of opening and closing the MCP sessions.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    mcp_rounds: u32,
    /// Also measure the sidecar side of the idle sessions with tungstenite's default websocket
    /// settings (about 150 MiB more for 1,000 sessions).
    #[arg(long)]
    compare_tungstenite_defaults: bool,
    /// Run one part only (`speed`, `relay-sessions` or `mcp-sessions`), to profile it; the
    /// results cannot be written to the docs then.
    #[arg(long, value_parser = ["speed", "relay-sessions", "mcp-sessions"])]
    only: Option<String>,
    /// Write the results into docs/benchmarks.md (between its result markers) and
    /// docs/benchmarks.json.
    #[arg(long)]
    write_docs: bool,
    #[command(subcommand)]
    command: Option<Helper>,
}

/// The soak, and the helper processes of the runs (started by the benchmark itself).
#[derive(Subcommand, Debug)]
enum Helper {
    /// Two gateway replicas on a private PostgreSQL and NATS: a call through the replica that
    /// holds the sidecar next to the same call forwarded from the other one (latency p50/p99,
    /// calls per second).
    Cluster(cluster::ClusterArgs),
    /// Hundreds of MCP clients and a thousand connected sidecars for minutes, with sidecars
    /// reconnecting and calls cancelled throughout: counts lost, misrouted and duplicated
    /// answers and follows the gateway's memory and latency over time.
    Soak(soak::SoakArgs),
    /// The soak's gateway, alone in its process.
    #[command(hide = true)]
    SoakGateway(soak::GatewayHelperArgs),
    /// The soak's relay peers.
    #[command(hide = true)]
    SoakPeers(soak::PeersHelperArgs),
    /// Pairs `count` sidecars (one directory each under `sidecars_dir`) with a gateway on
    /// `gateway_state_dir`, then stops it. Prints `PAIRED <count> <microseconds>`.
    #[command(hide = true)]
    PairSidecars {
        #[arg(long)]
        gateway_state_dir: PathBuf,
        #[arg(long)]
        sidecars_dir: PathBuf,
        #[arg(long)]
        count: usize,
    },
    /// Loads the credentials of `count` paired sidecars and prints `LOADED <rss> <rss anon>`.
    /// Then, commanded on stdin: `OPEN <k>` opens k more relay sessions and holds them
    /// (answering pings), printing `OPENED <open sessions>`; `REPORT` prints
    /// `MEMORY <rss> <rss anon> <open sessions>`; `STOP` (or EOF) closes them all and exits.
    #[command(hide = true)]
    HoldSessions {
        #[arg(long)]
        relay_url: String,
        #[arg(long)]
        sidecars_dir: PathBuf,
        #[arg(long)]
        count: usize,
        /// Dial with tungstenite's default websocket settings instead of the sidecar's.
        #[arg(long)]
        tungstenite_defaults: bool,
        /// Come back when the gateway ends a session, on the sidecar daemon's schedule.
        #[arg(long)]
        reconnect: bool,
    },
}

fn bench_error(message: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    message.into().into()
}

// ---- process memory ----------------------------------------------------------------------

/// Resident memory of this process, from `/proc/self/status`.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Memory {
    /// `VmRSS`: every resident page.
    rss: u64,
    /// `RssAnon`: resident anonymous pages (heap, stacks), without mapped files.
    anon: u64,
}

fn status_field_bytes(status: &str, field: &str) -> BenchResult<u64> {
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .ok_or_else(|| bench_error(format!("the process status has no {field}")))?;
    let kib: u64 = line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|_| bench_error(format!("cannot read {field} in the process status")))?;
    Ok(kib * 1024)
}

fn memory() -> BenchResult<Memory> {
    memory_of("/proc/self/status")
}

/// Resident memory of a process, from its `status` file under `/proc`.
fn memory_of(status_path: &str) -> BenchResult<Memory> {
    let status = std::fs::read_to_string(status_path)?;
    Ok(Memory {
        rss: status_field_bytes(&status, "VmRSS:")?,
        anon: status_field_bytes(&status, "RssAnon:")?,
    })
}

async fn run(args: Args) -> BenchResult<()> {
    let started = std::time::Instant::now();
    eprintln!(
        "ibkr-bench: everything on 127.0.0.1; {} CPUs",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let part = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    if args.only.is_some() && args.write_docs {
        return Err(bench_error("--write-docs needs the whole run, not --only"));
    }
    // First, while this process's heap has served nothing else: the idle relay run measures
    // a gateway that runs in this process.
    let idle = if part("relay-sessions") {
        eprintln!("[1/3] idle relay sessions and a gateway restart");
        Some(
            idle_relay::idle_sessions(args.connections as usize, args.compare_tungstenite_defaults)
                .await?,
        )
    } else {
        None
    };
    let mcp = if part("mcp-sessions") {
        eprintln!("[2/3] idle MCP sessions");
        Some(mcp_sessions::run(args.mcp_sessions as usize, args.mcp_rounds as usize).await?)
    } else {
        None
    };
    let speed = if part("speed") {
        eprintln!("[3/3] speed");
        Some(
            speed::run(speed::SpeedSettings {
                sequential_calls: args.calls as usize,
                full_calls: args.full_calls as usize,
                load_duration: Duration::from_secs(args.load_seconds),
            })
            .await?,
        )
    } else {
        None
    };
    let results = report::Results {
        machine: report::Machine::here(),
        command: std::iter::once("cargo run --release -p e2e --bin ibkr-bench --".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        took_seconds: started.elapsed().as_secs_f64(),
        speed,
        idle,
        mcp,
    };
    report::print(&results);
    if args.write_docs {
        report::write_docs(&results)?;
    }
    Ok(())
}

/// The helpers that run the products' own command lines in a process of their own
/// (`serve-gateway ARGS...` = `ibkr-gateway ARGS...`, `serve-sidecar ARGS...` =
/// `ibkr-agent ARGS...`), so that the speed run measures each process alone without needing
/// the two binaries built beside this one.
fn run_product(args: &[String]) -> Option<ExitCode> {
    match args.get(1).map(String::as_str) {
        Some("serve-gateway") => {
            // As `ibkr-gateway`'s main does.
            let _ = tikv_jemalloc_ctl::background_thread::write(true);
            let cli = <ibkr_gateway::cli::Cli as clap::Parser>::parse_from(
                std::iter::once("ibkr-gateway".to_string()).chain(args[2..].iter().cloned()),
            );
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return Some(ExitCode::FAILURE);
                }
            };
            Some(runtime.block_on(ibkr_gateway::cli::run(cli)))
        }
        Some("serve-sidecar") => Some(ibkr_agent::cli::main_from(
            std::iter::once("ibkr-agent".to_string()).chain(args[2..].iter().cloned()),
        )),
        _ => None,
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    if let Some(code) = run_product(&raw) {
        return code;
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ibkr-bench failed: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    e2e::log_errors_to_stderr();
    let outcome = runtime.block_on(async {
        match args.command {
            Some(Helper::PairSidecars {
                gateway_state_dir,
                sidecars_dir,
                count,
            }) => idle_relay::pair_sidecars(&gateway_state_dir, &sidecars_dir, count).await,
            Some(Helper::HoldSessions {
                relay_url,
                sidecars_dir,
                count,
                tungstenite_defaults,
                reconnect,
            }) => {
                idle_relay::hold_sessions(
                    &relay_url,
                    &sidecars_dir,
                    count,
                    tungstenite_defaults,
                    reconnect,
                )
                .await
            }
            Some(Helper::Cluster(cluster_args)) => cluster::run(cluster_args).await,
            Some(Helper::Soak(soak_args)) => soak::run(soak_args).await,
            Some(Helper::SoakGateway(helper_args)) => soak::gateway_helper(helper_args).await,
            Some(Helper::SoakPeers(helper_args)) => soak::peers_helper(helper_args).await,
            None => run(args).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ibkr-bench failed: {error}");
            ExitCode::FAILURE
        }
    }
}
