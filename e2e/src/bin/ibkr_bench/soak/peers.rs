//! The soak's relay peers: a helper process that holds the relay sessions of most of the paired
//! sidecars and answers the calls the gateway routes to them, as a sidecar daemon would, without
//! a broker behind it.
//!
//! Every session is opened with the sidecar's own code (`ibkr_agent::relay::dial::dial`, the
//! Noise IK handshake of `ibkr_agent::relay::handshake::perform` with the pinned gateway key,
//! instance, user and pairing, then the key-confirmation record) and then:
//!
//! - answers pings, and renews the session halfway through its lifetime;
//! - answers every `Request` with a result naming what it was asked and by whom it was served:
//!   `{"soak_peer": {"user_id", "sidecar", "tool", "order_id"}}`, where `order_id` is the
//!   caller's nonce (the soak's agents call `ibkr_order_status` and `ibkr_wait_for_fill`, whose
//!   `order_id` is free text). The agent checks both, so an answer delivered to the wrong caller
//!   is seen;
//! - answers `ibkr_order_status` after 0 to 10 ms, and `ibkr_wait_for_fill` after
//!   `timeout_seconds`, with a progress frame every 250 ms whose message is the nonce;
//! - on `Cancel`, stops the call; every other cancel of a call still in progress is answered
//!   anyway, at once: a late answer, as when a sidecar's answer and the gateway's cancel cross.
//!   The gateway must drop it, never hand it to another call.
//!
//! Commanded on stdin, `RECONNECT <index> <mode>` drops and re-establishes one session (modes
//! below); `STATS` prints the counters; `STOP` (or EOF) closes every session and exits. A session
//! the gateway ends on its own is reconnected like a daemon would, and reported with `LOST`.
//!
//! Output lines: `OPENED <sessions> <microseconds>`, `RECONNECTED <index> <mode> <microseconds>`,
//! `LOST <index> <why>`, `STATS <counters...>` (see [`PeerCounters::line`]).

use crate::{BenchResult, Credentials, bench_error, load_credentials, send_frame, sidecar_dir};
use futures_util::StreamExt;
use ibkr_agent::relay::dial::RelayStream;
use protocol::envelope::{Outcome, RelayProgress, RelayRequest, RelayResponse, RequestId};
use protocol::frame::{CloseReason, Frame, SidecarStatus};
use protocol::transport::Transport;
use protocol::wire::WireMessage;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;

/// Sessions opened at once when the helper starts.
const OPEN_CONCURRENCY: usize = 16;
/// Bound on one dial + handshake + key confirmation.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between attempts when a reconnect fails (then doubled, up to 5 s).
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// How long a draining session waits for its calls in progress before it closes.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Interval of the progress frames of a slow call.
const PROGRESS_STEP: Duration = Duration::from_millis(250);

/// The tool the agents use for quick calls, and the slow one they cancel.
pub(super) const QUICK_TOOL: &str = "ibkr_order_status";
pub(super) const SLOW_TOOL: &str = "ibkr_wait_for_fill";

/// How a session is dropped and re-established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReconnectMode {
    /// The connection is dropped without a word (a laptop losing its network): calls in
    /// progress are lost on the gateway's side and answered with an error there.
    Abrupt,
    /// `Close { Shutdown }`, then a new connection (a daemon restarting).
    Graceful,
    /// A new session first; the gateway then closes the old one as replaced (a laptop whose
    /// old connection is half-open).
    Replace,
    /// `GoAway`, answer the calls in progress, `Close`, then a new connection: the clean way,
    /// in which no call in progress is lost.
    Drain,
}

impl ReconnectMode {
    pub(super) const ALL: [ReconnectMode; 4] = [
        ReconnectMode::Abrupt,
        ReconnectMode::Graceful,
        ReconnectMode::Replace,
        ReconnectMode::Drain,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            ReconnectMode::Abrupt => "abrupt",
            ReconnectMode::Graceful => "graceful",
            ReconnectMode::Replace => "replace",
            ReconnectMode::Drain => "drain",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == text)
    }
}

