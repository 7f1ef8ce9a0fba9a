//! One test per class of sanitizer bypass found in review: each table holds forms that passed
//! before the fix, checked both as a request (refused with the right kind, at the right path,
//! without echoing the material) and as a response (removed or redacted).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::{Value, json};
use shared_safety::sanitize::{MaterialKind, check_request, sanitize_response};

/// Plants `value` under an ordinary argument name and checks that the request is refused as
/// `kind` at `/symbol`, that the refusal does not carry the value, and that a response
/// carrying it has it redacted.
fn assert_value_caught(value: &str, kind: MaterialKind) {
    let refusal = check_request(&json!({"symbol": value, "quantity": "1"}))
        .expect_err(&format!("{value:?} must be refused"));
    assert_eq!(refusal.kind, kind, "{value:?}");
    assert_eq!(refusal.path, "/symbol", "{value:?}");
    assert_not_echoed(&refusal.to_string(), value);
    let clean = sanitize_response(&json!({"note": value, "price": "12.50"}));
    assert_eq!(
        clean,
        json!({"note": "[redacted]", "price": "12.50"}),
        "{value:?}"
    );
}

/// Plants `key` as an argument name and checks that the request is refused as `kind`, that the
/// path does not show the key unless it is plain ASCII, and that a response loses the key.
fn assert_key_caught(key: &str, kind: MaterialKind) {
    let mut payload = serde_json::Map::new();
    payload.insert(key.to_string(), Value::String("AAPL".into()));
    let refusal = check_request(&Value::Object(payload.clone()))
        .expect_err(&format!("key {key:?} must be refused"));
    assert_eq!(refusal.kind, kind, "{key:?}");
    if !key.is_ascii() {
        assert_eq!(refusal.path, "/<redacted>", "{key:?}");
        assert_not_echoed(&refusal.to_string(), key);
    }
    payload.insert("symbol".into(), Value::String("AAPL".into()));
    assert_eq!(
        sanitize_response(&Value::Object(payload)),
        json!({"symbol": "AAPL"}),
        "{key:?}"
    );
}

/// The refusal must not carry the material, nor any long piece of it.
fn assert_not_echoed(message: &str, material: &str) {
    assert!(
        !message.contains(material),
        "{message:?} echoes {material:?}"
    );
    let chars: Vec<char> = material.chars().collect();
    for window in chars.windows(12) {
        let piece: String = window.iter().collect();
        assert!(!message.contains(&piece), "{message:?} echoes {piece:?}");
    }
}

#[test]
fn fullwidth_and_compatibility_keys_are_classified() {
    for (key, kind) in [
        ("ｃｏｏｋｉｅ", MaterialKind::Cookie),
        ("ＡＵＴＨＯＲＩＺＡＴＩＯＮ", MaterialKind::Authorization),
        ("ｓｅｔ－ｃｏｏｋｉｅ", MaterialKind::Cookie),
        ("ａｃｃｅｓｓ＿ｔｏｋｅｎ", MaterialKind::Token),
        ("ⓟⓐⓢⓢⓦⓞⓡⓓ", MaterialKind::Credential),
        ("𝐜𝐥𝐢𝐞𝐧𝐭_𝐬𝐞𝐜𝐫𝐞𝐭", MaterialKind::Secret), // mathematical bold
        ("ＪＳＥＳＳＩＯＮＩＤ", MaterialKind::Token),
        ("ＡｐｉＫｅｙ", MaterialKind::Secret),
    ] {
        assert_key_caught(key, kind);
    }
}

#[test]
fn keys_with_invisible_characters_or_split_words_are_classified() {
    for (key, kind) in [
        ("coo\u{200B}kie", MaterialKind::Cookie),
        ("Author\u{2060}ization", MaterialKind::Authorization),
        ("to\u{00AD}ken", MaterialKind::Token),
        ("pass\u{200D}word", MaterialKind::Credential),
        ("api\u{FEFF}Key", MaterialKind::Secret),
        ("c\u{0301}ookie", MaterialKind::Cookie),
        ("sec\u{E0020}ret", MaterialKind::Secret),
        ("c-o-o-k-i-e", MaterialKind::Cookie),
        ("pass.word", MaterialKind::Credential),
        ("to_ken", MaterialKind::Token),
    ] {
        assert_key_caught(key, kind);
    }
}

#[test]
fn fullwidth_and_invisible_values_are_classified() {
    for (value, kind) in [
        ("Ｂｅａｒｅｒ abc.def", MaterialKind::Authorization),
        ("Bear\u{200B}er abc.def", MaterialKind::Authorization),
        ("ＪＳＥＳＳＩＯＮＩＤ＝0123abcd", MaterialKind::Cookie),
        ("Ｃｏｏｋｉｅ： x=y", MaterialKind::Cookie),
        (
            "eyJ\u{200B}hbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            MaterialKind::Token,
        ),
        ("／ｈｏｍｅ／u／.ssh／id_rsa", MaterialKind::LocalPath),
        ("\u{FB01}le:///etc/passwd", MaterialKind::LocalPath),
        (
            "－－－－－BEGIN PRIVATE KEY－－－－－",
            MaterialKind::Secret,
        ),
    ] {
        assert_value_caught(value, kind);
    }
}
