//! Pairing, the gateway side: issuing single-use codes (CLI and library) and running the
//! SPAKE2 exchange behind `/pair/start` and `/pair/finish`.
//!
//! Every `/pair/start` on a live code counts an attempt durably before the PAKE runs; a wrong
//! code surfaces as a failed confirmation at `/pair/finish`, indistinguishable from any other
//! failure (`PAIRING_CODE_INVALID`). The in-progress exchange (PAKE state) lives only in
//! memory for [`EXCHANGE_TTL`] in a bounded map; a restart simply voids it.

pub(crate) mod http;

use crate::clock::unix_ms;
use crate::error::GatewayError;
use crate::store::{CodeCheck, CompleteOutcome, NewPairingCode, Store};
use protocol::identity::PublicKey;
use protocol::limits::MAX_SHORT_STRING;
use protocol::pairing::{
    GatewayInfo, GatewayPairing, PairFinish, PairFinishReply, PairStart, PairStartReply,
    PairingCode,
};
use rand_core::{OsRng, RngCore};
use shared_safety::ErrorCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// How long a started exchange waits for `/pair/finish`.
pub const EXCHANGE_TTL: Duration = Duration::from_secs(60);
/// Most exchanges in progress at once.
pub const MAX_EXCHANGES: usize = 256;
/// Longest code lifetime the gateway issues.
pub const MAX_CODE_TTL: Duration = Duration::from_secs(86_400);

/// A freshly issued code. `code` is the secret to hand to the user; show it once.
#[derive(Debug)]
pub struct IssuedCode {
    pub code: Zeroizing<String>,
    pub code_id: String,
    pub user_id: String,
    pub expires_at_ms: i64,
}

/// Checks an OAuth subject used as a pairing user id.
pub fn check_user_id(user_id: &str) -> Result<(), GatewayError> {
    if user_id.is_empty()
        || user_id.len() > MAX_SHORT_STRING
        || user_id.trim() != user_id
        || user_id.chars().any(char::is_control)
    {
        return Err(GatewayError::with_detail(
            ErrorCode::ArgumentsInvalid,
            format!(
                "The user id must be the OAuth subject: 1 to {MAX_SHORT_STRING} bytes, no surrounding spaces."
            ),
        ));
    }
    Ok(())
}

