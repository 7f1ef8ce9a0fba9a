//! One task per relay websocket: handshake, key confirmation, then the steady state.
//!
//! Handshake (Noise IK, see `protocol::handshake`), each step fail-closed:
//! 1. the first message must be `HandshakeInit` within the handshake timeout; one that does
//!    does not decrypt (sealed to another static key) gets
//!    `HandshakeRejected{GATEWAY_KEY_MISMATCH}`, any other unreadable one `HANDSHAKE_FAILED`;
//! 2. the sidecar key must have an active pairing (`SIDECAR_PAIRING_REQUIRED`), the hello must
//!    name that pairing's sidecar id and this instance (`SIDECAR_SESSION_INVALID`), and its
//!    timestamp must exceed the last one accepted for the key (`HANDSHAKE_REPLAYED`);
//! 3. message 2 goes out, naming the newest sidecar journal entry the audit trail holds for
//!    the pairing (`journal_anchor`; a store that cannot say is `HANDSHAKE_FAILED`);
//! 4. key confirmation: the first record must decrypt (only the live holder of the sidecar's
//!    ephemeral key can produce it). Only then is the timestamp persisted and the session
//!    registered, so a replayed message 1 can never evict a live session.
//!
//! Steady state: one `select!` over the socket, the outbound queue, close requests, shutdown
//! and a single timer for heartbeat and expiry. Liveness runs on this task's own monotonic
//! clock; any transport error closes the connection at once.

use crate::relay::Relay;
use crate::relay::registry::{DropReason, Session, SessionEvent, SessionIdentity};
use axum::extract::ws::{Message, WebSocket};
use protocol::PROTOCOL_VERSION;
use protocol::frame::{CloseReason, Frame, SidecarStatus};
use protocol::handshake::{HandshakeError, ResponderHandshake, ServerHello, user_id_hash};
use protocol::liveness::{Liveness, LivenessAction};
use protocol::transport::{Transport, TransportError};
use protocol::wire::WireMessage;
use rand_core::{OsRng, RngCore};
use shared_safety::ErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};

/// Longest a single websocket write may take before the peer counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Goodbye frames to a peer that may already be dead get less patience.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest string kept from a `SidecarStatus` push.
const MAX_STATUS_FIELD: usize = 64;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

enum Incoming {
    Wire(WireMessage),
    Closed,
    Violation,
}

/// Reads the next relay message, skipping websocket pings (tungstenite answers them).
/// Cancel-safe: each `recv` either yields a whole message or nothing.
async fn read_wire(socket: &mut WebSocket) -> Incoming {
    loop {
        match socket.recv().await {
            None | Some(Err(_)) => return Incoming::Closed,
            Some(Ok(Message::Binary(bytes))) => {
                return match WireMessage::decode(&bytes) {
                    Ok(message) => Incoming::Wire(message),
                    Err(_) => Incoming::Violation,
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(_))) => return Incoming::Violation,
            Some(Ok(Message::Close(_))) => return Incoming::Closed,
        }
    }
}

async fn write_wire(socket: &mut WebSocket, message: &WireMessage, limit: Duration) -> bool {
    let bytes = message.encode();
    matches!(
        timeout(limit, socket.send(Message::Binary(bytes.into()))).await,
        Ok(Ok(()))
    )
}

async fn close_socket(socket: &mut WebSocket) {
    let _ = timeout(FAREWELL_TIMEOUT, socket.send(Message::Close(None))).await;
}

enum HandshakeEnd {
    /// Tell the peer why (unauthenticated hint), then close.
    Reject(ErrorCode),
    /// Close without a word (timeout, peer gone, failed key confirmation).
    Silent,
}

struct Established {
    session: Arc<Session>,
    transport: Transport,
    first_frame: Frame,
    close_rx: watch::Receiver<Option<CloseReason>>,
    outbound_rx: mpsc::Receiver<Frame>,
}

/// Drives one relay connection to its end.
pub(crate) async fn run(relay: Arc<Relay>, mut socket: WebSocket) {
    let result = tokio::select! {
        result = handshake(&relay, &mut socket) => result,
        _ = relay.shutdown.cancelled() => Err(HandshakeEnd::Silent),
    };
    match result {
        Ok(established) => steady(relay, socket, established).await,
        Err(HandshakeEnd::Reject(code)) => {
            let rejected = WireMessage::HandshakeRejected {
                code: code.code().to_string(),
            };
            let _ = write_wire(&mut socket, &rejected, FAREWELL_TIMEOUT).await;
            close_socket(&mut socket).await;
        }
        Err(HandshakeEnd::Silent) => close_socket(&mut socket).await,
    }
}

