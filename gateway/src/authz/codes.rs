//! Authorization codes: issued once the laptop's owner approved a request, redeemed once at
//! the token endpoint by the client they were issued to, with the same redirect URI, the
//! PKCE verifier and (if named) the same resource.
//!
//! - A code is 256 random bits; only its SHA-256 is kept.
//! - Any redemption attempt spends the code, successful or not, so a wrong verifier cannot be
//!   retried against it.
//! - A code presented again after it was spent answers `invalid_grant` and names the approval
//!   it came from, so the caller revokes every token issued under it (RFC 6749 section
//!   4.1.2: a code used twice may have been stolen).
//! - Codes live [`CODE_TTL`]; a spent one is remembered [`REUSE_MEMORY`] longer; at most
//!   [`MAX_CODES`] are kept.

use super::errors::{OAuthError, OAuthErrorCode};
use super::pkce::CodeChallenge;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use shared_safety::scope::ScopeSet;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long a code may wait to be redeemed (RFC 6749 recommends at most ten minutes).
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Most codes kept at once.
pub const MAX_CODES: usize = 10_000;
/// How long a spent code is remembered after it expired, to recognise its reuse.
pub const REUSE_MEMORY: Duration = Duration::from_secs(600);

/// What a code grants, fixed when it is issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    /// The authorization request named `redirect_uri` (then the token request must name it
    /// too, RFC 6749 section 4.1.3); false when it was the client's only registered one.
    pub redirect_uri_named: bool,
    pub challenge: CodeChallenge,
    /// The resource the tokens are for (the gateway's MCP URI).
    pub resource: String,
    pub scopes: ScopeSet,
    /// The user who approved it on their laptop.
    pub subject: String,
    /// The approval it came from (what a reuse revokes).
    pub approval_id: String,
}

/// What the client presents at the token endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Redemption<'a> {
    pub code: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: Option<&'a str>,
    pub verifier: Option<&'a str>,
    pub resource: Option<&'a str>,
}

/// Why a redemption failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedeemError {
    /// The answer to give the client.
    Refused(OAuthError),
    /// The code was spent before: refused, and the tokens of this approval must go.
    Reused { approval_id: String },
}

impl RedeemError {
    pub fn oauth(&self) -> OAuthError {
        match self {
            RedeemError::Refused(error) => error.clone(),
            RedeemError::Reused { .. } => OAuthError::new(
                OAuthErrorCode::InvalidGrant,
                "This authorization code was already used; every token issued with it is revoked.",
            ),
        }
    }
}

struct Entry {
    grant: CodeGrant,
    expires: Instant,
    spent: bool,
    /// Presented again after it was spent.
    reused: bool,
}

#[derive(Default)]
pub struct CodeBook {
    codes: Mutex<HashMap<[u8; 32], Entry>>,
    /// Approvals whose tokens must not stand: a code of theirs was presented again, or the
    /// laptop revoked them. Kept [`REUSE_MEMORY`], longer than any of their codes lives.
    dead: Mutex<HashMap<String, Instant>>,
}

/// Most dead approvals remembered.
const MAX_DEAD: usize = 100_000;

impl CodeBook {
    /// Whether tokens of `approval_id` must not stand, even those stored after this was
    /// known (a code reused, or the approval revoked while its code was being redeemed).
    pub fn is_dead(&self, approval_id: &str) -> bool {
        let now = Instant::now();
        self.lock_dead()
            .get(approval_id)
            .is_some_and(|at| now.duration_since(*at) < REUSE_MEMORY)
    }

    /// Ends `approval_id`: its codes no longer redeem and [`CodeBook::is_dead`] says so.
    pub fn kill_approval(&self, approval_id: &str) {
        let now = Instant::now();
        let mut dead = self.lock_dead();
        if dead.len() >= MAX_DEAD {
            dead.retain(|_, at| now.duration_since(*at) < REUSE_MEMORY);
        }
        if dead.len() < MAX_DEAD {
            dead.insert(approval_id.to_string(), now);
        }
    }

    fn lock_dead(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.dead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for CodeBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeBook").finish_non_exhaustive()
    }
}

