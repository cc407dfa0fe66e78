//! Scenario 1 (a knock opens a lease that ends on time; established connections survive) and
//! scenario 8 (the lease ends on time even when sesamed is killed with SIGKILL).

use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, require_netns};

use crate::common::{Fixture, assert_line_has};

/// Lease length in these tests.
const LEASE: u64 = 3;

/// The lease must end between `LEASE - 1` and `LEASE + 2.5` seconds after the grant was seen.
pub(crate) fn assert_ends_on_time(f: &Fixture, family: Family, since: Instant) -> Duration {
    let closed = f
        .lab
        .wait_closed(
            Host::Client,
            f.svc(family, 22),
            since,
            Duration::from_secs(LEASE + 6),
        )
        .unwrap_or_else(|| {
            panic!(
                "the lease never ended; ruleset:\n{}",
                f.lab.server_ruleset()
            )
        });
    assert!(
        closed >= Duration::from_secs(LEASE - 1),
        "the lease ended too early: {closed:?} after the grant"
    );
    assert!(
        closed <= Duration::from_millis(LEASE * 1000 + 2500),
        "the lease ended late: {closed:?} after the grant (lease {LEASE} s)"
    );
    closed
}

#[test]
fn s1_knock_opens_then_lease_expires_but_established_survives() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s1-lease");
    f.spec.lease_seconds = u32::try_from(LEASE).unwrap();
    f.start();
    // The profile a user gets: `sesamed export-client`, with the key path filled in.
    let profile = f.export_profile(Family::V4);
    f.assert_closed(Family::V4, 22, "before any knock");
    f.assert_closed(Family::V6, 22, "before any knock");

    let mark = f.mark();
    f.knock_from(Host::Client, &profile, &[]);
    let line = f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    let since = Instant::now();
    let client = format!("address={}", f.lab.v4(Host::Client));
    assert_line_has(&line, &[&client, "services=tcp/22", "lease_seconds=3"]);

    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "after the knock the client must connect; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    assert!(
        !f.connects(Host::Attacker, Family::V4, 22),
        "the lease is for the client's address only"
    );
    assert!(
        !f.connects(Host::Client, Family::V6, 22),
        "the lease is for the knock's address (IPv4) only"
    );
    let mut held = f.lab.hold(Host::Client, f.svc(Family::V4, 22));
    assert!(held.ping(), "{}", held.output());

    assert_ends_on_time(&f, Family::V4, since);
    assert!(
        held.ping(),
        "an established connection must survive the end of the lease: {}",
        held.output()
    );
    assert!(!f.connects(Host::Client, Family::V4, 22));
}

#[test]
fn s8_lease_ends_on_time_after_sesamed_is_killed() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s8-kill9");
    f.spec.lease_seconds = u32::try_from(LEASE).unwrap();
    f.start();
    f.assert_closed(Family::V4, 22, "before any knock");
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    let since = Instant::now();
    // The lease is in the kernel once a connection gets through; then kill the daemon.
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "after the knock the client must connect; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    let mut daemon = f.daemon.take().unwrap();
    daemon.kill9();
    assert!(
        f.connects(Host::Client, Family::V4, 22),
        "the lease must stay after SIGKILL; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    assert!(
        !f.connects(Host::Attacker, Family::V4, 22),
        "the gate must stay closed for others after SIGKILL"
    );
    f.daemon = Some(daemon); // keep its log for a failure message
    assert_ends_on_time(&f, Family::V4, since);
    f.assert_closed(Family::V4, 22, "after the lease, sesamed dead");
}
