//! Client-side pacing of every request to CPGW, so the sidecar never trips IBKR's limits.
//!
//! IBKR's Web API documentation ("Pacing Limitations") allows 10 requests per second through
//! the Client Portal Gateway and less on some endpoints (`/iserver/account/orders` and
//! `/iserver/account/trades` one per 5 s, `/portfolio/accounts` one per 5 s, `/tickle` one per
//! second, market-data history 50 per minute), and answers a burst with 429 and possibly a
//! *penalty box*: every endpoint refused for 10 to 15 minutes. A penalty box would also block
//! the exits and cancels that protect a position, so the sidecar paces itself with margins:
//!
//! - every limit is a sliding window (stricter than fixed buckets), measured on the sidecar's
//!   monotonic clock, with room for requests that bunch up on their way to CPGW;
//! - IBKR counts a request when CPGW gets it, which can be long after it was sent (a stalled
//!   CPGW, a slow laptop): an endpoint with a limit of its own counts each request from when
//!   its exchange ended ([`Pacer::finished`]), the latest moment CPGW can have acted on it, so
//!   the next one keeps its distance however late the last one arrived;
//! - [`Lane::Read`] requests may use at most [`READ_SHARE`] of the global window, so
//!   [`Lane::Trading`] requests (orders, confirmations, cancels, the status of our orders)
//!   always find room: reads cannot starve an exit;
//! - on an endpoint with a limit of its own (the orders list: one request per 6 s), a read
//!   never takes the slot a trading request is waiting for: while one waits, reads of that
//!   endpoint stand back. Without it, a burst of agents listing orders took the slot each time
//!   it came free and an exit that needed the list waited past its deadline;
//! - a 429 is never retried: the pacer stops every request until [`PENALTY_BACKOFF`] has passed
//!   (or CPGW's `Retry-After`, if longer), and they fail at once meanwhile;
//! - a new pacer (a restarted daemon, a CLI command) starts as if each slow endpoint had just
//!   been called: IBKR counts requests per client, not per process, and the previous process
//!   may have called them a moment ago. The daemon's pacer also starts as if the whole budget
//!   of the last second had just been used, for the same reason: a daemon restarted while
//!   agents are calling would otherwise send its own budget in the second its predecessor
//!   used up, twice [`GLOBAL_PER_SECOND`] in one second, past IBKR's 10 (seen in the soak:
//!   a 429 a few hundred milliseconds after a restart, then the penalty box). So its first
//!   request waits for that second to pass.
//!
//! - a command that runs beside the daemon (`sidecar doctor`, `relay accept --probe-broker`)
//!   gets [`Pacer::beside_daemon`]: at most [`BESIDE_DAEMON_PER_SECOND`] requests a second (the
//!   daemon's [`GLOBAL_PER_SECOND`] plus this stay under IBKR's 10), and none at all to the
//!   endpoints IBKR paces per endpoint: two processes cannot share one such window without
//!   coordinating, and a collision costs the penalty box. Those stay the daemon's.
//!
//! The pacer makes a request wait for its turn; callers bound the wait (a tool's deadline).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Requests in any one second through CPGW. IBKR allows 10; the margin absorbs requests that
/// bunch up on their way (CPGW is one Java process on a busy laptop: requests sent a few
/// hundred milliseconds apart can reach it together) and what the browser session itself sends.
pub const GLOBAL_PER_SECOND: usize = 6;
/// How long a read of a per-endpoint paced endpoint stands back, before it looks again, while
/// a trading request waits for that endpoint.
const READ_STANDS_BACK: Duration = Duration::from_millis(50);
/// How much of [`GLOBAL_PER_SECOND`] reads may take; the rest is always free for trading.
pub const READ_SHARE: usize = 4;
/// Requests in any one second from a command running beside the daemon.
pub const BESIDE_DAEMON_PER_SECOND: usize = 2;
// With the daemon's whole budget, still under IBKR's 10 a second.
const _: () = assert!(GLOBAL_PER_SECOND + BESIDE_DAEMON_PER_SECOND < 10);
/// After a 429, how long every request is held back (IBKR's penalty box: 10 to 15 minutes).
pub const PENALTY_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// Which budget a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Market data, portfolio, lists: may wait, may be served from a short cache.
    Read,
    /// Placing, confirming and cancelling orders, and the status of orders we placed.
    Trading,
}

