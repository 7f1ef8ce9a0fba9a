//! Live relay sessions, keyed by sidecar id.
//!
//! A session enters only after key confirmation (the first authentic record) and replaces an
//! older session of the same sidecar id, which is told to close (`Close{Replaced}`). Each
//! session carries its pending calls, so the connection driver can complete them and the
//! router can add to them under one lock (which is what bounds the calls in flight).
//!
//! When a registered session ends, the registry remembers why, per sidecar id (bounded, for
//! [`SESSION_END_MEMORY`], forgotten when that sidecar registers again), so the next call
//! says `SIDECAR_HEARTBEAT_STALE` or `SIDECAR_SESSION_EXPIRED` rather than a bare
//! `SIDECAR_UNAVAILABLE`.

use crate::error::GatewayError;
use crate::store::PairingId;
use protocol::envelope::{JournalRef, Outcome, RelayProgress, RelayResponse, RequestId};
use protocol::frame::{CloseReason, Frame, SidecarStatus};
use protocol::identity::PublicKey;
use shared_safety::ErrorCode;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Calls that may wait for a slot on one session at once; beyond it a call is refused at once
/// (`RELAY_OVERLOADED`) rather than queued without bound.
pub const MAX_QUEUED_PER_SESSION: usize = 4096;

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

/// A sidecar's answer: the outcome and the journal entry the call wrote last, if any.
pub(crate) type Answer = (Outcome, Option<JournalRef>);

pub(crate) struct PendingCall {
    reply: oneshot::Sender<Result<Answer, GatewayError>>,
    progress: Option<mpsc::Sender<RelayProgress>>,
}

struct SessionState {
    last_heard: Instant,
    expires_at: Instant,
    status: Option<SidecarStatus>,
    pending: HashMap<RequestId, PendingCall>,
    /// The sidecar sent GoAway: no new calls, in-flight ones finish.
    draining: bool,
    /// Set when the session ended: the code late callers get.
    closed: Option<ErrorCode>,
}

/// Who a relay session is: what the handshake authenticated.
#[derive(Clone, Debug)]
pub(crate) struct SessionIdentity {
    pub session_id: [u8; 16],
    pub pairing_id: PairingId,
    pub sidecar_id: String,
    pub user_id: String,
    pub public_key: PublicKey,
}

/// One registered relay session. The connection driver owns the socket and the transport;
/// this is what everybody else may touch.
pub(crate) struct Session {
    pub session_id: [u8; 16],
    /// The pairing the handshake authenticated (revocation closes the session).
    pub pairing_id: PairingId,
    pub sidecar_id: String,
    pub user_id: String,
    pub public_key: PublicKey,
    pub registered_at: Instant,
    /// Frames for the driver to seal and send.
    pub outbound: mpsc::Sender<Frame>,
    close: watch::Sender<Option<CloseReason>>,
    state: Mutex<SessionState>,
    /// One permit per call the sidecar runs at once (what it announced at the handshake,
    /// bounded by the gateway's own limit). A call holds its permit from before its request
    /// is queued until its answer arrives or its cancel is queued, so the sidecar never sees
    /// more calls than it said it can run; the rest wait here, in arrival order.
    slots: Arc<Semaphore>,
    slot_count: usize,
    /// Calls waiting for a slot now.
    queued: AtomicUsize,
}

