//! The README's "Protecting ssh on a real server", run as it is written: every ```sh block of
//! that section, in order, where its first line says (`# on the server, as root` or
//! `# on the laptop`), with two substitutions only (the laptop's public key for `BASE64…` and
//! the lab server's address for `ssh.example.org`).
//!
//! The server's blocks run as root in a scratch copy of this machine: a private mount
//! namespace in which `/etc`, `/usr` and `/var` are copy-on-write overlays over the real ones
//! (the changes live in a tmpfs and vanish with the namespace) and `/run` is empty, as after a
//! boot; so `systemd-sysusers`, `useradd`, `install -o sesame …` and `/usr/sbin/sesamed` are the
//! real thing and nothing outside the namespace changes. `cargo build --release` is a stand-in
//! that finds the binaries this test was built with in `target/release/`, `systemctl` records
//! what it is asked, `ssh` connects to the server's port 22. When the README enables the unit,
//! the test starts what the installed unit says, the way systemd would: `RuntimeDirectory=`
//! and `StateDirectory=`, then `ExecStartPre=` and `ExecStart=` as `User=`/`Group=` with the
//! unit's capabilities, `NoNewPrivileges=` and `UMask=` (through setpriv, as
//! `lab/e2e/privilege.rs` does). The laptop's blocks run in the client namespace with a
//! fresh `$HOME`.
//!
//! Checked: the owners and modes the steps produce, that `sesamed check` passes as the service
//! user, that the unit's sesamed starts and hides ssh, and that the laptop's knock opens it. The
//! steps for hosts without systemd-sysusers and systemd-tmpfiles must make the same user and
//! layout. The shipped sysusers.d and tmpfiles.d files must be valid and agree with the unit and
//! the example configuration.
//!
//! On the README before these steps (its prose steps written out as the commands they name),
//! the test fails twice over: `sesamed client add laptop` refuses, the example's placeholder
//! `laptop` being there already; without that client, the layout is wrong (`/etc/sesame` root's
//! alone, 0700; the key and the configuration root's; no `sesame` user, no `/var/lib/sesame`),
//! and the unit could not start sesamed as a user that does not exist.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sesame_tests::{Family, Host, Lab, Proc, bin, in_ci, require_netns, text};

use crate::common::LOG_WAIT;

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README section these tests follow.
const SECTION: &str = "## Protecting ssh on a real server";

/// Where a block runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// On the server, as root.
    Server,
    /// On the server, as root, instead of the block before it on a host without systemd.
    ServerWithoutSystemd,
    /// On the laptop.
    Laptop,
}

/// The way sesamed is installed: step 1 has a block for each, and steps 2 to 4 (and the
/// unit's installation in step 6) are for the source alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The Debian package (`# on the server, as root, ... (from the package)`).
    Package,
    /// From source (`... (from source)`).
    Source,
}

/// A ```sh block of the section.
#[derive(Clone, Debug)]
struct Block {
    place: Place,
    /// `None`: a block of both routes.
    route: Option<Route>,
    script: String,
}

/// The ```sh blocks of the README's section, in order. Each must say where it runs.
fn readme_blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let start = readme
        .find(&format!("{SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no `{SECTION}` section"));
    let body = &readme[start + SECTION.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut blocks = Vec::new();
    let mut lines = body.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut script = String::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            script.push_str(l.get(indent..).unwrap_or(l.trim_start()));
            script.push('\n');
        }
        let first = script.lines().next().unwrap_or("");
        let route = if first.contains("(from the package)") {
            Some(Route::Package)
        } else if first.contains("(from source)") {
            Some(Route::Source)
        } else {
            None
        };
        let place = if first.starts_with("# on the laptop") {
            Place::Laptop
        } else if first.starts_with("# on the server") && first.contains("without systemd") {
            Place::ServerWithoutSystemd
        } else if first.starts_with("# on the server") {
            Place::Server
        } else {
            panic!(
                "README `{SECTION}`: a ```sh block does not say where it runs (its first line must be `# on the server, as root` or `# on the laptop`):\n{script}"
            );
        };
        blocks.push(Block {
            place,
            route,
            script,
        });
    }
    assert!(
        blocks.len() >= 6,
        "README `{SECTION}`: only {} sh blocks",
        blocks.len()
    );
    blocks
}

