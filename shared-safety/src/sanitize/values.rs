//! Classifying string values by their shape: authorization headers, cookies, JWTs, private
//! keys and local filesystem paths, whatever key they sit under.

use super::MaterialKind;
use super::decode::{self, Budget, Uninspectable};

/// Longer string values are not inspected but refused (requests) or redacted (responses). Tool
/// arguments are at most 64 characters by their schemas, and broker strings (names, messages)
/// a few hundred; the bound keeps the cost of inspecting one value small.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

fn looks_like_jwt(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 3 && parts.len() != 5 {
        return false;
    }
    let base64url = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    parts[0].starts_with("eyJ") && parts[..2].iter().all(|p| base64url(p)) && text.len() >= 24
}

/// Classifies a string value as sensitive, whatever key it sits under.
///
/// The value is inspected in each of its decoded forms (see `decode::forms`): as it is,
/// folded (NFKC, without invisible characters and marks), and percent-decoded, so
/// `Ｂｅａｒｅｒ x`, `Bear\u{200B}er x` and `Bearer%20x` are all authorization headers. A value
/// that cannot be inspected within bounds is [`MaterialKind::Uninspectable`].
pub fn sensitive_value(value: &str) -> Option<MaterialKind> {
    if value.len() > MAX_VALUE_BYTES {
        return Some(MaterialKind::Uninspectable);
    }
    let mut budget = Budget::for_input(value.len());
    inspect(value, &mut budget).unwrap_or(Some(MaterialKind::Uninspectable))
}

/// Classifies `text` in each of its forms.
fn inspect(text: &str, budget: &mut Budget) -> Result<Option<MaterialKind>, Uninspectable> {
    let forms = decode::forms(text, budget)?;
    Ok(forms.iter().find_map(|form| surface(form)))
}

/// The shapes of sensitive material, checked on one form of a value.
fn surface(value: &str) -> Option<MaterialKind> {
    let trimmed = value.trim();
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("bearer ")
        || lower.starts_with("basic ")
        || lower.starts_with("authorization:")
    {
        return Some(MaterialKind::Authorization);
    }
    if lower.starts_with("cookie:") || lower.starts_with("set-cookie:") {
        return Some(MaterialKind::Cookie);
    }
    for marker in [
        "x-sess-uuid=",
        "jsessionid=",
        "sessionid=",
        "ssoid=",
        "api=",
        "user_session=",
    ] {
        if lower.contains(marker) {
            return Some(MaterialKind::Cookie);
        }
    }
    if lower.contains("-----begin ")
        || lower.starts_with("ssh-rsa ")
        || lower.starts_with("ssh-ed25519 ")
    {
        return Some(MaterialKind::Secret);
    }
    if trimmed.split_whitespace().any(looks_like_jwt) {
        return Some(MaterialKind::Token);
    }
    if looks_like_local_path(trimmed) {
        return Some(MaterialKind::LocalPath);
    }
    None
}

fn looks_like_local_path(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    if lower.contains("file://") {
        return true;
    }
    for token in
        text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '=' || c == ',')
    {
        if token.starts_with("~/") || token.starts_with("~\\") || token == "~" {
            return true;
        }
        if token.starts_with("\\\\") {
            return true;
        }
        let bytes = token.as_bytes();
        if bytes.len() >= 3
            && bytes[0].is_ascii_alphabetic()
            && bytes[1] == b':'
            && (bytes[2] == b'\\' || bytes[2] == b'/')
        {
            return true;
        }
        if let Some(rest) = token.strip_prefix('/') {
            let first = rest.split('/').next().unwrap_or("");
            if !rest.is_empty()
                && matches!(
                    first,
                    "home"
                        | "Users"
                        | "root"
                        | "etc"
                        | "var"
                        | "tmp"
                        | "opt"
                        | "usr"
                        | "private"
                        | "Volumes"
                        | "mnt"
                        | "proc"
                        | "dev"
                        | "srv"
                )
            {
                return true;
            }
        }
    }
    false
}
