//! The `trading:` configuration section and its conversion to the guards' [`TradingPolicy`].
//!
//! Every key is optional; the defaults are the safe posture (paper only, dry-run, 100 USD per
//! buy, no daily cap, 5 s duplicate window, no shorts). Unknown keys are refused. Amounts are
//! decimal strings (numbers are accepted and read from their text, never through `f64`).

use crate::error::SidecarError;
use serde::{Deserialize, Serialize};
use shared_safety::ErrorCode;
use shared_safety::guards::{DEFAULT_ALLOWED_WARNING_IDS, TradingPolicy};
use shared_safety::money::{Decimal, parse_decimal_text, to_decimal_string};

/// `trading:` as written in the YAML file and kept in [`crate::SidecarConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TradingSection {
    pub allow_live: bool,
    /// The accounts the sidecar may trade. Empty: any paper account and no live one.
    pub account_ids: Vec<String>,
    pub dry_run: bool,
    /// Per-order buy cap in USD (decimal string).
    pub max_order_value: String,
    /// Daily buy cap in USD (decimal string); `null` = no daily cap.
    pub max_daily_value: Option<String>,
    pub duplicate_window_seconds: u64,
    pub symbol_allowlist: Vec<String>,
    pub symbol_denylist: Vec<String>,
    pub allow_short: bool,
    pub exits_outside_regular_hours: bool,
    pub gtc_protective_outside_regular_hours: bool,
    pub cancels_outside_regular_hours: bool,
    pub allowed_warning_ids: Vec<String>,
    /// How long after one of our orders is seen filled (or cancelled) its quantity still
    /// counts as committed: IBKR's positions lag fills by tens of seconds, and a position read
    /// in that window may not show the fill yet.
    pub position_lag_seconds: u64,
    /// Which orders wait for the laptop owner's approval.
    pub approval: super::approval::ApprovalSection,
}

impl Default for TradingSection {
    fn default() -> Self {
        TradingSection {
            allow_live: false,
            account_ids: Vec::new(),
            dry_run: true,
            max_order_value: "100".into(),
            max_daily_value: None,
            duplicate_window_seconds: 5,
            symbol_allowlist: Vec::new(),
            symbol_denylist: Vec::new(),
            allow_short: false,
            exits_outside_regular_hours: false,
            gtc_protective_outside_regular_hours: true,
            cancels_outside_regular_hours: true,
            allowed_warning_ids: DEFAULT_ALLOWED_WARNING_IDS
                .iter()
                .map(|id| id.to_string())
                .collect(),
            position_lag_seconds: DEFAULT_POSITION_LAG_SECONDS,
            approval: super::approval::ApprovalSection::default(),
        }
    }
}

/// Default [`TradingSection::position_lag_seconds`]: IBKR's positions were seen lagging fills by
/// "tens of seconds"; the reference server waits 45 s between closes of one position.
pub const DEFAULT_POSITION_LAG_SECONDS: u64 = 60;
/// Bounds of [`TradingSection::position_lag_seconds`].
const POSITION_LAG_RANGE: std::ops::RangeInclusive<u64> = 10..=3_600;

/// Largest duplicate window accepted (one day).
const MAX_DUPLICATE_WINDOW_SECONDS: u64 = 86_400;

fn invalid(key: &str, why: impl std::fmt::Display) -> SidecarError {
    SidecarError::new(ErrorCode::ConfigInvalid, format!("(trading.{key} {why})"))
}

fn amount(key: &str, text: &str) -> Result<Decimal, SidecarError> {
    let value = parse_decimal_text(text.trim(), key)
        .map_err(|_| invalid(key, "must be a decimal amount such as \"100\""))?;
    if value <= Decimal::ZERO {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(value)
}

pub(super) fn symbols(key: &str, list: &[String]) -> Result<Vec<String>, SidecarError> {
    list.iter()
        .map(|symbol| {
            let symbol = symbol.trim();
            if symbol.is_empty()
                || symbol.len() > 20
                || !symbol
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b' ')
            {
                Err(invalid(key, "holds a symbol that is not a ticker"))
            } else {
                Ok(symbol.to_ascii_uppercase())
            }
        })
        .collect()
}

impl TradingSection {
    /// Fails closed, naming the key.
    pub fn validate(&self) -> Result<(), SidecarError> {
        self.approval.policy()?;
        self.policy().map(|_| ())
    }

    /// [`TradingSection::position_lag_seconds`] as a duration.
    pub fn position_lag(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.position_lag_seconds)
    }

    /// The guards' policy.
    pub fn policy(&self) -> Result<TradingPolicy, SidecarError> {
        let max_order_value = amount("max_order_value", &self.max_order_value)?;
        let max_daily_value = match &self.max_daily_value {
            Some(text) => Some(amount("max_daily_value", text)?),
            None => None,
        };
        if self.duplicate_window_seconds > MAX_DUPLICATE_WINDOW_SECONDS {
            return Err(invalid(
                "duplicate_window_seconds",
                format!("must be at most {MAX_DUPLICATE_WINDOW_SECONDS}"),
            ));
        }
        if !POSITION_LAG_RANGE.contains(&self.position_lag_seconds) {
            return Err(invalid(
                "position_lag_seconds",
                format!(
                    "must be between {} and {} (the broker's positions lag fills by tens of seconds)",
                    POSITION_LAG_RANGE.start(),
                    POSITION_LAG_RANGE.end()
                ),
            ));
        }
        let mut account_ids = Vec::with_capacity(self.account_ids.len());
        for id in &self.account_ids {
            let id = id.trim();
            if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(invalid(
                    "account_ids",
                    "holds an id that is not an IBKR account id such as U1234567 or DU1234567",
                ));
            }
            account_ids.push(id.to_ascii_uppercase());
        }
        for id in &self.allowed_warning_ids {
            let id = id.trim();
            if id.is_empty() || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(invalid(
                    "allowed_warning_ids",
                    "holds an id that is not a CPGW message id such as o163",
                ));
            }
        }
        Ok(TradingPolicy {
            allow_live: self.allow_live,
            account_ids,
            dry_run: self.dry_run,
            max_order_value,
            max_daily_value,
            duplicate_window_seconds: self.duplicate_window_seconds,
            symbol_allowlist: symbols("symbol_allowlist", &self.symbol_allowlist)?,
            symbol_denylist: symbols("symbol_denylist", &self.symbol_denylist)?,
            allow_short: self.allow_short,
            exits_outside_regular_hours: self.exits_outside_regular_hours,
            gtc_protective_outside_regular_hours: self.gtc_protective_outside_regular_hours,
            cancels_outside_regular_hours: self.cancels_outside_regular_hours,
            allowed_warning_ids: self
                .allowed_warning_ids
                .iter()
                .map(|id| id.trim().to_string())
                .collect(),
        })
    }
}

/// A decimal as the config shows it.
pub fn show(value: Decimal) -> String {
    to_decimal_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_safe_posture_and_unknown_keys_are_refused() {
        let policy = TradingSection::default().policy().unwrap();
        assert_eq!(policy, TradingPolicy::default());
        let parsed: Result<TradingSection, _> = serde_yaml_ng::from_str("dry_runn: false\n");
        assert!(parsed.is_err());
        let section: TradingSection = serde_yaml_ng::from_str("max_order_value: \"0\"\n").unwrap();
        assert_eq!(
            section.validate().unwrap_err().code(),
            ErrorCode::ConfigInvalid
        );
    }
}
