//! Connection-bound leases (`[firewall] lease = "connection"`): behind a shared NAT, the first
//! connection after the knock gets in, a neighbour on the same public address does not, and
//! the connection outlives the lease. Before this mode existed, every host behind the NAT could
//! connect for the whole lease (and the config key was refused).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, bin, require_netns, text};

use crate::common::Fixture;
use crate::operator::{install_laptop_profile, sesame_at_home};

#[test]
fn a_connection_bound_lease_admits_the_first_connection_only() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("conn-lease");
    f.spec.lease_seconds = 8;
    f.spec.extra_firewall = "lease = \"connection\"\n".to_owned();
    f.lab.add_nat_lan(2);
    f.start();
    let public = f.lab.addr(Host::Client, Family::V4);
    let profile = f.write_profile("lan", Family::V4, &f.client_key.path.clone(), |_| {});
    let svc = f.svc(Family::V4, 22);
    assert!(
        !f.lab.connects(Host::Lan(1), svc, 800),
        "hidden before the knock"
    );
    let mark = f.mark();
    let granted = Instant::now();
    f.knock_from(Host::Lan(1), &profile, &["--allow-ip", &public.to_string()]);
    f.expect_grant(mark, public);
    // The first connection (from the knocking host) gets in and stays up. (sesamed logs
    // `granted` once the element is in place.)
    let mut held = f.lab.hold(Host::Lan(1), svc);
    assert!(held.ping(), "{}", held.output());
    // A neighbour on the same public address, a second later and for the rest of the lease:
    // nothing; and neither does a second connection of the knocking host.
    std::thread::sleep(Duration::from_secs(1));
    for host in [Host::Lan(2), Host::Lan(1)] {
        assert!(
            !f.lab.connects(host, svc, 800),
            "{host:?} connected after the lease was used; ruleset:\n{}",
            f.lab.server_ruleset()
        );
    }
    // The lease's time passes; the first connection lives on (conntrack).
    while granted.elapsed() < Duration::from_secs(9) {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        held.ping(),
        "the session died with the lease: {}",
        held.output()
    );
    // A new knock admits one more connection.
    let mark = f.mark();
    f.knock_from(Host::Lan(2), &profile, &["--allow-ip", &public.to_string()]);
    f.expect_grant(mark, public);
    assert!(
        f.lab
            .connects_within(Host::Lan(2), svc, Duration::from_secs(3))
    );
    assert!(!f.lab.connects(Host::Lan(1), svc, 800));
}

/// `sesamed check` tries the table against the running kernel (`nft -c`, nothing changes),
/// so a kernel that cannot delete set elements from the packet path (before Linux 5.4) is
/// found before a restart, not by it. The old kernel is played by a shim in front of the real
/// nft that refuses what such a kernel refuses, with its message; everything else goes to nft.
#[test]
fn a_kernel_without_packet_path_deletes_is_found_by_check() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("conn-check");
    f.spec.extra_firewall = "lease = \"connection\"\n".to_owned();
    f.write();
    let check = |f: &Fixture| {
        f.lab
            .sesamed(&["check".as_ref(), "--config".as_ref(), f.config.as_os_str()])
    };
    // The real kernel takes it, and check says it tried.
    let o = check(&f);
    assert!(o.status.success(), "{}", sesame_tests::text(&o));
    assert!(
        !sesame_tests::text(&o).contains("was not tried"),
        "{}",
        sesame_tests::text(&o)
    );
    let shim = f.lab.write(
        "old-kernel-nft",
        "#!/bin/sh\ninput=$(cat)\ncase \"$input\" in *\"delete @\"*)\n  echo 'Error: Could not process rule: Operation not supported' >&2; exit 1;;\nesac\nprintf '%s\\n' \"$input\" | exec nft \"$@\"\n",
    );
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    f.spec.extra_firewall = format!("lease = \"connection\"\nnft = \"{}\"\n", shim.display());
    f.lab.write("sesamed.toml", &f.spec.to_toml());
    let o = check(&f);
    assert_eq!(o.status.code(), Some(1), "{}", sesame_tests::text(&o));
    let said = sesame_tests::text(&o);
    assert!(
        said.contains("kernel refuses") && said.contains("Linux 5.4"),
        "{said}"
    );
    // A start on that kernel fails the same way, before anything is exposed or opened.
    let (code, lines) = crate::faults::sesamed_run_to_exit(&f.lab, &f.config, &[], &[]);
    assert_ne!(code, Some(0));
    assert!(
        lines.join("\n").contains("Linux 5.4"),
        "{}",
        lines.join("\n")
    );
    // `lease = "window"` needs no such kernel: check and start pass through the same shim.
    f.spec.extra_firewall = format!("nft = \"{}\"\n", shim.display());
    f.start();
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(
        f.lab
            .connects_within(Host::Client, f.svc(Family::V4, 22), Duration::from_secs(3))
    );
}

