//! `sesame-flood`: the flood generator of the end-to-end tests and of `scripts/flood-bench`.
//!
//! It runs inside a test namespace (normally the lab's attacker namespace) and writes whole
//! Ethernet frames to an AF_PACKET socket on one interface, so it can use any source address:
//! the source pool is `--sources N` consecutive addresses from `--src4` / `--src6`. sesamed
//! captures with a packet socket, before any routing or reverse-path check, so spoofed frames
//! reach it exactly like real ones. Frames are built once per source (etherparse) and only the
//! destination port and its checksum are patched per packet; they go out in `sendmmsg` batches.
//!
//! ```text
//! sesame-flood MODE [options]
//!
//! modes (raw frames on --iface, spoofed sources):
//!   udp        UDP datagrams (random 0..=32 bytes, or --size) to random ports of the knock
//!              range
//!   syn        TCP SYNs to random ports of the knock range
//!   payload    184-byte random datagrams to the current payload ports of the client of
//!              --profile (the attacker knows the client's key: the worst case); with
//!              --with-knocks each payload follows that step's knocks from the same source, so
//!              every fake payload reaches the MAC gate even with length > 0
//!   mix        udp, syn and (with --profile) payload, mixed at random
//!   replay     ONE given UDP datagram (--hex, or taken from --pcap) to one port (--port), from
//!              every source of the pool in turn: a captured valid knock replayed from
//!              spoofed sources; with --sequence every UDP datagram of the capture, in order,
//!              from each source (a captured knock sequence)
//! mode (normal sockets, the namespace's own address):
//!   knock      --count valid knocks (sequence and payload) of the client of --profile, with
//!              strictly increasing timestamps, to each --to address in turn
//!
//! raw options:
//!   --iface NAME          interface to send on (default a-srv)
//!   --dst-mac MAC         destination MAC address (the server side of the link; required)
//!   --dst4 ADDR --dst6 ADDR
//!                         destination addresses (one per family used)
//!   --family 4|6|both     source/destination family (default 4)
//!   --sources N           source pool size, 1..=65536 (default 65536)
//!   --src4 ADDR           first IPv4 source (default 198.19.0.0)
//!   --src6 ADDR           first IPv6 source (default 2001:db8:ffff::)
//!   --lo N --hi N         knock range (default: the profile's, else 20000..=21999)
//!   --profile FILE        client profile (payload mode; its key file is read)
//!   --skew N              payload mode: also target the N steps either side (default 1)
//!   --with-knocks         payload mode: send the knocks before each payload
//!   --size N              udp mode: datagrams of exactly N random bytes (at most 1452)
//!   --base64              udp mode: the random bytes from the base64 alphabet (a fake SPA
//!                         packet of fwknop)
//!   --hex HEX             replay mode: the datagram's bytes, in hex (at most 1452 bytes)
//!   --pcap FILE           replay mode: take the datagram from this capture (a UDP datagram
//!                         of it, see --pick); its destination port is the default --port
//!   --pick N              replay mode with --pcap: the Nth UDP datagram of the capture,
//!                         from 0 (default: the last one)
//!   --sequence            replay mode with --pcap: every UDP datagram of the capture, in
//!                         order, each to its own destination port, from each source
//!   --port N              replay mode: destination port (required with --hex)
//!   --duration-ms N       stop after this long (default 5000; 0 = no limit)
//!   --count N             stop after this many frames (default 0 = no limit)
//!   --rate PPS            frames per second (default 0 = as fast as possible)
//!   --batch N             frames per sendmmsg (default 64)
//!   --stdin-stop          also stop when stdin reaches end of file or a line is read
//!   --cpu N               run on CPU N only (sched_setaffinity), for several senders
//! knock options:
//!   --profile FILE --to ADDR (repeatable) --count N (default 1000) --gap-us N (default 0)
//!   --allow-ip ADDR       ask to open ADDR instead of the source (repeatable: one per knock,
//!                         in turn)
//! ```
//!
//! Flood modes print `flooding` when the frames are built and sending starts. At the end it
//! prints one JSON line: `{"mode":…,"packets":N,"seconds":S,"pps":P,…}`.
//! Exit status: 0 done, 2 usage or system error.
//!
//! Never point it at anything but a test namespace: it has no other safety net.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etherparse::PacketBuilder;
use sesame_proto::derive::{Sequence, derive_sequence};
use sesame_proto::params::KnockParams;
use sesame_proto::wire::{DATAGRAM_LEN, Request, build_payload};
use sesame_proto::{ClientKeys, Profile, Proto, UnixMillis};
use sesame_tests::{Args, Rng, pcap};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesame-flood: {e}");
            ExitCode::from(2)
        }
    }
}

