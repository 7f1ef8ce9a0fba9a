//! The per-connection handshake: Noise IK (`Noise_IK_25519_ChaChaPoly_SHA256`) on the keys
//! pinned at pairing, with fresh ephemeral keys from injected entropy.
//!
//! ```text
//! prologue = "ibkr-relay/v1" || u16be(PROTOCOL_VERSION)
//! sidecar -> gateway   msg1: e, es, s, ss   payload = ClientHello
//! gateway -> sidecar   msg2: e, ee, se      payload = ServerHello
//! sidecar -> gateway   first transport record (any frame): key confirmation
//! ```
//! Message 1 alone proves nothing about liveness (it can be replayed), so:
//! - `ClientHello.timestamp_ms` must be strictly greater than the last one the gateway accepted
//!   from that sidecar key (as WireGuard does with TAI64N), which rejects replayed handshakes;
//! - the gateway registers the session only after the first record from the sidecar decrypts,
//!   which needs the ephemeral-ephemeral secret only the live sidecar holds.

use crate::PROTOCOL_VERSION;
pub use crate::envelope::JournalRef;
use crate::identity::{PublicKey, StaticKeypair};
use crate::limits::{MAX_HANDSHAKE_MESSAGE, MAX_SHORT_STRING};
use crate::noise::{NOISE_PARAMS, RelayResolver, prologue, prologue_for};
use crate::transport::{Role, Transport};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Payload of message 1 (encrypted to the gateway's static key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    pub protocol_version: u16,
    /// The sidecar id recorded at pairing.
    pub sidecar_id: String,
    /// The gateway instance id the sidecar paired with; a session presented to another
    /// instance is refused.
    pub remote_instance_id: String,
    /// Unix time in milliseconds, strictly increasing per sidecar key (anti-replay).
    pub timestamp_ms: u64,
    pub sidecar_version: String,
    /// How many calls the sidecar runs at once on this session (at least 1). The gateway
    /// sends no more than this and queues the rest, so a busy sidecar never has to refuse
    /// a call the gateway could have held back.
    pub max_concurrent_requests: u16,
}

/// Payload of message 2 (encrypted to the sidecar's static and ephemeral keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    pub protocol_version: u16,
    pub session_id: [u8; 16],
    pub instance_id: String,
    /// [`user_id_hash`] of the OAuth subject whose calls this session will carry. The sidecar
    /// refuses to serve a gateway that names another user than the one it pinned at pairing.
    pub user_id_hash: [u8; 32],
    /// The gateway's id of the pairing this session runs on (pinned by the sidecar).
    pub pairing_id: [u8; 16],
    /// The newest entry of the sidecar's trade journal the gateway has on record for this
    /// pairing (from its audit trail), if any: the sidecar checks that its journal still holds
    /// it, which detects a journal cut back or replaced by an older copy.
    pub journal_anchor: Option<JournalRef>,
    /// The relay session expires this long after the sidecar reads this message unless renewed.
    pub session_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

/// Why a handshake failed. None of these reveal anything to the peer beyond "refused".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake message malformed or too large")]
    Malformed,
    #[error("handshake message failed authentication")]
    DecryptFailed,
    #[error("peer used protocol version {0}, expected {PROTOCOL_VERSION}")]
    VersionMismatch(u16),
    #[error("handshake payload field empty or too long")]
    BadField,
    #[error("peer static key is a low-order point")]
    BadPeerKey,
    #[error("internal handshake state error")]
    State,
}

/// The hash of an OAuth subject as the handshake names it: SHA-256 over a domain label and
/// the subject's bytes.
pub fn user_id_hash(user_id: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"ibkr-relay/v1 user id\n");
    hasher.update(user_id.as_bytes());
    hasher.finalize().into()
}

fn map_snow(error: snow::Error) -> HandshakeError {
    match error {
        snow::Error::Decrypt => HandshakeError::DecryptFailed,
        snow::Error::Dh => HandshakeError::BadPeerKey,
        snow::Error::Input => HandshakeError::Malformed,
        _ => HandshakeError::State,
    }
}

fn check_short(text: &str) -> Result<(), HandshakeError> {
    if text.is_empty() || text.len() > MAX_SHORT_STRING {
        return Err(HandshakeError::BadField);
    }
    Ok(())
}

fn draw_ephemeral(rng: &mut impl CryptoRngCore) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    bytes
}

