//! Access-token validation (RFC 9068 style JWTs).
//!
//! The algorithm comes from the configured allow-list, never from the token alone: the
//! header's `alg` must be on the list and the selected key must be of that algorithm's family
//! (and curve). `iss` is compared exactly, `aud` must name one of the configured audiences
//! (by default only the canonical resource URI), `exp` and `sub` are required, `nbf` is
//! honoured, all with the configured skew. The header's `typ` must be `at+jwt` or
//! `application/at+jwt` (RFC 9068 section 4; compared case-insensitively, RFC 7515 section
//! 4.1.9) unless `remote_mcp.require_typ_at_jwt` is off, so that another JWT of the same issuer
//! and audience (an OpenID Connect ID token, say) is not taken for an access token. Every
//! failure is reported to the client as the same `AUTH_INVALID_TOKEN` (no oracle); the precise
//! reason is only logged at debug level.

use crate::oauth::jwks::{JwksCache, VerificationKey};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use shared_safety::scope::ScopeSet;
use std::sync::Arc;

/// Longest token accepted (far above any real access token; bounds the work per request).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Longest `sub` accepted: it becomes the pairing `user_id`, a bounded protocol string.
pub const MAX_SUBJECT_BYTES: usize = protocol::limits::MAX_SHORT_STRING;

/// What a valid token tells the gateway. Holds no part of the token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedToken {
    pub subject: String,
    /// Granted scopes, already intersected with `remote_mcp.allowed_scopes`.
    pub scopes: ScopeSet,
    /// The `jti` claim, used only to derive the audit HMAC.
    pub jti: Option<String>,
    pub client_id: Option<String>,
    /// The laptop's approval behind a token of the built-in authorization server (its
    /// `ibkr_agent` claim); always `None` for an external issuer's token.
    pub agent: Option<protocol::agents::ApprovalId>,
}

/// Why a token was refused (logged, never shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token malformed")]
    Malformed,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("token type is not at+jwt")]
    WrongType,
    #[error("no signing key matches")]
    NoMatchingKey,
    #[error("signature invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("required claim missing or invalid")]
    MissingClaim,
}

#[derive(Clone, Debug)]
pub struct ValidatorSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew_seconds: u64,
    /// Refuse tokens whose header `typ` is not `at+jwt` / `application/at+jwt`.
    pub require_typ_at_jwt: bool,
    pub allowed_scopes: Vec<String>,
    /// Require and read the `ibkr_agent` claim: only for tokens of the gateway's own
    /// authorization server (an external issuer's claim of that name means nothing here).
    pub agent_claim: bool,
}

pub struct TokenValidator {
    settings: ValidatorSettings,
    jwks: Arc<JwksCache>,
}

impl std::fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenValidator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn candidate_keys<'a>(
    keys: &'a [VerificationKey],
    kid: Option<&str>,
    alg: Algorithm,
) -> Vec<&'a VerificationKey> {
    keys.iter()
        .filter(|key| match kid {
            // With a kid: only that key (a token cannot shop for a key).
            Some(kid) => key.kid.as_deref() == Some(kid),
            // Without: every key usable for the algorithm.
            None => true,
        })
        .filter(|key| key.accepts(alg))
        .collect()
}

fn claim_strings(value: &serde_json::Value) -> Option<Vec<String>> {
    match value {
        serde_json::Value::String(text) => {
            Some(text.split_whitespace().map(str::to_string).collect())
        }
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// The first segment decoded, to look for header parameters jsonwebtoken ignores.
fn header_has_crit(token: &str) -> Result<bool, TokenError> {
    let segment = token.split('.').next().ok_or(TokenError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)?;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    let object = header.as_object().ok_or(TokenError::Malformed)?;
    Ok(object.contains_key("crit"))
}

impl TokenValidator {
    pub fn new(settings: ValidatorSettings, jwks: Arc<JwksCache>) -> TokenValidator {
        TokenValidator { settings, jwks }
    }

    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    pub fn settings(&self) -> &ValidatorSettings {
        &self.settings
    }

    pub async fn validate(&self, token: &str) -> Result<ValidatedToken, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        // RFC 7515: a "crit" header we do not understand must make the token invalid.
        if header_has_crit(token)? {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let alg = header.alg;
        if !self.settings.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        if self.settings.require_typ_at_jwt {
            let typ_ok = header.typ.as_deref().is_some_and(|typ| {
                typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
            });
            if !typ_ok {
                return Err(TokenError::WrongType);
            }
        }

        let mut keys = self.jwks.keys().await;
        if candidate_keys(&keys, header.kid.as_deref(), alg).is_empty() {
            // Possibly a rotation: refresh once (single flight, cooldown) and look again.
            keys = self.jwks.refresh_for_unknown_kid().await;
        }
        let candidates = candidate_keys(&keys, header.kid.as_deref(), alg);
        if candidates.is_empty() {
            return Err(TokenError::NoMatchingKey);
        }

        let mut validation = Validation::new(alg);
        validation.leeway = self.settings.clock_skew_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[self.settings.issuer.as_str()]);
        validation.set_audience(&self.settings.audiences);

        let mut last_error = TokenError::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(data) => return self.extract(&data.claims),
                Err(error) => {
                    let mapped = match error.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                        ErrorKind::InvalidAudience => TokenError::WrongAudience,
                        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidSubject => {
                            TokenError::MissingClaim
                        }
                        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                            TokenError::AlgorithmNotAllowed
                        }
                        _ => TokenError::Malformed,
                    };
                    // Claims are only checked after a good signature, so anything but a bad
                    // signature is final; a bad signature means "try the next key".
                    if mapped != TokenError::BadSignature {
                        return Err(mapped);
                    }
                    last_error = mapped;
                }
            }
        }
        Err(last_error)
    }

    fn extract(&self, claims: &serde_json::Value) -> Result<ValidatedToken, TokenError> {
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .filter(|sub| {
                !sub.is_empty()
                    && sub.len() <= MAX_SUBJECT_BYTES
                    && !sub.chars().any(char::is_control)
            })
            .ok_or(TokenError::MissingClaim)?
            .to_string();
        let granted = match (claims.get("scope"), claims.get("scp")) {
            (Some(scope), _) => claim_strings(scope).ok_or(TokenError::MissingClaim)?,
            (None, Some(scp)) => claim_strings(scp).ok_or(TokenError::MissingClaim)?,
            (None, None) => Vec::new(),
        };
        let allowed: Vec<&String> = granted
            .iter()
            .filter(|scope| self.settings.allowed_scopes.contains(scope))
            .collect();
        let jti = claims
            .get("jti")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        let client_id = claims
            .get("client_id")
            .or_else(|| claims.get("azp"))
            .and_then(serde_json::Value::as_str)
            .filter(|id| id.len() <= protocol::agents::MAX_CLIENT_URI)
            .map(str::to_string);
        // Every token of the built-in server names its approval: one without it is refused, so
        // no call of that server's tokens reaches the laptop without its approval named.
        let agent = if self.settings.agent_claim {
            Some(
                claims
                    .get("ibkr_agent")
                    .and_then(serde_json::Value::as_str)
                    .and_then(protocol::agents::ApprovalId::from_hex)
                    .ok_or(TokenError::MissingClaim)?,
            )
        } else {
            None
        };
        Ok(ValidatedToken {
            subject,
            scopes: ScopeSet::from_list(&allowed),
            jti,
            client_id,
            agent,
        })
    }
}
