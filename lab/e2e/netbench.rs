//! A smoke run of the namespace benchmark (`sesame-netbench`, `scripts/netbench`,
//! BENCHMARKS.md), so that it keeps compiling and working: 5 knocks per system, then two
//! floods of a second each, one knock each, at [`SMOKE_FLOOD_RATE`] frames per second: a
//! replay of a captured knock from two senders, and the mix of every kind (udp, syn, payload,
//! replay: one sender each, which runs each kind's sender for every system). It checks that every system was measured and
//! that the figures are sane and produced (rates, the daemon's handled rate, the replayed
//! capture), and that sesame opened every time and never for a spoofed source; the peers'
//! figures are reported, not judged. Without fwknop or knockd installed the peers are skipped,
//! except in CI (`CI=true`), where they must be installed (see `.ci/run`).

use std::process::Command;

use serde_json::Value;
use sesame_tests::{in_ci, require_netns, text};

/// The smoke flood's rate: the other e2e tests run beside it on shared cores.
const SMOKE_RATE: &str = "10000";
/// The main smoke run's flood rate (all senders): low, because knockd forks a shell and an
/// iptables for every spoofed source that replays its sequence (at 3 000 frames/s that was a
/// thousand processes a second, the machine's load average in the hundreds for a minute).
const SMOKE_FLOOD_RATE: &str = "300";
/// The smoke run's flood kinds (mix runs the senders of udp, syn, payload and replay).
const FLOOD_KINDS: [&str; 2] = ["replay", "mix"];

/// Programs the peers need (Debian packages fwknop-client, fwknop-server, knockd, iptables).
const PEER_PROGRAMS: [&str; 5] = ["fwknop", "fwknopd", "knock", "knockd", "iptables"];

fn installed(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .any(|d| !d.is_empty() && std::path::Path::new(d).join(program).is_file())
}