/// The blocks a host runs: those of `route` and of both, with systemd (the sysusers/tmpfiles
/// block) or without (the block marked so, in place of the one before it).
fn blocks_for(route: Route, with_systemd: bool) -> Vec<Block> {
    let all = readme_blocks();
    for r in [Route::Package, Route::Source] {
        assert!(
            all.iter().any(|b| b.route == Some(r)),
            "README `{SECTION}`: no block for {r:?} (`(from the package)` / `(from source)` on its first line)"
        );
    }
    let mut out: Vec<Block> = Vec::new();
    for b in all
        .into_iter()
        .filter(|b| b.route.is_none_or(|r| r == route))
    {
        match (b.place, with_systemd) {
            (Place::ServerWithoutSystemd, true) => {}
            (Place::ServerWithoutSystemd, false) => {
                let replaced = out.pop().expect("a block before the one without systemd");
                assert_eq!(replaced.place, Place::Server, "{}", replaced.script);
                out.push(Block {
                    place: Place::Server,
                    route: b.route,
                    script: b.script,
                });
            }
            _ => out.push(b),
        }
    }
    out
}

/// A private mount namespace in which `/etc`, `/usr` and `/var` are overlays whose changes
/// live in a tmpfs, and `/run` is an empty tmpfs. Kept alive by a `sleep` (the holder);
/// commands enter it with nsenter.
pub(crate) struct Scratch {
    holder: Proc,
}

impl Scratch {
    pub(crate) fn new(lab: &Lab, tag: &str) -> Scratch {
        let dir = lab.path(&format!("scratch-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        // The mounts are made by the shell that unshare starts in the new namespace, before it
        // says `ready`: nothing is mounted outside it, whatever happens.
        let script = r#"set -e
mount -t tmpfs -o mode=0700 sesame-scratch "$1"
for d in etc usr var; do
    mkdir "$1/$d.upper" "$1/$d.work"
    mount -t overlay sesame-scratch -o "lowerdir=/$d,upperdir=$1/$d.upper,workdir=$1/$d.work" "/$d"
done
mount -t tmpfs -o mode=0755 sesame-scratch /run
# A fresh host: no sesame account or files, even if this machine has them.
for f in /etc/passwd /etc/group /etc/shadow /etc/gshadow; do
    if grep -q '^sesame:' "$f" 2>/dev/null; then sed -i '/^sesame:/d' "$f"; fi
done
rm -rf /etc/sesame /var/lib/sesame /usr/sbin/sesamed /usr/bin/sesame \
    /etc/systemd/system/sesamed.service /etc/sysusers.d/sesame.conf /etc/tmpfiles.d/sesame.conf
echo ready
exec sleep 100000
"#;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&dir);
        let mut holder = Proc::spawn(&format!("scratch root [{tag}]"), cmd);
        if holder
            .wait_for(&["ready"], Duration::from_secs(10))
            .is_none()
        {
            let status = holder.exited();
            panic!(
                "cannot make the scratch root (a mount namespace with overlays over /etc, /usr and /var): {status:?}\n{}",
                holder.output()
            );
        }
        Scratch { holder }
    }

    /// `program args` inside the scratch root (and the network namespace `netns`), in
    /// directory `cwd`, with exactly the environment `env`.
    pub(crate) fn command(
        &self,
        netns: Option<&str>,
        cwd: &Path,
        env: &[(&str, OsString)],
        argv: &[OsString],
    ) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.pid()));
        if let Some(ns) = netns {
            cmd.arg(format!("--net=/run/netns/{ns}"));
        }
        cmd.arg(format!("--wdns={}", cwd.display()));
        cmd.args(["--", "env", "-i"]);
        for (k, v) in env {
            let mut kv = OsString::from(format!("{k}="));
            kv.push(v);
            cmd.arg(kv);
        }
        cmd.args(argv);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a shell command as root in the scratch root (host network namespace).
    pub(crate) fn sh(&self, script: &str) -> Output {
        let env = [("PATH", OsString::from(SYSTEM_PATH))];
        self.command(None, Path::new("/"), &env, &sh_argv(script))
            .output()
            .expect("run nsenter")
    }

