//! The relay primitives behind `ibkr-agent sidecar pairing|session|relay ...`: explicit local
//! pairing records, relay sessions, and the sidecar-side gates run on one request.
//!
//! They work on the same state store the daemon reads ([`StateStore`]), so what they create is
//! what the daemon enforces: a pairing revoked here is refused by the daemon's gate b on the
//! next call, and the gates of [`relay_accept`] are the daemon's own ([`gates::pairing_gate`],
//! [`gates::check_tool_call`]). They never dial anything and never call the Client Portal
//! Gateway (the CLI's `--probe-broker` does that separately).
//!
//! Times are unix seconds, passed in by the caller (`now`) so tests control them.

use crate::error::SidecarError;
use crate::gates;
use crate::state::{LocalPairingWrite, PairingRecord, RelaySessionRecord, StateStore};
use protocol::catalog::scopes;
use protocol::envelope::{EnvelopeError, RelayRequest, RequestId};
use protocol::limits::{MAX_FRAME_PLAINTEXT, MAX_SHORT_STRING};
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use shared_safety::ErrorCode;
use shared_safety::scope::ScopeSet;

/// Longest TTL `pairing create` accepts (one year).
pub const MAX_PAIRING_TTL_SECONDS: u64 = 365 * 86_400;
/// Longest TTL `session create` accepts (seven days, like the gateway's session TTL bound).
pub const MAX_SESSION_TTL_SECONDS: u64 = 7 * 86_400;
/// Heartbeat timeout `relay accept` uses when no configuration is given (the daemon's default).
pub const DEFAULT_HEARTBEAT_TIMEOUT_SECONDS: u64 = crate::config::DEFAULT_HEARTBEAT_TIMEOUT_SECONDS;
/// Deadline written into envelopes built by `relay accept`.
pub const RELAY_ACCEPT_DEADLINE_MS: u64 = 30_000;

/// Ids travel in handshakes and logs: 1-64 letters, digits, '-', '_' or '.' (the gateway's
/// rule for instance ids too).
pub fn validate_id(flag: &str, value: &str) -> Result<(), SidecarError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SidecarError::flag(format!(
            "({flag} must be 1-64 characters of letters, digits, '-', '_' or '.')"
        )))
    }
}

fn validate_user_id(value: &str) -> Result<(), SidecarError> {
    let ok = !value.trim().is_empty()
        && value.len() <= MAX_SHORT_STRING
        && !value.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(SidecarError::flag(format!(
            "(--user-id must be 1-{MAX_SHORT_STRING} printable characters)"
        )))
    }
}

fn ttl(flag: &str, seconds: u64, max: u64, now: i64) -> Result<i64, SidecarError> {
    if seconds == 0 || seconds > max {
        return Err(SidecarError::flag(format!(
            "({flag} must be between 1 and {max})"
        )));
    }
    let seconds =
        i64::try_from(seconds).map_err(|_| SidecarError::flag(format!("({flag} is too large)")))?;
    Ok(now.saturating_add(seconds))
}

/// Text from the command line shown back in an error: printable and bounded.
fn shown(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

// ---- pairing --------------------------------------------------------------------------------

/// `pairing create`.
#[derive(Clone, Debug)]
pub struct PairingCreate {
    pub remote_instance_id: String,
    pub sidecar_id: String,
    pub user_id: String,
    pub ttl_seconds: u64,
    /// Granted on top of the read-only default; each must be in `protocol::catalog::scopes::ALL`.
    pub extra_scopes: Vec<String>,
}

/// A `--scope` value as the catalog's scope, or CLI_ARGUMENT_INVALID listing the known ones.
fn known_scope(scope: &str) -> Result<&'static str, SidecarError> {
    let scope = scope.trim();
    scopes::ALL
        .iter()
        .find(|known| **known == scope)
        .copied()
        .ok_or_else(|| {
            SidecarError::flag(format!(
                "(--scope {} is not a known scope; known scopes: {})",
                shown(scope),
                scopes::ALL.join(" ")
            ))
        })
}

