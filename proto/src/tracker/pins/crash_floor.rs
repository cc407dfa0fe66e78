//! The floors a start after a crash sets (`Tracker::keep_crash_floor`, from `after_crash`):
//! what is refused is strictly before the floor. A payload stamped at the floor, and a step
//! that starts at it, are of the time after the crash's reach and are granted.

use super::*;

#[test]
fn an_unbound_payload_stamped_at_the_crash_floor_is_granted_and_one_before_it_refused() {
    let floor = at(2, 0);
    let c = floor.counter(STEP);
    for (stamp, granted) in [(floor, true), (floor.offset_millis(-1), false)] {
        let mut lab = Lab::new(PayloadMode::Required, 1);
        lab.tracker.keep_crash_floor(floor);
        lab.knocks(0, c, floor, v4(2));
        let d = lab.payload(0, c, stamp);
        lab.send_payload(0, c, floor, v4(2), &d);
        assert_eq!(
            lab.grants().len(),
            usize::from(granted),
            "stamped {stamp:?}"
        );
    }
}

#[test]
fn optional_mode_a_step_starting_at_the_crash_floor_gets_its_sequence_grant() {
    let floor = at(2, 0);
    for (steps, granted) in [(2, true), (1, false)] {
        let mut lab = Lab::new(PayloadMode::Optional, 1);
        lab.tracker.keep_crash_floor(floor);
        let now = floor.plus_millis(10);
        let c = at(steps, 0).counter(STEP);
        lab.knocks(0, c, now, v4(2));
        lab.tracker
            .handle_timeout(now.plus_millis(TIMEOUT_MS), &mut lab.events);
        assert_eq!(lab.grants().len(), usize::from(granted), "step {steps}");
    }
}
