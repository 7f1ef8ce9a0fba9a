//! The `ibkr-agent` command line. Every command is documented in `docs/sidecar-cli.md`.
//!
//! `--json` prints exactly one JSON object on stdout (the result, or `{"error": {...}}`;
//! `relay accept` prints `{"forwarded": ..., ...}` either way) with stable field names; without
//! it the output is for people. Errors are also described on stderr.
//!
//! Exit status: 0 success; 1 internal or other error (state store, I/O, network); 2 usage or
//! configuration error (CONFIG_INVALID, CONFIG_SIDECAR_FORBIDDEN, bad flags); 3 refused (a gate
//! said no, or the state does not allow the operation, e.g. IDENTITY_EXISTS). `relay accept`
//! exits 3 for every gate it runs, the CPGW probe included.
//!
//! The JSON output never carries secrets and never a local path (scripts that forward JSON
//! should not learn them); paths appear only in the human output. One exception:
//! `sidecar console --json` prints the console's login link, which is what it is asked for.

mod agents;
mod approvals;

use crate::clock::now_unix_seconds;
use crate::config::{self, CONFIG_FILE, DEFAULT_CLIENT_PORTAL_BASE_URL, SidecarConfig};
use crate::cpgw::CpgwClient;
use crate::daemon::{DaemonOptions, run_daemon};
use crate::error::SidecarError;
use crate::gates;
use crate::identity::create_identity;
use crate::pairing_client::pair;
use crate::paths::{IDENTITY_KEY_FILE, resolve_state_dir};
use crate::primitives::{self, AcceptRequest, Accepted, PairingCreate, ScopeChange, ScopeEdit};
use crate::state::{
    IdentityRecord, PairingRecord, RelaySessionRecord, RelayStatusRecord, StateStore,
};
use clap::{Args, Parser, Subcommand};
use protocol::catalog;
use protocol::envelope::{ManualAction, Outcome, RequestId};
use serde_json::{Value, json};
use shared_safety::ErrorCode;
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
    /// State directory (identity key, state.db, sidecar.yaml). Default: $IBKR_AGENT_HOME, else
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
    /// The laptop sidecar: identity, pairing, relay primitives and the relay daemon.
    Sidecar(SidecarArgs),
    /// The trade journal (`<state_dir>/journal.jsonl`).
    Journal(JournalArgs),
}

#[derive(Debug, Args)]
pub struct JournalArgs {
    #[command(subcommand)]
    pub command: JournalCommand,
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Checks the journal's keyed hash chain and its head checkpoint; exits non-zero when an
    /// entry was edited, removed or reordered, the tail was cut or an older copy put back. A
    /// torn last line (a crash while writing) is reported, not an error.
    Verify,
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
    /// Explicit local pairing records (create, list, revoke).
    Pairing(PairingArgs),
    /// Relay sessions in the local state store (create, list, heartbeat).
    Session(SessionArgs),
    /// Run the sidecar's gates on one request and print the envelope that passes them.
    Relay(RelayArgs),
    /// Identity, pairings, open sessions and whether a daemon configuration exists.
    Status,
    /// Pair with a gateway using a one-time code from its operator.
    Pair(PairArgs),
    /// Run the sidecar daemon (dials the paired gateway, serves relayed tool calls).
    Run(RunArgs),
    /// Orders whose outcome is unknown: list them, and settle what the broker cannot prove.
    Orders(OrdersArgs),
    /// Stop all trading now: every tool that could send a new order is refused
    /// (TRADING_PAUSED) until `resume`; cancels and the reconcile go on. Takes effect at the
    /// daemon's next call, survives a restart.
    Pause(PauseArgs),
    /// End a pause: orders are served again (every other guard still applies).
    Resume,
    /// Orders waiting for your approval (`trading.approval`): list, approve, deny.
    Approvals(approvals::ApprovalsArgs),
    /// Agents connecting through the gateway's built-in sign-in: list, approve or deny with
    /// the code their page shows, revoke.
    Agents(agents::AgentsArgs),
    /// Run the daemon as a per-user service (systemd on Linux, launchd on macOS).
    Service(crate::service::ServiceArgs),
    /// Open the running daemon's console (a web page on loopback) in the browser, and print
    /// its address and login link.
    Console(crate::console::cli::ConsoleArgs),
    /// Check, in order, everything trading needs (configuration, keys, pairing, grants, the
    /// gateway, the daemon's session, the Client Portal login, the account, a balance and a
    /// quote) and name the fix for each failure. Exits 3 when something blocks trading.
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Sidecar configuration (YAML). Default: <state_dir>/sidecar.yaml.
    #[arg(long, value_name = "YAML")]
    pub config: Option<PathBuf>,
    /// The symbol to quote.
    #[arg(long, default_value = crate::doctor::DEFAULT_QUOTE_SYMBOL)]
    pub symbol: String,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Why (shown to the agent with the refusals and in `status`).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct OrdersArgs {
    #[command(subcommand)]
    pub command: OrdersCommand,
}

#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// Order attempts whose outcome is unknown (they count toward the daily cap and block their
    /// instrument and side).
    Pending,
    /// Settle an attempt whose outcome the broker cannot prove, after checking in TWS, the
    /// mobile app or the Client Portal what really happened. Journaled with who, when and how.
    Settle(SettleArgs),
}

#[derive(Debug, Args)]
pub struct SettleArgs {
    /// The attempt id (from `orders pending` or the agent's ORDER_OUTCOME_UNKNOWN message).
    #[arg(long, value_name = "ID")]
    pub attempt: u64,
    /// The order is at the broker (it keeps counting toward the daily cap).
    #[arg(
        long,
        conflicts_with = "not_placed",
        required_unless_present = "not_placed"
    )]
    pub placed: bool,
    /// The order is not at the broker (it stops counting and blocking).
    #[arg(long)]
    pub not_placed: bool,
    /// Why, for the journal (e.g. "checked in TWS: no such order").
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
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
    /// Record an externally held public key (64 hex characters, or base64) instead of generating one. No
    /// secret is stored, so `sidecar run` cannot use this identity: this is for operator and
    /// integration workflows that manage pairing records and relay primitives only.
    #[arg(long, value_name = "HEX")]
    pub public_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct PairingArgs {
    #[command(subcommand)]
    pub command: PairingCommand,
}

