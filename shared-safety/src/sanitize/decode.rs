//! The decoded forms a key or value is classified in, and the work bound that keeps decoding
//! linear in the input.
//!
//! Sensitive material can hide behind an encoding that the classifier's shapes do not see:
//! `Bearer%20eyJ...`, `JSESSIONID%3Dabc`, full-width letters. [`forms`] lists the text as it
//! is, folded (see `fold`), and percent-decoded up to [`MAX_PERCENT_LAYERS`] times (each layer
//! folded again, since a decoded `%EF%BD%83` is a full-width `ｃ`). Text still percent-encoded
//! after that many layers is refused as uninspectable: no ordinary value is encoded so often.
//!
//! Every form and decoding spends from a [`Budget`] proportional to the input's length, so a
//! hostile input cannot make inspection slow: when the budget runs out the input is refused as
//! uninspectable instead of being partly inspected.

use std::borrow::Cow;

use super::fold::fold;

/// Percent-decoding layers inspected. Double encoding (`%253D`) is common in URLs passed
/// through another URL; three layers leave room for one more.
pub(super) const MAX_PERCENT_LAYERS: usize = 3;

/// Work allowed per input byte, counted in bytes produced or scanned. Ordinary values use a
/// few units per byte (see the tests); only stacked encodings built to amplify work get near
/// this.
const WORK_PER_BYTE: usize = 32;

/// Work allowed on top of the per-byte allowance, so that short values with a short decoding
/// are never refused for their overhead.
const WORK_BASE: usize = 4096;

/// The input cannot be inspected within its bounds; it is refused or removed, not passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Uninspectable;

/// Work left for inspecting one key or value.
#[derive(Debug)]
pub(super) struct Budget {
    remaining: usize,
    spent: usize,
}

impl Budget {
    /// The budget for an input of `len` bytes.
    pub(super) fn for_input(len: usize) -> Budget {
        Budget {
            remaining: len.saturating_mul(WORK_PER_BYTE).saturating_add(WORK_BASE),
            spent: 0,
        }
    }

    /// Spends `units`, or reports that the input cannot be inspected within bounds.
    pub(super) fn spend(&mut self, units: usize) -> Result<(), Uninspectable> {
        self.remaining = self.remaining.checked_sub(units).ok_or(Uninspectable)?;
        self.spent += units;
        Ok(())
    }

    pub(super) fn remaining(&self) -> usize {
        self.remaining
    }

    /// Work spent so far; the tests hold ordinary values to a small multiple of their length.
    #[cfg(test)]
    pub(super) fn spent(&self) -> usize {
        self.spent
    }
}

/// The forms `text` is classified in: as it is, folded, and percent-decoded layer by layer
/// (each layer folded). Forms equal to the one before are left out.
pub(super) fn forms<'a>(
    text: &'a str,
    budget: &mut Budget,
) -> Result<Vec<Cow<'a, str>>, Uninspectable> {
    budget.spend(text.len())?;
    let mut forms = vec![Cow::Borrowed(text)];
    if let Some(folded) = fold_within(text, budget)? {
        forms.push(Cow::Owned(folded));
    }
    for _ in 0..MAX_PERCENT_LAYERS {
        let Some(decoded) = forms.last().and_then(|last| percent_decode_once(last)) else {
            return Ok(forms);
        };
        budget.spend(decoded.len())?;
        let decoded = fold_within(&decoded, budget)?.unwrap_or(decoded);
        forms.push(Cow::Owned(decoded));
    }
    if forms
        .last()
        .and_then(|last| percent_decode_once(last))
        .is_some()
    {
        return Err(Uninspectable);
    }
    Ok(forms)
}

/// [`fold`] limited to, and charged to, the budget.
fn fold_within(text: &str, budget: &mut Budget) -> Result<Option<String>, Uninspectable> {
    let folded = fold(text, budget.remaining()).map_err(|_| Uninspectable)?;
    if let Some(folded) = &folded {
        budget.spend(folded.len())?;
    }
    Ok(folded)
}

