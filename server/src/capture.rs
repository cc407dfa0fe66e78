//! Packet capture: AF_PACKET sockets in cooked mode (`SOCK_DGRAM`: the kernel strips the link
//! header, so Ethernet, WireGuard, tun and PPP interfaces all deliver IP packets) with a
//! classic BPF filter, so only UDP datagrams and TCP SYNs (without ACK) to the knock range
//! reach user space. The knock ports stay closed: packet sockets see packets before the
//! firewall drops them.
//!
//! This module is the only place in sesame with `unsafe` code (binding a packet socket to an
//! interface and setting a socket option that socket2 does not wrap).

use std::ffi::CString;
use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use sesame_proto::Proto;
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;

/// A packet that passed the filter, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Source address.
    pub source: IpAddr,
    /// UDP or TCP.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
    /// The UDP payload (None for TCP).
    pub payload: Option<&'a [u8]>,
}

/// Parses an IP packet (no link header) down to the transport header. Returns None for
/// anything that is not an unfragmented UDP datagram or a TCP SYN without ACK. Never panics.
pub fn parse_ip(packet: &[u8]) -> Option<Parsed<'_>> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let source = match sliced.net.as_ref()? {
        NetSlice::Ipv4(v4) => {
            if v4.is_payload_fragmented() {
                return None;
            }
            IpAddr::V4(v4.header().source_addr())
        }
        NetSlice::Ipv6(v6) => {
            if v6.is_payload_fragmented() {
                return None;
            }
            IpAddr::V6(v6.header().source_addr())
        }
        NetSlice::Arp(_) => return None,
    };
    match sliced.transport.as_ref()? {
        TransportSlice::Udp(udp) => Some(Parsed {
            source,
            proto: Proto::Udp,
            port: udp.destination_port(),
            payload: Some(udp.payload()),
        }),
        TransportSlice::Tcp(tcp) if tcp.syn() && !tcp.ack() => Some(Parsed {
            source,
            proto: Proto::Tcp,
            port: tcp.destination_port(),
            payload: None,
        }),
        _ => None,
    }
}

// Classic BPF opcodes (linux/filter.h).
const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LD_H_IND: u16 = 0x48; // BPF_LD | BPF_H | BPF_IND
const LD_B_IND: u16 = 0x50; // BPF_LD | BPF_B | BPF_IND
const LDX_B_MSH: u16 = 0xb1; // BPF_LDX | BPF_B | BPF_MSH
const LDX_IMM: u16 = 0x01; // BPF_LDX | BPF_W | BPF_IMM
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JGT: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const JSET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const AND: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RET: u16 = 0x06; // BPF_RET | BPF_K

/// A classic BPF instruction with symbolic jump targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump target when true (a label).
    pub jt: Label,
    /// Jump target when false (a label).
    pub jf: Label,
    /// Constant.
    pub k: u32,
}

/// Jump targets in [`filter_program`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// The next instruction.
    Next,
    /// IPv4 header handling.
    V4,
    /// IPv6 header handling.
    V6,
    /// Port check for UDP.
    Udp,
    /// Port check for TCP.
    Tcp,
    /// Return the whole packet.
    Accept,
    /// Return nothing.
    Drop,
}

/// The largest packet the filter passes to user space.
pub const SNAPLEN: u32 = 65_535;

/// The filter program: IPv4 (unfragmented or first fragment) and IPv6 (no extension headers)
/// UDP datagrams, and TCP segments with SYN set and ACK clear, to ports `lo..=hi`.
pub fn filter_program(lo: u16, hi: u16) -> Vec<(Option<Label>, Insn)> {
    use Label::*;
    let i = |code, k, jt, jf| Insn { code, jt, jf, k };
    let at = |label: Label, insn: Insn| (Some(label), insn);
    let plain = |insn: Insn| (None, insn);
    let (lo, hi) = (u32::from(lo), u32::from(hi));
    vec![
        // A = skb->protocol (the ethertype of the IP packet).
        plain(i(
            LD_H_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32,
            Next,
            Next,
        )),
        plain(i(JEQ, 0x0800, V4, Next)),
        plain(i(JEQ, 0x86dd, V6, Drop)),
        // IPv4: no fragments past the first, X = header length, A = protocol.
        at(V4, i(LD_H_ABS, 6, Next, Next)),
        plain(i(JSET, 0x1fff, Drop, Next)),
        plain(i(LDX_B_MSH, 0, Next, Next)),
        plain(i(LD_B_ABS, 9, Next, Next)),
        plain(i(JEQ, 17, Udp, Next)),
        plain(i(JEQ, 6, Tcp, Drop)),
        // IPv6: the next header must be UDP or TCP; X = 40.
        at(V6, i(LD_B_ABS, 6, Next, Next)),
        plain(i(LDX_IMM, 40, Next, Next)),
        plain(i(JEQ, 17, Udp, Next)),
        plain(i(JEQ, 6, Tcp, Drop)),
        // UDP: destination port in range.
        at(Udp, i(LD_H_IND, 2, Next, Next)),
        plain(i(JGE, lo, Next, Drop)),
        plain(i(JGT, hi, Drop, Accept)),
        // TCP: destination port in range, SYN without ACK.
        at(Tcp, i(LD_H_IND, 2, Next, Next)),
        plain(i(JGE, lo, Next, Drop)),
        plain(i(JGT, hi, Drop, Next)),
        plain(i(LD_B_IND, 13, Next, Next)),
        plain(i(AND, 0x12, Next, Next)),
        plain(i(JEQ, 0x02, Accept, Drop)),
        at(Accept, i(RET, SNAPLEN, Next, Next)),
        at(Drop, i(RET, 0, Next, Next)),
    ]
}

