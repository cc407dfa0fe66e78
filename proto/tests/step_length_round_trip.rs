//! A reload (or restart) to another step length and back to the first with a wider window must
//! remember the gate MACs of refused datagrams, and the steps some datagram passed the gate
//! for, as long as that wider window admits their step. The expiries were widened only against
//! the window just before (`Tracker::widening`: nothing for another step length), so a record
//! made under step length A and carried through a run at step length B kept its A-expiry
//! when A came back with more skew: a captured unbound knock refused as too far ahead was
//! granted to the attacker once that expiry passed, and in `optional` mode the sequence alone
//! of a knock whose payload was refused. Each record now keeps its own step, and its expiry is
//! recomputed under any later window of that step length (attacker review s21, finding 3; the
//! detour cases failed before, the direct ones are the controls).

#![allow(clippy::unwrap_used)]

mod common;

use common::{STEP, attacker, client, outcome, payload, refused_request, send, tracker, unbound};
use sesame_fixtures::{T0, knock_params};
use sesame_proto::params::{KnockProtocol, PayloadMode};
use sesame_proto::{Tracker, TrackerConfig, UnixMillis};

/// Step length `step`, `skew` steps either side, a payload at most `max_ahead_ms` ahead.
fn config(step: u32, skew: u32, max_ahead_ms: u64, mode: PayloadMode) -> TrackerConfig {
    let mut params = knock_params(3, KnockProtocol::Udp);
    params.step_seconds = step;
    TrackerConfig {
        max_ahead_ms,
        ..TrackerConfig::new(params, skew, 5_000, mode)
    }
}

/// How sesamed goes from one configuration to the next.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// A reload: the new tracker inherits the old one's records.
    Reload,
    /// A clean stop and a start: the snapshot's records are remembered.
    Restart,
}

fn change(how: Change, old: &Tracker, config: TrackerConfig, now: UnixMillis) -> Tracker {
    let mut t = tracker(config, now, old.replay_states().to_vec());
    match how {
        Change::Reload => t.inherit_seen(old),
        Change::Restart => {
            let window = old.config().saved_window();
            t.remember_seen(&old.seen_list(), Some(window), now);
            t.remember_gated(&old.gated_list(), now);
        }
    }
    t
}

/// Run 1 (`first`, from T0) holds a record of step k or k + 1 of 30 s; `detour`: a change
/// at T0 + 10 s to step_seconds = 60; then (T0 + 20 s) a change to 30 s with three steps of
/// skew, which admits the step until the end of step k + 4 or k + 3.
fn after(how: Change, detour: bool, mode: PayloadMode, first: Tracker) -> Tracker {
    let wide = config(30, 3, 90_000, mode);
    if detour {
        let b = change(
            how,
            &first,
            config(60, 1, 60_000, mode),
            T0.plus_millis(10_000),
        );
        change(how, &b, wide, T0.plus_millis(20_000))
    } else {
        change(how, &first, wide, T0.plus_millis(20_000))
    }
}

/// Run 1 has 30 s steps, one of skew, a payload at most 2 s ahead: the client's clock is
/// 31 s ahead and its unbound knock for step k + 1 is refused as too far ahead; its MAC is
/// remembered until the end of step k + 2 (T0 + 90 s). The attacker replays the captured knock
/// at T0 + 100 s.
fn refused_mac_replayed(how: Change, detour: bool) -> String {
    let k = T0.counter(STEP);
    assert_eq!(T0.0 % 30_000, 0, "T0 starts a step");
    let d = unbound(T0.plus_millis(31_000));
    let mode = PayloadMode::Required;
    let mut a = tracker(config(30, 1, 2_000, mode), T0, Vec::new());
    let at = T0.plus_millis(1_000);
    let first = send(&mut a, at, client(), k + 1, Some(&d), at.plus_millis(6_000));
    assert_eq!(outcome(&first), "rejected: too_far_ahead");
    let mut c = after(how, detour, mode, a);
    let later = T0.plus_millis(100_000);
    outcome(&send(
        &mut c,
        later,
        attacker(),
        k + 1,
        Some(&d),
        later.plus_millis(6_000),
    ))
}

/// `optional` mode: the client's bound payload for step k is refused (it asks for tcp/23), so
/// step k is gated until the end of step k + 1 plus the 5 s timeout (T0 + 65 s). The attacker
/// replays the sequence alone at T0 + 100 s (step k is in the wide window until T0 + 120 s).
fn gated_step_replayed(how: Change, detour: bool) -> String {
    let k = T0.counter(STEP);
    let request = refused_request(T0.plus_millis(1_000), 1, Some(client()));
    let d = payload(k, &request);
    let mode = PayloadMode::Optional;
    let mut a = tracker(config(30, 1, 2_000, mode), T0, Vec::new());
    let at = T0.plus_millis(1_000);
    let first = send(&mut a, at, client(), k, Some(&d), at.plus_millis(6_000));
    assert_eq!(outcome(&first), "rejected: service_not_allowed");
    let mut c = after(how, detour, mode, a);
    let later = T0.plus_millis(100_000);
    outcome(&send(
        &mut c,
        later,
        attacker(),
        k,
        None,
        later.plus_millis(6_000),
    ))
}

#[test]
fn control_a_direct_change_to_a_wider_window_keeps_the_records() {
    for how in [Change::Reload, Change::Restart] {
        assert_eq!(
            refused_mac_replayed(how, false),
            "rejected: replay",
            "{how:?}"
        );
        assert_eq!(
            gated_step_replayed(how, false),
            "rejected: replay",
            "{how:?}"
        );
    }
}

#[test]
fn a_wider_window_reached_by_reloads_via_another_step_length_keeps_the_mac() {
    assert_eq!(
        refused_mac_replayed(Change::Reload, true),
        "rejected: replay"
    );
}

#[test]
fn a_wider_window_reached_by_restarts_via_another_step_length_keeps_the_mac() {
    assert_eq!(
        refused_mac_replayed(Change::Restart, true),
        "rejected: replay"
    );
}

#[test]
fn a_wider_window_reached_by_reloads_via_another_step_length_keeps_the_gated_step() {
    assert_eq!(
        gated_step_replayed(Change::Reload, true),
        "rejected: replay"
    );
}

#[test]
fn a_wider_window_reached_by_restarts_via_another_step_length_keeps_the_gated_step() {
    assert_eq!(
        gated_step_replayed(Change::Restart, true),
        "rejected: replay"
    );
}
