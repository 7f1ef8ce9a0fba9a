//! Every decoder of peer-chosen bytes: refuse or decode, never panic; a decoded frame
//! re-encodes to bytes that decode and re-encode to themselves. (Compared as bytes: a frame
//! may carry a NaN progress value, which the gateway drops before it reaches an MCP client,
//! and NaN is not equal to itself.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame::Frame;
use protocol::pairing::{self, PairFinish, PairFinishReply, PairStart, PairStartReply};
use protocol::wire::WireMessage;

fuzz_target!(|data: &[u8]| {
    let _ = WireMessage::decode(data);
    let _ = pairing::decode::<PairStart>(data);
    let _ = pairing::decode::<PairStartReply>(data);
    let _ = pairing::decode::<PairFinish>(data);
    let _ = pairing::decode::<PairFinishReply>(data);
    if let Ok(frame) = Frame::decode(data) {
        let encoded = frame.encode().expect("a decoded frame re-encodes");
        let again = Frame::decode(&encoded).expect("a re-encoded frame decodes");
        assert_eq!(again.encode().ok(), Some(encoded));
    }
});
