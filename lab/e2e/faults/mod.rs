//! Faults: the firewall program missing or failing, the state directory read-only or full, a
//! truncated state file, the capture interface going down or being deleted, and `kill -9` at
//! random moments during a knock flood. In every case sesamed fails closed (nothing is granted
//! that should not be), says so in its log, and recovers on its own once the fault is gone.
//!
//! Filesystem faults are made inside sesamed's own mount namespace (`ip netns exec` gives every
//! process it starts a private one; the test enters it with `nsenter`), so they never touch
//! the host's mounts and vanish with the daemon even if the test is killed; they are also
//! undone explicitly when the test ends, also on panic.
//!
//! `SESAME_E2E_SEED=N` replays the random schedule of the `kill -9` test.
//!
//! One file per subject: [`firewall`] (nft missing or failing, the table flushed), [`state_dir`]
//! (read-only, full, truncated state file), [`interface`] (down and up, deleted and
//! recreated), [`kill9`] (`kill -9` during a knock flood). The helpers here are shared with
//! `privilege`, `secrets` and others.

mod firewall;
mod interface;
mod kill9;
mod state_dir;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sesame_tests::{Family, Host, Lab, Proc, bin, text};

use crate::common::{Fixture, LOG_WAIT};

// ---------------------------------------------------------------------------------------------
// Helpers shared with `privilege` and `secrets`

/// Writes an executable script in the lab directory and returns its path.
pub(crate) fn write_script(lab: &Lab, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = lab.write(name, body);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The real `nft` program (the first on `PATH`, or in the sbin directories).
pub(crate) fn real_nft() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .expect("nft is installed")
}

/// Inserts `line` right after the `[firewall]` header of a config text.
pub(crate) fn with_firewall_line(config: &str, line: &str) -> String {
    assert!(config.contains("\n[firewall]\n"), "{config}");
    config.replacen("\n[firewall]\n", &format!("\n[firewall]\n{line}\n"), 1)
}

/// Starts `LAUNCHER... sesamed run --config CONFIG` in the server namespace with `env` (plus
/// `NO_COLOR=1`, and `RUST_LOG=info` unless given) and waits for its `ready` line; panics with
/// the log if it exits or is not ready in 15 s.
pub(crate) fn launch_sesamed(
    lab: &Lab,
    config: &Path,
    launcher: &[OsString],
    env: &[(&str, &str)],
) -> Proc {
    let mut p = spawn_sesamed(lab, config, launcher, env);
    if p.wait_for(&["ready"], Duration::from_secs(15)).is_none() {
        let status = p.exited();
        panic!(
            "lab {}: sesamed did not log `ready` within 15 s (exit status {status:?}); output:\n{}",
            lab.tag,
            p.output()
        );
    }
    p
}

/// Like [`launch_sesamed`], without waiting.
pub(crate) fn spawn_sesamed(
    lab: &Lab,
    config: &Path,
    launcher: &[OsString],
    env: &[(&str, &str)],
) -> Proc {
    let mut argv: Vec<OsString> = launcher.to_vec();
    argv.push(bin("sesamed").into_os_string());
    argv.extend([
        "run".into(),
        "--config".into(),
        config.as_os_str().to_owned(),
    ]);
    let mut all_env: Vec<(&str, &str)> = vec![("NO_COLOR", "1")];
    if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
        all_env.push(("RUST_LOG", "info"));
    }
    all_env.extend_from_slice(env);
    let (program, args) = argv.split_first().unwrap();
    lab.spawn(Host::Server, "sesamed", program, args, &all_env)
}

/// Runs `sesamed run` as [`spawn_sesamed`] does and waits for it to exit (it must, within
/// 15 s). Returns the exit code and every output line.
pub(crate) fn sesamed_run_to_exit(
    lab: &Lab,
    config: &Path,
    launcher: &[OsString],
    env: &[(&str, &str)],
) -> (Option<i32>, Vec<String>) {
    let mut p = spawn_sesamed(lab, config, launcher, env);
    let Some(status) = p.wait_exit(Duration::from_secs(15)) else {
        panic!(
            "sesamed was expected to fail at start, but it still runs after 15 s; output:\n{}",
            p.output()
        );
    };
    (status.code(), p.lines())
}

