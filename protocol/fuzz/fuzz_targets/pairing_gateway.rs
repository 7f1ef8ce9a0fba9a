//! See `protocol_fuzz::pairing_gateway` for the input and the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol_fuzz::pairing_gateway(data));
