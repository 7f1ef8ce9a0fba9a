//! A hand-driven sidecar built directly on the protocol crate: it holds the real paired key
//! (read from a sidecar state directory) but lets a test choose what it claims and how it
//! behaves afterwards (freeze, answer pings but never renew, ...). It is how the end-to-end
//! tests reproduce a hung laptop or an impostor presenting a session for another sidecar id.

use futures_util::{SinkExt, StreamExt};
use protocol::frame::{Frame, SidecarStatus};
use protocol::handshake::{ClientHello, InitiatorHandshake};
use protocol::transport::Transport;
use protocol::wire::WireMessage;
use std::path::Path;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum RawSidecarError {
    #[error("sidecar state: {0}")]
    State(String),
    #[error("websocket: {0}")]
    Socket(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// What the raw sidecar claims in its handshake, on top of the paired key it really holds.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    /// Default: the paired sidecar id.
    pub sidecar_id: Option<String>,
    /// Default: the paired gateway instance id.
    pub remote_instance_id: Option<String>,
}

/// How a handshake attempt ended.
pub enum Handshake {
    Accepted(Box<RawSidecar>),
    Rejected { code: String },
}

pub struct RawSidecar {
    socket: Socket,
    transport: Transport,
    /// When the last record left this side: the gateway cannot have heard from us since.
    last_sent_at: Option<std::time::Instant>,
}

impl RawSidecar {
    /// Dials `relay_url` and handshakes with the identity and pairing in `state_dir`.
    pub async fn connect(
        state_dir: &Path,
        relay_url: &str,
        claims: Claims,
    ) -> Result<Handshake, RawSidecarError> {
        let state = |e: ibkr_agent::SidecarError| RawSidecarError::State(e.to_string());
        let store = ibkr_agent::StateStore::open(state_dir).map_err(state)?;
        let (identity, keypair) =
            ibkr_agent::identity::load_keypair(state_dir, &store).map_err(state)?;
        let pairing = store
            .pairings()
            .map_err(state)?
            .into_iter()
            .next()
            .ok_or_else(|| RawSidecarError::State("no pairing".into()))?;
        let gateway_key = pairing
            .gateway_public_key
            .ok_or_else(|| RawSidecarError::State("pairing has no gateway key".into()))?;
        let hello = ClientHello {
            protocol_version: protocol::PROTOCOL_VERSION,
            sidecar_id: claims.sidecar_id.unwrap_or(identity.sidecar_id.clone()),
            remote_instance_id: claims
                .remote_instance_id
                .unwrap_or(pairing.remote_instance_id.clone()),
            // The same anti-replay clock the real daemon uses, so the two never collide.
            timestamp_ms: store
                .next_handshake_timestamp(
                    &identity.sidecar_id,
                    ibkr_agent::clock::now_unix_millis(),
                )
                .map_err(state)?,
            sidecar_version: "raw-test-sidecar".into(),
            max_concurrent_requests: 32,
        };
        let (mut socket, _) = tokio_tungstenite::connect_async(relay_url)
            .await
            .map_err(|e| RawSidecarError::Socket(e.to_string()))?;
        let (initiator, msg1) =
            InitiatorHandshake::start(&keypair, &gateway_key, &hello, &mut rand_core::OsRng)
                .map_err(|e| RawSidecarError::Protocol(e.to_string()))?;
        send(&mut socket, WireMessage::HandshakeInit(msg1)).await?;
        match receive(&mut socket).await? {
            WireMessage::HandshakeResponse(msg2) => {
                let (transport, _) = initiator
                    .finish(&msg2)
                    .map_err(|e| RawSidecarError::Protocol(e.to_string()))?;
                Ok(Handshake::Accepted(Box::new(RawSidecar {
                    socket,
                    transport,
                    last_sent_at: None,
                })))
            }
            WireMessage::HandshakeRejected { code } => Ok(Handshake::Rejected { code }),
            other => Err(RawSidecarError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Sends the key-confirmation record; the gateway registers the session on receipt.
    pub async fn confirm(&mut self) -> Result<(), RawSidecarError> {
        self.send_frame(&Frame::SidecarStatus(SidecarStatus {
            broker_session: "ready".into(),
            sidecar_version: "raw-test-sidecar".into(),
        }))
        .await
    }

    pub async fn send_frame(&mut self, frame: &Frame) -> Result<(), RawSidecarError> {
        let record = self
            .transport
            .seal(frame)
            .map_err(|e| RawSidecarError::Protocol(e.to_string()))?;
        send(&mut self.socket, WireMessage::Record(record)).await?;
        self.last_sent_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// Answers pings and nothing else (never renews the session, never answers requests),
    /// until the gateway closes the connection. Returns the frames it ignored.
    pub async fn answer_pings_only(mut self) -> Vec<Frame> {
        let mut ignored = Vec::new();
        while let Ok(WireMessage::Record(record)) = receive(&mut self.socket).await {
            match self.transport.open(&record) {
                Ok(Frame::Ping { seq }) => {
                    if self.send_frame(&Frame::Pong { seq }).await.is_err() {
                        break;
                    }
                }
                Ok(other) => ignored.push(other),
                Err(_) => break,
            }
        }
        ignored
    }

    /// Keeps the connection open without reading or answering anything (a hung laptop).
    pub fn freeze(self) -> FrozenSidecar {
        FrozenSidecar {
            _socket: self.socket,
            last_sent_at: self.last_sent_at,
        }
    }
}

/// Holds the socket open; dropping it closes the connection.
pub struct FrozenSidecar {
    _socket: Socket,
    last_sent_at: Option<std::time::Instant>,
}

impl FrozenSidecar {
    /// When the frozen sidecar last sent anything (`None`: never). The gateway's silence
    /// clock can only have started after this instant.
    pub fn last_sent_at(&self) -> Option<std::time::Instant> {
        self.last_sent_at
    }
}

async fn send(socket: &mut Socket, message: WireMessage) -> Result<(), RawSidecarError> {
    socket
        .send(Message::Binary(message.encode().into()))
        .await
        .map_err(|e| RawSidecarError::Socket(e.to_string()))
}

async fn receive(socket: &mut Socket) -> Result<WireMessage, RawSidecarError> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                return WireMessage::decode(&bytes)
                    .map_err(|e| RawSidecarError::Protocol(e.to_string()));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => {
                return Err(RawSidecarError::Socket(format!("unexpected {other:?}")));
            }
            Some(Err(error)) => return Err(RawSidecarError::Socket(error.to_string())),
            None => return Err(RawSidecarError::Socket("closed".into())),
        }
    }
}
