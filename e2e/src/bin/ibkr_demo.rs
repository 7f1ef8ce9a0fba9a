//! `ibkr-demo`: the whole product on this machine, no IBKR account needed.
//!
//! Starts the CPGW simulator (HTTPS), a dev OAuth issuer, the gateway and a sidecar, pairs them
//! through the real SPAKE2 flow, then drives a scripted agent session through a real MCP client
//! over HTTP and exits 0. With `--serve` it keeps everything running and prints what a real
//! agent needs to connect.
#![forbid(unsafe_code)]

use clap::Parser;
use e2e::cpgw_sim::AuthState;
use e2e::dev_issuer::TokenRequest;
use e2e::system::{System, SystemOptions};
use protocol::catalog::scopes;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "ibkr-demo",
    about = "Run the whole IBKR agent gateway on this machine against a CPGW simulator"
)]
struct Args {
    /// Keep the system running and print the MCP URL, a bearer token and a `claude mcp add` line.
    #[arg(long)]
    serve: bool,
    /// Lifetime of the bearer token printed by --serve, in seconds.
    #[arg(long, default_value_t = 8 * 3600)]
    token_lifetime_seconds: i64,
}

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn step(number: usize, text: &str) {
    println!("\n[{number}] {text}");
}

fn show(label: &str, value: &Value) {
    let pretty = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    println!("    {label}:");
    for line in pretty.lines() {
        println!("      {line}");
    }
}

fn structured(result: &CallToolResult) -> Value {
    result.structured_content.clone().unwrap_or(Value::Null)
}

async fn call(
    system: &System,
    token: &str,
    tool: &str,
    arguments: Value,
) -> DemoResult<CallToolResult> {
    let client = system.mcp_client(token).await?;
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = arguments {
        params = params.with_arguments(map);
    }
    let result = client.call_tool(params).await;
    let _ = client.cancel().await;
    Ok(result?)
}

fn expect(condition: bool, what: &str) -> DemoResult<()> {
    if condition {
        Ok(())
    } else {
        Err(format!("demo check failed: {what}").into())
    }
}

