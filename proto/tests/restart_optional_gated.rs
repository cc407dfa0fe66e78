//! In `optional` mode a step for which some payload datagram passed the gate gets no
//! sequence-only grant (the rule of the protocol-2 review). That record (the tracker's gated
//! steps) was not in what a clean stop saves (`seen_list`: MACs only), so after a clean
//! restart inside the window, an observer's copy of the client's knock (the sequence without
//! the payload, which was refused) got the sequence-only grant for the address it was sent
//! from. A clean stop now saves the gated steps too (`gated_list`), and the next start
//! remembers them (`remember_gated`), as sesamed does with its snapshot.
//!
//! Found by the attacker review; without `remember_gated` the `restart = true` case is granted.

#![allow(clippy::unwrap_used)]

mod common;

use common::{attacker, client, granted_to, knock, payload, refused_request};
use sesame_fixtures::{T0, client_key};
use sesame_proto::params::PayloadMode;
use sesame_proto::tracker::ReplayState;
use sesame_proto::{Tracker, UnixMillis};

/// `optional` mode, one step of skew, a 5 s payload timeout.
fn tracker(now: UnixMillis, replay: Vec<ReplayState>) -> Tracker {
    common::tracker(common::config(1, PayloadMode::Optional), now, replay)
}

#[test]
fn a_clean_restart_remembers_which_steps_had_a_payload() {
    let (client, attacker) = (client(), attacker());
    let k = T0.counter(30);
    // The client's payload, bound to its address, refused (it asks for tcp/23, not allowed;
    // a payload burnt because a spoofed packet broke its sequence is gated the same way).
    let request = refused_request(T0.plus_millis(1_000), 1, Some(client));
    let d = payload(k, &request);
    for restart in [false, true] {
        let mut t = tracker(T0, Vec::new());
        let ev = knock(&mut t, T0.plus_millis(1_000), client, k, Some(&d));
        assert_eq!(granted_to(&ev), None, "{ev:?}");
        if restart {
            // A clean stop saves the replay states, the MACs seen and the gated steps; the
            // next start remembers them (as sesamed does: Tracker::new, then remember_seen
            // and remember_gated).
            let replay = t.replay_states().to_vec();
            let seen = t.seen_list();
            let gated = t.gated_list();
            assert_eq!(gated.len(), 1, "the refused payload's step: {gated:?}");
            let now = T0.plus_millis(10_000);
            let window = t.config().saved_window();
            t = tracker(now, replay);
            t.remember_seen(&seen, Some(window), now);
            t.remember_gated(&gated, now);
        }
        // The observer replays the captured sequence, without the payload, from its address.
        let ev = knock(&mut t, T0.plus_millis(15_000), attacker, k, None);
        assert_eq!(granted_to(&ev), None, "restart = {restart}: {ev:?}");
    }
}

/// What is saved is forgotten when it expires, and a saved step of another client is not
/// taken for this one's (it is kept under that client's key, which a reload may bring back:
/// `removed_client_window.rs`).
#[test]
fn remembered_gated_steps_expire_and_belong_to_their_client() {
    let attacker = attacker();
    let k = T0.counter(30);
    let mut gated = sesame_proto::tracker::GatedStep {
        client: client_key(2).public_key(),
        step: sesame_proto::tracker::UsedStep {
            step_seconds: 30,
            counter: k,
        },
        expires: T0.plus_millis(100_000),
    };
    let mut t = tracker(T0, Vec::new());
    t.remember_gated(&[gated], T0);
    assert_eq!(t.gated_list(), vec![gated], "kept under its client's key");
    let ev = knock(&mut t, T0.plus_millis(1_000), attacker, k, None);
    assert_eq!(granted_to(&ev), Some(attacker), "not the laptop's: {ev:?}");
    let mut t = tracker(T0, Vec::new());
    gated.client = client_key(1).public_key();
    t.remember_gated(&[gated], gated.expires);
    assert!(t.gated_list().is_empty(), "expired");
    t.remember_gated(&[gated], T0);
    assert_eq!(t.gated_list(), vec![gated]);
    let ev = knock(&mut t, T0.plus_millis(1_000), attacker, k, None);
    assert_eq!(granted_to(&ev), None, "{ev:?}");
}
