//! The cache of gate MACs and gated steps (`seen.rs`): when an entry expires (at its expiry,
//! not a millisecond later), that an expired MAC gives its client's share back, that the gated
//! steps are bounded like the MACs, and that a reload takes the MACs over.

use super::*;
use crate::tracker::seen::{MAX_SEEN, MAX_SEEN_PER_CLIENT, SeenCache};

fn mac(i: u32) -> [u8; MAC_LEN] {
    let mut m = [0u8; MAC_LEN];
    m[..4].copy_from_slice(&i.to_le_bytes());
    m
}

/// The step a MAC passed the gate of (what it is does not matter here).
fn step0() -> UsedStep {
    UsedStep {
        step_seconds: STEP,
        counter: c0(),
    }
}

#[test]
fn a_seen_mac_is_forgotten_at_its_expiry_and_kept_until_then() {
    let mut cache = SeenCache::new(1);
    let until = T0.plus_millis(5000);
    assert!(cache.insert(mac(1), 0, step0(), until));
    cache.expire(T0.plus_millis(4999));
    assert!(
        cache.get(&mac(1)).is_some(),
        "kept a millisecond before its expiry"
    );
    assert_eq!(cache.shares(), &[1]);
    cache.expire(until);
    assert!(cache.get(&mac(1)).is_none(), "forgotten at its expiry");
    assert_eq!(cache.shares(), &[0]);
}

#[test]
fn a_gated_step_is_forgotten_at_its_expiry_and_kept_until_then() {
    let mut cache = SeenCache::new(1);
    let until = T0.plus_millis(5000);
    let step = |counter| UsedStep {
        step_seconds: STEP,
        counter,
    };
    assert!(cache.gated(0, step(7), until));
    cache.expire(T0.plus_millis(4999));
    assert!(cache.was_gated(0, step(7)));
    assert!(
        !cache.was_gated(
            0,
            UsedStep {
                step_seconds: STEP * 2,
                counter: 7
            }
        ),
        "a step of another length is another step"
    );
    cache.expire(until);
    assert!(!cache.was_gated(0, step(7)));
}

#[test]
fn an_expired_mac_gives_its_clients_share_back() {
    let mut cache = SeenCache::new(2);
    let early = T0.plus_millis(1000);
    let late = T0.plus_millis(9000);
    for i in 0..MAX_SEEN_PER_CLIENT {
        assert!(cache.insert(mac(i), 0, step0(), early));
    }
    assert!(cache.insert(mac(1 << 20), 1, step0(), late));
    assert!(
        !cache.insert(mac(1 << 21), 0, step0(), late),
        "client 0's share is full"
    );
    assert_eq!(cache.shares(), &[MAX_SEEN_PER_CLIENT, 1]);
    cache.expire(early);
    // Client 0's entries left and their share with them; client 1's entry stays, and so does
    // its share.
    assert_eq!(cache.shares(), &[0, 1]);
    assert_eq!(cache.len(), 1);
    assert!(cache.insert(mac(1 << 21), 0, step0(), late));
}

#[test]
fn the_gated_steps_are_bounded_like_the_macs() {
    let mut cache = SeenCache::new(1);
    let until = T0.plus_millis(5000);
    let step = |counter| UsedStep {
        step_seconds: STEP,
        counter,
    };
    for counter in 0..MAX_SEEN as u64 {
        assert!(cache.gated(0, step(counter), until));
    }
    assert!(
        !cache.gated(0, step(MAX_SEEN as u64), until),
        "one past the bound is refused"
    );
    assert_eq!(cache.gated_steps().count(), MAX_SEEN);
    assert!(
        !cache.was_gated(0, step(MAX_SEEN as u64)),
        "one past the bound is not recorded"
    );
    // A step already recorded is kept, until the later expiry, when the record is full.
    let later = until.plus_millis(1);
    assert!(cache.gated(0, step(7), later));
    cache.expire(until);
    assert_eq!(cache.gated_steps().count(), 1);
    assert!(cache.was_gated(0, step(7)));
}

