//! Order reply messages raised by the order itself, one per round, and the
//! what-if warnings that go with them.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{AAPL, Harness, TestResult, asked, d, lmt, mkt};
use crate::cpgw_sim::SimScenario;

fn scenario() -> SimScenario {
    SimScenario {
        pacing: false,
        ..SimScenario::default()
    }
}

/// Confirms every round; returns the ids asked, in order, and the final answer.
async fn confirm_all(
    h: &Harness,
    first: Value,
) -> Result<(Vec<String>, Value), Box<dyn std::error::Error>> {
    let mut ids = Vec::new();
    let mut answer = first;
    while let Some(message_ids) = answer[0].get("messageIds").and_then(Value::as_array) {
        assert_eq!(message_ids.len(), 1, "one question per round: {answer}");
        ids.push(message_ids[0].as_str().unwrap_or_default().to_owned());
        assert!(answer[0]["message"][0].is_string());
        assert_eq!(answer[0]["isSuppressed"], false);
        let (code, next) = h.reply(&answer, true).await?;
        assert_eq!(code, StatusCode::OK);
        answer = next;
    }
    Ok((ids, answer))
}

#[tokio::test]
async fn market_and_cash_quantity_orders_are_asked_what_ibkr_asks() -> TestResult {
    let h = Harness::start(scenario()).await?;
    let (_, first) = h.place(json!([mkt("BUY", "1", "q-1")])).await?;
    let (ids, ack) = confirm_all(&h, first).await?;
    assert_eq!(ids, ["o10151", "o10153"]);
    assert_eq!(ack[0]["local_order_id"], "q-1");

    // The set the reference server saw live for a BUY MKT with cashQty
    // (o354 aside: this session has market data).
    let (_, first) = h
        .place(
            json!([{"conid": AAPL, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                       "cashQty": 20, "cOID": "q-2"}]),
        )
        .await?;
    assert_eq!(
        first[0]["message"][0],
        "Traders are responsible for understanding cash quantity details, which are provided on a best efforts basis only."
    );
    let (ids, ack) = confirm_all(&h, first).await?;
    assert_eq!(ids, ["o10164", "o10223", "o10151", "o10153"]);
    assert_eq!(ack[0]["order_status"], "Filled");
    assert_eq!(h.sim.order_log().len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_limit_away_from_the_market_is_asked_o163_with_ibkrs_text() -> TestResult {
    let h = Harness::start(scenario()).await?;
    // 150 is 20.7% under the last price of 189.25.
    let (_, question) = h.place(json!([lmt("BUY", 1, "150", "far-1")])).await?;
    assert_eq!(asked(&question), json!(["o163"]));
    assert_eq!(
        question[0]["message"][0],
        "The following order \"BUY 1 AAPL NASDAQ.NMS @ 150.00\" price exceeds \nthe Percentage constraint of 3%.\nAre you sure you want to submit this order?"
    );
    assert!(h.sim.order_log().is_empty());
    let (_, ack) = h.reply(&question, true).await?;
    assert_eq!(ack[0]["order_status"], "Submitted");
    // Within 3% of the last price: no question.
    let (code, ack) = h.place(json!([lmt("BUY", 1, "185", "near-1")])).await?;
    assert_eq!(code, StatusCode::OK);
    assert!(ack[0]["order_id"].is_string(), "{ack}");
    Ok(())
}

#[tokio::test]
async fn stop_orders_are_asked_o10152_and_o403_when_already_crossed() -> TestResult {
    let h = Harness::start(scenario()).await?;
    let stop = |price: &str, c_oid: &str| {
        json!([{"conid": AAPL, "orderType": "STP", "side": "SELL", "tif": "GTC",
                "quantity": 1, "price": price, "cOID": c_oid}])
    };
    let (_, first) = h.place(stop("180", "stop-1")).await?;
    let (ids, _) = confirm_all(&h, first).await?;
    assert_eq!(ids, ["o10152"]);
    // A sell stop above the last price triggers at once.
    let (_, first) = h.place(stop("190", "stop-2")).await?;
    assert_eq!(
        first[0]["message"][0],
        "This order will most likely trigger and fill immediately.\nAre you sure you want to submit this order?"
    );
    let (ids, _) = confirm_all(&h, first).await?;
    assert_eq!(ids, ["o403", "o10152"]);
    let (_, first) = h
        .place(
            json!([{"conid": AAPL, "orderType": "TRAIL", "side": "SELL", "tif": "GTC",
                       "quantity": 1, "trailingAmt": 1, "trailingType": "amt", "cOID": "trail-1"}]),
        )
        .await?;
    assert_eq!(confirm_all(&h, first).await?.0, ["o10152"]);
    Ok(())
}

#[tokio::test]
async fn without_market_data_every_order_is_asked_o354_first() -> TestResult {
    let h = Harness::start(SimScenario {
        market_data_subscribed: false,
        ..scenario()
    })
    .await?;
    let (_, first) = h.place(json!([lmt("BUY", 1, "185", "nmd-1")])).await?;
    assert_eq!(
        first[0]["message"][0],
        "You are submitting an order without market data. We strongly recommend against this as it may result in erroneous and unexpected trades. Are you sure you want to submit this order?"
    );
    assert_eq!(confirm_all(&h, first).await?.0, ["o354"]);
    let (_, preview) = h.whatif(lmt("BUY", 1, "185", "nmd-2")).await?;
    let warn = preview["warn"].as_str().ok_or("warn")?;
    assert!(warn.starts_with("21/You are trying to submit an order without having market data"));
    assert_eq!(preview["warns"][0], warn);
    Ok(())
}

#[tokio::test]
async fn selling_more_than_the_position_is_asked_o2137() -> TestResult {
    let h = Harness::start(SimScenario {
        order_warnings: false,
        ..scenario()
    })
    .await?;
    h.place_ok(json!([mkt("BUY", "2", "hold-1")])).await?;
    h.sim.update_scenario(|s| s.order_warnings = true);
    let (_, first) = h.place(json!([lmt("SELL", 3, "189", "over-1")])).await?;
    assert_eq!(
        first[0]["message"][0],
        "The closing order quantity is greater than your current position."
    );
    assert_eq!(confirm_all(&h, first).await?.0, ["o2137"]);
    assert_eq!(h.sim.positions()[0].quantity, d("-1"));
    // Covering exactly the short asks nothing.
    let (_, ack) = h.place(json!([lmt("BUY", 1, "190", "exact-1")])).await?;
    assert!(ack[0]["order_id"].is_string(), "{ack}");
    assert!(h.sim.positions().is_empty());
    Ok(())
}

#[tokio::test]
async fn forced_rounds_come_first_and_a_decline_places_nothing() -> TestResult {
    let h = Harness::start(SimScenario {
        warning_rounds: vec!["o999".to_owned()],
        ..scenario()
    })
    .await?;
    let (_, first) = h.place(json!([mkt("BUY", "1", "dec-1")])).await?;
    assert_eq!(asked(&first), json!(["o999"]));
    let (_, second) = h.reply(&first, true).await?;
    assert_eq!(asked(&second), json!(["o10151"]));
    let (code, declined) = h.reply(&second, false).await?;
    assert_eq!(code, StatusCode::OK);
    assert!(declined[0]["error"].is_string());
    assert!(h.sim.order_log().is_empty());
    Ok(())
}
