//! The console's HTML, rendered on the server with maud (every interpolated value is escaped;
//! nothing here writes raw markup from data). No inline script or style: the strict
//! Content-Security-Policy would block them, and the page must work without any.
//!
//! [`page`] is the whole document; [`live`] is the part the page's script fetches again when
//! the event stream says something changed (`/fragment`).

use super::agents::agents_section;
use super::approvals::pending_approvals_section;
use super::events::CallRecord;
use super::security::Token;
use super::view::{ConsoleView, OrderRow};
use crate::cpgw::BrokerState;
use crate::cpgw::types::TradingMode;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use shared_safety::ErrorCode;

/// What forms need: the session's CSRF token.
pub struct FormContext<'a> {
    pub csrf: &'a Token,
}

/// A POST form to one of the console's actions, carrying the session's CSRF token (the server
/// refuses any POST without it). `fields` holds the visible inputs and the button.
pub fn action_form(form: &FormContext<'_>, action: &str, class: &str, fields: Markup) -> Markup {
    html! {
        form method="post" action=(action) class=(class) {
            input type="hidden" name="csrf" value=(form.csrf.expose());
            (fields)
        }
    }
}

/// The whole page.
pub fn page(view: &ConsoleView, form: &FormContext<'_>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "IBKR agent console · " (view.display_name) }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header.top {
                    div.brand {
                        span.logo { "◆" }
                        div {
                            h1 { "IBKR agent console" }
                            p.sub { (view.display_name) " · this laptop's sidecar" }
                        }
                    }
                    p.live-note #live-note { "live" }
                }
                main #live { (live(view, form)) }
                footer {
                    "Sidecar " code { (view.sidecar_id) } " · key fingerprint "
                    code { (view.sidecar_fingerprint) }
                    " · served on loopback to this laptop only"
                }
            }
        }
    }
}

/// The live part: banners, then the cards.
pub fn live(view: &ConsoleView, form: &FormContext<'_>) -> Markup {
    html! {
        div.pills {
            (pill("Relay", view.relay.connected(), if view.relay.connected() { "connected" } else { "not connected" }, "relay-pill"))
            (pill("Client Portal", view.broker.state == BrokerState::Ready, broker_word(view.broker.state), "broker-pill"))
            (pill("Trading", view.pause.is_none(), if view.pause.is_some() { "paused" } else { "active" }, "trading-pill"))
            span.pill.neutral #mode-pill { "Account " strong { (mode_word(view)) } }
        }
        @for problem in &view.problems {
            div.banner.bad { strong { "Could not read " } (problem) }
        }
        @if let Some(pause) = &view.pause {
            div.banner.warn #pause-banner {
                strong { "Trading is paused" } " since " (unix_time(pause.paused_at))
                @if !pause.reason.is_empty() { " — " q { (pause.reason) } }
                ". Every tool that could send a new order is refused with "
                code { (ErrorCode::TradingPaused.code()) } "; cancels and the reconcile still go."
            }
        }
        @if let Some(step) = &view.broker.next_step {
            div.banner.bad #login-banner {
                @if view.broker.state == BrokerState::LoginRequired {
                    strong { "Manual login needed. " }
                    "The IBKR Client Portal Gateway has no logged-in session: "
                    a #login-link href=(view.broker.login_url) target="_blank" rel="noopener noreferrer" {
                        "log in at " (view.broker.login_url)
                    }
                    " in this laptop's browser (with 2FA). Nothing logs in for you."
                } @else {
                    strong { "Client Portal: " } (step)
                }
            }
        }
        @if !view.relay.connected() {
            div.banner.bad #relay-banner {
                strong { "The relay to the gateway is not connected. " }
                @match &view.relay.last_record {
                    Some(record) => {
                        @if let Some(code) = &record.code { code { (code) } " " }
                        (record.detail)
                        @if let Some(action) = record.code.as_deref().and_then(ErrorCode::from_code) {
                            " " (action.user_action())
                        }
                    }
                    None => "No connection attempt is recorded yet.",
                }
            }
        }
        div.grid {
            (trading_card(view, form))
            (relay_card(view))
            (broker_card(view))
            section.card.wide #approvals {
                h2 { "Pending approvals" }
                (pending_approvals_section(view, form))
            }
            section.card.wide #agents {
                h2 { "Agents" }
                (agents_section(view, form))
            }
            (calls_card(&view.calls))
            (orders_card(&view.orders))
            (pairings_card(view))
        }
        p.updated { "Updated " time datetime=(rfc3339(view.now_unix * 1000)) { (clock(view.now_unix * 1000)) } }
    }
}

