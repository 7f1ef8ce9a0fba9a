//! One relayed call, from envelope to sanitized outcome: gates a-e, the journal anchor for the
//! tools that change broker state, gate f for broker tools, the tool itself, then the response
//! sanitizer and the size bound.

use crate::clock::now_unix_seconds;
use crate::context::DaemonContext;
use crate::gates;
use crate::session::Binding;
use crate::session::SharedSession;
use crate::tools;
use crate::tools::context::{ProgressSink, ToolContext};
use protocol::envelope::{Outcome, RelayRequest};
use protocol::limits::MAX_FRAME_PLAINTEXT;
use serde_json::Value;
use shared_safety::ErrorCode;
use shared_safety::sanitize::sanitize_response;
use tokio::time::Instant;

/// Room left in a frame for the envelope around a result.
const MAX_RESULT_JSON: usize = MAX_FRAME_PLAINTEXT - 4096;

/// What a request task knows about the connection it arrived on.
pub(crate) struct ConnectionInfo {
    pub binding: Binding,
    pub session: SharedSession,
    /// Where tools' progress frames go (the connection forwards them while the request is in
    /// flight); `None` drops them.
    pub progress: Option<ProgressSender>,
}

/// The connection's progress queue (bounded; a full queue drops a progress update rather than
/// stalling the tool).
pub(crate) type ProgressSender = tokio::sync::mpsc::Sender<protocol::envelope::RelayProgress>;

/// Time kept back from a call's deadline for its answer to travel back.
const ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs one relayed call. `deadline`: when the gateway stops waiting for the answer.
/// Recorded for the owner's console: tool, outcome code, duration (never the arguments).
pub(crate) async fn handle(
    context: &DaemonContext,
    connection: &ConnectionInfo,
    request: &RelayRequest,
    deadline: Instant,
) -> Outcome {
    let timer = context.activity.start_call(&request.tool_name);
    let outcome = run_call(context, connection, request, deadline).await;
    timer.finish(&outcome);
    outcome
}

async fn run_call(
    context: &DaemonContext,
    connection: &ConnectionInfo,
    request: &RelayRequest,
    deadline: Instant,
) -> Outcome {
    // Per request, as the store holds it now (from memory unless something changed): a
    // revoke or scope change from the CLI applies to the next call.
    let pairing = match context.store.pairing(
        &connection.binding.remote_instance_id,
        &connection.binding.sidecar_id,
    ) {
        Ok(pairing) => pairing,
        Err(error) => {
            tracing::error!(code = %error.code(), "state store unreadable; refusing the call");
            return Outcome::Refused(ErrorCode::StateStoreError.body(None));
        }
    };
    // An agent of the built-in authorization server runs only while approved here, and with
    // no more than the scopes its owner granted.
    let narrowed;
    let request = match &request.agent {
        None => request,
        Some(agent) => {
            match crate::agents::admit(&context.store, agent, crate::trading::now_ms()) {
                Ok(granted) => {
                    let mut copy = request.clone();
                    copy.token_scopes.retain(|scope| granted.contains(scope));
                    narrowed = copy;
                    &narrowed
                }
                Err(code) => return Outcome::Refused(code.body(None)),
            }
        }
    };
    let snapshot = connection.session.snapshot();
    let checked = match gates::check_request(
        request,
        pairing.as_ref(),
        &connection.binding,
        &snapshot,
        Instant::now(),
        now_unix_seconds(),
    ) {
        Ok(checked) => checked,
        Err(outcome) => return outcome,
    };
    let reports_pause = checked.tool.name == "ibkr_session_status";
    let trading_pause = if refused_while_paused(checked.tool.name) || reports_pause {
        match context.store.trading_pause() {
            Ok(pause) => pause,
            Err(error) => {
                tracing::error!(code = %error.code(), "state store unreadable; refusing the call");
                return Outcome::Refused(ErrorCode::StateStoreError.body(None));
            }
        }
    } else {
        None
    };
    if refused_while_paused(checked.tool.name) {
        match &trading_pause {
            None => {}
            Some(pause) => {
                let detail = if pause.reason.is_empty() {
                    "(paused by the laptop's owner)".to_string()
                } else {
                    format!("(paused by the laptop's owner: {})", pause.reason)
                };
                return Outcome::Refused(ErrorCode::TradingPaused.body(Some(&detail)));
            }
        }
    }
    if checked.tool.changes_broker_state()
        && let Some(behind) = context
            .orders
            .as_ref()
            .and_then(|orders| orders.anchor.behind())
    {
        return Outcome::Refused(ErrorCode::JournalBehindGateway.body(Some(&format!(
            "(The gateway has entry {} on record; this journal ends at entry {}.)",
            behind.anchor.seq, behind.journal_last_seq
        ))));
    }
    let auth = if tools::needs_broker_session(checked.tool) {
        // Gate f: the keep-alive's observation while it is younger than one tickle interval
        // and says ready; otherwise one live `auth/status`.
        let cached = || {
            context
                .monitor
                .fresh(context.config.tickle_interval())
                .filter(|status| status.authenticated && !status.competing)
        };
        match cached() {
            Some(status) => Some(status),
            None => {
                // One live check at a time; a call that waited uses the answer it got.
                let _turn = context.monitor.live_check.lock().await;
                match cached() {
                    Some(status) => Some(status),
                    None => {
                        match gates::check_broker_session(&context.cpgw, &context.broker).await {
                            Ok(status) => {
                                context.monitor.record(&Ok(status));
                                Some(status)
                            }
                            Err(outcome) => return outcome,
                        }
                    }
                }
            }
        }
    } else {
        None
    };
    let progress = connection.progress.clone().map(|sender| {
        ProgressSink::new(
            request.request_id,
            std::sync::Arc::new(move |update| {
                let _ = sender.try_send(update);
            }),
        )
    });
    let tool_context = ToolContext {
        cpgw: &context.cpgw,
        broker: &context.broker,
        sidecar_id: &context.identity.sidecar_id,
        contracts: &context.contracts,
        accounts: &context.accounts,
        quotes: &context.quotes,
        connected_for: Instant::now().saturating_duration_since(snapshot.established_at),
        auth,
        orders: context.orders.as_ref(),
        live_scope_granted: checked.live_scope_granted,
        trading_pause,
        progress: progress.as_ref(),
        market_clock: &context.market_clock,
        deadline: deadline
            .checked_sub(ANSWER_MARGIN)
            .unwrap_or(deadline)
            .max(Instant::now()),
    };
    match tools::run(&checked, &tool_context).await {
        Ok(value) => finalize(&value),
        Err(outcome) => outcome,
    }
}

