//! Snapshot quotes for the read tools (`ibkr_quote`, `ibkr_quotes`), shared between calls.
//!
//! Every CPGW request waits for the pacer (reads: 4 a second), so agents asking the same quote
//! at the same moment must not each cost one:
//!
//! - **single flight**: while a snapshot for a conid is on its way, later calls for that conid
//!   wait for its answer instead of asking again; every waiter gets the same answer, or the
//!   same error;
//! - **freshness window**: an answer with a last price is reused while it is younger than
//!   `sidecar.quote_max_age_ms` (zero: never); each reused quote reports its age;
//! - **refresh ahead**: the first call that finds a kept quote past three quarters of that age
//!   asks CPGW again (and gets the new answer), while every other call is still served the kept
//!   one. Without it, the quote expired for everyone at once, and every agent asking then
//!   waited for the new snapshot's turn at the pacer (up to a second or two under load).
//!
//! Answers without a last price (CPGW's warm-up) and failures are never kept, the cache is
//! bounded ([`QUOTE_CACHE_MAX`] conids, oldest dropped) and is dropped whenever the broker
//! state changes (a new session may see other data). Ages are read on the tokio clock.
//!
//! Order guards never come here: a notional or a price check asks CPGW itself
//! (`tools::orders::facts::quote_of`).

use super::broker_state::BrokerState;
use super::client::{CpgwClient, CpgwError};
use super::marketdata::{Quote, SNAPSHOT_BACKOFF, snapshot};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Most conids kept; the oldest answer is dropped beyond this.
pub const QUOTE_CACHE_MAX: usize = 4096;

/// A quote and how long ago CPGW sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgedQuote {
    pub quote: Quote,
    /// Time since the snapshot was received from CPGW (zero when fetched for this call).
    pub age: Duration,
}

/// What one snapshot request answered: quotes by conid, received at `at`.
type Answer = Result<(HashMap<i64, Quote>, Instant), CpgwError>;

/// `None` until the leader has the answer.
type Slot = watch::Receiver<Option<Arc<Answer>>>;

struct Kept {
    at: Instant,
    quote: Quote,
}

struct Flight {
    id: u64,
    answer: Slot,
}

struct Inner {
    kept: HashMap<i64, Kept>,
    flights: HashMap<i64, Flight>,
    broker: watch::Receiver<BrokerState>,
    /// Bumped each time the broker state changed: an answer asked for before may not be kept.
    generation: u64,
    next_flight: u64,
}

/// Snapshot quotes shared between the read tools' calls. See the module documentation.
pub struct QuoteCache {
    max_age: Duration,
    max: usize,
    inner: Mutex<Inner>,
}

/// Conids a call must still get, sorted by where their answer comes from.
struct Plan<'a> {
    found: HashMap<i64, AgedQuote>,
    waiting: Vec<(i64, Slot)>,
    lead: Option<Leading<'a>>,
}

/// The flight this call asks CPGW for. Dropped before it answered (the call was cancelled),
/// it unregisters, so its waiters try again instead of waiting for nothing.
struct Leading<'a> {
    cache: &'a QuoteCache,
    id: u64,
    generation: u64,
    conids: Vec<i64>,
    answer: watch::Sender<Option<Arc<Answer>>>,
}

impl QuoteCache {
    /// `broker`: the broker state channel, any change drops what is kept. `max_age`: how old a
    /// reused quote may be (zero: never reused).
    pub fn new(broker: watch::Receiver<BrokerState>, max_age: Duration) -> QuoteCache {
        QuoteCache::with_limit(broker, max_age, QUOTE_CACHE_MAX)
    }

    pub fn with_limit(
        broker: watch::Receiver<BrokerState>,
        max_age: Duration,
        max: usize,
    ) -> QuoteCache {
        QuoteCache {
            max_age,
            max: max.max(1),
            inner: Mutex::new(Inner {
                kept: HashMap::new(),
                flights: HashMap::new(),
                broker,
                generation: 0,
                next_flight: 0,
            }),
        }
    }

