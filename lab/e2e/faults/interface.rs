//! The capture interface going down and up, or deleted and recreated.

use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, Lab, SERVER_IF_CLIENT, require_netns};

use crate::common::Fixture;

use super::knock_is_granted;

/// Knocks every 500 ms until a grant; returns the time from `since` to the grant line.
fn knock_until_granted(f: &Fixture, since: Instant, limit: Duration) -> Option<Duration> {
    let client = format!("source={}", f.lab.v4(Host::Client));
    while since.elapsed() < limit {
        let mark = f.mark();
        f.knock(&[]);
        if f.daemon()
            .wait_for_after(
                mark,
                &["granted client=laptop", &client],
                Duration::from_millis(500),
            )
            .is_some()
        {
            return Some(since.elapsed());
        }
    }
    None
}

/// Lines about capture (lost, failed, unavailable, restored) after `mark`.
fn capture_lines(f: &Fixture, mark: usize) -> Vec<String> {
    f.daemon()
        .lines()
        .into_iter()
        .skip(mark)
        .filter(|l| l.contains("capture"))
        .collect()
}

/// Seconds since midnight UTC of the RFC 3339 timestamp that starts a log line.
fn log_time_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..)?.split('Z').next()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds since midnight UTC now.
fn now_time_of_day() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// Seconds from `since` (time of day) to the log line, if it has a timestamp.
fn seconds_after(line: &str, since: f64) -> Option<f64> {
    log_time_of_day(line).map(|t| (t - since).rem_euclid(86_400.0))
}

/// How capture recovers after `fault` / `repair`: the fault is logged within 3 s; after the
/// repair a knock is granted within 5 s and `capture restored` is logged; sesamed does not
/// flood its log while the interface is gone.
fn interface_fault(tag: &str, fault: impl Fn(&Lab), repair: impl Fn(&Lab)) {
    let mut f = Fixture::new(tag);
    f.spec.interfaces = vec![SERVER_IF_CLIENT.to_owned()];
    f.start();
    knock_is_granted(&f);

    let mark = f.mark();
    let fault_at = now_time_of_day();
    fault(&f.lab);
    std::thread::sleep(Duration::from_secs(3));
    let during = capture_lines(&f, mark);
    let lost_after = during.first().and_then(|l| seconds_after(l, fault_at));

    let mark = f.mark();
    let since = Instant::now();
    let repair_at = now_time_of_day();
    repair(&f.lab);
    let granted = knock_until_granted(&f, since, Duration::from_secs(10));
    let after = capture_lines(&f, mark);
    let restored_after = after
        .iter()
        .find(|l| l.contains("capture restored"))
        .and_then(|l| seconds_after(l, repair_at));
    eprintln!(
        "{tag}: fault logged after {lost_after:?} s ({} capture lines in the 3 s after the fault: {during:?}); after the repair: first grant after {granted:?}, `capture restored` after {restored_after:?} s, capture lines {after:?}",
        during.len(),
    );
    let granted = granted.unwrap_or_else(|| {
        panic!(
            "{tag}: capture did not recover: no grant within 10 s of the repair; log:\n{}",
            f.daemon().output()
        )
    });
    assert!(
        granted <= Duration::from_secs(5),
        "{tag}: recovery took {granted:?}"
    );
    assert!(
        lost_after.is_some(),
        "{tag}: the capture fault was not logged within 3 s; log:\n{}",
        f.daemon().output()
    );
    assert!(
        restored_after.is_some(),
        "{tag}: `capture restored` not logged; log:\n{}",
        f.daemon().output()
    );
    assert!(
        during.len() <= 6,
        "{tag}: {} capture lines in 3 s while the interface was gone (log flood): {during:?}",
        during.len()
    );
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "{}",
        f.lab.server_ruleset()
    );
}

/// The capture interface goes down and comes back up.
#[test]
fn fault_interface_down_and_up_capture_recovers() {
    if !require_netns() {
        return;
    }
    interface_fault(
        "f-if-down",
        |lab| lab.set_link(Host::Server, SERVER_IF_CLIENT, false),
        |lab| lab.set_link(Host::Server, SERVER_IF_CLIENT, true),
    );
}

/// The capture interface is deleted and recreated (with a new index).
#[test]
fn fault_interface_deleted_and_recreated_capture_recovers() {
    if !require_netns() {
        return;
    }
    let old = std::sync::Mutex::new(0);
    interface_fault(
        "f-if-del",
        |lab| {
            *old.lock().unwrap() = lab.ifindex(Host::Server, SERVER_IF_CLIENT);
            lab.delete_client_link();
        },
        |lab| {
            lab.recreate_client_link();
            let new = lab.ifindex(Host::Server, SERVER_IF_CLIENT);
            assert_ne!(
                new,
                *old.lock().unwrap(),
                "the recreated link has a new index"
            );
        },
    );
}
