//! Real MCP clients sign in with the built-in authorization server, with no token minted for
//! them: discovery from the 401, registration, the authorization page, the approval on the
//! (in-process) laptop, token, calls, and a refresh.
//!
//! - The official Python MCP SDK (`mcp` on PyPI, pinned in `e2e/clients/python/requirements.txt`)
//!   through `e2e/clients/python/sdk_oauth_client.py`, its redirect handler driven by this test.
//! - `mcp-remote` (npm, pinned in `e2e/clients/mcp-remote/package.json`), its browser replaced
//!   by this test fetching the page and calling its loopback callback.
//!
//! `.ci/run` installs both and sets `IBKR_E2E_PYTHON` (a Python with the SDK) and
//! `IBKR_E2E_MCP_REMOTE` (the `mcp-remote` executable) with `IBKR_E2E_REQUIRE_REAL_CLIENTS=1`;
//! elsewhere a missing client skips its test.

use e2e::authorization::Walk;
use e2e::system::{System, SystemOptions};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const LIMIT: Duration = Duration::from_secs(60);

fn client_from_env(variable: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(path) if PathBuf::from(&path).exists() => Some(PathBuf::from(path)),
        _ => {
            assert!(
                std::env::var_os("IBKR_E2E_REQUIRE_REAL_CLIENTS").is_none(),
                "IBKR_E2E_REQUIRE_REAL_CLIENTS is set but {variable} does not name {what}"
            );
            eprintln!("skipping: {variable} does not name {what}");
            None
        }
    }
}

async fn system() -> System {
    System::start(SystemOptions {
        builtin_authorization_server: true,
        ..SystemOptions::default()
    })
    .await
    .unwrap()
}

/// What a person does with the authorization URL: open the page, name the user, read the
/// code; and the laptop's owner: type it. Answers the URL the browser is sent to.
async fn approve_as_person_and_owner(system: &System, authorize_url: &str) -> String {
    let walk = Walk::new(&system.gateway().unwrap().base_url());
    e2e::authorization::approve_as_person_and_owner(
        &walk,
        authorize_url,
        &system.options.user_id,
        system.sidecar_state_dir(),
        None,
        LIMIT,
    )
    .await
    .unwrap()
    .redirect
}

#[tokio::test]
async fn the_python_sdk_signs_in_with_the_laptops_approval_and_refreshes() {
    let Some(python) = client_from_env("IBKR_E2E_PYTHON", "a Python with the mcp SDK") else {
        return;
    };
    let system = system().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/python/sdk_oauth_client.py"
    );
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(system.mcp_url().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events: Vec<Value> = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("AUTHORIZE ") {
                let redirect = approve_as_person_and_owner(&system, url).await;
                stdin
                    .write_all(format!("CALLBACK {redirect}\n").as_bytes())
                    .await
                    .unwrap();
                stdin.flush().await.unwrap();
            } else if let Ok(event) = serde_json::from_str::<Value>(&line) {
                events.push(event);
            }
        }
    })
    .await
    .expect("the Python client finished in time");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{events:?}");
    let tools = events
        .iter()
        .find(|event| event["event"] == "tools/list")
        .unwrap();
    assert!(
        tools["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|tool| tool == "ibkr_health")
    );
    let refresh = events
        .iter()
        .find(|event| event["event"] == "refresh")
        .unwrap();
    assert_eq!(refresh["access_token_changed"], true, "{refresh}");
    assert_eq!(refresh["refresh_token_changed"], true, "{refresh}");
    assert_eq!(refresh["authorize_calls"], 1, "{refresh}");
    assert_eq!(events.last().unwrap()["event"], "done");
    system.shutdown().await;
}

#[tokio::test]
async fn mcp_remote_signs_in_with_the_laptops_approval_and_refreshes() {
    let Some(mcp_remote) = client_from_env("IBKR_E2E_MCP_REMOTE", "the mcp-remote executable")
    else {
        return;
    };
    let system = system().await;
    let config_dir = tempfile::tempdir().unwrap();
    let callback_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(mcp_remote)
        .arg(system.mcp_url().unwrap())
        .arg(callback_port.to_string())
        .args(["--host", "127.0.0.1", "--transport", "http-only"])
        .env("MCP_REMOTE_CONFIG_DIR", config_dir.path())
        // No browser: the test is the browser.
        .env("BROWSER", "true")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("XDG_CURRENT_DESKTOP")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();

    // The authorization URL is the line after "Please authorize this client by visiting:".
    let authorize_url = tokio::time::timeout(LIMIT, async {
        let mut next_is_url = false;
        while let Some(line) = stderr.next_line().await.unwrap() {
            if next_is_url && line.trim().starts_with("http") {
                return line.trim().to_string();
            }
            next_is_url = line.contains("Please authorize this client by visiting:");
        }
        panic!("mcp-remote exited before asking for authorization");
    })
    .await
    .expect("mcp-remote asked for authorization in time");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let redirect = approve_as_person_and_owner(&system, &authorize_url).await;
    assert!(redirect.starts_with(&format!("http://127.0.0.1:{callback_port}/")));
    let callback = reqwest::get(&redirect).await.unwrap();
    assert_eq!(callback.status(), 200);

    async fn send(stdin: &mut tokio::process::ChildStdin, message: Value) {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }
    async fn answer(
        stdout: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        id: u64,
    ) -> Value {
        tokio::time::timeout(LIMIT, async {
            loop {
                let line = stdout
                    .next_line()
                    .await
                    .unwrap()
                    .expect("mcp-remote answered");
                let message: Value = serde_json::from_str(&line).unwrap();
                if message["id"] == id {
                    return message;
                }
            }
        })
        .await
        .expect("an answer in time")
    }
    send(
        &mut stdin,
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"}}}),
    )
    .await;
    assert!(answer(&mut stdout, 1).await["result"].is_object());
    send(
        &mut stdin,
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    let call = |id: u64| {
        serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "ibkr_health", "arguments": {}}})
    };
    send(&mut stdin, call(2)).await;
    let first = answer(&mut stdout, 2).await;
    assert_ne!(first["result"]["isError"], true, "{first}");

    // Make the stored access token look expired: mcp-remote refreshes before the next call.
    let store = config_dir.path().join("mcp-remote-v1");
    let tokens_file = std::fs::read_dir(&store)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().ends_with("_tokens.json"))
        .expect("mcp-remote stored its tokens");
    let mut tokens: Value = serde_json::from_slice(&std::fs::read(&tokens_file).unwrap()).unwrap();
    let old_refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    tokens["expires_at"] = serde_json::json!(e2e::authorization::now_ms() - 1_000);
    std::fs::write(&tokens_file, tokens.to_string()).unwrap();
    send(&mut stdin, call(3)).await;
    let second = answer(&mut stdout, 3).await;
    assert_ne!(second["result"]["isError"], true, "{second}");
    let tokens: Value = serde_json::from_slice(&std::fs::read(&tokens_file).unwrap()).unwrap();
    assert_ne!(tokens["refresh_token"].as_str().unwrap(), old_refresh);

    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    system.shutdown().await;
}
