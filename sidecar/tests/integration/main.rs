//! Integration tests of `sidecar`, one test binary for the whole crate.
//!
//! Each module is one concern; they share a binary because every test binary links the
//! whole dependency tree (TLS, SQLite, the MCP stack), and one binary per file multiplied
//! the build's disk use and link time for no gain in isolation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is the failure report

mod cli;
mod common;
mod config;
mod cpgw_data;
mod journal;
mod orders;
mod pairing;
mod primitives;
mod relay;
mod service;
