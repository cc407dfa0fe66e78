//! Fail-closed: the protected services stay hidden while sesamed is not running. Before, they
//! were open after a reboot until sesamed started (or for good if it did not: a bad config, a
//! missing user), and whenever the firewall's own ruleset was reloaded while sesamed was down.
//! `sesamed gate-rules` prints the table sesamed builds, for the boot ruleset; here it is
//! loaded the way Debian's `nftables.service` loads `/etc/nftables.conf` (`flush ruleset`, then
//! an `include`).

use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, require_netns, text};

use crate::common::Fixture;

#[test]
fn the_boot_gate_keeps_services_hidden_while_sesamed_is_down() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("boot");
    f.spec.lease_seconds = 60;
    f.write();
    let o = f.lab.sesamed(&[
        "gate-rules".as_ref(),
        "--config".as_ref(),
        f.config.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let gate = f
        .lab
        .write("sesame-gate.nft", &String::from_utf8_lossy(&o.stdout));
    let conf = f.lab.write(
        "nftables.conf",
        &format!("flush ruleset\ninclude \"{}\"\n", gate.display()),
    );
    let boot = |f: &Fixture| {
        let o = f
            .lab
            .run(Host::Server, "nft", &["-f", &conf.to_string_lossy()]);
        assert!(o.status.success(), "loading the boot ruleset: {}", text(&o));
    };
    let svc = f.svc(Family::V4, 22);
    let svc6 = f.svc(Family::V6, 22);
    f.service = Some(f.lab.serve(&[svc, svc6]));
    // Without the boot gate, and sesamed not running, ssh is open to anyone.
    assert!(
        f.lab
            .connects_within(Host::Attacker, svc, Duration::from_secs(3))
    );
    // At boot: nothing runs but the firewall's ruleset.
    boot(&f);
    for host in [Host::Client, Host::Attacker] {
        assert!(
            !f.lab.connects(host, svc, 800),
            "{host:?} reached ssh with sesamed down"
        );
        assert!(
            !f.lab.connects(host, svc6, 800),
            "{host:?} reached ssh over IPv6"
        );
    }
    // sesamed starts, takes the table over, and a knock opens.
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let me = f.lab.addr(Host::Client, Family::V4);
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, me);
    assert!(
        f.lab
            .connects_within(Host::Client, svc, Duration::from_secs(3))
    );
    // `systemctl restart nftables` while sesamed runs: the ruleset is replaced with the boot
    // gate, which holds no grants. sesamed notices (its chain lost its marker) and puts the
    // lease back without a new knock.
    boot(&f);
    let flushed = Instant::now();
    let deadline = flushed + Duration::from_secs(12);
    loop {
        if f.lab.connects(Host::Client, svc, 500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease was not put back after the boot ruleset was reloaded; ruleset:\n{}",
            f.lab.server_ruleset()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!f.lab.connects(Host::Attacker, svc, 800));
    // sesamed stops; the ruleset is loaded again (a reboot): hidden.
    f.stop();
    boot(&f);
    for host in [Host::Client, Host::Attacker] {
        assert!(
            !f.lab.connects(host, svc, 800),
            "{host:?} reached ssh after the reboot"
        );
    }
}

/// The shipped boot gate (`packaging/nftables/sesame-gate.nft`) is what `sesamed gate-rules`
/// prints for the README's essentials configuration, so it cannot drift from the table
/// sesamed builds.
#[test]
fn the_shipped_boot_gate_is_what_gate_rules_prints() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read_to_string(root.join("packaging/nftables/sesame-gate.nft"))
        .expect("packaging/nftables/sesame-gate.nft");
    let tmp = tempfile::Builder::new()
        .prefix("sesame-gate-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let key = dir.join("server.key");
    let o = std::process::Command::new(sesame_tests::bin("sesame"))
        .arg("genkey")
        .output()
        .unwrap();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut k = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .unwrap();
        k.write_all(&o.stdout).unwrap();
    }
    let config = dir.join("sesamed.toml");
    std::fs::write(
        &config,
        format!(
            "private_key_file = \"{}\"\nstate_dir = \"{}\"\n[knock]\nport_range = [10000, 32767]\npayload = \"required\"\n[firewall]\nbackend = \"nftables\"\nprotect = [\"tcp/22\"]\nlease_seconds = 30\n",
            key.display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(sesame_tests::bin("sesamed"))
        .args(["gate-rules", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    drop(tmp);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        shipped,
        String::from_utf8_lossy(&o.stdout),
        "packaging/nftables/sesame-gate.nft differs from `sesamed gate-rules` for the README's configuration; regenerate it"
    );
}
