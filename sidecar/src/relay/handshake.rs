//! The Noise IK handshake over the websocket: send message 1, read message 2 (or the gateway's
//! unauthenticated refusal) within a deadline, and check the ServerHello against the pairing.

use super::dial::RelayStream;
use futures_util::{SinkExt, StreamExt};
use protocol::handshake::{ClientHello, HandshakeError, InitiatorHandshake, ServerHello};
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

/// Runs the initiator side on `stream`.
pub async fn perform(
    stream: &mut RelayStream,
    keypair: &StaticKeypair,
    gateway_key: &PublicKey,
    hello: &ClientHello,
    expected_instance_id: &str,
) -> Result<(Transport, ServerHello), HandshakeFailure> {
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
    if server_hello.instance_id != expected_instance_id {
        return Err(HandshakeFailure::WrongInstance);
    }
    Ok((transport, server_hello))
}

#[cfg(test)]
mod tests {
    use super::*;

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
