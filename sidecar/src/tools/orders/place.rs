//! Placing orders: `ibkr_buy`, `ibkr_sell`, `ibkr_close_position`, `ibkr_stop_order`,
//! `ibkr_trailing_stop`, `ibkr_bracket_order`.
//!
//! 1. Local checks first (shape, symbol lists): nothing is asked of the broker for an order the
//!    laptop refuses anyway.
//! 2. The broker's facts: contract, account (paper/live, pinned), quote, and for anything that
//!    sells or covers a position read after CPGW dropped its cache, plus the state of our own
//!    open orders on the instrument.
//! 3. One critical section ([`crate::trading::journal::Journal::decide`]) from the guards to the
//!    durable intent: idempotency, unknown outcomes on the instrument and side, commitments,
//!    today's spend and duplicates are read and the intent written with no other order in
//!    between, so parallel calls behave as if serialized.
//! 4. Dry run (the default: nothing is sent), or send with the confirmation loop
//!    ([`super::send`]).
//!
//! Idempotency keys bind the tool and its arguments: a key reused for another order is
//! refused (`IDEMPOTENCY_KEY_REUSED`); a placed or in-flight attempt is answered, never
//! repeated; an unknown outcome is corroborated at the broker and otherwise stays unknown; only
//! an attempt that certainly did not land may be tried again, under a new client order id.

use super::facts::{
    AccountIdentity, account_identity, foreign_working_quantities, fresh_position,
    observe_our_orders, quote_of,
};
use super::reconcile::corroborate;
use super::send::send;
use super::ticket::{
    Leg, assign_coids, intent_json, legs_for, orders_body, request_hash, text_arg,
};
use super::{now_ms, runtime};
use crate::tools::context::{ToolContext, ToolResult};
use crate::trading::OrdersRuntime;
use crate::trading::approval::intent_hash;
use crate::trading::attempts::{Attempt, AttemptStatus};
use crate::trading::journal::{Decision, JournalView};
use protocol::envelope::Outcome;
use serde_json::{Map, Value, json};
use shared_safety::ErrorCode;
use shared_safety::guards::{
    AccountMode, GuardContext, GuardRefusal, MarketQuote, OrderIntentRole, Side, check_bracket,
    check_order, client_order_id, order_fingerprint, order_notional,
};
use shared_safety::money::{Decimal, to_decimal_string};

fn journal_failure() -> Outcome {
    Outcome::Refused(ErrorCode::JournalError.body(None))
}

/// The broker's facts one placement decides on.
pub(super) struct Facts {
    pub(super) identity: AccountIdentity,
    pub(super) conid: i64,
    pub(super) symbol: String,
    pub(super) quote: Option<MarketQuote>,
    /// Signed position, fresh (only read when the order sells or covers).
    pub(super) position: Option<Decimal>,
    /// Working quantity on the instrument placed outside this sidecar, per side.
    pub(super) foreign_sells: Decimal,
    pub(super) foreign_buys: Decimal,
}

/// What the critical section decided.
enum Decided {
    /// Placed before with this key and these arguments: answer what happened.
    Replay(Box<Attempt>),
    /// The same key's attempt is being placed right now.
    InFlight(u64),
    /// The same key's earlier attempt has an unknown outcome.
    Unknown(Box<Attempt>),
    /// Refused before anything was journaled (the order could not be built).
    Refused(GuardRefusal),
    /// Journaled: go on (dry run, send, or wait for the owner's approval).
    Go { attempt: u64, go: Go },
    /// The same key's attempt waits for the owner's approval.
    Awaiting(u64),
    /// The same key's attempt was denied or expired unapproved: answered again, not re-asked.
    Closed(Box<Attempt>),
}

/// What a decision to go on carries.
pub(super) struct Go {
    coid: String,
    notional: Option<Decimal>,
    body: String,
    would_send: Value,
    /// Journaled as awaiting the owner's approval instead of being sent now.
    awaiting_approval: bool,
}

pub(super) fn mode_text(mode: AccountMode) -> &'static str {
    match mode {
        AccountMode::Paper => "paper",
        AccountMode::Live => "live",
        AccountMode::Unknown => "unknown",
    }
}

