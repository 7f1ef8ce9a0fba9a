//! A fault-injecting TCP proxy for the way from the sidecar to CPGW.
//!
//! It listens on a free loopback port and forwards every connection to one upstream address
//! (the CPGW simulator). It is a TCP proxy: TLS passes through untouched, so the sidecar talks
//! HTTPS to the simulator exactly as before, only through `https://127.0.0.1:<proxy port>`
//! (the sidecar accepts the self-signed certificate of any loopback host).
//!
//! What the network does is switched at run time with [`FaultProxy::set_mode`]:
//!
//! - [`ProxyMode::Pass`]: bytes go through as they come.
//! - [`ProxyMode::Down`]: the listening socket is closed, so new connections are refused by the
//!   kernel (`ECONNREFUSED`), and every open connection is reset, as when CPGW's process is gone.
//!   Leaving `Down` binds the same port again.
//! - [`ProxyMode::Delay`]: every chunk, both ways, waits that long before it is forwarded (a TLS
//!   handshake too, so a new connection is slow to open). A chunk read before its connection
//!   closed is still delivered upstream: a request can land after its sender gave up.
//! - [`ProxyMode::Hold`]: new connections are accepted and left unanswered, and chunks on open
//!   ones are kept, until the mode changes; [`FaultProxy::wait_held`] says when `n` wait.
//! - [`ProxyMode::ResetBeforeForwarding`]: a new connection is accepted and reset at once
//!   (`SO_LINGER` 0, then closed: an RST), and every open connection is reset when the mode is
//!   set; nothing reaches the upstream.
//! - [`ProxyMode::ResetOnResponse`]: what the client sends is forwarded, and the connection is
//!   reset when the upstream's answer arrives, which is dropped: a request that landed and whose
//!   answer is lost. Set it once the request is known to have landed (for an order, with the
//!   simulator's `hold_order_answers`), since a TLS handshake's answer counts too.
//!
//! Counters ([`FaultProxy::counters`]): connections accepted, bytes each way, resets. Tests
//! synchronise on notifications ([`FaultProxy::wait_held`], [`FaultProxy::wait_resets`]), never
//! on sleeps; `set_mode` returns once the mode is in force (for `Down` and
//! `ResetBeforeForwarding`: once every open connection is gone).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long `set_mode` and the waits give the proxy's own tasks before reporting a failure.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;

/// What the proxy does with connections and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Pass,
    Down,
    Delay(Duration),
    Hold,
    ResetBeforeForwarding,
    ResetOnResponse,
}

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyCounters {
    /// Connections accepted (refused ones never reach the proxy).
    pub accepted: u64,
    /// Bytes forwarded from the client to the upstream.
    pub bytes_to_upstream: u64,
    /// Bytes forwarded from the upstream to the client.
    pub bytes_to_client: u64,
    /// Client connections reset (RST).
    pub resets: u64,
    /// Connections waiting in [`ProxyMode::Hold`] now.
    pub held: usize,
    /// Client connections open now.
    pub open: usize,
}

struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    accepted: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    resets: watch::Sender<u64>,
    held: watch::Sender<usize>,
    open: watch::Sender<usize>,
    shutdown: CancellationToken,
}

impl Shared {
    /// Resets `client`: `SO_LINGER` 0 and close sends an RST instead of a FIN.
    fn reset(&self, client: TcpStream) {
        // Best effort: without it the close is a FIN, still a broken connection.
        let _ = client.set_zero_linger();
        drop(client);
        self.resets.send_modify(|count| *count += 1);
    }

    fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Waits while the mode is [`ProxyMode::Hold`], counted as one held connection. False when
    /// the proxy shuts down.
    async fn wait_out_hold(&self) -> bool {
        let mut mode = self.mode.subscribe();
        self.held.send_modify(|held| *held += 1);
        let released = tokio::select! {
            () = self.shutdown.cancelled() => false,
            changed = mode.wait_for(|mode| *mode != ProxyMode::Hold) => changed.is_ok(),
        };
        self.held.send_modify(|held| *held = held.saturating_sub(1));
        released
    }
}

