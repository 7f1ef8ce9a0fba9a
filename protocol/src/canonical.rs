//! Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and the payload hash.
//!
//! The gateway canonicalizes the sanitized tool arguments, hashes them, and sends both; the
//! sidecar recomputes the hash over the bytes it received and refuses on mismatch. A hash over
//! a canonical form means two encoders that differ only in key order or whitespace agree.
//!
//! Numbers follow RFC 8785 section 3.2.2.3 (ECMAScript `Number.prototype.toString`). Numbers
//! beyond 2^53 in magnitude, integer or not, are refused rather than silently rounded: there an
//! IEEE double no longer holds every integer, so `66666666666226666.5` would come out as the
//! integer `66666666666226664`, which would in turn be refused, and canonicalization would not
//! be idempotent. Quantities and money travel as decimal strings anyway.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Largest integer an IEEE double represents exactly (2^53).
const MAX_SAFE_INTEGER: u64 = 1 << 53;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("number {0} cannot be represented exactly in canonical JSON")]
    UnrepresentableNumber(String),
    #[error("payload is not valid JSON")]
    NotJson,
}

/// Canonical bytes of a JSON value.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out.into_bytes())
}

/// Parses JSON text and returns its canonical bytes.
pub fn canonicalize_str(text: &str) -> Result<Vec<u8>, CanonicalError> {
    let value: Value = serde_json::from_str(text).map_err(|_| CanonicalError::NotJson)?;
    canonicalize(&value)
}

/// SHA-256 over a domain label, the tool name (length-prefixed) and the canonical payload.
/// Binding the tool name means a payload hash for one tool can never vouch for another.
pub fn payload_hash(tool_name: &str, canonical_payload: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"ibkr-relay/v1 payload-hash\0");
    hasher.update((tool_name.len() as u32).to_be_bytes());
    hasher.update(tool_name.as_bytes());
    hasher.update(canonical_payload);
    hasher.finalize().into()
}

fn write_value(value: &Value, out: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => write_number(number, out)?,
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // RFC 8785 orders members by the UTF-16 code units of their names.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(number: &serde_json::Number, out: &mut String) -> Result<(), CanonicalError> {
    if let Some(unsigned) = number.as_u64() {
        if unsigned > MAX_SAFE_INTEGER {
            return Err(CanonicalError::UnrepresentableNumber(number.to_string()));
        }
        let _ = write!(out, "{unsigned}");
        return Ok(());
    }
    if let Some(signed) = number.as_i64() {
        if signed.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(CanonicalError::UnrepresentableNumber(number.to_string()));
        }
        let _ = write!(out, "{signed}");
        return Ok(());
    }
    match number.as_f64() {
        // Strictly below 2^53: a double equal to 2^53 may be a rounded 2^53 + 1.
        Some(float) if float.is_finite() && float.abs() < MAX_SAFE_INTEGER as f64 => {
            out.push_str(&ecmascript_number(float));
            Ok(())
        }
        _ => Err(CanonicalError::UnrepresentableNumber(number.to_string())),
    }
}

