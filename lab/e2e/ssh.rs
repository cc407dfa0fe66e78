//! The README's ssh recipes with the real OpenSSH client and server: sshd listens on the
//! server's port 22, which sesamed protects; the client's profile is installed with
//! `sesame import` into a home directory in the lab.
//!
//! - `ProxyCommand sesame proxy NAME %h %p`: ssh gets through (the knock, the wait and the
//!   session's bytes all go through `sesame proxy`), while a plain ssh without the knock
//!   times out.
//! - `Match host … exec "sesame open NAME --wait"`: ssh knocks while reading its
//!   configuration, then connects directly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, Lab, Proc, bin_dir, require_netns, text};

use crate::common::Fixture;
use crate::operator::install_laptop_profile;

/// The profile name the tests install.
const PROFILE: &str = "lab";

/// sshd and the client's identity.
struct Ssh {
    /// `sshd -D -e` in the server namespace (its log).
    sshd: Proc,
    /// The client's private key (its public key is authorized for root).
    identity: PathBuf,
    /// The client user's home (the sesame profile is installed there).
    home: PathBuf,
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(o.status.success(), "{what}: {}", text(&o));
    o
}

fn keygen(path: &Path) {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "sesame-e2e", "-f"])
            .arg(path),
        "ssh-keygen",
    );
}

/// A fixture with sshd on port 22 (instead of the probe service), sesamed protecting it, and
/// the laptop's profile installed as `lab` in `LAB/home`.
fn start(tag: &str) -> (Fixture, Ssh) {
    start_with(tag, |_| {})
}

/// [`start`], with `edit` applied to the fixture before it starts.
fn start_with(tag: &str, edit: impl FnOnce(&mut Fixture)) -> (Fixture, Ssh) {
    let mut f = Fixture::new(tag);
    f.spec.lease_seconds = 4;
    f.serve_ports = Some(Vec::new());
    edit(&mut f);
    f.start();
    let lab = &f.lab;
    // sshd's privilege separation directory (Debian's package makes it at boot).
    std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
    let host_key = lab.path("ssh_host_ed25519_key");
    let identity = lab.path("id_ed25519");
    keygen(&host_key);
    keygen(&identity);
    let authorized = lab.path("authorized_keys");
    std::fs::copy(identity.with_extension("pub"), &authorized).unwrap();
    let config = lab.write(
        "sshd_config",
        &format!(
            "Port 22\n\
             ListenAddress {server}\n\
             HostKey {host_key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {authorized}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             UsePAM no\n\
             StrictModes no\n\
             LogLevel VERBOSE\n",
            server = f.server(Family::V4),
            host_key = host_key.display(),
            pid = lab.path("sshd.pid").display(),
            authorized = authorized.display(),
        ),
    );
    run_ok(
        Command::new("/usr/sbin/sshd")
            .arg("-t")
            .arg("-f")
            .arg(&config),
        "sshd -t",
    );
    let sshd = lab.spawn(
        Host::Server,
        "sshd",
        "/usr/sbin/sshd",
        &[
            "-D".as_ref(),
            "-e".as_ref(),
            "-f".as_ref(),
            config.as_os_str(),
        ],
        &[],
    );
    let listening = format!("Server listening on {} port 22", f.server(Family::V4));
    if sshd
        .wait_for(&[&listening], Duration::from_secs(10))
        .is_none()
    {
        panic!("sshd did not start:\n{}", sshd.output());
    }
    let home = lab.path("home");
    install_laptop_profile(&f, &home, PROFILE);
    (
        f,
        Ssh {
            sshd,
            identity,
            home,
        },
    )
}