/// Whether the owner's pause refuses `tool`: every tool that can send a new order. A cancel
/// only takes risk off, and the reconcile only reads the broker and settles the journal, so
/// both go on while trading is paused.
pub(crate) fn refused_while_paused(tool: &str) -> bool {
    protocol::catalog::find(tool).is_some_and(protocol::catalog::ToolSpec::sends_new_orders)
}

/// Sanitizes a tool's result (no cookies, session ids, raw headers or local paths leave the
/// laptop) and bounds its size.
pub fn finalize(value: &Value) -> Outcome {
    let clean = sanitize_response(value);
    match serde_json::to_string(&clean) {
        Ok(json) if json.len() <= MAX_RESULT_JSON => Outcome::Result { json },
        Ok(_) => Outcome::Failed(ErrorCode::ResponseTooLarge.body(None)),
        Err(_) => Outcome::Failed(ErrorCode::InternalError.body(None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pause_refuses_every_tool_that_can_send_an_order_and_nothing_else() {
        for tool in protocol::catalog::CATALOG {
            let refused = refused_while_paused(tool.name);
            let expected = tool.changes_broker_state()
                && tool.name != "ibkr_order_cancel"
                && tool.name != "ibkr_reconcile_pending";
            assert_eq!(refused, expected, "{}", tool.name);
        }
        for tool in [
            "ibkr_buy",
            "ibkr_sell",
            "ibkr_close_position",
            "ibkr_stop_order",
            "ibkr_trailing_stop",
            "ibkr_bracket_order",
        ] {
            assert!(refused_while_paused(tool), "{tool}");
        }
        assert!(!refused_while_paused("ibkr_order_cancel"));
        assert!(!refused_while_paused("ibkr_quote"));
        assert!(!refused_while_paused("not_a_tool"));
    }

    #[test]
    fn results_are_sanitized_and_bounded() {
        let outcome = finalize(&json!({"accounts": ["DU1"], "sessionId": "abc", "cookie": "x=1"}));
        assert_eq!(
            outcome,
            Outcome::Result {
                json: r#"{"accounts":["DU1"]}"#.into()
            }
        );
        let huge = json!({"data": "x".repeat(MAX_FRAME_PLAINTEXT)});
        match finalize(&huge) {
            Outcome::Failed(body) => assert_eq!(body.code, "RESPONSE_TOO_LARGE"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