/// ECMAScript `Number.prototype.toString` for a finite double.
fn ecmascript_number(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    // Rust's `{:e}` prints the shortest digits that round-trip, as `d.ddddde<exp>`.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let exponent: i32 = exponent.parse().unwrap_or(0);
    // value = 0.digits * 10^n, in the notation of ECMA-262 section 6.1.6.1.20.
    let k = digits.len() as i32;
    let n = exponent + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (whole, fraction) = digits.split_at(n as usize);
        format!("{whole}.{fraction}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let exponent_sign = if n > 0 { "+" } else { "-" };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{exponent_sign}{}", (n - 1).abs())
        } else {
            format!("{first}.{rest}e{exponent_sign}{}", (n - 1).abs())
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc8785_number_vectors() {
        // From RFC 8785 appendix B (IEEE-754 values and their canonical text).
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (f64::from_bits(0x0000000000000001), "5e-324"),
            (
                f64::from_bits(0x7fefffffffffffff),
                "1.7976931348623157e+308",
            ),
            (f64::from_bits(0x4340000000000000), "9007199254740992"),
            (f64::from_bits(0x444b1ae4d6e2ef50), "1e+21"),
            (f64::from_bits(0x444b1ae4d6e2ef4f), "999999999999999900000"),
            (f64::from_bits(0x3eb0c6f7a0b5ed8d), "0.000001"),
            (f64::from_bits(0x3eb0c6f7a0b5ed8c), "9.999999999999997e-7"),
            (f64::from_bits(0x41b3de4355555555), "333333333.3333333"),
            (f64::from_bits(0xc3e0000000000000), "-9223372036854776000"),
            (f64::from_bits(0x44b52d02c7e14af6), "1e+23"),
            (f64::from_bits(0x3ff0000000000000), "1"),
            (-1.5, "-1.5"),
        ];
        for (value, expected) in cases {
            assert_eq!(
                ecmascript_number(*value),
                *expected,
                "bits {:x}",
                value.to_bits()
            );
        }
    }

    #[test]
    fn rfc8785_sorting_and_escaping_vector() {
        // RFC 8785 section 3.2.3 sorting example (keys compared as UTF-16 code units).
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let canonical = String::from_utf8(canonicalize_str(input).unwrap()).unwrap();
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canonical, expected);
    }

    #[test]
    fn whitespace_and_order_do_not_change_the_hash() {
        let a = canonicalize_str(r#"{ "symbol" : "AAPL", "b": [1, 2, {"y":1,"x":2}] }"#).unwrap();
        let b = canonicalize_str(r#"{"b":[1,2,{"x":2,"y":1}],"symbol":"AAPL"}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, br#"{"b":[1,2,{"x":2,"y":1}],"symbol":"AAPL"}"#.to_vec());
        assert_eq!(
            payload_hash("ibkr_quote", &a),
            payload_hash("ibkr_quote", &b)
        );
        assert_ne!(
            payload_hash("ibkr_quote", &a),
            payload_hash("ibkr_quotes", &a)
        );
    }

    #[test]
    fn payload_hash_vector() {
        let canonical = canonicalize_str("{}").unwrap();
        assert_eq!(
            hex::encode(payload_hash("ibkr_accounts_list", &canonical)),
            include_str!("../vectors/payload_hash_accounts_list_empty.hex").trim()
        );
    }

    #[test]
    fn unsafe_integers_are_refused() {
        assert!(canonicalize_str("12345678901234567890").is_err());
        assert!(canonicalize_str("-9007199254740993").is_err());
        assert!(canonicalize_str("9007199254740992").is_ok());
    }

    /// Found by the `canonical_json` fuzz target: a fraction beyond 2^53 used to be rounded to
    /// an integer that a second pass refused.
    #[test]
    fn unsafe_fractions_are_refused_so_canonicalization_is_idempotent() {
        assert!(canonicalize_str("66666666666226666.66666").is_err());
        assert!(canonicalize_str("-1e300").is_err());
        // Both round to 2^53, which the integer literal 9007199254740993 is refused for.
        assert!(canonicalize_str("9007199254740993.0").is_err());
        assert!(canonicalize_str("9.007199254740993e15").is_err());
        for text in ["9007199254740990.5", "0.1", "-2.5e-7", "1e15", "5.0"] {
            let once = canonicalize_str(text).unwrap();
            let twice = canonicalize_str(std::str::from_utf8(&once).unwrap()).unwrap();
            assert_eq!(once, twice, "{text}");
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1_000_000i64..1_000_000).prop_map(Value::from),
            (-1.0e6f64..1.0e6).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_form_is_a_fixed_point(value in arbitrary_json()) {
            let once = canonicalize(&value).unwrap();
            // Re-reading the canonical text and canonicalizing again changes nothing. (Value
            // equality is not asserted: canonical JSON writes 3.0 as 3, read back as an integer.)
            let reparsed: Value = serde_json::from_slice(&once).unwrap();
            prop_assert_eq!(canonicalize(&reparsed).unwrap(), once);
        }
    }
}
