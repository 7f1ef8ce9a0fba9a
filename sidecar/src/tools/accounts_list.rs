//! `ibkr_accounts_list`: the accounts the CPGW session can see, which one is selected, paper or
//! live, and whether each supports cash-quantity and fractional orders.

use super::context::{ToolContext, ToolResult, cpgw_failure};
use crate::cpgw::types::trading_mode;
use serde_json::{Value, json};

pub(super) async fn run(context: &ToolContext<'_>) -> ToolResult {
    let reply = context
        .cpgw
        .accounts()
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?;
    let accounts: Vec<Value> = reply
        .accounts
        .iter()
        .map(|id| {
            let props = reply.acct_props.get(id);
            json!({
                "account_id": id,
                "trading_mode": trading_mode(reply.is_paper, id).as_str(),
                "supports_cash_qty": props.and_then(|p| p.supports_cash_qty),
                "supports_fractions": props.and_then(|p| p.supports_fractions),
            })
        })
        .collect();
    Ok(json!({
        "selected_account": reply.active_account(),
        "accounts": accounts,
    }))
}
