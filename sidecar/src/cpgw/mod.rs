//! The local IBKR Client Portal Gateway (CPGW).
//!
//! - [`client`]: the HTTP client (self-signed certificate accepted on loopback only, no cookie
//!   store, bounded bodies, 10 s timeouts).
//! - [`types`]: typed answers and the paper/live classification.
//! - [`broker_state`]: the sidecar's summary of the CPGW session (`ready`, `login_required`, ...).
//! - [`keepalive`]: tickles the session and reopens the brokerage session when it can, never
//!   logging in.

pub mod broker_state;
pub mod client;
pub mod keepalive;
pub mod types;

pub use broker_state::BrokerState;
pub use client::{CpgwClient, CpgwError};
