//! One-time pairing: a single-use, short-lived code authenticates an exchange of long-term
//! public keys through SPAKE2 (a PAKE), with explicit key confirmation in both directions.
//!
//! An eavesdropper or an active attacker learns nothing that lets it test codes offline; an
//! active attacker gets one online guess per exchange, and the gateway limits exchanges per
//! code. (An HMAC of the keys under the short code would fall to an offline brute force.)
//!
//! ```text
//! code     = "<code id>-<secret>"  e.g. "K7QM-3XW9-PT4R"  (id: 4 chars, secret: 8 chars, base32)
//! sidecar -> gateway  PairStart       { version, code_id, pake_a }
//! gateway -> sidecar  PairStartReply  { exchange_id, pake_b, E_g }      (E_g: fresh x25519 key)
//!   both: K = SPAKE2(secret; id_a = "ibkr-relay/v1 sidecar", id_b = "ibkr-relay/v1 gateway")
//!         T = SHA-256("ibkr-relay/v1 pairing" || u16be(version) || lp(code_id) || lp(pake_a)
//!                     || lp(pake_b) || E_g)
//!         (kc_s, kc_g, ks_s, ks_g) = HKDF-SHA256(ikm = K, salt = T, info = label || role)
//! sidecar -> gateway  PairFinish      { exchange_id, sealed_s = AEAD(ks_s, SidecarInfo; ad = T),
//!                                       confirm_s = HMAC(kc_s, T || H(sealed_s)),
//!                                       possession = HMAC(kp, T || S_s || H(sealed_s)) }
//!         kp = HKDF-SHA256(ikm = X25519(s_s, E_g), salt = T, info = "... pairing possession")
//! gateway -> sidecar  PairFinishReply { sealed_g = AEAD(ks_g, GatewayInfo; ad = T),
//!                                       confirm_g = HMAC(kc_g, T || H(sealed_s) || H(sealed_g)) }
//! ```
//! `lp(x)` is `u32be(len(x)) || x`. A wrong code shows up as a failed confirmation on the
//! gateway and never reveals which side was wrong.
//!
//! **Proof of possession.** The code proves the sidecar is the person the operator meant; it
//! does not prove that the static key `S_s` the sidecar registers is its own. Without more, a
//! holder of an ordinary code for their own subject could register someone else's public key
//! (public keys are printed, not secret). So the sidecar also proves it holds the secret `s_s`:
//! only its holder can compute `X25519(s_s, E_g)` for the gateway's fresh ephemeral key, and
//! the proof is bound to this exchange's transcript, so it cannot be replayed into another.

use crate::PROTOCOL_VERSION;
use crate::identity::{PublicKey, StaticKeypair};
use crate::limits::MAX_SHORT_STRING;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::fmt;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Crockford base32 without I, L, O, U: unambiguous when read aloud or typed.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_ID_LEN: usize = 4;
const CODE_SECRET_LEN: usize = 8;

/// A pairing code: a public lookup id and a secret the PAKE runs on.
#[derive(Clone, Zeroize)]
pub struct PairingCode {
    code_id: String,
    secret: String,
}

impl Drop for PairingCode {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairingCode({}-<redacted>)", self.code_id)
    }
}

