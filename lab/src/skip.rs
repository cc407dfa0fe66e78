//! The skip policy: outside CI a test that lacks root or a tool records a skip and returns; in
//! CI (`CI=true`) the same test fails, because there nothing may be skipped.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use crate::netns;

/// True when running in CI (`CI=true`), where missing privileges are a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The environment variable naming the file where [`skip`] records each skipped test
/// (`scripts/test` sets it and counts the lines).
pub const SKIP_LOG_ENV: &str = "SESAME_SKIP_LOG";

/// Says that the running test (or a part of it) is skipped and why: a `SKIPPED (not CI):`
/// line on stderr, and a line `TEST<TAB>WHY` appended to the file that `SESAME_SKIP_LOG` names,
/// so that a skipped test is counted as skipped rather than passed (`scripts/test`). TEST is
/// the test's name (libtest names each test's thread after it). Panics in CI: there a skip is
/// a failure.
pub fn skip(why: &str) {
    assert!(!in_ci(), "{why} (CI=true: nothing may be skipped)");
    eprintln!("SKIPPED (not CI): {why}");
    record_skip(why);
}

/// Appends `TEST<TAB>WHY` to the skip log, if there is one. One `write` with O_APPEND: lines
/// of tests running at once do not mix.
fn record_skip(why: &str) {
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => std::env::args()
            .next()
            .unwrap_or_else(|| "a test".to_owned()),
    };
    let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot record a skipped test in {} ({SKIP_LOG_ENV}): {e}",
            Path::new(&path).display()
        );
    }
}

/// True if this process can create network namespaces and load nftables rules in them.
/// Otherwise panics when `CI=true` (the tests must fail there), or records the skip ([`skip`])
/// and returns false.
pub fn require_netns() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(netns::probe) {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("end-to-end tests need root, ip netns and nft: {why}"),
        Err(why) => {
            skip(&format!(
                "end-to-end tests need root, ip netns and nft: {why}"
            ));
            false
        }
    }
}
