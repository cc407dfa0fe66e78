//! Scenario 9: the `command` backend runs `open_command` and, when the lease ends,
//! `close_command`, with every placeholder substituted.

use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, require_netns};

use crate::common::Fixture;

/// Lines of the log the script writes: `SECONDS.NANOS ARGS...`.
fn calls(path: &std::path::Path) -> Vec<(f64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, rest) = l.split_once(' ')?;
            Some((t.parse().ok()?, rest.to_owned()))
        })
        .collect()
}

fn wait_call(path: &std::path::Path, want: &str, timeout: Duration) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((t, _)) = calls(path).into_iter().find(|(_, c)| c == want) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "no call `{want}` within {timeout:?}; calls: {:?}",
            calls(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn s9_command_backend_runs_open_and_close() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s9-command");
    let log = f.lab.path("firewall-calls.log");
    let script = f.lab.write(
        "firewall.sh",
        &format!(
            "#!/bin/sh\necho \"$(date +%s.%N) $*\" >> '{}'\n",
            log.display()
        ),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = script.to_string_lossy().into_owned();
    f.spec.backend = "command".to_owned();
    f.spec.protect = vec!["tcp/22".to_owned(), "udp/51820".to_owned()];
    f.spec.lease_seconds = 3;
    f.spec.open_command = Some(
        [
            script.as_str(),
            "open",
            "{ip}",
            "{proto}",
            "{port}",
            "{client}",
            "{lease_seconds}",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    f.spec.close_command = Some(
        [
            script.as_str(),
            "close",
            "{ip}",
            "{proto}",
            "{port}",
            "{client}",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    f.serve_ports = Some(Vec::new());
    f.start();
    let profile6 = f.export_profile(Family::V6);

    let c4 = f.lab.addr(Host::Client, Family::V4);
    let c6 = f.lab.addr(Host::Client, Family::V6);
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, c4);
    let mark = f.mark();
    f.knock_from(Host::Client, &profile6, &["-6"]);
    f.expect_grant(mark, c6);

    let wait = Duration::from_secs(5);
    for ip in [c4, c6] {
        for (proto, port) in [("tcp", 22), ("udp", 51820)] {
            let opened = wait_call(&log, &format!("open {ip} {proto} {port} laptop 3"), wait);
            let closed = wait_call(
                &log,
                &format!("close {ip} {proto} {port} laptop"),
                Duration::from_secs(10),
            );
            let lease = closed - opened;
            assert!(
                (2.5..=6.0).contains(&lease),
                "close ran {lease:.2} s after open for {ip} {proto}/{port} (lease 3 s); calls: {:?}",
                calls(&log)
            );
        }
    }
    let all = calls(&log);
    assert_eq!(
        all.len(),
        8,
        "one open and one close per service and address: {all:?}"
    );
}
