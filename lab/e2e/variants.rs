//! Scenario 2: the whole lease cycle over IPv6, with TCP and mixed knocks, and in single-packet
//! mode (length 0).

use std::path::Path;
use std::time::Instant;

use sesame_tests::{Family, Host, require_netns};

use crate::common::{Fixture, assert_line_has};
use crate::lease::assert_ends_on_time;

/// Closed before; the knock opens for the client's address; the lease ends on time while an
/// established connection survives.
fn lifecycle(f: &Fixture, family: Family, profile: &Path, args: &[&str]) {
    f.assert_closed(family, 22, "before any knock");
    let mark = f.mark();
    f.knock_from(Host::Client, profile, args);
    let client = f.lab.addr(Host::Client, family);
    let line = f.expect_grant(mark, client);
    let since = Instant::now();
    assert_line_has(&line, &[&format!("address={client}"), "services=tcp/22"]);
    assert!(
        f.opens(Host::Client, family, 22),
        "after the knock the client must connect; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    assert!(!f.connects(Host::Attacker, family, 22));
    let mut held = f.lab.hold(Host::Client, f.svc(family, 22));
    assert!(held.ping(), "{}", held.output());
    assert_ends_on_time(f, family, since);
    assert!(
        held.ping(),
        "an established connection must survive the end of the lease: {}",
        held.output()
    );
}

#[test]
fn s2_ipv6() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s2-ipv6");
    f.start();
    let profile = f.export_profile(Family::V6);
    lifecycle(&f, Family::V6, &profile, &["-6"]);
    assert!(
        !f.connects(Host::Client, Family::V4, 22),
        "IPv4 was never granted"
    );
}

fn with_protocol(tag: &str, protocol: &str) {
    let mut f = Fixture::new(tag);
    f.spec.knock.protocol = protocol.to_owned();
    f.start();
    let profile = f.profile.clone();
    lifecycle(&f, Family::V4, &profile, &[]);
}

#[test]
fn s2_tcp_knocks() {
    if !require_netns() {
        return;
    }
    with_protocol("s2-tcp", "tcp");
}

#[test]
fn s2_mixed_knocks() {
    if !require_netns() {
        return;
    }
    with_protocol("s2-mixed", "mixed");
}

#[test]
fn s2_single_packet_mode() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s2-spa");
    f.spec.knock.length = 0;
    f.start();
    let profile = f.profile.clone();
    lifecycle(&f, Family::V4, &profile, &[]);
}

#[test]
fn s2_single_packet_mode_ipv6() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s2-spa6");
    f.spec.knock.length = 0;
    f.start();
    let profile = f.export_profile(Family::V6);
    lifecycle(&f, Family::V6, &profile, &["-6"]);
}
