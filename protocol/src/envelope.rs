//! Request and response envelopes carried inside encrypted frames.
//!
//! The envelope carries what the seed contract names (tool name, required scope, request id,
//! payload hash) plus the canonical payload itself, the scopes the caller's token holds, a
//! relative deadline and an optional idempotency key. It never carries the agent's bearer
//! token, cookies or any other credential: the gateway has sanitized the payload before it
//! builds one.

use crate::agents::ApprovalId;
use crate::canonical;
use crate::catalog::scopes;
use crate::limits::{MAX_FRAME_PLAINTEXT, MAX_SHORT_STRING};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Most scopes a [`RelayRequest`] may carry.
pub const MAX_TOKEN_SCOPES: usize = 32;

/// 128-bit request identifier chosen by the gateway; unique per relay session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub [u8; 16]);

impl RequestId {
    pub fn from_rng(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        RequestId(bytes)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(RequestId(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.to_hex())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A sanitized tool call forwarded by the gateway to the sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRequest {
    pub request_id: RequestId,
    pub tool_name: String,
    /// The scope the catalog requires for `tool_name`; the sidecar checks it against both the
    /// catalog and the scopes its local pairing record grants.
    pub scope: String,
    /// The scopes of the caller's OAuth token that this product defines, sorted and
    /// deduplicated (the token itself never travels). Scopes are granted twice: a tool runs
    /// only if both this set and the local pairing grant its scope, and an order on a live
    /// account only if both grant `ibkr:orders:live`. The gateway asserts this set; a
    /// compromised gateway could claim any scope, so the local grant is what bounds it.
    /// A receiver ignores scopes it does not know (a newer gateway may define more).
    pub token_scopes: Vec<String>,
    /// RFC 8785 canonical JSON of the sanitized arguments.
    pub payload: Vec<u8>,
    /// [`canonical::payload_hash`] of `tool_name` and `payload`.
    pub payload_hash: [u8; 32],
    /// Milliseconds the gateway will wait for the answer, counted from when the sidecar reads
    /// the frame (relative, so the two clocks never need to agree).
    pub deadline_ms: u64,
    pub idempotency_key: Option<String>,
    /// The approval behind the caller's token when the gateway's own authorization server
    /// issued it (see [`crate::agents`]); `None` for a token of an external provider. The
    /// sidecar refuses an agent it does not know or has revoked.
    pub agent: Option<ApprovalId>,
}

impl RelayRequest {
    /// Builds a request, computing the payload hash over the canonical form of `arguments`.
    /// `token_scopes` may hold anything a token carries: scopes this product does not define
    /// (a token may carry scopes for other resources) are left out.
    pub fn new<S: AsRef<str>>(
        request_id: RequestId,
        tool_name: &str,
        scope: &str,
        token_scopes: &[S],
        arguments: &serde_json::Value,
        deadline_ms: u64,
        idempotency_key: Option<String>,
    ) -> Result<Self, EnvelopeError> {
        let payload = canonical::canonicalize(arguments).map_err(|_| EnvelopeError::BadPayload)?;
        let mut token_scopes: Vec<String> = token_scopes
            .iter()
            .map(AsRef::as_ref)
            .filter(|scope| scopes::is_known(scope))
            .map(str::to_string)
            .collect();
        token_scopes.sort();
        token_scopes.dedup();
        let request = RelayRequest {
            request_id,
            tool_name: tool_name.to_string(),
            scope: scope.to_string(),
            token_scopes,
            payload_hash: canonical::payload_hash(tool_name, &payload),
            payload,
            deadline_ms,
            idempotency_key,
            agent: None,
        };
        request.validate()?;
        Ok(request)
    }

    /// Structural checks the receiver runs before anything else: bounded strings, a payload
    /// that is canonical JSON, and a hash that matches it.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        for field in [&self.tool_name, &self.scope] {
            if field.is_empty() || field.len() > MAX_SHORT_STRING {
                return Err(EnvelopeError::BadField);
            }
        }
        // Bounded, each once, in order: one encoding per set. Unknown scopes are let through
        // (they grant nothing here) so that a newer gateway's scopes do not break every call.
        if self.token_scopes.len() > MAX_TOKEN_SCOPES
            || self
                .token_scopes
                .iter()
                .any(|scope| scope.is_empty() || scope.len() > MAX_SHORT_STRING)
            || !self.token_scopes.windows(2).all(|pair| pair[0] < pair[1])
        {
            return Err(EnvelopeError::BadField);
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > MAX_SHORT_STRING)
        {
            return Err(EnvelopeError::BadField);
        }
        if self.payload.len() > MAX_FRAME_PLAINTEXT {
            return Err(EnvelopeError::BadPayload);
        }
        if canonical::payload_hash(&self.tool_name, &self.payload) != self.payload_hash {
            return Err(EnvelopeError::PayloadHashMismatch);
        }
        let text = std::str::from_utf8(&self.payload).map_err(|_| EnvelopeError::BadPayload)?;
        let recanonical =
            canonical::canonicalize_str(text).map_err(|_| EnvelopeError::BadPayload)?;
        if recanonical != self.payload {
            return Err(EnvelopeError::BadPayload);
        }
        Ok(())
    }

    /// The payload parsed back into JSON.
    pub fn arguments(&self) -> Result<serde_json::Value, EnvelopeError> {
        serde_json::from_slice(&self.payload).map_err(|_| EnvelopeError::BadPayload)
    }
}

/// A refusal or failure as it travels: a stable code from the shared error catalog and the
/// human-facing fields. The sidecar fills them from the catalog; the gateway renders them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// SCREAMING_SNAKE code, e.g. `BROKER_SESSION_REQUIRED`.
    pub code: String,
    pub message: String,
    pub retryable: bool,
    pub user_action: String,
}