/// What the peers did, counted across every session.
#[derive(Default)]
struct PeerCounters {
    requests: AtomicU64,
    answered: AtomicU64,
    progress: AtomicU64,
    /// `Cancel` for a call still in progress here.
    cancels_in_progress: AtomicU64,
    /// `Cancel` for a call already answered (the answer and the cancel crossed).
    cancels_after_answer: AtomicU64,
    /// Answers sent after the gateway cancelled the call.
    late_answers: AtomicU64,
    /// Requests that failed the envelope's own checks (hash, canonical payload).
    invalid_requests: AtomicU64,
    /// Calls dropped unanswered because their connection went away (abrupt, replace).
    abandoned: AtomicU64,
    reconnects: AtomicU64,
    /// Sessions the gateway ended without being asked to.
    lost: AtomicU64,
    /// Dial or handshake attempts that failed (each retried).
    connect_failures: AtomicU64,
    open: AtomicU64,
}

/// The names of the counters of a `STATS` line, in order.
pub(super) const STATS_FIELDS: [&str; 12] = [
    "requests",
    "answered",
    "progress",
    "cancels_in_progress",
    "cancels_after_answer",
    "late_answers",
    "invalid_requests",
    "abandoned",
    "reconnects",
    "lost",
    "connect_failures",
    "open",
];

impl PeerCounters {
    fn line(&self) -> String {
        let values = [
            &self.requests,
            &self.answered,
            &self.progress,
            &self.cancels_in_progress,
            &self.cancels_after_answer,
            &self.late_answers,
            &self.invalid_requests,
            &self.abandoned,
            &self.reconnects,
            &self.lost,
            &self.connect_failures,
            &self.open,
        ];
        let numbers: Vec<String> = values
            .iter()
            .map(|value| value.load(Ordering::SeqCst).to_string())
            .collect();
        format!("STATS {}", numbers.join(" "))
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// One peer: the sidecar's credentials and its index among the paired sidecars.
struct Peer {
    index: usize,
    credentials: Credentials,
    relay_url: String,
    counters: Arc<PeerCounters>,
}

/// An established relay session.
struct Connection {
    stream: RelayStream,
    transport: Transport,
    /// When to ask for renewal (halfway through the session's lifetime).
    renew_every: Duration,
}

/// A call being worked on: its answer, ready to go, and the task that delays it.
struct Pending {
    response: RelayResponse,
    task: AbortHandle,
}

/// What the tasks of one connection hand back to it.
enum Work {
    Progress(RelayProgress),
    Done(RequestId),
}

/// The calls of one connection.
struct Calls {
    pending: HashMap<RequestId, Pending>,
    tasks: JoinSet<()>,
    sender: mpsc::UnboundedSender<Work>,
    receiver: mpsc::UnboundedReceiver<Work>,
    /// Counts cancels of calls in progress; every other one is answered anyway.
    cancels: u64,
}

impl Calls {
    fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Calls {
            pending: HashMap::new(),
            tasks: JoinSet::new(),
            sender,
            receiver,
            cancels: 0,
        }
    }
}

/// How long to serve a connection.
enum Until<'a> {
    /// Until a command arrives.
    Command(&'a mut mpsc::UnboundedReceiver<Command>),
    /// Until no call is left (or [`DRAIN_LIMIT`]).
    Drained,
    /// Until the gateway closes it (or [`DRAIN_LIMIT`]).
    Closed,
}

/// Why serving a connection stopped.
enum Served {
    Command(Command),
    /// The connection ended without being asked to.
    Lost(String),
    /// A draining connection has no call left (or ran out of time).
    Drained,
}

#[derive(Clone, Copy, Debug)]
enum Command {
    Reconnect(ReconnectMode),
    Stop,
}

impl Peer {
    /// A handshake timestamp above every one used before (the gateway refuses replays).
    fn next_timestamp(&mut self) -> u64 {
        let now = ibkr_agent::clock::now_unix_millis();
        let next = now.max(self.credentials.hello.timestamp_ms + 1);
        self.credentials.hello.timestamp_ms = next;
        next
    }