impl PairingCode {
    /// A fresh code: 20 bits of id and 40 bits of secret from injected entropy.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut draw = |length: usize| -> String {
            (0..length)
                .map(|_| CODE_ALPHABET[(rng.next_u32() % 32) as usize] as char)
                .collect()
        };
        let code_id = draw(CODE_ID_LEN);
        let secret = draw(CODE_SECRET_LEN);
        PairingCode { code_id, secret }
    }

    /// Parses what a person typed: case-insensitive, dashes and spaces ignored, the usual
    /// look-alikes (O->0, I/L->1) folded.
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        let mut normalized = Zeroizing::new(String::with_capacity(CODE_ID_LEN + CODE_SECRET_LEN));
        for ch in text.chars() {
            let ch = match ch.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            };
            if !CODE_ALPHABET.contains(&(ch as u8)) || !ch.is_ascii() {
                return Err(PairingError::MalformedCode);
            }
            normalized.push(ch);
        }
        if normalized.len() != CODE_ID_LEN + CODE_SECRET_LEN {
            return Err(PairingError::MalformedCode);
        }
        Ok(PairingCode {
            code_id: normalized[..CODE_ID_LEN].to_string(),
            secret: normalized[CODE_ID_LEN..].to_string(),
        })
    }

    pub fn code_id(&self) -> &str {
        &self.code_id
    }

    /// The whole code as shown to the operator, e.g. `K7QM-3XW9-PT4R`.
    pub fn display(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{}-{}-{}",
            self.code_id,
            &self.secret[..4],
            &self.secret[4..]
        ))
    }

    /// The secret the PAKE runs on. SPAKE2 needs it on both sides, so the gateway's store keeps
    /// it only while the code is live (short TTL, single use, limited attempts) and erases it
    /// when the code is used, expires or runs out of attempts.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// A code with `code_id` and a fresh random secret: the gateway answers a start for an id
    /// that is not live with a PAKE under a decoy, so a live id and a dead one look the same
    /// until a finish fails. `None` when `code_id` is not of the code alphabet.
    pub fn decoy(code_id: &str, rng: &mut impl CryptoRngCore) -> Option<Self> {
        if !Self::is_code_id(code_id) {
            return None;
        }
        let secret = Self::generate(rng).secret.clone();
        Some(PairingCode {
            code_id: code_id.to_string(),
            secret,
        })
    }

    /// Whether `code_id` has the shape of a code id (length and alphabet).
    pub fn is_code_id(code_id: &str) -> bool {
        code_id.len() == CODE_ID_LEN && code_id.bytes().all(|b| CODE_ALPHABET.contains(&b))
    }

    /// Rebuilds a code from its stored parts (gateway side).
    pub fn from_parts(code_id: &str, secret: &str) -> Result<Self, PairingError> {
        Self::parse(&format!("{code_id}{secret}"))
    }
}

/// What the sidecar tells the gateway about itself (sealed under the PAKE key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarInfo {
    pub static_public: PublicKey,
    pub sidecar_id: String,
    pub display_name: String,
}

/// What the gateway tells the sidecar (sealed under the PAKE key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub static_public: PublicKey,
    pub instance_id: String,
    /// The OAuth subject this pairing serves. The sidecar pins it and refuses a gateway whose
    /// handshake names another.
    pub user_id: String,
    /// The gateway's id for this pairing; the handshake names it too.
    pub pairing_id: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStart {
    pub protocol_version: u16,
    pub code_id: String,
    pub pake: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStartReply {
    pub exchange_id: [u8; 16],
    pub pake: Vec<u8>,
    /// A fresh x25519 key for this exchange: the sidecar proves possession of its static key
    /// with a DH against it.
    pub gateway_ephemeral: PublicKey,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairFinish {
    pub exchange_id: [u8; 16],
    pub sealed_info: Vec<u8>,
    pub confirmation: [u8; 32],
    /// Proof that the sender holds the secret of the static key in `sealed_info`.
    pub possession: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairFinishReply {
    pub sealed_info: Vec<u8>,
    pub confirmation: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    #[error("pairing code is malformed")]
    MalformedCode,
    #[error("pairing message is malformed")]
    MalformedMessage,
    #[error("peer uses protocol version {0}, expected {PROTOCOL_VERSION}")]
    VersionMismatch(u16),
    /// The key confirmation failed: the two sides did not use the same code (or a message was
    /// tampered with). Deliberately does not say which.
    #[error("pairing confirmation failed")]
    ConfirmationFailed,
    #[error("pairing info field empty or too long")]
    BadField,
    /// The sidecar did not prove it holds the secret of the key it registered.
    #[error("pairing proof of key possession failed")]
    PossessionFailed,
}

struct SessionKeys {
    transcript: [u8; 32],
    confirm_sidecar: Zeroizing<[u8; 32]>,
    confirm_gateway: Zeroizing<[u8; 32]>,
    seal_sidecar: Zeroizing<[u8; 32]>,
    seal_gateway: Zeroizing<[u8; 32]>,
}

fn length_prefixed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u32).to_be_bytes());
    hasher.update(bytes);
}

