//! Instruments, quotes and bars. Prices are decimals with two places and move
//! deterministically: each snapshot request advances a seeded LCG walk of at
//! most five cents per step for every instrument not pinned by `set_price`.

use rust_decimal::Decimal;

/// A tradable listing. Conids of the US names are IBKR's real ones; the
/// foreign listings carry illustrative conids.
#[derive(Clone, Debug)]
pub(crate) struct Instrument {
    pub(crate) conid: i64,
    pub(crate) symbol: &'static str,
    pub(crate) name: &'static str,
    /// Exchange as `/trsrv/stocks` names it.
    pub(crate) exchange: &'static str,
    /// Listing exchange as order and trade rows name it.
    pub(crate) listing_exchange: &'static str,
    pub(crate) currency: &'static str,
    pub(crate) is_us: bool,
}

/// Last, bid and ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimQuote {
    /// Field `31`.
    pub last: Decimal,
    /// Field `84`.
    pub bid: Decimal,
    /// Field `86`.
    pub ask: Decimal,
}

#[derive(Clone, Debug)]
pub(crate) struct Listing {
    pub(crate) instrument: Instrument,
    /// Starting last price; anchors the bars of `/marketdata/history`.
    pub(crate) base: Decimal,
    pub(crate) quote: SimQuote,
    /// Pinned quotes do not walk.
    pub(crate) pinned: bool,
}

/// One OHLCV bar.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bar {
    pub(crate) open: Decimal,
    pub(crate) high: Decimal,
    pub(crate) low: Decimal,
    pub(crate) close: Decimal,
    pub(crate) volume: Decimal,
    pub(crate) time_ms: i64,
}

/// Bars end at this fixed instant (2025-01-02T00:00:00Z) so that history is
/// reproducible across runs.
pub(crate) const HISTORY_ANCHOR_MS: i64 = 1_735_776_000_000;
/// Highest price `set_price` accepts.
const MAX_QUOTE: i64 = 10_000_000;
/// Upper bound on bars per history answer (IBKR caps at 1000 too).
const MAX_BARS: i64 = 1000;

#[derive(Clone, Debug)]
pub(crate) struct Market {
    pub(crate) listings: Vec<Listing>,
    seed: u64,
    rng: u64,
}

fn listing(
    conid: i64,
    symbol: &'static str,
    name: &'static str,
    exchange: &'static str,
    listing_exchange: &'static str,
    currency: &'static str,
    cents: i64,
) -> Listing {
    let last = Decimal::new(cents, 2);
    let tick = Decimal::new(1, 2);
    Listing {
        instrument: Instrument {
            conid,
            symbol,
            name,
            exchange,
            listing_exchange,
            currency,
            is_us: currency == "USD",
        },
        base: last,
        quote: SimQuote {
            last,
            bid: last - tick,
            ask: last + tick,
        },
        pinned: false,
    }
}

