//! Access tokens (RFC 9068): a JWT whose header says `typ: at+jwt`, signed ES256 by the
//! server's [`SigningKey`], carrying `iss`, `sub`, `aud` (the gateway's MCP resource, the one
//! audience RFC 8707 allows here), `client_id`, `scope`, `jti`, `iat`, `nbf` and `exp`.

use super::AuthzError;
use super::signing::{SIGNING_ALGORITHM, SigningKey};
use jsonwebtoken::Header;
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use shared_safety::scope::ScopeSet;
use std::time::Duration;

/// What an access token says.
#[derive(Clone, Debug)]
pub struct AccessToken<'a> {
    pub issuer: &'a str,
    /// The canonical MCP resource URI.
    pub audience: &'a str,
    pub subject: &'a str,
    pub client_id: &'a str,
    pub scopes: &'a ScopeSet,
    /// The laptop's approval this token acts under (claim `ibkr_agent`).
    pub agent: Option<&'a str>,
    /// Unix seconds.
    pub issued_at: i64,
    pub lifetime: Duration,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    client_id: &'a str,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ibkr_agent: Option<&'a str>,
    jti: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// A signed access token and its `jti`.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub jti: String,
}

/// Signs `token` with `key`.
pub fn mint(key: &SigningKey, token: &AccessToken<'_>) -> Result<Minted, AuthzError> {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let jti = hex::encode(id);
    let lifetime = i64::try_from(token.lifetime.as_secs()).unwrap_or(i64::MAX);
    let claims = Claims {
        iss: token.issuer,
        sub: token.subject,
        aud: token.audience,
        client_id: token.client_id,
        scope: token.scopes.to_oauth(),
        ibkr_agent: token.agent,
        jti: &jti,
        iat: token.issued_at,
        nbf: token.issued_at,
        exp: token.issued_at.saturating_add(lifetime),
    };
    let mut header = Header::new(SIGNING_ALGORITHM);
    header.typ = Some("at+jwt".into());
    header.kid = Some(key.kid().to_string());
    let signed = jsonwebtoken::encode(&header, &claims, key.encoding_key())
        .map_err(|error| AuthzError::Signing(error.to_string()))?;
    Ok(Minted { token: signed, jti })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::jwks::JwksCache;
    use crate::oauth::token::{TokenError, TokenValidator, ValidatorSettings};
    use std::sync::Arc;

    const ISSUER: &str = "https://gateway.example";
    const RESOURCE: &str = "https://gateway.example/mcp";

    fn now() -> i64 {
        crate::clock::unix_ms() / 1000
    }

    /// The validator an external issuer gets, reading this key's JWKS in process.
    async fn validator(key: &Arc<SigningKey>) -> TokenValidator {
        let published = Arc::clone(key);
        let jwks = Arc::new(JwksCache::local(move || published.jwks()));
        assert!(jwks.initial_fetch().await);
        TokenValidator::new(
            ValidatorSettings {
                issuer: ISSUER.into(),
                audiences: vec![RESOURCE.into()],
                algorithms: vec![jsonwebtoken::Algorithm::ES256],
                clock_skew_seconds: 0,
                require_typ_at_jwt: true,
                allowed_scopes: vec!["ibkr:health:read".into(), "ibkr:accounts:read".into()],
                agent_claim: true,
            },
            jwks,
        )
    }

    fn token<'a>(scopes: &'a ScopeSet, audience: &'a str, issued_at: i64) -> AccessToken<'a> {
        AccessToken {
            issuer: ISSUER,
            audience,
            subject: "alice",
            client_id: "https://client.example/metadata.json",
            scopes,
            agent: Some("00112233445566778899aabbccddeeff"),
            issued_at,
            lifetime: Duration::from_secs(300),
        }
    }

    #[tokio::test]
    async fn a_minted_token_passes_the_validation_external_tokens_go_through() {
        let key = Arc::new(SigningKey::generate().unwrap().0);
        let validator = validator(&key).await;
        let scopes = ScopeSet::from_list(&["ibkr:health:read", "ibkr:orders:live"]);
        let minted = mint(&key, &token(&scopes, RESOURCE, now())).unwrap();
        let validated = validator.validate(&minted.token).await.unwrap();
        assert_eq!(validated.subject, "alice");
        assert_eq!(validated.jti.as_deref(), Some(minted.jti.as_str()));
        assert_eq!(
            validated.client_id.as_deref(),
            Some("https://client.example/metadata.json")
        );
        // The gateway's own allow-list still narrows what the token says.
        assert_eq!(validated.scopes.to_oauth(), "ibkr:health:read");
    }

    #[tokio::test]
    async fn another_audience_an_expired_token_or_another_key_is_refused() {
        let key = Arc::new(SigningKey::generate().unwrap().0);
        let validator = validator(&key).await;
        let scopes = ScopeSet::from_list(&["ibkr:health:read"]);
        let elsewhere = mint(&key, &token(&scopes, "https://other.example/mcp", now())).unwrap();
        assert_eq!(
            validator.validate(&elsewhere.token).await.err(),
            Some(TokenError::WrongAudience)
        );
        let expired = mint(&key, &token(&scopes, RESOURCE, now() - 3_600)).unwrap();
        assert_eq!(
            validator.validate(&expired.token).await.err(),
            Some(TokenError::Expired)
        );
        let stranger = SigningKey::generate().unwrap().0;
        let forged = mint(&stranger, &token(&scopes, RESOURCE, now())).unwrap();
        assert!(validator.validate(&forged.token).await.is_err());
    }

    #[test]
    fn the_key_is_kept_private_and_reloaded_as_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = SigningKey::load_or_create(dir.path()).unwrap();
        let again = SigningKey::load_or_create(dir.path()).unwrap();
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.jwks(), again.jwks());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(super::super::signing::SIGNING_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The JWKS holds the public half only.
        let published = first.jwks().to_string();
        assert!(published.contains("\"kty\":\"EC\""), "{published}");
        assert!(!published.contains("\"d\""), "{published}");
        // A file that is not a key is refused, not replaced.
        std::fs::write(
            dir.path().join(super::super::signing::SIGNING_KEY_FILE),
            b"not a key",
        )
        .unwrap();
        assert!(matches!(
            SigningKey::load_or_create(dir.path()),
            Err(AuthzError::KeyCorrupt(_))
        ));
    }
}
