//! Placing, confirming, filling and cancelling orders.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{AAPL, ACCT, Harness, TestResult, d, id_of, lmt, mkt};
use crate::cpgw_sim::{
    AuthState, CancelAckShape, MarketHours, SessionPhase, SimOrderStatus, SimScenario,
};

#[tokio::test]
async fn trading_endpoints_need_a_usable_session() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    for state in [AuthState::ConnectedOnly, AuthState::LoggedOut] {
        h.sim.set_auth_state(state);
        for path in [
            "/trsrv/stocks?symbols=AAPL".to_owned(),
            "/iserver/marketdata/snapshot?conids=265598".to_owned(),
            format!("/portfolio/{ACCT}/summary"),
            format!("/portfolio/{ACCT}/positions/0"),
            "/iserver/account/orders".to_owned(),
            "/iserver/account/trades".to_owned(),
        ] {
            let (code, body) = h.get(&path).await?;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(body, json!({"error": "not authenticated"}));
        }
        let (code, _) = h.place(json!([mkt("BUY", "1", "x")])).await?;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
    }
    assert!(h.sim.order_log().is_empty());
    Ok(())
}

#[tokio::test]
async fn warning_rounds_need_every_confirmation() -> TestResult {
    let h = Harness::start(SimScenario {
        warning_rounds: vec!["o163".to_owned(), "o354".to_owned()],
        ..SimScenario::ideal()
    })
    .await?;
    let (code, question) = h.place(json!([mkt("BUY", "1", "warn-1")])).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(question[0]["messageIds"], json!(["o163"]));
    assert_eq!(question[0]["isSuppressed"], false);
    assert!(question[0]["message"][0].is_string());
    let first = question[0]["id"].as_str().ok_or("reply id")?.to_owned();
    assert!(h.sim.order_log().is_empty());

    let (code, question) = h
        .post(
            &format!("/iserver/reply/{first}"),
            json!({"confirmed": true}),
        )
        .await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(question[0]["messageIds"], json!(["o354"]));
    let second = question[0]["id"].as_str().ok_or("reply id")?.to_owned();
    assert_ne!(first, second);
    assert!(h.sim.order_log().is_empty());

    let (code, ack) = h
        .post(
            &format!("/iserver/reply/{second}"),
            json!({"confirmed": true}),
        )
        .await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ack[0]["local_order_id"], "warn-1");
    assert!(ack[0]["order_id"].is_string());
    assert_eq!(h.sim.order_log().len(), 1);
    // A used reply id is gone.
    let (code, _) = h
        .post(
            &format!("/iserver/reply/{first}"),
            json!({"confirmed": true}),
        )
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);

    h.sim
        .update_scenario(|s| s.warning_rounds = vec!["o999".to_owned()]);
    let (_, question) = h.place(json!([mkt("BUY", "1", "warn-2")])).await?;
    assert_eq!(question[0]["messageIds"], json!(["o999"]));
    let third = question[0]["id"].as_str().ok_or("reply id")?.to_owned();
    let (code, declined) = h
        .post(
            &format!("/iserver/reply/{third}"),
            json!({"confirmed": false}),
        )
        .await?;
    assert_eq!(code, StatusCode::OK);
    assert!(declined[0]["error"].is_string());
    assert_eq!(h.sim.order_log().len(), 1);
    assert_eq!(
        h.sim.reply_log(),
        vec![
            (first.clone(), true),
            (second, true),
            (first, true),
            (third, false)
        ]
    );
    let (code, _) = h.post("/iserver/reply/whatever", json!({})).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn a_503_can_hide_a_landed_order() -> TestResult {
    let h = Harness::start(SimScenario {
        fail_with_503_after_landing: 1,
        ..SimScenario::ideal()
    })
    .await?;
    let (code, _) = h.place(json!([mkt("BUY", "2", "land-1")])).await?;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    let log = h.sim.order_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].c_oid.as_deref(), Some("land-1"));
    assert_eq!(log[0].status, SimOrderStatus::Filled);
    assert_eq!(h.sim.scenario().fail_with_503_after_landing, 0);
    let (_, orders) = h
        .get(format!("/iserver/account/orders?accountId={ACCT}"))
        .await?;
    assert_eq!(orders["orders"][0]["order_ref"], "land-1");
    // Resending blindly is refused: the product has to reconcile.
    let (code, body) = h.place(json!([mkt("BUY", "2", "land-1")])).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"],
        "Order couldn't be submitted: Local order ID=land-1 is already registered."
    );
    let (code, _) = h.place(json!([mkt("BUY", "2", "land-2")])).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(h.sim.order_log().len(), 2);
    Ok(())
}

