//! The tool catalog: the stable API agents see. Names and scopes never change meaning once
//! published; input schemas are closed (`additionalProperties: false`) so an unknown field is
//! refused instead of ignored.

/// OAuth scopes. A tool runs only when both the agent's token and the sidecar's local pairing
/// record grant its scope.
pub mod scopes {
    pub const HEALTH_READ: &str = "ibkr:health:read";
    pub const MARKETDATA_READ: &str = "ibkr:marketdata:read";
    pub const ACCOUNTS_READ: &str = "ibkr:accounts:read";
    pub const PORTFOLIO_READ: &str = "ibkr:portfolio:read";
    pub const POSITIONS_READ: &str = "ibkr:positions:read";
    pub const ORDERS_PREVIEW: &str = "ibkr:orders:preview";
    pub const ORDERS_READ: &str = "ibkr:orders:read";
    pub const ORDERS_WRITE: &str = "ibkr:orders:write";
    /// Needed on top of `ibkr:orders:write` for a live (non-paper) account.
    pub const ORDERS_LIVE: &str = "ibkr:orders:live";
    pub const AUDIT_READ: &str = "ibkr:audit:read";

    /// Every scope this product defines.
    pub const ALL: &[&str] = &[
        HEALTH_READ,
        MARKETDATA_READ,
        ACCOUNTS_READ,
        PORTFOLIO_READ,
        POSITIONS_READ,
        ORDERS_PREVIEW,
        ORDERS_READ,
        ORDERS_WRITE,
        ORDERS_LIVE,
        AUDIT_READ,
    ];

    /// Scopes that only read (the default grant of a new local pairing record).
    pub const READ_ONLY: &[&str] = &[
        HEALTH_READ,
        MARKETDATA_READ,
        ACCOUNTS_READ,
        PORTFOLIO_READ,
        POSITIONS_READ,
        ORDERS_READ,
        AUDIT_READ,
    ];

    pub fn is_known(scope: &str) -> bool {
        ALL.contains(&scope)
    }
}

/// Where a tool is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Relayed to the user's sidecar.
    Sidecar,
    /// Partly answered by the gateway itself (it adds its own and the relay's status), then
    /// relayed if a sidecar is connected.
    GatewayAndSidecar,
}

/// One tool of the catalog.
#[derive(Clone, Copy, Debug)]
pub struct ToolSpec {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub scope: &'static str,
    /// JSON Schema (draft 2020-12 subset) of the arguments, as JSON text.
    pub input_schema: &'static str,
    /// True when the tool changes nothing at the broker (MCP `readOnlyHint`).
    pub read_only: bool,
    pub route: Route,
}

impl ToolSpec {
    /// Whether a call can change state at the broker (place, cancel or resolve orders): every
    /// tool under `ibkr:orders:write` and any tool not marked read-only. Both halves treat
    /// these as the order tools of their tamper evidence: the gateway makes its audit record
    /// durable before forwarding one, and a sidecar whose journal is behind the gateway's
    /// anchor refuses them.
    pub fn changes_broker_state(&self) -> bool {
        !self.read_only || self.scope == scopes::ORDERS_WRITE
    }

    /// Whether the tool can send a new order (every tool that changes broker state but the
    /// cancel, which only takes risk off, and the reconcile, which only reads and settles the
    /// journal): what a pause refuses and an approval rule may name.
    pub fn sends_new_orders(&self) -> bool {
        self.changes_broker_state()
            && !matches!(self.name, "ibkr_order_cancel" | "ibkr_reconcile_pending")
    }

    /// The input schema parsed. The catalog's schemas are checked by a test, so parsing cannot
    /// fail at run time; an empty closed object is returned if it ever did.
    pub fn input_schema_json(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str::<serde_json::Value>(self.input_schema) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                let mut map = serde_json::Map::new();
                map.insert("type".into(), "object".into());
                map.insert("additionalProperties".into(), false.into());
                map
            }
        }
    }
}

/// The JSON Schema 2020-12 keywords the catalog's input schemas use, and all the argument
/// validator (`shared_safety::schema`) implements: it refuses a schema with any other keyword,
/// so a schema can never silently mean less than it says.
pub const SCHEMA_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "items",
    "minItems",
    "maxItems",
    "anyOf",
    "description",
    "title",
    "default",
    "examples",
];

