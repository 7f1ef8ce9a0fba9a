//! `ibkr-agent sidecar approvals list|approve|deny`: the owner's decisions on orders waiting
//! for approval, from a terminal (the console offers the same).

use crate::error::SidecarError;
use crate::state::StateStore;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use std::path::Path;

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Orders waiting for your approval: what, why, and until when.
    List,
    /// Approve one order: the running daemon checks it again (pause, market hours, quote,
    /// position, caps) and sends it. Used once.
    Approve(DecideArgs),
    /// Deny one order: nothing is sent, and the agent is told it was denied.
    Deny(DenyArgs),
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The attempt id `approvals list` shows.
    #[arg(value_name = "ATTEMPT")]
    pub attempt: u64,
    /// The order's hash as `approvals list` shows it: refused if the waiting order differs.
    #[arg(long, value_name = "HASH")]
    pub hash: Option<String>,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    #[command(flatten)]
    pub decide: DecideArgs,
    /// Why, for the journal and the agent (e.g. "too large for today").
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// Runs one `approvals` command.
pub fn command(state_dir: &Path, args: &ApprovalsArgs, json: bool) -> Result<(), SidecarError> {
    match &args.command {
        ApprovalsCommand::List => list(state_dir, json),
        ApprovalsCommand::Approve(args) => {
            let request = crate::owner::OwnerRequest::Approve {
                attempt: args.attempt,
                intent_hash: args.hash.clone(),
                by: crate::owner::current_user(),
                via: "cli".into(),
            };
            decide(
                state_dir,
                &request,
                json,
                "approved; the sidecar checks it again and sends it",
            )
        }
        ApprovalsCommand::Deny(args) => {
            let request = crate::owner::OwnerRequest::Deny {
                attempt: args.decide.attempt,
                intent_hash: args.decide.hash.clone(),
                note: args.note.clone(),
                by: crate::owner::current_user(),
                via: "cli".into(),
            };
            decide(state_dir, &request, json, "denied; nothing was sent")
        }
    }
}

fn decide(
    state_dir: &Path,
    request: &crate::owner::OwnerRequest,
    json: bool,
    done: &str,
) -> Result<(), SidecarError> {
    let store = StateStore::open(state_dir)?;
    let result = crate::owner::submit(state_dir, &store, request)?;
    if json {
        super::print_json(&result);
    } else {
        println!(
            "Attempt {}: {done} (journaled).",
            result.get("attempt_id").unwrap_or(&Value::Null)
        );
    }
    Ok(())
}

fn list(state_dir: &Path, json: bool) -> Result<(), SidecarError> {
    use crate::trading::journal::{JOURNAL_FILE, read_attempts};
    let book = read_attempts(&state_dir.join(JOURNAL_FILE))
        .map_err(|error| SidecarError::new(ErrorCode::JournalError, format!("({error})")))?;
    let now = crate::trading::now_ms();
    let pending = crate::approvals::pending_in(&book);
    if json {
        let rows: Vec<Value> = pending
            .iter()
            .map(|approval| {
                let mut row = json!(approval);
                if let Value::Object(map) = &mut row {
                    map.insert("expired".into(), json!(approval.expires_at_ms <= now));
                }
                row
            })
            .collect();
        super::print_json(&json!({ "awaiting_approval": rows }));
        return Ok(());
    }
    if pending.is_empty() {
        println!("No order waits for your approval.");
        return Ok(());
    }
    println!("Orders waiting for your approval:");
    for approval in &pending {
        let left = (approval.expires_at_ms - now) / 1000;
        let expiry = if left > 0 {
            format!("expires in {left} s")
        } else {
            "expired (a running daemon records it)".to_string()
        };
        println!(
            "  attempt {}  {} {} on {} account {}  value {}  hash {}  {}",
            approval.attempt_id,
            approval.tool,
            approval.symbol,
            approval.account_mode,
            approval.account,
            approval.order_value.as_deref().unwrap_or("unknown"),
            approval.intent_hash,
            expiry
        );
        for leg in &approval.legs {
            println!("      {leg}");
        }
        println!("      why: {}", approval.reason);
    }
    println!(
        "Approve or deny each:\n  ibkr-agent sidecar approvals approve <ATTEMPT> --hash <HASH>\n  ibkr-agent sidecar approvals deny <ATTEMPT> --note \"...\""
    );
    Ok(())
}
