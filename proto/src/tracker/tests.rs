//! Tracker tests on a virtual clock.

use super::*;
use crate::action::AllowedAction;
use crate::params::KnockProtocol;
use crate::payload::{WireNoise, build_payload};
use crate::sequence::Sequence;
use sesame_fixtures::{EXCLUDED_PORT, PORT_RANGE, SKEW_STEPS, TIMEOUT_MS, client_key, server_key};
use std::net::{Ipv4Addr, Ipv6Addr};

// The shared fixtures' settings (`sesame-fixtures`), as this crate's own types: there
// `sesame_proto::UnixMillis` and `crate::UnixMillis` are different types.
const STEP: u32 = sesame_fixtures::STEP_SECONDS;
const T0: UnixMillis = UnixMillis(sesame_fixtures::T0_MS);

struct World {
    server: PrivateKey,
    clients: Vec<PrivateKey>,
    tracker: Tracker,
    events: Vec<Event>,
}

fn params(length: u64, protocol: KnockProtocol) -> KnockParams {
    KnockParams::new(STEP, length, PORT_RANGE, &[EXCLUDED_PORT], protocol).unwrap()
}

fn config(length: u64, protocol: KnockProtocol, payload: PayloadMode) -> TrackerConfig {
    TrackerConfig {
        max_sources: 1024,
        max_candidates: 8,
        ..TrackerConfig::new(params(length, protocol), SKEW_STEPS, TIMEOUT_MS, payload)
    }
}

fn tcp22() -> Service {
    Service::new(Proto::Tcp, 22)
}

fn world_with(config: TrackerConfig, n: usize, policy: impl Fn(usize) -> Policy) -> World {
    let server = server_key();
    let clients: Vec<PrivateKey> = (0..n).map(|i| client_key(i as u64 + 1)).collect();
    let entries = clients
        .iter()
        .enumerate()
        .map(|(i, c)| ClientEntry {
            name: format!("client{i}"),
            keys: ClientKeys::for_server(&server, &c.public_key(), None).unwrap(),
            policy: policy(i),
        })
        .collect();
    let tracker = Tracker::new(config, server.clone(), entries, Vec::new(), T0).unwrap();
    World {
        server,
        clients,
        tracker,
        events: Vec::new(),
    }
}

fn default_policy(_: usize) -> Policy {
    Policy {
        allow: vec![tcp22(), Service::new(Proto::Udp, 51820)],
        ..Policy::default()
    }
}

fn world(mode: PayloadMode, n: usize) -> World {
    world_with(config(3, KnockProtocol::Udp, mode), n, default_policy)
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
}

impl World {
    fn client_keys(&self, i: usize) -> ClientKeys {
        ClientKeys::for_client(&self.clients[i], &self.server.public_key(), None).unwrap()
    }

    fn sequence(&self, i: usize, counter: u64) -> Sequence {
        derive_sequence(&self.client_keys(i), &self.tracker.config.params, counter).unwrap()
    }

    fn payload(&self, i: usize, at: UnixMillis, request: Request) -> Vec<u8> {
        let counter = at.counter(STEP);
        build_payload(
            &self.client_keys(i),
            counter,
            &request,
            &PrivateKey::generate(),
            &WireNoise::from_random(&[i as u8 ^ (at.0 as u8); 64]),
        )
        .unwrap()
    }

    fn request(at: UnixMillis) -> Request {
        Request {
            timestamp: at,
            random: [1; 16],
            services: vec![tcp22()],
            address: None,
            action: None,
            flags: 0,
        }
    }

    fn send(
        &mut self,
        now: UnixMillis,
        src: IpAddr,
        proto: Proto,
        port: u16,
        d: Option<&[u8]>,
    ) -> Outcome {
        let out = self.tracker.packet(
            now,
            Incoming {
                source: src,
                proto,
                port,
                payload: d,
            },
            &mut self.events,
        );
        self.tracker.assert_invariants();
        out
    }

    /// Sends client `i`'s knocks for the step of `at`, in `order`, then its payload.
    fn knock(
        &mut self,
        i: usize,
        at: UnixMillis,
        src: IpAddr,
        order: &[usize],
        payload: Option<Request>,
    ) {
        let seq = self.sequence(i, at.counter(STEP));
        for &k in order {
            let knock = seq.knocks[k];
            self.send(at, src, knock.proto, knock.port, None);
        }
        if let Some(req) = payload {
            let d = self.payload(i, at, req);
            self.send(at, src, Proto::Udp, seq.payload_port, Some(&d));
        }
    }

    /// As [`World::knock`], with a datagram built before (to send it again).
    fn knock_raw(
        &mut self,
        i: usize,
        at: UnixMillis,
        src: IpAddr,
        order: &[usize],
        datagram: Option<Vec<u8>>,
    ) {
        let seq = self.sequence(i, at.counter(STEP));
        for &k in order {
            let knock = seq.knocks[k];
            self.send(at, src, knock.proto, knock.port, None);
        }
        if let Some(d) = datagram {
            self.send(at, src, Proto::Udp, seq.payload_port, Some(&d));
        }
    }

    /// Takes the grants out of the events (leaving the rest).
    fn grants(&mut self) -> Vec<Grant> {
        let (grants, rest): (Vec<Event>, Vec<Event>) = self
            .events
            .drain(..)
            .partition(|e| matches!(e, Event::Granted(_)));
        self.events = rest;
        grants
            .into_iter()
            .filter_map(|e| match e {
                Event::Granted(g) => Some(g),
                _ => None,
            })
            .collect()
    }

