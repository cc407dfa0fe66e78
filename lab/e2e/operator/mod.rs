//! Operator features in the namespaces: `sesamed status` (human, JSON, Prometheus) during a
//! lease and after a refused knock, the control socket's mode; reloads (`sesamed client
//! add/remove` while the daemon runs, `sesamed reload`, SIGHUP) that add and remove clients,
//! keep leases and replay state, and refuse a broken configuration; `--log-format json`; the
//! Fail2Ban filter of packaging/fail2ban/ run by `fail2ban-regex` over real logs; and
//! `sesame open NAME --wait` with an imported profile: plain, with a skewed clock, with a
//! wrong key.
//!
//! One file per subject: [`status`] (`sesamed status`), [`reloads`] (client add/remove,
//! reload, SIGHUP), [`logs`] (JSON logs and the Fail2Ban filter), [`open_wait`] (`sesame open
//! NAME --wait` with imported profiles). The helpers here are shared with other modules.

mod logs;
mod open_wait;
mod reloads;
mod status;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sesame_tests::{CLIENT_IF, Family, Host, Lab, bin, text};

use crate::common::{Fixture, LOG_WAIT, SETTLE};

// ---------------------------------------------------------------------------------------------
// Helpers (also used by ssh.rs)

/// Runs `sesame ARGS` in a namespace as a user whose home is `home` (XDG_CONFIG_HOME unset),
/// so profiles are looked up in `home/.config/sesame/profiles/`.
pub(crate) fn sesame_at_home(lab: &Lab, host: Host, home: &Path, args: &[&str]) -> Output {
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
pub(crate) fn sesamed_ok(f: &Fixture, args: &[&str]) -> String {
    let o = sesamed_with_config(f, args);
    assert!(o.status.success(), "sesamed {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `sesamed ARGS --config CONFIG` in the server namespace.
pub(crate) fn sesamed_with_config(f: &Fixture, args: &[&str]) -> Output {
    let config = f.config.to_string_lossy().into_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", &config]);
    f.lab.sesamed(&all)
}

/// Installs the profile of the fixture's `laptop` client as a user would: `sesamed
/// export-client laptop --host SERVER --uri` on the server, `sesame import URI --name NAME`
/// with HOME = `home` on the client, and the laptop's key put where the profile says.
pub(crate) fn install_laptop_profile(f: &Fixture, home: &Path, name: &str) {
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
                    if sesame_proto::wire::is_payload_len(payload.len()))),
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

/// The reload message `sesamed client add/remove` and `sesamed reload` print.
fn assert_reloaded(out: &str, clients: usize, added: &str, removed: &str) {
    let noun = if clients == 1 { "client" } else { "clients" };
    let want = format!("reloaded: {clients} {noun} (added: {added}; removed: {removed})");
    assert!(out.contains(&want), "expected `{want}` in: {out}");
}
