//! Persistent replay state: for every client, keyed by public key, the payloads it had accepted
//! and the steps it was granted in while they may still be in the window, and its floor
//! ([`ReplayState`]); durable before any grant.
//!
//! Two files in `state_dir`. The snapshot, `replay.state`, is written atomically (temporary
//! file, fsync, rename, fsync of the directory):
//!
//! ```text
//! sesame-replay 4
//! <client public key> <floor ms or -> <accepted or -> <steps or -> [action=<ms>]
//! ...
//! sha256 <hex digest of every preceding byte>
//! ```
//!
//! where `<accepted>` is a comma-separated list of `<timestamp ms>:<gate MAC, 32 hex digits>`
//! and `<steps>` one of `<step_seconds>:<counter>`. A client that has run an action has a
//! fifth field, `action=<ms>`: its action floor (the timestamp of the newest accepted payload
//! naming an action; PROTOCOL.md 7.2). A line without it (every line written before action
//! floors existed) has none, which refuses nothing, as 0 would. At a clean shutdown the
//! snapshot also holds every gate MAC the tracker remembers (datagrams that passed the gate but
//! were refused are in no client's state), one per line: `seen <MAC> <client public key>
//! <step_seconds>:<counter> <until ms>` (the step whose gate it passed); and every step some
//! datagram passed the gate for (in `optional` mode such a step gets no sequence-only grant; a
//! refused or burnt payload's step is in no client's state either), one per line: `gated
//! <client public key> <step_seconds>:<counter> <until ms>`. A start keeps each until the later
//! of its `until` and the end of its own window for that step (a start with more skew steps
//! or a longer `timeout_ms` keeps them longer, as a reload does, whatever step lengths they
//! went through). The entries of clients the configuration no longer has are kept too (under
//! their key, for when it comes back). Then the window those expiries were computed for,
//! `window <step_seconds> <skew_steps> <timeout_ms>`: it widens the `seen` lines without a step
//! (`seen <MAC> <client public key> <until ms>`, written before the step was), which still
//! load. After a start after a crash, while its rules hold (unbound payloads refused, no
//! sequence-only grant in `optional` mode, until the end of the last step the crashed run's
//! gate could admit), a clean stop also saves until when: `after_crash <until ms>`, so that a
//! clean restart goes on refusing what the crash lost. And, one per step length, the newest
//! step whose records the tracker had forgotten (or that its window had left at the stop):
//! `forgotten <step_seconds>:<counter>`. A start admits no datagram of that step or an older
//! one of its length, whatever window it has (a wider window would otherwise admit a refused
//! datagram again once its record expired: review s22, finding 2). A snapshot without `gated`,
//! `window`, `after_crash` or `forgotten` lines (written before they existed) still loads (its
//! expiries are taken as computed for the new window; without `forgotten` lines, a start
//! refuses every step before the saved `window` at the start, failing closed). Everything is in time
//! (milliseconds), or names its step length, so a change of `step_seconds` keeps it meaningful.
//!
//! Version 3 is version 2 with the step in the `seen` lines; version 4 is version 3 with the
//! `forgotten` lines (036c110: a sesamed of version 3 before them stopped at such a line with
//! `line N: expected …`, as if the file were damaged). A snapshot that starts with
//! `sesame-replay 2` or `sesame-replay 3` (written before) still loads, through the same parser
//! (so one without `forgotten` lines fails closed as above); the next one written is version 4.
//! A sesamed of before refuses a version-4 snapshot by its first line (`first line is not
//! 'sesame-replay 3' (or 'sesame-replay 2')`, or `… 'sesame-replay 2'` before version 3)
//! rather than misread it, and this one refuses any version it does not know (`sesame-replay
//! 5`, …) with [`StateError::UnknownVersion`], before reading further: docs/SECURITY.md
//! ("Going back to an older sesamed") says how to downgrade without opening a replay window.
//!
//! A grant appends the changed clients to the journal, `replay.journal`, with one write and
//! one `fdatasync` (a fraction of the snapshot's two fsyncs and a rename; BENCHMARKS.md):
//!
//! ```text
//! sesame-replay-journal 2
//! <client public key> <floor> <accepted> <steps> [action=<ms>] <check>
//! ...
//! ```
//!
//! Files of version 1 (protocol 1: a last timestamp and a last counter per client) are
//! ignored: no protocol-1 knock is valid under protocol 2, so they protect nothing. They are
//! replaced by the next write.
//!
//! where `<check>` is the first 16 hex digits of the SHA-256 of the rest of the line. Loading
//! reads the snapshot, then applies the journal's records in order. Every
//! [`COMPACT_AFTER`] records the snapshot is rewritten and the journal emptied (a crash in
//! between only replays records the snapshot already holds).
//!
//! A snapshot that is truncated or altered fails its checksum and is refused with a clear
//! error, and so is a journal record that fails its check anywhere but at the end: starting
//! with less state would make old knocks valid again. A bad *last* journal record is a write
//! that a crash interrupted before its `fdatasync` returned, so before any grant: it is
//! ignored (and overwritten by the next record).
//!
//! Beside them, the crash marker `sesamed.running` ([`RUNNING_NAME`]) is there while sesamed
//! runs: its boot id, then one `window <step_seconds> <skew_steps> <timeout_ms>` line per
//! window the run used. It is replaced atomically like the snapshot (never rewritten in place),
//! so a crash during a write leaves the old marker or the new one. A marker that is there but
//! cannot be read, is empty or has a line that is not a window fails closed: the start after
//! it assumes the widest window the configuration allows ([`previous_windows`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sesame_keys::PublicKey;
use sesame_proto::UnixMillis;
use sesame_proto::tracker::{
    AcceptedPayload, GatedStep, ReplayState, SavedWindow, SeenMac, UsedStep,
};
use sesame_proto::wire::MAC_LEN;

const HEADER: &str = "sesame-replay 4";
/// The header of the snapshots written before the `forgotten` lines (and of those written
/// with them from 036c110 until version 4): read, never written.
const HEADER_V3: &str = "sesame-replay 3";
/// The header of the snapshots written before the `seen` lines named their step: read, never
/// written.
const HEADER_V2: &str = "sesame-replay 2";
/// The snapshot headers this sesamed reads (version 1's is ignored: [`HEADER_V1`]).
const READ_HEADERS: [&str; 3] = [HEADER, HEADER_V3, HEADER_V2];
/// What every snapshot header starts with; the version follows.
const HEADER_PREFIX: &str = "sesame-replay ";
const JOURNAL_HEADER: &str = "sesame-replay-journal 2";
const HEADER_V1: &str = "sesame-replay 1";
/// The prefix of a state line's optional fifth field, the client's action floor.
const ACTION_FIELD: &str = "action=";
const JOURNAL_HEADER_V1: &str = "sesame-replay-journal 1";
/// The snapshot's name inside `state_dir`.
pub const FILE_NAME: &str = "replay.state";
/// The journal's name inside `state_dir`.
pub const JOURNAL_NAME: &str = "replay.journal";
/// Journal records after which the snapshot is rewritten and the journal emptied.
pub const COMPACT_AFTER: usize = 4096;
/// The marker that sesamed runs on this state (removed at a clean shutdown): found at start,
/// it means the last run crashed. Its first line is the boot id (empty if unknown); each
/// further line, `window <step_seconds> <skew_steps> <timeout_ms>`, a window the run used (the
/// start's, then each wider one a reload brought, written before the reload takes effect), so
/// that a start after a crash refuses what any of them let through the gate. Replaced
/// atomically (temporary file [`RUNNING_TMP_NAME`], fsync, rename, fsync of the directory),
/// never rewritten in place: a crash during a write leaves the old marker or the new one,
/// whole. A marker that cannot be read or has a line that is not a window is damaged, and a
/// start after it assumes the widest window ([`previous_windows`]). A marker of before the
/// window lines (the boot id alone, no newline) names no window.
pub const RUNNING_NAME: &str = "sesamed.running";
/// The temporary file of the crash marker's atomic replacement.
pub const RUNNING_TMP_NAME: &str = "sesamed.running.tmp";
/// The most skew steps the configuration allows (`knock.skew_steps`, config.rs): a damaged
/// crash marker is read as a window this wide.
pub const WIDEST_SKEW_STEPS: u32 = 10;
/// The longest `knock.timeout_ms` the configuration allows (config.rs): a damaged crash marker
/// is read as a window this long.
pub const WIDEST_TIMEOUT_MS: u64 = 600_000;
/// The first word of a window line (the crash marker's, the snapshot's).
const WINDOW_FIELD: &str = "window";
/// The first word of the snapshot's line saying until when a start after a crash refuses.
const CRASH_FIELD: &str = "after_crash";
/// The first word of a snapshot's forgotten-step line.
const FORGOTTEN_FIELD: &str = "forgotten";
/// Every file sesamed keeps in `state_dir` (anything else there stops a start that hands the
/// directory to a service account).
pub const OWN_FILES: [&str; 10] = [
    FILE_NAME,
    JOURNAL_NAME,
    "replay.state.tmp",
    FENCE_NAME,
    "replay.fence.tmp",
    RUNNING_NAME,
    RUNNING_TMP_NAME,
    crate::instance::LOCK_NAME,
    LEASES_NAME,
    "leases.tmp",
];

/// The fence of `state_sync = "fence"` (`sesame-fence 1 <ms> <check>`): sesamed accepted
/// nothing stamped after it. Rewritten atomically a few times a minute, ahead of the clock.
pub const FENCE_NAME: &str = "replay.fence";
const FENCE_HEADER: &str = "sesame-fence 1";

/// Makes `fence` durable in `dir` (temporary file, fsync, rename, fsync of the directory).
pub fn write_fence(dir: &Path, fence: UnixMillis) -> std::io::Result<()> {
    let body = format!("{FENCE_HEADER} {}", fence.0);
    let text = format!("{body} {}\n", check16(&body));
    replace_durably(
        dir,
        FENCE_NAME,
        &format!("{FENCE_NAME}.tmp"),
        text.as_bytes(),
    )
    .map_err(|(_, e)| e)
}

