//! What `sesame open --wait` may claim, with the real daemon and firewall:
//!
//! - a service that already answered before the knock (another client's lease behind the same
//!   NAT) does not confirm a knock that the server refused: exit 3, not "answers";
//! - the clock advice after a clock probe opened aims at the measured offset, not at the edge
//!   of the server's window;
//! - with `--allow-ip X` it says that it connects from this host, not from X, and when it
//!   never answers that the knock may have opened X;
//! - on a network that drops UDP, a profile with payload = "required" and protocol = "tcp"
//!   does not get in and the client says why (the payload is UDP), while protocol = "tcp" with
//!   payload = "optional" or "none" does get in, as the README says.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, require_netns, text};

use crate::common::{Fixture, LOG_WAIT};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `sesame open --profile PROFILE ARGS` on `host`, whatever its exit status.
fn open(f: &Fixture, host: Host, profile: &Path, args: &[&str]) -> std::process::Output {
    let p = profile.to_string_lossy().into_owned();
    let mut all = vec!["open", "--profile", p.as_str()];
    all.extend_from_slice(args);
    f.lab.sesame(host, &all)
}

/// The N of the first `pass --time-offset N` in `err`.
fn advised_offset(err: &str) -> i64 {
    let rest = err
        .split("pass --time-offset ")
        .nth(1)
        .unwrap_or_else(|| panic!("no `pass --time-offset` advice in: {err}"));
    let n: String = rest
        .chars()
        .take_while(|c| *c == '-' || c.is_ascii_digit())
        .collect();
    n.parse()
        .unwrap_or_else(|_| panic!("no number after `pass --time-offset` in: {err}"))
}

/// Waits until `host` can no longer connect to the server's tcp/22 (the lease ended).
fn wait_lease_end(f: &Fixture, host: Host) {
    let svc = f.svc(Family::V4, 22);
    assert!(
        f.lab
            .wait_closed(host, svc, Instant::now(), Duration::from_secs(15))
            .is_some(),
        "the lease never ended; ruleset:\n{}",
        f.lab.server_ruleset()
    );
}

// ---------------------------------------------------------------------------------------------
// Another lease for the same address

