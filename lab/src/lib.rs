//! Harness for sesame's end-to-end tests: real binaries, the real kernel, network namespaces.
//!
//! A [`Lab`] is three network namespaces joined by two veth pairs:
//!
//! ```text
//!   client ns                server ns                  attacker ns
//!   c-srv 198.18.N.2 ──── s-cli 198.18.N.1
//!         2001:db8:N::2        2001:db8:N::1
//!                             s-att 198.19.N.1 ──── a-srv 198.19.N.2
//!                                   2001:db8:N:a::1       2001:db8:N:a::2
//! ```
//!
//! The client and the attacker route everything through the server (which does not forward),
//! so both can reach every server address. Everything a lab creates (namespaces, processes,
//! its temporary directory) is removed when it is dropped, also when a test panics; a process
//! dropped during a panic prints its output, so a failing test shows the daemon's log.
//!
//! Environment knobs: `SESAME_E2E_KEEP=1` keeps the lab directory (and prints its path),
//! `SESAME_E2E_RUST_LOG` sets sesamed's `RUST_LOG` (default `info`), `SESAME_E2E_BIN_DIR`
//! overrides where `sesame`, `sesamed` and `sesame-netprobe` are looked up.
//!
//! Modules, by job:
//! - [`lab`]: the [`Lab`] (namespaces, addresses, its directory, running programs in it);
//!   [`topology`] adds to it (a NAT'd LAN, extra hosts, link faults); [`netns`] probes the
//!   machine and removes what earlier runs left.
//! - [`process`]: the workspace's binaries, signals, [`Proc`] (a background process and its
//!   output); [`daemon`]: `sesame` and `sesamed` in a lab; [`probes`]: `sesame-netprobe`
//!   (service, connections, captures).
//! - [`spec`]: the daemon's configuration and client profiles, as TOML.
//! - [`pcap`]: reading tcpdump's captures.
//! - [`skip`]: the skip policy (skip outside CI, fail in CI).
//! - [`procfs`], [`rng`], [`args`]: shared with the flood generator and the benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod args;
pub mod daemon;
pub mod lab;
pub mod netns;
pub mod pcap;
pub mod probes;
pub mod process;
pub mod procfs;
pub mod rng;
pub mod skip;
pub mod spec;
pub mod topology;

pub use args::Args;
pub use lab::{
    ATTACKER_IF, CLIENT_IF, Family, Host, Key, LAN_PREFIX, Lab, NETNS_ETC, SERVER_IF_ATTACKER,
    SERVER_IF_CLIENT,
};
pub use netns::PREFIX;
pub use probes::{Capture, Held};
pub use process::{Proc, bin, bin_dir, signal, text};
pub use procfs::{ProcStats, clk_tck, proc_stats};
pub use rng::Rng;
pub use skip::{SKIP_LOG_ENV, in_ci, require_netns, skip};
pub use spec::{ClientSpec, DaemonSpec, KnockSpec, ProfileSpec, set_profile_key};