fn derive_keys(
    shared: &[u8],
    code_id: &str,
    pake_a: &[u8],
    pake_b: &[u8],
    gateway_ephemeral: &PublicKey,
) -> Result<SessionKeys, PairingError> {
    let mut hasher = Sha256::new();
    hasher.update(b"ibkr-relay/v1 pairing");
    hasher.update(PROTOCOL_VERSION.to_be_bytes());
    length_prefixed(&mut hasher, code_id.as_bytes());
    length_prefixed(&mut hasher, pake_a);
    length_prefixed(&mut hasher, pake_b);
    hasher.update(gateway_ephemeral.0);
    let transcript: [u8; 32] = hasher.finalize().into();
    let hkdf = Hkdf::<Sha256>::new(Some(&transcript), shared);
    let expand = |info: &str| -> Result<Zeroizing<[u8; 32]>, PairingError> {
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf.expand(
            format!("ibkr-relay/v1 pairing {info}").as_bytes(),
            &mut key[..],
        )
        .map_err(|_| PairingError::MalformedMessage)?;
        Ok(key)
    };
    Ok(SessionKeys {
        transcript,
        confirm_sidecar: expand("sidecar confirm")?,
        confirm_gateway: expand("gateway confirm")?,
        seal_sidecar: expand("sidecar seal")?,
        seal_gateway: expand("gateway seal")?,
    })
}

fn spake_identities() -> (Identity, Identity) {
    (
        Identity::new(b"ibkr-relay/v1 sidecar"),
        Identity::new(b"ibkr-relay/v1 gateway"),
    )
}

fn seal(key: &[u8; 32], transcript: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, PairingError> {
    // Each seal key is used exactly once, so the all-zero nonce is safe.
    ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: plaintext,
                aad: transcript,
            },
        )
        .map_err(|_| PairingError::MalformedMessage)
}

fn open(
    key: &[u8; 32],
    transcript: &[u8; 32],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, PairingError> {
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(
            &Nonce::default(),
            Payload {
                msg: sealed,
                aad: transcript,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| PairingError::ConfirmationFailed)
}

fn confirmation(
    key: &[u8; 32],
    transcript: &[u8; 32],
    parts: &[&[u8]],
) -> Result<[u8; 32], PairingError> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| PairingError::MalformedMessage)?;
    mac.update(transcript);
    for part in parts {
        mac.update(&Sha256::digest(part));
    }
    Ok(mac.finalize().into_bytes().into())
}

/// `HMAC(kp, T || S_s || H(sealed_s))` with `kp` derived from the static-ephemeral DH output.
/// A non-contributory DH (a low-order point on either side) never yields a proof.
fn possession_proof(
    dh: &x25519_dalek::SharedSecret,
    transcript: &[u8; 32],
    static_public: &PublicKey,
    sealed_sidecar: &[u8],
) -> Result<[u8; 32], PairingError> {
    if !dh.was_contributory() {
        return Err(PairingError::PossessionFailed);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(transcript), dh.as_bytes())
        .expand(b"ibkr-relay/v1 pairing possession", &mut key[..])
        .map_err(|_| PairingError::PossessionFailed)?;
    confirmation(&key, transcript, &[&static_public.0, sealed_sidecar])
}

fn check_field(text: &str) -> Result<(), PairingError> {
    if text.is_empty() || text.len() > MAX_SHORT_STRING || text.chars().any(char::is_control) {
        return Err(PairingError::BadField);
    }
    Ok(())
}

fn check_sidecar_info(info: &SidecarInfo) -> Result<(), PairingError> {
    check_field(&info.sidecar_id)?;
    check_field(&info.display_name)?;
    if info.static_public.is_low_order() {
        return Err(PairingError::BadField);
    }
    Ok(())
}

fn check_gateway_info(info: &GatewayInfo) -> Result<(), PairingError> {
    check_field(&info.instance_id)?;
    check_field(&info.user_id)?;
    if info.static_public.is_low_order() {
        return Err(PairingError::BadField);
    }
    Ok(())
}

/// Sidecar side, after sending [`PairStart`].
pub struct SidecarPairing {
    spake: Spake2<Ed25519Group>,
    code_id: String,
    pake_a: Vec<u8>,
}

/// Sidecar side, after sending [`PairFinish`].
pub struct SidecarAwaitingConfirmation {
    keys: SessionKeys,
    sealed_sidecar: Vec<u8>,
}

