//! `ibkr_quotes`: a watchlist in at most one snapshot call (plus one symbol search for the
//! symbols not cached yet): quotes young enough or already on their way come through the
//! shared [`crate::cpgw::QuoteCache`], only the others are asked for.

use super::context::{ToolContext, ToolResult};
use super::quote::quote_json;
use crate::cpgw::marketdata::cpgw_outcome;
use protocol::envelope::Outcome;
use serde_json::{Value, json};
use shared_safety::ErrorCode;

pub(super) async fn run(
    arguments: &serde_json::Map<String, Value>,
    context: &ToolContext<'_>,
) -> ToolResult {
    let symbols: Vec<String> = arguments
        .get("symbols")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if symbols.is_empty() {
        return Err(Outcome::Refused(
            ErrorCode::ArgumentsInvalid.body(Some("(symbols)")),
        ));
    }
    let contracts = context.contracts.resolve_symbols(&symbols).await?;
    let conids: Vec<i64> = contracts.iter().map(|c| c.conid).collect();
    let quotes = context
        .quotes
        .quotes(context.cpgw, &conids)
        .await
        .map_err(|error| cpgw_outcome(error, context.cpgw))?;
    let rows: Vec<Value> = contracts
        .iter()
        .map(|contract| match quotes.get(&contract.conid) {
            Some(aged) if aged.quote.has_price() => quote_json(contract, aged),
            _ => json!({
                "symbol": contract.symbol,
                "conid": contract.conid,
                "error": ErrorCode::MarketDataUnavailable.code(),
            }),
        })
        .collect();
    Ok(json!({ "quotes": rows }))
}
