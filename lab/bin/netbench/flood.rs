//! Floods: `sesame-flood` senders in the attacker namespace while the client knocks.
//!
//! A flood is of one kind ([`FloodKind`]); what a kind sends depends on the system
//! ([`scenario`]): each system is flooded where it listens, with what its own knock looks like.
//! `--flood-senders` processes send at once, each from its own slice of the 65 536 spoofed
//! sources (198.19.0.0/16); a mixed flood gives every sender one of the system's other kinds in
//! turn. A replayed flood first captures one legitimate knock of the system (tcpdump on the
//! client's link) and replays every UDP datagram of it, in order, from each spoofed source.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sesame_tests::{
    ATTACKER_IF, CLIENT_IF, Host, Proc, SERVER_IF_ATTACKER, bin, clk_tck, pcap, proc_stats,
};

use crate::Result;
use crate::knock::{Knock, knock_from, knock_series};
use crate::lab::{Bed, LAN};
use crate::options::{Opts, System};
use crate::systems::{FWKNOP_PORT, KNOCKD_SEQUENCE, SESAME_RANGE, Setup, spurious};
use crate::util::{cpu_jiffies, ns_run};

/// The spoofed sources, split among the senders: 198.19.0.0 and the 65 535 after it.
const FLOOD_SOURCES: u32 = 65536;
const FLOOD_SOURCE_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
/// Length of a fake fwknop SPA packet (a real one with HMAC-SHA256 is about 180 base64
/// characters).
const FAKE_SPA_LEN: usize = 182;

/// What a flood sends (per system: [`scenario`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FloodKind {
    /// Garbage UDP at random ports of what the system watches.
    Udp,
    /// TCP SYNs.
    Syn,
    /// Fakes of the system's knock: sesame's payload, fwknop's SPA packet, knockd's knocks.
    Payload,
    /// One captured legitimate knock, replayed from every spoofed source.
    Replay,
    /// The four above at once, one per sender in turn.
    Mix,
}

pub(crate) const ALL_FLOOD_KINDS: [FloodKind; 5] = [
    FloodKind::Udp,
    FloodKind::Syn,
    FloodKind::Payload,
    FloodKind::Replay,
    FloodKind::Mix,
];

impl FloodKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FloodKind::Udp => "udp",
            FloodKind::Syn => "syn",
            FloodKind::Payload => "payload",
            FloodKind::Replay => "replay",
            FloodKind::Mix => "mix",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<FloodKind> {
        ALL_FLOOD_KINDS
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown flood kind {s} (udp, syn, payload, replay, mix)"))
    }
}

/// What one sender does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Job {
    /// `sesame-flood udp`: random datagrams to random ports `lo..=hi`, of 0..=32 random bytes,
    /// or of `size` bytes (from the base64 alphabet with `base64`).
    Udp {
        lo: u16,
        hi: u16,
        size: Option<usize>,
        base64: bool,
    },
    /// `sesame-flood syn`: SYNs to random ports `lo..=hi`.
    Syn { lo: u16, hi: u16 },
    /// `sesame-flood payload --with-knocks` with the client's profile: knocks and a random
    /// payload-sized datagram at the client's current ports.
    SesamePayload,
    /// `sesame-flood replay --sequence` of a capture of one knock (its UDP datagrams to
    /// ports `lo..=hi`).
    Replay { lo: u16, hi: u16 },
}

/// One flood of one system.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) kind: FloodKind,
    /// What it sends, for the report.
    pub(crate) what: String,
    /// The senders' jobs, in turn (one for a single kind).
    pub(crate) jobs: Vec<Job>,
}

