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

const NO_ARGUMENTS: &str = r#"{"type":"object","properties":{},"additionalProperties":false}"#;

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
            posture (dry-run, caps, safe_to_trade).",
        scope: scopes::HEALTH_READ,
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
];

/// Looks a tool up by name.
pub fn find(name: &str) -> Option<&'static ToolSpec> {
    CATALOG.iter().find(|tool| tool.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn find_knows_only_catalog_tools() {
        assert_eq!(
            find("ibkr_health").map(|t| t.scope),
            Some(scopes::HEALTH_READ)
        );
        assert!(find("ibkr_launch_rockets").is_none());
    }
}