impl SidecarPairing {
    pub fn start(code: &PairingCode, rng: &mut impl CryptoRngCore) -> (SidecarPairing, PairStart) {
        let (id_a, id_b) = spake_identities();
        let (spake, pake_a) = Spake2::<Ed25519Group>::start_a_with_rng(
            &Password::new(code.secret.as_bytes()),
            &id_a,
            &id_b,
            rng,
        );
        let start = PairStart {
            protocol_version: PROTOCOL_VERSION,
            code_id: code.code_id.clone(),
            pake: pake_a.clone(),
        };
        (
            SidecarPairing {
                spake,
                code_id: code.code_id.clone(),
                pake_a,
            },
            start,
        )
    }

    /// Answers the gateway's reply. `local` is the sidecar's static key pair: its public half
    /// must be the one `info` registers, and its secret proves possession.
    pub fn finish(
        self,
        reply: &PairStartReply,
        info: &SidecarInfo,
        local: &StaticKeypair,
    ) -> Result<(SidecarAwaitingConfirmation, PairFinish), PairingError> {
        if info.static_public != local.public() {
            return Err(PairingError::BadField);
        }
        self.finish_unchecked(reply, info, local)
    }

    /// `finish` without the check that `info` registers `local`'s key: what a hostile client
    /// can send, for tests of the gateway's proof check (feature `hostile-peer`).
    #[cfg(any(test, feature = "hostile-peer"))]
    pub fn finish_claiming(
        self,
        reply: &PairStartReply,
        info: &SidecarInfo,
        local: &StaticKeypair,
    ) -> Result<(SidecarAwaitingConfirmation, PairFinish), PairingError> {
        self.finish_unchecked(reply, info, local)
    }

    fn finish_unchecked(
        self,
        reply: &PairStartReply,
        info: &SidecarInfo,
        local: &StaticKeypair,
    ) -> Result<(SidecarAwaitingConfirmation, PairFinish), PairingError> {
        check_sidecar_info(info)?;
        if reply.gateway_ephemeral.is_low_order() {
            return Err(PairingError::MalformedMessage);
        }
        let shared = Zeroizing::new(
            self.spake
                .finish(&reply.pake)
                .map_err(|_| PairingError::MalformedMessage)?,
        );
        let keys = derive_keys(
            &shared,
            &self.code_id,
            &self.pake_a,
            &reply.pake,
            &reply.gateway_ephemeral,
        )?;
        let plaintext =
            Zeroizing::new(postcard::to_stdvec(info).map_err(|_| PairingError::MalformedMessage)?);
        let sealed_info = seal(&keys.seal_sidecar, &keys.transcript, &plaintext)?;
        let confirmation = confirmation(&keys.confirm_sidecar, &keys.transcript, &[&sealed_info])?;
        let dh = x25519_dalek::StaticSecret::from(*local.secret_bytes())
            .diffie_hellman(&x25519_dalek::PublicKey::from(reply.gateway_ephemeral.0));
        let possession =
            possession_proof(&dh, &keys.transcript, &info.static_public, &sealed_info)?;
        Ok((
            SidecarAwaitingConfirmation {
                keys,
                sealed_sidecar: sealed_info.clone(),
            },
            PairFinish {
                exchange_id: reply.exchange_id,
                sealed_info,
                confirmation,
                possession,
            },
        ))
    }
}

impl SidecarAwaitingConfirmation {
    /// Verifies the gateway's confirmation and returns what it told us to pin.
    pub fn complete(self, reply: &PairFinishReply) -> Result<GatewayInfo, PairingError> {
        let expected = confirmation(
            &self.keys.confirm_gateway,
            &self.keys.transcript,
            &[&self.sealed_sidecar, &reply.sealed_info],
        )?;
        if !bool::from(expected.ct_eq(&reply.confirmation)) {
            return Err(PairingError::ConfirmationFailed);
        }
        let plaintext = open(
            &self.keys.seal_gateway,
            &self.keys.transcript,
            &reply.sealed_info,
        )?;
        let info: GatewayInfo =
            postcard::from_bytes(&plaintext).map_err(|_| PairingError::MalformedMessage)?;
        check_gateway_info(&info)?;
        Ok(info)
    }
}

/// Gateway side, after answering [`PairStart`].
pub struct GatewayPairing {
    keys: SessionKeys,
    /// The exchange's ephemeral secret (zeroized on drop by x25519-dalek).
    ephemeral: x25519_dalek::StaticSecret,
}

