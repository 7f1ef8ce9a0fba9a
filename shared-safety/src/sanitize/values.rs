//! Classifying string values by their shape: authorization headers, cookies, JWTs, private
//! keys and local filesystem paths, whatever key they sit under, and in whatever encoding.

use std::borrow::Cow;
use std::collections::HashSet;

use super::MaterialKind;
use super::decode::{self, Budget, Uninspectable};
use super::shapes;

/// Longer request values are not inspected but refused. Tool arguments are at most 64
/// characters by their schemas; the bound keeps what one hostile value can cost small.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Longer response strings are not inspected but redacted. Responses come from the broker
/// through the sidecar, not from the agent, and a result may legitimately carry a long text,
/// so the bound is the largest relay frame: a string that fits in no frame never leaves the
/// laptop anyway, and one that does is inspected whole (about 100 ms for 1 MiB).
pub const MAX_RESPONSE_VALUE_BYTES: usize = protocol::limits::MAX_FRAME_PLAINTEXT;

/// Base64 inside base64 is decoded this deep (`base64(base64(secret))`); deeper text is
/// inspected in its percent-decoded and folded forms only.
const MAX_BASE64_DEPTH: usize = 2;

/// Classifies a string value as sensitive, whatever key it sits under.
///
/// The value is inspected in each of its decoded forms (see `decode::forms`): as it is,
/// folded (NFKC, without invisible characters and marks), and percent-decoded, so
/// `Ｂｅａｒｅｒ x`, `Bear\u{200B}er x` and `Bearer%20x` are all authorization headers. Then
/// every long run of base64 in those forms is decoded and its text inspected the same way,
/// two levels deep. A value that cannot be inspected within bounds is
/// [`MaterialKind::Uninspectable`].
pub fn sensitive_value(value: &str) -> Option<MaterialKind> {
    classify_value(value, MAX_VALUE_BYTES)
}

/// [`sensitive_value`] with the length bound given: [`MAX_VALUE_BYTES`] for requests,
/// [`MAX_RESPONSE_VALUE_BYTES`] for responses.
pub(super) fn classify_value(value: &str, max_bytes: usize) -> Option<MaterialKind> {
    if value.len() > max_bytes {
        return Some(MaterialKind::Uninspectable);
    }
    let mut budget = Budget::for_input(value.len());
    inspect(value, 0, &mut budget).unwrap_or(Some(MaterialKind::Uninspectable))
}

/// Classifies `text` in each of its forms, then what its base64 runs decode to.
fn inspect(
    text: &str,
    depth: usize,
    budget: &mut Budget,
) -> Result<Option<MaterialKind>, Uninspectable> {
    let forms = decode::forms(text, budget)?;
    if let Some(kind) = surface(&forms, depth > 0) {
        return Ok(Some(kind));
    }
    if depth >= MAX_BASE64_DEPTH {
        return Ok(None);
    }
    // Forms often share their base64 runs (folding and percent-decoding leave them alone);
    // each distinct run is decoded once. Most values have a single form and need no record.
    let mut decoded_runs = HashSet::new();
    for form in &forms {
        for run in decode::base64_runs(form) {
            if forms.len() > 1 && !decoded_runs.insert(run) {
                continue;
            }
            for decoding in decode::base64_decodings(run, budget)? {
                for text in decode::text_segments(&decoding) {
                    if let Some(kind) = inspect(&text, depth + 1, budget)? {
                        return Ok(Some(kind));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// The shapes of sensitive material, each checked on every form before the next shape, so
/// that an encoded value is reported as the same kind as the plain one (`Bearer%20eyJ...` is
/// an authorization header, like `Bearer eyJ...`, though its raw form also holds a JWT).
/// `decoded` is set for text decoded from base64 (see `shapes::local_path`).
fn surface(forms: &[Cow<'_, str>], decoded: bool) -> Option<MaterialKind> {
    let lowered: Vec<(&str, String)> = forms
        .iter()
        .map(|form| (form.as_ref(), form.to_ascii_lowercase()))
        .collect();
    let any =
        |shape: &dyn Fn(&str, &str) -> bool| lowered.iter().any(|(text, lower)| shape(text, lower));
    if any(&|text, lower| {
        shapes::header_line(lower, "authorization:") || shapes::authorization_scheme(text, lower)
    }) {
        return Some(MaterialKind::Authorization);
    }
    if any(&|_, lower| shapes::header_line(lower, "cookie:")) {
        return Some(MaterialKind::Cookie);
    }
    if let Some(kind) = lowered
        .iter()
        .find_map(|(_, lower)| shapes::assignment(lower))
    {
        return Some(kind);
    }
    if any(&|_, lower| shapes::private_key(lower)) {
        return Some(MaterialKind::Secret);
    }
    if any(&|text, _| shapes::contains_jwt(text)) {
        return Some(MaterialKind::Token);
    }
    if any(&|text, lower| shapes::local_path(text, lower, decoded)) {
        return Some(MaterialKind::LocalPath);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work spent inspecting `value`, as a multiple of its length.
    fn work_per_byte(value: &str) -> usize {
        let mut budget = Budget::for_input(value.len());
        inspect(value, 0, &mut budget).unwrap();
        budget.spent() / value.len().max(1)
    }

    #[test]
    fn ordinary_values_cost_a_few_units_per_byte() {
        for value in [
            "AAPL",
            "BRK B",
            "189.50",
            "2026-11-21T14:30:00Z",
            "ia-0123456789abcdef01234567",
            "cursor:eyJwYWdlIjoyfQ",
            "rebalance-2026-11-21-aapl-001",
            "3f2c9a4e-7b1d-4c8e-9f2a-5d6e7f8a9b0c",
            "APPLE INC",
        ] {
            assert!(
                work_per_byte(value) <= 12,
                "{value}: {}",
                work_per_byte(value)
            );
        }
    }
}