const NO_ARGUMENTS: &str = r#"{"type":"object","properties":{},"additionalProperties":false}"#;

/// Schema fragments shared by several tools (JSON text, spliced into the schemas below).
macro_rules! symbol {
    () => {
        r#""symbol":{"type":"string","minLength":1,"maxLength":12,"description":"Ticker symbol, e.g. AAPL. US listings are preferred; a foreign-only symbol is refused."}"#
    };
}
/// A decimal argument: a string (exact; at most 32 characters) or a JSON number. Written as
/// `anyOf` with one `type` per branch rather than `"type": ["string", "number"]`, which strict
/// schema checkers (MCP Inspector's among them) flag and single-type schema dialects reject;
/// `maxLength` sits on the string branch, the only one it constrains.
macro_rules! decimal {
    ($name:literal, $description:literal) => {
        concat!(
            r#"""#,
            $name,
            r#"":{"anyOf":[{"type":"string","maxLength":32},{"type":"number"}],"description":""#,
            $description,
            r#" Decimal; send a string such as \"12.50\" to avoid float rounding."}"#
        )
    };
}
macro_rules! idempotency_key {
    () => {
        r#""idempotency_key":{"type":"string","minLength":1,"maxLength":64,"description":"Optional. Retrying with the same key never places a second order: the first outcome is returned."}"#
    };
}
macro_rules! tif {
    ($default:literal) => {
        concat!(
            r#""tif":{"type":"string","enum":["DAY","GTC"],"description":"Time in force (default "#,
            $default,
            r#")."}"#
        )
    };
}
macro_rules! order_id {
    () => {
        r#""order_id":{"type":"string","minLength":1,"maxLength":32,"description":"The broker order id returned when the order was placed."}"#
    };
}

