//! The HTTP edge: the accept loop, the connection limits (per client address, the general
//! pool with eviction, the relay budget), the HTTP/1.1 server with its first-byte and
//! request-head deadlines, client addresses behind trusted proxies, Host/Origin rules, the
//! `/mcp` layers outside OAuth, and per-peer rate limits.

pub mod edge;
pub mod limits;
pub mod listener;
pub mod net;
pub mod peer_limit;
pub mod pool;
pub mod rate_limit;
pub(crate) mod server;