/// The flood of kind `kind` for `system`, if the system is flooded at all.
pub(crate) fn scenario(system: System, kind: FloodKind) -> Option<Scenario> {
    let (lo, hi) = SESAME_RANGE;
    let (seq_lo, seq_hi) = (
        KNOCKD_SEQUENCE.iter().copied().min().unwrap_or(0),
        KNOCKD_SEQUENCE.iter().copied().max().unwrap_or(0),
    );
    let spa = FWKNOP_PORT;
    let one = |what: String, job: Job| Some((what, job));
    let alone = |k: FloodKind| -> Option<(String, Job)> {
        let udp = |lo, hi| Job::Udp {
            lo,
            hi,
            size: None,
            base64: false,
        };
        match (system, k) {
            (System::Sesame, FloodKind::Udp) => {
                one(format!("random UDP to its range ({lo}–{hi})"), udp(lo, hi))
            }
            (System::Sesame, FloodKind::Syn) => one(
                format!("SYNs to its range ({lo}–{hi})"),
                Job::Syn { lo, hi },
            ),
            (System::Sesame, FloodKind::Payload) => one(
                "3 knocks + a fake payload at the client's live ports".into(),
                Job::SesamePayload,
            ),
            (System::Sesame, FloodKind::Replay) => one(
                "a captured address-bound knock (3 knocks + payload)".into(),
                Job::Replay { lo, hi },
            ),
            (System::Fwknop | System::FwknopUdp, FloodKind::Udp) => {
                one(format!("random UDP to its SPA port ({spa})"), udp(spa, spa))
            }
            (System::Fwknop | System::FwknopUdp, FloodKind::Syn) => {
                one(format!("SYNs to tcp/{spa}"), Job::Syn { lo: spa, hi: spa })
            }
            (System::Fwknop | System::FwknopUdp, FloodKind::Payload) => one(
                format!("fake SPA packets ({FAKE_SPA_LEN} base64 bytes) to {spa}"),
                Job::Udp {
                    lo: spa,
                    hi: spa,
                    size: Some(FAKE_SPA_LEN),
                    base64: true,
                },
            ),
            (System::Fwknop | System::FwknopUdp, FloodKind::Replay) => one(
                "a captured SPA packet (-a: address-bound)".into(),
                Job::Replay { lo: spa, hi: spa },
            ),
            (System::Knockd, FloodKind::Udp) => {
                one(format!("random UDP to the range ({lo}–{hi})"), udp(lo, hi))
            }
            (System::Knockd, FloodKind::Syn) => one(
                format!("SYNs to its sequence ports ({seq_lo}–{seq_hi})"),
                Job::Syn {
                    lo: seq_lo,
                    hi: seq_hi,
                },
            ),
            (System::Knockd, FloodKind::Payload) => one(
                format!("fake knocks: random UDP to its sequence ports ({seq_lo}–{seq_hi})"),
                udp(seq_lo, seq_hi),
            ),
            (System::Knockd, FloodKind::Replay) => one(
                "a captured knock sequence (3 datagrams)".into(),
                Job::Replay {
                    lo: seq_lo,
                    hi: seq_hi,
                },
            ),
            _ => None,
        }
    };
    if kind == FloodKind::Mix {
        let parts: Vec<(String, Job)> = [
            FloodKind::Udp,
            FloodKind::Syn,
            FloodKind::Payload,
            FloodKind::Replay,
        ]
        .into_iter()
        .filter_map(alone)
        .collect();
        if parts.is_empty() {
            return None;
        }
        return Some(Scenario {
            kind,
            what: "udp, syn, payload and replay, one per sender in turn".into(),
            jobs: parts.into_iter().map(|(_, j)| j).collect(),
        });
    }
    alone(kind).map(|(what, job)| Scenario {
        kind,
        what,
        jobs: vec![job],
    })
}

/// The floods of `system` for `kinds`, in that order.
pub(crate) fn scenarios(system: System, kinds: &[FloodKind]) -> Vec<Scenario> {
    kinds.iter().filter_map(|k| scenario(system, *k)).collect()
}

