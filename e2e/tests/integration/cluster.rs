//! Gateway replicas on one shared PostgreSQL store, with the real sidecar daemon and real MCP
//! clients: a pairing made through one replica with a code from another serves through a
//! third; a revoke on any replica ends the session wherever it lives; the journal anchor an
//! order call left on one replica is enforced by another.

use crate::trading_support::{code, copy_journal, ok};
use e2e::cluster::{CLUSTER_USER, Cluster};
use e2e::system::WAIT_LIMIT;
use ibkr_gateway::relay::{DropReason, SessionEvent};
use protocol::catalog::scopes;
use rmcp::model::{CallToolRequestParams, CallToolResult, RequestParamsMeta};
use serde_json::{Value, json};

const SCOPES: &[&str] = &[
    scopes::HEALTH_READ,
    scopes::ACCOUNTS_READ,
    scopes::ORDERS_READ,
    scopes::ORDERS_WRITE,
];

/// A three-replica cluster whose laptop was paired through replica 0 with a code issued on
/// replica 1, granting [`SCOPES`] locally; `None` when PostgreSQL is not installed.
async fn paired_cluster() -> Option<(Cluster, ibkr_agent::PairingRecord)> {
    let mut cluster = Cluster::start(3).await.unwrap()?;
    let pairing = cluster.pair(1, 0).await.unwrap();
    cluster.grant_locally(&pairing, SCOPES).unwrap();
    Some((cluster, pairing))
}

fn cluster_sidecar_dir(cluster: &Cluster) -> std::path::PathBuf {
    cluster.sidecar_state_dir().to_path_buf()
}

