//! The order guards: one pure function, [`check_order`], run in the documented order
//! [`GUARD_ORDER`], failing closed. The first guard that refuses decides the answer; each
//! refusal carries its own [`ErrorCode`].
//!
//! | # | guard | refuses with | rule |
//! |---|---|---|---|
//! | 1 | `intent_shape` | `ORDER_INVALID` | symbol well formed (not checked for cancels); every given amount > 0; buys: exactly one of `quantity` / `cash_amount`, and `cash_amount` only on market entry buys; sells: `quantity` only (a `cash_amount` sell is invalid); exits and protective orders by `quantity`; market: no prices; limit: `limit_price` and `quantity`; stop: `stop_price`; stop-limit: both; trailing: exactly one of `trail_amount` / `trail_percent` (< 100); protective orders are stop, stop-limit or trailing |
//! | 2 | `account` | `ORDER_ACCOUNT_UNVERIFIED` | the account type (paper/live) must be known |
//! | 3 | `live_lock` | `ORDER_LIVE_TRADING_REFUSED` | a live account needs `allow_live` and the live scope, granted by both the caller's token and the local pairing |
//! | 3a | `account_pin` | `ORDER_ACCOUNT_NOT_PINNED` | when `account_ids` is set, the selected account must be on it; a live account must always be on it |
//! | 4 | `symbol_lists` | `ORDER_SYMBOL_NOT_ALLOWED` | case-insensitive; the deny list wins; a non-empty allow list admits only its symbols; not for cancels (a denylisted symbol's working orders must stay cancellable) |
//! | 5 | `trading_hours` | `ORDER_OUTSIDE_TRADING_HOURS`, or `MARKET_CALENDAR_UNKNOWN` when the calendar cannot tell | entries need regular hours; exits are allowed outside with `exits_outside_regular_hours`; protective GTC orders with `gtc_protective_outside_regular_hours` (protective DAY orders count as exits); cancels with `cancels_outside_regular_hours`. An order allowed outside regular hours does not consult the calendar |
//! | 6 | `short` | `ORDER_NAKED_SHORT_REFUSED`, `ORDER_EXCEEDS_SELLABLE` | unless `allow_short`, a sell (any role) must fit the *sellable* quantity: the long position held minus what our working, in-flight, unresolved or just-filled sells already commit; beyond the position it is a naked short, within it but beyond the sellable quantity it says what is committed |
//! | 7 | `exit_reduces` | `ORDER_INVALID`, `ORDER_EXCEEDS_SELLABLE` | an exit or protective order must reduce a position: it trades against the position's direction and is no larger than what is free of it (position minus same-side commitments), so an "exit" label cannot dodge the value cap or the trading hours |
//! | 8 | `stop_side` | `ORDER_STOP_WRONG_SIDE`, `MARKET_DATA_UNAVAILABLE` | stop and stop-limit: a sell stop below the last price (or the bid), a buy stop above the last price (or the ask); without a quote the order is refused, not waved through |
//! | 9 | `value_cap` | `ORDER_VALUE_CAP_EXCEEDED`, or `MARKET_DATA_UNAVAILABLE` when the notional cannot be computed | buy entries only (exits and protective orders are never value-capped); notional per [`order_notional`] must be <= `max_order_value` |
//! | 10 | `daily_cap` | `ORDER_DAILY_CAP_EXCEEDED` | buy entries only: `spent_today + notional <= max_daily_value` when set |
//! | 11 | `unresolved` | `ORDER_UNRESOLVED_PENDING` | an earlier order on the same instrument and side whose outcome is unknown (any size, any price); not for cancels |
//! | 12 | `duplicate` | `ORDER_DUPLICATE` | (when the window is not 0) an identical order sent within `duplicate_window_seconds`; not for cancels |
//!
//! Brackets also pass [`check_bracket`] (`ORDER_BRACKET_LEVELS_INVALID`): take-profit above the
//! entry and the market, stop-loss below the entry and the market.
//!
//! Dry-run is not a refusal: a passing order reports [`GuardPass::dry_run`] = `policy.dry_run`
//! and the caller then sends nothing.
//!
//! Context the caller must supply (see [`GuardContext`]): the position *as it will be when the
//! order can execute* (for the exits of a bracket, include the entry's quantity), read fresh
//! from the broker; the quantity already committed on the same instrument and side; today's
//! spend from the journal (placed, in-flight and unknown buys; orders that failed before they
//! could have landed do not count); and the duplicate lookups, keyed by
//! [`order_fingerprint`]. The caller takes these journal figures and writes the order's intent
//! in one critical section, so parallel orders are checked as if they came one after another.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ErrorCode;
use crate::calendar::CalendarError;
use crate::money::to_decimal_string;

/// Buy or sell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    /// The CPGW `side` value: `"BUY"` or `"SELL"`.
    pub const fn as_ibkr(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }
}

/// The order type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderKind {
    Market,
    Limit,
    Stop,
    StopLimit,
    TrailingStop,
}

impl OrderKind {
    /// The CPGW `orderType` value: `MKT`, `LMT`, `STP`, `STOP_LIMIT` or `TRAIL`.
    pub const fn as_ibkr(self) -> &'static str {
        match self {
            OrderKind::Market => "MKT",
            OrderKind::Limit => "LMT",
            OrderKind::Stop => "STP",
            OrderKind::StopLimit => "STOP_LIMIT",
            OrderKind::TrailingStop => "TRAIL",
        }
    }
}

/// Why the order is placed. An exit reduces a position (sells of held shares, buys covering a
/// short, `close_position`, the take-profit of a bracket); a protective order is a stop-loss
/// (stop, stop-limit or trailing) on a held position; a cancel cancels an existing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderIntentRole {
    Entry,
    Exit,
    Protective,
    Cancel,
}

/// Time in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tif {
    Day,
    Gtc,
}

impl Tif {
    /// The CPGW `tif` value: `"DAY"` or `"GTC"`.
    pub const fn as_ibkr(self) -> &'static str {
        match self {
            Tif::Day => "DAY",
            Tif::Gtc => "GTC",
        }
    }
}

/// One order as the agent asked for it (after argument parsing, before anything is sent).
/// For a [`OrderIntentRole::Cancel`], only `symbol` (may be empty when unknown) and `role` matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderIntent {
    pub symbol: String,
    pub side: Side,
    pub kind: OrderKind,
    pub role: OrderIntentRole,
    pub quantity: Option<Decimal>,
    pub cash_amount: Option<Decimal>,
    pub limit_price: Option<Decimal>,
    pub stop_price: Option<Decimal>,
    pub trail_amount: Option<Decimal>,
    pub trail_percent: Option<Decimal>,
    pub tif: Tif,
}

/// The latest known prices of the symbol (any of them may be missing; non-positive values are
/// ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarketQuote {
    pub last: Option<Decimal>,
    pub bid: Option<Decimal>,
    pub ask: Option<Decimal>,
}

/// What CPGW says the selected account is. Unknown (missing/ambiguous `isPaper`, no selected
/// account, account mismatch) refuses every order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountMode {
    Paper,
    Live,
    Unknown,
}

/// The message ids of CPGW confirmation warnings accepted by default.
pub const DEFAULT_ALLOWED_WARNING_IDS: &[&str] = &[
    "o354", "o163", "o10152", "o10164", "o10223", "o10151", "o10153",
];

/// The sidecar's local trading configuration. [`Default`] is the safe posture: paper only,
/// dry-run, 100 per buy, no daily cap, 5 s duplicate window, no shorts, entries and exits only
/// in regular hours, protective GTC orders and cancels at any time, the default warning ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TradingPolicy {
    pub allow_live: bool,
    /// The accounts the sidecar may trade (upper case). Empty: any paper account, no live one.
    pub account_ids: Vec<String>,
    pub dry_run: bool,
    pub max_order_value: Decimal,
    pub max_daily_value: Option<Decimal>,
    pub duplicate_window_seconds: u64,
    pub symbol_allowlist: Vec<String>,
    pub symbol_denylist: Vec<String>,
    pub allow_short: bool,
    pub exits_outside_regular_hours: bool,
    pub gtc_protective_outside_regular_hours: bool,
    pub cancels_outside_regular_hours: bool,
    pub allowed_warning_ids: Vec<String>,
}

impl Default for TradingPolicy {
    fn default() -> Self {
        TradingPolicy {
            allow_live: false,
            account_ids: Vec::new(),
            dry_run: true,
            max_order_value: Decimal::ONE_HUNDRED,
            max_daily_value: None,
            duplicate_window_seconds: 5,
            symbol_allowlist: Vec::new(),
            symbol_denylist: Vec::new(),
            allow_short: false,
            exits_outside_regular_hours: false,
            gtc_protective_outside_regular_hours: true,
            cancels_outside_regular_hours: true,
            allowed_warning_ids: DEFAULT_ALLOWED_WARNING_IDS
                .iter()
                .map(|id| id.to_string())
                .collect(),
        }
    }
}

/// Facts the sidecar gathered for this order. Pure data: the guards do no I/O.
#[derive(Clone, Debug)]
pub struct GuardContext<'a> {
    /// From CPGW `/iserver/accounts` (`isPaper`, `DU...` account), verified against the config.
    pub account_mode: AccountMode,
    /// The account CPGW has selected (`selectedAccount`).
    pub account_id: &'a str,
    /// Whether both the token and the local pairing grant `ibkr:orders:live`.
    pub live_scope_granted: bool,
    /// [`crate::calendar::MarketCalendar::is_regular_hours`] at the current time.
    pub market_open: Result<bool, CalendarError>,
    /// The symbol's quote, if one is known.
    pub quote: Option<&'a MarketQuote>,
    /// Signed position in the symbol (negative = short, 0 if none), as it will be when the order
    /// can execute, read fresh from the broker.
    pub position_quantity: Decimal,
    /// Quantity already committed on this instrument and the order's side: our working,
    /// in-flight and unknown-outcome orders, fills the broker's positions may not show yet, and
    /// working orders placed elsewhere (e.g. in TWS).
    pub committed_same_side: Decimal,
    /// Today's buy value from the journal: sent plus indeterminate buys.
    pub spent_today: Decimal,
    /// An identical order (same [`order_fingerprint`]) was sent within the duplicate window.
    pub recent_identical_within_window: bool,
    /// An order on the same instrument and side has an unknown outcome.
    pub unresolved_same_instrument_side: bool,
}

/// A refused order: its code, a human detail (never secrets) and the guard that refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardRefusal {
    pub code: ErrorCode,
    pub detail: String,
    pub guard: &'static str,
}

