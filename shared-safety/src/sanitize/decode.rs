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

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::fold::fold;

/// Percent-decoding layers inspected. Double encoding (`%253D`) is common in URLs passed
/// through another URL; three layers leave room for one more.
pub(super) const MAX_PERCENT_LAYERS: usize = 3;

/// The shortest run of base64 characters that is decoded (9 bytes). Shorter runs are most
/// ordinary values (symbols, amounts, dates, order ids) and too short to hide a usable secret.
pub(super) const MIN_BASE64_RUN: usize = 12;

/// A decoding that is not text throughout is inspected in its printable ASCII stretches of at
/// least this many characters, so material wrapped in a few binary bytes is still found while
/// random bytes, whose printable stretches are short (one in 8 million random 16-byte
/// stretches is printable), are not read as text.
const MIN_TEXT_SEGMENT: usize = 16;

/// How much longer than its input a folded text may grow (plus [`FOLD_SLACK`]) before the input
/// is uninspectable. Real text grows little under NFKC (`㍿` becomes `株式会社`, four times
/// as long, but within a name); texts made of the few code points that expand most (U+FDFA
/// becomes 18 letters) exist to make the fold slow, and are refused after twice their length.
const MAX_FOLD_GROWTH: usize = 2;
const FOLD_SLACK: usize = 64;

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

/// [`fold`] limited to, and charged to, the budget, and to [`MAX_FOLD_GROWTH`].
fn fold_within(text: &str, budget: &mut Budget) -> Result<Option<String>, Uninspectable> {
    let growth_bound = text
        .len()
        .saturating_mul(MAX_FOLD_GROWTH)
        .saturating_add(FOLD_SLACK);
    let folded = fold(text, budget.remaining().min(growth_bound)).map_err(|_| Uninspectable)?;
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

/// Standard and URL-safe base64 alike (the URL-safe characters are mapped first), padding
/// optional, trailing bits ignored: the sanitizer asks what a text could decode to, not
/// whether it is canonical.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn is_base64_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'-' | b'_')
}

/// Decodes standard or URL-safe base64 without padding, dropping a last lone character (which
/// no encoding produces). `None` if a byte is outside both alphabets.
pub(super) fn decode_base64(encoded: &[u8]) -> Option<Vec<u8>> {
    let usable = encoded.len() - usize::from(encoded.len() % 4 == 1);
    let standard: Vec<u8> = encoded
        .get(..usable)?
        .iter()
        .map(|byte| match byte {
            b'-' => b'+',
            b'_' => b'/',
            other => *other,
        })
        .collect();
    LENIENT.decode(standard).ok()
}

/// Maximal runs of base64 characters (either alphabet) at least [`MIN_BASE64_RUN`] long.
/// Padding, dots, `=` and everything else end a run, so `token=<base64>` and the parts of a
/// JWT are runs of their own.
pub(super) fn base64_runs(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii() && is_base64_byte(c as u8)))
        .filter(|run| run.len() >= MIN_BASE64_RUN)
}

/// The decodings of a run at each of the four alignments: base64 glued to other letters
/// (`xYmVhcmVy...`) decodes correctly from one of them, after a few bytes of noise. Each
/// alignment costs the run's length.
pub(super) fn base64_decodings(
    run: &str,
    budget: &mut Budget,
) -> Result<Vec<Vec<u8>>, Uninspectable> {
    let mut decodings = Vec::with_capacity(4);
    for offset in 0..4 {
        let Some(body) = run.as_bytes().get(offset..) else {
            break;
        };
        if body.len() < MIN_BASE64_RUN {
            break;
        }
        budget.spend(body.len())?;
        if let Some(decoded) = decode_base64(body) {
            decodings.push(decoded);
        }
    }
    Ok(decodings)
}

