//! What the store holds, whatever the backend: pairing codes, pairings and the outcomes of
//! their operations, and the rules on a code's row that every backend applies the same way.

use super::StoreError;
use protocol::identity::PublicKey;
use std::fmt;
use zeroize::Zeroizing;

/// `revoked_reason` of a pairing ended by `ibkr-gateway key rotate`.
pub(crate) const REVOKED_FOR_KEY_ROTATION: &str = "gateway_key_rotated";

/// A pairing code to store.
#[derive(Debug)]
pub struct NewPairingCode {
    pub code_id: String,
    pub secret: Zeroizing<String>,
    pub user_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub max_attempts: u32,
}

/// Whether a code can still be used, and why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeState {
    Unknown,
    Expired,
    Used,
    AttemptsExceeded,
}

impl CodeState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeState::Unknown => "unknown",
            CodeState::Expired => "expired",
            CodeState::Used => "used",
            CodeState::AttemptsExceeded => "attempts_exceeded",
        }
    }

    pub fn from_stored(name: &str) -> Option<CodeState> {
        [
            CodeState::Unknown,
            CodeState::Expired,
            CodeState::Used,
            CodeState::AttemptsExceeded,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

/// A pairing exchange between `/pair/start` and `/pair/finish`: what any process needs to
/// rebuild the gateway's half and check the finish (see `protocol::pairing`,
/// `GatewayPairing::respond_from_seed`).
#[derive(Clone)]
pub struct PairingExchange {
    pub code_id: String,
    /// The sidecar's start message, as received.
    pub start: protocol::pairing::PairStart,
    /// Every random value of the gateway's half is drawn from it. As secret as the code.
    pub seed: zeroize::Zeroizing<[u8; 32]>,
    /// Set when the start named no live code: the exchange ran on a decoy secret and its
    /// finish fails with this state.
    pub decoy: Option<CodeState>,
    /// The client address that started it (for the per-address limit).
    pub peer: String,
    pub started_at_ms: i64,
}

impl std::fmt::Debug for PairingExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingExchange")
            .field("code_id", &self.code_id)
            .field("decoy", &self.decoy)
            .finish_non_exhaustive()
    }
}

/// The result of looking a code up.
#[derive(Debug)]
pub enum CodeCheck {
    /// Live: run the PAKE with this secret.
    Live {
        user_id: String,
        secret: Zeroizing<String>,
    },
    Dead(CodeState),
}

/// One `pairing_codes` row.
pub(crate) struct CodeRow {
    pub(crate) secret: Option<String>,
    pub(crate) user_id: String,
    pub(crate) expires_at: i64,
    pub(crate) attempts: i64,
    pub(crate) max_attempts: i64,
    pub(crate) used_at: Option<i64>,
}

/// Why a row cannot be used at `now_ms`, if it cannot.
pub(crate) fn dead_state(row: &CodeRow, now_ms: i64) -> Option<CodeState> {
    if row.used_at.is_some() {
        Some(CodeState::Used)
    } else if now_ms >= row.expires_at {
        Some(CodeState::Expired)
    } else if row.attempts >= row.max_attempts {
        Some(CodeState::AttemptsExceeded)
    } else if row.secret.is_none() {
        Some(CodeState::Unknown)
    } else {
        None
    }
}

/// The gateway's id of one pairing (16 random bytes; hex in the database and in output).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairingId(pub [u8; 16]);

impl PairingId {
    pub fn random() -> PairingId {
        let mut bytes = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        PairingId(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub(crate) fn from_hex(text: &str) -> Result<PairingId, StoreError> {
        let bytes = hex::decode(text).map_err(|_| StoreError::Corrupt("pairing id"))?;
        Ok(PairingId(
            bytes
                .try_into()
                .map_err(|_| StoreError::Corrupt("pairing id"))?,
        ))
    }
}

impl fmt::Debug for PairingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairingId({})", self.to_hex())
    }
}

impl fmt::Display for PairingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A pairing between this gateway and one sidecar key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingRecord {
    pub pairing_id: PairingId,
    pub sidecar_id: String,
    pub sidecar_public_key: PublicKey,
    pub user_id: String,
    pub display_name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl PairingRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}

