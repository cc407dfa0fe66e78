//! When a source's state is reclaimed: as soon as it holds nothing (no first knock, no partial
//! or completed sequence, no early payload), and never while it holds something. A source kept
//! forever would fill the table up to `max_sources` and push real knockers out by eviction.

use super::*;

#[test]
fn a_source_is_forgotten_once_its_sequence_is_granted() {
    let mut lab = Lab::new(PayloadMode::None, 1);
    let c = c0();
    let seq = lab.sequence(0, c);
    lab.send(T0, v4(2), Proto::Udp, seq.knocks[0].port, None);
    assert_eq!(lab.tracker.tracked_sources(), 1, "a first knock is kept");
    lab.knocks(0, c, T0, v4(2));
    assert_eq!(lab.grants(), vec![(ClientId(0), c)]);
    assert_eq!(lab.tracker.tracked_sources(), 0);
}

#[test]
fn a_source_is_forgotten_once_its_payload_is_granted() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    lab.knocks(0, c, T0, v4(2));
    assert_eq!(lab.tracker.tracked_sources(), 1, "it waits for the payload");
    let d = lab.payload(0, c, T0);
    lab.send_payload(0, c, T0, v4(2), &d);
    assert_eq!(lab.grants(), vec![(ClientId(0), c)]);
    assert_eq!(lab.tracker.tracked_sources(), 0);
}

#[test]
fn a_source_is_forgotten_when_its_payload_overtook_the_last_knock() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    let seq = lab.sequence(0, c);
    let d = lab.payload(0, c, T0);
    for k in &seq.knocks[..2] {
        lab.send(T0, v4(2), k.proto, k.port, None);
    }
    lab.send_payload(0, c, T0, v4(2), &d);
    let last = seq.knocks[2];
    lab.send(T0, v4(2), last.proto, last.port, None);
    assert_eq!(lab.grants(), vec![(ClientId(0), c)]);
    assert_eq!(lab.tracker.tracked_sources(), 0);
}

#[test]
fn a_source_is_forgotten_when_its_wait_for_the_payload_ends() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    lab.knocks(0, c, T0, v4(2));
    let deadline = lab.tracker.poll_timeout().unwrap();
    assert_eq!(deadline, T0.plus_millis(TIMEOUT_MS));
    lab.tracker.handle_timeout(deadline, &mut lab.events);
    assert!(
        lab.take()
            .iter()
            .any(|e| matches!(e, Event::PayloadMissing { .. }))
    );
    assert_eq!(lab.tracker.tracked_sources(), 0);
}

#[test]
fn a_stray_packet_with_no_progress_leaves_no_state() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let stray = lab.stray_port(T0);
    assert_eq!(
        lab.send(T0, v4(2), Proto::Udp, stray, None),
        Outcome::Ignored
    );
    assert_eq!(lab.tracker.tracked_sources(), 0);
}

#[test]
fn a_source_waiting_for_its_payload_is_kept_after_a_stray_packet() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    lab.knocks(0, c, T0, v4(2));
    let stray = lab.stray_port(T0);
    lab.send(T0.plus_millis(10), v4(2), Proto::Udp, stray, None);
    assert_eq!(lab.tracker.tracked_sources(), 1);
    let d = lab.payload(0, c, T0);
    lab.send_payload(0, c, T0.plus_millis(20), v4(2), &d);
    assert_eq!(lab.grants(), vec![(ClientId(0), c)]);
}

#[test]
fn a_source_with_a_new_first_knock_is_kept_when_its_old_wait_ends() {
    // Client 0's sequence completes and waits for a payload that never comes; meanwhile the
    // source starts client 1's. The end of the first wait must not drop the second's progress.
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    lab.knocks(0, c, T0, v4(2));
    let seq = lab.sequence(1, c);
    lab.send(
        T0.plus_millis(1000),
        v4(2),
        Proto::Udp,
        seq.knocks[0].port,
        None,
    );
    lab.tracker
        .handle_timeout(T0.plus_millis(TIMEOUT_MS), &mut lab.events);
    assert_eq!(lab.tracker.tracked_sources(), 1);
    let now = T0.plus_millis(TIMEOUT_MS + 1);
    for k in &seq.knocks[1..] {
        lab.send(now, v4(2), k.proto, k.port, None);
    }
    assert!(
        lab.take().iter().any(|e| matches!(
            e,
            Event::SequenceComplete {
                client: ClientId(1),
                ..
            }
        )),
        "client 1's sequence completes"
    );
}

