//! Set elements of sesamed's nftables table over netlink, without starting `nft`.
//!
//! A grant is one nftables transaction (a netlink batch: `BATCH_BEGIN`, the element messages,
//! `BATCH_END`) sent on a fresh `NETLINK_NETFILTER` socket, and acknowledged message by message
//! by the kernel: the same transaction `nft -f` would send for the script of
//! [`crate::firewall::Nftables::grant_script`], minus the `nft` process (its start, its cache
//! dumps), which costs a few milliseconds per grant (BENCHMARKS.md). The table and its chain
//! are still built by `nft -f` (once, at start and when flushed): only the hot path is here.
//!
//! Encoding (`linux/netfilter/nf_tables.h`, `linux/netfilter/nfnetlink.h`): a `nlmsghdr`, a
//! `nfgenmsg` (family, version 0, resource id), then attributes (`nlattr`, 4-byte aligned).
//! An element of a set of type `ipv4_addr . inet_proto . inet_service` has a 12-byte key: every
//! field of a concatenation takes whole 32-bit registers (address 4 bytes, protocol 1 byte and
//! 3 of padding, port 2 bytes big-endian and 2 of padding); with `ipv6_addr` it is 24 bytes.

use std::io::{self, Read};
use std::net::IpAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// How long to wait for the kernel's acknowledgements.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// One change to a set of an `inet` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElementOp {
    /// Add the element (no error if it exists), expiring after `timeout_ms`.
    Add {
        /// Kernel timeout of the element, in milliseconds.
        timeout_ms: u64,
    },
    /// Add the element, refused with `EEXIST` if it exists: a new lease in one message, where
    /// a refresh needs a delete, and a transaction with a delete is acknowledged only after
    /// the kernel's grace period (about 10 ms more).
    Create {
        /// Kernel timeout of the element, in milliseconds.
        timeout_ms: u64,
    },
    /// Delete the element (an error if it does not exist).
    Delete,
}

/// The key of an element of a `ipv4_addr . inet_proto . inet_service` (or `ipv6_addr . …`)
/// set.
pub fn element_key(address: IpAddr, ip_proto: u8, port: u16) -> Vec<u8> {
    let mut key = match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    key.extend_from_slice(&[ip_proto, 0, 0, 0]);
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends an attribute; returns the offset of its header (to patch a nest's length).
fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) -> usize {
    let at = buf.len();
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(at + align4(len), 0);
    at
}

fn begin_nest(buf: &mut Vec<u8>, kind: u16) -> usize {
    put_attr(buf, kind | NLA_F_NESTED, &[])
}

fn end_nest(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Appends one netlink message; `body` writes its attributes.
fn put_msg(
    buf: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let at = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    body(buf);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

/// The batch applying `ops` to `key` in set `set` of table `inet table`, in order, as one
/// transaction; message `i` of `ops` has sequence number `seq + 1 + i` and asks for an ack.
pub fn batch(table: &str, set: &str, key: &[u8], ops: &[ElementOp], seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128 * (ops.len() + 2));
    let res = NFNL_SUBSYS_NFTABLES;
    put_msg(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        res,
        |_| {},
    );
    for (i, op) in ops.iter().enumerate() {
        let (kind, flags, timeout) = match op {
            ElementOp::Add { timeout_ms } => (
                NFT_MSG_NEWSETELEM,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                Some(*timeout_ms),
            ),
            ElementOp::Create { timeout_ms } => (
                NFT_MSG_NEWSETELEM,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                Some(*timeout_ms),
            ),
            ElementOp::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK, None),
        };
        put_msg(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq + 1 + i as u32,
            NFPROTO_INET,
            0,
            |b| {
                put_attr(b, NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
                put_attr(b, NFTA_SET_ELEM_LIST_SET, &cstr(set));
                let elements = begin_nest(b, NFTA_SET_ELEM_LIST_ELEMENTS);
                let element = begin_nest(b, NFTA_LIST_ELEM);
                let k = begin_nest(b, NFTA_SET_ELEM_KEY);
                put_attr(b, NFTA_DATA_VALUE, key);
                end_nest(b, k);
                if let Some(ms) = timeout {
                    put_attr(b, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
                }
                end_nest(b, element);
                end_nest(b, elements);
            },
        );
    }
    put_msg(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq + 1 + ops.len() as u32,
        0,
        res,
        |_| {},
    );
    buf
}

/// What the kernel said about the messages of a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Acks {
    /// Not every message has been acknowledged yet.
    Pending,
    /// Every message was acknowledged.
    Done,
    /// A message was refused with this errno.
    Refused(i32),
}

/// Reads the acknowledgements in one datagram from the kernel, marking `acked[i]` for the
/// message with sequence number `first + i`. Messages that are not acks of this batch are
/// skipped; a malformed datagram is an error.
pub fn read_acks(datagram: &[u8], first: u32, acked: &mut [bool]) -> io::Result<Acks> {
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        if len < 16 || len > rest.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "netlink: malformed reply",
            ));
        }
        if kind == NLMSG_ERROR {
            if len < 20 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "netlink: short error message",
                ));
            }
            let errno = i32::from_ne_bytes(rest[16..20].try_into().expect("4 bytes"));
            if let Some(slot) = seq
                .checked_sub(first)
                .and_then(|i| acked.get_mut(i as usize))
            {
                if errno != 0 {
                    return Ok(Acks::Refused(-errno));
                }
                *slot = true;
            }
        }
        rest = &rest[align4(len).min(rest.len())..];
    }
    Ok(if acked.iter().all(|a| *a) {
        Acks::Done
    } else {
        Acks::Pending
    })
}

