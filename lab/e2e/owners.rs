//! Leases that share a firewall element, leases of a replaced key, and leases across a table
//! rebuild: the lease core (`server/src/lease.rs`) with the real kernel.
//!
//! Each of these failed on protocol-1 sesamed (it keyed leases by client name and forgot
//! nothing the kernel forgot): a client removed behind a shared NAT cut the other's access, a
//! key replaced under the same name kept its leases, and after `nft flush ruleset` the leases
//! were gone from the kernel while sesamed kept calling them active.

use std::time::{Duration, Instant};

use sesame_tests::{ClientSpec, Family, Host, require_netns, text};

use crate::common::{Fixture, SETTLE};
use crate::operator::sesamed_ok;

/// Two clients (laptop and phone) on a LAN behind one masquerading router: the server sees
/// both as the router's public address.
fn shared_nat(tag: &str) -> (Fixture, std::path::PathBuf, std::path::PathBuf) {
    let mut f = Fixture::new(tag);
    f.spec.lease_seconds = 60;
    f.lab.add_nat_lan(2);
    let phone = f.lab.gen_key("phone");
    f.spec.clients.push(ClientSpec::new("phone", &phone.public));
    f.start();
    let laptop = f.client_key.path.clone();
    let laptop_profile = f.write_profile("lan-laptop", Family::V4, &laptop, |_| {});
    let phone_profile = f.write_profile("lan-phone", Family::V4, &phone.path, |_| {});
    (f, laptop_profile, phone_profile)
}

/// Knocks from a LAN host, binding the NAT's public address (as STUN would tell it).
fn knock_behind_nat(f: &Fixture, host: Host, profile: &std::path::Path, client: &str) {
    let public = f.lab.addr(Host::Client, Family::V4);
    let mark = f.mark();
    f.knock_from(host, profile, &["--allow-ip", &public.to_string()]);
    f.daemon().expect_after(
        mark,
        &[
            &format!(" granted client={client} "),
            &format!("source={public}"),
        ],
        Duration::from_secs(6),
    );
}

#[test]
fn removing_one_client_behind_a_shared_nat_keeps_the_others_access() {
    if !require_netns() {
        return;
    }
    let (f, laptop, phone) = shared_nat("own-nat");
    let svc = f.svc(Family::V4, 22);
    knock_behind_nat(&f, Host::Lan(1), &laptop, "laptop");
    knock_behind_nat(&f, Host::Lan(2), &phone, "phone");
    assert!(
        f.lab
            .connects_within(Host::Lan(1), svc, Duration::from_secs(3))
    );
    // The phone is removed (its key is lost, say): its lease ends, the laptop's stays.
    let mark = f.mark();
    let out = sesamed_ok(&f, &["client", "remove", "phone"]);
    assert!(out.contains("removed client 'phone'"), "{out}");
    f.daemon().expect_after(
        mark,
        &["lease ended: client removed", "client=phone"],
        Duration::from_secs(6),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        f.lab.connects(Host::Lan(1), svc, 1500),
        "removing the phone cut the laptop behind the same NAT; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    let status = sesamed_ok(&f, &["status", "--json"]);
    assert!(status.contains("\"client\":\"laptop\""), "{status}");
    assert!(!status.contains("\"client\":\"phone\""), "{status}");
}

#[test]
fn a_key_replaced_under_the_same_name_loses_its_leases() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("own-rotate");
    f.spec.lease_seconds = 60;
    f.start();
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(f.opens(Host::Client, Family::V4, 22));
    // The laptop's key is replaced (it was stolen): same name, new key.
    let new_key = f.lab.gen_key("laptop-new");
    f.client().public_key = new_key.public.clone();
    f.lab.write("sesamed.toml", &f.spec.to_toml());
    let mark = f.mark();
    let out = sesamed_ok(&f, &["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    f.assert_closed(Family::V4, 22, "after the laptop's key was replaced");
    f.daemon().expect_after(
        mark,
        &[
            "lease ended: client removed or its key replaced",
            "client=laptop",
        ],
        Duration::from_secs(6),
    );
    // The new key knocks and gets in.
    let profile = f.write_profile("laptop-new", Family::V4, &new_key.path, |_| {});
    let mark = f.mark();
    f.knock_from(Host::Client, &profile, &[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(f.opens(Host::Client, Family::V4, 22));
}

#[test]
fn leases_come_back_after_the_ruleset_is_flushed() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("own-flush");
    f.spec.lease_seconds = 60;
    f.start();
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(f.opens(Host::Client, Family::V4, 22));
    let mark = f.mark();
    let flushed = Instant::now();
    f.lab.run_ok(Host::Server, "nft", &["flush", "ruleset"]);
    let line = f.daemon().expect_after(
        mark,
        &["firewall table had been removed"],
        Duration::from_secs(12),
    );
    // The client's lease is back without a new knock (the kernel forgot it; sesamed did not),
    // and a stranger is still kept out.
    assert!(
        f.lab
            .connects_within(Host::Client, f.svc(Family::V4, 22), Duration::from_secs(3)),
        "the lease was not restored after the rebuild ({:?} after the flush); ruleset:\n{}",
        flushed.elapsed(),
        f.lab.server_ruleset()
    );
    assert!(
        line.contains("active leases are restored") && line.contains("leases=1"),
        "{line}"
    );
    assert!(!f.connects(Host::Attacker, Family::V4, 22));
    // The next knock (plenty of the lease left) changes nothing, and the door stays open.
    let mark = f.mark();
    let o = f.knock(&[]);
    assert!(o.status.success(), "{}", text(&o));
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    std::thread::sleep(SETTLE);
    assert!(f.connects(Host::Client, Family::V4, 22));
}
