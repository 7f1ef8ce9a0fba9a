//! Faults at the worst moment of an order, and what each side says about them.

use crate::trading_support::{call, code, live_trading, ok, trading_system};
use ibkr_agent::trading::journal::{JOURNAL_FILE, read_attempts};
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
