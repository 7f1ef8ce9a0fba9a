//! Summary and positions: paging, exact fractions, and the positions lag on
//! the clock (reference server DECISIONS.md ADR-008: cached, "tens of
//! seconds" behind fills, stale zero rows), with `invalidate`.

use std::time::Duration;

use reqwest::StatusCode;
use rust_decimal::RoundingStrategy;
use serde_json::json;

use super::{AAPL, ACCT, Harness, TestResult, d, id_of, mkt};
use crate::cpgw_sim::{SimOrderStatus, SimScenario};

#[tokio::test]
async fn summary_and_positions_page_until_empty() -> TestResult {
    let h = Harness::start(SimScenario {
        positions_page_size: 2,
        ..SimScenario::ideal()
    })
    .await?;
    h.sim
        .set_price("MSFT", d("374.50"), d("374.49"), d("374.51"));
    h.sim
        .set_price("SPY", d("475.30"), d("475.29"), d("475.31"));
    for conid in [AAPL, 272_093, 756_733] {
        h.place_ok(json!([{"conid": conid, "orderType": "MKT", "side": "BUY",
                           "tif": "DAY", "quantity": 1}]))
            .await?;
    }
    let (code, summary) = h.get(&format!("/portfolio/{ACCT}/summary")).await?;
    assert_eq!(code, StatusCode::OK);
    // 100000 - (189.26 + 374.51 + 475.31) - 3 x 1.00 commission.
    assert_eq!(summary["totalcashvalue"]["amount"], json!(98_957.92));
    for key in ["availablefunds", "netliquidation", "buyingpower"] {
        assert!(summary[key]["amount"].is_number(), "{key}");
        assert_eq!(summary[key]["currency"], "USD");
    }
    // Net liquidation marks at last: 189.25 + 374.50 + 475.30.
    assert_eq!(summary["netliquidation"]["amount"], json!(99_996.97));
    assert_eq!(summary["accountcode"]["value"], ACCT);

    let page = |n: usize| h.get(format!("/portfolio/{ACCT}/positions/{n}"));
    let (_, first) = page(0).await?;
    let (_, second) = page(1).await?;
    let (_, past) = page(2).await?;
    let (_, far) = page(50).await?;
    assert_eq!(first.as_array().map(Vec::len), Some(2));
    assert_eq!(second.as_array().map(Vec::len), Some(1));
    assert_eq!(past, json!([]));
    assert_eq!(far, json!([]));
    let aapl = first
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["conid"] == AAPL))
        .ok_or("AAPL row")?;
    assert_eq!(aapl["acctId"], ACCT);
    assert_eq!(aapl["contractDesc"], "AAPL");
    assert_eq!(aapl["position"], json!(1.0));
    assert_eq!(aapl["mktPrice"], json!(189.25));
    assert_eq!(aapl["mktValue"], json!(189.25));
    assert_eq!(aapl["avgCost"], json!(189.26));
    assert_eq!(aapl["avgPrice"], json!(189.26));
    assert_eq!(aapl["unrealizedPnl"], json!(-0.01));
    assert_eq!(aapl["currency"], "USD");
    let (code, invalidated) = h
        .post(
            &format!("/portfolio/{ACCT}/positions/invalidate"),
            json!({}),
        )
        .await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(invalidated["message"], "success");
    let (code, _) = h.get("/portfolio/U0000000/summary").await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn fractional_quantities_round_trip_exactly_and_positions_lag_on_the_clock() -> TestResult {
    let h = Harness::start(SimScenario {
        positions_lag: Duration::from_secs(30),
        ..SimScenario::ideal()
    })
    .await?;
    let acks = h
        .place_ok(
            json!([{"conid": AAPL, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                          "cashQty": 50, "cOID": "frac-1"}]),
        )
        .await?;
    assert_eq!(acks[0]["local_order_id"], "frac-1");
    assert_eq!(acks[0]["order_status"], "Filled");
    let expected = (d("50") / d("189.26")).round_dp_with_strategy(4, RoundingStrategy::ToZero);
    assert_eq!(expected, d("0.2641"));

    let log = h.sim.order_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].cash_qty.as_deref(), Some("50"));
    assert_eq!(log[0].quantity, None);
    assert_eq!(log[0].filled_quantity, "0.2641");
    assert_eq!(log[0].status, SimOrderStatus::Filled);
    let status = h.status(&id_of(&acks[0])).await?;
    assert_eq!(status["cum_fill"], "0.2641");
    assert_eq!(status["total_size"], "0.2641");
    assert_eq!(status["average_price"], "189.26");
    assert_eq!(status["order_status"], "Filled");

    // The truth has it at once; CPGW reports it once 30 s have passed.
    assert_eq!(h.sim.positions()[0].quantity, expected);
    assert!(h.sim.reported_positions().is_empty());
    let positions = format!("/portfolio/{ACCT}/positions/0");
    let summary = format!("/portfolio/{ACCT}/summary");
    assert_eq!(
        h.get(&summary).await?.1["totalcashvalue"]["amount"],
        json!(100_000.0)
    );
    assert_eq!(h.get(&positions).await?.1, json!([]));
    h.advance_secs(29);
    assert_eq!(h.get(&positions).await?.1, json!([]));
    h.advance_secs(1);
    let text = h.get_text(&positions).await?;
    assert!(text.contains("\"position\":0.2641"), "{text}");
    // 50 / 189.26 to 4 dp, at 189.26, plus 1% of the value as commission.
    let cost = expected * d("189.26");
    let fee = (cost / d("100")).round_dp(2);
    let cash = h.get(&summary).await?.1["totalcashvalue"]["amount"].clone();
    assert_eq!(
        cash,
        json!(
            (d("100000") - cost - fee)
                .round_dp(2)
                .to_string()
                .parse::<f64>()?
        )
    );
    assert_eq!(h.sim.cash("USD"), d("100000") - cost - fee);

    // A fractional quantity goes through to the digit.
    let acks = h.place_ok(json!([mkt("SELL", "0.1234", "frac-2")])).await?;
    assert_eq!(h.sim.order_log()[1].quantity.as_deref(), Some("0.1234"));
    assert_eq!(h.status(&id_of(&acks[0])).await?["cum_fill"], "0.1234");
    h.sim.settle_positions();
    assert_eq!(h.sim.reported_positions()[0].quantity, d("0.1407"));
    let text = h.get_text(&positions).await?;
    assert!(text.contains("\"position\":0.1407"), "{text}");
    Ok(())
}

