//! What the laptop's owner decides, from the command line: settling an order whose outcome the
//! broker cannot prove (`ibkr-agent sidecar orders settle`), and approving or denying an order
//! that waits for approval (`ibkr-agent sidecar approvals approve|deny`).
//!
//! The running daemon holds the trade journal (its lock), so a command cannot append to it
//! while the daemon runs. The command leaves a request in the state store instead; the daemon
//! looks every [`POLL_INTERVAL`], applies it to the journal and writes the result back, and the
//! command prints it. With no daemon running, the command takes the journal's lock and applies
//! the request itself, through the same code. A command that stops waiting withdraws its request,
//! so nothing is applied behind the owner's back later.
//!
//! Every decision is journaled with who took it, how and when.

use crate::error::SidecarError;
use crate::state::StateStore;
use crate::trading::journal::{Journal, JournalError};
use crate::trading::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared_safety::ErrorCode;
use std::path::Path;
use std::time::Duration;

/// How often the daemon looks for requests.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long a command waits for the daemon before withdrawing its request.
pub const WAIT_FOR_DAEMON: Duration = Duration::from_secs(10);
/// Longest note kept with a decision.
const MAX_NOTE_LEN: usize = 500;

/// One decision of the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OwnerRequest {
    /// Settle an order attempt whose outcome is unknown.
    Settle {
        attempt: u64,
        placed: bool,
        note: Option<String>,
        /// Who asked (the operating-system user), for the journal.
        by: String,
        /// How (`cli`, later `console`).
        via: String,
    },
    /// Approve an order waiting for approval: the daemon checks it again and sends it.
    Approve {
        attempt: u64,
        /// The intent hash the owner was shown, when they gave it.
        intent_hash: Option<String>,
        by: String,
        via: String,
    },
    /// Deny an order waiting for approval.
    Deny {
        attempt: u64,
        intent_hash: Option<String>,
        note: Option<String>,
        by: String,
        via: String,
    },
}

impl OwnerRequest {
    fn kind(&self) -> &'static str {
        match self {
            OwnerRequest::Settle { .. } => "settle",
            OwnerRequest::Approve { .. } => "approve",
            OwnerRequest::Deny { .. } => "deny",
        }
    }
}

/// The operating-system user running this command, for the journal ("unknown" if unset).
pub fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .map(|name| name.chars().filter(|c| !c.is_control()).take(64).collect())
        .filter(|name: &String| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Applies a request to the journal. An attempt the daemon is placing right now is not the
/// owner's to settle: its outcome is coming.
pub fn apply(journal: &Journal, request: &OwnerRequest) -> Result<Value, SidecarError> {
    match request {
        OwnerRequest::Approve { .. } => Err(SidecarError::bare(ErrorCode::ApprovalNeedsDaemon)),
        OwnerRequest::Deny {
            attempt,
            intent_hash,
            note,
            by,
            via,
        } => crate::approvals::deny(
            journal,
            *attempt,
            intent_hash.as_deref(),
            &crate::approvals::Decider {
                by: by.clone(),
                via: via.clone(),
                note: note.clone(),
            },
        ),
        OwnerRequest::Settle {
            attempt,
            placed,
            note,
            by,
            via,
        } => {
            let refused = |why: &str| {
                SidecarError::new(
                    ErrorCode::OrderNotFound,
                    format!("(attempt {attempt} {why})"),
                )
            };
            let record = journal
                .attempt(*attempt)
                .ok_or_else(|| refused("is not in the trade journal"))?;
            let in_flight = journal
                .with_book(|_, in_flight| in_flight.contains(attempt))
                .unwrap_or(false);
            if in_flight {
                return Err(refused("is being placed right now; wait for its outcome"));
            }
            if !record.unknown_outcome(false) {
                return Err(refused(&format!(
                    "has a known outcome ({}); only unknown outcomes are settled",
                    record.status.as_str()
                )));
            }
            let note: Option<String> = note.as_ref().map(|text| {
                text.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_NOTE_LEN)
                    .collect()
            });
            journal
                .outcome(
                    *attempt,
                    "settled",
                    json!({"placed": placed, "by": by, "via": via, "note": note}),
                    now_ms(),
                )
                .map_err(|error| journal_error(&error))?;
            Ok(json!({
                "attempt_id": attempt,
                "placed": placed,
                "status": if *placed { "settled_placed" } else { "settled_not_placed" },
            }))
        }
    }
}

