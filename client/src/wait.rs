//! Confirming that a knock opened the service, re-knocking, explaining failures, and relaying
//! a connection for OpenSSH's `ProxyCommand`.
//!
//! The server never answers a knock, so the only evidence is the service itself: a TCP
//! connection that succeeds. When it never does, the client probes what it can (its clock
//! against the server's step, by knocking with shifted time) and lists the likely causes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::knock::{self, KnockPlan};

/// How `--wait` and `proxy` confirm a knock.
#[derive(Clone, Copy, Debug)]
pub struct WaitPolicy {
    /// How long to try connecting after each knock.
    pub timeout: Duration,
    /// Extra knocks after the first when the service does not answer.
    pub retries: u32,
    /// Milliseconds between knock packets.
    pub delay: Duration,
}

/// Parses `5s`, `500ms`, `1m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 5s, 500ms, 1m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("'{s}': unit must be ms, s or m")),
    };
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("'{s}' is out of range (0 to 1 hour)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Tries to connect until `timeout` has passed: short attempts, each a fresh SYN, so a knock
/// that opens a moment later is noticed at once.
pub fn connect_within(addr: SocketAddr, timeout: Duration) -> Option<TcpStream> {
    let start = Instant::now();
    let mut attempt = Duration::from_millis(150);
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        let t = attempt.min(left);
        let tried = Instant::now();
        match TcpStream::connect_timeout(&addr, t) {
            Ok(s) => return Some(s),
            Err(_) => {
                // A refused connection returns at once: do not spin.
                if let Some(rest) = t.checked_sub(tried.elapsed()) {
                    std::thread::sleep(rest.min(Duration::from_millis(100)));
                }
            }
        }
        attempt = (attempt * 2).min(Duration::from_secs(1));
    }
}

/// The outcome of [`knock_and_wait`].
pub struct Opened {
    /// The connection that proved the service answers.
    pub stream: TcpStream,
    /// Knocks sent, the successful one included.
    pub knocks: u32,
    /// A clock offset (seconds) that made it work, if the plain knocks did not.
    pub clock_offset: Option<i64>,
}

/// The clock shifts `--wait` probes with after the plain knocks failed, in seconds. A probe
/// with the clock ahead is a knock that the server may accept only later: whoever captured it
/// could use it then. So there is one forward probe, of one step, and only when the knock names
/// an address (`bound`): with a clock that agrees with the server's it lands inside the
/// server's window (or the step after it, whose payloads the server burns on arrival), so it
/// is never valid later; and a forged binding (a spoofed STUN answer) gains the forger nothing.
/// Backward probes are never valid later than a plain knock would be.
pub fn probe_shifts(step_seconds: u32, bound: bool) -> Vec<i64> {
    let step = i64::from(step_seconds);
    let all = [step, -step, -2 * step, -4 * step];
    all.into_iter().filter(|s| bound || *s < 0).collect()
}

/// Knocks with `plan_at(offset_seconds)`, then connects to `service`; re-knocks up to
/// `policy.retries` times. If it never opens, knocks with the clock shifted by one, two and
/// four steps (forward only when `bound`, see [`probe_shifts`]) to detect a clock offset, and
/// returns an error that says what is likely wrong.
#[allow(clippy::too_many_arguments)]
pub fn knock_and_wait(
    plan_at: &dyn Fn(i64) -> anyhow::Result<KnockPlan>,
    base_offset: i64,
    service: SocketAddr,
    policy: WaitPolicy,
    step_seconds: u32,
    bound: bool,
    skew_hint: &str,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<Opened> {
    let mut knocks = 0;
    for attempt in 0..=policy.retries {
        let plan = plan_at(0)?;
        knock::send(&plan, policy.delay)?;
        knocks += 1;
        if let Some(stream) = connect_within(service, policy.timeout) {
            return Ok(Opened {
                stream,
                knocks,
                clock_offset: None,
            });
        }
        if attempt < policy.retries {
            log(&format!(
                "{service} did not answer within {:.1} s; knocking again ({}/{})",
                policy.timeout.as_secs_f64(),
                attempt + 1,
                policy.retries
            ));
        }
    }
    // Probe the clock: the server accepts a window of steps around its own time.
    let shifts = probe_shifts(step_seconds, bound);
    for shift in shifts {
        let plan = plan_at(shift)?;
        knock::send(&plan, policy.delay)?;
        knocks += 1;
        if let Some(stream) = connect_within(service, policy.timeout) {
            let total = base_offset + shift;
            if base_offset == 0 {
                log(&format!(
                    "opened only with the clock shifted by {total:+} s: this machine's clock is about {} s {} the server's; fix its time (NTP) or pass --time-offset {total}",
                    total.abs(),
                    if total > 0 { "behind" } else { "ahead of" }
                ));
            } else {
                log(&format!(
                    "opened only with the clock shifted by {total:+} s, not by the {base_offset:+} s given: pass --time-offset {total} instead (or fix the clocks with NTP)"
                ));
            }
            return Ok(Opened {
                stream,
                knocks,
                clock_offset: Some(total),
            });
        }
    }
    let probed = if bound {
        format!(
            "including knocks with the clock shifted by up to 4 steps of {step_seconds} s either way"
        )
    } else {
        format!(
            "including knocks with the clock set back by up to 4 steps of {step_seconds} s; a clock that runs behind the server's was not probed, because a knock valid later names no address here and could be used by whoever captured it: bind knocks (stun in the profile, or --allow-ip) to probe both ways"
        )
    };
    Err(anyhow!(
        "{service} never answered after {knocks} knocks ({probed}). Likely causes, most likely first: \
(1) wrong keys: the server must list this client's public key (`sesame pubkey < KEY`) and the profile's server_public_key must be the server's (`sesame pubkey < server.key`), with the same psk_file on both sides; \
(2) UDP or the knock ports are blocked on this network: try a profile with protocol = \"tcp\" if the server allows it, or another network; \
(3) the clock is off by more than the server accepts ({skew_hint}); \
(4) the service itself is down, or the address you connect to is not the one you knocked from (NAT or -4/-6); the server's log names the reason for refused knocks"
    ))
}

/// Copies stdin to the connection and the connection to stdout until both directions end.
pub fn relay(stream: TcpStream) -> anyhow::Result<()> {
    let mut upstream = stream.try_clone()?;
    let to_server = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let _ = std::io::copy(&mut stdin, &mut upstream);
        let _ = upstream.shutdown(std::net::Shutdown::Write);
    });
    let mut downstream = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match downstream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow!("connection: {e}")),
        };
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
    drop(stdout);
    // The server closed: the session is over, whatever stdin still holds.
    drop(to_server);
    Ok(())
}