/// `POST /portfolio/{acct}/positions/invalidate` makes the next positions
/// read fresh; without it the default lag (60 s) holds. A closed position
/// keeps a zero row (reference server ADR-008: stale "phantom" entries).
#[tokio::test]
async fn invalidate_makes_the_next_read_fresh_and_closed_positions_linger_at_zero() -> TestResult {
    let h = Harness::start(SimScenario {
        pacing: false,
        ..SimScenario::default()
    })
    .await?;
    assert_eq!(h.sim.scenario().positions_lag, Duration::from_secs(60));
    let positions = format!("/portfolio/{ACCT}/positions/0");
    let invalidate = format!("/portfolio/{ACCT}/positions/invalidate");
    let buy = h.place(json!([mkt("BUY", "3", "inv-1")])).await?.1;
    // The market order is asked its questions first (see tests/questions.rs).
    let mut answer = buy;
    while answer[0].get("messageIds").is_some() {
        answer = h.reply(&answer, true).await?.1;
    }
    assert_eq!(answer[0]["order_status"], "Filled");
    h.advance_secs(10);
    assert_eq!(h.get(&positions).await?.1, json!([]));

    let (code, body) = h.post(&invalidate, json!({})).await?;
    assert_eq!(
        (code, &body["message"]),
        (StatusCode::OK, &json!("success"))
    );
    let (_, fresh) = h.get(&positions).await?;
    assert_eq!(fresh[0]["position"], json!(3.0));

    let mut answer = h.place(json!([mkt("SELL", "3", "inv-2")])).await?.1;
    while answer[0].get("messageIds").is_some() {
        answer = h.reply(&answer, true).await?.1;
    }
    assert!(h.sim.positions().is_empty());
    // Still 3 until the lag passes or another invalidate.
    assert_eq!(h.get(&positions).await?.1[0]["position"], json!(3.0));
    h.advance_secs(60);
    let (_, closed) = h.get(&positions).await?;
    assert_eq!(closed[0]["conid"], AAPL);
    assert_eq!(closed[0]["position"], json!(0.0));
    h.sim
        .update_scenario(|s| s.positions_keep_closed_rows = false);
    assert_eq!(h.get(&positions).await?.1, json!([]));
    Ok(())
}
