//! Keeps the local CPGW session warm and tracks its state.
//!
//! Every `tickle_interval_seconds`: `POST /tickle` (CPGW drops an idle session after about six
//! minutes), then `POST /iserver/auth/status`. When CPGW is connected but not authenticated it
//! asks `ssodh/init` at most once per round to reopen the brokerage session (an HTTP 500 is
//! logged and the next round tries again). It never sends credentials and never opens a
//! browser: if nobody is logged in, the state says `login_required` and a person has to act.
//! With `competing: true` the state is `competing` and the sidecar does not fight for the
//! session beyond that one attempt per round.
//!
//! Every state change is published on the broker watch channel (the relay connection pushes it
//! to the gateway as `Frame::SidecarStatus`). The first round that finds the session gone
//! raises one alert ([`AlertSink`]); nothing more until the session is back (logged once), so
//! one outage gives one alert.
//!
//! Each round also records the `auth/status` it saw in the [`SessionMonitor`], which gate f
//! uses instead of its own `auth/status` call while the observation is fresh.

use super::broker_state::BrokerState;
use super::client::{CpgwClient, CpgwError};
use super::types::AuthStatus;
use crate::alerts::AlertSink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The last `auth/status` the sidecar saw, and when.
#[derive(Debug, Default)]
pub struct SessionMonitor {
    last: Mutex<Option<(Instant, AuthStatus)>>,
    /// The last keep-alive round sent a request that got no answer (timed out, or the
    /// connection broke or was refused): CPGW may still have it queued.
    unanswered: AtomicBool,
    /// Held by a call that checks the session live (gate f), so calls that find the last
    /// status stale at the same moment share that one `auth/status` instead of each sending
    /// one (a burst that used up the reads' pacing budget and stalled every call behind it).
    pub live_check: tokio::sync::Mutex<()>,
}

impl SessionMonitor {
    pub fn new() -> SessionMonitor {
        SessionMonitor::default()
    }

    /// Records an answer (errors forget the last one).
    pub fn record(&self, result: &Result<AuthStatus, CpgwError>) {
        if let Ok(mut last) = self.last.lock() {
            *last = result.as_ref().ok().map(|status| (Instant::now(), *status));
        }
    }

    /// The last status if it is younger than `max_age`.
    pub fn fresh(&self, max_age: Duration) -> Option<AuthStatus> {
        let last = self.last.lock().ok()?;
        let (at, status) = (*last)?;
        (at.elapsed() < max_age).then_some(status)
    }

    /// Whether the last keep-alive round went without an answer from CPGW.
    pub fn last_round_unanswered(&self) -> bool {
        self.unanswered.load(Ordering::SeqCst)
    }
}

/// True when a request got no answer: it may still be queued at CPGW (or never reached it).
fn no_answer<T>(result: &Result<T, CpgwError>) -> bool {
    matches!(result, Err(CpgwError::Timeout | CpgwError::Unreachable))
}

/// What the keep-alive needs.
#[derive(Clone)]
pub struct Keepalive {
    pub client: CpgwClient,
    pub interval: Duration,
    pub broker: watch::Sender<BrokerState>,
    pub monitor: Arc<SessionMonitor>,
    pub alerts: Arc<AlertSink>,
}

/// Outage bookkeeping across rounds.
#[derive(Debug, Default)]
pub struct OutageTracker {
    /// An alert was raised for the current outage.
    in_outage: bool,
}

/// One keep-alive round; returns the broker state it observed. `monitor` records the final
/// `auth/status`.
pub async fn keepalive_round(client: &CpgwClient, monitor: &SessionMonitor) -> BrokerState {
    // No tickle after a round CPGW did not answer: its tickle may still be queued there (a
    // stalled CPGW works through its backlog at once when it resumes), and two tickles within a
    // second trip IBKR's one-per-second limit, whose 429 holds every request back for 15
    // minutes, exits included. The auth/status below keeps the session active all the same.
    let mut unanswered = false;
    if !monitor.last_round_unanswered() {
        // The tickle's own answer is not trusted for the state: auth/status is the reference.
        unanswered |= no_answer(&client.tickle().await);
    }
    let mut status = client.auth_status().await;
    unanswered |= no_answer(&status);
    if let Ok(current) = &status
        && current.connected
        && !current.authenticated
    {
        // Reopening the brokerage session needs no credentials; a logged-out CPGW stays
        // logged out. One attempt per round, also when another session competes.
        match client.ssodh_init().await {
            Ok(_) => tracing::info!("asked CPGW to reopen the brokerage session (ssodh/init)"),
            Err(error) => {
                tracing::warn!(%error, "ssodh/init failed; trying again next round")
            }
        }
        status = client.auth_status().await;
        unanswered |= no_answer(&status);
    }
    monitor.record(&status);
    monitor.unanswered.store(unanswered, Ordering::SeqCst);
    BrokerState::from_auth(&status)
}

