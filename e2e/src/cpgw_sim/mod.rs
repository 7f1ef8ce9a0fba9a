//! A faithful-enough imitation of IBKR's Client Portal Gateway (CPGW) for
//! tests and the demo: HTTPS with a self-signed certificate, base path
//! `/v1/api`, and session behaviour that tests can switch at run time.
//!
//! There is deliberately no login endpoint: the real login is a browser flow
//! with 2FA that the product must never automate, so the simulator offers
//! nothing the product could learn to script.
//!
//! Trading: one paper account (`DU1234567` by default, 100 000 USD cash,
//! fractions and cash quantities allowed) and the instruments AAPL 265598,
//! MSFT 272093, SPY 756733 (ARCA), TSLA 76792991, SAP (IBIS, EUR only) and
//! SHEL (LSE listed before NYSE). Quotes walk deterministically from
//! [`SimConfig::seed`], one step per snapshot request; [`CpgwSimulator::set_price`]
//! pins a quote for exact assertions. Money and quantities are exact
//! decimals throughout.
//!
//! The simulator is a witness, not an accomplice: each CPGW behaviour it
//! reproduces cites its source (IBKR's documentation, or a public report
//! from an IBKR client project), and where a source is unclear it takes the
//! stricter plausible behaviour. docs/cpgw-simulator.md lists every quirk,
//! its [`SimScenario`] knob and its source. Time comes from an injected
//! [`SimClock`]: tests move it with [`CpgwSimulator::advance`].

mod book;
mod clock;
mod engine;
mod market;
mod market_routes;
mod order_routes;
mod orders;
mod pacing;
mod portfolio_routes;
mod questions;
mod routes;
mod scenario;
mod state;
mod tls;
mod trading_routes;
mod whatif;
mod wire;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, net::TcpStream, task::JoinHandle, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use book::SimPosition;
pub use clock::{DEFAULT_START, SessionPhase, SimClock, phase_at};
pub use market::SimQuote;
pub use orders::{SimExecution, SimOrder, SimOrderStatus};
pub use pacing::PacingReport;
pub use rust_decimal::Decimal;
pub use scenario::{AccountType, CancelAckShape, MarketHours, PreflightShape, SimScenario};
pub use state::{AuthState, IsPaperShape, LoggedRequest, SimAccount, SimCounters};
use state::{SharedState, SimState};

/// A client that stalls its TLS handshake must not pin a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long graceful shutdown waits for in-flight requests before aborting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (for example out of file descriptors) so
/// the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// How to start a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Session state at start.
    pub auth_state: AuthState,
    /// The account the session sees.
    pub account: SimAccount,
    /// Seed of the deterministic price walk.
    pub seed: u64,
    /// Quirks switched on at start.
    pub scenario: SimScenario,
    /// Cash in the account at start, in USD.
    pub starting_cash: Decimal,
    /// The simulator's clock. Keep a clone to move time from a test.
    pub clock: SimClock,
}

impl Default for SimConfig {
    /// `127.0.0.1:0`, logged in, paper account `DU1234567` with 100 000 USD,
    /// seed 0, [`SimScenario::default`], a clock flowing at real speed from
    /// [`DEFAULT_START`] (a weekday inside regular trading hours).
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth_state: AuthState::LoggedIn,
            account: SimAccount::paper(),
            seed: 0,
            scenario: SimScenario::default(),
            starting_cash: Decimal::from(100_000),
            clock: SimClock::default(),
        }
    }
}

/// A running simulator. Dropping it stops the server without waiting; call
/// [`CpgwSimulator::shutdown`] to stop gracefully.
/// A hold on order answers (see [`CpgwSimulator::hold_order_answers`]).
#[derive(Clone, Debug)]
pub struct OrderAnswerHold {
    released: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<tokio::sync::watch::Sender<usize>>,
}

impl OrderAnswerHold {
    fn new() -> OrderAnswerHold {
        OrderAnswerHold {
            released: Arc::new(tokio::sync::watch::channel(false).0),
            held: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    pub(crate) async fn wait_for_release(&self) {
        let mut released = self.released.subscribe();
        self.held.send_modify(|count| *count += 1);
        let _ = released.wait_for(|released| *released).await;
    }

    /// Waits until `count` answers are held (their orders have landed).
    pub async fn wait_held(&self, count: usize) {
        let _ = self.held.subscribe().wait_for(|held| *held >= count).await;
    }

    /// Lets every held answer (and any later one) go.
    pub fn release(&self) {
        self.released.send_replace(true);
    }
}

pub struct CpgwSimulator {
    local_addr: SocketAddr,
    certificate_der: Vec<u8>,
    state: SharedState,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl CpgwSimulator {
    /// Generates a fresh certificate, binds `config.listen` and starts
    /// serving. Returns once the listener is bound, so the address is
    /// immediately connectable.
    pub async fn start(config: SimConfig) -> std::io::Result<CpgwSimulator> {
        let sim_tls = tls::generate()?;
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let state = SharedState::new(SimState::new(
            config.auth_state,
            config.account,
            config.seed,
            config.scenario,
            config.starting_cash,
            config.clock,
        ));
        let app = routes::router(state.clone());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::clone(&sim_tls.server_config)),
            app,
            shutdown.clone(),
        ));
        Ok(CpgwSimulator {
            local_addr,
            certificate_der: sim_tls.certificate_der,
            state,
            shutdown,
            server: Some(server),
        })
    }

