//! The MCP server (rmcp `ServerHandler`), written by hand because the tools are data: the
//! catalog in `protocol::catalog`.
//!
//! - `tools/list` shows only the tools the token's scopes allow, marked private for caching
//!   (the list differs per token).
//! - `tools/call` re-checks the scope (the middleware already answered 403 for known tools;
//!   this is defence in depth), relays the call, maps the sidecar's outcome to a tool result
//!   (structured content plus the same JSON as text), forwards progress notifications (all
//!   of them before the result), and sends `Cancel` to the sidecar when the client cancels.
//! - Every call is audited ([`record_call`]): a durable record and a tracing line. A call that
//!   can change broker state is forwarded only once its `forwarding` record is stored (else
//!   `AUDIT_UNAVAILABLE`, nothing sent), and its outcome record, carrying the sidecar's journal
//!   anchor, is waited for too (see `crate::audit`).
//! - `ibkr_health` never fails for a missing sidecar: it reports the gateway and the relay
//!   itself and merges in the sidecar's own answer when one is connected.

use crate::audit::log::AuditRecord;
use crate::error::GatewayError;
use crate::oauth::AuthContext;
use crate::relay::{CallTrace, ToolCall};
use crate::state::AppState;
use protocol::catalog::{self, Route, ToolSpec};
use protocol::envelope::{ErrorBody, ManualAction, Outcome, RelayProgress};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One per MCP session (rmcp's factory makes them); all state is shared.
#[derive(Clone)]
pub(crate) struct GatewayMcp {
    state: Arc<AppState>,
}

impl GatewayMcp {
    pub fn new(state: Arc<AppState>) -> GatewayMcp {
        GatewayMcp { state }
    }
}

/// The catalog entry as an MCP tool.
pub fn tool_definition(spec: &ToolSpec) -> Tool {
    let mut tool = Tool::new(spec.name, spec.description, spec.input_schema_json());
    tool.title = Some(spec.title.to_string());
    let mut annotations = ToolAnnotations::with_title(spec.title).read_only(spec.read_only);
    if !spec.read_only {
        annotations = annotations.destructive(true).idempotent(false);
    }
    tool.annotations = Some(annotations.open_world(true));
    tool
}

/// The caller's identity, put there by the bearer middleware. Absent means the request did
/// not pass through it, which must never be served.
fn auth_context(context: &RequestContext<RoleServer>) -> Option<AuthContext> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<AuthContext>())
        .cloned()
}

