//! Rejections IBKR documents or clients have seen live, with their texts.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{AAPL, ACCT, Harness, TestResult, d, lmt, mkt};
use crate::cpgw_sim::{AccountType, SimConfig, SimScenario};

#[tokio::test]
async fn ibkr_validation_refuses_bad_tickets() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let base = json!({"conid": AAPL, "side": "BUY", "tif": "DAY"});
    let with = |extra: Value| {
        let mut order = base.clone();
        if let (Some(target), Some(extra)) = (order.as_object_mut(), extra.as_object()) {
            target.extend(extra.clone());
        }
        order
    };
    let refused = [
        // Live rejection texts (reference server DECISIONS.md ADR-007, ADR-011).
        (
            with(json!({"orderType": "MKT", "side": "SELL", "cashQty": 50})),
            "Cash order quantity can not be set for sell order",
        ),
        (
            with(json!({"orderType": "STP", "side": "SELL", "quantity": 1,
                        "price": 180, "auxPrice": 180})),
            "Invalid order price fields",
        ),
        (
            with(json!({"orderType": "STOP_LIMIT", "quantity": 1, "price": 200})),
            "auxPrice",
        ),
        (with(json!({"orderType": "LMT", "quantity": 1})), "price"),
        (
            with(json!({"orderType": "MKT", "quantity": 1, "cashQty": 50})),
            "together",
        ),
        (
            with(json!({"orderType": "MKT", "quantity": 0.12345})),
            "decimals",
        ),
        (with(json!({"orderType": "MKT"})), "quantity"),
        (
            with(json!({"orderType": "TRAIL", "quantity": 1})),
            "trailing",
        ),
        (
            with(json!({"orderType": "MOC", "quantity": 1})),
            "orderType",
        ),
        (
            json!({"conid": 14204, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                   "quantity": 0.5}),
            "Fractional",
        ),
        (
            json!({"conid": 1, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                   "quantity": 1}),
            "conid",
        ),
    ];
    for (order, needle) in refused {
        let (code, body) = h.place(json!([order.clone()])).await?;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{order}");
        let error = body["error"].as_str().ok_or("error text")?;
        assert!(error.contains(needle), "{error} for {order}");
    }
    let (code, _) = h
        .post(
            &format!("/iserver/account/{ACCT}/orders/whatif"),
            json!({"orders": [with(json!({"orderType": "MKT", "side": "SELL", "cashQty": 5}))]}),
        )
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = h
        .post(
            "/iserver/account/U0000000/orders",
            json!({"orders": [mkt("BUY", "1", "other-acct")]}),
        )
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(h.sim.order_log().is_empty());

    // STP takes its trigger in `price`.
    let acks = h
        .place_ok(
            json!([{"conid": AAPL, "orderType": "STP", "side": "SELL", "tif": "GTC",
                          "quantity": 1, "price": 180, "cOID": "stop-1"}]),
        )
        .await?;
    assert_eq!(acks[0]["order_status"], "PreSubmitted");
    let (code, body) = h
        .place(
            json!([{"conid": AAPL, "orderType": "STP", "side": "SELL", "tif": "GTC",
                       "quantity": 1, "price": 170, "cOID": "stop-1"}]),
        )
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"],
        "Order couldn't be submitted: Local order ID=stop-1 is already registered."
    );
    // Duplicates inside one submission and unknown parents are refused too.
    let (code, _) = h
        .place(json!([mkt("BUY", "1", "dup"), mkt("BUY", "1", "dup")]))
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let mut orphan = mkt("SELL", "1", "orphan");
    orphan["parentId"] = json!("nobody");
    let (code, _) = h.place(json!([orphan])).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let log = h.sim.order_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].price.as_deref(), Some("180"));
    assert_eq!(log[0].aux_price, None);
    Ok(())
}