    /// Base URL of the API, e.g. `https://127.0.0.1:5000/v1/api`.
    pub fn base_url(&self) -> String {
        format!("https://{}/v1/api", self.local_addr)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// DER of the self-signed server certificate, for clients that pin it.
    pub fn certificate_der(&self) -> Vec<u8> {
        self.certificate_der.clone()
    }

    /// Switches the session state; takes effect for the next request.
    /// Logging back in opens a new brokerage session (pre-flights start over).
    pub fn set_auth_state(&self, state: AuthState) {
        self.state.lock().set_auth_state(state);
    }

    /// The simulator's clock (a shared handle).
    pub fn clock(&self) -> SimClock {
        self.state.lock().clock.clone()
    }

    /// Moves the clock forward and applies what the time did (expiry,
    /// positions lag, lapses, session changes), as the next request would.
    pub fn advance(&self, by: Duration) {
        let mut guard = self.state.lock();
        guard.clock.advance(by);
        let now = guard.clock.now_ms();
        guard.on_time(now);
    }

    /// What pacing refused so far, and the penalty box.
    pub fn pacing(&self) -> PacingReport {
        self.state.lock().pacer.report.clone()
    }

    /// The current session state (changed by `ssodh/init` as well).
    pub fn auth_state(&self) -> AuthState {
        self.state.lock().auth_state
    }

    /// Holds the answer to every order placement (the orders land at once) until the returned
    /// hold is released or dropped. A test control, not a CPGW behaviour: it stands for a slow
    /// network or CPGW between landing and answering, the moment a relay or a process can be
    /// cut with an order in flight.
    pub fn hold_order_answers(&self) -> OrderAnswerHold {
        let hold = OrderAnswerHold::new();
        self.state.lock().answer_hold = Some(hold.clone());
        hold
    }

    /// Ends a hold from [`CpgwSimulator::hold_order_answers`]: held answers go out.
    pub fn release_order_answers(&self) {
        if let Some(hold) = self.state.lock().answer_hold.take() {
            hold.release();
        }
    }

    /// Makes `ssodh/init` answer HTTP 500 `{"error":"no bridge"}` while true.
    pub fn set_ssodh_init_fails(&self, fail: bool) {
        self.state.lock().ssodh_init_fails = fail;
    }

    /// Replaces the account the session sees (e.g. a live `U...` account or
    /// another `isPaper` shape).
    pub fn set_account(&self, account: SimAccount) {
        self.state.lock().account = account;
    }

    /// Every request received so far, in arrival order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.state.lock().request_log.clone()
    }

    /// Forgets the requests logged so far (counters are kept).
    pub fn clear_request_log(&self) {
        self.state.lock().request_log.clear();
    }

    /// Call counters of the session endpoints.
    pub fn counts(&self) -> SimCounters {
        self.state.lock().counters
    }

    /// Value of the `x-sess-uuid` cookie the simulator sets, so tests can
    /// assert it never appears in anything the product emits.
    pub fn session_cookie_value(&self) -> String {
        self.state.lock().cookie_value.clone()
    }

    /// The `sessionId` reported by `/iserver/accounts`, for the same kind of
    /// leak assertions.
    pub fn session_id(&self) -> String {
        self.state.lock().session_id.clone()
    }

    /// Replaces every scenario knob at once. Working orders are re-evaluated
    /// (e.g. parked orders fill when the market opens).
    pub fn set_scenario(&self, scenario: SimScenario) {
        let mut guard = self.state.lock();
        guard.scenario = scenario;
        let now = guard.clock.now_ms();
        guard.reevaluate(now);
    }

    /// Changes some scenario knobs, e.g.
    /// `sim.update_scenario(|s| s.pacing = false)`. Working orders are
    /// re-evaluated afterwards.
    pub fn update_scenario(&self, change: impl FnOnce(&mut SimScenario)) {
        let mut guard = self.state.lock();
        change(&mut guard.scenario);
        let now = guard.clock.now_ms();
        guard.reevaluate(now);
    }

    /// The scenario now (counters such as `fail_with_503_after_landing`
    /// count down as they are used).
    pub fn scenario(&self) -> SimScenario {
        self.state.lock().scenario.clone()
    }