/// Writes the explicit local pairing record: valid until `now + ttl_seconds`, read-only local
/// scopes plus `extra_scopes`, no pinned gateway key and no relay URL (so the daemon cannot dial
/// with it; the gates treat it like any other pairing). See
/// [`StateStore::create_local_pairing`] for how the record's sidecar id relates to the local
/// identity.
pub fn create_pairing(
    store: &StateStore,
    request: &PairingCreate,
    now: i64,
) -> Result<(PairingRecord, LocalPairingWrite), SidecarError> {
    validate_id("--remote-instance-id", &request.remote_instance_id)?;
    validate_id("--sidecar-id", &request.sidecar_id)?;
    validate_user_id(&request.user_id)?;
    let expires_at = ttl(
        "--ttl-seconds",
        request.ttl_seconds,
        MAX_PAIRING_TTL_SECONDS,
        now,
    )?;
    let mut granted: Vec<&str> = scopes::READ_ONLY.to_vec();
    for scope in &request.extra_scopes {
        granted.push(known_scope(scope)?);
    }
    let record = PairingRecord {
        remote_instance_id: request.remote_instance_id.clone(),
        sidecar_id: request.sidecar_id.clone(),
        user_id: request.user_id.trim().to_string(),
        gateway_url: None,
        relay_url: None,
        gateway_public_key: None,
        gateway_pairing_id: None,
        local_scopes: ScopeSet::from_list(&granted),
        created_at: now,
        expires_at: Some(expires_at),
        revoked_at: None,
    };
    let write = store.create_local_pairing(&record, now)?;
    Ok((record, write))
}

// ---- local scope grants ---------------------------------------------------------------------

/// Whether a scope change adds or removes scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeEdit {
    /// `pairing grant` (and `sidecar pair --scope`).
    Grant,
    /// `pairing revoke-scope`.
    Revoke,
}

/// What a scope change did to a pairing's local grant.
#[derive(Clone, Debug)]
pub struct ScopeChange {
    /// The pairing after the change.
    pub record: PairingRecord,
    /// Scopes that were not granted before and are now.
    pub added: Vec<String>,
    /// Scopes that were granted before and are not any more.
    pub removed: Vec<String>,
}

/// What granting `ibkr:orders:live` enables, printed by the CLI and put in its refusal.
pub const LIVE_GRANT_WARNING: &str = "ibkr:orders:live lets agents holding a token with that scope \
     place, modify and cancel orders with real money on a live (non-paper) account, within the \
     sidecar's trading guards";

/// Checks `--scope` values for a grant: each known, `ibkr:orders:live` only with
/// `confirm_live`. Runs before anything changes (`sidecar pair --scope` checks them before the
/// one-time code is spent).
pub fn validate_scope_flags(
    requested: &[String],
    edit: ScopeEdit,
    confirm_live: bool,
) -> Result<Vec<&'static str>, SidecarError> {
    if requested.is_empty() {
        return Err(SidecarError::flag("(--scope: name at least one scope)"));
    }
    let known = requested
        .iter()
        .map(|scope| known_scope(scope))
        .collect::<Result<Vec<_>, _>>()?;
    if edit == ScopeEdit::Grant && known.contains(&scopes::ORDERS_LIVE) && !confirm_live {
        return Err(SidecarError::flag(format!(
            "(--scope {}: {LIVE_GRANT_WARNING}; add --confirm-live to grant it)",
            scopes::ORDERS_LIVE
        )));
    }
    Ok(known)
}

/// Which pairing a scope change applies to: the ids given, or else the pairing the daemon
/// dials (the one `sidecar pair` made for this identity).
pub fn scope_target(
    store: &StateStore,
    ids: Option<(&str, &str)>,
    now: i64,
) -> Result<(String, String), SidecarError> {
    if let Some((remote_instance_id, sidecar_id)) = ids {
        validate_id("--remote-instance-id", remote_instance_id)?;
        validate_id("--sidecar-id", sidecar_id)?;
        return Ok((remote_instance_id.to_string(), sidecar_id.to_string()));
    }
    let identity = store.identity()?.ok_or_else(|| {
        SidecarError::new(
            ErrorCode::IdentityMissing,
            "(no identity in this state directory: run `ibkr-agent sidecar identity create` and `sidecar pair`)",
        )
    })?;
    match store.dialable_pairing(&identity.sidecar_id, now)? {
        Some(record) => Ok((record.remote_instance_id, record.sidecar_id)),
        None => Err(SidecarError::new(
            ErrorCode::SidecarPairingRequired,
            "(this identity has no active pairing made by `sidecar pair`; for a record made by \
             `pairing create`, pass --remote-instance-id and --sidecar-id)",
        )),
    }
}

