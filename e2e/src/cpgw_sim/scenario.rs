//! Scenario knobs: the CPGW quirks a test can switch on or off at run time.

use super::state::AuthState;

/// Which of the cancel answers seen from real gateways
/// `DELETE /iserver/account/{acct}/order/{id}` gives for a cancellable order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CancelAckShape {
    /// `{"msg":"Request was submitted","order_id":<n>,"conid":<n>,"account":"DU.."}`
    /// and the order moves to `PendingCancel`.
    #[default]
    RequestSubmitted,
    /// `{"order_id":"<n>","msg":"Order cancelled"}` and the order moves to
    /// `PendingCancel`.
    OrderCancelled,
    /// `{"error":"OrderID <n> doesn't exist"}` (HTTP 400) although the order
    /// exists; the order is left as it was. Unknown ids always get this
    /// answer, whatever the shape.
    DoesNotExist,
}

/// The quirks the simulator reproduces. Every field can be changed at run
/// time with [`super::CpgwSimulator::set_scenario`] or
/// [`super::CpgwSimulator::update_scenario`].
///
/// [`SimScenario::default`] is "a normal day at a real CPGW": market open,
/// both warm-ups on, positions one request behind fills, no warnings.
/// [`SimScenario::ideal`] switches every quirk off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimScenario {
    /// Regular trading hours. While false, orders without `outsideRTH` are
    /// parked as `PreSubmitted` and fill only once the market opens again
    /// (setting this back to true re-evaluates them).
    pub market_open: bool,
    /// The first snapshot for a conid returns a row without `31`/`84`/`86`.
    /// Each conid warms up once per simulator (see
    /// [`super::CpgwSimulator::reset_warmups`]).
    pub snapshot_warmup: bool,
    /// Prefix letter for field `31`: `Some('C')` previous close,
    /// `Some('H')` halted.
    pub price_prefix: Option<char>,
    /// Confirmation questions asked before a submission is placed, in order,
    /// one per round (e.g. `["o163", "o354"]`). Ids outside IBKR's usual set
    /// (e.g. `o999`) are asked with a generic text.
    pub warning_rounds: Vec<String>,
    /// How many of the next placements answer HTTP 503 although the order
    /// was recorded and is working. Decremented per placement.
    pub fail_with_503_after_landing: u32,
    /// Executable orders fill in this many slices. 1 (or 0) fills at once;
    /// K > 1 leaves the order `Submitted` with nothing filled and fills one
    /// slice per `GET /iserver/account/order/status/{id}` of that order.
    pub partial_fill_steps: u32,
    /// A fill shows in `/portfolio/.../positions` and `/summary` only after
    /// this many further position-page requests (or
    /// [`super::CpgwSimulator::settle_positions`]). 0 means at once.
    pub positions_lag_requests: u32,
    /// Rows per `/portfolio/{acct}/positions/{page}` page (IBKR uses 100).
    pub positions_page_size: usize,
    /// The first `GET /iserver/account/orders` after start answers
    /// `{"orders":[],"snapshot":false}`.
    pub orders_warmup: bool,
    /// Shape of the answer to a cancel request.
    pub cancel_ack_shape: CancelAckShape,
    /// A cancelled order ends `ApiCancelled` instead of `Cancelled`.
    pub cancel_as_api_cancelled: bool,
    /// New orders are recorded but parked dead: `Inactive` (CCP status
    /// `Pending Submit`); they never fill by themselves and a cancel is
    /// refused with `{"error":"Order is inactive"}`.
    pub inactive_orders: bool,
    /// The session survives this many requests without a `/tickle`; the
    /// next request finds it lapsed to [`SimScenario::idle_lapse_state`].
    pub session_idle_lapse_requests: Option<u64>,
    /// Where an idle lapse (or [`super::CpgwSimulator::lapse_session`])
    /// leaves the session. `ConnectedOnly` by default: IBKR documents that a
    /// timed-out brokerage session can be reopened with `ssodh/init`.
    pub idle_lapse_state: AuthState,
    /// Another session (TWS, mobile) holds the brokerage session:
    /// `competing: true`, `authenticated: false`, every trading endpoint
    /// answers 401. `ssodh/init` with `"compete": true` takes it back.
    pub competing: bool,
}

impl Default for SimScenario {
    fn default() -> Self {
        SimScenario {
            market_open: true,
            snapshot_warmup: true,
            price_prefix: None,
            warning_rounds: Vec::new(),
            fail_with_503_after_landing: 0,
            partial_fill_steps: 1,
            positions_lag_requests: 1,
            positions_page_size: 100,
            orders_warmup: true,
            cancel_ack_shape: CancelAckShape::RequestSubmitted,
            cancel_as_api_cancelled: false,
            inactive_orders: false,
            session_idle_lapse_requests: None,
            idle_lapse_state: AuthState::ConnectedOnly,
            competing: false,
        }
    }
}

impl SimScenario {
    /// No quirks at all: no warm-ups, no lag, market open, immediate fills.
    pub fn ideal() -> Self {
        SimScenario {
            snapshot_warmup: false,
            positions_lag_requests: 0,
            orders_warmup: false,
            ..SimScenario::default()
        }
    }
}