#[tokio::test]
async fn partial_fills_advance_one_slice_per_status_poll() -> TestResult {
    let h = Harness::start(SimScenario {
        partial_fill_steps: 3,
        ..SimScenario::ideal()
    })
    .await?;
    let acks = h.place_ok(json!([mkt("BUY", "10", "part-1")])).await?;
    assert_eq!(acks[0]["order_status"], "Submitted");
    let id = id_of(&acks[0]);
    let mut progress = Vec::new();
    for _ in 0..4 {
        let status = h.status(&id).await?;
        progress.push((
            status["cum_fill"].as_str().unwrap_or_default().to_owned(),
            status["size"].as_str().unwrap_or_default().to_owned(),
            status["order_status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    let expected = [
        ("3", "7", "Submitted"),
        ("6", "4", "Submitted"),
        ("10", "0", "Filled"),
        ("10", "0", "Filled"),
    ];
    let progress: Vec<(&str, &str, &str)> = progress
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(progress, expected);
    let status = h.status(&id).await?;
    assert_eq!(status["average_price"], "189.26");
    assert_eq!(status["side"], "B");
    assert_eq!(status["order_type"], "MARKET");
    assert_eq!(status["tif"], "DAY");
    assert_eq!(status["conid"], AAPL);
    assert_eq!(
        status["order_description_with_contract"],
        "Bought 10 AAPL Market, Day"
    );

    let (code, trades) = h.get("/iserver/account/trades").await?;
    assert_eq!(code, StatusCode::OK);
    let trades = trades.as_array().ok_or("trades")?;
    assert_eq!(trades.len(), 3);
    let sizes: Vec<&Value> = trades.iter().map(|t| &t["size"]).collect();
    assert_eq!(sizes, [&json!(3.0), &json!(3.0), &json!(4.0)]);
    for trade in trades {
        assert!(trade["execution_id"].is_string());
        assert_eq!(trade["symbol"], "AAPL");
        assert_eq!(trade["side"], "B");
        assert_eq!(trade["price"], "189.26");
        assert_eq!(trade["order_ref"], "part-1");
        assert_eq!(trade["conid"], "265598");
        assert!(trade["trade_time_r"].is_i64());
    }
    let (code, body) = h.get("/iserver/account/order/status/42").await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "OrderID 42 doesn't exist");
    Ok(())
}

#[tokio::test]
async fn cancel_answers_come_in_every_shape() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let cancel = |id: &str| h.delete(format!("/iserver/account/{ACCT}/order/{id}"));

    let id = id_of(&h.place_ok(json!([lmt("BUY", 1, "150", "c-1")])).await?[0]);
    assert_eq!(h.status(&id).await?["order_status"], "Submitted");
    let (code, ack) = cancel(&id).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        ack,
        json!({"msg": "Request was submitted", "order_id": id.parse::<u64>()?,
               "conid": AAPL, "account": ACCT})
    );
    assert_eq!(h.status(&id).await?["order_status"], "PendingCancel");
    assert_eq!(h.status(&id).await?["order_status"], "Cancelled");

    h.sim.update_scenario(|s| {
        s.cancel_ack_shape = CancelAckShape::OrderCancelled;
        s.cancel_as_api_cancelled = true;
    });
    let id = id_of(&h.place_ok(json!([lmt("BUY", 1, "150", "c-2")])).await?[0]);
    let (code, ack) = cancel(&id).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ack, json!({"order_id": id, "msg": "Order cancelled"}));
    let (_, listed) = h
        .get(format!(
            "/iserver/account/orders?filters=pending_cancel&accountId={ACCT}"
        ))
        .await?;
    assert_eq!(listed["orders"][0]["orderId"], id.parse::<u64>()?);
    assert_eq!(h.status(&id).await?["order_status"], "ApiCancelled");

    h.sim
        .update_scenario(|s| s.cancel_ack_shape = CancelAckShape::DoesNotExist);
    let id = id_of(&h.place_ok(json!([lmt("BUY", 1, "150", "c-3")])).await?[0]);
    let (code, refused) = cancel(&id).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused,
        json!({"error": format!("OrderID {id} doesn't exist")})
    );
    assert_eq!(h.status(&id).await?["order_status"], "Submitted");

    h.sim
        .update_scenario(|s| s.cancel_ack_shape = CancelAckShape::RequestSubmitted);
    let (code, refused) = cancel("999").await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(refused, json!({"error": "OrderID 999 doesn't exist"}));
    // Forced fill, then a cancel comes too late.
    assert!(h.sim.fill(&id));
    assert!(!h.sim.fill(&id));
    assert_eq!(h.status(&id).await?["order_status"], "Filled");
    let (code, _) = cancel(&id).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn market_hours_park_orders_and_inactive_orders_stay_dead() -> TestResult {
    let h = Harness::start(SimScenario {
        market: MarketHours::Fixed(SessionPhase::Closed),
        ..SimScenario::ideal()
    })
    .await?;
    let id = id_of(&h.place_ok(json!([mkt("BUY", "1", "closed-1")])).await?[0]);
    assert_eq!(h.status(&id).await?["order_status"], "PreSubmitted");
    // Outside regular hours only `outsideRTH` orders execute.
    h.sim
        .update_scenario(|s| s.market = MarketHours::Fixed(SessionPhase::AfterHours));
    assert_eq!(h.status(&id).await?["order_status"], "PreSubmitted");
    let mut extended = mkt("BUY", "1", "closed-2");
    extended["outsideRTH"] = json!(true);
    let extended = id_of(&h.place_ok(json!([extended])).await?[0]);
    assert_eq!(h.status(&extended).await?["order_status"], "Filled");
    h.sim
        .update_scenario(|s| s.market = MarketHours::Fixed(SessionPhase::Regular));
    assert_eq!(h.status(&id).await?["order_status"], "Filled");

    h.sim.update_scenario(|s| s.inactive_orders = true);
    let acks = h.place_ok(json!([mkt("BUY", "1", "dead-1")])).await?;
    assert_eq!(acks[0]["order_status"], "Inactive");
    let id = id_of(&acks[0]);
    let status = h.status(&id).await?;
    assert_eq!(status["order_status"], "Inactive");
    assert_eq!(status["order_ccp_status"], "Pending Submit");
    let (code, refused) = h
        .delete(&format!("/iserver/account/{ACCT}/order/{id}"))
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"], "Order is inactive");
    assert!(h.sim.fill(&id));
    assert_eq!(h.status(&id).await?["order_status"], "Filled");
    Ok(())
}

