//! The owner's pause of trading (`ibkr-agent sidecar pause|resume`), end to end: while paused,
//! every tool that could send a new order is refused with `TRADING_PAUSED` and nothing reaches
//! the broker; a cancel still goes; the pause survives a daemon restart; `ibkr_session_status`
//! reports it; after `resume` orders go again.

use crate::trading_support::{
    buy_goes_out, buy_refused_as_paused, call, code, live_trading, ok, trading_system,
};
use ibkr_agent::trading::policy::TradingSection;
use serde_json::json;
use std::path::Path;

/// Runs `ibkr-agent --state-dir DIR sidecar ARGS...` as the owner would, beside the daemon.
fn sidecar_command(state_dir: &Path, args: &[&str]) {
    let mut command = vec![
        "ibkr-agent".to_string(),
        "--state-dir".to_string(),
        state_dir.display().to_string(),
        "sidecar".to_string(),
    ];
    command.extend(args.iter().map(|arg| arg.to_string()));
    assert!(
        ibkr_agent::cli::main_from(command) == std::process::ExitCode::SUCCESS,
        "`sidecar {args:?}` failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_paused_no_order_goes_out_a_cancel_does_and_the_pause_survives_a_restart() {
    let mut system = trading_system(TradingSection {
        max_order_value: "1000".into(),
        ..live_trading()
    })
    .await;
    // A limit far below the market rests: something to cancel while paused.
    let resting = ok(&call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": "1", "limit_price": "150"}),
    )
    .await);
    let order_id = resting["order_id"].as_str().unwrap().to_string();
    let orders_before = system.sim.order_log().len();

    sidecar_command(system.sidecar_state_dir(), &["pause", "--reason", "lunch"]);
    let order_tools = [
        ("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "30"})),
        ("ibkr_sell", json!({"symbol": "AAPL", "quantity": "1"})),
        ("ibkr_close_position", json!({"symbol": "AAPL"})),
        (
            "ibkr_stop_order",
            json!({"symbol": "AAPL", "side": "SELL", "quantity": "1", "stop_price": "100"}),
        ),
    ];
    for (tool, arguments) in &order_tools {
        let refused = call(&system, tool, arguments.clone()).await;
        assert_eq!(code(&refused), "TRADING_PAUSED", "{tool}: {refused:?}");
        let message = &refused.structured_content.as_ref().unwrap()["error"]["message"];
        assert!(message.as_str().unwrap().contains("lunch"), "{message}");
    }
    let status = ok(&call(&system, "ibkr_session_status", json!({})).await);
    assert_eq!(
        status["posture"]["trading_paused"]["reason"], "lunch",
        "{status}"
    );
    assert_eq!(status["posture"]["safe_to_trade"], false, "{status}");
    // Reads go on, and so does a cancel: it only takes risk off.
    ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    ok(&call(&system, "ibkr_order_cancel", json!({"order_id": order_id})).await);

    // A restarted daemon is still paused.
    system.take_sidecar().unwrap().stop().await;
    system.start_sidecar().await.unwrap();
    buy_refused_as_paused(&system, "lunch").await;
    assert_eq!(
        system.sim.order_log().len(),
        orders_before,
        "no order reached the broker while paused"
    );

    sidecar_command(system.sidecar_state_dir(), &["resume"]);
    let status = ok(&call(&system, "ibkr_session_status", json!({})).await);
    assert!(status["posture"]["trading_paused"].is_null(), "{status}");
    buy_goes_out(&system, orders_before).await;
    system.shutdown().await;
}
