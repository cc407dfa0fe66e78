//! Floods: `sesame-flood` from the attacker namespace while the client knocks.

use std::time::{Duration, Instant};

use serde_json::Value;
use sesame_tests::{ATTACKER_IF, Host, bin, clk_tck, proc_stats};

use crate::Result;
use crate::knock::{Knock, knock_series};
use crate::lab::{Bed, LAN};
use crate::options::Opts;
use crate::systems::{Setup, spurious};
use crate::util::cpu_jiffies;

#[derive(Clone, Debug)]
pub(crate) struct FloodResult {
    pub(crate) scenario: &'static str,
    pub(crate) lo: u16,
    pub(crate) hi: u16,
    pub(crate) knocks: Vec<Knock>,
    pub(crate) seconds: f64,
    pub(crate) offered_pps: f64,
    pub(crate) cpu_percent: f64,
    pub(crate) child_cpu_percent: f64,
    pub(crate) hwm_kib: u64,
    pub(crate) rss_kib: u64,
    pub(crate) machine_busy_percent: f64,
    /// Grants for spoofed sources during the flood.
    pub(crate) spurious_grants: usize,
    pub(crate) generator: Value,
}

pub(crate) fn flood_phase(
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