/// The endpoints IBKR paces below the global rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /iserver/account/orders`.
    OrdersList,
    /// `GET /iserver/account/trades`.
    Trades,
    /// `GET /portfolio/accounts`.
    PortfolioAccounts,
    /// `POST /tickle`.
    Tickle,
    /// `GET /iserver/marketdata/history`.
    History,
    /// Everything else: the global rate only.
    Other,
}

impl Endpoint {
    /// The endpoints with limits of their own (every one but [`Endpoint::Other`]).
    pub const PACED_ONE_BY_ONE: [Endpoint; 5] = [
        Endpoint::OrdersList,
        Endpoint::Trades,
        Endpoint::PortfolioAccounts,
        Endpoint::Tickle,
        Endpoint::History,
    ];

    /// Classifies a request path (relative to `/v1/api`, query string included).
    pub fn of_path(path: &str) -> Endpoint {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/iserver/account/orders" => Endpoint::OrdersList,
            "/iserver/account/trades" => Endpoint::Trades,
            "/portfolio/accounts" => Endpoint::PortfolioAccounts,
            "/tickle" => Endpoint::Tickle,
            "/iserver/marketdata/history" => Endpoint::History,
            _ => Endpoint::Other,
        }
    }

    /// `(window, most requests in it)` for this endpoint, beyond the global rate.
    fn limits(self) -> &'static [(Duration, usize)] {
        // IBKR's figure, made stricter: 1 per 5 s -> 1 per 6 s; 1/s -> 1 per 1.5 s;
        // 50/min -> 40/min.
        const SLOW_LIST: &[(Duration, usize)] = &[(Duration::from_secs(6), 1)];
        const TICKLE: &[(Duration, usize)] = &[(Duration::from_millis(1500), 1)];
        const HISTORY: &[(Duration, usize)] = &[(Duration::from_secs(60), 40)];
        match self {
            Endpoint::OrdersList | Endpoint::Trades | Endpoint::PortfolioAccounts => SLOW_LIST,
            Endpoint::Tickle => TICKLE,
            Endpoint::History => HISTORY,
            Endpoint::Other => &[],
        }
    }

    /// The shortest gap between two requests of this endpoint (for caches that stand in for
    /// a request the pacer would make wait).
    pub fn min_gap(self) -> Duration {
        self.limits()
            .iter()
            .map(|(window, count)| *window / u32::try_from(*count).unwrap_or(1).max(1))
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// Why a request may not be sent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paced {
    /// CPGW answered 429 recently: nothing is sent before `until`.
    Backoff { until: Instant },
    /// This pacer runs beside the daemon and leaves the per-endpoint paced endpoints to it.
    Reserved,
}

/// One sliding window: the send times of the last requests it counts.
#[derive(Debug)]
struct Window {
    period: Duration,
    sent: VecDeque<Instant>,
}

impl Window {
    fn new(period: Duration) -> Window {
        Window {
            period,
            sent: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|sent| now.duration_since(*sent) >= self.period)
        {
            self.sent.pop_front();
        }
    }

    /// When a request may go out if at most `max` may be in the window: now, or when the
    /// oldest request that keeps the window full leaves it.
    fn ready_at(&self, now: Instant, max: usize) -> Instant {
        if self.sent.len() < max {
            return now;
        }
        let blocking = self.sent[self.sent.len() - max];
        (blocking + self.period).max(now)
    }
}

