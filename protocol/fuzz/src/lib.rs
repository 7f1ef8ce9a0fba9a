//! Fixtures shared by the fuzz targets: a deterministic RNG and an established pair of
//! transports, so that every input replays exactly.
#![forbid(unsafe_code)]

use protocol::handshake::{ClientHello, InitiatorHandshake, ResponderHandshake, ServerHello};
use protocol::identity::StaticKeypair;
use protocol::transport::Transport;

/// Fills every byte with the same value: the fuzzer, not the RNG, supplies the variety.
pub struct FixedRng(pub u8);

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes([self.0; 8])
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

/// The gateway's static key in every target.
pub fn gateway_key() -> StaticKeypair {
    StaticKeypair::from_secret_bytes([0x62; 32])
}

/// A completed Noise IK handshake: (sidecar transport, gateway transport).
pub fn established() -> (Transport, Transport) {
    let sidecar = StaticKeypair::from_secret_bytes([0x51; 32]);
    let gateway = gateway_key();
    let hello = ClientHello {
        protocol_version: protocol::PROTOCOL_VERSION,
        sidecar_id: "s".into(),
        remote_instance_id: "g".into(),
        timestamp_ms: 1,
        sidecar_version: "fuzz".into(),
    };
    let Ok((initiator, msg1)) =
        InitiatorHandshake::start(&sidecar, &gateway.public(), &hello, &mut FixedRng(1))
    else {
        panic!("fixture: handshake start failed");
    };
    let Ok(pending) = ResponderHandshake::read_init(&gateway, &msg1, &mut FixedRng(2)) else {
        panic!("fixture: read_init failed");
    };
    let Ok((msg2, gateway_transport)) = pending.accept(&ServerHello {
        protocol_version: protocol::PROTOCOL_VERSION,
        session_id: [0; 16],
        instance_id: "g".into(),
        session_ttl_ms: 1,
        heartbeat_interval_ms: 1,
        heartbeat_timeout_ms: 2,
    }) else {
        panic!("fixture: accept failed");
    };
    let Ok((sidecar_transport, _)) = initiator.finish(&msg2) else {
        panic!("fixture: finish failed");
    };
    (sidecar_transport, gateway_transport)
}
