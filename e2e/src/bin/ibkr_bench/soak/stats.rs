//! What the soak's agents saw, call by call, gathered per interval of the run.

use super::tracker::Tracker;
use crate::Memory;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Kept of each kind of failure, for the report.
const MAX_DETAILS: usize = 20;

/// What a call was, for latency: calls of different kinds take very different times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// `ibkr_order_status` to a relay peer (answered within 10 ms there).
    PeerQuick,
    /// `ibkr_wait_for_fill` to a relay peer (held 1 to 3 s there, with progress).
    PeerSlow,
    /// `ibkr_accounts_list` to a real laptop (CPGW paced to 4 reads a second).
    LaptopRead,
    /// `ibkr_buy` to a real laptop.
    LaptopOrder,
}

impl Class {
    pub(super) const ALL: [Class; 4] = [
        Class::PeerQuick,
        Class::PeerSlow,
        Class::LaptopRead,
        Class::LaptopOrder,
    ];

    pub(super) fn index(self) -> usize {
        match self {
            Class::PeerQuick => 0,
            Class::PeerSlow => 1,
            Class::LaptopRead => 2,
            Class::LaptopOrder => 3,
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Class::PeerQuick => "relay peer, ibkr_order_status",
            Class::PeerSlow => "relay peer, ibkr_wait_for_fill",
            Class::LaptopRead => "laptop, ibkr_accounts_list",
            Class::LaptopOrder => "laptop, ibkr_buy",
        }
    }
}

/// How one call ended.
#[derive(Clone, Debug)]
pub(super) enum Ending {
    /// A result (`error` None) or a tool error with its code, for this caller.
    Answered { error: Option<String> },
    /// An answer that is not this caller's (another user's, another call's, another tool's).
    Misrouted(String),
    /// The agent cancelled it before an answer came.
    Cancelled,
    /// No answer (neither result nor error) within the deadline.
    Lost,
    /// The MCP client itself failed (HTTP, transport): no JSON-RPC answer.
    Transport(String),
}

/// Totals over the whole load.
#[derive(Clone, Debug, Default)]
pub(super) struct Totals {
    pub calls: u64,
    pub results: u64,
    pub tool_errors: u64,
    pub misrouted: u64,
    pub cancelled: u64,
    pub lost: u64,
    pub transport: u64,
    /// Progress notifications carrying one of the receiving agent's own nonces, or another's.
    pub progress_own: u64,
    pub progress_foreign: u64,
    pub client_connects: u64,
    pub client_connect_failures: u64,
    pub by_class: [u64; 4],
}

#[derive(Clone, Debug, Default)]
pub(super) struct Bucket {
    /// Latencies of answered (not cancelled) calls that ended in this interval, per class.
    pub latencies: [Vec<Duration>; 4],
    pub calls: u64,
    pub tool_errors: u64,
    pub cancelled: u64,
    pub lost: u64,
    pub misrouted: u64,
    pub transport: u64,
    /// The gateway's memory at the end of the interval.
    pub gateway: Option<Memory>,
    /// Sidecars with a registered session at the end of the interval.
    pub sessions: Option<usize>,
    /// Session reconnects and daemon restarts commanded in the interval.
    pub disturbances: u64,
}

