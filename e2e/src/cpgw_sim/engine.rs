//! The order engine: placement, confirmation rounds, triggers, fills,
//! brackets, cancels and the positions lag.
//!
//! Fills happen at the touch: buys at the ask, sells at the bid (limit
//! orders never worse than their limit). Orders are re-evaluated whenever a
//! quote moves (snapshot tick, `set_price`), the scenario or the clock
//! changes, or an order is placed; a partial fill advances one slice per
//! status poll. DAY orders expire at the next regular close on the clock.

use std::collections::{HashMap, HashSet, VecDeque};

use rust_decimal::{Decimal, RoundingStrategy};

use super::book::{Book, FillEffect};
use super::clock::{SessionPhase, next_regular_close};
use super::market::{Market, SimQuote};
use super::orders::{
    OrderTicket, OrderType, Side, SimExecution, SimOrder, SimOrderStatus, TrailKind, coid_taken,
};
use super::scenario::{AccountType, SimScenario};
use super::wire::{price_str, qty_str};

/// `cOID` "must be unique for a 24h span" (IBKR order reference).
const COID_UNIQUE_MS: i64 = 24 * 60 * 60 * 1000;

/// What the engine needs to know about the world at one instant.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) market: &'a Market,
    pub(crate) scenario: &'a SimScenario,
    pub(crate) now_ms: i64,
    pub(crate) phase: SessionPhase,
}

/// First order id handed out; real ids are ten-digit numbers too.
const FIRST_ORDER_ID: u64 = 1_800_000_001;

/// An order as the engine tracks it.
#[derive(Clone, Debug)]
pub(crate) struct Order {
    pub(crate) id: u64,
    pub(crate) account: String,
    pub(crate) symbol: String,
    pub(crate) ticket: OrderTicket,
    pub(crate) status: SimOrderStatus,
    pub(crate) filled: Decimal,
    /// Sum of quantity × price over the executions.
    pub(crate) notional: Decimal,
    /// Total size: the quantity, or for a cash order the quantity worked out
    /// when it starts executing (`None` before).
    pub(crate) target: Option<Decimal>,
    /// Stop (or trailing stop) elected.
    pub(crate) triggered: bool,
    /// Best price seen since placement, for trailing stops.
    pub(crate) trail_extreme: Option<Decimal>,
    /// Slices still to fill (0 when not executing in slices).
    pub(crate) steps_left: u32,
    /// Order id of the bracket parent.
    pub(crate) parent: Option<u64>,
    pub(crate) placed_ms: i64,
    pub(crate) last_execution_ms: Option<i64>,
    /// Brokerage session the order was placed in.
    pub(crate) epoch: u64,
    /// When a DAY order expires (the next regular close after placement).
    pub(crate) expires_ms: Option<i64>,
}

impl Order {
    pub(crate) fn remaining(&self) -> Decimal {
        self.target.map_or(Decimal::ZERO, |target| {
            (target - self.filled).max(Decimal::ZERO)
        })
    }

    pub(crate) fn avg_price(&self) -> Option<Decimal> {
        (!self.filled.is_zero()).then(|| self.notional / self.filled)
    }

    /// "Bought 5 Market, Day" and the like; with a contract, "Bought 5 AAPL
    /// Market, Day".
    pub(crate) fn description(&self, contract: Option<&str>) -> String {
        let done = self.status == SimOrderStatus::Filled;
        let size = if done {
            qty_str(self.filled)
        } else {
            match (self.target, self.ticket.cash_qty) {
                (Some(target), _) => qty_str(target),
                (None, Some(cash)) => format!("${}", price_str(cash)),
                (None, None) => "0".to_owned(),
            }
        };
        let ticket = &self.ticket;
        let pricing = match ticket.order_type {
            OrderType::Market => "Market".to_owned(),
            OrderType::Limit => {
                format!("Limit {}", ticket.price.map(price_str).unwrap_or_default())
            }
            OrderType::Stop => format!("Stop {}", ticket.price.map(price_str).unwrap_or_default()),
            OrderType::StopLimit => format!(
                "Stop Limit {}, {}",
                ticket.aux_price.map(price_str).unwrap_or_default(),
                ticket.price.map(price_str).unwrap_or_default()
            ),
            OrderType::Trail => {
                let amount = ticket.trailing_amt.map(price_str).unwrap_or_default();
                match ticket.trailing_type {
                    Some(TrailKind::Percent) => format!("Trail {amount}%"),
                    _ => format!("Trail {amount}"),
                }
            }
        };
        let tif = match ticket.tif.as_str() {
            "DAY" => "Day",
            other => other,
        };
        let size = match contract {
            Some(contract) => format!("{size} {contract}"),
            None => size,
        };
        format!("{} {size} {pricing}, {tif}", ticket.side.verb(done))
    }

