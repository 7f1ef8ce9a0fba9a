//! Sensitive-material sanitizer.
//!
//! Requests: anything that looks like a cookie, an authorization header, a token, a credential,
//! a secret or a local filesystem path is refused before forwarding, detected both by the key
//! it sits under and by the shape of the value. Ordinary trading values (a symbol such as
//! `PATH`, a page cursor, a decimal amount) pass.
//!
//! Responses: session material and local internals are removed before a result leaves the
//! laptop (cookies, raw headers, session ids, CPGW's `MAC` and `serverInfo`, local paths).

mod decode;
mod fold;
mod keys;
mod shapes;
mod values;

use std::collections::HashMap;

use serde_json::{Map, Value};

pub use keys::{MAX_KEY_BYTES, sensitive_key};
pub use values::{MAX_RESPONSE_VALUE_BYTES, MAX_VALUE_BYTES, sensitive_value};

/// Why a request was refused. Carries the JSON path and the kind of material, never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensitiveMaterial {
    /// JSON pointer-like path to the offending key or value, e.g. `/headers/cookie`.
    pub path: String,
    pub kind: MaterialKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaterialKind {
    Cookie,
    Authorization,
    Token,
    Credential,
    Secret,
    LocalPath,
    /// A key or value the sanitizer could not inspect within its bounds: longer than
    /// [`MAX_KEY_BYTES`] or [`MAX_VALUE_BYTES`] ([`MAX_RESPONSE_VALUE_BYTES`] in responses),
    /// percent-encoded more often than it decodes, or needing more decoding work than its
    /// length allows. Refused (requests) or removed (responses) rather than passed uninspected.
    Uninspectable,
}

impl MaterialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MaterialKind::Cookie => "cookie",
            MaterialKind::Authorization => "authorization header",
            MaterialKind::Token => "token",
            MaterialKind::Credential => "credential",
            MaterialKind::Secret => "secret",
            MaterialKind::LocalPath => "local filesystem path",
            MaterialKind::Uninspectable => "value too large or too deeply encoded to inspect",
        }
    }
}

impl std::fmt::Display for SensitiveMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.kind.as_str(), self.path)
    }
}

/// Walks a request payload and refuses the first sensitive key or value found.
pub fn check_request(value: &Value) -> Result<(), SensitiveMaterial> {
    walk_request(value, &mut String::new())
}

