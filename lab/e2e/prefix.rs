//! Leases for a block of addresses (`[[client]] lease_prefix_v4 = 24..32`): a mobile carrier may
//! send the knock from one address of its NAT block and the connection from another. With the
//! default (the address alone) the second address stays out; with `lease_prefix_v4 = 24` the
//! whole /24 of the knock's address gets in, and nothing outside it.

use std::time::Duration;

use sesame_tests::{CLIENT_IF, Family, Host, require_netns, text};

use crate::common::Fixture;

/// Makes the client's connections to the server come from `src` (its second address).
fn connect_from(f: &Fixture, src: &str) {
    let server = f.server(Family::V4).to_string();
    let o = f.lab.run(
        Host::Client,
        "ip",
        &[
            "route",
            "replace",
            &format!("{server}/32"),
            "dev",
            CLIENT_IF,
            "src",
            src,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

fn scenario(prefix: Option<u8>) -> (bool, bool, String) {
    let mut f = Fixture::new(if prefix.is_some() { "pfx24" } else { "pfx32" });
    f.spec.lease_seconds = 30;
    if let Some(p) = prefix {
        f.client().extra = format!("lease_prefix_v4 = {p}\n");
    }
    // The carrier's second exit: another address of the client's /24.
    let first = f.lab.v4(Host::Client);
    let o = first.octets();
    let second = format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3] + 1);
    let o = f.lab.run(
        Host::Client,
        "ip",
        &["addr", "add", &format!("{second}/24"), "dev", CLIENT_IF],
    );
    assert!(o.status.success(), "{}", text(&o));
    f.start();
    let check = f
        .lab
        .sesamed(&["check".as_ref(), "--config".as_ref(), f.config.as_os_str()]);
    let mark = f.mark();
    f.knock(&[]);
    let line = f.expect_grant(mark, first.into());
    let svc = f.svc(Family::V4, 22);
    connect_from(&f, &second);
    let second_in = f
        .lab
        .connects_within(Host::Client, svc, Duration::from_secs(2));
    let attacker_in = f.lab.connects(Host::Attacker, svc, 800);
    let ruleset = f.lab.server_ruleset();
    (
        second_in,
        attacker_in,
        format!(
            "{line}\n{}\n{ruleset}",
            String::from_utf8_lossy(&check.stderr)
        ),
    )
}

#[test]
fn a_block_lease_admits_the_carriers_other_exit_and_nothing_else() {
    if !require_netns() {
        return;
    }
    // The default: the knock's address alone.
    let (second, attacker, said) = scenario(None);
    assert!(
        !second,
        "the other address got in without lease_prefix_v4:\n{said}"
    );
    assert!(!attacker);
    // lease_prefix_v4 = 24: the /24 of the knock's address.
    let (second, attacker, said) = scenario(Some(24));
    assert!(second, "the other address of the /24 stayed out:\n{said}");
    assert!(!attacker, "an address outside the /24 got in:\n{said}");
    assert!(
        said.contains("/24"),
        "the grant line names the block:\n{said}"
    );
    assert!(
        said.contains("lease_prefix_v4 = 24: each grant opens a /24 (256 addresses)"),
        "sesamed check says what it opens:\n{said}"
    );
}
