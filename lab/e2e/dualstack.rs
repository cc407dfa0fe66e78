//! A server whose name has an IPv4 and an IPv6 address (the client namespace's hosts file says
//! so), with the service listening on both:
//!
//! - `sesame open` knocks over both families, each knock bound to the client's own address in
//!   its family, so that a connection over either gets in; `-4` and `-6` knock one;
//! - `--wait` checks the family that connections try first (the resolver's first address) and
//!   knocks the other once, unchecked;
//! - `sesame proxy NAME HOST PORT` knocks the family of the connection it relays, also when the
//!   profile's host would resolve to the other family first;
//! - a family this host has no route in is reported, and the knock over the other one stands.
//!
//! Before, `sesame open` knocked the first address only: a connection over the other family
//! (ssh falling back, or `-4`) met a closed port, and `proxy` to an IPv4 address knocked over
//! IPv6.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use sesame_tests::{CLIENT_IF, Family, Host, require_netns, text};

use crate::common::{Fixture, SETTLE};
use crate::operator::sesame_at_home;

/// The name the client namespace resolves to both of the server's addresses.
const DUAL: &str = "dual.lab";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A started fixture (leases of `lease` seconds) whose client resolves [`DUAL`] to the server's
/// IPv4 and IPv6 addresses, and a profile for it.
fn dual_fixture(tag: &str, lease: u32) -> (Fixture, PathBuf) {
    let mut f = Fixture::new(tag);
    f.spec.lease_seconds = lease;
    f.start();
    f.lab.set_hosts(
        Host::Client,
        &format!(
            "{} {DUAL}\n{} {DUAL}\n",
            f.server(Family::V4),
            f.server(Family::V6)
        ),
    );
    let key = f.client_key.path.clone();
    let profile = f.write_profile("dual", Family::V4, &key, |p| {
        p.host = DUAL.to_owned();
        p.open = vec!["tcp/22".to_owned()];
    });
    (f, profile)
}

/// `sesame open --profile PROFILE ARGS` in the client namespace, whatever its exit status.
fn open(f: &Fixture, profile: &Path, args: &[&str]) -> Output {
    let p = profile.to_string_lossy().into_owned();
    let mut all = vec!["open", "--profile", p.as_str()];
    all.extend_from_slice(args);
    f.lab.sesame(Host::Client, &all)
}

/// The line a knock over the server's address in `family` prints, up to its step.
fn knocked_line(f: &Fixture, family: Family) -> String {
    format!("knocked {DUAL} ({}): ", f.server(family))
}

/// What a knock bound to the client's own address in `family` asks.
fn bound_to_self(f: &Fixture, family: Family) -> String {
    format!(
        "asking for tcp/22 for {} (this host's public address)",
        f.lab.addr(Host::Client, family)
    )
}

/// The address the client's resolver gives first for [`DUAL`] (RFC 6724's order).
fn first_address(f: &Fixture) -> IpAddr {
    let out = f.lab.run_ok(Host::Client, "getent", &["ahosts", DUAL]);
    out.split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("getent ahosts {DUAL}: {out}"))
}

/// Waits until the client can connect to neither family (the leases ended).
fn wait_leases_end(f: &Fixture) {
    for family in [Family::V4, Family::V6] {
        assert!(
            f.lab
                .wait_closed(
                    Host::Client,
                    f.svc(family, 22),
                    Instant::now(),
                    Duration::from_secs(20)
                )
                .is_some(),
            "the {family:?} lease never ended; ruleset:\n{}",
            f.lab.server_ruleset()
        );
    }
}

