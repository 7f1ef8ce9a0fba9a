//! The TCP listener: `TCP_NODELAY` on every accepted socket (headers and bodies are written
//! separately; without it Nagle plus delayed ACK stalls each response by ~40 ms) and a cap on
//! concurrent connections (`remote_mcp.max_connections`).
//!
//! At the cap, a new connection is accepted and answered `503 Service Unavailable` with
//! `Retry-After` and a `RELAY_OVERLOADED` JSON body, then closed, so clients learn at once
//! that the gateway is full instead of hanging in the kernel backlog. Those answers run in
//! their own small tasks, at most [`MAX_REJECTIONS_IN_FLIGHT`] at a time (beyond that the
//! connection is simply closed), each bounded by [`REJECTION_TIMEOUT`].

use crate::ops::metrics::Metrics;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Concurrent 503 answers at the connection cap.
pub const MAX_REJECTIONS_IN_FLIGHT: usize = 64;
/// Bound on reading the request head and writing the 503.
pub const REJECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of the request head read before answering.
const REJECTION_READ_LIMIT: usize = 8 * 1024;

pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    rejections: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl LimitedListener {
    pub fn new(
        inner: TcpListener,
        max_connections: usize,
        metrics: Arc<Metrics>,
    ) -> LimitedListener {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            rejections: Arc::new(Semaphore::new(MAX_REJECTIONS_IN_FLIGHT)),
            metrics,
        }
    }
}

/// An accepted connection holding its slot until dropped.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The whole 503 response.
fn rejection_response() -> Vec<u8> {
    let error = crate::error::GatewayError::with_detail(
        shared_safety::ErrorCode::RelayOverloaded,
        "The gateway has reached its connection limit.",
    );
    let body = error.to_json().to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         cache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads the request head (bounded), answers 503 and closes. Reading first lets the client
/// see the answer instead of a reset caused by unread data.
async fn reject(mut stream: TcpStream) {
    let _ = tokio::time::timeout(REJECTION_TIMEOUT, async {
        let mut head = Vec::with_capacity(1024);
        let mut buffer = [0u8; 1024];
        while head.len() < REJECTION_READ_LIMIT && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => head.extend_from_slice(&buffer[..read]),
            }
        }
        if stream.write_all(&rejection_response()).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    })
    .await;
}

impl LimitedListener {
    /// The next connection that got a slot, with its peer address. Connections beyond the cap
    /// are answered 503 here and never returned.
    pub async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                    match Arc::clone(&self.permits).try_acquire_owned() {
                        Ok(permit) => {
                            return (
                                LimitedStream {
                                    stream,
                                    _permit: permit,
                                },
                                addr,
                            );
                        }
                        Err(_) => {
                            self.metrics.connection_rejected();
                            tracing::debug!("connection limit reached; answering 503");
                            if let Ok(slot) = Arc::clone(&self.rejections).try_acquire_owned() {
                                tokio::spawn(async move {
                                    reject(stream).await;
                                    drop(slot);
                                });
                            }
                        }
                    }
                }
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // E.g. EMFILE: back off instead of spinning on a failing accept (what
                    // axum's own TcpListener does).
                    tracing::error!(%error, "accept failed; retrying in 1 s");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The socket peer of a request, put in its extensions as `ConnectInfo<PeerAddr>` by the
/// server loop (`http::server`).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);
