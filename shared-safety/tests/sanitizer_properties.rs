//! Property tests over generated payloads: sensitive material planted anywhere in an ordinary
//! trading payload is always refused (and never echoed), in plain or encoded form; ordinary
//! payloads and generated trading values always pass; a sanitized response never carries
//! session material; and the sanitizer is total: it answers on any string without panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use proptest::prelude::*;
use serde_json::{Map, Value};
use shared_safety::sanitize::{
    SensitiveMaterial, check_request, echo_safe_segment, sanitize_response, sensitive_key,
    sensitive_value,
};

/// Keys that appear in real tool arguments.
fn ordinary_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "symbol",
        "symbols",
        "quantity",
        "cash_amount",
        "limit_price",
        "stop_price",
        "side",
        "order_id",
        "cursor",
        "page",
        "period",
        "bar",
        "exchange",
        "currency",
        "idempotency_key",
        "timeout_seconds",
        "trail_percent",
        "take_profit",
        "stop_loss",
        "limit",
    ])
    .prop_map(str::to_string)
}

/// Values that appear in real tool arguments, including ones that look a bit like secrets
/// but are not (a symbol named PATH, base64-ish cursors, dotted numbers).
fn ordinary_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[A-Z]{1,5}".prop_map(Value::String),
        Just(Value::String("PATH".into())),
        Just(Value::String("BRK B".into())),
        "[0-9]{1,6}\\.[0-9]{1,4}".prop_map(Value::String),
        "[a-zA-Z0-9_-]{8,24}".prop_map(Value::String),
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]".prop_map(Value::String),
        prop::sample::select(vec!["BUY", "SELL", "1d", "5min", "GTC", "DAY", "/"])
            .prop_map(|s| Value::String(s.to_string())),
        (0u32..1_000_000).prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
    ]
}