    fn public(&self) -> SimOrder {
        let ticket = &self.ticket;
        SimOrder {
            order_id: self.id.to_string(),
            account: self.account.clone(),
            conid: ticket.conid,
            symbol: self.symbol.clone(),
            side: ticket.side.as_str().to_owned(),
            order_type: ticket.order_type.wire().to_owned(),
            tif: ticket.tif.clone(),
            quantity: ticket.quantity.map(|q| q.to_string()),
            cash_qty: ticket.cash_qty.map(|q| q.to_string()),
            price: ticket.price.map(|p| p.to_string()),
            aux_price: ticket.aux_price.map(|p| p.to_string()),
            trailing_amt: ticket.trailing_amt.map(|p| p.to_string()),
            trailing_type: ticket.trailing_type.map(|t| t.wire().to_owned()),
            c_oid: ticket.c_oid.clone(),
            parent_id: ticket.parent_c_oid.clone(),
            outside_rth: ticket.outside_rth,
            status: self.status,
            filled_quantity: qty_str(self.filled),
            avg_price: self.avg_price().map(price_str),
        }
    }
}

/// A submission waiting for its confirmation rounds.
#[derive(Clone, Debug)]
pub(crate) struct PendingSubmission {
    pub(crate) tickets: Vec<OrderTicket>,
    /// Message ids still to confirm; the front one is being asked.
    pub(crate) rounds: VecDeque<String>,
}

/// What a cancel request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CancelOutcome {
    Accepted { conid: i64 },
    Unknown,
    Inactive,
}

#[derive(Clone, Debug)]
pub(crate) struct Trading {
    pub(crate) orders: Vec<Order>,
    next_order_id: u64,
    next_execution: u64,
    pub(crate) pending: HashMap<String, PendingSubmission>,
    pub(crate) reply_log: Vec<(String, bool)>,
    pub(crate) executions: Vec<SimExecution>,
    /// Every fill applied at once.
    pub(crate) book: Book,
    /// What CPGW reports: fills arrive after the positions lag.
    pub(crate) reported: Book,
    /// Fills not yet in `reported`, each stamped with its time.
    unsettled: Vec<FillEffect>,
    /// `positions/invalidate` was called: the next positions read is fresh.
    positions_invalidated: bool,
    /// Per conid, the snapshot fields asked for so far in this brokerage
    /// session (a field is delivered only once it was asked before).
    pub(crate) snapshot_fields: HashMap<i64, HashSet<String>>,
}

impl Trading {
    pub(crate) fn new(starting_cash: Decimal) -> Self {
        let mut reported = Book::with_cash(starting_cash);
        reported.keep_closed = true;
        Trading {
            orders: Vec::new(),
            next_order_id: FIRST_ORDER_ID,
            next_execution: 1,
            pending: HashMap::new(),
            reply_log: Vec::new(),
            executions: Vec::new(),
            book: Book::with_cash(starting_cash),
            reported,
            unsettled: Vec::new(),
            positions_invalidated: false,
            snapshot_fields: HashMap::new(),
        }
    }

    pub(crate) fn order_log(&self) -> Vec<SimOrder> {
        self.orders.iter().map(Order::public).collect()
    }

    pub(crate) fn index_of(&self, order_id: &str) -> Option<usize> {
        let id: u64 = order_id.trim().parse().ok()?;
        self.orders.iter().position(|order| order.id == id)
    }

    /// A `cOID` used by an order placed in the last 24 hours.
    fn c_oid_taken(&self, c_oid: &str, now_ms: i64) -> bool {
        self.orders.iter().any(|order| {
            order.ticket.c_oid.as_deref() == Some(c_oid)
                && order.placed_ms > now_ms - COID_UNIQUE_MS
        })
    }

