//! Integration tests of `e2e`, one test binary for the whole crate.
//!
//! Each module is one concern; they share a binary because every test binary links the
//! whole dependency tree (TLS, SQLite, the MCP stack), and one binary per file multiplied
//! the build's disk use and link time for no gain in isolation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is the failure report

mod approvals;
mod authorization;
mod broker_faults;
mod browser;
mod cluster;
mod cluster_balanced;
mod console;
mod corrupt_state;
mod disk_faults;
mod doctor;
mod faults;
mod flow_control;
mod key_rotation;
mod local_grants;
mod mcp_revisions;
mod order_safety;
mod pairing;
mod pause;
mod quotes;
mod real_clients;
mod relay_gates;
mod scope_challenge;
mod shared_store;
mod tamper;
mod trading;
mod trading_support;
mod walking_skeleton;
mod walkthrough;
