//! One test per class of sanitizer bypass found in review: each table holds forms that passed
//! before the fix, checked both as a request (refused with the right kind, at the right path,
//! without echoing the material) and as a response (removed or redacted).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use serde_json::{Value, json};
use shared_safety::sanitize::{MaterialKind, SensitiveMaterial, check_request, sanitize_response};

/// What is wrong with how `value` is handled, if anything: planted under an ordinary argument
/// name, the request must be refused as `kind` at `/symbol` with a refusal that carries only
/// the kind and the path, and a response carrying it must have it redacted.
fn value_problem(value: &str, kind: MaterialKind) -> Option<String> {
    let shown = shown(value);
    let refusal = match check_request(&json!({"symbol": value, "quantity": "1"})) {
        Ok(()) => return Some(format!("{shown} passed")),
        Err(refusal) => refusal,
    };
    let clean = sanitize_response(&json!({"note": value, "price": "12.50"}));
    if refusal.kind != kind || refusal.path != "/symbol" || !only_kind_and_path(&refusal) {
        Some(format!("{shown} refused as {refusal:?}"))
    } else if clean != json!({"note": "[redacted]", "price": "12.50"}) {
        Some(format!("{shown} sanitized to {clean}"))
    } else {
        None
    }
}

/// What is wrong with how `key` is handled, if anything: as an argument name, the request must
/// be refused as `kind`, the path showing the key only when it is short plain ASCII (anything
/// else could be the material itself), and a response must lose the key.
fn key_problem(key: &str, kind: MaterialKind) -> Option<String> {
    let shown = shown(key);
    let mut payload = serde_json::Map::new();
    payload.insert(key.to_string(), Value::String("AAPL".into()));
    let refusal = match check_request(&Value::Object(payload.clone())) {
        Ok(()) => return Some(format!("key {shown} passed")),
        Err(refusal) => refusal,
    };
    let plain = key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let expected_path = if plain {
        format!("/{key}")
    } else {
        "/<redacted>".to_string()
    };
    payload.insert("symbol".into(), Value::String("AAPL".into()));
    let clean = sanitize_response(&Value::Object(payload));
    if refusal.kind != kind || refusal.path != expected_path || !only_kind_and_path(&refusal) {
        Some(format!("key {shown} refused as {refusal:?}"))
    } else if clean != json!({"symbol": "AAPL"}) {
        Some(format!("key {shown} sanitized to {clean}"))
    } else {
        None
    }
}

/// A row as a failure report shows it: long rows are cut.
fn shown(row: &str) -> String {
    let head: String = row.chars().take(80).collect();
    if head.len() < row.len() {
        format!("{head:?}... ({} bytes)", row.len())
    } else {
        format!("{row:?}")
    }
}

/// The refusal carries the kind and the path, nothing else: its text is exactly those two.
fn only_kind_and_path(refusal: &SensitiveMaterial) -> bool {
    refusal.to_string() == format!("{} at {}", refusal.kind.as_str(), refusal.path)
}

