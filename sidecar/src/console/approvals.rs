//! Human approval of orders in the console: the "Pending approvals" section and its actions.
//!
//! For now no order waits for approval. Where approvals plug in:
//! - the data: add it to [`super::view::ConsoleView`] in `view::gather`;
//! - the section: [`pending_approvals_section`] renders it, with Approve/Deny buttons made by
//!   [`super::pages::action_form`] (it adds the session's CSRF token);
//! - the actions: [`routes`] adds `POST` routes whose handlers take the checked
//!   [`super::server::OwnerForm`] (Host, Origin, session and CSRF already verified by the
//!   server for every POST), reach the daemon with `ConsoleState::daemon`, and answer
//!   [`super::server::done`] (a 303 back to the page, after telling every open page to
//!   refresh). Anything else that changes what the page shows calls
//!   [`super::Activity::notify`] on the daemon's `activity`.

use super::pages::FormContext;
use super::server::ConsoleState;
use super::view::ConsoleView;
use axum::Router;
use maud::{Markup, html};

/// The "Pending approvals" section's content.
pub fn pending_approvals_section(_view: &ConsoleView, _form: &FormContext<'_>) -> Markup {
    html! {
        p.muted #no-approvals { "No order waits for your approval." }
    }
}

/// The approval actions (none yet).
pub fn routes() -> Router<ConsoleState> {
    Router::new()
}
