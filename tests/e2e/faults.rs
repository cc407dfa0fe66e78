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

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sesame_tests::{
    CLIENT_IF, Family, Host, Lab, Proc, SERVER_IF_CLIENT, bin, pcap, require_netns, text,
};

use crate::common::{Fixture, LOG_WAIT, SETTLE};

// ---------------------------------------------------------------------------------------------
// Helpers shared with `privilege` and `secrets`

/// Writes an executable script in the lab directory and returns its path.
pub fn write_script(lab: &Lab, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = lab.write(name, body);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The real `nft` program (the first on `PATH`, or in the sbin directories).
pub fn real_nft() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .expect("nft is installed")
}

/// Inserts `line` right after the `[firewall]` header of a config text.
pub fn with_firewall_line(config: &str, line: &str) -> String {
    assert!(config.contains("\n[firewall]\n"), "{config}");
    config.replacen("\n[firewall]\n", &format!("\n[firewall]\n{line}\n"), 1)
}

/// Starts `LAUNCHER... sesamed run --config CONFIG` in the server namespace with `env` (plus
/// `NO_COLOR=1`, and `RUST_LOG=info` unless given) and waits for its `ready` line; panics with
/// the log if it exits or is not ready in 15 s.
pub fn launch_sesamed(
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
pub fn spawn_sesamed(
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
pub fn sesamed_run_to_exit(
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
pub fn start_fixture(
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
pub fn status(f: &Fixture) -> serde_json::Value {
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
pub fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

/// Re-sends every packet of a capture in the lab directory from `host` to the server's
/// address in `family`.
pub fn replay_capture(f: &Fixture, host: Host, pcap_path: &Path, family: Family) -> String {
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

/// Checks a replay state file: header, one well-formed line per client (and per remembered
/// gate MAC), and the SHA-256 trailer over everything before it. Returns the client lines.
pub fn check_state_file(bytes: &[u8]) -> Result<Vec<String>, String> {
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
    if lines.next() != Some("sesame-replay 2") {
        return Err("bad header".into());
    }
    let mut entries = Vec::new();
    for l in lines {
        // `seen <MAC> <client key> <until ms>`: a remembered gate MAC (clean shutdown).
        if let Some(rest) = l.strip_prefix("seen ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            let ok = parts.len() == 3
                && parts[0].len() == 32
                && parts[0].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[1].len() == 44
                && parts[2].parse::<u64>().is_ok();
            if !ok {
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
pub fn accepted_in(line: &str) -> usize {
    match line.split(' ').nth(2) {
        Some("-") | None => 0,
        Some(list) => list.split(',').count(),
    }
}

/// The replay state as sesamed loads it: the snapshot (checked by [`check_state_file`]) if
/// there is one, then the journal's records, each with its check (a torn last record is
/// skipped, as sesamed does). Returns one `<key> <floor> <accepted> <steps>` line per client.
pub fn check_replay_state(
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
pub fn replay_state_in(dir: &Path) -> Result<Vec<String>, String> {
    let snapshot = std::fs::read(dir.join("replay.state")).ok();
    let journal = std::fs::read(dir.join("replay.journal")).ok();
    check_replay_state(snapshot.as_deref(), journal.as_deref())
}

/// Panics if the daemon logged a grant (`granted client=…`) after `mark`. (Unlike
/// `Fixture::assert_no_grant`, which matches any line containing "granted", this does not
/// trip over "nothing granted (fail closed)".)
pub fn assert_no_grant_line(f: &Fixture, mark: usize, what: &str) {
    let g = f.daemon().matching(mark, &["granted client="]);
    assert!(g.is_empty(), "{what}: the daemon granted something: {g:?}");
}

/// Waits for the grant line for `laptop` from `source` after `mark` (`granted client=laptop`,
/// which "nothing granted (fail closed) client=laptop" does not match).
pub fn expect_grant_line(f: &Fixture, mark: usize, source: std::net::IpAddr) -> String {
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

pub use sesame_tests::Rng;

// ---------------------------------------------------------------------------------------------
// nft missing or failing

/// `nft` missing, or failing, when sesamed starts: one clear error line, exit status 1, no
/// `ready`, no table left behind.
#[test]
fn fault_nft_missing_or_failing_at_start_is_one_clear_error() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-nft-start");
    f.write();
    let base = f.spec.to_toml();
    let failing = write_script(
        &f.lab,
        "nft-broken.sh",
        "#!/bin/sh\necho 'Error: simulated nft failure (sesame fault test)' >&2\nexit 1\n",
    );
    let cases = [
        (
            "missing",
            "/nonexistent/sesame-fault/nft".to_owned(),
            vec![
                "firewall setup failed",
                "cannot run /nonexistent/sesame-fault/nft",
            ],
        ),
        (
            "failing",
            failing.to_string_lossy().into_owned(),
            vec!["firewall setup failed", "simulated nft failure"],
        ),
    ];
    for (case, nft, want) in cases {
        let config = with_firewall_line(&base, &format!("nft = {nft:?}"));
        f.lab.write("sesamed.toml", &config);
        let started = Instant::now();
        let (code, lines) = sesamed_run_to_exit(&f.lab, &f.config, &[], &[]);
        let all = lines.join("\n");
        assert_eq!(code, Some(1), "nft {case}: exit status; output:\n{all}");
        let errors: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("sesamed: "))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "nft {case}: one error line; output:\n{all}"
        );
        for w in &want {
            assert!(
                errors[0].contains(w),
                "nft {case}: error lacks `{w}`: {}",
                errors[0]
            );
        }
        assert!(
            !all.contains("ready"),
            "nft {case}: must not get ready:\n{all}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nft {case}: took {:?} to fail",
            started.elapsed()
        );
        let tables = f.lab.run_ok(Host::Server, "nft", &["list", "tables"]);
        assert!(
            !tables.contains("sesame"),
            "nft {case}: table left: {tables}"
        );
        eprintln!("nft {case}: {}", errors[0]);
    }
}

/// `nft` starts failing while sesamed runs: the knock is consumed (its replay state was saved
/// first), the grant is refused and logged, sesamed keeps running, and once `nft` works again
/// a fresh knock opens while the failed knock, replayed, does not.
#[test]
fn fault_nft_failing_at_run_time_refuses_the_grant_and_keeps_serving() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-nft-run");
    // Replays must land in the knock's step (see replay.rs).
    f.spec.knock.step_seconds = 60;
    let flag = f.lab.path("nft-fails");
    let wrapper = write_script(
        &f.lab,
        "nft-wrapper.sh",
        &format!(
            "#!/bin/sh\nif [ -e '{}' ]; then\n  echo 'Error: simulated nft failure (sesame fault test)' >&2\n  exit 1\nfi\nexec '{}' \"$@\"\n",
            flag.display(),
            real_nft().display()
        ),
    );
    // Grants through the wrapper: without this they talk netlink and never run `nft`.
    let line = format!("nft = {:?}\nnetlink = false", wrapper.to_string_lossy());
    start_fixture(&mut f, |c| with_firewall_line(&c, &line), &[], &[]);
    let client = f.lab.addr(Host::Client, Family::V4);

    std::fs::write(&flag, "").unwrap();
    let cap = f
        .lab
        .capture(Host::Client, CLIENT_IF, "failed-knock", "udp or tcp");
    let mark = f.mark();
    f.knock(&[]);
    let failed = f.daemon().expect_after(
        mark,
        &[
            "firewall grant failed",
            "client=laptop",
            "simulated nft failure",
        ],
        LOG_WAIT,
    );
    cap.stop();
    std::thread::sleep(SETTLE);
    assert_no_grant_line(&f, mark, "nft failing");
    assert!(
        f.daemon.as_mut().unwrap().exited().is_none(),
        "sesamed must keep running"
    );
    f.assert_closed(Family::V4, 22, "grant failed");
    let s = status(&f);
    assert_eq!(counter(&s, "grants"), 1, "{s}");
    assert_eq!(counter(&s, "leases_opened"), 0, "{s}");
    assert_eq!(counter(&s, "firewall_failures"), 1, "{s}");
    assert!(s["leases"].as_array().unwrap().is_empty(), "no lease: {s}");
    let entries =
        replay_state_in(&f.lab.path("state")).unwrap_or_else(|e| panic!("state files: {e}"));
    assert!(
        entries
            .iter()
            .any(|l| l.starts_with(&f.client_key.public) && accepted_in(l) == 1),
        "the failed knock was recorded before the grant: {entries:?}"
    );
    eprintln!("while nft fails: {failed}");
    assert_eq!(
        s["clients"][0]["last_result"], "firewall_failed",
        "status tells the grant did not happen: {s}"
    );

    // nft works again. The failed knock was consumed: replayed, it opens nothing.
    std::fs::remove_file(&flag).unwrap();
    let mark = f.mark();
    replay_capture(
        &f,
        Host::Client,
        &f.lab.path("failed-knock.pcap"),
        Family::V4,
    );
    f.expect_reject(mark, client, "replay");
    std::thread::sleep(Duration::from_millis(300));
    assert_no_grant_line(&f, mark, "replay of the knock whose grant failed");
    // A fresh knock opens.
    let mark = f.mark();
    f.knock(&[]);
    expect_grant_line(&f, mark, client);
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "{}",
        f.lab.server_ruleset()
    );
    let s = status(&f);
    assert_eq!(counter(&s, "leases_opened"), 1);
    assert_eq!(s["clients"][0]["last_result"], "granted", "{s}");
    // The state is consistent: a restart reads it.
    f.stop_daemon();
    check_state_file(&std::fs::read(f.lab.path("state/replay.state")).unwrap()).unwrap();
    f.daemon = Some(launch_sesamed(&f.lab, &f.config, &[], &[]));
}

// ---------------------------------------------------------------------------------------------
// State directory read-only or full; truncated state file

/// Knocks once (must not be granted): waits for the fail-closed line and checks nothing
/// opened. Returns the line.
fn knock_fails_closed(f: &Fixture, what: &str) -> String {
    let mark = f.mark();
    f.knock(&[]);
    let line = f.daemon().expect_after(
        mark,
        &[
            "replay state could not be written: nothing granted (fail closed)",
            "client=laptop",
        ],
        LOG_WAIT,
    );
    std::thread::sleep(SETTLE);
    assert_no_grant_line(f, mark, what);
    f.assert_closed(Family::V4, 22, what);
    line
}

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

/// The state directory becomes read-only: no grant (fail closed), logged and counted; once
/// it is writable again, the next knock is granted.
#[test]
fn fault_state_dir_read_only_fails_closed_and_recovers() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-state-ro");
    f.start();
    let state_dir = f.lab.path("state");
    let m = NsMount::bind(f.daemon().pid(), &state_dir);
    m.set_read_only(true);
    let line = knock_fails_closed(&f, "state dir read-only");
    assert!(line.contains("Read-only file system"), "{line}");
    let s = status(&f);
    assert_eq!(counter(&s, "state_write_failures"), 1, "{s}");
    assert_eq!(counter(&s, "leases_opened"), 0, "{s}");
    assert_eq!(s["clients"][0]["last_result"], "state_write_failed", "{s}");

    m.set_read_only(false);
    knock_is_granted(&f);
    let s = status(&f);
    assert_eq!(counter(&s, "state_write_failures"), 1, "{s}");
    assert_eq!(counter(&s, "leases_opened"), 1, "{s}");
    replay_state_in(&state_dir).unwrap();
    drop(m);
}

/// The state directory is full (a 16 KiB tmpfs): no grant (fail closed), logged and counted;
/// once there is space again, the next knock is granted and the file is intact.
#[test]
fn fault_state_dir_full_fails_closed_and_recovers() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-state-full");
    f.start();
    let state_dir = f.lab.path("state");
    let m = NsMount::tmpfs(f.daemon().pid(), &state_dir, "16k");
    m.fill();
    let mut lines = Vec::new();
    for i in 1..=2 {
        lines.push(knock_fails_closed(
            &f,
            &format!("state dir full, knock {i}"),
        ));
        // The next knock must have a later timestamp than the refused one.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        lines.iter().all(|l| l.contains("No space left on device")),
        "{lines:?}"
    );
    let s = status(&f);
    assert_eq!(counter(&s, "state_write_failures"), 2, "{s}");
    assert_eq!(counter(&s, "leases_opened"), 0, "{s}");

    m.unfill();
    knock_is_granted(&f);
    let s = status(&f);
    assert_eq!(counter(&s, "state_write_failures"), 2, "{s}");
    // A fresh tmpfs: no snapshot, the journal sesamed created there.
    let entries = check_replay_state(None, Some(&m.read("replay.journal"))).unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    eprintln!("state dir full: {}", lines[0]);
    drop(m);
}

/// A crash in the middle of a state write: a leftover temporary file is ignored (the last
/// complete state is used), while a truncated or empty state file stops sesamed with a clear
/// error instead of starting with empty state.
#[test]
fn fault_truncated_state_file_is_refused_and_a_partial_write_is_ignored() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-state-trunc");
    f.spec.knock.step_seconds = 60;
    f.start();
    let client = f.lab.addr(Host::Client, Family::V4);
    let cap = f
        .lab
        .capture(Host::Client, CLIENT_IF, "knock", "udp or tcp");
    let mark = f.mark();
    f.knock(&[]);
    expect_grant_line(&f, mark, client);
    cap.stop();
    f.stop_daemon();
    let state = f.lab.path("state/replay.state");
    let full = std::fs::read(&state).unwrap();
    check_state_file(&full).unwrap();

    // Killed between writing the temporary file and renaming it: the temporary file holds a
    // partial write; the state file is the previous complete one.
    let tmp = f.lab.path("state/replay.state.tmp");
    std::fs::write(&tmp, &full[..full.len() / 2]).unwrap();
    f.daemon = Some(launch_sesamed(&f.lab, &f.config, &[], &[]));
    let mark = f.mark();
    replay_capture(&f, Host::Client, &f.lab.path("knock.pcap"), Family::V4);
    f.expect_reject(mark, client, "replay");
    std::thread::sleep(Duration::from_millis(300));
    assert_no_grant_line(
        &f,
        mark,
        "replay after a restart with a partial temporary file",
    );
    f.stop_daemon();
    assert_eq!(
        std::fs::read(&state).unwrap(),
        full,
        "the state file is untouched"
    );

    // A truncated (or empty) state file: refuse to start.
    for (case, cut) in [
        ("half", full.len() / 2),
        ("all but the last byte", full.len() - 1),
        ("empty", 0),
    ] {
        std::fs::write(&state, &full[..cut]).unwrap();
        let (code, lines) = sesamed_run_to_exit(&f.lab, &f.config, &[], &[]);
        let all = lines.join("\n");
        assert_eq!(code, Some(1), "{case}: exit status; output:\n{all}");
        let errors: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("sesamed: "))
            .collect();
        assert_eq!(errors.len(), 1, "{case}: one error line:\n{all}");
        assert!(
            errors[0].contains("corrupt replay state") && errors[0].contains("replay.state"),
            "{case}: {}",
            errors[0]
        );
        assert!(!all.contains("ready"), "{case}: started:\n{all}");
        if cut == full.len() / 2 {
            eprintln!("truncated state file: {}", errors[0]);
        }
    }
    std::fs::write(&state, &full).unwrap();
    f.daemon = Some(launch_sesamed(&f.lab, &f.config, &[], &[]));
}

// ---------------------------------------------------------------------------------------------
// Interface down and up, deleted and recreated

/// Knocks every 500 ms until a grant; returns the time from `since` to the grant line.
fn knock_until_granted(f: &Fixture, since: Instant, limit: Duration) -> Option<Duration> {
    let client = format!("source={}", f.lab.v4(Host::Client));
    while since.elapsed() < limit {
        let mark = f.mark();
        f.knock(&[]);
        if f.daemon()
            .wait_for_after(
                mark,
                &["granted client=laptop", &client],
                Duration::from_millis(500),
            )
            .is_some()
        {
            return Some(since.elapsed());
        }
    }
    None
}

/// Lines about capture (lost, failed, unavailable, restored) after `mark`.
fn capture_lines(f: &Fixture, mark: usize) -> Vec<String> {
    f.daemon()
        .lines()
        .into_iter()
        .skip(mark)
        .filter(|l| l.contains("capture"))
        .collect()
}

/// Seconds since midnight UTC of the RFC 3339 timestamp that starts a log line.
fn log_time_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..)?.split('Z').next()?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds since midnight UTC now.
fn now_time_of_day() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// Seconds from `since` (time of day) to the log line, if it has a timestamp.
fn seconds_after(line: &str, since: f64) -> Option<f64> {
    log_time_of_day(line).map(|t| (t - since).rem_euclid(86_400.0))
}

/// How capture recovers after `fault` / `repair`: the fault is logged within 3 s; after the
/// repair a knock is granted within 5 s and `capture restored` is logged; sesamed does not
/// flood its log while the interface is gone.
fn interface_fault(tag: &str, fault: impl Fn(&Lab), repair: impl Fn(&Lab)) {
    let mut f = Fixture::new(tag);
    f.spec.interfaces = vec![SERVER_IF_CLIENT.to_owned()];
    f.start();
    knock_is_granted(&f);

    let mark = f.mark();
    let fault_at = now_time_of_day();
    fault(&f.lab);
    std::thread::sleep(Duration::from_secs(3));
    let during = capture_lines(&f, mark);
    let lost_after = during.first().and_then(|l| seconds_after(l, fault_at));

    let mark = f.mark();
    let since = Instant::now();
    let repair_at = now_time_of_day();
    repair(&f.lab);
    let granted = knock_until_granted(&f, since, Duration::from_secs(10));
    let after = capture_lines(&f, mark);
    let restored_after = after
        .iter()
        .find(|l| l.contains("capture restored"))
        .and_then(|l| seconds_after(l, repair_at));
    eprintln!(
        "{tag}: fault logged after {lost_after:?} s ({} capture lines in the 3 s after the fault: {during:?}); after the repair: first grant after {granted:?}, `capture restored` after {restored_after:?} s, capture lines {after:?}",
        during.len(),
    );
    let granted = granted.unwrap_or_else(|| {
        panic!(
            "{tag}: capture did not recover: no grant within 10 s of the repair; log:\n{}",
            f.daemon().output()
        )
    });
    assert!(
        granted <= Duration::from_secs(5),
        "{tag}: recovery took {granted:?}"
    );
    assert!(
        lost_after.is_some(),
        "{tag}: the capture fault was not logged within 3 s; log:\n{}",
        f.daemon().output()
    );
    assert!(
        restored_after.is_some(),
        "{tag}: `capture restored` not logged; log:\n{}",
        f.daemon().output()
    );
    assert!(
        during.len() <= 6,
        "{tag}: {} capture lines in 3 s while the interface was gone (log flood): {during:?}",
        during.len()
    );
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "{}",
        f.lab.server_ruleset()
    );
}

/// The capture interface goes down and comes back up.
#[test]
fn fault_interface_down_and_up_capture_recovers() {
    if !require_netns() {
        return;
    }
    interface_fault(
        "f-if-down",
        |lab| lab.set_link(Host::Server, SERVER_IF_CLIENT, false),
        |lab| lab.set_link(Host::Server, SERVER_IF_CLIENT, true),
    );
}

/// The capture interface is deleted and recreated (with a new index).
#[test]
fn fault_interface_deleted_and_recreated_capture_recovers() {
    if !require_netns() {
        return;
    }
    let old = std::sync::Mutex::new(0);
    interface_fault(
        "f-if-del",
        |lab| {
            *old.lock().unwrap() = lab.ifindex(Host::Server, SERVER_IF_CLIENT);
            lab.delete_client_link();
        },
        |lab| {
            lab.recreate_client_link();
            let new = lab.ifindex(Host::Server, SERVER_IF_CLIENT);
            assert_ne!(
                new,
                *old.lock().unwrap(),
                "the recreated link has a new index"
            );
        },
    );
}

// ---------------------------------------------------------------------------------------------
// kill -9 during a knock flood

/// Lease length in the flood test.
const FLOOD_LEASE: u64 = 3;

/// Parses an nft duration (`3s`, `2s596ms`, `1m30s`, `1h`, `1d2h`) into milliseconds.
fn nft_duration_ms(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            'm' => 60_000,
            's' => 1000,
            _ => return None,
        };
        total += n * unit;
    }
    num.is_empty().then_some(total)
}

