//! Least privilege: after setup sesamed keeps only CAP_NET_RAW and CAP_NET_ADMIN, in every
//! thread; it can switch to an unprivileged user (`user = "..."`) and still work; it works
//! when started unprivileged with exactly those two capabilities, the way
//! `packaging/sesamed.service` starts it (the test reads the unit and starts sesamed through
//! `setpriv` with the unit's capability settings); without one of them it stops with an error
//! naming it. The unit itself must pass `systemd-analyze verify` and keep its sandboxing.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sesame_tests::{ClientSpec, Family, Host, SERVER_IF_CLIENT, bin, in_ci, require_netns, text};

use crate::common::Fixture;
use crate::faults::{
    expect_grant_line, launch_sesamed, sesamed_run_to_exit, start_fixture, status,
};

/// The unprivileged account the tests run sesamed as.
const NOBODY: u32 = 65_534;

/// CAP_NET_ADMIN (12) and CAP_NET_RAW (13), as /proc/PID/status shows a capability set.
const NET_ADMIN_AND_RAW: &str = "0000000000003000";
/// The shipped unit's bounding set: those two and CAP_BPF (bit 39), which sesamed uses at
/// start only (loading the eBPF capture filter) and cannot drop from the bounding set without
/// CAP_SETPCAP; with no_new_privs nothing can raise it again.
const UNIT_BOUNDING: &str = "0000008000003000";

/// The unit file.
fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/sesamed.service")
}

/// The values of `key=` in the unit (every occurrence, in order).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
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

/// A launcher that starts sesamed as `uid` the way the unit does: ambient (and inheritable)
/// capabilities, bounding set and no_new_privs as in the unit, its umask, no groups.
/// `ambient` overrides the unit's capability list (to leave one out).
fn unit_launcher(uid: u32, ambient: Option<&str>) -> Vec<OsString> {
    let unit = std::fs::read_to_string(unit_path()).expect("read packaging/sesamed.service");
    let one = |key: &str| -> String {
        let v = unit_values(&unit, key);
        assert_eq!(v.len(), 1, "{key}= appears {} times in the unit", v.len());
        v[0].clone()
    };
    let unit_ambient = one("AmbientCapabilities");
    let ambient = ambient.unwrap_or(&unit_ambient);
    let bounding = match ambient {
        a if a == unit_ambient => one("CapabilityBoundingSet"),
        a => a.to_owned(),
    };
    let umask = one("UMask");
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        format!("umask {umask} && exec \"$@\""),
        "sh".into(),
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        format!("--inh-caps={}", setpriv_caps(ambient)),
        format!("--ambient-caps={}", setpriv_caps(ambient)),
        format!("--bounding-set={}", setpriv_caps(&bounding)),
    ];
    if one("NoNewPrivileges") == "yes" {
        argv.push("--no-new-privs".into());
    }
    argv.push("--".into());
    argv.into_iter().map(OsString::from).collect()
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Prepares a fixture for a daemon running as `uid`: its key file, a state directory and a
/// directory for the control socket owned by it.
fn prepare_unprivileged(f: &mut Fixture, uid: u32) {
    chown(&f.server_key.path, uid);
    for dir in ["state", "run"] {
        let p = f.lab.path(dir);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&p, uid);
    }
    f.spec.control_socket = "run/sesamed.sock".to_owned();
}

/// The lines of /proc/PID[/task/TID]/status we check.
#[derive(Debug, PartialEq, Eq)]
struct Creds {
    uid: String,
    gid: String,
    groups: String,
    cap_inh: String,
    cap_prm: String,
    cap_eff: String,
    cap_bnd: String,
    cap_amb: String,
    no_new_privs: String,
}

fn creds(status_file: &Path) -> Creds {
    let text = std::fs::read_to_string(status_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", status_file.display()));
    let field = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no {name} in {}", status_file.display()))
    };
    Creds {
        uid: field("Uid"),
        gid: field("Gid"),
        groups: field("Groups"),
        cap_inh: field("CapInh"),
        cap_prm: field("CapPrm"),
        cap_eff: field("CapEff"),
        cap_bnd: field("CapBnd"),
        cap_amb: field("CapAmb"),
        no_new_privs: field("NoNewPrivs"),
    }
}

