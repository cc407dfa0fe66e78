//! The lease table on a virtual clock, and a model-based test against a naive reference.

use super::*;
use proptest::prelude::*;
use sesame_proto::Proto;

const T0: UnixMillis = UnixMillis(1_764_000_000_000);
const LEASE: u64 = 30_000;

fn key(i: u8) -> PublicKey {
    PublicKey::from_bytes([i; 32])
}

fn ssh() -> Service {
    Service::new(Proto::Tcp, 22)
}

fn nat() -> IpAddr {
    "198.18.0.2".parse().unwrap()
}

fn nft() -> Traits {
    Traits {
        shared_elements: true,
        expires_itself: true,
        refresh_costs: true,
        hooks: false,
        used_up: false,
        concurrency: 1,
    }
}

fn hooks() -> Traits {
    Traits {
        shared_elements: false,
        expires_itself: false,
        refresh_costs: false,
        hooks: true,
        used_up: false,
        concurrency: 4,
    }
}

fn policy() -> Policy {
    Policy {
        lease_ms: LEASE,
        cooldown_ms: 1000,
        burst: 2,
    }
}

/// A kernel-like backend: elements with an expiry.
#[derive(Default, Debug)]
struct Kernel {
    elements: BTreeMap<Element, UnixMillis>,
    hooks_run: Vec<(Op, LeaseKey)>,
}

impl Kernel {
    fn apply(&mut self, t: &mut LeaseTable, now: UnixMillis, actions: Vec<Action>, ok: bool) {
        for a in actions {
            if ok {
                match a.op {
                    Op::Open { until, .. } => {
                        self.elements.insert(a.lease.element(), until);
                    }
                    Op::Close => {
                        self.elements.remove(&a.lease.element());
                    }
                }
                self.hooks_run.push((a.op.clone(), a.lease));
            }
            t.done(now, a.id, ok);
        }
    }

    fn open(&self, e: Element, now: UnixMillis) -> Option<UnixMillis> {
        self.elements.get(&e).copied().filter(|u| *u > now)
    }
}

#[test]
fn a_grant_opens_and_a_knock_with_plenty_left_is_kept() {
    let mut t = LeaseTable::new(nft(), policy());
    let mut k = Kernel::default();
    let (a, out) = t.grant(T0, key(1), "laptop", nat(), full_prefix(nat()), &[ssh()]);
    assert_eq!(out, vec![(ssh(), Granted::Opening)]);
    k.apply(&mut t, T0, a, true);
    let e = Element {
        address: nat(),
        prefix: full_prefix(nat()),
        service: ssh(),
    };
    assert_eq!(k.open(e, T0), Some(T0.plus_millis(LEASE)));
    let (a, out) = t.grant(
        T0.plus_millis(1000),
        key(1),
        "laptop",
        nat(),
        full_prefix(nat()),
        &[ssh()],
    );
    assert!(a.is_empty());
    assert_eq!(out[0].1, Granted::Kept);
    // With less than half left, a knock refreshes.
    let later = T0.plus_millis(20_000);
    let (a, out) = t.grant(later, key(1), "laptop", nat(), full_prefix(nat()), &[ssh()]);
    assert_eq!(out[0].1, Granted::Refreshing);
    k.apply(&mut t, later, a, true);
    assert_eq!(k.open(e, later), Some(later.plus_millis(LEASE)));
    assert_eq!(t.counters().opened, 1);
    assert_eq!(t.counters().refreshed, 1);
    assert_eq!(t.counters().kept, 1);
}