/// Every tool, in the order `tools/list` shows them.
pub const CATALOG: &[ToolSpec] = &[
    ToolSpec {
        name: "ibkr_health",
        title: "Health",
        description: "Status of the whole path in one answer: the gateway, the relay session to \
            your laptop's sidecar, the sidecar itself and the local IBKR Client Portal Gateway \
            session. Call it first when something fails.",
        scope: scopes::HEALTH_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::GatewayAndSidecar,
    },
    ToolSpec {
        name: "ibkr_session_status",
        title: "Broker session status",
        description: "Whether the local IBKR Client Portal Gateway session is logged in, which \
            account it serves, whether that account is paper or live, and the sidecar's trading \
            posture (dry-run, caps, remaining daily budget, unresolved orders, whether the \
            laptop's owner paused trading, safe_to_trade).",
        scope: scopes::HEALTH_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_market_status",
        title: "Market status",
        description: "Whether US regular trading hours are open now (NYSE calendar with \
            holidays and half days), and the next open and close.",
        scope: scopes::MARKETDATA_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_accounts_list",
        title: "Accounts",
        description: "The brokerage accounts visible to the local IBKR session, the selected \
            account, paper or live, and whether each supports cash-quantity and fractional orders.",
        scope: scopes::ACCOUNTS_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_account_summary",
        title: "Account summary",
        description: "Available funds, net liquidation value, buying power and currency of the \
            selected account. Amounts are decimal strings.",
        scope: scopes::PORTFOLIO_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_positions_list",
        title: "Positions",
        description: "Open positions of the selected account with exact (fractional) quantities, \
            average cost, market value and unrealized P&L as decimal strings. Positions can lag \
            a fill by tens of seconds; use ibkr_order_status to confirm a fill.",
        scope: scopes::POSITIONS_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_portfolio_snapshot",
        title: "Portfolio snapshot",
        description: "Account summary, open positions and total unrealized P&L in one call.",
        scope: scopes::PORTFOLIO_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_contracts_search",
        title: "Find contracts",
        description: "Resolve a symbol to its contracts (conid, exchange, currency), US listing first.",
        scope: scopes::MARKETDATA_READ,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            r#"},"required":["symbol"],"additionalProperties":false}"#
        ),
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_quote",
        title: "Quote",
        description: "Last, bid and ask for one symbol (decimal strings), with whether the last \
            price is a previous close or the symbol is halted. `age_ms` says how old the \
            snapshot is: calls for the same symbol share one broker request, and a quote may be \
            reused for up to the sidecar's `quote_max_age_ms` (default 1000 ms).",
        scope: scopes::MARKETDATA_READ,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            r#"},"required":["symbol"],"additionalProperties":false}"#
        ),
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_quotes",
        title: "Quotes for a watchlist",
        description: "Last, bid and ask for up to 50 symbols in one snapshot call, each with \
            `age_ms`: a quote may be reused for up to the sidecar's `quote_max_age_ms` \
            (default 1000 ms), and only the symbols without one are asked for.",
        scope: scopes::MARKETDATA_READ,
        input_schema: r#"{"type":"object","properties":{"symbols":{"type":"array","minItems":1,"maxItems":50,"items":{"type":"string","minLength":1,"maxLength":12}}},"required":["symbols"],"additionalProperties":false}"#,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_historical_bars",
        title: "Historical bars",
        description: "OHLCV bars for a symbol over a period (decimal strings).",
        scope: scopes::MARKETDATA_READ,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            r#","period":{"type":"string","enum":["1d","1w","1m","3m","6m","1y"],"description":"How far back (default 1m)."},"bar":{"type":"string","enum":["1min","5min","15min","1h","1d"],"description":"Bar size (default 1d)."}},"required":["symbol"],"additionalProperties":false}"#
        ),
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_order_preview",
        title: "Preview an order",
        description: "What-if for an order: commission, margin and equity change, warnings. \
            Sends nothing to the market.",
        scope: scopes::ORDERS_PREVIEW,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            r#","side":{"type":"string","enum":["BUY","SELL"]},"#,
            decimal!("quantity", "Shares (fractional allowed)."),
            ",",
            decimal!("cash_amount", "Buy by amount in USD (market buys only)."),
            ",",
            decimal!("limit_price", "Limit price; omit for a market order."),
            r#"},"required":["symbol","side"],"additionalProperties":false}"#
        ),
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_buy",
        title: "Buy",
        description: "Buy by cash_amount (USD, fractional shares, market order only) or by \
            quantity (shares, fractional allowed); limit_price makes it a limit order (needs \
            quantity). Runs every safety guard on the laptop; dry-run by default.",
        scope: scopes::ORDERS_WRITE,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            ",",
            decimal!("cash_amount", "Amount to spend in USD."),
            ",",
            decimal!("quantity", "Shares to buy."),
            ",",
            decimal!("limit_price", "Limit price."),
            ",",
            tif!("DAY"),
            ",",
            idempotency_key!(),
            r#"},"required":["symbol"],"additionalProperties":false}"#
        ),
        read_only: false,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_sell",
        title: "Sell",
        description: "Sell a quantity of shares (fractional allowed; IBKR refuses selling by cash \
            amount); limit_price makes it a limit order. Exits are never value-capped.",
        scope: scopes::ORDERS_WRITE,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            ",",
            decimal!("quantity", "Shares to sell."),
            ",",
            decimal!("limit_price", "Limit price."),
            ",",
            tif!("DAY"),
            ",",
            idempotency_key!(),
            r#"},"required":["symbol","quantity"],"additionalProperties":false}"#
        ),
        read_only: false,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_close_position",
        title: "Close a position",
        description: "Sell (or cover) exactly 100% of the position in a symbol, using the exact \
            fractional quantity held.",
        scope: scopes::ORDERS_WRITE,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            ",",
            idempotency_key!(),
            r#"},"required":["symbol"],"additionalProperties":false}"#
        ),
        read_only: false,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_stop_order",
        title: "Stop or stop-limit order",
        description: "A STOP (market when stop_price trades) or, with limit_price, a STOP-LIMIT \
            order. Protective orders default to GTC. The stop must be on the right side of the market.",
        scope: scopes::ORDERS_WRITE,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            r#","side":{"type":"string","enum":["BUY","SELL"]},"#,
            decimal!("quantity", "Shares."),
            ",",
            decimal!("stop_price", "Trigger price."),
            ",",
            decimal!("limit_price", "Limit price (makes it STOP-LIMIT)."),
            ",",
            tif!("GTC"),
            ",",
            idempotency_key!(),
            r#"},"required":["symbol","side","quantity","stop_price"],"additionalProperties":false}"#
        ),
        read_only: false,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_trailing_stop",
        title: "Trailing stop",
        description: "A trailing stop that follows the price by trail_amount (USD) or \
            trail_percent. Defaults to GTC.",
        scope: scopes::ORDERS_WRITE,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            r#","side":{"type":"string","enum":["BUY","SELL"]},"#,
            decimal!("quantity", "Shares."),
            ",",
            decimal!("trail_amount", "Trail by this many USD."),
            ",",
            decimal!("trail_percent", "Trail by this percentage."),
            ",",
            tif!("GTC"),
            ",",
            idempotency_key!(),
            r#"},"required":["symbol","side","quantity"],"additionalProperties":false}"#
        ),
        read_only: false,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_bracket_order",
        title: "Bracket order",
        description: "An entry buy (market, or limit with entry_limit_price) with attached \
            take-profit and stop-loss exits (one cancels the other). Exits default to GTC.",
        scope: scopes::ORDERS_WRITE,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            symbol!(),
            ",",
            decimal!("quantity", "Shares to buy."),
            ",",
            decimal!(
                "entry_limit_price",
                "Limit price of the entry; omit for market."
            ),
            ",",
            decimal!("take_profit", "Limit price of the take-profit exit."),
            ",",
            decimal!("stop_loss", "Stop price of the stop-loss exit."),
            ",",
            tif!("GTC"),
            ",",
            idempotency_key!(),
            r#"},"required":["symbol","quantity","take_profit","stop_loss"],"additionalProperties":false}"#
        ),
        read_only: false,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_order_cancel",
        title: "Cancel an order",
        description: "Cancel an open order by its order id.",
        scope: scopes::ORDERS_WRITE,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            order_id!(),
            r#"},"required":["order_id"],"additionalProperties":false}"#
        ),
        read_only: false,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_order_status",
        title: "Order status",
        description: "State, filled quantity and average price of an order.",
        scope: scopes::ORDERS_READ,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            order_id!(),
            r#"},"required":["order_id"],"additionalProperties":false}"#
        ),
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_wait_for_fill",
        title: "Wait for a fill",
        description: "Wait until an order is filled, cancelled or rejected, or the timeout \
            passes, sending progress notifications as it fills.",
        scope: scopes::ORDERS_READ,
        input_schema: concat!(
            r#"{"type":"object","properties":{"#,
            order_id!(),
            r#","timeout_seconds":{"type":"integer","minimum":1,"maximum":600,"description":"How long to wait (default 60)."}},"required":["order_id"],"additionalProperties":false}"#
        ),
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_orders_list",
        title: "Open orders",
        description: "Open orders of the selected account.",
        scope: scopes::ORDERS_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_executions_list",
        title: "Recent executions",
        description: "Executions (fills) of the last days.",
        scope: scopes::ORDERS_READ,
        input_schema: NO_ARGUMENTS,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_trade_history",
        title: "Trade history",
        description: "The sidecar's journal of order attempts: sent, dry-run, blocked (with the \
            guard that blocked), awaiting the laptop owner's approval, pending, and their \
            outcomes. Answers 'what did my agent do?', and whether an order that waited for \
            approval was sent (attempt_id).",
        scope: scopes::AUDIT_READ,
        input_schema: r#"{"type":"object","properties":{"limit":{"type":"integer","minimum":1,"maximum":500,"description":"Most recent entries to return (default 50)."},"attempt_id":{"type":"integer","minimum":1,"description":"Only this attempt (e.g. one an order call answered awaiting_approval for)."}},"additionalProperties":false}"#,
        read_only: true,
        route: Route::Sidecar,
    },
    ToolSpec {
        name: "ibkr_reconcile_pending",
        title: "Reconcile pending orders",
        description: "Resolve journaled orders whose outcome is unknown (a timeout or error after \
            sending) against the broker's order list, so they stop blocking retries.",
        scope: scopes::ORDERS_WRITE,
        input_schema: NO_ARGUMENTS,
        read_only: false,
        route: Route::Sidecar,
    },
];

