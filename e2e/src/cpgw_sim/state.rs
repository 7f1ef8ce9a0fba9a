//! Shared, mutable state of the simulator and the types tests use to steer it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::clock::{SessionPhase, SimClock, millis, next_local_time_after, phase_at};
use super::engine::{Env, Trading};
use super::market::Market;
use super::pacing::Pacer;
use super::scenario::{MarketHours, SimScenario};

/// Session state of the simulated CPGW, as the real gateway reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthState {
    /// Logged in with an open brokerage session: everything works.
    LoggedIn,
    /// Logged in through the browser, but the brokerage session is closed;
    /// `ssodh/init` reopens it.
    ConnectedOnly,
    /// No session at all: only a manual browser login on the laptop helps.
    LoggedOut,
}

impl AuthState {
    /// `(authenticated, connected)` as CPGW reports them for this state.
    pub(crate) fn flags(self) -> (bool, bool) {
        match self {
            AuthState::LoggedIn => (true, true),
            AuthState::ConnectedOnly => (false, true),
            AuthState::LoggedOut => (false, false),
        }
    }
}

/// How `/iserver/accounts` renders `isPaper`: the real gateway has been seen
/// sending a bool, a string, or nothing, and the product must cope with each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsPaperShape {
    /// `"isPaper": true|false`
    Bool(bool),
    /// `"isPaper": "<string>"`, verbatim.
    Str(String),
    /// The key is absent.
    Missing,
}

impl IsPaperShape {
    fn to_json(&self) -> Option<Value> {
        match self {
            IsPaperShape::Bool(value) => Some(Value::Bool(*value)),
            IsPaperShape::Str(value) => Some(Value::String(value.clone())),
            IsPaperShape::Missing => None,
        }
    }
}

/// The single brokerage account the simulated session can see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimAccount {
    /// IBKR account id; `DU...` ids are paper accounts.
    pub account_id: String,
    /// Shape of the `isPaper` field in `/iserver/accounts`.
    pub is_paper: IsPaperShape,
    /// `acctProps.<id>.supportsCashQty`.
    pub supports_cash_qty: bool,
    /// `acctProps.<id>.supportsFractions`.
    pub supports_fractions: bool,
}

impl SimAccount {
    /// A paper account, `DU1234567`, that allows cash quantities and fractions.
    pub fn paper() -> Self {
        SimAccount {
            account_id: "DU1234567".to_owned(),
            is_paper: IsPaperShape::Bool(true),
            supports_cash_qty: true,
            supports_fractions: true,
        }
    }
}

impl Default for SimAccount {
    fn default() -> Self {
        SimAccount::paper()
    }
}

/// One request as the simulator received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// HTTP method, upper case.
    pub method: String,
    /// Full path including the `/v1/api` prefix.
    pub path: String,
    /// Raw query string without the `?`, if any.
    pub query: Option<String>,
    /// Request body as UTF-8 (lossy), if it was not empty.
    pub body: Option<String>,
}

/// Call counters for the session endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// `POST /tickle` calls, whatever the answer.
    pub tickles: u64,
    /// `POST /iserver/auth/ssodh/init` calls, whatever the answer.
    pub ssodh_inits: u64,
    /// `/iserver/auth/status` calls.
    pub auth_status: u64,
    /// `GET /iserver/accounts` calls.
    pub accounts: u64,
}

/// A session-scoped cache that must be primed by a first request (IBKR's
/// "pre-flight") before it answers with data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListCache {
    /// Nobody asked yet in this brokerage session.
    Cold,
    /// Primed; holds data from `ready_ms` on.
    Filling { ready_ms: i64 },
    /// Answers with data.
    Warm,
}

impl ListCache {
    /// One read at `now_ms`: whether it sees data. A cold cache starts
    /// filling and answers empty.
    pub(crate) fn read(&mut self, now_ms: i64, fill_delay_ms: i64) -> bool {
        match *self {
            ListCache::Cold => {
                *self = ListCache::Filling {
                    ready_ms: now_ms.saturating_add(fill_delay_ms),
                };
                false
            }
            ListCache::Filling { ready_ms } if now_ms < ready_ms => false,
            ListCache::Filling { .. } | ListCache::Warm => {
                *self = ListCache::Warm;
                true
            }
        }
    }
}