/// TWS API message 110 for prices off the tick: cents from USD 1.00, and
/// hundredths of a cent below (SEC Reg NMS Rule 612).
#[tokio::test]
async fn prices_must_sit_on_the_tick() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let off_tick = "The price does not conform to the minimum price variation for this contract.";
    for order in [
        lmt("BUY", 1, "189.255", "tick-1"),
        json!({"conid": AAPL, "orderType": "STOP_LIMIT", "side": "BUY", "tif": "GTC",
               "quantity": 1, "price": "191.50", "auxPrice": "191.005"}),
        json!({"conid": AAPL, "orderType": "TRAIL", "side": "SELL", "tif": "GTC",
               "quantity": 1, "trailingAmt": "0.125", "trailingType": "amt"}),
    ] {
        let (code, body) = h.place(json!([order.clone()])).await?;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{order}");
        assert_eq!(body["error"], off_tick);
    }
    // A percentage trail is not a price; a sub-dollar stock trades in 0.0001.
    h.place_ok(
        json!([{"conid": AAPL, "orderType": "TRAIL", "side": "SELL", "tif": "GTC",
                       "quantity": 1, "trailingAmt": "0.125", "trailingType": "%"}]),
    )
    .await?;
    assert!(h.sim.set_price("TSLA", d("0.5"), d("0.4999"), d("0.5001")));
    h.place_ok(
        json!([{"conid": 76_792_991, "orderType": "LMT", "side": "BUY", "tif": "GTC",
                       "quantity": 1, "price": "0.4998"}]),
    )
    .await?;
    Ok(())
}

/// IBKR's order reference: `cOID` "must be unique for a 24h span".
#[tokio::test]
async fn a_coid_is_unique_for_24_hours() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    h.place_ok(json!([lmt("BUY", 1, "150", "day-key")])).await?;
    h.advance_secs(24 * 60 * 60 - 1);
    let (code, body) = h.place(json!([lmt("BUY", 1, "150", "day-key")])).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"],
        "Order couldn't be submitted: Local order ID=day-key is already registered."
    );
    h.advance_secs(1);
    h.place_ok(json!([lmt("BUY", 1, "150", "day-key")])).await?;
    Ok(())
}

/// IBKR's order reference for `cOID`: "Please do not set this value for
/// child orders when placing a bracket order"; children carry `parentId`.
#[tokio::test]
async fn bracket_children_must_not_carry_a_coid() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let bracket = |child_coid: Option<&str>| {
        let mut child = json!({"conid": AAPL, "orderType": "LMT", "side": "SELL", "tif": "GTC",
                               "quantity": 1, "price": "195", "parentId": "parent-1"});
        if let Some(c_oid) = child_coid {
            child["cOID"] = json!(c_oid);
        }
        json!([lmt("BUY", 1, "150", "parent-1"), child])
    };
    let (code, body) = h.place(bracket(Some("child-1"))).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap_or_default().contains("child"));
    assert!(h.sim.order_log().is_empty());
    let (code, _) = h
        .whatif(
            json!({"conid": AAPL, "orderType": "LMT", "side": "SELL", "tif": "GTC",
                       "quantity": 1, "price": "195", "parentId": "p", "cOID": "c"}),
        )
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let acks = h.place_ok(bracket(None)).await?;
    assert_eq!(acks.len(), 2);
    // The knob exists for the live report of children with a cOID accepted.
    h.sim.update_scenario(|s| s.reject_child_coid = false);
    let mut second = bracket(Some("child-2"));
    second[0]["cOID"] = json!("parent-2");
    second[1]["parentId"] = json!("parent-2");
    h.place_ok(second).await?;
    Ok(())
}

