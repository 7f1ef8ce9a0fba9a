//! Account summary and positions on top of the CPGW client.
//!
//! - [`AccountCache`]: the selected account (`GET /iserver/accounts` -> `selectedAccount`),
//!   cached until the broker state changes (a new session may serve another account).
//! - [`summary`], [`positions`]: typed, `Decimal` amounts read from CPGW's text; positions
//!   page until `[]`, never beyond [`MAX_POSITION_PAGES`].

use super::broker_state::BrokerState;
use super::client::{CpgwClient, CpgwError};
use super::marketdata::decimal_of;
use super::types::{PositionRow, SummaryAmount};
use shared_safety::money::Decimal;
use std::sync::Mutex;
use tokio::sync::watch;

/// Hard cap on position pages, so a server that never answers `[]` cannot loop us forever.
pub const MAX_POSITION_PAGES: u32 = 50;

/// The selected account, cached per broker session.
pub struct AccountCache {
    inner: Mutex<(Option<String>, watch::Receiver<BrokerState>)>,
}

impl AccountCache {
    /// `broker`: the broker state channel; any state change drops the cached account.
    pub fn new(broker: watch::Receiver<BrokerState>) -> AccountCache {
        AccountCache {
            inner: Mutex::new((None, broker)),
        }
    }

    fn cached(&self) -> Option<String> {
        let mut guard = self.inner.lock().ok()?;
        let (cached, broker) = &mut *guard;
        if broker.has_changed().unwrap_or(true) {
            broker.mark_unchanged();
            *cached = None;
        }
        cached.clone()
    }

    /// Forgets the cached account.
    pub fn clear(&self) {
        if let Ok(mut guard) = self.inner.lock() {
            guard.0 = None;
        }
    }

    /// The account the session trades: cached, else `GET /iserver/accounts`. `Ok(None)` when
    /// CPGW names no single account.
    pub async fn selected_account(&self, client: &CpgwClient) -> Result<Option<String>, CpgwError> {
        if let Some(account) = self.cached() {
            return Ok(Some(account));
        }
        let reply = client.accounts().await?;
        let account = reply.active_account().map(str::to_string);
        if let (Some(id), Ok(mut guard)) = (&account, self.inner.lock()) {
            guard.0 = Some(id.clone());
        }
        Ok(account)
    }
}

/// An amount with its currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Amount {
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
}

fn amount(entry: Option<&SummaryAmount>) -> Amount {
    Amount {
        amount: entry.and_then(|e| e.amount.as_ref()).and_then(decimal_of),
        currency: entry.and_then(|e| e.currency.clone()),
    }
}

/// `GET /portfolio/{acct}/summary`, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountSummary {
    pub available_funds: Amount,
    pub net_liquidation: Amount,
    pub buying_power: Amount,
}

impl AccountSummary {
    /// The account currency: the first currency any amount names.
    pub fn currency(&self) -> Option<&str> {
        [
            &self.net_liquidation,
            &self.available_funds,
            &self.buying_power,
        ]
        .iter()
        .find_map(|a| a.currency.as_deref())
    }
}

pub async fn summary(client: &CpgwClient, account: &str) -> Result<AccountSummary, CpgwError> {
    let reply = client.portfolio_summary(account).await?;
    Ok(AccountSummary {
        available_funds: amount(reply.availablefunds.as_ref()),
        net_liquidation: amount(reply.netliquidation.as_ref()),
        buying_power: amount(reply.buyingpower.as_ref()),
    })
}

/// One open position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub symbol: Option<String>,
    pub conid: i64,
    /// Exact, possibly fractional; negative for a short.
    pub quantity: Decimal,
    pub average_cost: Option<Decimal>,
    pub market_price: Option<Decimal>,
    pub market_value: Option<Decimal>,
    pub unrealized_pnl: Option<Decimal>,
    pub currency: Option<String>,
}

fn position_of(row: &PositionRow) -> Option<Position> {
    let conid = row.conid.as_ref()?.as_str().parse::<i64>().ok()?;
    let quantity = row.position.as_ref().and_then(decimal_of)?;
    Some(Position {
        symbol: row
            .ticker
            .clone()
            .or_else(|| row.contract_desc.clone())
            .filter(|s| !s.is_empty()),
        conid,
        quantity,
        average_cost: row.avg_cost.as_ref().and_then(decimal_of),
        market_price: row.mkt_price.as_ref().and_then(decimal_of),
        market_value: row.mkt_value.as_ref().and_then(decimal_of),
        unrealized_pnl: row.unrealized_pnl.as_ref().and_then(decimal_of),
        currency: row.currency.clone(),
    })
}

/// Every open position (zero quantities dropped), paging from 0 until `[]`. With `fresh`,
/// CPGW must drop its position cache first (IBKR's positions lag fills by tens of seconds):
/// an order decision never runs on a cache it could not refresh, so a failed invalidate is an
/// error. More than [`MAX_POSITION_PAGES`] pages is a broker error.
pub async fn positions(
    client: &CpgwClient,
    account: &str,
    fresh: bool,
) -> Result<Vec<Position>, CpgwError> {
    if fresh {
        client.invalidate_positions(account).await?;
    }
    let mut all = Vec::new();
    for page in 0..MAX_POSITION_PAGES {
        let rows = client.positions_page(account, page).await?;
        if rows.is_empty() {
            return Ok(all);
        }
        all.extend(
            rows.iter()
                .filter_map(position_of)
                .filter(|p| !p.quantity.is_zero()),
        );
    }
    tracing::warn!(
        pages = MAX_POSITION_PAGES,
        "CPGW kept sending position pages; giving up"
    );
    Err(CpgwError::Malformed)
}

/// Sum of the known unrealized P&L values.
pub fn total_unrealized_pnl(positions: &[Position]) -> Decimal {
    positions
        .iter()
        .filter_map(|p| p.unrealized_pnl)
        .fold(Decimal::ZERO, |sum, pnl| sum.saturating_add(pnl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_position_is_exact() {
        let row: PositionRow = serde_json::from_str(
            r#"{"conid":265598,"ticker":"AAPL","position":0.1234,"avgCost":180.1,"mktPrice":"190.25","mktValue":23.48,"unrealizedPnl":1.2,"currency":"USD"}"#,
        )
        .unwrap();
        let position = position_of(&row).unwrap();
        assert_eq!(position.quantity.to_string(), "0.1234");
        assert_eq!(
            total_unrealized_pnl(&[position.clone(), position]).to_string(),
            "2.4"
        );
    }
}
