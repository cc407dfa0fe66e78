//! Changes to a lab's topology: a NAT'd LAN behind the client, extra internet hosts, links
//! that go down or are deleted and recreated (fault tests), link-layer addresses (flood).

use std::process::Command;

use crate::lab::{CLIENT_IF, Host, LAN_PREFIX, Lab, SERVER_IF_CLIENT};
use crate::process::text;

impl Lab {
    /// Puts `hosts` hosts ([`Host::Lan`] 1..=hosts, at most 4) on a LAN (198.19.251.0/24, a
    /// bridge in the client namespace at .1) behind the client host, which routes and
    /// masquerades them toward the server, as a home router or a carrier NAT does: the server
    /// sees them all as the client's address. IPv4 only.
    pub fn add_nat_lan(&self, hosts: u8) {
        let c = self.client_ns.clone();
        self.ip(&["-n", &c, "link", "add", "br-lan", "type", "bridge"]);
        self.ip(&["-n", &c, "addr", "add", "198.19.251.1/24", "dev", "br-lan"]);
        self.ip(&["-n", &c, "link", "set", "br-lan", "up"]);
        self.sysctl(Host::Client, "net.ipv4.ip_forward=1");
        for i in 1..=hosts.min(4) {
            let host = Host::Lan(i);
            let ns = self.ns(host).to_owned();
            self.add_ns(&ns);
            let port = format!("c-lan{i}");
            self.veth((&port, &c), ("l-cli", &ns));
            self.ip(&["-n", &c, "link", "set", &port, "master", "br-lan"]);
            self.ip(&["-n", &c, "link", "set", &port, "up"]);
            let addr = format!("{}/24", self.v4(host));
            self.ip(&["-n", &ns, "addr", "add", &addr, "dev", "l-cli"]);
            self.ip(&["-n", &ns, "link", "set", "l-cli", "up"]);
            self.ip(&["-n", &ns, "route", "add", "default", "via", "198.19.251.1"]);
        }
        let rules = format!(
            "table ip lab_nat {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {LAN_PREFIX} oifname \"{CLIENT_IF}\" masquerade\n  }}\n}}\n"
        );
        let path = self.write("lab-nat.nft", &rules);
        self.run_ok(Host::Client, "nft", &["-f", &path.to_string_lossy()]);
    }

    /// Adds [`Host::Wan`] `i` (1..=2): a host on a link of its own to the server namespace
    /// (198.19.(251 + i).0/24, the server at .1), which routes to it; every other host reaches
    /// it through the server. IPv4 only.
    pub fn add_wan(&self, i: u8) {
        let host = Host::Wan(i);
        let ns = self.ns(host).to_owned();
        self.add_ns(&ns);
        let s = self.server_ns.clone();
        let port = format!("s-wan{i}");
        self.veth((&port, &s), ("w-srv", &ns));
        let net = 251 + i;
        self.ip(&[
            "-n",
            &s,
            "addr",
            "add",
            &format!("198.19.{net}.1/24"),
            "dev",
            &port,
        ]);
        self.ip(&["-n", &s, "link", "set", &port, "up"]);
        self.ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.v4(host)),
            "dev",
            "w-srv",
        ]);
        self.ip(&["-n", &ns, "link", "set", "w-srv", "up"]);
        self.ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("198.19.{net}.1"),
        ]);
        self.sysctl(Host::Server, "net.ipv4.ip_forward=1");
    }
    /// The MAC address of `iface` in a host's namespace (`aa:bb:cc:dd:ee:ff`).
    pub fn mac(&self, host: Host, iface: &str) -> String {
        let o = Command::new("ip")
            .args(["-n", self.ns(host), "-o", "link", "show", "dev", iface])
            .output()
            .expect("run ip");
        assert!(o.status.success(), "ip link show {iface}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "link/ether" {
                if let Some(mac) = words.next() {
                    return mac.to_owned();
                }
            }
        }
        panic!("no link/ether address for {iface} in {host:?}: {out}");
    }

    /// Sets a link of a host up or down (`ip -n NS link set DEV up|down`).
    pub fn set_link(&self, host: Host, dev: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ip(&["-n", self.ns(host), "link", "set", dev, state]);
    }

    /// Deletes the veth pair between the client and the server (both ends go; the client's
    /// default routes, which used it, go with it).
    pub fn delete_client_link(&self) {
        self.ip(&["-n", &self.server_ns, "link", "del", SERVER_IF_CLIENT]);
    }

    /// Recreates the veth pair between the client and the server as [`Lab::new`] made it:
    /// same names, addresses and client routes (the interfaces get new indexes).
    pub fn recreate_client_link(&self) {
        let (s, c) = (&self.server_ns, &self.client_ns);
        self.veth((SERVER_IF_CLIENT, s), (CLIENT_IF, c));
        for (ns, dev, host) in [
            (s, SERVER_IF_CLIENT, Host::Server),
            (c, CLIENT_IF, Host::Client),
        ] {
            self.address(ns, dev, self.v4(host), self.v6(host));
        }
        self.default_routes(c, self.v4(Host::Server), self.v6(Host::Server));
    }

    /// The interface index of a link in a host's namespace.
    pub fn ifindex(&self, host: Host, dev: &str) -> u32 {
        let o = Command::new("ip")
            .args(["-n", self.ns(host), "-o", "link", "show", "dev", dev])
            .output()
            .expect("run ip");
        assert!(o.status.success(), "ip link show {dev}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        out.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no index in `ip link show {dev}`: {out}"))
    }
}
