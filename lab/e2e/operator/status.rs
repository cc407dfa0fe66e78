//! `sesamed status` (human, JSON, Prometheus) during a lease and after a refused knock, and
//! the control socket's mode.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use sesame_tests::{ATTACKER_IF, Family, Host, SERVER_IF_ATTACKER, bin, require_netns};

use crate::common::Fixture;

use super::{expect_reject, knock_granted, sesamed_ok, status_json};

/// One Prometheus sample value: `name` or `name{labels}`.
fn prom_value(text: &str, series: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn status_shows_leases_last_knocks_and_counters() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-status");
    f.spec.lease_seconds = 20;
    f.start();
    let client_v4 = f.lab.addr(Host::Client, Family::V4).to_string();

    // The control socket is a socket that only its owner may use.
    let socket = f.lab.path("sesamed.sock");
    let meta =
        std::fs::symlink_metadata(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    assert!(meta.file_type().is_socket(), "{}", socket.display());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "control socket mode"
    );

    let human = sesamed_ok(&f, &["status"]);
    assert!(human.starts_with("sesamed "), "{human}");
    assert!(human.contains("leases (0):"), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("capture filter: ") && l.contains("live ports")),
        "the capture filter in use: {human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.contains("laptop") && l.contains("no knock since start")),
        "{human}"
    );
    let s = status_json(&f);
    assert_eq!(s["leases"].as_array().unwrap().len(), 0, "{s}");
    assert!(s["clients"][0]["last_knock"].is_null(), "{s}");

    // A refused knock: another address without allow_other_ip.
    let mark = f.mark();
    let other = f.lab.addr(Host::Attacker, Family::V4).to_string();
    f.knock(&["--allow-ip", &other]);
    expect_reject(
        &f,
        mark,
        f.lab.addr(Host::Client, Family::V4),
        "other_ip_not_allowed",
    );
    let s = status_json(&f);
    let laptop = &s["clients"][0];
    assert_eq!(laptop["name"], "laptop", "{s}");
    assert_eq!(laptop["last_result"], "other_ip_not_allowed", "{s}");
    assert_eq!(laptop["last_source"], client_v4.as_str(), "{s}");
    assert_eq!(
        s["counters"]["rejections"]["other_ip_not_allowed"], 1,
        "{s}"
    );
    assert_eq!(s["leases"].as_array().unwrap().len(), 0, "{s}");

    // A granted knock: a lease with seconds left.
    let profile = f.profile.clone();
    knock_granted(&f, Host::Client, &profile, "laptop");
    let s = status_json(&f);
    let leases = s["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{s}");
    assert_eq!(leases[0]["client"], "laptop", "{s}");
    assert_eq!(leases[0]["address"], client_v4.as_str(), "{s}");
    assert_eq!(leases[0]["service"], "tcp/22", "{s}");
    let left = leases[0]["seconds_left"].as_u64().unwrap();
    assert!((10..=20).contains(&left), "seconds left: {left} of 20: {s}");
    let laptop = &s["clients"][0];
    assert_eq!(laptop["last_result"], "granted", "{s}");
    assert_eq!(laptop["last_source"], client_v4.as_str(), "{s}");
    let at = laptop["last_knock"].as_str().unwrap();
    assert!(at.len() >= 20 && at.ends_with('Z'), "RFC 3339 UTC: {at}");
    let c = &s["counters"];
    assert!(
        c["packets_seen"].as_u64().unwrap() >= 8,
        "two knocks of 4: {s}"
    );
    assert!(
        c["packets_in_range"].as_u64().unwrap() >= 8,
        "two knocks of 4: {s}"
    );
    assert_eq!(c["sequences_completed"], 2, "{s}");
    assert_eq!(c["payloads_seen"], 2, "{s}");
    // Both payloads were authentic; whether the one refused by policy counts as "accepted"
    // (it does today: the counter is bumped before the policy checks) is not pinned here.
    let accepted = c["payloads_accepted"].as_u64().unwrap();
    assert!((1..=2).contains(&accepted), "{s}");
    assert_eq!(c["grants"], 1, "{s}");
    assert_eq!(c["leases_opened"], 1, "{s}");
    // The capture socket's drops: a number, and none on a quiet link.
    assert_eq!(c["capture_drops"].as_u64(), Some(0), "{s}");
    assert_eq!(c["rejections"]["other_ip_not_allowed"], 1, "{s}");
    assert!(
        s["pid"].as_u64().unwrap() > 0 && s["version"].is_string(),
        "{s}"
    );

    // The same in the human format.
    let human = sesamed_ok(&f, &["status"]);
    assert!(human.contains("leases (1):"), "{human}");
    let lease_line = human
        .lines()
        .find(|l| l.trim_start().starts_with("laptop") && l.ends_with("s left"))
        .unwrap_or_else(|| panic!("no lease line: {human}"));
    assert!(
        lease_line.contains(&client_v4) && lease_line.contains("tcp/22"),
        "{lease_line}"
    );
    let secs: u64 = lease_line
        .trim_end_matches(" s left")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((5..=20).contains(&secs), "{lease_line}");
    assert!(
        human
            .lines()
            .any(|l| l.contains("last knock") && l.contains(&format!("from {client_v4}: granted"))),
        "{human}"
    );
    assert!(human.contains("sequences 2"), "{human}");
    assert!(
        human.contains(", dropped by the capture socket 0)"),
        "{human}"
    );
    assert!(
        human.contains(&format!("payloads 2 (accepted {accepted})")),
        "{human}"
    );
    assert!(
        human.contains("rejections: other_ip_not_allowed 1"),
        "{human}"
    );

    // And in Prometheus's text format: every sample has its HELP and TYPE.
    let prom = sesamed_ok(&f, &["status", "--prometheus"]);
    for line in prom.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(
            prom.contains(&format!("# TYPE {name} ")) && prom.contains(&format!("# HELP {name} ")),
            "{line}: no HELP/TYPE in:\n{prom}"
        );
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert!(
        prom_value(&prom, "sesamed_packets_seen_total").unwrap() >= 8,
        "{prom}"
    );
    assert_eq!(
        prom_value(&prom, "sesamed_sequences_completed_total"),
        Some(2),
        "{prom}"
    );
    assert_eq!(
        prom_value(&prom, "sesamed_payloads_accepted_total"),
        Some(accepted),
        "{prom}"
    );
    assert_eq!(prom_value(&prom, "sesamed_grants_total"), Some(1), "{prom}");
    assert_eq!(
        prom_value(&prom, "sesamed_capture_drops_total"),
        Some(0),
        "{prom}"
    );
    assert_eq!(
        prom_value(&prom, "sesamed_leases_active"),
        Some(1),
        "{prom}"
    );
    assert_eq!(
        prom_value(
            &prom,
            "sesamed_rejections_total{reason=\"other_ip_not_allowed\"}"
        ),
        Some(1),
        "{prom}"
    );
}

