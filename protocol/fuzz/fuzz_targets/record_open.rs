//! The record layer under attack. The first byte picks the attack:
//! - even: the rest is a record of the attacker's own making;
//! - odd: a genuine record with bytes of the attacker's choosing XORed in.
//!
//! Either way a record that does not decrypt closes the transport without advancing its
//! counter, and nothing opens after that, not even a genuine record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::Frame;
use protocol_fuzz::established;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut sidecar, mut gateway) = established();
    let record = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut record = sidecar.seal(&Frame::Ping { seq: 7 }).expect("a ping seals");
        for (byte, flip) in record.iter_mut().zip(rest) {
            *byte ^= flip;
        }
        if rest.iter().take(record.len()).all(|flip| *flip == 0) {
            // Nothing changed: the genuine record must open.
            assert_eq!(gateway.open(&record).ok(), Some(Frame::Ping { seq: 7 }));
            return;
        }
        record
    };
    match gateway.open(&record) {
        Ok(_) => panic!("a record the sidecar never sealed opened"),
        Err(_) => {
            assert_eq!(gateway.received_records(), 0);
            assert!(gateway.is_closed());
            let genuine = sidecar.seal(&Frame::Ping { seq: 8 }).expect("a ping seals");
            assert!(gateway.open(&genuine).is_err());
        }
    }
});
