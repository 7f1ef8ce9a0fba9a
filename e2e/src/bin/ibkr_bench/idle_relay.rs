//! Idle relay sessions, and a gateway restart with all of them connected.
//!
//! The gateway runs in this process; the sidecars are paired by a helper process against a
//! throwaway gateway on the same state directory, then held open by a second helper process
//! (the real sidecar's dial and Noise IK handshake, answering the gateway's pings), so neither
//! their memory nor the heap the pairing exchanges used is counted here. The holder measures
//! its own side too (and, when asked, once more with tungstenite's default websocket settings,
//! for comparison).
//!
//! The restart: with every session idle and registered, the gateway shuts down (each session
//! gets `GoAway`, as in a rolling restart) and starts again on the same address and state. The
//! holder's sessions come back the way the sidecar daemon's do: after the gateway's `GoAway`
//! delay plus a little spread, then with the daemon's full-jitter backoff and its default
//! delays while the gateway is not listening yet. The figure is the time until the new gateway
//! has registered every session.

use crate::{BenchResult, Memory, bench_error, memory};
use e2e::dev_issuer::DevIssuer;
use e2e::system::loopback;
use futures_util::{SinkExt, StreamExt};
use ibkr_agent::relay::backoff::{Backoff, delay_with_spread};
use ibkr_agent::relay::dial::RelayStream;
use ibkr_gateway::{GatewayConfiguration, GatewayHandle};
use protocol::frame::{Frame, SidecarStatus};
use protocol::handshake::ClientHello;
use protocol::identity::{PublicKey, StaticKeypair};
use protocol::transport::Transport;
use protocol::wire::WireMessage;
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// Pairing exchanges run at once by the pairing helper.
pub const PAIRING_CONCURRENCY: usize = 8;
/// Relay connections opened at once by the session holder.
pub const CONNECT_CONCURRENCY: usize = 16;
/// Gateway heartbeat for the idle-session run: every session is pinged at this interval.
pub const IDLE_HEARTBEAT_INTERVAL_SECONDS: u64 = 5;
const IDLE_HEARTBEAT_TIMEOUT_SECONDS: u64 = 15;
/// Wait before each reading of the gateway's memory (the baseline too, after the gateway
/// started): two ping rounds, and long enough for tokio's idle blocking threads (10 s
/// keep-alive) to exit.
const SETTLE: Duration = Duration::from_secs(2 * IDLE_HEARTBEAT_INTERVAL_SECONDS + 2);
/// Idle time before reading the comparison run's memory: one ping round.
const COMPARISON_SETTLE: Duration = Duration::from_secs(IDLE_HEARTBEAT_INTERVAL_SECONDS + 1);
/// Bound on each wait of the idle-session run.
const IDLE_WAIT_LIMIT: Duration = Duration::from_secs(300);
/// tokio-tungstenite's default read buffer, allocated per connection.
pub const TUNGSTENITE_DEFAULT_READ_BUFFER: u64 = 128 * 1024;

/// A gateway configuration on loopback whose per-peer rate limit and connection caps (global,
/// relay and per peer) let one local client open `sessions` relay connections (every sidecar
/// here shares 127.0.0.1).
fn idle_gateway_config(
    issuer_url: &str,
    state_dir: &Path,
    sessions: usize,
    listen: SocketAddr,
) -> GatewayConfiguration {
    let mut config = GatewayConfiguration::for_dev(listen, issuer_url, state_dir);
    config.sidecar.heartbeat_interval_seconds = IDLE_HEARTBEAT_INTERVAL_SECONDS;
    config.sidecar.heartbeat_timeout_seconds = IDLE_HEARTBEAT_TIMEOUT_SECONDS;
    config.remote_mcp.rate_limit_per_peer_per_minute = 1_000_000;
    config.remote_mcp.max_connections = config.remote_mcp.max_connections.max(sessions + 64);
    config.remote_mcp.max_relay_connections =
        config.remote_mcp.max_relay_connections.max(sessions + 64);
    config.remote_mcp.max_connections_per_peer = config
        .remote_mcp
        .max_connections_per_peer
        .max(sessions + 64);
    config
}

