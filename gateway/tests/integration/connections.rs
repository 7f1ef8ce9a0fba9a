//! The connection limits of the HTTP edge over real loopback sockets. Several client addresses
//! are simulated by binding client sockets to 127.0.0.2, 127.0.0.3, ... (Linux routes all of
//! 127/8 to the loopback interface).
//!
//! - `remote_mcp.max_connections_per_peer`: one address holding its limit is answered
//!   `429 PEER_CONNECTION_LIMIT`, while a paired sidecar keeps serving calls and `/healthz`
//!   keeps answering; behind a trusted proxy the proxy is not capped and the limit counts
//!   each forwarded client's requests in progress (relay websockets included).
//! - `remote_mcp.max_connections`: a full pool of idle sockets from many addresses evicts its
//!   longest-idle connection for a newcomer (a health check, a reconnecting sidecar); a
//!   connection with a request in progress is never evicted, and when every connection is
//!   busy a newcomer gets `503 GATEWAY_CONNECTION_LIMIT`.
//! - `remote_mcp.max_relay_connections`: relay websockets live outside the general pool, in a
//!   budget of their own.
//! - `remote_mcp.first_byte_timeout_seconds` and `header_read_timeout_seconds`: a silent
//!   connection, and one that stops half-way through a request head, are closed and their
//!   slots freed.
//! - shutdown refuses new connections at once and does not wait for stalled ones.

use crate::common::*;
use protocol::frame::Frame;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends one `GET path` (connection: close) on `stream` and returns the whole answer.
async fn ask(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(stream).await
}

/// Sends a raw HTTP/1.1 request on a fresh connection and returns the whole answer.
async fn raw_request(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    ask(&mut stream, path).await
}

/// Reads until the server closes the connection; what it sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server never closed the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The JSON body of a raw answer.
fn body_of(answer: &str) -> Value {
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {answer:?}"))
}

/// Checks a refusal answer: status, `Retry-After`, and the catalog body naming the gateway.
fn assert_refused(answer: &str, status: u16, code: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "{answer}"
    );
    let body = body_of(answer);
    assert_eq!(body["error"]["code"], code, "{answer}");
    assert_eq!(body["error"]["retryable"], json!(true));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("gateway"), "{message}");
    assert!(!message.contains("sidecar."), "{message}");
    assert!(
        body["error"]["user_action"]
            .as_str()
            .unwrap()
            .contains("try again"),
        "{body}"
    );
}

