//! Routing calls between gateway replicas over NATS.
//!
//! A sidecar's websocket ends at one replica; an agent's MCP request may land on any. The
//! replica that holds a user's live session serves that user's subject
//! ([`wire::user_subject`]) in a queue group, so each forwarded call reaches at most one
//! holder. Another replica forwards the call there ([`ClusterLink::forward`]) and streams back
//! progress and the outcome; cancellation goes the other way. No responder means no replica
//! holds a session: the agent gets `SIDECAR_UNAVAILABLE`, as on one replica. A forwarded call
//! crosses NATS once: nothing here retries.
//!
//! This module is the transport only; [`crate::relay`] decides what to forward and serves what
//! arrives (it hands [`ClusterLink::serve_user`] the handler).
//!
//! - [`wire`]: the messages and their encoding (sans-IO).

pub mod wire;

use futures_util::StreamExt;
use protocol::envelope::{JournalRef, Outcome, RelayProgress, RelayRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::{Ack, Cancel, Failure, ForwardRequest, Streamed};

/// The queue group every holder of a user's subject joins.
const HOLDERS: &str = "holders";
/// How long a forwarder waits for the holder's acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// How to reach NATS.
#[derive(Clone)]
pub struct ClusterSettings {
    /// `nats://host:port` (several, comma-separated, for a NATS cluster).
    pub url: String,
    pub user: Option<String>,
    pub password: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("url", &self.url)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach NATS: {0}")]
    Connect(String),
    #[error("NATS: {0}")]
    Nats(String),
}

/// Why a forwarded call has no outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// No replica serves the user's subject: no live session anywhere.
    NoHolder,
    /// NATS could not be used (down, or the request could not be sent). Nothing was sent.
    Unavailable,
    /// No acknowledgement in time: the holder may or may not have the call.
    AckTimeout,
    /// The holder refused before sending anything (a gate).
    Refused {
        code: String,
        detail: Option<String>,
    },
    /// Accepted, then failed (the code the holder's relay reported).
    Failed {
        code: String,
        detail: Option<String>,
    },
    /// Accepted, then the stream ended without an outcome (the holder died).
    Lost,
    /// The caller cancelled.
    Cancelled,
}

/// A forwarded call's outcome and where it ran.
#[derive(Debug)]
pub struct Forwarded {
    pub sidecar_id: String,
    pub pairing_id: String,
    pub outcome: Outcome,
    pub journal: Option<JournalRef>,
}

/// A call that arrived for a user this replica holds.
pub struct IncomingCall {
    pub user_id: String,
    pub request: RelayRequest,
    pub changes_broker_state: bool,
    /// Cancelled when the forwarder gives up.
    pub cancel: CancellationToken,
    client: async_nats::Client,
    reply: Option<async_nats::Subject>,
    inbox: String,
}

impl IncomingCall {
    /// Answers the acknowledgement (once).
    pub async fn ack(&mut self, ack: &Ack) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        if let Ok(bytes) = wire::encode(ack) {
            let _ = self.client.publish(reply, bytes.into()).await;
        }
    }

    pub async fn progress(&self, progress: RelayProgress) {
        self.stream(&Streamed::Progress(progress)).await;
    }

    pub async fn done(&self, result: Result<(Outcome, Option<JournalRef>), Failure>) {
        self.stream(&Streamed::Done(result)).await;
        let _ = self.client.flush().await;
    }

    async fn stream(&self, message: &Streamed) {
        if let Ok(bytes) = wire::encode(message) {
            let _ = self.client.publish(self.inbox.clone(), bytes.into()).await;
        }
    }
}

/// Serves incoming calls (the relay's holder).
pub type Handler =
    Arc<dyn Fn(IncomingCall) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// A connection to NATS, shared by the replica's tasks.
pub struct ClusterLink {
    client: async_nats::Client,
    /// The users whose subject this replica serves, and the task that serves each.
    serving: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink").finish_non_exhaustive()
    }
}

