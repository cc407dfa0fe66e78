//! `--log-format json`, and the Fail2Ban filter of packaging/fail2ban/ run by `fail2ban-regex`
//! over real logs (human and JSON).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sesame_tests::{ClientSpec, Family, Host, bin, require_netns, text};

use crate::common::Fixture;

use super::{captured_knock, expect_log, replay};

/// A daemon in single-packet mode with the `laptop` and an expired client `old`, started with
/// `--log-format FORMAT`; then rejections from known sources: the laptop's knock replayed from
/// the client and from the attacker (`replay`), the expired client from the attacker over IPv4
/// and IPv6 (`expired`), and garbage to the laptop's payload port from the attacker (`bad_mac`).
/// Returns the fixture and the rejection sources in log order.
fn rejections_scenario(tag: &str, format: &str) -> (Fixture, Vec<IpAddr>) {
    let mut f = Fixture::new(tag);
    f.spec.knock.length = 0;
    f.spec.knock.step_seconds = 60;
    let old = f.lab.gen_key("old");
    let mut old_client = ClientSpec::new("old", &old.public);
    old_client.expires = Some("2020-01-01T00:00:00Z".to_owned());
    f.spec.clients.push(old_client);
    f.write();
    let mut addrs = Vec::new();
    for family in [Family::V4, Family::V6] {
        addrs.push(f.svc(family, 22));
    }
    f.service = Some(f.lab.serve(&addrs));
    let config = f.config.to_string_lossy().into_owned();
    let daemon = f.lab.spawn(
        Host::Server,
        "sesamed",
        bin("sesamed"),
        &["run", "--config", &config, "--log-format", format],
        &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
    );
    if daemon
        .wait_for(&["ready"], Duration::from_secs(15))
        .is_none()
    {
        panic!(
            "sesamed --log-format {format} is not ready:\n{}",
            daemon.output()
        );
    }
    f.daemon = Some(daemon);

    let client = f.lab.addr(Host::Client, Family::V4);
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    let attacker6 = f.lab.addr(Host::Attacker, Family::V6);
    let laptop_profile = f.profile.clone();
    let knock = captured_knock(&f, &laptop_profile, "single", format == "json");
    let mut sources = Vec::new();
    let expect = |f: &Fixture, sources: &mut Vec<IpAddr>, mark: usize, ip: IpAddr, reason: &str| {
        let (src, why) = if format == "json" {
            (
                format!("\"source\":\"{ip}\""),
                format!("\"reason\":\"{reason}\""),
            )
        } else {
            (format!("source={ip}"), format!("reason={reason}"))
        };
        expect_log(f, mark, &["rejected", &src, &why]);
        sources.push(ip);
    };
    for host in [Host::Client, Host::Attacker] {
        let mark = f.mark();
        replay(&f, host, &knock);
        expect(
            &f,
            &mut sources,
            mark,
            f.lab.addr(host, Family::V4),
            "replay",
        );
    }
    let old4 = f.write_profile("old4", Family::V4, &old.path, |_| {});
    let old6 = f.write_profile("old6", Family::V6, &old.path, |_| {});
    let mark = f.mark();
    f.knock_from(Host::Attacker, &old4, &[]);
    expect(&f, &mut sources, mark, attacker, "expired");
    let mark = f.mark();
    f.knock_from(Host::Attacker, &old6, &["-6"]);
    expect(&f, &mut sources, mark, attacker6, "expired");
    // Garbage to the laptop's payload port (single-packet mode: the payload is the knock).
    let p = laptop_profile.to_string_lossy().into_owned();
    let ports = f.lab.sesame(Host::Client, &["ports", "--profile", &p]);
    assert!(ports.status.success(), "{}", text(&ports));
    let ports = String::from_utf8_lossy(&ports.stdout).into_owned();
    let port = ports
        .lines()
        .find_map(|l| l.strip_prefix("payload  udp/"))
        .unwrap_or_else(|| panic!("no payload port in: {ports}"))
        .trim()
        .to_owned();
    let mark = f.mark();
    let o = f.lab.netprobe(
        Host::Attacker,
        &[
            "udp".to_owned(),
            format!("{}:{port}", f.server(Family::V4)),
            "--len".to_owned(),
            "184".to_owned(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    expect(&f, &mut sources, mark, attacker, "bad_mac");
    assert_eq!(sources.first(), Some(&client));
    (f, sources)
}

/// Runs `fail2ban-regex` with the shipped filter over `log`; returns the addresses it matched
/// (in order) and the number of lines it matched. Fails (CI) or returns `None` (elsewhere)
/// when fail2ban-regex is not installed.
fn fail2ban_regex(log: &Path) -> Option<(Vec<IpAddr>, usize)> {
    let filter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/fail2ban/sesamed.conf");
    let run = |extra: &[&str]| {
        Command::new("fail2ban-regex")
            .args(extra)
            .arg(log)
            .arg(&filter)
            .output()
    };
    let ips = match run(&["-o", "ip"]) {
        Ok(o) => o,
        Err(e) => {
            assert!(
                !sesame_tests::in_ci(),
                "fail2ban-regex is needed in CI (apt-get install fail2ban): {e}"
            );
            sesame_tests::skip(&format!("fail2ban-regex is not installed: {e}"));
            return None;
        }
    };
    assert!(ips.status.success(), "fail2ban-regex -o ip: {}", text(&ips));
    let matched: Vec<IpAddr> = String::from_utf8_lossy(&ips.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|e| panic!("fail2ban-regex -o ip printed {l:?}: {e}"))
        })
        .collect();
    let summary = run(&[]).expect("fail2ban-regex runs");
    assert!(
        summary.status.success(),
        "fail2ban-regex: {}",
        text(&summary)
    );
    let out = String::from_utf8_lossy(&summary.stdout).into_owned();
    // "Lines: 40 lines, 0 ignored, 5 matched, 35 missed"
    let line = out
        .lines()
        .find(|l| l.starts_with("Lines: "))
        .unwrap_or_else(|| panic!("no `Lines:` summary in:\n{out}"));
    let count = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" matched"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read the summary: {line}"));
    Some((matched, count))
}

fn fail2ban_scenario(tag: &str, format: &str) {
    let (mut f, sources) = rejections_scenario(tag, format);
    let mut daemon = f.daemon.take().expect("sesamed runs");
    let status = daemon.stop(Duration::from_secs(10));
    let lines = daemon.lines();
    f.daemon = Some(daemon);
    assert!(
        status.is_some_and(|s| s.success()),
        "sesamed exits 0 on SIGTERM: {status:?}"
    );
    let is_rejection = |l: &str| {
        if format == "json" {
            l.contains("\"message\":\"rejected\"")
        } else {
            l.contains(" rejected source=")
        }
    };
    let rejection_lines: Vec<&String> = lines.iter().filter(|l| is_rejection(l)).collect();
    assert_eq!(
        rejection_lines.len(),
        sources.len(),
        "one line per rejection: {rejection_lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("granted")),
        "the log has the laptop's grant"
    );
    if format == "json" {
        // Every line is one JSON object with a time, a level and a message; every rejection
        // carries its source address as a string.
        let mut seen = Vec::new();
        for l in &lines {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"));
            assert!(
                v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
                "{l}"
            );
            if v["message"] == "rejected" {
                let src = v["source"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a rejection without \"source\": {l}"));
                seen.push(src.parse::<IpAddr>().unwrap());
                assert!(v["reason"].is_string(), "{l}");
            }
        }
        assert_eq!(seen, sources, "the sources of the JSON rejection lines");
    }
    let log = f.lab.path(&format!("sesamed-{format}.log"));
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let Some((matched, count)) = fail2ban_regex(&log) else {
        return;
    };
    assert_eq!(
        matched,
        sources,
        "fail2ban-regex LOG packaging/fail2ban/sesamed.conf must find the address of exactly each rejection line, in order; the log:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        count,
        sources.len(),
        "fail2ban-regex matched only the rejection lines (not the grant nor anything else)"
    );
}

#[test]
fn fail2ban_filter_matches_the_rejections_of_the_human_log() {
    if !require_netns() {
        return;
    }
    fail2ban_scenario("op-f2b", "human");
}

#[test]
fn json_log_lines_are_json_and_the_fail2ban_filter_matches_them() {
    if !require_netns() {
        return;
    }
    fail2ban_scenario("op-json", "json");
}
