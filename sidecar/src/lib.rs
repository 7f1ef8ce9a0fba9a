//! The laptop half of the IBKR agent gateway: the `ibkr-agent` CLI and the sidecar daemon.
//!
//! The sidecar dials out to a paired cloud gateway over an end-to-end encrypted websocket,
//! enforces its own gates on every relayed tool call, calls the local IBKR Client Portal
//! Gateway (CPGW), and answers with sanitized results. It never automates the IBKR login.
//!
//! Map of the crate:
//! - [`cli`]: the `ibkr-agent sidecar ...` commands (documented in `docs/sidecar-cli.md`);
//!   [`daemon`]: [`run_daemon`].
//! - [`primitives`]: the relay primitives behind `sidecar pairing|session|relay ...` (local
//!   pairing records, relay sessions, the gates run on one request), on the daemon's store.
//! - [`config`]: the YAML and programmatic configuration and its fail-closed validation
//!   (`docs/configuration-sidecar.md`).
//! - [`paths`], [`state`]: the state directory and the SQLite state store (identity metadata,
//!   pairing records, relay sessions, the handshake anti-replay clock).
//! - [`identity`]: the key file and identity creation; [`secret_file`]: key files and
//!   checkpoints written whole; [`pairing_client`]: the pairing exchange.
//! - [`relay`]: dial, handshake, connection driver, backoff, reconnect loop.
//! - [`gates`]: the per-request checks, shared by the daemon and `relay accept`;
//!   [`requests`]: one call from envelope to outcome.
//! - [`cpgw`]: the Client Portal client, broker state and keep-alive; [`tools`]: one file per tool.
//! - [`console`]: the owner's console, a loopback web page the daemon serves
//!   (`sidecar console`; docs/console.md).
//! - [`doctor`]: `sidecar doctor`, the ordered readiness checklist with a fix per failure.
//! - [`owner`]: the owner's decisions from the command line (settling an unknown order
//!   outcome, approving or denying an order), handed to the running daemon through the state
//!   store; [`approvals`]: orders waiting for the owner's approval, and their send once
//!   approved.
//! - [`service`]: `sidecar service install|uninstall|status`, the daemon as a systemd user unit
//!   or a launchd agent.
//! - [`net`]: the URL policy (plain text only to loopback); [`error`]: [`SidecarError`];
//!   [`clock`]: wall-clock helpers for the store.
#![forbid(unsafe_code)]

pub mod agents;
pub mod alerts;
pub mod approvals;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod context;
pub mod cpgw;
pub mod daemon;
pub mod doctor;
pub mod error;
pub mod gates;
pub mod identity;
pub mod market_clock;
pub mod net;
pub mod owner;
pub mod pairing_client;
pub mod paths;
pub mod primitives;
pub mod relay;
pub mod requests;
pub mod secret_file;
pub mod service;
pub mod session;
pub mod state;
pub mod tools;
pub mod trading;

pub use config::SidecarConfig;
pub use daemon::{DaemonError, DaemonOptions, run_daemon};
pub use error::SidecarError;
pub use identity::create_identity;
pub use pairing_client::pair;
pub use relay::relay_websocket_config;
pub use state::{IdentityRecord, PairingRecord, RelaySessionRecord, StateStore, TradingPause};
