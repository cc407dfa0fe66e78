//! A reader for the pcap files tcpdump writes (classic format, either byte order, micro- or
//! nanosecond timestamps; Ethernet, Linux cooked v1/v2 and raw IP link types). The file's
//! records are read here; etherparse parses each frame's link, IP and transport headers.

use std::net::IpAddr;
use std::path::Path;

use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};

/// The transport part of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A UDP datagram (payload trimmed to the UDP length).
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Payload bytes.
        payload: Vec<u8>,
    },
    /// A TCP segment.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
        flags: u8,
    },
    /// ICMP (v4) or ICMPv6, with its type.
    Icmp {
        /// ICMPv6 rather than ICMP.
        v6: bool,
        /// The type byte.
        kind: u8,
    },
    /// Any other IP protocol, or a fragment.
    Other(u8),
}

/// TCP SYN flag.
pub const SYN: u8 = 0x02;
/// TCP ACK flag.
pub const ACK: u8 = 0x10;
/// TCP RST flag.
pub const RST: u8 = 0x04;

/// One IP packet of a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport.
    pub l4: L4,
}

impl Packet {
    /// True for a TCP segment with SYN and without ACK.
    pub fn is_syn(&self) -> bool {
        matches!(self.l4, L4::Tcp { flags, .. } if flags & SYN != 0 && flags & ACK == 0)
    }

    /// True for IPv6 neighbour discovery and multicast listener messages, which the kernel
    /// sends on its own (router/neighbour solicitation and advertisement, redirect, MLD).
    pub fn is_link_control(&self) -> bool {
        matches!(self.l4, L4::Icmp { v6: true, kind } if matches!(kind, 130..=137 | 143))
    }
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.l4 {
            L4::Udp {
                sport,
                dport,
                payload,
            } => write!(
                f,
                "udp {} port {sport} -> {} port {dport} ({} bytes)",
                self.src,
                self.dst,
                payload.len()
            ),
            L4::Tcp {
                sport,
                dport,
                flags,
            } => write!(
                f,
                "tcp {} port {sport} -> {} port {dport} flags {flags:#04x}",
                self.src, self.dst
            ),
            L4::Icmp { v6, kind } => write!(
                f,
                "icmp{} type {kind} {} -> {}",
                if *v6 { "v6" } else { "" },
                self.src,
                self.dst
            ),
            L4::Other(p) => write!(f, "ip proto {p} {} -> {}", self.src, self.dst),
        }
    }
}

