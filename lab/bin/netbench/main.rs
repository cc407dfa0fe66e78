//! `sesame-netbench`: sesame against fwknop and knockd, side by side, in network namespaces.
//!
//! For each system in turn (the floor, sesame, fwknop, knockd), in fresh namespaces built with
//! the e2e harness ([`sesame_tests::Lab`]): a TCP service (`sesame-netprobe serve`) on tcp/22
//! of the server, hidden by the system's firewall, then `--knocks` knocks from the client
//! namespace, one at a time. A knock is timed from the moment the client process is started to
//! the first TCP connection to the service that completes; connection attempts start with the
//! client process and are repeated every `--probe-us` (each attempt sends a fresh SYN and lives
//! `PROBE_LIFE`), so the resolution is the probe interval. Then, for each flood kind of
//! `--flood-kinds`, each system in turn (what each kind sends to each system:
//! [`flood::scenario`]): `--flood-senders` `sesame-flood` processes flood from the attacker
//! namespace (spoofed sources, as fast as they can) while the client knocks `--flood-knocks` times; the rate
//! offered, arrived and handled by the daemon, the share that opens within
//! `--flood-timeout-ms`, its latency, the daemon's CPU and its peak RSS are reported.
//!
//! ```text
//! sesame-netbench [options]                       run the benchmark (root; see BENCHMARKS.md)
//!   --knocks N            measured knocks per system (default 200)
//!   --warmup N            unmeasured knocks before them (default 3)
//!   --gap-ms N            pause after each knock, uniform in [N, 2N] ms (default 100)
//!   --knock-timeout-ms N  a knock that has not opened by then fails (default 5000)
//!   --probe-us N          a new connection attempt every N µs (default 1000)
//!   --lease N             lease / access timeout of every system, seconds (default 5)
//!   --systems LIST        comma-separated, in this order: floor, sesame, fwknop, knockd,
//!                         sesame-tmpfs, floor-netlink, sesame-nft, fwknop-udp, sesame-fence
//!                         (default: all)
//!   --flood-seconds N     shortest flood per scenario, 0 = no floods (default 20)
//!   --flood-knocks N      legitimate knocks during each flood (default 50)
//!   --flood-timeout-ms N  a knock under flood that has not opened by then fails (default 3000)
//!   --flood-rate PPS      flood rate of all senders together, 0 = as fast as possible
//!                         (default 0)
//!   --flood-kinds LIST    comma-separated flood kinds, in this order: udp (garbage where
//!                         the system listens), syn (TCP SYNs), payload (fakes of its knock),
//!                         replay (a captured knock replayed from the spoofed sources), mix
//!                         (all four at once) (default udp,syn,payload,replay,mix)
//!   --flood-senders N     sender processes per flood, each from its own slice of the spoofed
//!                         sources (default: the number of CPUs; mix: at least 4)
//!   --flood-pin           during each flood, pin the daemon and the client to CPU 0 and
//!                         the senders to the other CPUs (in turn)
//!   --sequential          all of one system's knocks, then the next system's (default:
//!                         interleaved: round by round, every system once per round, in a
//!                         random order, so that a change in the machine's load hits all alike)
//!   --skip-missing        skip a peer whose programs are not installed (default: error)
//!   --json FILE           also write every figure as JSON lines to FILE
//! sesame-netbench floor-send ADDR PORT...          the floor's client: one empty UDP datagram
//!                                                  to each PORT but the last, 136 bytes to it
//! sesame-netbench filter [options]                 sesamed's capture filter under a random
//!                                                  in-range flood, the range filter against the
//!                                                  live-port one, at several client counts:
//!   --clients LIST        comma-separated client counts (default 10,1000,100000)
//!   --modes LIST          SESAMED_CAPTURE_FILTER values, in this order (default range,auto)
//!   --flood-seconds N     shortest flood per run (default 20)
//!   --flood-knocks N      legitimate knocks during each flood (default 20)
//!   --flood-rate PPS      flood rate, 0 = as fast as possible (default 0)
//!   --json FILE           also write every figure as JSON lines to FILE
//! ```
//!
//! Every system gets the same topology, service, probe and client addresses. The server's two
//! links are joined by a bridge (`s-lan`, 198.18.N.1) so that the legitimate client and the
//! flood arrive on the one interface every daemon watches, as on a server with one uplink.
//! Each knock comes from a fresh client address (198.18.240.0/20, one per knock, the server's
//! neighbour entries for them set in advance), so every knock really opens and no daemon keeps
//! state from one knock to the next. Environment: `SESAME_E2E_KEEP=1` keeps the lab
//! directories (daemon logs, configurations).
//!
//! Exit status: 0 done (failed knocks are figures, not errors), 2 usage or setup error.
//! Everything it sends stays in the namespaces it creates (198.18.0.0/15).
//!
//! The modules, by job: [`options`] (the command line), [`lab`] (the namespaces, the client
//! address pool, daemons), [`systems`] (setting up each system), [`floor`] (the floor's
//! listener and client), [`knock`] (a timed knock and its connection probe), [`flood`] (the
//! flood phases), [`breakdown`] (where sesame's time goes, from its log), [`stats`],
//! [`run`] (the benchmark's phases), [`report`] (the Markdown tables and JSON lines),
//! [`filter`] (the `filter` subcommand), [`util`] (programs, namespaces, /proc, time).

mod breakdown;
mod filter;
mod flood;
mod floor;
mod knock;
mod lab;
mod options;
mod report;
mod run;
mod stats;
mod systems;
mod util;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::options::{Cli, Opts, Sub};

pub(crate) type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let matches = match Cli::command().override_help(usage()).try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            // Usage errors exit with 2, `--help` with 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = Cli::from_arg_matches(&matches)
        .map_err(|e| e.to_string())
        .and_then(|cli| match cli.command {
            Some(Sub::FloorSend { addr, ports }) => floor::floor_send(addr, &ports),
            Some(Sub::Filter(args)) => filter::filter_bench(args),
            None => Opts::new(cli.bench).and_then(|o| run::bench(&o)),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesame-netbench: {e}");
            ExitCode::from(2)
        }
    }
}

/// The usage text: the block of the crate's documentation above.
fn usage() -> String {
    let doc = include_str!("main.rs");
    let mut out = String::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("//! ```") {
            if inside {
                break;
            }
            inside = true;
            continue;
        }
        if inside {
            out.push_str(line.trim_start_matches("//! "));
            out.push('\n');
        }
    }
    out
}
