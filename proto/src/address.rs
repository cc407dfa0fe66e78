//! Which source addresses a client can bind its knocks to.
//!
//! A client binds a knock (puts an address in its payload) so that nobody who captures the
//! knock can use it from another address. It can bind its own source address only when the
//! server sees that same address, that is when the address is not one that a NAT translates:
//! not private (RFC 1918), not shared (RFC 6598, carrier NAT), not loopback, link-local or
//! unspecified, not unique-local IPv6 (fc00::/7), not multicast. Anything else counts as
//! public here, the benchmarking and documentation ranges (198.18.0.0/15, 2001:db8::/32)
//! included, which is what test networks use.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether a client can bind its knocks to `ip`, its source address toward the server: true
/// unless the address is private, shared, loopback, link-local, unique-local, unspecified,
/// multicast or broadcast (an IPv4-mapped IPv6 address is judged as IPv4).
pub fn is_bindable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_bindable_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_bindable_v4(v4),
            None => is_bindable_v6(a),
        },
    }
}

fn is_bindable_v4(a: Ipv4Addr) -> bool {
    let [b0, b1, ..] = a.octets();
    let shared = b0 == 100 && (64..=127).contains(&b1);
    !(a.is_private()
        || shared
        || a.is_loopback()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_multicast()
        || a.is_broadcast()
        || b0 == 0)
}

fn is_bindable_v6(a: Ipv6Addr) -> bool {
    let first = a.segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00;
    let link_local = first & 0xffc0 == 0xfe80;
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || unique_local || link_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_shared_addresses_are_not_bindable() {
        for no in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.10",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:192.168.1.1",
        ] {
            assert!(!is_bindable(no.parse().unwrap()), "{no}");
        }
        for yes in [
            "198.18.0.2",
            "198.19.255.1",
            "203.0.113.7",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::2",
            "2a00:1450::1",
            "::ffff:198.18.0.2",
        ] {
            assert!(is_bindable(yes.parse().unwrap()), "{yes}");
        }
    }
}