impl GuardRefusal {
    fn new(guard: &'static str, code: ErrorCode, detail: impl Into<String>) -> Self {
        GuardRefusal {
            code,
            detail: detail.into(),
            guard,
        }
    }

    /// The wire error: the catalog message followed by the detail.
    pub fn body(&self) -> protocol::envelope::ErrorBody {
        self.code.body(Some(&self.detail))
    }
}

impl std::fmt::Display for GuardRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.guard, self.detail)
    }
}

impl std::error::Error for GuardRefusal {}

/// An order every guard let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardPass {
    /// The value counted toward the caps (buy entries only; `None` for everything else).
    pub notional: Option<Decimal>,
    /// `policy.dry_run`: when true the caller validates, journals and sends nothing.
    pub dry_run: bool,
}

pub const GUARD_INTENT_SHAPE: &str = "intent_shape";
pub const GUARD_ACCOUNT: &str = "account";
pub const GUARD_LIVE_LOCK: &str = "live_lock";
pub const GUARD_ACCOUNT_PIN: &str = "account_pin";
pub const GUARD_SYMBOL_LISTS: &str = "symbol_lists";
pub const GUARD_TRADING_HOURS: &str = "trading_hours";
pub const GUARD_SHORT: &str = "short";
pub const GUARD_EXIT_REDUCES: &str = "exit_reduces";
pub const GUARD_STOP_SIDE: &str = "stop_side";
pub const GUARD_VALUE_CAP: &str = "value_cap";
pub const GUARD_DAILY_CAP: &str = "daily_cap";
pub const GUARD_UNRESOLVED: &str = "unresolved";
pub const GUARD_DUPLICATE: &str = "duplicate";
pub const GUARD_BRACKET_LEVELS: &str = "bracket_levels";

/// The order in which [`check_order`] runs its guards (the first refusal wins).
pub const GUARD_ORDER: &[&str] = &[
    GUARD_INTENT_SHAPE,
    GUARD_ACCOUNT,
    GUARD_LIVE_LOCK,
    GUARD_ACCOUNT_PIN,
    GUARD_SYMBOL_LISTS,
    GUARD_TRADING_HOURS,
    GUARD_SHORT,
    GUARD_EXIT_REDUCES,
    GUARD_STOP_SIDE,
    GUARD_VALUE_CAP,
    GUARD_DAILY_CAP,
    GUARD_UNRESOLVED,
    GUARD_DUPLICATE,
];

/// Longest symbol accepted.
pub const MAX_SYMBOL_LEN: usize = 20;

/// Runs every guard in [`GUARD_ORDER`]; the first refusal is returned.
pub fn check_order(
    intent: &OrderIntent,
    policy: &TradingPolicy,
    context: &GuardContext,
) -> Result<GuardPass, GuardRefusal> {
    check_shape(intent)?;
    check_account(context)?;
    check_live_lock(policy, context)?;
    check_account_pin(policy, context)?;
    check_symbol_lists(intent, policy)?;
    check_trading_hours(intent, policy, context)?;
    if intent.role != OrderIntentRole::Cancel {
        check_short(intent, policy, context)?;
        check_exit_reduces(intent, context)?;
        check_stop_side(intent, context)?;
    }
    let notional = check_caps(intent, policy, context)?;
    check_unresolved(intent, context)?;
    check_duplicate(intent, policy, context)?;
    Ok(GuardPass {
        notional,
        dry_run: policy.dry_run,
    })
}

/// The guards that need nothing from the broker: the order's shape and the symbol lists. The
/// caller runs them before it asks the broker anything, so a refused order costs no request;
/// [`check_order`] runs them again with the rest.
pub fn check_local(intent: &OrderIntent, policy: &TradingPolicy) -> Result<(), GuardRefusal> {
    check_shape(intent)?;
    check_symbol_lists(intent, policy)
}

/// The symbol lists alone, for an order whose shape is not known yet (a close, sized from the
/// position).
pub fn check_symbol_allowed(symbol: &str, policy: &TradingPolicy) -> Result<(), GuardRefusal> {
    check_symbol_lists(
        &OrderIntent {
            symbol: symbol.to_string(),
            side: Side::Sell,
            kind: OrderKind::Market,
            role: OrderIntentRole::Exit,
            quantity: None,
            cash_amount: None,
            limit_price: None,
            stop_price: None,
            trail_amount: None,
            trail_percent: None,
            tif: Tif::Day,
        },
        policy,
    )
}

fn invalid(detail: impl Into<String>) -> GuardRefusal {
    GuardRefusal::new(GUARD_INTENT_SHAPE, ErrorCode::OrderInvalid, detail)
}

fn check_shape(intent: &OrderIntent) -> Result<(), GuardRefusal> {
    if intent.role == OrderIntentRole::Cancel {
        return Ok(());
    }
    let symbol = intent.symbol.as_str();
    if symbol.is_empty()
        || symbol.len() > MAX_SYMBOL_LEN
        || symbol.trim() != symbol
        || !symbol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'/' | b' '))
    {
        return Err(invalid(
            "symbol must be a ticker of letters, digits, '.', '-', '/' or spaces.",
        ));
    }
    for (field, value) in [
        ("quantity", intent.quantity),
        ("cash_amount", intent.cash_amount),
        ("limit_price", intent.limit_price),
        ("stop_price", intent.stop_price),
        ("trail_amount", intent.trail_amount),
        ("trail_percent", intent.trail_percent),
    ] {
        if value.is_some_and(|v| v <= Decimal::ZERO) {
            return Err(invalid(format!("{field} must be greater than zero.")));
        }
    }
    match intent.side {
        Side::Buy => match (intent.quantity, intent.cash_amount) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "give either quantity or cash_amount for a buy, not both.",
                ));
            }
            (None, None) => return Err(invalid("a buy needs quantity or cash_amount.")),
            (None, Some(_)) => {
                if intent.kind != OrderKind::Market || intent.role != OrderIntentRole::Entry {
                    return Err(invalid(
                        "cash_amount is only for market buys that open or add to a position; use quantity.",
                    ));
                }
            }
            (Some(_), None) => {}
        },
        Side::Sell => {
            if intent.cash_amount.is_some() {
                return Err(invalid(
                    "sells are by quantity only (IBKR refuses cash_amount on sells).",
                ));
            }
            if intent.quantity.is_none() {
                return Err(invalid("a sell needs quantity."));
            }
        }
    }
    if matches!(
        intent.role,
        OrderIntentRole::Exit | OrderIntentRole::Protective
    ) && intent.quantity.is_none()
    {
        return Err(invalid("exits and protective orders need quantity."));
    }
    let has_trail = intent.trail_amount.is_some() || intent.trail_percent.is_some();
    if intent.kind != OrderKind::TrailingStop && has_trail {
        return Err(invalid(
            "trail_amount and trail_percent are only for trailing stops.",
        ));
    }
    match intent.kind {
        OrderKind::Market => {
            if intent.limit_price.is_some() || intent.stop_price.is_some() {
                return Err(invalid(
                    "a market order takes no limit_price or stop_price.",
                ));
            }
        }
        OrderKind::Limit => {
            if intent.limit_price.is_none() {
                return Err(invalid("a limit order needs limit_price."));
            }
            if intent.quantity.is_none() {
                return Err(invalid("a limit order needs quantity."));
            }
            if intent.stop_price.is_some() {
                return Err(invalid(
                    "a limit order takes no stop_price (use a stop-limit order).",
                ));
            }
        }
        OrderKind::Stop => {
            if intent.stop_price.is_none() {
                return Err(invalid("a stop order needs stop_price."));
            }
            if intent.limit_price.is_some() {
                return Err(invalid(
                    "a stop order takes no limit_price (use a stop-limit order).",
                ));
            }
        }
        OrderKind::StopLimit => {
            if intent.stop_price.is_none() || intent.limit_price.is_none() {
                return Err(invalid(
                    "a stop-limit order needs both stop_price and limit_price.",
                ));
            }
        }
        OrderKind::TrailingStop => {
            if intent.trail_amount.is_some() == intent.trail_percent.is_some() {
                return Err(invalid(
                    "a trailing stop needs exactly one of trail_amount or trail_percent.",
                ));
            }
            if intent
                .trail_percent
                .is_some_and(|p| p >= Decimal::ONE_HUNDRED)
            {
                return Err(invalid("trail_percent must be below 100."));
            }
            if intent.limit_price.is_some() || intent.stop_price.is_some() {
                return Err(invalid(
                    "a trailing stop takes no limit_price or stop_price.",
                ));
            }
        }
    }
    if intent.role == OrderIntentRole::Protective
        && !matches!(
            intent.kind,
            OrderKind::Stop | OrderKind::StopLimit | OrderKind::TrailingStop
        )
    {
        return Err(invalid(
            "a protective order is a stop, stop-limit or trailing stop.",
        ));
    }
    Ok(())
}

fn check_account(context: &GuardContext) -> Result<(), GuardRefusal> {
    if context.account_mode == AccountMode::Unknown {
        return Err(GuardRefusal::new(
            GUARD_ACCOUNT,
            ErrorCode::OrderAccountUnverified,
            "The account type (paper or live) is unknown.",
        ));
    }
    Ok(())
}

fn check_account_pin(policy: &TradingPolicy, context: &GuardContext) -> Result<(), GuardRefusal> {
    let account = context.account_id.trim().to_ascii_uppercase();
    let pinned = policy
        .account_ids
        .iter()
        .any(|id| id.trim().eq_ignore_ascii_case(&account));
    if !account.is_empty() && pinned {
        return Ok(());
    }
    if policy.account_ids.is_empty() && context.account_mode == AccountMode::Paper {
        return Ok(());
    }
    Err(GuardRefusal::new(
        GUARD_ACCOUNT_PIN,
        ErrorCode::OrderAccountNotPinned,
        if policy.account_ids.is_empty() {
            format!(
                "The selected account {account} is live, and live accounts must be named in trading.account_ids."
            )
        } else {
            format!("The selected account {account} is not in trading.account_ids.")
        },
    ))
}

fn check_live_lock(policy: &TradingPolicy, context: &GuardContext) -> Result<(), GuardRefusal> {
    if context.account_mode != AccountMode::Live {
        return Ok(());
    }
    let refuse = |detail: &str| {
        Err(GuardRefusal::new(
            GUARD_LIVE_LOCK,
            ErrorCode::OrderLiveTradingRefused,
            detail,
        ))
    };
    if !policy.allow_live {
        return refuse("trading.allow_live is false in the sidecar config.");
    }
    if !context.live_scope_granted {
        return refuse("The ibkr:orders:live scope is not granted.");
    }
    Ok(())
}

fn normalize_symbol(symbol: &str) -> String {
    symbol.trim().to_ascii_uppercase()
}