/// Decrements the queue length when a waiting call gets its slot or gives up.
struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
        identity: SessionIdentity,
        now: Instant,
        expires_at: Instant,
        outbound: mpsc::Sender<Frame>,
        slot_count: usize,
    ) -> (Session, watch::Receiver<Option<CloseReason>>) {
        let slot_count = slot_count.max(1);
        let (close, close_rx) = watch::channel(None);
        let SessionIdentity {
            session_id,
            pairing_id,
            sidecar_id,
            user_id,
            public_key,
        } = identity;
        (
            Session {
                session_id,
                pairing_id,
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
                    closed: None,
                }),
                slots: Arc::new(Semaphore::new(slot_count)),
                slot_count,
                queued: AtomicUsize::new(0),
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
        // Calls waiting for a slot will not get one here.
        self.slots.close();
    }

    /// Whether new calls may be routed here.
    pub fn accepts_calls(&self) -> bool {
        let state = self.state();
        state.closed.is_none() && !state.draining
    }

    /// Calls waiting for a slot now.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Why new calls cannot use this session, if they cannot.
    fn refusal(&self) -> Option<GatewayError> {
        let state = self.state();
        if let Some(code) = state.closed {
            return Some(GatewayError::new(code));
        }
        if state.draining {
            return Some(GatewayError::new(ErrorCode::SidecarUnavailable));
        }
        None
    }

    /// Waits for a slot: at once when one is free, else in arrival order for at most `wait`.
    /// `RELAY_OVERLOADED` (nothing was sent) when the wait runs out or [`MAX_QUEUED_PER_SESSION`]
    /// calls already wait; the session's end code when it ends meanwhile.
    pub async fn acquire_slot(
        &self,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<OwnedSemaphorePermit, GatewayError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_PER_SESSION {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(GatewayError::with_detail(
                ErrorCode::RelayOverloaded,
                format!(
                    "{MAX_QUEUED_PER_SESSION} calls already wait for this sidecar; nothing was sent."
                ),
            ));
        }
        let _queued = QueuedGuard(&self.queued);
        tokio::select! {
            acquired = tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned()) => match acquired {
                Ok(Ok(permit)) => match self.refusal() {
                    Some(refusal) => Err(refusal),
                    None => Ok(permit),
                },
                // Closed: the session ended while the call waited.
                Ok(Err(_)) => Err(self
                    .refusal()
                    .unwrap_or_else(|| GatewayError::new(ErrorCode::SidecarUnavailable))),
                Err(_) => Err(GatewayError::with_detail(
                    ErrorCode::RelayOverloaded,
                    format!(
                        "The sidecar stayed busy with {} calls for {} ms; nothing was sent.",
                        self.slot_count,
                        wait.as_millis()
                    ),
                )),
            },
            _ = cancel.cancelled() => Err(GatewayError::new(ErrorCode::Cancelled)),
        }
    }

    /// Registers a call (its caller holds a slot); refuses when the session is closed.
    pub fn begin_call(
        &self,
        request_id: RequestId,
        progress: Option<mpsc::Sender<RelayProgress>>,
    ) -> Result<oneshot::Receiver<Result<Answer, GatewayError>>, GatewayError> {
        let mut state = self.state();
        if let Some(code) = state.closed {
            return Err(GatewayError::new(code));
        }
        if state.draining {
            return Err(GatewayError::new(ErrorCode::SidecarUnavailable));
        }
        // Slots bound the pending calls; this only guards against a caller without one.
        if state.pending.len() >= self.slot_count {
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
    pub fn complete(&self, response: RelayResponse) -> bool {
        let call = self.state().pending.remove(&response.request_id);
        match call {
            Some(call) => {
                let _ = call.reply.send(Ok((response.outcome, response.journal)));
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
            state.closed = Some(code);
            state.pending.drain().map(|(_, call)| call).collect()
        };
        // Wakes the calls waiting for a slot; they answer with `code`.
        self.slots.close();
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

/// How long the registry remembers why a sidecar's last session ended.
pub const SESSION_END_MEMORY: Duration = Duration::from_secs(600);
/// Bound on remembered session ends; the oldest is forgotten first.
pub(crate) const MAX_REMEMBERED_ENDS: usize = 4096;

/// Why a sidecar's last session ended, and when (see [`Registry::last_end`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SessionEnd {
    pub reason: DropReason,
    pub at: Instant,
    /// The key of the ended session: a remembered end only speaks for the same pairing.
    pub public_key: PublicKey,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Arc<Session>>,
    /// Per sidecar id, why its last registered session ended. Cleared when that sidecar
    /// registers again; entries older than [`SESSION_END_MEMORY`] are ignored and pruned.
    ended: HashMap<String, SessionEnd>,
}

impl Inner {
    fn remember(&mut self, sidecar_id: &str, end: SessionEnd) {
        if !self.ended.contains_key(sidecar_id) && self.ended.len() >= MAX_REMEMBERED_ENDS {
            self.ended
                .retain(|_, old| end.at.saturating_duration_since(old.at) < SESSION_END_MEMORY);
            if self.ended.len() >= MAX_REMEMBERED_ENDS {
                let oldest = self
                    .ended
                    .iter()
                    .min_by_key(|(_, old)| old.at)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    self.ended.remove(&oldest);
                }
            }
        }
        self.ended.insert(sidecar_id.to_string(), end);
    }
}

pub(crate) struct Registry {
    inner: Mutex<Inner>,
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
            inner: Mutex::new(Inner::default()),
            events,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Plain maps updated in single statements: still consistent after a panic elsewhere.
        self.inner
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
        let replaced = {
            let mut inner = self.inner();
            inner.ended.remove(&session.sidecar_id);
            inner
                .sessions
                .insert(session.sidecar_id.clone(), Arc::clone(&session))
        };
        if let Some(old) = replaced {
            old.request_close(CloseReason::Replaced);
        }
        self.emit(SessionEvent::Registered {
            sidecar_id: session.sidecar_id.clone(),
            user_id: session.user_id.clone(),
        });
    }

    /// Removes the session if it is still the registered one for its sidecar id, and then
    /// remembers why it ended (a replaced session is no longer the registered one, so its
    /// end is not remembered over its successor).
    pub fn end(&self, session: &Session, reason: DropReason) -> bool {
        let mut inner = self.inner();
        let current = inner
            .sessions
            .get(&session.sidecar_id)
            .is_some_and(|registered| registered.session_id == session.session_id);
        if current {
            inner.sessions.remove(&session.sidecar_id);
            inner.remember(
                &session.sidecar_id,
                SessionEnd {
                    reason,
                    at: Instant::now(),
                    public_key: session.public_key,
                },
            );
        }
        current
    }

    /// Why the last session of `sidecar_id` under `public_key` ended, if it ended less than
    /// [`SESSION_END_MEMORY`] ago and the sidecar has not registered since.
    pub fn last_end(&self, sidecar_id: &str, public_key: &PublicKey) -> Option<SessionEnd> {
        let now = Instant::now();
        let mut inner = self.inner();
        let end = *inner.ended.get(sidecar_id)?;
        if now.saturating_duration_since(end.at) >= SESSION_END_MEMORY {
            inner.ended.remove(sidecar_id);
            return None;
        }
        (end.public_key == *public_key).then_some(end)
    }

    /// Why the last session of `sidecar_id` ended, whatever its key, within the memory
    /// window (for operators and tests; routing uses [`Registry::last_end`]).
    pub fn last_end_reason(&self, sidecar_id: &str) -> Option<DropReason> {
        let now = Instant::now();
        let inner = self.inner();
        inner
            .ended
            .get(sidecar_id)
            .filter(|end| now.saturating_duration_since(end.at) < SESSION_END_MEMORY)
            .map(|end| end.reason)
    }

    /// How many session ends are remembered (bounded by an internal cap).
    #[cfg(test)]
    pub(crate) fn remembered_ends(&self) -> usize {
        self.inner().ended.len()
    }

    /// The user's sessions, most recently registered first.
    pub fn sessions_for_user(&self, user_id: &str) -> Vec<Arc<Session>> {
        let mut found: Vec<Arc<Session>> = self
            .inner()
            .sessions
            .values()
            .filter(|session| session.user_id == user_id)
            .cloned()
            .collect();
        found.sort_by_key(|session| std::cmp::Reverse(session.registered_at));
        found
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.inner().sessions.values().cloned().collect()
    }

    pub fn live_sidecars(&self) -> Vec<LiveSidecar> {
        let now = Instant::now();
        let mut list: Vec<LiveSidecar> = self
            .inner()
            .sessions
            .values()
            .map(|session| session.snapshot(now))
            .collect();
        list.sort_by(|a, b| a.sidecar_id.cmp(&b.sidecar_id));
        list
    }
}
