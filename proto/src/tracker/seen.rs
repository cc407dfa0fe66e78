//! The cache of gate MACs: every datagram that passed the gate, while its step can be in the
//! window, so that a copy is refused before any key work; and the (client, step) pairs some
//! datagram passed the gate for, so that `optional` mode does not grant a step alone when a
//! payload for it was seen.
//!
//! Each client has a share of the cache ([`MAX_SEEN_PER_CLIENT`]) so that one client key (an
//! insider's, a stolen one) cannot crowd out everyone else's entries; a datagram that cannot
//! be remembered is refused, never processed unremembered.
//!
//! Entries of a client the tracker does not have (removed by a reload, or missing from the
//! configuration of a start that restored them) are kept under its public key: ids from the
//! number of clients on are such *gone* clients ([`SeenCache::gone_id`]). They refuse copies,
//! count against no share, are saved at a clean stop and expire like the others; when the key
//! comes back (a reload or a start that has the client again) they are its own again.

use std::collections::HashMap;

use sesame_keys::PublicKey;

use super::UsedStep;
use crate::payload::MAC_LEN;
use crate::time::UnixMillis;

/// Most gate MACs remembered in all.
pub const MAX_SEEN: usize = 1 << 18;
/// Most gate MACs remembered per client (a client knocking 100 times a second for the whole
/// window of the default settings stays below it).
pub const MAX_SEEN_PER_CLIENT: u32 = 1024;

/// A gate MAC seen before: whose, the step whose gate it passed, and until when it matters.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    /// The client (an id from the number of clients on: a gone client's).
    pub(super) client: u32,
    /// The step whose gate it passed ([`UNKNOWN_STEP`] for one restored from a snapshot of
    /// before steps were saved): a later window with that step length recomputes its expiry.
    pub(super) step: UsedStep,
    pub(super) expires: UnixMillis,
}

/// The step of a [`Seen`] MAC whose step is not known (no window has a step length of 0).
pub(super) const UNKNOWN_STEP: UsedStep = UsedStep {
    step_seconds: 0,
    counter: 0,
};

#[derive(Debug)]
pub(super) struct SeenCache {
    macs: HashMap<[u8; MAC_LEN], Seen, foldhash::quality::RandomState>,
    per_client: Vec<u32>,
    /// (client, step) pairs some datagram passed the gate for, and until when. The step has
    /// its length: a record restored or inherited from a run with another `step_seconds`
    /// names other steps than the running one's counters (and matters again if that length
    /// comes back while the record lasts).
    steps: HashMap<(u32, UsedStep), UnixMillis, foldhash::quality::RandomState>,
    /// The keys of gone clients: id `per_client.len() + i` is `gone[i]`. Emptied when no
    /// entry of a gone client is left (it only grows when a tracker is built: from saved or
    /// inherited entries, never from packets).
    gone: Vec<PublicKey>,
    gone_ids: HashMap<PublicKey, u32>,
    /// Per step length, the newest step a record of which (a MAC or a gated step) was
    /// forgotten as expired: no window may admit it or an older step of that length again (a
    /// reload or restart that widens the window after the narrow one forgot a refused
    /// datagram's record would make a copy of it valid: review s22, finding 2). One entry per
    /// step length ever used.
    floors: Vec<UsedStep>,
}

impl SeenCache {
    pub(super) fn new(clients: usize) -> Self {
        SeenCache {
            macs: HashMap::with_hasher(foldhash::quality::RandomState::default()),
            per_client: vec![0; clients],
            steps: HashMap::with_hasher(foldhash::quality::RandomState::default()),
            gone: Vec::new(),
            gone_ids: HashMap::new(),
            floors: Vec::new(),
        }
    }

    /// Notes that the records of `step` (and of every older step of its length) are
    /// forgotten (nothing for [`UNKNOWN_STEP`]).
    pub(super) fn raise_floor(&mut self, step: UsedStep) {
        raise(&mut self.floors, step);
    }

    /// The newest forgotten step of each step length ([`SeenCache::raise_floor`]).
    pub(super) fn floors(&self) -> &[UsedStep] {
        &self.floors
    }

    /// The newest forgotten step of length `step_seconds`, if any.
    pub(super) fn floor(&self, step_seconds: u32) -> Option<u64> {
        self.floors
            .iter()
            .find(|f| f.step_seconds == step_seconds)
            .map(|f| f.counter)
    }