/// Everything the handlers read and mutate. Kept behind one mutex so a
/// scenario switch is atomic with respect to the requests around it.
#[derive(Debug)]
pub(crate) struct SimState {
    pub(crate) auth_state: AuthState,
    pub(crate) ssodh_init_fails: bool,
    pub(crate) account: SimAccount,
    pub(crate) request_log: Vec<LoggedRequest>,
    pub(crate) counters: SimCounters,
    /// Session-ish identifiers the real gateway leaks into its answers; the
    /// product must strip them, so they are random to make leaks detectable.
    pub(crate) session_id: String,
    pub(crate) cookie_value: String,
    /// Quirks currently switched on.
    pub(crate) scenario: SimScenario,
    /// Instruments and their quotes.
    pub(crate) market: Market,
    /// Orders, executions and the books.
    pub(crate) trading: Trading,
    /// The injected clock.
    pub(crate) clock: SimClock,
    /// Clock time of the last `/v1/api` request, for the idle lapse.
    pub(crate) last_request_ms: i64,
    /// Clock time time-driven effects were last applied at.
    pub(crate) last_tick_ms: i64,
    /// Brokerage session number: caches and pre-flights are per session.
    pub(crate) epoch: u64,
    /// `GET /iserver/account/orders` cache of this brokerage session.
    pub(crate) orders_cache: ListCache,
    /// `GET /iserver/account/trades` cache of this brokerage session.
    pub(crate) trades_cache: ListCache,
    /// Rate limits and the penalty box.
    pub(crate) pacer: Pacer,
    /// `GET /iserver/accounts` answered in this brokerage session.
    pub(crate) iserver_accounts_queried: bool,
    /// `GET /portfolio/accounts` answered in this brokerage session.
    pub(crate) portfolio_accounts_queried: bool,
    /// A test's hold on order answers (see [`super::OrderAnswerHold`]).
    pub(crate) answer_hold: Option<super::OrderAnswerHold>,
}

impl SimState {
    pub(crate) fn new(
        auth_state: AuthState,
        account: SimAccount,
        seed: u64,
        scenario: SimScenario,
        starting_cash: Decimal,
        clock: SimClock,
    ) -> Self {
        let now = clock.now_ms();
        SimState {
            auth_state,
            ssodh_init_fails: false,
            account,
            request_log: Vec::new(),
            counters: SimCounters::default(),
            session_id: random_hex(16),
            cookie_value: random_uuid_like(),
            scenario,
            market: Market::new(seed),
            trading: Trading::new(starting_cash),
            clock,
            last_request_ms: now,
            last_tick_ms: now,
            epoch: 1,
            orders_cache: ListCache::Cold,
            trades_cache: ListCache::Cold,
            pacer: Pacer::default(),
            iserver_accounts_queried: false,
            portfolio_accounts_queried: false,
            answer_hold: None,
        }
    }

    /// The session phase now, from the clock or the scenario's override.
    pub(crate) fn phase(&self, now_ms: i64) -> SessionPhase {
        match self.scenario.market {
            MarketHours::FromClock => phase_at(now_ms),
            MarketHours::Fixed(phase) => phase,
        }
    }

    /// A new brokerage session: pre-flights, warm-ups and pending questions
    /// start over, and orders finished in earlier sessions leave the list.
    pub(crate) fn begin_brokerage_session(&mut self) {
        self.epoch += 1;
        self.orders_cache = ListCache::Cold;
        self.trades_cache = ListCache::Cold;
        self.trading.snapshot_fields.clear();
        self.trading.pending.clear();
        self.iserver_accounts_queried = false;
        self.portfolio_accounts_queried = false;
    }

    /// Switches the session state; logging back in opens a new brokerage
    /// session.
    pub(crate) fn set_auth_state(&mut self, state: AuthState) {
        if state == AuthState::LoggedIn && self.auth_state != AuthState::LoggedIn {
            self.begin_brokerage_session();
            // Logging in is activity: the idle timer starts over.
            let now = self.clock.now_ms();
            self.last_request_ms = now;
            self.last_tick_ms = self.last_tick_ms.max(now);
        }
        self.auth_state = state;
    }

    /// Lapses a logged-in session to the scenario's `idle_lapse_state`.
    pub(crate) fn lapse(&mut self) {
        if self.auth_state == AuthState::LoggedIn {
            self.auth_state = self.scenario.idle_lapse_state;
        }
    }

