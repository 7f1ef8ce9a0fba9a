//! MCP sessions per user: a cap, refusals that say when to come back, deleted sessions freeing
//! their slot, and a session id that serves nobody once it is gone.

use crate::common::{McpClient, TestIssuer, dev_config, http};
use serde_json::json;

#[tokio::test]
async fn each_user_holds_at_most_the_configured_sessions_and_deleting_one_frees_a_slot() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_sessions_per_user = 2;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let alice = issuer.token("alice", &handle.mcp_url(), &["ibkr:health:read"]);
    let bob = issuer.token("bob", &handle.mcp_url(), &["ibkr:health:read"]);

    let mut first = McpClient::new(&handle.mcp_url(), &alice);
    first.initialize().await;
    let mut second = McpClient::new(&handle.mcp_url(), &alice);
    second.initialize().await;

    // The third initialize of the same user is refused before a session exists.
    let third = McpClient::new(&handle.mcp_url(), &alice);
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}});
    let refused = third.post(&initialize).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("mcp-session-id").is_none());
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry_after >= 300,
        "the first idle session expires in 5 minutes: {retry_after}"
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "MCP_SESSION_LIMIT", "{body}");
    assert_eq!(body["error"]["retryable"], true, "{body}");

    // Requests inside the existing sessions and another user's sessions are not affected.
    let ping = first.request("ping", json!({})).await;
    assert!(ping.get("result").is_some(), "{ping}");
    let mut other = McpClient::new(&handle.mcp_url(), &bob);
    other.initialize().await;

    // Deleting a session frees its slot, and its id serves nobody afterwards.
    let deleted_id = first.session.clone().unwrap();
    let deleted = http()
        .delete(handle.mcp_url())
        .bearer_auth(&alice)
        .header("mcp-session-id", &deleted_id)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let stale = first.post(&json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}));
    assert_eq!(stale.send().await.unwrap().status(), 404);
    let mut again = McpClient::new(&handle.mcp_url(), &alice);
    again.initialize().await;
    assert_ne!(again.session, Some(deleted_id));

    // A session id used with another user's token does not exist for that user.
    let mut borrowed = McpClient::new(&handle.mcp_url(), &bob);
    borrowed.session = second.session.clone();
    let response = borrowed
        .post(&json!({"jsonrpc": "2.0", "id": 8, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    handle.shutdown().await;
}

/// Many `initialize` requests of one user at once cannot overshoot the cap: each reserves its
/// slot before rmcp creates a session.
#[tokio::test]
async fn concurrent_initializes_never_exceed_the_cap() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_sessions_per_user = 3;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let alice = issuer.token("alice", &handle.mcp_url(), &["ibkr:health:read"]);
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"}}});
    let attempts = (0..12).map(|_| {
        let client = McpClient::new(&handle.mcp_url(), &alice);
        let body = initialize.clone();
        async move { client.post(&body).send().await.unwrap() }
    });
    let responses = futures_util::future::join_all(attempts).await;
    let created = responses
        .iter()
        .filter(|r| r.headers().get("mcp-session-id").is_some())
        .count();
    let refused = responses.iter().filter(|r| r.status() == 429).count();
    assert_eq!((created, refused), (3, 9));
    handle.shutdown().await;
}
