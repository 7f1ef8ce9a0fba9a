//! The benchmark's results: printed next to their floors and targets, and written into
//! `docs/benchmarks.md` (between its result markers) and `docs/benchmarks.json`.

use crate::BenchResult;
use crate::idle_relay::{IdleReport, print_idle};
use crate::mcp_sessions::McpSessionReport;
use crate::soak::report::{Machine as MachineDescription, load_average};
use crate::speed::{FULL_TOOL, HOP_TOOL, Latency, LoadRun, SpeedReport};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// The markers `docs/benchmarks.md` keeps the generated results between.
const BEGIN: &str = "<!-- ibkr-bench results: begin -->";
const END: &str = "<!-- ibkr-bench results: end -->";

/// The targets on a 2-core machine.
pub mod targets {
    /// Relay hop p50 at most this far above the MCP ping's p50 (ms).
    pub const HOP_P50_OVER_PING_MS: f64 = 0.25;
    /// Relay hop p99 at most this far above the MCP ping's p99 (ms).
    pub const HOP_P99_OVER_PING_MS: f64 = 1.0;
    /// Gateway + sidecar CPU per relayed call (µs).
    pub const CPU_PER_CALL_MICROS: f64 = 300.0;
    /// Calls a second at 64 sessions: the relay hop, and a call to the simulator.
    pub const HOP_CALLS_PER_SECOND: f64 = 5000.0;
    pub const FULL_CALLS_PER_SECOND: f64 = 3000.0;
    /// p99 at 64 sessions (ms).
    pub const LOAD_P99_MS: f64 = 50.0;
    /// Bytes per idle MCP session and per idle relay session.
    pub const MCP_SESSION_BYTES: f64 = 24.0 * 1024.0;
    pub const RELAY_SESSION_BYTES: f64 = 20.0 * 1024.0;
    /// Seconds until every sidecar is back after a gateway restart.
    pub const RECONNECT_SECONDS: f64 = 5.0;
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    #[serde(flatten)]
    pub description: MachineDescription,
}

