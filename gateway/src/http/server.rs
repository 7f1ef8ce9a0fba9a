//! The HTTP/1.1 server loop: one task per accepted connection, a deadline on every request
//! head, websocket upgrades, and graceful shutdown.
//!
//! `axum::serve` has no timer, so a client could hold a connection slot (one of
//! `remote_mcp.max_connections`) for ever by sending nothing, or a request head one byte at a
//! time. Here hyper runs with a timer and `remote_mcp.header_read_timeout_seconds`: a
//! connection that has not delivered a complete request head within that time of becoming
//! ready for one (just accepted, or idle between keep-alive requests) is closed and its slot
//! freed. Because the same deadline is the keep-alive idle timeout, its default (75 s) is
//! longer than the upstream idle timeout of the usual reverse proxies (60 s), so the gateway
//! never closes a pooled connection the proxy is about to reuse. The deadline does not apply
//! while a response streams (an SSE stream) nor to an upgraded relay websocket, whose
//! liveness is the heartbeat's job.
//!
//! On shutdown the listener is closed at once (new connections are refused, not left in the
//! backlog), each connection finishes its request in flight within `drain`, and whatever is
//! still open then is dropped.
//!
//! HTTP/1.1 only: the gateway sits behind a TLS-terminating proxy or is reached directly on
//! loopback; cleartext HTTP/2 would only add surface.

use crate::http::listener::{LimitedListener, PeerAddr};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` fires, then gives open requests `drain` to
/// finish: returns once every connection has closed, at most `drain` after `shutdown`.
pub async fn serve(
    mut listener: LimitedListener,
    router: Router,
    header_read_timeout: Duration,
    drain: Duration,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
                    request
                });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(drain, connection).await {
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
