//! `cpgw-sim`: runs the CPGW simulator until Ctrl-C.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use e2e::cpgw_sim::{AuthState, CpgwSimulator, SimConfig};

/// Imitates IBKR's Client Portal Gateway over HTTPS with a fresh
/// self-signed certificate. Offers no login endpoint.
#[derive(Parser, Debug)]
#[command(name = "cpgw-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Session state at start.
    #[arg(long, value_enum, default_value_t = StateArg::LoggedIn)]
    state: StateArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    LoggedIn,
    ConnectedOnly,
    LoggedOut,
}

impl From<StateArg> for AuthState {
    fn from(state: StateArg) -> Self {
        match state {
            StateArg::LoggedIn => AuthState::LoggedIn,
            StateArg::ConnectedOnly => AuthState::ConnectedOnly,
            StateArg::LoggedOut => AuthState::LoggedOut,
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on non-loopback address {}; this is a test fake",
            args.listen
        );
    }
    let sim = CpgwSimulator::start(SimConfig {
        listen: args.listen,
        auth_state: args.state.into(),
        ..SimConfig::default()
    })
    .await?;
    println!("{}", sim.base_url());
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