/// What the laptop must do by hand before the call can succeed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualAction {
    pub code: String,
    pub message: String,
    /// What the person has to do, e.g. "Log in to the IBKR Client Portal Gateway".
    pub action: String,
    /// Where, e.g. "https://localhost:5000 in a browser on the laptop running the sidecar".
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The tool's structured result, as JSON text (already sanitized by the sidecar).
    Result { json: String },
    /// The call needs a person at the laptop (e.g. a CPGW browser login).
    ManualActionRequired(ManualAction),
    /// A gate or guard refused the call; nothing was sent to the broker.
    Refused(ErrorBody),
    /// The call was attempted and failed.
    Failed(ErrorBody),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayResponse {
    pub request_id: RequestId,
    pub outcome: Outcome,
    /// The last trade-journal entry this call wrote on the laptop (order tools), so the
    /// gateway's audit row anchors the journal's head where the journal's own file cannot
    /// rewrite it.
    pub journal: Option<JournalRef>,
}

/// One entry of the sidecar's trade journal: its sequence number and its keyed hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JournalRef {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// Progress of a long-running call (e.g. waiting for a fill), relayed to the MCP client as a
/// progress notification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayProgress {
    pub request_id: RequestId,
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope field empty, too long or malformed")]
    BadField,
    #[error("payload is not canonical JSON")]
    BadPayload,
    #[error("payload hash does not match the payload")]
    PayloadHashMismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RelayRequest {
        RelayRequest::new(
            RequestId([9; 16]),
            "ibkr_accounts_list",
            "ibkr:accounts:read",
            &["ibkr:accounts:read", "other:scope", "ibkr:health:read"],
            &serde_json::json!({}),
            30_000,
            None,
        )
        .unwrap()
    }

    #[test]
    fn tampered_payload_is_detected() {
        let mut tampered = request();
        tampered.payload = br#"{"x":1}"#.to_vec();
        assert_eq!(tampered.validate(), Err(EnvelopeError::PayloadHashMismatch));
    }

    #[test]
    fn non_canonical_payload_is_refused_even_with_matching_hash() {
        let mut sneaky = request();
        sneaky.payload = b"{ }".to_vec();
        sneaky.payload_hash = canonical::payload_hash(&sneaky.tool_name, &sneaky.payload);
        assert_eq!(sneaky.validate(), Err(EnvelopeError::BadPayload));
    }

    #[test]
    fn token_scopes_are_the_defined_ones_sorted_once() {
        assert_eq!(
            request().token_scopes,
            vec![
                "ibkr:accounts:read".to_string(),
                "ibkr:health:read".to_string()
            ]
        );
        let too_many: Vec<String> = (0..=MAX_TOKEN_SCOPES).map(|n| format!("s{n:03}")).collect();
        for bad in [
            vec![
                "ibkr:health:read".to_string(),
                "ibkr:accounts:read".to_string(),
            ],
            vec![
                "ibkr:health:read".to_string(),
                "ibkr:health:read".to_string(),
            ],
            vec![String::new()],
            vec!["x".repeat(MAX_SHORT_STRING + 1)],
            too_many,
        ] {
            let mut forged = request();
            forged.token_scopes = bad.clone();
            assert_eq!(forged.validate(), Err(EnvelopeError::BadField), "{bad:?}");
        }
        // A scope this version does not know (from a newer gateway) is carried, not refused.
        let mut newer = request();
        newer.token_scopes.push("ibkr:options:write".to_string());
        newer.token_scopes.sort();
        assert_eq!(newer.validate(), Ok(()));
    }

    #[test]
    fn request_id_hex_round_trip() {
        let id = RequestId([0xab; 16]);
        assert_eq!(RequestId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(RequestId::from_hex("zz"), None);
    }
}
