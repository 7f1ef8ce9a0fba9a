//! The connection limits of the HTTP edge, and what each connection holds against them.
//!
//! Three budgets, so that no single client, and no flood of anonymous sockets, can lock the
//! gateway out:
//!
//! - **Per client address** (`remote_mcp.max_connections_per_peer`, [`PeerLimit`]): an IPv4
//!   address or an IPv6 /64 holds at most this many connections, counted from accept to close
//!   (relay websockets included); beyond it, `429 PEER_CONNECTION_LIMIT`. A trusted proxy's
//!   own address carries many clients and is not capped at accept; instead each request it
//!   forwards counts, while it is in progress, against the forwarded client address (the one
//!   the rate limits use), since each such request holds one of the proxy's connections to
//!   the gateway. A request forwarded with no client address (the proxy's own health checks)
//!   is not counted.
//! - **General pool** (`remote_mcp.max_connections`, [`Pool`]): every HTTP connection. When
//!   it is full the longest-idle connection is evicted to make room; only when every
//!   connection has a request in progress is a new one refused, `503 GATEWAY_CONNECTION_LIMIT`.
//! - **Relay budget** (`remote_mcp.max_relay_connections`): a `/relay` websocket upgrade takes
//!   a relay slot before the handler runs (`503 GATEWAY_CONNECTION_LIMIT` when none is left)
//!   and, once upgraded, leaves the general pool, so live sidecar sessions never compete with
//!   HTTP clients for slots and a full pool never counts them. An upgraded websocket that does
//!   not complete the relay handshake is closed by the relay within its handshake timeout.
//!
//! Refusals carry `Retry-After: 1`, `Cache-Control: no-store` and the catalog JSON body.

use crate::error::GatewayError;
use crate::http::net::{ClientKey, IpNet, client_ip, is_trusted_proxy};
use crate::http::peer_limit::{PeerGuard, PeerLimit};
use crate::http::pool::{Busy, Pool, Slot};
use crate::ops::metrics::{ConnectionLimit, Metrics};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use shared_safety::ErrorCode;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The configured sizes.
#[derive(Clone, Debug)]
pub struct LimitSettings {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_relay_connections: usize,
    pub trusted_proxies: Vec<IpNet>,
}

/// The budgets, shared by the listener (accept time) and every connection (request time).
#[derive(Debug)]
pub struct ConnectionLimits {
    pool: Arc<Pool>,
    peers: Arc<PeerLimit>,
    relay: Arc<Semaphore>,
    trusted_proxies: Vec<IpNet>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The socket peer of a request, put in its extensions as `ConnectInfo<PeerAddr>`.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl ConnectionLimits {
    pub fn new(settings: LimitSettings, metrics: Arc<Metrics>) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            pool: Pool::new(settings.max_connections),
            peers: PeerLimit::new(settings.max_connections_per_peer),
            relay: Arc::new(Semaphore::new(settings.max_relay_connections.max(1))),
            trusted_proxies: settings.trusted_proxies,
            metrics,
        })
    }

    /// Accept-time admission of a connection from `peer` (see the module docs); the limit
    /// that refused it otherwise. The peer limit is checked first, so a client at its limit
    /// never evicts anybody.
    pub fn admit(&self, peer: SocketAddr) -> Result<Lease, ConnectionLimit> {
        let via_trusted_proxy = is_trusted_proxy(peer.ip(), &self.trusted_proxies);
        let peer_guard = if via_trusted_proxy {
            None
        } else {
            Some(
                self.peers
                    .try_acquire(ClientKey::of(peer.ip()))
                    .ok_or(ConnectionLimit::Peer)?,
            )
        };
        let slot = match self.pool.admit() {
            crate::http::pool::Admission::Free(slot) => slot,
            crate::http::pool::Admission::Evicted(slot) => {
                self.metrics.connection_evicted();
                tracing::debug!(%peer, "connection pool full; the longest-idle connection was evicted");
                slot
            }
            crate::http::pool::Admission::Full => return Err(ConnectionLimit::Total),
        };
        Ok(Lease {
            peer,
            via_trusted_proxy,
            eviction: slot.eviction(),
            slot: Mutex::new(Some(slot)),
            relay: Mutex::new(None),
            _peer: peer_guard,
        })
    }
}

