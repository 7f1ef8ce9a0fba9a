//! The outbound websocket: URL policy, small buffers, bounded messages, a connect deadline.

use crate::net::{self, UrlKind};
use protocol::limits::MAX_WIRE_MESSAGE;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The relay websocket over TCP (plain on loopback, rustls otherwise).
pub type RelayStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Deadline for TCP + TLS + websocket upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Read buffer per connection. tungstenite's default is 128 KiB allocated eagerly; an idle
/// relay connection should cost kilobytes.
pub const READ_BUFFER_SIZE: usize = 4096;

/// Websocket settings for the relay: small buffers, every message written at once (no
/// coalescing delay), and messages bounded by the protocol's largest record.
pub fn relay_websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        // 0: each message goes to the socket as soon as it is queued.
        .write_buffer_size(0)
        // Only grows when the socket stalls; one full message plus framing is the most we keep.
        .max_write_buffer_size(MAX_WIRE_MESSAGE + 1024)
        .max_message_size(Some(MAX_WIRE_MESSAGE))
        .max_frame_size(Some(MAX_WIRE_MESSAGE))
}

/// Why dialing failed (no secrets; URLs are the operator's own configuration).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    #[error("relay URL refused: {0}")]
    Policy(String),
    #[error("connecting to the gateway timed out")]
    Timeout,
    #[error("connecting to the gateway failed: {0}")]
    Connect(String),
}

/// rustls needs a process-wide crypto provider when more than one could be compiled in;
/// installing aws-lc-rs is idempotent for our purposes (a second install is refused, and the
/// first one stays).
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Opens the relay websocket to `url` (`ws://` only to loopback hosts, `wss://` with the
/// system's root certificates).
pub async fn dial(url: &str) -> Result<RelayStream, DialError> {
    let checked = net::checked_url(url, UrlKind::WebSocket)
        .map_err(|why| DialError::Policy(why.to_string()))?;
    ensure_crypto_provider();
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        checked.as_str(),
        Some(relay_websocket_config()),
        // TCP_NODELAY: small records must not wait for Nagle.
        true,
        None,
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => Err(DialError::Timeout),
        Ok(Err(error)) => Err(DialError::Connect(describe(&error))),
        Ok(Ok((stream, _response))) => Ok(stream),
    }
}

fn describe(error: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match error {
        Error::Io(io) => format!("{}", io.kind()),
        Error::Tls(_) => "TLS failure".to_string(),
        Error::Http(response) => format!("HTTP {}", response.status().as_u16()),
        Error::Url(_) => "bad URL".to_string(),
        _ => "websocket upgrade failed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_config_is_small_and_bounded() {
        let config = relay_websocket_config();
        assert_eq!(config.read_buffer_size, 4096);
        assert_eq!(config.write_buffer_size, 0);
        assert!(config.max_write_buffer_size > config.write_buffer_size);
        assert!(config.max_write_buffer_size <= 2 * MAX_WIRE_MESSAGE);
        assert_eq!(config.max_message_size, Some(MAX_WIRE_MESSAGE));
        assert_eq!(config.max_frame_size, Some(MAX_WIRE_MESSAGE));
        assert!(!config.accept_unmasked_frames);
    }

    #[tokio::test]
    async fn plain_text_off_loopback_is_refused_before_dialing() {
        let error = dial("ws://192.0.2.1/relay").await.unwrap_err();
        assert!(matches!(error, DialError::Policy(_)));
    }

    #[tokio::test]
    async fn refused_connection_is_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let error = dial(&format!("ws://127.0.0.1:{port}/relay"))
            .await
            .unwrap_err();
        assert!(matches!(error, DialError::Connect(_)), "{error:?}");
    }
}
