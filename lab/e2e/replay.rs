//! Scenario 3: a captured knock re-sent (from the client's namespace and from a third one)
//! opens nothing, also after sesamed restarts.

use std::time::{Duration, Instant};

use sesame_tests::{CLIENT_IF, Family, Host, pcap, require_netns, text};

use crate::common::Fixture;
use crate::lease::assert_ends_on_time;

fn replay_from(f: &Fixture, host: Host, pcap_file: &str, family: Family, when: &str) {
    let mark = f.mark();
    let o = f.lab.netprobe(
        host,
        &[
            "replay".to_owned(),
            f.lab.path(pcap_file).to_string_lossy().into_owned(),
            f.server(family).to_string(),
        ],
    );
    assert!(o.status.success(), "replay: {}", text(&o));
    let source = f.lab.addr(host, family);
    // The sequence matches (same step), so the payload is judged, and refused as a replay.
    f.expect_reject(mark, source, "replay");
    std::thread::sleep(Duration::from_millis(300));
    f.assert_no_grant(mark, &format!("replay from {host:?} {when}"));
    assert!(
        !f.connects(host, family, 22),
        "replay from {host:?} {when} opened the service; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    assert!(!f.connects(Host::Client, family, 22));
}

fn scenario(tag: &str, family: Family, protocol: &str) {
    let mut f = Fixture::new(tag);
    f.spec.knock.protocol = protocol.to_owned();
    // The replays must reach the daemon while the knock's step is still in the skew window
    // (so its ports match and the payload is judged, and refused as a replay): 60-second steps
    // leave at least a minute, however slow the machine.
    f.spec.knock.step_seconds = 60;
    f.start();
    let (profile, args): (_, &[&str]) = match family {
        Family::V4 => (f.profile.clone(), &[]),
        Family::V6 => (f.export_profile(Family::V6), &["-6"]),
    };
    let cap = f
        .lab
        .capture(Host::Client, CLIENT_IF, "knock", "udp or tcp");
    let mark = f.mark();
    f.knock_from(Host::Client, &profile, args);
    f.expect_grant(mark, f.lab.addr(Host::Client, family));
    let since = Instant::now();
    let packets = cap.stop();
    let server = f.server(family);
    let to_server: Vec<&pcap::Packet> = packets.iter().filter(|p| p.dst == server).collect();
    let payloads = to_server
        .iter()
        .filter(|p| matches!(&p.l4, pcap::L4::Udp { payload, .. } if sesame_proto::wire::is_payload_len(payload.len())))
        .count();
    assert_eq!(payloads, 1, "one payload captured: {packets:#?}");
    assert!(
        to_server.len() >= 4,
        "3 knocks and a payload captured: {packets:#?}"
    );
    assert_ends_on_time(&f, family, since);

    replay_from(&f, Host::Client, "knock.pcap", family, "after the lease");
    replay_from(&f, Host::Attacker, "knock.pcap", family, "after the lease");

    f.stop_daemon();
    // Stopped, sesamed leaves its table: the service stays hidden (fail closed).
    f.assert_closed(family, 22, "sesamed stopped");
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    replay_from(&f, Host::Client, "knock.pcap", family, "after a restart");
    replay_from(&f, Host::Attacker, "knock.pcap", family, "after a restart");

    // The replays burnt nothing: a fresh knock still opens.
    let mark = f.mark();
    f.knock_from(Host::Client, &profile, args);
    f.expect_grant(mark, f.lab.addr(Host::Client, family));
    assert!(f.opens(Host::Client, family, 22));
}

#[test]
fn s3_replayed_knock_opens_nothing() {
    if !require_netns() {
        return;
    }
    scenario("s3-replay", Family::V4, "udp");
}

#[test]
fn s3_replayed_mixed_knock_over_ipv6_opens_nothing() {
    if !require_netns() {
        return;
    }
    scenario("s3-replay6", Family::V6, "mixed");
}

/// `payload = "optional"`, the laptop may open tcp/22 but not tcp/80 (both protected); 120 s
/// steps keep the knock's step in the window for the whole test; short payload waits.
fn optional_fixture(name: &str) -> Fixture {
    let mut f = Fixture::new(name);
    f.spec.knock.payload = "optional".to_owned();
    f.spec.knock.step_seconds = 120;
    f.spec.knock.timeout_ms = 1500;
    f.spec.protect = vec!["tcp/22".to_owned(), "tcp/80".to_owned()];
    f.client().allow = Some(vec!["tcp/22".to_owned()]);
    f
}

/// The laptop knocks for tcp/80, which it may not open (refused: `service_not_allowed`, no
/// grant), while the attacker captures the knocks without the payload on the client's link
/// (`sequence.pcap`: a UDP knock's body is at most 120 bytes, a payload datagram is longer).
fn capture_a_refused_sequence(f: &mut Fixture) {
    let client = f.lab.addr(Host::Client, Family::V4);
    let cap = f.lab.capture(
        Host::Client,
        CLIENT_IF,
        "sequence",
        "udp and udp[4:2] <= 128",
    );
    let mark = f.mark();
    f.knock(&["--port", "tcp/80"]);
    f.expect_reject(mark, client, "service_not_allowed");
    let packets = cap.stop();
    let server = f.server(Family::V4);
    let to_server: Vec<&pcap::Packet> = packets.iter().filter(|p| p.dst == server).collect();
    assert!(
        to_server.len() >= 3
            && to_server.iter().all(|p| matches!(&p.l4, pcap::L4::Udp { payload, .. } if !sesame_proto::wire::is_payload_len(payload.len()))),
        "the knocks captured, without the payload: {packets:#?}"
    );
    f.assert_no_grant(mark, "a knock whose payload was refused");
}

/// What sesamed does with the attacker's replay of `sequence.pcap` from its own address.
fn replay_sequence(f: &Fixture, when: &str) -> String {
    crate::fence::replay_outcome(f, Host::Attacker, "sequence.pcap", when)
}

/// `payload = "optional"`: a step for which a payload datagram passed the gate gets no
/// sequence-only grant, so the attacker's copy of a knock whose payload was refused (here it
/// asks for a service the client may not open; one burnt by a spoofed packet is the same case)
/// opens nothing when replayed without the payload, from elsewhere. A clean stop and start
/// must keep that record (the snapshot's `gated` lines): before they existed, the replay after
/// the restart opened every allowed service for the attacker's address.
#[test]
fn optional_mode_a_refused_knocks_sequence_replayed_after_a_clean_restart_opens_nothing() {
    if !require_netns() {
        return;
    }
    let mut f = optional_fixture("s3-optional");
    f.start();
    capture_a_refused_sequence(&mut f);
    assert_eq!(replay_sequence(&f, "while running"), "replay");
    f.stop_daemon();
    let snapshot = std::fs::read(f.lab.path("state/replay.state")).unwrap();
    crate::faults::check_state_file(&snapshot).unwrap();
    assert!(
        String::from_utf8_lossy(&snapshot).contains("\ngated "),
        "the clean stop saved the gated step"
    );
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let after = replay_sequence(&f, "after a clean restart");
    assert_eq!(
        after, "replay",
        "the sequence of a knock whose payload was refused, replayed without it after a clean restart"
    );
    assert!(!f.connects(Host::Attacker, Family::V4, 22));
}

/// `payload = "optional"`, a client removed from the configuration and added back while its
/// knock's step is in the window (review s21, finding 2): the laptop's knock asks for a service
/// it may not open; sesamed restarts cleanly without the laptop (the config lists only the
/// phone), then a reload adds the laptop back. The record that its step had a payload was
/// dropped with the client, and the attacker's copy of the sequence alone got the sequence-only
/// grant; now it is kept under the laptop's key and the replay is refused.
#[test]
fn optional_mode_a_refused_knocks_sequence_replayed_after_its_client_was_removed_and_re_added_opens_nothing()
 {
    if !require_netns() {
        return;
    }
    let mut f = optional_fixture("s3-removed");
    let phone = f.lab.gen_key("phone");
    f.spec
        .clients
        .push(sesame_tests::ClientSpec::new("phone", &phone.public));
    f.start();
    capture_a_refused_sequence(&mut f);
    assert_eq!(replay_sequence(&f, "while running"), "replay");

    // A clean restart without the laptop.
    f.stop_daemon();
    let laptop = f.spec.clients.remove(0);
    f.write();
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let snapshot = std::fs::read(f.lab.path("state/replay.state")).unwrap();
    crate::faults::check_state_file(&snapshot).unwrap();
    // A reload adds it back.
    f.spec.clients.insert(0, laptop);
    f.write();
    crate::operator::sesamed_ok(&f, &["reload"]);
    let after = replay_sequence(&f, "after the laptop was removed and added back");
    assert_eq!(
        after, "replay",
        "the sequence of a knock whose payload was refused, replayed without it after its client was removed and re-added"
    );
    assert!(!f.connects(Host::Attacker, Family::V4, 22));
}

/// A clean restart with a larger `skew_steps`: the snapshot's gate MACs were saved with expiries
/// computed for the old window, and the new one admits their step for longer. The snapshot
/// says which window that was (`window` line), and the start keeps them that much longer;
/// before, a captured unbound knock refused as too far ahead was granted to the attacker once
/// the old expiry had passed.
#[test]
fn a_refused_knock_replayed_after_a_clean_restart_with_a_larger_skew_opens_nothing() {
    if !require_netns() {
        return;
    }
    const STEP_MS: u64 = 10_000;
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut f = Fixture::new("s3-skew");
    f.spec.knock.step_seconds = (STEP_MS / 1000) as u32;
    f.spec.knock.skew_steps = 1;
    f.spec.knock.extra.push_str("max_ahead_ms = 2000\n");
    f.start();
    let cap = f.lab.capture(Host::Client, CLIENT_IF, "ahead", "udp");
    // Early in a step (step k), with the clock 6 s ahead: the payload is stamped in step k,
    // more than max_ahead_ms ahead, and refused.
    let into_step = unix_ms() % STEP_MS;
    if !(300..1500).contains(&into_step) {
        std::thread::sleep(Duration::from_millis((STEP_MS + 300 - into_step) % STEP_MS));
    }
    let sent_ms = unix_ms();
    let mark = f.mark();
    f.knock(&["--no-bind", "--time-offset", "6"]);
    let client = f.lab.addr(Host::Client, Family::V4);
    f.expect_reject(mark, client, "too_far_ahead");
    cap.stop();

    // A clean stop, and a start with skew_steps = 3 (and the default max_ahead_ms).
    f.stop_daemon();
    f.spec.knock.skew_steps = 3;
    f.spec.knock.extra.clear();
    f.write();
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let snapshot = std::fs::read_to_string(f.lab.path("state/replay.state")).unwrap();
    assert!(snapshot.contains("\nwindow 10 1 "), "{snapshot}");
    // In step k + 2 the old expiry (the end of step k + 1) has passed; the new window
    // (k + 2 ± 3) still admits step k.
    std::thread::sleep(Duration::from_millis(
        (sent_ms + 21_000).saturating_sub(unix_ms()),
    ));
    let outcome =
        crate::fence::replay_outcome(&f, Host::Attacker, "ahead.pcap", "after a clean restart");
    assert_ne!(
        outcome, "granted",
        "an unbound knock refused before a clean restart was granted to the attacker after the restart widened the window"
    );
    assert!(!f.connects(Host::Attacker, Family::V4, 22));
}