/// Options that take no value.
const FLAGS: &[&str] = &["with-knocks", "stdin-stop", "sequence", "base64"];

fn run(args: &[String]) -> Result<()> {
    let (mode, rest) = args
        .split_first()
        .ok_or("usage: sesame-flood udp|syn|payload|mix|replay|knock [options] (see the source)")?;
    let a = Args::parse(rest, FLAGS)?;
    if !a.positional.is_empty() {
        return Err(format!("unexpected arguments: {:?}", a.positional));
    }
    match mode.as_str() {
        "udp" | "syn" | "payload" | "mix" | "replay" => flood(mode, &a),
        "knock" => knock(&a),
        other => Err(format!("unknown mode {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn now_ms() -> UnixMillis {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    UnixMillis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("not a MAC address: {s}"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("not a MAC address: {s}"))?;
    }
    Ok(mac)
}

fn interface_mac(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_mac(text.trim())
}

fn interface_index(iface: &str) -> Result<i32> {
    let path = format!("/sys/class/net/{iface}/ifindex");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{path}: not a number"))
}

/// A profile with its key files read (paths relative to the profile's directory).
struct Client {
    profile: Profile,
    keys: ClientKeys,
}

fn load_client(path: &str) -> Result<Client> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let profile = Profile::parse(&text).map_err(|e| format!("{path}: {e}"))?;
    let dir = Path::new(path).parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let key = sesame_keys::read_private_key_file(&resolve(&profile.private_key_file))
        .map_err(|e| e.to_string())?;
    let psk = match &profile.psk_file {
        Some(p) => Some(sesame_keys::read_psk_file(&resolve(p)).map_err(|e| e.to_string())?),
        None => None,
    };
    let keys = ClientKeys::for_client(&key, &profile.server_public_key, psk.as_ref())
        .map_err(|e| e.to_string())?;
    Ok(Client { profile, keys })
}

fn sequences(params: &KnockParams, keys: &ClientKeys, counters: &[u64]) -> Result<Vec<Sequence>> {
    counters
        .iter()
        .map(|c| derive_sequence(keys, params, *c).map_err(|e| e.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Frames

/// A prebuilt frame whose destination port (and checksum) is patched before each send.
#[derive(Clone)]
struct Template {
    frame: Vec<u8>,
    /// Offset of the transport header.
    l4: usize,
    /// Offset of the transport checksum.
    csum: usize,
    udp: bool,
}

impl Template {
    fn build(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: IpAddr,
        dst: IpAddr,
        l4: L4<'_>,
        rng: &mut Rng,
    ) -> Result<Template> {
        let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
        let sport = 1024 + rng.below(60000) as u16;
        let (ip, ip_len) = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (eth.ipv4(s.octets(), d.octets(), 64), 20),
            (IpAddr::V6(s), IpAddr::V6(d)) => (eth.ipv6(s.octets(), d.octets(), 64), 40),
            _ => {
                return Err(format!(
                    "source {src} and destination {dst} differ in family"
                ));
            }
        };
        let l4_at = 14 + ip_len;
        let mut frame = Vec::with_capacity(256);
        let payload = match l4 {
            L4::UdpData(data) => Some(data.to_vec()),
            L4::Udp(len) => {
                let mut random = vec![0u8; len];
                rng.fill(&mut random);
                Some(random)
            }
            L4::UdpBase64(len) => {
                const ALPHABET: &[u8; 64] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let mut random = vec![0u8; len];
                rng.fill(&mut random);
                Some(
                    random
                        .iter()
                        .map(|b| ALPHABET[usize::from(b % 64)])
                        .collect(),
                )
            }
            L4::Syn => None,
        };
        match payload {
            Some(payload) => {
                if 14 + ip_len + 8 + payload.len() > SLOT {
                    return Err(format!(
                        "a datagram of {} bytes does not fit a {SLOT}-byte frame",
                        payload.len()
                    ));
                }
                let b = ip.udp(sport, 1);
                b.write(&mut frame, &payload)
                    .map_err(|e| format!("frame: {e}"))?;
                Ok(Template {
                    frame,
                    l4: l4_at,
                    csum: l4_at + 6,
                    udp: true,
                })
            }
            None => {
                let seq = rng.next() as u32;
                let b = ip.tcp(sport, 1, seq, 64240).syn();
                b.write(&mut frame, &[])
                    .map_err(|e| format!("frame: {e}"))?;
                Ok(Template {
                    frame,
                    l4: l4_at,
                    csum: l4_at + 16,
                    udp: false,
                })
            }
        }
    }

    /// Copies the frame into `out` with destination port `port`; returns its length.
    fn emit(&self, out: &mut [u8], port: u16) -> usize {
        let n = self.frame.len();
        out[..n].copy_from_slice(&self.frame);
        set_port(&mut out[..n], self.l4, self.csum, self.udp, port);
        n
    }
}

#[derive(Clone, Copy)]
enum L4<'a> {
    /// A UDP datagram with this many random payload bytes.
    Udp(usize),
    /// A UDP datagram with this many random payload bytes from the base64 alphabet.
    UdpBase64(usize),
    /// A UDP datagram with exactly these payload bytes.
    UdpData(&'a [u8]),
    /// A TCP SYN.
    Syn,
}

/// Sets the destination port and updates the transport checksum incrementally (RFC 1624,
/// eqn. 3: `HC' = ~(~HC + ~m + m')`).
fn set_port(frame: &mut [u8], l4: usize, csum: usize, udp: bool, port: u16) {
    let old = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
    frame[l4 + 2..l4 + 4].copy_from_slice(&port.to_be_bytes());
    let hc = u16::from_be_bytes([frame[csum], frame[csum + 1]]);
    if udp && hc == 0 {
        return; // IPv4 UDP without a checksum
    }
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(port);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let mut c = !(sum as u16);
    if udp && c == 0 {
        c = 0xffff; // a computed zero is sent as all ones
    }
    frame[csum..csum + 2].copy_from_slice(&c.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// The raw sender

/// Largest frame this tool builds: a full Ethernet frame (1500 bytes of IP packet).
const SLOT: usize = 1514;

/// An AF_PACKET socket bound to one interface, with `batch` frame slots sent by `sendmmsg`.
struct RawSender {
    sock: Socket,
    slots: Vec<u8>,
    lens: Vec<usize>,
    batch: usize,
    errors: u64,
    last_error: Option<String>,
}

impl RawSender {
    fn open(iface: &str, batch: usize) -> Result<RawSender> {
        // Protocol 0: the socket only sends; it never receives a frame.
        let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0)))
            .map_err(|e| format!("AF_PACKET socket (needs CAP_NET_RAW): {e}"))?;
        // Bypass the qdisc: the frames go straight to the driver (veth).
        let one: libc::c_int = 1;
        // SAFETY: the fd is a valid socket owned by `sock`; the option value is a c_int that
        // lives across the call and its exact size is passed.
        let _ = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let _ = sock.set_send_buffer_size(4 << 20);
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: sockaddr_ll is one of this platform's sockaddr types and fits the storage.
        let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
        ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
        ll.sll_protocol = 0;
        ll.sll_ifindex = interface_index(iface)?;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the storage holds an initialised sockaddr_ll of `len` bytes.
        let addr = unsafe { SockAddr::new(storage, len) };
        sock.bind(&addr)
            .map_err(|e| format!("bind to {iface}: {e}"))?;
        Ok(RawSender {
            sock,
            slots: vec![0u8; batch * SLOT],
            lens: vec![0; batch],
            batch,
            errors: 0,
            last_error: None,
        })
    }

    fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.slots[i * SLOT..(i + 1) * SLOT]
    }

    /// Sends slots `0..n`; returns how many frames the kernel took.
    fn send(&mut self, n: usize) -> u64 {
        let n = n.min(self.batch);
        if n == 1 {
            return match self.sock.send(&self.slots[..self.lens[0]]) {
                Ok(_) => 1,
                Err(e) => {
                    self.error(e);
                    0
                }
            };
        }
        let base = self.slots.as_mut_ptr();
        let mut iov: Vec<libc::iovec> = (0..n)
            .map(|i| libc::iovec {
                // SAFETY: `i * SLOT` is inside `slots` (it holds `batch * SLOT` bytes, i < n <=
                // batch).
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: self.lens[i],
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid value (no name, no
                // control data, no flags).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut sent = 0usize;
        while sent < n {
            // SAFETY: `msgs[sent..n]` are initialised mmsghdrs whose iovecs point into `slots`
            // and `iov`, both alive and unmoved for the duration of the call; the count passed
            // is the number of entries from `sent`.
            let r = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    msgs.as_mut_ptr().add(sent),
                    (n - sent) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                self.error(std::io::Error::last_os_error());
                // Skip the frame the kernel refused, keep the rest.
                sent += 1;
                continue;
            }
            if r == 0 {
                break;
            }
            sent += r as usize;
        }
        sent as u64
    }

    fn error(&mut self, e: std::io::Error) {
        self.errors += 1;
        if self.last_error.is_none() {
            eprintln!("sesame-flood: send: {e} (further errors only counted)");
        }
        self.last_error = Some(e.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// Flood modes

/// The ports payload mode aims at, refreshed when the step changes.
struct Targets {
    client: Client,
    skew: u64,
    counter: u64,
    /// `(knocks, payload port)` per counter of the window.
    seqs: Vec<(Vec<(Proto, u16)>, u16)>,
}

impl Targets {
    fn new(client: Client, skew: u64) -> Result<Targets> {
        let mut t = Targets {
            client,
            skew,
            counter: u64::MAX,
            seqs: Vec::new(),
        };
        t.refresh()?;
        Ok(t)
    }

    fn refresh(&mut self) -> Result<()> {
        let c = now_ms().counter(self.client.profile.params.step_seconds);
        if c == self.counter {
            return Ok(());
        }
        let counters: Vec<u64> =
            (c.saturating_sub(self.skew)..=c.saturating_add(self.skew)).collect();
        self.seqs = sequences(&self.client.profile.params, &self.client.keys, &counters)?
            .into_iter()
            .map(|s| {
                (
                    s.knocks.iter().map(|k| (k.proto, k.port)).collect(),
                    s.payload_port,
                )
            })
            .collect();
        self.counter = c;
        Ok(())
    }
}

/// Per-source frames: a small UDP datagram, a SYN, a payload-sized datagram and the replayed
/// datagrams.
struct Source {
    small: Option<Template>,
    syn: Option<Template>,
    big: Option<Template>,
    seq: Vec<Template>,
}

fn source_addr(base: IpAddr, i: u32) -> IpAddr {
    match base {
        IpAddr::V4(b) => IpAddr::V4(Ipv4Addr::from(u32::from(b).wrapping_add(i))),
        IpAddr::V6(b) => IpAddr::V6(Ipv6Addr::from(u128::from(b).wrapping_add(u128::from(i)))),
    }
}

fn flood(mode: &str, a: &Args) -> Result<()> {
    let iface = a.get("iface").unwrap_or("a-srv").to_owned();
    let dst_mac = parse_mac(a.get("dst-mac").ok_or("--dst-mac is required")?)?;
    let src_mac = interface_mac(&iface)?;
    let family = a.get("family").unwrap_or("4");
    let families: Vec<u8> = match family {
        "4" => vec![4],
        "6" => vec![6],
        "both" => vec![4, 6],
        other => return Err(format!("--family: 4, 6 or both, not {other}")),
    };
    let sources = a.num("sources", 65536)?;
    if !(1..=65536).contains(&sources) {
        return Err("--sources must be 1..=65536".into());
    }
    let sources = sources as u32;
    let src4: Ipv4Addr = a.parsed("src4", Ipv4Addr::new(198, 19, 0, 0))?;
    let src6: Ipv6Addr = a.parsed("src6", Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0))?;
    let dst4: Option<Ipv4Addr> = a
        .get("dst4")
        .map(str::parse)
        .transpose()
        .map_err(|_| "--dst4")?;
    let dst6: Option<Ipv6Addr> = a
        .get("dst6")
        .map(str::parse)
        .transpose()
        .map_err(|_| "--dst6")?;
    let duration = Duration::from_millis(a.num("duration-ms", 5000)?);
    let max_count = a.num("count", 0)?;
    let rate = a.num("rate", 0)?;
    let mut batch = a.num("batch", 64)?.clamp(1, 1024) as usize;
    if rate > 0 {
        // At low rates, small batches keep the pacing smooth.
        batch = batch.min((rate / 1000).max(1) as usize);
    }
    let with_knocks = a.flag("with-knocks");

    let mut targets = match a.get("profile") {
        Some(p) => Some(Targets::new(load_client(p)?, a.num("skew", 1)?)?),
        None => None,
    };
    if mode == "payload" && targets.is_none() {
        return Err("payload mode needs --profile".into());
    }
    let (lo, hi) = match &targets {
        Some(t) => (
            t.client.profile.params.port_lo,
            t.client.profile.params.port_hi,
        ),
        None => (20000, 21999),
    };
    let lo: u16 = a.parsed("lo", lo)?;
    let hi: u16 = a.parsed("hi", hi)?;
    if lo > hi {
        return Err("--lo must not exceed --hi".into());
    }
    let span = u32::from(hi - lo) + 1;

    // Replay mode: the datagram(s), and the port each goes to.
    let replayed: Option<Vec<(Vec<u8>, u16)>> = if mode == "replay" {
        Some(replay_datagrams(a)?)
    } else {
        None
    };
    // udp mode: a fixed datagram size instead of 0..=32 bytes, random or base64 bytes.
    let size: Option<usize> = match a.get("size") {
        Some(_) => Some(usize::try_from(a.num("size", 0)?).map_err(|e| e.to_string())?),
        None => None,
    };
    let base64 = a.flag("base64");

    let want_small = matches!(mode, "udp" | "mix") || with_knocks;
    let want_syn = matches!(mode, "syn" | "mix") || with_knocks;
    let want_big = targets.is_some() && matches!(mode, "payload" | "mix");

    let mut rng = Rng::seeded();
    let mut pool: Vec<Source> = Vec::with_capacity(sources as usize * families.len());
    for i in 0..sources {
        for f in &families {
            let (src, dst) = match f {
                4 => (
                    source_addr(IpAddr::V4(src4), i),
                    IpAddr::V4(dst4.ok_or("--dst4 is required for IPv4")?),
                ),
                _ => (
                    source_addr(IpAddr::V6(src6), i),
                    IpAddr::V6(dst6.ok_or("--dst6 is required for IPv6")?),
                ),
            };
            let mut build = |want: bool, l4: L4| -> Result<Option<Template>> {
                if want {
                    Template::build(src_mac, dst_mac, src, dst, l4, &mut rng).map(Some)
                } else {
                    Ok(None)
                }
            };
            let small_len = if with_knocks && mode == "payload" {
                0
            } else {
                size.unwrap_or((i % 33) as usize)
            };
            let small_l4 = if base64 {
                L4::UdpBase64(small_len)
            } else {
                L4::Udp(small_len)
            };
            let small = build(want_small, small_l4)?;
            let syn = build(want_syn, L4::Syn)?;
            let big = build(want_big, L4::Udp(DATAGRAM_LEN))?;
            let mut seq = Vec::new();
            for (data, _) in replayed.iter().flatten() {
                seq.extend(build(true, L4::UdpData(data))?);
            }
            pool.push(Source {
                small,
                syn,
                big,
                seq,
            });
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    if a.flag("stdin-stop") {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            stop.store(true, Ordering::SeqCst);
        });
    }

    if a.get("cpu").is_some() {
        pin_to_cpu(usize::try_from(a.num("cpu", 0)?).map_err(|e| e.to_string())?)?;
    }
    let mut tx = RawSender::open(&iface, batch)?;
    println!("flooding");
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut next_source: usize = 0;
    // Frames still to send for the current payload-mode unit (knocks, then the payload).
    let mut unit: Vec<(usize, usize, u16)> = Vec::new();
    let mut kinds = [0u64; 3]; // small, syn, big
    loop {
        let elapsed = started.elapsed();
        if stop.load(Ordering::Relaxed)
            || (!duration.is_zero() && elapsed >= duration)
            || (max_count > 0 && sent >= max_count)
        {
            break;
        }
        if rate > 0 {
            let due = (elapsed.as_secs_f64() * rate as f64) as u64;
            if sent >= due {
                let ahead = (sent + 1) as f64 / rate as f64 - elapsed.as_secs_f64();
                std::thread::sleep(Duration::from_secs_f64(ahead.clamp(0.0, 0.05)));
                continue;
            }
        }
        if let Some(t) = targets.as_mut() {
            t.refresh()?;
        }
        let mut n = batch;
        if max_count > 0 {
            n = n.min((max_count - sent) as usize);
        }
        for slot in 0..n {
            let (src_index, frame_kind, port) = if let Some(next) = unit.pop() {
                next
            } else {
                let s = next_source;
                next_source = (next_source + 1) % pool.len();
                let pick = match mode {
                    "udp" => 0,
                    "syn" => 1,
                    "payload" | "replay" => 2,
                    _ => rng.below(if want_big { 3 } else { 2 }) as usize,
                };
                if let Some(datagrams) = &replayed {
                    // Popped from the end: the datagrams in the captured order.
                    for (j, (_, port)) in datagrams.iter().enumerate().rev() {
                        unit.push((s, 3 + j, *port));
                    }
                    unit.pop().ok_or("internal: empty unit")?
                } else if pick == 2 {
                    let t = targets.as_ref().ok_or("internal: no targets")?;
                    let (knocks, payload_port) = &t.seqs[rng.below(t.seqs.len() as u32) as usize];
                    if with_knocks {
                        // Popped from the end: the knocks in order, then the payload.
                        unit.push((s, 2, *payload_port));
                        for (proto, port) in knocks.iter().rev() {
                            let kind = if *proto == Proto::Tcp { 1 } else { 0 };
                            unit.push((s, kind, *port));
                        }
                        unit.pop().ok_or("internal: empty unit")?
                    } else {
                        (s, 2, *payload_port)
                    }
                } else {
                    (s, pick, lo + rng.below(span) as u16)
                }
            };
            let source = &pool[src_index];
            let template = match frame_kind {
                0 => source.small.as_ref(),
                1 => source.syn.as_ref(),
                2 => source.big.as_ref(),
                j => source.seq.get(j - 3),
            }
            .ok_or("internal: missing frame template")?;
            kinds[frame_kind.min(2)] += 1;
            let len = template.emit(tx.slot(slot), port);
            tx.lens[slot] = len;
        }
        sent += tx.send(n);
    }
    let seconds = started.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "mode": mode,
        "family": family,
        "sources": sources,
        "packets": sent,
        "udp": kinds[0],
        "syn": kinds[1],
        "payloads": kinds[2],
        "errors": tx.errors,
        "last_error": tx.last_error,
        "seconds": seconds,
        "pps": if seconds > 0.0 { sent as f64 / seconds } else { 0.0 },
        "rate": rate,
        "batch": batch,
        "cpu": a.get("cpu"),
    });
    println!("{out}");
    Ok(())
}

/// Replay mode's datagrams and their destination ports: every UDP datagram of `--pcap` with
/// `--sequence`, else the one of [`replay_datagram`].
fn replay_datagrams(a: &Args) -> Result<Vec<(Vec<u8>, u16)>> {
    if !a.flag("sequence") {
        return Ok(vec![replay_datagram(a)?]);
    }
    let file = a.get("pcap").ok_or("--sequence needs --pcap")?;
    if a.get("hex").is_some() || a.get("pick").is_some() || a.get("port").is_some() {
        return Err("--sequence replays the whole capture: no --hex, --pick or --port".into());
    }
    let udp = udp_datagrams(Path::new(file))?;
    if udp.is_empty() {
        return Err(format!("{file}: no UDP datagram in the capture"));
    }
    Ok(udp)
}

/// The UDP datagrams of a capture, in order: (payload, destination port).
fn udp_datagrams(file: &Path) -> Result<Vec<(Vec<u8>, u16)>> {
    Ok(pcap::read_file(file)?
        .into_iter()
        .filter_map(|p| match p.l4 {
            pcap::L4::Udp { dport, payload, .. } => Some((payload, dport)),
            _ => None,
        })
        .collect())
}

/// Replay mode's datagram and destination port, from `--hex` or `--pcap` (`--pick`), and
/// `--port`.
fn replay_datagram(a: &Args) -> Result<(Vec<u8>, u16)> {
    let (data, port) = match (a.get("hex"), a.get("pcap")) {
        (Some(hex), None) => (parse_hex(hex)?, None),
        (None, Some(file)) => {
            let udp = udp_datagrams(Path::new(file))?;
            let index = match a.get("pick") {
                Some(_) => usize::try_from(a.num("pick", 0)?).map_err(|e| e.to_string())?,
                None => udp.len().saturating_sub(1),
            };
            let (data, dport) = udp.get(index).cloned().ok_or_else(|| {
                format!(
                    "{file}: no UDP datagram number {index} ({} in the capture)",
                    udp.len()
                )
            })?;
            (data, Some(dport))
        }
        _ => return Err("replay mode needs exactly one of --hex and --pcap".into()),
    };
    let port = match a.get("port") {
        Some(_) => a.parsed("port", 0u16)?,
        None => port.ok_or("replay mode with --hex needs --port")?,
    };
    Ok((data, port))
}

fn parse_hex(hex: &str) -> Result<Vec<u8>> {
    let hex = hex.trim();
    if hex.len() % 2 != 0 {
        return Err("--hex: odd number of digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("--hex: not hex at offset {i}"))
        })
        .collect()
}

/// Runs the calling thread (the sender) on CPU `cpu` only.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("--cpu {cpu}: out of range"));
    }
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is an initialised cpu_set_t that lives across the call and its exact size
    // is passed; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(format!(
            "--cpu {cpu}: sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Valid knocks

fn knock(a: &Args) -> Result<()> {
    let client = load_client(a.get("profile").ok_or("knock mode needs --profile")?)?;
    let to: Vec<IpAddr> = a
        .all("to")
        .iter()
        .map(|s| s.parse().map_err(|_| format!("--to: not an address: {s}")))
        .collect::<Result<_>>()?;
    if to.is_empty() {
        return Err("knock mode needs at least one --to ADDR".into());
    }
    let allow: Vec<IpAddr> = a
        .all("allow-ip")
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("--allow-ip: not an address: {s}"))
        })
        .collect::<Result<_>>()?;
    let count = a.num("count", 1000)?;
    let gap = Duration::from_micros(a.num("gap-us", 0)?);
    let params = &client.profile.params;
    let udp4 = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let udp6 = if to.iter().any(IpAddr::is_ipv6) {
        Some(UdpSocket::bind("[::]:0").map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut cached: Option<Sequence> = None;
    let mut last = UnixMillis(0);
    let mut packets = 0u64;
    let mut errors = 0u64;
    let started = Instant::now();
    for i in 0..count {
        // Strictly increasing timestamps: never two knocks in one millisecond.
        let now = now_ms();
        let ts = if now > last { now } else { last.plus_millis(1) };
        last = ts;
        let counter = ts.counter(params.step_seconds);
        if cached.as_ref().is_none_or(|s| s.counter != counter) {
            cached =
                Some(derive_sequence(&client.keys, params, counter).map_err(|e| e.to_string())?);
        }
        let seq = cached.as_ref().ok_or("no sequence")?;
        let dest = to[(i as usize) % to.len()];
        let udp = match dest {
            IpAddr::V4(_) => &udp4,
            IpAddr::V6(_) => udp6.as_ref().ok_or("no IPv6 socket")?,
        };
        let mut syns = Vec::new();
        for k in &seq.knocks {
            let sa = SocketAddr::new(dest, k.port);
            let r = match k.proto {
                Proto::Udp => udp.send_to(&[], sa).map(|_| ()),
                Proto::Tcp => syn(sa).map(|s| syns.push(s)),
            };
            match r {
                Ok(()) => packets += 1,
                Err(_) => errors += 1,
            }
        }
        let mut random = [0u8; 16];
        sesame_keys::fill_random(&mut random);
        let request = Request {
            timestamp: ts,
            random,
            services: Vec::new(),
            address: (!allow.is_empty()).then(|| allow[(i as usize) % allow.len()]),
            action: None,
            flags: 0,
        };
        let datagram = build_payload(
            &client.keys,
            counter,
            &request,
            &sesame_keys::PrivateKey::generate(),
            &sesame_proto::wire::WireNoise::default(),
        )
        .map_err(|e| e.to_string())?;
        match udp.send_to(&datagram, SocketAddr::new(dest, seq.payload_port)) {
            Ok(_) => packets += 1,
            Err(_) => errors += 1,
        }
        drop(syns);
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "mode": "knock",
            "knocks": count,
            "packets": packets,
            "errors": errors,
            "seconds": seconds,
            "last_timestamp_ms": last.0,
        })
    );
    Ok(())
}