fn check_symbol_lists(intent: &OrderIntent, policy: &TradingPolicy) -> Result<(), GuardRefusal> {
    // A cancel only ever reduces risk: a denylisted symbol's working orders must stay
    // cancellable.
    if intent.role == OrderIntentRole::Cancel {
        return Ok(());
    }
    let symbol = normalize_symbol(&intent.symbol);
    let listed = |list: &[String]| list.iter().any(|s| normalize_symbol(s) == symbol);
    if listed(&policy.symbol_denylist) {
        return Err(GuardRefusal::new(
            GUARD_SYMBOL_LISTS,
            ErrorCode::OrderSymbolNotAllowed,
            "The symbol is on trading.symbol_denylist.",
        ));
    }
    if !policy.symbol_allowlist.is_empty() && !listed(&policy.symbol_allowlist) {
        return Err(GuardRefusal::new(
            GUARD_SYMBOL_LISTS,
            ErrorCode::OrderSymbolNotAllowed,
            "The symbol is not on trading.symbol_allowlist.",
        ));
    }
    Ok(())
}

fn check_trading_hours(
    intent: &OrderIntent,
    policy: &TradingPolicy,
    context: &GuardContext,
) -> Result<(), GuardRefusal> {
    let allowed_outside = match intent.role {
        OrderIntentRole::Entry => false,
        OrderIntentRole::Exit => policy.exits_outside_regular_hours,
        OrderIntentRole::Protective => {
            (intent.tif == Tif::Gtc && policy.gtc_protective_outside_regular_hours)
                || policy.exits_outside_regular_hours
        }
        OrderIntentRole::Cancel => policy.cancels_outside_regular_hours,
    };
    if allowed_outside {
        return Ok(());
    }
    match &context.market_open {
        Ok(true) => Ok(()),
        Ok(false) => Err(GuardRefusal::new(
            GUARD_TRADING_HOURS,
            ErrorCode::OrderOutsideTradingHours,
            match intent.role {
                OrderIntentRole::Entry => {
                    "Orders that open or add to a position are placed only in regular hours; no setting changes that."
                }
                OrderIntentRole::Exit => {
                    "Exits outside regular hours need trading.exits_outside_regular_hours."
                }
                OrderIntentRole::Protective => {
                    "Protective orders outside regular hours must be GTC (trading.gtc_protective_outside_regular_hours)."
                }
                OrderIntentRole::Cancel => {
                    "Cancels outside regular hours need trading.cancels_outside_regular_hours."
                }
            },
        )),
        Err(err) => Err(GuardRefusal::new(
            GUARD_TRADING_HOURS,
            ErrorCode::MarketCalendarUnknown,
            err.to_string(),
        )),
    }
}

/// What of the position is free to sell (`Side::Sell`) or to cover (`Side::Buy`): the
/// position in the order's reducing direction minus what same-side orders already commit.
fn free_to_reduce(side: Side, context: &GuardContext) -> (Decimal, Decimal) {
    let position = match side {
        Side::Sell => context.position_quantity.max(Decimal::ZERO),
        Side::Buy => (-context.position_quantity).max(Decimal::ZERO),
    };
    let free = (position - context.committed_same_side.max(Decimal::ZERO)).max(Decimal::ZERO);
    (position, free)
}

fn exceeds_sellable(position: Decimal, free: Decimal, context: &GuardContext) -> GuardRefusal {
    GuardRefusal::new(
        GUARD_SHORT,
        ErrorCode::OrderExceedsSellable,
        format!(
            "The position is {}, of which {} is committed to working, in-flight or unresolved orders or a fill not yet reflected; {} is free.",
            to_decimal_string(position),
            to_decimal_string(context.committed_same_side.max(Decimal::ZERO)),
            to_decimal_string(free)
        ),
    )
}

fn check_short(
    intent: &OrderIntent,
    policy: &TradingPolicy,
    context: &GuardContext,
) -> Result<(), GuardRefusal> {
    if intent.side != Side::Sell || policy.allow_short {
        return Ok(());
    }
    let (held, free) = free_to_reduce(Side::Sell, context);
    match intent.quantity {
        Some(quantity) if quantity <= free => Ok(()),
        Some(quantity) if quantity <= held => Err(exceeds_sellable(held, free, context)),
        _ => Err(GuardRefusal::new(
            GUARD_SHORT,
            ErrorCode::OrderNakedShortRefused,
            format!("The long position held is {}.", to_decimal_string(held)),
        )),
    }
}

fn check_exit_reduces(intent: &OrderIntent, context: &GuardContext) -> Result<(), GuardRefusal> {
    if !matches!(
        intent.role,
        OrderIntentRole::Exit | OrderIntentRole::Protective
    ) {
        return Ok(());
    }
    let (reducible, free) = free_to_reduce(intent.side, context);
    match intent.quantity {
        Some(quantity) if reducible > Decimal::ZERO && quantity <= free => Ok(()),
        Some(quantity) if reducible > Decimal::ZERO && quantity <= reducible => {
            let mut refusal = exceeds_sellable(reducible, free, context);
            refusal.guard = GUARD_EXIT_REDUCES;
            Err(refusal)
        }
        _ => Err(GuardRefusal::new(
            GUARD_EXIT_REDUCES,
            ErrorCode::OrderInvalid,
            match intent.side {
                Side::Sell => "An exit or protective sell must not exceed the long position held.",
                Side::Buy => {
                    "An exit or protective buy must cover an existing short position and not exceed it; to open or add to a position, place an entry."
                }
            },
        )),
    }
}

fn positive(price: Option<Decimal>) -> Option<Decimal> {
    price.filter(|p| *p > Decimal::ZERO)
}

fn check_stop_side(intent: &OrderIntent, context: &GuardContext) -> Result<(), GuardRefusal> {
    if !matches!(intent.kind, OrderKind::Stop | OrderKind::StopLimit) {
        return Ok(());
    }
    let Some(stop) = intent.stop_price else {
        return Ok(());
    };
    let reference = context.quote.and_then(|quote| match intent.side {
        Side::Sell => positive(quote.last).or(positive(quote.bid)),
        Side::Buy => positive(quote.last).or(positive(quote.ask)),
    });
    let Some(reference) = reference else {
        // Without a price the stop could sit on the wrong side and fill at once.
        return Err(GuardRefusal::new(
            GUARD_STOP_SIDE,
            ErrorCode::MarketDataUnavailable,
            "No price is known for this symbol, so the stop price cannot be checked against the market.",
        ));
    };
    let wrong = |reference: Decimal, word: &str| {
        Err(GuardRefusal::new(
            GUARD_STOP_SIDE,
            ErrorCode::OrderStopWrongSide,
            format!(
                "The stop price {} is not {word} the current price {}.",
                to_decimal_string(stop),
                to_decimal_string(reference)
            ),
        ))
    };
    match intent.side {
        Side::Sell if stop >= reference => wrong(reference, "below"),
        Side::Buy if stop <= reference => wrong(reference, "above"),
        _ => Ok(()),
    }
}

/// The value of an order for the caps. `cash_amount` when given; otherwise `quantity` times the
/// highest price it could plausibly execute at, from the positive prices available:
/// - buys: last, ask, and the limit/stop price (limit, stop, stop-limit);
///   market and trailing buys: last and ask;
/// - sells: last, bid, and the limit/stop price.
///
/// `None` when there is no price at all (the value cap then fails closed with
/// `MARKET_DATA_UNAVAILABLE`). A product too large for `Decimal` saturates at `Decimal::MAX`.
pub fn order_notional(intent: &OrderIntent, quote: Option<&MarketQuote>) -> Option<Decimal> {
    if let Some(cash) = intent.cash_amount {
        return Some(cash);
    }
    let quantity = intent.quantity?;
    let mut candidates: Vec<Decimal> = Vec::with_capacity(4);
    if let Some(quote) = quote {
        candidates.extend(positive(quote.last));
        candidates.extend(match intent.side {
            Side::Buy => positive(quote.ask),
            Side::Sell => positive(quote.bid),
        });
    }
    if matches!(
        intent.kind,
        OrderKind::Limit | OrderKind::Stop | OrderKind::StopLimit
    ) {
        candidates.extend(positive(intent.limit_price));
        candidates.extend(positive(intent.stop_price));
    }
    let price = candidates.into_iter().max()?;
    Some(quantity.checked_mul(price).unwrap_or(Decimal::MAX))
}

fn check_caps(
    intent: &OrderIntent,
    policy: &TradingPolicy,
    context: &GuardContext,
) -> Result<Option<Decimal>, GuardRefusal> {
    if intent.role != OrderIntentRole::Entry || intent.side != Side::Buy {
        return Ok(None);
    }
    let Some(notional) = order_notional(intent, context.quote) else {
        return Err(GuardRefusal::new(
            GUARD_VALUE_CAP,
            ErrorCode::MarketDataUnavailable,
            "No price is known for this symbol, so the order's value cannot be checked against the cap.",
        ));
    };
    if notional > policy.max_order_value {
        return Err(GuardRefusal::new(
            GUARD_VALUE_CAP,
            ErrorCode::OrderValueCapExceeded,
            format!(
                "Estimated value {} is above trading.max_order_value {}.",
                to_decimal_string(notional.round_dp(2)),
                to_decimal_string(policy.max_order_value)
            ),
        ));
    }
    if let Some(cap) = policy.max_daily_value {
        let total = context
            .spent_today
            .checked_add(notional)
            .unwrap_or(Decimal::MAX);
        if total > cap {
            let remaining = (cap - context.spent_today).max(Decimal::ZERO);
            return Err(GuardRefusal::new(
                GUARD_DAILY_CAP,
                ErrorCode::OrderDailyCapExceeded,
                format!(
                    "Estimated value {} is above today's remaining budget {} (trading.max_daily_value {}).",
                    to_decimal_string(notional.round_dp(2)),
                    to_decimal_string(remaining),
                    to_decimal_string(cap)
                ),
            ));
        }
    }
    Ok(Some(notional))
}

fn check_unresolved(intent: &OrderIntent, context: &GuardContext) -> Result<(), GuardRefusal> {
    if intent.role == OrderIntentRole::Cancel || !context.unresolved_same_instrument_side {
        return Ok(());
    }
    Err(GuardRefusal::new(
        GUARD_UNRESOLVED,
        ErrorCode::OrderUnresolvedPending,
        format!(
            "An earlier {} order on {} has an unknown outcome.",
            intent.side.as_ibkr(),
            normalize_symbol(&intent.symbol)
        ),
    ))
}