/// A relay websocket's budget: its relay slot and, behind a proxy, its forwarded client's
/// count.
#[derive(Debug)]
struct RelayHold {
    _permit: OwnedSemaphorePermit,
    _client: Option<PeerGuard>,
}

/// What one accepted connection holds, for as long as its socket lives: its general-pool slot
/// until it upgrades to `/relay`, then a relay slot; and, from an untrusted peer, its count
/// against that peer's limit. The socket owns it (so an upgraded websocket keeps it); the
/// connection's request handling shares it.
#[derive(Debug)]
pub struct Lease {
    peer: SocketAddr,
    via_trusted_proxy: bool,
    eviction: CancellationToken,
    slot: Mutex<Option<Slot>>,
    relay: Mutex<Option<RelayHold>>,
    _peer: Option<PeerGuard>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain ownership cells, each update whole under the lock.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lease {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Cancelled when the pool evicted this connection: it must close.
    pub fn eviction(&self) -> CancellationToken {
        self.eviction.clone()
    }

    fn begin_request(&self) -> Option<Busy> {
        lock(&self.slot).as_ref()?.begin_request()
    }

    /// The connection became a relay websocket: out of the general pool, into the relay
    /// budget for the rest of its life.
    fn upgrade_to_relay(&self, permit: OwnedSemaphorePermit, client: Option<PeerGuard>) {
        *lock(&self.relay) = Some(RelayHold {
            _permit: permit,
            _client: client,
        });
        drop(lock(&self.slot).take());
    }
}

/// Status and body of a refusal.
fn refusal_parts(limit: ConnectionLimit) -> (StatusCode, serde_json::Value) {
    let (status, error) = match limit {
        ConnectionLimit::Total => (
            StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::new(ErrorCode::GatewayConnectionLimit),
        ),
        ConnectionLimit::Relay => (
            StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::with_detail(
                ErrorCode::GatewayConnectionLimit,
                "Every sidecar (relay) connection slot is taken.",
            ),
        ),
        // The client's own doing: 429, so a proxy's outlier detection does not count it
        // against the gateway.
        ConnectionLimit::Peer => (
            StatusCode::TOO_MANY_REQUESTS,
            GatewayError::new(ErrorCode::PeerConnectionLimit),
        ),
    };
    (status, error.to_json())
}

/// A refusal as a response, for a request on a connection that stays open.
pub fn refusal(limit: ConnectionLimit) -> Response {
    let (status, body) = refusal_parts(limit);
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal as the whole HTTP/1.1 answer of a connection refused at accept, which is then
/// closed.
pub fn raw_refusal(limit: ConnectionLimit) -> Vec<u8> {
    let (status, body) = refusal_parts(limit);
    let body = body.to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n\
         cache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// A request for the relay websocket. Only this route upgrades, so only it needs a relay
/// slot, and a `101` can only answer it.
fn is_relay_upgrade<B>(request: &Request<B>) -> bool {
    request.uri().path() == "/relay" && request.headers().contains_key(header::UPGRADE)
}

/// A response body that keeps the request counted (busy slot, forwarded client) until it
/// ends: a streamed response holds its connection as long as it streams.
struct Counted {
    inner: Body,
    _busy: Busy,
    _client: Option<PeerGuard>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one request of a connection through `router`, with its accounting: the slot is
/// busy until the response ends; behind a trusted proxy the forwarded client is counted; a
/// relay upgrade takes a relay slot and moves the connection out of the general pool.
pub(crate) async fn serve_request(
    router: Router,
    lease: Arc<Lease>,
    limits: Arc<ConnectionLimits>,
    mut request: Request<Incoming>,
) -> Response {
    request
        .extensions_mut()
        .insert(ConnectInfo(PeerAddr(lease.peer)));
    let Some(busy) = lease.begin_request() else {
        // Evicted while this head was arriving: the connection is closing.
        let mut response = refusal(ConnectionLimit::Total);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    };
    let client = if lease.via_trusted_proxy {
        let client = client_ip(lease.peer.ip(), request.headers(), &limits.trusted_proxies);
        if is_trusted_proxy(client, &limits.trusted_proxies) {
            None
        } else {
            match limits.peers.try_acquire(ClientKey::of(client)) {
                Some(guard) => Some(guard),
                None => {
                    limits.metrics.connection_rejected(ConnectionLimit::Peer);
                    tracing::info!(%client, "request refused: the forwarded client is at remote_mcp.max_connections_per_peer");
                    return refusal(ConnectionLimit::Peer);
                }
            }
        }
    } else {
        None
    };
    let relay = if is_relay_upgrade(&request) {
        match Arc::clone(&limits.relay).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                limits.metrics.connection_rejected(ConnectionLimit::Relay);
                tracing::warn!("relay upgrade refused: remote_mcp.max_relay_connections reached");
                return refusal(ConnectionLimit::Relay);
            }
        }
    } else {
        None
    };

    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(permit) = relay
    {
        lease.upgrade_to_relay(permit, client);
        return response;
    }
    response.map(|inner| {
        Body::new(Counted {
            inner,
            _busy: busy,
            _client: client,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_peer: usize, trusted: &[&str]) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(
            LimitSettings {
                max_connections: max,
                max_connections_per_peer: per_peer,
                max_relay_connections: 1,
                trusted_proxies: trusted.iter().map(|t| IpNet::parse(t).unwrap()).collect(),
            },
            Arc::new(Metrics::new()),
        )
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_peer_at_its_limit_is_refused_before_it_can_evict_anybody() {
        let limits = limits(2, 1, &[]);
        let other = limits.admit(addr("192.0.2.1:1000")).unwrap();
        let first = limits.admit(addr("192.0.2.2:1000")).unwrap();
        // Same IPv4 address, another port: refused for the peer limit; nothing evicted.
        assert_eq!(
            limits.admit(addr("192.0.2.2:1001")).unwrap_err(),
            ConnectionLimit::Peer
        );
        assert!(!other.eviction().is_cancelled());
        assert!(!first.eviction().is_cancelled());
        // A third address gets in by evicting the longest idle.
        let _third = limits.admit(addr("192.0.2.3:1000")).unwrap();
        assert!(other.eviction().is_cancelled());
    }

    #[test]
    fn trusted_proxies_are_not_capped_at_accept() {
        let limits = limits(10, 1, &["10.0.0.0/8"]);
        let held: Vec<Lease> = (0..5)
            .map(|port| {
                limits
                    .admit(addr(&format!("10.1.2.3:{}", 2000 + port)))
                    .unwrap()
            })
            .collect();
        assert_eq!(held.len(), 5);
        assert!(limits.admit(addr("192.0.2.9:1")).is_ok());
    }

    #[test]
    fn refusals_name_the_gateway_and_say_what_to_do() {
        for (limit, status, code) in [
            (ConnectionLimit::Total, 503, "GATEWAY_CONNECTION_LIMIT"),
            (ConnectionLimit::Relay, 503, "GATEWAY_CONNECTION_LIMIT"),
            (ConnectionLimit::Peer, 429, "PEER_CONNECTION_LIMIT"),
        ] {
            let raw = String::from_utf8(raw_refusal(limit)).unwrap();
            assert!(raw.starts_with(&format!("HTTP/1.1 {status} ")), "{raw}");
            assert!(raw.contains("\r\nretry-after: 1\r\n"), "{raw}");
            assert!(raw.contains("\r\nconnection: close\r\n"), "{raw}");
            let (head, body) = raw.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["retryable"], true);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("gateway"),
                "{body}"
            );
            assert!(!body["error"]["user_action"].as_str().unwrap().is_empty());
            assert!(!raw.contains("sidecar is"), "{raw}");
        }
    }
}
