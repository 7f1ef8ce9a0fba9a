//! The shapes of sensitive material in one form of a text (see `values` for the forms).
//!
//! Each check is a single pass, or a pass with constant work per position, so that its cost is
//! linear in the text: the sanitizer runs on hostile input.

use super::MaterialKind;
use super::decode::decode_base64;
use super::keys;

/// The shortest run that is taken for a JWT, as before this module learned to find JWTs
/// inside longer text: the shortest real ones (`alg` `none`, an empty claim set) are longer.
const MIN_JWT_LEN: usize = 24;

/// A name longer than this before `=` or `:` is not looked up (real header, cookie and
/// parameter names are short; this keeps the lookup's work per separator constant).
const MAX_ASSIGNED_NAME: usize = 64;

/// A credential after `Bearer`/`Basic` inside a longer text is scanned this far: past it, the
/// credential is long enough to count as token-like anyway.
const MAX_CREDENTIAL_SCAN: usize = 512;

/// True where a word starts at `index`: at the start of the text or after a byte that is not
/// a letter or digit (`set-cookie:` has `cookie:` at a word start; `biscookie:` does not).
fn at_word_start(lower: &str, index: usize) -> bool {
    index == 0
        || lower
            .as_bytes()
            .get(index - 1)
            .is_some_and(|b| !b.is_ascii_alphanumeric())
}

/// A header line naming `header` (lowercase, with its colon) anywhere in the text: a value
/// that is, or carries, a raw HTTP header.
pub(super) fn header_line(lower: &str, header: &str) -> bool {
    lower
        .match_indices(header)
        .any(|(index, _)| at_word_start(lower, index))
}

/// The token68 alphabet of HTTP credentials (RFC 9110, section 11.2).
fn is_token68_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// A credential that looks generated rather than like a word: long enough, with a digit, a
/// token symbol, or a capital right after a small letter (`Bearer Bonds` and
/// `BASIC ENERGY-SERVICES` are names; `Bearer 9f8e...` and `Bearer aBcD...` are not).
fn token_like(credential: &[u8]) -> bool {
    credential.len() >= 8
        && (credential
            .iter()
            .any(|b| b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'~' | b'+' | b'/' | b'='))
            || credential
                .windows(2)
                .any(|pair| pair[0].is_ascii_lowercase() && pair[1].is_ascii_uppercase()))
}

/// Basic credentials: base64 of printable text with a colon (`user:password`).
fn basic_credentials(credential: &[u8]) -> bool {
    let Some(decoded) = decode_base64(credential) else {
        return false;
    };
    decoded.contains(&b':') && decoded.iter().all(|b| (0x20..0x7F).contains(b))
}

/// `Bearer <token>` or `Basic <credentials>` (scheme and credential separated by spaces, tabs
/// or a form-encoded `+`). As the whole value, any credential counts, as before; inside a
/// longer text, only a token-like credential or decodable Basic credentials, so that names
/// such as `BEARER BONDS` or `BASIC ENERGY SERVICES` pass.
pub(super) fn authorization_scheme(text: &str, lower: &str) -> bool {
    let bytes = text.as_bytes();
    let value_start = lower.len() - lower.trim_start().len();
    let value_end = lower.trim_end().len();
    for scheme in ["bearer", "basic"] {
        // Each byte is scanned as part of at most one credential: an occurrence inside a
        // credential already scanned is skipped, which keeps `bearer+bearer+...` linear.
        let mut scanned_until = 0;
        for (index, _) in lower.match_indices(scheme) {
            if index < scanned_until || !at_word_start(lower, index) {
                continue;
            }
            let after_scheme = index + scheme.len();
            let separators = bytes
                .get(after_scheme..)
                .unwrap_or_default()
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t' | b'+'))
                .count();
            if separators == 0 {
                continue;
            }
            let start = after_scheme + separators;
            let length = bytes
                .get(start..)
                .unwrap_or_default()
                .iter()
                .take(MAX_CREDENTIAL_SCAN)
                .take_while(|b| is_token68_byte(**b))
                .count();
            scanned_until = start + length;
            let Some(credential) = bytes.get(start..start + length) else {
                continue;
            };
            if credential.is_empty() {
                continue;
            }
            let whole_value = index == value_start && start + length == value_end;
            let longer_than_scanned = length == MAX_CREDENTIAL_SCAN;
            if whole_value
                || longer_than_scanned
                || token_like(credential)
                || (scheme == "basic" && basic_credentials(credential))
            {
                return true;
            }
        }
    }
    false
}

/// Bytes of a `name` before `=` or `:` (cookie names, query parameters, JSON keys in text).
fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.')
}

