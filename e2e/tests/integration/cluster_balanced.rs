//! Gateway replicas behind a round-robin balancer with no affinity, as an operator runs them:
//! one MCP client's consecutive requests land on different replicas in both revisions (an
//! `Mcp-Session-Id` session created on one replica is served by the others, to its owner
//! only), a pairing exchange started on one replica finishes on another (once, and a decoy
//! exchange fails there as it would where it started), and when the
//! replica holding the laptop dies, the sidecar reconnects through the balancer to another
//! and the same client's calls succeed again.

use crate::trading_support::{ProgressCollector, live_trading, ok};
use e2e::cluster::{CLUSTER_USER, Cluster};
use e2e::dev_issuer::TokenRequest;
use e2e::system::WAIT_LIMIT;
use protocol::catalog::scopes;
use protocol::pairing::{self, PairFinishReply, PairStartReply, PairingCode, SidecarInfo};
use rmcp::RoleClient;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, NumberOrString, ProgressToken, RequestParamsMeta,
};
use rmcp::service::RunningService;
use serde_json::{Value, json};
use std::time::Duration;

const SCOPES: &[&str] = &[
    scopes::HEALTH_READ,
    scopes::ACCOUNTS_READ,
    scopes::ORDERS_READ,
    scopes::ORDERS_WRITE,
];

/// Three replicas behind the balancer, the laptop paired through the balancer with a code
/// issued on replica 1 and granted [`SCOPES`]; `None` without PostgreSQL or NATS.
async fn balanced_cluster() -> Option<Cluster> {
    let mut cluster = Cluster::start_behind_balancer(3).await.unwrap()?;
    let pairing = cluster.pair(1, 0).await.unwrap();
    cluster.grant_locally(&pairing, SCOPES).unwrap();
    Some(cluster)
}

fn params(tool: &str, arguments: Value) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = arguments {
        params = params.with_arguments(map);
    }
    params
}

/// Calls until the answer is not a retryable refusal (the sidecar reconnecting, a replica
/// taking over its subject), for a bounded time. Anything else is returned as is.
async fn until_served<H: rmcp::ClientHandler>(
    client: &RunningService<RoleClient, H>,
    tool: &str,
) -> CallToolResult {
    tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            let result = client.call_tool(params(tool, json!({}))).await.unwrap();
            let retryable = result.is_error == Some(true)
                && result.structured_content.as_ref().unwrap()["error"]["retryable"] == true;
            if !retryable {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("served again in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_client_spans_replicas_in_both_revisions_and_outlives_the_replica_holding_the_laptop() {
    let Some(mut cluster) = balanced_cluster().await else {
        return;
    };
    cluster.trading = live_trading();
    // The laptop lands on replica 2 (the balancer routes only there while it connects).
    cluster.route_to(&[2]).unwrap();
    assert_eq!(cluster.start_sidecar_via_balancer().await.unwrap(), 2);
    cluster.route_to(&[0, 1, 2]).unwrap();
    cluster.sim.update_scenario(|s| s.partial_fill_steps = 3);
    let token = cluster.token(0, SCOPES).unwrap();

    let mut session_client = None;
    for stateless in [false, true] {
        let before: Vec<usize> = (0..3)
            .map(|r| cluster.received_through_balancer(r).unwrap())
            .collect();
        let collector = ProgressCollector::default();
        let client = cluster
            .balanced_mcp_client(collector.clone(), &token, stateless)
            .await
            .unwrap();
        let revision = client
            .peer_info()
            .map(|info| info.protocol_version.to_string());
        let expected = if stateless {
            "2026-07-28"
        } else {
            "2025-11-25"
        };
        assert_eq!(revision.as_deref(), Some(expected));
        for _ in 0..3 {
            let accounts = ok(&client
                .call_tool(params("ibkr_accounts_list", json!({})))
                .await
                .unwrap());
            assert!(!accounts["accounts"].as_array().unwrap().is_empty());
        }
        // An order placed through one replica and its fill awaited through another, with
        // the holder's progress reaching this client. (Another quantity per revision: the
        // same order twice within seconds is refused as a duplicate.)
        let orders_before = cluster.sim.order_log().len();
        let quantity = if stateless { "0.4" } else { "0.3" };
        let placed = ok(&client
            .call_tool(params(
                "ibkr_buy",
                json!({"symbol": "AAPL", "quantity": quantity}),
            ))
            .await
            .unwrap());
        assert_eq!(
            cluster.sim.order_log().len(),
            orders_before + 1,
            "sent once"
        );
        let mut wait = params(
            "ibkr_wait_for_fill",
            json!({"order_id": placed["order_id"], "timeout_seconds": 30}),
        );
        wait.set_progress_token(ProgressToken(NumberOrString::String(
            format!("fill-{expected}").into(),
        )));
        let filled = ok(&client.call_tool(wait).await.unwrap());
        assert_eq!(
            filled["status"].as_str().map(str::to_lowercase).as_deref(),
            Some("filled"),
            "{filled}"
        );
        let progress = collector.0.lock().unwrap().clone();
        assert!(progress.len() >= 2, "{expected}: progress {progress:?}");
        // Every replica served some of this client's requests.
        for (replica, before) in before.iter().enumerate() {
            assert!(
                cluster.received_through_balancer(replica).unwrap() > *before,
                "{expected}: replica {replica} served none of the client's requests"
            );
        }
        if stateless {
            let _ = client.cancel().await;
        } else {
            session_client = Some(client);
        }
    }

    // The replica holding the laptop dies. The sidecar reconnects through the balancer to
    // another, and the 2025-11-25 client goes on with its session, as if nothing happened.
    cluster.kill_replica(2).await;
    let holder = cluster.wait_for_holder().await.unwrap();
    assert_ne!(holder, 2);
    let session_client = session_client.unwrap();
    let accounts = ok(&until_served(&session_client, "ibkr_accounts_list").await);
    assert!(!accounts["accounts"].as_array().unwrap().is_empty());
    for _ in 0..3 {
        ok(&session_client
            .call_tool(params("ibkr_accounts_list", json!({})))
            .await
            .unwrap());
    }
    let _ = session_client.cancel().await;
    cluster.shutdown().await;
}

/// The JSON-RPC message in an MCP answer (an SSE stream of one message, or plain JSON).
fn jsonrpc_answer(body: &str) -> Value {
    let data = body
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .find(|data| !data.is_empty());
    serde_json::from_str(data.unwrap_or(body)).unwrap()
}

async fn post_mcp(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .json(&body);
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    request.send().await.unwrap()
}

fn tools_list() -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
}

/// Idle timeout for the session tests (the least allowed): a sweep, and a held session's
/// check against the shared store, every 7.5 s.
const SESSION_IDLE_SECONDS: u64 = 30;

async fn initialize(http: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    post_mcp(
        http,
        url,
        token,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "cluster-test", "version": "1"}}}),
    )
    .await
}