    /// Takes the rejection reasons out of the events (leaving the rest).
    fn rejections(&mut self) -> Vec<Reason> {
        let (rejected, rest): (Vec<Event>, Vec<Event>) = self
            .events
            .drain(..)
            .partition(|e| matches!(e, Event::Rejected { .. }));
        self.events = rest;
        rejected
            .into_iter()
            .filter_map(|e| match e {
                Event::Rejected { reason, .. } => Some(reason),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn required_mode_opens_after_sequence_and_payload() {
    let mut w = world(PayloadMode::Required, 3);
    let src = v4(2);
    w.knock(1, T0, src, &[0, 1, 2], None);
    assert!(w.grants().is_empty(), "no grant without the payload");
    let d = w.payload(1, T0, World::request(T0));
    let port = w.sequence(1, T0.counter(STEP)).payload_port;
    assert_eq!(
        w.send(T0, src, Proto::Udp, port, Some(&d)),
        Outcome::Payload
    );
    let grants = w.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].client, ClientId(1));
    assert_eq!(grants[0].address, src);
    assert_eq!(grants[0].services, vec![tcp22()]);
    assert!(!grants[0].bound);
    let replay = &w.tracker.replay_states()[1];
    assert_eq!(replay.accepted.len(), 1);
    assert_eq!(replay.accepted[0].timestamp, T0);
    assert_eq!(grants[0].replay, *replay);
    assert_eq!(Some(replay.accepted[0].mac), carried_mac(&d));
    assert_eq!(w.tracker.stats().x25519, 1);
}

#[test]
fn payload_alone_or_knocks_alone_do_not_open_in_required_mode() {
    let mut w = world(PayloadMode::Required, 2);
    let seq = w.sequence(0, T0.counter(STEP));
    let d = w.payload(0, T0, World::request(T0));
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert!(w.grants().is_empty());
    assert_eq!(w.tracker.stats().x25519, 0, "no X25519 before the sequence");
    // Two of three knocks, then the payload.
    w.knock(0, T0, v4(3), &[0, 2], Some(World::request(T0)));
    assert!(w.grants().is_empty());
    assert_eq!(w.tracker.stats().x25519, 0);
}

#[test]
fn out_of_order_and_duplicate_knocks_are_tolerated() {
    let mut w = world(PayloadMode::Required, 4);
    for (n, order) in [
        vec![2, 1, 0],
        vec![0, 0, 1, 1, 2, 2],
        vec![1, 0, 1, 2, 0],
        vec![2, 2, 2, 0, 1],
    ]
    .into_iter()
    .enumerate()
    {
        let at = T0.plus_millis(n as u64 * 100);
        w.knock(2, at, v4(10 + n as u8), &order, Some(World::request(at)));
        assert_eq!(w.grants().len(), 1, "order {order:?}");
    }
}

#[test]
fn payload_overtaking_the_last_knock_still_opens() {
    let mut w = world(PayloadMode::Required, 2);
    let seq = w.sequence(0, T0.counter(STEP));
    let d = w.payload(0, T0, World::request(T0));
    let src = v4(2);
    w.send(T0, src, Proto::Udp, seq.knocks[0].port, None);
    w.send(T0, src, Proto::Udp, seq.knocks[1].port, None);
    w.send(T0, src, Proto::Udp, seq.payload_port, Some(&d));
    assert!(w.grants().is_empty());
    w.send(T0, src, Proto::Udp, seq.knocks[2].port, None);
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn late_duplicate_knock_before_payload_is_tolerated() {
    let mut w = world(PayloadMode::Required, 2);
    let seq = w.sequence(0, T0.counter(STEP));
    let src = v4(2);
    w.knock(0, T0, src, &[0, 1, 2, 2, 1], None);
    let d = w.payload(0, T0, World::request(T0));
    w.send(T0, src, Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn knocks_must_arrive_within_the_timeout() {
    let mut w = world(PayloadMode::None, 1);
    let seq = w.sequence(0, T0.counter(STEP));
    let src = v4(2);
    w.send(T0, src, Proto::Udp, seq.knocks[0].port, None);
    w.send(
        T0.plus_millis(3000),
        src,
        Proto::Udp,
        seq.knocks[1].port,
        None,
    );
    w.send(
        T0.plus_millis(5001),
        src,
        Proto::Udp,
        seq.knocks[2].port,
        None,
    );
    assert!(w.grants().is_empty());
    // Within the timeout it works (the counter is still the same step).
    let t = T0.plus_millis(6000);
    w.knock(0, t, src, &[0, 1], None);
    w.send(
        t.plus_millis(4999),
        src,
        Proto::Udp,
        seq.knocks[2].port,
        None,
    );
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn payload_must_arrive_within_the_timeout() {
    let mut w = world(PayloadMode::Required, 1);
    let seq = w.sequence(0, T0.counter(STEP));
    let src = v4(2);
    w.knock(0, T0, src, &[0, 1, 2], None);
    let late = T0.plus_millis(5001);
    let d = w.payload(0, late, World::request(late));
    w.send(late, src, Proto::Udp, seq.payload_port, Some(&d));
    assert!(w.grants().is_empty());
}

#[test]
fn replayed_payload_is_refused() {
    let mut w = world(PayloadMode::Required, 1);
    let seq = w.sequence(0, T0.counter(STEP));
    let d = w.payload(0, T0, World::request(T0));
    let src = v4(2);
    w.knock(0, T0, src, &[0, 1, 2], None);
    w.send(T0, src, Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1);
    // The recorded knock and payload, sent again from the same and another source.
    for replayer in [src, v4(66)] {
        let later = T0.plus_millis(1000);
        for k in &seq.knocks {
            w.send(later, replayer, k.proto, k.port, None);
        }
        w.send(later, replayer, Proto::Udp, seq.payload_port, Some(&d));
        assert!(w.grants().is_empty());
        assert!(w.rejections().contains(&Reason::Replay));
    }
    assert_eq!(w.tracker.stats().x25519, 1, "replays refused before X25519");
    // A fresh payload from the client works, even one with an older timestamp (another
    // device, or this one after its clock was corrected).
    let t = T0.plus_millis(2000);
    w.knock(0, t, src, &[0, 1, 2], Some(World::request(t)));
    assert_eq!(w.grants().len(), 1);
    let older = T0.plus_millis(1);
    w.knock(0, t, src, &[0, 1, 2], Some(World::request(older)));
    assert_eq!(w.grants().len(), 1, "{:?}", w.rejections());
}

#[test]
fn replay_state_survives_a_restart() {
    let mut w = world(PayloadMode::Required, 1);
    let seq = w.sequence(0, T0.counter(STEP));
    let d = w.payload(0, T0, World::request(T0));
    w.knock(0, T0, v4(2), &[0, 1, 2], None);
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1);
    let saved = w.tracker.replay_states().to_vec();
    // "Restart": a new tracker with the saved replay state.
    let entries = vec![ClientEntry {
        name: "c".into(),
        keys: ClientKeys::for_server(&w.server, &w.clients[0].public_key(), None).unwrap(),
        policy: default_policy(0),
    }];
    w.tracker = Tracker::new(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        w.server.clone(),
        entries,
        saved,
        T0,
    )
    .unwrap();
    let t = T0.plus_millis(500);
    for k in &seq.knocks {
        w.send(t, v4(2), k.proto, k.port, None);
    }
    w.send(t, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert!(w.grants().is_empty());
    assert_eq!(w.rejections(), vec![Reason::Replay]);
    assert_eq!(
        w.tracker.stats().x25519,
        0,
        "the restarted tracker knows the MAC: no X25519 for the replay"
    );
}

/// A reload builds the new tracker from a copy of the replay states taken before it starts;
/// a knock the running tracker accepts meanwhile is brought over with `update_replay`, and
/// its replay is refused by the new tracker (without it, the copy would let it through).
#[test]
fn a_replay_state_brought_over_to_a_new_tracker_refuses_the_replay() {
    let mut w = world(PayloadMode::Required, 1);
    let copy = w.tracker.replay_states().to_vec();
    let seq = w.sequence(0, T0.counter(STEP));
    let d = w.payload(0, T0, World::request(T0));
    w.knock(0, T0, v4(2), &[0, 1, 2], None);
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1);
    let state = w.tracker.replay_states()[0].clone();
    let key = w.clients[0].public_key();
    for bring_over in [true, false] {
        let entries = vec![ClientEntry {
            name: "c".into(),
            keys: ClientKeys::for_server(&w.server, &key, None).unwrap(),
            policy: default_policy(0),
        }];
        let mut t = Tracker::new(
            config(3, KnockProtocol::Udp, PayloadMode::Required),
            w.server.clone(),
            entries,
            copy.clone(),
            T0,
        )
        .unwrap();
        if bring_over {
            assert!(t.update_replay(&key, state.clone(), T0));
            let stranger = client_key(99).public_key();
            assert!(!t.update_replay(&stranger, state.clone(), T0));
        }
        w.tracker = t;
        let at = T0.plus_millis(500);
        for k in &seq.knocks {
            w.send(at, v4(3), k.proto, k.port, None);
        }
        w.send(at, v4(3), Proto::Udp, seq.payload_port, Some(&d));
        assert_eq!(
            w.grants().is_empty(),
            bring_over,
            "bring_over = {bring_over}"
        );
    }
}

impl World {
    /// Sequence-only modes: the grant comes at once (`none`) or when the payload's time is up
    /// (`optional`).
    fn sequence_grants(&mut self, mode: PayloadMode, now: UnixMillis) -> Vec<Grant> {
        if mode == PayloadMode::Optional {
            assert!(
                self.grants().is_empty(),
                "optional mode waits for the payload"
            );
            let deadline = self.tracker.poll_timeout().expect("a deadline");
            self.tracker
                .handle_timeout(deadline.max(now), &mut self.events);
        }
        self.grants()
    }
}

#[test]
fn unbound_payloads_from_before_a_restart_are_refused() {
    // A payload refused before a crash (here: by the X25519 cap) is remembered in memory only.
    // After the restart an unbound one stamped before it is refused; a bound one, and a fresh
    // unbound one, are accepted.
    let mut cfg = config(0, KnockProtocol::Udp, PayloadMode::Required);
    cfg.x25519_per_second = 1;
    let mut w = world_with(cfg.clone(), 1, default_policy);
    let seq = w.sequence(0, T0.counter(STEP));
    let first = w.payload(0, T0, World::request(T0));
    let refused = w.payload(0, T0.plus_millis(1), World::request(T0.plus_millis(1)));
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&first));
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&refused));
    assert_eq!(w.grants().len(), 1);
    assert_eq!(w.rejections(), vec![Reason::RateLimited]);
    let saved = w.tracker.replay_states().to_vec();
    let restart = T0.plus_millis(2000);
    // What the server does at start: its start time plus max_ahead_ms (here 30 s).
    let entries = vec![ClientEntry {
        name: "c".into(),
        keys: ClientKeys::for_server(&w.server, &w.clients[0].public_key(), None).unwrap(),
        policy: default_policy(0),
    }];
    w.tracker = Tracker::new(cfg, w.server.clone(), entries, saved, restart).unwrap();
    w.tracker.refuse_unbound_before(restart.plus_millis(30_000));
    w.send(
        restart,
        v4(66),
        Proto::Udp,
        seq.payload_port,
        Some(&refused),
    );
    assert!(w.grants().is_empty());
    assert_eq!(w.rejections(), vec![Reason::Replay]);
    let t = restart.plus_millis(1500);
    let bound = Request {
        address: Some(v4(2)),
        ..World::request(T0.plus_millis(5))
    };
    let d = w.payload(0, T0.plus_millis(5), bound);
    w.send(t, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1, "{:?}", w.rejections());
    // A fresh unbound one: refused until max_ahead_ms after the start, then accepted.
    let d = w.payload(0, t, World::request(t));
    w.send(
        t.plus_millis(1000),
        v4(2),
        Proto::Udp,
        seq.payload_port,
        Some(&d),
    );
    assert_eq!(w.rejections(), vec![Reason::Replay]);
    let later = restart.plus_millis(31_000);
    w.tracker.advance(later).unwrap();
    let seq = w.sequence(0, later.counter(STEP));
    let d = w.payload(0, later, World::request(later));
    w.send(later, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1, "{:?}", w.rejections());
}

#[test]
fn a_fence_refuses_every_payload_stamped_before_it_bound_or_not() {
    // After a machine crash with state_sync = "fence" the journal may have lost the accepted
    // payloads: the server refuses, for every client, everything stamped at or before the
    // fence it had made durable; a payload stamped after it is accepted.
    let cfg = config(0, KnockProtocol::Udp, PayloadMode::Required);
    let mut w = world_with(cfg.clone(), 1, default_policy);
    let seq = w.sequence(0, T0.counter(STEP));
    let bound = Request {
        address: Some(v4(2)),
        ..World::request(T0)
    };
    let captured = w.payload(0, T0, bound);
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&captured));
    assert_eq!(w.grants().len(), 1);
    // The restart lost the accepted payload (no replay state saved).
    let restart = T0.plus_millis(2000);
    let entries = vec![ClientEntry {
        name: "c".into(),
        keys: ClientKeys::for_server(&w.server, &w.clients[0].public_key(), None).unwrap(),
        policy: default_policy(0),
    }];
    w.tracker = Tracker::new(cfg, w.server.clone(), entries, Vec::new(), restart).unwrap();
    let fence = T0.plus_millis(10_000);
    w.tracker.refuse_all_before(fence);
    w.send(
        restart,
        v4(2),
        Proto::Udp,
        seq.payload_port,
        Some(&captured),
    );
    assert!(
        w.grants().is_empty(),
        "the captured bound payload is refused"
    );
    assert_eq!(w.rejections(), vec![Reason::Replay]);
    let at_fence = w.payload(
        0,
        fence,
        Request {
            address: Some(v4(2)),
            ..World::request(fence)
        },
    );
    w.send(
        restart,
        v4(2),
        Proto::Udp,
        seq.payload_port,
        Some(&at_fence),
    );
    assert!(w.grants().is_empty(), "stamped at the fence: refused");
    let after = fence.plus_millis(1);
    let fresh = w.payload(
        0,
        after,
        Request {
            address: Some(v4(2)),
            ..World::request(after)
        },
    );
    w.send(restart, v4(2), Proto::Udp, seq.payload_port, Some(&fresh));
    assert_eq!(w.grants().len(), 1, "{:?}", w.rejections());
}

