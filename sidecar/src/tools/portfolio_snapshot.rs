//! `ibkr_portfolio_snapshot`: account summary, positions and total unrealized P&L (Decimal
//! sum) in one call.

use super::account_summary::summary_json;
use super::context::{ToolContext, ToolResult, selected_account};
use super::positions_list::position_json;
use crate::cpgw::marketdata::cpgw_outcome;
use crate::cpgw::portfolio::{positions, summary, total_unrealized_pnl};
use serde_json::json;
use shared_safety::money::to_decimal_string;

pub(super) async fn run(context: &ToolContext<'_>) -> ToolResult {
    let account = selected_account(context).await?;
    let (summary, list) = tokio::join!(
        summary(context.cpgw, &account),
        positions(context.cpgw, &account, true)
    );
    let summary = summary.map_err(|error| cpgw_outcome(error, context.cpgw))?;
    let list = list.map_err(|error| cpgw_outcome(error, context.cpgw))?;
    Ok(json!({
        "account_id": account,
        "summary": summary_json(&account, &summary),
        "positions": list.iter().map(position_json).collect::<Vec<_>>(),
        "total_unrealized_pnl": to_decimal_string(total_unrealized_pnl(&list)),
    }))
}
