//! The HTTP/1.1 server loop: one task per accepted connection, a deadline on the first byte
//! and on every request head, the per-request accounting of `http::limits`, websocket
//! upgrades, eviction, and graceful shutdown.
//!
//! `axum::serve` has no timer, so a client could hold a connection slot for ever by sending
//! nothing, or a request head one byte at a time. Here:
//!
//! - **First byte** (`remote_mcp.first_byte_timeout_seconds`, default 5 s): a connection that
//!   sends nothing at all within this time of being accepted is closed and its slot freed.
//!   Every real client (an agent, a sidecar, a proxy, a health check) sends its request as
//!   soon as it has connected, so this can be short; it is what makes a flood of silent
//!   sockets cost its sender a reconnect every few seconds.
//! - **Request head** (`remote_mcp.header_read_timeout_seconds`, default 75 s): hyper's timer.
//!   A connection that has not delivered a complete request head within that time of
//!   becoming ready for one (from its first byte, or idle between keep-alive requests) is
//!   closed. Because the same deadline is the keep-alive idle timeout, its default is longer
//!   than the upstream idle timeout of the usual reverse proxies (60 s), so the gateway never
//!   closes a pooled connection the proxy is about to reuse. It does not apply while a
//!   response streams (an SSE stream) nor to an upgraded relay websocket, whose liveness is
//!   the heartbeat's job.
//! - **Eviction**: when the pool evicts an idle connection to make room for a new one, the
//!   connection is shut down gracefully (an idle keep-alive connection closes once its last
//!   response is flushed) and dropped after [`EVICTION_DRAIN`] at most.
//!
//! On shutdown the listener is closed at once (new connections are refused, not left in the
//! backlog), each connection finishes its request in flight within `drain`, and whatever is
//! still open then is dropped.
//!
//! HTTP/1.1 only: the gateway sits behind a TLS-terminating proxy or is reached directly on
//! loopback; cleartext HTTP/2 would only add surface.

use crate::http::limits::serve_request;
use crate::http::listener::LimitedListener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest an evicted connection may take to close: enough to flush the end of the last
/// response of an idle keep-alive connection; its slot already belongs to another.
pub const EVICTION_DRAIN: Duration = Duration::from_secs(1);

/// The server's deadlines.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// From accept to the first byte received.
    pub first_byte: Duration,
    /// For each request head (hyper's `header_read_timeout`).
    pub header_read: Duration,
    /// For the request in flight once shutdown starts.
    pub drain: Duration,
}

/// Serves `router` on `listener` until `shutdown` fires, then gives open requests `drain` to
/// finish: returns once every connection has closed, at most `drain` after `shutdown`.
pub async fn serve(
    mut listener: LimitedListener,
    router: Router,
    deadlines: Deadlines,
    shutdown: CancellationToken,
) {
    let limits = listener.limits();
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let lease = stream.lease();
        let eviction = lease.eviction();
        let service = {
            let router = router.clone();
            let limits = Arc::clone(&limits);
            hyper::service::service_fn(move |request: axum::http::Request<Incoming>| {
                let response = serve_request(
                    router.clone(),
                    Arc::clone(&lease),
                    Arc::clone(&limits),
                    request,
                );
                async move { Ok::<_, Infallible>(response.await) }
            })
        };
        let metrics = Arc::clone(&limits.metrics);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = eviction.cancelled() => return,
                first = tokio::time::timeout(deadlines.first_byte, stream.first_byte()) => first,
            };
            match first {
                Ok(Ok(true)) => {}
                // Closed (or failed) before sending anything.
                Ok(Ok(false) | Err(_)) => return,
                Err(_) => {
                    metrics.connection_silent();
                    tracing::debug!(%peer, "no first byte within remote_mcp.first_byte_timeout_seconds; closed");
                    return;
                }
            }

            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(deadlines.header_read);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = eviction.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(EVICTION_DRAIN, connection).await {
                        Ok(served) => served,
                        Err(_) => {
                            tracing::debug!(%peer, "evicted connection did not close in time; dropped");
                            return;
                        }
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(deadlines.drain, connection).await {
                        Ok(served) => served,
                        Err(_) => {
                            tracing::debug!(%peer, "connection still busy at the end of the drain; closed");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = served {
                // Timeouts, resets and malformed requests: the client's problem, not ours.
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
