//! The laptop owner turns order tools on and off with the documented commands
//! (`ibkr-agent sidecar pairing grant|revoke-scope`), against a running daemon, no restart.

use crate::trading_support::{TRADING_SCOPES, call, code, ibkr_agent, ok};
use e2e::system::{System, SystemOptions};
use serde_json::json;
use std::process::ExitCode;

fn message(result: &rmcp::model::CallToolResult) -> String {
    let structured = result.structured_content.as_ref().unwrap();
    structured["error"]["message"]
        .as_str()
        .or_else(|| structured["message"].as_str())
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_scopes_are_granted_and_taken_back_on_the_laptop_without_a_restart() {
    let mut system = System::start(SystemOptions {
        with_sidecar: false,
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let pairing = system.pair_sidecar().await.unwrap();
    assert!(
        !pairing.local_scopes.contains("ibkr:orders:write"),
        "pairing starts read-only"
    );
    system.start_sidecar().await.unwrap();
    let buy = json!({"symbol": "AAPL", "cash_amount": "50"});

    // Read-only by default: the refusal names the exact command that fixes it.
    let refused = call(&system, "ibkr_buy", buy.clone()).await;
    assert_eq!(code(&refused), "SCOPE_NOT_GRANTED_LOCALLY");
    assert!(
        message(&refused).contains("ibkr-agent sidecar pairing grant --scope ibkr:orders:write"),
        "{}",
        message(&refused)
    );

    // The documented command, while the daemon runs.
    let state_dir = system.sidecar_state_dir().to_path_buf();
    let status = ibkr_agent(
        &state_dir,
        &[
            "sidecar",
            "pairing",
            "grant",
            "--scope",
            "ibkr:orders:preview,ibkr:orders:write",
        ],
    )
    .await;
    assert_eq!(status, ExitCode::SUCCESS);
    let placed = ok(&call(&system, "ibkr_buy", buy.clone()).await);
    assert_eq!(placed["status"], "dry_run", "{placed}");
    // The journal id of this order attempt, under the name every order result and the owner's
    // `orders settle --attempt` use.
    assert!(placed["attempt_id"].as_u64().is_some(), "{placed}");
    assert!(placed.get("attempt").is_none(), "{placed}");
    assert!(
        system.sim.order_log().is_empty(),
        "a dry run reached the broker"
    );

    // Taken back: the very next order call is refused by the same daemon.
    let status = ibkr_agent(
        &state_dir,
        &[
            "sidecar",
            "pairing",
            "revoke-scope",
            "--scope",
            "ibkr:orders:write",
        ],
    )
    .await;
    assert_eq!(status, ExitCode::SUCCESS);
    let refused = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "60"}),
    )
    .await;
    assert_eq!(code(&refused), "SCOPE_NOT_GRANTED_LOCALLY");
    // The token still holds the scope: the laptop alone took it back.
    assert!(TRADING_SCOPES.contains(&"ibkr:orders:write"));
    // The preview scope it kept still works, and reads never stopped.
    ok(&call(
        &system,
        "ibkr_order_preview",
        json!({"symbol": "AAPL", "side": "BUY", "quantity": "1"}),
    )
    .await);
    ok(&call(&system, "ibkr_accounts_list", json!({})).await);
    system.shutdown().await;
}
