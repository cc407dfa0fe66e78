//! Attacks by someone on the client's network: the attacker sees the client's packets (a
//! shared Wi-Fi, a hotel or café network, a compromised router on the path) and can send a few
//! packets of its own, from its own address or with the client's address as the source. It does
//! not have the client's keys. Each test reproduces one concrete attack with the real `sesame`
//! and `sesamed`, real nftables and real (spoofed) packets, and asserts the secure behaviour:
//!
//! 1. `--wait` clock probes knocked with a clock shifted into the future are bearer tokens
//!    that become valid later: replayed from the attacker's address they must open nothing.
//! 2. One spoofed in-range packet between the client's last knock and its payload must neither
//!    discard the awaited payload (the client gets in) nor leave the captured knock valid for
//!    a replay from the attacker's address.
//! 3. In `optional` payload mode the payload narrows the services: a completed sequence must
//!    not open the whole `allow` list before the payload is read.
//! 4. In single-packet mode one captured valid datagram replayed from 65 536 spoofed sources
//!    must not cost an X25519 per copy, nor keep the client out.
//! 5. A knock accepted with a clock ahead of the server (within the skew window) must not lock
//!    out the same client's knocks with a correct clock (one device, or two sharing a key).
//! 6. Changing `step_seconds` (by `sesamed reload`, or a restart) must not lock out
//!    sequence-only clients whose last counter was stored in units of the old step.
//!
//! The assertions hold whatever the fix: "the attacker gets no grant and cannot connect",
//! never a particular rejection reason (a client that puts its own address into the payload
//! makes a replay fail as `other_ip_not_allowed`, a replay cache as `replay`), except where the
//! reason is the point.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use sesame_tests::{
    ATTACKER_IF, CLIENT_IF, Family, Host, SERVER_IF_ATTACKER, bin, pcap, require_netns, text,
};

use crate::common::{Fixture, LOG_WAIT, SETTLE};
use crate::flood::{self, Flood, FloodSpec, Knocks, counter, status, unix_ms};
use crate::operator::sesamed_ok;

// ---------------------------------------------------------------------------------------------
// Helpers

/// `source=IP ` as the daemon logs it (the trailing space tells 198.19.1.2 from 198.19.1.20).
fn src(ip: IpAddr) -> String {
    format!("source={ip} ")
}

/// Grant lines (any client) for `source` after `mark`.
fn grants_for(f: &Fixture, mark: usize, source: IpAddr) -> Vec<String> {
    f.daemon()
        .matching(mark, &[" granted client=", &src(source)])
}

/// Rejection lines for `source` after `mark`.
fn rejections_for(f: &Fixture, mark: usize, source: IpAddr) -> Vec<String> {
    f.daemon().matching(mark, &["rejected", &src(source)])
}

/// Waits for `laptop`'s grant from `source` after `mark`; on timeout fails with `what` and the
/// rejection lines for that source (the reason the knock was refused).
fn expect_granted(f: &Fixture, mark: usize, source: IpAddr, what: &str) -> String {
    let s = src(source);
    f.daemon()
        .wait_for_after(mark, &[" granted client=laptop", &s], LOG_WAIT)
        .unwrap_or_else(|| {
            panic!(
                "{what}: no grant for {source} within {LOG_WAIT:?}; rejections: {:?}",
                rejections_for(f, mark, source)
            )
        })
}

/// The value of `services=` in a grant line.
fn services_of(line: &str) -> &str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("services="))
        .unwrap_or_else(|| panic!("no services= in the grant line: {line}"))
}

/// Re-sends the UDP datagrams (and SYNs) of a capture to the server from `host`'s own address.
fn replay_capture(f: &Fixture, host: Host, capture: &Path) {
    let o = f.lab.netprobe(
        host,
        &[
            "replay".to_owned(),
            capture.to_string_lossy().into_owned(),
            f.server(Family::V4).to_string(),
        ],
    );
    assert!(o.status.success(), "netprobe replay: {}", text(&o));
}

