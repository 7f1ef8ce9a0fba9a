//! The authorization server's signing key: ECDSA P-256 (ES256), generated once by aws-lc-rs
//! and kept as PKCS#8 in `state_dir/authz_signing.key` (0600), and the JWKS that publishes its
//! public half. The key id is the key's RFC 7638 thumbprint, so it names the key, not a
//! moment.

use super::AuthzError;
use crate::store::keys::{read_private_file, write_private_file_new};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use std::path::Path;
use zeroize::Zeroizing;

/// The signing key's file in the state directory.
pub const SIGNING_KEY_FILE: &str = "authz_signing.key";

/// The one algorithm this server signs with.
pub const SIGNING_ALGORITHM: Algorithm = Algorithm::ES256;

pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key, with its PKCS#8 document (to keep).
    pub fn generate() -> Result<(SigningKey, Zeroizing<Vec<u8>>), AuthzError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let document = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(|_| AuthzError::KeyGeneration)?;
        let pkcs8 = Zeroizing::new(document.as_ref().to_vec());
        let key = SigningKey::from_pkcs8(&pkcs8).ok_or(AuthzError::KeyGeneration)?;
        Ok((key, pkcs8))
    }

    /// The key in a PKCS#8 document; `None` when it is not a P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Option<SigningKey> {
        // Parsed by aws-lc-rs first: jsonwebtoken takes any bytes and fails only when signing.
        aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
        )
        .ok()?;
        let encoding = EncodingKey::from_ec_der(pkcs8);
        let mut jwk = Jwk::from_encoding_key(&encoding, SIGNING_ALGORITHM).ok()?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).ok()?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Some(SigningKey { kid, encoding, jwk })
    }

    /// The key in `state_dir`, created (0600) the first time.
    pub fn load_or_create(state_dir: &Path) -> Result<SigningKey, AuthzError> {
        crate::store::ensure_state_dir(state_dir).map_err(|source| {
            crate::store::keys::KeyError::Io {
                path: state_dir.display().to_string(),
                source,
            }
        })?;
        let path = state_dir.join(SIGNING_KEY_FILE);
        if let Some(pkcs8) = read_private_file(&path)? {
            return SigningKey::from_pkcs8(&pkcs8)
                .ok_or_else(|| AuthzError::KeyCorrupt(path.display().to_string()));
        }
        let (key, pkcs8) = SigningKey::generate()?;
        match write_private_file_new(&path, &pkcs8) {
            Ok(()) => Ok(key),
            // Another process created it first: use that one.
            Err(crate::store::keys::KeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                let pkcs8 = read_private_file(&path)?
                    .ok_or_else(|| AuthzError::KeyCorrupt(path.display().to_string()))?;
                SigningKey::from_pkcs8(&pkcs8)
                    .ok_or_else(|| AuthzError::KeyCorrupt(path.display().to_string()))
            }
            Err(other) => Err(other.into()),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The JWKS document that publishes the public half.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::to_value(JwkSet {
            keys: vec![self.jwk.clone()],
        })
        .unwrap_or_else(|_| serde_json::json!({"keys": []}))
    }
}
