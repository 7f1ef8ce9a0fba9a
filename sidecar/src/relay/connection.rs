//! The connection driver: one task per relay connection, one `select!` loop.
//!
//! It owns the websocket and the transport (so records are sealed and opened strictly in
//! order), judges liveness on its own monotonic clock, renews the session at two thirds of its
//! TTL, pushes broker-state changes, and runs requests as separate tasks. The number of calls
//! in flight is counted by the driver itself (its map of running requests): a call's slot is
//! free as soon as its answer is queued or its cancel is read, in frame order, so a gateway
//! that cancels and then sends a new call always finds the slot free. Any record that fails to open ends the connection: the transport is closed for
//! good after a failure, and a fresh handshake is the only way back.

use super::dial::RelayStream;
use crate::clock::now_unix_seconds;
use crate::context::{DaemonContext, SIDECAR_VERSION};
use crate::cpgw::BrokerState;
use crate::requests::{self, ConnectionInfo};
use crate::session::Binding;
use crate::session::{SessionSnapshot, SharedSession};
use crate::state::RelaySessionRecord;
use crate::trading::journal_tap::tapped;
use futures_util::{SinkExt, StreamExt};
use protocol::catalog;
use protocol::envelope::{Outcome, RelayRequest, RelayResponse, RequestId};
use protocol::frame::{CloseReason, Frame, SidecarStatus};
use protocol::handshake::ServerHello;
use protocol::liveness::{HeartbeatConfig, Liveness, LivenessAction};
use protocol::transport::{Transport, TransportError};
use protocol::wire::WireMessage;
use shared_safety::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Deadline for writing one message to the websocket.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the closing handshake when we leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a request may run whatever deadline the gateway asks for.
const MAX_REQUEST_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// How long a closing connection waits for its aborted request tasks to wind down.
const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a revocation the gateway has not confirmed waits before it is sent again.
const RESEND_REVOCATION: Duration = Duration::from_secs(30);
/// Longest `GoAway.retry_after_ms` honoured.
const MAX_GO_AWAY: Duration = Duration::from_secs(3600);

/// How a connection ended, for the reconnect policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionEnd {
    /// Local shutdown; a Close frame was sent.
    Shutdown,
    /// The gateway asked us to come back after this delay.
    GoAway { retry_after: Duration },
    /// The local pairing was revoked or expired while connected.
    PairingGone,
    /// The laptop slept through the session (wall time jumped past monotonic time): the
    /// gateway has given up on us, so reconnect at once.
    Woke,
    /// Anything else (peer closed, network error, protocol violation, heartbeat timeout,
    /// session expiry).
    Closed { reason: String },
}

/// The outcome of a completed handshake, handed to the driver.
pub(crate) struct Established {
    pub transport: Transport,
    pub hello: ServerHello,
    pub binding: Binding,
}

struct Driver {
    context: Arc<DaemonContext>,
    stream: RelayStream,
    transport: Transport,
    connection: Arc<ConnectionInfo>,
    start: Instant,
    liveness: Liveness,
    session_id_hex: String,
    expires_at: Instant,
    renew_at: Option<Instant>,
    /// Most calls in flight at once (`sidecar.max_concurrent_requests`).
    max_requests: usize,
    inflight: HashMap<RequestId, InFlight>,
    /// The request tasks themselves: dropped (so aborted) with the driver, and waited for when
    /// the connection ends, so a stopped daemon leaves nothing running (the trade journal's
    /// lock included).
    tasks: JoinSet<()>,
    responses_tx: mpsc::Sender<RelayResponse>,
    /// Wall and monotonic time at the last heartbeat tick, to notice a sleep: tokio's clock
    /// (like the OS monotonic clock) does not advance while the laptop sleeps.
    last_tick: (std::time::SystemTime, Instant),
}

/// A call being served.
enum InFlight {
    /// Read work: stopped when the caller gives up or the connection ends.
    Abortable(AbortHandle),
    /// Work that can change broker state (placing, confirming, cancelling an order): it runs to
    /// its end and journals its outcome whatever happens to the connection or the caller, in
    /// the daemon's order-work tracker. Stopping it halfway would leave an order the broker
    /// may hold and the journal cannot settle.
    Detached,
}

impl InFlight {
    fn stop(self) {
        if let InFlight::Abortable(handle) = self {
            handle.abort();
        }
    }
}