/// Sends `sig` to `pid` (`kill -SIG PID`).
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// Lets a stopped sesamed run again even when the test fails while it is stopped.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

#[test]
fn status_counts_the_capture_sockets_drops() {
    if !require_netns() {
        return;
    }
    // sesamed is stopped (SIGSTOP) while 100 000 fake payloads arrive at its live payload ports:
    // more than its capture socket's 8 MiB queue holds, so the kernel drops the rest. Once it
    // runs again, `capture_drops` (read from PACKET_STATISTICS every second) counts them, in
    // the JSON, the human line and the Prometheus metrics.
    let mut f = Fixture::new("op-drops");
    f.start();
    let s = status_json(&f);
    assert_eq!(s["counters"]["capture_drops"].as_u64(), Some(0), "{s}");
    let pid = crate::flood::sesamed_pid(&f);
    const FRAMES: u64 = 100_000;
    let lab = &f.lab;
    let args: Vec<String> = vec![
        "payload".into(),
        "--profile".into(),
        f.profile.to_string_lossy().into_owned(),
        "--iface".into(),
        ATTACKER_IF.into(),
        "--dst-mac".into(),
        lab.mac(Host::Server, SERVER_IF_ATTACKER),
        "--dst4".into(),
        lab.server_v4_attacker_side().to_string(),
        "--sources".into(),
        "1024".into(),
        "--count".into(),
        FRAMES.to_string(),
        "--duration-ms".into(),
        "60000".into(),
    ];
    signal(pid, "STOP");
    let stopped = Continue(pid);
    let out = lab.run_ok(Host::Attacker, bin("sesame-flood"), &args);
    let report: serde_json::Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("sesame-flood printed no report: {out}"));
    let sent = report["packets"].as_u64().unwrap_or(0);
    assert!(sent >= FRAMES / 2, "frames sent: {report}");
    drop(stopped);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let s = loop {
        let s = status_json(&f);
        if s["counters"]["capture_drops"].as_u64().unwrap_or(0) > 0 {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no capture drops counted after {sent} frames at a stopped sesamed: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let drops = s["counters"]["capture_drops"].as_u64().unwrap();
    let seen = s["counters"]["packets_seen"].as_u64().unwrap();
    assert!(
        drops <= sent && seen + drops <= sent + 100,
        "drops {drops} and packets seen {seen} of {sent} frames: {s}"
    );
    let human = sesamed_ok(&f, &["status"]);
    assert!(
        human.contains(&format!(", dropped by the capture socket {drops})")),
        "{human}"
    );
    let prom = sesamed_ok(&f, &["status", "--prometheus"]);
    assert_eq!(
        prom_value(&prom, "sesamed_capture_drops_total"),
        Some(drops),
        "{prom}"
    );
}
