//! The `ibkr-agent` command line.
//!
//! `--json` prints exactly one JSON object on stdout (the result, or `{"error": {...}}`) with
//! stable field names; without it the output is for people. Exit status: 0 success, 2 usage or
//! configuration error, 3 refusal, 1 anything else. The JSON output never carries secrets; the
//! state directory path appears only in the human output (it stays on the laptop either way,
//! but scripts that forward JSON should not learn local paths).

use crate::config::SidecarConfig;
use crate::daemon::{DaemonOptions, run_daemon};
use crate::error::SidecarError;
use crate::identity::create_identity;
use crate::pairing_client::pair;
use crate::paths::{IDENTITY_KEY_FILE, resolve_state_dir};
use crate::state::{IdentityRecord, PairingRecord};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

#[derive(Debug, Parser)]
#[command(
    name = "ibkr-agent",
    version,
    about = "Laptop sidecar that lets AI agents use your local IBKR Client Portal Gateway through a paired cloud gateway"
)]
pub struct Cli {
    /// State directory (identity key, state.db). Default: $IBKR_AGENT_HOME, else
    /// $XDG_CONFIG_HOME/ibkr-agent, else ~/.config/ibkr-agent.
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: TopCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// The laptop sidecar: identity, pairing and the relay daemon.
    Sidecar(SidecarArgs),
}

#[derive(Debug, Args)]
pub struct SidecarArgs {
    #[command(subcommand)]
    pub command: SidecarCommand,
}

#[derive(Debug, Subcommand)]
pub enum SidecarCommand {
    /// Manage this laptop's sidecar identity.
    Identity(IdentityArgs),
    /// Pair with a gateway using a one-time code from its operator.
    Pair(PairArgs),
    /// Run the sidecar daemon (dials the paired gateway, serves relayed tool calls).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    pub command: IdentityCommand,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Create the identity: an x25519 key pair whose secret is written to identity.key (0600).
    Create(IdentityCreateArgs),
}

#[derive(Debug, Args)]
pub struct IdentityCreateArgs {
    /// A name for this laptop, shown to the gateway operator.
    #[arg(long)]
    pub display_name: String,
    /// Sidecar id (default: sidecar- followed by 8 hex characters of the key's SHA-256).
    #[arg(long)]
    pub sidecar_id: Option<String>,
    /// Record an externally held public key (64 hex characters) instead of generating one. No
    /// secret is stored, so `sidecar run` cannot use this identity: this is for operator and
    /// integration workflows that manage pairing records and relay primitives only.
    #[arg(long, value_name = "HEX")]
    pub public_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct PairArgs {
    /// The gateway's base URL (https://..., or http:// to a loopback host).
    #[arg(long, value_name = "BASE_URL")]
    pub gateway: String,
    /// The one-time pairing code. Pass `-` to read it from stdin (keeps it out of the process
    /// list and shell history).
    #[arg(long)]
    pub code: String,
    /// The sidecar id to pair (must be this state directory's identity).
    #[arg(long)]
    pub sidecar_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Sidecar configuration (YAML). Without it, the defaults apply.
    #[arg(long, value_name = "YAML")]
    pub config: Option<PathBuf>,
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report_error(&error, json);
            ExitCode::from(error.exit_code())
        }
    }
}

fn report_error(error: &SidecarError, json: bool) {
    if json {
        let body = error.body();
        print_json(&json!({
            "error": {
                "code": body.code,
                "message": body.message,
                "retryable": body.retryable,
                "user_action": body.user_action,
            }
        }));
    }
    eprintln!("error: {error}");
    eprintln!("  what to do: {}", error.code().user_action());
}

fn print_json(value: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
}

fn dispatch(cli: Cli) -> Result<(), SidecarError> {
    let state_dir = resolve_state_dir(cli.state_dir.as_deref())?;
    match cli.command {
        TopCommand::Sidecar(sidecar) => match sidecar.command {
            SidecarCommand::Identity(identity) => match identity.command {
                IdentityCommand::Create(args) => identity_create(&state_dir, &args, cli.json),
            },
            SidecarCommand::Pair(args) => pair_command(&state_dir, &args, cli.json),
            SidecarCommand::Run(args) => run_command(state_dir, &args),
        },
    }
}