impl Machine {
    pub fn here() -> Machine {
        let now = load_average();
        Machine {
            description: MachineDescription::describe((now.clone(), now)),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub command: String,
    pub took_seconds: f64,
    pub speed: Option<SpeedReport>,
    pub idle: Option<IdleReport>,
    pub mcp: Option<McpSessionReport>,
}

/// One line of the summary: a figure, its floor (if any), its target and whether it is met.
struct Line {
    figure: String,
    measured: String,
    floor: String,
    target: String,
    met: Option<bool>,
}

fn ms(value: f64) -> String {
    format!("{value:.3} ms")
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn find<'a>(speed: &'a SpeedReport, tool: &str, sessions: usize) -> Option<&'a LoadRun> {
    speed
        .loads
        .iter()
        .find(|run| run.tool == tool && run.sessions == sessions)
}

fn summary(results: &Results) -> Vec<Line> {
    let mut lines = Vec::new();
    if let Some(speed) = &results.speed {
        speed_lines(speed, &mut lines);
    }
    if let Some(mcp) = &results.mcp {
        mcp_lines(mcp, &mut lines);
    }
    if let Some(idle) = &results.idle {
        idle_lines(idle, &mut lines);
    }
    lines
}

fn speed_lines(speed: &SpeedReport, lines: &mut Vec<Line>) {
    let ping = &speed.mcp_ping;
    let hop = &speed.relay_hop;
    lines.extend([
        Line {
            figure: "websocket echo round trip, p50 / p99 / p99.9".into(),
            measured: latency_triple(&speed.websocket_echo),
            floor: "(floor)".into(),
            target: "-".into(),
            met: None,
        },
        Line {
            figure: "MCP ping, p50 / p99 / p99.9".into(),
            measured: latency_triple(ping),
            floor: "(floor)".into(),
            target: "-".into(),
            met: None,
        },
        Line {
            figure: format!("relay hop ({HOP_TOOL}), p50 / p99 / p99.9"),
            measured: latency_triple(hop),
            floor: format!("ping p50 {} / p99 {}", ms(ping.p50_ms), ms(ping.p99_ms)),
            target: format!(
                "p50 <= ping + {} ms, p99 <= ping + {} ms",
                targets::HOP_P50_OVER_PING_MS,
                targets::HOP_P99_OVER_PING_MS
            ),
            met: Some(
                hop.p50_ms <= ping.p50_ms + targets::HOP_P50_OVER_PING_MS
                    && hop.p99_ms <= ping.p99_ms + targets::HOP_P99_OVER_PING_MS,
            ),
        },
        Line {
            figure: format!("full call ({FULL_TOOL} to the simulator), p50 / p99 / p99.9"),
            measured: format!(
                "{} ({} calls, {} CPGW requests)",
                latency_triple(&speed.full_call),
                speed.full_call.calls,
                speed.full_call_cpgw_requests
            ),
            floor: format!("relay hop p50 {}", ms(hop.p50_ms)),
            target: "-".into(),
            met: None,
        },
        Line {
            figure: "CPU per relayed call, gateway + sidecar (one at a time)".into(),
            measured: format!(
                "{:.0} + {:.0} = {:.0} us",
                speed.relay_hop_cost.gateway.cpu_micros,
                speed.relay_hop_cost.sidecar.cpu_micros,
                speed.relay_hop_cost.total_cpu_micros()
            ),
            floor: "-".into(),
            target: format!("<= {:.0} us", targets::CPU_PER_CALL_MICROS),
            met: Some(speed.relay_hop_cost.total_cpu_micros() <= targets::CPU_PER_CALL_MICROS),
        },
        Line {
            figure: "context switches per relayed call, gateway / sidecar".into(),
            measured: format!(
                "{:.1} / {:.1}",
                speed.relay_hop_cost.gateway.context_switches,
                speed.relay_hop_cost.sidecar.context_switches
            ),
            floor: "-".into(),
            target: "-".into(),
            met: None,
        },
    ]);
    for (tool, target) in [
        (HOP_TOOL, targets::HOP_CALLS_PER_SECOND),
        (FULL_TOOL, targets::FULL_CALLS_PER_SECOND),
    ] {
        for sessions in crate::speed::LOADS {
            let Some(run) = find(speed, tool, sessions) else {
                continue;
            };
            let at_64 = sessions == 64;
            lines.push(Line {
                figure: format!("{tool}, {sessions} sessions: calls/s, p50, p99, refused"),
                measured: format!(
                    "{:.0}/s, {}, {}, {} refused, {:.0} us CPU/call",
                    run.calls_per_second,
                    ms(run.latency.p50_ms),
                    ms(run.latency.p99_ms),
                    run.refused(),
                    run.cost.total_cpu_micros()
                ),
                floor: "-".into(),
                target: if at_64 {
                    format!(
                        ">= {target:.0}/s, p99 <= {} ms, 0 refused",
                        targets::LOAD_P99_MS
                    )
                } else {
                    "0 refused".into()
                },
                met: Some(if at_64 {
                    run.calls_per_second >= target
                        && run.latency.p99_ms <= targets::LOAD_P99_MS
                        && run.refused() == 0
                } else {
                    run.refused() == 0
                }),
            });
        }
    }
}

fn mcp_lines(mcp: &McpSessionReport, lines: &mut Vec<Line>) {
    lines.push(Line {
        figure: "gateway memory per idle MCP session (RssAnon)".into(),
        measured: kib(mcp.per_session_anon()),
        floor: "-".into(),
        target: format!("<= {}", kib(targets::MCP_SESSION_BYTES)),
        met: Some(mcp.per_session_anon() <= targets::MCP_SESSION_BYTES),
    });
    lines.push(Line {
        figure: format!(
            "gateway heap left after {} rounds of {} MCP sessions closed",
            mcp.rounds, mcp.sessions
        ),
        measured: crate::idle_relay::mib(mcp.retained_after_close()),
        floor: "-".into(),
        target: "comes back: under a quarter of what the sessions took".into(),
        met: Some(mcp.retained_after_close() as f64 <= mcp.first_round_growth() as f64 / 4.0),
    });
}

fn idle_lines(idle: &IdleReport, lines: &mut Vec<Line>) {
    lines.push(Line {
        figure: "gateway memory per idle relay session (VmRSS)".into(),
        measured: kib(idle.per_session_rss()),
        floor: "-".into(),
        target: format!("<= {}", kib(targets::RELAY_SESSION_BYTES)),
        met: Some(idle.per_session_rss() <= targets::RELAY_SESSION_BYTES),
    });
    let back = idle.restart.back_after_listening.as_secs_f64();
    lines.push(Line {
        figure: format!("{} sidecars back after a gateway restart", idle.sessions()),
        measured: format!(
            "{back:.2} s after it listened ({:.2} s from the start of the shutdown)",
            idle.restart.back_after_shutdown_began.as_secs_f64()
        ),
        floor: "-".into(),
        target: format!("<= {} s", targets::RECONNECT_SECONDS),
        met: Some(back <= targets::RECONNECT_SECONDS),
    });
}

fn latency_triple(latency: &Latency) -> String {
    format!(
        "{} / {} / {}",
        ms(latency.p50_ms),
        ms(latency.p99_ms),
        ms(latency.p999_ms)
    )
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    }
}

pub fn print(results: &Results) {
    println!("\nibkr-bench ({:.0} s)\n", results.took_seconds);
    for line in summary(results) {
        println!("{}", line.figure);
        println!("    measured: {}", line.measured);
        if line.floor != "-" {
            println!("    floor:    {}", line.floor);
        }
        if line.target != "-" {
            println!("    target:   {}  {}", line.target, verdict(line.met));
        }
    }
    if let Some(speed) = &results.speed {
        print_loads(speed);
    }
    if let Some(idle) = &results.idle {
        print_idle(idle);
    }
    if let Some(mcp) = &results.mcp {
        print_mcp(mcp);
    }
}

