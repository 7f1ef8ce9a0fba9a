//! Pacing: IBKR Web API documentation, "Pacing Limitations" (10 requests
//! per second through the CP Gateway, per-endpoint limits, 429, penalty box).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::{ACCT, Harness, TestResult};
use crate::cpgw_sim::{SimConfig, SimScenario};

fn orders_path() -> String {
    format!("/iserver/account/orders?accountId={ACCT}")
}

#[tokio::test]
async fn a_second_orders_read_within_5_seconds_is_refused_and_boxes_every_endpoint() -> TestResult {
    let h = Harness::start(SimScenario {
        session_idle_timeout: None,
        ..SimScenario::default()
    })
    .await?;
    assert_eq!(h.get(orders_path()).await?.0, StatusCode::OK);
    h.advance_secs(4);
    let (code, body) = h.get(orders_path()).await?;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["statusCode"], 429);
    let report = h.sim.pacing();
    assert_eq!(report.rejected_for("GET /iserver/account/orders"), 1);
    assert_eq!(report.penalty_boxes, 1);

    // The penalty box (15 minutes by default) blocks the whole gateway.
    for path in ["/iserver/accounts", "/iserver/auth/status"] {
        assert_eq!(
            h.get(path).await?.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}"
        );
    }
    h.advance_secs(15 * 60 - 1);
    assert_eq!(
        h.get("/iserver/accounts").await?.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    h.advance_secs(1);
    assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
    assert_eq!(h.get(orders_path()).await?.0, StatusCode::OK);
    let report = h.sim.pacing();
    assert_eq!(report.rejected_for("GET /iserver/accounts"), 2);
    assert_eq!(report.rejected_for("GET /iserver/auth/status"), 1);
    assert_eq!(report.rejected_total, 4);
    assert_eq!(report.penalty_until_ms, None);
    Ok(())
}

#[tokio::test]
async fn the_gateway_admits_10_requests_a_second() -> TestResult {
    let h = Harness::start_unprimed(SimConfig {
        scenario: SimScenario {
            penalty_box_after_violations: 2,
            ..SimScenario::default()
        },
        ..SimConfig::default()
    })
    .await?;
    for _ in 0..10 {
        assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
    }
    assert_eq!(
        h.get("/iserver/accounts").await?.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // One violation is below this scenario's threshold: no box, and the
    // window frees up a second later.
    assert_eq!(h.sim.pacing().penalty_boxes, 0);
    h.advance_secs(1);
    assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
    for _ in 0..9 {
        h.get("/iserver/accounts").await?;
    }
    assert_eq!(
        h.get("/iserver/accounts").await?.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(h.sim.pacing().penalty_boxes, 1);
    Ok(())
}

#[tokio::test]
async fn endpoints_keep_their_own_limits() -> TestResult {
    let h = Harness::start(SimScenario {
        penalty_box_after_violations: 1_000,
        gateway_requests_per_second: 1_000,
        ..SimScenario::default()
    })
    .await?;
    // /tickle: 1 request per second (POST as well as GET).
    assert_eq!(h.post("/tickle", json!({})).await?.0, StatusCode::OK);
    assert_eq!(
        h.post("/tickle", json!({})).await?.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    h.advance_secs(1);
    assert_eq!(h.post("/tickle", json!({})).await?.0, StatusCode::OK);

    // Snapshots: 10 a second.
    let snapshot = "/iserver/marketdata/snapshot?conids=265598&fields=31";
    for _ in 0..10 {
        assert_eq!(h.get(snapshot).await?.0, StatusCode::OK);
    }
    assert_eq!(h.get(snapshot).await?.0, StatusCode::TOO_MANY_REQUESTS);

    // History: 50 a minute (and 10 a second).
    let history = "/iserver/marketdata/history?conid=265598&period=1d&bar=1h";
    for _ in 0..5 {
        for _ in 0..10 {
            assert_eq!(h.get(history).await?.0, StatusCode::OK);
        }
        h.advance_secs(1);
    }
    assert_eq!(h.get(history).await?.0, StatusCode::TOO_MANY_REQUESTS);
    h.sim.advance(Duration::from_secs(60));
    assert_eq!(h.get(history).await?.0, StatusCode::OK);

    // Trades and /portfolio/accounts: 1 per 5 seconds.
    for path in ["/iserver/account/trades", "/portfolio/accounts"] {
        assert_eq!(h.get(path).await?.0, StatusCode::OK, "{path}");
        assert_eq!(
            h.get(path).await?.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}"
        );
    }
    let report = h.sim.pacing();
    assert_eq!(report.rejected_for("/tickle"), 1);
    assert_eq!(report.rejected_for("GET /iserver/marketdata/snapshot"), 1);
    assert_eq!(report.rejected_for("GET /iserver/marketdata/history"), 1);
    assert_eq!(report.rejected_for("GET /iserver/account/trades"), 1);
    assert_eq!(report.rejected_for("GET /portfolio/accounts"), 1);
    Ok(())
}

#[tokio::test]
async fn pacing_can_be_switched_off() -> TestResult {
    let h = Harness::start(SimScenario {
        pacing: false,
        ..SimScenario::default()
    })
    .await?;
    for _ in 0..20 {
        assert_eq!(h.get(orders_path()).await?.0, StatusCode::OK);
    }
    assert_eq!(h.sim.pacing().rejected_total, 0);
    Ok(())
}