#[test]
fn sequence_only_modes_grant_once_per_step() {
    for mode in [PayloadMode::None, PayloadMode::Optional] {
        let mut w = world(mode, 1);
        w.knock(0, T0, v4(2), &[0, 1, 2], None);
        let g = w.sequence_grants(mode, T0);
        assert_eq!(g.len(), 1, "{mode}");
        assert_eq!(g[0].services, default_policy(0).allow);
        assert_eq!(g[0].address, v4(2));
        assert!(!g[0].bound);
        // The same step again (a replay of the knocks) is refused.
        let t = T0.plus_millis(5100);
        w.knock(0, t, v4(3), &[0, 1, 2], None);
        if mode == PayloadMode::Optional {
            w.tracker.handle_timeout(t.plus_millis(5000), &mut w.events);
        }
        assert!(w.grants().is_empty());
        assert_eq!(w.rejections(), vec![Reason::Replay], "{mode}");
        // The next step works, and so does the previous one (inside the window, unused).
        let t = T0.plus_millis(u64::from(STEP) * 1000);
        w.tracker.advance(t).unwrap();
        w.knock(0, t, v4(2), &[0, 1, 2], None);
        assert_eq!(w.sequence_grants(mode, t).len(), 1, "{mode}");
    }
}

#[test]
fn a_step_of_another_length_is_another_sequence() {
    // Replay state is kept in time, and the step length is part of the derivation: after
    // `step_seconds` changes (10 s to 20 s), the client's next knock opens (it is not taken for
    // a replay of a higher counter of the old step), and old knocks are never valid again.
    let config_with = |step: u32| TrackerConfig {
        max_sources: 64,
        max_candidates: 8,
        ..TrackerConfig::new(
            KnockParams::new(step, 3, (10000, 19999), &[], KnockProtocol::Udp).unwrap(),
            1,
            5000,
            PayloadMode::None,
        )
    };
    let mut w = world_with(config_with(10), 1, default_policy);
    let now = T0.plus_millis(3000);
    let old = derive_sequence(&w.client_keys(0), &config_with(10).params, now.counter(10)).unwrap();
    for k in &old.knocks {
        w.send(now, v4(2), k.proto, k.port, None);
    }
    assert_eq!(w.grants().len(), 1);
    let saved = w.tracker.replay_states().to_vec();
    let entries = vec![ClientEntry {
        name: "c".into(),
        keys: ClientKeys::for_server(&w.server, &w.clients[0].public_key(), None).unwrap(),
        policy: default_policy(0),
    }];
    let later = now.plus_millis(1000);
    w.tracker = Tracker::new(config_with(20), w.server.clone(), entries, saved, later).unwrap();
    // The step-10 knock again: no sequence of the step-20 tables holds those ports as a whole.
    for k in &old.knocks {
        w.send(later, v4(66), k.proto, k.port, None);
    }
    assert!(w.grants().is_empty());
    // The client with the new step length gets in at once.
    let new = derive_sequence(
        &w.client_keys(0),
        &config_with(20).params,
        later.counter(20),
    )
    .unwrap();
    assert_ne!(new.knocks, old.knocks);
    for k in &new.knocks {
        w.send(later, v4(2), k.proto, k.port, None);
    }
    assert_eq!(w.grants().len(), 1, "{:?}", w.rejections());
    // The step-10 sequence whose counter equals the current step-20 counter is not valid
    // either: the step length is in the derivation.
    let same_counter = derive_sequence(
        &w.client_keys(0),
        &config_with(10).params,
        later.counter(20),
    )
    .unwrap();
    assert_ne!(same_counter.knocks, new.knocks);
}

#[test]
fn optional_mode_payload_can_name_another_address_and_a_subset() {
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Optional),
        1,
        |_| Policy {
            allow: vec![tcp22(), Service::new(Proto::Tcp, 443)],
            allow_other_ip: true,
            ..Policy::default()
        },
    );
    let other = v4(99);
    let req = Request {
        address: Some(other),
        services: vec![Service::new(Proto::Tcp, 443)],
        ..World::request(T0)
    };
    w.knock(0, T0, v4(2), &[0, 1, 2], Some(req));
    // One grant: the payload's. The sequence alone grants nothing once a payload came.
    let g = w.grants();
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0].address, other);
    assert!(g[0].bound);
    assert_eq!(g[0].services, vec![Service::new(Proto::Tcp, 443)]);
    w.tracker
        .handle_timeout(T0.plus_millis(60_000), &mut w.events);
    assert!(w.grants().is_empty());
    assert!(w.tracker.poll_timeout().is_none());
}

#[test]
fn policy_is_enforced() {
    let policy = |i: usize| Policy {
        allow: vec![tcp22()],
        sources: if i == 1 {
            vec!["198.18.1.0/24".parse().unwrap()]
        } else {
            vec![]
        },
        allow_other_ip: false,
        require_address: false,
        expires: (i == 2).then_some(T0),
        actions: Vec::new(),
    };
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        3,
        policy,
    );
    let cases: Vec<(usize, IpAddr, Request, Reason)> = vec![
        (1, v4(2), World::request(T0), Reason::SourceNotAllowed),
        (2, v4(2), World::request(T0), Reason::Expired),
        (
            0,
            v4(2),
            Request {
                address: Some(v4(3)),
                ..World::request(T0)
            },
            Reason::OtherIpNotAllowed(v4(3)),
        ),
        (
            0,
            v4(2),
            Request {
                services: vec![Service::new(Proto::Tcp, 23)],
                ..World::request(T0)
            },
            Reason::ServiceNotAllowed(Service::new(Proto::Tcp, 23)),
        ),
        (
            0,
            v4(2),
            Request {
                address: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                ..World::request(T0)
            },
            Reason::BadAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ),
        (
            0,
            v4(2),
            Request {
                address: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                ..World::request(T0)
            },
            Reason::BadAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ),
    ];
    for (i, (client, src, req, reason)) in cases.into_iter().enumerate() {
        let at = T0.plus_millis(i as u64 * 10);
        let req = Request {
            timestamp: at,
            ..req
        };
        w.knock(client, at, src, &[0, 1, 2], Some(req));
        assert!(w.grants().is_empty(), "case {i}");
        assert_eq!(w.rejections(), vec![reason], "case {i}");
    }
    // Client 1 from inside its prefix works.
    w.knock(
        1,
        T0.plus_millis(100),
        "198.18.1.7".parse().unwrap(),
        &[0, 1, 2],
        Some(World::request(T0.plus_millis(100))),
    );
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn full_scan_from_one_source_never_completes_and_others_still_knock() {
    let mut w = world(PayloadMode::None, 50);
    let scanner = v4(200);
    let counter = T0.counter(STEP);
    // A legitimate client knocks half-way through the scan, from another address.
    let legit = w.sequence(7, counter);
    for (i, port) in (10000u16..=19999).enumerate() {
        w.send(T0, scanner, Proto::Udp, port, Some(&[0u8; 8]));
        w.send(T0, scanner, Proto::Tcp, port, None);
        if i == 5000 {
            for k in &legit.knocks {
                w.send(T0, v4(7), k.proto, k.port, None);
            }
        }
    }
    let grants = w.grants();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].source, v4(7));
    assert!(
        w.tracker.stats().resets > 300,
        "{}",
        w.tracker.stats().resets
    );
    // A scan in random order, repeated, does not complete either.
    let mut x = 12345u32;
    for _ in 0..50_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let port = 10000 + (x >> 8) as u16 % 10000;
        w.send(T0, scanner, Proto::Udp, port, None);
    }
    assert!(w.grants().is_empty());
}

#[test]
fn a_scan_does_not_burn_the_sequence_for_the_client() {
    // The scanner hits the client's exact ports (e.g. it observed them), but not from the
    // client's address: the client still completes its own knock.
    let mut w = world(PayloadMode::Required, 1);
    let seq = w.sequence(0, T0.counter(STEP));
    for k in &seq.knocks {
        w.send(T0, v4(66), k.proto, k.port, None);
    }
    w.knock(0, T0, v4(2), &[0, 1, 2], Some(World::request(T0)));
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn a_stray_packet_after_the_sequence_does_not_discard_the_payload_slot() {
    // The attack: an observer spoofs one in-range packet in the client's name between its
    // last knock and its payload. The slot must survive it (and a datagram that fails the
    // gate), so the client's own payload opens and a replay of the capture opens nothing.
    let mut w = world(PayloadMode::Required, 2);
    let src = v4(2);
    let seq = w.sequence(0, T0.counter(STEP));
    let stray = (10000..20000)
        .find(|p| *p != 10022 && !seq.knocks.iter().any(|k| k.port == *p) && *p != seq.payload_port)
        .unwrap();
    w.knock(0, T0, src, &[0, 1, 2], None);
    w.send(T0, src, Proto::Udp, stray, None);
    w.send(T0, src, Proto::Tcp, stray + 1, None);
    // Garbage at the payload port: refused, the slot stays.
    let garbage = [9u8; DATAGRAM_LEN + 3];
    w.send(T0, src, Proto::Udp, seq.payload_port, Some(&garbage));
    assert_eq!(w.rejections(), vec![Reason::Payload(RejectReason::BadMac)]);
    let d = w.payload(0, T0, World::request(T0));
    w.send(
        T0.plus_millis(400),
        src,
        Proto::Udp,
        seq.payload_port,
        Some(&d),
    );
    let g = w.grants();
    assert_eq!(g.len(), 1, "{:?}", w.rejections());
    assert_eq!(g[0].source, src);
    // The observer replays the whole capture from its own address.
    let attacker = v4(66);
    w.knock(0, T0.plus_millis(900), attacker, &[0, 1, 2], None);
    w.send(
        T0.plus_millis(900),
        attacker,
        Proto::Udp,
        seq.payload_port,
        Some(&d),
    );
    assert!(w.grants().is_empty());
    assert_eq!(w.rejections(), vec![Reason::Replay]);
    assert_eq!(w.tracker.stats().x25519, 1);
}

#[test]
fn a_payload_whose_sequence_broke_is_burnt() {
    // The same observer spoofs in the middle of the sequence instead: the client's knock
    // fails, but its payload (which names no address) passed the gate and is remembered, so
    // the observer's replay of the capture from elsewhere is refused before any X25519.
    let mut w = world(PayloadMode::Required, 1);
    let src = v4(2);
    let seq = w.sequence(0, T0.counter(STEP));
    let stray = (10000..20000)
        .find(|p| *p != 10022 && !seq.knocks.iter().any(|k| k.port == *p) && *p != seq.payload_port)
        .unwrap();
    let d = w.payload(0, T0, World::request(T0));
    w.knock(0, T0, src, &[0, 1], None);
    w.send(T0, src, Proto::Udp, stray, None);
    w.knock(0, T0, src, &[2], None);
    w.send(T0, src, Proto::Udp, seq.payload_port, Some(&d));
    assert!(w.grants().is_empty());
    let attacker = v4(66);
    w.knock(0, T0.plus_millis(100), attacker, &[0, 1, 2], None);
    w.send(
        T0.plus_millis(100),
        attacker,
        Proto::Udp,
        seq.payload_port,
        Some(&d),
    );
    assert!(w.grants().is_empty());
    assert_eq!(w.rejections(), vec![Reason::Replay]);
    assert_eq!(w.tracker.stats().x25519, 0);
    // The client knocks again with a fresh payload and gets in.
    let t = T0.plus_millis(200);
    w.knock(0, t, src, &[0, 1, 2], Some(World::request(t)));
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn optional_mode_waits_for_the_payload_then_falls_back() {
    let mut w = world(PayloadMode::Optional, 1);
    let src = v4(2);
    w.knock(0, T0, src, &[0, 1, 2], None);
    assert!(w.grants().is_empty());
    w.events.clear();
    assert_eq!(w.tracker.poll_timeout(), Some(T0.plus_millis(5000)));
    w.tracker
        .handle_timeout(T0.plus_millis(4999), &mut w.events);
    assert!(w.grants().is_empty());
    w.tracker
        .handle_timeout(T0.plus_millis(5000), &mut w.events);
    let g = w.grants();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].services, default_policy(0).allow);
    assert_eq!(
        w.events,
        vec![Event::PayloadMissing {
            source: src,
            client: ClientId(0)
        }]
    );
    assert!(w.tracker.poll_timeout().is_none());
    assert_eq!(w.tracker.tracked_sources(), 0);
}

