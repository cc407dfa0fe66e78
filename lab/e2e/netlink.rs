//! Grants over netlink (`[firewall] netlink`, the default): the element lands in the kernel's
//! set with the lease as its timeout, a refresh extends it, and no `nft` process runs for a
//! grant; with `netlink = false` every grant runs `nft -f`.

use std::time::{Duration, Instant};

use sesame_tests::{Family, Host, require_netns};

use crate::common::Fixture;
use crate::faults::{real_nft, start_fixture, with_firewall_line, write_script};
use crate::lease::assert_ends_on_time;

/// Starts a fixture whose `nft` is a wrapper that records every invocation's arguments in
/// `nft-calls.log` (one line per run), then runs the real `nft` with the same stdin.
fn fixture_with_recorded_nft(tag: &str, netlink: bool) -> (Fixture, std::path::PathBuf) {
    let mut f = Fixture::new(tag);
    f.spec.lease_seconds = 3;
    let calls = f.lab.path("nft-calls.log");
    let wrapper = write_script(
        &f.lab,
        "nft-recorder.sh",
        &format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            calls.display(),
            real_nft().display()
        ),
    );
    let line = format!("nft = {:?}\nnetlink = {netlink}", wrapper.to_string_lossy());
    start_fixture(&mut f, |c| with_firewall_line(&c, &line), &[], &[]);
    (f, calls)
}

/// `nft -f -` runs recorded so far (the table's setup, and grants when not over netlink).
fn transactions(calls: &std::path::Path) -> usize {
    std::fs::read_to_string(calls)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim() == "-f -")
        .count()
}

/// The element of `granted4`/`granted6` for `addr`, as `nft list set` shows it.
fn element_line(f: &Fixture, set: &str, addr: &str) -> Option<String> {
    let out = f
        .lab
        .run_ok(Host::Server, "nft", &["list", "set", "inet", "sesame", set]);
    out.split([',', '{', '}', '\n'])
        .map(str::trim)
        .find(|e| e.starts_with(&format!("{addr} . tcp . 22")))
        .map(str::to_owned)
}

/// The `timeout` of an element line as nft prints it (`timeout 3s`, `timeout 2s996ms`), in ms.
fn kernel_timeout_ms(element: &str) -> Option<u64> {
    let text = element
        .split("timeout ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let mut total = 0u64;
    let mut digits = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                1
            }
            ('s', _) => 1_000,
            ('m', _) => 60_000,
            ('h', _) => 3_600_000,
            ('d', _) => 86_400_000,
            _ => return None,
        };
        total += n * unit;
    }
    digits.is_empty().then_some(total)
}

#[test]
fn kernel_timeouts_parse_as_nft_prints_them() {
    assert_eq!(
        kernel_timeout_ms("1.2.3.4 . tcp . 22 timeout 3s expires 2s"),
        Some(3_000)
    );
    assert_eq!(
        kernel_timeout_ms("x timeout 2s996ms expires 1s"),
        Some(2_996)
    );
    assert_eq!(kernel_timeout_ms("x timeout 1m5s"), Some(65_000));
    assert_eq!(kernel_timeout_ms("x expires 1s"), None);
}

#[test]
fn grants_go_over_netlink_without_running_nft() {
    if !require_netns() {
        return;
    }
    let (f, calls) = fixture_with_recorded_nft("netlink-on", true);
    let setup = transactions(&calls);
    assert_eq!(setup, 1, "one `nft -f -` builds the table");
    for family in [Family::V4, Family::V6] {
        let mark = f.mark();
        let profile = f.export_profile(family);
        f.knock_from(Host::Client, &profile, &[]);
        f.expect_grant(mark, f.lab.addr(Host::Client, family));
        assert!(
            f.opens(Host::Client, family, 22),
            "{family:?}: the grant must open; ruleset:\n{}",
            f.lab.server_ruleset()
        );
        let (set, addr) = match family {
            Family::V4 => ("granted4", f.lab.v4(Host::Client).to_string()),
            Family::V6 => ("granted6", f.lab.v6(Host::Client).to_string()),
        };
        let element = element_line(&f, set, &addr).unwrap_or_else(|| {
            panic!(
                "no element for {addr} in {set}:\n{}",
                f.lab.server_ruleset()
            )
        });
        // The timeout is what is left of the lease when the transaction runs: 3 s, or a few
        // milliseconds less on a loaded machine.
        let timeout = kernel_timeout_ms(&element);
        assert!(
            timeout.is_some_and(|ms| (2_500..=3_000).contains(&ms)),
            "the element carries the lease as its kernel timeout (2.5..=3 s): {element}"
        );
    }
    assert_eq!(
        transactions(&calls),
        setup,
        "a grant over netlink runs no `nft -f`; calls:\n{}",
        std::fs::read_to_string(&calls).unwrap_or_default()
    );
    let log = f.daemon().output();
    assert!(
        !log.contains("over netlink failed"),
        "the kernel took every netlink transaction:\n{log}"
    );

    // A knock after more than half the lease refreshes it (delete and add in one netlink
    // transaction): the lease then ends a full lease after the second grant, not the first.
    std::thread::sleep(Duration::from_millis(2000));
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    let since = Instant::now();
    assert_ends_on_time(&f, Family::V4, since);
    assert_eq!(transactions(&calls), setup, "the refresh ran no `nft -f`");
}

#[test]
fn with_netlink_false_every_grant_runs_nft() {
    if !require_netns() {
        return;
    }
    let (f, calls) = fixture_with_recorded_nft("netlink-off", false);
    let setup = transactions(&calls);
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(f.opens(Host::Client, Family::V4, 22), "the grant must open");
    assert_eq!(
        transactions(&calls),
        setup + 1,
        "one `nft -f -` per grant; calls:\n{}",
        std::fs::read_to_string(&calls).unwrap_or_default()
    );
}
