//! `ibkr-agent sidecar agents list|approve|deny|revoke`: the agent connections of the
//! gateway's built-in authorization server, as the laptop's owner manages them (the console
//! offers the same). See [`crate::agents`].

use crate::agents::{self, AgentRecord, AgentStatus};
use crate::error::SidecarError;
use crate::state::StateStore;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::Path;

#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(subcommand)]
    pub command: AgentsCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Agents asking to connect, and connected ones: client, where it redirects, scopes, last
    /// use.
    List,
    /// Approve the request whose authorization page shows CODE (type it from the page: the
    /// laptop never shows it, so only the person at that page can have it approved).
    Approve(ApproveArgs),
    /// Deny the request whose authorization page shows CODE.
    Deny(CodeArgs),
    /// Revoke a connected agent: its calls are refused from now on and the gateway ends its
    /// tokens.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct CodeArgs {
    /// The confirmation code the authorization page shows, e.g. K7QM-3XW9.
    #[arg(value_name = "CODE")]
    pub code: String,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    pub code: CodeArgs,
    /// Grant only these scopes (comma-separated; each must be one the agent asked for).
    #[arg(long, value_name = "SCOPES", value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The agent's id as `agents list` shows it (at least 8 characters of it).
    #[arg(value_name = "ID")]
    pub id: String,
}

/// The first 12 characters of an agent id (what `list` shows and `revoke` takes).
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn status_word(record: &AgentRecord) -> &'static str {
    match record.status {
        AgentStatus::Pending => "waiting for you",
        AgentStatus::Expired => "expired",
        AgentStatus::Approved => "connected",
        AgentStatus::Denied => "denied",
        AgentStatus::Revoked if record.revocation_confirmed => "revoked",
        AgentStatus::Revoked => "revoked (the gateway is told at the next connection)",
    }
}

fn print_record(record: &AgentRecord, now_ms: i64) {
    let scopes = match record.status {
        AgentStatus::Pending | AgentStatus::Expired | AgentStatus::Denied => {
            format!("asks for {}", record.requested_scopes.join(" "))
        }
        _ => format!("granted {}", record.granted_scopes.join(" ")),
    };
    let last_use = match record.last_used_at_ms {
        Some(at) => format!("last used {} s ago", (now_ms - at).max(0) / 1000),
        None => "never used".to_string(),
    };
    let verified = if record.client_verified {
        ""
    } else {
        " (name not verified)"
    };
    println!(
        "  {}  {}{verified}  [{}]\n      client {}\n      redirects to {}\n      {}; {}",
        short(&record.id),
        record.client_name,
        status_word(record),
        record.client_id,
        record.redirect_uri,
        scopes,
        last_use
    );
}

/// Runs one `agents` command.
pub fn command(state_dir: &Path, args: &AgentsArgs, json: bool) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let now = crate::trading::now_ms();
    let by = crate::owner::current_user();
    let (record, done) = match &args.command {
        AgentsCommand::List => {
            let records = agents::list(&store, now)?;
            if json {
                super::print_json(&json!({ "agents": records }));
                return Ok(());
            }
            if records.is_empty() {
                println!("No agent has asked to connect.");
            }
            for record in &records {
                print_record(record, now);
            }
            if records.iter().any(|r| r.status == AgentStatus::Pending) {
                println!(
                    "Approve a waiting agent with the code its page shows:\n  ibkr-agent sidecar agents approve <CODE> [--scopes a,b]\n  ibkr-agent sidecar agents deny <CODE>"
                );
            }
            return Ok(());
        }
        AgentsCommand::Approve(args) => (
            agents::approve(&store, &args.code.code, args.scopes.as_deref(), &by, now)?,
            "approved; the running sidecar tells the gateway within a second and the page continues (with no sidecar running, the request expires)",
        ),
        AgentsCommand::Deny(args) => (
            agents::deny(&store, &args.code, &by, now)?,
            "denied; the page tells the agent",
        ),
        AgentsCommand::Revoke(args) => (
            agents::revoke(&store, &args.id, &by, now)?,
            "revoked; its calls are refused from now on",
        ),
    };
    if json {
        super::print_json(&json!({ "agent": record }));
    } else {
        println!("{} ({}): {done}.", record.client_name, short(&record.id));
        if record.status == AgentStatus::Approved {
            println!("  granted {}", record.granted_scopes.join(" "));
        }
    }
    Ok(())
}
