//! The gateway's side of a pairing exchange fed by an attacker who does not know the code:
//! an arbitrary SPAKE2 message, then an arbitrary confirmation. Every step may refuse; none
//! may panic, and no confirmation made without the code is ever accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::pairing::{self, GatewayPairing, PairFinish, PairStart, PairingCode};
use protocol_fuzz::FixedRng;

fuzz_target!(|data: &[u8]| {
    let Ok(code) = PairingCode::from_parts("ABCD", "EFGH-JKMN") else {
        panic!("fixture: pairing code");
    };
    // The first 33 bytes (a SPAKE2 message is 33) are the attacker's PAKE message; the rest a
    // PairFinish in its wire encoding.
    let split = data.len().min(33);
    let (pake, finish) = data.split_at(split);
    let start = PairStart {
        protocol_version: protocol::PROTOCOL_VERSION,
        code_id: "ABCD".into(),
        pake: pake.to_vec(),
    };
    let Ok((gateway, _reply)) = GatewayPairing::respond(&code, &start, [0; 16], &mut FixedRng(4))
    else {
        return;
    };
    if let Ok(finish) = pairing::decode::<PairFinish>(finish) {
        assert!(
            gateway.verify(&finish).is_err(),
            "a confirmation made without the code was accepted"
        );
    }
});
