//! `ibkr-demo`: the whole product on this machine, no IBKR account needed.
//!
//! Starts the CPGW simulator (HTTPS), a dev OAuth issuer, the gateway and a sidecar, pairs them
//! through the real SPAKE2 flow, then drives a scripted agent session through a real MCP client
//! over HTTP and exits 0. With `--serve` it keeps everything running and prints what a real
//! agent needs to connect.
#![forbid(unsafe_code)]

use clap::Parser;
use e2e::cpgw_sim::AuthState;
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
    /// Keep the system running and print the MCP URL and a `claude mcp add` line. The gateway
    /// is then its own authorization server: a client needs no token, it signs in and the
    /// (simulated) laptop approves it with one command.
    #[arg(long)]
    serve: bool,
}

/// Every scope except live trading: what the demo's agent and the --serve token carry.
fn agent_scopes() -> Vec<&'static str> {
    scopes::ALL
        .iter()
        .copied()
        .filter(|scope| *scope != scopes::ORDERS_LIVE)
        .collect()
}

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A bearer token with `scopes` for the scripted agent. With the built-in authorization server
/// the agent signs in as any client would: the page, its code, and the laptop owner's approval
/// by that code (shown as the command the owner types); otherwise the dev issuer mints it.
async fn agent_token(system: &System, builtin: bool, scopes: &[&str]) -> DemoResult<String> {
    if !builtin {
        return Ok(system.token(scopes)?);
    }
    use e2e::authorization::{Pkce, Walk, approve_on_laptop, query_param, wait_for_request};
    const REDIRECT: &str = "http://127.0.0.1:33418/callback";
    let walk = Walk::new(&system.gateway()?.base_url());
    let client_id = walk.register("ibkr-demo agent", REDIRECT).await?;
    let pkce = Pkce::new();
    let url = walk.authorize_url(&client_id, REDIRECT, &pkce, "demo", Some(&scopes.join(" ")));
    let handle = walk.open_page(&url).await?;
    let code = walk.name_user(&handle, &system.options.user_id).await?;
    println!(
        "    sign-in page: user id {} -> code {code}",
        system.options.user_id
    );
    wait_for_request(
        system.sidecar_state_dir(),
        std::time::Duration::from_secs(15),
    )
    .await?;
    println!("    laptop:   ibkr-agent sidecar agents approve {code}");
    approve_on_laptop(system.sidecar_state_dir(), &code, None)?;
    let redirect = walk
        .decision(&handle, std::time::Duration::from_secs(15))
        .await?;
    let auth_code = query_param(&redirect, "code").ok_or("the sign-in was not approved")?;
    let (status, tokens) = walk
        .redeem(&client_id, REDIRECT, &auth_code, &pkce.verifier)
        .await?;
    expect(status == 200, "the token endpoint issues tokens")?;
    Ok(tokens["access_token"]
        .as_str()
        .ok_or("no access token")?
        .to_string())
}

