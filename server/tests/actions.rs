//! `[[action]]`: the configuration's defaults and rules, and the action runner
//! (`sesamed action-runner`) driven over its pipes the way the daemon drives it: what a command
//! gets (argv, account, groups, environment, directory), what the runner refuses by its own
//! reading of the configuration, the timeout that kills a command's whole process group, a
//! reload kept aside until `commit`, what it keeps of its privileges, and `check --as-user`.
//!
//! The runner tests switch accounts, so they need root; without it they are skipped, except
//! with `CI=true`, where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sesame_keys::PrivateKey;
use sesame_server::config::Config;

const SESAMED: &str = env!("CARGO_BIN_EXE_sesamed");

use sesame_test_support::TempDir;

const NOBODY: u32 = 65534;

fn config_text(dir: &Path, actions: &str) -> String {
    format!(
        r#"private_key_file = "server.key"
state_dir = "state"
control_socket = "sesamed.sock"
[knock]
port_range = [20000, 21999]
[firewall]
protect = ["tcp/22"]
[[client]]
name = "laptop"
public_key = "{}"
actions = ["rec", "hang", "fail"]
[[client]]
name = "phone"
public_key = "{}"
{actions}
[[action]]
name = "rec"
command = ["/bin/sh", "-c", "{{ printf '%s\n' \"$@\"; id -u; id -g; id -G; pwd; tr '\\000' '\n' < /proc/$$/environ | sort; }} > {out}/rec.out", "sh", "{{client}}", "--from={{source}}", "{{argument}}", "x{{argument}}y", "{{X}}{{"]
user = "nobody"
argument = "^[a-z0-9:.-]{{1,17}}$"
[[action]]
name = "hang"
command = ["/bin/sh", "-c", "echo hanging >&2; sleep 60 & echo $! > {out}/hang.pid; wait"]
user = "daemon"
timeout_ms = 300
max_concurrent = 1
[[action]]
name = "fail"
command = ["/bin/sh", "-c", "echo 'it failed:\tbadly' >&2; exit 3"]
user = "nobody"
"#,
        PrivateKey::from_bytes([1; 32]).public_key(),
        PrivateKey::from_bytes([2; 32]).public_key(),
        out = dir.display(),
    )
}

fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the action runner tests need root (CI=true)"
    );
    eprintln!("SKIPPED (not CI): the action runner tests need root");
    true
}

/// A directory the accounts of the actions can write to, with a configuration in it.
fn lab(tag: &str, extra: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    sesame_keys::write_private_key_file(&dir.path("server.key"), &PrivateKey::generate()).unwrap();
    let path = dir.path("sesamed.toml");
    std::fs::write(&path, config_text(&dir.0, extra)).unwrap();
    (dir, path)
}

/// [`lab`] with the phone's extra lines made from the directory's path.
fn lab_in(dir: TempDir, extra: impl Fn(&str) -> String) -> (TempDir, PathBuf) {
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    sesame_keys::write_private_key_file(&dir.path("server.key"), &PrivateKey::generate()).unwrap();
    let path = dir.path("sesamed.toml");
    let extra = extra(&dir.0.display().to_string());
    std::fs::write(&path, config_text(&dir.0, &extra)).unwrap();
    (dir, path)
}

/// An action runner on pipes, as the daemon starts it.
struct Runner {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Runner {
    fn start(config: &Path, as_uid: Option<u32>) -> Runner {
        let mut cmd = Command::new(SESAMED);
        cmd.args(["action-runner", "--config"]).arg(config);
        if let Some(uid) = as_uid {
            cmd.uid(uid).gid(uid);
        }
        Runner::spawn(cmd)
    }

    /// `cmd` (which starts `sesamed action-runner` in some way) on pipes.
    fn spawn(mut cmd: Command) -> Runner {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Runner {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("an answer from the runner within 10 s")
    }

    /// The answers until one starts with `prefix` (returned with those before it).
    fn until(&self, prefix: &str) -> (String, Vec<String>) {
        let mut before = Vec::new();
        loop {
            let line = self.recv();
            if line.starts_with(prefix) {
                return (line, before);
            }
            before.push(line);
        }
    }
}

impl Drop for Runner {
    /// SIGTERM, which makes the runner kill what it runs (SIGKILL would leave its commands
    /// running on), then SIGKILL if it is still there after 3 s.
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        drop(self.stdin.take());
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no {name} for {pid}"))
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the command name in parentheses.
            let state = stat.rsplit(") ").next().unwrap_or("").chars().next();
            state != Some('Z')
        }
        Err(_) => false,
    }
}

