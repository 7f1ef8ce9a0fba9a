//! Classifying JSON object keys: a key names what it holds (`cookie`, `accessToken`,
//! `X-Sess-UUID`), so a sensitive key is refused or removed whatever its value.

use std::borrow::Cow;

use super::MaterialKind;
use super::decode::{self, Budget};

/// Longer keys are not classified but refused (requests) or removed (responses): no tool
/// argument or broker field has a key anywhere near this long.
pub const MAX_KEY_BYTES: usize = 1024;

/// Splits a key into lowercase words: `X-Sess-UUID` -> [x, sess, uuid], `accessToken` ->
/// [access, token].
pub(super) fn key_words(key: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for ch in key.chars() {
        if !ch.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if ch.is_uppercase() && previous_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        previous_lower = ch.is_lowercase() || ch.is_ascii_digit();
        current.extend(ch.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Words that mark a key as sensitive, by kind, in the order kinds are reported when a key
/// names several (`session_cookie` is a cookie).
const KEY_WORDS: &[(MaterialKind, &[&str])] = &[
    (MaterialKind::Cookie, &["cookie", "cookies"]),
    (MaterialKind::Authorization, &["authorization", "bearer"]),
    (
        MaterialKind::Token,
        &[
            "token",
            "tokens",
            "jwt",
            "jsessionid",
            "sessionid",
            "session",
            "sso",
            "ssoid",
        ],
    ),
    (
        MaterialKind::Credential,
        &[
            "password",
            "passwd",
            "pwd",
            "passphrase",
            "credential",
            "credentials",
            "username",
            "login",
            "otp",
            "totp",
        ],
    ),
    (
        MaterialKind::Secret,
        &["secret", "secrets", "apikey", "privatekey", "signature"],
    ),
    (
        MaterialKind::LocalPath,
        &[
            "path",
            "file",
            "filename",
            "filepath",
            "dir",
            "directory",
            "home",
        ],
    ),
];

/// Keys whose words, run together, name a sensitive header or cookie.
const JOINED: &[(&str, MaterialKind)] = &[
    ("setcookie", MaterialKind::Cookie),
    ("xsessuuid", MaterialKind::Cookie),
    ("proxyauthorization", MaterialKind::Authorization),
];

/// Classifies a key name as sensitive.
///
/// The key is compared in its decoded forms (see `decode::forms`): folded (NFKC, without
/// invisible characters and marks), so `ｃｏｏｋｉｅ` and `coo\u{200B}kie` are cookies, and
/// percent-decoded, so `access%5Ftoken` is a token. A key that cannot be inspected within
/// bounds is reported as [`MaterialKind::Uninspectable`].
pub fn sensitive_key(key: &str) -> Option<MaterialKind> {
    match key_forms(key) {
        Ok(forms) => forms.iter().find_map(|form| classify_words(form)),
        Err(kind) => Some(kind),
    }
}

/// Keys CPGW returns that are session material or local internals, removed from every result
/// along with every key [`sensitive_key`] classifies.
pub(super) fn removed_from_responses(key: &str) -> bool {
    let Ok(forms) = key_forms(key) else {
        return true;
    };
    forms.iter().any(|form| {
        let joined: String = key_words(form).concat();
        matches!(
            joined.as_str(),
            "mac"
                | "serverinfo"
                | "servername"
                | "serverversion"
                | "headers"
                | "header"
                | "setcookie"
                | "hmds"
        ) || classify_words(form).is_some()
    })
}

/// The forms a key is compared in (as it is, folded, percent-decoded; see `decode::forms`),
/// or the kind to report when it cannot be inspected.
fn key_forms(key: &str) -> Result<Vec<Cow<'_, str>>, MaterialKind> {
    if key.len() > MAX_KEY_BYTES {
        return Err(MaterialKind::Uninspectable);
    }
    decode::forms(key, &mut Budget::for_input(key.len())).map_err(|_| MaterialKind::Uninspectable)
}

/// The kind a (folded) key names, by its words: `accessToken` has the word `token`. Words run
/// together count too, so separators sprinkled into a word (`c-o-o-k-i-e`, `pass.word`) do
/// not hide it.
fn classify_words(key: &str) -> Option<MaterialKind> {
    let words = key_words(key);
    classify(&words, Where::Key)
}

/// Words too common in ordinary prose to mark a `name: value` pair inside a text (a broker
/// message may say `session: closed` or `login: required`). As keys they still count.
const TOO_GENERIC_IN_TEXT: &[&str] = &["session", "sso", "username", "login", "signature"];

/// CPGW's session cookies, as names before `=` inside a text: names containing these...
const CPGW_COOKIES: &[&str] = &["jsessionid", "sessionid", "xsessuuid", "usersession"];
/// ...or ending in one of these words (too short to look for inside other words).
const CPGW_COOKIE_WORDS: &[&str] = &["api", "ssoid"];

/// Where a name was found: as a JSON key, or before `=`/`:` inside a text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Where {
    Key,
    Text,
}

/// The kind a name before `=` or `:` inside a text names (`token=...`, `JSESSIONID=...`,
/// `"password": ...`). Stricter than for keys: words common in prose and path words do not
/// count, since a broker message may well say `file: ...`.
pub(super) fn assigned_name_kind(name: &str, separator: u8) -> Option<MaterialKind> {
    let words = key_words(name);
    if separator == b'=' {
        let joined: String = words.concat();
        let cpgw_cookie = CPGW_COOKIES.iter().any(|cookie| joined.contains(cookie))
            || words
                .last()
                .is_some_and(|word| CPGW_COOKIE_WORDS.contains(&word.as_str()));
        if cpgw_cookie {
            return Some(MaterialKind::Cookie);
        }
    }
    classify(&words, Where::Text)
}

fn classify(words: &[String], place: Where) -> Option<MaterialKind> {
    let counts = |word: &str| place == Where::Key || !TOO_GENERIC_IN_TEXT.contains(&word);
    let joined: String = words.concat();
    let cursor = words.iter().any(|w| w == "cursor");
    for (kind, candidates) in KEY_WORDS {
        if *kind == MaterialKind::LocalPath && (cursor || place == Where::Text) {
            continue;
        }
        let named = words
            .iter()
            .any(|w| counts(w) && candidates.contains(&w.as_str()))
            || (counts(&joined) && candidates.contains(&joined.as_str()))
            || JOINED.iter().any(|(j, k)| k == kind && *j == joined)
            || (*kind == MaterialKind::Secret
                && (joined.contains("apikey") || joined.contains("privatekey")));
        if named {
            return Some(*kind);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_past_the_bound_are_uninspectable() {
        assert_eq!(sensitive_key(&"k".repeat(MAX_KEY_BYTES)), None);
        assert_eq!(
            sensitive_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Some(MaterialKind::Uninspectable)
        );
        assert!(removed_from_responses(&"k".repeat(MAX_KEY_BYTES + 1)));
    }

    #[test]
    fn words_run_together_name_what_they_spell_and_nothing_more() {
        assert_eq!(classify_words("c_o_o_k_i_e"), Some(MaterialKind::Cookie));
        assert_eq!(classify_words("p.w.d"), Some(MaterialKind::Credential));
        // Run together, ordinary argument names spell nothing sensitive.
        for key in [
            "symbol",
            "order_id",
            "take_profit",
            "stop_loss",
            "idempotency_key",
            "cash_amount",
            "limit_price",
            "timeout_seconds",
            "trail_percent",
            "page_cursor",
            "cursor_path",
        ] {
            assert_eq!(classify_words(key), None, "{key}");
        }
    }

    #[test]
    fn names_inside_text_are_held_to_specific_words() {
        for (name, separator, kind) in [
            ("jsessionid", b'=', Some(MaterialKind::Cookie)),
            ("x-sess-uuid", b'=', Some(MaterialKind::Cookie)),
            ("user_session", b'=', Some(MaterialKind::Cookie)),
            ("ibkr.api", b'=', Some(MaterialKind::Cookie)),
            ("access_token", b'=', Some(MaterialKind::Token)),
            ("jsessionid", b':', Some(MaterialKind::Token)),
            ("password", b':', Some(MaterialKind::Credential)),
            ("client_secret", b'=', Some(MaterialKind::Secret)),
            ("session_token", b':', Some(MaterialKind::Token)),
            ("authorization", b':', Some(MaterialKind::Authorization)),
            // Common in prose, or paths: these count as keys but not inside a text.
            ("session", b':', None),
            ("login", b':', None),
            ("username", b'=', None),
            ("file", b':', None),
            ("path", b'=', None),
            ("api", b':', None),
            ("cursor", b':', None),
            ("page", b'=', None),
        ] {
            assert_eq!(assigned_name_kind(name, separator), kind, "{name}");
        }
    }

    #[test]
    fn internal_cpgw_keys_are_removed_in_any_form() {
        for key in ["MAC", "ＭＡＣ", "server\u{200B}Info", "serverInfo", "hmds"] {
            assert!(removed_from_responses(key), "{key:?}");
        }
        assert!(!removed_from_responses("symbol"));
    }
}
