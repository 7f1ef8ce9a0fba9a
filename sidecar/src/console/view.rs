//! Everything one console page shows, gathered from the daemon at the moment of the request
//! into plain data ([`ConsoleView`]) that `pages` renders. Nothing secret is copied in: no
//! key material, no cookies, no tokens, no call arguments.

use super::events::{CallRecord, RelayLive};
use crate::clock::now_unix_seconds;
use crate::context::DaemonContext;
use crate::cpgw::BrokerState;
use crate::cpgw::types::{TradingMode, trading_mode};
use crate::state::{PairingRecord, RelayStatusRecord, TradingPause};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::watch;

/// Order attempts shown.
const RECENT_ORDERS: usize = 20;

/// How long a page waits for CPGW's account answer before it shows the account as unknown.
const ACCOUNT_WAIT: Duration = Duration::from_secs(2);

/// One page's worth of state.
#[derive(Clone, Debug)]
pub struct ConsoleView {
    pub sidecar_id: String,
    pub display_name: String,
    pub sidecar_fingerprint: String,
    pub relay: RelayView,
    pub broker: BrokerView,
    pub pairings: Vec<PairingRecord>,
    /// [`crate::trading::posture`] for this laptop (live allowed only if a pairing grants
    /// `ibkr:orders:live` locally).
    pub posture: Value,
    pub pause: Option<TradingPause>,
    pub calls: Vec<CallRecord>,
    pub orders: Vec<OrderRow>,
    /// Orders waiting for the owner's approval, oldest first.
    pub approvals: Vec<crate::approvals::PendingApproval>,
    /// Agent connections of the gateway's built-in sign-in, newest first.
    pub agents: Vec<crate::agents::AgentRecord>,
    /// What could not be read (the state store), said on the page instead of a blank.
    pub problems: Vec<String>,
    pub now_unix: i64,
}

#[derive(Clone, Debug)]
pub struct RelayView {
    pub url: Option<String>,
    pub gateway_fingerprint: Option<String>,
    pub live: RelayLive,
    /// The relay loop's last record (why it is not connected, with a code when a person must
    /// act).
    pub last_record: Option<RelayStatusRecord>,
}

impl RelayView {
    pub fn connected(&self) -> bool {
        self.live.heartbeat_age().is_some()
    }
}

#[derive(Clone, Debug)]
pub struct BrokerView {
    pub state: BrokerState,
    /// Where the owner logs in to CPGW (`https://localhost:5000` by default).
    pub login_url: String,
    pub next_step: Option<String>,
    pub account: Option<AccountView>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountView {
    pub id: String,
    pub mode: TradingMode,
}

/// One order attempt from the trade journal.
#[derive(Clone, Debug)]
pub struct OrderRow {
    pub at_ms: i64,
    pub tool: String,
    pub symbol: String,
    pub side: String,
    /// Quantity, or the cash amount with its currency sign.
    pub size: String,
    pub status: &'static str,
    pub estimated_value: Option<String>,
    pub dry_run: bool,
}

/// The traded account, asked once per brokerage session (CPGW paces `/iserver/accounts`
/// hard, and a page refresh must never cost a broker request).
pub struct AccountProbe {
    cached: tokio::sync::Mutex<(Option<AccountView>, watch::Receiver<BrokerState>)>,
}

impl AccountProbe {
    pub fn new(broker: watch::Receiver<BrokerState>) -> AccountProbe {
        AccountProbe {
            cached: tokio::sync::Mutex::new((None, broker)),
        }
    }

