//! Firewall backends: what a grant does.
//!
//! * [`Nftables`]: sesamed owns one table (`inet sesame` by default), applied atomically with
//!   one `nft -f` transaction. Granted (address, protocol, port) triples live in sets whose
//!   elements carry a kernel timeout, so access closes on time even if sesamed dies. The gate
//!   hooks `prerouting` before destination NAT, so services that Docker (or any DNAT) publishes
//!   are hidden too, matched by the port the client connects to; it judges only packets to
//!   this host's own addresses (`fib daddr type local`), never traffic routed through it.
//!   With `lease = "connection"` the first new connection of a granted address deletes its
//!   element in the kernel (a `delete @set` statement in the packet path).
//! * [`CommandHooks`]: `open_command` / `close_command` argv arrays (no shell) with
//!   placeholders, run with a time limit.
//! * [`LogOnly`]: logs the grant.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sesame_proto::params::KnockParams;
use sesame_proto::{Proto, Service};
use tokio::io::AsyncWriteExt;

use crate::config::{Backend, Config};

/// One backend operation's lease: a service opened for an address on behalf of a client,
/// for `timeout_ms` from now.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The client's name.
    pub client: String,
    /// The address allowed in (the block's first address when `prefix` is shorter).
    pub address: IpAddr,
    /// The block's prefix length (32 or 128: the address alone).
    pub prefix: u8,
    /// The service opened.
    pub service: Service,
    /// How long from now the element lasts (its kernel timeout for nftables).
    pub timeout_ms: u64,
}

impl Lease {
    /// The time left in whole seconds, rounded up (the `{lease_seconds}` placeholder).
    pub fn seconds(&self) -> u64 {
        self.timeout_ms.div_ceil(1000)
    }
}

/// Why a firewall action failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The program could not be started (missing, not executable).
    #[error("cannot run {program}: {source}", program = .program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("{program} failed ({status}): {stderr}", program = .program.display())]
    Failed {
        /// The program.
        program: PathBuf,
        /// Its exit status.
        status: String,
        /// The first lines of its error output.
        stderr: String,
    },
    /// The program did not finish in time and was killed.
    #[error("{program} did not finish within {ms} ms and was killed", program = .program.display())]
    Timeout {
        /// The program.
        program: PathBuf,
        /// The limit.
        ms: u64,
    },
}

/// What every backend does.
pub trait Firewall {
    /// Prepares the backend (creates the nftables table). Called once at start.
    fn setup(&mut self) -> impl Future<Output = Result<(), FirewallError>>;
    /// Opens `lease`. `refresh` is true when the same lease is already active: the backend
    /// extends it instead of adding anything.
    fn grant(
        &mut self,
        lease: &Lease,
        refresh: bool,
    ) -> impl Future<Output = Result<(), FirewallError>>;
    /// Closes `lease` (its time is up, or its client was removed).
    fn revoke(&mut self, lease: &Lease) -> impl Future<Output = Result<(), FirewallError>>;
    /// Whether [`Firewall::revoke`] must be called when a lease ends (the kernel does it for
    /// nftables).
    fn needs_revoke(&self) -> bool;
    /// Checks that what [`Firewall::setup`] built is still in place and rebuilds it if not;
    /// returns whether it had to. Called every few seconds.
    fn verify(&mut self) -> impl Future<Output = Result<bool, FirewallError>> {
        async { Ok(false) }
    }
}

