//! Idle MCP sessions: what each costs the gateway, and whether the memory comes back when the
//! sessions close.
//!
//! The gateway runs alone in its own process (this binary as `serve-gateway`), so its
//! resident memory is its own. This process opens the sessions with plain HTTP requests
//! (`initialize`, then `notifications/initialized`), as a 2025-11-25 client does, keeping
//! nothing but the session ids, and closes them with `DELETE /mcp`. Sessions are spread over
//! users so that none reaches the per-user cap.

use crate::{BenchResult, Memory, bench_error, memory_of};
use e2e::system::{System, SystemOptions};
use protocol::catalog::scopes;
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

/// Sessions each user holds in the run (below the default per-user cap of 64).
const SESSIONS_PER_USER: usize = 50;
/// Idle time before each reading with the sessions open: the requests' buffers and tasks are
/// gone.
const SETTLE: Duration = Duration::from_secs(3);
/// Idle time before each reading after the sessions closed: jemalloc hands freed pages back
/// after its decay time (10 s), on its background thread.
const RETURN_SETTLE: Duration = Duration::from_secs(15);
const PROTOCOL_VERSION: &str = "2025-11-25";

#[derive(Clone, Debug, Serialize)]
pub struct McpSessionReport {
    pub sessions: usize,
    pub rounds: usize,
    pub baseline: Memory,
    /// Memory with the sessions of each round open (idle), then after closing them.
    pub open: Vec<Memory>,
    pub closed: Vec<Memory>,
}

impl McpSessionReport {
    /// Resident bytes per idle session, first round (RssAnon, the heap).
    pub fn per_session_anon(&self) -> f64 {
        let open = self.open.first().map_or(0, |memory| memory.anon);
        open.saturating_sub(self.baseline.anon) as f64 / self.sessions.max(1) as f64
    }

    /// RssAnon the first round's open sessions took.
    pub fn first_round_growth(&self) -> u64 {
        self.open
            .first()
            .map_or(0, |memory| memory.anon.saturating_sub(self.baseline.anon))
    }

    /// RssAnon left over after the last round closed its sessions.
    pub fn retained_after_close(&self) -> u64 {
        self.closed
            .last()
            .map_or(0, |memory| memory.anon.saturating_sub(self.baseline.anon))
    }
}

struct Session {
    token: String,
    id: String,
}

async fn open_session(http: &reqwest::Client, mcp_url: &str, token: &str) -> BenchResult<String> {
    let response = http
        .post(mcp_url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL_VERSION)
        .json(&json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "ibkr-bench", "version": "1"}
            }
        }))
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(bench_error(format!(
            "initialize answered {}",
            response.status()
        )));
    }
    let id = response
        .headers()
        .get("mcp-session-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| bench_error("initialize opened no session"))?;
    let _ = response.bytes().await?;
    let initialized = http
        .post(mcp_url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL_VERSION)
        .header("mcp-session-id", &id)
        .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await?;
    if !initialized.status().is_success() {
        return Err(bench_error(format!(
            "notifications/initialized answered {}",
            initialized.status()
        )));
    }
    Ok(id)
}

async fn close_session(
    http: &reqwest::Client,
    mcp_url: &str,
    session: &Session,
) -> BenchResult<()> {
    let response = http
        .delete(mcp_url)
        .bearer_auth(&session.token)
        .header("mcp-protocol-version", PROTOCOL_VERSION)
        .header("mcp-session-id", &session.id)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(bench_error(format!(
            "DELETE /mcp answered {}",
            response.status()
        )));
    }
    Ok(())
}

pub async fn run(sessions: usize, rounds: usize) -> BenchResult<McpSessionReport> {
    let exe = std::env::current_exe()?;
    let mut system = System::start(SystemOptions {
        with_sidecar: false,
        rate_limit_per_minute: Some(1_000_000),
        ..SystemOptions::default()
    })
    .await
    .map_err(|error| bench_error(error.to_string()))?;
    let gateway = system
        .start_gateway_process_with(&exe, &["serve-gateway"])
        .await
        .map_err(|error| bench_error(error.to_string()))?;
    let status = format!("/proc/{}/status", gateway.pid());
    let mcp_url = system
        .mcp_url()
        .map_err(|error| bench_error(error.to_string()))?;
    let users = sessions.div_ceil(SESSIONS_PER_USER);
    let mut tokens = Vec::with_capacity(users);
    for user in 0..users {
        tokens.push(
            system
                .token_for(&format!("bench-user-{user}"), &[scopes::HEALTH_READ])
                .map_err(|error| bench_error(error.to_string()))?,
        );
    }
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;

    tokio::time::sleep(SETTLE).await;
    let baseline = memory_of(&status)?;
    let mut open = Vec::new();
    let mut closed = Vec::new();
    for round in 0..rounds {
        eprintln!(
            "  round {}/{rounds}: opening {sessions} idle MCP sessions ...",
            round + 1
        );
        let mut held = Vec::with_capacity(sessions);
        for index in 0..sessions {
            let token = &tokens[index / SESSIONS_PER_USER];
            let id = open_session(&http, &mcp_url, token).await?;
            held.push(Session {
                token: token.clone(),
                id,
            });
        }
        tokio::time::sleep(SETTLE).await;
        open.push(memory_of(&status)?);
        for session in &held {
            close_session(&http, &mcp_url, session).await?;
        }
        tokio::time::sleep(RETURN_SETTLE).await;
        closed.push(memory_of(&status)?);
    }
    drop(gateway);
    system.shutdown().await;
    Ok(McpSessionReport {
        sessions,
        rounds,
        baseline,
        open,
        closed,
    })
}
