//! The reason codes and counters that the server exports as metrics
//! (`sesamed_rejections_total{reason}` and the tracker's counters): each reason has its own
//! code and its own slot in [`Stats::rejections`], and each counter counts what its
//! documentation says, once.

use super::*;
use crate::action::ActionName;
use crate::payload::RejectReason;

/// One of every reason.
fn every_reason() -> Vec<Reason> {
    let ip = v4(1);
    let action = ActionName::new("deploy").unwrap();
    vec![
        Reason::Payload(RejectReason::Truncated { len: 1 }),
        Reason::Payload(RejectReason::TooLong { len: 999 }),
        Reason::Payload(RejectReason::Stale {
            counter: 1,
            offset_steps: 2,
        }),
        Reason::Payload(RejectReason::BadMac),
        Reason::Payload(RejectReason::BadEphemeral),
        Reason::Payload(RejectReason::BadAead),
        Reason::Payload(RejectReason::BadVersion(9)),
        Reason::Payload(RejectReason::Malformed("field")),
        Reason::Payload(RejectReason::CounterMismatch),
        Reason::Replay,
        Reason::TooFarAhead,
        Reason::RateLimited,
        Reason::Expired,
        Reason::SourceNotAllowed,
        Reason::AddressRequired,
        Reason::OtherIpNotAllowed(ip),
        Reason::BadAddress(ip),
        Reason::ServiceNotAllowed(tcp22()),
        Reason::ActionNotAllowed(action),
        Reason::ArgumentNotAllowed(action),
    ]
}

#[test]
fn every_reason_has_its_own_code_in_the_metrics_order() {
    let reasons = every_reason();
    assert_eq!(reasons.len(), Reason::CODES.len());
    for (i, r) in reasons.iter().enumerate() {
        assert_eq!(r.code(), Reason::CODES[i], "{r:?}");
        assert_eq!(r.index(), i, "{r:?}");
    }
    let mut codes: Vec<&str> = Reason::CODES.to_vec();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), Reason::CODES.len(), "codes are distinct");
    assert!(
        Reason::CODES
            .iter()
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
        "codes are metric label values"
    );
}

#[test]
fn every_reason_says_why_in_its_own_words() {
    let mut lines: Vec<String> = every_reason().iter().map(|r| r.to_string()).collect();
    assert!(lines.iter().all(|l| l.len() > 5), "{lines:?}");
    assert!(lines[15].contains("198.18.0.1") && lines[16].contains("198.18.0.1"));
    assert!(
        lines[17].contains("22") && lines[18].contains("deploy") && lines[19].contains("deploy")
    );
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), Reason::CODES.len(), "messages are distinct");
}

/// The rejections among `events`, counted by code in [`Reason::CODES`] order.
fn count_by_code(events: &[Event]) -> [u64; Reason::CODES.len()] {
    let mut counts = [0; Reason::CODES.len()];
    for e in events {
        if let Event::Rejected { reason, .. } = e {
            let i = Reason::CODES
                .iter()
                .position(|c| *c == reason.code())
                .unwrap();
            counts[i] += 1;
        }
    }
    counts
}

fn slot(code: &str) -> usize {
    Reason::CODES.iter().position(|c| *c == code).unwrap()
}