#[derive(Clone, Debug)]
pub(crate) struct FloodResult {
    pub(crate) scenario: Scenario,
    pub(crate) senders: usize,
    pub(crate) knocks: Vec<Knock>,
    pub(crate) seconds: f64,
    /// Frames per second the senders wrote (all of them together).
    pub(crate) offered_pps: f64,
    /// Frames per second the server's link to the attacker received (its rx counter), and
    /// the share it dropped.
    pub(crate) arrived_pps: f64,
    pub(crate) rx_dropped: u64,
    /// Packets per second the daemon itself counted (sesamed's `packets_seen`); NaN where the
    /// daemon counts nothing.
    pub(crate) handled_pps: f64,
    /// Packets the daemon's capture socket dropped, its queue full (sesamed's
    /// `capture_drops`), from the flood's start until the daemon was idle after it; None where
    /// the daemon counts nothing.
    pub(crate) capture_drops: Option<u64>,
    /// What the daemon's counters (sesamed's `status --json` counters, rejections by reason
    /// included) grew by over the same time; null where the daemon counts nothing.
    pub(crate) daemon_counters: Value,
    /// Whether the daemon and the client had CPU 0 and the senders the others (`--flood-pin`).
    pub(crate) pinned: bool,
    pub(crate) cpu_percent: f64,
    pub(crate) child_cpu_percent: f64,
    pub(crate) hwm_kib: u64,
    pub(crate) rss_kib: u64,
    pub(crate) machine_busy_percent: f64,
    /// Grants for spoofed sources during the flood.
    pub(crate) spurious_grants: usize,
    /// Replay: grants for the captured knock's own source during the flood (the replay of its
    /// knock opening again).
    pub(crate) captured_source_grants: Option<usize>,
    /// Replay: UDP datagrams of the captured knock, and whether that knock opened.
    pub(crate) replayed_datagrams: Option<usize>,
    pub(crate) captured_knock_opened: Option<bool>,
    /// Every sender's last JSON line.
    pub(crate) generators: Vec<Value>,
    /// How long the daemon stayed busy after the flood (working through its queue, or its
    /// commands).
    pub(crate) settle_seconds: f64,
}

/// `(rx_packets, rx_dropped)` of the server's link to the attacker.
fn rx_counters(bed: &Bed) -> (u64, u64) {
    let Ok(out) = ns_run(
        bed.server_ns(),
        "ip",
        &["-j", "-s", "link", "show", "dev", SERVER_IF_ATTACKER],
    ) else {
        return (0, 0);
    };
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let rx = &v[0]["stats64"]["rx"];
    (
        rx["packets"].as_u64().unwrap_or(0),
        rx["dropped"].as_u64().unwrap_or(0),
    )
}

/// Captures one legitimate knock of the system from `src` (its UDP datagrams to ports
/// `lo..=hi` of the server): the pcap file, how many datagrams it holds and whether the knock
/// opened (a daemon still busy with the last flood may miss it; its datagrams are valid all
/// the same).
fn capture_knock(
    bed: &Bed,
    setup: &Setup,
    src: Ipv4Addr,
    lo: u16,
    hi: u16,
    opts: &Opts,
) -> Result<(PathBuf, usize, bool)> {
    let filter = format!(
        "udp and src host {src} and dst host {} and dst portrange {lo}-{hi}",
        bed.server
    );
    let name = format!("replay-{src}");
    let cap = bed.lab.capture(Host::Client, CLIENT_IF, &name, &filter);
    let path = cap.path.clone();
    let k = knock_from(bed, &*setup.knock, src, opts, opts.knock_timeout)?;
    let packets = cap.stop();
    let udp = packets
        .iter()
        .filter(|p| matches!(p.l4, pcap::L4::Udp { .. }))
        .count();
    if udp == 0 {
        return Err(format!(
            "the knock to be replayed was not captured (opened: {})",
            k.open.is_some()
        ));
    }
    Ok((path, udp, k.open.is_some()))
}

