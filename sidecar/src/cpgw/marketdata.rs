//! Symbols, quotes and bars on top of the CPGW client.
//!
//! - [`ConidCache`]: symbol -> US contract, cached (24 h, bounded) so a quote or an order costs
//!   one CPGW call instead of two. Foreign-only symbols are refused (`SYMBOL_FOREIGN_ONLY`),
//!   unknown ones are `SYMBOL_NOT_FOUND`.
//! - [`snapshot`]: `fields=31,84,86` with the warm-up retry (CPGW answers the first request
//!   for a conid without prices) and the `C`/`H` price prefixes.
//! - Prices are read from CPGW's text into `Decimal`, never through `f64`.

use super::client::{CpgwClient, CpgwError};
use super::types::{JsonText, SnapshotRow, StockContract, StocksReply};
use crate::cpgw::manual_login_action;
use protocol::envelope::Outcome;
use shared_safety::ErrorCode;
use shared_safety::money::{Decimal, PricePrefix, parse_broker_amount, parse_broker_price};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long a resolved symbol stays cached.
pub const CONID_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Most symbols cached; the oldest entry is dropped beyond this.
pub const CONID_CACHE_MAX: usize = 2048;
/// Extra snapshot calls for conids that came back without a last price.
pub const SNAPSHOT_WARMUP_RETRIES: u32 = 3;
/// Pause before the first retry; the n-th retry waits n times this.
pub const SNAPSHOT_BACKOFF: Duration = Duration::from_millis(150);

/// One listing of a symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contract {
    /// The normalized (uppercase) symbol.
    pub symbol: String,
    pub conid: i64,
    pub exchange: Option<String>,
    pub is_us: bool,
    /// `USD` for US listings; CPGW's stock search does not say for the others.
    pub currency: Option<String>,
}

/// Normalizes a symbol: trimmed, uppercase, letters, digits, `.`, `/`, `-` and space only.
pub fn normalize_symbol(symbol: &str) -> Result<String, Outcome> {
    let trimmed = symbol.trim();
    if trimmed.is_empty()
        || trimmed.len() > 12
        || !trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b' '))
    {
        return Err(Outcome::Refused(
            ErrorCode::ArgumentsInvalid.body(Some("(symbol: letters, digits, '.', '/', '-' only)")),
        ));
    }
    Ok(trimmed.to_ascii_uppercase())
}

/// The outcome for a failed CPGW call.
pub fn cpgw_outcome(error: CpgwError, client: &CpgwClient) -> Outcome {
    match error {
        CpgwError::NotAuthenticated => {
            Outcome::ManualActionRequired(manual_login_action(&client.portal_location()))
        }
        other => Outcome::Failed(other.error_code().body(None)),
    }
}

/// All listings of `symbol` in a `/trsrv/stocks` answer, US listings first.
pub fn contracts_of(reply: &StocksReply, symbol: &str) -> Vec<Contract> {
    let listings = reply
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(symbol))
        .map(|(_, listings)| listings.as_slice())
        .unwrap_or_default();
    let mut contracts: Vec<Contract> = listings
        .iter()
        .flat_map(|listing| listing.contracts.iter())
        .filter_map(|row: &StockContract| {
            let conid = row.conid.as_ref()?.as_str().parse::<i64>().ok()?;
            (conid > 0).then(|| Contract {
                symbol: symbol.to_string(),
                conid,
                exchange: row.exchange.clone(),
                is_us: row.is_us,
                currency: row.is_us.then(|| "USD".to_string()),
            })
        })
        .collect();
    // Stable: keeps CPGW's order within US and within non-US listings.
    contracts.sort_by_key(|contract| !contract.is_us);
    contracts
}

struct Entry {
    at: Instant,
    contract: Contract,
}

/// Symbol -> US contract cache, shared by the market-data and order tools.
pub struct ConidCache {
    client: CpgwClient,
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, Entry>>,
    /// Held while a miss is looked up, so fifty parallel orders for one new symbol cost one
    /// `/trsrv/stocks` call (and one slot of the read pacing lane) instead of fifty.
    lookup: tokio::sync::Mutex<()>,
}

impl ConidCache {
    pub fn new(client: CpgwClient) -> ConidCache {
        ConidCache::with_limits(client, CONID_TTL, CONID_CACHE_MAX)
    }