/// The refusal an outcome of local parsing or checking becomes.
fn refusal_outcome(refusal: &GuardRefusal) -> Outcome {
    Outcome::Refused(refusal.body())
}

/// `ibkr_buy`, `ibkr_sell`, `ibkr_close_position`, `ibkr_stop_order`, `ibkr_trailing_stop`,
/// `ibkr_bracket_order`.
pub async fn place(
    tool: &str,
    arguments: &Map<String, Value>,
    context: &ToolContext<'_>,
) -> ToolResult {
    let runtime = runtime(context)?;
    let symbol_arg = text_arg(arguments, "symbol").unwrap_or_default();
    let key = text_arg(arguments, "idempotency_key").map(str::to_string);
    let hash = request_hash(tool, arguments);

    // 1. Local checks: nothing reaches the broker for an order the laptop refuses anyway.
    if tool != "ibkr_close_position" {
        let legs = legs_for(tool, &symbol_arg.to_ascii_uppercase(), arguments, None)?;
        for leg in &legs {
            shared_safety::guards::check_local(&leg.intent, &runtime.policy)
                .map_err(|refusal| refusal_outcome(&refusal))?;
        }
    } else {
        shared_safety::guards::check_symbol_allowed(symbol_arg, &runtime.policy)
            .map_err(|refusal| refusal_outcome(&refusal))?;
    }
    // A retry of a call that was placed is answered from the journal, without the broker.
    if let Some(key) = &key
        && let Some(answer) = replay_placed(runtime, key, &hash)
    {
        return answer;
    }

    // 2. The broker's facts.
    let facts = gather(tool, arguments, runtime, context, symbol_arg).await?;
    let mut legs = legs_for(tool, &facts.symbol, arguments, facts.position)?;
    let bracket = bracket_levels(tool, &legs, facts.quote.as_ref());

    // 3. The critical section.
    let namespace = format!("{}|{}", context.sidecar_id, facts.identity.account);
    let now = now_ms();
    let random = random_key();
    let decided = runtime
        .journal
        .decide(now, |view| {
            decide(DecideInput {
                view,
                runtime,
                context,
                tool,
                arguments,
                key: key.as_deref(),
                hash: &hash,
                namespace: &namespace,
                random: &random,
                facts: &facts,
                legs: &mut legs,
                bracket: bracket.clone(),
                now,
            })
        })
        .map_err(|_| journal_failure())?;
    let decided = match decided {
        Ok((attempt, Some(go))) => Decided::Go { attempt, go },
        Ok((attempt, None)) => {
            // Journaled as blocked: the refusal is in its outcome.
            let refusal = runtime
                .journal
                .attempt(attempt)
                .and_then(|a| a.last_outcome)
                .map(|(_, data)| data);
            return Err(blocked_outcome(refusal));
        }
        Err(early) => early,
    };

    match decided {
        Decided::Replay(attempt) => Ok(replay(&attempt)),
        Decided::InFlight(attempt) => wait_for_in_flight(runtime, context, attempt).await,
        Decided::Unknown(attempt) => settle_unknown(runtime, context, &facts, &attempt).await,
        Decided::Refused(refusal) => Err(refusal_outcome(&refusal)),
        Decided::Awaiting(attempt) => await_approval(runtime, context, attempt).await,
        Decided::Closed(attempt) => Err(settled_outcome(&attempt)),
        Decided::Go { attempt, go } => {
            let Go {
                coid,
                notional,
                body,
                would_send,
                awaiting_approval,
            } = go;
            if awaiting_approval {
                return await_approval(runtime, context, attempt).await;
            }
            let base = json!({
                "attempt_id": attempt,
                "symbol": facts.symbol,
                "conid": facts.conid,
                "account_mode": mode_text(facts.identity.mode),
                "client_order_id": coid,
                "estimated_value": notional.map(to_decimal_string),
            });
            if runtime.policy.dry_run {
                runtime
                    .journal
                    .outcome(attempt, "dry_run", json!({}), now_ms())
                    .map_err(|_| journal_failure())?;
                return Ok(merge(
                    base,
                    json!({"status": "dry_run", "would_send": would_send}),
                ));
            }
            let role = legs
                .first()
                .map_or(OrderIntentRole::Entry, |leg| leg.intent.role);
            send(
                runtime,
                context,
                attempt,
                &facts.identity.account,
                role,
                body,
                base,
            )
            .await
        }
    }
}

