//! What the gateway and the sidecar must agree on about safety.
//!
//! - [`errors`]: the catalog of stable error codes, each with a message, whether a retry can
//!   help and what the user should do.
//! - [`scope`]: the scope model (token scopes x local pairing scopes).
//! - [`sanitize`]: refusing sensitive material in requests and stripping it from responses.
//! - [`schema`]: validating tool arguments against the catalog's closed JSON schemas.
#![forbid(unsafe_code)]

pub mod errors;
pub mod sanitize;
pub mod schema;
pub mod scope;

pub use errors::ErrorCode;
