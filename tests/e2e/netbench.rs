//! A smoke run of the namespace benchmark (`sesame-netbench`, `scripts/netbench`,
//! BENCHMARKS.md), so that it keeps compiling and working: 5 knocks per system, a 2-second
//! flood at [`SMOKE_RATE`] frames per second per scenario. It checks that every system was
//! measured and that the figures are sane, and that sesame opened every time; the peers'
//! figures are reported, not judged. Without fwknop or knockd installed the peers are skipped,
//! except in CI (`CI=true`), where they must be installed (see `.ci/run`).

use std::process::Command;

use serde_json::Value;
use sesame_tests::{in_ci, require_netns, text};

/// The smoke flood's rate: the other e2e tests run beside it on shared cores.
const SMOKE_RATE: &str = "10000";

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
        "2",
        "--flood-knocks",
        "3",
        "--flood-timeout-ms",
        "2000",
        "--flood-rate",
        SMOKE_RATE,
        "--systems",
        "floor,sesame,fwknop,knockd,floor-netlink",
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
    let _ = std::fs::remove_file(&json);
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

    let mut systems = vec!["floor", "sesame", "floor-netlink"];
    if missing.is_empty() {
        systems.extend(["fwknop", "knockd"]);
    }
    for system in &systems {
        let l = of("latency", system);
        assert_eq!(l.len(), 1, "{system}: no latency record; output:\n{stdout}");
        let l = l[0];
        assert_eq!(l["knocks"], 5, "{system}: {l}");
        if ["floor", "sesame", "floor-netlink"].contains(system) {
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

    let mut flooded = vec!["sesame"];
    if missing.is_empty() {
        flooded.extend(["fwknop", "knockd"]);
    }
    for system in flooded {
        let floods = of("flood", system);
        assert!(!floods.is_empty(), "{system}: no flood record: {lines}");
        for f in floods {
            assert_eq!(f["knocks"], 3, "{system}: {f}");
            assert!(
                f["offered_pps"].as_f64().unwrap_or(0.0) > 0.0,
                "{system}: the flood sent nothing: {f}"
            );
            assert!(
                f["peak_rss_kib"].as_u64().unwrap_or(0) > 0,
                "{system}: no RSS figure: {f}"
            );
            if system == "sesame" {
                assert_eq!(f["failures"], 0, "sesame failed under the flood: {f}");
                assert_eq!(
                    f["spurious_grants"], 0,
                    "sesame let a spoofed source in: {f}"
                );
            }
        }
    }
    eprintln!("{stdout}");
    if missing.is_empty() {
        let ratios: Vec<&Value> = records.iter().filter(|r| r["kind"] == "ratio").collect();
        assert_eq!(ratios.len(), 2, "sesame/peer ratios: {lines}");
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