/// An error answer, judged at the end against the disturbances of its user's session.
#[derive(Clone, Debug)]
struct ErrorCall {
    user: String,
    code: String,
    class: Class,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct Inner {
    buckets: Vec<Bucket>,
    totals: Totals,
    errors: Vec<ErrorCall>,
    misrouted: Vec<String>,
    lost: Vec<String>,
    transport: Vec<String>,
}

pub(super) struct Stats {
    inner: Mutex<Inner>,
    pub load_start: Instant,
    pub interval: Duration,
}

/// The error answers, judged.
#[derive(Clone, Debug, Default)]
pub(super) struct ErrorSummary {
    /// (code, class label) -> (explained, unexplained).
    pub by_code: BTreeMap<(String, &'static str), (u64, u64)>,
    pub explained: u64,
    pub unexplained: u64,
    pub unexplained_details: Vec<String>,
}

/// Everything gathered, for the report.
#[derive(Clone, Debug, Default)]
pub(super) struct Gathered {
    pub buckets: Vec<Bucket>,
    pub totals: Totals,
    pub errors: ErrorSummary,
    pub misrouted: Vec<String>,
    pub lost: Vec<String>,
    pub transport: Vec<String>,
    /// Latencies over the measured period (after warm-up), per class.
    pub measured: [Vec<Duration>; 4],
}

fn note(list: &mut Vec<String>, detail: String) {
    if list.len() < MAX_DETAILS {
        list.push(detail);
    }
}

impl Stats {
    pub(super) fn new(load_start: Instant, interval: Duration) -> Self {
        Stats {
            inner: Mutex::new(Inner::default()),
            load_start,
            interval,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, at: Instant) -> usize {
        let since = at.saturating_duration_since(self.load_start);
        usize::try_from(since.as_nanos() / self.interval.as_nanos().max(1)).unwrap_or(usize::MAX)
    }

    fn bucket(inner: &mut Inner, slot: usize) -> &mut Bucket {
        if inner.buckets.len() <= slot {
            inner.buckets.resize_with(slot + 1, Bucket::default);
        }
        &mut inner.buckets[slot]
    }

    /// Records one call of `agent` (for `user`) that ran from `start` to `end`.
    pub(super) fn record(
        &self,
        agent: usize,
        user: &str,
        class: Class,
        start: Instant,
        end: Instant,
        ending: Ending,
    ) {
        let slot = self.slot(end);
        let mut inner = self.inner();
        let inner = &mut *inner;
        inner.totals.calls += 1;
        inner.totals.by_class[class.index()] += 1;
        let at = end.saturating_duration_since(self.load_start).as_secs_f64();
        let what = format!(
            "agent {agent} ({user}), {}, ended at {at:.1} s",
            class.label()
        );
        match ending {
            Ending::Answered { error } => {
                let bucket = Self::bucket(inner, slot);
                bucket.calls += 1;
                bucket.latencies[class.index()].push(end.saturating_duration_since(start));
                match error {
                    None => inner.totals.results += 1,
                    Some(code) => {
                        bucket.tool_errors += 1;
                        inner.totals.tool_errors += 1;
                        inner.errors.push(ErrorCall {
                            user: user.to_string(),
                            code,
                            class,
                            start,
                            end,
                        });
                    }
                }
            }
            Ending::Misrouted(detail) => {
                Self::bucket(inner, slot).misrouted += 1;
                inner.totals.misrouted += 1;
                note(&mut inner.misrouted, format!("{what}: {detail}"));
            }
            Ending::Cancelled => {
                Self::bucket(inner, slot).cancelled += 1;
                inner.totals.cancelled += 1;
            }
            Ending::Lost => {
                Self::bucket(inner, slot).lost += 1;
                inner.totals.lost += 1;
                note(&mut inner.lost, what);
            }
            Ending::Transport(error) => {
                Self::bucket(inner, slot).transport += 1;
                inner.totals.transport += 1;
                note(&mut inner.transport, format!("{what}: {error}"));
            }
        }
    }

    pub(super) fn progress(&self, own: bool) {
        let mut inner = self.inner();
        if own {
            inner.totals.progress_own += 1;
        } else {
            inner.totals.progress_foreign += 1;
        }
    }

    pub(super) fn client_connect(&self, ok: bool) {
        let mut inner = self.inner();
        if ok {
            inner.totals.client_connects += 1;
        } else {
            inner.totals.client_connect_failures += 1;
        }
    }

    pub(super) fn disturbance(&self, at: Instant) {
        let slot = self.slot(at);
        let mut inner = self.inner();
        Self::bucket(&mut inner, slot).disturbances += 1;
    }

    /// The gateway's memory and registered sessions at the end of interval `slot`.
    pub(super) fn sample(&self, slot: usize, memory: Memory, sessions: usize) {
        let mut inner = self.inner();
        let bucket = Self::bucket(&mut inner, slot);
        bucket.gateway = Some(memory);
        bucket.sessions = Some(sessions);
    }

    /// Calls so far (for progress lines).
    pub(super) fn totals(&self) -> Totals {
        self.inner().totals.clone()
    }

    /// Everything, with each error answer judged against `tracker`'s disturbances;
    /// `measured_from` is the first interval after the warm-up.
    pub(super) fn gather(&self, tracker: &Tracker, measured_from: usize) -> Gathered {
        let inner = self.inner();
        let mut errors = ErrorSummary::default();
        for call in &inner.errors {
            let explained = tracker.explains(&call.user, call.start, call.end);
            let entry = errors
                .by_code
                .entry((call.code.clone(), call.class.label()))
                .or_default();
            if explained {
                entry.0 += 1;
                errors.explained += 1;
            } else {
                entry.1 += 1;
                errors.unexplained += 1;
                let at = call.end.saturating_duration_since(self.load_start);
                note(
                    &mut errors.unexplained_details,
                    format!(
                        "{} for {} ({}) at {:.1} s after {:.0} ms",
                        call.code,
                        call.user,
                        call.class.label(),
                        at.as_secs_f64(),
                        call.end.saturating_duration_since(call.start).as_secs_f64() * 1000.0
                    ),
                );
            }
        }
        let mut measured: [Vec<Duration>; 4] = Default::default();
        for bucket in inner.buckets.iter().skip(measured_from) {
            for class in Class::ALL {
                measured[class.index()].extend_from_slice(&bucket.latencies[class.index()]);
            }
        }
        for samples in &mut measured {
            samples.sort_unstable();
        }
        let mut buckets = inner.buckets.clone();
        for bucket in &mut buckets {
            for samples in &mut bucket.latencies {
                samples.sort_unstable();
            }
        }
        Gathered {
            buckets,
            totals: inner.totals.clone(),
            errors,
            misrouted: inner.misrouted.clone(),
            lost: inner.lost.clone(),
            transport: inner.transport.clone(),
            measured,
        }
    }
}

/// Nearest-rank percentile of sorted samples.
pub(super) fn percentile(sorted: &[Duration], percent: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * percent)
        .div_ceil(100)
        .clamp(1, sorted.len());
    Some(sorted[rank - 1])
}