/// Applies `ops` to one element of set `set` in table `inet table`, as one transaction, and
/// waits for the kernel to acknowledge every message. Blocking (at most [`ACK_TIMEOUT`]).
pub fn apply(table: &str, set: &str, key: &[u8], ops: &[ElementOp]) -> io::Result<()> {
    let mut tx = Transaction::send(table, set, key, ops)?;
    if tx.poll()? {
        return Ok(());
    }
    tx.wait()
}

/// A transaction sent to the kernel, whose acknowledgements are read with
/// [`Transaction::poll`] (without waiting) or [`Transaction::wait`].
///
/// The kernel processes a netfilter batch inside the `send` that hands it over (nfnetlink
/// runs in the sender's context, under the nf_tables commit lock) and queues the acks on the
/// socket before `send` returns, so for a batch that only adds an element `poll` right after
/// `send` usually finds them all; a batch with a delete is acknowledged after an RCU grace
/// period. `send` itself can wait for the commit lock as long as another process's
/// transaction holds it, so sesamed calls [`apply`] on a blocking thread, never on its packet
/// thread.
pub struct Transaction {
    socket: Socket,
    acked: Vec<bool>,
    buf: Vec<u8>,
}

/// The sequence number of the batch's `BATCH_BEGIN`; its messages follow.
const FIRST_SEQ: u32 = 1;

