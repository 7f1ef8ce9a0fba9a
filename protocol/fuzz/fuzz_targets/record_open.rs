//! See `protocol_fuzz::record_open` for the input and the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol_fuzz::record_open(data));