    pub fn with_limits(client: CpgwClient, ttl: Duration, max: usize) -> ConidCache {
        ConidCache {
            client,
            ttl,
            max: max.max(1),
            entries: Mutex::new(HashMap::new()),
            lookup: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached contract for a normalized symbol, if fresh.
    fn cached(&self, symbol: &str) -> Option<Contract> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(symbol)?;
        (entry.at.elapsed() < self.ttl).then(|| entry.contract.clone())
    }

    fn remember(&self, contract: &Contract) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let now = Instant::now();
        entries.retain(|_, entry| now.saturating_duration_since(entry.at) < self.ttl);
        while entries.len() >= self.max {
            let oldest = entries
                .iter()
                .min_by_key(|(_, entry)| entry.at)
                .map(|(key, _)| key.clone());
            match oldest {
                Some(key) => entries.remove(&key),
                None => break,
            };
        }
        entries.insert(
            contract.symbol.clone(),
            Entry {
                at: now,
                contract: contract.clone(),
            },
        );
    }

    /// Number of cached symbols (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every listing of `symbol` (US first); remembers the US one. Always asks CPGW.
    pub async fn search(&self, symbol: &str) -> Result<Vec<Contract>, Outcome> {
        let symbol = normalize_symbol(symbol)?;
        let reply = self
            .client
            .stocks(&[&symbol])
            .await
            .map_err(|error| cpgw_outcome(error, &self.client))?;
        let contracts = contracts_of(&reply, &symbol);
        if let Some(us) = contracts.iter().find(|contract| contract.is_us) {
            self.remember(us);
        }
        Ok(contracts)
    }

    /// The US contract for `symbol`: from the cache, else one `/trsrv/stocks` call.
    /// `SYMBOL_NOT_FOUND` for an unknown symbol, `SYMBOL_FOREIGN_ONLY` when it has only
    /// non-US listings.
    pub async fn resolve_symbol(&self, symbol: &str) -> Result<Contract, Outcome> {
        let normalized = normalize_symbol(symbol)?;
        if let Some(contract) = self.cached(&normalized) {
            return Ok(contract);
        }
        let _lookup = self.lookup.lock().await;
        // Another caller may have resolved it while this one waited.
        if let Some(contract) = self.cached(&normalized) {
            return Ok(contract);
        }
        let contracts = self.search(&normalized).await?;
        pick_us(contracts)
    }

    /// Resolves several symbols; the uncached ones in one `/trsrv/stocks` call.
    pub async fn resolve_symbols(&self, symbols: &[String]) -> Result<Vec<Contract>, Outcome> {
        let mut normalized = Vec::with_capacity(symbols.len());
        for symbol in symbols {
            normalized.push(normalize_symbol(symbol)?);
        }
        let missing: Vec<&str> = normalized
            .iter()
            .filter(|symbol| self.cached(symbol).is_none())
            .map(String::as_str)
            .collect();
        let reply = if missing.is_empty() {
            StocksReply::default()
        } else {
            self.client
                .stocks(&missing)
                .await
                .map_err(|error| cpgw_outcome(error, &self.client))?
        };
        let mut resolved = Vec::with_capacity(normalized.len());
        for symbol in &normalized {
            if let Some(contract) = self.cached(symbol) {
                resolved.push(contract);
                continue;
            }
            let contract = pick_us(contracts_of(&reply, symbol))
                .map_err(|outcome| with_symbol(outcome, symbol))?;
            self.remember(&contract);
            resolved.push(contract);
        }
        Ok(resolved)
    }
}

fn pick_us(contracts: Vec<Contract>) -> Result<Contract, Outcome> {
    if contracts.is_empty() {
        return Err(Outcome::Failed(ErrorCode::SymbolNotFound.body(None)));
    }
    contracts
        .into_iter()
        .find(|contract| contract.is_us)
        .ok_or_else(|| Outcome::Failed(ErrorCode::SymbolForeignOnly.body(None)))
}

fn with_symbol(outcome: Outcome, symbol: &str) -> Outcome {
    match outcome {
        Outcome::Failed(body) if body.code == ErrorCode::SymbolNotFound.code() => {
            Outcome::Failed(ErrorCode::SymbolNotFound.body(Some(&format!("({symbol})"))))
        }
        Outcome::Failed(body) if body.code == ErrorCode::SymbolForeignOnly.code() => {
            Outcome::Failed(ErrorCode::SymbolForeignOnly.body(Some(&format!("({symbol})"))))
        }
        other => other,
    }
}

/// A decimal from CPGW number or string text (`"0.1234"`, `"1,234.5"`, `1.5E-4`).
pub fn decimal_of(text: &JsonText) -> Option<Decimal> {
    let raw = text.as_str().trim();
    parse_broker_amount(raw)
        .and_then(|(value, currency)| currency.is_none().then_some(value))
        .or_else(|| Decimal::from_scientific(raw).ok())
}

/// Last, bid and ask of one conid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub conid: i64,
    pub last: Option<Decimal>,
    /// `C`: the last price is the previous close; `H`: halted.
    pub last_prefix: PricePrefix,
    pub bid: Option<Decimal>,
    pub ask: Option<Decimal>,
}