#[test]
fn two_clients_behind_one_nat_share_the_element_and_one_leaving_keeps_the_other() {
    let mut t = LeaseTable::new(nft(), policy());
    let mut k = Kernel::default();
    let e = Element {
        address: nat(),
        prefix: full_prefix(nat()),
        service: ssh(),
    };
    let (a, _) = t.grant(T0, key(1), "alice", nat(), full_prefix(nat()), &[ssh()]);
    k.apply(&mut t, T0, a, true);
    let t1 = T0.plus_millis(10_000);
    let (a, out) = t.grant(t1, key(2), "bob", nat(), full_prefix(nat()), &[ssh()]);
    assert_eq!(out[0].1, Granted::Opening);
    assert!(matches!(a[0].op, Op::Open { refresh: true, .. }), "{a:?}");
    k.apply(&mut t, t1, a, true);
    assert_eq!(t.owners(e, t1), 2);
    assert_eq!(k.open(e, t1), Some(t1.plus_millis(LEASE)));
    // alice is removed from the configuration: bob keeps the door until his end.
    let t2 = T0.plus_millis(12_000);
    let a = t.revoke(t2, |c| *c != key(1));
    assert_eq!(
        a.iter().map(|a| a.op.clone()).collect::<Vec<_>>(),
        vec![Op::Open {
            refresh: true,
            until: t1.plus_millis(LEASE)
        }]
    );
    k.apply(&mut t, t2, a, true);
    assert_eq!(k.open(e, t2), Some(t1.plus_millis(LEASE)));
    // Now bob goes too: closed.
    let a = t.revoke(t2, |_| false);
    assert_eq!(a[0].op, Op::Close);
    k.apply(&mut t, t2, a, true);
    assert_eq!(k.open(e, t2), None);
}

#[test]
fn an_earlier_owner_ending_does_not_cut_a_later_one() {
    // bob's lease ends later than alice's; when alice's lease ends (the kernel does nothing:
    // the element already carries bob's end), bob's access stays.
    let mut t = LeaseTable::new(nft(), policy());
    let mut k = Kernel::default();
    let e = Element {
        address: nat(),
        prefix: full_prefix(nat()),
        service: ssh(),
    };
    let (a, _) = t.grant(T0, key(1), "alice", nat(), full_prefix(nat()), &[ssh()]);
    k.apply(&mut t, T0, a, true);
    let t1 = T0.plus_millis(25_000);
    let (a, _) = t.grant(t1, key(2), "bob", nat(), full_prefix(nat()), &[ssh()]);
    k.apply(&mut t, t1, a, true);
    let after_alice = T0.plus_millis(LEASE + 1);
    let (a, ended) = t.tick(after_alice);
    assert!(a.is_empty());
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].1, "alice");
    assert_eq!(k.open(e, after_alice), Some(t1.plus_millis(LEASE)));
    assert_eq!(t.owners(e, after_alice), 1);
}

#[test]
fn a_rotated_key_loses_its_leases() {
    let mut t = LeaseTable::new(nft(), policy());
    let mut k = Kernel::default();
    let (a, _) = t.grant(T0, key(1), "laptop", nat(), full_prefix(nat()), &[ssh()]);
    k.apply(&mut t, T0, a, true);
    // The same name, a new key: the old key's lease ends.
    let a = t.revoke(T0.plus_millis(5), |c| *c == key(9));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].lease.client, key(1));
    assert_eq!(a[0].op, Op::Close);
    k.apply(&mut t, T0.plus_millis(5), a, true);
    assert!(t.active(T0.plus_millis(5)).is_empty());
    assert!(k.elements.is_empty());
}