fn split_transport(
    mut state: snow::HandshakeState,
    role: Role,
) -> Result<Transport, HandshakeError> {
    if !state.is_handshake_finished() {
        return Err(HandshakeError::State);
    }
    // Noise Split(): the first key encrypts initiator -> responder, the second the reverse.
    let (initiator_to_responder, responder_to_initiator) = state.dangerously_get_raw_split();
    Ok(match role {
        Role::Sidecar => Transport::new(role, initiator_to_responder, responder_to_initiator),
        Role::Gateway => Transport::new(role, responder_to_initiator, initiator_to_responder),
    })
}

/// Seals message 1 (`hello` to `gateway`'s static key) under `prologue`.
fn write_message_1(
    local: &StaticKeypair,
    gateway: &PublicKey,
    hello: &ClientHello,
    ephemeral: [u8; 32],
    prologue: &[u8],
) -> Result<(snow::HandshakeState, Vec<u8>), HandshakeError> {
    let params = NOISE_PARAMS.parse().map_err(|_| HandshakeError::State)?;
    let mut state = snow::Builder::with_resolver(params, Box::new(RelayResolver::new(ephemeral)))
        .local_private_key(local.secret_bytes())
        .and_then(|b| b.remote_public_key(&gateway.0))
        .and_then(|b| b.prologue(prologue))
        .and_then(|b| b.build_initiator())
        .map_err(map_snow)?;
    let payload =
        Zeroizing::new(postcard::to_stdvec(hello).map_err(|_| HandshakeError::Malformed)?);
    let mut message = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    let length = state
        .write_message(&payload, &mut message)
        .map_err(map_snow)?;
    message.truncate(length);
    Ok((state, message))
}

/// The sidecar's side of the handshake, between message 1 and message 2.
pub struct InitiatorHandshake {
    state: snow::HandshakeState,
}

impl InitiatorHandshake {
    /// Builds message 1 for the pinned gateway key.
    pub fn start(
        local: &StaticKeypair,
        gateway: &PublicKey,
        hello: &ClientHello,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(InitiatorHandshake, Vec<u8>), HandshakeError> {
        Self::start_with_ephemeral(local, gateway, hello, draw_ephemeral(rng))
    }

    /// Message 1 as a sidecar of an older protocol `version` seals it (its prologue), for
    /// tests of how a gateway answers such a sidecar. Not for talking to a gateway.
    #[doc(hidden)]
    pub fn start_as_version(
        version: u16,
        local: &StaticKeypair,
        gateway: &PublicKey,
        hello: &ClientHello,
    ) -> Result<Vec<u8>, HandshakeError> {
        write_message_1(local, gateway, hello, [9; 32], &prologue_for(version))
            .map(|(_, message)| message)
    }

    pub(crate) fn start_with_ephemeral(
        local: &StaticKeypair,
        gateway: &PublicKey,
        hello: &ClientHello,
        ephemeral: [u8; 32],
    ) -> Result<(InitiatorHandshake, Vec<u8>), HandshakeError> {
        check_short(&hello.sidecar_id)?;
        check_short(&hello.remote_instance_id)?;
        if hello.max_concurrent_requests == 0 {
            return Err(HandshakeError::BadField);
        }
        if gateway.is_low_order() {
            return Err(HandshakeError::BadPeerKey);
        }
        let (state, message) = write_message_1(local, gateway, hello, ephemeral, &prologue())?;
        Ok((InitiatorHandshake { state }, message))
    }

    /// Reads message 2. On success the gateway is authenticated and live.
    pub fn finish(mut self, message: &[u8]) -> Result<(Transport, ServerHello), HandshakeError> {
        if message.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(HandshakeError::Malformed);
        }
        let mut payload = Zeroizing::new(vec![0u8; MAX_HANDSHAKE_MESSAGE]);
        let length = self
            .state
            .read_message(message, &mut payload)
            .map_err(map_snow)?;
        let hello: ServerHello =
            postcard::from_bytes(&payload[..length]).map_err(|_| HandshakeError::Malformed)?;
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch(hello.protocol_version));
        }
        check_short(&hello.instance_id)?;
        let transport = split_transport(self.state, Role::Sidecar)?;
        Ok((transport, hello))
    }
}

/// The gateway's side after reading message 1: the caller checks the sidecar's static key
/// against its pairing records and the timestamp against the last accepted one, then calls
/// [`PendingResponder::accept`] (or drops this value to refuse).
pub struct PendingResponder {
    state: snow::HandshakeState,
    pub remote_static: PublicKey,
    pub hello: ClientHello,
}

