//! The relay's two sides of routing between replicas ([`crate::cluster`] is the transport):
//!
//! - **forwarding**: a call for a user with no usable session here goes to the replica that
//!   holds one ([`Relay::forward_to_holder`]); the agent gets the same codes it would get from
//!   one replica, plus `CLUSTER_UNAVAILABLE` when NATS cannot be used;
//! - **holding**: this replica serves the subject of every user with a live session here
//!   ([`Relay::spawn_cluster_holder`]), checks what arrives as it checks its own calls, and
//!   runs it on the session ([`Relay::serve_forwarded`]).

use super::Relay;
use super::router::{
    CallOutcome, CallTrace, PreparedCall, Target, check_arguments, handed_over_failure,
};
use crate::cluster::wire::{Ack, Failure};
use crate::cluster::{ForwardError, Handler, IncomingCall};
use crate::error::GatewayError;
use protocol::catalog;
use protocol::envelope::{RelayProgress, RelayRequest};
use shared_safety::ErrorCode;
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the served subjects are reconciled with the live sessions, besides on every
/// session event.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

fn error_from(code: &str, detail: Option<String>) -> GatewayError {
    GatewayError {
        code: ErrorCode::from_code(code).unwrap_or(ErrorCode::RelayProtocolError),
        detail,
    }
}

impl Relay {
    /// Forwards a prepared call to the replica holding `user_id`'s session.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward_to_holder(
        &self,
        user_id: &str,
        request: RelayRequest,
        changes_broker_state: bool,
        deadline: Duration,
        progress: Option<mpsc::Sender<RelayProgress>>,
        cancel: &CancellationToken,
        trace: &mut CallTrace,
    ) -> Result<CallOutcome, GatewayError> {
        let Some(cluster) = &self.cluster else {
            return Err(GatewayError::new(ErrorCode::SidecarUnavailable));
        };
        let request_id = request.request_id;
        let forwarded = cluster
            .forward(
                user_id,
                request,
                changes_broker_state,
                progress,
                cancel,
                deadline,
            )
            .await;
        match forwarded {
            Ok(forwarded) => {
                trace.sidecar_id = Some(forwarded.sidecar_id.clone());
                trace.pairing_id = Some(forwarded.pairing_id);
                trace.journal = forwarded.journal;
                Ok(CallOutcome {
                    outcome: forwarded.outcome,
                    sidecar_id: forwarded.sidecar_id,
                    request_id,
                    journal: forwarded.journal,
                })
            }
            // Nothing was sent anywhere.
            Err(ForwardError::NoHolder) => Err(GatewayError::new(ErrorCode::SidecarUnavailable)),
            Err(ForwardError::Unavailable) => Err(GatewayError::new(ErrorCode::ClusterUnavailable)),
            Err(ForwardError::Refused { code, detail }) => Err(error_from(&code, detail)),
            Err(ForwardError::Cancelled) => Err(GatewayError::new(ErrorCode::Cancelled)),
            // The holder may have the call: an order's outcome is unknown, never "try again".
            Err(ForwardError::AckTimeout) => Err(handed_over_failure(
                changes_broker_state,
                GatewayError::new(ErrorCode::RequestTimeout),
            )),
            Err(ForwardError::Lost) => Err(handed_over_failure(
                changes_broker_state,
                GatewayError::new(ErrorCode::SidecarUnavailable),
            )),
            // The holder's relay already reported it as one replica would.
            Err(ForwardError::Failed { code, detail }) => Err(handed_over_failure(
                changes_broker_state,
                error_from(&code, detail),
            )),
        }
    }

    /// Runs a call another replica forwarded: the session gates here, the arguments checked
    /// again (the request is what the forwarder hashed), then the call on the session.
    pub(crate) async fn serve_forwarded(&self, mut call: IncomingCall) {
        let refuse = |error: GatewayError| Ack::Refused {
            code: error.code.code().to_string(),
            detail: error.detail,
        };
        let session = match self.session_for_user(&call.user_id).await {
            Ok(session) => session,
            Err(error) => {
                call.ack(&refuse(error)).await;
                return;
            }
        };
        if let Err(error) = checked(&call.request) {
            call.ack(&refuse(error)).await;
            return;
        }
        call.ack(&Ack::Accepted {
            sidecar_id: session.sidecar_id.clone(),
            pairing_id: session.pairing_id.to_hex(),
        })
        .await;
        let deadline =
            Duration::from_millis(call.request.deadline_ms).min(self.settings.request_timeout);
        let prepared = PreparedCall {
            target: Target::Local(session),
            request: call.request.clone(),
            deadline,
            changes_broker_state: call.changes_broker_state,
        };
        let (sender, mut updates) = mpsc::channel::<RelayProgress>(16);
        let call = Arc::new(call);
        let streaming = {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                while let Some(update) = updates.recv().await {
                    call.progress(update).await;
                }
            })
        };
        let mut trace = CallTrace::default();
        let result = self
            .forward(prepared, Some(sender), &call.cancel, &mut trace)
            .await;
        // Progress first, then the outcome.
        let _ = streaming.await;
        call.done(match result {
            Ok(outcome) => Ok((outcome.outcome, outcome.journal)),
            Err(error) => Err(Failure {
                code: error.code.code().to_string(),
                detail: error.detail,
            }),
        })
        .await;
    }

    /// Serves the subject of every user with a live session here, until shutdown: on every
    /// session event and every [`RECONCILE_EVERY`], the served set is made the set of users
    /// with a live session.
    pub(crate) fn spawn_cluster_holder(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let weak: Weak<Relay> = Arc::downgrade(self);
        let handler: Handler = Arc::new(move |call| {
            let weak = weak.clone();
            Box::pin(async move {
                if let Some(relay) = weak.upgrade() {
                    relay.serve_forwarded(call).await;
                }
            })
        });
        let mut events = self.registry.subscribe();
        let shutdown = self.shutdown.clone();
        let relay = Arc::downgrade(self);
        self.tasks.spawn(async move {
            let mut ticks = tokio::time::interval(RECONCILE_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                    _ = events.recv() => {}
                }
                let Some(relay) = relay.upgrade() else { break };
                let live: HashSet<String> = relay
                    .registry
                    .live_sidecars()
                    .into_iter()
                    .map(|sidecar| sidecar.user_id)
                    .collect();
                drop(relay);
                for user in cluster.served_users() {
                    if !live.contains(&user) {
                        cluster.stop_serving(&user);
                    }
                }
                for user in live {
                    if let Err(error) = cluster.serve_user(&user, Arc::clone(&handler)).await {
                        tracing::warn!(%error, "cluster: cannot serve a user's calls yet");
                    }
                }
            }
            for user in cluster.served_users() {
                cluster.stop_serving(&user);
            }
        });
    }
}

/// A forwarded request checked as this replica checks its own: a catalog tool, the payload
/// hashing to what it carries, the arguments passing the sanitizer and the tool's schema.
fn checked(request: &RelayRequest) -> Result<(), GatewayError> {
    let invalid = |detail: &str| GatewayError::with_detail(ErrorCode::ArgumentsInvalid, detail);
    let tool = catalog::find(&request.tool_name).ok_or_else(|| invalid("Unknown tool."))?;
    if protocol::canonical::payload_hash(&request.tool_name, &request.payload)
        != request.payload_hash
    {
        return Err(invalid("The forwarded payload does not match its hash."));
    }
    let arguments: serde_json::Value =
        serde_json::from_slice(&request.payload).map_err(|_| invalid("Unreadable payload."))?;
    check_arguments(tool, &arguments)
}