#[test]
fn after_a_rebuild_every_active_element_is_opened_again() {
    let mut t = LeaseTable::new(nft(), policy());
    let mut k = Kernel::default();
    let other: IpAddr = "2001:db8::7".parse().unwrap();
    let (a, _) = t.grant(T0, key(1), "alice", nat(), full_prefix(nat()), &[ssh()]);
    k.apply(&mut t, T0, a, true);
    let (a, _) = t.grant(
        T0.plus_millis(3000),
        key(2),
        "bob",
        other,
        full_prefix(other),
        &[ssh()],
    );
    k.apply(&mut t, T0.plus_millis(3000), a, true);
    // `nft flush ruleset`: the kernel forgot everything.
    k.elements.clear();
    let now = T0.plus_millis(10_000);
    let a = t.rebuilt(now);
    assert_eq!(a.len(), 2);
    k.apply(&mut t, now, a, true);
    for (addr, end) in [(nat(), T0), (other, T0.plus_millis(3000))] {
        let e = Element {
            address: addr,
            prefix: full_prefix(addr),
            service: ssh(),
        };
        assert_eq!(k.open(e, now), Some(end.plus_millis(LEASE)));
    }
    // The next knock of a client with plenty left is still a no-op, and the door is open.
    let (a, out) = t.grant(now, key(1), "alice", nat(), full_prefix(nat()), &[ssh()]);
    assert!(a.is_empty() && out[0].1 == Granted::Kept);
}

/// Connection-bound leases: the kernel deletes the element at the first connection, so the
/// table cannot know whether a lease is still open. Every knock opens again, and a rebuilt
/// table gets nothing back (a used-up lease would admit a second connection).
#[test]
fn used_up_leases_open_on_every_knock_and_are_not_restored() {
    let traits = Traits {
        used_up: true,
        ..nft()
    };
    let mut t = LeaseTable::new(traits, policy());
    let mut k = Kernel::default();
    let e = Element {
        address: nat(),
        prefix: full_prefix(nat()),
        service: ssh(),
    };
    let (a, _) = t.grant(T0, key(1), "laptop", nat(), full_prefix(nat()), &[ssh()]);
    k.apply(&mut t, T0, a, true);
    // The first connection uses it up.
    k.elements.remove(&e);
    let now = T0.plus_millis(1000);
    let (a, out) = t.grant(now, key(1), "laptop", nat(), full_prefix(nat()), &[ssh()]);
    assert_eq!(out[0].1, Granted::Refreshing);
    k.apply(&mut t, now, a, true);
    assert_eq!(k.open(e, now), Some(now.plus_millis(LEASE)));
    k.elements.clear();
    assert!(t.rebuilt(now.plus_millis(1000)).is_empty());
}

/// After a restart, the leases of the previous run are adopted: `status` shows them, a knock
/// with plenty left is kept, and a rebuild (an empty kernel after a reboot) opens them until
/// their old end.
#[test]
fn adopted_leases_are_known_kept_and_restored() {
    let mut t = LeaseTable::new(nft(), policy());
    let mut k = Kernel::default();
    let end = T0.plus_millis(25_000);
    t.adopt(
        LeaseKey {
            client: key(1),
            address: nat(),
            prefix: full_prefix(nat()),
            service: ssh(),
        },
        "laptop",
        end,
        T0,
    );
    // An expired one is not taken.
    t.adopt(
        LeaseKey {
            client: key(2),
            address: nat(),
            prefix: full_prefix(nat()),
            service: ssh(),
        },
        "old",
        T0,
        T0,
    );
    let active = t.active(T0);
    assert_eq!(active.len(), 1);
    assert_eq!(
        (active[0].client_name.as_str(), active[0].end),
        ("laptop", end)
    );
    let a = t.rebuilt(T0);
    assert_eq!(a.len(), 1);
    k.apply(&mut t, T0, a, true);
    let e = Element {
        address: nat(),
        prefix: full_prefix(nat()),
        service: ssh(),
    };
    assert_eq!(k.open(e, T0), Some(end));
    let (a, out) = t.grant(
        T0.plus_millis(1000),
        key(1),
        "laptop",
        nat(),
        full_prefix(nat()),
        &[ssh()],
    );
    assert!(a.is_empty() && out[0].1 == Granted::Kept);
}

