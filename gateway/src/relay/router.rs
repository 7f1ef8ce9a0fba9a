//! Routing a tool call to the caller's sidecar.
//!
//! The arguments are checked before anything else, whatever the relay state: the sanitizer
//! (`SENSITIVE_MATERIAL_REFUSED`), then the tool's closed schema (`ARGUMENTS_INVALID`).
//! Then the gates, in order, each with its own code: relay enabled
//! (`CONFIG_SIDECAR_FORBIDDEN`), an active pairing for the user (`SIDECAR_PAIRING_REQUIRED`),
//! a live session bound to one of those pairings (or, when there is none, why the last one
//! ended: `SIDECAR_HEARTBEAT_STALE`, `SIDECAR_SESSION_EXPIRED`, else `SIDECAR_UNAVAILABLE`),
//! heartbeat fresh (`SIDECAR_HEARTBEAT_STALE`), session unexpired (`SIDECAR_SESSION_EXPIRED`),
//! room in flight (`RELAY_OVERLOADED`).
//!
//! A call that times out, or that the MCP client cancels, sends `Cancel` to the sidecar; so
//! does a call whose future is dropped (the pending guard).

use crate::error::GatewayError;
use crate::relay::Relay;
use crate::relay::registry::{DropReason, Session};
use protocol::catalog::ToolSpec;
use protocol::envelope::{JournalRef, Outcome, RelayProgress, RelayRequest, RequestId};
use protocol::frame::{CloseReason, Frame};
use protocol::limits::MAX_SHORT_STRING;
use rand_core::OsRng;
use shared_safety::ErrorCode;
use shared_safety::scope::ScopeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The sidecar's answer and where it came from.
#[derive(Clone, Debug)]
pub struct CallOutcome {
    pub outcome: Outcome,
    pub sidecar_id: String,
    pub request_id: RequestId,
    /// The sidecar journal entry the call wrote last (order tools).
    pub journal: Option<JournalRef>,
}

/// How far a call got, for the audit line: filled in as the call proceeds, so a call that
/// fails after it was forwarded is still tied to its request id and payload hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallTrace {
    /// The sidecar the call was routed to.
    pub sidecar_id: Option<String>,
    pub request_id: Option<RequestId>,
    /// The canonical payload hash carried by the forwarded request.
    pub payload_hash: Option<[u8; 32]>,
    /// The pairing the session was authenticated for (hex).
    pub pairing_id: Option<String>,
    /// The sidecar journal entry the call wrote last, from its answer.
    pub journal: Option<JournalRef>,
}

/// Where a call goes: a session this replica holds, or (with a cluster) the replica that
/// holds the user's session.
#[derive(Clone)]
pub(crate) enum Target {
    Local(Arc<Session>),
    Remote { user_id: String },
}

impl Target {
    /// The local session, if the call stays on this replica.
    pub(crate) fn session(&self) -> Option<&Arc<Session>> {
        match self {
            Target::Local(session) => Some(session),
            Target::Remote { .. } => None,
        }
    }
}

/// A call whose request is built and traced but not sent yet: what lies between routing it
/// and forwarding it (the order calls' durable audit record).
pub(crate) struct PreparedCall {
    pub(crate) target: Target,
    pub(crate) request: RelayRequest,
    pub(crate) deadline: Duration,
    /// The call can change broker state (see [`handed_over_failure`]).
    pub(crate) changes_broker_state: bool,
}

/// Removes the pending entry when the call ends in any way other than an answer, and tells
/// the sidecar to stop working on it.
struct PendingGuard {
    session: Arc<Session>,
    request_id: RequestId,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.session.abandon(self.request_id) {
            let cancel = Frame::Cancel {
                request_id: self.request_id,
            };
            if self.session.outbound.try_send(cancel).is_err() {
                tracing::debug!(request_id = %self.request_id, "cancel not queued: relay busy or closed");
            }
        }
    }
}

