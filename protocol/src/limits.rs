//! Protocol-wide bounds. Both halves enforce them; a peer that exceeds one has misbehaved.

/// Largest plaintext frame (after reassembly) either side accepts. Tool payloads and results
/// are JSON documents far below this; a bigger one is refused rather than buffered.
pub const MAX_FRAME_PLAINTEXT: usize = 1024 * 1024;

/// Largest websocket message either side accepts: one record (counter + ciphertext + tag)
/// carrying the largest frame, plus postcard overhead.
pub const MAX_WIRE_MESSAGE: usize = MAX_FRAME_PLAINTEXT + 64;

/// Largest handshake or pairing message. Real ones are under 200 bytes.
pub const MAX_HANDSHAKE_MESSAGE: usize = 1024;

/// A transport is retired (the sidecar reconnects and handshakes again) after this many
/// records in one direction, far below the 2^64 nonce space of ChaCha20-Poly1305.
pub const REKEY_AFTER_RECORDS: u64 = 1 << 40;

/// Longest tool name, scope, request id string or idempotency key accepted in an envelope.
pub const MAX_SHORT_STRING: usize = 128;
