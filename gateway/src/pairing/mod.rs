//! Pairing, the gateway side: issuing single-use codes (CLI and library) and running the
//! SPAKE2 exchange behind `/pair/start` and `/pair/finish`.
//!
//! - A start never reveals whether a code id is live: a live id gets a PAKE reply under its
//!   secret, any other well-formed id one under a decoy secret, and both look the same until a
//!   finish fails. A start spends nothing, so junk starts cannot burn a rightful user's code.
//! - A finish is a tested guess: it is counted against the code durably before the
//!   confirmation is checked, and a failed one also counts against the client address
//!   ([`MAX_FAILED_FINISHES_PER_PEER`] per [`PEER_FAILURE_WINDOW`]), so one client cannot guess
//!   its way through codes. A wrong code answers `PAIRING_CODE_INVALID`, like an unknown id.
//! - The sidecar must prove it holds the secret of the key it registers (see
//!   `protocol::pairing`), and a key or sidecar id already in an active pairing is refused:
//!   a pairing is never moved to another user, sidecar id or key.
//!
//! An exchange in progress is kept as the seed its gateway half was drawn from, for
//! [`EXCHANGE_TTL`] (see [`exchanges`]): in memory on the embedded store, in the shared
//! database on the cluster store, where a finish on another replica than the start rebuilds
//! the same half. The limits on failed finishes per client address are per process.

pub(crate) mod exchanges;
pub(crate) mod http;

use crate::clock::unix_ms;
use crate::error::GatewayError;
use crate::http::net::ClientKey;
use crate::store::NewPairing;
use crate::store::{
    CodeCheck, CodeState, CompleteOutcome, NewPairingCode, PairingExchange, PairingId, Store,
};
use exchanges::ExchangeBook;
use protocol::identity::PublicKey;
use protocol::limits::MAX_SHORT_STRING;
use protocol::pairing::{
    GatewayInfo, GatewayPairing, PairFinish, PairFinishReply, PairStart, PairStartReply,
    PairingCode, PairingError,
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
/// Most exchanges in progress at once from one client address.
pub const MAX_EXCHANGES_PER_PEER: usize = 8;
/// Failed finishes (wrong code, unknown id, failed key proof) one client address may make per
/// [`PEER_FAILURE_WINDOW`] before its pairing requests are refused until the window ends.
pub const MAX_FAILED_FINISHES_PER_PEER: u32 = 10;
/// Failed finishes one client address may make on one code id per [`PEER_FAILURE_WINDOW`].
/// Below the code's own attempt limit (`pairing.max_attempts_per_code`, default 5), so a single
/// client that learned a live code id cannot use up its attempts before its rightful user.
pub const MAX_FAILED_FINISHES_PER_PEER_AND_CODE: u32 = 2;
/// See [`MAX_FAILED_FINISHES_PER_PEER`].
pub const PEER_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Client addresses whose failures are remembered at once; past it, pairing requests from
/// addresses not yet tracked are refused (fail closed) until windows expire.
const MAX_TRACKED_PEERS: usize = 4096;
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

/// Failed finishes of one client address in the current window.
struct PeerFailures {
    window_start: Instant,
    failures: u32,
    /// Per code id (at most [`MAX_FAILED_FINISHES_PER_PEER`] entries).
    per_code: HashMap<String, u32>,
}

/// The server side of the pairing exchange.
pub struct PairingService {
    store: Store,
    public_key: PublicKey,
    instance_id: String,
    exchanges: ExchangeBook,
    peers: Mutex<HashMap<ClientKey, PeerFailures>>,
}

impl std::fmt::Debug for PairingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingService")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Entries are independent; a panic elsewhere leaves the map usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn store_error(error: crate::store::StoreError) -> GatewayError {
    tracing::error!(%error, "pairing: state store failed");
    GatewayError::new(ErrorCode::StateStoreError)
}

fn dead_code_error(state: CodeState) -> GatewayError {
    GatewayError::new(match state {
        CodeState::Unknown => ErrorCode::PairingCodeInvalid,
        CodeState::Expired => ErrorCode::PairingCodeExpired,
        CodeState::Used => ErrorCode::PairingCodeUsed,
        CodeState::AttemptsExceeded => ErrorCode::PairingAttemptsExceeded,
    })
}

