//! The soak's report: one markdown section, printed and optionally written to
//! `docs/reliability.md` under `## Soak`.

use super::agents::UserOrders;
use super::laptops::LaptopAudit;
use super::stats::{Class, Gathered, percentile};
use super::tracker::TrackerSummary;
use crate::{BenchResult, Memory};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// The heading the soak owns in `docs/reliability.md`.
pub(super) const HEADING: &str = "## Soak";

#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub rustc: String,
    pub profile: &'static str,
    /// `/proc/loadavg` (1, 5 and 15 minutes) when the load started and when it ended: the
    /// machine is shared, and what else ran shows here.
    pub load_average: (String, String),
}

/// The 1, 5 and 15 minute load averages, now.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_string())
}

impl Machine {
    pub(crate) fn describe(load_average: (String, String)) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split(':').nth(1))
            .map_or_else(|| "unknown".to_string(), |model| model.trim().to_string());
        let meminfo = read("/proc/meminfo");
        let memory = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or_else(
                || "unknown".to_string(),
                |kib| format!("{:.0} GiB", kib as f64 / (1024.0 * 1024.0)),
            );
        let os = read("/etc/os-release")
            .lines()
            .find(|line| line.starts_with("PRETTY_NAME="))
            .map(|line| {
                line.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_string()
            })
            .unwrap_or_else(|| "unknown".to_string());
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            memory,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
            rustc,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            load_average,
        }
    }
}

/// One laptop's orders: the broker's side and its agents' side.
pub(super) struct LaptopRow {
    pub audit: LaptopAudit,
    pub orders: UserOrders,
    pub restarts: u64,
    /// Order answers whose client order id this user's journal does not give to that key.
    pub misrouted_orders: usize,
    /// Keys the agents were told were placed under more than one client order id.
    pub agent_duplicates: usize,
}

/// Everything the report shows.
pub(super) struct Report {
    pub command: String,
    pub machine: Machine,
    pub settings: Vec<(String, String)>,
    pub gateway_config: Vec<(String, String, bool)>,
    pub sidecars: usize,
    pub peers: usize,
    pub laptops: usize,
    pub agents: usize,
    pub pairing: Duration,
    pub opening: Duration,
    pub warm_up: Duration,
    pub duration: Duration,
    pub interval: Duration,
    pub measured_from: usize,
    /// Each reading: the gateway's memory and its count of registered sessions.
    pub memory_start: (Memory, usize),
    pub memory_warm: (Memory, usize),
    pub memory_end: (Memory, usize),
    pub memory_after: (Memory, usize),
    pub gathered: Gathered,
    pub tracker: TrackerSummary,
    pub reconnects: Vec<(String, u64, Duration)>,
    pub peer_counters: Vec<(&'static str, u64)>,
    pub laptop_rows: Vec<LaptopRow>,
    pub gateway_metrics: Vec<(String, f64)>,
}

/// The checks of the run: (what, value, passed).
pub(super) struct Verdict {
    pub acceptance: Vec<(String, String, bool)>,
    pub other: Vec<(String, String, bool)>,
}

impl Verdict {
    pub(super) fn passed(&self) -> bool {
        self.acceptance
            .iter()
            .chain(self.other.iter())
            .all(|(_, _, passed)| *passed)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".to_string(),
        |duration| format!("{:.1}", duration.as_secs_f64() * 1000.0),
    )
}

fn change(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / (from as f64).max(1.0) * 100.0
}

impl Report {
    pub(super) fn lost(&self) -> u64 {
        self.gathered.totals.lost
    }

    pub(super) fn misrouted(&self) -> u64 {
        self.gathered.totals.misrouted
            + self.gathered.totals.progress_foreign
            + self
                .laptop_rows
                .iter()
                .map(|row| row.misrouted_orders as u64)
                .sum::<u64>()
    }

    pub(super) fn duplicated(&self) -> u64 {
        self.laptop_rows
            .iter()
            .map(|row| (row.audit.duplicated + row.agent_duplicates) as u64)
            .sum()
    }

