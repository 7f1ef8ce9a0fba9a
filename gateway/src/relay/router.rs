//! Routing a tool call to the caller's sidecar.
//!
//! Gates, in order, each with its own code: relay enabled (`CONFIG_SIDECAR_FORBIDDEN`), an
//! active pairing for the user (`SIDECAR_PAIRING_REQUIRED`), a live session bound to one of
//! those pairings (`SIDECAR_UNAVAILABLE`), heartbeat fresh (`SIDECAR_HEARTBEAT_STALE`), session
//! unexpired (`SIDECAR_SESSION_EXPIRED`), room in flight (`RELAY_OVERLOADED`). The arguments
//! are sanitized before any of that: sensitive material is refused whatever the relay state.
//!
//! A call that times out, or that the MCP client cancels, sends `Cancel` to the sidecar; so
//! does a call whose future is dropped (the pending guard).

use crate::error::GatewayError;
use crate::relay::Relay;
use crate::relay::registry::Session;
use protocol::catalog::ToolSpec;
use protocol::envelope::{Outcome, RelayProgress, RelayRequest, RequestId};
use protocol::frame::{CloseReason, Frame};
use protocol::limits::MAX_SHORT_STRING;
use rand_core::OsRng;
use shared_safety::ErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The sidecar's answer and where it came from.
#[derive(Clone, Debug)]
pub struct CallOutcome {
    pub outcome: Outcome,
    pub sidecar_id: String,
    pub request_id: RequestId,
}

/// Removes the pending entry when the call ends in any way other than an answer, and tells
/// the sidecar to stop working on it.
struct PendingGuard {
    session: Arc<Session>,
    request_id: RequestId,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.session.abandon(self.request_id) {
            let cancel = Frame::Cancel {
                request_id: self.request_id,
            };
            if self.session.outbound.try_send(cancel).is_err() {
                tracing::debug!(request_id = %self.request_id, "cancel not queued: relay busy or closed");
            }
        }
    }
}

impl Relay {
    /// Picks the user's session, applying the gates. Sessions whose pairing has been revoked
    /// are closed on the way.
    pub(crate) async fn session_for_user(
        &self,
        user_id: &str,
    ) -> Result<Arc<Session>, GatewayError> {
        if !self.settings.enabled {
            return Err(GatewayError::new(ErrorCode::ConfigSidecarForbidden));
        }
        let pairings = self
            .store
            .active_pairings_for_user(user_id.to_string())
            .await
            .map_err(|error| {
                tracing::error!(%error, "pairing lookup failed");
                GatewayError::new(ErrorCode::InternalError)
            })?;
        if pairings.is_empty() {
            return Err(GatewayError::new(ErrorCode::SidecarPairingRequired));
        }
        let mut candidates = Vec::new();
        for session in self.registry.sessions_for_user(user_id) {
            let paired = pairings.iter().any(|pairing| {
                pairing.sidecar_id == session.sidecar_id
                    && pairing.sidecar_public_key == session.public_key
            });
            if !paired {
                session.request_close(CloseReason::PairingRevoked);
                continue;
            }
            if session.accepts_calls() {
                candidates.push(session);
            }
        }
        if candidates.is_empty() {
            return Err(GatewayError::new(ErrorCode::SidecarUnavailable));
        }
        let now = Instant::now();
        let timeout = self.settings.heartbeat.timeout();
        let healthy = candidates
            .iter()
            .find(|session| session.silence(now) < timeout && now < session.expires_at());
        if let Some(session) = healthy {
            return Ok(Arc::clone(session));
        }
        // None is healthy: report the most recent session's problem.
        let newest = &candidates[0];
        if newest.silence(now) >= timeout {
            Err(GatewayError::new(ErrorCode::SidecarHeartbeatStale))
        } else {
            Err(GatewayError::new(ErrorCode::SidecarSessionExpired))
        }
    }