#[test]
fn rejections_are_counted_under_their_own_code() {
    // Client 0 expired; client 1 may knock only from 198.18.1.0/24.
    let expired = T0.offset_millis(-1);
    let mut lab = Lab::with(config(PayloadMode::Required), 2, |i| Policy {
        allow: vec![tcp22()],
        expires: (i == 0).then_some(expired),
        sources: if i == 1 {
            vec!["198.18.1.0/24".parse().unwrap()]
        } else {
            Vec::new()
        },
        ..Policy::default()
    });
    let c = c0();
    // Expired, twice.
    for src in [v4(2), v4(3)] {
        lab.knocks(0, c, T0, src);
        let d = lab.payload(0, c, T0.plus_millis(u64::from(src == v4(3))));
        lab.send_payload(0, c, T0, src, &d);
    }
    // Source not allowed, then a bad MAC (a payload of the wrong step), then a replay.
    lab.knocks(1, c, T0, v4(4));
    let d = lab.payload(1, c, T0);
    lab.send_payload(1, c, T0, v4(4), &d);
    lab.knocks(1, c, T0, v4(5));
    let wrong_step = lab.payload(1, c - 1, T0.offset_millis(-(STEP_MS as i64)));
    lab.send_payload(1, c, T0, v4(5), &wrong_step);
    lab.send_payload(1, c, T0, v4(5), &d);
    let events = lab.take();
    let expected = count_by_code(&events);
    assert_eq!(expected[slot("expired")], 2, "{events:?}");
    assert_eq!(expected[slot("source_not_allowed")], 1, "{events:?}");
    assert_eq!(expected[slot("bad_mac")], 1, "{events:?}");
    assert_eq!(expected[slot("replay")], 1, "{events:?}");
    assert_eq!(expected.iter().sum::<u64>(), 5, "{events:?}");
    assert_eq!(lab.tracker.stats().rejections, expected);
}

#[test]
fn a_granted_knock_counts_each_step_of_its_path_once() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    lab.send(T0, v4(2), Proto::Udp, OUT_OF_RANGE, None);
    lab.knocks(0, c, T0, v4(2));
    let d = lab.payload(0, c, T0);
    lab.send_payload(0, c, T0, v4(2), &d);
    assert_eq!(lab.grants().len(), 1);
    assert_eq!(
        *lab.tracker.stats(),
        Stats {
            packets: 5,
            in_range: 4,
            sequences_completed: 1,
            payloads_seen: 1,
            gate_passed: 1,
            x25519: 1,
            payloads_accepted: 1,
            grants: 1,
            ..Stats::default()
        }
    );
}

#[test]
fn a_replayed_payload_is_counted_as_cached_and_costs_no_key_work() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    let d = lab.payload(0, c, T0);
    for src in [v4(2), v4(3)] {
        lab.knocks(0, c, T0, src);
        lab.send_payload(0, c, T0, src, &d);
    }
    let mut rejections = [0; Reason::CODES.len()];
    rejections[slot("replay")] = 1;
    assert_eq!(
        *lab.tracker.stats(),
        Stats {
            packets: 8,
            in_range: 8,
            sequences_completed: 2,
            payloads_seen: 2,
            replays_cached: 1,
            gate_passed: 1,
            x25519: 1,
            payloads_accepted: 1,
            grants: 1,
            rejections,
            ..Stats::default()
        }
    );
}

#[test]
fn a_payload_is_counted_as_seen_on_each_of_its_paths() {
    // Before its sequence completed: it passes the gate and waits as the early payload.
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    let first = lab.sequence(0, c).knocks[0];
    lab.send(T0, v4(2), first.proto, first.port, None);
    let d = lab.payload(0, c, T0);
    lab.send_payload(0, c, T0, v4(2), &d);
    assert_eq!(lab.tracker.stats().payloads_seen, 1);
    assert_eq!(lab.tracker.stats().gate_passed, 1);
    // For the step after the window: it passes that step's gate and is burnt (stale).
    let ahead = c + 2;
    let d = lab.payload(0, ahead, at(2, 0));
    assert_eq!(lab.send_payload(0, ahead, T0, v4(3), &d), Outcome::Payload);
    let mut rejections = [0; Reason::CODES.len()];
    rejections[slot("stale")] = 1;
    assert_eq!(
        *lab.tracker.stats(),
        Stats {
            packets: 3,
            in_range: 3,
            payloads_seen: 2,
            gate_passed: 2,
            rejections,
            ..Stats::default()
        }
    );
    // Single-packet mode: the payload alone.
    let mut lab = Lab::with(config_of_length(0, PayloadMode::Required), 1, |_| Policy {
        allow: vec![tcp22()],
        ..Policy::default()
    });
    let d = lab.payload(0, c, T0);
    lab.send_payload(0, c, T0, v4(2), &d);
    assert_eq!(lab.grants(), vec![(ClientId(0), c)]);
    assert_eq!(
        *lab.tracker.stats(),
        Stats {
            packets: 1,
            in_range: 1,
            payloads_seen: 1,
            gate_passed: 1,
            x25519: 1,
            payloads_accepted: 1,
            grants: 1,
            ..Stats::default()
        }
    );
}

