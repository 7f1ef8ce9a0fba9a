//! Keeps the local CPGW session warm and tracks its state.
//!
//! Every `tickle_interval_seconds`: `POST /tickle` (CPGW drops an idle session after about six
//! minutes), then `POST /iserver/auth/status`. When CPGW is connected but not authenticated it
//! asks `ssodh/init` once per round to reopen the brokerage session. It never sends credentials
//! and never opens a browser: if nobody is logged in, the state says `login_required` and a
//! person has to act.

use super::broker_state::BrokerState;
use super::client::CpgwClient;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One keep-alive round; returns the broker state it observed.
pub async fn keepalive_round(client: &CpgwClient) -> BrokerState {
    // The tickle's own answer is not trusted for the state: auth/status is the reference.
    let _ = client.tickle().await;
    let status = client.auth_status().await;
    if let Ok(current) = &status
        && current.connected
        && !current.authenticated
    {
        // Reopening the brokerage session needs no credentials; a logged-out CPGW stays
        // logged out.
        let _ = client.ssodh_init().await;
        let after = client.auth_status().await;
        return BrokerState::from_auth(&after);
    }
    BrokerState::from_auth(&status)
}

/// Publishes `state` if it differs from the current value; true if it changed.
pub fn publish(sender: &watch::Sender<BrokerState>, state: BrokerState) -> bool {
    sender.send_if_modified(|current| {
        if *current == state {
            false
        } else {
            *current = state;
            true
        }
    })
}

/// Runs rounds every `interval` until `shutdown`, publishing the broker state.
pub async fn run_keepalive(
    client: CpgwClient,
    interval: Duration,
    sender: watch::Sender<BrokerState>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let state = tokio::select! {
            _ = shutdown.cancelled() => return,
            state = keepalive_round(&client) => state,
        };
        if publish(&sender, state) {
            tracing::info!(
                broker_state = state.as_str(),
                "local Client Portal Gateway state changed"
            );
        }
    }
}
