//! The firewall program missing or failing (at start, at run time), and sesame's table
//! flushed by someone else.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sesame_tests::{CLIENT_IF, Family, Host, require_netns};

use crate::common::{Fixture, LOG_WAIT, SETTLE};

use super::{
    accepted_in, assert_no_grant_line, check_state_file, counter, expect_grant_line,
    launch_sesamed, real_nft, replay_capture, replay_state_in, sesamed_run_to_exit, start_fixture,
    status, with_firewall_line, write_script,
};

/// `nft` missing, or failing, when sesamed starts: one clear error line, exit status 1, no
/// `ready`, no table left behind.
#[test]
fn fault_nft_missing_or_failing_at_start_is_one_clear_error() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-nft-start");
    f.write();
    let base = f.spec.to_toml();
    let failing = write_script(
        &f.lab,
        "nft-broken.sh",
        "#!/bin/sh\necho 'Error: simulated nft failure (sesame fault test)' >&2\nexit 1\n",
    );
    let cases = [
        (
            "missing",
            "/nonexistent/sesame-fault/nft".to_owned(),
            vec![
                "firewall setup failed",
                "cannot run /nonexistent/sesame-fault/nft",
            ],
        ),
        (
            "failing",
            failing.to_string_lossy().into_owned(),
            vec!["firewall setup failed", "simulated nft failure"],
        ),
    ];
    for (case, nft, want) in cases {
        let config = with_firewall_line(&base, &format!("nft = {nft:?}"));
        f.lab.write("sesamed.toml", &config);
        let started = Instant::now();
        let (code, lines) = sesamed_run_to_exit(&f.lab, &f.config, &[], &[]);
        let all = lines.join("\n");
        assert_eq!(code, Some(1), "nft {case}: exit status; output:\n{all}");
        let errors: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("sesamed: "))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "nft {case}: one error line; output:\n{all}"
        );
        for w in &want {
            assert!(
                errors[0].contains(w),
                "nft {case}: error lacks `{w}`: {}",
                errors[0]
            );
        }
        assert!(
            !all.contains("ready"),
            "nft {case}: must not get ready:\n{all}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nft {case}: took {:?} to fail",
            started.elapsed()
        );
        let tables = f.lab.run_ok(Host::Server, "nft", &["list", "tables"]);
        assert!(
            !tables.contains("sesame"),
            "nft {case}: table left: {tables}"
        );
        eprintln!("nft {case}: {}", errors[0]);
    }
}

/// `nft` starts failing while sesamed runs: the knock is consumed (its replay state was saved
/// first), the grant is refused and logged, sesamed keeps running, and once `nft` works again
/// a fresh knock opens while the failed knock, replayed, does not.
#[test]
fn fault_nft_failing_at_run_time_refuses_the_grant_and_keeps_serving() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-nft-run");
    // Replays must land in the knock's step (see replay.rs).
    f.spec.knock.step_seconds = 60;
    let flag = f.lab.path("nft-fails");
    let wrapper = write_script(
        &f.lab,
        "nft-wrapper.sh",
        &format!(
            "#!/bin/sh\nif [ -e '{}' ]; then\n  echo 'Error: simulated nft failure (sesame fault test)' >&2\n  exit 1\nfi\nexec '{}' \"$@\"\n",
            flag.display(),
            real_nft().display()
        ),
    );
    // Grants through the wrapper: without this they talk netlink and never run `nft`.
    let line = format!("nft = {:?}\nnetlink = false", wrapper.to_string_lossy());
    start_fixture(&mut f, |c| with_firewall_line(&c, &line), &[], &[]);
    let client = f.lab.addr(Host::Client, Family::V4);

    std::fs::write(&flag, "").unwrap();
    let cap = f
        .lab
        .capture(Host::Client, CLIENT_IF, "failed-knock", "udp or tcp");
    let mark = f.mark();
    f.knock(&[]);
    let failed = f.daemon().expect_after(
        mark,
        &[
            "firewall grant failed",
            "client=laptop",
            "simulated nft failure",
        ],
        LOG_WAIT,
    );
    cap.stop();
    std::thread::sleep(SETTLE);
    assert_no_grant_line(&f, mark, "nft failing");
    assert!(
        f.daemon.as_mut().unwrap().exited().is_none(),
        "sesamed must keep running"
    );
    f.assert_closed(Family::V4, 22, "grant failed");
    let s = status(&f);
    assert_eq!(counter(&s, "grants"), 1, "{s}");
    assert_eq!(counter(&s, "leases_opened"), 0, "{s}");
    assert_eq!(counter(&s, "firewall_failures"), 1, "{s}");
    assert!(s["leases"].as_array().unwrap().is_empty(), "no lease: {s}");
    let entries =
        replay_state_in(&f.lab.path("state")).unwrap_or_else(|e| panic!("state files: {e}"));
    assert!(
        entries
            .iter()
            .any(|l| l.starts_with(&f.client_key.public) && accepted_in(l) == 1),
        "the failed knock was recorded before the grant: {entries:?}"
    );
    eprintln!("while nft fails: {failed}");
    assert_eq!(
        s["clients"][0]["last_result"], "firewall_failed",
        "status tells the grant did not happen: {s}"
    );

    // nft works again. The failed knock was consumed: replayed, it opens nothing.
    std::fs::remove_file(&flag).unwrap();
    let mark = f.mark();
    replay_capture(
        &f,
        Host::Client,
        &f.lab.path("failed-knock.pcap"),
        Family::V4,
    );
    f.expect_reject(mark, client, "replay");
    std::thread::sleep(Duration::from_millis(300));
    assert_no_grant_line(&f, mark, "replay of the knock whose grant failed");
    // A fresh knock opens.
    let mark = f.mark();
    f.knock(&[]);
    expect_grant_line(&f, mark, client);
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "{}",
        f.lab.server_ruleset()
    );
    let s = status(&f);
    assert_eq!(counter(&s, "leases_opened"), 1);
    assert_eq!(s["clients"][0]["last_result"], "granted", "{s}");
    // The state is consistent: a restart reads it.
    f.stop_daemon();
    check_state_file(&std::fs::read(f.lab.path("state/replay.state")).unwrap()).unwrap();
    f.daemon = Some(launch_sesamed(&f.lab, &f.config, &[], &[]));
}

/// notices within seconds, rebuilds it, and the protected service is hidden again.
#[test]
fn fault_table_flushed_by_someone_else_is_rebuilt() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("f-flush");
    start_fixture(&mut f, |c| c, &[], &[]);
    f.assert_closed(Family::V4, 22, "before the flush");
    let mark = f.mark();
    let flushed = Instant::now();
    f.lab.run_ok(Host::Server, "nft", &["flush", "ruleset"]);
    // Right after the flush the service is exposed: that is what the check is for.
    assert!(
        f.lab.connects(
            Host::Client,
            SocketAddr::new(f.lab.addr(Host::Server, Family::V4), 22),
            1500
        ),
        "after nft flush ruleset, nothing hides the service"
    );
    let line = f.daemon().expect_after(
        mark,
        &["firewall table had been removed", "rebuilt"],
        Duration::from_secs(12),
    );
    let took = flushed.elapsed();
    eprintln!(
        "table rebuilt {:.1} s after the flush: {line}",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(11), "took {took:?}");
    assert!(f.lab.server_ruleset().contains("chain gate"));
    f.assert_closed(Family::V4, 22, "after the rebuild");
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
}