async fn call(cluster: &Cluster, replica: usize, tool: &str, arguments: Value) -> CallToolResult {
    let client = cluster
        .mcp_client(replica, &cluster.token(replica, SCOPES).unwrap())
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

fn buy() -> Value {
    json!({"symbol": "AAPL", "cash_amount": "20"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pairing_made_through_one_replica_serves_through_another_until_any_replica_revokes_it() {
    let Some((mut cluster, pairing)) = paired_cluster().await else {
        return;
    };
    // Every replica reads the same pairing, under the cluster's one instance id.
    for replica in 0..3 {
        let pairings = cluster.replica(replica).unwrap().pairings().await.unwrap();
        assert_eq!(pairings.len(), 1, "replica {replica}");
        assert_eq!(pairings[0].user_id, CLUSTER_USER);
    }
    assert_eq!(
        pairing.remote_instance_id,
        e2e::cluster::CLUSTER_INSTANCE_ID
    );

    cluster.start_sidecar(2).await.unwrap();
    let accounts = ok(&call(&cluster, 2, "ibkr_accounts_list", json!({})).await);
    assert!(
        !accounts["accounts"].as_array().unwrap().is_empty(),
        "{accounts}"
    );

    // A revoke on replica 0 closes the session replica 2 holds (its revocation poll reads the
    // shared store), and the agent is told why.
    let mut events = cluster.replica(2).unwrap().subscribe_sessions();
    assert!(
        cluster
            .replica(0)
            .unwrap()
            .revoke_pairing(&pairing.sidecar_id)
            .await
            .unwrap()
    );
    tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            match events.recv().await.unwrap() {
                SessionEvent::Dropped { reason, .. } => {
                    assert_eq!(reason, DropReason::PairingRevoked);
                    return;
                }
                SessionEvent::Registered { .. } => {}
            }
        }
    })
    .await
    .expect("replica 2 closed the revoked session");
    assert_eq!(
        code(&call(&cluster, 2, "ibkr_accounts_list", json!({})).await),
        "SIDECAR_PAIRING_REQUIRED"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_journal_put_back_is_caught_by_a_replica_that_never_relayed_its_orders() {
    let Some((mut cluster, _)) = paired_cluster().await else {
        return;
    };
    let sidecar_dir = cluster_sidecar_dir(&cluster);
    let backup = tempfile::tempdir().unwrap();
    cluster.start_sidecar(2).await.unwrap();
    assert_eq!(
        ok(&call(&cluster, 2, "ibkr_buy", buy()).await)["status"],
        "dry_run"
    );
    copy_journal(&sidecar_dir, backup.path());
    assert_eq!(
        ok(&call(&cluster, 2, "ibkr_buy", buy()).await)["status"],
        "dry_run"
    );

    // The laptop's journal goes back to the older copy, and the laptop reconnects to another
    // replica, which learns the newest entry on record from the shared store.
    cluster.stop_sidecar().await;
    copy_journal(backup.path(), &sidecar_dir);
    cluster.start_sidecar(0).await.unwrap();
    assert_eq!(
        code(&call(&cluster, 0, "ibkr_buy", buy()).await),
        "JOURNAL_BEHIND_GATEWAY"
    );
    ok(&call(&cluster, 0, "ibkr_accounts_list", json!({})).await);
    assert!(cluster.sim.order_log().is_empty());
    cluster.shutdown().await;
}

/// `call` until it succeeds, for a bounded time (NATS reconnects on its own schedule, with no
/// event a test can wait on).
async fn until_succeeds(cluster: &Cluster, replica: usize, tool: &str) -> Value {
    tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            let result = call(cluster, replica, tool, json!({})).await;
            if result.is_error != Some(true) {
                return result.structured_content.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the call succeeded again in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_through_any_replica_reach_the_laptop_another_replica_holds() {
    let Some((mut cluster, pairing)) = paired_cluster().await else {
        return;
    };
    cluster.start_sidecar(2).await.unwrap();
    for replica in [0, 1, 2] {
        let accounts = ok(&call(&cluster, replica, "ibkr_accounts_list", json!({})).await);
        assert!(
            !accounts["accounts"].as_array().unwrap().is_empty(),
            "replica {replica}: {accounts}"
        );
    }
    let health = ok(&call(&cluster, 0, "ibkr_health", json!({})).await);
    assert_eq!(health["relay"]["via_replica"], true, "{health}");
    assert_eq!(health["relay"]["connected"], true, "{health}");
    // An order call forwarded from replica 1: dry-run, answered once, anchored for all.
    assert_eq!(
        ok(&call(&cluster, 1, "ibkr_buy", buy()).await)["status"],
        "dry_run"
    );
    let store = ibkr_gateway::store::Store::open_postgres(
        &ibkr_gateway::store::PostgresOptions::new(cluster.postgres.url()),
    )
    .await
    .unwrap();
    let pairing_id = ibkr_gateway::store::PairingId(pairing.gateway_pairing_id.unwrap());
    assert!(store.journal_anchor(pairing_id).await.unwrap().is_some());

    // The holder dies: its laptop's calls fail everywhere with the code one replica gives,
    // and come back when the laptop reconnects.
    cluster.kill_replica(2).await;
    assert_eq!(
        code(&call(&cluster, 0, "ibkr_accounts_list", json!({})).await),
        "SIDECAR_UNAVAILABLE"
    );
    cluster.start_replica(2).await.unwrap();
    until_succeeds(&cluster, 0, "ibkr_accounts_list").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_nats_calls_to_another_replica_fail_retryably_and_local_ones_go_on() {
    let Some((mut cluster, _)) = paired_cluster().await else {
        return;
    };
    cluster.start_sidecar(2).await.unwrap();
    ok(&call(&cluster, 0, "ibkr_accounts_list", json!({})).await);
    cluster.nats.stop();
    let refused = call(&cluster, 0, "ibkr_accounts_list", json!({})).await;
    assert_eq!(code(&refused), "CLUSTER_UNAVAILABLE");
    assert_eq!(
        refused.structured_content.as_ref().unwrap()["error"]["retryable"],
        true
    );
    ok(&call(&cluster, 2, "ibkr_accounts_list", json!({})).await);
    cluster.nats.restart().unwrap();
    until_succeeds(&cluster, 0, "ibkr_accounts_list").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_forwarded_once_fills_and_its_progress_crosses_replicas() {
    let Some((mut cluster, _)) = paired_cluster().await else {
        return;
    };
    cluster.trading = crate::trading_support::live_trading();
    cluster.start_sidecar(2).await.unwrap();
    cluster.sim.update_scenario(|s| s.partial_fill_steps = 3);
    let placed = ok(&call(
        &cluster,
        0,
        "ibkr_buy",
        json!({"symbol": "AAPL", "quantity": "0.3"}),
    )
    .await);
    let order_id = placed["order_id"].as_str().unwrap().to_string();
    assert_eq!(cluster.sim.order_log().len(), 1, "sent exactly once");

    // Waiting for the fill through yet another replica: the holder's progress reaches this
    // client.
    let collector = crate::trading_support::ProgressCollector::default();
    let transport = rmcp::transport::StreamableHttpClientTransport::from_config(
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            cluster.replica(1).unwrap().mcp_url(),
        )
        .auth_header(cluster.token(1, SCOPES).unwrap()),
    );
    let client = rmcp::ServiceExt::serve(collector.clone(), transport)
        .await
        .unwrap();
    let mut params = CallToolRequestParams::new("ibkr_wait_for_fill").with_arguments(
        json!({"order_id": order_id, "timeout_seconds": 30})
            .as_object()
            .unwrap()
            .clone(),
    );
    params.set_progress_token(rmcp::model::ProgressToken(
        rmcp::model::NumberOrString::String("fill-1".into()),
    ));
    let result = client.call_tool(params).await.unwrap();
    let _ = client.cancel().await;
    let body = ok(&result);
    assert_eq!(
        body["status"].as_str().map(str::to_lowercase).as_deref(),
        Some("filled"),
        "{body}"
    );
    let progress = collector.0.lock().unwrap().clone();
    assert!(progress.len() >= 2, "expected progress, got {progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0].progress <= w[1].progress),
        "{progress:?}"
    );
    assert_eq!(cluster.sim.order_log().len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_postgres_is_down_live_sessions_keep_serving_and_new_pairings_fail_closed_and_the_audit_copy_catches_up()
 {
    let Some((mut cluster, _)) = paired_cluster().await else {
        return;
    };
    cluster.start_sidecar(2).await.unwrap();
    // Both replicas have served this user once.
    for replica in [0, 2] {
        ok(&call(&cluster, replica, "ibkr_accounts_list", json!({})).await);
    }
    cluster.postgres.stop().unwrap();
    for replica in [2, 0, 2, 0] {
        ok(&call(&cluster, replica, "ibkr_accounts_list", json!({})).await);
    }
    // Nothing that needs the database goes ahead without it.
    assert!(
        cluster
            .replica(1)
            .unwrap()
            .issue_pairing_code("someone-else", std::time::Duration::from_secs(60))
            .await
            .is_err()
    );
    // A user this replica never served is refused rather than guessed.
    let stranger = cluster.issuer.mint(&e2e::dev_issuer::TokenRequest::new(
        "never-seen",
        &cluster.replica(1).unwrap().mcp_url(),
        SCOPES,
    ));
    let client = cluster.mcp_client(1, &stranger.unwrap()).await.unwrap();
    let refused = client
        .call_tool(CallToolRequestParams::new("ibkr_accounts_list"))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let _ = client.cancel().await;

    cluster.postgres.restart().unwrap();
    tokio::time::timeout(WAIT_LIMIT, async {
        while cluster
            .replica(1)
            .unwrap()
            .issue_pairing_code("someone-else", std::time::Duration::from_secs(60))
            .await
            .is_err()
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("pairing codes are issued again once PostgreSQL is back");
    ok(&call(&cluster, 0, "ibkr_accounts_list", json!({})).await);

    // The audit records of the calls served through the outage reach the shared copy once
    // the database is back, chain columns and all: each replica's copy is its trail.
    let shared = ibkr_gateway::store::PostgresStore::open(
        &ibkr_gateway::store::PostgresOptions::new(cluster.postgres.url()),
    )
    .await
    .unwrap();
    for replica in [0, 2] {
        assert!(cluster.replica(replica).unwrap().flush_audit().await);
        let state_dir = cluster.replica_state_dir(replica).unwrap().to_path_buf();
        let replica_id = std::fs::read_to_string(state_dir.join("replica.id")).unwrap();
        let local = ibkr_gateway::store::SqliteStore::open(&state_dir).unwrap();
        let trail: Vec<(i64, Option<String>)> = ibkr_gateway::audit::log::tail(&local, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|stored| (stored.id, stored.hash))
            .collect();
        // At least one call before the outage and two through it.
        assert!(trail.len() >= 3, "replica {replica}: {trail:?}");
        tokio::time::timeout(WAIT_LIMIT, async {
            loop {
                let copied: Vec<(i64, Option<String>)> =
                    ibkr_gateway::audit::shared::tail(&shared, 10_000)
                        .await
                        .unwrap()
                        .into_iter()
                        .filter(|record| record.replica_id == replica_id.trim())
                        .map(|record| (record.stored.id, record.stored.hash))
                        .collect();
                if copied == trail {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("replica {replica}'s trail was not copied in time"));
    }
    cluster.shutdown().await;
}
