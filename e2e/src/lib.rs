#![forbid(unsafe_code)]
//! Test infrastructure for the IBKR agent gateway: a CPGW simulator, a
//! development OAuth issuer, end-to-end tests, the demo and benchmarks.

pub mod cpgw_sim;
pub mod dev_issuer;
pub mod raw_sidecar;
pub mod system;