/// `pairing grant` / `pairing revoke-scope`: adds or removes local scopes of one pairing, in
/// one store transaction. A running daemon reads the pairing on every request, so the change
/// holds from its next call.
///
/// - A grant needs an active pairing (SIDECAR_PAIRING_REQUIRED otherwise), and
///   `ibkr:orders:live` needs `ibkr:orders:write` granted too (it only adds to it).
/// - Revoking `ibkr:orders:write` also revokes `ibkr:orders:live`, which means nothing without
///   it.
pub fn change_local_scopes(
    store: &StateStore,
    target: (&str, &str),
    edit: ScopeEdit,
    requested: &[String],
    confirm_live: bool,
    now: i64,
) -> Result<ScopeChange, SidecarError> {
    let requested = validate_scope_flags(requested, edit, confirm_live)?;
    let (remote_instance_id, sidecar_id) = target;
    let changed = store.update_local_scopes(remote_instance_id, sidecar_id, |record| {
        let mut granted: Vec<&str> = record.local_scopes.iter().collect();
        match edit {
            ScopeEdit::Grant => {
                gates::pairing_gate(Some(record), now)?;
                for scope in &requested {
                    if !granted.contains(scope) {
                        granted.push(scope);
                    }
                }
                if granted.contains(&scopes::ORDERS_LIVE) && !granted.contains(&scopes::ORDERS_WRITE)
                {
                    return Err(SidecarError::flag(format!(
                        "(--scope {live} only adds to {write}: grant both, e.g. --scope {write} --scope {live} --confirm-live)",
                        live = scopes::ORDERS_LIVE,
                        write = scopes::ORDERS_WRITE
                    )));
                }
            }
            ScopeEdit::Revoke => {
                granted.retain(|scope| !requested.contains(scope));
                if !granted.contains(&scopes::ORDERS_WRITE) {
                    granted.retain(|scope| *scope != scopes::ORDERS_LIVE);
                }
            }
        }
        Ok(ScopeSet::from_list(&granted))
    })?;
    let Some((before, after)) = changed else {
        return Err(SidecarError::new(
            ErrorCode::SidecarPairingRequired,
            "(there is no pairing for this remote instance and sidecar id)",
        ));
    };
    let added = after
        .iter()
        .filter(|scope| !before.local_scopes.contains(scope))
        .map(str::to_string)
        .collect();
    let removed = before
        .local_scopes
        .iter()
        .filter(|scope| !after.contains(scope))
        .map(str::to_string)
        .collect();
    let record = PairingRecord {
        local_scopes: after,
        ..before
    };
    Ok(ScopeChange {
        record,
        added,
        removed,
    })
}

/// `pairing revoke`: marks the pairing revoked and closes the relay sessions bound to it.
/// SIDECAR_PAIRING_REQUIRED if there is no unrevoked pairing for the pair of ids. Returns the
/// revoked record and how many sessions were closed.
pub fn revoke_pairing(
    store: &StateStore,
    remote_instance_id: &str,
    sidecar_id: &str,
    now: i64,
) -> Result<(PairingRecord, usize), SidecarError> {
    validate_id("--remote-instance-id", remote_instance_id)?;
    validate_id("--sidecar-id", sidecar_id)?;
    if !store.revoke_pairing(remote_instance_id, sidecar_id, now)? {
        return Err(SidecarError::new(
            ErrorCode::SidecarPairingRequired,
            "(there is no unrevoked pairing for this remote instance and sidecar id)",
        ));
    }
    let closed = store.close_bound_relay_sessions(remote_instance_id, sidecar_id, now)?;
    let record = store
        .pairing(remote_instance_id, sidecar_id)?
        .ok_or_else(|| SidecarError::state("(the revoked pairing disappeared)"))?;
    Ok((record, closed))
}

// ---- sessions -------------------------------------------------------------------------------

/// `session create`: a relay session bound to the paired sidecar id, valid until
/// `now + ttl_seconds`, with `last_heartbeat_at = now`. SIDECAR_PAIRING_REQUIRED without an
/// active pairing for `(remote_instance_id, sidecar_id)`.
pub fn create_session(
    store: &StateStore,
    remote_instance_id: &str,
    sidecar_id: &str,
    ttl_seconds: u64,
    now: i64,
) -> Result<RelaySessionRecord, SidecarError> {
    validate_id("--remote-instance-id", remote_instance_id)?;
    validate_id("--sidecar-id", sidecar_id)?;
    let expires_at = ttl("--ttl-seconds", ttl_seconds, MAX_SESSION_TTL_SECONDS, now)?;
    let pairing = store.pairing(remote_instance_id, sidecar_id)?;
    gates::pairing_gate(pairing.as_ref(), now)?;
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let record = RelaySessionRecord {
        session_id: hex::encode(id),
        remote_instance_id: remote_instance_id.to_string(),
        sidecar_id: sidecar_id.to_string(),
        created_at: now,
        expires_at,
        last_heartbeat_at: now,
        closed_at: None,
    };
    store.insert_relay_session(&record)?;
    Ok(record)
}