impl std::fmt::Debug for PendingResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingResponder")
            .field("remote_static", &self.remote_static)
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

/// The gateway's side of the handshake.
pub struct ResponderHandshake;

impl ResponderHandshake {
    /// Reads message 1 with the gateway's static key.
    pub fn read_init(
        local: &StaticKeypair,
        message: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<PendingResponder, HandshakeError> {
        Self::read_init_with_ephemeral(local, message, draw_ephemeral(rng))
    }

    pub(crate) fn read_init_with_ephemeral(
        local: &StaticKeypair,
        message: &[u8],
        ephemeral: [u8; 32],
    ) -> Result<PendingResponder, HandshakeError> {
        if message.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(HandshakeError::Malformed);
        }
        let params = NOISE_PARAMS.parse().map_err(|_| HandshakeError::State)?;
        let prologue = prologue();
        let mut state =
            snow::Builder::with_resolver(params, Box::new(RelayResolver::new(ephemeral)))
                .local_private_key(local.secret_bytes())
                .and_then(|b| b.prologue(&prologue))
                .and_then(|b| b.build_responder())
                .map_err(map_snow)?;
        let mut payload = Zeroizing::new(vec![0u8; MAX_HANDSHAKE_MESSAGE]);
        let length = state
            .read_message(message, &mut payload)
            .map_err(map_snow)?;
        let hello: ClientHello =
            postcard::from_bytes(&payload[..length]).map_err(|_| HandshakeError::Malformed)?;
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch(hello.protocol_version));
        }
        check_short(&hello.sidecar_id)?;
        check_short(&hello.remote_instance_id)?;
        if hello.max_concurrent_requests == 0 {
            return Err(HandshakeError::BadField);
        }
        let remote: [u8; 32] = state
            .get_remote_static()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(HandshakeError::State)?;
        let remote_static = PublicKey(remote);
        if remote_static.is_low_order() {
            return Err(HandshakeError::BadPeerKey);
        }
        Ok(PendingResponder {
            state,
            remote_static,
            hello,
        })
    }
}

impl ResponderHandshake {
    /// For a message 1 that did not decrypt: the older protocol version it was sealed with
    /// ([`crate::OLDER_PROTOCOL_VERSIONS`]), if any. Only this gateway's static key can open
    /// it, so a match says the sidecar is paired with this gateway and needs an upgrade, not
    /// that the keys disagree. Costs one Noise read per older version; only failed handshakes
    /// pay it.
    pub fn older_version_of(local: &StaticKeypair, message: &[u8]) -> Option<u16> {
        if message.len() > MAX_HANDSHAKE_MESSAGE {
            return None;
        }
        crate::OLDER_PROTOCOL_VERSIONS
            .iter()
            .copied()
            .find(|version| {
                let Ok(params) = NOISE_PARAMS.parse() else {
                    return false;
                };
                let prologue = prologue_for(*version);
                let Ok(mut state) =
                    snow::Builder::with_resolver(params, Box::new(RelayResolver::new([0; 32])))
                        .local_private_key(local.secret_bytes())
                        .and_then(|b| b.prologue(&prologue))
                        .and_then(|b| b.build_responder())
                else {
                    return false;
                };
                let mut payload = Zeroizing::new(vec![0u8; MAX_HANDSHAKE_MESSAGE]);
                state.read_message(message, &mut payload).is_ok()
            })
    }
}

