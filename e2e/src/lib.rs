#![forbid(unsafe_code)]
//! Test infrastructure for the IBKR agent gateway: a CPGW simulator, a
//! development OAuth issuer, end-to-end tests, the demo and benchmarks.

pub mod authorization;
pub mod balancer;
pub mod cluster;
pub mod cpgw_sim;
pub mod dev_issuer;
pub mod fault_proxy;
pub mod private_nats;
pub mod private_postgres;
pub mod processes;
pub mod raw_sidecar;
pub mod small_disk;
pub mod system;

/// Logging for the demo and the benchmark: errors only (unless `RUST_LOG` says otherwise), on
/// stderr, so the report on stdout stays readable.
pub fn log_errors_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
