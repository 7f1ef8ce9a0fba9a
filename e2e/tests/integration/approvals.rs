//! The laptop owner's approval of orders (`trading.approval`), end to end through a real MCP
//! client: an order that needs approval reaches the simulator only after the owner approves
//! it, exactly once; a denied or expired one never does; an approval cannot be used twice or
//! for another order; a wait longer than the relay deadline answers `awaiting_approval`, which
//! the agent polls; the approved order is checked again before it is sent; a waiting order
//! survives a daemon crash and restart.

use crate::trading_support::{
    ProgressCollector, TRADING_SCOPES, call, code, ibkr_agent, live_trading, ok, trading_system,
    trading_system_with,
};
use e2e::system::{System, SystemOptions};
use ibkr_agent::approvals::{PendingApproval, pending_in};
use ibkr_agent::owner::{OwnerRequest, submit};
use ibkr_agent::trading::approval::ApprovalSection;
use ibkr_agent::trading::journal::{JOURNAL_FILE, read_attempts};
use ibkr_agent::trading::policy::TradingSection;
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, NumberOrString, ProgressToken, RequestParamsMeta,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Orders above 100 USD wait for approval (paper account); expiry as given.
fn approving(expire_seconds: u64) -> TradingSection {
    TradingSection {
        max_order_value: "1000".into(),
        approval: ApprovalSection {
            above_value: Some("100".into()),
            live_orders: true,
            expire_seconds,
            ..ApprovalSection::default()
        },
        ..live_trading()
    }
}

/// A limit buy of one share at 201 USD: above the approval threshold, below the cap.
fn big_buy(key: &str) -> Value {
    json!({"symbol": "AAPL", "quantity": "1", "limit_price": "201", "idempotency_key": key})
}

/// The orders waiting for approval, read from the journal file as `approvals list` does.
fn waiting(state_dir: &Path) -> Vec<PendingApproval> {
    pending_in(&read_attempts(&state_dir.join(JOURNAL_FILE)).unwrap())
}

/// Waits (bounded) until `count` orders wait for approval.
async fn until_waiting(state_dir: &Path, count: usize) -> Vec<PendingApproval> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let now = waiting(state_dir);
            if now.len() == count {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{count} orders never waited for approval"))
}

/// One owner decision as the CLI hands it to the running daemon; the error code if refused.
async fn decide(state_dir: &Path, request: OwnerRequest) -> Result<Value, ErrorCode> {
    let dir: PathBuf = state_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let store = ibkr_agent::StateStore::open(&dir).unwrap();
        submit(&dir, &store, &request).map_err(|error| error.code())
    })
    .await
    .unwrap()
}

fn approve(attempt: u64, hash: Option<&str>) -> OwnerRequest {
    OwnerRequest::Approve {
        attempt,
        intent_hash: hash.map(str::to_string),
        by: "owner".into(),
        via: "cli".into(),
    }
}

fn deny(attempt: u64, note: &str) -> OwnerRequest {
    OwnerRequest::Deny {
        attempt,
        intent_hash: None,
        note: Some(note.into()),
        by: "owner".into(),
        via: "cli".into(),
    }
}