impl ClusterLink {
    /// Connects (and keeps reconnecting in the background when NATS goes away).
    pub async fn connect(settings: &ClusterSettings) -> Result<ClusterLink, ClusterError> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(ACK_WAIT));
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            options = options.user_and_password(user.clone(), password.as_str().to_string());
        }
        let client = options
            .connect(settings.url.as_str())
            .await
            .map_err(|error| ClusterError::Connect(error.to_string()))?;
        Ok(ClusterLink {
            client,
            serving: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the connection to NATS is up now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Starts serving `user_id`'s subject with `handler` (no-op when already serving).
    pub async fn serve_user(&self, user_id: &str, handler: Handler) -> Result<(), ClusterError> {
        if self
            .serving
            .lock()
            .map(|serving| serving.get(user_id).is_some_and(|task| !task.is_finished()))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let mut subscriber = self
            .client
            .queue_subscribe(wire::user_subject(user_id), HOLDERS.to_string())
            .await
            .map_err(|error| ClusterError::Nats(error.to_string()))?;
        // The subscription is in place before the first call can be routed here.
        let _ = self.client.flush().await;
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Ok(forward) = wire::decode::<ForwardRequest>(&message.payload) else {
                    tracing::warn!("cluster: malformed forwarded call dropped");
                    continue;
                };
                let cancel = CancellationToken::new();
                // The forwarder's cancel, for as long as the call runs.
                let cancel_subscription = client
                    .subscribe(wire::cancel_subject(&forward.inbox))
                    .await
                    .ok();
                if let Some(mut cancels) = cancel_subscription {
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            received = cancels.next() => {
                                if received.is_some_and(|m| wire::decode::<Cancel>(&m.payload).is_ok()) {
                                    cancel.cancel();
                                }
                            }
                        }
                        let _ = cancels.unsubscribe().await;
                    });
                }
                let call = IncomingCall {
                    user_id: forward.user_id,
                    request: forward.request,
                    changes_broker_state: forward.changes_broker_state,
                    cancel: cancel.clone(),
                    client: client.clone(),
                    reply: message.reply,
                    inbox: forward.inbox,
                };
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    handler(call).await;
                    // Ends the cancel listener.
                    cancel.cancel();
                });
            }
        });
        if let Ok(mut serving) = self.serving.lock()
            && let Some(old) = serving.insert(user_id.to_string(), task)
        {
            old.abort();
        }
        Ok(())
    }

    /// Stops serving `user_id`'s subject (the last session of the user on this replica ended).
    pub fn stop_serving(&self, user_id: &str) {
        if let Ok(mut serving) = self.serving.lock()
            && let Some(task) = serving.remove(user_id)
        {
            task.abort();
        }
    }

    /// The users whose subject this replica serves.
    pub fn served_users(&self) -> Vec<String> {
        self.serving
            .lock()
            .map(|serving| serving.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Forwards a call to the replica that holds `user_id`'s session and waits, at most
    /// `deadline`, for its outcome, passing progress on to `progress`.
    pub async fn forward(
        &self,
        user_id: &str,
        request: RelayRequest,
        changes_broker_state: bool,
        progress: Option<mpsc::Sender<RelayProgress>>,
        cancel: &CancellationToken,
        deadline: Duration,
    ) -> Result<Forwarded, ForwardError> {
        // While NATS is away the client queues and retries; a call must not wait for that.
        if !self.connected() {
            return Err(ForwardError::Unavailable);
        }
        let inbox = self.client.new_inbox();
        // Listen before asking, so nothing the holder streams is missed.
        let mut stream = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|_| ForwardError::Unavailable)?;
        let forward = ForwardRequest {
            user_id: user_id.to_string(),
            request,
            changes_broker_state,
            inbox: inbox.clone(),
        };
        let bytes = wire::encode(&forward).map_err(|_| ForwardError::Unavailable)?;
        let asked = async_nats::Request::new()
            .payload(bytes.into())
            .timeout(Some(ACK_WAIT));
        let client = self.client.clone();
        let subject = wire::user_subject(user_id);
        let mut asking = tokio::spawn(async move { client.send_request(subject, asked).await });
        let answer = tokio::select! {
            answer = &mut asking => answer.map_err(|_| ForwardError::Unavailable)?,
            _ = cancel.cancelled() => {
                // The holder may have taken the call already: once it acks, it is told to
                // stop, as a call cancelled after its ack is.
                let client = self.client.clone();
                tokio::spawn(async move {
                    let Ok(Ok(message)) = asking.await else {
                        return;
                    };
                    if let Ok(Ack::Accepted { .. }) = wire::decode::<Ack>(&message.payload) {
                        send_cancel(&client, &inbox).await;
                    }
                });
                return Err(ForwardError::Cancelled);
            }
        };
        let ack = match answer {
            Ok(message) => wire::decode::<Ack>(&message.payload).map_err(|_| ForwardError::Lost)?,
            Err(error) => {
                return Err(match error.kind() {
                    async_nats::RequestErrorKind::NoResponders => ForwardError::NoHolder,
                    async_nats::RequestErrorKind::TimedOut => ForwardError::AckTimeout,
                    _ => ForwardError::Unavailable,
                });
            }
        };
        let (sidecar_id, pairing_id) = match ack {
            Ack::Accepted {
                sidecar_id,
                pairing_id,
            } => (sidecar_id, pairing_id),
            Ack::Refused { code, detail } => return Err(ForwardError::Refused { code, detail }),
        };
        let cancel_holder = || send_cancel(&self.client, &inbox);
        let sleep = tokio::time::sleep(deadline);
        tokio::pin!(sleep);
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = &mut sleep => {
                    cancel_holder().await;
                    return Err(ForwardError::Failed { code: "REQUEST_TIMEOUT".into(), detail: None });
                }
                _ = cancel.cancelled() => {
                    cancel_holder().await;
                    return Err(ForwardError::Cancelled);
                }
            };
            let Some(message) = message else {
                return Err(ForwardError::Lost);
            };
            match wire::decode::<Streamed>(&message.payload) {
                Ok(Streamed::Progress(update)) => {
                    if let Some(progress) = &progress {
                        let _ = progress.try_send(update);
                    }
                }
                Ok(Streamed::Done(Ok((outcome, journal)))) => {
                    return Ok(Forwarded {
                        sidecar_id,
                        pairing_id,
                        outcome,
                        journal,
                    });
                }
                Ok(Streamed::Done(Err(failure))) => {
                    return Err(ForwardError::Failed {
                        code: failure.code,
                        detail: failure.detail,
                    });
                }
                Err(_) => return Err(ForwardError::Lost),
            }
        }
    }
}

impl Drop for ClusterLink {
    fn drop(&mut self) {
        if let Ok(mut serving) = self.serving.lock() {
            for (_, task) in serving.drain() {
                task.abort();
            }
        }
    }
}
/// Tells the holder of the call answering on `inbox` to stop it.
async fn send_cancel(client: &async_nats::Client, inbox: &str) {
    if let Ok(bytes) = wire::encode(&Cancel) {
        let _ = client
            .publish(wire::cancel_subject(inbox), bytes.into())
            .await;
        let _ = client.flush().await;
    }
}