/// Checks every thread of `pid`: uid and gid `id` (real, effective, saved, filesystem), no
/// supplementary groups, permitted = effective = bounding = ambient = inheritable =
/// {NET_ADMIN, NET_RAW}, no_new_privs. Returns the main thread's credentials.
fn assert_least_privilege(pid: u32, id: u32, bounding: &str) -> Creds {
    let ids = format!("{id} {id} {id} {id}");
    let want = Creds {
        uid: ids.clone(),
        gid: ids,
        groups: String::new(),
        cap_inh: NET_ADMIN_AND_RAW.into(),
        cap_prm: NET_ADMIN_AND_RAW.into(),
        cap_eff: NET_ADMIN_AND_RAW.into(),
        cap_bnd: bounding.into(),
        cap_amb: NET_ADMIN_AND_RAW.into(),
        no_new_privs: "1".into(),
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list threads");
    let mut n = 0;
    for t in tasks {
        let t = t.unwrap().path();
        let got = creds(&t.join("status"));
        assert_eq!(got, want, "thread {} of sesamed (pid {pid})", t.display());
        n += 1;
    }
    assert!(n >= 1);
    creds(Path::new(&format!("/proc/{pid}/status")))
}

/// Knock, grant, connect.
fn knock_works(f: &Fixture) {
    let mark = f.mark();
    f.knock(&[]);
    expect_grant_line(f, mark, f.lab.addr(Host::Client, Family::V4));
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "after the knock the client must connect; ruleset:\n{}",
        f.lab.server_ruleset()
    );
}

/// Started as root with `user = "nobody"`: after setup sesamed runs as nobody with only
/// CAP_NET_RAW and CAP_NET_ADMIN (every thread, every set), a knock works (replay state
/// written as nobody, `nft` run with the ambient CAP_NET_ADMIN), capture reopens after the
/// interface goes down and up (CAP_NET_RAW kept), and a restart works.
#[test]
fn privilege_root_start_with_user_switches_and_keeps_two_capabilities() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("p-user");
    f.spec.extra_top = "user = \"nobody\"\n".to_owned();
    f.spec.interfaces = vec![SERVER_IF_CLIENT.to_owned()];
    f.start();
    let line = f
        .daemon()
        .expect(&["privileges dropped"], Duration::from_secs(5));
    assert!(line.contains(&format!("uid={NOBODY}")), "{line}");
    let pid = f.daemon().pid();
    let c = assert_least_privilege(pid, NOBODY, NET_ADMIN_AND_RAW);
    eprintln!("sesamed as nobody: {c:?}");

    knock_works(&f);
    let state = f.lab.path("state");
    let file = state.join("replay.journal");
    for p in [&state, &file] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (NOBODY, NOBODY),
            "owner of {}",
            p.display()
        );
    }
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    let sock = std::fs::metadata(f.lab.path("sesamed.sock")).unwrap();
    assert_eq!(sock.mode() & 0o777, 0o600, "control socket mode");
    assert_eq!(
        status(&f)["counters"]["leases_opened"],
        1,
        "status over the control socket"
    );

    // Capture reopens a packet socket as nobody.
    let mark = f.mark();
    f.lab.set_link(Host::Server, SERVER_IF_CLIENT, false);
    std::thread::sleep(Duration::from_millis(500));
    f.lab.set_link(Host::Server, SERVER_IF_CLIENT, true);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let src = format!("source={}", f.lab.v4(Host::Client));
    loop {
        let m = f.mark();
        f.knock(&[]);
        if f.daemon()
            .wait_for_after(
                m,
                &["granted client=laptop", &src],
                Duration::from_millis(500),
            )
            .is_some()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no grant after the interface came back; log:\n{}",
            f.daemon().output()
        );
    }
    assert!(
        f.daemon()
            .matching(mark, &["Operation not permitted"])
            .is_empty(),
        "{}",
        f.daemon().output()
    );
    assert_least_privilege(pid, NOBODY, NET_ADMIN_AND_RAW);

    // A reload runs as nobody: a PSK file only root can read is refused with a clear error
    // (the running configuration stays and keeps serving); owned by nobody, it is read.
    let reload = |f: &Fixture| {
        f.lab
            .sesamed(&["reload".as_ref(), "--config".as_ref(), f.config.as_os_str()])
    };
    let psk = f.lab.gen_psk("tablet");
    let tablet = f.lab.gen_key("tablet");
    let mut spec = f.spec.clone();
    let mut c = ClientSpec::new("tablet", &tablet.public);
    c.psk_file = Some(psk.clone());
    spec.clients.push(c);
    f.lab.write("sesamed.toml", &spec.to_toml());
    let o = reload(&f);
    eprintln!("reload with a root-only PSK file, as nobody: {}", text(&o));
    assert!(!o.status.success(), "{}", text(&o));
    let said = text(&o);
    assert!(
        said.contains("tablet.psk") && said.contains("Permission denied"),
        "the refusal names the file and the reason: {said}"
    );
    knock_works(&f);
    chown(&psk, NOBODY);
    let o = reload(&f);
    assert!(
        o.status.success(),
        "reload with a PSK owned by nobody: {}",
        text(&o)
    );
    assert_least_privilege(pid, NOBODY, NET_ADMIN_AND_RAW);

    // A restart as root hands the (now nobody-owned) state over again.
    f.stop_daemon();
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    assert_least_privilege(f.daemon().pid(), NOBODY, NET_ADMIN_AND_RAW);
    knock_works(&f);
}

