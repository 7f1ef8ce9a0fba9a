//! `ibkr_health` (sidecar part): the sidecar and the local CPGW session in one answer. It
//! reports a missing login as a state with a next step; it never asks for a manual action
//! itself, because health must answer precisely when things are broken.

use super::context::{ToolContext, ToolResult};
use crate::context::SIDECAR_VERSION;
use crate::cpgw::keepalive::publish;
use crate::cpgw::{BrokerState, CpgwError};
use serde_json::{Value, json};

pub(super) async fn run(context: &ToolContext<'_>) -> ToolResult {
    let result = context.cpgw.auth_status().await;
    let state = BrokerState::from_auth(&result);
    publish(context.broker, state);
    let (authenticated, connected, competing) = match &result {
        Ok(status) => (
            json!(status.authenticated),
            json!(status.connected),
            json!(status.competing),
        ),
        Err(CpgwError::NotAuthenticated) => (json!(false), Value::Null, Value::Null),
        Err(_) => (Value::Null, Value::Null, Value::Null),
    };
    Ok(json!({
        "sidecar": {
            "version": SIDECAR_VERSION,
            "sidecar_id": context.sidecar_id,
            "connected_since_seconds": context.connected_for.as_secs(),
        },
        "broker": {
            "state": state.as_str(),
            "authenticated": authenticated,
            "connected": connected,
            "competing": competing,
            "next_step": state.next_step(&context.cpgw.portal_location()),
        },
    }))
}
