//! The lease table: which services are open for which address on whose behalf, until when, and
//! what the firewall backend must do about it.
//!
//! Pure, in the manner of `sesame_proto::Tracker`: `now` is a parameter of every call, nothing
//! here reads the clock or does I/O. The firewall task feeds it grants, the backend's answers,
//! ticks, reloads and table rebuilds, and carries out the [`Action`]s it returns.
//!
//! * A lease is keyed by the client's **public key** (not its name), the address and the
//!   service: a key rotated under the same name is another lease, and the old key's leases end
//!   when the old key goes.
//! * Backends that keep one firewall element per (address, service) ([`Traits::shared_elements`],
//!   nftables) count its owners: two clients behind one NAT share the element, and one of them
//!   ending or being removed does not end the other's access. The element always carries the
//!   latest end of its owners.
//! * A knock for a lease with more than half of its time left changes nothing when a refresh
//!   costs a firewall transaction ([`Traits::refresh_costs`]); otherwise it extends the lease.
//! * Backends that run hooks for new leases ([`Traits::hooks`]) spend a client credit per
//!   knock (a token bucket: `burst` credits, one more per `cooldown`).
//! * After the backend's table was rebuilt (someone flushed the ruleset), every active element
//!   is opened again for the time its owners have left.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use sesame_keys::PublicKey;
use sesame_proto::{Service, UnixMillis};

/// One lease's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    /// The client's public key.
    pub client: PublicKey,
    /// The address let in: the first address of the block when `prefix` is shorter than the
    /// address (a client's `lease_prefix_v4`/`_v6`).
    pub address: IpAddr,
    /// The block's prefix length (32 or 128: the address alone).
    pub prefix: u8,
    /// The service opened.
    pub service: Service,
}

impl LeaseKey {
    /// The firewall element this lease uses.
    pub fn element(&self) -> Element {
        Element {
            address: self.address,
            prefix: self.prefix,
            service: self.service,
        }
    }
}

/// The prefix length of one address: 32 for IPv4, 128 for IPv6.
pub fn full_prefix(address: IpAddr) -> u8 {
    if address.is_ipv4() { 32 } else { 128 }
}

/// `address` with the bits after `prefix` cleared (the first address of its block).
pub fn block_start(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => {
            let p = u32::from(prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let p = u32::from(prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

/// `198.18.0.2`, or `198.18.0.0/24` for a block.
pub fn show_address(address: IpAddr, prefix: u8) -> String {
    if prefix >= full_prefix(address) {
        address.to_string()
    } else {
        format!("{address}/{prefix}")
    }
}

/// A firewall element: a service open for an address (or a block of addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// The address (the block's first).
    pub address: IpAddr,
    /// The block's prefix length (32 or 128: the address alone).
    pub prefix: u8,
    /// The service.
    pub service: Service,
}

/// How a backend wants leases handled (each backend says it of itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traits {
    /// Leases of one (address, service) share one firewall element, which must stay while any
    /// owner's lease does and carry the latest end (nftables).
    pub shared_elements: bool,
    /// The backend ends leases itself (kernel timeouts): no close action at a lease's end.
    pub expires_itself: bool,
    /// A refresh costs a firewall transaction: do it only once less than half of the lease is
    /// left. Otherwise a knock extends the lease in this table alone.
    pub refresh_costs: bool,
    /// Opening a lease runs a hook: new leases spend the client's credits.
    pub hooks: bool,
    /// The backend deletes an element when it is used (connection-bound leases): a lease this
    /// table holds may be gone from the kernel, so every knock opens again (never "kept"),
    /// and a rebuilt table gets nothing back (a used-up lease would open twice).
    pub used_up: bool,
    /// Most actions the backend runs at once.
    pub concurrency: usize,
}

/// Lease settings from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long a lease lasts.
    pub lease_ms: u64,
    /// Per client, the time to earn one more hook run.
    pub cooldown_ms: u64,
    /// Per client, hook runs allowed in a burst.
    pub burst: u32,
}

/// What the backend must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Open the element until `until` (or, when it is open, make it last until then).
    Open {
        /// The element is (believed to be) open already: extend it.
        refresh: bool,
        /// When it must close.
        until: UnixMillis,
    },
    /// Close it (or, for a backend with hooks, run this lease's close hook).
    Close,
}

/// One thing for the backend to do, for one lease. Report its result with
/// [`LeaseTable::done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// Its number.
    pub id: u64,
    /// What to do.
    pub op: Op,
    /// For which lease (its element is what a shared-element backend acts on).
    pub lease: LeaseKey,
    /// The client's name (for hooks and logs).
    pub client_name: String,
}

