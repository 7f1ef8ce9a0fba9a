//! The laptop owner's approvals of orders, in the running daemon: what waits, approve (then
//! check again and send), deny, and expiry.
//!
//! An order that needs approval (`trading.approval`) is journaled *awaiting approval* by the
//! agent's call, which then waits on the journal. The owner decides in the console or with
//! `ibkr-agent sidecar approvals approve|deny`; each decision is one atomic journal transition
//! from *awaiting approval*, so an approval is used once and can never apply to another order
//! (it names the journal attempt, whose intent the journal's hash chain keeps unchanged, and
//! may carry the intent hash the owner was shown). The send after an approval is the daemon's
//! own work, detached from any relay connection: the agent's call may have returned
//! `awaiting_approval` long before.

use crate::context::DaemonContext;
use crate::error::SidecarError;
use crate::tools::context::ToolContext;
use crate::tools::orders::approved;
use crate::trading::attempts::{Attempt, AttemptBook, AttemptStatus};
use crate::trading::journal::{Journal, JournalError};
use crate::trading::now_ms;
use serde::Serialize;
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use shared_safety::guards::GuardRefusal;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest the send of an approved order may take (its confirmation rounds included).
const SEND_BUDGET: Duration = Duration::from_secs(60);
/// Longest note kept with a decision.
const MAX_NOTE_LEN: usize = 500;

/// One order waiting for the owner, as the console and the CLI show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PendingApproval {
    pub attempt_id: u64,
    /// When the agent asked (ms since the Unix epoch).
    pub asked_at_ms: i64,
    pub expires_at_ms: i64,
    pub tool: String,
    pub symbol: String,
    pub account: String,
    pub account_mode: String,
    /// The legs in words, e.g. `BUY 10 LMT 150 DAY`.
    pub legs: Vec<String>,
    /// Estimated value in USD, when there is one.
    pub order_value: Option<String>,
    /// Why it needs approval.
    pub reason: String,
    /// What the approval is bound to ([`crate::trading::approval::intent_hash`]).
    pub intent_hash: String,
}

impl PendingApproval {
    fn of(attempt: &Attempt) -> Option<PendingApproval> {
        if attempt.status != AttemptStatus::AwaitingApproval {
            return None;
        }
        let request = attempt.approval_request()?;
        let text = |key: &str| {
            attempt
                .intent
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let legs = attempt
            .intent
            .get("legs")
            .and_then(Value::as_array)
            .map(|legs| legs.iter().map(leg_words).collect())
            .unwrap_or_default();
        let order_value = attempt
            .first_outcome
            .as_ref()
            .and_then(|(_, data)| data.get("order_value"))
            .and_then(Value::as_str)
            .map(str::to_string);
        Some(PendingApproval {
            attempt_id: attempt.id,
            asked_at_ms: attempt.at_ms,
            expires_at_ms: request.expires_at_ms,
            tool: text("tool"),
            symbol: text("symbol"),
            account: text("account"),
            account_mode: text("account_mode"),
            legs,
            order_value,
            reason: request.reason,
            intent_hash: request.intent_hash,
        })
    }
}

/// A leg in words: side, quantity or cash amount, type, prices, time in force.
fn leg_words(leg: &Value) -> String {
    let text = |key: &str| leg.get(key).and_then(Value::as_str);
    let mut words = Vec::new();
    if let Some(label) = text("leg").filter(|label| *label != "order") {
        words.push(format!("{label}:"));
    }
    words.extend(text("side").map(str::to_string));
    match (text("quantity"), text("cash_amount")) {
        (Some(quantity), _) => words.push(quantity.to_string()),
        (None, Some(cash)) => words.push(format!("{cash} USD of")),
        _ => {}
    }
    words.extend(text("order_type").map(str::to_string));
    for (key, label) in [
        ("limit_price", "limit"),
        ("stop_price", "stop"),
        ("trail_amount", "trail"),
    ] {
        if let Some(value) = text(key) {
            words.push(format!("{label} {value}"));
        }
    }
    if let Some(percent) = text("trail_percent") {
        words.push(format!("trail {percent}%"));
    }
    words.extend(text("tif").map(str::to_string));
    words.join(" ")
}

/// The orders waiting for approval in `book`, oldest first.
pub fn pending_in(book: &AttemptBook) -> Vec<PendingApproval> {
    book.iter().filter_map(PendingApproval::of).collect()
}

/// The orders waiting for approval in an open journal, oldest first.
pub fn pending(journal: &Journal) -> Vec<PendingApproval> {
    journal
        .awaiting_approval()
        .iter()
        .filter_map(PendingApproval::of)
        .collect()
}

/// Who decided, how, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decider {
    /// The operating-system user (CLI) or `console`'s owner.
    pub by: String,
    /// `cli` or `console`.
    pub via: String,
    pub note: Option<String>,
}