/// `name=value` or `name: value` pairs inside a text whose name is sensitive
/// (`token=eyJ...`, `JSESSIONID=...`, `"password": "..."`, `?access_token=...`). The name
/// may be followed by a closing quote and spaces; the value must not be empty.
pub(super) fn assignment(lower: &str) -> Option<MaterialKind> {
    let bytes = lower.as_bytes();
    // Where the name being read started, and the last name read while only quotes and
    // spaces have followed it.
    let mut name_start: Option<usize> = None;
    let mut name: Option<(usize, usize)> = None;
    for (index, &byte) in bytes.iter().enumerate() {
        if is_name_byte(byte) {
            name_start.get_or_insert(index);
            continue;
        }
        if let Some(start) = name_start.take() {
            name = Some((start, index));
        }
        match byte {
            b'=' | b':' => {
                if let Some((start, end)) = name.take()
                    && end - start <= MAX_ASSIGNED_NAME
                    && worth_looking_up(bytes.get(start..end).unwrap_or_default())
                    && value_follows(bytes, index + 1)
                    && let Some(kind) = lower
                        .get(start..end)
                        .and_then(|name| keys::assigned_name_kind(name, byte))
                {
                    return Some(kind);
                }
            }
            b'"' | b'\'' | b' ' | b'\t' => {}
            _ => name = None,
        }
    }
    None
}

/// Every sensitive name has three letters or more (`api`, `pwd`, `jwt`, `token`, ...): names
/// with fewer, such as the parts of a timestamp (`2026-11-21t14:00`), are not looked up.
fn worth_looking_up(name: &[u8]) -> bool {
    name.iter().filter(|b| b.is_ascii_alphabetic()).count() >= 3
}

/// Something follows a separator at `index` (after at most a few quotes and spaces).
fn value_follows(bytes: &[u8], index: usize) -> bool {
    bytes
        .get(index..)
        .unwrap_or_default()
        .iter()
        .take(4)
        .find(|b| !matches!(b, b'"' | b'\'' | b' ' | b'\t'))
        .is_some_and(|b| !matches!(b, b'\r' | b'\n' | b';' | b',' | b'&' | b'=' | b':'))
}

/// PEM blocks and OpenSSH keys.
pub(super) fn private_key(lower: &str) -> bool {
    let trimmed = lower.trim_start();
    lower.contains("-----begin ")
        || trimmed.starts_with("ssh-rsa ")
        || trimmed.starts_with("ssh-ed25519 ")
}

/// A JWT (`header.payload.signature`, or five parts for JWE) anywhere in the text, including
/// glued to other text (`xyz:eyJ...`, `tokeneyJ...`). A header is recognised by what it
/// decodes to, the start of a JSON object (`{"`, `{ "`, `{\n "`), not by one spelling.
pub(super) fn contains_jwt(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .filter(|run| run.len() >= MIN_JWT_LEN)
        .any(|run| {
            let segments: Vec<&str> = run.split('.').collect();
            segments.windows(3).any(|parts| {
                json_header(parts[0]).is_some_and(|header| {
                    header.len() + parts[1].len() + parts[2].len() + 2 >= MIN_JWT_LEN
                })
            })
        })
}

/// The part of a base64url segment that starts a JSON object header, if any. Candidates are
/// the positions of `ey` and `ew` (the encodings of `{` followed by a quote, a space or a line
/// break); each is checked by decoding eight characters, so the work per position is
/// constant.
fn json_header(segment: &str) -> Option<&str> {
    let bytes = segment.as_bytes();
    bytes
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[0] == b'e' && matches!(pair[1], b'y' | b'w'))
        .find_map(|(index, _)| {
            let candidate = segment.get(index..)?;
            let head = candidate.as_bytes();
            let head = decode_base64(head.get(..8).unwrap_or(head))?;
            let after_brace = head.strip_prefix(b"{")?;
            let first = after_brace
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))?;
            (*first == b'"').then_some(candidate)
        })
}

/// Local filesystem paths: home directories, system roots, `~`, drive letters, UNC shares,
/// `file://` URLs.
///
/// `decoded` is set for text decoded from base64, which may be noise that happens to be
/// printable: there only the unmistakable forms count, a prefix followed by a name (`~/x`,
/// `C:\x`, `\\host`), not a bare `~` or `C:/`.
pub(super) fn local_path(text: &str, lower: &str, decoded: bool) -> bool {
    // Every form below needs one of these; most values have none.
    if !text.contains(['~', '/', '\\']) {
        return false;
    }
    if lower.contains("file://") {
        return true;
    }
    let named_after = |token: &str, prefix: usize| {
        !decoded
            || token
                .as_bytes()
                .get(prefix)
                .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    for token in
        text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '=' || c == ',')
    {
        if (token.starts_with("~/") || token.starts_with("~\\")) && named_after(token, 2) {
            return true;
        }
        if token == "~" && !decoded {
            return true;
        }
        if token.starts_with("\\\\") && named_after(token, 2) {
            return true;
        }
        let bytes = token.as_bytes();
        if bytes.len() >= 3
            && bytes[0].is_ascii_alphabetic()
            && bytes[1] == b':'
            && (bytes[2] == b'\\' || bytes[2] == b'/')
            && named_after(token, 3)
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