fn ttl_instants(now: Instant, ttl: Duration) -> (Instant, Instant) {
    (now + ttl, now + ttl * 2 / 3)
}

fn unix_after(ttl: Duration) -> i64 {
    now_unix_seconds().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

/// Runs one established connection until it ends.
pub(crate) async fn drive(
    context: Arc<DaemonContext>,
    stream: RelayStream,
    established: Established,
    shutdown: CancellationToken,
) -> ConnectionEnd {
    let start = Instant::now();
    let heartbeat = match HeartbeatConfig::new(
        context.config.heartbeat_interval(),
        context.config.heartbeat_timeout(),
    ) {
        Ok(config) => config,
        // The configuration was validated at startup; this cannot happen, but fail closed.
        Err(error) => {
            return ConnectionEnd::Closed {
                reason: format!("heartbeat configuration: {error}"),
            };
        }
    };
    let ttl = Duration::from_millis(established.hello.session_ttl_ms);
    let (expires_at, renew_at) = ttl_instants(start, ttl);
    let session = SharedSession::new(SessionSnapshot {
        session_id: established.hello.session_id,
        sidecar_id: established.binding.sidecar_id.clone(),
        remote_instance_id: established.hello.instance_id.clone(),
        established_at: start,
        expires_at,
        last_authentic: start,
        heartbeat_timeout: heartbeat.timeout(),
        closed: false,
    });
    let session_id_hex = hex::encode(established.hello.session_id);
    let max_requests = context.config.sidecar.max_concurrent_requests;
    let (responses_tx, mut responses_rx) = mpsc::channel(max_requests + 8);
    let (progress_tx, mut progress_rx) = mpsc::channel(max_requests * 4 + 8);
    let mut driver = Driver {
        context: context.clone(),
        stream,
        transport: established.transport,
        connection: Arc::new(ConnectionInfo {
            binding: established.binding,
            session,
            progress: Some(progress_tx),
        }),
        start,
        liveness: Liveness::new(heartbeat, Duration::ZERO),
        session_id_hex,
        expires_at,
        renew_at: Some(renew_at),
        max_requests,
        inflight: HashMap::new(),
        tasks: JoinSet::new(),
        responses_tx,
        last_tick: (std::time::SystemTime::now(), start),
    };

    let mut broker = context.broker.subscribe();
    let end = driver
        .run(&mut broker, &mut responses_rx, &mut progress_rx, &shutdown)
        .await;
    driver.finish(&end).await;
    end
}

impl Driver {
    async fn run(
        &mut self,
        broker: &mut watch::Receiver<BrokerState>,
        responses: &mut mpsc::Receiver<RelayResponse>,
        progress: &mut mpsc::Receiver<protocol::envelope::RelayProgress>,
        shutdown: &CancellationToken,
    ) -> ConnectionEnd {
        // The first record is the key confirmation the gateway waits for before it registers
        // the session; it carries the broker state so health is right from the start.
        let initial = *broker.borrow_and_update();
        if let Err(end) = self.send(&status_frame(initial)).await {
            return end;
        }
        self.record_session();
        self.context
            .activity
            .relay_connected(self.connection.session.clone());
        tracing::info!(
            session = %self.session_id_hex,
            instance = %self.connection.binding.remote_instance_id,
            "relay session established"
        );
        let mut broker_open = true;
        let mut agent_tick = tokio::time::interval(crate::agents::SEND_INTERVAL);
        agent_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Revocations go out until confirmed: at once, then again every RESEND_REVOCATION.
        let mut revocations_sent = std::collections::HashMap::new();
        loop {
            let liveness_at = self.start + self.liveness.next_deadline();
            let renew_at = self.renew_at;
            // Unbiased: a busy inbound stream must not starve responses or the heartbeat.
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.close(CloseReason::Shutdown).await;
                    return ConnectionEnd::Shutdown;
                }
                message = self.stream.next() => {
                    if let Some(end) = self.on_message(message).await {
                        return end;
                    }
                }
                Some(response) = responses.recv() => {
                    if let Some(end) = self.on_response(response).await {
                        return end;
                    }
                }
                Some(update) = progress.recv() => {
                    // Only for calls still in flight: the gateway drops others anyway.
                    if self.inflight.contains_key(&update.request_id)
                        && let Err(end) = self.send(&Frame::Progress(update)).await
                    {
                        return end;
                    }
                }
                _ = sleep_until(liveness_at) => {
                    if let Some(end) = self.on_liveness_deadline().await {
                        return end;
                    }
                }
                _ = sleep_until(renew_at.unwrap_or(self.expires_at)), if renew_at.is_some() => {
                    // Renewal travels only through the authenticated channel.
                    self.renew_at = None;
                    if let Err(end) = self.send(&Frame::RenewSession).await {
                        return end;
                    }
                }
                _ = sleep_until(self.expires_at) => {
                    self.close(CloseReason::SessionExpired).await;
                    return ConnectionEnd::Closed { reason: "relay session expired".into() };
                }
                _ = agent_tick.tick() => {
                    if let Err(end) = self.send_agent_messages(&mut revocations_sent).await {
                        return end;
                    }
                }
                changed = broker.changed(), if broker_open => {
                    match changed {
                        Ok(()) => {
                            let state = *broker.borrow_and_update();
                            if let Err(end) = self.send(&status_frame(state)).await {
                                return end;
                            }
                        }
                        Err(_) => broker_open = false,
                    }
                }
            }
        }
    }

    /// Sends the owner's decisions and revocations the gateway has not had yet.
    async fn send_agent_messages(
        &mut self,
        revocations_sent: &mut std::collections::HashMap<protocol::agents::ApprovalId, Instant>,
    ) -> Result<(), ConnectionEnd> {
        let frames = match crate::agents::outgoing(&self.context.store) {
            Ok(frames) => frames,
            Err(error) => {
                tracing::warn!(code = %error.code(), "could not read agent decisions to send");
                return Ok(());
            }
        };
        for frame in frames {
            match &frame {
                Frame::AgentDecision(decision) => {
                    self.send(&frame).await?;
                    if let Err(error) = crate::agents::mark_decision_sent(
                        &self.context.store,
                        &decision.approval_id,
                    ) {
                        tracing::warn!(code = %error.code(), "could not record a sent decision");
                    }
                }
                Frame::AgentRevoked { approval_id }
                    if revocations_sent
                        .get(approval_id)
                        .is_none_or(|at| at.elapsed() >= RESEND_REVOCATION) =>
                {
                    revocations_sent.insert(*approval_id, Instant::now());
                    self.send(&frame).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Seals and sends one frame. An error ends the connection.
    async fn send(&mut self, frame: &Frame) -> Result<(), ConnectionEnd> {
        let record = self
            .transport
            .seal(frame)
            .map_err(|error| ConnectionEnd::Closed {
                reason: format!("cannot seal a record: {error}"),
            })?;
        let bytes = WireMessage::Record(record).encode();
        match tokio::time::timeout(
            SEND_TIMEOUT,
            self.stream.send(Message::Binary(bytes.into())),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ConnectionEnd::Closed {
                reason: format!("websocket send failed: {error}"),
            }),
            Err(_) => Err(ConnectionEnd::Closed {
                reason: "websocket send timed out".into(),
            }),
        }
    }

    /// Best effort: tell the gateway why, then close the websocket.
    async fn close(&mut self, reason: CloseReason) {
        if !self.transport.is_closed() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.send(&Frame::Close { reason })).await;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.close(None)).await;
    }

    async fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<ConnectionEnd> {
        let message = match message {
            None => {
                return Some(ConnectionEnd::Closed {
                    reason: "the gateway closed the connection".into(),
                });
            }
            Some(Err(error)) => {
                return Some(ConnectionEnd::Closed {
                    reason: format!("websocket error: {error}"),
                });
            }
            Some(Ok(message)) => message,
        };
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            // Websocket-level pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
            Message::Close(_) => {
                return Some(ConnectionEnd::Closed {
                    reason: "the gateway closed the websocket".into(),
                });
            }
            Message::Text(_) => return Some(self.violation("text message on the relay").await),
        };
        let record = match WireMessage::decode(&bytes) {
            Ok(WireMessage::Record(record)) => record,
            Ok(_) => {
                return Some(
                    self.violation("handshake message after the handshake")
                        .await,
                );
            }
            Err(_) => return Some(self.violation("malformed wire message").await),
        };
        let frame = match self.transport.open(&record) {
            Ok(frame) => frame,
            Err(error) => return Some(self.transport_failure(error).await),
        };
        let now = Instant::now();
        self.liveness
            .on_authentic_frame(now.saturating_duration_since(self.start));
        self.connection
            .session
            .update(|snapshot| snapshot.last_authentic = now);
        if let Some(observer) = &self.context.frame_observer {
            observer(&frame);
        }
        self.on_frame(frame).await
    }

    async fn transport_failure(&mut self, error: TransportError) -> ConnectionEnd {
        // The transport is closed now; say nothing more on it.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.close(None)).await;
        ConnectionEnd::Closed {
            reason: format!("record refused: {error}"),
        }
    }

    async fn violation(&mut self, what: &str) -> ConnectionEnd {
        tracing::warn!(session = %self.session_id_hex, "protocol violation: {what}");
        self.close(CloseReason::ProtocolViolation).await;
        ConnectionEnd::Closed {
            reason: format!("protocol violation: {what}"),
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Option<ConnectionEnd> {
        match frame {
            Frame::Ping { seq } => self.send(&Frame::Pong { seq }).await.err(),
            Frame::Pong { .. } => None,
            Frame::Request(request) => self.start_request(request).await,
            Frame::Cancel { request_id } => {
                // The caller gave up: stop read work and answer nothing (order work finishes).
                if let Some(work) = self.inflight.remove(&request_id) {
                    work.stop();
                }
                None
            }
            Frame::SessionRenewed { expires_in_ms } => {
                let ttl = Duration::from_millis(expires_in_ms);
                let (expires_at, renew_at) = ttl_instants(Instant::now(), ttl);
                self.expires_at = expires_at;
                self.renew_at = Some(renew_at);
                self.connection
                    .session
                    .update(|snapshot| snapshot.expires_at = expires_at);
                if let Err(error) = self
                    .context
                    .store
                    .renew_relay_session(&self.session_id_hex, unix_after(ttl))
                {
                    tracing::warn!(code = %error.code(), "could not record the session renewal");
                }
                None
            }
            Frame::GoAway {
                retry_after_ms,
                reason,
            } => {
                tracing::info!(
                    ?reason,
                    retry_after_ms,
                    "the gateway asked the sidecar to reconnect later"
                );
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.close(None)).await;
                Some(ConnectionEnd::GoAway {
                    retry_after: Duration::from_millis(retry_after_ms).min(MAX_GO_AWAY),
                })
            }
            Frame::Close { reason } => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.close(None)).await;
                Some(ConnectionEnd::Closed {
                    reason: format!("the gateway closed the session ({reason:?})"),
                })
            }
            Frame::AgentApprovalRequest(request) => {
                if request.validate().is_err() {
                    // Dropped, not a reason to close: the connection carries other calls, and
                    // a request the owner could not read safely is one not to show.
                    tracing::warn!("an agent approval request with unreadable fields was dropped");
                    return None;
                }
                match crate::agents::record_request(
                    &self.context.store,
                    &request,
                    crate::trading::now_ms(),
                ) {
                    Ok(()) => tracing::info!(
                        client = %request.client_name,
                        "an agent asks to connect; approve it with the code its page shows \
                         (ibkr-agent sidecar agents approve CODE)"
                    ),
                    Err(error) => {
                        tracing::warn!(code = %error.code(), "could not keep an agent request");
                    }
                }
                None
            }
            Frame::AgentRevokedAck { approval_id } => {
                if let Err(error) =
                    crate::agents::mark_revocation_confirmed(&self.context.store, &approval_id)
                {
                    tracing::warn!(code = %error.code(), "could not record a revocation's confirmation");
                }
                None
            }
            Frame::Response(_)
            | Frame::Progress(_)
            | Frame::RenewSession
            | Frame::SidecarStatus(_)
            | Frame::AgentDecision(_)
            | Frame::AgentRevoked { .. } => Some(
                self.violation("a sidecar-to-gateway frame came from the gateway")
                    .await,
            ),
        }
    }

    async fn start_request(&mut self, request: RelayRequest) -> Option<ConnectionEnd> {
        let request_id = request.request_id;
        if self.inflight.contains_key(&request_id) {
            // A gateway bug; the first call keeps running and answers for this id.
            tracing::warn!(request = %request_id, "duplicate request id ignored");
            return None;
        }
        if self.inflight.len() >= self.max_requests {
            let response = RelayResponse {
                journal: None,
                request_id,
                outcome: Outcome::Refused(ErrorCode::RelayOverloaded.body(None)),
            };
            return self.send(&Frame::Response(response)).await.err();
        }
        let deadline = Duration::from_millis(request.deadline_ms).min(MAX_REQUEST_DEADLINE);
        let context = self.context.clone();
        let connection = self.connection.clone();
        let responses = self.responses_tx.clone();
        let changes_broker_state = catalog::find(&request.tool_name)
            .is_some_and(protocol::catalog::ToolSpec::changes_broker_state);
        let work = async move {
            let deadline_at = Instant::now() + deadline;
            // The tap covers the timeout too: entries written before the deadline are still
            // named in the answer.
            let (outcome, journal) = tapped(async {
                let work = requests::handle(&context, &connection, &request, deadline_at);
                match tokio::time::timeout(deadline, work).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Failed(ErrorCode::RequestTimeout.body(None)),
                }
            })
            .await;
            // Without the connection (order work outliving it) nobody listens: dropped.
            let _ = responses
                .send(RelayResponse {
                    journal,
                    request_id,
                    outcome,
                })
                .await;
        };
        // Reap what finished since the last call.
        while self.tasks.try_join_next().is_some() {}
        let in_flight = if changes_broker_state {
            let killed = self.context.order_work_killed.clone();
            self.context.order_work.spawn(async move {
                // Only a daemon that dies (its task dropped) stops order work, as a crash would.
                tokio::select! {
                    _ = killed.cancelled() => {}
                    _ = work => {}
                }
            });
            InFlight::Detached
        } else {
            InFlight::Abortable(self.tasks.spawn(work))
        };
        self.inflight.insert(request_id, in_flight);
        None
    }

    async fn on_response(&mut self, response: RelayResponse) -> Option<ConnectionEnd> {
        // Not in flight any more: cancelled while its answer was already queued, and the
        // gateway no longer waits for it.
        self.inflight.remove(&response.request_id)?;
        let frame = Frame::Response(response);
        match self.transport.seal(&frame) {
            Ok(record) => {
                let bytes = WireMessage::Record(record).encode();
                match tokio::time::timeout(
                    SEND_TIMEOUT,
                    self.stream.send(Message::Binary(bytes.into())),
                )
                .await
                {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) => Some(ConnectionEnd::Closed {
                        reason: format!("websocket send failed: {error}"),
                    }),
                    Err(_) => Some(ConnectionEnd::Closed {
                        reason: "websocket send timed out".into(),
                    }),
                }
            }
            Err(TransportError::FrameTooLarge) => {
                // Refusing to send is not fatal: answer with the code instead.
                let Frame::Response(original) = frame else {
                    return None;
                };
                let replacement = RelayResponse {
                    // The call's journal entries were written all the same.
                    journal: original.journal,
                    request_id: original.request_id,
                    outcome: Outcome::Failed(ErrorCode::ResponseTooLarge.body(None)),
                };
                self.send(&Frame::Response(replacement)).await.err()
            }
            Err(error) => Some(ConnectionEnd::Closed {
                reason: format!("cannot seal a record: {error}"),
            }),
        }
    }

    async fn on_liveness_deadline(&mut self) -> Option<ConnectionEnd> {
        if self.slept() {
            tracing::info!(session = %self.session_id_hex, "the laptop slept; reconnecting now");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.close(None)).await;
            return Some(ConnectionEnd::Woke);
        }
        let now = Instant::now().saturating_duration_since(self.start);
        match self.liveness.poll(now) {
            LivenessAction::Wait => None,
            LivenessAction::PeerDead => {
                tracing::warn!(session = %self.session_id_hex, "gateway silent past the heartbeat timeout");
                self.close(CloseReason::HeartbeatTimeout).await;
                Some(ConnectionEnd::Closed {
                    reason: "heartbeat timeout".into(),
                })
            }
            LivenessAction::SendPing { seq } => {
                if let Some(end) = self.check_pairing().await {
                    return Some(end);
                }
                if let Err(error) = self
                    .context
                    .store
                    .touch_relay_session(&self.session_id_hex, now_unix_seconds())
                {
                    tracing::warn!(code = %error.code(), "could not record the heartbeat");
                }
                self.send(&Frame::Ping { seq }).await.err()
            }
        }
    }

    /// True when more wall time than the heartbeat timeout passed beyond the monotonic time
    /// since the last tick. A clock step (NTP) can look the same; the cost of that false
    /// positive is one reconnect.
    fn slept(&mut self) -> bool {
        let wall_now = std::time::SystemTime::now();
        let mono_now = Instant::now();
        let (wall_then, mono_then) = self.last_tick;
        self.last_tick = (wall_now, mono_now);
        let wall = wall_now.duration_since(wall_then).unwrap_or(Duration::ZERO);
        let mono = mono_now.saturating_duration_since(mono_then);
        slept_between(
            wall,
            mono,
            self.connection.session.snapshot().heartbeat_timeout,
        )
    }

    /// Once per heartbeat: if the local pairing was revoked or expired, leave at once instead
    /// of waiting for the next request to be refused.
    async fn check_pairing(&mut self) -> Option<ConnectionEnd> {
        let binding = &self.connection.binding;
        let active = match self
            .context
            .store
            .pairing(&binding.remote_instance_id, &binding.sidecar_id)
        {
            Ok(Some(record)) => {
                record.is_active(now_unix_seconds())
                    && record.gateway_public_key == Some(binding.gateway_public_key)
            }
            Ok(None) => false,
            // A transient store error is not a revocation; gate b refuses calls meanwhile.
            Err(_) => true,
        };
        if active {
            return None;
        }
        tracing::warn!("the local pairing was revoked or expired; closing the relay session");
        self.close(CloseReason::PairingRevoked).await;
        Some(ConnectionEnd::PairingGone)
    }

    fn record_session(&self) {
        let snapshot = self.connection.session.snapshot();
        let now = now_unix_seconds();
        let ttl = snapshot
            .expires_at
            .saturating_duration_since(snapshot.established_at);
        let record = RelaySessionRecord {
            session_id: self.session_id_hex.clone(),
            remote_instance_id: snapshot.remote_instance_id.clone(),
            sidecar_id: snapshot.sidecar_id.clone(),
            created_at: now,
            expires_at: unix_after(ttl),
            last_heartbeat_at: now,
            closed_at: None,
        };
        if let Err(error) = self.context.store.insert_relay_session(&record) {
            tracing::warn!(code = %error.code(), "could not record the relay session");
        }
    }

    /// Stops everything that belongs to this connection.
    async fn finish(&mut self, end: &ConnectionEnd) {
        self.connection
            .session
            .update(|snapshot| snapshot.closed = true);
        self.context.activity.relay_disconnected();
        let mut orders_left = 0;
        for (_, work) in self.inflight.drain() {
            if matches!(work, InFlight::Detached) {
                orders_left += 1;
            }
            work.stop();
        }
        if orders_left > 0 {
            tracing::info!(
                orders = orders_left,
                "order calls in flight finish without the connection; their outcomes go to the journal"
            );
        }
        self.tasks.abort_all();
        let _ = tokio::time::timeout(TASKS_STOP_TIMEOUT, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if let Err(error) = self
            .context
            .store
            .close_relay_session(&self.session_id_hex, now_unix_seconds())
        {
            tracing::warn!(code = %error.code(), "could not record the session end");
        }
        tracing::info!(session = %self.session_id_hex, ?end, "relay session ended");
    }
}

