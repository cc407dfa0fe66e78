//! `state_sync = "fence"`: a grant writes its journal record without waiting for the disk
//! while a durable fence (`state_dir/replay.fence`) is ahead of the latest timestamp sesamed
//! accepts. The attacker replays a captured knock after sesamed dies: killed (same boot: the
//! record written without a sync is in the page cache) and after the machine stops (another
//! boot: the records written without a sync are lost). Both replays are refused; a fresh knock
//! opens at once after the first, and once the clock passes the fence after the second.

use std::time::{Duration, Instant};

use sesame_tests::{CLIENT_IF, Family, Host, require_netns, text};

use crate::common::Fixture;

/// Replays the captured knock from `host` (from the client's namespace: what an attacker who
/// spoofs the client's address gets) and returns what sesamed did: `granted`, or the reason
/// of its rejection.
fn replay(f: &Fixture, host: Host, when: &str) -> String {
    replay_outcome(f, host, "knock.pcap", when)
}

/// Replays capture `pcap` (a file in the lab directory) from `host` to the server's IPv4
/// address and returns what sesamed did with the replayed knock: `granted`, or the reason of
/// its rejection (within 5 s, or the test fails).
pub(crate) fn replay_outcome(f: &Fixture, host: Host, pcap: &str, when: &str) -> String {
    let outcome = replay_within(f, host, pcap, Duration::from_secs(5));
    outcome.unwrap_or_else(|| {
        panic!(
            "replay from {host:?} {when}: neither refused nor granted:\n{}",
            f.daemon().output()
        )
    })
}

/// Replays capture `pcap` from `host` as [`replay_outcome`] does; `None` when sesamed logs
/// neither a grant nor a rejection for it within `wait` (a knock whose step is outside the
/// window matches no port, so nothing is logged).
pub(crate) fn replay_within(f: &Fixture, host: Host, pcap: &str, wait: Duration) -> Option<String> {
    let mark = f.mark();
    let o = f.lab.netprobe(
        host,
        &[
            "replay".to_owned(),
            f.lab.path(pcap).to_string_lossy().into_owned(),
            f.server(Family::V4).to_string(),
        ],
    );
    assert!(o.status.success(), "replay: {}", text(&o));
    let source = format!("source={}", f.lab.addr(host, Family::V4));
    let deadline = Instant::now() + wait;
    loop {
        let d = f.daemon();
        if !d.matching(mark, &[" granted client=", &source]).is_empty() {
            return Some("granted".to_owned());
        }
        if let Some(line) = d.matching(mark, &["rejected", &source]).first() {
            return Some(
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("reason="))
                    .unwrap_or("?")
                    .to_owned(),
            );
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fence_ms(f: &Fixture) -> u64 {
    let text = std::fs::read_to_string(f.lab.path("state/replay.fence")).expect("replay.fence");
    text.split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("fence file: {text:?}"))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn fence_replays_after_a_kill_and_after_a_machine_stop_are_refused() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("fence");
    // Two-minute steps keep the captured knock's step in the window for the whole test; a
    // short max_ahead_ms keeps the wait after the "machine stop" short (fence = now +
    // max_ahead_ms + 5 s).
    f.spec.knock.step_seconds = 120;
    f.spec.knock.extra.push_str("max_ahead_ms = 2000\n");
    f.spec.extra_top.push_str("state_sync = \"fence\"\n");
    f.start();
    let fence = fence_ms(&f);
    assert!(
        fence > unix_ms() + 2000,
        "the fence is ahead of now + max_ahead_ms: {fence}"
    );
    let cap = f
        .lab
        .capture(Host::Client, CLIENT_IF, "knock", "udp or tcp");
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    cap.stop();
    let journal = f.lab.path("state/replay.journal");
    let header_len = "sesame-replay-journal 2\n".len() as u64;
    assert!(
        std::fs::metadata(&journal).unwrap().len() > header_len,
        "the grant's record is in the journal"
    );
    assert_eq!(replay(&f, Host::Attacker, "while running"), "replay");

    // sesamed killed: same boot, the record is in the page cache.
    let mut daemon = f.daemon.take().unwrap();
    daemon.kill9();
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    assert_eq!(replay(&f, Host::Client, "after kill -9"), "replay");
    assert_eq!(replay(&f, Host::Attacker, "after kill -9"), "replay");
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));

    // The machine stops: what was written without a sync is lost (the journal back to its
    // header), and the next start is in another boot.
    let mut daemon = f.daemon.take().unwrap();
    daemon.kill9();
    let fence_before = fence_ms(&f);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(header_len)
        .unwrap();
    std::fs::write(
        f.lab.path("state/sesamed.running"),
        "00000000-0000-0000-0000-000000000000",
    )
    .unwrap();
    f.daemon = Some(f.lab.start_sesamed(&f.config));
    let log = f.daemon().output();
    assert!(
        log.contains("the machine stopped while state_sync = \"fence\""),
        "sesamed says what it refuses after the machine stop:\n{log}"
    );
    // The journal lost the record: only the fence refuses the replay (without it, the one
    // spoofed from the client's address is granted).
    assert_eq!(
        replay(&f, Host::Client, "after the machine stop"),
        "replay",
        "a replay spoofed from the client's address after the machine stop"
    );
    assert_eq!(
        replay(&f, Host::Attacker, "after the machine stop"),
        "replay"
    );
    assert!(!f.connects(Host::Attacker, Family::V4, 22));
    // A fresh knock opens once the clock has passed the old fence.
    let wait = fence_before.saturating_sub(unix_ms()) + 500;
    assert!(
        wait < 15_000,
        "the fence is at most max_ahead_ms + 5 s ahead"
    );
    std::thread::sleep(Duration::from_millis(wait));
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(f.opens(Host::Client, Family::V4, 22));
}

#[test]
fn a_bad_state_sync_value_is_one_clear_error() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("fence-bad");
    f.write();
    let mut spec = f.spec.clone();
    spec.extra_top.push_str("state_sync = \"sometimes\"\n");
    let bad = f.lab.write("bad.toml", &spec.to_toml());
    let o = f
        .lab
        .sesamed(&["check", "--config", &bad.to_string_lossy()]);
    let err = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("state_sync") && err.contains("\"grant\" or \"fence\""),
        "{err}"
    );
}
