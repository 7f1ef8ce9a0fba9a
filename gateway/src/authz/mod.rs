//! The gateway's own OAuth 2.1 authorization server, its core so far: the signing key and the
//! JWKS it publishes, the RFC 9068 access tokens it mints, PKCE, client metadata, single-use
//! authorization codes and the token endpoint's grants with rotating refresh tokens. It is not
//! served yet: no endpoint reaches it.
//!
//! A token this server mints is checked by the same code as an external issuer's
//! ([`crate::oauth::token::TokenValidator`]): the validator's key cache reads this server's
//! JWKS document in process ([`crate::oauth::jwks::JwksCache::local`]), through the same JWKS
//! parser that reads a remote one, and the same checks of algorithm, `typ`, issuer, audience,
//! lifetime and scopes follow.
//!
//! - [`signing`]: the ES256 signing key, kept 0600 in the state directory, and its JWKS.
//! - [`tokens`]: access-token minting.
//! - [`pkce`]: RFC 7636, S256 only.
//! - [`codes`]: authorization codes, single use, bound to client, redirect URI, verifier and
//!   resource.
//! - [`clients`]: client metadata (dynamic registration or a metadata document) and the
//!   redirect URI rule.
//! - [`grants`]: the token endpoint's `authorization_code` and `refresh_token` grants.
//! - [`errors`]: the OAuth errors, by the RFCs' names.
//! - [`metadata`]: the RFC 8414 document and the endpoints' paths.

pub mod clients;
pub mod codes;
pub mod errors;
pub mod grants;
pub mod metadata;
pub mod pkce;
pub mod signing;
pub mod tokens;

/// Why the authorization server could not do its part.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("the signing key could not be generated")]
    KeyGeneration,
    #[error("the signing key file {0} is not a valid key")]
    KeyCorrupt(String),
    #[error("the signing key file: {0}")]
    KeyFile(#[from] crate::store::keys::KeyError),
    #[error("a token could not be signed: {0}")]
    Signing(String),
}