fn error_result(body: &ErrorBody) -> CallToolResult {
    let structured = crate::error::error_body_json(body);
    let text = format!("{}: {} {}", body.code, body.message, body.user_action);
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

fn success_result(value: Value) -> CallToolResult {
    // structuredContent must be an object; a bare value is wrapped.
    let value = match value {
        Value::Object(_) => value,
        other => json!({ "result": other }),
    };
    let text = value.to_string();
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result
}

fn manual_action_result(action: &ManualAction) -> CallToolResult {
    let structured = json!({
        "status": "manual_action_required",
        "code": action.code,
        "message": action.message,
        "action": action.action,
        "where": action.location,
    });
    let text = format!(
        "Manual action required ({}): {} What to do: {} Where: {}",
        action.code, action.message, action.action, action.location
    );
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    result.structured_content = Some(structured);
    result
}

/// Maps the sidecar's outcome to a tool result, and names it for the audit log.
fn outcome_result(outcome: &Outcome) -> (CallToolResult, String) {
    match outcome {
        Outcome::Result { json } => match serde_json::from_str::<Value>(json) {
            // The sidecar sanitized already; sanitizing again costs little and means a
            // sidecar bug cannot leak session material to the agent.
            Ok(value) => (
                success_result(shared_safety::sanitize::sanitize_response(&value)),
                "ok".to_string(),
            ),
            Err(_) => {
                let error = GatewayError::with_detail(
                    ErrorCode::RelayProtocolError,
                    "The sidecar's answer was not valid JSON.",
                );
                (error_result(&error.body()), error.code.code().to_string())
            }
        },
        Outcome::ManualActionRequired(action) => (
            manual_action_result(action),
            "manual_action_required".to_string(),
        ),
        Outcome::Refused(body) | Outcome::Failed(body) => (error_result(body), body.code.clone()),
    }
}

/// Longest wait, after a call ended, for its last progress notifications to go out.
const PROGRESS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Forwards relay progress to the MCP client as `notifications/progress`, when the client
/// asked for progress (a `progressToken` in the request's `_meta`). Progress values must
/// increase (MCP): a non-increasing or non-finite value from the sidecar is dropped.
struct ProgressForwarder {
    sender: mpsc::Sender<RelayProgress>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressForwarder {
    fn spawn(context: &RequestContext<RoleServer>) -> Option<ProgressForwarder> {
        let token = context.meta.get_progress_token()?;
        let peer = context.peer.clone();
        let (sender, mut receiver) = mpsc::channel::<RelayProgress>(16);
        let task = tokio::spawn(async move {
            let mut last: Option<f64> = None;
            while let Some(progress) = receiver.recv().await {
                let increasing = last.is_none_or(|last| progress.progress > last);
                if !progress.progress.is_finite() || !increasing {
                    continue;
                }
                last = Some(progress.progress);
                let mut notification =
                    ProgressNotificationParam::new(token.clone(), progress.progress);
                if let Some(total) = progress.total.filter(|total| total.is_finite()) {
                    notification = notification.with_total(total);
                }
                if let Some(message) = progress.message {
                    let message: String = message
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(256)
                        .collect();
                    notification = notification.with_message(message);
                }
                if peer.notify_progress(notification).await.is_err() {
                    break;
                }
            }
        });
        Some(ProgressForwarder { sender, task })
    }

    fn sender(&self) -> mpsc::Sender<RelayProgress> {
        self.sender.clone()
    }

    /// Once the call is over (every sender the relay held is gone): lets the notifications
    /// already received go out before the result, so the client sees them in order.
    async fn drain(self) {
        drop(self.sender);
        let mut task = self.task;
        if tokio::time::timeout(PROGRESS_DRAIN, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn drain(forwarder: Option<ProgressForwarder>) {
    if let Some(forwarder) = forwarder {
        forwarder.drain().await;
    }
}

/// The audit record of a call as far as `trace` says it got.
fn audit_record(
    auth: &AuthContext,
    tool: Option<&ToolSpec>,
    trace: &CallTrace,
    outcome: &str,
    elapsed: std::time::Duration,
) -> AuditRecord {
    AuditRecord {
        time_ms: crate::clock::unix_ms(),
        subject: auth.subject.clone(),
        token_id_hmac: auth.token_id.clone(),
        client_id: auth.client_id.clone(),
        // Unknown names are not echoed into the log: they are agent input.
        tool: tool.map_or("-", |tool| tool.name).to_string(),
        scope: tool.map(|tool| tool.scope.to_string()),
        request_id: trace.request_id.map(|id| id.to_hex()),
        payload_hash: trace.payload_hash.map(hex::encode),
        sidecar_id: trace.sidecar_id.clone(),
        outcome: crate::ops::metrics::outcome_label(outcome),
        latency_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
        pairing_id: trace.pairing_id.clone(),
        journal_seq: trace
            .journal
            .and_then(|journal| i64::try_from(journal.seq).ok()),
        journal_hash: trace.journal.map(|journal| hex::encode(journal.hash)),
    }
}

/// Counts a finished call in the metrics and returns its audit record.
fn finished_call(
    state: &AppState,
    auth: &AuthContext,
    tool: Option<&ToolSpec>,
    trace: &CallTrace,
    outcome: &str,
    elapsed: std::time::Duration,
) -> AuditRecord {
    let tool_name: &'static str = match tool {
        Some(tool) => catalog::find(tool.name).map_or("unknown", |spec| spec.name),
        None => "unknown",
    };
    state.metrics.tool_call(tool_name, outcome, elapsed);
    audit_record(auth, tool, trace, outcome, elapsed)
}

/// Audits a call (durable record and tracing line, without waiting) and counts it in the
/// metrics.
pub(crate) fn record_call(
    state: &AppState,
    auth: &AuthContext,
    tool: Option<&ToolSpec>,
    trace: &CallTrace,
    outcome: &str,
    elapsed: std::time::Duration,
) {
    let record = finished_call(state, auth, tool, trace, outcome, elapsed);
    state.audit.record(record);
}

impl GatewayMcp {
    async fn health(
        &self,
        auth: &AuthContext,
        tool: &'static ToolSpec,
        arguments: &Value,
        context: &RequestContext<RoleServer>,
        trace: &mut CallTrace,
    ) -> (CallToolResult, String) {
        let state = &self.state;
        let relay = &state.relay;
        let mut answer = serde_json::Map::new();
        answer.insert(
            "gateway".into(),
            json!({"status": "ok", "version": VERSION, "instance_id": state.instance_id}),
        );
        match relay.target_for_user(&auth.subject).await {
            Ok(target) => {
                let now = Instant::now();
                answer.insert(
                    "relay".into(),
                    match target.session() {
                        Some(session) => json!({
                            "connected": true,
                            "sidecar_id": session.sidecar_id,
                            "session_expires_in_seconds": session.expires_at().saturating_duration_since(now).as_secs(),
                            "last_heartbeat_seconds_ago": session.silence(now).as_secs(),
                            "broker_session": session.status().map(|status| status.broker_session),
                        }),
                        // Another replica holds the session: the call below says whether it
                        // is up.
                        None => json!({"via_replica": true}),
                    },
                );
                let forwarder = ProgressForwarder::spawn(context);
                let called = relay
                    .call_on(
                        &target,
                        ToolCall {
                            tool,
                            arguments,
                            token_scopes: &auth.scopes,
                            agent: auth.agent,
                        },
                        forwarder.as_ref().map(ProgressForwarder::sender),
                        &context.ct,
                        trace,
                    )
                    .await;
                drain(forwarder).await;
                if target.session().is_none()
                    && let Some(relay) = answer.get_mut("relay")
                {
                    relay["connected"] = json!(called.is_ok());
                }
                match called {
                    Ok(outcome) => {
                        match &outcome.outcome {
                            Outcome::Result { json } => match serde_json::from_str::<Value>(json) {
                                Ok(value) => {
                                    match shared_safety::sanitize::sanitize_response(&value) {
                                        Value::Object(map) => {
                                            // Our own keys win: the sidecar reports on itself.
                                            for (key, value) in map {
                                                answer.entry(key).or_insert(value);
                                            }
                                        }
                                        other => {
                                            answer.insert("sidecar".into(), other);
                                        }
                                    }
                                }
                                Err(_) => {
                                    answer.insert("sidecar".into(), Value::Null);
                                    answer.insert(
                                        "next_step".into(),
                                        ErrorCode::RelayProtocolError.user_action().into(),
                                    );
                                }
                            },
                            Outcome::ManualActionRequired(action) => {
                                answer.insert(
                                    "manual_action_required".into(),
                                    json!({"code": action.code, "message": action.message, "action": action.action, "where": action.location}),
                                );
                                answer.insert("next_step".into(), action.action.clone().into());
                            }
                            Outcome::Refused(body) | Outcome::Failed(body) => {
                                answer.insert("sidecar".into(), Value::Null);
                                answer.insert(
                                    "sidecar_error".into(),
                                    crate::error::error_body_json(body)["error"].clone(),
                                );
                                answer.insert("next_step".into(), body.user_action.clone().into());
                            }
                        }
                    }
                    Err(error) => {
                        answer.insert("sidecar".into(), Value::Null);
                        answer.insert("sidecar_error".into(), error.to_json()["error"].clone());
                        answer.insert("next_step".into(), error.code.user_action().into());
                    }
                }
            }
            Err(error) => {
                answer.insert(
                    "relay".into(),
                    json!({
                        "connected": false,
                        "status": error.code.code(),
                        "sidecar_id": null,
                        "session_expires_in_seconds": null,
                        "last_heartbeat_seconds_ago": null,
                    }),
                );
                answer.insert("sidecar".into(), Value::Null);
                answer.insert("next_step".into(), error.code.user_action().into());
            }
        }
        (success_result(Value::Object(answer)), "ok".into())
    }
}

/// The MCP revisions served: 2026-07-28 (stateless, `server/discover`) and the session-based
/// 2025-11-25 and 2025-06-18 (the first with the OAuth resource-server model this gateway
/// implements). Older revisions are refused in negotiation.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2026_07_28,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2025_06_18,
];

impl ServerHandler for GatewayMcp {
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(SUPPORTED_PROTOCOL_VERSIONS)
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("ibkr-gateway", VERSION))
            .with_instructions(
                "Interactive Brokers tools relayed to the user's own laptop. Call ibkr_health \
                 first when something fails. Results that need a person at the laptop (such as \
                 an IBKR login) say so; nothing logs in for you.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let Some(auth) = auth_context(&context) else {
            return Err(McpError::invalid_request(
                ErrorCode::AuthRequired.message(),
                None,
            ));
        };
        let tools: Vec<Tool> = auth.scopes.allowed_tools().map(tool_definition).collect();
        // The list depends on the token: never publicly cacheable.
        Ok(ListToolsResult::with_all_items(tools).with_cache_scope(CacheScope::Private))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        catalog::find(name).map(tool_definition)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let started = Instant::now();
        let Some(auth) = auth_context(&context) else {
            let error = GatewayError::new(ErrorCode::AuthRequired);
            return Ok(error_result(&error.body()).into());
        };
        let mut trace = CallTrace::default();
        let Some(tool) = catalog::find(&request.name) else {
            let error = GatewayError::new(ErrorCode::ToolUnknown);
            self.audit(&auth, None, &trace, error.code.code(), started);
            return Ok(error_result(&error.body()).into());
        };
        if !auth.scopes.allows(tool) {
            let error = GatewayError::with_detail(
                ErrorCode::AuthInsufficientScope,
                format!("Tool {} needs scope {}.", tool.name, tool.scope),
            );
            self.audit(&auth, Some(tool), &trace, error.code.code(), started);
            return Ok(error_result(&error.body()).into());
        }
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        // Sanitizer, then the closed schema, for every tool (health included), before any
        // gate: refused arguments never reach a sidecar.
        if let Err(error) = crate::relay::router::check_arguments(tool, &arguments) {
            self.audit(&auth, Some(tool), &trace, error.code.code(), started);
            return Ok(error_result(&error.body()).into());
        }

        let (result, outcome_name) = match tool.route {
            Route::GatewayAndSidecar => {
                self.health(&auth, tool, &arguments, &context, &mut trace)
                    .await
            }
            Route::Sidecar if tool.changes_broker_state() => {
                let (result, outcome, forwarded) = self
                    .order_call(&auth, tool, &arguments, &context, &mut trace, started)
                    .await;
                if forwarded {
                    // Its outcome, with the journal entry the sidecar wrote, waits for the store
                    // too; failing that the forwarding record stands and the loss is logged.
                    let record = finished_call(
                        &self.state,
                        &auth,
                        Some(tool),
                        &trace,
                        &outcome,
                        started.elapsed(),
                    );
                    if !self.state.audit.record_durable(record).await {
                        tracing::error!(tool = tool.name, request_id = ?trace.request_id.map(|id| id.to_hex()), "the outcome record of a forwarded order call could not be stored; its forwarding record stands");
                    }
                    return Ok(result.into());
                }
                (result, outcome)
            }
            Route::Sidecar => {
                let forwarder = ProgressForwarder::spawn(&context);
                let called = self
                    .state
                    .relay
                    .call(
                        &auth.subject,
                        ToolCall {
                            tool,
                            arguments: &arguments,
                            token_scopes: &auth.scopes,
                            agent: auth.agent,
                        },
                        forwarder.as_ref().map(ProgressForwarder::sender),
                        &context.ct,
                        &mut trace,
                    )
                    .await;
                drain(forwarder).await;
                match called {
                    Ok(outcome) => outcome_result(&outcome.outcome),
                    Err(error) => (error_result(&error.body()), error.code.code().to_string()),
                }
            }
        };
        self.audit(&auth, Some(tool), &trace, &outcome_name, started);
        Ok(result.into())
    }
}

impl GatewayMcp {
    /// A call that can change broker state. Routed and prepared like any other, but before
    /// anything is sent its `forwarding` record must be stored (acknowledged within
    /// `audit.ack_timeout_ms`): otherwise it is refused with `AUDIT_UNAVAILABLE` and nothing
    /// reaches the sidecar. Returns the result, its outcome name, and whether it was
    /// forwarded.
    async fn order_call(
        &self,
        auth: &AuthContext,
        tool: &'static ToolSpec,
        arguments: &Value,
        context: &RequestContext<RoleServer>,
        trace: &mut CallTrace,
        started: Instant,
    ) -> (CallToolResult, String, bool) {
        let relay = &self.state.relay;
        let refused = |error: GatewayError| {
            (
                error_result(&error.body()),
                error.code.code().to_string(),
                false,
            )
        };
        let target = match relay.target_for_user(&auth.subject).await {
            Ok(target) => target,
            Err(error) => return refused(error),
        };
        let call = ToolCall {
            tool,
            arguments,
            token_scopes: &auth.scopes,
            agent: auth.agent,
        };
        let prepared = match relay.prepare(&target, call, trace) {
            Ok(prepared) => prepared,
            Err(error) => return refused(error),
        };
        let forwarding = audit_record(auth, Some(tool), trace, "forwarding", started.elapsed());
        if !self.state.audit.record_durable(forwarding).await {
            self.state.metrics.audit_refused();
            tracing::error!(
                tool = tool.name,
                request_id = ?trace.request_id.map(|id| id.to_hex()),
                "order call refused: its audit record could not be stored, so it was not forwarded"
            );
            return refused(GatewayError::new(ErrorCode::AuditUnavailable));
        }
        let forwarder = ProgressForwarder::spawn(context);
        let called = relay
            .forward(
                prepared,
                forwarder.as_ref().map(ProgressForwarder::sender),
                &context.ct,
                trace,
            )
            .await;
        drain(forwarder).await;
        let (result, outcome) = match called {
            Ok(outcome) => outcome_result(&outcome.outcome),
            Err(error) => (error_result(&error.body()), error.code.code().to_string()),
        };
        (result, outcome, true)
    }

    fn audit(
        &self,
        auth: &AuthContext,
        tool: Option<&ToolSpec>,
        trace: &CallTrace,
        outcome: &str,
        started: Instant,
    ) {
        record_call(&self.state, auth, tool, trace, outcome, started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_definitions_carry_schema_and_read_only_hint() {
        let spec = catalog::find("ibkr_accounts_list").unwrap();
        let tool = tool_definition(spec);
        assert_eq!(tool.name, "ibkr_accounts_list");
        assert_eq!(
            tool.input_schema.get("additionalProperties"),
            Some(&json!(false))
        );
        assert_eq!(tool.annotations.unwrap().read_only_hint, Some(true));
    }

    #[test]
    fn outcomes_map_to_structured_results() {
        let (ok, name) = outcome_result(&Outcome::Result {
            json: r#"{"accounts":["DU1"]}"#.into(),
        });
        assert_eq!(name, "ok");
        assert_eq!(ok.is_error, Some(false));
        assert_eq!(ok.structured_content, Some(json!({"accounts":["DU1"]})));

        let (manual, name) = outcome_result(&Outcome::ManualActionRequired(ManualAction {
            code: "BROKER_SESSION_REQUIRED".into(),
            message: "Log in".into(),
            action: "Open the CPGW".into(),
            location: "https://localhost:5000".into(),
        }));
        assert_eq!(name, "manual_action_required");
        assert_eq!(manual.is_error, Some(true));
        let structured = manual.structured_content.unwrap();
        assert_eq!(structured["status"], "manual_action_required");
        assert_eq!(structured["where"], "https://localhost:5000");

        let body = ErrorCode::BrokerError.body(None);
        let (refused, name) = outcome_result(&Outcome::Refused(body));
        assert_eq!(name, "BROKER_ERROR");
        assert_eq!(refused.is_error, Some(true));
        assert_eq!(
            refused.structured_content.unwrap()["error"]["code"],
            "BROKER_ERROR"
        );
    }
}
