//! Reloads that tell the truth ("no 3 a.m. surprises"): a rotated server key takes effect (or
//! the reload says it cannot), a bad key refuses the reload as `sesamed check` would, a changed
//! `[knock]` names the clients that need a new profile, `client add` leaves nothing half done
//! and never reloads another file's daemon, and counters run on across reloads.

use std::time::Duration;

use sesame_tests::{Family, Host, require_netns, text};

use crate::common::Fixture;
use crate::operator::{sesamed_ok, sesamed_with_config};

const SETTLE: Duration = Duration::from_millis(1500);

/// Knocks from the client with `profile`; it must be refused (no grant, no way in).
fn refused(f: &Fixture, profile: &std::path::Path, what: &str) {
    let mark = f.mark();
    f.knock_from(Host::Client, profile, &[]);
    std::thread::sleep(SETTLE);
    f.assert_no_grant(mark, what);
}

/// Knocks from the client with `profile`; it must be granted.
fn granted(f: &Fixture, profile: &std::path::Path) {
    let mark = f.mark();
    f.knock_from(Host::Client, profile, &[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
}

/// Writes the profile `sesamed export-client laptop` prints now, as `NAME.toml` with the
/// laptop's key.
fn exported(f: &Fixture, name: &str) -> std::path::PathBuf {
    let host = f.server(Family::V4).to_string();
    let text = sesamed_ok(f, &["export-client", "laptop", "--host", &host]);
    let key = f.client_key.path.to_string_lossy().into_owned();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("private_key_file") {
                format!("private_key_file = \"{key}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    f.lab.write(&format!("{name}.toml"), &text)
}

#[test]
fn reload_reads_a_rotated_server_key_and_refuses_a_bad_one() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("rl-key");
    f.spec.lease_seconds = 1;
    f.start();
    let before = exported(&f, "before");
    granted(&f, &before);
    // Rotate the key as an admin would (new file, same path, mode 0600).
    f.lab.gen_key("server");
    let after = exported(&f, "after");
    let o = sesamed_with_config(&f, &["check"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("uses another server key"),
        "check before the reload: {}",
        text(&o)
    );
    let out = sesamed_ok(&f, &["reload"]);
    assert!(out.contains("the server key changed"), "{out}");
    std::thread::sleep(Duration::from_millis(1200));
    granted(&f, &after);
    std::thread::sleep(Duration::from_millis(1200));
    refused(
        &f,
        &before,
        "a profile of the old server key after the rotation",
    );
    // A key that `sesamed check` refuses is refused by the reload too, and the running key
    // stays.
    let key = f.lab.path("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let o = sesamed_with_config(&f, &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = sesamed_with_config(&f, &["reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("too open"), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(1200));
    granted(&f, &after);
}

#[test]
fn a_knock_settings_change_names_the_profiles_it_breaks() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("rl-knock");
    f.start();
    f.spec.knock.port_range = (22000, 23999);
    f.lab.write("sesamed.toml", &f.spec.to_toml());
    let o = sesamed_with_config(&f, &["check"]);
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        said.contains("other settings that profiles carry (knock.port_range)")
            && said.contains("laptop"),
        "check: {said}"
    );
    let out = sesamed_ok(&f, &["reload"]);
    assert!(
        out.contains("knock.port_range changed: every client needs a new profile")
            && out.contains("laptop"),
        "reload: {out}"
    );
    // What it says is true: the old profile no longer opens; a new export does.
    refused(
        &f,
        &f.profile.clone(),
        "a profile from before the port_range change",
    );
    let new = exported(&f, "new");
    granted(&f, &new);
    // Profiles carry `[firewall] lease` too (a client must not spend a connection-bound lease
    // on its own probe): switching it says so as well.
    f.spec.extra_firewall = "lease = \"connection\"\n".to_owned();
    f.lab.write("sesamed.toml", &f.spec.to_toml());
    let out = sesamed_ok(&f, &["reload"]);
    assert!(
        out.contains("firewall.lease changed: every client needs a new profile"),
        "reload: {out}"
    );
}

#[test]
fn client_add_leaves_nothing_half_done() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("rl-add");
    f.spec.extra_top = "user = \"nobody\"\n".to_owned();
    f.start();
    let config_before = std::fs::read(&f.config).unwrap();
    let tablet = f.lab.gen_key("tablet");
    let psk = f.lab.gen_psk("tablet");
    let add = |f: &Fixture| {
        sesamed_with_config(
            f,
            &[
                "client",
                "add",
                "tablet",
                "--public-key",
                &tablet.public,
                "--psk-file",
                &psk.to_string_lossy(),
            ],
        )
    };
    // The PSK belongs to root, mode 0600: the running sesamed (nobody) could not read it.
    let o = add(&f);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("runs as uid 65534") && text(&o).contains("not changed"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(&f.config).unwrap(),
        config_before,
        "the config was edited"
    );
    // In a directory nobody cannot enter, the file's own owner is right but the reload fails:
    // the config gets its previous content back.
    let dir = f.lab.path("private");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let hidden = dir.join("tablet.psk");
    std::fs::copy(&psk, &hidden).unwrap();
    std::os::unix::fs::chown(&hidden, Some(65534), Some(65534)).unwrap();
    let o = sesamed_with_config(
        &f,
        &[
            "client",
            "add",
            "tablet",
            "--public-key",
            &tablet.public,
            "--psk-file",
            &hidden.to_string_lossy(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("previous content again"), "{}", text(&o));
    assert_eq!(
        std::fs::read(&f.config).unwrap(),
        config_before,
        "not rolled back"
    );
    // Once nobody owns the file, it works.
    std::os::unix::fs::chown(&psk, Some(65534), Some(65534)).unwrap();
    let o = add(&f);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("reloaded: 2 clients"), "{}", text(&o));
}

#[test]
fn client_add_with_another_config_does_not_reload_this_daemon() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("rl-other");
    f.start();
    // Another file in the same directory: the same (relative) control socket path.
    let other = f.lab.write("other.toml", &f.spec.to_toml());
    let phone = f.lab.gen_key("phone");
    let o = f.lab.sesamed(&[
        "client",
        "add",
        "phone",
        "--public-key",
        &phone.public,
        "--config",
        &other.to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("it was not reloaded"), "{}", text(&o));
    let status = sesamed_ok(&f, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(s["clients"].as_array().unwrap().len(), 1, "{s}");
}

#[test]
fn counters_run_on_across_a_reload() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("rl-count");
    f.start();
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    let grants = |f: &Fixture| {
        let s: serde_json::Value =
            serde_json::from_str(sesamed_ok(f, &["status", "--json"]).trim()).unwrap();
        (
            s["counters"]["grants"].as_u64().unwrap(),
            s["counters"]["packets_seen"].as_u64().unwrap(),
        )
    };
    let (g, p) = grants(&f);
    assert_eq!(g, 1);
    sesamed_ok(&f, &["reload"]);
    let (g2, p2) = grants(&f);
    assert_eq!(g2, 1, "grants after the reload");
    assert!(p2 >= p, "packets_seen went from {p} to {p2}");
}

/// Leases outlive a restart in the kernel; now sesamed knows them again: `status` shows them
/// (after a clean stop and after a crash), and a client removed while sesamed was stopped
/// loses its lease at the start.
#[test]
fn status_after_a_restart_shows_the_leases_still_in_the_kernel() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("rl-restart");
    f.spec.lease_seconds = 120;
    let phone = f.lab.gen_key("phone");
    f.spec
        .clients
        .push(sesame_tests::ClientSpec::new("phone", &phone.public));
    f.start();
    let phone_profile = f.write_profile("phone", Family::V4, &phone.path, |_| {});
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    let mark = f.mark();
    f.knock_from(Host::Attacker, &phone_profile, &[]);
    f.daemon()
        .expect_after(mark, &[" granted client=phone"], Duration::from_secs(6));
    let leases = |f: &Fixture| -> Vec<(String, u64)> {
        let s: serde_json::Value =
            serde_json::from_str(sesamed_ok(f, &["status", "--json"]).trim()).unwrap();
        s["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["client"].as_str().unwrap().to_owned(),
                    l["seconds_left"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(leases(&f).len(), 2);
    // A clean stop and start.
    f.stop();
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let after = leases(&f);
    assert_eq!(after.len(), 2, "after a restart: {after:?}");
    assert!(
        after.iter().all(|(_, left)| *left > 100 && *left <= 120),
        "{after:?}"
    );
    // A crash, and the phone removed from the file while sesamed is down.
    f.daemon.as_mut().unwrap().kill9();
    f.spec.clients.truncate(1);
    f.lab.write("sesamed.toml", &f.spec.to_toml());
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let after = leases(&f);
    assert_eq!(
        after.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        vec!["laptop"],
        "after a crash and the phone's removal"
    );
    assert!(f.connects(Host::Client, Family::V4, 22));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while f.connects(Host::Attacker, Family::V4, 22) {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed phone's lease is still open; ruleset:\n{}",
            f.lab.server_ruleset()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
