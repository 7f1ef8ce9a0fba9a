//! The token endpoint's two grants, without HTTP: `authorization_code` (a code the owner's
//! approval produced, redeemed with PKCE) and `refresh_token` (rotated on every use). Each
//! answers an access token (RFC 9068, [`super::tokens`]) and a new refresh token, or the OAuth
//! error the RFCs name.
//!
//! - A reused authorization code revokes every refresh token of its approval, including one
//!   the first redemption stores after the reuse was seen; so does the laptop's revocation
//!   of the approval while its code is being redeemed. Both also refuse the approval's
//!   access tokens ([`super::approvals::ApprovalDesk::is_revoked`]).
//! - A refresh token is spent by any use; presenting a spent one revokes its family
//!   ([`crate::store::Store::use_refresh_token`]). A refresh token presented by another
//!   client than its own is refused (and spent, so the family ends at its owner's next use).

use super::codes::{CodeBook, RedeemError, Redemption};
use super::errors::{OAuthError, OAuthErrorCode};
use super::signing::SigningKey;
use super::tokens::{AccessToken, mint};
use crate::clock::unix_ms;
use crate::store::{NewRefreshToken, RefreshSuccessor, RefreshUse, Store};
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared_safety::scope::ScopeSet;
use std::sync::Arc;
use std::time::Duration;

/// How long an access token is good for.
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// How long a refresh token is good for, unused.
pub const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// The token endpoint's form (`application/x-www-form-urlencoded`), the fields read.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub client_id: Option<String>,
    pub refresh_token: Option<String>,
    pub resource: Option<String>,
}

/// The successful answer (RFC 6749 section 5.1).
#[derive(Clone, Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub scope: String,
}

/// Everything the token endpoint needs.
pub struct TokenEndpoint {
    pub key: Arc<SigningKey>,
    pub codes: Arc<CodeBook>,
    pub store: Store,
    /// The gateway's public base URL (`iss`).
    pub issuer: String,
    /// The gateway's MCP resource URI (`aud`).
    pub resource: String,
}

fn invalid_request(description: &str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidRequest, description)
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidGrant, description)
}

fn unavailable() -> OAuthError {
    OAuthError::new(
        OAuthErrorCode::TemporarilyUnavailable,
        "The authorization server's store did not answer; try again.",
    )
}

