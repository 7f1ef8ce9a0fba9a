//! Folding text to the form the classifier compares: `ｃｏｏｋｉｅ`, `coo\u{200B}kie` and
//! `co\u{0301}okie` must all read as `cookie`.
//!
//! The fold is Unicode NFKC (compatibility forms such as full-width letters, ligatures and
//! circled letters become their plain letters; full-width `＝`, `：`, `％` become ASCII) of the
//! text without default-ignorable code points, format characters (`Cf`), control characters
//! other than tab and line breaks, and combining marks. Those are invisible or decorative to a
//! reader, so an attacker can sprinkle them into a word to break a match; removing them never
//! turns an ordinary trading value into a sensitive one. The folded text is only compared,
//! never forwarded: what is sent on is always the original value.
//!
//! Confusables across scripts (a Cyrillic `с` for a Latin `c`) are not folded: NFKC keeps them
//! apart, and the closed schemas refuse such keys anyway.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Default_Ignorable_Code_Point (Unicode 16 DerivedCoreProperties.txt) together with
/// General_Category=Cf, as sorted, non-overlapping inclusive ranges. Both are stable Unicode
/// properties; a code point added to them by a later Unicode version and missing here is still
/// caught by the closed schemas.
const INVISIBLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),   // soft hyphen
    (0x034F, 0x034F),   // combining grapheme joiner
    (0x0600, 0x0605),   // Arabic number signs (Cf)
    (0x061C, 0x061C),   // Arabic letter mark
    (0x06DD, 0x06DD),   // Arabic end of ayah (Cf)
    (0x070F, 0x070F),   // Syriac abbreviation mark (Cf)
    (0x0890, 0x0891),   // Arabic pound and piastre marks above (Cf)
    (0x08E2, 0x08E2),   // Arabic disputed end of ayah (Cf)
    (0x115F, 0x1160),   // Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),   // Khmer inherent vowels
    (0x180B, 0x180F),   // Mongolian free variation selectors and vowel separator
    (0x200B, 0x200F),   // zero width space, non-joiner, joiner; LRM, RLM
    (0x202A, 0x202E),   // bidirectional embeddings and overrides
    (0x2060, 0x206F),   // word joiner, invisible operators, bidirectional isolates
    (0x3164, 0x3164),   // Hangul filler
    (0xFE00, 0xFE0F),   // variation selectors
    (0xFEFF, 0xFEFF),   // zero width no-break space (byte order mark)
    (0xFFA0, 0xFFA0),   // half-width Hangul filler
    (0xFFF0, 0xFFFB),   // reserved specials; interlinear annotation controls (Cf)
    (0x110BD, 0x110BD), // Kaithi number sign (Cf)
    (0x110CD, 0x110CD), // Kaithi number sign above (Cf)
    (0x13430, 0x1343F), // Egyptian hieroglyph format controls (Cf)
    (0x1BCA0, 0x1BCA3), // shorthand format controls
    (0x1D173, 0x1D17A), // musical symbol format controls
    (0xE0000, 0xE0FFF), // tags, variation selectors supplement
];

/// True for default-ignorable and format characters (see [`INVISIBLE`]).
pub(super) fn is_invisible(c: char) -> bool {
    let point = u32::from(c);
    INVISIBLE
        .binary_search_by(|&(low, high)| {
            if high < point {
                std::cmp::Ordering::Less
            } else if low > point {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Characters the fold drops. Tab and line breaks stay: they separate words and header lines.
fn dropped(c: char) -> bool {
    is_invisible(c) || (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || is_combining_mark(c)
}

/// The folded form of `text`, or `None` when folding changes nothing (printable ASCII, the
/// common case, is returned as `None` without any Unicode work).
///
/// NFKC can lengthen a text (one code point expands to at most 18), so the output is cut at
/// `max_bytes`; a cut is reported as [`FoldTooLong`] so the caller can refuse rather than inspect a
/// truncated form.
pub(super) fn fold(text: &str, max_bytes: usize) -> Result<Option<String>, FoldTooLong> {
    let plain_ascii = text
        .bytes()
        .all(|b| (0x20..0x7F).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r'));
    if plain_ascii {
        return Ok(None);
    }
    let mut folded = String::new();
    // Decompose, drop what is invisible or decorative, then compose again: the result is the
    // NFKC form of the text without those characters.
    for c in text
        .chars()
        .filter(|c| !dropped(*c))
        .nfkd()
        .filter(|c| !dropped(*c))
        .nfkc()
    {
        if folded.len() + c.len_utf8() > max_bytes {
            return Err(FoldTooLong);
        }
        folded.push(c);
    }
    Ok((folded != text).then_some(folded))
}

/// The folded form would have been longer than the caller allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FoldTooLong;

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(text: &str) -> String {
        fold(text, 1 << 20)
            .unwrap()
            .unwrap_or_else(|| text.to_string())
    }

    #[test]
    fn compatibility_forms_become_plain_ascii() {
        for (text, expected) in [
            ("ｃｏｏｋｉｅ", "cookie"),
            ("ＡＵＴＨＯＲＩＺＡＴＩＯＮ", "AUTHORIZATION"),
            ("ＪＳＥＳＳＩＯＮＩＤ＝abc", "JSESSIONID=abc"),
            ("Cookie％3A x", "Cookie%3A x"),
            ("\u{FB01}le://x", "file://x"), // the `fi` ligature
            ("ⓒⓞⓞⓚⓘⓔ", "cookie"),
            ("Bearer\u{00A0}x", "Bearer x"), // no-break space
        ] {
            assert_eq!(folded(text), expected, "{text:?}");
        }
    }

    #[test]
    fn invisible_characters_and_marks_are_dropped() {
        for (text, expected) in [
            ("coo\u{200B}kie", "cookie"),
            ("to\u{200D}ken", "token"),
            ("\u{FEFF}pass\u{00AD}word", "password"),
            ("se\u{2063}cret", "secret"),
            ("au\u{E0041}th", "auth"), // a tag character
            ("co\u{0301}okie", "cookie"),
            ("jwt\u{FE0F}", "jwt"),
            ("bear\u{0000}er", "bearer"),
            ("line\none", "line\none"),
        ] {
            assert_eq!(folded(text), expected, "{text:?}");
        }
    }

    #[test]
    fn plain_ascii_is_left_alone_without_work() {
        assert_eq!(fold("AAPL", 0), Ok(None));
        assert_eq!(fold("BRK B\t12.50\n", 0), Ok(None));
        // Folding that changes nothing is reported as no change too.
        assert_eq!(fold("株式会社", 64), Ok(None));
        // Accents are marks: they go, the letters stay.
        assert_eq!(fold("Société", 64), Ok(Some("Societe".to_string())));
    }

    #[test]
    fn expansion_is_bounded() {
        // U+FDFA decomposes into 18 code points (33 bytes of UTF-8).
        let expanding = "\u{FDFA}".repeat(100);
        assert_eq!(fold(&expanding, 1000), Err(FoldTooLong));
        assert!(fold(&expanding, 4000).is_ok());
    }

    #[test]
    fn the_table_is_sorted_and_disjoint() {
        for pair in INVISIBLE.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
        for c in ['\u{200B}', '\u{2066}', '\u{E0001}', '\u{FEFF}', '\u{00AD}'] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in ['a', ' ', '\u{00A0}', '\u{2010}', '\u{FFFD}'] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }
}
