//! The TCP listener: `TCP_NODELAY` on every accepted socket (headers and bodies are written
//! separately; without it Nagle plus delayed ACK stalls each response by ~40 ms) and the
//! accept-time connection limits of `http::limits` (per client address, and the general pool
//! with its eviction of the longest-idle connection).
//!
//! A refused connection is accepted and answered at once (`429 PEER_CONNECTION_LIMIT` or
//! `503 GATEWAY_CONNECTION_LIMIT`, with `Retry-After`), then closed, so clients learn that
//! the gateway is full instead of hanging in the kernel backlog. Those answers run in their
//! own small tasks, at most [`MAX_REJECTIONS_IN_FLIGHT`] at a time (beyond that the
//! connection is simply closed), each bounded by [`REJECTION_TIMEOUT`].

use crate::http::limits::{ConnectionLimits, Lease, raw_refusal};
use crate::ops::metrics::ConnectionLimit;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Concurrent answers to refused connections.
pub const MAX_REJECTIONS_IN_FLIGHT: usize = 64;
/// Bound on reading the request head and writing the refusal.
pub const REJECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of the request head read before answering.
const REJECTION_READ_LIMIT: usize = 8 * 1024;

pub struct LimitedListener {
    inner: TcpListener,
    limits: Arc<ConnectionLimits>,
    rejections: Arc<Semaphore>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limits: Arc<ConnectionLimits>) -> LimitedListener {
        LimitedListener {
            inner,
            limits,
            rejections: Arc::new(Semaphore::new(MAX_REJECTIONS_IN_FLIGHT)),
        }
    }

    pub fn limits(&self) -> Arc<ConnectionLimits> {
        Arc::clone(&self.limits)
    }
}

/// An accepted connection holding its [`Lease`] until dropped (an upgraded websocket owns
/// its stream, and so keeps its lease).
pub struct LimitedStream {
    // Dropped first: the slot is free by the time the peer sees the connection close.
    lease: Arc<Lease>,
    stream: TcpStream,
}

impl LimitedStream {
    pub fn lease(&self) -> Arc<Lease> {
        Arc::clone(&self.lease)
    }

    /// Waits until the peer has sent something (without consuming it): `false` when it
    /// closed first.
    pub async fn first_byte(&self) -> io::Result<bool> {
        let mut byte = [0u8; 1];
        Ok(self.stream.peek(&mut byte).await? > 0)
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Reads the request head (bounded), answers the refusal and closes. Reading first lets the
/// client see the answer instead of a reset caused by unread data.
async fn reject(mut stream: TcpStream, limit: ConnectionLimit) {
    let _ = tokio::time::timeout(REJECTION_TIMEOUT, async {
        let mut head = Vec::with_capacity(1024);
        let mut buffer = [0u8; 1024];
        while head.len() < REJECTION_READ_LIMIT && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => head.extend_from_slice(&buffer[..read]),
            }
        }
        if stream.write_all(&raw_refusal(limit)).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    })
    .await;
}

impl LimitedListener {
    /// The next connection that was admitted, with its peer address. Refused connections are
    /// answered here and never returned.
    pub async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                    match self.limits.admit(addr) {
                        Ok(lease) => {
                            return (
                                LimitedStream {
                                    lease: Arc::new(lease),
                                    stream,
                                },
                                addr,
                            );
                        }
                        Err(limit) => {
                            self.limits.metrics.connection_rejected(limit);
                            tracing::debug!(peer = %addr, limit = limit.label(), "connection refused at a connection limit");
                            if let Ok(slot) = Arc::clone(&self.rejections).try_acquire_owned() {
                                tokio::spawn(async move {
                                    reject(stream, limit).await;
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
