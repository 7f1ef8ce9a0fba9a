//! The soak's gateway: `ibkr_gateway::start` in a helper process of its own, so that its
//! resident memory (`/proc/<pid>/status`) is the gateway's alone: the MCP clients, the sidecar
//! daemons, the CPGW simulators and the relay peers all live in other processes.
//!
//! The helper prints `READY <base url>`, then every session event of the gateway as it happens
//! (`REG <sidecar id> <user>`, `DROP <sidecar id> <reason>`, `LAGGED <missed>`), and answers
//! `LIVE` with `LIVE <registered sessions>`. `STOP` (or EOF) shuts the gateway down gracefully.

use super::process::{HelperProcess, expect_line};
use super::tracker::Tracker;
use crate::{BenchResult, Memory, bench_error, memory_of};
use e2e::system::loopback;
use ibkr_gateway::{GatewayConfiguration, SessionEvent};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// The soak's gateway configuration: the development configuration (relay and remote MCP on,
/// plain HTTP on loopback) with the product's defaults, except the limits that would count
/// every client and every sidecar as one host, because here they all dial from 127.0.0.1.
pub(super) fn soak_gateway_config(
    issuer_url: &str,
    state_dir: &Path,
    sidecars: usize,
) -> GatewayConfiguration {
    let mut config = GatewayConfiguration::for_dev(loopback(0), issuer_url, state_dir);
    let remote = &mut config.remote_mcp;
    remote.rate_limit_per_peer_per_minute = 1_000_000;
    remote.max_relay_connections = remote.max_relay_connections.max(sidecars + 64);
    remote.max_connections_per_peer = remote.max_connections + remote.max_relay_connections;
    config
}

/// The configuration as report rows: key, value, and whether it is the product's default.
pub(super) fn describe_config(config: &GatewayConfiguration) -> Vec<(String, String, bool)> {
    let defaults = GatewayConfiguration::for_dev(loopback(0), "http://127.0.0.1:9", "/tmp");
    let mut rows = Vec::new();
    let mut row = |key: &str, value: String, default: String| {
        let is_default = value == default;
        rows.push((key.to_string(), value, is_default));
    };
    let (s, d) = (&config.sidecar, &defaults.sidecar);
    row(
        "sidecar.heartbeat_interval_seconds",
        s.heartbeat_interval_seconds.to_string(),
        d.heartbeat_interval_seconds.to_string(),
    );
    row(
        "sidecar.heartbeat_timeout_seconds",
        s.heartbeat_timeout_seconds.to_string(),
        d.heartbeat_timeout_seconds.to_string(),
    );
    row(
        "sidecar.session_ttl_seconds",
        s.session_ttl_seconds.to_string(),
        d.session_ttl_seconds.to_string(),
    );
    row(
        "sidecar.request_timeout_seconds",
        s.request_timeout_seconds.to_string(),
        d.request_timeout_seconds.to_string(),
    );
    row(
        "sidecar.max_in_flight_per_sidecar",
        s.max_in_flight_per_sidecar.to_string(),
        d.max_in_flight_per_sidecar.to_string(),
    );
    let (r, d) = (&config.remote_mcp, &defaults.remote_mcp);
    row(
        "remote_mcp.rate_limit_per_subject_per_minute",
        r.rate_limit_per_subject_per_minute.to_string(),
        d.rate_limit_per_subject_per_minute.to_string(),
    );
    row(
        "remote_mcp.rate_limit_per_peer_per_minute",
        r.rate_limit_per_peer_per_minute.to_string(),
        d.rate_limit_per_peer_per_minute.to_string(),
    );
    row(
        "remote_mcp.max_connections",
        r.max_connections.to_string(),
        d.max_connections.to_string(),
    );
    row(
        "remote_mcp.max_relay_connections",
        r.max_relay_connections.to_string(),
        d.max_relay_connections.to_string(),
    );
    row(
        "remote_mcp.max_connections_per_peer",
        r.max_connections_per_peer.to_string(),
        d.max_connections_per_peer.to_string(),
    );
    row(
        "audit.retention_days",
        config.audit.retention_days.to_string(),
        defaults.audit.retention_days.to_string(),
    );
    rows
}

