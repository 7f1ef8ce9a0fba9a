//! Corrupt state files, one at a time, on either half. A half whose key or store cannot be
//! trusted refuses to start and names the file; a corrupt trade journal refuses every order
//! while reads go on. Nothing is sent on corrupt state, and with the file restored everything
//! works again.

use crate::trading_support::{call, code, live_trading, ok, trading_system};
use serde_json::json;
use std::path::Path;

/// Overwrites `path` with `bytes` (keeping its mode), returning what it held.
fn corrupt(path: &Path, bytes: &[u8]) -> Vec<u8> {
    let saved = std::fs::read(path).unwrap();
    std::fs::write(path, bytes).unwrap();
    saved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_laptop_with_a_corrupt_key_or_store_refuses_to_start_and_names_it() {
    let mut system = trading_system(live_trading()).await;
    system.take_sidecar().unwrap().stop().await;
    let dir = system.sidecar_state_dir().to_path_buf();
    for (file, garbage, expected) in [
        ("identity.key", &b"not a key"[..], "identity.key"),
        (
            "state.db",
            &b"SQLite format 3\0garbage garbage"[..],
            "STATE_STORE_ERROR",
        ),
    ] {
        let path = dir.join(file);
        let saved = corrupt(&path, garbage);
        let refused = match system.start_sidecar().await {
            Ok(()) => panic!("the daemon started with a corrupt {file}"),
            Err(error) => error.to_string(),
        };
        assert!(
            refused.contains(expected),
            "a corrupt {file} is refused by name: {refused}"
        );
        std::fs::write(&path, saved).unwrap();
    }
    assert_eq!(system.sim.order_log().len(), 0);
    system.start_sidecar().await.unwrap();
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_journal_refuses_orders_serves_reads_and_sends_nothing() {
    let mut system = trading_system(live_trading()).await;
    ok(&call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "30", "idempotency_key": "before"}),
    )
    .await);
    system.take_sidecar().unwrap().stop().await;
    let journal = system
        .sidecar_state_dir()
        .join(ibkr_agent::trading::journal::JOURNAL_FILE);
    let saved = std::fs::read(&journal).unwrap();
    let mut flipped = saved.clone();
    // One byte of the recorded order changes: the keyed chain no longer verifies.
    let at = flipped.windows(4).position(|w| w == b"AAPL").unwrap_or(10);
    flipped[at] = b'B';
    std::fs::write(&journal, &flipped).unwrap();

    let started = system.start_sidecar().await;
    if let Err(refused) = &started {
        panic!("reads should still be served on a corrupt journal: {refused}");
    }
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    let refused = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "31", "idempotency_key": "after"}),
    )
    .await;
    assert_eq!(code(&refused), "JOURNAL_ERROR", "{refused:?}");
    assert_eq!(
        system.sim.order_log().len(),
        1,
        "nothing sent on a corrupt journal"
    );

    system.take_sidecar().unwrap().stop().await;
    std::fs::write(&journal, &saved).unwrap();

    system.start_sidecar().await.unwrap();
    ok(&call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "31", "idempotency_key": "after"}),
    )
    .await);
    assert_eq!(system.sim.order_log().len(), 2);
    system.shutdown().await;
}

/// A journal key that is not a key: the chain cannot be checked, so orders are refused the
/// same way. (Its own system: each daemon start primes CPGW's paced endpoints, and IBKR would
/// answer four starts in a few seconds with a 429.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_journal_key_refuses_orders_serves_reads_and_sends_nothing() {
    let mut system = trading_system(live_trading()).await;
    system.take_sidecar().unwrap().stop().await;
    let key = system
        .sidecar_state_dir()
        .join(ibkr_agent::trading::journal_chain::KEY_FILE);
    let saved = corrupt(&key, b"short");
    system.start_sidecar().await.unwrap();
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    let arguments = json!({"symbol": "AAPL", "cash_amount": "31", "idempotency_key": "k"});
    let refused = call(&system, "ibkr_buy", arguments.clone()).await;
    assert_eq!(code(&refused), "JOURNAL_ERROR", "{refused:?}");
    assert_eq!(
        system.sim.order_log().len(),
        0,
        "nothing sent without a journal"
    );
    system.take_sidecar().unwrap().stop().await;
    std::fs::write(&key, saved).unwrap();
    system.start_sidecar().await.unwrap();
    ok(&call(&system, "ibkr_buy", arguments).await);
    assert_eq!(system.sim.order_log().len(), 1);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_corrupt_key_or_store_refuses_to_start_and_names_it() {
    let mut system = trading_system(live_trading()).await;
    system.stop_gateway().await;
    let dir = system.gateway_state_dir().to_path_buf();
    for (file, garbage, expected) in [
        ("gateway.key", &b"not a key"[..], "gateway.key"),
        (
            "gateway.sqlite3",
            &b"SQLite format 3\0garbage garbage"[..],
            "state store",
        ),
        ("audit_hmac.key", &b"x"[..], "audit"),
    ] {
        let path = dir.join(file);
        let saved = corrupt(&path, garbage);
        let refused = system.restart_gateway().await.unwrap_err().to_string();
        assert!(
            refused.contains(expected),
            "a corrupt {file} is refused by name: {refused}"
        );
        std::fs::write(&path, saved).unwrap();
    }
    system.restart_gateway().await.unwrap();
    system.wait_sidecar_connected().await.unwrap();
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    assert_eq!(system.sim.order_log().len(), 0);
    system.shutdown().await;
}