/// A client with `lease_prefix_v4 = 24`: a grant for any address of the block is one element
/// (the block's first address, prefix 24), apart from the single-address elements.
#[test]
fn a_block_lease_is_keyed_by_its_first_address() {
    assert_eq!(
        block_start("198.18.5.77".parse().unwrap(), 24),
        "198.18.5.0".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        block_start("2001:db8:1:2ff:3::9".parse().unwrap(), 56),
        "2001:db8:1:200::".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        block_start("198.18.5.77".parse().unwrap(), 32),
        "198.18.5.77".parse::<IpAddr>().unwrap()
    );
    let mut t = LeaseTable::new(nft(), policy());
    let mut k = Kernel::default();
    let (a, _) = t.grant(
        T0,
        key(1),
        "phone",
        "198.18.5.77".parse().unwrap(),
        24,
        &[ssh()],
    );
    k.apply(&mut t, T0, a, true);
    let block = Element {
        address: "198.18.5.0".parse().unwrap(),
        prefix: 24,
        service: ssh(),
    };
    assert_eq!(k.open(block, T0), Some(T0.plus_millis(LEASE)));
    // The same client from another address of the block: the same lease, kept.
    let (a, out) = t.grant(
        T0.plus_millis(1000),
        key(1),
        "phone",
        "198.18.5.9".parse().unwrap(),
        24,
        &[ssh()],
    );
    assert!(a.is_empty() && out[0].1 == Granted::Kept, "{out:?}");
    assert_eq!(show_address(block.address, 24), "198.18.5.0/24");
    assert_eq!(show_address(block.address, 32), "198.18.5.0");
}

#[test]
fn hooks_run_once_per_lease_with_a_cooldown() {
    let mut t = LeaseTable::new(hooks(), policy());
    let mut k = Kernel::default();
    let svc2 = Service::new(Proto::Udp, 51820);
    let (a, out) = t.grant(
        T0,
        key(1),
        "laptop",
        nat(),
        full_prefix(nat()),
        &[ssh(), svc2],
    );
    assert_eq!(a.len(), 2, "one credit per knock opens both");
    assert!(out.iter().all(|(_, g)| *g == Granted::Opening));
    k.apply(&mut t, T0, a, true);
    // A re-knock extends without hooks.
    let (a, out) = t.grant(
        T0.plus_millis(100),
        key(1),
        "laptop",
        nat(),
        full_prefix(nat()),
        &[ssh()],
    );
    assert!(a.is_empty());
    assert_eq!(out[0].1, Granted::Extended);
    // New leases (other addresses): burst of 2, then one per second.
    let addr = |i: u8| IpAddr::from([198, 18, 1, i]);
    let mut opened = 0;
    for i in 0..5 {
        let (a, _) = t.grant(
            T0.plus_millis(200),
            key(1),
            "laptop",
            addr(i),
            full_prefix(addr(i)),
            &[ssh()],
        );
        opened += a.len();
        k.apply(&mut t, T0.plus_millis(200), a, true);
    }
    assert_eq!(opened, 1, "one credit left of the burst");
    assert_eq!(t.counters().cooldown_skips, 4);
    let (a, _) = t.grant(
        T0.plus_millis(1300),
        key(1),
        "laptop",
        addr(9),
        full_prefix(addr(9)),
        &[ssh()],
    );
    assert_eq!(a.len(), 1);
    // Lease ends run the close hook.
    let end = T0.plus_millis(200 + LEASE);
    let (a, ended) = t.tick(end);
    assert!(!ended.is_empty());
    assert!(a.iter().all(|a| a.op == Op::Close));
}

#[test]
fn a_failed_first_open_leaves_nothing_and_the_next_knock_tries_again() {
    let mut t = LeaseTable::new(nft(), policy());
    let mut k = Kernel::default();
    let (a, _) = t.grant(T0, key(1), "laptop", nat(), full_prefix(nat()), &[ssh()]);
    k.apply(&mut t, T0, a, false);
    assert!(t.active(T0).is_empty());
    assert_eq!(t.counters().failures, 1);
    let (a, out) = t.grant(
        T0.plus_millis(10),
        key(1),
        "laptop",
        nat(),
        full_prefix(nat()),
        &[ssh()],
    );
    assert_eq!(out[0].1, Granted::Opening);
    assert_eq!(a.len(), 1);
}