/// Prints and runs one `ibkr-agent` command line for the laptop, in this process, exactly as
/// the binary would.
async fn ibkr_agent_command(system: &System, args: &[&str]) -> DemoResult<ExitCode> {
    println!("    laptop:   ibkr-agent {}", args.join(" "));
    let state_dir = system.sidecar_state_dir().display().to_string();
    let argv: Vec<String> = ["ibkr-agent", "--state-dir", state_dir.as_str()]
        .iter()
        .chain(args.iter())
        .map(|arg| arg.to_string())
        .collect();
    Ok(tokio::task::spawn_blocking(move || ibkr_agent::cli::main_from(argv)).await?)
}

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
        builtin_authorization_server: args.serve,
        ..SystemOptions::default()
    })
    .await?;
    let gateway = system.gateway()?;
    println!(
        "    CPGW simulator (HTTPS, self-signed): {}",
        system.sim.base_url()
    );
    if args.serve {
        println!(
            "    OAuth: the gateway's own authorization server at {} (the laptop approves agents)",
            gateway.base_url()
        );
    } else {
        println!(
            "    dev OAuth issuer:                    {}",
            system.issuer.issuer_url()
        );
    }
    println!(
        "    gateway MCP endpoint:                {}",
        gateway.mcp_url()
    );
    println!(
        "    gateway relay endpoint:              {}",
        gateway.relay_url()
    );
    println!(
        "    exchange clock (simulated):          {} (a regular-hours Tuesday; the simulator trades any day)",
        e2e::system::SIMULATED_MARKET_TIME
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

    // The laptop owner decides what remote agents may do: the non-live order scopes are granted
    // to this pairing with the documented command (orders still stay dry-run, the sidecar's
    // default). It runs in this process, exactly as the `ibkr-agent` binary would.
    let grant = [
        "sidecar",
        "pairing",
        "grant",
        "--scope",
        "ibkr:orders:preview,ibkr:orders:write",
    ];
    let status = ibkr_agent_command(&system, &grant).await?;
    expect(
        status == std::process::ExitCode::SUCCESS,
        "the laptop owner's grant succeeds",
    )?;

    step(
        4,
        "An agent connects over MCP Streamable HTTP with an OAuth bearer token",
    );
    let token = agent_token(&system, args.serve, &agent_scopes()).await?;
    let client = system.mcp_client(&token).await?;
    let tools: Vec<String> = client
        .list_all_tools()
        .await?
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    let _ = client.cancel().await;
    println!(
        "    tools/list (filtered by the token's scopes, {} tools): {}",
        tools.len(),
        tools.join(", ")
    );
    expect(
        tools.iter().any(|t| t == "ibkr_buy"),
        "tools/list shows ibkr_buy",
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

    step(
        6,
        "ibkr_session_status: account identity and trading posture",
    );
    let status = call(&system, &token, "ibkr_session_status", json!({})).await?;
    show("result", &structured(&status));
    expect(status.is_error != Some(true), "session status succeeds")?;

    step(7, "ibkr_quote AAPL");
    let quote = call(&system, &token, "ibkr_quote", json!({"symbol": "AAPL"})).await?;
    show("result", &structured(&quote));
    expect(quote.is_error != Some(true), "quote succeeds")?;

    step(
        8,
        "ibkr_portfolio_snapshot (CPGW session material is stripped on the laptop)",
    );
    let portfolio = call(&system, &token, "ibkr_portfolio_snapshot", json!({})).await?;
    show("result", &structured(&portfolio));
    expect(portfolio.is_error != Some(true), "portfolio succeeds")?;

    step(
        9,
        "The laptop owner checks the whole setup, in order, with the fix for each failure",
    );
    system.write_sidecar_config()?;
    let status = ibkr_agent_command(&system, &["sidecar", "doctor"]).await?;
    expect(
        status == std::process::ExitCode::SUCCESS,
        "the doctor finds nothing that blocks trading",
    )?;

    step(
        10,
        "ibkr_buy AAPL for 25 USD (fractional, cashQty): every guard runs, dry-run sends nothing",
    );
    let buy = call(
        &system,
        &token,
        "ibkr_buy",
        json!({"symbol": "AAPL", "cash_amount": "25"}),
    )
    .await?;
    show("result", &structured(&buy));
    expect(structured(&buy)["status"] == "dry_run", "dry-run buy")?;
    expect(
        system.sim.order_log().is_empty(),
        "the dry run reached no broker",
    )?;

    step(11, "ibkr_trade_history: what did my agent do?");
    let history = call(&system, &token, "ibkr_trade_history", json!({"limit": 5})).await?;
    show("result", &structured(&history));
    expect(history.is_error != Some(true), "trade history succeeds")?;

    step(
        12,
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
        13,
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

    step(14, "A read-only token does not even see the order tools");
    let narrow = agent_token(&system, args.serve, protocol::catalog::scopes::READ_ONLY).await?;
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
        !narrow_tools.iter().any(|t| t == "ibkr_buy"),
        "read-only token hides order tools",
    )?;

    if args.serve {
        serve(&system).await?;
    } else {
        println!(
            "\nDemo finished: every step above went agent -> gateway -> encrypted relay -> sidecar -> CPGW simulator."
        );
        println!("Run with --serve to keep it running and connect your own MCP client.");
    }
    system.shutdown().await;
    Ok(())
}

async fn serve(system: &System) -> DemoResult<()> {
    let url = system.mcp_url()?;
    let state_dir = system.sidecar_state_dir().display().to_string();
    println!("\nServing. Connect an MCP client, with no token at all:");
    println!("    MCP URL:  {url}");
    println!("    claude mcp add --transport http ibkr {url}");
    println!(
        "The client discovers the gateway's sign-in page; enter the user id {} there, then approve\n\
         the agent on the (simulated) laptop with the code the page shows:",
        system.options.user_id
    );
    println!(
        "    cargo run --release --bin ibkr-agent -- --state-dir {state_dir} sidecar agents approve <CODE>"
    );
    println!(
        "  (`sidecar agents list` shows connected agents; `sidecar agents revoke <ID>` disconnects one)"
    );
    println!(
        "The laptop owner's console (pause trading, approve or deny orders and agents), in a browser:"
    );
    println!("    cargo run --release --bin ibkr-agent -- --state-dir {state_dir} sidecar console");
    println!("  or from a terminal:");
    println!(
        "    cargo run --release --bin ibkr-agent -- --state-dir {state_dir} sidecar approvals list"
    );
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    println!("Stopping.");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    e2e::log_errors_to_stderr();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ibkr-demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}
