//! Prometheus metrics, kept by hand (a few counters and one histogram family do not justify
//! a metrics framework) and rendered in the text exposition format at `GET /metrics`.
//!
//! Label values are bounded by construction: tools are catalog names (or `unknown`), outcomes
//! are `ok`, `manual_action_required` or a catalog error code (anything else a sidecar sends
//! becomes `other`), scopes and results are fixed words.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the tool-call duration histogram.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Upper bounds of the records-per-committed-audit-batch histogram (the largest batch allowed
/// is `audit.batch_max_records`, at most 4096).
pub const AUDIT_BATCH_BUCKETS: [u64; 13] =
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Cumulative-free counts per bucket (rendered cumulatively).
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(index) = DURATION_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Which limiter refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitScope {
    Peer,
    Subject,
}

/// Which connection limit refused a connection (or, behind a trusted proxy, a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionLimit {
    /// `remote_mcp.max_connections`, every connection busy with a request.
    Total,
    /// `remote_mcp.max_connections_per_peer`.
    Peer,
    /// `remote_mcp.max_relay_connections`.
    Relay,
}

impl ConnectionLimit {
    pub fn label(self) -> &'static str {
        match self {
            ConnectionLimit::Total => "total",
            ConnectionLimit::Peer => "peer",
            ConnectionLimit::Relay => "relay",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    tool_calls: Mutex<BTreeMap<(&'static str, String), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    rate_limited_peer: AtomicU64,
    rate_limited_subject: AtomicU64,
    audit_dropped: AtomicU64,
    audit_written: AtomicU64,
    connections_rejected_total: AtomicU64,
    connections_rejected_peer: AtomicU64,
    connections_rejected_relay: AtomicU64,
    connections_evicted: AtomicU64,
    connections_silent: AtomicU64,
    audit_refused: AtomicU64,
    /// Audit transactions committed, and records per committed one (per bucket, not
    /// cumulative).
    audit_batches_committed: AtomicU64,
    audit_batch_records: [AtomicU64; AUDIT_BATCH_BUCKETS.len()],
    audit_batches_failed: AtomicU64,
}

/// A tool-call outcome as a bounded label value.
pub fn outcome_label(outcome: &str) -> String {
    match outcome {
        "ok" | "manual_action_required" | "forwarding" => outcome.to_string(),
        code => match shared_safety::ErrorCode::from_code(code) {
            Some(code) => code.code().to_string(),
            None => "other".to_string(),
        },
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panic elsewhere cannot leave them inconsistent in a way that matters.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Values read at scrape time from other parts of the gateway.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub relay_sessions: u64,
    pub jwks_refresh_success: u64,
    pub jwks_refresh_failure: u64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// One finished tool call. `tool` is a catalog name or `unknown`.
    pub fn tool_call(&self, tool: &'static str, outcome: &str, elapsed: Duration) {
        *lock(&self.tool_calls)
            .entry((tool, outcome_label(outcome)))
            .or_insert(0) += 1;
        lock(&self.durations)
            .entry(tool)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn rate_limited(&self, scope: RateLimitScope) {
        match scope {
            RateLimitScope::Peer => &self.rate_limited_peer,
            RateLimitScope::Subject => &self.rate_limited_subject,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn audit_dropped(&self) {
        self.audit_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// One audit transaction committed with `records` records: one fsync of the database (and
    /// one replacement of `audit.head`) for all of them.
    pub fn audit_batch_committed(&self, records: u64) {
        self.audit_written.fetch_add(records, Ordering::Relaxed);
        self.audit_batches_committed.fetch_add(1, Ordering::Relaxed);
        if let Some(index) = AUDIT_BATCH_BUCKETS
            .iter()
            .position(|bound| records <= *bound)
        {
            self.audit_batch_records[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One audit transaction that did not commit (its records are counted as dropped apart).
    pub fn audit_batch_failed(&self) {
        self.audit_batches_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn audit_written_total(&self) -> u64 {
        self.audit_written.load(Ordering::Relaxed)
    }

    pub fn audit_batches_committed_total(&self) -> u64 {
        self.audit_batches_committed.load(Ordering::Relaxed)
    }

    pub fn audit_batches_failed_total(&self) -> u64 {
        self.audit_batches_failed.load(Ordering::Relaxed)
    }

    pub fn audit_dropped_total(&self) -> u64 {
        self.audit_dropped.load(Ordering::Relaxed)
    }

    /// An order call refused because its audit record could not be stored.
    pub fn audit_refused(&self) {
        self.audit_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn audit_refused_total(&self) -> u64 {
        self.audit_refused.load(Ordering::Relaxed)
    }

    pub fn connection_rejected(&self, limit: ConnectionLimit) {
        match limit {
            ConnectionLimit::Total => &self.connections_rejected_total,
            ConnectionLimit::Peer => &self.connections_rejected_peer,
            ConnectionLimit::Relay => &self.connections_rejected_relay,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// An idle connection closed to make room for a new one.
    pub fn connection_evicted(&self) {
        self.connections_evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed because it sent nothing within `first_byte_timeout_seconds`.
    pub fn connection_silent(&self) {
        self.connections_silent.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self, snapshot: Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        let _ = self.write(&mut out, snapshot);
        out
    }

    fn write(&self, out: &mut String, snapshot: Snapshot) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP ibkr_gateway_relay_sessions Live relay sessions (connected sidecars)."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_relay_sessions gauge")?;
        writeln!(
            out,
            "ibkr_gateway_relay_sessions {}",
            snapshot.relay_sessions
        )?;

        writeln!(
            out,
            "# HELP ibkr_gateway_tool_calls_total Tool calls by tool and outcome (ok, manual_action_required or an error code)."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_tool_calls_total counter")?;
        for ((tool, outcome), count) in lock(&self.tool_calls).iter() {
            writeln!(
                out,
                "ibkr_gateway_tool_calls_total{{tool=\"{tool}\",outcome=\"{outcome}\"}} {count}"
            )?;
        }

        writeln!(
            out,
            "# HELP ibkr_gateway_tool_call_duration_seconds Time a tool call spent in the gateway, relay round trip included."
        )?;
        writeln!(
            out,
            "# TYPE ibkr_gateway_tool_call_duration_seconds histogram"
        )?;
        for (tool, histogram) in lock(&self.durations).iter() {
            let mut cumulative = 0;
            for (bound, count) in DURATION_BUCKETS.iter().zip(histogram.buckets.iter()) {
                cumulative += count;
                writeln!(
                    out,
                    "ibkr_gateway_tool_call_duration_seconds_bucket{{tool=\"{tool}\",le=\"{bound}\"}} {cumulative}"
                )?;
            }
            writeln!(
                out,
                "ibkr_gateway_tool_call_duration_seconds_bucket{{tool=\"{tool}\",le=\"+Inf\"}} {}",
                histogram.count
            )?;
            writeln!(
                out,
                "ibkr_gateway_tool_call_duration_seconds_sum{{tool=\"{tool}\"}} {}",
                histogram.sum
            )?;
            writeln!(
                out,
                "ibkr_gateway_tool_call_duration_seconds_count{{tool=\"{tool}\"}} {}",
                histogram.count
            )?;
        }

        writeln!(
            out,
            "# HELP ibkr_gateway_jwks_refreshes_total Fetches of the authorization server's signing keys."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_jwks_refreshes_total counter")?;
        writeln!(
            out,
            "ibkr_gateway_jwks_refreshes_total{{result=\"success\"}} {}",
            snapshot.jwks_refresh_success
        )?;
        writeln!(
            out,
            "ibkr_gateway_jwks_refreshes_total{{result=\"failure\"}} {}",
            snapshot.jwks_refresh_failure
        )?;

        writeln!(
            out,
            "# HELP ibkr_gateway_rate_limited_total Requests answered 429, by limiter."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_rate_limited_total counter")?;
        writeln!(
            out,
            "ibkr_gateway_rate_limited_total{{scope=\"peer\"}} {}",
            self.rate_limited_peer.load(Ordering::Relaxed)
        )?;
        writeln!(
            out,
            "ibkr_gateway_rate_limited_total{{scope=\"subject\"}} {}",
            self.rate_limited_subject.load(Ordering::Relaxed)
        )?;

        writeln!(
            out,
            "# HELP ibkr_gateway_audit_dropped_total Audit records lost: the writer queue was full, the writer stopped, or the store did not take them within audit.ack_timeout_ms."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_audit_dropped_total counter")?;
        writeln!(
            out,
            "ibkr_gateway_audit_dropped_total {}",
            self.audit_dropped.load(Ordering::Relaxed)
        )?;

        writeln!(
            out,
            "# HELP ibkr_gateway_audit_written_total Audit records committed to the store."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_audit_written_total counter")?;
        writeln!(
            out,
            "ibkr_gateway_audit_written_total {}",
            self.audit_written.load(Ordering::Relaxed)
        )?;

        writeln!(
            out,
            "# HELP ibkr_gateway_audit_batches_total Audit write transactions: committed (one database fsync and one audit.head replacement each, for every record in the batch) or failed (their records are counted in ibkr_gateway_audit_dropped_total)."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_audit_batches_total counter")?;
        writeln!(
            out,
            "ibkr_gateway_audit_batches_total{{result=\"committed\"}} {}",
            self.audit_batches_committed.load(Ordering::Relaxed)
        )?;
        writeln!(
            out,
            "ibkr_gateway_audit_batches_total{{result=\"failed\"}} {}",
            self.audit_batches_failed.load(Ordering::Relaxed)
        )?;

        writeln!(
            out,
            "# HELP ibkr_gateway_audit_batch_records Records per committed audit transaction."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_audit_batch_records histogram")?;
        let mut cumulative = 0;
        for (bound, count) in AUDIT_BATCH_BUCKETS
            .iter()
            .zip(self.audit_batch_records.iter())
        {
            cumulative += count.load(Ordering::Relaxed);
            writeln!(
                out,
                "ibkr_gateway_audit_batch_records_bucket{{le=\"{bound}\"}} {cumulative}"
            )?;
        }
        let batches = self.audit_batches_committed.load(Ordering::Relaxed);
        writeln!(
            out,
            "ibkr_gateway_audit_batch_records_bucket{{le=\"+Inf\"}} {batches}"
        )?;
        writeln!(
            out,
            "ibkr_gateway_audit_batch_records_sum {}",
            self.audit_written.load(Ordering::Relaxed)
        )?;
        writeln!(out, "ibkr_gateway_audit_batch_records_count {batches}")?;

        writeln!(
            out,
            "# HELP ibkr_gateway_audit_refused_total Order calls refused (AUDIT_UNAVAILABLE) because their audit record could not be stored before forwarding."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_audit_refused_total counter")?;
        writeln!(
            out,
            "ibkr_gateway_audit_refused_total {}",
            self.audit_refused.load(Ordering::Relaxed)
        )?;

        writeln!(
            out,
            "# HELP ibkr_gateway_connections_rejected_total Connections (behind a trusted proxy: requests) refused at a connection limit: total (remote_mcp.max_connections, every connection busy), peer (remote_mcp.max_connections_per_peer), relay (remote_mcp.max_relay_connections)."
        )?;
        writeln!(
            out,
            "# TYPE ibkr_gateway_connections_rejected_total counter"
        )?;
        for (limit, counter) in [
            (ConnectionLimit::Total, &self.connections_rejected_total),
            (ConnectionLimit::Peer, &self.connections_rejected_peer),
            (ConnectionLimit::Relay, &self.connections_rejected_relay),
        ] {
            writeln!(
                out,
                "ibkr_gateway_connections_rejected_total{{limit=\"{}\"}} {}",
                limit.label(),
                counter.load(Ordering::Relaxed)
            )?;
        }

        writeln!(
            out,
            "# HELP ibkr_gateway_connections_evicted_total Idle connections closed to make room for a new one at remote_mcp.max_connections."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_connections_evicted_total counter")?;
        writeln!(
            out,
            "ibkr_gateway_connections_evicted_total {}",
            self.connections_evicted.load(Ordering::Relaxed)
        )?;

        writeln!(
            out,
            "# HELP ibkr_gateway_connections_silent_total Connections closed for sending nothing within remote_mcp.first_byte_timeout_seconds."
        )?;
        writeln!(out, "# TYPE ibkr_gateway_connections_silent_total counter")?;
        writeln!(
            out,
            "ibkr_gateway_connections_silent_total {}",
            self.connections_silent.load(Ordering::Relaxed)
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_series() {
        let metrics = Metrics::new();
        metrics.tool_call("ibkr_quote", "ok", Duration::from_millis(20));
        metrics.tool_call("ibkr_quote", "SIDECAR_UNAVAILABLE", Duration::from_secs(2));
        metrics.tool_call("ibkr_quote", "made-up\"}", Duration::from_secs(500));
        metrics.rate_limited(RateLimitScope::Subject);
        let text = metrics.render(Snapshot {
            relay_sessions: 3,
            jwks_refresh_success: 1,
            jwks_refresh_failure: 0,
        });
        assert!(text.contains("ibkr_gateway_relay_sessions 3\n"));
        assert!(
            text.contains("ibkr_gateway_tool_calls_total{tool=\"ibkr_quote\",outcome=\"ok\"} 1\n")
        );
        assert!(text.contains("outcome=\"other\"} 1\n"));
        assert!(!text.contains("made-up"));
        assert!(text.contains(
            "ibkr_gateway_tool_call_duration_seconds_bucket{tool=\"ibkr_quote\",le=\"0.025\"} 1\n"
        ));
        assert!(text.contains(
            "ibkr_gateway_tool_call_duration_seconds_bucket{tool=\"ibkr_quote\",le=\"2.5\"} 2\n"
        ));
        assert!(text.contains(
            "ibkr_gateway_tool_call_duration_seconds_bucket{tool=\"ibkr_quote\",le=\"+Inf\"} 3\n"
        ));
        assert!(
            text.contains("ibkr_gateway_tool_call_duration_seconds_count{tool=\"ibkr_quote\"} 3\n")
        );
        assert!(text.contains("ibkr_gateway_rate_limited_total{scope=\"subject\"} 1\n"));
        assert!(text.contains("ibkr_gateway_rate_limited_total{scope=\"peer\"} 0\n"));
        assert!(text.contains("ibkr_gateway_jwks_refreshes_total{result=\"success\"} 1\n"));
        assert!(text.contains("ibkr_gateway_audit_dropped_total 0\n"));
        metrics.audit_batch_committed(1);
        metrics.audit_batch_committed(3);
        metrics.audit_batch_committed(300);
        metrics.audit_batch_failed();
        let text = metrics.render(Snapshot::default());
        assert!(text.contains("ibkr_gateway_audit_batches_total{result=\"committed\"} 3\n"));
        assert!(text.contains("ibkr_gateway_audit_batches_total{result=\"failed\"} 1\n"));
        assert!(text.contains("ibkr_gateway_audit_batch_records_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("ibkr_gateway_audit_batch_records_bucket{le=\"2\"} 1\n"));
        assert!(text.contains("ibkr_gateway_audit_batch_records_bucket{le=\"4\"} 2\n"));
        assert!(text.contains("ibkr_gateway_audit_batch_records_bucket{le=\"256\"} 2\n"));
        assert!(text.contains("ibkr_gateway_audit_batch_records_bucket{le=\"512\"} 3\n"));
        assert!(text.contains("ibkr_gateway_audit_batch_records_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("ibkr_gateway_audit_batch_records_sum 304\n"));
        assert!(text.contains("ibkr_gateway_audit_batch_records_count 3\n"));
        assert!(text.contains("ibkr_gateway_audit_written_total 304\n"));
        assert!(text.contains("ibkr_gateway_connections_rejected_total{limit=\"peer\"} 0\n"));
        metrics.connection_rejected(ConnectionLimit::Relay);
        metrics.connection_evicted();
        let text = metrics.render(Snapshot::default());
        assert!(text.contains("ibkr_gateway_connections_rejected_total{limit=\"relay\"} 1\n"));
        assert!(text.contains("ibkr_gateway_connections_rejected_total{limit=\"total\"} 0\n"));
        assert!(text.contains("ibkr_gateway_connections_evicted_total 1\n"));
    }
}
