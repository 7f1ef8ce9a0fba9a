//! Order attempts as the journal records them, and the views the order guards need.
//!
//! An attempt is an `intent` entry followed by outcome entries naming it. Its *status* is the
//! latest decisive outcome; `observed` entries add what the broker later said about its orders
//! (status and fills), and `settled` entries record the laptop owner's decision about an
//! attempt whose outcome could not be proven.
//!
//! The rules that keep real money safe live here, in one place:
//! - an attempt whose outcome is unknown (it may have been placed) counts as spend, blocks any
//!   new order on the same instrument and side, and counts as an open commitment, until it is
//!   proven placed (reconciled) or the owner settles it; absence from a broker list never
//!   resolves it;
//! - a placed order is an open commitment until every one of its orders on that side was seen
//!   in a final state, and for [`crate::trading::OrdersRuntime`]'s position lag after that
//!   (IBKR's positions lag fills by tens of seconds).

use serde::Serialize;
use serde_json::Value;
use shared_safety::guards::Side;
use shared_safety::money::{Decimal, parse_decimal_text};
use std::collections::{BTreeMap, HashSet};

/// The status of an attempt, from its latest decisive outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Intent written, no outcome yet (in flight, or the sidecar stopped while sending).
    Unresolved,
    Sent,
    DryRun,
    Blocked,
    Declined,
    Rejected,
    /// The broker may or may not have the order.
    Indeterminate,
    /// Found at the broker after an unknown outcome.
    ReconciledPlaced,
    /// Written by an earlier version that concluded "not placed" from an order list; kept
    /// readable, never written any more.
    ReconciledNotPlaced,
    /// The owner settled an unknown outcome as placed.
    SettledPlaced,
    /// The owner settled an unknown outcome as not placed.
    SettledNotPlaced,
    /// A cancel request was accepted by the broker (cancel attempts only).
    Cancelled,
    /// Passed every guard and waits for the laptop owner's approval; nothing was sent. Once
    /// approved, the attempt reads as [`AttemptStatus::Unresolved`] again (being sent).
    AwaitingApproval,
    /// The owner denied it; nothing was sent.
    Denied,
    /// Nobody approved it in time; nothing was sent.
    ApprovalExpired,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Unresolved => "unresolved",
            AttemptStatus::Sent => "sent",
            AttemptStatus::DryRun => "dry_run",
            AttemptStatus::Blocked => "blocked",
            AttemptStatus::Declined => "declined",
            AttemptStatus::Rejected => "rejected",
            AttemptStatus::Indeterminate => "indeterminate",
            AttemptStatus::ReconciledPlaced => "reconciled_placed",
            AttemptStatus::ReconciledNotPlaced => "reconciled_not_placed",
            AttemptStatus::SettledPlaced => "settled_placed",
            AttemptStatus::SettledNotPlaced => "settled_not_placed",
            AttemptStatus::Cancelled => "cancelled",
            AttemptStatus::AwaitingApproval => "awaiting_approval",
            AttemptStatus::Denied => "denied",
            AttemptStatus::ApprovalExpired => "approval_expired",
        }
    }

    /// Certainly not at the broker: refused before sending, declined, rejected, a dry run,
    /// denied or expired unapproved, or settled as not placed.
    pub fn definitely_not_placed(self) -> bool {
        matches!(
            self,
            AttemptStatus::DryRun
                | AttemptStatus::Blocked
                | AttemptStatus::Declined
                | AttemptStatus::Rejected
                | AttemptStatus::ReconciledNotPlaced
                | AttemptStatus::SettledNotPlaced
                | AttemptStatus::Denied
                | AttemptStatus::ApprovalExpired
        )
    }

    /// At the broker: acknowledged, found, or settled as placed.
    pub fn placed(self) -> bool {
        matches!(
            self,
            AttemptStatus::Sent | AttemptStatus::ReconciledPlaced | AttemptStatus::SettledPlaced
        )
    }
}