/// Starts `cmd` on a blocking thread once the privileges are dropped. Starting a process
/// suspends the thread that starts it until the child has called `exec` (0.25 ms here, 8.8 ms
/// once under `perf trace`): on the packet thread that delayed knocks (BENCHMARKS.md, "The log
/// leaves the packet thread"). Before the drop (the table's setup at start) it starts `cmd`
/// on this thread: a blocking thread started then would keep every privilege for the whole
/// run (capabilities belong to each thread), and `drop_privileges` refuses to run with one.
async fn spawn_off_thread(
    mut cmd: tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    if !crate::privileges::dropped() {
        return cmd.spawn();
    }
    tokio::task::spawn_blocking(move || cmd.spawn())
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Runs a program with a time limit, feeding `stdin`.
async fn run_program(
    argv: &[String],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<(), FirewallError> {
    let program = PathBuf::from(argv.first().map(String::as_str).unwrap_or(""));
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = spawn_off_thread(cmd)
        .await
        .map_err(|source| FirewallError::Spawn {
            program: program.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits early closes its stdin; its exit status tells the story.
        let _ = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(FirewallError::Timeout {
            program,
            ms: timeout.as_millis() as u64,
        }),
        Ok(Err(source)) => Err(FirewallError::Spawn { program, source }),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect();
            Err(FirewallError::Failed {
                program,
                status: out.status.to_string(),
                stderr: stderr.join(" | "),
            })
        }
    }
}

/// The nftables backend.
#[derive(Debug, Clone)]
pub struct Nftables {
    nft: PathBuf,
    /// Grants and revocations over netlink (`firewall.netlink`); `nft -f` otherwise.
    netlink: bool,
    /// Connection-bound leases: the first new connection ends the lease in the kernel.
    connection: bool,
    table: String,
    protect: Vec<Service>,
    port_lo: u16,
    port_hi: u16,
    exclude: Vec<u16>,
    /// The block sizes clients' leases use besides single addresses (`lease_prefix_v4`/`_v6`):
    /// one set per length, matched on the source address masked to it.
    prefixes: std::collections::BTreeSet<u8>,
    /// A token in a comment of the chain, new at every (re)build: a chain without it was
    /// built by someone else (the fail-closed boot rules, a reloaded ruleset dump), so the
    /// kernel no longer holds the leases and they must be put back.
    marker: String,
}

/// A fresh marker: 8 random bytes in hex.
fn fresh_marker() -> String {
    let mut b = [0u8; 8];
    // The marker is not a secret; a failed RNG still yields a marker unlike any file's.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const SET_V4: &str = "granted4";
const SET_V6: &str = "granted6";
const CHAIN: &str = "gate";
/// The chain that silently drops the knock range (at input, after capture).
const KNOCK_CHAIN: &str = "knocks";
/// Its priority: before the usual `filter` chains (0), as protocol-1 sesamed's input chain.
const KNOCK_PRIORITY: i32 = -10;
/// The gate's priority: after conntrack (-200), before destination NAT (-100).
const PRIORITY: i32 = -150;
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

impl Nftables {
    /// A backend for table `inet <table>`.
    pub fn new(nft: PathBuf, table: String, protect: Vec<Service>, params: &KnockParams) -> Self {
        Nftables {
            nft,
            netlink: true,
            connection: false,
            table,
            protect,
            port_lo: params.port_lo,
            port_hi: params.port_hi,
            exclude: params.exclude_ports().to_vec(),
            prefixes: std::collections::BTreeSet::new(),
            marker: fresh_marker(),
        }
    }

    /// The block sizes (besides 32 and 128) that clients' leases use.
    pub fn with_prefixes(mut self, prefixes: impl IntoIterator<Item = u8>) -> Self {
        self.prefixes = prefixes
            .into_iter()
            .filter(|p| *p != 32 && *p != 128)
            .collect();
        self
    }

    /// The set of the elements of `prefix` bits of an address of this family.
    fn set_name(v4: bool, prefix: u8) -> String {
        match (v4, prefix) {
            (true, 32) => SET_V4.to_owned(),
            (false, 128) => SET_V6.to_owned(),
            (true, p) => format!("{SET_V4}_p{p}"),
            (false, p) => format!("{SET_V6}_p{p}"),
        }
    }

    /// The fail-closed gate for the boot ruleset (`sesamed gate-rules`): the table sesamed
    /// builds, without its marker, as a file `nft -f` (or an `include` in
    /// `/etc/nftables.conf`) loads before sesamed runs. It keeps the protected services
    /// closed until sesamed starts, and again whenever the ruleset is reloaded while sesamed
    /// is down; loaded while sesamed runs, it keeps the granted elements and sesamed rebuilds
    /// its chain within seconds.
    pub fn gate_rules(&self) -> String {
        let mut plain = self.clone();
        plain.marker.clear();
        format!(
            "# The sesame gate, loaded at boot so the services below stay closed while sesamed is\n# not running. Generated by `sesamed gate-rules`; regenerate it when [knock] or\n# [firewall] change. sesamed takes the table over when it starts.\n{}",
            plain.ruleset()
        )
    }

    /// The transaction that (re)creates the table. Existing granted elements are kept, so a
    /// restart does not cut clients off; the chain is rebuilt from the configuration.
    pub fn ruleset(&self) -> String {
        let t = format!("inet {}", self.table);
        let services = |list: &[Service]| {
            list.iter()
                .map(|s| format!("{} . {}", s.proto, s.port))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::new();
        out.push_str(&format!("add table {t}\n"));
        // `dynamic`: the packet path may delete elements (connection-bound leases).
        out.push_str(&format!(
            "add set {t} {SET_V4} {{ type ipv4_addr . inet_proto . inet_service; flags dynamic,timeout; }}\n"
        ));
        out.push_str(&format!(
            "add set {t} {SET_V6} {{ type ipv6_addr . inet_proto . inet_service; flags dynamic,timeout; }}\n"
        ));
        // Blocks: one set per length, keyed by the block's first address.
        let blocks: Vec<(bool, u8)> = self.prefixes.iter().map(|p| (*p <= 32, *p)).collect();
        for &(v4, p) in &blocks {
            out.push_str(&format!(
                "add set {t} {} {{ type {}_addr . inet_proto . inet_service; flags dynamic,timeout; }}\n",
                Self::set_name(v4, p),
                if v4 { "ipv4" } else { "ipv6" }
            ));
        }
        // Before destination NAT (priority -100): a port published by Docker is judged by the
        // port the client connects to, before it is rewritten and forwarded.
        out.push_str(&format!(
            "add chain {t} {CHAIN} {{ type filter hook prerouting priority {PRIORITY}; policy accept; }}\n"
        ));
        out.push_str(&format!("flush chain {t} {CHAIN}\n"));
        if self.marker.is_empty() {
            out.push_str(&format!(
                "add rule {t} {CHAIN} ct state established,related accept\n"
            ));
        } else {
            out.push_str(&format!(
                "add rule {t} {CHAIN} ct state established,related accept comment \"sesamed {}\"\n",
                self.marker
            ));
        }
        out.push_str(&format!("add rule {t} {CHAIN} iif lo accept\n"));
        // Only this host's own addresses: traffic routed through it is not ours to judge.
        out.push_str(&format!(
            "add rule {t} {CHAIN} fib daddr type != local accept\n"
        ));
        let mut matches: Vec<(String, String)> = vec![
            ("ip saddr".to_owned(), SET_V4.to_owned()),
            ("ip6 saddr".to_owned(), SET_V6.to_owned()),
        ];
        for &(v4, p) in &blocks {
            let start = if v4 {
                crate::lease::block_start(IpAddr::V4(std::net::Ipv4Addr::BROADCAST), p)
            } else {
                crate::lease::block_start(IpAddr::V6(std::net::Ipv6Addr::from(u128::MAX)), p)
            };
            let family = if v4 { "ip" } else { "ip6" };
            matches.push((format!("{family} saddr & {start}"), Self::set_name(v4, p)));
        }
        for (source, set) in matches {
            let matched = format!("{source} . meta l4proto . th dport");
            if self.connection {
                // The first new connection uses the lease up: its element goes, in the
                // kernel, before any other packet can use it.
                out.push_str(&format!(
                    "add rule {t} {CHAIN} {matched} @{set} ct state new delete @{set} {{ {matched} }} accept\n"
                ));
            } else {
                out.push_str(&format!("add rule {t} {CHAIN} {matched} @{set} accept\n"));
            }
        }
        out.push_str(&format!(
            "add rule {t} {CHAIN} meta l4proto . th dport {{ {} }} drop\n",
            services(&self.protect)
        ));
        // Knocks are dropped at input, after the capture has seen them: on a bridged uplink
        // with br_netfilter the prerouting hooks run on the bridge port, before the frame
        // reaches the bridge device sesamed captures on.
        out.push_str(&format!(
            "add chain {t} {KNOCK_CHAIN} {{ type filter hook input priority {KNOCK_PRIORITY}; policy accept; }}\n"
        ));
        out.push_str(&format!("flush chain {t} {KNOCK_CHAIN}\n"));
        out.push_str(&format!("add rule {t} {KNOCK_CHAIN} iif lo accept\n"));
        let mut knock = format!(
            "add rule {t} {KNOCK_CHAIN} meta l4proto {{ tcp, udp }} th dport {}-{}",
            self.port_lo, self.port_hi
        );
        if !self.exclude.is_empty() {
            let list: Vec<String> = self.exclude.iter().map(u16::to_string).collect();
            knock.push_str(&format!(" th dport != {{ {} }}", list.join(", ")));
        }
        knock.push_str(" drop\n");
        out.push_str(&knock);
        out
    }

    fn element(&self, lease: &Lease) -> (String, String, String) {
        let set = Self::set_name(lease.address.is_ipv4(), lease.prefix);
        let proto = match lease.service.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        (
            format!("inet {}", self.table),
            set,
            format!("{} . {proto} . {}", lease.address, lease.service.port),
        )
    }

    /// The transaction for a grant: add (no-op if present), delete, add with a fresh timeout,
    /// so a re-knock refreshes the lease atomically.
    pub fn grant_script(&self, lease: &Lease) -> String {
        let (t, set, e) = self.element(lease);
        let timeout = lease.timeout_ms.max(1);
        format!(
            "add element {t} {set} {{ {e} timeout {timeout}ms }}\ndelete element {t} {set} {{ {e} }}\nadd element {t} {set} {{ {e} timeout {timeout}ms }}\n"
        )
    }

    /// Connection-bound leases (`[firewall] lease = "connection"`).
    pub fn with_connection_leases(mut self, connection: bool) -> Self {
        self.connection = connection;
        self
    }

    /// Whether grants and revocations talk netlink (the default) or run `nft -f`.
    pub fn with_netlink(mut self, netlink: bool) -> Self {
        self.netlink = netlink;
        self
    }

    /// Applies `ops` to the element of `lease` over netlink, in a blocking task.
    async fn netlink_element(
        &self,
        lease: &Lease,
        ops: Vec<crate::netlink::ElementOp>,
    ) -> std::io::Result<()> {
        let (_, set, _) = self.element(lease);
        let table = self.table.clone();
        let proto = match lease.service.proto {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
        };
        let key = crate::netlink::element_key(lease.address, proto, lease.service.port);
        // Off the packet thread: the kernel handles the batch inside `send`, after taking the
        // nf_tables commit lock, which another process's large transaction (an `nft -f` of a
        // big set, firewalld, docker) can hold for a second or more; capture must not wait on
        // it. (Sending a new lease's add on the packet thread saved the two hand-offs, 0.5 ms
        // at p90 of the firewall's part, and was withdrawn for this: BENCHMARKS.md.)
        tokio::task::spawn_blocking(move || crate::netlink::apply(&table, &set, &key, &ops))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }

    /// Applies `ops` to the element of `lease` over netlink, falling back to `script` through
    /// `nft -f` if the kernel refuses (the fallback's error is the one reported).
    async fn apply_element(
        &self,
        lease: &Lease,
        ops: Vec<crate::netlink::ElementOp>,
        script: String,
    ) -> Result<(), FirewallError> {
        if self.netlink {
            match self.netlink_element(lease, ops).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(
                    error = %e,
                    "nftables over netlink failed; trying `nft -f`"
                ),
            }
        }
        self.apply(&script).await
    }

    /// The transaction that replaces the table whole (an incompatible table of another
    /// version is in the way).
    fn replace_script(&self) -> String {
        format!(
            "add table inet {t}\ndelete table inet {t}\n{script}",
            t = self.table,
            script = self.ruleset()
        )
    }

    /// Adds what the kernel may lack to a refusal of the table.
    fn with_hint(&self, e: FirewallError) -> FirewallError {
        match e {
            FirewallError::Failed {
                program,
                status,
                stderr,
            } if self.connection => FirewallError::Failed {
                program,
                status,
                stderr: format!(
                    "{stderr} (lease = \"connection\" deletes set elements from the packet path: it needs Linux 5.4 and nft 0.9.3 or later; lease = \"window\" does not)"
                ),
            },
            e => e,
        }
    }

    /// Asks the kernel, through `nft -c`, whether it would accept the table, without changing
    /// anything (`sesamed check`). `Ok(false)`: nft could not ask (not installed, or no
    /// CAP_NET_ADMIN); the error is what it said.
    pub fn check_ruleset(&self) -> Result<bool, FirewallError> {
        use std::io::Write;
        let mut child = match std::process::Command::new(&self.nft)
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(FirewallError::Spawn {
                    program: self.nft.clone(),
                    source,
                });
            }
        };
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(self.replace_script().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| FirewallError::Spawn {
                program: self.nft.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Operation not permitted") {
            return Ok(false);
        }
        let stderr: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        Err(self.with_hint(FirewallError::Failed {
            program: self.nft.clone(),
            status: out.status.to_string(),
            stderr: stderr.join(" | "),
        }))
    }

    async fn apply(&self, script: &str) -> Result<(), FirewallError> {
        let argv = vec![
            self.nft.to_string_lossy().into_owned(),
            "-f".to_owned(),
            "-".to_owned(),
        ];
        run_program(&argv, Some(script), NFT_TIMEOUT).await
    }
}

impl Firewall for Nftables {
    async fn setup(&mut self) -> Result<(), FirewallError> {
        self.marker = fresh_marker();
        let script = self.ruleset();
        match self.apply(&script).await {
            Ok(()) => Ok(()),
            Err(FirewallError::Failed { .. }) => {
                // An incompatible table from another version: replace it whole.
                self.apply(&self.replace_script())
                    .await
                    .map_err(|e| self.with_hint(e))
            }
            Err(e) => Err(e),
        }
    }

    async fn grant(&mut self, lease: &Lease, refresh: bool) -> Result<(), FirewallError> {
        use crate::netlink::ElementOp;
        let timeout_ms = lease.timeout_ms.max(1);
        if self.netlink && !refresh {
            // A new lease: one message. If the element is there after all (kept across a
            // restart), the refresh below replaces it with the full lease.
            let ops = vec![ElementOp::Create { timeout_ms }];
            if self.netlink_element(lease, ops).await.is_ok() {
                return Ok(());
            }
        }
        let add = ElementOp::Add { timeout_ms };
        let ops = vec![add.clone(), ElementOp::Delete, add];
        self.apply_element(lease, ops, self.grant_script(lease))
            .await
    }

    async fn revoke(&mut self, lease: &Lease) -> Result<(), FirewallError> {
        let (t, set, e) = self.element(lease);
        // Add first so the delete cannot fail on an element the kernel already expired.
        let script = format!(
            "add element {t} {set} {{ {e} timeout 1s }}\ndelete element {t} {set} {{ {e} }}\n"
        );
        use crate::netlink::ElementOp;
        let ops = vec![ElementOp::Add { timeout_ms: 1000 }, ElementOp::Delete];
        self.apply_element(lease, ops, script).await
    }

    fn needs_revoke(&self) -> bool {
        false
    }

    async fn verify(&mut self) -> Result<bool, FirewallError> {
        let argv = [
            "list".to_owned(),
            "chain".to_owned(),
            "inet".to_owned(),
            self.table.clone(),
            CHAIN.to_owned(),
        ];
        let mut cmd = tokio::process::Command::new(&self.nft);
        cmd.args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let out = async { spawn_off_thread(cmd).await?.wait_with_output().await };
        let out = match tokio::time::timeout(NFT_TIMEOUT, out).await {
            Err(_) => {
                return Err(FirewallError::Timeout {
                    program: self.nft.clone(),
                    ms: NFT_TIMEOUT.as_millis() as u64,
                });
            }
            Ok(Err(source)) => {
                return Err(FirewallError::Spawn {
                    program: self.nft.clone(),
                    source,
                });
            }
            Ok(Ok(out)) => out,
        };
        let ours = format!("sesamed {}", self.marker);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&ours) {
            return Ok(false);
        }
        // The table or its chain is gone (`nft flush ruleset`, a firewall restart), or was
        // rebuilt by someone else (the boot gate reloaded): the protected services are exposed,
        // or the leases are gone from the kernel, until it is rebuilt.
        self.setup().await.map(|()| true)
    }
}

/// The command backend.
#[derive(Debug, Clone)]
pub struct CommandHooks {
    open: Vec<String>,
    close: Vec<String>,
    timeout: Duration,
    concurrency: usize,
}

impl CommandHooks {
    /// Hooks from argv templates.
    pub fn new(open: Vec<String>, close: Vec<String>, timeout: Duration) -> Self {
        CommandHooks {
            open,
            close,
            timeout,
            concurrency: 1,
        }
    }

    /// Most hooks running at once (`command_concurrency`).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Substitutes `{ip}`, `{proto}`, `{port}`, `{client}` and `{lease_seconds}` in every
    /// argument. Values go into single arguments; nothing is ever parsed by a shell.
    pub fn argv(template: &[String], lease: &Lease) -> Vec<String> {
        template
            .iter()
            .map(|arg| {
                arg.replace("{ip}", &lease.address.to_string())
                    .replace("{proto}", lease.service.proto.as_str())
                    .replace("{port}", &lease.service.port.to_string())
                    .replace("{client}", &lease.client)
                    .replace("{lease_seconds}", &lease.seconds().to_string())
            })
            .collect()
    }
}

impl Firewall for CommandHooks {
    async fn setup(&mut self) -> Result<(), FirewallError> {
        Ok(())
    }

    async fn grant(&mut self, lease: &Lease, refresh: bool) -> Result<(), FirewallError> {
        if refresh {
            // The lease is extended; running the hook again would only pile up rules.
            return Ok(());
        }
        run_program(&Self::argv(&self.open, lease), None, self.timeout).await
    }

    async fn revoke(&mut self, lease: &Lease) -> Result<(), FirewallError> {
        if self.close.is_empty() {
            return Ok(());
        }
        run_program(&Self::argv(&self.close, lease), None, self.timeout).await
    }

    fn needs_revoke(&self) -> bool {
        !self.close.is_empty()
    }
}

/// The log-only backend.
#[derive(Debug, Clone, Default)]
pub struct LogOnly;

impl Firewall for LogOnly {
    async fn setup(&mut self) -> Result<(), FirewallError> {
        tracing::warn!("firewall backend is \"log\": grants are logged, nothing is opened");
        Ok(())
    }
    async fn grant(&mut self, lease: &Lease, refresh: bool) -> Result<(), FirewallError> {
        tracing::info!(
            client = %lease.client,
            address = %lease.address,
            service = %lease.service,
            refresh,
            "log backend: would open"
        );
        Ok(())
    }
    async fn revoke(&mut self, _lease: &Lease) -> Result<(), FirewallError> {
        Ok(())
    }
    fn needs_revoke(&self) -> bool {
        false
    }
}

/// The backend chosen by `[firewall] backend`.
#[derive(Debug, Clone)]
pub enum AnyFirewall {
    /// nftables.
    Nftables(Nftables),
    /// Command hooks.
    Command(CommandHooks),
    /// Log only.
    Log(LogOnly),
}

impl AnyFirewall {
    /// How the backend wants leases handled (see [`crate::lease::Traits`]).
    pub fn traits(&self) -> crate::lease::Traits {
        use crate::lease::Traits;
        match self {
            AnyFirewall::Nftables(n) => Traits {
                shared_elements: true,
                expires_itself: true,
                refresh_costs: true,
                hooks: false,
                used_up: n.connection,
                concurrency: 1,
            },
            AnyFirewall::Command(c) => Traits {
                shared_elements: false,
                expires_itself: false,
                refresh_costs: false,
                hooks: true,
                used_up: false,
                concurrency: c.concurrency,
            },
            AnyFirewall::Log(_) => Traits {
                shared_elements: false,
                expires_itself: true,
                refresh_costs: false,
                hooks: false,
                used_up: false,
                concurrency: 1,
            },
        }
    }

    /// The capabilities the backend needs (beyond CAP_NET_RAW for the capture).
    pub fn needs_net_admin(&self) -> bool {
        matches!(self, AnyFirewall::Nftables(_))
    }

    /// The backend a configuration asks for.
    pub fn from_config(config: &Config) -> Self {
        let fw = &config.firewall;
        match fw.backend {
            Backend::Nftables => AnyFirewall::Nftables(
                Nftables::new(
                    fw.nft.clone(),
                    fw.table.clone(),
                    fw.protect.clone(),
                    &config.knock.params,
                )
                .with_netlink(fw.netlink)
                .with_connection_leases(fw.lease == crate::config::LeaseKind::Connection)
                .with_prefixes(config.lease_prefixes()),
            ),
            Backend::Command => AnyFirewall::Command(
                CommandHooks::new(
                    fw.open_command.clone(),
                    fw.close_command.clone(),
                    Duration::from_millis(fw.command_timeout_ms),
                )
                .with_concurrency(fw.command_concurrency),
            ),
            Backend::Log => AnyFirewall::Log(LogOnly),
        }
    }
}

impl fmt::Display for AnyFirewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyFirewall::Nftables(n) => write!(f, "nftables (table inet {})", n.table),
            AnyFirewall::Command(_) => f.write_str("command"),
            AnyFirewall::Log(_) => f.write_str("log"),
        }
    }
}