/// Counts a connection open while it lives.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> OpenGuard {
        shared.open.send_modify(|open| *open += 1);
        OpenGuard(Arc::clone(shared))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .open
            .send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// The accept loop while the proxy is not down.
struct Listening {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A running proxy. Dropping it stops it; [`FaultProxy::shutdown`] also waits for the listener
/// to close.
pub struct FaultProxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listening: Mutex<Option<Listening>>,
}

impl FaultProxy {
    /// Binds a free loopback port and forwards to `upstream`, in [`ProxyMode::Pass`].
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            mode: watch::channel(ProxyMode::Pass).0,
            accepted: AtomicU64::new(0),
            bytes_to_upstream: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            resets: watch::channel(0).0,
            held: watch::channel(0).0,
            open: watch::channel(0).0,
            shutdown: CancellationToken::new(),
        });
        let listening = listen(&shared, listener);
        Ok(FaultProxy {
            shared,
            local_addr,
            listening: Mutex::new(Some(listening)),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// `https://127.0.0.1:<port>/v1/api`: the simulator's API base URL through the proxy.
    pub fn cpgw_base_url(&self) -> String {
        format!("https://{}/v1/api", self.local_addr)
    }

    /// The mode in force.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Switches the mode. Returns once it is in force: for [`ProxyMode::Down`] the listening
    /// socket is closed, and for `Down` and [`ProxyMode::ResetBeforeForwarding`] every
    /// connection open before is gone (reset). Leaving `Down` binds the same port again.
    pub async fn set_mode(&self, mode: ProxyMode) -> std::io::Result<()> {
        let mut listening = self.listening.lock().await;
        self.shared.mode.send_replace(mode);
        if mode == ProxyMode::Down {
            if let Some(Listening { stop, task }) = listening.take() {
                stop.cancel();
                // The task owns the listener: once it ended, the port refuses connections.
                let _ = task.await;
            }
        } else if listening.is_none() {
            let listener = TcpListener::bind(self.local_addr).await?;
            *listening = Some(listen(&self.shared, listener));
        }
        drop(listening);
        if matches!(mode, ProxyMode::Down | ProxyMode::ResetBeforeForwarding) {
            let mut open = self.shared.open.subscribe();
            tokio::time::timeout(SETTLE_LIMIT, open.wait_for(|open| *open == 0))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "open connections were not reset in time",
                    )
                })?
                .map_err(|_| std::io::Error::other("the proxy stopped"))?;
        }
        Ok(())
    }

    /// What the proxy did so far.
    pub fn counters(&self) -> ProxyCounters {
        ProxyCounters {
            accepted: self.shared.accepted.load(Ordering::SeqCst),
            bytes_to_upstream: self.shared.bytes_to_upstream.load(Ordering::SeqCst),
            bytes_to_client: self.shared.bytes_to_client.load(Ordering::SeqCst),
            resets: *self.shared.resets.borrow(),
            held: *self.shared.held.borrow(),
            open: *self.shared.open.borrow(),
        }
    }

    /// Waits until at least `count` connections wait in [`ProxyMode::Hold`]. Returns false if
    /// that did not happen within 10 s.
    pub async fn wait_held(&self, count: usize) -> bool {
        let mut held = self.shared.held.subscribe();
        matches!(
            tokio::time::timeout(SETTLE_LIMIT, held.wait_for(|held| *held >= count)).await,
            Ok(Ok(_))
        )
    }

    /// Waits until at least `count` connections were reset in all. Returns false if that did
    /// not happen within 10 s.
    pub async fn wait_resets(&self, count: u64) -> bool {
        let mut resets = self.shared.resets.subscribe();
        matches!(
            tokio::time::timeout(SETTLE_LIMIT, resets.wait_for(|resets| *resets >= count)).await,
            Ok(Ok(_))
        )
    }

    /// Stops accepting and drops every connection.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        if let Some(Listening { stop, task }) = self.listening.lock().await.take() {
            stop.cancel();
            let _ = task.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn listen(shared: &Arc<Shared>, listener: TcpListener) -> Listening {
    let stop = CancellationToken::new();
    let task = tokio::spawn(accept_loop(Arc::clone(shared), listener, stop.clone()));
    Listening { stop, task }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(connection(Arc::clone(&shared), client));
                }
                Err(error) => {
                    // Out of descriptors or similar: the client sees a refused or broken
                    // connection, which is what a test of this proxy looks at anyway.
                    tracing::warn!(%error, "fault proxy accept failed");
                    tokio::task::yield_now().await;
                }
            },
        }
    }
}