/// Reads the fence of [`write_fence`]: `Ok(None)` if there is none, an error if it is
/// unreadable or fails its check.
pub fn read_fence(dir: &Path) -> std::io::Result<Option<UnixMillis>> {
    let bytes = match read_state_file(&dir.join(FENCE_NAME)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a valid fence file");
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let line = text.strip_suffix('\n').ok_or_else(bad)?;
    let (body, check) = line.rsplit_once(' ').ok_or_else(bad)?;
    let ms = body
        .strip_prefix(FENCE_HEADER)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(bad)?;
    if check16(body) != check {
        return Err(bad());
    }
    ms.parse::<u64>()
        .map(|m| Some(UnixMillis(m)))
        .map_err(|_| bad())
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): written pages survive a crash of
/// sesamed, not of the machine, so a journal record written without a sync is lost only if
/// the boot changed.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// How the last run on `dir` ended: `None` cleanly (or never ran), `Some(same_boot)` without
/// removing its marker (a crash), `same_boot` telling whether it ran in this boot (false when
/// unknown). Read before [`JournalStore::mark_running`].
pub fn previous_run(dir: &Path) -> Option<bool> {
    match read_state_file(&dir.join(RUNNING_NAME)) {
        Ok(bytes) => {
            // The boot id is the first line (a marker of before the window lines is that line).
            let text = String::from_utf8_lossy(&bytes);
            let theirs = text.lines().next().unwrap_or("").trim();
            Some(!theirs.is_empty() && boot_id().is_some_and(|b| b == theirs))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => Some(false),
    }
}

/// The files a running sesamed writes: their modification times say until when it ran.
const RUN_FILES: [&str; 5] = [
    JOURNAL_NAME,
    FILE_NAME,
    FENCE_NAME,
    RUNNING_NAME,
    LEASES_NAME,
];

/// The latest time the state files in `dir` record a sesamed running on them, if any: the
/// newest modification time of the files it writes while it runs (the journal at each grant,
/// the snapshot, the fence every few seconds under `state_sync = "fence"`, the crash marker
/// at its start and at a reload, the leases when they change), as its clock set them. Read
/// at start, before this start writes any of them. A start after a crash counts its rules
/// from the later of this and its own clock ([`crash_anchor`], [`crash_start`]). (The fence's
/// own time is not taken: it runs ahead of the clock, and would stretch the rules after every
/// crash.) With the file that records it, for the error when that time is too far ahead.
pub fn newest_state_file(dir: &Path) -> Option<(PathBuf, UnixMillis)> {
    RUN_FILES
        .iter()
        .map(|name| dir.join(name))
        .filter_map(|path| {
            let m = std::fs::symlink_metadata(&path).ok()?;
            let t = m.is_file().then(|| m.modified().ok()).flatten()?;
            Some((path, UnixMillis::from(t)))
        })
        .max_by_key(|(_, t)| *t)
}

/// How far a state file's modification time may be ahead of the clock at a start after a
/// crash (one day): the crash rules count from that time ([`crash_start`]), and a clock behind
/// by more than this (an RTC reset, a start long before NTP) or a file time far ahead (a
/// crashed run whose clock had jumped ahead, a backup restored from a host with a wrong clock,
/// a `touch -d`) would stretch them (and a clean stop saves them) far into the future: such a
/// start is refused instead ([`crash_anchor`]; review s22, finding 4).
pub const MAX_CLOCK_BEHIND_MS: u64 = 24 * 3600 * 1000;

/// [`crash_start`] for a start after a crash at `now`, with `newest` from
/// [`newest_state_file`]; an error naming the file when its time is more than
/// [`MAX_CLOCK_BEHIND_MS`] ahead of `now`.
pub fn crash_anchor(
    now: UnixMillis,
    newest: Option<&(PathBuf, UnixMillis)>,
) -> Result<UnixMillis, StateError> {
    if let Some((path, t)) = newest {
        if t.0 > now.0.saturating_add(MAX_CLOCK_BEHIND_MS) {
            return Err(StateError::ClockBehind {
                path: path.clone(),
                ahead_s: (t.0 - now.0) / 1000,
            });
        }
    }
    Ok(crash_start(now, newest.map(|(_, t)| *t)))
}

/// Where the rules of a start after a crash count from (`Tracker::after_crash`): `now`, or
/// `last_running` (the time of [`newest_state_file`]) if that is later. After a power loss sesamed can start
/// before NTP with a clock that is behind (an RTC that drifted or was reset): the crashed run's
/// gate admitted steps up to its own clock's, and rules counted from the behind clock would
/// end before them once NTP steps the clock forward (review s21, finding 6).
pub fn crash_start(now: UnixMillis, last_running: Option<UnixMillis>) -> UnixMillis {
    last_running.map_or(now, |t| t.max(now))
}

/// The windows the last run on `dir` used, from its marker if it did not remove it (a crash;
/// none after a clean stop, or from a marker of before the window lines). Read before
/// [`JournalStore::mark_running`]. A marker that is there but damaged (unreadable, empty, or
/// with a line after the boot id that is not a window) fails closed: the windows it lost may
/// have been wider than this start's, so the result holds, for `step_seconds` (this start's
/// step length) and for every step length a readable line names, the widest window the
/// configuration allows ([`WIDEST_SKEW_STEPS`], [`WIDEST_TIMEOUT_MS`]), with the readable
/// lines; this is logged.
pub fn previous_windows(dir: &Path, step_seconds: u32) -> Vec<SavedWindow> {
    let path = dir.join(RUNNING_NAME);
    let (mut windows, damage) = match read_state_file(&path) {
        Ok(bytes) => read_marker_windows(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    if let Some(damage) = damage {
        let mut steps: Vec<u32> = windows.iter().map(|w| w.step_seconds).collect();
        steps.push(step_seconds);
        steps.sort_unstable();
        steps.dedup();
        for step_seconds in steps.into_iter().filter(|s| *s > 0) {
            windows.push(SavedWindow {
                step_seconds,
                skew_steps: WIDEST_SKEW_STEPS,
                timeout_ms: WIDEST_TIMEOUT_MS,
            });
        }
        tracing::error!(
            marker = %path.display(),
            damage = %damage,
            skew_steps = WIDEST_SKEW_STEPS,
            timeout_ms = WIDEST_TIMEOUT_MS,
            "crash marker damaged: the windows of the crashed run are unknown; the rules of a start after a crash assume the widest window the configuration allows"
        );
    }
    windows
}

/// The window lines of a crash marker's text, and what is damaged if something is: an empty
/// marker (a rewrite of before the atomic replacement cut short), or a line after the boot id
/// that is not a window. A marker of before the window lines (the boot id alone, no newline)
/// has none and is whole.
fn read_marker_windows(bytes: &[u8]) -> (Vec<SavedWindow>, Option<String>) {
    if bytes.is_empty() {
        return (Vec::new(), Some("empty".into()));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return (Vec::new(), Some("not UTF-8".into()));
    };
    // Every line ends with a newline: what follows the last one is empty in a whole marker
    // (one without any newline is a boot id alone, of before the window lines).
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut windows = Vec::new();
    let mut damage = (text.contains('\n') && !text.ends_with('\n'))
        .then(|| "the last line is cut short".to_owned());
    for (i, line) in body.split('\n').enumerate().skip(1) {
        match parse_window(line) {
            Some(w) => windows.push(w),
            None => {
                damage.get_or_insert_with(|| format!("line {}: not a window line", i + 1));
            }
        }
    }
    (windows, damage)
}

/// `window <step_seconds> <skew_steps> <timeout_ms>`.
fn window_line(w: &SavedWindow) -> String {
    format!(
        "{WINDOW_FIELD} {} {} {}\n",
        w.step_seconds, w.skew_steps, w.timeout_ms
    )
}

/// Parses [`window_line`] (without its newline); a step length of 0 is no window.
fn parse_window(line: &str) -> Option<SavedWindow> {
    let mut parts = line.split(' ');
    let (Some(WINDOW_FIELD), Some(step), Some(skew), Some(timeout), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let w = SavedWindow {
        step_seconds: step.parse().ok()?,
        skew_steps: skew.parse().ok()?,
        timeout_ms: timeout.parse().ok()?,
    };
    (w.step_seconds > 0).then_some(w)
}

/// Removes the fence file (a start with `state_sync = "grant"`, once nothing needs it).
pub fn remove_fence(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(FENCE_NAME)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The active leases, rewritten when they change, so that a restarted sesamed knows (and
/// `status` shows) the leases still in the kernel, and whose they are.
pub const LEASES_NAME: &str = "leases";
const LEASES_HEADER: &str = "sesame leases 1";

/// A lease as saved in `state_dir/leases`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedLease {
    /// The client's key.
    pub client: PublicKey,
    /// Its name then (for logs; the key decides).
    pub name: String,
    /// The address let in (the block's first).
    pub address: std::net::IpAddr,
    /// The block's prefix length (32 or 128: the address alone).
    pub prefix: u8,
    /// The service.
    pub service: sesame_proto::Service,
    /// When it ends (wall clock).
    pub end: UnixMillis,
}

/// Writes the active leases (not synced: losing them in a crash costs only the display and
/// the owners of leases that expire by themselves).
pub fn save_leases(dir: &Path, leases: &[SavedLease]) -> std::io::Result<()> {
    let mut text = format!("{LEASES_HEADER}\n");
    for l in leases {
        text.push_str(&format!(
            "{} {} {} {} {}\n",
            l.client.to_base64(),
            crate::lease::show_address(l.address, l.prefix),
            l.service,
            l.end.0,
            l.name
        ));
    }
    let tmp = dir.join("leases.tmp");
    let mut file = create_temporary(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, dir.join(LEASES_NAME))
}

/// Reads the saved leases; a missing, foreign or damaged file yields what could be read (the
/// file is advisory: the kernel still expires every element by itself).
pub fn load_leases(dir: &Path) -> Vec<SavedLease> {
    let Ok(bytes) = read_state_file(&dir.join(LEASES_NAME)) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    if lines.next() != Some(LEASES_HEADER) {
        return Vec::new();
    }
    lines
        .filter_map(|l| {
            let mut f = l.splitn(5, ' ');
            let client = PublicKey::from_base64(f.next()?).ok()?;
            let token = f.next()?;
            let (address, prefix): (std::net::IpAddr, u8) = match token.split_once('/') {
                Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
                None => {
                    let a: std::net::IpAddr = token.parse().ok()?;
                    (a, crate::lease::full_prefix(a))
                }
            };
            Some(SavedLease {
                client,
                address,
                prefix,
                service: f.next()?.parse().ok()?,
                end: UnixMillis(f.next()?.parse().ok()?),
                name: f.next()?.to_owned(),
            })
        })
        .collect()
}

/// Reads a file of the state directory without following a symbolic link (the directory may
/// belong to the service account) and without blocking on a FIFO.
fn read_state_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(link_refused)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(out)
}

/// Creates a temporary file of the state directory (0600) to be renamed over a state file: a
/// leftover (or planted) one goes first, and a link there is never followed.
/// Replaces `dir/name` with `text` so that a crash leaves the old file or the new one, whole:
/// `dir/tmp_name` is created (0600, no link followed), written and synced, renamed over
/// `name`, and the directory synced. An error names the path it happened on.
fn replace_durably(
    dir: &Path,
    name: &str,
    tmp_name: &str,
    text: &[u8],
) -> Result<(), (PathBuf, std::io::Error)> {
    let (path, tmp) = (dir.join(name), dir.join(tmp_name));
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let mut file = create_temporary(&tmp).map_err(at(&tmp))?;
    file.write_all(text).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(at(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

fn create_temporary(tmp: &Path) -> std::io::Result<File> {
    let _ = std::fs::remove_file(tmp);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(link_refused)
}

/// Says what `O_NOFOLLOW` found instead of the kernel's "too many levels of symbolic links".
fn link_refused(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "is a symbolic link; sesamed does not follow links in its state directory",
        )
    } else {
        e
    }
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory or file could not be created, read or written.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists but is not a complete, intact state file.
    #[error("{path}: corrupt replay state ({why}); refusing to start with empty state, which would make old knocks valid again. Inspect the file; delete it only if you accept that risk", path = .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The snapshot is of a version this sesamed does not know (a newer sesamed wrote it):
    /// refused before anything else is read.
    #[error("{path}: replay state of version {version}, which this sesamed does not read (it reads versions 2 to 4; a newer sesamed wrote it?); refusing to start rather than misread it or start with empty state, which would make old knocks valid again. Run the sesamed that wrote it, or go back as docs/SECURITY.md (\"Going back to an older sesamed\") says", path = .path.display())]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version its first line names.
        version: String,
    },
    /// At a start after a crash, a state file's modification time is more than
    /// [`MAX_CLOCK_BEHIND_MS`] ahead of the clock.
    #[error("{path}: modified {ahead_s} s ahead of the clock (more than a day): the rules of a start after a crash would count from then; wait for time sync if the clock is behind, or correct the file's time (touch it) if it is wrong", path = .path.display())]
    ClockBehind {
        /// The newest state file.
        path: PathBuf,
        /// How far ahead of the clock its time is, in seconds.
        ahead_s: u64,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the clients' replay state is kept: the seam for a replay-state backend.
///
/// The daemon's packet path (`Core<S: ReplayStore>` in `daemon/core.rs`) persists every
/// grant's state through [`ReplayStore::advance`] before it grants anything, and the tracker
/// starts from [`ReplayStore::get`]. The local journal, [`JournalStore`], is the one
/// implementation today; a new backend (a replicated store) implements this trait and is
/// opened in `daemon/mod.rs` `run_local` instead of `JournalStore::open_with` (the running
/// marker, the fence of `state_sync = "fence"` and the shutdown checkpoint there are the local
/// journal's own). Static dispatch: no `dyn` on the grant path.
pub trait ReplayStore {
    /// Advances each client's stored state to the given one if that is newer: what the stored
    /// state refuses stays refused, and an older, equal or empty state changes nothing.
    ///
    /// An implementation must guarantee:
    /// * durable before it returns `Ok` (a restart, or another node, never accepts again what
    ///   the recorded states refuse);
    /// * never goes backwards: a floor is never lowered, and an accepted payload or used step
    ///   of the stored state is dropped only when the new floor covers it;
    /// * on `Err` the caller grants nothing, and the same changes may be passed again.
    fn advance<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a PublicKey, ReplayState)>,
    ) -> Result<(), StateError>;

    /// The stored state of `key` (empty if unknown): what the tracker starts from.
    fn get(&self, key: &PublicKey) -> ReplayState;
}

/// Whether `a` refuses everything `b` refuses: floors at least as high, and each accepted
/// payload and used step of `b` either in `a` or under its floor.
fn covers(a: &ReplayState, b: &ReplayState) -> bool {
    let under = |t: UnixMillis| a.floor.is_some_and(|f| t <= f);
    a.floor >= b.floor
        && a.action_floor >= b.action_floor
        && b.accepted
            .iter()
            .all(|x| under(x.timestamp) || a.accepted.contains(x))
        && b.steps
            .iter()
            .all(|x| under(x.start()) || a.steps.contains(x))
}

/// What `stored` advances to with `new`: `None` if `stored` covers `new` already (an older or
/// equal state); `new` as it is if it covers `stored` (the tracker's own succession of states
/// always does); else their join: the higher of each floor, `new`'s entries and those of
/// `stored` that the higher floor does not cover.
fn advanced(stored: Option<&ReplayState>, mut new: ReplayState) -> Option<ReplayState> {
    let Some(old) = stored else {
        return Some(new);
    };
    if covers(old, &new) {
        return None;
    }
    if covers(&new, old) {
        return Some(new);
    }
    new.floor = new.floor.max(old.floor);
    new.action_floor = new.action_floor.max(old.action_floor);
    let floor = new.floor;
    let under = |t: UnixMillis| floor.is_some_and(|f| t <= f);
    for a in &old.accepted {
        if !under(a.timestamp) && !new.accepted.contains(a) {
            new.accepted.push(*a);
        }
    }
    for s in &old.steps {
        if !under(s.start()) && !new.steps.contains(s) {
            new.steps.push(*s);
        }
    }
    Some(new)
}

/// The local journal: a snapshot and a journal in `state_dir` (the module's description), the
/// one [`ReplayStore`] implementation. It keeps the replay state of every client ever seen
/// (removed clients are kept, so re-adding one does not make its old knocks valid again).
#[derive(Debug)]
pub struct JournalStore {
    dir: PathBuf,
    entries: BTreeMap<PublicKey, ReplayState>,
    /// The journal, once opened for writing.
    journal: Option<File>,
    /// Length of the journal's valid part: the next record goes there.
    journal_len: u64,
    /// Records in the journal.
    journal_records: usize,
    /// Bytes past `journal_len` may exist (a torn record, a failed write): cut them first.
    journal_dirty: bool,
    /// Files of the protocol-1 format were found (and ignored).
    legacy: bool,
    /// Gate MACs saved at the last clean shutdown (written with every snapshot).
    seen: Vec<SeenMac>,
    /// Gated steps saved at the last clean shutdown (written with every snapshot).
    gated: Vec<GatedStep>,
    /// The window the expiries of `seen` and `gated` were computed for (written with every
    /// snapshot; `None` in a snapshot of before it was saved).
    seen_window: Option<SavedWindow>,
    /// Until when the rules of a start after a crash hold, saved at the last clean shutdown
    /// (written with every snapshot).
    crash_floor: Option<UnixMillis>,
    /// Per step length, the newest step whose records the tracker had forgotten, saved at
    /// the last clean shutdown (written with every snapshot; `Tracker::forgotten_steps`).
    forgotten: Vec<UsedStep>,
    /// `state_sync = "fence"`: the durable fence (ms; 0 = none yet) and `max_ahead_ms`. A
    /// record is written without a sync while the fence is past now + max_ahead_ms, the
    /// latest timestamp the tracker accepts.
    fence: Option<(std::sync::Arc<std::sync::atomic::AtomicU64>, u64)>,
    /// Journal appends written without a sync, covered by the fence.
    unsynced_appends: u64,
    /// The windows in the crash marker ([`JournalStore::mark_running`],
    /// [`JournalStore::note_window`]).
    windows: Vec<SavedWindow>,
}

impl JournalStore {
    /// Opens (creating the directory with mode 0700 if needed) and loads the state.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        Self::open_with(dir, false)
    }

    /// [`JournalStore::open`]; with `lost_writes` (a machine crash under `state_sync =
    /// "fence"`, whose records were written without a sync) the journal is read up to its
    /// first bad record instead of refused there: what follows may be lost pages, and the
    /// fence refuses everything they could have held.
    pub fn open_with(dir: &Path, lost_writes: bool) -> Result<Self, StateError> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StateError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let path = dir.join(FILE_NAME);
        let mut legacy = false;
        let Snapshot {
            mut entries,
            seen,
            gated,
            window: seen_window,
            crash_floor,
            forgotten,
        } = match read_state_file(&path) {
            Ok(bytes) if bytes.starts_with(format!("{HEADER_V1}\n").as_bytes()) => {
                legacy = true;
                Snapshot::default()
            }
            // A version this sesamed does not know is refused as such, before its checksum (a
            // newer format may end otherwise).
            Ok(bytes) => match unknown_version(&bytes) {
                Some(version) => return Err(StateError::UnknownVersion { path, version }),
                None => parse(&bytes).map_err(|why| StateError::Corrupt {
                    path: path.clone(),
                    why,
                })?,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let jpath = dir.join(JOURNAL_NAME);
        let (journal_len, journal_records, journal_dirty) = match read_state_file(&jpath) {
            Ok(bytes) if bytes.starts_with(format!("{JOURNAL_HEADER_V1}\n").as_bytes()) => {
                // Rewritten from its start (with the new header) by the next save.
                legacy = true;
                (0, 0, true)
            }
            Ok(bytes) => {
                let j = parse_journal(&bytes, lost_writes).map_err(|why| StateError::Corrupt {
                    path: jpath.clone(),
                    why,
                })?;
                for (key, state) in j.records {
                    entries.insert(key, state);
                }
                (j.valid_len, j.count, j.valid_len != bytes.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0, false),
            Err(source) => {
                return Err(StateError::Io {
                    path: jpath,
                    source,
                });
            }
        };
        Ok(JournalStore {
            dir: dir.to_path_buf(),
            entries,
            journal: None,
            journal_len,
            journal_records,
            journal_dirty,
            legacy,
            seen,
            gated,
            seen_window,
            crash_floor,
            forgotten,
            fence: None,
            unsynced_appends: 0,
            windows: Vec::new(),
        })
    }

    /// `state_sync = "fence"`: from now on a journal record needs no sync while `fence` (ms,
    /// made durable by [`write_fence`] before it is stored there) is past now +
    /// `max_ahead_ms`; otherwise (the fence writer lags, or failed) it is synced as usual.
    pub fn use_fence(
        &mut self,
        fence: std::sync::Arc<std::sync::atomic::AtomicU64>,
        max_ahead_ms: u64,
    ) {
        self.fence = Some((fence, max_ahead_ms));
    }

    /// A reload's new `max_ahead_ms` (the fence must cover that much ahead of now).
    pub fn set_max_ahead(&mut self, max_ahead_ms: u64) {
        if let Some((_, ahead)) = &mut self.fence {
            *ahead = max_ahead_ms;
        }
    }

    /// Journal appends written without a sync because the fence covered them.
    pub fn unsynced_appends(&self) -> u64 {
        self.unsynced_appends
    }

    /// Whether the fence covers a grant now.
    fn fence_covers(&self) -> bool {
        self.fence.as_ref().is_some_and(|(f, ahead)| {
            let now = crate::daemon::system_now();
            now.0.saturating_add(*ahead) < f.load(std::sync::atomic::Ordering::Acquire)
        })
    }

    /// The gate MACs saved at the last clean shutdown.
    pub fn seen(&self) -> &[SeenMac] {
        &self.seen
    }

    /// The gate MACs the next snapshot holds (set just before the shutdown's checkpoint).
    pub fn set_seen(&mut self, seen: Vec<SeenMac>) {
        self.seen = seen;
    }

    /// The gated steps saved at the last clean shutdown.
    pub fn gated(&self) -> &[GatedStep] {
        &self.gated
    }

    /// The gated steps the next snapshot holds (set just before the shutdown's checkpoint).
    pub fn set_gated(&mut self, gated: Vec<GatedStep>) {
        self.gated = gated;
    }

    /// The window the expiries of [`JournalStore::seen`] and [`JournalStore::gated`] were
    /// computed for (`None`: a snapshot of before it was saved, or none).
    pub fn seen_window(&self) -> Option<SavedWindow> {
        self.seen_window
    }

    /// The window the next snapshot's gate MACs and gated steps were computed for (set with
    /// them, just before the shutdown's checkpoint).
    pub fn set_seen_window(&mut self, window: SavedWindow) {
        self.seen_window = Some(window);
    }

    /// Until when the rules of a start after a crash hold, as saved at the last clean shutdown
    /// (`Tracker::crash_floor`; restored with `Tracker::keep_crash_floor`).
    pub fn crash_floor(&self) -> Option<UnixMillis> {
        self.crash_floor
    }

    /// The crash floor the next snapshot holds (set just before the shutdown's checkpoint;
    /// `None` once it has passed).
    pub fn set_crash_floor(&mut self, until: Option<UnixMillis>) {
        self.crash_floor = until;
    }

    /// Per step length, the newest step whose records the tracker had forgotten, as saved at
    /// the last clean shutdown (`Tracker::forgotten_steps`; restored with
    /// `Tracker::remember_forgotten`). Empty in a snapshot of before they were saved.
    pub fn forgotten(&self) -> &[UsedStep] {
        &self.forgotten
    }

    /// The forgotten steps the next snapshot holds (set just before the shutdown's
    /// checkpoint).
    pub fn set_forgotten(&mut self, forgotten: Vec<UsedStep>) {
        self.forgotten = forgotten;
    }

    /// Marks the state as in use by a running sesamed that uses `windows` (the crashed run's,
    /// [`previous_windows`], and its own: a crash of this run must still refuse what theirs let
    /// through the gate until the next clean stop); returns whether the marker was there
    /// already, i.e. whether the last run ended without [`JournalStore::mark_stopped`] (a
    /// crash, a kill -9, a power loss).
    pub fn mark_running(&mut self, windows: &[SavedWindow]) -> Result<bool, StateError> {
        let mut noted: Vec<SavedWindow> = Vec::new();
        for w in windows {
            if !noted.iter().any(|n| n.covers(w)) {
                noted.retain(|n| !w.covers(n));
                noted.push(*w);
            }
        }
        let path = self.dir.join(RUNNING_NAME);
        // Whether the last run left it (a link or anything else there counts: it is replaced).
        let existed = match std::fs::symlink_metadata(&path) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(StateError::Io { path, source }),
        };
        // This run's boot from now on (a crash later in this boot is "same boot").
        self.write_marker(&noted)?;
        self.windows = noted;
        Ok(existed)
    }

    /// Adds `window` to the crash marker's windows (a reload to it), durable before this
    /// returns, unless a window there already covers it (same step length, as many skew steps
    /// or more): a crash from then on refuses what it lets through the gate. The marker is
    /// replaced whole with the extra line, so a crash during the write leaves the old marker
    /// (without this window, not in use yet) or the new one.
    pub fn note_window(&mut self, window: SavedWindow) -> Result<(), StateError> {
        if self.windows.iter().any(|w| w.covers(&window)) {
            return Ok(());
        }
        let mut windows = self.windows.clone();
        windows.push(window);
        self.write_marker(&windows)?;
        self.windows = windows;
        Ok(())
    }

    /// Replaces the crash marker atomically with this boot's id and `windows` (temporary file,
    /// write, fsync, rename, fsync of the directory).
    fn write_marker(&self, windows: &[SavedWindow]) -> Result<(), StateError> {
        let mut text = boot_id().unwrap_or_default();
        text.push('\n');
        for w in windows {
            text.push_str(&window_line(w));
        }
        replace_durably(&self.dir, RUNNING_NAME, RUNNING_TMP_NAME, text.as_bytes())
            .map_err(|(path, source)| StateError::Io { path, source })
    }

    /// Removes the marker of [`JournalStore::mark_running`] (after the shutdown's checkpoint).
    pub fn mark_stopped(&self) -> Result<(), StateError> {
        let path = self.dir.join(RUNNING_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Whether files of the protocol-1 format were found (and ignored).
    pub fn found_legacy(&self) -> bool {
        self.legacy
    }

    /// The journal.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_NAME)
    }

    /// The state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Appends the changed clients' records to the journal in one write (synced unless the
    /// fence covers it), then compacts every [`COMPACT_AFTER`] records.
    fn record(&mut self, changed: Vec<(PublicKey, ReplayState)>) -> Result<(), StateError> {
        if changed.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for (key, state) in &changed {
            text.push_str(&journal_record(key, state));
        }
        self.append(text.as_bytes())?;
        self.journal_records += changed.len();
        self.entries.extend(changed);
        if self.journal_records >= COMPACT_AFTER {
            // The records are durable already; a failed compaction is retried next time.
            if let Err(e) = self.compact() {
                tracing::warn!(error = %e, "replay state: compaction failed; the journal keeps growing");
            }
        }
        Ok(())
    }

    /// Appends `bytes` to the journal (creating it if needed) and syncs it.
    fn append(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        use std::os::unix::fs::FileExt;
        let jpath = self.journal_path();
        let io = |source| StateError::Io {
            path: jpath.clone(),
            source,
        };
        if self.journal.is_none() {
            if self.journal_len == 0 {
                self.journal_dirty = false;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&jpath)
                .map_err(link_refused)
                .map_err(io)?;
            if self.journal_len == 0 {
                let header = format!("{JOURNAL_HEADER}\n");
                file.set_len(0).map_err(io)?;
                file.write_all_at(header.as_bytes(), 0).map_err(io)?;
                file.sync_all().map_err(io)?;
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|source| StateError::Io {
                        path: self.dir.clone(),
                        source,
                    })?;
                self.journal_len = header.len() as u64;
                self.journal_dirty = false;
            }
            self.journal = Some(file);
        }
        let file = self.journal.as_ref().expect("opened above");
        if self.journal_dirty {
            file.set_len(self.journal_len).map_err(io)?;
            self.journal_dirty = false;
        }
        let covered = self.fence_covers();
        let written = file
            .write_all_at(bytes, self.journal_len)
            .and_then(|()| if covered { Ok(()) } else { file.sync_data() });
        if covered && written.is_ok() {
            self.unsynced_appends += 1;
        }
        if let Err(source) = written {
            self.journal_dirty = true;
            return Err(io(source));
        }
        self.journal_len += bytes.len() as u64;
        Ok(())
    }

    /// Moves the journal into the snapshot (at a clean shutdown, so the snapshot alone is the
    /// whole state, with the remembered gate MACs of [`JournalStore::set_seen`] and the gated
    /// steps of [`JournalStore::set_gated`]).
    pub fn checkpoint(&mut self) -> Result<(), StateError> {
        if self.journal_records == 0
            && self.seen.is_empty()
            && self.gated.is_empty()
            && self.crash_floor.is_none()
            && self.forgotten.is_empty()
            && !self.path().exists()
        {
            return Ok(());
        }
        self.compact()
    }

    /// Writes every entry to the snapshot atomically, then empties the journal.
    fn compact(&mut self) -> Result<(), StateError> {
        self.write_snapshot()?;
        if self.journal.is_none() && self.journal_path().exists() {
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(self.journal_path())
                .map_err(link_refused)
                .map_err(|source| StateError::Io {
                    path: self.journal_path(),
                    source,
                })?;
            self.journal = Some(file);
        }
        if let Some(file) = &self.journal {
            let header = format!("{JOURNAL_HEADER}\n");
            use std::os::unix::fs::FileExt;
            let jpath = self.journal_path();
            let io = |source| StateError::Io {
                path: jpath.clone(),
                source,
            };
            file.set_len(0).map_err(io)?;
            file.write_all_at(header.as_bytes(), 0).map_err(io)?;
            file.sync_data().map_err(io)?;
            self.journal_len = header.len() as u64;
            self.journal_dirty = false;
        }
        self.journal_records = 0;
        Ok(())
    }

    /// Writes the snapshot atomically (temporary file, fsync, rename, fsync of the directory).
    fn write_snapshot(&self) -> Result<(), StateError> {
        let text = render(
            &self.entries,
            &self.seen,
            &self.gated,
            self.seen_window,
            self.crash_floor,
            &self.forgotten,
        );
        replace_durably(
            &self.dir,
            FILE_NAME,
            &format!("{FILE_NAME}.tmp"),
            text.as_bytes(),
        )
        .map_err(|(path, source)| StateError::Io { path, source })
    }
}

impl ReplayStore for JournalStore {
    /// Journals the clients whose state advanced (one record each, one write, synced before
    /// this returns; under `state_sync = "fence"` a record the fence covers is not synced).
    fn advance<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a PublicKey, ReplayState)>,
    ) -> Result<(), StateError> {
        let mut changed: Vec<(PublicKey, ReplayState)> = Vec::new();
        for (key, state) in changes {
            if state.is_empty() {
                continue;
            }
            // An earlier change of this call is the stored state for a later one.
            let stored = match changed.iter().rposition(|(k, _)| k == key) {
                Some(i) => Some(&changed[i].1),
                None => self.entries.get(key),
            };
            if let Some(next) = advanced(stored, state) {
                changed.push((*key, next));
            }
        }
        self.record(changed)
    }

    fn get(&self, key: &PublicKey) -> ReplayState {
        self.entries.get(key).cloned().unwrap_or_default()
    }
}

fn check16(body: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    hex(&digest.as_ref()[..8])
}

fn journal_record(key: &PublicKey, s: &ReplayState) -> String {
    let body = line(key, s);
    let check = check16(&body);
    format!("{body} {check}\n")
}

/// `<key> <floor> <accepted> <steps>`, then ` action=<ms>` if the client has an action floor
/// (without one, the line is as it was before action floors existed).
fn line(key: &PublicKey, s: &ReplayState) -> String {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(",")
        }
    };
    let action = s
        .action_floor
        .map_or_else(String::new, |f| format!(" {ACTION_FIELD}{}", f.0));
    format!(
        "{key} {} {} {}{action}",
        s.floor.map_or_else(|| "-".to_owned(), |f| f.0.to_string()),
        list(
            s.accepted
                .iter()
                .map(|a| format!("{}:{}", a.timestamp.0, hex(&a.mac)))
                .collect()
        ),
        list(
            s.steps
                .iter()
                .map(|u| format!("{}:{}", u.step_seconds, u.counter))
                .collect()
        ),
    )
}

/// Parses `<key> <floor> <accepted> <steps> [action=<ms>]`.
fn parse_line(line: &str) -> Option<(PublicKey, ReplayState)> {
    let mut parts = line.split(' ');
    let (Some(key), Some(floor), Some(accepted), Some(steps), action, None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let action_floor = match action {
        None => None,
        Some(a) => Some(UnixMillis(a.strip_prefix(ACTION_FIELD)?.parse().ok()?)),
    };
    let items = |text: &str| -> Option<Vec<(String, String)>> {
        if text == "-" {
            return Some(Vec::new());
        }
        text.split(',')
            .map(|item| {
                let (a, b) = item.split_once(':')?;
                Some((a.to_owned(), b.to_owned()))
            })
            .collect()
    };
    let mut state = ReplayState {
        floor: if floor == "-" {
            None
        } else {
            Some(UnixMillis(floor.parse().ok()?))
        },
        action_floor,
        ..ReplayState::default()
    };
    for (ts, mac) in items(accepted)? {
        let bytes = unhex(&mac)?;
        let mac: [u8; MAC_LEN] = bytes.try_into().ok()?;
        state.accepted.push(AcceptedPayload {
            timestamp: UnixMillis(ts.parse().ok()?),
            mac,
        });
    }
    for (step, counter) in items(steps)? {
        state.steps.push(UsedStep {
            step_seconds: step.parse().ok()?,
            counter: counter.parse().ok()?,
        });
    }
    Some((PublicKey::from_base64(key).ok()?, state))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A journal, read.
struct Journal {
    records: Vec<(PublicKey, ReplayState)>,
    count: usize,
    /// Bytes up to the end of the last good record.
    valid_len: u64,
}

fn parse_journal(bytes: &[u8], lenient: bool) -> Result<Journal, String> {
    let header = format!("{JOURNAL_HEADER}\n");
    let mut out = Journal {
        records: Vec::new(),
        count: 0,
        valid_len: 0,
    };
    if bytes.len() < header.len() && header.as_bytes().starts_with(bytes) {
        // Created, but the header was never completely written: empty.
        return Ok(out);
    }
    let Some(body) = bytes.strip_prefix(header.as_bytes()) else {
        return Err(format!("first line is not '{JOURNAL_HEADER}'"));
    };
    out.valid_len = header.len() as u64;
    let mut lines: Vec<&[u8]> = body.split_inclusive(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.drain(..).enumerate() {
        match parse_record(line) {
            Some(r) => {
                out.records.push(r);
                out.count += 1;
                out.valid_len += line.len() as u64;
            }
            // The last record may be torn by a crash before its sync: never acknowledged.
            None if i == last || lenient => break,
            None => return Err(format!("record {} fails its check", i + 1)),
        }
    }
    Ok(out)
}

fn parse_record(line: &[u8]) -> Option<(PublicKey, ReplayState)> {
    let line = std::str::from_utf8(line).ok()?.strip_suffix('\n')?;
    let (body, check) = line.rsplit_once(' ')?;
    if check16(body) != check {
        return None;
    }
    parse_line(body)
}

fn render(
    entries: &BTreeMap<PublicKey, ReplayState>,
    seen: &[SeenMac],
    gated: &[GatedStep],
    window: Option<SavedWindow>,
    crash_floor: Option<UnixMillis>,
    forgotten: &[UsedStep],
) -> String {
    let mut body = format!("{HEADER}\n");
    for (key, s) in entries {
        body.push_str(&line(key, s));
        body.push('\n');
    }
    for m in seen {
        match m.step {
            Some(step) => body.push_str(&format!(
                "seen {} {} {}:{} {}\n",
                hex(&m.mac),
                m.client,
                step.step_seconds,
                step.counter,
                m.expires.0
            )),
            None => body.push_str(&format!(
                "seen {} {} {}\n",
                hex(&m.mac),
                m.client,
                m.expires.0
            )),
        }
    }
    for g in gated {
        body.push_str(&format!(
            "gated {} {}:{} {}\n",
            g.client, g.step.step_seconds, g.step.counter, g.expires.0
        ));
    }
    if let Some(w) = window {
        body.push_str(&window_line(&w));
    }
    if let Some(until) = crash_floor {
        body.push_str(&format!("{CRASH_FIELD} {}\n", until.0));
    }
    for f in forgotten {
        body.push_str(&format!(
            "{FORGOTTEN_FIELD} {}:{}\n",
            f.step_seconds, f.counter
        ));
    }
    sealed(body)
}

/// `body` followed by its checksum line (`sha256 <hex of the SHA-256 of body>`), as a
/// snapshot ends.
fn sealed(mut body: String) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    body.push_str(&format!("sha256 {}\n", hex(digest.as_ref())));
    body
}

/// A snapshot, read.
#[derive(Default)]
struct Snapshot {
    entries: BTreeMap<PublicKey, ReplayState>,
    seen: Vec<SeenMac>,
    gated: Vec<GatedStep>,
    window: Option<SavedWindow>,
    crash_floor: Option<UnixMillis>,
    forgotten: Vec<UsedStep>,
}

/// Parses `gated <client public key> <step_seconds>:<counter> <until ms>`.
fn parse_gated(line: &str) -> Option<GatedStep> {
    let mut parts = line.split(' ');
    let (Some("gated"), Some(key), Some(step), Some(until), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some(GatedStep {
        client: PublicKey::from_base64(key).ok()?,
        step: parse_step(step)?,
        expires: UnixMillis(until.parse().ok()?),
    })
}

/// Parses `<step_seconds>:<counter>`.
fn parse_step(step: &str) -> Option<UsedStep> {
    let (step_seconds, counter) = step.split_once(':')?;
    Some(UsedStep {
        step_seconds: step_seconds.parse().ok()?,
        counter: counter.parse().ok()?,
    })
}

/// Parses `seen <MAC> <key> <step_seconds>:<counter> <until ms>`, or the line of before the
/// step, `seen <MAC> <key> <until ms>`.
fn parse_seen(line: &str) -> Option<SeenMac> {
    let parts: Vec<&str> = line.split(' ').collect();
    let (mac, key, step, until) = match parts[..] {
        ["seen", mac, key, until] => (mac, key, None, until),
        ["seen", mac, key, step, until] => (mac, key, Some(parse_step(step)?), until),
        _ => return None,
    };
    Some(SeenMac {
        mac: unhex(mac)?.try_into().ok()?,
        client: PublicKey::from_base64(key).ok()?,
        step,
        expires: UnixMillis(until.parse().ok()?),
    })
}

/// The version a snapshot's first line names, if it is `sesame-replay <n>` with a number this
/// sesamed does not read (version 1 is ignored, 2 to 4 are read).
fn unknown_version(bytes: &[u8]) -> Option<String> {
    let first = bytes.split(|b| *b == b'\n').next()?;
    let first = std::str::from_utf8(first).ok()?;
    let version = first.strip_prefix(HEADER_PREFIX)?;
    let number =
        !version.is_empty() && version.len() <= 9 && version.bytes().all(|b| b.is_ascii_digit());
    let known = first == HEADER_V1 || READ_HEADERS.contains(&first);
    (number && !known).then(|| version.to_owned())
}

fn parse(bytes: &[u8]) -> Result<Snapshot, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let Some(body_end) = text.rfind("sha256 ") else {
        return Err("no checksum line (truncated?)".into());
    };
    let (body, trailer) = text.split_at(body_end);
    let want = trailer
        .strip_prefix("sha256 ")
        .and_then(|t| t.strip_suffix('\n'))
        .ok_or("checksum line is incomplete (truncated?)")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    if hex(digest.as_ref()) != want {
        return Err("checksum mismatch (truncated or altered)".into());
    }
    let mut lines = body.lines();
    let header = lines.next();
    if !header.is_some_and(|h| READ_HEADERS.contains(&h)) {
        return Err(format!(
            "first line is not '{HEADER}' (or '{HEADER_V3}', '{HEADER_V2}')"
        ));
    }
    let mut out = Snapshot::default();
    for (i, line) in lines.enumerate() {
        if line.starts_with("seen ") {
            out.seen.push(parse_seen(line).ok_or_else(|| {
                format!(
                    "line {}: expected 'seen <mac> <key> <step_seconds>:<counter> <until ms>'",
                    i + 2
                )
            })?);
            continue;
        }
        if let Some(until) = line
            .strip_prefix(CRASH_FIELD)
            .and_then(|l| l.strip_prefix(' '))
        {
            let until = until
                .parse()
                .map_err(|_| format!("line {}: expected '{CRASH_FIELD} <until ms>'", i + 2))?;
            out.crash_floor = Some(UnixMillis(until));
            continue;
        }
        if let Some(step) = line
            .strip_prefix(FORGOTTEN_FIELD)
            .and_then(|l| l.strip_prefix(' '))
        {
            out.forgotten.push(parse_step(step).ok_or_else(|| {
                format!(
                    "line {}: expected '{FORGOTTEN_FIELD} <step_seconds>:<counter>'",
                    i + 2
                )
            })?);
            continue;
        }
        if line.starts_with("window ") {
            out.window = Some(parse_window(line).ok_or_else(|| {
                format!(
                    "line {}: expected 'window <step_seconds> <skew_steps> <timeout_ms>'",
                    i + 2
                )
            })?);
            continue;
        }
        if line.starts_with("gated ") {
            out.gated.push(parse_gated(line).ok_or_else(|| {
                format!(
                    "line {}: expected 'gated <key> <step_seconds>:<counter> <until ms>'",
                    i + 2
                )
            })?);
            continue;
        }
        let (key, state) = parse_line(line).ok_or_else(|| {
            format!(
                "line {}: expected '<key> <floor|-> <accepted|-> <steps|-> [action=<ms>]'",
                i + 2
            )
        })?;
        out.entries.insert(key, state);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let mut r = [0u8; 6];
        sesame_keys::fill_random(&mut r);
        std::env::temp_dir().join(format!("sesame-state-{tag}-{}", hex(&r)))
    }

    /// Asserts that a snapshot holding each of `lines` (alone, after the header) is refused
    /// with an error that starts with `prefix` (which names the line and what it expected).
    fn assert_lines_refused<S: AsRef<str>>(lines: &[S], prefix: &str) {
        for bad in lines {
            let bad = bad.as_ref();
            let file = sealed(format!("{HEADER}\n{bad}\n"));
            let err = parse(file.as_bytes()).err().unwrap();
            assert!(err.starts_with(prefix), "{bad}: {err}");
        }
    }

    #[test]
    fn round_trip_and_merge() {
        let dir = tmpdir("rt");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let b = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        let sa = ReplayState {
            accepted: vec![AcceptedPayload {
                timestamp: UnixMillis(1234),
                mac: [0xab; MAC_LEN],
            }],
            ..ReplayState::default()
        };
        store.advance([(&a, sa.clone())]).unwrap();
        let sb = ReplayState {
            steps: vec![
                UsedStep {
                    step_seconds: 30,
                    counter: 99,
                },
                UsedStep {
                    step_seconds: 10,
                    counter: 300,
                },
            ],
            floor: Some(UnixMillis(77)),
            ..ReplayState::default()
        };
        store.advance([(&b, sb.clone())]).unwrap();
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&a), sa, "entries not saved again are kept");
        assert_eq!(again.get(&b), sb);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_or_altered_files_are_refused() {
        let dir = tmpdir("trunc");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        let s = state(1_764_000_000_000);
        store.advance([(&a, s.clone())]).unwrap();
        store.compact().unwrap();
        let full = std::fs::read(store.path()).unwrap();
        for cut in [0, 5, full.len() / 2, full.len() - 1] {
            std::fs::write(store.path(), &full[..cut]).unwrap();
            let err = JournalStore::open(&dir).unwrap_err().to_string();
            assert!(err.contains("corrupt replay state"), "{cut}: {err}");
            assert!(!err.contains('\n'));
        }
        let mut altered = full.clone();
        let i = altered.iter().position(|&b| b == b'1').unwrap();
        altered[i] = b'2';
        std::fs::write(store.path(), &altered).unwrap();
        assert!(JournalStore::open(&dir).is_err());
        std::fs::write(store.path(), &full).unwrap();
        assert_eq!(JournalStore::open(&dir).unwrap().get(&a), s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn state(ts: u64) -> ReplayState {
        ReplayState {
            accepted: vec![
                AcceptedPayload {
                    timestamp: UnixMillis(ts),
                    mac: [ts as u8; MAC_LEN],
                },
                AcceptedPayload {
                    timestamp: UnixMillis(ts + 1),
                    mac: [(ts as u8).wrapping_add(1); MAC_LEN],
                },
            ],
            steps: vec![UsedStep {
                step_seconds: 30,
                counter: ts / 30_000,
            }],
            // Below both accepted payloads and above those of any state(t < ts): each later
            // state covers the earlier ones, as the tracker's own states do.
            floor: Some(UnixMillis(ts.saturating_sub(1))),
            action_floor: Some(UnixMillis(ts + 1)),
        }
    }

    /// The action floor (PROTOCOL.md 7.2) is saved with the rest, in the journal and in the
    /// snapshot; files written before it existed (four fields a line) load with none, and a
    /// client that never ran an action is still written in that format.
    #[test]
    fn the_action_floor_is_saved_and_files_without_it_still_load() {
        let dir = tmpdir("action");
        std::fs::create_dir_all(&dir).unwrap();
        let a = sesame_keys::PrivateKey::generate().public_key();
        let b = sesame_keys::PrivateKey::generate().public_key();
        // Written by the code before action floors: a snapshot for a, a journal record for b.
        let mac = "ab".repeat(MAC_LEN);
        let snapshot = sealed(format!("{HEADER}\n{a} 77 1234:{mac} 30:99\n"));
        std::fs::write(dir.join(FILE_NAME), &snapshot).unwrap();
        let record = format!("{b} - 5000:{mac} 30:58800000");
        let journal = format!("{JOURNAL_HEADER}\n{record} {}\n", check16(&record));
        std::fs::write(dir.join(JOURNAL_NAME), &journal).unwrap();
        let mut store = JournalStore::open(&dir).unwrap();
        let old_a = ReplayState {
            accepted: vec![AcceptedPayload {
                timestamp: UnixMillis(1234),
                mac: [0xab; MAC_LEN],
            }],
            steps: vec![UsedStep {
                step_seconds: 30,
                counter: 99,
            }],
            floor: Some(UnixMillis(77)),
            action_floor: None,
        };
        assert_eq!(store.get(&a), old_a);
        assert_eq!(store.get(&b).action_floor, None);
        assert_eq!(store.get(&b).accepted.len(), 1);
        // Without an action floor a line is exactly the old format.
        assert_eq!(line(&a, &old_a), format!("{a} 77 1234:{mac} 30:99"));
        // With one: journal, then snapshot, both load it.
        let with = ReplayState {
            action_floor: Some(UnixMillis(1_764_000_008_000)),
            ..old_a.clone()
        };
        assert_eq!(
            line(&a, &with),
            format!("{a} 77 1234:{mac} 30:99 action=1764000008000")
        );
        store.advance([(&a, with.clone())]).unwrap();
        assert_eq!(JournalStore::open(&dir).unwrap().get(&a), with);
        store.compact().unwrap();
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&a), with);
        assert_eq!(again.get(&b).action_floor, None);
        // A state holding only an action floor is not empty: it is saved.
        let c = sesame_keys::PrivateKey::generate().public_key();
        let only = ReplayState {
            action_floor: Some(UnixMillis(9)),
            ..ReplayState::default()
        };
        store.advance([(&c, only.clone())]).unwrap();
        assert_eq!(JournalStore::open(&dir).unwrap().get(&c), only);
        std::fs::remove_dir_all(&dir).unwrap();
        // A fifth field that is not an action floor is corruption, not "no floor".
        for bad in ["action=", "action=x", "actions=5", "5", "action=5 6"] {
            assert!(parse_line(&format!("{a} 77 - - {bad}")).is_none(), "{bad}");
        }
        assert!(parse_line(&format!("{a} 77 - - action=5")).is_some());
    }

    #[test]
    fn seen_macs_and_the_running_marker_survive_a_clean_restart() {
        let dir = tmpdir("seen");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        assert!(
            !store.mark_running(&[]).unwrap(),
            "no marker at the first start"
        );
        // One with the step whose gate it passed, one without (as a sesamed of before the
        // step wrote it: such a line still loads).
        let seen = vec![
            SeenMac {
                mac: [7; MAC_LEN],
                client: a,
                step: Some(UsedStep {
                    step_seconds: 30,
                    counter: 4_115,
                }),
                expires: UnixMillis(123_456),
            },
            SeenMac {
                mac: [8; MAC_LEN],
                client: a,
                step: None,
                expires: UnixMillis(123_457),
            },
        ];
        store.set_seen(seen.clone());
        store.checkpoint().unwrap();
        store.mark_stopped().unwrap();
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        let mac7 = hex(&[7; MAC_LEN]);
        assert!(
            text.contains(&format!("\nseen {mac7} {a} 30:4115 123456\n")),
            "{text}"
        );
        let mut again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.seen(), &seen[..]);
        // A damaged seen line is refused, naming its line.
        assert_lines_refused(
            &[
                format!("seen {mac7} {a} 30 123456"),
                format!("seen {mac7} {a} x:4115 123456"),
                format!("seen {mac7} {a} 30:4115 123456 9"),
                format!("seen {mac7} {a}"),
            ],
            "line 2: expected 'seen",
        );
        assert!(!again.mark_running(&[]).unwrap(), "clean stop: no crash");
        // No mark_stopped: the next start sees a crash.
        let mut third = JournalStore::open(&dir).unwrap();
        assert!(third.mark_running(&[]).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_window_of_the_saved_expiries_survives_a_clean_restart() {
        let dir = tmpdir("seen-window");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let window = SavedWindow {
            step_seconds: 30,
            skew_steps: 1,
            timeout_ms: 5000,
        };
        let mut store = JournalStore::open(&dir).unwrap();
        assert_eq!(store.seen_window(), None);
        store.set_seen(vec![SeenMac {
            mac: [7; MAC_LEN],
            client: a,
            step: None,
            expires: UnixMillis(123_456),
        }]);
        store.set_seen_window(window);
        store.checkpoint().unwrap();
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert!(text.contains("\nwindow 30 1 5000\n"), "{text}");
        let mut again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.seen_window(), Some(window));
        // Kept by the snapshots written while running (a compaction).
        again.compact().unwrap();
        assert_eq!(
            JournalStore::open(&dir).unwrap().seen_window(),
            Some(window)
        );
        // A damaged window line is refused, naming its line.
        assert_lines_refused(
            &["window 30 1", "window 0 1 5000", "window 30 x 5000"],
            "line 2: expected 'window",
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Review s22, finding 2: the steps whose records the tracker had forgotten (per step
    /// length) survive a clean restart and every snapshot; a snapshot of before them loads
    /// with none (the daemon then refuses everything before its saved window); a damaged line
    /// is refused, naming its line.
    #[test]
    fn the_forgotten_steps_survive_a_clean_restart() {
        let dir = tmpdir("forgotten");
        let steps = vec![
            UsedStep {
                step_seconds: 30,
                counter: 59_000_001,
            },
            UsedStep {
                step_seconds: 10,
                counter: 177_000_004,
            },
        ];
        let mut store = JournalStore::open(&dir).unwrap();
        assert!(store.forgotten().is_empty());
        store.set_forgotten(steps.clone());
        store.checkpoint().unwrap();
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert!(text.contains("\nforgotten 30:59000001\n"), "{text}");
        let mut again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.forgotten(), &steps[..]);
        again.compact().unwrap();
        assert_eq!(JournalStore::open(&dir).unwrap().forgotten(), &steps[..]);
        let old = sealed(format!("{HEADER_V3}\nwindow 30 1 5000\n"));
        assert!(parse(old.as_bytes()).unwrap().forgotten.is_empty());
        assert_lines_refused(
            &["forgotten 30", "forgotten x:1", "forgotten 30:1 2"],
            "line 2: expected 'forgotten",
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A start after a crash whose clock is behind the crashed run's (an RTC before NTP) counts
    /// the crash rules from the newest time the state files record: the files' modification
    /// times (here set to the crashed run's virtual clock).
    #[test]
    fn a_start_after_a_crash_counts_from_the_newest_time_the_state_files_record() {
        let dir = tmpdir("last-running");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let window = SavedWindow {
            step_seconds: 30,
            skew_steps: 1,
            timeout_ms: 5000,
        };
        let mut store = JournalStore::open(&dir).unwrap();
        store.mark_running(&[window]).unwrap();
        let state = ReplayState {
            floor: Some(UnixMillis(1)),
            ..ReplayState::default()
        };
        store.advance([(&a, state)]).unwrap();
        assert!(dir.join(JOURNAL_NAME).exists(), "a journal record");
        // The crashed run's clock: the marker written at its start, the journal at its last
        // grant 10 minutes later.
        let started = UnixMillis(1_764_000_000_000);
        let granted = started.plus_millis(600_000);
        let last_running = |dir: &Path| newest_state_file(dir).map(|(_, t)| t);
        let set = |name: &str, t: UnixMillis| {
            let file = OpenOptions::new().write(true).open(dir.join(name)).unwrap();
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.0);
            file.set_modified(at).unwrap();
        };
        set(RUNNING_NAME, started);
        set(JOURNAL_NAME, granted);
        // This start's clock is 20 minutes behind.
        let now = granted.offset_millis(-1_200_000);
        assert_eq!(crash_start(now, last_running(&dir)), granted);
        // Under state_sync = "fence" the fence file is rewritten every few seconds.
        write_fence(&dir, granted.plus_millis(60_000)).unwrap();
        let fenced = granted.plus_millis(25_000);
        set(FENCE_NAME, fenced);
        assert_eq!(crash_start(now, last_running(&dir)), fenced);
        // A clock ahead of them all counts from itself.
        let later = fenced.plus_millis(1);
        assert_eq!(crash_start(later, last_running(&dir)), later);
        // Nothing there: the clock.
        let empty = tmpdir("last-running-empty");
        assert_eq!(crash_start(now, last_running(&empty)), now);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Snapshots are written as version 4 (version 3 and its `forgotten` lines); a version-3
    /// one (with `forgotten` lines as written from 036c110 on, or without, as before) and a
    /// version-2 one still load, through the same parser. A sesamed of before reads
    /// `sesame-replay 4` as a header it does not know, not as a damaged line (review s21,
    /// finding 4; a version-3 sesamed of before 036c110 stopped at the first `forgotten` line),
    /// and this one refuses a version it does not know by its first line, naming the file.
    #[test]
    fn snapshots_are_version_4_and_versions_2_and_3_still_load() {
        let dir = tmpdir("version");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let forgotten = vec![UsedStep {
            step_seconds: 30,
            counter: 59_000_001,
        }];
        let mut store = JournalStore::open(&dir).unwrap();
        let state = ReplayState {
            floor: Some(UnixMillis(77)),
            ..ReplayState::default()
        };
        store.advance([(&a, state)]).unwrap();
        store.set_forgotten(forgotten.clone());
        store.set_crash_floor(Some(UnixMillis(1_764_000_090_000)));
        store.checkpoint().unwrap();
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert!(text.starts_with("sesame-replay 4\n"), "{text}");
        assert!(text.contains("\nforgotten 30:59000001\n"), "{text}");
        // The round trip.
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&a).floor, Some(UnixMillis(77)));
        assert_eq!(again.forgotten(), &forgotten[..]);
        assert_eq!(again.crash_floor(), Some(UnixMillis(1_764_000_090_000)));

        // Version 3 with `forgotten` lines (036c110 until version 4) and without (before).
        let v3 = sealed(format!(
            "sesame-replay 3\n{a} 79 - -\nforgotten 30:59000001\n"
        ));
        std::fs::write(dir.join(FILE_NAME), v3).unwrap();
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&a).floor, Some(UnixMillis(79)));
        assert_eq!(again.forgotten(), &forgotten[..]);
        let v3 = sealed(format!("sesame-replay 3\n{a} 80 - -\nwindow 30 1 5000\n"));
        std::fs::write(dir.join(FILE_NAME), v3).unwrap();
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&a).floor, Some(UnixMillis(80)));
        assert!(again.forgotten().is_empty());
        assert!(again.seen_window().is_some());
        let v2 = sealed(format!("sesame-replay 2\n{a} 78 - -\n"));
        std::fs::write(dir.join(FILE_NAME), v2).unwrap();
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&a).floor, Some(UnixMillis(78)));

        // A version it does not know: refused as such, sealed or not, in one line naming the
        // file.
        for (bad, version) in [
            ("sesame-replay 5", "5"),
            ("sesame-replay 0", "0"),
            ("sesame-replay 22", "22"),
        ] {
            for file in [
                sealed(format!("{bad}\n{a} 77 - -\n")),
                format!("{bad}\nanything at all"),
            ] {
                std::fs::write(dir.join(FILE_NAME), file).unwrap();
                let err = JournalStore::open(&dir).err().unwrap();
                assert!(
                    matches!(&err, StateError::UnknownVersion { version: v, .. } if v == version),
                    "{bad}: {err:?}"
                );
                let err = err.to_string();
                assert!(
                    err.starts_with(&format!(
                        "{}: replay state of version {version}, which this sesamed does not read",
                        dir.join(FILE_NAME).display()
                    )),
                    "{bad}: {err}"
                );
                assert!(!err.contains('\n'), "{err}");
            }
        }
        // A first line that names no version is damage.
        for bad in [
            "sesame-replay",
            "sesame-replay x",
            "sesame-replay 4 5",
            "sesame 4",
        ] {
            let file = sealed(format!("{bad}\n{a} 77 - -\n"));
            std::fs::write(dir.join(FILE_NAME), &file).unwrap();
            assert!(
                matches!(JournalStore::open(&dir), Err(StateError::Corrupt { .. })),
                "{bad}"
            );
            let err = parse(file.as_bytes()).err().unwrap();
            assert!(
                err.starts_with("first line is not 'sesame-replay 4'"),
                "{bad}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_crash_floor_survives_a_clean_restart() {
        let dir = tmpdir("crash-floor");
        let mut store = JournalStore::open(&dir).unwrap();
        assert_eq!(store.crash_floor(), None);
        // Reason enough to write a snapshot.
        store.set_crash_floor(Some(UnixMillis(1_764_000_090_000)));
        store.checkpoint().unwrap();
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert!(text.contains("\nafter_crash 1764000090000\n"), "{text}");
        let mut again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.crash_floor(), Some(UnixMillis(1_764_000_090_000)));
        // Passed: the next stop writes none.
        again.set_crash_floor(None);
        again.checkpoint().unwrap();
        assert_eq!(JournalStore::open(&dir).unwrap().crash_floor(), None);
        assert_lines_refused(
            &["after_crash", "after_crash x", "after_crash 5 6"],
            "line 2: expected",
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_crash_marker_keeps_the_windows_in_use_until_a_clean_stop() {
        let dir = tmpdir("windows");
        let w = |step_seconds, skew_steps, timeout_ms| SavedWindow {
            step_seconds,
            skew_steps,
            timeout_ms,
        };
        let mut store = JournalStore::open(&dir).unwrap();
        assert!(previous_windows(&dir, 30).is_empty(), "no marker");
        assert!(!store.mark_running(&[w(30, 1, 5000)]).unwrap());
        // A reload to a narrower window (or the same) writes nothing; a wider one or another
        // step length is appended.
        store.note_window(w(30, 1, 9000)).unwrap();
        store.note_window(w(30, 0, 5000)).unwrap();
        assert_eq!(previous_windows(&dir, 30), vec![w(30, 1, 5000)]);
        store.note_window(w(30, 3, 5000)).unwrap();
        store.note_window(w(60, 1, 5000)).unwrap();
        store.note_window(w(30, 2, 5000)).unwrap();
        let noted = vec![w(30, 1, 5000), w(30, 3, 5000), w(60, 1, 5000)];
        assert_eq!(previous_windows(&dir, 30), noted);
        // A crash: the next start reads them (and its boot is this one), and keeps them with
        // its own, the covered ones dropped.
        assert_eq!(previous_run(&dir), Some(boot_id().is_some()));
        let mut next = JournalStore::open(&dir).unwrap();
        let mut windows = previous_windows(&dir, 30);
        windows.push(w(30, 2, 5000));
        assert!(next.mark_running(&windows).unwrap());
        assert_eq!(
            previous_windows(&dir, 30),
            vec![w(30, 3, 5000), w(60, 1, 5000)]
        );
        assert_eq!(previous_run(&dir), Some(boot_id().is_some()));
        // A marker of before the window lines (the boot id alone, no newline) names the boot
        // and no window.
        let marker = dir.join(RUNNING_NAME);
        if let Some(id) = boot_id() {
            std::fs::write(&marker, &id).unwrap();
            assert_eq!(previous_run(&dir), Some(true));
            assert!(previous_windows(&dir, 30).is_empty());
        }
        for bad in [
            "window 0 1 5000",
            "window 30 1",
            "window 30 1 5000 9",
            "windows 30 1 5",
        ] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
        // A clean stop removes them with the marker.
        next.mark_stopped().unwrap();
        assert_eq!(previous_run(&dir), None);
        assert!(previous_windows(&dir, 30).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_crash_marker_is_read_as_the_widest_window() {
        let dir = tmpdir("marker-damaged");
        let w = |step_seconds, skew_steps, timeout_ms| SavedWindow {
            step_seconds,
            skew_steps,
            timeout_ms,
        };
        let widest = |step_seconds| w(step_seconds, WIDEST_SKEW_STEPS, WIDEST_TIMEOUT_MS);
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join(RUNNING_NAME);
        // Whole markers: as written, and the boot id alone (before the window lines).
        std::fs::write(&marker, "boot\nwindow 60 1 5000\n").unwrap();
        assert_eq!(previous_windows(&dir, 30), vec![w(60, 1, 5000)]);
        std::fs::write(&marker, "boot").unwrap();
        assert!(previous_windows(&dir, 30).is_empty());
        std::fs::write(&marker, "\n").unwrap();
        assert!(previous_windows(&dir, 30).is_empty());
        // Damaged ones: the lost windows may have been wider than any left, so the widest the
        // configuration allows, for this start's step length and every one still named.
        for (text, expected) in [
            // Cut short by a crash during an in-place rewrite (of before it was atomic).
            ("", vec![widest(30)]),
            (
                "boot\nwindow 60 1 5000\nwindow 30 7",
                vec![w(60, 1, 5000), widest(30), widest(60)],
            ),
            // A last line cut short that still parses, as a narrower window.
            (
                "boot\nwindow 60 1 50",
                vec![w(60, 1, 50), widest(30), widest(60)],
            ),
            // A bad line that is not the last one.
            (
                "boot\nwindow 60 x 5000\nwindow 60 1 5000\n",
                vec![w(60, 1, 5000), widest(30), widest(60)],
            ),
            (
                "boot\n\nwindow 30 1 5000\n",
                vec![w(30, 1, 5000), widest(30)],
            ),
        ] {
            std::fs::write(&marker, text.as_bytes()).unwrap();
            assert_eq!(previous_windows(&dir, 30), expected, "{text:?}");
        }
        std::fs::write(&marker, b"boot\nwindow 60 1 5000\n\xff\n").unwrap();
        assert_eq!(previous_windows(&dir, 30), vec![widest(30)]);
        // An unreadable marker (not a regular file, a link) is damaged too.
        std::fs::remove_file(&marker).unwrap();
        std::fs::create_dir(&marker).unwrap();
        assert_eq!(previous_windows(&dir, 30), vec![widest(30)]);
        std::fs::remove_dir(&marker).unwrap();
        std::os::unix::fs::symlink("elsewhere", &marker).unwrap();
        assert_eq!(previous_windows(&dir, 30), vec![widest(30)]);
        // The start after it keeps the widest window in its own marker (which replaces the
        // link), and its crash reaches as far: the crash rules extend to the widest window.
        let mut store = JournalStore::open(&dir).unwrap();
        let mut windows = previous_windows(&dir, 30);
        windows.push(w(30, 1, 5000));
        assert!(store.mark_running(&windows).unwrap(), "a crash");
        assert!(!std::fs::symlink_metadata(&marker).unwrap().is_symlink());
        assert_eq!(previous_windows(&dir, 30), vec![widest(30)]);
        let start = UnixMillis(1_764_000_000_000);
        let reach = |windows: &[SavedWindow]| {
            windows
                .iter()
                .filter(|w| w.step_seconds > 0)
                .map(|w| {
                    (start.counter(w.step_seconds) + u64::from(w.skew_steps) + 2)
                        * u64::from(w.step_seconds)
                        * 1000
                })
                .max()
        };
        assert!(reach(&previous_windows(&dir, 30)) > reach(&[w(30, 3, 5000)]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_widest_window_is_the_widest_the_configuration_allows() {
        let parse = |knock: &str| {
            let text = format!(
                "private_key_file = \"server.key\"\n[knock]\n{knock}\n[firewall]\nprotect = [\"tcp/22\"]\n[[client]]\nname = \"c\"\npublic_key = \"{}\"\n",
                sesame_keys::PrivateKey::from_bytes([1; 32]).public_key()
            );
            crate::config::Config::parse(&text, Path::new("/etc/sesame/sesamed.toml"))
        };
        let most = parse(&format!(
            "skew_steps = {WIDEST_SKEW_STEPS}\ntimeout_ms = {WIDEST_TIMEOUT_MS}"
        ))
        .unwrap();
        assert_eq!(most.knock.skew_steps, WIDEST_SKEW_STEPS);
        assert_eq!(most.knock.timeout_ms, WIDEST_TIMEOUT_MS);
        let more_skew = parse(&format!("skew_steps = {}", WIDEST_SKEW_STEPS + 1));
        assert!(more_skew.is_err());
        let longer = parse(&format!("timeout_ms = {}", WIDEST_TIMEOUT_MS + 1));
        assert!(longer.is_err());
    }

    #[test]
    fn the_crash_marker_is_replaced_whole_and_a_leftover_temporary_file_breaks_nothing() {
        let dir = tmpdir("marker-atomic");
        let w = |step_seconds, skew_steps| SavedWindow {
            step_seconds,
            skew_steps,
            timeout_ms: 5000,
        };
        let marker = dir.join(RUNNING_NAME);
        let tmp = dir.join(RUNNING_TMP_NAME);
        assert!(OWN_FILES.contains(&RUNNING_TMP_NAME));
        // A temporary file left by a crash during a rewrite (or planted: a link is not
        // followed) goes first, and is never read as the marker.
        let mut store = JournalStore::open(&dir).unwrap();
        std::os::unix::fs::symlink(dir.join("target"), &tmp).unwrap();
        assert!(!store.mark_running(&[w(30, 1)]).unwrap(), "no marker yet");
        assert!(!dir.join("target").exists() && !tmp.exists());
        let boot = boot_id().unwrap_or_default();
        let whole = |windows: &[SavedWindow]| {
            let mut text = format!("{boot}\n");
            for x in windows {
                text.push_str(&window_line(x));
            }
            text
        };
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            whole(&[w(30, 1)])
        );
        // A reload to a wider window: a new file (another inode), the whole marker with the
        // extra line, 0600, nothing left behind.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let before = std::fs::metadata(&marker).unwrap().ino();
        std::fs::write(&tmp, "garbage").unwrap();
        store.note_window(w(30, 4)).unwrap();
        let meta = std::fs::metadata(&marker).unwrap();
        assert_ne!(meta.ino(), before, "replaced, not rewritten in place");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            whole(&[w(30, 1), w(30, 4)])
        );
        assert!(!tmp.exists());
        assert_eq!(previous_windows(&dir, 30), vec![w(30, 1), w(30, 4)]);
        // A crash after the temporary file was written but before the rename: the old marker
        // is whole, and the next start replaces both.
        std::fs::write(&tmp, "boot\nwindow 30").unwrap();
        assert_eq!(previous_windows(&dir, 30), vec![w(30, 1), w(30, 4)]);
        let mut next = JournalStore::open(&dir).unwrap();
        let mut windows = previous_windows(&dir, 30);
        windows.push(w(60, 1));
        assert!(next.mark_running(&windows).unwrap(), "a crash");
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            whole(&[w(30, 4), w(60, 1)])
        );
        assert!(!tmp.exists());
        next.mark_stopped().unwrap();
        assert!(!marker.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gated_steps_survive_a_clean_restart_and_snapshots_without_them_still_load() {
        let dir = tmpdir("gated");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        let gated = vec![
            GatedStep {
                client: a,
                step: UsedStep {
                    step_seconds: 30,
                    counter: 58_800_000,
                },
                expires: UnixMillis(1_764_000_065_000),
            },
            GatedStep {
                client: a,
                step: UsedStep {
                    step_seconds: 60,
                    counter: 7,
                },
                expires: UnixMillis(9),
            },
        ];
        // Gated steps alone are reason enough to write a snapshot.
        store.set_gated(gated.clone());
        store.checkpoint().unwrap();
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert!(
            text.contains(&format!("\ngated {a} 30:58800000 1764000065000\n")),
            "{text}"
        );
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.gated(), &gated[..]);
        assert!(again.seen().is_empty());
        // A snapshot of before gated lines (replay states and seen lines only) loads, with
        // no gated step.
        let mac = "07".repeat(MAC_LEN);
        let old = sealed(format!("{HEADER_V2}\n{a} 77 - -\nseen {mac} {a} 123456\n"));
        std::fs::write(dir.join(FILE_NAME), old).unwrap();
        let old = JournalStore::open(&dir).unwrap();
        assert!(old.gated().is_empty());
        assert_eq!(old.seen().len(), 1);
        assert_eq!(old.get(&a).floor, Some(UnixMillis(77)));
        // A damaged gated line is refused like any other, naming its line.
        let bad = [
            format!("gated {a} 30:5"),
            format!("gated {a} 30-5 9"),
            format!("gated {a} 30:x 9"),
            format!("gated {a} 30:5 9 extra"),
            "gated nokey 30:5 9".to_owned(),
        ];
        for line in &bad {
            assert!(parse_gated(line).is_none(), "{line}");
        }
        assert_lines_refused(&bad, "line 2: expected 'gated");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn protocol_1_files_are_ignored_and_replaced() {
        let dir = tmpdir("v1");
        std::fs::create_dir_all(&dir).unwrap();
        let a = sesame_keys::PrivateKey::generate().public_key();
        std::fs::write(
            dir.join(FILE_NAME),
            format!("{HEADER_V1}\n{a} 1000 -\nsha256 00\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join(JOURNAL_NAME),
            format!("{JOURNAL_HEADER_V1}\n{a} 2000 - 0123456789abcdef\n"),
        )
        .unwrap();
        let mut store = JournalStore::open(&dir).unwrap();
        assert!(store.found_legacy());
        assert_eq!(store.get(&a), ReplayState::default());
        store.advance([(&a, state(5000))]).unwrap();
        let j = std::fs::read_to_string(store.journal_path()).unwrap();
        assert!(j.starts_with(&format!("{JOURNAL_HEADER}\n")), "{j}");
        assert_eq!(j.lines().count(), 2, "{j}");
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&a), state(5000));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_save_appends_one_record_and_unchanged_clients_write_nothing() {
        let dir = tmpdir("journal");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let b = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        store
            .advance([(&a, state(1000)), (&b, ReplayState::default())])
            .unwrap();
        assert!(!store.path().exists(), "no snapshot until compaction");
        let j1 = std::fs::read_to_string(store.journal_path()).unwrap();
        assert_eq!(j1.lines().count(), 2, "{j1}");
        store
            .advance([(&a, state(1000)), (&b, state(2000))])
            .unwrap();
        let j2 = std::fs::read_to_string(store.journal_path()).unwrap();
        assert_eq!(j2.lines().count(), 3, "only b changed: {j2}");
        assert!(j2.starts_with(&j1));
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&a), state(1000));
        assert_eq!(again.get(&b), state(2000));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.journal_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_overwritten_but_a_bad_middle_one_is_refused() {
        let dir = tmpdir("torn");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        store.advance([(&a, state(1000))]).unwrap();
        store.advance([(&a, state(2000))]).unwrap();
        let full = std::fs::read(store.journal_path()).unwrap();
        let jpath = store.journal_path();
        drop(store);
        // Every cut inside the last record: that write never returned, so nothing was granted
        // on it; the record before it stands.
        let last_start = full[..full.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        for cut in last_start..full.len() {
            std::fs::write(&jpath, &full[..cut]).unwrap();
            let mut store = JournalStore::open(&dir).unwrap();
            assert_eq!(store.get(&a), state(1000), "cut at {cut}");
            // The next record replaces the torn bytes.
            store.advance([(&a, state(3000))]).unwrap();
            assert_eq!(
                JournalStore::open(&dir).unwrap().get(&a),
                state(3000),
                "cut {cut}"
            );
        }
        // A damaged record followed by a good one is corruption, not a crash.
        let mut bad = full.clone();
        bad[last_start - 5] ^= 1;
        std::fs::write(&jpath, &bad).unwrap();
        let err = JournalStore::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("corrupt replay state") && err.contains(JOURNAL_NAME),
            "{err}"
        );
        // So is a journal that is not one.
        std::fs::write(&jpath, b"something else\n").unwrap();
        assert!(JournalStore::open(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_moves_the_journal_into_the_snapshot_and_a_crash_between_loses_nothing() {
        let dir = tmpdir("compact");
        let keys: Vec<_> = (0..5)
            .map(|_| sesame_keys::PrivateKey::generate().public_key())
            .collect();
        let mut store = JournalStore::open(&dir).unwrap();
        for (i, k) in keys.iter().enumerate() {
            store.advance([(k, state(1000 * (i as u64 + 1)))]).unwrap();
        }
        // A crash after the snapshot was written but before the journal was emptied.
        store.write_snapshot().unwrap();
        store.advance([(&keys[0], state(9000))]).unwrap();
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&keys[0]), state(9000));
        assert_eq!(again.get(&keys[4]), state(5000));
        store.compact().unwrap();
        let j = std::fs::read_to_string(store.journal_path()).unwrap();
        assert_eq!(j, format!("{JOURNAL_HEADER}\n"));
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(again.get(&keys[0]), state(9000));
        assert_eq!(again.get(&keys[3]), state(4000));
        // Compaction comes by itself after COMPACT_AFTER records.
        let mut store = again;
        for i in 0..COMPACT_AFTER as u64 {
            store.advance([(&keys[1], state(10_000 + i))]).unwrap();
        }
        assert!(store.journal_records < 10, "{}", store.journal_records);
        let again = JournalStore::open(&dir).unwrap();
        assert_eq!(
            again.get(&keys[1]),
            state(10_000 + COMPACT_AFTER as u64 - 1)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let dir = tmpdir("ro");
        let mut store = JournalStore::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let a = sesame_keys::PrivateKey::generate().public_key();
        assert!(store.advance([(&a, state(1))]).is_err());
    }

    #[test]
    fn a_fence_round_trips_and_a_damaged_one_is_an_error() {
        let dir = tmpdir("fence");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_fence(&dir).unwrap(), None);
        write_fence(&dir, UnixMillis(1_893_456_000_123)).unwrap();
        assert_eq!(
            read_fence(&dir).unwrap(),
            Some(UnixMillis(1_893_456_000_123))
        );
        let path = dir.join(FENCE_NAME);
        let text = std::fs::read_to_string(&path).unwrap();
        // One digit changed: the check fails.
        std::fs::write(&path, text.replacen("123", "124", 1)).unwrap();
        assert!(read_fence(&dir).is_err());
        std::fs::write(&path, "").unwrap();
        assert!(read_fence(&dir).is_err());
        remove_fence(&dir).unwrap();
        assert_eq!(read_fence(&dir).unwrap(), None);
        remove_fence(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fence_ahead_of_the_clock_spares_the_sync_and_one_behind_does_not() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tmpdir("fence-sync");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let fence = Arc::new(AtomicU64::new(now + 60_000));
        store.use_fence(Arc::clone(&fence), 30_000);
        store.advance([(&a, state(1))]).unwrap();
        assert_eq!(
            store.unsynced_appends(),
            1,
            "covered: written without a sync"
        );
        // A reload's larger max_ahead_ms is past the fence: synced again.
        store.set_max_ahead(90_000);
        store.advance([(&a, state(2))]).unwrap();
        assert_eq!(store.unsynced_appends(), 1);
        store.set_max_ahead(30_000);
        // The writer lags: the fence is behind now + max_ahead_ms.
        fence.store(now, Ordering::Release);
        store.advance([(&a, state(3))]).unwrap();
        assert_eq!(store.unsynced_appends(), 1);
        // Either way the record is there.
        assert_eq!(JournalStore::open(&dir).unwrap().get(&a), state(3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn after_lost_writes_the_journal_is_read_up_to_its_first_bad_record() {
        let dir = tmpdir("lost");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let b = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        store.advance([(&a, state(1000))]).unwrap();
        store.advance([(&b, state(2000))]).unwrap();
        store.advance([(&a, state(3000))]).unwrap();
        // A page of the middle record never reached the disk: zeros.
        let path = store.journal_path();
        let mut bytes = std::fs::read(&path).unwrap();
        let lines: Vec<usize> = bytes
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        // lines[0]: end of the header, [1]: of the first record, [2]: of the second.
        for byte in &mut bytes[lines[1] + 1..lines[1] + 9] {
            *byte = 0;
        }
        std::fs::write(&path, &bytes).unwrap();
        // Any other start: refused, as before (less state would make old knocks valid).
        assert!(matches!(
            JournalStore::open(&dir),
            Err(StateError::Corrupt { .. })
        ));
        // After a machine crash under "fence": read up to the damage (the fence covers the
        // rest).
        let lenient = JournalStore::open_with(&dir, true).unwrap();
        assert_eq!(lenient.get(&a), state(1000));
        assert_eq!(lenient.get(&b), ReplayState::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The contract of [`ReplayStore::advance`] (new with the trait: `save` used to record
    /// whatever state it was given): an older state changes nothing, not even the journal,
    /// also when it comes after the newer one in the same call.
    #[test]
    fn advance_never_goes_back_to_an_older_state() {
        let dir = tmpdir("older");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let mut store = JournalStore::open(&dir).unwrap();
        store.advance([(&a, state(3000))]).unwrap();
        let before = std::fs::read(store.journal_path()).unwrap();
        store.advance([(&a, state(1000))]).unwrap();
        assert_eq!(store.get(&a), state(3000));
        assert_eq!(std::fs::read(store.journal_path()).unwrap(), before);
        store
            .advance([(&a, state(5000)), (&a, state(4000))])
            .unwrap();
        assert_eq!(store.get(&a), state(5000));
        assert_eq!(JournalStore::open(&dir).unwrap().get(&a), state(5000));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// States that do not cover each other (two servers granting at once, tomorrow) are
    /// joined: no floor is lowered and nothing either one refuses is dropped, unless the
    /// higher floor covers it.
    #[test]
    fn advance_never_lowers_a_floor_and_keeps_what_the_stored_state_refuses() {
        let dir = tmpdir("join");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let payload = |t: u64, m: u8| AcceptedPayload {
            timestamp: UnixMillis(t),
            mac: [m; MAC_LEN],
        };
        let step = |counter: u64| UsedStep {
            step_seconds: 30,
            counter,
        };
        let stored = ReplayState {
            accepted: vec![payload(100_000, 1), payload(50_000, 2)],
            steps: vec![step(3), step(1)],
            floor: Some(UnixMillis(60_000)),
            action_floor: Some(UnixMillis(100_000)),
        };
        let mut store = JournalStore::open(&dir).unwrap();
        store.advance([(&a, stored)]).unwrap();
        let diverging = ReplayState {
            accepted: vec![payload(90_000, 3)],
            steps: vec![step(2)],
            floor: Some(UnixMillis(40_000)),
            action_floor: Some(UnixMillis(90_000)),
        };
        store.advance([(&a, diverging)]).unwrap();
        let joined = ReplayState {
            // 50_000 and step 1 (starting at 30 000) are under the floor of 60 000.
            accepted: vec![payload(90_000, 3), payload(100_000, 1)],
            steps: vec![step(2), step(3)],
            floor: Some(UnixMillis(60_000)),
            action_floor: Some(UnixMillis(100_000)),
        };
        assert_eq!(store.get(&a), joined);
        assert_eq!(JournalStore::open(&dir).unwrap().get(&a), joined);
        // A state that covers the stored one replaces it as it is.
        let newer = ReplayState {
            accepted: vec![payload(200_000, 4)],
            steps: Vec::new(),
            floor: Some(UnixMillis(120_000)),
            action_floor: Some(UnixMillis(200_000)),
        };
        store.advance([(&a, newer.clone())]).unwrap();
        assert_eq!(JournalStore::open(&dir).unwrap().get(&a), newer);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
