//! Harness for sesame's end-to-end tests: real binaries, the real kernel, network namespaces.
//!
//! A [`Lab`] is three network namespaces joined by two veth pairs:
//!
//! ```text
//!   client ns                server ns                  attacker ns
//!   c-srv 198.18.N.2 ──── s-cli 198.18.N.1
//!         2001:db8:N::2        2001:db8:N::1
//!                             s-att 198.19.N.1 ──── a-srv 198.19.N.2
//!                                   2001:db8:N:a::1       2001:db8:N:a::2
//! ```
//!
//! The client and the attacker route everything through the server (which does not forward),
//! so both can reach every server address. Everything a lab creates (namespaces, processes,
//! its temporary directory) is removed when it is dropped, also when a test panics; a process
//! dropped during a panic prints its output, so a failing test shows the daemon's log.
//!
//! Environment knobs: `SESAME_E2E_KEEP=1` keeps the lab directory (and prints its path),
//! `SESAME_E2E_RUST_LOG` sets sesamed's `RUST_LOG` (default `info`), `SESAME_E2E_BIN_DIR`
//! overrides where `sesame`, `sesamed` and `sesame-netprobe` are looked up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// True when running in CI (`CI=true`), where missing privileges are a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The environment variable naming the file where [`skip`] records each skipped test
/// (`scripts/test` sets it and counts the lines).
pub const SKIP_LOG_ENV: &str = "SESAME_SKIP_LOG";

/// Says that the running test (or a part of it) is skipped and why: a `SKIPPED (not CI):`
/// line on stderr, and a line `TEST<TAB>WHY` appended to the file that `SESAME_SKIP_LOG` names,
/// so that a skipped test is counted as skipped rather than passed (`scripts/test`). TEST is
/// the test's name (libtest names each test's thread after it). Panics in CI: there a skip is
/// a failure.
pub fn skip(why: &str) {
    assert!(!in_ci(), "{why} (CI=true: nothing may be skipped)");
    eprintln!("SKIPPED (not CI): {why}");
    record_skip(why);
}

/// Appends `TEST<TAB>WHY` to the skip log, if there is one. One `write` with O_APPEND: lines
/// of tests running at once do not mix.
fn record_skip(why: &str) {
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => std::env::args()
            .next()
            .unwrap_or_else(|| "a test".to_owned()),
    };
    let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot record a skipped test in {} ({SKIP_LOG_ENV}): {e}",
            Path::new(&path).display()
        );
    }
}

/// Prefix of every namespace and temporary directory a lab creates.
pub const PREFIX: &str = "se2e";

/// True if this process can create network namespaces and load nftables rules in them.
/// Otherwise panics when `CI=true` (the tests must fail there), or records the skip ([`skip`])
/// and returns false.
pub fn require_netns() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(probe_netns) {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("end-to-end tests need root, ip netns and nft: {why}"),
        Err(why) => {
            skip(&format!(
                "end-to-end tests need root, ip netns and nft: {why}"
            ));
            false
        }
    }
}

fn probe_netns() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!("not root (euid {euid})"));
    }
    for tool in [["ip", "-V"], ["nft", "--version"], ["tcpdump", "--version"]] {
        match Command::new(tool[0]).arg(tool[1]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("`{} {}` failed: {}", tool[0], tool[1], text(&o))),
            Err(e) => return Err(format!("cannot run {}: {e}", tool[0])),
        }
    }
    remove_stale_namespaces();
    let ns = format!("{PREFIX}-{}-probe", std::process::id());
    let result = (|| {
        sh_ok(&["ip", "netns", "add", &ns])?;
        sh_ok(&[
            "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "probe",
        ])?;
        sh_ok(&["ip", "netns", "exec", &ns, "nft", "list", "tables"])?;
        Ok(())
    })();
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    result
}

/// Deletes namespaces left by earlier runs of this harness whose process is gone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            kill_namespace_pids(name);
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
    // Hosts files of namespaces of earlier runs ([`Lab::set_hosts`]).
    let Ok(dirs) = std::fs::read_dir(NETNS_ETC) else {
        return;
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

/// Where `ip netns exec NS` finds files to bind-mount over those of `/etc` (`/etc/netns/NS/`).
pub const NETNS_ETC: &str = "/etc/netns";

/// Whether a lab made [`NETNS_ETC`] (then the last lab removes it once it is empty).
static MADE_NETNS_ETC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn sh_ok(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), text(&o)))
    }
}

/// Stdout and stderr of a finished command, for messages.
pub fn text(o: &Output) -> String {
    let mut s = format!("[{}]", o.status);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    if !out.trim().is_empty() {
        let _ = write!(s, " stdout: {}", out.trim_end());
    }
    if !err.trim().is_empty() {
        let _ = write!(s, " stderr: {}", err.trim_end());
    }
    s
}