#[derive(Clone, Debug)]
enum Step {
    Grant { client: u8, addr: u8, svc: u8 },
    Wait(u64),
    Tick,
    Revoke(u8),
    Rebuild,
    Fail,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..3u8, 0..2u8, 0..2u8).prop_map(|(client, addr, svc)| Step::Grant { client, addr, svc }),
        3 => (0..20_000u64).prop_map(Step::Wait),
        2 => Just(Step::Tick),
        1 => (0..3u8).prop_map(Step::Revoke),
        1 => Just(Step::Rebuild),
        1 => Just(Step::Fail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Against a naive reference (a map from lease to its end, following the documented rules),
    /// with a kernel that applies the actions: at every step, an element is open in the kernel
    /// exactly until the latest end of the reference's leases on it, and closed when it has
    /// none. So access never outlives every owner's lease, one owner never cuts another, a
    /// revoked key's access ends, and a rebuilt table gets back what it had.
    #[test]
    fn the_table_agrees_with_a_naive_reference(steps in prop::collection::vec(step(), 1..60)) {
        let mut t = LeaseTable::new(nft(), policy());
        let mut k = Kernel::default();
        let mut reference: BTreeMap<LeaseKey, UnixMillis> = BTreeMap::new();
        let mut removed: Vec<PublicKey> = Vec::new();
        let mut now = T0;
        let mut fail_next = false;
        let addrs: [IpAddr; 2] = [nat(), "2001:db8::9".parse().unwrap()];
        let svcs = [ssh(), Service::new(Proto::Udp, 51820)];
        for s in steps {
            match s {
                Step::Grant { client, addr, svc } => {
                    let ck = key(client);
                    if removed.contains(&ck) {
                        continue;
                    }
                    let lk = LeaseKey { client: ck, address: addrs[usize::from(addr)], prefix: full_prefix(addrs[usize::from(addr)]), service: svcs[usize::from(svc)] };
                    let (a, _) = t.grant(now, ck, "c", lk.address, full_prefix(lk.address), &[lk.service]);
                    let ok = !std::mem::take(&mut fail_next);
                    let acted = !a.is_empty();
                    k.apply(&mut t, now, a, ok);
                    // Reference: a lease with more than half left is kept; otherwise (or new)
                    // it ends a lease from now, if the firewall took it.
                    let current = reference.get(&lk).copied().filter(|e| *e > now);
                    let plenty = current.is_some_and(|e| e.since(now) > LEASE / 2);
                    if !plenty && ok {
                        prop_assert!(acted, "no action for a lease that needed one");
                        reference.insert(lk, now.plus_millis(LEASE));
                    }
                }
                Step::Wait(ms) => now = now.plus_millis(ms),
                Step::Tick => {
                    let (a, _) = t.tick(now);
                    prop_assert!(a.is_empty(), "nftables needs no close actions");
                    reference.retain(|_, e| *e > now);
                }
                Step::Revoke(c) => {
                    let gone = key(c);
                    removed.push(gone);
                    let a = t.revoke(now, |ck| !removed.contains(ck));
                    k.apply(&mut t, now, a, true);
                    reference.retain(|lk, _| lk.client != gone);
                }
                Step::Rebuild => {
                    k.elements.clear();
                    let a = t.rebuilt(now);
                    k.apply(&mut t, now, a, true);
                }
                Step::Fail => fail_next = true,
            }
            for addr in addrs {
                for svc in svcs {
                    let e = Element { address: addr, prefix: full_prefix(addr), service: svc };
                    let want = reference
                        .iter()
                        .filter(|(lk, end)| lk.element() == e && **end > now)
                        .map(|(_, end)| *end)
                        .max();
                    prop_assert_eq!(k.open(e, now), want, "element {:?} at +{} ms", e, now.since(T0));
                }
            }
        }
    }
}