/// The text a decoding holds: all of it when it is text throughout (valid UTF-8 without
/// control characters other than tab and line breaks), else each stretch of at least
/// [`MIN_TEXT_SEGMENT`] printable ASCII characters (with tabs and line breaks). Random bytes
/// decode to text throughout only when short and by chance, and hold long printable ASCII
/// stretches almost never; material an attacker wraps in binary is ASCII and long enough.
pub(super) fn text_segments(decoded: &[u8]) -> Vec<String> {
    if let Ok(text) = std::str::from_utf8(decoded)
        && !text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return vec![text.to_string()];
    }
    decoded
        .split(|b| !((0x20..0x7F).contains(b) || matches!(b, b'\t' | b'\n' | b'\r')))
        .filter(|segment| segment.len() >= MIN_TEXT_SEGMENT)
        .map(|segment| String::from_utf8_lossy(segment).into_owned())
        .collect()
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
    fn base64_decodes_either_alphabet_with_or_without_padding() {
        assert_eq!(
            decode_base64(b"QmVhcmVyIHg").as_deref(),
            Some(&b"Bearer x"[..])
        );
        assert_eq!(
            decode_base64(b"QmVhcmVyIHg=").as_deref(),
            Some(&b"Bearer x"[..])
        );
        // `>>>?` is `Pj4-Pw` in the URL-safe alphabet and `Pj4+Pw` in the standard one.
        assert_eq!(decode_base64(b"Pj4-Pw").as_deref(), Some(&b">>>?"[..]));
        assert_eq!(decode_base64(b"Pj4+Pw").as_deref(), Some(&b">>>?"[..]));
        assert_eq!(
            decode_base64(b"QmVhcmVyIHgx"),
            decode_base64(b"QmVhcmVyIHgxA")
        );
        assert_eq!(decode_base64(b"a.b"), None);
    }

    #[test]
    fn base64_runs_are_long_runs_of_either_alphabet() {
        let runs: Vec<&str> =
            base64_runs("token=QmVhcmVyIGFiYw==;AAPL eyJhbGciOiJub25lIn0.e30.").collect();
        assert_eq!(runs, ["QmVhcmVyIGFiYw", "eyJhbGciOiJub25lIn0"]);
    }

    #[test]
    fn glued_base64_decodes_at_one_of_four_alignments() {
        // base64("Bearer abc.def.ghi") glued behind one to four other letters.
        for glue in ["x", "xy", "xyz", "wxyz"] {
            let run = format!("{glue}QmVhcmVyIGFiYy5kZWYuZ2hp");
            let mut budget = Budget::for_input(run.len());
            let decodings = base64_decodings(&run, &mut budget).unwrap();
            assert!(
                decodings.iter().any(|d| text_segments(d)
                    .iter()
                    .any(|t| t.contains("Bearer abc.def.ghi"))),
                "{run}"
            );
        }
    }

    #[test]
    fn text_segments_keep_text_and_long_readable_stretches_only() {
        assert_eq!(text_segments(b"{\"page\":2}"), ["{\"page\":2}"]);
        assert_eq!(text_segments("Société".as_bytes()), ["Société"]);
        assert_eq!(
            text_segments(b"\x00\x01\xffBearer abcdef123456\x00ok"),
            ["Bearer abcdef123456"]
        );
        // Short stretches, and non-ASCII in a decoding that is not text throughout, are noise.
        assert!(text_segments(b"\x00ab\x01cd\xfe").is_empty());
        assert!(text_segments("\x00~/Т`ԃpGK=0_9ٓ".as_bytes()).is_empty());
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
        let mut small = Budget {
            remaining: 100,
            spent: 0,
        };
        assert_eq!(
            forms("\u{FDFA}".repeat(10).as_str(), &mut small).err(),
            Some(Uninspectable)
        );
        // And at twice its input: U+FDFA grows elevenfold.
        let expanding = "\u{FDFA}".repeat(1000);
        let mut budget = Budget::for_input(expanding.len());
        assert_eq!(forms(&expanding, &mut budget).err(), Some(Uninspectable));
        assert!(budget.spent() < 3 * expanding.len(), "{}", budget.spent());
        // Ordinary growth is inspected: `㍿` (3 bytes) folds to `株式会社` (12 bytes).
        let name = "トヨタ自動車㍿";
        assert_eq!(all_forms(name).len(), 2);
    }
}
