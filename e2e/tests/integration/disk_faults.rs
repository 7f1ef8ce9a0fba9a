//! State on a full or read-only disk, on either half. Whatever cannot be written first is
//! never acted on: an order whose intent cannot be journaled (laptop) or whose audit record
//! cannot be stored (gateway) is refused before it reaches the broker, reads go on, and once
//! the disk has room again everything works without a restart. An order already at the broker
//! when the disk fills is never placed twice.
//!
//! Each test mounts a small tmpfs over the state directory (root only; see
//! `e2e::small_disk`).

use crate::trading_support::{call, code, live_trading, ok, trading_system, until_order_held};
use e2e::small_disk;
use serde_json::json;

/// A buy of `dollars` (distinct amounts: the same order again within moments is refused as a
/// duplicate).
fn buy(key: &str, dollars: u32) -> serde_json::Value {
    json!({"symbol": "AAPL", "cash_amount": dollars.to_string(), "idempotency_key": key})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_laptop_disk_refuses_orders_before_sending_and_never_places_one_twice() {
    let mut system = trading_system(live_trading()).await;
    system.take_sidecar().unwrap().stop().await;
    let Some(disk) = small_disk::for_test(system.sidecar_state_dir(), 4096) else {
        return;
    };
    system.start_sidecar().await.unwrap();

    // Full before the send: the intent cannot be journaled, so nothing is sent.
    disk.fill().unwrap();
    let refused = call(&system, "ibkr_buy", buy("full-1", 30)).await;
    assert_eq!(code(&refused), "JOURNAL_ERROR", "{refused:?}");
    assert_eq!(
        system.sim.order_log().len(),
        0,
        "nothing reached the broker"
    );
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    disk.free().unwrap();
    ok(&call(&system, "ibkr_buy", buy("full-2", 31)).await);
    assert_eq!(system.sim.order_log().len(), 1);

    // Full after the send: the order is at the broker when the disk fills. The journal line
    // may still fit in its file's last page (then only the head checkpoint fails) or not (the
    // journal-after-send test below forces that case); either way the agent hears the order
    // was placed, and the retry answers that order.
    let hold = system.sim.hold_order_answers();
    let placed = {
        let pending = call(&system, "ibkr_buy", buy("full-3", 32));
        let mut pending = std::pin::pin!(pending);
        until_order_held(&mut pending, &hold).await;
        disk.fill().unwrap();
        system.sim.release_order_answers();
        ok(&pending.await)
    };
    assert_eq!(placed["status"], "sent", "{placed}");
    assert_eq!(system.sim.order_log().len(), 2);
    disk.free().unwrap();
    let again = ok(&call(&system, "ibkr_buy", buy("full-3", 32)).await);
    assert_eq!(again["attempt_id"], placed["attempt_id"], "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(system.sim.order_log().len(), 2, "never a second order");
    system.shutdown().await;
    drop(disk);
}

/// A read-only state directory (a remount cannot happen under a running daemon: the journal
/// is open for writing, so the disk is read-only from the daemon's start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_a_read_only_disk_sends_nothing_and_works_once_it_is_writable() {
    let mut system = trading_system(live_trading()).await;
    system.take_sidecar().unwrap().stop().await;
    let Some(disk) = small_disk::for_test(system.sidecar_state_dir(), 4096) else {
        return;
    };
    disk.read_only().unwrap();
    let refused = system.start_sidecar().await.unwrap_err().to_string();
    assert!(
        refused.contains("STATE_STORE_ERROR") && refused.contains("read-only"),
        "the daemon refuses to start and says why: {refused}"
    );
    assert_eq!(system.sim.order_log().len(), 0);
    disk.read_write().unwrap();
    system.start_sidecar().await.unwrap();
    ok(&call(&system, "ibkr_buy", buy("ro-2", 34)).await);
    assert_eq!(system.sim.order_log().len(), 1);
    system.shutdown().await;
    drop(disk);
}

/// The journal refuses its write after the order reached the broker (as a disk that fills at
/// that moment would). The agent is told the order was placed and that the journal missed
/// it, the attempt stays counted as unknown, and neither the retry with the same key nor the
/// reconcile places it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_write_failing_after_the_send_reports_the_placed_order_and_never_repeats_it() {
    let system = trading_system(live_trading()).await;
    let hold = system.sim.hold_order_answers();
    let placed = {
        let pending = call(&system, "ibkr_buy", buy("after-1", 40));
        let mut pending = std::pin::pin!(pending);
        until_order_held(&mut pending, &hold).await;
        ibkr_agent::trading::journal::faults::fail_next_appends(system.sidecar_state_dir(), 1);
        system.sim.release_order_answers();
        ok(&pending.await)
    };
    assert_eq!(placed["status"], "sent", "{placed}");
    assert!(placed["journal_warning"].is_string(), "{placed}");
    assert_eq!(system.sim.order_log().len(), 1);

    // The retry finds the attempt unknown and settles it from the broker's orders list
    // before answering: the order it already placed.
    let again = ok(&call(&system, "ibkr_buy", buy("after-1", 40)).await);
    assert_eq!(again["attempt_id"], placed["attempt_id"], "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["reconciled"], true, "{again}");
    let pending = ok(&call(&system, "ibkr_reconcile_pending", json!({})).await);
    assert_eq!(pending["still_pending"], 0, "{pending}");
    assert_eq!(system.sim.order_log().len(), 1, "never a second order");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_gateway_disk_refuses_order_calls_unforwarded_and_reads_go_on() {
    let mut system = trading_system(live_trading()).await;
    system.stop_gateway().await;
    let Some(disk) = small_disk::for_test(system.gateway_state_dir(), 8192) else {
        return;
    };
    system.restart_gateway().await.unwrap();
    system.wait_sidecar_connected().await.unwrap();

    disk.fill().unwrap();
    let refused = call(&system, "ibkr_buy", buy("gw-full-1", 35)).await;
    assert_eq!(code(&refused), "AUDIT_UNAVAILABLE", "{refused:?}");
    assert_eq!(system.sim.order_log().len(), 0, "never forwarded");
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    disk.free().unwrap();
    ok(&call(&system, "ibkr_buy", buy("gw-full-2", 36)).await);
    assert_eq!(system.sim.order_log().len(), 1);

    // Read-only: the gateway's store is open for writing, so the disk goes read-only across
    // a restart.
    system.stop_gateway().await;
    disk.read_only().unwrap();
    let refused = system.restart_gateway().await.unwrap_err().to_string();
    assert!(
        refused.contains("Read-only file system"),
        "the gateway refuses to start and says why: {refused}"
    );
    assert_eq!(system.sim.order_log().len(), 1);
    system.stop_gateway().await;
    disk.read_write().unwrap();
    system.restart_gateway().await.unwrap();
    system.wait_sidecar_connected().await.unwrap();
    ok(&call(&system, "ibkr_buy", buy("gw-ro-2", 38)).await);
    assert_eq!(system.sim.order_log().len(), 2);
    system.shutdown().await;
    drop(disk);
}
