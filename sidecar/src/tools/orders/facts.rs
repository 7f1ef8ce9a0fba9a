//! What an order decision needs from the broker, read just before it: the account and its
//! type, a fresh position, the quote, and the state of the orders that may still commit part of
//! the position.
//!
//! Only positive evidence is taken from the broker's lists: IBKR's orders list needs a
//! pre-flight, is scoped to the brokerage session and has been reported false-empty, so an
//! order missing from it is never taken as gone. Our own orders are followed by id
//! (`order/status`), and what the broker says about them is journaled as `observed`.

use super::now_ms;
use crate::cpgw::marketdata::{SNAPSHOT_BACKOFF, decimal_of, snapshot};
use crate::cpgw::orders::LiveOrder;
use crate::cpgw::pacer::Lane;
use crate::cpgw::portfolio::positions;
use crate::cpgw::types::{TradingMode, trading_mode};
use crate::tools::context::{ToolContext, cpgw_failure};
use crate::trading::OrdersRuntime;
use crate::trading::attempts::is_terminal_status;
use protocol::envelope::Outcome;
use serde_json::json;
use shared_safety::ErrorCode;
use shared_safety::guards::{AccountMode, MarketQuote, Side};
use shared_safety::money::Decimal;

/// Most of our open orders on one instrument whose status is asked per decision; beyond it the
/// rest simply stay counted as open (the safe side).
const MAX_STATUS_CHECKS: usize = 12;

/// The account CPGW serves and whether it is paper.
pub(crate) struct AccountIdentity {
    pub account: String,
    pub mode: AccountMode,
}

pub(crate) async fn account_identity(
    context: &ToolContext<'_>,
) -> Result<AccountIdentity, Outcome> {
    let reply = context
        .cpgw
        .accounts()
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?;
    let account = reply.active_account().map(str::to_string).ok_or_else(|| {
        Outcome::Refused(
            ErrorCode::OrderAccountUnverified.body(Some("(CPGW names no selected account)")),
        )
    })?;
    let mode = match trading_mode(reply.is_paper, &account) {
        TradingMode::Paper => AccountMode::Paper,
        TradingMode::Live => AccountMode::Live,
        TradingMode::Unknown => AccountMode::Unknown,
    };
    Ok(AccountIdentity { account, mode })
}

/// The quote, if the broker has one (warm-up retried).
pub(crate) async fn quote_of(context: &ToolContext<'_>, conid: i64) -> Option<MarketQuote> {
    let quotes = snapshot(context.cpgw, &[conid], SNAPSHOT_BACKOFF)
        .await
        .ok()?;
    let quote = quotes.get(&conid)?;
    Some(MarketQuote {
        last: quote.last,
        bid: quote.bid,
        ask: quote.ask,
    })
}

/// The signed position in `conid`, read after CPGW dropped its cache.
pub(crate) async fn fresh_position(
    context: &ToolContext<'_>,
    account: &str,
    conid: i64,
) -> Result<Decimal, Outcome> {
    let held = positions(context.cpgw, account, true)
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?;
    Ok(held
        .iter()
        .filter(|position| position.conid == conid)
        .map(|position| position.quantity)
        .fold(Decimal::ZERO, |total, quantity| total + quantity))
}

/// Asks the broker about our orders on `conid` that were not yet seen in a final state, and
/// journals what it says. Unknown ids and failed reads change nothing (they stay open).
pub(crate) async fn observe_our_orders(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    conid: i64,
) {
    let live = runtime
        .journal
        .with_book(|book, _| book.live_orders_on(conid))
        .unwrap_or_default();
    for (attempt, order_id) in live.into_iter().take(MAX_STATUS_CHECKS) {
        let Ok(Some(reply)) = context.cpgw.order_status(&order_id, Lane::Trading).await else {
            continue;
        };
        let Some(status) = reply.order_status.clone() else {
            continue;
        };
        let filled = reply
            .cum_fill
            .as_ref()
            .and_then(decimal_of)
            .map(shared_safety::money::to_decimal_string);
        record_observation(
            runtime,
            attempt,
            &order_id,
            &status,
            reply.side.as_deref(),
            filled,
        );
    }
}

/// Journals what the broker said about one of our orders, when it is news (a final state, or a
/// status not seen before).
pub(crate) fn record_observation(
    runtime: &OrdersRuntime,
    attempt: u64,
    order_id: &str,
    status: &str,
    side: Option<&str>,
    filled: Option<String>,
) {
    let known = runtime
        .journal
        .attempt(attempt)
        .and_then(|a| a.observations.get(order_id).map(|o| o.status.clone()));
    if known.as_deref() == Some(status) && !is_terminal_status(status) {
        return;
    }
    if known.as_deref() == Some(status) {
        return;
    }
    let data = json!({"order_id": order_id, "status": status, "side": side,
                      "filled_quantity": filled});
    if let Err(error) = runtime.journal.outcome(attempt, "observed", data, now_ms()) {
        // An observation is a convenience: without it the order simply stays counted as open.
        tracing::warn!(%error, "could not journal an order observation");
    }
}

/// Working orders on `conid` that are not ours (placed in TWS, the mobile app, or before the
/// journal existed), per side: `(sells, buys)`, the remaining quantity of list rows whose client
/// order id and order id our journal does not know. One read of the paced order list for both
/// sides. Best effort: a list that cannot be read, or comes back empty, adds nothing (our own
/// orders are counted from the journal, not from this list).
pub(crate) async fn foreign_working_quantities(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    account: &str,
    conid: i64,
) -> (Decimal, Decimal) {
    let Ok(list) = context.cpgw.live_orders(account).await else {
        return (Decimal::ZERO, Decimal::ZERO);
    };
    let (known_coids, known_ids) = runtime
        .journal
        .with_book(|book, _| {
            let mut coids = Vec::new();
            let mut ids = Vec::new();
            for attempt in book.iter() {
                coids.extend(attempt.coids());
                ids.extend(attempt.order_ids());
            }
            (coids, ids)
        })
        .unwrap_or_default();
    let on_side = |side: Side| {
        list.orders
            .iter()
            .filter(|row| row_conid(row) == Some(conid) && row_side(row) == Some(side))
            .filter(|row| !row.status.as_deref().is_some_and(is_terminal_status))
            .filter(|row| {
                !row.order_ref
                    .as_ref()
                    .is_some_and(|coid| known_coids.contains(coid))
                    && !row
                        .order_id
                        .as_ref()
                        .is_some_and(|id| known_ids.iter().any(|known| known == id.as_str()))
            })
            .map(|row| {
                row.remaining_quantity
                    .as_ref()
                    .or(row.total_size.as_ref())
                    .and_then(decimal_of)
                    .unwrap_or(Decimal::ZERO)
            })
            .fold(Decimal::ZERO, |total, quantity| total + quantity)
    };
    (on_side(Side::Sell), on_side(Side::Buy))
}

fn row_conid(row: &LiveOrder) -> Option<i64> {
    row.conid.as_ref()?.as_str().parse().ok()
}

fn row_side(row: &LiveOrder) -> Option<Side> {
    match row.side.as_deref()?.to_ascii_uppercase().as_str() {
        "BUY" | "B" => Some(Side::Buy),
        "SELL" | "S" => Some(Side::Sell),
        _ => None,
    }
}