    /// Pins the quote of `symbol` (its US listing if it has one, else its
    /// first): it stops walking until changed again. Working orders are
    /// re-evaluated against it. Returns false for an unknown symbol or a
    /// non-positive price.
    pub fn set_price(&self, symbol: &str, last: Decimal, bid: Decimal, ask: Decimal) -> bool {
        let guard = self.state.lock();
        let Some(conid) = guard.market.primary_conid(symbol) else {
            return false;
        };
        drop(guard);
        self.set_price_conid(conid, last, bid, ask)
    }

    /// [`CpgwSimulator::set_price`] for one listing, by conid.
    pub fn set_price_conid(&self, conid: i64, last: Decimal, bid: Decimal, ask: Decimal) -> bool {
        let mut guard = self.state.lock();
        if !guard.market.set_quote(conid, SimQuote { last, bid, ask }) {
            return false;
        }
        let now = guard.clock.now_ms();
        guard.reevaluate(now);
        true
    }

    /// The current quote of `symbol` (same listing choice as `set_price`).
    pub fn quote(&self, symbol: &str) -> Option<SimQuote> {
        let guard = self.state.lock();
        let conid = guard.market.primary_conid(symbol)?;
        guard.market.quote(conid)
    }

    /// Every order the simulator accepted (placed), in placement order,
    /// including those whose answer was a 503. Submissions still waiting
    /// for, or declined at, a confirmation round are not orders.
    pub fn order_log(&self) -> Vec<SimOrder> {
        self.state.lock().trading.order_log()
    }

    /// Every `POST /iserver/reply/{id}` with a valid body, in arrival order:
    /// `(reply_id, confirmed)`, unknown ids included.
    pub fn reply_log(&self) -> Vec<(String, bool)> {
        self.state.lock().trading.reply_log.clone()
    }

    /// The true positions, every fill applied (no lag).
    pub fn positions(&self) -> Vec<SimPosition> {
        let guard = self.state.lock();
        guard.trading.book.positions(&guard.market)
    }

    /// The positions CPGW currently reports (behind by the positions lag;
    /// zero rows left out).
    pub fn reported_positions(&self) -> Vec<SimPosition> {
        let guard = self.state.lock();
        guard.trading.reported.positions(&guard.market)
    }

    /// True cash balance in `currency` (no lag); zero if never touched.
    pub fn cash(&self, currency: &str) -> Decimal {
        self.state
            .lock()
            .trading
            .book
            .cash
            .get(currency)
            .copied()
            .unwrap_or_default()
    }

    /// Every execution so far, in order.
    pub fn executions(&self) -> Vec<SimExecution> {
        self.state.lock().trading.executions.clone()
    }

    /// Ends the positions lag now: every fill shows in positions and summary.
    pub fn settle_positions(&self) {
        self.state.lock().trading.settle();
    }

    /// Fills what is left of an order at the touch (ask for buys, bid for
    /// sells), whatever its type, trigger or the market hours. Returns false
    /// for an unknown or finished order.
    pub fn fill(&self, order_id: &str) -> bool {
        let mut guard = self.state.lock();
        let now = guard.clock.now_ms();
        let phase = guard.phase(now);
        let state = &mut *guard;
        let env = engine::Env {
            market: &state.market,
            scenario: &state.scenario,
            now_ms: now,
            phase,
        };
        state.trading.force_fill(order_id, env)
    }

    /// Lapses the session now, to the scenario's `idle_lapse_state`, as if
    /// the idle timeout had passed. A logged-out session stays logged out.
    pub fn lapse_session(&self) {
        self.state.lock().lapse();
    }

    /// Starts a new brokerage session as CPGW does after a re-login or a
    /// restart: snapshot, orders and trades pre-flights start over and
    /// finished orders of the old session leave the orders list.
    pub fn restart_brokerage_session(&self) {
        self.state.lock().begin_brokerage_session();
    }

    /// Stops accepting, lets in-flight requests finish (bounded by a
    /// timeout) and closes idle connections.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take()
            && let Err(error) = server.await
        {
            tracing::warn!(%error, "cpgw simulator task ended abnormally");
        }
    }
}

impl Drop for CpgwSimulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        acceptor.clone(),
                        app.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "cpgw simulator accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: CancellationToken,
) {
    // Without nodelay, hyper's separate header and body writes meet Nagle and
    // delayed ACK and every response stalls ~40 ms on loopback.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay failed");
    }
    let tls_stream = tokio::select! {
        () = shutdown.cancelled() => return,
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => {
            match handshake {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cpgw simulator TLS handshake failed");
                    return;
                }
                Err(_elapsed) => return,
            }
        }
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection =
        builder.serve_connection(TokioIo::new(tls_stream), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "cpgw simulator connection ended with an error");
    }
}

#[cfg(test)]
mod tests;
