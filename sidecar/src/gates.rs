//! The sidecar's own per-request gates, run on every relayed call before any broker traffic.
//!
//! The gateway has already checked the agent's token, the pairing and the payload; the sidecar
//! checks again on its side of the trust boundary, with its own records, in this order:
//!
//! a. the envelope is well formed and its payload hash matches (PAYLOAD_HASH_MISMATCH);
//! b. the local pairing for this gateway instance is still active and pins the key this
//!    connection was authenticated with (SIDECAR_PAIRING_REQUIRED);
//! c. the relay session is bound to this sidecar and instance, unexpired, with a fresh
//!    heartbeat (SIDECAR_SESSION_INVALID / SIDECAR_SESSION_EXPIRED / SIDECAR_HEARTBEAT_STALE);
//! d. the tool exists, the envelope's scope is the catalog's, and the local pairing grants it
//!    (TOOL_UNKNOWN / ARGUMENTS_INVALID / SCOPE_NOT_GRANTED_LOCALLY), and so does the caller's
//!    token as the gateway reports it (AUTH_INSUFFICIENT_SCOPE: the gateway should never send
//!    such a call). Scopes are granted twice, and a tool runs only if both grants allow it;
//!    likewise `ibkr:orders:live` ([`CheckedRequest::live_scope_granted`]);
//! e. the arguments carry no sensitive material and fit the tool's closed schema
//!    (SENSITIVE_MATERIAL_REFUSED / ARGUMENTS_INVALID, via `shared_safety::sanitize` and
//!    `shared_safety::schema`);
//! f. for broker tools, the CPGW session is usable (manual login action / BROKER_UNREACHABLE).
//!
//! a-e are pure ([`check_request`]); f needs CPGW ([`check_broker_session`]) but its decision
//! is pure too ([`broker_decision`]). [`pairing_gate`] and [`check_tool_call`] are the pieces
//! `ibkr-agent sidecar relay accept` shares with the daemon, so both refuse the same requests.

use crate::cpgw::broker_state::BrokerState;
use crate::cpgw::client::{CpgwClient, CpgwError};
use crate::cpgw::keepalive::publish;
use crate::cpgw::manual_login_action;
use crate::cpgw::types::AuthStatus;
use crate::error::SidecarError;
use crate::session::{Binding, SessionSnapshot};
use crate::state::PairingRecord;
use protocol::catalog::{self, ToolSpec};
use protocol::envelope::{EnvelopeError, Outcome, RelayRequest};
use serde_json::{Map, Value};
use shared_safety::ErrorCode;
use shared_safety::scope::ScopeSet;
use shared_safety::{sanitize, schema};
use tokio::sync::watch;
use tokio::time::Instant;

/// A request that passed gates a-e.
#[derive(Clone, Debug)]
pub struct CheckedRequest {
    pub tool: &'static ToolSpec,
    pub arguments: Map<String, Value>,
    /// Both the caller's token and the local pairing grant `ibkr:orders:live`: the one
    /// condition under which the order guards may consider a live account.
    pub live_scope_granted: bool,
}

fn refused(code: ErrorCode, detail: Option<&str>) -> Outcome {
    Outcome::Refused(code.body(detail))
}

