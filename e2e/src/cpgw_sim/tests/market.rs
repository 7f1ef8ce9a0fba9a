//! Contract search, snapshots (with their pre-flight) and bars.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{AAPL, Harness, TestResult};
use crate::cpgw_sim::{SimConfig, SimScenario};

/// IBKR Web API documentation, "Top-of-Book Snapshots": the first request
/// for a conid is a pre-flight that answers only `conid`/`conidEx`; fields
/// asked once are delivered on every later request, even without `fields`.
#[tokio::test]
async fn snapshot_needs_a_pre_flight_per_conid_and_field() -> TestResult {
    let h = Harness::start(SimScenario::default()).await?;
    let url = "/iserver/marketdata/snapshot?conids=265598,272093,1&fields=31,84,86";
    let (code, first) = h.get(url).await?;
    assert_eq!(code, StatusCode::OK);
    // The unknown conid 1 is simply left out; the pre-flight rows carry
    // nothing but the conid, as in IBKR's example.
    assert_eq!(
        first,
        json!([{"conid": 265598, "conidEx": "265598"}, {"conid": 272093, "conidEx": "272093"}])
    );
    let (_, second) = h.get("/iserver/marketdata/snapshot?conids=265598").await?;
    assert_eq!(second[0]["conid"], AAPL);
    assert_eq!(
        (&second[0]["31"], &second[0]["84"], &second[0]["86"]),
        (&json!("189.25"), &json!("189.24"), &json!("189.26"))
    );
    assert!(second[0]["_updated"].is_i64());
    assert_eq!(second[0]["6509"], "RpB");
    // A field first asked now is not delivered yet.
    let (_, third) = h
        .get("/iserver/marketdata/snapshot?conids=265598&fields=55")
        .await?;
    assert!(third[0].get("55").is_none(), "{third}");
    assert_eq!(third[0]["31"], "189.25");
    let (_, fourth) = h.get("/iserver/marketdata/snapshot?conids=265598").await?;
    assert_eq!(fourth[0]["55"], "AAPL");

    for prefix in ['C', 'H'] {
        h.sim.update_scenario(|s| s.price_prefix = Some(prefix));
        let (_, prefixed) = h.get(url).await?;
        assert_eq!(prefixed[0]["31"], format!("{prefix}189.25"));
        assert_eq!(prefixed[0]["84"], "189.24");
    }

    // A new brokerage session needs new pre-flights (5 s later: pacing allows
    // one /portfolio/accounts per 5 s).
    h.advance_secs(5);
    h.new_session().await?;
    let (_, again) = h.get(url).await?;
    assert!(again[0].get("31").is_none());
    h.sim.update_scenario(|s| s.snapshot_warmup = false);
    let (_, at_once) = h
        .get("/iserver/marketdata/snapshot?conids=756733&fields=31,55")
        .await?;
    assert!(at_once[0]["31"].is_string());
    assert_eq!(at_once[0]["55"], "SPY");
    assert!(at_once[0].get("84").is_none());
    Ok(())
}

#[tokio::test]
async fn contract_search_lists_listings_in_cpgw_order() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let (code, body) = h
        .get("/trsrv/stocks?symbols=AAPL,MSFT,SPY,TSLA,SAP,SHEL,NOPE")
        .await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body["AAPL"],
        json!([{"name": "APPLE INC", "chineseName": null, "assetClass": "STK",
                "contracts": [{"conid": 265598, "exchange": "NASDAQ", "isUS": true}]}])
    );
    assert_eq!(body["MSFT"][0]["contracts"][0]["conid"], 272_093);
    assert_eq!(
        body["SPY"][0]["contracts"],
        json!([{"conid": 756733, "exchange": "ARCA", "isUS": true}])
    );
    assert_eq!(body["TSLA"][0]["contracts"][0]["conid"], 76_792_991);
    assert_eq!(
        body["SAP"][0]["contracts"],
        json!([{"conid": 14204, "exchange": "IBIS", "isUS": false}])
    );
    let shel = body["SHEL"][0]["contracts"]
        .as_array()
        .ok_or("SHEL contracts")?;
    assert_eq!(shel.len(), 2);
    assert_eq!(
        (&shel[0]["exchange"], &shel[0]["isUS"]),
        (&json!("LSE"), &json!(false))
    );
    assert_eq!(
        (&shel[1]["exchange"], &shel[1]["isUS"]),
        (&json!("NYSE"), &json!(true))
    );
    assert!(body.get("NOPE").is_none());
    let (code, _) = h.get("/trsrv/stocks").await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn prices_walk_deterministically_from_the_seed() -> TestResult {
    async fn walk(seed: u64) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
        let h = Harness::start_with(SimConfig {
            seed,
            scenario: SimScenario::ideal(),
            ..SimConfig::default()
        })
        .await?;
        let mut seen = Vec::new();
        for _ in 0..20 {
            let (_, rows) = h
                .get("/iserver/marketdata/snapshot?conids=272093,265598&fields=31,84,86")
                .await?;
            seen.push(rows[0]["31"].clone());
            // AAPL is pinned by the harness and never moves.
            assert_eq!(rows[1]["31"], "189.25");
        }
        Ok(seen)
    }
    let a = walk(7).await?;
    assert_eq!(a, walk(7).await?);
    assert_ne!(a, walk(8).await?);
    assert!(a.windows(2).any(|pair| pair[0] != pair[1]), "{a:?}");
    Ok(())
}

#[tokio::test]
async fn history_bars_are_deterministic_numbers() -> TestResult {
    let h = Harness::start(SimScenario::ideal()).await?;
    let url = "/iserver/marketdata/history?conid=265598&period=1m&bar=1d";
    let (code, body) = h.get(url).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["symbol"], "AAPL");
    let data = body["data"].as_array().ok_or("data")?;
    assert_eq!(data.len(), 30);
    for pair in data.windows(2) {
        let step = pair[1]["t"].as_i64().ok_or("t")? - pair[0]["t"].as_i64().ok_or("t")?;
        assert_eq!(step, 86_400_000);
    }
    for bar in data {
        for key in ["o", "h", "l", "c", "v"] {
            assert!(bar[key].is_number(), "{key} in {bar}");
        }
        let (h_, l_) = (bar["h"].as_f64().ok_or("h")?, bar["l"].as_f64().ok_or("l")?);
        assert!(h_ >= bar["o"].as_f64().ok_or("o")? && l_ <= bar["c"].as_f64().ok_or("c")?);
    }
    assert_eq!(h.get(url).await?.1, body);
    let (_, hourly) = h
        .get("/iserver/marketdata/history?conid=265598&period=1w&bar=1h")
        .await?;
    assert_eq!(hourly["data"].as_array().map(Vec::len), Some(168));
    let (code, _) = h
        .get("/iserver/marketdata/history?conid=265598&period=1m&bar=fortnight")
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = h
        .get("/iserver/marketdata/history?conid=1&period=1m&bar=1d")
        .await?;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    Ok(())
}