/// A call that asks for progress notifications, collected in `collector`.
async fn call_with_progress(
    system: &System,
    collector: &ProgressCollector,
    tool: &str,
    arguments: Value,
) -> CallToolResult {
    let token = system.token(TRADING_SCOPES).unwrap();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(system.mcp_url().unwrap()).auth_header(token),
    );
    let client = collector.clone().serve(transport).await.unwrap();
    let mut params = CallToolRequestParams::new(tool.to_string())
        .with_arguments(arguments.as_object().unwrap().clone());
    params.set_progress_token(ProgressToken(NumberOrString::String("approval-1".into())));
    let result = client.call_tool(params).await.unwrap();
    let _ = client.cancel().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_reaches_the_broker_only_after_approval_and_exactly_once() {
    let system = Arc::new(trading_system(approving(120)).await);
    let state_dir = system.sidecar_state_dir().to_path_buf();
    let collector = ProgressCollector::default();
    let agent = {
        let system = system.clone();
        let collector = collector.clone();
        tokio::spawn(async move {
            call_with_progress(&system, &collector, "ibkr_buy", big_buy("big-1")).await
        })
    };
    let pending = until_waiting(&state_dir, 1).await;
    let first = pending[0].clone();
    assert_eq!(first.symbol, "AAPL");
    assert!(first.reason.contains("above 100"), "{first:?}");
    assert_eq!(first.legs, vec!["BUY 1 LMT limit 201 DAY".to_string()]);
    assert!(
        system.sim.order_log().is_empty(),
        "nothing reaches the broker before the approval"
    );
    let status = ok(&call(&system, "ibkr_session_status", json!({})).await);
    assert_eq!(status["posture"]["orders_awaiting_approval"], 1, "{status}");
    // While it waits, its value is reserved against the daily budget.
    assert_eq!(status["posture"]["spent_today"], "201", "{status}");

    // A hash other than the waiting order's is refused, and changes nothing.
    assert_eq!(
        decide(
            &state_dir,
            approve(first.attempt_id, Some("0000000000000000"))
        )
        .await,
        Err(ErrorCode::ApprovalMismatch)
    );
    assert!(system.sim.order_log().is_empty());
    let approved = decide(
        &state_dir,
        approve(first.attempt_id, Some(&first.intent_hash)),
    )
    .await
    .unwrap();
    assert_eq!(approved["status"], "approved", "{approved}");

    let answer = ok(&agent.await.unwrap());
    assert_eq!(answer["status"], "sent", "{answer}");
    assert_eq!(system.sim.order_log().len(), 1);
    let progress = collector.0.lock().unwrap().clone();
    assert!(
        progress.iter().any(|p| p
            .message
            .as_deref()
            .is_some_and(|m| m.contains("waiting for approval on the laptop"))),
        "the agent is told it waits: {progress:?}"
    );

    // Single use: the same approval again is refused, and the agent's retry is a replay.
    assert_eq!(
        decide(&state_dir, approve(first.attempt_id, None)).await,
        Err(ErrorCode::ApprovalNotPending)
    );
    let replay = ok(&call(&system, "ibkr_buy", big_buy("big-1")).await);
    assert_eq!(replay["replayed"], true, "{replay}");
    assert_eq!(system.sim.order_log().len(), 1);
    // The key bound to other arguments is refused before anything waits.
    let other = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": "2", "limit_price": "201", "idempotency_key": "big-1"}),
    )
    .await;
    assert_eq!(code(&other), "IDEMPOTENCY_KEY_REUSED");

    // Another order (the same one again would be refused as a duplicate within the window)
    // waits for its own approval, and the first one's hash does not fit it.
    let second_order = json!({"symbol": "AAPL", "quantity": "1", "limit_price": "202",
                              "idempotency_key": "big-2"});
    let second_call = {
        let system = system.clone();
        let order = second_order.clone();
        tokio::spawn(async move { call(&system, "ibkr_buy", order).await })
    };
    let pending = until_waiting(&state_dir, 1).await;
    let second = pending[0].clone();
    assert_ne!(second.attempt_id, first.attempt_id);
    assert_ne!(second.intent_hash, first.intent_hash);
    assert_eq!(
        decide(
            &state_dir,
            approve(second.attempt_id, Some(&first.intent_hash))
        )
        .await,
        Err(ErrorCode::ApprovalMismatch)
    );
    decide(&state_dir, deny(second.attempt_id, "one is enough"))
        .await
        .unwrap();
    let refused = second_call.await.unwrap();
    assert_eq!(code(&refused), "ORDER_APPROVAL_DENIED");
    let message = refused.structured_content.as_ref().unwrap()["error"]["message"].clone();
    assert!(
        message.as_str().unwrap().contains("one is enough"),
        "{message}"
    );
    // Asked again with the same key: still denied, not asked again.
    let again = call(&system, "ibkr_buy", second_order).await;
    assert_eq!(code(&again), "ORDER_APPROVAL_DENIED");
    assert!(waiting(&state_dir).is_empty());
    assert_eq!(
        system.sim.order_log().len(),
        1,
        "exactly one order was sent"
    );
    // An order below the threshold does not wait.
    let small = ok(&call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "50"}),
    )
    .await);
    assert_eq!(small["status"], "sent", "{small}");
    Arc::into_inner(system).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_approval_expires_and_nothing_is_sent() {
    let system = trading_system(approving(2)).await;
    let state_dir = system.sidecar_state_dir().to_path_buf();
    let refused = call(&system, "ibkr_buy", big_buy("late-1")).await;
    assert_eq!(code(&refused), "ORDER_APPROVAL_EXPIRED");
    let attempts = read_attempts(&state_dir.join(JOURNAL_FILE)).unwrap();
    let expired = attempts.iter().last().unwrap();
    assert_eq!(expired.status.as_str(), "approval_expired");
    assert_eq!(
        decide(&state_dir, approve(expired.id, None)).await,
        Err(ErrorCode::ApprovalNotPending),
        "an expired order cannot be approved afterwards"
    );
    assert!(system.sim.order_log().is_empty());
    // What it reserved of the daily budget is released.
    let status = ok(&call(&system, "ibkr_session_status", json!({})).await);
    assert_eq!(status["posture"]["spent_today"], "0", "{status}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_answers_awaiting_approval_and_the_agent_polls_for_the_outcome() {
    let mut system = trading_system_with(SystemOptions {
        trading: approving(600),
        request_timeout_seconds: Some(4),
        ..SystemOptions::default()
    })
    .await;
    let state_dir = system.sidecar_state_dir().to_path_buf();
    let answer = ok(&call(&system, "ibkr_buy", big_buy("slow-1")).await);
    assert_eq!(answer["status"], "awaiting_approval", "{answer}");
    let attempt = answer["attempt_id"].as_u64().unwrap();
    assert!(
        answer["next"]
            .as_str()
            .unwrap()
            .contains("ibkr_trade_history"),
        "{answer}"
    );
    let history = ok(&call(
        &system,
        "ibkr_trade_history",
        json!({"attempt_id": attempt}),
    )
    .await);
    assert_eq!(
        history["attempts"][0]["status"], "awaiting_approval",
        "{history}"
    );

    // The daemon dies and comes back: the order still waits (nothing is lost, nothing sent).
    system.take_sidecar().unwrap().kill().await;
    system.start_sidecar().await.unwrap();
    let pending = until_waiting(&state_dir, 1).await;
    assert_eq!(pending[0].attempt_id, attempt);
    assert!(system.sim.order_log().is_empty());

    // Approved with the CLI, as the owner would; the agent's call is long gone.
    let id = attempt.to_string();
    assert_eq!(
        ibkr_agent(
            &state_dir,
            &[
                "sidecar",
                "approvals",
                "approve",
                &id,
                "--hash",
                &pending[0].intent_hash
            ],
        )
        .await,
        ExitCode::SUCCESS
    );
    let sent = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let history = ok(&call(
                &system,
                "ibkr_trade_history",
                json!({"attempt_id": attempt}),
            )
            .await);
            if history["attempts"][0]["status"] != "awaiting_approval"
                && history["attempts"][0]["status"] != "unresolved"
            {
                return history;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(sent["attempts"][0]["status"], "sent", "{sent}");
    assert_eq!(system.sim.order_log().len(), 1);
    // The agent's retry with its key answers from the journal.
    let replay = ok(&call(&system, "ibkr_buy", big_buy("slow-1")).await);
    assert_eq!(replay["status"], "sent", "{replay}");
    assert_eq!(system.sim.order_log().len(), 1);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_order_is_checked_again_before_it_is_sent() {
    let system = Arc::new(trading_system(approving(120)).await);
    let state_dir = system.sidecar_state_dir().to_path_buf();
    let agent = {
        let system = system.clone();
        tokio::spawn(async move { call(&system, "ibkr_buy", big_buy("recheck-1")).await })
    };
    let pending = until_waiting(&state_dir, 1).await;
    // The owner pauses trading while the order waits, then approves it by mistake.
    assert_eq!(
        ibkr_agent(
            &state_dir,
            &["sidecar", "pause", "--reason", "market looks wrong"]
        )
        .await,
        ExitCode::SUCCESS
    );
    decide(&state_dir, approve(pending[0].attempt_id, None))
        .await
        .unwrap();
    let refused = agent.await.unwrap();
    assert_eq!(code(&refused), "TRADING_PAUSED", "{refused:?}");
    assert!(system.sim.order_log().is_empty());
    let attempts = read_attempts(&state_dir.join(JOURNAL_FILE)).unwrap();
    let record = attempts.get(pending[0].attempt_id).unwrap();
    assert_eq!(record.status.as_str(), "blocked");
    assert_eq!(
        record.last_outcome.as_ref().unwrap().1["guard"],
        "after_approval"
    );
    Arc::into_inner(system).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_order_holds_its_share_of_the_daily_cap_and_does_not_count_twice() {
    let system = Arc::new(
        trading_system(TradingSection {
            max_daily_value: Some("300".into()),
            ..approving(120)
        })
        .await,
    );
    let state_dir = system.sidecar_state_dir().to_path_buf();
    let agent = {
        let system = system.clone();
        tokio::spawn(async move { call(&system, "ibkr_buy", big_buy("cap-1")).await })
    };
    let pending = until_waiting(&state_dir, 1).await;
    // A second agent's small buys: the first fits beside the waiting order (201 + 90 <= 300),
    // the next would not, because the waiting order keeps its share reserved.
    let small = ok(&call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "90"}),
    )
    .await);
    assert_eq!(small["status"], "sent", "{small}");
    let over = call(
        &system,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "50"}),
    )
    .await;
    assert_eq!(code(&over), "ORDER_DAILY_CAP_EXCEEDED");
    // Approved, the waiting order is checked again without counting against itself.
    decide(&state_dir, approve(pending[0].attempt_id, None))
        .await
        .unwrap();
    let sent = ok(&agent.await.unwrap());
    assert_eq!(sent["status"], "sent", "{sent}");
    assert_eq!(system.sim.order_log().len(), 2);
    Arc::into_inner(system).unwrap().shutdown().await;
}