/// `session heartbeat`: records a heartbeat (`last_heartbeat_at = now`) on an open session.
/// SIDECAR_SESSION_INVALID if unknown or closed, SIDECAR_SESSION_EXPIRED if expired.
pub fn heartbeat_session(
    store: &StateStore,
    session_id: &str,
    now: i64,
) -> Result<RelaySessionRecord, SidecarError> {
    let session = store
        .relay_session(session_id)?
        .ok_or_else(unknown_session)?;
    match session.status(now) {
        "closed" => return Err(closed_session()),
        "expired" => return Err(expired_session()),
        _ => {}
    }
    store.touch_relay_session(session_id, now)?;
    store
        .relay_session(session_id)?
        .ok_or_else(|| SidecarError::state("(the session disappeared)"))
}

fn unknown_session() -> SidecarError {
    SidecarError::new(
        ErrorCode::SidecarSessionInvalid,
        "(there is no such relay session)",
    )
}

fn closed_session() -> SidecarError {
    SidecarError::new(
        ErrorCode::SidecarSessionInvalid,
        "(the relay session was closed)",
    )
}

fn expired_session() -> SidecarError {
    SidecarError::new(
        ErrorCode::SidecarSessionExpired,
        "(create a new one with `ibkr-agent sidecar session create`)",
    )
}

// ---- relay accept ---------------------------------------------------------------------------

/// `relay accept`: one request as the gateway would forward it.
#[derive(Clone, Debug)]
pub struct AcceptRequest {
    pub remote_instance_id: String,
    pub sidecar_id: String,
    pub tool_name: String,
    pub scope: String,
    pub payload_json: String,
    /// A specific session; without it, the newest open session bound to the pair of ids.
    pub session_id: Option<String>,
    /// Without it, a random one.
    pub request_id: Option<RequestId>,
    /// Heartbeat staleness bound, from the configuration (default 45).
    pub heartbeat_timeout_seconds: u64,
}

/// A request that passed every gate: the envelope that would be forwarded and what it is
/// bound to.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub request: RelayRequest,
    pub session: RelaySessionRecord,
    pub pairing: PairingRecord,
}