/// The answer to a retried call whose first attempt was placed, if there is one.
fn replay_placed(runtime: &OrdersRuntime, key: &str, hash: &str) -> Option<ToolResult> {
    let attempts = runtime.journal.by_idempotency_key(key);
    let last = attempts.last()?;
    if last.request_hash() != Some(hash) {
        // Refused under the lock, where the refusal is journaled.
        return None;
    }
    last.status.placed().then(|| Ok(replay(last)))
}

pub(super) async fn gather(
    tool: &str,
    arguments: &Map<String, Value>,
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    symbol_arg: &str,
) -> Result<Facts, Outcome> {
    let contract = context.contracts.resolve_symbol(symbol_arg).await?;
    let identity = account_identity(context).await?;
    // A market buy by cash amount is valued at its cash amount and has no price to check: it
    // needs no quote (and spares a paced request).
    let cash_market_buy = tool == "ibkr_buy"
        && arguments.get("cash_amount").is_some_and(|v| !v.is_null())
        && arguments.get("limit_price").is_none_or(Value::is_null);
    let quote = if cash_market_buy {
        None
    } else {
        quote_of(context, contract.conid).await
    };
    // Anything that can sell or cover part of a position (every tool but a plain buy: stops
    // may cover a short, a bracket's exits sell) is checked against a fresh position and what
    // our own open orders already commit.
    let (position, foreign_sells, foreign_buys) = if tool != "ibkr_buy" {
        let position = fresh_position(context, &identity.account, contract.conid).await?;
        observe_our_orders(runtime, context, contract.conid).await;
        let (sells, buys) =
            foreign_working_quantities(runtime, context, &identity.account, contract.conid).await;
        (Some(position), sells, buys)
    } else {
        (None, Decimal::ZERO, Decimal::ZERO)
    };
    Ok(Facts {
        identity,
        conid: contract.conid,
        symbol: contract.symbol,
        quote,
        position,
        foreign_sells,
        foreign_buys,
    })
}

/// A bracket's level check, ahead of the critical section (it needs only the quote).
pub(super) fn bracket_levels(
    tool: &str,
    legs: &[Leg],
    quote: Option<&MarketQuote>,
) -> Option<(&'static str, GuardRefusal)> {
    if tool != "ibkr_bracket_order" {
        return None;
    }
    let entry = legs.iter().find(|leg| leg.label == "entry")?;
    let take_profit = legs
        .iter()
        .find(|leg| leg.label == "take_profit")
        .and_then(|leg| leg.intent.limit_price)?;
    let stop_loss = legs
        .iter()
        .find(|leg| leg.label == "stop_loss")
        .and_then(|leg| leg.intent.stop_price)?;
    check_bracket(entry.intent.limit_price, take_profit, stop_loss, quote)
        .err()
        .map(|refusal| ("bracket", refusal))
}