/// UDP datagrams of a capture sent to `server`: (destination port, payload length).
fn udp_to(packets: &[pcap::Packet], server: IpAddr) -> Vec<(u16, usize)> {
    packets
        .iter()
        .filter(|p| p.dst == server)
        .filter_map(|p| match &p.l4 {
            pcap::L4::Udp { dport, payload, .. } => Some((*dport, payload.len())),
            _ => None,
        })
        .collect()
}

/// A polled counter of `sesamed status --json` reached `at_least` within `limit`.
fn wait_counter(f: &Fixture, name: &str, at_least: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if counter(&status(f), name) >= at_least {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every port (knocks and payload) of the `laptop` client's sequences at `counters`.
fn sequence_ports(f: &Fixture, counters: std::ops::RangeInclusive<u64>) -> Vec<u16> {
    let text = std::fs::read_to_string(&f.profile).expect("read the profile");
    let profile = sesame_proto::Profile::parse(&text).expect("parse the profile");
    let key = sesame_keys::read_private_key_file(&f.client_key.path).expect("client key");
    let keys = sesame_proto::ClientKeys::for_client(&key, &profile.server_public_key, None)
        .expect("client keys");
    let mut ports = Vec::new();
    for c in counters {
        let s = sesame_proto::derive::derive_sequence(&keys, &profile.params, c).expect("sequence");
        ports.extend(s.knocks.iter().map(|k| k.port));
        ports.push(s.payload_port);
    }
    ports
}

/// Sends ONE spoofed UDP datagram (empty) with the client's IPv4 address as the source to the
/// server's `port`, from the attacker's link (raw frame: `sesame-flood udp --count 1`).
fn spoof_one_as_client(f: &Fixture, port: u16) {
    let lab = &f.lab;
    let args: Vec<String> = vec![
        "udp".into(),
        "--iface".into(),
        ATTACKER_IF.into(),
        "--dst-mac".into(),
        lab.mac(Host::Server, SERVER_IF_ATTACKER),
        "--dst4".into(),
        f.server(Family::V4).to_string(),
        "--family".into(),
        "4".into(),
        "--sources".into(),
        "1".into(),
        "--src4".into(),
        lab.v4(Host::Client).to_string(),
        "--count".into(),
        "1".into(),
        "--lo".into(),
        port.to_string(),
        "--hi".into(),
        port.to_string(),
    ];
    let out = lab.run_ok(Host::Attacker, bin("sesame-flood"), &args);
    assert!(
        out.contains("\"packets\":1"),
        "the spoofer must have sent exactly one frame: {out}"
    );
}

/// Drops every outbound tcp/22 packet of the client's namespace (a network that blocks
/// outgoing SSH): `sesame open --wait` never sees the service answer.
fn block_clients_outbound_ssh(f: &Fixture) {
    f.lab.run_ok(
        Host::Client,
        "nft",
        &["add table inet egress; \
           add chain inet egress out { type filter hook output priority 0; policy accept; }; \
           add rule inet egress out tcp dport 22 drop"],
    );
}

/// Sleeps until the wall clock (Unix milliseconds) satisfies `ok`, checking every 50 ms.
fn wait_wall_clock(ok: impl Fn(u64) -> bool, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !ok(unix_ms()) {
        assert!(
            Instant::now() < deadline,
            "the wall clock did not reach the wanted phase within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Clock probes are future bearer tokens

/// Attack 1: `sesame open --wait` on a network that blocks outgoing tcp/22 never sees the
/// service answer, so it probes the clock: knocks with the time shifted by +1, −1, +2, −2, +4,
/// −4 steps. The +2 and +4 knocks are outside the server's window when sent and become valid
/// 1–4 steps later; their payload names no address, so the attacker who captured them replays
/// them from its own address later and gets the lease. The attacker must get no grant at any
/// time, and must not be able to connect.
#[test]
fn clock_probes_replayed_later_open_nothing_for_the_attacker() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("att-probes");
    // Short steps keep the test short: the +4-step probe is valid from about 6 s to 12 s after
    // it was sent.
    let step: u64 = 2;
    let skew: u64 = 1;
    f.spec.knock.step_seconds = step as u32;
    f.spec.knock.skew_steps = skew as u32;
    // A lease outlives the replay loop: if the attacker is let in, it stays in.
    f.spec.lease_seconds = 60;
    f.start();
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    let server = f.server(Family::V4);
    let start = f.mark();
    block_clients_outbound_ssh(&f);

    let cap = f.lab.capture(Host::Client, CLIENT_IF, "probes", "udp");
    let capture = cap.path.clone();
    let profile = f.profile.to_string_lossy().into_owned();
    let o = f.lab.sesame(
        Host::Client,
        &[
            "open",
            "--profile",
            &profile,
            "--port",
            "tcp/22",
            "--wait",
            "tcp/22",
            "--timeout",
            "500ms",
            "--retries",
            "0",
        ],
    );
    let packets = cap.stop();
    assert!(
        !o.status.success(),
        "sesame open --wait must fail: the client's outbound tcp/22 is blocked: {}",
        text(&o)
    );
    let sent = udp_to(&packets, server);
    let payloads = sent
        .iter()
        .filter(|(_, len)| sesame_proto::wire::is_payload_len(*len))
        .count();
    eprintln!(
        "sesame open --wait sent {} datagrams ({payloads} payloads): {}",
        sent.len(),
        text(&o)
    );
    assert!(payloads >= 1, "no knock captured: {packets:#?}");

    // The attacker replays everything it saw, from its own address, every second (each round
    // waits up to a second for a grant line) for twice the time the +4-step probe needs to
    // become valid and expire again.
    let t0 = Instant::now();
    let span = Duration::from_secs(2 * (4 * step + skew * step));
    let mut round = 0;
    while t0.elapsed() < span {
        round += 1;
        let mark = f.mark();
        replay_capture(&f, Host::Attacker, &capture);
        if let Some(line) = f.daemon().wait_for_after(
            mark,
            &[" granted client=", &src(attacker)],
            Duration::from_secs(1),
        ) {
            panic!(
                "the attacker replayed the client's clock probes from its own address {attacker} \
                 (round {round}, {:.1} s after `sesame open --wait` gave up) and was granted: \
                 {line}",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let refused = rejections_for(&f, start, attacker);
    eprintln!("{round} replay rounds; refusals for the attacker (rate-limited log): {refused:?}");
    let all = grants_for(&f, start, attacker);
    assert!(all.is_empty(), "grants for the attacker: {all:?}");
    assert!(
        !f.connects(Host::Attacker, Family::V4, 22),
        "the attacker can connect to tcp/22; ruleset:\n{}",
        f.lab.server_ruleset()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. One spoofed packet, then a replay

/// Attack 2: the client knocks paced (`--delay-ms`); right after its last knock (once the
/// daemon counted the sequence as complete) and before its payload, the attacker spoofs ONE
/// in-range UDP packet with the client's source address to a port outside the client's
/// sequence. Today that packet resets the source's progress, also while it waits for the
/// payload: the payload is never used, the replay state does not advance, and the attacker
/// replays the captured knock from its own address and is granted. Asserts both: the client's
/// own knock is granted, and the replay opens nothing for the attacker.
#[test]
fn one_spoofed_packet_before_the_payload_neither_locks_out_the_client_nor_enables_a_replay() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("att-stray");
    f.spec.knock.length = 3;
    f.spec.knock.payload = "required".to_owned();
    // Steps long enough that the replay comes within the knock's skew window however slow the
    // machine (so the payload is judged), and a knock timeout that covers the paced knock.
    f.spec.knock.step_seconds = 60;
    f.spec.knock.timeout_ms = 20_000;
    f.spec.lease_seconds = 30;
    f.start();
    let client = f.lab.addr(Host::Client, Family::V4);
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    let server = f.server(Family::V4);

    // A port of the knock range in none of the client's sequences around now.
    let now_counter = unix_ms() / 1000 / u64::from(f.spec.knock.step_seconds);
    let avoid = sequence_ports(&f, now_counter.saturating_sub(1)..=now_counter + 1);
    let (lo, hi) = f.spec.knock.port_range;
    let stray = (lo..=hi).find(|p| !avoid.contains(p)).expect("a free port");

    let before = counter(&status(&f), "sequences_completed");
    let client_cap = f.lab.capture(Host::Client, CLIENT_IF, "stray-knock", "udp");
    let capture = client_cap.path.clone();
    // What the server received from the client's address, in order (to check the timing).
    let client_src = format!("udp and src host {client}");
    let server_cap = f
        .lab
        .capture(Host::Server, "any", "stray-server", &client_src);
    let start = f.mark();
    let profile = f.profile.to_string_lossy().into_owned();
    // Knocks at 0, 2 and 4 s, the payload at 6 s: the spoofed packet goes out as soon as the
    // daemon counts the sequence as complete, and has 2 s (not the 500 ms of a knock paced by
    // `--delay-ms 500`, which a loaded machine could miss) to arrive before the payload.
    let mut knock = f.lab.spawn(
        Host::Client,
        "sesame open",
        bin("sesame"),
        &["open", "--profile", &profile, "--delay-ms", "2000"],
        &[],
    );
    assert!(
        wait_counter(
            &f,
            "sequences_completed",
            before + 1,
            Duration::from_secs(20)
        ),
        "the daemon never counted the client's sequence as complete: {}",
        status(&f)
    );
    spoof_one_as_client(&f, stray);
    let exit = knock.wait_exit(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "sesame open: {exit:?}: {}",
        knock.output()
    );

    // Precondition: the spoofed packet reached the server after the client's last knock and
    // before its payload (else the machine was too slow for the 2-second gap).
    let at_server = udp_to(&server_cap.stop(), server);
    let spoof_at = at_server.iter().position(|(port, _)| *port == stray);
    let payload_at = at_server
        .iter()
        .position(|(_, len)| sesame_proto::wire::is_payload_len(*len));
    assert!(
        matches!((spoof_at, payload_at), (Some(s), Some(p)) if s == 3 && p == 4),
        "precondition: the server must see 3 knocks, the spoofed packet to port {stray}, then \
         the payload; it saw {at_server:?}"
    );

    let client_granted =
        f.daemon()
            .wait_for_after(start, &[" granted client=laptop", &src(client)], LOG_WAIT);
    let knock_packets = client_cap.stop();
    assert_eq!(
        udp_to(&knock_packets, server).len(),
        4,
        "3 knocks and a payload captured: {knock_packets:#?}"
    );

    // The attacker replays the captured knock from its own address.
    let mark = f.mark();
    replay_capture(&f, Host::Attacker, &capture);
    // Wait for the daemon's verdict on the replay (a grant, or a rejection, which the daemon's
    // log limiter may drop), then look.
    let _ = f.daemon().wait_for_after(mark, &[&src(attacker)], LOG_WAIT);
    let attacker_grants = grants_for(&f, start, attacker);
    let attacker_connects = f.connects(Host::Attacker, Family::V4, 22);
    assert!(
        client_granted.is_some() && attacker_grants.is_empty() && !attacker_connects,
        "one spoofed packet between the client's last knock and its payload: the client's own \
         knock must be granted (granted: {}; rejections: {:?}), and the attacker's replay of \
         it must open nothing (attacker grants: {attacker_grants:?}; attacker connects to \
         tcp/22: {attacker_connects})",
        client_granted.is_some(),
        rejections_for(&f, start, client),
    );
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "the client's lease is open"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. `optional` mode grants before the payload

/// Attack 3: with `payload = "optional"`, a completed sequence grants the client's whole
/// `allow` list (tcp/22 and tcp/80 here) to the source before the payload is read, so a payload
/// asking only for tcp/22 cannot narrow it. tcp/22 must open, tcp/80 must stay closed, and
/// every grant line must list tcp/22 only.
#[test]
fn optional_payload_narrows_the_services_opened() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("att-optional");
    f.spec.knock.payload = "optional".to_owned();
    f.spec.protect = vec!["tcp/22".to_owned(), "tcp/80".to_owned()];
    f.client().allow = Some(vec!["tcp/22".to_owned(), "tcp/80".to_owned()]);
    f.spec.lease_seconds = 30;
    f.start();
    let client = f.lab.addr(Host::Client, Family::V4);
    let mark = f.mark();
    f.knock(&["--port", "tcp/22"]);
    expect_granted(
        &f,
        mark,
        client,
        "a knock asking for tcp/22 in optional mode",
    );
    let opened_22 = f.opens(Host::Client, Family::V4, 22);
    // Every grant this knock causes (today: one for the sequence, one for the payload) is in
    // place and logged well within SETTLE.
    std::thread::sleep(SETTLE);
    let connects_80 = f.connects(Host::Client, Family::V4, 80);
    let grants = grants_for(&f, mark, client);
    for g in &grants {
        assert_eq!(
            services_of(g),
            "tcp/22",
            "the payload asked for tcp/22 only, but a grant lists more: {g}"
        );
    }
    assert!(opened_22, "tcp/22 must open; grants: {grants:?}");
    assert!(
        !connects_80,
        "tcp/80 must stay closed (the payload asked for tcp/22 only); grants: {grants:?}; \
         ruleset:\n{}",
        f.lab.server_ruleset()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A replayed valid payload costs an X25519 every time

/// The legitimate knocks' pace during the replay flood.
const KNOCK_EVERY: Duration = Duration::from_millis(500);

/// Attack 4: in single-packet mode (`length = 0`) the attacker captures one valid knock of the
/// client and floods that exact datagram from 65 536 spoofed sources (`sesame-flood replay`)
/// to its port, while the client knocks. Each copy passes the MAC gate; today each one costs
/// an X25519, and the flood keeps the client out. Every legitimate knock must open, and the
/// `x25519` counter may grow by at most the number of distinct valid datagrams (the client's
/// knocks and the replayed one).
///
/// Rate: `SESAME_FLOOD_RATE` frames per second (default [`flood::CI_RATE`], 0 = as fast as the
/// generator can), as the flood tests. Knocks: `SESAME_FLOOD_KNOCKS` (default 20), at most one
/// every [`KNOCK_EVERY`], so the flood lasts at least 10 s (100 000 copies at the CI rate).
#[test]
fn replayed_valid_datagram_from_spoofed_sources_costs_no_x25519() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("att-x25519");
    f.spec.knock.length = 0;
    f.spec.knock.payload = "required".to_owned();
    // The replayed datagram's step stays in the window (so every copy reaches the MAC gate)
    // for at least two minutes after the capture: longer than the flood.
    let step = 120;
    f.spec.knock.step_seconds = step;
    f.spec.lease_seconds = 30;
    f.start();
    let client = f.lab.addr(Host::Client, Family::V4);
    let server = f.server(Family::V4);

    let filter = format!("udp and dst host {server}");
    let cap = f.lab.capture(Host::Client, CLIENT_IF, "one-knock", &filter);
    let capture = cap.path.clone();
    let mark = f.mark();
    f.knock(&[]);
    expect_granted(&f, mark, client, "the knock to be captured");
    let captured_at = Instant::now();
    let packets = cap.stop();
    let sent = udp_to(&packets, server);
    assert_eq!(
        sent.len(),
        1,
        "single-packet mode: one datagram captured: {packets:#?}"
    );
    assert!(
        sesame_proto::wire::is_payload_len(sent[0].1),
        "the captured datagram is a payload: {} bytes",
        sent[0].1
    );

    let knocks = std::env::var("SESAME_FLOOD_KNOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20u32);
    let mut spec = FloodSpec::new("replay", Family::V4, 65536);
    spec.rate = std::env::var("SESAME_FLOOD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(flood::CI_RATE);
    spec.extra = vec![
        "--pcap".into(),
        capture.to_string_lossy().into_owned(),
        // To the address the client sent it to (the server's address on the client link).
        "--dst4".into(),
        server.to_string(),
    ];
    let before = status(&f);
    let flood = Flood::start(&f, &spec, Duration::from_secs(600));
    // Full speed before the first knock (as flood::measure).
    std::thread::sleep(Duration::from_millis(500));
    // One knock every KNOCK_EVERY at most, so the knocks span the flood even when each one is
    // quick.
    let t0 = Instant::now();
    let mut k = Knocks::default();
    for i in 0..knocks {
        if let Some(rest) = (t0 + KNOCK_EVERY * i).checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
        let one = flood::knock_many(&f, Family::V4, &f.profile, 1);
        k.attempted += one.attempted;
        k.opened += one.opened;
        k.failures
            .extend(one.failures.iter().map(|e| format!("#{i}: {e}")));
    }
    let generator = flood.finish();
    let after = settled_status(&f);
    let delta = |name: &str| counter(&after, name).saturating_sub(counter(&before, name));
    let x25519 = delta("x25519");
    let copies = generator["payloads"].as_u64().unwrap_or(0);
    let figures = format!(
        "generator {generator}; counters: packets_seen +{}, payloads_seen +{}, x25519 +{x25519}, \
         payloads_accepted +{}, grants +{}",
        delta("packets_seen"),
        delta("payloads_seen"),
        delta("payloads_accepted"),
        delta("grants")
    );
    eprintln!(
        "replay flood: {figures}; knocks {} of {}",
        k.opened, k.attempted
    );
    assert!(copies > 0, "the generator sent nothing: {generator}");
    assert!(
        x25519 <= u64::from(knocks) + 1,
        "{copies} copies of one valid datagram from spoofed sources cost {x25519} X25519 \
         computations; at most {} distinct valid datagrams were sent ({knocks} knocks and the \
         replayed one); {figures}",
        u64::from(knocks) + 1,
    );
    assert_eq!(
        k.opened, k.attempted,
        "every legitimate knock must open under the replay flood; failures: {:?}; {figures}",
        k.failures,
    );
    let spoofed = f
        .daemon()
        .matching(0, &[" granted client=", "source=198.19."]);
    assert!(
        spoofed.is_empty(),
        "a spoofed source was granted: {spoofed:?}"
    );
    assert!(
        captured_at.elapsed() < Duration::from_secs(u64::from(step)),
        "the flood outlasted the replayed datagram's step ({step} s): the test was not \
         meaningful to the end"
    );
}

/// `sesamed status --json` once the daemon has worked through its socket queue (its
/// `packets_seen` stopped moving), as flood::measure reads it after a flood.
fn settled_status(f: &Fixture) -> serde_json::Value {
    let mut last = status(f);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let again = status(f);
        let done = counter(&again, "packets_seen") == counter(&last, "packets_seen");
        last = again;
        if done {
            break;
        }
    }
    last
}

// ---------------------------------------------------------------------------------------------
// 5. A future timestamp locks the client out

/// Attack 5: a knock accepted with the clock 5 s ahead (inside the skew window of one 10-s
/// step) raises the replay high-water mark to a future time; the client's next knock with the
/// right clock, at once, must still be granted (today: `reason=replay` until real time
/// catches up).
#[test]
fn knock_from_a_clock_ahead_does_not_lock_out_the_next_knock() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("att-future");
    f.spec.knock.step_seconds = 10;
    f.spec.knock.skew_steps = 1;
    f.spec.lease_seconds = 30;
    f.start();
    let client = f.lab.addr(Host::Client, Family::V4);
    let mark = f.mark();
    f.knock(&["--time-offset", "5"]);
    expect_granted(
        &f,
        mark,
        client,
        "a knock with the clock 5 s ahead (within the skew)",
    );
    let mark = f.mark();
    f.knock(&[]);
    expect_granted(
        &f,
        mark,
        client,
        "a knock with the right clock right after one with the clock 5 s ahead",
    );
}

/// Attack 5, two devices: two devices share the client's key; the laptop's clock is 4 s ahead,
/// the other's is right. The laptop knocks (granted); the other device, on another network
/// (the lab's third namespace), knocks right after: it must be granted too.
#[test]
fn two_devices_sharing_a_key_with_clocks_4s_apart_both_get_in() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("att-2dev");
    f.spec.knock.step_seconds = 10;
    f.spec.knock.skew_steps = 1;
    f.spec.lease_seconds = 30;
    f.start();
    let laptop = f.lab.addr(Host::Client, Family::V4);
    let other = f.lab.addr(Host::Attacker, Family::V4);
    let other_profile = f.write_profile("other-device", Family::V4, &f.client_key.path, |_| {});
    let mark = f.mark();
    f.knock(&["--time-offset", "4"]);
    expect_granted(&f, mark, laptop, "the device whose clock is 4 s ahead");
    let mark = f.mark();
    f.knock_from(Host::Attacker, &other_profile, &[]);
    expect_granted(
        &f,
        mark,
        other,
        "the second device (same key, right clock) right after the first",
    );
    assert!(
        f.opens(Host::Attacker, Family::V4, 22),
        "the second device's lease is open"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Changing `step_seconds` locks clients out

/// Knocks once with 10-second steps, changes the daemon's and the profile's `step_seconds` to
/// 20 (by `sesamed reload`, or a restart), and knocks again in a later 20-second step than the
/// first knock's whole 10-second step: the second knock must be granted.
fn step_change(tag: &str, restart: bool) {
    let mut f = Fixture::new(tag);
    f.spec.knock.payload = "none".to_owned();
    f.spec.knock.step_seconds = 10;
    f.spec.knock.skew_steps = 1;
    f.start();
    let client = f.lab.addr(Host::Client, Family::V4);
    // Knock in the second half of a 20-second step (with a margin), so that the wait for the
    // next 20-second step, which must start after the first knock's 10-second step ends, is
    // short.
    wait_wall_clock(
        |ms| (10_000..17_000).contains(&(ms % 20_000)),
        Duration::from_secs(30),
    );
    let mark = f.mark();
    f.knock(&[]);
    expect_granted(&f, mark, client, "the first knock, with 10-second steps");
    // The first knock's 10-second step ends at most here.
    let old_step_end = (unix_ms() / 10_000 + 1) * 10_000;

    f.spec.knock.step_seconds = 20;
    if restart {
        f.stop_daemon();
        f.write();
        f.daemon = Some(f.lab.start_sesamed(&f.config));
    } else {
        let mark = f.mark();
        f.write();
        let out = sesamed_ok(&f, &["reload"]);
        assert!(out.contains("reloaded"), "sesamed reload: {out}");
        f.daemon().expect_after(mark, &["reloaded"], LOG_WAIT);
    }
    // A 20-second step that starts after the first knock's 10-second step has ended: a later
    // step than the first knock under any step size, so a replay check that compares like with
    // like must let it in.
    wait_wall_clock(
        |ms| (ms / 20_000) * 20_000 >= old_step_end,
        Duration::from_secs(45),
    );
    let mark = f.mark();
    f.knock(&[]);
    let how = if restart {
        "a restart"
    } else {
        "sesamed reload"
    };
    expect_granted(
        &f,
        mark,
        client,
        &format!("a knock in a later step after step_seconds changed from 10 to 20 by {how}"),
    );
    assert!(f.opens(Host::Client, Family::V4, 22), "the lease is open");
}

/// Attack 6 (reload): a sequence-only client (`payload = "none"`) knocks with 10-second steps;
/// the operator changes `step_seconds` to 20 in the config and the profile and runs `sesamed
/// reload`; the client's next knock (in a later step) must be granted. Today the stored last
/// counter is in units of the old step, so it is refused with `reason=replay`.
#[test]
fn step_seconds_changed_by_reload_does_not_lock_out_sequence_only_clients() {
    if !require_netns() {
        return;
    }
    step_change("att-step-reload", false);
}

/// Attack 6 (restart): as the reload variant, with the daemon stopped, the step changed and the
/// daemon started again (the last counter comes from the state directory).
#[test]
fn step_seconds_changed_across_a_restart_does_not_lock_out_sequence_only_clients() {
    if !require_netns() {
        return;
    }
    step_change("att-step-restart", true);
}
