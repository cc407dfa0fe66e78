//! A client removed from the configuration and added back while its knock's step is still in
//! the window (a config-management run that briefly drops a `[[client]]` block) must find its
//! remembered gate MACs and gated steps again. `remember_gated` (a start) and `inherit_seen`
//! (a reload) dropped the gated steps of a client the new tracker did not have, and
//! `seen_list` did not save its MACs at the next clean stop: in `optional` mode the
//! observer's copy of a knock whose payload was refused, replayed without the payload, got the
//! sequence-only grant once the client was back; after two restarts without the client, a
//! captured unbound knock refused as too far ahead was granted too. They are now kept under
//! the client's public key (attacker review s21, finding 2; every test here but the controls
//! failed before).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::{attacker, client, granted_to, knock, outcome, refused_request, unbound};
use sesame_fixtures::{T0, client_key, server_key};
use sesame_proto::params::PayloadMode;
use sesame_proto::tracker::{ClientEntry, Policy, ReplayState};
use sesame_proto::wire::{WireNoise, build_payload};
use sesame_proto::{ClientKeys, Tracker, TrackerConfig, UnixMillis};

/// The fixtures' client key `i` (1 is the laptop of `common`), allowed tcp/22.
fn entry(i: u64) -> ClientEntry {
    ClientEntry {
        name: format!("c{i}"),
        keys: ClientKeys::for_server(&server_key(), &client_key(i).public_key(), None).unwrap(),
        policy: Policy {
            allow: vec!["tcp/22".parse().unwrap()],
            ..Policy::default()
        },
    }
}

/// One step of skew, a 5 s payload timeout, a payload at most 2 s ahead.
fn config(mode: PayloadMode) -> TrackerConfig {
    TrackerConfig {
        max_ahead_ms: 2_000,
        ..common::config(1, mode)
    }
}

/// A tracker for the fixtures' clients `clients` with their replay states `replay`.
fn tracker(
    mode: PayloadMode,
    clients: &[u64],
    now: UnixMillis,
    replay: Vec<ReplayState>,
) -> Tracker {
    let entries = clients.iter().map(|i| entry(*i)).collect();
    Tracker::new(config(mode), server_key(), entries, replay, now).unwrap()
}

/// A clean stop of `old` and a start with `clients` at `now`, as sesamed saves and restores
/// (the replay states come from `store`, which keeps every client ever seen).
fn restart(
    old: &Tracker,
    mode: PayloadMode,
    clients: &[u64],
    store: &[ReplayState],
    now: UnixMillis,
) -> Tracker {
    let (seen, gated, window) = (
        old.seen_list(),
        old.gated_list(),
        old.config().saved_window(),
    );
    let replay = clients
        .iter()
        .map(|i| store[*i as usize - 1].clone())
        .collect();
    let mut t = tracker(mode, clients, now, replay);
    t.remember_seen(&seen, Some(window), now);
    t.remember_gated(&gated, now);
    t
}

/// A reload of `old` to `clients` at `now`.
fn reload(
    old: &Tracker,
    mode: PayloadMode,
    clients: &[u64],
    store: &[ReplayState],
    now: UnixMillis,
) -> Tracker {
    let replay = clients
        .iter()
        .map(|i| store[*i as usize - 1].clone())
        .collect();
    let mut t = tracker(mode, clients, now, replay);
    t.inherit_seen(old);
    t
}

/// The laptop's payload for step `k`, bound to its address and refused (it asks for tcp/23).
fn refused_payload(k: u64, address: IpAddr) -> Vec<u8> {
    let keys = ClientKeys::for_client(&client_key(1), &server_key().public_key(), None).unwrap();
    let request = refused_request(T0.plus_millis(1_000), 1, Some(address));
    build_payload(
        &keys,
        k,
        &request,
        &sesame_keys::PrivateKey::generate(),
        &WireNoise::default(),
    )
    .unwrap()
}

