//! One test per class of sanitizer bypass found in review: each table holds forms that passed
//! before the fix, checked both as a request (refused with the right kind, at the right path,
//! without echoing the material) and as a response (removed or redacted).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::{Value, json};
use shared_safety::sanitize::{MaterialKind, SensitiveMaterial, check_request, sanitize_response};

/// Plants `value` under an ordinary argument name and checks that the request is refused as
/// `kind` at `/symbol`, that the refusal does not carry the value, and that a response
/// carrying it has it redacted.
fn assert_value_caught(value: &str, kind: MaterialKind) {
    let refusal = check_request(&json!({"symbol": value, "quantity": "1"}))
        .expect_err(&format!("{value:?} must be refused"));
    assert_eq!(refusal.kind, kind, "{value:?}");
    assert_eq!(refusal.path, "/symbol", "{value:?}");
    assert_only_kind_and_path(&refusal);
    let clean = sanitize_response(&json!({"note": value, "price": "12.50"}));
    assert_eq!(
        clean,
        json!({"note": "[redacted]", "price": "12.50"}),
        "{value:?}"
    );
}

/// Plants `key` as an argument name and checks that the request is refused as `kind`, that the
/// path shows the key only when it is short plain ASCII, and that a response loses the key.
fn assert_key_caught(key: &str, kind: MaterialKind) {
    let mut payload = serde_json::Map::new();
    payload.insert(key.to_string(), Value::String("AAPL".into()));
    let refusal = check_request(&Value::Object(payload.clone()))
        .expect_err(&format!("key {key:?} must be refused"));
    assert_eq!(refusal.kind, kind, "{key:?}");
    // Only a short plain ASCII key is shown; anything else could be the material itself.
    let plain = key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let expected_path = if plain {
        format!("/{key}")
    } else {
        "/<redacted>".to_string()
    };
    assert_eq!(refusal.path, expected_path, "{key:?}");
    assert_only_kind_and_path(&refusal);
    payload.insert("symbol".into(), Value::String("AAPL".into()));
    assert_eq!(
        sanitize_response(&Value::Object(payload)),
        json!({"symbol": "AAPL"}),
        "{key:?}"
    );
}

/// The refusal carries the kind and the path, nothing else: its text is exactly those two.
fn assert_only_kind_and_path(refusal: &SensitiveMaterial) {
    assert_eq!(
        refusal.to_string(),
        format!("{} at {}", refusal.kind.as_str(), refusal.path)
    );
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

#[test]
fn percent_encoded_values_are_classified() {
    for (value, kind) in [
        ("Bearer%20abc.def", MaterialKind::Authorization),
        (
            "Bearer%20eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            MaterialKind::Authorization,
        ),
        ("Bearer%2520abc.def", MaterialKind::Authorization), // double encoding
        ("Basic%20dXNlcjpwYXNz", MaterialKind::Authorization),
        ("Authorization%3A%20Bearer%20x", MaterialKind::Authorization),
        ("%2Fhome%2Fu%2F.ssh%2Fid_rsa", MaterialKind::LocalPath),
        ("file%3A%2F%2F%2Fetc%2Fpasswd", MaterialKind::LocalPath),
        ("%7E%2Fsecrets.txt", MaterialKind::LocalPath),
        ("C%3A%5CUsers%5Cme", MaterialKind::LocalPath),
        ("%2D%2D%2D%2D%2DBEGIN%20PRIVATE%20KEY", MaterialKind::Secret),
        ("%42earer%20abc", MaterialKind::Authorization), // letters encoded too
    ] {
        assert_value_caught(value, kind);
    }
}

#[test]
fn url_encoded_cookies_are_classified() {
    for value in [
        "JSESSIONID%3Dabc123",
        "jsessionid%3dABC123",
        "Cookie%3A%20x%3Dy",
        "Set-Cookie%3A%20api%3Dabc",
        "x-sess-uuid%3D0.123",
        "JSESSIONID%253Dabc123",   // double encoding
        "JSESSIONID%25253Dabc123", // triple encoding
        "JSESSIONID％3Dabc123",    // full-width percent sign
        "%4A%53%45%53%53%49%4F%4E%49%44%3Dabc",
    ] {
        assert_value_caught(value, MaterialKind::Cookie);
    }
}

#[test]
fn percent_encoded_keys_are_classified() {
    for (key, kind) in [
        ("access%5Ftoken", MaterialKind::Token),
        ("Set%2DCookie", MaterialKind::Cookie),
        ("%63ookie", MaterialKind::Cookie),
        ("pass%2577ord", MaterialKind::Credential),
        ("Authorization%00", MaterialKind::Authorization),
    ] {
        assert_key_caught(key, kind);
    }
}

#[test]
fn encoded_cookies_and_session_ids_are_removed_from_responses() {
    let raw = json!({
        "url": "https://localhost:5000/sso/Dispatcher?JSESSIONID%3Dabc123",
        "redirect": "%2Fsso%2FLogin%3Fx-sess-uuid%253D0.5",
        "header": "Set-Cookie%3A%20api%3Dabc",
        "JSESSIONID%3Dabc123": {"cached": true},
        "sessions": {"ｊｓｅｓｓｉｏｎｉｄ＝abc": 1},
        "access%5Ftoken": "x",
        "symbol": "AAPL",
        "price": "189.50",
    });
    assert_eq!(
        sanitize_response(&raw),
        json!({
            "url": "[redacted]",
            "redirect": "[redacted]",
            "sessions": {},
            "symbol": "AAPL",
            "price": "189.50",
        })
    );
}

#[test]
fn uninspectable_values_are_refused_not_passed() {
    let mut four_layers = "JSESSIONID=abc".to_string();
    for _ in 0..4 {
        four_layers = four_layers.replace('%', "%25").replace('=', "%3D");
    }
    for value in [
        four_layers.as_str(),
        &"A".repeat(shared_safety::sanitize::MAX_VALUE_BYTES + 1),
    ] {
        assert_value_caught(value, MaterialKind::Uninspectable);
    }
    assert_key_caught(
        &"k".repeat(shared_safety::sanitize::MAX_KEY_BYTES + 1),
        MaterialKind::Uninspectable,
    );
    // At the bound, an ordinary value is still inspected and passes.
    let long = "A".repeat(shared_safety::sanitize::MAX_VALUE_BYTES);
    assert_eq!(check_request(&json!({ "symbol": long })), Ok(()));
}
