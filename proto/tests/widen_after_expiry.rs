//! Review s22, finding 2: a reload or a clean restart that widens the window (more
//! `skew_steps`) AFTER the narrow window has already forgotten a refused datagram's gate MAC
//! (or gated step) must not make that captured datagram valid again. The tracker keeps, per
//! step length, the newest step whose records it forgot (`Tracker::forgotten_steps`); the
//! window's lower edge never moves back over it, a reload carries it and sesamed saves it at a
//! clean stop (`forgotten` lines of the snapshot). Without that, every `*_stays_refused` test
//! failed ("granted to 198.19.0.66"); the control passes either way.

#![allow(clippy::unwrap_used)]

mod common;

use common::{STEP, attacker, client, outcome, payload, refused_request, send, tracker, unbound};
use sesame_fixtures::T0;
use sesame_proto::params::PayloadMode;
use sesame_proto::{Tracker, TrackerConfig, UnixMillis};

fn config(skew: u32, mode: PayloadMode) -> TrackerConfig {
    TrackerConfig {
        max_ahead_ms: 2_000,
        ..common::config(skew, mode)
    }
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Reload,
    Restart,
}

/// sesamed goes from `old` to a tracker with `new` at `now`, by a reload or a clean restart
/// (what sesamed saves at the stop and restores at the start).
fn change(how: Change, old: &Tracker, new: TrackerConfig, now: UnixMillis) -> Tracker {
    let mut t = tracker(new, now, old.replay_states().to_vec());
    match how {
        Change::Reload => t.inherit_seen(old),
        Change::Restart => {
            t.remember_seen(&old.seen_list(), Some(old.config().saved_window()), now);
            t.remember_gated(&old.gated_list(), now);
            t.remember_forgotten(&old.forgotten_steps(now));
        }
    }
    t
}

/// The client's clock is 19 s ahead; its unbound knock (stamped T0 + 20 s, step k) is refused
/// as too far ahead at T0 + 1 s under skew 1: its MAC is remembered until the end of step
/// k + 1 (T0 + 60 s). At T0 + 61 s (step k + 2) sesamed has forgotten it; the operator then
/// widens the window to skew 3 (k + 2 - 3 < k: step k is admitted again). The attacker, who
/// captured the knock on the client's Wi-Fi, replays it from its own address at T0 + 62 s.
fn widened_after_expiry(how: Change) -> String {
    let k = T0.counter(STEP);
    let d = unbound(T0.plus_millis(20_000));
    let mut old = tracker(config(1, PayloadMode::Required), T0, Vec::new());
    let first = send(&mut old, T0.plus_millis(1_000), client(), k, Some(&d), T0);
    assert_eq!(outcome(&first), "rejected: too_far_ahead");
    // sesamed's 500 ms tick (handle_timeout) runs until the change.
    let mut events = Vec::new();
    old.handle_timeout(T0.plus_millis(61_000), &mut events);
    let mut t = change(
        how,
        &old,
        config(3, PayloadMode::Required),
        T0.plus_millis(61_000),
    );
    let later = T0.plus_millis(62_000);
    outcome(&send(&mut t, later, attacker(), k, Some(&d), later))
}

#[test]
fn a_refused_knock_stays_refused_when_a_reload_widens_the_window_after_its_mac_expired() {
    let got = widened_after_expiry(Change::Reload);
    assert!(!got.starts_with("granted"), "reload: {got}");
}

#[test]
fn a_refused_knock_stays_refused_when_a_restart_widens_the_window_after_its_mac_expired() {
    let got = widened_after_expiry(Change::Restart);
    assert!(!got.starts_with("granted"), "restart: {got}");
}

/// Control: the same reload one second earlier (T0 + 59 s, the MAC still remembered) keeps it
/// (today's recomputed expiry): refused.
#[test]
fn control_a_reload_before_the_expiry_keeps_the_mac() {
    let k = T0.counter(STEP);
    let d = unbound(T0.plus_millis(20_000));
    let mut old = tracker(config(1, PayloadMode::Required), T0, Vec::new());
    let first = send(&mut old, T0.plus_millis(1_000), client(), k, Some(&d), T0);
    assert_eq!(outcome(&first), "rejected: too_far_ahead");
    let mut events = Vec::new();
    old.handle_timeout(T0.plus_millis(59_000), &mut events);
    let mut t = change(
        Change::Reload,
        &old,
        config(3, PayloadMode::Required),
        T0.plus_millis(59_000),
    );
    let later = T0.plus_millis(62_000);
    let got = outcome(&send(&mut t, later, attacker(), k, Some(&d), later));
    assert_eq!(got, "rejected: replay");
}

/// `optional` mode: a payload naming a service the client may not open (policy refusal) makes
/// the step gated; the sequence alone must not open. After the gated record expired under
/// skew 1, a widening reload lets the attacker's copy of the sequence alone open tcp/22 for
/// the attacker's address.
#[test]
fn optional_mode_a_gated_steps_sequence_stays_refused_when_a_reload_widens_after_expiry() {
    let k = T0.counter(STEP);
    let request = refused_request(T0.plus_millis(1_000), 3, None);
    let d = payload(k, &request);
    let mut old = tracker(config(1, PayloadMode::Optional), T0, Vec::new());
    let now = T0.plus_millis(1_000);
    let first = send(&mut old, now, client(), k, Some(&d), now.plus_millis(6_000));
    assert_eq!(outcome(&first), "rejected: service_not_allowed");
    // The gated record lasts until the end of step k + 1 plus the 5 s timeout (T0 + 65 s).
    let mut events = Vec::new();
    old.handle_timeout(T0.plus_millis(66_000), &mut events);
    let mut t = change(
        Change::Reload,
        &old,
        config(3, PayloadMode::Optional),
        T0.plus_millis(66_000),
    );
    let later = T0.plus_millis(67_000);
    let got = outcome(&send(
        &mut t,
        later,
        attacker(),
        k,
        None,
        later.plus_millis(6_000),
    ));
    assert!(!got.starts_with("granted"), "optional, reload: {got}");
}