#[test]
fn netbench_smoke_run_measures_every_system() {
    if !require_netns() {
        return;
    }
    let missing: Vec<&str> = PEER_PROGRAMS
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    assert!(
        missing.is_empty() || !in_ci(),
        "CI must install the peers for the benchmark's smoke run \
         (apt-get install fwknop-client fwknop-server knockd iptables); missing: {missing:?}"
    );
    let json = std::env::temp_dir().join(format!(
        "sesame-netbench-smoke-{}.jsonl",
        std::process::id()
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sesame-netbench"));
    cmd.args([
        "--knocks",
        "5",
        "--warmup",
        "1",
        "--gap-ms",
        "20",
        "--flood-seconds",
        "1",
        "--flood-knocks",
        "1",
        "--flood-timeout-ms",
        "3000",
        "--flood-rate",
        SMOKE_FLOOD_RATE,
        "--flood-senders",
        "2",
        "--flood-kinds",
        "replay,mix",
        "--systems",
        "floor,sesame,fwknop,knockd,floor-netlink,sesame-fence",
        "--json",
    ])
    .arg(&json);
    if !missing.is_empty() {
        sesame_tests::skip(&format!(
            "the benchmark's peers are not installed: {missing:?} (the test runs without them)"
        ));
        cmd.arg("--skip-missing");
    }
    let o = cmd.output().expect("run sesame-netbench");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "sesame-netbench failed: {}", text(&o));
    let lines = std::fs::read_to_string(&json).expect("the JSON lines file");
    // scripts/netbench-pool pools the runs' samples (BENCHMARKS.md, "The tail over many
    // runs"): here one run, given twice.
    let pool = Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netbench-pool"),
    )
    .args(["--draws", "50"])
    .arg(&json)
    .arg(&json)
    .output()
    .expect("run scripts/netbench-pool");
    let _ = std::fs::remove_file(&json);
    let pooled = String::from_utf8_lossy(&pool.stdout).into_owned();
    assert!(
        pool.status.success(),
        "netbench-pool failed: {}",
        text(&pool)
    );
    for system in ["sesame", "sesame-fence"] {
        assert!(
            pooled.contains(&format!("{system} - floor-netlink, p99: "))
                && pooled.contains("(10 and 10 knocks;"),
            "netbench-pool: no pooled gap of {system}:\n{pooled}"
        );
    }
    let records: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let of = |kind: &str, system: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["kind"] == kind && r["system"] == system)
            .collect()
    };
    let machine = records.iter().find(|r| r["kind"] == "machine");
    assert!(
        machine.is_some_and(|m| m["nproc"].as_u64().unwrap_or(0) > 0),
        "no machine record: {lines}"
    );

    let mut systems = vec!["floor", "sesame", "floor-netlink", "sesame-fence"];
    if missing.is_empty() {
        systems.extend(["fwknop", "knockd"]);
    }
    for system in &systems {
        let l = of("latency", system);
        assert_eq!(l.len(), 1, "{system}: no latency record; output:\n{stdout}");
        let l = l[0];
        assert_eq!(l["knocks"], 5, "{system}: {l}");
        if ["floor", "sesame", "floor-netlink", "sesame-fence"].contains(system) {
            assert_eq!(l["failures"], 0, "{system} failed knocks: {l}\n{stdout}");
        }
        if l["opened"].as_u64().unwrap_or(0) > 0 {
            let median = l["median_ms"].as_f64().unwrap_or(0.0);
            let (min, max) = (
                l["min_ms"].as_f64().unwrap_or(0.0),
                l["max_ms"].as_f64().unwrap_or(0.0),
            );
            assert!(
                median > 0.0 && min > 0.0 && min <= median && median <= max,
                "{system}: insane figures {l}"
            );
        }
        assert!(
            stdout.contains(&format!("| {system} | 5 |")),
            "{system}: not in the report:\n{stdout}"
        );
    }
    // sesame's breakdown matched its knocks to sesamed's log lines.
    let b = of("breakdown", "sesame");
    assert_eq!(b.len(), 1, "no sesame breakdown: {lines}");
    assert_eq!(b[0]["matched"], 5, "breakdown: {}", b[0]);
    // Every knock's stages, and the report's slowest knocks (at least 3) stage by stage.
    let rows = b[0]["per_knock_ms"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 5, "per-knock stages: {}", b[0]);
    for r in &rows {
        let r = r.as_array().cloned().unwrap_or_default();
        assert_eq!(r.len(), 6, "a per-knock row: {r:?}");
        let (accepted, open) = (r[3].as_f64(), r[5].as_f64());
        assert!(
            accepted.is_some_and(|a| a > 0.0) && open.is_some_and(|o| o > 0.0),
            "a per-knock row without its accepted knock or its opening: {r:?}"
        );
    }
    let slowest = stdout
        .split("The slowest 3 knocks (ms)")
        .count()
        .saturating_sub(1);
    assert_eq!(
        slowest, 4,
        "the slowest knocks of floor, floor-netlink, sesame and sesame-fence:\n{stdout}"
    );

    let mut flooded = vec!["sesame"];
    if missing.is_empty() {
        flooded.extend(["fwknop", "knockd"]);
    }
    for system in flooded {
        let floods = of("flood", system);
        let kinds: Vec<&str> = floods
            .iter()
            .map(|f| f["flood_kind"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            kinds, FLOOD_KINDS,
            "{system}: one flood of each kind: {lines}"
        );
        for f in floods {
            let kind = f["flood_kind"].as_str().unwrap_or("");
            assert_eq!(f["knocks"], 1, "{system} {kind}: {f}");
            // Two senders; a mixed flood has one per kind at least.
            let senders = if kind == "mix" { 4 } else { 2 };
            assert_eq!(f["senders"], senders, "{system} {kind}: {f}");
            let each = f["generator"]["each"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                each.len(),
                senders,
                "{system} {kind}: every sender reported: {f}"
            );
            for g in &each {
                assert!(
                    g["packets"].as_u64().unwrap_or(0) > 0,
                    "{system} {kind}: a sender sent nothing: {g}"
                );
            }
            let mut modes: Vec<&str> = each.iter().filter_map(|g| g["mode"].as_str()).collect();
            modes.sort_unstable();
            modes.dedup();
            // The peers' fake knocks are sesame-flood's udp mode (fixed-size datagrams).
            let want: &[&str] = match (kind, system) {
                ("mix", "sesame") => &["payload", "replay", "syn", "udp"],
                ("mix", _) => &["replay", "syn", "udp"],
                _ => &["replay"],
            };
            assert_eq!(modes, want, "{system} {kind}: the senders' modes: {f}");
            assert!(
                f["generator"]["packets"].as_u64().unwrap_or(0) > 0
                    && f["offered_pps"].as_f64().unwrap_or(0.0) > 0.0,
                "{system} {kind}: the flood sent nothing: {f}"
            );
            assert!(
                f["arrived_pps"].as_f64().unwrap_or(0.0) > 0.0,
                "{system} {kind}: nothing arrived at the server's link: {f}"
            );
            assert!(
                f["peak_rss_kib"].as_u64().unwrap_or(0) > 0,
                "{system} {kind}: no RSS figure: {f}"
            );
            if kind == "replay" {
                // The captured knock: sesame's 3 knocks and payload, fwknop's SPA packet,
                // knockd's 3 knocks.
                let datagrams = match system {
                    "sesame" => 4,
                    "fwknop" => 1,
                    _ => 3,
                };
                assert_eq!(
                    f["replayed_datagrams"], datagrams,
                    "{system}: the replayed capture: {f}"
                );
            }
            if system == "sesame" {
                assert_eq!(f["failures"], 0, "sesame failed under the flood: {f}");
                assert_eq!(
                    f["spurious_grants"], 0,
                    "sesame let a spoofed source in: {f}"
                );
                assert!(
                    f["handled_pps"].as_f64().is_some(),
                    "sesamed's handled rate (packets_seen): {f}"
                );
                if kind == "replay" || kind == "mix" {
                    assert_eq!(
                        f["captured_source_grants"], 0,
                        "the replayed knock opened again: {f}"
                    );
                }
            } else {
                assert!(
                    f["handled_pps"].is_null(),
                    "{system} counts no packets: {f}"
                );
            }
        }
    }
    eprintln!("{stdout}");
    if missing.is_empty() {
        let ratios: Vec<&Value> = records.iter().filter(|r| r["kind"] == "ratio").collect();
        assert_eq!(ratios.len(), 2, "sesame/peer ratios: {lines}");
        let flood_ratios = records
            .iter()
            .filter(|r| r["kind"] == "flood_ratio")
            .count();
        assert_eq!(
            flood_ratios,
            2 * FLOOD_KINDS.len(),
            "sesame/peer ratios under each flood: {lines}"
        );
        assert!(
            stdout.contains("### Floods at the machine's limit"),
            "the flood table: {stdout}"
        );
    }
}

