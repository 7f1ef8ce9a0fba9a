//! Live relay sessions, keyed by sidecar id.
//!
//! A session enters only after key confirmation (the first authentic record) and replaces an
//! older session of the same sidecar id, which is told to close (`Close{Replaced}`). Each
//! session carries its pending calls, so the connection driver can complete them and the
//! router can add to them under one lock (which is what bounds the calls in flight).

use crate::error::GatewayError;
use protocol::envelope::{Outcome, RelayProgress, RequestId};
use protocol::frame::{CloseReason, Frame, SidecarStatus};
use protocol::identity::PublicKey;
use shared_safety::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

/// Why a session left the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Nothing authentic arrived within the heartbeat timeout.
    HeartbeatTimeout,
    /// The session TTL passed without renewal.
    SessionExpired,
    /// A newer session of the same sidecar id was registered.
    Replaced,
    /// The pairing was revoked.
    PairingRevoked,
    /// The gateway is shutting down.
    Shutdown,
    /// A record failed (decrypt, counter, malformed frame) or the peer broke the protocol.
    ProtocolError,
    /// The sidecar closed the connection.
    PeerClosed,
}

impl DropReason {
    /// The error in-flight calls of a dropped session complete with.
    pub fn error_code(self) -> ErrorCode {
        match self {
            DropReason::HeartbeatTimeout => ErrorCode::SidecarHeartbeatStale,
            DropReason::SessionExpired => ErrorCode::SidecarSessionExpired,
            DropReason::PairingRevoked => ErrorCode::SidecarPairingRequired,
            DropReason::Replaced | DropReason::Shutdown => ErrorCode::SidecarUnavailable,
            DropReason::ProtocolError | DropReason::PeerClosed => ErrorCode::RelayProtocolError,
        }
    }
}

/// Session lifecycle notifications (see [`crate::GatewayHandle::subscribe_sessions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    Registered {
        sidecar_id: String,
        user_id: String,
    },
    Dropped {
        sidecar_id: String,
        reason: DropReason,
    },
}

/// A snapshot of one live session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSidecar {
    pub sidecar_id: String,
    pub user_id: String,
    /// Time since the session was registered.
    pub session_age: Duration,
    /// Time since the last authentic frame from the sidecar.
    pub last_heartbeat: Duration,
    /// Time left before the session expires unless renewed.
    pub expires_in: Duration,
    /// The broker session state the sidecar last pushed, if any.
    pub broker_session: Option<String>,
}

pub(crate) struct PendingCall {
    reply: oneshot::Sender<Result<Outcome, GatewayError>>,
    progress: Option<mpsc::Sender<RelayProgress>>,
}

struct SessionState {
    last_heard: Instant,
    expires_at: Instant,
    status: Option<SidecarStatus>,
    pending: HashMap<RequestId, PendingCall>,
    /// The sidecar sent GoAway: no new calls, in-flight ones finish.
    draining: bool,
    closed: bool,
}

