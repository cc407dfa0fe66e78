//! Operator features in the namespaces: `sesamed status` (human, JSON, Prometheus) during a
//! lease and after a refused knock, the control socket's mode; reloads (`sesamed client
//! add/remove` while the daemon runs, `sesamed reload`, SIGHUP) that add and remove clients,
//! keep leases and replay state, and refuse a broken configuration; `--log-format json`; the
//! Fail2Ban filter of packaging/fail2ban/ run by `fail2ban-regex` over real logs; and
//! `sesame open NAME --wait` with an imported profile: plain, with a skewed clock, with a
//! wrong key.

use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sesame_tests::{CLIENT_IF, ClientSpec, Family, Host, Lab, bin, require_netns, text};

use crate::common::{Fixture, LOG_WAIT, SETTLE};

// ---------------------------------------------------------------------------------------------
// Helpers (also used by ssh.rs)

/// Runs `sesame ARGS` in a namespace as a user whose home is `home` (XDG_CONFIG_HOME unset),
/// so profiles are looked up in `home/.config/sesame/profiles/`.
pub fn sesame_at_home(lab: &Lab, host: Host, home: &Path, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", lab.ns(host)])
        .arg(bin("sesame"))
        .args(args)
        .current_dir(&lab.dir)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run sesame {args:?}: {e}"))
}

