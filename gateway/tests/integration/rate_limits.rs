//! Rate limits and the connection cap over real loopback sockets.
//!
//! - Per peer, before authentication: 429 `AUTH_RATE_LIMITED` with `Retry-After`. The peer is
//!   the socket address; `X-Forwarded-For` only counts when the socket peer is a configured
//!   trusted proxy, and then only its right-most untrusted entry. A forged header never moves
//!   a client into another bucket.
//! - Per subject, after authentication (also 429 `AUTH_RATE_LIMITED`).
//! - `remote_mcp.max_connections`: the next connection is answered 503 at once, and served
//!   again as soon as a slot frees.
//! - `remote_mcp.header_read_timeout_seconds`: a connection that sends nothing, or stops
//!   half-way through a request head, is closed at the deadline and its slot freed.

use crate::common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Sends a raw HTTP/1.1 request on a fresh connection and returns the whole answer.
async fn raw_request(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut stream).await
}

#[tokio::test]
async fn connections_beyond_the_cap_are_answered_503_at_once() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_connections = 2;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();

    // Two idle keep-alive connections hold both slots. A request on each proves the server
    // accepted them (and so counts them) before the next one arrives.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }

    let answer = raw_request(addr, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "RELAY_OVERLOADED");
    assert!(
        handle
            .metrics_text()
            .contains("ibkr_gateway_connections_rejected_total 1\n")
    );

    // A slot frees when a connection closes; the server then serves new ones again. The
    // close is noticed asynchronously, so keep asking (each try is a real request) until
    // the slot is back.
    drop(held.pop());
    let served = served_again(addr).await;
    assert!(served.contains("\"ok\""));
    drop(held);
    handle.shutdown().await;
}

/// Reads until the server closes the connection; what it sent before closing.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server never closed the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Asks on fresh connections until one is served (a slot freed asynchronously).
async fn served_again(addr: std::net::SocketAddr) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let answer = raw_request(addr, "/healthz").await;
            if answer.starts_with("HTTP/1.1 200") {
                return answer;
            }
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the slot was never freed")
}

#[tokio::test]
async fn silent_and_half_sent_requests_lose_their_slot_at_the_header_deadline() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_connections = 1;
    config.remote_mcp.header_read_timeout_seconds = 1;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();

    // One served request proves the connection holds the only slot; then it starts a second
    // request head and stops half-way, as a slow-loris client does.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(WAIT, stalled.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    let half_sent = std::time::Instant::now();
    stalled
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    assert!(
        raw_request(addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 503")
    );

    // The server gives up on the head (no answer is served for it) and frees the slot.
    let answer = read_until_closed(&mut stalled).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(half_sent.elapsed() >= std::time::Duration::from_millis(500));
    served_again(addr).await;

    // A connection that never sends a byte is closed the same way.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answer = read_until_closed(&mut silent).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    served_again(addr).await;
    handle.shutdown().await;
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_does_not_wait_for_stalled_ones() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The default head deadline (75 s) is far longer than the shutdown drain.
    let config = dev_config(&issuer.url(), dir.path());
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n").as_bytes())
        .await
        .unwrap();
    assert!(
        raw_request(addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );

    let shutdown = tokio::spawn(handle.shutdown());
    // New connections are refused at once, while the stalled one still holds the drain open.
    tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the listener stayed open during shutdown");
    assert!(!shutdown.is_finished());
    // The stalled connection is dropped at the end of the drain, not at its head deadline.
    let answer = read_until_closed(&mut stalled).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown waited for a stalled request head")
        .unwrap();
}