impl PairingService {
    pub fn new(store: Store, public_key: PublicKey, instance_id: String) -> PairingService {
        let exchanges = match store.shared() {
            Some(shared) => ExchangeBook::Shared(shared.clone()),
            None => ExchangeBook::local(),
        };
        PairingService {
            store,
            public_key,
            instance_id,
            exchanges,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a client address that used up its failures in the current window (overall, or
    /// on `code_id`), or that cannot be tracked because too many addresses are.
    fn check_peer(&self, peer: ClientKey, code_id: Option<&str>) -> Result<(), GatewayError> {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        peers.retain(|_, entry| now.duration_since(entry.window_start) < PEER_FAILURE_WINDOW);
        let limited = match peers.get(&peer) {
            Some(entry) => {
                entry.failures >= MAX_FAILED_FINISHES_PER_PEER
                    || code_id.is_some_and(|id| {
                        entry.per_code.get(id).copied().unwrap_or(0)
                            >= MAX_FAILED_FINISHES_PER_PEER_AND_CODE
                    })
            }
            None => peers.len() >= MAX_TRACKED_PEERS,
        };
        if limited {
            return Err(GatewayError::new(ErrorCode::AuthRateLimited));
        }
        Ok(())
    }

    fn record_failure(&self, peer: ClientKey, code_id: &str) {
        let now = Instant::now();
        let mut peers = lock(&self.peers);
        let entry = peers.entry(peer).or_insert(PeerFailures {
            window_start: now,
            failures: 0,
            per_code: HashMap::new(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let on_code = entry.per_code.entry(code_id.to_string()).or_insert(0);
        *on_code = on_code.saturating_add(1);
    }

    /// `/pair/start`: answers the PAKE, under the code's secret when the id is live and under
    /// a decoy otherwise. Spends nothing. `peer`: who the client is for the pairing limits.
    pub async fn start(
        &self,
        start: PairStart,
        peer: ClientKey,
    ) -> Result<PairStartReply, GatewayError> {
        // A malformed id can never be live, so refusing it reveals nothing.
        if !PairingCode::is_code_id(&start.code_id) {
            return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
        }
        self.check_peer(peer, None)?;
        let now = unix_ms();
        // Make room first, so an overloaded gateway answers before touching the store.
        if !self.exchanges.has_room(&peer.to_string(), now) {
            return Err(GatewayError::new(ErrorCode::AuthRateLimited));
        }
        let check = self
            .store
            .lookup_pairing_code(start.code_id.clone(), now)
            .await
            .map_err(store_error)?;
        let (code, decoy) = match check {
            CodeCheck::Live { secret, .. } => (
                PairingCode::from_parts(&start.code_id, &secret)
                    .map_err(|_| GatewayError::new(ErrorCode::PairingCodeInvalid))?,
                None,
            ),
            CodeCheck::Dead(state) => (
                PairingCode::decoy(&start.code_id, &mut OsRng)
                    .ok_or_else(|| GatewayError::new(ErrorCode::PairingCodeInvalid))?,
                Some(state),
            ),
        };
        let mut exchange_id = [0u8; 16];
        OsRng.fill_bytes(&mut exchange_id);
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut seed[..]);
        let (_, reply) = GatewayPairing::respond_from_seed(&code, &start, exchange_id, &seed)
            .map_err(|_| GatewayError::new(ErrorCode::PairingCodeInvalid))?;
        let exchange = PairingExchange {
            code_id: start.code_id.clone(),
            start,
            seed,
            decoy,
            peer: peer.to_string(),
            started_at_ms: now,
        };
        if !self
            .exchanges
            .add(exchange_id, exchange)
            .await
            .map_err(store_error)?
        {
            return Err(GatewayError::new(ErrorCode::AuthRateLimited));
        }
        Ok(reply)
    }

    /// `/pair/finish`: counts the guess, verifies the confirmation and the key proof, commits
    /// the pairing, confirms back.
    pub async fn finish(
        &self,
        finish: PairFinish,
        peer: ClientKey,
    ) -> Result<PairFinishReply, GatewayError> {
        // Single use: the exchange is gone whatever happens next.
        let exchange = self
            .exchanges
            .take(&finish.exchange_id)
            .await
            .map_err(store_error)?;
        let Some(exchange) = exchange else {
            return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
        };
        self.check_peer(peer, Some(&exchange.code_id))?;
        if !exchanges::is_live(exchange.started_at_ms, unix_ms()) {
            return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
        }
        if let Some(state) = exchange.decoy {
            self.record_failure(peer, &exchange.code_id);
            return Err(dead_code_error(state));
        }
        // The code's secret again (it is not kept with the exchange): a code that died since
        // the start is refused for the reason it died.
        let code = match self
            .store
            .lookup_pairing_code(exchange.code_id.clone(), unix_ms())
            .await
            .map_err(store_error)?
        {
            CodeCheck::Live { secret, .. } => {
                PairingCode::from_parts(&exchange.code_id, &secret)
                    .map_err(|_| GatewayError::new(ErrorCode::PairingCodeInvalid))?
            }
            CodeCheck::Dead(state) => return Err(dead_code_error(state)),
        };
        if let Some(state) = self
            .store
            .count_pairing_attempt(exchange.code_id.clone(), unix_ms())
            .await
            .map_err(store_error)?
        {
            return Err(dead_code_error(state));
        }
        let (pake, _) = GatewayPairing::respond_from_seed(
            &code,
            &exchange.start,
            finish.exchange_id,
            &exchange.seed,
        )
        .map_err(|_| GatewayError::new(ErrorCode::PairingCodeInvalid))?;
        let verified = match pake.verify(&finish) {
            Ok(verified) => verified,
            Err(PairingError::PossessionFailed) => {
                self.record_failure(peer, &exchange.code_id);
                tracing::warn!(code_id = %exchange.code_id, "pairing refused: the sidecar did not prove it holds the key it registered");
                return Err(GatewayError::new(ErrorCode::PairingKeyProofFailed));
            }
            Err(_) => {
                self.record_failure(peer, &exchange.code_id);
                tracing::info!(code_id = %exchange.code_id, "pairing confirmation failed (wrong code?)");
                return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
            }
        };
        let sidecar = verified.sidecar.clone();
        let outcome = self
            .store
            .complete_pairing(NewPairing {
                pairing_id: PairingId::random(),
                code_id: exchange.code_id.clone(),
                sidecar_id: sidecar.sidecar_id.clone(),
                sidecar_public_key: sidecar.static_public,
                display_name: sidecar.display_name.clone(),
                now_ms: unix_ms(),
            })
            .await
            .map_err(store_error)?;
        let record = match outcome {
            CompleteOutcome::Paired(record) => record,
            CompleteOutcome::UnknownCode => {
                return Err(GatewayError::new(ErrorCode::PairingCodeInvalid));
            }
            CompleteOutcome::CodeUsed => return Err(GatewayError::new(ErrorCode::PairingCodeUsed)),
            CompleteOutcome::SidecarIdConflict => {
                tracing::warn!(sidecar_id = %sidecar.sidecar_id, "pairing refused: the sidecar id is in an active pairing");
                return Err(GatewayError::new(ErrorCode::SidecarIdConflict));
            }
            CompleteOutcome::KeyAlreadyPaired => {
                tracing::warn!(fingerprint = %sidecar.static_public.fingerprint(), "pairing refused: the key is in an active pairing");
                return Err(GatewayError::new(ErrorCode::PairingKeyAlreadyPaired));
            }
        };
        let reply = verified
            .reply(&GatewayInfo {
                static_public: self.public_key,
                instance_id: self.instance_id.clone(),
                user_id: record.user_id.clone(),
                pairing_id: record.pairing_id.0,
            })
            .map_err(|_| GatewayError::new(ErrorCode::InternalError))?;
        tracing::info!(
            sidecar_id = %record.sidecar_id,
            user_id = %record.user_id,
            pairing_id = %record.pairing_id,
            fingerprint = %record.sidecar_public_key.fingerprint(),
            "sidecar paired"
        );
        Ok(reply)
    }
}
