//! Scenario 5: a client clock off by more than the skew window is refused; within it works.

use sesame_tests::{Family, Host, require_netns};

use crate::common::{Fixture, SETTLE};

fn scenario(tag: &str, length: u32) {
    let mut f = Fixture::new(tag);
    f.spec.knock.length = length;
    f.spec.knock.step_seconds = 30;
    f.spec.knock.skew_steps = 1;
    f.start();
    // 75 s is always at least two 30-second steps away; refused ones come first so that no
    // accepted timestamp can explain the refusal.
    for offset in ["75", "-75", "3600"] {
        let mark = f.mark();
        f.knock(&["--time-offset", offset]);
        std::thread::sleep(SETTLE);
        f.assert_no_grant(mark, &format!("clock off by {offset} s"));
        f.assert_closed(Family::V4, 22, &format!("clock off by {offset} s"));
    }
    let mark = f.mark();
    f.knock(&["--time-offset", "20"]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "clock 20 s ahead is within the skew"
    );
}

#[test]
fn s5_clock_skew() {
    if !require_netns() {
        return;
    }
    scenario("s5-clock", 3);
}

#[test]
fn s5_clock_skew_single_packet() {
    if !require_netns() {
        return;
    }
    scenario("s5-clock-spa", 0);
}
