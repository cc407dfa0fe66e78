//! The [`Lab`]: three network namespaces (server, client, attacker) joined by two veth pairs,
//! its temporary directory, and running programs in its namespaces. Removed when dropped.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::netns::{PREFIX, kill_namespace_pids};
use crate::process::{Proc, text};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Which namespace of a lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// Runs sesamed and the protected service.
    Server,
    /// The legitimate client.
    Client,
    /// A third host, on another link to the server.
    Attacker,
    /// Host `i` (1..=4) of a LAN behind the client host, which masquerades it
    /// ([`Lab::add_nat_lan`]): IPv4 only, 198.19.251.(10 + i).
    Lan(u8),
    /// Host `i` (1..=2) on a link of its own to the server: another host "on the internet"
    /// ([`Lab::add_wan`]): IPv4 only, 198.19.(251 + i).2.
    Wan(u8),
}

/// The LAN behind the client host's NAT ([`Lab::add_nat_lan`]).
pub const LAN_PREFIX: &str = "198.19.251.0/24";

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Three network namespaces (server, client, attacker) and a temporary directory.
#[derive(Debug)]
pub struct Lab {
    /// The lab's number N (in the 198.18.N.0/24 and 2001:db8:N::/64 subnets).
    pub n: u32,
    /// A short tag naming the test, for messages.
    pub tag: String,
    /// The lab's temporary directory (config, keys, captures).
    pub dir: PathBuf,
    /// Namespace names.
    pub server_ns: String,
    /// Namespace names.
    pub client_ns: String,
    /// Namespace names.
    pub attacker_ns: String,
    /// Names of the LAN hosts' namespaces (created by [`Lab::add_nat_lan`]).
    lan_ns: Vec<String>,
    /// Names of the extra internet hosts' namespaces (created by [`Lab::add_wan`]).
    wan_ns: Vec<String>,
    created: Mutex<Vec<String>>,
    /// Owns [`Lab::dir`]: removes it when dropped (kept with `SESAME_E2E_KEEP`).
    tmp: Option<tempfile::TempDir>,
}

/// Interface names (each lives in its own namespace, so they never collide).
pub const SERVER_IF_CLIENT: &str = "s-cli";
/// The server's interface towards the attacker.
pub const SERVER_IF_ATTACKER: &str = "s-att";
/// The client's interface.
pub const CLIENT_IF: &str = "c-srv";
/// The attacker's interface.
pub const ATTACKER_IF: &str = "a-srv";

/// Where `ip netns exec NS` finds files to bind-mount over those of `/etc` (`/etc/netns/NS/`).
pub const NETNS_ETC: &str = "/etc/netns";

/// Whether a lab made [`NETNS_ETC`] (then the last lab removes it once it is empty).
static MADE_NETNS_ETC: AtomicBool = AtomicBool::new(false);

impl Lab {
    /// Creates the namespaces and links. `tag` names the test in messages.
    pub fn new(tag: &str) -> Lab {
        let seq = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let n = seq % 250 + 1;
        let pid = std::process::id();
        let base = format!("{PREFIX}-{pid}-{n}");
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{base}-{tag}-"))
            .tempdir()
            .expect("create lab directory");
        // As a plain mkdir makes it (tempfile's is 0700): daemons that drop privileges and
        // programs run as other users read the configuration and keys' directory.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod lab directory");
        let dir = tmp.path().to_path_buf();
        let lab = Lab {
            n,
            tag: tag.to_owned(),
            dir,
            server_ns: format!("{base}-srv"),
            client_ns: format!("{base}-cli"),
            attacker_ns: format!("{base}-att"),
            lan_ns: (1..=4).map(|i| format!("{base}-lan{i}")).collect(),
            wan_ns: (1..=2).map(|i| format!("{base}-wan{i}")).collect(),
            created: Mutex::new(Vec::new()),
            tmp: Some(tmp),
        };
        // If setup panics, `lab` is dropped and removes what was created.
        lab.setup();
        lab
    }

