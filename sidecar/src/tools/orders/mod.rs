//! Order tools: preview, buy, sell, close, stops, brackets, cancel, status, wait, lists,
//! the trade journal and reconciliation.
//!
//! - [`journal`]: the hash-chained, fsync'd trade journal and its derived views.
//! - [`policy`]: the `trading:` configuration section.
//! - [`ticket`]: argument parsing into guard intents and the exact CPGW order JSON.
//! - [`place`]: guards -> journal intent -> dry-run or send (confirm loop, idempotency).
//! - [`read`]: status, wait for fill, lists, history, cancel, reconcile.
//!
//! Every placing tool follows the same path: parse (exact decimals), resolve the US conid,
//! read the account identity (paper/live), quote and position as needed, run
//! `shared_safety::guards::check_order`, journal the intent durably, then dry-run (default:
//! nothing is sent) or send. Failures are classified as *definitely not placed* or
//! *indeterminate*; only the latter blocks identical retries and counts toward the daily cap
//! until `ibkr_reconcile_pending` resolves it.

pub mod journal;
pub mod place;
pub mod policy;
pub mod read;
pub mod ticket;

use crate::error::SidecarError;
use crate::gates::CheckedRequest;
use crate::tools::{ToolContext, ToolResult};
use journal::Journal;
use protocol::envelope::Outcome;
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use shared_safety::calendar::MarketCalendar;
use shared_safety::guards::TradingPolicy;
use shared_safety::money::{Decimal, to_decimal_string};
use std::path::Path;

/// What the order tools share for the daemon's lifetime.
pub struct OrdersRuntime {
    pub journal: Journal,
    pub policy: TradingPolicy,
    pub calendar: MarketCalendar,
    /// The clock trading hours are judged by.
    pub clock: crate::market_clock::MarketClock,
}

impl OrdersRuntime {
    /// Opens `<state_dir>/journal.jsonl` and converts the `trading:` section.
    pub fn open(
        state_dir: &Path,
        trading: &policy::TradingSection,
    ) -> Result<OrdersRuntime, SidecarError> {
        let policy = trading.policy()?;
        let journal = Journal::open_in(state_dir)
            .map_err(|error| SidecarError::new(ErrorCode::JournalError, format!("({error})")))?;
        Ok(OrdersRuntime {
            journal,
            policy,
            calendar: MarketCalendar::nyse_shared().clone(),
            clock: crate::market_clock::MarketClock::system(),
        })
    }

    /// A runtime over an already open journal (tests).
    pub fn with_journal(journal: Journal, policy: TradingPolicy) -> OrdersRuntime {
        OrdersRuntime {
            journal,
            policy,
            calendar: MarketCalendar::nyse_shared().clone(),
            clock: crate::market_clock::MarketClock::system(),
        }
    }

    /// Whether regular trading hours are open now, on the runtime's market clock.
    pub fn market_open(&self) -> Result<bool, shared_safety::calendar::CalendarError> {
        self.calendar.is_regular_hours(self.clock.now())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn runtime<'a>(context: &ToolContext<'a>) -> Result<&'a OrdersRuntime, Outcome> {
    context.orders.ok_or_else(|| {
        Outcome::Refused(ErrorCode::JournalError.body(Some(
            "(the trade journal is not available in this sidecar; see its log)",
        )))
    })
}

/// Runs an order tool.
pub async fn run(request: &CheckedRequest, context: &ToolContext<'_>) -> ToolResult {
    let arguments = &request.arguments;
    match request.tool.name {
        "ibkr_order_preview" => place::preview(arguments, context).await,
        "ibkr_buy"
        | "ibkr_sell"
        | "ibkr_close_position"
        | "ibkr_stop_order"
        | "ibkr_trailing_stop"
        | "ibkr_bracket_order" => place::place(request.tool.name, arguments, context).await,
        "ibkr_order_cancel" => read::cancel(arguments, context).await,
        "ibkr_order_status" => read::status(arguments, context).await,
        "ibkr_wait_for_fill" => read::wait_for_fill(arguments, context).await,
        "ibkr_orders_list" => read::orders_list(context).await,
        "ibkr_executions_list" => read::executions_list(context).await,
        "ibkr_trade_history" => read::trade_history(arguments, context),
        "ibkr_reconcile_pending" => read::reconcile_pending(context).await,
        _ => Err(Outcome::Refused(ErrorCode::ToolUnknown.body(Some(
            "(this sidecar version does not implement the tool)",
        )))),
    }
}

/// The trading posture for `ibkr_session_status`: dry_run, live_trading_allowed,
/// max_order_value, max_daily_value, remaining_daily_budget, unresolved_orders, safe_to_trade.
/// `live_trading_allowed` is for this caller: `trading.allow_live` and `ibkr:orders:live`
/// granted by both the caller's token and the local pairing (`live_scope_granted`).
/// `safe_to_trade`: authenticated session, a paper account (or a live one with live trading
/// allowed), a readable journal and no unresolved orders; an unknown account type is never
/// safe.
pub fn posture(
    runtime: Option<&OrdersRuntime>,
    session_ok: bool,
    is_paper: bool,
    is_live: bool,
    live_scope_granted: bool,
) -> Value {
    let Some(runtime) = runtime else {
        return json!({
            "dry_run": true,
            "live_trading_allowed": false,
            "journal_available": false,
            "safe_to_trade": false,
        });
    };
    let policy = &runtime.policy;
    let today = now_ms().div_euclid(86_400_000);
    let spent = runtime.journal.spent_on_day(today);
    let remaining = policy
        .max_daily_value
        .map(|cap| to_decimal_string((cap - spent).max(Decimal::ZERO)));
    let unresolved = runtime.journal.pending().len();
    let live_allowed = policy.allow_live && live_scope_granted;
    json!({
        "dry_run": policy.dry_run,
        "live_trading_allowed": live_allowed,
        "max_order_value": to_decimal_string(policy.max_order_value),
        "max_daily_value": policy.max_daily_value.map(to_decimal_string),
        "spent_today": to_decimal_string(spent),
        "remaining_daily_budget": remaining,
        "unresolved_orders": unresolved,
        "journal_available": true,
        "safe_to_trade": session_ok && (is_paper || (is_live && live_allowed)) && unresolved == 0,
    })
}
