//! `sesame-netbench`: sesame against fwknop and knockd, side by side, in network namespaces.
//!
//! For each system in turn (the floor, sesame, fwknop, knockd), in fresh namespaces built with
//! the e2e harness ([`sesame_tests::Lab`]): a TCP service (`sesame-netprobe serve`) on tcp/22
//! of the server, hidden by the system's firewall, then `--knocks` knocks from the client
//! namespace, one at a time. A knock is timed from the moment the client process is started to
//! the first TCP connection to the service that completes; connection attempts start with the
//! client process and are repeated every `--probe-us` (each attempt sends a fresh SYN and lives
//! `PROBE_LIFE`), so the resolution is the probe interval. Then, for each flood scenario of the
//! system, `sesame-flood` floods from the attacker namespace (spoofed sources, as fast as it
//! can) while the client knocks `--flood-knocks` times; the share that opens within
//! `--flood-timeout-ms`, the daemon's CPU and its peak RSS are reported.
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
//!                         sesame-tmpfs, floor-netlink, sesame-nft, fwknop-udp (default: all)
//!   --flood-seconds N     shortest flood per scenario, 0 = no floods (default 20)
//!   --flood-knocks N      legitimate knocks during each flood (default 50)
//!   --flood-timeout-ms N  a knock under flood that has not opened by then fails (default 3000)
//!   --flood-rate PPS      flood rate, 0 = as fast as possible (default 0)
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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sesame_tests::{
    ATTACKER_IF, CLIENT_IF, ClientSpec, DaemonSpec, Host, Lab, Proc, ProcStats, Rng,
    SERVER_IF_ATTACKER, SERVER_IF_CLIENT, bin, clk_tck, in_ci, proc_stats, require_netns, signal,
    text,
};
use socket2::{Domain, Protocol, Socket, Type};

type Result<T> = std::result::Result<T, String>;

/// The bridge joining the server's links; every daemon watches it.
const LAN: &str = "s-lan";
/// A fixed, locally administered MAC address for the bridge.
const LAN_MAC: &str = "02:5e:5a:00:00:01";
/// Client addresses, one per knock: 198.18.240.1 … 198.18.255.254.
const POOL_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 0);
const POOL_PREFIX: &str = "198.18.240.0/20";
const POOL_MAX: usize = 4094;
/// The protected service.
const SERVICE_PORT: u16 = 22;
/// sesamed's default knock range (also where knockd's sequence lives).
const SESAME_RANGE: (u16, u16) = (10000, 32767);
/// knockd's sequence: three UDP ports, out of order, inside sesame's range.
const KNOCKD_SEQUENCE: [u16; 3] = [15002, 15001, 15003];
/// fwknop's default SPA port.
const FWKNOP_PORT: u16 = 62201;
/// The floor's four ports (three knocks and a 136-byte datagram, like sesame's knock).
const FLOOR_PORTS: [u16; 4] = [20001, 20002, 20003, 20004];
/// Size of sesame's payload datagram.
const PAYLOAD_LEN: usize = 136;
/// `PATH` of every daemon and of the floor's listener.
const DAEMON_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long one connection attempt waits for its SYN-ACK before it is abandoned.
const PROBE_LIFE: Duration = Duration::from_millis(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("floor-send") => floor_send(&args[1..]),
        Some("filter") => filter_bench(&args[1..]),
        Some("-h" | "--help") => {
            print!("{}", usage());
            Ok(())
        }
        _ => Opts::parse(&args).and_then(|o| bench(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesame-netbench: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage() -> String {
    let doc = include_str!("netbench.rs");
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

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
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
}

const ALL_SYSTEMS: [System; 8] = [
    System::Floor,
    System::Sesame,
    System::Fwknop,
    System::Knockd,
    System::SesameTmpfs,
    System::FloorNetlink,
    System::SesameNft,
    System::FwknopUdp,
];

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Floor => "floor",
            System::Sesame => "sesame",
            System::Fwknop => "fwknop",
            System::Knockd => "knockd",
            System::SesameTmpfs => "sesame-tmpfs",
            System::FloorNetlink => "floor-netlink",
            System::SesameNft => "sesame-nft",
            System::FwknopUdp => "fwknop-udp",
        }
    }

    fn parse(s: &str) -> Result<System> {
        ALL_SYSTEMS
            .iter()
            .copied()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown system {s}"))
    }

    /// Flood scenarios: (name, lowest port, highest port) of the garbage.
    fn floods(self) -> Vec<(&'static str, u16, u16)> {
        match self {
            System::Sesame => vec![("range", SESAME_RANGE.0, SESAME_RANGE.1)],
            System::Fwknop | System::FwknopUdp => {
                vec![("spa-port", FWKNOP_PORT, FWKNOP_PORT)]
            }
            System::Knockd => vec![
                ("range", SESAME_RANGE.0, SESAME_RANGE.1),
                ("sequence-ports", 15001, 15003),
            ],
            System::Floor | System::SesameTmpfs | System::FloorNetlink | System::SesameNft => {
                Vec::new()
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Opts {
    knocks: usize,
    warmup: usize,
    gap_ms: u64,
    knock_timeout: Duration,
    probe_interval: Duration,
    lease: u32,
    systems: Vec<System>,
    flood_seconds: u64,
    flood_knocks: usize,
    flood_timeout: Duration,
    flood_rate: u64,
    skip_missing: bool,
    sequential: bool,
    json: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts {
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
            skip_missing: false,
            sequential: false,
            json: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--skip-missing" {
                o.skip_missing = true;
                continue;
            }
            if a == "--sequential" {
                o.sequential = true;
                continue;
            }
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a} (see --help)"))?;
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            let num = || -> Result<u64> {
                v.parse()
                    .map_err(|_| format!("--{name}: not a number: {v}"))
            };
            match name {
                "knocks" => o.knocks = num()? as usize,
                "warmup" => o.warmup = num()? as usize,
                "gap-ms" => o.gap_ms = num()?,
                "knock-timeout-ms" => o.knock_timeout = Duration::from_millis(num()?),
                "probe-us" => o.probe_interval = Duration::from_micros(num()?.max(100)),
                "lease" => {
                    o.lease = u32::try_from(num()?.clamp(1, 3600)).map_err(|_| "--lease")?;
                }
                "systems" => {
                    o.systems = v
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(System::parse)
                        .collect::<Result<_>>()?;
                }
                "flood-seconds" => o.flood_seconds = num()?,
                "flood-knocks" => o.flood_knocks = num()? as usize,
                "flood-timeout-ms" => o.flood_timeout = Duration::from_millis(num()?),
                "flood-rate" => o.flood_rate = num()?,
                "json" => o.json = Some(PathBuf::from(v)),
                other => return Err(format!("unknown option --{other} (see --help)")),
            }
        }
        if o.knocks == 0 {
            return Err("--knocks must be at least 1".into());
        }
        let floods = if o.flood_seconds > 0 { 2 } else { 0 };
        if o.warmup + o.knocks + floods * o.flood_knocks > POOL_MAX {
            return Err(format!(
                "too many knocks for one lab: at most {POOL_MAX} client addresses"
            ));
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// The full path of a program found in `PATH` (and the sbin directories, which a non-login
/// root shell may lack).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn need_program(name: &str) -> Result<PathBuf> {
    find_program(name).ok_or_else(|| format!("{name} not found"))
}

/// Runs a command to completion; its stdout, or an error with everything it said.
fn run_cmd(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!("{cmd:?} failed: {}", text(&o)))
    }
}

/// Runs `program args` in a namespace (`ip netns exec`).
fn ns_run(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    run_cmd(
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args),
    )
}

/// Feeds `commands` to `ip -n NS -batch -`.
fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(commands.as_bytes())
        .map_err(|e| format!("ip -batch: {e}"))?;
    let o = child
        .wait_with_output()
        .map_err(|e| format!("ip -batch: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip -n {ns} -batch failed: {}", text(&o)))
    }
}

/// Moves the calling thread into a network namespace; processes it starts afterwards and
/// sockets it opens live there too.
fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: `f` is an open namespace file for the whole call; setns changes only the
    // calling thread's network namespace and has no memory-safety preconditions.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn pool_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(POOL_BASE) + 1 + i as u32)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_secs_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (y, m, d) of a day number.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `2026-11-25T17:51:52.123456Z` (tracing's timestamps) as seconds since the epoch.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    Some((days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let r = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        r / 3600,
        r % 3600 / 60,
        r % 60
    )
}

// ---------------------------------------------------------------------------------------------
// The floor's client