    /// The state, with what the broker state made obsolete already dropped. A poisoned lock
    /// is taken over: every update leaves the maps consistent.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.broker.has_changed().unwrap_or(true) {
            inner.broker.mark_unchanged();
            inner.kept.clear();
            inner.flights.clear();
            inner.generation += 1;
        }
        inner
    }

    /// Number of conids kept (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.lock().kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Quotes for `conids` from CPGW through `client` (warm-up retried), shared as described
    /// in the module documentation. Conids CPGW never priced are absent from the map.
    pub async fn quotes(
        &self,
        client: &CpgwClient,
        conids: &[i64],
    ) -> Result<HashMap<i64, AgedQuote>, CpgwError> {
        self.quotes_with(conids, |missing| async move {
            snapshot(client, &missing, SNAPSHOT_BACKOFF).await
        })
        .await
    }

    /// [`QuoteCache::quotes`] with `fetch` asking CPGW for the conids nobody has: called at
    /// most once per round, with the conids neither kept nor in flight.
    pub async fn quotes_with<F, Fut>(
        &self,
        conids: &[i64],
        mut fetch: F,
    ) -> Result<HashMap<i64, AgedQuote>, CpgwError>
    where
        F: FnMut(Vec<i64>) -> Fut,
        Fut: Future<Output = Result<HashMap<i64, Quote>, CpgwError>>,
    {
        let mut wanted: Vec<i64> = conids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found = HashMap::with_capacity(wanted.len());
        // Each round either answers conids or finds that the call leading their flight was
        // cancelled; the next round then leads a flight for them itself.
        while !wanted.is_empty() {
            let plan = self.plan(&wanted);
            found.extend(plan.found);
            let mut again = Vec::new();
            if let Some(lead) = plan.lead {
                let answer = fetch(lead.conids.clone()).await;
                let answer = answer.map(|quotes| (quotes, Instant::now()));
                let landed = lead.land(answer);
                let (quotes, _) = landed.as_ref().as_ref().map_err(|error| *error)?;
                found.extend(quotes.iter().map(|(conid, quote)| {
                    let aged = AgedQuote {
                        quote: quote.clone(),
                        age: Duration::ZERO,
                    };
                    (*conid, aged)
                }));
            }
            for (conid, mut slot) in plan.waiting {
                let waited = slot
                    .wait_for(Option::is_some)
                    .await
                    .map(|answer| answer.clone());
                // An error: the leader's sender is gone. It answered just before, or it was
                // cancelled (no answer: ask again).
                let answer = waited.unwrap_or_else(|_| slot.borrow().clone());
                match answer {
                    Some(answer) => {
                        if let Ok((quotes, at)) = answer.as_ref()
                            && let Some(quote) = quotes.get(&conid)
                        {
                            found.insert(
                                conid,
                                AgedQuote {
                                    quote: quote.clone(),
                                    age: Instant::now().saturating_duration_since(*at),
                                },
                            );
                        }
                        if let Err(error) = answer.as_ref() {
                            return Err(*error);
                        }
                    }
                    None => again.push(conid),
                }
            }
            wanted = again;
        }
        Ok(found)
    }

    /// Sorts `wanted` into kept, in flight and to be asked for; registers the flight for the
    /// last ones.
    fn plan(&self, wanted: &[i64]) -> Plan<'_> {
        let mut inner = self.lock();
        let now = Instant::now();
        let mut plan = Plan {
            found: HashMap::new(),
            waiting: Vec::new(),
            lead: None,
        };
        let mut missing = Vec::new();
        for &conid in wanted {
            if let Some(kept) = inner.kept.get(&conid) {
                let age = now.saturating_duration_since(kept.at);
                if age >= self.refresh_after()
                    && age < self.max_age
                    && !inner.flights.contains_key(&conid)
                {
                    // This call leads the refresh; the others keep the kept quote meanwhile.
                    missing.push(conid);
                    continue;
                }
                if age < self.max_age {
                    plan.found.insert(
                        conid,
                        AgedQuote {
                            quote: kept.quote.clone(),
                            age,
                        },
                    );
                    continue;
                }
            }
            match inner.flights.get(&conid) {
                Some(flight) => plan.waiting.push((conid, flight.answer.clone())),
                None => missing.push(conid),
            }
        }
        if !missing.is_empty() {
            let id = inner.next_flight;
            inner.next_flight += 1;
            let (answer, slot) = watch::channel(None);
            for &conid in &missing {
                inner.flights.insert(
                    conid,
                    Flight {
                        id,
                        answer: slot.clone(),
                    },
                );
            }
            plan.lead = Some(Leading {
                cache: self,
                id,
                generation: inner.generation,
                conids: missing,
                answer,
            });
        }
        plan
    }

    /// From what age a kept quote is fetched again by the next call that finds it.
    fn refresh_after(&self) -> Duration {
        self.max_age * 3 / 4
    }

    fn keep(&self, inner: &mut Inner, conid: i64, quote: Quote, at: Instant) {
        let max_age = self.max_age;
        inner
            .kept
            .retain(|_, kept| at.saturating_duration_since(kept.at) < max_age);
        while inner.kept.len() >= self.max && !inner.kept.contains_key(&conid) {
            let oldest = inner
                .kept
                .iter()
                .min_by_key(|(_, kept)| kept.at)
                .map(|(conid, _)| *conid);
            match oldest {
                Some(oldest) => inner.kept.remove(&oldest),
                None => break,
            };
        }
        inner.kept.insert(conid, Kept { at, quote });
    }
}