/// The levels of a buy bracket: `entry_limit` (`None` for a market entry), `take_profit` and
/// `stop_loss`, against the market `quote`. The entry fills at about the market when it is a
/// market order or a limit at or above the market, else at no more than its limit; the exits
/// must sit on the right side of that price or one of them fills (or triggers) at once.
/// Refuses, each with its own message: a take-profit not above a limit entry, a take-profit not
/// above the price the entry fills at, a stop-loss not below a limit entry, a stop-loss not
/// below the price the entry fills at, and any check that cannot be made for want of a price.
pub fn check_bracket(
    entry_limit: Option<Decimal>,
    take_profit: Decimal,
    stop_loss: Decimal,
    quote: Option<&MarketQuote>,
) -> Result<(), GuardRefusal> {
    let refuse = |detail: String| {
        Err(GuardRefusal::new(
            GUARD_BRACKET_LEVELS,
            ErrorCode::OrderBracketLevelsInvalid,
            detail,
        ))
    };
    let show = to_decimal_string;
    let market = quote.and_then(|q| positive(q.last).or(positive(q.ask)));
    let Some(market) = market else {
        return Err(GuardRefusal::new(
            GUARD_BRACKET_LEVELS,
            ErrorCode::MarketDataUnavailable,
            "No price is known for this symbol, so the bracket's levels cannot be checked against the market.",
        ));
    };
    if let Some(limit) = entry_limit {
        if take_profit <= limit {
            return refuse(format!(
                "take_profit {} must be above the entry limit {}.",
                show(take_profit),
                show(limit)
            ));
        }
        if stop_loss >= limit {
            return refuse(format!(
                "stop_loss {} must be below the entry limit {}.",
                show(stop_loss),
                show(limit)
            ));
        }
    }
    let fills_at = entry_limit.map_or(market, |limit| limit.min(market));
    if take_profit <= fills_at {
        return refuse(format!(
            "take_profit {} must be above {}, the price the entry fills at, or it fills at once.",
            show(take_profit),
            show(fills_at)
        ));
    }
    if stop_loss >= fills_at {
        return refuse(format!(
            "stop_loss {} must be below {}, the price the entry fills at, or it triggers at once.",
            show(stop_loss),
            show(fills_at)
        ));
    }
    Ok(())
}

fn check_duplicate(
    intent: &OrderIntent,
    policy: &TradingPolicy,
    context: &GuardContext,
) -> Result<(), GuardRefusal> {
    if intent.role == OrderIntentRole::Cancel {
        return Ok(());
    }
    if policy.duplicate_window_seconds > 0 && context.recent_identical_within_window {
        return Err(GuardRefusal::new(
            GUARD_DUPLICATE,
            ErrorCode::OrderDuplicate,
            format!(
                "An identical order was sent within the last {} seconds.",
                policy.duplicate_window_seconds
            ),
        ));
    }
    Ok(())
}

/// The confirmation warning IBKR raises when a price deviates from the market by more than
/// its percentage constraint (a fat-finger check).
pub const PRICE_DEVIATION_WARNING: &str = "o163";

/// Whether a CPGW confirmation warning may be auto-accepted for an order with this role: its
/// message id (trimmed, case-insensitive) is on `policy.allowed_warning_ids`. An empty id is
/// never allowed. The price-deviation warning is accepted only for buy entries, whose value the
/// caps bound: for an exit or a protective order nothing else would stop a mistyped price.
pub fn warning_allowed(policy: &TradingPolicy, message_id: &str, role: OrderIntentRole) -> bool {
    let id = message_id.trim();
    if id.eq_ignore_ascii_case(PRICE_DEVIATION_WARNING) && role != OrderIntentRole::Entry {
        return false;
    }
    !id.is_empty()
        && policy
            .allowed_warning_ids
            .iter()
            .any(|allowed| allowed.trim().eq_ignore_ascii_case(id))
}

/// A stable fingerprint of what makes two orders identical for duplicate detection: symbol
/// (case-insensitive), side, kind, time in force, quantities and prices (normalized, so `12.50`
/// equals `12.5`). The role is not part of it. Format: `"fp1-"` + 64 lowercase hex digits.
pub fn order_fingerprint(intent: &OrderIntent) -> String {
    let field = |value: Option<Decimal>| value.map(to_decimal_string).unwrap_or_default();
    let canonical = format!(
        "v1|{}|{}|{}|{}|q={}|c={}|l={}|s={}|ta={}|tp={}",
        normalize_symbol(&intent.symbol),
        intent.side.as_ibkr(),
        intent.kind.as_ibkr(),
        intent.tif.as_ibkr(),
        field(intent.quantity),
        field(intent.cash_amount),
        field(intent.limit_price),
        field(intent.stop_price),
        field(intent.trail_amount),
        field(intent.trail_percent),
    );
    format!("fp1-{}", hex::encode(Sha256::digest(canonical.as_bytes())))
}

/// Length of a [`client_order_id`]: `"ia-"` + 24 hex digits.
pub const CLIENT_ORDER_ID_LEN: usize = 27;

