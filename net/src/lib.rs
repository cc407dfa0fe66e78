//! The client side's sockets: resolving the server's host and sending the packets of a knock
//! that [`sesame_proto::plan_knock`] built. Shared by the `sesame` CLI and the embedding
//! library (`sesame-ffi`), so both send a knock the same way.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use sesame_proto::{KnockPlan, Proto};

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

/// Why a host could not be resolved to an address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver failed (unknown name, no network).
    #[error("cannot resolve host '{host}'")]
    Lookup {
        /// The host as given.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The resolver returned no address at all.
    #[error("host '{0}' has no address")]
    NoAddress(String),
    /// The resolver returned addresses, none of the family asked for.
    #[error("host '{host}' has no {family} address")]
    NoAddressInFamily {
        /// The host as given.
        host: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
}

/// Why the packets of a knock could not all be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No UDP socket could be opened.
    #[error("cannot open a UDP socket")]
    UdpSocket(#[source] std::io::Error),
    /// A UDP datagram (knock or payload) could not be sent.
    #[error("cannot send to {dest}")]
    Udp {
        /// Its destination.
        dest: SocketAddr,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },
    /// No TCP socket could be opened for a TCP knock.
    #[error("cannot open a TCP socket")]
    TcpSocket(#[source] std::io::Error),
    /// A TCP knock (a SYN) could not be started.
    #[error("cannot send a TCP knock to {dest}")]
    Tcp {
        /// Its destination.
        dest: SocketAddr,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },
}

impl SendError {
    /// The underlying socket error.
    pub fn io_error(&self) -> &std::io::Error {
        match self {
            SendError::UdpSocket(e) | SendError::TcpSocket(e) => e,
            SendError::Udp { source, .. } | SendError::Tcp { source, .. } => source,
        }
    }
}

/// Resolves `host` (a name, an address, or an IPv6 address in brackets) to one address: the
/// first the resolver returns in `family`. Blocks for as long as the system resolver does.
pub fn resolve(host: &str, family: Family) -> Result<IpAddr, ResolveError> {
    let addrs = lookup(host)?;
    let pick = addrs.iter().copied().find(|a| match family {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    });
    match pick {
        Some(a) => Ok(a),
        None if addrs.is_empty() => Err(ResolveError::NoAddress(host.to_owned())),
        None => Err(ResolveError::NoAddressInFamily {
            host: host.to_owned(),
            family: if family == Family::V4 { "IPv4" } else { "IPv6" },
        }),
    }
}

/// Resolves `host` to one address per family, in the order the resolver returns them (with
/// glibc, the order of RFC 6724: the first is the one a program that connects, ssh say, tries
/// first). With [`Family::Any`] that is the first IPv4 and the first IPv6 address when the host
/// has both, else the one address [`resolve`] gives; with `V4` or `V6` the first of that family.
pub fn resolve_each_family(host: &str, family: Family) -> Result<Vec<IpAddr>, ResolveError> {
    if family != Family::Any {
        return resolve(host, family).map(|a| vec![a]);
    }
    let addrs = lookup(host)?;
    let mut out: Vec<IpAddr> = Vec::with_capacity(2);
    for a in addrs {
        if !out.iter().any(|o| o.is_ipv4() == a.is_ipv4()) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(ResolveError::NoAddress(host.to_owned()));
    }
    Ok(out)
}

/// Every address of `host`, in the resolver's order.
fn lookup(host: &str) -> Result<Vec<IpAddr>, ResolveError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok((bare, 0u16)
        .to_socket_addrs()
        .map_err(|source| ResolveError::Lookup {
            host: host.to_owned(),
            source,
        })?
        .map(|a| a.ip())
        .collect())
}

/// Sends the packets of a plan, in order, `delay` apart. UDP packets share one socket (so a
/// NAT maps them to one public address); TCP knocks are non-blocking connects that are
/// abandoned once the whole knock is sent (the kernel sends the SYN, nothing waits for an
/// answer).
pub fn send(plan: &KnockPlan, delay: Duration) -> Result<(), SendError> {
    let Some(first) = plan.packets.first() else {
        return Ok(());
    };
    let bind: SocketAddr = match first.dest {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let udp = UdpSocket::bind(bind).map_err(SendError::UdpSocket)?;
    // TCP sockets stay open until the knock is done, so the kernel keeps its SYN state.
    let mut pending_tcp = Vec::new();
    for (i, packet) in plan.packets.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        match packet.proto {
            Proto::Udp => {
                udp.send_to(&packet.data, packet.dest)
                    .map_err(|source| SendError::Udp {
                        dest: packet.dest,
                        source,
                    })?;
            }
            Proto::Tcp => pending_tcp.push(syn(packet.dest)?),
        }
    }
    drop(pending_tcp);
    Ok(())
}

/// Starts a non-blocking connect to `dest` (the kernel sends a SYN) and returns its socket.
fn syn(dest: SocketAddr) -> Result<socket2::Socket, SendError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))
        .map_err(SendError::TcpSocket)?;
    sock.set_nonblocking(true).map_err(SendError::TcpSocket)?;
    match sock.connect(&dest.into()) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(sock),
        Err(source) => Err(SendError::Tcp { dest, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesame_proto::knock::{Packet, PacketKind};

    #[test]
    fn addresses_resolve_to_themselves_and_families_are_checked() {
        assert_eq!(
            resolve("198.18.0.1", Family::Any).unwrap(),
            "198.18.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolve("[2001:db8::1]", Family::V6).unwrap(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let e = resolve("198.18.0.1", Family::V6).unwrap_err();
        assert_eq!(e.to_string(), "host '198.18.0.1' has no IPv6 address");
    }

    #[test]
    fn an_address_is_its_only_family() {
        let v4: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(
            resolve_each_family("198.18.0.1", Family::Any).unwrap(),
            [v4]
        );
        assert_eq!(resolve_each_family("198.18.0.1", Family::V4).unwrap(), [v4]);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            resolve_each_family("[2001:db8::1]", Family::Any).unwrap(),
            [v6]
        );
        let e = resolve_each_family("2001:db8::1", Family::V4).unwrap_err();
        assert_eq!(e.to_string(), "host '2001:db8::1' has no IPv4 address");
    }

    #[test]
    fn a_plan_arrives_in_order_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let dest = rx.local_addr().unwrap();
        let plan = KnockPlan {
            counter: 1,
            packets: (1..=3u8)
                .map(|i| Packet {
                    kind: PacketKind::Knock {
                        index: usize::from(i),
                        of: 3,
                    },
                    proto: Proto::Udp,
                    dest,
                    data: vec![i; 8 + usize::from(i)],
                })
                .collect(),
        };
        send(&plan, Duration::ZERO).unwrap();
        let mut buf = [0u8; 64];
        for i in 1..=3u8 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &vec![i; 8 + usize::from(i)][..]);
        }
    }
}
