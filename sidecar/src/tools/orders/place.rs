//! Placing orders: guards, journal, dry-run or send, confirmation loop, idempotency.

use super::ticket::{
    Leg, decimal_arg, intent, intent_json, invalid, orders_body, side_arg, text_arg, tif_arg,
};
use super::{OrdersRuntime, now_ms, runtime};
use crate::cpgw::CpgwClient;
use crate::cpgw::manual_login_action;
use crate::cpgw::marketdata::{Contract, SNAPSHOT_BACKOFF, snapshot};
use crate::cpgw::orders::{PlaceReply, SendFailure};
use crate::cpgw::portfolio::positions;
use crate::cpgw::types::{TradingMode, trading_mode};
use crate::tools::context::{ToolContext, ToolResult, cpgw_failure};
use crate::trading::journal::{Attempt, AttemptStatus};
use protocol::envelope::Outcome;
use serde_json::{Map, Value, json};
use shared_safety::ErrorCode;
use shared_safety::guards::{
    AccountMode, GuardContext, MarketQuote, OrderIntentRole, OrderKind, Side, Tif, check_order,
    client_order_id, order_fingerprint, warning_allowed,
};
use shared_safety::money::{Decimal, to_decimal_string};

/// Most confirmation rounds answered before giving up (declining).
pub const MAX_CONFIRM_ROUNDS: usize = 5;

/// The account CPGW serves and whether it is paper.
pub(crate) struct AccountIdentity {
    pub account: String,
    pub mode: AccountMode,
}

pub(crate) async fn account_identity(
    context: &ToolContext<'_>,
) -> Result<AccountIdentity, Outcome> {
    let reply = context
        .cpgw
        .accounts()
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?;
    let account = reply.active_account().map(str::to_string).ok_or_else(|| {
        Outcome::Refused(
            ErrorCode::OrderAccountUnverified.body(Some("(CPGW names no selected account)")),
        )
    })?;
    let mode = match trading_mode(reply.is_paper, &account) {
        TradingMode::Paper => AccountMode::Paper,
        TradingMode::Live => AccountMode::Live,
        TradingMode::Unknown => AccountMode::Unknown,
    };
    Ok(AccountIdentity { account, mode })
}

async fn quote_of(context: &ToolContext<'_>, conid: i64) -> Option<MarketQuote> {
    let quotes = snapshot(context.cpgw, &[conid], SNAPSHOT_BACKOFF)
        .await
        .ok()?;
    let quote = quotes.get(&conid)?;
    Some(MarketQuote {
        last: quote.last,
        bid: quote.bid,
        ask: quote.ask,
    })
}

async fn position_of(
    context: &ToolContext<'_>,
    account: &str,
    conid: i64,
) -> Result<Decimal, Outcome> {
    let held = positions(context.cpgw, account, false)
        .await
        .map_err(|error| cpgw_failure(error, context.cpgw))?;
    Ok(held
        .iter()
        .filter(|position| position.conid == conid)
        .map(|position| position.quantity)
        .fold(Decimal::ZERO, |total, quantity| total + quantity))
}

fn random_key() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    hex::encode(bytes)
}

fn journal_failure() -> Outcome {
    Outcome::Refused(ErrorCode::JournalError.body(None))
}