/// Gates a-e. `pairing` is the record for `(binding.remote_instance_id, binding.sidecar_id)`
/// as just re-read from the state store; `now` is the monotonic clock, `now_unix` wall time.
pub fn check_request(
    request: &RelayRequest,
    pairing: Option<&PairingRecord>,
    binding: &Binding,
    session: &SessionSnapshot,
    now: Instant,
    now_unix: i64,
) -> Result<CheckedRequest, Outcome> {
    // a. Envelope structure and payload hash.
    match request.validate() {
        Ok(()) => {}
        Err(EnvelopeError::PayloadHashMismatch) => {
            return Err(refused(ErrorCode::PayloadHashMismatch, None));
        }
        Err(EnvelopeError::BadField) => {
            return Err(refused(
                ErrorCode::ArgumentsInvalid,
                Some("(an envelope field is empty, too long or malformed)"),
            ));
        }
        Err(EnvelopeError::BadPayload) => {
            return Err(refused(
                ErrorCode::ArgumentsInvalid,
                Some("(payload is not canonical JSON)"),
            ));
        }
    }

    // b. Local pairing still active, for this instance, with the key we authenticated.
    let pairing = match pairing_gate(pairing, now_unix) {
        Ok(record)
            if record.sidecar_id == binding.sidecar_id
                && record.remote_instance_id == binding.remote_instance_id
                && record.gateway_public_key == Some(binding.gateway_public_key) =>
        {
            record
        }
        // Bare: the gateway learns that the pairing is gone, not why.
        _ => return Err(refused(ErrorCode::SidecarPairingRequired, None)),
    };

    // c. Session bound, unexpired, heartbeat fresh.
    if session.closed
        || session.sidecar_id != binding.sidecar_id
        || session.remote_instance_id != binding.remote_instance_id
    {
        return Err(refused(ErrorCode::SidecarSessionInvalid, None));
    }
    if now >= session.expires_at {
        return Err(refused(ErrorCode::SidecarSessionExpired, None));
    }
    if now.saturating_duration_since(session.last_authentic) >= session.heartbeat_timeout {
        return Err(refused(ErrorCode::SidecarHeartbeatStale, None));
    }

    // d-e. Tool, catalog scope, local grant, sensitive material, closed schema.
    let arguments = request
        .arguments()
        .map_err(|_| refused(ErrorCode::ArgumentsInvalid, Some("(payload is not JSON)")))?;
    let tool = check_tool_call(
        &request.tool_name,
        &request.scope,
        &pairing.local_scopes,
        &arguments,
    )
    .map_err(|error| Outcome::Refused(error.body()))?;
    if !request.token_scopes.iter().any(|scope| scope == tool.scope) {
        return Err(refused(
            ErrorCode::AuthInsufficientScope,
            Some("(the caller's token does not grant the tool's scope)"),
        ));
    }
    let live_scope_granted = pairing.local_scopes.contains(catalog::scopes::ORDERS_LIVE)
        && request
            .token_scopes
            .iter()
            .any(|scope| scope == catalog::scopes::ORDERS_LIVE);
    let Value::Object(arguments) = arguments else {
        return Err(refused(
            ErrorCode::ArgumentsInvalid,
            Some("(arguments must be a JSON object)"),
        ));
    };
    Ok(CheckedRequest {
        tool,
        arguments,
        live_scope_granted,
    })
}

/// Gate b on its own: the pairing exists, is not revoked and has not expired at `now_unix`.
/// The error says which (the CLI shows it; the daemon answers the gateway without it).
pub fn pairing_gate(
    pairing: Option<&PairingRecord>,
    now_unix: i64,
) -> Result<&PairingRecord, SidecarError> {
    match pairing {
        None => Err(SidecarError::new(
            ErrorCode::SidecarPairingRequired,
            "(there is no pairing record for this remote instance and sidecar id)",
        )),
        Some(record) if record.revoked_at.is_some() => Err(SidecarError::new(
            ErrorCode::SidecarPairingRequired,
            "(the pairing for this remote instance and sidecar id was revoked)",
        )),
        Some(record) if !record.is_active(now_unix) => Err(SidecarError::new(
            ErrorCode::SidecarPairingRequired,
            "(the pairing for this remote instance and sidecar id has expired)",
        )),
        Some(record) => Ok(record),
    }
}

