//! Proof Key for Code Exchange (RFC 7636), S256 only, as OAuth 2.1 requires of every client:
//! `plain` is refused, and so is a request that names no method (RFC 7636 would default it to
//! `plain`, which would let a client switch PKCE off by leaving a parameter out).

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The one method accepted.
pub const METHOD_S256: &str = "S256";

/// A code challenge as the authorization request sent it, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeChallenge(String);

/// Why a challenge or verifier was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PkceError {
    #[error("code_challenge_method must be S256")]
    MethodNotS256,
    #[error("code_challenge must be 43 base64url characters (the SHA-256 of the verifier)")]
    MalformedChallenge,
    #[error("code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~")]
    MalformedVerifier,
    #[error("code_verifier does not match the code_challenge")]
    Mismatch,
}

impl CodeChallenge {
    /// `method` is the request's `code_challenge_method` (absent is refused).
    pub fn parse(challenge: &str, method: Option<&str>) -> Result<CodeChallenge, PkceError> {
        if method != Some(METHOD_S256) {
            return Err(PkceError::MethodNotS256);
        }
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(challenge)
            .map_err(|_| PkceError::MalformedChallenge)?;
        if decoded.len() != 32 || challenge.len() != 43 {
            return Err(PkceError::MalformedChallenge);
        }
        Ok(CodeChallenge(challenge.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `verifier` is the one this challenge was made from (compared in constant time).
    pub fn verify(&self, verifier: &str) -> Result<(), PkceError> {
        let well_formed = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !well_formed {
            return Err(PkceError::MalformedVerifier);
        }
        let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        if bool::from(computed.as_bytes().ct_eq(self.0.as_bytes())) {
            Ok(())
        } else {
            Err(PkceError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 appendix B.
    const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn the_rfc_example_verifies_and_nothing_else_does() {
        let challenge = CodeChallenge::parse(RFC_CHALLENGE, Some("S256")).unwrap();
        assert_eq!(challenge.verify(RFC_VERIFIER), Ok(()));
        let mut other = RFC_VERIFIER.to_string();
        other.replace_range(0..1, "e");
        assert_eq!(challenge.verify(&other), Err(PkceError::Mismatch));
        assert_eq!(challenge.verify("short"), Err(PkceError::MalformedVerifier));
        assert_eq!(
            challenge.verify(&format!("{RFC_VERIFIER} ")),
            Err(PkceError::MalformedVerifier)
        );
    }

    #[test]
    fn plain_a_missing_method_or_a_malformed_challenge_is_refused() {
        for method in [None, Some("plain"), Some("s256")] {
            assert_eq!(
                CodeChallenge::parse(RFC_CHALLENGE, method),
                Err(PkceError::MethodNotS256),
                "{method:?}"
            );
        }
        for challenge in [
            "",
            "abc",
            &RFC_CHALLENGE[..42],
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c+",
        ] {
            assert_eq!(
                CodeChallenge::parse(challenge, Some("S256")),
                Err(PkceError::MalformedChallenge),
                "{challenge}"
            );
        }
    }
}
