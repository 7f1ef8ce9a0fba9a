//! The cloud half of the IBKR agent gateway: an MCP server (Streamable HTTP) behind an OAuth
//! 2.1 resource server, relaying each authorized, sanitized tool call over an end-to-end
//! encrypted websocket to the sidecar on the user's own laptop.
//!
//! Map of the crate (one concern per file):
//! - [`config`]: `GatewayConfiguration`, YAML loading and the fail-closed validation.
//! - [`app`]: [`start`] and [`GatewayHandle`]: router assembly, serving, graceful shutdown.
//! - [`oauth`]: JWKS cache, token validation, the bearer middleware, RFC 9728 metadata.
//! - `mcp`: the rmcp `ServerHandler` over the tool catalog.
//! - [`relay`]: `/relay` websocket endpoint, connection driver, session registry, router.
//! - [`pairing`] and `pairing_http`: pairing codes and the SPAKE2 exchange (`/pair/*`).
//! - [`store`]: SQLite state (codes, pairings, handshake timestamps).
//! - [`keys`]: the gateway's static key and instance id in `state_dir`.
//! - [`audit`]: the durable audit trail (SQLite, written off the request path).
//! - [`metrics`]: Prometheus counters for `/metrics`; [`net`]: trusted proxies, client
//!   addresses, Host/Origin rules; `edge`: the `/mcp` layers outside OAuth.
//! - [`listener`]: the connection cap; `http_server`: the HTTP/1.1 loop with its
//!   request-head deadline and graceful shutdown.
//! - [`rate_limit`], [`clock`]: supporting pieces.
//! - [`cli`]: the `ibkr-gateway` command line.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
mod edge;
pub mod error;
mod http_server;
pub mod keys;
pub mod listener;
mod mcp;
pub mod metrics;
pub mod net;
pub mod oauth;
pub mod pairing;
mod pairing_http;
pub mod rate_limit;
pub mod relay;
mod state;
pub mod store;

pub use app::{GatewayHandle, start};
pub use config::{ConfigError, GatewayConfiguration};
pub use error::{GatewayError, StartError};
pub use relay::{
    DropReason, LiveSidecar, RelayWebsocketLimits, SessionEvent, relay_websocket_limits,
};

/// The gateway's version, as reported by `ibkr_health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
