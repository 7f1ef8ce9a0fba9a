//! Exact decimal money and quantities. Nothing here ever goes through `f64` arithmetic.
//!
//! - Tool arguments: [`parse_decimal_arg`] / [`parse_positive`] accept a JSON string (`"12.50"`)
//!   or a JSON number, which is read from its shortest decimal text (`0.1` is exactly `0.1`), and
//!   refuse anything with more than [`MAX_DECIMAL_PLACES`] decimal places or more than
//!   [`MAX_INTEGER_DIGITS`] integer digits.
//! - CPGW strings: [`parse_broker_amount`] (`"1,234.50 USD"`) and [`parse_broker_price`]
//!   (`"C189.25"`: previous close, `"H189.25"`: halted).
//! - Output: [`to_decimal_string`] prints a normalized decimal (`"12.5"`), never an exponent.
//!
//! Errors ([`MoneyError`]) name the field and give a reason; they never echo the input.

pub use rust_decimal::Decimal;

use crate::ErrorCode;

/// At most this many decimal places are accepted in an argument (IBKR fractional shares use 4,
/// prices up to 8 for some sub-penny instruments).
pub const MAX_DECIMAL_PLACES: u32 = 8;

/// At most this many digits before the decimal point (keeps every accepted value exactly
/// representable with [`MAX_DECIMAL_PLACES`] places inside `Decimal`'s 28 digits).
pub const MAX_INTEGER_DIGITS: usize = 20;

/// Longest argument text looked at; longer input is refused without being parsed.
pub const MAX_TEXT_LEN: usize = 64;

/// A refused money or quantity argument: which field and why (never the input itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoneyError {
    /// The argument name, e.g. `"cash_amount"`.
    pub field: String,
    /// Why, for a person, e.g. `"must be greater than zero"`.
    pub reason: String,
}

impl MoneyError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        MoneyError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The catalog code for a bad money argument in an order: [`ErrorCode::OrderInvalid`].
    pub fn code(&self) -> ErrorCode {
        ErrorCode::OrderInvalid
    }

    /// The detail text for [`ErrorCode::body`]: "`field`: reason."
    pub fn detail(&self) -> String {
        format!("{}: {}.", self.field, self.reason)
    }
}

impl std::fmt::Display for MoneyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for MoneyError {}

/// Parses a decimal argument given as a JSON string (`"12.50"`) or a JSON number (read from its
/// shortest text, so `0.1` is exactly `0.1`). Accepts an optional leading `-`, digits with an
/// optional fraction, and an optional exponent (`1.5e3`). Refuses empty text, `NaN`/`inf`-like
/// words, whitespace, `+`, leading `.`, exponents beyond +-28, more than [`MAX_DECIMAL_PLACES`]
/// decimal places (after dropping trailing zeros) and more than [`MAX_INTEGER_DIGITS`] integer
/// digits. Zero and negative values are accepted here; see [`parse_positive`].
pub fn parse_decimal_arg(value: &serde_json::Value) -> Result<Decimal, MoneyError> {
    parse_decimal_field(value, "value")
}

/// Like [`parse_decimal_arg`] but the value must be greater than zero; errors name `field`.
pub fn parse_positive(value: &serde_json::Value, field: &str) -> Result<Decimal, MoneyError> {
    let parsed = parse_decimal_field(value, field)?;
    if parsed <= Decimal::ZERO {
        return Err(MoneyError::new(field, "must be greater than zero"));
    }
    Ok(parsed)
}

fn parse_decimal_field(value: &serde_json::Value, field: &str) -> Result<Decimal, MoneyError> {
    match value {
        serde_json::Value::String(text) => parse_decimal_text(text, field),
        serde_json::Value::Number(number) => parse_decimal_text(&number.to_string(), field),
        _ => Err(MoneyError::new(
            field,
            "must be a decimal number or a decimal string",
        )),
    }
}

