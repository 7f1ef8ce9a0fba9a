//! Sending an order the laptop's owner approved.
//!
//! The approval moved the attempt from *awaiting approval* to in flight, once. What is sent is
//! exactly what was approved: the order is rebuilt from the journaled arguments and the
//! position it was decided on, and must come out as the journaled body, whose intent must still
//! hash to what the owner was shown. Everything that may have changed while the order waited
//! is checked again first, on fresh broker facts and under the journal's lock: the owner's
//! pause, the account, market hours, the quote the value is computed from, the position a sell
//! may not exceed, and what other orders committed or spent meanwhile. A failed check is
//! journaled `blocked` (nothing was sent); the agent's waiting call reads it from the journal.

use super::now_ms;
use super::place::{Facts, bracket_levels, check_legs, gather, merge, mode_text};
use super::send::send;
use super::ticket::{assign_coids, legs_for, orders_body};
use crate::tools::context::{ToolContext, ToolResult};
use crate::trading::OrdersRuntime;
use crate::trading::approval::intent_hash;
use crate::trading::attempts::Attempt;
use protocol::envelope::Outcome;
use serde_json::{Map, Value, json};
use shared_safety::ErrorCode;
use shared_safety::guards::{GuardRefusal, OrderIntentRole};
use shared_safety::money::{Decimal, parse_decimal_text, to_decimal_string};

/// The guard name a refusal after approval is journaled under.
const GUARD: &str = "after_approval";

/// Re-checks and sends the approved `attempt` (in flight since its approval). Every way out
/// journals an outcome: `blocked` when it was not sent, the send's outcome otherwise.
/// `still_unpaused` reads the owner's pause again just before the last check (the fetches
/// before it take a moment, and the owner may pause in it); it fails closed.
pub async fn send_approved(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    attempt: &Attempt,
    still_unpaused: &(dyn Fn() -> Result<(), GuardRefusal> + Send + Sync),
) -> ToolResult {
    match prepare(runtime, context, attempt, still_unpaused).await {
        Ok(ready) => {
            send(
                runtime,
                context,
                attempt.id,
                &ready.account,
                ready.role,
                ready.body,
                ready.base,
            )
            .await
        }
        Err(NotSent::Journaled(refusal)) => Err(Outcome::Refused(refusal.body())),
        Err(NotSent::Refused(refusal)) => {
            let data = json!({
                "code": refusal.code.code(),
                "guard": refusal.guard,
                "leg": "order",
                "detail": refusal.detail,
            });
            if runtime
                .journal
                .outcome(attempt.id, "blocked", data, now_ms())
                .is_err()
            {
                // Not sent, but not journaled either: it reads as an unknown outcome, which
                // keeps counting and blocking; the reconcile finds nothing and the owner
                // settles it.
                runtime.journal.abandon(attempt.id);
            }
            Err(Outcome::Refused(refusal.body()))
        }
    }
}

/// Why the approved order was not sent, and whether that is journaled already.
enum NotSent {
    Refused(GuardRefusal),
    Journaled(GuardRefusal),
}

impl From<GuardRefusal> for NotSent {
    fn from(refusal: GuardRefusal) -> Self {
        NotSent::Refused(refusal)
    }
}

struct Ready {
    account: String,
    role: OrderIntentRole,
    body: String,
    base: Value,
}

fn refused(code: ErrorCode, detail: impl Into<String>) -> GuardRefusal {
    GuardRefusal {
        code,
        detail: detail.into(),
        guard: GUARD,
    }
}

/// The code and text of a failed broker read.
fn from_outcome(outcome: Outcome) -> GuardRefusal {
    match outcome {
        Outcome::Refused(body) | Outcome::Failed(body) => refused(
            ErrorCode::from_code(&body.code).unwrap_or(ErrorCode::BrokerUnreachable),
            format!("{} (checking the approved order again)", body.message),
        ),
        Outcome::ManualActionRequired(action) => refused(
            ErrorCode::from_code(&action.code).unwrap_or(ErrorCode::BrokerUnreachable),
            format!("{} {}", action.message, action.action),
        ),
        Outcome::Result { .. } => refused(ErrorCode::InternalError, "unexpected result"),
    }
}

/// The refusal of a pause, as the agent's own call would get it.
pub fn paused_refusal(reason: &str) -> GuardRefusal {
    refused(
        ErrorCode::TradingPaused,
        if reason.is_empty() {
            "paused by the laptop's owner after the approval".to_string()
        } else {
            format!("paused by the laptop's owner after the approval: {reason}")
        },
    )
}

