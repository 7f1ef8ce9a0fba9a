//! Settling what is not known: attempts whose outcome is unknown (a 503 after sending, a
//! timeout, a sidecar stopped mid-send).
//!
//! An attempt is taken as placed only on positive evidence: its order id answers
//! `order/status`, an execution in `/iserver/account/trades` carries its client order id, or a
//! row of the orders list does. Absence proves nothing (IBKR's lists need a pre-flight, are
//! session scoped, and have been seen false-empty), so an attempt nobody can find stays
//! unresolved: it keeps counting toward the daily cap and keeps blocking its instrument and
//! side. What the broker cannot prove, the laptop owner settles with
//! `ibkr-agent sidecar orders settle`, which is journaled with who, when and how.
//!
//! The lists are read once per reconcile, whatever the number of attempts, and the pacer keeps
//! every read within IBKR's limits.

use super::facts::account_identity;
use super::{now_ms, runtime};
use crate::cpgw::pacer::{Endpoint, Lane};
use crate::cpgw::types::JsonText;
use crate::tools::context::{ToolContext, ToolResult};
use crate::trading::OrdersRuntime;
use crate::trading::attempts::Attempt;
use serde_json::{Value, json};

/// How many days of executions are searched (IBKR: today and up to six before).
const TRADE_DAYS: u8 = 7;

/// What was found for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// Placed: the broker's order ids, and where they were seen.
    Found {
        order_ids: Vec<String>,
        source: &'static str,
    },
    /// Nothing proves it either way yet.
    NotFound,
}

/// How many times the lists are read for one reconcile, at most (IBKR paces them at one read
/// per 5 s; the sidecar reads them one per 6 s).
const MAX_LIST_ROUNDS: usize = 3;

/// Looks for each attempt at the broker and journals every one found as `reconciled`
/// (placed). The lists are read again, at the pacer's rhythm, while something is missing and
/// the call's deadline leaves room for another round: a session's first reads of them are empty
/// while they fill (IBKR's pre-flight). Returns what was found, in the order given.
pub(crate) async fn corroborate(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    account: &str,
    attempts: &[Attempt],
) -> Vec<(u64, Evidence)> {
    let mut results: Vec<(u64, Evidence)> = attempts
        .iter()
        .map(|attempt| (attempt.id, Evidence::NotFound))
        .collect();
    let missing = |results: &[(u64, Evidence)]| {
        results
            .iter()
            .any(|(_, evidence)| *evidence == Evidence::NotFound)
    };
    // Every broker read is bounded by the call's deadline: past it, what was found so far is
    // answered and the rest stays unresolved (a late answer would reach nobody, and a reconcile
    // that times out proves nothing to the agent).
    let deadline = context.deadline;
    // 1. Order ids the broker gave before the outcome was lost (rare: an ack then a failure).
    'ids: for (attempt, result) in attempts.iter().zip(results.iter_mut()) {
        for id in attempt.order_ids() {
            let status =
                tokio::time::timeout_at(deadline, context.cpgw.order_status(&id, Lane::Trading));
            let Ok(status) = status.await else {
                break 'ids;
            };
            if let Ok(Some(_)) = status {
                *result = (
                    attempt.id,
                    Evidence::Found {
                        order_ids: vec![id],
                        source: "order_status",
                    },
                );
                break;
            }
        }
    }
    let round_length = Endpoint::OrdersList.min_gap();
    for round in 0..MAX_LIST_ROUNDS {
        if !missing(&results) {
            break;
        }
        if round > 0 && tokio::time::Instant::now() + round_length >= deadline {
            break;
        }
        // 2. Executions, by client order id.
        let Ok(trades) = tokio::time::timeout_at(deadline, context.cpgw.trades(TRADE_DAYS)).await
        else {
            break;
        };
        if let Ok(trades) = trades {
            match_rows(
                attempts,
                &mut results,
                trades
                    .iter()
                    .map(|row| (row.order_ref.as_deref(), row.order_id.as_ref())),
                "executions",
            );
        }
        // 3. The orders list, by client order id, read after the attempt.
        if !missing(&results) {
            break;
        }
        let Ok(list) =
            tokio::time::timeout_at(deadline, context.cpgw.live_orders_fresh(account)).await
        else {
            break;
        };
        if let Ok(list) = list {
            match_rows(
                attempts,
                &mut results,
                list.orders
                    .iter()
                    .map(|row| (row.order_ref.as_deref(), row.order_id.as_ref())),
                "orders_list",
            );
        }
    }
    for (id, evidence) in &results {
        if let Evidence::Found { order_ids, source } = evidence {
            let data = json!({"placed": true, "order_ids": order_ids, "evidence": source});
            if let Err(error) = runtime.journal.outcome(*id, "reconciled", data, now_ms()) {
                tracing::error!(%error, attempt = id, "could not journal a reconciliation");
            }
        }
    }
    results
}

/// Marks as found every missing attempt whose client order ids a broker row carries.
fn match_rows<'a>(
    attempts: &[Attempt],
    results: &mut [(u64, Evidence)],
    rows: impl Iterator<Item = (Option<&'a str>, Option<&'a JsonText>)> + Clone,
    source: &'static str,
) {
    for (attempt, result) in attempts.iter().zip(results.iter_mut()) {
        if result.1 != Evidence::NotFound {
            continue;
        }
        let coids = attempt.coids();
        let ids: Vec<String> = rows
            .clone()
            .filter(|(order_ref, _)| order_ref.is_some_and(|r| coids.iter().any(|c| c == r)))
            .filter_map(|(_, order_id)| order_id.map(|id| id.as_str().to_string()))
            .collect();
        if !ids.is_empty() {
            *result = (
                attempt.id,
                Evidence::Found {
                    order_ids: dedup(ids),
                    source,
                },
            );
        }
    }
}

fn dedup(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids.dedup();
    ids
}

/// `ibkr_reconcile_pending`.
pub async fn reconcile_pending(context: &ToolContext<'_>) -> ToolResult {
    let runtime = runtime(context)?;
    let pending = runtime.journal.pending();
    if pending.is_empty() {
        return Ok(json!({"reconciled": [], "still_pending": 0}));
    }
    let identity = account_identity(context).await?;
    // Only attempts of the account CPGW serves now can be looked up there.
    let (here, elsewhere): (Vec<Attempt>, Vec<Attempt>) = pending
        .into_iter()
        .partition(|attempt| attempt.account().is_none_or(|a| a == identity.account));
    let found = corroborate(runtime, context, &identity.account, &here).await;
    let mut results: Vec<Value> = found
        .into_iter()
        .map(|(attempt, evidence)| match evidence {
            Evidence::Found { order_ids, source } => json!({
                "attempt_id": attempt, "placed": true, "order_ids": order_ids,
                "evidence": source,
            }),
            Evidence::NotFound => json!({
                "attempt_id": attempt,
                "placed": Value::Null,
                "note": "Not found at the broker yet, which does not prove it was not placed: it \
                         stays unresolved, counted and blocking. Try again in a minute; if the \
                         broker never shows it, the laptop owner settles it.",
                "owner_command": format!(
                    "ibkr-agent sidecar orders settle --attempt {attempt} --placed|--not-placed"
                ),
            }),
        })
        .collect();
    for attempt in elsewhere {
        results.push(json!({
            "attempt_id": attempt.id,
            "placed": Value::Null,
            "note": "Placed for another account than the one CPGW serves now; select that \
                     account in CPGW to look it up.",
        }));
    }
    Ok(json!({
        "reconciled": results,
        "still_pending": runtime.journal.pending().len(),
    }))
}
