//! `ibkr-gateway`: see [`ibkr_gateway::cli`].
#![forbid(unsafe_code)]

/// jemalloc rather than the system allocator: it hands memory back to the system a few
/// seconds after it is freed (MCP sessions that closed, a burst that passed), where glibc's
/// allocator keeps the peak resident; see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // Purge on jemalloc's own thread, on time: without it freed pages go back only when the
    // process allocates again, and an idle gateway would keep the peak of a burst.
    if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!(
            "warning: jemalloc's background purging is off ({error}); freed memory returns later"
        );
    }
    ibkr_gateway::cli::main()
}