#[derive(Debug)]
struct State {
    global: Window,
    endpoints: Vec<(Endpoint, Window, usize)>,
    backoff_until: Option<Instant>,
    /// 429s seen since start (reported by `ibkr_health`).
    rate_limited: u64,
    /// Whole budget per second (`Lane::Trading`) and the reads' share of it.
    global_max: usize,
    read_max: usize,
    /// Beside the daemon: the per-endpoint paced endpoints are refused.
    reserve_slow: bool,
    /// Trading requests waiting now for each per-endpoint paced endpoint.
    trading_waiting: Vec<(Endpoint, usize)>,
}

impl State {
    fn trading_waiting(&mut self, endpoint: Endpoint) -> &mut usize {
        let at = match self
            .trading_waiting
            .iter()
            .position(|(which, _)| *which == endpoint)
        {
            Some(at) => at,
            None => {
                self.trading_waiting.push((endpoint, 0));
                self.trading_waiting.len() - 1
            }
        };
        &mut self.trading_waiting[at].1
    }
}

/// Counts a trading request as waiting for its endpoint while it exists.
struct TradingWaiter<'a> {
    pacer: &'a Pacer,
    endpoint: Endpoint,
}

impl Drop for TradingWaiter<'_> {
    fn drop(&mut self) {
        let mut state = self.pacer.lock();
        let waiting = state.trading_waiting(self.endpoint);
        *waiting = waiting.saturating_sub(1);
    }
}

/// The pacer of one CPGW client (shared by its clones).
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new()
    }
}

impl Pacer {
    pub fn new() -> Pacer {
        let mut endpoints = Vec::new();
        let now = Instant::now();
        for endpoint in Endpoint::PACED_ONE_BY_ONE {
            for (period, max) in endpoint.limits() {
                let mut window = Window::new(*period);
                if *max == 1 {
                    // Another process of this laptop may have just called it.
                    window.sent.push_back(now);
                }
                endpoints.push((endpoint, window, *max));
            }
        }
        // The daemon this one replaces may have used the whole budget of the second that just
        // ended (see the module docs).
        let mut global = Window::new(Duration::from_secs(1));
        global
            .sent
            .extend(std::iter::repeat_n(now, GLOBAL_PER_SECOND));
        Pacer {
            state: Mutex::new(State {
                global,
                endpoints,
                backoff_until: None,
                rate_limited: 0,
                global_max: GLOBAL_PER_SECOND,
                read_max: READ_SHARE,
                reserve_slow: false,
                trading_waiting: Vec::new(),
            }),
        }
    }

    /// The pacer of a command that may run while the daemon does (see the module docs).
    pub fn beside_daemon() -> Pacer {
        let pacer = Pacer::new();
        {
            let mut state = pacer.lock();
            state.global_max = BESIDE_DAEMON_PER_SECOND;
            state.read_max = BESIDE_DAEMON_PER_SECOND;
            state.reserve_slow = true;
            // Its budget is sized to share every second with a daemon's whole budget, so it
            // has no second to leave to a predecessor.
            state.global.sent.clear();
        }
        pacer
    }

