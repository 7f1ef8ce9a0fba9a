//! Tamper evidence across both halves, with the real gateway and the real sidecar daemon in
//! one process: the sidecar's journal is anchored in the gateway's audit trail, so a laptop
//! whose journal was put back to an older copy (its key and head with it, so that it checks
//! out on its own) refuses the tools that change broker state at its next connection, while
//! read tools keep working; a journal cut alone is refused by the sidecar's own head.

use crate::trading_support::copy_journal;
use e2e::system::{System, SystemOptions, WAIT_LIMIT};
use protocol::catalog::scopes;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const SCOPES: &[&str] = &[
    scopes::HEALTH_READ,
    scopes::ACCOUNTS_READ,
    scopes::ORDERS_WRITE,
    scopes::AUDIT_READ,
];

/// A system whose laptop grants [`SCOPES`] locally (dry-run trading, the default).
async fn system(options: SystemOptions) -> System {
    let mut system = System::start(SystemOptions {
        with_sidecar: false,
        ..options
    })
    .await
    .unwrap();
    let pairing = system.pair_sidecar().await.unwrap();
    ibkr_agent::StateStore::open(system.sidecar_state_dir())
        .unwrap()
        .set_local_scopes(
            &pairing.remote_instance_id,
            &pairing.sidecar_id,
            &shared_safety::scope::ScopeSet::from_list(SCOPES),
        )
        .unwrap();
    system.start_sidecar().await.unwrap();
    system
}

async fn call(system: &System, tool: &str, arguments: Value) -> CallToolResult {
    let client = system
        .mcp_client(&system.token(SCOPES).unwrap())
        .await
        .unwrap();
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = arguments {
        params = params.with_arguments(map);
    }
    let result = client.call_tool(params).await.unwrap();
    let _ = client.cancel().await;
    result
}

fn code(result: &CallToolResult) -> String {
    assert_eq!(
        result.is_error,
        Some(true),
        "expected a refusal: {result:?}"
    );
    result.structured_content.as_ref().unwrap()["error"]["code"]
        .as_str()
        .unwrap()
        .to_string()
}

fn succeeded(result: &CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "expected success: {result:?}");
    result.structured_content.clone().unwrap()
}

fn buy() -> Value {
    json!({"symbol": "AAPL", "cash_amount": "20"})
}

/// An alert webhook on loopback that keeps every body it receives and signals each one.
async fn alert_receiver() -> (String, Arc<Mutex<Vec<String>>>, Arc<Notify>) {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let arrived = Arc::new(Notify::new());
    let (sink, signal) = (received.clone(), arrived.clone());
    let app = axum::Router::new().route(
        "/alert",
        axum::routing::post(move |body: String| {
            let (sink, signal) = (sink.clone(), signal.clone());
            async move {
                sink.lock().unwrap().push(body);
                signal.notify_one();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alert", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received, arrived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_put_back_behind_the_gateways_anchor_refuses_order_tools_at_the_next_connection()
{
    let (webhook, alerts, alerted) = alert_receiver().await;
    let mut system = system(SystemOptions {
        alerts: Some(ibkr_agent::alerts::AlertsSection {
            webhook_url: Some(webhook),
            format: ibkr_agent::alerts::AlertFormat::Ntfy,
        }),
        ..SystemOptions::default()
    })
    .await;
    let sidecar_dir = system.sidecar_state_dir().to_path_buf();
    let backup = tempfile::tempdir().unwrap();

    assert_eq!(
        succeeded(&call(&system, "ibkr_buy", buy()).await)["status"],
        "dry_run"
    );
    copy_journal(&sidecar_dir, backup.path());
    assert_eq!(
        succeeded(&call(&system, "ibkr_buy", buy()).await)["status"],
        "dry_run"
    );

    // The gateway's trail verifies and holds the newest journal entry as its anchor.
    assert!(system.gateway().unwrap().flush_audit().await);
    let gateway_dir = system.gateway_state_dir().to_path_buf();
    let store = ibkr_gateway::store::SqliteStore::open(&gateway_dir).unwrap();
    let records = ibkr_gateway::audit::log::tail(&store, 10).await.unwrap();
    let journal = std::fs::read_to_string(sidecar_dir.join("journal.jsonl")).unwrap();
    let newest: Value = serde_json::from_str(journal.lines().last().unwrap()).unwrap();
    let anchored = records.last().unwrap();
    assert_eq!(
        (
            json!(anchored.record.journal_seq),
            json!(anchored.record.journal_hash)
        ),
        (newest["seq"].clone(), newest["hash"].clone()),
        "{records:#?}"
    );
    // (A variable nobody sets: the secret is the one the gateway generated in its state_dir.)
    let (mut conn, key) =
        ibkr_gateway::audit::verify::open_trail(&gateway_dir, "IBKR_E2E_UNSET_AUDIT_SECRET")
            .unwrap();
    let report = ibkr_gateway::audit::verify::verify(&mut conn, &gateway_dir, &key).unwrap();
    assert!(report.ok, "{report:?}");

    // The laptop's journal goes back to the older copy, head and all: on its own it checks out.
    system.take_sidecar().unwrap().stop().await;
    copy_journal(backup.path(), &sidecar_dir);
    let local = ibkr_agent::trading::journal::verify(&sidecar_dir.join("journal.jsonl")).unwrap();
    assert!(local.ok, "{local:?}");

    system.start_sidecar().await.unwrap();
    assert_eq!(
        code(&call(&system, "ibkr_buy", buy()).await),
        "JOURNAL_BEHIND_GATEWAY"
    );
    assert_eq!(
        code(&call(&system, "ibkr_order_cancel", json!({"order_id": "1"})).await),
        "JOURNAL_BEHIND_GATEWAY"
    );
    succeeded(&call(&system, "ibkr_accounts_list", json!({})).await);
    succeeded(&call(&system, "ibkr_trade_history", json!({})).await);
    let status = succeeded(&call(&system, "ibkr_session_status", json!({})).await);
    assert_eq!(
        status["posture"]["journal_behind_gateway"], true,
        "{status}"
    );
    assert_eq!(status["posture"]["safe_to_trade"], false, "{status}");
    assert!(system.sim.order_log().is_empty());
    // The person is told once.
    tokio::time::timeout(WAIT_LIMIT, alerted.notified())
        .await
        .unwrap();
    let sent = alerts.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("journal"), "{sent:?}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_cut_alone_is_refused_by_the_sidecars_own_head_and_reads_go_on() {
    let mut system = system(SystemOptions::default()).await;
    let sidecar_dir = system.sidecar_state_dir().to_path_buf();
    succeeded(&call(&system, "ibkr_buy", buy()).await);
    succeeded(&call(&system, "ibkr_buy", buy()).await);
    system.take_sidecar().unwrap().stop().await;
    let path = sidecar_dir.join("journal.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().take(2).collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let report = ibkr_agent::trading::journal::verify(&path).unwrap();
    assert!(!report.ok && report.truncated, "{report:?}");

    system.start_sidecar().await.unwrap();
    assert_eq!(
        code(&call(&system, "ibkr_buy", buy()).await),
        "JOURNAL_ERROR"
    );
    succeeded(&call(&system, "ibkr_accounts_list", json!({})).await);
    system.shutdown().await;
}
