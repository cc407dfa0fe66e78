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

/// Review s22, finding 2: the operator widens `skew_steps` (1 → 3) after the narrow window
/// has already forgotten a refused knock's gate MAC. The scenario of
/// `proto/tests/widen_after_expiry.rs` with the real daemon, a real reload or restart and the
/// attacker's replay from its own address. 10-second steps, `max_ahead_ms = 2000`. On
/// 036c110^ both replays were granted and the attacker connected to tcp/22; since, the step
/// is below the window's floor and sesamed logs nothing for the replay (its ports match
/// nothing). Each test takes about 30 s.
mod widen {
    use std::time::Duration;

    use sesame_tests::{CLIENT_IF, Family, Host, require_netns};

    use crate::common::Fixture;

    const STEP_MS: u64 = 10_000;

    fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    fn sleep_until(ms: u64) {
        std::thread::sleep(Duration::from_millis(ms.saturating_sub(unix_ms())));
    }

    /// sesamed with skew 1 and `max_ahead_ms = 2000`, running.
    fn narrow(tag: &str) -> Fixture {
        let mut f = Fixture::new(tag);
        f.spec.knock.step_seconds = (STEP_MS / 1000) as u32;
        f.spec.knock.skew_steps = 1;
        f.spec.knock.extra.push_str("max_ahead_ms = 2000\n");
        f.start();
        f
    }

    /// Early in a step k, the laptop (its clock 6 s ahead, `--no-bind`) knocks: its payload is
    /// stamped in step k, more than `max_ahead_ms` ahead, and refused as `too_far_ahead`, while
    /// the attacker captures it on the client's link (`ahead.pcap`). Returns the start of step
    /// k (Unix ms). sesamed remembers the MAC until the end of step k + 1 (skew 1).
    fn capture_a_refused_knock(f: &Fixture) -> u64 {
        let cap = f.lab.capture(Host::Client, CLIENT_IF, "ahead", "udp");
        let into_step = unix_ms() % STEP_MS;
        if !(300..1500).contains(&into_step) {
            std::thread::sleep(Duration::from_millis((STEP_MS + 300 - into_step) % STEP_MS));
        }
        let step_start = unix_ms() / STEP_MS * STEP_MS;
        let mark = f.mark();
        f.knock(&["--no-bind", "--time-offset", "6"]);
        f.expect_reject(mark, f.lab.addr(Host::Client, Family::V4), "too_far_ahead");
        let packets = cap.stop();
        assert!(
            packets
                .iter()
                .filter(|p| p.dst == f.server(Family::V4))
                .count()
                >= 4,
            "3 knocks and a payload captured: {packets:#?}"
        );
        f.assert_no_grant(mark, "a knock stamped too far ahead");
        step_start
    }

    /// The attacker replays `ahead.pcap` from its own address: `granted`, the reason of the
    /// refusal, or `nothing` when sesamed logs neither within 3 s (the knock's step is outside
    /// the window: its ports match nothing).
    fn replay(f: &Fixture) -> String {
        replay_capture(f, "ahead.pcap")
    }

    /// As [`replay`], for the capture `pcap`.
    fn replay_capture(f: &Fixture, pcap: &str) -> String {
        crate::fence::replay_within(f, Host::Attacker, pcap, Duration::from_secs(3))
            .unwrap_or_else(|| "nothing".to_owned())
    }

    /// Asserts the attacker's replay opened nothing: no grant, and its TCP connection to the
    /// protected port fails.
    fn assert_refused(f: &Fixture, outcome: &str, when: &str) {
        // After a grant, give the firewall element the moment it takes to appear.
        let opened = if outcome == "granted" {
            f.opens(Host::Attacker, Family::V4, 22)
        } else {
            f.connects(Host::Attacker, Family::V4, 22)
        };
        let tcp = if opened { "connected" } else { "failed" };
        eprintln!(
            "{}: the attacker's replay {when}: {outcome}; its TCP connection to tcp/22: {tcp}",
            f.lab.tag
        );
        assert!(
            outcome != "granted" && !opened,
            "{when}: the attacker's replay of a knock sesamed had refused: {outcome}, its TCP connection to tcp/22: {tcp}; ruleset:\n{}",
            f.lab.server_ruleset()
        );
    }

