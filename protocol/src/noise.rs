//! snow glue: a crypto resolver whose randomness is injected by the caller and whose DH
//! refuses non-contributory (low-order) results.

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use std::sync::Mutex;
use zeroize::Zeroizing;

pub(crate) const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_SHA256";

/// Prologue bound into the Noise transcript: protocol label and version.
pub(crate) fn prologue() -> Vec<u8> {
    prologue_for(crate::PROTOCOL_VERSION)
}

/// The prologue a peer of `version` binds (older versions differ only in the number).
pub(crate) fn prologue_for(version: u16) -> Vec<u8> {
    let mut prologue = crate::PROTOCOL_LABEL.as_bytes().to_vec();
    prologue.extend_from_slice(&version.to_be_bytes());
    prologue
}

/// Yields exactly the 32 bytes of ephemeral key material the caller injected, once.
struct InjectedRandom {
    bytes: Zeroizing<[u8; 32]>,
    used: bool,
}

impl Random for InjectedRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        if self.used || dest.len() != self.bytes.len() {
            return Err(snow::Error::Rng);
        }
        dest.copy_from_slice(&self.bytes[..]);
        self.used = true;
        Ok(())
    }
}

/// x25519 that fails on an all-zero shared secret (a low-order peer point), so a peer cannot
/// force a predictable key.
struct ContributoryDh(Box<dyn Dh>);

impl Dh for ContributoryDh {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn pub_len(&self) -> usize {
        self.0.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.0.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.0.set(privkey)
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.0.generate(rng)
    }
    fn pubkey(&self) -> &[u8] {
        self.0.pubkey()
    }
    fn privkey(&self) -> &[u8] {
        self.0.privkey()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        if pubkey.len() < 32 {
            return Err(snow::Error::Dh);
        }
        self.0.dh(pubkey, out)?;
        let length = self.dh_len().min(out.len());
        if out[..length].iter().all(|byte| *byte == 0) {
            return Err(snow::Error::Dh);
        }
        Ok(())
    }
    fn dh_len(&self) -> usize {
        self.0.dh_len()
    }
}

pub(crate) struct RelayResolver {
    ephemeral: Mutex<Option<Zeroizing<[u8; 32]>>>,
}

impl RelayResolver {
    pub(crate) fn new(ephemeral: [u8; 32]) -> Self {
        RelayResolver {
            ephemeral: Mutex::new(Some(Zeroizing::new(ephemeral))),
        }
    }
}

impl CryptoResolver for RelayResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let bytes = self.ephemeral.lock().ok()?.take()?;
        Some(Box::new(InjectedRandom { bytes, used: false }))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver
            .resolve_dh(choice)
            .map(|dh| Box::new(ContributoryDh(dh)) as Box<dyn Dh>)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}