/// Reads a pcap file; frames that are not IPv4 or IPv6 (ARP, …) are skipped.
pub fn read_file(path: &Path) -> Result<Vec<Packet>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    parse(&bytes)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Parses a pcap file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Vec<Packet>, String> {
    if bytes.len() < 24 {
        return Err(format!(
            "{} bytes: too short for a pcap header",
            bytes.len()
        ));
    }
    let magic: [u8; 4] = bytes[0..4].try_into().map_err(|_| "header")?;
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let linktype = u32_at(20).ok_or("header")? & 0xffff;
    let mut out = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let incl = u32_at(at + 8).ok_or("truncated record header")? as usize;
        let start = at + 16;
        let frame = bytes.get(start..start + incl).ok_or("truncated record")?;
        at = start + incl;
        let packet = match linktype {
            // Ethernet, with optional 802.1Q/802.1ad tags.
            1 => LaxSlicedPacket::from_ethernet(frame).ok(),
            // Linux cooked capture v1: protocol at 14, 16-byte header.
            113 => cooked(frame, 14, 16),
            // Linux cooked capture v2: protocol at 0, 20-byte header.
            276 => cooked(frame, 0, 20),
            // Raw IP.
            12 | 101 | 228 | 229 => LaxSlicedPacket::from_ip(frame).ok(),
            other => return Err(format!("unsupported link type {other}")),
        };
        if let Some(p) = packet.as_ref().and_then(from_sliced) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The packet after a Linux cooked capture header of `len` bytes whose protocol (an
/// EtherType) is at `protocol_at`.
fn cooked(frame: &[u8], protocol_at: usize, len: usize) -> Option<LaxSlicedPacket<'_>> {
    let ether_type = u16_at(frame, protocol_at)?;
    Some(LaxSlicedPacket::from_ether_type(
        EtherType(ether_type),
        frame.get(len..)?,
    ))
}

/// Parses an IPv4 or IPv6 packet.
pub fn parse_ip(ip: &[u8]) -> Option<Packet> {
    from_sliced(&LaxSlicedPacket::from_ip(ip).ok()?)
}

/// The [`Packet`] of an IPv4 or IPv6 packet that etherparse has split into its headers:
/// `None` for anything else (ARP, …) and for a TCP, UDP or ICMP packet whose transport header
/// does not parse. A fragment (any, the first too) is [`L4::Other`] with its protocol.
fn from_sliced(sliced: &LaxSlicedPacket<'_>) -> Option<Packet> {
    let (src, dst, payload) = match sliced.net.as_ref()? {
        LaxNetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload(),
        ),
        LaxNetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload(),
        ),
        LaxNetSlice::Arp(_) => return None,
    };
    let proto = payload.ip_number;
    let l4 = if payload.fragmented {
        L4::Other(proto.0)
    } else {
        match &sliced.transport {
            Some(TransportSlice::Udp(u)) => L4::Udp {
                sport: u.source_port(),
                dport: u.destination_port(),
                payload: u.payload().to_vec(),
            },
            Some(TransportSlice::Tcp(t)) => L4::Tcp {
                sport: t.source_port(),
                dport: t.destination_port(),
                flags: [
                    t.fin(),
                    t.syn(),
                    t.rst(),
                    t.psh(),
                    t.ack(),
                    t.urg(),
                    t.ece(),
                    t.cwr(),
                ]
                .iter()
                .enumerate()
                .fold(0, |f, (bit, &set)| f | (u8::from(set) << bit)),
            },
            Some(TransportSlice::Icmpv4(i)) => L4::Icmp {
                v6: false,
                kind: i.type_u8(),
            },
            Some(TransportSlice::Icmpv6(i)) => L4::Icmp {
                v6: true,
                kind: i.type_u8(),
            },
            None if matches!(
                proto,
                IpNumber::TCP | IpNumber::UDP | IpNumber::ICMP | IpNumber::IPV6_ICMP
            ) =>
            {
                return None;
            }
            None => L4::Other(proto.0),
        }
    };
    Some(Packet { src, dst, l4 })
}

#[cfg(test)]
mod tests {
    use super::{L4, Packet, parse};
    use etherparse::PacketBuilder;
    use std::net::IpAddr;