/// Prepares a brokerage session that just became ready, in the background: primes its
/// `/iserver` and `/portfolio` endpoints, and sends the pre-flight reads IBKR documents for the
/// orders list and the executions (their first answer in a session is empty while they fill).
/// Without it, the first reconcile of a session would read a false-empty list. Every request
/// is paced like any other; failures only mean the warm-up happens on first use instead.
pub async fn warm_up_session(client: &CpgwClient) {
    let account = match client.accounts().await {
        Ok(reply) => reply.active_account().map(str::to_string),
        Err(error) => {
            tracing::debug!(%error, "session warm-up: accounts query failed");
            return;
        }
    };
    if let Err(error) = client.prime_portfolio().await {
        tracing::debug!(%error, "session warm-up: portfolio accounts query failed");
    }
    if let Some(account) = account
        && let Err(error) = client.live_orders_fresh(&account).await
    {
        tracing::debug!(%error, "session warm-up: orders list pre-flight failed");
    }
    if let Err(error) = client.trades(1).await {
        tracing::debug!(%error, "session warm-up: executions pre-flight failed");
    }
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

/// The alert text for a state that needs a person, or `None`. No account data.
pub fn alert_text(state: BrokerState, label: &str, location: &str) -> Option<String> {
    match state {
        BrokerState::LoginRequired => Some(format!(
            "IBKR session needs a manual login on {label}: open {location} in a browser on that \
             laptop and log in."
        )),
        BrokerState::Competing => Some(format!(
            "IBKR session on {label} is held by another login (TWS, mobile app or another \
             Client Portal session): close it, or log in again at {location}."
        )),
        BrokerState::Unreachable => Some(format!(
            "IBKR Client Portal Gateway on {label} does not answer at {location}: start it."
        )),
        BrokerState::RateLimited => Some(format!(
            "IBKR answered 'too many requests' to {label}: every request to its Client Portal \
             Gateway is held back for up to 15 minutes, exits and cancels included. Check that \
             no other program on that laptop calls {location} in a loop."
        )),
        BrokerState::Ready | BrokerState::Unknown => None,
    }
}

impl OutageTracker {
    /// Applies one observed state: alerts on the first non-ready state of an outage, logs the
    /// recovery once.
    pub async fn observe(&mut self, state: BrokerState, alerts: &AlertSink, location: &str) {
        match state {
            BrokerState::Ready => {
                if self.in_outage {
                    self.in_outage = false;
                    tracing::info!("IBKR session is back; broker tools can run again");
                }
            }
            BrokerState::Unknown => {}
            other => {
                if !self.in_outage {
                    self.in_outage = true;
                    if let Some(text) = alert_text(other, alerts.label(), location) {
                        alerts.raise(&text).await;
                    }
                }
            }
        }
    }

    pub fn in_outage(&self) -> bool {
        self.in_outage
    }
}

/// Runs rounds every `interval` until `shutdown`, publishing the broker state.
pub async fn run_keepalive(keepalive: Keepalive, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(keepalive.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let location = keepalive.client.portal_location();
    let mut outage = OutageTracker::default();
    // Session warm-ups in flight: dropped (and so aborted) with this task.
    let mut warm_ups = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let state = tokio::select! {
            _ = shutdown.cancelled() => return,
            state = keepalive_round(&keepalive.client, &keepalive.monitor) => state,
        };
        if publish(&keepalive.broker, state) {
            tracing::info!(
                broker_state = state.as_str(),
                "local Client Portal Gateway state changed"
            );
            if state == BrokerState::Ready {
                let client = keepalive.client.clone();
                while warm_ups.try_join_next().is_some() {}
                warm_ups.spawn(async move { warm_up_session(&client).await });
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = outage.observe(state, &keepalive.alerts, &location) => {}
        }
    }
}
