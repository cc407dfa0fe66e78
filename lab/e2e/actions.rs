//! Server actions (issue 15) end to end: `sesame run PROFILE ACTION [ARG]` in the client's
//! namespace, `sesamed` with `[[action]]`s in the server's, and a real program as the action
//! (`sesame-actprobe`, lab/bin/actprobe.rs), which appends what it ran as (argv, uid, gid,
//! groups, process group, directory, environment) to a file in the server's lab directory.
//!
//! What must hold: an allowed action runs once, with its argv's placeholders replaced, as the
//! configured unprivileged user, in a process group of its own, with nothing of sesamed's
//! environment; a client not allowed it, an argument its rule refuses, a replay of the captured
//! knock (from the client's address and from another), a second knock inside the cooldown and a
//! knock from another address than the one bound in its payload all run nothing, each logged
//! with its reason; `sesamed status` shows the last run; an action that hangs is killed (its
//! whole process group) at its timeout.
//!
//! Each refusal is checked by the mark file (nothing more appended) as well as by the log line,
//! so each would fail with its defence removed: the replays and the other-address knocks go to
//! an action without a cooldown (the cooldown cannot hide them), and the cooldown is checked on
//! an action that nothing else runs.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use sesame_tests::{CLIENT_IF, ClientSpec, Family, Host, bin, pcap, require_netns, text};

use crate::common::{Fixture, LOG_WAIT, SETTLE};
use crate::operator::sesamed_ok;

/// The argument rule of the `record` action.
const RULE: &str = "^[a-z0-9-]{1,16}$";
/// The timeout of the `hang` action.
const HANG_TIMEOUT_MS: u64 = 1500;
/// The cooldown of the `door` action (short: the held-back knock test waits it out).
const DOOR_COOLDOWN_MS: u64 = 1000;
/// The link from the client to the attacker in the held-back knock test, at each end.
const WIFI_CLIENT_IF: &str = "c-wifi";
/// See [`WIFI_CLIENT_IF`].
const WIFI_ATTACKER_IF: &str = "a-wifi";

/// A deployment with actions: `laptop` may run `record`, `once`, `hang` and `door`; `phone`
/// may run none; `tablet` may run `record` and open other addresses than its own
/// (`allow_other_ip = true`).
struct Actions {
    f: Fixture,
    /// Where the actions write their marks (mode 0777: they run as `nobody`).
    marks: PathBuf,
    phone: PathBuf,
    tablet: PathBuf,
}

/// The uid and gid of `nobody` here (the account the actions run as).
fn nobody() -> (u64, u64) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody")).then(|| {
                (
                    f[2].parse().expect("uid is a number"),
                    f[3].parse().expect("gid is a number"),
                )
            })
        })
        .expect("an account named nobody")
}