#[test]
fn required_mode_reports_a_missing_payload() {
    let mut w = world(PayloadMode::Required, 1);
    w.knock(0, T0, v4(2), &[0, 1, 2], None);
    w.events.clear();
    w.tracker
        .handle_timeout(T0.plus_millis(5000), &mut w.events);
    assert!(w.grants().is_empty());
    assert_eq!(w.tracker.stats().payloads_missing, 1);
    assert!(matches!(w.events[..], [Event::PayloadMissing { .. }]));
}

#[test]
fn a_captured_payload_replayed_from_many_sources_costs_one_x25519() {
    let mut w = world_with(
        config(0, KnockProtocol::Udp, PayloadMode::Required),
        3,
        default_policy,
    );
    let seq = w.sequence(1, T0.counter(STEP));
    let d = w.payload(1, T0, World::request(T0));
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1);
    for i in 0..5000u32 {
        let src = IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i));
        let mut replayed = d.clone();
        replayed.push(i as u8); // different padding: still the same datagram
        w.send(T0, src, Proto::Udp, seq.payload_port, Some(&replayed));
    }
    let stats = w.tracker.stats();
    assert_eq!(stats.x25519, 1);
    assert_eq!(stats.replays_cached, 5000);
    assert_eq!(w.rejections().len(), 5000);
    // Legitimate knocks still open.
    for n in 1..=5u64 {
        let at = T0.plus_millis(n * 10);
        let d = w.payload(1, at, World::request(at));
        w.send(at, v4(2), Proto::Udp, seq.payload_port, Some(&d));
        assert_eq!(w.grants().len(), 1);
    }
    // A remembered MAC is forgotten once its step has left the window.
    assert!(w.tracker.seen_macs() >= 6);
    w.tracker
        .handle_timeout(T0.plus_millis(3 * u64::from(STEP) * 1000), &mut w.events);
    assert_eq!(w.tracker.seen_macs(), 0);
}

#[test]
fn x25519_is_capped_per_client() {
    let mut cfg = config(0, KnockProtocol::Udp, PayloadMode::Required);
    cfg.x25519_per_second = 3;
    let mut w = world_with(cfg, 2, default_policy);
    let seq = w.sequence(0, T0.counter(STEP));
    for n in 0..5u64 {
        let at = T0.plus_millis(n);
        let d = w.payload(0, at, World::request(at));
        w.send(at, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    }
    assert_eq!(w.grants().len(), 3);
    assert_eq!(w.rejections(), vec![Reason::RateLimited; 2]);
    assert_eq!(w.tracker.stats().x25519, 3);
    // Another client is not affected; a third of a second later one more credit is earned.
    let seq1 = w.sequence(1, T0.counter(STEP));
    let d = w.payload(1, T0, World::request(T0));
    w.send(T0, v4(3), Proto::Udp, seq1.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1);
    let at = T0.plus_millis(340);
    let d = w.payload(0, at, World::request(at));
    w.send(at, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn timestamps_ahead_do_not_lock_the_client_out() {
    // Two devices share a key; one clock runs 25 s ahead. Both get in, in either order, and
    // neither payload can be used twice.
    let mut w = world(PayloadMode::Required, 1);
    let now = T0.plus_millis(2000);
    let ahead = now.plus_millis(25_000);
    let d_ahead = w.payload(0, ahead, World::request(ahead));
    let d_now = w.payload(0, now, World::request(now));
    let knocks = |w: &mut World, at: UnixMillis, src: IpAddr, d: &[u8]| {
        let seq = w.sequence(0, at.counter(STEP));
        for k in &seq.knocks {
            w.send(now, src, k.proto, k.port, None);
        }
        w.send(now, src, Proto::Udp, seq.payload_port, Some(d));
    };
    knocks(&mut w, ahead, v4(2), &d_ahead);
    knocks(&mut w, now, v4(3), &d_now);
    assert_eq!(w.grants().len(), 2, "{:?}", w.rejections());
    knocks(&mut w, now, v4(3), &d_now);
    assert_eq!(w.rejections(), vec![Reason::Replay]);
}

#[test]
fn timestamps_too_far_ahead_are_refused() {
    let mut w = world(PayloadMode::Required, 1);
    // T0 starts a step: the next step is inside the window, but its end is 59 s ahead, more
    // than max_ahead_ms (one step, 30 s).
    let far = T0.plus_millis(59_000);
    let seq = w.sequence(0, far.counter(STEP));
    for k in &seq.knocks {
        w.send(T0, v4(2), k.proto, k.port, None);
    }
    let d = w.payload(0, far, World::request(far));
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.rejections(), vec![Reason::TooFarAhead]);
    // 30 s ahead is allowed.
    let edge = T0.plus_millis(30_000);
    let d = w.payload(0, edge, World::request(edge));
    for k in &seq.knocks {
        w.send(T0, v4(3), k.proto, k.port, None);
    }
    w.send(T0, v4(3), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.grants().len(), 1, "{:?}", w.rejections());
}

#[test]
fn require_address_refuses_unbound_knocks() {
    for mode in [PayloadMode::Required, PayloadMode::Optional] {
        let mut w = world_with(config(3, KnockProtocol::Udp, mode), 1, |_| Policy {
            allow: vec![tcp22()],
            require_address: true,
            ..Policy::default()
        });
        w.knock(0, T0, v4(2), &[0, 1, 2], Some(World::request(T0)));
        assert!(w.grants().is_empty());
        assert_eq!(w.rejections(), vec![Reason::AddressRequired]);
        let t = T0.plus_millis(10);
        let bound = Request {
            address: Some(v4(2)),
            ..World::request(t)
        };
        w.knock(0, t, v4(2), &[0, 1, 2], Some(bound));
        let g = w.grants();
        assert_eq!(g.len(), 1);
        assert!(g[0].bound);
        if mode == PayloadMode::Optional {
            // The sequence alone names no address either.
            w.knock(0, T0.plus_millis(6000), v4(2), &[0, 1, 2], None);
            w.tracker
                .handle_timeout(T0.plus_millis(20_000), &mut w.events);
            assert!(w.grants().is_empty());
            assert!(w.rejections().contains(&Reason::AddressRequired));
        }
    }
}

#[test]
fn actions_are_refused_until_configured() {
    let mut w = world(PayloadMode::Required, 1);
    let req = Request {
        action: Some(crate::payload::Action::new("wake", "").unwrap()),
        ..World::request(T0)
    };
    w.knock(0, T0, v4(2), &[0, 1, 2], Some(req));
    assert!(w.grants().is_empty());
    assert_eq!(
        w.rejections(),
        vec![Reason::ActionNotAllowed(ActionName::new("wake").unwrap())]
    );
}

/// Client 0 may run `wake` (a MAC address) and `ping` (no argument); client 1 neither.
fn action_policy(i: usize) -> Policy {
    let actions = if i == 0 {
        vec![
            AllowedAction {
                name: "wake".into(),
                argument: "^[0-9a-f:]{17}$".parse().unwrap(),
            },
            AllowedAction {
                name: "ping".into(),
                argument: crate::action::ArgumentRule::None,
            },
        ]
    } else {
        Vec::new()
    };
    Policy {
        actions,
        ..default_policy(i)
    }
}

fn action_request(at: UnixMillis, name: &str, arg: &str, services: Vec<Service>) -> Request {
    Request {
        services,
        action: Some(crate::payload::Action::new(name, arg).unwrap()),
        ..World::request(at)
    }
}

#[test]
fn an_allowed_action_is_granted_alone_or_with_services() {
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        2,
        action_policy,
    );
    let mac = "00:11:22:33:44:55";
    w.knock(
        0,
        T0,
        v4(2),
        &[0, 1, 2],
        Some(action_request(T0, "wake", mac, vec![])),
    );
    let g = w.grants();
    assert_eq!(g.len(), 1, "{:?}", w.events);
    // The action alone: no service.
    assert!(g[0].services.is_empty());
    assert_eq!(
        g[0].action,
        Some(crate::payload::Action::new("wake", mac).unwrap())
    );
    assert_eq!(g[0].address, v4(2));
    // With a service: both.
    let t = T0.plus_millis(10);
    w.knock(
        0,
        t,
        v4(2),
        &[0, 1, 2],
        Some(action_request(t, "ping", "", vec![tcp22()])),
    );
    let g = w.grants();
    assert_eq!(g.len(), 1, "{:?}", w.events);
    assert_eq!(g[0].services, vec![tcp22()]);
    assert_eq!(
        g[0].action,
        Some(crate::payload::Action::new("ping", "").unwrap())
    );
    // A grant without an action carries none.
    let t = T0.plus_millis(20);
    w.knock(0, t, v4(2), &[0, 1, 2], Some(World::request(t)));
    let g = w.grants();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].action, None);
}