impl Decider {
    fn json(&self) -> Value {
        let clean = |text: &str, limit: usize| -> String {
            text.chars()
                .filter(|c| !c.is_control())
                .take(limit)
                .collect()
        };
        json!({
            "by": clean(&self.by, 64),
            "via": clean(&self.via, 16),
            "note": self.note.as_deref().map(|note| clean(note, MAX_NOTE_LEN)),
        })
    }
}

fn journal_error(error: &JournalError) -> SidecarError {
    SidecarError::new(ErrorCode::JournalError, format!("({error})"))
}

fn not_pending(attempt: u64, status: Option<AttemptStatus>) -> SidecarError {
    let why = match status {
        None => "is not in the trade journal".to_string(),
        Some(AttemptStatus::AwaitingApproval) => "waits for approval".to_string(),
        Some(status) => format!("is {}", status.as_str()),
    };
    SidecarError::new(
        ErrorCode::ApprovalNotPending,
        format!("(attempt {attempt} {why})"),
    )
}

/// The attempt, if it waits for approval and (when given) hashes as the owner was shown.
fn waiting(
    journal: &Journal,
    attempt: u64,
    expected_hash: Option<&str>,
) -> Result<Attempt, SidecarError> {
    let record = journal
        .attempt(attempt)
        .ok_or_else(|| not_pending(attempt, None))?;
    if record.status != AttemptStatus::AwaitingApproval {
        return Err(not_pending(attempt, Some(record.status)));
    }
    let request = record
        .approval_request()
        .ok_or_else(|| not_pending(attempt, Some(record.status)))?;
    if let Some(expected) = expected_hash
        && !expected.eq_ignore_ascii_case(&request.intent_hash)
    {
        return Err(SidecarError::new(
            ErrorCode::ApprovalMismatch,
            format!(
                "(attempt {attempt} hashes to {}, not {expected})",
                request.intent_hash
            ),
        ));
    }
    Ok(record)
}

/// Denies a waiting order: journaled with who, how and why; the agent's call answers
/// `ORDER_APPROVAL_DENIED`. Needs no running daemon.
pub fn deny(
    journal: &Journal,
    attempt: u64,
    expected_hash: Option<&str>,
    decider: &Decider,
) -> Result<Value, SidecarError> {
    waiting(journal, attempt, expected_hash)?;
    match journal
        .transition(
            attempt,
            AttemptStatus::AwaitingApproval,
            "denied",
            decider.json(),
            now_ms(),
            false,
        )
        .map_err(|error| journal_error(&error))?
    {
        Ok(_) => Ok(json!({"attempt_id": attempt, "status": "denied"})),
        Err(status) => Err(not_pending(attempt, status)),
    }
}