/// The decisive outcome events and the status each gives.
fn status_of(event: &str, data: &Value) -> Option<AttemptStatus> {
    let placed = data.get("placed").and_then(Value::as_bool) == Some(true);
    Some(match event {
        "sent" => AttemptStatus::Sent,
        "dry_run" => AttemptStatus::DryRun,
        "blocked" => AttemptStatus::Blocked,
        "declined" => AttemptStatus::Declined,
        "rejected" => AttemptStatus::Rejected,
        "indeterminate" => AttemptStatus::Indeterminate,
        "reconciled" if placed => AttemptStatus::ReconciledPlaced,
        "reconciled" => AttemptStatus::ReconciledNotPlaced,
        "settled" if placed => AttemptStatus::SettledPlaced,
        "settled" => AttemptStatus::SettledNotPlaced,
        "cancelled" => AttemptStatus::Cancelled,
        "awaiting_approval" => AttemptStatus::AwaitingApproval,
        // Approved: being sent, exactly like an intent just written (unknown if the sender
        // stops before journaling the outcome).
        "approved" => AttemptStatus::Unresolved,
        "denied" => AttemptStatus::Denied,
        "approval_expired" => AttemptStatus::ApprovalExpired,
        _ => return None,
    })
}

/// What the broker last said about one order of an attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub status: String,
    pub side: Option<Side>,
    pub filled: Option<Decimal>,
    pub terminal: bool,
    pub at_ms: i64,
    /// When a final state was first seen.
    pub first_terminal_at_ms: Option<i64>,
}

/// The final order states: filled, cancelled, rejected, inactive.
pub fn is_terminal_status(status: &str) -> bool {
    matches!(
        status,
        "Filled" | "Cancelled" | "ApiCancelled" | "Inactive" | "Rejected"
    ) || status.to_ascii_lowercase().contains("reject")
}

/// One leg of an attempt as the intent recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegView {
    pub label: String,
    pub side: Side,
    pub quantity: Option<Decimal>,
    pub coid: Option<String>,
}

/// One attempt as the journal knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub id: u64,
    pub at_ms: i64,
    /// The intent entry's data.
    pub intent: Value,
    pub status: AttemptStatus,
    /// The first decisive outcome (what an idempotent retry answers).
    pub first_outcome: Option<(String, Value)>,
    /// The latest decisive outcome.
    pub last_outcome: Option<(String, Value)>,
    /// Broker order id -> the latest observation of that order.
    pub observations: BTreeMap<String, Observation>,
    /// When the owner approved it, for an order that waited for approval: from then on it is
    /// today's spend and the start of its duplicate window.
    pub approved_at_ms: Option<i64>,
}

impl Attempt {
    fn text(&self, field: &str) -> Option<&str> {
        self.intent.get(field).and_then(Value::as_str)
    }
    pub fn tool(&self) -> Option<&str> {
        self.text("tool")
    }
    pub fn dry_run(&self) -> bool {
        self.intent.get("dry_run").and_then(Value::as_bool) == Some(true)
    }
    pub fn fingerprint(&self) -> Option<&str> {
        self.text("fingerprint")
    }
    pub fn idempotency_key(&self) -> Option<&str> {
        self.text("idempotency_key")
    }
    /// The hash of the tool name and arguments an idempotency key was used with.
    pub fn request_hash(&self) -> Option<&str> {
        self.text("request_hash")
    }
    pub fn coid(&self) -> Option<&str> {
        self.text("coid")
    }
    pub fn conid(&self) -> Option<i64> {
        self.intent.get("conid").and_then(Value::as_i64)
    }
    pub fn account(&self) -> Option<&str> {
        self.text("account")
    }
    /// The value counted toward the daily cap (buy entries only).
    pub fn notional(&self) -> Option<Decimal> {
        self.text("notional")
            .and_then(|text| parse_decimal_text(text, "notional").ok())
    }

    /// When the attempt counts from, for the daily spend and the duplicate window: its
    /// approval for an order that waited for one, its intent otherwise.
    pub fn counted_from_ms(&self) -> i64 {
        self.approved_at_ms.unwrap_or(self.at_ms)
    }