impl Quote {
    pub fn has_price(&self) -> bool {
        self.last.is_some() || self.bid.is_some() || self.ask.is_some()
    }
}

fn field(row: &SnapshotRow, id: &str) -> Option<(Decimal, PricePrefix)> {
    row.get(id)
        .and_then(|text| parse_broker_price(text.as_str()))
}

fn row_conid(row: &SnapshotRow) -> Option<i64> {
    row.get("conid")?.as_str().parse().ok()
}

/// Reads one snapshot row.
pub fn quote_of(row: &SnapshotRow) -> Option<Quote> {
    let conid = row_conid(row)?;
    let last = field(row, "31");
    Some(Quote {
        conid,
        last: last.map(|(price, _)| price),
        last_prefix: last.map(|(_, prefix)| prefix).unwrap_or(PricePrefix::Live),
        bid: field(row, "84").map(|(price, _)| price),
        ask: field(row, "86").map(|(price, _)| price),
    })
}

/// Snapshot quotes for `conids` in one call, repeated (up to [`SNAPSHOT_WARMUP_RETRIES`]
/// times, short growing pauses) while a conid has no last price yet. Conids CPGW never
/// priced are absent from the map.
pub async fn snapshot(
    client: &CpgwClient,
    conids: &[i64],
    backoff: Duration,
) -> Result<HashMap<i64, Quote>, CpgwError> {
    let mut quotes: HashMap<i64, Quote> = HashMap::new();
    let mut attempt = 0;
    loop {
        let rows = client.snapshot(conids).await?;
        for quote in rows.iter().filter_map(quote_of) {
            if !conids.contains(&quote.conid) {
                continue;
            }
            let better = match quotes.get(&quote.conid) {
                Some(known) => quote.last.is_some() || !known.has_price(),
                None => true,
            };
            if better {
                quotes.insert(quote.conid, quote);
            }
        }
        let warm = conids
            .iter()
            .all(|conid| quotes.get(conid).is_some_and(|quote| quote.last.is_some()));
        if warm || attempt >= SNAPSHOT_WARMUP_RETRIES {
            return Ok(quotes);
        }
        attempt += 1;
        tokio::time::sleep(backoff * attempt).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> SnapshotRow {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn prefixes_and_missing_fields() {
        let quote = quote_of(&row(
            r#"{"conid":1,"31":"C189.50","84":"189.4","86":"189.60"}"#,
        ))
        .unwrap();
        assert_eq!(quote.last, Some(Decimal::new(18950, 2)));
        assert_eq!(quote.last_prefix, PricePrefix::PreviousClose);
        assert_eq!(quote.bid, Some(Decimal::new(18940, 2)));
        let halted = quote_of(&row(r#"{"conid":"2","31":"H10"}"#)).unwrap();
        assert_eq!(halted.last_prefix, PricePrefix::Halted);
        assert!(halted.bid.is_none() && halted.ask.is_none());
        let cold = quote_of(&row(r#"{"conid":3,"_updated":1700000000000}"#)).unwrap();
        assert!(!cold.has_price());
    }

    #[test]
    fn us_listing_first_and_foreign_only_refused() {
        let reply: StocksReply = serde_json::from_str(
            r#"{"SAP":[{"contracts":[{"conid":14204,"exchange":"IBIS","isUS":false},{"conid":9999,"exchange":"NYSE","isUS":true}]}],
                "BMW":[{"contracts":[{"conid":14171,"exchange":"IBIS","isUS":false}]}]}"#,
        )
        .unwrap();
        let sap = contracts_of(&reply, "SAP");
        assert_eq!(sap[0].conid, 9999);
        assert_eq!(pick_us(sap).unwrap().currency.as_deref(), Some("USD"));
        match pick_us(contracts_of(&reply, "BMW")) {
            Err(Outcome::Failed(body)) => assert_eq!(body.code, "SYMBOL_FOREIGN_ONLY"),
            other => panic!("{other:?}"),
        }
        match pick_us(contracts_of(&reply, "NOPE")) {
            Err(Outcome::Failed(body)) => assert_eq!(body.code, "SYMBOL_NOT_FOUND"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decimals_from_text() {
        assert_eq!(
            decimal_of(&JsonText("0.1234".into())),
            Some(Decimal::new(1234, 4))
        );
        assert_eq!(
            decimal_of(&JsonText("1.5E-4".into())),
            Some(Decimal::new(15, 5))
        );
        assert_eq!(
            decimal_of(&JsonText("-12.5".into())),
            Some(Decimal::new(-125, 1))
        );
        assert_eq!(decimal_of(&JsonText("abc".into())), None);
    }
}