/// The elements of `inet sesame granted4` with their timeout and time left (ms).
fn granted4(lab: &Lab) -> Vec<(String, u64, u64)> {
    let out = lab.run_ok(
        Host::Server,
        "nft",
        &["list", "set", "inet", "sesame", "granted4"],
    );
    let Some(start) = out.find("elements = {") else {
        return Vec::new();
    };
    let body = &out[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let words: Vec<&str> = e.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| nft_duration_ms(v))
                    .unwrap_or_else(|| panic!("no {key} in element `{e}` of:\n{out}"))
            };
            (e.to_owned(), after("timeout"), after("expires"))
        })
        .collect()
}

#[test]
fn nft_durations_parse() {
    assert_eq!(nft_duration_ms("3s"), Some(3000));
    assert_eq!(nft_duration_ms("2s596ms"), Some(2596));
    assert_eq!(nft_duration_ms("596ms"), Some(596));
    assert_eq!(nft_duration_ms("1m30s"), Some(90_000));
    assert_eq!(nft_duration_ms("1d2h"), Some(93_600_000));
    assert_eq!(nft_duration_ms("3x"), None);
}

/// `kill -9` at random moments while the client knocks in a loop (with stray datagrams of its
/// own) and a third host floods the knock range; sesamed is restarted each time. Every restart
/// reads its state; no lease ever has a timeout beyond `lease_seconds`; access closes on time
/// after the last grant; and every knock sent during the test, replayed after a final restart,
/// opens nothing for the attacker, is never accepted twice, and opens nothing but the client's
/// own address when replayed from it (knocks sent while sesamed was dead were never accepted,
/// and are bound to the client).
#[test]
fn fault_kill9_during_a_knock_flood_then_restart() {
    if !require_netns() {
        return;
    }
    let mut rng = Rng::from_env("kill -9 flood");
    let mut f = Fixture::new("f-kill9");
    f.spec.knock.step_seconds = 60;
    f.spec.lease_seconds = u32::try_from(FLOOD_LEASE).unwrap();
    f.start();
    let server = f.server(Family::V4);
    let client = f.lab.addr(Host::Client, Family::V4);
    let filter = format!("dst host {server} and (udp or tcp)");
    let cap = f.lab.capture(Host::Client, CLIENT_IF, "flood", &filter);
    let garbage = f.lab.spawn(
        Host::Attacker,
        "scan",
        bin("sesame-netprobe"),
        &[
            "scan".to_owned(),
            f.lab.server_v4_attacker_side().to_string(),
            "20000".to_owned(),
            "21999".to_owned(),
            "--duration-ms".to_owned(),
            "60000".to_owned(),
            "--pps".to_owned(),
            "500".to_owned(),
            "--len".to_owned(),
            "184".to_owned(),
        ],
        &[],
    );
    let mut old_logs: Vec<Proc> = Vec::new();
    let mut max_timeout = 0u64;
    let mut samples = 0usize;
    let check_set = |lab: &Lab, max: &mut u64, n: &mut usize| {
        for (e, timeout, expires) in granted4(lab) {
            *n += 1;
            *max = (*max).max(timeout);
            assert!(
                timeout <= FLOOD_LEASE * 1000 && expires <= timeout,
                "a lease longer than lease_seconds: {e}"
            );
        }
    };

    let stop = AtomicBool::new(false);
    let kills = 6;
    let (knocks, strays) = std::thread::scope(|scope| {
        let lab = &f.lab;
        let profile = f.profile.clone();
        let stop = &stop;
        let mut loop_rng = Rng(rng.next());
        let knocker = scope.spawn(move || {
            let (mut knocks, mut strays) = (0u32, 0u32);
            while !stop.load(Ordering::SeqCst) {
                let o = lab.sesame(
                    Host::Client,
                    &["open".as_ref(), "--profile".as_ref(), profile.as_os_str()],
                );
                assert!(o.status.success(), "sesame open: {}", text(&o));
                knocks += 1;
                if loop_rng.range(0, 3) == 0 {
                    let port = loop_rng.range(20000, 21999);
                    let o = lab.netprobe(
                        Host::Client,
                        &[
                            "udp".to_owned(),
                            format!("{server}:{port}"),
                            "--len".to_owned(),
                            "184".to_owned(),
                        ],
                    );
                    assert!(o.status.success(), "netprobe udp: {}", text(&o));
                    strays += 1;
                }
                std::thread::sleep(Duration::from_millis(loop_rng.range(30, 250)));
            }
            (knocks, strays)
        });
        for round in 1..=kills {
            let wait = rng.range(200, 1500);
            let pause = rng.range(0, 400);
            eprintln!("round {round}: kill -9 after {wait} ms, restart after {pause} ms");
            let until = Instant::now() + Duration::from_millis(wait);
            while Instant::now() < until {
                check_set(&f.lab, &mut max_timeout, &mut samples);
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut d = f.daemon.take().unwrap();
            d.kill9();
            old_logs.push(d);
            std::thread::sleep(Duration::from_millis(pause));
            check_set(&f.lab, &mut max_timeout, &mut samples);
            // Every restart must read the state it finds (a corrupt file would stop it).
            f.daemon = Some(f.lab.start_sesamed(&f.config));
        }
        std::thread::sleep(Duration::from_millis(rng.range(200, 800)));
        stop.store(true, Ordering::SeqCst);
        knocker.join().unwrap()
    });
    drop(garbage);
    let grants_during: usize = old_logs
        .iter()
        .chain(f.daemon.iter())
        .map(|p| p.matching(0, &["granted client=laptop"]).len())
        .sum();

    // A last knock, granted; then kill -9 and restart once more, so that what the replay
    // meets is state read back from disk.
    std::thread::sleep(Duration::from_millis(50));
    let mark = f.mark();
    f.knock(&[]);
    expect_grant_line(&f, mark, client);
    let last_grant = Instant::now();
    let packets = cap.stop();
    let mut d = f.daemon.take().unwrap();
    d.kill9();
    old_logs.push(d);
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    check_set(&f.lab, &mut max_timeout, &mut samples);
    let closed = f
        .lab
        .wait_closed(
            Host::Client,
            f.svc(Family::V4, 22),
            last_grant,
            Duration::from_secs(FLOOD_LEASE + 6),
        )
        .unwrap_or_else(|| {
            panic!(
                "the last lease never ended; ruleset:\n{}",
                f.lab.server_ruleset()
            )
        });
    assert!(
        closed <= Duration::from_millis(FLOOD_LEASE * 1000 + 2500),
        "the last lease ended late: {closed:?} after its grant"
    );
    assert!(granted4(&f.lab).is_empty(), "{}", f.lab.server_ruleset());

    // Replay everything the client sent, from the client and from the attacker.
    let payloads = packets
        .iter()
        .filter(|p| matches!(&p.l4, pcap::L4::Udp { payload, .. } if sesame_proto::is_payload_len(payload.len())))
        .count();
    // From the client's own address: a knock that never reached a running sesamed (sent while
    // it was dead) was never accepted, and, bound to the client's address, it may still open
    // that address once while its step is in the window (PROTOCOL.md section 8, shared NAT).
    // Nothing accepted before is accepted again, and nothing opens any other address.
    let mark = f.mark();
    let path = f.lab.path("flood.pcap");
    replay_capture(&f, Host::Client, &path, Family::V4);
    std::thread::sleep(SETTLE);
    let from_client = f.daemon().matching(mark, &["granted client="]);
    for g in &from_client {
        assert!(
            g.contains(&format!("address={client} ")),
            "a replay from the client opened another address: {g}"
        );
    }
    let accepted_before = grants_during + 1;
    assert!(
        from_client.len() + accepted_before <= payloads,
        "replays from the client were granted more often ({}) than knocks went unaccepted ({payloads} payloads, {accepted_before} granted before): a datagram was accepted twice",
        from_client.len()
    );
    // From the attacker: nothing, ever.
    let mark = f.mark();
    // The attacker reaches the server on the other link; the datagrams go to the same ports.
    let o = f.lab.netprobe(
        Host::Attacker,
        &[
            "replay".to_owned(),
            path.to_string_lossy().into_owned(),
            server.to_string(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(SETTLE);
    assert_no_grant_line(&f, mark, "replay of every knock after kill -9 and restarts");
    let refused = f.daemon().matching(mark, &["rejected"]);
    assert!(
        !refused.is_empty(),
        "the replayed knocks were judged (as replays, or bound to another address):\n{}",
        f.daemon().output()
    );
    for r in &refused {
        assert!(
            r.contains("reason=replay") || r.contains("reason=other_ip_not_allowed"),
            "{r}"
        );
    }
    assert!(
        !f.connects(Host::Attacker, Family::V4, 22),
        "the attacker's replay opened the service"
    );
    let s = status(&f);
    eprintln!(
        "kill -9 flood: {kills} kills + 1, {knocks} knocks and {strays} stray datagrams from the client, {grants_during} grants during the flood; {} packets captured ({payloads} payloads); replayed from the client: {} granted (never accepted before, bound to the client); from the attacker: {} refused; largest lease timeout seen {max_timeout} ms in {samples} samples; last lease closed {closed:?} after its grant; counters after the replay: {}",
        packets.len(),
        from_client.len(),
        refused.len(),
        s["counters"]
    );
    assert_eq!(counter(&s, "grants"), from_client.len() as u64, "{s}");
    assert!(grants_during > 0, "no knock was granted during the flood");
}

/// `nft flush ruleset` (e.g. a firewall service restarting) removes sesame's table: sesamed
/// notices within seconds, rebuilds it, and the protected service is hidden again.
#[test]
fn fault_table_flushed_by_someone_else_is_rebuilt() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-flush");
    start_fixture(&mut f, |c| c, &[], &[]);
    f.assert_closed(Family::V4, 22, "before the flush");
    let mark = f.mark();
    let flushed = Instant::now();
    f.lab.run_ok(Host::Server, "nft", &["flush", "ruleset"]);
    // Right after the flush the service is exposed: that is what the check is for.
    assert!(
        f.lab.connects(
            Host::Client,
            SocketAddr::new(f.lab.addr(Host::Server, Family::V4), 22),
            1500
        ),
        "after nft flush ruleset, nothing hides the service"
    );
    let line = f.daemon().expect_after(
        mark,
        &["firewall table had been removed", "rebuilt"],
        Duration::from_secs(12),
    );
    let took = flushed.elapsed();
    eprintln!(
        "table rebuilt {:.1} s after the flush: {line}",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(11), "took {took:?}");
    assert!(f.lab.server_ruleset().contains("chain gate"));
    f.assert_closed(Family::V4, 22, "after the rebuild");
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
}
