//! Packet capture: AF_PACKET sockets in cooked mode (`SOCK_DGRAM`: the kernel strips the link
//! header, so Ethernet, WireGuard, tun and PPP interfaces all deliver IP packets) with an
//! in-kernel filter, so only UDP datagrams and TCP SYNs (without ACK) to the live ports reach
//! user space: every client's knock and payload ports in the window and the step after it
//! ([`LiveFilter`], from `Tracker::live_ports`), as a classic BPF program while it fits
//! ([`live_program`]), else as the eBPF bitmap of [`ebpf`], else the whole knock range
//! ([`filter_program`]). The knock ports stay closed: packet sockets see packets before the
//! firewall drops them.
//!
//! The daemon reads packets through the [`CaptureSource`] trait, driven by [`run_capture`];
//! [`PacketSocket`] is its AF_PACKET implementation, and the place a new backend starts from.
//!
//! Most of sesamed's `unsafe` code is in this module (binding a packet socket to an
//! interface, socket options that socket2 does not wrap, and in [`ebpf`] the `bpf()` system
//! call and the mapping of the bitmap).

use std::ffi::CString;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use sesame_proto::params::PayloadMode;
use sesame_proto::{Incoming, Proto, Tracker, UnixMillis};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;

pub mod ebpf;

/// Parses an IP packet (no link header) down to the transport header. Returns None for
/// anything that is not an unfragmented UDP datagram or a TCP SYN without ACK. Never panics.
pub fn parse_ip(packet: &[u8]) -> Option<Incoming<'_>> {
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
        TransportSlice::Udp(udp) => Some(Incoming {
            source,
            proto: Proto::Udp,
            port: udp.destination_port(),
            payload: Some(udp.payload()),
        }),
        TransportSlice::Tcp(tcp) if tcp.syn() && !tcp.ack() => Some(Incoming {
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
const JA: u16 = 0x05; // BPF_JMP | BPF_JA (k = offset)

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

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
    /// The live-port check of [`live_program`].
    Check,
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
        .map(|(n, (_, insn))| {
            if insn.code == JA {
                (JA, 0, 0, u32::from(target(n, insn.jt)))
            } else {
                (insn.code, target(n, insn.jt), target(n, insn.jf), insn.k)
            }
        })
        .collect()
}

/// Merges ascending ports into ranges of consecutive ports.
pub fn port_ranges(ports: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) || *hi == p => *hi = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// A binary search over `ranges` (ascending, disjoint), knowing the port (in A) is at least
/// the first range's start: a leaf checks the upper end of its range and returns.
fn search_tree(ranges: &[(u16, u16)]) -> Vec<(u16, u8, u8, u32)> {
    if let [(_, hi)] = ranges {
        return vec![
            (JGT, 1, 0, u32::from(*hi)),
            (RET, 0, 0, SNAPLEN),
            (RET, 0, 0, 0),
        ];
    }
    let mid = ranges.len() / 2;
    let (left, right) = (search_tree(&ranges[..mid]), search_tree(&ranges[mid..]));
    let split = u32::from(ranges[mid].0);
    let mut out = Vec::with_capacity(left.len() + right.len() + 2);
    match u8::try_from(left.len()) {
        Ok(n) => out.push((JGE, n, 0, split)),
        Err(_) => {
            // Too far for a conditional jump: jump over an unconditional one.
            out.push((JGE, 0, 1, split));
            out.push((JA, 0, 0, left.len() as u32));
        }
    }
    out.extend(left);
    out.extend(right);
    out
}

/// The live-port filter as a classic BPF program: the header checks of [`filter_program`]
/// (UDP, or TCP with SYN and without ACK, over IPv4 or IPv6), then a binary search over the
/// ranges of consecutive live ports. `None` when it would exceed [`MAX_INSNS`] (about 1 000
/// ranges: a few hundred clients with the default range). An empty set admits nothing.
pub fn live_program(ports: &[u16]) -> Option<Vec<(u16, u8, u8, u32)>> {
    use Label::*;
    let i = |code, k, jt, jf| Insn { code, jt, jf, k };
    let at = |label: Label, insn: Insn| (Some(label), insn);
    let plain = |insn: Insn| (None, insn);
    let header = vec![
        plain(i(
            LD_H_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32,
            Next,
            Next,
        )),
        plain(i(JEQ, 0x0800, V4, Next)),
        plain(i(JEQ, 0x86dd, V6, Drop)),
        at(V4, i(LD_H_ABS, 6, Next, Next)),
        plain(i(JSET, 0x1fff, Drop, Next)),
        plain(i(LDX_B_MSH, 0, Next, Next)),
        plain(i(LD_B_ABS, 9, Next, Next)),
        plain(i(JEQ, 17, Udp, Next)),
        plain(i(JEQ, 6, Tcp, Drop)),
        at(V6, i(LD_B_ABS, 6, Next, Next)),
        plain(i(LDX_IMM, 40, Next, Next)),
        plain(i(JEQ, 17, Udp, Next)),
        plain(i(JEQ, 6, Tcp, Drop)),
        at(Udp, i(LD_H_IND, 2, Next, Next)),
        plain(i(JA, 0, Check, Next)),
        at(Tcp, i(LD_B_IND, 13, Next, Next)),
        plain(i(AND, 0x12, Next, Next)),
        plain(i(JEQ, 0x02, Next, Drop)),
        plain(i(LD_H_IND, 2, Next, Next)),
        plain(i(JA, 0, Check, Next)),
        at(Drop, i(RET, 0, Next, Next)),
        // Replaced by the search below.
        at(Check, i(RET, 0, Next, Next)),
    ];
    let mut program = assemble(&header);
    program.pop();
    let ranges = port_ranges(ports);
    match ranges.first() {
        None => program.push((RET, 0, 0, 0)),
        Some(&(first, _)) => {
            program.push((JGE, 1, 0, u32::from(first)));
            program.push((RET, 0, 0, 0));
            program.extend(search_tree(&ranges));
        }
    }
    (program.len() <= MAX_INSNS).then_some(program)
}

fn to_sock_filter(program: &[(u16, u8, u8, u32)]) -> Vec<SockFilter> {
    program
        .iter()
        .map(|&(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
        .collect()
}

fn socket_filter(lo: u16, hi: u16) -> Vec<SockFilter> {
    assemble(&filter_program(lo, hi))
        .into_iter()
        .map(|(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
        .collect()
}

/// The environment variable that chooses the capture filter: `auto` (the default: the live
/// ports, as a classic BPF program while it fits, else as an eBPF bitmap, else the whole knock
/// range), `range` (the whole knock range, as before live ports: for benchmarks and as an
/// escape hatch), `classic` (never eBPF) or `ebpf` (always the eBPF bitmap when it loads).
pub const FILTER_ENV: &str = "SESAMED_CAPTURE_FILTER";

/// Which capture filter [`FILTER_ENV`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterMode {
    /// Live ports, classic BPF while it fits, else eBPF, else the range.
    Auto,
    /// The whole knock range.
    Range,
    /// Live ports as classic BPF while it fits, else the range.
    Classic,
    /// Live ports as the eBPF bitmap (else the range).
    Ebpf,
}

impl FilterMode {
    /// From [`FILTER_ENV`]; an unknown value is logged and means `auto`.
    pub fn from_env() -> FilterMode {
        match std::env::var(FILTER_ENV).as_deref() {
            Err(_) | Ok("" | "auto") => FilterMode::Auto,
            Ok("range") => FilterMode::Range,
            Ok("classic") => FilterMode::Classic,
            Ok("ebpf") => FilterMode::Ebpf,
            Ok(other) => {
                tracing::warn!(
                    value = other,
                    "{FILTER_ENV}: unknown value (auto, range, classic or ebpf); using auto"
                );
                FilterMode::Auto
            }
        }
    }
}

/// What the capture sockets should admit.
#[derive(Clone, Debug)]
pub enum Admit {
    /// Every port of the knock range.
    Range,
    /// The live ports, as this classic BPF program.
    Classic(Arc<Vec<(u16, u8, u8, u32)>>),
    /// The live ports, in the bitmap of this eBPF program.
    Ebpf(Arc<ebpf::Ebpf>),
}

impl Admit {
    fn same(&self, other: &Admit) -> bool {
        match (self, other) {
            (Admit::Range, Admit::Range) => true,
            (Admit::Classic(a), Admit::Classic(b)) => a == b,
            (Admit::Ebpf(a), Admit::Ebpf(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The filter for one knock range (a capture task admits the whole range when the range it
/// was told by a reload is another one).
#[derive(Clone, Debug)]
pub struct Wanted {
    /// The knock range this was computed for.
    pub range: (u16, u16),
    /// What to admit.
    pub admit: Admit,
}

/// Computes the live-port filter from the tracker and hands it to the capture tasks: at
/// start, when the step turns (the live counters change) and after a reload.
#[derive(Debug)]
pub struct LiveFilter {
    mode: FilterMode,
    ebpf: Option<Arc<ebpf::Ebpf>>,
    tx: tokio::sync::watch::Sender<Wanted>,
    /// The counters and knock range of the last set (None: recompute at the next update).
    last: Option<(std::ops::RangeInclusive<u64>, (u16, u16))>,
    /// What the last update chose, for the log line when it changes.
    kind: String,
    /// Its one-line description (`sesamed status` shows it).
    detail: String,
    /// Packets the capture sockets dropped (`sesamed status` shows it with the filter's
    /// counters: what the filter admitted and sesamed could not read in time).
    drops: Drops,
}

impl LiveFilter {
    /// Chooses the mechanism ([`FilterMode::from_env`]) and, unless it is `range` or
    /// `classic`, loads the eBPF program: call it before privileges are dropped (loading needs
    /// CAP_BPF or CAP_SYS_ADMIN; everything later needs nothing more than owning the
    /// descriptors). A kernel that refuses the program is logged once; sesamed then admits the
    /// whole knock range whenever the live ports outgrow a classic program.
    pub fn new(range: (u16, u16)) -> (LiveFilter, tokio::sync::watch::Receiver<Wanted>) {
        let mode = FilterMode::from_env();
        let ebpf = match mode {
            FilterMode::Auto | FilterMode::Ebpf => match ebpf::Ebpf::load() {
                Ok(e) => {
                    tracing::debug!(
                        mapped = e.is_mapped(),
                        "eBPF socket filter loaded (mapped: its bitmap is updated without system calls)"
                    );
                    Some(Arc::new(e))
                }
                Err(e) => {
                    tracing::info!(error = %e, "eBPF socket filter unavailable: live ports are filtered in the kernel only while they fit in a classic BPF program, else the whole knock range is admitted");
                    None
                }
            },
            FilterMode::Range | FilterMode::Classic => None,
        };
        if mode == FilterMode::Range {
            tracing::info!("{FILTER_ENV}=range: the capture filter admits the whole knock range");
        }
        let (tx, rx) = tokio::sync::watch::channel(Wanted {
            range,
            admit: Admit::Range,
        });
        let filter = LiveFilter {
            mode,
            ebpf,
            tx,
            last: None,
            kind: "range".to_owned(),
            detail: "capture filter: the whole knock range".to_owned(),
            drops: Drops::default(),
        };
        (filter, rx)
    }

    /// Recomputes the filter if the live counters changed since the last call (or `force`,
    /// after a reload) and passes it on. Cheap when nothing changed.
    pub fn update(&mut self, tracker: &Tracker, now: UnixMillis, force: bool) {
        let params = &tracker.config().params;
        let range = (params.port_lo, params.port_hi);
        let counters = tracker.live_counters(now);
        let key = (counters, range);
        if !force && self.last.as_ref() == Some(&key) {
            return;
        }
        let (admit, kind, detail) = self.choose(tracker, now);
        self.last = match admit {
            // A missing table: try again at the next update.
            Admit::Range if tracker.live_ports(now).is_none() => None,
            _ => Some(key),
        };
        if kind != self.kind {
            tracing::info!(filter = %kind, "{detail}");
            self.kind = kind;
        } else {
            tracing::debug!(filter = %kind, "{detail}");
        }
        self.detail = detail;
        let wanted = Wanted { range, admit };
        self.tx.send_if_modified(|w| {
            let changed = w.range != wanted.range || !w.admit.same(&wanted.admit);
            *w = wanted;
            changed
        });
    }

    /// The capture sockets' drop counter: the capture tasks add to it ([`run_capture`]),
    /// `sesamed status` reads it.
    pub fn capture_drops(&self) -> Drops {
        self.drops.clone()
    }

    /// What the capture filter admits now, for `sesamed status`.
    pub fn status(&self) -> crate::control::CaptureFilterStatus {
        crate::control::CaptureFilterStatus {
            kind: self.kind.clone(),
            detail: self.detail.clone(),
            ebpf_loaded: self.ebpf.is_some(),
        }
    }

    fn choose(&mut self, tracker: &Tracker, now: UnixMillis) -> (Admit, String, String) {
        let range = || {
            (
                Admit::Range,
                "range".to_owned(),
                "capture filter: the whole knock range".to_owned(),
            )
        };
        if self.mode == FilterMode::Range {
            return range();
        }
        // Where a sequence alone opens (payload "none" or "optional"), the tracker's reset
        // rule is what stops a sweep of the knock range: every in-range packet that fits no
        // candidate resets the source. A live-port filter would hide those packets, and an
        // in-order sweep would complete every ascending sequence. Only "required" (a sequence
        // opens nothing without its AEAD payload) may filter on live ports.
        if tracker.config().payload != PayloadMode::Required {
            return (
                Admit::Range,
                "range".to_owned(),
                format!(
                    "capture filter: the whole knock range (payload = \"{}\": a sequence alone opens, so sesamed must see every in-range packet for a sweep of the range to reset it)",
                    tracker.config().payload.as_str()
                ),
            );
        }
        let Some(live) = tracker.live_ports(now) else {
            return range();
        };
        let n = live.ports.len();
        if self.mode != FilterMode::Ebpf
            && let Some(program) = live_program(&live.ports)
        {
            let detail = format!(
                "capture filter: {n} live ports (counters {}..={}), a classic BPF program of {} instructions",
                live.counters.start(),
                live.counters.end(),
                program.len()
            );
            return (
                Admit::Classic(Arc::new(program)),
                "classic".to_owned(),
                detail,
            );
        }
        if let Some(e) = &self.ebpf {
            match e.set(&live.ports) {
                Ok(writes) => {
                    let detail = format!(
                        "capture filter: {n} live ports (counters {}..={}), the eBPF bitmap ({writes} words written)",
                        live.counters.start(),
                        live.counters.end()
                    );
                    return (Admit::Ebpf(Arc::clone(e)), "ebpf".to_owned(), detail);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "eBPF bitmap update refused; the capture filter admits the whole knock range from now on");
                    self.ebpf = None;
                }
            }
        }
        let (admit, kind, _) = range();
        (
            admit,
            kind,
            format!(
                "capture filter: {n} live ports do not fit in a classic BPF program and no eBPF filter is available: the whole knock range"
            ),
        )
    }
}

/// Puts `wanted` on the socket (replacing its filter atomically), or the whole of `range` when
/// `wanted` is for another range (a reload changed it and the live filter has not caught up).
fn apply(sock: &Socket, range: (u16, u16), wanted: &Wanted) -> std::io::Result<&'static str> {
    if wanted.range != range {
        sock.attach_filter(&socket_filter(range.0, range.1))?;
        return Ok("range");
    }
    match &wanted.admit {
        Admit::Range => sock
            .attach_filter(&socket_filter(range.0, range.1))
            .map(|()| "range"),
        Admit::Classic(p) => sock.attach_filter(&to_sock_filter(p)).map(|()| "classic"),
        Admit::Ebpf(e) => match e.attach(sock) {
            Ok(()) => Ok("ebpf"),
            Err(err) => {
                tracing::warn!(error = %err, "attaching the eBPF filter failed; admitting the whole knock range");
                sock.attach_filter(&socket_filter(range.0, range.1))
                    .map(|()| "range")
            }
        },
    }
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

/// Why a capture source must be reopened.
#[derive(Debug)]
pub enum Lost {
    /// The interface was deleted, or deleted and recreated with a new index.
    Gone,
    /// The source failed.
    Failed(std::io::Error),
}

/// Packets a source hands over before the capture task lets the other tasks run: under a
/// flood the source never empties, and the firewall task must still open the leases being
/// granted.
pub const BATCH: usize = 64;

/// A source of captured packets: the seam for a capture backend.
///
/// [`run_capture`] drives one per interface: it opens the source, keeps its filter in step
/// with the knock range and the live ports ([`Wanted`], from [`LiveFilter`]), hands every
/// packet to the daemon's packet path (`daemon/core.rs`), and reopens the source when it is
/// lost. [`PacketSocket`] (AF_PACKET with a classic or eBPF socket filter) is the one
/// implementation today; a new backend (an in-kernel filter that does more, XDP) implements
/// this trait and replaces `PacketSocket` in the `Capture` alias of `daemon/mod.rs`. A filter
/// the backend cannot express in [`Admit`] gets a variant there, computed by
/// [`LiveFilter::update`]. Static dispatch: the packet path calls no `dyn` method.
pub trait CaptureSource: Sized {
    /// Opens the source on `interface` (`None`: every interface), admitting the whole knock
    /// range `range` (`lo`, `hi`). sesamed opens one per interface before it drops its
    /// privileges, so a missing capability fails the start.
    fn open(interface: Option<&str>, range: (u16, u16)) -> std::io::Result<Self>;

    /// Replaces what the source admits with `wanted`, or with the whole `range` when `wanted`
    /// was computed for another range (a reload changed it), in one step: there is no moment
    /// without a filter. Returns the mechanism in use (`range`, `classic`, `ebpf`).
    fn set_filter(&self, range: (u16, u16), wanted: &Wanted) -> std::io::Result<&'static str>;

    /// Waits for packets, then hands each one (an IP packet, without a link header) to
    /// `on_packet`, at most [`BATCH`] of them, and returns how many. `Err` when the source
    /// must be reopened.
    fn recv<F: FnMut(&[u8])>(
        &mut self,
        on_packet: &mut F,
    ) -> impl Future<Output = Result<usize, Lost>>;

    /// Called every second: `Err(Lost::Gone)` when the interface the source was opened on is
    /// gone (deleted, or deleted and recreated).
    fn check(&mut self) -> Result<(), Lost>;

    /// Packets the filter admitted but the source dropped (its queue was full: the daemon did
    /// not read fast enough) since the last call. Called every second and before a lost source
    /// is closed; the sum is `sesamed status`'s `capture_drops`.
    fn drops(&mut self) -> u64 {
        0
    }
}

/// Packets the capture sources dropped since start, summed over every interface and every
/// reopened source (see [`CaptureSource::drops`]): shared by the capture tasks, which add to
/// it, and `sesamed status`, which reads it.
#[derive(Clone, Debug, Default)]
pub struct Drops(Arc<std::sync::atomic::AtomicU64>);

impl Drops {
    /// Adds `n` dropped packets.
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The dropped packets counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Reads and resets the socket's `PACKET_STATISTICS` (the kernel zeroes them on every read):
/// `(tp_packets, tp_drops)`, packets the filter admitted (dropped ones included) and packets
/// dropped because the receive queue was full.
pub fn packet_statistics(sock: &Socket) -> std::io::Result<(u64, u64)> {
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: the fd is a valid packet socket owned by `sock`; `stats` is a tpacket_stats that
    // lives across the call, `len` holds its exact size, and the kernel writes at most `len`
    // bytes into it (and the length it wrote into `len`).
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((u64::from(stats.tp_packets), u64::from(stats.tp_drops)))
}

/// An AF_PACKET socket on one interface (or all), registered with the runtime: the
/// [`CaptureSource`] sesamed uses.
pub struct PacketSocket {
    fd: AsyncFd<Socket>,
    /// The interface it is bound to (`None`: all), and its index then.
    interface: Option<String>,
    index: u32,
    /// For the log: the interface, or `any`.
    name: String,
    buf: Vec<u8>,
    /// Set when the kernel reported the interface down; cleared (and logged) when it is up
    /// again.
    down: bool,
}

impl std::fmt::Debug for PacketSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketSocket")
            .field("interface", &self.name)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Logs that the interface went down (once until it is back).
fn went_down(down: &mut bool, name: &str) {
    if !*down {
        tracing::warn!(interface = %name, "interface went down; capture resumes when it is up");
    }
    *down = true;
}

/// Logs that the interface is up again, if it was down.
fn came_back(down: &mut bool, name: &str) {
    if *down {
        tracing::info!(interface = %name, "capture restored: interface is up again");
    }
    *down = false;
}

impl CaptureSource for PacketSocket {
    fn open(interface: Option<&str>, (lo, hi): (u16, u16)) -> std::io::Result<Self> {
        let sock = open_socket(interface, lo, hi)?;
        let index = match interface {
            Some(n) => interface_index(n)?,
            None => 0,
        };
        Ok(PacketSocket {
            fd: register(sock)?,
            interface: interface.map(str::to_owned),
            index,
            name: interface.unwrap_or("any").to_owned(),
            buf: vec![0u8; SNAPLEN as usize],
            down: false,
        })
    }

    fn set_filter(&self, range: (u16, u16), wanted: &Wanted) -> std::io::Result<&'static str> {
        apply(self.fd.get_ref(), range, wanted)
    }

    /// * An interface that goes down keeps its socket: the kernel reports an error (logged,
    ///   and cleared), and packets flow again when it comes back up.
    /// * Any other socket failure is `Lost::Failed`.
    async fn recv<F: FnMut(&[u8])>(&mut self, on_packet: &mut F) -> Result<usize, Lost> {
        let PacketSocket {
            fd,
            name,
            buf,
            down,
            ..
        } = self;
        let mut guard = fd
            .ready(tokio::io::Interest::READABLE | tokio::io::Interest::ERROR)
            .await
            .map_err(Lost::Failed)?;
        if guard.ready().is_error() {
            match fd.get_ref().take_error() {
                Ok(Some(e)) if e.raw_os_error() == Some(libc::ENETDOWN) => went_down(down, name),
                Ok(Some(e)) => {
                    tracing::warn!(interface = %name, error = %e, "capture socket error")
                }
                Ok(None) => {}
                Err(e) => return Err(Lost::Failed(e)),
            }
        }
        // Drain what is queued, up to a batch; clear readiness only when the socket says so.
        let mut batch = 0usize;
        loop {
            match guard.try_io(|inner| inner.get_ref().read(buf)) {
                Ok(Ok(n)) => {
                    came_back(down, name);
                    on_packet(&buf[..n]);
                    batch += 1;
                    if batch % BATCH == 0 {
                        break;
                    }
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENETDOWN) => went_down(down, name),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(Lost::Failed(e)),
                Err(_would_block) => break,
            }
        }
        Ok(batch)
    }

    /// An interface that is deleted, or deleted and recreated (new index), is `Lost::Gone`.
    fn check(&mut self) -> Result<(), Lost> {
        if let Some(n) = &self.interface {
            match interface_index(n) {
                Ok(i) if i == self.index => {
                    if self.down && interface_is_up(n) {
                        came_back(&mut self.down, &self.name);
                    }
                }
                _ => return Err(Lost::Gone),
            }
        }
        Ok(())
    }

    fn drops(&mut self) -> u64 {
        packet_statistics(self.fd.get_ref()).map_or(0, |(_, drops)| drops)
    }
}

/// Reads packets from one interface (or all) forever, through a capture source `S`, calling
/// `on_packet` with each raw IP packet.
///
/// * A lost source (an interface deleted, or deleted and recreated with a new index, is
///   noticed within a second; any other failure at once) is reopened by name as soon as the
///   interface exists again, retrying every second.
/// * A new knock range (a reload that changed `port_range`) replaces the in-kernel filter of
///   the open source at once (no privilege is needed for that), with the whole range until
///   the live filter for it comes.
/// * A new live filter ([`LiveFilter`]) replaces the source's filter atomically
///   (`SO_ATTACH_FILTER`/`SO_ATTACH_BPF` swap the program in one step), so there is no moment
///   without one; a new source gets the range filter before it is bound and the live one
///   right after.
/// * The packets the source dropped ([`CaptureSource::drops`]) are added to `drops` every
///   second and before a lost source is closed.
pub async fn run_capture<S, F>(
    interface: Option<String>,
    mut range: tokio::sync::watch::Receiver<(u16, u16)>,
    mut live: tokio::sync::watch::Receiver<Wanted>,
    drops: Drops,
    mut on_packet: F,
) where
    S: CaptureSource,
    F: FnMut(&[u8]),
{
    let name = interface.as_deref().unwrap_or("any").to_owned();
    let mut failing = false;
    loop {
        let (lo, hi) = *range.borrow_and_update();
        let opened = S::open(interface.as_deref(), (lo, hi)).and_then(|source| {
            source.set_filter((lo, hi), &live.borrow_and_update())?;
            Ok(source)
        });
        let mut source = match opened {
            Ok(s) => s,
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
            &mut source,
            &name,
            &mut on_packet,
            Filters {
                range: &mut range,
                live: &mut live,
            },
            &drops,
        )
        .await;
        drops.add(source.drops());
        failing = true;
        match lost {
            Lost::Gone => {
                tracing::warn!(interface = %name, "interface is gone; capture resumes when it is back")
            }
            Lost::Failed(e) => {
                tracing::warn!(interface = %name, error = %e, "capture lost; reopening")
            }
        }
        drop(source);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What tells a capture task its filter: the knock range (a reload) and the live filter.
struct Filters<'a> {
    range: &'a mut tokio::sync::watch::Receiver<(u16, u16)>,
    live: &'a mut tokio::sync::watch::Receiver<Wanted>,
}

async fn read_until_lost<S, F>(
    source: &mut S,
    name: &str,
    on_packet: &mut F,
    filters: Filters<'_>,
    drops: &Drops,
) -> Lost
where
    S: CaptureSource,
    F: FnMut(&[u8]),
{
    let Filters { range, live } = filters;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            got = source.recv(on_packet) => match got {
                // A full batch: let the other tasks run before reading on.
                Ok(n) if n >= BATCH => tokio::task::yield_now().await,
                Ok(_) => {}
                Err(lost) => return lost,
            },
            changed = range.changed() => {
                if changed.is_err() {
                    // The daemon is stopping: keep reading until it drops this task.
                    std::future::pending::<()>().await;
                }
                let (lo, hi) = *range.borrow_and_update();
                if let Err(e) = source.set_filter((lo, hi), &live.borrow_and_update()) {
                    return Lost::Failed(e);
                }
                tracing::info!(interface = %name, port_range = %format!("{lo}-{hi}"), "capture filter replaced for the new knock range");
            }
            changed = live.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
                let r = *range.borrow();
                match source.set_filter(r, &live.borrow_and_update()) {
                    Ok(kind) => tracing::debug!(interface = %name, filter = kind, "capture filter replaced"),
                    Err(e) => return Lost::Failed(e),
                }
            }
            _ = check.tick() => {
                drops.add(source.drops());
                if let Err(lost) = source.check() {
                    return lost;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
