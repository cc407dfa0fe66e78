//! The report: the machine, the Markdown tables and the JSON lines.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::process::Command;

use serde_json::{Value, json};

use crate::breakdown::Stages;
use crate::flood::{ALL_FLOOD_KINDS, generators_json};
use crate::options::{Opts, System};
use crate::run::{Phase, SystemResult};
use crate::stats::{f2, open_ms, summarize, summary_json};
use crate::util::{loadavg, ms, package_version, utc_now};

pub(crate) fn machine() -> Value {
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

pub(crate) struct Out {
    pub(crate) json: Option<File>,
}

impl Out {
    pub(crate) fn emit(&mut self, v: &Value) {
        if let Some(f) = &mut self.json {
            let _ = writeln!(f, "{v}");
        }
    }
}

pub(crate) fn emit_system(out: &mut Out, r: &SystemResult) {
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
            "client_first_sent": summary_json(&summarize(&st.sent_first, st.sent_first.len())),
            "client_last_sent": summary_json(&summarize(&st.sent_last, st.sent_last.len())),
            "last_sent_to_accepted": summary_json(&summarize(&st.last_sent_to_accepted, st.last_sent_to_accepted.len())),
            "open": summary_json(&summarize(&st.open, st.open.len())),
            "per_knock_fields": ["first datagram sent", "last datagram sent", "event 1", "event 2", "event 3", "connection completed"],
            "per_knock_ms": st.rows.iter().map(|r| r.map(|x| x.map(|x| (x * 1000.0).round() / 1000.0))).collect::<Vec<_>>(),
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
        v["scenario"] = json!(f.scenario.kind.name());
        v["flood_kind"] = json!(f.scenario.kind.name());
        v["what"] = json!(f.scenario.what);
        v["senders"] = json!(f.senders);
        v["seconds"] = json!(f.seconds);
        v["offered_pps"] = json!(f.offered_pps);
        v["arrived_pps"] = json!(f.arrived_pps);
        v["rx_dropped"] = json!(f.rx_dropped);
        v["capture_drops"] = json!(f.capture_drops);
        v["daemon_counters"] = f.daemon_counters.clone();
        v["pinned"] = json!(f.pinned);
        v["handled_pps"] = if f.handled_pps.is_finite() {
            json!(f.handled_pps)
        } else {
            Value::Null
        };
        v["success_share"] = json!(s.ok as f64 / s.n.max(1) as f64);
        v["cpu_percent"] = json!(f.cpu_percent);
        v["children_cpu_percent"] = json!(f.child_cpu_percent);
        v["peak_rss_kib"] = json!(f.hwm_kib);
        v["rss_kib"] = json!(f.rss_kib);
        v["machine_busy_percent"] = json!(f.machine_busy_percent);
        v["spurious_grants"] = json!(f.spurious_grants);
        v["captured_source_grants"] = json!(f.captured_source_grants);
        v["replayed_datagrams"] = json!(f.replayed_datagrams);
        v["captured_knock_opened"] = json!(f.captured_knock_opened);
        v["settle_seconds"] = json!(f.settle_seconds);
        v["generator"] = generators_json(f);
        out.emit(&v);
    }
}

pub(crate) fn find(results: &[SystemResult], s: System) -> Option<&SystemResult> {
    results.iter().find(|r| r.system == s)
}

pub(crate) fn ratios(results: &[SystemResult]) -> Vec<Value> {
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

pub(crate) fn report(
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
        // The client's own part, from a packet socket on its interface (`knock::WireTap`).
        let client = [
            ("client: start → first datagram sent", st.sent_first.clone()),
            ("client: start → last datagram sent", st.sent_last.clone()),
            (
                "client: first → last datagram sent",
                diff(&st.sent_last, &st.sent_first),
            ),
            (
                if floor {
                    "last datagram sent → last datagram received"
                } else {
                    "last datagram sent → accepted (network, capture, payload, state)"
                },
                st.last_sent_to_accepted.clone(),
            ),
        ];
        for (name, v) in steps.into_iter().chain(client) {
            let x = summarize(&v, v.len());
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                f2(x.median),
                f2(x.p90),
                f2(x.p99)
            );
        }
        slowest(&mut s, st, floor);
    }
    flood_table(&mut s, results);
    s
}

