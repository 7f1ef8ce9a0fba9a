//! Trading state the order tools share for the daemon's lifetime: the trade journal, the
//! `trading:` policy, the market calendar and clock, and the posture derived from them.
//!
//! - [`journal`]: the hash-chained, fsync'd trade journal, and the one critical section in
//!   which an order's guards are checked and its intent written.
//! - [`attempts`]: order attempts and the views the guards need (spend, commitments,
//!   unresolved outcomes).
//! - [`journal_chain`]: the journal's key, head checkpoint and verification;
//!   [`journal_tap`]: which entry a relayed call wrote last.
//! - [`anchor`]: whether the journal still holds the entry the gateway has on record.
//! - [`policy`]: the `trading:` configuration section; [`approval`]: which orders wait for the
//!   laptop owner's approval, and what an approval is bound to.
//!
//! This module knows nothing of tools or CPGW; the order tools (`crate::tools::orders`) build
//! on it.

pub mod anchor;
pub mod approval;
pub mod attempts;
pub mod journal;
pub mod journal_chain;
pub mod journal_tap;
pub mod policy;

use crate::error::SidecarError;
use journal::Journal;
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
    /// Which orders wait for the owner's approval (`trading.approval`).
    pub approval: approval::ApprovalPolicy,
    pub calendar: MarketCalendar,
    /// The clock trading hours are judged by.
    pub clock: crate::market_clock::MarketClock,
    /// How long a finished order's quantity still counts as committed
    /// (`trading.position_lag_seconds`).
    pub position_lag: std::time::Duration,
    /// Whether the journal holds the gateway's anchor (checked at every handshake).
    pub anchor: anchor::AnchorCheck,
}

impl OrdersRuntime {
    /// Opens `<state_dir>/journal.jsonl` and converts the `trading:` section.
    pub fn open(
        state_dir: &Path,
        trading: &policy::TradingSection,
    ) -> Result<OrdersRuntime, SidecarError> {
        let policy = trading.policy()?;
        let approval = trading.approval.policy()?;
        let journal = Journal::open_in(state_dir)
            .map_err(|error| SidecarError::new(ErrorCode::JournalError, format!("({error})")))?;
        Ok(OrdersRuntime {
            journal,
            policy,
            approval,
            calendar: MarketCalendar::nyse_shared().clone(),
            clock: crate::market_clock::MarketClock::system(),
            position_lag: trading.position_lag(),
            anchor: anchor::AnchorCheck::new(),
        })
    }

    /// A runtime over an already open journal (tests).
    pub fn with_journal(journal: Journal, policy: TradingPolicy) -> OrdersRuntime {
        OrdersRuntime {
            journal,
            policy,
            approval: approval::ApprovalPolicy::default(),
            calendar: MarketCalendar::nyse_shared().clone(),
            clock: crate::market_clock::MarketClock::system(),
            position_lag: std::time::Duration::from_secs(policy::DEFAULT_POSITION_LAG_SECONDS),
            anchor: anchor::AnchorCheck::new(),
        }
    }

    /// [`OrdersRuntime::position_lag`] in milliseconds.
    pub fn position_lag_ms(&self) -> i64 {
        i64::try_from(self.position_lag.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether regular trading hours are open now, on the runtime's market clock.
    pub fn market_open(&self) -> Result<bool, shared_safety::calendar::CalendarError> {
        self.calendar.is_regular_hours(self.clock.now())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The trading posture for `ibkr_session_status`: dry_run, live_trading_allowed,
/// max_order_value, max_daily_value, remaining_daily_budget, unresolved_orders,
/// orders_awaiting_approval, safe_to_trade.
/// `live_trading_allowed` is for this caller: `trading.allow_live` and `ibkr:orders:live`
/// granted by both the caller's token and the local pairing (`live_scope_granted`).
/// `safe_to_trade`: authenticated session, a paper account (or a live one with live trading
/// allowed), a readable journal that holds the gateway's anchor (`journal_behind_gateway`
/// false) and no unresolved orders; an unknown account type is never safe.
pub fn posture(
    runtime: Option<&OrdersRuntime>,
    session_ok: bool,
    is_paper: bool,
    is_live: bool,
    live_scope_granted: bool,
    paused: Option<&crate::state::TradingPause>,
) -> Value {
    let trading_paused = paused.map(|pause| {
        json!({
            "since_unix": pause.paused_at,
            "reason": pause.reason,
        })
    });
    let Some(runtime) = runtime else {
        return json!({
            "dry_run": true,
            "live_trading_allowed": false,
            "journal_available": false,
            "trading_paused": trading_paused,
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
    let awaiting_approval = runtime.journal.awaiting_approval().len();
    let live_allowed = policy.allow_live && live_scope_granted;
    let behind = runtime.anchor.behind().is_some();
    json!({
        "dry_run": policy.dry_run,
        "live_trading_allowed": live_allowed,
        "max_order_value": to_decimal_string(policy.max_order_value),
        "max_daily_value": policy.max_daily_value.map(to_decimal_string),
        "spent_today": to_decimal_string(spent),
        "remaining_daily_budget": remaining,
        "unresolved_orders": unresolved,
        "orders_awaiting_approval": awaiting_approval,
        "journal_available": true,
        "journal_behind_gateway": behind,
        "trading_paused": trading_paused,
        "safe_to_trade": session_ok
            && (is_paper || (is_live && live_allowed))
            && unresolved == 0
            && !behind
            && paused.is_none(),
    })
}