/// Started unprivileged, as packaging/sesamed.service starts it (user nobody here, ambient
/// and bounding capabilities from the unit, no_new_privs, the unit's umask): a full knock
/// works and sesamed holds nothing more.
#[test]
fn privilege_unprivileged_start_with_the_units_capabilities_works() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("p-setpriv");
    prepare_unprivileged(&mut f, NOBODY);
    let launcher = unit_launcher(NOBODY, None);
    // The eBPF capture filter (what sesamed picks past ~250 clients) must load under the
    // unit's capabilities: CAP_BPF at start, dropped before the first packet.
    start_fixture(
        &mut f,
        |c| c,
        &launcher,
        &[("SESAMED_CAPTURE_FILTER", "ebpf")],
    );
    let pid = f.daemon().pid();
    let c = assert_least_privilege(pid, NOBODY, UNIT_BOUNDING);
    eprintln!("sesamed started by setpriv: {c:?}");
    let filter = &status(&f)["capture_filter"];
    assert_eq!(
        (filter["kind"].as_str(), filter["ebpf_loaded"].as_bool()),
        (Some("ebpf"), Some(true)),
        "under the unit's capabilities the eBPF filter loads: {filter}\n{}",
        f.daemon().output()
    );
    knock_works(&f);
    let file = f.lab.path("state/replay.journal");
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o777),
        (NOBODY, 0o600),
        "{}",
        file.display()
    );
    let sock = std::fs::metadata(f.lab.path("run/sesamed.sock")).unwrap();
    assert_eq!(
        (sock.uid(), sock.mode() & 0o777),
        (NOBODY, 0o600),
        "control socket"
    );
    assert_eq!(status(&f)["counters"]["leases_opened"], 1);
    assert_least_privilege(pid, NOBODY, UNIT_BOUNDING);
    f.stop_daemon();
    assert!(
        !f.lab.path("run/sesamed.sock").exists(),
        "the control socket is removed at exit"
    );
}