#[test]
fn a_reloaded_tracker_takes_over_the_macs_the_old_one_saw() {
    // A datagram that passed the old tracker's gate stays known after a reload, so a copy is
    // refused before any key work.
    let c = c0();
    let mut old = Lab::new(PayloadMode::Required, 1);
    old.knocks(0, c, T0, v4(2));
    let d = old.payload(0, c, T0);
    old.send_payload(0, c, T0, v4(2), &d);
    assert_eq!(old.grants(), vec![(ClientId(0), c)]);
    let macs: Vec<[u8; MAC_LEN]> = old.tracker.seen.iter().map(|(m, _)| *m).collect();
    assert_eq!(macs.len(), 1);
    let mut reloaded = Lab::new(PayloadMode::Required, 1);
    reloaded.tracker.inherit_seen(&old.tracker);
    assert_eq!(reloaded.tracker.seen.len(), 1);
    let seen = reloaded
        .tracker
        .seen
        .get(&macs[0])
        .expect("the MAC is known");
    assert_eq!(seen.client, 0);
}

/// A clean start remembers only the saved gate MACs that have not expired: one whose expiry is
/// the start itself is dropped (an entry lives until its expiry, not a millisecond later).
#[test]
fn a_start_remembers_only_the_macs_that_have_not_expired() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let client = *lab.tracker.clients_shared()[0].keys.client_public();
    let saved = |expires: UnixMillis, byte: u8| SeenMac {
        mac: [byte; MAC_LEN],
        client,
        step: None,
        expires,
    };
    let now = at(1, 0);
    lab.tracker
        .remember_seen(&[saved(now, 1), saved(now.plus_millis(1), 2)], None, now);
    let kept: Vec<[u8; MAC_LEN]> = lab.tracker.seen_list().iter().map(|m| m.mac).collect();
    assert_eq!(kept, vec![[2; MAC_LEN]]);
}

/// A replay state brought over to a new tracker (`update_replay`, a reload built off the packet
/// thread) remembers the gate MACs of its accepted payloads while they can still pass a gate,
/// and not once their expiry has come.
#[test]
fn a_replay_state_brought_over_remembers_its_macs_until_they_expire() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let key = *lab.tracker.clients_shared()[0].keys.client_public();
    let expires = lab.tracker.seen_expiry(c0());
    let state = ReplayState {
        accepted: vec![AcceptedPayload {
            timestamp: T0,
            mac: [7; MAC_LEN],
        }],
        ..ReplayState::default()
    };
    for (now, remembered) in [
        (T0, true),
        (expires.offset_millis(-1), true),
        (expires, false),
    ] {
        let mut lab = Lab::new(PayloadMode::Required, 1);
        assert!(lab.tracker.update_replay(&key, state.clone(), now));
        let macs: Vec<[u8; MAC_LEN]> = lab.tracker.seen_list().iter().map(|m| m.mac).collect();
        assert_eq!(
            macs == vec![[7; MAC_LEN]],
            remembered,
            "at {now:?}: {macs:?}"
        );
    }
    assert!(
        !lab.tracker
            .update_replay(&PrivateKey::generate().public_key(), state, T0)
    );
}

/// The entries of a client the tracker does not have (a gone one) are kept under its key,
/// count against no share, and the key is forgotten when the last of them expires.
#[test]
fn a_gone_clients_entries_count_against_no_share_and_leave_with_their_expiry() {
    let mut cache = SeenCache::new(1);
    let key = client_key(9).public_key();
    let id = cache.gone_id(&key);
    assert_eq!((id, cache.gone_id(&key)), (1, 1), "one id per key");
    assert!(cache.is_client(0) && !cache.is_client(id));
    for i in 0..=MAX_SEEN_PER_CLIENT {
        assert!(cache.insert(mac(i), id, step0(), T0.plus_millis(5000)));
    }
    assert_eq!(cache.shares(), &[0]);
    let step = UsedStep {
        step_seconds: STEP,
        counter: 7,
    };
    assert!(cache.gated(id, step, T0.plus_millis(9000)));
    cache.expire(T0.plus_millis(5000));
    assert_eq!(cache.len(), 0);
    assert_eq!(cache.gone_key(id), Some(&key), "its gated step is left");
    cache.expire(T0.plus_millis(9000));
    assert_eq!(cache.gone_key(id), None);
    assert!(cache.gone_keys().is_empty());
}