/// Two hosts behind one NAT: the laptop's lease opens the NAT's public address; then a host
/// with a key the server does not know knocks with `--wait`. Its knock is refused, but the
/// service answers it because of the laptop's lease: before, `--wait` reported that as its own
/// success (exit 0, "tcp/22 answers"), so a revoked or wrong key looked fine until the other
/// lease was gone. Now it tries the service before the knock, finds it open, and says that it
/// cannot confirm the knock: exit 3, nothing on stdout.
#[test]
fn wait_does_not_claim_a_knock_that_another_lease_answered() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("wait-lease");
    f.spec.lease_seconds = 30;
    f.lab.add_nat_lan(2);
    f.start();
    let public = f.lab.addr(Host::Client, Family::V4).to_string();
    let laptop_key = f.client_key.path.clone();
    let laptop = f.write_profile("lan-laptop", Family::V4, &laptop_key, |_| {});
    let stranger = f.lab.gen_key("stranger");
    let intruder = f.write_profile("lan-stranger", Family::V4, &stranger.path, |_| {});

    let mark = f.mark();
    let o = open(
        &f,
        Host::Lan(1),
        &laptop,
        &["--allow-ip", &public, "--wait", "tcp/22", "--timeout", "3s"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains("tcp/22 answers (after 1 knock"),
        "{}",
        text(&o)
    );
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));

    // The stranger's knock opens nothing, and --wait must not say it did.
    let mark = f.mark();
    let o = open(
        &f,
        Host::Lan(2),
        &intruder,
        &[
            "--allow-ip",
            &public,
            "--wait",
            "tcp/22",
            "--timeout",
            "1s",
            "--retries",
            "0",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "a knock with a key the server does not know was reported as opening tcp/22 (the laptop's lease answered): {}",
        text(&o)
    );
    assert!(stdout(&o).is_empty(), "{}", text(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "{} already answered from this host before the knock",
            f.svc(Family::V4, 22)
        )) && last.contains("--wait cannot confirm it"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    f.assert_no_grant(mark, "the stranger's knock");

    // The same holds for the laptop's own second knock inside its lease: the knock is sent
    // (and granted), but --wait cannot tell it from the lease that was there.
    let mark = f.mark();
    let o = open(
        &f,
        Host::Lan(1),
        &laptop,
        &["--allow-ip", &public, "--wait", "tcp/22", "--timeout", "1s"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        stderr(&o).contains("already answered from this host before the knock"),
        "{}",
        text(&o)
    );
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
}

// ---------------------------------------------------------------------------------------------
// The clock advice

/// Steps of 30 s, one step of skew. A client 60 s behind (here: `--time-offset -60` on a
/// right clock) opens only with the +30 s probe, and one 90 s ahead only with the -60 s probe.
/// The advice used to be the probe that opened (-30, and +30): the edge of the window, which a
/// little drift or another phase of the step breaks again. The offset to pass is about 0 in
/// both cases; the advice must be within half a step of it, say so, and work when followed.
#[test]
fn wait_advises_the_measured_clock_offset() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("wait-clock");
    f.spec.knock.step_seconds = 30;
    f.spec.knock.skew_steps = 1;
    f.start();
    let profile = f.profile.clone();
    for given in ["-60", "90"] {
        wait_lease_end(&f, Host::Client);
        let o = open(
            &f,
            Host::Client,
            &profile,
            &[
                "--wait",
                "tcp/22",
                "--timeout",
                "1s",
                "--retries",
                "0",
                "--time-offset",
                given,
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(0),
            "a clock probe opens: {}",
            text(&o)
        );
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "s, not by the {given:+} s given",
                given = given.parse::<i64>().unwrap()
            )),
            "{err}"
        );
        let advised = advised_offset(&err);
        assert!(
            advised.abs() <= 15,
            "this client's clock is right, so with --time-offset {given} the offset to pass is about 0 (within half a step of 30 s); the advice was {advised}: {err}"
        );
        assert!(
            err.contains("if the server keeps the default skew_steps = 1"),
            "the advice says what it assumes: {err}"
        );
        // Followed, the advice opens with the first knock.
        wait_lease_end(&f, Host::Client);
        let offset = advised.to_string();
        let o = open(
            &f,
            Host::Client,
            &profile,
            &[
                "--wait",
                "tcp/22",
                "--timeout",
                "2s",
                "--retries",
                "0",
                "--time-offset",
                &offset,
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(stdout(&o).contains("after 1 knock,"), "{}", text(&o));
    }
}

// ---------------------------------------------------------------------------------------------
// --allow-ip X: the probe runs from this host

/// `--allow-ip` with another host's address (allowed by `allow_other_ip`): the knock opens
/// that address, the probe from this host never gets in, and the client says so at the start
/// and in its final message (the knock may well have worked: the other host gets in). With
/// this host's own address there is nothing to say.
#[test]
fn wait_with_allow_ip_says_the_probe_runs_from_this_host() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("wait-allowip");
    f.spec.lease_seconds = 30;
    f.client().allow_other_ip = true;
    f.start();
    let other = f.lab.addr(Host::Attacker, Family::V4).to_string();
    let own = f.lab.addr(Host::Client, Family::V4).to_string();
    let profile = f.profile.clone();

    let mark = f.mark();
    let o = open(
        &f,
        Host::Client,
        &profile,
        &[
            "--allow-ip",
            &other,
            "--wait",
            "tcp/22",
            "--timeout",
            "1s",
            "--retries",
            "0",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.contains("from this host, not from ") && first.contains(&other),
        "the first line says where the probe comes from: {err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "The knock asked to open {other}, and --wait connects from this host, not from {other}"
        )),
        "the final message says the knock may have opened {other}: {err}"
    );
    f.daemon().expect_after(
        mark,
        &[" granted client=laptop ", &format!("address={other} ")],
        LOG_WAIT,
    );
    assert!(
        f.opens(Host::Attacker, Family::V4, 22),
        "the knock opened {other}"
    );

    // This host's own address: the probe does come from it; no note.
    let o = open(
        &f,
        Host::Client,
        &profile,
        &["--allow-ip", &own, "--wait", "tcp/22", "--timeout", "3s"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !stderr(&o).contains("not from"),
        "--allow-ip with this host's own address needs no note: {}",
        text(&o)
    );
}

