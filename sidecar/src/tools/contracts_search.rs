//! `ibkr_contracts_search`: every listing of a symbol (conid, exchange, currency), US first.

use super::context::{ToolContext, ToolResult, string_arg};
use serde_json::json;

pub(super) async fn run(
    arguments: &serde_json::Map<String, serde_json::Value>,
    context: &ToolContext<'_>,
) -> ToolResult {
    let symbol = string_arg(arguments, "symbol")?;
    let contracts = context.contracts.search(symbol).await?;
    let rows: Vec<_> = contracts
        .iter()
        .map(|contract| {
            json!({
                "symbol": contract.symbol,
                "conid": contract.conid,
                "exchange": contract.exchange,
                "currency": contract.currency,
                "is_us": contract.is_us,
            })
        })
        .collect();
    Ok(json!({
        "symbol": symbol.trim().to_ascii_uppercase(),
        "contracts": rows,
    }))
}