/// Asks `/healthz` on fresh connections until one is served (a slot freed asynchronously).
async fn served_again(addr: SocketAddr) -> String {
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

/// `/healthz` through reqwest (its own pooled connection): the status.
async fn healthz(client: &reqwest::Client, handle: &ibkr_gateway::GatewayHandle) -> u16 {
    client
        .get(format!("{}/healthz", handle.base_url()))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// One relayed `ibkr_accounts_list` call (2026-07-28, stateless): the structured result.
async fn relayed_call(client: &reqwest::Client, url: &str, token: &str, id: u64) -> Value {
    let response = stateless_request(
        client,
        url,
        token,
        id,
        "tools/call",
        json!({"name": "ibkr_accounts_list", "arguments": {}}),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let answer = read_jsonrpc_messages(response, id).await.pop().unwrap();
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    answer["result"]["structuredContent"].clone()
}

/// A paired, connected sidecar answering every request with `{"accounts": ["DU1"]}`.
async fn answering_sidecar(handle: &ibkr_gateway::GatewayHandle) {
    let mut events = handle.subscribe_sessions();
    let (key, _) = pair(handle, "alice", "laptop-1").await;
    let sidecar = FakeSidecar::connect(handle, &key, "laptop-1").await;
    registered_sessions(&mut events, 1).await;
    let _seen = scripted_sidecar(sidecar, |request| {
        vec![result_frame(request, json!({"accounts": ["DU1"]}))]
    });
}

/// One keep-alive `GET /healthz` on `stream`, answered 200 (the connection stays open).
async fn healthz_keep_alive(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
}

/// A fresh connection is served, and nobody was evicted to make room for it.
async fn served_from_a_free_slot(handle: &ibkr_gateway::GatewayHandle) {
    let answer = raw_request(handle.local_addr(), "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(metric(handle, "ibkr_gateway_connections_evicted_total 0"));
}

/// An unauthenticated `/mcp` request forwarded by the (trusted, loopback) proxy for `client`.
async fn anonymous_via_proxy(
    handle: &ibkr_gateway::GatewayHandle,
    client: &str,
) -> reqwest::Response {
    http()
        .post(handle.mcp_url())
        .header("x-forwarded-for", client)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap()
}

fn metric(handle: &ibkr_gateway::GatewayHandle, line: &str) -> bool {
    handle.metrics_text().contains(&format!("{line}\n"))
}

#[tokio::test]
async fn one_address_over_its_limit_cannot_take_the_sidecars_or_the_health_checks_slots() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_connections = 16;
    config.remote_mcp.max_connections_per_peer = 4;
    // The flood's silent sockets stay for the whole test.
    config.remote_mcp.first_byte_timeout_seconds = 60;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();
    answering_sidecar(&handle).await;
    let url = handle.mcp_url();
    let token = issuer.token("alice", &url, &["ibkr:accounts:read"]);
    let client = http();

    // 127.0.0.2 opens three times its limit of idle sockets, one at a time, while the sidecar
    // keeps serving calls and /healthz keeps answering.
    let mut flood = Vec::new();
    for n in 0..12u64 {
        let mut socket = connect_from("127.0.0.2", addr).await;
        if n >= 4 {
            // Over the limit: answered at once and closed.
            assert_refused(
                &ask(&mut socket, "/healthz").await,
                429,
                "PEER_CONNECTION_LIMIT",
            );
        } else {
            flood.push(socket);
        }
        assert_eq!(
            relayed_call(&client, &url, &token, n + 1).await,
            json!({"accounts": ["DU1"]})
        );
        assert_eq!(healthz(&client, &handle).await, 200);
    }
    assert!(metric(
        &handle,
        "ibkr_gateway_connections_rejected_total{limit=\"peer\"} 8"
    ));
    // Nobody was pushed out: the pool never filled.
    assert!(metric(&handle, "ibkr_gateway_connections_evicted_total 0"));
    // The flood's sockets were really held open all along: each can still be served.
    for socket in &mut flood {
        assert!(ask(socket, "/healthz").await.starts_with("HTTP/1.1 200"));
    }
    // Another address has its own allowance.
    let mut other = connect_from("127.0.0.3", addr).await;
    assert!(
        ask(&mut other, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_pool_full_of_idle_sockets_from_many_addresses_evicts_the_longest_idle_for_a_newcomer() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Paired on an earlier run of the gateway, so the pool starts empty.
    let earlier = start_gateway(&issuer, dir.path()).await;
    let (key, _) = pair(&earlier, "alice", "laptop-1").await;
    earlier.shutdown().await;
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_connections = 6;
    config.remote_mcp.max_connections_per_peer = 3;
    config.remote_mcp.first_byte_timeout_seconds = 60;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();
    let mut events = handle.subscribe_sessions();

    // Two addresses, each within its limit, fill the whole pool with silent sockets. The
    // accept loop takes them in order, so the pool is full before anything else arrives.
    let mut flood = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..3 {
            flood.push(connect_from(source, addr).await);
        }
    }

    // A health check gets in: the oldest silent socket makes room.
    let client = http();
    assert_eq!(healthz(&client, &handle).await, 200);
    assert_eq!(read_until_closed(&mut flood[0]).await, "");

    // A sidecar reconnecting gets in too, and its websocket leaves the pool (relay budget).
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered_sessions(&mut events, 1).await;
    let _seen = scripted_sidecar(sidecar, |request| {
        vec![result_frame(request, json!({"accounts": ["DU1"]}))]
    });
    assert_eq!(read_until_closed(&mut flood[1]).await, "");
    let url = handle.mcp_url();
    let token = issuer.token("alice", &url, &["ibkr:accounts:read"]);
    assert_eq!(
        relayed_call(&client, &url, &token, 1).await,
        json!({"accounts": ["DU1"]})
    );
    assert!(metric(
        &handle,
        "ibkr_gateway_connections_rejected_total{limit=\"total\"} 0"
    ));
    assert!(metric(&handle, "ibkr_gateway_connections_evicted_total 2"));
    handle.shutdown().await;
}

#[tokio::test]
async fn a_connection_with_a_request_in_progress_is_never_evicted() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    // One HTTP connection and one relay websocket in all.
    config.remote_mcp.max_connections = 1;
    config.remote_mcp.max_relay_connections = 1;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();

    // The sidecar's websocket holds the only relay slot and none of the general pool.
    let mut sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered_sessions(&mut events, 1).await;
    // A second relay websocket finds no relay slot.
    match tokio_tungstenite::connect_async(handle.relay_url()).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "GATEWAY_CONNECTION_LIMIT");
            assert!(
                body["error"]["message"].as_str().unwrap().contains("relay"),
                "{body}"
            );
        }
        other => panic!("a second relay websocket was not refused: {other:?}"),
    }
    assert!(metric(
        &handle,
        "ibkr_gateway_connections_rejected_total{limit=\"relay\"} 1"
    ));

    // A call is in progress, holding the only HTTP connection: the sidecar sits on it.
    let (got_request, mut request_seen) = tokio::sync::mpsc::unbounded_channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut release = Some(released);
        while let Some(frame) = sidecar.recv().await {
            match frame {
                Frame::Ping { seq } => sidecar.send(&Frame::Pong { seq }).await,
                Frame::Request(request) => {
                    let _ = got_request.send(());
                    if let Some(release) = release.take() {
                        let _ = release.await;
                    }
                    sidecar
                        .send(&result_frame(&request, json!({"accounts": ["DU1"]})))
                        .await;
                }
                _ => {}
            }
        }
    });
    let url = handle.mcp_url();
    let token = issuer.token("alice", &url, &["ibkr:accounts:read"]);
    let call = tokio::spawn(async move { relayed_call(&http(), &url, &token, 7).await });
    tokio::time::timeout(WAIT, request_seen.recv())
        .await
        .expect("the call never reached the sidecar")
        .unwrap();

    // Every connection is busy: a newcomer is refused, and nothing is evicted.
    assert_refused(
        &raw_request(addr, "/healthz").await,
        503,
        "GATEWAY_CONNECTION_LIMIT",
    );
    assert!(metric(
        &handle,
        "ibkr_gateway_connections_rejected_total{limit=\"total\"} 1"
    ));

    // The call in progress completes untouched; then there is room again.
    release.send(()).unwrap();
    assert_eq!(call.await.unwrap(), json!({"accounts": ["DU1"]}));
    served_again(addr).await;
    handle.shutdown().await;
}

