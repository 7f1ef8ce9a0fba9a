//! CPU time and context switches of another process, from `/proc`.
//!
//! - CPU: `utime + stime` of `/proc/<pid>/stat`, which counts every thread the process ever
//!   had (exited ones too), in clock ticks of `USER_HZ` (100 on Linux, whatever the kernel's
//!   own tick rate).
//! - Context switches: `voluntary_ctxt_switches + nonvoluntary_ctxt_switches` summed over the
//!   threads alive in `/proc/<pid>/task`; a thread that exits during a run takes its count
//!   with it, so the figure is a lower bound when threads come and go (tokio's blocking pool
//!   keeps idle threads 10 s, longer than a run's gaps).

use crate::{BenchResult, bench_error};

/// `USER_HZ`: the unit of `/proc/<pid>/stat` times on Linux.
const TICKS_PER_SECOND: u64 = 100;

/// One reading of a process's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    pub cpu_micros: u64,
    pub context_switches: u64,
}

impl ProcessCounters {
    pub fn read(pid: u32) -> BenchResult<ProcessCounters> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let after_name = stat
            .rfind(')')
            .map(|at| &stat[at + 1..])
            .ok_or_else(|| bench_error(format!("malformed /proc/{pid}/stat")))?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 (utime) and 15 (stime) of proc(5); the first after the name is field 3.
        let ticks = |index: usize| -> BenchResult<u64> {
            fields
                .get(index - 3)
                .and_then(|field| field.parse().ok())
                .ok_or_else(|| bench_error(format!("malformed /proc/{pid}/stat")))
        };
        let cpu_ticks = ticks(14)? + ticks(15)?;
        let mut context_switches = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
                // The thread exited between the listing and the read.
                continue;
            };
            for line in status.lines() {
                if let Some(count) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    context_switches += count.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        Ok(ProcessCounters {
            cpu_micros: cpu_ticks * (1_000_000 / TICKS_PER_SECOND),
            context_switches,
        })
    }

    /// What happened between `self` (earlier) and `later`, per call.
    pub fn per_call(self, later: ProcessCounters, calls: usize) -> PerCall {
        let calls = calls.max(1) as f64;
        PerCall {
            cpu_micros: later.cpu_micros.saturating_sub(self.cpu_micros) as f64 / calls,
            context_switches: later.context_switches.saturating_sub(self.context_switches) as f64
                / calls,
        }
    }
}

/// CPU microseconds and context switches per call.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PerCall {
    pub cpu_micros: f64,
    pub context_switches: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let first = ProcessCounters::read(std::process::id()).unwrap();
        let mut spin = 0u64;
        for index in 0..20_000_000u64 {
            spin = spin.wrapping_add(index ^ (spin >> 3));
        }
        assert_ne!(spin, 1);
        let second = ProcessCounters::read(std::process::id()).unwrap();
        assert!(second.cpu_micros >= first.cpu_micros);
        assert!(second.context_switches >= first.context_switches);
    }
}
