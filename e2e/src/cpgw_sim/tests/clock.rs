//! What the injected clock drives: the exchange session, DAY-order expiry,
//! the idle lapse and the nightly reset. The harness starts on Tuesday
//! 1 December 2026, 10:00 New York (15:00 UTC).

use reqwest::StatusCode;
use serde_json::json;

use super::{Harness, TestResult, id_of, lmt, mkt};
use crate::cpgw_sim::{AuthState, SessionPhase, SimScenario, phase_at};

/// No pacing, no derived questions, no lapses: only the calendar.
fn calendar_only() -> SimScenario {
    SimScenario {
        pacing: false,
        order_warnings: false,
        session_idle_timeout: None,
        nightly_reset: false,
        ..SimScenario::default()
    }
}

const HOUR: u64 = 60 * 60;

#[tokio::test]
async fn day_orders_expire_at_the_close_and_gtc_orders_persist() -> TestResult {
    let h = Harness::start(calendar_only()).await?;
    assert_eq!(
        phase_at(h.sim.clock().now_ms()),
        SessionPhase::Regular,
        "the harness starts inside regular hours"
    );
    let mut day = lmt("BUY", 1, "150", "day-1");
    day["tif"] = json!("DAY");
    let day = id_of(&h.place_ok(json!([day])).await?[0]);
    let gtc = id_of(&h.place_ok(json!([lmt("BUY", 1, "150", "gtc-1")])).await?[0]);

    // 15:59:59 New York: both still working.
    h.advance_secs(6 * HOUR - 1);
    assert_eq!(h.status(&day).await?["order_status"], "Submitted");
    h.advance_secs(1);
    assert_eq!(h.status(&day).await?["order_status"], "Cancelled");
    // The GTC order lives on, held until the next session.
    assert_eq!(h.status(&gtc).await?["order_status"], "PreSubmitted");

    // After the close a DAY order waits for the next session...
    let late = id_of(&h.place_ok(json!([mkt("BUY", "1", "late-1")])).await?[0]);
    let mut late_limit = lmt("BUY", 1, "150", "late-2");
    late_limit["tif"] = json!("DAY");
    let late_limit = id_of(&h.place_ok(json!([late_limit])).await?[0]);
    assert_eq!(h.status(&late).await?["order_status"], "PreSubmitted");
    // ...fills at the next open (Wednesday 09:30, 17.5 hours later)...
    h.advance_secs(17 * HOUR + 30 * 60 - 1);
    assert_eq!(h.status(&late).await?["order_status"], "PreSubmitted");
    h.advance_secs(1);
    assert_eq!(h.status(&late).await?["order_status"], "Filled");
    assert_eq!(h.status(&late_limit).await?["order_status"], "Submitted");
    // ...and expires at that session's close.
    h.advance_secs(6 * HOUR + 30 * 60);
    assert_eq!(h.status(&late_limit).await?["order_status"], "Cancelled");
    assert_eq!(h.status(&gtc).await?["order_status"], "PreSubmitted");
    Ok(())
}

#[tokio::test]
async fn outside_rth_orders_work_in_extended_hours_only() -> TestResult {
    let h = Harness::start(calendar_only()).await?;
    // 16:00 New York: after hours.
    h.advance_secs(6 * HOUR);
    let mut extended = mkt("BUY", "1", "ext-1");
    extended["outsideRTH"] = json!(true);
    extended["tif"] = json!("GTC");
    let extended = id_of(&h.place_ok(json!([extended])).await?[0]);
    assert_eq!(h.status(&extended).await?["order_status"], "Filled");
    // 20:00: closed for everyone.
    h.advance_secs(4 * HOUR);
    let mut night = mkt("BUY", "1", "ext-2");
    night["outsideRTH"] = json!(true);
    night["tif"] = json!("GTC");
    let night = id_of(&h.place_ok(json!([night])).await?[0]);
    assert_eq!(h.status(&night).await?["order_status"], "PreSubmitted");
    // 04:00: pre-market opens for outsideRTH orders.
    h.advance_secs(8 * HOUR);
    assert_eq!(h.status(&night).await?["order_status"], "Filled");
    Ok(())
}

/// IBKR's OpenAPI for /tickle: "If the gateway has not received any
/// requests for several minutes an open session will automatically
/// timeout" (default: 5 minutes, the stricter end of "several").
#[tokio::test]
async fn an_idle_session_lapses_and_ssodh_init_reopens_it() -> TestResult {
    let h = Harness::start(SimScenario {
        pacing: false,
        ..SimScenario::default()
    })
    .await?;
    assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
    // Any request counts as activity.
    h.advance_secs(4 * 60 + 59);
    assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
    h.advance_secs(5 * 60);
    assert_eq!(
        h.get("/iserver/accounts").await?.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(h.sim.auth_state(), AuthState::ConnectedOnly);
    let (_, status) = h.post("/iserver/auth/status", json!({})).await?;
    assert_eq!(status["authenticated"], false);
    let (code, _) = h
        .post(
            "/iserver/auth/ssodh/init",
            json!({"publish": true, "compete": true}),
        )
        .await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);

    // A test can lapse it on purpose, to wherever the scenario says.
    h.sim
        .update_scenario(|s| s.idle_lapse_state = AuthState::LoggedOut);
    h.sim.lapse_session();
    assert_eq!(h.sim.auth_state(), AuthState::LoggedOut);
    assert_eq!(
        h.post("/tickle", json!({})).await?.0,
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}

/// IBKR Web API documentation, "Scheduled Server Maintenance": brokerage
/// functionality is briefly unavailable each evening at about 01:00
/// US/Eastern; the brokerage session has to be reopened.
#[tokio::test]
async fn the_brokerage_session_resets_at_one_in_the_morning() -> TestResult {
    let h = Harness::start(SimScenario {
        pacing: false,
        session_idle_timeout: None,
        ..SimScenario::default()
    })
    .await?;
    // Wednesday 00:59 New York.
    h.advance_secs(14 * HOUR + 59 * 60);
    assert_eq!(h.sim.auth_state(), AuthState::LoggedIn);
    h.advance_secs(60);
    assert_eq!(h.sim.auth_state(), AuthState::ConnectedOnly);
    assert_eq!(
        h.get("/iserver/accounts").await?.0,
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}