#[test]
fn open_knocks_both_families_each_bound_to_its_own_address() {
    if !require_netns() {
        return;
    }
    let (f, profile) = dual_fixture("dual-open", 4);
    let client4 = f.lab.addr(Host::Client, Family::V4);
    let client6 = f.lab.addr(Host::Client, Family::V6);
    f.assert_closed(Family::V4, 22, "before any knock");
    f.assert_closed(Family::V6, 22, "before any knock");

    // -4 and -6 knock their family only.
    for (flag, family, source, other) in [
        ("-4", Family::V4, client4, Family::V6),
        ("-6", Family::V6, client6, Family::V4),
    ] {
        let mark = f.mark();
        let o = open(&f, &profile, &[flag]);
        assert!(o.status.success(), "open {flag}: {}", text(&o));
        let out = stdout(&o);
        assert_eq!(out.lines().count(), 1, "open {flag}: {out}");
        assert!(out.starts_with(&knocked_line(&f, family)), "{out}");
        f.expect_grant(mark, source);
        assert!(f.opens(Host::Client, family, 22), "open {flag}");
        std::thread::sleep(SETTLE);
        let grants = f.grants(mark);
        assert_eq!(grants.len(), 1, "open {flag} granted: {grants:?}");
        if flag == "-4" {
            assert!(
                !f.connects(Host::Client, other, 22),
                "open -4 opened IPv6 too"
            );
        }
    }
    wait_leases_end(&f);

    // By default: one knock per family, each naming the client's address in that family.
    let mark = f.mark();
    let o = open(&f, &profile, &[]);
    assert!(o.status.success(), "open: {}", text(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "one line per family: {}", text(&o));
    for family in [Family::V4, Family::V6] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&knocked_line(&f, family)))
            .unwrap_or_else(|| panic!("no knock over {family:?}: {}", text(&o)));
        assert!(line.ends_with(&bound_to_self(&f, family)), "{line}");
    }
    assert!(stderr(&o).is_empty(), "{}", text(&o));
    for (family, source) in [(Family::V4, client4), (Family::V6, client6)] {
        let line = f.expect_grant(mark, source);
        assert!(line.contains(&format!("address={source}")), "{line}");
        assert!(
            f.opens(Host::Client, family, 22),
            "{family:?} is not open after the knock; ruleset:\n{}",
            f.lab.server_ruleset()
        );
        assert!(
            !f.connects(Host::Attacker, family, 22),
            "the attacker got in over {family:?}"
        );
    }

    // --allow-ip binds the knock of its own family; the other binds the client's address.
    let other4 = "198.18.250.9";
    let o = open(&f, &profile, &["--dry-run", "--allow-ip", other4]);
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("# dry run").count(), 2, "{out}");
    assert!(
        out.contains(&format!("# asks for tcp/22 for {other4} (--allow-ip)")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "# asks for tcp/22 for {client6} (this host's public address)"
        )),
        "{out}"
    );
}

#[test]
fn wait_checks_the_family_connections_try_first_and_knocks_the_other() {
    if !require_netns() {
        return;
    }
    let (f, profile) = dual_fixture("dual-wait", 10);
    let first = first_address(&f);
    let (first_family, other_family) = if first.is_ipv4() {
        (Family::V4, Family::V6)
    } else {
        (Family::V6, Family::V4)
    };
    let mark = f.mark();
    let o = open(&f, &profile, &["--wait", "--timeout", "3s"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    let other = out
        .lines()
        .find(|l| l.starts_with(&knocked_line(&f, other_family)))
        .unwrap_or_else(|| panic!("the other family was not knocked: {}", text(&o)));
    assert!(
        other.contains(&bound_to_self(&f, other_family))
            && other.ends_with(&format!(
                "not checked: --wait checks {first}, the address connections try first"
            )),
        "{other}"
    );
    assert!(
        out.contains(&format!(
            "{DUAL} tcp/22 answers (after 1 knock, {})",
            bound_to_self(&f, first_family)
        )),
        "{}",
        text(&o)
    );
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V6));
    assert!(f.opens(Host::Client, Family::V4, 22));
    assert!(f.opens(Host::Client, Family::V6, 22));
}