    /// The owner's approval this attempt waited (or waits) for, if it needed one.
    pub fn approval_request(&self) -> Option<ApprovalRequest> {
        let (event, data) = self.first_outcome.as_ref()?;
        if event != "awaiting_approval" {
            return None;
        }
        Some(ApprovalRequest {
            reason: data
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            expires_at_ms: data
                .get("expires_at_ms")
                .and_then(Value::as_i64)
                .unwrap_or(i64::MIN),
            intent_hash: data
                .get("intent_hash")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }

    /// The legs the intent recorded.
    pub fn legs(&self) -> Vec<LegView> {
        self.intent
            .get("legs")
            .and_then(Value::as_array)
            .map(|legs| {
                legs.iter()
                    .filter_map(|leg| {
                        let side = match leg.get("side").and_then(Value::as_str)? {
                            "BUY" => Side::Buy,
                            "SELL" => Side::Sell,
                            _ => return None,
                        };
                        Some(LegView {
                            label: leg
                                .get("leg")
                                .and_then(Value::as_str)
                                .unwrap_or("order")
                                .to_string(),
                            side,
                            quantity: leg
                                .get("quantity")
                                .and_then(Value::as_str)
                                .and_then(|text| parse_decimal_text(text, "quantity").ok()),
                            coid: leg.get("coid").and_then(Value::as_str).map(str::to_string),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every client order id the attempt's orders carry (children of a bracket carry none).
    pub fn coids(&self) -> Vec<String> {
        let mut coids: Vec<String> = self.legs().into_iter().filter_map(|leg| leg.coid).collect();
        if coids.is_empty()
            && let Some(coid) = self.coid()
        {
            coids.push(coid.to_string());
        }
        coids
    }

    /// The broker order ids the outcomes named.
    pub fn order_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for outcome in [&self.first_outcome, &self.last_outcome] {
            let named = outcome
                .as_ref()
                .and_then(|(_, data)| data.get("order_ids"))
                .and_then(Value::as_array);
            for id in named.into_iter().flatten().filter_map(Value::as_str) {
                if !ids.iter().any(|known: &String| known == id) {
                    ids.push(id.to_string());
                }
            }
        }
        ids
    }

    /// The outcome is unknown: it may have been placed. `in_flight`: the attempt is being sent
    /// right now by this process (its outcome is coming, not lost).
    pub fn unknown_outcome(&self, in_flight: bool) -> bool {
        // A cancel whose outcome is unknown places nothing; the order it meant to cancel is
        // followed on its own.
        if self.tool() == Some("ibkr_order_cancel") {
            return false;
        }
        match self.status {
            AttemptStatus::Indeterminate => true,
            AttemptStatus::Unresolved => !self.dry_run() && !in_flight,
            _ => false,
        }
    }

    /// Placed or possibly placed (or about to be, once approved), so its value counts toward
    /// the daily cap.
    pub fn counts_as_spend(&self) -> bool {
        match self.status {
            AttemptStatus::Unresolved => !self.dry_run(),
            AttemptStatus::Indeterminate | AttemptStatus::AwaitingApproval => true,
            status => status.placed(),
        }
    }

    /// The quantity this attempt's orders on `side` can still trade. The exits of a bracket
    /// are one-cancels-all: they count once.
    pub(crate) fn side_quantity(&self, side: Side) -> Decimal {
        let legs = self.legs();
        let exits = legs
            .iter()
            .filter(|leg| {
                leg.side == side && matches!(leg.label.as_str(), "take_profit" | "stop_loss")
            })
            .filter_map(|leg| leg.quantity)
            .max()
            .unwrap_or(Decimal::ZERO);
        let others: Decimal = legs
            .iter()
            .filter(|leg| {
                leg.side == side && !matches!(leg.label.as_str(), "take_profit" | "stop_loss")
            })
            .filter_map(|leg| leg.quantity)
            .sum();
        others + exits
    }

    /// Whether the attempt has legs on `side`.
    fn has_side(&self, side: Side) -> bool {
        self.legs().iter().any(|leg| leg.side == side)
    }

    /// Whether every order of this attempt on `side` was seen in a final state, and when the
    /// last of them first was. `None`: some order on that side may still work (or its side is
    /// not known yet).
    fn side_finished_at(&self, side: Side) -> Option<i64> {
        let ids = self.order_ids();
        if ids.is_empty() {
            return None;
        }
        let mut latest = i64::MIN;
        let mut seen_side = false;
        for id in &ids {
            let observation = self.observations.get(id)?;
            match observation.side {
                Some(observed) if observed != side => continue,
                // Not known which side this order is on: it may be on ours.
                None if !observation.terminal => return None,
                _ => {}
            }
            if !observation.terminal {
                return None;
            }
            seen_side = true;
            latest = latest.max(
                observation
                    .first_terminal_at_ms
                    .unwrap_or(observation.at_ms),
            );
        }
        seen_side.then_some(latest)
    }
}

/// What an attempt that needs the owner's approval recorded when it started waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRequest {
    pub reason: String,
    /// When it expires unsent (ms since the Unix epoch; `i64::MIN` if unreadable: expired).
    pub expires_at_ms: i64,
    /// [`crate::trading::approval::intent_hash`] of the intent, as the owner is shown it.
    pub intent_hash: String,
}

/// The quantity committed to open orders of ours on one instrument and side.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commitments {
    pub quantity: Decimal,
    /// The attempts that make it up (for the refusal's advice).
    pub attempts: Vec<u64>,
    /// Broker order ids known among them (what the agent could cancel).
    pub order_ids: Vec<String>,
}

/// Every attempt of the journal, by id.
#[derive(Debug, Default)]
pub struct AttemptBook {
    attempts: BTreeMap<u64, Attempt>,
}

impl AttemptBook {
    /// Applies one journal entry.
    pub fn apply(&mut self, seq: u64, attempt: u64, at_ms: i64, event: &str, data: &Value) {
        if event == "intent" {
            // An order that needs approval waits from its intent on: if the process stops
            // before the `awaiting_approval` entry follows, it was never sent (only an approval
            // sends it), and it expires at the next start rather than reading as possibly
            // placed.
            let waits = data.get("approval_required").and_then(Value::as_bool) == Some(true);
            self.attempts.insert(
                seq,
                Attempt {
                    id: seq,
                    at_ms,
                    intent: data.clone(),
                    status: if waits {
                        AttemptStatus::AwaitingApproval
                    } else {
                        AttemptStatus::Unresolved
                    },
                    first_outcome: None,
                    last_outcome: None,
                    observations: BTreeMap::new(),
                    approved_at_ms: None,
                },
            );
            return;
        }
        let Some(record) = self.attempts.get_mut(&attempt) else {
            return;
        };
        if event == "observed" {
            let Some(order_id) = data.get("order_id").and_then(Value::as_str) else {
                return;
            };
            let status = data
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let terminal = is_terminal_status(&status);
            let previous = record.observations.get(order_id);
            let first_terminal_at_ms = previous
                .and_then(|p| p.first_terminal_at_ms)
                .or(terminal.then_some(at_ms));
            let side = match data.get("side").and_then(Value::as_str) {
                Some("BUY" | "B") => Some(Side::Buy),
                Some("SELL" | "S") => Some(Side::Sell),
                _ => previous.and_then(|p| p.side),
            };
            let filled = data
                .get("filled_quantity")
                .and_then(Value::as_str)
                .and_then(|text| parse_decimal_text(text, "filled").ok());
            record.observations.insert(
                order_id.to_string(),
                Observation {
                    status,
                    side,
                    filled,
                    terminal,
                    at_ms,
                    first_terminal_at_ms,
                },
            );
            return;
        }
        if let Some(status) = status_of(event, data) {
            if event == "approved" {
                record.approved_at_ms = Some(at_ms);
            }
            record.status = status;
            if record.first_outcome.is_none() {
                record.first_outcome = Some((event.to_string(), data.clone()));
            }
            record.last_outcome = Some((event.to_string(), data.clone()));
        }
    }

    pub fn get(&self, id: u64) -> Option<&Attempt> {
        self.attempts.get(&id)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Attempt> {
        self.attempts.values()
    }

    /// Buy value of attempts whose intent falls on `utc_day` (days since the Unix epoch) and
    /// that were placed or may have been.
    pub fn spent_on_day(&self, utc_day: i64) -> Decimal {
        self.spent_on_day_except(utc_day, None)
    }

    /// [`AttemptBook::spent_on_day`] without one attempt (an approved order checked again
    /// before it is sent must not count against itself).
    pub fn spent_on_day_except(&self, utc_day: i64, except: Option<u64>) -> Decimal {
        self.iter()
            .filter(|attempt| Some(attempt.id) != except)
            .filter(|attempt| attempt.counted_from_ms().div_euclid(86_400_000) == utc_day)
            .filter(|attempt| attempt.counts_as_spend())
            .filter_map(Attempt::notional)
            .fold(Decimal::ZERO, |total, value| {
                total.checked_add(value).unwrap_or(Decimal::MAX)
            })
    }

    /// Attempts whose outcome is unknown.
    pub fn pending<'a>(&'a self, in_flight: &'a HashSet<u64>) -> impl Iterator<Item = &'a Attempt> {
        self.iter()
            .filter(move |attempt| attempt.unknown_outcome(in_flight.contains(&attempt.id)))
    }

    /// An attempt with an unknown outcome on this instrument and side (any size, any price).
    pub fn unresolved_on(&self, conid: i64, side: Side, in_flight: &HashSet<u64>) -> Option<u64> {
        self.pending(in_flight)
            .find(|attempt| attempt.conid() == Some(conid) && attempt.has_side(side))
            .map(|attempt| attempt.id)
    }

    /// An identical order (same fingerprint) placed within `window_ms` before `now_ms`.
    pub fn recent_identical(&self, fingerprint: &str, now_ms: i64, window_ms: i64) -> bool {
        self.recent_identical_except(fingerprint, now_ms, window_ms, None)
    }

    /// [`AttemptBook::recent_identical`] without one attempt.
    pub fn recent_identical_except(
        &self,
        fingerprint: &str,
        now_ms: i64,
        window_ms: i64,
        except: Option<u64>,
    ) -> bool {
        self.iter().any(|attempt| {
            // An order waiting for approval, or approved and being sent, is a duplicate of an
            // identical one for as long as it waits: the owner must not see the same order
            // twice because the agent asked again after the window.
            let waiting = attempt.status == AttemptStatus::AwaitingApproval
                || (attempt.status == AttemptStatus::Unresolved
                    && attempt.approved_at_ms.is_some());
            Some(attempt.id) != except
                && attempt.fingerprint() == Some(fingerprint)
                && !attempt.dry_run()
                && (waiting
                    || ((attempt.status.placed() || attempt.status == AttemptStatus::Unresolved)
                        && now_ms.saturating_sub(attempt.counted_from_ms()) < window_ms))
        })
    }

    /// The attempts made with `key`, oldest first.
    pub fn by_idempotency_key(&self, key: &str) -> Vec<&Attempt> {
        self.iter()
            .filter(|attempt| attempt.idempotency_key() == Some(key))
            .collect()
    }

    /// The attempt that placed the order with broker id `order_id`, if any.
    pub fn by_order_id(&self, order_id: &str) -> Option<&Attempt> {
        self.iter()
            .find(|attempt| attempt.order_ids().iter().any(|id| id == order_id))
    }

    /// What our own attempts have committed on `conid` and `side` as of `now_ms`: unknown
    /// outcomes, placed orders that may still work, and orders that finished less than
    /// `lag_ms` ago (the broker's positions may not show their fills yet).
    pub fn commitments(&self, conid: i64, side: Side, now_ms: i64, lag_ms: i64) -> Commitments {
        self.commitments_except(conid, side, now_ms, lag_ms, None)
    }

    /// [`AttemptBook::commitments`] without one attempt.
    pub fn commitments_except(
        &self,
        conid: i64,
        side: Side,
        now_ms: i64,
        lag_ms: i64,
        except: Option<u64>,
    ) -> Commitments {
        let mut result = Commitments::default();
        for attempt in self.iter() {
            if Some(attempt.id) == except
                || attempt.conid() != Some(conid)
                || attempt.dry_run()
                || !attempt.has_side(side)
                || attempt.status.definitely_not_placed()
                || attempt.status == AttemptStatus::Cancelled
            {
                continue;
            }
            let open = if attempt.status.placed() {
                match attempt.side_finished_at(side) {
                    None => true,
                    Some(finished_at) => now_ms.saturating_sub(finished_at) < lag_ms,
                }
            } else {
                // Unresolved (in flight or lost) or indeterminate.
                true
            };
            if open {
                result.quantity += attempt.side_quantity(side);
                result.attempts.push(attempt.id);
                result.order_ids.extend(attempt.order_ids());
            }
        }
        result
    }

    /// Placed attempts on `conid` with orders not yet seen in a final state (whose status is
    /// worth asking the broker), newest first.
    pub fn live_orders_on(&self, conid: i64) -> Vec<(u64, String)> {
        let mut ids = Vec::new();
        for attempt in self.iter().rev() {
            if attempt.conid() != Some(conid) || !attempt.status.placed() {
                continue;
            }
            for id in attempt.order_ids() {
                if !attempt.observations.get(&id).is_some_and(|o| o.terminal) {
                    ids.push((attempt.id, id));
                }
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sell_intent(conid: i64, quantity: &str) -> Value {
        json!({"tool": "ibkr_sell", "conid": conid, "dry_run": false,
               "legs": [{"leg": "order", "side": "SELL", "quantity": quantity, "coid": "ia-x"}]})
    }

    fn bracket_intent(conid: i64) -> Value {
        json!({"tool": "ibkr_bracket_order", "conid": conid, "dry_run": false, "legs": [
            {"leg": "entry", "side": "BUY", "quantity": "5", "coid": "ia-p"},
            {"leg": "take_profit", "side": "SELL", "quantity": "5"},
            {"leg": "stop_loss", "side": "SELL", "quantity": "5"}]})
    }

    #[test]
    fn commitments_follow_the_order_until_its_fill_is_reflected() {
        let mut book = AttemptBook::default();
        let none: HashSet<u64> = HashSet::new();
        book.apply(1, 1, 1_000, "intent", &sell_intent(7, "3"));
        // In flight or lost: committed, and unknown once not in flight.
        assert_eq!(
            book.commitments(7, Side::Sell, 1_000, 60_000).quantity,
            Decimal::from(3)
        );
        assert_eq!(book.unresolved_on(7, Side::Sell, &none), Some(1));
        assert_eq!(book.unresolved_on(7, Side::Sell, &HashSet::from([1])), None);
        book.apply(2, 1, 1_100, "sent", &json!({"order_ids": ["11"]}));
        assert_eq!(
            book.commitments(7, Side::Sell, 2_000, 60_000).quantity,
            Decimal::from(3)
        );
        assert_eq!(book.live_orders_on(7), vec![(1, "11".to_string())]);
        book.apply(
            3,
            1,
            5_000,
            "observed",
            &json!({"order_id": "11", "status": "Submitted", "side": "S"}),
        );
        assert_eq!(
            book.commitments(7, Side::Sell, 6_000, 60_000).quantity,
            Decimal::from(3)
        );
        book.apply(
            4,
            1,
            9_000,
            "observed",
            &json!({"order_id": "11", "status": "Filled", "side": "S", "filled_quantity": "3"}),
        );
        // Filled: still counted while positions may lag, then not.
        assert_eq!(
            book.commitments(7, Side::Sell, 68_999, 60_000).quantity,
            Decimal::from(3)
        );
        assert_eq!(
            book.commitments(7, Side::Sell, 69_000, 60_000).quantity,
            Decimal::ZERO
        );
        assert!(book.live_orders_on(7).is_empty());
        // Other instruments and sides are not affected.
        assert_eq!(
            book.commitments(8, Side::Sell, 2_000, 60_000).quantity,
            Decimal::ZERO
        );
        assert_eq!(
            book.commitments(7, Side::Buy, 2_000, 60_000).quantity,
            Decimal::ZERO
        );
    }

    #[test]
    fn bracket_exits_count_once_and_failed_attempts_not_at_all() {
        let mut book = AttemptBook::default();
        book.apply(1, 1, 0, "intent", &bracket_intent(7));
        book.apply(2, 1, 1, "sent", &json!({"order_ids": ["1", "2", "3"]}));
        assert_eq!(
            book.commitments(7, Side::Sell, 10, 60_000).quantity,
            Decimal::from(5)
        );
        assert_eq!(
            book.commitments(7, Side::Buy, 10, 60_000).quantity,
            Decimal::from(5)
        );
        book.apply(3, 3, 20, "intent", &sell_intent(7, "9"));
        book.apply(4, 3, 21, "rejected", &json!({"reason": "no"}));
        assert_eq!(
            book.commitments(7, Side::Sell, 30, 60_000).quantity,
            Decimal::from(5)
        );
        // An unknown outcome the owner settled as not placed stops counting.
        book.apply(5, 5, 40, "intent", &sell_intent(7, "2"));
        book.apply(6, 5, 41, "indeterminate", &json!({"reason": "503"}));
        assert_eq!(
            book.commitments(7, Side::Sell, 50, 60_000).quantity,
            Decimal::from(7)
        );
        book.apply(
            7,
            5,
            60,
            "settled",
            &json!({"placed": false, "by": "owner"}),
        );
        assert_eq!(
            book.commitments(7, Side::Sell, 70, 60_000).quantity,
            Decimal::from(5)
        );
        assert_eq!(
            book.get(5).map(|a| a.status),
            Some(AttemptStatus::SettledNotPlaced)
        );
    }

    fn waiting_buy(fingerprint: &str) -> Value {
        json!({"tool": "ibkr_buy", "conid": 7, "dry_run": false, "approval_required": true,
               "fingerprint": fingerprint, "notional": "100",
               "legs": [{"leg": "order", "side": "BUY", "quantity": "1", "coid": "ia-w"}]})
    }

    #[test]
    fn an_order_waiting_for_approval_blocks_its_twin_and_counts_from_its_approval() {
        const DAY: i64 = 86_400_000;
        let mut book = AttemptBook::default();
        // Journaled intent, crash before the `awaiting_approval` entry: it waits (never sent).
        book.apply(1, 1, 1_000, "intent", &waiting_buy("fp"));
        assert_eq!(
            book.get(1).map(|a| a.status),
            Some(AttemptStatus::AwaitingApproval)
        );
        assert!(book.get(1).is_some_and(|a| a.approval_request().is_none()));
        book.apply(
            2,
            1,
            1_001,
            "awaiting_approval",
            &json!({"reason": "live order", "expires_at_ms": 2 * DAY, "intent_hash": "ab"}),
        );
        // Long after the duplicate window, an identical order is still a duplicate.
        assert!(book.recent_identical("fp", DAY - 1, 60_000));
        assert!(!book.recent_identical("other", DAY - 1, 60_000));
        // Reserved against today's budget while it waits.
        assert_eq!(book.spent_on_day(0), Decimal::from(100));
        // Approved the next day: it is that day's spend, and its window starts then.
        book.apply(
            3,
            1,
            DAY + 5,
            "approved",
            &json!({"by": "owner", "via": "cli"}),
        );
        assert_eq!(book.get(1).map(|a| a.approved_at_ms), Some(Some(DAY + 5)));
        assert_eq!(book.spent_on_day(0), Decimal::ZERO);
        assert_eq!(book.spent_on_day(1), Decimal::from(100));
        assert!(book.recent_identical("fp", DAY + 10 * 60_000, 60_000));
        book.apply(4, 1, DAY + 10, "sent", &json!({"order_ids": ["11"]}));
        assert!(book.recent_identical("fp", DAY + 5 + 59_999, 60_000));
        assert!(!book.recent_identical("fp", DAY + 5 + 60_000, 60_000));
        // A denied twin neither blocks nor spends.
        book.apply(5, 5, 3 * DAY, "intent", &waiting_buy("fp2"));
        book.apply(6, 5, 3 * DAY + 1, "denied", &json!({"by": "owner"}));
        assert!(!book.recent_identical("fp2", 3 * DAY + 2, 60_000));
        assert_eq!(book.spent_on_day(3), Decimal::ZERO);
    }
}