/// The gateway restarted with every session connected.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RestartReport {
    /// The old gateway's graceful shutdown (GoAway to every session, drivers closed).
    pub shutdown: Duration,
    /// From the new gateway listening until it had registered every session again.
    pub back_after_listening: Duration,
    /// From the start of the shutdown until every session was back.
    pub back_after_shutdown_began: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    sessions: usize,
    /// Sessions open at the midpoint reading (0: no midpoint, with a single session).
    midpoint_sessions: usize,
    pairing: Duration,
    connecting: Duration,
    gateway_before: Memory,
    gateway_midpoint: Memory,
    gateway_after: Memory,
    client_before: Memory,
    client_after: Memory,
    /// The sidecar side again, dialed with tungstenite's default websocket settings.
    default_settings: Option<(Memory, Memory)>,
    pub restart: RestartReport,
}

impl IdleReport {
    /// Gateway resident bytes per idle relay session, 0 -> N (VmRSS).
    pub fn per_session_rss(&self) -> f64 {
        self.gateway_after
            .rss
            .saturating_sub(self.gateway_before.rss) as f64
            / self.sessions.max(1) as f64
    }

    pub fn sessions(&self) -> usize {
        self.sessions
    }
}

pub(crate) fn parse_numbers(line: &str, tag: &str, count: usize) -> BenchResult<Vec<u64>> {
    let mut words = line.split_whitespace();
    if words.next() != Some(tag) {
        return Err(bench_error(format!(
            "expected {tag} from the helper, got {line:?}"
        )));
    }
    let numbers = words
        .map(|word| word.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bench_error(format!("malformed helper line {line:?}")))?;
    if numbers.len() != count {
        return Err(bench_error(format!("malformed helper line {line:?}")));
    }
    Ok(numbers)
}

pub(crate) fn helper_command(exe: &Path) -> Command {
    let mut command = Command::new(exe);
    // The helpers log errors only, to the shared stderr.
    command.env("RUST_LOG", "error").stderr(Stdio::inherit());
    command
}

/// Runs the pairing helper to completion; returns how long the pairing took.
pub(crate) async fn pair_in_helper(
    exe: &Path,
    gateway_state_dir: &Path,
    sidecars_dir: &Path,
    count: usize,
) -> BenchResult<Duration> {
    let mut command = helper_command(exe);
    command
        .arg("pair-sidecars")
        .arg("--gateway-state-dir")
        .arg(gateway_state_dir)
        .arg("--sidecars-dir")
        .arg(sidecars_dir)
        .arg("--count")
        .arg(count.to_string())
        .stdin(Stdio::null());
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    if !output.status.success() {
        return Err(bench_error(format!(
            "the pairing helper failed ({})",
            output.status
        )));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.starts_with("PAIRED"))
        .ok_or_else(|| bench_error("the pairing helper printed no result"))?;
    let numbers = parse_numbers(line, "PAIRED", 2)?;
    if numbers[0] != count as u64 {
        return Err(bench_error(format!("the pairing helper paired {line:?}")));
    }
    Ok(Duration::from_micros(numbers[1]))
}