    pub(super) fn verdict(&self) -> Verdict {
        let growth = change(self.memory_warm.0.rss, self.memory_end.0.rss);
        let acceptance = vec![
            (
                "lost responses".to_string(),
                self.lost().to_string(),
                self.lost() == 0,
            ),
            (
                "responses delivered to the wrong caller".to_string(),
                self.misrouted().to_string(),
                self.misrouted() == 0,
            ),
            (
                "duplicated orders".to_string(),
                self.duplicated().to_string(),
                self.duplicated() == 0,
            ),
            (
                "gateway VmRSS at the end vs after warm-up".to_string(),
                format!("{growth:+.1} %"),
                growth.abs() <= 10.0,
            ),
        ];
        let totals = &self.gathered.totals;
        let pacing: u64 = self
            .laptop_rows
            .iter()
            .map(|row| row.audit.pacing_rejections)
            .sum();
        let invalid = self
            .peer_counters
            .iter()
            .find(|(name, _)| *name == "invalid_requests")
            .map_or(0, |(_, value)| *value);
        let other = vec![
            (
                "MCP client failures (no JSON-RPC answer)".to_string(),
                totals.transport.to_string(),
                totals.transport == 0,
            ),
            (
                "error answers outside any reconnect or restart".to_string(),
                self.gathered.errors.unexplained.to_string(),
                self.gathered.errors.unexplained == 0,
            ),
            (
                "sessions the gateway dropped unasked".to_string(),
                self.tracker.unexpected_drops.len().to_string(),
                self.tracker.unexpected_drops.is_empty(),
            ),
            (
                "requests failing the envelope checks at the peers".to_string(),
                invalid.to_string(),
                invalid == 0,
            ),
            (
                "CPGW pacing limits hit (429)".to_string(),
                pacing.to_string(),
                pacing == 0,
            ),
            (
                "session events missed".to_string(),
                self.tracker.lagged.to_string(),
                self.tracker.lagged == 0,
            ),
        ];
        Verdict { acceptance, other }
    }

    /// The whole section, markdown.
    pub(super) fn markdown(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_markdown(&mut out);
        out
    }

    fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let verdict = self.verdict();
        let m = &self.machine;
        writeln!(out, "{HEADING}\n")?;
        writeln!(
            out,
            "{} MCP clients and {} connected sidecars ({} of them real sidecar daemons placing \
             orders at a CPGW simulator) for {} s ({} s warm-up, then {} s measured), with \
             sidecars reconnecting and calls cancelled throughout, everything on 127.0.0.1. The \
             method is in [benchmarks.md](benchmarks.md#soak).\n",
            self.agents,
            self.sidecars,
            self.laptops,
            (self.warm_up + self.duration).as_secs(),
            self.warm_up.as_secs(),
            self.duration.as_secs()
        )?;
        writeln!(out, "```sh\n{}\n```\n", self.command)?;
        writeln!(
            out,
            "Machine: {} vCPUs (\"{}\"), {} RAM, Linux {}, {}, {}, {} profile. Load average \
             (1, 5, 15 min, from `/proc/loadavg`; the machine is shared) when the load started: \
             {}; when it ended: {}.\n",
            m.cpus,
            m.cpu_model,
            m.memory,
            m.kernel,
            m.os,
            m.rustc,
            m.profile,
            m.load_average.0,
            m.load_average.1
        )?;

        writeln!(out, "### Result\n")?;
        writeln!(out, "| acceptance | value | |\n|---|---|---|")?;
        for (what, value, passed) in &verdict.acceptance {
            writeln!(out, "| {what} | **{value}** | {} |", mark(*passed))?;
        }
        writeln!(out, "\n| other checks | value | |\n|---|---|---|")?;
        for (what, value, passed) in &verdict.other {
            writeln!(out, "| {what} | {value} | {} |", mark(*passed))?;
        }

        writeln!(out, "\n### Gateway memory\n")?;
        writeln!(
            out,
            "The gateway runs alone in its process; read from `/proc/<pid>/status`.\n"
        )?;
        writeln!(
            out,
            "| reading | VmRSS | RssAnon | sessions registered |\n|---|---|---|---|"
        )?;
        let readings = [
            (
                "start: every session open, idle 12 s, no MCP client yet",
                self.memory_start,
            ),
            ("after warm-up (under load)", self.memory_warm),
            ("end (under load)", self.memory_end),
            (
                "after the load, every session open again, idle 12 s",
                self.memory_after,
            ),
        ];
        for (label, (memory, sessions)) in readings {
            writeln!(
                out,
                "| {label} | {} | {} | {sessions} |",
                mib(memory.rss),
                mib(memory.anon)
            )?;
        }
        writeln!(
            out,
            "| **end vs after warm-up** | **{:+.1} %** | {:+.1} % | |",
            change(self.memory_warm.0.rss, self.memory_end.0.rss),
            change(self.memory_warm.0.anon, self.memory_end.0.anon)
        )?;

