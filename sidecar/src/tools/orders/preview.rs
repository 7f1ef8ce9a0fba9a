//! `ibkr_order_preview`: IBKR's what-if. Sends nothing to the market and journals nothing.
//!
//! The live answer (IBKR's endpoint reference, and a capture of the reference server) writes
//! amounts as `"1,892.60 USD (10 Shares)"` or `"2 USD (0.0067 Shares)"`, the margin sections as
//! whole numbers (`"100,000"`, `"-1"`), and its warnings as `warns[]` (`"<code>/<text>"`) beside
//! `warn` (the first one, or null).

use super::facts::account_identity;
use super::ticket::{
    Leg, decimal_arg, intent, intent_json, invalid, orders_body, side_arg, text_arg,
};
use crate::cpgw::manual_login_action;
use crate::cpgw::orders::SendFailure;
use crate::tools::context::{ToolContext, ToolResult};
use protocol::envelope::Outcome;
use serde_json::{Map, Value, json};
use shared_safety::ErrorCode;
use shared_safety::guards::{OrderIntentRole, OrderKind, Side, Tif, client_order_id};
use shared_safety::money::{parse_whatif_amount, to_decimal_string};

/// Longest warning text kept (they are HTML fragments of several kilobytes at times).
const MAX_WARNING_LEN: usize = 300;

fn amount(answer: &Value, section: &str, field: &str) -> Value {
    answer
        .get(section)
        .and_then(|s| s.get(field))
        .and_then(Value::as_str)
        .and_then(parse_whatif_amount)
        .map_or(Value::Null, |parsed| {
            json!({
                "amount": to_decimal_string(parsed.amount),
                "currency": parsed.currency,
                "shares": parsed.shares.map(to_decimal_string),
            })
        })
}

fn warnings(answer: &Value) -> Vec<String> {
    let mut found: Vec<String> = answer
        .get("warns")
        .and_then(Value::as_array)
        .map(|warns| warns.iter().filter_map(Value::as_str).map(bound).collect())
        .unwrap_or_default();
    if let Some(warn) = answer.get("warn").and_then(Value::as_str) {
        let warn = bound(warn);
        if !found.contains(&warn) {
            found.insert(0, warn);
        }
    }
    found
}

fn bound(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_WARNING_LEN)
        .collect()
}

/// `ibkr_order_preview`.
pub async fn preview(arguments: &Map<String, Value>, context: &ToolContext<'_>) -> ToolResult {
    let symbol_arg = text_arg(arguments, "symbol").unwrap_or_default();
    let side = side_arg(arguments)?;
    let contract = context.contracts.resolve_symbol(symbol_arg).await?;
    let identity = account_identity(context).await?;
    let limit = decimal_arg(arguments, "limit_price")?;
    let mut order = intent(
        &contract.symbol,
        side,
        if limit.is_some() {
            OrderKind::Limit
        } else {
            OrderKind::Market
        },
        if side == Side::Buy {
            OrderIntentRole::Entry
        } else {
            OrderIntentRole::Exit
        },
        Tif::Day,
    );
    order.quantity = decimal_arg(arguments, "quantity")?;
    order.cash_amount = decimal_arg(arguments, "cash_amount")?;
    order.limit_price = limit;
    if order.cash_amount.is_some() && (side == Side::Sell || limit.is_some()) {
        return Err(invalid("(cash_amount only on market buys)"));
    }
    let mut key = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
    let leg = Leg {
        label: "order",
        intent: order.clone(),
        coid: Some(client_order_id(&hex::encode(key), "preview")),
        parent_coid: None,
    };
    let body = orders_body(contract.conid, std::slice::from_ref(&leg))?;
    let answer = match context.cpgw.whatif(&identity.account, body).await {
        Ok(answer) => answer,
        Err(SendFailure::Rejected { reason }) => {
            return Err(Outcome::Refused(
                ErrorCode::OrderRejected.body(Some(&format!("({reason})"))),
            ));
        }
        Err(SendFailure::NotAuthenticated) => {
            return Err(Outcome::ManualActionRequired(manual_login_action(
                &context.cpgw.portal_location(),
            )));
        }
        Err(_) => return Err(Outcome::Failed(ErrorCode::BrokerError.body(None))),
    };
    let warnings = warnings(&answer);
    Ok(json!({
        "status": "preview",
        "symbol": contract.symbol,
        "conid": contract.conid,
        "order": intent_json(&order),
        "commission": amount(&answer, "amount", "commission"),
        "total": amount(&answer, "amount", "total"),
        "amount": amount(&answer, "amount", "amount"),
        "equity_change": amount(&answer, "equity", "change"),
        "initial_margin_change": amount(&answer, "initial", "change"),
        "maintenance_margin_change": amount(&answer, "maintenance", "change"),
        "warning": warnings.first(),
        "warnings": warnings,
        "error": answer.get("error").and_then(Value::as_str).map(bound),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_what_if_shape_is_read() {
        let answer = json!({
            "amount": {"amount": "1,892.60 USD (10 Shares)", "commission": "1 USD",
                       "total": "1,893.60 USD"},
            "equity": {"current": "100,000", "change": "-1", "after": "99,999"},
            "initial": {"current": "0", "change": "947", "after": "947"},
            "maintenance": {"current": "0", "change": "861", "after": "861"},
            "warn": "21/You are trying to submit an order without having market data",
            "warns": ["21/You are trying to submit an order without having market data",
                      "22/<h4>Market Order Confirmation</h4>"],
        });
        assert_eq!(
            amount(&answer, "amount", "amount"),
            json!({"amount": "1892.6", "currency": "USD", "shares": "10"})
        );
        assert_eq!(amount(&answer, "equity", "change")["amount"], "-1");
        assert_eq!(amount(&answer, "initial", "change")["amount"], "947");
        assert_eq!(warnings(&answer).len(), 2);
        // The cash shape: equity and initial null.
        let cash = json!({"amount": {"amount": "2 USD (0.0067 Shares)", "commission": "0.02 USD",
                                     "total": "2.02 USD"}, "equity": null, "initial": null});
        assert_eq!(amount(&cash, "amount", "amount")["shares"], "0.0067");
        assert_eq!(amount(&cash, "equity", "change"), Value::Null);
        assert!(warnings(&cash).is_empty());
    }
}
