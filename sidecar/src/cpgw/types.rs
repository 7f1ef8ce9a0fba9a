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

/// A scalar CPGW value kept as its JSON text: numbers are never read through `f64`, strings
/// are unquoted. `null` reads as `None` through `Option<JsonText>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonText(pub String);

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(deserializer)?;
        let text = raw.get();
        if text.starts_with('"') {
            let unquoted: String = serde_json::from_str(text).map_err(serde::de::Error::custom)?;
            Ok(JsonText(unquoted))
        } else {
            Ok(JsonText(text.to_string()))
        }
    }
}

impl JsonText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `GET /trsrv/stocks?symbols=..`: symbol -> listings -> contracts.
pub type StocksReply = BTreeMap<String, Vec<StockListing>>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StockListing {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub contracts: Vec<StockContract>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StockContract {
    #[serde(default)]
    pub conid: Option<JsonText>,
    #[serde(default)]
    pub exchange: Option<String>,
    #[serde(default, rename = "isUS", deserialize_with = "lenient_bool_default")]
    pub is_us: bool,
}

/// One row of `GET /iserver/marketdata/snapshot`: field id -> value text.
pub type SnapshotRow = BTreeMap<String, JsonText>;

/// `GET /iserver/marketdata/history`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct HistoryReply {
    #[serde(default)]
    pub data: Vec<HistoryBar>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct HistoryBar {
    #[serde(default)]
    pub o: Option<JsonText>,
    #[serde(default)]
    pub h: Option<JsonText>,
    #[serde(default)]
    pub l: Option<JsonText>,
    #[serde(default)]
    pub c: Option<JsonText>,
    #[serde(default)]
    pub v: Option<JsonText>,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub t: Option<JsonText>,
}

/// `GET /portfolio/{acct}/summary`: only the three amounts the tools report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SummaryReply {
    #[serde(default)]
    pub availablefunds: Option<SummaryAmount>,
    #[serde(default)]
    pub netliquidation: Option<SummaryAmount>,
    #[serde(default)]
    pub buyingpower: Option<SummaryAmount>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SummaryAmount {
    #[serde(default)]
    pub amount: Option<JsonText>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// One row of `GET /portfolio/{acct}/positions/{page}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PositionRow {
    #[serde(default)]
    pub conid: Option<JsonText>,
    #[serde(default, rename = "contractDesc")]
    pub contract_desc: Option<String>,
    #[serde(default)]
    pub ticker: Option<String>,
    #[serde(default)]
    pub position: Option<JsonText>,
    #[serde(default, rename = "avgCost")]
    pub avg_cost: Option<JsonText>,
    #[serde(default, rename = "mktPrice")]
    pub mkt_price: Option<JsonText>,
    #[serde(default, rename = "mktValue")]
    pub mkt_value: Option<JsonText>,
    #[serde(default, rename = "unrealizedPnl")]
    pub unrealized_pnl: Option<JsonText>,
    #[serde(default)]
    pub currency: Option<String>,
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
    fn json_text_keeps_number_text() {
        let row: PositionRow = serde_json::from_str(
            r#"{"conid":265598,"position":0.12340000000000000001,"avgCost":"189.5","mktPrice":null}"#,
        )
        .unwrap();
        assert_eq!(row.conid.unwrap().as_str(), "265598");
        assert_eq!(row.position.unwrap().as_str(), "0.12340000000000000001");
        assert_eq!(row.avg_cost.unwrap().as_str(), "189.5");
        assert!(row.mkt_price.is_none());
        let stocks: StocksReply = serde_json::from_str(
            r#"{"AAPL":[{"name":"APPLE INC","contracts":[{"conid":265598,"exchange":"NASDAQ","isUS":true}]}]}"#,
        )
        .unwrap();
        assert!(stocks["AAPL"][0].contracts[0].is_us);
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
