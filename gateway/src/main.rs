//! `ibkr-gateway`: see [`ibkr_gateway::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ibkr_gateway::cli::main()
}