    /// Runs `ip ARGS`; panics unless it succeeds.
    pub(crate) fn ip(&self, args: &[&str]) {
        let o = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            o.status.success(),
            "lab {}: `ip {}` failed: {}",
            self.tag,
            args.join(" "),
            text(&o)
        );
    }

    /// Adds a veth pair: `a.0` in namespace `a.1`, its peer `b.0` in namespace `b.1`.
    pub(crate) fn veth(&self, a: (&str, &str), b: (&str, &str)) {
        self.ip(&[
            "link", "add", a.0, "netns", a.1, "type", "veth", "peer", "name", b.0, "netns", b.1,
        ]);
    }

    /// Gives `dev` in namespace `ns` the lab's addresses (`v4`/24, `v6`/64 without duplicate
    /// address detection) and sets it up.
    pub(crate) fn address(&self, ns: &str, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
        self.ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
        let v6 = format!("{v6}/64");
        self.ip(&["-n", ns, "-6", "addr", "add", &v6, "dev", dev, "nodad"]);
        self.ip(&["-n", ns, "link", "set", dev, "up"]);
    }

    /// Adds the default routes of namespace `ns` via `gw4` and `gw6`.
    pub(crate) fn default_routes(&self, ns: &str, gw4: Ipv4Addr, gw6: Ipv6Addr) {
        self.ip(&["-n", ns, "route", "add", "default", "via", &gw4.to_string()]);
        let gw6 = gw6.to_string();
        self.ip(&["-n", ns, "-6", "route", "add", "default", "via", &gw6]);
    }

    fn setup(&self) {
        for ns in [&self.server_ns, &self.client_ns, &self.attacker_ns] {
            self.add_ns(ns);
        }
        let (s, c, a) = (&self.server_ns, &self.client_ns, &self.attacker_ns);
        self.veth((SERVER_IF_CLIENT, s), (CLIENT_IF, c));
        self.veth((SERVER_IF_ATTACKER, s), (ATTACKER_IF, a));
        let links = [
            (
                s,
                SERVER_IF_CLIENT,
                self.v4(Host::Server),
                self.v6(Host::Server),
            ),
            (c, CLIENT_IF, self.v4(Host::Client), self.v6(Host::Client)),
            (
                s,
                SERVER_IF_ATTACKER,
                self.server_v4_attacker_side(),
                self.server_v6_attacker_side(),
            ),
            (
                a,
                ATTACKER_IF,
                self.v4(Host::Attacker),
                self.v6(Host::Attacker),
            ),
        ];
        for (ns, dev, v4, v6) in links {
            self.address(ns, dev, v4, v6);
        }
        self.default_routes(c, self.v4(Host::Server), self.v6(Host::Server));
        self.default_routes(
            a,
            self.server_v4_attacker_side(),
            self.server_v6_attacker_side(),
        );
    }

    /// The namespace of a host.
    pub fn ns(&self, host: Host) -> &str {
        match host {
            Host::Server => &self.server_ns,
            Host::Client => &self.client_ns,
            Host::Attacker => &self.attacker_ns,
            Host::Lan(i) => &self.lan_ns[usize::from(i.clamp(1, 4)) - 1],
            Host::Wan(i) => &self.wan_ns[usize::from(i.clamp(1, 2)) - 1],
        }
    }

    /// IPv4 address of a host (the server's is the one on the client link).
    pub fn v4(&self, host: Host) -> Ipv4Addr {
        let n = u8::try_from(self.n).expect("lab number fits a byte");
        match host {
            Host::Server => Ipv4Addr::new(198, 18, n, 1),
            Host::Client => Ipv4Addr::new(198, 18, n, 2),
            Host::Attacker => Ipv4Addr::new(198, 19, n, 2),
            Host::Lan(i) => Ipv4Addr::new(198, 19, 251, 10 + i),
            Host::Wan(i) => Ipv4Addr::new(198, 19, 251 + i, 2),
        }
    }

    /// Adds a namespace to the lab (deleted with it), loopback up. Addresses are usable at
    /// once: no duplicate address detection (also for the link-local ones; the global ones are
    /// added with `nodad`).
    pub(crate) fn add_ns(&self, ns: &str) {
        self.ip(&["netns", "add", ns]);
        self.created.lock().unwrap().push(ns.to_owned());
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
            .args([
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ])
            .output()
            .expect("run sysctl");
        assert!(o.status.success(), "sysctl in {ns}: {}", text(&o));
        self.ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Sets a sysctl in a host's namespace; panics unless it succeeds.
    pub(crate) fn sysctl(&self, host: Host, setting: &str) {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns(host),
                "sysctl",
                "-q",
                "-w",
                setting,
            ])
            .output()
            .expect("run sysctl");
        assert!(o.status.success(), "sysctl {setting}: {}", text(&o));
    }

    /// IPv6 address of a host (the server's is the one on the client link).
    pub fn v6(&self, host: Host) -> Ipv6Addr {
        let n = u16::try_from(self.n).expect("lab number fits");
        match host {
            Host::Server => Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 1),
            Host::Client => Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 2),
            Host::Attacker => Ipv6Addr::new(0x2001, 0xdb8, n, 0xa, 0, 0, 0, 2),
            Host::Lan(_) | Host::Wan(_) => panic!("{host:?} has IPv4 only"),
        }
    }

    /// The address of a host in a family.
    pub fn addr(&self, host: Host, family: Family) -> IpAddr {
        match family {
            Family::V4 => IpAddr::V4(self.v4(host)),
            Family::V6 => IpAddr::V6(self.v6(host)),
        }
    }

    /// The server's IPv4 address on the attacker link.
    pub fn server_v4_attacker_side(&self) -> Ipv4Addr {
        let n = u8::try_from(self.n).expect("lab number fits a byte");
        Ipv4Addr::new(198, 19, n, 1)
    }

    /// The server's IPv6 address on the attacker link.
    pub fn server_v6_attacker_side(&self) -> Ipv6Addr {
        let n = u16::try_from(self.n).expect("lab number fits");
        Ipv6Addr::new(0x2001, 0xdb8, n, 0xa, 0, 0, 0, 1)
    }

    /// A path in the lab directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a file in the lab directory (replacing it) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Writes a secret (mode 0600, replacing any file of that name) and returns its path.
    pub fn write_secret(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        let _ = std::fs::remove_file(&p);
        sesame_keys::write_secret_file(&p, text)
            .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// Generates a private key, writes it to `NAME.key` (0600) and returns it.
    pub fn gen_key(&self, name: &str) -> Key {
        let private = sesame_keys::PrivateKey::generate();
        let public = private.public_key().to_base64();
        let path = self.write_secret(&format!("{name}.key"), &private.to_base64());
        Key { path, public }
    }

    /// Generates a pre-shared key, writes it to `NAME.psk` (0600) and returns the path.
    pub fn gen_psk(&self, name: &str) -> PathBuf {
        let psk = sesame_keys::PresharedKey::generate();
        self.write_secret(&format!("{name}.psk"), &psk.to_base64())
    }

    fn ns_command(&self, host: Host, program: &OsStr) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(host)]).arg(program);
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Runs a program in a host's namespace and returns its output.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        host: Host,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Output {
        let mut cmd = self.ns_command(host, program.as_ref());
        cmd.args(args).stdin(Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// Runs a program in a host's namespace; panics unless it succeeds; returns stdout.
    pub fn run_ok<S: AsRef<OsStr>>(
        &self,
        host: Host,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> String {
        let program = program.as_ref();
        let o = self.run(host, program, args);
        assert!(
            o.status.success(),
            "lab {}: {} {:?} in {host:?} failed: {}",
            self.tag,
            program.to_string_lossy(),
            args.iter()
                .map(|a| a.as_ref().to_string_lossy())
                .collect::<Vec<_>>(),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts a background process in a host's namespace.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        host: Host,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = self.ns_command(host, program.as_ref());
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(&format!("{name} [{}, {host:?}]", self.tag), cmd)
    }

    /// Writes the hosts file of a host's namespace: `ip netns exec`, which runs every command
    /// of the lab there, bind-mounts `/etc/netns/NS/hosts` over `/etc/hosts`, so names resolve
    /// as `lines` say (`ADDRESS NAME...` lines, after localhost's). Removed with the lab.
    pub fn set_hosts(&self, host: Host, lines: &str) {
        let dir = Path::new(NETNS_ETC).join(self.ns(host));
        if !Path::new(NETNS_ETC).exists() {
            MADE_NETNS_ETC.store(true, Ordering::SeqCst);
        }
        // Another lab may remove an empty /etc/netns between the two mkdirs: try again.
        let mut made = std::fs::create_dir_all(&dir);
        for _ in 0..3 {
            if made.is_ok() {
                break;
            }
            made = std::fs::create_dir_all(&dir);
        }
        made.unwrap_or_else(|e| panic!("lab {}: create {}: {e}", self.tag, dir.display()));
        let file = dir.join("hosts");
        std::fs::write(
            &file,
            format!("127.0.0.1 localhost\n::1 localhost\n{lines}"),
        )
        .unwrap_or_else(|e| panic!("lab {}: write {}: {e}", self.tag, file.display()));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let created = std::mem::take(&mut *self.created.lock().unwrap());
        for ns in &created {
            // Whatever still runs in our namespaces was started by this lab.
            kill_namespace_pids(ns);
        }
        for ns in &created {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            // A hosts file written by `set_hosts`; /etc/netns itself once no lab uses it.
            let _ = std::fs::remove_dir_all(Path::new(NETNS_ETC).join(ns));
        }
        if MADE_NETNS_ETC.load(Ordering::SeqCst) {
            let _ = std::fs::remove_dir(NETNS_ETC);
        }
        let keep = std::env::var("SESAME_E2E_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
        if let Some(tmp) = self.tmp.take() {
            if keep {
                eprintln!("lab {}: kept {}", self.tag, tmp.keep().display());
            }
            // Otherwise dropping `tmp` removes the directory.
        }
    }
}

/// A key written to the lab directory.
#[derive(Clone, Debug)]
pub struct Key {
    /// The private key file (0600).
    pub path: PathBuf,
    /// The public key, base64.
    pub public: String,
}
