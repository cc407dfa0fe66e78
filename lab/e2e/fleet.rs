//! Many servers: two sesamed in the server namespace (each with its own key, nftables table,
//! state directory, control socket and knock range; one protects tcp/22, the other tcp/2222
//! and tcp/2223), known to the client as `web1` and `web2`, plus `db1`, a profile with a wrong
//! server key. The `sesamed export-client` outputs put in one file import as the group `prod`;
//! `sesame open web1 web2` knocks both, `sesame open @prod --wait` knocks all three in parallel
//! with one line each, and exits 1 naming `db1`, whose service never answers. A name that is
//! not a profile stops the command before anything is sent (exit 2).

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use sesame_tests::{DaemonSpec, Family, Host, Proc, require_netns, text};

use crate::common::{Fixture, LOG_WAIT, SETTLE};
use crate::operator::sesame_at_home;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `sesamed export-client laptop --host HOST --config CONFIG`: the profile's TOML.
fn export(f: &Fixture, config: &Path, host: &str) -> String {
    let o = f.lab.sesamed(&[
        "export-client".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "laptop".as_ref(),
        "--host".as_ref(),
        host.as_ref(),
    ]);
    assert!(o.status.success(), "sesamed export-client: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// Replaces the line `key = ...` of a profile.
fn set_line(profile: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let out: Vec<String> = profile
        .lines()
        .map(|l| {
            if l.split('=').next().is_some_and(|k| k.trim() == key) {
                found = true;
                format!("{key} = {value}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(found, "no {key} line in:\n{profile}");
    out.join("\n") + "\n"
}

/// Waits for `daemon`'s grant line for the laptop from `source` after `mark`.
fn expect_grant(daemon: &Proc, mark: usize, source: &str) -> String {
    let src = format!("source={source}");
    daemon
        .wait_for_after(mark, &[" granted client=laptop", &src], LOG_WAIT)
        .unwrap_or_else(|| panic!("{}: no grant for {src}", daemon.name()))
}

#[test]
fn a_group_of_servers_is_knocked_at_once_and_the_one_that_fails_is_named() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("fleet");
    f.spec.lease_seconds = 4;
    f.start();
    // The second server: nothing shared with the first but the namespace.
    let key_b = f.lab.gen_key("server-b");
    let mut b: DaemonSpec = f.spec.clone();
    b.private_key_file = key_b.path.clone();
    b.state_dir = "state-b".to_owned();
    b.control_socket = "b.sock".to_owned();
    b.table = "sesame_b".to_owned();
    b.knock.port_range = (22000, 23999);
    b.protect = vec!["tcp/2222".to_owned(), "tcp/2223".to_owned()];
    b.clients[0].allow = Some(vec!["tcp/2222".to_owned()]);
    let config_b = f.lab.write("b.toml", &b.to_toml());
    let mut addrs = Vec::new();
    for port in [2222, 2223] {
        addrs.push(f.svc(Family::V4, port));
        addrs.push(f.svc(Family::V6, port));
    }
    let _service_b = f.lab.serve(&addrs);
    let daemon_b = f.lab.start_sesamed(&config_b);
    let server = f.server(Family::V4);
    let client = f.lab.addr(Host::Client, Family::V4).to_string();
    f.lab
        .set_hosts(Host::Client, &format!("{server} web1 web2 db1\n"));

    // What the admin has: the profile each server exports, and one for db1 whose server key is
    // wrong (a server reinstalled since, say), put in one file.
    let web1 = export(&f, &f.config, "web1");
    let web2 = export(&f, &config_b, "web2");
    let wrong_key = f.lab.gen_key("wrong").public;
    let db1 = set_line(
        &set_line(
            &export(&f, &config_b, "db1"),
            "server_public_key",
            &format!("\"{wrong_key}\""),
        ),
        "open",
        "[\"tcp/2223\"]",
    );
    let fleet = f.lab.write("fleet.toml", &format!("{web1}\n{web2}\n{db1}"));
    let home = f.lab.path("home");
    let key = home.join(".config/sesame/laptop.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let secret = std::fs::read_to_string(&f.client_key.path).unwrap();
    sesame_keys::write_secret_file(&key, secret.trim()).unwrap();
    let sesame = |args: &[&str]| sesame_at_home(&f.lab, Host::Client, &home, args);

    let fleet_arg = fleet.to_string_lossy().into_owned();
    let o = sesame(&["import", &fleet_arg, "--group", "prod"]);
    assert!(o.status.success(), "import: {}", text(&o));
    let out = stdout(&o);
    for name in ["web1", "web2", "db1"] {
        assert!(
            out.contains(&format!("installed profile '{name}' at ")),
            "{out}"
        );
    }
    assert!(
        out.contains("group 'prod': web1, web2, db1 (knock with: sesame open @prod)"),
        "{out}"
    );
    let o = sesame(&["list"]);
    let listed = stdout(&o);
    assert!(
        o.status.success() && listed.contains("@prod") && listed.contains("web1, web2, db1"),
        "{}",
        text(&o)
    );
    assert_eq!(listed.matches("key ok").count(), 3, "{listed}");

    // A name that is not a profile: nothing is sent.
    let (mark_a, mark_b) = (f.mark(), daemon_b.mark());
    let o = sesame(&["open", "web1", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("no profile named 'nosuch'"),
        "{}",
        text(&o)
    );
    std::thread::sleep(SETTLE);
    f.assert_no_grant(mark_a, "open web1 nosuch");
    assert!(daemon_b.matching(mark_b, &[" granted "]).is_empty());

    // Two names: both servers grant, one line each.
    let (mark_a, mark_b) = (f.mark(), daemon_b.mark());
    let o = sesame(&["open", "web1", "web2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "{}", text(&o));
    for (name, service) in [("web1", "tcp/22"), ("web2", "tcp/2222")] {
        let line = format!(
            "{name}: knocked {name}, asking for {service}: {server} for {client} (this host's public address)"
        );
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }
    expect_grant(f.daemon(), mark_a, &client);
    expect_grant(&daemon_b, mark_b, &client);
    for port in [22, 2222] {
        assert!(f.opens(Host::Client, Family::V4, port), "tcp/{port}");
    }
    for port in [22, 2222] {
        assert!(
            f.lab
                .wait_closed(
                    Host::Client,
                    f.svc(Family::V4, port),
                    Instant::now(),
                    Duration::from_secs(15)
                )
                .is_some(),
            "the lease of tcp/{port} never ended"
        );
    }

    // The group, with --wait: web1 and web2 answer, db1 never does; exit 1, db1 named.
    let (mark_a, mark_b) = (f.mark(), daemon_b.mark());
    let started = Instant::now();
    let o = sesame(&[
        "open",
        "@prod",
        "--wait",
        "--timeout",
        "1s",
        "--retries",
        "0",
    ]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "{}", text(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "web1: web1 tcp/22 answers at {server} (after 1 knock, asking for tcp/22 for {client}"
        )),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "web2: web2 tcp/2222 answers at {server} (after 1 knock, asking for tcp/2222 for {client}"
        )),
        "{out}"
    );
    let err = stderr(&o);
    let db1: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("sesame: db1: "))
        .collect();
    assert_eq!(db1.len(), 1, "one line for db1: {err}");
    assert!(db1[0].contains("never answered"), "{err}");
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l == "sesame: 1 of 3 profiles failed: db1"),
        "{err}"
    );
    expect_grant(f.daemon(), mark_a, &client);
    expect_grant(&daemon_b, mark_b, &client);
    // db1's knocks (a plain one and four clock probes, a second each) ran alongside the others.
    assert!(took < Duration::from_secs(20), "{took:?}");
}