#[derive(Debug, Subcommand)]
pub enum PairingCommand {
    /// Write the explicit local pairing record for a remote gateway instance.
    Create(PairingCreateArgs),
    /// List every pairing record with its status (active, expired, revoked).
    List,
    /// Revoke a pairing (the daemon refuses its next call) and close its relay sessions.
    Revoke(PairingIdsArgs),
    /// Grant local scopes to a pairing (by default the one `sidecar pair` made), e.g. the
    /// order scopes; a running daemon applies the change at its next call.
    Grant(PairingScopeArgs),
    /// Take local scopes back from a pairing; a running daemon refuses the next call that needs
    /// them.
    RevokeScope(PairingScopeArgs),
}

#[derive(Debug, Args)]
pub struct PairingScopeArgs {
    /// The scope to grant or take back (repeatable, or comma-separated).
    #[arg(
        long = "scope",
        alias = "scopes",
        value_name = "SCOPE",
        value_delimiter = ',',
        required = true
    )]
    pub scopes: Vec<String>,
    /// Required to grant `ibkr:orders:live` (orders with real money on a live account).
    #[arg(long)]
    pub confirm_live: bool,
    /// The pairing's remote instance id (with --sidecar-id). Default: the active pairing made
    /// by `sidecar pair`.
    #[arg(long, value_name = "ID", requires = "sidecar_id")]
    pub remote_instance_id: Option<String>,
    #[arg(long, value_name = "ID", requires = "remote_instance_id")]
    pub sidecar_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct PairingCreateArgs {
    #[arg(long, value_name = "ID")]
    pub remote_instance_id: String,
    /// The sidecar id the record is bound to; the local identity takes this id if it has no
    /// pairing yet, otherwise it must be the identity's id.
    #[arg(long, value_name = "ID")]
    pub sidecar_id: String,
    #[arg(long, value_name = "ID")]
    pub user_id: String,
    /// The record is valid for this long (1 to 31536000).
    #[arg(long, value_name = "SECONDS")]
    pub ttl_seconds: u64,
    /// Grant a scope on top of the read-only default (repeatable, or comma-separated).
    #[arg(
        long = "scope",
        alias = "scopes",
        value_name = "SCOPE",
        value_delimiter = ','
    )]
    pub scopes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PairingIdsArgs {
    #[arg(long, value_name = "ID")]
    pub remote_instance_id: String,
    #[arg(long, value_name = "ID")]
    pub sidecar_id: String,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(subcommand)]
    pub command: SessionCommand,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a relay session bound to the paired sidecar id.
    Create(SessionCreateArgs),
    /// List every relay session with its status (open, expired, closed).
    List,
    /// Record a heartbeat on an open session (last_heartbeat_at = now).
    Heartbeat(SessionHeartbeatArgs),
}

#[derive(Debug, Args)]
pub struct SessionCreateArgs {
    #[arg(long, value_name = "ID")]
    pub remote_instance_id: String,
    #[arg(long, value_name = "ID")]
    pub sidecar_id: String,
    /// The session is valid for this long (1 to 604800).
    #[arg(long, value_name = "SECONDS")]
    pub ttl_seconds: u64,
}

#[derive(Debug, Args)]
pub struct SessionHeartbeatArgs {
    #[arg(long, value_name = "ID")]
    pub session_id: String,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub command: RelayCommand,
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Run the gates on one request; print the forwarded envelope, or the refusal.
    Accept(RelayAcceptArgs),
}

#[derive(Debug, Args)]
pub struct RelayAcceptArgs {
    #[arg(long, value_name = "ID")]
    pub remote_instance_id: String,
    #[arg(long, value_name = "ID")]
    pub sidecar_id: String,
    #[arg(long, value_name = "TOOL")]
    pub tool_name: String,
    /// Must be the catalog's scope for the tool.
    #[arg(long, value_name = "SCOPE")]
    pub scope: String,
    /// The tool arguments, a JSON object.
    #[arg(long, value_name = "JSON")]
    pub payload_json: String,
    /// Use this session (must be bound to the two ids); default: the newest open one.
    #[arg(long, value_name = "ID")]
    pub session_id: Option<String>,
    /// Request id, 32 hex characters (default: random).
    #[arg(long, value_name = "HEX")]
    pub request_id: Option<String>,
    /// Also run the CPGW gate: ask the local Client Portal Gateway whether its session is usable.
    #[arg(long)]
    pub probe_broker: bool,
    /// Sidecar configuration (heartbeat timeout, CPGW URL). Default: <state_dir>/sidecar.yaml if
    /// it exists, else the defaults (45 s, https://localhost:5000/v1/api).
    #[arg(long, value_name = "YAML")]
    pub config: Option<PathBuf>,
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
    /// Grant a local scope on top of the read-only default (repeatable, or comma-separated),
    /// e.g. `--scope ibkr:orders:preview,ibkr:orders:write`. Checked before the code is used.
    #[arg(
        long = "scope",
        alias = "scopes",
        value_name = "SCOPE",
        value_delimiter = ','
    )]
    pub scopes: Vec<String>,
    /// Required to grant `ibkr:orders:live` (orders with real money on a live account).
    #[arg(long)]
    pub confirm_live: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Sidecar configuration (YAML). Default: <state_dir>/sidecar.yaml, written by
    /// `sidecar pair`; without either the daemon refuses to start.
    #[arg(long, value_name = "YAML")]
    pub config: Option<PathBuf>,
}

