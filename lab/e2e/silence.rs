//! Scenario 7: the server sends no packet at all in answer to knocks, payloads or garbage.
//! tcpdump runs in the client namespace; every IP packet whose source is one of the server's
//! addresses counts, except the kernel's own IPv6 neighbour discovery and MLD messages.

use std::net::SocketAddr;

use sesame_tests::{CLIENT_IF, Family, Host, require_netns, text};

use crate::common::Fixture;

#[test]
fn s7_server_never_answers() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("s7-silence");
    f.spec.knock.protocol = "mixed".to_owned();
    f.spec.protect = vec!["tcp/22".to_owned(), "tcp/23".to_owned()];
    f.client().allow = Some(vec!["tcp/22".to_owned()]);
    f.serve_ports = Some(vec![22]); // nothing listens on tcp/23
    f.start();
    let profile6 = f.export_profile(Family::V6);
    let s4 = f.server(Family::V4);
    let s6 = f.server(Family::V6);
    let cap = f.lab.capture(Host::Client, CLIENT_IF, "silence", "");

    let probe = |args: Vec<String>| {
        let o = f.lab.netprobe(Host::Client, &args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    };
    let (lo, hi) = f.spec.knock.port_range;
    let mut rnd = [0u8; 32];
    sesame_keys::fill_random(&mut rnd);
    let ports: Vec<u16> = rnd
        .chunks(2)
        .map(|c| lo + u16::from_be_bytes([c[0], c[1]]) % (hi - lo + 1))
        .collect();

    for server in [s4, s6] {
        // A protected port before any knock, and a protected port nothing listens on.
        probe(vec!["syn".into(), SocketAddr::new(server, 22).to_string()]);
        probe(vec!["syn".into(), SocketAddr::new(server, 23).to_string()]);
        // Garbage to in-range ports: payload-sized, empty, large; and SYNs.
        for (i, port) in ports.iter().enumerate() {
            let to = SocketAddr::new(server, *port).to_string();
            let len = ["136", "0", "1200", "7"][i % 4];
            probe(vec!["udp".into(), to.clone(), "--len".into(), len.into()]);
            if i % 2 == 0 {
                probe(vec!["syn".into(), to]);
            }
        }
    }
    // Knocks: accepted (v4, v6) and refused (a service outside `allow`).
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    let mark = f.mark();
    f.knock_from(Host::Client, &profile6, &["-6"]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V6));
    let mark = f.mark();
    f.knock(&["--port", "tcp/23"]);
    f.expect_reject(
        mark,
        f.lab.addr(Host::Client, Family::V4),
        "service_not_allowed",
    );
    // The closed protected port once more, after the grants (tcp/23 is still gated).
    probe(vec!["syn".into(), SocketAddr::new(s4, 23).to_string()]);
    probe(vec!["syn".into(), SocketAddr::new(s6, 23).to_string()]);

    let packets = cap.stop();
    let from_client = packets
        .iter()
        .filter(|p| p.dst == s4 || p.dst == s6)
        .count();
    assert!(
        from_client >= 60,
        "the capture must see the client's packets (saw {from_client}): is it working?"
    );
    let answers: Vec<String> = packets
        .iter()
        .filter(|p| (p.src == s4 || p.src == s6) && !p.is_link_control())
        .map(ToString::to_string)
        .collect();
    assert!(
        answers.is_empty(),
        "the server answered {} time(s):\n{}\nruleset:\n{}",
        answers.len(),
        answers.join("\n"),
        f.lab.server_ruleset()
    );
}