#[test]
fn actions_and_arguments_outside_the_policy_refuse_the_whole_knock() {
    let name = |n: &str| ActionName::new(n).unwrap();
    let cases: Vec<(usize, &str, &str, Vec<Service>, Reason)> = vec![
        // Another client's action.
        (
            1,
            "wake",
            "00:11:22:33:44:55",
            vec![],
            Reason::ActionNotAllowed(name("wake")),
        ),
        // An action nobody has.
        (
            0,
            "reboot",
            "",
            vec![],
            Reason::ActionNotAllowed(name("reboot")),
        ),
        // Arguments: breaking the pattern, missing, starting with `-`, one for `ping`.
        (
            0,
            "wake",
            "00:11:22:33:44:5",
            vec![],
            Reason::ArgumentNotAllowed(name("wake")),
        ),
        (
            0,
            "wake",
            "00:11:22:33:44:5G",
            vec![],
            Reason::ArgumentNotAllowed(name("wake")),
        ),
        (
            0,
            "wake",
            "",
            vec![],
            Reason::ArgumentNotAllowed(name("wake")),
        ),
        (
            0,
            "wake",
            "-0:11:22:33:44:55",
            vec![],
            Reason::ArgumentNotAllowed(name("wake")),
        ),
        (
            0,
            "ping",
            "x",
            vec![],
            Reason::ArgumentNotAllowed(name("ping")),
        ),
        // A refused action refuses the services that come with it.
        (
            0,
            "ping",
            "x",
            vec![tcp22()],
            Reason::ArgumentNotAllowed(name("ping")),
        ),
        (
            1,
            "ping",
            "",
            vec![tcp22()],
            Reason::ActionNotAllowed(name("ping")),
        ),
    ];
    for (i, (client, action, arg, services, reason)) in cases.into_iter().enumerate() {
        let mut w = world_with(
            config(3, KnockProtocol::Udp, PayloadMode::Required),
            2,
            action_policy,
        );
        let t = T0.plus_millis(i as u64);
        w.knock(
            client,
            t,
            v4(2),
            &[0, 1, 2],
            Some(action_request(t, action, arg, services)),
        );
        assert!(w.grants().is_empty(), "case {i}");
        assert_eq!(w.rejections(), vec![reason], "case {i}");
    }
    // A refused action's datagram is burnt: the same knock, replayed, is a replay.
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        2,
        action_policy,
    );
    let d = w.payload(
        1,
        T0,
        action_request(T0, "wake", "00:11:22:33:44:55", vec![]),
    );
    w.knock_raw(1, T0, v4(2), &[0, 1, 2], Some(d.clone()));
    assert_eq!(w.rejections(), vec![Reason::ActionNotAllowed(name("wake"))]);
    let t = T0.plus_millis(100);
    w.knock_raw(1, t, v4(2), &[0, 1, 2], Some(d));
    assert_eq!(w.rejections(), vec![Reason::Replay]);
}

#[test]
fn an_action_is_granted_once_and_never_for_a_replay() {
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        1,
        action_policy,
    );
    let d = w.payload(0, T0, action_request(T0, "ping", "", vec![]));
    w.knock_raw(0, T0, v4(2), &[0, 1, 2], Some(d.clone()));
    assert_eq!(w.grants().len(), 1);
    for (i, src) in [v4(2), v4(9)].into_iter().enumerate() {
        let t = T0.plus_millis(50 + i as u64);
        w.knock_raw(0, t, src, &[0, 1, 2], Some(d.clone()));
        assert!(w.grants().is_empty());
        assert_eq!(w.rejections(), vec![Reason::Replay]);
    }
}

/// The review's attack (actions-review.md, finding 1): an attacker on the client's network
/// drops knock A (`sesame run`), the user retries, knock B runs the action; later, still
/// inside the window, the attacker sends A. A must not run the action a second time: it is
/// refused by the action floor, and keeps being refused after a restart.
#[test]
fn a_held_back_action_knock_never_runs_after_a_later_one() {
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        1,
        action_policy,
    );
    // A: built at T0, every packet of it dropped on the way.
    let a = w.payload(0, T0, action_request(T0, "ping", "", vec![]));
    // A plain knock (no action), built before B and held back too.
    let plain_at = T0.plus_millis(4000);
    let plain = w.payload(0, plain_at, World::request(plain_at));
    // B: the user's retry, 8 s later, runs.
    let b_at = T0.plus_millis(8000);
    w.knock(
        0,
        b_at,
        v4(2),
        &[0, 1, 2],
        Some(action_request(b_at, "ping", "", vec![])),
    );
    let g = w.grants();
    assert_eq!(g.len(), 1, "{:?}", w.rejections());
    assert!(g[0].action.is_some());
    assert_eq!(
        g[0].replay.action_floor,
        Some(b_at),
        "the grant carries the action floor, so the daemon persists it before running"
    );
    // After the cooldown, still in the window, from the client's own address: refused.
    let late = T0.plus_millis(25_000);
    w.knock_raw(0, late, v4(2), &[0, 1, 2], Some(a.clone()));
    assert!(
        w.grants().is_empty(),
        "the held-back action knock ran again"
    );
    assert_eq!(w.rejections(), vec![Reason::Replay]);
    // A held-back knock without an action is a plain grant: still accepted (it opens what
    // the client may open, for the address it names, and runs nothing).
    w.knock_raw(0, late.plus_millis(10), v4(2), &[0, 1, 2], Some(plain));
    let g = w.grants();
    assert_eq!(g.len(), 1, "{:?}", w.rejections());
    assert_eq!(g[0].action, None);
    assert_eq!(
        g[0].replay.action_floor,
        Some(b_at),
        "a plain grant leaves it"
    );
    // The floor survives a restart (the daemon loads the persisted state into a new tracker),
    // and A, built with a fresh datagram of the same moment (not the same MAC), is refused.
    let saved = w.tracker.replay_states().to_vec();
    assert_eq!(saved[0].action_floor, Some(b_at));
    let entries = vec![ClientEntry {
        name: "c".into(),
        keys: ClientKeys::for_server(&w.server, &w.clients[0].public_key(), None).unwrap(),
        policy: action_policy(0),
    }];
    let restart = T0.plus_millis(26_000);
    w.tracker = Tracker::new(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        w.server.clone(),
        entries,
        saved,
        restart,
    )
    .unwrap();
    let same_moment = Request {
        random: [7; 16],
        ..action_request(T0.plus_millis(7999), "ping", "", vec![])
    };
    let d = w.payload(0, T0.plus_millis(7999), same_moment);
    w.knock_raw(0, restart, v4(2), &[0, 1, 2], Some(d));
    assert!(w.grants().is_empty());
    assert_eq!(w.rejections(), vec![Reason::Replay]);
    // A later action knock runs, and raises the floor.
    let c_at = T0.plus_millis(27_000);
    w.knock(
        0,
        c_at,
        v4(2),
        &[0, 1, 2],
        Some(action_request(c_at, "ping", "", vec![])),
    );
    let g = w.grants();
    assert_eq!(g.len(), 1, "{:?}", w.rejections());
    assert_eq!(g[0].replay.action_floor, Some(c_at));
}

/// Across a step turn: A stamped late in one step, B early in the next, A sent after B (its
/// step still in the skew window) is refused.
#[test]
fn a_held_back_action_knock_of_the_previous_step_is_refused() {
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        1,
        action_policy,
    );
    let a_at = T0.plus_millis(29_000);
    let a = w.payload(0, a_at, action_request(a_at, "ping", "", vec![]));
    let b_at = T0.plus_millis(31_000);
    w.tracker.advance(b_at).unwrap();
    w.knock(
        0,
        b_at,
        v4(2),
        &[0, 1, 2],
        Some(action_request(b_at, "ping", "", vec![])),
    );
    assert_eq!(w.grants().len(), 1, "{:?}", w.rejections());
    let late = T0.plus_millis(45_000);
    let seq = w.sequence(0, a_at.counter(STEP));
    for k in &seq.knocks {
        w.send(late, v4(2), k.proto, k.port, None);
    }
    w.send(late, v4(2), Proto::Udp, seq.payload_port, Some(&a));
    assert!(w.grants().is_empty(), "the held-back action knock ran");
    assert_eq!(w.rejections(), vec![Reason::Replay]);
}

/// What the action floor leaves alone: a held-back action knock still runs late, once, when
/// no later action knock was accepted (a later plain grant does not raise the floor, nor does
/// a refused action knock); then its MAC refuses it.
#[test]
fn a_held_back_action_knock_runs_late_once_when_no_later_one_ran() {
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        1,
        action_policy,
    );
    let a = w.payload(0, T0, action_request(T0, "ping", "", vec![]));
    // Later: a plain grant, and an action knock refused by the policy (an argument for ping).
    let t = T0.plus_millis(5000);
    w.knock(0, t, v4(2), &[0, 1, 2], Some(World::request(t)));
    assert_eq!(w.grants().len(), 1, "{:?}", w.rejections());
    let t = T0.plus_millis(6000);
    w.knock(
        0,
        t,
        v4(2),
        &[0, 1, 2],
        Some(action_request(t, "ping", "x", vec![])),
    );
    assert!(w.grants().is_empty());
    assert_eq!(
        w.rejections(),
        vec![Reason::ArgumentNotAllowed(ActionName::new("ping").unwrap())]
    );
    assert_eq!(w.tracker.replay_states()[0].action_floor, None);
    let late = T0.plus_millis(20_000);
    w.knock_raw(0, late, v4(2), &[0, 1, 2], Some(a.clone()));
    let g = w.grants();
    assert_eq!(g.len(), 1, "{:?}", w.rejections());
    assert!(g[0].action.is_some());
    assert_eq!(g[0].replay.action_floor, Some(T0));
    w.knock_raw(0, late.plus_millis(10), v4(2), &[0, 1, 2], Some(a));
    assert!(w.grants().is_empty());
    assert_eq!(w.rejections(), vec![Reason::Replay]);
}