async fn handshake(relay: &Relay, socket: &mut WebSocket) -> Result<Established, HandshakeEnd> {
    let settings = relay.settings;
    let init = match timeout(settings.handshake_timeout, read_wire(socket)).await {
        Ok(Incoming::Wire(WireMessage::HandshakeInit(body))) => body,
        Ok(Incoming::Wire(_) | Incoming::Violation) => {
            return Err(HandshakeEnd::Reject(ErrorCode::HandshakeFailed));
        }
        Ok(Incoming::Closed) | Err(_) => return Err(HandshakeEnd::Silent),
    };
    let pending =
        ResponderHandshake::read_init(&relay.keypair, &init, &mut OsRng).map_err(|error| {
            tracing::info!(%error, "relay handshake refused: message 1 unreadable");
            // A well-formed message 1 that does not decrypt was, in practice, sealed to
            // another static key: a sidecar still pinned to the key this gateway had before
            // a rotation, or one pointed at the wrong gateway. Saying so (an unauthenticated
            // hint, like every refusal here) lets the laptop tell its owner what happened.
            // Unless it opens with an older protocol version's prologue: then the sidecar is
            // paired with this gateway and only needs upgrading.
            HandshakeEnd::Reject(match error {
                HandshakeError::DecryptFailed => {
                    match ResponderHandshake::older_version_of(&relay.keypair, &init) {
                        Some(version) => {
                            tracing::warn!(
                                version,
                                "relay handshake refused: the sidecar runs an older relay protocol; it must be upgraded"
                            );
                            ErrorCode::SidecarUpgradeRequired
                        }
                        None => ErrorCode::GatewayKeyMismatch,
                    }
                }
                _ => ErrorCode::HandshakeFailed,
            })
        })?;
    let key = pending.remote_static;
    let fingerprint = key.fingerprint();

    let pairing = match relay.store.active_pairing_by_key(key).await {
        Ok(Some(pairing)) => pairing,
        Ok(None) => {
            tracing::info!(%fingerprint, "relay handshake refused: key not paired");
            return Err(HandshakeEnd::Reject(ErrorCode::SidecarPairingRequired));
        }
        Err(error) => {
            tracing::error!(%error, "relay handshake: store lookup failed");
            return Err(HandshakeEnd::Reject(ErrorCode::HandshakeFailed));
        }
    };
    if pending.hello.sidecar_id != pairing.sidecar_id
        || pending.hello.remote_instance_id != relay.instance_id
    {
        tracing::info!(%fingerprint, sidecar_id = %pairing.sidecar_id, "relay handshake refused: session not bound to this pairing and instance");
        return Err(HandshakeEnd::Reject(ErrorCode::SidecarSessionInvalid));
    }
    let timestamp = pending.hello.timestamp_ms;
    match relay.store.last_handshake_timestamp(key).await {
        Ok(Some(last)) if timestamp <= last => {
            tracing::warn!(%fingerprint, sidecar_id = %pairing.sidecar_id, "relay handshake refused: replayed or stale timestamp");
            return Err(HandshakeEnd::Reject(ErrorCode::HandshakeReplayed));
        }
        Ok(_) => {}
        Err(error) => {
            tracing::error!(%error, "relay handshake: store lookup failed");
            return Err(HandshakeEnd::Reject(ErrorCode::HandshakeFailed));
        }
    }
    let sidecar_version = pending.hello.sidecar_version.clone();
    let pending_hello_concurrency = pending.hello.max_concurrent_requests;
    // The newest journal entry the audit trail holds for this pairing: the sidecar checks
    // that its journal still holds it. Without it the check would silently not happen, so a
    // store that cannot answer refuses the handshake like any other store failure.
    let journal_anchor = match relay.store.journal_anchor(pairing.pairing_id).await {
        Ok(anchor) => anchor,
        Err(error) => {
            tracing::error!(%error, "relay handshake: journal anchor lookup failed");
            return Err(HandshakeEnd::Reject(ErrorCode::HandshakeFailed));
        }
    };

    let mut session_id = [0u8; 16];
    OsRng.fill_bytes(&mut session_id);
    let hello = ServerHello {
        protocol_version: PROTOCOL_VERSION,
        session_id,
        instance_id: relay.instance_id.clone(),
        user_id_hash: user_id_hash(&pairing.user_id),
        pairing_id: pairing.pairing_id.0,
        journal_anchor,
        session_ttl_ms: millis(settings.session_ttl),
        heartbeat_interval_ms: millis(settings.heartbeat.interval()),
        heartbeat_timeout_ms: millis(settings.heartbeat.timeout()),
    };
    let (message, mut transport) = pending
        .accept(&hello)
        .map_err(|_| HandshakeEnd::Reject(ErrorCode::HandshakeFailed))?;
    if !write_wire(
        socket,
        &WireMessage::HandshakeResponse(message),
        WRITE_TIMEOUT,
    )
    .await
    {
        return Err(HandshakeEnd::Silent);
    }

    // Key confirmation: nothing is registered or persisted before this record decrypts.
    let record = match timeout(settings.handshake_timeout, read_wire(socket)).await {
        Ok(Incoming::Wire(WireMessage::Record(record))) => record,
        _ => {
            tracing::info!(%fingerprint, "relay handshake abandoned before key confirmation");
            return Err(HandshakeEnd::Silent);
        }
    };
    let first_frame = transport.open(&record).map_err(|error| {
        tracing::info!(%fingerprint, %error, "relay key confirmation failed");
        HandshakeEnd::Silent
    })?;
    match relay.store.accept_handshake_timestamp(key, timestamp).await {
        Ok(true) => {}
        Ok(false) => {
            // A concurrent handshake of the same key won with a newer timestamp.
            return Err(HandshakeEnd::Reject(ErrorCode::HandshakeReplayed));
        }
        Err(error) => {
            tracing::error!(%error, "relay handshake: could not persist the timestamp");
            return Err(HandshakeEnd::Reject(ErrorCode::HandshakeFailed));
        }
    }
    // The pairing may have been revoked while the handshake ran.
    match relay.store.pairing_is_active(pairing.pairing_id).await {
        Ok(true) => {}
        _ => return Err(HandshakeEnd::Reject(ErrorCode::SidecarPairingRequired)),
    }

    let now = Instant::now();
    // The sidecar's concurrency, never above the gateway's own bound.
    let slots = usize::from(pending_hello_concurrency).min(settings.max_in_flight);
    // Room for every slot's request and its cancel, plus the driver's own frames: a cancel
    // (try_send) never finds the queue full, so a slot is never freed here while the sidecar
    // still runs its call.
    let (outbound, outbound_rx) = mpsc::channel(2 * settings.max_in_flight + 16);
    let (session, close_rx) = Session::new(
        SessionIdentity {
            session_id,
            pairing_id: pairing.pairing_id,
            sidecar_id: pairing.sidecar_id.clone(),
            user_id: pairing.user_id.clone(),
            public_key: key,
        },
        now,
        now + settings.session_ttl,
        outbound,
        slots,
    );
    let session = Arc::new(session);
    relay.registry.register(Arc::clone(&session));
    tracing::info!(
        sidecar_id = %session.sidecar_id,
        user_id = %session.user_id,
        %fingerprint,
        %sidecar_version,
        "relay session registered"
    );
    Ok(Established {
        session,
        transport,
        first_frame,
        close_rx,
        outbound_rx,
    })
}