impl Firewall for AnyFirewall {
    async fn setup(&mut self) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Nftables(b) => b.setup().await,
            AnyFirewall::Command(b) => b.setup().await,
            AnyFirewall::Log(b) => b.setup().await,
        }
    }
    async fn grant(&mut self, lease: &Lease, refresh: bool) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Nftables(b) => b.grant(lease, refresh).await,
            AnyFirewall::Command(b) => b.grant(lease, refresh).await,
            AnyFirewall::Log(b) => b.grant(lease, refresh).await,
        }
    }
    async fn revoke(&mut self, lease: &Lease) -> Result<(), FirewallError> {
        match self {
            AnyFirewall::Nftables(b) => b.revoke(lease).await,
            AnyFirewall::Command(b) => b.revoke(lease).await,
            AnyFirewall::Log(b) => b.revoke(lease).await,
        }
    }
    fn needs_revoke(&self) -> bool {
        match self {
            AnyFirewall::Nftables(b) => b.needs_revoke(),
            AnyFirewall::Command(b) => b.needs_revoke(),
            AnyFirewall::Log(b) => b.needs_revoke(),
        }
    }
    async fn verify(&mut self) -> Result<bool, FirewallError> {
        match self {
            AnyFirewall::Nftables(b) => b.verify().await,
            AnyFirewall::Command(b) => b.verify().await,
            AnyFirewall::Log(b) => b.verify().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesame_proto::params::KnockProtocol;

    fn lease(addr: &str) -> Lease {
        let address: IpAddr = addr.parse().unwrap();
        Lease {
            client: "laptop".into(),
            address,
            prefix: crate::lease::full_prefix(address),
            service: Service::new(Proto::Tcp, 22),
            timeout_ms: 30_000,
        }
    }

    #[test]
    fn placeholders_are_substituted_into_single_arguments() {
        let t: Vec<String> = [
            "/bin/hook",
            "{ip}",
            "{proto}/{port}",
            "{client}",
            "--for={lease_seconds}s",
            "{ip}; rm -rf /",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let argv = CommandHooks::argv(&t, &lease("2001:db8::2"));
        assert_eq!(
            argv,
            vec![
                "/bin/hook",
                "2001:db8::2",
                "tcp/22",
                "laptop",
                "--for=30s",
                "2001:db8::2; rm -rf /"
            ]
        );
    }

    #[test]
    fn ruleset_and_grant_scripts() {
        let params = KnockParams::new(30, 3, (10000, 32767), &[10022], KnockProtocol::Udp).unwrap();
        let nft = Nftables::new(
            "nft".into(),
            "sesame".into(),
            vec![
                Service::new(Proto::Tcp, 22),
                Service::new(Proto::Udp, 51820),
            ],
            &params,
        );
        let r = nft.ruleset();
        assert!(r.contains("add chain inet sesame gate { type filter hook prerouting priority -150; policy accept; }"), "{r}");
        assert!(r.contains("fib daddr type != local accept"), "{r}");
        assert!(!r.contains("delete @"), "{r}");
        let conn = nft.clone().with_connection_leases(true).ruleset();
        assert!(
            conn.contains("ip saddr . meta l4proto . th dport @granted4 ct state new delete @granted4 { ip saddr . meta l4proto . th dport } accept"),
            "{conn}"
        );
        assert!(
            r.contains("meta l4proto . th dport { tcp . 22, udp . 51820 } drop"),
            "{r}"
        );
        assert!(
            r.contains("add rule inet sesame knocks meta l4proto { tcp, udp } th dport 10000-32767 th dport != { 10022 } drop"),
            "{r}"
        );
        // Blocks (`lease_prefix_v4`/`_v6`): a set per length, matched on the masked source.
        let blocks = nft.clone().with_prefixes([24, 32, 56, 128]).ruleset();
        assert!(
            blocks.contains("add set inet sesame granted4_p24 { type ipv4_addr . inet_proto . inet_service; flags dynamic,timeout; }"),
            "{blocks}"
        );
        assert!(
            blocks.contains("add rule inet sesame gate ip saddr & 255.255.255.0 . meta l4proto . th dport @granted4_p24 accept"),
            "{blocks}"
        );
        assert!(
            blocks.contains(
                "ip6 saddr & ffff:ffff:ffff:ff00:: . meta l4proto . th dport @granted6_p56 accept"
            ),
            "{blocks}"
        );
        assert!(
            !blocks.contains("granted4_p32") && !blocks.contains("granted6_p128"),
            "{blocks}"
        );
        let mut block = lease("198.18.7.0");
        block.prefix = 24;
        assert!(nft.grant_script(&block).contains(
            "add element inet sesame granted4_p24 { 198.18.7.0 . tcp . 22 timeout 30000ms }"
        ));
        // Knocks are dropped at input (after capture), never in prerouting.
        assert!(
            r.contains("add chain inet sesame knocks { type filter hook input priority -10; policy accept; }"),
            "{r}"
        );
        assert!(
            !r.contains("gate meta l4proto { tcp, udp } th dport 10000"),
            "{r}"
        );
        // The gate drops: accept rules for granted elements come before the drops.
        assert!(r.find("@granted4 accept").unwrap() < r.find("udp . 51820 } drop").unwrap());
        let g = nft.grant_script(&lease("198.18.0.2"));
        assert_eq!(g.lines().count(), 3);
        assert!(
            g.contains("granted4 { 198.18.0.2 . tcp . 22 timeout 30000ms }"),
            "{g}"
        );
        assert!(
            nft.grant_script(&lease("2001:db8::2"))
                .contains("granted6 { 2001:db8::2 . tcp . 22")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn command_failures_and_timeouts_are_reported() {
        let t = Duration::from_millis(300);
        let ok = run_program(&["true".into()], None, t).await;
        assert!(ok.is_ok());
        let failed = run_program(&["false".into()], None, t).await.unwrap_err();
        assert!(matches!(failed, FirewallError::Failed { .. }), "{failed}");
        let missing = run_program(&["/nonexistent/hook".into()], None, t)
            .await
            .unwrap_err();
        assert!(matches!(missing, FirewallError::Spawn { .. }), "{missing}");
        let slow = run_program(&["sleep".into(), "5".into()], None, t)
            .await
            .unwrap_err();
        assert!(matches!(slow, FirewallError::Timeout { .. }), "{slow}");
    }
}
