//! Faults on the laptop's own network, between the sidecar and CPGW: CPGW down, hung, slow,
//! or resetting connections before or after an order reached it. The sidecar talks to the
//! simulator through the fault proxy (`e2e::fault_proxy`), and every test checks both what the
//! agent hears (code, retryable) and how many orders the broker holds.

use crate::trading_support::{
    TRADING_SCOPES, call, code, live_trading, ok, trading_system_granting,
};
use e2e::fault_proxy::ProxyMode;
use e2e::system::{System, SystemOptions};
use ibkr_agent::trading::attempts::AttemptStatus;
use ibkr_agent::trading::journal::{JOURNAL_FILE, read_attempts};
use rmcp::model::CallToolResult;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// The sidecar's CPGW request timeout in these tests (the product's default is 10 s).
const CPGW_TIMEOUT_SECONDS: u64 = 2;

/// A trading system (live orders on the paper account) whose sidecar reaches CPGW through the
/// fault proxy, with a short CPGW timeout, warmed up by one quote through the proxy. Quotes are
/// never reused (`quote_max_age_ms: 0`): each read here must reach the broken CPGW.
async fn proxied_system() -> System {
    let system = trading_system_granting(
        SystemOptions {
            trading: live_trading(),
            cpgw_through_proxy: true,
            client_portal_timeout_seconds: Some(CPGW_TIMEOUT_SECONDS),
            quote_max_age_ms: Some(0),
            ..SystemOptions::default()
        },
        TRADING_SCOPES,
    )
    .await;
    let quote = ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    assert!(quote.get("conid").is_some(), "{quote}");
    assert!(system.proxy().unwrap().counters().accepted > 0);
    system
}

fn retryable(result: &CallToolResult) -> bool {
    result.structured_content.as_ref().unwrap()["error"]["retryable"]
        .as_bool()
        .unwrap()
}

/// Every order attempt the journal holds, oldest first, as (status, idempotency key).
fn attempts(system: &System) -> Vec<(AttemptStatus, Option<String>)> {
    read_attempts(&system.sidecar_state_dir().join(JOURNAL_FILE))
        .unwrap()
        .iter()
        .map(|attempt| {
            (
                attempt.status,
                attempt
                    .intent
                    .get("idempotency_key")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            )
        })
        .collect()
}

fn buy(key: &str) -> Value {
    json!({"symbol": "AAPL", "cash_amount": "30", "idempotency_key": key})
}

/// CPGW's process is gone: connections are refused. A read says BROKER_UNREACHABLE (retryable)
/// at once, an order is refused with nothing placed and nothing left unresolved, and once CPGW
/// is back the same calls work, the daemon never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpgw_down_fails_fast_and_retryable_places_nothing_and_recovers_without_a_restart() {
    let system = proxied_system().await;
    let proxy = system.proxy().unwrap();
    proxy.set_mode(ProxyMode::Down).await.unwrap();

    let started = Instant::now();
    let read = call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await;
    assert_eq!(code(&read), "BROKER_UNREACHABLE", "{read:?}");
    assert!(retryable(&read));
    assert!(
        started.elapsed() < Duration::from_secs(CPGW_TIMEOUT_SECONDS),
        "a refused connection is not a timeout: {:?}",
        started.elapsed()
    );

    let order = call(&system, "ibkr_buy", buy("down-1")).await;
    assert_eq!(code(&order), "BROKER_UNREACHABLE", "{order:?}");
    assert!(retryable(&order));
    assert!(system.sim.order_log().is_empty());
    assert!(
        attempts(&system)
            .iter()
            .all(|(status, _)| status.definitely_not_placed()),
        "{:?}",
        attempts(&system)
    );

    proxy.set_mode(ProxyMode::Pass).await.unwrap();
    ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    let placed = ok(&call(&system, "ibkr_buy", buy("down-1")).await);
    assert_eq!(placed["status"], "sent", "{placed}");
    assert_eq!(system.sim.order_log().len(), 1);
    system.shutdown().await;
}

/// CPGW accepts connections and never answers (hung). The read ends with BROKER_UNREACHABLE
/// (retryable) after the sidecar's CPGW timeout, well inside the relay's deadline, instead of
/// hanging until the gateway gives up; once CPGW answers again, so does the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_cpgw_times_out_within_the_relay_deadline() {
    let system = proxied_system().await;
    let proxy = system.proxy().unwrap();
    proxy.set_mode(ProxyMode::Hold).await.unwrap();

    a_quote_times_out_within_bounds(&system).await;
    assert!(
        proxy.counters().held > 0,
        "nothing was held: {:?}",
        proxy.counters()
    );
    proxy.set_mode(ProxyMode::Pass).await.unwrap();
    ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    system.shutdown().await;
}

/// A quote against a CPGW that does not answer in time: BROKER_UNREACHABLE, retryable, and
/// bounded by the sidecar's CPGW timeout (at most two CPGW requests in a row, the session check
/// and the quote, each bounded), well inside the relay's deadline.
async fn a_quote_times_out_within_bounds(system: &System) {
    let started = Instant::now();
    let read = call(system, "ibkr_quote", json!({"symbol": "AAPL"})).await;
    let took = started.elapsed();
    assert_eq!(code(&read), "BROKER_UNREACHABLE", "{read:?}");
    assert!(retryable(&read));
    assert!(
        took < Duration::from_secs(3 * CPGW_TIMEOUT_SECONDS + 2),
        "the read took {took:?}"
    );
}

