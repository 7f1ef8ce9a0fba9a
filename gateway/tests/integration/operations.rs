//! Operations endpoints and process behaviour, over real loopback sockets and the real binary:
//!
//! - `GET /healthz` (alive), `GET /readyz` (store reachable and signing keys loaded; else
//!   503), `GET /metrics` (Prometheus text; loopback without forwarding headers, or the
//!   `metrics.bearer_token_env` token) with every series present and sane after a call;
//! - `log_format: json` makes every log line a JSON object;
//! - secrets named by the configuration are checked at start: a short audit HMAC secret or a
//!   missing metrics token refuses to start (exit 2, naming the key).

use crate::common::*;
use serde_json::{Value, json};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The value of one un-labelled or labelled series in a Prometheus text.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().unwrap())
        })
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let base = handle.base_url();
    let client = http();

    let response = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let response = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ready", "store": "ok", "signing_keys": "loaded"})
    );

    // A call through a connected sidecar, then the series.
    let (key, _) = pair(&handle, "alice", "laptop-1").await;
    let mut events = handle.subscribe_sessions();
    let sidecar = FakeSidecar::connect(&handle, &key, "laptop-1").await;
    registered_sessions(&mut events, 1).await;
    let _seen = scripted_sidecar(sidecar, |request| {
        vec![result_frame(request, json!({"accounts": ["DU1"]}))]
    });
    let url = handle.mcp_url();
    let mut alice = McpClient::new(&url, &issuer.token("alice", &url, &["ibkr:accounts:read"]));
    alice.initialize().await;
    let answer = alice
        .request(
            "tools/call",
            json!({"name": "ibkr_accounts_list", "arguments": {}}),
        )
        .await;
    assert_eq!(answer["result"]["isError"], json!(false));
    let answer = alice
        .request(
            "tools/call",
            json!({"name": "ibkr_accounts_list", "arguments": {"x": 1}}),
        )
        .await;
    assert_eq!(answer["result"]["isError"], json!(true));
    assert!(handle.flush_audit().await);

    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for family in [
        "ibkr_gateway_relay_sessions gauge",
        "ibkr_gateway_tool_calls_total counter",
        "ibkr_gateway_tool_call_duration_seconds histogram",
        "ibkr_gateway_jwks_refreshes_total counter",
        "ibkr_gateway_rate_limited_total counter",
        "ibkr_gateway_audit_dropped_total counter",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "{family}\n{text}"
        );
    }
    let value = |name: &str| series(&text, name).unwrap_or_else(|| panic!("{name}\n{text}"));
    assert_eq!(value("ibkr_gateway_relay_sessions"), 1.0);
    assert_eq!(
        value("ibkr_gateway_tool_calls_total{tool=\"ibkr_accounts_list\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value(
            "ibkr_gateway_tool_calls_total{tool=\"ibkr_accounts_list\",outcome=\"ARGUMENTS_INVALID\"}"
        ),
        1.0
    );
    assert_eq!(
        value("ibkr_gateway_tool_call_duration_seconds_count{tool=\"ibkr_accounts_list\"}"),
        2.0
    );
    assert_eq!(
        value(
            "ibkr_gateway_tool_call_duration_seconds_bucket{tool=\"ibkr_accounts_list\",le=\"+Inf\"}"
        ),
        2.0
    );
    let sum = value("ibkr_gateway_tool_call_duration_seconds_sum{tool=\"ibkr_accounts_list\"}");
    assert!((0.0..10.0).contains(&sum), "{sum}");
    // Buckets are cumulative and end at the count.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with(
                "ibkr_gateway_tool_call_duration_seconds_bucket{tool=\"ibkr_accounts_list\"",
            )
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(
        value("ibkr_gateway_jwks_refreshes_total{result=\"success\"}"),
        1.0
    );
    assert_eq!(
        value("ibkr_gateway_jwks_refreshes_total{result=\"failure\"}"),
        0.0
    );
    assert_eq!(
        value("ibkr_gateway_rate_limited_total{scope=\"peer\"}"),
        0.0
    );
    assert_eq!(
        value("ibkr_gateway_rate_limited_total{scope=\"subject\"}"),
        0.0
    );
    assert_eq!(value("ibkr_gateway_audit_dropped_total"), 0.0);
    assert_eq!(value("ibkr_gateway_audit_written_total"), 2.0);

    // Through a proxy (forwarding headers), loopback is not enough.
    let response = client
        .get(format!("{base}/metrics"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "AUTH_REQUIRED");
    handle.shutdown().await;

    // Without the signing keys the gateway is alive but not ready.
    issuer.set_available(false);
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let base = handle.base_url();
    let response = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "not_ready", "store": "ok", "signing_keys": "not_loaded"})
    );
    let text = handle.metrics_text();
    assert_eq!(
        series(
            &text,
            "ibkr_gateway_jwks_refreshes_total{result=\"failure\"}"
        ),
        Some(1.0)
    );
    handle.shutdown().await;
}

