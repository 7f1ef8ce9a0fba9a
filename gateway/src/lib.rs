//! The cloud half of the IBKR agent gateway: an MCP server (Streamable HTTP) behind an OAuth
//! 2.1 resource server, relaying each authorized, sanitized tool call over an end-to-end
//! encrypted websocket to the sidecar on the user's own laptop.
//!
//! Map of the crate, by concern:
//! - [`config`]: `GatewayConfiguration`, YAML loading and the fail-closed validation.
//! - [`app`]: [`start`] and [`GatewayHandle`]: router assembly, serving, graceful shutdown.
//! - [`http`]: the edge: accept loop and connection caps, the HTTP/1.1 server, client
//!   addresses behind trusted proxies, Host/Origin rules, per-peer rate limits.
//! - [`oauth`]: JWKS cache, token validation, the bearer middleware, RFC 9728 metadata.
//! - `mcp`: the rmcp `ServerHandler` over the tool catalog.
//! - [`relay`]: `/relay` websocket endpoint, connection driver, session registry, router.
//! - [`pairing`]: pairing codes and the SPAKE2 exchange behind `/pair/*`.
//! - [`store`]: durable state (codes, pairings, handshake timestamps) and the gateway's keys.
//! - [`audit`]: the durable audit trail, written off the request path.
//! - [`ops`]: Prometheus metrics.
//! - [`cli`]: the `ibkr-gateway` command line; [`clock`], [`error`]: supporting pieces.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
mod mcp;
pub mod oauth;
pub mod ops;
pub mod pairing;
pub mod relay;
mod state;
pub mod store;

pub use app::{GatewayHandle, start, start_on_shared_store};
pub use config::{ConfigError, GatewayConfiguration};
pub use error::{GatewayError, StartError};
pub use relay::{
    DropReason, LiveSidecar, RelayWebsocketLimits, SessionEvent, relay_websocket_limits,
};

/// The gateway's version, as reported by `ibkr_health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
