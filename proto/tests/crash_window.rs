//! What a start after a crash must refuse (`Tracker::after_crash`): the crash loses the gate
//! MACs of datagrams that passed the gate and were refused, so every unbound payload that
//! could have passed the gate before the crash is refused, and `optional` mode grants no
//! sequence alone for a step that could have had one. "Could have" is decided by the window
//! the crashed run used, not only the new configuration's:
//!
//! * a smaller `skew_steps` after the crash left a refused unbound datagram of the old,
//!   wider window unprotected (attacker review);
//! * a payload for the step after the window (a clock ahead, a forward probe) is burnt on
//!   arrival and refused as stale; its step is `counter(now) + skew_steps + 1`, one past what
//!   the rule covered, so after a crash and a start in the same step its captured copy was
//!   valid from the next step on.

#![allow(clippy::unwrap_used)]

mod common;

use common::{STEP, attacker, client, knock, outcome, tracker, unbound};
use sesame_fixtures::T0;
use sesame_proto::TrackerConfig;
use sesame_proto::params::PayloadMode;

fn config(skew: u32, max_ahead_ms: u64, mode: PayloadMode) -> TrackerConfig {
    TrackerConfig {
        max_ahead_ms,
        ..common::config(skew, mode)
    }
}

/// sesamed runs with `skew_steps = 3`; the client's clock is 90 s ahead and its unbound knock
/// is refused as too far ahead (its step is in the window, its timestamp past max_ahead_ms).
/// sesamed crashes and is started again at once with `skew_steps = 1`. Once the clock has
/// caught up, the attacker replays the captured knock.
#[test]
fn a_smaller_skew_after_a_crash_still_refuses_what_the_old_window_let_through_the_gate() {
    let k = T0.counter(STEP);
    let stamped = T0.plus_millis(91_000); // step k + 3
    let d = unbound(stamped);
    for remembered in [false, true] {
        let old = config(3, 2_000, PayloadMode::Required);
        let old_window = old.saved_window();
        let mut t = tracker(old, T0, Vec::new());
        let first = knock(&mut t, T0.plus_millis(1_000), client(), k + 3, Some(&d));
        assert_eq!(outcome(&first), "rejected: too_far_ahead");

        // kill -9; the new configuration has skew_steps = 1 (and the default max_ahead_ms).
        let start = T0.plus_millis(2_000);
        let replay = t.replay_states().to_vec();
        let mut t = tracker(config(1, 30_000, PayloadMode::Required), start, replay);
        let before = if remembered {
            vec![old_window]
        } else {
            Vec::new()
        };
        let until = t.after_crash(start, &before);
        if remembered {
            assert!(until > stamped, "{until:?}");
        }

        // 65 s after the capture (step k + 2: step k + 3 is in the window, the timestamp
        // within max_ahead_ms) the attacker replays it.
        let replayed = knock(&mut t, T0.plus_millis(65_000), attacker(), k + 3, Some(&d));
        if remembered {
            assert_eq!(outcome(&replayed), "rejected: replay");
        } else {
            // What the old rule did (the new window alone): the knock opened.
            assert_eq!(outcome(&replayed), format!("granted to {}", attacker()));
        }
    }
}

/// The step after the window: burnt on arrival, refused as stale. A crash and a start in the
/// same step lose its MAC; the rule must still cover its step.
#[test]
fn a_payload_burnt_for_the_step_after_the_window_stays_refused_after_a_crash() {
    let k = T0.counter(STEP);
    // skew 1: the window is k-1..=k+1, the step after it k+2.
    let stamped = T0.plus_millis(60_500);
    assert_eq!(stamped.counter(STEP), k + 2);
    let d = unbound(stamped);
    let cfg = || config(1, 30_000, PayloadMode::Required);
    let mut t = tracker(cfg(), T0, Vec::new());
    let first = knock(&mut t, T0.plus_millis(1_000), client(), k + 2, Some(&d));
    assert_eq!(outcome(&first), "rejected: stale", "{first:?}");
    let start = T0.plus_millis(2_000);
    let replay = t.replay_states().to_vec();
    let mut t = tracker(cfg(), start, replay);
    let until = t.after_crash(start, &[]);
    assert!(until > stamped, "{until:?}");
    // 31 s after the capture: step k + 2 is in the window, the timestamp within max_ahead_ms.
    let replayed = knock(&mut t, T0.plus_millis(31_000), attacker(), k + 2, Some(&d));
    assert_eq!(outcome(&replayed), "rejected: replay", "{replayed:?}");
}

/// The same in `optional` mode, for the sequence alone: its step had a payload (burnt), so
/// it gets no sequence-only grant, also after a crash.
#[test]
fn optional_mode_the_step_after_the_window_gets_no_sequence_grant_after_a_crash() {
    let k = T0.counter(STEP);
    let d = unbound(T0.plus_millis(60_500));
    let cfg = || config(1, 30_000, PayloadMode::Optional);
    let mut t = tracker(cfg(), T0, Vec::new());
    let first = knock(&mut t, T0.plus_millis(1_000), client(), k + 2, Some(&d));
    assert_eq!(outcome(&first), "rejected: stale", "{first:?}");
    let start = T0.plus_millis(2_000);
    let replay = t.replay_states().to_vec();
    let mut t = tracker(cfg(), start, replay);
    t.after_crash(start, &[]);
    let replayed = knock(&mut t, T0.plus_millis(31_000), attacker(), k + 2, None);
    assert_eq!(outcome(&replayed), "rejected: replay", "{replayed:?}");
}

/// A clean stop soon after a start after a crash: what the crash lost is still lost, and the
/// next (clean) start must go on refusing it until the first start's rule ends. The rule is
/// saved with the snapshot (`Tracker::crash_floor`) and restored (`Tracker::keep_crash_floor`);
/// before, the clean restart dropped it and the captured knock opened.
#[test]
fn a_clean_restart_soon_after_a_crash_keeps_refusing_what_the_crash_lost() {
    let k = T0.counter(STEP);
    // The client's clock is 20 s ahead: stamped in step k, refused as too far ahead.
    let stamped = T0.plus_millis(21_000);
    let d = unbound(stamped);
    let cfg = || config(1, 2_000, PayloadMode::Required);
    for kept in [false, true] {
        let mut t = tracker(cfg(), T0, Vec::new());
        let first = knock(&mut t, T0.plus_millis(1_000), client(), k, Some(&d));
        assert_eq!(outcome(&first), "rejected: too_far_ahead");
        // kill -9 and a start: the MAC is lost, the rule refuses the payload.
        let start = T0.plus_millis(2_000);
        let mut t = tracker(cfg(), start, t.replay_states().to_vec());
        let until = t.after_crash(start, &[]);
        assert_eq!(t.crash_floor(), Some(until));
        // A clean stop 3 s later and a start: what sesamed saves and restores.
        let now = T0.plus_millis(5_000);
        let (seen, gated, window) = (t.seen_list(), t.gated_list(), t.config().saved_window());
        let floor = t.crash_floor();
        let mut t = tracker(cfg(), now, t.replay_states().to_vec());
        t.remember_seen(&seen, Some(window), now);
        t.remember_gated(&gated, now);
        if kept {
            t.keep_crash_floor(floor.unwrap());
        }
        // 19 s after the capture the timestamp is within max_ahead_ms; step k is in the window.
        let replayed = knock(&mut t, T0.plus_millis(20_000), attacker(), k, Some(&d));
        if kept {
            assert_eq!(outcome(&replayed), "rejected: replay", "{replayed:?}");
        } else {
            assert_eq!(outcome(&replayed), format!("granted to {}", attacker()));
        }
    }
}
