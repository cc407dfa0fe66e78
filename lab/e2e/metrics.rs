//! The Prometheus scrape endpoint (`[metrics] listen`), scraped with a real HTTP client (curl)
//! in the server's namespace: the same metrics as `sesamed status --prometheus`, nothing
//! listening when the section is absent, and nothing but GET/HEAD of `/metrics` answered with
//! metrics.

use sesame_tests::{Family, Host, require_netns, text};

use crate::common::Fixture;
use crate::operator::sesamed_ok;

/// `curl ARGS` in the server namespace: (exit code, stdout).
fn curl(f: &Fixture, args: &[&str]) -> (Option<i32>, String) {
    let o = f.lab.run(Host::Server, "curl", args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// The value of one series in a Prometheus text exposition.
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_endpoint_serves_what_status_prints() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("metrics");
    f.spec.extra_top = "\n[metrics]\nlisten = \"127.0.0.1:9811\"\n".to_owned();
    f.start();
    f.daemon().expect(
        &["metrics=http://127.0.0.1:9811/metrics"],
        std::time::Duration::from_secs(1),
    );
    let mark = f.mark();
    f.knock(&[]);
    f.expect_grant(mark, f.lab.addr(Host::Client, Family::V4));
    let (code, scraped) = curl(&f, &["-sS", "--fail", "http://127.0.0.1:9811/metrics"]);
    assert_eq!(code, Some(0), "{scraped}");
    let status = sesamed_ok(&f, &["status", "--prometheus"]);
    for series in [
        "sesamed_grants_total",
        "sesamed_leases_opened_total",
        "sesamed_packets_seen_total",
    ] {
        let (a, b) = (value(&scraped, series), value(&status, series));
        assert!(a.is_some(), "{series} missing from the scrape:\n{scraped}");
        assert!(
            a <= b && a >= Some(1),
            "{series}: scraped {a:?}, status {b:?}"
        );
    }
    let names = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(names(&scraped), names(&status), "the same metrics");
    // The capture socket's drops, a number in both (none on a quiet link).
    for text in [&scraped, &status] {
        assert_eq!(
            value(text, "sesamed_capture_drops_total"),
            Some(0),
            "the capture drops:\n{text}"
        );
    }
    // One client, payload "required": the live ports fit in a classic BPF program.
    assert!(
        scraped.contains("sesamed_capture_filter_info{filter=\"classic\","),
        "the capture filter in use:\n{scraped}"
    );
    // Only GET and HEAD of /metrics.
    let (_, head) = curl(
        &f,
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9811/other",
        ],
    );
    assert_eq!(head, "404");
    let (_, post) = curl(
        &f,
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--data",
            "x",
            "http://127.0.0.1:9811/metrics",
        ],
    );
    assert_eq!(post, "405");
    // Not reachable from the client: it listens on loopback only.
    let (code, _) = {
        let o = f.lab.run(
            Host::Client,
            "curl",
            &[
                "-sS",
                "--max-time",
                "2",
                &format!("http://{}:9811/metrics", f.server(Family::V4)),
            ],
        );
        (o.status.code(), text(&o))
    };
    assert_ne!(code, Some(0), "the endpoint answered the client");
}

#[test]
fn without_a_metrics_section_nothing_listens() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("metrics-off");
    f.start();
    let (code, out) = curl(
        &f,
        &["-sS", "--max-time", "2", "http://127.0.0.1:9811/metrics"],
    );
    assert_eq!(code, Some(7), "curl should fail to connect: {out}");
}
