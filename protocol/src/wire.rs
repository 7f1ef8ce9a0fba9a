//! The outer message: what one websocket binary message carries.

use crate::limits::{MAX_HANDSHAKE_MESSAGE, MAX_WIRE_MESSAGE};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMessage {
    /// Noise IK message 1, sidecar -> gateway.
    HandshakeInit(Vec<u8>),
    /// Noise IK message 2, gateway -> sidecar.
    HandshakeResponse(Vec<u8>),
    /// The gateway refused the handshake. Unauthenticated: the sidecar only uses it to tell its
    /// user what to do, never to change its pinned state.
    HandshakeRejected { code: String },
    /// An encrypted transport record (see [`crate::transport`]).
    Record(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message too large")]
    TooLarge,
    #[error("malformed message")]
    Malformed,
}

impl WireMessage {
    pub fn encode(&self) -> Vec<u8> {
        // postcard serialization of this enum cannot fail: it only holds byte vectors.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<WireMessage, WireError> {
        if bytes.len() > MAX_WIRE_MESSAGE {
            return Err(WireError::TooLarge);
        }
        let message: WireMessage = postcard::from_bytes(bytes).map_err(|_| WireError::Malformed)?;
        match &message {
            WireMessage::HandshakeInit(body) | WireMessage::HandshakeResponse(body)
                if body.len() > MAX_HANDSHAKE_MESSAGE =>
            {
                Err(WireError::TooLarge)
            }
            WireMessage::HandshakeRejected { code } if code.len() > 64 => Err(WireError::TooLarge),
            _ => Ok(message),
        }
    }
}
