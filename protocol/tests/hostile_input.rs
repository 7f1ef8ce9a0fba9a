#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is the failure report
//! Arbitrary bytes from the network must be refused, never panic and never advance state.
//!
//! The properties are the fuzz targets' own bodies (`protocol/fuzz/src/lib.rs`, see
//! docs/fuzzing.md), run here on random inputs on every `cargo test`: the coverage-guided
//! fuzzer searches far deeper, this keeps the targets building and holding in CI.

#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_refuse_or_round_trip(data in bytes(2048)) {
        fuzz::decoders(&data);
    }

    #[test]
    fn canonical_json_is_idempotent(text in ".{0,64}") {
        fuzz::canonical_json(text.as_bytes());
    }

    #[test]
    fn canonical_json_of_number_like_text(text in "-?[0-9]{1,20}(\\.[0-9]{1,8})?([eE][-+]?[0-9]{1,3})?") {
        fuzz::canonical_json(text.as_bytes());
    }

    #[test]
    fn relay_requests_refuse_or_validate(data in bytes(512)) {
        fuzz::relay_request(&data);
    }

    #[test]
    fn pairing_without_the_code_never_confirms(data in bytes(256)) {
        fuzz::pairing_gateway(&data);
    }
}

proptest! {
    // Each case performs a whole Noise handshake.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn handshake_responder_refuses_garbage_and_reads_real_hellos(data in bytes(1100)) {
        fuzz::handshake_responder(&data);
    }

    #[test]
    fn forged_tampered_replayed_reordered_and_reflected_records_never_open(data in bytes(512)) {
        fuzz::record_open(&data);
    }

    #[test]
    fn record_scripts_open_exactly_the_in_order_prefix(script in bytes(64)) {
        let mut data = vec![2u8];
        data.extend(script);
        fuzz::record_open(&data);
    }
}

/// Every input the fuzzer kept (the minimised corpora committed under `protocol/fuzz/corpus/`,
/// one folder per target) replays through its target's body: what the fuzzer explored once
/// stays explored on every test run.
#[test]
fn committed_fuzz_corpora_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    type Body = fn(&[u8]);
    let targets: [(&str, Body); 6] = [
        ("decoders", fuzz::decoders),
        ("record_open", fuzz::record_open),
        ("handshake_responder", fuzz::handshake_responder),
        ("pairing_gateway", fuzz::pairing_gateway),
        ("canonical_json", fuzz::canonical_json),
        ("relay_request", fuzz::relay_request),
    ];
    for (name, body) in targets {
        let folder = root.join(name);
        let entries = std::fs::read_dir(&folder)
            .unwrap_or_else(|error| panic!("{}: {error}", folder.display()));
        let mut replayed = 0usize;
        for entry in entries {
            let path = entry.unwrap().path();
            body(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
        assert!(replayed > 0, "the {name} corpus is empty");
    }
}