/// Parses decimal text with the rules of [`parse_decimal_arg`].
pub fn parse_decimal_text(text: &str, field: &str) -> Result<Decimal, MoneyError> {
    if text.is_empty() {
        return Err(MoneyError::new(field, "must not be empty"));
    }
    if text.len() > MAX_TEXT_LEN {
        return Err(MoneyError::new(field, "is too long to be an amount"));
    }
    let not_a_number = || MoneyError::new(field, "is not a decimal number");
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent_text) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((int_part, frac_part)) => {
            if frac_part.is_empty() {
                return Err(not_a_number());
            }
            (int_part, frac_part)
        }
        None => (mantissa, ""),
    };
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(not_a_number());
    }
    let exponent: i64 = match exponent_text {
        None => 0,
        Some(exp) => {
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(not_a_number());
            }
            let magnitude: i64 = digits.parse().map_err(|_| not_a_number())?;
            if magnitude > 28 {
                return Err(MoneyError::new(field, "has an exponent beyond 28 digits"));
            }
            if exp.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
    };
    // All significant digits, and where the decimal point sits within them.
    let digits: String = format!("{int_part}{frac_part}");
    let point = int_part.len() as i64 + exponent;
    let digits_len = digits.len() as i64;
    // Shift into a plain integer part and fraction part.
    let (int_digits, frac_digits): (String, String) = if point <= 0 {
        (
            "0".to_string(),
            format!("{}{}", "0".repeat(point.unsigned_abs() as usize), digits),
        )
    } else if point >= digits_len {
        (
            format!("{}{}", digits, "0".repeat((point - digits_len) as usize)),
            String::new(),
        )
    } else {
        let split = point as usize;
        (digits[..split].to_string(), digits[split..].to_string())
    };
    let int_digits = int_digits.trim_start_matches('0');
    let frac_digits = frac_digits.trim_end_matches('0');
    if frac_digits.len() > MAX_DECIMAL_PLACES as usize {
        return Err(MoneyError::new(
            field,
            format!("has more than {MAX_DECIMAL_PLACES} decimal places"),
        ));
    }
    if int_digits.len() > MAX_INTEGER_DIGITS {
        return Err(MoneyError::new(field, "is too large"));
    }
    let plain = format!(
        "{}{}{}{}",
        if negative { "-" } else { "" },
        if int_digits.is_empty() {
            "0"
        } else {
            int_digits
        },
        if frac_digits.is_empty() { "" } else { "." },
        frac_digits
    );
    let parsed = Decimal::from_str_exact(&plain).map_err(|_| not_a_number())?;
    Ok(parsed.normalize())
}

/// A normalized decimal string without exponent: `12.50` -> `"12.5"`, `-0` -> `"0"`.
pub fn to_decimal_string(d: Decimal) -> String {
    d.normalize().to_string()
}

/// Parses a CPGW amount such as `"2.02 USD"`, `"1,234.50 USD"`, `"-3.5 USD"` or `"2.02"`.
/// Returns the amount and the currency (uppercase letters, 1 to 5 of them) if one is given.
/// Thousands separators are only accepted in groups of three in the integer part.
pub fn parse_broker_amount(text: &str) -> Option<(Decimal, Option<String>)> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_TEXT_LEN {
        return None;
    }
    let mut parts = text.split_whitespace();
    let number = parts.next()?;
    let currency = match parts.next() {
        None => None,
        Some(code) => {
            if code.is_empty() || code.len() > 5 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                return None;
            }
            Some(code.to_ascii_uppercase())
        }
    };
    if parts.next().is_some() {
        return None;
    }
    Some((parse_broker_number(number)?, currency))
}

/// An amount of a CPGW what-if answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhatIfAmount {
    pub amount: Decimal,
    pub currency: Option<String>,
    /// The quantity the amount buys, when IBKR says (`"(0.0067 Shares)"`).
    pub shares: Option<Decimal>,
}

/// Parses an amount of a CPGW what-if answer in the shapes IBKR's live answers use:
/// `"1,892.60 USD (10 Shares)"`, `"2 USD (0.0067 Shares)"`, `"1 USD"`, `"2.02 USD"`, and the
/// bare whole numbers of the margin sections (`"100,000"`, `"-1"`).
pub fn parse_whatif_amount(text: &str) -> Option<WhatIfAmount> {
    let text = text.trim();
    if text.len() > MAX_TEXT_LEN {
        return None;
    }
    let (head, shares) = match text.split_once('(') {
        Some((head, tail)) => {
            let inner = tail.strip_suffix(')')?.trim();
            let mut words = inner.split_whitespace();
            let quantity = parse_broker_number(words.next()?)?;
            let unit = words.next()?;
            if words.next().is_some() || !unit.eq_ignore_ascii_case("shares") {
                return None;
            }
            (head.trim(), Some(quantity))
        }
        None => (text, None),
    };
    let (amount, currency) = parse_broker_amount(head)?;
    Some(WhatIfAmount {
        amount,
        currency,
        shares,
    })
}

/// Where a CPGW last price came from, as told by its prefix letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PricePrefix {
    /// No prefix: a live price.
    Live,
    /// `C`: the previous close (no trade yet today).
    PreviousClose,
    /// `H`: trading in the symbol is halted.
    Halted,
}