    /// Whether `client` is one of the tracker's clients (not a gone one).
    pub(super) fn is_client(&self, client: u32) -> bool {
        (client as usize) < self.per_client.len()
    }

    /// The id of the gone client with public key `key` (given one on first use).
    pub(super) fn gone_id(&mut self, key: &PublicKey) -> u32 {
        if let Some(&id) = self.gone_ids.get(key) {
            return id;
        }
        let id = u32::try_from(self.per_client.len() + self.gone.len()).unwrap_or(u32::MAX);
        self.gone.push(*key);
        self.gone_ids.insert(*key, id);
        id
    }

    /// The keys of the gone clients, in id order (the first has id `clients`).
    pub(super) fn gone_keys(&self) -> &[PublicKey] {
        &self.gone
    }

    /// The public key of gone client `client`, if it is one.
    pub(super) fn gone_key(&self, client: u32) -> Option<&PublicKey> {
        (client as usize)
            .checked_sub(self.per_client.len())
            .and_then(|i| self.gone.get(i))
    }

    pub(super) fn len(&self) -> usize {
        self.macs.len()
    }

    pub(super) fn get(&self, mac: &[u8; MAC_LEN]) -> Option<&Seen> {
        self.macs.get(mac)
    }

    /// Remembers `mac`, which passed the gate of `client`'s `step`, until `expires`; false
    /// (nothing remembered) when the client's share or the cache is full. A known MAC is kept,
    /// until the later of its two expiries (true).
    pub(super) fn insert(
        &mut self,
        mac: [u8; MAC_LEN],
        client: u32,
        step: UsedStep,
        expires: UnixMillis,
    ) -> bool {
        if let Some(s) = self.macs.get_mut(&mac) {
            s.expires = s.expires.max(expires);
            return true;
        }
        if self.macs.len() >= MAX_SEEN {
            return false;
        }
        // A gone client's entries count against no share.
        if let Some(n) = self.per_client.get_mut(client as usize) {
            if *n >= MAX_SEEN_PER_CLIENT {
                return false;
            }
            *n += 1;
        }
        self.macs.insert(
            mac,
            Seen {
                client,
                step,
                expires,
            },
        );
        true
    }

    /// Records that a datagram passed the gate of (client, step), until `expires` (a known
    /// record is kept until the later of its two expiries). False (nothing recorded) when the
    /// record is full: bounded like the MACs, one entry per gated datagram at most.
    #[must_use]
    pub(super) fn gated(&mut self, client: u32, step: UsedStep, expires: UnixMillis) -> bool {
        if let Some(e) = self.steps.get_mut(&(client, step)) {
            *e = (*e).max(expires);
            return true;
        }
        if self.steps.len() >= MAX_SEEN {
            return false;
        }
        self.steps.insert((client, step), expires);
        true
    }

    /// Whether a datagram passed the gate of (client, step).
    pub(super) fn was_gated(&self, client: u32, step: UsedStep) -> bool {
        self.steps.contains_key(&(client, step))
    }

    /// Forgets what expired at `now`.
    pub(super) fn expire(&mut self, now: UnixMillis) {
        let per_client = &mut self.per_client;
        let floors = &mut self.floors;
        self.macs.retain(|_, s| {
            let keep = s.expires > now;
            if !keep {
                if let Some(n) = per_client.get_mut(s.client as usize) {
                    *n = n.saturating_sub(1);
                }
                raise(floors, s.step);
            }
            keep
        });
        self.steps.retain(|&(_, step), e| {
            let keep = *e > now;
            if !keep {
                raise(floors, step);
            }
            keep
        });
        if !self.gone.is_empty() {
            let clients = self.per_client.len();
            let gone = |c: u32| c as usize >= clients;
            if !self.macs.values().any(|s| gone(s.client))
                && !self.steps.keys().any(|(c, _)| gone(*c))
            {
                self.gone.clear();
                self.gone_ids.clear();
            }
        }
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

/// Raises the floor of `step`'s length in `floors` to `step` (nothing for [`UNKNOWN_STEP`]).
pub(super) fn raise(floors: &mut Vec<UsedStep>, step: UsedStep) {
    if step.step_seconds == UNKNOWN_STEP.step_seconds {
        return;
    }
    match floors
        .iter_mut()
        .find(|f| f.step_seconds == step.step_seconds)
    {
        Some(f) => f.counter = f.counter.max(step.counter),
        None => floors.push(step),
    }
}