impl PendingResponder {
    /// Writes message 2 and returns the gateway's transport. The session is not confirmed until
    /// the first record from the sidecar opens with it.
    pub fn accept(mut self, hello: &ServerHello) -> Result<(Vec<u8>, Transport), HandshakeError> {
        check_short(&hello.instance_id)?;
        let payload = postcard::to_stdvec(hello).map_err(|_| HandshakeError::Malformed)?;
        let mut message = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let length = self
            .state
            .write_message(&payload, &mut message)
            .map_err(map_snow)?;
        message.truncate(length);
        let transport = split_transport(self.state, Role::Gateway)?;
        Ok((message, transport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn sidecar_key() -> StaticKeypair {
        StaticKeypair::from_secret_bytes([0x51; 32])
    }
    fn gateway_key() -> StaticKeypair {
        StaticKeypair::from_secret_bytes([0x62; 32])
    }
    fn client_hello() -> ClientHello {
        ClientHello {
            protocol_version: PROTOCOL_VERSION,
            sidecar_id: "sidecar-example".into(),
            remote_instance_id: "remote-1".into(),
            timestamp_ms: 1_800_000_000_000,
            sidecar_version: "0.1.0".into(),
            max_concurrent_requests: 32,
        }
    }
    fn server_hello() -> ServerHello {
        ServerHello {
            protocol_version: PROTOCOL_VERSION,
            session_id: [0x33; 16],
            instance_id: "remote-1".into(),
            user_id_hash: user_id_hash("local-user"),
            pairing_id: [0x44; 16],
            journal_anchor: Some(JournalRef {
                seq: 7,
                hash: [0x55; 32],
            }),
            session_ttl_ms: 3_600_000,
            heartbeat_interval_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
        }
    }

    struct Run {
        msg1: Vec<u8>,
        msg2: Vec<u8>,
        first_record: Vec<u8>,
        sidecar: Transport,
        gateway: Transport,
    }

    fn run(
        sidecar: &StaticKeypair,
        pinned_gateway: &PublicKey,
        gateway: &StaticKeypair,
    ) -> Result<Run, HandshakeError> {
        let (initiator, msg1) = InitiatorHandshake::start_with_ephemeral(
            sidecar,
            pinned_gateway,
            &client_hello(),
            [0xe1; 32],
        )?;
        let pending = ResponderHandshake::read_init_with_ephemeral(gateway, &msg1, [0xe2; 32])?;
        assert_eq!(pending.remote_static, sidecar.public());
        assert_eq!(pending.hello, client_hello());
        let (msg2, mut gateway_transport) = pending.accept(&server_hello())?;
        let (mut sidecar_transport, hello) = initiator.finish(&msg2)?;
        assert_eq!(hello, server_hello());
        let first_record = sidecar_transport
            .seal(&Frame::Ping { seq: 0 })
            .map_err(|_| HandshakeError::State)?;
        assert_eq!(
            gateway_transport
                .open(&first_record)
                .map_err(|_| HandshakeError::State)?,
            Frame::Ping { seq: 0 }
        );
        Ok(Run {
            msg1,
            msg2,
            first_record,
            sidecar: sidecar_transport,
            gateway: gateway_transport,
        })
    }

    #[test]
    fn handshake_completes_and_keys_agree() {
        let mut run = run(&sidecar_key(), &gateway_key().public(), &gateway_key()).unwrap();
        let reply = run.gateway.seal(&Frame::Pong { seq: 0 }).unwrap();
        assert_eq!(run.sidecar.open(&reply).unwrap(), Frame::Pong { seq: 0 });
    }

    #[test]
    fn committed_test_vectors_match() {
        // Fixed static and ephemeral keys make the whole exchange deterministic; the vectors
        // under protocol/vectors/ pin the wire format (docs/protocol.md describes them).
        let run = run(&sidecar_key(), &gateway_key().public(), &gateway_key()).unwrap();
        if std::env::var_os("UPDATE_VECTORS").is_some() {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors");
            std::fs::write(format!("{dir}/handshake_msg1.hex"), hex::encode(&run.msg1)).unwrap();
            std::fs::write(format!("{dir}/handshake_msg2.hex"), hex::encode(&run.msg2)).unwrap();
            std::fs::write(
                format!("{dir}/handshake_first_record.hex"),
                hex::encode(&run.first_record),
            )
            .unwrap();
        }
        assert_eq!(
            hex::encode(&run.msg1),
            include_str!("../vectors/handshake_msg1.hex").trim()
        );
        assert_eq!(
            hex::encode(&run.msg2),
            include_str!("../vectors/handshake_msg2.hex").trim()
        );
        assert_eq!(
            hex::encode(&run.first_record),
            include_str!("../vectors/handshake_first_record.hex").trim()
        );
    }

    #[test]
    fn wrong_pinned_gateway_key_fails() {
        let impostor = StaticKeypair::from_secret_bytes([0x77; 32]);
        // The sidecar pinned `gateway_key` but an impostor answers: it cannot read message 1.
        let (_, msg1) = InitiatorHandshake::start_with_ephemeral(
            &sidecar_key(),
            &gateway_key().public(),
            &client_hello(),
            [0xe1; 32],
        )
        .unwrap();
        assert_eq!(
            ResponderHandshake::read_init_with_ephemeral(&impostor, &msg1, [0xe2; 32]).unwrap_err(),
            HandshakeError::DecryptFailed
        );
    }

    #[test]
    fn replayed_message_one_cannot_confirm() {
        // An attacker replays a recorded message 1: the gateway can read it (so the timestamp
        // check must refuse it), and even if answered, the attacker cannot produce the key
        // confirmation record because it lacks the sidecar's ephemeral secret.
        let first = run(&sidecar_key(), &gateway_key().public(), &gateway_key()).unwrap();
        let pending =
            ResponderHandshake::read_init_with_ephemeral(&gateway_key(), &first.msg1, [0xe3; 32])
                .unwrap();
        assert_eq!(pending.hello.timestamp_ms, client_hello().timestamp_ms);
        let (_, mut replay_transport) = pending.accept(&server_hello()).unwrap();
        // The only record the attacker has is the one from the original session.
        assert!(replay_transport.open(&first.first_record).is_err());
    }

    #[test]
    fn low_order_gateway_key_is_refused() {
        let zero = PublicKey([0u8; 32]);
        assert_eq!(
            InitiatorHandshake::start_with_ephemeral(
                &sidecar_key(),
                &zero,
                &client_hello(),
                [1; 32]
            )
            .err(),
            Some(HandshakeError::BadPeerKey)
        );
    }

    #[test]
    fn tampered_message_two_fails() {
        let (initiator, msg1) = InitiatorHandshake::start_with_ephemeral(
            &sidecar_key(),
            &gateway_key().public(),
            &client_hello(),
            [0xe1; 32],
        )
        .unwrap();
        let pending =
            ResponderHandshake::read_init_with_ephemeral(&gateway_key(), &msg1, [0xe2; 32])
                .unwrap();
        let (mut msg2, _) = pending.accept(&server_hello()).unwrap();
        msg2[40] ^= 1;
        assert!(initiator.finish(&msg2).is_err());
    }

    #[test]
    fn a_hello_that_announces_no_concurrency_is_refused_on_both_sides() {
        let mut hello = client_hello();
        hello.max_concurrent_requests = 0;
        let gateway = gateway_key();
        assert_eq!(
            InitiatorHandshake::start_with_ephemeral(
                &sidecar_key(),
                &gateway.public(),
                &hello,
                [7; 32]
            )
            .err(),
            Some(HandshakeError::BadField)
        );
        // A peer that skips its own check still meets the gateway's: build msg1 by hand.
        let params = NOISE_PARAMS.parse().unwrap();
        let gateway_public = gateway.public();
        let prologue = prologue();
        let sidecar = sidecar_key();
        let mut state = snow::Builder::with_resolver(params, Box::new(RelayResolver::new([7; 32])))
            .local_private_key(sidecar.secret_bytes())
            .and_then(|b| b.remote_public_key(&gateway_public.0))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .unwrap();
        let payload = postcard::to_stdvec(&hello).unwrap();
        let mut message = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let length = state.write_message(&payload, &mut message).unwrap();
        assert_eq!(
            ResponderHandshake::read_init_with_ephemeral(&gateway, &message[..length], [8; 32])
                .err(),
            Some(HandshakeError::BadField)
        );
    }

    #[test]
    fn a_message_of_an_older_version_is_recognised_as_such_and_nothing_else_is() {
        let gateway = gateway_key();
        let mut hello = client_hello();
        hello.protocol_version = 2;
        let old =
            InitiatorHandshake::start_as_version(2, &sidecar_key(), &gateway.public(), &hello)
                .unwrap();
        assert_eq!(
            ResponderHandshake::read_init_with_ephemeral(&gateway, &old, [8; 32]).err(),
            Some(HandshakeError::DecryptFailed)
        );
        assert_eq!(
            ResponderHandshake::older_version_of(&gateway, &old),
            Some(2)
        );
        // Sealed to another gateway's key: not an older version, a key mismatch.
        let other = StaticKeypair::from_secret_bytes([0x73; 32]);
        assert_eq!(ResponderHandshake::older_version_of(&other, &old), None);
        // A current message is not "older" either.
        let (_, current) = InitiatorHandshake::start_with_ephemeral(
            &sidecar_key(),
            &gateway.public(),
            &client_hello(),
            [7; 32],
        )
        .unwrap();
        assert_eq!(
            ResponderHandshake::older_version_of(&gateway, &current),
            None
        );
        assert_eq!(
            ResponderHandshake::older_version_of(&gateway, b"garbage"),
            None
        );
    }
}