/// Why the steady state ended.
enum Exit {
    /// We close with this reason (a `Close` frame is sent first).
    Close(CloseReason),
    HeartbeatTimeout,
    /// A record or message failed: close at once, send nothing.
    Protocol,
    PeerClosed,
    WriteFailed,
}

async fn send_frame(
    socket: &mut WebSocket,
    transport: &mut Transport,
    frame: &Frame,
) -> Result<(), Exit> {
    let record = transport.seal(frame).map_err(|_| Exit::Protocol)?;
    if write_wire(socket, &WireMessage::Record(record), WRITE_TIMEOUT).await {
        Ok(())
    } else {
        Err(Exit::WriteFailed)
    }
}

fn bounded(text: String) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_STATUS_FIELD)
        .collect()
}

async fn handle_frame(
    relay: &Relay,
    session: &Session,
    socket: &mut WebSocket,
    transport: &mut Transport,
    frame: Frame,
) -> Result<(), Exit> {
    match frame {
        Frame::Ping { seq } => send_frame(socket, transport, &Frame::Pong { seq }).await,
        Frame::Pong { .. } => Ok(()),
        Frame::Response(response) => {
            let request_id = response.request_id;
            if !session.complete(response) {
                tracing::debug!(%request_id, "late response ignored");
            }
            Ok(())
        }
        Frame::Progress(progress) => {
            session.progress(progress);
            Ok(())
        }
        Frame::RenewSession => {
            // Renewal only through the authenticated channel and only while the pairing holds.
            match relay.store.pairing_is_active(session.pairing_id).await {
                Ok(true) => {
                    let ttl = relay.settings.session_ttl;
                    session.set_expires_at(Instant::now() + ttl);
                    let renewed = Frame::SessionRenewed {
                        expires_in_ms: millis(ttl),
                    };
                    send_frame(socket, transport, &renewed).await
                }
                Ok(false) => Err(Exit::Close(CloseReason::PairingRevoked)),
                Err(error) => {
                    // Not renewing is the safe failure: the session simply runs out.
                    tracing::error!(%error, "session renewal: store lookup failed");
                    Ok(())
                }
            }
        }
        Frame::SidecarStatus(status) => {
            session.set_status(SidecarStatus {
                broker_session: bounded(status.broker_session),
                sidecar_version: bounded(status.sidecar_version),
            });
            Ok(())
        }
        Frame::GoAway { .. } => {
            session.set_draining();
            Ok(())
        }
        Frame::Close { .. } => Err(Exit::PeerClosed),
        Frame::AgentDecision(decision) => {
            if decision.validate().is_err() {
                return Err(Exit::Close(CloseReason::ProtocolViolation));
            }
            hand_to_desk(
                relay,
                &session.sidecar_id,
                crate::relay::AgentEvent::Decision {
                    user_id: session.user_id.clone(),
                    decision,
                },
            );
            Ok(())
        }
        Frame::AgentRevoked { approval_id } => {
            hand_to_desk(
                relay,
                &session.sidecar_id,
                crate::relay::AgentEvent::Revoked {
                    user_id: session.user_id.clone(),
                    approval_id,
                    reply: session.outbound.clone(),
                },
            );
            Ok(())
        }
        // Gateway-to-sidecar frames coming the wrong way.
        Frame::Request(_)
        | Frame::Cancel { .. }
        | Frame::SessionRenewed { .. }
        | Frame::AgentApprovalRequest(_)
        | Frame::AgentRevokedAck { .. } => Err(Exit::Close(CloseReason::ProtocolViolation)),
    }
}

