//! Orders with real money at stake, end to end (a real MCP client -> the gateway -> the relay
//! -> the sidecar -> the CPGW simulator over HTTPS), against the behaviours of the real CPGW
//! that decide these cases: positions that lag fills, order lists that come back empty, 503s
//! that hide a landed order, pacing limits. Every test ends with no 429 from the simulator
//! (`System::shutdown` checks it).

use crate::trading_support::*;
use e2e::system::{System, SystemOptions};
use ibkr_agent::trading::policy::TradingSection;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn live_trading() -> TradingSection {
    TradingSection {
        dry_run: false,
        duplicate_window_seconds: 0,
        ..TradingSection::default()
    }
}

/// The true signed position in `symbol` at the simulated broker (every fill applied).
fn held(system: &System, symbol: &str) -> Decimal {
    system
        .sim
        .positions()
        .iter()
        .filter(|position| position.symbol == symbol)
        .map(|position| position.quantity)
        .sum()
}

/// Buys `quantity` AAPL at market and lets the broker's positions show it.
async fn hold_aapl(system: &System, quantity: &str) {
    let bought = ok(&call(
        system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": quantity}),
    )
    .await);
    assert_eq!(bought["status"], "sent", "{bought}");
    system.sim.settle_positions();
    assert_eq!(held(system, "AAPL"), dec(quantity));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_closes_inside_the_positions_lag_sell_once_and_never_short() {
    let system = trading_system(TradingSection {
        max_order_value: "1000".into(),
        ..live_trading()
    })
    .await;
    hold_aapl(&system, "1").await;
    // IBKR's positions keep showing the share for tens of seconds after it is sold, even
    // after an invalidate (reported live by the reference server).
    system
        .sim
        .update_scenario(|s| s.positions_invalidate_refreshes = false);
    let first = ok(&call(&system, "ibkr_close_position", json!({"symbol": "AAPL"})).await);
    assert_eq!(first["status"], "sent", "{first}");
    assert_eq!(held(&system, "AAPL"), Decimal::ZERO);
    // The broker still reports the share; the second close is refused, however long after the
    // duplicate window it comes (the window is 0 here).
    let reported: Decimal = system
        .sim
        .reported_positions()
        .iter()
        .filter(|p| p.symbol == "AAPL")
        .map(|p| p.quantity)
        .sum();
    assert_eq!(reported, Decimal::ONE, "the lag is not in effect");
    let second = call(&system, "ibkr_close_position", json!({"symbol": "AAPL"})).await;
    assert_eq!(code(&second), "ORDER_EXCEEDS_SELLABLE");
    assert_eq!(
        held(&system, "AAPL"),
        Decimal::ZERO,
        "the position went short"
    );
    let sells = system
        .sim
        .order_log()
        .iter()
        .filter(|order| order.side == "SELL")
        .count();
    assert_eq!(sells, 1);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_a_trailing_stop_and_a_market_sell_never_sell_more_than_is_held() {
    let system = trading_system(TradingSection {
        max_order_value: "1000".into(),
        ..live_trading()
    })
    .await;
    hold_aapl(&system, "1").await;
    let stop = ok(&call(
        &system,
        "ibkr_stop_order",
        json!({"symbol": "AAPL", "side": "SELL", "quantity": "1", "stop_price": "190"}),
    )
    .await);
    assert_eq!(stop["status"], "sent", "{stop}");
    let stop_id = stop["order_id"].as_str().unwrap().to_string();
    // The GTC stop commits the one share: a trailing stop and a market sell for it are refused,
    // and the refusal names the order to cancel.
    let trailing = call(
        &system,
        "ibkr_trailing_stop",
        json!({"symbol": "AAPL", "side": "SELL", "quantity": "1", "trail_percent": "5"}),
    )
    .await;
    assert_eq!(code(&trailing), "ORDER_EXCEEDS_SELLABLE");
    let detail = trailing.structured_content.as_ref().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains(&stop_id), "{detail}");
    let market = call(
        &system,
        "ibkr_sell",
        json!({"symbol": "AAPL", "quantity": "1"}),
    )
    .await;
    assert_eq!(code(&market), "ORDER_EXCEEDS_SELLABLE");
    // The price falls through the stop: one share sold, never two.
    system
        .sim
        .set_price("AAPL", dec("150.00"), dec("149.98"), dec("150.02"));
    // (The simulator triggers the stop on the new price, or fills it now.)
    let _ = system.sim.fill(&stop_id);
    assert_eq!(held(&system, "AAPL"), Decimal::ZERO);
    assert_eq!(
        system
            .sim
            .order_log()
            .iter()
            .filter(|o| o.side == "SELL")
            .count(),
        1
    );
    // Cancelling the stop frees the share for another exit (before it filled).
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_stays_unresolved_against_an_empty_broker_until_the_owner_settles_it() {
    let system = trading_system(TradingSection {
        max_daily_value: Some("100".into()),
        ..live_trading()
    })
    .await;
    // The 503 came before the order reached IBKR: the broker will never show it.
    system
        .sim
        .update_scenario(|s| s.fail_with_503_before_landing = 1);
    let first = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "40", "idempotency_key": "owner-1"}),
    )
    .await;
    assert_eq!(code(&first), "ORDER_OUTCOME_UNKNOWN");
    assert!(system.sim.order_log().is_empty());

    // Reconcile finds nothing, which proves nothing: still unresolved, counted and blocking.
    let reconciled = ok(&call(&system, "ibkr_reconcile_pending", json!({})).await);
    assert_eq!(reconciled["still_pending"], 1, "{reconciled}");
    assert_eq!(
        reconciled["reconciled"][0]["placed"],
        Value::Null,
        "{reconciled}"
    );
    let posture = ok(&call(&system, "ibkr_session_status", json!({})).await)["posture"].clone();
    assert_eq!(posture["unresolved_orders"], 1, "{posture}");
    assert_eq!(posture["spent_today"], "40", "{posture}");
    let blocked = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "10"}),
    )
    .await;
    assert_eq!(code(&blocked), "ORDER_UNRESOLVED_PENDING");

    // The owner checks with the broker and settles it on the laptop; the running daemon
    // journals the decision.
    let attempt = reconciled["reconciled"][0]["attempt_id"].as_u64().unwrap();
    let state_dir = system.sidecar_state_dir().to_path_buf();
    let settled = tokio::task::spawn_blocking(move || {
        let store = ibkr_agent::StateStore::open(&state_dir).unwrap();
        ibkr_agent::owner::submit(
            &state_dir,
            &store,
            &ibkr_agent::owner::OwnerRequest::Settle {
                attempt,
                placed: false,
                note: Some("checked in TWS: no such order".into()),
                by: "owner".into(),
                via: "cli".into(),
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(settled["status"], "settled_not_placed");
    let history = ok(&call(&system, "ibkr_trade_history", json!({})).await);
    let settled_attempt = history["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["attempt_id"].as_u64() == Some(attempt))
        .unwrap()
        .clone();
    assert_eq!(settled_attempt["status"], "settled_not_placed", "{history}");
    let outcome = &settled_attempt["outcome"];
    assert_eq!(outcome["by"], "owner", "{history}");
    assert_eq!(outcome["via"], "cli");
    assert_eq!(outcome["note"], "checked in TWS: no such order");
    let posture = ok(&call(&system, "ibkr_session_status", json!({})).await)["posture"].clone();
    assert_eq!(posture["unresolved_orders"], 0, "{posture}");
    assert_eq!(posture["spent_today"], "0", "{posture}");
    // Unblocked; the same key may now place it, once, under a new client order id.
    let retried = ok(&call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "40", "idempotency_key": "owner-1"}),
    )
    .await);
    assert_eq!(retried["status"], "sent", "{retried}");
    assert_eq!(system.sim.order_log().len(), 1);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_buys_never_take_the_day_above_its_cap() {
    let system = trading_system_with(SystemOptions {
        trading: TradingSection {
            max_daily_value: Some("100".into()),
            ..live_trading()
        },
        max_concurrent_calls: Some(64),
        // Fifty agents, each with its own MCP client (a POST and an event stream apiece), all
        // from 127.0.0.1: room for them all, so the race under test is the cap's.
        max_connections_per_peer: Some(256),
        // Each parallel agent holds its own MCP session.
        max_sessions_per_user: Some(256),
        ..SystemOptions::default()
    })
    .await;
    let token = system.token(TRADING_SCOPES).unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..50 {
        let client = system.mcp_client(&token).await.unwrap();
        calls.spawn(async move {
            // 30.00 to 30.49 USD: any four of them are above the cap.
            let cash = format!("30.{n:02}");
            let mut params = rmcp::model::CallToolRequestParams::new("ibkr_buy".to_string());
            params = params.with_arguments(
                json!({"symbol": "AAPL", "cash_amount": cash})
                    .as_object()
                    .unwrap()
                    .clone(),
            );
            let result = client.call_tool(params).await.unwrap();
            let _ = client.cancel().await;
            result
        });
    }
    let mut sent = 0;
    while let Some(result) = calls.join_next().await {
        if result.unwrap().is_error != Some(true) {
            sent += 1;
        }
    }
    let spent: Decimal = system
        .sim
        .order_log()
        .iter()
        .filter_map(|order| order.cash_qty.as_deref().map(dec))
        .sum();
    assert!(spent <= dec("100"), "spent {spent} above the cap");
    assert_eq!(sent, 3, "three of about 30 USD fit in 100");
    assert_eq!(system.sim.order_log().len(), 3);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_unknown_outcome_a_repriced_order_waits_for_the_reconcile() {
    let system = trading_system(TradingSection {
        max_order_value: "1000".into(),
        ..live_trading()
    })
    .await;
    system
        .sim
        .update_scenario(|s| s.fail_with_503_after_landing = 1);
    let first = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": "1", "limit_price": "200.10"}),
    )
    .await;
    assert_eq!(code(&first), "ORDER_OUTCOME_UNKNOWN");
    // One cent more: the same instrument and side, refused.
    let repriced = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": "1", "limit_price": "200.11"}),
    )
    .await;
    assert_eq!(code(&repriced), "ORDER_UNRESOLVED_PENDING");
    assert_eq!(system.sim.order_log().len(), 1);
    // The reconcile finds the landed order (the broker's lists fill after their pre-flight
    // reads); then the re-priced order may go.
    let reconciled = ok(&call(&system, "ibkr_reconcile_pending", json!({})).await);
    assert_eq!(reconciled["reconciled"][0]["placed"], true, "{reconciled}");
    let now = ok(&call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": "1", "limit_price": "200.11"}),
    )
    .await);
    assert_eq!(now["status"], "sent", "{now}");
    assert_eq!(system.sim.order_log().len(), 2);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_binds_its_arguments_and_a_definite_failure_may_be_retried() {
    let system = trading_system(live_trading()).await;
    let buy = json!({"symbol": "AAPL", "cash_amount": "20", "idempotency_key": "k-bound"});
    assert_eq!(
        ok(&call(&system, "ibkr_buy", buy.clone()).await)["status"],
        "sent"
    );
    // The same key for another order: refused, nothing sent.
    let other = call(
        &system,
        "ibkr_sell",
        json!({"symbol": "AAPL", "quantity": "1", "idempotency_key": "k-bound"}),
    )
    .await;
    assert_eq!(code(&other), "IDEMPOTENCY_KEY_REUSED");
    let more = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "21", "idempotency_key": "k-bound"}),
    )
    .await;
    assert_eq!(code(&more), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(system.sim.order_log().len(), 1);

    // A definite failure (the broker session needed a login: nothing was sent) can be retried
    // with the same key, and places the order once.
    system
        .sim
        .set_auth_state(e2e::cpgw_sim::AuthState::LoggedOut);
    let retry = json!({"symbol": "AAPL", "cash_amount": "25", "idempotency_key": "k-retry"});
    let failed = call(&system, "ibkr_buy", retry.clone()).await;
    assert_eq!(failed.is_error, Some(true));
    assert_eq!(system.sim.order_log().len(), 1);
    system
        .sim
        .set_auth_state(e2e::cpgw_sim::AuthState::LoggedIn);
    let placed = ok(&call(&system, "ibkr_buy", retry.clone()).await);
    assert_eq!(placed["status"], "sent", "{placed}");
    let again = ok(&call(&system, "ibkr_buy", retry).await);
    assert_eq!(again["replayed"], true);
    assert_eq!(system.sim.order_log().len(), 2);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bracket_level_violation_is_refused_with_its_own_message() {
    let system = trading_system(TradingSection {
        max_order_value: "1000".into(),
        ..live_trading()
    })
    .await;
    // Market: last 200.00, bid 199.98, ask 200.02.
    let cases = [
        // take-profit not above the entry limit
        json!({"entry_limit_price": "195", "take_profit": "195", "stop_loss": "190"}),
        // stop-loss not below the entry limit
        json!({"entry_limit_price": "195", "take_profit": "199", "stop_loss": "196"}),
        // take-profit below the market, market entry: it would fill at once
        json!({"take_profit": "199", "stop_loss": "190"}),
        // stop-loss above the market, marketable limit entry: it would trigger at once
        json!({"entry_limit_price": "205", "take_profit": "210", "stop_loss": "201"}),
    ];
    let mut messages = Vec::new();
    for levels in cases {
        let mut arguments = json!({"symbol": "AAPL", "quantity": "1"});
        for (key, value) in levels.as_object().unwrap() {
            arguments[key] = value.clone();
        }
        let refused = call(&system, "ibkr_bracket_order", arguments).await;
        assert_eq!(code(&refused), "ORDER_BRACKET_LEVELS_INVALID");
        messages.push(
            refused.structured_content.as_ref().unwrap()["error"]["message"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    messages.sort();
    messages.dedup();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(system.sim.order_log().is_empty());
    // Consistent levels go through, children without a cOID of their own.
    let placed = ok(&call(
        &system,
        "ibkr_bracket_order",
        json!({"symbol": "AAPL", "quantity": "1", "entry_limit_price": "195",
               "take_profit": "210", "stop_loss": "190"}),
    )
    .await);
    assert_eq!(placed["status"], "sent", "{placed}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_fill_answers_before_the_relay_deadline() {
    let system = trading_system_with(SystemOptions {
        trading: TradingSection {
            max_order_value: "1000".into(),
            ..live_trading()
        },
        request_timeout_seconds: Some(6),
        ..SystemOptions::default()
    })
    .await;
    // A limit far below the market rests.
    let resting = ok(&call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": "1", "limit_price": "150"}),
    )
    .await);
    let order_id = resting["order_id"].as_str().unwrap().to_string();
    // The gateway gives up on a call after 6 s (REQUEST_TIMEOUT, an error); the wait answers
    // a status instead, before that.
    let waited = ok(&call(
        &system,
        "ibkr_wait_for_fill",
        json!({"order_id": order_id, "timeout_seconds": 600}),
    )
    .await);
    assert_eq!(waited["timed_out"], true, "{waited}");
    assert_eq!(waited["terminal"], false);
    assert_eq!(waited["status"], "Submitted", "{waited}");
    system.shutdown().await;
}

/// Live trading with room for a 2-share position, and for many agents of one user calling at
/// once from 127.0.0.1 (each with its own MCP session; see the fifty-buys test).
fn many_agents_trading_live() -> SystemOptions {
    SystemOptions {
        trading: TradingSection {
            max_order_value: "1000".into(),
            ..live_trading()
        },
        max_concurrent_calls: Some(64),
        max_connections_per_peer: Some(256),
        max_sessions_per_user: Some(256),
        ..SystemOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reads_and_a_reconcile_of_ten_stay_within_pacing_and_an_exit_still_goes() {
    let mut system = trading_system_with(many_agents_trading_live()).await;
    hold_aapl(&system, "2").await;
    // Ten attempts whose outcome is unknown: what a sidecar stopped after journaling their
    // intents leaves behind.
    system.take_sidecar().unwrap().stop().await;
    {
        let journal =
            ibkr_agent::trading::journal::Journal::open_in(system.sidecar_state_dir()).unwrap();
        let now = ibkr_agent::trading::now_ms();
        for n in 0..10 {
            let coid = format!("ia-crashed-{n}");
            journal
                .intent(
                    json!({"tool": "ibkr_buy", "symbol": "MSFT", "conid": 272093, "side": "BUY",
                           "notional": "5", "dry_run": false, "coid": coid,
                           "legs": [{"leg": "order", "side": "BUY", "quantity": "1",
                                     "coid": coid}]}),
                    now,
                )
                .unwrap();
        }
    }
    system.start_sidecar().await.unwrap();
    let posture = ok(&call(&system, "ibkr_session_status", json!({})).await)["posture"].clone();
    assert_eq!(posture["unresolved_orders"], 10, "{posture}");
    let token = system.token(TRADING_SCOPES).unwrap();
    let mut reads = tokio::task::JoinSet::new();
    for n in 0..30 {
        let client = system.mcp_client(&token).await.unwrap();
        reads.spawn(async move {
            let tool = ["ibkr_quote", "ibkr_positions_list", "ibkr_orders_list"][n % 3];
            let mut params = rmcp::model::CallToolRequestParams::new(tool.to_string());
            if tool == "ibkr_quote" {
                params =
                    params.with_arguments(json!({"symbol": "AAPL"}).as_object().unwrap().clone());
            }
            let result = client.call_tool(params).await.unwrap();
            let _ = client.cancel().await;
            result
        });
    }
    let reconcile = {
        let client = system.mcp_client(&token).await.unwrap();
        tokio::spawn(async move {
            let result = client
                .call_tool(rmcp::model::CallToolRequestParams::new(
                    "ibkr_reconcile_pending".to_string(),
                ))
                .await
                .unwrap();
            let _ = client.cancel().await;
            result
        })
    };
    // An exit in the middle of the burst is sent.
    let exit = ok(&call(
        &system,
        "ibkr_sell",
        json!({"symbol": "AAPL", "quantity": "1"}),
    )
    .await);
    assert_eq!(exit["status"], "sent", "{exit}");
    while let Some(read) = reads.join_next().await {
        read.unwrap();
    }
    let reconciled = ok(&reconcile.await.unwrap());
    assert_eq!(
        reconciled["reconciled"].as_array().map(Vec::len),
        Some(10),
        "{reconciled}"
    );
    assert_eq!(
        system.sim.pacing().rejected_total,
        0,
        "{:?}",
        system.sim.pacing()
    );
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_for_an_account_that_is_not_pinned_is_refused_before_anything_is_sent() {
    let system = trading_system(TradingSection {
        account_ids: vec!["DU7777777".into()],
        ..live_trading()
    })
    .await;
    let refused = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "10"}),
    )
    .await;
    assert_eq!(code(&refused), "ORDER_ACCOUNT_NOT_PINNED");
    assert!(system.sim.order_log().is_empty());
    system.shutdown().await;
}

/// Many calls that need a primed session, arriving together in a new broker session, prime it
/// once: the priming query (`GET /portfolio/accounts`, one per 6 s) sent by each of them queued
/// them 6 s apart, in the trading lane, and an exit behind them waited half a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_arriving_together_prime_a_new_broker_session_once() {
    let system = trading_system_with(many_agents_trading_live()).await;
    hold_aapl(&system, "2").await;
    // A new brokerage session: nothing is primed.
    system
        .sim
        .set_auth_state(e2e::cpgw_sim::AuthState::LoggedOut);
    let _ = call(&system, "ibkr_accounts_list", json!({})).await;
    system
        .sim
        .set_auth_state(e2e::cpgw_sim::AuthState::LoggedIn);
    system.sim.clear_request_log();

    let token = system.token(TRADING_SCOPES).unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = system.mcp_client(&token).await.unwrap();
        calls.spawn(async move {
            let result = client
                .call_tool(rmcp::model::CallToolRequestParams::new(
                    "ibkr_positions_list".to_string(),
                ))
                .await
                .unwrap();
            let _ = client.cancel().await;
            result
        });
    }
    let started = std::time::Instant::now();
    let exit = call(
        &system,
        "ibkr_sell",
        json!({"symbol": "AAPL", "quantity": "1"}),
    )
    .await;
    let exit_took = started.elapsed();
    assert_eq!(ok(&exit)["status"], "sent");
    while let Some(result) = calls.join_next().await {
        ok(&result.unwrap());
    }
    let primings = system
        .sim
        .request_log()
        .iter()
        .filter(|request| request.method == "GET" && request.path.ends_with("/portfolio/accounts"))
        .count();
    assert_eq!(primings, 1, "the session was primed {primings} times");
    // One priming query, not eight paced 6 s apart (functional bound, not a speed target).
    assert!(
        exit_took < std::time::Duration::from_secs(20),
        "{exit_took:?}"
    );
    system.shutdown().await;
}