#[tokio::test]
async fn brackets_release_children_and_cancel_the_other_leg() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let bracket = |tag: &str, entry: &str| {
        json!([
            {"conid": AAPL, "orderType": "LMT", "side": "BUY", "tif": "GTC",
             "quantity": 10, "price": entry, "cOID": tag},
            {"conid": AAPL, "orderType": "LMT", "side": "SELL", "tif": "GTC",
             "quantity": 10, "price": "195", "parentId": tag},
            {"conid": AAPL, "orderType": "STP", "side": "SELL", "tif": "GTC",
             "quantity": 10, "price": "185", "parentId": tag},
        ])
    };
    let acks = h.place_ok(bracket("br-1", "189.30")).await?;
    let statuses: Vec<&Value> = acks.iter().map(|a| &a["order_status"]).collect();
    assert_eq!(
        statuses,
        [
            &json!("Filled"),
            &json!("Submitted"),
            &json!("PreSubmitted")
        ]
    );
    let log = h.sim.order_log();
    assert_eq!(log[1].parent_id.as_deref(), Some("br-1"));
    assert_eq!(log[2].parent_id.as_deref(), Some("br-1"));
    assert_eq!(h.sim.positions()[0].quantity, d("10"));

    h.sim
        .set_price("AAPL", d("195.10"), d("195.09"), d("195.11"));
    let tp = h.status(&id_of(&acks[1])).await?;
    assert_eq!(tp["order_status"], "Filled");
    assert_eq!(tp["average_price"], "195.09");
    assert_eq!(
        h.status(&id_of(&acks[2])).await?["order_status"],
        "Cancelled"
    );
    assert!(h.sim.positions().is_empty());

    // A parent that does not fill holds its children; cancelling it
    // takes them along.
    let acks = h.place_ok(bracket("br-2", "150")).await?;
    let statuses: Vec<&Value> = acks.iter().map(|a| &a["order_status"]).collect();
    assert_eq!(
        statuses,
        [
            &json!("Submitted"),
            &json!("PreSubmitted"),
            &json!("PreSubmitted")
        ]
    );
    let (_, listed) = h
        .get(format!("/iserver/account/orders?accountId={ACCT}"))
        .await?;
    let stop_id = id_of(&acks[2]).parse::<u64>()?;
    let child = listed["orders"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["orderId"] == stop_id))
        .ok_or("child row")?;
    assert!(child.get("order_ref").is_none());
    assert_eq!(child["parentId"], id_of(&acks[0]).parse::<u64>()?);
    assert_eq!(child["auxPrice"], "185.00");
    h.delete(&format!(
        "/iserver/account/{ACCT}/order/{}",
        id_of(&acks[0])
    ))
    .await?;
    for ack in &acks {
        assert_eq!(
            h.status(&id_of(ack)).await?["order_status"],
            "PendingCancel"
        );
        assert_eq!(h.status(&id_of(ack)).await?["order_status"], "Cancelled");
    }
    Ok(())
}

