//! The cache of gate MACs: every datagram that passed the gate, while its step can be in the
//! window, so that a copy is refused before any key work; and the (client, step) pairs some
//! datagram passed the gate for, so that `optional` mode does not grant a step alone when a
//! payload for it was seen.
//!
//! Each client has a share of the cache ([`MAX_SEEN_PER_CLIENT`]) so that one client key (an
//! insider's, a stolen one) cannot crowd out everyone else's entries; a datagram that cannot
//! be remembered is refused, never processed unremembered.

use std::collections::HashMap;

use super::UsedStep;
use crate::payload::MAC_LEN;
use crate::time::UnixMillis;

/// Most gate MACs remembered in all.
pub const MAX_SEEN: usize = 1 << 18;
/// Most gate MACs remembered per client (a client knocking 100 times a second for the whole
/// window of the default settings stays below it).
pub const MAX_SEEN_PER_CLIENT: u32 = 1024;

/// A client index that no longer exists (a client removed by a reload): its entries still
/// refuse copies, and count against no share.
pub(super) const GONE: u32 = u32::MAX;

/// A gate MAC seen before: whose, and until when it matters.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) client: u32,
    pub(super) expires: UnixMillis,
}

#[derive(Debug)]
pub(super) struct SeenCache {
    macs: HashMap<[u8; MAC_LEN], Seen, foldhash::quality::RandomState>,
    per_client: Vec<u32>,
    /// (client, step) pairs some datagram passed the gate for, and until when. The step has
    /// its length: a record restored or inherited from a run with another `step_seconds`
    /// names other steps than the running one's counters (and matters again if that length
    /// comes back while the record lasts).
    steps: HashMap<(u32, UsedStep), UnixMillis, foldhash::quality::RandomState>,
}

impl SeenCache {
    pub(super) fn new(clients: usize) -> Self {
        SeenCache {
            macs: HashMap::with_hasher(foldhash::quality::RandomState::default()),
            per_client: vec![0; clients],
            steps: HashMap::with_hasher(foldhash::quality::RandomState::default()),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.macs.len()
    }

    pub(super) fn get(&self, mac: &[u8; MAC_LEN]) -> Option<&Seen> {
        self.macs.get(mac)
    }

    /// Remembers `mac` for `client` until `expires`; false (nothing remembered) when the
    /// client's share or the cache is full. A known MAC is kept as it is (true).
    pub(super) fn insert(&mut self, mac: [u8; MAC_LEN], client: u32, expires: UnixMillis) -> bool {
        if self.macs.contains_key(&mac) {
            return true;
        }
        if self.macs.len() >= MAX_SEEN {
            return false;
        }
        if client != GONE {
            let Some(n) = self.per_client.get_mut(client as usize) else {
                return false;
            };
            if *n >= MAX_SEEN_PER_CLIENT {
                return false;
            }
            *n += 1;
        }
        self.macs.insert(mac, Seen { client, expires });
        true
    }

    /// Records that a datagram passed the gate of (client, step).
    pub(super) fn gated(&mut self, client: u32, step: UsedStep, expires: UnixMillis) {
        // Bounded like the MACs: one entry per gated datagram at most.
        if self.steps.len() < MAX_SEEN {
            let e = self.steps.entry((client, step)).or_insert(expires);
            *e = (*e).max(expires);
        }
    }

    /// Whether a datagram passed the gate of (client, step).
    pub(super) fn was_gated(&self, client: u32, step: UsedStep) -> bool {
        self.steps.contains_key(&(client, step))
    }

    /// Forgets what expired at `now`.
    pub(super) fn expire(&mut self, now: UnixMillis) {
        let per_client = &mut self.per_client;
        self.macs.retain(|_, s| {
            let keep = s.expires > now;
            if !keep {
                if let Some(n) = per_client.get_mut(s.client as usize) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
        self.steps.retain(|_, e| *e > now);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8; MAC_LEN], &Seen)> {
        self.macs.iter()
    }

    /// Every (client, step, until) some datagram passed the gate for.
    pub(super) fn gated_steps(&self) -> impl Iterator<Item = (u32, UsedStep, UnixMillis)> + '_ {
        self.steps.iter().map(|(&(c, k), &e)| (c, k, e))
    }

    /// The entries of each client (for the invariant checks).
    #[cfg(any(test, fuzzing, feature = "test-hooks"))]
    pub(super) fn shares(&self) -> &[u32] {
        &self.per_client
    }
}
