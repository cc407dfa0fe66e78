//! The live-port capture filter (issue 14): the kernel admits only the ports of the knocks that
//! are valid in the window (every client's knock and payload ports, the window and the step
//! after it), replaced when the step turns. With 3-second steps the test knocks across
//! several turns (right after a turn, and just before one so that the knock's packets straddle
//! it), all of which must open; then floods random ports of the knock range and reads how many
//! packets reached sesamed (`packets_seen` of `sesamed status`). The same run with
//! `SESAMED_CAPTURE_FILTER=range` (the filter before this work) is the control: every flood
//! packet reaches it there, so the test fails if the live filter admitted the range.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sesame_tests::{Family, Host, require_netns};

use crate::common::Fixture;
use crate::flood::{Flood, FloodSpec, counter, status};

const STEP_MS: u64 = 3000;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sleeps until `at` ms into a step.
fn wait_until_step_offset(at: u64) {
    let into = unix_ms() % STEP_MS;
    let wait = if into < at {
        at - into
    } else {
        STEP_MS - into + at
    };
    std::thread::sleep(Duration::from_millis(wait));
}

/// What one mode measured: knocks opened / tried, flood packets sent, packets sesamed saw
/// during the flood, and the distinct live-counter ranges the filter was built for.
struct Run {
    opened: u32,
    tried: u32,
    sent: u64,
    seen: u64,
    filters: Vec<String>,
}

fn run(mode: &str, expect_log: &str) -> Run {
    let mut f = Fixture::new(&format!("capf-{mode}"));
    f.spec.knock.step_seconds = (STEP_MS / 1000) as u32;
    f.spec.knock.skew_steps = 1;
    f.spec.knock.timeout_ms = 2000;
    f.spec.knock.port_range = (20000, 21999);
    f.spec.lease_seconds = 30;
    f.daemon_env = vec![
        ("SESAMED_CAPTURE_FILTER", mode.to_owned()),
        ("RUST_LOG", "info,sesame_server::capture=debug".to_owned()),
    ];
    f.start();
    f.daemon().expect(&[expect_log], Duration::from_secs(5));
    let client = f.lab.addr(Host::Client, Family::V4);
    let (mut opened, mut tried) = (0, 0);
    // Right after a turn (the filter is being replaced), and just before one.
    for at in [30, 2900, 100, 2950, 10] {
        wait_until_step_offset(at);
        let mark = f.mark();
        tried += 1;
        f.knock(&[]);
        if f.daemon()
            .wait_for_after(
                mark,
                &[" granted client=laptop", &format!("source={client}")],
                Duration::from_secs(3),
            )
            .is_some()
            && f.opens(Host::Client, Family::V4, 22)
        {
            opened += 1;
        }
    }
    // The filter follows the step tables, which sesamed refreshes on its twice-a-second tick
    // (and builds off the packet thread): the line for the last turn can come a few hundred
    // milliseconds after the knock right behind it, later on a loaded machine. Wait for it.
    let live_filters = |f: &Fixture| -> Vec<String> {
        let mut v: Vec<String> = f
            .daemon()
            .matching(0, &["capture filter: ", "live ports (counters "])
            .iter()
            .filter_map(|l| {
                l.split("(counters ")
                    .nth(1)?
                    .split(')')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        v.dedup();
        v
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let mut filters = live_filters(&f);
    while mode != "range" && filters.len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        filters = live_filters(&f);
    }
    // A flood of random ports of the range, 2 000 spoofed sources, 4 000 packets/s.
    let before = status(&f);
    let mut spec = FloodSpec::new("udp", Family::V4, 2000);
    spec.rate = 4000;
    let flood = Flood::start(&f, &spec, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let report = flood.finish();
    std::thread::sleep(Duration::from_millis(500));
    let after = status(&f);
    let sent = report["packets"].as_u64().unwrap_or(0);
    let seen = counter(&after, "packets_seen") - counter(&before, "packets_seen");
    eprintln!(
        "capture filter {mode}: knocks {opened}/{tried}; flood {sent} packets, sesamed saw {seen}; filters for counters {filters:?}"
    );
    Run {
        opened,
        tried,
        sent,
        seen,
        filters,
    }
}

fn check_live(mode: &str, expect_log: &str) {
    if !require_netns() {
        return;
    }
    let live = run(mode, expect_log);
    let range = run("range", "the whole knock range");
    assert_eq!(
        live.opened, live.tried,
        "every knock opens across step turns ({mode})"
    );
    assert_eq!(
        range.opened, range.tried,
        "every knock opens (range filter)"
    );
    // The knocks took more than two steps: the filter was replaced at least twice.
    assert!(
        live.filters.len() >= 3,
        "the live filter must be replaced as the steps turn: {:?}",
        live.filters
    );
    assert!(
        live.sent > 5000 && range.sent > 5000,
        "the floods ran: {} / {}",
        live.sent,
        range.sent
    );
    // The control: with the range filter every flood packet reaches sesamed.
    assert!(
        range.seen * 10 >= range.sent * 9,
        "range filter: sesamed saw {} of {} flood packets",
        range.seen,
        range.sent
    );
    // 1 client: at most 16 of the 2 000 ports are live (4 ports, 4 counters): under 1 %.
    assert!(
        live.seen * 50 <= live.sent,
        "{mode} filter: sesamed saw {} of {} random in-range packets (more than 2 %)",
        live.seen,
        live.sent
    );
}

#[test]
fn live_ports_classic_bpf_admit_knocks_across_step_turns_and_drop_garbage() {
    check_live("auto", "a classic BPF program of");
}

#[test]
fn live_ports_ebpf_bitmap_admit_knocks_across_step_turns_and_drop_garbage() {
    check_live("ebpf", "the eBPF bitmap");
}