/// A connection-bound lease is used up by the first connection; the client's next knock,
/// while more than half of the lease's time is left, must admit its next connection (the
/// kernel deleted the element: keeping "the lease" would open nothing). And when the table is
/// rebuilt (`nft flush ruleset`), used-up leases are not put back for anyone.
#[test]
fn a_knock_after_the_connection_used_the_lease_admits_the_next_one() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("conn-again");
    f.spec.lease_seconds = 60;
    f.spec.extra_firewall = "lease = \"connection\"\n".to_owned();
    f.start();
    let me = f.lab.addr(Host::Client, Family::V4);
    let svc = f.svc(Family::V4, 22);
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, me);
    assert!(
        f.lab
            .connects_within(Host::Client, svc, Duration::from_secs(3))
    );
    assert!(
        !f.lab.connects(Host::Client, svc, 800),
        "the lease was not used up"
    );
    // Knock again at once (59 s of the lease's time left).
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, me);
    assert!(
        f.lab
            .connects_within(Host::Client, svc, Duration::from_secs(3)),
        "the second knock opened nothing; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    // Used up again; the ruleset is flushed; sesamed rebuilds its table and must not put the
    // used-up lease back.
    let o = f.lab.run(Host::Server, "nft", &["flush", "ruleset"]);
    assert!(o.status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = f.lab.run(
            Host::Server,
            "nft",
            &["list", "chain", "inet", "sesame", "gate"],
        );
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the table was not rebuilt");
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !f.lab.connects(Host::Client, svc, 800),
        "a used-up lease came back after the rebuild; ruleset:\n{}",
        f.lab.server_ruleset()
    );
}

/// The connections the protected service accepted from `from` after `mark` (its log).
fn accepted_from(f: &Fixture, mark: usize, from: IpAddr) -> Vec<String> {
    let service = f.service.as_ref().expect("the service runs");
    service.matching(mark, &[&format!("accepted {from}:")])
}

/// [`accepted_from`] once the service has logged at least `want` connections from `from`
/// (its log line may trail the connection; up to 3 s), and 300 ms more for any extra one.
fn accepted_settled(f: &Fixture, mark: usize, from: IpAddr, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while accepted_from(f, mark, from).len() < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    accepted_from(f, mark, from)
}