fn ordinary_tree() -> impl Strategy<Value = Value> {
    ordinary_value().prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(ordinary_key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Sensitive material, planted either as a value under an ordinary key or as a key.
#[derive(Clone, Debug)]
enum Plant {
    Value(String),
    Key(String),
}

fn jwt() -> impl Strategy<Value = String> {
    (
        "[A-Za-z0-9_-]{10,40}",
        "[A-Za-z0-9_-]{10,40}",
        "[A-Za-z0-9_-]{16,43}",
    )
        .prop_map(|(header, payload, signature)| format!("eyJ{header}.eyJ{payload}.{signature}"))
}

fn sensitive_plant() -> impl Strategy<Value = Plant> {
    prop_oneof![
        "[A-Za-z0-9._~+/-]{8,40}".prop_map(|t| Plant::Value(format!("Bearer {t}"))),
        "[A-Za-z0-9+/]{8,30}={0,2}".prop_map(|t| Plant::Value(format!("Basic {t}"))),
        jwt().prop_map(Plant::Value),
        Just(Plant::Value(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk".into()
        )),
        "[a-z]{2,10}".prop_map(|u| Plant::Value(format!("/home/{u}/.ssh/id_ed25519"))),
        "[a-z]{2,10}".prop_map(|u| Plant::Value(format!("/Users/{u}/Library/Cookies"))),
        "[a-z]{2,10}".prop_map(|u| Plant::Value(format!("C:\\Users\\{u}\\AppData"))),
        "[a-z]{2,10}".prop_map(|f| Plant::Value(format!("~/{f}.txt"))),
        "[a-z]{2,10}".prop_map(|f| Plant::Value(format!("file:///etc/{f}"))),
        "[0-9a-f]{8,32}".prop_map(|v| Plant::Value(format!("x-sess-uuid=0.{v}"))),
        prop::sample::select(vec![
            "cookie",
            "Cookie",
            "set-cookie",
            "Authorization",
            "proxy-authorization",
            "access_token",
            "refreshToken",
            "id_token",
            "password",
            "client_secret",
            "apiKey",
            "private_key",
            "sessionId",
            "JSESSIONID",
            "x-sess-uuid",
            "credentials",
            "bearer",
        ])
        .prop_map(|k| Plant::Key(k.to_string())),
    ]
}

/// Plants `plant` at a position chosen by `route` (each step picks a child), creating an
/// object where the tree has a leaf. Returns the expected JSON path of the refusal.
fn plant_into(tree: &mut Value, plant: &Plant, route: &[usize]) -> String {
    let mut node = tree;
    let mut path = String::new();
    for step in route {
        let next_index = match node {
            Value::Object(map) if !map.is_empty() => *step % map.len(),
            Value::Array(items) if !items.is_empty() => *step % items.len(),
            _ => break,
        };
        match node {
            Value::Object(map) => {
                let key = map.keys().nth(next_index).cloned().unwrap();
                path.push('/');
                path.push_str(&key);
                node = map.get_mut(&key).unwrap();
            }
            Value::Array(items) => {
                path.push('/');
                path.push_str(&next_index.to_string());
                node = &mut items[next_index];
            }
            _ => unreachable!(),
        }
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let map = node.as_object_mut().unwrap();
    match plant {
        Plant::Value(secret) => {
            map.insert("zz_planted".into(), Value::String(secret.clone()));
            format!("{path}/zz_planted")
        }
        Plant::Key(key) => {
            map.insert(key.clone(), Value::String("AAPL".into()));
            format!("{path}/{key}")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn ordinary_payloads_pass(tree in ordinary_tree()) {
        prop_assert_eq!(check_request(&tree), Ok(()));
    }

    #[test]
    fn planted_material_is_refused_at_its_path_and_never_echoed(
        tree in ordinary_tree(),
        plant in sensitive_plant(),
        route in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut tree = tree;
        let expected_path = plant_into(&mut tree, &plant, &route);
        let refusal = check_request(&tree).expect_err("planted material must be refused");
        prop_assert_eq!(&refusal.path, &expected_path);
        if let Plant::Value(secret) = &plant {
            prop_assert!(!refusal.to_string().contains(secret.as_str()));
        }
    }

    #[test]
    fn sanitized_responses_carry_no_session_material(
        tree in ordinary_tree(),
        plant in sensitive_plant(),
        route in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut tree = tree;
        plant_into(&mut tree, &plant, &route);
        let clean = sanitize_response(&tree);
        fn walk(value: &Value) -> bool {
            match value {
                Value::Object(map) => map.iter().all(|(k, v)| {
                    sensitive_key(k).is_none() && sensitive_value(k).is_none() && walk(v)
                }),
                Value::Array(items) => items.iter().all(walk),
                Value::String(text) => sensitive_value(text).is_none(),
                _ => true,
            }
        }
        prop_assert!(walk(&clean), "{}", clean);
        // Sanitizing is idempotent: a clean response is left as it is.
        prop_assert_eq!(sanitize_response(&clean), clean);
    }
}

/// Values an agent or the broker produces in normal trading, wider than `ordinary_value`:
/// identifiers in every common encoding (hex, UUIDs, base64 and base64url of random bytes),
/// broker ids, timestamps, company names, and page cursors that are base64 of JSON.
fn trading_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z]{1,5}([.][A-Z])?",
        "[A-Z]{1,4} [A-Z]",
        "-?[0-9]{1,7}([.][0-9]{1,6})?",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]([.][0-9]{3})?(Z|[+-]0[0-9]:00)",
        "[0-9]{4,10}",
        "(DU|U)[0-9]{6,8}",
        "ia-[0-9a-f]{24}",
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        "[0-9a-f]{32,64}",
        "[A-Za-z0-9_-]{16,43}",
        "[A-Za-z0-9+/]{16,44}={0,2}",
        "[a-z]{3,10}(-[a-z0-9]{1,10}){1,4}",
        "([A-Z][A-Z&'-]{1,11} ){1,3}(INC|CORP|LTD|PLC|CO|GROUP|HOLDINGS|TRUST|ETF|INC-CL A)",
        cursor(),
        prop::sample::select(vec![
            "BUY",
            "SELL",
            "DAY",
            "GTC",
            "MKT",
            "LMT",
            "STP",
            "STOP_LIMIT",
            "TRAIL",
            "1d",
            "5min",
            "1h",
            "1w",
            "NASDAQ",
            "NYSE",
            "SMART",
            "USD",
            "EUR",
            "%",
            "amt",
            "PATH",
        ])
        .prop_map(str::to_string),
    ]
}

/// A page cursor as APIs make them: base64 or base64url of a small JSON object, sometimes with
/// a `cursor:` label.
fn cursor() -> impl Strategy<Value = String> {
    (
        0u32..100_000,
        prop::sample::select(vec!["page", "offset", "after", "last_id"]),
        prop::sample::select(vec!["date", "symbol", "conid", "-filled_at"]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(position, field, sort, url_safe, labelled)| {
            use base64::Engine as _;
            let json = format!(r#"{{"{field}":{position},"sort":"{sort}","size":50}}"#);
            let encoded = if url_safe {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
            } else {
                base64::engine::general_purpose::STANDARD.encode(json)
            };
            if labelled {
                format!("cursor:{encoded}")
            } else {
                encoded
            }
        })
}

/// An encoding an attacker may wrap material in.
#[derive(Clone, Copy, Debug)]
enum Wrap {
    /// Every byte as `%XX`.
    PercentAll,
    /// Only the bytes that are not letters or digits as `%XX`, then the `%` again.
    PercentTwice,
    Base64,
    Base64Url,
    /// ASCII as its full-width compatibility form.
    FullWidth,
    /// A zero-width space after every third character.
    ZeroWidth,
}

fn wrap(text: &str, how: Wrap) -> String {
    use base64::Engine as _;
    match how {
        Wrap::PercentAll => text.bytes().map(|b| format!("%{b:02X}")).collect(),
        Wrap::PercentTwice => text
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%25{b:02X}")
                }
            })
            .collect(),
        Wrap::Base64 => base64::engine::general_purpose::STANDARD.encode(text),
        Wrap::Base64Url => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text),
        Wrap::FullWidth => text
            .chars()
            .map(|c| match c {
                '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap(),
                ' ' => '\u{3000}',
                other => other,
            })
            .collect(),
        Wrap::ZeroWidth => text
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                if i % 3 == 2 {
                    vec![c, '\u{200B}']
                } else {
                    vec![c]
                }
            })
            .collect(),
    }
}

