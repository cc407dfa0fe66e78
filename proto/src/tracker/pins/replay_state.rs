//! A client's replay state at its bounds: what counts as empty (an empty state is not saved),
//! how many sequence-only steps it keeps before the oldest becomes the floor, and which steps
//! leave it when the window moves on.

use super::*;

fn step(counter: u64) -> UsedStep {
    UsedStep {
        step_seconds: STEP,
        counter,
    }
}

#[test]
fn a_state_is_empty_only_while_it_holds_nothing() {
    assert!(ReplayState::default().is_empty());
    let mut s = ReplayState::default();
    s.record_step(step(c0()));
    assert!(!s.is_empty(), "a used step");
    let s = ReplayState {
        floor: Some(T0),
        ..ReplayState::default()
    };
    assert!(!s.is_empty(), "a floor");
    let s = ReplayState {
        action_floor: Some(T0),
        ..ReplayState::default()
    };
    assert!(!s.is_empty(), "an action floor");
}

#[test]
fn the_steps_kept_are_max_steps_and_the_one_more_raises_the_floor() {
    let mut s = ReplayState::default();
    for i in 0..MAX_STEPS as u64 {
        s.record_step(step(c0() + i));
    }
    assert_eq!(
        s.steps.len(),
        MAX_STEPS,
        "every one of MAX_STEPS steps is kept"
    );
    assert_eq!(s.floor, None, "nothing was dropped yet");
    s.record_step(step(c0() + MAX_STEPS as u64));
    assert_eq!(s.steps.len(), MAX_STEPS);
    assert!(!s.steps.contains(&step(c0())), "the oldest step left");
    assert_eq!(s.floor, Some(UnixMillis(step(c0()).end().0 - 1)));
    assert!(
        s.step_used(step(c0())),
        "and is still refused, by the floor"
    );
}

#[test]
fn a_step_ending_at_the_windows_start_is_pruned_into_the_floor() {
    let mut s = ReplayState::default();
    s.record_step(step(c0()));
    s.record_step(step(c0() + 1));
    // The window starts where step c0 ends: c0 leaves, c0 + 1 stays.
    s.prune(step(c0()).end());
    assert_eq!(s.steps, vec![step(c0() + 1)]);
    assert_eq!(s.floor, Some(UnixMillis(step(c0()).end().0 - 1)));
    assert!(s.step_used(step(c0())));
    assert!(s.step_used(step(c0() + 1)));
    assert!(!s.step_used(step(c0() + 2)));
}

/// A grant prunes the client's replay state to the window it is checked in: an accepted
/// payload (and its step) from steps ago leave the lists and become the floor (the state stays bounded by
/// the window, not only by `MAX_ACCEPTED`).
#[test]
fn a_grant_prunes_what_left_the_window_into_the_floor() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let c = c0();
    lab.knocks(0, c, T0, v4(2));
    let d = lab.payload(0, c, T0);
    lab.send_payload(0, c, T0, v4(2), &d);
    assert_eq!(lab.tracker.replay_states()[0].accepted.len(), 1);
    let later = at(5, 0);
    let c5 = later.counter(STEP);
    lab.knocks(0, c5, later, v4(3));
    let d5 = lab.payload(0, c5, later);
    lab.send_payload(0, c5, later, v4(3), &d5);
    assert_eq!(lab.grants().len(), 2);
    let state = &lab.tracker.replay_states()[0];
    assert_eq!(
        state
            .accepted
            .iter()
            .map(|a| a.timestamp)
            .collect::<Vec<_>>(),
        vec![later]
    );
    // The floor covers the old payload and its step (which a grant records too).
    assert_eq!(state.floor, Some(UnixMillis(at(1, 0).0 - 1)));
    assert!(
        state.steps.iter().all(|s| s.counter == c5),
        "{:?}",
        state.steps
    );
}