    /// Relays one tool call for `user_id` and waits for the answer.
    pub async fn call(
        &self,
        user_id: &str,
        tool: &'static ToolSpec,
        arguments: &serde_json::Value,
        progress: Option<mpsc::Sender<RelayProgress>>,
        cancel: &CancellationToken,
    ) -> Result<CallOutcome, GatewayError> {
        check_arguments(arguments)?;
        let session = self.session_for_user(user_id).await?;
        self.call_on(&session, tool, arguments, progress, cancel)
            .await
    }

    /// Relays one call on a chosen session.
    pub(crate) async fn call_on(
        &self,
        session: &Arc<Session>,
        tool: &'static ToolSpec,
        arguments: &serde_json::Value,
        progress: Option<mpsc::Sender<RelayProgress>>,
        cancel: &CancellationToken,
    ) -> Result<CallOutcome, GatewayError> {
        check_arguments(arguments)?;
        let deadline = self.settings.request_timeout;
        let idempotency_key = match arguments.get("idempotency_key") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(key))
                if !key.is_empty() && key.len() <= MAX_SHORT_STRING =>
            {
                Some(key.clone())
            }
            Some(_) => {
                return Err(GatewayError::with_detail(
                    ErrorCode::ArgumentsInvalid,
                    format!("idempotency_key must be a string of 1 to {MAX_SHORT_STRING} bytes."),
                ));
            }
        };
        let request_id = RequestId::from_rng(&mut OsRng);
        let request = RelayRequest::new(
            request_id,
            tool.name,
            tool.scope,
            arguments,
            u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            idempotency_key,
        )
        .map_err(|_| {
            GatewayError::with_detail(
                ErrorCode::ArgumentsInvalid,
                "The arguments cannot be canonicalized.",
            )
        })?;

        let reply = session.begin_call(request_id, progress, self.settings.max_in_flight)?;
        let guard = PendingGuard {
            session: Arc::clone(session),
            request_id,
        };
        let started = Instant::now();
        let sent = tokio::select! {
            sent = tokio::time::timeout(deadline, session.outbound.send(Frame::Request(request))) => sent,
            _ = cancel.cancelled() => return Err(GatewayError::new(ErrorCode::Cancelled)),
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(GatewayError::new(ErrorCode::SidecarUnavailable)),
            Err(_) => return Err(GatewayError::new(ErrorCode::RequestTimeout)),
        }
        let remaining = deadline.saturating_sub(started.elapsed());
        let answer = tokio::select! {
            answer = reply => answer,
            _ = tokio::time::sleep(remaining) => {
                tracing::info!(%request_id, sidecar_id = %session.sidecar_id, "relay call timed out");
                return Err(GatewayError::new(ErrorCode::RequestTimeout));
            }
            _ = cancel.cancelled() => {
                tracing::info!(%request_id, sidecar_id = %session.sidecar_id, "relay call cancelled by the client");
                return Err(GatewayError::new(ErrorCode::Cancelled));
            }
        };
        // Answered (or failed by the driver): nothing left to cancel.
        drop(guard);
        match answer {
            Ok(Ok(outcome)) => Ok(CallOutcome {
                outcome,
                sidecar_id: session.sidecar_id.clone(),
                request_id,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(GatewayError::new(ErrorCode::RelayProtocolError)),
        }
    }

    /// How long a relayed call may take.
    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }
}

/// Refuses sensitive material (by path and kind, never by value).
fn check_arguments(arguments: &serde_json::Value) -> Result<(), GatewayError> {
    if !arguments.is_object() {
        return Err(GatewayError::with_detail(
            ErrorCode::ArgumentsInvalid,
            "Arguments must be a JSON object.",
        ));
    }
    shared_safety::sanitize::check_request(arguments).map_err(|found| {
        GatewayError::with_detail(
            ErrorCode::SensitiveMaterialRefused,
            format!("Found: {found}."),
        )
    })
}
