//! Tool implementations, one file per tool. Each returns structured JSON (sanitized by the
//! caller) or an outcome explaining why not.

mod accounts_list;
mod health;
mod session_status;

use crate::cpgw::types::AuthStatus;
use crate::cpgw::{BrokerState, CpgwClient, CpgwError};
use crate::gates::{CheckedRequest, manual_login_action};
use protocol::catalog::ToolSpec;
use protocol::envelope::Outcome;
use serde_json::Value;
use shared_safety::ErrorCode;
use std::time::Duration;
use tokio::sync::watch;

/// What a tool may use.
pub struct ToolContext<'a> {
    pub cpgw: &'a CpgwClient,
    pub broker: &'a watch::Sender<BrokerState>,
    pub sidecar_id: &'a str,
    /// How long the current relay connection has been up.
    pub connected_for: Duration,
    /// The `auth/status` gate f saw (broker tools only).
    pub auth: Option<AuthStatus>,
}

pub type ToolResult = Result<Value, Outcome>;

/// Tools that need an authenticated CPGW session before they run (gate f). `ibkr_health`
/// reports the session state instead of requiring it.
pub fn needs_broker_session(tool: &ToolSpec) -> bool {
    tool.name != "ibkr_health"
}

/// Runs a checked request.
pub async fn run(request: &CheckedRequest, context: &ToolContext<'_>) -> ToolResult {
    match request.tool.name {
        "ibkr_health" => health::run(context).await,
        "ibkr_session_status" => session_status::run(context).await,
        "ibkr_accounts_list" => accounts_list::run(context).await,
        _ => Err(Outcome::Refused(ErrorCode::ToolUnknown.body(Some(
            "(this sidecar version does not implement the tool)",
        )))),
    }
}

/// The outcome for a failed CPGW call inside a tool.
pub(crate) fn cpgw_failure(error: CpgwError, client: &CpgwClient) -> Outcome {
    match error {
        CpgwError::NotAuthenticated => {
            Outcome::ManualActionRequired(manual_login_action(&client.portal_location()))
        }
        other => Outcome::Failed(other.error_code().body(None)),
    }
}