/// A failed command: the error, and how to report it.
#[derive(Debug)]
struct Failure {
    error: SidecarError,
    /// `relay accept`: `"forwarded": false` in the JSON, and exit 3 for every gate.
    relay: bool,
    /// Set when the CPGW gate asks for a person.
    manual_action: Option<Box<ManualAction>>,
    /// With `--json`: the members printed beside `"error"` (the command's own report), so
    /// stdout still holds exactly one object.
    report: Option<Value>,
}

impl From<SidecarError> for Failure {
    fn from(error: SidecarError) -> Self {
        Failure {
            error,
            relay: false,
            manual_action: None,
            report: None,
        }
    }
}

impl Failure {
    fn relay(error: SidecarError) -> Self {
        Failure {
            error,
            relay: true,
            manual_action: None,
            report: None,
        }
    }

    fn exit_code(&self) -> u8 {
        if !self.relay {
            return self.error.exit_code();
        }
        match self.error.code() {
            ErrorCode::ConfigInvalid
            | ErrorCode::ConfigSidecarForbidden
            | ErrorCode::CliArgumentInvalid => 2,
            ErrorCode::StateStoreError | ErrorCode::InternalError => 1,
            _ => 3,
        }
    }
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    run(Cli::parse())
}

/// Runs one command line (`args[0]` is the program name), exactly as `main` would: the demo
/// uses it to run the documented commands in its own process. Parser errors exit the process,
/// as they do for `main`.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Cli::parse_from(args))
}

fn run(cli: Cli) -> ExitCode {
    let json = cli.json;
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report_failure(&failure, json);
            ExitCode::from(failure.exit_code())
        }
    }
}

fn error_json(body: &protocol::envelope::ErrorBody) -> Value {
    json!({
        "code": body.code,
        "message": body.message,
        "retryable": body.retryable,
        "user_action": body.user_action,
    })
}

fn report_failure(failure: &Failure, json: bool) {
    let error = &failure.error;
    let mut body = error.body();
    if let Some(action) = &failure.manual_action {
        body.user_action = format!("{} ({})", action.action, action.location);
    }
    if json {
        let mut out = failure.report.clone().unwrap_or_else(|| json!({}));
        out["error"] = error_json(&body);
        if failure.relay {
            out["forwarded"] = json!(false);
        }
        if let Some(action) = &failure.manual_action {
            out["manual_action"] = json!({"action": action.action, "location": action.location});
        }
        print_json(&out);
    } else if failure.relay {
        println!("Not forwarded: {}", body.code);
    }
    eprintln!("error: {error}");
    eprintln!("  what to do: {}", body.user_action);
}

/// Prints one JSON object on stdout (for commands implemented outside this file).
pub(crate) fn print_json_value(value: &Value) {
    print_json(value);
}

fn print_json(value: &Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    let state_dir = resolve_state_dir(cli.state_dir.as_deref())?;
    let json = cli.json;
    let sidecar = match cli.command {
        TopCommand::Sidecar(sidecar) => sidecar,
        TopCommand::Journal(JournalArgs {
            command: JournalCommand::Verify,
        }) => return journal_verify(&state_dir, json),
    };
    match sidecar.command {
        SidecarCommand::Identity(identity) => match identity.command {
            IdentityCommand::Create(args) => Ok(identity_create(&state_dir, &args, json)?),
        },
        SidecarCommand::Pairing(pairing) => match pairing.command {
            PairingCommand::Create(args) => Ok(pairing_create(&state_dir, &args, json)?),
            PairingCommand::List => Ok(pairing_list(&state_dir, json)?),
            PairingCommand::Revoke(args) => Ok(pairing_revoke(&state_dir, &args, json)?),
            PairingCommand::Grant(args) => {
                Ok(pairing_scopes(&state_dir, &args, ScopeEdit::Grant, json)?)
            }
            PairingCommand::RevokeScope(args) => {
                Ok(pairing_scopes(&state_dir, &args, ScopeEdit::Revoke, json)?)
            }
        },
        SidecarCommand::Session(session) => match session.command {
            SessionCommand::Create(args) => Ok(session_create(&state_dir, &args, json)?),
            SessionCommand::List => Ok(session_list(&state_dir, json)?),
            SessionCommand::Heartbeat(args) => Ok(session_heartbeat(&state_dir, &args, json)?),
        },
        SidecarCommand::Relay(relay) => match relay.command {
            RelayCommand::Accept(args) => relay_accept(&state_dir, &args, json),
        },
        SidecarCommand::Status => Ok(status(&state_dir, json)?),
        SidecarCommand::Pair(args) => Ok(pair_command(&state_dir, &args, json)?),
        SidecarCommand::Run(args) => Ok(run_command(state_dir, &args)?),
        SidecarCommand::Orders(orders) => match orders.command {
            OrdersCommand::Pending => Ok(orders_pending(&state_dir, json)?),
            OrdersCommand::Settle(args) => Ok(orders_settle(&state_dir, &args, json)?),
        },
        SidecarCommand::Pause(args) => Ok(pause_trading(&state_dir, &args, json)?),
        SidecarCommand::Resume => Ok(resume_trading(&state_dir, json)?),
        SidecarCommand::Approvals(args) => Ok(approvals::command(&state_dir, &args, json)?),
        SidecarCommand::Agents(args) => Ok(agents::command(&state_dir, &args, json)?),
        SidecarCommand::Service(args) => Ok(crate::service::command(&state_dir, &args, json)?),
        SidecarCommand::Console(args) => Ok(crate::console::cli::command(&state_dir, &args, json)?),
        SidecarCommand::Doctor(args) => doctor_command(state_dir, &args, json),
    }
}

