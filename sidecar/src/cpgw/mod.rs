//! The local IBKR Client Portal Gateway (CPGW).
//!
//! - [`client`]: the HTTP client (self-signed certificate accepted on loopback only, no cookie
//!   store, bounded bodies, 10 s timeouts).
//! - [`types`]: typed answers and the paper/live classification.
//! - [`broker_state`]: the sidecar's summary of the CPGW session (`ready`, `login_required`, ...).
//! - [`marketdata`]: symbol -> conid cache, snapshot quotes (warm-up retry, price prefixes).
//! - [`portfolio`]: selected account, account summary, positions (paged).
//! - [`orders`]: placing, confirming, cancelling; order status, the orders list, trades.
//! - [`quote_cache`]: snapshot quotes shared between the read tools' calls (one request in
//!   flight per conid, answers reused for `sidecar.quote_max_age_ms`).
//! - [`pacer`]: IBKR's pacing limits, applied to every request, with a lane kept free for
//!   trading.
//! - [`keepalive`]: tickles the session and reopens the brokerage session when it can, never
//!   logging in.

pub mod broker_state;
pub mod client;
pub mod keepalive;
pub mod marketdata;
pub mod orders;
pub mod pacer;
pub mod portfolio;
pub mod quote_cache;
pub mod types;

pub use broker_state::BrokerState;
pub use client::{CpgwClient, CpgwError};
pub use marketdata::{ConidCache, Contract};
pub use portfolio::AccountCache;
pub use quote_cache::QuoteCache;

use protocol::envelope::ManualAction;
use shared_safety::ErrorCode;

/// The manual action for a CPGW without an authenticated session. `location` is
/// `scheme://host:port` of the configured CPGW.
pub fn manual_login_action(location: &str) -> ManualAction {
    ManualAction {
        code: ErrorCode::BrokerSessionRequired.code().to_string(),
        message: ErrorCode::BrokerSessionRequired.message().to_string(),
        action:
            "Log in to the IBKR Client Portal Gateway in a browser (with 2FA). Nothing logs in \
                 for you."
                .to_string(),
        location: format!("{location} on the laptop running the sidecar"),
    }
}
