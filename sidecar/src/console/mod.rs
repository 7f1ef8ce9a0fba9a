//! The laptop owner's console: a web page the daemon serves on loopback, opened with
//! `ibkr-agent sidecar console` (docs/console.md). It shows the relay, the Client Portal
//! login, the pairings and their local grants, the trading posture, recent tool calls and
//! order attempts, live; and it lets the owner pause and resume trading, approve orders, and
//! approve, deny and revoke agents.
//!
//! Map:
//! - [`config`]: the `console:` section (loopback only).
//! - [`events`]: [`Activity`], the daemon's recent activity in memory (relay connection,
//!   recent calls) and the change signal the page's live stream waits on. The relay and the
//!   request path record into it; it knows nothing of HTTP.
//! - [`security`]: the login secret, sessions, CSRF tokens, Host/Origin/fetch-metadata and
//!   cookie checks, as pure functions.
//! - [`server`]: the axum app, its guard and hardening middleware, pages, events, actions.
//! - [`view`]: gathers one page's data from the daemon; [`pages`]: renders it (maud).
//! - [`approvals`]: the "Pending approvals" section and its actions.
//! - [`agents`]: the "Agents" section (sign-in requests approved by typing the page's code,
//!   connected agents with Revoke) and its actions.
//! - [`file`]: `console.json` and the opener page for the CLI; [`cli`]: `sidecar console`.

pub mod agents;
pub mod approvals;
pub mod cli;
pub mod config;
pub mod events;
pub mod file;
pub mod pages;
pub mod security;
pub mod server;
pub mod view;

pub use config::ConsoleSection;
pub use events::Activity;

use crate::context::DaemonContext;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Starts the console for a daemon: binds, publishes `console.json`, serves until `stop`.
/// The task (and with it the published files) dies with the returned handle. A console that
/// cannot start is logged and left out: trading and the command line work without it.
pub(crate) async fn start(
    context: &Arc<DaemonContext>,
    stop: CancellationToken,
) -> Option<AbortOnDropHandle<()>> {
    use axum::serve::ListenerExt;
    let section = &context.config.console;
    if !section.enabled {
        tracing::info!("the console is off (console.enabled: false)");
        return None;
    }
    let address = match section.listen_addr() {
        Ok(address) => address,
        Err(error) => {
            tracing::error!(code = %error.code(), %error, "console not started");
            return None;
        }
    };
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%address, kind = ?error.kind(), "console not started: cannot listen there; change console.listen (127.0.0.1:0 takes any free port)");
            return None;
        }
    };
    let bound = match listener.local_addr() {
        Ok(bound) => bound,
        Err(error) => {
            tracing::error!(kind = ?error.kind(), "console not started");
            return None;
        }
    };
    let own = security::OwnAddress::new(bound);
    let gate = Arc::new(security::Gate::new());
    let published = match file::publish(context.store.dir(), own.base_url(), gate.login_secret()) {
        Ok(published) => published,
        Err(error) => {
            tracing::error!(kind = ?error.kind(), "console not started: cannot write console.json");
            return None;
        }
    };
    tracing::info!(
        url = %format!("{}/", own.base_url()),
        "console listening on loopback; open it with `ibkr-agent sidecar console`"
    );
    let state = server::ConsoleState::new(context, gate, own, stop);
    // Small responses written in two parts would wait out Nagle's delay on loopback.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    Some(AbortOnDropHandle::new(tokio::spawn(async move {
        let _published = published;
        server::serve(listener, state).await;
    })))
}