/// Looks a tool up by name.
pub fn find(name: &str) -> Option<&'static ToolSpec> {
    CATALOG.iter().find(|tool| tool.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tools_that_change_broker_state_are_the_order_writing_ones() {
        let changing: Vec<&str> = CATALOG
            .iter()
            .filter(|tool| tool.changes_broker_state())
            .map(|tool| tool.name)
            .collect();
        assert_eq!(
            changing,
            [
                "ibkr_buy",
                "ibkr_sell",
                "ibkr_close_position",
                "ibkr_stop_order",
                "ibkr_trailing_stop",
                "ibkr_bracket_order",
                "ibkr_order_cancel",
                "ibkr_reconcile_pending",
            ]
        );
    }

    #[test]
    fn every_schema_is_a_closed_object_and_every_scope_is_known() {
        let mut names = std::collections::HashSet::new();
        for tool in CATALOG {
            assert!(names.insert(tool.name), "duplicate tool {}", tool.name);
            assert!(tool.name.starts_with("ibkr_"));
            assert!(
                scopes::is_known(tool.scope),
                "{} has unknown scope",
                tool.name
            );
            let schema: serde_json::Value = serde_json::from_str(tool.input_schema)
                .unwrap_or_else(|e| panic!("{} schema: {e}", tool.name));
            assert_eq!(schema["type"], "object", "{}", tool.name);
            assert_eq!(
                schema["additionalProperties"], false,
                "{} schema must be closed",
                tool.name
            );
        }
    }

    /// Keywords that constrain only one JSON type, and that type.
    fn applies_to(keyword: &str) -> Option<&'static [&'static str]> {
        Some(match keyword {
            "minLength" | "maxLength" => &["string"],
            "minimum" | "maximum" => &["number", "integer"],
            "items" | "minItems" | "maxItems" => &["array"],
            "properties" | "required" | "additionalProperties" => &["object"],
            _ => return None,
        })
    }

    /// Checks one schema node as a strict client does (MCP Inspector's strict mode, validators
    /// of single-type dialects): every `type` a single known type name, only known keywords
    /// with well-formed values, type-specific keywords only next to their `type`, and `anyOf`
    /// as the only way to admit more than one type. Returns every problem found.
    fn strict_problems(path: &str, node: &serde_json::Value) -> Vec<String> {
        use serde_json::Value;
        let mut problems = Vec::new();
        let Some(map) = node.as_object() else {
            return vec![format!("{path}: a schema must be an object")];
        };
        let non_negative = |key: &str| map.get(key).map(Value::as_u64);
        for key in map.keys() {
            if !SCHEMA_KEYWORDS.contains(&key.as_str()) {
                problems.push(format!("{path}: unknown keyword `{key}`"));
            }
        }
        let kind = map.get("type");
        match (kind, map.get("anyOf")) {
            (Some(Value::String(kind)), None) => {
                if ![
                    "object", "array", "string", "number", "integer", "boolean", "null",
                ]
                .contains(&kind.as_str())
                {
                    problems.push(format!("{path}: unknown type `{kind}`"));
                }
            }
            (Some(other), None) => {
                problems.push(format!("{path}: `type` must be one type name, not {other}"));
            }
            (None, Some(Value::Array(branches))) if !branches.is_empty() => {
                for (index, branch) in branches.iter().enumerate() {
                    problems.extend(strict_problems(&format!("{path}/anyOf/{index}"), branch));
                }
            }
            (None, Some(_)) => problems.push(format!("{path}: `anyOf` must be a non-empty array")),
            (Some(_), Some(_)) => {
                problems.push(format!("{path}: `type` and `anyOf` on one node"));
            }
            (None, None) => problems.push(format!("{path}: no `type`")),
        }
        let kind = kind.and_then(Value::as_str);
        for key in map.keys() {
            if let Some(types) = applies_to(key)
                && !kind.is_some_and(|kind| types.contains(&kind))
            {
                problems.push(format!(
                    "{path}: `{key}` constrains only {} values, but the node's type is {kind:?}",
                    types.join("/")
                ));
            }
        }
        for (low, high) in [("minLength", "maxLength"), ("minItems", "maxItems")] {
            for key in [low, high] {
                if non_negative(key) == Some(None) {
                    problems.push(format!("{path}: `{key}` must be a non-negative integer"));
                }
            }
            if let (Some(Some(low)), Some(Some(high))) = (non_negative(low), non_negative(high))
                && low > high
            {
                problems.push(format!("{path}: `{low}` above `{high}`"));
            }
        }
        let number = |key: &str| map.get(key).map(Value::as_f64);
        for key in ["minimum", "maximum"] {
            if number(key) == Some(None) {
                problems.push(format!("{path}: `{key}` must be a number"));
            }
        }
        if let (Some(Some(low)), Some(Some(high))) = (number("minimum"), number("maximum"))
            && low > high
        {
            problems.push(format!("{path}: `minimum` above `maximum`"));
        }
        for key in ["description", "title"] {
            if map.get(key).is_some_and(|value| !value.is_string()) {
                problems.push(format!("{path}: `{key}` must be a string"));
            }
        }
        if let Some(options) = map.get("enum") {
            match options.as_array() {
                Some(options) if !options.is_empty() => {
                    for (index, option) in options.iter().enumerate() {
                        if options[..index].contains(option) {
                            problems.push(format!("{path}: `enum` repeats {option}"));
                        }
                        if kind == Some("string") && !option.is_string() {
                            problems.push(format!("{path}: `enum` value {option} is not a string"));
                        }
                    }
                }
                _ => problems.push(format!("{path}: `enum` must be a non-empty array")),
            }
        }
        let properties = map.get("properties").map(Value::as_object);
        match properties {
            Some(Some(properties)) => {
                for (name, child) in properties {
                    problems.extend(strict_problems(&format!("{path}/properties/{name}"), child));
                }
            }
            Some(None) => problems.push(format!("{path}: `properties` must be an object")),
            None => {}
        }
        if let Some(required) = map.get("required") {
            match required.as_array() {
                Some(names) => {
                    for (index, name) in names.iter().enumerate() {
                        let known = name.as_str().is_some_and(|name| {
                            properties.flatten().is_some_and(|p| p.contains_key(name))
                        });
                        if !known || names[..index].contains(name) {
                            problems.push(format!(
                                "{path}: `required` entry {name} is not a distinct property"
                            ));
                        }
                    }
                }
                None => problems.push(format!("{path}: `required` must be an array")),
            }
        }
        match map.get("additionalProperties") {
            None | Some(Value::Bool(_)) => {}
            Some(child @ Value::Object(_)) => {
                problems.extend(strict_problems(
                    &format!("{path}/additionalProperties"),
                    child,
                ));
            }
            Some(_) => problems.push(format!("{path}: `additionalProperties` must be a schema")),
        }
        // 2020-12: `items` is one schema (the array form is `prefixItems`).
        if let Some(items) = map.get("items") {
            problems.extend(strict_problems(&format!("{path}/items"), items));
        }
        problems
    }

    #[test]
    fn every_schema_passes_a_strict_json_schema_2020_12_check() {
        let mut problems = Vec::new();
        for tool in CATALOG {
            let schema: serde_json::Value = serde_json::from_str(tool.input_schema)
                .unwrap_or_else(|e| panic!("{} schema: {e}", tool.name));
            problems.extend(strict_problems(tool.name, &schema));
        }
        assert!(problems.is_empty(), "{problems:#?}");
        // Money arguments still admit both a decimal string and a number.
        let buy: serde_json::Value =
            serde_json::from_str(find("ibkr_buy").map(|t| t.input_schema).unwrap_or("{}")).unwrap();
        assert_eq!(
            buy["properties"]["cash_amount"]["anyOf"],
            serde_json::json!([{"type": "string", "maxLength": 32}, {"type": "number"}])
        );
    }

    #[test]
    fn the_strict_check_catches_what_strict_clients_reject() {
        let problems = |schema: serde_json::Value| strict_problems("t", &schema);
        let closed = |property: serde_json::Value| serde_json::json!({"type": "object", "properties": {"p": property}, "additionalProperties": false});
        for (bad, expected) in [
            (
                closed(serde_json::json!({"type": ["string", "number"]})),
                "one type name",
            ),
            (
                closed(serde_json::json!({"type": "string", "pattern": "^a"})),
                "unknown keyword `pattern`",
            ),
            (
                closed(serde_json::json!({"type": "number", "maxLength": 3})),
                "`maxLength` constrains only string",
            ),
            (
                closed(
                    serde_json::json!({"anyOf": [{"type": "string"}, {"type": "number"}], "maxLength": 3}),
                ),
                "`maxLength` constrains only string",
            ),
            (closed(serde_json::json!({"anyOf": []})), "non-empty"),
            (
                closed(serde_json::json!({"type": "array", "items": [{"type": "string"}]})),
                "must be an object",
            ),
            (
                closed(serde_json::json!({"type": "string", "minLength": 3, "maxLength": 2})),
                "above",
            ),
            (closed(serde_json::json!({"description": "x"})), "no `type`"),
            (
                serde_json::json!({"type": "object", "properties": {}, "required": ["p"]}),
                "not a distinct property",
            ),
        ] {
            let found = problems(bad.clone());
            assert!(
                found.iter().any(|problem| problem.contains(expected)),
                "{bad}: {found:?}"
            );
        }
    }

    #[test]
    fn find_knows_only_catalog_tools() {
        assert_eq!(
            find("ibkr_health").map(|t| t.scope),
            Some(scopes::HEALTH_READ)
        );
        assert!(find("ibkr_launch_rockets").is_none());
    }
}

