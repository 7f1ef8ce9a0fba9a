//! Typed CPGW answers. Only the fields the sidecar uses are read; everything else CPGW sends
//! (including `serverInfo`, `MAC` and session fields) is ignored at parse time and so can never
//! be forwarded by accident.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// `POST /iserver/auth/status`. Missing flags read as `false` (fail closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AuthStatus {
    #[serde(default, deserialize_with = "lenient_bool_default")]
    pub authenticated: bool,
    #[serde(default, deserialize_with = "lenient_bool_default")]
    pub connected: bool,
    #[serde(default, deserialize_with = "lenient_bool_default")]
    pub competing: bool,
}

/// `POST /tickle`: only the embedded auth status matters to us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TickleReply {
    #[serde(default)]
    pub iserver: Option<TickleIserver>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TickleIserver {
    #[serde(default, rename = "authStatus")]
    pub auth_status: Option<AuthStatus>,
}

/// `GET /iserver/accounts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AccountsReply {
    #[serde(default)]
    pub accounts: Vec<String>,
    #[serde(default, rename = "selectedAccount")]
    pub selected_account: Option<String>,
    /// CPGW sends a bool, a string `"true"`/`"false"`, or nothing.
    #[serde(default, rename = "isPaper", deserialize_with = "lenient_bool")]
    pub is_paper: Option<bool>,
    #[serde(default, rename = "acctProps")]
    pub acct_props: BTreeMap<String, AccountProps>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AccountProps {
    #[serde(default, rename = "supportsCashQty", deserialize_with = "lenient_bool")]
    pub supports_cash_qty: Option<bool>,
    #[serde(
        default,
        rename = "supportsFractions",
        deserialize_with = "lenient_bool"
    )]
    pub supports_fractions: Option<bool>,
}

impl AccountsReply {
    /// The account the session trades: `selectedAccount`, else the only account listed.
    pub fn active_account(&self) -> Option<&str> {
        match self.selected_account.as_deref() {
            Some(selected) if !selected.is_empty() => Some(selected),
            _ if self.accounts.len() == 1 => self.accounts.first().map(String::as_str),
            _ => None,
        }
    }
}

/// Paper or live, as far as the sidecar can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TradingMode {
    Paper,
    Live,
    /// Not enough (or contradictory) information: every trading guard treats it as a refusal.
    Unknown,
}

impl TradingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TradingMode::Paper => "paper",
            TradingMode::Live => "live",
            TradingMode::Unknown => "unknown",
        }
    }
}

/// Classifies an account. IBKR paper account ids start with `DU`.
///
/// `isPaper` true, or a `DU` id with no `isPaper`: paper. `isPaper` false and a non-`DU` id:
/// live. `isPaper` false with a `DU` id contradicts itself, and no `isPaper` with a non-`DU` id
/// says nothing: both are unknown, which every trading guard treats as a refusal.
pub fn trading_mode(is_paper: Option<bool>, account_id: &str) -> TradingMode {
    let du = account_id.starts_with("DU");
    match (is_paper, du) {
        (Some(true), _) => TradingMode::Paper,
        (None, true) => TradingMode::Paper,
        (Some(false), false) => TradingMode::Live,
        (Some(false), true) => TradingMode::Unknown,
        (None, false) => TradingMode::Unknown,
    }
}

fn parse_lenient(value: serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::Bool(flag) => Some(flag),
        serde_json::Value::String(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn lenient_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    Ok(parse_lenient(serde_json::Value::deserialize(deserializer)?))
}

fn lenient_bool_default<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(parse_lenient(serde_json::Value::deserialize(deserializer)?).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn is_paper_accepts_every_shape() {
        for (value, expected) in [
            (json!({"isPaper": true}), Some(true)),
            (json!({"isPaper": "false"}), Some(false)),
            (json!({"isPaper": "TRUE"}), Some(true)),
            (json!({"isPaper": "maybe"}), None),
            (json!({"isPaper": null}), None),
            (json!({}), None),
        ] {
            let reply: AccountsReply = serde_json::from_value(value.clone()).unwrap();
            assert_eq!(reply.is_paper, expected, "{value}");
        }
    }

    #[test]
    fn accounts_reply_parses_the_cpgw_shape() {
        let reply: AccountsReply = serde_json::from_value(json!({
            "accounts": ["DU1234567"],
            "selectedAccount": "DU1234567",
            "isPaper": true,
            "acctProps": {"DU1234567": {"supportsCashQty": true, "supportsFractions": false, "hasChildAccounts": false}},
            "aliases": {"DU1234567": "DU1234567"},
            "sessionId": "ignored"
        }))
        .unwrap();
        assert_eq!(reply.active_account(), Some("DU1234567"));
        let props = reply.acct_props["DU1234567"];
        assert_eq!(props.supports_cash_qty, Some(true));
        assert_eq!(props.supports_fractions, Some(false));
    }

    #[test]
    fn auth_status_fails_closed_on_missing_flags() {
        let status: AuthStatus = serde_json::from_value(json!({"connected": true})).unwrap();
        assert!(!status.authenticated && status.connected && !status.competing);
    }

    #[test]
    fn paper_detection() {
        assert_eq!(trading_mode(Some(true), "DU1"), TradingMode::Paper);
        assert_eq!(trading_mode(None, "DU1"), TradingMode::Paper);
        assert_eq!(trading_mode(Some(true), "U1"), TradingMode::Paper);
        assert_eq!(trading_mode(Some(false), "U1"), TradingMode::Live);
        assert_eq!(trading_mode(None, "U1"), TradingMode::Unknown);
        assert_eq!(trading_mode(Some(false), "DU1"), TradingMode::Unknown);
    }
}