    /// The fixture can open: a fresh knock from the laptop (its clock right) is granted and
    /// lets it in, while the attacker stays out. The replays before it burnt nothing.
    fn assert_a_fresh_knock_opens(f: &Fixture) {
        let mark = f.mark();
        f.knock(&[]);
        f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
        assert!(f.opens(Host::Client, Family::V4, 22));
        assert!(!f.connects(Host::Attacker, Family::V4, 22));
    }

    /// `skew_steps = 3` (`max_ahead_ms` unchanged) written to the config.
    fn widen(f: &mut Fixture) {
        f.spec.knock.skew_steps = 3;
        f.write();
    }

    /// `sesamed reload`, and its log line.
    fn reload(f: &Fixture) {
        let mark = f.mark();
        crate::operator::sesamed_ok(f, &["reload"]);
        f.daemon()
            .expect_after(mark, &["reloaded"], Duration::from_secs(6));
    }

    /// Step k + 2 (the MAC forgotten at its start, by the 500 ms tick); the attacker's replay
    /// before the widening matches nothing (control: step k is outside k + 2 ± 1). A reload to
    /// skew 3 (window k - 1 ..= k + 5): the replay in step k + 2 must stay refused. Before the
    /// fix it was `granted` to the attacker's address.
    #[test]
    fn a_refused_knock_replayed_after_a_reload_widened_the_window_past_its_forgotten_mac_opens_nothing()
     {
        if !require_netns() {
            return;
        }
        let mut f = narrow("s3-widen-reload");
        let k = capture_a_refused_knock(&f);
        sleep_until(k + 2 * STEP_MS + 1_000);
        let before = replay(&f);
        assert_refused(&f, &before, "before the widening (control)");
        widen(&mut f);
        reload(&f);
        assert_widened_window_admits(k);
        let after = replay(&f);
        assert_refused(&f, &after, "after a reload widened the window");
        assert_a_fresh_knock_opens(&f);
    }

    /// Fails when the machine was so slow that the widened window (skew 3) no longer admits
    /// step `k`, whose knock was captured: the replay would then be refused for that reason.
    fn assert_widened_window_admits(k: u64) {
        assert!(
            unix_ms() < k + 4 * STEP_MS - 3_000,
            "too slow: the widened window no longer admits step k"
        );
    }

    /// As above with a clean restart (SIGTERM, the snapshot, a start with skew 3) instead of a
    /// reload; the snapshot saves the forgotten step (`forgotten 10:<counter>`). Before the
    /// fix the replay was `granted`.
    #[test]
    fn a_refused_knock_replayed_after_a_restart_widened_the_window_past_its_forgotten_mac_opens_nothing()
     {
        if !require_netns() {
            return;
        }
        let mut f = narrow("s3-widen-restart");
        let k = capture_a_refused_knock(&f);
        sleep_until(k + 2 * STEP_MS + 1_000);
        f.stop_daemon();
        let snapshot = std::fs::read_to_string(f.lab.path("state/replay.state")).unwrap();
        widen(&mut f);
        f.daemon = Some(f.lab.start_sesamed(&f.config));
        assert_widened_window_admits(k);
        let after = replay(&f);
        assert_refused(&f, &after, "after a restart widened the window");
        assert!(
            snapshot.contains("\nforgotten 10:"),
            "the clean stop saved the forgotten step: {snapshot}"
        );
        assert_a_fresh_knock_opens(&f);
    }