impl Drop for Driver {
    /// A driver dropped without `finish` (its task was aborted: the daemon died) takes its
    /// read requests with it, as a dead process would; the daemon's own drop stops its order
    /// work (`DaemonContext::order_work_killed`).
    fn drop(&mut self) {
        for (_, work) in self.inflight.drain() {
            work.stop();
        }
    }
}

/// Sleep detection: wall time ran ahead of monotonic time by more than `timeout`.
pub(crate) fn slept_between(wall: Duration, monotonic: Duration, timeout: Duration) -> bool {
    wall.saturating_sub(monotonic) > timeout
}

fn status_frame(state: BrokerState) -> Frame {
    Frame::SidecarStatus(SidecarStatus {
        broker_session: state.as_str().to_string(),
        sidecar_version: SIDECAR_VERSION.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_detection() {
        let s = Duration::from_secs;
        assert!(!slept_between(s(15), s(15), s(45)));
        // A clock that went backwards is not a sleep.
        assert!(!slept_between(s(0), s(15), s(45)));
        assert!(!slept_between(s(60), s(15), s(45)));
        assert!(slept_between(s(3600), s(15), s(45)));
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_the_ttl() {
        let now = Instant::now();
        let (expires, renew) = ttl_instants(now, Duration::from_secs(300));
        assert_eq!(expires - now, Duration::from_secs(300));
        assert_eq!(renew - now, Duration::from_secs(200));
    }
}
