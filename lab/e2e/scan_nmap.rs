//! Scans with nmap (the Debian package) from the attacker namespace: a UDP scan and a TCP-SYN
//! scan of the whole knock range, and a randomised scan (nmap's random port order, UDP and
//! SYN at once) repeated every time step for several steps. None may open anything, and the
//! legitimate client knocking at the same time from the client namespace must get in. (The
//! harness's own in-order sweep of scenario 6 is in `scan_sweep.rs`.)
//!
//! The deployments use `payload = "none"`, the weakest mode: a completed sequence alone
//! opens, so only the tracker's reset rule stands between a scan and a grant.

use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, Proc, require_netns, text};

use crate::common::{Fixture, LOG_WAIT};
use crate::flood::{counter, status};

/// The knock range of the scan tests: sesame's default, 22 768 ports.
const RANGE: (u16, u16) = (10000, 32767);

/// nmap's packets per second (it sends at least and at most this many). CI runs debug
/// builds two tests at a time on shared cores; both scans of the randomised test run at
/// once, so the daemon sees twice this.
const NMAP_RATE: u32 = 10_000;

/// True if nmap is installed; panics in CI (where `.ci/run` installs it), else prints why the
/// test is skipped.
fn require_nmap() -> bool {
    match std::process::Command::new("nmap").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        r => {
            let why = match r {
                Ok(o) => text(&o),
                Err(e) => e.to_string(),
            };
            if sesame_tests::in_ci() {
                panic!(
                    "the scan tests need nmap (apt-get install -y --no-install-recommends nmap): {why}"
                );
            }
            sesame_tests::skip(&format!("nmap is not installed: {why}"));
            false
        }
    }
}

fn deployment(tag: &str, protocol: &str, step_seconds: u32) -> Fixture {
    let mut f = Fixture::new(tag);
    f.spec.knock.port_range = RANGE;
    f.spec.knock.protocol = protocol.to_owned();
    f.spec.knock.payload = "none".to_owned();
    f.spec.knock.step_seconds = step_seconds;
    f.spec.lease_seconds = 30;
    // The range capture filter: every scanned port reaches the tracker, so its reset rule
    // meets the whole scan. With the live-port filter (the default) only the scan's packets to
    // live ports would reach it (every port of every sequence, but a few dozen in all):
    // lab/e2e/capture_filter.rs covers that.
    f.daemon_env = vec![("SESAMED_CAPTURE_FILTER", "range".to_owned())];
    f.start();
    f
}

/// Starts `nmap SCAN` of the whole knock range of the server's attacker-side address.
fn nmap(f: &Fixture, scan: &str) -> Proc {
    let target = f.lab.server_v4_attacker_side().to_string();
    let ports = format!("{}-{}", RANGE.0, RANGE.1);
    let rate = NMAP_RATE.to_string();
    f.lab.spawn(
        Host::Attacker,
        &format!("nmap {scan}"),
        "nmap",
        &[
            scan,
            "-p",
            &ports,
            "-Pn",
            "-n",
            "-T5",
            "--max-retries",
            "0",
            "--min-rate",
            &rate,
            "--max-rate",
            &rate,
            "-oG",
            "-",
            &target,
        ],
        &[],
    )
}

/// Waits for nmap and checks its report: the whole range scanned, no port open.
fn nmap_done(mut p: Proc, what: &str) -> String {
    let status = p.wait_exit(Duration::from_secs(120));
    let out = p.output();
    assert!(
        status.is_some_and(|s| s.success()),
        "{what}: nmap failed ({status:?}):\n{out}"
    );
    assert!(
        out.contains("1 IP address (1 host up)"),
        "{what}: nmap did not scan the host:\n{out}"
    );
    let total = usize::from(RANGE.1 - RANGE.0) + 1;
    // Either every port is in one ignored state ("Ignored State: filtered (22768)"), or the
    // ports are listed; none may be open.
    let listed = out.matches("/tcp/").count() + out.matches("/udp/").count();
    let ignored: usize = out
        .split("Ignored State: ")
        .skip(1)
        .filter_map(|s| {
            let n = s.split_once('(')?.1.split_once(')')?.0;
            n.trim().parse::<usize>().ok()
        })
        .sum();
    assert_eq!(
        listed + ignored,
        total,
        "{what}: nmap did not report every port of the range:\n{out}"
    );
    assert!(
        !out.contains("/open/"),
        "{what}: nmap found an open port:\n{out}"
    );
    out
}