#[test]
fn a_reset_is_counted_when_progress_is_lost_not_on_a_fresh_start() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    let stray = lab.stray_port(T0);
    let first = lab.sequence(0, c).knocks[0];
    // A stray with no progress: nothing lost.
    lab.send(T0, v4(2), Proto::Udp, stray, None);
    assert_eq!(lab.tracker.stats().resets, 0);
    // A first knock, then a stray: its progress is lost.
    lab.send(T0, v4(2), first.proto, first.port, None);
    assert_eq!(lab.send(T0, v4(2), Proto::Udp, stray, None), Outcome::Reset);
    assert_eq!(lab.tracker.stats().resets, 1);
    // Two knocks, then a stray.
    for k in &lab.sequence(0, c).knocks[..2] {
        lab.send(T0, v4(3), k.proto, k.port, None);
    }
    lab.send(T0, v4(3), Proto::Udp, stray, None);
    assert_eq!(lab.tracker.stats().resets, 2);
}

#[test]
fn a_missing_payload_is_counted_when_the_wait_ends() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    lab.knocks(0, c0(), T0, v4(2));
    lab.tracker
        .handle_timeout(T0.plus_millis(TIMEOUT_MS - 1), &mut lab.events);
    assert_eq!(lab.tracker.stats().payloads_missing, 0);
    lab.tracker
        .handle_timeout(T0.plus_millis(TIMEOUT_MS), &mut lab.events);
    assert_eq!(lab.tracker.stats().payloads_missing, 1);
    assert_eq!(lab.tracker.stats().sequences_completed, 1);
}

#[test]
fn an_evicted_source_is_counted() {
    let cfg = TrackerConfig {
        max_sources: 2,
        ..config(PayloadMode::Required)
    };
    let mut lab = Lab::with(cfg, 1, |_| Policy::default());
    let first = lab.sequence(0, c0()).knocks[0];
    for src in [v4(2), v4(3)] {
        lab.send(T0, src, first.proto, first.port, None);
    }
    assert_eq!(lab.tracker.stats().sources_evicted, 0);
    lab.send(T0, v4(4), first.proto, first.port, None);
    assert_eq!(lab.tracker.stats().sources_evicted, 1);
    assert_eq!(lab.tracker.tracked_sources(), 2);
}

#[test]
fn a_reloaded_tracker_carries_the_counters_on() {
    let mut lab = Lab::new(PayloadMode::None, 1);
    lab.knocks(0, c0(), T0, v4(2));
    let before = lab.tracker.stats().clone();
    assert_eq!(before.grants, 1);
    let mut reloaded = Lab::new(PayloadMode::None, 1);
    reloaded.tracker.inherit_seen(&lab.tracker);
    assert_eq!(*reloaded.tracker.stats(), before);
}

/// A payload-sized datagram at a knock port is a knock, not a payload: it is not counted as a
/// payload seen, and no gate is checked for it (only the payload port's slots are payload
/// candidates, UDP at the payload position).
#[test]
fn a_payload_sized_datagram_at_a_knock_port_is_not_a_payload() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    let seq = lab.sequence(0, c);
    let d = lab.payload(0, c, T0);
    let first = seq.knocks[0];
    assert_eq!(first.proto, Proto::Udp);
    lab.send(T0, v4(2), first.proto, first.port, Some(&d));
    assert_eq!(lab.tracker.stats().payloads_seen, 0);
    assert_eq!(lab.tracker.stats().gate_passed, 0);
    // The same datagram at the payload port, early (before the sequence), is one.
    lab.send_payload(0, c, T0, v4(3), &d);
    assert_eq!(lab.tracker.stats().payloads_seen, 1);
}