/// `ibkr-agent sidecar doctor`.
fn doctor_command(state_dir: PathBuf, args: &DoctorArgs, json: bool) -> Result<(), Failure> {
    let options = crate::doctor::DoctorOptions {
        state_dir,
        config: args.config.clone(),
        symbol: args.symbol.clone(),
        market_clock: crate::market_clock::MarketClock::system(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| SidecarError::internal("(cannot start the async runtime)"))?;
    let report = runtime.block_on(crate::doctor::run(&options));
    let report_json = serde_json::to_value(&report)
        .map_err(|_| SidecarError::internal("(cannot encode the report)"))?;
    match crate::doctor::outcome(&report) {
        Ok(()) if json => {
            print_json(&report_json);
            Ok(())
        }
        Ok(()) => {
            print!("{}", crate::doctor::render(&report, &options.state_dir));
            Ok(())
        }
        Err(error) => {
            if !json {
                print!("{}", crate::doctor::render(&report, &options.state_dir));
            }
            Err(Failure {
                error,
                relay: false,
                manual_action: None,
                report: Some(report_json),
            })
        }
    }
}

/// `ibkr-agent sidecar orders pending`.
/// Longest pause reason kept (it travels to the agent with each refusal).
const MAX_PAUSE_REASON: usize = 200;

fn pause_json(pause: &crate::state::TradingPause) -> Value {
    json!({"since_unix": pause.paused_at, "reason": pause.reason})
}

/// A pause reason as kept: trimmed, without control characters, at most
/// [`MAX_PAUSE_REASON`] bytes (the console's pause form goes through it too).
pub(crate) fn clean_pause_reason(raw: &str) -> Result<String, SidecarError> {
    let reason: String = raw.trim().chars().filter(|c| !c.is_control()).collect();
    if reason.len() > MAX_PAUSE_REASON {
        return Err(SidecarError::new(
            ErrorCode::CliArgumentInvalid,
            format!("(--reason: at most {MAX_PAUSE_REASON} bytes)"),
        ));
    }
    Ok(reason)
}

/// `ibkr-agent sidecar pause`.
fn pause_trading(state_dir: &Path, args: &PauseArgs, json: bool) -> Result<(), SidecarError> {
    let reason = clean_pause_reason(&args.reason)?;
    let store = StateStore::open(state_dir)?;
    let pause = store.pause_trading(now_unix_seconds(), &reason)?;
    if json {
        print_json(&json!({"trading_paused": pause_json(&pause)}));
    } else {
        println!(
            "Trading is paused (since unix {}{}): every tool that could send a new order is \
             refused with TRADING_PAUSED; cancels and the reconcile go on. Resume with \
             `ibkr-agent sidecar resume`.",
            pause.paused_at,
            if pause.reason.is_empty() {
                String::new()
            } else {
                format!(", reason: {}", pause.reason)
            }
        );
    }
    Ok(())
}

/// `ibkr-agent sidecar resume`.
fn resume_trading(state_dir: &Path, json: bool) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let ended = store.resume_trading()?;
    if json {
        print_json(&json!({
            "trading_paused": Value::Null,
            "ended_pause": ended.as_ref().map(pause_json),
        }));
    } else if ended.is_some() {
        println!("Trading resumed: orders are served again (every other guard still applies).");
    } else {
        println!("Trading was not paused.");
    }
    Ok(())
}

fn orders_pending(state_dir: &Path, json: bool) -> Result<(), SidecarError> {
    use crate::trading::journal::{JOURNAL_FILE, read_attempts};
    let book = read_attempts(&state_dir.join(JOURNAL_FILE))
        .map_err(|error| SidecarError::new(ErrorCode::JournalError, format!("({error})")))?;
    let none = std::collections::HashSet::new();
    let pending: Vec<Value> = book
        .pending(&none)
        .map(|attempt| {
            json!({
                "attempt_id": attempt.id,
                "at_ms": attempt.at_ms,
                "tool": attempt.tool(),
                "symbol": attempt.intent.get("symbol"),
                "side": attempt.intent.get("side"),
                "estimated_value": attempt.intent.get("notional"),
                "client_order_id": attempt.coid(),
                "status": attempt.status.as_str(),
            })
        })
        .collect();
    if json {
        print_json(&json!({ "pending": pending }));
    } else if pending.is_empty() {
        println!("No order has an unknown outcome.");
    } else {
        println!(
            "Orders whose outcome is unknown (they count toward the daily cap and block their instrument and side):"
        );
        for attempt in &pending {
            println!(
                "  attempt {}  {} {} {}  client order id {}",
                attempt["attempt_id"],
                attempt["tool"].as_str().unwrap_or("-"),
                attempt["side"].as_str().unwrap_or("-"),
                attempt["symbol"].as_str().unwrap_or("-"),
                attempt["client_order_id"].as_str().unwrap_or("-"),
            );
        }
        println!(
            "Check each in TWS, the mobile app or the Client Portal (search by the client order id), then:\n  ibkr-agent sidecar orders settle --attempt <ID> --placed|--not-placed --note \"...\""
        );
    }
    Ok(())
}

/// `ibkr-agent sidecar orders settle`.
fn orders_settle(state_dir: &Path, args: &SettleArgs, json: bool) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let request = crate::owner::OwnerRequest::Settle {
        attempt: args.attempt,
        placed: args.placed,
        note: args.note.clone(),
        by: crate::owner::current_user(),
        via: "cli".into(),
    };
    let result = crate::owner::submit(state_dir, &store, &request)?;
    if json {
        print_json(&result);
    } else {
        println!(
            "Attempt {} settled as {} (journaled).",
            args.attempt,
            if args.placed { "placed" } else { "not placed" }
        );
    }
    Ok(())
}

