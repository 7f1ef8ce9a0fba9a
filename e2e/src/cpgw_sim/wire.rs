//! How decimals go on the wire. CPGW mixes JSON numbers (quantities,
//! positions, bars) and strings (prices, snapshot fields, what-if amounts).

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Number, Value};

/// A JSON number. Goes through `f64`, whose shortest representation prints
/// any decimal of up to 15 significant digits exactly as written, so
/// `0.1234` stays `0.1234` on the wire.
pub(crate) fn num(value: Decimal) -> Value {
    value
        .normalize()
        .to_string()
        .parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// A price as CPGW prints it: at least two decimals, at most four.
pub(crate) fn price_str(value: Decimal) -> String {
    let value = value.round_dp(4).normalize();
    if value.scale() < 2 {
        format!("{value:.2}")
    } else {
        value.to_string()
    }
}

/// A quantity without trailing zeros (`5`, `0.1234`).
pub(crate) fn qty_str(value: Decimal) -> String {
    value.normalize().to_string()
}

/// Thousands separated by commas: `1234567` becomes `1,234,567`.
fn group_thousands(digits: &str) -> String {
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// What-if money as IBKR prints it: thousands separated, two decimals unless
/// the amount is whole, currency appended: `"1,977.60 USD"`, `"1 USD"`,
/// `"0.02 USD"` (IBKR's what-if example and the reference server's live
/// capture).
pub(crate) fn money(value: Decimal, currency: &str) -> String {
    let rounded = value.round_dp(2);
    let sign = if rounded.is_sign_negative() && !rounded.is_zero() {
        "-"
    } else {
        ""
    };
    let magnitude = rounded.abs();
    let text = if magnitude.fract().is_zero() {
        group_thousands(&magnitude.trunc().to_string())
    } else {
        let fixed = format!("{magnitude:.2}");
        let (whole, fraction) = fixed.split_once('.').unwrap_or((fixed.as_str(), "00"));
        format!("{}.{fraction}", group_thousands(whole))
    };
    format!("{sign}{text} {currency}")
}

/// What-if equity and margin figures: whole units, thousands separated, no
/// currency (`"215,415,594"`, `"-1"`), as in IBKR's what-if example.
pub(crate) fn whole_money(value: Decimal) -> String {
    let rounded =
        value.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    let sign = if rounded.is_sign_negative() && !rounded.is_zero() {
        "-"
    } else {
        ""
    };
    format!(
        "{sign}{}",
        group_thousands(&rounded.abs().trunc().to_string())
    )
}

/// Parses a decimal from text in plain or scientific notation.
pub(crate) fn parse_decimal(text: &str) -> Option<Decimal> {
    let text = text.trim();
    Decimal::from_str(text)
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok())
}

/// A decimal field of a JSON object, given as a number or a string.
/// `Ok(None)` when absent or null.
pub(crate) fn decimal_field(object: &Value, key: &str) -> Result<Option<Decimal>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => parse_decimal(&number.to_string())
            .map(Some)
            .ok_or_else(|| format!("{key} is not a valid number")),
        Some(Value::String(text)) => parse_decimal(text)
            .map(Some)
            .ok_or_else(|| format!("{key} is not a valid number")),
        Some(_) => Err(format!("{key} must be a number")),
    }
}

/// `time::OffsetDateTime` for epoch milliseconds (the epoch if out of range).
fn datetime(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// `20231211-18:00:49`, the trade-time format of `/iserver/account/trades`.
pub(crate) fn trade_time(ms: i64) -> String {
    let t = datetime(ms);
    format!(
        "{:04}{:02}{:02}-{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `231211180049` (YYMMDDhhmmss), the order-time format of order rows.
pub(crate) fn order_time(ms: i64) -> String {
    let t = datetime(ms);
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}",
        t.year().rem_euclid(100),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        parse_decimal(text).unwrap_or_default()
    }

    #[test]
    fn numbers_keep_their_digits() {
        assert_eq!(num(d("0.1234")).to_string(), "0.1234");
        assert_eq!(num(d("5")).to_string(), "5.0");
        assert_eq!(num(d("1892.6000")).to_string(), "1892.6");
    }

    #[test]
    fn money_groups_thousands_and_drops_zero_cents() {
        // Every value printed by IBKR's example or the live capture.
        assert_eq!(money(d("2.02"), "USD"), "2.02 USD");
        assert_eq!(money(d("2"), "USD"), "2 USD");
        assert_eq!(money(d("0.02"), "USD"), "0.02 USD");
        assert_eq!(money(d("1"), "USD"), "1 USD");
        assert_eq!(money(d("1977.6"), "USD"), "1,977.60 USD");
        assert_eq!(money(d("1978.60"), "USD"), "1,978.60 USD");
        assert_eq!(money(d("1234567.891"), "USD"), "1,234,567.89 USD");
        assert_eq!(money(d("-1"), "USD"), "-1 USD");
        assert_eq!(money(d("-0.001"), "USD"), "0 USD");
        assert_eq!(money(d("100"), "EUR"), "100 EUR");
    }

    #[test]
    fn whole_money_matches_the_whatif_example() {
        assert_eq!(whole_money(d("215415594.2")), "215,415,594");
        assert_eq!(whole_money(d("-1")), "-1");
        assert_eq!(whole_money(d("652")), "652");
        assert_eq!(whole_money(d("-0.4")), "0");
    }

    #[test]
    fn prices_have_two_to_four_decimals() {
        assert_eq!(price_str(d("189.2")), "189.20");
        assert_eq!(price_str(d("189")), "189.00");
        assert_eq!(price_str(d("189.123456")), "189.1235");
        assert_eq!(qty_str(d("10.000")), "10");
    }

    #[test]
    fn times_format_like_cpgw() {
        // 2023-12-11T18:00:49Z
        assert_eq!(trade_time(1_702_317_649_000), "20231211-18:00:49");
        assert_eq!(order_time(1_702_317_649_000), "231211180049");
    }

    #[test]
    fn decimal_fields_accept_numbers_and_strings() {
        let object = serde_json::json!({"a": 0.1234, "b": "12.5", "c": null, "d": true, "e": 1e-7});
        assert_eq!(decimal_field(&object, "a"), Ok(Some(d("0.1234"))));
        assert_eq!(decimal_field(&object, "b"), Ok(Some(d("12.5"))));
        assert_eq!(decimal_field(&object, "c"), Ok(None));
        assert_eq!(decimal_field(&object, "x"), Ok(None));
        assert!(decimal_field(&object, "d").is_err());
        assert_eq!(decimal_field(&object, "e"), Ok(Some(d("0.0000001"))));
    }
}