/// The IBKR `cOID` derived from an agent's idempotency key, deterministic so that a retried call
/// maps to the same broker order: `"ia-"` + the first 24 hex digits of
/// SHA-256(len(namespace) as 8 bytes big-endian || namespace || key). The length prefix keeps
/// `("ab", "c")` and `("a", "bc")` apart. The namespace should identify the account and pairing.
pub fn client_order_id(idempotency_key: &str, namespace: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update((namespace.len() as u64).to_be_bytes());
    hasher.update(namespace.as_bytes());
    hasher.update(idempotency_key.as_bytes());
    let digest = hex::encode(hasher.finalize());
    format!("ia-{}", &digest[..24])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn quote() -> MarketQuote {
        MarketQuote {
            last: Some(dec("10")),
            bid: Some(dec("9.9")),
            ask: Some(dec("10.1")),
        }
    }

    fn buy_qty(q: &str) -> OrderIntent {
        OrderIntent {
            symbol: "AAPL".into(),
            side: Side::Buy,
            kind: OrderKind::Market,
            role: OrderIntentRole::Entry,
            quantity: Some(dec(q)),
            cash_amount: None,
            limit_price: None,
            stop_price: None,
            trail_amount: None,
            trail_percent: None,
            tif: Tif::Day,
        }
    }

    fn buy_cash(c: &str) -> OrderIntent {
        OrderIntent {
            quantity: None,
            cash_amount: Some(dec(c)),
            ..buy_qty("1")
        }
    }

    fn sell(q: &str, role: OrderIntentRole) -> OrderIntent {
        OrderIntent {
            side: Side::Sell,
            role,
            ..buy_qty(q)
        }
    }

    fn stop_sell(q: &str, stop: &str) -> OrderIntent {
        OrderIntent {
            kind: OrderKind::Stop,
            stop_price: Some(dec(stop)),
            tif: Tif::Gtc,
            ..sell(q, OrderIntentRole::Protective)
        }
    }

    fn ctx(q: &MarketQuote) -> GuardContext<'_> {
        GuardContext {
            account_mode: AccountMode::Paper,
            account_id: "DU1234567",
            live_scope_granted: false,
            market_open: Ok(true),
            quote: Some(q),
            position_quantity: dec("100"),
            committed_same_side: Decimal::ZERO,
            spent_today: Decimal::ZERO,
            recent_identical_within_window: false,
            unresolved_same_instrument_side: false,
        }
    }

    fn refused(intent: &OrderIntent, policy: &TradingPolicy, c: &GuardContext) -> GuardRefusal {
        check_order(intent, policy, c).unwrap_err()
    }

    #[test]
    fn defaults_are_safe() {
        let p = TradingPolicy::default();
        assert!(!p.allow_live && p.dry_run && !p.allow_short);
        assert_eq!(p.max_order_value, dec("100"));
        assert_eq!(p.max_daily_value, None);
        assert_eq!(p.duplicate_window_seconds, 5);
        assert!(!p.exits_outside_regular_hours);
        assert!(p.gtc_protective_outside_regular_hours && p.cancels_outside_regular_hours);
        let entry = OrderIntentRole::Entry;
        for id in [
            "o354", "o163", "o10152", "o10164", "o10223", "o10151", "o10153",
        ] {
            assert!(warning_allowed(&p, id, entry), "{id}");
        }
        assert!(warning_allowed(&p, " O354 ", entry));
        assert!(!warning_allowed(&p, "o2137", entry));
        assert!(!warning_allowed(&p, "", entry));
        assert!(!warning_allowed(&p, "o35", entry));
        // The price-deviation check stays on for what no cap bounds.
        for role in [
            OrderIntentRole::Exit,
            OrderIntentRole::Protective,
            OrderIntentRole::Cancel,
        ] {
            assert!(!warning_allowed(&p, "o163", role), "{role:?}");
            assert!(!warning_allowed(&p, " O163", role), "{role:?}");
            assert!(warning_allowed(&p, "o10152", role), "{role:?}");
        }
    }

    #[test]
    fn a_plain_buy_passes_in_dry_run() {
        let q = quote();
        let pass = check_order(&buy_cash("50"), &TradingPolicy::default(), &ctx(&q)).unwrap();
        assert_eq!(
            pass,
            GuardPass {
                notional: Some(dec("50")),
                dry_run: true
            }
        );
        let policy = TradingPolicy {
            dry_run: false,
            ..TradingPolicy::default()
        };
        let pass = check_order(&buy_qty("2"), &policy, &ctx(&q)).unwrap();
        assert_eq!(
            pass,
            GuardPass {
                notional: Some(dec("20.2")),
                dry_run: false
            }
        );
        let pass = check_order(&sell("5", OrderIntentRole::Exit), &policy, &ctx(&q)).unwrap();
        assert_eq!(pass.notional, None);
    }

    #[test]
    fn guard_order_is_documented_and_complete() {
        assert_eq!(
            GUARD_ORDER,
            &[
                "intent_shape",
                "account",
                "live_lock",
                "account_pin",
                "symbol_lists",
                "trading_hours",
                "short",
                "exit_reduces",
                "stop_side",
                "value_cap",
                "daily_cap",
                "unresolved",
                "duplicate"
            ]
        );
    }

    #[test]
    fn shape_refusals() {
        let q = quote();
        let c = ctx(&q);
        let p = TradingPolicy::default();
        let cases: Vec<(OrderIntent, &str)> = vec![
            (
                OrderIntent {
                    symbol: String::new(),
                    ..buy_cash("5")
                },
                "symbol",
            ),
            (
                OrderIntent {
                    symbol: " AAPL".into(),
                    ..buy_cash("5")
                },
                "symbol",
            ),
            (
                OrderIntent {
                    symbol: "AA;PL".into(),
                    ..buy_cash("5")
                },
                "symbol",
            ),
            (
                OrderIntent {
                    symbol: "A".repeat(21),
                    ..buy_cash("5")
                },
                "symbol",
            ),
            (
                OrderIntent {
                    cash_amount: Some(dec("5")),
                    ..buy_qty("1")
                },
                "not both",
            ),
            (
                OrderIntent {
                    quantity: None,
                    ..buy_qty("1")
                },
                "needs quantity or cash_amount",
            ),
            (buy_qty("0"), "quantity must be greater than zero"),
            (buy_cash("-1"), "cash_amount must be greater than zero"),
            (
                OrderIntent {
                    cash_amount: Some(dec("5")),
                    ..sell("1", OrderIntentRole::Exit)
                },
                "quantity only",
            ),
            (
                OrderIntent {
                    quantity: None,
                    cash_amount: Some(dec("5")),
                    ..sell("1", OrderIntentRole::Exit)
                },
                "quantity only",
            ),
            (
                OrderIntent {
                    quantity: None,
                    ..sell("1", OrderIntentRole::Exit)
                },
                "a sell needs quantity",
            ),
            (
                OrderIntent {
                    kind: OrderKind::Limit,
                    limit_price: Some(dec("10")),
                    ..buy_cash("5")
                },
                "cash_amount is only for market",
            ),
            (
                OrderIntent {
                    role: OrderIntentRole::Exit,
                    ..buy_cash("5")
                },
                "cash_amount is only for market",
            ),
            (
                OrderIntent {
                    kind: OrderKind::Limit,
                    ..buy_qty("1")
                },
                "needs limit_price",
            ),
            (
                OrderIntent {
                    limit_price: Some(dec("10")),
                    ..buy_qty("1")
                },
                "market order takes no",
            ),
            (
                OrderIntent {
                    stop_price: Some(dec("10")),
                    ..buy_qty("1")
                },
                "market order takes no",
            ),
            (
                OrderIntent {
                    kind: OrderKind::Limit,
                    limit_price: Some(dec("10")),
                    stop_price: Some(dec("9")),
                    ..buy_qty("1")
                },
                "takes no stop_price",
            ),
            (
                OrderIntent {
                    kind: OrderKind::Stop,
                    ..buy_qty("1")
                },
                "needs stop_price",
            ),
            (
                OrderIntent {
                    kind: OrderKind::Stop,
                    stop_price: Some(dec("11")),
                    limit_price: Some(dec("12")),
                    ..buy_qty("1")
                },
                "takes no limit_price",
            ),
            (
                OrderIntent {
                    kind: OrderKind::StopLimit,
                    stop_price: Some(dec("11")),
                    ..buy_qty("1")
                },
                "both stop_price and limit_price",
            ),
            (
                OrderIntent {
                    kind: OrderKind::StopLimit,
                    limit_price: Some(dec("11")),
                    ..buy_qty("1")
                },
                "both stop_price and limit_price",
            ),
            (
                OrderIntent {
                    kind: OrderKind::TrailingStop,
                    ..sell("1", OrderIntentRole::Protective)
                },
                "exactly one of trail_amount",
            ),
            (
                OrderIntent {
                    kind: OrderKind::TrailingStop,
                    trail_amount: Some(dec("1")),
                    trail_percent: Some(dec("2")),
                    ..sell("1", OrderIntentRole::Protective)
                },
                "exactly one of trail_amount",
            ),
            (
                OrderIntent {
                    kind: OrderKind::TrailingStop,
                    trail_percent: Some(dec("100")),
                    ..sell("1", OrderIntentRole::Protective)
                },
                "below 100",
            ),
            (
                OrderIntent {
                    kind: OrderKind::TrailingStop,
                    trail_amount: Some(dec("0")),
                    ..sell("1", OrderIntentRole::Protective)
                },
                "trail_amount must be greater",
            ),
            (
                OrderIntent {
                    trail_amount: Some(dec("1")),
                    ..buy_qty("1")
                },
                "only for trailing stops",
            ),
            (
                sell("1", OrderIntentRole::Protective),
                "protective order is a stop",
            ),
        ];
        for (intent, needle) in cases {
            let r = refused(&intent, &p, &c);
            assert_eq!(r.code, ErrorCode::OrderInvalid, "{intent:?}");
            assert_eq!(r.guard, GUARD_INTENT_SHAPE);
            assert!(r.detail.contains(needle), "{:?} lacks {needle:?}", r.detail);
        }
        // Well-formed kinds pass.
        for intent in [
            OrderIntent {
                kind: OrderKind::Limit,
                limit_price: Some(dec("9")),
                ..buy_qty("1")
            },
            OrderIntent {
                kind: OrderKind::TrailingStop,
                trail_percent: Some(dec("5")),
                ..sell("1", OrderIntentRole::Protective)
            },
            OrderIntent {
                kind: OrderKind::StopLimit,
                stop_price: Some(dec("9")),
                limit_price: Some(dec("8.9")),
                ..sell("1", OrderIntentRole::Protective)
            },
            OrderIntent {
                symbol: "BRK B".into(),
                ..buy_cash("5")
            },
            OrderIntent {
                symbol: "brk.b".into(),
                ..buy_cash("5")
            },
        ] {
            assert!(check_order(&intent, &p, &c).is_ok(), "{intent:?}");
        }
    }

    #[test]
    fn account_unknown_is_refused() {
        let q = quote();
        let c = GuardContext {
            account_mode: AccountMode::Unknown,
            ..ctx(&q)
        };
        let r = refused(&buy_cash("5"), &TradingPolicy::default(), &c);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderAccountUnverified, GUARD_ACCOUNT)
        );
        // Even cancels and exits.
        let cancel = OrderIntent {
            role: OrderIntentRole::Cancel,
            ..buy_cash("5")
        };
        assert_eq!(
            refused(&cancel, &TradingPolicy::default(), &c).code,
            ErrorCode::OrderAccountUnverified
        );
    }

    #[test]
    fn live_needs_config_and_scope() {
        let q = quote();
        let live = GuardContext {
            account_mode: AccountMode::Live,
            ..ctx(&q)
        };
        let r = refused(&buy_cash("5"), &TradingPolicy::default(), &live);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderLiveTradingRefused, GUARD_LIVE_LOCK)
        );
        assert!(r.detail.contains("allow_live"));
        let allow = TradingPolicy {
            allow_live: true,
            account_ids: vec!["U7654321".into()],
            ..TradingPolicy::default()
        };
        let live = GuardContext {
            account_id: "u7654321",
            ..live
        };
        let r = refused(&buy_cash("5"), &allow, &live);
        assert_eq!(r.code, ErrorCode::OrderLiveTradingRefused);
        assert!(r.detail.contains("ibkr:orders:live"));
        let scoped = GuardContext {
            live_scope_granted: true,
            ..live.clone()
        };
        assert!(check_order(&buy_cash("5"), &allow, &scoped).is_ok());
        // A live account must be named: without account_ids, or another account, refused.
        let unnamed = TradingPolicy {
            account_ids: Vec::new(),
            ..allow.clone()
        };
        let r = refused(&buy_cash("5"), &unnamed, &scoped);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderAccountNotPinned, GUARD_ACCOUNT_PIN)
        );
        let other = GuardContext {
            account_id: "U1111111",
            ..scoped.clone()
        };
        assert_eq!(
            refused(&buy_cash("5"), &allow, &other).code,
            ErrorCode::OrderAccountNotPinned
        );
        // Scope without config is still refused.
        assert_eq!(
            refused(&buy_cash("5"), &TradingPolicy::default(), &scoped).code,
            ErrorCode::OrderLiveTradingRefused
        );
    }

    #[test]
    fn symbol_lists_are_case_insensitive() {
        let q = quote();
        let c = ctx(&q);
        let deny = TradingPolicy {
            symbol_denylist: vec!["aapl".into()],
            ..TradingPolicy::default()
        };
        let r = refused(&buy_cash("5"), &deny, &c);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderSymbolNotAllowed, GUARD_SYMBOL_LISTS)
        );
        // Applies to exits too (the agent must not touch a denied symbol).
        assert_eq!(
            refused(&sell("1", OrderIntentRole::Exit), &deny, &c).code,
            ErrorCode::OrderSymbolNotAllowed
        );
        let allow = TradingPolicy {
            symbol_allowlist: vec![" Msft ".into()],
            ..TradingPolicy::default()
        };
        assert_eq!(
            refused(&buy_cash("5"), &allow, &c).code,
            ErrorCode::OrderSymbolNotAllowed
        );
        let msft = OrderIntent {
            symbol: "msft".into(),
            ..buy_cash("5")
        };
        assert!(check_order(&msft, &allow, &c).is_ok());
        // Deny wins over allow.
        let both = TradingPolicy {
            symbol_denylist: vec!["MSFT".into()],
            ..allow.clone()
        };
        assert_eq!(
            refused(&msft, &both, &c).code,
            ErrorCode::OrderSymbolNotAllowed
        );
        // Cancels are never checked: a denied symbol's working orders stay cancellable.
        let cancel = OrderIntent {
            symbol: String::new(),
            role: OrderIntentRole::Cancel,
            ..buy_cash("5")
        };
        assert!(check_order(&cancel, &allow, &c).is_ok());
        let cancel_aapl = OrderIntent {
            role: OrderIntentRole::Cancel,
            ..buy_cash("5")
        };
        assert!(check_order(&cancel_aapl, &allow, &c).is_ok());
        assert!(check_order(&cancel_aapl, &deny, &c).is_ok());
    }

    #[test]
    fn trading_hours_by_role() {
        let q = quote();
        let closed = GuardContext {
            market_open: Ok(false),
            ..ctx(&q)
        };
        let p = TradingPolicy::default();
        let r = refused(&buy_cash("5"), &p, &closed);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderOutsideTradingHours, GUARD_TRADING_HOURS)
        );
        // Exits: refused by default, allowed when configured.
        assert_eq!(
            refused(&sell("1", OrderIntentRole::Exit), &p, &closed).code,
            ErrorCode::OrderOutsideTradingHours
        );
        let exits = TradingPolicy {
            exits_outside_regular_hours: true,
            ..p.clone()
        };
        assert!(check_order(&sell("1", OrderIntentRole::Exit), &exits, &closed).is_ok());
        // Entries stay refused even with exits allowed, and their advice names no setting:
        // none would allow them.
        let entry = refused(&buy_cash("5"), &exits, &closed);
        assert_eq!(entry.code, ErrorCode::OrderOutsideTradingHours);
        assert!(!entry.detail.contains("trading."), "{}", entry.detail);
        assert!(
            !ErrorCode::OrderOutsideTradingHours
                .user_action()
                .contains("exits_outside"),
        );
        // Each other role's refusal names the setting that would allow it.
        assert!(
            refused(&sell("1", OrderIntentRole::Exit), &p, &closed)
                .detail
                .contains("trading.exits_outside_regular_hours")
        );
        // Protective GTC allowed by default; protective DAY is an exit.
        assert!(check_order(&stop_sell("1", "9"), &p, &closed).is_ok());
        let day_stop = OrderIntent {
            tif: Tif::Day,
            ..stop_sell("1", "9")
        };
        assert_eq!(
            refused(&day_stop, &p, &closed).code,
            ErrorCode::OrderOutsideTradingHours
        );
        assert!(check_order(&day_stop, &exits, &closed).is_ok());
        let no_gtc = TradingPolicy {
            gtc_protective_outside_regular_hours: false,
            ..p.clone()
        };
        assert_eq!(
            refused(&stop_sell("1", "9"), &no_gtc, &closed).code,
            ErrorCode::OrderOutsideTradingHours
        );
        // Cancels allowed by default.
        let cancel = OrderIntent {
            role: OrderIntentRole::Cancel,
            ..buy_cash("5")
        };
        assert!(check_order(&cancel, &p, &closed).is_ok());
        let no_cancel = TradingPolicy {
            cancels_outside_regular_hours: false,
            ..p.clone()
        };
        assert_eq!(
            refused(&cancel, &no_cancel, &closed).code,
            ErrorCode::OrderOutsideTradingHours
        );
    }

    #[test]
    fn unknown_calendar_refuses_only_what_needs_it() {
        let q = quote();
        let unknown = GuardContext {
            market_open: Err(CalendarError::Uncovered { year: 2031 }),
            ..ctx(&q)
        };
        let p = TradingPolicy::default();
        let r = refused(&buy_cash("5"), &p, &unknown);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::MarketCalendarUnknown, GUARD_TRADING_HOURS)
        );
        assert!(r.detail.contains("2031"));
        assert_eq!(
            refused(&sell("1", OrderIntentRole::Exit), &p, &unknown).code,
            ErrorCode::MarketCalendarUnknown
        );
        // Orders allowed at any time do not need the calendar.
        assert!(check_order(&stop_sell("1", "9"), &p, &unknown).is_ok());
        let cancel = OrderIntent {
            role: OrderIntentRole::Cancel,
            ..buy_cash("5")
        };
        assert!(check_order(&cancel, &p, &unknown).is_ok());
    }

    #[test]
    fn naked_shorts_are_refused() {
        let q = quote();
        let p = TradingPolicy::default();
        let c = ctx(&q);
        let r = refused(&sell("100.0001", OrderIntentRole::Exit), &p, &c);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderNakedShortRefused, GUARD_SHORT)
        );
        assert!(r.detail.contains("100"));
        assert!(check_order(&sell("100", OrderIntentRole::Exit), &p, &c).is_ok());
        // No position, or a short one: any sell is a short sale.
        let flat = GuardContext {
            position_quantity: Decimal::ZERO,
            ..ctx(&q)
        };
        assert_eq!(
            refused(&sell("1", OrderIntentRole::Entry), &p, &flat).code,
            ErrorCode::OrderNakedShortRefused
        );
        let short = GuardContext {
            position_quantity: dec("-5"),
            ..ctx(&q)
        };
        assert_eq!(
            refused(&sell("1", OrderIntentRole::Entry), &p, &short).code,
            ErrorCode::OrderNakedShortRefused
        );
        // A protective stop larger than the position would short on trigger.
        assert_eq!(
            refused(&stop_sell("101", "9"), &p, &c).code,
            ErrorCode::OrderNakedShortRefused
        );
        // Allowed shorts: an entry sell passes.
        let shorts = TradingPolicy {
            allow_short: true,
            ..p.clone()
        };
        assert!(check_order(&sell("1", OrderIntentRole::Entry), &shorts, &flat).is_ok());
    }

    #[test]
    fn exits_must_reduce_a_position() {
        let q = quote();
        let shorts = TradingPolicy {
            allow_short: true,
            ..TradingPolicy::default()
        };
        let flat = GuardContext {
            position_quantity: Decimal::ZERO,
            ..ctx(&q)
        };
        // An "exit" sell with no position is really a short entry.
        let r = refused(&sell("1", OrderIntentRole::Exit), &shorts, &flat);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderInvalid, GUARD_EXIT_REDUCES)
        );
        // An "exit" buy with no short is really an entry (it would dodge the value cap).
        let exit_buy = OrderIntent {
            role: OrderIntentRole::Exit,
            ..buy_qty("1000")
        };
        let r = refused(&exit_buy, &TradingPolicy::default(), &ctx(&q));
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderInvalid, GUARD_EXIT_REDUCES)
        );
        // Covering a short: allowed and never value-capped.
        let short = GuardContext {
            position_quantity: dec("-1000"),
            ..ctx(&q)
        };
        let pass = check_order(&exit_buy, &TradingPolicy::default(), &short).unwrap();
        assert_eq!(pass.notional, None);
        let too_much = OrderIntent {
            role: OrderIntentRole::Exit,
            ..buy_qty("1001")
        };
        assert_eq!(
            refused(&too_much, &TradingPolicy::default(), &short).code,
            ErrorCode::OrderInvalid
        );
        // A protective buy stop covering a short.
        let buy_stop = OrderIntent {
            side: Side::Buy,
            stop_price: Some(dec("11")),
            ..stop_sell("10", "11")
        };
        assert!(check_order(&buy_stop, &TradingPolicy::default(), &short).is_ok());
    }

    #[test]
    fn stops_on_the_wrong_side_are_refused() {
        let q = quote();
        let p = TradingPolicy::default();
        let c = ctx(&q);
        let r = refused(&stop_sell("1", "10"), &p, &c);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderStopWrongSide, GUARD_STOP_SIDE)
        );
        assert!(r.detail.contains("below"));
        assert_eq!(
            refused(&stop_sell("1", "10.5"), &p, &c).code,
            ErrorCode::OrderStopWrongSide
        );
        assert!(check_order(&stop_sell("1", "9.99"), &p, &c).is_ok());
        // Buy stops must be above: a buy-stop entry.
        let buy_stop = |stop: &str| OrderIntent {
            kind: OrderKind::Stop,
            stop_price: Some(dec(stop)),
            ..buy_qty("1")
        };
        assert_eq!(
            refused(&buy_stop("10"), &p, &c).code,
            ErrorCode::OrderStopWrongSide
        );
        assert!(check_order(&buy_stop("10.01"), &p, &c).is_ok());
        // Without last, the bid (sell) or ask (buy) is the reference.
        let no_last = MarketQuote {
            last: None,
            ..quote()
        };
        let c2 = ctx(&no_last);
        assert_eq!(
            refused(&stop_sell("1", "9.9"), &p, &c2).code,
            ErrorCode::OrderStopWrongSide
        );
        assert!(check_order(&stop_sell("1", "9.89"), &p, &c2).is_ok());
        assert_eq!(
            refused(&buy_stop("10.1"), &p, &c2).code,
            ErrorCode::OrderStopWrongSide
        );
        // Stop-limit too.
        let stop_limit = OrderIntent {
            kind: OrderKind::StopLimit,
            limit_price: Some(dec("10")),
            ..stop_sell("1", "10.2")
        };
        assert_eq!(
            refused(&stop_limit, &p, &c).code,
            ErrorCode::OrderStopWrongSide
        );
        // Unknown quote: refused, never waved through (the stop could fire at once).
        let c3 = GuardContext {
            quote: None,
            ..ctx(&q)
        };
        let r = refused(&stop_sell("1", "9.5"), &p, &c3);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::MarketDataUnavailable, GUARD_STOP_SIDE)
        );
    }

    #[test]
    fn value_cap_on_buy_entries() {
        let q = quote();
        let p = TradingPolicy::default();
        let c = ctx(&q);
        let r = refused(&buy_cash("100.01"), &p, &c);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderValueCapExceeded, GUARD_VALUE_CAP)
        );
        assert!(r.detail.contains("100.01") && r.detail.contains("100"));
        assert!(check_order(&buy_cash("100"), &p, &c).is_ok());
        // 10 shares at ask 10.1 = 101 > 100.
        assert_eq!(
            refused(&buy_qty("10"), &p, &c).code,
            ErrorCode::OrderValueCapExceeded
        );
        assert!(check_order(&buy_qty("9.9"), &p, &c).is_ok());
    }

    #[test]
    fn exits_and_protective_orders_are_never_value_capped() {
        let q = quote();
        let p = TradingPolicy::default();
        let big = GuardContext {
            position_quantity: dec("1000000"),
            ..ctx(&q)
        };
        let pass = check_order(&sell("1000000", OrderIntentRole::Exit), &p, &big).unwrap();
        assert_eq!(pass.notional, None);
        assert!(check_order(&stop_sell("1000000", "9"), &p, &big).is_ok());
        let trail = OrderIntent {
            kind: OrderKind::TrailingStop,
            trail_percent: Some(dec("5")),
            ..sell("1000000", OrderIntentRole::Protective)
        };
        assert!(check_order(&trail, &p, &big).is_ok());
        // Even without any quote.
        let blind = GuardContext {
            quote: None,
            ..big.clone()
        };
        assert!(check_order(&sell("1000000", OrderIntentRole::Exit), &p, &blind).is_ok());
    }

    #[test]
    fn no_price_fails_closed() {
        let p = TradingPolicy::default();
        let empty = MarketQuote::default();
        for c in [
            GuardContext {
                quote: None,
                ..ctx(&empty)
            },
            ctx(&empty),
        ] {
            let r = refused(&buy_qty("1"), &p, &c);
            assert_eq!(
                (r.code, r.guard),
                (ErrorCode::MarketDataUnavailable, GUARD_VALUE_CAP)
            );
            // Cash buys and limit buys carry their own value.
            assert!(check_order(&buy_cash("5"), &p, &c).is_ok());
            let limit = OrderIntent {
                kind: OrderKind::Limit,
                limit_price: Some(dec("9")),
                ..buy_qty("1")
            };
            assert_eq!(
                check_order(&limit, &p, &c).unwrap().notional,
                Some(dec("9"))
            );
        }
        // Zero or negative quote prices do not count as prices.
        let zeros = MarketQuote {
            last: Some(Decimal::ZERO),
            bid: Some(dec("-1")),
            ask: Some(Decimal::ZERO),
        };
        assert_eq!(
            refused(&buy_qty("1"), &p, &ctx(&zeros)).code,
            ErrorCode::MarketDataUnavailable
        );
    }

    #[test]
    fn notional_takes_the_highest_price() {
        let q = quote();
        // Market buy: max(last 10, ask 10.1).
        assert_eq!(order_notional(&buy_qty("2"), Some(&q)), Some(dec("20.2")));
        // Limit buy above the market: the limit.
        let limit = |l: &str| OrderIntent {
            kind: OrderKind::Limit,
            limit_price: Some(dec(l)),
            ..buy_qty("2")
        };
        assert_eq!(order_notional(&limit("12"), Some(&q)), Some(dec("24")));
        // Limit buy below the market: still the highest (ask).
        assert_eq!(order_notional(&limit("5"), Some(&q)), Some(dec("20.2")));
        // Last above ask (stale ask): last.
        let odd = MarketQuote {
            last: Some(dec("11")),
            ..quote()
        };
        assert_eq!(order_notional(&limit("5"), Some(&odd)), Some(dec("22")));
        // Stop buy: the stop price counts.
        let stop = OrderIntent {
            kind: OrderKind::Stop,
            stop_price: Some(dec("15")),
            ..buy_qty("2")
        };
        assert_eq!(order_notional(&stop, Some(&q)), Some(dec("30")));
        // Cash amount wins regardless of prices.
        assert_eq!(
            order_notional(&buy_cash("42.5"), Some(&q)),
            Some(dec("42.5"))
        );
        assert_eq!(order_notional(&buy_cash("42.5"), None), Some(dec("42.5")));
        // Market buy without prices: unknown.
        assert_eq!(order_notional(&buy_qty("2"), None), None);
        // Sells use the bid side.
        let s = sell("2", OrderIntentRole::Exit);
        let high_bid = MarketQuote {
            bid: Some(dec("12")),
            ..quote()
        };
        assert_eq!(order_notional(&s, Some(&high_bid)), Some(dec("24")));
        // Overflow saturates (and is then above any cap).
        let huge = OrderIntent {
            kind: OrderKind::Limit,
            limit_price: Some(Decimal::MAX),
            ..buy_qty("10")
        };
        assert_eq!(order_notional(&huge, None), Some(Decimal::MAX));
    }

    #[test]
    fn daily_cap() {
        let q = quote();
        let p = TradingPolicy {
            max_daily_value: Some(dec("150")),
            ..TradingPolicy::default()
        };
        let spent = GuardContext {
            spent_today: dec("100"),
            ..ctx(&q)
        };
        let r = refused(&buy_cash("50.01"), &p, &spent);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderDailyCapExceeded, GUARD_DAILY_CAP)
        );
        assert!(r.detail.contains("50"));
        assert!(check_order(&buy_cash("50"), &p, &spent).is_ok());
        // Exits do not count and are not refused.
        let over = GuardContext {
            spent_today: dec("1000"),
            ..ctx(&q)
        };
        assert!(check_order(&sell("1", OrderIntentRole::Exit), &p, &over).is_ok());
        // Overflow of the sum refuses.
        let max = GuardContext {
            spent_today: Decimal::MAX,
            ..ctx(&q)
        };
        assert_eq!(
            refused(&buy_cash("1"), &p, &max).code,
            ErrorCode::OrderDailyCapExceeded
        );
    }

    #[test]
    fn duplicates() {
        let q = quote();
        let p = TradingPolicy::default();
        let recent = GuardContext {
            recent_identical_within_window: true,
            ..ctx(&q)
        };
        let r = refused(&buy_cash("5"), &p, &recent);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderDuplicate, GUARD_DUPLICATE)
        );
        // Exits are checked too (a double sell would open a short or sell twice).
        assert_eq!(
            refused(&sell("1", OrderIntentRole::Exit), &p, &recent).code,
            ErrorCode::OrderDuplicate
        );
        // Window 0 = off for the time window...
        let off = TradingPolicy {
            duplicate_window_seconds: 0,
            ..p.clone()
        };
        assert!(check_order(&buy_cash("5"), &off, &recent).is_ok());
        // An unknown outcome on the instrument and side blocks whatever the window, the size
        // or the price.
        let pending = GuardContext {
            unresolved_same_instrument_side: true,
            ..ctx(&q)
        };
        let repriced = OrderIntent {
            kind: OrderKind::Limit,
            limit_price: Some(dec("10.11")),
            ..buy_qty("3")
        };
        let r = refused(&repriced, &off, &pending);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderUnresolvedPending, GUARD_UNRESOLVED)
        );
        assert!(r.detail.contains("BUY") && r.detail.contains("AAPL"));
        // Cancels are neither.
        let cancel = OrderIntent {
            role: OrderIntentRole::Cancel,
            ..buy_cash("5")
        };
        assert!(check_order(&cancel, &p, &pending).is_ok());
        assert!(check_order(&cancel, &p, &recent).is_ok());
    }

    #[test]
    fn the_earlier_guard_wins() {
        let q = quote();
        let p = TradingPolicy {
            symbol_denylist: vec!["AAPL".into()],
            ..TradingPolicy::default()
        };
        // Invalid shape + unknown account: shape.
        let c = GuardContext {
            account_mode: AccountMode::Unknown,
            ..ctx(&q)
        };
        assert_eq!(refused(&buy_qty("0"), &p, &c).guard, GUARD_INTENT_SHAPE);
        // Unknown account + denied symbol: account.
        assert_eq!(refused(&buy_cash("5"), &p, &c).guard, GUARD_ACCOUNT);
        // Live refused + denied symbol: live lock.
        let live = GuardContext {
            account_mode: AccountMode::Live,
            ..ctx(&q)
        };
        assert_eq!(refused(&buy_cash("5"), &p, &live).guard, GUARD_LIVE_LOCK);
        // Denied symbol + closed market: symbol lists.
        let closed = GuardContext {
            market_open: Ok(false),
            ..ctx(&q)
        };
        assert_eq!(
            refused(&buy_cash("5"), &p, &closed).guard,
            GUARD_SYMBOL_LISTS
        );
        // Closed market + over the cap + duplicate: trading hours.
        let everything = GuardContext {
            market_open: Ok(false),
            recent_identical_within_window: true,
            ..ctx(&q)
        };
        let plain = TradingPolicy::default();
        assert_eq!(
            refused(&buy_cash("1000"), &plain, &everything).guard,
            GUARD_TRADING_HOURS
        );
        // Naked short + wrong-side stop: short.
        assert_eq!(
            refused(&stop_sell("1000", "11"), &plain, &ctx(&q)).guard,
            GUARD_SHORT
        );
        // Over the cap + duplicate: value cap.
        let dup = GuardContext {
            recent_identical_within_window: true,
            ..ctx(&q)
        };
        assert_eq!(
            refused(&buy_cash("1000"), &plain, &dup).guard,
            GUARD_VALUE_CAP
        );
        // Over the daily cap + duplicate: daily cap.
        let daily = TradingPolicy {
            max_daily_value: Some(dec("10")),
            ..TradingPolicy::default()
        };
        assert_eq!(
            refused(&buy_cash("50"), &daily, &dup).guard,
            GUARD_DAILY_CAP
        );
        // Every refusal names a guard from GUARD_ORDER.
        for r in [
            refused(&buy_cash("50"), &daily, &dup),
            refused(&buy_qty("0"), &p, &c),
        ] {
            assert!(GUARD_ORDER.contains(&r.guard));
        }
    }

    #[test]
    fn sells_fit_what_is_free_of_the_position() {
        let q = quote();
        let p = TradingPolicy::default();
        // 100 held, 60 committed to working sells: 40 free.
        let c = GuardContext {
            committed_same_side: dec("60"),
            ..ctx(&q)
        };
        assert!(check_order(&sell("40", OrderIntentRole::Exit), &p, &c).is_ok());
        let r = refused(&sell("41", OrderIntentRole::Exit), &p, &c);
        assert_eq!(r.code, ErrorCode::OrderExceedsSellable);
        assert!(
            r.detail.contains("60") && r.detail.contains("40"),
            "{}",
            r.detail
        );
        // A protective stop counts the same way.
        assert_eq!(
            refused(&stop_sell("41", "9"), &p, &c).code,
            ErrorCode::OrderExceedsSellable
        );
        // Beyond the position itself it is a naked short.
        assert_eq!(
            refused(&sell("101", OrderIntentRole::Exit), &p, &c).code,
            ErrorCode::OrderNakedShortRefused
        );
        // Everything committed: nothing free, even for a close of the whole position.
        let all = GuardContext {
            committed_same_side: dec("100"),
            ..ctx(&q)
        };
        assert_eq!(
            refused(&sell("100", OrderIntentRole::Exit), &p, &all).code,
            ErrorCode::OrderExceedsSellable
        );
        // Covers of a short: the same, on the buy side.
        let short = GuardContext {
            position_quantity: dec("-10"),
            committed_same_side: dec("4"),
            ..ctx(&q)
        };
        let cover = |quantity: &str| OrderIntent {
            role: OrderIntentRole::Exit,
            ..buy_qty(quantity)
        };
        assert!(check_order(&cover("6"), &p, &short).is_ok());
        let r = refused(&cover("7"), &p, &short);
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderExceedsSellable, GUARD_EXIT_REDUCES)
        );
    }

    #[test]
    fn a_paper_account_can_be_pinned_too() {
        let q = quote();
        let pinned = TradingPolicy {
            account_ids: vec!["DU7777777".into()],
            ..TradingPolicy::default()
        };
        let r = refused(&buy_cash("5"), &pinned, &ctx(&q));
        assert_eq!(
            (r.code, r.guard),
            (ErrorCode::OrderAccountNotPinned, GUARD_ACCOUNT_PIN)
        );
        assert!(r.detail.contains("DU1234567"));
        let ours = GuardContext {
            account_id: "DU7777777",
            ..ctx(&q)
        };
        assert!(check_order(&buy_cash("5"), &pinned, &ours).is_ok());
        // Without a list, any paper account.
        assert!(check_order(&buy_cash("5"), &TradingPolicy::default(), &ctx(&q)).is_ok());
    }

    #[test]
    fn bracket_levels_each_refused_with_their_own_message() {
        let q = quote(); // last 10, bid 9.9, ask 10.1
        let check = |entry: Option<&str>, tp: &str, sl: &str, quote: Option<&MarketQuote>| {
            check_bracket(entry.map(dec), dec(tp), dec(sl), quote)
        };
        assert!(check(None, "11", "9", Some(&q)).is_ok());
        assert!(check(Some("9.5"), "9.8", "9", Some(&q)).is_ok());
        let message = |entry, tp, sl| {
            let r = check(entry, tp, sl, Some(&q)).unwrap_err();
            assert_eq!(
                (r.code, r.guard),
                (ErrorCode::OrderBracketLevelsInvalid, GUARD_BRACKET_LEVELS)
            );
            r.detail
        };
        let cases = [
            // take-profit not above the limit entry
            message(Some("9.5"), "9.5", "9"),
            // stop-loss not below the limit entry
            message(Some("9.5"), "9.8", "9.5"),
            // take-profit below the market with a market entry: fills at once
            message(None, "9.95", "9"),
            // stop-loss above the market with a marketable limit entry: triggers at once
            message(Some("10.5"), "11", "10.2"),
        ];
        assert!(cases[0].contains("take_profit") && cases[0].contains("entry limit"));
        assert!(cases[1].contains("stop_loss") && cases[1].contains("entry limit"));
        assert!(cases[2].contains("take_profit") && cases[2].contains("fills at once"));
        assert!(cases[3].contains("stop_loss") && cases[3].contains("triggers at once"));
        let distinct: std::collections::HashSet<_> = cases.iter().collect();
        assert_eq!(distinct.len(), cases.len());
        // No price: refused, not waved through.
        assert_eq!(
            check(Some("9.5"), "9.8", "9", None).unwrap_err().code,
            ErrorCode::MarketDataUnavailable
        );
    }

    #[test]
    fn refusal_bodies_carry_the_catalog_entry() {
        let q = quote();
        let r = refused(&buy_cash("500"), &TradingPolicy::default(), &ctx(&q));
        let body = r.body();
        assert_eq!(body.code, "ORDER_VALUE_CAP_EXCEEDED");
        assert!(
            body.message
                .starts_with(ErrorCode::OrderValueCapExceeded.message())
        );
        assert!(body.message.contains("500"));
        assert!(
            r.to_string()
                .starts_with("ORDER_VALUE_CAP_EXCEEDED (value_cap)")
        );
    }

    #[test]
    fn fingerprints_are_stable_and_discriminating() {
        let a = order_fingerprint(&buy_qty("1.50"));
        assert_eq!(a, order_fingerprint(&buy_qty("1.5")));
        assert_eq!(
            a,
            order_fingerprint(&OrderIntent {
                symbol: "aapl".into(),
                ..buy_qty("1.5")
            })
        );
        // The role does not matter; everything else does.
        assert_eq!(
            a,
            order_fingerprint(&OrderIntent {
                role: OrderIntentRole::Exit,
                ..buy_qty("1.5")
            })
        );
        assert!(a.starts_with("fp1-") && a.len() == 68);
        for other in [
            buy_qty("2"),
            buy_cash("1.5"),
            OrderIntent {
                symbol: "MSFT".into(),
                ..buy_qty("1.5")
            },
            OrderIntent {
                side: Side::Sell,
                ..buy_qty("1.5")
            },
            OrderIntent {
                tif: Tif::Gtc,
                ..buy_qty("1.5")
            },
            OrderIntent {
                kind: OrderKind::Limit,
                limit_price: Some(dec("1")),
                ..buy_qty("1.5")
            },
            OrderIntent {
                kind: OrderKind::Limit,
                limit_price: Some(dec("1.01")),
                ..buy_qty("1.5")
            },
        ] {
            assert_ne!(a, order_fingerprint(&other), "{other:?}");
        }
        // Pinned value: a change of format must be deliberate (bump "v1"/"fp1").
        assert_eq!(
            order_fingerprint(&buy_qty("1.5")),
            order_fingerprint(&buy_qty("1.500"))
        );
    }

    #[test]
    fn client_order_ids_are_deterministic_and_short() {
        let id = client_order_id("retry-me", "U123/pairing-1");
        assert_eq!(id, client_order_id("retry-me", "U123/pairing-1"));
        assert_eq!(id.len(), CLIENT_ORDER_ID_LEN);
        assert!(id.starts_with("ia-"));
        assert!(
            id[3..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(id, client_order_id("retry-me2", "U123/pairing-1"));
        assert_ne!(id, client_order_id("retry-me", "U124/pairing-1"));
        // Namespace/key boundary is unambiguous.
        assert_ne!(client_order_id("c", "ab"), client_order_id("bc", "a"));
        // Known answer: SHA-256 of (0u64 BE || "" || "") prefix.
        let digest = hex::encode(Sha256::digest([0u8; 8]));
        assert_eq!(client_order_id("", ""), format!("ia-{}", &digest[..24]));
    }

    fn arb_decimal() -> impl Strategy<Value = Decimal> {
        (1i64..100_000_000_000i64, 0u32..=8).prop_map(|(m, s)| Decimal::new(m, s))
    }

    fn arb_quote() -> impl Strategy<Value = Option<MarketQuote>> {
        proptest::option::of(
            (
                proptest::option::of(arb_decimal()),
                proptest::option::of(arb_decimal()),
                proptest::option::of(arb_decimal()),
            )
                .prop_map(|(last, bid, ask)| MarketQuote { last, bid, ask }),
        )
    }

    fn arb_kind() -> impl Strategy<Value = OrderKind> {
        prop_oneof![
            Just(OrderKind::Market),
            Just(OrderKind::Limit),
            Just(OrderKind::Stop),
            Just(OrderKind::StopLimit),
            Just(OrderKind::TrailingStop),
        ]
    }

    proptest! {
        #[test]
        fn any_exit_is_never_refused_by_the_value_or_daily_cap(
            side in prop_oneof![Just(Side::Buy), Just(Side::Sell)],
            role in prop_oneof![Just(OrderIntentRole::Exit), Just(OrderIntentRole::Protective)],
            kind in arb_kind(),
            quantity in arb_decimal(),
            price in arb_decimal(),
            quote in arb_quote(),
            cap in arb_decimal(),
            spent in arb_decimal(),
        ) {
            // Protective orders are stops; exits can be any kind.
            let kind = if role == OrderIntentRole::Protective && matches!(kind, OrderKind::Market | OrderKind::Limit) {
                OrderKind::Stop
            } else {
                kind
            };
            let intent = OrderIntent {
                symbol: "AAPL".into(), side, kind, role, quantity: Some(quantity), cash_amount: None,
                limit_price: matches!(kind, OrderKind::Limit | OrderKind::StopLimit).then_some(price),
                stop_price: matches!(kind, OrderKind::Stop | OrderKind::StopLimit).then_some(price),
                trail_amount: (kind == OrderKind::TrailingStop).then_some(price),
                trail_percent: None, tif: Tif::Gtc,
            };
            let policy = TradingPolicy { max_order_value: cap, max_daily_value: Some(cap), ..TradingPolicy::default() };
            // The position the exit reduces.
            let position = match side { Side::Sell => quantity, Side::Buy => -quantity };
            let no_quote = MarketQuote::default();
            let context = GuardContext {
                quote: quote.as_ref(), spent_today: spent, position_quantity: position,
                ..ctx(&no_quote)
            };
            match check_order(&intent, &policy, &context) {
                Ok(pass) => prop_assert_eq!(pass.notional, None),
                // The only guard that may still refuse such an exit: a stop on the wrong side.
                Err(r) => prop_assert_eq!(r.guard, GUARD_STOP_SIDE, "{}", r),
            }
        }

        #[test]
        fn any_buy_with_notional_over_the_cap_is_refused(
            quantity in arb_decimal(),
            cash in proptest::option::of(arb_decimal()),
            limit in proptest::option::of(arb_decimal()),
            quote in arb_quote(),
            cap in arb_decimal(),
        ) {
            let kind = if cash.is_none() && limit.is_some() { OrderKind::Limit } else { OrderKind::Market };
            let intent = OrderIntent {
                quantity: if cash.is_some() { None } else { Some(quantity) },
                cash_amount: cash,
                kind,
                limit_price: if kind == OrderKind::Limit { limit } else { None },
                ..buy_qty("1")
            };
            let policy = TradingPolicy { max_order_value: cap, ..TradingPolicy::default() };
            let no_quote = MarketQuote::default();
            let context = GuardContext { quote: quote.as_ref(), ..ctx(&no_quote) };
            let result = check_order(&intent, &policy, &context);
            match order_notional(&intent, quote.as_ref()) {
                None => prop_assert_eq!(result.unwrap_err().code, ErrorCode::MarketDataUnavailable),
                Some(n) if n > cap => prop_assert_eq!(result.unwrap_err().code, ErrorCode::OrderValueCapExceeded),
                Some(n) => prop_assert_eq!(result.unwrap().notional, Some(n)),
            }
        }

        #[test]
        fn notional_is_at_least_quantity_times_every_known_buy_price(
            quantity in arb_decimal(), limit in arb_decimal(), quote in arb_quote(),
        ) {
            let intent = OrderIntent { kind: OrderKind::Limit, limit_price: Some(limit), ..buy_qty("1") };
            let intent = OrderIntent { quantity: Some(quantity), ..intent };
            let n = order_notional(&intent, quote.as_ref()).unwrap();
            let mut prices = vec![limit];
            if let Some(q) = &quote { prices.extend(q.last); prices.extend(q.ask); }
            for p in prices {
                prop_assert!(n >= quantity.checked_mul(p).unwrap_or(Decimal::MAX));
            }
        }

        #[test]
        fn a_refusal_always_names_a_documented_guard(
            side in prop_oneof![Just(Side::Buy), Just(Side::Sell)],
            role in prop_oneof![Just(OrderIntentRole::Entry), Just(OrderIntentRole::Exit), Just(OrderIntentRole::Protective), Just(OrderIntentRole::Cancel)],
            kind in arb_kind(),
            quantity in proptest::option::of(arb_decimal()),
            cash in proptest::option::of(arb_decimal()),
            price in proptest::option::of(arb_decimal()),
            quote in arb_quote(),
            open in proptest::bool::ANY,
            position in -1000i64..1000,
            mode in prop_oneof![Just(AccountMode::Paper), Just(AccountMode::Live), Just(AccountMode::Unknown)],
            dup in proptest::bool::ANY,
        ) {
            let intent = OrderIntent {
                symbol: "AAPL".into(), side, kind, role, quantity, cash_amount: cash,
                limit_price: price, stop_price: price, trail_amount: None, trail_percent: price, tif: Tif::Day,
            };
            let no_quote = MarketQuote::default();
            let context = GuardContext {
                account_mode: mode, market_open: Ok(open), quote: quote.as_ref(),
                position_quantity: Decimal::from(position), recent_identical_within_window: dup,
                ..ctx(&no_quote)
            };
            if let Err(r) = check_order(&intent, &TradingPolicy::default(), &context) {
                prop_assert!(GUARD_ORDER.contains(&r.guard));
                prop_assert!(!r.detail.is_empty());
            }
        }
    }
}
