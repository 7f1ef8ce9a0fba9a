//! The gateway reading a first handshake message from an unauthenticated client: arbitrary
//! bytes are refused (only the holder of a static key can produce one that decrypts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::handshake::ResponderHandshake;
use protocol_fuzz::{FixedRng, gateway_key};

fuzz_target!(|data: &[u8]| {
    assert!(ResponderHandshake::read_init(&gateway_key(), data, &mut FixedRng(3)).is_err());
});
