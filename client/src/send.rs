//! Sending a knock's packets: on Linux, a knock of UDP datagrams sent without a delay leaves in
//! one `sendmmsg` call.
//!
//! Why: the datagrams of a knock are sent from one socket, in order. Sent one `sendto` at a
//! time, each return to user space between two datagrams is a point where the client can lose
//! its CPU, for instance to the server it knocks on when that server shares the machine, or
//! to whatever else is runnable on a busy one; the rest of the knock then waits for the CPU
//! (measured: `sesame-netbench`'s breakdown, BENCHMARKS.md "A tail as good as the median").
//! One `sendmmsg` hands the kernel every datagram at once: the same datagrams, to the same
//! destinations, from the same socket and source port, in the same order, back to back.
//!
//! Everything else (TCP or mixed knocks, `--delay-ms`, other systems) goes through
//! [`sesame_net::send`], as before.

use std::time::Duration;

use sesame_net::SendError;

use crate::knock::KnockPlan;

/// Sends the packets of `plan` in order, `delay` apart (see the module's documentation).
/// Errors are [`sesame_net::send`]'s: the first datagram that could not be sent is named.
pub fn knock(plan: &KnockPlan, delay: Duration) -> Result<(), SendError> {
    #[cfg(target_os = "linux")]
    if delay.is_zero()
        && !plan.packets.is_empty()
        && plan
            .packets
            .iter()
            .all(|p| p.proto == sesame_proto::Proto::Udp)
    {
        return linux::send_all(plan);
    }
    sesame_net::send(plan, delay)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::IoSlice;
    use std::net::{SocketAddr, UdpSocket};

    use rustix::io::Errno;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
    use sesame_net::SendError;

    use crate::knock::KnockPlan;

    /// Every datagram of `plan` (all UDP, at least one), from one socket bound like
    /// [`sesame_net::send`]'s, with as few `sendmmsg` calls as the kernel allows (one: it
    /// returns early only on an error, which the next call then reports).
    pub(super) fn send_all(plan: &KnockPlan) -> Result<(), SendError> {
        let packets = &plan.packets;
        let bind: SocketAddr = match packets.first().map(|p| p.dest) {
            Some(SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let udp = UdpSocket::bind(bind).map_err(SendError::UdpSocket)?;
        let addrs: Vec<SocketAddrAny> = packets.iter().map(|p| p.dest.into()).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = packets.iter().map(|p| [IoSlice::new(&p.data)]).collect();
        let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = packets
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut msgs: Vec<MMsgHdr<'_>> = addrs
            .iter()
            .zip(&iovs)
            .zip(controls.iter_mut())
            .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
            .collect();
        let mut sent = 0;
        while let Some(rest) = msgs.get_mut(sent..).filter(|r| !r.is_empty()) {
            let dest = packets[sent].dest;
            match sendmmsg(&udp, rest, SendFlags::NOSIGNAL) {
                Ok(0) => {
                    return Err(SendError::Udp {
                        dest,
                        source: std::io::ErrorKind::WriteZero.into(),
                    });
                }
                Ok(n) => sent += n,
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(SendError::Udp {
                        dest,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::net::{SocketAddr, UdpSocket};

    use super::*;
    use crate::knock::{Packet, PacketKind};
    use sesame_proto::Proto;

    fn udp(index: usize, of: usize, dest: SocketAddr, data: &[u8]) -> Packet {
        Packet {
            kind: if index > of {
                PacketKind::Payload
            } else {
                PacketKind::Knock { index, of }
            },
            proto: Proto::Udp,
            dest,
            data: data.to_vec(),
        }
    }

    /// The datagrams of a knock arrive whole, in order, from one source port: at several
    /// destinations (one receiving socket per port, as a knock's ports differ), and with an
    /// empty body as well as a full one.
    #[test]
    fn a_udp_knock_arrives_in_order_from_one_source_port() {
        for ip in ["127.0.0.1", "::1"] {
            let Ok(a) = UdpSocket::bind((ip, 0)) else {
                continue; // no IPv6 loopback here
            };
            let b = UdpSocket::bind((ip, 0)).unwrap();
            for s in [&a, &b] {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            }
            let (da, db) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let payload = vec![7u8; 238];
            let plan = KnockPlan {
                counter: 1,
                packets: vec![
                    udp(1, 3, da, b"one"),
                    udp(2, 3, db, b""),
                    udp(3, 3, da, b"three"),
                    udp(4, 3, db, &payload),
                ],
            };
            knock(&plan, Duration::ZERO).unwrap();
            let mut buf = [0u8; 512];
            let mut from = Vec::new();
            for (sock, want) in [
                (&a, &b"one"[..]),
                (&a, &b"three"[..]),
                (&b, &b""[..]),
                (&b, &payload[..]),
            ] {
                let (n, src) = sock.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], want, "{ip}");
                from.push(src);
            }
            assert!(from.iter().all(|s| *s == from[0]), "{from:?}");
        }
    }

    /// A datagram that cannot be sent is named in the error, as with one `sendto` each.
    #[test]
    fn an_unsendable_datagram_is_named() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let ok = sink.local_addr().unwrap();
        // Too long for one UDP datagram: EMSGSIZE on the second message.
        let plan = KnockPlan {
            counter: 1,
            packets: vec![udp(1, 1, ok, b"x"), udp(2, 1, ok, &vec![0u8; 70_000])],
        };
        let e = knock(&plan, Duration::ZERO).unwrap_err();
        assert_eq!(e.to_string(), format!("cannot send to {ok}"));
        assert!(matches!(e, SendError::Udp { dest, .. } if dest == ok));
    }
}