/// Approves a waiting order and starts its send in the daemon (checked again first). Returns
/// once the approval is journaled; the send's outcome goes to the journal and to the agent's
/// waiting call.
pub(crate) fn approve(
    context: &Arc<DaemonContext>,
    attempt: u64,
    expected_hash: Option<&str>,
    decider: &Decider,
) -> Result<Value, SidecarError> {
    let runtime = context.orders.as_ref().ok_or_else(|| {
        SidecarError::new(
            ErrorCode::JournalError,
            "(the trade journal is not available in this sidecar; see its log)",
        )
    })?;
    if context.order_work.is_closed() {
        // A stopping daemon would have to kill the send it started, leaving an order of
        // unknown outcome; the order keeps waiting and expires, or is approved after restart.
        return Err(SidecarError::new(
            ErrorCode::ApprovalNeedsDaemon,
            "(the daemon is stopping; approve again once it has started)",
        ));
    }
    let record = waiting(&runtime.journal, attempt, expected_hash)?;
    let request = record
        .approval_request()
        .ok_or_else(|| not_pending(attempt, Some(record.status)))?;
    if now_ms() >= request.expires_at_ms {
        expire(&runtime.journal, attempt);
        return Err(SidecarError::new(
            ErrorCode::OrderApprovalExpired,
            format!("(attempt {attempt})"),
        ));
    }
    let mut data = decider.json();
    if let Value::Object(map) = &mut data {
        map.insert("intent_hash".into(), json!(request.intent_hash));
    }
    let approved = match runtime
        .journal
        .transition(
            attempt,
            AttemptStatus::AwaitingApproval,
            "approved",
            data,
            now_ms(),
            true,
        )
        .map_err(|error| journal_error(&error))?
    {
        Ok(record) => record,
        Err(status) => return Err(not_pending(attempt, status)),
    };
    tracing::info!(attempt, by = %decider.by, via = %decider.via, "order approved by the owner; sending");
    let killed = context.order_work_killed.clone();
    let context = context.clone();
    context.clone().order_work.spawn(async move {
        // Only a daemon that dies stops it, as a crash would (the attempt then reads as an
        // unknown outcome, like any order interrupted while being sent).
        tokio::select! {
            _ = killed.cancelled() => {}
            _ = send_approved(&context, &approved) => {}
        }
    });
    Ok(json!({"attempt_id": attempt, "status": "approved"}))
}

async fn send_approved(context: &DaemonContext, attempt: &Attempt) {
    let Some(runtime) = context.orders.as_ref() else {
        return;
    };
    let trading_pause = match context.store.trading_pause() {
        Ok(pause) => pause,
        Err(error) => {
            tracing::error!(code = %error.code(), "state store unreadable; the approved order is not sent");
            let data = json!({"code": ErrorCode::StateStoreError.code(), "guard": "after_approval",
                              "leg": "order", "detail": "the state store could not be read"});
            if runtime
                .journal
                .outcome(attempt.id, "blocked", data, now_ms())
                .is_err()
            {
                runtime.journal.abandon(attempt.id);
            }
            return;
        }
    };
    let trading = context.cpgw.for_orders();
    let tool_context = ToolContext {
        market_clock: &context.market_clock,
        cpgw: &trading,
        broker: &context.broker,
        sidecar_id: &context.identity.sidecar_id,
        contracts: &context.contracts,
        accounts: &context.accounts,
        quotes: &context.quotes,
        connected_for: Duration::ZERO,
        auth: None,
        orders: Some(runtime),
        // The re-check uses the agent call's grant, as journaled with the intent.
        live_scope_granted: false,
        trading_pause,
        progress: None,
        deadline: tokio::time::Instant::now() + SEND_BUDGET,
    };
    let still_unpaused = || match context.store.trading_pause() {
        Ok(None) => Ok(()),
        Ok(Some(pause)) => Err(approved::paused_refusal(&pause.reason)),
        Err(_) => Err(GuardRefusal {
            code: ErrorCode::StateStoreError,
            detail: "the state store could not be read to check the pause".into(),
            guard: "after_approval",
        }),
    };
    match approved::send_approved(runtime, &tool_context, attempt, &still_unpaused).await {
        Ok(_) => tracing::info!(attempt = attempt.id, "approved order sent"),
        Err(outcome) => {
            tracing::warn!(attempt = attempt.id, ?outcome, "approved order not sent")
        }
    }
}

/// Journals `attempt` as expired unapproved, if it still waits.
fn expire(journal: &Journal, attempt: u64) {
    match journal.transition(
        attempt,
        AttemptStatus::AwaitingApproval,
        "approval_expired",
        json!({}),
        now_ms(),
        false,
    ) {
        Ok(Ok(_)) => tracing::info!(
            attempt,
            "an order's approval request expired; nothing was sent"
        ),
        Ok(Err(_)) => {}
        Err(error) => tracing::error!(attempt, %error, "could not journal an expired approval"),
    }
}

/// Expires every waiting order whose time is up; returns when the next one expires.
pub fn expire_due(journal: &Journal, now_ms: i64) -> Option<i64> {
    let mut next = None::<i64>;
    for attempt in journal.awaiting_approval() {
        let expires_at = attempt
            .approval_request()
            .map_or(i64::MIN, |request| request.expires_at_ms);
        if expires_at <= now_ms {
            expire(journal, attempt.id);
        } else {
            next = Some(next.map_or(expires_at, |n| n.min(expires_at)));
        }
    }
    next
}

