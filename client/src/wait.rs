//! Confirming that a knock opened the service, re-knocking, explaining failures, and relaying
//! a connection for OpenSSH's `ProxyCommand`.
//!
//! The server never answers a knock, so the only evidence is the service itself: a TCP
//! connection that succeeds. When it never does, the client probes what it can (its clock
//! against the server's step, by knocking with shifted time) and lists the likely causes.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use sesame_proto::params::{KnockParams, KnockProtocol, PayloadMode};

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
    /// The server's leases admit one connection per knock (`lease = "connection"` in the
    /// profile): the connection made is the one the lease admits, so no connection is tried
    /// before the knock, and after it one socket per knock ([`connect_once`]).
    pub one_connection: bool,
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

/// How long to wait after a knock before connecting when a lease admits one connection: time
/// for the knock to reach the server and for its firewall to let the address in, so that the
/// first SYN finds the lease (one that comes too early is dropped, and the kernel sends it again
/// a second later).
pub const CONNECTION_LEAD: Duration = Duration::from_millis(200);

/// One connection attempt after a knock whose lease admits one connection: one socket, whose
/// SYN the kernel sends again (after 1 s, then 3 s) until `timeout`. [`connect_within`]'s
/// attempts are given up after a fraction of a second: a SYN that found the lease but whose
/// answer was slower than that would use the lease up for a connection nobody takes. Any
/// failure ends the attempt: a refusal means the SYN got through the firewall (the lease, if
/// there was one, is gone) to a port where nothing listens.
pub fn connect_once(addr: SocketAddr, timeout: Duration) -> Option<TcpStream> {
    let lead = CONNECTION_LEAD.min(timeout / 2);
    std::thread::sleep(lead);
    TcpStream::connect_timeout(
        &addr,
        timeout.saturating_sub(lead).max(Duration::from_millis(1)),
    )
    .ok()
}

/// The outcome of [`knock_and_wait`].
pub struct Opened {
    /// The connection that proved the service answers.
    pub stream: TcpStream,
    /// Knocks sent, the successful one included.
    pub knocks: u32,
    /// What the clock probes tell of this machine's clock, if the plain knocks did not open
    /// and a probe did.
    pub clock: Option<ClockEstimate>,
    /// The service answered a connection attempt made before the first knock: it was open for
    /// this host already (a lease for its address, or no protection), so its answer does not
    /// show that the knock worked.
    pub answered_before: bool,
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

/// What [`knock_and_wait`] needs to explain a failure.
#[derive(Clone, Debug)]
pub struct Diagnosis {
    /// The profile's step length.
    pub step_seconds: u32,
    /// Whether the knock names an address (forward clock probes only then).
    pub bound: bool,
    /// Whether knocks carry a payload (its timestamp may be at most `max_ahead_ms` ahead).
    pub payload: bool,
    /// What the server accepts of a clock, for the message.
    pub skew_hint: String,
    /// What a network that blocks the knocks' packets means for this profile
    /// ([`blocked_network_hint`]).
    pub network_hint: String,
    /// `--allow-ip X` when X is not this host's own source address: the knock opens X, and
    /// this host's connections may come from another address.
    pub other_address: Option<IpAddr>,
}

/// One knock of [`knock_and_wait`] and what came of it, for [`estimate_clock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The clock shift of this knock, in seconds, on top of the offset given.
    pub shift: i64,
    /// The time the knock carries (Unix milliseconds): this machine's clock plus the offset
    /// given plus `shift`.
    pub stamped_ms: u64,
    /// Whether the service answered after it.
    pub opened: bool,
}

/// The server's window that [`estimate_clock`] assumes: `skew_steps = 1` (sesamed's default)
/// and `max_ahead_ms` of one step. The client cannot see the server's setting; with a wider
/// window the clock is off by more than the estimate (one step more per extra step).
pub const ASSUMED_SKEW_STEPS: i64 = 1;

