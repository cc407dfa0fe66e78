//! Planning and sending a knock.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use anyhow::{Context, bail};
use sesame_keys::PrivateKey;
use sesame_proto::{
    ClientKeys, DATAGRAM_LEN, PayloadMode, Profile, Proto, Request, Service, UnixMillis,
    build_payload, derive_sequence,
};

/// Which address family to use when the host resolves to several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Family {
    /// The first address the resolver returns.
    #[default]
    Any,
    /// IPv4 only (`-4`).
    V4,
    /// IPv6 only (`-6`).
    V6,
}

/// Resolves the profile's host to one address.
pub fn resolve(host: &str, family: Family) -> anyhow::Result<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addrs: Vec<IpAddr> = (bare, 0u16)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve host '{host}'"))?
        .map(|a| a.ip())
        .collect();
    let pick = addrs.iter().copied().find(|a| match family {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    });
    match pick {
        Some(a) => Ok(a),
        None if addrs.is_empty() => bail!("host '{host}' has no address"),
        None => bail!(
            "host '{host}' has no {} address",
            if family == Family::V4 { "IPv4" } else { "IPv6" }
        ),
    }
}

/// What a packet of a knock is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// Knock `index` (1-based) of `of`.
    Knock {
        /// 1-based position.
        index: usize,
        /// Sequence length.
        of: usize,
    },
    /// The payload datagram.
    Payload,
}

/// One packet of a knock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Knock or payload.
    pub kind: PacketKind,
    /// UDP datagram or TCP SYN.
    pub proto: Proto,
    /// Destination.
    pub dest: SocketAddr,
    /// UDP payload bytes (empty for knocks; unused for TCP).
    pub data: Vec<u8>,
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.kind {
            PacketKind::Knock { index, of } => format!("knock {index}/{of}"),
            PacketKind::Payload => "payload".to_owned(),
        };
        let size = match self.proto {
            Proto::Tcp => "SYN".to_owned(),
            Proto::Udp => format!("{} bytes", self.data.len()),
        };
        write!(
            f,
            "{what:<11} {} {:<24} {size}",
            self.proto,
            self.dest.to_string()
        )
    }
}

/// Everything a knock sends, in order.
#[derive(Clone, Debug)]
pub struct KnockPlan {
    /// The time step.
    pub counter: u64,
    /// The packets, in sending order.
    pub packets: Vec<Packet>,
    /// Services the payload asks for (empty: all the client is allowed).
    pub services: Vec<Service>,
    /// Address the payload asks to open (`None`: the packet source).
    pub allow_ip: Option<IpAddr>,
}

/// Builds the packets of a knock at `now` to `target`.
pub fn plan(
    profile: &Profile,
    keys: &ClientKeys,
    target: IpAddr,
    now: UnixMillis,
    services: Vec<Service>,
    allow_ip: Option<IpAddr>,
) -> anyhow::Result<KnockPlan> {
    let counter = now.counter(profile.params.step_seconds);
    let seq = derive_sequence(keys, &profile.params, counter)?;
    let of = seq.knocks.len();
    let mut packets: Vec<Packet> = seq
        .knocks
        .iter()
        .enumerate()
        .map(|(i, k)| Packet {
            kind: PacketKind::Knock { index: i + 1, of },
            proto: k.proto,
            dest: SocketAddr::new(target, k.port),
            data: Vec::new(),
        })
        .collect();
    // In single-packet mode (length 0) the payload is the knock, whatever the mode says.
    if profile.payload != PayloadMode::None || of == 0 {
        let mut random = [0u8; 16];
        sesame_keys::fill_random(&mut random);
        let request = Request {
            timestamp: now,
            random,
            services: services.clone(),
            address: allow_ip,
            flags: 0,
        };
        let datagram = build_payload(keys, counter, &request, &PrivateKey::generate())?;
        debug_assert_eq!(datagram.len(), DATAGRAM_LEN);
        packets.push(Packet {
            kind: PacketKind::Payload,
            proto: Proto::Udp,
            dest: SocketAddr::new(target, seq.payload_port),
            data: datagram.to_vec(),
        });
    }
    Ok(KnockPlan {
        counter,
        packets,
        services,
        allow_ip,
    })
}

/// Sends the packets of a plan, `delay` apart. UDP packets share one socket (so a NAT maps them
/// to one public address); TCP knocks are non-blocking connects that are abandoned.
pub fn send(plan: &KnockPlan, delay: Duration) -> anyhow::Result<()> {
    let Some(first) = plan.packets.first() else {
        return Ok(());
    };
    let bind: SocketAddr = match first.dest {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    let udp = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
    // TCP sockets stay open until the knock is done, so the kernel keeps its SYN state.
    let mut pending_tcp = Vec::new();
    for (i, packet) in plan.packets.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match packet.proto {
            Proto::Udp => {
                udp.send_to(&packet.data, packet.dest)
                    .with_context(|| format!("cannot send to {}", packet.dest))?;
            }
            Proto::Tcp => pending_tcp.push(syn(packet.dest)?),
        }
    }
    drop(pending_tcp);
    Ok(())
}

fn syn(dest: SocketAddr) -> anyhow::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))
        .context("cannot open a TCP socket")?;
    sock.set_nonblocking(true)?;
    match sock.connect(&dest.into()) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(sock),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot send a TCP knock to {dest}"))),
    }
}