        writeln!(out, "\n### Latency over time\n")?;
        writeln!(
            out,
            "Per {} s interval, by when the call ended; answered calls only (results and error \
             answers; cancelled calls excluded). Milliseconds. Intervals before the line are the \
             warm-up.\n",
            self.interval.as_secs()
        )?;
        writeln!(
            out,
            "| interval | calls | peer quick p50 / p99 | peer slow p50 / p99 | laptop read p50 / p99 | laptop buy p50 / p99 | errors | cancelled | lost | misrouted | reconnects + restarts | sessions | gateway VmRSS |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for (index, bucket) in self.gathered.buckets.iter().enumerate() {
            if index == self.measured_from && index > 0 {
                writeln!(out, "| *measured from here* | | | | | | | | | | | | |")?;
            }
            let from = self.interval.as_secs() * index as u64;
            let pair = |class: Class| {
                let samples = &bucket.latencies[class.index()];
                format!(
                    "{} / {}",
                    ms(percentile(samples, 50)),
                    ms(percentile(samples, 99))
                )
            };
            let load = (self.warm_up + self.duration).as_secs();
            let label = if from >= load {
                format!("after {load} s: calls in flight at the end")
            } else {
                format!("{from}-{} s", (from + self.interval.as_secs()).min(load))
            };
            writeln!(
                out,
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                bucket.calls,
                pair(Class::PeerQuick),
                pair(Class::PeerSlow),
                pair(Class::LaptopRead),
                pair(Class::LaptopOrder),
                bucket.tool_errors,
                bucket.cancelled,
                bucket.lost,
                bucket.misrouted,
                bucket.disturbances,
                bucket
                    .sessions
                    .map_or_else(|| "-".to_string(), |sessions| sessions.to_string()),
                bucket
                    .gateway
                    .map_or_else(|| "-".to_string(), |memory| mib(memory.rss)),
            )?;
        }
        writeln!(out, "\nOver the measured period:\n")?;
        writeln!(
            out,
            "| calls | answered | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|"
        )?;
        for class in Class::ALL {
            let samples = &self.gathered.measured[class.index()];
            writeln!(
                out,
                "| {} | {} | {} ms | {} ms | {} ms | {} ms |",
                class.label(),
                samples.len(),
                ms(percentile(samples, 50)),
                ms(percentile(samples, 90)),
                ms(percentile(samples, 99)),
                ms(samples.last().copied())
            )?;
        }

        let totals = &self.gathered.totals;
        writeln!(out, "\n### Calls\n")?;
        writeln!(out, "| | count |\n|---|---|")?;
        let rows = [
            ("calls made", totals.calls),
            ("results", totals.results),
            ("error answers", totals.tool_errors),
            ("cancelled by the agent before an answer", totals.cancelled),
            ("lost (no answer within the deadline)", totals.lost),
            ("delivered to the wrong caller", totals.misrouted),
            ("MCP client failures", totals.transport),
            (
                "progress notifications, the agent's own",
                totals.progress_own,
            ),
            (
                "progress notifications, another call's",
                totals.progress_foreign,
            ),
            ("MCP client connections", totals.client_connects),
            (
                "MCP client connection failures",
                totals.client_connect_failures,
            ),
        ];
        for (label, count) in rows {
            writeln!(out, "| {label} | {count} |")?;
        }
        for class in Class::ALL {
            writeln!(
                out,
                "| calls: {} | {} |",
                class.label(),
                totals.by_class[class.index()]
            )?;
        }
        if !self.gathered.errors.by_code.is_empty() {
            writeln!(
                out,
                "\nError answers, judged against the reconnects and restarts of the caller's own \
                 session (explained: the call overlapped one, up to 2 s after the new session \
                 registered):\n"
            )?;
            writeln!(
                out,
                "| code | calls | explained | unexplained |\n|---|---|---|---|"
            )?;
            for ((code, class), (explained, unexplained)) in &self.gathered.errors.by_code {
                writeln!(out, "| {code} | {class} | {explained} | {unexplained} |")?;
            }
        }
        for (title, details) in [
            ("Lost", &self.gathered.lost),
            ("Misrouted", &self.gathered.misrouted),
            ("MCP client failures", &self.gathered.transport),
            (
                "Unexplained errors",
                &self.gathered.errors.unexplained_details,
            ),
        ] {
            if !details.is_empty() {
                writeln!(out, "\n{title} (first {}):\n", details.len())?;
                for detail in details {
                    writeln!(out, "- {detail}")?;
                }
            }
        }

