//! The state directory read-only or full, and a truncated state file.

use std::time::Duration;

use sesame_tests::{CLIENT_IF, Family, Host, require_netns};

use crate::common::{Fixture, LOG_WAIT, SETTLE};

use super::{
    NsMount, assert_no_grant_line, check_replay_state, check_state_file, counter,
    expect_grant_line, knock_is_granted, launch_sesamed, replay_capture, replay_state_in,
    sesamed_run_to_exit, status,
};

/// Knocks once (must not be granted): waits for the fail-closed line and checks nothing
/// opened. Returns the line.
fn knock_fails_closed(f: &Fixture, what: &str) -> String {
    let mark = f.mark();
    f.knock(&[]);
    let line = f.daemon().expect_after(
        mark,
        &[
            "replay state could not be written: nothing granted (fail closed)",
            "client=laptop",
        ],
        LOG_WAIT,
    );
    std::thread::sleep(SETTLE);
    assert_no_grant_line(f, mark, what);
    f.assert_closed(Family::V4, 22, what);
    line
}

/// The state directory becomes read-only: no grant (fail closed), logged and counted; once
/// it is writable again, the next knock is granted.
#[test]
fn fault_state_dir_read_only_fails_closed_and_recovers() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-state-ro");
    f.start();
    let state_dir = f.lab.path("state");
    let m = NsMount::bind(f.daemon().pid(), &state_dir);
    m.set_read_only(true);
    let line = knock_fails_closed(&f, "state dir read-only");
    assert!(line.contains("Read-only file system"), "{line}");
    let s = status(&f);
    assert_eq!(counter(&s, "state_write_failures"), 1, "{s}");
    assert_eq!(counter(&s, "leases_opened"), 0, "{s}");
    assert_eq!(s["clients"][0]["last_result"], "state_write_failed", "{s}");

    m.set_read_only(false);
    knock_is_granted(&f);
    let s = status(&f);
    assert_eq!(counter(&s, "state_write_failures"), 1, "{s}");
    assert_eq!(counter(&s, "leases_opened"), 1, "{s}");
    replay_state_in(&state_dir).unwrap();
    drop(m);
}

/// The state directory is full (a 16 KiB tmpfs): no grant (fail closed), logged and counted;
/// once there is space again, the next knock is granted and the file is intact.
#[test]
fn fault_state_dir_full_fails_closed_and_recovers() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-state-full");
    f.start();
    let state_dir = f.lab.path("state");
    let m = NsMount::tmpfs(f.daemon().pid(), &state_dir, "16k");
    m.fill();
    let mut lines = Vec::new();
    for i in 1..=2 {
        lines.push(knock_fails_closed(
            &f,
            &format!("state dir full, knock {i}"),
        ));
        // The next knock must have a later timestamp than the refused one.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        lines.iter().all(|l| l.contains("No space left on device")),
        "{lines:?}"
    );
    let s = status(&f);
    assert_eq!(counter(&s, "state_write_failures"), 2, "{s}");
    assert_eq!(counter(&s, "leases_opened"), 0, "{s}");

    m.unfill();
    knock_is_granted(&f);
    let s = status(&f);
    assert_eq!(counter(&s, "state_write_failures"), 2, "{s}");
    // A fresh tmpfs: no snapshot, the journal sesamed created there.
    let entries = check_replay_state(None, Some(&m.read("replay.journal"))).unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    eprintln!("state dir full: {}", lines[0]);
    drop(m);
}

/// A crash in the middle of a state write: a leftover temporary file is ignored (the last
/// complete state is used), while a truncated or empty state file stops sesamed with a clear
/// error instead of starting with empty state.
#[test]
fn fault_truncated_state_file_is_refused_and_a_partial_write_is_ignored() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-state-trunc");
    f.spec.knock.step_seconds = 60;
    f.start();
    let client = f.lab.addr(Host::Client, Family::V4);
    let cap = f
        .lab
        .capture(Host::Client, CLIENT_IF, "knock", "udp or tcp");
    let mark = f.mark();
    f.knock(&[]);
    expect_grant_line(&f, mark, client);
    cap.stop();
    f.stop_daemon();
    let state = f.lab.path("state/replay.state");
    let full = std::fs::read(&state).unwrap();
    check_state_file(&full).unwrap();

    // Killed between writing the temporary file and renaming it: the temporary file holds a
    // partial write; the state file is the previous complete one.
    let tmp = f.lab.path("state/replay.state.tmp");
    std::fs::write(&tmp, &full[..full.len() / 2]).unwrap();
    f.daemon = Some(launch_sesamed(&f.lab, &f.config, &[], &[]));
    let mark = f.mark();
    replay_capture(&f, Host::Client, &f.lab.path("knock.pcap"), Family::V4);
    f.expect_reject(mark, client, "replay");
    std::thread::sleep(Duration::from_millis(300));
    assert_no_grant_line(
        &f,
        mark,
        "replay after a restart with a partial temporary file",
    );
    f.stop_daemon();
    assert_eq!(
        std::fs::read(&state).unwrap(),
        full,
        "the state file is untouched"
    );

    // A truncated (or empty) state file: refuse to start.
    for (case, cut) in [
        ("half", full.len() / 2),
        ("all but the last byte", full.len() - 1),
        ("empty", 0),
    ] {
        std::fs::write(&state, &full[..cut]).unwrap();
        let (code, lines) = sesamed_run_to_exit(&f.lab, &f.config, &[], &[]);
        let all = lines.join("\n");
        assert_eq!(code, Some(1), "{case}: exit status; output:\n{all}");
        let errors: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("sesamed: "))
            .collect();
        assert_eq!(errors.len(), 1, "{case}: one error line:\n{all}");
        assert!(
            errors[0].contains("corrupt replay state") && errors[0].contains("replay.state"),
            "{case}: {}",
            errors[0]
        );
        assert!(!all.contains("ready"), "{case}: started:\n{all}");
        if cut == full.len() / 2 {
            eprintln!("truncated state file: {}", errors[0]);
        }
    }
    std::fs::write(&state, &full).unwrap();
    f.daemon = Some(launch_sesamed(&f.lab, &f.config, &[], &[]));
}
