//! Scenario 6: a full UDP scan of the knock range from one source opens nothing and does not
//! stop the legitimate client knocking at the same time from another address. The scan is the
//! harness's own in-order sweep (`sesame-netprobe scan`, every port in turn, every second);
//! nmap's scans (UDP, SYN, randomised) are in `scan_nmap.rs`.

use std::time::Duration;

use sesame_tests::{Family, Host, require_netns};

use crate::common::Fixture;
use crate::flood::counter;

fn scenario(tag: &str, payload: &str) {
    let mut f = Fixture::new(tag);
    f.spec.knock.payload = payload.to_owned();
    f.spec.knock.port_range = (20000, 21999);
    f.spec.lease_seconds = 30;
    f.start();
    let before = crate::flood::status(&f);
    let server = f.server(Family::V4).to_string();
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    let mark = f.mark();
    // About 2000 datagrams a second: the whole range, in order, every second, for 6 s.
    let mut scan = f.lab.spawn(
        Host::Attacker,
        "scan",
        sesame_tests::bin("sesame-netprobe"),
        &[
            "scan",
            &server,
            "20000",
            "21999",
            "--duration-ms",
            "6000",
            "--pps",
            "2000",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(1500));
    // The legitimate client knocks in the middle of the scan.
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "the client must get in during a scan"
    );
    let status = scan.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "scan: {status:?} {}",
        scan.output()
    );
    assert!(scan.output().contains("scanned"), "{}", scan.output());
    std::thread::sleep(Duration::from_millis(500));
    let from_attacker = format!("source={attacker}");
    let bad = f.daemon().matching(mark, &["granted", &from_attacker]);
    assert!(bad.is_empty(), "the scan opened something: {bad:?}");
    assert!(
        !f.connects(Host::Attacker, Family::V4, 22),
        "the scanner must not get in; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    let grants = f.grants(mark);
    assert_eq!(grants.len(), 1, "exactly the client's grant: {grants:?}");
    if payload != "required" {
        // A sequence alone opens: the reset rule must meet every scanned port, so the capture
        // filter admits the whole range (a live-port filter let an in-order sweep complete
        // every ascending sequence).
        let after = crate::flood::status(&f);
        let in_range = counter(&after, "packets_in_range") - counter(&before, "packets_in_range");
        assert!(
            in_range >= 12_000 * 9 / 10,
            "payload = {payload}: sesamed saw only {in_range} of the scan's 12000 in-range packets: {after}"
        );
    }
}

#[test]
fn s6_scan_with_payload_required() {
    if !require_netns() {
        return;
    }
    scenario("s6-scan", "required");
}

/// Without a payload the sequence alone opens: only the reset on stray ports keeps a scan,
/// which hits every port of every client's sequence, from completing one.
#[test]
fn s6_scan_with_sequence_only_knocks() {
    if !require_netns() {
        return;
    }
    scenario("s6-scan-nopayload", "none");
}
