//! Sans-IO relay protocol between the cloud gateway and the laptop sidecar.
//!
//! Nothing in this crate opens a socket, reads a clock or draws randomness of its own:
//! callers inject entropy (`rand_core::CryptoRngCore`) and time (plain numbers), which keeps
//! every state machine deterministic, testable with committed vectors and fuzzable.
//!
//! Map of the crate:
//! - [`identity`]: long-term x25519 static keys (the single-key identity design) and fingerprints.
//! - [`pairing`]: the one-time SPAKE2 pairing exchange that pins both sides' public keys.
//! - [`handshake`]: the per-connection Noise IK handshake on the pinned keys.
//! - [`transport`]: the encrypted record layer with strict per-direction counters.
//! - [`frame`]: what travels inside records (heartbeat, request, response, cancel, go-away, close).
//! - [`wire`]: the outer websocket message (handshake messages or encrypted records).
//! - [`envelope`]: `RelayRequest` / `RelayResponse` and their outcomes.
//! - [`canonical`]: RFC 8785 canonical JSON and the domain-separated payload hash.
//! - [`catalog`]: the tool catalog (names, descriptions, closed JSON schemas, scopes).
//! - [`liveness`]: the heartbeat monitor, driven by the caller's monotonic clock.
//! - [`limits`]: protocol-wide bounds.
#![forbid(unsafe_code)]

pub mod agents;
pub mod canonical;
pub mod catalog;
pub mod envelope;
pub mod frame;
pub mod handshake;
pub mod identity;
pub mod limits;
pub mod liveness;
pub mod pairing;
pub mod transport;
pub mod wire;

mod noise;

/// Version of the relay protocol. Bound into the pairing transcript, the Noise prologue and the
/// handshake payloads, so two builds that disagree on it cannot complete a handshake.
pub const PROTOCOL_VERSION: u16 = 4;

/// Older versions a gateway recognises only to tell such a sidecar to upgrade (a message 1 of
/// another version does not decrypt, which would otherwise read as a key mismatch).
pub const OLDER_PROTOCOL_VERSIONS: &[u16] = &[2, 3];

/// Label bound into every key derivation and hash of this protocol (domain separation). It
/// names the protocol family; the version number is bound separately (version 2 kept the label
/// so that key fingerprints people compare did not change).
pub const PROTOCOL_LABEL: &str = "ibkr-relay/v1";