/// A smoke run of `sesame-netbench filter` (BENCHMARKS.md, "Only live ports reach sesamed"):
/// 10 and 300 clients (a classic BPF program and the eBPF bitmap), the range filter and the
/// live one, a 2-second flood at [`SMOKE_RATE`] each. It checks that every run was measured,
/// that every knock opened and which filter each run used; it judges no figure.
#[test]
fn netbench_filter_smoke_run_measures_both_filters() {
    if !require_netns() {
        return;
    }
    let json = std::env::temp_dir().join(format!(
        "sesame-netbench-filter-smoke-{}.jsonl",
        std::process::id()
    ));
    let o = Command::new(env!("CARGO_BIN_EXE_sesame-netbench"))
        .args([
            "filter",
            "--clients",
            "10,300",
            "--flood-seconds",
            "2",
            "--flood-knocks",
            "3",
            "--flood-rate",
            SMOKE_RATE,
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run sesame-netbench filter");
    assert!(
        o.status.success(),
        "sesame-netbench filter failed: {}",
        text(&o)
    );
    let lines = std::fs::read_to_string(&json).expect("the JSON lines file");
    let _ = std::fs::remove_file(&json);
    let records: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let kinds: Vec<(u64, &str)> = records
        .iter()
        .map(|r| {
            (
                r["clients"].as_u64().unwrap_or(0),
                r["filter"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (10, "range"),
            (10, "classic"),
            (300, "range"),
            (300, "ebpf")
        ],
        "{lines}"
    );
    for r in &records {
        assert_eq!(r["opened"], 3, "every knock opens: {r}");
        assert!(
            r["sent"].as_u64().unwrap_or(0) > 0,
            "the flood sent nothing: {r}"
        );
    }
}