    /// Checks what needs the existing orders and positions: `cOID`s unique
    /// over 24 hours, parents that exist (earlier in the same submission, or
    /// already placed), and no short the account may not hold.
    pub(crate) fn check_against_book(
        &self,
        tickets: &[OrderTicket],
        market: &Market,
        scenario: &SimScenario,
        now_ms: i64,
    ) -> Result<(), String> {
        for (index, ticket) in tickets.iter().enumerate() {
            if let Some(c_oid) = &ticket.c_oid
                && self.c_oid_taken(c_oid, now_ms)
            {
                return Err(coid_taken(c_oid));
            }
            if let Some(parent) = &ticket.parent_c_oid {
                let in_submission = tickets
                    .iter()
                    .take(index)
                    .any(|earlier| earlier.c_oid.as_ref() == Some(parent));
                let placed = self
                    .orders
                    .iter()
                    .any(|order| order.ticket.c_oid.as_ref() == Some(parent));
                if !in_submission && !placed {
                    return Err(format!("Parent order {parent} not found"));
                }
                // A child closes what its parent opens.
                continue;
            }
            self.check_short(ticket, market, scenario)?;
        }
        Ok(())
    }

    /// IBKR Knowledge Base, "How do I sell a stock short?": "you must
    /// maintain a "Margin" type account with net liquidating equity of at
    /// least USD 2,000 for a short sale order to be accepted. Short sales are
    /// not allowed in "Cash" type accounts." The refusal texts quote it; the
    /// API's own wording is not public.
    fn check_short(
        &self,
        ticket: &OrderTicket,
        market: &Market,
        scenario: &SimScenario,
    ) -> Result<(), String> {
        if ticket.side != Side::Sell {
            return Ok(());
        }
        let Some(quantity) = ticket.quantity else {
            return Ok(());
        };
        if self.book.held(ticket.conid) - quantity >= Decimal::ZERO {
            return Ok(());
        }
        match scenario.account_type {
            AccountType::Cash => {
                Err("Short sales are not allowed in \"Cash\" type accounts.".to_owned())
            }
            AccountType::Margin => {
                if self.book.figures(market).net_liquidation < Decimal::from(2_000) {
                    Err("A short sale needs a \"Margin\" type account with net liquidating equity of at least USD 2,000.".to_owned())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Records the orders and lets them work. Returns their indices.
    pub(crate) fn place(
        &mut self,
        tickets: Vec<OrderTicket>,
        account: &str,
        epoch: u64,
        env: Env<'_>,
    ) -> Result<Vec<usize>, String> {
        self.check_against_book(&tickets, env.market, env.scenario, env.now_ms)?;
        let mut placed = Vec::new();
        for ticket in tickets {
            let Some(listing) = env.market.by_conid(ticket.conid) else {
                return Err(format!("No contract found for conid {}", ticket.conid));
            };
            let parent = ticket.parent_c_oid.as_ref().and_then(|parent| {
                self.orders
                    .iter()
                    .rev()
                    .find(|order| order.ticket.c_oid.as_ref() == Some(parent))
                    .map(|order| order.id)
            });
            let id = self.next_order_id;
            self.next_order_id += 1;
            let status = if env.scenario.inactive_orders {
                SimOrderStatus::Inactive
            } else {
                SimOrderStatus::PendingSubmit
            };
            let expires_ms = (ticket.tif == "DAY").then(|| next_regular_close(env.now_ms));
            self.orders.push(Order {
                id,
                account: account.to_owned(),
                symbol: listing.instrument.symbol.to_owned(),
                target: ticket.quantity,
                trail_extreme: None,
                ticket,
                status,
                filled: Decimal::ZERO,
                notional: Decimal::ZERO,
                triggered: false,
                steps_left: 0,
                parent,
                placed_ms: env.now_ms,
                last_execution_ms: None,
                epoch,
                expires_ms,
            });
            placed.push(self.orders.len() - 1);
        }
        for index in &placed {
            self.step(*index, env);
            // IOC: whatever did not execute at once is cancelled.
            if let Some(order) = self.orders.get_mut(*index)
                && order.ticket.tif == "IOC"
                && !order.status.is_terminal()
                && order.steps_left == 0
            {
                order.status = SimOrderStatus::Cancelled;
            }
        }
        Ok(placed)
    }

    /// Re-evaluates every working order.
    pub(crate) fn evaluate_all(&mut self, env: Env<'_>) {
        for index in 0..self.orders.len() {
            self.step(index, env);
        }
    }

    /// DAY orders still working at their close are cancelled, as CPGW's ack
    /// text warns ("will be automatically canceled at ...").
    pub(crate) fn expire(&mut self, now_ms: i64) {
        for order in &mut self.orders {
            if order.expires_ms.is_some_and(|at| at <= now_ms) && !order.status.is_terminal() {
                order.status = SimOrderStatus::Cancelled;
                order.steps_left = 0;
            }
        }
    }

    /// Moves one order as far as the market and the scenario allow.
    fn step(&mut self, index: usize, env: Env<'_>) {
        let Some(order) = self.orders.get(index) else {
            return;
        };
        if order.status.is_terminal()
            || matches!(
                order.status,
                SimOrderStatus::Inactive | SimOrderStatus::PendingCancel
            )
            || order.steps_left > 0
        {
            return;
        }
        if let Some(parent_id) = order.parent {
            let parent_filled = self
                .orders
                .iter()
                .any(|parent| parent.id == parent_id && parent.status == SimOrderStatus::Filled);
            if !parent_filled {
                self.set_status(index, SimOrderStatus::PreSubmitted);
                return;
            }
        }
        if !env.phase.executes(order.ticket.outside_rth) {
            self.set_status(index, SimOrderStatus::PreSubmitted);
            return;
        }
        let Some(quote) = env.market.quote(order.ticket.conid) else {
            return;
        };
        let ticket = order.ticket.clone();
        let triggered = order.triggered;
        let executable = match ticket.order_type {
            OrderType::Market => true,
            OrderType::Limit => marketable(ticket.side, ticket.price, quote),
            OrderType::Stop | OrderType::StopLimit => {
                let trigger = match ticket.order_type {
                    OrderType::Stop => ticket.price,
                    _ => ticket.aux_price,
                };
                if !triggered && !stop_hit(ticket.side, trigger, quote.last) {
                    self.set_status(index, SimOrderStatus::PreSubmitted);
                    return;
                }
                self.set_triggered(index);
                ticket.order_type == OrderType::Stop || marketable(ticket.side, ticket.price, quote)
            }
            OrderType::Trail => {
                if !triggered && !self.trail_hit(index, quote.last) {
                    self.set_status(index, SimOrderStatus::PreSubmitted);
                    return;
                }
                self.set_triggered(index);
                true
            }
        };
        if !executable {
            self.set_status(index, SimOrderStatus::Submitted);
            return;
        }
        self.begin_execution(index, env);
    }

    fn set_status(&mut self, index: usize, status: SimOrderStatus) {
        if let Some(order) = self.orders.get_mut(index) {
            order.status = status;
        }
    }

    fn set_triggered(&mut self, index: usize) {
        if let Some(order) = self.orders.get_mut(index) {
            order.triggered = true;
        }
    }

    /// Updates the trailing reference and tells whether the stop is hit.
    fn trail_hit(&mut self, index: usize, last: Decimal) -> bool {
        let Some(order) = self.orders.get_mut(index) else {
            return false;
        };
        let side = order.ticket.side;
        let extreme = match (order.trail_extreme, side) {
            (None, _) => last,
            (Some(seen), Side::Sell) => seen.max(last),
            (Some(seen), Side::Buy) => seen.min(last),
        };
        order.trail_extreme = Some(extreme);
        let amount = order.ticket.trailing_amt.unwrap_or_default();
        let offset = match order.ticket.trailing_type {
            Some(TrailKind::Percent) => extreme * amount / Decimal::ONE_HUNDRED,
            _ => amount,
        };
        match side {
            Side::Sell => last <= extreme - offset,
            Side::Buy => last >= extreme + offset,
        }
    }

    /// The order is executable: fill it now, or start filling it in slices.
    fn begin_execution(&mut self, index: usize, env: Env<'_>) {
        let Some(price) = self.execution_price(index, env.market) else {
            return;
        };
        let Some(order) = self.orders.get_mut(index) else {
            return;
        };
        if order.target.is_none() {
            let cash = order.ticket.cash_qty.unwrap_or_default();
            // IBKR works a cash order out to four decimals, never above the cash.
            let quantity = (cash / price).round_dp_with_strategy(4, RoundingStrategy::ToZero);
            if quantity.is_zero() {
                order.status = SimOrderStatus::Cancelled;
                return;
            }
            order.target = Some(quantity);
        }
        let steps = env.scenario.partial_fill_steps.max(1);
        if steps == 1 {
            let remaining = order.remaining();
            self.execute(index, remaining, price, env);
        } else {
            order.steps_left = steps;
            order.status = SimOrderStatus::Submitted;
        }
    }

    /// Buys at the ask and sells at the bid; a limit caps the price.
    fn execution_price(&self, index: usize, market: &Market) -> Option<Decimal> {
        let order = self.orders.get(index)?;
        let quote = market.quote(order.ticket.conid)?;
        let touch = match order.ticket.side {
            Side::Buy => quote.ask,
            Side::Sell => quote.bid,
        };
        let limit = match order.ticket.order_type {
            OrderType::Limit | OrderType::StopLimit => order.ticket.price,
            _ => None,
        };
        Some(match (limit, order.ticket.side) {
            (Some(limit), Side::Buy) => touch.min(limit),
            (Some(limit), Side::Sell) => touch.max(limit),
            (None, _) => touch,
        })
    }

    /// Records one execution and applies it to the books.
    fn execute(&mut self, index: usize, quantity: Decimal, price: Decimal, env: Env<'_>) {
        if quantity <= Decimal::ZERO {
            return;
        }
        let Some(order) = self.orders.get_mut(index) else {
            return;
        };
        let Some(listing) = env.market.by_conid(order.ticket.conid) else {
            return;
        };
        let commission = commission(quantity, price);
        order.filled += quantity;
        order.notional += quantity * price;
        order.last_execution_ms = Some(env.now_ms);
        let complete = order.remaining().is_zero();
        order.status = if complete {
            order.steps_left = 0;
            SimOrderStatus::Filled
        } else {
            SimOrderStatus::Submitted
        };
        let order_id = order.id;
        let side = order.ticket.side;
        let conid = order.ticket.conid;
        let order_ref = order.ticket.c_oid.clone();
        let execution_id = format!(
            "0000e0d5.{:08x}.01.01",
            0x6576_fd38_u64 + self.next_execution
        );
        self.next_execution += 1;
        self.executions.push(SimExecution {
            execution_id,
            order_id: order_id.to_string(),
            conid,
            symbol: listing.instrument.symbol.to_owned(),
            side: side.as_str().to_owned(),
            quantity,
            price,
            commission,
            order_ref,
            time_ms: env.now_ms,
        });
        let effect = FillEffect {
            conid,
            currency: listing.instrument.currency.to_owned(),
            side,
            quantity,
            price,
            commission,
            at_ms: env.now_ms,
        };
        self.book.apply(&effect);
        if env.scenario.positions_lag.is_zero() {
            self.reported.apply(&effect);
        } else {
            self.unsettled.push(effect);
        }
        if complete {
            self.on_filled(index, env);
        }
    }

    /// Bracket logic: a filled parent releases its children; a filled child
    /// cancels its siblings (one-cancels-all).
    fn on_filled(&mut self, index: usize, env: Env<'_>) {
        let Some(order) = self.orders.get(index) else {
            return;
        };
        let id = order.id;
        let parent = order.parent;
        let children: Vec<usize> = (0..self.orders.len())
            .filter(|i| self.orders.get(*i).is_some_and(|o| o.parent == Some(id)))
            .collect();
        for child in children {
            self.step(child, env);
        }
        if let Some(parent) = parent {
            for sibling in &mut self.orders {
                if sibling.id != id
                    && sibling.parent == Some(parent)
                    && !sibling.status.is_terminal()
                {
                    sibling.status = SimOrderStatus::Cancelled;
                    sibling.steps_left = 0;
                }
            }
        }
    }

    /// A status poll: an order filling in slices gets its next slice.
    pub(crate) fn poll(&mut self, index: usize, env: Env<'_>) {
        let Some(order) = self.orders.get(index) else {
            return;
        };
        if order.steps_left == 0 || order.status != SimOrderStatus::Submitted {
            return;
        }
        let steps_left = order.steps_left;
        let remaining = order.remaining();
        let whole = order.target.is_some_and(|t| t.fract().is_zero());
        let slice = if steps_left <= 1 {
            remaining
        } else {
            let dp = if whole { 0 } else { 4 };
            let slice = (remaining / Decimal::from(steps_left))
                .round_dp_with_strategy(dp, RoundingStrategy::ToZero);
            if slice.is_zero() {
                remaining.min(Decimal::new(1, dp))
            } else {
                slice
            }
        };
        if let Some(order) = self.orders.get_mut(index) {
            order.steps_left = steps_left - 1;
        }
        if let Some(price) = self.execution_price(index, env.market) {
            self.execute(index, slice, price, env);
        }
    }

    /// A `PendingCancel` order was shown once; now it is cancelled.
    pub(crate) fn confirm_cancel(&mut self, index: usize, scenario: &SimScenario) {
        if let Some(order) = self.orders.get_mut(index)
            && order.status == SimOrderStatus::PendingCancel
        {
            order.status = if scenario.cancel_as_api_cancelled {
                SimOrderStatus::ApiCancelled
            } else {
                SimOrderStatus::Cancelled
            };
        }
    }

    pub(crate) fn cancel(&mut self, order_id: &str) -> CancelOutcome {
        let Some(index) = self.index_of(order_id) else {
            return CancelOutcome::Unknown;
        };
        let Some(order) = self.orders.get_mut(index) else {
            return CancelOutcome::Unknown;
        };
        if order.status.is_terminal() {
            return CancelOutcome::Unknown;
        }
        if order.status == SimOrderStatus::Inactive {
            return CancelOutcome::Inactive;
        }
        order.status = SimOrderStatus::PendingCancel;
        order.steps_left = 0;
        let id = order.id;
        let conid = order.ticket.conid;
        // Children of a cancelled parent go with it.
        for child in &mut self.orders {
            if child.parent == Some(id) && !child.status.is_terminal() {
                child.status = SimOrderStatus::PendingCancel;
                child.steps_left = 0;
            }
        }
        CancelOutcome::Accepted { conid }
    }

    /// Fills whatever is left at the touch, whatever the conditions.
    pub(crate) fn force_fill(&mut self, order_id: &str, env: Env<'_>) -> bool {
        let Some(index) = self.index_of(order_id) else {
            return false;
        };
        let Some(order) = self.orders.get(index) else {
            return false;
        };
        if order.status.is_terminal() {
            return false;
        }
        let Some(quote) = env.market.quote(order.ticket.conid) else {
            return false;
        };
        let price = match order.ticket.side {
            Side::Buy => quote.ask,
            Side::Sell => quote.bid,
        };
        if let Some(order) = self.orders.get_mut(index) {
            if order.target.is_none() {
                let cash = order.ticket.cash_qty.unwrap_or_default();
                order.target =
                    Some((cash / price).round_dp_with_strategy(4, RoundingStrategy::ToZero));
            }
            order.triggered = true;
            order.steps_left = 0;
            let remaining = order.remaining();
            if remaining.is_zero() {
                order.status = SimOrderStatus::Cancelled;
                return false;
            }
            self.execute(index, remaining, price, env);
            return true;
        }
        false
    }

    /// Applies to the reported book every fill older than the lag, or every
    /// fill at all if positions were invalidated since the last read.
    pub(crate) fn settle_due(&mut self, now_ms: i64, lag_ms: i64, read: bool) {
        let everything = read && self.positions_invalidated;
        if read {
            self.positions_invalidated = false;
        }
        let mut waiting = Vec::new();
        for effect in std::mem::take(&mut self.unsettled) {
            if everything || effect.at_ms.saturating_add(lag_ms) <= now_ms {
                self.reported.apply(&effect);
            } else {
                waiting.push(effect);
            }
        }
        self.unsettled = waiting;
    }

    /// `POST /portfolio/{acct}/positions/invalidate`.
    pub(crate) fn invalidate_positions(&mut self) {
        self.positions_invalidated = true;
    }

    /// Applies every pending fill to the reported book.
    pub(crate) fn settle(&mut self) {
        for effect in std::mem::take(&mut self.unsettled) {
            self.reported.apply(&effect);
        }
    }
}

fn marketable(side: Side, limit: Option<Decimal>, quote: SimQuote) -> bool {
    match (side, limit) {
        (_, None) => true,
        (Side::Buy, Some(limit)) => quote.ask <= limit,
        (Side::Sell, Some(limit)) => quote.bid >= limit,
    }
}

fn stop_hit(side: Side, trigger: Option<Decimal>, last: Decimal) -> bool {
    match (side, trigger) {
        (_, None) => true,
        (Side::Buy, Some(trigger)) => last >= trigger,
        (Side::Sell, Some(trigger)) => last <= trigger,
    }
}

/// IBKR Pro fixed pricing: USD 0.005 a share, at least USD 1.00, at most 1%
/// of the trade value; two decimals. (The reference server's live what-if of
/// a USD 2 cash buy shows a commission of "0.02 USD": the 1% cap.)
pub(crate) fn commission(quantity: Decimal, price: Decimal) -> Decimal {
    let per_share = quantity * Decimal::new(5, 3);
    let cap = quantity * price / Decimal::ONE_HUNDRED;
    per_share
        .max(Decimal::ONE)
        .min(cap)
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}
