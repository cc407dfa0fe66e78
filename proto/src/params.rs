//! Knock parameters shared by a server and its clients.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest knock sequence (number of knock packets before the payload).
pub const MAX_LENGTH: u8 = 16;
/// The longest time step in seconds (one day).
pub(crate) const MAX_STEP_SECONDS: u32 = 86_400;

/// Which transport the knock packets use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KnockProtocol {
    /// Every knock is a UDP datagram.
    #[default]
    Udp,
    /// Every knock is a TCP SYN.
    Tcp,
    /// Each position's transport is derived from the sequence key.
    Mixed,
}

impl KnockProtocol {
    /// `"udp"`, `"tcp"` or `"mixed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            KnockProtocol::Udp => "udp",
            KnockProtocol::Tcp => "tcp",
            KnockProtocol::Mixed => "mixed",
        }
    }
}

impl fmt::Display for KnockProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KnockProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "udp" => Ok(KnockProtocol::Udp),
            "tcp" => Ok(KnockProtocol::Tcp),
            "mixed" => Ok(KnockProtocol::Mixed),
            _ => Err(format!("'{s}': expected udp, tcp or mixed")),
        }
    }
}

/// Whether a completed sequence must be followed by an encrypted payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMode {
    /// A valid payload must follow the sequence; it names the services and address.
    #[default]
    Required,
    /// The sequence alone opens the client's `allow` list; a payload may narrow it.
    Optional,
    /// No payload: the sequence alone opens.
    None,
}

impl PayloadMode {
    /// `"required"`, `"optional"` or `"none"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PayloadMode::Required => "required",
            PayloadMode::Optional => "optional",
            PayloadMode::None => "none",
        }
    }
}

impl fmt::Display for PayloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a lease admits (`[firewall] lease` on the server, `lease` in a client's profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LeaseKind {
    /// New connections from the address, until the lease ends.
    #[default]
    Window,
    /// New connections until the first one is made (nftables: ended in the kernel by that
    /// connection's first packet); the connection lives on through conntrack. A client must
    /// then make no connection of its own to check that a knock worked: it would use the
    /// lease up.
    Connection,
}

impl LeaseKind {
    /// `"window"` or `"connection"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Window => "window",
            LeaseKind::Connection => "connection",
        }
    }
}

impl fmt::Display for LeaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parameters a client and a server must agree on to derive the same sequences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnockParams {
    /// Length of a time step in seconds.
    pub step_seconds: u32,
    /// Number of knock packets before the payload (0 = single-packet mode).
    pub length: u8,
    /// Lowest port of the knock range (inclusive).
    pub port_lo: u16,
    /// Highest port of the knock range (inclusive).
    pub port_hi: u16,
    /// Ports inside the range that are never used (sorted, no duplicates).
    exclude_ports: Vec<u16>,
    /// Transport of the knock packets.
    pub protocol: KnockProtocol,
}

/// Why a set of knock parameters was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// `step_seconds` is zero or longer than a day.
    #[error("step_seconds must be between 1 and {MAX_STEP_SECONDS}, found {0}")]
    Step(u32),
    /// `length` is 1 or larger than [`MAX_LENGTH`]. A single knock would be the whole
    /// sequence, which the tracker does not complete from one packet (it forms candidates from a
    /// source's second packet), so it is refused rather than silently never opening.
    #[error("length must be 0 (single-packet mode) or between 2 and {MAX_LENGTH}, found {0}")]
    Length(u64),
    /// `port_range` is empty, reversed or includes port 0.
    #[error("port_range [{0}, {1}] is invalid: need 1 <= lo <= hi <= 65535")]
    Range(u64, u64),
    /// Too few usable ports in the range for the sequence.
    #[error(
        "port_range [{lo}, {hi}] has {available} usable ports (after exclude_ports); a sequence of length {length} needs at least {needed} and at least half of the range usable"
    )]
    RangeTooSmall {
        /// Low end.
        lo: u16,
        /// High end.
        hi: u16,
        /// Usable ports.
        available: u32,
        /// Configured length.
        length: u8,
        /// Usable ports needed.
        needed: u32,
    },
}

