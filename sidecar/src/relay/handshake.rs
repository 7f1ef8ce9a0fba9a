//! The Noise IK handshake over the websocket: send message 1, read message 2 (or the gateway's
//! unauthenticated refusal) within a deadline, and check the ServerHello against the pairing.

use super::dial::RelayStream;
use futures_util::{SinkExt, StreamExt};
use protocol::handshake::{
    ClientHello, HandshakeError, InitiatorHandshake, ServerHello, user_id_hash,
};
use protocol::identity::{PublicKey, StaticKeypair};
use protocol::transport::Transport;
use protocol::wire::WireMessage;
use rand_core::OsRng;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Deadline for the gateway's answer to message 1.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a handshake did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeFailure {
    /// The gateway answered `HandshakeRejected { code }`. Unauthenticated: only used to tell
    /// the user what to do, never to change pinned state.
    #[error("the gateway refused the handshake with {0}")]
    Rejected(String),
    /// The gateway proved a different instance id than the one we paired with.
    #[error("the gateway is not the paired instance")]
    WrongInstance,
    /// The gateway (authenticated by its pinned key) named another user or pairing than the
    /// one pinned at pairing: it would relay someone else's calls to this laptop.
    #[error("the gateway named another user or pairing than the one this sidecar was paired for")]
    WrongUserOrPairing,
    #[error("handshake failed: {0}")]
    Protocol(String),
    #[error("the connection failed during the handshake: {0}")]
    Network(String),
    #[error("the gateway did not answer the handshake in time")]
    Timeout,
}

/// A rejection code as shown in logs: SCREAMING_SNAKE characters only, bounded.
fn clean_code(code: &str) -> String {
    let cleaned: String = code
        .chars()
        .filter(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "UNKNOWN".to_string()
    } else {
        cleaned
    }
}

fn map_error(error: HandshakeError) -> HandshakeFailure {
    HandshakeFailure::Protocol(error.to_string())
}

/// What the sidecar pinned at pairing and expects the gateway to prove.
#[derive(Clone, Debug)]
pub struct Pinned<'a> {
    pub gateway_key: &'a PublicKey,
    pub instance_id: &'a str,
    /// The OAuth subject this laptop serves.
    pub user_id: &'a str,
    /// The gateway's pairing id (absent on a pairing made before the id existed: then the first
    /// handshake's id is pinned by the caller).
    pub pairing_id: Option<[u8; 16]>,
}

/// Checks the ServerHello against what was pinned at pairing.
pub fn check_server_hello(
    hello: &ServerHello,
    pinned: &Pinned<'_>,
) -> Result<(), HandshakeFailure> {
    if hello.instance_id != pinned.instance_id {
        return Err(HandshakeFailure::WrongInstance);
    }
    let user_matches = hello.user_id_hash == user_id_hash(pinned.user_id);
    let pairing_matches = pinned.pairing_id.is_none_or(|id| id == hello.pairing_id);
    if !user_matches || !pairing_matches {
        return Err(HandshakeFailure::WrongUserOrPairing);
    }
    Ok(())
}

/// Runs the initiator side on `stream`.
pub async fn perform(
    stream: &mut RelayStream,
    keypair: &StaticKeypair,
    hello: &ClientHello,
    pinned: &Pinned<'_>,
) -> Result<(Transport, ServerHello), HandshakeFailure> {
    let gateway_key = pinned.gateway_key;
    let (initiator, message1) =
        InitiatorHandshake::start(keypair, gateway_key, hello, &mut OsRng).map_err(map_error)?;
    let bytes = WireMessage::HandshakeInit(message1).encode();
    let exchange = async {
        stream
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|error| HandshakeFailure::Network(error.to_string()))?;
        loop {
            let message = match stream.next().await {
                None => return Err(HandshakeFailure::Network("connection closed".into())),
                Some(Err(error)) => return Err(HandshakeFailure::Network(error.to_string())),
                Some(Ok(message)) => message,
            };
            match message {
                Message::Binary(bytes) => {
                    return match WireMessage::decode(&bytes) {
                        Ok(WireMessage::HandshakeResponse(message2)) => Ok(message2),
                        Ok(WireMessage::HandshakeRejected { code }) => {
                            Err(HandshakeFailure::Rejected(clean_code(&code)))
                        }
                        Ok(_) => Err(HandshakeFailure::Protocol(
                            "unexpected message during the handshake".into(),
                        )),
                        Err(error) => Err(HandshakeFailure::Protocol(error.to_string())),
                    };
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(_) => {
                    return Err(HandshakeFailure::Network("closed by the gateway".into()));
                }
                Message::Text(_) => {
                    return Err(HandshakeFailure::Protocol(
                        "text message during the handshake".into(),
                    ));
                }
            }
        }
    };
    let message2 = tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeFailure::Timeout)??;
    let (transport, server_hello) = initiator.finish(&message2).map_err(map_error)?;
    check_server_hello(&server_hello, pinned)?;
    Ok((transport, server_hello))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::identity::StaticKeypair;

    fn hello(user: &str, pairing_id: [u8; 16]) -> ServerHello {
        ServerHello {
            protocol_version: protocol::PROTOCOL_VERSION,
            session_id: [1; 16],
            instance_id: "remote-1".into(),
            user_id_hash: user_id_hash(user),
            pairing_id,
            journal_anchor: None,
            session_ttl_ms: 1,
            heartbeat_interval_ms: 1,
            heartbeat_timeout_ms: 2,
        }
    }

    #[test]
    fn a_gateway_naming_another_user_or_pairing_is_refused() {
        let key = StaticKeypair::from_secret_bytes([9; 32]).public();
        let pinned = Pinned {
            gateway_key: &key,
            instance_id: "remote-1",
            user_id: "alice",
            pairing_id: Some([7; 16]),
        };
        assert_eq!(
            check_server_hello(&hello("alice", [7; 16]), &pinned),
            Ok(())
        );
        assert_eq!(
            check_server_hello(&hello("bob", [7; 16]), &pinned),
            Err(HandshakeFailure::WrongUserOrPairing)
        );
        assert_eq!(
            check_server_hello(&hello("alice", [8; 16]), &pinned),
            Err(HandshakeFailure::WrongUserOrPairing)
        );
        let mut elsewhere = hello("alice", [7; 16]);
        elsewhere.instance_id = "remote-2".into();
        assert_eq!(
            check_server_hello(&elsewhere, &pinned),
            Err(HandshakeFailure::WrongInstance)
        );
        // A pairing made before pairing ids: the user is still checked, the id is pinned later.
        let unpinned = Pinned {
            pairing_id: None,
            ..pinned
        };
        assert_eq!(
            check_server_hello(&hello("alice", [8; 16]), &unpinned),
            Ok(())
        );
        assert_eq!(
            check_server_hello(&hello("mallory", [8; 16]), &unpinned),
            Err(HandshakeFailure::WrongUserOrPairing)
        );
    }

    #[test]
    fn rejection_codes_are_cleaned() {
        assert_eq!(
            clean_code("SIDECAR_PAIRING_REQUIRED"),
            "SIDECAR_PAIRING_REQUIRED"
        );
        assert_eq!(clean_code("x\n<script>"), "UNKNOWN");
        assert_eq!(clean_code(&"A".repeat(100)).len(), 64);
    }
}
