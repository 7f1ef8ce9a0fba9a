#![forbid(unsafe_code)]
//! `ibkr-agent`: see [`ibkr_agent::cli`].

fn main() -> std::process::ExitCode {
    ibkr_agent::cli::main()
}
