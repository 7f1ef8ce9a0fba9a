//! Long-term identities.
//!
//! Single-key design: each side's identity is one x25519 static key pair. The Noise IK
//! handshake authenticates both sides with these keys (`es`, `ss`, `se` DH operations), so a
//! separate signature key would add nothing. The public key is what pairing pins; its
//! fingerprint is what a person compares.

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// How many low-order checks (each one x25519 scalar multiplication) this process has run.
static LOW_ORDER_CHECKS: AtomicU64 = AtomicU64::new(0);

/// How many low-order checks ([`PublicKey::is_low_order`], which [`PublicKey::from_hex`]
/// runs) this process has made so far. A check costs one x25519 scalar multiplication, so
/// the hot paths that read keys back from a store must not move this counter; tests in other
/// crates read it to prove they do not.
pub fn low_order_checks() -> u64 {
    LOW_ORDER_CHECKS.load(Ordering::Relaxed)
}

/// An x25519 public key: a side's long-term identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Lowercase hex, the form used in files, CLI output and logs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters and refuses a low-order point: the constructor for keys from
    /// untrusted input (pairing messages, the handshake, configuration, the command line).
    pub fn from_hex(text: &str) -> Result<Self, IdentityError> {
        let key = Self::parse_hex(text)?;
        if key.is_low_order() {
            return Err(IdentityError::BadPublicKey);
        }
        Ok(key)
    }

    /// Parses 64 hex characters of a key read back from our own store, without the low-order
    /// check (a scalar multiplication) that [`PublicKey::from_hex`] runs.
    ///
    /// Only for stores whose every write takes a key that was validated when it entered the
    /// process (through [`PublicKey::from_hex`], the pairing exchange or the handshake, all of
    /// which refuse low-order points) or that was derived from a secret key (never low-order).
    /// Sound even if a row were corrupted on disk: a stored key is only ever compared for
    /// equality with a key the handshake validated (so an invalid stored key matches nothing)
    /// or handed to the Noise handshake as the peer's key, which refuses a low-order key
    /// before any message is sent. Malformed text (not 64 hex characters) is still refused.
    pub fn from_stored_hex(text: &str) -> Result<Self, IdentityError> {
        Self::parse_hex(text)
    }

    fn parse_hex(text: &str) -> Result<Self, IdentityError> {
        let bytes = hex::decode(text.trim()).map_err(|_| IdentityError::BadPublicKey)?;
        let array: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::BadPublicKey)?;
        Ok(PublicKey(array))
    }

    /// Short, human-comparable fingerprint: the first 10 bytes of SHA-256 over the key with a
    /// domain label, as five groups of four hex digits.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"ibkr-relay/v1 fingerprint");
        hasher.update(self.0);
        let digest = hasher.finalize();
        digest[..10]
            .chunks(2)
            .map(hex::encode)
            .collect::<Vec<_>>()
            .join("-")
    }

    /// True for the points whose DH output is all zeros whatever the secret (non-contributory).
    /// One scalar multiplication, counted by [`low_order_checks`].
    pub fn is_low_order(&self) -> bool {
        LOW_ORDER_CHECKS.fetch_add(1, Ordering::Relaxed);
        let probe = x25519_dalek::StaticSecret::from([7u8; 32]);
        !probe
            .diffie_hellman(&x25519_dalek::PublicKey::from(self.0))
            .was_contributory()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// An x25519 static key pair. The secret half is zeroized on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StaticKeypair {
    secret: [u8; 32],
    #[zeroize(skip)]
    public: PublicKey,
}

impl StaticKeypair {
    /// Generates a fresh key pair from injected entropy.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let keypair = Self::from_secret_bytes(secret);
        secret.zeroize();
        keypair
    }

    /// Rebuilds a key pair from its 32 secret bytes (as stored in a 0600 key file).
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        let static_secret = x25519_dalek::StaticSecret::from(secret);
        let public = PublicKey(x25519_dalek::PublicKey::from(&static_secret).to_bytes());
        StaticKeypair {
            secret: static_secret.to_bytes(),
            public,
        }
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret bytes, for writing the key file and for the Noise handshake.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.secret
    }
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StaticKeypair(public: {}, secret: <redacted>)",
            self.public.to_hex()
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("public key must be 64 hex characters of a valid x25519 point")]
    BadPublicKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_fingerprint_shape() {
        let keypair = StaticKeypair::from_secret_bytes([1u8; 32]);
        let parsed = PublicKey::from_hex(&keypair.public().to_hex()).unwrap();
        assert_eq!(parsed, keypair.public());
        let fingerprint = keypair.public().fingerprint();
        assert_eq!(fingerprint.len(), 24);
        assert_eq!(fingerprint.matches('-').count(), 4);
    }

    #[test]
    fn low_order_points_are_refused() {
        assert!(PublicKey::from_hex(&"00".repeat(32)).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(PublicKey::from_hex(&hex::encode(one)).is_err());
        assert!(PublicKey::from_hex("abcd").is_err());
    }

    #[test]
    fn a_stored_key_is_parsed_without_the_check_and_malformed_text_is_still_refused() {
        let keypair = StaticKeypair::from_secret_bytes([1u8; 32]);
        let stored = PublicKey::from_stored_hex(&keypair.public().to_hex()).unwrap();
        assert_eq!(stored, keypair.public());
        assert!(PublicKey::from_stored_hex("abcd").is_err());
        assert!(PublicKey::from_stored_hex(&"zz".repeat(32)).is_err());
        // The validating path is counted (other tests run in parallel: at least one more).
        let before = low_order_checks();
        assert!(PublicKey::from_hex(&"00".repeat(32)).is_err());
        assert!(low_order_checks() > before);
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let keypair = StaticKeypair::from_secret_bytes([0x42u8; 32]);
        let text = format!("{keypair:?}");
        assert!(!text.contains(&hex::encode([0x42u8; 32])));
        assert!(text.contains("redacted"));
    }
}