/// One layer of percent-decoding: each `%XX` (two hex digits) becomes its byte, everything
/// else stays. `None` when there is no escape to decode. Bytes that do not form UTF-8 become
/// U+FFFD, which no sensitive shape contains. `+` is left alone: it is a space only in form
/// encoding, and base64 uses it; the shapes that care treat `+` as a separator themselves.
pub(super) fn percent_decode_once(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(index + 1).and_then(|b| hex_value(*b)),
                bytes.get(index + 2).and_then(|b| hex_value(*b)),
            )
        {
            decoded.push(high << 4 | low);
            changed = true;
            index += 3;
            continue;
        }
        decoded.push(byte);
        index += 1;
    }
    changed.then(|| String::from_utf8_lossy(&decoded).into_owned())
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_forms(text: &str) -> Vec<String> {
        let mut budget = Budget::for_input(text.len());
        forms(text, &mut budget)
            .unwrap()
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }

    #[test]
    fn percent_decoding_decodes_escapes_and_keeps_the_rest() {
        for (text, expected) in [
            ("Bearer%20abc", Some("Bearer abc")),
            ("JSESSIONID%3dabc", Some("JSESSIONID=abc")),
            ("%2Fhome%2Fu", Some("/home/u")),
            ("100%", None),
            ("50%off", None),
            ("%zz%4", None),
            ("%4", None),
            ("a%41%", Some("aA%")),
            ("%FF", Some("\u{FFFD}")),
            ("%E2%80%8B", Some("\u{200B}")),
            ("Bearer+abc", None),
        ] {
            assert_eq!(percent_decode_once(text).as_deref(), expected, "{text:?}");
        }
    }

    #[test]
    fn forms_decode_layers_and_fold_each() {
        assert_eq!(all_forms("AAPL"), ["AAPL"]);
        assert_eq!(
            all_forms("JSESSIONID%253Dabc"),
            ["JSESSIONID%253Dabc", "JSESSIONID%3Dabc", "JSESSIONID=abc"]
        );
        // A decoded full-width letter is folded in the same layer.
        assert_eq!(all_forms("%EF%BD%83ookie"), ["%EF%BD%83ookie", "cookie"]);
        // Full-width percent signs are folded before decoding.
        assert_eq!(all_forms("a％3Db"), ["a％3Db", "a%3Db", "a=b"]);
    }

    #[test]
    fn text_encoded_past_the_last_layer_is_uninspectable() {
        let mut text = "JSESSIONID=abc".to_string();
        for layer in 1..=MAX_PERCENT_LAYERS + 1 {
            text = text.replace('%', "%25").replace('=', "%3D");
            let mut budget = Budget::for_input(text.len());
            let result = forms(&text, &mut budget);
            if layer <= MAX_PERCENT_LAYERS {
                assert!(result.is_ok(), "{layer} layers");
            } else {
                assert_eq!(result.err(), Some(Uninspectable), "{layer} layers");
            }
        }
    }

    #[test]
    fn the_budget_refuses_work_past_its_allowance() {
        // Each form is charged by its length.
        let mut budget = Budget::for_input(14);
        forms("JSESSIONID%3Da", &mut budget).unwrap();
        assert_eq!(budget.spent(), 14 + 12);
        let mut budget = Budget::for_input(1);
        assert_eq!(budget.spend(WORK_PER_BYTE + WORK_BASE), Ok(()));
        assert_eq!(budget.spend(1), Err(Uninspectable));
        // Folding is charged too, and stops at what is left.
        let expanding = "\u{FDFA}".repeat(1000);
        let mut small = Budget {
            remaining: expanding.len() * 2,
            spent: 0,
        };
        assert_eq!(forms(&expanding, &mut small).err(), Some(Uninspectable));
    }
}
