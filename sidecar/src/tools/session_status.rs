//! `ibkr_session_status`: the CPGW session, the account it serves, paper or live, and the
//! sidecar's trading posture. Runs only with an authenticated session (gate f).
//!
//! The posture is the trading policy as it applies to this caller ([`crate::trading::posture`]):
//! live trading counts as allowed only with `trading.allow_live` and `ibkr:orders:live` granted
//! by both the caller's token and the local pairing. An unknown account type is never safe.

use super::context::{ToolContext, ToolResult, cpgw_failure};
use crate::cpgw::types::{TradingMode, trading_mode};
use serde_json::json;

pub(super) async fn run(context: &ToolContext<'_>) -> ToolResult {
    let auth = match context.auth {
        Some(status) => status,
        None => context
            .cpgw
            .auth_status()
            .await
            .map_err(|error| cpgw_failure(error, context.cpgw))?,
    };
    let accounts = context
        .cpgw
        .accounts()
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?;
    let account = accounts.active_account();
    let mode = account
        .map(|id| trading_mode(accounts.is_paper, id))
        .unwrap_or(TradingMode::Unknown);
    Ok(json!({
        "authenticated": auth.authenticated,
        "connected": auth.connected,
        "competing": auth.competing,
        "account_id": account,
        "trading_mode": mode.as_str(),
        "posture": crate::trading::posture(
            context.orders,
            auth.authenticated,
            mode == TradingMode::Paper,
            mode == TradingMode::Live,
            context.live_scope_granted,
            context.trading_pause.as_ref(),
        ),
    }))
}