fn floor_send(args: &[String]) -> Result<()> {
    let (dest, ports) = args
        .split_first()
        .ok_or("usage: sesame-netbench floor-send ADDR PORT...")?;
    let dest: Ipv4Addr = dest
        .parse()
        .map_err(|_| format!("not an address: {dest}"))?;
    let ports: Vec<u16> = ports
        .iter()
        .map(|p| p.parse().map_err(|_| format!("not a port: {p}")))
        .collect::<Result<_>>()?;
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let payload = [0u8; PAYLOAD_LEN];
    for (i, port) in ports.iter().enumerate() {
        let data: &[u8] = if i + 1 == ports.len() { &payload } else { &[] };
        sock.send_to(data, SocketAddrV4::new(dest, *port))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /proc figures

/// The `cpu` line of /proc/stat: (busy, nice, total) jiffies over all CPUs.
fn cpu_jiffies() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    let idle = at(3) + at(4);
    (total - idle, at(1), total)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Daemons (output to a file: a flood can make a daemon log a lot)

struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(
        lab: &Lab,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let log = lab.path(&format!("{name}.out"));
        let f = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", lab.ns(Host::Server)])
            .arg(program)
            .args(args)
            .current_dir(&lab.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            // What a service manager gives a daemon (sesamed finds `nft` in it).
            .env("PATH", DAEMON_PATH);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `file` contains `pat`; fails if the daemon exits first.
    fn wait_for(&mut self, file: &Path, pat: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let content = std::fs::read_to_string(file).unwrap_or_default();
            if content.contains(pat) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before `{pat}`; output:\n{}",
                    self.name,
                    self.output()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no `{pat}` in {} within {timeout:?}; output:\n{}",
                    self.name,
                    file.display(),
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn check_comm(&self, expect: &str) -> Result<()> {
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", self.pid())).unwrap_or_default();
        if comm.trim() == expect {
            Ok(())
        } else {
            Err(format!(
                "pid {} is {:?}, not {expect}: the figures would be another process's",
                self.pid(),
                comm.trim()
            ))
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGTERM);
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The testbed: a lab with the server's links bridged, the client address pool and the service

struct Bed {
    /// Per-system state that must go before the lab (daemons, the floor's listener).
    daemon: Option<Daemon>,
    floor: Option<FloorListener>,
    service: Option<Proc>,
    server: Ipv4Addr,
    pool: usize,
    next: usize,
    lab: Lab,
}

impl Bed {
    fn new(tag: &str, pool: usize) -> Result<Bed> {
        let lab = Lab::new(tag);
        let server = lab.v4(Host::Server);
        let attacker_side = lab.server_v4_attacker_side();
        let s = lab.ns(Host::Server).to_owned();
        let c = lab.ns(Host::Client).to_owned();
        let n = lab.n;
        // The server's two links become ports of one bridge that holds its addresses.
        ip_batch(
            &s,
            &format!(
                "link add {LAN} type bridge\n\
                 link set {LAN} address {LAN_MAC}\n\
                 address flush dev {SERVER_IF_CLIENT}\n\
                 address flush dev {SERVER_IF_ATTACKER}\n\
                 link set {SERVER_IF_CLIENT} master {LAN}\n\
                 link set {SERVER_IF_ATTACKER} master {LAN}\n\
                 address add {server}/24 dev {LAN}\n\
                 address add {attacker_side}/24 dev {LAN}\n\
                 address add 2001:db8:{n:x}::1/64 dev {LAN} nodad\n\
                 link set {LAN} up\n\
                 route add {POOL_PREFIX} dev {LAN} src {server}\n"
            ),
        )?;
        let client_mac = lab.mac(Host::Client, CLIENT_IF);
        let mut srv = String::new();
        let mut cli =
            format!("neigh replace {server} lladdr {LAN_MAC} dev {CLIENT_IF} nud permanent\n");
        for i in 0..pool {
            let a = pool_addr(i);
            let _ = writeln!(cli, "address add {a}/32 dev {CLIENT_IF}");
            let _ = writeln!(
                srv,
                "neigh replace {a} lladdr {client_mac} dev {LAN} nud permanent"
            );
        }
        ip_batch(&s, &srv)?;
        ip_batch(&c, &cli)?;
        let service = lab.serve(&[SocketAddr::from(SocketAddrV4::new(server, SERVICE_PORT))]);
        Ok(Bed {
            daemon: None,
            floor: None,
            service: Some(service),
            server,
            pool,
            next: 0,
            lab,
        })
    }

    /// The next `n` unused client addresses.
    fn take(&mut self, n: usize) -> Result<Vec<Ipv4Addr>> {
        if self.next + n > self.pool {
            return Err("internal: client address pool exhausted".into());
        }
        let v = (self.next..self.next + n).map(pool_addr).collect();
        self.next += n;
        Ok(v)
    }

    fn server_ns(&self) -> &str {
        self.lab.ns(Host::Server)
    }

    /// `iptables` rules like a typical host firewall for the iptables peers: established
    /// traffic passes, new connections to the service are dropped.
    fn iptables_gate(&self, iptables: &Path) -> Result<()> {
        let ipt = iptables.to_string_lossy();
        let port = SERVICE_PORT.to_string();
        ns_run(
            self.server_ns(),
            &ipt,
            &[
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        )?;
        ns_run(
            self.server_ns(),
            &ipt,
            &["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"],
        )?;
        Ok(())
    }

    /// True if a connection from the client's own address opens now (the gate check).
    fn service_reachable(&self) -> bool {
        self.lab.connects(
            Host::Client,
            SocketAddr::from(SocketAddrV4::new(self.server, SERVICE_PORT)),
            300,
        )
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.floor = None;
        self.daemon = None;
        self.service = None;
    }
}

// ---------------------------------------------------------------------------------------------
// The floor: the same packets, one `nft add element`, no daemon logic

/// One grant of the floor: source, first and last datagram received, nft exited (wall, s).
type FloorEvent = (String, f64, f64, f64);

struct FloorListener {
    stop: Arc<AtomicBool>,
    /// Per grant: source, first and last datagram received, nft exited (wall clock, s).
    events: Arc<Mutex<Vec<FloorEvent>>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl FloorListener {
    /// `netlink`: add the element over netlink (one exclusive add, as sesamed does for a new
    /// lease) instead of running `nft add element`.
    fn start(bed: &Bed, nft: &Path, lease: u32, netlink: bool) -> Result<FloorListener> {
        let ns = bed.server_ns().to_owned();
        let server = bed.server;
        let nft = nft.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop2 = Arc::clone(&stop);
        let events = Arc::new(Mutex::new(Vec::new()));
        let events2 = Arc::clone(&events);
        let thread = std::thread::spawn(move || -> Result<()> {
            let setup = (|| -> Result<Vec<UdpSocket>> {
                enter_netns(&ns)?;
                FLOOR_PORTS
                    .iter()
                    .map(|p| {
                        let s = UdpSocket::bind(SocketAddrV4::new(server, *p))
                            .map_err(|e| format!("bind {server}:{p}: {e}"))?;
                        s.set_read_timeout(Some(Duration::from_millis(200)))
                            .map_err(|e| e.to_string())?;
                        Ok(s)
                    })
                    .collect()
            })();
            let socks = match setup {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let mut buf = [0u8; 2048];
            'outer: while !stop2.load(Ordering::Relaxed) {
                let Ok((_, first)) = socks[0].recv_from(&mut buf) else {
                    continue;
                };
                let first_at = unix_secs_f64(SystemTime::now());
                for s in &socks[1..] {
                    match s.recv_from(&mut buf) {
                        Ok((_, from)) if from.ip() == first.ip() => {}
                        _ => continue 'outer,
                    }
                }
                let last_at = unix_secs_f64(SystemTime::now());
                let ip = first.ip();
                let element = format!("{{ {ip} . tcp . {SERVICE_PORT} timeout {lease}s }}");
                if netlink {
                    use sesame_server::netlink::{ElementOp, apply, element_key};
                    let key = element_key(ip, libc::IPPROTO_TCP as u8, SERVICE_PORT);
                    let op = ElementOp::Create {
                        timeout_ms: u64::from(lease) * 1000,
                    };
                    apply("floor", "granted4", &key, &[op])
                        .map_err(|e| format!("netlink (grant {element}): {e}"))?;
                } else {
                    let st = Command::new(&nft)
                        .args(["add", "element", "inet", "floor", "granted4", &element])
                        .stdin(Stdio::null())
                        .status()
                        .map_err(|e| format!("nft: {e}"))?;
                    if !st.success() {
                        return Err(format!("nft (grant {element}): {st}"));
                    }
                }
                let done_at = unix_secs_f64(SystemTime::now());
                if let Ok(mut ev) = events2.lock() {
                    ev.push((ip.to_string(), first_at, last_at, done_at));
                }
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the floor's listener did not start".to_owned())??;
        Ok(FloorListener {
            stop,
            events,
            thread: Some(thread),
        })
    }
}

impl Drop for FloorListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn floor_ruleset() -> String {
    format!(
        "table inet floor {{
    set granted4 {{ type ipv4_addr . inet_proto . inet_service; flags timeout; }}
    chain gate {{
        type filter hook input priority filter - 10; policy accept;
        ct state established,related accept
        iif lo accept
        ip saddr . meta l4proto . th dport @granted4 accept
        meta l4proto . th dport {{ tcp . {SERVICE_PORT} }} drop
    }}
}}
"
    )
}

// ---------------------------------------------------------------------------------------------
// Knocks and the connection probe

/// How one knock went.
#[derive(Clone, Debug)]
struct Knock {
    source: Ipv4Addr,
    /// Wall clock at the client's start (for matching daemon log lines).
    started_wall: f64,
    /// From the client's start to the first completed connection.
    open: Option<Duration>,
    /// From the client's start to its exit (as seen by the probe loop).
    client_exit: Option<Duration>,
    client_ok: bool,
    attempts: u32,
}

fn attempt(src: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(src, 0)).into())?;
    match s.connect(&SocketAddr::from(dst).into()) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(e),
    }
}

/// Starts the client and tries new connections from `src` every `interval` until one
/// completes or `timeout` passes. Runs in the client's namespace.
fn knock_once(
    mut cmd: Command,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    interval: Duration,
    timeout: Duration,
) -> Result<Knock> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started_wall = unix_secs_f64(SystemTime::now());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut client_exit = None;
    let mut client_ok = false;
    let mut inflight: Vec<(Socket, Instant)> = Vec::new();
    let mut next = start;
    let mut attempts = 0u32;
    let deadline = start + timeout;
    let mut open = None;
    while open.is_none() {
        let now = Instant::now();
        if client_exit.is_none() {
            if let Ok(Some(st)) = child.try_wait() {
                client_exit = Some(now - start);
                client_ok = st.success();
            }
        }
        if now >= deadline {
            break;
        }
        if now >= next {
            inflight.push((
                attempt(src, dst).map_err(|e| format!("connect from {src}: {e}"))?,
                now,
            ));
            attempts += 1;
            next += interval;
            if next <= now {
                next = now + interval;
            }
        }
        inflight.retain(|(_, t)| now.duration_since(*t) < PROBE_LIFE);
        let mut fds: Vec<libc::pollfd> = inflight
            .iter()
            .map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let wait = next.min(deadline).saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs
        // for the duration of the call; `ts` outlives it; a null sigmask is allowed.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        let after = Instant::now();
        if n <= 0 {
            continue;
        }
        let mut failed = Vec::new();
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            match inflight[i].0.take_error() {
                Ok(None) => {
                    open = Some(after - start);
                    // Abort (RST) rather than leave a TIME_WAIT per knock.
                    let _ = inflight[i].0.set_linger(Some(Duration::ZERO));
                    break;
                }
                _ => failed.push(i),
            }
        }
        for i in failed.into_iter().rev() {
            inflight.remove(i);
        }
    }
    drop(inflight);
    if client_exit.is_none() {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                client_exit = Some(start.elapsed());
                client_ok = st.success();
                break;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(Knock {
        source: src,
        started_wall,
        open,
        client_exit,
        client_ok,
        attempts,
    })
}

type KnockCmd<'a> = dyn Fn(Ipv4Addr) -> Command + Sync + 'a;

/// Knocks once from `src`, from a thread in the client's namespace: set the source address
/// (every program the client starts, and every probe, then uses it), start the client, probe.
fn knock_from(
    bed: &Bed,
    knock: &KnockCmd<'_>,
    src: Ipv4Addr,
    opts: &Opts,
    timeout: Duration,
) -> Result<Knock> {
    let client_ns = bed.lab.ns(Host::Client).to_owned();
    let dst = SocketAddrV4::new(bed.server, SERVICE_PORT);
    let server = bed.server;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Knock> {
                enter_netns(&client_ns)?;
                run_cmd(Command::new("ip").args([
                    "-n",
                    &client_ns,
                    "route",
                    "replace",
                    &format!("{server}/32"),
                    "dev",
                    CLIENT_IF,
                    "src",
                    &src.to_string(),
                ]))?;
                knock_once(knock(src), src, dst, opts.probe_interval, timeout)
            })
            .join()
            .map_err(|_| "the knock thread panicked".to_owned())?
    })
}

/// The pause after a knock: uniform in [gap, 2·gap], so that knocks never keep one phase
/// against a daemon's polling loop.
fn pause(rng: &mut Rng, opts: &Opts) {
    let gap = opts.gap_ms + rng.next() % (opts.gap_ms + 1);
    std::thread::sleep(Duration::from_millis(gap));
}

/// Knocks once from each of `sources`, one at a time.
fn knock_series(
    bed: &Bed,
    knock: &KnockCmd<'_>,
    sources: &[Ipv4Addr],
    opts: &Opts,
    timeout: Duration,
) -> Result<Vec<Knock>> {
    let mut rng = Rng::seeded();
    let mut out = Vec::with_capacity(sources.len());
    for &src in sources {
        out.push(knock_from(bed, knock, src, opts, timeout)?);
        pause(&mut rng, opts);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Statistics

#[derive(Clone, Debug, Default)]
struct Summary {
    n: usize,
    ok: usize,
    median: f64,
    p90: f64,
    p99: f64,
    min: f64,
    max: f64,
    mean: f64,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(values: &[f64], n: usize) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Summary {
        n,
        ok: v.len(),
        median: pct(&v, 0.5),
        p90: pct(&v, 0.9),
        p99: pct(&v, 0.99),
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
        mean: if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        },
    }
}

fn open_ms(knocks: &[Knock]) -> Vec<f64> {
    knocks.iter().filter_map(|k| k.open.map(ms)).collect()
}

fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".to_owned()
    }
}

fn summary_json(s: &Summary) -> Value {
    let num = |x: f64| {
        if x.is_finite() {
            json!((x * 1000.0).round() / 1000.0)
        } else {
            Value::Null
        }
    };
    json!({
        "knocks": s.n, "opened": s.ok, "failures": s.n - s.ok,
        "median_ms": num(s.median), "p90_ms": num(s.p90), "p99_ms": num(s.p99),
        "min_ms": num(s.min), "max_ms": num(s.max), "mean_ms": num(s.mean),
    })
}

// ---------------------------------------------------------------------------------------------
// Systems

/// A system set up in a bed: how its client knocks, and the daemon's process name.
struct Setup {
    knock: Box<KnockCmd<'static>>,
    /// Reads the sources the daemon has opened the service for, from its log.
    grants: Box<dyn Fn() -> Vec<Ipv4Addr>>,
    /// What `ps` calls the daemon (checked before reading its /proc figures).
    comm: &'static str,
    /// Extra facts for the report (versions, settings).
    notes: Value,
}

struct Tools {
    nft: PathBuf,
    iptables: Option<PathBuf>,
    fwknop: Option<PathBuf>,
    fwknopd: Option<PathBuf>,
    knock: Option<PathBuf>,
    knockd: Option<PathBuf>,
}

impl Tools {
    fn find() -> Result<Tools> {
        Ok(Tools {
            nft: need_program("nft")?,
            iptables: find_program("iptables"),
            fwknop: find_program("fwknop"),
            fwknopd: find_program("fwknopd"),
            knock: find_program("knock"),
            knockd: find_program("knockd"),
        })
    }

    /// Why a system cannot run here, if it cannot.
    fn missing(&self, s: System) -> Option<String> {
        let need: Vec<(&str, bool)> = match s {
            System::Fwknop | System::FwknopUdp => vec![
                ("fwknop (fwknop-client)", self.fwknop.is_some()),
                ("fwknopd (fwknop-server)", self.fwknopd.is_some()),
                ("iptables", self.iptables.is_some()),
            ],
            System::Knockd => vec![
                (
                    "knock, knockd (knockd)",
                    self.knock.is_some() && self.knockd.is_some(),
                ),
                ("iptables", self.iptables.is_some()),
            ],
            _ => Vec::new(),
        };
        let missing: Vec<&str> = need.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
        (!missing.is_empty()).then(|| format!("not installed: {}", missing.join(", ")))
    }
}

fn setup_floor(bed: &mut Bed, tools: &Tools, opts: &Opts, netlink: bool) -> Result<Setup> {
    let rules = bed.lab.write("floor.nft", &floor_ruleset());
    ns_run(
        bed.server_ns(),
        &tools.nft.to_string_lossy(),
        &["-f", &rules.to_string_lossy()],
    )?;
    bed.floor = Some(FloorListener::start(bed, &tools.nft, opts.lease, netlink)?);
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let server = bed.server.to_string();
    let ports: Vec<String> = FLOOR_PORTS.iter().map(u16::to_string).collect();
    Ok(Setup {
        knock: Box::new(move |_| {
            let mut c = Command::new(&me);
            c.arg("floor-send").arg(&server).args(&ports);
            c
        }),
        grants: Box::new(Vec::new),
        comm: "",
        notes: json!({
            "client": "sesame-netbench floor-send: 3 empty UDP datagrams and one of 136 bytes",
            "server": if netlink {
                "4 UDP sockets (blocking recv, same source), then one exclusive add element over netlink (sesame_server::netlink, as sesamed for a new lease)"
            } else {
                "4 UDP sockets (blocking recv, same source), then one exec of `nft add element inet floor granted4 { SRC . tcp . 22 timeout LEASE }`"
            },
        }),
    })
}

fn setup_sesame(bed: &mut Bed, opts: &Opts, tmpfs: bool, netlink: bool) -> Result<Setup> {
    let (config, profile, state_dir) = sesame_config(bed, opts, tmpfs, netlink, 1)?;
    start_sesame(bed, opts, &config, &profile, &state_dir, &[])
}

/// Writes sesamed's configuration with `clients` clients (`laptop`, whose profile is written
/// too, and `clients - 1` others with fresh keys) and checks it; returns the configuration,
/// the profile and the state directory.
fn sesame_config(
    bed: &Bed,
    opts: &Opts,
    tmpfs: bool,
    netlink: bool,
    clients: usize,
) -> Result<(PathBuf, PathBuf, String)> {
    let lab = &bed.lab;
    let server_key = lab.gen_key("server");
    let client_key = lab.gen_key("laptop");
    let mut spec = DaemonSpec::new(Path::new("server.key"));
    spec.interfaces = vec![LAN.to_owned()];
    spec.knock.port_range = SESAME_RANGE;
    spec.lease_seconds = opts.lease;
    spec.protect = vec![format!("tcp/{SERVICE_PORT}")];
    if tmpfs {
        let dir = format!("/dev/shm/sesame-netbench-{}-{}", std::process::id(), lab.n);
        let _ = std::fs::remove_dir_all(&dir);
        spec.state_dir = dir;
    }
    spec.clients
        .push(ClientSpec::new("laptop", &client_key.public));
    for i in 1..clients {
        let key = sesame_keys::PrivateKey::generate().public_key().to_base64();
        spec.clients.push(ClientSpec::new(&format!("c{i}"), &key));
    }
    let mut toml = spec.to_toml();
    if !netlink {
        toml = toml.replacen("\n[firewall]\n", "\n[firewall]\nnetlink = false\n", 1);
    }
    let config = lab.write("sesamed.toml", &toml);
    let profile = spec.profile(
        &bed.server.to_string(),
        &server_key.public,
        &client_key.path,
    );
    let profile = lab.write("laptop.toml", &profile.to_toml());
    let check = lab.sesamed(&["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
    if !check.status.success() {
        return Err(format!("sesamed check: {}", text(&check)));
    }
    Ok((config, profile, spec.state_dir))
}

/// Starts sesamed on `config` with `env` added and waits until it is ready.
fn start_sesame(
    bed: &mut Bed,
    opts: &Opts,
    config: &Path,
    profile: &Path,
    state_dir: &str,
    env: &[(&str, &str)],
) -> Result<Setup> {
    let lab = &bed.lab;
    let mut all_env = vec![("RUST_LOG", "info,sesame_server=debug"), ("NO_COLOR", "1")];
    all_env.extend_from_slice(env);
    let mut d = Daemon::spawn(
        lab,
        "sesamed",
        &bin("sesamed"),
        &[
            "run".into(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--log-format".into(),
            "json".into(),
        ],
        &all_env,
    )?;
    let log = d.log.clone();
    // Long enough for 1 000 000 clients' keys and step tables.
    d.wait_for(&log, "ready", Duration::from_secs(600))?;
    bed.daemon = Some(d);
    let sesame = bin("sesame");
    let profile = profile.to_owned();
    Ok(Setup {
        knock: Box::new(move |_| {
            let mut c = Command::new(&sesame);
            c.arg("open").arg("--profile").arg(&profile);
            c
        }),
        grants: Box::new(move || {
            log_lines(&log)
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["message"] == "granted")
                .filter_map(|v| v["source"].as_str()?.parse().ok())
                .collect()
        }),
        comm: "sesamed",
        notes: json!({
            "client": "sesame open --profile laptop.toml",
            "server": "sesamed run, nftables backend, udp knocks, length 3, payload required, range 10000-32767",
            "state_dir": state_dir,
            "interfaces": [LAN],
            "lease_seconds": opts.lease,
            "rust_log": "info,sesame_server=debug (for the breakdown)",
        }),
    })
}

fn setup_fwknop(bed: &mut Bed, tools: &Tools, opts: &Opts, udp_server: bool) -> Result<Setup> {
    let (fwknop, fwknopd, iptables) = match (&tools.fwknop, &tools.fwknopd, &tools.iptables) {
        (Some(a), Some(b), Some(c)) => (a.clone(), b.clone(), c.clone()),
        _ => return Err("fwknop is not installed".into()),
    };
    let lab = &bed.lab;
    let home = lab.path("fwknop-home");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let keys = run_cmd(
        Command::new(&fwknop)
            .args(["--key-gen", "--use-hmac"])
            .env("HOME", &home),
    )?;
    let field = |name: &str| -> Result<String> {
        keys.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| format!("fwknop --key-gen printed no {name}: {keys}"))
    };
    let key = field("KEY_BASE64:")?;
    let hmac = field("HMAC_KEY_BASE64:")?;
    bed.iptables_gate(&iptables)?;
    let run_dir = lab.path("fwknop-run");
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let conf = lab.write_secret(
        "fwknopd.conf",
        &format!(
            "PCAP_INTF {LAN};\nFWKNOP_RUN_DIR {};\nFIREWALL_EXE {};\n",
            run_dir.display(),
            iptables.display()
        ),
    );
    let access = lab.write_secret(
        "access.conf",
        &format!(
            "SOURCE ANY\nREQUIRE_SOURCE_ADDRESS Y\nKEY_BASE64 {key}\nHMAC_KEY_BASE64 {hmac}\n\
             OPEN_PORTS tcp/{SERVICE_PORT}\nFW_ACCESS_TIMEOUT {}\n",
            opts.lease
        ),
    );
    let mut args: Vec<String> = vec![
        "-f".into(),
        "-c".into(),
        conf.to_string_lossy().into_owned(),
        "-a".into(),
        access.to_string_lossy().into_owned(),
    ];
    if udp_server {
        args.push("-U".into());
    }
    let mut d = Daemon::spawn(lab, "fwknopd", &fwknopd, &args, &[])?;
    let log = d.log.clone();
    let ready = if udp_server {
        "Kicking off UDP server"
    } else {
        "main event loop"
    };
    d.wait_for(&log, ready, Duration::from_secs(20))?;
    bed.daemon = Some(d);
    let server = bed.server.to_string();
    Ok(Setup {
        knock: Box::new(move |src| {
            let mut c = Command::new(&fwknop);
            c.args(["--no-save-args", "-A"])
                .arg(format!("tcp/{SERVICE_PORT}"))
                .arg("-a")
                .arg(src.to_string())
                .arg("-D")
                .arg(&server)
                .args(["--key-base64-rijndael", &key, "--key-base64-hmac", &hmac])
                .arg("--use-hmac")
                .env("HOME", &home);
            c
        }),
        grants: Box::new(move || {
            log_lines(&log)
                .iter()
                .filter_map(|l| {
                    let rest = l.split("Added access rule to FWKNOP_INPUT for ").nth(1)?;
                    rest.split_whitespace().next()?.parse().ok()
                })
                .collect()
        }),
        comm: "fwknopd",
        notes: json!({
            "client": "fwknop --no-save-args -A tcp/22 -a SRC -D SERVER --key-base64-rijndael K --key-base64-hmac H --use-hmac",
            "server": format!(
                "fwknopd -f{} ({}, udp port {FWKNOP_PORT}, Rijndael + HMAC-SHA256, iptables-nft, FW_ACCESS_TIMEOUT {}; everything else default)",
                if udp_server { " -U" } else { "" },
                if udp_server { "UDP server mode: a socket, no libpcap" } else { "libpcap on s-lan" },
                opts.lease
            ),
            "version": package_version("fwknop-server"),
        }),
    })
}

fn setup_knockd(bed: &mut Bed, tools: &Tools, opts: &Opts) -> Result<Setup> {
    let (knock, knockd, iptables) = match (&tools.knock, &tools.knockd, &tools.iptables) {
        (Some(a), Some(b), Some(c)) => (a.clone(), b.clone(), c.clone()),
        _ => return Err("knockd is not installed".into()),
    };
    bed.iptables_gate(&iptables)?;
    let lab = &bed.lab;
    let seq: Vec<String> = KNOCKD_SEQUENCE.iter().map(|p| format!("{p}:udp")).collect();
    let logfile = lab.path("knockd.log");
    let ipt = iptables.display();
    let conf = lab.write(
        "knockd.conf",
        &format!(
            "[options]\n\tLogFile = {}\n\tInterface = {LAN}\n\n[sesame-netbench]\n\
             \tsequence = {}\n\tseq_timeout = 5\n\
             \tstart_command = {ipt} -I INPUT -s %IP% -p tcp --dport {SERVICE_PORT} -j ACCEPT\n\
             \tcmd_timeout = {}\n\
             \tstop_command = {ipt} -D INPUT -s %IP% -p tcp --dport {SERVICE_PORT} -j ACCEPT\n",
            logfile.display(),
            seq.join(","),
            opts.lease
        ),
    );
    let mut d = Daemon::spawn(
        lab,
        "knockd",
        &knockd,
        &[
            "-c".into(),
            conf.to_string_lossy().into_owned(),
            "-i".into(),
            LAN.into(),
        ],
        &[],
    )?;
    d.wait_for(&logfile, "listening on", Duration::from_secs(20))?;
    bed.daemon = Some(d);
    let server = bed.server.to_string();
    let ports: Vec<String> = KNOCKD_SEQUENCE.iter().map(u16::to_string).collect();
    Ok(Setup {
        knock: Box::new(move |_| {
            let mut c = Command::new(&knock);
            c.arg("-u").arg(&server).args(&ports);
            c
        }),
        grants: Box::new(move || {
            log_lines(&logfile)
                .iter()
                .filter(|l| l.ends_with(": OPEN SESAME"))
                .filter_map(|l| {
                    let rest = l.split_once("] ").map_or(l.as_str(), |(_, r)| r);
                    rest.split(':').next()?.parse().ok()
                })
                .collect()
        }),
        comm: "knockd",
        notes: json!({
            "client": format!("knock -u SERVER {}", ports_list(&KNOCKD_SEQUENCE)),
            "server": format!("knockd -i {LAN} (pcap), sequence {} (udp), seq_timeout 5, start_command iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT, cmd_timeout {}, stop_command iptables -D …", ports_list(&KNOCKD_SEQUENCE), opts.lease),
            "version": package_version("knockd"),
        }),
    })
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Grants for addresses outside the client pool: spoofed sources let in by a flood.
fn spurious(grants: &[Ipv4Addr]) -> usize {
    let lo = u32::from(POOL_BASE);
    let hi = lo + POOL_MAX as u32 + 1;
    grants
        .iter()
        .filter(|a| !(lo..=hi).contains(&u32::from(**a)))
        .count()
}

fn ports_list(p: &[u16]) -> String {
    p.iter().map(u16::to_string).collect::<Vec<_>>().join(" ")
}

fn package_version(pkg: &str) -> Option<String> {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", pkg])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// sesamed's log: where a knock's time goes

/// Per-knock stages from sesamed's debug log (ms since the client's start).
#[derive(Clone, Debug, Default)]
struct Stages {
    sequence: Vec<f64>,
    accepted: Vec<f64>,
    granted: Vec<f64>,
    /// granted → connection completed.
    after_grant: Vec<f64>,
    /// The knock's latency (for the same knocks).
    open: Vec<f64>,
    client_exit: Vec<f64>,
}

/// Wall times of three events per source: (sequence complete, accepted, granted) for sesamed;
/// (first datagram received, last datagram received, nft exited) for the floor.
type EventTimes = HashMap<String, [Option<f64>; 3]>;

fn sesame_times(log: &Path) -> EventTimes {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut times = EventTimes::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let msg = v["message"].as_str().unwrap_or("");
        let idx = match msg {
            "sequence complete" => 0,
            "knock accepted; replay state saved" => 1,
            "granted" => 2,
            _ => continue,
        };
        let (Some(src), Some(ts)) = (
            v["source"].as_str(),
            v["timestamp"].as_str().and_then(parse_rfc3339),
        ) else {
            continue;
        };
        let slot = &mut times.entry(src.to_owned()).or_default()[idx];
        if slot.is_none() {
            *slot = Some(ts);
        }
    }
    times
}

fn stages(times: &EventTimes, knocks: &[Knock]) -> Stages {
    let mut st = Stages::default();
    for k in knocks {
        let (Some(open), Some(t)) = (k.open, times.get(&k.source.to_string())) else {
            continue;
        };
        let rel = |x: Option<f64>| x.map(|x| (x - k.started_wall) * 1000.0);
        if let (Some(s), Some(a), Some(g)) = (rel(t[0]), rel(t[1]), rel(t[2])) {
            st.sequence.push(s);
            st.accepted.push(a);
            st.granted.push(g);
            st.after_grant.push(ms(open) - g);
            st.open.push(ms(open));
        }
        if let Some(e) = k.client_exit {
            st.client_exit.push(ms(e));
        }
    }
    st
}

// ---------------------------------------------------------------------------------------------
// Floods

#[derive(Clone, Debug)]
struct FloodResult {
    scenario: &'static str,
    lo: u16,
    hi: u16,
    knocks: Vec<Knock>,
    seconds: f64,
    offered_pps: f64,
    cpu_percent: f64,
    child_cpu_percent: f64,
    hwm_kib: u64,
    rss_kib: u64,
    machine_busy_percent: f64,
    /// Grants for spoofed sources during the flood.
    spurious_grants: usize,
    generator: Value,
}

fn flood_phase(
    bed: &mut Bed,
    setup: &Setup,
    scenario: (&'static str, u16, u16),
    opts: &Opts,
) -> Result<FloodResult> {
    let (name, lo, hi) = scenario;
    let pid = bed
        .daemon
        .as_ref()
        .ok_or("internal: no daemon to flood")?
        .pid();
    if let Some(d) = &bed.daemon {
        d.check_comm(setup.comm)?;
    }
    let sources = bed.take(opts.flood_knocks)?;
    let lab = &bed.lab;
    let mac = lab.mac(Host::Server, LAN);
    let args: Vec<String> = vec![
        "udp".into(),
        "--iface".into(),
        ATTACKER_IF.into(),
        "--dst-mac".into(),
        mac,
        "--dst4".into(),
        bed.server.to_string(),
        "--sources".into(),
        "65536".into(),
        "--lo".into(),
        lo.to_string(),
        "--hi".into(),
        hi.to_string(),
        "--duration-ms".into(),
        "0".into(),
        "--rate".into(),
        opts.flood_rate.to_string(),
        "--stdin-stop".into(),
    ];
    let mut flood = lab.spawn(
        Host::Attacker,
        "sesame-flood",
        bin("sesame-flood"),
        &args,
        &[],
    );
    if flood
        .wait_for(&["flooding"], Duration::from_secs(60))
        .is_none()
    {
        return Err(format!("sesame-flood did not start: {}", flood.output()));
    }
    std::thread::sleep(Duration::from_millis(500));
    let spurious0 = spurious(&(setup.grants)());
    let s0 = proc_stats(pid)?;
    let j0 = cpu_jiffies();
    let t0 = Instant::now();
    let knocks = knock_series(bed, &*setup.knock, &sources, opts, opts.flood_timeout)?;
    while t0.elapsed() < Duration::from_secs(opts.flood_seconds) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s1 = proc_stats(pid)?;
    let j1 = cpu_jiffies();
    let seconds = t0.elapsed().as_secs_f64();
    let spurious1 = spurious(&(setup.grants)());
    let _ = flood.write_line("stop");
    if flood.wait_exit(Duration::from_secs(20)).is_none() {
        flood.kill9();
        return Err("sesame-flood did not stop".into());
    }
    let generator: Value = flood
        .lines()
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    let tck = clk_tck() as f64;
    let pct_of_cpu = |ticks: u64| ticks as f64 / tck / seconds * 100.0;
    let busy = if j1.2 > j0.2 {
        (j1.0 - j0.0) as f64 / (j1.2 - j0.2) as f64 * 100.0
    } else {
        f64::NAN
    };
    Ok(FloodResult {
        scenario: name,
        lo,
        hi,
        knocks,
        seconds,
        offered_pps: generator["pps"].as_f64().unwrap_or(f64::NAN),
        cpu_percent: pct_of_cpu(s1.cpu_ticks.saturating_sub(s0.cpu_ticks)),
        child_cpu_percent: pct_of_cpu(s1.child_ticks.saturating_sub(s0.child_ticks)),
        hwm_kib: s1.hwm_kib,
        rss_kib: s1.rss_kib,
        machine_busy_percent: busy,
        spurious_grants: spurious1.saturating_sub(spurious0),
        generator,
    })
}

// ---------------------------------------------------------------------------------------------
// One system

struct SystemResult {
    system: System,
    latency: Summary,
    client_exit: Summary,
    knocks: Vec<Knock>,
    stages: Option<Stages>,
    floods: Vec<FloodResult>,
    notes: Value,
    idle_hwm_kib: u64,
    /// Daemon CPU per knock (ms): itself, its children (execs of nft, iptables, shells).
    cpu_per_knock: (f64, f64),
}

/// A system set up in its bed, warmed up, with the knocks measured so far.
struct Prepared {
    system: System,
    setup: Setup,
    sources: Vec<Ipv4Addr>,
    knocks: Vec<Knock>,
    /// The daemon's /proc figures when the measured knocks started.
    stats0: Option<ProcStats>,
    bed: Bed,
}

fn prepare(system: System, tools: &Tools, opts: &Opts) -> Result<Prepared> {
    let floods = if opts.flood_seconds > 0 {
        system.floods().len()
    } else {
        0
    };
    let pool = opts.warmup + opts.knocks + floods * opts.flood_knocks;
    let mut bed = Bed::new(&format!("netbench-{}", system.name()), pool)?;
    let setup = match system {
        System::Floor => setup_floor(&mut bed, tools, opts, false)?,
        System::FloorNetlink => setup_floor(&mut bed, tools, opts, true)?,
        System::Sesame => setup_sesame(&mut bed, opts, false, true)?,
        System::SesameTmpfs => setup_sesame(&mut bed, opts, true, true)?,
        System::SesameNft => setup_sesame(&mut bed, opts, false, false)?,
        System::Fwknop => setup_fwknop(&mut bed, tools, opts, false)?,
        System::FwknopUdp => setup_fwknop(&mut bed, tools, opts, true)?,
        System::Knockd => setup_knockd(&mut bed, tools, opts)?,
    };
    if let Some(d) = &bed.daemon {
        d.check_comm(setup.comm)?;
    }
    // The gate must hide the service before any knock.
    if bed.service_reachable() {
        return Err(format!(
            "{}: the service is reachable before any knock: the firewall does not hide it",
            system.name()
        ));
    }
    let warm = bed.take(opts.warmup)?;
    let w = knock_series(&bed, &*setup.knock, &warm, opts, opts.knock_timeout)?;
    if w.iter().any(|k| k.open.is_none()) {
        eprintln!("{}: a warm-up knock did not open", system.name());
    }
    let sources = bed.take(opts.knocks)?;
    Ok(Prepared {
        system,
        setup,
        sources,
        knocks: Vec::new(),
        stats0: None,
        bed,
    })
}

/// The measured knocks of every prepared system: round by round, each round visiting the
/// systems in a new random order (interleaved), or all of one system's knocks before the
/// next's (sequential). Returns the machine's (busy, nice) CPU share over the phase.
fn measure_latency(prepared: &mut [Prepared], opts: &Opts) -> Result<(f64, f64)> {
    let mut rng = Rng::seeded();
    let n = prepared.len();
    let mut schedule: Vec<usize> = Vec::with_capacity(n * opts.knocks);
    if opts.sequential {
        for i in 0..n {
            schedule.extend(std::iter::repeat_n(i, opts.knocks));
        }
    } else {
        for _ in 0..opts.knocks {
            let mut round: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                round.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            schedule.extend(round);
        }
    }
    for p in prepared.iter_mut() {
        p.stats0 = p
            .bed
            .daemon
            .as_ref()
            .map(|d| proc_stats(d.pid()))
            .transpose()?;
    }
    let j0 = cpu_jiffies();
    let started = Instant::now();
    for (done, &i) in schedule.iter().enumerate() {
        let p = &mut prepared[i];
        let src = p.sources[p.knocks.len()];
        let k = knock_from(&p.bed, &*p.setup.knock, src, opts, opts.knock_timeout)?;
        p.knocks.push(k);
        pause(&mut rng, opts);
        if (done + 1) % (10 * n) == 0 {
            eprintln!(
                "  {} of {} knocks, {:.0} s",
                done + 1,
                schedule.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let j1 = cpu_jiffies();
    Ok(if j1.2 > j0.2 {
        let t = (j1.2 - j0.2) as f64;
        (
            (j1.0 - j0.0) as f64 / t * 100.0,
            (j1.1 - j0.1) as f64 / t * 100.0,
        )
    } else {
        (f64::NAN, f64::NAN)
    })
}

/// Figures of the measured knocks, then the floods; the system's namespaces go at the end.
fn finish(p: Prepared, opts: &Opts) -> Result<SystemResult> {
    let Prepared {
        system,
        setup,
        knocks,
        stats0,
        mut bed,
        ..
    } = p;
    let stats1 = bed
        .daemon
        .as_ref()
        .map(|d| proc_stats(d.pid()))
        .transpose()?;
    // Daemon CPU per knock, ms: (its own, its reaped children's).
    let cpu_per_knock = match (stats0, stats1) {
        (Some(a), Some(b)) => {
            let per = 1000.0 / clk_tck() as f64 / opts.knocks as f64;
            (
                b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 * per,
                b.child_ticks.saturating_sub(a.child_ticks) as f64 * per,
            )
        }
        _ => (f64::NAN, f64::NAN),
    };
    let latency = summarize(&open_ms(&knocks), knocks.len());
    let exits: Vec<f64> = knocks
        .iter()
        .filter_map(|k| k.client_exit.map(ms))
        .collect();
    let client_exit = summarize(&exits, knocks.len());
    let client_failures = knocks.iter().filter(|k| !k.client_ok).count();
    if client_failures > 0 {
        eprintln!(
            "{}: the client exited with an error {client_failures} times",
            system.name()
        );
    }
    let stages = match (&bed.daemon, &bed.floor) {
        (Some(d), _)
            if matches!(
                system,
                System::Sesame | System::SesameTmpfs | System::SesameNft
            ) =>
        {
            Some(stages(&sesame_times(&d.log), &knocks))
        }
        (_, Some(f)) => {
            let mut times = EventTimes::new();
            if let Ok(ev) = f.events.lock() {
                for (src, a, b, c) in ev.iter() {
                    times.insert(src.clone(), [Some(*a), Some(*b), Some(*c)]);
                }
            }
            Some(stages(&times, &knocks))
        }
        _ => None,
    };
    let idle_hwm_kib = stats1.map_or(0, |s| s.hwm_kib);
    let mut flood_results = Vec::new();
    if opts.flood_seconds > 0 {
        for sc in system.floods() {
            eprintln!("{}: flood {}", system.name(), sc.0);
            flood_results.push(flood_phase(&mut bed, &setup, sc, opts)?);
        }
    }
    if system == System::SesameTmpfs {
        let dir = format!(
            "/dev/shm/sesame-netbench-{}-{}",
            std::process::id(),
            bed.lab.n
        );
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(SystemResult {
        system,
        latency,
        client_exit,
        knocks,
        stages,
        floods: flood_results,
        notes: setup.notes,
        idle_hwm_kib,
        cpu_per_knock,
    })
}

// ---------------------------------------------------------------------------------------------
// The run and the report

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    json!({
        "kind": "machine",
        "date": utc_now(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": kernel,
        "os": os,
        "mem_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "loadavg": loadavg(),
        "commit": commit,
        "dirty": dirty,
        "versions": {
            "fwknop-server": package_version("fwknop-server"),
            "fwknop-client": package_version("fwknop-client"),
            "knockd": package_version("knockd"),
            "iptables": package_version("iptables"),
            "nftables": package_version("nftables"),
        },
        "command": std::iter::once("sesame-netbench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    })
}

struct Out {
    json: Option<File>,
}

impl Out {
    fn emit(&mut self, v: &Value) {
        if let Some(f) = &mut self.json {
            let _ = writeln!(f, "{v}");
        }
    }
}

fn bench(opts: &Opts) -> Result<()> {
    if !require_netns() {
        return Err("needs root, ip netns and nft (see above)".into());
    }
    let tools = Tools::find()?;
    for tool in ["sesame", "sesamed", "sesame-netprobe", "sesame-flood"] {
        let p = sesame_tests::bin_dir().join(tool);
        if !p.is_file() {
            return Err(format!(
                "{} not found: build the workspace's binaries first (cargo build --release --workspace --bins)",
                p.display()
            ));
        }
    }
    let mut out = Out {
        json: match &opts.json {
            Some(p) => {
                if let Some(d) = p.parent() {
                    let _ = std::fs::create_dir_all(d);
                }
                Some(File::create(p).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            None => None,
        },
    };
    let m = machine();
    out.emit(&m);
    eprintln!(
        "sesame-netbench: {} knocks per system (+{} warm-up), floods of >= {} s with {} knocks; load {}",
        opts.knocks, opts.warmup, opts.flood_seconds, opts.flood_knocks, m["loadavg"]
    );
    let mut skipped: Vec<(System, String)> = Vec::new();
    let mut prepared: Vec<Prepared> = Vec::new();
    for &system in &opts.systems {
        if let Some(why) = tools.missing(system) {
            if opts.skip_missing && !in_ci() {
                eprintln!("{}: SKIPPED ({why})", system.name());
                out.emit(&json!({"kind": "skipped", "system": system.name(), "why": why}));
                skipped.push((system, why));
                continue;
            }
            return Err(format!(
                "{}: {why} (apt-get install fwknop-client fwknop-server knockd iptables, or --skip-missing outside CI)",
                system.name()
            ));
        }
        eprintln!(
            "{}: setting up, {} warm-up knocks",
            system.name(),
            opts.warmup
        );
        prepared.push(prepare(system, &tools, opts)?);
    }
    eprintln!(
        "measuring: {} knocks per system, {}",
        opts.knocks,
        if opts.sequential {
            "one system after the other"
        } else {
            "interleaved (each round visits every system in a random order)"
        }
    );
    let load_before = loadavg();
    let (busy, nice) = measure_latency(&mut prepared, opts)?;
    let phase = Phase {
        load_before,
        load_after: loadavg(),
        busy,
        nice,
    };
    out.emit(&json!({
        "kind": "latency_phase",
        "order": if opts.sequential { "sequential" } else { "interleaved" },
        "load_before": phase.load_before,
        "load_after": phase.load_after,
        "machine_busy_percent": phase.busy,
        "nice_percent": phase.nice,
    }));
    let mut results: Vec<SystemResult> = Vec::new();
    for p in prepared {
        let r = finish(p, opts)?;
        eprintln!(
            "{}: median {} ms, p99 {} ms, {} of {} opened",
            r.system.name(),
            f2(r.latency.median),
            f2(r.latency.p99),
            r.latency.ok,
            r.latency.n
        );
        emit_system(&mut out, &r);
        results.push(r);
    }
    let ratios = ratios(&results);
    for r in &ratios {
        out.emit(r);
    }
    print!("{}", report(&m, opts, &phase, &results, &skipped, &ratios));
    Ok(())
}

/// The machine during the measured knocks.
struct Phase {
    load_before: String,
    load_after: String,
    /// Busy share of all CPUs, %.
    busy: f64,
    /// Share of all CPUs spent in niced processes (a fuzzer at nice 19), %.
    nice: f64,
}

fn emit_system(out: &mut Out, r: &SystemResult) {
    let mut v = summary_json(&r.latency);
    v["kind"] = json!("latency");
    v["system"] = json!(r.system.name());
    v["client_exit_median_ms"] = json!(r.client_exit.median);
    v["idle_peak_rss_kib"] = json!(r.idle_hwm_kib);
    v["daemon_cpu_ms_per_knock"] = json!(r.cpu_per_knock.0);
    v["children_cpu_ms_per_knock"] = json!(r.cpu_per_knock.1);
    v["probe_attempts"] = json!(r.knocks.iter().map(|k| u64::from(k.attempts)).sum::<u64>());
    v["setup"] = r.notes.clone();
    v["samples_ms"] = json!(
        r.knocks
            .iter()
            .map(|k| k.open.map(|d| (ms(d) * 1000.0).round() / 1000.0))
            .collect::<Vec<_>>()
    );
    out.emit(&v);
    if let Some(st) = &r.stages {
        out.emit(&json!({
            "kind": "breakdown",
            "system": r.system.name(),
            "matched": st.granted.len(),
            "sequence_complete": summary_json(&summarize(&st.sequence, st.sequence.len())),
            "accepted": summary_json(&summarize(&st.accepted, st.accepted.len())),
            "granted": summary_json(&summarize(&st.granted, st.granted.len())),
            "after_grant": summary_json(&summarize(&st.after_grant, st.after_grant.len())),
            "client_exit": summary_json(&summarize(&st.client_exit, st.client_exit.len())),
            "open": summary_json(&summarize(&st.open, st.open.len())),
            "events": if matches!(r.system, System::Floor | System::FloorNetlink) {
                ["first datagram received", "last datagram received", "nft exited"]
            } else {
                ["sequence complete", "knock accepted; replay state saved", "granted"]
            },
        }));
    }
    for f in &r.floods {
        let s = summarize(&open_ms(&f.knocks), f.knocks.len());
        let mut v = summary_json(&s);
        v["kind"] = json!("flood");
        v["system"] = json!(r.system.name());
        v["scenario"] = json!(f.scenario);
        v["ports"] = json!([f.lo, f.hi]);
        v["seconds"] = json!(f.seconds);
        v["offered_pps"] = json!(f.offered_pps);
        v["success_share"] = json!(s.ok as f64 / s.n.max(1) as f64);
        v["cpu_percent"] = json!(f.cpu_percent);
        v["children_cpu_percent"] = json!(f.child_cpu_percent);
        v["peak_rss_kib"] = json!(f.hwm_kib);
        v["rss_kib"] = json!(f.rss_kib);
        v["machine_busy_percent"] = json!(f.machine_busy_percent);
        v["spurious_grants"] = json!(f.spurious_grants);
        v["generator"] = f.generator.clone();
        out.emit(&v);
    }
}

fn find(results: &[SystemResult], s: System) -> Option<&SystemResult> {
    results.iter().find(|r| r.system == s)
}

fn ratios(results: &[SystemResult]) -> Vec<Value> {
    let mut v = Vec::new();
    let Some(sesame) = find(results, System::Sesame) else {
        return v;
    };
    let a = &sesame.latency;
    for peer in [System::Fwknop, System::Knockd] {
        if let Some(p) = find(results, peer) {
            let b = &p.latency;
            v.push(json!({
                "kind": "ratio",
                "of": "sesame",
                "to": peer.name(),
                "median": a.median / b.median,
                "p90": a.p90 / b.p90,
                "p99": a.p99 / b.p99,
            }));
        }
    }
    for floor in [System::Floor, System::FloorNetlink] {
        let Some(f) = find(results, floor) else {
            continue;
        };
        let b = &f.latency;
        v.push(json!({
            "kind": "difference",
            "of": "sesame",
            "to": floor.name(),
            "median_ms": a.median - b.median,
            "p90_ms": a.p90 - b.p90,
            "p99_ms": a.p99 - b.p99,
        }));
    }
    v
}

fn report(
    m: &Value,
    opts: &Opts,
    phase: &Phase,
    results: &[SystemResult],
    skipped: &[(System, String)],
    ratios: &[Value],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## sesame-netbench results\n");
    let _ = writeln!(
        s,
        "- date: {}; machine: {} × {} ({} GiB), {}, kernel {}; load average at start: {}",
        m["date"].as_str().unwrap_or(""),
        m["nproc"],
        m["cpu"].as_str().unwrap_or(""),
        m["mem_gib"],
        m["os"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or(""),
        m["loadavg"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "- sesame commit {}{}; fwknop {}, knockd {}, iptables {}, nftables {}",
        m["commit"].as_str().unwrap_or("?"),
        if m["dirty"].as_bool() == Some(true) {
            " + uncommitted changes"
        } else {
            ""
        },
        m["versions"]["fwknop-server"].as_str().unwrap_or("-"),
        m["versions"]["knockd"].as_str().unwrap_or("-"),
        m["versions"]["iptables"].as_str().unwrap_or("-"),
        m["versions"]["nftables"].as_str().unwrap_or("-"),
    );
    let _ = writeln!(s, "- command: `{}`", m["command"].as_str().unwrap_or(""));
    let _ = writeln!(
        s,
        "- {} knocks per system after {} warm-up knocks, {}; a pause of {}–{} ms after each knock; a new connection attempt every {} µs; leases {} s",
        opts.knocks,
        opts.warmup,
        if opts.sequential {
            "one system after the other"
        } else {
            "interleaved (every round visits each system once, in a random order)"
        },
        opts.gap_ms,
        2 * opts.gap_ms,
        opts.probe_interval.as_micros(),
        opts.lease
    );
    let _ = writeln!(
        s,
        "- during the measured knocks: load average {} → {}; CPUs busy {:.0} %, of which niced processes {:.0} %\n",
        phase.load_before, phase.load_after, phase.busy, phase.nice
    );
    let _ = writeln!(s, "### Knock-to-open latency (ms)\n");
    let _ = writeln!(
        s,
        "| system | knocks | failures | median | p90 | p99 | min | max | mean | client exits (median) | daemon CPU ms/knock (children) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let l = &r.latency;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
            r.system.name(),
            l.n,
            l.n - l.ok,
            f2(l.median),
            f2(l.p90),
            f2(l.p99),
            f2(l.min),
            f2(l.max),
            f2(l.mean),
            f2(r.client_exit.median),
            f2(r.cpu_per_knock.0),
            f2(r.cpu_per_knock.1),
        );
    }
    for (sys, why) in skipped {
        let _ = writeln!(s, "| {} | skipped: {why} | | | | | | | | | |", sys.name());
    }
    if !ratios.is_empty() {
        let _ = writeln!(s, "\n### sesame against the others (same run)\n");
        let _ = writeln!(s, "| | median | p90 | p99 |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for r in ratios {
            let x = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            if r["kind"] == "ratio" {
                let _ = writeln!(
                    s,
                    "| sesame / {} | {} | {} | {} |",
                    r["to"].as_str().unwrap_or(""),
                    f2(x("median")),
                    f2(x("p90")),
                    f2(x("p99"))
                );
            } else {
                let _ = writeln!(
                    s,
                    "| sesame − {} (ms) | {} | {} | {} |",
                    r["to"].as_str().unwrap_or(""),
                    f2(x("median_ms")),
                    f2(x("p90_ms")),
                    f2(x("p99_ms"))
                );
            }
        }
    }
    for r in results {
        let Some(st) = &r.stages else { continue };
        let floor = matches!(r.system, System::Floor | System::FloorNetlink);
        let _ = writeln!(
            s,
            "\n### Where {}'s time goes (ms from the client's start; {}, {} knocks)\n",
            r.system.name(),
            if floor {
                "timestamps of the floor's listener"
            } else {
                "timestamps of sesamed's debug log"
            },
            st.granted.len()
        );
        let _ = writeln!(s, "| stage | median | p90 | p99 |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let (l0, l1, l2) = if floor {
            (
                "first datagram received",
                "last datagram received",
                "nft exited",
            )
        } else {
            (
                "`sequence complete` logged",
                "`knock accepted; replay state saved` logged",
                "`granted` logged (nft exited)",
            )
        };
        let rows: [(&str, &Vec<f64>); 6] = [
            (l0, &st.sequence),
            (l1, &st.accepted),
            ("connection completed (the knock's latency)", &st.open),
            (l2, &st.granted),
            ("client process exited", &st.client_exit),
            ("connection completed − nft exited", &st.after_grant),
        ];
        for (name, v) in rows {
            let x = summarize(v, v.len());
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                f2(x.median),
                f2(x.p90),
                f2(x.p99)
            );
        }
        let diff =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
        let steps = if floor {
            [
                ("start → first datagram received", st.sequence.clone()),
                (
                    "first → last datagram received",
                    diff(&st.accepted, &st.sequence),
                ),
                (
                    "last datagram → connection completed (nft exec until the element is live)",
                    diff(&st.open, &st.accepted),
                ),
                (
                    "last datagram → nft exited",
                    diff(&st.granted, &st.accepted),
                ),
            ]
        } else {
            [
                ("start → sequence complete", st.sequence.clone()),
                (
                    "sequence complete → accepted (payload, X25519, state fsync)",
                    diff(&st.accepted, &st.sequence),
                ),
                (
                    "accepted → connection completed (firewall task, nft until the element is live)",
                    diff(&st.open, &st.accepted),
                ),
                (
                    "accepted → granted logged (nft exited, reaped)",
                    diff(&st.granted, &st.accepted),
                ),
            ]
        };
        for (name, v) in steps {
            let x = summarize(&v, v.len());
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                f2(x.median),
                f2(x.p90),
                f2(x.p99)
            );
        }
    }
    if results.iter().any(|r| !r.floods.is_empty()) {
        let _ = writeln!(
            s,
            "\n### Under a garbage flood (udp, 65 536 spoofed sources)\n"
        );
        let _ = writeln!(
            s,
            "| system | flood ports | s | offered pps | knocks opened | share | median ms | p99 ms | max ms | daemon CPU % | children CPU % | peak RSS MiB (idle) | opened for spoofed sources | machine busy % |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in results {
            for f in &r.floods {
                let x = summarize(&open_ms(&f.knocks), f.knocks.len());
                let _ = writeln!(
                    s,
                    "| {} | {} ({}–{}) | {:.0} | {:.0} | {}/{} | {:.0} % | {} | {} | {} | {:.1} | {:.1} | {:.1} ({:.1}) | {} | {:.0} |",
                    r.system.name(),
                    f.scenario,
                    f.lo,
                    f.hi,
                    f.seconds,
                    f.offered_pps,
                    x.ok,
                    x.n,
                    x.ok as f64 / x.n.max(1) as f64 * 100.0,
                    f2(x.median),
                    f2(x.p99),
                    f2(x.max),
                    f.cpu_percent,
                    f.child_cpu_percent,
                    f.hwm_kib as f64 / 1024.0,
                    r.idle_hwm_kib as f64 / 1024.0,
                    f.spurious_grants,
                    f.machine_busy_percent
                );
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// `filter`: how much of a random in-range flood reaches sesamed, by capture filter

/// `packets_seen` of `sesamed status --json` (every packet the capture filter let through).
fn packets_seen(bed: &Bed, config: &Path) -> Result<u64> {
    let o = bed.lab.sesamed(&[
        "status".as_ref(),
        "--json".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    if !o.status.success() {
        return Err(format!("sesamed status: {}", text(&o)));
    }
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|e| format!("status: {e}"))?;
    v["counters"]["packets_seen"]
        .as_u64()
        .ok_or_else(|| format!("status has no packets_seen: {v}"))
}

/// The last `capture filter: …` line of sesamed's (JSON) log: (filter, message).
fn last_filter_line(log: &Path) -> (String, String) {
    log_lines(log)
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("capture filter: "))
        })
        .map(|v| {
            (
                v["filter"].as_str().unwrap_or("").to_owned(),
                v["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .next_back()
        .unwrap_or_default()
}

fn filter_bench(args: &[String]) -> Result<()> {
    let mut clients: Vec<usize> = vec![10, 1000, 100_000];
    let mut modes: Vec<String> = vec!["range".into(), "auto".into()];
    let mut opts = Opts::parse(&[])?;
    opts.flood_knocks = 20;
    let mut json_out: Option<File> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        let num = || {
            v.parse::<u64>()
                .map_err(|_| format!("{a}: not a number: {v}"))
        };
        match a.as_str() {
            "--clients" => {
                clients = v
                    .split(',')
                    .map(|x| x.parse().map_err(|_| format!("--clients: {x}")))
                    .collect::<Result<_>>()?;
            }
            "--modes" => modes = v.split(',').map(str::to_owned).collect(),
            "--flood-seconds" => opts.flood_seconds = num()?.max(1),
            "--flood-knocks" => opts.flood_knocks = num()? as usize,
            "--flood-rate" => opts.flood_rate = num()?,
            "--json" => {
                json_out = Some(File::create(v).map_err(|e| format!("{v}: {e}"))?);
            }
            _ => return Err(format!("unknown option {a} (see --help)")),
        }
    }
    if !require_netns() {
        return Err("needs root, ip netns and nft (see above)".into());
    }
    let range_size = f64::from(SESAME_RANGE.1 - SESAME_RANGE.0) + 1.0;
    println!(
        "Capture filter under a random in-range flood ({}-{}, 65 536 spoofed sources, rate {}), {} s per run, {} knocks each; {}, load before {}",
        SESAME_RANGE.0,
        SESAME_RANGE.1,
        if opts.flood_rate == 0 {
            "as fast as possible".to_owned()
        } else {
            format!("{} pps", opts.flood_rate)
        },
        opts.flood_seconds,
        opts.flood_knocks,
        utc_now(),
        loadavg()
    );
    println!();
    println!(
        "| clients | filter | live ports | offered pps | delivered to sesamed | delivered pps | × range's | sesamed CPU % | × range's | knocks opened | median ms | p99 ms | ready s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &clients {
        let mut bed = Bed::new(
            &format!("netbench-filter-{n}"),
            modes.len() * (opts.flood_knocks + 1),
        )?;
        let t = Instant::now();
        let (config, profile, state_dir) = sesame_config(&bed, &opts, false, true, n)?;
        eprintln!(
            "{n} clients: configuration written and checked in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let mut base: Option<(f64, f64)> = None;
        for mode in &modes {
            bed.daemon = None;
            let t = Instant::now();
            let setup = start_sesame(
                &mut bed,
                &opts,
                &config,
                &profile,
                &state_dir,
                &[("SESAMED_CAPTURE_FILTER", mode.as_str())],
            )?;
            let ready = t.elapsed().as_secs_f64();
            let log = bed
                .daemon
                .as_ref()
                .map(|d| d.log.clone())
                .unwrap_or_default();
            let warm = bed.take(1)?;
            knock_series(&bed, &*setup.knock, &warm, &opts, opts.knock_timeout)?;
            let seen0 = packets_seen(&bed, &config)?;
            let r = flood_phase(
                &mut bed,
                &setup,
                ("range", SESAME_RANGE.0, SESAME_RANGE.1),
                &opts,
            )?;
            std::thread::sleep(Duration::from_millis(300));
            let seen1 = packets_seen(&bed, &config)?;
            let sent = r.generator["packets"].as_u64().unwrap_or(0);
            let share = if sent > 0 {
                (seen1 - seen0) as f64 / sent as f64
            } else {
                f64::NAN
            };
            let delivered_pps = share * r.offered_pps;
            let (kind, message) = last_filter_line(&log);
            let live: Option<u64> = message
                .strip_prefix("capture filter: ")
                .and_then(|m| m.split(' ').next()?.parse().ok());
            let opened = r.knocks.iter().filter(|k| k.open.is_some()).count();
            let lat = summarize(&open_ms(&r.knocks), r.knocks.len());
            let (vs_pps, vs_cpu) = match base {
                None => {
                    base = Some((delivered_pps, r.cpu_percent));
                    (1.0, 1.0)
                }
                Some((p, c)) => (delivered_pps / p, r.cpu_percent / c),
            };
            println!(
                "| {n} | {mode} ({kind}) | {} | {:.0} | {:.2} % | {:.0} | {} | {:.1} | {} | {opened}/{} | {} | {} | {ready:.1} |",
                live.map_or_else(
                    || "-".to_owned(),
                    |l| format!("{l} ({:.1} %)", l as f64 / range_size * 100.0)
                ),
                r.offered_pps,
                share * 100.0,
                delivered_pps,
                f2(vs_pps),
                r.cpu_percent,
                f2(vs_cpu),
                r.knocks.len(),
                f2(lat.median),
                f2(lat.p99),
            );
            if let Some(f) = json_out.as_mut() {
                let line = json!({
                    "clients": n,
                    "mode": mode,
                    "filter": kind,
                    "filter_message": message,
                    "live_ports": live,
                    "range_ports": range_size,
                    "offered_pps": r.offered_pps,
                    "sent": sent,
                    "seen": seen1 - seen0,
                    "delivered_share": share,
                    "delivered_pps": delivered_pps,
                    "cpu_percent": r.cpu_percent,
                    "hwm_kib": r.hwm_kib,
                    "knocks": r.knocks.len(),
                    "opened": opened,
                    "median_ms": lat.median,
                    "p99_ms": lat.p99,
                    "ready_seconds": ready,
                    "seconds": r.seconds,
                    "generator": r.generator,
                });
                let _ = writeln!(f, "{line}");
            }
        }
        bed.daemon = None;
    }
    Ok(())
}
