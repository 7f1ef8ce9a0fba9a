//! The HTTP edge: the accept loop and its connection caps, the HTTP/1.1 server with its
//! request-head deadline, client addresses behind trusted proxies, Host/Origin rules, the
//! `/mcp` layers outside OAuth, and per-peer rate limits.

pub mod edge;
pub mod listener;
pub mod net;
pub mod rate_limit;
pub(crate) mod server;