/// `sesame proxy NAME HOST PORT` with HOST an IPv4 address and a profile whose host resolves
/// to IPv6 first: it must knock over IPv4, the family it connects over, and relay the service.
#[test]
fn proxy_knocks_the_family_it_connects_over() {
    if !require_netns() {
        return;
    }
    let (f, profile) = dual_fixture("dual-proxy", 10);
    let home = f.lab.path("home");
    let profiles = home.join(".config/sesame/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::copy(&profile, profiles.join("dual.toml")).unwrap();
    for (family, flag) in [(Family::V4, "-4"), (Family::V6, "-6")] {
        // The address of the other family first, as the resolver may give it.
        let host = f.server(family).to_string();
        let mark = f.mark();
        let o = sesame_at_home(
            &f.lab,
            Host::Client,
            &home,
            &[
                "proxy",
                "dual",
                &host,
                "22",
                "--timeout",
                "3s",
                "--retries",
                "0",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "proxy to {host}: {}", text(&o));
        assert!(
            stdout(&o).starts_with("sesame-netprobe hello"),
            "proxy to {host} relayed: {}",
            text(&o)
        );
        f.expect_grant(mark, f.lab.addr(Host::Client, family));
        std::thread::sleep(SETTLE);
        let grants = f.grants(mark);
        assert_eq!(grants.len(), 1, "proxy {flag} knocked: {grants:?}");
    }
}

/// A client without IPv6 (no address, no route): the IPv6 knock is reported on stderr, the
/// IPv4 one is sent, and the command succeeds.
#[test]
fn a_family_without_a_route_is_reported_and_the_other_is_knocked() {
    if !require_netns() {
        return;
    }
    let (f, profile) = dual_fixture("dual-noroute", 4);
    let ns = f.lab.ns(Host::Client).to_owned();
    let client6 = format!("{}/64", f.lab.addr(Host::Client, Family::V6));
    for args in [
        vec!["-n", &ns, "-6", "route", "del", "default"],
        vec!["-n", &ns, "-6", "addr", "del", &client6, "dev", CLIENT_IF],
    ] {
        let o = std::process::Command::new("ip")
            .args(&args)
            .output()
            .unwrap();
        assert!(o.status.success(), "ip {args:?}: {}", text(&o));
    }
    let mark = f.mark();
    let o = open(&f, &profile, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{}", text(&o));
    assert!(out.starts_with(&knocked_line(&f, Family::V4)), "{out}");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{}", text(&o));
    assert!(
        err.starts_with(&format!(
            "sesame: not knocked over IPv6 ({}): no route from this host",
            f.server(Family::V6)
        )),
        "{err}"
    );
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    // Asked for IPv6 alone, it is a failure.
    let o = open(&f, &profile, &["-6"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// A device that cannot bind its knock in one family (behind a NAT in that family, say; here
/// the server's name resolves to loopback addresses, which a knock cannot be bound to either,
/// as the lab has only public addresses): the first address, the one a connection tries
/// first, is knocked unbound as `sesame open` always did, but the other family is not knocked
/// unbound (a bearer token for whoever captures it, that no single-family knock sent), nor is
/// either with `--allow-ip`, with which every knock was bound. `-4`/`-6` and `--no-bind`
/// still send what they ask for. Dry runs: what they print is what `open` would send.
#[test]
fn a_dual_stack_open_sends_no_unbound_knock_a_single_family_one_did_not() {
    if !require_netns() {
        return;
    }
    let f = Fixture::new("dual-unbound");
    f.lab
        .set_hosts(Host::Client, "127.0.0.1 lo.lab\n::1 lo.lab\n");
    let key = f.client_key.path.clone();
    let profile = f.write_profile("lo", Family::V4, &key, |p| {
        p.host = "lo.lab".to_owned();
        p.open = vec!["tcp/22".to_owned()];
    });
    let out = f.lab.run_ok(Host::Client, "getent", &["ahosts", "lo.lab"]);
    let first: IpAddr = out
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("getent ahosts lo.lab: {out}"));
    let other: IpAddr = if first.is_ipv4() {
        "::1".parse().unwrap()
    } else {
        "127.0.0.1".parse().unwrap()
    };
    let family = |ip: IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let flag = |ip: IpAddr| if ip.is_ipv4() { "-4" } else { "-6" };
    let allow = |ip: IpAddr| {
        if ip.is_ipv4() {
            "198.18.250.9"
        } else {
            "2001:db8:250::9"
        }
    };
    let server = |ip: IpAddr| format!("# dry run: nothing is sent. server {ip} (lo.lab)");
    let unbound = "# asks for tcp/22 for the source address (not bound: ";
    let refused = |ip: IpAddr| {
        format!(
            "sesame: not knocked over {} ({ip}): not bound: this host's address {ip} is private or shared",
            family(ip)
        )
    };

    // By default: the first address unbound, as before; the other family not at all.
    let o = open(&f, &profile, &["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("# dry run").count(), 1, "{}", text(&o));
    assert!(out.starts_with(&server(first)), "{}", text(&o));
    assert!(out.contains(unbound), "{}", text(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{}", text(&o));
    assert!(err.starts_with(&refused(other)), "{}", text(&o));
    assert!(err.contains("an unbound knock"), "{}", text(&o));

    // --allow-ip binds its family's knock; the other family, unbound, is not knocked, first
    // address or not.
    for (bound, not) in [(first, other), (other, first)] {
        let o = open(&f, &profile, &["--dry-run", "--allow-ip", allow(bound)]);
        assert!(o.status.success(), "{}", text(&o));
        let out = stdout(&o);
        assert_eq!(out.matches("# dry run").count(), 1, "{}", text(&o));
        assert!(out.starts_with(&server(bound)), "{}", text(&o));
        assert!(
            out.contains(&format!(
                "# asks for tcp/22 for {} (--allow-ip)",
                allow(bound)
            )),
            "{}",
            text(&o)
        );
        assert!(!out.contains(unbound), "{}", text(&o));
        assert!(stderr(&o).starts_with(&refused(not)), "{}", text(&o));
    }

    // Asked for: -4/-6 knocks its family unbound, --no-bind both.
    let o = open(&f, &profile, &["--dry-run", flag(other)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).starts_with(&server(other)), "{}", text(&o));
    assert!(stdout(&o).contains(unbound), "{}", text(&o));
    let o = open(&f, &profile, &["--dry-run", "--no-bind"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o).matches("# dry run").count(), 2, "{}", text(&o));
    assert!(stderr(&o).is_empty(), "{}", text(&o));
}