/// The arguments of sender `i` of `n` for `job` (on a CPU of its own when the daemon is
/// `pinned`).
#[allow(clippy::too_many_arguments)]
fn sender_args(
    bed: &Bed,
    setup: &Setup,
    job: &Job,
    capture: Option<&PathBuf>,
    i: usize,
    n: usize,
    opts: &Opts,
    pinned: Option<&Pinned>,
) -> Result<Vec<String>> {
    let slice = FLOOD_SOURCES / n as u32;
    let first = Ipv4Addr::from(u32::from(FLOOD_SOURCE_BASE) + slice * i as u32);
    // The rate split among the senders (0: as fast as each can; never 0 for a set rate).
    let rate = if opts.flood_rate == 0 {
        0
    } else {
        (opts.flood_rate / n as u64).max(1)
    };
    let mut args: Vec<String> = Vec::new();
    let range =
        |lo: u16, hi: u16| vec!["--lo".into(), lo.to_string(), "--hi".into(), hi.to_string()];
    match job {
        Job::Udp {
            lo,
            hi,
            size,
            base64,
        } => {
            args.push("udp".into());
            args.extend(range(*lo, *hi));
            if let Some(size) = size {
                args.extend(["--size".into(), size.to_string()]);
            }
            if *base64 {
                args.push("--base64".into());
            }
        }
        Job::Syn { lo, hi } => {
            args.push("syn".into());
            args.extend(range(*lo, *hi));
        }
        Job::SesamePayload => {
            let profile = setup
                .profile
                .as_ref()
                .ok_or("internal: a payload flood needs sesame's profile")?;
            args.extend([
                "payload".into(),
                "--profile".into(),
                profile.to_string_lossy().into_owned(),
                "--with-knocks".into(),
            ]);
        }
        Job::Replay { .. } => {
            let capture = capture.ok_or("internal: a replay flood needs its capture")?;
            args.extend([
                "replay".into(),
                "--pcap".into(),
                capture.to_string_lossy().into_owned(),
                "--sequence".into(),
            ]);
        }
    }
    args.extend([
        "--iface".into(),
        ATTACKER_IF.into(),
        "--dst-mac".into(),
        bed.lab.mac(Host::Server, LAN),
        "--dst4".into(),
        bed.server.to_string(),
        "--src4".into(),
        first.to_string(),
        "--sources".into(),
        slice.to_string(),
        "--duration-ms".into(),
        "0".into(),
        "--rate".into(),
        rate.to_string(),
        "--stdin-stop".into(),
    ]);
    if let Some(p) = pinned {
        // CPU 0 is the daemon's and the client's; the senders share the others.
        let cpu = 1 + i % (p.cpus - 1);
        args.extend(["--cpu".into(), cpu.to_string()]);
    }
    Ok(args)
}

/// The CPUs this process may use (read before [`Pinned`] narrows them to CPU 0).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `taskset -p -c CPUS PID` (`-a`: every thread of PID).
fn taskset(all_threads: bool, cpus: &str, pid: u32) -> Result<()> {
    let mut c = std::process::Command::new("taskset");
    if all_threads {
        c.arg("-a");
    }
    let out = c
        .args(["-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "taskset -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// `--flood-pin` on a machine with more than one CPU, for the time of one flood: the daemon
/// (every thread; children it forks inherit it) and this process's main thread (which spawns
/// the knocking client and tcpdump) on CPU 0, the senders on the other CPUs
/// ([`sender_args`]). The senders then take no CPU time from the daemon or the client, as
/// an attacker elsewhere on the network would not; the kernel's delivery of the frames (the
/// veth's receive path, the capture filter, the socket queue) runs in the senders' system
/// calls, on their CPUs. Dropping it lets both run anywhere again.
struct Pinned {
    daemon: u32,
    /// The CPUs there are.
    cpus: usize,
    all: String,
}

impl Pinned {
    fn new(daemon: u32, opts: &Opts) -> Result<Option<Pinned>> {
        let n = cpus();
        if !opts.flood_pin || n < 2 {
            return Ok(None);
        }
        taskset(true, "0", daemon)?;
        taskset(false, "0", std::process::id())?;
        Ok(Some(Pinned {
            daemon,
            cpus: n,
            all: format!("0-{}", n - 1),
        }))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = taskset(true, &self.all, self.daemon);
        let _ = taskset(false, &self.all, std::process::id());
    }
}

/// Waits until the daemon is idle after a flood (it and its reaped children used less than
/// one clock tick in 200 ms, and it has no child process left: knockd forks a shell per
/// opening), at most 180 s, so that one flood's backlog does not weigh on the next; returns
/// the seconds waited.
fn settle(pid: u32) -> f64 {
    let t = Instant::now();
    let ticks = || proc_stats(pid).map_or(0, |s| s.cpu_ticks + s.child_ticks);
    let children = || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map_or(0, |c| c.split_whitespace().count())
    };
    let mut last = ticks();
    while t.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(200));
        let now = ticks();
        if now.saturating_sub(last) <= 1 && children() == 0 {
            break;
        }
        last = now;
    }
    t.elapsed().as_secs_f64()
}