/// The slowest 1 % of a system's knocks (at least 3), one line each, split into the stages
/// that add up to the knock's latency: what made the tail knocks slow.
fn slowest(s: &mut String, st: &Stages, floor: bool) {
    let mut rows: Vec<&[Option<f64>; 6]> = st.rows.iter().filter(|r| r[5].is_some()).collect();
    if rows.is_empty() {
        return;
    }
    rows.sort_by(|a, b| f64::total_cmp(&b[5].unwrap_or(0.0), &a[5].unwrap_or(0.0)));
    let n = (rows.len() / 100).max(3).min(rows.len());
    let (e2, e3) = if floor {
        ("last datagram received", "nft exited")
    } else {
        ("accepted", "granted logged")
    };
    let _ = writeln!(
        s,
        "\nThe slowest {n} knocks (ms), stage by stage (each stage from the end of the one before; the last can be negative when the connection completed before {e3})\n"
    );
    let _ = writeln!(
        s,
        "| start → last sent | → {e2} | → {e3} | → connection | latency |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
    let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => f2(b - a),
        _ => "-".to_owned(),
    };
    for r in rows.into_iter().take(n) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r[1].map_or("-".to_owned(), f2),
            d(r[1], r[3]),
            d(r[3], r[4]),
            d(r[4], r[5]),
            r[5].map_or("-".to_owned(), f2)
        );
    }
}

/// A rate in the table: `-` when not measured.
fn pps(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "-".to_owned()
    }
}

/// The floods' table, by kind then system, and sesame's latency under each kind against the
/// peers'.
fn flood_table(s: &mut String, results: &[SystemResult]) {
    if results.iter().all(|r| r.floods.is_empty()) {
        return;
    }
    let _ = writeln!(
        s,
        "\n### Floods at the machine's limit (65 536 spoofed sources, split among the senders)\n"
    );
    let _ = writeln!(
        s,
        "| kind | system | what | senders | s | offered pps | arrived pps (dropped) | daemon handled pps | capture socket drops | knocks opened | median ms | p99 ms | daemon CPU % (children) | peak RSS MiB (idle) | opened for spoofed sources | machine busy % | daemon busy after, s |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for kind in ALL_FLOOD_KINDS {
        for r in results {
            for f in r.floods.iter().filter(|f| f.scenario.kind == kind) {
                let x = summarize(&open_ms(&f.knocks), f.knocks.len());
                let replayed = match f.captured_source_grants {
                    Some(n) => format!(" (+{n} for the captured knock's source)"),
                    None => String::new(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.0} | {} | {} ({}) | {} | {} | {}/{} | {} | {} | {:.1} ({:.1}) | {:.1} ({:.1}) | {}{replayed} | {:.0} | {:.1} |",
                    kind.name(),
                    r.system.name(),
                    f.scenario.what,
                    f.senders,
                    f.seconds,
                    pps(f.offered_pps),
                    pps(f.arrived_pps),
                    f.rx_dropped,
                    pps(f.handled_pps),
                    f.capture_drops.map_or("-".to_owned(), |d| d.to_string()),
                    x.ok,
                    x.n,
                    f2(x.median),
                    f2(x.p99),
                    f.cpu_percent,
                    f.child_cpu_percent,
                    f.hwm_kib as f64 / 1024.0,
                    r.idle_hwm_kib as f64 / 1024.0,
                    f.spurious_grants,
                    f.machine_busy_percent,
                    f.settle_seconds
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\noffered: frames the senders wrote; arrived: the server link's rx counter; daemon handled: sesamed's `packets_seen` (what its capture filter let through and it read); capture socket drops: sesamed's `capture_drops` (what its filter let through but the socket's queue had no room for), until it was idle after the flood; fwknopd and knockd count no packets we can read (-)."
    );
    let rows = flood_ratios(results);
    if !rows.is_empty() {
        let _ = writeln!(s, "\n| kind | sesame / peer | median | p99 |");
        let _ = writeln!(s, "|---|---|---:|---:|");
        for v in rows {
            let x = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "| {} | sesame / {} | {} | {} |",
                v["flood_kind"].as_str().unwrap_or(""),
                v["to"].as_str().unwrap_or(""),
                f2(x("median")),
                f2(x("p99"))
            );
        }
    }
}

/// sesame's knock-to-open under each flood kind against each peer's under the same kind.
pub(crate) fn flood_ratios(results: &[SystemResult]) -> Vec<Value> {
    let mut v = Vec::new();
    let Some(sesame) = find(results, System::Sesame) else {
        return v;
    };
    for f in &sesame.floods {
        let a = summarize(&open_ms(&f.knocks), f.knocks.len());
        for peer in [System::Fwknop, System::Knockd, System::FwknopUdp] {
            let Some(p) = find(results, peer) else {
                continue;
            };
            for g in p
                .floods
                .iter()
                .filter(|g| g.scenario.kind == f.scenario.kind)
            {
                let b = summarize(&open_ms(&g.knocks), g.knocks.len());
                v.push(json!({
                    "kind": "flood_ratio",
                    "flood_kind": f.scenario.kind.name(),
                    "of": "sesame",
                    "to": peer.name(),
                    "median": a.median / b.median,
                    "p99": a.p99 / b.p99,
                    "opened": [a.ok, b.ok],
                }));
            }
        }
    }
    v
}