/// Runs the gates in order and builds the forwarded envelope:
///
/// 1. pairing (SIDECAR_PAIRING_REQUIRED: none, revoked or expired);
/// 2. session binding (SIDECAR_SESSION_INVALID: no open session bound to this sidecar id and
///    remote instance, or `session_id` is not bound to them or was closed);
/// 3. heartbeat and expiry (SIDECAR_SESSION_EXPIRED; SIDECAR_HEARTBEAT_STALE when
///    `now - last_heartbeat_at > heartbeat_timeout_seconds`);
/// 4. tool, catalog scope, local grant, sanitizer, closed schema
///    ([`gates::check_tool_call`]: TOOL_UNKNOWN / ARGUMENTS_INVALID / SCOPE_NOT_GRANTED_LOCALLY
///    / SENSITIVE_MATERIAL_REFUSED);
/// 5. the envelope: canonical payload and payload hash ([`RelayRequest::new`]).
///
/// The CPGW gate is not here: it needs the network (see the CLI's `--probe-broker`).
pub fn relay_accept(
    store: &StateStore,
    request: &AcceptRequest,
    now: i64,
) -> Result<Accepted, SidecarError> {
    validate_id("--remote-instance-id", &request.remote_instance_id)?;
    validate_id("--sidecar-id", &request.sidecar_id)?;

    // 1. Pairing.
    let pairing = store.pairing(&request.remote_instance_id, &request.sidecar_id)?;
    let pairing = gates::pairing_gate(pairing.as_ref(), now)?.clone();

    // 2. Session bound to this sidecar id and remote instance.
    let bound = |session: &RelaySessionRecord| {
        session.sidecar_id == request.sidecar_id
            && session.remote_instance_id == request.remote_instance_id
    };
    let session = match &request.session_id {
        Some(id) => {
            let session = store.relay_session(id)?.ok_or_else(unknown_session)?;
            if !bound(&session) {
                return Err(SidecarError::new(
                    ErrorCode::SidecarSessionInvalid,
                    "(the session is bound to another sidecar id or remote instance)",
                ));
            }
            if session.closed_at.is_some() {
                return Err(closed_session());
            }
            session
        }
        None => {
            let candidates =
                store.bound_relay_sessions(&request.remote_instance_id, &request.sidecar_id)?;
            // The newest unexpired one; else the newest (expired: gate 3 says so).
            let chosen = candidates
                .iter()
                .find(|session| session.is_open(now))
                .or_else(|| candidates.first())
                .cloned();
            chosen.ok_or_else(|| {
                SidecarError::new(
                    ErrorCode::SidecarSessionInvalid,
                    "(no open relay session is bound to this sidecar id and remote instance; \
                     create one with `ibkr-agent sidecar session create`)",
                )
            })?
        }
    };

    // 3. Expiry, then heartbeat.
    if session.expires_at <= now {
        return Err(expired_session());
    }
    let timeout = i64::try_from(request.heartbeat_timeout_seconds).unwrap_or(i64::MAX);
    if now.saturating_sub(session.last_heartbeat_at) > timeout {
        return Err(SidecarError::new(
            ErrorCode::SidecarHeartbeatStale,
            format!(
                "(no heartbeat for more than {timeout} s; record one with `ibkr-agent sidecar \
                 session heartbeat --session-id <id>`)"
            ),
        ));
    }

    // 4. Tool, scope, local grant, sanitizer, closed schema.
    if request.payload_json.len() > MAX_FRAME_PLAINTEXT {
        return Err(SidecarError::new(
            ErrorCode::ArgumentsInvalid,
            "(--payload-json is larger than a relay frame)",
        ));
    }
    let arguments: Value = serde_json::from_str(&request.payload_json).map_err(|_| {
        SidecarError::new(
            ErrorCode::ArgumentsInvalid,
            "(--payload-json is not valid JSON)",
        )
    })?;
    let tool = gates::check_tool_call(
        &request.tool_name,
        &request.scope,
        &pairing.local_scopes,
        &arguments,
    )?;

    // 5. The envelope the gateway would send.
    let request_id = request
        .request_id
        .unwrap_or_else(|| RequestId::from_rng(&mut OsRng));
    let envelope = RelayRequest::new(
        request_id,
        tool.name,
        tool.scope,
        // The narrowest token that could have made this call.
        &[tool.scope],
        &arguments,
        RELAY_ACCEPT_DEADLINE_MS,
        None,
    )
    .map_err(|error| {
        let detail = match error {
            EnvelopeError::BadPayload => {
                "(the payload cannot be canonicalized: numbers must be exactly representable)"
            }
            EnvelopeError::BadField | EnvelopeError::PayloadHashMismatch => {
                "(the envelope could not be built)"
            }
        };
        SidecarError::new(ErrorCode::ArgumentsInvalid, detail)
    })?;
    Ok(Accepted {
        request: envelope,
        session,
        pairing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::IdentityRecord;
    use protocol::identity::StaticKeypair;

    const NOW: i64 = 1_800_000_000;

    fn store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store
            .insert_identity(&IdentityRecord {
                sidecar_id: "sidecar-abcdef12".into(),
                display_name: "laptop".into(),
                public_key: StaticKeypair::from_secret_bytes([2; 32]).public(),
                has_secret: false,
                created_at: NOW - 10,
            })
            .unwrap();
        (dir, store)
    }

    fn pair(store: &StateStore, remote: &str, extra: &[&str]) -> PairingRecord {
        create_pairing(
            store,
            &PairingCreate {
                remote_instance_id: remote.into(),
                sidecar_id: "sidecar-example".into(),
                user_id: "local-user".into(),
                ttl_seconds: 300,
                extra_scopes: extra.iter().map(|s| s.to_string()).collect(),
            },
            NOW,
        )
        .unwrap()
        .0
    }

    fn accept(tool: &str, scope: &str, payload: &str) -> AcceptRequest {
        AcceptRequest {
            remote_instance_id: "remote-1".into(),
            sidecar_id: "sidecar-example".into(),
            tool_name: tool.into(),
            scope: scope.into(),
            payload_json: payload.into(),
            session_id: None,
            request_id: Some(RequestId([9; 16])),
            heartbeat_timeout_seconds: 45,
        }
    }

    fn code(result: Result<Accepted, SidecarError>) -> ErrorCode {
        result.unwrap_err().code()
    }

    #[test]
    fn the_seed_flow_forwards_an_envelope() {
        let (_dir, store) = store();
        let pairing = pair(&store, "remote-1", &[]);
        assert_eq!(pairing.expires_at, Some(NOW + 300));
        assert!(pairing.local_scopes.contains("ibkr:accounts:read"));
        assert!(!pairing.local_scopes.contains("ibkr:orders:write"));
        let session = create_session(&store, "remote-1", "sidecar-example", 300, NOW).unwrap();
        assert_eq!(session.session_id.len(), 32);
        assert_eq!(
            (session.expires_at, session.last_heartbeat_at),
            (NOW + 300, NOW)
        );
        let accepted = relay_accept(
            &store,
            &accept("ibkr_accounts_list", "ibkr:accounts:read", "{}"),
            NOW + 1,
        )
        .unwrap();
        assert_eq!(accepted.session.session_id, session.session_id);
        assert_eq!(accepted.request.payload, b"{}");
        accepted.request.validate().unwrap();
        assert_eq!(accepted.request.request_id, RequestId([9; 16]));
    }

    #[test]
    fn ttls_and_scopes_are_validated() {
        let (_dir, store) = store();
        let mut request = PairingCreate {
            remote_instance_id: "remote-1".into(),
            sidecar_id: "sidecar-example".into(),
            user_id: "local-user".into(),
            ttl_seconds: 0,
            extra_scopes: vec![],
        };
        assert_eq!(
            create_pairing(&store, &request, NOW).unwrap_err().code(),
            ErrorCode::CliArgumentInvalid
        );
        request.ttl_seconds = 300;
        request.extra_scopes = vec!["ibkr:everything".into()];
        assert_eq!(
            create_pairing(&store, &request, NOW).unwrap_err().code(),
            ErrorCode::CliArgumentInvalid
        );
        request.extra_scopes = vec!["ibkr:orders:write".into()];
        let (record, _) = create_pairing(&store, &request, NOW).unwrap();
        assert!(record.local_scopes.contains("ibkr:orders:write"));
        assert!(record.local_scopes.contains("ibkr:health:read"));
        assert_eq!(
            create_session(&store, "remote-1", "sidecar-example", 0, NOW)
                .unwrap_err()
                .code(),
            ErrorCode::CliArgumentInvalid
        );
    }

    #[test]
    fn sessions_need_an_active_pairing() {
        let (_dir, store) = store();
        assert_eq!(
            create_session(&store, "remote-1", "sidecar-example", 300, NOW)
                .unwrap_err()
                .code(),
            ErrorCode::SidecarPairingRequired
        );
        pair(&store, "remote-1", &[]);
        // Expired pairing.
        assert_eq!(
            create_session(&store, "remote-1", "sidecar-example", 300, NOW + 300)
                .unwrap_err()
                .code(),
            ErrorCode::SidecarPairingRequired
        );
    }

    #[test]
    fn gates_in_order() {
        let (_dir, store) = store();
        let ok = accept("ibkr_accounts_list", "ibkr:accounts:read", "{}");
        assert_eq!(
            code(relay_accept(&store, &ok, NOW)),
            ErrorCode::SidecarPairingRequired
        );
        pair(&store, "remote-1", &[]);
        pair(&store, "remote-2", &[]);
        assert_eq!(
            code(relay_accept(&store, &ok, NOW)),
            ErrorCode::SidecarSessionInvalid
        );
        let other = create_session(&store, "remote-2", "sidecar-example", 300, NOW).unwrap();
        // A session bound to another remote instance does not count.
        assert_eq!(
            code(relay_accept(&store, &ok, NOW)),
            ErrorCode::SidecarSessionInvalid
        );
        let mut explicit = ok.clone();
        explicit.session_id = Some(other.session_id.clone());
        assert_eq!(
            code(relay_accept(&store, &explicit, NOW)),
            ErrorCode::SidecarSessionInvalid
        );
        let session = create_session(&store, "remote-1", "sidecar-example", 100, NOW).unwrap();
        relay_accept(&store, &ok, NOW).unwrap();
        explicit.session_id = Some(session.session_id.clone());
        relay_accept(&store, &explicit, NOW).unwrap();
        // Heartbeat stale after the timeout (strictly greater), then expired.
        relay_accept(&store, &ok, NOW + 45).unwrap();
        assert_eq!(
            code(relay_accept(&store, &ok, NOW + 46)),
            ErrorCode::SidecarHeartbeatStale
        );
        heartbeat_session(&store, &session.session_id, NOW + 60).unwrap();
        relay_accept(&store, &ok, NOW + 61).unwrap();
        assert_eq!(
            code(relay_accept(&store, &ok, NOW + 100)),
            ErrorCode::SidecarSessionExpired
        );
        assert_eq!(
            heartbeat_session(&store, &session.session_id, NOW + 100)
                .unwrap_err()
                .code(),
            ErrorCode::SidecarSessionExpired
        );
        // Catalog, scope and local grant.
        let _fresh = create_session(&store, "remote-1", "sidecar-example", 300, NOW).unwrap();
        for (tool, scope, payload, expected) in [
            (
                "ibkr_nope",
                "ibkr:accounts:read",
                "{}",
                ErrorCode::ToolUnknown,
            ),
            (
                "ibkr_accounts_list",
                "ibkr:health:read",
                "{}",
                ErrorCode::ArgumentsInvalid,
            ),
            (
                "ibkr_accounts_list",
                "ibkr:accounts:read",
                r#"{"cookie":"x"}"#,
                ErrorCode::SensitiveMaterialRefused,
            ),
            (
                "ibkr_accounts_list",
                "ibkr:accounts:read",
                r#"{"extra":1}"#,
                ErrorCode::ArgumentsInvalid,
            ),
            (
                "ibkr_accounts_list",
                "ibkr:accounts:read",
                "{",
                ErrorCode::ArgumentsInvalid,
            ),
            (
                "ibkr_accounts_list",
                "ibkr:accounts:read",
                "[]",
                ErrorCode::ArgumentsInvalid,
            ),
        ] {
            assert_eq!(
                code(relay_accept(&store, &accept(tool, scope, payload), NOW + 1)),
                expected,
                "{tool} {scope} {payload}"
            );
        }
        // A pairing whose local grant was narrowed.
        store
            .set_local_scopes(
                "remote-1",
                "sidecar-example",
                &ScopeSet::from_list(&["ibkr:health:read"]),
            )
            .unwrap();
        assert_eq!(
            code(relay_accept(&store, &ok, NOW + 1)),
            ErrorCode::ScopeNotGrantedLocally
        );
        relay_accept(
            &store,
            &accept("ibkr_health", "ibkr:health:read", "{}"),
            NOW + 1,
        )
        .unwrap();
        // Revocation closes the bound sessions and refuses at once.
        let (_, closed) = revoke_pairing(&store, "remote-1", "sidecar-example", NOW + 2).unwrap();
        assert_eq!(closed, 2);
        assert_eq!(
            code(relay_accept(&store, &ok, NOW + 2)),
            ErrorCode::SidecarPairingRequired
        );
        assert_eq!(
            revoke_pairing(&store, "remote-1", "sidecar-example", NOW + 3)
                .unwrap_err()
                .code(),
            ErrorCode::SidecarPairingRequired
        );
    }

    /// A record as `sidecar pair` writes it: the gateway's key pinned, read-only scopes.
    fn pinned(store: &StateStore, remote: &str) {
        store
            .upsert_pairing(&PairingRecord {
                remote_instance_id: remote.into(),
                sidecar_id: "sidecar-abcdef12".into(),
                user_id: "user-1".into(),
                gateway_url: Some("https://gateway.example".into()),
                relay_url: Some("wss://gateway.example/relay".into()),
                gateway_public_key: Some(StaticKeypair::from_secret_bytes([3; 32]).public()),
                gateway_pairing_id: Some([7; 16]),
                local_scopes: ScopeSet::read_only_default(),
                created_at: NOW - 5,
                expires_at: None,
                revoked_at: None,
            })
            .unwrap();
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grants_and_revocations_change_only_what_they_name() {
        let (_dir, store) = store();
        pinned(&store, "gw-1");
        let target = scope_target(&store, None, NOW).unwrap();
        assert_eq!(target, ("gw-1".to_string(), "sidecar-abcdef12".to_string()));
        let ids = (target.0.as_str(), target.1.as_str());

        let change = change_local_scopes(
            &store,
            ids,
            ScopeEdit::Grant,
            &strings(&[
                "ibkr:orders:preview",
                "ibkr:orders:write",
                "ibkr:health:read",
            ]),
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(
            change.added,
            strings(&["ibkr:orders:preview", "ibkr:orders:write"])
        );
        assert!(change.removed.is_empty());
        let stored = store.pairing("gw-1", "sidecar-abcdef12").unwrap().unwrap();
        assert_eq!(stored.local_scopes, change.record.local_scopes);
        assert!(stored.local_scopes.contains("ibkr:orders:write"));
        assert!(stored.local_scopes.contains("ibkr:accounts:read"));
        // The pinned key and the pairing id are untouched.
        assert!(stored.gateway_public_key.is_some());
        assert_eq!(stored.gateway_pairing_id, Some([7; 16]));

        // Live needs its confirmation flag, and nothing changes without it.
        let refused = change_local_scopes(
            &store,
            ids,
            ScopeEdit::Grant,
            &strings(&["ibkr:orders:live"]),
            false,
            NOW,
        )
        .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::CliArgumentInvalid);
        assert!(refused.detail().unwrap().contains("--confirm-live"));
        let stored = store.pairing("gw-1", "sidecar-abcdef12").unwrap().unwrap();
        assert!(!stored.local_scopes.contains("ibkr:orders:live"));
        change_local_scopes(
            &store,
            ids,
            ScopeEdit::Grant,
            &strings(&["ibkr:orders:live"]),
            true,
            NOW,
        )
        .unwrap();

        // Taking write back takes live with it: live alone would mean nothing.
        let change = change_local_scopes(
            &store,
            ids,
            ScopeEdit::Revoke,
            &strings(&["ibkr:orders:write"]),
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(
            change.removed,
            strings(&["ibkr:orders:live", "ibkr:orders:write"])
        );
        let stored = store.pairing("gw-1", "sidecar-abcdef12").unwrap().unwrap();
        assert!(!stored.local_scopes.contains("ibkr:orders:write"));
        assert!(!stored.local_scopes.contains("ibkr:orders:live"));
        assert!(stored.local_scopes.contains("ibkr:orders:preview"));
    }

    #[test]
    fn grants_are_refused_where_they_would_be_wrong() {
        let (_dir, store) = store();
        // No pairing made by `sidecar pair`: the default target does not exist.
        assert_eq!(
            scope_target(&store, None, NOW).unwrap_err().code(),
            ErrorCode::SidecarPairingRequired
        );
        pinned(&store, "gw-1");
        let ids = ("gw-1", "sidecar-abcdef12");
        for (requested, confirm, why) in [
            (strings(&[]), false, "at least one"),
            (strings(&["ibkr:everything"]), false, "not a known scope"),
            (strings(&["ibkr:orders:live"]), true, "only adds to"),
        ] {
            let error =
                change_local_scopes(&store, ids, ScopeEdit::Grant, &requested, confirm, NOW)
                    .unwrap_err();
            assert_eq!(error.code(), ErrorCode::CliArgumentInvalid, "{requested:?}");
            assert_eq!(error.exit_code(), 2);
            assert!(error.detail().unwrap().contains(why), "{error}");
        }
        // Unknown ids, and a revoked pairing, cannot be granted anything.
        assert_eq!(
            change_local_scopes(
                &store,
                ("gw-2", "sidecar-abcdef12"),
                ScopeEdit::Grant,
                &strings(&["ibkr:orders:write"]),
                false,
                NOW
            )
            .unwrap_err()
            .code(),
            ErrorCode::SidecarPairingRequired
        );
        store
            .revoke_pairing("gw-1", "sidecar-abcdef12", NOW)
            .unwrap();
        assert_eq!(
            change_local_scopes(
                &store,
                ids,
                ScopeEdit::Grant,
                &strings(&["ibkr:orders:write"]),
                false,
                NOW + 1
            )
            .unwrap_err()
            .code(),
            ErrorCode::SidecarPairingRequired
        );
        let stored = store.pairing("gw-1", "sidecar-abcdef12").unwrap().unwrap();
        assert!(!stored.local_scopes.contains("ibkr:orders:write"));
    }

    #[test]
    fn parallel_grants_lose_nothing() {
        let (dir, store) = store();
        pinned(&store, "gw-1");
        drop(store);
        let scopes = ["ibkr:orders:preview", "ibkr:orders:write"];
        std::thread::scope(|threads| {
            for scope in scopes {
                let path = dir.path();
                threads.spawn(move || {
                    // Each grant on its own connection, as two CLI processes would.
                    let store = StateStore::open(path).unwrap();
                    change_local_scopes(
                        &store,
                        ("gw-1", "sidecar-abcdef12"),
                        ScopeEdit::Grant,
                        &strings(&[scope]),
                        false,
                        NOW,
                    )
                    .unwrap();
                });
            }
        });
        let store = StateStore::open(dir.path()).unwrap();
        let stored = store.pairing("gw-1", "sidecar-abcdef12").unwrap().unwrap();
        for scope in scopes {
            assert!(stored.local_scopes.contains(scope), "{scope} lost");
        }
    }
}