    async fn account(&self, context: &DaemonContext) -> Option<AccountView> {
        let mut guard = self.cached.lock().await;
        let (cached, broker) = &mut *guard;
        if broker.has_changed().unwrap_or(true) {
            broker.mark_unchanged();
            *cached = None;
        }
        if *broker.borrow() != BrokerState::Ready {
            return None;
        }
        if cached.is_none() {
            let reply = tokio::time::timeout(ACCOUNT_WAIT, context.cpgw.accounts()).await;
            *cached = match reply {
                Ok(Ok(reply)) => reply.active_account().map(|id| AccountView {
                    id: id.to_string(),
                    mode: trading_mode(reply.is_paper, id),
                }),
                _ => None,
            };
        }
        cached.clone()
    }
}

/// Gathers the view. Store reads are local SQLite reads, as on every relayed call.
pub(crate) async fn gather(context: &DaemonContext, probe: &AccountProbe) -> ConsoleView {
    let mut problems = Vec::new();
    let mut note = |what: &str, error: crate::error::SidecarError| {
        problems.push(format!("{what}: {error}"));
    };
    let now = now_unix_seconds();
    let sidecar_id = context.identity.sidecar_id.clone();
    let pairings: Vec<PairingRecord> = match context.store.pairings() {
        Ok(all) => all
            .into_iter()
            .filter(|record| record.sidecar_id == sidecar_id)
            .collect(),
        Err(error) => {
            note("pairings", error);
            Vec::new()
        }
    };
    let last_record = context
        .store
        .relay_status(&sidecar_id)
        .unwrap_or_else(|error| {
            note("relay status", error);
            None
        });
    let pause = context.store.trading_pause().unwrap_or_else(|error| {
        note("trading pause", error);
        // Shown as paused: the order path refuses on an unreadable store too.
        Some(TradingPause {
            paused_at: now,
            reason: "the state store could not be read".into(),
        })
    });
    let agents =
        crate::agents::list(&context.store, now.saturating_mul(1000)).unwrap_or_else(|error| {
            note("agents", error);
            Vec::new()
        });
    let dialed = context
        .store
        .dialable_pairing(&sidecar_id, now)
        .ok()
        .flatten();
    let state = *context.broker.borrow();
    let login_url = context.cpgw.portal_location();
    let account = probe.account(context).await;
    let mode = account.as_ref().map_or(TradingMode::Unknown, |a| a.mode);
    let live_granted = pairings.iter().any(|record| {
        record.is_active(now)
            && record
                .local_scopes
                .contains(protocol::catalog::scopes::ORDERS_LIVE)
    });
    let posture = crate::trading::posture(
        context.orders.as_ref(),
        state == BrokerState::Ready,
        mode == TradingMode::Paper,
        mode == TradingMode::Live,
        live_granted,
        pause.as_ref(),
    );
    ConsoleView {
        display_name: context.identity.display_name.clone(),
        sidecar_fingerprint: context.identity.fingerprint(),
        relay: RelayView {
            url: context.config.relay_url().map(str::to_string),
            gateway_fingerprint: dialed.and_then(|record| record.gateway_fingerprint()),
            live: context.activity.relay(),
            last_record,
        },
        broker: BrokerView {
            state,
            next_step: state.next_step(&login_url),
            login_url,
            account,
        },
        sidecar_id,
        pairings,
        posture,
        pause,
        calls: context.activity.recent_calls(),
        orders: recent_orders(context),
        approvals: context
            .orders
            .as_ref()
            .map(|runtime| crate::approvals::pending(&runtime.journal))
            .unwrap_or_default(),
        agents,
        problems,
        now_unix: now,
    }
}

fn recent_orders(context: &DaemonContext) -> Vec<OrderRow> {
    let Some(orders) = context.orders.as_ref() else {
        return Vec::new();
    };
    orders
        .journal
        .recent_attempts(RECENT_ORDERS)
        .iter()
        .map(|attempt| {
            let intent = &attempt.intent;
            let text = |field: &str| {
                intent
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            // The first leg (the entry of a bracket) says how much.
            let leg = intent.get("legs").and_then(|legs| legs.get(0));
            let leg_text = |field: &str| leg.and_then(|leg| leg.get(field)).and_then(Value::as_str);
            let size = match (leg_text("cash_amount"), leg_text("quantity")) {
                (Some(cash), _) => format!("${cash}"),
                (None, Some(quantity)) => quantity.to_string(),
                (None, None) => "—".to_string(),
            };
            OrderRow {
                at_ms: attempt.at_ms,
                tool: attempt.tool().unwrap_or_default().to_string(),
                symbol: text("symbol"),
                side: text("side"),
                size,
                status: attempt.status.as_str(),
                estimated_value: intent
                    .get("notional")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                dry_run: attempt.dry_run(),
            }
        })
        .collect()
}