impl Relay {
    /// Picks the user's session, applying the gates in order:
    /// 1. an active pairing for the user, as the store holds it at this call (so a
    ///    `pairing revoke` run by the CLI in another process counts from the next call):
    ///    served from memory while the store's pairings generation is unchanged, re-read
    ///    when it moved (see [`crate::store::pairing_cache`]); a revoked pairing counts as
    ///    none and its sessions are closed on the way (`SIDECAR_PAIRING_REQUIRED`);
    /// 2. a live session bound to one of those pairings (same sidecar id and key); without
    ///    one, the remembered reason the last one ended: heartbeat timeout
    ///    (`SIDECAR_HEARTBEAT_STALE`), expiry (`SIDECAR_SESSION_EXPIRED`), anything else
    ///    (`SIDECAR_UNAVAILABLE`);
    /// 3. heartbeat fresh (`SIDECAR_HEARTBEAT_STALE`);
    /// 4. session unexpired (`SIDECAR_SESSION_EXPIRED`).
    ///
    /// The slot (queue, `RELAY_OVERLOADED`) is taken when the call is forwarded.
    pub(crate) async fn session_for_user(
        &self,
        user_id: &str,
    ) -> Result<Arc<Session>, GatewayError> {
        if !self.settings.enabled {
            return Err(GatewayError::new(ErrorCode::ConfigSidecarForbidden));
        }
        let user_pairings = self.store.user_pairings(user_id).await.map_err(|error| {
            tracing::error!(%error, "pairing lookup failed");
            GatewayError::new(ErrorCode::InternalError)
        })?;
        let pairings = &user_pairings.active;
        let mut candidates = Vec::new();
        for session in self.registry.sessions_for_user(user_id) {
            let paired = pairings.iter().any(|pairing| {
                pairing.sidecar_id == session.sidecar_id
                    && pairing.sidecar_public_key == session.public_key
            });
            if !paired {
                session.request_close(CloseReason::PairingRevoked);
                continue;
            }
            if session.accepts_calls() {
                candidates.push(session);
            }
        }
        if pairings.is_empty() {
            // Say why when a key rotation ended the pairing, so the user knows to pair again
            // rather than hunt for a revoke they did not make.
            return Err(GatewayError::new(
                if user_pairings.ended_by_key_rotation.is_some() {
                    ErrorCode::GatewayKeyRotated
                } else {
                    ErrorCode::SidecarPairingRequired
                },
            ));
        }
        if candidates.is_empty() {
            let remembered = pairings
                .iter()
                .filter_map(|pairing| {
                    self.registry
                        .last_end(&pairing.sidecar_id, &pairing.sidecar_public_key)
                })
                .max_by_key(|end| end.at);
            let code = match remembered.map(|end| end.reason) {
                Some(DropReason::HeartbeatTimeout) => ErrorCode::SidecarHeartbeatStale,
                Some(DropReason::SessionExpired) => ErrorCode::SidecarSessionExpired,
                _ => ErrorCode::SidecarUnavailable,
            };
            return Err(GatewayError::new(code));
        }
        let now = Instant::now();
        let timeout = self.settings.heartbeat.timeout();
        let healthy = candidates
            .iter()
            .find(|session| session.silence(now) < timeout && now < session.expires_at());
        if let Some(session) = healthy {
            return Ok(Arc::clone(session));
        }
        // None is healthy: report the most recent session's problem, heartbeat first.
        let newest = &candidates[0];
        if newest.silence(now) >= timeout {
            Err(GatewayError::new(ErrorCode::SidecarHeartbeatStale))
        } else {
            Err(GatewayError::new(ErrorCode::SidecarSessionExpired))
        }
    }

    /// Relays one tool call for `user_id` and waits for the answer.
    /// The arguments are checked first (sanitizer, then the tool's closed schema), then the
    /// gates; `trace` records how far the call got, for the audit line.
    pub async fn call(
        &self,
        user_id: &str,
        call: ToolCall<'_>,
        progress: Option<mpsc::Sender<RelayProgress>>,
        cancel: &CancellationToken,
        trace: &mut CallTrace,
    ) -> Result<CallOutcome, GatewayError> {
        check_arguments(call.tool, call.arguments)?;
        let target = self.target_for_user(user_id).await?;
        self.call_on(&target, call, progress, cancel, trace).await
    }

