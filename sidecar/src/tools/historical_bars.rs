//! `ibkr_historical_bars`: OHLCV bars (decimal strings, RFC 3339 times).

use super::context::{ToolContext, ToolResult, decimal_value};
use crate::cpgw::marketdata::{cpgw_outcome, decimal_of};
use protocol::envelope::Outcome;
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const PERIODS: &[&str] = &["1d", "1w", "1m", "3m", "6m", "1y"];
const BARS: &[&str] = &["1min", "5min", "15min", "1h", "1d"];

fn choice<'a>(
    arguments: &'a serde_json::Map<String, Value>,
    key: &str,
    allowed: &[&str],
    default: &'a str,
) -> Result<&'a str, Outcome> {
    match arguments.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(text)) if allowed.contains(&text.as_str()) => Ok(text),
        Some(_) => Err(Outcome::Refused(
            ErrorCode::ArgumentsInvalid.body(Some(&format!("({key})"))),
        )),
    }
}

fn rfc3339_of_millis(text: &str) -> Option<String> {
    let millis: i128 = text.trim().parse().ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(millis.checked_mul(1_000_000)?)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

pub(super) async fn run(
    arguments: &serde_json::Map<String, Value>,
    context: &ToolContext<'_>,
) -> ToolResult {
    let symbol = super::context::string_arg(arguments, "symbol")?;
    let period = choice(arguments, "period", PERIODS, "1m")?;
    let bar = choice(arguments, "bar", BARS, "1d")?;
    let contract = context.contracts.resolve_symbol(symbol).await?;
    let reply = context
        .cpgw
        .history(contract.conid, period, bar)
        .await
        .map_err(|error| cpgw_outcome(error, context.cpgw))?;
    let bars: Vec<Value> = reply
        .data
        .iter()
        .filter_map(|row| {
            Some(json!({
                "time": rfc3339_of_millis(row.t.as_ref()?.as_str())?,
                "open": decimal_value(row.o.as_ref().and_then(decimal_of)),
                "high": decimal_value(row.h.as_ref().and_then(decimal_of)),
                "low": decimal_value(row.l.as_ref().and_then(decimal_of)),
                "close": decimal_value(row.c.as_ref().and_then(decimal_of)),
                "volume": decimal_value(row.v.as_ref().and_then(decimal_of)),
            }))
        })
        .collect();
    Ok(json!({
        "symbol": contract.symbol,
        "conid": contract.conid,
        "period": period,
        "bar": bar,
        "bars": bars,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_times_are_rfc3339() {
        assert_eq!(
            rfc3339_of_millis("1700000000000").as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(rfc3339_of_millis("x"), None);
    }
}