        writeln!(out, "\n### Sessions\n")?;
        writeln!(out, "| | |\n|---|---|")?;
        writeln!(
            out,
            "| pairing {} sidecars (helper process, 8 at a time) | {:.1} s |",
            self.sidecars,
            self.pairing.as_secs_f64()
        )?;
        writeln!(
            out,
            "| opening {} relay peer sessions, 16 at a time | {:.1} s |",
            self.peers,
            self.opening.as_secs_f64()
        )?;
        for (mode, count, mean) in &self.reconnects {
            writeln!(
                out,
                "| relay peer reconnects, {mode} | {count} (mean {:.0} ms) |",
                mean.as_secs_f64() * 1000.0
            )?;
        }
        let restarts: u64 = self.laptop_rows.iter().map(|row| row.restarts).sum();
        writeln!(out, "| laptop daemon restarts (graceful) | {restarts} |")?;
        writeln!(
            out,
            "| session registrations seen at the gateway | {} |",
            self.tracker.registrations
        )?;
        writeln!(
            out,
            "| disturbances of a user's session (reconnect, restart or drop) | {} |",
            self.tracker.windows
        )?;
        for (reason, count) in &self.tracker.drops_by_reason {
            writeln!(
                out,
                "| sessions dropped by the gateway, {reason} | {count} |"
            )?;
        }
        for (name, value) in &self.peer_counters {
            writeln!(out, "| relay peers: {} | {value} |", name.replace('_', " "))?;
        }
        for (user, reason) in &self.tracker.unexpected_drops {
            writeln!(out, "| unasked drop | {user}: {reason} |")?;
        }

        writeln!(out, "\n### Orders\n")?;
        writeln!(
            out,
            "Each order at a laptop's simulator is traced by its client order id to the journal \
             attempt that sent it, and that attempt's idempotency key.\n"
        )?;
        writeln!(
            out,
            "| user | keys sent | keys sent again | answered placed | refused | unsettled | orders at the broker | keys with an order | duplicated | untraced | amount mismatches | journal attempts | daemon restarts |"
        )?;
        writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for row in &self.laptop_rows {
            let refused: u64 = row.orders.refused.values().sum();
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.audit.user,
                row.orders.sent.len(),
                row.orders.retried.len(),
                row.orders.placed.len(),
                refused,
                row.orders.unsettled.len(),
                row.audit.orders,
                row.audit.keys_with_orders,
                row.audit.duplicated + row.agent_duplicates,
                row.audit.untraced,
                row.audit.amount_mismatches,
                row.audit.attempts,
                row.restarts,
            )?;
        }

        for row in &self.laptop_rows {
            if let Some(detail) = &row.audit.pacing_detail {
                writeln!(
                    out,
                    "\nCPGW pacing at the simulator of {}: {detail}.",
                    row.audit.user
                )?;
            }
        }

        writeln!(out, "\n### Configuration\n")?;
        writeln!(out, "| soak | |\n|---|---|")?;
        for (key, value) in &self.settings {
            writeln!(out, "| {key} | {value} |")?;
        }
        writeln!(out, "\n| gateway | value | |\n|---|---|---|")?;
        for (key, value, default) in &self.gateway_config {
            let note = if *default {
                "default"
            } else {
                "raised: every client and sidecar dials from 127.0.0.1"
            };
            writeln!(out, "| `{key}` | {value} | {note} |")?;
        }
        if !self.gateway_metrics.is_empty() {
            writeln!(
                out,
                "\nThe gateway's own counters (`/metrics`) at the end:\n"
            )?;
            writeln!(out, "| metric | value |\n|---|---|")?;
            for (name, value) in &self.gateway_metrics {
                writeln!(out, "| `{name}` | {value} |")?;
            }
        }
        Ok(())
    }
}

fn mark(passed: bool) -> &'static str {
    if passed { "pass" } else { "**FAIL**" }
}

/// Writes `section` (starting with [`HEADING`]) into `path`: replaces the existing section, or
/// appends it; creates the file with a title and one line of introduction if it is absent.
pub(super) fn write_section(path: &Path, section: &str) -> BenchResult<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Reliability\n\nHow the product holds up over time and under faults, measured on one machine.\n",
        ),
        Err(error) => return Err(error.into()),
    };
    let mut kept = String::new();
    let mut after = String::new();
    let mut state = 0; // 0: before the section, 1: in it, 2: after it
    for line in existing.split_inclusive('\n') {
        match state {
            0 if line.trim_end() == HEADING => state = 1,
            0 => kept.push_str(line),
            1 if line.starts_with("## ") => {
                state = 2;
                after.push_str(line);
            }
            1 => {}
            _ => after.push_str(line),
        }
    }
    let mut text = kept.trim_end().to_string();
    text.push_str("\n\n");
    text.push_str(section.trim_end());
    text.push('\n');
    if !after.is_empty() {
        text.push('\n');
        text.push_str(&after);
    }
    std::fs::write(path, text)?;
    Ok(())
}