    /// A pcap file (little-endian, microseconds) of `frames` with link type `linktype`.
    fn file(linktype: u32, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&65535u32.to_le_bytes());
        f.extend_from_slice(&linktype.to_le_bytes());
        for frame in frames {
            let len = u32::try_from(frame.len()).unwrap().to_le_bytes();
            f.extend_from_slice(&[0; 8]);
            f.extend_from_slice(&len);
            f.extend_from_slice(&len);
            f.extend_from_slice(frame);
        }
        f
    }

    #[test]
    fn reads_udp_tcp_icmp_over_every_link_type() {
        let (a4, b4) = ([198, 18, 1, 2], [198, 18, 1, 1]);
        let mut a6 = [0u8; 16];
        a6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let mut b6 = a6;
        a6[15] = 2;
        b6[15] = 1;
        let eth = || PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let write = |b: etherparse::PacketBuilderStep<etherparse::UdpHeader>, p: &[u8]| {
            let mut v = Vec::new();
            b.write(&mut v, p).unwrap();
            v
        };
        let udp4 = write(eth().ipv4(a4, b4, 64).udp(40000, 20001), b"knock");
        let udp6 = write(eth().ipv6(a6, b6, 64).udp(40001, 20002), b"six");
        let mut tcp4 = Vec::new();
        eth()
            .ipv4(a4, b4, 64)
            .tcp(40002, 22, 1, 1024)
            .syn()
            .write(&mut tcp4, &[])
            .unwrap();
        let mut rst6 = Vec::new();
        eth()
            .ipv6(b6, a6, 64)
            .tcp(22, 40003, 1, 1024)
            .rst()
            .ack(5)
            .write(&mut rst6, &[])
            .unwrap();
        let mut echo4 = Vec::new();
        eth()
            .ipv4(a4, b4, 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut echo4, b"ping")
            .unwrap();
        let mut ns6 = Vec::new();
        eth()
            .ipv6(a6, b6, 255)
            .icmpv6(etherparse::Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0; 4],
            })
            .write(&mut ns6, &[0; 16])
            .unwrap();
        // An 802.1Q-tagged copy of the UDP frame, and an ARP frame (skipped).
        let mut tagged = udp4[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&udp4[12..]);
        let mut arp = udp4[..12].to_vec();
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        // The same UDP packet as a later IPv4 fragment: reported as protocol 17, no ports.
        let mut frag = udp4.clone();
        frag[14 + 6..14 + 8].copy_from_slice(&[0x00, 0x10]);

        let packets = parse(&file(
            1,
            &[
                udp4.clone(),
                udp6,
                tcp4,
                rst6.clone(),
                echo4,
                ns6,
                tagged,
                arp,
                frag,
            ],
        ))
        .unwrap();
        let v4 = |a: [u8; 4]| IpAddr::from(a);
        let v6 = |a: [u8; 16]| IpAddr::from(a);
        let udp = |sport, dport, payload: &[u8]| L4::Udp {
            sport,
            dport,
            payload: payload.to_vec(),
        };
        let knock = Packet {
            src: v4(a4),
            dst: v4(b4),
            l4: udp(40000, 20001, b"knock"),
        };
        assert_eq!(
            packets,
            vec![
                knock.clone(),
                Packet {
                    src: v6(a6),
                    dst: v6(b6),
                    l4: udp(40001, 20002, b"six")
                },
                Packet {
                    src: v4(a4),
                    dst: v4(b4),
                    l4: L4::Tcp {
                        sport: 40002,
                        dport: 22,
                        flags: 0x02
                    }
                },
                Packet {
                    src: v6(b6),
                    dst: v6(a6),
                    l4: L4::Tcp {
                        sport: 22,
                        dport: 40003,
                        flags: 0x14
                    }
                },
                Packet {
                    src: v4(a4),
                    dst: v4(b4),
                    l4: L4::Icmp { v6: false, kind: 8 }
                },
                Packet {
                    src: v6(a6),
                    dst: v6(b6),
                    l4: L4::Icmp {
                        v6: true,
                        kind: 135
                    }
                },
                knock.clone(),
                Packet {
                    src: v4(a4),
                    dst: v4(b4),
                    l4: L4::Other(17)
                },
            ]
        );
        assert!(packets[2].is_syn() && !packets[3].is_syn());
        assert!(packets[5].is_link_control() && !packets[4].is_link_control());

        // Linux cooked v1 and v2 headers, raw IP, big-endian files.
        let ip = &udp4[14..];
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(ip);
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(ip);
        assert_eq!(parse(&file(113, &[sll])).unwrap(), vec![knock.clone()]);
        assert_eq!(parse(&file(276, &[sll2])).unwrap(), vec![knock.clone()]);
        assert_eq!(
            parse(&file(101, &[ip.to_vec()])).unwrap(),
            vec![knock.clone()]
        );
        let mut big = file(101, &[ip.to_vec()]);
        for at in [0, 4, 6, 16, 20, 24 + 8, 24 + 12] {
            let w = if at == 4 || at == 6 { 2 } else { 4 };
            big[at..at + w].reverse();
        }
        assert_eq!(parse(&big).unwrap(), vec![knock]);
        assert!(parse(&file(999, &[ip.to_vec()])).is_err());
        assert!(parse(&[0; 10]).is_err());
        assert!(parse(&[0; 24]).is_err());
    }
}
