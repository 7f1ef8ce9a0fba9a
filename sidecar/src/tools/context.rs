//! What a tool may use ([`ToolContext`]), what it returns ([`ToolResult`]), its progress
//! sink, and the small helpers every tool shares.

use crate::cpgw::types::AuthStatus;
use crate::cpgw::{
    AccountCache, BrokerState, ConidCache, CpgwClient, CpgwError, QuoteCache, manual_login_action,
};
use protocol::envelope::Outcome;
use serde_json::{Map, Value};
use shared_safety::ErrorCode;
use shared_safety::money::{Decimal, to_decimal_string};
use std::time::Duration;
use tokio::sync::watch;

/// What a tool may use.
pub struct ToolContext<'a> {
    /// The clock trading hours are judged by (system clock except in simulations).
    pub market_clock: &'a crate::market_clock::MarketClock,
    pub cpgw: &'a CpgwClient,
    pub broker: &'a watch::Sender<BrokerState>,
    pub sidecar_id: &'a str,
    /// Symbol -> US contract cache (`resolve_symbol`), shared with the order tools.
    pub contracts: &'a ConidCache,
    /// The selected account, cached per broker session.
    pub accounts: &'a AccountCache,
    /// Snapshot quotes of the read tools (`ibkr_quote`, `ibkr_quotes`), shared between calls
    /// and reused while young. Order guards must not use it: they fetch with
    /// [`crate::cpgw::marketdata::snapshot`].
    pub quotes: &'a QuoteCache,
    /// How long the current relay connection has been up.
    pub connected_for: Duration,
    /// The `auth/status` gate f saw (broker tools only).
    pub auth: Option<AuthStatus>,
    /// Journal, trading policy and calendar of the order tools (`None`: journal unavailable,
    /// every order tool refuses with JOURNAL_ERROR).
    pub orders: Option<&'a crate::trading::OrdersRuntime>,
    /// Whether both the caller's token and the local pairing grant `ibkr:orders:live`.
    pub live_scope_granted: bool,
    /// The owner's pause of trading, read for the tools that report or obey it (none for the
    /// others: not read on every call).
    pub trading_pause: Option<crate::state::TradingPause>,
    /// Sends progress frames for this request (long calls such as `ibkr_wait_for_fill`).
    pub progress: Option<&'a ProgressSink>,
    /// When the answer must be on its way: the relay deadline, less the time the answer needs
    /// to travel. A tool that waits never waits past it.
    pub deadline: tokio::time::Instant,
}

impl<'a> ToolContext<'a> {
    /// This context with another CPGW handle (see [`CpgwClient::for_orders`]).
    pub fn with_cpgw<'b>(&'b self, cpgw: &'b CpgwClient) -> ToolContext<'b> {
        ToolContext {
            market_clock: self.market_clock,
            cpgw,
            broker: self.broker,
            sidecar_id: self.sidecar_id,
            contracts: self.contracts,
            accounts: self.accounts,
            quotes: self.quotes,
            connected_for: self.connected_for,
            auth: self.auth,
            orders: self.orders,
            live_scope_granted: self.live_scope_granted,
            trading_pause: self.trading_pause.clone(),
            progress: self.progress,
            deadline: self.deadline,
        }
    }
}

pub type ToolResult = Result<Value, Outcome>;

/// Progress reporting for one request.
pub struct ProgressSink {
    request_id: protocol::envelope::RequestId,
    send: std::sync::Arc<dyn Fn(protocol::envelope::RelayProgress) + Send + Sync>,
}

impl ProgressSink {
    /// A sink calling `send` with each update (tests pass a closure that records them).
    pub fn new(
        request_id: protocol::envelope::RequestId,
        send: std::sync::Arc<dyn Fn(protocol::envelope::RelayProgress) + Send + Sync>,
    ) -> ProgressSink {
        ProgressSink { request_id, send }
    }

    /// Reports `progress` of `total` with a short status message.
    pub fn send(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        (self.send)(protocol::envelope::RelayProgress {
            request_id: self.request_id,
            progress,
            total,
            message,
        });
    }
}

/// A required string argument (the schema already checked it; this only reads it).
pub(crate) fn string_arg<'a>(
    arguments: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, Outcome> {
    arguments.get(key).and_then(Value::as_str).ok_or_else(|| {
        Outcome::Refused(ErrorCode::ArgumentsInvalid.body(Some(&format!("({key})"))))
    })
}

/// A decimal as a JSON string, or `null`.
pub(crate) fn decimal_value(value: Option<Decimal>) -> Value {
    value.map_or(Value::Null, |d| Value::String(to_decimal_string(d)))
}

/// The selected account, or a broker error when CPGW names none.
pub(crate) async fn selected_account(context: &ToolContext<'_>) -> Result<String, Outcome> {
    context
        .accounts
        .selected_account(context.cpgw)
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?
        .ok_or_else(|| {
            Outcome::Failed(
                ErrorCode::OrderAccountUnverified.body(Some("(CPGW names no selected account)")),
            )
        })
}

/// The outcome for a failed CPGW call inside a tool.
pub(crate) fn cpgw_failure(error: CpgwError, client: &CpgwClient) -> Outcome {
    match error {
        CpgwError::NotAuthenticated => {
            Outcome::ManualActionRequired(manual_login_action(&client.portal_location()))
        }
        other => Outcome::Failed(other.error_code().body(None)),
    }
}