// ---------------------------------------------------------------------------------------------
// Networks that drop UDP

/// The LAN host's router drops every forwarded UDP packet (a network that blocks UDP).
fn block_udp_on_the_lan(f: &Fixture) {
    f.lab.run_ok(
        Host::Client,
        "nft",
        &["add table inet lab_block; \
           add chain inet lab_block lanfwd { type filter hook forward priority 0; policy accept; }; \
           add rule inet lab_block lanfwd meta l4proto udp drop"],
    );
}

/// A server with TCP knocks and `payload`, a LAN host behind a router that drops UDP, and the
/// laptop's profile for it.
fn tcp_knocks_without_udp(tag: &str, payload: &str) -> (Fixture, PathBuf) {
    let mut f = Fixture::new(tag);
    f.spec.knock.protocol = "tcp".to_owned();
    f.spec.knock.payload = payload.to_owned();
    f.spec.knock.timeout_ms = 1000;
    f.lab.add_nat_lan(1);
    f.start();
    block_udp_on_the_lan(&f);
    let key = f.client_key.path.clone();
    let profile = f.write_profile(&format!("lan-{payload}"), Family::V4, &key, |_| {});
    (f, profile)
}

/// payload = "required" with protocol = "tcp": the SYNs get through, the UDP payload does
/// not, nothing opens, and the client's explanation says that the payload needs UDP whatever
/// the protocol, and what the admin would change.
#[test]
fn without_udp_tcp_knocks_with_a_required_payload_do_not_open_and_the_client_says_why() {
    if !require_netns() {
        return;
    }
    let (f, profile) = tcp_knocks_without_udp("wait-noudp-req", "required");
    let public = f.lab.addr(Host::Client, Family::V4);
    let mark = f.mark();
    let o = open(
        &f,
        Host::Lan(1),
        &profile,
        &[
            "--no-bind",
            "--wait",
            "tcp/22",
            "--timeout",
            "1s",
            "--retries",
            "0",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    f.daemon().expect_after(
        mark,
        &[
            "sequence completed, no payload within timeout_ms",
            &format!("source={public}"),
        ],
        LOG_WAIT,
    );
    f.assert_no_grant(mark, "TCP knocks whose UDP payload was dropped");
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    for part in [
        "UDP or TCP SYNs to ports 20000-21999 are blocked on this network",
        "with payload = \"required\" every knock ends with a UDP datagram",
        "protocol = \"tcp\" alone does not help",
        "sets protocol = \"tcp\" with payload = \"optional\" or \"none\"",
    ] {
        assert!(
            last.contains(part),
            "the explanation lacks `{part}`: {last}"
        );
    }
}

/// protocol = "tcp" with payload = "optional" (the TCP knocks alone open, timeout_ms after the
/// first, when the payload does not come) and with payload = "none": both get in without UDP.
#[test]
fn without_udp_tcp_knocks_open_with_an_optional_payload_or_none() {
    if !require_netns() {
        return;
    }
    for payload in ["optional", "none"] {
        let (f, profile) = tcp_knocks_without_udp(&format!("wait-noudp-{payload}"), payload);
        let public = f.lab.addr(Host::Client, Family::V4);
        let mark = f.mark();
        let o = open(
            &f,
            Host::Lan(1),
            &profile,
            &["--wait", "tcp/22", "--timeout", "4s", "--retries", "0"],
        );
        assert_eq!(
            o.status.code(),
            Some(0),
            "payload = \"{payload}\", protocol = \"tcp\", no UDP: {}",
            text(&o)
        );
        assert!(stdout(&o).contains("after 1 knock"), "{}", text(&o));
        f.expect_grant(mark, public);
    }
}
