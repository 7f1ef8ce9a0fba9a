//! `ibkr-bench cluster`: what crossing replicas costs. Two gateway replicas on a private
//! PostgreSQL and a private NATS server, the sidecar connected to replica 0; the same call
//! (`ibkr_market_status`, which touches no CPGW) made through replica 0 (same replica) and
//! through replica 1 (forwarded over NATS): latency one call at a time, then calls per second
//! with several clients. Everything in this process, on loopback.

use crate::BenchResult;
use crate::bench_error;
use crate::speed::{HOP_TOOL, Latency};
use e2e::cluster::Cluster;
use protocol::catalog::scopes;
use rmcp::model::CallToolRequestParams;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Timed calls of each one-at-a-time series.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub calls: u32,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Clients of each throughput run.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients: u32,
}

#[derive(Debug, Serialize)]
struct Series {
    replica: &'static str,
    latency: Latency,
    calls_per_second: f64,
}

const SCOPES: &[&str] = &[scopes::HEALTH_READ, scopes::MARKETDATA_READ];

async fn one_call(client: &rmcp::Peer<rmcp::RoleClient>) -> BenchResult<()> {
    let result = client
        .call_tool(CallToolRequestParams::new(HOP_TOOL.to_string()))
        .await?;
    if result.is_error == Some(true) {
        return Err(bench_error(format!("{HOP_TOOL} refused: {result:?}")));
    }
    Ok(())
}

async fn series(cluster: &Cluster, replica: usize, args: &ClusterArgs) -> BenchResult<Series> {
    let token = cluster.token(replica, SCOPES)?;
    let client = cluster.mcp_client(replica, &token).await?;
    for _ in 0..100 {
        one_call(&client).await?;
    }
    let mut samples = Vec::with_capacity(args.calls as usize);
    for _ in 0..args.calls {
        let started = Instant::now();
        one_call(&client).await?;
        samples.push(started.elapsed());
    }
    let _ = client.cancel().await;

    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(cluster.mcp_client(replica, &token).await?);
    }
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < until {
                one_call(&client).await?;
                done += 1;
            }
            let _ = client.cancel().await;
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(done)
        }));
    }
    let mut total = 0u64;
    for task in tasks {
        total += task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Series {
        replica: if replica == 0 {
            "same replica"
        } else {
            "across replicas"
        },
        latency: Latency::of(samples),
        calls_per_second: total as f64 / elapsed,
    })
}

pub async fn run(args: ClusterArgs) -> BenchResult<()> {
    // One user's agents calling flat out: the per-user and per-address limits are not what
    // is measured.
    let Some(mut cluster) = Cluster::start_with(2, |config| {
        config.remote_mcp.rate_limit_per_subject_per_minute = 1_000_000;
        config.remote_mcp.rate_limit_per_peer_per_minute = 1_000_000;
        config.remote_mcp.max_connections_per_peer = 1024;
        config.remote_mcp.max_sessions_per_user = 1024;
    })
    .await?
    else {
        return Err(bench_error(
            "PostgreSQL and nats-server are needed (apt-get install postgresql nats-server)",
        ));
    };
    let pairing = cluster.pair(0, 0).await?;
    ibkr_agent::StateStore::open(cluster.sidecar_state_dir())?.set_local_scopes(
        &pairing.remote_instance_id,
        &pairing.sidecar_id,
        &shared_safety::scope::ScopeSet::from_list(SCOPES),
    )?;
    cluster.start_sidecar(0).await?;
    let same = series(&cluster, 0, &args).await?;
    let across = series(&cluster, 1, &args).await?;
    println!(
        "{:<16} {:>8} {:>9} {:>9} {:>9} {:>11}",
        "", "calls", "p50 ms", "p99 ms", "mean ms", "calls/s"
    );
    for series in [&same, &across] {
        println!(
            "{:<16} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>11.0}",
            series.replica,
            series.latency.calls,
            series.latency.p50_ms,
            series.latency.p99_ms,
            series.latency.mean_ms,
            series.calls_per_second
        );
    }
    println!(
        "crossing replicas adds {:.3} ms at p50 and {:.3} ms at p99 ({} clients for calls/s)",
        across.latency.p50_ms - same.latency.p50_ms,
        across.latency.p99_ms - same.latency.p99_ms,
        args.clients
    );
    println!(
        "{}",
        serde_json::to_string(
            &serde_json::json!({"same_replica": same, "across_replicas": across})
        )?
    );
    cluster.shutdown().await;
    Ok(())
}
