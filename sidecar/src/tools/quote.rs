//! `ibkr_quote`: last, bid and ask of one symbol (decimal strings); whether the last price is
//! the previous close (`C` prefix) or the symbol is halted (`H`).

use super::context::{ToolContext, ToolResult, decimal_value, string_arg};
use crate::cpgw::Contract;
use crate::cpgw::marketdata::{Quote, SNAPSHOT_BACKOFF, cpgw_outcome, snapshot};
use protocol::envelope::Outcome;
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use shared_safety::money::PricePrefix;

pub(super) async fn run(
    arguments: &serde_json::Map<String, Value>,
    context: &ToolContext<'_>,
) -> ToolResult {
    let symbol = string_arg(arguments, "symbol")?;
    let contract = context.contracts.resolve_symbol(symbol).await?;
    let quotes = snapshot(context.cpgw, &[contract.conid], SNAPSHOT_BACKOFF)
        .await
        .map_err(|error| cpgw_outcome(error, context.cpgw))?;
    match quotes.get(&contract.conid) {
        Some(quote) if quote.has_price() => Ok(quote_json(&contract, quote)),
        _ => Err(Outcome::Failed(ErrorCode::MarketDataUnavailable.body(None))),
    }
}

/// One quote as the tools report it.
pub(super) fn quote_json(contract: &Contract, quote: &Quote) -> Value {
    json!({
        "symbol": contract.symbol,
        "conid": contract.conid,
        "last": decimal_value(quote.last),
        "bid": decimal_value(quote.bid),
        "ask": decimal_value(quote.ask),
        "last_is_previous_close": quote.last_prefix == PricePrefix::PreviousClose,
        "halted": quote.last_prefix == PricePrefix::Halted,
        "currency": contract.currency,
    })
}