/// `ibkr-agent journal verify`.
fn journal_verify(state_dir: &Path, json: bool) -> Result<(), Failure> {
    use crate::trading::journal::{JOURNAL_FILE, verify};
    let path = state_dir.join(JOURNAL_FILE);
    let report = verify(&path)
        .map_err(|error| SidecarError::new(ErrorCode::JournalError, format!("({error})")))?;
    let report_json = json!({
            "ok": report.ok,
            "entries": report.entries,
            "broken_at_line": report.broken_at_line,
            "problem": report.problem,
            "torn_tail": report.torn_tail,
            "last_hash": report.last_hash,
            "keyed": report.keyed,
            "keyed_from_seq": report.keyed_from_seq,
            "head_seq": report.head_seq,
            "truncated": report.truncated,
    });
    if json {
        if report.ok {
            print_json(&report_json);
        }
    } else if report.ok {
        let how = match (report.keyed, report.keyed_from_seq) {
            (true, Some(1)) => "keyed chain intact".to_string(),
            (true, Some(seq)) => format!("chain intact, keyed from entry {seq}"),
            _ => "unkeyed chain intact (the daemon keys it at its next start)".to_string(),
        };
        println!(
            "Journal OK: {} entries, {how}, head checkpoint {} (last hash {}).",
            report.entries,
            report.head_seq.map_or_else(
                || "not written yet".to_string(),
                |seq| format!("at entry {seq}")
            ),
            report.last_hash
        );
        if report.torn_tail {
            println!(
                "Warning: the last line is incomplete (a crash while writing); it is ignored."
            );
        }
    } else {
        println!("Journal BROKEN: {} entries read.", report.entries);
    }
    if report.ok {
        return Ok(());
    }
    let problem = report.problem.as_deref().unwrap_or("unknown problem");
    let detail = match report.broken_at_line {
        Some(line) => format!("(chain broken at line {line}: {problem})"),
        None => format!("({problem})"),
    };
    Err(Failure {
        report: Some(report_json),
        ..Failure::from(SidecarError::new(ErrorCode::JournalError, detail))
    })
}

// ---- JSON shapes (documented in docs/sidecar-cli.md) ----------------------------------------

fn identity_json(record: &IdentityRecord) -> Value {
    json!({
        "sidecar_id": record.sidecar_id,
        "display_name": record.display_name,
        "public_key": record.public_key.to_hex(),
        "fingerprint": record.fingerprint(),
        "created_at": record.created_at,
        "key_file_created": record.has_secret,
    })
}

pub(crate) fn pairing_json(record: &PairingRecord, now: i64) -> Value {
    json!({
        "remote_instance_id": record.remote_instance_id,
        "sidecar_id": record.sidecar_id,
        "user_id": record.user_id,
        "status": record.status(now),
        "local_scopes": record.local_scope_list(),
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
        "gateway_fingerprint": record.gateway_fingerprint(),
        "gateway_url": record.gateway_url,
        "relay_url": record.relay_url,
    })
}

fn session_json(record: &RelaySessionRecord, now: i64) -> Value {
    json!({
        "session_id": record.session_id,
        "remote_instance_id": record.remote_instance_id,
        "sidecar_id": record.sidecar_id,
        "status": record.status(now),
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "last_heartbeat_at": record.last_heartbeat_at,
        "closed_at": record.closed_at,
    })
}

fn accepted_json(accepted: &Accepted) -> Value {
    let request = &accepted.request;
    json!({
        "forwarded": true,
        "request_id": request.request_id.to_hex(),
        "tool_name": request.tool_name,
        "scope": request.scope,
        "token_scopes": request.token_scopes,
        "payload_hash": hex::encode(request.payload_hash),
        "canonical_payload": String::from_utf8_lossy(&request.payload),
        "session_id": accepted.session.session_id,
        "remote_instance_id": accepted.pairing.remote_instance_id,
        "sidecar_id": accepted.pairing.sidecar_id,
    })
}

/// `in 300 s`, `120 s ago`, for people.
fn relative(at: i64, now: i64) -> String {
    let delta = at.saturating_sub(now);
    if delta > 0 {
        format!("in {delta} s")
    } else {
        format!("{} s ago", delta.saturating_neg())
    }
}

fn print_pairing_human(record: &PairingRecord, now: i64) {
    println!(
        "  {} / {}  user {}  [{}]",
        record.remote_instance_id,
        record.sidecar_id,
        record.user_id,
        record.status(now)
    );
    println!("    local scopes: {}", record.local_scope_list().join(" "));
    match record.expires_at {
        Some(at) => println!("    expires:      {} (unix {at})", relative(at, now)),
        None => println!("    expires:      never"),
    }
    if let Some(at) = record.revoked_at {
        println!("    revoked:      {} (unix {at})", relative(at, now));
    }
    match record.gateway_fingerprint() {
        Some(fingerprint) => println!("    gateway key:  {fingerprint} (pinned by `sidecar pair`)"),
        None => println!(
            "    gateway key:  none (written by `pairing create`; the daemon cannot dial with it)"
        ),
    }
}

fn print_session_human(record: &RelaySessionRecord, now: i64) {
    println!(
        "  {}  {} / {}  [{}]",
        record.session_id,
        record.remote_instance_id,
        record.sidecar_id,
        record.status(now)
    );
    println!(
        "    expires {} ; last heartbeat {}",
        relative(record.expires_at, now),
        relative(record.last_heartbeat_at, now)
    );
}

// ---- identity -------------------------------------------------------------------------------

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
            println!(
                "  secret key:  none (external public key: the relay primitives work, `sidecar run` cannot)"
            );
        }
        println!("  state dir:   {}", state_dir.display());
    }
    Ok(())
}

// ---- pairing records ------------------------------------------------------------------------

fn pairing_create(
    state_dir: &Path,
    args: &PairingCreateArgs,
    json: bool,
) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let now = now_unix_seconds();
    let (record, write) = primitives::create_pairing(
        &store,
        &PairingCreate {
            remote_instance_id: args.remote_instance_id.clone(),
            sidecar_id: args.sidecar_id.clone(),
            user_id: args.user_id.clone(),
            ttl_seconds: args.ttl_seconds,
            extra_scopes: args.scopes.clone(),
        },
        now,
    )?;
    if json {
        let mut out = pairing_json(&record, now);
        out["identity_rebound_from"] = json!(write.rebound_from);
        out["replaced"] = json!(write.replaced);
        print_json(&out);
    } else {
        println!(
            "Created the local pairing record for remote instance {}",
            record.remote_instance_id
        );
        print_pairing_human(&record, now);
        if let Some(previous) = &write.rebound_from {
            println!(
                "  The identity's sidecar id changed from {previous} to {} (it had no pairing yet).",
                record.sidecar_id
            );
        }
        if write.replaced {
            println!("  (replaced an earlier record for the same ids)");
        }
        println!(
            "Next: ibkr-agent sidecar session create --remote-instance-id {} --sidecar-id {} --ttl-seconds 300",
            record.remote_instance_id, record.sidecar_id
        );
    }
    Ok(())
}

