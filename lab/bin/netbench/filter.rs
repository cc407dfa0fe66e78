//! `sesame-netbench filter`: how much of a random in-range flood reaches sesamed, by capture
//! filter.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sesame_tests::require_netns;

use crate::Result;
use crate::flood::{FloodKind, flood_phase, scenario};
use crate::knock::knock_series;
use crate::lab::Bed;
use crate::options::{FilterArgs, Opts, System};
use crate::stats::{f2, open_ms, summarize};
use crate::systems::{SESAME_RANGE, packets_seen, sesame_config, start_sesame};
use crate::util::{loadavg, log_lines, utc_now};

/// The last `capture filter: …` line of sesamed's (JSON) log: (filter, message).
pub(crate) fn last_filter_line(log: &Path) -> (String, String) {
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

pub(crate) fn filter_bench(args: FilterArgs) -> Result<()> {
    let clients: Vec<usize> = args
        .clients
        .split(',')
        .map(|x| x.parse().map_err(|_| format!("--clients: {x}")))
        .collect::<Result<_>>()?;
    let modes: Vec<String> = args.modes.split(',').map(str::to_owned).collect();
    let opts = Opts {
        flood_seconds: args.flood_seconds.max(1),
        flood_knocks: args.flood_knocks as usize,
        flood_rate: args.flood_rate,
        // One sender, random UDP to the whole range.
        flood_senders: 1,
        ..Opts::default()
    };
    let scenario = scenario(System::Sesame, FloodKind::Udp).ok_or("internal: no udp flood")?;
    let mut json_out: Option<File> = match &args.json {
        Some(v) => Some(File::create(v).map_err(|e| format!("{}: {e}", v.display()))?),
        None => None,
    };
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
            let seen0 = packets_seen(bed.server_ns(), &bed.lab.dir, &config)?;
            let r = flood_phase(&mut bed, &setup, &scenario, &opts)?;
            std::thread::sleep(Duration::from_millis(300));
            let seen1 = packets_seen(bed.server_ns(), &bed.lab.dir, &config)?;
            let generator = r.generators.first().cloned().unwrap_or(Value::Null);
            let sent = generator["packets"].as_u64().unwrap_or(0);
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
                    "generator": generator,
                });
                let _ = writeln!(f, "{line}");
            }
        }
        bed.daemon = None;
    }
    Ok(())
}