/// IBKR Knowledge Base: "Short sales are not allowed in "Cash" type
/// accounts", and a margin account needs USD 2,000 of net liquidation.
#[tokio::test]
async fn shorts_need_a_margin_account_with_2000_usd() -> TestResult {
    let h = Harness::start(SimScenario {
        account_type: AccountType::Cash,
        ..SimScenario::ideal()
    })
    .await?;
    h.place_ok(json!([mkt("BUY", "1", "own-1")])).await?;
    let (code, body) = h.place(json!([mkt("SELL", "2", "short-1")])).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"],
        "Short sales are not allowed in \"Cash\" type accounts."
    );
    // Selling what is held is fine.
    h.place_ok(json!([mkt("SELL", "1", "sell-1")])).await?;
    h.sim
        .update_scenario(|s| s.account_type = AccountType::Margin);
    h.place_ok(json!([mkt("SELL", "1", "short-2")])).await?;

    let poor = Harness::start_with(SimConfig {
        scenario: SimScenario::ideal(),
        starting_cash: d("1500"),
        ..SimConfig::default()
    })
    .await?;
    let (code, body) = poor.place(json!([mkt("SELL", "1", "short-3")])).await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap_or_default().contains("2,000"));
    Ok(())
}

#[tokio::test]
async fn ioc_orders_cancel_what_does_not_execute_at_once() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let mut ioc = lmt("BUY", 1, "150", "ioc-1");
    ioc["tif"] = json!("IOC");
    let acks = h.place_ok(json!([ioc])).await?;
    assert_eq!(acks[0]["order_status"], "Cancelled");
    Ok(())
}

/// The documented what-if example (quantity order) and the live capture
/// (cash order) of pedrobraiti/mcp-ibkr-agent.
#[tokio::test]
async fn whatif_answers_in_ibkrs_live_shapes() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let (code, preview) = h.whatif(mkt("BUY", "10", "wi-1")).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        preview["amount"],
        json!({"amount": "1,892.60 USD (10 Shares)", "commission": "1 USD",
               "total": "1,893.60 USD"})
    );
    assert_eq!(
        preview["equity"],
        json!({"current": "100,000", "change": "-1", "after": "99,999"})
    );
    assert_eq!(
        preview["initial"],
        json!({"current": "0", "change": "946", "after": "946"})
    );
    assert_eq!(preview["maintenance"]["change"], "473");
    assert_eq!(
        preview["position"],
        json!({"current": "0", "change": "10", "after": "10"})
    );
    assert_eq!(
        preview["warn"],
        "22/<h4>Market Order Confirmation</h4>&nbsp;A Market Order..."
    );
    assert_eq!(preview["warns"].as_array().map(Vec::len), Some(1));
    assert_eq!(preview["error"], Value::Null);
    assert!(preview.get("data").is_none());

    let (_, cash) = h
        .whatif(
            json!({"conid": AAPL, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                       "cashQty": 2}),
        )
        .await?;
    assert_eq!(
        cash["amount"],
        json!({"amount": "2 USD (0.0105 Shares)", "commission": "0.02 USD",
               "total": "2.02 USD"})
    );
    assert_eq!(
        (&cash["equity"], &cash["initial"]),
        (&Value::Null, &Value::Null)
    );
    assert!(cash.get("maintenance").is_none());
    assert_eq!(
        cash["warns"][1],
        "29/<html><h4>Cash Quantity Order Confirmation</h4> Orders...</html>"
    );
    assert_eq!(
        cash["data"],
        json!([
            {"V": ["0"], "L": "Current Position", "N": "CURRENT_POS"},
            {"V": ["100,000"], "L": "Available Funds", "N": "CURRENT_FUNDS"},
            {"V": ["99,998"], "L": "Post Trade Available Funds*", "N": "AFTER_FUNDS"},
        ])
    );
    let (_, limit) = h.whatif(lmt("BUY", 1, "150", "wi-2")).await?;
    assert_eq!(limit["warn"], Value::Null);
    assert_eq!(limit["warns"], json!([]));
    let (_, too_big) = h
        .whatif(
            json!({"conid": 756733, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                       "quantity": 1000}),
        )
        .await?;
    assert!(too_big["error"].is_string());
    assert!(h.sim.order_log().is_empty());
    let (code, _) = h
        .post(
            format!("/iserver/account/{ACCT}/orders/whatif"),
            json!({"orders": [{"conid": AAPL, "orderType": "MKT", "side": "SELL",
                               "tif": "DAY", "cashQty": 5}]}),
        )
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    Ok(())
}