/// A websocket upgrade to `/relay` as forwarded by a proxy for `client` (no header: the
/// proxy's own request). The HTTP status of the answer.
async fn relay_upgrade_via_proxy(
    handle: &ibkr_gateway::GatewayHandle,
    client: Option<&str>,
) -> Result<Socket, (u16, Value)> {
    let mut request = handle.relay_url().into_client_request().unwrap();
    if let Some(client) = client {
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
    {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let body = serde_json::from_slice(response.body().as_deref().unwrap_or(b"null"))
                .unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("upgrade failed: {other}"),
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_limit_counts_each_forwarded_clients_requests() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_connections_per_peer = 2;
    config.remote_mcp.trusted_proxies = vec!["127.0.0.1".into()];
    // Unauthenticated relay websockets stay open for the whole test.
    config.sidecar.handshake_timeout_seconds = 120;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();

    // The proxy's own address is not capped: it holds more connections than a client may.
    let mut proxy_connections = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        healthz_keep_alive(&mut stream).await;
        proxy_connections.push(stream);
    }
    // An untrusted address with as many is refused.
    let mut direct = Vec::new();
    for _ in 0..2 {
        direct.push(connect_from("127.0.0.2", addr).await);
    }
    let mut third = connect_from("127.0.0.2", addr).await;
    assert_refused(
        &ask(&mut third, "/healthz").await,
        429,
        "PEER_CONNECTION_LIMIT",
    );

    // Client A, forwarded by the proxy, holds two relay websockets (each holds one of the
    // proxy's connections for its whole life): its third request in progress is refused,
    // an upgrade or not.
    let a = Some("203.0.113.7");
    let first = relay_upgrade_via_proxy(&handle, a).await.unwrap();
    let _second = relay_upgrade_via_proxy(&handle, a).await.unwrap();
    let (status, body) = relay_upgrade_via_proxy(&handle, a).await.unwrap_err();
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "PEER_CONNECTION_LIMIT");
    let response = anonymous_via_proxy(&handle, "203.0.113.7").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PEER_CONNECTION_LIMIT");
    // A forged entry to the left of A's address does not help (it is never believed).
    let (status, _) = relay_upgrade_via_proxy(&handle, Some("198.51.100.1, 203.0.113.7"))
        .await
        .unwrap_err();
    assert_eq!(status, 429);

    // Client B and the proxy itself are not affected.
    let _b = relay_upgrade_via_proxy(&handle, Some("203.0.113.8"))
        .await
        .unwrap();
    let _proxy = relay_upgrade_via_proxy(&handle, None).await.unwrap();
    assert_eq!(
        anonymous_via_proxy(&handle, "203.0.113.8").await.status(),
        401
    );

    // When one of A's websockets closes, A may open another.
    drop(first);
    tokio::time::timeout(WAIT, async {
        loop {
            match relay_upgrade_via_proxy(&handle, a).await {
                Ok(_) => return,
                Err((429, _)) => tokio::task::yield_now().await,
                Err(other) => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("client A's count was never given back");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_byte_deadline_and_frees_its_slot() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_connections = 1;
    config.remote_mcp.first_byte_timeout_seconds = 1;
    // Far beyond the test: only the first-byte deadline can close the connection in time.
    config.remote_mcp.header_read_timeout_seconds = 900;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();

    // Nothing else connects meanwhile, so no eviction can be what closes it.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert!(metric(&handle, "ibkr_gateway_connections_silent_total 1"));
    // Its slot is free: the next connection is served without evicting anybody.
    served_from_a_free_slot(&handle).await;
    handle.shutdown().await;
}

#[tokio::test]
async fn a_half_sent_request_head_loses_its_slot_at_the_header_deadline() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.max_connections = 1;
    config.remote_mcp.header_read_timeout_seconds = 1;
    // Far beyond the test: the connection talks, so the head deadline is what closes it.
    config.remote_mcp.first_byte_timeout_seconds = 60;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let addr = handle.local_addr();

    // One served request proves the connection holds the only slot; then it starts a second
    // request head and stops half-way, as a slow-loris client does.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    healthz_keep_alive(&mut stalled).await;
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n")
        .await
        .unwrap();

    // Nothing else connects meanwhile: the server gives up on the head (no answer is served
    // for it) and frees the slot.
    let answer = read_until_closed(&mut stalled).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    served_from_a_free_slot(&handle).await;
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
    let mut stalled = TcpStream::connect(addr).await.unwrap();
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
        while TcpStream::connect(addr).await.is_ok() {
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
