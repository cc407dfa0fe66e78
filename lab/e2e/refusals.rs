//! Scenario 4: knocks that must open nothing (wrong keys, expired client, source outside
//! `source`, a service outside `allow`, another address without `allow_other_ip`), each
//! logged with its reason where the daemon can know one. Each refusal has a control that
//! shows the same setup does open when the knock is right.

use std::path::Path;

use sesame_tests::{Family, Host, require_netns};

use crate::common::{Fixture, SETTLE, assert_line_has};

/// Knocks from `host` with `profile` and `args`; nothing may open for anyone.
fn knock_opens_nothing(
    f: &Fixture,
    host: Host,
    profile: &Path,
    args: &[&str],
    what: &str,
) -> usize {
    let mark = f.mark();
    f.knock_from(host, profile, args);
    std::thread::sleep(SETTLE);
    f.assert_no_grant(mark, what);
    f.assert_closed(Family::V4, 22, what);
    mark
}

/// The default knock works (the setup is sound).
fn control_knock_opens(f: &Fixture) {
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(f.opens(Host::Client, Family::V4, 22));
}

#[test]
fn s4_wrong_client_key() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s4-clientkey");
    f.start();
    let other = f.lab.gen_key("stranger");
    let profile = f.write_profile("stranger", Family::V4, &other.path, |_| {});
    knock_opens_nothing(
        &f,
        Host::Client,
        &profile,
        &[],
        "knock with a key the server does not know",
    );
    control_knock_opens(&f);
}

#[test]
fn s4_wrong_server_key() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s4-serverkey");
    f.start();
    let impostor = f.lab.gen_key("impostor");
    let key = f.client_key.path.clone();
    let profile = f.write_profile("wrongserver", Family::V4, &key, |p| {
        p.server_public_key = impostor.public.clone();
    });
    knock_opens_nothing(
        &f,
        Host::Client,
        &profile,
        &[],
        "knock for another server's key",
    );
    control_knock_opens(&f);
}

#[test]
fn s4_expired_client() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s4-expired");
    f.client().expires = Some("2020-01-01T00:00:00Z".to_owned());
    f.start();
    let profile = f.profile.clone();
    let mark = knock_opens_nothing(&f, Host::Client, &profile, &[], "expired client");
    let line = f.expect_reject(mark, f.lab.addr(Host::Client, Family::V4), "expired");
    assert_line_has(&line, &["client=laptop"]);
}

#[test]
fn s4_source_outside_the_client_prefixes() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s4-source");
    // Only the attacker's link may knock as this client.
    let n = f.lab.n;
    f.client().source = Some(vec![
        format!("198.19.{n}.0/24"),
        format!("2001:db8:{n:x}:a::/64"),
    ]);
    f.start();
    let profile = f.profile.clone();
    let mark = knock_opens_nothing(&f, Host::Client, &profile, &[], "source outside `source`");
    let line = f.expect_reject(
        mark,
        f.lab.addr(Host::Client, Family::V4),
        "source_not_allowed",
    );
    assert_line_has(&line, &["client=laptop"]);
    // Control: the same profile from inside the prefix opens, for that address only.
    let mark = f.mark();
    f.knock_from(Host::Attacker, &profile, &[]);
    f.expect_grant(mark, f.lab.addr(Host::Attacker, Family::V4));
    assert!(f.opens(Host::Attacker, Family::V4, 22));
    assert!(!f.connects(Host::Client, Family::V4, 22));
}

#[test]
fn s4_service_outside_allow() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s4-service");
    f.spec.protect = vec!["tcp/22".to_owned(), "tcp/23".to_owned()];
    f.client().allow = Some(vec!["tcp/22".to_owned()]);
    f.start();
    f.assert_closed(Family::V4, 23, "before any knock");
    let profile = f.profile.clone();
    let mark = knock_opens_nothing(
        &f,
        Host::Client,
        &profile,
        &["--port", "tcp/23"],
        "tcp/23 is not allowed",
    );
    let line = f.expect_reject(
        mark,
        f.lab.addr(Host::Client, Family::V4),
        "service_not_allowed",
    );
    assert_line_has(&line, &["client=laptop"]);
    f.assert_closed(Family::V4, 23, "tcp/23 is not allowed");
    // Control: tcp/22 opens, tcp/23 stays closed.
    let mark = f.mark();
    f.knock(&["--port", "tcp/22"]);
    let line = f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert_line_has(&line, &["services=tcp/22"]);
    assert!(f.opens(Host::Client, Family::V4, 22));
    assert!(!f.connects(Host::Client, Family::V4, 23));
}

#[test]
fn s4_other_address_without_allow_other_ip() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s4-otherip");
    f.start();
    let attacker = f.lab.addr(Host::Attacker, Family::V4).to_string();
    let profile = f.profile.clone();
    let mark = knock_opens_nothing(
        &f,
        Host::Client,
        &profile,
        &["--allow-ip", &attacker],
        "--allow-ip another address without allow_other_ip",
    );
    let line = f.expect_reject(
        mark,
        f.lab.addr(Host::Client, Family::V4),
        "other_ip_not_allowed",
    );
    assert_line_has(&line, &["client=laptop"]);
    control_knock_opens(&f);
}

#[test]
fn s4_control_other_address_with_allow_other_ip() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s4-otherok");
    f.client().allow_other_ip = true;
    f.start();
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    let mark = f.mark();
    f.knock(&["--allow-ip", &attacker.to_string()]);
    let line = f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert_line_has(&line, &[&format!("address={attacker}")]);
    assert!(
        f.opens(Host::Attacker, Family::V4, 22),
        "the named address must be opened"
    );
    assert!(
        !f.connects(Host::Client, Family::V4, 22),
        "the knocking address must not be opened when another is named"
    );
}
