//! Quotes shared between agents: calls for the same symbol at the same moment cost one CPGW
//! snapshot request, a young answer is reused and says its age, and order guards still ask CPGW
//! for a fresh quote.

use crate::trading_support::{TRADING_SCOPES, call, code, dec, ok, trading_system_with};
use e2e::system::{System, SystemOptions};
use futures_util::future::join_all;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

/// Snapshot requests the simulator received since its log was last cleared.
fn snapshot_requests(system: &System) -> usize {
    system
        .sim
        .request_log()
        .iter()
        .filter(|request| request.path.ends_with("/iserver/marketdata/snapshot"))
        .count()
}

/// A trading system whose sidecar reuses quotes for `quote_max_age_ms`, with CPGW answering
/// prices on a conid's first snapshot (no warm-up round), so one quote is one request.
async fn system_reusing_quotes_for(quote_max_age_ms: u64) -> System {
    let system = trading_system_with(SystemOptions {
        quote_max_age_ms: Some(quote_max_age_ms),
        ..SystemOptions::default()
    })
    .await;
    system.sim.update_scenario(|s| s.snapshot_warmup = false);
    system
}

fn age_ms(quote: &Value) -> u64 {
    quote["age_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer age_ms: {quote}"))
}

/// Sixteen agents ask for the same quote at once: CPGW sees one snapshot request, and every
/// agent gets the price. A long max age keeps the calls that arrive after the answer on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_quotes_of_one_symbol_cost_one_snapshot_request() {
    let system = system_reusing_quotes_for(10_000).await;
    system.sim.clear_request_log();
    let token = system.token(TRADING_SCOPES).unwrap();
    let client = system.mcp_client(&token).await.unwrap();
    let calls = (0..16).map(|_| {
        let arguments = json!({"symbol": "AAPL"}).as_object().unwrap().clone();
        client.call_tool(CallToolRequestParams::new("ibkr_quote").with_arguments(arguments))
    });
    let results = join_all(calls).await;
    let _ = client.cancel().await;
    let lasts: Vec<Value> = results
        .iter()
        .map(|result| ok(result.as_ref().unwrap())["last"].clone())
        .collect();
    assert!(
        lasts
            .iter()
            .all(|last| *last == lasts[0] && last.is_string())
    );
    assert_eq!(snapshot_requests(&system), 1);
    system.shutdown().await;
}

/// A quote within the max age costs no CPGW request and says how old it is; the watchlist
/// asks only for the symbols it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_quote_is_reused_and_says_its_age() {
    let system = system_reusing_quotes_for(10_000).await;
    let first = ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    assert_eq!(age_ms(&first), 0, "{first}");
    system.sim.clear_request_log();

    let again = ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    assert_eq!(snapshot_requests(&system), 0);
    assert_eq!(again["last"], first["last"]);
    assert!(age_ms(&again) <= 10_000, "{again}");

    let list = ok(&call(&system, "ibkr_quotes", json!({"symbols": ["AAPL", "MSFT"]})).await);
    let log = system.sim.request_log();
    let asked: Vec<&str> = log
        .iter()
        .filter(|request| request.path.ends_with("/iserver/marketdata/snapshot"))
        .filter_map(|request| request.query.as_deref())
        .collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].contains("272093") && !asked[0].contains("265598"),
        "{asked:?}"
    );
    let rows = list["quotes"].as_array().unwrap();
    assert_eq!(rows[0]["symbol"], "AAPL");
    assert_eq!(rows[0]["last"], first["last"]);
    assert_eq!(age_ms(&rows[1]), 0, "{list}");
    system.shutdown().await;
}

/// With `quote_max_age_ms: 0` every quote asks CPGW.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reuse_off_each_quote_asks_cpgw() {
    let system = system_reusing_quotes_for(0).await;
    ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    system.sim.clear_request_log();
    for n in 1..=3 {
        let quote = ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
        assert_eq!(age_ms(&quote), 0, "{quote}");
        assert_eq!(snapshot_requests(&system), n);
    }
    system.shutdown().await;
}

/// An order guard never uses a reused quote: with AAPL's read quote kept at 200 USD, the price
/// moves to 300 USD, and a 0.4-share buy is valued at the fresh price (120 USD, over the
/// 100 USD cap) while the read tool still answers the kept quote with its age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_guard_asks_cpgw_for_a_fresh_quote() {
    let system = system_reusing_quotes_for(10_000).await;
    let kept = ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    assert_eq!(dec(kept["last"].as_str().unwrap()), dec("200"), "{kept}");
    system
        .sim
        .set_price("AAPL", dec("300.00"), dec("299.98"), dec("300.02"));
    system.sim.clear_request_log();

    let buy = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": "0.4"}),
    )
    .await;
    assert_eq!(code(&buy), "ORDER_VALUE_CAP_EXCEEDED", "{buy:?}");
    assert_eq!(snapshot_requests(&system), 1);

    let read = ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    assert_eq!(read["last"], kept["last"], "{read}");
    assert_eq!(snapshot_requests(&system), 1);
    system.shutdown().await;
}