/// The client knocks (sequence only) and must be let in.
fn client_gets_in(f: &Fixture, what: &str) {
    let mark = f.mark();
    let t0 = Instant::now();
    f.knock(&[]);
    let client = f.lab.addr(Host::Client, Family::V4);
    let src = format!("source={client}");
    assert!(
        f.daemon()
            .wait_for_after(mark, &[" granted client=laptop", &src], LOG_WAIT)
            .is_some(),
        "{what}: the client's knock was not granted within {LOG_WAIT:?}"
    );
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "{what}: the client cannot connect after its grant"
    );
    eprintln!("{what}: client in after {:?}", t0.elapsed());
}

/// Nothing opened for the attacker; every grant is the client's.
fn attacker_got_nothing(f: &Fixture, client_grants: u64, what: &str) {
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    let bad = f
        .daemon()
        .matching(0, &[" granted client=", &format!("source={attacker}")]);
    assert!(bad.is_empty(), "{what}: the scan opened something: {bad:?}");
    let all = f.grants(0);
    let client = format!("source={}", f.lab.addr(Host::Client, Family::V4));
    assert!(
        all.iter().all(|g| g.contains(&client)),
        "{what}: a grant for someone else than the client: {all:?}"
    );
    let s = status(f);
    assert_eq!(
        counter(&s, "grants"),
        client_grants,
        "{what}: grants counter: {s}"
    );
    assert!(
        !f.connects(Host::Attacker, Family::V4, 22),
        "{what}: the scanner can connect; ruleset:\n{}",
        f.lab.server_ruleset()
    );
}

fn whole_range_scan(tag: &str, protocol: &str, scan: &str) {
    let f = deployment(tag, protocol, 30);
    let before = status(&f);
    let p = nmap(&f, scan);
    // The client knocks while the scan runs.
    std::thread::sleep(Duration::from_millis(700));
    client_gets_in(&f, &format!("{tag}: during the scan"));
    let report = nmap_done(p, tag);
    let after = status(&f);
    let in_range = counter(&after, "packets_in_range") - counter(&before, "packets_in_range");
    eprintln!(
        "{tag}: nmap {scan}: {} ports, sesamed saw {in_range} in-range packets, {} resets; {}",
        usize::from(RANGE.1 - RANGE.0) + 1,
        counter(&after, "resets"),
        report.lines().last().unwrap_or("")
    );
    assert!(
        in_range >= u64::from(RANGE.1 - RANGE.0) * 9 / 10,
        "{tag}: sesamed saw only {in_range} in-range packets of the scan: {after}"
    );
    attacker_got_nothing(&f, 1, tag);
}

#[test]
fn nmap_udp_scan_of_the_whole_knock_range_opens_nothing() {
    if !require_netns() || !require_nmap() {
        return;
    }
    whole_range_scan("scan-nmap-udp", "udp", "-sU");
}

#[test]
fn nmap_syn_scan_of_the_whole_knock_range_opens_nothing() {
    if !require_netns() || !require_nmap() {
        return;
    }
    whole_range_scan("scan-nmap-syn", "tcp", "-sS");
}

/// A randomised scan (UDP and SYN at once, nmap's random port order) of the whole range at
/// every step of 5 seconds, for 4 steps; mixed-protocol knocks. The client knocks in every
/// step (a sequence-only knock can open once per step).
#[test]
fn randomised_scan_repeated_every_step_opens_nothing() {
    if !require_netns() || !require_nmap() {
        return;
    }
    const STEPS: u64 = 4;
    const STEP: u64 = 5;
    let f = deployment("scan-random-steps", "mixed", STEP as u32);
    let mut grants = 0;
    for step in 0..STEPS {
        // Start at a step boundary, so each round of scans and the knock share one step.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let into = now.as_millis() as u64 % (STEP * 1000);
        std::thread::sleep(Duration::from_millis(STEP * 1000 - into + 50));
        let udp = nmap(&f, "-sU");
        let syn = nmap(&f, "-sS");
        std::thread::sleep(Duration::from_millis(800));
        client_gets_in(&f, &format!("step {step}: during the scans"));
        grants += 1;
        nmap_done(udp, &format!("step {step} -sU"));
        nmap_done(syn, &format!("step {step} -sS"));
    }
    let s = status(&f);
    eprintln!(
        "randomised scans: {} packets in range, {} resets, {} sequences completed",
        counter(&s, "packets_in_range"),
        counter(&s, "resets"),
        counter(&s, "sequences_completed")
    );
    assert_eq!(
        counter(&s, "sequences_completed"),
        grants,
        "only the client's sequences may complete: {s}"
    );
    attacker_got_nothing(&f, grants, "randomised scans");
}