/// The directory holding the workspace's binaries: next to the test executable
/// (`target/debug/deps/e2e-…` → `target/debug/`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SESAME_E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary (`sesame`, `sesamed`, `sesame-netprobe`). Panics with a
/// clear message when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: build the binaries first with `cargo build --workspace --bins` \
         (`cargo test --workspace` does it too; `cargo test -p sesame-tests` alone does not build \
         sesame and sesamed)",
        path.display()
    );
    path
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn kill_namespace_pids(ns: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<u32>() {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Background processes

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    open_streams: usize,
}

type SharedLog = Arc<(Mutex<LogState>, Condvar)>;

/// A background process whose stdout and stderr are collected line by line (stderr lines are
/// kept as they are, stdout lines too; both go to one list in arrival order).
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    log: SharedLog,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Proc {
    /// Spawns `cmd` with piped stdin, stdout and stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let log: SharedLog = Arc::new((
            Mutex::new(LogState {
                lines: Vec::new(),
                open_streams: 2,
            }),
            Condvar::new(),
        ));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        spawn_reader(out, Arc::clone(&log));
        spawn_reader(err, Arc::clone(&log));
        Proc {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            log,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    /// The number of lines so far (a mark for [`Proc::wait_for_after`]).
    pub fn mark(&self) -> usize {
        self.log.0.lock().unwrap().lines.len()
    }

    /// All output so far as one string.
    pub fn output(&self) -> String {
        let mut s = String::new();
        for l in self.lines() {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    /// Lines (from index `from`) containing every one of `pats`.
    pub fn matching(&self, from: usize, pats: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .skip(from)
            .filter(|l| pats.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// Waits up to `timeout` for a line (from index `from`) containing every one of `pats`.
    /// Returns `None` on timeout, or early when the process has closed its output.
    pub fn wait_for_after(&self, from: usize, pats: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.log;
        let mut st = lock.lock().unwrap();
        loop {
            if let Some(l) = st
                .lines
                .iter()
                .skip(from)
                .find(|l| pats.iter().all(|p| l.contains(p)))
            {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline || st.open_streams == 0 {
                return None;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// [`Proc::wait_for_after`] from the first line.
    pub fn wait_for(&self, pats: &[&str], timeout: Duration) -> Option<String> {
        self.wait_for_after(0, pats, timeout)
    }

    /// Like [`Proc::wait_for_after`], but panics with the whole output on timeout.
    pub fn expect_after(&self, from: usize, pats: &[&str], timeout: Duration) -> String {
        match self.wait_for_after(from, pats, timeout) {
            Some(l) => l,
            None => {
                // Read the flag in its own statement: the lock must be released before
                // `output()` takes it again.
                let closed = self.log.0.lock().unwrap().open_streams == 0;
                panic!(
                    "{}: no line containing {pats:?} within {timeout:?} (output closed: {closed}); output:\n{}",
                    self.name,
                    self.output()
                )
            }
        }
    }

    /// Like [`Proc::wait_for`], but panics with the whole output on timeout.
    pub fn expect(&self, pats: &[&str], timeout: Duration) -> String {
        self.expect_after(0, pats, timeout)
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Writes one line to the process's stdin.
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin closed"))?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()
    }

    /// Closes stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            signal(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                // Let the readers drain what is left in the pipes.
                let (lock, cv) = &*self.log;
                let mut st = lock.lock().unwrap();
                let until = Instant::now() + Duration::from_secs(1);
                while st.open_streams > 0 && Instant::now() < until {
                    st = cv.wait_timeout(st, Duration::from_millis(50)).unwrap().0;
                }
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_exit(grace) {
            return Some(s);
        }
        self.kill9()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.exited() {
            return Some(s);
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }
}

fn spawn_reader(stream: impl Read + Send + 'static, log: SharedLog) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    let (lock, cv) = &*log;
                    lock.lock().unwrap().lines.push(line);
                    cv.notify_all();
                }
            }
        }
        let (lock, cv) = &*log;
        lock.lock().unwrap().open_streams -= 1;
        cv.notify_all();
    });
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(2));
        if std::thread::panicking() {
            let lines = self.lines();
            let tail: VecDeque<&String> = lines.iter().rev().take(400).rev().collect();
            eprintln!(
                "----- output of {} (pid {}, {:?}; last {} of {} lines) -----",
                self.name,
                self.pid(),
                self.status,
                tail.len(),
                lines.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
            eprintln!("----- end of {} -----", self.name);
        }
    }
}

/// An established TCP connection held by `sesame-netprobe hold` in some namespace.
#[derive(Debug)]
pub struct Held {
    proc: Proc,
    seq: u32,
}

impl Held {
    /// Exchanges one line over the held connection; true if the echo came back.
    pub fn ping(&mut self) -> bool {
        self.seq += 1;
        let word = format!("ping-{}", self.seq);
        let mark = self.proc.mark();
        if self.proc.write_line(&word).is_err() {
            return false;
        }
        let ok = format!("ok {word}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let lines = self.proc.lines();
            for l in lines.iter().skip(mark) {
                if *l == ok {
                    return true;
                }
                if l.starts_with("fail") {
                    return false;
                }
            }
            if self.proc.exited().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The output of the holder so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }
}

// ---------------------------------------------------------------------------------------------
// The lab

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
}

/// Interface names (each lives in its own namespace, so they never collide).
pub const SERVER_IF_CLIENT: &str = "s-cli";
/// The server's interface towards the attacker.
pub const SERVER_IF_ATTACKER: &str = "s-att";
/// The client's interface.
pub const CLIENT_IF: &str = "c-srv";
/// The attacker's interface.
pub const ATTACKER_IF: &str = "a-srv";

impl Lab {
    /// Creates the namespaces and links. `tag` names the test in messages.
    pub fn new(tag: &str) -> Lab {
        let seq = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let n = seq % 250 + 1;
        let pid = std::process::id();
        let base = format!("{PREFIX}-{pid}-{n}");
        let dir = std::env::temp_dir().join(format!("{base}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create lab directory");
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
        };
        // If setup panics, `lab` is dropped and removes what was created.
        lab.setup();
        lab
    }

    fn ip(&self, args: &[&str]) {
        let o = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            o.status.success(),
            "lab {}: `ip {}` failed: {}",
            self.tag,
            args.join(" "),
            text(&o)
        );
    }

    fn setup(&self) {
        for ns in [&self.server_ns, &self.client_ns, &self.attacker_ns] {
            self.add_ns(ns);
        }
        let (s, c, a) = (&self.server_ns, &self.client_ns, &self.attacker_ns);
        self.ip(&[
            "link",
            "add",
            SERVER_IF_CLIENT,
            "netns",
            s,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            c,
        ]);
        self.ip(&[
            "link",
            "add",
            SERVER_IF_ATTACKER,
            "netns",
            s,
            "type",
            "veth",
            "peer",
            "name",
            ATTACKER_IF,
            "netns",
            a,
        ]);
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
            self.ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            self.ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            self.ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let routes = [
            (c, self.v4(Host::Server), self.v6(Host::Server)),
            (
                a,
                self.server_v4_attacker_side(),
                self.server_v6_attacker_side(),
            ),
        ];
        for (ns, gw4, gw6) in routes {
            self.ip(&["-n", ns, "route", "add", "default", "via", &gw4.to_string()]);
            self.ip(&[
                "-n",
                ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gw6.to_string(),
            ]);
        }
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
    fn add_ns(&self, ns: &str) {
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

    fn sysctl(&self, host: Host, setting: &str) {
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
            self.ip(&[
                "link", "add", &port, "netns", &c, "type", "veth", "peer", "name", "l-cli",
                "netns", &ns,
            ]);
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
        self.ip(&[
            "link", "add", &port, "netns", &s, "type", "veth", "peer", "name", "w-srv", "netns",
            &ns,
        ]);
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

    // --- probes (sesame-netprobe) ------------------------------------------------------------

    /// Starts the TCP service (greeting and echo) on `addrs` in the server namespace and waits
    /// until it listens.
    pub fn serve(&self, addrs: &[SocketAddr]) -> Proc {
        let mut args = vec!["serve".to_owned()];
        args.extend(addrs.iter().map(SocketAddr::to_string));
        let p = self.spawn(Host::Server, "service", bin("sesame-netprobe"), &args, &[]);
        p.expect(&["ready"], Duration::from_secs(10));
        p
    }

    /// True if a TCP connection from `from` to `to` succeeds and the greeting arrives within
    /// `timeout_ms`.
    pub fn connects(&self, from: Host, to: SocketAddr, timeout_ms: u64) -> bool {
        let o = self.run(
            from,
            bin("sesame-netprobe"),
            &[
                "connect".to_owned(),
                to.to_string(),
                "--timeout-ms".to_owned(),
                timeout_ms.to_string(),
            ],
        );
        match o.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("netprobe connect {to} from {from:?}: {}", text(&o)),
        }
    }

    /// True if a connection from `from` to `to` succeeds within `within`, trying again every
    /// 500 ms (each attempt sends a fresh SYN).
    pub fn connects_within(&self, from: Host, to: SocketAddr, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.connects(from, to, 500) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Opens a connection from `from` to `to` and keeps it; panics if it cannot connect.
    pub fn hold(&self, from: Host, to: SocketAddr) -> Held {
        let p = self.spawn(
            from,
            "hold",
            bin("sesame-netprobe"),
            &["hold".to_owned(), to.to_string()],
            &[],
        );
        p.expect(&["connected"], Duration::from_secs(5));
        Held { proc: p, seq: 0 }
    }

    /// Runs `sesame-netprobe ARGS` in a namespace and returns its output.
    pub fn netprobe(&self, host: Host, args: &[String]) -> Output {
        self.run(host, bin("sesame-netprobe"), args)
    }

    /// Starts tcpdump on `iface` in a namespace, writing to `NAME.pcap` in the lab directory,
    /// and waits until it captures.
    pub fn capture(&self, host: Host, iface: &str, name: &str, filter: &str) -> Capture {
        let path = self.path(&format!("{name}.pcap"));
        let path_s = path.to_string_lossy().into_owned();
        let mut args = vec![
            "-i",
            iface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            &path_s,
        ];
        if !filter.is_empty() {
            args.push(filter);
        }
        let proc = self.spawn(host, &format!("tcpdump {name}"), "tcpdump", &args, &[]);
        proc.expect(&["listening on"], Duration::from_secs(10));
        Capture { proc, path }
    }

    // --- sesame and sesamed ------------------------------------------------------------------

    /// Runs `sesame ARGS` in the client namespace (or another) and returns the output.
    pub fn sesame<S: AsRef<OsStr>>(&self, host: Host, args: &[S]) -> Output {
        self.run(host, bin("sesame"), args)
    }

    /// Runs `sesamed ARGS` in the server namespace and returns the output.
    pub fn sesamed<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.run(Host::Server, bin("sesamed"), args)
    }

    /// Starts `sesamed run --config CONFIG` in the server namespace and waits for its `ready`
    /// line; panics (with the log) if it exits or is not ready in 15 s.
    pub fn start_sesamed(&self, config: &Path) -> Proc {
        let level = std::env::var("SESAME_E2E_RUST_LOG").unwrap_or_else(|_| "info".to_owned());
        let mut p = self.spawn(
            Host::Server,
            "sesamed",
            bin("sesamed"),
            &[
                OsStr::new("run"),
                OsStr::new("--config"),
                config.as_os_str(),
            ],
            &[("RUST_LOG", level.as_str()), ("NO_COLOR", "1")],
        );
        if p.wait_for(&["ready"], Duration::from_secs(15)).is_none() {
            let status = p.exited();
            panic!(
                "lab {}: sesamed did not log `ready` within 15 s (exit status {status:?}); output:\n{}",
                self.tag,
                p.output()
            );
        }
        p
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

    /// `nft list ruleset` in the server namespace (for messages).
    pub fn server_ruleset(&self) -> String {
        let o = self.run(Host::Server, "nft", &["list", "ruleset"]);
        text(&o)
    }

    /// Polls a new connection from `from` to `to` every 250 ms until it fails, for at most
    /// `limit`. Returns the time from `since` to the first failure, or `None` if it never failed.
    pub fn wait_closed(
        &self,
        from: Host,
        to: SocketAddr,
        since: Instant,
        limit: Duration,
    ) -> Option<Duration> {
        while since.elapsed() < limit {
            if !self.connects(from, to, 400) {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        None
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
        if keep {
            eprintln!("lab {}: kept {}", self.tag, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
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

/// A running tcpdump.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    /// The pcap file.
    pub path: PathBuf,
}

impl Capture {
    /// Waits a moment for packets in flight, stops tcpdump and returns the file's packets.
    pub fn stop(mut self) -> Vec<pcap::Packet> {
        std::thread::sleep(Duration::from_millis(300));
        self.proc.signal(libc::SIGINT);
        if self.proc.wait_exit(Duration::from_secs(5)).is_none() {
            self.proc.kill9();
        }
        pcap::read_file(&self.path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; tcpdump said:\n{}",
                self.path.display(),
                self.proc.output()
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and profile writers

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    let v: Vec<String> = items.iter().map(|s| toml_str(s.as_ref())).collect();
    format!("[{}]", v.join(", "))
}

/// The `[knock]` parameters, shared by the daemon config and client profiles.
#[derive(Clone, Debug)]
pub struct KnockSpec {
    /// `step_seconds`.
    pub step_seconds: u32,
    /// `skew_steps` (server only).
    pub skew_steps: u32,
    /// `length`.
    pub length: u32,
    /// `port_range`.
    pub port_range: (u16, u16),
    /// `exclude_ports`.
    pub exclude_ports: Vec<u16>,
    /// `protocol`: udp, tcp, mixed.
    pub protocol: String,
    /// `timeout_ms` (server only).
    pub timeout_ms: u64,
    /// `payload`: required, optional, none.
    pub payload: String,
    /// Raw TOML lines appended to `[knock]`, for keys this spec lacks.
    pub extra: String,
}

impl Default for KnockSpec {
    fn default() -> Self {
        KnockSpec {
            step_seconds: 30,
            skew_steps: 1,
            length: 3,
            port_range: (20000, 21999),
            exclude_ports: Vec::new(),
            protocol: "udp".to_owned(),
            timeout_ms: 5000,
            payload: "required".to_owned(),
            extra: String::new(),
        }
    }
}

/// One `[[client]]` of the daemon config.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// `name`.
    pub name: String,
    /// `public_key`.
    pub public_key: String,
    /// `psk_file`.
    pub psk_file: Option<PathBuf>,
    /// `allow` (`None`: not written, i.e. every protected service).
    pub allow: Option<Vec<String>>,
    /// `source` (`None`: not written, i.e. any).
    pub source: Option<Vec<String>>,
    /// `allow_other_ip`.
    pub allow_other_ip: bool,
    /// `expires` (RFC 3339).
    pub expires: Option<String>,
    /// Raw TOML lines appended to this `[[client]]`, for keys this spec lacks.
    pub extra: String,
}

impl ClientSpec {
    /// A client with defaults for everything but its name and key.
    pub fn new(name: &str, public_key: &str) -> ClientSpec {
        ClientSpec {
            name: name.to_owned(),
            public_key: public_key.to_owned(),
            psk_file: None,
            allow: None,
            source: None,
            allow_other_ip: false,
            expires: None,
            extra: String::new(),
        }
    }
}

/// The daemon's configuration file, with every knob.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    /// `private_key_file`.
    pub private_key_file: PathBuf,
    /// `state_dir`.
    pub state_dir: String,
    /// `interfaces`.
    pub interfaces: Vec<String>,
    /// `control_socket`.
    pub control_socket: String,
    /// `[knock]`.
    pub knock: KnockSpec,
    /// `[firewall] backend`.
    pub backend: String,
    /// `[firewall] table`.
    pub table: String,
    /// `[firewall] protect`.
    pub protect: Vec<String>,
    /// `[firewall] lease_seconds`.
    pub lease_seconds: u32,
    /// `[firewall] open_command`.
    pub open_command: Option<Vec<String>>,
    /// `[firewall] close_command`.
    pub close_command: Option<Vec<String>>,
    /// `[[client]]`.
    pub clients: Vec<ClientSpec>,
    /// Raw TOML appended to the top level (before any table), for keys this spec lacks.
    pub extra_top: String,
    /// Raw TOML lines appended to `[firewall]`, for keys this spec lacks.
    pub extra_firewall: String,
}

impl DaemonSpec {
    /// Test defaults: knock range 20000–21999, length 3, UDP, payload required, nftables
    /// protecting tcp/22 with 3-second leases.
    pub fn new(private_key_file: &Path) -> DaemonSpec {
        DaemonSpec {
            private_key_file: private_key_file.to_path_buf(),
            state_dir: "state".to_owned(),
            interfaces: vec!["any".to_owned()],
            control_socket: "sesamed.sock".to_owned(),
            knock: KnockSpec::default(),
            backend: "nftables".to_owned(),
            table: "sesame".to_owned(),
            protect: vec!["tcp/22".to_owned()],
            lease_seconds: 3,
            open_command: None,
            close_command: None,
            clients: Vec::new(),
            extra_top: String::new(),
            extra_firewall: String::new(),
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let k = &self.knock;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "private_key_file = {}",
            toml_str(&self.private_key_file.to_string_lossy())
        );
        let _ = writeln!(s, "state_dir = {}", toml_str(&self.state_dir));
        let _ = writeln!(s, "interfaces = {}", toml_list(&self.interfaces));
        let _ = writeln!(s, "control_socket = {}", toml_str(&self.control_socket));
        s.push_str(&self.extra_top);
        let _ = writeln!(s, "\n[knock]");
        let _ = writeln!(s, "step_seconds = {}", k.step_seconds);
        let _ = writeln!(s, "skew_steps = {}", k.skew_steps);
        let _ = writeln!(s, "length = {}", k.length);
        let _ = writeln!(s, "port_range = [{}, {}]", k.port_range.0, k.port_range.1);
        let _ = writeln!(s, "exclude_ports = {:?}", k.exclude_ports);
        let _ = writeln!(s, "protocol = {}", toml_str(&k.protocol));
        let _ = writeln!(s, "timeout_ms = {}", k.timeout_ms);
        let _ = writeln!(s, "payload = {}", toml_str(&k.payload));
        s.push_str(&k.extra);
        let _ = writeln!(s, "\n[firewall]");
        let _ = writeln!(s, "backend = {}", toml_str(&self.backend));
        let _ = writeln!(s, "table = {}", toml_str(&self.table));
        let _ = writeln!(s, "protect = {}", toml_list(&self.protect));
        let _ = writeln!(s, "lease_seconds = {}", self.lease_seconds);
        if let Some(c) = &self.open_command {
            let _ = writeln!(s, "open_command = {}", toml_list(c));
        }
        if let Some(c) = &self.close_command {
            let _ = writeln!(s, "close_command = {}", toml_list(c));
        }
        s.push_str(&self.extra_firewall);
        for c in &self.clients {
            let _ = writeln!(s, "\n[[client]]");
            let _ = writeln!(s, "name = {}", toml_str(&c.name));
            let _ = writeln!(s, "public_key = {}", toml_str(&c.public_key));
            if let Some(p) = &c.psk_file {
                let _ = writeln!(s, "psk_file = {}", toml_str(&p.to_string_lossy()));
            }
            if let Some(a) = &c.allow {
                let _ = writeln!(s, "allow = {}", toml_list(a));
            }
            if let Some(src) = &c.source {
                let _ = writeln!(s, "source = {}", toml_list(src));
            }
            let _ = writeln!(s, "allow_other_ip = {}", c.allow_other_ip);
            if let Some(e) = &c.expires {
                let _ = writeln!(s, "expires = {}", toml_str(e));
            }
            s.push_str(&c.extra);
        }
        s
    }

    /// A client profile matching this config's knock parameters.
    pub fn profile(&self, host: &str, server_public_key: &str, key: &Path) -> ProfileSpec {
        ProfileSpec {
            host: host.to_owned(),
            server_public_key: server_public_key.to_owned(),
            private_key_file: key.to_path_buf(),
            psk_file: None,
            knock: self.knock.clone(),
            open: Vec::new(),
            stun: None,
            bind_address: true,
        }
    }
}

/// A client profile (`sesame open --profile`).
#[derive(Clone, Debug)]
pub struct ProfileSpec {
    /// `host`.
    pub host: String,
    /// `server_public_key`.
    pub server_public_key: String,
    /// `private_key_file`.
    pub private_key_file: PathBuf,
    /// `psk_file`.
    pub psk_file: Option<PathBuf>,
    /// Knock parameters (the server-only ones are not written).
    pub knock: KnockSpec,
    /// `open`.
    pub open: Vec<String>,
    /// `stun` (`host:port`).
    pub stun: Option<String>,
    /// `bind_address` (written only when false).
    pub bind_address: bool,
}

impl ProfileSpec {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let k = &self.knock;
        let mut s = String::new();
        let _ = writeln!(s, "host = {}", toml_str(&self.host));
        let _ = writeln!(
            s,
            "server_public_key = {}",
            toml_str(&self.server_public_key)
        );
        let _ = writeln!(
            s,
            "private_key_file = {}",
            toml_str(&self.private_key_file.to_string_lossy())
        );
        if let Some(p) = &self.psk_file {
            let _ = writeln!(s, "psk_file = {}", toml_str(&p.to_string_lossy()));
        }
        let _ = writeln!(s, "step_seconds = {}", k.step_seconds);
        let _ = writeln!(s, "length = {}", k.length);
        let _ = writeln!(s, "port_range = [{}, {}]", k.port_range.0, k.port_range.1);
        let _ = writeln!(s, "exclude_ports = {:?}", k.exclude_ports);
        let _ = writeln!(s, "protocol = {}", toml_str(&k.protocol));
        let _ = writeln!(s, "payload = {}", toml_str(&k.payload));
        let _ = writeln!(s, "open = {}", toml_list(&self.open));
        if let Some(stun) = &self.stun {
            let _ = writeln!(s, "stun = {}", toml_str(stun));
        }
        if !self.bind_address {
            let _ = writeln!(s, "bind_address = false");
        }
        s
    }
}

/// Rewrites the `private_key_file = ...` line of a profile (as printed by
/// `sesamed export-client`) to point at `key`. Panics if there is no such line.
pub fn set_profile_key(profile: &str, key: &Path) -> String {
    let mut found = false;
    let mut out = String::new();
    for line in profile.lines() {
        if line.trim_start().starts_with("private_key_file") && line.contains('=') {
            found = true;
            let _ = writeln!(
                out,
                "private_key_file = {}",
                toml_str(&key.to_string_lossy())
            );
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        found,
        "no private_key_file line in the exported profile:\n{profile}"
    );
    out
}

// ---------------------------------------------------------------------------------------------
// pcap files

/// A reader for the pcap files tcpdump writes (classic format, either byte order, micro- or
/// nanosecond timestamps; Ethernet, Linux cooked v1/v2 and raw IP link types).
pub mod pcap {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::path::Path;

    /// The transport part of a packet.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum L4 {
        /// A UDP datagram (payload trimmed to the UDP length).
        Udp {
            /// Source port.
            sport: u16,
            /// Destination port.
            dport: u16,
            /// Payload bytes.
            payload: Vec<u8>,
        },
        /// A TCP segment.
        Tcp {
            /// Source port.
            sport: u16,
            /// Destination port.
            dport: u16,
            /// Flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
            flags: u8,
        },
        /// ICMP (v4) or ICMPv6, with its type.
        Icmp {
            /// ICMPv6 rather than ICMP.
            v6: bool,
            /// The type byte.
            kind: u8,
        },
        /// Any other IP protocol, or a fragment.
        Other(u8),
    }

    /// TCP SYN flag.
    pub const SYN: u8 = 0x02;
    /// TCP ACK flag.
    pub const ACK: u8 = 0x10;
    /// TCP RST flag.
    pub const RST: u8 = 0x04;

    /// One IP packet of a capture.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Packet {
        /// Source address.
        pub src: IpAddr,
        /// Destination address.
        pub dst: IpAddr,
        /// Transport.
        pub l4: L4,
    }

    impl Packet {
        /// True for a TCP segment with SYN and without ACK.
        pub fn is_syn(&self) -> bool {
            matches!(self.l4, L4::Tcp { flags, .. } if flags & SYN != 0 && flags & ACK == 0)
        }

        /// True for IPv6 neighbour discovery and multicast listener messages, which the kernel
        /// sends on its own (router/neighbour solicitation and advertisement, redirect, MLD).
        pub fn is_link_control(&self) -> bool {
            matches!(self.l4, L4::Icmp { v6: true, kind } if matches!(kind, 130..=137 | 143))
        }
    }

    impl std::fmt::Display for Packet {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match &self.l4 {
                L4::Udp {
                    sport,
                    dport,
                    payload,
                } => write!(
                    f,
                    "udp {} port {sport} -> {} port {dport} ({} bytes)",
                    self.src,
                    self.dst,
                    payload.len()
                ),
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                } => write!(
                    f,
                    "tcp {} port {sport} -> {} port {dport} flags {flags:#04x}",
                    self.src, self.dst
                ),
                L4::Icmp { v6, kind } => write!(
                    f,
                    "icmp{} type {kind} {} -> {}",
                    if *v6 { "v6" } else { "" },
                    self.src,
                    self.dst
                ),
                L4::Other(p) => write!(f, "ip proto {p} {} -> {}", self.src, self.dst),
            }
        }
    }

    /// Reads a pcap file; frames that are not IPv4 or IPv6 (ARP, …) are skipped.
    pub fn read_file(path: &Path) -> Result<Vec<Packet>, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        parse(&bytes)
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    /// Parses a pcap file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Vec<Packet>, String> {
        if bytes.len() < 24 {
            return Err(format!(
                "{} bytes: too short for a pcap header",
                bytes.len()
            ));
        }
        let magic: [u8; 4] = bytes[0..4].try_into().map_err(|_| "header")?;
        let little = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
        };
        let u32_at = |at: usize| -> Option<u32> {
            let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            Some(if little {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            })
        };
        let linktype = u32_at(20).ok_or("header")? & 0xffff;
        let mut out = Vec::new();
        let mut at = 24;
        while at < bytes.len() {
            let incl = u32_at(at + 8).ok_or("truncated record header")? as usize;
            let start = at + 16;
            let frame = bytes.get(start..start + incl).ok_or("truncated record")?;
            at = start + incl;
            let ip = match linktype {
                // Ethernet, with optional 802.1Q tags.
                1 => {
                    let mut off = 12;
                    let mut et = u16_at(frame, off);
                    while matches!(et, Some(0x8100 | 0x88a8)) {
                        off += 4;
                        et = u16_at(frame, off);
                    }
                    match et {
                        Some(0x0800 | 0x86dd) => frame.get(off + 2..),
                        _ => None,
                    }
                }
                // Linux cooked capture v1: protocol at 14, 16-byte header.
                113 => match u16_at(frame, 14) {
                    Some(0x0800 | 0x86dd) => frame.get(16..),
                    _ => None,
                },
                // Linux cooked capture v2: protocol at 0, 20-byte header.
                276 => match u16_at(frame, 0) {
                    Some(0x0800 | 0x86dd) => frame.get(20..),
                    _ => None,
                },
                // Raw IP.
                12 | 101 | 228 | 229 => Some(frame),
                other => return Err(format!("unsupported link type {other}")),
            };
            if let Some(p) = ip.and_then(parse_ip) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Parses an IPv4 or IPv6 packet.
    pub fn parse_ip(ip: &[u8]) -> Option<Packet> {
        match ip.first()? >> 4 {
            4 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(u16_at(ip, 2)?).min(ip.len());
                let frag = u16_at(ip, 6)? & 0x1fff;
                let proto = *ip.get(9)?;
                let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                let body = ip.get(ihl..total)?;
                let l4 = if frag != 0 {
                    L4::Other(proto)
                } else {
                    parse_l4(proto, body, false)?
                };
                Some(Packet {
                    src: IpAddr::V4(Ipv4Addr::from(src)),
                    dst: IpAddr::V4(Ipv4Addr::from(dst)),
                    l4,
                })
            }
            6 => {
                let plen = usize::from(u16_at(ip, 4)?);
                let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                let mut next = *ip.get(6)?;
                let mut body = ip.get(40..(40 + plen).min(ip.len()))?;
                let mut fragment = false;
                loop {
                    match next {
                        0 | 43 | 60 => {
                            let len = (usize::from(*body.get(1)?) + 1) * 8;
                            next = *body.first()?;
                            body = body.get(len..)?;
                        }
                        44 => {
                            let offset = u16_at(body, 2)? >> 3;
                            fragment |= offset != 0;
                            next = *body.first()?;
                            body = body.get(8..)?;
                        }
                        _ => break,
                    }
                }
                let l4 = if fragment {
                    L4::Other(next)
                } else {
                    parse_l4(next, body, true)?
                };
                Some(Packet {
                    src: IpAddr::V6(Ipv6Addr::from(src)),
                    dst: IpAddr::V6(Ipv6Addr::from(dst)),
                    l4,
                })
            }
            _ => None,
        }
    }

    fn parse_l4(proto: u8, body: &[u8], v6: bool) -> Option<L4> {
        Some(match proto {
            17 => {
                let len = usize::from(u16_at(body, 4)?).clamp(8, body.len().max(8));
                L4::Udp {
                    sport: u16_at(body, 0)?,
                    dport: u16_at(body, 2)?,
                    payload: body.get(8..len)?.to_vec(),
                }
            }
            6 => L4::Tcp {
                sport: u16_at(body, 0)?,
                dport: u16_at(body, 2)?,
                flags: *body.get(13)?,
            },
            1 if !v6 => L4::Icmp {
                v6: false,
                kind: *body.first()?,
            },
            58 if v6 => L4::Icmp {
                v6: true,
                kind: *body.first()?,
            },
            p => L4::Other(p),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Link-layer helpers (for the flood generator, which writes whole Ethernet frames)

impl Lab {
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
}

// ---------------------------------------------------------------------------------------------
// Link faults (for the fault tests: an interface that goes down, or is deleted and recreated)

impl Lab {
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
        self.ip(&[
            "link",
            "add",
            SERVER_IF_CLIENT,
            "netns",
            s,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            c,
        ]);
        for (ns, dev, host) in [
            (s, SERVER_IF_CLIENT, Host::Server),
            (c, CLIENT_IF, Host::Client),
        ] {
            let v4 = format!("{}/24", self.v4(host));
            let v6 = format!("{}/64", self.v6(host));
            self.ip(&["-n", ns, "addr", "add", &v4, "dev", dev]);
            self.ip(&["-n", ns, "-6", "addr", "add", &v6, "dev", dev, "nodad"]);
            self.ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let gw4 = self.v4(Host::Server).to_string();
        let gw6 = self.v6(Host::Server).to_string();
        self.ip(&["-n", c, "route", "add", "default", "via", &gw4]);
        self.ip(&["-n", c, "-6", "route", "add", "default", "via", &gw6]);
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

// ---------------------------------------------------------------------------------------------
// Shared by the flood generator, the benchmark and the e2e tests

/// SplitMix64: a small, fast, seedable PRNG (schedules, ports, garbage). Not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the system's random source.
    pub fn seeded() -> Rng {
        let mut seed = [0u8; 8];
        sesame_keys::fill_random(&mut seed);
        Rng(u64::from_le_bytes(seed))
    }

    /// From `SESAME_E2E_SEED`, or the clock; prints the seed so a run can be repeated.
    pub fn from_env(what: &str) -> Rng {
        let seed = std::env::var("SESAME_E2E_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
        eprintln!("{what}: seed {seed} (rerun with SESAME_E2E_SEED={seed})");
        Rng(seed)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next() >> 32) * u64::from(n)) >> 32) as u32
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Memory and CPU of a process, from `/proc/PID/status` and `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// cutime + cstime (children waited for), clock ticks.
    pub child_ticks: u64,
}

/// Clock ticks per second (for `/proc/PID/stat`).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100).max(1)
}

/// Reads VmRSS, VmHWM and the CPU times of `pid`.
pub fn proc_stats(pid: u32) -> Result<ProcStats, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces): state is field 3, utime 14,
    // stime 15, cutime 16, cstime 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok(ProcStats {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        cpu_ticks: at(11) + at(12),
        child_ticks: at(13) + at(14),
    })
}

/// The command lines of the test binaries (`sesame-flood`, `sesame-netprobe`): `--name value`
/// options, `--flag`s named in advance, and positional arguments.
#[derive(Debug)]
pub struct Args {
    /// The positional arguments, in order.
    pub positional: Vec<String>,
    options: Vec<(String, String)>,
}

impl Args {
    /// Splits `args`; the options in `flags` take no value.
    pub fn parse(args: &[String], flags: &[&str]) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if flags.contains(&name) {
                    options.push((name.to_owned(), "1".to_owned()));
                } else {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    options.push((name.to_owned(), v.clone()));
                }
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args {
            positional,
            options,
        })
    }

    /// The last value of `--name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `--name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// `--name` as a number, or `default`.
    pub fn num(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v}")),
            None => Ok(default),
        }
    }

    /// `--name` parsed as `T`, or `default`.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            Some(v) => v.parse().map_err(|_| format!("--{name}: invalid: {v}")),
            None => Ok(default),
        }
    }

    /// Positional argument `i`, or an error naming `what` is missing.
    pub fn pos(&self, i: usize, what: &str) -> Result<&str, String> {
        self.positional
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("missing {what}"))
    }
}