fn pairing_list(state_dir: &Path, json: bool) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let now = now_unix_seconds();
    let pairings = store.pairings()?;
    if json {
        let list: Vec<Value> = pairings.iter().map(|p| pairing_json(p, now)).collect();
        print_json(&json!({ "pairings": list }));
    } else if pairings.is_empty() {
        println!("No pairing records.");
    } else {
        println!("Pairing records (newest first):");
        for record in &pairings {
            print_pairing_human(record, now);
        }
    }
    Ok(())
}

fn pairing_revoke(state_dir: &Path, args: &PairingIdsArgs, json: bool) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let now = now_unix_seconds();
    let (record, closed) =
        primitives::revoke_pairing(&store, &args.remote_instance_id, &args.sidecar_id, now)?;
    if json {
        let mut out = pairing_json(&record, now);
        out["sessions_closed"] = json!(closed);
        print_json(&out);
    } else {
        println!(
            "Revoked the pairing {} / {}; {closed} relay session(s) closed.",
            record.remote_instance_id, record.sidecar_id
        );
        println!(
            "  A running daemon refuses the next call on it and leaves at its next heartbeat."
        );
    }
    Ok(())
}

fn pairing_scopes(
    state_dir: &Path,
    args: &PairingScopeArgs,
    edit: ScopeEdit,
    json: bool,
) -> Result<(), SidecarError> {
    // Flags first: a bad scope is reported before the state store is even opened.
    primitives::validate_scope_flags(&args.scopes, edit, args.confirm_live)?;
    let store = StateStore::open(state_dir)?;
    let now = now_unix_seconds();
    let ids = args
        .remote_instance_id
        .as_deref()
        .zip(args.sidecar_id.as_deref());
    let (remote_instance_id, sidecar_id) = primitives::scope_target(&store, ids, now)?;
    let change = primitives::change_local_scopes(
        &store,
        (&remote_instance_id, &sidecar_id),
        edit,
        &args.scopes,
        args.confirm_live,
        now,
    )?;
    print_scope_change(&change, now, json);
    Ok(())
}

fn print_scope_change(change: &ScopeChange, now: i64, json: bool) {
    let record = &change.record;
    if json {
        let mut out = pairing_json(record, now);
        out["added"] = json!(change.added);
        out["removed"] = json!(change.removed);
        print_json(&out);
        return;
    }
    println!(
        "Pairing {} / {} (user {}):",
        record.remote_instance_id, record.sidecar_id, record.user_id
    );
    if change.added.is_empty() && change.removed.is_empty() {
        println!("  nothing changed");
    }
    if !change.added.is_empty() {
        println!("  granted:      {}", change.added.join(" "));
    }
    if !change.removed.is_empty() {
        println!("  taken back:   {}", change.removed.join(" "));
    }
    println!("  local scopes: {}", record.local_scope_list().join(" "));
    if change
        .added
        .iter()
        .any(|scope| scope == catalog::scopes::ORDERS_LIVE)
    {
        println!("  LIVE TRADING: {}.", primitives::LIVE_GRANT_WARNING);
    }
    if change
        .added
        .iter()
        .any(|scope| scope == catalog::scopes::ORDERS_WRITE)
    {
        println!(
            "  Orders stay dry-run until trading.dry_run is false in the sidecar configuration."
        );
    }
    println!("  A running sidecar applies this at its next call; no restart needed.");
}

// ---- sessions -------------------------------------------------------------------------------

fn session_create(
    state_dir: &Path,
    args: &SessionCreateArgs,
    json: bool,
) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let now = now_unix_seconds();
    let record = primitives::create_session(
        &store,
        &args.remote_instance_id,
        &args.sidecar_id,
        args.ttl_seconds,
        now,
    )?;
    if json {
        print_json(&session_json(&record, now));
    } else {
        println!("Created relay session {}", record.session_id);
        print_session_human(&record, now);
    }
    Ok(())
}

fn session_list(state_dir: &Path, json: bool) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let now = now_unix_seconds();
    let sessions = store.relay_sessions()?;
    if json {
        let list: Vec<Value> = sessions.iter().map(|s| session_json(s, now)).collect();
        print_json(&json!({ "sessions": list }));
    } else if sessions.is_empty() {
        println!("No relay sessions.");
    } else {
        println!("Relay sessions (newest first):");
        for record in &sessions {
            print_session_human(record, now);
        }
    }
    Ok(())
}

fn session_heartbeat(
    state_dir: &Path,
    args: &SessionHeartbeatArgs,
    json: bool,
) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let now = now_unix_seconds();
    let record = primitives::heartbeat_session(&store, &args.session_id, now)?;
    if json {
        print_json(&session_json(&record, now));
    } else {
        println!(
            "Recorded a heartbeat on relay session {}",
            record.session_id
        );
        print_session_human(&record, now);
    }
    Ok(())
}

// ---- relay accept ---------------------------------------------------------------------------

/// `--config`, else `<state_dir>/sidecar.yaml` when it exists (the daemon's own), else none.
fn optional_config(
    explicit: Option<&Path>,
    state_dir: &Path,
) -> Result<Option<SidecarConfig>, SidecarError> {
    if let Some(path) = explicit {
        return SidecarConfig::load(path).map(Some);
    }
    let path = state_dir.join(CONFIG_FILE);
    if path.exists() {
        return SidecarConfig::load(&path).map(Some);
    }
    Ok(None)
}

