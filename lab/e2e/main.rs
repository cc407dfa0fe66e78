//! End-to-end tests of sesame: the real `sesame` and `sesamed` binaries, the real kernel
//! (nftables, AF_PACKET), three network namespaces per test. They need root; without it they
//! are skipped, except in CI (`CI=true`) where they fail.
//!
//! Run: `cargo build --workspace --bins && cargo test -p sesame-tests --test e2e`
//! (`cargo test --workspace` builds the binaries itself).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actions;
mod boot;
mod capture_filter;
mod clock;
mod command_backend;
mod common;
mod connection;
mod debian;
mod docker;
mod dualstack;
mod embedding;
mod faults;
mod fence;
mod first_run;
mod fleet;
mod flood;
mod harness;
mod install;
mod instance;
mod lease;
mod metrics;
mod nat;
mod netbench;
mod netlink;
mod operator;
mod owners;
mod prefix;
mod privilege;
mod refusals;
mod reload;
mod replay;
mod scan_nmap;
mod scan_sweep;
mod secrets;
mod sender;
mod silence;
mod spoof;
mod ssh;
mod storm;
mod variants;
mod wait;
