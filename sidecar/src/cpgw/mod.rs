//! The local IBKR Client Portal Gateway (CPGW).
//!
//! - [`client`]: the HTTP client (self-signed certificate accepted on loopback only, no cookie
//!   store, bounded bodies, 10 s timeouts).
//! - [`types`]: typed answers and the paper/live classification.
//! - [`broker_state`]: the sidecar's summary of the CPGW session (`ready`, `login_required`, ...).
//! - [`marketdata`]: symbol -> conid cache, snapshot quotes (warm-up retry, price prefixes).
//! - [`portfolio`]: selected account, account summary, positions (paged).
//! - [`keepalive`]: tickles the session and reopens the brokerage session when it can, never
//!   logging in.

pub mod broker_state;
pub mod client;
pub mod keepalive;
pub mod marketdata;
pub mod orders;
pub mod portfolio;
pub mod types;

pub use broker_state::BrokerState;
pub use client::{CpgwClient, CpgwError};
pub use marketdata::{ConidCache, Contract};
pub use portfolio::AccountCache;
