//! Faults at the worst moment of an order, and what each side says about them.

use crate::trading_support::{call, code, live_trading, ok, trading_system, until_order_held};
use ibkr_agent::trading::journal::{JOURNAL_FILE, read_attempts};
use ibkr_gateway as gateway;
use serde_json::json;

/// The relay is cut (the operator revokes the pairing) after the order reached the broker and
/// before its answer came back. The agent must hear that the outcome is unknown, not "try
/// again"; the laptop must finish the placement without the connection and journal it as
/// placed, so the daily cap and the next call with the same key know about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cut_off_from_its_relay_finishes_on_the_laptop_and_the_agent_hears_unknown() {
    let mut system = trading_system(live_trading()).await;
    let sidecar_id = system.gateway().unwrap().live_sidecars()[0]
        .sidecar_id
        .clone();
    let hold = system.sim.hold_order_answers();

    let (result, ()) = tokio::join!(
        call(
            &system,
            "ibkr_buy",
            json!({"symbol": "AAPL", "cash_amount": "30", "idempotency_key": "cut-1"}),
        ),
        async {
            // The order has landed at the broker; its answer is on the way.
            hold.wait_held(1).await;
            assert!(
                system
                    .gateway()
                    .unwrap()
                    .revoke_pairing(&sidecar_id)
                    .await
                    .unwrap()
            );
        }
    );
    assert_eq!(code(&result), "ORDER_OUTCOME_UNKNOWN", "{result:?}");
    assert_eq!(system.sim.order_log().len(), 1);

    // The broker's answer arrives after the connection is gone. A graceful stop of the daemon
    // waits for order work in flight, so once it returns the outcome is in the journal.
    system.sim.release_order_answers();
    system.take_sidecar().unwrap().stop().await;
    let journal = system.sidecar_state_dir().join(JOURNAL_FILE);
    let book = read_attempts(&journal).unwrap();
    let attempt = book.iter().next_back().unwrap();
    assert!(
        attempt.status.placed(),
        "the laptop did not journal the placement ({}): {:?}",
        attempt.status.as_str(),
        std::fs::read_to_string(&journal)
    );
    assert_eq!(system.sim.order_log().len(), 1, "no second order");
    system.shutdown().await;
}

/// Two agents (or one agent retrying in parallel) send the same order with the same
/// idempotency key while the first is still at the broker. Exactly one order is placed, and
/// both calls answer with it: the second waits for the first's outcome (or, if it comes after,
/// replays it), never ORDER_DUPLICATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_key_place_one_order_and_both_get_its_outcome() {
    let system = trading_system(live_trading()).await;
    let hold = system.sim.hold_order_answers();
    let arguments = json!({"symbol": "AAPL", "cash_amount": "30", "idempotency_key": "twin-1"});
    let (first, second, ()) = tokio::join!(
        call(&system, "ibkr_buy", arguments.clone()),
        call(&system, "ibkr_buy", arguments.clone()),
        async {
            hold.wait_held(1).await;
            system.sim.release_order_answers();
        }
    );
    let first = ok(&first);
    let second = ok(&second);
    assert_eq!(system.sim.order_log().len(), 1, "{first} {second}");
    assert_eq!(
        first["attempt_id"], second["attempt_id"],
        "{first} {second}"
    );
    for answer in [&first, &second] {
        assert_eq!(answer["status"], "sent", "{answer}");
    }
    assert!(
        first["replayed"] == true || second["replayed"] == true,
        "one of them is the other's outcome: {first} {second}"
    );
    system.shutdown().await;
}

