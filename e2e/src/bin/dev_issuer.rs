//! `dev-issuer`: runs the development OAuth issuer until Ctrl-C and prints
//! one ready-made access token.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::Parser;
use e2e::dev_issuer::{DEFAULT_SCOPES, DEFAULT_SUBJECT, DevIssuer, TokenRequest};

/// A tiny OAuth authorization server for tests and the demo. Keys are
/// generated at start and never stored.
#[derive(Parser, Debug)]
#[command(name = "dev-issuer", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8900")]
    listen: SocketAddr,
    /// Audience (the gateway's resource URI) of the printed token; also the
    /// default for `/token` requests without a `resource` parameter.
    #[arg(long)]
    audience: String,
    /// Subject of the printed token.
    #[arg(long, default_value = DEFAULT_SUBJECT)]
    subject: String,
    /// Scopes of the printed token, comma or space separated
    /// (default: the read-only scopes).
    #[arg(long)]
    scopes: Option<String>,
    /// Lifetime of the printed token in seconds.
    #[arg(long, default_value_t = 3600)]
    lifetime_seconds: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on non-loopback address {}; this issuer has a fixed client secret",
            args.listen
        );
    }
    let scopes: Vec<&str> = match &args.scopes {
        Some(scopes) => scopes
            .split([',', ' '])
            .filter(|scope| !scope.is_empty())
            .collect(),
        None => DEFAULT_SCOPES.to_vec(),
    };
    let issuer = DevIssuer::start(args.listen).await?;
    issuer.set_default_audience(Some(args.audience.clone()));
    let mut request = TokenRequest::new(&args.subject, &args.audience, &scopes);
    request.lifetime_seconds = args.lifetime_seconds;
    let token = issuer.mint(&request)?;
    println!("issuer: {}", issuer.issuer_url());
    println!("jwks:   {}", issuer.jwks_url());
    println!("token:  {token}");
    tokio::signal::ctrl_c().await?;
    issuer.shutdown().await;
    Ok(())
}