fn wraps() -> impl Strategy<Value = Vec<Wrap>> {
    prop::collection::vec(
        prop::sample::select(vec![
            Wrap::PercentAll,
            Wrap::PercentTwice,
            Wrap::Base64,
            Wrap::Base64Url,
            Wrap::FullWidth,
            Wrap::ZeroWidth,
        ]),
        1..=2,
    )
}

/// The refusal's text is exactly its kind and its path.
fn only_kind_and_path(refusal: &SensitiveMaterial) -> bool {
    refusal.to_string() == format!("{} at {}", refusal.kind.as_str(), refusal.path)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn generated_trading_values_pass_and_survive_responses(
        value in trading_value(),
        key in ordinary_key(),
    ) {
        let payload = serde_json::json!({ key: value });
        prop_assert_eq!(check_request(&payload), Ok(()), "{}", value);
        prop_assert_eq!(sanitize_response(&payload), payload);
    }
}

proptest! {
    // Each case inspects its string eight times over; fewer cases keep the debug run short.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_sanitizer_is_total_on_arbitrary_strings(
        text in prop_oneof![
            any::<String>(),
            "\\PC{0,200}",
            "[%A-Za-z0-9+/=._~:;, -]{0,300}",
            "(%[0-9A-Fa-f]{2}|%25|[A-Za-z0-9+/=]|ey|eyJ|\\.|bearer |basic |=|:|~/|\\u{200B}|\\u{FF21}){0,120}",
        ],
    ) {
        // Each call must answer (a panic fails the property); what it answers must agree
        // between the request and the response side.
        let value_kind = sensitive_value(&text);
        let key_kind = sensitive_key(&text);
        let payload = serde_json::json!({ "symbol": text.clone(), "nested": { text.clone(): 1 } });
        match check_request(&payload) {
            Ok(()) => prop_assert!(value_kind.is_none() && key_kind.is_none()),
            Err(refusal) => prop_assert!(only_kind_and_path(&refusal), "{:?}", refusal),
        }
        let clean = sanitize_response(&payload);
        prop_assert_eq!(
            clean.get("symbol").is_some_and(|v| v == &Value::String(text.clone())),
            value_kind.is_none()
        );
        prop_assert_eq!(sanitize_response(&clean), clean);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn encoded_material_is_refused_at_its_path(
        tree in ordinary_tree(),
        plant in sensitive_plant(),
        chain in wraps(),
        route in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let base64 = chain.iter().any(|w| matches!(w, Wrap::Base64 | Wrap::Base64Url));
        let plant = match plant {
            // Base64 runs shorter than 12 characters (9 bytes) are not decoded, by design; and
            // key names are not base64-decoded (a base64 key names nothing to its reader).
            Plant::Value(text) if base64 && text.len() < 9 => return Ok(()),
            Plant::Key(_) if base64 => return Ok(()),
            Plant::Value(text) => Plant::Value(chain.iter().fold(text, |t, how| wrap(&t, *how))),
            Plant::Key(key) => Plant::Key(chain.iter().fold(key, |k, how| wrap(&k, *how))),
        };
        let mut tree = tree;
        let planted_path = plant_into(&mut tree, &plant, &route);
        let refusal = check_request(&tree).expect_err("encoded material must be refused");
        // A planted key is shown only if it is a plain short identifier.
        let expected_path = match &plant {
            Plant::Key(key) => {
                let parent = planted_path.strip_suffix(key.as_str()).unwrap_or(&planted_path);
                format!("{parent}{}", echo_safe_segment(key))
            }
            Plant::Value(_) => planted_path,
        };
        prop_assert_eq!(&refusal.path, &expected_path);
        prop_assert!(only_kind_and_path(&refusal), "{:?}", refusal);
        // And a response carrying it loses it.
        let clean = sanitize_response(&tree);
        fn carries(value: &Value, plant: &Plant) -> bool {
            match (value, plant) {
                (Value::Object(map), Plant::Key(key)) if map.contains_key(key) => true,
                (Value::Object(map), _) => map.values().any(|v| carries(v, plant)),
                (Value::Array(items), _) => items.iter().any(|v| carries(v, plant)),
                (Value::String(text), Plant::Value(secret)) => text == secret,
                _ => false,
            }
        }
        prop_assert!(!carries(&clean, &plant), "{}", clean);
    }
}