/// The result of committing a verified pairing exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum CompleteOutcome {
    Paired(PairingRecord),
    /// The code disappeared (replaced by a newer code with the same id).
    UnknownCode,
    CodeUsed,
    /// Another active pairing holds this sidecar id.
    SidecarIdConflict,
    /// This key is already in an active pairing (for this user or another).
    KeyAlreadyPaired,
}

/// What `complete_pairing` records.
#[derive(Clone, Debug)]
pub struct NewPairing {
    pub pairing_id: PairingId,
    pub code_id: String,
    pub sidecar_id: String,
    pub sidecar_public_key: PublicKey,
    pub display_name: String,
    pub now_ms: i64,
}

/// What a lookup answers for a code's row (or its absence) at `now_ms`.
pub(crate) fn code_check(row: Option<CodeRow>, now_ms: i64) -> CodeCheck {
    let Some(row) = row else {
        return CodeCheck::Dead(CodeState::Unknown);
    };
    if let Some(state) = dead_state(&row, now_ms) {
        return CodeCheck::Dead(state);
    }
    match row.secret {
        Some(secret) => CodeCheck::Live {
            user_id: row.user_id,
            secret: Zeroizing::new(secret),
        },
        None => CodeCheck::Dead(CodeState::Unknown),
    }
}

impl NewPairing {
    /// The record of this pairing, made for `user_id` (the code's user).
    pub(crate) fn into_record(self, user_id: String) -> PairingRecord {
        PairingRecord {
            pairing_id: self.pairing_id,
            sidecar_id: self.sidecar_id,
            sidecar_public_key: self.sidecar_public_key,
            user_id,
            display_name: self.display_name,
            created_at_ms: self.now_ms,
            revoked_at_ms: None,
        }
    }
}

/// Key continuity from the recorded key (hex), the current one and the number of active
/// pairings: see [`super::Store::check_gateway_key`]. `Recorded` means the caller records
/// `current` (when there is one).
pub(crate) fn key_continuity(
    recorded: Option<&str>,
    current: Option<&PublicKey>,
    active_pairings: i64,
) -> super::KeyContinuity {
    use super::KeyContinuity;
    match recorded {
        Some(recorded) if current.is_some_and(|key| key.to_hex() == recorded) => {
            KeyContinuity::Same
        }
        Some(recorded) if active_pairings > 0 => KeyContinuity::Broken {
            recorded_fingerprint: PublicKey::from_stored_hex(recorded)
                .map(|key| key.fingerprint())
                .unwrap_or_else(|_| recorded.to_string()),
            active_pairings: u64::try_from(active_pairings).unwrap_or(0),
            key_file_missing: current.is_none(),
        },
        _ => KeyContinuity::Recorded,
    }
}

/// A journal reference from its stored columns.
pub(crate) fn journal_ref(
    seq: i64,
    hash: &str,
) -> Result<protocol::envelope::JournalRef, StoreError> {
    let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt("journal_seq"))?;
    let hash = hex::decode(hash)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(StoreError::Corrupt("journal_hash"))?;
    Ok(protocol::envelope::JournalRef { seq, hash })
}

/// A refresh token to keep (only its digest: the token itself is handed to the client once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRefreshToken {
    /// SHA-256 of the token.
    pub digest: [u8; 32],
    /// Every token rotated from one authorization shares it; reuse of any revokes them all.
    pub family_id: String,
    pub client_id: String,
    pub subject: String,
    /// Space-separated.
    pub scopes: String,
    pub resource: String,
    /// The approval on the laptop the family comes from.
    pub approval_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// What a refresh token grants (its family's terms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshGrant {
    pub family_id: String,
    pub client_id: String,
    pub subject: String,
    pub scopes: String,
    pub resource: String,
    pub approval_id: String,
}

/// The token that replaces a rotated one (same family and terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshSuccessor {
    pub digest: [u8; 32],
    pub expires_at_ms: i64,
}

/// What presenting a refresh token found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// Spent now, and its successor stored in the same transaction.
    Rotated(RefreshGrant),
    Unknown,
    Expired,
    /// Its family was revoked (by the owner, or after a reuse).
    Revoked,
    /// It had been spent already: a copy is in someone else's hands. The whole family is
    /// revoked now.
    Reused {
        family_id: String,
    },
}