fn new_refresh_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let digest = Sha256::digest(token.as_bytes()).into();
    (token, digest)
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl TokenEndpoint {
    pub async fn exchange(&self, form: &TokenForm) -> Result<TokenResponse, OAuthError> {
        let Some(client_id) = form.client_id.as_deref() else {
            return Err(invalid_request("client_id is required."));
        };
        match form.grant_type.as_deref() {
            Some("authorization_code") => self.redeem_code(form, client_id).await,
            Some("refresh_token") => self.refresh(form, client_id).await,
            Some(_) => Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                "Only authorization_code and refresh_token are supported.",
            )),
            None => Err(invalid_request("grant_type is required.")),
        }
    }

    async fn redeem_code(
        &self,
        form: &TokenForm,
        client_id: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let Some(code) = form.code.as_deref() else {
            return Err(invalid_request("code is required."));
        };
        let redeemed = self.codes.redeem(Redemption {
            code,
            client_id,
            redirect_uri: form.redirect_uri.as_deref(),
            verifier: form.code_verifier.as_deref(),
            resource: form.resource.as_deref(),
        });
        let grant = match redeemed {
            Ok(grant) => grant,
            Err(error) => {
                if let RedeemError::Reused { approval_id } = &error {
                    self.revoke_approval(approval_id).await;
                }
                return Err(error.oauth());
            }
        };
        let now = unix_ms();
        let (refresh_token, digest) = new_refresh_token();
        let mut family = [0u8; 16];
        OsRng.fill_bytes(&mut family);
        self.store
            .insert_refresh_token(NewRefreshToken {
                digest,
                family_id: hex::encode(family),
                client_id: grant.client_id.clone(),
                subject: grant.subject.clone(),
                scopes: grant.scopes.to_oauth(),
                resource: grant.resource.clone(),
                approval_id: grant.approval_id.clone(),
                created_at_ms: now,
                expires_at_ms: now.saturating_add(ms(REFRESH_TOKEN_LIFETIME)),
            })
            .await
            .map_err(|_| unavailable())?;
        // The code may have been presented again, or the laptop may have revoked the
        // approval, while the token was being stored.
        if self.codes.is_dead(&grant.approval_id) {
            self.revoke_approval(&grant.approval_id).await;
            return Err(invalid_grant(
                "This authorization was revoked (its code was used twice, or the laptop's owner revoked it).",
            ));
        }
        self.answer(
            &grant.subject,
            client_id,
            &grant.scopes,
            &grant.approval_id,
            refresh_token,
            now,
        )
    }

    async fn refresh(
        &self,
        form: &TokenForm,
        client_id: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let Some(presented) = form.refresh_token.as_deref() else {
            return Err(invalid_request("refresh_token is required."));
        };
        let now = unix_ms();
        let (refresh_token, successor) = new_refresh_token();
        let used = self
            .spend(
                presented,
                now,
                RefreshSuccessor {
                    digest: successor,
                    expires_at_ms: now.saturating_add(ms(REFRESH_TOKEN_LIFETIME)),
                },
            )
            .await?;
        let grant = match used {
            RefreshUse::Rotated(grant) => grant,
            RefreshUse::Reused { .. } => {
                return Err(invalid_grant(
                    "This refresh token was already used; every token of its family is revoked.",
                ));
            }
            RefreshUse::Revoked => return Err(invalid_grant("This refresh token was revoked.")),
            RefreshUse::Expired => return Err(invalid_grant("This refresh token expired.")),
            RefreshUse::Unknown => return Err(invalid_grant("This refresh token is unknown.")),
        };
        if grant.client_id != client_id {
            return Err(invalid_grant(
                "This refresh token was issued to another client.",
            ));
        }
        if let Some(resource) = form.resource.as_deref()
            && resource.trim_end_matches('/') != grant.resource.trim_end_matches('/')
        {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidTarget,
                "The resource is not the one this authorization was for.",
            ));
        }
        let scopes = ScopeSet::from_list(&grant.scopes.split_whitespace().collect::<Vec<_>>());
        self.answer(
            &grant.subject,
            client_id,
            &scopes,
            &grant.approval_id,
            refresh_token,
            now,
        )
    }

    fn answer(
        &self,
        subject: &str,
        client_id: &str,
        scopes: &ScopeSet,
        approval_id: &str,
        refresh_token: String,
        now_ms: i64,
    ) -> Result<TokenResponse, OAuthError> {
        let minted = mint(
            &self.key,
            &AccessToken {
                issuer: &self.issuer,
                audience: &self.resource,
                subject,
                client_id,
                scopes,
                agent: Some(approval_id),
                issued_at: now_ms / 1000,
                lifetime: ACCESS_TOKEN_LIFETIME,
            },
        )
        .map_err(|_| unavailable())?;
        Ok(TokenResponse {
            access_token: minted.token,
            token_type: "Bearer",
            expires_in: ACCESS_TOKEN_LIFETIME.as_secs(),
            refresh_token,
            scope: scopes.to_oauth(),
        })
    }

    /// RFC 7009 for a refresh token: spends it and answers the grant it belonged to (whose
    /// family the caller then revokes), or `None` for a token that is unknown, spent, expired
    /// or revoked already.
    pub async fn spend_refresh_token(
        &self,
        presented: &str,
    ) -> Result<Option<crate::store::RefreshGrant>, OAuthError> {
        let now = unix_ms();
        // The successor is stored with the spend and revoked with the family right after.
        let (_, successor) = new_refresh_token();
        let used = self
            .spend(
                presented,
                now,
                RefreshSuccessor {
                    digest: successor,
                    expires_at_ms: now,
                },
            )
            .await?;
        Ok(match used {
            RefreshUse::Rotated(grant) => Some(grant),
            _ => None,
        })
    }

    /// Spends the refresh token `presented`, storing `successor` in its place if it rotates.
    async fn spend(
        &self,
        presented: &str,
        now: i64,
        successor: RefreshSuccessor,
    ) -> Result<RefreshUse, OAuthError> {
        self.store
            .use_refresh_token(Sha256::digest(presented.as_bytes()).into(), now, successor)
            .await
            .map_err(|_| unavailable())
    }

    async fn revoke_approval(&self, approval_id: &str) {
        if let Err(error) = self
            .store
            .revoke_refresh_tokens_of_approval(approval_id.to_string(), None, unix_ms())
            .await
        {
            tracing::error!(%error, "could not revoke the refresh tokens of a reused authorization code");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::codes::test_support::{REDIRECT, RESOURCE, VERIFIER, grant};

    struct Fixture {
        endpoint: TokenEndpoint,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Fixture {
            endpoint: TokenEndpoint {
                key: Arc::new(SigningKey::generate().unwrap().0),
                codes: Arc::new(CodeBook::default()),
                store,
                issuer: "https://gateway.example".into(),
                resource: RESOURCE.into(),
            },
            _dir: dir,
        }
    }

    fn code(endpoint: &TokenEndpoint) -> String {
        endpoint.codes.issue(grant()).unwrap()
    }

    fn code_form(code: &str) -> TokenForm {
        TokenForm {
            grant_type: Some("authorization_code".into()),
            code: Some(code.into()),
            redirect_uri: Some(REDIRECT.into()),
            code_verifier: Some(VERIFIER.into()),
            client_id: Some("client-1".into()),
            resource: Some(RESOURCE.into()),
            ..TokenForm::default()
        }
    }

    fn refresh_form(token: &str) -> TokenForm {
        TokenForm {
            grant_type: Some("refresh_token".into()),
            refresh_token: Some(token.into()),
            client_id: Some("client-1".into()),
            ..TokenForm::default()
        }
    }

    async fn refused(endpoint: &TokenEndpoint, form: &TokenForm) -> &'static str {
        endpoint.exchange(form).await.unwrap_err().code.as_str()
    }

    #[tokio::test]
    async fn a_code_gives_tokens_and_refresh_tokens_rotate() {
        let fixture = fixture();
        let endpoint = &fixture.endpoint;
        let first = endpoint
            .exchange(&code_form(&code(endpoint)))
            .await
            .unwrap();
        assert_eq!(first.token_type, "Bearer");
        assert_eq!(first.scope, "ibkr:health:read");
        let second = endpoint
            .exchange(&refresh_form(&first.refresh_token))
            .await
            .unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        let third = endpoint
            .exchange(&refresh_form(&second.refresh_token))
            .await
            .unwrap();
        assert_eq!(third.scope, "ibkr:health:read");
    }

    #[tokio::test]
    async fn each_bad_code_request_gets_the_rfcs_error() {
        let fixture = fixture();
        let endpoint = &fixture.endpoint;
        let mut wrong_verifier = code_form(&code(endpoint));
        wrong_verifier.code_verifier = Some(format!("{}x", &VERIFIER[..42]));
        assert_eq!(refused(endpoint, &wrong_verifier).await, "invalid_grant");
        let mut elsewhere = code_form(&code(endpoint));
        elsewhere.redirect_uri = Some("http://127.0.0.1:33418/other".into());
        assert_eq!(refused(endpoint, &elsewhere).await, "invalid_grant");
        let mut other_resource = code_form(&code(endpoint));
        other_resource.resource = Some("https://other.example/mcp".into());
        assert_eq!(refused(endpoint, &other_resource).await, "invalid_target");
        let mut no_client = code_form(&code(endpoint));
        no_client.client_id = None;
        assert_eq!(refused(endpoint, &no_client).await, "invalid_request");
        let mut password = code_form(&code(endpoint));
        password.grant_type = Some("password".into());
        assert_eq!(refused(endpoint, &password).await, "unsupported_grant_type");
    }

    #[tokio::test]
    async fn a_reused_code_revokes_the_tokens_it_gave() {
        let fixture = fixture();
        let endpoint = &fixture.endpoint;
        let code = code(endpoint);
        let tokens = endpoint.exchange(&code_form(&code)).await.unwrap();
        assert_eq!(refused(endpoint, &code_form(&code)).await, "invalid_grant");
        assert_eq!(
            refused(endpoint, &refresh_form(&tokens.refresh_token)).await,
            "invalid_grant"
        );
    }

    #[tokio::test]
    async fn a_reused_refresh_token_ends_its_family_and_another_client_cannot_use_one() {
        let fixture = fixture();
        let endpoint = &fixture.endpoint;
        let first = endpoint
            .exchange(&code_form(&code(endpoint)))
            .await
            .unwrap();
        let rotated = endpoint
            .exchange(&refresh_form(&first.refresh_token))
            .await
            .unwrap();
        // The old token again (a stolen copy): refused, and the rotated one dies with it.
        assert_eq!(
            refused(endpoint, &refresh_form(&first.refresh_token)).await,
            "invalid_grant"
        );
        assert_eq!(
            refused(endpoint, &refresh_form(&rotated.refresh_token)).await,
            "invalid_grant"
        );

        let tokens = endpoint
            .exchange(&code_form(&code(endpoint)))
            .await
            .unwrap();
        let mut thief = refresh_form(&tokens.refresh_token);
        thief.client_id = Some("client-2".into());
        assert_eq!(refused(endpoint, &thief).await, "invalid_grant");
        let mut other_resource = refresh_form("whatever");
        other_resource.resource = Some("https://other.example/mcp".into());
        assert_eq!(refused(endpoint, &other_resource).await, "invalid_grant");
    }
}
