//! Agent connections the laptop approves: the messages between the gateway's built-in
//! authorization server and the sidecar of the user an MCP client asked to act for.
//!
//! The gateway sends an [`AgentApprovalRequest`] when a person on the authorization page names
//! a user; the owner compares its confirmation code with the one on that page and answers with
//! an [`AgentDecision`], possibly narrowing the scopes. Later the owner may revoke the agent
//! ([`crate::frame::Frame::AgentRevoked`]); the gateway acknowledges once the agent's refresh
//! tokens are dead. Every calls a token of such an agent makes names its approval
//! ([`crate::envelope::RelayRequest::agent`]), so the laptop refuses calls of an agent it does
//! not know or has revoked, and knows when each agent was last used.

use crate::catalog::scopes;
use crate::limits::MAX_SHORT_STRING;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest client name carried (characters are counted after the gateway's cleaning).
pub const MAX_CLIENT_NAME: usize = 100;
/// Longest client id or redirect URI carried.
pub const MAX_CLIENT_URI: usize = 2_048;
/// Length of a confirmation code: `XXXX-XXXX` from [`CONFIRMATION_ALPHABET`].
pub const CONFIRMATION_CODE_LEN: usize = 9;
/// Letters and digits a person cannot confuse (no 0/O, 1/I/L, 5/S, 8/B, 2/Z, U/V).
pub const CONFIRMATION_ALPHABET: &[u8] = b"ACDEFGHJKMNPQRTWXY34679";
/// Longest time an approval request may stay open.
pub const MAX_APPROVAL_MS: u64 = 15 * 60 * 1000;

/// 128-bit identifier of one approval (and so of the agent connection it creates).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ApprovalId(pub [u8; 16]);

impl ApprovalId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(ApprovalId(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for ApprovalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApprovalId({})", self.to_hex())
    }
}

impl fmt::Display for ApprovalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Gateway -> sidecar: an MCP client asks to act for this sidecar's user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentApprovalRequest {
    pub approval_id: ApprovalId,
    /// The OAuth client id (a URL for a client metadata document, or one the gateway issued).
    pub client_id: String,
    /// The name the client gave itself. Unverified for registered clients: shown as a claim.
    pub client_name: String,
    /// True when the client id is a metadata document URL (the name comes from the document
    /// that URL serves); false for a registration, where anyone may claim any name.
    pub client_verified: bool,
    /// Where the authorization code will be sent: what the owner should recognise.
    pub redirect_uri: String,
    /// The scopes asked for, catalog scopes only, sorted, each once.
    pub scopes: Vec<String>,
    /// The code the authorization page shows; the owner types or compares it.
    pub confirmation_code: String,
    /// How long the request stays open, relative to receipt.
    pub expires_in_ms: u64,
}

/// Sidecar -> gateway: the owner's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDecision {
    pub approval_id: ApprovalId,
    pub approved: bool,
    /// What the owner granted: a subset of the scopes asked for (empty when denied).
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgentMessageError {
    #[error("agent message field empty, too long or malformed")]
    BadField,
    #[error("scopes not catalog scopes, sorted, each once")]
    BadScopes,
}

/// True when `code` has the confirmation code's shape.
pub fn is_confirmation_code(code: &str) -> bool {
    let bytes = code.as_bytes();
    bytes.len() == CONFIRMATION_CODE_LEN
        && bytes.iter().enumerate().all(|(index, byte)| {
            if index == 4 {
                *byte == b'-'
            } else {
                CONFIRMATION_ALPHABET.contains(byte)
            }
        })
}

/// A confirmation code made of the bytes of `entropy` (any bytes: each picks one character;
/// the bias of `% 23` over a byte is far below what a person comparing codes could exploit).
pub fn confirmation_code(entropy: [u8; 8]) -> String {
    let mut code = String::with_capacity(CONFIRMATION_CODE_LEN);
    for (index, byte) in entropy.iter().enumerate() {
        if index == 4 {
            code.push('-');
        }
        let pick = CONFIRMATION_ALPHABET[usize::from(*byte) % CONFIRMATION_ALPHABET.len()];
        code.push(char::from(pick));
    }
    code
}

/// Scopes as these messages carry them: catalog scopes, sorted, each once, bounded.
fn check_scopes(list: &[String]) -> Result<(), AgentMessageError> {
    if list.len() > scopes::ALL.len()
        || list.iter().any(|scope| !scopes::is_known(scope))
        || !list.windows(2).all(|pair| pair[0] < pair[1])
    {
        return Err(AgentMessageError::BadScopes);
    }
    Ok(())
}

