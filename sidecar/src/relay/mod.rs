//! The relay client: the sidecar dials out to the gateway (laptops sit behind NAT), runs the
//! Noise IK handshake on the pinned keys, then carries encrypted frames until the connection
//! ends, and reconnects with backoff.
//!
//! - [`dial`]: URL policy, websocket limits and the outbound connection.
//! - [`handshake`]: message 1 / message 2 over the websocket, with a deadline.

//! - [`connection`]: the per-connection driver (records, heartbeat, renewal, requests).
//! - [`backoff`]: full-jitter exponential backoff (pure).
//! - [`supervisor`]: the reconnect loop.

pub mod backoff;
pub mod connection;
pub mod dial;
pub mod handshake;

pub mod supervisor;

pub use dial::relay_websocket_config;