/// `sesamed ARGS --config CONFIG` in the server namespace; it must exit 0; returns stdout.
pub fn sesamed_ok(f: &Fixture, args: &[&str]) -> String {
    let o = sesamed_with_config(f, args);
    assert!(o.status.success(), "sesamed {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `sesamed ARGS --config CONFIG` in the server namespace.
pub fn sesamed_with_config(f: &Fixture, args: &[&str]) -> Output {
    let config = f.config.to_string_lossy().into_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", &config]);
    f.lab.sesamed(&all)
}

/// Installs the profile of the fixture's `laptop` client as a user would: `sesamed
/// export-client laptop --host SERVER --uri` on the server, `sesame import URI --name NAME`
/// with HOME = `home` on the client, and the laptop's key put where the profile says.
pub fn install_laptop_profile(f: &Fixture, home: &Path, name: &str) {
    std::fs::create_dir_all(home).unwrap();
    let host = f.server(Family::V4).to_string();
    let uri = sesamed_ok(f, &["export-client", "laptop", "--host", &host, "--uri"]);
    let uri = uri.trim();
    assert!(uri.starts_with("sesame://2/"), "{uri}");
    let o = sesame_at_home(&f.lab, Host::Client, home, &["import", uri, "--name", name]);
    assert!(o.status.success(), "sesame import: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let key = home.join(format!(".config/sesame/{name}.key"));
    assert!(
        out.contains(&format!("installed profile '{name}'")) && out.contains("does not exist yet"),
        "{out}"
    );
    let secret = std::fs::read_to_string(&f.client_key.path).unwrap();
    sesame_keys::write_secret_file(&key, secret.trim()).unwrap();
    let o = sesame_at_home(&f.lab, Host::Client, home, &["list"]);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && listed.contains(name) && listed.contains("key ok"),
        "sesame list: {}",
        text(&o)
    );
}

fn status_json(f: &Fixture) -> Value {
    let out = sesamed_ok(f, &["status", "--json"]);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

/// Waits for a daemon log line with every one of `pats` after `mark`; fails with the log.
fn expect_log(f: &Fixture, mark: usize, pats: &[&str]) -> String {
    let d = f.daemon();
    d.wait_for_after(mark, pats, LOG_WAIT).unwrap_or_else(|| {
        panic!(
            "no sesamed log line with {pats:?} within {LOG_WAIT:?}; the log:\n{}",
            d.output()
        )
    })
}

/// Waits for the human-format rejection line from `source` with `reason` after `mark`.
fn expect_reject(f: &Fixture, mark: usize, source: IpAddr, reason: &str) -> String {
    let src = format!("source={source}");
    let why = format!("reason={reason}");
    expect_log(f, mark, &["rejected", &src, &why])
}

/// Knocks with `profile` from `host` and waits for `client`'s grant from that host's address
/// (in the human log format, or JSON).
fn knock_granted_as(f: &Fixture, host: Host, profile: &Path, client: &str, json: bool) {
    let mark = f.mark();
    f.knock_from(host, profile, &[]);
    let ip = f.lab.addr(host, Family::V4);
    if json {
        let who = format!("\"client\":\"{client}\"");
        let from = format!("\"source\":\"{ip}\"");
        expect_log(f, mark, &["\"message\":\"granted\"", &who, &from]);
    } else {
        let who = format!(" granted client={client} ");
        let from = format!("source={ip}");
        expect_log(f, mark, &[&who, &from]);
    }
    assert!(
        f.opens(host, Family::V4, 22),
        "{client} was granted but {host:?} cannot connect; ruleset:\n{}",
        f.lab.server_ruleset()
    );
}

/// [`knock_granted_as`] with the human log format.
fn knock_granted(f: &Fixture, host: Host, profile: &Path, client: &str) {
    knock_granted_as(f, host, profile, client, false);
}

/// Knocks with `profile` from `host`; nothing may be granted, and `host` stays out.
fn knock_refused(f: &Fixture, host: Host, profile: &Path, what: &str) {
    let mark = f.mark();
    f.knock_from(host, profile, &[]);
    std::thread::sleep(SETTLE);
    f.assert_no_grant(mark, what);
    assert!(!f.connects(host, Family::V4, 22), "{what}: {host:?} got in");
}

/// Captures the client's next knock (one `sesame open` with `profile`) to `NAME.pcap`.
fn captured_knock(f: &Fixture, profile: &Path, name: &str, json: bool) -> PathBuf {
    let cap = f.lab.capture(Host::Client, CLIENT_IF, name, "udp or tcp");
    knock_granted_as(f, Host::Client, profile, "laptop", json);
    let packets = cap.stop();
    assert!(
        packets.iter().any(|p| p.dst == f.server(Family::V4)
            && matches!(&p.l4, sesame_tests::pcap::L4::Udp { payload, .. }
                    if sesame_proto::is_payload_len(payload.len()))),
        "the payload was captured: {packets:#?}"
    );
    f.lab.path(&format!("{name}.pcap"))
}

/// Re-sends a captured knock from `host` (IPv4).
fn replay(f: &Fixture, host: Host, pcap: &Path) {
    let o = f.lab.netprobe(
        host,
        &[
            "replay".to_owned(),
            pcap.to_string_lossy().into_owned(),
            f.server(Family::V4).to_string(),
        ],
    );
    assert!(o.status.success(), "replay: {}", text(&o));
}

// ---------------------------------------------------------------------------------------------
// sesamed status

/// One Prometheus sample value: `name` or `name{labels}`.
fn prom_value(text: &str, series: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn status_shows_leases_last_knocks_and_counters() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-status");
    f.spec.lease_seconds = 20;
    f.start();
    let client_v4 = f.lab.addr(Host::Client, Family::V4).to_string();

    // The control socket is a socket that only its owner may use.
    let socket = f.lab.path("sesamed.sock");
    let meta =
        std::fs::symlink_metadata(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    assert!(meta.file_type().is_socket(), "{}", socket.display());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "control socket mode"
    );

    let human = sesamed_ok(&f, &["status"]);
    assert!(human.starts_with("sesamed "), "{human}");
    assert!(human.contains("leases (0):"), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("capture filter: ") && l.contains("live ports")),
        "the capture filter in use: {human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.contains("laptop") && l.contains("no knock since start")),
        "{human}"
    );
    let s = status_json(&f);
    assert_eq!(s["leases"].as_array().unwrap().len(), 0, "{s}");
    assert!(s["clients"][0]["last_knock"].is_null(), "{s}");

    // A refused knock: another address without allow_other_ip.
    let mark = f.mark();
    let other = f.lab.addr(Host::Attacker, Family::V4).to_string();
    f.knock(&["--allow-ip", &other]);
    expect_reject(
        &f,
        mark,
        f.lab.addr(Host::Client, Family::V4),
        "other_ip_not_allowed",
    );
    let s = status_json(&f);
    let laptop = &s["clients"][0];
    assert_eq!(laptop["name"], "laptop", "{s}");
    assert_eq!(laptop["last_result"], "other_ip_not_allowed", "{s}");
    assert_eq!(laptop["last_source"], client_v4.as_str(), "{s}");
    assert_eq!(
        s["counters"]["rejections"]["other_ip_not_allowed"], 1,
        "{s}"
    );
    assert_eq!(s["leases"].as_array().unwrap().len(), 0, "{s}");

    // A granted knock: a lease with seconds left.
    let profile = f.profile.clone();
    knock_granted(&f, Host::Client, &profile, "laptop");
    let s = status_json(&f);
    let leases = s["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{s}");
    assert_eq!(leases[0]["client"], "laptop", "{s}");
    assert_eq!(leases[0]["address"], client_v4.as_str(), "{s}");
    assert_eq!(leases[0]["service"], "tcp/22", "{s}");
    let left = leases[0]["seconds_left"].as_u64().unwrap();
    assert!((10..=20).contains(&left), "seconds left: {left} of 20: {s}");
    let laptop = &s["clients"][0];
    assert_eq!(laptop["last_result"], "granted", "{s}");
    assert_eq!(laptop["last_source"], client_v4.as_str(), "{s}");
    let at = laptop["last_knock"].as_str().unwrap();
    assert!(at.len() >= 20 && at.ends_with('Z'), "RFC 3339 UTC: {at}");
    let c = &s["counters"];
    assert!(
        c["packets_seen"].as_u64().unwrap() >= 8,
        "two knocks of 4: {s}"
    );
    assert!(
        c["packets_in_range"].as_u64().unwrap() >= 8,
        "two knocks of 4: {s}"
    );
    assert_eq!(c["sequences_completed"], 2, "{s}");
    assert_eq!(c["payloads_seen"], 2, "{s}");
    // Both payloads were authentic; whether the one refused by policy counts as "accepted"
    // (it does today: the counter is bumped before the policy checks) is not pinned here.
    let accepted = c["payloads_accepted"].as_u64().unwrap();
    assert!((1..=2).contains(&accepted), "{s}");
    assert_eq!(c["grants"], 1, "{s}");
    assert_eq!(c["leases_opened"], 1, "{s}");
    assert_eq!(c["rejections"]["other_ip_not_allowed"], 1, "{s}");
    assert!(
        s["pid"].as_u64().unwrap() > 0 && s["version"].is_string(),
        "{s}"
    );

    // The same in the human format.
    let human = sesamed_ok(&f, &["status"]);
    assert!(human.contains("leases (1):"), "{human}");
    let lease_line = human
        .lines()
        .find(|l| l.trim_start().starts_with("laptop") && l.ends_with("s left"))
        .unwrap_or_else(|| panic!("no lease line: {human}"));
    assert!(
        lease_line.contains(&client_v4) && lease_line.contains("tcp/22"),
        "{lease_line}"
    );
    let secs: u64 = lease_line
        .trim_end_matches(" s left")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((5..=20).contains(&secs), "{lease_line}");
    assert!(
        human
            .lines()
            .any(|l| l.contains("last knock") && l.contains(&format!("from {client_v4}: granted"))),
        "{human}"
    );
    assert!(human.contains("sequences 2"), "{human}");
    assert!(
        human.contains(&format!("payloads 2 (accepted {accepted})")),
        "{human}"
    );
    assert!(
        human.contains("rejections: other_ip_not_allowed 1"),
        "{human}"
    );

    // And in Prometheus's text format: every sample has its HELP and TYPE.
    let prom = sesamed_ok(&f, &["status", "--prometheus"]);
    for line in prom.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(
            prom.contains(&format!("# TYPE {name} ")) && prom.contains(&format!("# HELP {name} ")),
            "{line}: no HELP/TYPE in:\n{prom}"
        );
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert!(
        prom_value(&prom, "sesamed_packets_seen_total").unwrap() >= 8,
        "{prom}"
    );
    assert_eq!(
        prom_value(&prom, "sesamed_sequences_completed_total"),
        Some(2),
        "{prom}"
    );
    assert_eq!(
        prom_value(&prom, "sesamed_payloads_accepted_total"),
        Some(accepted),
        "{prom}"
    );
    assert_eq!(prom_value(&prom, "sesamed_grants_total"), Some(1), "{prom}");
    assert_eq!(
        prom_value(&prom, "sesamed_leases_active"),
        Some(1),
        "{prom}"
    );
    assert_eq!(
        prom_value(
            &prom,
            "sesamed_rejections_total{reason=\"other_ip_not_allowed\"}"
        ),
        Some(1),
        "{prom}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reloads

/// The reload message `sesamed client add/remove` and `sesamed reload` print.
fn assert_reloaded(out: &str, clients: usize, added: &str, removed: &str) {
    let noun = if clients == 1 { "client" } else { "clients" };
    let want = format!("reloaded: {clients} {noun} (added: {added}; removed: {removed})");
    assert!(out.contains(&want), "expected `{want}` in: {out}");
}

#[test]
fn reload_adds_and_removes_clients_and_keeps_leases_and_replay_state() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-reload");
    // Long leases (they must outlive the reloads) and 60-second steps (the replayed knock must
    // still be in the skew window, so the daemon judges it: a replay).
    f.spec.lease_seconds = 60;
    f.spec.knock.step_seconds = 60;
    f.start();
    let attacker_v4 = f.lab.addr(Host::Attacker, Family::V4).to_string();
    let laptop_profile = f.profile.clone();
    let knock = captured_knock(&f, &laptop_profile, "laptop-knock", false);

    // A client added while the daemon runs can knock right after (from the attacker's host,
    // so its lease is told apart from the laptop's).
    let phone = f.lab.gen_key("phone");
    let phone_profile = f.write_profile("phone", Family::V4, &phone.path, |_| {});
    let mark = f.mark();
    let out = sesamed_ok(
        &f,
        &[
            "client",
            "add",
            "phone",
            "--public-key",
            &phone.public,
            "--allow",
            "tcp/22",
        ],
    );
    assert!(out.contains("added client 'phone'"), "{out}");
    assert_reloaded(&out, 2, "phone", "none");
    expect_log(&f, mark, &["reloaded: 2 clients"]);
    knock_granted(&f, Host::Attacker, &phone_profile, "phone");

    // The laptop's lease and its replay state survived the reload.
    let s = status_json(&f);
    let leases: Vec<(String, String)> = s["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["client"].as_str().unwrap().to_owned(),
                l["address"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let client_v4 = f.lab.addr(Host::Client, Family::V4).to_string();
    assert!(
        leases.contains(&("laptop".to_owned(), client_v4.clone())),
        "the laptop's lease survives the reload: {s}"
    );
    assert!(
        f.connects(Host::Client, Family::V4, 22),
        "the laptop's lease still lets it in after the reload; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    let mark = f.mark();
    replay(&f, Host::Client, &knock);
    expect_reject(&f, mark, f.lab.addr(Host::Client, Family::V4), "replay");
    f.assert_no_grant(mark, "a knock replayed after the reload");

    // A removed client's lease ends at once, and it cannot knock any more.
    assert!(f.lab.server_ruleset().contains(&attacker_v4));
    let mark = f.mark();
    let out = sesamed_ok(&f, &["client", "remove", "phone"]);
    assert!(out.contains("removed client 'phone'"), "{out}");
    assert_reloaded(&out, 1, "none", "phone");
    expect_log(&f, mark, &["lease ended: client removed", "client=phone"]);
    assert!(
        f.closes(Host::Attacker, Family::V4, 22),
        "the removed client's lease ended"
    );
    let ruleset = f.lab.server_ruleset();
    assert!(
        !ruleset.contains(&attacker_v4),
        "the removed client's element is gone from the set:\n{ruleset}"
    );
    knock_refused(
        &f,
        Host::Attacker,
        &phone_profile,
        "a removed client knocks",
    );
    assert!(
        f.connects(Host::Client, Family::V4, 22),
        "removing the phone left the laptop's lease alone"
    );

    // SIGHUP re-reads the file too: a client added by hand, then removed by hand.
    let tablet = f.lab.gen_key("tablet");
    let tablet_profile = f.write_profile("tablet", Family::V4, &tablet.path, |_| {});
    let before = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(
        &f.config,
        format!(
            "{before}\n[[client]]\nname = \"tablet\"\npublic_key = \"{}\"\n",
            tablet.public
        ),
    )
    .unwrap();
    let mark = f.mark();
    f.daemon().signal(libc::SIGHUP);
    expect_log(
        &f,
        mark,
        &["reloaded: 2 clients (added: tablet; removed: none)"],
    );
    knock_granted(&f, Host::Attacker, &tablet_profile, "tablet");
    std::fs::write(&f.config, &before).unwrap();
    let mark = f.mark();
    f.daemon().signal(libc::SIGHUP);
    expect_log(
        &f,
        mark,
        &["reloaded: 1 client (added: none; removed: tablet)"],
    );
    expect_log(&f, mark, &["lease ended: client removed", "client=tablet"]);
    assert!(
        f.closes(Host::Attacker, Family::V4, 22),
        "the lease of the client removed by SIGHUP ended"
    );
    knock_refused(
        &f,
        Host::Attacker,
        &tablet_profile,
        "a client removed by SIGHUP",
    );

    // Through all of it the laptop kept working, and its replay state is still there.
    let mark = f.mark();
    replay(&f, Host::Attacker, &knock);
    expect_reject(&f, mark, f.lab.addr(Host::Attacker, Family::V4), "replay");
    knock_granted(&f, Host::Client, &laptop_profile, "laptop");
    let s = status_json(&f);
    let names: Vec<&str> = s["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["laptop"], "{s}");
}

#[test]
fn a_configuration_with_errors_is_refused_and_the_old_one_keeps_serving() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-refuse");
    f.start();
    let good = std::fs::read_to_string(&f.config).unwrap();
    let laptop_profile = f.profile.clone();
    let ghost = f.lab.gen_key("ghost");
    let ghost_profile = f.write_profile("ghost", Family::V4, &ghost.path, |_| {});

    // A syntax error: `sesamed reload` cannot even read the control socket's path from it.
    std::fs::write(
        &f.config,
        good.replace("lease_seconds = 3", "lease_seconds = \"three\""),
    )
    .unwrap();
    let o = sesamed_with_config(&f, &["reload"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sesamed.toml: line ") && err.contains("lease_seconds"),
        "{err}"
    );
    // SIGHUP with the same file: the daemon refuses it and says so.
    let mark = f.mark();
    f.daemon().signal(libc::SIGHUP);
    let line = expect_log(&f, mark, &["reload refused"]);
    assert!(line.contains("lease_seconds"), "{line}");
    assert!(
        f.daemon.as_mut().unwrap().exited().is_none(),
        "sesamed still runs"
    );
    knock_granted(&f, Host::Client, &laptop_profile, "laptop");

    // A file the command line accepts but the daemon cannot load (a PSK file that is not
    // there): `sesamed reload` exits 1 with the daemon's reason.
    std::fs::write(
        &f.config,
        format!(
            "{good}\n[[client]]\nname = \"ghost\"\npublic_key = \"{}\"\npsk_file = \"missing.psk\"\n",
            ghost.public
        ),
    )
    .unwrap();
    let mark = f.mark();
    let o = sesamed_with_config(&f, &["reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refused the reload") && err.contains("missing.psk"),
        "{err}"
    );
    let line = expect_log(&f, mark, &["reload refused"]);
    assert!(line.contains("missing.psk"), "{line}");
    // The old configuration serves: the laptop opens, the ghost does not exist.
    knock_granted(&f, Host::Client, &laptop_profile, "laptop");
    knock_refused(
        &f,
        Host::Attacker,
        &ghost_profile,
        "a client of a refused configuration",
    );
    let s = status_json(&f);
    assert_eq!(s["clients"].as_array().unwrap().len(), 1, "{s}");

    // Fixed, it loads.
    std::fs::write(&f.config, &good).unwrap();
    let out = sesamed_ok(&f, &["reload"]);
    assert_reloaded(&out, 1, "none", "none");
}

// ---------------------------------------------------------------------------------------------
// Logs: JSON, and the Fail2Ban filter

/// A daemon in single-packet mode with the `laptop` and an expired client `old`, started with
/// `--log-format FORMAT`; then rejections from known sources: the laptop's knock replayed from
/// the client and from the attacker (`replay`), the expired client from the attacker over IPv4
/// and IPv6 (`expired`), and garbage to the laptop's payload port from the attacker (`bad_mac`).
/// Returns the fixture and the rejection sources in log order.
fn rejections_scenario(tag: &str, format: &str) -> (Fixture, Vec<IpAddr>) {
    let mut f = Fixture::new(tag);
    f.spec.knock.length = 0;
    f.spec.knock.step_seconds = 60;
    let old = f.lab.gen_key("old");
    let mut old_client = ClientSpec::new("old", &old.public);
    old_client.expires = Some("2020-01-01T00:00:00Z".to_owned());
    f.spec.clients.push(old_client);
    f.write();
    let mut addrs = Vec::new();
    for family in [Family::V4, Family::V6] {
        addrs.push(f.svc(family, 22));
    }
    f.service = Some(f.lab.serve(&addrs));
    let config = f.config.to_string_lossy().into_owned();
    let daemon = f.lab.spawn(
        Host::Server,
        "sesamed",
        bin("sesamed"),
        &["run", "--config", &config, "--log-format", format],
        &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
    );
    if daemon
        .wait_for(&["ready"], Duration::from_secs(15))
        .is_none()
    {
        panic!(
            "sesamed --log-format {format} is not ready:\n{}",
            daemon.output()
        );
    }
    f.daemon = Some(daemon);

    let client = f.lab.addr(Host::Client, Family::V4);
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    let attacker6 = f.lab.addr(Host::Attacker, Family::V6);
    let laptop_profile = f.profile.clone();
    let knock = captured_knock(&f, &laptop_profile, "single", format == "json");
    let mut sources = Vec::new();
    let expect = |f: &Fixture, sources: &mut Vec<IpAddr>, mark: usize, ip: IpAddr, reason: &str| {
        let (src, why) = if format == "json" {
            (
                format!("\"source\":\"{ip}\""),
                format!("\"reason\":\"{reason}\""),
            )
        } else {
            (format!("source={ip}"), format!("reason={reason}"))
        };
        expect_log(f, mark, &["rejected", &src, &why]);
        sources.push(ip);
    };
    for host in [Host::Client, Host::Attacker] {
        let mark = f.mark();
        replay(&f, host, &knock);
        expect(
            &f,
            &mut sources,
            mark,
            f.lab.addr(host, Family::V4),
            "replay",
        );
    }
    let old4 = f.write_profile("old4", Family::V4, &old.path, |_| {});
    let old6 = f.write_profile("old6", Family::V6, &old.path, |_| {});
    let mark = f.mark();
    f.knock_from(Host::Attacker, &old4, &[]);
    expect(&f, &mut sources, mark, attacker, "expired");
    let mark = f.mark();
    f.knock_from(Host::Attacker, &old6, &["-6"]);
    expect(&f, &mut sources, mark, attacker6, "expired");
    // Garbage to the laptop's payload port (single-packet mode: the payload is the knock).
    let p = laptop_profile.to_string_lossy().into_owned();
    let ports = f.lab.sesame(Host::Client, &["ports", "--profile", &p]);
    assert!(ports.status.success(), "{}", text(&ports));
    let ports = String::from_utf8_lossy(&ports.stdout).into_owned();
    let port = ports
        .lines()
        .find_map(|l| l.strip_prefix("payload  udp/"))
        .unwrap_or_else(|| panic!("no payload port in: {ports}"))
        .trim()
        .to_owned();
    let mark = f.mark();
    let o = f.lab.netprobe(
        Host::Attacker,
        &[
            "udp".to_owned(),
            format!("{}:{port}", f.server(Family::V4)),
            "--len".to_owned(),
            "184".to_owned(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    expect(&f, &mut sources, mark, attacker, "bad_mac");
    assert_eq!(sources.first(), Some(&client));
    (f, sources)
}

/// Runs `fail2ban-regex` with the shipped filter over `log`; returns the addresses it matched
/// (in order) and the number of lines it matched. Fails (CI) or returns `None` (elsewhere)
/// when fail2ban-regex is not installed.
fn fail2ban_regex(log: &Path) -> Option<(Vec<IpAddr>, usize)> {
    let filter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/fail2ban/sesamed.conf");
    let run = |extra: &[&str]| {
        Command::new("fail2ban-regex")
            .args(extra)
            .arg(log)
            .arg(&filter)
            .output()
    };
    let ips = match run(&["-o", "ip"]) {
        Ok(o) => o,
        Err(e) => {
            assert!(
                !sesame_tests::in_ci(),
                "fail2ban-regex is needed in CI (apt-get install fail2ban): {e}"
            );
            sesame_tests::skip(&format!("fail2ban-regex is not installed: {e}"));
            return None;
        }
    };
    assert!(ips.status.success(), "fail2ban-regex -o ip: {}", text(&ips));
    let matched: Vec<IpAddr> = String::from_utf8_lossy(&ips.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|e| panic!("fail2ban-regex -o ip printed {l:?}: {e}"))
        })
        .collect();
    let summary = run(&[]).expect("fail2ban-regex runs");
    assert!(
        summary.status.success(),
        "fail2ban-regex: {}",
        text(&summary)
    );
    let out = String::from_utf8_lossy(&summary.stdout).into_owned();
    // "Lines: 40 lines, 0 ignored, 5 matched, 35 missed"
    let line = out
        .lines()
        .find(|l| l.starts_with("Lines: "))
        .unwrap_or_else(|| panic!("no `Lines:` summary in:\n{out}"));
    let count = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" matched"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read the summary: {line}"));
    Some((matched, count))
}

fn fail2ban_scenario(tag: &str, format: &str) {
    let (mut f, sources) = rejections_scenario(tag, format);
    let mut daemon = f.daemon.take().expect("sesamed runs");
    let status = daemon.stop(Duration::from_secs(10));
    let lines = daemon.lines();
    f.daemon = Some(daemon);
    assert!(
        status.is_some_and(|s| s.success()),
        "sesamed exits 0 on SIGTERM: {status:?}"
    );
    let is_rejection = |l: &str| {
        if format == "json" {
            l.contains("\"message\":\"rejected\"")
        } else {
            l.contains(" rejected source=")
        }
    };
    let rejection_lines: Vec<&String> = lines.iter().filter(|l| is_rejection(l)).collect();
    assert_eq!(
        rejection_lines.len(),
        sources.len(),
        "one line per rejection: {rejection_lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("granted")),
        "the log has the laptop's grant"
    );
    if format == "json" {
        // Every line is one JSON object with a time, a level and a message; every rejection
        // carries its source address as a string.
        let mut seen = Vec::new();
        for l in &lines {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}"));
            assert!(
                v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
                "{l}"
            );
            if v["message"] == "rejected" {
                let src = v["source"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a rejection without \"source\": {l}"));
                seen.push(src.parse::<IpAddr>().unwrap());
                assert!(v["reason"].is_string(), "{l}");
            }
        }
        assert_eq!(seen, sources, "the sources of the JSON rejection lines");
    }
    let log = f.lab.path(&format!("sesamed-{format}.log"));
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let Some((matched, count)) = fail2ban_regex(&log) else {
        return;
    };
    assert_eq!(
        matched,
        sources,
        "fail2ban-regex LOG packaging/fail2ban/sesamed.conf must find the address of exactly each rejection line, in order; the log:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        count,
        sources.len(),
        "fail2ban-regex matched only the rejection lines (not the grant nor anything else)"
    );
}

#[test]
fn fail2ban_filter_matches_the_rejections_of_the_human_log() {
    if !require_netns() {
        return;
    }
    fail2ban_scenario("op-f2b", "human");
}

#[test]
fn json_log_lines_are_json_and_the_fail2ban_filter_matches_them() {
    if !require_netns() {
        return;
    }
    fail2ban_scenario("op-json", "json");
}

// ---------------------------------------------------------------------------------------------
// sesame open NAME --wait

#[test]
fn open_wait_by_name_confirms_that_the_service_answers() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-wait");
    f.spec.lease_seconds = 10;
    f.start();
    let home = f.lab.path("home");
    install_laptop_profile(&f, &home, "lab");
    f.assert_closed(Family::V4, 22, "before the knock");
    let mark = f.mark();
    let o = sesame_at_home(&f.lab, Host::Client, &home, &["open", "lab", "--wait"]);
    assert!(o.status.success(), "sesame open lab --wait: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "{} tcp/22 answers (after 1 knock, asking for tcp/22 for {} (this host's public address))",
            f.server(Family::V4),
            f.lab.addr(Host::Client, Family::V4)
        )),
        "{out}"
    );
    expect_log(&f, mark, &[" granted client=laptop "]);
    // The documented long form. The first knock's lease is still on, so the service answers
    // before this knock: the knock is sent (and granted), but --wait cannot confirm it: exit 3.
    let mark = f.mark();
    let o = sesame_at_home(
        &f.lab,
        Host::Client,
        &home,
        &[
            "open",
            "lab",
            "--wait",
            "tcp/22",
            "--timeout",
            "5s",
            "--retries",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--wait cannot confirm it"),
        "{}",
        text(&o)
    );
    expect_log(&f, mark, &[" granted client=laptop "]);
    // A service the knock does not open is never confirmed: exit 1, not a hang.
    let o = sesame_at_home(
        &f.lab,
        Host::Client,
        &home,
        &["open", "lab", "--wait", "udp/53"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("only tcp services can be confirmed"),
        "{}",
        text(&o)
    );
}

#[test]
fn open_wait_finds_a_clock_offset_and_says_so() {
    if !require_netns() {
        return;
    }
    // Steps of 30 s, one step of skew: a client 60 s behind is two steps off and never opens
    // by itself; the clock probe finds that +30 s (one step, the only forward probe: a knock
    // shifted further would stay valid later) gets in.
    let mut f = Fixture::new("op-clock");
    f.spec.knock.step_seconds = 30;
    f.spec.knock.skew_steps = 1;
    f.start();
    let home = f.lab.path("home");
    install_laptop_profile(&f, &home, "lab");
    let mark = f.mark();
    let o = sesame_at_home(
        &f.lab,
        Host::Client,
        &home,
        &[
            "open",
            "lab",
            "--wait",
            "--timeout",
            "1s",
            "--retries",
            "0",
            "--time-offset",
            "-60",
        ],
    );
    assert!(o.status.success(), "the clock probe opens it: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("tcp/22 answers (after 2 knocks"), "{out}");
    assert!(
        err.contains("opened only with the clock shifted by -30 s, not by the -60 s given"),
        "the detected offset is printed: {err}"
    );
    expect_log(&f, mark, &[" granted client=laptop "]);
    // The advice aims at the measured offset, not at the edge of the window (-60 + 30 = -30):
    // this client's clock is right, so the offset to pass is about 0 (within half a step).
    let advised: i64 = err
        .split("pass --time-offset ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `pass --time-offset N` advice: {err}"));
    assert!(
        advised.abs() <= 15,
        "sesame open --time-offset -60 on a right clock must be advised about 0, not {advised}: {err}"
    );
    // The advice must work when followed (once the probe's lease has ended, so that the
    // service does not answer before the knock).
    let svc = f.svc(Family::V4, 22);
    assert!(
        f.lab
            .wait_closed(
                Host::Client,
                svc,
                std::time::Instant::now(),
                Duration::from_secs(15)
            )
            .is_some(),
        "the probe's lease never ended"
    );
    let advised = advised.to_string();
    let o = sesame_at_home(
        &f.lab,
        Host::Client,
        &home,
        &[
            "open",
            "lab",
            "--wait",
            "--timeout",
            "2s",
            "--retries",
            "0",
            "--time-offset",
            &advised,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("after 1 knock,"),
        "{}",
        text(&o)
    );
}

#[test]
fn open_wait_with_a_wrong_key_says_what_is_likely_wrong() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-wrongkey");
    f.start();
    let stranger = f.lab.gen_key("stranger");
    let profile = f.write_profile("stranger", Family::V4, &stranger.path, |_| {});
    let p = profile.to_string_lossy().into_owned();
    let mark = f.mark();
    let o = f.lab.sesame(
        Host::Client,
        &[
            "open",
            "--profile",
            &p,
            "--wait",
            "tcp/22",
            "--timeout",
            "1s",
            "--retries",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("did not answer within 1.0 s; knocking again (1/1)"),
        "{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "sesame: {} never answered after 6 knocks",
            f.svc(Family::V4, 22)
        )),
        "{err}"
    );
    for cause in [
        "wrong keys",
        "sesame pubkey",
        "server_public_key",
        "UDP",
        "protocol = \"tcp\"",
        "clock",
        "skew_steps",
    ] {
        assert!(
            last.contains(cause),
            "the explanation mentions `{cause}`: {last}"
        );
    }
    f.assert_no_grant(mark, "a knock with an unknown key");
    f.assert_closed(Family::V4, 22, "after the wrong key");
}

/// README "Provisioning a phone": `sesamed client add NAME --generate-key` while the daemon
/// runs prints a URI with the private key; `sesame import URI` on the device, and `sesame
/// open NAME --wait` opens at once.
#[test]
fn a_generated_key_profile_opens_from_a_new_device() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-genkey");
    f.spec.lease_seconds = 10;
    f.start();
    let host = f.server(Family::V4).to_string();
    let mark = f.mark();
    let out = sesamed_ok(
        &f,
        &[
            "client",
            "add",
            "phone",
            "--generate-key",
            "--host",
            &host,
            "--allow",
            "tcp/22",
        ],
    );
    assert_reloaded(&out, 2, "phone", "none");
    expect_log(&f, mark, &["reloaded: 2 clients"]);
    let uri = out
        .lines()
        .find(|l| l.starts_with("sesame://2/"))
        .unwrap_or_else(|| panic!("no URI in: {out}"));
    assert!(
        !std::fs::read_to_string(&f.config)
            .unwrap()
            .contains(&uri["sesame://2/".len()..]),
        "the URI (with the private key) is not stored"
    );
    // The phone is the attacker's host here: it has no lease, so --wait proves the knock.
    let home = f.lab.path("phone-home");
    std::fs::create_dir_all(&home).unwrap();
    let o = sesame_at_home(&f.lab, Host::Attacker, &home, &["import", uri]);
    assert!(o.status.success(), "{}", text(&o));
    let imported = String::from_utf8_lossy(&o.stdout);
    assert!(
        imported.contains("wrote ") && imported.contains("knock with: sesame open phone"),
        "{imported}"
    );
    let key = home.join(".config/sesame/phone.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    f.assert_closed(Family::V4, 22, "before the phone knocks");
    let mark = f.mark();
    let o = sesame_at_home(
        &f.lab,
        Host::Attacker,
        &home,
        &["open", "phone", "--wait", "--timeout", "3s"],
    );
    assert!(o.status.success(), "sesame open phone --wait: {}", text(&o));
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    expect_log(
        &f,
        mark,
        &[" granted client=phone ", &format!("source={attacker}")],
    );
    assert!(
        !f.connects(Host::Client, Family::V4, 22),
        "the phone's lease is the phone's"
    );
}