/// Which way a chunk travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

/// What to do with one chunk under `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Forward(Option<Duration>),
    Hold,
    Reset,
}

fn fate(mode: ProxyMode, direction: Direction) -> Fate {
    match (mode, direction) {
        (ProxyMode::Pass, _) | (ProxyMode::ResetOnResponse, Direction::ToUpstream) => {
            Fate::Forward(None)
        }
        (ProxyMode::Delay(by), _) => Fate::Forward(Some(by)),
        (ProxyMode::Hold, _) => Fate::Hold,
        (ProxyMode::Down | ProxyMode::ResetBeforeForwarding, _)
        | (ProxyMode::ResetOnResponse, Direction::ToClient) => Fate::Reset,
    }
}

/// One event of a connection's loop.
enum Event {
    Shutdown,
    ModeChanged,
    FromClient(std::io::Result<usize>),
    FromUpstream(std::io::Result<usize>),
}

async fn connection(shared: Arc<Shared>, client: TcpStream) {
    let _open = OpenGuard::new(&shared);
    // A connection accepted while held waits before anything else, not even dialing upstream.
    loop {
        match shared.mode() {
            ProxyMode::Down | ProxyMode::ResetBeforeForwarding => {
                shared.reset(client);
                return;
            }
            ProxyMode::Hold => {
                if !shared.wait_out_hold().await {
                    return;
                }
            }
            ProxyMode::Pass | ProxyMode::Delay(_) | ProxyMode::ResetOnResponse => break,
        }
    }
    let _ = client.set_nodelay(true);
    let upstream = match TcpStream::connect(shared.upstream).await {
        Ok(upstream) => upstream,
        Err(_) => {
            // Nothing behind the proxy: the client's connection breaks.
            shared.reset(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    pump(&shared, client, upstream).await;
}

/// Forwards both ways until both sides closed, or resets the client when the mode says so.
async fn pump(shared: &Arc<Shared>, mut client: TcpStream, mut upstream: TcpStream) {
    let mut mode = shared.mode.subscribe();
    let mut from_client = vec![0u8; CHUNK];
    let mut from_upstream = vec![0u8; CHUNK];
    let mut client_open = true;
    let mut upstream_open = true;
    while client_open || upstream_open {
        let event = tokio::select! {
            () = shared.shutdown.cancelled() => Event::Shutdown,
            changed = mode.changed() => match changed {
                Ok(()) => Event::ModeChanged,
                Err(_) => Event::Shutdown,
            },
            read = client.read(&mut from_client), if client_open => Event::FromClient(read),
            read = upstream.read(&mut from_upstream), if upstream_open => {
                Event::FromUpstream(read)
            }
        };
        let (direction, read) = match event {
            Event::Shutdown => return,
            Event::ModeChanged => {
                if matches!(
                    shared.mode(),
                    ProxyMode::Down | ProxyMode::ResetBeforeForwarding
                ) {
                    shared.reset(client);
                    return;
                }
                continue;
            }
            Event::FromClient(read) => (Direction::ToUpstream, read),
            Event::FromUpstream(read) => (Direction::ToClient, read),
        };
        let size = match read {
            Ok(0) => {
                // A clean close on one side becomes a FIN on the other.
                if direction == Direction::ToUpstream {
                    client_open = false;
                    let _ = upstream.shutdown().await;
                } else {
                    upstream_open = false;
                    let _ = client.shutdown().await;
                }
                continue;
            }
            Ok(size) => size,
            Err(_) => {
                if direction == Direction::ToClient {
                    // The upstream broke: so does the client's connection.
                    shared.reset(client);
                }
                return;
            }
        };
        let chunk = match direction {
            Direction::ToUpstream => &from_client[..size],
            Direction::ToClient => &from_upstream[..size],
        };
        // The chunk's fate is decided by the mode when it is forwarded, after any hold.
        let delay = loop {
            match fate(shared.mode(), direction) {
                Fate::Forward(delay) => break delay,
                Fate::Reset => {
                    shared.reset(client);
                    return;
                }
                Fate::Hold => {
                    if !shared.wait_out_hold().await {
                        return;
                    }
                }
            }
        };
        if let Some(delay) = delay {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let (written, counter) = match direction {
            Direction::ToUpstream => (upstream.write_all(chunk).await, &shared.bytes_to_upstream),
            Direction::ToClient => (client.write_all(chunk).await, &shared.bytes_to_client),
        };
        if written.is_err() {
            if direction == Direction::ToUpstream {
                shared.reset(client);
            }
            return;
        }
        counter.fetch_add(size as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers each chunk with `ok:` + the chunk and counts what it received.
    struct Upstream {
        addr: SocketAddr,
        received: watch::Receiver<u64>,
    }

    async fn upstream() -> Upstream {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (count, received) = watch::channel(0u64);
        let count = Arc::new(count);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(size) = stream.read(&mut buffer).await {
                        if size == 0 {
                            break;
                        }
                        count.send_modify(|total| *total += size as u64);
                        let mut answer = b"ok:".to_vec();
                        answer.extend_from_slice(&buffer[..size]);
                        if stream.write_all(&answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Upstream { addr, received }
    }

    async fn exchange(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut answer = vec![0u8; message.len() + 3];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    /// Reads until the connection ends; the error kind, or `None` for a clean close.
    async fn end_of(stream: &mut TcpStream) -> Option<std::io::ErrorKind> {
        let mut buffer = [0u8; 64];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) => return None,
                Ok(_) => continue,
                Err(error) => return Some(error.kind()),
            }
        }
    }

    #[tokio::test]
    async fn passes_bytes_both_ways_and_counts_them() {
        let upstream = upstream().await;
        let proxy = FaultProxy::start(upstream.addr).await.unwrap();
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(exchange(&mut client, b"hello").await.unwrap(), b"ok:hello");
        let counters = proxy.counters();
        assert_eq!(counters.accepted, 1);
        assert_eq!(counters.bytes_to_upstream, 5);
        assert_eq!(counters.bytes_to_client, 8);
        assert_eq!(counters.resets, 0);
        assert_eq!(counters.open, 1);
        assert!(
            proxy
                .cpgw_base_url()
                .ends_with(&format!(":{}/v1/api", proxy.local_addr().port()))
        );
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn down_refuses_connections_resets_open_ones_and_comes_back_on_the_same_port() {
        let upstream = upstream().await;
        let proxy = FaultProxy::start(upstream.addr).await.unwrap();
        let mut open = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(exchange(&mut open, b"one").await.unwrap(), b"ok:one");

        proxy.set_mode(ProxyMode::Down).await.unwrap();
        assert_eq!(
            end_of(&mut open).await,
            Some(std::io::ErrorKind::ConnectionReset)
        );
        let refused = TcpStream::connect(proxy.local_addr()).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(proxy.counters().accepted, 1);
        assert_eq!(proxy.counters().resets, 1);

        proxy.set_mode(ProxyMode::Pass).await.unwrap();
        let mut again = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(exchange(&mut again, b"two").await.unwrap(), b"ok:two");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn reset_before_forwarding_sends_nothing_upstream() {
        let upstream = upstream().await;
        let proxy = FaultProxy::start(upstream.addr).await.unwrap();
        let mut old = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(exchange(&mut old, b"warm").await.unwrap(), b"ok:warm");
        proxy
            .set_mode(ProxyMode::ResetBeforeForwarding)
            .await
            .unwrap();
        // The open connection was reset when the mode was set.
        assert_eq!(
            end_of(&mut old).await,
            Some(std::io::ErrorKind::ConnectionReset)
        );
        // A new one is accepted, then reset before a byte is forwarded.
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let _ = client.write_all(b"order").await;
        assert_eq!(
            end_of(&mut client).await,
            Some(std::io::ErrorKind::ConnectionReset)
        );
        assert!(proxy.wait_resets(2).await);
        assert_eq!(proxy.counters().bytes_to_upstream, 4);
        assert_eq!(*upstream.received.borrow(), 4, "only the warm-up arrived");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn reset_on_response_delivers_the_request_and_loses_the_answer() {
        let upstream = upstream().await;
        let mut received = upstream.received.clone();
        let proxy = FaultProxy::start(upstream.addr).await.unwrap();
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(exchange(&mut client, b"warm").await.unwrap(), b"ok:warm");
        proxy.set_mode(ProxyMode::ResetOnResponse).await.unwrap();
        client.write_all(b"order").await.unwrap();
        assert_eq!(
            end_of(&mut client).await,
            Some(std::io::ErrorKind::ConnectionReset)
        );
        received.wait_for(|total| *total == 9).await.unwrap();
        let counters = proxy.counters();
        assert_eq!(counters.bytes_to_upstream, 9, "the request landed");
        assert_eq!(counters.bytes_to_client, 7, "only the warm-up's answer");
        assert_eq!(counters.resets, 1);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn hold_keeps_connections_and_bytes_until_released() {
        let upstream = upstream().await;
        let proxy = FaultProxy::start(upstream.addr).await.unwrap();
        let mut warm = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(exchange(&mut warm, b"warm").await.unwrap(), b"ok:warm");
        proxy.set_mode(ProxyMode::Hold).await.unwrap();
        let mut fresh = TcpStream::connect(proxy.local_addr()).await.unwrap();
        fresh.write_all(b"new").await.unwrap();
        warm.write_all(b"old").await.unwrap();
        assert!(proxy.wait_held(2).await, "{:?}", proxy.counters());
        assert_eq!(proxy.counters().bytes_to_upstream, 4, "nothing went on");
        assert_eq!(*upstream.received.borrow(), 4);

        proxy.set_mode(ProxyMode::Pass).await.unwrap();
        let mut answer = [0u8; 6];
        fresh.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ok:new");
        warm.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ok:old");
        assert_eq!(proxy.counters().held, 0);
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn delay_holds_each_chunk_back() {
        let upstream = upstream().await;
        let proxy = FaultProxy::start(upstream.addr).await.unwrap();
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(exchange(&mut client, b"warm").await.unwrap(), b"ok:warm");
        let delay = Duration::from_millis(150);
        proxy.set_mode(ProxyMode::Delay(delay)).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(exchange(&mut client, b"slow").await.unwrap(), b"ok:slow");
        // One delay on the way there, one on the way back.
        assert!(started.elapsed() >= delay * 2, "{:?}", started.elapsed());
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn a_chunk_delayed_past_its_sender_still_lands() {
        let upstream = upstream().await;
        let mut received = upstream.received.clone();
        let proxy = FaultProxy::start(upstream.addr).await.unwrap();
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(exchange(&mut client, b"warm").await.unwrap(), b"ok:warm");
        proxy
            .set_mode(ProxyMode::Delay(Duration::from_millis(100)))
            .await
            .unwrap();
        client.write_all(b"late").await.unwrap();
        drop(client);
        received.wait_for(|total| *total == 8).await.unwrap();
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn no_upstream_breaks_the_client_connection() {
        // A port with nothing behind it: bind, note, close.
        let gone = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = FaultProxy::start(gone).await.unwrap();
        let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(
            end_of(&mut client).await,
            Some(std::io::ErrorKind::ConnectionReset)
        );
        assert!(proxy.wait_resets(1).await);
        proxy.shutdown().await;
    }
}
