//! `cpgw-sim`: runs the CPGW simulator until Ctrl-C.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use e2e::cpgw_sim::{AuthState, CancelAckShape, CpgwSimulator, Decimal, SimConfig, SimScenario};

/// Imitates IBKR's Client Portal Gateway over HTTPS with a fresh
/// self-signed certificate. Offers no login endpoint.
#[derive(Parser, Debug)]
#[command(name = "cpgw-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Session state at start.
    #[arg(long, value_enum, default_value_t = StateArg::LoggedIn)]
    state: StateArg,
    /// Seed of the deterministic price walk.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Cash in the paper account at start, in USD.
    #[arg(long, default_value = "100000")]
    starting_cash: Decimal,
    /// Start with every quirk off (no warm-ups, no positions lag); the flags
    /// below still apply on top.
    #[arg(long)]
    ideal: bool,
    /// Market closed: orders are parked as PreSubmitted until it opens.
    #[arg(long)]
    market_closed: bool,
    /// Answer the first snapshot of each conid with values at once.
    #[arg(long)]
    no_snapshot_warmup: bool,
    /// Answer the first `/iserver/account/orders` with the full list.
    #[arg(long)]
    no_orders_warmup: bool,
    /// Prefix field 31 with `C` (previous close) or `H` (halted).
    #[arg(long, value_enum, ignore_case = true)]
    price_prefix: Option<PrefixArg>,
    /// Confirmation rounds per submission, comma separated (e.g. `o163,o354`).
    #[arg(long, value_delimiter = ',')]
    warning_rounds: Vec<String>,
    /// Answer the next N placements with HTTP 503 although they landed.
    #[arg(long, default_value_t = 0)]
    fail_503_after_landing: u32,
    /// Fill executable orders in K slices, one per status poll.
    #[arg(long)]
    partial_fill_steps: Option<u32>,
    /// Position-page requests a fill waits before it shows.
    #[arg(long)]
    positions_lag_requests: Option<u32>,
    /// Rows per positions page.
    #[arg(long)]
    positions_page_size: Option<usize>,
    /// Shape of cancel answers.
    #[arg(long, value_enum)]
    cancel_ack_shape: Option<CancelShapeArg>,
    /// Cancelled orders end as ApiCancelled instead of Cancelled.
    #[arg(long)]
    api_cancelled: bool,
    /// New orders are parked dead as Inactive.
    #[arg(long)]
    inactive_orders: bool,
    /// The session lapses after N requests without a tickle.
    #[arg(long)]
    idle_lapse_requests: Option<u64>,
    /// Where an idle lapse leaves the session.
    #[arg(long, value_enum, default_value_t = StateArg::ConnectedOnly)]
    idle_lapse_state: StateArg,
    /// Another session competes for the brokerage session.
    #[arg(long)]
    competing: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    LoggedIn,
    ConnectedOnly,
    LoggedOut,
}

impl From<StateArg> for AuthState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::LoggedIn => AuthState::LoggedIn,
            StateArg::ConnectedOnly => AuthState::ConnectedOnly,
            StateArg::LoggedOut => AuthState::LoggedOut,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PrefixArg {
    /// Previous close.
    C,
    /// Halted.
    H,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CancelShapeArg {
    /// `{"msg":"Request was submitted",...}`
    RequestSubmitted,
    /// `{"order_id":..,"msg":"Order cancelled"}`
    OrderCancelled,
    /// `{"error":"OrderID ... doesn't exist"}`
    DoesNotExist,
}

impl From<CancelShapeArg> for CancelAckShape {
    fn from(shape: CancelShapeArg) -> Self {
        match shape {
            CancelShapeArg::RequestSubmitted => CancelAckShape::RequestSubmitted,
            CancelShapeArg::OrderCancelled => CancelAckShape::OrderCancelled,
            CancelShapeArg::DoesNotExist => CancelAckShape::DoesNotExist,
        }
    }
}

impl Args {
    fn scenario(&self) -> SimScenario {
        let mut scenario = if self.ideal {
            SimScenario::ideal()
        } else {
            SimScenario::default()
        };
        scenario.price_prefix = self.price_prefix.map(|prefix| match prefix {
            PrefixArg::C => 'C',
            PrefixArg::H => 'H',
        });
        scenario.market_open = !self.market_closed;
        scenario.snapshot_warmup &= !self.no_snapshot_warmup;
        scenario.orders_warmup &= !self.no_orders_warmup;
        scenario.warning_rounds = self.warning_rounds.clone();
        scenario.fail_with_503_after_landing = self.fail_503_after_landing;
        if let Some(steps) = self.partial_fill_steps {
            scenario.partial_fill_steps = steps;
        }
        if let Some(lag) = self.positions_lag_requests {
            scenario.positions_lag_requests = lag;
        }
        if let Some(size) = self.positions_page_size {
            scenario.positions_page_size = size;
        }
        if let Some(shape) = self.cancel_ack_shape {
            scenario.cancel_ack_shape = shape.into();
        }
        scenario.cancel_as_api_cancelled = self.api_cancelled;
        scenario.inactive_orders = self.inactive_orders;
        scenario.session_idle_lapse_requests = self.idle_lapse_requests;
        scenario.idle_lapse_state = self.idle_lapse_state.into();
        scenario.competing = self.competing;
        scenario
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on non-loopback address {}; this is a test fake",
            args.listen
        );
    }
    let scenario = args.scenario();
    let sim = CpgwSimulator::start(SimConfig {
        listen: args.listen,
        auth_state: args.state.into(),
        seed: args.seed,
        scenario,
        starting_cash: args.starting_cash,
        ..SimConfig::default()
    })
    .await?;
    println!("{}", sim.base_url());
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
