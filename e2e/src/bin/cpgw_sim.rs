//! `cpgw-sim`: runs the CPGW simulator until Ctrl-C.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use std::time::Duration;

use e2e::cpgw_sim::{
    AccountType, AuthState, CancelAckShape, CpgwSimulator, DEFAULT_START, Decimal, MarketHours,
    SessionPhase, SimClock, SimConfig, SimScenario,
};

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
    /// Clock start (RFC 3339); the clock then runs at real speed. Default:
    /// a Tuesday, 10:00 New York.
    #[arg(long, value_parser = parse_start)]
    start: Option<time::OffsetDateTime>,
    /// Start with every quirk off (no warm-ups, no lag, no pacing, no derived
    /// questions); the flags below still apply on top.
    #[arg(long)]
    ideal: bool,
    /// Session phase: from the clock (default) or pinned.
    #[arg(long, value_enum, default_value_t = MarketArg::Clock)]
    market: MarketArg,
    /// Answer the first snapshot of each conid with values at once.
    #[arg(long)]
    no_snapshot_warmup: bool,
    /// Answer `/iserver/account/orders` and `/trades` without a pre-flight.
    #[arg(long)]
    no_orders_preflight: bool,
    /// List orders without `accountId` too.
    #[arg(long)]
    orders_without_account_id: bool,
    /// Switch pacing (429s, penalty box) off.
    #[arg(long)]
    no_pacing: bool,
    /// Ask no questions derived from the orders themselves.
    #[arg(long)]
    no_order_warnings: bool,
    /// The session has no market data subscription (`o354` on every order).
    #[arg(long)]
    no_market_data: bool,
    /// A cash account: shorts are refused.
    #[arg(long)]
    cash_account: bool,
    /// Serve `/iserver` and `/portfolio/{acct}` without the accounts calls first.
    #[arg(long)]
    no_accounts_priming: bool,
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
    /// Seconds a fill waits before positions show it.
    #[arg(long)]
    positions_lag_secs: Option<u64>,
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
    /// Seconds without any request before the session lapses (0: never).
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
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
enum MarketArg {
    /// From the clock, New York equity hours.
    Clock,
    Regular,
    PreMarket,
    AfterHours,
    Closed,
}

impl From<MarketArg> for MarketHours {
    fn from(market: MarketArg) -> Self {
        match market {
            MarketArg::Clock => MarketHours::FromClock,
            MarketArg::Regular => MarketHours::Fixed(SessionPhase::Regular),
            MarketArg::PreMarket => MarketHours::Fixed(SessionPhase::PreMarket),
            MarketArg::AfterHours => MarketHours::Fixed(SessionPhase::AfterHours),
            MarketArg::Closed => MarketHours::Fixed(SessionPhase::Closed),
        }
    }
}

fn parse_start(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|error| error.to_string())
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
        if !matches!(self.market, MarketArg::Clock) || !self.ideal {
            scenario.market = self.market.into();
        }
        scenario.snapshot_warmup &= !self.no_snapshot_warmup;
        scenario.orders_preflight &= !self.no_orders_preflight;
        scenario.trades_preflight &= !self.no_orders_preflight;
        scenario.orders_need_account_id &= !self.orders_without_account_id;
        scenario.pacing &= !self.no_pacing;
        scenario.order_warnings &= !self.no_order_warnings;
        scenario.market_data_subscribed = !self.no_market_data;
        if self.cash_account {
            scenario.account_type = AccountType::Cash;
        }
        scenario.accounts_priming &= !self.no_accounts_priming;
        scenario.warning_rounds = self.warning_rounds.clone();
        scenario.fail_with_503_after_landing = self.fail_503_after_landing;
        if let Some(steps) = self.partial_fill_steps {
            scenario.partial_fill_steps = steps;
        }
        if let Some(lag) = self.positions_lag_secs {
            scenario.positions_lag = Duration::from_secs(lag);
        }
        if let Some(size) = self.positions_page_size {
            scenario.positions_page_size = size;
        }
        if let Some(shape) = self.cancel_ack_shape {
            scenario.cancel_ack_shape = shape.into();
        }
        scenario.cancel_as_api_cancelled = self.api_cancelled;
        scenario.inactive_orders = self.inactive_orders;
        if let Some(seconds) = self.idle_timeout_secs {
            scenario.session_idle_timeout = (seconds > 0).then(|| Duration::from_secs(seconds));
        }
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
        clock: SimClock::flowing(args.start.unwrap_or(DEFAULT_START)),
        ..SimConfig::default()
    })
    .await?;
    println!("{}", sim.base_url());
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