/// A new session on `url`, initialized; its id.
async fn new_session(http: &reqwest::Client, url: &str, token: &str) -> String {
    let created = initialize(http, url, token).await;
    assert_eq!(created.status(), 200);
    let session = created.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        jsonrpc_answer(&created.text().await.unwrap())["result"]["protocolVersion"],
        "2025-11-25"
    );
    let initialized = post_mcp(
        http,
        url,
        token,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert!(initialized.status().is_success());
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_is_served_by_every_replica_to_its_owner_only_until_deleted() {
    let Some(cluster) = Cluster::start_behind_balancer_with(3, |config| {
        config.remote_mcp.session_idle_timeout_seconds = SESSION_IDLE_SECONDS;
    })
    .await
    .unwrap() else {
        return;
    };
    let http = reqwest::Client::new();
    let owner = cluster.token(0, SCOPES).unwrap();
    let other = cluster
        .issuer
        .mint(&TokenRequest::new(
            "another-user",
            &cluster.replica(0).unwrap().mcp_url(),
            SCOPES,
        ))
        .unwrap();
    let url = |replica: usize| cluster.direct_mcp_url(replica).unwrap();
    let session = new_session(&http, &url(0), &owner).await;

    // Another user presenting the id is told it does not exist, on a replica that never
    // held it (nothing is rebuilt for them) and on the one that created it.
    for replica in [1, 0] {
        let refused = post_mcp(&http, &url(replica), &other, Some(&session), tools_list()).await;
        assert_eq!(refused.status(), 404, "replica {replica}");
    }
    // The owner is served by another replica, and the first.
    for replica in [1, 0] {
        let listed = post_mcp(&http, &url(replica), &owner, Some(&session), tools_list()).await;
        assert_eq!(listed.status(), 200, "replica {replica}");
        let tools = jsonrpc_answer(&listed.text().await.unwrap())["result"]["tools"]
            .as_array()
            .unwrap()
            .len();
        assert!(tools > 0, "replica {replica}");
    }
    // Still not the other user's, now that replica 1 holds it too.
    let refused = post_mcp(&http, &url(1), &other, Some(&session), tools_list()).await;
    assert_eq!(refused.status(), 404);

    // Deleted through replica 0: replica 2, which never held it, refuses it at once; replica
    // 1, which holds it, within a sweep.
    let deleted = http
        .delete(url(0))
        .bearer_auth(&owner)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let refused = post_mcp(&http, &url(2), &owner, Some(&session), tools_list()).await;
    assert_eq!(refused.status(), 404);
    tokio::time::timeout(WAIT_LIMIT, async {
        while post_mcp(&http, &url(1), &owner, Some(&session), tools_list())
            .await
            .status()
            != 404
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the replica holding the deleted session ended it within a sweep");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_taken_over_from_another_replica_counts_under_the_users_cap() {
    let Some(cluster) = Cluster::start_behind_balancer_with(2, |config| {
        config.remote_mcp.max_sessions_per_user = 1;
    })
    .await
    .unwrap() else {
        return;
    };
    let http = reqwest::Client::new();
    let owner = cluster.token(0, SCOPES).unwrap();
    let url = |replica: usize| cluster.direct_mcp_url(replica).unwrap();
    let first = new_session(&http, &url(0), &owner).await;
    let second = new_session(&http, &url(1), &owner).await;
    // Replica 1 holds the user's one session: it does not take over another.
    let refused = post_mcp(&http, &url(1), &owner, Some(&first), tools_list()).await;
    assert_eq!(refused.status(), 404);
    // Each session still serves where it lives.
    for (replica, session) in [(0, &first), (1, &second)] {
        let listed = post_mcp(&http, &url(replica), &owner, Some(session), tools_list()).await;
        assert_eq!(listed.status(), 200, "replica {replica}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pairing_exchange_started_on_one_replica_finishes_on_another_once() {
    let Some(cluster) = Cluster::start_behind_balancer(3).await.unwrap() else {
        return;
    };
    let issued = cluster
        .replica(1)
        .unwrap()
        .issue_pairing_code(CLUSTER_USER, Duration::from_secs(600))
        .await
        .unwrap();
    let code = PairingCode::parse(&issued).unwrap();
    let keypair = protocol::identity::StaticKeypair::generate(&mut rand_core::OsRng);
    let info = SidecarInfo {
        static_public: keypair.public(),
        sidecar_id: "laptop-across-replicas".into(),
        display_name: "laptop".into(),
    };
    let http = reqwest::Client::new();
    let post = |replica: usize, path: &'static str, body: Vec<u8>| {
        let url = format!("{}{path}", cluster.direct_base_url(replica).unwrap());
        let http = http.clone();
        async move {
            http.post(url)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };

    let (pending, start) = pairing::SidecarPairing::start(&code, &mut rand_core::OsRng);
    let started = post(0, "/pair/start", pairing::encode(&start).unwrap()).await;
    assert_eq!(started.status(), 200);
    let reply: PairStartReply = pairing::decode(&started.bytes().await.unwrap()).unwrap();
    let (awaiting, finish) = pending.finish(&reply, &info, &keypair).unwrap();
    let finish = pairing::encode(&finish).unwrap();

    let finished = post(2, "/pair/finish", finish.clone()).await;
    assert_eq!(finished.status(), 200);
    let reply: PairFinishReply = pairing::decode(&finished.bytes().await.unwrap()).unwrap();
    let gateway = awaiting.complete(&reply).unwrap();
    assert_eq!(gateway.user_id, CLUSTER_USER);
    assert_eq!(gateway.instance_id, e2e::cluster::CLUSTER_INSTANCE_ID);

    // The same finish again, on a third replica: the exchange was taken.
    let replayed = post(1, "/pair/finish", finish).await;
    assert_eq!(replayed.status().as_u16() / 100, 4);
    let body: Value = replayed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAIRING_CODE_INVALID");
    let pairings = cluster.replica(1).unwrap().pairings().await.unwrap();
    assert_eq!(pairings.len(), 1);

    // The used code again: the start gets a decoy exchange (it reveals nothing), whose
    // finish on another replica says why the code is dead.
    let (pending, start) = pairing::SidecarPairing::start(&code, &mut rand_core::OsRng);
    let started = post(0, "/pair/start", pairing::encode(&start).unwrap()).await;
    assert_eq!(started.status(), 200, "a start reveals nothing");
    let reply: PairStartReply = pairing::decode(&started.bytes().await.unwrap()).unwrap();
    let (_, finish) = pending.finish(&reply, &info, &keypair).unwrap();
    let refused = post(1, "/pair/finish", pairing::encode(&finish).unwrap()).await;
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAIRING_CODE_USED");
    assert_eq!(
        cluster.replica(2).unwrap().pairings().await.unwrap().len(),
        1
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_the_shared_store_cannot_record_is_refused_and_the_session_kept() {
    let Some(mut cluster) = Cluster::start_behind_balancer(2).await.unwrap() else {
        return;
    };
    let http = reqwest::Client::new();
    let owner = cluster.token(0, SCOPES).unwrap();
    let url = cluster.direct_mcp_url(0).unwrap();
    let session = new_session(&http, &url, &owner).await;
    cluster.postgres.stop().unwrap();
    let refused = http
        .delete(&url)
        .bearer_auth(&owner)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SHARED_STORE_UNAVAILABLE");
    assert_eq!(body["error"]["retryable"], true);
    // Left as it was: it still serves its owner on the replica holding it.
    let listed = post_mcp(&http, &url, &owner, Some(&session), tools_list()).await;
    assert_eq!(listed.status(), 200);
    cluster.postgres.restart().unwrap();
    cluster.shutdown().await;
}