/// Resolves labels into relative jump offsets.
pub fn assemble(program: &[(Option<Label>, Insn)]) -> Vec<(u16, u8, u8, u32)> {
    let target = |from: usize, label: Label| -> u8 {
        if label == Label::Next {
            return 0;
        }
        let to = program
            .iter()
            .position(|(l, _)| *l == Some(label))
            .unwrap_or(program.len() - 1);
        // Classic BPF only jumps forward; the program above is laid out for that.
        u8::try_from(to.saturating_sub(from + 1)).unwrap_or(0)
    };
    program
        .iter()
        .enumerate()
        .map(|(n, (_, insn))| (insn.code, target(n, insn.jt), target(n, insn.jf), insn.k))
        .collect()
}

fn socket_filter(lo: u16, hi: u16) -> Vec<SockFilter> {
    assemble(&filter_program(lo, hi))
        .into_iter()
        .map(|(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
        .collect()
}

/// `PACKET_IGNORE_OUTGOING` from linux/if_packet.h (Linux 4.20+).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Resolves an interface name to its index.
pub fn interface_index(name: &str) -> std::io::Result<u32> {
    let c = CString::new(name).map_err(|_| std::io::Error::other("interface name contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; if_nametoindex
    // only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// Opens a packet socket for the knock range, on one interface (`Some(name)`) or all.
pub fn open_socket(interface: Option<&str>, lo: u16, hi: u16) -> std::io::Result<Socket> {
    // Protocol 0: the socket receives nothing until it is bound, after the filter is attached.
    let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))?;
    sock.attach_filter(&socket_filter(lo, hi))?;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a valid socket owned by `sock`; the option value is a c_int that lives
    // across the call and its exact size is passed. Older kernels answer ENOPROTOOPT, which is
    // harmless (outgoing packets then fail the source/port checks or are knocks we sent).
    let _ = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // A large buffer absorbs bursts while the daemon writes state or runs a hook.
    // SO_RCVBUFFORCE (with CAP_NET_ADMIN) is not capped by net.core.rmem_max.
    let size: libc::c_int = 8 << 20;
    // SAFETY: the fd is a valid socket owned by `sock`; the value is a c_int that lives across
    // the call and its exact size is passed.
    let forced = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        let _ = sock.set_recv_buffer_size(8 << 20);
    }
    let ifindex = match interface {
        Some(name) => i32::try_from(interface_index(name)?).unwrap_or(0),
        None => 0,
    };
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is one of this platform's sockaddr types and fits in the storage.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    ll.sll_ifindex = ifindex;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds a fully initialised sockaddr_ll of `len` bytes.
    let addr = unsafe { SockAddr::new(storage, len) };
    sock.bind(&addr)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Registers a socket with the runtime for read and error readiness.
fn register(sock: Socket) -> std::io::Result<AsyncFd<Socket>> {
    // SAFETY: the AsyncFd takes ownership of the Socket, which owns its file descriptor: the
    // descriptor stays open and refers to the same socket until the AsyncFd is dropped, and
    // Socket::as_raw_fd always returns that descriptor.
    unsafe {
        AsyncFd::register_with_interest(
            sock,
            tokio::io::Interest::READABLE | tokio::io::Interest::ERROR,
        )
    }
    .map_err(|e| e.into_parts().1)
}

/// Whether the interface is administratively up and has a carrier.
fn interface_is_up(name: &str) -> bool {
    use nix::net::if_::InterfaceFlags;
    nix::ifaddrs::getifaddrs().is_ok_and(|mut all| {
        all.any(|a| {
            a.interface_name == name
                && a.flags
                    .contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING)
        })
    })
}

/// Why a capture socket must be replaced.
enum Lost {
    /// The interface was deleted, or deleted and recreated with a new index.
    Gone,
    /// The socket failed.
    Failed(std::io::Error),
}

/// Reads packets from one interface (or all) forever, calling `on_packet` with each raw IP
/// packet.
///
/// * An interface that goes down keeps its socket: the kernel reports an error (logged, and
///   cleared), and packets flow again when it comes back up.
/// * An interface that is deleted, or deleted and recreated (new index), is noticed within a
///   second; the socket is reopened by name as soon as the interface exists again.
/// * Any other socket failure reopens the socket, retrying every second.
/// * A new knock range (a reload that changed `port_range`) replaces the in-kernel filter of
///   the open socket at once (no privilege is needed for that).
pub async fn run_capture<F>(
    interface: Option<String>,
    mut range: tokio::sync::watch::Receiver<(u16, u16)>,
    mut on_packet: F,
) where
    F: FnMut(&[u8]),
{
    let name = interface.as_deref().unwrap_or("any").to_owned();
    let mut buf = vec![0u8; SNAPLEN as usize];
    let mut failing = false;
    loop {
        let (lo, hi) = *range.borrow_and_update();
        let opened = open_socket(interface.as_deref(), lo, hi).and_then(|sock| {
            let index = match &interface {
                Some(n) => interface_index(n)?,
                None => 0,
            };
            Ok((register(sock)?, index))
        });
        let (fd, index) = match opened {
            Ok(x) => x,
            Err(e) => {
                if !failing {
                    tracing::error!(interface = %name, error = %e, "capture unavailable; retrying every second");
                }
                failing = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if failing {
            tracing::info!(interface = %name, "capture restored");
        }
        let lost = read_until_lost(
            &fd,
            interface.as_deref(),
            index,
            &name,
            &mut buf,
            &mut on_packet,
            &mut range,
        )
        .await;
        failing = true;
        match lost {
            Lost::Gone => {
                tracing::warn!(interface = %name, "interface is gone; capture resumes when it is back")
            }
            Lost::Failed(e) => {
                tracing::warn!(interface = %name, error = %e, "capture lost; reopening")
            }
        }
        drop(fd);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn read_until_lost<F>(
    fd: &AsyncFd<Socket>,
    interface: Option<&str>,
    index: u32,
    name: &str,
    buf: &mut [u8],
    on_packet: &mut F,
    range: &mut tokio::sync::watch::Receiver<(u16, u16)>,
) -> Lost
where
    F: FnMut(&[u8]),
{
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when the kernel reported the interface down; cleared (and logged) when it is up again.
    let mut down = false;
    let went_down = |down: &mut bool| {
        if !*down {
            tracing::warn!(interface = %name, "interface went down; capture resumes when it is up");
        }
        *down = true;
    };
    let came_back = |down: &mut bool| {
        if *down {
            tracing::info!(interface = %name, "capture restored: interface is up again");
        }
        *down = false;
    };
    loop {
        tokio::select! {
            ready = fd.ready(tokio::io::Interest::READABLE | tokio::io::Interest::ERROR) => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => return Lost::Failed(e),
                };
                if guard.ready().is_error() {
                    match fd.get_ref().take_error() {
                        Ok(Some(e)) if e.raw_os_error() == Some(libc::ENETDOWN) => went_down(&mut down),
                        Ok(Some(e)) => tracing::warn!(interface = %name, error = %e, "capture socket error"),
                        Ok(None) => {}
                        Err(e) => return Lost::Failed(e),
                    }
                }
                // Drain what is queued; clear readiness only when the socket says so. Every 64
                // packets, let the other tasks run: under a flood the socket never empties, and
                // the firewall task must still open the leases being granted.
                let mut batch = 0u32;
                loop {
                    match guard.try_io(|inner| inner.get_ref().read(buf)) {
                        Ok(Ok(n)) => {
                            came_back(&mut down);
                            on_packet(&buf[..n]);
                            batch += 1;
                            if batch % 64 == 0 {
                                break;
                            }
                        }
                        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENETDOWN) => went_down(&mut down),
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => return Lost::Failed(e),
                        Err(_would_block) => break,
                    }
                }
                if batch >= 64 {
                    tokio::task::yield_now().await;
                }
            }
            changed = range.changed() => {
                if changed.is_err() {
                    // The daemon is stopping: keep reading until it drops this task.
                    std::future::pending::<()>().await;
                }
                let (lo, hi) = *range.borrow_and_update();
                if let Err(e) = fd.get_ref().attach_filter(&socket_filter(lo, hi)) {
                    return Lost::Failed(e);
                }
                tracing::info!(interface = %name, port_range = %format!("{lo}-{hi}"), "capture filter replaced for the new knock range");
            }
            _ = check.tick() => {
                if let Some(n) = interface {
                    match interface_index(n) {
                        Ok(i) if i == index => {
                            if down && interface_is_up(n) {
                                came_back(&mut down);
                            }
                        }
                        _ => return Lost::Gone,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
