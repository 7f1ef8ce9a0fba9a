//! MCP over Streamable HTTP, as clients of both revisions see it, over real loopback sockets:
//!
//! - one `/mcp` endpoint serves the 2025-11-25 revision (initialize, `Mcp-Session-Id`) and the
//!   stateless 2026-07-28 revision (`server/discover`, per-request `_meta`, `Mcp-Method` /
//!   `Mcp-Name` checked against the body, GET/DELETE 405);
//! - Host and Origin allow-lists (403 before authentication), the body limit (413), and
//!   `Cache-Control: no-store, private` + `Vary: Authorization` on every answer;
//! - progress from a fake sidecar reaches the client as `notifications/progress`, in order and
//!   before the result, in both revisions; a client that goes away cancels the call at the
//!   sidecar;
//! - behind a TLS-terminating proxy the public URL is canonical, never the `Host` header.

use crate::common::*;
use protocol::envelope::RelayProgress;
use protocol::frame::Frame;
use serde_json::{Value, json};

fn assert_private(response: &reqwest::Response) {
    assert_eq!(response.headers()["cache-control"], "no-store, private");
    let vary: Vec<&str> = response
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        vary.iter().any(|v| v.eq_ignore_ascii_case("authorization")),
        "{vary:?}"
    );
}

#[tokio::test]
async fn one_endpoint_serves_the_session_and_the_stateless_revision() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let url = handle.mcp_url();
    let token = issuer.token("alice", &url, &["ibkr:health:read"]);
    let client = http();

    // 2025-11-25: initialize opens a session; tools/list in it is filtered and private.
    let mut session = McpClient::new(&url, &token);
    let init = session.initialize().await;
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
    assert!(session.session.is_some());
    let response = session
        .post(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_private(&response);
    let listed = read_jsonrpc_response(response, 5).await;
    assert_eq!(
        tool_names(&listed["result"]),
        vec!["ibkr_health", "ibkr_session_status"]
    );

    // 2025-06-18 clients get their revision; pre-OAuth revisions are not agreed to.
    for (asked, agreed) in [("2025-06-18", "2025-06-18"), ("2024-11-05", "2025-11-25")] {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": asked, "capabilities": {},
            "clientInfo": {"name": "old-client", "version": "0"}}});
        let response = client
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let init = read_jsonrpc_response(response, 1).await;
        assert_eq!(init["result"]["protocolVersion"], agreed, "{asked}: {init}");
    }

    // 2026-07-28: discovery and calls without a session.
    let response = stateless_request(
        &client,
        &url,
        &token,
        1,
        "server/discover",
        json!({}),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("mcp-session-id").is_none());
    assert_private(&response);
    let discovered = read_jsonrpc_messages(response, 1).await.pop().unwrap();
    let versions = discovered["result"]["supportedVersions"]
        .as_array()
        .unwrap();
    assert!(versions.contains(&json!("2026-07-28")), "{discovered}");
    assert!(versions.contains(&json!("2025-11-25")), "{discovered}");
    assert!(discovered["result"]["capabilities"]["tools"].is_object());

    let response = stateless_request(&client, &url, &token, 2, "tools/list", json!({}), json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("mcp-session-id").is_none());
    assert_private(&response);
    let listed = read_jsonrpc_messages(response, 2).await.pop().unwrap();
    assert_eq!(
        tool_names(&listed["result"]),
        vec!["ibkr_health", "ibkr_session_status"]
    );
    // The per-token list is never marked shareable in the result either.
    assert_eq!(listed["result"]["cacheScope"], "private", "{listed}");

    let response = stateless_request(
        &client,
        &url,
        &token,
        3,
        "tools/call",
        json!({"name": "ibkr_health", "arguments": {}}),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let called = read_jsonrpc_messages(response, 3).await.pop().unwrap();
    assert_eq!(
        called["result"]["structuredContent"]["gateway"]["status"],
        "ok"
    );

    // The routing headers must match the body.
    let mismatches = [
        ("mcp-method", "tools/list"),
        ("mcp-name", "ibkr_session_status"),
    ];
    for (header, value) in mismatches {
        let response = stateless_request(
            &client,
            &url,
            &token,
            4,
            "tools/call",
            json!({"name": "ibkr_health", "arguments": {}}),
            json!({}),
        )
        .header(header, value)
        .send()
        .await
        .unwrap();
        // reqwest appends: two values of a singleton header are refused too.
        assert_eq!(response.status(), 400, "{header}: {value}");
    }
    let body = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
        "name": "ibkr_health", "arguments": {}, "_meta": meta_2026()}});
    let base = || {
        client
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .json(&body)
    };
    for request in [
        // No Mcp-Method at all.
        base().header("mcp-name", "ibkr_health"),
        // A method that is not the body's.
        base()
            .header("mcp-method", "tools/list")
            .header("mcp-name", "ibkr_health"),
        // A name that is not the body's.
        base()
            .header("mcp-method", "tools/call")
            .header("mcp-name", "ibkr_accounts_list"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        assert_private(&response);
    }

    // No GET stream and no DELETE in the stateless revision.
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let response = client
            .request(method.clone(), &url)
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_private(&response);
    }

    // The 2025-11-25 session still works, and DELETE ends it.
    let response = session
        .post(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .delete(&url)
        .bearer_auth(&token)
        .header("mcp-session-id", session.session.clone().unwrap())
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = session
        .post(&json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    handle.shutdown().await;
}

#[tokio::test]
async fn host_origin_and_size_are_checked_and_nothing_is_publicly_cacheable() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.allowed_origins = vec!["http://localhost:6274".into()];
    let handle = ibkr_gateway::start(config).await.unwrap();
    let url = handle.mcp_url();
    let token = issuer.token("alice", &url, &["ibkr:health:read"]);
    let client = http();
    let post = |host: Option<&str>, origin: Option<&str>, token: Option<&str>| {
        let mut request = stateless_request(
            &client,
            &url,
            token.unwrap_or("unused"),
            1,
            "tools/call",
            json!({"name": "ibkr_health", "arguments": {}}),
            json!({}),
        );
        if token.is_none() {
            // Rebuild without the Authorization header.
            request = client
                .post(&url)
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };

    // DNS rebinding: a Host that is not allowed is refused before authentication.
    for host in ["evil.example", "attacker.example:80", "localhost"] {
        let response = post(Some(host), None, None).await.unwrap();
        assert_eq!(response.status(), 403, "{host}");
        assert!(response.headers().get("www-authenticate").is_none());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "REQUEST_ORIGIN_REFUSED", "{host}");
        assert!(body["error"]["message"].as_str().unwrap().contains("Host"));
        let response = post(Some(host), None, Some(&token)).await.unwrap();
        assert_eq!(response.status(), 403, "{host} with a token");
    }
    // An Origin that is not allowed: 403, with or without a token.
    for origin in [
        "https://evil.example",
        "null",
        "not an origin",
        "http://localhost:6275",
    ] {
        let response = post(None, Some(origin), Some(&token)).await.unwrap();
        assert_eq!(response.status(), 403, "{origin}");
        let response = post(None, Some(origin), None).await.unwrap();
        assert_eq!(response.status(), 403, "{origin} without a token");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "REQUEST_ORIGIN_REFUSED", "{origin}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Origin")
        );
    }
    // Allowed: the configured origin, the gateway's own, and none at all.
    for origin in [
        Some("http://localhost:6274"),
        Some(handle.base_url().as_str()),
        None,
    ] {
        let response = post(None, origin, Some(&token)).await.unwrap();
        assert_eq!(response.status(), 200, "{origin:?}");
        assert_private(&response);
        // Without a token, the same request reaches the OAuth layer.
        let response = post(None, origin, None).await.unwrap();
        assert_eq!(response.status(), 401, "{origin:?}");
        assert_private(&response);
    }

    // Bodies over 256 KiB: 413 (after authentication, which costs nothing to the body).
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "ibkr_health", "arguments": {"padding": "x".repeat(300 * 1024)}}});
    let response = client
        .post(&url)
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_private(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ARGUMENTS_INVALID");

    // The metadata is public and identical for everybody; /mcp never is.
    let response = client
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            handle.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");

    handle.shutdown().await;

    // Configured hosts replace the default.
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.allowed_hosts = Some(vec!["mcp.internal.example".into()]);
    let handle = ibkr_gateway::start(config).await.unwrap();
    let response = client
        .post(handle.mcp_url())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = client
        .post(handle.mcp_url())
        .header("host", "mcp.internal.example")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    handle.shutdown().await;
}