/// `optional` mode. Run 1 has clients [1, 2]; the laptop's knock with its (refused) payload.
/// Then `change` goes through runs without the laptop and back to [1, 2]; 15 s after T0 the
/// observer replays the captured sequence, without the payload, from its own address.
fn optional_replay_after(change: fn(&Tracker, &[ReplayState]) -> Tracker) -> Option<IpAddr> {
    let k = T0.counter(30);
    let d = refused_payload(k, client());
    let mut t = tracker(PayloadMode::Optional, &[1, 2], T0, Vec::new());
    let ev = knock(&mut t, T0.plus_millis(1_000), client(), k, Some(&d));
    assert_eq!(outcome(&ev), "rejected: service_not_allowed");
    assert_eq!(t.gated_list().len(), 1);
    let store = t.replay_states().to_vec();
    let mut t = change(&t, &store);
    granted_to(&knock(&mut t, T0.plus_millis(15_000), attacker(), k, None))
}

const OPT: PayloadMode = PayloadMode::Optional;

#[test]
fn control_without_removal_is_refused() {
    assert_eq!(
        optional_replay_after(|t, s| restart(t, OPT, &[1, 2], s, T0.plus_millis(8_000))),
        None
    );
}

/// A clean restart without the laptop, then a reload that adds it back.
#[test]
fn a_client_removed_by_a_restart_and_re_added_by_a_reload_keeps_its_gated_steps() {
    let granted = optional_replay_after(|t, s| {
        let t2 = restart(t, OPT, &[2], s, T0.plus_millis(8_000));
        reload(&t2, OPT, &[1, 2], s, T0.plus_millis(12_000))
    });
    assert_eq!(granted, None);
}

/// Two reloads: without the laptop, then with it.
#[test]
fn a_client_removed_and_re_added_by_reloads_keeps_its_gated_steps() {
    let granted = optional_replay_after(|t, s| {
        let t2 = reload(t, OPT, &[2], s, T0.plus_millis(8_000));
        reload(&t2, OPT, &[1, 2], s, T0.plus_millis(12_000))
    });
    assert_eq!(granted, None);
}

/// Two clean restarts without the laptop, then a start with it.
#[test]
fn a_client_missing_from_two_restarts_keeps_its_gated_steps() {
    let granted = optional_replay_after(|t, s| {
        let t2 = restart(t, OPT, &[2], s, T0.plus_millis(6_000));
        let t3 = restart(&t2, OPT, &[2], s, T0.plus_millis(9_000));
        restart(&t3, OPT, &[1, 2], s, T0.plus_millis(12_000))
    });
    assert_eq!(granted, None);
}

/// `required` mode: the laptop's clock is 19 s ahead, its unbound knock (stamped T0 + 20 s,
/// step k) is refused as too far ahead, so only its gate MAC remembers it. Two clean restarts
/// without the laptop, then a start with it; at T0 + 30 s (the timestamp is no longer ahead,
/// step k is in the window) the observer replays the captured knock from its address.
#[test]
fn a_client_missing_from_two_restarts_keeps_its_gate_macs() {
    let k = T0.counter(30);
    let d = unbound(T0.plus_millis(20_000));
    let req = PayloadMode::Required;
    for removed in [false, true] {
        let mut t = tracker(req, &[1, 2], T0, Vec::new());
        let first = knock(&mut t, T0.plus_millis(1_000), client(), k, Some(&d));
        assert_eq!(outcome(&first), "rejected: too_far_ahead");
        let store = t.replay_states().to_vec();
        let between: &[u64] = if removed { &[2] } else { &[1, 2] };
        let t2 = restart(&t, req, between, &store, T0.plus_millis(5_000));
        let t3 = restart(&t2, req, between, &store, T0.plus_millis(10_000));
        let mut t4 = restart(&t3, req, &[1, 2], &store, T0.plus_millis(15_000));
        let replayed = knock(&mut t4, T0.plus_millis(30_000), attacker(), k, Some(&d));
        assert_eq!(
            outcome(&replayed),
            "rejected: replay",
            "removed = {removed}: {replayed:?}"
        );
    }
}