impl Leading<'_> {
    /// Records the flight's answer: keeps the quotes with a last price (unless the broker
    /// state changed meanwhile or reuse is off), ends the flight and wakes its waiters.
    fn land(self, answer: Answer) -> Arc<Answer> {
        let answer = Arc::new(answer);
        let cache = self.cache;
        {
            let mut inner = cache.lock();
            if let Ok((quotes, at)) = answer.as_ref()
                && inner.generation == self.generation
                && !cache.max_age.is_zero()
            {
                for conid in &self.conids {
                    if let Some(quote) = quotes.get(conid).filter(|quote| quote.last.is_some()) {
                        cache.keep(&mut inner, *conid, quote.clone(), *at);
                    }
                }
            }
            self.unregister(&mut inner);
        }
        self.answer.send_replace(Some(Arc::clone(&answer)));
        answer
    }

    /// Removes the flight entries that still belong to this flight.
    fn unregister(&self, inner: &mut Inner) {
        for conid in &self.conids {
            if inner
                .flights
                .get(conid)
                .is_some_and(|flight| flight.id == self.id)
            {
                inner.flights.remove(conid);
            }
        }
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        // After `land` this finds nothing left. Before it (the call was cancelled), the
        // waiters see the sender gone without an answer and try again, finding no flight.
        let mut inner = self.cache.lock();
        self.unregister(&mut inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_safety::money::{Decimal, PricePrefix};

    /// How long the fake CPGW takes to answer (on the paused clock: calls arriving meanwhile
    /// are all registered before it answers).
    const LATENCY: Duration = Duration::from_millis(50);
    const MAX_AGE: Duration = Duration::from_millis(1000);

    fn quote(conid: i64, last: Option<Decimal>) -> Quote {
        Quote {
            conid,
            last,
            last_prefix: PricePrefix::Live,
            bid: Some(Decimal::new(9999, 2)),
            ask: Some(Decimal::new(10001, 2)),
        }
    }

    /// A fake CPGW snapshot endpoint that records what it was asked.
    #[derive(Clone)]
    struct FakeCpgw {
        asked: Arc<Mutex<Vec<Vec<i64>>>>,
        fail: Arc<Mutex<Option<CpgwError>>>,
        last: Arc<Mutex<Option<Decimal>>>,
    }

    impl FakeCpgw {
        fn new() -> FakeCpgw {
            FakeCpgw {
                asked: Arc::default(),
                fail: Arc::default(),
                last: Arc::new(Mutex::new(Some(Decimal::new(100, 0)))),
            }
        }

        async fn snapshot(self, conids: Vec<i64>) -> Result<HashMap<i64, Quote>, CpgwError> {
            self.asked.lock().unwrap().push(conids.clone());
            tokio::time::sleep(LATENCY).await;
            if let Some(error) = *self.fail.lock().unwrap() {
                return Err(error);
            }
            let last = *self.last.lock().unwrap();
            Ok(conids.iter().map(|c| (*c, quote(*c, last))).collect())
        }

        fn requests(&self) -> usize {
            self.asked.lock().unwrap().len()
        }

        fn asked(&self) -> Vec<Vec<i64>> {
            self.asked.lock().unwrap().clone()
        }
    }

    async fn ask(
        cache: &QuoteCache,
        cpgw: &FakeCpgw,
        conids: &[i64],
    ) -> Result<HashMap<i64, AgedQuote>, CpgwError> {
        cache
            .quotes_with(conids, |missing| cpgw.clone().snapshot(missing))
            .await
    }

    fn cache(max_age: Duration) -> (Arc<QuoteCache>, watch::Sender<BrokerState>) {
        let (broker, receiver) = watch::channel(BrokerState::Ready);
        (Arc::new(QuoteCache::new(receiver, max_age)), broker)
    }

    /// `n` calls for `conids` at the same moment, each in its own task.
    async fn at_once(
        cache: &Arc<QuoteCache>,
        cpgw: &FakeCpgw,
        conids: &[i64],
        n: usize,
    ) -> Vec<Result<HashMap<i64, AgedQuote>, CpgwError>> {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (cache, cpgw, conids) = (Arc::clone(cache), cpgw.clone(), conids.to_vec());
            calls.spawn(async move { ask(&cache, &cpgw, &conids).await });
        }
        calls.join_all().await
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_for_one_conid_share_one_request() {
        let (cache, _broker) = cache(MAX_AGE);
        let cpgw = FakeCpgw::new();
        let answers = at_once(&cache, &cpgw, &[265598], 64).await;
        assert_eq!(cpgw.requests(), 1);
        for answer in answers {
            let quotes = answer.unwrap();
            assert_eq!(quotes[&265598].quote.last, Some(Decimal::new(100, 0)));
            assert_eq!(quotes[&265598].age, Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_young_quote_is_reused_with_its_age_and_an_old_one_asked_again() {
        let (cache, _broker) = cache(MAX_AGE);
        let cpgw = FakeCpgw::new();
        let first = ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(first[&1].age, Duration::ZERO);
        assert_eq!(cpgw.requests(), 1);

        tokio::time::advance(Duration::from_millis(400)).await;
        let reused = ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cpgw.requests(), 1, "a young quote costs no request");
        assert_eq!(reused[&1].age, Duration::from_millis(400));
        assert_eq!(reused[&1].quote, first[&1].quote);

        tokio::time::advance(MAX_AGE - Duration::from_millis(400)).await;
        let fresh = ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cpgw.requests(), 2, "a quote max_age old is asked again");
        assert_eq!(fresh[&1].age, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn one_call_refreshes_an_aging_quote_while_the_others_are_served_the_kept_one() {
        let (cache, _broker) = cache(MAX_AGE);
        let cpgw = FakeCpgw::new();
        ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cpgw.requests(), 1);

        tokio::time::advance(Duration::from_millis(800)).await;
        *cpgw.last.lock().unwrap() = Some(Decimal::new(101, 0));
        let leader = {
            let (cache, cpgw) = (Arc::clone(&cache), cpgw.clone());
            tokio::spawn(async move { ask(&cache, &cpgw, &[1]).await })
        };
        // Let the leader register its flight, then ask at the same instant: served at once.
        tokio::task::yield_now().await;
        assert_eq!(
            cpgw.requests(),
            2,
            "the first call past 3/4 of the age asks again"
        );
        let other = ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(other[&1].age, Duration::from_millis(800));
        assert_eq!(other[&1].quote.last, Some(Decimal::new(100, 0)));
        let refreshed = leader.await.unwrap().unwrap();
        assert_eq!(refreshed[&1].age, Duration::ZERO);
        assert_eq!(refreshed[&1].quote.last, Some(Decimal::new(101, 0)));
        assert_eq!(cpgw.requests(), 2, "one refresh, whoever asked");

        // Past the first answer's age the refreshed one is served: nobody waits.
        tokio::time::advance(Duration::from_millis(300)).await;
        let later = ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cpgw.requests(), 2);
        assert_eq!(later[&1].quote.last, Some(Decimal::new(101, 0)));
        assert_eq!(later[&1].age, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_age_asks_every_time_but_still_shares_a_flight() {
        let (cache, _broker) = cache(Duration::ZERO);
        let cpgw = FakeCpgw::new();
        for n in 1..=3 {
            ask(&cache, &cpgw, &[1]).await.unwrap();
            assert_eq!(cpgw.requests(), n);
        }
        assert!(cache.is_empty());
        at_once(&cache, &cpgw, &[1], 8).await;
        assert_eq!(cpgw.requests(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_reaches_every_waiter_and_is_not_kept() {
        let (cache, _broker) = cache(MAX_AGE);
        let cpgw = FakeCpgw::new();
        *cpgw.fail.lock().unwrap() = Some(CpgwError::Timeout);
        let answers = at_once(&cache, &cpgw, &[1], 8).await;
        assert_eq!(cpgw.requests(), 1);
        assert!(
            answers
                .iter()
                .all(|answer| *answer == Err(CpgwError::Timeout))
        );
        assert!(cache.is_empty());

        *cpgw.fail.lock().unwrap() = None;
        let quotes = ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cpgw.requests(), 2, "the next call tries again");
        assert_eq!(quotes[&1].age, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_warm_up_answer_without_a_last_price_is_not_kept() {
        let (cache, _broker) = cache(MAX_AGE);
        let cpgw = FakeCpgw::new();
        *cpgw.last.lock().unwrap() = None;
        let quotes = ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(quotes[&1].quote.last, None);
        assert!(cache.is_empty());
        ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cpgw.requests(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broker_state_change_drops_what_is_kept() {
        let (cache, broker) = cache(MAX_AGE);
        let cpgw = FakeCpgw::new();
        ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cache.len(), 1);
        broker.send_replace(BrokerState::LoginRequired);
        broker.send_replace(BrokerState::Ready);
        ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cpgw.requests(), 2);

        // An answer asked for before a change is delivered but not kept.
        let pending = {
            let (cache, cpgw) = (Arc::clone(&cache), cpgw.clone());
            tokio::spawn(async move { ask(&cache, &cpgw, &[2]).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(cpgw.asked().last(), Some(&vec![2]));
        broker.send_replace(BrokerState::Competing);
        assert!(pending.await.unwrap().unwrap().contains_key(&2));
        ask(&cache, &cpgw, &[2]).await.unwrap();
        assert_eq!(cpgw.requests(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watchlist_asks_only_for_the_conids_nobody_has() {
        let (cache, _broker) = cache(MAX_AGE);
        let cpgw = FakeCpgw::new();
        ask(&cache, &cpgw, &[1]).await.unwrap();
        tokio::time::advance(Duration::from_millis(200)).await;
        let quotes = ask(&cache, &cpgw, &[3, 1, 2, 3]).await.unwrap();
        assert_eq!(cpgw.asked(), vec![vec![1], vec![2, 3]]);
        assert_eq!(quotes.len(), 3);
        assert_eq!(quotes[&1].age, Duration::from_millis(200));
        assert_eq!(quotes[&2].age, Duration::ZERO);

        // A watchlist overlapping a flight in progress waits for it and asks for the rest.
        let single = {
            let (cache, cpgw) = (Arc::clone(&cache), cpgw.clone());
            tokio::spawn(async move { ask(&cache, &cpgw, &[4]).await })
        };
        tokio::task::yield_now().await;
        let list = ask(&cache, &cpgw, &[4, 5]).await.unwrap();
        single.await.unwrap().unwrap();
        assert_eq!(cpgw.asked()[2..], [vec![4], vec![5]]);
        assert!(list.contains_key(&4) && list.contains_key(&5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_call_does_not_strand_the_calls_waiting_for_it() {
        let (cache, _broker) = cache(MAX_AGE);
        let cpgw = FakeCpgw::new();
        let leader = {
            let (cache, cpgw) = (Arc::clone(&cache), cpgw.clone());
            tokio::spawn(async move { ask(&cache, &cpgw, &[1]).await })
        };
        tokio::task::yield_now().await;
        let waiter = {
            let (cache, cpgw) = (Arc::clone(&cache), cpgw.clone());
            tokio::spawn(async move { ask(&cache, &cpgw, &[1]).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let quotes = waiter.await.unwrap().unwrap();
        assert!(quotes.contains_key(&1));
        assert_eq!(cpgw.requests(), 2, "the waiter asked itself");
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_conid_is_dropped_beyond_the_bound() {
        let (_broker, receiver) = watch::channel(BrokerState::Ready);
        let cache = QuoteCache::with_limit(receiver, MAX_AGE, 2);
        let cpgw = FakeCpgw::new();
        for conid in [1, 2, 3] {
            ask(&cache, &cpgw, &[conid]).await.unwrap();
        }
        assert_eq!(cache.len(), 2);
        ask(&cache, &cpgw, &[3, 2]).await.unwrap();
        assert_eq!(cpgw.requests(), 3);
        ask(&cache, &cpgw, &[1]).await.unwrap();
        assert_eq!(cpgw.requests(), 4, "the oldest was dropped");
    }
}