impl Transaction {
    /// Sends `ops` on a fresh socket (nothing from an earlier transaction can be read as an
    /// ack of this one).
    pub fn send(table: &str, set: &str, key: &[u8], ops: &[ElementOp]) -> io::Result<Self> {
        let socket = Socket::new(
            Domain::from(libc::AF_NETLINK),
            Type::from(libc::SOCK_RAW),
            Some(Protocol::from(libc::NETLINK_NETFILTER)),
        )?;
        let msg = batch(table, set, key, ops, FIRST_SEQ);
        // Unbound and unconnected: the datagram goes to the kernel (port id 0).
        let sent = socket.send(&msg)?;
        if sent != msg.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "netlink: short send",
            ));
        }
        Ok(Transaction {
            socket,
            acked: vec![false; ops.len()],
            buf: vec![0u8; 16 * 1024],
        })
    }

    /// Reads the acknowledgements already queued, without waiting: true once every message
    /// is acknowledged, an error if one was refused.
    pub fn poll(&mut self) -> io::Result<bool> {
        self.socket.set_nonblocking(true)?;
        loop {
            let n = match (&self.socket).read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            if self.take(n)? {
                return Ok(true);
            }
        }
    }

    /// Waits for the rest of the acknowledgements (at most [`ACK_TIMEOUT`] per read).
    pub fn wait(mut self) -> io::Result<()> {
        self.socket.set_nonblocking(false)?;
        self.socket.set_read_timeout(Some(ACK_TIMEOUT))?;
        loop {
            let n = (&self.socket).read(&mut self.buf).map_err(|e| {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "netlink: no acknowledgement from the kernel",
                    )
                } else {
                    e
                }
            })?;
            if self.take(n)? {
                return Ok(());
            }
        }
    }

    /// Marks the acks in the first `n` bytes of the buffer: true when all are in.
    fn take(&mut self, n: usize) -> io::Result<bool> {
        match read_acks(&self.buf[..n], FIRST_SEQ + 1, &mut self.acked)? {
            Acks::Pending => Ok(false),
            Acks::Done => Ok(true),
            Acks::Refused(errno) => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_whole_registers() {
        let k = element_key("198.18.0.2".parse().unwrap(), 6, 22);
        assert_eq!(k, [198, 18, 0, 2, 6, 0, 0, 0, 0, 22, 0, 0]);
        let k = element_key("2001:db8::2".parse().unwrap(), 17, 0x1234);
        assert_eq!(k.len(), 24);
        assert_eq!(&k[..4], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(&k[16..], &[17, 0, 0, 0, 0x12, 0x34, 0, 0]);
    }

    /// The messages of a batch, split by their headers: (type, flags, seq, body).
    fn split(buf: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
        let mut out = Vec::new();
        let mut rest = buf;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            assert!(len >= 20 && len <= rest.len() && len % 4 == 0, "len {len}");
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
            let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
            out.push((kind, flags, seq, &rest[16..len]));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn a_grant_batch_is_begin_three_element_messages_end() {
        let key = element_key("198.18.0.2".parse().unwrap(), 6, 22);
        let ops = [
            ElementOp::Add { timeout_ms: 30_000 },
            ElementOp::Delete,
            ElementOp::Add { timeout_ms: 30_000 },
        ];
        let buf = batch("sesame", "granted4", &key, &ops, 7);
        let msgs = split(&buf);
        let kinds: Vec<u16> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(kinds, [0x10, 0xa0c, 0xa0e, 0xa0c, 0x11]);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.2).collect();
        assert_eq!(seqs, [7, 8, 9, 10, 11]);
        // Batch markers name the nftables subsystem (big-endian resource id 10).
        assert_eq!(msgs[0].3, &[0, 0, 0, 10]);
        assert_eq!(msgs[0].1, NLM_F_REQUEST);
        assert_eq!(msgs[1].1, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(msgs[2].1, NLM_F_REQUEST | NLM_F_ACK);
        let add = msgs[1].3;
        assert_eq!(&add[..4], &[NFPROTO_INET, 0, 0, 0]);
        // table "sesame\0" (len 11 → padded to 12), set "granted4\0" (len 13 → 16)
        assert_eq!(&add[4..8], &[11, 0, 1, 0]);
        assert_eq!(&add[8..15], b"sesame\0");
        assert_eq!(&add[16..20], &[13, 0, 2, 0]);
        assert_eq!(&add[20..29], b"granted4\0");
        // elements nest: list elem { key { value(12) }, timeout(8) }
        let nest = &add[32..];
        let nest_len = u16::from_ne_bytes([nest[0], nest[1]]) as usize;
        assert_eq!(nest_len, nest.len());
        assert_eq!(u16::from_ne_bytes([nest[2], nest[3]]), 3 | NLA_F_NESTED);
        let elem = &nest[4..];
        assert_eq!(u16::from_ne_bytes([elem[2], elem[3]]), 1 | NLA_F_NESTED);
        let key_nest = &elem[4..];
        assert_eq!(u16::from_ne_bytes([key_nest[0], key_nest[1]]), 4 + 4 + 12);
        assert_eq!(&key_nest[8..20], key.as_slice());
        let timeout = &key_nest[20..];
        assert_eq!(u16::from_ne_bytes([timeout[0], timeout[1]]), 12);
        assert_eq!(u16::from_ne_bytes([timeout[2], timeout[3]]), 4);
        assert_eq!(&timeout[4..12], &30_000u64.to_be_bytes());
        // The delete has no timeout: 8 bytes shorter.
        assert_eq!(msgs[2].3.len() + 12, add.len());
    }

    fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        m
    }

    #[test]
    fn acks_are_matched_by_sequence_number() {
        let mut acked = [false; 3];
        let mut d = ack(8, 0);
        d.extend(ack(99, 0)); // not ours: ignored
        assert_eq!(read_acks(&d, 8, &mut acked).unwrap(), Acks::Pending);
        let d = [ack(9, 0), ack(10, 0)].concat();
        assert_eq!(read_acks(&d, 8, &mut acked).unwrap(), Acks::Done);
        let mut acked = [false; 3];
        assert_eq!(
            read_acks(&ack(9, libc::ENOENT), 8, &mut acked).unwrap(),
            Acks::Refused(libc::ENOENT)
        );
        // Truncated or lying lengths are errors, never panics.
        assert!(read_acks(&ack(8, 0)[..20], 8, &mut acked).is_err());
        let mut bad = ack(8, 0);
        bad[0] = 200;
        assert!(read_acks(&bad, 8, &mut acked).is_err());
        bad[0] = 17;
        assert!(read_acks(&bad, 8, &mut acked).is_err());
    }
}
