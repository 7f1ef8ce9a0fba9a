//! `ibkr_positions_list`: open positions of the selected account, exact (fractional)
//! quantities and amounts as decimal strings.

use super::context::{ToolContext, ToolResult, decimal_value, selected_account};
use crate::cpgw::marketdata::cpgw_outcome;
use crate::cpgw::portfolio::{Position, positions};
use serde_json::{Value, json};
use shared_safety::money::to_decimal_string;

pub(super) fn position_json(position: &Position) -> Value {
    json!({
        "symbol": position.symbol,
        "conid": position.conid,
        "quantity": to_decimal_string(position.quantity),
        "average_cost": decimal_value(position.average_cost),
        "market_price": decimal_value(position.market_price),
        "market_value": decimal_value(position.market_value),
        "unrealized_pnl": decimal_value(position.unrealized_pnl),
        "currency": position.currency,
    })
}

pub(super) async fn run(context: &ToolContext<'_>) -> ToolResult {
    let account = selected_account(context).await?;
    let list = positions(context.cpgw, &account, true)
        .await
        .map_err(|error| cpgw_outcome(error, context.cpgw))?;
    Ok(json!({
        "account_id": account,
        "positions": list.iter().map(position_json).collect::<Vec<_>>(),
    }))
}
