//! Sensitive-material sanitizer: the second line of defence, not the first.
//!
//! **The primary controls are elsewhere.** Every tool's arguments must fit its closed JSON
//! schema ([`crate::schema`]): no unknown fields, every string short and of a known kind (a
//! symbol is at most 12 characters, an order id 32). The sidecar maps CPGW's replies to typed
//! results that carry only the fields a tool names. Those controls keep cookies, tokens and
//! paths out by construction. The sanitizer is a heuristic backstop behind them: it recognises
//! known shapes of sensitive material in known encodings, and it cannot prove that a text
//! carries none. An opaque random token under an ordinary key looks exactly like an
//! idempotency key, and passes.
//!
//! Requests: anything that looks like a cookie, an authorization header, a token, a credential,
//! a secret or a local filesystem path is refused, detected both by the key it sits under and by
//! the shape of the value. The gateway refuses before forwarding; the sidecar checks again.
//! Ordinary trading values (a symbol such as `PATH`, a page cursor, a decimal amount, a UUID
//! or base64 idempotency key, a company name) pass.
//!
//! Responses: session material and local internals are removed before a result leaves the
//! laptop (cookies, raw headers, session ids, CPGW's `MAC` and `serverInfo`, local paths), and
//! the gateway scrubs again: keys that name or are material are dropped, values that are
//! material become `"[redacted]"`.
//!
//! How a key or a value is read:
//! 1. **Bounds.** A key over [`MAX_KEY_BYTES`] (1 KiB), a request value over
//!    [`MAX_VALUE_BYTES`] (64 KiB) or a response string over [`MAX_RESPONSE_VALUE_BYTES`] (the
//!    largest relay frame, 1 MiB) is not read but treated as [`MaterialKind::Uninspectable`]:
//!    refused or removed.
//! 2. **Forms** (`decode`): the text as it is; folded (`fold`: Unicode NFKC after dropping
//!    default-ignorable, format and control characters and combining marks, so `ｃｏｏｋｉｅ`
//!    and `coo\u{200B}kie` read `cookie`); and percent-decoded up to three layers, each layer
//!    folded. Text still encoded after three layers is uninspectable.
//! 3. **Keys** (`keys`) are split into words (`accessToken` is `access`, `token`) and compared
//!    with the sensitive words, also run together (`c-o-o-k-i-e`).
//! 4. **Value shapes** (`shapes`), on every form: `Authorization:`/`Cookie:` header lines
//!    anywhere; `Bearer`/`Basic` with a credential (any, as the whole value; token-like, inside
//!    text); `name=value` pairs with a sensitive name (`token=`, `JSESSIONID=`,
//!    `"password":`); private keys; JWTs anywhere, recognised by a header that decodes to a
//!    JSON object; local paths.
//! 5. **Base64** (`values`): every run of 12 or more base64 or base64url characters in any
//!    form is decoded at each of the four alignments (so a glued prefix does not hide it), and
//!    what it decodes to is read like a value again, two levels deep. A decoding is read whole
//!    when it is text throughout, else in its printable ASCII stretches of 16 or more, so random
//!    identifiers (hex, UUIDs, base64 keys) do not read as text.
//! 6. **Work budget**: every form and decoding spends from a budget of 32 units per input byte
//!    (plus 4096), a fold may at most double a text, and every shape check is a single pass,
//!    so inspection is linear in the input; an input that would need more is uninspectable
//!    rather than partly inspected.
//!
//! Not recognised, by design or for now: material shorter than the base64 minimum once encoded
//! (under 9 bytes); encodings other than percent and base64 (hex, HTML entities, UTF-16,
//! compression); lookalike letters from other scripts (a Cyrillic `с` in `сookie`), which NFKC
//! keeps apart; material split across several fields; base64 three levels deep. The closed
//! schemas are what stop those.
//!
//! A refusal ([`SensitiveMaterial`]) carries the kind and the JSON path, never the value; a
//! path segment is shown only when it is a short plain identifier that is not itself material.

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
