//! See `protocol_fuzz::decoders` for the input and the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol_fuzz::decoders(data));
