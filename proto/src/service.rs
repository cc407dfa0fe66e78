//! Services: a transport protocol and a port, written `tcp/22` or `udp/51820`.

use std::fmt;
use std::str::FromStr;

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IANA IP protocol number (6 or 17), as used on the wire.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// From an IANA IP protocol number.
    pub(crate) const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    /// `"tcp"` or `"udp"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service to open: protocol and port, written `tcp/22`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Service {
    /// Transport protocol.
    pub proto: Proto,
    /// Port (1..=65535).
    pub port: u16,
}

impl Service {
    /// A service from its parts.
    pub const fn new(proto: Proto, port: u16) -> Self {
        Service { proto, port }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto, self.port)
    }
}

/// Why a `proto/port` text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceParseError {
    /// The text is not of the form `proto/port`.
    #[error("'{0}' is not a service: expected PROTO/PORT, e.g. tcp/22")]
    Form(String),
    /// The protocol is neither `tcp` nor `udp`.
    #[error("'{0}': protocol must be tcp or udp")]
    Proto(String),
    /// The port is not a number in 1..=65535.
    #[error("'{0}': port must be a number from 1 to 65535")]
    Port(String),
}

impl FromStr for Service {
    type Err = ServiceParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, port) = s
            .split_once('/')
            .ok_or_else(|| ServiceParseError::Form(s.to_owned()))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(ServiceParseError::Proto(s.to_owned())),
        };
        // Digits only: no sign, no whitespace, no leading '+'.
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ServiceParseError::Port(s.to_owned()));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| ServiceParseError::Port(s.to_owned()))?;
        if port == 0 {
            return Err(ServiceParseError::Port(s.to_owned()));
        }
        Ok(Service { proto, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let s: Service = "tcp/22".parse().unwrap();
        assert_eq!(s, Service::new(Proto::Tcp, 22));
        assert_eq!(s.to_string(), "tcp/22");
        assert_eq!(
            "udp/65535".parse::<Service>().unwrap(),
            Service::new(Proto::Udp, 65535)
        );
        for bad in [
            "",
            "tcp",
            "tcp/",
            "tcp/0",
            "tcp/65536",
            "sctp/1",
            "TCP/22",
            "tcp/+22",
            "tcp/ 22",
            "tcp/22/",
            "/22",
        ] {
            assert!(bad.parse::<Service>().is_err(), "{bad}");
        }
    }
}