fn print_loads(speed: &SpeedReport) {
    println!("\nLoad runs (closed loop, every session calls again as soon as it is answered)");
    for run in &speed.loads {
        println!(
            "  {:<20} {:>3} sessions  {:>7.0} calls/s  p50 {:>9}  p99 {:>9}  max {:>9}  refused {:?}  CPGW requests {}  gateway {:.0} us / {:.1} cs, sidecar {:.0} us / {:.1} cs, clients+simulator {:.0} us per call",
            run.tool,
            run.sessions,
            run.calls_per_second,
            ms(run.latency.p50_ms),
            ms(run.latency.p99_ms),
            ms(run.latency.max_ms),
            run.refusals,
            run.cpgw_requests,
            run.cost.gateway.cpu_micros,
            run.cost.gateway.context_switches,
            run.cost.sidecar.cpu_micros,
            run.cost.sidecar.context_switches,
            run.cost.bench.cpu_micros,
        );
    }
}

fn print_mcp(mcp: &McpSessionReport) {
    println!("\nIdle MCP sessions (gateway process, RssAnon)");
    println!("  baseline {}", crate::idle_relay::mib(mcp.baseline.anon));
    for (round, (open, closed)) in mcp.open.iter().zip(&mcp.closed).enumerate() {
        println!(
            "  round {}: {} sessions open {}, closed {}",
            round + 1,
            mcp.sessions,
            crate::idle_relay::mib(open.anon),
            crate::idle_relay::mib(closed.anon)
        );
    }
}

fn markdown(results: &Results) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    let m = &results.machine.description;
    writeln!(out, "{BEGIN}")?;
    writeln!(
        out,
        "Machine: {} CPUs ({}), {}, Linux {} ({}), {}, {} profile. Command: `{}`; the run took {:.0} s.\n",
        m.cpus,
        m.cpu_model,
        m.memory,
        m.kernel,
        m.os,
        m.rustc,
        m.profile,
        results.command,
        results.took_seconds
    )?;
    writeln!(out, "| figure | measured | floor | target | |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    for line in summary(results) {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            line.figure,
            line.measured,
            line.floor,
            line.target,
            verdict(line.met)
        )?;
    }
    let (Some(speed), Some(mcp)) = (&results.speed, &results.mcp) else {
        return Err(std::fmt::Error);
    };
    writeln!(
        out,
        "\nLoad runs (closed loop: each session calls again as soon as it is answered):\n"
    )?;
    writeln!(
        out,
        "| tool | sessions | calls/s | p50 | p99 | p99.9 | refused | CPGW requests | gateway CPU/call | sidecar CPU/call | gateway cs/call | sidecar cs/call | clients + simulator CPU/call |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for run in &speed.loads {
        writeln!(
            out,
            "| `{}` | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} us | {:.0} us | {:.1} | {:.1} | {:.0} us |",
            run.tool,
            run.sessions,
            run.calls_per_second,
            ms(run.latency.p50_ms),
            ms(run.latency.p99_ms),
            ms(run.latency.p999_ms),
            if run.refusals.is_empty() {
                "0".to_string()
            } else {
                format!("{:?}", run.refusals)
            },
            run.cpgw_requests,
            run.cost.gateway.cpu_micros,
            run.cost.sidecar.cpu_micros,
            run.cost.gateway.context_switches,
            run.cost.sidecar.context_switches,
            run.cost.bench.cpu_micros,
        )?;
    }
    writeln!(
        out,
        "\nIdle MCP sessions, gateway RssAnon: baseline {}; {}.",
        crate::idle_relay::mib(mcp.baseline.anon),
        mcp.open
            .iter()
            .zip(&mcp.closed)
            .enumerate()
            .map(|(round, (open, closed))| format!(
                "round {}: {} open, {} after closing",
                round + 1,
                crate::idle_relay::mib(open.anon),
                crate::idle_relay::mib(closed.anon)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    writeln!(out, "{END}")?;
    Ok(out)
}

/// Writes the results into `docs/benchmarks.md` between the markers, and the JSON beside it.
pub fn write_docs(results: &Results) -> BenchResult<()> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let path = docs.join("benchmarks.md");
    let existing = std::fs::read_to_string(&path)?;
    let (Some(begin), Some(end)) = (existing.find(BEGIN), existing.find(END)) else {
        return Err(crate::bench_error(format!(
            "{} has no {BEGIN} ... {END} markers",
            path.display()
        )));
    };
    let mut text = existing[..begin].to_string();
    text.push_str(&markdown(results)?);
    text.push_str(existing[end + END.len()..].trim_start_matches('\n'));
    std::fs::write(&path, text)?;
    std::fs::write(
        docs.join("benchmarks.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    eprintln!("wrote {} and benchmarks.json", path.display());
    Ok(())
}