/// CPGW answers, but slower than the sidecar's CPGW timeout: the read answers BROKER_UNREACHABLE
/// (retryable) within the relay's deadline instead of hanging, and once CPGW is fast again the
/// read works (the late requests it then receives in a burst must not trip IBKR's pacing: the
/// shutdown checks the simulator never answered 429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cpgw_answers_a_timeout_within_the_relay_deadline() {
    let system = proxied_system().await;
    let proxy = system.proxy().unwrap();
    proxy
        .set_mode(ProxyMode::Delay(Duration::from_secs(
            2 * CPGW_TIMEOUT_SECONDS,
        )))
        .await
        .unwrap();

    a_quote_times_out_within_bounds(&system).await;
    proxy.set_mode(ProxyMode::Pass).await.unwrap();
    ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    system.shutdown().await;
}

/// Every connection to CPGW is reset before a byte of the order is forwarded: the order
/// certainly did not land, so the agent hears a definite, retryable failure, the journal holds
/// nothing unresolved, and the same key places the order once CPGW is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_order_is_forwarded_is_definite_and_retryable_and_places_nothing() {
    let system = proxied_system().await;
    let proxy = system.proxy().unwrap();
    proxy
        .set_mode(ProxyMode::ResetBeforeForwarding)
        .await
        .unwrap();

    let order = call(&system, "ibkr_buy", buy("reset-1")).await;
    assert_eq!(code(&order), "BROKER_UNREACHABLE", "{order:?}");
    assert!(retryable(&order));
    assert!(proxy.counters().resets > 0);
    assert!(system.sim.order_log().is_empty());
    assert!(
        attempts(&system)
            .iter()
            .all(|(status, _)| status.definitely_not_placed()),
        "{:?}",
        attempts(&system)
    );

    proxy.set_mode(ProxyMode::Pass).await.unwrap();
    let placed = ok(&call(&system, "ibkr_buy", buy("reset-1")).await);
    assert_eq!(placed["status"], "sent", "{placed}");
    assert_eq!(system.sim.order_log().len(), 1);
    system.shutdown().await;
}

/// The order reached the broker and the connection was reset on its answer. The agent must
/// hear that the outcome is unknown (not "retry"), the journal must keep the attempt
/// unresolved, and a retry with the same key must find the order at the broker and place no
/// second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_the_answer_of_a_landed_order_is_unknown_and_a_retry_places_nothing_more() {
    let system = proxied_system().await;
    let proxy = system.proxy().unwrap();
    let hold = system.sim.hold_order_answers();

    let (first, ()) = tokio::join!(call(&system, "ibkr_buy", buy("lost-1")), async {
        // The order has landed; its answer waits at the simulator.
        hold.wait_held(1).await;
        proxy.set_mode(ProxyMode::ResetOnResponse).await.unwrap();
        system.sim.release_order_answers();
        assert!(proxy.wait_resets(1).await);
    });
    assert_eq!(code(&first), "ORDER_OUTCOME_UNKNOWN", "{first:?}");
    assert!(!retryable(&first), "an unknown outcome must not say retry");
    assert_eq!(system.sim.order_log().len(), 1, "the order landed");
    let journal = attempts(&system);
    let (status, _) = journal
        .iter()
        .find(|(_, key)| key.as_deref() == Some("lost-1"))
        .unwrap();
    assert!(
        !status.placed() && !status.definitely_not_placed(),
        "the journal must keep the outcome open: {journal:?}"
    );

    proxy.set_mode(ProxyMode::Pass).await.unwrap();
    let retry = ok(&call(&system, "ibkr_buy", buy("lost-1")).await);
    assert_eq!(retry["status"], "sent", "{retry}");
    assert_eq!(retry["replayed"], true, "{retry}");
    assert_eq!(
        system.sim.order_log().len(),
        1,
        "the retry placed a second order: {retry}"
    );
    let journal = attempts(&system);
    assert!(
        journal
            .iter()
            .filter(|(_, key)| key.as_deref() == Some("lost-1"))
            .all(|(status, _)| *status == AttemptStatus::ReconciledPlaced),
        "{journal:?}"
    );
    system.shutdown().await;
}

/// The order lands, and its answer comes after the sidecar's CPGW timeout. The agent hears the
/// outcome is unknown; `ibkr_reconcile_pending` then finds the order at the broker, and a retry
/// with the same key answers it without sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_answered_after_the_timeout_is_unknown_then_reconciled_and_never_repeated() {
    let system = proxied_system().await;
    let hold = system.sim.hold_order_answers();

    let started = Instant::now();
    let first = call(&system, "ibkr_buy", buy("late-1")).await;
    assert_eq!(code(&first), "ORDER_OUTCOME_UNKNOWN", "{first:?}");
    assert!(!retryable(&first));
    assert!(
        started.elapsed() < Duration::from_secs(3 * CPGW_TIMEOUT_SECONDS + 5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(system.sim.order_log().len(), 1, "the order landed");
    hold.wait_held(1).await;
    // The broker's answer goes out now, to a request the sidecar gave up on.
    system.sim.release_order_answers();

    let reconciled = ok(&call(&system, "ibkr_reconcile_pending", json!({})).await);
    assert_eq!(reconciled["still_pending"], 0, "{reconciled}");
    assert_eq!(reconciled["reconciled"][0]["placed"], true, "{reconciled}");

    let retry = ok(&call(&system, "ibkr_buy", buy("late-1")).await);
    assert_eq!(retry["status"], "sent", "{retry}");
    assert_eq!(retry["replayed"], true, "{retry}");
    assert_eq!(system.sim.order_log().len(), 1, "no second order: {retry}");
    system.shutdown().await;
}