struct DecideInput<'a, 'c> {
    view: &'a JournalView<'a>,
    runtime: &'a OrdersRuntime,
    context: &'a ToolContext<'c>,
    tool: &'a str,
    arguments: &'a Map<String, Value>,
    key: Option<&'a str>,
    hash: &'a str,
    namespace: &'a str,
    random: &'a str,
    facts: &'a Facts,
    legs: &'a mut Vec<Leg>,
    bracket: Option<(&'static str, GuardRefusal)>,
    now: i64,
}

/// What the critical section journals: `Ok(Decision)` writes an intent (and `blocked`, when
/// refused, or `awaiting_approval`); `Err(Decided)` writes nothing.
type Decisive = Option<Go>;

#[allow(clippy::result_large_err)]
fn decide(input: DecideInput<'_, '_>) -> Result<Decision<Decisive>, Decided> {
    let DecideInput {
        view,
        runtime,
        context,
        tool,
        arguments,
        key,
        hash,
        namespace,
        random,
        facts,
        legs,
        bracket,
        now,
    } = input;
    let book = view.book();
    let policy = &runtime.policy;

    // Idempotency, authoritative: under the lock no other call with this key can interleave.
    let mut key_refusal = None;
    let mut previous_attempts = 0usize;
    if let Some(key) = key {
        let prior = book.by_idempotency_key(key);
        previous_attempts = prior.len();
        if let Some(last) = prior.last() {
            if last.request_hash() != Some(hash) {
                key_refusal = Some(GuardRefusal {
                    code: ErrorCode::IdempotencyKeyReused,
                    detail: format!(
                        "The key was used for attempt {} ({}).",
                        last.id,
                        last.tool().unwrap_or("another order")
                    ),
                    guard: "idempotency",
                });
            } else if last.status.placed() {
                return Err(Decided::Replay(Box::new((*last).clone())));
            } else if last.status == AttemptStatus::Unresolved && view.in_flight(last.id) {
                return Err(Decided::InFlight(last.id));
            } else if last.unknown_outcome(view.in_flight(last.id)) {
                return Err(Decided::Unknown(Box::new((*last).clone())));
            } else if last.status == AttemptStatus::AwaitingApproval {
                return Err(Decided::Awaiting(last.id));
            } else if matches!(
                last.status,
                AttemptStatus::Denied | AttemptStatus::ApprovalExpired
            ) {
                return Err(Decided::Closed(Box::new((*last).clone())));
            }
            // Otherwise the last attempt certainly did not land: a new attempt may go.
        }
    }

    // Client order ids: from the key (and how many times it was tried), random otherwise.
    let seed = match key {
        Some(key) if previous_attempts == 0 => key.to_string(),
        Some(key) => format!("{key}#{previous_attempts}"),
        None => random.to_string(),
    };
    let coid = client_order_id(&seed, namespace);
    assign_coids(legs, &coid);

    // The guards, every leg, on figures read under the lock.
    let mut notional = None;
    let mut refusal: Option<(&str, GuardRefusal)> = key_refusal.map(|r| ("order", r));
    if refusal.is_none() {
        refusal = bracket;
    }
    if refusal.is_none() {
        match check_legs(
            view,
            runtime,
            facts,
            legs,
            context.live_scope_granted,
            now,
            None,
        ) {
            Ok(value) => notional = value,
            Err(refused) => refusal = Some(refused),
        }
    }
    // An order that passed every guard may still need the owner's approval.
    let approval_reason = if refusal.is_none() && !policy.dry_run {
        let value = legs
            .iter()
            .filter_map(|leg| order_notional(&leg.intent, facts.quote.as_ref()))
            .max();
        runtime
            .approval
            .reason(tool, &facts.symbol, facts.identity.mode, value)
            .map(|reason| (reason, value))
    } else {
        None
    };

    let body = orders_body(facts.conid, legs).map_err(|_| {
        Decided::Refused(GuardRefusal {
            code: ErrorCode::InternalError,
            detail: "the order could not be encoded".into(),
            guard: "encoding",
        })
    })?;
    let would_send: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let primary = legs.first().map(|leg| leg.intent.clone());
    let intent = json!({
        "tool": tool,
        "symbol": facts.symbol,
        "conid": facts.conid,
        "account": facts.identity.account,
        "account_mode": mode_text(facts.identity.mode),
        "idempotency_key": key,
        "request_hash": hash,
        "coid": coid,
        "fingerprint": primary.as_ref().map(order_fingerprint),
        "side": primary.as_ref().map(|i| i.side.as_ibkr()),
        "notional": notional.map(to_decimal_string),
        "position_before": facts.position.map(to_decimal_string),
        "dry_run": policy.dry_run || refusal.is_some(),
        "approval_required": refusal.is_none() && approval_reason.is_some(),
        "arguments": arguments,
        "live_scope_granted": context.live_scope_granted,
        "legs": legs.iter().map(|leg| {
            let mut value = intent_json(&leg.intent);
            if let Value::Object(map) = &mut value {
                map.insert("leg".into(), json!(leg.label));
                map.insert("coid".into(), json!(leg.coid));
                map.insert("parent_coid".into(), json!(leg.parent_coid));
                map.insert("fingerprint".into(), json!(order_fingerprint(&leg.intent)));
            }
            value
        }).collect::<Vec<_>>(),
        "order": would_send,
    });
    if let Some((label, refused)) = refusal {
        return Ok(Decision {
            intent,
            outcome: Some((
                "blocked",
                json!({"code": refused.code.code(), "guard": refused.guard, "leg": label,
                       "detail": refused.detail}),
            )),
            in_flight: false,
            value: None,
        });
    }
    if let Some((reason, value)) = approval_reason {
        let expire_ms =
            i64::try_from(runtime.approval.expire_after.as_millis()).unwrap_or(i64::MAX);
        let waiting = json!({
            "reason": reason,
            "order_value": value.map(to_decimal_string),
            "expires_at_ms": now.saturating_add(expire_ms),
            "intent_hash": intent_hash(&intent),
        });
        return Ok(Decision {
            intent,
            outcome: Some(("awaiting_approval", waiting)),
            in_flight: false,
            value: Some(Go {
                coid,
                notional,
                body,
                would_send,
                awaiting_approval: true,
            }),
        });
    }
    Ok(Decision {
        intent,
        outcome: None,
        in_flight: !policy.dry_run,
        value: Some(Go {
            coid,
            notional,
            body,
            would_send,
            awaiting_approval: false,
        }),
    })
}

/// Every leg's guards on figures read under the journal's lock. Returns the value counted
/// toward the caps, or the first refusal and the leg it names. `except`: an attempt that must
/// not count against itself (an approved order checked again before it is sent).
pub(super) fn check_legs(
    view: &JournalView<'_>,
    runtime: &OrdersRuntime,
    facts: &Facts,
    legs: &[Leg],
    live_scope_granted: bool,
    now: i64,
    except: Option<u64>,
) -> Result<Option<Decimal>, (&'static str, GuardRefusal)> {
    let book = view.book();
    let policy = &runtime.policy;
    let today = now.div_euclid(86_400_000);
    let window_ms = i64::try_from(policy.duplicate_window_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let lag_ms = runtime.position_lag_ms();
    let market_open = runtime.market_open();
    let base_position = facts.position.unwrap_or(Decimal::ZERO);
    let entry_quantity = legs
        .iter()
        .find(|leg| leg.label == "entry")
        .and_then(|leg| leg.intent.quantity)
        .unwrap_or(Decimal::ZERO);
    let spent_today = book.spent_on_day_except(today, except);
    let mut notional = None;
    for leg in legs {
        let side = leg.intent.side;
        let commitments = book.commitments_except(facts.conid, side, now, lag_ms, except);
        let foreign = match side {
            Side::Sell => facts.foreign_sells,
            Side::Buy => facts.foreign_buys,
        };
        // A bracket's exits see the position after its entry, and not each other (they
        // are one-cancels-all).
        let position = if leg.is_child() {
            base_position + entry_quantity
        } else {
            base_position
        };
        let guard_context = GuardContext {
            account_mode: facts.identity.mode,
            account_id: &facts.identity.account,
            live_scope_granted,
            market_open: market_open.clone(),
            quote: facts.quote.as_ref(),
            position_quantity: position,
            committed_same_side: commitments.quantity + foreign,
            spent_today,
            recent_identical_within_window: book.recent_identical_except(
                &order_fingerprint(&leg.intent),
                now,
                window_ms,
                except,
            ),
            unresolved_same_instrument_side: view.unresolved_on(facts.conid, side).is_some(),
        };
        match check_order(&leg.intent, policy, &guard_context) {
            Ok(pass) => {
                if pass.notional.is_some() {
                    notional = pass.notional;
                }
            }
            Err(mut refused) => {
                if refused.code == ErrorCode::OrderExceedsSellable
                    && !commitments.order_ids.is_empty()
                {
                    refused.detail = format!(
                        "{} Orders that commit it: {}.",
                        refused.detail,
                        commitments.order_ids.join(", ")
                    );
                }
                return Err((leg.label, refused));
            }
        }
    }
    Ok(notional)
}

/// A journaled refusal, as the agent sees it.
pub(super) fn blocked_outcome(data: Option<Value>) -> Outcome {
    let data = data.unwrap_or(Value::Null);
    let code = data
        .get("code")
        .and_then(Value::as_str)
        .and_then(ErrorCode::from_code)
        .unwrap_or(ErrorCode::OrderInvalid);
    let detail = data.get("detail").and_then(Value::as_str);
    Outcome::Refused(code.body(detail))
}

/// How often a call waiting for the owner's approval tells the agent it still waits.
const APPROVAL_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The order waits for the owner's approval: tell the agent, and wait for the owner's
/// decision and the send that follows it, within this call's deadline. A wait longer than the
/// deadline answers `awaiting_approval`, which the agent polls (`ibkr_trade_history` with the
/// attempt id, or the same call with the same `idempotency_key`).
pub(super) async fn await_approval(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    attempt: u64,
) -> ToolResult {
    let mut step = 0.0;
    loop {
        // One read of both: between two reads the send could finish, and an attempt no
        // longer in flight would read as not sent.
        let Some((Some(record), in_flight)) = runtime.journal.with_book(|book, in_flight| {
            (book.get(attempt).cloned(), in_flight.contains(&attempt))
        }) else {
            return Err(journal_failure());
        };
        let now = tokio::time::Instant::now();
        match record.status {
            AttemptStatus::AwaitingApproval => {
                let request = record.approval_request();
                let expires_in_ms = request
                    .as_ref()
                    .map_or(0, |r| r.expires_at_ms.saturating_sub(now_ms()).max(0));
                if now >= context.deadline {
                    return Ok(awaiting_answer(&record, expires_in_ms));
                }
                if let Some(progress) = context.progress {
                    step += 1.0;
                    progress.send(
                        step,
                        None,
                        Some(format!(
                            "waiting for approval on the laptop: attempt {attempt} ({}); expires \
                             in {} s",
                            request.map(|r| r.reason).unwrap_or_default(),
                            expires_in_ms / 1000
                        )),
                    );
                }
            }
            AttemptStatus::Unresolved if in_flight => {
                if now >= context.deadline {
                    return Err(Outcome::Failed(ErrorCode::OrderOutcomeUnknown.body(Some(
                        &format!(
                            "(attempt {attempt} was approved and is being sent; call \
                             ibkr_trade_history with attempt_id {attempt} for its outcome)"
                        ),
                    ))));
                }
                if let Some(progress) = context.progress {
                    step += 1.0;
                    progress.send(
                        step,
                        None,
                        Some(format!("approved on the laptop; sending attempt {attempt}")),
                    );
                }
            }
            _ if record.status.placed() => return Ok(replay(&record)),
            _ => return Err(settled_outcome(&record)),
        }
        let wake = context.deadline.min(now + APPROVAL_PROGRESS_EVERY);
        // Returns at once when the attempt moves on; otherwise at `wake`.
        let _ = runtime.journal.wait_settled(attempt, wake).await;
    }
}

/// The answer while the owner has not decided yet: nothing was sent.
fn awaiting_answer(record: &Attempt, expires_in_ms: i64) -> Value {
    let request = record.approval_request();
    let again = if record.idempotency_key().is_some() {
        ", or repeat this call with the same idempotency_key to wait again"
    } else {
        ""
    };
    json!({
        "status": "awaiting_approval",
        "attempt_id": record.id,
        "symbol": record.intent.get("symbol"),
        "conid": record.conid(),
        "account_mode": record.intent.get("account_mode"),
        "client_order_id": record.coid(),
        "estimated_value": record.intent.get("notional"),
        "approval": {
            "reason": request.as_ref().map(|r| r.reason.clone()),
            "expires_at_ms": request.as_ref().map(|r| r.expires_at_ms),
            "expires_in_seconds": expires_in_ms / 1000,
        },
        "next": format!(
            "Nothing was sent: the order waits for the laptop owner's approval. Call \
             ibkr_trade_history with attempt_id {}{again}; do not place it again with another \
             key.",
            record.id
        ),
    })
}

/// The refusal an attempt that ended without reaching the broker answers with (or the
/// unknown outcome of one that may have).
pub(super) fn settled_outcome(record: &Attempt) -> Outcome {
    let data = record.last_outcome.as_ref().map(|(_, data)| data.clone());
    let field = |key: &str| {
        data.as_ref()
            .and_then(|d| d.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match record.status {
        AttemptStatus::Denied => {
            let mut detail = format!(
                "(attempt {}: denied by {} via {}",
                record.id,
                field("by").unwrap_or_else(|| "the owner".into()),
                field("via").unwrap_or_else(|| "the laptop".into())
            );
            if let Some(note) = field("note") {
                detail.push_str(&format!(": {note}"));
            }
            detail.push(')');
            Outcome::Refused(ErrorCode::OrderApprovalDenied.body(Some(&detail)))
        }
        AttemptStatus::ApprovalExpired => Outcome::Refused(
            ErrorCode::OrderApprovalExpired.body(Some(&format!("(attempt {})", record.id))),
        ),
        AttemptStatus::Blocked => blocked_outcome(data),
        AttemptStatus::Declined => Outcome::Refused(ErrorCode::OrderWarningDeclined.body(Some(
            &format!("(attempt {}; nothing was placed)", record.id),
        ))),
        AttemptStatus::Rejected => Outcome::Refused(
            ErrorCode::OrderRejected
                .body(Some(&format!("({})", field("reason").unwrap_or_default()))),
        ),
        _ => Outcome::Failed(ErrorCode::OrderOutcomeUnknown.body(Some(&format!(
            "(attempt {} may have been placed; run ibkr_reconcile_pending)",
            record.id
        )))),
    }
}

fn random_key() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

pub(crate) fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(base_map), Value::Object(extra_map)) = (&mut base, extra) {
        base_map.extend(extra_map);
    }
    base
}

/// What an idempotent retry answers from the journal. `attempt_id` is the journal's sequence
/// number of the attempt (for `ibkr_trade_history`), not a count of tries.
pub(crate) fn replay(attempt: &Attempt) -> Value {
    let (event, data) = attempt
        .last_outcome
        .clone()
        .unwrap_or_else(|| ("unresolved".into(), Value::Null));
    let status = if attempt.status.placed() {
        "sent".to_string()
    } else {
        event
    };
    json!({
        "status": status,
        "replayed": true,
        "attempt_id": attempt.id,
        "client_order_id": attempt.coid(),
        "order_ids": attempt.order_ids(),
        "outcome": data,
        "intent": attempt.intent.get("order"),
    })
}

/// Another call with the same key is placing the order now: wait for its outcome (within this
/// call's deadline) and answer it.
async fn wait_for_in_flight(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    attempt: u64,
) -> ToolResult {
    let settled = runtime
        .journal
        .wait_settled(attempt, context.deadline)
        .await;
    match settled {
        Some(done) if done.status.placed() => Ok(replay(&done)),
        Some(done) if done.status.definitely_not_placed() => Err(Outcome::Refused(
            ErrorCode::OrderRejected.body(Some(&format!(
                "(the first call with this idempotency_key ended {}; retry to try again)",
                done.status.as_str()
            ))),
        )),
        _ => Err(Outcome::Failed(ErrorCode::OrderOutcomeUnknown.body(Some(
            &format!(
                "(attempt {attempt} with this idempotency_key is still being placed; call again \
                 with the same key to learn its outcome)"
            ),
        )))),
    }
}

/// The same key's earlier attempt has an unknown outcome: look for it at the broker, and
/// never place it again on absence.
async fn settle_unknown(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    facts: &Facts,
    attempt: &Attempt,
) -> ToolResult {
    corroborate(
        runtime,
        context,
        &facts.identity.account,
        std::slice::from_ref(attempt),
    )
    .await;
    if let Some(done) = runtime.journal.attempt(attempt.id)
        && done.status.placed()
    {
        let mut answer = replay(&done);
        if let Value::Object(map) = &mut answer {
            map.insert("reconciled".into(), json!(true));
        }
        return Ok(answer);
    }
    Err(Outcome::Failed(ErrorCode::OrderOutcomeUnknown.body(Some(
        &format!(
            "(attempt {} with this idempotency_key may have been placed and the broker has not \
             shown it yet; it is not sent again. Run ibkr_reconcile_pending later; the laptop \
             owner can settle it with `ibkr-agent sidecar orders settle --attempt {}`)",
            attempt.id, attempt.id
        ),
    ))))
}