#[test]
fn the_action_floor_refuses_action_payloads_at_or_before_it_and_is_never_pruned() {
    let mut r = ReplayState::default();
    assert!(!r.action_replayed(UnixMillis(0)));
    r.record_action(UnixMillis(5000));
    r.record_action(UnixMillis(3000));
    assert_eq!(r.action_floor, Some(UnixMillis(5000)), "it only rises");
    assert!(r.action_replayed(UnixMillis(5000)));
    assert!(r.action_replayed(UnixMillis(4999)));
    assert!(!r.action_replayed(UnixMillis(5001)));
    assert!(!r.is_empty());
    // Payloads without an action only see the other rules.
    assert!(!r.payload_replayed(UnixMillis(4000), &[1; MAC_LEN]));
    r.prune(UnixMillis(1_000_000));
    assert_eq!(r.action_floor, Some(UnixMillis(5000)));
    assert_eq!(r.floor, None, "the action floor does not raise the floor");
}

#[test]
fn an_action_bound_to_another_address_is_refused() {
    let mut w = world_with(
        config(3, KnockProtocol::Udp, PayloadMode::Required),
        1,
        action_policy,
    );
    let req = Request {
        address: Some(v4(9)),
        ..action_request(T0, "ping", "", vec![])
    };
    w.knock(0, T0, v4(2), &[0, 1, 2], Some(req));
    assert!(w.grants().is_empty());
    assert_eq!(w.rejections(), vec![Reason::OtherIpNotAllowed(v4(9))]);
}

#[test]
fn replay_state_prunes_what_left_the_window_and_raises_its_floor() {
    let mut r = ReplayState::default();
    let mac = |b: u8| [b; MAC_LEN];
    for (i, t) in [1000u64, 5000, 3000].into_iter().enumerate() {
        r.record_payload(AcceptedPayload {
            timestamp: UnixMillis(t),
            mac: mac(i as u8),
        });
    }
    r.record_step(UsedStep {
        step_seconds: 1,
        counter: 2,
    });
    assert!(r.payload_replayed(UnixMillis(9999), &mac(1)));
    assert!(!r.payload_replayed(UnixMillis(2), &mac(9)));
    r.prune(UnixMillis(3001));
    assert_eq!(r.floor, Some(UnixMillis(3000)));
    assert_eq!(r.accepted.len(), 1);
    assert!(r.steps.is_empty());
    assert!(r.payload_replayed(UnixMillis(3000), &mac(9)));
    assert!(!r.payload_replayed(UnixMillis(3001), &mac(9)));
    assert!(r.step_used(UsedStep {
        step_seconds: 1,
        counter: 2
    }));
    // The caps drop the oldest and raise the floor to it.
    let mut r = ReplayState::default();
    for t in 0..=MAX_ACCEPTED as u64 {
        r.record_payload(AcceptedPayload {
            timestamp: UnixMillis(100 + t),
            mac: mac(t as u8),
        });
    }
    assert_eq!(r.accepted.len(), MAX_ACCEPTED);
    assert_eq!(r.floor, Some(UnixMillis(100)));
}

#[test]
fn wrong_transport_is_not_a_knock() {
    let mut w = world_with(
        config(3, KnockProtocol::Tcp, PayloadMode::None),
        1,
        default_policy,
    );
    let seq = w.sequence(0, T0.counter(STEP));
    for k in &seq.knocks {
        assert_eq!(k.proto, Proto::Tcp);
        w.send(T0, v4(2), Proto::Udp, k.port, None);
    }
    assert!(w.grants().is_empty());
    for k in &seq.knocks {
        w.send(T0, v4(2), Proto::Tcp, k.port, None);
    }
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn mixed_protocol_sequences_open() {
    let mut w = world_with(
        config(6, KnockProtocol::Mixed, PayloadMode::Required),
        5,
        default_policy,
    );
    w.knock(3, T0, v4(2), &[5, 4, 3, 2, 1, 0], Some(World::request(T0)));
    assert_eq!(w.grants().len(), 1);
}

#[test]
fn skew_window_and_step_advance() {
    let mut w = world(PayloadMode::None, 1);
    let counter = T0.counter(STEP);
    // A client one step ahead or behind is accepted.
    for (i, c) in [counter - 1, counter + 1].into_iter().enumerate() {
        let seq = w.sequence(0, c);
        let _ = i;
        for k in &seq.knocks {
            w.send(T0, v4(2), k.proto, k.port, None);
        }
    }
    // The first grant is for counter-1, the second for counter+1 (newer counter).
    assert_eq!(w.grants().len(), 2);
    // Two steps off is outside the window.
    let seq = w.sequence(0, counter + 2);
    for k in &seq.knocks {
        w.send(T0, v4(3), k.proto, k.port, None);
    }
    assert!(w.grants().is_empty());
    // ... until the clock reaches it.
    let t = T0.plus_millis(2 * u64::from(STEP) * 1000);
    w.tracker.advance(t).unwrap();
    for k in &seq.knocks {
        w.send(t, v4(3), k.proto, k.port, None);
    }
    assert_eq!(w.grants().len(), 1);
    // Tables never pile up.
    assert!(w.tracker.tables.len() <= 4);
}

#[test]
fn single_packet_mode() {
    let mut w = world_with(
        config(0, KnockProtocol::Udp, PayloadMode::Required),
        20,
        default_policy,
    );
    let counter = T0.counter(STEP);
    let seq = w.sequence(4, counter);
    assert!(seq.knocks.is_empty());
    let d = w.payload(4, T0, World::request(T0));
    assert_eq!(
        w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&d)),
        Outcome::Payload
    );
    let g = w.grants();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].client, ClientId(4));
    // Garbage of the right size at the port is stopped by the gate: no X25519.
    let before = w.tracker.stats().x25519;
    for i in 0..100u8 {
        let garbage = [i; DATAGRAM_LEN];
        w.send(T0, v4(3), Proto::Udp, seq.payload_port, Some(&garbage));
    }
    assert_eq!(w.tracker.stats().x25519, before);
    assert_eq!(w.rejections().len(), 100);
    assert!(
        w.tracker.tracked_sources() == 0,
        "single-packet mode keeps no per-source state"
    );
    // The same payload again is a replay.
    w.send(T0, v4(2), Proto::Udp, seq.payload_port, Some(&d));
    assert_eq!(w.rejections(), vec![Reason::Replay]);
}

#[test]
fn garbage_after_a_completed_sequence_costs_no_x25519() {
    let mut w = world(PayloadMode::Required, 3);
    let seq = w.sequence(0, T0.counter(STEP));
    w.knock(0, T0, v4(2), &[0, 1, 2], None);
    w.send(
        T0,
        v4(2),
        Proto::Udp,
        seq.payload_port,
        Some(&[7u8; DATAGRAM_LEN]),
    );
    assert_eq!(w.rejections(), vec![Reason::Payload(RejectReason::BadMac)]);
    assert_eq!(w.tracker.stats().x25519, 0);
}

#[test]
fn state_is_bounded_under_a_spoofed_flood() {
    let mut cfg = config(3, KnockProtocol::Udp, PayloadMode::Required);
    cfg.max_sources = 256;
    let mut w = world_with(cfg, 200, default_policy);
    let mut x = 7u64;
    for i in 0..200_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let src = IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            (x >> 16) as u16,
            x as u16,
        ));
        let port = 10000 + (x >> 32) as u16 % 10000;
        let d = [0u8; DATAGRAM_LEN];
        w.send(
            T0,
            src,
            Proto::Udp,
            port,
            if i % 2 == 0 { Some(&d) } else { None },
        );
        // A legitimate client knocks now and then, and always gets in.
        if i % 50_000 == 25_000 {
            let at = T0.plus_millis(i / 1000);
            w.knock(9, at, v4(9), &[0, 1, 2], Some(World::request(at)));
            let g = w.grants();
            assert_eq!(
                g.len(),
                1,
                "legitimate knock during the flood at packet {i}"
            );
        }
        w.events.clear();
    }
    assert!(w.tracker.tracked_sources() <= 256);
    assert!(w.tracker.stats().sources_evicted > 0);
    assert_eq!(w.tracker.stats().x25519, 4);
}

#[test]
fn mapped_ipv4_is_the_same_source() {
    let mut w = world(PayloadMode::None, 1);
    let seq = w.sequence(0, T0.counter(STEP));
    let mapped: IpAddr = "::ffff:198.18.0.2".parse().unwrap();
    w.send(T0, mapped, Proto::Udp, seq.knocks[0].port, None);
    w.send(T0, v4(2), Proto::Udp, seq.knocks[1].port, None);
    w.send(T0, mapped, Proto::Udp, seq.knocks[2].port, None);
    let g = w.grants();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].source, v4(2));
}

#[test]
fn excluded_and_out_of_range_ports_are_ignored() {
    let mut w = world(PayloadMode::None, 1);
    let seq = w.sequence(0, T0.counter(STEP));
    w.send(T0, v4(2), Proto::Udp, seq.knocks[0].port, None);
    assert_eq!(w.send(T0, v4(2), Proto::Tcp, 22, None), Outcome::OutOfRange);
    assert_eq!(
        w.send(T0, v4(2), Proto::Udp, 10022, None),
        Outcome::OutOfRange
    );
    w.send(T0, v4(2), Proto::Udp, seq.knocks[1].port, None);
    w.send(T0, v4(2), Proto::Udp, seq.knocks[2].port, None);
    assert_eq!(
        w.grants().len(),
        1,
        "traffic outside the range does not reset progress"
    );
}

