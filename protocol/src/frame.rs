//! Frames: the plaintext messages inside encrypted transport records.

use crate::agents::{AgentApprovalRequest, AgentDecision, ApprovalId};
use crate::envelope::{RelayProgress, RelayRequest, RelayResponse, RequestId};
use serde::{Deserialize, Serialize};

/// Everything that travels on an established relay channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Liveness probe; the peer answers with `Pong` carrying the same number.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Gateway -> sidecar: a sanitized tool call.
    Request(RelayRequest),
    /// Sidecar -> gateway: the outcome of a call.
    Response(RelayResponse),
    /// Sidecar -> gateway: progress of a long call.
    Progress(RelayProgress),
    /// Gateway -> sidecar: the caller gave up (client cancelled or deadline passed).
    Cancel {
        request_id: RequestId,
    },
    /// Sidecar -> gateway: please extend the relay session before it expires.
    RenewSession,
    /// Gateway -> sidecar: the session now expires this many milliseconds after receipt.
    SessionRenewed {
        expires_in_ms: u64,
    },
    /// Sidecar -> gateway: the state of the local broker session, pushed when it changes so the
    /// gateway can answer health questions without a round trip.
    SidecarStatus(SidecarStatus),
    /// Either side: stop sending new requests; reconnect after `retry_after_ms`.
    GoAway {
        retry_after_ms: u64,
        reason: CloseReason,
    },
    /// Either side: the channel is closing now.
    Close {
        reason: CloseReason,
    },
    /// Gateway -> sidecar: an MCP client asks to act for this user (see [`crate::agents`]).
    AgentApprovalRequest(AgentApprovalRequest),
    /// Sidecar -> gateway: the owner approved or denied it.
    AgentDecision(AgentDecision),
    /// Sidecar -> gateway: the owner revoked this agent; end its tokens.
    AgentRevoked {
        approval_id: ApprovalId,
    },
    /// Gateway -> sidecar: the agent's refresh tokens are revoked and its access tokens refused.
    AgentRevokedAck {
        approval_id: ApprovalId,
    },
}

/// The sidecar's view of its local broker session, as pushed to the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarStatus {
    /// `ready`, `login_required`, `unreachable`, `competing` or `unknown`.
    pub broker_session: String,
    /// Sidecar build version (no paths, no account data).
    pub sidecar_version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    Shutdown,
    SessionExpired,
    HeartbeatTimeout,
    PairingRevoked,
    Replaced,
    ProtocolViolation,
    Overloaded,
}

impl Frame {
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