/// The legs of a placing tool, before cOIDs are known (they are filled in later).
fn legs_for(
    tool: &str,
    symbol: &str,
    arguments: &Map<String, Value>,
    held: Option<Decimal>,
) -> Result<Vec<Leg>, Outcome> {
    let leg = |label, intent| Leg {
        label,
        intent,
        coid: String::new(),
        parent_coid: None,
    };
    match tool {
        "ibkr_buy" => {
            let quantity = decimal_arg(arguments, "quantity")?;
            let cash = decimal_arg(arguments, "cash_amount")?;
            let limit = decimal_arg(arguments, "limit_price")?;
            let kind = if limit.is_some() {
                OrderKind::Limit
            } else {
                OrderKind::Market
            };
            if cash.is_some() && limit.is_some() {
                return Err(invalid(
                    "(cash_amount buys are market orders only; use quantity with limit_price)",
                ));
            }
            let mut buy = intent(
                symbol,
                Side::Buy,
                kind,
                OrderIntentRole::Entry,
                tif_arg(arguments, Tif::Day)?,
            );
            buy.quantity = quantity;
            buy.cash_amount = cash;
            buy.limit_price = limit;
            Ok(vec![leg("order", buy)])
        }
        "ibkr_sell" => {
            let limit = decimal_arg(arguments, "limit_price")?;
            let mut sell = intent(
                symbol,
                Side::Sell,
                if limit.is_some() {
                    OrderKind::Limit
                } else {
                    OrderKind::Market
                },
                OrderIntentRole::Exit,
                tif_arg(arguments, Tif::Day)?,
            );
            sell.quantity = decimal_arg(arguments, "quantity")?;
            sell.limit_price = limit;
            Ok(vec![leg("order", sell)])
        }
        "ibkr_close_position" => {
            let held = held.unwrap_or(Decimal::ZERO);
            if held.is_zero() {
                return Err(Outcome::Refused(ErrorCode::PositionNotFound.body(None)));
            }
            let side = if held > Decimal::ZERO {
                Side::Sell
            } else {
                Side::Buy
            };
            let mut close = intent(
                symbol,
                side,
                OrderKind::Market,
                OrderIntentRole::Exit,
                Tif::Day,
            );
            close.quantity = Some(held.abs());
            Ok(vec![leg("order", close)])
        }
        "ibkr_stop_order" => {
            let limit = decimal_arg(arguments, "limit_price")?;
            let mut stop = intent(
                symbol,
                side_arg(arguments)?,
                if limit.is_some() {
                    OrderKind::StopLimit
                } else {
                    OrderKind::Stop
                },
                OrderIntentRole::Protective,
                tif_arg(arguments, Tif::Gtc)?,
            );
            stop.quantity = decimal_arg(arguments, "quantity")?;
            stop.stop_price = decimal_arg(arguments, "stop_price")?;
            stop.limit_price = limit;
            Ok(vec![leg("order", stop)])
        }
        "ibkr_trailing_stop" => {
            let mut trail = intent(
                symbol,
                side_arg(arguments)?,
                OrderKind::TrailingStop,
                OrderIntentRole::Protective,
                tif_arg(arguments, Tif::Gtc)?,
            );
            trail.quantity = decimal_arg(arguments, "quantity")?;
            trail.trail_amount = decimal_arg(arguments, "trail_amount")?;
            trail.trail_percent = decimal_arg(arguments, "trail_percent")?;
            Ok(vec![leg("order", trail)])
        }
        "ibkr_bracket_order" => {
            let quantity = decimal_arg(arguments, "quantity")?;
            let entry_limit = decimal_arg(arguments, "entry_limit_price")?;
            let exits_tif = tif_arg(arguments, Tif::Gtc)?;
            let mut entry = intent(
                symbol,
                Side::Buy,
                if entry_limit.is_some() {
                    OrderKind::Limit
                } else {
                    OrderKind::Market
                },
                OrderIntentRole::Entry,
                Tif::Day,
            );
            entry.quantity = quantity;
            entry.limit_price = entry_limit;
            let mut take_profit = intent(
                symbol,
                Side::Sell,
                OrderKind::Limit,
                OrderIntentRole::Exit,
                exits_tif,
            );
            take_profit.quantity = quantity;
            take_profit.limit_price = decimal_arg(arguments, "take_profit")?;
            let mut stop_loss = intent(
                symbol,
                Side::Sell,
                OrderKind::Stop,
                OrderIntentRole::Protective,
                exits_tif,
            );
            stop_loss.quantity = quantity;
            stop_loss.stop_price = decimal_arg(arguments, "stop_loss")?;
            if let (Some(tp), Some(sl)) = (take_profit.limit_price, stop_loss.stop_price)
                && tp <= sl
            {
                return Err(invalid("(take_profit must be above stop_loss)"));
            }
            Ok(vec![
                leg("entry", entry),
                leg("take_profit", take_profit),
                leg("stop_loss", stop_loss),
            ])
        }
        _ => Err(Outcome::Refused(ErrorCode::ToolUnknown.body(None))),
    }
}