impl Market {
    pub(crate) fn new(seed: u64) -> Self {
        Market {
            listings: vec![
                listing(
                    265_598,
                    "AAPL",
                    "APPLE INC",
                    "NASDAQ",
                    "NASDAQ.NMS",
                    "USD",
                    18_925,
                ),
                listing(
                    272_093,
                    "MSFT",
                    "MICROSOFT CORP",
                    "NASDAQ",
                    "NASDAQ.NMS",
                    "USD",
                    37_450,
                ),
                listing(
                    756_733,
                    "SPY",
                    "SPDR S&P 500 ETF TRUST",
                    "ARCA",
                    "ARCA",
                    "USD",
                    47_530,
                ),
                listing(
                    76_792_991,
                    "TSLA",
                    "TESLA INC",
                    "NASDAQ",
                    "NASDAQ.NMS",
                    "USD",
                    24_840,
                ),
                listing(14_204, "SAP", "SAP SE", "IBIS", "IBIS", "EUR", 14_012),
                // Foreign listing first, as `/trsrv/stocks` really orders them.
                listing(411_093_364, "SHEL", "SHELL PLC", "LSE", "LSE", "GBP", 2_510),
                listing(
                    517_693_380,
                    "SHEL",
                    "SHELL PLC-ADR",
                    "NYSE",
                    "NYSE",
                    "USD",
                    6_420,
                ),
            ],
            seed,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    pub(crate) fn by_conid(&self, conid: i64) -> Option<&Listing> {
        self.listings.iter().find(|l| l.instrument.conid == conid)
    }

    pub(crate) fn listings_for<'a>(&'a self, symbol: &'a str) -> impl Iterator<Item = &'a Listing> {
        self.listings
            .iter()
            .filter(move |l| l.instrument.symbol == symbol)
    }

    /// The listing a bare symbol means: its US listing if it has one, else
    /// its first.
    pub(crate) fn primary_conid(&self, symbol: &str) -> Option<i64> {
        let mut all = self.listings_for(symbol);
        let first = all.next()?;
        if first.instrument.is_us {
            return Some(first.instrument.conid);
        }
        Some(
            all.find(|l| l.instrument.is_us)
                .unwrap_or(first)
                .instrument
                .conid,
        )
    }

    pub(crate) fn quote(&self, conid: i64) -> Option<SimQuote> {
        self.by_conid(conid).map(|l| l.quote)
    }

    /// Pins a quote; refuses prices that are not positive or above
    /// 10 000 000 (they would break the arithmetic of fills).
    pub(crate) fn set_quote(&mut self, conid: i64, quote: SimQuote) -> bool {
        let max = Decimal::from(MAX_QUOTE);
        if [quote.last, quote.bid, quote.ask]
            .iter()
            .any(|price| *price <= Decimal::ZERO || *price > max)
        {
            return false;
        }
        match self
            .listings
            .iter_mut()
            .find(|l| l.instrument.conid == conid)
        {
            Some(listing) => {
                listing.quote = quote;
                listing.pinned = true;
                true
            }
            None => false,
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.rng >> 33
    }

    /// One step of the walk for every unpinned listing.
    pub(crate) fn tick(&mut self) {
        let tick = Decimal::new(1, 2);
        for index in 0..self.listings.len() {
            let step = i64::try_from(self.next_random() % 11).unwrap_or(5) - 5;
            let Some(listing) = self.listings.get_mut(index) else {
                continue;
            };
            if listing.pinned {
                continue;
            }
            let last = (listing.quote.last + Decimal::new(step, 2)).max(Decimal::ONE);
            listing.quote = SimQuote {
                last,
                bid: last - tick,
                ask: last + tick,
            };
        }
    }

    /// `count` bars of `bar_ms` each, the last one starting at the anchor.
    /// Same seed, conid and arguments give the same bars.
    pub(crate) fn history(&self, conid: i64, period_ms: i64, bar_ms: i64) -> Option<Vec<Bar>> {
        let listing = self.by_conid(conid)?;
        let count = (period_ms / bar_ms).clamp(1, MAX_BARS);
        let mut state = self.seed
            ^ u64::try_from(conid).unwrap_or_default().rotate_left(17)
            ^ u64::try_from(bar_ms).unwrap_or_default().rotate_left(41);
        let mut close = listing.base;
        let mut bars = Vec::new();
        for index in 0..count {
            let a = splitmix(&mut state);
            let b = splitmix(&mut state);
            let c = splitmix(&mut state);
            let open = close;
            // Close moves up to 1% of the open, in basis points.
            let bps = i64::try_from(a % 201).unwrap_or(100) - 100;
            close = (open + open * Decimal::new(bps, 4))
                .round_dp(2)
                .max(Decimal::ONE);
            let wick_high = Decimal::new(i64::try_from(b % 50).unwrap_or(0), 2);
            let wick_low = Decimal::new(i64::try_from(c % 50).unwrap_or(0), 2);
            let high = open.max(close) + wick_high;
            let low = (open.min(close) - wick_low).max(Decimal::new(1, 2));
            let volume = Decimal::from(100_000 + (a >> 40) % 900_000);
            bars.push(Bar {
                open,
                high,
                low,
                close,
                volume,
                time_ms: HISTORY_ANCHOR_MS - (count - 1 - index) * bar_ms,
            });
        }
        Some(bars)
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fixed conversion rates into the account's base currency (USD), so that
/// account figures stay exact decimals.
pub(crate) fn usd_rate(currency: &str) -> Decimal {
    match currency {
        "EUR" => Decimal::new(108, 2),
        "GBP" => Decimal::new(127, 2),
        _ => Decimal::ONE,
    }
}

/// Parses an IBKR duration such as `1m`, `5min`, `2h`, `1d`, `1w`, `1y` into
/// milliseconds. As in CPGW, `m` means month and minutes are `min`; years
/// are a period unit only.
pub(crate) fn parse_duration_ms(text: &str, is_bar: bool) -> Option<i64> {
    let text = text.trim().to_ascii_lowercase();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().ok()?;
    if number <= 0 {
        return None;
    }
    const MINUTE: i64 = 60_000;
    const DAY: i64 = 24 * 60 * MINUTE;
    let unit_ms = match unit {
        "min" | "mins" => MINUTE,
        "h" | "hour" | "hours" => 60 * MINUTE,
        "d" | "day" | "days" => DAY,
        "w" | "week" | "weeks" => 7 * DAY,
        "m" | "mo" | "month" | "months" => 30 * DAY,
        "y" | "year" | "years" if !is_bar => 365 * DAY,
        _ => return None,
    };
    number.checked_mul(unit_ms)
}