/// Started unprivileged with one of the two capabilities missing: exit status 1 and one
/// error line naming the missing capability, before anything is set up.
#[test]
fn privilege_missing_capability_is_a_clear_error() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("p-missing");
    prepare_unprivileged(&mut f, NOBODY);
    f.write();
    for (have, missing) in [
        ("CAP_NET_RAW", "CAP_NET_ADMIN"),
        ("CAP_NET_ADMIN", "CAP_NET_RAW"),
    ] {
        let launcher = unit_launcher(NOBODY, Some(have));
        let (code, lines) = sesamed_run_to_exit(&f.lab, &f.config, &launcher, &[]);
        let all = lines.join("\n");
        assert_eq!(
            code,
            Some(1),
            "without {missing}: exit status; output:\n{all}"
        );
        let errors: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("sesamed: "))
            .collect();
        assert_eq!(errors.len(), 1, "without {missing}: one error line:\n{all}");
        assert!(
            errors[0].contains(&format!("missing capability {missing}")),
            "without {missing}: {}",
            errors[0]
        );
        assert!(!all.contains("ready"), "{all}");
        let tables = f.lab.run_ok(Host::Server, "nft", &["list", "tables"]);
        assert!(
            !tables.contains("sesame"),
            "without {missing}: table created: {tables}"
        );
        eprintln!("without {missing}: {}", errors[0]);
    }
    // Both, but `user = ...` in the config (which needs root): a clear error too.
    let launcher = unit_launcher(NOBODY, None);
    let mut spec = f.spec.clone();
    spec.extra_top = "user = \"nobody\"\n".to_owned();
    let with_user = f.lab.write("with-user.toml", &spec.to_toml());
    let (code, lines) = sesamed_run_to_exit(&f.lab, &with_user, &launcher, &[]);
    let all = lines.join("\n");
    assert_eq!(
        code,
        Some(1),
        "user = without root: exit status; output:\n{all}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("sesamed: ") && l.contains("needs sesamed to start as root")),
        "user = without root:\n{all}"
    );
    // Both capabilities and no `user`: it starts.
    f.daemon = Some(launch_sesamed(&f.lab, &f.config, &launcher, &[]));
}

/// Directives the unit must keep (the sandbox, the capability bounds, the commands).
const UNIT_MUST_HAVE: &[&str] = &[
    "Type=simple",
    "ExecStartPre=/usr/sbin/sesamed check --config /etc/sesame/sesamed.toml",
    "ExecStart=/usr/sbin/sesamed run --config /etc/sesame/sesamed.toml",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "User=sesame",
    "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN CAP_BPF",
    "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN CAP_BPF",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ReadWritePaths=/var/lib/sesame",
    "StateDirectory=sesame",
    "RuntimeDirectory=sesame",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_PACKET AF_INET AF_INET6",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=bpf",
    "UMask=0077",
];

/// `systemd-analyze` is needed in CI; elsewhere its absence skips the test.
fn have_systemd_analyze() -> bool {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        other => {
            let why = match other {
                Ok(o) => text(&o),
                Err(e) => e.to_string(),
            };
            assert!(!in_ci(), "systemd-analyze is needed in CI: {why}");
            sesame_tests::skip(&format!("systemd-analyze unavailable: {why}"));
            false
        }
    }
}

/// The unit keeps its sandboxing, passes `systemd-analyze verify` (with the binary path
/// pointed at the built sesamed, which must exist for verify) and `systemd-analyze security`
/// rates it at most 2.5 ("OK").
#[test]
fn packaging_unit_is_valid_and_sandboxed() {
    let unit = std::fs::read_to_string(unit_path()).expect("read packaging/sesamed.service");
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in UNIT_MUST_HAVE {
        assert!(
            lines.contains(want),
            "packaging/sesamed.service lacks `{want}`"
        );
    }
    assert!(
        unit_values(&unit, "User").iter().all(|u| u != "root"),
        "the unit must not run sesamed as root"
    );
    if !have_systemd_analyze() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("sesame-unit-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let copy = dir.join("sesamed.service");
    let sesamed = bin("sesamed");
    std::fs::write(
        &copy,
        unit.replace("/usr/sbin/sesamed", &sesamed.to_string_lossy()),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&o)
    );
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let overall = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall line)");
    eprintln!("systemd-analyze security: {overall}");
    assert!(
        o.status.success(),
        "systemd-analyze security (threshold 2.5): {}",
        text(&o)
    );
}