/// Parses a CPGW price field (`"189.25"`, `"C189.25"`, `"H189.25"`, `"1,189.25"`). Returns `None`
/// for anything else, including zero and negative prices (not a usable stock price).
pub fn parse_broker_price(text: &str) -> Option<(Decimal, PricePrefix)> {
    let text = text.trim();
    let (prefix, rest) = match text.as_bytes().first()? {
        b'C' | b'c' => (PricePrefix::PreviousClose, &text[1..]),
        b'H' | b'h' => (PricePrefix::Halted, &text[1..]),
        _ => (PricePrefix::Live, text),
    };
    let price = parse_broker_number(rest)?;
    if price <= Decimal::ZERO {
        return None;
    }
    Some((price, prefix))
}

/// A plain decimal with optional sign and `,` thousands separators (groups of three).
fn parse_broker_number(text: &str) -> Option<Decimal> {
    if text.is_empty() || text.len() > MAX_TEXT_LEN {
        return None;
    }
    let (sign, unsigned) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text),
    };
    let (int_part, frac_part) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let int_plain = if int_part.contains(',') {
        let groups: Vec<&str> = int_part.split(',').collect();
        let first_ok = groups.first().is_some_and(|g| (1..=3).contains(&g.len()));
        let rest_ok = groups.iter().skip(1).all(|g| g.len() == 3);
        if !first_ok || !rest_ok {
            return None;
        }
        groups.concat()
    } else {
        int_part.to_string()
    };
    if int_plain.is_empty() || !int_plain.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let plain = match frac_part {
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{sign}{int_plain}.{f}")
        }
        Some(_) => return None,
        None => format!("{sign}{int_plain}"),
    };
    Decimal::from_str_exact(&plain).ok().map(|d| d.normalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn whatif_amounts_in_the_live_shapes() {
        let parsed = parse_whatif_amount("1,892.60 USD (10 Shares)").unwrap();
        assert_eq!(
            (parsed.amount, parsed.currency.as_deref(), parsed.shares),
            (dec("1892.6"), Some("USD"), Some(dec("10")))
        );
        let cash = parse_whatif_amount("2 USD (0.0067 Shares)").unwrap();
        assert_eq!((cash.amount, cash.shares), (dec("2"), Some(dec("0.0067"))));
        assert_eq!(parse_whatif_amount("1 USD").unwrap().amount, dec("1"));
        assert_eq!(
            parse_whatif_amount("100,000").unwrap().amount,
            dec("100000")
        );
        assert_eq!(parse_whatif_amount("-1").unwrap().amount, dec("-1"));
        for bad in [
            "",
            "USD",
            "2 USD (0.0067)",
            "2 USD (x Shares)",
            "2 USD (1 Shares",
            "1,00 USD",
        ] {
            assert_eq!(parse_whatif_amount(bad), None, "{bad}");
        }
    }

    #[test]
    fn strings_and_numbers_parse_exactly() {
        assert_eq!(parse_decimal_arg(&json!("12.50")).unwrap(), dec("12.5"));
        assert_eq!(parse_decimal_arg(&json!(0.1)).unwrap(), dec("0.1"));
        assert_eq!(parse_decimal_arg(&json!(0.3)).unwrap(), dec("0.3"));
        assert_eq!(parse_decimal_arg(&json!(50)).unwrap(), dec("50"));
        assert_eq!(parse_decimal_arg(&json!(1e3)).unwrap(), dec("1000"));
        assert_eq!(
            parse_decimal_arg(&json!(1.5e-7)).unwrap(),
            dec("0.00000015")
        );
        assert_eq!(parse_decimal_arg(&json!("1.5E2")).unwrap(), dec("150"));
        assert_eq!(parse_decimal_arg(&json!("-3.25")).unwrap(), dec("-3.25"));
        assert_eq!(parse_decimal_arg(&json!("0")).unwrap(), Decimal::ZERO);
        assert_eq!(
            parse_decimal_arg(&json!("0.10000000000")).unwrap(),
            dec("0.1")
        );
        assert_eq!(
            parse_decimal_arg(&json!("99999999999999999999.12345678")).unwrap(),
            dec("99999999999999999999.12345678")
        );
    }

    #[test]
    fn bad_text_is_refused() {
        for bad in [
            "", " 1", "1 ", "+1", ".5", "5.", "1..2", "NaN", "nan", "inf", "Infinity", "0x10",
            "1e", "1e+", "1e29", "1e-29", "1e1000", "--1", "1,000", "١٢",
        ] {
            assert!(parse_decimal_arg(&json!(bad)).is_err(), "{bad:?} accepted");
        }
        assert!(parse_decimal_arg(&json!(null)).is_err());
        assert!(parse_decimal_arg(&json!(true)).is_err());
        assert!(parse_decimal_arg(&json!([1])).is_err());
        assert!(parse_decimal_arg(&json!({"a": 1})).is_err());
    }

    #[test]
    fn limits_on_places_and_size() {
        let err = parse_decimal_arg(&json!("0.123456789")).unwrap_err();
        assert!(err.reason.contains("decimal places"));
        assert!(parse_decimal_arg(&json!("0.12345678")).is_ok());
        assert!(parse_decimal_arg(&json!(1e-9)).is_err());
        assert!(parse_decimal_arg(&json!("123456789012345678901")).is_err());
        assert!(parse_decimal_arg(&json!(1e25)).is_err());
        assert!(parse_decimal_arg(&json!(u64::MAX)).is_ok());
        let huge = "9".repeat(10_000);
        let err = parse_decimal_arg(&json!(huge)).unwrap_err();
        assert!(!err.to_string().contains("99999"), "echoed input");
    }

    #[test]
    fn positive_names_the_field() {
        assert_eq!(parse_positive(&json!("2"), "quantity").unwrap(), dec("2"));
        let err = parse_positive(&json!("0"), "quantity").unwrap_err();
        assert_eq!(err.field, "quantity");
        assert_eq!(err.code(), ErrorCode::OrderInvalid);
        assert!(parse_positive(&json!(-1), "cash_amount").is_err());
        assert!(parse_positive(&json!("-0"), "cash_amount").is_err());
        let err = parse_positive(&json!("abc"), "limit_price").unwrap_err();
        assert_eq!(err.detail(), "limit_price: is not a decimal number.");
    }

    #[test]
    fn decimal_strings_are_normalized() {
        assert_eq!(to_decimal_string(dec("12.50")), "12.5");
        assert_eq!(to_decimal_string(dec("0.1234")), "0.1234");
        assert_eq!(to_decimal_string(dec("100")), "100");
        assert_eq!(to_decimal_string(dec("1E+3")), "1000");
        assert_eq!(to_decimal_string(dec("-0.0")), "0");
        assert_eq!(to_decimal_string(dec("0.00000001")), "0.00000001");
    }

    #[test]
    fn broker_amounts() {
        assert_eq!(
            parse_broker_amount("2.02 USD"),
            Some((dec("2.02"), Some("USD".into())))
        );
        assert_eq!(
            parse_broker_amount("1,234.50 USD"),
            Some((dec("1234.5"), Some("USD".into())))
        );
        assert_eq!(
            parse_broker_amount("1,234,567 usd"),
            Some((dec("1234567"), Some("USD".into())))
        );
        assert_eq!(parse_broker_amount("-3.5"), Some((dec("-3.5"), None)));
        assert_eq!(
            parse_broker_amount(" 0 USD "),
            Some((Decimal::ZERO, Some("USD".into())))
        );
        for bad in [
            "",
            "USD",
            "1,23 USD",
            "12,3456",
            "2.02 USD extra",
            "2.02 US1",
            "1.",
            "abc",
        ] {
            assert_eq!(parse_broker_amount(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn broker_prices() {
        assert_eq!(
            parse_broker_price("189.25"),
            Some((dec("189.25"), PricePrefix::Live))
        );
        assert_eq!(
            parse_broker_price("C189.25"),
            Some((dec("189.25"), PricePrefix::PreviousClose))
        );
        assert_eq!(
            parse_broker_price("H189.25"),
            Some((dec("189.25"), PricePrefix::Halted))
        );
        assert_eq!(
            parse_broker_price("1,189.5"),
            Some((dec("1189.5"), PricePrefix::Live))
        );
        for bad in [
            "", "C", "H", "X189", "0", "-1.5", "C-1", "1e3", "189.25.1", "CC1",
        ] {
            assert_eq!(parse_broker_price(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn decimal_strings_round_trip(mantissa in -10_000_000_000_000i64..10_000_000_000_000i64, scale in 0u32..=8) {
            let d = Decimal::new(mantissa, scale);
            let text = to_decimal_string(d);
            prop_assert!(!text.contains('e') && !text.contains('E'));
            prop_assert_eq!(parse_decimal_arg(&serde_json::Value::String(text)).unwrap(), d);
        }

        #[test]
        fn json_numbers_parse_from_their_shortest_text(cents in 0u64..10_000_000_000u64) {
            let exact = Decimal::new(cents as i64, 2);
            let as_float: f64 = format!("{exact}").parse().unwrap();
            prop_assert_eq!(parse_decimal_arg(&json!(as_float)).unwrap(), exact);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
            let _ = parse_decimal_arg(&serde_json::Value::String(text.clone()));
            let _ = parse_broker_amount(&text);
            let _ = parse_broker_price(&text);
        }
    }
}