fn journal_error(error: &JournalError) -> SidecarError {
    SidecarError::new(ErrorCode::JournalError, format!("({error})"))
}

/// Runs a request from a command: applied at once when no daemon holds the journal, else
/// handed to the daemon and waited for (at most [`WAIT_FOR_DAEMON`]).
pub fn submit(
    state_dir: &Path,
    store: &StateStore,
    request: &OwnerRequest,
) -> Result<Value, SidecarError> {
    match Journal::open_in(state_dir) {
        Ok(journal) => apply(&journal, request),
        Err(JournalError::Locked) => hand_to_daemon(store, request),
        Err(error) => Err(journal_error(&error)),
    }
}

fn hand_to_daemon(store: &StateStore, request: &OwnerRequest) -> Result<Value, SidecarError> {
    let payload = serde_json::to_string(request)
        .map_err(|_| SidecarError::internal("(cannot encode the request)"))?;
    let id = store.insert_owner_request(request.kind(), &payload, now_ms())?;
    let withdraw_at = std::time::Instant::now() + WAIT_FOR_DAEMON;
    // A request the daemon has taken is applied in milliseconds; past this, it is reported as
    // lost rather than waited for forever (the journal says whether it was applied).
    let give_up_at = withdraw_at + WAIT_FOR_DAEMON;
    loop {
        let status = store.owner_request(id)?.ok_or_else(|| {
            SidecarError::internal("(the request disappeared from the state store)")
        })?;
        match status.status.as_str() {
            "done" => return Ok(parse_result(status.result.as_deref())),
            "refused" => return Err(refusal_from(&parse_result(status.result.as_deref()))),
            "pending" if std::time::Instant::now() >= withdraw_at => {
                if store.finish_owner_request(id, "pending", "withdrawn", "null", now_ms())? {
                    return Err(SidecarError::new(
                        ErrorCode::InternalError,
                        "(the running sidecar did not take the request within 10 seconds; it was \
                         withdrawn and nothing changed. Is the daemon stuck? See its log)",
                    ));
                }
                // Taken in the meantime: wait for its result.
                continue;
            }
            "taken" if std::time::Instant::now() >= give_up_at => {
                return Err(SidecarError::new(
                    ErrorCode::InternalError,
                    "(the running sidecar took the request but did not report a result; run \
                     `ibkr-agent sidecar orders pending` to see whether it was applied)",
                ));
            }
            "pending" | "taken" => {}
            other => {
                return Err(SidecarError::internal(format!(
                    "(the request ended as {other})"
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn parse_result(text: Option<&str>) -> Value {
    text.and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null)
}

fn refusal_from(result: &Value) -> SidecarError {
    let code = result
        .get("code")
        .and_then(Value::as_str)
        .and_then(ErrorCode::from_code)
        .unwrap_or(ErrorCode::InternalError);
    let detail = result
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    SidecarError::new(code, detail)
}

/// The daemon's side: applies every pending request, in order, and records the result.
/// `daemon`: the running daemon, which sends approved orders (without it an approval is
/// refused with `APPROVAL_NEEDS_DAEMON`).
pub(crate) fn serve_pending(
    store: &StateStore,
    journal: Option<&Journal>,
    daemon: Option<&std::sync::Arc<crate::context::DaemonContext>>,
) {
    let requests = match store.pending_owner_requests() {
        Ok(requests) => requests,
        Err(error) => {
            tracing::warn!(code = %error.code(), "could not read owner requests");
            return;
        }
    };
    for row in requests {
        match store.take_owner_request(row.id, now_ms()) {
            Ok(true) => {}
            // Withdrawn by its command a moment ago: never applied behind its back.
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(code = %error.code(), "could not take an owner request");
                continue;
            }
        }
        let outcome = match (serde_json::from_str::<OwnerRequest>(&row.payload), journal) {
            (Err(_), _) => Err(SidecarError::internal("(unreadable request)")),
            (Ok(_), None) => Err(SidecarError::new(
                ErrorCode::JournalError,
                "(the trade journal is not available in this sidecar; see its log)",
            )),
            (
                Ok(OwnerRequest::Approve {
                    attempt,
                    intent_hash,
                    by,
                    via,
                }),
                Some(_),
            ) => match daemon {
                Some(context) => crate::approvals::approve(
                    context,
                    attempt,
                    intent_hash.as_deref(),
                    &crate::approvals::Decider {
                        by,
                        via,
                        note: None,
                    },
                ),
                None => Err(SidecarError::bare(ErrorCode::ApprovalNeedsDaemon)),
            },
            (Ok(request), Some(journal)) => apply(journal, &request),
        };
        let (status, result) = match outcome {
            Ok(result) => {
                tracing::info!(request = row.id, kind = %row.kind, "owner request applied");
                ("done", result)
            }
            Err(error) => (
                "refused",
                json!({"code": error.code().code(), "detail": error.detail()}),
            ),
        };
        if let Err(error) =
            store.finish_owner_request(row.id, "taken", status, &result.to_string(), now_ms())
        {
            tracing::warn!(code = %error.code(), "could not record an owner request's result");
        }
    }
}

/// Runs [`serve_pending`] every [`POLL_INTERVAL`] until `shutdown`.
pub(crate) async fn serve(
    context: std::sync::Arc<crate::context::DaemonContext>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        serve_pending(
            &context.store,
            context.orders.as_ref().map(|runtime| &runtime.journal),
            Some(&context),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trading::journal::{Decision, JOURNAL_FILE, verify};

    fn buy_intent(coid: &str) -> Value {
        json!({"tool": "ibkr_buy", "symbol": "AAPL", "side": "BUY", "role": "entry",
               "conid": 265598, "fingerprint": format!("fp-{coid}"), "notional": "50",
               "dry_run": false, "idempotency_key": null, "coid": coid})
    }

    fn settle(attempt: u64, placed: bool) -> OwnerRequest {
        OwnerRequest::Settle {
            attempt,
            placed,
            note: Some("checked in TWS\u{1b}[31m".into()),
            by: "alice".into(),
            via: "cli".into(),
        }
    }

    /// A journal with one attempt of unknown outcome (a 503 after the intent).
    fn journal_with_unknown(dir: &Path) -> (Journal, u64) {
        let journal = Journal::open_in(dir).unwrap();
        let attempt = journal.intent(buy_intent("ia-1"), 1).unwrap();
        journal
            .outcome(attempt, "indeterminate", json!({"reason": "503"}), 2)
            .unwrap();
        (journal, attempt)
    }

    fn detail(error: &SidecarError) -> &str {
        error.detail().unwrap_or_default()
    }

    fn settled_entries(dir: &Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join(JOURNAL_FILE))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|entry| entry["event"] == "settled")
            .collect()
    }

    #[test]
    fn without_a_daemon_the_command_settles_directly_and_journals_who_and_how() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let (journal, attempt) = journal_with_unknown(dir.path());
        drop(journal);

        let result = submit(dir.path(), &store, &settle(attempt, false)).unwrap();
        assert_eq!(result["status"], "settled_not_placed");

        let entries = settled_entries(dir.path());
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["attempt"], attempt);
        assert_eq!(entries[0]["data"]["by"], "alice");
        assert_eq!(entries[0]["data"]["via"], "cli");
        assert_eq!(entries[0]["data"]["placed"], false);
        // Control characters never reach the journal (or a terminal showing it).
        assert_eq!(entries[0]["data"]["note"], "checked in TWS[31m");
        assert!(verify(&dir.path().join(JOURNAL_FILE)).unwrap().ok);

        let journal = Journal::open_in(dir.path()).unwrap();
        assert!(journal.pending().is_empty(), "settled: no longer unknown");
        // No request was left for a daemon.
        assert!(store.pending_owner_requests().unwrap().is_empty());
    }

    #[test]
    fn a_second_writer_is_refused_while_the_journal_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Journal::open_in(dir.path()).unwrap();
        assert!(matches!(
            Journal::open_in(dir.path()),
            Err(JournalError::Locked)
        ));
    }

    #[test]
    fn with_a_daemon_the_request_is_handed_over_and_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(StateStore::open(dir.path()).unwrap());
        let (journal, attempt) = journal_with_unknown(dir.path());

        let command = {
            let dir = dir.path().to_path_buf();
            let store = store.clone();
            std::thread::spawn(move || submit(&dir, &store, &settle(attempt, true)))
        };
        // The daemon's loop, until the command has its answer.
        while !command.is_finished() {
            serve_pending(&store, Some(&journal), None);
            std::thread::sleep(Duration::from_millis(20));
        }
        let result = command.join().unwrap().unwrap();
        assert_eq!(result["status"], "settled_placed");
        serve_pending(&store, Some(&journal), None);
        drop(journal);
        assert_eq!(settled_entries(dir.path()).len(), 1);
    }

    #[test]
    fn a_refusal_by_the_daemon_reaches_the_command_with_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(StateStore::open(dir.path()).unwrap());
        let (journal, _attempt) = journal_with_unknown(dir.path());
        let command = {
            let dir = dir.path().to_path_buf();
            let store = store.clone();
            std::thread::spawn(move || submit(&dir, &store, &settle(999, false)))
        };
        while !command.is_finished() {
            serve_pending(&store, Some(&journal), None);
            std::thread::sleep(Duration::from_millis(20));
        }
        let error = command.join().unwrap().unwrap_err();
        assert_eq!(error.code(), ErrorCode::OrderNotFound);
        assert!(detail(&error).contains("999"), "{:?}", error.detail());
    }

    #[test]
    fn a_withdrawn_request_is_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let (journal, attempt) = journal_with_unknown(dir.path());
        let payload = serde_json::to_string(&settle(attempt, false)).unwrap();
        let id = store.insert_owner_request("settle", &payload, 3).unwrap();
        // The command gave up waiting just before the daemon looked.
        assert!(
            store
                .finish_owner_request(id, "pending", "withdrawn", "null", 4)
                .unwrap()
        );
        serve_pending(&store, Some(&journal), None);
        assert_eq!(
            store.owner_request(id).unwrap().unwrap().status,
            "withdrawn"
        );
        assert_eq!(journal.pending().len(), 1, "still unknown");
        // And a request the daemon has taken can no longer be withdrawn.
        let id = store.insert_owner_request("settle", &payload, 5).unwrap();
        assert!(store.take_owner_request(id, 6).unwrap());
        assert!(
            !store
                .finish_owner_request(id, "pending", "withdrawn", "null", 7)
                .unwrap()
        );
    }

    #[test]
    fn only_unknown_outcomes_not_being_placed_are_settled() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, unknown) = journal_with_unknown(dir.path());
        // An attempt with a known outcome.
        let sent = journal.intent(buy_intent("ia-2"), 3).unwrap();
        journal
            .outcome(sent, "sent", json!({"order_ids": ["7"]}), 4)
            .unwrap();
        let error = apply(&journal, &settle(sent, false)).unwrap_err();
        assert_eq!(error.code(), ErrorCode::OrderNotFound);
        assert!(
            detail(&error).contains("known outcome (sent)"),
            "{:?}",
            error.detail()
        );
        // An attempt being placed right now: its outcome is coming.
        let placing = journal
            .decide(5, |_| {
                Ok::<_, ()>(Decision {
                    intent: buy_intent("ia-3"),
                    outcome: None,
                    in_flight: true,
                    value: (),
                })
            })
            .unwrap()
            .unwrap()
            .0;
        let error = apply(&journal, &settle(placing, false)).unwrap_err();
        assert!(
            detail(&error).contains("being placed"),
            "{:?}",
            error.detail()
        );
        // Settled once; a second settle finds a known outcome.
        apply(&journal, &settle(unknown, false)).unwrap();
        let error = apply(&journal, &settle(unknown, true)).unwrap_err();
        assert!(
            detail(&error).contains("known outcome"),
            "{:?}",
            error.detail()
        );
    }
}