/// The JSON types a schema node admits, for the docs: its `type`, or the types of its `anyOf`
/// branches.
fn type_names(schema: &serde_json::Value) -> Vec<String> {
    match (schema.get("type"), schema.get("anyOf")) {
        (Some(serde_json::Value::String(kind)), _) => vec![kind.clone()],
        (_, Some(serde_json::Value::Array(branches))) => {
            branches.iter().flat_map(type_names).collect()
        }
        _ => Vec::new(),
    }
}

/// Renders the catalog as `docs/tools.md`: every tool, its scope and its arguments.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Tools\n\n\
         The tool catalog is stable API: names and scopes never change meaning. Every tool returns\n\
         structured content; money and quantities are decimal strings. A tool runs only when both\n\
         the agent's OAuth token and the sidecar's local pairing record grant its scope; live\n\
         trading also needs `ibkr:orders:live`. Input schemas are closed: unknown fields are refused.\n\
         This file is generated from `protocol/src/catalog.rs`; a test fails when they disagree\n\
         (regenerate with `UPDATE_DOCS=1 cargo test -p protocol`).\n\n\
         | tool | scope | changes anything | does |\n|---|---|---|---|\n",
    );
    for tool in CATALOG {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            tool.name,
            tool.scope,
            if tool.read_only { "no" } else { "yes" },
            tool.title
        ));
    }
    for tool in CATALOG {
        out.push_str(&format!(
            "\n## `{}`\n\n{}\n\nScope: `{}`.\n\n",
            tool.name,
            tool.description
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            tool.scope
        ));
        let schema = tool.input_schema_json();
        let required: Vec<&str> = schema
            .get("required")
            .and_then(serde_json::Value::as_array)
            .map(|items| items.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        match schema
            .get("properties")
            .and_then(serde_json::Value::as_object)
        {
            Some(properties) if !properties.is_empty() => {
                out.push_str("| argument | type | required | notes |\n|---|---|---|---|\n");
                for (name, property) in properties {
                    let kind = type_names(property).join(" or ");
                    let mut notes = property
                        .get("description")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    if let Some(options) =
                        property.get("enum").and_then(serde_json::Value::as_array)
                    {
                        let options: Vec<String> = options
                            .iter()
                            .map(|o| format!("`{}`", o.as_str().unwrap_or_default()))
                            .collect();
                        notes = format!("{} One of {}.", notes, options.join(", "))
                            .trim()
                            .to_string();
                    }
                    out.push_str(&format!(
                        "| `{}` | {} | {} | {} |\n",
                        name,
                        kind,
                        if required.contains(&name.as_str()) {
                            "yes"
                        } else {
                            "no"
                        },
                        notes.replace('|', "\\|")
                    ));
                }
            }
            _ => out.push_str("No arguments.\n"),
        }
    }
    out
}

#[cfg(test)]
mod docs_tests {
    #[test]
    fn docs_tools_md_matches_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tools.md");
        let rendered = super::render_markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &rendered).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            on_disk, rendered,
            "docs/tools.md is out of date: run UPDATE_DOCS=1 cargo test -p protocol"
        );
    }
}
