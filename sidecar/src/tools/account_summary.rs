//! `ibkr_account_summary`: available funds, net liquidation and buying power of the selected
//! account (decimal strings).

use super::context::{ToolContext, ToolResult, decimal_value, selected_account};
use crate::cpgw::marketdata::cpgw_outcome;
use crate::cpgw::portfolio::{AccountSummary, summary};
use serde_json::{Value, json};

pub(super) fn summary_json(account: &str, summary: &AccountSummary) -> Value {
    json!({
        "account_id": account,
        "currency": summary.currency(),
        "available_funds": decimal_value(summary.available_funds.amount),
        "net_liquidation": decimal_value(summary.net_liquidation.amount),
        "buying_power": decimal_value(summary.buying_power.amount),
    })
}

pub(super) async fn run(context: &ToolContext<'_>) -> ToolResult {
    let account = selected_account(context).await?;
    let summary = summary(context.cpgw, &account)
        .await
        .map_err(|error| cpgw_outcome(error, context.cpgw))?;
    Ok(summary_json(&account, &summary))
}