struct Served {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    lines: Vec<String>,
}

/// Starts `ibkr-gateway serve` and waits for its `gateway listening` line.
async fn serve(config: &std::path::Path, env: &[(&str, &str)]) -> Served {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ibkr-gateway"));
    command
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut lines = Vec::new();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line.clone());
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
            if event["fields"]["message"] == "gateway listening" {
                return event["fields"]["local_addr"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        }
        panic!("the gateway exited: {lines:?}");
    })
    .await
    .expect("the gateway did not start");
    Served { child, addr, lines }
}

#[tokio::test]
async fn the_binary_logs_json_and_guards_metrics_with_the_configured_token() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), &dir.path().join("state"));
    config.log_format = ibkr_gateway::config::LogFormat::Json;
    config.metrics.bearer_token_env = Some("IBKR_GATEWAY_TEST_METRICS_TOKEN".into());
    let file = write_config(dir.path(), &config);
    let token = "metrics-token-0123456789abcdef";
    let mut served = serve(&file, &[("IBKR_GATEWAY_TEST_METRICS_TOKEN", token)]).await;
    assert!(served.lines.iter().all(|line| line.starts_with('{')));

    let client = http();
    let url = format!("http://{}/metrics", served.addr);
    let remote = |bearer: Option<&str>| {
        let mut request = client.get(&url).header("x-forwarded-for", "203.0.113.7");
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    let response = remote(None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"metrics\""
    );
    assert_eq!(
        remote(Some("wrong-token-0123456789"))
            .await
            .unwrap()
            .status(),
        401
    );
    let response = remote(Some(token)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("ibkr_gateway_relay_sessions 0")
    );
    // A direct loopback scrape needs no token.
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    served.child.start_kill().unwrap();
    let _ = served.child.wait().await;
}

#[tokio::test]
async fn secrets_named_by_the_configuration_are_checked_at_start() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let mut config = dev_config(&issuer.url(), &state_dir);
    config.remote_mcp.token_id_hmac_secret_env = "IBKR_GATEWAY_TEST_AUDIT_SECRET".into();
    let file = write_config(dir.path(), &config);

    let run = |env: Vec<(&'static str, &'static str)>, file: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ibkr-gateway"));
            command
                .args(["serve", "--config"])
                .arg(&file)
                .env_remove("RUST_LOG");
            for (key, value) in env {
                command.env(key, value);
            }
            command.output().unwrap()
        })
        .await
        .unwrap()
    };

    let output = run(
        vec![("IBKR_GATEWAY_TEST_AUDIT_SECRET", "tiny-s3cret")],
        file.clone(),
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CONFIG_INVALID at remote_mcp.token_id_hmac_secret_env"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("tiny-s3cret"),
        "the secret was echoed: {stderr}"
    );
    assert!(
        !state_dir.exists(),
        "state_dir was written before the refusal"
    );

    config.metrics.bearer_token_env = Some("IBKR_GATEWAY_TEST_METRICS_TOKEN_UNSET".into());
    let file = write_config(dir.path(), &config);
    let output = run(Vec::new(), file).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CONFIG_INVALID at metrics.bearer_token_env"),
        "{stderr}"
    );
    assert!(!state_dir.exists());
}