#[tokio::test]
async fn stops_and_trailing_stops_trigger_at_the_touch() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let trail = h
        .place_ok(
            json!([{"conid": AAPL, "orderType": "TRAIL", "side": "SELL", "tif": "GTC",
                          "quantity": 1, "trailingAmt": 1, "trailingType": "amt"}]),
        )
        .await?;
    let trail = id_of(&trail[0]);
    let stop_limit = h
        .place_ok(
            json!([{"conid": AAPL, "orderType": "STOP_LIMIT", "side": "BUY",
                          "tif": "GTC", "quantity": 1, "price": "191.50", "auxPrice": "191"}]),
        )
        .await?;
    let stop_limit = id_of(&stop_limit[0]);
    let prices = [
        ("190.00", "PreSubmitted", "PreSubmitted"),
        ("189.10", "PreSubmitted", "PreSubmitted"),
        ("188.90", "Filled", "PreSubmitted"),
        ("191.20", "Filled", "Filled"),
    ];
    for (last, trail_status, stop_limit_status) in prices {
        let last = d(last);
        let tick = d("0.01");
        assert!(h.sim.set_price("AAPL", last, last - tick, last + tick));
        assert_eq!(
            h.status(&trail).await?["order_status"],
            trail_status,
            "{last}"
        );
        assert_eq!(
            h.status(&stop_limit).await?["order_status"],
            stop_limit_status,
            "{last}"
        );
    }
    // The trail peaked at 190.00, so it sold at the bid once 189.00 broke.
    assert_eq!(h.status(&trail).await?["average_price"], "188.89");
    assert_eq!(h.status(&stop_limit).await?["average_price"], "191.21");
    Ok(())
}