/// Stops the senders (a line on their stdin) and returns each one's last JSON line.
fn stop_senders(senders: &mut [Proc]) -> Result<Vec<Value>> {
    for s in senders.iter_mut() {
        let _ = s.write_line("stop");
    }
    let mut out = Vec::new();
    for s in senders.iter_mut() {
        if s.wait_exit(Duration::from_secs(20)).is_none() {
            s.kill9();
            return Err("sesame-flood did not stop".into());
        }
        out.push(
            s.lines()
                .iter()
                .rev()
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
                .unwrap_or(Value::Null),
        );
    }
    Ok(out)
}

/// One flood: the senders start, then the client knocks `--flood-knocks` times, for at least
/// `--flood-seconds`.
pub(crate) fn flood_phase(
    bed: &mut Bed,
    setup: &Setup,
    scenario: &Scenario,
    opts: &Opts,
) -> Result<FloodResult> {
    let pid = bed
        .daemon
        .as_ref()
        .ok_or("internal: no daemon to flood")?
        .pid();
    if let Some(d) = &bed.daemon {
        d.check_comm(setup.comm)?;
    }
    let sources = bed.take(opts.flood_knocks)?;
    // A replay needs a knock to replay: captured now, so that it is still in its window.
    let replay = scenario.jobs.iter().find_map(|j| match j {
        Job::Replay { lo, hi } => Some((*lo, *hi)),
        _ => None,
    });
    let mut capture = None;
    let mut captured_src = None;
    if let Some((lo, hi)) = replay {
        let src = bed.take(1)?[0];
        capture = Some(capture_knock(bed, setup, src, lo, hi, opts)?);
        captured_src = Some(src);
    }
    let n = opts.flood_senders.max(scenario.jobs.len()).max(1);
    let pinned = Pinned::new(pid, opts)?;
    let mut senders: Vec<Proc> = Vec::with_capacity(n);
    for i in 0..n {
        let job = &scenario.jobs[i % scenario.jobs.len()];
        let args = sender_args(
            bed,
            setup,
            job,
            capture.as_ref().map(|c| &c.0),
            i,
            n,
            opts,
            pinned.as_ref(),
        )?;
        senders.push(bed.lab.spawn(
            Host::Attacker,
            &format!("sesame-flood {i}"),
            bin("sesame-flood"),
            &args,
            &[],
        ));
    }
    for s in &senders {
        if s.wait_for(&["flooding"], Duration::from_secs(120))
            .is_none()
        {
            let out = s.output();
            let _ = stop_senders(&mut senders);
            return Err(format!("sesame-flood did not start: {out}"));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let count_captured =
        |grants: &[Ipv4Addr]| captured_src.map(|c| grants.iter().filter(|g| **g == c).count());
    let grants0 = (setup.grants)();
    let spurious0 = spurious(&grants0);
    let captured0 = count_captured(&grants0);
    let counters = || setup.counters.as_ref().map(|f| f()).transpose();
    let c0 = counters()?;
    let seen = |c: &Option<Value>| c.as_ref().and_then(|c| c["packets_seen"].as_u64());
    let seen0 = seen(&c0);
    let rx0 = rx_counters(bed);
    let s0 = proc_stats(pid)?;
    let j0 = cpu_jiffies();
    let t0 = Instant::now();
    let knocks = knock_series(bed, &*setup.knock, &sources, opts, opts.flood_timeout)?;
    while t0.elapsed() < Duration::from_secs(opts.flood_seconds) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s1 = proc_stats(pid)?;
    let j1 = cpu_jiffies();
    let rx1 = rx_counters(bed);
    let seen1 = seen(&counters()?);
    let seconds = t0.elapsed().as_secs_f64();
    let grants1 = (setup.grants)();
    let spurious1 = spurious(&grants1);
    let captured1 = count_captured(&grants1);
    let generators = stop_senders(&mut senders)?;
    let settle_seconds = settle(pid);
    let pinned_now = pinned.is_some();
    drop(pinned);
    // sesamed adds its sockets' drops to the counter every second.
    if c0.is_some() {
        std::thread::sleep(Duration::from_millis(1100));
    }
    let c2 = counters()?;
    let daemon_counters = match (&c0, &c2) {
        (Some(a), Some(b)) => counters_delta(a, b),
        _ => Value::Null,
    };
    let tck = clk_tck() as f64;
    let pct_of_cpu = |ticks: u64| ticks as f64 / tck / seconds * 100.0;
    let busy = if j1.2 > j0.2 {
        (j1.0 - j0.0) as f64 / (j1.2 - j0.2) as f64 * 100.0
    } else {
        f64::NAN
    };
    let offered_pps: f64 = generators
        .iter()
        .map(|g| g["pps"].as_f64().unwrap_or(f64::NAN))
        .sum();
    Ok(FloodResult {
        scenario: scenario.clone(),
        senders: n,
        knocks,
        seconds,
        offered_pps,
        arrived_pps: rx1.0.saturating_sub(rx0.0) as f64 / seconds,
        rx_dropped: rx1.1.saturating_sub(rx0.1),
        handled_pps: match (seen0, seen1) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / seconds,
            _ => f64::NAN,
        },
        capture_drops: daemon_counters["capture_drops"].as_u64(),
        pinned: pinned_now,
        daemon_counters,
        cpu_percent: pct_of_cpu(s1.cpu_ticks.saturating_sub(s0.cpu_ticks)),
        child_cpu_percent: pct_of_cpu(s1.child_ticks.saturating_sub(s0.child_ticks)),
        hwm_kib: s1.hwm_kib,
        rss_kib: s1.rss_kib,
        machine_busy_percent: busy,
        spurious_grants: spurious1.saturating_sub(spurious0),
        captured_source_grants: match (captured0, captured1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        replayed_datagrams: capture.as_ref().map(|c| c.1),
        captured_knock_opened: capture.as_ref().map(|c| c.2),
        settle_seconds,
        generators,
    })
}

/// How much each counter of sesamed's `status --json` grew from `a` to `b` (gauges such as
/// `sources_tracked` as they are at `b`), rejections by reason included.
fn counters_delta(a: &Value, b: &Value) -> Value {
    let mut out = serde_json::Map::new();
    let Some(bo) = b.as_object() else {
        return Value::Null;
    };
    for (k, vb) in bo {
        if let Some(nb) = vb.as_u64() {
            let v = if matches!(k.as_str(), "sources_tracked" | "macs_remembered") {
                nb
            } else {
                nb.saturating_sub(a[k].as_u64().unwrap_or(0))
            };
            out.insert(k.clone(), json!(v));
        } else if let Some(rb) = vb.as_object() {
            let r: serde_json::Map<String, Value> = rb
                .iter()
                .filter_map(|(reason, n)| {
                    let d = n
                        .as_u64()?
                        .saturating_sub(a[k][reason].as_u64().unwrap_or(0));
                    (d > 0).then(|| (reason.clone(), json!(d)))
                })
                .collect();
            out.insert(k.clone(), Value::Object(r));
        }
    }
    Value::Object(out)
}

/// The JSON of a flood's generators, summed: frames by kind, errors.
pub(crate) fn generators_json(f: &FloodResult) -> Value {
    let sum = |k: &str| -> u64 { f.generators.iter().filter_map(|g| g[k].as_u64()).sum() };
    json!({
        "senders": f.senders,
        "packets": sum("packets"),
        "udp": sum("udp"),
        "syn": sum("syn"),
        "payloads": sum("payloads"),
        "errors": sum("errors"),
        "pps": f.offered_pps,
        "each": f.generators,
    })
}
