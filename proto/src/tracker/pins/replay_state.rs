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