fn relay_accept(state_dir: &Path, args: &RelayAcceptArgs, json: bool) -> Result<(), Failure> {
    let config = optional_config(args.config.as_deref(), state_dir).map_err(Failure::relay)?;
    let request_id = match &args.request_id {
        Some(text) => Some(RequestId::from_hex(text.trim()).ok_or_else(|| {
            Failure::relay(SidecarError::flag(
                "(--request-id must be 32 hex characters)",
            ))
        })?),
        None => None,
    };
    let store = StateStore::open(state_dir).map_err(Failure::relay)?;
    let request = AcceptRequest {
        remote_instance_id: args.remote_instance_id.clone(),
        sidecar_id: args.sidecar_id.clone(),
        tool_name: args.tool_name.clone(),
        scope: args.scope.clone(),
        payload_json: args.payload_json.clone(),
        session_id: args.session_id.clone(),
        request_id,
        heartbeat_timeout_seconds: config
            .as_ref()
            .map_or(primitives::DEFAULT_HEARTBEAT_TIMEOUT_SECONDS, |c| {
                c.sidecar.heartbeat_timeout_seconds
            }),
    };
    let accepted =
        primitives::relay_accept(&store, &request, now_unix_seconds()).map_err(Failure::relay)?;
    drop(store);
    if args.probe_broker {
        let base_url = config.as_ref().map_or(DEFAULT_CLIENT_PORTAL_BASE_URL, |c| {
            c.sidecar.local_client_portal_base_url.as_str()
        });
        probe_broker(base_url)?;
    }
    if json {
        print_json(&accepted_json(&accepted));
    } else {
        let request = &accepted.request;
        println!(
            "Forwarded request {} (printed only: relay accept sends nothing)",
            request.request_id
        );
        println!("  tool:          {}", request.tool_name);
        println!("  scope:         {}", request.scope);
        println!("  payload hash:  {}", hex::encode(request.payload_hash));
        println!(
            "  payload:       {}",
            String::from_utf8_lossy(&request.payload)
        );
        println!(
            "  session:       {} ({} / {})",
            accepted.session.session_id,
            accepted.pairing.remote_instance_id,
            accepted.pairing.sidecar_id
        );
    }
    Ok(())
}

/// The CPGW gate, on request only: BROKER_SESSION_REQUIRED (a manual login, never automated)
/// or BROKER_UNREACHABLE / BROKER_ERROR.
fn probe_broker(base_url: &str) -> Result<(), Failure> {
    let client = CpgwClient::beside_daemon(base_url).map_err(Failure::relay)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| Failure::relay(SidecarError::internal("(cannot start the async runtime)")))?;
    let result = runtime.block_on(client.auth_status());
    match gates::broker_decision(&result, &client.portal_location()) {
        Ok(()) => Ok(()),
        Err(Outcome::ManualActionRequired(action)) => Err(Failure {
            error: SidecarError::bare(ErrorCode::BrokerSessionRequired),
            relay: true,
            manual_action: Some(Box::new(action)),
            report: None,
        }),
        Err(Outcome::Refused(body) | Outcome::Failed(body)) => {
            let code = ErrorCode::from_code(&body.code).unwrap_or(ErrorCode::BrokerError);
            Err(Failure::relay(SidecarError::bare(code)))
        }
        Err(Outcome::Result { .. }) => {
            Err(Failure::relay(SidecarError::bare(ErrorCode::InternalError)))
        }
    }
}

// ---- status ---------------------------------------------------------------------------------

/// The daemon's last recorded relay outcome. It is the daemon's record, not a live probe: a
/// daemon that was killed leaves its last word (`doctor` probes the gateway live).
fn relay_status_json(record: &RelayStatusRecord, now: i64) -> Value {
    json!({
        "connected": record.connected,
        "code": record.code,
        "detail": record.detail,
        "user_action": record
            .code
            .as_deref()
            .and_then(ErrorCode::from_code)
            .map(ErrorCode::user_action),
        "recorded_seconds_ago": now.saturating_sub(record.updated_at).max(0),
        "last_connected_at": record.connected_at,
    })
}

fn print_relay_status_human(record: &RelayStatusRecord, now: i64) {
    let age = now.saturating_sub(record.updated_at).max(0);
    if record.connected {
        println!("Relay: connected (recorded by the daemon {age} s ago)");
        return;
    }
    match record.code.as_deref() {
        Some(code) => println!("Relay: NOT connected, {code} (recorded by the daemon {age} s ago)"),
        None => println!("Relay: not connected (recorded by the daemon {age} s ago)"),
    }
    println!("  {}", record.detail);
}

