//! The sanitizer runs on hostile input before anything else looks at it, so its work must stay
//! linear: inputs built to make each decoder or shape check do the most work per byte must be
//! inspected about as fast as ordinary ones. A quadratic step would take minutes on these
//! 64 KiB inputs; the bound below leaves a debug build on a slow machine a wide margin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use shared_safety::sanitize::{
    MAX_KEY_BYTES, MAX_RESPONSE_VALUE_BYTES, MAX_VALUE_BYTES, MaterialKind, check_request,
    sanitize_response, sensitive_key, sensitive_value,
};

/// A debug build inspects a 64 KiB value in tens of milliseconds; a release build in a few.
const LIMIT: Duration = Duration::from_secs(2);

/// `unit` repeated to fill `bytes` (never more).
fn filled(unit: &str, bytes: usize) -> String {
    unit.repeat(bytes / unit.len())
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Inputs that each push one part of the sanitizer: decoders (percent layers, base64 at every
/// alignment and depth, NFKC expansion), and shape checks (JWT header candidates, credential
/// scans, name=value pairs, path tokens).
fn hostile_values(n: usize) -> Vec<(&'static str, String)> {
    // Base64 of base64 of base64 of text that is itself long base64 runs: every layer decodes
    // to more text to decode.
    let mut nested = filled("QUJD", n / 3);
    for _ in 0..3 {
        nested = b64(&nested);
    }
    nested.truncate(n);
    let mut wrapped_binary = b64(&"\u{0}a".repeat(n));
    wrapped_binary.truncate(n);
    vec![
        ("one letter", filled("A", n)),
        ("escaped percent signs", filled("%25", n)),
        ("escaped letters", filled("%41", n)),
        ("nested escapes", filled("%2525252541", n)),
        ("JWT header starts", filled("ey", n)),
        ("JWT-like segments", filled("eyJ.", n)),
        ("JWT headers in dotted runs", filled("eyJhbGciOiJI.", n)),
        ("schemes with plus", filled("bearer+", n)),
        ("schemes with spaces", filled("bearer ", n)),
        ("basic credentials", filled("basic dXNlcjpwYXNz ", n)),
        ("assignments", filled("a=", n)),
        ("sensitive assignments", filled("x_token=", n)),
        ("colons", filled("a:", n)),
        ("home paths", filled("~/", n)),
        ("NFKC expansion", filled("\u{FDFA}", n)),
        ("zero-width spaces", filled("\u{200B}", n)),
        ("full-width JWT starts", filled("ｅｙＪ", n)),
        ("base64 of text", filled("YWJj", n)),
        ("nested base64", nested),
        ("binary in base64", wrapped_binary),
        (
            "long bearer credential",
            format!("Bearer {}", "x".repeat(n - 7)),
        ),
    ]
}

/// Inspects each hostile value of `n` bytes with `inspect`; returns the ones slower than `limit`.
fn slow_ones(n: usize, limit: Duration, inspect: impl Fn(&str) -> bool) -> Vec<String> {
    let mut slow = Vec::new();
    for (name, value) in hostile_values(n) {
        assert!(value.len() <= n, "{name}: {} bytes", value.len());
        let started = Instant::now();
        let flagged = inspect(&value);
        let elapsed = started.elapsed();
        println!(
            "{name:30} {:>8} bytes {elapsed:>12?} flagged: {flagged}",
            value.len()
        );
        if elapsed > limit {
            slow.push(format!("{name}: {elapsed:?}"));
        }
    }
    slow
}

#[test]
fn hostile_values_are_inspected_in_bounded_time() {
    let slow = slow_ones(MAX_VALUE_BYTES, LIMIT, |value| {
        sensitive_value(value).is_some()
    });
    assert!(slow.is_empty(), "{slow:#?}");
}

/// Response strings are read up to a whole relay frame (16 times a request value), from the
/// sidecar's own results and, on the gateway, from the paired sidecar: the same inputs at that
/// size stay within 16 times the bound.
#[test]
fn hostile_response_strings_are_scrubbed_in_bounded_time() {
    let slow = slow_ones(MAX_RESPONSE_VALUE_BYTES, LIMIT * 16, |value| {
        sanitize_response(&json!(value)) != json!(value)
    });
    assert!(slow.is_empty(), "{slow:#?}");
}

#[test]
fn hostile_keys_are_inspected_in_bounded_time() {
    for unit in ["%25", "\u{FDFA}", "c\u{200B}", "ey", "a_"] {
        let key = filled(unit, MAX_KEY_BYTES);
        let started = Instant::now();
        sensitive_key(&key);
        check_request(&json!({ key.clone(): 1 })).ok();
        assert!(
            started.elapsed() < LIMIT,
            "{unit:?}: {:?}",
            started.elapsed()
        );
    }
}

/// A value past the bound is refused at once, without being read.
#[test]
fn values_past_the_bound_are_refused_without_inspection() {
    let huge = filled("%25", 64 * MAX_VALUE_BYTES);
    let started = Instant::now();
    assert_eq!(sensitive_value(&huge), Some(MaterialKind::Uninspectable));
    assert!(started.elapsed() < Duration::from_millis(100));
}

/// A large but ordinary response (a long bar history) is scrubbed quickly and left whole.
#[test]
fn a_large_ordinary_response_is_scrubbed_in_bounded_time() {
    let bars: Vec<Value> = (0..5_000)
        .map(|i| {
            json!({
                "t": format!("2026-11-{:02}T14:{:02}:00Z", 1 + i % 28, i % 60),
                "o": format!("{}.{:02}", 180 + i % 20, i % 100),
                "c": format!("{}.{:02}", 181 + i % 20, (i * 7) % 100),
                "v": i * 100,
            })
        })
        .collect();
    let response = json!({ "symbol": "AAPL", "conid": 265598, "bars": bars });
    let started = Instant::now();
    let clean = sanitize_response(&response);
    let elapsed = started.elapsed();
    println!("5,000 bars scrubbed in {elapsed:?}");
    assert_eq!(clean, response);
    assert!(elapsed < LIMIT, "{elapsed:?}");
}
