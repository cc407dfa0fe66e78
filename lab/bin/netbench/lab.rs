//! The testbed: a lab with the server's links bridged, the client address pool, the service,
//! and the daemons under test (their output to a file: a flood can make a daemon log a lot).

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sesame_tests::{CLIENT_IF, Host, Lab, Proc, SERVER_IF_ATTACKER, SERVER_IF_CLIENT, signal};

use crate::Result;
use crate::floor::FloorListener;
use crate::util::{ip_batch, ns_run};

/// The bridge joining the server's links; every daemon watches it.
pub(crate) const LAN: &str = "s-lan";
/// A fixed, locally administered MAC address for the bridge.
const LAN_MAC: &str = "02:5e:5a:00:00:01";
/// Client addresses, one per knock: 198.18.240.1 … 198.18.255.254.
pub(crate) const POOL_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 0);
const POOL_PREFIX: &str = "198.18.240.0/20";
pub(crate) const POOL_MAX: usize = 4094;
/// The protected service.
pub(crate) const SERVICE_PORT: u16 = 22;
/// `PATH` of every daemon and of the floor's listener.
const DAEMON_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn pool_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(POOL_BASE) + 1 + i as u32)
}

pub(crate) struct Daemon {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Daemon {
    pub(crate) fn spawn(
        lab: &Lab,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let log = lab.path(&format!("{name}.out"));
        let f = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", lab.ns(Host::Server)])
            .arg(program)
            .args(args)
            .current_dir(&lab.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            // What a service manager gives a daemon (sesamed finds `nft` in it).
            .env("PATH", DAEMON_PATH);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `file` contains `pat`; fails if the daemon exits first.
    pub(crate) fn wait_for(&mut self, file: &Path, pat: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let content = std::fs::read_to_string(file).unwrap_or_default();
            if content.contains(pat) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before `{pat}`; output:\n{}",
                    self.name,
                    self.output()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no `{pat}` in {} within {timeout:?}; output:\n{}",
                    self.name,
                    file.display(),
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn output(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub(crate) fn check_comm(&self, expect: &str) -> Result<()> {
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", self.pid())).unwrap_or_default();
        if comm.trim() == expect {
            Ok(())
        } else {
            Err(format!(
                "pid {} is {:?}, not {expect}: the figures would be another process's",
                self.pid(),
                comm.trim()
            ))
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGTERM);
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The testbed: a lab with the server's links bridged, the client address pool and the service

pub(crate) struct Bed {
    /// Per-system state that must go before the lab (daemons, the floor's listener).
    pub(crate) daemon: Option<Daemon>,
    pub(crate) floor: Option<FloorListener>,
    pub(crate) service: Option<Proc>,
    pub(crate) server: Ipv4Addr,
    pub(crate) pool: usize,
    pub(crate) next: usize,
    pub(crate) lab: Lab,
}

impl Bed {
    pub(crate) fn new(tag: &str, pool: usize) -> Result<Bed> {
        let lab = Lab::new(tag);
        let server = lab.v4(Host::Server);
        let attacker_side = lab.server_v4_attacker_side();
        let s = lab.ns(Host::Server).to_owned();
        let c = lab.ns(Host::Client).to_owned();
        let n = lab.n;
        // The server's two links become ports of one bridge that holds its addresses.
        ip_batch(
            &s,
            &format!(
                "link add {LAN} type bridge\n\
                 link set {LAN} address {LAN_MAC}\n\
                 address flush dev {SERVER_IF_CLIENT}\n\
                 address flush dev {SERVER_IF_ATTACKER}\n\
                 link set {SERVER_IF_CLIENT} master {LAN}\n\
                 link set {SERVER_IF_ATTACKER} master {LAN}\n\
                 address add {server}/24 dev {LAN}\n\
                 address add {attacker_side}/24 dev {LAN}\n\
                 address add 2001:db8:{n:x}::1/64 dev {LAN} nodad\n\
                 link set {LAN} up\n\
                 route add {POOL_PREFIX} dev {LAN} src {server}\n"
            ),
        )?;
        let client_mac = lab.mac(Host::Client, CLIENT_IF);
        let mut srv = String::new();
        let mut cli =
            format!("neigh replace {server} lladdr {LAN_MAC} dev {CLIENT_IF} nud permanent\n");
        for i in 0..pool {
            let a = pool_addr(i);
            let _ = writeln!(cli, "address add {a}/32 dev {CLIENT_IF}");
            let _ = writeln!(
                srv,
                "neigh replace {a} lladdr {client_mac} dev {LAN} nud permanent"
            );
        }
        ip_batch(&s, &srv)?;
        ip_batch(&c, &cli)?;
        let service = lab.serve(&[SocketAddr::from(SocketAddrV4::new(server, SERVICE_PORT))]);
        Ok(Bed {
            daemon: None,
            floor: None,
            service: Some(service),
            server,
            pool,
            next: 0,
            lab,
        })
    }

    /// The next `n` unused client addresses.
    pub(crate) fn take(&mut self, n: usize) -> Result<Vec<Ipv4Addr>> {
        if self.next + n > self.pool {
            return Err("internal: client address pool exhausted".into());
        }
        let v = (self.next..self.next + n).map(pool_addr).collect();
        self.next += n;
        Ok(v)
    }

    pub(crate) fn server_ns(&self) -> &str {
        self.lab.ns(Host::Server)
    }

    /// `iptables` rules like a typical host firewall for the iptables peers: established
    /// traffic passes, new connections to the service are dropped.
    pub(crate) fn iptables_gate(&self, iptables: &Path) -> Result<()> {
        let ipt = iptables.to_string_lossy();
        let port = SERVICE_PORT.to_string();
        ns_run(
            self.server_ns(),
            &ipt,
            &[
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        )?;
        ns_run(
            self.server_ns(),
            &ipt,
            &["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"],
        )?;
        Ok(())
    }

    /// True if a connection from the client's own address opens now (the gate check).
    pub(crate) fn service_reachable(&self) -> bool {
        self.lab.connects(
            Host::Client,
            SocketAddr::from(SocketAddrV4::new(self.server, SERVICE_PORT)),
            300,
        )
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.floor = None;
        self.daemon = None;
        self.service = None;
    }
}
