//! Cash and holdings, kept as exact decimals. The simulator keeps two books:
//! the true one, updated at every fill, and the one CPGW reports, which
//! receives the same fills after the positions lag.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::market::{Market, usd_rate};
use super::orders::Side;

/// One open position as the simulator holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimPosition {
    /// Contract id.
    pub conid: i64,
    /// Ticker.
    pub symbol: String,
    /// Signed quantity (negative when short), exact.
    pub quantity: Decimal,
    /// Average fill price of the open quantity (commissions excluded).
    pub avg_price: Decimal,
    /// Trading currency of the contract.
    pub currency: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holding {
    pub(crate) quantity: Decimal,
    pub(crate) avg_price: Decimal,
}

/// What one execution does to a book.
#[derive(Clone, Debug)]
pub(crate) struct FillEffect {
    pub(crate) conid: i64,
    pub(crate) currency: String,
    pub(crate) side: Side,
    pub(crate) quantity: Decimal,
    pub(crate) price: Decimal,
    pub(crate) commission: Decimal,
    /// When the fill happened (clock milliseconds).
    pub(crate) at_ms: i64,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Book {
    pub(crate) cash: BTreeMap<String, Decimal>,
    pub(crate) holdings: BTreeMap<i64, Holding>,
    /// Keep a closed position as a zero row instead of dropping it: CPGW's
    /// cached positions do (reference server DECISIONS.md ADR-008).
    pub(crate) keep_closed: bool,
}

/// Account figures in the base currency, as `/portfolio/{acct}/summary`
/// reports them. A simple Reg T model: initial margin 50% and maintenance
/// 25% of the gross position value, buying power four times the available
/// funds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Figures {
    pub(crate) total_cash: Decimal,
    pub(crate) gross_position_value: Decimal,
    pub(crate) net_liquidation: Decimal,
    pub(crate) init_margin: Decimal,
    pub(crate) maint_margin: Decimal,
    pub(crate) available_funds: Decimal,
    pub(crate) excess_liquidity: Decimal,
    pub(crate) buying_power: Decimal,
}

impl Book {
    pub(crate) fn with_cash(usd: Decimal) -> Self {
        let mut book = Book::default();
        book.cash.insert("USD".to_owned(), usd);
        book
    }

    /// The signed quantity held of a conid (zero when none).
    pub(crate) fn held(&self, conid: i64) -> Decimal {
        self.holdings
            .get(&conid)
            .map_or(Decimal::ZERO, |holding| holding.quantity)
    }

    pub(crate) fn apply(&mut self, fill: &FillEffect) {
        let value = fill.quantity * fill.price;
        let cash = self.cash.entry(fill.currency.clone()).or_default();
        match fill.side {
            Side::Buy => *cash -= value + fill.commission,
            Side::Sell => *cash += value - fill.commission,
        }
        let signed = match fill.side {
            Side::Buy => fill.quantity,
            Side::Sell => -fill.quantity,
        };
        let entry = self.holdings.entry(fill.conid).or_insert(Holding {
            quantity: Decimal::ZERO,
            avg_price: Decimal::ZERO,
        });
        let old = entry.quantity;
        let new = old + signed;
        if old.is_zero() || old.is_sign_negative() == signed.is_sign_negative() {
            // Opening or adding: weighted average of the open quantity.
            if !new.is_zero() {
                entry.avg_price = (old.abs() * entry.avg_price + value) / new.abs();
            }
        } else if !new.is_zero() && new.is_sign_negative() != old.is_sign_negative() {
            // Crossed through zero: the remainder opened at this price.
            entry.avg_price = fill.price;
        }
        entry.quantity = new;
        if new.is_zero() && !self.keep_closed {
            self.holdings.remove(&fill.conid);
        }
    }

    /// Open positions (zero rows left out).
    pub(crate) fn positions(&self, market: &Market) -> Vec<SimPosition> {
        self.holdings
            .iter()
            .filter(|(_, holding)| !holding.quantity.is_zero())
            .filter_map(|(conid, holding)| {
                let listing = market.by_conid(*conid)?;
                Some(SimPosition {
                    conid: *conid,
                    symbol: listing.instrument.symbol.to_owned(),
                    quantity: holding.quantity,
                    avg_price: holding.avg_price,
                    currency: listing.instrument.currency.to_owned(),
                })
            })
            .collect()
    }

    pub(crate) fn figures(&self, market: &Market) -> Figures {
        let total_cash: Decimal = self
            .cash
            .iter()
            .map(|(currency, amount)| *amount * usd_rate(currency))
            .sum();
        let mut net_positions = Decimal::ZERO;
        let mut gross = Decimal::ZERO;
        for (conid, holding) in &self.holdings {
            if let Some(listing) = market.by_conid(*conid) {
                let value =
                    holding.quantity * listing.quote.last * usd_rate(listing.instrument.currency);
                net_positions += value;
                gross += value.abs();
            }
        }
        let net_liquidation = total_cash + net_positions;
        let init_margin = gross * Decimal::new(5, 1);
        let maint_margin = gross * Decimal::new(25, 2);
        let available_funds = net_liquidation - init_margin;
        Figures {
            total_cash,
            gross_position_value: gross,
            net_liquidation,
            init_margin,
            maint_margin,
            available_funds,
            excess_liquidity: net_liquidation - maint_margin,
            buying_power: (available_funds * Decimal::from(4)).max(Decimal::ZERO),
        }
    }
}