    /// Whether this pacer leaves the per-endpoint paced endpoints to the daemon.
    pub fn reserves_slow_endpoints(&self) -> bool {
        self.lock().reserve_slow
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters and queues: still consistent after a panic elsewhere.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a slot now, or says when to ask again (`Ok(Some(at))`).
    fn try_take(
        &self,
        endpoint: Endpoint,
        lane: Lane,
        now: Instant,
    ) -> Result<Option<Instant>, Paced> {
        let mut state = self.lock();
        if let Some(until) = state.backoff_until {
            if now < until {
                return Err(Paced::Backoff { until });
            }
            state.backoff_until = None;
        }
        if state.reserve_slow && endpoint != Endpoint::Other {
            return Err(Paced::Reserved);
        }
        let global_max = match lane {
            Lane::Read => state.read_max,
            Lane::Trading => state.global_max,
        };
        if lane == Lane::Read && endpoint != Endpoint::Other && *state.trading_waiting(endpoint) > 0
        {
            return Ok(Some(now + READ_STANDS_BACK));
        }
        state.global.prune(now);
        let mut ready = state.global.ready_at(now, global_max);
        for (which, window, max) in &mut state.endpoints {
            if *which == endpoint {
                window.prune(now);
                ready = ready.max(window.ready_at(now, *max));
            }
        }
        if ready > now {
            return Ok(Some(ready));
        }
        state.global.sent.push_back(now);
        for (which, window, _) in &mut state.endpoints {
            if *which == endpoint {
                window.sent.push_back(now);
            }
        }
        Ok(None)
    }

    /// Waits for this request's turn. Fails at once while backing off from a 429.
    pub async fn acquire(&self, endpoint: Endpoint, lane: Lane) -> Result<(), Paced> {
        self.acquire_slot(endpoint, lane).await.map(|_| ())
    }

    /// [`Pacer::acquire`], returning when the slot was taken, for [`Pacer::finished`].
    pub async fn acquire_slot(&self, endpoint: Endpoint, lane: Lane) -> Result<Instant, Paced> {
        let _waiter = (lane == Lane::Trading && endpoint != Endpoint::Other).then(|| {
            *self.lock().trading_waiting(endpoint) += 1;
            TradingWaiter {
                pacer: self,
                endpoint,
            }
        });
        loop {
            let now = Instant::now();
            match self.try_take(endpoint, lane, now)? {
                None => return Ok(now),
                Some(at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    /// The exchange of a request sent at `sent_at` (from [`Pacer::acquire_slot`]) ended at
    /// `now`, answered or not. For an endpoint with a limit of its own, the request now counts
    /// from `now`: CPGW may have received it any time before (a request held up on its way
    /// arrives late, and the next one sent on time would reach IBKR right behind it).
    pub fn finished(&self, endpoint: Endpoint, sent_at: Instant, now: Instant) {
        if endpoint == Endpoint::Other || now <= sent_at {
            return;
        }
        let mut state = self.lock();
        for (which, window, _) in &mut state.endpoints {
            if *which == endpoint
                && let Some(position) = window.sent.iter().position(|sent| *sent == sent_at)
            {
                window.sent.remove(position);
                // Every entry was taken at or before `now`: the queue stays in order.
                window.sent.push_back(now);
            }
        }
    }

    /// Whether a request of `endpoint` would go out at once (for callers that prefer a short
    /// cache to waiting).
    pub fn would_wait(&self, endpoint: Endpoint) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        for (which, window, max) in &mut state.endpoints {
            if *which == endpoint {
                window.prune(now);
                if window.ready_at(now, *max) > now {
                    return true;
                }
            }
        }
        false
    }

    /// CPGW answered 429: hold every request back for `retry_after` (at least
    /// [`PENALTY_BACKOFF`]).
    pub fn rate_limited(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        let backoff = retry_after.unwrap_or(PENALTY_BACKOFF).max(PENALTY_BACKOFF);
        let mut state = self.lock();
        state.rate_limited = state.rate_limited.saturating_add(1);
        let until = now + backoff;
        state.backoff_until = Some(state.backoff_until.map_or(until, |old| old.max(until)));
        tracing::error!(
            backoff_seconds = backoff.as_secs(),
            "the Client Portal Gateway answered 429 (too many requests): every request to it is held back"
        );
    }

    /// When the current backoff ends, if one is running.
    pub fn backoff_until(&self) -> Option<Instant> {
        let now = Instant::now();
        self.lock().backoff_until.filter(|until| *until > now)
    }

    /// 429s seen since start.
    pub fn rate_limited_count(&self) -> u64 {
        self.lock().rate_limited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `count` requests as fast as the pacer allows and returns their send times,
    /// relative to the start.
    async fn send_all(
        pacer: &Pacer,
        endpoint: Endpoint,
        lane: Lane,
        count: usize,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..count {
            pacer.acquire(endpoint, lane).await.unwrap();
            times.push(start.elapsed());
        }
        times
    }

    /// The most requests in any window of `period` among `times`.
    fn busiest(times: &[Duration], period: Duration) -> usize {
        times
            .iter()
            .map(|start| {
                times
                    .iter()
                    .filter(|t| **t >= *start && **t < *start + period)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Reads of the orders list queued before an exit that needs it do not take the slot
    /// from it: when the window frees, the trading request goes first, however many reads
    /// waited longer.
    #[tokio::test(start_paused = true)]
    async fn a_trading_request_takes_a_per_endpoint_slot_before_the_reads_waiting_for_it() {
        let pacer = std::sync::Arc::new(settled_pacer().await);
        tokio::time::advance(Endpoint::OrdersList.min_gap()).await;
        // The slot is used; three reads start waiting for the next one.
        pacer
            .acquire(Endpoint::OrdersList, Lane::Read)
            .await
            .unwrap();
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in ["read 1", "read 2", "read 3"] {
            let pacer = std::sync::Arc::clone(&pacer);
            let order = std::sync::Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                pacer
                    .acquire(Endpoint::OrdersList, Lane::Read)
                    .await
                    .unwrap();
                order.lock().unwrap().push((name, Instant::now()));
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let trading = {
            let pacer = std::sync::Arc::clone(&pacer);
            let order = std::sync::Arc::clone(&order);
            tokio::spawn(async move {
                pacer
                    .acquire(Endpoint::OrdersList, Lane::Trading)
                    .await
                    .unwrap();
                order.lock().unwrap().push(("exit", Instant::now()));
            })
        };
        trading.await.unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order[0].0, "exit", "{order:?}");
        // And the window still holds: one request per period.
        for pair in order.windows(2) {
            assert!(
                pair[1].1 - pair[0].1 >= Endpoint::OrdersList.min_gap(),
                "{order:?}"
            );
        }
    }

    /// A daemon's pacer past the second it leaves to the daemon before it.
    async fn settled_pacer() -> Pacer {
        let pacer = Pacer::new();
        tokio::time::advance(Duration::from_secs(1)).await;
        pacer
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_daemon_and_the_one_before_it_share_every_sliding_second() {
        let origin = Instant::now();
        let mut times = Vec::new();
        for _ in 0..2 {
            // Each daemon sends as much as it may, then the next one starts at once.
            let pacer = Pacer::new();
            for lane in [Lane::Trading, Lane::Read] {
                for _ in 0..GLOBAL_PER_SECOND {
                    pacer.acquire(Endpoint::Other, lane).await.unwrap();
                    times.push(origin.elapsed());
                }
            }
        }
        assert_eq!(busiest(&times, Duration::from_secs(1)), GLOBAL_PER_SECOND);
        // A command beside the daemon shares the daemon's seconds by design: no wait.
        let beside = Pacer::beside_daemon();
        let start = Instant::now();
        beside.acquire(Endpoint::Other, Lane::Read).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_stay_under_their_share_of_every_sliding_second() {
        let pacer = settled_pacer().await;
        let times = send_all(&pacer, Endpoint::Other, Lane::Read, 40).await;
        assert_eq!(busiest(&times, Duration::from_secs(1)), READ_SHARE);
        // Paced, not stalled: 40 reads in a little under 10 seconds.
        assert!(times[39] < Duration::from_secs(10), "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_beside_the_daemon_stays_small_and_leaves_slow_endpoints_alone() {
        let pacer = Pacer::beside_daemon();
        assert!(pacer.reserves_slow_endpoints());
        assert!(!Pacer::new().reserves_slow_endpoints());
        for lane in [Lane::Read, Lane::Trading] {
            let times = send_all(&pacer, Endpoint::Other, lane, 12).await;
            assert_eq!(
                busiest(&times, Duration::from_secs(1)),
                BESIDE_DAEMON_PER_SECOND
            );
        }
        for endpoint in Endpoint::PACED_ONE_BY_ONE {
            assert!(matches!(
                pacer.acquire(endpoint, Lane::Trading).await,
                Err(Paced::Reserved)
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_endpoints_keep_their_own_spacing() {
        let pacer = Pacer::new();
        let orders = send_all(&pacer, Endpoint::OrdersList, Lane::Read, 4).await;
        assert!(
            orders
                .windows(2)
                .all(|w| w[1] - w[0] >= Duration::from_secs(6))
        );
        let tickles = send_all(&pacer, Endpoint::Tickle, Lane::Read, 3).await;
        assert!(
            tickles
                .windows(2)
                .all(|w| w[1] - w[0] >= Duration::from_millis(1500))
        );
        assert_eq!(Endpoint::OrdersList.min_gap(), Duration::from_secs(6));
        assert_eq!(
            Endpoint::of_path("/iserver/account/orders?accountId=DU1&force=true"),
            Endpoint::OrdersList
        );
        assert_eq!(
            Endpoint::of_path("/iserver/account/DU1/orders"),
            Endpoint::Other
        );
    }

    /// A tickle that took a second to be answered may have reached CPGW only then: the next
    /// one keeps IBKR's distance from its answer, not from when it was sent.
    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_counts_a_request_from_when_its_exchange_ended() {
        let pacer = Pacer::new();
        // A new pacer starts as if each slow endpoint had just been called.
        tokio::time::advance(Duration::from_secs(2)).await;
        let sent_at = pacer
            .acquire_slot(Endpoint::Tickle, Lane::Read)
            .await
            .unwrap();
        assert_eq!(sent_at, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        let answered = Instant::now();
        pacer.finished(Endpoint::Tickle, sent_at, answered);
        pacer.acquire(Endpoint::Tickle, Lane::Read).await.unwrap();
        assert_eq!(
            Instant::now() - answered,
            Duration::from_millis(1500),
            "the next tickle waits from the answer"
        );
        // Endpoints without a limit of their own are not held back by it.
        let before = Instant::now();
        let other = pacer
            .acquire_slot(Endpoint::Other, Lane::Read)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        pacer.finished(Endpoint::Other, other, Instant::now());
        pacer.acquire(Endpoint::Other, Lane::Read).await.unwrap();
        assert_eq!(Instant::now() - before, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn reads_cannot_starve_trading() {
        let pacer = std::sync::Arc::new(settled_pacer().await);
        // A flood of readers keeps the read share full.
        for _ in 0..4 {
            let pacer = pacer.clone();
            tokio::spawn(async move {
                loop {
                    pacer.acquire(Endpoint::Other, Lane::Read).await.unwrap();
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = Instant::now();
        for _ in 0..2 {
            pacer.acquire(Endpoint::Other, Lane::Trading).await.unwrap();
        }
        // Two trading requests go out at once, whatever the readers do.
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_every_request_back_and_is_never_retried() {
        let pacer = Pacer::new();
        pacer.rate_limited(None);
        let Err(Paced::Backoff { until }) = pacer.acquire(Endpoint::Other, Lane::Trading).await
        else {
            panic!("a request went out during the backoff");
        };
        assert_eq!(until - Instant::now(), PENALTY_BACKOFF);
        assert_eq!(pacer.rate_limited_count(), 1);
        tokio::time::advance(PENALTY_BACKOFF).await;
        assert!(pacer.acquire(Endpoint::Other, Lane::Read).await.is_ok());
        // A longer Retry-After wins.
        pacer.rate_limited(Some(Duration::from_secs(3600)));
        assert_eq!(
            pacer.backoff_until().map(|until| until - Instant::now()),
            Some(Duration::from_secs(3600))
        );
    }
}
