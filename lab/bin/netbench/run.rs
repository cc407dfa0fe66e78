//! The benchmark's run: set every system up, the interleaved latency phase, then each
//! system's floods.

use std::fs::File;
use std::net::Ipv4Addr;
use std::time::Instant;

use serde_json::{Value, json};
use sesame_tests::{ProcStats, Rng, clk_tck, in_ci, proc_stats, require_netns};

use crate::Result;
use crate::breakdown::{EventTimes, Stages, sesame_times, stages};
use crate::flood::{FloodResult, flood_phase, scenario, scenarios};
use crate::knock::{Knock, knock_from, knock_series, pause};
use crate::lab::Bed;
use crate::options::{Opts, System};
use crate::report::{Out, emit_system, flood_ratios, machine, ratios, report};
use crate::stats::{Summary, f2, open_ms, summarize};
use crate::systems::{
    Setup, Tools, setup_floor, setup_fwknop, setup_knockd, setup_sesame, setup_sesame_fence,
};
use crate::util::{cpu_jiffies, loadavg, ms};

pub(crate) struct SystemResult {
    pub(crate) system: System,
    pub(crate) latency: Summary,
    pub(crate) client_exit: Summary,
    pub(crate) knocks: Vec<Knock>,
    pub(crate) stages: Option<Stages>,
    pub(crate) floods: Vec<FloodResult>,
    pub(crate) notes: Value,
    pub(crate) idle_hwm_kib: u64,
    /// Daemon CPU per knock (ms): itself, its children (execs of nft, iptables, shells).
    pub(crate) cpu_per_knock: (f64, f64),
}

/// A system set up in its bed, warmed up, with the knocks measured so far.
pub(crate) struct Prepared {
    pub(crate) system: System,
    pub(crate) setup: Setup,
    pub(crate) sources: Vec<Ipv4Addr>,
    pub(crate) knocks: Vec<Knock>,
    /// The daemon's /proc figures when the measured knocks started.
    pub(crate) stats0: Option<ProcStats>,
    pub(crate) bed: Bed,
}

pub(crate) fn prepare(system: System, tools: &Tools, opts: &Opts) -> Result<Prepared> {
    let floods = if opts.flood_seconds > 0 {
        scenarios(system, &opts.flood_kinds).len()
    } else {
        0
    };
    // Each flood: its knocks, and one knock captured for a replay.
    let pool = opts.warmup + opts.knocks + floods * (opts.flood_knocks + 1);
    let mut bed = Bed::new(&format!("netbench-{}", system.name()), pool)?;
    let setup = match system {
        System::Floor => setup_floor(&mut bed, tools, opts, false)?,
        System::FloorNetlink => setup_floor(&mut bed, tools, opts, true)?,
        System::Sesame => setup_sesame(&mut bed, opts, false, true)?,
        System::SesameTmpfs => setup_sesame(&mut bed, opts, true, true)?,
        System::SesameNft => setup_sesame(&mut bed, opts, false, false)?,
        System::SesameFence => setup_sesame_fence(&mut bed, opts)?,
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
pub(crate) fn measure_latency(prepared: &mut [Prepared], opts: &Opts) -> Result<(f64, f64)> {
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

/// A system whose knocks are measured: its figures so far (floods are added to them), and
/// what the floods need.
pub(crate) struct Finished {
    pub(crate) result: SystemResult,
    setup: Setup,
    bed: Bed,
}

/// Figures of the measured knocks (the floods come after, [`flood_all`]).
pub(crate) fn finish(p: Prepared, opts: &Opts) -> Result<Finished> {
    let Prepared {
        system,
        setup,
        knocks,
        stats0,
        bed,
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
                System::Sesame | System::SesameTmpfs | System::SesameNft | System::SesameFence
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
    let notes = setup.notes.clone();
    Ok(Finished {
        result: SystemResult {
            system,
            latency,
            client_exit,
            knocks,
            stages,
            floods: Vec::new(),
            notes,
            idle_hwm_kib,
            cpu_per_knock,
        },
        setup,
        bed,
    })
}

/// The floods: kind by kind, every system under each kind one after the other, so that the
/// systems under one kind are measured close together.
fn flood_all(systems: &mut [Finished], opts: &Opts) -> Result<()> {
    if opts.flood_seconds == 0 {
        return Ok(());
    }
    for kind in &opts.flood_kinds {
        for f in systems.iter_mut() {
            let system = f.result.system;
            let Some(sc) = scenario(system, *kind) else {
                continue;
            };
            eprintln!("{}: flood {} ({})", system.name(), kind.name(), sc.what);
            let r = flood_phase(&mut f.bed, &f.setup, &sc, opts)?;
            f.result.floods.push(r);
        }
    }
    Ok(())
}

/// The figures of a system; its namespaces go.
fn close(f: Finished) -> SystemResult {
    if f.result.system == System::SesameTmpfs {
        let dir = format!(
            "/dev/shm/sesame-netbench-{}-{}",
            std::process::id(),
            f.bed.lab.n
        );
        let _ = std::fs::remove_dir_all(dir);
    }
    f.result
}

pub(crate) fn bench(opts: &Opts) -> Result<()> {
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
    let mut finished: Vec<Finished> = prepared
        .into_iter()
        .map(|p| finish(p, opts))
        .collect::<Result<_>>()?;
    flood_all(&mut finished, opts)?;
    for f in finished {
        let r = close(f);
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
    for r in ratios.iter().chain(&flood_ratios(&results)) {
        out.emit(r);
    }
    print!("{}", report(&m, opts, &phase, &results, &skipped, &ratios));
    Ok(())
}

/// The machine during the measured knocks.
pub(crate) struct Phase {
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    /// Busy share of all CPUs, %.
    pub(crate) busy: f64,
    /// Share of all CPUs spent in niced processes (a fuzzer at nice 19), %.
    pub(crate) nice: f64,
}