/// Writes the fixture's files (config edited by `edit`), starts the service and sesamed
/// (through `launcher`, with `env`) and waits until both are ready.
pub(crate) fn start_fixture(
    f: &mut Fixture,
    edit: impl FnOnce(String) -> String,
    launcher: &[OsString],
    env: &[(&str, &str)],
) {
    f.write();
    let text = edit(f.spec.to_toml());
    f.lab.write("sesamed.toml", &text);
    let port_addrs: Vec<SocketAddr> = f
        .spec
        .protect
        .iter()
        .filter_map(|s| s.strip_prefix("tcp/")?.parse().ok())
        .flat_map(|p| [f.svc(Family::V4, p), f.svc(Family::V6, p)])
        .collect();
    f.service = Some(f.lab.serve(&port_addrs));
    f.daemon = Some(launch_sesamed(&f.lab, &f.config, launcher, env));
}

/// `sesamed status --json` of the fixture's daemon, parsed.
pub(crate) fn status(f: &Fixture) -> serde_json::Value {
    let o = f.lab.sesamed(&[
        "status".as_ref(),
        "--json".as_ref(),
        "--config".as_ref(),
        f.config.as_os_str(),
    ]);
    assert!(o.status.success(), "sesamed status --json: {}", text(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", text(&o)))
}

/// A counter of `sesamed status --json`.
pub(crate) fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

/// Re-sends every packet of a capture in the lab directory from `host` to the server's
/// address in `family`.
pub(crate) fn replay_capture(f: &Fixture, host: Host, pcap_path: &Path, family: Family) -> String {
    let o = f.lab.netprobe(
        host,
        &[
            "replay".to_owned(),
            pcap_path.to_string_lossy().into_owned(),
            f.server(family).to_string(),
        ],
    );
    assert!(o.status.success(), "replay: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Checks a replay state file: header, one well-formed line per client (and, from a clean
/// shutdown, per remembered gate MAC and gated step, the window their expiries were computed
/// for, and until when the rules of a start after a crash hold), and the SHA-256 trailer over
/// everything before it. Returns the client lines.
pub(crate) fn check_state_file(bytes: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let at = text.rfind("sha256 ").ok_or("no sha256 trailer")?;
    let (body, trailer) = text.split_at(at);
    let want = trailer
        .strip_prefix("sha256 ")
        .and_then(|t| t.strip_suffix('\n'))
        .ok_or("incomplete trailer")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let got: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if got != want {
        return Err(format!("checksum mismatch: trailer {want}, content {got}"));
    }
    let mut lines = body.lines();
    // Version 4: version 3 and its `forgotten` lines.
    let header = lines.next();
    if header != Some("sesame-replay 4") {
        return Err(format!("bad header {header:?} (want 'sesame-replay 4')"));
    }
    let mut entries = Vec::new();
    let mut windows = 0;
    for l in lines {
        let num = |s: &str| s.parse::<u64>().is_ok();
        // `seen <MAC> <client key> <step_seconds>:<counter> <until ms>`: a remembered gate MAC
        // (clean shutdown) and the step whose gate it passed.
        if let Some(rest) = l.strip_prefix("seen ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            let ok = parts.len() == 4
                && parts[0].len() == 32
                && parts[0].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[1].len() == 44
                && parts[2]
                    .split_once(':')
                    .is_some_and(|(step, counter)| num(step) && num(counter))
                && num(parts[3]);
            if !ok {
                return Err(format!("bad line: {l}"));
            }
            continue;
        }
        // `gated <client key> <step_seconds>:<counter> <until ms>`: a step a datagram passed
        // the gate for.
        if let Some(rest) = l.strip_prefix("gated ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            let ok = parts.len() == 3
                && parts[0].len() == 44
                && parts[1]
                    .split_once(':')
                    .is_some_and(|(step, counter)| num(step) && num(counter))
                && num(parts[2]);
            if !ok {
                return Err(format!("bad line: {l}"));
            }
            continue;
        }
        // `window <step_seconds> <skew_steps> <timeout_ms>`: at most one.
        if let Some(rest) = l.strip_prefix("window ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            let ok = parts.len() == 3
                && parts[0].parse::<u32>().is_ok_and(|s| s > 0)
                && parts[1].parse::<u32>().is_ok()
                && num(parts[2]);
            if !ok || windows > 0 {
                return Err(format!("bad line: {l}"));
            }
            windows += 1;
            continue;
        }
        // `forgotten <step_seconds>:<counter>`: the newest step of that length whose records
        // expired; the window never moves back over it.
        if let Some(rest) = l.strip_prefix("forgotten ") {
            let ok = rest.split_once(':').is_some_and(|(step, counter)| {
                step.parse::<u32>().is_ok_and(|s| s > 0) && num(counter)
            });
            if !ok {
                return Err(format!("bad line: {l}"));
            }
            continue;
        }
        // `after_crash <until ms>`.
        if let Some(rest) = l.strip_prefix("after_crash ") {
            if !num(rest) {
                return Err(format!("bad line: {l}"));
            }
            continue;
        }
        if !state_line_ok(l) {
            return Err(format!("bad line: {l}"));
        }
        entries.push(l.to_owned());
    }
    Ok(entries)
}

/// `<key> <floor|-> <accepted|-> <steps|-> [action=<ms>]`: accepted is `ts:mac` (32 hex
/// digits) items, steps `step_seconds:counter` items, comma-separated; the action floor only
/// for a client that ran an action.
fn state_line_ok(l: &str) -> bool {
    let parts: Vec<&str> = l.split(' ').collect();
    let num = |s: &str| s.parse::<u64>().is_ok();
    let list = |s: &str, item: &dyn Fn(&str, &str) -> bool| {
        s == "-"
            || s.split(',')
                .all(|i| i.split_once(':').is_some_and(|(a, b)| item(a, b)))
    };
    let action_floor_ok = match parts.get(4) {
        None => true,
        Some(a) => a.strip_prefix("action=").is_some_and(num),
    };
    (parts.len() == 4 || parts.len() == 5)
        && action_floor_ok
        && parts[0].len() == 44
        && (parts[1] == "-" || num(parts[1]))
        && list(parts[2], &|ts, mac| {
            num(ts) && mac.len() == 32 && mac.bytes().all(|b| b.is_ascii_hexdigit())
        })
        && list(parts[3], &|step, counter| num(step) && num(counter))
}

/// The number of accepted payloads a state line records.
pub(crate) fn accepted_in(line: &str) -> usize {
    match line.split(' ').nth(2) {
        Some("-") | None => 0,
        Some(list) => list.split(',').count(),
    }
}

/// The replay state as sesamed loads it: the snapshot (checked by [`check_state_file`]) if
/// there is one, then the journal's records, each with its check (a torn last record is
/// skipped, as sesamed does). Returns one `<key> <floor> <accepted> <steps>` line per client.
pub(crate) fn check_replay_state(
    snapshot: Option<&[u8]>,
    journal: Option<&[u8]>,
) -> Result<Vec<String>, String> {
    let mut entries: Vec<String> = match snapshot {
        Some(b) => check_state_file(b)?,
        None => Vec::new(),
    };
    if let Some(j) = journal {
        let text = std::str::from_utf8(j).map_err(|_| "journal: not UTF-8".to_owned())?;
        let mut lines = text.split_inclusive('\n');
        if lines.next() != Some("sesame-replay-journal 2\n") {
            return Err("journal: bad header".into());
        }
        let lines: Vec<&str> = lines.collect();
        for (i, line) in lines.iter().enumerate() {
            let good = line.strip_suffix('\n').and_then(|l| {
                let (body, check) = l.rsplit_once(' ')?;
                let d = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
                let want: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
                (want == check).then_some(body)
            });
            match good {
                Some(body) => {
                    let key = body.split(' ').next().unwrap_or("");
                    entries.retain(|e| !e.starts_with(key));
                    entries.push(body.to_owned());
                }
                None if i + 1 == lines.len() => {}
                None => return Err(format!("journal: record {} fails its check", i + 1)),
            }
        }
    }
    Ok(entries)
}

/// [`check_replay_state`] of the files in `dir`.
pub(crate) fn replay_state_in(dir: &Path) -> Result<Vec<String>, String> {
    let snapshot = std::fs::read(dir.join("replay.state")).ok();
    let journal = std::fs::read(dir.join("replay.journal")).ok();
    check_replay_state(snapshot.as_deref(), journal.as_deref())
}

/// Panics if the daemon logged a grant (`granted client=…`) after `mark`. (Unlike
/// `Fixture::assert_no_grant`, which matches any line containing "granted", this does not
/// trip over "nothing granted (fail closed)".)
pub(crate) fn assert_no_grant_line(f: &Fixture, mark: usize, what: &str) {
    let g = f.daemon().matching(mark, &["granted client="]);
    assert!(g.is_empty(), "{what}: the daemon granted something: {g:?}");
}

/// Waits for the grant line for `laptop` from `source` after `mark` (`granted client=laptop`,
/// which "nothing granted (fail closed) client=laptop" does not match).
pub(crate) fn expect_grant_line(f: &Fixture, mark: usize, source: std::net::IpAddr) -> String {
    let src = format!("source={source}");
    f.daemon()
        .expect_after(mark, &["granted client=laptop", &src], LOG_WAIT)
}

/// Runs a command inside the mount namespace of process `pid` (sesamed's).
fn in_mount_ns(pid: u32, args: &[&str]) -> Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .output()
        .expect("run nsenter")
}

fn in_mount_ns_ok(pid: u32, args: &[&str]) -> String {
    let o = in_mount_ns(pid, args);
    assert!(
        o.status.success(),
        "nsenter -t {pid} -m {args:?}: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A mount made in sesamed's private mount namespace; unmounted on drop (also on panic). It
/// vanishes anyway when the daemon, the namespace's last process, exits.
struct NsMount {
    pid: u32,
    dir: String,
}

impl NsMount {
    /// A tmpfs of `size` (e.g. `16k`) over `dir`.
    fn tmpfs(pid: u32, dir: &Path, size: &str) -> NsMount {
        let dir = dir.to_string_lossy().into_owned();
        let opts = format!("size={size},mode=0700");
        in_mount_ns_ok(
            pid,
            &["mount", "-t", "tmpfs", "-o", &opts, "sesame-fault", &dir],
        );
        NsMount { pid, dir }
    }

    /// `dir` bind-mounted over itself, so it can be made read-only and writable again.
    fn bind(pid: u32, dir: &Path) -> NsMount {
        let dir = dir.to_string_lossy().into_owned();
        in_mount_ns_ok(pid, &["mount", "--bind", &dir, &dir]);
        NsMount { pid, dir }
    }

    fn set_read_only(&self, ro: bool) {
        let opts = if ro {
            "remount,bind,ro"
        } else {
            "remount,bind,rw"
        };
        in_mount_ns_ok(self.pid, &["mount", "-o", opts, &self.dir]);
    }

    /// Fills the filesystem: `filler` grows until the filesystem is full.
    fn fill(&self) {
        let of = format!("of={}/filler", self.dir);
        // dd stops with "No space left on device"; its status does not matter.
        let _ = in_mount_ns(self.pid, &["dd", "if=/dev/zero", &of, "bs=1024"]);
        let probe = format!("echo x > {}/probe", self.dir);
        let o = in_mount_ns(self.pid, &["sh", "-c", &probe]);
        assert!(!o.status.success(), "the tmpfs is not full: {}", text(&o));
    }

    fn unfill(&self) {
        in_mount_ns_ok(self.pid, &["rm", "-f", &format!("{}/filler", self.dir)]);
        let _ = in_mount_ns(self.pid, &["rm", "-f", &format!("{}/probe", self.dir)]);
    }

    fn read(&self, name: &str) -> Vec<u8> {
        let o = in_mount_ns(self.pid, &["cat", &format!("{}/{name}", self.dir)]);
        assert!(o.status.success(), "cat {name}: {}", text(&o));
        o.stdout
    }
}

impl Drop for NsMount {
    fn drop(&mut self) {
        if Path::new(&format!("/proc/{}", self.pid)).exists() {
            let _ = in_mount_ns(self.pid, &["umount", "-l", &self.dir]);
        }
    }
}

pub(crate) use sesame_tests::Rng;

/// Knocks once from the client and checks that it is granted and the service opens.
fn knock_is_granted(f: &Fixture) {
    let mark = f.mark();
    f.knock(&[]);
    expect_grant_line(f, mark, f.lab.addr(Host::Client, Family::V4));
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "{}",
        f.lab.server_ruleset()
    );
}
