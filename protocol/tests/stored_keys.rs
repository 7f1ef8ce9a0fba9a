#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is the failure report
//! A key read back from a store costs no scalar multiplication; one from untrusted input does.
//!
//! Its own test binary with one test: the counter is process-wide, and no other test runs in
//! this process to move it.

use protocol::identity::{PublicKey, StaticKeypair, low_order_checks};

#[test]
fn only_the_validating_constructor_runs_the_low_order_check() {
    let key = StaticKeypair::from_secret_bytes([3u8; 32]).public();
    let text = key.to_hex();

    let before = low_order_checks();
    for _ in 0..100 {
        assert_eq!(PublicKey::from_stored_hex(&text).unwrap(), key);
    }
    assert_eq!(low_order_checks(), before, "from_stored_hex ran the check");

    assert_eq!(PublicKey::from_hex(&text).unwrap(), key);
    assert_eq!(
        low_order_checks(),
        before + 1,
        "from_hex must run the check"
    );
}
