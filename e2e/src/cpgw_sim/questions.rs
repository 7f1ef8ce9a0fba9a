//! Order reply messages ("questions"): which ones an order raises and their
//! texts.
//!
//! Sources (details in docs/cpgw-simulator.md):
//! - IBKR Web API documentation, "Order Reply Messages": the
//!   `[{id, message[], isSuppressed, messageIds[]}]` shape, confirmed with
//!   `POST /iserver/reply/{id} {"confirmed":true}`, and the `o163` text.
//! - IBKR's table of suppressible message ids (cpapi-v1 "suppressible-id"),
//!   as reproduced by Voyz/ibind `ibind/client/ibkr_utils.py`: the texts of
//!   `o354`, `o403`, `o10153`, `o10164`, `o10223` and the meaning of
//!   `o10151` (market orders) and `o10152` (stop orders).
//! - pedrobraiti/mcp-ibkr-agent DECISIONS.md (live): a BUY MKT with
//!   `cashQty` is asked `o354`, `o10164`, `o10223`, `o10151`, `o10153`;
//!   a limit away from the market is asked `o163`; stop, stop-limit and
//!   trailing orders are asked `o10152` ("Stop Variant Order
//!   Confirmation"); a sell above the position raises `o2137`.
//! - TWS API message 2137: "The closing order quantity is greater than your
//!   current position." (IBKR: message ids are TWS codes with an "o" prefix).
//!
//! Where only a title or a truncated text is known, the simulator sends that
//! much and no more: clients must key on `messageIds`, never on the text.

use rust_decimal::Decimal;

use super::market::Listing;
use super::orders::{OrderTicket, OrderType, Side};
use super::scenario::SimScenario;
use super::wire::{price_str, qty_str};

/// The question text for one message id; `ticket` and `listing` fill in the
/// order description where IBKR's text carries one.
pub(crate) fn text(
    message_id: &str,
    subject: Option<(&OrderTicket, &Listing)>,
    pct: Decimal,
) -> String {
    match message_id {
        "o163" => {
            let description = subject
                .map(|(ticket, listing)| {
                    format!(
                        "{} {} {} {} @ {}",
                        ticket.side.as_str(),
                        ticket.quantity.map(qty_str).unwrap_or_default(),
                        listing.instrument.symbol,
                        listing.instrument.listing_exchange,
                        ticket.price.map(price_str).unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            format!(
                "The following order \"{description}\" price exceeds \nthe Percentage constraint of {}%.\nAre you sure you want to submit this order?",
                pct.normalize()
            )
        }
        "o354" => "You are submitting an order without market data. We strongly recommend against this as it may result in erroneous and unexpected trades. Are you sure you want to submit this order?".to_owned(),
        "o403" => "This order will most likely trigger and fill immediately.\nAre you sure you want to submit this order?".to_owned(),
        // Only the title and first words are public (reference server's live whatif capture).
        "o10151" => "<h4>Market Order Confirmation</h4>&nbsp;A Market Order...".to_owned(),
        // Only the title is public (reference server ADR-012).
        "o10152" => "Stop Variant Order Confirmation".to_owned(),
        "o10153" => "<h4>Confirm Mandatory Cap Price</h4>To avoid trading at a price that is not consistent with a fair and orderly market, IB may set a cap (for a buy order) or sell order). THIS MAY CAUSE AN ORDER THAT WOULD OTHERWISE BE MARKETABLE TO NOT BE TRADED.".to_owned(),
        "o10164" => "Traders are responsible for understanding cash quantity details, which are provided on a best efforts basis only.".to_owned(),
        "o10223" => "<h4>Cash Quantity Order Confirmation</h4>Orders that express size using a monetary value (cash quantity) are provided on a non-guaranteed basis. The system simulates the order by cancelling it once the specified amount is spent (for buy orders) or collected (for sell orders). In addition to the monetary value, the order uses a maximum size that is calculated using the Cash Quantity Estimate Factor, which you can modify in Presets.".to_owned(),
        "o2137" => "The closing order quantity is greater than your current position.".to_owned(),
        // Test-injected ids the product has never seen.
        _ => "Simulated warning that the product has not seen before. Are you sure you want to submit this order?".to_owned(),
    }
}

/// What the derivation needs to know about one ticket.
pub(crate) struct Subject<'a> {
    pub(crate) ticket: &'a OrderTicket,
    pub(crate) listing: &'a Listing,
    /// Signed position held now (true book).
    pub(crate) held: Decimal,
}

/// The message ids a submission raises, in the order they are asked (one per
/// round), without duplicates.
pub(crate) fn derived(subjects: &[Subject<'_>], scenario: &SimScenario) -> Vec<String> {
    let mut ids: Vec<&'static str> = Vec::new();
    let mut push = |id: &'static str| {
        if !ids.contains(&id) {
            ids.push(id);
        }
    };
    for subject in subjects {
        let ticket = subject.ticket;
        let last = subject.listing.quote.last;
        if !scenario.market_data_subscribed {
            push("o354");
        }
        if ticket.cash_qty.is_some() {
            push("o10164");
            push("o10223");
        }
        if ticket.order_type == OrderType::Market {
            push("o10151");
            push("o10153");
        }
        let limit = match ticket.order_type {
            OrderType::Limit | OrderType::StopLimit => ticket.price,
            _ => None,
        };
        if let Some(limit) = limit
            && !last.is_zero()
            && ((limit - last).abs() * Decimal::ONE_HUNDRED / last)
                > scenario.price_percentage_constraint
        {
            push("o163");
        }
        let trigger = match ticket.order_type {
            OrderType::Stop => ticket.price,
            OrderType::StopLimit => ticket.aux_price,
            _ => None,
        };
        if let Some(trigger) = trigger {
            let crossed = match ticket.side {
                Side::Buy => last >= trigger,
                Side::Sell => last <= trigger,
            };
            if crossed {
                push("o403");
            }
        }
        if matches!(
            ticket.order_type,
            OrderType::Stop | OrderType::StopLimit | OrderType::Trail
        ) {
            push("o10152");
        }
        if let Some(quantity) = ticket.quantity {
            let closes_past_zero = match ticket.side {
                Side::Sell => subject.held > Decimal::ZERO && quantity > subject.held,
                Side::Buy => subject.held < Decimal::ZERO && quantity > -subject.held,
            };
            if closes_past_zero && ticket.parent_c_oid.is_none() {
                push("o2137");
            }
        }
    }
    ids.into_iter().map(str::to_owned).collect()
}

/// The `warns` entries of a what-if, `"<code>/<text>"`. Codes and texts from
/// IBKR's what-if example (`21/`) and the reference server's live capture
/// (`22/`, `29/`, both truncated there).
pub(crate) fn whatif_warns(ticket: &OrderTicket, scenario: &SimScenario) -> Vec<String> {
    let mut warns = Vec::new();
    if !scenario.market_data_subscribed {
        warns.push("21/You are trying to submit an order without having market data for this instrument. \nIB strongly recommends against this kind of blind trading which may result in \nerroneous or unexpected trades.".to_owned());
    }
    if ticket.order_type == OrderType::Market {
        warns.push("22/<h4>Market Order Confirmation</h4>&nbsp;A Market Order...".to_owned());
    }
    if ticket.cash_qty.is_some() {
        warns
            .push("29/<html><h4>Cash Quantity Order Confirmation</h4> Orders...</html>".to_owned());
    }
    warns
}