/// Checks every row of a table and reports all the rows that fail, not only the first.
fn assert_rows<T: AsRef<str>>(
    rows: impl IntoIterator<Item = (T, MaterialKind)>,
    problem: fn(&str, MaterialKind) -> Option<String>,
) {
    let problems: Vec<String> = rows
        .into_iter()
        .filter_map(|(row, kind)| problem(row.as_ref(), kind))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn fullwidth_and_compatibility_keys_are_classified() {
    assert_rows(
        [
            ("ｃｏｏｋｉｅ", MaterialKind::Cookie),
            ("ＡＵＴＨＯＲＩＺＡＴＩＯＮ", MaterialKind::Authorization),
            ("ｓｅｔ－ｃｏｏｋｉｅ", MaterialKind::Cookie),
            ("ａｃｃｅｓｓ＿ｔｏｋｅｎ", MaterialKind::Token),
            ("ⓟⓐⓢⓢⓦⓞⓡⓓ", MaterialKind::Credential),
            ("𝐜𝐥𝐢𝐞𝐧𝐭_𝐬𝐞𝐜𝐫𝐞𝐭", MaterialKind::Secret), // mathematical bold
            ("ＪＳＥＳＳＩＯＮＩＤ", MaterialKind::Token),
            ("ＡｐｉＫｅｙ", MaterialKind::Secret),
        ],
        key_problem,
    );
}

#[test]
fn keys_with_invisible_characters_or_split_words_are_classified() {
    assert_rows(
        [
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
        ],
        key_problem,
    );
}

#[test]
fn fullwidth_and_invisible_values_are_classified() {
    assert_rows(
        [
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
        ],
        value_problem,
    );
}

#[test]
fn percent_encoded_values_are_classified() {
    assert_rows(
        [
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
        ],
        value_problem,
    );
}

#[test]
fn url_encoded_cookies_are_classified() {
    assert_rows(
        [
            "JSESSIONID%3Dabc123",
            "jsessionid%3dABC123",
            "Cookie%3A%20x%3Dy",
            "Set-Cookie%3A%20api%3Dabc",
            "x-sess-uuid%3D0.123",
            "JSESSIONID%253Dabc123",   // double encoding
            "JSESSIONID%25253Dabc123", // triple encoding
            "JSESSIONID％3Dabc123",    // full-width percent sign
            "%4A%53%45%53%53%49%4F%4E%49%44%3Dabc",
        ]
        .map(|value| (value, MaterialKind::Cookie)),
        value_problem,
    );
}

#[test]
fn percent_encoded_keys_are_classified() {
    assert_rows(
        [
            ("access%5Ftoken", MaterialKind::Token),
            ("Set%2DCookie", MaterialKind::Cookie),
            ("%63ookie", MaterialKind::Cookie),
            ("pass%2577ord", MaterialKind::Credential),
        ],
        key_problem,
    );
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
    use shared_safety::sanitize::{MAX_KEY_BYTES, MAX_RESPONSE_VALUE_BYTES, MAX_VALUE_BYTES};
    let mut four_layers = "JSESSIONID=abc".to_string();
    for _ in 0..4 {
        four_layers = four_layers.replace('%', "%25").replace('=', "%3D");
    }
    assert_rows([(four_layers, MaterialKind::Uninspectable)], value_problem);
    assert_rows(
        [("k".repeat(MAX_KEY_BYTES + 1), MaterialKind::Uninspectable)],
        key_problem,
    );
    // A request value past its bound is refused unread; at the bound it is read, and passes.
    let refusal = check_request(&json!({ "symbol": "A".repeat(MAX_VALUE_BYTES + 1) }));
    assert_eq!(
        refusal.map_err(|r| r.kind),
        Err(MaterialKind::Uninspectable)
    );
    let long = "A".repeat(MAX_VALUE_BYTES);
    assert_eq!(check_request(&json!({ "symbol": long })), Ok(()));
    // A response string is read up to the largest relay frame, and redacted past it.
    let frame = json!({ "note": "A".repeat(MAX_RESPONSE_VALUE_BYTES) });
    assert_eq!(sanitize_response(&frame), frame);
    let past = json!({ "note": "A".repeat(MAX_RESPONSE_VALUE_BYTES + 1) });
    assert_eq!(sanitize_response(&past), json!({ "note": "[redacted]" }));
}

const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn base64_encoded_material_is_classified() {
    let bearer = format!("Bearer {JWT}");
    let wrapped_in_binary = [&[0u8, 1, 2, 0xFF][..], b"Bearer 9f8e7d6c5b4a3921", &[0]].concat();
    assert_rows(
        [
            // The review's example: base64 of `bearer eyJ...`.
            (
                "YmVhcmVyIGV5Si4uLg==".to_string(),
                MaterialKind::Authorization,
            ),
            (b64(bearer.as_bytes()), MaterialKind::Authorization),
            (b64url(bearer.as_bytes()), MaterialKind::Authorization),
            (b64(JWT.as_bytes()), MaterialKind::Token),
            (b64(b"JSESSIONID=0123456789abcdef"), MaterialKind::Cookie),
            (b64(b"Cookie: x-sess-uuid=0.5"), MaterialKind::Cookie),
            (
                b64(b"/home/trader/.ssh/id_ed25519"),
                MaterialKind::LocalPath,
            ),
            (b64(b"-----BEGIN PRIVATE KEY-----"), MaterialKind::Secret),
            // Twice encoded, percent-encoded padding, glued behind other letters or after a label.
            (
                b64(b64(bearer.as_bytes()).as_bytes()),
                MaterialKind::Authorization,
            ),
            (
                b64(bearer.as_bytes()).replace('=', "%3D"),
                MaterialKind::Authorization,
            ),
            (
                format!("x{}", b64(bearer.as_bytes())),
                MaterialKind::Authorization,
            ),
            (
                format!("zz9{}", b64url(bearer.as_bytes())),
                MaterialKind::Authorization,
            ),
            (
                format!("payload:{}", b64(JWT.as_bytes())),
                MaterialKind::Token,
            ),
            // Material wrapped in a few binary bytes before encoding.
            (b64(&wrapped_in_binary), MaterialKind::Authorization),
        ],
        value_problem,
    );
}

#[test]
fn prefixed_secrets_inside_longer_values_are_classified() {
    assert_rows(
        [
            (format!("note token={JWT} end"), MaterialKind::Token),
            ("token=eyJhbGciOi".to_string(), MaterialKind::Token),
            (
                "https://x.test/cb?access_token=abc123&state=1".to_string(),
                MaterialKind::Token,
            ),
            (
                "retry with password: hunter2".to_string(),
                MaterialKind::Credential,
            ),
            (
                r#"{"client_secret":"s3cr3t"}"#.to_string(),
                MaterialKind::Secret,
            ),
            (
                "callback Bearer 9f8e7d6c5b4a".to_string(),
                MaterialKind::Authorization,
            ),
            (
                "callback Bearer+9f8e7d6c5b4a".to_string(),
                MaterialKind::Authorization,
            ),
            (
                "use Bearer kQzTrWxYvBnM then".to_string(),
                MaterialKind::Authorization,
            ),
            (
                "send Basic dXNlcjpwYXNz now".to_string(),
                MaterialKind::Authorization,
            ),
            (
                "GET / HTTP/1.1\r\nAuthorization: x".to_string(),
                MaterialKind::Authorization,
            ),
            (
                "GET / HTTP/1.1\r\nCookie: a=b".to_string(),
                MaterialKind::Cookie,
            ),
            ("x_otp=123456".to_string(), MaterialKind::Credential),
        ],
        value_problem,
    );
}

#[test]
fn jwt_shapes_inside_longer_strings_are_classified() {
    assert_rows(
        [
            format!("xyz:{JWT}"),
            format!("token{JWT}"), // glued to a word
            format!("({JWT})"),
            format!("it={JWT}&x=1"),
            format!("{JWT}.extra.parts"),
            // Unsigned (`alg` `none`): an empty signature.
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.".to_string(),
            // JWE with direct encryption: an empty key part, five parts in all.
            "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..aXZpdml2aXY.Y2lwaGVy.dGFndGFn".to_string(),
            // A header spelled with spaces, `{ "alg": "none" }`, does not start with `eyJ`.
            "eyAiYWxnIjogIm5vbmUiIH0.eyJzdWIiOiIxIn0.c2ln".to_string(),
        ]
        .map(|value| (value, MaterialKind::Token)),
        value_problem,
    );
}

/// What each bypass class must not catch: ordinary trading values and broker text that share
/// a feature with it (a word, an encoding, a shape).
#[test]
fn look_alikes_of_each_class_pass() {
    let ordinary = [
        // Symbols, amounts, dates, ids.
        "AAPL",
        "PATH",
        "BRK.B",
        "BRK B",
        "12.50",
        "0.0001",
        "100%",
        "2026-11-21",
        "2026-11-21T14:30:00Z",
        "2026-11-21T14:30:00.000-05:00",
        "1234567890",
        "265598",
        "DU1234567",
        "ia-0123456789abcdef01234567",
        "3f2c9a4e-7b1d-4c8e-9f2a-5d6e7f8a9b0c",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "rebalance-2026-11-21-aapl-001",
        // Company names and broker text with words the classes look for.
        "APPLE INC",
        "BERKSHIRE HATHAWAY INC-CL B",
        "BEARER BONDS INC",
        // (A value that is exactly `Bearer <one word>` or `Basic <one word>` is still refused,
        // as it always was: it has the shape of a whole authorization header.)
        "BASIC ENERGY SERVICES INC",
        "BASIC ENERGY-SERVICES INC",
        "TOKEN COMMUNITIES LTD",
        "Cookie Jar Holdings",
        "Société Générale",
        "ＡＢＣ株式会社",
        "Order size: 100 shares",
        "Price: 12.50; Qty: 3",
        "session: closed",
        "login: required at https://localhost:5000",
        "page=2&limit=50",
        "5% off, 50%+ margin",
        // Base64 that decodes to something ordinary, or to nothing readable.
        "cursor:eyJwYWdlIjoyfQ",
        "eyJwYWdlIjoyfQ==",
        "dGVzdA",
        "SGVsbG8sIHdvcmxkIQ",
        "q83vEjRWeJCrze8SNFZ4kA",
    ];
    let problems: Vec<String> = ordinary
        .iter()
        .filter_map(|value| {
            let refused = check_request(&json!({ "symbol": value })).err();
            let clean = sanitize_response(&json!({ "name": value }));
            (refused.is_some() || clean != json!({ "name": value }))
                .then(|| format!("{value:?}: {refused:?}, {clean}"))
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Broker messages the sidecar passes on (CPGW order warnings) survive sanitizing whole.
#[test]
fn broker_warnings_survive_sanitizing() {
    let warnings = json!([{
        "id": "07a13a5a-4a48-44a5-bb25-5ab37b79186c",
        "message": [
            "You are submitting an order without market data. We strongly recommend against \
             this as it may result in erroneous and unexpected trades. Are you sure you want \
             to submit this order?",
            "The following order \"BUY 100 AAPL @ 189.50\" size exceeds the Size Limit of 50.",
            "<h4>Confirm Mandatory Cap Price</h4>To avoid trading at a price that is not \
             consistent with a fair and orderly market, IB may set a cap (for a buy order) or \
             floor (for a sell order). THIS MAY CAUSE AN ORDER THAT WOULD OTHERWISE BE \
             MARKETABLE TO NOT BE TRADED.",
        ],
        "isSuppressed": false,
        "messageIds": ["o354", "o383", "o10151"],
    }]);
    assert_eq!(sanitize_response(&warnings), warnings);
}