#[test]
fn actions_have_safe_defaults_and_clients_name_them() {
    let text = config_text(Path::new("/tmp"), "");
    let c = Config::parse(&text, Path::new("/etc/sesame/sesamed.toml")).unwrap();
    let fail = c.action("fail").unwrap();
    assert_eq!(fail.user, "nobody");
    assert!(!fail.allow_root);
    assert_eq!(
        (fail.timeout_ms, fail.cooldown_ms, fail.max_concurrent),
        (30_000, 5_000, 1)
    );
    assert_eq!(fail.argument, sesame_proto::action::ArgumentRule::None);
    assert_eq!(c.clients[0].actions, ["rec", "hang", "fail"]);
    assert!(c.clients[1].actions.is_empty());
    let allowed = c.allowed_actions(&c.clients[0]);
    assert_eq!(allowed.len(), 3);
    assert_eq!(allowed[0].argument.to_string(), "^[a-z0-9:.-]{1,17}$");
    assert!(c.allowed_actions(&c.clients[1]).is_empty());

    // A knock without a payload cannot name an action.
    let none = text.replace(
        "port_range = [20000, 21999]",
        "port_range = [20000, 21999]\npayload = \"none\"",
    );
    let e = Config::parse(&none, Path::new("s.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("client.actions") && e.contains("payload"), "{e}");
    // Two actions of one name.
    let twice = text.replace("name = \"fail\"", "name = \"rec\"");
    let e = Config::parse(&twice, Path::new("s.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("action.name") && e.contains("two actions"),
        "{e}"
    );
    // An empty command, a NUL, a timeout out of range.
    for (from, to, key) in [
        (
            "command = [\"/bin/sh\", \"-c\", \"echo 'it failed",
            "command = [] #",
            "action.command",
        ),
        ("exit 3\"]", "exit 3\", \"a\\u0000b\"]", "action.command"),
        ("timeout_ms = 300", "timeout_ms = 99", "action.timeout_ms"),
        (
            "max_concurrent = 1",
            "max_concurrent = 65",
            "action.max_concurrent",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let e = Config::parse(&text.replacen(from, to, 1), Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{to}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // A client name that starts with '-' (`{client}` would pass for an option).
    let e = Config::parse(
        &text.replace("name = \"laptop\"", "name = \"-laptop\""),
        Path::new("s.toml"),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "line 9: client.name: '-laptop' is not a valid name: it may not start with '-'"
    );
    // Elsewhere a '-' is fine.
    Config::parse(
        &text
            .replace("name = \"laptop\"", "name = \"my-laptop\"")
            .replace("name = \"phone\"", "name = \"phone-\""),
        Path::new("s.toml"),
    )
    .unwrap();
}

#[test]
fn the_fingerprint_follows_the_actions_and_who_may_run_them() {
    let text = config_text(Path::new("/tmp"), "");
    let parse = |t: &str| Config::parse(t, Path::new("/etc/sesame/sesamed.toml")).unwrap();
    let a = parse(&text);
    let fp = sesame_server::action::fingerprint(&a);
    assert_eq!(fp.len(), 16);
    // Other settings do not change it.
    let b = parse(&text.replace("protect = [\"tcp/22\"]", "protect = [\"tcp/2222\"]"));
    assert_eq!(sesame_server::action::fingerprint(&b), fp);
    assert!(sesame_server::action::same_actions(&a, &b));
    for changed in [
        text.replace("timeout_ms = 300", "timeout_ms = 301"),
        text.replace(
            "actions = [\"rec\", \"hang\", \"fail\"]",
            "actions = [\"rec\"]",
        ),
        text.replace("user = \"daemon\"", "user = \"nobody\""),
    ] {
        let c = parse(&changed);
        assert_ne!(sesame_server::action::fingerprint(&c), fp);
        assert!(!sesame_server::action::same_actions(&a, &c));
    }
}

/// A request runs the configured argv (placeholders replaced in place, never split), as the
/// action's account with no supplementary group, with PATH and the SESAME_* variables alone, in
/// `/`; the first line of stderr and the exit status come back.
#[test]
fn a_request_runs_the_argv_as_the_actions_account_and_nothing_else() {
    if skip_unless_root() {
        return;
    }
    let (dir, config) = lab("act-run", "");
    let mut r = Runner::start(&config, None);
    let ready = r.recv();
    assert!(ready.starts_with("ready "), "{ready}");
    r.send("run 1 rec laptop 2001:db8::7 aa:bb");
    let (start, _) = r.until("start 1 ");
    let pid: u32 = start.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(pid > 1);
    let (done, _) = r.until("done 1 ");
    assert!(done.starts_with("done 1 exited 0 "), "{done}");
    let out = std::fs::read_to_string(dir.path("rec.out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..5],
        ["laptop", "--from=2001:db8::7", "aa:bb", "xaa:bby", "{X}{"],
        "{out}"
    );
    assert_eq!(lines[5..9], ["65534", "65534", "65534", "/"], "{out}");
    let env: Vec<&str> = lines[9..].to_vec();
    assert_eq!(
        env,
        [
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "SESAME_ACTION=rec",
            "SESAME_ARGUMENT=aa:bb",
            "SESAME_CLIENT=laptop",
            "SESAME_SOURCE=2001:db8::7",
        ],
        "{out}"
    );
    // The first line of stderr, sanitized, and the status.
    r.send("run 2 fail laptop 198.18.0.2");
    let (done, _) = r.until("done 2 ");
    assert!(
        done.starts_with("done 2 exited 3 ") && done.ends_with(" it failed:?badly"),
        "{done}"
    );
}

/// The runner checks every request against its own reading of the configuration: an action
/// that does not exist, a client not allowed it, an argument that breaks its rule, a run over
/// `max_concurrent`, and a line it does not understand run nothing.
#[test]
fn the_runner_refuses_what_its_configuration_does_not_allow() {
    if skip_unless_root() {
        return;
    }
    let (dir, config) = lab("act-refuse", "");
    let mut r = Runner::start(&config, None);
    assert!(r.recv().starts_with("ready "));
    for (line, why) in [
        ("run 1 reboot laptop 198.18.0.2", "no action 'reboot'"),
        (
            "run 2 rec phone 198.18.0.2 ab",
            "client 'phone' may not run 'rec'",
        ),
        (
            "run 3 rec nobody-known 198.18.0.2 ab",
            "client 'nobody-known'",
        ),
        (
            "run 4 rec laptop 198.18.0.2 AB",
            "the argument does not fit",
        ),
        (
            "run 5 rec laptop 198.18.0.2 -rf",
            "the argument does not fit",
        ),
        ("run 6 rec laptop 198.18.0.2", "the argument does not fit"),
        (
            "run 7 fail laptop 198.18.0.2 x",
            "the argument does not fit",
        ),
        (
            "run 12 rec laptop 198.18.0.2 $(reboot)",
            "the argument does not fit",
        ),
    ] {
        r.send(line);
        let done = r.recv();
        let id = line.split(' ').nth(1).unwrap();
        assert!(
            done.starts_with(&format!("done {id} failed - 0 refused: ")) && done.contains(why),
            "{line}: {done}"
        );
    }
    // Not understood: ignored (nothing answers it), and the runner goes on.
    r.send("run 8 rec laptop 198.18.0.2 a b");
    r.send("run 9 rec laptop 198.18.0.2 \u{e9}");
    r.send("run 10 hang laptop 198.18.0.2");
    let (start, before) = r.until("start 10 ");
    assert!(before.is_empty(), "{before:?}");
    assert!(start.starts_with("start 10 "));
    // One `hang` runs: a second one is over max_concurrent.
    r.send("run 11 hang laptop 198.18.0.2");
    let done = r.recv();
    assert!(
        done.starts_with("done 11 failed - 0 refused: 1 runs going (max_concurrent = 1)"),
        "{done}"
    );
    let _ = r.until("done 10 ");
    assert!(!dir.path("rec.out").exists(), "nothing refused ran");
}

/// At its timeout a command's whole process group is killed (SIGTERM, then SIGKILL), also what
/// it started in the background; the runner reports `killed` and the time it ran.
#[test]
fn a_hanging_command_is_killed_with_its_process_group_at_its_timeout() {
    if skip_unless_root() {
        return;
    }
    let (dir, config) = lab("act-hang", "");
    let mut r = Runner::start(&config, None);
    assert!(r.recv().starts_with("ready "));
    let t0 = Instant::now();
    r.send("run 1 hang laptop 198.18.0.2");
    let (start, _) = r.until("start 1 ");
    let pid: u32 = start.rsplit(' ').next().unwrap().parse().unwrap();
    // It runs as `daemon` (uid 1), in a process group of its own.
    std::thread::sleep(Duration::from_millis(100));
    let background: u32 = std::fs::read_to_string(dir.path("hang.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(status_field(pid, "Uid"), "1 1 1 1");
    let stat = std::fs::read_to_string(format!("/proc/{background}/stat")).unwrap();
    let pgid: u32 = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        pgid, pid,
        "the background process is in the command's group"
    );
    let (done, _) = r.until("done 1 ");
    let elapsed = t0.elapsed();
    let fields: Vec<&str> = done.split(' ').collect();
    assert_eq!(fields[..4], ["done", "1", "killed", "-"], "{done}");
    let ms: u64 = fields[4].parse().unwrap();
    assert!((300..2500).contains(&ms), "{done}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(done.ends_with(" hanging"), "{done}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(pid), "the command is gone");
    assert!(!alive(background), "its background process is gone");
}

/// A reload is read and checked, kept aside, and used only after `commit`; `abort` forgets it,
/// and a configuration whose accounts cannot be looked up is refused.
#[test]
fn a_reload_waits_for_the_commit() {
    if skip_unless_root() {
        return;
    }
    let (dir, config) = lab("act-reload", "");
    let mut r = Runner::start(&config, None);
    let ready = r.recv();
    let fp0 = ready.strip_prefix("ready ").unwrap().to_owned();
    // `phone` may now run `fail`.
    std::fs::write(&config, config_text(&dir.0, "actions = [\"fail\"]")).unwrap();
    r.send("reload");
    let reloaded = r.recv();
    let fp1 = reloaded.strip_prefix("reloaded ").unwrap().to_owned();
    assert_ne!(fp0, fp1);
    r.send("run 1 fail phone 198.18.0.2");
    assert!(
        r.recv()
            .starts_with("done 1 failed - 0 refused: client 'phone'")
    );
    r.send("abort");
    r.send("run 2 fail phone 198.18.0.2");
    assert!(
        r.recv()
            .starts_with("done 2 failed - 0 refused: client 'phone'")
    );
    r.send("reload");
    assert_eq!(r.recv(), format!("reloaded {fp1}"));
    r.send("commit");
    r.send("run 3 fail phone 198.18.0.2");
    let (done, _) = r.until("done 3 ");
    assert!(done.starts_with("done 3 exited 3 "), "{done}");
    // An account that does not exist: refused, and what runs stays.
    std::fs::write(
        &config,
        config_text(&dir.0, "actions = [\"fail\"]")
            .replace("user = \"daemon\"", "user = \"no-such-account\""),
    )
    .unwrap();
    r.send("reload");
    let refused = r.recv();
    assert!(
        refused.starts_with("refused action 'hang': user 'no-such-account' does not exist"),
        "{refused}"
    );
    r.send("commit");
    r.send("run 4 hang laptop 198.18.0.2");
    let (start, _) = r.until("start 4 ");
    let pid: u32 = start.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(status_field(pid, "Uid"), "1 1 1 1");
}

/// Started as root, the runner keeps uid 0 and only CAP_SETUID, CAP_SETGID and CAP_KILL (in
/// every set, the bounding set too), no group, no ambient capability, no_new_privs; when its
/// stdin closes it lets the running command end, then exits 0.
#[test]
fn the_runner_keeps_only_what_switching_accounts_needs_and_exits_with_its_stdin() {
    if skip_unless_root() {
        return;
    }
    let (_dir, config) = lab("act-privs", "");
    let mut r = Runner::start(&config, None);
    assert!(r.recv().starts_with("ready "));
    let pid = r.child.id();
    // CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7).
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(pid, set), "00000000000000e0", "{set}");
    }
    assert_eq!(status_field(pid, "CapInh"), "0000000000000000");
    assert_eq!(status_field(pid, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Uid"), "0 0 0 0");
    assert_eq!(status_field(pid, "Groups"), "");
    r.send("run 1 hang laptop 198.18.0.2");
    let _ = r.until("start 1 ");
    let t0 = Instant::now();
    drop(r.stdin.take());
    let (done, _) = r.until("done 1 ");
    assert!(done.starts_with("done 1 killed"), "{done}");
    let status = r.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // With every action as its own account, it keeps no capability at all.
    let (_dir, config) = lab("act-privs-none", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("user = \"nobody\"", "user = \"root\"\nallow_root = true")
        .replace("user = \"daemon\"", "user = \"root\"\nallow_root = true");
    std::fs::write(&config, text).unwrap();
    let r = Runner::start(&config, None);
    assert!(r.recv().starts_with("ready "));
    for set in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(status_field(r.child.id(), set), "0000000000000000", "{set}");
    }
}

/// Started without privileges (as the systemd unit starts sesamed), an action of another
/// account stops the runner with one line naming it; `sesamed check --as-user` says the same.
#[test]
fn unprivileged_an_action_of_another_account_is_one_clear_error() {
    if skip_unless_root() {
        return;
    }
    let (dir, config) = lab("act-unpriv", "");
    std::os::unix::fs::chown(dir.path("server.key"), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut r = Runner::start(&config, Some(NOBODY));
    let line = r.recv();
    assert_eq!(
        line,
        "error action 'hang': user = \"daemon\" (uid 1) is not the account sesamed runs as (uid 65534), and switching to it needs sesamed to start as root (CAP_SETUID, CAP_SETGID); set user = \"nobody\" for this action, or start sesamed as root with user = \"nobody\" in the configuration"
    );
    assert_eq!(r.child.wait().unwrap().code(), Some(1));

    let check = |path: &Path| {
        Command::new(SESAMED)
            .args(["check", "--as-user", "nobody", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let o = check(&config);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("action.user: action 'hang': user = \"daemon\" (uid 1) is not the account sesamed runs as"),
        "{err}"
    );
    // Every action as nobody: the check passes, and the runner starts.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("user = \"daemon\"", "user = \"nobody\"");
    std::fs::write(&config, text).unwrap();
    let o = check(&config);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = Runner::start(&config, Some(NOBODY));
    assert!(r.recv().starts_with("ready "));
    for set in ["CapEff", "CapPrm", "CapAmb"] {
        assert_eq!(status_field(r.child.id(), set), "0000000000000000", "{set}");
    }
}

/// SIGINT (Ctrl-C in the daemon's terminal) does not end the runner: the daemon stops and
/// closes its stdin. SIGTERM kills every running command's process group, reports it `killed`,
/// and the runner exits (the daemon then logs that it is gone).
#[test]
fn sigint_is_ignored_and_sigterm_kills_the_commands_before_the_runner_exits() {
    if skip_unless_root() {
        return;
    }
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let (dir, config) = lab("act-signals", "");
    // A long timeout: only SIGTERM can end `hang` within the test.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout_ms = 300", "timeout_ms = 60000");
    std::fs::write(&config, text).unwrap();
    let mut r = Runner::start(&config, None);
    assert!(r.recv().starts_with("ready "));
    let runner = Pid::from_raw(r.child.id() as i32);
    r.send("run 1 hang laptop 198.18.0.2");
    let (start, _) = r.until("start 1 ");
    let pid: u32 = start.rsplit(' ').next().unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let background: u32 = std::fs::read_to_string(dir.path("hang.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill(runner, Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    r.send("run 2 fail laptop 198.18.0.2");
    let (done, _) = r.until("done 2 ");
    assert!(done.starts_with("done 2 exited 3 "), "{done}");
    assert!(alive(pid), "SIGINT left the command alone");
    let t0 = Instant::now();
    kill(runner, Signal::SIGTERM).unwrap();
    let (done, _) = r.until("done 1 ");
    assert!(done.starts_with("done 1 killed - "), "{done}");
    let status = r.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(pid), "the command is gone");
    assert!(!alive(background), "its background process is gone");
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, pgrp, session, tty_nr...
fn stat_fields(stat: &str) -> Vec<String> {
    stat.rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect()
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Nothing a command starts outlives its run: a background job is killed when the command
/// exits by itself, and a process that left the command's process group and session (setsid)
/// is killed with the rest at the timeout.
#[test]
fn nothing_a_command_starts_outlives_its_run() {
    if skip_unless_root() {
        return;
    }
    let extra = |out: &str| {
        format!(
            r#"actions = ["bg", "esc"]
[[action]]
name = "bg"
command = ["/bin/sh", "-c", "sleep 999 >/dev/null 2>&1 & echo $! > {out}/bg.pid; (setsid sleep 998 >/dev/null 2>&1 & echo $! > {out}/bg2.pid)"]
user = "nobody"
cooldown_ms = 0
[[action]]
name = "esc"
command = ["/bin/sh", "-c", "setsid sleep 997 >/dev/null 2>&1 & echo $! > {out}/esc.pid; sleep 60"]
user = "daemon"
timeout_ms = 300
"#
        )
    };
    let (dir, config) = lab_in(TempDir::new("act-leftover"), extra);
    let mut r = Runner::start(&config, None);
    assert!(r.recv().starts_with("ready "));
    r.send("run 1 bg phone 198.18.0.2");
    let (done, _) = r.until("done 1 ");
    assert!(done.starts_with("done 1 exited 0 "), "{done}");
    let bg = read_pid(&dir.path("bg.pid"));
    let bg2 = read_pid(&dir.path("bg2.pid"));
    assert!(!alive(bg), "the background job went with the command");
    assert!(
        !alive(bg2),
        "a double-forked setsid job went with the command"
    );

    r.send("run 2 esc phone 198.18.0.2");
    let (start, _) = r.until("start 2 ");
    let pid: u32 = start.rsplit(' ').next().unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let esc = read_pid(&dir.path("esc.pid"));
    let stat = std::fs::read_to_string(format!("/proc/{esc}/stat")).unwrap();
    let sid: u32 = stat_fields(&stat)[3].parse().unwrap();
    assert_eq!(sid, esc, "setsid made it a session of its own");
    let (done, _) = r.until("done 2 ");
    assert!(done.starts_with("done 2 killed - "), "{done}");
    assert!(!alive(pid), "the command is gone");
    assert!(!alive(esc), "the process that left its session is gone too");
}

/// A pseudo-terminal: its master, and the slave's descriptor opened for a child to make it its
/// controlling terminal.
#[allow(unsafe_code)]
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // SAFETY: plain libc calls on a descriptor this function owns; `name` is a buffer of the
    // length passed, which ptsname_r fills with a NUL-terminated path.
    let (master, path) = unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt");
        let master = std::fs::File::from_raw_fd(fd);
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_str()
            .unwrap()
            .to_owned();
        (master, path)
    };
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .unwrap();
    (master, slave)
}

/// The runner as `sesamed run` in an administrator's terminal starts it: in a session whose
/// controlling terminal is `tty`, with a descriptor it inherited open (fd 7, not close-on-exec).
#[allow(unsafe_code)]
fn runner_in_a_terminal(config: &Path, tty: &std::fs::File) -> Runner {
    use std::os::fd::AsRawFd;
    let fd = tty.as_raw_fd();
    let mut cmd = Command::new(SESAMED);
    cmd.args(["action-runner", "--config"]).arg(config);
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (setsid, ioctl, dup2, fcntl) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // When the terminal is fd 7 already, dup2 does nothing and leaves it close-on-exec
            // (as Rust opens every file): clear that flag instead. (Which number the terminal
            // gets depends on what the other tests have open: this failed now and then.)
            let inherited = if fd == 7 {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 7)
            };
            if libc::setsid() < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 || inherited < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let r = Runner::spawn(cmd);
    // The test can fail: the runner has the terminal, and fd 7.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", r.child.id())).unwrap();
    assert_ne!(
        stat_fields(&stat)[4],
        "0",
        "the runner has a controlling terminal"
    );
    assert!(
        std::fs::read_link(format!("/proc/{}/fd/7", r.child.id())).is_ok(),
        "the runner has fd 7"
    );
    r
}

fn tty_actions(out: &str) -> String {
    format!(
        r#"actions = ["tty", "fds"]
[[action]]
name = "tty"
command = ["/bin/sh", "-c", "exec >{out}/tty.out 2>&1; echo $$; cat /proc/$$/stat; if (exec 3</dev/tty); then echo TTY; else echo NOTTY; fi"]
user = "nobody"
[[action]]
name = "fds"
command = ["/bin/sh", "-c", "exec >{out}/fds.out; ls /proc/$$/fd"]
user = "nobody"
"#
    )
}

/// A command starts a session of its own (its pid is its session and process group id), so it
/// has no controlling terminal: it cannot write to (or inject input into) the terminal sesamed
/// runs in.
#[test]
fn a_command_has_a_session_of_its_own_and_no_terminal() {
    if skip_unless_root() {
        return;
    }
    let dir = TempDir::new("act-tty");
    let (dir, config) = lab_in(dir, tty_actions);
    let (_master, slave) = pty();
    let mut r = runner_in_a_terminal(&config, &slave);
    assert!(r.recv().starts_with("ready "));
    r.send("run 1 tty phone 198.18.0.2");
    let (done, _) = r.until("done 1 ");
    assert!(done.starts_with("done 1 exited 0 "), "{done}");
    let out = std::fs::read_to_string(dir.path("tty.out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let fields = stat_fields(lines[1]);
    assert_eq!(fields[2], lines[0], "its process group: {out}");
    assert_eq!(fields[3], lines[0], "its session: {out}");
    assert_eq!(fields[4], "0", "no controlling terminal: {out}");
    assert_eq!(lines.last(), Some(&"NOTTY"), "{out}");
}

/// A command gets descriptors 0, 1 and 2 and nothing else, whatever the runner inherited.
#[test]
fn a_command_gets_no_descriptor_the_runner_inherited() {
    if skip_unless_root() {
        return;
    }
    let dir = TempDir::new("act-fds");
    let (dir, config) = lab_in(dir, tty_actions);
    let (_master, slave) = pty();
    let mut r = runner_in_a_terminal(&config, &slave);
    assert!(r.recv().starts_with("ready "));
    r.send("run 1 fds phone 198.18.0.2");
    let (done, _) = r.until("done 1 ");
    assert!(done.starts_with("done 1 exited 0 "), "{done}");
    let out = std::fs::read_to_string(dir.path("fds.out")).unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), ["0", "1", "2"], "{out}");
}

/// A command of the runner's own account gets no supplementary group either: a runner that
/// can (CAP_SETGID) drops its own at start; one that cannot, and has some, refuses to start
/// with one line rather than hand them to every command.
#[test]
fn a_command_of_the_runners_own_account_gets_no_supplementary_group() {
    if skip_unless_root() {
        return;
    }
    // Every action as `user` (the lines that replace each `user = ...`).
    let as_account = |config: &Path, user: &str| {
        let text = std::fs::read_to_string(config)
            .unwrap()
            .replace("user = \"nobody\"", user)
            .replace("user = \"daemon\"", user);
        std::fs::write(config, text).unwrap();
    };
    let setpriv = |config: &Path, args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(args)
            .args([SESAMED, "action-runner", "--config"])
            .arg(config);
        Runner::spawn(cmd)
    };
    // Root with groups 4 and 42, every action as root: the command has none.
    let (dir, config) = lab("act-groups-root", "");
    as_account(&config, "user = \"root\"\nallow_root = true");
    let mut r = setpriv(&config, &["--groups=4,42"]);
    assert!(r.recv().starts_with("ready "));
    r.send("run 1 rec laptop 198.18.0.2 ab");
    let (done, _) = r.until("done 1 ");
    assert!(done.starts_with("done 1 exited 0 "), "{done}");
    let out = std::fs::read_to_string(dir.path("rec.out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[5..8], ["0", "0", "0"], "uid, gid, groups: {out}");
    drop(r);

    // As `daemon` with groups 4 and 42 it cannot drop: it refuses to start.
    let (dir, config) = lab("act-groups-own", "");
    as_account(&config, "user = \"daemon\"");
    std::os::unix::fs::chown(dir.path("server.key"), Some(1), Some(1)).unwrap();
    let mut r = setpriv(&config, &["--reuid=1", "--regid=1", "--groups=4,42"]);
    let line = r.recv();
    assert!(
        line.starts_with("error action 'rec': it runs as sesamed's own account, and sesamed has supplementary groups (4, 42) it cannot drop"),
        "{line}"
    );
    assert_eq!(r.child.wait().unwrap().code(), Some(1));
    // Without them it starts, and the command has only its own group.
    let mut r = setpriv(&config, &["--reuid=1", "--regid=1", "--clear-groups"]);
    assert!(r.recv().starts_with("ready "));
    r.send("run 1 rec laptop 198.18.0.2 ab");
    let (done, _) = r.until("done 1 ");
    assert!(done.starts_with("done 1 exited 0 "), "{done}");
    let out = std::fs::read_to_string(dir.path("rec.out")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[5..8], ["1", "1", "1"], "uid, gid, groups: {out}");
}