/// The ChaCha20 keystream under a 32-byte seed, as a random source: the same seed gives the
/// same bytes (what [`GatewayPairing::respond_from_seed`] needs), and without the seed they
/// cannot be told from random.
struct SeedStream(chacha20::ChaCha20);

impl SeedStream {
    fn new(seed: &[u8; 32]) -> SeedStream {
        use chacha20::cipher::KeyIvInit;
        SeedStream(chacha20::ChaCha20::new(seed.into(), &[0u8; 12].into()))
    }
}

impl rand_core::RngCore for SeedStream {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        use chacha20::cipher::StreamCipher;
        dest.fill(0);
        self.0.apply_keystream(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for SeedStream {}

/// Gateway side, after the sidecar proved it knows the code.
pub struct VerifiedPairing {
    keys: SessionKeys,
    sealed_sidecar: Vec<u8>,
    pub sidecar: SidecarInfo,
}

impl GatewayPairing {
    /// Answers a [`PairStart`] for a code the caller looked up by `start.code_id`.
    pub fn respond(
        code: &PairingCode,
        start: &PairStart,
        exchange_id: [u8; 16],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(GatewayPairing, PairStartReply), PairingError> {
        if start.protocol_version != PROTOCOL_VERSION {
            return Err(PairingError::VersionMismatch(start.protocol_version));
        }
        if start.code_id != code.code_id {
            return Err(PairingError::MalformedMessage);
        }
        let mut ephemeral_bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut ephemeral_bytes[..]);
        let (id_a, id_b) = spake_identities();
        let (spake, pake_b) = Spake2::<Ed25519Group>::start_b_with_rng(
            &Password::new(code.secret.as_bytes()),
            &id_a,
            &id_b,
            rng,
        );
        let ephemeral = x25519_dalek::StaticSecret::from(*ephemeral_bytes);
        let gateway_ephemeral = PublicKey(x25519_dalek::PublicKey::from(&ephemeral).to_bytes());
        let shared = Zeroizing::new(
            spake
                .finish(&start.pake)
                .map_err(|_| PairingError::MalformedMessage)?,
        );
        let keys = derive_keys(
            &shared,
            &code.code_id,
            &start.pake,
            &pake_b,
            &gateway_ephemeral,
        )?;
        Ok((
            GatewayPairing { keys, ephemeral },
            PairStartReply {
                exchange_id,
                pake: pake_b,
                gateway_ephemeral,
            },
        ))
    }

    /// [`GatewayPairing::respond`] with every random value drawn from `seed`: the same seed
    /// and start give the same half again. The gateway keeps the seed with the exchange (not
    /// the half itself), so whichever replica receives the finish rebuilds the half that
    /// answered the start. The seed is as secret as the code.
    pub fn respond_from_seed(
        code: &PairingCode,
        start: &PairStart,
        exchange_id: [u8; 16],
        seed: &[u8; 32],
    ) -> Result<(GatewayPairing, PairStartReply), PairingError> {
        let mut rng = SeedStream::new(seed);
        GatewayPairing::respond(code, start, exchange_id, &mut rng)
    }

    /// Checks the sidecar's confirmation, then its proof of possession of the static key it
    /// registers. `ConfirmationFailed` means a wrong code; `PossessionFailed` a sender that
    /// knows the code but not the secret of the key it names.
    pub fn verify(self, finish: &PairFinish) -> Result<VerifiedPairing, PairingError> {
        let expected = confirmation(
            &self.keys.confirm_sidecar,
            &self.keys.transcript,
            &[&finish.sealed_info],
        )?;
        if !bool::from(expected.ct_eq(&finish.confirmation)) {
            return Err(PairingError::ConfirmationFailed);
        }
        let plaintext = open(
            &self.keys.seal_sidecar,
            &self.keys.transcript,
            &finish.sealed_info,
        )?;
        let sidecar: SidecarInfo =
            postcard::from_bytes(&plaintext).map_err(|_| PairingError::MalformedMessage)?;
        check_sidecar_info(&sidecar)?;
        let dh = self
            .ephemeral
            .diffie_hellman(&x25519_dalek::PublicKey::from(sidecar.static_public.0));
        let expected = possession_proof(
            &dh,
            &self.keys.transcript,
            &sidecar.static_public,
            &finish.sealed_info,
        )?;
        if !bool::from(expected.ct_eq(&finish.possession)) {
            return Err(PairingError::PossessionFailed);
        }
        Ok(VerifiedPairing {
            keys: self.keys,
            sealed_sidecar: finish.sealed_info.clone(),
            sidecar,
        })
    }
}

impl VerifiedPairing {
    /// Seals the gateway's info and confirms. The caller persists the pairing first.
    pub fn reply(self, info: &GatewayInfo) -> Result<PairFinishReply, PairingError> {
        check_gateway_info(info)?;
        let plaintext =
            Zeroizing::new(postcard::to_stdvec(info).map_err(|_| PairingError::MalformedMessage)?);
        let sealed_info = seal(&self.keys.seal_gateway, &self.keys.transcript, &plaintext)?;
        let confirmation = confirmation(
            &self.keys.confirm_gateway,
            &self.keys.transcript,
            &[&self.sealed_sidecar, &sealed_info],
        )?;
        Ok(PairFinishReply {
            sealed_info,
            confirmation,
        })
    }
}

/// Encodes any pairing message for the HTTP body (postcard).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, PairingError> {
    postcard::to_stdvec(message).map_err(|_| PairingError::MalformedMessage)
}

/// Decodes a pairing message, bounded in size.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, PairingError> {
    if bytes.len() > crate::limits::MAX_HANDSHAKE_MESSAGE {
        return Err(PairingError::MalformedMessage);
    }
    postcard::from_bytes(bytes).map_err(|_| PairingError::MalformedMessage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::StaticKeypair;

    /// A deterministic RNG for test vectors (ChaCha-free: a counter hashed with SHA-256).
    pub(crate) struct TestRng(u64);
    impl rand_core::RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            let mut b = [0u8; 4];
            self.fill_bytes(&mut b);
            u32::from_le_bytes(b)
        }
        fn next_u64(&mut self) -> u64 {
            let mut b = [0u8; 8];
            self.fill_bytes(&mut b);
            u64::from_le_bytes(b)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(32) {
                self.0 += 1;
                let block = Sha256::digest(self.0.to_le_bytes());
                chunk.copy_from_slice(&block[..chunk.len()]);
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for TestRng {}

    fn sidecar_key() -> StaticKeypair {
        StaticKeypair::from_secret_bytes([1; 32])
    }

    fn sidecar_info() -> SidecarInfo {
        SidecarInfo {
            static_public: sidecar_key().public(),
            sidecar_id: "sidecar-example".into(),
            display_name: "laptop".into(),
        }
    }
    fn gateway_info() -> GatewayInfo {
        GatewayInfo {
            static_public: StaticKeypair::from_secret_bytes([2; 32]).public(),
            instance_id: "remote-1".into(),
            user_id: "local-user".into(),
            pairing_id: [5; 16],
        }
    }

    struct Transcript {
        start: PairStart,
        start_reply: PairStartReply,
        finish: PairFinish,
        finish_reply: PairFinishReply,
    }

    fn exchange(
        sidecar_code: &PairingCode,
        gateway_code: &PairingCode,
    ) -> Result<(Transcript, GatewayInfo, SidecarInfo), PairingError> {
        let mut sidecar_rng = TestRng(100);
        let mut gateway_rng = TestRng(200);
        let (sidecar, start) = SidecarPairing::start(sidecar_code, &mut sidecar_rng);
        let (gateway, start_reply) =
            GatewayPairing::respond(gateway_code, &start, [7; 16], &mut gateway_rng)?;
        let (awaiting, finish) = sidecar.finish(&start_reply, &sidecar_info(), &sidecar_key())?;
        let verified = gateway.verify(&finish)?;
        let seen_sidecar = verified.sidecar.clone();
        let finish_reply = verified.reply(&gateway_info())?;
        let seen_gateway = awaiting.complete(&finish_reply)?;
        Ok((
            Transcript {
                start,
                start_reply,
                finish,
                finish_reply,
            },
            seen_gateway,
            seen_sidecar,
        ))
    }

    #[test]
    fn same_code_pairs_and_exchanges_keys() {
        let code = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let (_, gateway, sidecar) = exchange(&code, &code).unwrap();
        assert_eq!(gateway, gateway_info());
        assert_eq!(sidecar, sidecar_info());
    }

    #[test]
    fn wrong_code_fails_confirmation_on_the_gateway() {
        let right = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let wrong = PairingCode::parse("K7QM-3XW9-PT4S").unwrap();
        assert_eq!(
            exchange(&wrong, &right).err(),
            Some(PairingError::ConfirmationFailed)
        );
    }

    #[test]
    fn a_half_rebuilt_from_its_seed_checks_the_finish_the_first_half_answered() {
        let code = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let mut rng = TestRng(3);
        let (sidecar, start) = SidecarPairing::start(&code, &mut rng);
        let seed = [9u8; 32];
        let (_, start_reply) =
            GatewayPairing::respond_from_seed(&code, &start, [7; 16], &seed).unwrap();
        let (awaiting, finish) = sidecar
            .finish(&start_reply, &sidecar_info(), &sidecar_key())
            .unwrap();
        // Another process, with only the seed and the start.
        let (rebuilt, rebuilt_reply) =
            GatewayPairing::respond_from_seed(&code, &start, [7; 16], &seed).unwrap();
        assert_eq!(rebuilt_reply, start_reply);
        let reply = rebuilt
            .verify(&finish)
            .unwrap()
            .reply(&gateway_info())
            .unwrap();
        assert_eq!(awaiting.complete(&reply).unwrap(), gateway_info());
        // Another seed is another half: the finish does not verify against it.
        let (other, other_reply) =
            GatewayPairing::respond_from_seed(&code, &start, [7; 16], &[8u8; 32]).unwrap();
        assert_ne!(other_reply, start_reply);
        assert!(other.verify(&finish).is_err());
    }

    #[test]
    fn tampered_gateway_reply_fails_on_the_sidecar() {
        let code = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let mut rng = TestRng(1);
        let (sidecar, start) = SidecarPairing::start(&code, &mut rng);
        let (gateway, start_reply) =
            GatewayPairing::respond(&code, &start, [7; 16], &mut rng).unwrap();
        let (awaiting, finish) = sidecar
            .finish(&start_reply, &sidecar_info(), &sidecar_key())
            .unwrap();
        let mut reply = gateway
            .verify(&finish)
            .unwrap()
            .reply(&gateway_info())
            .unwrap();
        reply.sealed_info[0] ^= 1;
        assert_eq!(
            awaiting.complete(&reply).err(),
            Some(PairingError::ConfirmationFailed)
        );
    }

    #[test]
    fn code_parsing_is_forgiving_but_strict_on_length_and_alphabet() {
        let code = PairingCode::parse("k7qm 3xw9 pt4r").unwrap();
        assert_eq!(code.code_id(), "K7QM");
        assert_eq!(&*code.display(), "K7QM-3XW9-PT4R");
        assert_eq!(
            PairingCode::parse("K7QM-3XW9-PT4").err(),
            Some(PairingError::MalformedCode)
        );
        assert_eq!(
            PairingCode::parse("K7QM-3XW9-PT4U").err(),
            Some(PairingError::MalformedCode)
        );
        assert_eq!(
            PairingCode::parse("OOOO-IIII-LLLL").unwrap().code_id(),
            "0000"
        );
        assert!(!format!("{code:?}").contains("3XW9"));
    }

    #[test]
    fn generated_codes_parse_back() {
        let mut rng = TestRng(9);
        for _ in 0..50 {
            let code = PairingCode::generate(&mut rng);
            let parsed = PairingCode::parse(&code.display()).unwrap();
            assert_eq!(parsed.code_id(), code.code_id());
            assert_eq!(parsed.secret(), code.secret());
        }
    }

    /// Runs an exchange in which the sidecar registers `claimed` but holds `held`, as a hostile
    /// client would (an honest one refuses: see `finish`).
    fn exchange_claiming(
        claimed: PublicKey,
        held: &StaticKeypair,
    ) -> Result<SidecarInfo, PairingError> {
        let code = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let mut rng = TestRng(11);
        let (sidecar, start) = SidecarPairing::start(&code, &mut rng);
        let (gateway, reply) = GatewayPairing::respond(&code, &start, [7; 16], &mut rng)?;
        let info = SidecarInfo {
            static_public: claimed,
            ..sidecar_info()
        };
        let (_, finish) = sidecar.finish_claiming(&reply, &info, held)?;
        gateway.verify(&finish).map(|verified| verified.sidecar)
    }

    #[test]
    fn a_key_the_sender_does_not_hold_is_refused() {
        // Holding the right code is not enough to register someone else's public key.
        let victim = StaticKeypair::from_secret_bytes([0x44; 32]).public();
        assert_eq!(
            exchange_claiming(victim, &sidecar_key()).err(),
            Some(PairingError::PossessionFailed)
        );
        // An honest client does not even try.
        let code = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let mut rng = TestRng(12);
        let (sidecar, start) = SidecarPairing::start(&code, &mut rng);
        let (_, reply) = GatewayPairing::respond(&code, &start, [7; 16], &mut rng).unwrap();
        let info = SidecarInfo {
            static_public: victim,
            ..sidecar_info()
        };
        assert_eq!(
            sidecar.finish(&reply, &info, &sidecar_key()).err(),
            Some(PairingError::BadField)
        );
        // The honest case through the same path.
        assert_eq!(
            exchange_claiming(sidecar_key().public(), &sidecar_key()),
            Ok(sidecar_info())
        );
    }

    #[test]
    fn a_possession_proof_does_not_carry_over_to_another_exchange() {
        let code = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let mut rng = TestRng(21);
        let (first_sidecar, first_start) = SidecarPairing::start(&code, &mut rng);
        let (_, first_reply) =
            GatewayPairing::respond(&code, &first_start, [1; 16], &mut rng).unwrap();
        let (_, first_finish) = first_sidecar
            .finish(&first_reply, &sidecar_info(), &sidecar_key())
            .unwrap();
        let (second_sidecar, second_start) = SidecarPairing::start(&code, &mut rng);
        let (second_gateway, second_reply) =
            GatewayPairing::respond(&code, &second_start, [2; 16], &mut rng).unwrap();
        let (_, mut second_finish) = second_sidecar
            .finish(&second_reply, &sidecar_info(), &sidecar_key())
            .unwrap();
        second_finish.possession = first_finish.possession;
        assert_eq!(
            second_gateway.verify(&second_finish).err(),
            Some(PairingError::PossessionFailed)
        );
    }

    #[test]
    fn a_low_order_gateway_ephemeral_is_refused_by_the_sidecar() {
        let code = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let mut rng = TestRng(31);
        let (sidecar, start) = SidecarPairing::start(&code, &mut rng);
        let (_, mut reply) = GatewayPairing::respond(&code, &start, [1; 16], &mut rng).unwrap();
        reply.gateway_ephemeral = PublicKey([0; 32]);
        assert_eq!(
            sidecar
                .finish(&reply, &sidecar_info(), &sidecar_key())
                .err(),
            Some(PairingError::MalformedMessage)
        );
    }

    #[test]
    fn decoy_codes_keep_the_id_and_refuse_foreign_ids() {
        let mut rng = TestRng(41);
        let decoy = PairingCode::decoy("K7QM", &mut rng).unwrap();
        assert_eq!(decoy.code_id(), "K7QM");
        assert_eq!(decoy.secret().len(), CODE_SECRET_LEN);
        assert!(PairingCode::decoy("K7Q", &mut rng).is_none());
        assert!(PairingCode::decoy("K7QU", &mut rng).is_none());
    }

    #[test]
    fn committed_test_vectors_match() {
        let code = PairingCode::parse("K7QM-3XW9-PT4R").unwrap();
        let (transcript, _, _) = exchange(&code, &code).unwrap();
        let rendered = format!(
            "pair_start={}\npair_start_reply={}\npair_finish={}\npair_finish_reply={}\n",
            hex::encode(encode(&transcript.start).unwrap()),
            hex::encode(encode(&transcript.start_reply).unwrap()),
            hex::encode(encode(&transcript.finish).unwrap()),
            hex::encode(encode(&transcript.finish_reply).unwrap()),
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/pairing.txt");
        if std::env::var_os("UPDATE_VECTORS").is_some() {
            std::fs::write(path, &rendered).unwrap();
        }
        assert_eq!(rendered, include_str!("../vectors/pairing.txt"));
    }
}