/// Characters that reorder or hide text on screen (bidirectional controls, zero-width marks):
/// a name or URI holding one could show the owner something other than what it is.
pub fn is_display_trap(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn printable(text: &str, max: usize) -> bool {
    !text.is_empty() && text.len() <= max && !text.chars().any(is_display_trap)
}

impl AgentApprovalRequest {
    pub fn validate(&self) -> Result<(), AgentMessageError> {
        if !printable(&self.client_id, MAX_CLIENT_URI)
            || !printable(&self.redirect_uri, MAX_CLIENT_URI)
            || !printable(&self.client_name, MAX_CLIENT_NAME * 4)
            || self.client_name.chars().count() > MAX_CLIENT_NAME
            || !is_confirmation_code(&self.confirmation_code)
            || self.expires_in_ms == 0
            || self.expires_in_ms > MAX_APPROVAL_MS
        {
            return Err(AgentMessageError::BadField);
        }
        check_scopes(&self.scopes)
    }
}

impl AgentDecision {
    pub fn validate(&self) -> Result<(), AgentMessageError> {
        check_scopes(&self.scopes)?;
        if !self.approved && !self.scopes.is_empty() {
            return Err(AgentMessageError::BadField);
        }
        Ok(())
    }
}

/// The scopes of `list` this product defines, sorted, each once (what the messages carry).
pub fn catalog_scopes<S: AsRef<str>>(list: &[S]) -> Vec<String> {
    let mut kept: Vec<String> = list
        .iter()
        .map(AsRef::as_ref)
        .filter(|scope| scopes::is_known(scope))
        .map(str::to_string)
        .collect();
    kept.sort();
    kept.dedup();
    kept
}

// Keep the short-string bound in one place: client ids and names are longer than envelope
// strings on purpose (URLs), everything else uses the common bound.
const _: () = assert!(MAX_CLIENT_URI > MAX_SHORT_STRING);

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AgentApprovalRequest {
        AgentApprovalRequest {
            approval_id: ApprovalId([7; 16]),
            client_id: "https://client.example/meta.json".into(),
            client_name: "Claude Code".into(),
            client_verified: true,
            redirect_uri: "http://127.0.0.1:33418/callback".into(),
            scopes: catalog_scopes(&["ibkr:marketdata:read", "ibkr:health:read", "other"]),
            confirmation_code: confirmation_code([1, 2, 3, 4, 5, 6, 7, 8]),
            expires_in_ms: 300_000,
        }
    }

    #[test]
    fn confirmation_codes_have_one_shape() {
        for seed in 0..=255u8 {
            let code = confirmation_code([seed; 8]);
            assert!(is_confirmation_code(&code), "{code}");
        }
        assert_eq!(confirmation_code([0; 8]), "AAAA-AAAA");
        for bad in [
            "",
            "AAAA_AAAA",
            "AAAAAAAAA",
            "aaaa-aaaa",
            "AAAA-AAA0",
            "AAAA-AAAAA",
        ] {
            assert!(!is_confirmation_code(bad), "{bad}");
        }
    }

    #[test]
    fn a_request_is_checked_field_by_field() {
        assert_eq!(request().validate(), Ok(()));
        type Change = Box<dyn Fn(&mut AgentApprovalRequest)>;
        let cases: Vec<Change> = vec![
            Box::new(|r| r.client_id.clear()),
            Box::new(|r| r.client_name = "x".repeat(MAX_CLIENT_NAME + 1)),
            Box::new(|r| r.client_name = "evil\nname".into()),
            Box::new(|r| r.client_name = "good\u{202E}txt.exe".into()),
            Box::new(|r| r.redirect_uri = "http://127.0.0.1/c\tb".into()),
            Box::new(|r| r.redirect_uri = "x".repeat(MAX_CLIENT_URI + 1)),
            Box::new(|r| r.confirmation_code = "1234".into()),
            Box::new(|r| r.expires_in_ms = 0),
            Box::new(|r| r.expires_in_ms = MAX_APPROVAL_MS + 1),
        ];
        for change in cases {
            let mut bad = request();
            change(&mut bad);
            assert_eq!(bad.validate(), Err(AgentMessageError::BadField));
        }
        let mut unsorted = request();
        unsorted.scopes.reverse();
        assert_eq!(unsorted.validate(), Err(AgentMessageError::BadScopes));
        let mut unknown = request();
        unknown.scopes = vec!["ibkr:everything".into()];
        assert_eq!(unknown.validate(), Err(AgentMessageError::BadScopes));
    }

    #[test]
    fn a_denial_grants_nothing() {
        let denial = AgentDecision {
            approval_id: ApprovalId([1; 16]),
            approved: false,
            scopes: vec!["ibkr:health:read".into()],
        };
        assert_eq!(denial.validate(), Err(AgentMessageError::BadField));
        let approval = AgentDecision {
            approved: true,
            ..denial
        };
        assert_eq!(approval.validate(), Ok(()));
    }
}