fn walk_request(value: &Value, path: &mut String) -> Result<(), SensitiveMaterial> {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                let saved = path.len();
                path.push('/');
                path.push_str(&echo_safe_segment(key));
                if let Some(kind) = sensitive_key(key) {
                    return Err(SensitiveMaterial {
                        path: path.clone(),
                        kind,
                    });
                }
                if let Some(kind) = sensitive_value(key) {
                    return Err(SensitiveMaterial {
                        path: path.clone(),
                        kind,
                    });
                }
                walk_request(item, path)?;
                path.truncate(saved);
            }
            Ok(())
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let saved = path.len();
                path.push('/');
                path.push_str(&index.to_string());
                walk_request(item, path)?;
                path.truncate(saved);
            }
            Ok(())
        }
        Value::String(text) => match sensitive_value(text) {
            Some(kind) => Err(SensitiveMaterial {
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.clone()
                },
                kind,
            }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// A JSON path segment fit for an error message. Paths of refusals are echoed to the agent and
/// logged, so a segment is shown only when it is a short plain identifier (ASCII letters,
/// digits, `_`, `-`; at most 64) that does not itself look sensitive. Anything else (a key
/// that is a bearer token, a file path, free text) becomes `<redacted>`.
pub fn echo_safe_segment(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 64
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain && sensitive_value(key).is_none() {
        key.to_string()
    } else {
        "<redacted>".to_string()
    }
}

/// Returns a copy of a broker response with session material and local internals removed.
/// String values that look sensitive are replaced with `"[redacted]"`, and so are strings
/// longer than [`MAX_RESPONSE_VALUE_BYTES`], which are not inspected.
pub fn sanitize_response(value: &Value) -> Value {
    scrub(value, &mut HashMap::new())
}

/// Results are mostly arrays of objects with the same few keys (bars, positions, orders), so
/// each distinct short key is judged once per response.
const REMEMBERED_KEYS: usize = 256;
const REMEMBERED_KEY_BYTES: usize = 64;

fn scrub(value: &Value, removed_keys: &mut HashMap<String, bool>) -> Value {
    match value {
        Value::Object(map) => {
            let mut clean = Map::new();
            for (key, item) in map {
                let removed = match removed_keys.get(key.as_str()) {
                    Some(removed) => *removed,
                    None => {
                        // A key can itself be material: CPGW maps keyed by a cookie or a
                        // session id.
                        let removed =
                            keys::removed_from_responses(key) || sensitive_value(key).is_some();
                        if key.len() <= REMEMBERED_KEY_BYTES && removed_keys.len() < REMEMBERED_KEYS
                        {
                            removed_keys.insert(key.clone(), removed);
                        }
                        removed
                    }
                };
                if !removed {
                    clean.insert(key.clone(), scrub(item, removed_keys));
                }
            }
            Value::Object(clean)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| scrub(item, removed_keys)).collect())
        }
        Value::String(text) if values::classify_value(text, MAX_RESPONSE_VALUE_BYTES).is_some() => {
            Value::String("[redacted]".into())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_by_key() {
        for (payload, kind) in [
            (json!({"cookie": "x"}), MaterialKind::Cookie),
            (json!({"Authorization": "abc"}), MaterialKind::Authorization),
            (json!({"access_token": "abc"}), MaterialKind::Token),
            (
                json!({"nested": {"password": "hunter2"}}),
                MaterialKind::Credential,
            ),
            (json!({"client_secret": "abc"}), MaterialKind::Secret),
            (json!({"x-sess-uuid": "abc"}), MaterialKind::Cookie),
            (json!({"apiKey": "abc"}), MaterialKind::Secret),
        ] {
            assert_eq!(
                check_request(&payload).map_err(|e| e.kind),
                Err(kind),
                "{payload}"
            );
        }
    }

    #[test]
    fn refuses_by_value() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl";
        for value in [
            "Bearer abc.def",
            jwt,
            "-----BEGIN PRIVATE KEY-----\nMII",
            "/home/u/.ssh/id_rsa",
            "/Users/me/Library",
            "C:\\Users\\me",
            "~/secrets.txt",
            "file:///etc/passwd",
            "x-sess-uuid=0.1234",
        ] {
            assert!(
                check_request(&json!({"symbol": value})).is_err(),
                "{value} should be refused"
            );
        }
    }

    #[test]
    fn a_key_that_is_itself_a_secret_is_not_echoed() {
        let refusal = check_request(&json!({"Bearer abc.def.ghi": 1})).unwrap_err();
        assert_eq!(refusal.path, "/<redacted>");
        assert!(!refusal.to_string().contains("abc.def"));
    }

    #[test]
    fn only_plain_short_segments_are_echoed() {
        assert_eq!(echo_safe_segment("cookie"), "cookie");
        assert_eq!(echo_safe_segment("x-sess-uuid"), "x-sess-uuid");
        assert_eq!(echo_safe_segment("0"), "0");
        assert_eq!(echo_safe_segment("a b"), "<redacted>");
        assert_eq!(echo_safe_segment("/home/u"), "<redacted>");
        assert_eq!(echo_safe_segment(&"k".repeat(65)), "<redacted>");
        assert_eq!(echo_safe_segment(""), "<redacted>");
    }

    #[test]
    fn ordinary_values_pass() {
        for value in [
            "PATH",
            "AAPL",
            "BRK B",
            "12.50",
            "cursor:eyJwYWdlIjoyfQ",
            "2026-11-21",
            "page-2",
            "/",
        ] {
            assert!(
                check_request(&json!({"symbol": value, "cursor": value})).is_ok(),
                "{value}"
            );
        }
    }

    #[test]
    fn responses_lose_session_material() {
        let raw = json!({
            "accounts": ["DU1234567"],
            "sessionId": "abc",
            "serverInfo": {"serverName": "x"},
            "MAC": "98:F2",
            "nested": [{"Set-Cookie": "x=1", "note": "/home/u/file"}],
        });
        assert_eq!(
            sanitize_response(&raw),
            json!({"accounts": ["DU1234567"], "nested": [{"note": "[redacted]"}]})
        );
    }
}
