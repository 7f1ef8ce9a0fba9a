//! RFC 8785 canonicalization of arbitrary text: refuse or canonicalize, never panic; the
//! canonical form is a fixed point and parses to the same JSON value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::canonical;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical_form) = canonical::canonicalize_str(text) else {
        return;
    };
    let canonical_text = std::str::from_utf8(&canonical_form).expect("canonical JSON is UTF-8");
    assert_eq!(
        canonical::canonicalize_str(canonical_text).ok().as_deref(),
        Some(canonical_form.as_slice()),
        "canonicalization is not idempotent"
    );
    let parsed: serde_json::Value =
        serde_json::from_str(canonical_text).expect("canonical JSON parses");
    assert_eq!(
        canonical::canonicalize(&parsed).ok().as_deref(),
        Some(canonical_form.as_slice())
    );
});
