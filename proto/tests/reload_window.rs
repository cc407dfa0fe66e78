//! A reload that widens the acceptance window (a larger `skew_steps`, a longer payload
//! timeout) must remember the gate MACs of refused or burnt datagrams for as long as the new
//! window admits their step. `Tracker::inherit_seen` copied the old expiry: once it passed, the
//! new window still admitted the step, the MAC was forgotten, and a captured unbound knock that
//! sesamed had refused (here: too far ahead; the same holds for a payload burnt because its
//! sequence was broken) was granted to whoever replayed it.

#![allow(clippy::unwrap_used)]

mod common;

use common::{STEP, attacker, client, config, outcome, send, tracker, unbound};
use sesame_fixtures::T0;
use sesame_proto::params::PayloadMode;
use sesame_proto::{Tracker, TrackerConfig, UnixMillis};

fn window(skew: u32, now: UnixMillis) -> Tracker {
    let config = TrackerConfig {
        max_ahead_ms: 2_000,
        ..config(skew, PayloadMode::Required)
    };
    tracker(config, now, Vec::new())
}

#[test]
fn a_refused_unbound_knock_stays_refused_after_a_reload_widens_the_window() {
    let (client, attacker) = (client(), attacker());
    let k = T0.counter(STEP);
    assert_eq!(
        UnixMillis::from_secs(k * u64::from(STEP)),
        T0,
        "T0 starts a step"
    );

    // The client's clock is 19 s ahead; it knocks unbound (behind a NAT, no STUN). The
    // payload is stamped T0 + 20 s, in step k, and refused as too far ahead (max_ahead 2 s).
    let datagram = unbound(T0.plus_millis(20_000));

    for reload in [false, true] {
        let mut old = window(1, T0);
        let now = T0.plus_millis(1_000);
        let first = send(&mut old, now, client, k, Some(&datagram), now);
        assert_eq!(outcome(&first), "rejected: too_far_ahead");

        // The operator reloads with skew_steps = 3 (the tracker is rebuilt, seen MACs
        // inherited), or does not.
        let mut t = if reload {
            let mut new = window(3, T0.plus_millis(2_000));
            new.inherit_seen(&old);
            new
        } else {
            old
        };

        // 61 s later (step k + 2) the attacker replays the captured knock from its address.
        let later = T0.plus_millis(61_000);
        let replayed = send(&mut t, later, attacker, k, Some(&datagram), later);
        assert!(
            !outcome(&replayed).starts_with("granted"),
            "reload = {reload}: a captured knock that sesamed refused was granted to the attacker after a reload widened the window: {replayed:?}"
        );
    }
}