/// A sidecar that reports progress 1/3, 2/3, a stale 1.5 (must be dropped), 3/3, then answers.
fn progressing_sidecar(sidecar: FakeSidecar) -> tokio::sync::mpsc::UnboundedReceiver<Frame> {
    scripted_sidecar(sidecar, |request| {
        let progress = |value: f64, message: &str| {
            Frame::Progress(RelayProgress {
                request_id: request.request_id,
                progress: value,
                total: Some(3.0),
                message: Some(message.into()),
            })
        };
        vec![
            progress(1.0, "submitted"),
            progress(2.0, "partially filled"),
            progress(1.5, "stale"),
            progress(3.0, "filled"),
            result_frame(request, json!({"accounts": ["DU1"]})),
        ]
    })
}

fn progress_of(messages: &[Value], token: &Value) -> Vec<(f64, String)> {
    messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .map(|m| {
            assert_eq!(&m["params"]["progressToken"], token, "{m}");
            assert_eq!(m["params"]["total"], json!(3.0));
            (
                m["params"]["progress"].as_f64().unwrap(),
                m["params"]["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn progress_reaches_the_client_before_the_result_in_both_revisions() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered_sessions(&mut events, 1).await;
    let mut seen = progressing_sidecar(sidecar);
    let url = handle.mcp_url();
    let token = issuer.token("alice", &url, &["ibkr:accounts:read"]);
    let expected = vec![
        (1.0, "submitted".to_string()),
        (2.0, "partially filled".to_string()),
        (3.0, "filled".to_string()),
    ];

    // 2025-11-25, in a session.
    let mut session = McpClient::new(&url, &token);
    session.initialize().await;
    let call = json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {
        "name": "ibkr_accounts_list", "arguments": {}, "_meta": {"progressToken": "p-11"}}});
    let response = session.post(&call).send().await.unwrap();
    let messages = read_jsonrpc_messages(response, 11).await;
    assert_eq!(progress_of(&messages, &json!("p-11")), expected);
    let last = messages.last().unwrap();
    assert_eq!(last["id"], 11, "the result comes last: {messages:?}");
    assert_eq!(last["result"]["isError"], json!(false));
    assert!(matches!(next_seen(&mut seen).await, Frame::Request(_)));

    // 2026-07-28, stateless.
    let client = http();
    let response = stateless_request(
        &client,
        &url,
        &token,
        12,
        "tools/call",
        json!({"name": "ibkr_accounts_list", "arguments": {}}),
        json!({"progressToken": 12}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let messages = read_jsonrpc_messages(response, 12).await;
    assert_eq!(progress_of(&messages, &json!(12)), expected);
    assert_eq!(messages.last().unwrap()["id"], 12);
    assert!(matches!(next_seen(&mut seen).await, Frame::Request(_)));

    // No progress token, no notifications.
    let response = stateless_request(
        &client,
        &url,
        &token,
        13,
        "tools/call",
        json!({"name": "ibkr_accounts_list", "arguments": {}}),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    let messages = read_jsonrpc_messages(response, 13).await;
    assert_eq!(messages.len(), 1, "{messages:?}");

    handle.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_call_at_the_sidecar() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered_sessions(&mut events, 1).await;
    // Never answers.
    let mut seen = scripted_sidecar(sidecar, |_| Vec::new());
    let url = handle.mcp_url();
    let token = issuer.token("alice", &url, &["ibkr:accounts:read"]);

    // 2026-07-28: closing the connection is the cancellation.
    let client = http();
    let request = stateless_request(
        &client,
        &url,
        &token,
        21,
        "tools/call",
        json!({"name": "ibkr_accounts_list", "arguments": {}}),
        json!({}),
    );
    let pending = tokio::spawn(async move { request.send().await });
    let Frame::Request(request) = next_seen(&mut seen).await else {
        panic!("expected the request");
    };
    pending.abort();
    assert_eq!(
        next_seen(&mut seen).await,
        Frame::Cancel {
            request_id: request.request_id
        }
    );

    // 2025-11-25: notifications/cancelled in the session.
    let mut session = McpClient::new(&url, &token);
    session.initialize().await;
    let mut caller = session.clone();
    let _pending = tokio::spawn(async move {
        caller
            .request_with_id(
                22,
                "tools/call",
                json!({"name": "ibkr_accounts_list", "arguments": {}}),
            )
            .await
    });
    let Frame::Request(request) = next_seen(&mut seen).await else {
        panic!("expected the request");
    };
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 22, "reason": "user gave up"}});
    assert!(
        session
            .post(&cancel)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert_eq!(
        next_seen(&mut seen).await,
        Frame::Cancel {
            request_id: request.request_id
        }
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn behind_a_tls_terminating_proxy_the_public_url_is_canonical() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.public_base_url = "https://mcp.example.com".into();
    config.sidecar.remote_relay_url = Some("wss://mcp.example.com/relay".into());
    // The proxy forwards the public Host; a health checker on the inside uses the address.
    config.remote_mcp.allowed_hosts = Some(vec!["mcp.example.com".into(), "127.0.0.1".into()]);
    config.remote_mcp.trusted_proxies = vec!["127.0.0.1".into()];
    let handle = ibkr_gateway::start(config).await.unwrap();
    assert_eq!(handle.mcp_url(), "https://mcp.example.com/mcp");
    let inside = format!("http://{}", handle.local_addr());
    let public_metadata = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
    let client = http();

    for host in [
        "mcp.example.com",
        "127.0.0.1",
        "proxy-rewrote-this.internal:8080",
    ] {
        for path in [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource",
        ] {
            let metadata: Value = client
                .get(format!("{inside}{path}"))
                .header("host", host)
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "attacker.example")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                metadata["resource"], "https://mcp.example.com/mcp",
                "{host}"
            );
        }
    }
    for host in ["mcp.example.com", "127.0.0.1"] {
        let response = client
            .post(format!("{inside}/mcp"))
            .header("host", host)
            .header("x-forwarded-host", "attacker.example")
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["www-authenticate"],
            format!(
                "Bearer resource_metadata=\"{public_metadata}\", scope=\"{READ_SCOPES_CHALLENGE}\""
            )
            .as_str()
        );
    }

    // Tokens must be for the public resource, not for the address the proxy dials.
    let call = |token: String| {
        stateless_request(
            &client,
            &format!("{inside}/mcp"),
            &token,
            1,
            "tools/call",
            json!({"name": "ibkr_health", "arguments": {}}),
            json!({}),
        )
        .header("host", "mcp.example.com")
        .send()
    };
    let response = call(issuer.token(
        "alice",
        "https://mcp.example.com/mcp",
        &["ibkr:health:read"],
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let response = call(issuer.token("alice", &format!("{inside}/mcp"), &["ibkr:health:read"]))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    handle.shutdown().await;
}

/// A body that is not one JSON-RPC message is a client error with the JSON-RPC code that says
/// why (not 415, which blames the media type): not JSON or not UTF-8 (-32700), a batch, or an
/// object that is no JSON-RPC message (-32600). A well-formed request still gets through.
#[tokio::test]
async fn malformed_bodies_get_400_with_the_json_rpc_error() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let url = handle.mcp_url();
    let token = issuer.token("alice", &url, &["ibkr:health:read"]);
    let client = http();
    let send = |body: Vec<u8>| {
        client
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: [(&[u8], i64); 5] = [
        (b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\"", -32700),
        (
            b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"ping\xff\"}",
            -32700,
        ),
        (b"", -32700),
        (
            b"[{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"ping\"}]",
            -32600,
        ),
        (b"{\"hello\": \"world\"}", -32600),
    ];
    for (body, code) in cases {
        let response = send(body.to_vec()).await.unwrap();
        assert_eq!(
            response.status(),
            400,
            "{:?}",
            String::from_utf8_lossy(body)
        );
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["jsonrpc"], "2.0");
        assert_eq!(answer["id"], Value::Null);
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    let mut mcp = McpClient::new(&url, &token);
    let initialized = mcp.initialize().await;
    assert!(initialized.get("result").is_some(), "{initialized}");
    handle.shutdown().await;
}
