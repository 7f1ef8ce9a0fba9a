//! The fuzz targets' bodies and their fixtures. Each `fuzz_targets/<name>.rs` hands libFuzzer's
//! input to the function of the same name; `protocol/tests/hostile_input.rs` includes this file
//! and runs every body on random inputs in the ordinary test suite, so the targets build and
//! hold on every CI run. Every body is deterministic (the RNG is a fixed-byte stand-in), so a
//! crash file replays exactly.
//!
//! Each body panics when its property fails; that is the report.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a panic is the finding

use protocol::canonical;
use protocol::envelope::RelayRequest;
use protocol::frame::Frame;
use protocol::handshake::{ClientHello, InitiatorHandshake, ResponderHandshake, ServerHello};
use protocol::identity::StaticKeypair;
use protocol::pairing::{
    self, GatewayPairing, PairFinish, PairFinishReply, PairStart, PairStartReply, PairingCode,
};
use protocol::transport::Transport;
use protocol::wire::WireMessage;
use std::sync::OnceLock;

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

/// The gateway's static key in every target. Deriving a public key is a scalar multiplication,
/// so keys are derived once per process, not once per run.
pub fn gateway_key() -> StaticKeypair {
    static KEY: OnceLock<StaticKeypair> = OnceLock::new();
    KEY.get_or_init(|| StaticKeypair::from_secret_bytes([0x62; 32]))
        .clone()
}

/// The sidecar key `[byte; 32]`, derived once per process.
fn sidecar_key(byte: u8) -> StaticKeypair {
    static KEYS: [OnceLock<StaticKeypair>; 256] = [const { OnceLock::new() }; 256];
    KEYS[usize::from(byte)]
        .get_or_init(|| StaticKeypair::from_secret_bytes([byte; 32]))
        .clone()
}

fn server_hello() -> ServerHello {
    ServerHello {
        protocol_version: protocol::PROTOCOL_VERSION,
        session_id: [0; 16],
        instance_id: "g".into(),
        user_id_hash: [0; 32],
        pairing_id: [0; 16],
        journal_anchor: None,
        session_ttl_ms: 1,
        heartbeat_interval_ms: 1,
        heartbeat_timeout_ms: 2,
    }
}

/// A completed Noise IK handshake: (sidecar transport, gateway transport). A fuzz build
/// performs the handshake once and starts every run from a copy of its result (the handshake
/// has its own target); the ordinary test build, which has no way to copy a transport, performs
/// it each time.
pub fn established() -> (Transport, Transport) {
    #[cfg(fuzzing)]
    {
        static PAIR: OnceLock<(Transport, Transport)> = OnceLock::new();
        let (sidecar, gateway) = PAIR.get_or_init(handshake);
        (
            sidecar.duplicate_for_fuzzing(),
            gateway.duplicate_for_fuzzing(),
        )
    }
    #[cfg(not(fuzzing))]
    handshake()
}

fn handshake() -> (Transport, Transport) {
    let sidecar = sidecar_key(0x51);
    let gateway = gateway_key();
    let hello = ClientHello {
        protocol_version: protocol::PROTOCOL_VERSION,
        sidecar_id: "s".into(),
        remote_instance_id: "g".into(),
        timestamp_ms: 1,
        sidecar_version: "fuzz".into(),
        max_concurrent_requests: 8,
    };
    let (initiator, msg1) =
        InitiatorHandshake::start(&sidecar, &gateway.public(), &hello, &mut FixedRng(1)).unwrap();
    let pending = ResponderHandshake::read_init(&gateway, &msg1, &mut FixedRng(2)).unwrap();
    let (msg2, gateway_transport) = pending.accept(&server_hello()).unwrap();
    let (sidecar_transport, _) = initiator.finish(&msg2).unwrap();
    (sidecar_transport, gateway_transport)
}

/// Every decoder of peer-chosen bytes refuses or decodes, never panics; a decoded frame
/// re-encodes to bytes that decode and re-encode to themselves. (Compared as bytes: a frame may
/// carry a NaN progress value, which the gateway drops before it reaches an MCP client, and
/// NaN is not equal to itself.)
pub fn decoders(data: &[u8]) {
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
}

/// The record layer under attack. The first byte picks the attack:
/// - 0: the rest is a record of the attacker's own making;
/// - 1: a genuine record with the rest XORed in;
/// - 2: the rest is a script of seals and deliveries: genuine records delivered out of order,
///   replayed, and the gateway's own record reflected back at it.
///
/// A record opens only if the peer sealed it and it is the next one in order; anything else
/// closes the transport without advancing its counter, and nothing opens after that.
pub fn record_open(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut sidecar, mut gateway) = established();
    match mode % 3 {
        0 => forged_record(&mut sidecar, &mut gateway, rest.to_vec()),
        1 => {
            let mut record = sidecar.seal(&Frame::Ping { seq: 7 }).unwrap();
            let changed = record
                .iter_mut()
                .zip(rest)
                .fold(false, |changed, (byte, flip)| {
                    *byte ^= flip;
                    changed || *flip != 0
                });
            if changed {
                forged_record(&mut sidecar, &mut gateway, record);
            } else {
                assert_eq!(gateway.open(&record).ok(), Some(Frame::Ping { seq: 7 }));
            }
        }
        _ => record_script(&mut sidecar, &mut gateway, rest),
    }
}

fn forged_record(sidecar: &mut Transport, gateway: &mut Transport, record: Vec<u8>) {
    assert!(
        gateway.open(&record).is_err(),
        "a record the sidecar never sealed opened"
    );
    assert_eq!(gateway.received_records(), 0);
    assert!(gateway.is_closed());
    let genuine = sidecar.seal(&Frame::Ping { seq: 8 }).unwrap();
    assert!(gateway.open(&genuine).is_err());
}