/// Issues a single-use pairing code for `user_id`, valid for `ttl`.
pub async fn issue_code(
    store: &Store,
    user_id: &str,
    ttl: Duration,
    max_attempts: u32,
) -> Result<IssuedCode, GatewayError> {
    check_user_id(user_id)?;
    if ttl.is_zero() || ttl > MAX_CODE_TTL {
        return Err(GatewayError::with_detail(
            ErrorCode::ArgumentsInvalid,
            "The code lifetime must be between 1 second and 1 day.",
        ));
    }
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    // 20 bits of code id: a collision with a live code is possible, so draw again.
    for _ in 0..16 {
        let code = PairingCode::generate(&mut OsRng);
        let now = unix_ms();
        let record = NewPairingCode {
            code_id: code.code_id().to_string(),
            secret: Zeroizing::new(code.secret().to_string()),
            user_id: user_id.to_string(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            max_attempts,
        };
        let expires_at_ms = record.expires_at_ms;
        let inserted = store.insert_pairing_code(record).await.map_err(|error| {
            tracing::error!(%error, "could not store a pairing code");
            GatewayError::new(ErrorCode::StateStoreError)
        })?;
        if inserted {
            tracing::info!(code_id = code.code_id(), %user_id, "pairing code issued");
            return Ok(IssuedCode {
                code: code.display(),
                code_id: code.code_id().to_string(),
                user_id: user_id.to_string(),
                expires_at_ms,
            });
        }
    }
    Err(GatewayError::with_detail(
        ErrorCode::InternalError,
        "Too many live pairing codes; wait for some to expire.",
    ))
}

struct Exchange {
    pake: GatewayPairing,
    code_id: String,
    started: Instant,
}

/// The server side of the pairing exchange.
pub struct PairingService {
    store: Store,
    public_key: PublicKey,
    instance_id: String,
    exchanges: Mutex<HashMap<[u8; 16], Exchange>>,
}

impl std::fmt::Debug for PairingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingService")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl PairingService {
    pub fn new(store: Store, public_key: PublicKey, instance_id: String) -> PairingService {
        PairingService {
            store,
            public_key,
            instance_id,
            exchanges: Mutex::new(HashMap::new()),
        }
    }

    fn exchanges(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Exchange>> {
        // PAKE states are independent entries; a panic elsewhere leaves the map usable.
        self.exchanges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `/pair/start`: checks the code, counts the attempt, answers the PAKE.
    pub async fn start(&self, start: PairStart) -> Result<PairStartReply, GatewayError> {
        if start.code_id.is_empty() || start.code_id.len() > 16 {
            return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
        }
        // Make room before spending an attempt, so an overloaded gateway never burns one.
        {
            let now = Instant::now();
            let mut exchanges = self.exchanges();
            exchanges.retain(|_, exchange| now.duration_since(exchange.started) < EXCHANGE_TTL);
            if exchanges.len() >= MAX_EXCHANGES {
                return Err(GatewayError::new(ErrorCode::AuthRateLimited));
            }
        }
        let check = self
            .store
            .begin_pairing_attempt(start.code_id.clone(), unix_ms())
            .await
            .map_err(|error| {
                tracing::error!(%error, "pairing code lookup failed");
                GatewayError::new(ErrorCode::StateStoreError)
            })?;
        let secret = match check {
            CodeCheck::Accepted { secret, .. } => secret,
            CodeCheck::Unknown => return Err(GatewayError::new(ErrorCode::PairingCodeInvalid)),
            CodeCheck::Expired => return Err(GatewayError::new(ErrorCode::PairingCodeExpired)),
            CodeCheck::Used => return Err(GatewayError::new(ErrorCode::PairingCodeUsed)),
            CodeCheck::AttemptsExceeded => {
                return Err(GatewayError::new(ErrorCode::PairingAttemptsExceeded));
            }
        };
        let code = PairingCode::from_parts(&start.code_id, &secret)
            .map_err(|_| GatewayError::new(ErrorCode::PairingCodeInvalid))?;
        let mut exchange_id = [0u8; 16];
        OsRng.fill_bytes(&mut exchange_id);
        let (pake, reply) = GatewayPairing::respond(&code, &start, exchange_id, &mut OsRng)
            .map_err(|_| GatewayError::new(ErrorCode::PairingCodeInvalid))?;
        let mut exchanges = self.exchanges();
        if exchanges.len() >= MAX_EXCHANGES {
            return Err(GatewayError::new(ErrorCode::AuthRateLimited));
        }
        exchanges.insert(
            exchange_id,
            Exchange {
                pake,
                code_id: start.code_id,
                started: Instant::now(),
            },
        );
        Ok(reply)
    }

    /// `/pair/finish`: verifies the sidecar's confirmation, commits the pairing, confirms back.
    pub async fn finish(&self, finish: PairFinish) -> Result<PairFinishReply, GatewayError> {
        // Single use: the exchange is gone whatever happens next.
        let exchange = self.exchanges().remove(&finish.exchange_id);
        let Some(exchange) = exchange else {
            return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
        };
        if exchange.started.elapsed() >= EXCHANGE_TTL {
            return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
        }
        let verified = exchange.pake.verify(&finish).map_err(|_| {
            tracing::info!(code_id = %exchange.code_id, "pairing confirmation failed (wrong code?)");
            GatewayError::new(ErrorCode::PairingCodeInvalid)
        })?;
        let sidecar = verified.sidecar.clone();
        let outcome = self
            .store
            .complete_pairing(
                exchange.code_id.clone(),
                sidecar.sidecar_id.clone(),
                sidecar.static_public,
                sidecar.display_name.clone(),
                unix_ms(),
            )
            .await
            .map_err(|error| {
                tracing::error!(%error, "could not store the pairing");
                GatewayError::new(ErrorCode::StateStoreError)
            })?;
        let record = match outcome {
            CompleteOutcome::Paired(record) => record,
            CompleteOutcome::UnknownCode => {
                return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
            }
            CompleteOutcome::CodeUsed => return Err(GatewayError::new(ErrorCode::PairingCodeUsed)),
            CompleteOutcome::SidecarIdConflict => {
                return Err(GatewayError::new(ErrorCode::SidecarIdConflict));
            }
        };
        let reply = verified
            .reply(&GatewayInfo {
                static_public: self.public_key,
                instance_id: self.instance_id.clone(),
                user_id: record.user_id.clone(),
            })
            .map_err(|_| GatewayError::new(ErrorCode::InternalError))?;
        tracing::info!(
            sidecar_id = %record.sidecar_id,
            user_id = %record.user_id,
            fingerprint = %record.sidecar_public_key.fingerprint(),
            "sidecar paired"
        );
        Ok(reply)
    }
}
