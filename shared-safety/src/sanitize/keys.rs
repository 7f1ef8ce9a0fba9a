//! Classifying JSON object keys: a key names what it holds (`cookie`, `accessToken`,
//! `X-Sess-UUID`), so a sensitive key is refused or removed whatever its value.

use super::MaterialKind;

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

/// Classifies a key name as sensitive.
pub fn sensitive_key(key: &str) -> Option<MaterialKind> {
    let words = key_words(key);
    let joined: String = words.concat();
    let has = |candidates: &[&str]| words.iter().any(|w| candidates.contains(&w.as_str()));
    if has(&["cookie", "cookies"]) || joined == "setcookie" || joined == "xsessuuid" {
        return Some(MaterialKind::Cookie);
    }
    if has(&["authorization", "bearer"]) || joined == "proxyauthorization" {
        return Some(MaterialKind::Authorization);
    }
    if has(&[
        "token",
        "tokens",
        "jwt",
        "jsessionid",
        "sessionid",
        "session",
        "sso",
        "ssoid",
    ]) {
        return Some(MaterialKind::Token);
    }
    if has(&[
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
    ]) {
        return Some(MaterialKind::Credential);
    }
    if has(&["secret", "secrets", "apikey", "privatekey", "signature"])
        || joined.contains("apikey")
        || joined.contains("privatekey")
    {
        return Some(MaterialKind::Secret);
    }
    if has(&[
        "path",
        "file",
        "filename",
        "filepath",
        "dir",
        "directory",
        "home",
    ]) && !has(&["cursor"])
    {
        return Some(MaterialKind::LocalPath);
    }
    None
}