/// Passes an agent message to the approval desk. With no desk (an external issuer) or a full
/// queue it is dropped: a decision then never arrives (the page's request expires) and a
/// revocation is not acknowledged, so the sidecar sends it again at its next connection.
fn hand_to_desk(relay: &Relay, sidecar_id: &str, event: crate::relay::AgentEvent) {
    if relay.agent_messages.check(sidecar_id).is_err() {
        tracing::warn!(%sidecar_id, "agent message dropped: this sidecar sends too many");
        return;
    }
    match relay.agent_inbox.get() {
        Some(inbox) => {
            if inbox.try_send(event).is_err() {
                tracing::warn!("agent message dropped: the approval desk is busy");
            }
        }
        None => tracing::debug!("agent message ignored: no built-in authorization server"),
    }
}

async fn steady(relay: Arc<Relay>, mut socket: WebSocket, established: Established) {
    let Established {
        session,
        mut transport,
        first_frame,
        mut close_rx,
        mut outbound_rx,
    } = established;
    let origin = Instant::now();
    let mut liveness = Liveness::new(relay.settings.heartbeat, Duration::ZERO);
    let mut exit = handle_frame(&relay, &session, &mut socket, &mut transport, first_frame)
        .await
        .err();

    while exit.is_none() {
        let wake = (origin + liveness.next_deadline()).min(session.expires_at());
        tokio::select! {
            _ = relay.shutdown.cancelled() => {
                exit = Some(Exit::Close(CloseReason::Shutdown));
            }
            changed = close_rx.changed() => {
                let reason = if changed.is_ok() { *close_rx.borrow() } else { None };
                exit = Some(Exit::Close(reason.unwrap_or(CloseReason::Shutdown)));
            }
            incoming = read_wire(&mut socket) => {
                exit = match incoming {
                    Incoming::Wire(WireMessage::Record(record)) => match transport.open(&record) {
                        Ok(frame) => {
                            let now = Instant::now();
                            liveness.on_authentic_frame(now.saturating_duration_since(origin));
                            session.touch(now);
                            handle_frame(&relay, &session, &mut socket, &mut transport, frame)
                                .await
                                .err()
                        }
                        Err(error) => {
                            tracing::warn!(sidecar_id = %session.sidecar_id, %error, "relay record refused; closing");
                            Some(Exit::Protocol)
                        }
                    },
                    Incoming::Wire(_) | Incoming::Violation => Some(Exit::Protocol),
                    Incoming::Closed => Some(Exit::PeerClosed),
                };
            }
            Some(frame) = outbound_rx.recv() => {
                exit = match transport.seal(&frame) {
                    Ok(record) => {
                        if write_wire(&mut socket, &WireMessage::Record(record), WRITE_TIMEOUT).await {
                            None
                        } else {
                            Some(Exit::WriteFailed)
                        }
                    }
                    Err(TransportError::FrameTooLarge) => {
                        // Our own oversized request: refuse that call, keep the channel.
                        if let Frame::Request(request) = &frame {
                            session.fail(
                                request.request_id,
                                crate::error::GatewayError::with_detail(
                                    ErrorCode::ArgumentsInvalid,
                                    "The arguments are too large to relay.",
                                ),
                            );
                        }
                        None
                    }
                    Err(_) => Some(Exit::Protocol),
                };
            }
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if now >= session.expires_at() {
                    exit = Some(Exit::Close(CloseReason::SessionExpired));
                } else {
                    match liveness.poll(now.saturating_duration_since(origin)) {
                        LivenessAction::SendPing { seq } => {
                            exit = send_frame(&mut socket, &mut transport, &Frame::Ping { seq }).await.err();
                        }
                        LivenessAction::PeerDead => exit = Some(Exit::HeartbeatTimeout),
                        LivenessAction::Wait => {}
                    }
                }
            }
        }
    }

    let exit = exit.unwrap_or(Exit::Protocol);
    let (reason, farewell) = match exit {
        Exit::Close(CloseReason::Shutdown) => (DropReason::Shutdown, Some(CloseReason::Shutdown)),
        Exit::Close(CloseReason::SessionExpired) => (
            DropReason::SessionExpired,
            Some(CloseReason::SessionExpired),
        ),
        Exit::Close(CloseReason::Replaced) => (DropReason::Replaced, Some(CloseReason::Replaced)),
        Exit::Close(CloseReason::PairingRevoked) => (
            DropReason::PairingRevoked,
            Some(CloseReason::PairingRevoked),
        ),
        Exit::Close(CloseReason::HeartbeatTimeout) | Exit::HeartbeatTimeout => (
            DropReason::HeartbeatTimeout,
            Some(CloseReason::HeartbeatTimeout),
        ),
        Exit::Close(other @ (CloseReason::ProtocolViolation | CloseReason::Overloaded)) => {
            (DropReason::ProtocolError, Some(other))
        }
        Exit::Protocol => (DropReason::ProtocolError, None),
        Exit::PeerClosed | Exit::WriteFailed => (DropReason::PeerClosed, None),
    };

    // Leave the registry (remembering why) before failing the pending calls, so a call that
    // arrives in between sees the reason rather than a closed session.
    relay.registry.end(&session, reason);
    session.close_and_fail_all(reason.error_code());
    if let Some(close_reason) = farewell {
        if close_reason == CloseReason::Shutdown {
            let go_away = Frame::GoAway {
                retry_after_ms: 1000,
                reason: CloseReason::Shutdown,
            };
            if let Ok(record) = transport.seal(&go_away) {
                let _ =
                    write_wire(&mut socket, &WireMessage::Record(record), FAREWELL_TIMEOUT).await;
            }
        }
        if let Ok(record) = transport.seal(&Frame::Close {
            reason: close_reason,
        }) {
            let _ = write_wire(&mut socket, &WireMessage::Record(record), FAREWELL_TIMEOUT).await;
        }
    }
    close_socket(&mut socket).await;
    tracing::info!(sidecar_id = %session.sidecar_id, ?reason, "relay session dropped");
    relay.registry.emit(SessionEvent::Dropped {
        sidecar_id: session.sidecar_id.clone(),
        reason,
    });
}