/// `ssh ARGS` in the client namespace, as the user whose home is `ssh.home`, with `sesame` on
/// the PATH (the recipes call it by name).
fn ssh(lab: &Lab, s: &Ssh, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned())
    );
    Command::new("ip")
        .args(["netns", "exec", lab.ns(Host::Client), "ssh"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(&s.identity)
        .args(args)
        .current_dir(&lab.dir)
        .env("HOME", &s.home)
        .env("PATH", path)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

/// ssh to the server without any knock: the SYN is dropped, so it times out.
fn assert_plain_ssh_times_out(f: &Fixture, s: &Ssh) {
    let target = format!("root@{}", f.server(Family::V4));
    let started = Instant::now();
    let o = ssh(
        &f.lab,
        s,
        &[
            "-F",
            "/dev/null",
            "-o",
            "ConnectTimeout=3",
            &target,
            "echo hello",
        ],
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(255), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("hello"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("timed out"), "{err}");
    assert!(
        took >= Duration::from_millis(2500),
        "dropped, not refused: ssh gave up after {took:?}: {err}"
    );
}

/// sshd logged the client's login from its own address.
fn assert_logged_in(f: &Fixture, s: &Ssh) {
    let from = format!("from {}", f.lab.addr(Host::Client, Family::V4));
    assert!(
        s.sshd
            .wait_for(
                &["Accepted publickey for root", &from],
                Duration::from_secs(5)
            )
            .is_some(),
        "sshd log:\n{}",
        s.sshd.output()
    );
}

#[test]
fn proxycommand_sesame_proxy_carries_the_ssh_session() {
    if !require_netns() {
        return;
    }
    let (f, s) = start("ssh-proxy");
    assert_plain_ssh_times_out(&f, &s);
    let config = f.lab.write(
        "ssh_config",
        &format!(
            "Host target\n    HostName {}\n    User root\n    ProxyCommand sesame proxy {PROFILE} %h %p\n",
            f.server(Family::V4)
        ),
    );
    let mark = f.mark();
    let cfg = config.to_string_lossy().into_owned();
    let o = ssh(&f.lab, &s, &["-F", &cfg, "target", "echo hello"]);
    assert!(o.status.success(), "ssh with ProxyCommand: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello");
    f.daemon()
        .wait_for_after(mark, &[" granted client=laptop "], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no grant:\n{}", f.daemon().output()));
    assert_logged_in(&f, &s);
    // The proxy's own messages go to stderr only: stdout is the ssh stream (a stray byte
    // there would have broken the session above).
}

#[test]
fn match_exec_sesame_open_wait_then_ssh_connects_directly() {
    if !require_netns() {
        return;
    }
    let (f, s) = start("ssh-match");
    let server = f.server(Family::V4);
    let config = f.lab.write(
        "ssh_config",
        &format!("Match host {server} exec \"sesame open {PROFILE} --wait\"\n    User root\n"),
    );
    let mark = f.mark();
    let cfg = config.to_string_lossy().into_owned();
    let o = ssh(
        &f.lab,
        &s,
        &[
            "-F",
            &cfg,
            "-o",
            "ConnectTimeout=5",
            &server.to_string(),
            "echo hello",
        ],
    );
    assert!(o.status.success(), "ssh with Match exec: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello");
    f.daemon()
        .wait_for_after(mark, &[" granted client=laptop "], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no grant:\n{}", f.daemon().output()));
    assert_logged_in(&f, &s);
    // Once the lease has ended (its element gone from sesamed's set), the same ssh without
    // the Match line is dropped.
    let client = f.lab.addr(Host::Client, Family::V4).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.lab.server_ruleset().contains(&client) {
        assert!(
            Instant::now() < deadline,
            "the lease never ended:\n{}",
            f.lab.server_ruleset()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_plain_ssh_times_out(&f, &s);
}

/// With `[firewall] lease = "connection"` (the installed profile says so: the URI carries it),
/// both recipes get ssh in, and the knock admits nothing after ssh's connection: `sesame proxy`
/// relays the only connection it makes, and `sesame open --wait` in `Match exec` knocks
/// without connecting, so ssh's own connection is the lease's one.
#[test]
fn both_recipes_work_with_a_connection_lease() {
    if !require_netns() {
        return;
    }
    let (f, s) = start_with("ssh-conn", |f| {
        f.spec.lease_seconds = 30;
        f.spec.extra_firewall = "lease = \"connection\"\n".to_owned();
    });
    let installed = std::fs::read_to_string(
        s.home
            .join(format!(".config/sesame/profiles/{PROFILE}.toml")),
    )
    .unwrap();
    assert!(
        installed.contains("\nlease = \"connection\"\n"),
        "{installed}"
    );
    let server = f.server(Family::V4);
    let proxy = f.lab.write(
        "ssh_config_proxy",
        &format!(
            "Host target\n    HostName {server}\n    User root\n    ProxyCommand sesame proxy {PROFILE} %h %p\n"
        ),
    );
    let matched = f.lab.write(
        "ssh_config_match",
        &format!("Match host {server} exec \"sesame open {PROFILE} --wait\"\n    User root\n"),
    );
    let host = server.to_string();
    for (recipe, config, target) in [
        ("ProxyCommand", &proxy, "target"),
        ("Match exec", &matched, host.as_str()),
    ] {
        let mark = f.mark();
        let cfg = config.to_string_lossy().into_owned();
        let o = ssh(
            &f.lab,
            &s,
            &["-F", &cfg, "-o", "ConnectTimeout=5", target, "echo hello"],
        );
        assert!(o.status.success(), "ssh with {recipe}: {}", text(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "hello",
            "{recipe}"
        );
        f.daemon()
            .wait_for_after(mark, &[" granted client=laptop "], Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{recipe}: no grant:\n{}", f.daemon().output()));
        assert_logged_in(&f, &s);
        // ssh's connection used the lease up: a plain ssh right after, within the lease's
        // time, is dropped.
        assert_plain_ssh_times_out(&f, &s);
    }
}