/// A gated step that cannot be recorded (the record is full) refuses its datagram, as a MAC
/// that cannot be remembered does: in `optional` mode a payload processed without its step's
/// record would leave the step open to a sequence-only grant (review s21, finding 8; before,
/// the record was dropped silently and the payload opened).
#[test]
fn a_payload_whose_gated_step_cannot_be_recorded_is_refused() {
    let c = c0();
    let mut lab = Lab::new(PayloadMode::Optional, 1);
    let far = T0.plus_millis(1_000_000);
    for counter in 0..MAX_SEEN as u64 {
        // Steps of another length: they leave the running one's steps alone.
        let other = UsedStep {
            step_seconds: STEP * 2,
            counter,
        };
        assert!(lab.tracker.seen.gated(0, other, far));
    }
    lab.knocks(0, c, T0, v4(2));
    let d = lab.payload(0, c, T0);
    lab.send_payload(0, c, T0, v4(2), &d);
    let events = lab.take();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Rejected {
                reason: Reason::RateLimited,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Granted(g) if g.mac.is_some())),
        "the payload opened: {events:?}"
    );
}

/// A saved gate MAC whose step is not known (a snapshot of before the MAC steps), saved under a
/// window one skew step narrower than this tracker's, is remembered one step longer: exactly
/// `step_seconds` × 1000 ms (mutation: `*` to `+` in `widening` shortened it to 1 030 ms).
#[test]
fn a_saved_mac_of_an_unknown_step_is_widened_by_whole_steps() {
    let mut lab = Lab::new(PayloadMode::Required, 1);
    let client = *lab.tracker.clients_shared()[0].keys.client_public();
    let now = at(1, 0);
    let saved = now.plus_millis(1_000);
    let narrower = SavedWindow {
        skew_steps: SKEW_STEPS - 1,
        ..lab.tracker.config.saved_window()
    };
    lab.tracker.remember_seen(
        &[SeenMac {
            mac: [9; MAC_LEN],
            client,
            step: None,
            expires: saved,
        }],
        Some(narrower),
        now,
    );
    let kept: Vec<UnixMillis> = lab.tracker.seen_list().iter().map(|m| m.expires).collect();
    assert_eq!(kept, vec![saved.plus_millis(STEP_MS)]);
}

/// The gate MACs of two removed clients stay theirs, whatever their number: each gone client
/// gets an id after the tracker's clients (mutation: `+` to `-` in `gone_id` gave the second
/// one the id of a client of this tracker, whose MAC it then became).
#[test]
fn the_macs_of_two_removed_clients_stay_theirs() {
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let gone = |byte: u8| sesame_keys::PublicKey::from_bytes([byte; 32]);
    let now = at(1, 0);
    let saved = |byte: u8| SeenMac {
        mac: [byte; MAC_LEN],
        client: gone(byte),
        step: None,
        expires: now.plus_millis(STEP_MS),
    };
    lab.tracker
        .remember_seen(&[saved(0xa1), saved(0xa2)], None, now);
    let mut kept: Vec<([u8; MAC_LEN], sesame_keys::PublicKey)> = lab
        .tracker
        .seen_list()
        .iter()
        .map(|m| (m.mac, m.client))
        .collect();
    kept.sort_by_key(|(mac, _)| *mac);
    assert_eq!(
        kept,
        vec![([0xa1; MAC_LEN], gone(0xa1)), ([0xa2; MAC_LEN], gone(0xa2))]
    );
}