fn record_script(sidecar: &mut Transport, gateway: &mut Transport, script: &[u8]) {
    let reflected = gateway.seal(&Frame::Ping { seq: u64::MAX }).unwrap();
    let mut sealed: Vec<Vec<u8>> = Vec::new();
    let mut expected_next: u64 = 0;
    let mut closed = false;
    let mut ops = script.iter();
    while let Some(op) = ops.next() {
        let delivered = match op % 3 {
            0 => {
                let seq = sealed.len() as u64;
                sealed.push(sidecar.seal(&Frame::Ping { seq }).unwrap());
                continue;
            }
            1 => {
                let Some(&pick) = ops.next() else { return };
                if sealed.is_empty() {
                    continue;
                }
                let index = usize::from(pick) % sealed.len();
                (gateway.open(&sealed[index]), Some(index as u64))
            }
            _ => (gateway.open(&reflected), None),
        };
        match delivered {
            (Ok(frame), Some(index)) => {
                assert!(!closed, "a record opened on a closed transport");
                assert_eq!(index, expected_next, "a record opened out of order");
                assert_eq!(frame, Frame::Ping { seq: index });
                expected_next += 1;
            }
            (Ok(_), None) => panic!("the gateway opened its own record"),
            (Err(_), index) => {
                assert!(
                    closed || index != Some(expected_next),
                    "the next genuine record was refused"
                );
                closed = true;
            }
        }
        assert_eq!(gateway.received_records(), expected_next);
        assert_eq!(gateway.is_closed(), closed);
    }
}

/// The gateway reading a first handshake message. The first byte picks the input:
/// - even: arbitrary bytes, which are refused (making one that decrypts needs the gateway's
///   public key and a Diffie-Hellman computation no byte mutation performs);
/// - odd: a real message 1 from a sidecar key and a hello built from the rest (any protocol
///   version, timestamp and strings), which is refused or read back exactly as sent, and
///   refused whenever the version is not ours.
pub fn handshake_responder(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let gateway = gateway_key();
    if mode % 2 == 0 {
        assert!(ResponderHandshake::read_init(&gateway, rest, &mut FixedRng(3)).is_err());
        return;
    }
    let mut fields = rest.split(|byte| *byte == 0xff);
    let mut next = || fields.next().unwrap_or_default();
    let numbers = next();
    let mut version = [0u8; 2];
    let mut timestamp = [0u8; 8];
    for (slot, byte) in version.iter_mut().chain(timestamp.iter_mut()).zip(numbers) {
        *slot = *byte;
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let hello = ClientHello {
        protocol_version: u16::from_le_bytes(version),
        sidecar_id: text(next()),
        remote_instance_id: text(next()),
        timestamp_ms: u64::from_le_bytes(timestamp),
        sidecar_version: text(next()),
        max_concurrent_requests: u16::from_le_bytes([version[1], version[0]]),
    };
    let sidecar = sidecar_key(mode);
    let Ok((_, msg1)) =
        InitiatorHandshake::start(&sidecar, &gateway.public(), &hello, &mut FixedRng(4))
    else {
        return;
    };
    if let Ok(pending) = ResponderHandshake::read_init(&gateway, &msg1, &mut FixedRng(5)) {
        assert_eq!(hello.protocol_version, protocol::PROTOCOL_VERSION);
        assert_eq!(pending.hello, hello);
        assert_eq!(pending.remote_static, sidecar.public());
    }
}

/// The gateway's side of a pairing exchange fed by an attacker who does not know the code: an
/// arbitrary SPAKE2 message (the first 33 bytes), then an arbitrary `PairFinish` (the rest, in
/// its wire encoding). Every step may refuse, none may panic, and no confirmation made without
/// the code is accepted.
pub fn pairing_gateway(data: &[u8]) {
    let code = PairingCode::from_parts("ABCD", "EFGH-JKMN").unwrap();
    let (pake, finish) = data.split_at(data.len().min(33));
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
}

/// RFC 8785 canonicalization of arbitrary text refuses or succeeds, never panics; the canonical
/// form is a fixed point and is what canonicalizing the parsed value gives.
pub fn canonical_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical_form) = canonical::canonicalize_str(text) else {
        return;
    };
    let canonical_text = std::str::from_utf8(&canonical_form).expect("canonical JSON is UTF-8");
    assert_eq!(
        canonical::canonicalize_str(canonical_text).ok().as_deref(),
        Some(canonical_form.as_slice()),
        "canonicalization is not idempotent"
    );
    let parsed: serde_json::Value =
        serde_json::from_str(canonical_text).expect("canonical JSON parses");
    assert_eq!(
        canonical::canonicalize(&parsed).ok().as_deref(),
        Some(canonical_form.as_slice())
    );
}

/// A relay request as the sidecar receives it, from a gateway it need not trust. The hash is
/// recomputed over the fuzzed payload first (a fuzzer cannot forge SHA-256), so validation's
/// later checks are reached: it refuses or accepts, never panics, and an accepted request's
/// payload is canonical JSON that parses.
pub fn relay_request(data: &[u8]) {
    let Ok(mut request) = postcard::from_bytes::<RelayRequest>(data) else {
        return;
    };
    request.payload_hash = canonical::payload_hash(&request.tool_name, &request.payload);
    if request.validate().is_ok() {
        let arguments = request.arguments().expect("a valid payload parses");
        assert_eq!(
            canonical::canonicalize(&arguments).ok().as_deref(),
            Some(request.payload.as_slice())
        );
    }
}