    async fn connect_once(&mut self) -> BenchResult<Connection> {
        self.next_timestamp();
        let credentials = &self.credentials;
        let attempt = async {
            let mut stream = ibkr_agent::relay::dial::dial(&self.relay_url).await?;
            let pinned = ibkr_agent::relay::handshake::Pinned {
                gateway_key: &credentials.gateway_key,
                instance_id: &credentials.hello.remote_instance_id,
                user_id: &credentials.user_id,
                pairing_id: credentials.pairing_id,
            };
            let (mut transport, hello) = ibkr_agent::relay::handshake::perform(
                &mut stream,
                &credentials.keypair,
                &credentials.hello,
                &pinned,
            )
            .await?;
            let confirmation = Frame::SidecarStatus(SidecarStatus {
                broker_session: "ready".into(),
                sidecar_version: "ibkr-bench-soak".into(),
            });
            send_frame(&mut stream, &mut transport, &confirmation).await?;
            let renew_every =
                Duration::from_millis(hello.session_ttl_ms / 2).max(Duration::from_secs(1));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Connection {
                stream,
                transport,
                renew_every,
            })
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(connected) => connected,
            Err(_) => Err(bench_error("timed out connecting")),
        }
    }

    /// Connects, retrying with a growing pause until it works.
    async fn connect(&mut self) -> Connection {
        let mut delay = RETRY_DELAY;
        loop {
            match self.connect_once().await {
                Ok(connection) => return connection,
                Err(error) => {
                    bump(&self.counters.connect_failures);
                    eprintln!("soak peer {}: connect failed: {error}", self.index);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn user_id(&self) -> &str {
        &self.credentials.user_id
    }

    /// The answer to `request`, built when it arrives, and how long to hold it.
    fn answer(&self, request: &RelayRequest) -> (RelayResponse, Duration, u32) {
        let arguments = request.arguments().unwrap_or(Value::Null);
        let order_id = arguments.get("order_id").cloned().unwrap_or(Value::Null);
        let (delay, steps) = if request.tool_name == SLOW_TOOL {
            let seconds = arguments
                .get("timeout_seconds")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 10);
            let delay = Duration::from_secs(seconds);
            let steps = u32::try_from(delay.as_millis() / PROGRESS_STEP.as_millis()).unwrap_or(0);
            (delay, steps.saturating_sub(1))
        } else {
            // 0 to 10 ms, spread by the request id.
            (
                Duration::from_millis(u64::from(request.request_id.0[0] % 11)),
                0,
            )
        };
        let json = json!({
            "soak_peer": {
                "user_id": self.user_id(),
                "sidecar": self.index,
                "tool": request.tool_name,
                "order_id": order_id,
            }
        });
        let response = RelayResponse {
            request_id: request.request_id,
            outcome: Outcome::Result {
                json: json.to_string(),
            },
            journal: None,
        };
        (response, delay, steps)
    }

    /// Takes a request: answers at once, or starts the task that will.
    async fn on_request(
        &self,
        request: RelayRequest,
        connection: &mut Connection,
        calls: &mut Calls,
    ) -> Result<(), String> {
        bump(&self.counters.requests);
        if request.validate().is_err() {
            bump(&self.counters.invalid_requests);
        }
        let (response, delay, steps) = self.answer(&request);
        if delay.is_zero() {
            bump(&self.counters.answered);
            return send(connection, &Frame::Response(response)).await;
        }
        let request_id = request.request_id;
        let nonce = response_nonce(&request);
        let sender = calls.sender.clone();
        let task = calls.tasks.spawn(async move {
            let started = tokio::time::Instant::now();
            let total = f64::from(steps + 1);
            for step in 1..=steps {
                tokio::time::sleep_until(started + PROGRESS_STEP * step).await;
                let progress = RelayProgress {
                    request_id,
                    progress: f64::from(step),
                    total: Some(total),
                    message: nonce.clone(),
                };
                if sender.send(Work::Progress(progress)).is_err() {
                    return;
                }
            }
            tokio::time::sleep_until(started + delay).await;
            let _ = sender.send(Work::Done(request_id));
        });
        calls.pending.insert(request_id, Pending { response, task });
        Ok(())
    }

    async fn on_cancel(
        &self,
        request_id: RequestId,
        connection: &mut Connection,
        calls: &mut Calls,
    ) -> Result<(), String> {
        let Some(pending) = calls.pending.remove(&request_id) else {
            bump(&self.counters.cancels_after_answer);
            return Ok(());
        };
        bump(&self.counters.cancels_in_progress);
        pending.task.abort();
        calls.cancels += 1;
        if calls.cancels.is_multiple_of(2) {
            bump(&self.counters.late_answers);
            return send(connection, &Frame::Response(pending.response)).await;
        }
        Ok(())
    }

    async fn on_work(
        &self,
        work: Work,
        connection: &mut Connection,
        calls: &mut Calls,
    ) -> Result<(), String> {
        match work {
            Work::Progress(progress) => {
                if !calls.pending.contains_key(&progress.request_id) {
                    return Ok(());
                }
                bump(&self.counters.progress);
                send(connection, &Frame::Progress(progress)).await
            }
            Work::Done(request_id) => match calls.pending.remove(&request_id) {
                Some(pending) => {
                    bump(&self.counters.answered);
                    send(connection, &Frame::Response(pending.response)).await
                }
                None => Ok(()),
            },
        }
    }

    async fn on_frame(
        &self,
        frame: Frame,
        connection: &mut Connection,
        calls: &mut Calls,
    ) -> Result<(), String> {
        match frame {
            Frame::Ping { seq } => send(connection, &Frame::Pong { seq }).await,
            Frame::Request(request) => self.on_request(request, connection, calls).await,
            Frame::Cancel { request_id } => self.on_cancel(request_id, connection, calls).await,
            Frame::SessionRenewed { .. } | Frame::Pong { .. } => Ok(()),
            Frame::Close { reason } => Err(format!("closed by the gateway ({reason:?})")),
            Frame::GoAway { reason, .. } => Err(format!("sent away by the gateway ({reason:?})")),
            other => Err(format!("unexpected frame from the gateway: {other:?}")),
        }
    }

    /// Serves one connection: answers pings and calls, renews the session.
    async fn serve(
        &self,
        connection: &mut Connection,
        calls: &mut Calls,
        mut until: Until<'_>,
    ) -> Served {
        let limit = match until {
            Until::Command(_) => None,
            Until::Drained | Until::Closed => Some(tokio::time::Instant::now() + DRAIN_LIMIT),
        };
        let mut renew = tokio::time::interval_at(
            tokio::time::Instant::now() + connection.renew_every,
            connection.renew_every,
        );
        loop {
            let drained = matches!(until, Until::Drained) && calls.pending.is_empty();
            if drained || limit.is_some_and(|limit| tokio::time::Instant::now() >= limit) {
                return Served::Drained;
            }
            let step = tokio::select! {
                command = async {
                    match &mut until {
                        Until::Command(commands) => commands.recv().await,
                        Until::Drained | Until::Closed => std::future::pending().await,
                    }
                } => {
                    return Served::Command(command.unwrap_or(Command::Stop));
                }
                message = connection.stream.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => match WireMessage::decode(&bytes) {
                        Ok(WireMessage::Record(record)) => match connection.transport.open(&record) {
                            Ok(frame) => self.on_frame(frame, connection, calls).await,
                            Err(error) => Err(format!("record refused: {error}")),
                        },
                        Ok(other) => Err(format!("unexpected message {other:?}")),
                        Err(error) => Err(format!("undecodable message: {error}")),
                    },
                    Some(Ok(Message::Close(_))) | None => Err("connection closed by the gateway".into()),
                    Some(Ok(_)) => Ok(()),
                    Some(Err(error)) => Err(format!("connection failed: {error}")),
                },
                Some(work) = calls.receiver.recv() => self.on_work(work, connection, calls).await,
                Some(_) = calls.tasks.join_next(), if !calls.tasks.is_empty() => Ok(()),
                _ = renew.tick() => send(connection, &Frame::RenewSession).await,
                _ = async {
                    match limit {
                        Some(limit) => tokio::time::sleep_until(limit).await,
                        None => std::future::pending().await,
                    }
                } => Ok(()),
            };
            if let Err(why) = step {
                return Served::Lost(why);
            }
        }
    }

    /// Counts the calls a connection leaves unanswered.
    fn abandon(&self, calls: Calls) {
        self.counters
            .abandoned
            .fetch_add(calls.pending.len() as u64, Ordering::SeqCst);
    }

    /// A session the gateway ended without being asked: reported, then reconnected.
    async fn recover(&mut self, why: &str, calls: Calls, started: Instant) -> Connection {
        bump(&self.counters.lost);
        println!(
            "LOST {} {}",
            self.index,
            why.replace(char::is_whitespace, "_")
        );
        self.abandon(calls);
        let connection = self.connect().await;
        println!(
            "RECONNECTED {} lost {}",
            self.index,
            started.elapsed().as_micros()
        );
        connection
    }

    /// Holds this peer's session until told to stop, reconnecting when commanded or when the
    /// gateway drops it.
    async fn run(
        mut self,
        mut connection: Connection,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        bump(&self.counters.open);
        loop {
            let mut calls = Calls::new();
            let served = self
                .serve(&mut connection, &mut calls, Until::Command(&mut commands))
                .await;
            let started = Instant::now();
            let mode = match served {
                Served::Command(Command::Stop) => {
                    let _ = send(
                        &mut connection,
                        &Frame::Close {
                            reason: CloseReason::Shutdown,
                        },
                    )
                    .await;
                    let _ = connection.stream.close(None).await;
                    self.abandon(calls);
                    self.counters.open.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                Served::Command(Command::Reconnect(mode)) => mode,
                Served::Lost(why) => {
                    connection = self.recover(&why, calls, started).await;
                    continue;
                }
                // Only a serve without commands ends drained.
                Served::Drained => {
                    connection = self.recover("drained", calls, started).await;
                    continue;
                }
            };
            connection = match mode {
                ReconnectMode::Abrupt => {
                    drop(connection);
                    self.abandon(calls);
                    self.connect().await
                }
                ReconnectMode::Graceful => {
                    let _ = send(
                        &mut connection,
                        &Frame::Close {
                            reason: CloseReason::Shutdown,
                        },
                    )
                    .await;
                    let _ = connection.stream.close(None).await;
                    self.abandon(calls);
                    self.connect().await
                }
                ReconnectMode::Replace => {
                    let fresh = self.connect().await;
                    // The gateway closes the old session as replaced once it registers the new
                    // one; until then the old one still answers.
                    let _ = self.serve(&mut connection, &mut calls, Until::Closed).await;
                    drop(connection);
                    self.abandon(calls);
                    fresh
                }
                ReconnectMode::Drain => {
                    let go_away = Frame::GoAway {
                        retry_after_ms: 0,
                        reason: CloseReason::Shutdown,
                    };
                    if send(&mut connection, &go_away).await.is_ok() {
                        let _ = self
                            .serve(&mut connection, &mut calls, Until::Drained)
                            .await;
                        let _ = send(
                            &mut connection,
                            &Frame::Close {
                                reason: CloseReason::Shutdown,
                            },
                        )
                        .await;
                    }
                    let _ = connection.stream.close(None).await;
                    self.abandon(calls);
                    self.connect().await
                }
            };
            bump(&self.counters.reconnects);
            println!(
                "RECONNECTED {} {} {}",
                self.index,
                mode.as_str(),
                started.elapsed().as_micros()
            );
        }
    }
}

/// The nonce of a call, for its progress messages.
fn response_nonce(request: &RelayRequest) -> Option<String> {
    request.arguments().ok().and_then(|arguments| {
        arguments
            .get("order_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

async fn send(connection: &mut Connection, frame: &Frame) -> Result<(), String> {
    send_frame(&mut connection.stream, &mut connection.transport, frame)
        .await
        .map_err(|error| format!("send failed: {error}"))
}

/// The helper process: loads `count` sidecars from `first` on, opens their sessions, then
/// obeys stdin until `STOP` or EOF.
pub(super) async fn run_peers(
    relay_url: &str,
    sidecars_dir: &Path,
    first: usize,
    count: usize,
) -> BenchResult<()> {
    if !crate::is_loopback_relay(relay_url) {
        return Err(bench_error(format!(
            "the soak dials ws://127.0.0.1 only, not {relay_url}"
        )));
    }
    let dirs: Vec<(usize, PathBuf)> = (first..first + count)
        .map(|index| (index, sidecar_dir(sidecars_dir, index)))
        .collect();
    let loaded = tokio::task::spawn_blocking(move || {
        dirs.iter()
            .map(|(index, dir)| load_credentials(dir).map(|credentials| (*index, credentials)))
            .collect::<BenchResult<Vec<_>>>()
    })
    .await??;
    let counters = Arc::new(PeerCounters::default());

    // Open every session, a few at a time.
    let started = Instant::now();
    let mut opening: JoinSet<BenchResult<(Peer, Connection)>> = JoinSet::new();
    let mut pending = loaded.into_iter();
    let mut controls: HashMap<usize, mpsc::UnboundedSender<Command>> = HashMap::new();
    let mut running = JoinSet::new();
    loop {
        while opening.len() < OPEN_CONCURRENCY {
            let Some((index, credentials)) = pending.next() else {
                break;
            };
            let mut peer = Peer {
                index,
                credentials,
                relay_url: relay_url.to_string(),
                counters: Arc::clone(&counters),
            };
            opening.spawn(async move {
                let connection = peer.connect_once().await?;
                Ok((peer, connection))
            });
        }
        let Some(done) = opening.join_next().await else {
            break;
        };
        let (peer, connection) = done??;
        let (control, commands) = mpsc::unbounded_channel();
        controls.insert(peer.index, control);
        running.spawn(peer.run(connection, commands));
    }
    println!(
        "OPENED {} {}",
        controls.len(),
        started.elapsed().as_micros()
    );

    let (sender, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("RECONNECT") => {
                let index: Option<usize> = words.next().and_then(|word| word.parse().ok());
                let mode = words.next().and_then(ReconnectMode::parse);
                let (Some(index), Some(mode)) = (index, mode) else {
                    return Err(bench_error(format!("malformed command {line:?}")));
                };
                let control = controls
                    .get(&index)
                    .ok_or_else(|| bench_error(format!("no peer {index}")))?;
                let _ = control.send(Command::Reconnect(mode));
            }
            Some("STATS") => println!("{}", counters.line()),
            Some("STOP") => break,
            _ => return Err(bench_error(format!("unknown command {line:?}"))),
        }
    }
    for control in controls.values() {
        let _ = control.send(Command::Stop);
    }
    let stopping = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .is_err()
    {
        eprintln!("soak peers: some sessions did not close in time");
    }
    Ok(())
}

/// The soak's side of the peers helper.
pub(super) struct PeersProcess {
    process: super::process::HelperProcess,
    replies: mpsc::UnboundedReceiver<String>,
    /// Peers with a reconnect commanded and not yet done, and how many (watched).
    reconnecting: Arc<std::sync::Mutex<std::collections::HashSet<usize>>>,
    in_progress: tokio::sync::watch::Sender<usize>,
    /// Reconnects done, by mode (and `lost`), with their total time.
    done: Arc<std::sync::Mutex<HashMap<String, (u64, Duration)>>>,
    /// How long opening every session took in the helper.
    pub opening: Duration,
    pub opened: usize,
}

impl PeersProcess {
    /// Starts the helper for sidecars `first..first + count` and waits until every session is
    /// open.
    pub(super) async fn start(
        exe: &Path,
        relay_url: &str,
        sidecars_dir: &Path,
        first: usize,
        count: usize,
    ) -> BenchResult<Self> {
        let args = vec![
            "soak-peers".to_string(),
            "--relay-url".to_string(),
            relay_url.to_string(),
            "--sidecars-dir".to_string(),
            sidecars_dir.display().to_string(),
            "--first".to_string(),
            first.to_string(),
            "--count".to_string(),
            count.to_string(),
        ];
        let (process, mut lines) = super::process::HelperProcess::spawn("peers", exe, &args)?;
        let reconnecting = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let done: Arc<std::sync::Mutex<HashMap<String, (u64, Duration)>>> =
            Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (replies_sender, mut replies) = mpsc::unbounded_channel();
        let in_progress_count = tokio::sync::watch::channel(0).0;
        let (in_progress, finished, counter) = (
            Arc::clone(&reconnecting),
            Arc::clone(&done),
            in_progress_count.clone(),
        );
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["RECONNECTED", index, mode, micros] => {
                        if let Ok(index) = index.parse::<usize>()
                            && let Ok(mut set) = in_progress.lock()
                        {
                            set.remove(&index);
                            counter.send_replace(set.len());
                        }
                        let took = Duration::from_micros(micros.parse().unwrap_or(0));
                        if let Ok(mut done) = finished.lock() {
                            let entry = done.entry((*mode).to_string()).or_default();
                            entry.0 += 1;
                            entry.1 += took;
                        }
                    }
                    ["LOST", index, why] => {
                        eprintln!("  relay peer {index} lost its session: {why}");
                    }
                    _ => {
                        if replies_sender.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let opened_line = super::process::expect_line(
            &mut replies,
            "OPENED",
            Duration::from_secs(600),
            "the relay peers' sessions",
        )
        .await?;
        let numbers = crate::parse_numbers(&opened_line, "OPENED", 2)?;
        Ok(PeersProcess {
            process,
            replies,
            reconnecting,
            in_progress: in_progress_count,
            done,
            opening: Duration::from_micros(numbers[1]),
            opened: usize::try_from(numbers[0]).unwrap_or(0),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether peer `index` is reconnecting now.
    pub(super) fn is_reconnecting(&self, index: usize) -> bool {
        self.reconnecting
            .lock()
            .map(|set| set.contains(&index))
            .unwrap_or(true)
    }

    /// Waits until no commanded reconnect is in progress.
    pub(super) async fn settled(&self, limit: Duration) -> BenchResult<()> {
        let mut count = self.in_progress.subscribe();
        tokio::time::timeout(limit, count.wait_for(|count| *count == 0))
            .await
            .map_err(|_| bench_error("the relay peers' reconnects did not finish"))?
            .map_err(|_| bench_error("the relay peers' helper is gone"))?;
        Ok(())
    }

    pub(super) fn reconnect(&self, index: usize, mode: ReconnectMode) -> BenchResult<()> {
        if let Ok(mut set) = self.reconnecting.lock() {
            set.insert(index);
            self.in_progress.send_replace(set.len());
        }
        self.process
            .sink()
            .send(&format!("RECONNECT {index} {}", mode.as_str()))
    }

    /// Reconnects done by mode: (mode, count, mean time).
    pub(super) fn reconnects(&self) -> Vec<(String, u64, Duration)> {
        let done = self
            .done
            .lock()
            .map(|done| done.clone())
            .unwrap_or_default();
        let mut rows: Vec<(String, u64, Duration)> = done
            .into_iter()
            .map(|(mode, (count, total))| {
                let mean = total / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
                (mode, count, mean)
            })
            .collect();
        rows.sort();
        rows
    }

    /// The helper's counters, named.
    pub(super) async fn stats(&mut self) -> BenchResult<Vec<(&'static str, u64)>> {
        self.process.sink().send("STATS")?;
        let line = super::process::expect_line(
            &mut self.replies,
            "STATS",
            Duration::from_secs(10),
            "the relay peers' counters",
        )
        .await?;
        let numbers = crate::parse_numbers(&line, "STATS", STATS_FIELDS.len())?;
        Ok(STATS_FIELDS.iter().copied().zip(numbers).collect())
    }

    pub(super) async fn stop(self) -> BenchResult<()> {
        self.process.stop(Duration::from_secs(60)).await
    }
}
