//! Review s22, finding 4: the crash rule's anchor (the newest modification time of the state
//! files, `state::newest_state_file`) had no upper bound. One state file with a time far ahead (a
//! run whose clock had jumped ahead and then crashed, a backup restored from a host with a
//! wrong clock, an operator's `touch -d`) made the next start after a crash refuse every
//! unbound payload and, in `optional` mode, every sequence alone, until that time plus one
//! window; and a clean stop saved that moment (`after_crash <until>`), so clean restarts kept
//! it. A start after a crash now refuses to run when a state file's time is more than
//! `MAX_CLOCK_BEHIND_MS` (a day) ahead of the clock, with a one-line error naming the file
//! (`state::crash_anchor`). Before the fix the rules counted from a year ahead.

#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, SystemTime};

use sesame_proto::UnixMillis;
use sesame_server::state::{
    JOURNAL_NAME, MAX_CLOCK_BEHIND_MS, RUNNING_NAME, crash_anchor, newest_state_file,
};

/// A state directory with a crash marker and a journal modified `ahead` after now.
fn state_dir(tag: &str, ahead: Duration) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("s22-mtime-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in [RUNNING_NAME, JOURNAL_NAME] {
        std::fs::write(dir.join(name), b"").unwrap();
    }
    let file = OpenOptions::new()
        .write(true)
        .open(dir.join(JOURNAL_NAME))
        .unwrap();
    file.set_modified(SystemTime::now() + ahead).unwrap();
    dir
}

fn anchor(dir: &Path) -> (UnixMillis, Result<UnixMillis, String>) {
    let now = UnixMillis::from(SystemTime::now());
    let got = crash_anchor(now, newest_state_file(dir).as_ref()).map_err(|e| e.to_string());
    (now, got)
}

#[test]
fn a_state_file_far_in_the_future_refuses_the_start_naming_the_file() {
    // The crashed run's clock had jumped a year ahead when it wrote its last journal record.
    let dir = state_dir("year", Duration::from_secs(365 * 24 * 3600));
    let (now, got) = anchor(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let err = match got {
        Ok(from) => panic!(
            "the crash rules count from {} days ahead of the clock",
            (from.0 - now.0) / (24 * 3600 * 1000)
        ),
        Err(e) => e,
    };
    assert!(err.contains(JOURNAL_NAME), "{err}");
    assert!(err.contains("ahead of the clock"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn a_clock_behind_by_less_than_the_bound_counts_from_the_state_files() {
    // A start before NTP with a clock an hour behind the crashed run's: the rules count from
    // the file's time (review s21, finding 6), not from this clock.
    let hour = Duration::from_secs(3600);
    let dir = state_dir("hour", hour);
    let (now, got) = anchor(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let from = got.unwrap();
    assert!(from.0 >= now.0 + 3_500_000, "{} ms ahead", from.0 - now.0);
    assert!(from.0 <= now.0 + MAX_CLOCK_BEHIND_MS);
}