/// What the knocks of [`knock_and_wait`] tell of this machine's clock (with the offset given)
/// against the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockEstimate {
    /// The centre of the range the knocks leave: how far this clock (plus the offset given) is
    /// ahead of the server's, in seconds (negative: behind).
    pub ahead: i64,
    /// Half the width of that range, in seconds (rounded up): the estimate is `ahead` plus or
    /// minus this.
    pub within: i64,
}

/// Estimates this machine's clock error from knocks with shifted clocks, the last of which
/// opened: the server accepts a knock stamped `t` (this clock, offset and shift included) when
/// its step is within [`ASSUMED_SKEW_STEPS`] of the server's and, with a payload, `t` is at
/// most one such window ahead. With `psi` the position of `t` inside its step and `e` the
/// error, that is `psi - (skew + 1) * step < e + shift <= skew * step` (`+ psi` on the right
/// without a payload). The knock that opened puts `e` in one such range; each knock that did
/// not takes its own range out. The estimate is the centre of what is left. `None` when no
/// knock opened.
pub fn estimate_clock(step_seconds: u32, payload: bool, probes: &[Probe]) -> Option<ClockEstimate> {
    let step = i64::from(step_seconds) * 1000;
    let skew = ASSUMED_SKEW_STEPS;
    // The errors (ms) for which the server accepts this knock: (lo, hi].
    let accepted = |p: &Probe| -> (i64, i64) {
        let stamped = i64::try_from(p.stamped_ms).unwrap_or(i64::MAX);
        let psi = stamped.rem_euclid(step);
        let lo = psi - (skew + 1) * step;
        let hi = skew * step + if payload { 0 } else { psi };
        let shift = p.shift.saturating_mul(1000);
        (lo - shift, hi - shift)
    };
    let ok = probes.iter().rev().find(|p| p.opened)?;
    let (mut lo, mut hi) = accepted(ok);
    for p in probes.iter().filter(|p| !p.opened) {
        let (a, b) = accepted(p);
        if b <= lo || a >= hi || (a <= lo && b >= hi) {
            // Outside the range; or all of it, which contradicts the knock that opened (a lost
            // packet, a slow service): it tells nothing.
            continue;
        }
        // It cuts the bottom, or the top, or (in the middle) keeps the larger side.
        if a <= lo || (b < hi && a - lo < hi - b) {
            lo = b;
        } else {
            hi = a;
        }
    }
    let mid = lo + (hi - lo) / 2;
    Some(ClockEstimate {
        ahead: (mid + 500).div_euclid(1000),
        within: (hi - lo + 1999) / 2000,
    })
}

/// The advice after a clock probe opened: `shift` is the probe's shift, `given` the
/// `--time-offset` of the command.
pub fn clock_advice(given: i64, shift: i64, clock: ClockEstimate) -> String {
    let offset = given - clock.ahead;
    let window = format!(
        "± {} s, if the server keeps the default skew_steps = {ASSUMED_SKEW_STEPS}",
        clock.within
    );
    if given == 0 {
        format!(
            "opened only with the clock shifted by {shift:+} s: this machine's clock is about {} s {} the server's ({window}); fix its time (NTP), or pass --time-offset {offset}",
            clock.ahead.abs(),
            if clock.ahead < 0 {
                "behind"
            } else {
                "ahead of"
            }
        )
    } else {
        format!(
            "opened only with the clock shifted by {:+} s, not by the {given:+} s given: the offset that puts this clock in the middle of the server's window is about {offset} s ({window}); pass --time-offset {offset} instead (or fix the clocks with NTP)",
            given + shift
        )
    }
}