/// Gates d and e on their own, shared by the daemon and `ibkr-agent sidecar relay accept`:
///
/// - the tool exists (TOOL_UNKNOWN);
/// - `scope` is exactly the catalog's scope for it (ARGUMENTS_INVALID);
/// - the local pairing grants that scope (SCOPE_NOT_GRANTED_LOCALLY);
/// - the arguments carry no cookie, authorization, token, credential, secret or local path
///   (SENSITIVE_MATERIAL_REFUSED; the detail is the kind and the path, never the value);
/// - the arguments fit the tool's closed schema (ARGUMENTS_INVALID with the rule and path).
pub fn check_tool_call(
    tool_name: &str,
    scope: &str,
    local_scopes: &ScopeSet,
    arguments: &Value,
) -> Result<&'static ToolSpec, SidecarError> {
    let Some(tool) = catalog::find(tool_name) else {
        return Err(SidecarError::bare(ErrorCode::ToolUnknown));
    };
    if scope != tool.scope {
        return Err(SidecarError::new(
            ErrorCode::ArgumentsInvalid,
            format!(
                "(the scope does not match the tool: the catalog requires {} for {})",
                tool.scope, tool.name
            ),
        ));
    }
    if !local_scopes.contains(tool.scope) {
        return Err(SidecarError::new(
            ErrorCode::ScopeNotGrantedLocally,
            format!(
                "(scope {scope} is not granted locally; grant it with `ibkr-agent sidecar pairing grant --scope {scope}`)",
                scope = tool.scope
            ),
        ));
    }
    if let Err(material) = sanitize::check_request(arguments) {
        return Err(SidecarError::new(
            ErrorCode::SensitiveMaterialRefused,
            // The shared sanitizer only puts echo-safe segments into the path.
            format!("({material})"),
        ));
    }
    if let Err(violation) = schema::validate_arguments(tool, arguments) {
        return Err(SidecarError::new(
            ErrorCode::ArgumentsInvalid,
            format!("({violation})"),
        ));
    }
    Ok(tool)
}

/// Gate f's decision on an `auth/status` result.
pub fn broker_decision(
    result: &Result<AuthStatus, CpgwError>,
    location: &str,
) -> Result<(), Outcome> {
    match result {
        Ok(status) if status.authenticated => Ok(()),
        Ok(_) | Err(CpgwError::NotAuthenticated) => {
            Err(Outcome::ManualActionRequired(manual_login_action(location)))
        }
        Err(error) => Err(Outcome::Failed(error.error_code().body(None))),
    }
}