    /// Applies what the passage of time does: the nightly reset, the idle
    /// lapse, DAY-order expiry, session changes for working orders, and the
    /// positions lag. Called before every request and after the clock moves.
    pub(crate) fn on_time(&mut self, now_ms: i64) {
        // IBKR Web API documentation, "Scheduled Server Maintenance":
        // brokerage functionality is briefly unavailable each evening at
        // about 01:00 local time (01:00 US/Eastern in North America).
        if self.scenario.nightly_reset
            && next_local_time_after(self.last_tick_ms, 1, 0, false) <= now_ms
        {
            self.lapse();
        }
        // IBKR's OpenAPI for /tickle: "If the gateway has not received any
        // requests for several minutes an open session will automatically
        // timeout."
        if let Some(timeout) = self.scenario.session_idle_timeout
            && now_ms.saturating_sub(self.last_request_ms) >= millis(timeout)
        {
            self.lapse();
        }
        self.trading.expire(now_ms);
        self.reevaluate(now_ms);
        let lag = millis(self.scenario.positions_lag);
        self.trading.settle_due(now_ms, lag, false);
        self.last_tick_ms = self.last_tick_ms.max(now_ms);
    }

    /// `(authenticated, connected, competing)` as `/iserver/auth/status`
    /// reports them: a competing session takes the brokerage session away.
    pub(crate) fn auth_flags(&self) -> (bool, bool, bool) {
        let (authenticated, connected) = self.auth_state.flags();
        let competing = self.scenario.competing && connected;
        (authenticated && !competing, connected, competing)
    }

    /// Whether brokerage endpoints answer (logged in, nobody competing).
    pub(crate) fn session_usable(&self) -> bool {
        self.auth_flags().0
    }

    /// Re-evaluates working orders after quotes, the scenario or the clock
    /// changed.
    pub(crate) fn reevaluate(&mut self, now_ms: i64) {
        let env = Env {
            market: &self.market,
            scenario: &self.scenario,
            now_ms,
            phase: self.phase(now_ms),
        };
        self.trading.evaluate_all(env);
    }

    pub(crate) fn accounts_json(&self) -> Value {
        let id = self.account.account_id.as_str();
        let mut body = json!({
            "accounts": [id],
            "selectedAccount": id,
            "acctProps": {
                id: {
                    "supportsCashQty": self.account.supports_cash_qty,
                    "supportsFractions": self.account.supports_fractions,
                }
            },
            "aliases": { id: id },
            "allowFeatures": {},
            "chartPeriods": {},
            "groups": [],
            "profiles": [],
            "sessionId": self.session_id,
            "serverInfo": server_info(),
        });
        if let (Some(is_paper), Some(object)) =
            (self.account.is_paper.to_json(), body.as_object_mut())
        {
            object.insert("isPaper".to_owned(), is_paper);
        }
        body
    }
}

/// Cloneable handle to the one shared state.
#[derive(Clone, Debug)]
pub(crate) struct SharedState(Arc<Mutex<SimState>>);

impl SharedState {
    pub(crate) fn new(state: SimState) -> Self {
        SharedState(Arc::new(Mutex::new(state)))
    }

    /// Locks the state. Handlers do not panic (no unwraps; decimal inputs are
    /// bounded far below overflow), so a poisoned lock would only come from
    /// a test thread; the state is still the best there is, so keep using it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `serverInfo` object CPGW attaches to session answers.
pub(crate) fn server_info() -> Value {
    json!({
        "serverName": "JifN19053",
        "serverVersion": "Build 10.25.0p, Dec 5, 2023",
    })
}

/// The MAC address CPGW reports; fixed, as in a real installation.
pub(crate) const SERVER_MAC: &str = "98:F2:B3:23:BF:A0";

/// Lower-case hex of `bytes` random bytes from the system RNG.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The system RNG only fails if the OS has no entropy source at all; a
    // zero-filled id is still unique enough for a simulator in that case.
    let _ = aws_lc_rs::rand::fill(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub(crate) fn random_uuid_like() -> String {
    let hex = random_hex(16);
    let (a, rest) = hex.split_at(8);
    let (b, rest) = rest.split_at(4);
    let (c, rest) = rest.split_at(4);
    let (d, e) = rest.split_at(4);
    format!("{a}-{b}-{c}-{d}-{e}")
}
