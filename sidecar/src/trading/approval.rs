//! Which orders wait for the laptop owner's approval (`trading.approval:`), and what an
//! approval is bound to.
//!
//! An order that needs approval passes every guard first and is journaled *awaiting approval*
//! with the reason and an expiry. It is sent only after the owner approves that journal
//! attempt, which happens at most once (the journal's state change is the single use), and only
//! if the intent still hashes to what the owner was shown ([`intent_hash`]).

use crate::error::SidecarError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared_safety::ErrorCode;
use shared_safety::guards::AccountMode;
use shared_safety::money::{Decimal, parse_decimal_text, to_decimal_string};
use std::time::Duration;

/// `trading.approval:` as written in the YAML file. Every key is optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalSection {
    /// Orders whose estimated value is above this many USD (decimal string) wait for approval;
    /// an order whose value cannot be estimated counts as above. `null`: no value rule.
    pub above_value: Option<String>,
    /// Every order on a live account waits for approval (default: yes).
    pub live_orders: bool,
    /// Every order made with one of these tools waits for approval (e.g. `ibkr_bracket_order`).
    pub tools: Vec<String>,
    /// Every order on one of these symbols waits for approval.
    pub symbols: Vec<String>,
    /// How long an order waits for the owner before it expires unsent.
    pub expire_seconds: u64,
}

/// Default [`ApprovalSection::expire_seconds`]: two minutes.
pub const DEFAULT_EXPIRE_SECONDS: u64 = 120;
const EXPIRE_RANGE: std::ops::RangeInclusive<u64> = 1..=3_600;

impl Default for ApprovalSection {
    fn default() -> Self {
        ApprovalSection {
            above_value: None,
            live_orders: true,
            tools: Vec::new(),
            symbols: Vec::new(),
            expire_seconds: DEFAULT_EXPIRE_SECONDS,
        }
    }
}

fn invalid(key: &str, why: impl std::fmt::Display) -> SidecarError {
    SidecarError::new(
        ErrorCode::ConfigInvalid,
        format!("(trading.approval.{key} {why})"),
    )
}

impl ApprovalSection {
    /// The rules, validated (fails closed, naming the key).
    pub fn policy(&self) -> Result<ApprovalPolicy, SidecarError> {
        let above_value = match &self.above_value {
            None => None,
            Some(text) => {
                let value = parse_decimal_text(text.trim(), "above_value").map_err(|_| {
                    invalid("above_value", "must be a decimal amount such as \"500\"")
                })?;
                if value < Decimal::ZERO {
                    return Err(invalid("above_value", "must not be negative"));
                }
                Some(value)
            }
        };
        for tool in &self.tools {
            if !protocol::catalog::find(tool).is_some_and(|spec| spec.sends_new_orders()) {
                let order_tools: Vec<&str> = protocol::catalog::CATALOG
                    .iter()
                    .filter(|spec| spec.sends_new_orders())
                    .map(|spec| spec.name)
                    .collect();
                return Err(invalid(
                    "tools",
                    format!(
                        "names {tool:?}, which is not an order tool (one of {})",
                        order_tools.join(", ")
                    ),
                ));
            }
        }
        let symbols = super::policy::symbols("approval.symbols", &self.symbols)?;
        if !EXPIRE_RANGE.contains(&self.expire_seconds) {
            return Err(invalid(
                "expire_seconds",
                format!(
                    "must be between {} and {}",
                    EXPIRE_RANGE.start(),
                    EXPIRE_RANGE.end()
                ),
            ));
        }
        Ok(ApprovalPolicy {
            above_value,
            live_orders: self.live_orders,
            tools: self.tools.clone(),
            symbols,
            expire_after: Duration::from_secs(self.expire_seconds),
        })
    }
}

/// The validated rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalPolicy {
    pub above_value: Option<Decimal>,
    pub live_orders: bool,
    pub tools: Vec<String>,
    pub symbols: Vec<String>,
    pub expire_after: Duration,
}

impl Default for ApprovalPolicy {
    /// Same as [`ApprovalSection::default`]'s.
    fn default() -> Self {
        ApprovalPolicy {
            above_value: None,
            live_orders: true,
            tools: Vec::new(),
            symbols: Vec::new(),
            expire_after: Duration::from_secs(DEFAULT_EXPIRE_SECONDS),
        }
    }
}