impl KnockParams {
    /// Builds and validates parameters. Excluded ports outside the range are ignored.
    pub fn new(
        step_seconds: u32,
        length: u64,
        port_range: (u64, u64),
        exclude_ports: &[u16],
        protocol: KnockProtocol,
    ) -> Result<Self, ParamsError> {
        if step_seconds == 0 || step_seconds > MAX_STEP_SECONDS {
            return Err(ParamsError::Step(step_seconds));
        }
        if length == 1 || length > u64::from(MAX_LENGTH) {
            return Err(ParamsError::Length(length));
        }
        let (lo, hi) = port_range;
        if lo == 0 || lo > hi || hi > 65535 {
            return Err(ParamsError::Range(lo, hi));
        }
        let (lo, hi) = (lo as u16, hi as u16);
        let length = length as u8;
        let mut excl: Vec<u16> = exclude_ports
            .iter()
            .copied()
            .filter(|p| (lo..=hi).contains(p))
            .collect();
        excl.sort_unstable();
        excl.dedup();
        let size = u32::from(hi) - u32::from(lo) + 1;
        let available = size - excl.len() as u32;
        // At least twice the ports the sequence uses, and at least half of the range usable, so
        // rejection sampling needs few draws (see PROTOCOL.md, "Port sequence").
        let needed = 2 * (u32::from(length) + 1);
        if available < needed || available * 2 < size {
            return Err(ParamsError::RangeTooSmall {
                lo,
                hi,
                available,
                length,
                needed,
            });
        }
        Ok(KnockParams {
            step_seconds,
            length,
            port_lo: lo,
            port_hi: hi,
            exclude_ports: excl,
            protocol,
        })
    }

    /// The excluded ports inside the range, sorted.
    pub fn exclude_ports(&self) -> &[u16] {
        &self.exclude_ports
    }

    /// Whether `port` is inside the knock range (excluded ports are not).
    #[inline]
    pub fn in_range(&self, port: u16) -> bool {
        (self.port_lo..=self.port_hi).contains(&port) && !self.is_excluded(port)
    }

    /// Whether `port` is one of the excluded ports.
    pub(crate) fn is_excluded(&self, port: u16) -> bool {
        self.exclude_ports.binary_search(&port).is_ok()
    }

    /// Number of ports in the range, excluded ones included.
    pub fn range_size(&self) -> u32 {
        u32::from(self.port_hi) - u32::from(self.port_lo) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(KnockParams::new(30, 3, (10000, 10007), &[], KnockProtocol::Udp).is_ok());
        assert!(matches!(
            KnockParams::new(30, 3, (10000, 10006), &[], KnockProtocol::Udp),
            Err(ParamsError::RangeTooSmall { .. })
        ));
        assert!(matches!(
            KnockParams::new(
                30,
                3,
                (10000, 10009),
                &[10000, 10001, 10002],
                KnockProtocol::Udp
            ),
            Err(ParamsError::RangeTooSmall { available: 7, .. })
        ));
        assert_eq!(
            KnockParams::new(0, 3, (1, 100), &[], KnockProtocol::Udp),
            Err(ParamsError::Step(0))
        );
        assert_eq!(
            KnockParams::new(30, 17, (1, 100), &[], KnockProtocol::Udp),
            Err(ParamsError::Length(17))
        );
        // A one-knock sequence is refused (it would never complete by itself).
        assert_eq!(
            KnockParams::new(30, 1, (1, 100), &[], KnockProtocol::Udp),
            Err(ParamsError::Length(1))
        );
        for length in [0, 2, 16] {
            assert!(KnockParams::new(30, length, (1, 100), &[], KnockProtocol::Udp).is_ok());
        }
        assert_eq!(
            KnockParams::new(30, 3, (0, 100), &[], KnockProtocol::Udp),
            Err(ParamsError::Range(0, 100))
        );
        assert_eq!(
            KnockParams::new(30, 3, (100, 99), &[], KnockProtocol::Udp),
            Err(ParamsError::Range(100, 99))
        );
        assert_eq!(
            KnockParams::new(30, 3, (100, 65536), &[], KnockProtocol::Udp),
            Err(ParamsError::Range(100, 65536))
        );
        let p =
            KnockParams::new(30, 0, (1, 65535), &[22, 22, 443, 1], KnockProtocol::Mixed).unwrap();
        assert_eq!(p.exclude_ports(), &[1, 22, 443]);
        assert!(!p.in_range(22) && p.in_range(23));
    }
}