/// Started as root with `user = "nobody"`, sesamed hands its state directory to nobody. That
/// account can write the directory, so it can plant links there: with protocol-1 sesamed a
/// link `state/x -> /some/root/secret` made the next start chown the secret to nobody. Now
/// an entry sesamed did not create, or a link in place of one it did, stops the start, named,
/// and nothing it points at changes owner.
#[test]
fn privilege_links_in_the_state_directory_are_refused_not_followed() {
    use std::os::unix::fs::MetadataExt;
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("p-link");
    f.spec.extra_top = "user = \"nobody\"\n".to_owned();
    f.write();
    let secret = f.lab.write_secret("root-secret", "only root reads this\n");
    let state = f.lab.path("state");
    std::fs::create_dir_all(&state).unwrap();
    for name in ["x", "replay.journal"] {
        let link = state.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let (code, lines) = crate::faults::sesamed_run_to_exit(&f.lab, &f.config, &[], &[]);
        let all = lines.join("\n");
        assert_ne!(code, Some(0), "started with a link in its state dir: {all}");
        assert!(
            all.contains(name) && (all.contains("state_dir") || all.contains("symbolic link")),
            "the error names the entry: {all}"
        );
        let meta = std::fs::metadata(&secret).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (0, 0o600),
            "the link's target changed owner or mode"
        );
        std::fs::remove_file(&link).unwrap();
    }
    // Without the links it starts and works as nobody.
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
}

/// A FIFO where a key or PSK file should be used to hang `sesamed check`, a start and a
/// reload (which stalls the whole daemon: it has one thread). Now it is refused at once.
#[test]
fn privilege_a_fifo_at_a_psk_path_is_refused_not_waited_on() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("p-fifo");
    f.start();
    let fifo = f.lab.path("laptop.psk");
    let made = std::process::Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    f.client().psk_file = Some(fifo.clone());
    f.lab.write("sesamed.toml", &f.spec.to_toml());
    let config = f.config.to_string_lossy().into_owned();
    let started = std::time::Instant::now();
    let o = f.lab.run(
        Host::Server,
        "timeout",
        &[
            "10",
            &sesame_tests::bin("sesamed").to_string_lossy(),
            "check",
            "--config",
            &config,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "sesamed check with a FIFO as PSK ({:?}): {}",
        started.elapsed(),
        sesame_tests::text(&o)
    );
    assert!(
        sesame_tests::text(&o).contains("not a regular file"),
        "{}",
        sesame_tests::text(&o)
    );
    // The running daemon refuses the reload at once and keeps serving.
    let o = f.lab.run(
        Host::Server,
        "timeout",
        &[
            "10",
            &sesame_tests::bin("sesamed").to_string_lossy(),
            "reload",
            "--config",
            &config,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", sesame_tests::text(&o));
    assert!(
        sesame_tests::text(&o).contains("not a regular file"),
        "{}",
        sesame_tests::text(&o)
    );
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
}

/// Started as root without `user`, sesamed stays uid 0: it says so, at start and in
/// `sesamed check`.
#[test]
fn privilege_running_as_root_without_user_is_warned_about() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("p-root");
    f.start();
    f.daemon().expect(
        &["running as root (uid 0) without `user`"],
        Duration::from_secs(5),
    );
    // Every thread keeps only the two capabilities, with no_new_privs: capabilities belong to
    // each thread, and a thread started before the drop (a blocking thread that ran `nft` at
    // start) kept every one of them for the whole run (review s22).
    let pid = f.daemon().pid();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let c = creds(&t.join("status"));
        assert_eq!(
            (
                c.cap_eff.as_str(),
                c.cap_bnd.as_str(),
                c.no_new_privs.as_str()
            ),
            (NET_ADMIN_AND_RAW, NET_ADMIN_AND_RAW, "1"),
            "thread {} of sesamed running as root",
            t.display()
        );
    }
    let o = f
        .lab
        .sesamed(&["check".as_ref(), "--config".as_ref(), f.config.as_os_str()]);
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("user is not set"),
        "{}",
        sesame_tests::text(&o)
    );
}
