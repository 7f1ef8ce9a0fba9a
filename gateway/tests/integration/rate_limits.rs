//! Rate limits over real loopback sockets.
//!
//! - Per peer, before authentication: 429 `AUTH_RATE_LIMITED` with `Retry-After`. The peer is
//!   the socket address; `X-Forwarded-For` only counts when the socket peer is a configured
//!   trusted proxy, and then only its right-most untrusted entry. A forged header never moves
//!   a client into another bucket.
//! - Per subject, after authentication (also 429 `AUTH_RATE_LIMITED`).
//!
//! The connection limits are in `connections.rs`.

use crate::common::*;
use serde_json::{Value, json};

/// An unauthenticated `/mcp` request (401 unless rate limited), optionally with an
/// `X-Forwarded-For`.
async fn anonymous(client: &reqwest::Client, url: &str, forwarded_for: Option<&str>) -> u16 {
    let mut request = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    if let Some(value) = forwarded_for {
        request = request.header("x-forwarded-for", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status == 429 {
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "AUTH_RATE_LIMITED");
        assert_eq!(body["error"]["retryable"], json!(true));
    }
    status
}

#[tokio::test]
async fn a_forged_forwarded_for_does_not_change_the_bucket_unless_the_proxy_is_trusted() {
    let issuer = TestIssuer::start().await;

    // No trusted proxies: every request from this socket address shares one bucket, whatever
    // X-Forwarded-For claims.
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.rate_limit_per_peer_per_minute = 3;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let client = http();
    let url = handle.mcp_url();
    let forged = [
        Some("203.0.113.1"),
        Some("203.0.113.2"),
        None,
        Some("198.51.100.9, 203.0.113.3"),
        Some("2001:db8::1"),
    ];
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for value in forged {
            statuses.push(anonymous(&client, &url, value).await);
        }
        statuses
    };
    assert_eq!(statuses, vec![401, 401, 401, 429, 429]);
    // The limit is per peer, before authentication: even a valid token is refused now.
    let token = issuer.token("alice", &url, &["ibkr:health:read"]);
    let response = client
        .post(&url)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    // Operations endpoints are not rate limited.
    let response = client
        .get(format!("{}/healthz", handle.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = handle.metrics_text();
    assert!(
        metrics.contains("ibkr_gateway_rate_limited_total{scope=\"peer\"} 3\n"),
        "{metrics}"
    );
    handle.shutdown().await;

    // The loopback proxy is trusted: the right-most untrusted X-Forwarded-For entry is the
    // client, and entries to its left (written by the client) do not matter.
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.rate_limit_per_peer_per_minute = 2;
    config.remote_mcp.trusted_proxies = vec!["127.0.0.1".into(), "10.0.0.0/8".into()];
    let handle = ibkr_gateway::start(config).await.unwrap();
    let url = handle.mcp_url();
    // Client A, behind our proxy, tries to escape its bucket by forging entries on the left.
    assert_eq!(anonymous(&client, &url, Some("203.0.113.1")).await, 401);
    assert_eq!(
        anonymous(&client, &url, Some("198.51.100.1, 203.0.113.1")).await,
        401
    );
    assert_eq!(
        anonymous(&client, &url, Some("198.51.100.2, 203.0.113.1, 10.0.0.7")).await,
        429
    );
    // Client B has a bucket of its own.
    assert_eq!(anonymous(&client, &url, Some("203.0.113.2")).await, 401);
    assert_eq!(anonymous(&client, &url, Some("203.0.113.2")).await, 401);
    assert_eq!(anonymous(&client, &url, Some("203.0.113.2")).await, 429);
    // The proxy's own requests (no header) are the proxy's bucket.
    assert_eq!(anonymous(&client, &url, None).await, 401);
    handle.shutdown().await;
}

#[tokio::test]
async fn the_subject_limit_applies_after_authentication() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.rate_limit_per_subject_per_minute = 2;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let url = handle.mcp_url();
    let client = http();
    let call = |token: String| {
        stateless_request(
            &client,
            &url,
            &token,
            1,
            "tools/call",
            json!({"name": "ibkr_health", "arguments": {}}),
            json!({}),
        )
        .send()
    };
    // Two tokens of one subject share its bucket.
    let first = issuer.token("alice", &url, &["ibkr:health:read"]);
    let mut claims = issuer.claims("alice", &url, &["ibkr:health:read"]);
    claims["jti"] = json!("another-token");
    let second = issuer.key.sign(&claims);
    assert_eq!(call(first.clone()).await.unwrap().status(), 200);
    assert_eq!(call(second).await.unwrap().status(), 200);
    let limited = call(first).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    // Another subject is not affected.
    let bob = issuer.token("bob", &url, &["ibkr:health:read"]);
    assert_eq!(call(bob).await.unwrap().status(), 200);
    assert!(
        handle
            .metrics_text()
            .contains("ibkr_gateway_rate_limited_total{scope=\"subject\"} 1\n")
    );
    handle.shutdown().await;
}
