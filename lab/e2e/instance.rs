//! One sesamed per state directory, nftables table and control socket. Before, a second
//! `sesamed run` started without complaint, rebuilt the table and took over the control
//! socket (unlinking the first daemon's); when it exited the first kept granting but
//! `sesamed status` could no longer reach it.

use std::time::Duration;

use sesame_tests::{Family, Host, require_netns, text};

use crate::common::Fixture;
use crate::faults::sesamed_run_to_exit;

/// Starts a second daemon on `config` (it must exit at once) and returns its output.
fn second(f: &Fixture, name: &str, spec: &sesame_tests::DaemonSpec) -> String {
    let config = f.lab.write(name, &spec.to_toml());
    let (code, lines) = sesamed_run_to_exit(&f.lab, &config, &[], &[]);
    let all = lines.join("\n");
    assert_eq!(code, Some(1), "the second daemon: {all}");
    assert_eq!(
        lines.iter().filter(|l| !l.trim().is_empty()).count(),
        1,
        "one line: {all}"
    );
    all
}

#[test]
fn a_second_daemon_is_refused_and_the_first_keeps_working() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("inst");
    f.start();
    let first = f.daemon().pid();
    let status = |f: &Fixture| {
        f.lab
            .sesamed(&["status".as_ref(), "--config".as_ref(), f.config.as_os_str()])
    };
    assert!(status(&f).status.success());
    let pid = format!("pid {first}");

    // The same configuration: the state directory is taken.
    let said = second(&f, "same.toml", &f.spec);
    assert!(said.contains(&pid) && said.contains("state_dir"), "{said}");

    // Its own state and socket, the same table in the same network namespace.
    let mut other = f.spec.clone();
    other.state_dir = "state-b".to_owned();
    other.control_socket = "b.sock".to_owned();
    let said = second(&f, "table.toml", &other);
    assert!(
        said.contains(&pid) && said.contains("inet sesame"),
        "{said}"
    );

    // Its own state and table, the same control socket.
    let mut other = f.spec.clone();
    other.state_dir = "state-c".to_owned();
    other.table = "sesame_c".to_owned();
    let said = second(&f, "socket.toml", &other);
    assert!(said.contains(&pid) && said.contains("control"), "{said}");
    let o = f
        .lab
        .run(Host::Server, "nft", &["list", "table", "inet", "sesame_c"]);
    assert!(
        !o.status.success(),
        "the refused daemon built its table: {}",
        text(&o)
    );

    // The first one is untouched: reachable, and granting.
    let o = status(&f);
    assert!(
        o.status.success(),
        "status after the refusals: {}",
        text(&o)
    );
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(
        f.lab
            .connects_within(Host::Client, f.svc(Family::V4, 22), Duration::from_secs(3))
    );

    // A crash leaves no lock behind: the next start works and answers on the socket.
    f.daemon.as_mut().unwrap().kill9();
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let o = status(&f);
    assert!(o.status.success(), "status after a restart: {}", text(&o));
}

/// Another daemon's socket is never unlinked: a second daemon with its own everything but a
/// socket path that someone else's daemon answers on leaves that socket alone, and a daemon
/// whose socket file was replaced does not remove the replacement when it stops.
#[test]
fn a_daemon_removes_only_its_own_control_socket() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("inst-sock");
    f.start();
    let sock = f.lab.path("sesamed.sock");
    let ino = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(p).map(|m| m.ino()).ok()
    };
    let before = ino(&sock).expect("the socket exists");
    // Someone moves the socket aside and puts another file of the same name in its place
    // (a second daemon that was started by hand with the same path, then stopped).
    let aside = f.lab.path("aside.sock");
    std::fs::rename(&sock, &aside).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let replacement = ino(&sock).unwrap();
    assert_ne!(before, replacement);
    f.stop();
    assert_eq!(
        ino(&sock),
        Some(replacement),
        "the stopping daemon removed a socket it did not create"
    );
    drop(listener);
}