async fn prepare(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    attempt: &Attempt,
    still_unpaused: &(dyn Fn() -> Result<(), GuardRefusal> + Send + Sync),
) -> Result<Ready, NotSent> {
    let intent = &attempt.intent;
    let approved = attempt.approval_request().ok_or_else(|| {
        refused(
            ErrorCode::ApprovalMismatch,
            "the attempt never asked for approval",
        )
    })?;
    if approved.intent_hash != intent_hash(intent) {
        return Err(refused(
            ErrorCode::ApprovalMismatch,
            "the journaled order does not hash to the approved one",
        )
        .into());
    }
    if let Some(pause) = &context.trading_pause {
        return Err(paused_refusal(&pause.reason).into());
    }
    // What the agent's call passed through before its guards, again: a journal that still
    // holds the gateway's record, and a logged-in broker session.
    if let Some(behind) = runtime.anchor.behind() {
        return Err(refused(
            ErrorCode::JournalBehindGateway,
            format!(
                "the gateway has entry {} on record; this journal ends at entry {}",
                behind.anchor.seq, behind.journal_last_seq
            ),
        )
        .into());
    }
    crate::gates::check_broker_session(context.cpgw, context.broker)
        .await
        .map_err(from_outcome)?;
    let text = |key: &str| intent.get(key).and_then(Value::as_str);
    let (Some(tool), Some(symbol), Some(coid), Some(account), Some(arguments)) = (
        text("tool"),
        text("symbol"),
        text("coid"),
        text("account"),
        intent.get("arguments").and_then(Value::as_object),
    ) else {
        return Err(refused(
            ErrorCode::ApprovalMismatch,
            "the journaled intent lacks what the order is rebuilt from",
        )
        .into());
    };
    let arguments: Map<String, Value> = arguments.clone();
    let position_before = match text("position_before") {
        Some(text) => Some(
            parse_decimal_text(text, "position_before")
                .map_err(|_| refused(ErrorCode::ApprovalMismatch, "unreadable position"))?,
        ),
        None => None,
    };

    // The broker's facts, now.
    let facts: Facts = gather(tool, &arguments, runtime, context, symbol)
        .await
        .map_err(from_outcome)?;
    if facts.identity.account != account || Some(facts.conid) != attempt.conid() {
        return Err(refused(
            ErrorCode::OrderAccountUnverified,
            format!(
                "the selected account or the contract changed while the order waited (approved \
                 for {account}, now {})",
                facts.identity.account
            ),
        )
        .into());
    }

    // The order as approved: same legs, same client order ids, same body.
    let mut legs = legs_for(tool, symbol, &arguments, position_before).map_err(from_outcome)?;
    assign_coids(&mut legs, coid);
    let body = orders_body(facts.conid, &legs).map_err(from_outcome)?;
    let rebuilt: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if Some(&rebuilt) != intent.get("order") {
        return Err(refused(
            ErrorCode::ApprovalMismatch,
            "the order rebuilt for sending differs from the approved one",
        )
        .into());
    }
    if let Some((_, refusal)) = bracket_levels(tool, &legs, facts.quote.as_ref()) {
        return Err(refusal.into());
    }

    // The guards again, on today's figures, without this attempt counting against itself.
    // As the agent's call had it: the approving owner is not the agent.
    let live_scope_granted = intent
        .get("live_scope_granted")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    still_unpaused()?;
    let mut notional: Option<Decimal> = None;
    let mut refusal = None;
    let passed = runtime
        .journal
        .recheck(
            attempt.id,
            |view| match check_legs(
                view,
                runtime,
                &facts,
                &legs,
                live_scope_granted,
                now_ms(),
                Some(attempt.id),
            ) {
                Ok(value) => {
                    notional = value;
                    Ok(())
                }
                Err((label, mut refused)) => {
                    refused.detail = format!("{} (checked again after approval)", refused.detail);
                    let data = json!({"code": refused.code.code(), "guard": refused.guard,
                                          "leg": label, "detail": refused.detail,
                                          "after_approval": true});
                    refusal = Some(refused);
                    Err(("blocked", data))
                }
            },
            now_ms(),
        )
        .map_err(|_| refused(ErrorCode::JournalError, "the journal could not be read"))?;
    if !passed {
        // Journaled as blocked by the check itself.
        return Err(NotSent::Journaled(
            refusal.unwrap_or_else(|| refused(ErrorCode::OrderInvalid, "refused")),
        ));
    }
    let role = legs
        .first()
        .map_or(OrderIntentRole::Entry, |leg| leg.intent.role);
    Ok(Ready {
        account: facts.identity.account.clone(),
        role,
        body,
        base: merge(
            json!({
                "attempt_id": attempt.id,
                "symbol": facts.symbol,
                "conid": facts.conid,
                "account_mode": mode_text(facts.identity.mode),
                "client_order_id": coid,
            }),
            json!({"estimated_value": notional.map(to_decimal_string), "approved": true}),
        ),
    })
}