/// Expires waiting orders on time until `shutdown` (also those that expired while no daemon
/// ran, at once), and tells the console when the journal changes. Wakes at the next expiry or
/// when the journal changes.
pub(crate) async fn run_expiry(context: Arc<DaemonContext>, shutdown: CancellationToken) {
    let Some(runtime) = context.orders.as_ref() else {
        return;
    };
    let mut changes = runtime.journal.subscribe();
    loop {
        let next = expire_due(&runtime.journal, now_ms());
        let sleep = next.map_or(Duration::from_secs(3600), |at| {
            Duration::from_millis(u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0))
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(sleep) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // An order started or stopped waiting, or any other journal change: open
                // console pages show it.
                context.activity.notify();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trading::journal::JOURNAL_FILE;

    fn live_buy() -> Value {
        json!({"tool": "ibkr_buy", "symbol": "AAPL", "conid": 265598, "side": "BUY",
               "fingerprint": "fp-live", "notional": "1500", "dry_run": false,
               "approval_required": true, "coid": "ia-9",
               "legs": [{"leg": "order", "side": "BUY", "quantity": "10", "order_type": "LMT",
                         "limit_price": "150", "tif": "DAY", "coid": "ia-9"}]})
    }

    /// The worst moments for a crash around an approval, read back as the next start sees
    /// them: an order that never got to wait is not pending at the broker and expires at once;
    /// one approved but not yet sent reads as an unknown outcome (it may have been sent).
    #[test]
    fn a_restart_expires_what_waited_and_never_forgets_an_approved_send() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let journal = Journal::open(&path).unwrap();
        // Crash after the intent, before `awaiting_approval`.
        let torn = journal.intent(live_buy(), 1_000).unwrap();
        // Waiting, expires at 5_000; the daemon is stopped past it.
        let stale = journal.intent(live_buy(), 2_000).unwrap();
        journal
            .outcome(
                stale,
                "awaiting_approval",
                json!({"reason": "live order", "expires_at_ms": 5_000, "intent_hash": "h"}),
                2_001,
            )
            .unwrap();
        // Approved, then the daemon died before the send was journaled.
        let approved = journal.intent(live_buy(), 3_000).unwrap();
        journal
            .outcome(
                approved,
                "awaiting_approval",
                json!({"reason": "live order", "expires_at_ms": 9_000, "intent_hash": "h"}),
                3_001,
            )
            .unwrap();
        journal
            .transition(
                approved,
                AttemptStatus::AwaitingApproval,
                "approved",
                json!({"by": "owner", "via": "cli"}),
                3_500,
                true,
            )
            .unwrap()
            .unwrap();
        drop(journal);

        let journal = Journal::open(&path).unwrap();
        assert_eq!(
            journal.pending().iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![approved],
            "only the approved one may have reached the broker"
        );
        // The owner is shown only the one that got to wait, until its time is up.
        assert_eq!(
            pending(&journal)
                .iter()
                .map(|p| p.attempt_id)
                .collect::<Vec<_>>(),
            vec![stale]
        );
        assert_eq!(expire_due(&journal, 4_000), Some(5_000));
        assert_eq!(
            journal.attempt(torn).unwrap().status,
            AttemptStatus::ApprovalExpired
        );
        assert_eq!(expire_due(&journal, 6_000), None);
        assert!(pending(&journal).is_empty());
        for (attempt, status) in [
            (torn, AttemptStatus::ApprovalExpired),
            (stale, AttemptStatus::ApprovalExpired),
            (approved, AttemptStatus::Unresolved),
        ] {
            assert_eq!(
                journal.attempt(attempt).unwrap().status,
                status,
                "{attempt}"
            );
        }
        // Neither expired order can be approved any more.
        let decider = Decider {
            by: "owner".into(),
            via: "cli".into(),
            note: None,
        };
        for attempt in [torn, stale, approved] {
            let refused = deny(&journal, attempt, None, &decider).unwrap_err();
            assert_eq!(refused.code(), ErrorCode::ApprovalNotPending);
        }
    }
}