    /// Control: the same widening reload while sesamed still remembers the MAC (step k + 1)
    /// keeps it, and the same replay in step k + 2 reaches the gate and is refused as a
    /// `replay`: the widened window admits the captured knock's step, and its payload is the
    /// one sesamed judged. With the reload a step later, only the fix keeps it refused.
    #[test]
    fn control_a_refused_knock_replayed_after_a_widening_reload_before_its_mac_expired_is_a_replay()
    {
        if !require_netns() {
            return;
        }
        let mut f = narrow("s3-widen-control");
        let k = capture_a_refused_knock(&f);
        sleep_until(k + STEP_MS + 1_000);
        widen(&mut f);
        reload(&f);
        assert!(
            unix_ms() < k + 2 * STEP_MS,
            "too slow: the reload came after the MAC's old expiry"
        );
        sleep_until(k + 2 * STEP_MS + 1_000);
        let after = replay(&f);
        assert_eq!(
            after, "replay",
            "the replay after a widening reload in time"
        );
        assert_refused(&f, &after, "after a widening reload in time");
        assert_a_fresh_knock_opens(&f);
    }

    /// `payload = "optional"` (the laptop may open tcp/22, not tcp/80; `timeout_ms = 1500`)
    /// with skew 1. Early in a step k, the laptop knocks for tcp/80: its payload is refused
    /// (`service_not_allowed`), which burns step k for a sequence-only grant (the gated step,
    /// remembered until the end of step k + 1 plus `timeout_ms`), while the attacker captures
    /// the sequence without the payload (`sequence.pcap`). Returns the start of step k.
    fn capture_a_refused_payloads_sequence(f: &mut Fixture) -> u64 {
        let into_step = unix_ms() % STEP_MS;
        if !(300..1500).contains(&into_step) {
            std::thread::sleep(Duration::from_millis((STEP_MS + 300 - into_step) % STEP_MS));
        }
        let step_start = unix_ms() / STEP_MS * STEP_MS;
        super::capture_a_refused_sequence(f);
        step_start
    }

    /// The `optional`-mode variant (review s22, finding 2): in step k + 2, 1.5 s after the
    /// gated step's record expired (the end of step k + 1 plus `timeout_ms`), the attacker's
    /// replay of the sequence alone matches nothing (control: step k is outside k + 2 ± 1). A
    /// reload to skew 3 (window k - 1 ..= k + 5): the same replay must stay refused. Before
    /// the fix the sequence got the sequence-only grant for the attacker's address.
    #[test]
    fn optional_mode_a_refused_payloads_sequence_replayed_after_a_reload_widened_the_window_past_its_forgotten_gated_step_opens_nothing()
     {
        optional_mode_widening("s3-widen-optional", false);
    }

    /// As above with a clean restart (SIGTERM, the snapshot with its `forgotten` line, a start
    /// with skew 3) in place of the reload.
    #[test]
    fn optional_mode_a_refused_payloads_sequence_replayed_after_a_restart_widened_the_window_past_its_forgotten_gated_step_opens_nothing()
     {
        optional_mode_widening("s3-widen-optrestart", true);
    }

    /// The two tests above: the widening by a reload, or by a clean `restart`.
    fn optional_mode_widening(tag: &str, restart: bool) {
        if !require_netns() {
            return;
        }
        let mut f = super::optional_fixture(tag);
        f.spec.knock.step_seconds = (STEP_MS / 1000) as u32;
        f.spec.knock.skew_steps = 1;
        f.start();
        let k = capture_a_refused_payloads_sequence(&mut f);
        sleep_until(k + 2 * STEP_MS + f.spec.knock.timeout_ms + 1_500);
        let before = replay_capture(&f, "sequence.pcap");
        assert_refused(&f, &before, "before the widening (control)");
        let how = if restart {
            f.stop_daemon();
            widen(&mut f);
            f.daemon = Some(f.lab.start_sesamed(&f.config));
            "after a restart widened the window"
        } else {
            widen(&mut f);
            reload(&f);
            "after a reload widened the window"
        };
        assert_widened_window_admits(k);
        let after = replay_capture(&f, "sequence.pcap");
        assert_refused(&f, &after, how);
        assert_a_fresh_knock_opens(&f);
    }
}