/// What an idempotent retry answers from the journal.
fn replay(attempt: &Attempt) -> Value {
    let (event, data) = attempt
        .first_outcome
        .clone()
        .unwrap_or_else(|| ("unresolved".into(), Value::Null));
    json!({
        "status": event,
        "replayed": true,
        "attempt": attempt.id,
        "client_order_id": attempt.coid(),
        "outcome": data,
        "intent": attempt.intent.get("order"),
    })
}

/// Looks for an attempt's orders at the broker. `Ok(Some(ids))`: found (placed);
/// `Ok(None)`: absent from a complete list (not placed); `Err`: cannot tell yet.
pub(crate) async fn find_at_broker(
    client: &CpgwClient,
    attempt: &Attempt,
) -> Result<Option<Vec<String>>, Outcome> {
    let coids: Vec<String> = attempt
        .intent
        .get("legs")
        .and_then(Value::as_array)
        .map(|legs| {
            legs.iter()
                .filter_map(|leg| leg.get("coid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let (list, complete) = client
        .live_orders_complete()
        .await
        .map_err(|error| cpgw_failure(error, client))?;
    let found: Vec<String> = list
        .orders
        .iter()
        .filter(|row| row.order_ref.as_ref().is_some_and(|r| coids.contains(r)))
        .filter_map(|row| row.order_id.as_ref().map(|id| id.as_str().to_string()))
        .collect();
    if !found.is_empty() {
        return Ok(Some(found));
    }
    if complete {
        return Ok(None);
    }
    Err(Outcome::Failed(ErrorCode::OrderOutcomeUnknown.body(Some(
        "(the broker's order list is still warming up; try again in a few seconds)",
    ))))
}

/// Resolves one pending attempt against the broker and journals the result.
pub(crate) async fn reconcile_attempt(
    runtime: &OrdersRuntime,
    client: &CpgwClient,
    attempt: &Attempt,
) -> Result<Option<Vec<String>>, Outcome> {
    let found = find_at_broker(client, attempt).await?;
    let data = match &found {
        Some(ids) => json!({"placed": true, "order_ids": ids}),
        None => json!({"placed": false}),
    };
    runtime
        .journal
        .outcome(attempt.id, "reconciled", data, now_ms())
        .map_err(|_| journal_failure())?;
    Ok(found)
}

/// `ibkr_buy`, `ibkr_sell`, `ibkr_close_position`, `ibkr_stop_order`, `ibkr_trailing_stop`,
/// `ibkr_bracket_order`.
pub async fn place(
    tool: &str,
    arguments: &Map<String, Value>,
    context: &ToolContext<'_>,
) -> ToolResult {
    let runtime = runtime(context)?;
    let policy = &runtime.policy;
    let symbol_arg = text_arg(arguments, "symbol").unwrap_or_default();
    let key = text_arg(arguments, "idempotency_key").map(str::to_string);

    // Idempotency: a retried key answers its first outcome and never places a second order.
    if let Some(key) = &key {
        let prior = runtime.journal.by_idempotency_key(key);
        for attempt in &prior {
            if attempt.pending() {
                match reconcile_attempt(runtime, context.cpgw, attempt).await? {
                    Some(ids) => {
                        return Ok(json!({
                            "status": "sent",
                            "replayed": true,
                            "reconciled": true,
                            "attempt": attempt.id,
                            "client_order_id": attempt.coid(),
                            "order_ids": ids,
                        }));
                    }
                    None => continue,
                }
            }
            if attempt.status != AttemptStatus::ReconciledNotPlaced {
                return Ok(replay(attempt));
            }
        }
    }

    let contract: Contract = context.contracts.resolve_symbol(symbol_arg).await?;
    let symbol = contract.symbol.clone();
    let identity = account_identity(context).await?;

    let needs_position = tool != "ibkr_buy";
    let held = if needs_position {
        Some(position_of(context, &identity.account, contract.conid).await?)
    } else {
        None
    };
    let mut legs = legs_for(tool, &symbol, arguments, held)?;
    let quote = quote_of(context, contract.conid).await;

    // cOIDs: deterministic from the idempotency key, random otherwise.
    let namespace = format!("{}|{}", context.sidecar_id, identity.account);
    let base_coid = client_order_id(key.as_deref().unwrap_or(&random_key()), &namespace);
    let parent = base_coid.clone();
    for leg in legs.iter_mut() {
        leg.coid = match leg.label {
            "take_profit" => format!("{base_coid}-tp"),
            "stop_loss" => format!("{base_coid}-sl"),
            _ => base_coid.clone(),
        };
        if matches!(leg.label, "take_profit" | "stop_loss") {
            leg.parent_coid = Some(parent.clone());
        }
    }

    // Guards, every leg. Bracket exits see the position as it will be after the entry.
    let now = now_ms();
    let today = now.div_euclid(86_400_000);
    let window_ms = i64::try_from(policy.duplicate_window_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let market_open = runtime.market_open();
    let base_position = held.unwrap_or(Decimal::ZERO);
    let entry_quantity = legs
        .iter()
        .find(|leg| leg.label == "entry")
        .and_then(|leg| leg.intent.quantity)
        .unwrap_or(Decimal::ZERO);
    let mut notional = None;
    let mut refusal = None;
    for leg in &legs {
        let fingerprint = order_fingerprint(&leg.intent);
        let (recent, pending) = runtime.journal.identical(&fingerprint, now, window_ms);
        let position = if matches!(leg.label, "take_profit" | "stop_loss") {
            base_position + entry_quantity
        } else {
            base_position
        };
        let guard_context = GuardContext {
            account_mode: identity.mode,
            live_scope_granted: context.live_scope_granted,
            market_open: market_open.clone(),
            quote: quote.as_ref(),
            position_quantity: position,
            spent_today: runtime.journal.spent_on_day(today),
            recent_identical_within_window: recent,
            identical_indeterminate_pending: pending,
        };
        match check_order(&leg.intent, policy, &guard_context) {
            Ok(pass) => {
                if pass.notional.is_some() {
                    notional = pass.notional;
                }
            }
            Err(refused) => {
                refusal = Some((leg.label, refused));
                break;
            }
        }
    }

    let body = orders_body(contract.conid, &legs)?;
    let would_send: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let primary = legs.first().map(|leg| leg.intent.clone());
    let intent_data = json!({
        "tool": tool,
        "symbol": symbol,
        "conid": contract.conid,
        "account": identity.account,
        "account_mode": match identity.mode {
            AccountMode::Paper => "paper",
            AccountMode::Live => "live",
            AccountMode::Unknown => "unknown",
        },
        "idempotency_key": key,
        "coid": base_coid,
        "fingerprint": primary.as_ref().map(order_fingerprint),
        "side": primary.as_ref().map(|i| i.side.as_ibkr()),
        "notional": notional.map(to_decimal_string),
        "dry_run": policy.dry_run || refusal.is_some(),
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
    // The intent is durable before anything is sent.
    let attempt = runtime
        .journal
        .intent(intent_data, now)
        .map_err(|_| journal_failure())?;

    if let Some((label, refused)) = refusal {
        let _ = runtime.journal.outcome(
            attempt,
            "blocked",
            json!({"code": refused.code.code(), "guard": refused.guard, "leg": label,
                   "detail": refused.detail}),
            now_ms(),
        );
        return Err(Outcome::Refused(refused.body()));
    }

    let base = json!({
        "attempt": attempt,
        "symbol": symbol,
        "conid": contract.conid,
        "account_mode": if identity.mode == AccountMode::Live { "live" } else { "paper" },
        "client_order_id": base_coid,
        "estimated_value": notional.map(to_decimal_string),
    });
    if policy.dry_run {
        runtime
            .journal
            .outcome(attempt, "dry_run", json!({}), now_ms())
            .map_err(|_| journal_failure())?;
        return Ok(merge(
            base,
            json!({"status": "dry_run", "would_send": would_send}),
        ));
    }

    send(runtime, context, attempt, &identity.account, body, base).await
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(base_map), Value::Object(extra_map)) = (&mut base, extra) {
        base_map.extend(extra_map);
    }
    base
}

/// Sends and answers the confirmation questions; journals the outcome.
async fn send(
    runtime: &OrdersRuntime,
    context: &ToolContext<'_>,
    attempt: u64,
    account: &str,
    body: String,
    base: Value,
) -> ToolResult {
    let journal = &runtime.journal;
    let mut reply = context.cpgw.place_orders(account, body).await;
    let mut rounds = 0usize;
    let mut accepted_warnings: Vec<String> = Vec::new();
    loop {
        match reply {
            Ok(PlaceReply::Acks(acks)) => {
                let ids: Vec<String> = acks
                    .iter()
                    .map(|a| a.order_id.as_str().to_string())
                    .collect();
                let statuses: Vec<Option<String>> =
                    acks.iter().map(|a| a.order_status.clone()).collect();
                journal
                    .outcome(
                        attempt,
                        "sent",
                        json!({"order_ids": ids, "order_statuses": statuses,
                               "accepted_warnings": accepted_warnings}),
                        now_ms(),
                    )
                    .map_err(|_| journal_failure())?;
                return Ok(merge(
                    base,
                    json!({
                        "status": "sent",
                        "order_id": ids.first(),
                        "order_ids": ids,
                        "order_status": statuses.first().cloned().flatten(),
                        "accepted_warnings": accepted_warnings,
                    }),
                ));
            }
            Ok(PlaceReply::Question {
                id,
                messages,
                message_ids,
            }) => {
                rounds += 1;
                let allowed = !message_ids.is_empty()
                    && message_ids
                        .iter()
                        .all(|message_id| warning_allowed(&runtime.policy, message_id));
                if !allowed || rounds > MAX_CONFIRM_ROUNDS {
                    let _ = context.cpgw.reply(&id, false).await;
                    let _ = journal.outcome(
                        attempt,
                        "declined",
                        json!({"message_ids": message_ids, "messages": messages}),
                        now_ms(),
                    );
                    let detail = format!(
                        "(warning ids: {}; message: {})",
                        message_ids.join(", "),
                        messages.join(" ")
                    );
                    return Err(Outcome::Refused(
                        ErrorCode::OrderWarningDeclined.body(Some(&detail)),
                    ));
                }
                accepted_warnings.extend(message_ids);
                reply = context.cpgw.reply(&id, true).await;
            }
            Err(SendFailure::Indeterminate { reason }) => {
                let _ = journal.outcome(
                    attempt,
                    "indeterminate",
                    json!({"reason": reason}),
                    now_ms(),
                );
                return Err(Outcome::Failed(ErrorCode::OrderOutcomeUnknown.body(Some(
                    &format!("({reason}; attempt {attempt}; run ibkr_reconcile_pending)"),
                ))));
            }
            Err(SendFailure::Rejected { reason }) => {
                let _ = journal.outcome(attempt, "rejected", json!({"reason": reason}), now_ms());
                return Err(Outcome::Refused(
                    ErrorCode::OrderRejected.body(Some(&format!("({reason})"))),
                ));
            }
            Err(SendFailure::NotSent { reason }) => {
                let _ = journal.outcome(
                    attempt,
                    "rejected",
                    json!({"reason": reason, "not_sent": true}),
                    now_ms(),
                );
                return Err(Outcome::Failed(
                    ErrorCode::BrokerUnreachable.body(Some("(the order was not sent)")),
                ));
            }
            Err(SendFailure::NotAuthenticated) => {
                let _ = journal.outcome(
                    attempt,
                    "rejected",
                    json!({"reason": "no authenticated CPGW session", "not_sent": true}),
                    now_ms(),
                );
                return Err(Outcome::ManualActionRequired(manual_login_action(
                    &context.cpgw.portal_location(),
                )));
            }
        }
    }
}

/// `ibkr_order_preview`: what-if; sends nothing to the market and journals nothing.
pub async fn preview(arguments: &Map<String, Value>, context: &ToolContext<'_>) -> ToolResult {
    let symbol_arg = text_arg(arguments, "symbol").unwrap_or_default();
    let side = side_arg(arguments)?;
    let contract = context.contracts.resolve_symbol(symbol_arg).await?;
    let identity = account_identity(context).await?;
    let limit = decimal_arg(arguments, "limit_price")?;
    let mut order = intent(
        &contract.symbol,
        side,
        if limit.is_some() {
            OrderKind::Limit
        } else {
            OrderKind::Market
        },
        if side == Side::Buy {
            OrderIntentRole::Entry
        } else {
            OrderIntentRole::Exit
        },
        Tif::Day,
    );
    order.quantity = decimal_arg(arguments, "quantity")?;
    order.cash_amount = decimal_arg(arguments, "cash_amount")?;
    order.limit_price = limit;
    if order.cash_amount.is_some() && (side == Side::Sell || limit.is_some()) {
        return Err(invalid("(cash_amount only on market buys)"));
    }
    let leg = Leg {
        label: "order",
        intent: order.clone(),
        coid: client_order_id(&random_key(), "preview"),
        parent_coid: None,
    };
    let body = orders_body(contract.conid, std::slice::from_ref(&leg))?;
    let answer = match context.cpgw.whatif(&identity.account, body).await {
        Ok(answer) => answer,
        Err(SendFailure::Rejected { reason }) => {
            return Err(Outcome::Refused(
                ErrorCode::OrderRejected.body(Some(&format!("({reason})"))),
            ));
        }
        Err(SendFailure::NotAuthenticated) => {
            return Err(Outcome::ManualActionRequired(manual_login_action(
                &context.cpgw.portal_location(),
            )));
        }
        Err(_) => return Err(Outcome::Failed(ErrorCode::BrokerError.body(None))),
    };
    let amount = |section: &str, field: &str| -> Value {
        answer
            .get(section)
            .and_then(|s| s.get(field))
            .and_then(Value::as_str)
            .and_then(shared_safety::money::parse_broker_amount)
            .map_or(Value::Null, |(value, currency)| {
                json!({"amount": to_decimal_string(value), "currency": currency})
            })
    };
    let warning = answer
        .get("warn")
        .and_then(Value::as_str)
        .map(|text| text.chars().take(300).collect::<String>());
    Ok(json!({
        "status": "preview",
        "symbol": contract.symbol,
        "conid": contract.conid,
        "order": intent_json(&order),
        "commission": amount("amount", "commission"),
        "total": amount("amount", "total"),
        "amount": amount("amount", "amount"),
        "equity_change": amount("equity", "change"),
        "initial_margin_change": amount("initial", "change"),
        "maintenance_margin_change": amount("maintenance", "change"),
        "warning": warning,
        "error": answer.get("error").and_then(Value::as_str),
    }))
}