/// What a grant did for one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granted {
    /// A new lease is being opened.
    Opening,
    /// The lease is being extended in the firewall.
    Refreshing,
    /// The lease was extended in this table (no firewall work).
    Extended,
    /// More than half of the lease is left (or it is being opened): nothing to do.
    Kept,
    /// The client's hook credits are spent: the new lease was not opened.
    Cooldown,
}

/// Counters since the table was made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Leases opened.
    pub opened: u64,
    /// Leases refreshed (in the firewall or in this table).
    pub refreshed: u64,
    /// Knocks for a lease with more than half left.
    pub kept: u64,
    /// New leases skipped for the hook cooldown.
    pub cooldown_skips: u64,
    /// Backend actions that failed.
    pub failures: u64,
}

/// An active (or opening) lease, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveLease {
    /// The lease.
    pub key: LeaseKey,
    /// The client's name.
    pub client_name: String,
    /// When it ends.
    pub end: UnixMillis,
}

#[derive(Clone, Debug)]
struct Entry {
    client_name: String,
    /// When it ends; `None` while it is being opened for the first time.
    end: Option<UnixMillis>,
    /// Actions for it in flight.
    in_flight: u32,
}

/// An action waiting for its result.
#[derive(Clone, Debug)]
struct InFlight {
    lease: LeaseKey,
    op: Op,
    /// The lease's end once an open succeeds.
    end: UnixMillis,
}

/// The lease table. See the module documentation.
#[derive(Debug)]
pub struct LeaseTable {
    traits: Traits,
    policy: Policy,
    leases: BTreeMap<LeaseKey, Entry>,
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
    /// Per client: hook credits and when they were last topped up.
    credits: HashMap<PublicKey, (f64, UnixMillis)>,
    counters: Counters,
}