    pub(crate) fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(o.status.success(), "{script}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// The PATH of a root shell on Debian.
pub(crate) const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn sh_argv(script: &str) -> Vec<OsString> {
    ["sh", "-e", "-x", "-c", script]
        .iter()
        .map(OsString::from)
        .collect()
}

/// The lab's stand-ins and directories: a "clone" whose `target/release/` holds the binaries
/// under test, `cargo`, `systemctl` and `ssh` stand-ins, and the laptop's home.
struct Tools {
    clone: PathBuf,
    fake: PathBuf,
    laptop_bin: PathBuf,
    laptop_dir: PathBuf,
    home: PathBuf,
    systemctl_log: PathBuf,
}

impl Tools {
    /// With `debs` (the two packages), the clone's `scripts/build-debs` is a stand-in that
    /// puts them in `target/debian/`, as the real one does.
    fn new(lab: &Lab, debs: Option<&crate::debian::Debs>) -> Tools {
        let clone = lab.path("clone");
        let release = clone.join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        if let Some(debs) = debs {
            let scripts = clone.join("scripts");
            std::fs::create_dir_all(&scripts).unwrap();
            let p = scripts.join("build-debs");
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\n[ $# -eq 0 ] || {{ echo \"build-debs stand-in: unexpected: $*\" >&2; exit 1; }}\nmkdir -p target/debian && cp '{}' '{}' target/debian/\n",
                    debs.sesamed.display(),
                    debs.sesame.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for dir in ["packaging", "examples"] {
            std::os::unix::fs::symlink(repo().join(dir), clone.join(dir)).unwrap();
        }
        for name in ["sesame", "sesamed"] {
            std::os::unix::fs::symlink(bin(name), release.join(name)).unwrap();
        }
        let fake = lab.path("fake-bin");
        std::fs::create_dir_all(&fake).unwrap();
        let systemctl_log = lab.path("systemctl.log");
        let script = |name: &str, body: String| {
            let p = fake.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // The binaries are built already (target/release/ holds them).
        script(
            "cargo",
            "[ \"$*\" = \"build --release\" ] || { echo \"cargo stand-in: unexpected: $*\" >&2; exit 1; }\n".into(),
        );
        script(
            "systemctl",
            format!("echo \"$*\" >> '{}'\n", systemctl_log.display()),
        );
        script(
            "ssh",
            format!(
                "[ $# -eq 1 ] || {{ echo \"ssh stand-in: one host, not: $*\" >&2; exit 1; }}\nexec '{}' connect \"$1:22\" --timeout-ms 3000\n",
                bin("sesame-netprobe").display()
            ),
        );
        let laptop_bin = lab.path("laptop-bin");
        std::fs::create_dir_all(&laptop_bin).unwrap();
        std::os::unix::fs::symlink(bin("sesame"), laptop_bin.join("sesame")).unwrap();
        let laptop_dir = lab.path("laptop");
        let home = lab.path("home");
        for d in [&laptop_dir, &home] {
            std::fs::create_dir_all(d).unwrap();
        }
        Tools {
            clone,
            fake,
            laptop_bin,
            laptop_dir,
            home,
            systemctl_log,
        }
    }

    fn systemctl_calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.systemctl_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs a server block as root in the scratch root, in the clone, in `netns`.
    fn run_server(&self, scratch: &Scratch, netns: Option<&str>, script: &str) -> Output {
        let path = format!("{}:{SYSTEM_PATH}", self.fake.display());
        let env = [
            ("PATH", OsString::from(path)),
            ("HOME", OsString::from("/root")),
            ("LC_ALL", OsString::from("C.UTF-8")),
        ];
        scratch
            .command(netns, &self.clone, &env, &sh_argv(script))
            .output()
            .expect("run nsenter")
    }

    /// Runs a laptop block in the client namespace (`lab`) or, without a lab, here.
    fn run_laptop(&self, lab: Option<&Lab>, script: &str) -> Output {
        let path = format!(
            "{}:{}:{SYSTEM_PATH}",
            self.laptop_bin.display(),
            self.fake.display()
        );
        let mut cmd = match lab {
            Some(lab) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", lab.ns(Host::Client), "env"]);
                c
            }
            None => Command::new("env"),
        };
        cmd.arg("-i")
            .arg(format!("PATH={path}"))
            .arg(format!("HOME={}", self.home.display()))
            .arg("LC_ALL=C.UTF-8")
            .args(sh_argv(script))
            .current_dir(&self.laptop_dir)
            .stdin(Stdio::null());
        cmd.output().expect("run the laptop's block")
    }
}

/// The two substitutions: the laptop's public key and the lab server's address.
fn substitute(script: &str, public_key: Option<&str>, host: &str) -> String {
    let s = script.replace("ssh.example.org", host);
    if s.contains("BASE64…") {
        let key = public_key.expect("the laptop's public key, before the block that adds it");
        return s.replace("BASE64…", key);
    }
    s
}

/// What the steps must leave: path, owner, group, mode, type.
const LAYOUT: &[(&str, &str, &str, u32, &str)] = &[
    ("/usr/sbin/sesamed", "root", "root", 0o755, "regular file"),
    ("/etc/sesame", "root", "sesame", 0o750, "directory"),
    (
        "/etc/sesame/server.key",
        "sesame",
        "sesame",
        0o600,
        "regular file",
    ),
    (
        "/etc/sesame/sesamed.toml",
        "root",
        "sesame",
        0o640,
        "regular file",
    ),
    ("/var/lib/sesame", "sesame", "sesame", 0o700, "directory"),
];

/// Checks [`LAYOUT`] (and `extra`) in the scratch root, and the `sesame` account: a system
/// account with no login shell, its home the state directory, its group `sesame`.
/// The client: the steps from source install it on the server too.
pub(crate) const CLIENT: (&str, &str, &str, u32, &str) =
    ("/usr/bin/sesame", "root", "root", 0o755, "regular file");

pub(crate) fn assert_layout(
    scratch: &Scratch,
    extra: &[(&str, &str, &str, u32, &str)],
    what: &str,
) {
    let mut wrong = Vec::new();
    for (path, user, group, mode, kind) in LAYOUT.iter().chain(extra) {
        let o = scratch.sh(&format!("stat -c '%U %G %a %F' {path}"));
        let got = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let want = format!("{user} {group} {mode:o} {kind}");
        if !o.status.success() || got != want {
            wrong.push(format!("{path}: want `{want}`, got `{got}` {}", text(&o)));
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: a wrong layout:\n{}",
        wrong.join("\n")
    );
    let passwd = scratch.sh_ok("getent passwd sesame").trim().to_owned();
    let f: Vec<&str> = passwd.split(':').collect();
    assert_eq!(f.len(), 7, "{passwd}");
    let uid: u32 = f[2].parse().unwrap();
    assert!(
        uid > 0 && uid < 1000,
        "{what}: not a system account: {passwd}"
    );
    assert_eq!(
        (f[5], f[6]),
        ("/var/lib/sesame", "/usr/sbin/nologin"),
        "{what}: home and shell: {passwd}"
    );
    let group = scratch.sh_ok("id -gn sesame").trim().to_owned();
    assert_eq!(group, "sesame", "{what}: primary group");
}

/// The values of `key=` in a unit's text.
pub(crate) fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

pub(crate) fn unit_one(unit: &str, key: &str) -> String {
    let v = unit_values(unit, key);
    assert_eq!(v.len(), 1, "{key}= appears {} times in the unit", v.len());
    v[0].clone()
}

/// `CAP_NET_RAW CAP_NET_ADMIN` → `-all,+net_raw,+net_admin` (setpriv's form).
fn setpriv_caps(list: &str) -> String {
    let mut out = String::from("-all");
    for cap in list.split_whitespace() {
        let name = cap.strip_prefix("CAP_").unwrap_or(cap).to_ascii_lowercase();
        out.push_str(",+");
        out.push_str(&name);
    }
    out
}

/// What systemd does for `systemctl start` of the installed unit (in the scratch root and the
/// server's network namespace): the unit systemd would load (the admin's in /etc first, else
/// the package's), the runtime and state directories for `User=`, then `ExecStartPre=` (it
/// must succeed) and `ExecStart=` as that user with the unit's capabilities, no_new_privs and
/// umask. Returns the running sesamed once it is ready.
pub(crate) fn start_unit(scratch: &Scratch, lab: &Lab) -> Proc {
    let unit = scratch.sh_ok(
        "for u in /etc/systemd/system/sesamed.service /usr/lib/systemd/system/sesamed.service; do if [ -e $u ]; then cat $u; exit; fi; done; exit 1",
    );
    let user = unit_one(&unit, "User");
    let group = unit_one(&unit, "Group");
    for (dir, parent) in [("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib")] {
        let name = unit_one(&unit, dir);
        let mode = unit_one(&unit, &format!("{dir}Mode"));
        scratch.sh_ok(&format!(
            "install -d -o {user} -g {group} -m {mode} {parent}/{name} && chown {user}:{group} {parent}/{name}"
        ));
    }
    let ambient = unit_one(&unit, "AmbientCapabilities");
    let bounding = unit_one(&unit, "CapabilityBoundingSet");
    let mut launcher: Vec<OsString> = vec![
        "sh".into(),
        "-c".into(),
        format!("umask {} && exec \"$@\"", unit_one(&unit, "UMask")).into(),
        "sh".into(),
        "setpriv".into(),
        format!("--reuid={user}").into(),
        format!("--regid={group}").into(),
        "--init-groups".into(),
        format!("--inh-caps={}", setpriv_caps(&ambient)).into(),
        format!("--ambient-caps={}", setpriv_caps(&ambient)).into(),
        format!("--bounding-set={}", setpriv_caps(&bounding)).into(),
    ];
    if unit_one(&unit, "NoNewPrivileges") == "yes" {
        launcher.push("--no-new-privs".into());
    }
    launcher.push("--".into());
    let mut env: Vec<(&str, OsString)> = vec![
        ("PATH", OsString::from(SYSTEM_PATH)),
        ("NO_COLOR", OsString::from("1")),
    ];
    let environment = unit_values(&unit, "Environment");
    let pairs: Vec<(String, String)> = environment
        .iter()
        .flat_map(|e| e.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for (k, v) in &pairs {
        env.push((k.as_str(), OsString::from(v)));
    }
    let argv = |exec: &str| -> Vec<OsString> {
        let mut a = launcher.clone();
        a.extend(exec.split_whitespace().map(OsString::from));
        a
    };
    let server_ns = lab.ns(Host::Server);
    for pre in unit_values(&unit, "ExecStartPre") {
        let o = scratch
            .command(Some(server_ns), Path::new("/"), &env, &argv(&pre))
            .output()
            .expect("run ExecStartPre");
        eprintln!("ExecStartPre={pre}: {}", text(&o));
        assert!(
            o.status.success(),
            "the unit's ExecStartPre={pre} fails as {user}: {}",
            text(&o)
        );
    }
    let start = unit_one(&unit, "ExecStart");
    let mut cmd = scratch.command(Some(server_ns), Path::new("/"), &env, &argv(&start));
    cmd.stdin(Stdio::null());
    let mut p = Proc::spawn(&format!("sesamed (unit) [{}]", lab.tag), cmd);
    if p.wait_for(&["ready"], Duration::from_secs(15)).is_none() {
        let status = p.exited();
        panic!(
            "the unit's ExecStart={start} did not get ready as {user} ({status:?}):\n{}",
            p.output()
        );
    }
    p
}

/// On a fresh root: the README's steps, in order, as written, on the server (root, scratch
/// root) and the laptop; the layout they leave; `sesamed check` as the service user; the unit
/// started as systemd would; ssh hidden; the laptop's `sesame open --wait && ssh` gets in.
#[test]
fn install_the_readme_steps_work_as_written_on_a_fresh_host() {
    if !require_netns() {
        return;
    }
    let lab = Lab::new("install");
    let tools = Tools::new(&lab, None);
    readme_steps_on_a_fresh_host(&lab, &tools, Route::Source);
}

/// The same from the Debian package: step 1's package block (`scripts/build-debs` is a
/// stand-in that copies the packages scripts/test built, `apt-get install` is real, in the
/// scratch root) and then the steps of both routes; the package, not the steps for the
/// source, must leave the user, the directories, the key and the configuration that the
/// laptop's knock needs, and its unit (in /usr/lib) is the one started.
#[test]
fn install_from_the_package_the_readme_steps_work_as_written() {
    if !require_netns() {
        return;
    }
    let Some(debs) = crate::debian::debs() else {
        return;
    };
    let lab = Lab::new("install-deb");
    let tools = Tools::new(&lab, Some(&debs));
    readme_steps_on_a_fresh_host(&lab, &tools, Route::Package);
}

fn readme_steps_on_a_fresh_host(lab: &Lab, tools: &Tools, route: Route) {
    let scratch = Scratch::new(lab, "systemd");
    let unit_file = match route {
        Route::Source => "/etc/systemd/system/sesamed.service",
        Route::Package => "/usr/lib/systemd/system/sesamed.service",
    };
    let server = lab.addr(Host::Server, Family::V4);
    let svc = std::net::SocketAddr::new(server, 22);
    let _service = lab.serve(&[svc]);
    let mut daemon: Option<Proc> = None;
    let mut public_key: Option<String> = None;
    let mut checked = false;
    let mut knocked = false;
    for block in blocks_for(route, true) {
        let script = substitute(&block.script, public_key.as_deref(), &server.to_string());
        match block.place {
            Place::Laptop => {
                // The profile the server made is copied to the laptop.
                let exported = tools.clone.join("laptop.toml");
                if script.contains("laptop.toml") && exported.exists() {
                    std::fs::copy(&exported, tools.laptop_dir.join("laptop.toml")).unwrap();
                }
                if script.contains("sesame open") {
                    let d = daemon
                        .as_ref()
                        .expect("the README knocks before the unit is enabled");
                    assert!(
                        !lab.connects(Host::Client, svc, 800),
                        "ssh answers before the knock; ruleset:\n{}",
                        lab.server_ruleset()
                    );
                    let mark = d.mark();
                    let o = tools.run_laptop(Some(lab), &script);
                    assert!(
                        o.status.success(),
                        "the laptop's block failed:\n{script}\n{}\nsesamed:\n{}",
                        text(&o),
                        d.output()
                    );
                    let src = format!("source={}", lab.addr(Host::Client, Family::V4));
                    d.expect_after(mark, &["granted client=laptop", &src], LOG_WAIT);
                    knocked = true;
                    continue;
                }
                let o = tools.run_laptop(Some(lab), &script);
                assert!(
                    o.status.success(),
                    "the laptop's block failed:\n{script}\n{}",
                    text(&o)
                );
                if script.contains("sesame pubkey") {
                    let out = String::from_utf8_lossy(&o.stdout);
                    let key = out.lines().last().unwrap_or("").trim().to_owned();
                    assert_eq!(key.len(), 44, "no public key printed: {}", text(&o));
                    let file = tools.home.join(".config/sesame/laptop.key");
                    let mode = std::fs::metadata(&file)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                        .permissions()
                        .mode();
                    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
                    public_key = Some(key);
                }
            }
            Place::Server | Place::ServerWithoutSystemd => {
                let calls = tools.systemctl_calls().len();
                let o = tools.run_server(&scratch, Some(lab.ns(Host::Server)), &script);
                assert!(
                    o.status.success(),
                    "a server block of the README fails as written:\n{script}\n{}",
                    text(&o)
                );
                if script.contains("sesamed check") {
                    let out = String::from_utf8_lossy(&o.stdout);
                    assert!(
                        out.contains(": ok (1 client"),
                        "sesamed check did not say ok for the one client: {}",
                        text(&o)
                    );
                    checked = true;
                }
                let new: Vec<String> = tools.systemctl_calls()[calls..].to_vec();
                if new.iter().any(|c| c == "enable --now sesamed") {
                    let calls = tools.systemctl_calls();
                    assert!(
                        calls
                            .iter()
                            .all(|c| c == "daemon-reload" || c == "enable --now sesamed"),
                        "systemctl calls: {calls:?}"
                    );
                    let unit = (unit_file, "root", "root", 0o644, "regular file");
                    let extra = match route {
                        Route::Source => vec![unit, CLIENT],
                        Route::Package => vec![unit],
                    };
                    assert_layout(&scratch, &extra, &format!("with systemd, {route:?}"));
                    daemon = Some(start_unit(&scratch, lab));
                }
            }
        }
    }
    assert!(checked, "the README never runs sesamed check");
    assert!(daemon.is_some(), "the README never enables the unit");
    assert!(knocked, "the README never knocks");
    // sesamed ran as the service user: its replay state is the user's; root reads its status.
    let journal = scratch.sh_ok("stat -c '%U %a' /var/lib/sesame/replay.journal");
    assert_eq!(journal.trim(), "sesame 600", "replay.journal");
    let status = scratch.sh_ok("sesamed status --json");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["counters"]["leases_opened"], 1, "{status}");
    drop(daemon);
}

/// A host without systemd-sysusers and systemd-tmpfiles: the README's other block makes the
/// same user and the same owners and modes, and `sesamed check` passes as that user.
#[test]
fn install_without_systemd_tools_gives_the_same_layout() {
    if !require_netns() {
        return;
    }
    let lab = Lab::new("install-nosd");
    let tools = Tools::new(&lab, None);
    let scratch = Scratch::new(&lab, "plain");
    let mut public_key: Option<String> = None;
    let mut checked = false;
    for block in blocks_for(Route::Source, false) {
        if block.script.contains("systemctl") || block.script.contains("sesame open") {
            break;
        }
        assert!(
            !block.script.contains("systemd-sysusers")
                && !block.script.contains("systemd-tmpfiles"),
            "without systemd, a block still runs systemd tools:\n{}",
            block.script
        );
        let script = substitute(&block.script, public_key.as_deref(), "198.18.0.1");
        let o = match block.place {
            Place::Laptop => tools.run_laptop(None, &script),
            _ => tools.run_server(&scratch, None, &script),
        };
        assert!(
            o.status.success(),
            "a README block fails as written (without systemd):\n{script}\n{}",
            text(&o)
        );
        if script.contains("sesame pubkey") {
            let out = String::from_utf8_lossy(&o.stdout);
            public_key = Some(out.lines().last().unwrap_or("").trim().to_owned());
        }
        if script.contains("sesamed check") {
            assert!(
                String::from_utf8_lossy(&o.stdout).contains(": ok (1 client"),
                "{}",
                text(&o)
            );
            checked = true;
        }
    }
    assert!(checked, "the README never runs sesamed check");
    assert_layout(&scratch, &[CLIENT], "without systemd");
}

/// The fields of the non-comment lines of a sysusers.d or tmpfiles.d file (quoted fields kept
/// whole).
fn config_lines(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut fields = Vec::new();
            let mut rest = l;
            while !rest.is_empty() {
                let (field, after) = if let Some(r) = rest.strip_prefix('"') {
                    let end = r.find('"').expect("closing quote");
                    (&r[..end], &r[end + 1..])
                } else {
                    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                    (&rest[..end], &rest[end..])
                };
                fields.push(field.to_owned());
                rest = after.trim_start();
            }
            fields
        })
        .collect()
}

/// packaging/sysusers.d/sesame.conf and packaging/tmpfiles.d/sesame.conf agree with the unit
/// (its User=, Group=, StateDirectoryMode=) and the example configuration (the directories of
/// its files); as root, systemd-sysusers and systemd-tmpfiles apply them to an empty root
/// without a complaint and make what they say.
#[test]
fn install_packaging_sysusers_and_tmpfiles_are_valid() {
    let pkg = repo().join("packaging");
    let read = |p: &str| {
        std::fs::read_to_string(pkg.join(p)).unwrap_or_else(|e| panic!("packaging/{p}: {e}"))
    };
    let unit = read("sesamed.service");
    let user = unit_one(&unit, "User");
    let group = unit_one(&unit, "Group");
    let state_mode = unit_one(&unit, "StateDirectoryMode");
    let example = sesame_server::config::Config::parse(
        &std::fs::read_to_string(repo().join("examples/sesamed.toml")).unwrap(),
        Path::new(sesame_server::config::DEFAULT_CONFIG),
    )
    .expect("examples/sesamed.toml parses");
    let key_dir = example.private_key_file.parent().unwrap().to_owned();
    let state_dir = example.state_dir.clone();
    assert!(
        example.user.is_none(),
        "the unit starts sesamed as {user}: the example must not set user"
    );

    let sysusers = config_lines(&read("sysusers.d/sesame.conf"));
    assert_eq!(sysusers.len(), 1, "one line: {sysusers:?}");
    let u = &sysusers[0];
    assert_eq!(u.len(), 6, "{u:?}");
    assert_eq!(
        (u[0].as_str(), u[1].as_str()),
        ("u", user.as_str()),
        "{u:?}"
    );
    assert_eq!(user, group, "sysusers makes a group of the user's name");
    assert_eq!(Path::new(&u[4]), state_dir, "home: the state directory");
    assert_eq!(u[5], "/usr/sbin/nologin");

    let tmpfiles = config_lines(&read("tmpfiles.d/sesame.conf"));
    let entry = |path: &Path| -> Vec<String> {
        tmpfiles
            .iter()
            .find(|l| l.len() >= 5 && Path::new(&l[1]) == path)
            .unwrap_or_else(|| {
                panic!(
                    "tmpfiles.d has no line for {}: {tmpfiles:?}",
                    path.display()
                )
            })
            .clone()
    };
    let keys = entry(&key_dir);
    assert_eq!(
        keys[..5],
        ["d", &key_dir.to_string_lossy(), "0750", "root", &group],
        "{keys:?}"
    );
    let config_dir = Path::new(sesame_server::config::DEFAULT_CONFIG)
        .parent()
        .unwrap();
    assert_eq!(config_dir, key_dir, "the configuration lives with the keys");
    let state = entry(&state_dir);
    assert_eq!(
        state[..5],
        [
            "d",
            &state_dir.to_string_lossy(),
            &state_mode,
            &user,
            &group
        ],
        "{state:?}"
    );

    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["systemd-sysusers", "systemd-tmpfiles"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        assert!(
            !in_ci(),
            "CI needs root and systemd-sysusers/systemd-tmpfiles"
        );
        sesame_tests::skip("applying the files needs root, systemd-sysusers and systemd-tmpfiles");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("sesame-install-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    for (tool, file, extra) in [
        ("systemd-sysusers", "sysusers.d/sesame.conf", None),
        (
            "systemd-tmpfiles",
            "tmpfiles.d/sesame.conf",
            Some("--create"),
        ),
    ] {
        let mut cmd = Command::new(tool);
        cmd.arg(format!("--root={}", dir.display()));
        if let Some(e) = extra {
            cmd.arg(e);
        }
        let o = cmd.arg(pkg.join(file)).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let complaints: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("Creating "))
            .collect();
        assert!(
            o.status.success() && complaints.is_empty(),
            "{tool} packaging/{file}: {}",
            text(&o)
        );
    }
    let passwd = std::fs::read_to_string(dir.join("etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("no {user} in {passwd}"));
    let f: Vec<&str> = line.split(':').collect();
    let (uid, gid): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());
    use std::os::unix::fs::MetadataExt;
    for (path, want) in [(&key_dir, (0, gid, 0o750)), (&state_dir, (uid, gid, 0o700))] {
        let p = dir.join(path.strip_prefix("/").unwrap());
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(m.is_dir());
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            want,
            "{}",
            path.display()
        );
    }
}