fn identity_json(record: &IdentityRecord) -> serde_json::Value {
    json!({
        "sidecar_id": record.sidecar_id,
        "display_name": record.display_name,
        "public_key": record.public_key.to_hex(),
        "fingerprint": record.fingerprint(),
        "created_at": record.created_at,
        "key_file_created": record.has_secret,
    })
}

fn identity_create(
    state_dir: &Path,
    args: &IdentityCreateArgs,
    json: bool,
) -> Result<(), SidecarError> {
    let record = create_identity(
        state_dir,
        &args.display_name,
        args.sidecar_id.as_deref(),
        args.public_key.as_deref(),
    )?;
    if json {
        print_json(&identity_json(&record));
    } else {
        println!(
            "Created sidecar identity {} ({})",
            record.sidecar_id, record.display_name
        );
        println!("  public key:  {}", record.public_key.to_hex());
        println!("  fingerprint: {}", record.fingerprint());
        if record.has_secret {
            println!(
                "  secret key:  {} (mode 0600; never share it)",
                state_dir.join(IDENTITY_KEY_FILE).display()
            );
        } else {
            println!("  secret key:  none (external public key; `sidecar run` cannot use it)");
        }
        println!("  state dir:   {}", state_dir.display());
    }
    Ok(())
}

pub(crate) fn pairing_json(record: &PairingRecord) -> serde_json::Value {
    json!({
        "remote_instance_id": record.remote_instance_id,
        "sidecar_id": record.sidecar_id,
        "user_id": record.user_id,
        "gateway_fingerprint": record.gateway_fingerprint(),
        "relay_url": record.relay_url,
        "local_scopes": record.local_scope_list(),
    })
}

fn read_code(argument: &str) -> Result<Zeroizing<String>, SidecarError> {
    if argument != "-" {
        return Ok(Zeroizing::new(argument.to_string()));
    }
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|_| SidecarError::config("(could not read the pairing code from stdin)"))?;
    Ok(Zeroizing::new(line.trim().to_string()))
}

fn pair_command(state_dir: &Path, args: &PairArgs, json: bool) -> Result<(), SidecarError> {
    let code = read_code(&args.code)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| SidecarError::internal("(cannot start the async runtime)"))?;
    let record = runtime.block_on(pair(
        state_dir,
        &args.gateway,
        &code,
        args.sidecar_id.as_deref(),
    ))?;
    if json {
        print_json(&pairing_json(&record));
    } else {
        println!(
            "Paired sidecar {} with gateway instance {} for user {}",
            record.sidecar_id, record.remote_instance_id, record.user_id
        );
        if let Some(fingerprint) = record.gateway_fingerprint() {
            println!("  gateway fingerprint: {fingerprint} (compare it with the operator's)");
        }
        if let Some(relay) = &record.relay_url {
            println!("  relay URL:           {relay}");
        }
        println!(
            "  local scopes:        {} (read-only by default)",
            record.local_scope_list().join(" ")
        );
        println!("  state dir:           {}", state_dir.display());
        println!("Next: ibkr-agent sidecar run");
    }
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_command(state_dir: PathBuf, args: &RunArgs) -> Result<(), SidecarError> {
    init_tracing();
    let config = match &args.config {
        Some(path) => SidecarConfig::load(path)?,
        None => SidecarConfig::default(),
    };
    // Fail before starting anything.
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|_| SidecarError::internal("(cannot start the async runtime)"))?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
        let result = run_daemon(DaemonOptions::new(state_dir, config), shutdown.clone()).await;
        shutdown.cancel();
        let _ = signals.await;
        result
    })
}

/// SIGINT or SIGTERM -> graceful shutdown.
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop the sidecar with SIGKILL");
        shutdown.cancelled().await;
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "ibkr-agent",
            "sidecar",
            "identity",
            "create",
            "--display-name",
            "laptop",
            "--json",
            "--state-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.state_dir, Some(PathBuf::from("/tmp/x")));
    }
}