#[test]
fn a_source_with_partial_progress_is_kept_when_its_old_wait_ends() {
    // As above, two knocks in: the candidates alone must keep the source.
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    lab.knocks(0, c, T0, v4(2));
    let seq = lab.sequence(1, c);
    for k in &seq.knocks[..2] {
        lab.send(T0.plus_millis(1000), v4(2), k.proto, k.port, None);
    }
    lab.tracker
        .handle_timeout(T0.plus_millis(TIMEOUT_MS), &mut lab.events);
    assert_eq!(lab.tracker.tracked_sources(), 1);
    let last = seq.knocks[2];
    assert_eq!(
        lab.send(
            T0.plus_millis(TIMEOUT_MS + 1),
            v4(2),
            last.proto,
            last.port,
            None
        ),
        Outcome::Complete
    );
}

#[test]
fn a_reloaded_tracker_still_knows_which_steps_had_a_payload() {
    // `optional` mode grants a sequence alone only for a step no datagram passed the gate
    // for. A reload (a new tracker that inherits the old one's seen cache) keeps that record.
    let c = c0();
    let mut old = Lab::with(config(PayloadMode::Optional), 1, |_| Policy::default());
    old.knocks(0, c, T0, v4(2));
    // Through the gate, then refused: the policy allows no service.
    let d = old.payload(0, c, T0);
    old.send_payload(0, c, T0, v4(2), &d);
    assert!(old.grants().is_empty());
    let knock_and_wait = |lab: &mut Lab| {
        let at = T0.plus_millis(100);
        lab.knocks(0, c, at, v4(3));
        lab.tracker
            .handle_timeout(at.plus_millis(TIMEOUT_MS), &mut lab.events);
        lab.grants()
    };
    // A tracker without the record grants the copied knocks alone...
    let mut fresh = Lab::with(config(PayloadMode::Optional), 1, |_| Policy::default());
    assert_eq!(knock_and_wait(&mut fresh), vec![(ClientId(0), c)]);
    // ...the reloaded one does not.
    let mut reloaded = Lab::with(config(PayloadMode::Optional), 1, |_| Policy::default());
    reloaded.tracker.inherit_seen(&old.tracker);
    assert_eq!(knock_and_wait(&mut reloaded), vec![]);
}

/// The queue of payload deadlines is bounded at `4 × max_sources + 64` entries (a flood of
/// completed sequences cannot grow it without end): a sequence completed while it is full gets
/// no deadline, so in optional mode its sequence-only fallback is never granted. Here one
/// source completes 81 sequences with `max_sources = 4` (a bound of 80): of the four it still
/// waits for (`MAX_AWAITING`), the three whose deadlines fit are granted at the deadline, the
/// 81st is not.
#[test]
fn the_deadline_queue_holds_four_per_source_plus_64() {
    let config = TrackerConfig {
        max_sources: 4,
        ..config(PayloadMode::Optional)
    };
    let n = 81;
    assert_eq!(4 * config.max_sources + 64, n - 1);
    let mut lab = Lab::with(config, n, |_| Policy {
        allow: vec![tcp22()],
        ..Policy::default()
    });
    let c = c0();
    for i in 0..n {
        assert_eq!(lab.knocks(i, c, T0, v4(2)), Outcome::Complete, "client {i}");
    }
    assert_eq!(MAX_AWAITING, 4);
    assert!(lab.grants().is_empty(), "nothing before the deadline");
    lab.tracker
        .handle_timeout(T0.plus_millis(TIMEOUT_MS), &mut lab.events);
    assert_eq!(
        lab.grants(),
        vec![(ClientId(77), c), (ClientId(78), c), (ClientId(79), c)]
    );
}

/// The same sequence completed twice from one source waits once for its payload: one
/// awaiting entry and one deadline, not two. (A resent knock alone makes no progress: every
/// packet of it is a late duplicate of the awaited sequence. Another client's knock first
/// starts progress, and the resent knock then completes the sequence again.)
#[test]
fn a_sequence_completed_again_waits_once() {
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    lab.knocks(0, c, T0, v4(2));
    assert_eq!(lab.tracker.sources[&v4(2)].awaiting.len(), 1);
    let other = lab.sequence(1, c).knocks[0];
    lab.send(T0, v4(2), other.proto, other.port, None);
    let seq = lab.sequence(0, c);
    let outs: Vec<Outcome> = seq
        .knocks
        .iter()
        .map(|k| lab.send(T0, v4(2), k.proto, k.port, None))
        .collect();
    assert_eq!(outs.last(), Some(&Outcome::Complete), "{outs:?}");
    assert_eq!(lab.tracker.sources[&v4(2)].awaiting.len(), 1);
    assert_eq!(lab.tracker.deadlines.len(), 1);
}