impl ApprovalPolicy {
    /// Why this order needs the owner's approval, or `None`. `notional`: the guards' estimate
    /// of its value (`None` when it has none, e.g. a sell at market with no quote).
    pub fn reason(
        &self,
        tool: &str,
        symbol: &str,
        mode: AccountMode,
        notional: Option<Decimal>,
    ) -> Option<String> {
        if self.live_orders && mode != AccountMode::Paper {
            return Some("every order on a live account needs approval".into());
        }
        if self.tools.iter().any(|t| t == tool) {
            return Some(format!("orders made with {tool} need approval"));
        }
        if self.symbols.iter().any(|s| s.eq_ignore_ascii_case(symbol)) {
            return Some(format!(
                "orders on {} need approval",
                symbol.to_ascii_uppercase()
            ));
        }
        if let Some(limit) = self.above_value {
            return match notional {
                Some(value) if value <= limit => None,
                Some(value) => Some(format!(
                    "its estimated value {} USD is above {} USD",
                    to_decimal_string(value),
                    to_decimal_string(limit)
                )),
                None => Some(format!(
                    "its value cannot be estimated, so it may be above {} USD",
                    to_decimal_string(limit)
                )),
            };
        }
        None
    }
}

/// What an approval is bound to: the journaled intent, exactly (its legs, account, client
/// order ids and the order body that will be sent). Short enough to compare by eye.
pub fn intent_hash(intent: &Value) -> String {
    let mut digest = Sha256::new();
    digest.update(b"ibkr-agent approval v1\n");
    digest.update(intent.to_string().as_bytes());
    hex::encode(&digest.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(text: &str) -> Decimal {
        parse_decimal_text(text, "test").unwrap()
    }

    #[test]
    fn the_default_asks_for_live_orders_only() {
        let policy = ApprovalSection::default().policy().unwrap();
        assert_eq!(policy, ApprovalPolicy::default());
        assert_eq!(policy.expire_after, Duration::from_secs(120));
        assert!(
            policy
                .reason("ibkr_buy", "AAPL", AccountMode::Paper, Some(d("1e6")))
                .is_none()
        );
        assert!(
            policy
                .reason("ibkr_buy", "AAPL", AccountMode::Live, Some(d("1")))
                .is_some()
        );
        // An account whose type is unknown is never treated as paper.
        assert!(
            policy
                .reason("ibkr_buy", "AAPL", AccountMode::Unknown, None)
                .is_some()
        );
    }

    #[test]
    fn value_tool_and_symbol_rules() {
        let policy = ApprovalSection {
            above_value: Some("500".into()),
            live_orders: false,
            tools: vec!["ibkr_bracket_order".into()],
            symbols: vec!["tsla".into()],
            expire_seconds: 30,
        }
        .policy()
        .unwrap();
        let paper = AccountMode::Paper;
        assert!(
            policy
                .reason("ibkr_buy", "AAPL", paper, Some(d("500")))
                .is_none()
        );
        let above = policy
            .reason("ibkr_buy", "AAPL", paper, Some(d("500.01")))
            .unwrap();
        assert!(above.contains("500.01"), "{above}");
        assert!(policy.reason("ibkr_sell", "AAPL", paper, None).is_some());
        assert!(
            policy
                .reason("ibkr_bracket_order", "AAPL", paper, Some(d("1")))
                .is_some()
        );
        assert!(
            policy
                .reason("ibkr_buy", "TSLA", paper, Some(d("1")))
                .is_some()
        );
        assert!(
            policy
                .reason("ibkr_buy", "AAPL", AccountMode::Live, Some(d("1")))
                .is_none()
        );
    }

    #[test]
    fn bad_rules_are_refused_with_the_key() {
        for (section, key) in [
            (
                ApprovalSection {
                    above_value: Some("lots".into()),
                    ..ApprovalSection::default()
                },
                "above_value",
            ),
            (
                ApprovalSection {
                    tools: vec!["ibkr_quote".into()],
                    ..ApprovalSection::default()
                },
                "tools",
            ),
            (
                ApprovalSection {
                    symbols: vec!["AA<PL".into()],
                    ..ApprovalSection::default()
                },
                "symbols",
            ),
            (
                ApprovalSection {
                    expire_seconds: 0,
                    ..ApprovalSection::default()
                },
                "expire_seconds",
            ),
        ] {
            let error = section.policy().unwrap_err();
            assert_eq!(error.code(), ErrorCode::ConfigInvalid);
            assert!(error.to_string().contains(key), "{error}");
        }
        let parsed: Result<ApprovalSection, _> = serde_yaml_ng::from_str("above: 5\n");
        assert!(parsed.is_err());
    }

    #[test]
    fn the_hash_changes_with_any_part_of_the_intent() {
        let intent = json!({"tool": "ibkr_buy", "order": {"orders": [{"quantity": 1}]}});
        let other = json!({"tool": "ibkr_buy", "order": {"orders": [{"quantity": 2}]}});
        assert_eq!(intent_hash(&intent), intent_hash(&intent.clone()));
        assert_ne!(intent_hash(&intent), intent_hash(&other));
        assert_eq!(intent_hash(&intent).len(), 16);
    }
}