impl LeaseTable {
    /// An empty table for a backend with `traits`.
    pub fn new(traits: Traits, policy: Policy) -> Self {
        LeaseTable {
            traits,
            policy,
            leases: BTreeMap::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            credits: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// The backend's traits.
    pub fn traits(&self) -> Traits {
        self.traits
    }

    /// The lease settings.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Every lease that is active at `now` (or being opened), sorted.
    pub fn active(&self, now: UnixMillis) -> Vec<ActiveLease> {
        self.leases
            .iter()
            .filter_map(|(k, e)| {
                let end = e.end?;
                (end > now).then(|| ActiveLease {
                    key: *k,
                    client_name: e.client_name.clone(),
                    end,
                })
            })
            .collect()
    }

    fn action(&mut self, op: Op, lease: LeaseKey, end: UnixMillis) -> Action {
        self.next_id += 1;
        let id = self.next_id;
        let client_name = self
            .leases
            .get(&lease)
            .map(|e| e.client_name.clone())
            .unwrap_or_default();
        if let Some(e) = self.leases.get_mut(&lease) {
            e.in_flight += 1;
        }
        self.in_flight.insert(
            id,
            InFlight {
                lease,
                op: op.clone(),
                end,
            },
        );
        Action {
            id,
            op,
            lease,
            client_name,
        }
    }

    /// The latest end among the leases of `element` other than `except`, as of `now`.
    fn other_owners_end(
        &self,
        element: Element,
        except: Option<&LeaseKey>,
        now: UnixMillis,
    ) -> Option<UnixMillis> {
        self.leases
            .iter()
            .filter(|(k, _)| k.element() == element && Some(*k) != except)
            .filter_map(|(_, e)| e.end.filter(|end| *end > now))
            .max()
    }

    /// When the element of `lease` must close if `lease` ends at `end`.
    fn element_until(&self, lease: &LeaseKey, end: UnixMillis, now: UnixMillis) -> UnixMillis {
        if !self.traits.shared_elements {
            return end;
        }
        self.other_owners_end(lease.element(), Some(lease), now)
            .map_or(end, |o| o.max(end))
    }

    /// Takes one hook credit of `client` (see the module documentation).
    fn take_credit(&mut self, client: PublicKey, now: UnixMillis) -> bool {
        let burst = f64::from(self.policy.burst.max(1));
        let (credits, at) = self.credits.entry(client).or_insert((burst, now));
        let earned = if self.policy.cooldown_ms == 0 {
            burst
        } else {
            now.since(*at) as f64 / self.policy.cooldown_ms as f64
        };
        *credits = (*credits + earned).min(burst);
        *at = now.max(*at);
        if *credits >= 1.0 {
            *credits -= 1.0;
            true
        } else {
            false
        }
    }

    /// A grant: open (or refresh) `services` for `address` on behalf of `client`. Returns the
    /// actions for the backend and what happened to each service, in order.
    pub fn grant(
        &mut self,
        now: UnixMillis,
        client: PublicKey,
        client_name: &str,
        address: IpAddr,
        prefix: u8,
        services: &[Service],
    ) -> (Vec<Action>, Vec<(Service, Granted)>) {
        let mut actions = Vec::new();
        let mut outcome = Vec::new();
        let end = now.plus_millis(self.policy.lease_ms);
        let half = self.policy.lease_ms / 2;
        // Whether this knock may run hooks for new leases (one credit per knock).
        let mut may_run: Option<bool> = None;
        for &service in services {
            let key = LeaseKey {
                client,
                address: block_start(address, prefix),
                prefix,
                service,
            };
            let existing = self.leases.get(&key).map(|e| (e.end, e.in_flight));
            let active_end = existing.and_then(|(end, _)| end).filter(|e| *e > now);
            let opening = existing.is_some_and(|(end, in_flight)| end.is_none() && in_flight > 0);
            let busy = existing.is_some_and(|(_, in_flight)| in_flight > 0);
            if let Some(e) = self.leases.get_mut(&key) {
                e.client_name = client_name.to_owned();
            }
            if active_end.is_some() || opening {
                if !self.traits.refresh_costs {
                    // Extend here; the backend needs nothing (the hook ran when it opened).
                    if let Some(e) = self.leases.get_mut(&key) {
                        if e.end.is_some() {
                            e.end = Some(end);
                        }
                    }
                    self.counters.refreshed += 1;
                    outcome.push((service, Granted::Extended));
                    continue;
                }
                let plenty =
                    !self.traits.used_up && active_end.is_some_and(|e| e.since(now) > half);
                if busy || opening || plenty {
                    self.counters.kept += 1;
                    outcome.push((service, Granted::Kept));
                    continue;
                }
                let until = self.element_until(&key, end, now);
                actions.push(self.action(
                    Op::Open {
                        refresh: true,
                        until,
                    },
                    key,
                    end,
                ));
                outcome.push((service, Granted::Refreshing));
                continue;
            }
            if self.traits.hooks {
                let allowed = *may_run.get_or_insert_with(|| self.take_credit(client, now));
                if !allowed {
                    self.counters.cooldown_skips += 1;
                    outcome.push((service, Granted::Cooldown));
                    continue;
                }
            }
            self.leases.insert(
                key,
                Entry {
                    client_name: client_name.to_owned(),
                    end: None,
                    in_flight: 0,
                },
            );
            let until = self.element_until(&key, end, now);
            // For a shared element already open for another owner, this is a refresh.
            let refresh = self.traits.shared_elements
                && self
                    .other_owners_end(key.element(), Some(&key), now)
                    .is_some();
            actions.push(self.action(Op::Open { refresh, until }, key, end));
            outcome.push((service, Granted::Opening));
        }
        (actions, outcome)
    }

    /// The backend's answer to action `id`. Returns the lease it was for, the op, and whether
    /// an open made the lease active (for the log line).
    pub fn done(&mut self, now: UnixMillis, id: u64, ok: bool) -> Option<(LeaseKey, Op)> {
        let f = self.in_flight.remove(&id)?;
        let entry = self.leases.get_mut(&f.lease);
        if let Some(e) = entry {
            e.in_flight = e.in_flight.saturating_sub(1);
            match (&f.op, ok) {
                (Op::Open { refresh, .. }, true) => {
                    let was_active = e.end.is_some_and(|end| end > now);
                    e.end = Some(f.end.max(e.end.unwrap_or(f.end)));
                    if *refresh && was_active {
                        self.counters.refreshed += 1;
                    } else {
                        self.counters.opened += 1;
                    }
                }
                (Op::Open { .. }, false) => {
                    self.counters.failures += 1;
                    // A first open that failed leaves nothing.
                    if e.end.is_none() && e.in_flight == 0 {
                        self.leases.remove(&f.lease);
                    }
                }
                (Op::Close, ok) => {
                    if !ok {
                        self.counters.failures += 1;
                    }
                }
            }
        } else if !ok {
            self.counters.failures += 1;
        }
        Some((f.lease, f.op))
    }

    /// Ends the leases whose time is up: returns the actions (close hooks for a backend that
    /// does not expire leases itself) and the leases that ended (for the log).
    pub fn tick(&mut self, now: UnixMillis) -> (Vec<Action>, Vec<(LeaseKey, String)>) {
        let ended: Vec<LeaseKey> = self
            .leases
            .iter()
            .filter(|(_, e)| e.in_flight == 0 && e.end.is_some_and(|end| end <= now))
            .map(|(k, _)| *k)
            .collect();
        let mut actions = Vec::new();
        let mut out = Vec::new();
        for key in ended {
            let name = self
                .leases
                .get(&key)
                .map(|e| e.client_name.clone())
                .unwrap_or_default();
            if !self.traits.expires_itself {
                // The close action needs the entry for its name; drop the entry after.
                actions.push(self.action(Op::Close, key, now));
            }
            self.leases.remove(&key);
            out.push((key, name));
        }
        (actions, out)
    }

    /// Ends every lease of a client that is no longer configured (removed, or its key
    /// replaced): `keep` says which keys stay. For a shared element that other owners keep,
    /// the element is shortened to their end instead of closed.
    pub fn revoke(&mut self, now: UnixMillis, keep: impl Fn(&PublicKey) -> bool) -> Vec<Action> {
        let gone: Vec<LeaseKey> = self
            .leases
            .keys()
            .filter(|k| !keep(&k.client))
            .copied()
            .collect();
        let mut actions = Vec::new();
        for key in gone {
            let was_open = self
                .leases
                .get(&key)
                .is_some_and(|e| e.end.is_some_and(|end| end > now) || e.in_flight > 0);
            if !was_open {
                self.leases.remove(&key);
                continue;
            }
            let op = match self.traits.shared_elements {
                true => match self.other_owners_end(key.element(), Some(&key), now) {
                    // Other owners keep the element: it lasts until their latest end.
                    Some(until) => Op::Open {
                        refresh: true,
                        until,
                    },
                    None => Op::Close,
                },
                false => Op::Close,
            };
            actions.push(self.action(op, key, now));
            self.leases.remove(&key);
        }
        actions
    }

    /// The backend's table was rebuilt empty (someone flushed the ruleset): open every active
    /// element again until its owners' latest end.
    pub fn rebuilt(&mut self, now: UnixMillis) -> Vec<Action> {
        if !self.traits.shared_elements || self.traits.used_up {
            return Vec::new();
        }
        let mut by_element: BTreeMap<Element, (LeaseKey, UnixMillis)> = BTreeMap::new();
        for (k, e) in &self.leases {
            if let Some(end) = e.end.filter(|end| *end > now) {
                let slot = by_element.entry(k.element()).or_insert((*k, end));
                if end > slot.1 {
                    *slot = (*k, end);
                }
            }
        }
        let mut actions = Vec::new();
        for (_, (key, until)) in by_element {
            actions.push(self.action(
                Op::Open {
                    refresh: false,
                    until,
                },
                key,
                until,
            ));
        }
        actions
    }

    /// Takes over a lease a previous run of sesamed granted (from `state_dir/leases`) that
    /// ends at `end`. Follow with [`LeaseTable::rebuilt`] so that the firewall holds it too.
    pub fn adopt(&mut self, key: LeaseKey, client_name: &str, end: UnixMillis, now: UnixMillis) {
        if end > now {
            self.leases.insert(
                key,
                Entry {
                    client_name: client_name.to_owned(),
                    end: Some(end),
                    in_flight: 0,
                },
            );
        }
    }

    /// Another backend or policy (after a reload): leases stay.
    pub fn reconfigure(&mut self, traits: Traits, policy: Policy) {
        self.traits = traits;
        self.policy = policy;
    }

    /// Every lease (for shutdown: the ones whose backend does not expire them get closed).
    pub fn drain(&mut self, now: UnixMillis) -> Vec<Action> {
        let keys: Vec<LeaseKey> = self.leases.keys().copied().collect();
        let mut actions = Vec::new();
        for key in keys {
            if !self.traits.expires_itself
                && self
                    .leases
                    .get(&key)
                    .is_some_and(|e| e.end.is_some_and(|end| end > now))
            {
                actions.push(self.action(Op::Close, key, now));
            }
            self.leases.remove(&key);
        }
        actions
    }

    /// The number of leases that own `element` at `now`.
    pub fn owners(&self, element: Element, now: UnixMillis) -> usize {
        self.leases
            .iter()
            .filter(|(k, e)| k.element() == element && e.end.is_some_and(|end| end > now))
            .count()
    }
}

#[cfg(test)]
mod tests;
