//! Human approval of orders in the console: the "Pending approvals" section and its actions.
//!
//! Each waiting order is shown as the CLI's `approvals list` shows it (what, on which account,
//! its value, why it needs approval, when it expires, and the hash the approval is bound to).
//! Approve and Deny post the attempt id and that hash: an order that is not the one on the
//! owner's screen is refused (`APPROVAL_MISMATCH`), and each decision is the journal's single
//! transition from *awaiting approval* (`crate::approvals`). The server has already checked
//! Host, Origin, session and CSRF token before a handler runs.

use super::pages::{FormContext, action_form};
use super::server::{ConsoleState, OwnerForm, done, refusal};
use super::view::ConsoleView;
use crate::approvals::{Decider, PendingApproval};
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use maud::{Markup, html};
use shared_safety::ErrorCode;

/// The "Pending approvals" section's content.
pub fn pending_approvals_section(view: &ConsoleView, form: &FormContext<'_>) -> Markup {
    if view.approvals.is_empty() {
        return html! {
            p.muted #no-approvals { "No order waits for your approval." }
        };
    }
    let now_ms = view.now_unix.saturating_mul(1000);
    html! {
        p.banner.warn #approvals-banner {
            strong {
                @if view.approvals.len() == 1 { "1 order waits for your approval. " }
                @else { (view.approvals.len()) " orders wait for your approval. " }
            }
            "Nothing is sent until you approve; the sidecar checks each again before sending."
        }
        @for approval in &view.approvals {
            (approval_card(approval, now_ms, form))
        }
    }
}

fn approval_card(approval: &PendingApproval, now_ms: i64, form: &FormContext<'_>) -> Markup {
    let id = approval.attempt_id.to_string();
    let left = (approval.expires_at_ms - now_ms).max(0) / 1000;
    let fields = |extra: Markup| {
        html! {
            input type="hidden" name="id" value=(id);
            input type="hidden" name="hash" value=(approval.intent_hash);
            (extra)
        }
    };
    html! {
        div.approval id={ "approval-" (id) } {
            div.approval-what {
                strong { (approval.symbol) } " · " (approval.tool) " · "
                (approval.account_mode) " account " code { (approval.account) }
                ul.legs {
                    @for leg in &approval.legs { li { (leg) } }
                }
                p.muted {
                    "Estimated value: "
                    @match &approval.order_value {
                        Some(value) => { "$" (value) }
                        None => "unknown",
                    }
                    " · why: " (approval.reason)
                    " · expires in " (left) " s · attempt " (id)
                    " · hash " code { (approval.intent_hash) }
                }
            }
            div.approval-actions {
                (action_form(form, "/approvals/approve", "decide", fields(html! {
                    button type="submit" class="go" id={ "approve-" (id) } { "Approve" }
                })))
                (action_form(form, "/approvals/deny", "decide", fields(html! {
                    input type="text" name="note" maxlength="200" placeholder="Why (optional, shown to the agent)" id={ "deny-note-" (id) };
                    button type="submit" class="stop" id={ "deny-" (id) } { "Deny" }
                })))
            }
        }
    }
}

/// The approval actions.
pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/approvals/approve", post(approve))
        .route("/approvals/deny", post(deny))
}

/// The attempt id and hash of a decision form, and the running daemon.
fn decision(
    state: &ConsoleState,
    form: &OwnerForm,
) -> Result<(u64, String, std::sync::Arc<crate::context::DaemonContext>), ErrorCode> {
    let id = form
        .field("id")
        .and_then(|id| id.trim().parse::<u64>().ok())
        .ok_or(ErrorCode::ApprovalNotPending)?;
    let hash = form
        .field("hash")
        .filter(|hash| !hash.is_empty() && hash.len() <= 64)
        .ok_or(ErrorCode::ApprovalMismatch)?;
    Ok((id, hash.to_string(), state.daemon()?))
}

fn decider(note: Option<&str>) -> Decider {
    Decider {
        by: crate::owner::current_user(),
        via: "console".into(),
        note: note
            .map(str::trim)
            .filter(|note| !note.is_empty())
            .map(str::to_string),
    }
}

/// Approves one order: journaled, then checked again and sent by the daemon.
async fn approve(
    State(state): State<ConsoleState>,
    Extension(form): Extension<OwnerForm>,
) -> Response {
    let (id, hash, daemon) = match decision(&state, &form) {
        Ok(decision) => decision,
        Err(code) => return refusal(code),
    };
    match crate::approvals::approve(&daemon, id, Some(&hash), &decider(None)) {
        Ok(_) => done(&state),
        Err(error) => {
            tracing::warn!(attempt = id, code = %error.code(), "console approval refused");
            refusal(error.code())
        }
    }
}

/// Denies one order: journaled; the agent's call answers ORDER_APPROVAL_DENIED.
async fn deny(
    State(state): State<ConsoleState>,
    Extension(form): Extension<OwnerForm>,
) -> Response {
    let (id, hash, daemon) = match decision(&state, &form) {
        Ok(decision) => decision,
        Err(code) => return refusal(code),
    };
    let Some(runtime) = daemon.orders.as_ref() else {
        return refusal(ErrorCode::JournalError);
    };
    match crate::approvals::deny(
        &runtime.journal,
        id,
        Some(&hash),
        &decider(form.field("note")),
    ) {
        Ok(_) => done(&state),
        Err(error) => {
            tracing::warn!(attempt = id, code = %error.code(), "console denial refused");
            refusal(error.code())
        }
    }
}
