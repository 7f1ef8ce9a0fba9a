//! `ibkr-gateway`: see [`ibkr_gateway::cli`].
#![forbid(unsafe_code)]

/// jemalloc rather than the system allocator: it hands memory back to the system a few
/// seconds after it is freed (MCP sessions that closed, a burst that passed), where glibc's
/// allocator keeps the peak resident; see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    ibkr_gateway::cli::main()
}