/// Deadlines that are due are handled on the packet path too (not only by `handle_timeout`):
/// in optional mode a packet after the deadline brings the sequence-only grant.
#[test]
fn a_packet_after_a_deadline_ends_the_wait() {
    let mut lab = Lab::new(PayloadMode::Optional, 1);
    let c = c0();
    lab.knocks(0, c, T0, v4(2));
    assert!(lab.grants().is_empty());
    let after = T0.plus_millis(TIMEOUT_MS + 1);
    let k = lab.sequence(0, c).knocks[0];
    lab.send(after, v4(9), k.proto, k.port, None);
    assert_eq!(lab.grants(), vec![(ClientId(0), c)]);
}

/// When the table of sources is full, the source evicted is the one least recently active,
/// not the one that came first: a source that keeps knocking keeps its progress.
#[test]
fn the_least_recently_active_source_is_evicted() {
    let config = TrackerConfig {
        max_sources: 4,
        ..config(PayloadMode::Required)
    };
    let mut lab = Lab::with(config, 1, |_| Policy {
        allow: vec![tcp22()],
        ..Policy::default()
    });
    let first = lab.sequence(0, c0()).knocks[0];
    for i in 0..4 {
        lab.send(T0, v4(10 + i), first.proto, first.port, None);
    }
    // The first source is active again, then a fifth arrives: the second goes.
    lab.send(T0.plus_millis(1), v4(10), first.proto, first.port, None);
    lab.send(T0.plus_millis(2), v4(20), first.proto, first.port, None);
    assert_eq!(lab.tracker.tracked_sources(), 4);
    assert!(
        lab.tracker.sources.contains_key(&v4(10)),
        "the active one stays"
    );
    assert!(
        !lab.tracker.sources.contains_key(&v4(11)),
        "the idle one goes"
    );
}

/// A source's partial sequences are capped at `max_candidates`: when more (client, step)
/// pairs hold its first two knocks, the newest steps are kept. Eight ports and twenty clients
/// make such pairs common.
#[test]
fn partial_sequences_are_capped_and_the_newest_steps_kept() {
    let params = KnockParams::new(STEP, 2, (10000, 10007), &[], KnockProtocol::Udp).unwrap();
    let config = TrackerConfig {
        max_sources: 64,
        max_candidates: 1,
        ..TrackerConfig::new(params, SKEW_STEPS, TIMEOUT_MS, PayloadMode::Required)
    };
    let n = 20;
    let mut lab = Lab::with(config, n, |_| Policy {
        allow: vec![tcp22()],
        ..Policy::default()
    });
    let counters = [c0() - 1, c0(), c0() + 1];
    let ports = |lab: &Lab, i: usize, k: u64| -> Vec<u16> {
        let s = lab.sequence(i, k);
        let mut p: Vec<u16> = s.knocks.iter().map(|k| k.port).collect();
        p.push(s.payload_port);
        p
    };
    // Client 0's two knocks of the newest step, and every (client, step) whose ports hold both.
    let seq = lab.sequence(0, c0() + 1);
    let (a, b) = (seq.knocks[0].port, seq.knocks[1].port);
    let holders: Vec<u64> = (0..n)
        .flat_map(|i| counters.map(|k| (i, k)))
        .filter(|&(i, k)| {
            let p = ports(&lab, i, k);
            p.contains(&a) && p.contains(&b)
        })
        .map(|(_, k)| k)
        .collect();
    assert!(
        holders.len() > 1,
        "the test needs more holders than the cap: {holders:?}"
    );
    lab.send(T0, v4(2), Proto::Udp, a, None);
    lab.send(T0, v4(2), Proto::Udp, b, None);
    let kept = &lab.tracker.sources[&v4(2)].candidates;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].counter, c0() + 1);
}

/// A packet at the first knock's port but of the other protocol is not a duplicate of the
/// first knock: it does not count as progress of that knock.
#[test]
fn the_first_knocks_port_with_the_other_protocol_is_no_duplicate() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let first = lab.sequence(0, c0()).knocks[0];
    assert_eq!(first.proto, Proto::Udp);
    assert_eq!(
        lab.send(T0, v4(2), Proto::Udp, first.port, None),
        Outcome::Progress
    );
    assert_eq!(
        lab.send(T0, v4(2), Proto::Udp, first.port, None),
        Outcome::Progress
    );
    assert_ne!(
        lab.send(T0, v4(2), Proto::Tcp, first.port, None),
        Outcome::Progress
    );
}

