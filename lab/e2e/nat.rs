//! Knocks from behind a NAT, bound to the address the server sees, and `require_address`.
//!
//! The lab puts a LAN host behind the client host, which masquerades it (as a home router or a
//! carrier NAT does), and a real STUN server (coturn, `--stun-only`) on a host of its own on the
//! server's side. The LAN's addresses (198.19.251.0/24) look public to the client, as the
//! inside of some carrier NATs does; only STUN tells it the address the server sees.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, Proc, SERVER_IF_CLIENT, pcap, require_netns, text};

use crate::common::{Fixture, SETTLE};

/// The STUN server's port.
const STUN_PORT: u16 = 3478;

/// Starts coturn as a STUN-only server on [`Host::Wan`] 1 and waits until it listens.
fn start_stun(f: &Fixture) -> Proc {
    f.lab.add_wan(1);
    let ip = f.lab.v4(Host::Wan(1)).to_string();
    let port = STUN_PORT.to_string();
    let p = f.lab.spawn(
        Host::Wan(1),
        "coturn",
        "turnserver",
        &[
            "-c",
            "/dev/null",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-rfc5780",
            "--listening-ip",
            &ip,
            "--listening-port",
            &port,
            "--log-file",
            "stdout",
            "--simple-log",
            "--pidfile",
            &f.lab.path("turn.pid").to_string_lossy(),
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = f
            .lab
            .run(Host::Wan(1), "ss", &["-Hlun", &format!("sport = :{port}")]);
        if String::from_utf8_lossy(&o.stdout).contains(&ip) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "coturn never listened on {ip}:{port}: {}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The profile of the `laptop` key for the LAN host, with `stun` set (or not).
fn lan_profile(f: &Fixture, name: &str, stun: bool, bind: bool) -> PathBuf {
    let stun_at = format!("{}:{STUN_PORT}", f.lab.v4(Host::Wan(1)));
    let key = f.client_key.path.clone();
    f.write_profile(name, Family::V4, &key, |p| {
        p.stun = stun.then_some(stun_at);
        p.bind_address = bind;
    })
}

#[test]
fn stun_binds_a_knock_behind_a_nat_and_a_replay_from_elsewhere_opens_nothing() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("nat-stun");
    f.lab.add_nat_lan(1);
    let stun = start_stun(&f);
    f.start();
    let public = f.lab.addr(Host::Client, Family::V4);
    let lan = f.lab.v4(Host::Lan(1));

    // Without STUN the LAN host knows only its own address, which the server never sees: the
    // knock is bound to it and refused (this is why a NAT needs STUN or --allow-ip).
    let plain = lan_profile(&f, "lan-plain", false, true);
    let mark = f.mark();
    f.knock_from(Host::Lan(1), &plain, &[]);
    let line = f.expect_reject(mark, public, "other_ip_not_allowed");
    assert!(line.contains(&lan.to_string()), "{line}");

    // With STUN it binds the NAT's public address: the server opens that, and the LAN host's
    // connection (through the NAT) gets in.
    let profile = lan_profile(&f, "lan-stun", true, true);
    let cap = f.lab.capture(Host::Server, SERVER_IF_CLIENT, "nat", "udp");
    let mark = f.mark();
    let o = f.knock_from(Host::Lan(1), &profile, &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("for {public} (the public address STUN")),
        "{}",
        text(&o)
    );
    let line = f.expect_grant(mark, public);
    assert!(line.contains(&format!("address={public} ")), "{line}");
    let svc = f.svc(Family::V4, 22);
    assert!(
        f.lab
            .connects_within(Host::Lan(1), svc, Duration::from_secs(3)),
        "the LAN host cannot reach the service through the NAT; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    let packets = cap.stop();
    let payloads = packets
        .iter()
        .filter(|p| {
            p.src == public
                && matches!(&p.l4, pcap::L4::Udp { payload, .. }
                    if sesame_proto::wire::is_payload_len(payload.len()))
        })
        .count();
    assert_eq!(payloads, 1, "one payload seen by the server: {packets:#?}");

    // The attacker replays what the server saw of the knock, from its own address: the
    // payload names the NAT's address, so nothing opens for it.
    let mark = f.mark();
    let o = f.lab.netprobe(
        Host::Attacker,
        &[
            "replay".to_owned(),
            f.lab.path("nat.pcap").to_string_lossy().into_owned(),
            f.server(Family::V4).to_string(),
        ],
    );
    assert!(o.status.success(), "replay: {}", text(&o));
    std::thread::sleep(SETTLE);
    f.assert_no_grant(mark, "the attacker's replay of a STUN-bound knock");
    assert!(!f.connects(Host::Attacker, Family::V4, 22));

    // With the STUN server gone, the client does not quietly knock unbound: it says how to
    // choose, and sends nothing.
    drop(stun);
    let mark = f.mark();
    let o = f.lab.sesame(
        Host::Lan(1),
        &["open".as_ref(), "--profile".as_ref(), profile.as_os_str()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("STUN server") && err.contains("--no-bind"),
        "{}",
        text(&o)
    );
    std::thread::sleep(SETTLE);
    assert!(
        f.daemon()
            .matching(mark, &["client=laptop", "source="])
            .is_empty(),
        "the client sent a knock without its STUN answer"
    );
    // --no-bind knocks unbound: the server opens the NAT's address (the packets' source).
    let mark = f.mark();
    f.knock_from(Host::Lan(1), &profile, &["--no-bind"]);
    f.expect_grant(mark, public);
}

#[test]
fn require_address_refuses_unbound_knocks_and_opens_bound_ones() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("req-addr");
    f.spec.knock.extra = "require_address = true\n".to_owned();
    f.start();
    let client = f.lab.addr(Host::Client, Family::V4);
    let mark = f.mark();
    let o = f.knock(&["--no-bind"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("for the source address (not bound"),
        "{}",
        text(&o)
    );
    f.expect_reject(mark, client, "address_required");
    std::thread::sleep(SETTLE);
    f.assert_no_grant(mark, "an unbound knock with require_address");
    f.assert_closed(Family::V4, 22, "an unbound knock with require_address");
    // The default knock binds this host's (public) address and opens.
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, client);
    assert!(f.opens(Host::Client, Family::V4, 22));
    // A client can be exempted.
    let mut f = Fixture::new("req-addr-client");
    f.spec.knock.extra = "require_address = true\n".to_owned();
    f.client().extra = "require_address = false\n".to_owned();
    f.start();
    let mark = f.mark();
    f.knock(&["--no-bind"]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
}
