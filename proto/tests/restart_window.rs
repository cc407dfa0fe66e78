//! A clean restart with a wider acceptance window (a larger `skew_steps`, a longer payload
//! timeout) must remember the gate MACs of refused or burnt datagrams, and the steps they were
//! for, as long as the new window admits their step: the restart version of
//! `reload_window.rs`. A clean stop saves each MAC and gated step with its step and its
//! expiry; `remember_seen` and `remember_gated` keep each until the end of the new window for
//! its step if that is later. Before, the saved expiries were kept as they were: once they
//! passed, the new window still admitted the step and the captured knock (refused when it was
//! sent) was granted to whoever replayed it (attacker review). A snapshot of before the MACs'
//! steps were saved says which window its expiries were computed for (`saved_window`), and the
//! start widens them by the difference; one of before that too keeps them as they were.

#![allow(clippy::unwrap_used)]

mod common;

use common::{STEP, attacker, client, outcome, payload, refused_request, send, tracker};
use sesame_fixtures::T0;
use sesame_proto::params::PayloadMode;
use sesame_proto::tracker::SavedWindow;
use sesame_proto::wire::Request;
use sesame_proto::{Tracker, TrackerConfig, UnixMillis};

fn config(skew: u32, timeout_ms: u64, mode: PayloadMode) -> TrackerConfig {
    TrackerConfig {
        max_ahead_ms: 2_000,
        timeout_ms,
        ..common::config(skew, mode)
    }
}

/// What a snapshot holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Snapshot {
    /// Today's: each MAC with its step.
    Steps,
    /// MACs without their step, and the window their expiries were computed for.
    Window,
    /// Neither (a snapshot of before both).
    Neither,
}

/// A clean stop of `old` at `now` and a start of a tracker with `new`: what sesamed saves and
/// restores (the replay states are empty here) from a snapshot of kind `snapshot`.
fn restart(old: &Tracker, new: TrackerConfig, now: UnixMillis, snapshot: Snapshot) -> Tracker {
    let mut seen = old.seen_list();
    if snapshot != Snapshot::Steps {
        for m in &mut seen {
            m.step = None;
        }
    }
    let gated = old.gated_list();
    let saved: Option<SavedWindow> =
        (snapshot != Snapshot::Neither).then(|| old.config().saved_window());
    let mut t = tracker(new, now, Vec::new());
    t.remember_seen(&seen, saved, now);
    t.remember_gated(&gated, now);
    t
}

/// The client's clock is 19 s ahead; its unbound knock is stamped T0 + 20 s (step k) and
/// refused as too far ahead. sesamed stops cleanly and starts with `skew_steps = 3`; 61 s
/// later (step k + 2, when the old expiry has passed and the new window still admits step k)
/// the attacker replays the captured knock.
#[test]
fn a_refused_unbound_knock_stays_refused_after_a_clean_restart_widens_the_window() {
    let k = T0.counter(STEP);
    let request = Request {
        timestamp: T0.plus_millis(20_000),
        random: [1; 16],
        services: Vec::new(),
        address: None,
        action: None,
        flags: 0,
    };
    let d = payload(k, &request);
    for snapshot in [Snapshot::Neither, Snapshot::Window, Snapshot::Steps] {
        let mut old = tracker(config(1, 5_000, PayloadMode::Required), T0, Vec::new());
        let first = send(&mut old, T0.plus_millis(1_000), client(), k, Some(&d), T0);
        assert_eq!(outcome(&first), "rejected: too_far_ahead");
        let now = T0.plus_millis(2_000);
        let mut t = restart(&old, config(3, 5_000, PayloadMode::Required), now, snapshot);
        let later = T0.plus_millis(61_000);
        let replayed = send(&mut t, later, attacker(), k, Some(&d), later);
        if snapshot == Snapshot::Neither {
            // A snapshot that says neither the MACs' steps nor its window: the expiries are
            // kept as they are.
            assert_eq!(outcome(&replayed), format!("granted to {}", attacker()));
        } else {
            assert_eq!(
                outcome(&replayed),
                "rejected: replay",
                "{snapshot:?}: {replayed:?}"
            );
        }
    }
}

/// `optional` mode: the client's bound payload is refused (it asks for a service it may not
/// open), so its step k gets no sequence-only grant. sesamed stops cleanly and starts with
/// `new`; at `replay_at` the attacker replays the sequence alone, without the payload, and
/// its wait for a payload ends `wait_ms` later. Refused: a gated step was always saved with
/// its step, so its expiry is recomputed for the new window whatever else the snapshot says.
fn gated_step_after_a_clean_restart(
    new: fn() -> TrackerConfig,
    replay_at: UnixMillis,
    wait_ms: u64,
) {
    let k = T0.counter(STEP);
    let request = refused_request(T0.plus_millis(1_000), 1, Some(client()));
    let d = payload(k, &request);
    for snapshot in [Snapshot::Neither, Snapshot::Window, Snapshot::Steps] {
        let mut old = tracker(config(1, 5_000, PayloadMode::Optional), T0, Vec::new());
        let at = T0.plus_millis(1_000);
        let first = send(&mut old, at, client(), k, Some(&d), at.plus_millis(6_000));
        assert_eq!(outcome(&first), "rejected: service_not_allowed");
        let now = T0.plus_millis(10_000);
        let mut t = restart(&old, new(), now, snapshot);
        let until = replay_at.plus_millis(wait_ms);
        let replayed = send(&mut t, replay_at, attacker(), k, None, until);
        assert_eq!(
            outcome(&replayed),
            "rejected: replay",
            "{snapshot:?}: {replayed:?}"
        );
    }
}

/// With `skew_steps = 3`: the replay comes once the old record's expiry (the end of step
/// k + 1, plus the payload timeout) has passed and the new window still admits step k.
#[test]
fn optional_mode_a_gated_step_stays_gated_after_a_clean_restart_widens_the_window() {
    gated_step_after_a_clean_restart(
        || config(3, 5_000, PayloadMode::Optional),
        T0.plus_millis(95_000),
        6_000,
    );
}

/// With a longer payload timeout (same skew): a sequence of step k that completes at the very
/// end of the window (skew 1: until the end of step k + 1) waits `timeout_ms` for its payload;
/// its deadline is after the old record's expiry (the end of the window plus the old, shorter
/// timeout).
#[test]
fn optional_mode_a_gated_step_stays_gated_after_a_clean_restart_lengthens_the_timeout() {
    gated_step_after_a_clean_restart(
        || config(1, 30_000, PayloadMode::Optional),
        T0.plus_millis(59_900),
        31_000,
    );
}
