//! The world of proto's window tests (`reload_window`, `restart_window`, `crash_window`,
//! `restart_optional_gated`): one client, "laptop" (the fixtures' client key 1), allowed
//! tcp/22 by the fixtures' server key; its knocks on a virtual clock, as sesamed feeds them to
//! the tracker; and what came of them. Each test binary uses part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};

use sesame_fixtures::{client_key, knock_params, server_key};
use sesame_proto::derive::derive_sequence;
use sesame_proto::params::{KnockProtocol, PayloadMode};
use sesame_proto::tracker::{ClientEntry, Policy, ReplayState};
use sesame_proto::wire::{Request, WireNoise, build_payload};
use sesame_proto::{ClientKeys, Event, Incoming, Proto, Tracker, TrackerConfig, UnixMillis};

/// The step length of [`config`] (`knock_params`'s).
pub(crate) const STEP: u32 = 30;

/// Three UDP knocks in the fixtures' range, `skew` steps either side, a 5 s payload timeout.
pub(crate) fn config(skew: u32, mode: PayloadMode) -> TrackerConfig {
    TrackerConfig::new(knock_params(3, KnockProtocol::Udp), skew, 5_000, mode)
}

/// A tracker for the laptop with its persisted replay state `replay`, started at `now`.
pub(crate) fn tracker(config: TrackerConfig, now: UnixMillis, replay: Vec<ReplayState>) -> Tracker {
    let server = server_key();
    let entries = vec![ClientEntry {
        name: "laptop".into(),
        keys: ClientKeys::for_server(&server, &client_key(1).public_key(), None).unwrap(),
        policy: Policy {
            allow: vec!["tcp/22".parse().unwrap()],
            ..Policy::default()
        },
    }];
    Tracker::new(config, server, entries, replay, now).unwrap()
}

/// The laptop's side of the keys.
pub(crate) fn client_keys() -> ClientKeys {
    ClientKeys::for_client(&client_key(1), &server_key().public_key(), None).unwrap()
}

/// Sends the laptop's sequence of `counter` from `source` at `now`, then `datagram` if any;
/// then ends the waits due by `wait_until`, twice a second as sesamed does (`now`: none).
pub(crate) fn send(
    t: &mut Tracker,
    now: UnixMillis,
    source: IpAddr,
    counter: u64,
    datagram: Option<&[u8]>,
    wait_until: UnixMillis,
) -> Vec<Event> {
    let seq = derive_sequence(
        &client_keys(),
        &knock_params(3, KnockProtocol::Udp),
        counter,
    )
    .unwrap();
    let mut events = Vec::new();
    t.handle_timeout(now, &mut events);
    t.advance(now).unwrap();
    for k in &seq.knocks {
        assert_eq!(k.proto, Proto::Udp);
        t.packet(
            now,
            Incoming {
                source,
                proto: Proto::Udp,
                port: k.port,
                payload: Some(&[7u8; 16]),
            },
            &mut events,
        );
    }
    if let Some(d) = datagram {
        t.packet(
            now,
            Incoming {
                source,
                proto: Proto::Udp,
                port: seq.payload_port,
                payload: Some(d),
            },
            &mut events,
        );
    }
    let mut at = now;
    while at < wait_until {
        at = at.plus_millis(500).min(wait_until);
        t.handle_timeout(at, &mut events);
    }
    events
}

/// The first grant or rejection among `events`: "granted to ADDRESS", "rejected: CODE", or
/// "nothing".
pub(crate) fn outcome(events: &[Event]) -> String {
    for e in events {
        match e {
            Event::Granted(g) => return format!("granted to {}", g.address),
            Event::Rejected { reason, .. } => return format!("rejected: {}", reason.code()),
            _ => {}
        }
    }
    "nothing".into()
}

/// The address of the first grant among `events`, if any.
pub(crate) fn granted_to(events: &[Event]) -> Option<IpAddr> {
    events.iter().find_map(|e| match e {
        Event::Granted(g) => Some(g.address),
        _ => None,
    })
}

/// The laptop's payload datagram for `counter` carrying `request` (a fresh ephemeral key).
pub(crate) fn payload(counter: u64, request: &Request) -> Vec<u8> {
    build_payload(
        &client_keys(),
        counter,
        request,
        &sesame_keys::PrivateKey::generate(),
        &WireNoise::default(),
    )
    .unwrap()
}

/// An unbound payload (no address, no service) stamped `at`, for the step of `at`.
pub(crate) fn unbound(at: UnixMillis) -> Vec<u8> {
    let request = Request {
        timestamp: at,
        random: [1; 16],
        services: Vec::new(),
        address: None,
        action: None,
        flags: 0,
    };
    payload(at.counter(STEP), &request)
}

/// The laptop's address.
pub(crate) fn client() -> IpAddr {
    Ipv4Addr::new(198, 18, 0, 2).into()
}

/// The attacker's address (anywhere else).
pub(crate) fn attacker() -> IpAddr {
    Ipv4Addr::new(198, 19, 0, 66).into()
}

/// [`send`], then the payload's wait ends (6 s later, past the 5 s timeout).
pub(crate) fn knock(
    t: &mut Tracker,
    now: UnixMillis,
    source: IpAddr,
    counter: u64,
    datagram: Option<&[u8]>,
) -> Vec<Event> {
    send(t, now, source, counter, datagram, now.plus_millis(6_000))
}

/// The laptop's request stamped `timestamp` (random bytes all `random`), bound to `address`,
/// asking for tcp/23, which its policy does not allow: a payload of it is refused
/// (`service_not_allowed`), and in `optional` mode its step is gated.
pub(crate) fn refused_request(
    timestamp: UnixMillis,
    random: u8,
    address: Option<IpAddr>,
) -> Request {
    Request {
        timestamp,
        random: [random; 16],
        services: vec!["tcp/23".parse().unwrap()],
        address,
        action: None,
        flags: 0,
    }
}