    /// Where `user_id`'s calls go: the gates of [`Relay::session_for_user`] on this replica;
    /// when it holds no usable session and a cluster is configured, the replica that does
    /// (which applies the session gates itself). The pairing gates are never forwarded: the
    /// store every replica shares answers them here.
    pub(crate) async fn target_for_user(&self, user_id: &str) -> Result<Target, GatewayError> {
        match self.session_for_user(user_id).await {
            Ok(session) => Ok(Target::Local(session)),
            Err(error)
                if self.cluster.is_some()
                    && matches!(
                        error.code,
                        ErrorCode::SidecarUnavailable
                            | ErrorCode::SidecarHeartbeatStale
                            | ErrorCode::SidecarSessionExpired
                    ) =>
            {
                Ok(Target::Remote {
                    user_id: user_id.to_string(),
                })
            }
            Err(error) => Err(error),
        }
    }

    /// Relays one call to a chosen target.
    pub(crate) async fn call_on(
        &self,
        target: &Target,
        call: ToolCall<'_>,
        progress: Option<mpsc::Sender<RelayProgress>>,
        cancel: &CancellationToken,
        trace: &mut CallTrace,
    ) -> Result<CallOutcome, GatewayError> {
        let prepared = self.prepare(target, call, trace)?;
        self.forward(prepared, progress, cancel, trace).await
    }

