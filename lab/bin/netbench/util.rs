//! Small helpers: programs and namespaces, /proc figures, time.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sesame_tests::text;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Result;

/// The full path of a program found in `PATH` (and the sbin directories, which a non-login
/// root shell may lack).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

pub(crate) fn need_program(name: &str) -> Result<PathBuf> {
    find_program(name).ok_or_else(|| format!("{name} not found"))
}

/// Runs a command to completion; its stdout, or an error with everything it said.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!("{cmd:?} failed: {}", text(&o)))
    }
}

/// Runs `program args` in a namespace (`ip netns exec`).
pub(crate) fn ns_run(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    run_cmd(
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args),
    )
}

/// Feeds `commands` to `ip -n NS -batch -`.
pub(crate) fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(commands.as_bytes())
        .map_err(|e| format!("ip -batch: {e}"))?;
    let o = child
        .wait_with_output()
        .map_err(|e| format!("ip -batch: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip -n {ns} -batch failed: {}", text(&o)))
    }
}

/// Moves the calling thread into a network namespace; processes it starts afterwards and
/// sockets it opens live there too.
pub(crate) fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: `f` is an open namespace file for the whole call; setns changes only the
    // calling thread's network namespace and has no memory-safety preconditions.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn unix_secs_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// `2026-11-25T17:51:52.123456Z` (tracing's timestamps) as seconds since the epoch.
pub(crate) fn parse_rfc3339(s: &str) -> Option<f64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// The time now, as `2026-11-25 17:51:52 UTC`.
pub(crate) fn utc_now() -> String {
    let t = OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The `cpu` line of /proc/stat: (busy, nice, total) jiffies over all CPUs.
pub(crate) fn cpu_jiffies() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    let idle = at(3) + at(4);
    (total - idle, at(1), total)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub(crate) fn package_version(pkg: &str) -> Option<String> {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", pkg])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}
