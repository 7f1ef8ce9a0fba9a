//! The OAuth 2.1 resource server: the gateway validates bearer tokens minted by an external
//! authorization server and never issues tokens itself.
//!
//! - [`jwks`]: the signing-key cache (fetch, TTL and unknown-`kid` refresh, single flight).
//! - [`token`]: JWT validation into a [`token::ValidatedToken`].
//! - [`middleware`]: the axum layer in front of `/mcp` (401/403/429 challenges, scope step-up).
//! - [`metadata`]: RFC 9728 protected-resource metadata.
//! - [`session_binding`]: MCP sessions bound to the subject that created them.
//! - [`shared_sessions`]: those sessions in the shared store, so every replica serves them.

pub mod jwks;
pub mod metadata;
pub mod middleware;
pub mod session_binding;
pub mod shared_sessions;
pub mod token;

pub use middleware::AuthContext;
