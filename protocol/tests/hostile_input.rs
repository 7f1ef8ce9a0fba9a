#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
//! Arbitrary bytes from the network must be refused, never panic and never advance state.

use proptest::prelude::*;
use protocol::frame::Frame;
use protocol::handshake::ResponderHandshake;
use protocol::identity::StaticKeypair;
use protocol::pairing::{self, PairFinish, PairStart};
use protocol::wire::WireMessage;

struct FixedRng(u8);
impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        u32::from(self.0)
    }
    fn next_u64(&mut self) -> u64 {
        u64::from(self.0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(self.0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(self.0);
        Ok(())
    }
}
impl rand_core::CryptoRng for FixedRng {}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wire_and_frame_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = WireMessage::decode(&bytes);
        let _ = Frame::decode(&bytes);
        let _ = pairing::decode::<PairStart>(&bytes);
        let _ = pairing::decode::<PairFinish>(&bytes);
    }

    #[test]
    fn handshake_responder_refuses_garbage(bytes in prop::collection::vec(any::<u8>(), 0..1100)) {
        let gateway = StaticKeypair::from_secret_bytes([0x62; 32]);
        prop_assert!(ResponderHandshake::read_init(&gateway, &bytes, &mut FixedRng(3)).is_err());
    }
}

fn established() -> (
    protocol::transport::Transport,
    protocol::transport::Transport,
) {
    use protocol::handshake::{ClientHello, InitiatorHandshake, ServerHello};
    let sidecar = StaticKeypair::from_secret_bytes([0x51; 32]);
    let gateway = StaticKeypair::from_secret_bytes([0x62; 32]);
    let hello = ClientHello {
        protocol_version: protocol::PROTOCOL_VERSION,
        sidecar_id: "s".into(),
        remote_instance_id: "g".into(),
        timestamp_ms: 1,
        sidecar_version: "t".into(),
    };
    let (initiator, msg1) =
        InitiatorHandshake::start(&sidecar, &gateway.public(), &hello, &mut FixedRng(1)).unwrap();
    let pending = ResponderHandshake::read_init(&gateway, &msg1, &mut FixedRng(2)).unwrap();
    let (msg2, gateway_transport) = pending
        .accept(&ServerHello {
            protocol_version: protocol::PROTOCOL_VERSION,
            session_id: [0; 16],
            instance_id: "g".into(),
            session_ttl_ms: 1,
            heartbeat_interval_ms: 1,
            heartbeat_timeout_ms: 2,
        })
        .unwrap();
    let (sidecar_transport, _) = initiator.finish(&msg2).unwrap();
    (sidecar_transport, gateway_transport)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_records_close_the_transport_without_advancing(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let (mut sidecar, mut gateway) = established();
        prop_assert!(gateway.open(&bytes).is_err());
        prop_assert_eq!(gateway.received_records(), 0);
        prop_assert!(gateway.is_closed());
        // The sidecar's genuine record is refused too once the transport closed.
        let record = sidecar.seal(&Frame::Ping { seq: 1 }).unwrap();
        prop_assert!(gateway.open(&record).is_err());
    }
}