/// The helper process's side.
pub(super) async fn run_gateway(
    state_dir: &Path,
    issuer_url: &str,
    sidecars: usize,
) -> BenchResult<()> {
    let gateway = ibkr_gateway::start(soak_gateway_config(issuer_url, state_dir, sidecars)).await?;
    let mut events = gateway.subscribe_sessions();
    println!("READY {}", gateway.base_url());
    let reporter = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(SessionEvent::Registered {
                    sidecar_id,
                    user_id,
                }) => println!("REG {sidecar_id} {user_id}"),
                Ok(SessionEvent::Dropped { sidecar_id, reason }) => {
                    println!("DROP {sidecar_id} {reason:?}");
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => println!("LAGGED {missed}"),
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let (sender, mut commands) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(command) = commands.recv().await {
        match command.trim() {
            "LIVE" => println!("LIVE {}", gateway.live_sidecars().len()),
            "STOP" => break,
            other => eprintln!("soak gateway: unknown command {other:?}"),
        }
    }
    gateway.shutdown().await;
    reporter.abort();
    Ok(())
}

/// The soak's side: the running helper, its answers, and its events fed to the tracker.
pub(super) struct GatewayProcess {
    process: HelperProcess,
    replies: mpsc::UnboundedReceiver<String>,
    base_url: String,
}

impl GatewayProcess {
    pub(super) async fn start(
        exe: &Path,
        state_dir: &Path,
        issuer_url: &str,
        sidecars: usize,
        tracker: Arc<Tracker>,
    ) -> BenchResult<Self> {
        let args = vec![
            "soak-gateway".to_string(),
            "--state-dir".to_string(),
            state_dir.display().to_string(),
            "--issuer-url".to_string(),
            issuer_url.to_string(),
            "--sidecars".to_string(),
            sidecars.to_string(),
        ];
        let (process, mut lines) = HelperProcess::spawn("gateway", exe, &args)?;
        let (replies_sender, mut replies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                let mut words = line.split_whitespace();
                let now = Instant::now();
                match (words.next(), words.next(), words.next()) {
                    (Some("REG"), Some(sidecar_id), Some(user)) => {
                        tracker.registered(sidecar_id, user, now);
                    }
                    (Some("DROP"), Some(sidecar_id), Some(reason)) => {
                        tracker.dropped(sidecar_id, reason, now);
                    }
                    (Some("LAGGED"), Some(missed), _) => {
                        tracker.lagged(missed.parse().unwrap_or(1));
                    }
                    _ => {
                        if replies_sender.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let ready = expect_line(
            &mut replies,
            "READY",
            Duration::from_secs(60),
            "the gateway to start",
        )
        .await?;
        let base_url = ready
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| bench_error(format!("malformed {ready:?}")))?
            .to_string();
        if !base_url.starts_with("http://127.0.0.1:") {
            return Err(bench_error(format!(
                "the soak's gateway must listen on 127.0.0.1, not {base_url}"
            )));
        }
        Ok(GatewayProcess {
            process,
            replies,
            base_url,
        })
    }

    pub(super) fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base_url)
    }

    pub(super) fn relay_url(&self) -> String {
        format!("{}/relay", self.base_url.replacen("http://", "ws://", 1))
    }

    pub(super) fn metrics_url(&self) -> String {
        format!("{}/metrics", self.base_url)
    }

    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The gateway process's resident memory now.
    pub(super) fn memory(&self) -> BenchResult<Memory> {
        memory_of(&format!("/proc/{}/status", self.process.pid()))
    }

    /// Sessions the gateway has registered, by its own count.
    pub(super) async fn live(&mut self) -> BenchResult<usize> {
        self.process.sink().send("LIVE")?;
        let line = expect_line(
            &mut self.replies,
            "LIVE",
            Duration::from_secs(10),
            "the live session count",
        )
        .await?;
        line.split_whitespace()
            .nth(1)
            .and_then(|count| count.parse().ok())
            .ok_or_else(|| bench_error(format!("malformed {line:?}")))
    }

    pub(super) async fn stop(self) -> BenchResult<()> {
        self.process.stop(Duration::from_secs(60)).await
    }
}