fn status(state_dir: &Path, json: bool) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let now = now_unix_seconds();
    let identity = store.identity()?;
    let pairings = store.pairings()?;
    let open: Vec<RelaySessionRecord> = store
        .relay_sessions()?
        .into_iter()
        .filter(|session| session.is_open(now))
        .collect();
    let relay = match &identity {
        Some(record) => store.relay_status(&record.sidecar_id)?,
        None => None,
    };
    let trading_pause = store.trading_pause()?;
    let config_path = state_dir.join(CONFIG_FILE);
    let config_present = config_path.exists();
    let config_check = config_present.then(|| SidecarConfig::load(&config_path));
    if json {
        let daemon_config = match &config_check {
            None => json!({"present": false, "valid": Value::Null, "error": Value::Null}),
            Some(Ok(_)) => json!({"present": true, "valid": true, "error": Value::Null}),
            Some(Err(error)) => json!({
                "present": true,
                "valid": false,
                "error": error_json(&error.body()),
            }),
        };
        print_json(&json!({
            "identity": identity.as_ref().map(identity_json),
            "pairings": pairings.iter().map(|p| pairing_json(p, now)).collect::<Vec<_>>(),
            "open_sessions": open.iter().map(|s| session_json(s, now)).collect::<Vec<_>>(),
            "relay": relay.as_ref().map(|r| relay_status_json(r, now)),
            "trading_paused": trading_pause.as_ref().map(pause_json),
            "daemon_config": daemon_config,
        }));
        return Ok(());
    }
    println!("State directory: {}", state_dir.display());
    match &identity {
        Some(record) => {
            println!(
                "Identity: {} ({}), fingerprint {}",
                record.sidecar_id,
                record.display_name,
                record.fingerprint()
            );
            if !record.has_secret {
                println!("  external public key: no secret here, so `sidecar run` cannot use it");
            }
        }
        None => println!("Identity: none (run `ibkr-agent sidecar identity create`)"),
    }
    if pairings.is_empty() {
        println!("Pairings: none");
    } else {
        println!("Pairings:");
        for record in &pairings {
            print_pairing_human(record, now);
        }
    }
    if open.is_empty() {
        println!("Open relay sessions: none");
    } else {
        println!("Open relay sessions:");
        for record in &open {
            print_session_human(record, now);
        }
    }
    match &relay {
        None => println!("Relay: no attempt recorded yet (start `ibkr-agent sidecar run`)"),
        Some(record) => print_relay_status_human(record, now),
    }
    match &trading_pause {
        None => println!("Trading: not paused"),
        Some(pause) => println!(
            "Trading: PAUSED since unix {}{} (`ibkr-agent sidecar resume` ends it)",
            pause.paused_at,
            if pause.reason.is_empty() {
                String::new()
            } else {
                format!(", reason: {}", pause.reason)
            }
        ),
    }
    match &config_check {
        None => println!(
            "Daemon configuration: none ({} is absent; `sidecar pair` writes it, or pass --config)",
            config_path.display()
        ),
        Some(Ok(_)) => println!("Daemon configuration: {} (valid)", config_path.display()),
        Some(Err(error)) => println!(
            "Daemon configuration: {} (INVALID: {error})",
            config_path.display()
        ),
    }
    Ok(())
}

// ---- pair and run ---------------------------------------------------------------------------

fn read_code(argument: &str) -> Result<Zeroizing<String>, SidecarError> {
    if argument != "-" {
        return Ok(Zeroizing::new(argument.to_string()));
    }
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|_| SidecarError::flag("(could not read the pairing code from stdin)"))?;
    Ok(Zeroizing::new(line.trim().to_string()))
}

fn pair_command(state_dir: &Path, args: &PairArgs, json: bool) -> Result<(), SidecarError> {
    // A bad --scope must not spend the one-time code.
    if !args.scopes.is_empty() {
        primitives::validate_scope_flags(&args.scopes, ScopeEdit::Grant, args.confirm_live)?;
    }
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
    let record = if args.scopes.is_empty() {
        record
    } else {
        let store = StateStore::open(state_dir)?;
        primitives::change_local_scopes(
            &store,
            (&record.remote_instance_id, &record.sidecar_id),
            ScopeEdit::Grant,
            &args.scopes,
            args.confirm_live,
            now_unix_seconds(),
        )?
        .record
    };
    // The pairing is recorded; the configuration file is a convenience written once.
    let config_written = match &record.relay_url {
        Some(relay_url) => config::write_default_config_if_absent(state_dir, relay_url)?,
        None => false,
    };
    let now = now_unix_seconds();
    if json {
        let mut out = pairing_json(&record, now);
        out["config_file_written"] = json!(config_written);
        print_json(&out);
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
            "  local scopes:        {}",
            record.local_scope_list().join(" ")
        );
        if args.scopes.is_empty() {
            println!(
                "                       (read-only; to allow orders: ibkr-agent sidecar pairing grant --scope ibkr:orders:preview,ibkr:orders:write)"
            );
        }
        println!("  state dir:           {}", state_dir.display());
        let config_path = state_dir.join(CONFIG_FILE);
        if config_written {
            println!(
                "  configuration:       wrote {} (0600; check local_client_portal_base_url)",
                config_path.display()
            );
        } else {
            println!(
                "  configuration:       {} already exists and was left as it is",
                config_path.display()
            );
        }
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
        // Colour only for a person at a terminal: the journal and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run_command(state_dir: PathBuf, args: &RunArgs) -> Result<(), SidecarError> {
    // Fail before starting anything: no runtime, no store, no socket for a bad configuration.
    let config = SidecarConfig::load_for_state_dir(args.config.as_deref(), &state_dir)?;
    init_tracing();
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

    #[test]
    fn scopes_repeat_or_split_on_commas() {
        let cli = Cli::try_parse_from([
            "ibkr-agent",
            "sidecar",
            "pairing",
            "create",
            "--remote-instance-id",
            "r",
            "--sidecar-id",
            "s",
            "--user-id",
            "u",
            "--ttl-seconds",
            "5",
            "--scope",
            "ibkr:orders:preview,ibkr:orders:write",
            "--scope",
            "ibkr:audit:read",
        ])
        .unwrap();
        let TopCommand::Sidecar(SidecarArgs {
            command:
                SidecarCommand::Pairing(PairingArgs {
                    command: PairingCommand::Create(args),
                }),
        }) = cli.command
        else {
            panic!("parsed into the wrong command");
        };
        assert_eq!(
            args.scopes,
            [
                "ibkr:orders:preview",
                "ibkr:orders:write",
                "ibkr:audit:read"
            ]
        );
    }

    #[test]
    fn relay_exit_codes() {
        let exit = |code| Failure::relay(SidecarError::bare(code)).exit_code();
        assert_eq!(exit(ErrorCode::SensitiveMaterialRefused), 3);
        assert_eq!(exit(ErrorCode::BrokerUnreachable), 3);
        assert_eq!(exit(ErrorCode::BrokerSessionRequired), 3);
        assert_eq!(exit(ErrorCode::ConfigInvalid), 2);
        assert_eq!(exit(ErrorCode::StateStoreError), 1);
        assert_eq!(
            Failure::from(SidecarError::bare(ErrorCode::BrokerUnreachable)).exit_code(),
            1
        );
    }
}
