//! Property tests over generated payloads: sensitive material planted anywhere in an ordinary
//! trading payload is always refused (and never echoed); ordinary payloads always pass; and a
//! sanitized response never carries session material.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use proptest::prelude::*;
use serde_json::{Map, Value};
use shared_safety::sanitize::{check_request, sanitize_response, sensitive_key, sensitive_value};

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