/// The session-holder helper: its stdin, and its stdout as lines.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Holder {
    /// Starts the holder; it loads every sidecar's credentials and reports its memory.
    async fn start(
        exe: &Path,
        relay_url: &str,
        sidecars_dir: &Path,
        count: usize,
        tungstenite_defaults: bool,
        reconnect: bool,
    ) -> BenchResult<(Self, Memory)> {
        let mut command = helper_command(exe);
        command
            .arg("hold-sessions")
            .arg("--relay-url")
            .arg(relay_url)
            .arg("--sidecars-dir")
            .arg(sidecars_dir)
            .arg("--count")
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if tungstenite_defaults {
            command.arg("--tungstenite-defaults");
        }
        if reconnect {
            command.arg("--reconnect");
        }
        let mut child = command.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| bench_error("the session holder has no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| bench_error("the session holder has no stdout"))?;
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut holder = Holder {
            child,
            stdin,
            lines,
        };
        let loaded = holder.next_line("the sidecar credentials").await?;
        let numbers = parse_numbers(&loaded, "LOADED", 2)?;
        let memory = Memory {
            rss: numbers[0],
            anon: numbers[1],
        };
        Ok((holder, memory))
    }

    fn send(&mut self, command: &str) -> BenchResult<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    async fn next_line(&mut self, what: &str) -> BenchResult<String> {
        match tokio::time::timeout(IDLE_WAIT_LIMIT, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err(bench_error(format!(
                "the session holder exited before {what}"
            ))),
            Err(_) => Err(bench_error(format!("timed out waiting for {what}"))),
        }
    }

    /// Opens `more` sessions; returns how many the holder has open.
    async fn open(&mut self, more: usize) -> BenchResult<u64> {
        self.send(&format!("OPEN {more}"))?;
        let opened = self.next_line("the relay sessions").await?;
        Ok(parse_numbers(&opened, "OPENED", 1)?[0])
    }

    /// The holder's memory and how many of its sessions are still open.
    async fn report(&mut self) -> BenchResult<(Memory, u64)> {
        self.send("REPORT")?;
        let report = self.next_line("the holder's memory report").await?;
        let numbers = parse_numbers(&report, "MEMORY", 3)?;
        let memory = Memory {
            rss: numbers[0],
            anon: numbers[1],
        };
        Ok((memory, numbers[2]))
    }

    /// Asks the holder to close its sessions and exit; kills it if it does not.
    async fn stop(mut self) -> BenchResult<()> {
        let _ = self.send("STOP");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(bench_error(format!("the session holder failed ({status})")))
                };
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                let _ = self.child.wait();
                return Err(bench_error("the session holder did not stop"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn wait_live_sessions(gateway: &GatewayHandle, count: usize) -> BenchResult<()> {
    let deadline = Instant::now() + IDLE_WAIT_LIMIT;
    loop {
        let live = gateway.live_sidecars().len();
        if live == count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(bench_error(format!(
                "the gateway has {live} live relay sessions, expected {count}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Has the holder open `more` sessions and waits until the gateway has registered `total`.
/// Returns how long that took.
async fn open_more(
    holder: &mut Holder,
    gateway: &GatewayHandle,
    more: usize,
    total: usize,
) -> BenchResult<Duration> {
    eprintln!("  opening {more} relay sessions ({total} in all) ...");
    let started = Instant::now();
    let opened = holder.open(more).await?;
    if opened != total as u64 {
        return Err(bench_error(format!(
            "the session holder has {opened} sessions open, expected {total}"
        )));
    }
    wait_live_sessions(gateway, total).await?;
    Ok(started.elapsed())
}

/// Lets the sessions idle for `settle`, then reads the gateway's and the holder's memory,
/// checking that no session was dropped meanwhile.
async fn settled_reading(
    holder: &mut Holder,
    gateway: &GatewayHandle,
    total: usize,
    settle: Duration,
) -> BenchResult<(Memory, Memory)> {
    eprintln!("  idling {} s ...", settle.as_secs());
    tokio::time::sleep(settle).await;
    let gateway_memory = memory()?;
    let live = gateway.live_sidecars().len();
    let (holder_memory, alive) = holder.report().await?;
    if live != total || alive != total as u64 {
        return Err(bench_error(format!(
            "sessions dropped while idle: gateway {live}, holder {alive}, expected {total}"
        )));
    }
    Ok((gateway_memory, holder_memory))
}

pub async fn idle_sessions(count: usize, compare_defaults: bool) -> BenchResult<IdleReport> {
    let exe = std::env::current_exe()?;
    let root = tempfile::tempdir()?;
    let gateway_state_dir = root.path().join("gateway");
    let sidecars_dir = root.path().join("sidecars");

    eprintln!("  pairing {count} sidecars (helper process) ...");
    let pairing = pair_in_helper(&exe, &gateway_state_dir, &sidecars_dir, count).await?;

    // The measured gateway: same state (key, instance id, pairings), fresh process heap.
    let issuer = DevIssuer::start(loopback(0)).await?;
    let gateway = ibkr_gateway::start(idle_gateway_config(
        &issuer.issuer_url(),
        &gateway_state_dir,
        count,
        loopback(0),
    ))
    .await?;
    // The restarted gateway comes back at the same address.
    let listen = gateway.local_addr();
    let relay_url = gateway.relay_url();
    let (mut holder, client_before) =
        Holder::start(&exe, &relay_url, &sidecars_dir, count, false, true).await?;
    // The baseline idles as long as the later readings, so that the blocking threads spawned
    // before it (store, audit pruning, waiting for the pairing helper) have exited in every
    // reading.
    let (gateway_before, _) = settled_reading(&mut holder, &gateway, 0, SETTLE).await?;

    // Two steps, so the second half gives the marginal cost without one-time costs.
    let midpoint_sessions = count / 2;
    let mut connecting = Duration::ZERO;
    let gateway_midpoint = if midpoint_sessions > 0 {
        connecting +=
            open_more(&mut holder, &gateway, midpoint_sessions, midpoint_sessions).await?;
        settled_reading(&mut holder, &gateway, midpoint_sessions, SETTLE)
            .await?
            .0
    } else {
        gateway_before
    };
    connecting += open_more(&mut holder, &gateway, count - midpoint_sessions, count).await?;
    let (gateway_after, client_after) =
        settled_reading(&mut holder, &gateway, count, SETTLE).await?;

    eprintln!("  restarting the gateway with {count} sessions connected ...");
    let restart_began = Instant::now();
    gateway.shutdown().await;
    let shutdown = restart_began.elapsed();
    let gateway = ibkr_gateway::start(idle_gateway_config(
        &issuer.issuer_url(),
        &gateway_state_dir,
        count,
        listen,
    ))
    .await?;
    let listening = Instant::now();
    wait_live_sessions(&gateway, count).await?;
    let restart = RestartReport {
        shutdown,
        back_after_listening: listening.elapsed(),
        back_after_shutdown_began: restart_began.elapsed(),
    };
    holder.stop().await?;
    wait_live_sessions(&gateway, 0).await?;

    // The same sidecar side with tungstenite's default websocket settings, for comparison.
    let default_settings = if compare_defaults {
        let (mut holder, before) =
            Holder::start(&exe, &relay_url, &sidecars_dir, count, true, false).await?;
        open_more(&mut holder, &gateway, count, count).await?;
        let (_, after) = settled_reading(&mut holder, &gateway, count, COMPARISON_SETTLE).await?;
        holder.stop().await?;
        Some((before, after))
    } else {
        None
    };

    gateway.shutdown().await;
    issuer.shutdown().await;
    Ok(IdleReport {
        sessions: count,
        midpoint_sessions,
        pairing,
        connecting,
        gateway_before,
        gateway_midpoint,
        gateway_after,
        client_before,
        client_after,
        default_settings,
        restart,
    })
}

// ---- idle relay sessions: the helpers ----------------------------------------------------

pub(crate) fn sidecar_dir(sidecars_dir: &Path, index: usize) -> PathBuf {
    sidecars_dir.join(format!("sidecar-{index:05}"))
}

pub(crate) async fn pair_sidecars(
    gateway_state_dir: &Path,
    sidecars_dir: &Path,
    count: usize,
) -> BenchResult<()> {
    let issuer = DevIssuer::start(loopback(0)).await?;
    let gateway = ibkr_gateway::start(idle_gateway_config(
        &issuer.issuer_url(),
        gateway_state_dir,
        count,
        loopback(0),
    ))
    .await?;
    let base_url = gateway.base_url();
    let started = Instant::now();
    let mut exchanges: JoinSet<BenchResult<()>> = JoinSet::new();
    let mut failure = None;
    for index in 0..count {
        // One user per laptop, as in production.
        let code = gateway
            .issue_pairing_code(&format!("bench-user-{index:05}"), Duration::from_secs(600))
            .await?;
        let dir = sidecar_dir(sidecars_dir, index);
        let base_url = base_url.clone();
        exchanges.spawn(async move {
            let identity_dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                ibkr_agent::create_identity(&identity_dir, "bench-laptop", None, None)
            })
            .await??;
            ibkr_agent::pair(&dir, &base_url, &code, None).await?;
            Ok(())
        });
        while exchanges.len() >= PAIRING_CONCURRENCY {
            if let Some(done) = exchanges.join_next().await
                && let Err(error) = done?
            {
                failure.get_or_insert(error);
            }
        }
    }
    while let Some(done) = exchanges.join_next().await {
        if let Err(error) = done? {
            failure.get_or_insert(error);
        }
    }
    let elapsed = started.elapsed();
    gateway.shutdown().await;
    issuer.shutdown().await;
    if let Some(error) = failure {
        return Err(bench_error(format!("pairing failed: {error}")));
    }
    println!("PAIRED {count} {}", elapsed.as_micros());
    Ok(())
}

/// What one sidecar needs to open a relay session, read from its state directory.
pub(crate) struct Credentials {
    pub(crate) keypair: StaticKeypair,
    pub(crate) gateway_key: PublicKey,
    pub(crate) user_id: String,
    pub(crate) pairing_id: Option<[u8; 16]>,
    pub(crate) hello: ClientHello,
}

pub(crate) fn load_credentials(state_dir: &Path) -> BenchResult<Credentials> {
    let store = ibkr_agent::StateStore::open(state_dir)?;
    let (identity, keypair) = ibkr_agent::identity::load_keypair(state_dir, &store)?;
    let pairing = store
        .pairings()?
        .into_iter()
        .next()
        .ok_or_else(|| bench_error("a benchmark sidecar has no pairing"))?;
    let gateway_key = pairing
        .gateway_public_key
        .ok_or_else(|| bench_error("a benchmark pairing has no gateway key"))?;
    let timestamp_ms = store
        .next_handshake_timestamp(&identity.sidecar_id, ibkr_agent::clock::now_unix_millis())?;
    Ok(Credentials {
        keypair,
        gateway_key,
        user_id: pairing.user_id,
        pairing_id: pairing.gateway_pairing_id,
        hello: ClientHello {
            protocol_version: protocol::PROTOCOL_VERSION,
            sidecar_id: identity.sidecar_id,
            remote_instance_id: pairing.remote_instance_id,
            timestamp_ms,
            sidecar_version: "ibkr-bench".into(),
            max_concurrent_requests: 32,
        },
    })
}

pub(crate) async fn send_frame(
    stream: &mut RelayStream,
    transport: &mut Transport,
    frame: &Frame,
) -> BenchResult<()> {
    let record = transport
        .seal(frame)
        .map_err(|error| bench_error(error.to_string()))?;
    stream
        .send(Message::Binary(WireMessage::Record(record).encode().into()))
        .await?;
    Ok(())
}

/// Runs the sidecar's Noise IK handshake on `stream` and sends the key confirmation (the
/// gateway registers the session on it).
async fn open_session(
    mut stream: RelayStream,
    credentials: &Credentials,
) -> BenchResult<(RelayStream, Transport)> {
    let pinned = ibkr_agent::relay::handshake::Pinned {
        gateway_key: &credentials.gateway_key,
        instance_id: &credentials.hello.remote_instance_id,
        user_id: &credentials.user_id,
        pairing_id: credentials.pairing_id,
    };
    let (mut transport, _) = ibkr_agent::relay::handshake::perform(
        &mut stream,
        &credentials.keypair,
        &credentials.hello,
        &pinned,
    )
    .await?;
    let confirmation = Frame::SidecarStatus(SidecarStatus {
        broker_session: "ready".into(),
        sidecar_version: "ibkr-bench".into(),
    });
    send_frame(&mut stream, &mut transport, &confirmation).await?;
    Ok((stream, transport))
}

/// How a held session ended.
enum SessionEnd {
    /// The gateway asked to come back after this long (a graceful shutdown).
    GoAway(Duration),
    Closed,
}

/// Holds an idle session: answers the gateway's pings until the connection ends.
async fn answer_pings(stream: &mut RelayStream, transport: &mut Transport) -> SessionEnd {
    while let Some(Ok(message)) = stream.next().await {
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(WireMessage::Record(record)) = WireMessage::decode(&bytes) else {
            break;
        };
        match transport.open(&record) {
            Ok(Frame::Ping { seq }) => {
                if send_frame(stream, transport, &Frame::Pong { seq })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(Frame::GoAway { retry_after_ms, .. }) => {
                return SessionEnd::GoAway(Duration::from_millis(retry_after_ms));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    SessionEnd::Closed
}

/// A handshake timestamp above the last one (the gateway refuses replays).
fn next_timestamp(credentials: &mut Credentials) {
    let now = ibkr_agent::clock::now_unix_millis();
    credentials.hello.timestamp_ms = now.max(credentials.hello.timestamp_ms + 1);
}

/// Holds one sidecar's session; with `reconnect`, comes back after the gateway ends it, on
/// the daemon's schedule: the `GoAway` delay plus a little spread, else full-jitter backoff
/// from the daemon's default delays (`sidecar/src/relay/supervisor.rs`).
async fn hold_session(
    relay_url: String,
    mut stream: RelayStream,
    mut transport: Transport,
    mut credentials: Credentials,
    reconnect: bool,
    alive: Arc<AtomicUsize>,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(ibkr_agent::config::DEFAULT_RECONNECT_INITIAL_DELAY_MS),
        Duration::from_millis(ibkr_agent::config::DEFAULT_RECONNECT_MAX_DELAY_MS),
    );
    loop {
        let end = answer_pings(&mut stream, &mut transport).await;
        alive.fetch_sub(1, Ordering::SeqCst);
        if !reconnect {
            return;
        }
        backoff.reset();
        let mut delay = match end {
            SessionEnd::GoAway(retry_after) => delay_with_spread(retry_after, OsRng.next_u64()),
            SessionEnd::Closed => backoff.next_delay(&mut OsRng),
        };
        loop {
            tokio::time::sleep(delay).await;
            next_timestamp(&mut credentials);
            let attempt = async {
                let fresh = dial(&relay_url, false).await?;
                open_session(fresh, &credentials).await
            };
            match attempt.await {
                Ok((fresh, fresh_transport)) => {
                    stream = fresh;
                    transport = fresh_transport;
                    alive.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(_) => delay = backoff.next_delay(&mut OsRng),
            }
        }
    }
}

pub(crate) fn is_loopback_relay(url: &str) -> bool {
    url.strip_prefix("ws://127.0.0.1:")
        .is_some_and(|rest| rest.ends_with("/relay"))
}

/// Opens the relay websocket with the sidecar's settings (small buffers), or with
/// tungstenite's defaults for comparison.
async fn dial(relay_url: &str, tungstenite_defaults: bool) -> BenchResult<RelayStream> {
    if tungstenite_defaults {
        let (stream, _) =
            tokio_tungstenite::connect_async_with_config(relay_url, None, true).await?;
        Ok(stream)
    } else {
        Ok(ibkr_agent::relay::dial::dial(relay_url).await?)
    }
}

/// Opens `batch` sessions, [`CONNECT_CONCURRENCY`] at a time, and leaves each answering pings
/// in its own task.
async fn open_batch(
    relay_url: &str,
    batch: Vec<Credentials>,
    tungstenite_defaults: bool,
    reconnect: bool,
    alive: &Arc<AtomicUsize>,
    holders: &mut JoinSet<()>,
) -> BenchResult<()> {
    let mut opening: JoinSet<BenchResult<(RelayStream, Transport, Credentials)>> = JoinSet::new();
    let mut pending = batch.into_iter();
    loop {
        while opening.len() < CONNECT_CONCURRENCY {
            let Some(credentials) = pending.next() else {
                break;
            };
            let url = relay_url.to_string();
            opening.spawn(async move {
                let stream = dial(&url, tungstenite_defaults).await?;
                let (stream, transport) = open_session(stream, &credentials).await?;
                Ok((stream, transport, credentials))
            });
        }
        let Some(done) = opening.join_next().await else {
            return Ok(());
        };
        let (stream, transport, credentials) = done??;
        alive.fetch_add(1, Ordering::SeqCst);
        holders.spawn(hold_session(
            relay_url.to_string(),
            stream,
            transport,
            credentials,
            reconnect,
            Arc::clone(alive),
        ));
    }
}

pub async fn hold_sessions(
    relay_url: &str,
    sidecars_dir: &Path,
    count: usize,
    tungstenite_defaults: bool,
    reconnect: bool,
) -> BenchResult<()> {
    if !is_loopback_relay(relay_url) {
        return Err(bench_error(format!(
            "the benchmark dials ws://127.0.0.1 only, not {relay_url}"
        )));
    }
    let dirs: Vec<PathBuf> = (0..count)
        .map(|index| sidecar_dir(sidecars_dir, index))
        .collect();
    let credentials = tokio::task::spawn_blocking(move || {
        dirs.iter()
            .map(|dir| load_credentials(dir))
            .collect::<BenchResult<Vec<_>>>()
    })
    .await??;
    let mut pending = credentials.into_iter();
    let loaded = memory()?;
    println!("LOADED {} {}", loaded.rss, loaded.anon);

    let (sender, mut commands) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let alive = Arc::new(AtomicUsize::new(0));
    let mut holders = JoinSet::new();
    while let Some(command) = commands.recv().await {
        let mut words = command.split_whitespace();
        match words.next() {
            Some("OPEN") => {
                let more: usize = words
                    .next()
                    .and_then(|word| word.parse().ok())
                    .ok_or_else(|| bench_error(format!("malformed command {command:?}")))?;
                let batch: Vec<Credentials> = pending.by_ref().take(more).collect();
                if batch.len() != more {
                    return Err(bench_error("more sessions asked for than sidecars paired"));
                }
                open_batch(
                    relay_url,
                    batch,
                    tungstenite_defaults,
                    reconnect,
                    &alive,
                    &mut holders,
                )
                .await?;
                println!("OPENED {}", alive.load(Ordering::SeqCst));
            }
            Some("REPORT") => {
                let now = memory()?;
                println!(
                    "MEMORY {} {} {}",
                    now.rss,
                    now.anon,
                    alive.load(Ordering::SeqCst)
                );
            }
            Some("STOP") => break,
            _ => return Err(bench_error(format!("unknown command {command:?}"))),
        }
    }
    holders.abort_all();
    Ok(())
}

// ---- output ------------------------------------------------------------------------------

/// Two decimals, so that the per-session rows can be checked against these readings.
pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn per_session(before: u64, after: u64, sessions: usize) -> String {
    let delta = after as f64 - before as f64;
    let each = delta / sessions.max(1) as f64;
    format!("{:.1} KiB ({:.0} B)", each / 1024.0, each)
}

pub fn row(label: &str, value: &str) {
    println!("  {label:<56} {value}");
}

pub fn print_idle(report: &IdleReport) {
    let n = report.sessions;
    let half = report.midpoint_sessions;
    println!(
        "\nIdle relay sessions (N = {n}; gateway heartbeat {IDLE_HEARTBEAT_INTERVAL_SECONDS} s; memory per session = RSS growth / sessions)"
    );
    row(
        &format!("pairing {n} sidecars, {PAIRING_CONCURRENCY} at a time"),
        &format!(
            "{:.2} s ({:.1} ms per sidecar)",
            report.pairing.as_secs_f64(),
            report.pairing.as_secs_f64() * 1000.0 / n.max(1) as f64
        ),
    );
    row(
        &format!("opening {n} sessions, {CONNECT_CONCURRENCY} at a time"),
        &format!("{:.2} s", report.connecting.as_secs_f64()),
    );
    row(
        &format!("gateway VmRSS: 0 / {half} / {n} sessions"),
        &format!(
            "{} / {} / {}",
            mib(report.gateway_before.rss),
            mib(report.gateway_midpoint.rss),
            mib(report.gateway_after.rss)
        ),
    );
    row(
        &format!("gateway RssAnon: 0 / {half} / {n} sessions"),
        &format!(
            "{} / {} / {}",
            mib(report.gateway_before.anon),
            mib(report.gateway_midpoint.anon),
            mib(report.gateway_after.anon)
        ),
    );
    row(
        &format!("gateway per idle session, 0 -> {n} (VmRSS)"),
        &per_session(report.gateway_before.rss, report.gateway_after.rss, n),
    );
    row(
        &format!("gateway per idle session, 0 -> {n} (RssAnon)"),
        &per_session(report.gateway_before.anon, report.gateway_after.anon, n),
    );
    if half > 0 {
        row(
            &format!("gateway per idle session, {half} -> {n} (VmRSS)"),
            &per_session(
                report.gateway_midpoint.rss,
                report.gateway_after.rss,
                n - half,
            ),
        );
    }
    row(
        "sidecar side per session, sidecar settings (VmRSS)",
        &per_session(report.client_before.rss, report.client_after.rss, n),
    );
    if let Some((before, after)) = report.default_settings {
        row(
            "sidecar side per session, tungstenite defaults (VmRSS)",
            &per_session(before.rss, after.rss, n),
        );
        row(
            "reference: tungstenite's default read buffer",
            &format!("{} KiB", TUNGSTENITE_DEFAULT_READ_BUFFER / 1024),
        );
    }
}