/// What it means for a profile that the network blocks its knocks: which packets must get
/// through, and what the server's admin would have to change. A payload is always a UDP
/// datagram to a port of the knock range, whatever `protocol` says.
pub fn blocked_network_hint(params: &KnockParams, payload: PayloadMode) -> String {
    let ports = format!("ports {}-{}", params.port_lo, params.port_hi);
    // Single-packet mode (length = 0) has no knocks: the payload alone is the knock.
    let tcp_knocks = params.length > 0 && params.protocol != KnockProtocol::Udp;
    let udp_knocks = params.length > 0 && params.protocol != KnockProtocol::Tcp;
    let new_profile = "the server's admin sets protocol = \"tcp\"";
    match payload {
        PayloadMode::Required => format!(
            "{} to {ports} {} blocked on this network: with payload = \"required\" every knock ends with a UDP datagram to a port of that range, so UDP must get through whatever the protocol (protocol = \"tcp\" alone does not help); without UDP only TCP knocks get in, once {new_profile} with payload = \"optional\" or \"none\" and gives you the new profile; or use another network",
            if tcp_knocks { "UDP or TCP SYNs" } else { "UDP" },
            if tcp_knocks { "are" } else { "is" },
        ),
        PayloadMode::Optional if !udp_knocks => format!(
            "TCP SYNs to {ports} are blocked on this network (a blocked UDP payload alone does not stop this profile: with payload = \"optional\" the TCP knocks open alone, unbound, timeout_ms after the first, unless the server sets require_address); use another network"
        ),
        PayloadMode::Optional => format!(
            "UDP to {ports} is blocked on this network: without UDP only TCP knocks get in, once {new_profile} (with payload = \"optional\" they open alone, unbound, timeout_ms after the first when the UDP payload is blocked) and gives you the new profile; or use another network"
        ),
        PayloadMode::None if !udp_knocks => {
            format!("TCP SYNs to {ports} are blocked on this network; use another network")
        }
        PayloadMode::None => format!(
            "UDP to {ports} is blocked on this network: with payload = \"none\" the knocks need no UDP once {new_profile} and gives you the new profile; or use another network"
        ),
    }
}

/// How long the connection attempt made before the first knock may take: less than TCP's first
/// SYN retransmission (1 s), so that only an answer to the SYN sent before the knock counts.
const BEFORE_LIMIT: Duration = Duration::from_millis(900);
/// How long the first knock waits after that attempt's SYN, so that the SYN meets the server's
/// firewall before any knock can open it.
const BEFORE_LEAD: Duration = Duration::from_millis(20);
/// Once a connection made after the knock succeeded, how much longer to wait for the answer to
/// the attempt made before it (sent earlier, that answer is normally in already).
const BEFORE_GRACE: Duration = Duration::from_millis(50);

/// Starts a connection attempt to `service` (one SYN, given up before it would be sent again);
/// the receiver gets the connection, or `None` if it failed or timed out.
fn connect_before_knock(service: SocketAddr) -> mpsc::Receiver<Option<TcpStream>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(TcpStream::connect_timeout(&service, BEFORE_LIMIT).ok());
    });
    rx
}

