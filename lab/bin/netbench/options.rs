//! The command line: the benchmark's options, the `filter` and `floor-send` subcommands.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::Result;
use crate::flood::{ALL_FLOOD_KINDS, FloodKind};
use crate::lab::POOL_MAX;

/// The command line. `--help` prints the usage of the crate's documentation ([`crate::usage`]).
#[derive(Debug, Parser)]
#[command(
    name = "sesame-netbench",
    args_override_self = true,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Sub>,
    #[command(flatten)]
    pub(crate) bench: BenchArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Sub {
    /// The floor's client: one empty UDP datagram to each PORT but the last, 136 bytes to it.
    FloorSend { addr: Ipv4Addr, ports: Vec<u16> },
    /// sesamed's capture filter under a random in-range flood.
    Filter(FilterArgs),
}

/// The benchmark's options, as given (see [`Opts`] for what they become).
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[arg(long, default_value_t = 200)]
    knocks: u64,
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
    #[arg(long, default_value_t = 5000)]
    knock_timeout_ms: u64,
    #[arg(long, default_value_t = 1000)]
    probe_us: u64,
    #[arg(long, default_value_t = 5)]
    lease: u64,
    #[arg(long)]
    systems: Option<String>,
    #[arg(long, default_value_t = 20)]
    flood_seconds: u64,
    #[arg(long, default_value_t = 50)]
    flood_knocks: u64,
    #[arg(long, default_value_t = 3000)]
    flood_timeout_ms: u64,
    #[arg(long, default_value_t = 0)]
    flood_rate: u64,
    #[arg(long, default_value = "udp,syn,payload,replay,mix")]
    flood_kinds: String,
    #[arg(long)]
    flood_senders: Option<u64>,
    #[arg(long)]
    flood_pin: bool,
    #[arg(long)]
    sequential: bool,
    #[arg(long)]
    skip_missing: bool,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `sesame-netbench filter`'s options.
#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    #[arg(long, default_value = "10,1000,100000")]
    pub(crate) clients: String,
    #[arg(long, default_value = "range,auto")]
    pub(crate) modes: String,
    #[arg(long, default_value_t = 20)]
    pub(crate) flood_seconds: u64,
    #[arg(long, default_value_t = 20)]
    pub(crate) flood_knocks: u64,
    #[arg(long, default_value_t = 0)]
    pub(crate) flood_rate: u64,
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    /// The same packets and one `nft add element`, no daemon logic.
    Floor,
    Sesame,
    Fwknop,
    Knockd,
    /// Diagnostic: sesame with its state directory on tmpfs (fsync is free there).
    SesameTmpfs,
    /// The floor applying its one element over netlink (`sesame_server::netlink`, one
    /// exclusive add, what sesamed does for a new lease) instead of running `nft`.
    FloorNetlink,
    /// Diagnostic: sesamed with `netlink = false` (an `nft -f -` run per grant).
    SesameNft,
    /// fwknopd in UDP server mode (`-U`: a UDP socket instead of libpcap), its fastest setup.
    FwknopUdp,
    /// sesamed with `state_sync = "fence"` (a grant covered by the fence writes its journal
    /// record without waiting for the disk).
    SesameFence,
}

pub(crate) const ALL_SYSTEMS: [System; 9] = [
    System::Floor,
    System::Sesame,
    System::Fwknop,
    System::Knockd,
    System::SesameTmpfs,
    System::FloorNetlink,
    System::SesameNft,
    System::FwknopUdp,
    System::SesameFence,
];

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Floor => "floor",
            System::Sesame => "sesame",
            System::Fwknop => "fwknop",
            System::Knockd => "knockd",
            System::SesameTmpfs => "sesame-tmpfs",
            System::FloorNetlink => "floor-netlink",
            System::SesameNft => "sesame-nft",
            System::FwknopUdp => "fwknop-udp",
            System::SesameFence => "sesame-fence",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<System> {
        ALL_SYSTEMS
            .iter()
            .copied()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown system {s}"))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) knocks: usize,
    pub(crate) warmup: usize,
    pub(crate) gap_ms: u64,
    pub(crate) knock_timeout: Duration,
    pub(crate) probe_interval: Duration,
    pub(crate) lease: u32,
    pub(crate) systems: Vec<System>,
    pub(crate) flood_seconds: u64,
    pub(crate) flood_knocks: usize,
    pub(crate) flood_timeout: Duration,
    pub(crate) flood_rate: u64,
    pub(crate) flood_kinds: Vec<FloodKind>,
    /// Sender processes per flood (a mixed flood has at least one per kind).
    pub(crate) flood_senders: usize,
    /// During each flood, the daemon and the client on CPU 0, the senders on the others.
    pub(crate) flood_pin: bool,
    pub(crate) skip_missing: bool,
    pub(crate) sequential: bool,
    pub(crate) json: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            knocks: 200,
            warmup: 3,
            gap_ms: 100,
            knock_timeout: Duration::from_millis(5000),
            probe_interval: Duration::from_micros(1000),
            lease: 5,
            systems: ALL_SYSTEMS.to_vec(),
            flood_seconds: 20,
            flood_knocks: 50,
            flood_timeout: Duration::from_millis(3000),
            flood_rate: 0,
            flood_kinds: ALL_FLOOD_KINDS.to_vec(),
            flood_senders: cpus(),
            flood_pin: false,
            skip_missing: false,
            sequential: false,
            json: None,
        }
    }
}

impl Opts {
    /// The options of a run from the command line's (checked: at least one knock, and no
    /// more knocks than client addresses).
    pub(crate) fn new(a: BenchArgs) -> Result<Opts> {
        let systems = match &a.systems {
            Some(v) => v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(System::parse)
                .collect::<Result<_>>()?,
            None => ALL_SYSTEMS.to_vec(),
        };
        let o = Opts {
            knocks: a.knocks as usize,
            warmup: a.warmup as usize,
            gap_ms: a.gap_ms,
            knock_timeout: Duration::from_millis(a.knock_timeout_ms),
            probe_interval: Duration::from_micros(a.probe_us.max(100)),
            lease: u32::try_from(a.lease.clamp(1, 3600)).map_err(|_| "--lease")?,
            systems,
            flood_seconds: a.flood_seconds,
            flood_knocks: a.flood_knocks as usize,
            flood_timeout: Duration::from_millis(a.flood_timeout_ms),
            flood_rate: a.flood_rate,
            flood_kinds: a
                .flood_kinds
                .split(',')
                .filter(|s| !s.is_empty())
                .map(FloodKind::parse)
                .collect::<Result<_>>()?,
            flood_senders: match a.flood_senders {
                Some(0) => return Err("--flood-senders must be at least 1".into()),
                Some(n) => n as usize,
                None => cpus(),
            },
            flood_pin: a.flood_pin,
            skip_missing: a.skip_missing,
            sequential: a.sequential,
            json: a.json,
        };
        if o.knocks == 0 {
            return Err("--knocks must be at least 1".into());
        }
        // Each flood takes its knocks' addresses and one for a captured knock.
        let floods = if o.flood_seconds > 0 {
            o.flood_kinds.len()
        } else {
            0
        };
        if o.warmup + o.knocks + floods * (o.flood_knocks + 1) > POOL_MAX {
            return Err(format!(
                "too many knocks for one lab: at most {POOL_MAX} client addresses"
            ));
        }
        Ok(o)
    }
}

/// The number of CPUs this process may run on.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
