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
    /// Wall clock at which each UDP datagram from `source` left the client's interface
    /// (kernel timestamps of a packet socket in the client's namespace): the knock's packets
    /// as the client sent them, before the network and the server's capture.
    pub(crate) sent_wall: Vec<f64>,
}

/// A packet socket on the client's interface that sees the datagrams the client sends, with
/// the kernel's timestamp of each: where the client's own time ends.
struct WireTap(Socket);

impl WireTap {
    /// Opens the tap on `ifname` in the calling thread's namespace.
    fn open(ifname: &str) -> std::io::Result<WireTap> {
        // ETH_P_ALL: only such taps see a device's outgoing packets.
        let eth_p_all = (libc::ETH_P_ALL as u16).to_be();
        let s = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(eth_p_all))),
        )?;
        let name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = eth_p_all;
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed, alive for the call.
        let r = unsafe {
            libc::bind(
                s.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid c_int of the size passed, alive for the call.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        s.set_nonblocking(true)?;
        Ok(WireTap(s))
    }

    /// The wall times (s) of the outgoing UDP datagrams from `src` queued so far.
    fn sent_from(&self, src: Ipv4Addr) -> Vec<f64> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        let mut ctrl = [0u64; 16];
        loop {
            // SAFETY: plain old data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: plain old data; all-zero is a valid value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&raw mut from).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctrl.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&ctrl);
            // SAFETY: every pointer in `msg` points to a live buffer of the length given;
            // the kernel writes at most that much (a longer packet is truncated).
            let n = unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                break;
            }
            let n = n as usize;
            let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING
                && from.sll_protocol == (libc::ETH_P_IP as u16).to_be();
            // IPv4, UDP, from `src`.
            if !outgoing
                || n < 20
                || buf[0] >> 4 != 4
                || buf[9] != 17
                || buf[12..16] != src.octets()
            {
                continue;
            }
            // SAFETY: `msg` was filled by recvmsg; the CMSG macros walk its control buffer
            // within msg_controllen, and SCM_TIMESTAMPNS data is a timespec.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET
                        && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                    {
                        let ts: libc::timespec =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        out.push(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9);
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
        }
        out
    }
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
    // Without the tap (no packet socket here), the knock is still timed; only the client's
    // send times are missing from the breakdown.
    let tap = WireTap::open(CLIENT_IF).ok();
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
    let sent_wall: Vec<f64> = tap
        .map(|t| t.sent_from(src))
        .unwrap_or_default()
        .into_iter()
        .filter(|&t| t >= started_wall)
        .collect();
    Ok(Knock {
        source: src,
        started_wall,
        open,
        client_exit,
        client_ok,
        attempts,
        sent_wall,
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