/// Gate f: asks CPGW, publishes what it saw (so the gateway learns of a lapsed login at once),
/// and decides.
pub async fn check_broker_session(
    client: &CpgwClient,
    broker: &watch::Sender<BrokerState>,
) -> Result<AuthStatus, Outcome> {
    let result = client.auth_status().await;
    publish(broker, BrokerState::from_auth(&result));
    broker_decision(&result, &client.portal_location())?;
    result.map_err(|error| Outcome::Failed(error.error_code().body(None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::envelope::RequestId;
    use protocol::identity::PublicKey;
    use protocol::identity::StaticKeypair;
    use serde_json::json;
    use std::time::Duration;

    const NOW_UNIX: i64 = 1_800_000_000;

    fn gateway_key() -> PublicKey {
        StaticKeypair::from_secret_bytes([5; 32]).public()
    }

    fn binding() -> Binding {
        Binding {
            sidecar_id: "sidecar-1".into(),
            remote_instance_id: "remote-1".into(),
            gateway_public_key: gateway_key(),
        }
    }

    fn pairing() -> PairingRecord {
        PairingRecord {
            remote_instance_id: "remote-1".into(),
            sidecar_id: "sidecar-1".into(),
            user_id: "user-1".into(),
            gateway_url: None,
            relay_url: None,
            gateway_public_key: Some(gateway_key()),
            gateway_pairing_id: Some([2; 16]),
            local_scopes: ScopeSet::read_only_default(),
            created_at: NOW_UNIX - 100,
            expires_at: None,
            revoked_at: None,
        }
    }

    fn session(now: Instant) -> SessionSnapshot {
        SessionSnapshot {
            session_id: [1; 16],
            sidecar_id: "sidecar-1".into(),
            remote_instance_id: "remote-1".into(),
            established_at: now,
            expires_at: now + Duration::from_secs(3600),
            last_authentic: now,
            heartbeat_timeout: Duration::from_secs(45),
            closed: false,
        }
    }

    fn request(tool: &str, scope: &str, arguments: Value) -> RelayRequest {
        RelayRequest::new(
            RequestId([7; 16]),
            tool,
            scope,
            &[scope],
            &arguments,
            30_000,
            None,
        )
        .unwrap()
    }

    fn code(result: Result<CheckedRequest, Outcome>) -> String {
        match result {
            Ok(_) => "OK".into(),
            Err(Outcome::Refused(body) | Outcome::Failed(body)) => body.code,
            Err(Outcome::ManualActionRequired(action)) => action.code,
            Err(Outcome::Result { .. }) => "RESULT".into(),
        }
    }

    fn run(
        request: &RelayRequest,
        pairing: Option<&PairingRecord>,
        session_at: SessionSnapshot,
        now: Instant,
    ) -> String {
        code(check_request(
            request,
            pairing,
            &binding(),
            &session_at,
            now,
            NOW_UNIX,
        ))
    }

    #[test]
    fn a_good_request_passes() {
        let now = Instant::now();
        let req = request("ibkr_accounts_list", "ibkr:accounts:read", json!({}));
        let checked = check_request(
            &req,
            Some(&pairing()),
            &binding(),
            &session(now),
            now,
            NOW_UNIX,
        )
        .unwrap();
        assert_eq!(checked.tool.name, "ibkr_accounts_list");
        assert!(checked.arguments.is_empty());
    }

    #[test]
    fn hash_mismatch_comes_first() {
        let now = Instant::now();
        let mut req = request("ibkr_accounts_list", "ibkr:accounts:read", json!({}));
        req.payload = br#"{"x":1}"#.to_vec();
        // Even with no pairing at all, the envelope check answers first.
        assert_eq!(run(&req, None, session(now), now), "PAYLOAD_HASH_MISMATCH");
    }

    #[test]
    fn revoked_expired_missing_or_rekeyed_pairing_is_refused() {
        let now = Instant::now();
        let req = request("ibkr_accounts_list", "ibkr:accounts:read", json!({}));
        let mut revoked = pairing();
        revoked.revoked_at = Some(NOW_UNIX - 1);
        assert_eq!(
            run(&req, Some(&revoked), session(now), now),
            "SIDECAR_PAIRING_REQUIRED"
        );
        let mut expired = pairing();
        expired.expires_at = Some(NOW_UNIX);
        assert_eq!(
            run(&req, Some(&expired), session(now), now),
            "SIDECAR_PAIRING_REQUIRED"
        );
        assert_eq!(
            run(&req, None, session(now), now),
            "SIDECAR_PAIRING_REQUIRED"
        );
        let mut rekeyed = pairing();
        rekeyed.gateway_public_key = Some(StaticKeypair::from_secret_bytes([6; 32]).public());
        assert_eq!(
            run(&req, Some(&rekeyed), session(now), now),
            "SIDECAR_PAIRING_REQUIRED"
        );
    }

    #[test]
    fn session_binding_expiry_and_heartbeat() {
        let now = Instant::now();
        let req = request("ibkr_accounts_list", "ibkr:accounts:read", json!({}));
        let mut other = session(now);
        other.sidecar_id = "sidecar-2".into();
        assert_eq!(
            run(&req, Some(&pairing()), other, now),
            "SIDECAR_SESSION_INVALID"
        );
        let mut other_instance = session(now);
        other_instance.remote_instance_id = "remote-2".into();
        assert_eq!(
            run(&req, Some(&pairing()), other_instance, now),
            "SIDECAR_SESSION_INVALID"
        );
        let mut closed = session(now);
        closed.closed = true;
        assert_eq!(
            run(&req, Some(&pairing()), closed, now),
            "SIDECAR_SESSION_INVALID"
        );
        let later = now + Duration::from_secs(3600);
        let mut fresh = session(now);
        fresh.last_authentic = later;
        assert_eq!(
            run(&req, Some(&pairing()), fresh, later),
            "SIDECAR_SESSION_EXPIRED"
        );
        let stale_at = now + Duration::from_secs(45);
        assert_eq!(
            run(&req, Some(&pairing()), session(now), stale_at),
            "SIDECAR_HEARTBEAT_STALE"
        );
    }

    #[test]
    fn the_token_must_grant_the_scope_too_and_live_needs_both_grants() {
        let now = Instant::now();
        let with_token = |scopes: &[&str]| {
            RelayRequest::new(
                RequestId([8; 16]),
                "ibkr_buy",
                "ibkr:orders:write",
                scopes,
                &json!({"symbol": "AAPL", "cash_amount": "10"}),
                30_000,
                None,
            )
            .unwrap()
        };
        let check = |request: &RelayRequest, pairing: &PairingRecord| {
            check_request(
                request,
                Some(pairing),
                &binding(),
                &session(now),
                now,
                NOW_UNIX,
            )
        };
        let mut trading = pairing();
        trading.local_scopes = ScopeSet::from_list(&["ibkr:orders:write"]);
        let mut live = pairing();
        live.local_scopes = ScopeSet::from_list(&["ibkr:orders:write", "ibkr:orders:live"]);

        // A gateway that forwards a call the token does not allow is refused.
        let read_only_token = with_token(&["ibkr:orders:read"]);
        assert_eq!(
            code(check(&read_only_token, &live)),
            "AUTH_INSUFFICIENT_SCOPE"
        );
        // Live only when the token and the pairing both grant it.
        let write = with_token(&["ibkr:orders:write"]);
        let write_live = with_token(&["ibkr:orders:write", "ibkr:orders:live"]);
        for (request, pairing, expected) in [
            (&write, &trading, false),
            (&write, &live, false),
            (&write_live, &trading, false),
            (&write_live, &live, true),
        ] {
            let checked = check(request, pairing).unwrap();
            assert_eq!(
                checked.live_scope_granted, expected,
                "{:?} {:?}",
                request.token_scopes, pairing.local_scopes
            );
        }
    }

    #[test]
    fn unknown_tool_wrong_scope_and_local_grant() {
        let now = Instant::now();
        let unknown = request("ibkr_launch_rockets", "ibkr:accounts:read", json!({}));
        assert_eq!(
            run(&unknown, Some(&pairing()), session(now), now),
            "TOOL_UNKNOWN"
        );
        let wrong_scope = request("ibkr_accounts_list", "ibkr:health:read", json!({}));
        assert_eq!(
            run(&wrong_scope, Some(&pairing()), session(now), now),
            "ARGUMENTS_INVALID"
        );
        let mut narrow = pairing();
        narrow.local_scopes = ScopeSet::from_list(&["ibkr:health:read"]);
        let req = request("ibkr_accounts_list", "ibkr:accounts:read", json!({}));
        assert_eq!(
            run(&req, Some(&narrow), session(now), now),
            "SCOPE_NOT_GRANTED_LOCALLY"
        );
        let health = request("ibkr_health", "ibkr:health:read", json!({}));
        assert_eq!(run(&health, Some(&narrow), session(now), now), "OK");
    }

    #[test]
    fn sensitive_payload_is_refused_without_echoing_the_value() {
        let now = Instant::now();
        let req = request(
            "ibkr_accounts_list",
            "ibkr:accounts:read",
            json!({"note": "Bearer sk-very-secret-value"}),
        );
        let result = check_request(
            &req,
            Some(&pairing()),
            &binding(),
            &session(now),
            now,
            NOW_UNIX,
        );
        let Err(Outcome::Refused(body)) = result else {
            panic!("expected a refusal");
        };
        assert_eq!(body.code, "SENSITIVE_MATERIAL_REFUSED");
        assert!(body.message.contains("/note"));
        assert!(!body.message.contains("very-secret"));
    }

    #[test]
    fn unknown_fields_and_non_objects_are_refused() {
        let now = Instant::now();
        let req = request(
            "ibkr_accounts_list",
            "ibkr:accounts:read",
            json!({"limit": 5}),
        );
        assert_eq!(
            run(&req, Some(&pairing()), session(now), now),
            "ARGUMENTS_INVALID"
        );
        let req = request("ibkr_accounts_list", "ibkr:accounts:read", json!([1, 2]));
        assert_eq!(
            run(&req, Some(&pairing()), session(now), now),
            "ARGUMENTS_INVALID"
        );
    }

    #[test]
    fn broker_decisions() {
        let location = "https://localhost:5000";
        let ok = AuthStatus {
            authenticated: true,
            connected: true,
            competing: false,
        };
        assert!(broker_decision(&Ok(ok), location).is_ok());
        let logged_out = AuthStatus::default();
        match broker_decision(&Ok(logged_out), location) {
            Err(Outcome::ManualActionRequired(action)) => {
                assert_eq!(action.code, "BROKER_SESSION_REQUIRED");
                assert!(
                    action
                        .location
                        .starts_with("https://localhost:5000 on the laptop")
                );
                assert!(action.action.contains("Nothing logs in for you"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            broker_decision(&Err(CpgwError::NotAuthenticated), location),
            Err(Outcome::ManualActionRequired(_))
        ));
        match broker_decision(&Err(CpgwError::Unreachable), location) {
            Err(Outcome::Failed(body)) => assert_eq!(body.code, "BROKER_UNREACHABLE"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn shared_checks_never_echo_a_sensitive_key_or_value() {
        let scopes = ScopeSet::read_only_default();
        for arguments in [
            json!({"Bearer abc.def.ghi": 1}),
            json!({"symbol": "Bearer abc.def"}),
            json!({"nested": {"token=abc123secret": "x"}}),
            json!({"symbol": "/home/u/.ssh/id_rsa"}),
        ] {
            let error = check_tool_call(
                "ibkr_accounts_list",
                "ibkr:accounts:read",
                &scopes,
                &arguments,
            )
            .unwrap_err();
            assert_eq!(
                error.code(),
                ErrorCode::SensitiveMaterialRefused,
                "{arguments}"
            );
            let detail = error.detail().unwrap_or_default();
            assert!(detail.contains(" at /"), "{detail}");
            for secret in ["abc", "id_rsa", ".ssh", "secret"] {
                assert!(!detail.contains(secret), "{detail}");
            }
        }
        let error = check_tool_call(
            "ibkr_accounts_list",
            "ibkr:accounts:read",
            &scopes,
            &json!({"extra": 1}),
        )
        .unwrap_err();
        assert_eq!(error.code(), ErrorCode::ArgumentsInvalid);
        assert!(error.body().message.contains("unknown field at /extra"));
        let error = check_tool_call(
            "ibkr_accounts_list",
            "ibkr:health:read",
            &scopes,
            &json!({}),
        )
        .unwrap_err();
        assert_eq!(error.code(), ErrorCode::ArgumentsInvalid);
        assert!(error.body().message.contains("requires ibkr:accounts:read"));
    }

    #[test]
    fn the_pairing_gate_says_why() {
        assert!(
            pairing_gate(None, NOW_UNIX)
                .unwrap_err()
                .detail()
                .unwrap()
                .contains("no pairing")
        );
        let mut revoked = pairing();
        revoked.revoked_at = Some(NOW_UNIX - 1);
        assert!(
            pairing_gate(Some(&revoked), NOW_UNIX)
                .unwrap_err()
                .detail()
                .unwrap()
                .contains("revoked")
        );
        let mut expired = pairing();
        expired.expires_at = Some(NOW_UNIX);
        assert!(
            pairing_gate(Some(&expired), NOW_UNIX)
                .unwrap_err()
                .detail()
                .unwrap()
                .contains("expired")
        );
        assert!(pairing_gate(Some(&pairing()), NOW_UNIX).is_ok());
    }
}
