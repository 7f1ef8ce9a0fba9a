//! Sending an order and answering CPGW's confirmation questions, journaling the outcome.
//!
//! Each question round is answered `confirmed: true` only when every message id in it is on the
//! allow-list for the order's role (the price-deviation warning only for value-capped buys);
//! anything else is declined and nothing is placed. IBKR asks one question per round, and a
//! single order can raise several (a market buy by cash amount: five); the reference server
//! allows 12 rounds, and so does this.
//!
//! Failures are classified by whether the order could have landed: a 503 or a timeout after
//! sending is an *unknown outcome*, journaled `indeterminate`, which keeps counting and keeps
//! blocking its instrument and side until it is reconciled or settled.

use super::now_ms;
use super::place::merge;
use crate::cpgw::manual_login_action;
use crate::cpgw::orders::{PlaceReply, SendFailure};
use crate::tools::context::{ToolContext, ToolResult};
use crate::trading::OrdersRuntime;
use protocol::envelope::Outcome;
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use shared_safety::guards::{OrderIntentRole, warning_allowed};

/// Most confirmation rounds answered before declining.
pub const MAX_CONFIRM_ROUNDS: usize = 12;

/// Marks an attempt as abandoned (its outcome unknown) if the send stops without journaling
/// one: a task dropped mid-send must not leave the attempt looking in flight for ever.
struct InFlight<'a> {
    runtime: &'a OrdersRuntime,
    attempt: u64,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.runtime.journal.abandon(self.attempt);
        }
    }
}

/// Journals `event` for the attempt; the send is over either way.
fn finish(guard: &mut InFlight<'_>, event: &str, data: Value) -> bool {
    let written = guard
        .runtime
        .journal
        .outcome(guard.attempt, event, data, now_ms())
        .is_ok();
    guard.done = written;
    written
}

/// Sends the order body and answers the confirmation questions; journals the outcome.
pub(crate) async fn send(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    attempt: u64,
    account: &str,
    role: OrderIntentRole,
    body: String,
    base: Value,
) -> ToolResult {
    let mut guard = InFlight {
        runtime,
        attempt,
        done: false,
    };
    let mut reply = context.cpgw.place_orders(account, body).await;
    let mut rounds = 0usize;
    let mut accepted_warnings: Vec<String> = Vec::new();
    loop {
        match reply {
            Ok(PlaceReply::Acks(acks)) => {
                let ids: Vec<String> = acks
                    .iter()
                    .map(|a| a.order_id.as_str().to_string())
                    .collect();
                let statuses: Vec<Option<String>> =
                    acks.iter().map(|a| a.order_status.clone()).collect();
                let journaled = finish(
                    &mut guard,
                    "sent",
                    json!({"order_ids": ids, "order_statuses": statuses,
                           "accepted_warnings": accepted_warnings}),
                );
                let mut answer = merge(
                    base,
                    json!({
                        "status": "sent",
                        "order_id": ids.first(),
                        "order_ids": ids,
                        "order_status": statuses.first().cloned().flatten(),
                        "accepted_warnings": accepted_warnings,
                    }),
                );
                if !journaled {
                    // The order is at the broker; only the journal line is missing. The attempt
                    // now reads as an unknown outcome, which keeps it counted and blocks its
                    // instrument until it is reconciled.
                    tracing::error!(
                        attempt,
                        "the order was placed but the journal could not record it"
                    );
                    if let Value::Object(map) = &mut answer {
                        map.insert(
                            "journal_warning".into(),
                            json!(
                                "The order was placed, but the trade journal could not record \
                                   it; check the state directory's disk space and permissions, \
                                   then run ibkr_reconcile_pending."
                            ),
                        );
                    }
                }
                return Ok(answer);
            }
            Ok(PlaceReply::Question {
                id,
                messages,
                message_ids,
            }) => {
                rounds += 1;
                let allowed = !message_ids.is_empty()
                    && message_ids
                        .iter()
                        .all(|message_id| warning_allowed(&runtime.policy, message_id, role));
                if !allowed || rounds > MAX_CONFIRM_ROUNDS {
                    let _ = context.cpgw.reply(&id, false).await;
                    finish(
                        &mut guard,
                        "declined",
                        json!({"message_ids": message_ids, "messages": messages,
                               "rounds": rounds}),
                    );
                    let detail = format!(
                        "(warning ids: {}; message: {})",
                        message_ids.join(", "),
                        messages.join(" ")
                    );
                    let code = if allowed {
                        ErrorCode::OrderConfirmationRoundsExceeded
                    } else {
                        ErrorCode::OrderWarningDeclined
                    };
                    return Err(Outcome::Refused(code.body(Some(&detail))));
                }
                accepted_warnings.extend(message_ids);
                reply = context.cpgw.reply(&id, true).await;
            }
            Err(SendFailure::Indeterminate { reason }) => {
                finish(&mut guard, "indeterminate", json!({"reason": reason}));
                return Err(Outcome::Failed(ErrorCode::OrderOutcomeUnknown.body(Some(
                    &format!("({reason}; attempt {attempt}; run ibkr_reconcile_pending)"),
                ))));
            }
            Err(SendFailure::Rejected { reason }) => {
                finish(&mut guard, "rejected", json!({"reason": reason}));
                return Err(Outcome::Refused(
                    ErrorCode::OrderRejected.body(Some(&format!("({reason})"))),
                ));
            }
            Err(SendFailure::NotSent { reason }) => {
                finish(
                    &mut guard,
                    "rejected",
                    json!({"reason": reason, "not_sent": true}),
                );
                let code = if reason.contains("429") {
                    ErrorCode::BrokerRateLimited
                } else {
                    ErrorCode::BrokerUnreachable
                };
                return Err(Outcome::Failed(code.body(Some("(the order was not sent)"))));
            }
            Err(SendFailure::NotAuthenticated) => {
                finish(
                    &mut guard,
                    "rejected",
                    json!({"reason": "no authenticated CPGW session", "not_sent": true}),
                );
                return Err(Outcome::ManualActionRequired(manual_login_action(
                    &context.cpgw.portal_location(),
                )));
            }
        }
    }
}
