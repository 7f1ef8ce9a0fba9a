//! The gateway's own OAuth 2.1 authorization server, where the paired laptop is the
//! authenticator: a person names their user id on the authorization page, the owner of that
//! user's paired laptop approves (typing the page's confirmation code) and may narrow the
//! scopes, and the client gets a code, then tokens. No password exists anywhere. On when no
//! external issuer is configured (`remote_mcp.issuer` left out); off otherwise.
//!
//! A token this server mints is checked by the same code as an external issuer's
//! ([`crate::oauth::token::TokenValidator`]): the validator's key cache reads this server's
//! JWKS document in process ([`crate::oauth::jwks::JwksCache::local`]), through the same JWKS
//! parser that reads a remote one, and the same checks of algorithm, `typ`, issuer, audience,
//! lifetime and scopes follow.
//!
//! - [`routes`]: the HTTP endpoints; [`page`]: the authorization page.
//! - [`approvals`]: requests waiting for the laptop, decisions, revoked agents.
//! - [`registry`]: dynamic registration (stateless, sealed client ids) and client metadata
//!   documents (fetched under SSRF rules).
//! - [`signing`]: the ES256 signing key, kept 0600 in the state directory, and its JWKS.
//! - [`tokens`]: access-token minting.
//! - [`pkce`]: RFC 7636, S256 only.
//! - [`codes`]: authorization codes, single use, bound to client, redirect URI, verifier and
//!   resource.
//! - [`clients`]: client metadata checks and the redirect URI rule.
//! - [`grants`]: the token endpoint's `authorization_code` and `refresh_token` grants.
//! - [`errors`]: the OAuth errors, by the RFCs' names.
//! - [`metadata`]: the RFC 8414 document and the endpoints' paths.

pub mod approvals;
pub mod clients;
pub mod codes;
pub mod errors;
pub mod grants;
pub mod metadata;
pub mod page;
pub mod pkce;
pub mod registry;
pub(crate) mod routes;
pub mod signing;
pub mod tokens;

use std::sync::Arc;

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

/// Everything the endpoints share.
pub struct AuthorizationServer {
    /// The gateway's public base URL: `iss` of every token, `issuer` of the metadata.
    pub issuer: String,
    pub key: Arc<signing::SigningKey>,
    pub clients: registry::ClientRegistry,
    pub desk: Arc<approvals::ApprovalDesk>,
    pub tokens: grants::TokenEndpoint,
}

impl std::fmt::Debug for AuthorizationServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationServer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}
