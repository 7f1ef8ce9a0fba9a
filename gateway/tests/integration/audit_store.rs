//! The durable audit trail, over real loopback sockets and the real CLI:
//!
//! - exactly one record per tool call that passed authentication (forwarded, refused by the
//!   gateway's checks, refused for scope at the HTTP layer, unknown tool; both MCP
//!   revisions), read back with `ibkr-gateway audit tail` from another process;
//! - neither the token, nor its signature, nor its `jti` is anywhere in the state directory's
//!   bytes (database, WAL, shared memory) or in the CLI output;
//! - the HMAC secret, absent from the environment, is generated once (0600 in `state_dir`)
//!   and the same token id comes back after a restart.

use crate::common::*;
use serde_json::{Value, json};

fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
}

/// Every byte of every file in `dir` (recursively).
fn all_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

async fn tail(config: &std::path::Path) -> Vec<Value> {
    let output = run_cli(vec![
        "audit".into(),
        "tail".into(),
        "--config".into(),
        config.into(),
        "--limit".into(),
        "100".into(),
        "--json".into(),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Value>(&output.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn one_record_per_call_and_never_the_token() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let config = dev_config(&issuer.url(), &state_dir);
    let handle = ibkr_gateway::start(config.clone()).await.unwrap();
    let config_file = write_config(dir.path(), &config);
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered_sessions(&mut events, 1).await;
    let mut seen = scripted_sidecar(sidecar, |request| {
        vec![result_frame(request, json!({"accounts": ["DU1"]}))]
    });

    let url = handle.mcp_url();
    let claims = issuer.claims("alice", &url, &["ibkr:health:read", "ibkr:accounts:read"]);
    let jti = claims["jti"].as_str().unwrap().to_string();
    let token = issuer.key.sign(&claims);
    let signature = token.rsplit('.').next().unwrap().to_string();

    let mut session = McpClient::new(&url, &token);
    session.initialize().await;
    let call = |name: &str, arguments: Value| json!({"name": name, "arguments": arguments});
    // 1. forwarded and answered
    let answer = session
        .request("tools/call", call("ibkr_accounts_list", json!({})))
        .await;
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    let Frame::Request(forwarded) = next_seen(&mut seen).await else {
        panic!("expected the request");
    };
    // 2. refused by the schema check
    session
        .request("tools/call", call("ibkr_accounts_list", json!({"x": 1})))
        .await;
    // 3. an unknown tool
    session
        .request("tools/call", call("ibkr_launch_rockets", json!({})))
        .await;
    // 4. refused for scope at the HTTP layer (403)
    let response = session
        .post(&json!({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
            "params": call("ibkr_quote", json!({"symbol": "AAPL"}))}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // 5. health, over the 2026-07-28 revision
    let response = stateless_request(
        &http(),
        &url,
        &token,
        5,
        "tools/call",
        call("ibkr_health", json!({})),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    read_jsonrpc_messages(response, 5).await;
    assert!(matches!(next_seen(&mut seen).await, Frame::Request(_)));
    // Not calls: a listing, and a request refused before authentication.
    session.request("tools/list", json!({})).await;
    let refused = http()
        .post(&url)
        .bearer_auth("a.b.c")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": call("ibkr_health", json!({}))}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Read back from another process while the gateway runs.
    assert!(handle.flush_audit().await);
    let records = tail(&config_file).await;
    assert_eq!(records.len(), 5, "{records:#?}");
    let outcomes: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["tool"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("ibkr_accounts_list", "ok"),
            ("ibkr_accounts_list", "ARGUMENTS_INVALID"),
            ("-", "TOOL_UNKNOWN"),
            ("ibkr_quote", "AUTH_INSUFFICIENT_SCOPE"),
            ("ibkr_health", "ok"),
        ]
    );
    let first = &records[0];
    assert_eq!(first["subject"], "alice");
    assert_eq!(first["scope"], "ibkr:accounts:read");
    assert_eq!(first["sidecar_id"], "laptop-1");
    assert_eq!(first["request_id"], json!(forwarded.request_id.to_hex()));
    assert_eq!(
        first["payload_hash"],
        json!(hex::encode(forwarded.payload_hash))
    );
    assert!(first["latency_ms"].is_i64());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let token_id = first["token_id_hmac"].as_str().unwrap().to_string();
    assert_eq!(token_id.len(), 32);
    for record in &records {
        assert_eq!(record["token_id_hmac"], json!(token_id), "{record}");
    }
    assert_eq!(records[1]["request_id"], Value::Null);
    assert_eq!(records[3]["scope"], "ibkr:marketdata:read");
    // What a record lacks is null in JSON, never the text form's `-` (docs/operations.md);
    // only an unknown tool's name is stored as `-`.
    let unknown = &records[2];
    for field in ["scope", "request_id", "payload_hash", "sidecar_id"] {
        assert_eq!(unknown[field], Value::Null, "{field}: {unknown}");
    }
    assert_eq!(unknown["tool"], "-");

    // The text form, too, carries no token.
    let output = run_cli(vec![
        "audit".into(),
        "tail".into(),
        "--config".into(),
        config_file.clone().into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.contains("ibkr_accounts_list\tok"), "{text}");
    // The same unknown-tool record in text: `-` where JSON has null.
    let line: Vec<&str> = text.lines().nth(2).unwrap().split('\t').collect();
    assert_eq!(line[1..4], ["alice", "-", "TOOL_UNKNOWN"], "{line:?}");
    assert!(line[4].ends_with("ms"), "{line:?}");
    assert_eq!(
        line[5..9],
        ["scope=-", "sidecar=-", "request=-", "payload=-"],
        "{line:?}"
    );
    assert_eq!(line[9], format!("token={token_id}"));

    let address = handle.local_addr();
    handle.shutdown().await;
    for (file, bytes) in all_bytes(&state_dir) {
        for secret in [&token, &signature, &jti] {
            assert!(!contains(&bytes, secret), "{file} holds token material");
        }
    }
    assert!(!text.contains(&token) && !text.contains(&signature) && !text.contains(&jti));

    // The secret was generated once, privately, and survives a restart.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state_dir.join("audit_hmac.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Same address (so the token's audience still names this gateway), same state_dir.
    let mut again = ibkr_gateway::GatewayConfiguration::for_dev(address, &issuer.url(), &state_dir);
    again.instance_id = config.instance_id.clone();
    let handle = ibkr_gateway::start(again).await.unwrap();
    assert_eq!(handle.mcp_url(), url);
    let response = stateless_request(
        &http(),
        &handle.mcp_url(),
        &token,
        6,
        "tools/call",
        call("ibkr_health", json!({})),
        json!({}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    read_jsonrpc_messages(response, 6).await;
    handle.shutdown().await;
    let records = tail(&config_file).await;
    assert_eq!(records.len(), 6);
    assert_eq!(records[5]["token_id_hmac"], json!(token_id));
}

use protocol::frame::Frame;

#[tokio::test]
async fn the_shared_trail_needs_the_cluster_store_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dev_config("https://issuer.example", &dir.path().join("state"));
    let config_file = write_config(dir.path(), &config);
    let output = run_cli(vec![
        "audit".into(),
        "tail".into(),
        "--config".into(),
        config_file.into(),
        "--shared".into(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CONFIG_INVALID"), "{stderr}");
    assert!(stderr.contains("store.backend"), "{stderr}");
    assert!(output.stdout.is_empty());
}