/// A payload may not ask to open an address that is unspecified, loopback, multicast or
/// broadcast, even for a client allowed to name another address than its source: each is
/// refused as `bad_address` (before `allow_other_ip` is looked at).
#[test]
fn a_payload_naming_an_address_that_cannot_be_opened_is_refused_as_bad_address() {
    let mut lab = Lab::with(config(PayloadMode::Required), 1, |_| Policy {
        allow: vec![tcp22()],
        allow_other_ip: true,
        ..Policy::default()
    });
    let c = c0();
    let bad: [IpAddr; 6] = [
        "0.0.0.0".parse().unwrap(),
        "::".parse().unwrap(),
        "127.0.0.1".parse().unwrap(),
        "::1".parse().unwrap(),
        "224.0.0.1".parse().unwrap(),
        "255.255.255.255".parse().unwrap(),
    ];
    for (n, address) in bad.iter().enumerate() {
        let request = Request {
            timestamp: T0.plus_millis(n as u64),
            random: [n as u8; 16],
            services: vec![tcp22()],
            address: Some(*address),
            action: None,
            flags: 0,
        };
        let d = build_payload(
            &lab.client_keys(0),
            c,
            &request,
            &client_key(2000 + n as u64),
            &WireNoise::from_random(&[n as u8; 64]),
        )
        .unwrap();
        let source = v4(10 + n as u8);
        lab.knocks(0, c, T0, source);
        lab.send_payload(0, c, T0, source, &d);
        let events = lab.take();
        assert_eq!(
            count_by_code(&events)[slot("bad_address")],
            1,
            "{address}: {events:?}"
        );
        assert!(
            !events.iter().any(|e| matches!(e, Event::Granted(_))),
            "{address}: {events:?}"
        );
    }
    // The control: another, openable address is granted.
    let request = Request {
        timestamp: T0.plus_millis(100),
        random: [99; 16],
        services: vec![tcp22()],
        address: Some(v4(200)),
        action: None,
        flags: 0,
    };
    let d = build_payload(
        &lab.client_keys(0),
        c,
        &request,
        &client_key(2100),
        &WireNoise::from_random(&[99; 64]),
    )
    .unwrap();
    lab.knocks(0, c, T0, v4(99));
    lab.send_payload(0, c, T0, v4(99), &d);
    assert_eq!(lab.grants(), vec![(ClientId(0), c)]);
}

/// A replay refused from the cache of gate MACs names the client the MAC was remembered for
/// (the log line and the per-client counters need it), before any key work.
#[test]
fn a_replay_refused_from_the_cache_names_its_client() {
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    lab.knocks(1, c, T0, v4(2));
    let d = lab.payload(1, c, T0);
    lab.send_payload(1, c, T0, v4(2), &d);
    assert_eq!(lab.grants(), vec![(ClientId(1), c)]);
    lab.knocks(1, c, T0, v4(66));
    lab.send_payload(1, c, T0, v4(66), &d);
    let events = lab.take();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Rejected {
                client: Some(ClientId(1)),
                reason: Reason::Replay,
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(lab.tracker.stats().replays_cached, 1);
}

/// A payload for the step after the window is burnt on arrival and refused as stale, with its
/// distance from the current step: `skew_steps + 1`.
#[test]
fn a_payload_for_the_step_after_the_window_is_stale_by_skew_plus_one() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let ahead = c0() + u64::from(SKEW_STEPS) + 1;
    let d = lab.payload(0, ahead, at(u64::from(SKEW_STEPS) + 1, 0));
    lab.send_payload(0, ahead, T0, v4(2), &d);
    let events = lab.take();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Rejected {
                client: Some(ClientId(0)),
                reason: Reason::Payload(RejectReason::Stale { counter, offset_steps }),
                ..
            } if *counter == ahead && *offset_steps == i64::from(SKEW_STEPS) + 1
        )),
        "{events:?}"
    );
}
