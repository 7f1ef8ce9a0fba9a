//! Integration tests of `gateway`, one test binary for the whole crate.
//!
//! Each module is one concern; they share a binary because every test binary links the
//! whole dependency tree (TLS, SQLite, the MCP stack), and one binary per file multiplied
//! the build's disk use and link time for no gain in isolation. The audit-log test keeps a
//! binary of its own (`tests/audit_log.rs`): it captures process-wide `tracing` output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is the failure report

mod audit_chain;
mod audit_store;
mod bad_tokens;
mod common;
mod config_table;
mod connections;
mod gates;
mod isolation;
mod key_continuity;
mod oauth;
mod operations;
mod pairing;
mod rate_limits;
mod relay;
mod sessions;
mod store_concurrency;
mod transport;
