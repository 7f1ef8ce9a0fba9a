//! What crosses NATS between replicas, and how it is encoded (postcard, like the relay's own
//! frames). Sans-IO: no sockets, no clock, so it can be tested and fuzzed on its own.
//!
//! A call for a user whose sidecar another replica holds goes out as one [`ForwardRequest`]
//! on the user's subject (request/reply, answered by at most one replica of the queue group).
//! The holder answers [`Ack`] at once, then streams [`Streamed`] messages to the forwarder's
//! inbox: progress, then exactly one [`Streamed::Done`]. The forwarder sends [`Cancel`] to the
//! inbox's cancel subject when its caller gives up. Only the sanitized relay request and its
//! outcome travel: never a token, and the payload the sidecar sees is the one the forwarder
//! hashed.

use protocol::envelope::{JournalRef, Outcome, RelayProgress, RelayRequest};
use serde::{Deserialize, Serialize};

/// Largest message accepted from NATS (a relay request is bounded well below this).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Subject prefix every cluster subject starts with.
pub const PREFIX: &str = "ibkr.relay";

/// The subject calls for `user_id` are sent to: a hash, so subjects never carry the subject
/// claim itself (and are always valid NATS tokens).
pub fn user_subject(user_id: &str) -> String {
    let hash = protocol::handshake::user_id_hash(user_id);
    format!("{PREFIX}.user.{}", hex::encode(&hash[..16]))
}

/// Where the forwarder listens for a cancel of the call streaming to `inbox`.
pub fn cancel_subject(inbox: &str) -> String {
    format!("{inbox}.cancel")
}

/// One call forwarded to the replica that holds the user's sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub user_id: String,
    pub request: RelayRequest,
    /// The tool can change broker state (the holder never retries it, and reports a lost
    /// answer as an unknown outcome).
    pub changes_broker_state: bool,
    /// Where the holder streams progress and the outcome.
    pub inbox: String,
}

/// The holder's immediate answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ack {
    /// The call was handed to the session of `sidecar_id` (pairing `pairing_id`, hex).
    Accepted {
        sidecar_id: String,
        pairing_id: String,
    },
    /// Nothing was sent: a gate refused (the code and detail the agent gets).
    Refused {
        code: String,
        detail: Option<String>,
    },
}

/// A failure after the call was accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub detail: Option<String>,
}

/// What the holder streams to the forwarder's inbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Streamed {
    Progress(RelayProgress),
    Done(Result<(Outcome, Option<JournalRef>), Failure>),
}

/// The forwarder gave up (its client cancelled, or its deadline passed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message too large")]
    TooLarge,
    #[error("malformed message")]
    Malformed,
}

pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_stdvec(message).map_err(|_| WireError::Malformed)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge);
    }
    Ok(bytes)
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge);
    }
    postcard::from_bytes(bytes).map_err(|_| WireError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::envelope::RequestId;

    fn request() -> RelayRequest {
        RelayRequest::new(
            RequestId([7; 16]),
            "ibkr_quote",
            "ibkr:marketdata:read",
            &["ibkr:marketdata:read"],
            &serde_json::json!({"symbol": "AAPL"}),
            30_000,
            None,
        )
        .unwrap()
    }

    #[test]
    fn every_message_round_trips_and_junk_is_refused() {
        let forward = ForwardRequest {
            user_id: "alice".into(),
            request: request(),
            changes_broker_state: false,
            inbox: "_INBOX.abc".into(),
        };
        let bytes = encode(&forward).unwrap();
        assert_eq!(decode::<ForwardRequest>(&bytes).unwrap(), forward);
        // The payload hash travels with the payload it covers, unchanged.
        assert_eq!(
            decode::<ForwardRequest>(&bytes)
                .unwrap()
                .request
                .payload_hash,
            request().payload_hash
        );
        for ack in [
            Ack::Accepted {
                sidecar_id: "laptop".into(),
                pairing_id: "00ff".into(),
            },
            Ack::Refused {
                code: "SIDECAR_HEARTBEAT_STALE".into(),
                detail: None,
            },
        ] {
            assert_eq!(decode::<Ack>(&encode(&ack).unwrap()).unwrap(), ack);
        }
        let done = Streamed::Done(Ok((
            Outcome::Result {
                json: "{\"ok\":true}".into(),
            },
            Some(JournalRef {
                seq: 4,
                hash: [9; 32],
            }),
        )));
        assert_eq!(decode::<Streamed>(&encode(&done).unwrap()).unwrap(), done);
        assert_eq!(decode::<Ack>(&[0xff; 3]), Err(WireError::Malformed));
        assert_eq!(
            decode::<Ack>(&vec![0; MAX_MESSAGE + 1]),
            Err(WireError::TooLarge)
        );
        for cut in 0..bytes.len() {
            assert!(decode::<ForwardRequest>(&bytes[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn subjects_never_carry_the_user_id() {
        let subject = user_subject("alice@example.com has spaces");
        assert!(subject.starts_with("ibkr.relay.user."));
        assert!(!subject.contains("alice"));
        assert!(!subject.contains(' '));
        assert_ne!(user_subject("alice"), user_subject("bob"));
        assert_eq!(cancel_subject("_INBOX.x"), "_INBOX.x.cancel");
    }
}
