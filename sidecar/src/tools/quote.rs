//! `ibkr_quote`: last, bid and ask of one symbol (decimal strings); whether the last price is
//! the previous close (`C` prefix) or the symbol is halted (`H`); how old the snapshot is.
//! Quotes come through the shared [`crate::cpgw::QuoteCache`].

use super::context::{ToolContext, ToolResult, decimal_value, string_arg};
use crate::cpgw::Contract;
use crate::cpgw::marketdata::cpgw_outcome;
use crate::cpgw::quote_cache::AgedQuote;
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
    let quotes = context
        .quotes
        .quotes(context.cpgw, &[contract.conid])
        .await
        .map_err(|error| cpgw_outcome(error, context.cpgw))?;
    match quotes.get(&contract.conid) {
        Some(aged) if aged.quote.has_price() => Ok(quote_json(&contract, aged)),
        _ => Err(Outcome::Failed(ErrorCode::MarketDataUnavailable.body(None))),
    }
}

/// One quote as the tools report it. `age_ms`: milliseconds since CPGW sent the snapshot.
pub(super) fn quote_json(contract: &Contract, aged: &AgedQuote) -> Value {
    let quote = &aged.quote;
    let age_ms = u64::try_from(aged.age.as_millis()).unwrap_or(u64::MAX);
    json!({
        "symbol": contract.symbol,
        "conid": contract.conid,
        "last": decimal_value(quote.last),
        "bid": decimal_value(quote.bid),
        "ask": decimal_value(quote.ask),
        "last_is_previous_close": quote.last_prefix == PricePrefix::PreviousClose,
        "halted": quote.last_prefix == PricePrefix::Halted,
        "currency": contract.currency,
        "age_ms": age_ms,
    })
}