impl Actions {
    fn start(tag: &str) -> Actions {
        let mut f = Fixture::new(tag);
        // Replays must arrive while the knock's step is still in the window.
        f.spec.knock.step_seconds = 60;
        // The probe, where `nobody` can run it (the build directory may be private in CI), and
        // a directory it can write its marks to.
        let dir = f.lab.path("actions");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let probe = dir.join("sesame-actprobe");
        std::fs::copy(bin("sesame-actprobe"), &probe).unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(f.lab.path(""), std::fs::Permissions::from_mode(0o755)).unwrap();
        let marks = f.lab.path("marks");
        std::fs::create_dir_all(&marks).unwrap();
        std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let probe = probe.to_string_lossy().into_owned();
        let mark = |name: &str| marks.join(name).to_string_lossy().into_owned();
        let list = |words: &[&str]| {
            let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let record = list(&[
            &probe,
            "record",
            &mark("record.json"),
            "{client}",
            "--from={source}",
            "{argument}",
            "two words",
            "$(id) ; {unknown",
        ]);
        let once = list(&[&probe, "record", &mark("once.json"), "{client}"]);
        let hang = list(&[&probe, "hang", &mark("hang.json")]);
        let door = list(&[&probe, "record", &mark("door.json"), "{client}"]);
        let actions = format!(
            "\n[[action]]\nname = \"record\"\ncommand = {record}\nuser = \"nobody\"\nargument = {RULE:?}\ncooldown_ms = 0\nmax_concurrent = 4\ntimeout_ms = 10000\n\
             \n[[action]]\nname = \"once\"\ncommand = {once}\ncooldown_ms = 600000\n\
             \n[[action]]\nname = \"hang\"\ncommand = {hang}\ntimeout_ms = {HANG_TIMEOUT_MS}\ncooldown_ms = 0\n\
             \n[[action]]\nname = \"door\"\ncommand = {door}\ncooldown_ms = {DOOR_COOLDOWN_MS}\n"
        );
        f.client().extra = "actions = [\"record\", \"once\", \"hang\", \"door\"]\n".to_owned();
        let phone = f.lab.gen_key("phone");
        f.spec.clients.push(ClientSpec::new("phone", &phone.public));
        let tablet = f.lab.gen_key("tablet");
        let mut t = ClientSpec::new("tablet", &tablet.public);
        t.allow_other_ip = true;
        // The [[action]] tables follow the last client's keys.
        t.extra = format!("actions = [\"record\"]\n{actions}");
        f.spec.clients.push(t);
        f.start();
        // The daemon's own `ready` line, after which its capture sockets are open (the Lab's
        // wait takes any line holding "ready", as the runner's start line once did).
        f.daemon()
            .expect_after(0, &["sesame_server::daemon: ready "], LOG_WAIT);
        let phone = f.write_profile("phone", Family::V4, &phone.path, |_| {});
        let tablet = f.write_profile("tablet", Family::V4, &tablet.path, |_| {});
        Actions {
            f,
            marks,
            phone,
            tablet,
        }
    }

    /// `sesame run PROFILE ARGS` from the client's namespace.
    fn run(&self, profile: &Path, args: &[&str]) -> Output {
        let p = profile.to_string_lossy().into_owned();
        let mut all = vec!["run", p.as_str()];
        all.extend_from_slice(args);
        self.f.lab.sesame(Host::Client, &all)
    }

    /// Like [`Actions::run`]; it must exit 0.
    fn run_ok(&self, profile: &Path, args: &[&str]) -> String {
        let o = self.run(profile, args);
        assert!(o.status.success(), "sesame run {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The marks an action's runs left.
    fn marks(&self, file: &str) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(self.marks.join(file)) {
            Ok(t) => t
                .lines()
                .map(|l| serde_json::from_str(l).expect("a mark is JSON"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn client_addr(&self) -> IpAddr {
        self.f.lab.addr(Host::Client, Family::V4)
    }

    /// Waits for a rejection of `source`'s knock with `reason` after `mark`.
    fn expect_reject(&self, mark: usize, source: IpAddr, reason: &str, what: &str) -> String {
        let src = format!("source={source}");
        let why = format!("reason={reason}");
        self.f
            .daemon()
            .wait_for_after(mark, &["rejected", &src, &why], LOG_WAIT)
            .unwrap_or_else(|| {
                panic!(
                    "{what}: no `rejected {src} {why}` line; log since:\n{}",
                    self.f.daemon().lines()[mark..].join("\n")
                )
            })
    }

    /// Panics if an action started after `mark`, or `file` holds other than `n` marks.
    fn assert_nothing_ran(&self, mark: usize, file: &str, n: usize, what: &str) {
        std::thread::sleep(SETTLE);
        let started = self.f.daemon().matching(mark, &["action started"]);
        assert!(started.is_empty(), "{what}: an action started: {started:?}");
        let marks = self.marks(file);
        assert_eq!(marks.len(), n, "{what}: the action ran: {marks:#?}");
    }
}

#[test]
fn an_allowed_action_runs_once_and_every_refusal_runs_nothing() {
    if !require_netns() {
        return;
    }
    let a = Actions::start("actions");
    let f = &a.f;
    let me = a.client_addr();
    let (uid, gid) = nobody();

    // 1. The allowed action, with an argument, captured for the replays below.
    let cap = f.lab.capture(Host::Client, CLIENT_IF, "run", "udp or tcp");
    let mark = f.mark();
    let out = a.run_ok(&f.profile, &["record", "nas-1"]);
    assert!(
        out.contains("sent action 'record' with argument 'nas-1' to ")
            && out.contains(&format!("bound to {me} ")),
        "{out}"
    );
    assert!(out.contains("sesamed status"), "how to check: {out}");
    let started = f.daemon().expect_after(
        mark,
        &[
            "action started",
            "client=laptop",
            &format!("source={me}"),
            "action=record",
            "user=nobody",
        ],
        LOG_WAIT,
    );
    assert!(
        started.contains("nas-1"),
        "the argument is logged: {started}"
    );
    let finished = f.daemon().expect_after(
        mark,
        &[
            "action finished",
            "client=laptop",
            &format!("source={me}"),
            "action=record",
            "code=0",
        ],
        LOG_WAIT,
    );
    assert!(finished.contains("ms="), "{finished}");
    let packets = cap.stop();
    let server = f.server(Family::V4);
    let payloads = packets
        .iter()
        .filter(|p| p.dst == server)
        .filter(|p| matches!(&p.l4, pcap::L4::Udp { payload, .. } if sesame_proto::wire::is_payload_len(payload.len())))
        .count();
    assert_eq!(payloads, 1, "one payload captured: {packets:#?}");
    // An action alone opens nothing.
    assert!(
        !f.connects(Host::Client, Family::V4, 22),
        "a knock for an action opened tcp/22; ruleset:\n{}",
        f.lab.server_ruleset()
    );

    let marks = a.marks("record.json");
    assert_eq!(marks.len(), 1, "one run: {marks:#?}");
    let m = &marks[0];
    let file = a.marks.join("record.json").to_string_lossy().into_owned();
    assert_eq!(
        m["argv"],
        serde_json::json!([
            "record",
            file,
            "laptop",
            format!("--from={me}"),
            "nas-1",
            "two words",
            "$(id) ; {unknown",
        ]),
        "the argv, placeholders replaced in place, nothing split or interpreted"
    );
    for (key, want) in [("uid", uid), ("euid", uid), ("gid", gid), ("egid", gid)] {
        assert_eq!(m[key], want, "{key}: {m}");
    }
    assert_eq!(
        m["groups"],
        serde_json::json!([]),
        "no supplementary groups: {m}"
    );
    assert_eq!(m["pgid"], m["pid"], "a process group of its own: {m}");
    assert_eq!(m["cwd"], "/", "{m}");
    assert_eq!(
        m["env"],
        serde_json::json!({
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SESAME_ACTION": "record",
            "SESAME_CLIENT": "laptop",
            "SESAME_SOURCE": me.to_string(),
            "SESAME_ARGUMENT": "nas-1",
        }),
        "only these variables, nothing of sesamed's environment"
    );

    // 2. `sesamed status` shows the last run.
    let status: serde_json::Value =
        serde_json::from_str(&sesamed_ok(f, &["status", "--json"])).expect("status is JSON");
    let record = status["actions"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == "record"))
        .unwrap_or_else(|| panic!("no record action in {status}"));
    assert_eq!(record["last_client"], "laptop", "{record}");
    assert_eq!(record["last_source"], me.to_string(), "{record}");
    assert_eq!(record["last_outcome"], "exited", "{record}");
    assert_eq!(record["last_code"], 0, "{record}");
    assert_eq!(record["user"], "nobody", "{record}");
    let human = sesamed_ok(f, &["status"]);
    let line = human
        .lines()
        .find(|l| l.trim_start().starts_with("record "))
        .unwrap_or_else(|| panic!("no line for record in:\n{human}"));
    assert!(
        line.contains("as nobody") && line.contains(&format!("for laptop from {me}")),
        "{line}"
    );

    // 3. The captured knock replayed, from the client's address and from the attacker's: the
    //    action has no cooldown, so only the replay defence stands between them and a run.
    for host in [Host::Client, Host::Attacker] {
        let mark = f.mark();
        let o = f.lab.netprobe(
            host,
            &[
                "replay".to_owned(),
                f.lab.path("run.pcap").to_string_lossy().into_owned(),
                server.to_string(),
            ],
        );
        assert!(o.status.success(), "replay: {}", text(&o));
        a.assert_nothing_ran(mark, "record.json", 1, &format!("a replay from {host:?}"));
        let source = f.lab.addr(host, Family::V4);
        let src = format!("source={source}");
        let line = f
            .daemon()
            .wait_for_after(mark, &["rejected", &src], LOG_WAIT)
            .unwrap_or_else(|| panic!("the replay from {host:?} was not refused"));
        if host == Host::Client {
            assert!(line.contains("reason=replay"), "{line}");
        }
    }

    // 4. A client not allowed the action.
    let mark = f.mark();
    a.run_ok(&a.phone, &["record", "nas-1"]);
    a.assert_nothing_ran(mark, "record.json", 1, "a client not allowed the action");
    let line = a.expect_reject(mark, me, "action_not_allowed", "phone runs record");
    assert!(line.contains("client=phone"), "{line}");

    // 5. An action that does not exist.
    let mark = f.mark();
    a.run_ok(&f.profile, &["nosuch"]);
    a.assert_nothing_ran(mark, "record.json", 1, "an unknown action");
    a.expect_reject(mark, me, "action_not_allowed", "an unknown action");

    // 6. Arguments the action's rule refuses (valid on the wire): upper case, too long,
    //    missing; and one for an action that takes none.
    for (action, args, what) in [
        ("record", &["NAS-1"][..], "an argument outside the class"),
        (
            "record",
            &["a-very-long-argument"][..],
            "an argument too long",
        ),
        ("record", &[][..], "a missing argument"),
        (
            "once",
            &["x"][..],
            "an argument for an action that takes none",
        ),
    ] {
        let mark = f.mark();
        let mut all = vec![action];
        all.extend_from_slice(args);
        a.run_ok(&f.profile, &all);
        a.assert_nothing_ran(mark, "record.json", 1, what);
        assert!(a.marks("once.json").is_empty(), "{what}");
        a.expect_reject(mark, me, "argument_not_allowed", what);
    }

    // 7. A knock bound to another address than the one it comes from: refused for a client
    //    that may not name other addresses; for one that may (tablet), its services could be
    //    opened for that address, but the action does not run.
    let other = f.lab.addr(Host::Attacker, Family::V4).to_string();
    let mark = f.mark();
    a.run_ok(&f.profile, &["record", "nas-1", "--allow-ip", &other]);
    a.assert_nothing_ran(mark, "record.json", 1, "a knock bound to another address");
    a.expect_reject(mark, me, "other_ip_not_allowed", "laptop bound elsewhere");
    let mark = f.mark();
    a.run_ok(&a.tablet, &["record", "nas-1", "--allow-ip", &other]);
    a.assert_nothing_ran(mark, "record.json", 1, "tablet's knock bound elsewhere");
    let line = f.daemon().expect_after(
        mark,
        &[
            "action not run",
            "client=tablet",
            &format!("source={me}"),
            "reason=other_ip",
        ],
        LOG_WAIT,
    );
    assert!(line.contains("action=record"), "{line}");
    // The same client, bound to its own address, runs it (the refusal was the binding).
    let mark = f.mark();
    a.run_ok(&a.tablet, &["record", "tab-1"]);
    f.daemon().expect_after(
        mark,
        &[
            "action finished",
            "client=tablet",
            "action=record",
            "code=0",
        ],
        LOG_WAIT,
    );
    assert_eq!(a.marks("record.json").len(), 2);

    // 8. The cooldown: `once` runs, then not again within cooldown_ms.
    let mark = f.mark();
    a.run_ok(&f.profile, &["once"]);
    f.daemon().expect_after(
        mark,
        &["action finished", "client=laptop", "action=once", "code=0"],
        LOG_WAIT,
    );
    assert_eq!(a.marks("once.json").len(), 1);
    let mark = f.mark();
    a.run_ok(&f.profile, &["once"]);
    a.assert_nothing_ran(mark, "once.json", 1, "a knock inside the cooldown");
    let line = f.daemon().expect_after(
        mark,
        &[
            "action not run",
            "client=laptop",
            &format!("source={me}"),
            "action=once",
            "reason=cooldown",
        ],
        LOG_WAIT,
    );
    assert!(line.contains("cooldown_ms = 600000"), "{line}");

    // The counters agree.
    let metrics = sesamed_ok(f, &["status", "--prometheus"]);
    for want in [
        "sesamed_actions_total{action=\"record\",outcome=\"exited_zero\"} 2",
        "sesamed_actions_total{action=\"record\",outcome=\"other_ip\"} 1",
        "sesamed_actions_total{action=\"once\",outcome=\"exited_zero\"} 1",
        "sesamed_actions_total{action=\"once\",outcome=\"cooldown\"} 1",
    ] {
        assert!(metrics.contains(want), "no `{want}` in:\n{metrics}");
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_hanging_action_is_killed_at_its_timeout_with_its_process_group() {
    if !require_netns() {
        return;
    }
    let a = Actions::start("action-hang");
    let f = &a.f;
    let me = a.client_addr();
    let mark = f.mark();
    a.run_ok(&f.profile, &["hang"]);
    f.daemon().expect_after(
        mark,
        &["action started", "client=laptop", "action=hang"],
        LOG_WAIT,
    );
    let started = Instant::now();
    // It runs (and its child too) until the timeout.
    let deadline = Instant::now() + LOG_WAIT;
    let m = loop {
        if let Some(m) = a.marks("hang.json").pop() {
            break m;
        }
        assert!(Instant::now() < deadline, "the hanging action left no mark");
        std::thread::sleep(Duration::from_millis(50));
    };
    let pid = m["pid"].as_u64().expect("pid");
    let child = m["child"].as_u64().expect("child pid");
    assert_eq!(m["pgid"], m["pid"], "a process group of its own: {m}");
    assert!(
        !gone(pid) && !gone(child),
        "the action and its child run until the timeout"
    );
    let status: serde_json::Value =
        serde_json::from_str(&sesamed_ok(f, &["status", "--json"])).unwrap();
    let hang = status["actions"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == "hang"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(hang["last_outcome"], "running", "{hang}");
    assert_eq!(hang["running"], 1, "{hang}");

    let line = f.daemon().expect_after(
        mark,
        &[
            "action finished",
            "client=laptop",
            &format!("source={me}"),
            "action=hang",
            "outcome=killed",
        ],
        Duration::from_millis(HANG_TIMEOUT_MS) + Duration::from_secs(6),
    );
    let ms: u64 = line
        .split("ms=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ms= in {line}"));
    assert!(
        (HANG_TIMEOUT_MS..HANG_TIMEOUT_MS + 3000).contains(&ms),
        "killed after {ms} ms, timeout_ms = {HANG_TIMEOUT_MS}: {line}"
    );
    // The whole process group: the action and the child it started.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !(gone(pid) && gone(child)) {
        assert!(
            Instant::now() < deadline,
            "still running after the kill: action {pid} gone {}, child {child} gone {}",
            gone(pid),
            gone(child)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "hang: killed after {ms} ms (timeout {HANG_TIMEOUT_MS} ms), seen {:?} after its start line",
        started.elapsed()
    );
    let status: serde_json::Value =
        serde_json::from_str(&sesamed_ok(f, &["status", "--json"])).unwrap();
    let hang = status["actions"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == "hang"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(hang["last_outcome"], "killed", "{hang}");
    assert_eq!(hang["running"], 0, "{hang}");
    let metrics = sesamed_ok(f, &["status", "--prometheus"]);
    assert!(
        metrics.contains("sesamed_actions_total{action=\"hang\",outcome=\"killed\"} 1"),
        "{metrics}"
    );
}

/// Runs `ip ARGS` (from the root namespace; ARGS name the namespace with `-n`).
fn ip(args: &[&str]) {
    let o = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(o.status.success(), "ip {}: {}", args.join(" "), text(&o));
}

/// The security review's "held-back action knock" (actions-review finding 1): an attacker on
/// the client's Wi-Fi keeps the client's first `sesame run` knock A from the server; the user
/// sees nothing happen and retries (knock B), which runs the action; after the action's
/// cooldown, still inside A's window, the attacker sends A from the client's address (behind
/// the same NAT it is the client's address). A must not run the action a second time: sesamed
/// refuses it as a replay (the per-client action floor: B is newer than A).
///
/// The attacker is on the path as ARP spoofing would put it: the client's route and neighbour
/// entry for the server point into a link to the attacker's namespace, which captures the real
/// client's knock for the real server (and does not forward it). Without the action floor
/// (sesamed before it) the replayed A runs the action again, and this test fails.
#[test]
fn a_held_back_action_knock_does_not_run_after_the_retry() {
    if !require_netns() {
        return;
    }
    let a = Actions::start("action-held");
    let f = &a.f;
    let me = a.client_addr();
    let server = f.server(Family::V4);
    let (cli, att) = (f.lab.ns(Host::Client), f.lab.ns(Host::Attacker));

    // The attacker in the middle: a link client -> attacker; the client's packets to the
    // server take it; the attacker forwards nothing.
    ip(&[
        "link",
        "add",
        WIFI_CLIENT_IF,
        "netns",
        cli,
        "type",
        "veth",
        "peer",
        "name",
        WIFI_ATTACKER_IF,
        "netns",
        att,
    ]);
    ip(&["-n", cli, "link", "set", WIFI_CLIENT_IF, "up"]);
    ip(&["-n", att, "link", "set", WIFI_ATTACKER_IF, "up"]);
    f.lab
        .run_ok(Host::Attacker, "sysctl", &["-qw", "net.ipv4.ip_forward=0"]);
    let mac = f.lab.mac(Host::Attacker, WIFI_ATTACKER_IF);
    let server_s = server.to_string();
    let me_s = me.to_string();
    let neigh = [
        "-n",
        cli,
        "neigh",
        "replace",
        &server_s,
        "lladdr",
        &mac,
        "dev",
        WIFI_CLIENT_IF,
        "nud",
        "permanent",
    ];
    ip(&neigh);
    let host_route = format!("{server}/32");
    ip(&[
        "-n",
        cli,
        "route",
        "add",
        &host_route,
        "dev",
        WIFI_CLIENT_IF,
        "src",
        &me_s,
    ]);

    // 1. Knock A: the real `sesame run`, captured by the attacker; the server sees nothing.
    let cap = f
        .lab
        .capture(Host::Attacker, WIFI_ATTACKER_IF, "held", "udp or tcp");
    let mark = f.mark();
    let out = a.run_ok(&f.profile, &["door"]);
    assert!(
        out.contains("sent action 'door' to ") && out.contains(&format!("bound to {me} ")),
        "{out}"
    );
    let held_pcap = cap.path.to_string_lossy().into_owned();
    let held = cap.stop();
    let payloads = held
        .iter()
        .filter(|p| p.src == me && p.dst == server)
        .filter(|p| matches!(&p.l4, pcap::L4::Udp { payload, .. } if sesame_proto::wire::is_payload_len(payload.len())))
        .count();
    assert_eq!(
        payloads, 1,
        "the attacker holds knock A's payload: {held:#?}"
    );
    a.assert_nothing_ran(mark, "door.json", 0, "knock A, held back");
    let seen = f.daemon().matching(mark, &[&format!("source={me}")]);
    assert!(seen.is_empty(), "knock A reached sesamed: {seen:?}");

    // 2. The attacker lets the client's traffic through again; the user retries: knock B runs.
    ip(&[
        "-n",
        cli,
        "route",
        "del",
        &host_route,
        "dev",
        WIFI_CLIENT_IF,
    ]);
    ip(&["-n", cli, "neigh", "del", &server_s, "dev", WIFI_CLIENT_IF]);
    let mark = f.mark();
    a.run_ok(&f.profile, &["door"]);
    f.daemon().expect_after(
        mark,
        &[
            "action finished",
            "client=laptop",
            &format!("source={me}"),
            "action=door",
            "code=0",
        ],
        LOG_WAIT,
    );
    assert_eq!(a.marks("door.json").len(), 1, "knock B ran the action once");

    // 3. Past the cooldown (so only the replay defence can stop it), the attacker sends A from
    //    the client's address.
    std::thread::sleep(Duration::from_millis(DOOR_COOLDOWN_MS + 500));
    let mark = f.mark();
    let o = f.lab.netprobe(
        Host::Client,
        &["replay".to_owned(), held_pcap, server.to_string()],
    );
    assert!(o.status.success(), "replay: {}", text(&o));
    a.assert_nothing_ran(mark, "door.json", 1, "held-back knock A, sent after B");
    let line = a.expect_reject(mark, me, "replay", "held-back knock A, sent after B");
    assert!(line.contains("client=laptop"), "{line}");
}