    /// Builds the request for `call` to `target` (arguments checked again, idempotency key
    /// read, request id and payload hash traced) without sending anything.
    pub(crate) fn prepare(
        &self,
        target: &Target,
        call: ToolCall<'_>,
        trace: &mut CallTrace,
    ) -> Result<PreparedCall, GatewayError> {
        if let Target::Local(session) = target {
            trace.sidecar_id = Some(session.sidecar_id.clone());
            trace.pairing_id = Some(session.pairing_id.to_hex());
        }
        let ToolCall {
            tool,
            arguments,
            token_scopes,
            agent,
        } = call;
        check_arguments(tool, arguments)?;
        let deadline = self.settings.request_timeout;
        let idempotency_key = match arguments.get("idempotency_key") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(key))
                if !key.is_empty() && key.len() <= MAX_SHORT_STRING =>
            {
                Some(key.clone())
            }
            Some(_) => {
                return Err(GatewayError::with_detail(
                    ErrorCode::ArgumentsInvalid,
                    format!("idempotency_key must be a string of 1 to {MAX_SHORT_STRING} bytes."),
                ));
            }
        };
        let request_id = RequestId::from_rng(&mut OsRng);
        let request = RelayRequest::new(
            request_id,
            tool.name,
            tool.scope,
            &token_scopes.iter().collect::<Vec<_>>(),
            arguments,
            u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            idempotency_key,
        )
        .map_err(|_| {
            GatewayError::with_detail(
                ErrorCode::ArgumentsInvalid,
                "The arguments cannot be canonicalized.",
            )
        })?;
        let mut request = request;
        request.agent = agent;
        trace.request_id = Some(request_id);
        trace.payload_hash = Some(request.payload_hash);
        Ok(PreparedCall {
            target: target.clone(),
            request,
            deadline,
            changes_broker_state: tool.changes_broker_state(),
        })
    }

    /// Sends a prepared call and waits for the answer (bounded by the request timeout).
    pub(crate) async fn forward(
        &self,
        prepared: PreparedCall,
        progress: Option<mpsc::Sender<RelayProgress>>,
        cancel: &CancellationToken,
        trace: &mut CallTrace,
    ) -> Result<CallOutcome, GatewayError> {
        let PreparedCall {
            target,
            request,
            deadline,
            changes_broker_state,
        } = prepared;
        let session = match target {
            Target::Local(session) => session,
            Target::Remote { user_id } => {
                return self
                    .forward_to_holder(
                        &user_id,
                        request,
                        changes_broker_state,
                        deadline,
                        progress,
                        cancel,
                        trace,
                    )
                    .await;
            }
        };
        let request_id = request.request_id;
        let started = Instant::now();
        // Declared before the guard so it is released after the guard has queued the cancel:
        // the sidecar frees the slot on that cancel, before it can see the next call's request.
        let _slot = session.acquire_slot(queue_wait(deadline), cancel).await?;
        let reply = session.begin_call(request_id, progress)?;
        let guard = PendingGuard {
            session: Arc::clone(&session),
            request_id,
        };
        let sent = tokio::select! {
            sent = tokio::time::timeout(deadline, session.outbound.send(Frame::Request(request))) => sent,
            _ = cancel.cancelled() => return Err(GatewayError::new(ErrorCode::Cancelled)),
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(GatewayError::new(ErrorCode::SidecarUnavailable)),
            Err(_) => return Err(GatewayError::new(ErrorCode::RequestTimeout)),
        }
        let remaining = deadline.saturating_sub(started.elapsed());
        let answer = tokio::select! {
            answer = reply => answer,
            _ = tokio::time::sleep(remaining) => {
                tracing::info!(%request_id, sidecar_id = %session.sidecar_id, "relay call timed out");
                return Err(handed_over_failure(
                    changes_broker_state,
                    GatewayError::new(ErrorCode::RequestTimeout),
                ));
            }
            _ = cancel.cancelled() => {
                tracing::info!(%request_id, sidecar_id = %session.sidecar_id, "relay call cancelled by the client");
                return Err(GatewayError::new(ErrorCode::Cancelled));
            }
        };
        // Answered (or failed by the driver): nothing left to cancel.
        drop(guard);
        match answer {
            Ok(Ok((outcome, journal))) => {
                trace.journal = journal;
                if let Some(journal) = journal
                    && let Err(error) = self
                        .store
                        .record_journal_anchor(session.pairing_id, journal)
                        .await
                {
                    // The sidecar's next handshake on another replica then names an older
                    // entry: its own journal head still catches a cut journal.
                    tracing::error!(%error, "could not record the journal anchor");
                }
                Ok(CallOutcome {
                    outcome,
                    sidecar_id: session.sidecar_id.clone(),
                    request_id,
                    journal,
                })
            }
            Ok(Err(error)) => Err(handed_over_failure(changes_broker_state, error)),
            Err(_) => Err(handed_over_failure(
                changes_broker_state,
                GatewayError::new(ErrorCode::RelayProtocolError),
            )),
        }
    }

    /// How long a relayed call may take.
    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }
}

/// How long a call may wait for one of its sidecar's slots: half its deadline, so a call that
/// starts still has at least half of it to run (an order sent with only moments left would
/// come back ORDER_OUTCOME_UNKNOWN). A call still waiting then is refused with
/// `RELAY_OVERLOADED`, and nothing was sent.
fn queue_wait(deadline: Duration) -> Duration {
    deadline / 2
}

/// How a call that was handed to the sidecar and then lost is reported. For a tool that can
/// change broker state, losing the session or the deadline says nothing about the order: the
/// sidecar may have sent it, and finishes and journals it even without the connection. So the
/// agent hears ORDER_OUTCOME_UNKNOWN (do not resend blindly; reconcile, or retry with the same
/// idempotency key), never a plain "try again". Failures that mean nothing reached the sidecar
/// (a request too large to relay) and read tools keep their own codes.
pub(crate) fn handed_over_failure(changes_broker_state: bool, error: GatewayError) -> GatewayError {
    let lost = matches!(
        error.code,
        ErrorCode::RequestTimeout
            | ErrorCode::RelayProtocolError
            | ErrorCode::SidecarHeartbeatStale
            | ErrorCode::SidecarSessionExpired
            | ErrorCode::SidecarPairingRequired
            | ErrorCode::SidecarUnavailable
    );
    if !changes_broker_state || !lost {
        return error;
    }
    GatewayError::with_detail(
        ErrorCode::OrderOutcomeUnknown,
        format!(
            "(the order was handed to the laptop, then {} before its answer came back; the \
             laptop finishes and journals it on its own)",
            match error.code {
                ErrorCode::RequestTimeout => "the deadline passed",
                ErrorCode::SidecarPairingRequired => "the pairing was revoked",
                _ => "the connection to the laptop was lost",
            }
        ),
    )
}