async fn run(args: Args) -> DemoResult<()> {
    println!("IBKR agent gateway: the whole system on this machine (no IBKR account needed)");

    step(
        1,
        "Starting the CPGW simulator, the dev OAuth issuer and the gateway",
    );
    let mut system = System::start(SystemOptions {
        with_sidecar: false,
        heartbeat_interval_seconds: 5,
        heartbeat_timeout_seconds: 15,
        ..SystemOptions::default()
    })
    .await?;
    let gateway = system.gateway()?;
    println!(
        "    CPGW simulator (HTTPS, self-signed): {}",
        system.sim.base_url()
    );
    println!(
        "    dev OAuth issuer:                    {}",
        system.issuer.issuer_url()
    );
    println!(
        "    gateway MCP endpoint:                {}",
        gateway.mcp_url()
    );
    println!(
        "    gateway relay endpoint:              {}",
        gateway.relay_url()
    );
    println!(
        "    gateway key fingerprint:             {}",
        gateway.public_key().fingerprint()
    );

    step(
        2,
        "Pairing a laptop sidecar with the gateway (SPAKE2 over a one-time code)",
    );
    let code = gateway
        .issue_pairing_code(&system.options.user_id, std::time::Duration::from_secs(600))
        .await?;
    println!(
        "    operator: ibkr-gateway pairing code --user-id {}  ->  {code}",
        system.options.user_id
    );
    let record = system.pair_sidecar_with_code(&code).await?;
    println!(
        "    laptop:   ibkr-agent sidecar pair --gateway {} --code <code>",
        system.gateway()?.base_url()
    );
    println!(
        "    paired sidecar {} for user {} with gateway instance {} (gateway fingerprint {})",
        record.sidecar_id,
        record.user_id,
        record.remote_instance_id,
        record.gateway_fingerprint().unwrap_or_default()
    );
    println!(
        "    local scopes granted on the laptop: {}",
        record.local_scopes.to_oauth()
    );
    drop(code);

    step(
        3,
        "Starting the sidecar daemon: it dials out, handshakes (Noise IK) and registers",
    );
    system.start_sidecar().await?;
    for live in system.gateway()?.live_sidecars() {
        println!(
            "    live relay session: sidecar {} for user {}",
            live.sidecar_id, live.user_id
        );
    }

    step(
        4,
        "An agent connects over MCP Streamable HTTP with an OAuth bearer token",
    );
    let token = system.token(&[scopes::HEALTH_READ, scopes::ACCOUNTS_READ])?;
    let client = system.mcp_client(&token).await?;
    let tools: Vec<String> = client
        .list_all_tools()
        .await?
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    let _ = client.cancel().await;
    println!(
        "    tools/list (filtered by the token's scopes): {}",
        tools.join(", ")
    );
    expect(
        tools.iter().any(|t| t == "ibkr_accounts_list"),
        "tools/list shows ibkr_accounts_list",
    )?;

    step(
        5,
        "ibkr_health: gateway, relay, sidecar and broker session in one answer",
    );
    let health = call(&system, &token, "ibkr_health", json!({})).await?;
    show("result", &structured(&health));
    expect(
        structured(&health)["relay"]["connected"] == true,
        "relay connected",
    )?;

    step(6, "ibkr_session_status");
    let status = call(&system, &token, "ibkr_session_status", json!({})).await?;
    show("result", &structured(&status));
    expect(status.is_error != Some(true), "session status succeeds")?;

    step(
        7,
        "ibkr_accounts_list (CPGW session material is stripped on the laptop)",
    );
    let accounts = call(&system, &token, "ibkr_accounts_list", json!({})).await?;
    show("result", &structured(&accounts));
    expect(
        structured(&accounts)["selected_account"] == "DU1234567",
        "paper account listed",
    )?;

    step(
        8,
        "The CPGW session lapses: the agent is told to ask for a manual login, nothing logs in",
    );
    system.sim.set_auth_state(AuthState::LoggedOut);
    let manual = call(&system, &token, "ibkr_accounts_list", json!({})).await?;
    show("result", &structured(&manual));
    expect(
        structured(&manual)["code"] == "BROKER_SESSION_REQUIRED",
        "manual action required",
    )?;
    system.sim.set_auth_state(AuthState::LoggedIn);

    step(
        9,
        "A prompt-injected call smuggling a cookie is refused before it leaves the gateway",
    );
    let refused = call(
        &system,
        &token,
        "ibkr_accounts_list",
        json!({"cookie": "x-sess-uuid=abc"}),
    )
    .await?;
    show("result", &structured(&refused));
    expect(refused.is_error == Some(true), "cookie refused")?;

    step(
        10,
        "A token without the accounts scope does not even see the tool",
    );
    let narrow = system.token(&[scopes::HEALTH_READ])?;
    let client = system.mcp_client(&narrow).await?;
    let narrow_tools: Vec<String> = client
        .list_all_tools()
        .await?
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    let _ = client.cancel().await;
    println!("    tools/list: {}", narrow_tools.join(", "));
    expect(
        !narrow_tools.iter().any(|t| t == "ibkr_accounts_list"),
        "narrow token hides accounts",
    )?;

    if args.serve {
        serve(&system, args.token_lifetime_seconds).await?;
    } else {
        println!(
            "\nDemo finished: every step above went agent -> gateway -> encrypted relay -> sidecar -> CPGW simulator."
        );
        println!("Run with --serve to keep it running and connect your own MCP client.");
    }
    system.shutdown().await;
    Ok(())
}

async fn serve(system: &System, lifetime_seconds: i64) -> DemoResult<()> {
    let url = system.mcp_url()?;
    let mut request = TokenRequest::new(&system.options.user_id, &url, &[]);
    // Every scope except live trading: orders (later) stay on the paper account.
    request.scopes = scopes::ALL
        .iter()
        .filter(|scope| **scope != scopes::ORDERS_LIVE)
        .map(|scope| scope.to_string())
        .collect();
    request.lifetime_seconds = lifetime_seconds;
    let token = system.issuer.mint(&request)?;
    println!("\nServing. Connect an MCP client:");
    println!("    MCP URL:      {url}");
    println!("    bearer token: {token}");
    println!(
        "    claude mcp add --transport http ibkr {url} --header \"Authorization: Bearer {token}\""
    );
    println!(
        "    (token valid for {lifetime_seconds} s; scopes: {})",
        request.scopes.join(" ")
    );
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    println!("Stopping.");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ibkr-demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}
