//! Agents in the console: the "Agents" section and its actions. Requests waiting for the
//! owner are listed without their confirmation codes: the owner types the code the agent's
//! sign-in page shows, as with `ibkr-agent sidecar agents approve CODE`, so a request the owner
//! did not open a page for cannot be approved by a click. Connected agents show their scopes
//! and last use, each with Revoke. The server has already checked Host, Origin, session and
//! CSRF token before a handler runs. See [`crate::agents`].

use super::pages::{FormContext, action_form};
use super::server::{ConsoleState, OwnerForm, done, refusal};
use super::view::ConsoleView;
use crate::agents::{AgentRecord, AgentStatus};
use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use maud::{Markup, html};

/// The first 12 characters of an agent id.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The "Agents" section's content.
pub fn agents_section(view: &ConsoleView, form: &FormContext<'_>) -> Markup {
    let now_ms = view.now_unix.saturating_mul(1000);
    let pending: Vec<&AgentRecord> = view
        .agents
        .iter()
        .filter(|agent| agent.status == AgentStatus::Pending)
        .collect();
    let connected: Vec<&AgentRecord> = view
        .agents
        .iter()
        .filter(|agent| agent.status == AgentStatus::Approved)
        .collect();
    // Every scope some waiting request asks for, once, in catalog order.
    let asked: Vec<&str> = protocol::catalog::scopes::ALL
        .iter()
        .copied()
        .filter(|scope| {
            pending
                .iter()
                .any(|agent| agent.requested_scopes.iter().any(|s| s == scope))
        })
        .collect();
    html! {
        @if !pending.is_empty() {
            p.banner.warn #agents-banner {
                strong { "An agent asks to connect. " }
                "Approve it only if you opened its sign-in page: type the code that page shows."
            }
            @for agent in &pending {
                div.approval id={ "agent-request-" (short(&agent.id)) } {
                    strong { (agent.client_name) }
                    @if !agent.client_verified { " " span.muted { "(name not verified)" } }
                    p.muted {
                        "client " code { (agent.client_id) } " · redirects to " code { (agent.redirect_uri) }
                        " · asks for " (agent.requested_scopes.join(" "))
                        " · expires in " ((agent.expires_at_ms - now_ms).max(0) / 1000) " s"
                    }
                }
            }
            div.approval-actions {
                (action_form(form, "/agents/approve", "decide", html! {
                    input type="text" name="code" id="agent-code" maxlength="12" placeholder="Code from the page, e.g. K7QM-3XW9" autocomplete="off";
                    fieldset.scopes {
                        legend { "Grant at most (untick to grant less; live trading only if a pairing grants it)" }
                        @for scope in &asked {
                            label {
                                input type="checkbox" name={ "grant:" (scope) } id={ "grant-" (scope) } checked;
                                " " code { (scope) }
                            }
                        }
                    }
                    button type="submit" class="go" id="agent-approve" { "Approve" }
                }))
                (action_form(form, "/agents/deny", "decide", html! {
                    input type="text" name="code" id="agent-deny-code" maxlength="12" placeholder="Code to deny" autocomplete="off";
                    button type="submit" class="stop" id="agent-deny" { "Deny" }
                }))
            }
        }
        @if connected.is_empty() {
            p.muted #no-agents { "No agent is connected through the gateway's sign-in." }
        } @else {
            ul.agents #connected-agents {
                @for agent in &connected {
                    li id={ "agent-" (short(&agent.id)) } {
                        strong { (agent.client_name) } " "
                        code { (short(&agent.id)) }
                        span.muted {
                            " · " (agent.granted_scopes.join(" ")) " · "
                            @match agent.last_used_at_ms {
                                Some(at) => { "last used " ((now_ms - at).max(0) / 1000) " s ago" }
                                None => "never used",
                            }
                        }
                        (action_form(form, "/agents/revoke", "decide", html! {
                            input type="hidden" name="id" value=(agent.id);
                            button type="submit" class="stop" id={ "revoke-" (short(&agent.id)) } { "Revoke" }
                        }))
                    }
                }
            }
        }
    }
}

/// The agent actions.
pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/agents/approve", post(approve))
        .route("/agents/deny", post(deny))
        .route("/agents/revoke", post(revoke))
}

fn by() -> String {
    format!("{} (console)", crate::owner::current_user())
}

/// Runs one owner action on the running daemon's state store; back to the console, or the
/// refusal.
fn act(
    state: &ConsoleState,
    action: impl FnOnce(
        &crate::state::StateStore,
        i64,
    ) -> Result<AgentRecord, crate::error::SidecarError>,
) -> Response {
    let daemon = match state.daemon() {
        Ok(daemon) => daemon,
        Err(code) => return refusal(code),
    };
    match action(&daemon.store, crate::trading::now_ms()) {
        Ok(_) => done(state),
        Err(error) => refusal(error.code()),
    }
}

async fn approve(
    State(state): State<ConsoleState>,
    Extension(form): Extension<OwnerForm>,
) -> Response {
    let code = form.field("code").unwrap_or_default();
    let ticked: Vec<String> = protocol::catalog::scopes::ALL
        .iter()
        .filter(|scope| form.field(&format!("grant:{scope}")).is_some())
        .map(|scope| scope.to_string())
        .collect();
    act(&state, |store, now| {
        crate::agents::approve_at_most(store, code, &ticked, &by(), now)
    })
}

async fn deny(
    State(state): State<ConsoleState>,
    Extension(form): Extension<OwnerForm>,
) -> Response {
    let code = form.field("code").unwrap_or_default();
    act(&state, |store, now| {
        crate::agents::deny(store, code, &by(), now)
    })
}

async fn revoke(
    State(state): State<ConsoleState>,
    Extension(form): Extension<OwnerForm>,
) -> Response {
    let id = form.field("id").unwrap_or_default();
    act(&state, |store, now| {
        crate::agents::revoke(store, id, &by(), now)
    })
}
