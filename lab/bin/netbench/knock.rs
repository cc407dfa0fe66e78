//! Knocks and the connection probe: a knock is timed from the client's start to the first
//! completed connection to the service.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sesame_tests::{CLIENT_IF, Host, Rng};
use socket2::{Domain, Protocol, Socket, Type};

use crate::Result;
use crate::lab::{Bed, SERVICE_PORT};
use crate::options::Opts;
use crate::util::{enter_netns, run_cmd, unix_secs_f64};

/// How long one connection attempt waits for its SYN-ACK before it is abandoned.
const PROBE_LIFE: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub(crate) struct Knock {
    pub(crate) source: Ipv4Addr,
    /// Wall clock at the client's start (for matching daemon log lines).
    pub(crate) started_wall: f64,
    /// From the client's start to the first completed connection.
    pub(crate) open: Option<Duration>,
    /// From the client's start to its exit (as seen by the probe loop).
    pub(crate) client_exit: Option<Duration>,
    pub(crate) client_ok: bool,
    pub(crate) attempts: u32,
}

pub(crate) fn attempt(src: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(src, 0)).into())?;
    match s.connect(&SocketAddr::from(dst).into()) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(e),
    }
}

/// Starts the client and tries new connections from `src` every `interval` until one
/// completes or `timeout` passes. Runs in the client's namespace.
pub(crate) fn knock_once(
    mut cmd: Command,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    interval: Duration,
    timeout: Duration,
) -> Result<Knock> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started_wall = unix_secs_f64(SystemTime::now());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut client_exit = None;
    let mut client_ok = false;
    let mut inflight: Vec<(Socket, Instant)> = Vec::new();
    let mut next = start;
    let mut attempts = 0u32;
    let deadline = start + timeout;
    let mut open = None;
    while open.is_none() {
        let now = Instant::now();
        if client_exit.is_none() {
            if let Ok(Some(st)) = child.try_wait() {
                client_exit = Some(now - start);
                client_ok = st.success();
            }
        }
        if now >= deadline {
            break;
        }
        if now >= next {
            inflight.push((
                attempt(src, dst).map_err(|e| format!("connect from {src}: {e}"))?,
                now,
            ));
            attempts += 1;
            next += interval;
            if next <= now {
                next = now + interval;
            }
        }
        inflight.retain(|(_, t)| now.duration_since(*t) < PROBE_LIFE);
        let mut fds: Vec<libc::pollfd> = inflight
            .iter()
            .map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let wait = next.min(deadline).saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs
        // for the duration of the call; `ts` outlives it; a null sigmask is allowed.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        let after = Instant::now();
        if n <= 0 {
            continue;
        }
        let mut failed = Vec::new();
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            match inflight[i].0.take_error() {
                Ok(None) => {
                    open = Some(after - start);
                    // Abort (RST) rather than leave a TIME_WAIT per knock.
                    let _ = inflight[i].0.set_linger(Some(Duration::ZERO));
                    break;
                }
                _ => failed.push(i),
            }
        }
        for i in failed.into_iter().rev() {
            inflight.remove(i);
        }
    }
    drop(inflight);
    if client_exit.is_none() {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                client_exit = Some(start.elapsed());
                client_ok = st.success();
                break;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(Knock {
        source: src,
        started_wall,
        open,
        client_exit,
        client_ok,
        attempts,
    })
}

pub(crate) type KnockCmd<'a> = dyn Fn(Ipv4Addr) -> Command + Sync + 'a;

/// Knocks once from `src`, from a thread in the client's namespace: set the source address
/// (every program the client starts, and every probe, then uses it), start the client, probe.
pub(crate) fn knock_from(
    bed: &Bed,
    knock: &KnockCmd<'_>,
    src: Ipv4Addr,
    opts: &Opts,
    timeout: Duration,
) -> Result<Knock> {
    let client_ns = bed.lab.ns(Host::Client).to_owned();
    let dst = SocketAddrV4::new(bed.server, SERVICE_PORT);
    let server = bed.server;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Knock> {
                enter_netns(&client_ns)?;
                run_cmd(Command::new("ip").args([
                    "-n",
                    &client_ns,
                    "route",
                    "replace",
                    &format!("{server}/32"),
                    "dev",
                    CLIENT_IF,
                    "src",
                    &src.to_string(),
                ]))?;
                knock_once(knock(src), src, dst, opts.probe_interval, timeout)
            })
            .join()
            .map_err(|_| "the knock thread panicked".to_owned())?
    })
}

/// The pause after a knock: uniform in [gap, 2·gap], so that knocks never keep one phase
/// against a daemon's polling loop.
pub(crate) fn pause(rng: &mut Rng, opts: &Opts) {
    let gap = opts.gap_ms + rng.next() % (opts.gap_ms + 1);
    std::thread::sleep(Duration::from_millis(gap));
}

/// Knocks once from each of `sources`, one at a time.
pub(crate) fn knock_series(
    bed: &Bed,
    knock: &KnockCmd<'_>,
    sources: &[Ipv4Addr],
    opts: &Opts,
    timeout: Duration,
) -> Result<Vec<Knock>> {
    let mut rng = Rng::seeded();
    let mut out = Vec::with_capacity(sources.len());
    for &src in sources {
        out.push(knock_from(bed, knock, src, opts, timeout)?);
        pause(&mut rng, opts);
    }
    Ok(out)
}
