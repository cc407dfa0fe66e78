//! Review s22, finding 3: the keys of gone clients were never dropped one by one. Every
//! client a reload removed got a gone id in `inherit_seen` (with or without entries), every
//! old gone key was carried to the next tracker (again with or without entries), and
//! `SeenCache::expire` empties the list only when no gone client has any entry left. Config
//! churn that keeps one gone entry alive at every moment made the list, and the per-reload
//! work on the packet thread at the swap, grow with every key ever removed. `inherit_seen` now
//! gives a gone id only to a key whose entry it carries. Before the fix this failed with "400
//! gone keys kept for at most 4 gone clients with entries".

use super::*;

/// A tracker whose clients are keys `ids` (fixtures' client keys), started at `now`.
fn tracker_of(ids: &[u64], now: UnixMillis) -> Tracker {
    let server = server_key();
    let entries = ids
        .iter()
        .map(|&i| ClientEntry {
            name: format!("client{i}"),
            keys: ClientKeys::for_server(&server, &client_key(i).public_key(), None).unwrap(),
            policy: Policy {
                allow: vec![tcp22()],
                ..Policy::default()
            },
        })
        .collect();
    Tracker::new(
        config(PayloadMode::Required),
        server,
        entries,
        Vec::new(),
        now,
    )
    .unwrap()
}

#[test]
fn gone_keys_without_entries_are_dropped_under_config_churn() {
    // Client 1 stays; every reload (every 10 s) removes the rotating client and adds a new one
    // (key rotation, offboarding). Just before each reload the rotating client has one
    // remembered gate MAC (it knocked in the last window), so at every moment some gone client
    // has an entry; each expires ~60 s later.
    let reloads = 400u64;
    let mut now = T0;
    let mut t = tracker_of(&[1, 100], now);
    for r in 0..reloads {
        let rotating = 100 + r;
        let id = t.by_key[&client_key(rotating).public_key()];
        let counter = now.counter(STEP);
        let mut m = [0u8; MAC_LEN];
        m[..8].copy_from_slice(&rotating.to_le_bytes());
        assert!(
            t.seen
                .insert(m, id, t.used_step(counter), t.seen_expiry(counter))
        );
        now = now.plus_millis(10_000);
        let mut events = Vec::new();
        t.handle_timeout(now, &mut events);
        let mut next = tracker_of(&[1, rotating + 1], now);
        next.inherit_seen(&t);
        t = next;
    }
    let mut events = Vec::new();
    t.handle_timeout(now, &mut events);
    let with_entries: std::collections::HashSet<u32> = t
        .seen
        .iter()
        .map(|(_, s)| s.client)
        .filter(|c| !t.seen.is_client(*c))
        .collect();
    let kept = t.seen.gone_keys().len();
    eprintln!(
        "kept={kept} with_entries={} len={}",
        with_entries.len(),
        t.seen.len()
    );
    assert!(
        kept <= with_entries.len() + 1,
        "{kept} gone keys kept for at most {} gone clients with entries",
        with_entries.len()
    );
}

/// A reload carries each client's gate MACs and gated steps to that client's id in the new
/// tracker (looked up lazily since finding 3): client 2 (id 1 before and after) keeps its own,
/// removed client 1 (id 0 before) gets a gone id for its MAC, and new client 3 (id 0 after)
/// gets nothing.
#[test]
fn a_reload_carries_each_clients_entries_to_that_client() {
    let now = T0;
    let mut t = tracker_of(&[1, 2], now);
    let counter = now.counter(STEP);
    let step = t.used_step(counter);
    let until = t.seen_expiry(counter);
    assert!(t.seen.insert([8; MAC_LEN], 0, step, until));
    assert!(t.seen.insert([9; MAC_LEN], 1, step, until));
    assert!(t.seen.gated(1, step, until));
    let mut next = tracker_of(&[3, 2], now);
    next.inherit_seen(&t);
    assert_eq!(next.seen.get(&[9; MAC_LEN]).map(|s| s.client), Some(1));
    assert_eq!(next.seen.get(&[8; MAC_LEN]).map(|s| s.client), Some(2));
    assert!(next.seen.was_gated(1, step));
    assert!(!next.seen.was_gated(0, step));
    assert_eq!(next.seen.gone_keys(), &[client_key(1).public_key()]);
}

/// Each step length has one floor of forgotten steps, and it only rises.
#[test]
fn the_floor_of_forgotten_steps_rises_per_step_length() {
    let mut t = tracker_of(&[1], T0);
    let step = |s: u32, c: u64| UsedStep {
        step_seconds: s,
        counter: c,
    };
    t.seen.raise_floor(step(30, 10));
    t.seen.raise_floor(step(30, 12));
    t.seen.raise_floor(step(30, 11));
    t.seen.raise_floor(step(10, 5));
    t.seen.raise_floor(step(0, 99));
    assert_eq!(t.seen.floor(30), Some(12));
    assert_eq!(t.seen.floor(10), Some(5));
    assert_eq!(t.seen.floors().len(), 2);
}

/// The step before a saved window at `now`: what a snapshot of before the `forgotten` lines
/// counts as forgotten at the start (sesamed), and the floor a clean stop saves for the
/// running window ([`Tracker::forgotten_steps`]).
#[test]
fn the_step_before_a_saved_window() {
    let w = SavedWindow {
        step_seconds: 30,
        skew_steps: 1,
        timeout_ms: 5_000,
    };
    let now = UnixMillis::from_secs(30 * 100 + 7);
    assert_eq!(
        w.step_before(now),
        Some(UsedStep {
            step_seconds: 30,
            counter: 98
        })
    );
    let t = tracker_of(&[1], now);
    assert_eq!(t.config.saved_window(), w);
    assert_eq!(t.forgotten_steps(now), vec![w.step_before(now).unwrap()]);
    // Before the window's first step, and without a step length: none.
    assert_eq!(w.step_before(UnixMillis::from_secs(30 + 7)), None);
    let none = SavedWindow {
        step_seconds: 0,
        ..w
    };
    assert_eq!(none.step_before(now), None);
}
