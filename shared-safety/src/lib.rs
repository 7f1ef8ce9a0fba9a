//! What the gateway and the sidecar must agree on about safety.
//!
//! - [`errors`]: the catalog of stable error codes, each with a message, whether a retry can
//!   help and what the user should do.
//! - [`scope`]: the scope model (token scopes x local pairing scopes).
//! - [`sanitize`]: refusing sensitive material in requests and stripping it from responses.
//! - [`schema`]: validating tool arguments against the catalog's closed JSON schemas.
//! - [`money`]: exact decimal money and quantities (never `f64`): parsing tool arguments and
//!   CPGW amount/price strings, printing normalized decimal strings.
//! - [`calendar`]: NYSE regular trading hours, holidays and early closes, shipped as data
//!   (`data/nyse_calendar.txt`), with US Eastern time computed without a tz database.
//! - [`guards`]: the order guards as one pure function ([`guards::check_order`]) run in a
//!   documented order ([`guards::GUARD_ORDER`]), plus order fingerprints and deterministic
//!   IBKR client order ids.
//!
//! Everything here is pure: no I/O, no clock (the time is passed in), no randomness.
#![forbid(unsafe_code)]

pub mod calendar;
pub mod errors;
pub mod guards;
pub mod money;
pub mod sanitize;
pub mod schema;
pub mod scope;

pub use errors::ErrorCode;
