//! Request pacing as IBKR documents it for the Web API (Client Portal API).
//!
//! Source: IBKR Web API documentation, "Pacing Limitations"
//! (https://www.interactivebrokers.com/campus/ibkr-api-page/webapi-doc/#pacing-limitations):
//! "a global request rate limit of 50 requests per second for each
//! authenticated username ... Users making requests via the CP Gateway tool
//! are restricted to 10 requests per second", "some endpoints are also subject
//! to their own pacing limits", "When a rate limit is exceeded, the Web API
//! will return a 429 Too Many Requests status code", "Violator IP addresses
//! may be put in a penalty box for 10 minutes. After this period, the IP
//! address is removed from the penalty box."
//!
//! Stricter choices where the source is unclear (see docs/cpgw-simulator.md):
//! every violation puts the client in the penalty box (the docs say "may");
//! the box lasts 15 minutes (the docs say 10; client projects report 15 after
//! IBKR's 2026 documentation move); the box blocks every endpoint, since the
//! docs block the IP address; `/iserver/marketdata/history` gets the newer
//! "10 req/s or 50 req/min" figures, which are tighter than "5 concurrent
//! requests" for a simulator that answers at once.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::scenario::SimScenario;

/// At most `count` requests in any `window_ms` milliseconds.
#[derive(Clone, Copy, Debug)]
struct Limit {
    count: usize,
    window_ms: i64,
}

const PER_SECOND_10: Limit = Limit {
    count: 10,
    window_ms: 1_000,
};
const ONE_PER_5_SECONDS: Limit = Limit {
    count: 1,
    window_ms: 5_000,
};
const ONE_PER_SECOND: Limit = Limit {
    count: 1,
    window_ms: 1_000,
};
const PER_MINUTE_50: Limit = Limit {
    count: 50,
    window_ms: 60_000,
};

/// The per-endpoint table of the IBKR page, for the endpoints the simulator
/// serves. The page names `/iserver/orders` and `/iserver/trades`; the
/// endpoints behind those names are `/iserver/account/orders` and
/// `/iserver/account/trades` (the page has no other orders or trades GET).
/// `/tickle` is listed as GET; CPGW also accepts POST, paced alike.
fn endpoint_limits(method: &str, path: &str) -> Option<(&'static str, &'static [Limit])> {
    const SNAPSHOT: &[Limit] = &[PER_SECOND_10];
    const ORDERS: &[Limit] = &[ONE_PER_5_SECONDS];
    const TICKLE: &[Limit] = &[ONE_PER_SECOND];
    const HISTORY: &[Limit] = &[PER_SECOND_10, PER_MINUTE_50];
    match (method, path) {
        ("GET", "/iserver/marketdata/snapshot") => {
            Some(("GET /iserver/marketdata/snapshot", SNAPSHOT))
        }
        ("GET", "/iserver/account/orders") => Some(("GET /iserver/account/orders", ORDERS)),
        ("GET", "/iserver/account/trades") => Some(("GET /iserver/account/trades", ORDERS)),
        ("GET", "/portfolio/accounts") => Some(("GET /portfolio/accounts", ORDERS)),
        ("GET" | "POST", "/tickle") => Some(("/tickle", TICKLE)),
        ("GET", "/iserver/marketdata/history") => {
            Some(("GET /iserver/marketdata/history", HISTORY))
        }
        _ => None,
    }
}

/// Why a request was refused with 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The global per-gateway rate was exceeded.
    Global,
    /// The endpoint's own rate was exceeded.
    Endpoint,
    /// The client sits in the penalty box.
    PenaltyBox,
}

/// What pacing did so far, for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacingReport {
    /// 429 answers per endpoint (`"GET /iserver/account/orders"`, or method
    /// and raw path for endpoints without a limit of their own).
    pub rejected: BTreeMap<String, u64>,
    /// Every 429 answered.
    pub rejected_total: u64,
    /// How often the client was put in the penalty box.
    pub penalty_boxes: u64,
    /// Epoch milliseconds at which the current penalty box ends, if any.
    pub penalty_until_ms: Option<i64>,
    /// The first request refused for its rate (not for the penalty box): which limit, which
    /// endpoint, how many requests the gateway had admitted in the second before, and when
    /// (epoch milliseconds). What put the client in the box.
    pub first_refusal: Option<String>,
}

impl PacingReport {
    /// 429 answers for one endpoint key.
    pub fn rejected_for(&self, endpoint: &str) -> u64 {
        self.rejected.get(endpoint).copied().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Pacer {
    global: VecDeque<i64>,
    endpoints: HashMap<&'static str, VecDeque<i64>>,
    violations: u32,
    pub(crate) report: PacingReport,
}

fn prune(window: &mut VecDeque<i64>, now_ms: i64, window_ms: i64) {
    while window.front().is_some_and(|at| *at <= now_ms - window_ms) {
        window.pop_front();
    }
}

fn full(window: &VecDeque<i64>, limit: Limit, now_ms: i64) -> bool {
    window
        .iter()
        .filter(|at| **at > now_ms - limit.window_ms)
        .count()
        >= limit.count
}

impl Pacer {
    /// Admits or refuses one `/v1/api` request (`path` without the prefix).
    /// Admitted requests count against the windows; refused ones do not.
    pub(crate) fn admit(
        &mut self,
        method: &str,
        path: &str,
        now_ms: i64,
        scenario: &SimScenario,
    ) -> Result<(), Refusal> {
        if !scenario.pacing {
            return Ok(());
        }
        let endpoint = endpoint_limits(method, path);
        let key = endpoint.map_or_else(|| format!("{method} {path}"), |(key, _)| key.to_owned());
        if let Some(until) = self.report.penalty_until_ms {
            if now_ms < until {
                self.count_rejection(key);
                return Err(Refusal::PenaltyBox);
            }
            self.report.penalty_until_ms = None;
        }
        prune(&mut self.global, now_ms, 1_000);
        let global_limit = Limit {
            count: usize::try_from(scenario.gateway_requests_per_second).unwrap_or(usize::MAX),
            window_ms: 1_000,
        };
        let refusal = if full(&self.global, global_limit, now_ms) {
            Some(Refusal::Global)
        } else if let Some((name, limits)) = endpoint {
            let window = self.endpoints.entry(name).or_default();
            let longest = limits.iter().map(|l| l.window_ms).max().unwrap_or(1_000);
            prune(window, now_ms, longest);
            limits
                .iter()
                .any(|limit| full(window, *limit, now_ms))
                .then_some(Refusal::Endpoint)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if self.report.first_refusal.is_none() {
                self.report.first_refusal = Some(format!(
                    "{refusal:?} limit on {key}: {} requests admitted in the second before, at {now_ms} ms",
                    self.global.len()
                ));
            }
            self.count_rejection(key);
            self.violations += 1;
            if self.violations >= scenario.penalty_box_after_violations.max(1) {
                self.violations = 0;
                self.report.penalty_boxes += 1;
                self.report.penalty_until_ms =
                    Some(now_ms.saturating_add(super::clock::millis(scenario.penalty_box)));
            }
            return Err(refusal);
        }
        self.global.push_back(now_ms);
        if let Some((name, _)) = endpoint {
            self.endpoints.entry(name).or_default().push_back(now_ms);
        }
        Ok(())
    }

    fn count_rejection(&mut self, key: String) {
        *self.report.rejected.entry(key).or_default() += 1;
        self.report.rejected_total += 1;
    }
}