/// The laptop dies (the daemon's process is killed) while its order is at the broker, then
/// comes back. The order landed once; the agent heard that its outcome is unknown; after the
/// restart a reconcile proves it placed from the broker's own record, and nothing places it a
/// second time: not the retry with the same idempotency key, and without a key the journal
/// shows one order.
async fn a_sidecar_killed_mid_order_is_reconciled_after_restart(key: Option<&str>) {
    let mut system = trading_system(live_trading()).await;
    let hold = system.sim.hold_order_answers();
    let mut arguments = json!({"symbol": "AAPL", "cash_amount": "30"});
    if let Some(key) = key {
        arguments["idempotency_key"] = json!(key);
    }
    let sidecar = system.take_sidecar().unwrap();
    let (result, ()) = tokio::join!(call(&system, "ibkr_buy", arguments.clone()), async {
        hold.wait_held(1).await;
        sidecar.kill().await;
    });
    assert_eq!(code(&result), "ORDER_OUTCOME_UNKNOWN", "{result:?}");
    assert_eq!(
        system.sim.order_log().len(),
        1,
        "the order reached the broker"
    );
    system.sim.release_order_answers();

    let journal = system.sidecar_state_dir().join(JOURNAL_FILE);
    let book = read_attempts(&journal).unwrap();
    let attempt = book.iter().next_back().unwrap().clone();
    assert!(
        !attempt.status.placed(),
        "a killed daemon cannot have heard the answer: {}",
        attempt.status.as_str()
    );

    system.start_sidecar().await.unwrap();
    let reconciled = ok(&call(&system, "ibkr_reconcile_pending", json!({})).await);
    assert!(reconciled.to_string().contains("placed"), "{reconciled}");
    let book = read_attempts(&journal).unwrap();
    assert!(
        book.iter().next_back().unwrap().status.placed(),
        "reconciled from the broker's record"
    );

    if key.is_some() {
        let again = ok(&call(&system, "ibkr_buy", arguments).await);
        assert_eq!(again["attempt_id"], json!(attempt.id), "{again}");
        assert_eq!(again["replayed"], true, "{again}");
    }
    let book = read_attempts(&journal).unwrap();
    let orders: Vec<_> = book.iter().filter(|a| !a.dry_run()).collect();
    assert_eq!(
        orders.len(),
        1,
        "one order attempt in the journal: {orders:?}"
    );
    assert_eq!(system.sim.order_log().len(), 1, "never a second order");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_mid_order_with_a_key_is_reconciled_and_the_retry_replays_it() {
    a_sidecar_killed_mid_order_is_reconciled_after_restart(Some("killed-1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_mid_order_without_a_key_is_reconciled_to_one_order() {
    a_sidecar_killed_mid_order_is_reconciled_after_restart(None).await;
}

/// The gateway's process is killed (SIGKILL) while an order it relayed is at the broker. The
/// laptop finishes the order on its own and journals it; the gateway comes back on the same
/// state, the sidecar reconnects by itself, and the agent's retry with the same key gets the
/// order it already placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_order_comes_back_and_the_retry_gets_the_placed_order() {
    let mut system = trading_system(live_trading()).await;
    let gateway = system.start_gateway_process().await.unwrap();
    system.wait_sidecar_connected().await.unwrap();
    let hold = system.sim.hold_order_answers();
    let arguments = json!({"symbol": "AAPL", "cash_amount": "30", "idempotency_key": "gw-1"});

    let token = system
        .token(crate::trading_support::TRADING_SCOPES)
        .unwrap();
    let client = system.mcp_client(&token).await.unwrap();
    let mut params = rmcp::model::CallToolRequestParams::new("ibkr_buy");
    if let serde_json::Value::Object(map) = arguments.clone() {
        params = params.with_arguments(map);
    }
    // The order is at the broker, its answer held; the agent is still waiting. (What an MCP
    // client does when its server dies mid-call is the client's business: rmcp's keeps
    // trying to resume the stream, so the test stops waiting for it.)
    {
        let pending = client.call_tool(params);
        let mut pending = std::pin::pin!(pending);
        until_order_held(&mut pending, &hold).await;
        gateway.kill().unwrap();
    }
    drop(client);

    // The broker answers; the laptop, cut off from its gateway, journals the placement.
    system.sim.release_order_answers();
    let journal = system.sidecar_state_dir().join(JOURNAL_FILE);
    let placed = tokio::time::timeout(e2e::system::WAIT_LIMIT, async {
        loop {
            // The daemon writes the journal on its own; nothing signals another reader.
            if let Ok(book) = read_attempts(&journal)
                && let Some(attempt) = book.iter().next_back()
                && attempt.status.placed()
            {
                return attempt.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the laptop journals the placement without its gateway");

    let _gateway = system.start_gateway_process().await.unwrap();
    system.wait_sidecar_connected().await.unwrap();
    let again = ok(&call(&system, "ibkr_buy", arguments).await);
    assert_eq!(again["attempt_id"], json!(placed.id), "{again}");
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(system.sim.order_log().len(), 1, "never a second order");
}

/// The laptop hangs (the daemon's process is stopped with SIGSTOP): the gateway drops the
/// session within the heartbeat timeout and the agent is told so; when the process resumes,
/// the daemon notices its connection is gone, reconnects by itself and serves calls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sidecar_process_is_dropped_and_serves_again_when_resumed() {
    let mut system = crate::trading_support::trading_system_with(e2e::system::SystemOptions {
        heartbeat_interval_seconds: 1,
        heartbeat_timeout_seconds: 3,
        trading: live_trading(),
        ..e2e::system::SystemOptions::default()
    })
    .await;
    let sidecar = system.start_sidecar_process().await.unwrap();
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    let mut events = system.gateway().unwrap().subscribe_sessions();

    sidecar.freeze().unwrap();
    tokio::time::timeout(e2e::system::WAIT_LIMIT, async {
        loop {
            if let Ok(gateway::SessionEvent::Dropped { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await
    .expect("the gateway drops a frozen sidecar");
    let refused = call(&system, "ibkr_accounts_list", json!({})).await;
    let refused_code = code(&refused);
    assert!(
        ["SIDECAR_HEARTBEAT_STALE", "SIDECAR_UNAVAILABLE"].contains(&refused_code.as_str()),
        "{refused:?}"
    );

    sidecar.resume().unwrap();
    e2e::system::wait_registered(&mut events).await.unwrap();
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    assert_eq!(system.sim.order_log().len(), 0, "a hang places nothing");
    sidecar.kill().unwrap();
}