fn pill(label: &str, good: bool, word: &str, id: &str) -> Markup {
    html! {
        span.pill.(if good { "good" } else { "bad" }) id=(id) { (label) " " strong { (word) } }
    }
}

fn broker_word(state: BrokerState) -> &'static str {
    match state {
        BrokerState::Ready => "logged in",
        BrokerState::LoginRequired => "login needed",
        BrokerState::Unreachable => "unreachable",
        BrokerState::Competing => "competing session",
        BrokerState::RateLimited => "rate limited",
        BrokerState::Unknown => "unknown",
    }
}

fn mode_word(view: &ConsoleView) -> &'static str {
    match view.broker.account.as_ref().map(|account| account.mode) {
        Some(TradingMode::Paper) => "paper",
        Some(TradingMode::Live) => "LIVE",
        Some(TradingMode::Unknown) | None => "unknown",
    }
}

fn row(label: &str, value: Markup) -> Markup {
    html! { tr { th scope="row" { (label) } td { (value) } } }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn yes_no(value: &Value) -> &'static str {
    if value.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

fn trading_card(view: &ConsoleView, form: &FormContext<'_>) -> Markup {
    let posture = &view.posture;
    let usd = |key: &str| match &posture[key] {
        Value::Null => "no cap".to_string(),
        value => format!("${}", text_of(value)),
    };
    html! {
        section.card.trading #trading {
            h2 { "Trading" }
            table.kv {
                (row("Account", html! {
                    @match &view.broker.account {
                        Some(account) => { code { (account.id) } " · " strong #account-mode { (mode_word(view)) } }
                        None => span.muted { "not known (no Client Portal session)" },
                    }
                }))
                (row("Dry run", html! { span #dry-run { @if posture["dry_run"].as_bool() == Some(true) { "on: orders are checked, never sent" } @else { "off: orders are sent" } } }))
                (row("Live trading allowed", html! { (yes_no(&posture["live_trading_allowed"])) }))
                (row("Cap per order (buys)", html! { (usd("max_order_value")) }))
                (row("Cap per day (buys)", html! { (usd("max_daily_value")) }))
                (row("Spent today", html! { (usd("spent_today")) }))
                (row("Remaining today", html! { span #remaining-budget { (usd("remaining_daily_budget")) } }))
                (row("Unresolved orders", html! { span #unresolved { (text_of(&posture["unresolved_orders"])) } }))
                (row("Safe to trade", html! { strong #safe-to-trade { (yes_no(&posture["safe_to_trade"])) } }))
            }
            @if view.pause.is_some() {
                (action_form(form, "/resume", "switch", html! {
                    p { "Trading is " strong #trading-state { "paused" } "." }
                    button #resume-button type="submit" class="go" { "Resume trading" }
                }))
            } @else {
                (action_form(form, "/pause", "switch", html! {
                    p { "Trading is " strong #trading-state { "active" } "." }
                    label for="pause-reason" { "Reason (optional, shown to the agent)" }
                    input #pause-reason type="text" name="reason" maxlength="200" autocomplete="off" placeholder="e.g. lunch";
                    button #pause-button type="submit" class="stop" { "Pause trading" }
                }))
            }
        }
    }
}

fn relay_card(view: &ConsoleView) -> Markup {
    let relay = &view.relay;
    html! {
        section.card #relay {
            h2 { "Relay to the gateway" }
            table.kv {
                (row("State", html! { strong #relay-state { @if relay.connected() { "connected" } @else { "not connected" } } }))
                (row("Gateway", html! { @match &relay.url { Some(url) => code #relay-url { (url) }, None => span.muted { "not configured" } } }))
                (row("Gateway key", html! { @match &relay.gateway_fingerprint { Some(print) => code #gateway-fingerprint { (print) }, None => span.muted { "none pinned" } } }))
                (row("Last heartbeat", html! { span #heartbeat-age { @match relay.live.heartbeat_age() { Some(age) => { (age.as_secs()) " s ago" }, None => "—" } } }))
                (row("Connected since", html! { @match (relay.connected(), relay.live.connected_at) { (true, Some(at)) => (unix_time(at)), _ => "—" } }))
                (row("Reconnects", html! { span #reconnects { (relay.live.reconnects()) } }))
            }
        }
    }
}

fn broker_card(view: &ConsoleView) -> Markup {
    let broker = &view.broker;
    html! {
        section.card #broker {
            h2 { "IBKR Client Portal" }
            table.kv {
                (row("State", html! { strong #broker-state { (broker_word(broker.state)) } }))
                (row("Login page", html! { a href=(broker.login_url) target="_blank" rel="noopener noreferrer" { (broker.login_url) } }))
            }
            p.muted { "The sidecar keeps the session alive; it never logs in for you." }
        }
    }
}

fn pairings_card(view: &ConsoleView) -> Markup {
    html! {
        section.card.wide #pairings {
            h2 { "Pairings and local grants" }
            @if view.pairings.is_empty() {
                p.muted { "No pairing." }
            } @else {
                table.list {
                    thead { tr { th { "User" } th { "Gateway instance" } th { "Status" } th { "Scopes this laptop grants" } } }
                    tbody {
                        @for record in &view.pairings {
                            tr {
                                td { (record.user_id) }
                                td { code { (record.remote_instance_id) } }
                                td { (record.status(view.now_unix)) }
                                td.scopes { @for scope in record.local_scope_list() { span.scope { (scope) } " " } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn calls_card(calls: &[CallRecord]) -> Markup {
    html! {
        section.card #recent-calls {
            h2 { "Recent tool calls" }
            @if calls.is_empty() {
                p.muted { "No call since the daemon started." }
            } @else {
                table.list #calls {
                    thead { tr { th { "Time" } th { "Tool" } th { "Outcome" } th.num { "ms" } } }
                    tbody {
                        @for call in calls.iter().take(15) {
                            tr {
                                td { time datetime=(rfc3339(call.at_ms)) { (clock(call.at_ms)) } }
                                td.tool { (call.tool) }
                                td { span.outcome.(if call.outcome == "OK" { "good" } else { "bad" }) { (call.outcome) } }
                                td.num { (call.duration.as_millis()) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn orders_card(orders: &[OrderRow]) -> Markup {
    html! {
        section.card.double #recent-orders {
            h2 { "Recent order attempts (trade journal)" }
            @if orders.is_empty() {
                p.muted { "No order attempt in the journal." }
            } @else {
                table.list #orders {
                    thead { tr { th { "Time" } th { "Tool" } th { "Symbol" } th { "Side" } th.num { "Size" } th.num { "Est. value" } th { "Status" } } }
                    tbody {
                        @for order in orders {
                            tr {
                                td { time datetime=(rfc3339(order.at_ms)) { (clock(order.at_ms)) } }
                                td { (order.tool) }
                                td { strong { (order.symbol) } }
                                td { (order.side) }
                                td.num { (order.size) }
                                td.num { @match &order.estimated_value { Some(value) => { "$" (value) }, None => "—" } }
                                td { span.status { (order.status) } @if order.dry_run && order.status != "dry_run" { " (dry run)" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// After a login that arrived from another site: moves on to the console (a meta refresh, which
/// the CSP allows, unlike an inline script), with a link for a browser that does not.
pub fn continue_to_console() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="0;url=/";
                title { "IBKR agent console" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body.refusal { main { p { a href="/" { "Open the console" } } } }
        }
    }
}

/// A refusal as a page: the code, what happened and what to do. Never echoes the request.
pub fn refusal(code: ErrorCode) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "IBKR agent console: " (code.code()) }
                link rel="stylesheet" href="/assets/console.css";
            }
            body.refusal {
                main {
                    h1 { "Not allowed" }
                    p { code #error-code { (code.code()) } }
                    p { (code.message()) }
                    p { strong { "What to do: " } (code.user_action()) }
                }
            }
        }
    }
}

fn datetime(at_ms: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000).ok()
}

/// `HH:MM:SS UTC` (the page's script shows it in the browser's time zone).
fn clock(at_ms: i64) -> String {
    datetime(at_ms).map_or_else(String::new, |at| {
        format!("{:02}:{:02}:{:02} UTC", at.hour(), at.minute(), at.second())
    })
}

fn rfc3339(at_ms: i64) -> String {
    datetime(at_ms)
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn unix_time(at: i64) -> Markup {
    html! { time datetime=(rfc3339(at * 1000)) { (clock(at * 1000)) } }
}