#[test]
fn a_step_table_that_left_the_window_never_completes_a_sequence() {
    // Found by fuzzing (`tracker_stateful`): a sequence started for counter c - 1 used to
    // complete in step c + 1, before the next `advance`, and be granted counter c - 1, which
    // is outside the window c..=c + 2 by then.
    for mode in [PayloadMode::None, PayloadMode::Optional] {
        let mut w = world(mode, 1);
        let counter = T0.counter(STEP);
        let seq = w.sequence(0, counter - 1);
        for k in &seq.knocks[..2] {
            w.send(T0, v4(2), k.proto, k.port, None);
        }
        // The next step, and no `advance` in between (the daemon runs it only every 500 ms).
        let t = UnixMillis((counter + 1) * u64::from(STEP) * 1000);
        let window = w.tracker.config.window().counters(t);
        assert!(counter - 1 < *window.start(), "{window:?}");
        let last = seq.knocks[2];
        w.send(t, v4(2), last.proto, last.port, None);
        let grants = w.grants();
        assert!(
            grants.iter().all(|g| window.contains(&g.counter)),
            "{mode}: granted outside the window {window:?}: {grants:?}"
        );
        assert!(grants.is_empty(), "{mode}: {grants:?}");
        assert!(
            w.tracker
                .tables
                .iter()
                .all(|t| t.counter >= *window.start())
        );
        // The client's current sequence still opens.
        w.knock(0, t, v4(2), &[0, 1, 2], None);
        let grants = w.sequence_grants(mode, t);
        assert_eq!(grants.len(), 1, "{mode}");
        assert_eq!(grants[0].counter, counter + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// An independent security review of protocol 2 found these attacks; each test asserts the secure
// behaviour and failed on the code it reviewed.
mod review {
    use super::*;

    fn stray_for(seq: &Sequence) -> u16 {
        (10000..20000)
            .find(|p| {
                *p != 10022 && !seq.knocks.iter().any(|k| k.port == *p) && *p != seq.payload_port
            })
            .unwrap()
    }

    fn restart(w: &mut World, cfg: TrackerConfig, at: UnixMillis) {
        let saved = w.tracker.replay_states().to_vec();
        let entries = (0..w.clients.len())
            .map(|i| ClientEntry {
                name: format!("client{i}"),
                keys: ClientKeys::for_server(&w.server, &w.clients[i].public_key(), None).unwrap(),
                policy: default_policy(i),
            })
            .collect();
        w.tracker = Tracker::new(cfg, w.server.clone(), entries, saved, at).unwrap();
    }

    /// `optional` mode: the observer spoofs ONE in-range packet in the client's name between
    /// its knocks (no drop, no delay, no race), so the client's sequence never completes and
    /// its bound payload is burnt on arrival. The observer replays the client's knocks from its
    /// own address, sends no payload, and the sequence-only fallback opens every allowed
    /// service for the observer's address.
    #[test]
    fn review_optional_mode_one_spoofed_stray_hands_a_bound_clients_step_to_the_observer() {
        let mut w = world(PayloadMode::Optional, 1);
        let client = v4(2);
        let observer = v4(66);
        let seq = w.sequence(0, T0.counter(STEP));
        w.knock(0, T0, client, &[0, 1], None);
        w.send(T0, client, Proto::Udp, stray_for(&seq), None); // spoofed as the client
        w.knock(0, T0, client, &[2], None);
        let bound = Request {
            address: Some(client),
            ..World::request(T0)
        };
        let d = w.payload(0, T0, bound);
        w.send(T0, client, Proto::Udp, seq.payload_port, Some(&d));
        assert!(w.grants().is_empty());
        // The observer's copy of the knocks, from its own address, a few ms later.
        let t = T0.plus_millis(20);
        w.knock(0, t, observer, &[0, 1, 2], None);
        let deadline = w.tracker.poll_timeout().expect("a deadline");
        w.tracker.handle_timeout(deadline, &mut w.events);
        let g = w.grants();
        assert!(
            g.iter().all(|g| g.address != observer),
            "the observer got a lease for its own address from a bound client's knock: {g:?}"
        );
    }

    /// A crash loses the gate MACs of refused datagrams; the restart refuses unbound payloads
    /// stamped before start + max_ahead_ms, claiming that covers every knock made before the
    /// crash. A payload refused as `too_far_ahead` is by definition stamped later than that.
    #[test]
    fn review_an_unbound_too_far_ahead_payload_is_a_bearer_token_after_a_crash() {
        let cfg = config(3, KnockProtocol::Udp, PayloadMode::Required);
        let mut w = world_with(cfg.clone(), 1, default_policy);
        let client = v4(2);
        let observer = v4(66);
        // The client's clock runs 50 s ahead: its step is the next one (inside the window), its
        // timestamp more than max_ahead_ms (30 s) ahead.
        let now = T0.plus_millis(1000);
        let ahead = now.plus_millis(50_000);
        assert_eq!(ahead.counter(STEP), T0.counter(STEP) + 1);
        let seq = w.sequence(0, ahead.counter(STEP));
        let d = w.payload(0, ahead, World::request(ahead));
        for k in &seq.knocks {
            w.send(now, client, k.proto, k.port, None);
        }
        w.send(now, client, Proto::Udp, seq.payload_port, Some(&d));
        assert_eq!(w.rejections(), vec![Reason::TooFarAhead]);
        // sesamed crashes and is restarted (systemd Restart=) 2 s later; what the daemon does.
        let start = now.plus_millis(2000);
        restart(&mut w, cfg.clone(), start);
        w.tracker.after_crash(start, &[]);
        // 25 s after the capture, the observer replays it from its own address.
        let later = now.plus_millis(25_000);
        for k in &seq.knocks {
            w.send(later, observer, k.proto, k.port, None);
        }
        w.send(later, observer, Proto::Udp, seq.payload_port, Some(&d));
        let g = w.grants();
        assert!(
            g.is_empty(),
            "a captured unbound payload opened for the observer after a crash: {g:?}"
        );
    }

    /// A client whose STUN answer is forged by the observer on its Wi-Fi binds every knock to
    /// the observer's address. Its plain knocks fail (other_ip_not_allowed: locked out while
    /// the observer answers its STUN queries); `--wait`/`proxy` then send forward clock probes
    /// because the knock is "bound"; the +2-step probe is outside the window when sent, so it
    /// is not burnt, and replayed later from the observer's address it opens that address.
    #[test]
    fn review_forward_probe_bound_to_a_forged_stun_address_opens_it_for_the_observer() {
        let mut w = world(PayloadMode::Required, 1);
        let client = v4(2);
        let observer = v4(66);
        let bound = |at: UnixMillis| Request {
            address: Some(observer),
            ..World::request(at)
        };
        w.knock(0, T0, client, &[0, 1, 2], Some(bound(T0)));
        assert_eq!(w.rejections(), vec![Reason::OtherIpNotAllowed(observer)]);
        // 15 s later (after the retries), the +2-step probe (+60 s), bound like every knock.
        let probe_at = T0.plus_millis(15_000);
        let shifted = probe_at.plus_millis(2 * u64::from(STEP) * 1000);
        let seq = w.sequence(0, shifted.counter(STEP));
        let d = w.payload(0, shifted, bound(shifted));
        for k in &seq.knocks {
            w.send(probe_at, client, k.proto, k.port, None);
        }
        w.send(probe_at, client, Proto::Udp, seq.payload_port, Some(&d));
        assert!(w.grants().is_empty());
        // The probe is for the step after the window: gated and burnt on arrival.
        assert_eq!(
            w.tracker.stats().gate_passed,
            2,
            "the probe was burnt on arrival"
        );
        // 35 s later the observer replays the captured probe from its own address.
        let later = probe_at.plus_millis(35_000);
        for k in &seq.knocks {
            w.send(later, observer, k.proto, k.port, None);
        }
        w.send(later, observer, Proto::Udp, seq.payload_port, Some(&d));
        let g = w.grants();
        assert!(
            g.is_empty(),
            "the observer opened its own address with the client's probe: {g:?}"
        );
    }

    /// Any one client key (an insider, or a stolen key of a client allowed nothing) fills the
    /// server-wide seen cache: gate-passing datagrams need only k_mac (no X25519, no valid
    /// AEAD), and a datagram that passed the gate is remembered before any rate cap. Once the
    /// cache is full, other clients' datagrams are no longer remembered: a payload whose
    /// sequence was broken is no longer burnt, and the observer who broke it with one spoofed
    /// stray uses it from its own address (here an unbound knock: the default behind a NAT
    /// without STUN).
    #[test]
    fn review_one_client_key_fills_the_seen_cache_and_disables_burning_for_everyone() {
        let mut w = world(PayloadMode::Required, 2);
        let insider = 0;
        let victim = 1;
        let counter = T0.counter(STEP);
        let insider_keys = w.client_keys(insider);
        let insider_port = w.sequence(insider, counter).payload_port;
        let mut d = [0u8; DATAGRAM_LEN];
        for i in 0..u64::from(MAX_SEEN_PER_CLIENT) + 100 {
            d[..8].copy_from_slice(&i.to_le_bytes());
            crate::payload::remac(&insider_keys, counter, &mut d);
            w.tracker.packet(
                T0,
                Incoming {
                    source: v4(9),
                    proto: Proto::Udp,
                    port: insider_port,
                    payload: Some(&d),
                },
                &mut w.events,
            );
            if w.events.len() > 1024 {
                w.events.clear();
            }
        }
        w.events.clear();
        assert_eq!(w.tracker.seen_macs(), MAX_SEEN_PER_CLIENT as usize);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        for l in status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        {
            eprintln!("after filling the seen cache: {l}");
        }
        // The victim knocks (unbound); the observer spoofs one stray in its name mid-sequence.
        let client = v4(2);
        let observer = v4(66);
        let t = T0.plus_millis(100);
        let seq = w.sequence(victim, counter);
        let p = w.payload(victim, t, World::request(t));
        w.knock(victim, t, client, &[0, 1], None);
        w.send(t, client, Proto::Udp, stray_for(&seq), None);
        w.knock(victim, t, client, &[2], None);
        w.send(t, client, Proto::Udp, seq.payload_port, Some(&p));
        assert!(w.grants().is_empty());
        // The observer replays knocks and payload from its own address.
        let later = t.plus_millis(50);
        w.knock(victim, later, observer, &[0, 1, 2], None);
        w.send(later, observer, Proto::Udp, seq.payload_port, Some(&p));
        let g = w.grants();
        assert!(
            g.is_empty(),
            "a payload whose sequence broke was not burnt (seen cache full): {g:?}"
        );
    }

    /// The same full cache, single-packet mode: the observer replays a victim's captured
    /// payload (accepted after the cache filled) from spoofed sources; each copy now costs an
    /// X25519 charged to the victim's cap, so the victim's own fresh knocks are `rate_limited`
    /// for as long as ~100 copies a second arrive.
    #[test]
    fn review_with_the_seen_cache_full_replays_drain_the_victims_x25519_cap() {
        let mut w = world_with(
            config(0, KnockProtocol::Udp, PayloadMode::Required),
            2,
            default_policy,
        );
        let (insider, victim) = (0, 1);
        let counter = T0.counter(STEP);
        let insider_keys = w.client_keys(insider);
        let insider_port = w.sequence(insider, counter).payload_port;
        let mut d = [0u8; DATAGRAM_LEN];
        for i in 0..u64::from(MAX_SEEN_PER_CLIENT) + 100 {
            d[..8].copy_from_slice(&i.to_le_bytes());
            crate::payload::remac(&insider_keys, counter, &mut d);
            w.tracker.packet(
                T0,
                Incoming {
                    source: v4(9),
                    proto: Proto::Udp,
                    port: insider_port,
                    payload: Some(&d),
                },
                &mut w.events,
            );
            if w.events.len() > 1024 {
                w.events.clear();
            }
        }
        w.events.clear();
        assert_eq!(w.tracker.seen_macs(), MAX_SEEN_PER_CLIENT as usize);
        let port = w.sequence(victim, counter).payload_port;
        let t = T0.plus_millis(10);
        let captured = w.payload(victim, t, World::request(t));
        w.send(t, v4(2), Proto::Udp, port, Some(&captured));
        assert_eq!(w.grants().len(), 1);
        let x = w.tracker.stats().x25519;
        for i in 0..150u32 {
            let src = IpAddr::V4(Ipv4Addr::from(0xc612_1000 + i));
            w.send(t.plus_millis(1), src, Proto::Udp, port, Some(&captured));
        }
        w.events.clear();
        let fresh_at = t.plus_millis(2);
        let fresh = w.payload(victim, fresh_at, World::request(fresh_at));
        w.send(fresh_at, v4(2), Proto::Udp, port, Some(&fresh));
        let spent = w.tracker.stats().x25519 - x;
        assert_eq!(
            w.grants().len(),
            1,
            "the victim is rate-limited ({:?}) after {spent} X25519s spent on replays of one datagram",
            w.rejections()
        );
    }

    /// `optional` mode, no injection at all: any refusal of the client's own payload after
    /// the gate (here `too_far_ahead`: its clock runs 50 s ahead; likewise
    /// `other_ip_not_allowed` for a wrong binding, `rate_limited`, `service_not_allowed`)
    /// consumes the client's slot without recording the step, and the observer's copy of the
    /// knocks from its own address gets the sequence-only fallback.
    #[test]
    fn review_optional_mode_a_refused_payload_hands_the_step_to_whoever_copied_the_knocks() {
        let mut w = world(PayloadMode::Optional, 1);
        let client = v4(2);
        let observer = v4(66);
        let now = T0.plus_millis(1000);
        let ahead = now.plus_millis(50_000);
        let seq = w.sequence(0, ahead.counter(STEP));
        let bound = Request {
            address: Some(client),
            ..World::request(ahead)
        };
        let d = w.payload(0, ahead, bound);
        for k in &seq.knocks {
            w.send(now, client, k.proto, k.port, None);
        }
        w.send(now, client, Proto::Udp, seq.payload_port, Some(&d));
        assert_eq!(w.rejections(), vec![Reason::TooFarAhead]);
        let t = now.plus_millis(20);
        for k in &seq.knocks {
            w.send(t, observer, k.proto, k.port, None);
        }
        while let Some(deadline) = w.tracker.poll_timeout() {
            w.tracker.handle_timeout(deadline, &mut w.events);
        }
        let g = w.grants();
        assert!(
            g.iter().all(|g| g.address != observer),
            "the observer got the step of a client whose bound payload was refused: {g:?}"
        );
    }
}

mod live_ports {
    use super::*;
    use proptest::prelude::*;

    /// Every port of every client's sequence (and payload port) at every counter of the window
    /// at every `t` from `published` to the end of the step after `published`'s is in the set
    /// computed at `published`; the set holds nothing else than ports of the covered counters.
    fn check(
        length: u64,
        mode: PayloadMode,
        skew: u32,
        step: u32,
        n: usize,
        published: u64,
        later: u64,
    ) {
        let params =
            KnockParams::new(step, length, (10000, 10999), &[10022], KnockProtocol::Udp).unwrap();
        let config = TrackerConfig {
            max_sources: 64,
            ..TrackerConfig::new(params.clone(), skew, 5000, mode)
        };
        let mut w = world_with(config, n, default_policy);
        let now = T0.plus_millis(published);
        w.tracker.advance(now).unwrap();
        let live = w.tracker.live_ports(now).unwrap();
        assert!(
            live.ports.windows(2).all(|p| p[0] < p[1]),
            "sorted, each once"
        );
        assert!(
            live.ports
                .iter()
                .all(|&p| params.in_range(p) && !params.is_excluded(p))
        );
        // The end of the step after now's step.
        let step_ms = u64::from(step) * 1000;
        let horizon = (now.0 / step_ms + 2) * step_ms;
        let t = UnixMillis(now.0 + later % (horizon - now.0));
        let window = TimeWindow {
            step_seconds: step,
            skew_steps: skew,
        };
        let mut expected = std::collections::BTreeSet::new();
        for counter in window.counters(t) {
            for i in 0..n {
                let seq = w.sequence(i, counter);
                for k in &seq.knocks {
                    assert!(
                        live.ports.binary_search(&k.port).is_ok(),
                        "knock port {} of client {i} at counter {counter} (t = now + {} ms) missing",
                        k.port,
                        t.since(now)
                    );
                }
                if mode != PayloadMode::None || length == 0 {
                    assert!(
                        live.ports.binary_search(&seq.payload_port).is_ok(),
                        "payload port missing"
                    );
                }
            }
        }
        for counter in live.counters.clone() {
            for i in 0..n {
                let seq = w.sequence(i, counter);
                expected.extend(seq.knocks.iter().map(|k| k.port));
                if mode != PayloadMode::None || length == 0 {
                    expected.insert(seq.payload_port);
                }
            }
        }
        assert_eq!(
            live.ports,
            expected.into_iter().collect::<Vec<_>>(),
            "exactly the covered counters' ports"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_set_covers_every_valid_knock_until_the_next_step_ends(
            length in prop_oneof![Just(0u64), 2u64..=5],
            mode in prop_oneof![Just(PayloadMode::Required), Just(PayloadMode::Optional), Just(PayloadMode::None)],
            skew in 0u32..=2,
            step in 1u32..=90,
            n in 1usize..=5,
            published in 0u64..200_000,
            later in any::<u64>(),
        ) {
            prop_assume!(!(length == 0 && mode == PayloadMode::None));
            check(length, mode, skew, step, n, published, later);
        }
    }

    #[test]
    fn a_step_turn_keeps_the_ports_of_both_windows_until_the_set_is_replaced() {
        let w = world(PayloadMode::Required, 3);
        // Just before a turn and just after it, before the tracker advances.
        let turn = UnixMillis((T0.0 / 30_000 + 1) * 30_000);
        let before = w.tracker.live_ports(turn.offset_millis(-1)).unwrap();
        let old = w.tracker.live_counters(turn.offset_millis(-1));
        assert_eq!(before.counters, old);
        // The set published before the turn holds the new window's counters.
        let new_window = TimeWindow {
            step_seconds: STEP,
            skew_steps: 1,
        }
        .counters(turn);
        assert!(old.contains(new_window.start()) && old.contains(new_window.end()));
        // The tracker's set after the turn moves on by one counter.
        let mut w = w;
        w.tracker.advance(turn).unwrap();
        let after = w.tracker.live_ports(turn).unwrap();
        assert_eq!(*after.counters.start(), old.start() + 1);
        assert_eq!(*after.counters.end(), old.end() + 1);
        // And the knock of the new step's counter is admitted by both.
        let seq = w.sequence(1, turn.counter(STEP));
        for k in &seq.knocks {
            assert!(before.ports.contains(&k.port) && after.ports.contains(&k.port));
        }
    }

    #[test]
    fn a_missing_table_means_no_set() {
        let w = world(PayloadMode::Required, 2);
        // Two steps on, without advance: the step-ahead table is not there.
        assert!(w.tracker.live_ports(T0.plus_millis(60_000)).is_none());
        assert!(w.tracker.live_ports(T0).is_some());
    }
}

/// A server that builds the step-ahead table elsewhere: `retire` at the turn drops the old
/// table and builds nothing; knocks of the new window still work without any table being
/// built on the packet path, and the table installed later completes the live set.
#[test]
fn retire_at_a_turn_then_install_the_step_ahead_table() {
    let mut w = world(PayloadMode::Required, 3);
    let turn = UnixMillis((T0.0 / 30_000 + 1) * 30_000);
    w.tracker.retire(turn);
    let ahead = *w.tracker.live_counters(turn).end();
    assert_eq!(w.tracker.missing_counters(turn), vec![ahead]);
    assert!(
        w.tracker.live_ports(turn).is_none(),
        "the step ahead is not there yet"
    );
    // A knock of the new step is granted, and the packet path built nothing.
    let src = v4(9);
    let at = turn.plus_millis(100);
    let req = World::request(at);
    w.knock(1, at, src, &[0, 1, 2], Some(req));
    assert!(
        w.events.iter().any(|e| matches!(e, Event::Granted(_))),
        "{:?}",
        w.events
    );
    assert_eq!(w.tracker.missing_counters(at), vec![ahead]);
    let clients = w.tracker.clients_shared();
    let config = w.tracker.config().clone();
    let table = StepTable::build(&clients, &config.params, config.payload, ahead).unwrap();
    w.tracker.install(table, at);
    assert!(w.tracker.missing_counters(at).is_empty());
    assert!(w.tracker.live_ports(at).is_some());
}
