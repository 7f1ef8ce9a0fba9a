//! `GET /iserver/account/orders` and `/iserver/account/trades`: the
//! session-scoped caches, their pre-flight, `force`, `filters`, `accountId`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{AAPL, ACCT, Harness, TestResult, lmt, mkt};
use crate::cpgw_sim::{AuthState, PreflightShape, SimScenario};

/// The default scenario without pacing (tests/pacing.rs covers the
/// 1 request per 5 s limit of this endpoint) and without derived questions.
fn scenario() -> SimScenario {
    SimScenario {
        pacing: false,
        order_warnings: false,
        ..SimScenario::default()
    }
}

fn orders_path() -> String {
    format!("/iserver/account/orders?accountId={ACCT}")
}

#[tokio::test]
async fn the_first_read_of_a_session_is_a_false_empty_pre_flight() -> TestResult {
    let h = Harness::start(scenario()).await?;
    h.place_ok(json!([mkt("BUY", "2", "list-1")])).await?;
    // Indistinguishable from "no orders": the stricter reading of the reports.
    let (code, first) = h.get(orders_path()).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(first, json!({"orders": [], "snapshot": true}));
    // Still filling until the fill delay (5 s) has passed.
    h.advance_secs(4);
    assert_eq!(h.get(orders_path()).await?.1["orders"], json!([]));
    h.advance_secs(1);
    let (_, warm) = h.get(orders_path()).await?;
    assert_eq!(warm["snapshot"], true);
    let row = &warm["orders"][0];
    assert!(row["orderId"].is_u64());
    assert_eq!(row["conid"], AAPL);
    assert_eq!(row["ticker"], "AAPL");
    assert_eq!(row["status"], "Filled");
    assert_eq!(row["side"], "BUY");
    assert_eq!(row["totalSize"], json!(2.0));
    assert_eq!(row["filledQuantity"], json!(2.0));
    assert_eq!(row["remainingQuantity"], json!(0.0));
    assert_eq!(row["avgPrice"], "189.26");
    assert_eq!(row["order_ref"], "list-1");
    assert_eq!(row["orderType"], "Market");
    assert_eq!(row["timeInForce"], "DAY");
    // Once warm, orders placed later show at once.
    h.place_ok(json!([lmt("BUY", 1, "150", "list-2")])).await?;
    let (_, both) = h.get(orders_path()).await?;
    assert_eq!(both["orders"].as_array().map(Vec::len), Some(2));
    let (_, submitted) = h
        .get(format!("{}&filters=Submitted", orders_path()))
        .await?;
    assert_eq!(submitted["orders"][0]["order_ref"], "list-2");
    let (_, filled) = h.get(format!("{}&filters=filled", orders_path())).await?;
    assert_eq!(filled["orders"][0]["order_ref"], "list-1");
    assert_eq!(filled["orders"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test]
async fn without_account_id_the_list_is_always_empty() -> TestResult {
    let h = Harness::start(scenario()).await?;
    h.place_ok(json!([lmt("BUY", 1, "150", "acct-1")])).await?;
    h.get(orders_path()).await?;
    h.advance_secs(5);
    assert_eq!(
        h.get(orders_path()).await?.1["orders"][0]["order_ref"],
        "acct-1"
    );
    for path in [
        "/iserver/account/orders".to_owned(),
        "/iserver/account/orders?accountId=U0000000".to_owned(),
    ] {
        assert_eq!(
            h.get(&path).await?.1,
            json!({"orders": [], "snapshot": true}),
            "{path}"
        );
    }
    h.sim.update_scenario(|s| s.orders_need_account_id = false);
    assert_eq!(
        h.get("/iserver/account/orders").await?.1["orders"][0]["order_ref"],
        "acct-1"
    );
    Ok(())
}

/// `force=true`: "Force the system to clear saved information and make a
/// fresh request for orders. Submission will appear as a blank array."
#[tokio::test]
async fn force_clears_the_cache_and_answers_blank() -> TestResult {
    let h = Harness::start(scenario()).await?;
    h.place_ok(json!([lmt("BUY", 1, "150", "force-1")])).await?;
    h.get(orders_path()).await?;
    h.advance_secs(5);
    assert_eq!(
        h.get(orders_path()).await?.1["orders"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let (_, forced) = h.get(format!("{}&force=true", orders_path())).await?;
    assert_eq!(forced, json!({"orders": [], "snapshot": true}));
    assert_eq!(h.get(orders_path()).await?.1["orders"], json!([]));
    h.advance_secs(5);
    assert_eq!(
        h.get(orders_path()).await?.1["orders"][0]["order_ref"],
        "force-1"
    );
    Ok(())
}

/// "orders currently working as well as those cancelled or filled within the
/// same brokerage session": a new session starts cold and forgets finished
/// orders of the old one.
#[tokio::test]
async fn a_new_brokerage_session_starts_cold_and_forgets_finished_orders() -> TestResult {
    let h = Harness::start(scenario()).await?;
    h.place_ok(json!([mkt("BUY", "1", "old-filled")])).await?;
    h.place_ok(json!([lmt("BUY", 1, "150", "old-working")]))
        .await?;
    h.new_session().await?;
    assert_eq!(h.get(orders_path()).await?.1["orders"], json!([]));
    h.advance_secs(5);
    let (_, listed) = h.get(orders_path()).await?;
    let refs: Vec<&Value> = listed["orders"]
        .as_array()
        .ok_or("orders")?
        .iter()
        .map(|row| &row["order_ref"])
        .collect();
    assert_eq!(refs, [&json!("old-working")]);
    Ok(())
}

#[tokio::test]
async fn pre_flight_shapes_are_knobs() -> TestResult {
    let h = Harness::start(scenario()).await?;
    for (shape, body) in [
        (PreflightShape::EmptyArray, json!([])),
        (PreflightShape::EmptyObject, json!({})),
    ] {
        h.sim.update_scenario(|s| s.orders_preflight_shape = shape);
        h.new_session().await?;
        assert_eq!(h.get(orders_path()).await?.1, body);
    }
    h.sim.update_scenario(|s| {
        s.orders_preflight = false;
        s.orders_fill_delay = Duration::from_secs(60);
    });
    h.new_session().await?;
    assert_eq!(
        h.get(orders_path()).await?.1,
        json!({"orders": [], "snapshot": true})
    );
    Ok(())
}

/// The trades list has the same pre-flight (reported by a client project)
/// and, without `days`, only the current day (IBKR endpoint reference).
#[tokio::test]
async fn trades_need_a_pre_flight_and_cover_the_current_day() -> TestResult {
    let h = Harness::start(scenario()).await?;
    h.place_ok(json!([mkt("BUY", "1", "t-1")])).await?;
    let (code, first) = h.get("/iserver/account/trades").await?;
    assert_eq!((code, first), (StatusCode::OK, json!([])));
    h.advance_secs(5);
    let (_, trades) = h.get("/iserver/account/trades").await?;
    assert_eq!(trades[0]["order_ref"], "t-1");
    // The next day (after the idle lapse and a new login, so a new
    // pre-flight) the trade is gone unless `days` reaches back.
    h.advance_secs(24 * 60 * 60);
    assert_eq!(h.sim.auth_state(), AuthState::ConnectedOnly);
    h.sim.set_auth_state(AuthState::LoggedIn);
    h.prime().await?;
    assert_eq!(h.get("/iserver/account/trades?days=2").await?.1, json!([]));
    h.advance_secs(5);
    assert_eq!(h.get("/iserver/account/trades").await?.1, json!([]));
    assert_eq!(
        h.get("/iserver/account/trades?days=2").await?.1[0]["order_ref"],
        "t-1"
    );
    Ok(())
}