fn syn(dest: SocketAddr) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    match sock.connect(&dest.into()) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(sock),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};

    fn checksum_ok(frame: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let net = p.net.as_ref().unwrap();
        match (net, p.transport.as_ref().unwrap()) {
            (etherparse::NetSlice::Ipv4(ip), TransportSlice::Udp(u)) => {
                let h = u.to_header();
                h.calc_checksum_ipv4(&ip.header().to_header(), u.payload())
                    .unwrap()
                    == h.checksum
            }
            (etherparse::NetSlice::Ipv6(ip), TransportSlice::Udp(u)) => {
                let h = u.to_header();
                h.calc_checksum_ipv6(&ip.header().to_header(), u.payload())
                    .unwrap()
                    == h.checksum
            }
            (etherparse::NetSlice::Ipv4(ip), TransportSlice::Tcp(t)) => {
                let h = t.to_header();
                h.calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .unwrap()
                    == h.checksum
            }
            (etherparse::NetSlice::Ipv6(ip), TransportSlice::Tcp(t)) => {
                let h = t.to_header();
                h.calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                    .unwrap()
                    == h.checksum
            }
            _ => false,
        }
    }

    #[test]
    fn patched_ports_keep_checksums_valid() {
        let mut rng = Rng(7);
        let v4 = (
            IpAddr::V4(Ipv4Addr::new(198, 19, 3, 4)),
            IpAddr::V4(Ipv4Addr::new(198, 19, 1, 1)),
        );
        let v6 = (
            IpAddr::V6("2001:db8:ffff::7".parse().unwrap()),
            IpAddr::V6("2001:db8:1:a::1".parse().unwrap()),
        );
        let mut buf = [0u8; SLOT];
        for (src, dst) in [v4, v6] {
            let data: Vec<u8> = (0..DATAGRAM_LEN as u8).collect();
            for l4 in [
                L4::Udp(0),
                L4::Udp(13),
                L4::Udp(DATAGRAM_LEN),
                L4::UdpData(&data),
                L4::UdpBase64(180),
                L4::Syn,
            ] {
                let t = Template::build([2; 6], [4; 6], src, dst, l4, &mut rng).unwrap();
                for _ in 0..2000 {
                    let port = rng.next() as u16;
                    let n = t.emit(&mut buf, port);
                    assert!(checksum_ok(&buf[..n]), "bad checksum for port {port}");
                    let p = SlicedPacket::from_ethernet(&buf[..n]).unwrap();
                    let dport = match p.transport.unwrap() {
                        TransportSlice::Udp(u) => {
                            if let L4::UdpData(d) = l4 {
                                assert_eq!(u.payload(), d, "replayed bytes are sent as they are");
                            }
                            if let L4::UdpBase64(len) = l4 {
                                assert_eq!(u.payload().len(), len);
                                assert!(
                                    u.payload()
                                        .iter()
                                        .all(|b| b.is_ascii_alphanumeric() || b"+/".contains(b)),
                                    "base64 alphabet only"
                                );
                            }
                            u.destination_port()
                        }
                        TransportSlice::Tcp(t) => t.destination_port(),
                        _ => unreachable!(),
                    };
                    assert_eq!(dport, port);
                }
            }
        }
    }

    #[test]
    fn replay_datagram_from_hex() {
        assert_eq!(parse_hex("00ff7a").unwrap(), vec![0, 255, 0x7a]);
        assert!(parse_hex("0").is_err());
        assert!(parse_hex("zz").is_err());
        let args = |v: &[&str]| {
            Args::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>(), FLAGS).unwrap()
        };
        assert_eq!(
            replay_datagram(&args(&["--hex", "0102", "--port", "20001"])).unwrap(),
            (vec![1, 2], 20001)
        );
        assert!(replay_datagram(&args(&["--hex", "0102"])).is_err());
        assert!(replay_datagram(&args(&[])).is_err());
    }

    #[test]
    fn rng_below_stays_in_range() {
        let mut r = Rng(1);
        for n in [1u32, 2, 3, 2000, 65536] {
            for _ in 0..1000 {
                assert!(r.below(n) < n);
            }
        }
    }
}