/// Progress is kept for exactly `timeout_ms`: a sequence whose last knock comes `timeout_ms`
/// after its first still completes; one a millisecond later does not.
#[test]
fn a_sequence_completes_up_to_the_timeout_and_not_after() {
    for (late, completes) in [(0, true), (1, false)] {
        let mut lab = Lab::new(PayloadMode::None, 1);
        let seq = lab.sequence(0, c0());
        let last = seq.knocks.len() - 1;
        for (i, k) in seq.knocks.iter().enumerate() {
            let now = if i == last {
                T0.plus_millis(TIMEOUT_MS + late)
            } else {
                T0
            };
            lab.send(now, v4(2), k.proto, k.port, None);
        }
        assert_eq!(!lab.grants().is_empty(), completes, "{late} ms late");
    }
}

/// The queue of recently active sources is compacted only once it holds more than
/// `2 × max_sources + 64` entries (compacting sorts every source: doing it earlier would cost a
/// sort per packet). With `max_sources = 4` one busy source is queued once per packet up to 72
/// entries; the 73rd compacts the queue to the one live source.
#[test]
fn the_source_queue_is_compacted_past_twice_max_sources_plus_64() {
    let config = TrackerConfig {
        max_sources: 4,
        ..config(PayloadMode::Required)
    };
    let mut lab = Lab::with(config, 1, |_| Policy::default());
    for i in 0..72u64 {
        lab.tracker.touch(v4(2), T0.plus_millis(i));
    }
    assert_eq!(lab.tracker.lru.len(), 72);
    lab.tracker.touch(v4(2), T0.plus_millis(72));
    assert_eq!(lab.tracker.lru.len(), 1);
}

/// A payload that came before its sequence was complete is opened at the completion only if it
/// is that sequence's own (its port, client and step): another client's payload for the same
/// payload port and step is not opened with the wrong keys (which would refuse it and lose
/// the wait). 24 ports and 20 clients make two clients share a payload port.
#[test]
fn a_pending_payload_of_another_client_is_not_opened_at_a_completion() {
    let params = KnockParams::new(STEP, 2, (10000, 10023), &[], KnockProtocol::Udp).unwrap();
    let config = TrackerConfig {
        max_sources: 64,
        ..TrackerConfig::new(params, SKEW_STEPS, TIMEOUT_MS, PayloadMode::Required)
    };
    let n = 20;
    let mut lab = Lab::with(config, n, |_| Policy {
        allow: vec![tcp22()],
        ..Policy::default()
    });
    let c = c0();
    // Two clients whose payload port at c is the same, the first with knocks that no other
    // (client, step) of the window holds both of (so its knock completes its own sequence).
    let holds = |lab: &Lab, i: usize, k: u64, ports: [u16; 2]| {
        let s = lab.sequence(i, k);
        let mut p: Vec<u16> = s.knocks.iter().map(|k| k.port).collect();
        p.push(s.payload_port);
        ports.iter().all(|x| p.contains(x))
    };
    let unique = |lab: &Lab, a: usize| {
        let s = lab.sequence(a, c);
        let ports = [s.knocks[0].port, s.knocks[1].port];
        (0..n)
            .flat_map(|i| [c - 1, c, c + 1].map(|k| (i, k)))
            .filter(|&(i, k)| holds(lab, i, k, ports))
            .count()
            == 1
    };
    let pair = (0..n)
        .flat_map(|a| (0..n).map(move |b| (a, b)))
        .find(|&(a, b)| {
            let (sa, sb) = (lab.sequence(a, c), lab.sequence(b, c));
            a != b && sa.payload_port == sb.payload_port && unique(&lab, a)
        });
    let (a, b) = pair.expect("two clients sharing a payload port");
    let d = lab.payload(b, c, T0);
    lab.send_payload(b, c, T0, v4(2), &d);
    assert!(
        lab.take()
            .iter()
            .all(|e| !matches!(e, Event::Rejected { .. }))
    );
    lab.knocks(a, c, T0, v4(2));
    let events = lab.take();
    assert!(
        events.iter().all(|e| !matches!(e, Event::Rejected { .. })),
        "{events:?}"
    );
    let awaiting = &lab.tracker.sources[&v4(2)].awaiting;
    assert_eq!(awaiting.len(), 1, "client {a} waits for its own payload");
    assert_eq!(awaiting[0].client, a as u32);
}