/// `sesame open --wait` with a profile that says the server's leases admit one connection per
/// knock (`lease = "connection"`, written by `sesamed export-client` from this server's
/// configuration) knocks and does not connect: the connection made right after it, as `sesame
/// open NAME --wait && ssh HOST` makes it, is the one the lease admits. (`--wait` used to check
/// the knock by connecting, which used the lease up: the ssh after it was refused.)
#[test]
fn open_wait_with_a_connection_lease_leaves_the_one_connection_to_the_user() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("conn-wait");
    f.spec.lease_seconds = 30;
    f.spec.extra_firewall = "lease = \"connection\"\n".to_owned();
    f.start();
    let profile = f.export_profile(Family::V4);
    let exported = std::fs::read_to_string(&profile).unwrap();
    assert!(
        exported.contains("\nlease = \"connection\"\n"),
        "export-client does not say the leases are connection-bound:\n{exported}"
    );
    let me = f.lab.addr(Host::Client, Family::V4);
    let svc = f.svc(Family::V4, 22);
    let served = f.service.as_ref().unwrap().mark();
    let mark = f.mark();
    let o = f.knock_from(Host::Client, &profile, &["--wait"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(out.starts_with("knocked "), "{}", text(&o));
    assert!(
        !out.contains("answers"),
        "it claims an answer: {}",
        text(&o)
    );
    assert!(
        err.contains("one connection per knock") && err.contains("sesame proxy"),
        "{}",
        text(&o)
    );
    assert_eq!(err.lines().count(), 1, "{}", text(&o));
    f.expect_grant(mark, me);
    assert_eq!(
        accepted_from(&f, served, me),
        Vec::<String>::new(),
        "--wait connected to the service"
    );
    // The user's connection, right after (one socket, as ssh makes it): it gets in.
    assert!(
        f.lab.connects(Host::Client, svc, 3000),
        "the connection after `sesame open --wait` was refused; sesame said: {}\nruleset:\n{}",
        text(&o),
        f.lab.server_ruleset()
    );
    assert_eq!(accepted_settled(&f, served, me, 1).len(), 1);
    // And it was the lease's one connection.
    assert!(
        !f.lab.connects(Host::Client, svc, 800),
        "a second connection got in"
    );
}

/// `sesame proxy NAME HOST PORT` (ssh's ProxyCommand) with a profile installed from a URI that
/// carries `lease = "connection"`: the connection it relays is the only one it makes, so the
/// session gets through and nothing else does, not even when a lease from an earlier knock was
/// still unused (the connection before the knock that `proxy` makes for window leases would
/// use that lease, and the knock's lease would go to a connection nobody relays).
#[test]
fn proxy_relays_the_one_connection_of_a_connection_lease() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("conn-proxy");
    f.spec.lease_seconds = 30;
    f.spec.extra_firewall = "lease = \"connection\"\n".to_owned();
    f.start();
    let home = f.lab.path("home");
    install_laptop_profile(&f, &home, "lab");
    let installed = std::fs::read_to_string(home.join(".config/sesame/profiles/lab.toml")).unwrap();
    assert!(
        installed.contains("\nlease = \"connection\"\n"),
        "the URI did not carry the lease:\n{installed}"
    );
    let me = f.lab.addr(Host::Client, Family::V4);
    let svc = f.svc(Family::V4, 22);
    for earlier_knock in [false, true] {
        let what = if earlier_knock {
            "after an unused knock"
        } else {
            "alone"
        };
        if earlier_knock {
            let mark = f.mark();
            let o = sesame_at_home(&f.lab, Host::Client, &home, &["open", "lab"]);
            assert!(o.status.success(), "sesame open: {}", text(&o));
            f.expect_grant(mark, me);
        }
        let served = f.service.as_ref().unwrap().mark();
        let mark = f.mark();
        let o = proxy(&f, &home, svc, "one line through the proxy\n");
        assert!(o.status.success(), "sesame proxy ({what}): {}", text(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "sesame-netprobe hello\none line through the proxy\n",
            "{what}: {}",
            text(&o)
        );
        f.expect_grant(mark, me);
        let accepted = accepted_settled(&f, served, me, 1);
        assert_eq!(
            accepted.len(),
            1,
            "{what}: the service saw other connections than the relayed one: {accepted:?}; sesame said: {}",
            text(&o)
        );
        assert!(
            !f.lab.connects(Host::Client, svc, 800),
            "{what}: a connection without a knock got in after the proxy's"
        );
    }
}

/// `sesame proxy lab ADDR PORT` in the client namespace as the user whose home is `home`,
/// with `input` on its standard input (then end of file); killed after 30 s.
fn proxy(f: &Fixture, home: &Path, svc: SocketAddr, input: &str) -> Output {
    let mut child = Command::new("ip")
        .args(["netns", "exec", f.lab.ns(Host::Client), "timeout", "30"])
        .arg(bin("sesame"))
        .args([
            "proxy",
            "lab",
            &svc.ip().to_string(),
            &svc.port().to_string(),
        ])
        .args(["--timeout", "3s"])
        .current_dir(&f.lab.dir)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sesame proxy");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().expect("wait for sesame proxy")
}
