//! A reload that widens the acceptance window (a larger `skew_steps`, a longer payload
//! timeout) must remember the gate MACs of refused or burnt datagrams for as long as the new
//! window admits their step. `Tracker::inherit_seen` copied the old expiry: once it passed, the
//! new window still admitted the step, the MAC was forgotten, and a captured unbound knock that
//! sesamed had refused (here: too far ahead; the same holds for a payload burnt because its
//! sequence was broken) was granted to whoever replayed it.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};

use sesame_fixtures::{T0, client_key, knock_params, server_key};
use sesame_proto::derive::derive_sequence;
use sesame_proto::params::{KnockProtocol, PayloadMode};
use sesame_proto::tracker::{ClientEntry, Policy};
use sesame_proto::wire::{Request, WireNoise, build_payload};
use sesame_proto::{ClientKeys, Event, Incoming, Proto, Tracker, TrackerConfig, UnixMillis};

const STEP: u32 = 30;

fn config(skew: u32) -> TrackerConfig {
    TrackerConfig {
        max_ahead_ms: 2_000,
        ..TrackerConfig::new(
            knock_params(3, KnockProtocol::Udp),
            skew,
            5_000,
            PayloadMode::Required,
        )
    }
}

fn tracker(skew: u32, now: UnixMillis) -> Tracker {
    let server = server_key();
    let entries = vec![ClientEntry {
        name: "laptop".into(),
        keys: ClientKeys::for_server(&server, &client_key(1).public_key(), None).unwrap(),
        policy: Policy {
            allow: vec!["tcp/22".parse().unwrap()],
            ..Policy::default()
        },
    }];
    Tracker::new(config(skew), server, entries, Vec::new(), now).unwrap()
}

/// Sends the knock (sequence of `counter`, then `datagram`) from `source` at `now`.
fn send(
    t: &mut Tracker,
    now: UnixMillis,
    source: IpAddr,
    counter: u64,
    datagram: &[u8],
) -> Vec<Event> {
    let keys = ClientKeys::for_client(&client_key(1), &server_key().public_key(), None).unwrap();
    let params = knock_params(3, KnockProtocol::Udp);
    let seq = derive_sequence(&keys, &params, counter).unwrap();
    let mut events = Vec::new();
    t.handle_timeout(now, &mut events);
    t.advance(now).unwrap();
    let body = [7u8; 16];
    for k in &seq.knocks {
        assert_eq!(k.proto, Proto::Udp);
        t.packet(
            now,
            Incoming {
                source,
                proto: Proto::Udp,
                port: k.port,
                payload: Some(&body),
            },
            &mut events,
        );
    }
    t.packet(
        now,
        Incoming {
            source,
            proto: Proto::Udp,
            port: seq.payload_port,
            payload: Some(datagram),
        },
        &mut events,
    );
    events
}

fn outcome(events: &[Event]) -> String {
    for e in events {
        match e {
            Event::Granted(g) => return format!("granted to {}", g.address),
            Event::Rejected { reason, .. } => return format!("rejected: {}", reason.code()),
            _ => {}
        }
    }
    "nothing".into()
}

#[test]
fn a_refused_unbound_knock_stays_refused_after_a_reload_widens_the_window() {
    let client: IpAddr = Ipv4Addr::new(198, 18, 0, 2).into();
    let attacker: IpAddr = Ipv4Addr::new(198, 19, 0, 66).into();
    let k = T0.counter(STEP);
    assert_eq!(
        UnixMillis::from_secs(k * u64::from(STEP)),
        T0,
        "T0 starts a step"
    );

    // The client's clock is 19 s ahead; it knocks unbound (behind a NAT, no STUN). The
    // payload is stamped T0 + 20 s, in step k, and refused as too far ahead (max_ahead 2 s).
    let keys = ClientKeys::for_client(&client_key(1), &server_key().public_key(), None).unwrap();
    let request = Request {
        timestamp: T0.plus_millis(20_000),
        random: [1; 16],
        services: Vec::new(),
        address: None,
        action: None,
        flags: 0,
    };
    let datagram = build_payload(
        &keys,
        k,
        &request,
        &sesame_keys::PrivateKey::generate(),
        &WireNoise::default(),
    )
    .unwrap();

    for reload in [false, true] {
        let mut old = tracker(1, T0);
        let first = send(&mut old, T0.plus_millis(1_000), client, k, &datagram);
        assert_eq!(outcome(&first), "rejected: too_far_ahead");

        // The operator reloads with skew_steps = 3 (the tracker is rebuilt, seen MACs
        // inherited), or does not.
        let mut t = if reload {
            let mut new = tracker(3, T0.plus_millis(2_000));
            new.inherit_seen(&old);
            new
        } else {
            old
        };

        // 61 s later (step k + 2) the attacker replays the captured knock from its address.
        let later = T0.plus_millis(61_000);
        let replayed = send(&mut t, later, attacker, k, &datagram);
        assert!(
            !outcome(&replayed).starts_with("granted"),
            "reload = {reload}: a captured knock that sesamed refused was granted to the attacker after a reload widened the window: {replayed:?}"
        );
    }
}
