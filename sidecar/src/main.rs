#![forbid(unsafe_code)]
//! `ibkr-agent`: see [`ibkr_agent::cli`].

/// The gateway's allocator (jemalloc), so the two halves behave alike; see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    ibkr_agent::cli::main()
}