/// Tries the service once just before the first knock (see [`Opened::answered_before`]), then
/// knocks with `plan_at(offset_seconds)` and connects to `service`; re-knocks up to
/// `policy.retries` times. If it never opens, knocks with the clock shifted by one, two and
/// four steps (forward only when bound, see [`probe_shifts`]) to estimate the clock's offset
/// ([`estimate_clock`]), and returns an error that says what is likely wrong. With
/// `policy.one_connection` (a lease admits one connection) nothing is tried before the knock,
/// and each knock gets one socket ([`connect_once`]): the connection returned is the only one
/// that got in.
pub fn knock_and_wait(
    plan_at: &dyn Fn(i64) -> anyhow::Result<KnockPlan>,
    base_offset: i64,
    service: SocketAddr,
    policy: WaitPolicy,
    diag: &Diagnosis,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<Opened> {
    let mut probes: Vec<Probe> = Vec::new();
    let knock = |shift: i64, probes: &mut Vec<Probe>| -> anyhow::Result<()> {
        let stamped = crate::system_now()
            .offset_millis(base_offset.saturating_add(shift).saturating_mul(1000));
        let plan = plan_at(shift)?;
        knock::send(&plan, policy.delay)?;
        probes.push(Probe {
            shift,
            stamped_ms: stamped.0,
            opened: false,
        });
        Ok(())
    };
    let connect = |service: SocketAddr| {
        if policy.one_connection {
            connect_once(service, policy.timeout)
        } else {
            connect_within(service, policy.timeout)
        }
    };
    // A connection before the knock would use up a lease that admits one connection.
    let before = (!policy.one_connection).then(|| connect_before_knock(service));
    let mut early = before
        .as_ref()
        .and_then(|b| b.recv_timeout(BEFORE_LEAD).ok());
    for attempt in 0..=policy.retries {
        knock(0, &mut probes)?;
        let knocks = u32::try_from(probes.len()).unwrap_or(u32::MAX);
        if let Some(Some(stream)) = early.take() {
            return Ok(Opened {
                stream,
                knocks,
                clock: None,
                answered_before: true,
            });
        }
        if let Some(stream) = connect(service) {
            if let (0, Some(before)) = (attempt, &before) {
                if let Ok(Some(prior)) = before.recv_timeout(BEFORE_GRACE) {
                    return Ok(Opened {
                        stream: prior,
                        knocks,
                        clock: None,
                        answered_before: true,
                    });
                }
            }
            return Ok(Opened {
                stream,
                knocks,
                clock: None,
                answered_before: false,
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
    let step_seconds = diag.step_seconds;
    for shift in probe_shifts(step_seconds, diag.bound) {
        knock(shift, &mut probes)?;
        if let Some(stream) = connect(service) {
            if let Some(last) = probes.last_mut() {
                last.opened = true;
            }
            let clock = estimate_clock(step_seconds, diag.payload, &probes);
            if let Some(c) = clock {
                log(&clock_advice(base_offset, shift, c));
            }
            return Ok(Opened {
                stream,
                knocks: u32::try_from(probes.len()).unwrap_or(u32::MAX),
                clock,
                answered_before: false,
            });
        }
    }
    let knocks = probes.len();
    let probed = if diag.bound {
        format!(
            "including knocks with the clock shifted by up to 4 steps of {step_seconds} s either way"
        )
    } else {
        format!(
            "including knocks with the clock set back by up to 4 steps of {step_seconds} s; a clock that runs behind the server's was not probed, because a knock valid later names no address here and could be used by whoever captured it: bind knocks (stun in the profile, or --allow-ip) to probe both ways"
        )
    };
    let elsewhere = diag.other_address.map_or_else(String::new, |ip| {
        format!(
            " The knock asked to open {ip}, and --wait connects from this host, not from {ip}: unless the server sees this host as {ip}, the knock may have opened {ip} without --wait seeing it (try from {ip}). Other causes, most likely first:"
        )
    });
    let causes = if elsewhere.is_empty() {
        " Likely causes, most likely first:"
    } else {
        ""
    };
    Err(anyhow!(
        "{service} never answered after {knocks} knocks ({probed}).{elsewhere}{causes} \
(1) wrong keys: the server must list this client's public key (`sesame pubkey < KEY`) and the profile's server_public_key must be the server's (`sesame pubkey < server.key`), with the same psk_file on both sides; \
(2) {}; \
(3) the clock is off by more than the server accepts ({}); \
(4) the service itself is down, or the address you connect to is not the one you knocked from (NAT or -4/-6); the server's log names the reason for refused knocks",
        diag.network_hint,
        diag.skew_hint
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

#[cfg(test)]
mod tests {
    use super::*;

    /// sesamed's rule for the time of a knock (PROTOCOL.md §6.3): its step within `skew` of the
    /// server's, and with a payload at most `skew` steps ahead. `server_ms` is the server's
    /// clock when the knock arrives, `stamped_ms` the knock's time.
    fn server_accepts(
        step_s: u64,
        skew: u64,
        payload: bool,
        server_ms: u64,
        stamped_ms: u64,
    ) -> bool {
        let step = step_s * 1000;
        let (c, k) = (server_ms / step, stamped_ms / step);
        let in_window = k + skew >= c && k <= c + skew;
        let ahead_ok = !payload || stamped_ms <= server_ms + skew * step;
        in_window && ahead_ok
    }

    /// The start of a 30-second step (Unix ms).
    const STEP_START: u64 = 1_764_000_000_000;

    /// Runs `--wait`'s knocks against a server whose clock is `error_ms` behind this one's:
    /// `retries + 1` plain knocks, then the probes, `gap_ms` apart, from `start_ms`; each
    /// arrives `delay_ms` after it is sent. Returns the knocks, the last one opened if any did.
    #[allow(clippy::too_many_arguments)]
    fn simulate(
        step_s: u32,
        skew: u64,
        payload: bool,
        bound: bool,
        error_ms: i64,
        start_ms: u64,
        gap_ms: u64,
        retries: u32,
    ) -> Vec<Probe> {
        let shifts = std::iter::repeat_n(0, retries as usize + 1)
            .chain(probe_shifts(step_s, bound))
            .collect::<Vec<i64>>();
        let mut out = Vec::new();
        for (i, shift) in shifts.into_iter().enumerate() {
            let local = start_ms + i as u64 * gap_ms;
            let stamped = (local as i64 + shift * 1000) as u64;
            let server = (local as i64 - error_ms + 3) as u64;
            let opened = server_accepts(u64::from(step_s), skew, payload, server, stamped);
            out.push(Probe {
                shift,
                stamped_ms: stamped,
                opened,
            });
            if opened {
                break;
            }
        }
        out
    }

    #[test]
    fn a_clock_60_s_behind_is_advised_60_not_the_edge_of_the_window() {
        // Steps of 30 s, one step of skew: the plain knocks fail, the +30 s probe opens. The
        // old advice was +30 (the edge: a few seconds more of drift and it fails again).
        for phase in [0, 1_000, 7_500, 15_000, 22_000, 29_999] {
            let start = STEP_START + phase;
            let probes = simulate(30, 1, true, true, -60_000, start, 1_200, 1);
            assert!(probes.last().unwrap().opened, "{probes:?}");
            assert_eq!(probes.last().unwrap().shift, 30);
            let c = estimate_clock(30, true, &probes).unwrap();
            assert!((-75..=-45).contains(&c.ahead), "phase {phase}: {c:?}");
            assert!(c.within <= 15, "phase {phase}: {c:?}");
            assert!(
                (c.ahead * 1000 + 60_000).abs() <= c.within * 1000 + 500,
                "{c:?}"
            );
            let advice = clock_advice(0, 30, c);
            assert!(
                advice.contains(&format!("pass --time-offset {}", -c.ahead)),
                "{advice}"
            );
            assert!(advice.contains("behind the server's"), "{advice}");
            assert!(advice.contains(&format!("± {} s", c.within)), "{advice}");
        }
    }

    #[test]
    fn an_offset_given_is_corrected_to_the_measured_one() {
        // `--time-offset -60` on a clock that is right: the offset to pass is about 0.
        let start = 1_764_000_012_345;
        let probes = simulate(30, 1, true, true, -60_000, start, 1_000, 0);
        let c = estimate_clock(30, true, &probes).unwrap();
        let offset = -60 - c.ahead;
        assert!(offset.abs() <= 15, "{c:?}");
        let advice = clock_advice(-60, 30, c);
        assert!(
            advice
                .starts_with("opened only with the clock shifted by -30 s, not by the -60 s given"),
            "{advice}"
        );
        assert!(
            advice.contains(&format!("pass --time-offset {offset} instead")),
            "{advice}"
        );
    }

    /// For clocks off by up to four steps either way, at every phase, bound or not, with and
    /// without a payload: when a probe opens, the truth is inside the range given, the range
    /// is at most a step either side, and following the advice lands inside the window.
    #[test]
    fn the_estimate_contains_the_true_error_and_the_advice_opens() {
        let step_s = 30u32;
        let mut checked = 0;
        let mut narrow = 0;
        for payload in [true, false] {
            for bound in [true, false] {
                for error_s in (-150..=150).step_by(7) {
                    for phase in (0..30_000).step_by(4_100) {
                        let start = STEP_START + phase;
                        let error = error_s * 1000 + 137;
                        let probes = simulate(step_s, 1, payload, bound, error, start, 900, 1);
                        let last = probes.last().unwrap();
                        if !last.opened || last.shift == 0 {
                            assert!(
                                estimate_clock(
                                    step_s,
                                    payload,
                                    &probes[..probes.len() - usize::from(last.opened)]
                                )
                                .is_none()
                            );
                            continue;
                        }
                        let c = estimate_clock(step_s, payload, &probes).unwrap();
                        assert!(
                            (c.ahead * 1000 - error).abs() <= c.within * 1000 + 1000,
                            "error {error} ms, phase {phase}, payload {payload}, bound {bound}: {c:?} from {probes:?}"
                        );
                        // Half a step when the knock before the one that opened was in the same
                        // phase of its step and one step away; at most a step otherwise (the
                        // phase wrapped between them, or the -4-step probe after the -2-step).
                        assert!(c.within <= 31, "{c:?} from {probes:?}");
                        if c.within <= 16 {
                            narrow += 1;
                        }
                        // The advice, followed a little later, opens with a plain knock.
                        let later = start + 20_000;
                        let stamped = (later as i64 - c.ahead * 1000) as u64;
                        let server = (later as i64 - error) as u64;
                        assert!(
                            server_accepts(u64::from(step_s), 1, payload, server, stamped),
                            "error {error} ms: advice {} s does not open",
                            -c.ahead
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100, "{checked}");
        assert!(
            narrow * 2 >= checked,
            "{narrow} of {checked} within half a step"
        );
    }

    /// After a knock whose lease admits one connection: one connection, made after the lead;
    /// and a refusal (the SYN went through: the lease, if any, is gone) ends the attempt at
    /// once instead of trying new sockets until the timeout.
    #[test]
    fn connect_once_makes_one_connection_and_gives_up_on_a_refusal() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let stream = connect_once(addr, Duration::from_secs(2)).expect("connects");
        assert!(started.elapsed() >= CONNECTION_LEAD);
        listener.set_nonblocking(true).unwrap();
        let (peer, _) = listener.accept().unwrap();
        assert_eq!(peer.peer_addr().unwrap(), stream.local_addr().unwrap());
        assert!(listener.accept().is_err(), "a second connection was made");
        drop(listener);
        let started = Instant::now();
        assert!(connect_once(addr, Duration::from_secs(3)).is_none());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn the_udp_hint_says_what_works_for_each_payload_mode() {
        let p = |proto| KnockParams::new(30, 3, (20000, 21999), &[], proto).unwrap();
        let required = blocked_network_hint(&p(KnockProtocol::Tcp), PayloadMode::Required);
        assert!(
            required.contains("every knock ends with a UDP datagram"),
            "{required}"
        );
        assert!(
            required.contains("protocol = \"tcp\" alone does not help"),
            "{required}"
        );
        assert!(
            required.contains("payload = \"optional\" or \"none\""),
            "{required}"
        );
        let optional = blocked_network_hint(&p(KnockProtocol::Tcp), PayloadMode::Optional);
        assert!(
            optional.starts_with("TCP SYNs to ports 20000-21999"),
            "{optional}"
        );
        assert!(
            optional.contains("open alone, unbound, timeout_ms"),
            "{optional}"
        );
        let udp_optional = blocked_network_hint(&p(KnockProtocol::Udp), PayloadMode::Optional);
        assert!(
            udp_optional.starts_with("UDP to ports 20000-21999"),
            "{udp_optional}"
        );
        assert!(
            udp_optional.contains("sets protocol = \"tcp\""),
            "{udp_optional}"
        );
        let none = blocked_network_hint(&p(KnockProtocol::Tcp), PayloadMode::None);
        assert!(!none.contains("UDP"), "{none}");
        let spa = KnockParams::new(30, 0, (20000, 21999), &[], KnockProtocol::Tcp).unwrap();
        let single = blocked_network_hint(&spa, PayloadMode::Required);
        assert!(single.starts_with("UDP to ports"), "{single}");
    }
}