/// One registered relay session. The connection driver owns the socket and the transport;
/// this is what everybody else may touch.
pub(crate) struct Session {
    pub session_id: [u8; 16],
    pub sidecar_id: String,
    pub user_id: String,
    pub public_key: PublicKey,
    pub registered_at: Instant,
    /// Frames for the driver to seal and send.
    pub outbound: mpsc::Sender<Frame>,
    close: watch::Sender<Option<CloseReason>>,
    state: Mutex<SessionState>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sidecar_id", &self.sidecar_id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(
        session_id: [u8; 16],
        sidecar_id: String,
        user_id: String,
        public_key: PublicKey,
        now: Instant,
        expires_at: Instant,
        outbound: mpsc::Sender<Frame>,
    ) -> (Session, watch::Receiver<Option<CloseReason>>) {
        let (close, close_rx) = watch::channel(None);
        (
            Session {
                session_id,
                sidecar_id,
                user_id,
                public_key,
                registered_at: now,
                outbound,
                close,
                state: Mutex::new(SessionState {
                    last_heard: now,
                    expires_at,
                    status: None,
                    pending: HashMap::new(),
                    draining: false,
                    closed: false,
                }),
            },
            close_rx,
        )
    }

    fn state(&self) -> MutexGuard<'_, SessionState> {
        // The state is plain data updated in single statements; after a panic elsewhere it is
        // still consistent, so keep going rather than wedge the relay.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks the driver to close the connection with `reason` (idempotent: first reason wins).
    pub fn request_close(&self, reason: CloseReason) {
        self.close.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn touch(&self, now: Instant) {
        let mut state = self.state();
        if now > state.last_heard {
            state.last_heard = now;
        }
    }

    pub fn silence(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.state().last_heard)
    }

    pub fn expires_at(&self) -> Instant {
        self.state().expires_at
    }

    pub fn set_expires_at(&self, at: Instant) {
        self.state().expires_at = at;
    }

    pub fn set_status(&self, status: SidecarStatus) {
        self.state().status = Some(status);
    }

    pub fn status(&self) -> Option<SidecarStatus> {
        self.state().status.clone()
    }

    pub fn set_draining(&self) {
        self.state().draining = true;
    }

    /// Whether new calls may be routed here.
    pub fn accepts_calls(&self) -> bool {
        let state = self.state();
        !state.closed && !state.draining
    }

    /// Registers a call; refuses when the session is closed or `max_in_flight` are pending.
    pub fn begin_call(
        &self,
        request_id: RequestId,
        progress: Option<mpsc::Sender<RelayProgress>>,
        max_in_flight: usize,
    ) -> Result<oneshot::Receiver<Result<Outcome, GatewayError>>, GatewayError> {
        let mut state = self.state();
        if state.closed || state.draining {
            return Err(GatewayError::new(ErrorCode::SidecarUnavailable));
        }
        if state.pending.len() >= max_in_flight {
            return Err(GatewayError::new(ErrorCode::RelayOverloaded));
        }
        let (reply, receiver) = oneshot::channel();
        state
            .pending
            .insert(request_id, PendingCall { reply, progress });
        Ok(receiver)
    }

    /// Completes a call with the sidecar's answer. Unknown ids (late answers to calls that
    /// timed out or were cancelled) are ignored.
    pub fn complete(&self, request_id: RequestId, outcome: Outcome) -> bool {
        let call = self.state().pending.remove(&request_id);
        match call {
            Some(call) => {
                let _ = call.reply.send(Ok(outcome));
                true
            }
            None => false,
        }
    }

    /// Completes a call with an error (e.g. its request could not be sent).
    pub fn fail(&self, request_id: RequestId, error: GatewayError) {
        let call = self.state().pending.remove(&request_id);
        if let Some(call) = call {
            let _ = call.reply.send(Err(error));
        }
    }

    /// Forwards progress to the waiting call; dropped if it cannot keep up.
    pub fn progress(&self, progress: RelayProgress) {
        let sender = self
            .state()
            .pending
            .get(&progress.request_id)
            .and_then(|call| call.progress.clone());
        if let Some(sender) = sender {
            let _ = sender.try_send(progress);
        }
    }

    /// Forgets a call the caller gave up on. Returns whether it was still pending (so the
    /// caller should tell the sidecar to cancel it).
    pub fn abandon(&self, request_id: RequestId) -> bool {
        self.state().pending.remove(&request_id).is_some()
    }

    /// Marks the session closed and fails every pending call with `code`.
    pub fn close_and_fail_all(&self, code: ErrorCode) {
        let pending: Vec<PendingCall> = {
            let mut state = self.state();
            state.closed = true;
            state.pending.drain().map(|(_, call)| call).collect()
        };
        for call in pending {
            let _ = call.reply.send(Err(GatewayError::new(code)));
        }
    }

    pub fn snapshot(&self, now: Instant) -> LiveSidecar {
        let state = self.state();
        LiveSidecar {
            sidecar_id: self.sidecar_id.clone(),
            user_id: self.user_id.clone(),
            session_age: now.saturating_duration_since(self.registered_at),
            last_heartbeat: now.saturating_duration_since(state.last_heard),
            expires_in: state.expires_at.saturating_duration_since(now),
            broker_session: state.status.as_ref().map(|s| s.broker_session.clone()),
        }
    }
}

pub(crate) struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    events: broadcast::Sender<SessionEvent>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new() -> Registry {
        let (events, _) = broadcast::channel(256);
        Registry {
            sessions: Mutex::new(HashMap::new()),
            events,
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    pub fn emit(&self, event: SessionEvent) {
        // No subscribers is fine.
        let _ = self.events.send(event);
    }

    /// Registers a confirmed session, replacing (and closing) an older one of the same
    /// sidecar id.
    pub fn register(&self, session: Arc<Session>) {
        let replaced = self
            .sessions()
            .insert(session.sidecar_id.clone(), Arc::clone(&session));
        if let Some(old) = replaced {
            old.request_close(CloseReason::Replaced);
        }
        self.emit(SessionEvent::Registered {
            sidecar_id: session.sidecar_id.clone(),
            user_id: session.user_id.clone(),
        });
    }

    /// Removes the session if it is still the registered one for its sidecar id.
    pub fn remove(&self, session: &Session) -> bool {
        let mut sessions = self.sessions();
        let current = sessions
            .get(&session.sidecar_id)
            .is_some_and(|registered| registered.session_id == session.session_id);
        if current {
            sessions.remove(&session.sidecar_id);
        }
        current
    }

    /// The user's sessions, most recently registered first.
    pub fn sessions_for_user(&self, user_id: &str) -> Vec<Arc<Session>> {
        let mut found: Vec<Arc<Session>> = self
            .sessions()
            .values()
            .filter(|session| session.user_id == user_id)
            .cloned()
            .collect();
        found.sort_by_key(|session| std::cmp::Reverse(session.registered_at));
        found
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions().values().cloned().collect()
    }

    pub fn live_sidecars(&self) -> Vec<LiveSidecar> {
        let now = Instant::now();
        let mut list: Vec<LiveSidecar> = self
            .sessions()
            .values()
            .map(|session| session.snapshot(now))
            .collect();
        list.sort_by(|a, b| a.sidecar_id.cmp(&b.sidecar_id));
        list
    }
}