fn digest(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

fn invalid_grant(description: &str) -> RedeemError {
    RedeemError::Refused(OAuthError::new(OAuthErrorCode::InvalidGrant, description))
}

impl CodeBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // Entries are independent; a panic elsewhere leaves the map usable.
        self.codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new code for `grant`; `None` when [`MAX_CODES`] are waiting.
    pub fn issue(&self, grant: CodeGrant) -> Option<String> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let code = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut codes = self.lock();
        codes.retain(|_, entry| {
            entry.expires > now || (entry.spent && entry.expires + REUSE_MEMORY > now)
        });
        if codes.len() >= MAX_CODES {
            return None;
        }
        codes.insert(
            digest(&code),
            Entry {
                grant,
                expires: now + CODE_TTL,
                spent: false,
                reused: false,
            },
        );
        Some(code)
    }

    /// Redeems a code: every check of RFC 6749 section 4.1.3, RFC 7636 and RFC 8707, and the
    /// code is spent whatever the outcome.
    pub fn redeem(&self, redemption: Redemption<'_>) -> Result<CodeGrant, RedeemError> {
        let now = Instant::now();
        let grant = {
            let mut codes = self.lock();
            let Some(entry) = codes.get_mut(&digest(redemption.code)) else {
                return Err(invalid_grant(
                    "The authorization code is unknown or expired.",
                ));
            };
            if entry.spent {
                entry.reused = true;
                let approval_id = entry.grant.approval_id.clone();
                drop(codes);
                self.kill_approval(&approval_id);
                return Err(RedeemError::Reused { approval_id });
            }
            entry.spent = true;
            if entry.expires <= now {
                return Err(invalid_grant("The authorization code expired."));
            }
            entry.grant.clone()
        };
        if self.is_dead(&grant.approval_id) {
            return Err(invalid_grant(
                "This authorization was revoked on the laptop.",
            ));
        }
        if grant.client_id != redemption.client_id {
            return Err(invalid_grant(
                "The authorization code was issued to another client.",
            ));
        }
        let redirect_ok = match redemption.redirect_uri {
            Some(uri) => uri == grant.redirect_uri,
            None => !grant.redirect_uri_named,
        };
        if !redirect_ok {
            return Err(invalid_grant(
                "redirect_uri must be the one the authorization request named.",
            ));
        }
        let Some(verifier) = redemption.verifier else {
            return Err(RedeemError::Refused(OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "code_verifier is required (PKCE).",
            )));
        };
        if grant.challenge.verify(verifier).is_err() {
            return Err(invalid_grant(
                "The code_verifier does not match the code_challenge.",
            ));
        }
        if let Some(resource) = redemption.resource
            && resource.trim_end_matches('/') != grant.resource.trim_end_matches('/')
        {
            return Err(RedeemError::Refused(OAuthError::new(
                OAuthErrorCode::InvalidTarget,
                "The resource is not the one this authorization was for.",
            )));
        }
        Ok(grant)
    }
}

/// A grant and its PKCE pair, for tests of this module and the token endpoint.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// RFC 7636 appendix B.
    pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    pub const REDIRECT: &str = "http://127.0.0.1:33418/callback";
    pub const RESOURCE: &str = "https://gateway.example/mcp";

    pub fn grant() -> CodeGrant {
        CodeGrant {
            client_id: "client-1".into(),
            redirect_uri: REDIRECT.into(),
            redirect_uri_named: true,
            challenge: CodeChallenge::parse(CHALLENGE, Some("S256")).unwrap(),
            resource: RESOURCE.into(),
            scopes: ScopeSet::from_list(&["ibkr:health:read"]),
            subject: "alice".into(),
            approval_id: "approval-1".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    fn redemption(code: &str) -> Redemption<'_> {
        Redemption {
            code,
            client_id: "client-1",
            redirect_uri: Some(REDIRECT),
            verifier: Some(VERIFIER),
            resource: Some(RESOURCE),
        }
    }

    fn refused_with(result: Result<CodeGrant, RedeemError>) -> &'static str {
        result.unwrap_err().oauth().code.as_str()
    }

    #[test]
    fn a_code_redeems_once_and_its_reuse_names_the_approval_to_revoke() {
        let book = CodeBook::default();
        let code = book.issue(grant()).unwrap();
        assert_eq!(book.redeem(redemption(&code)).unwrap(), grant());
        assert_eq!(
            book.redeem(redemption(&code)),
            Err(RedeemError::Reused {
                approval_id: "approval-1".into()
            })
        );
        assert_eq!(
            refused_with(book.redeem(redemption("made-up"))),
            "invalid_grant"
        );
    }

    /// Makes a right redemption wrong in one way.
    type Spoil = fn(&mut Redemption<'_>);

    #[test]
    fn each_mismatch_is_refused_with_the_rfcs_error_and_spends_the_code() {
        let cases: [(&str, Spoil); 6] = [
            ("invalid_grant", |r| r.client_id = "client-2"),
            ("invalid_grant", |r| {
                r.redirect_uri = Some("http://127.0.0.1:1/other")
            }),
            ("invalid_grant", |r| r.redirect_uri = None),
            ("invalid_grant", |r| {
                r.verifier = Some("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj")
            }),
            ("invalid_request", |r| r.verifier = None),
            ("invalid_target", |r| {
                r.resource = Some("https://other.example/mcp")
            }),
        ];
        for (expected, spoil) in cases {
            let book = CodeBook::default();
            let code = book.issue(grant()).unwrap();
            let mut attempt = redemption(&code);
            spoil(&mut attempt);
            assert_eq!(refused_with(book.redeem(attempt)), expected);
            // The right request afterwards finds the code spent.
            assert!(matches!(
                book.redeem(redemption(&code)),
                Err(RedeemError::Reused { .. })
            ));
        }
        // No resource named: the grant's own applies.
        let book = CodeBook::default();
        let code = book.issue(grant()).unwrap();
        let mut attempt = redemption(&code);
        attempt.resource = None;
        assert!(book.redeem(attempt).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_code_is_refused() {
        let book = CodeBook::default();
        let code = book.issue(grant()).unwrap();
        tokio::time::advance(CODE_TTL + Duration::from_secs(1)).await;
        assert_eq!(
            refused_with(book.redeem(redemption(&code))),
            "invalid_grant"
        );
    }
}