/// One tool call as the gateway forwards it: the tool, its arguments, and the scopes of the
/// caller's (already validated) token, which travel so that the sidecar can require both
/// grants itself.
#[derive(Clone, Copy, Debug)]
pub struct ToolCall<'a> {
    pub tool: &'static ToolSpec,
    pub arguments: &'a serde_json::Value,
    pub token_scopes: &'a ScopeSet,
    /// The laptop's approval behind the caller's token (built-in authorization server).
    pub agent: Option<protocol::agents::ApprovalId>,
}

/// Checks a call's arguments before anything is forwarded: sensitive material first
/// (`SENSITIVE_MATERIAL_REFUSED`, so a `cookie` field is named as what it is), then the
/// tool's closed schema (`ARGUMENTS_INVALID`). Refusals name the path and the rule or the
/// kind of material, never the value.
pub(crate) fn check_arguments(
    tool: &ToolSpec,
    arguments: &serde_json::Value,
) -> Result<(), GatewayError> {
    if !arguments.is_object() {
        return Err(GatewayError::with_detail(
            ErrorCode::ArgumentsInvalid,
            "Arguments must be a JSON object.",
        ));
    }
    shared_safety::sanitize::check_request(arguments).map_err(|found| {
        GatewayError::with_detail(
            ErrorCode::SensitiveMaterialRefused,
            format!("Found: {found}."),
        )
    })?;
    shared_safety::schema::validate_arguments(tool, arguments).map_err(|violation| {
        GatewayError::with_detail(
            ErrorCode::ArgumentsInvalid,
            format!("Refused: {violation}."),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfiguration;
    use crate::relay::registry::MAX_REMEMBERED_ENDS;
    use crate::relay::registry::SessionIdentity;
    use crate::relay::{RelaySettings, SESSION_END_MEMORY};
    use crate::store::NewPairing;
    use crate::store::{CompleteOutcome, PairingId, Store};
    use protocol::identity::{PublicKey, StaticKeypair};
    use tokio::sync::watch;

    struct Fixture {
        relay: Relay,
        _dir: tempfile::TempDir,
    }

    /// A relay over a real store, heartbeat 15 s / 45 s, TTL 3600 s, one call in flight.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = GatewayConfiguration::for_dev(
            "127.0.0.1:0".parse().unwrap(),
            "http://127.0.0.1:9",
            dir.path(),
        );
        config.sidecar.max_in_flight_per_sidecar = 1;
        let settings = RelaySettings::from_config(&config, true);
        let store = Store::open(dir.path()).unwrap();
        let keypair = Arc::new(StaticKeypair::generate(&mut OsRng));
        Fixture {
            relay: Relay::new(settings, store, keypair, "remote-1".into(), None),
            _dir: dir,
        }
    }

    async fn pair(relay: &Relay, user: &str, sidecar_id: &str) -> PublicKey {
        let issued = crate::pairing::issue_code(&relay.store, user, Duration::from_secs(60), 5)
            .await
            .unwrap();
        let key = StaticKeypair::generate(&mut OsRng).public();
        let outcome = relay
            .store
            .complete_pairing(NewPairing {
                pairing_id: PairingId::random(),
                code_id: issued.code_id,
                sidecar_id: sidecar_id.into(),
                sidecar_public_key: key,
                display_name: "laptop".into(),
                now_ms: crate::clock::unix_ms(),
            })
            .await
            .unwrap();
        assert!(matches!(outcome, CompleteOutcome::Paired(_)));
        key
    }

    fn register(
        relay: &Relay,
        user: &str,
        sidecar_id: &str,
        key: PublicKey,
        id: u8,
    ) -> (
        Arc<Session>,
        watch::Receiver<Option<CloseReason>>,
        mpsc::Receiver<Frame>,
    ) {
        let now = Instant::now();
        let (outbound, outbound_rx) = mpsc::channel(4);
        let (session, close) = Session::new(
            SessionIdentity {
                session_id: [id; 16],
                pairing_id: PairingId([id; 16]),
                sidecar_id: sidecar_id.into(),
                user_id: user.into(),
                public_key: key,
            },
            now,
            now + relay.settings.session_ttl,
            outbound,
            relay.settings.max_in_flight,
        );
        let session = Arc::new(session);
        relay.registry.register(Arc::clone(&session));
        (session, close, outbound_rx)
    }

    async fn gate(relay: &Relay, user: &str) -> Result<String, ErrorCode> {
        relay
            .session_for_user(user)
            .await
            .map(|session| session.sidecar_id.clone())
            .map_err(|error| error.code)
    }

    #[tokio::test(start_paused = true)]
    async fn gates_apply_in_order_each_with_its_own_code() {
        let Fixture { relay, _dir } = fixture();
        let timeout = relay.settings.heartbeat.timeout();

        // 1. No pairing at all.
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarPairingRequired)
        );
        let key = pair(&relay, "alice", "laptop-1").await;

        // 2. Paired, never connected, nothing remembered.
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarUnavailable)
        );

        // A live, fresh, unexpired session passes.
        let (session, _close, _out) = register(&relay, "alice", "laptop-1", key, 1);
        assert_eq!(gate(&relay, "alice").await, Ok("laptop-1".into()));

        // 3. Heartbeat stale (silence reaches the timeout).
        tokio::time::advance(timeout).await;
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarHeartbeatStale)
        );
        session.touch(Instant::now());
        assert_eq!(gate(&relay, "alice").await, Ok("laptop-1".into()));

        // 4. Session expired while heartbeats are fresh.
        session.set_expires_at(Instant::now() + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        session.touch(Instant::now());
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarSessionExpired)
        );

        // Stale and expired at once: the heartbeat gate comes first.
        tokio::time::advance(timeout).await;
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarHeartbeatStale)
        );

        // 5. Slots: one call at a time here (the fixture's sidecar runs one); the next waits
        // for half its deadline and is then refused with nothing sent.
        session.touch(Instant::now());
        session.set_expires_at(Instant::now() + Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let first = session.acquire_slot(Duration::from_secs(1), &cancel).await;
        assert!(first.is_ok());
        let second = session.acquire_slot(Duration::from_secs(1), &cancel).await;
        assert_eq!(second.unwrap_err().code, ErrorCode::RelayOverloaded);
        assert_eq!(session.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_sidecars_slots_wait_in_arrival_order() {
        let fixture = fixture();
        let relay = &fixture.relay;
        let key = pair(relay, "alice", "laptop-1").await;
        let (session, _close, _outbound) = register(relay, "alice", "laptop-1", key, 1);
        let cancel = CancellationToken::new();
        let held = session
            .acquire_slot(Duration::from_secs(10), &cancel)
            .await
            .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for index in 0..3 {
            let waiter = Arc::clone(&session);
            let order = Arc::clone(&order);
            let cancel = cancel.clone();
            waiters.push(tokio::spawn(async move {
                let slot = waiter.acquire_slot(Duration::from_secs(10), &cancel).await;
                order.lock().unwrap().push(index);
                drop(slot);
            }));
            // Each waiter queues before the next starts.
            while session.queued() < index + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(session.queued(), 3);
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(session.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once_and_sends_nothing() {
        let fixture = fixture();
        let relay = &fixture.relay;
        let key = pair(relay, "alice", "laptop-1").await;
        let (session, _close, _outbound) = register(relay, "alice", "laptop-1", key, 1);
        let cancel = CancellationToken::new();
        let _held = session
            .acquire_slot(Duration::from_secs(10), &cancel)
            .await
            .unwrap();
        let mut waiters = Vec::new();
        for _ in 0..crate::relay::registry::MAX_QUEUED_PER_SESSION {
            let session = Arc::clone(&session);
            let cancel = cancel.clone();
            waiters.push(tokio::spawn(async move {
                session
                    .acquire_slot(Duration::from_secs(10), &cancel)
                    .await
                    .map(drop)
            }));
        }
        while session.queued() < crate::relay::registry::MAX_QUEUED_PER_SESSION {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let refused = session
            .acquire_slot(Duration::from_secs(10), &cancel)
            .await
            .map(drop)
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::RelayOverloaded);
        // At once: the paused clock did not move.
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(
            session.queued(),
            crate::relay::registry::MAX_QUEUED_PER_SESSION
        );
        cancel.cancel();
        for waiter in waiters {
            assert_eq!(
                waiter.await.unwrap().unwrap_err().code,
                ErrorCode::Cancelled
            );
        }
        assert_eq!(session.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_for_a_slot_hears_why_the_session_ended_or_that_it_was_cancelled() {
        let fixture = fixture();
        let relay = &fixture.relay;
        let key = pair(relay, "alice", "laptop-1").await;
        let (session, _close, _outbound) = register(relay, "alice", "laptop-1", key, 1);
        let cancel = CancellationToken::new();
        let _held = session
            .acquire_slot(Duration::from_secs(10), &cancel)
            .await
            .unwrap();

        let own_cancel = CancellationToken::new();
        let waiting = {
            let session = Arc::clone(&session);
            let own_cancel = own_cancel.clone();
            tokio::spawn(async move {
                session
                    .acquire_slot(Duration::from_secs(10), &own_cancel)
                    .await
                    .map(drop)
            })
        };
        while session.queued() < 1 {
            tokio::task::yield_now().await;
        }
        own_cancel.cancel();
        assert_eq!(
            waiting.await.unwrap().unwrap_err().code,
            ErrorCode::Cancelled
        );

        let waiting = {
            let session = Arc::clone(&session);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                session
                    .acquire_slot(Duration::from_secs(10), &cancel)
                    .await
                    .map(drop)
            })
        };
        while session.queued() < 1 {
            tokio::task::yield_now().await;
        }
        session.close_and_fail_all(ErrorCode::SidecarHeartbeatStale);
        assert_eq!(
            waiting.await.unwrap().unwrap_err().code,
            ErrorCode::SidecarHeartbeatStale
        );
        assert_eq!(session.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_session_leaves_its_reason_behind() {
        let Fixture { relay, _dir } = fixture();
        let key = pair(&relay, "alice", "laptop-1").await;

        for (reason, expected) in [
            (
                DropReason::HeartbeatTimeout,
                ErrorCode::SidecarHeartbeatStale,
            ),
            (DropReason::SessionExpired, ErrorCode::SidecarSessionExpired),
            (DropReason::PeerClosed, ErrorCode::SidecarUnavailable),
            (DropReason::ProtocolError, ErrorCode::SidecarUnavailable),
            (DropReason::Shutdown, ErrorCode::SidecarUnavailable),
        ] {
            let (session, _close, _out) = register(&relay, "alice", "laptop-1", key, 1);
            assert_eq!(gate(&relay, "alice").await, Ok("laptop-1".into()));
            assert!(relay.registry.end(&session, reason));
            assert_eq!(gate(&relay, "alice").await, Err(expected), "{reason:?}");
            assert_eq!(relay.registry.last_end_reason("laptop-1"), Some(reason));
        }

        // Registering again clears the memory.
        let (session, _close, _out) = register(&relay, "alice", "laptop-1", key, 2);
        assert_eq!(relay.registry.last_end_reason("laptop-1"), None);
        assert!(relay.registry.end(&session, DropReason::HeartbeatTimeout));

        // ... and so does time.
        tokio::time::advance(SESSION_END_MEMORY - Duration::from_secs(1)).await;
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarHeartbeatStale)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarUnavailable)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_session_does_not_overwrite_its_successor() {
        let Fixture { relay, _dir } = fixture();
        let key = pair(&relay, "alice", "laptop-1").await;
        let (old, mut old_close, _out1) = register(&relay, "alice", "laptop-1", key, 1);
        let (_new, _close, _out2) = register(&relay, "alice", "laptop-1", key, 2);
        assert_eq!(*old_close.borrow_and_update(), Some(CloseReason::Replaced));
        // The old driver ends its session: not the registered one, nothing remembered.
        assert!(!relay.registry.end(&old, DropReason::Replaced));
        assert_eq!(relay.registry.last_end_reason("laptop-1"), None);
        assert_eq!(gate(&relay, "alice").await, Ok("laptop-1".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_pairing_counts_as_none_and_closes_its_session() {
        let Fixture { relay, _dir } = fixture();
        let key = pair(&relay, "alice", "laptop-1").await;
        let (_session, mut close, _out) = register(&relay, "alice", "laptop-1", key, 1);
        assert_eq!(gate(&relay, "alice").await, Ok("laptop-1".into()));

        // Revoked through the store, as the CLI in another process does.
        assert!(
            relay
                .store
                .revoke_pairing("laptop-1".into(), crate::clock::unix_ms())
                .await
                .unwrap()
        );
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarPairingRequired)
        );
        assert_eq!(
            *close.borrow_and_update(),
            Some(CloseReason::PairingRevoked)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_remembered_end_speaks_only_for_its_own_key() {
        let Fixture { relay, _dir } = fixture();
        let old_key = pair(&relay, "alice", "laptop-1").await;
        let (session, _close, _out) = register(&relay, "alice", "laptop-1", old_key, 1);
        assert!(relay.registry.end(&session, DropReason::HeartbeatTimeout));
        // Revoked and paired again with a new key under the same sidecar id.
        relay
            .store
            .revoke_pairing("laptop-1".into(), crate::clock::unix_ms())
            .await
            .unwrap();
        let _new_key = pair(&relay, "alice", "laptop-1").await;
        assert_eq!(
            gate(&relay, "alice").await,
            Err(ErrorCode::SidecarUnavailable)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_ends_are_bounded() {
        let Fixture { relay, _dir } = fixture();
        let key = StaticKeypair::generate(&mut OsRng).public();
        for index in 0..(MAX_REMEMBERED_ENDS + 10) {
            let (session, _close, _out) =
                register(&relay, "alice", &format!("sidecar-{index}"), key, 1);
            relay.registry.end(&session, DropReason::PeerClosed);
        }
        assert!(relay.registry.remembered_ends() <= MAX_REMEMBERED_ENDS);
        // The newest is kept, the oldest went first.
        let newest = format!("sidecar-{}", MAX_REMEMBERED_ENDS + 9);
        assert_eq!(
            relay.registry.last_end_reason(&newest),
            Some(DropReason::PeerClosed)
        );
    }

    #[test]
    fn arguments_are_sanitized_first_then_checked_against_the_closed_schema() {
        let accounts = protocol::catalog::find("ibkr_accounts_list").unwrap();
        assert!(check_arguments(accounts, &serde_json::json!({})).is_ok());

        // A cookie is named as what it is, although it is also an unknown field.
        let error = check_arguments(accounts, &serde_json::json!({"cookie": "x=1"})).unwrap_err();
        assert_eq!(error.code, ErrorCode::SensitiveMaterialRefused);

        let error = check_arguments(
            accounts,
            &serde_json::json!({"colour": "very-secret-value"}),
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::ArgumentsInvalid);
        let message = error.message();
        assert!(message.contains("/colour"), "{message}");
        assert!(message.contains("unknown field"), "{message}");
        assert!(!message.contains("very-secret-value"), "{message}");

        let error = check_arguments(accounts, &serde_json::json!([1, 2])).unwrap_err();
        assert_eq!(error.code, ErrorCode::ArgumentsInvalid);
    }
}
