//! The two STUN messages a client needs to learn its public address (RFC 8489): a Binding
//! request, and the parse of the Binding success response's (XOR-)MAPPED-ADDRESS. Pure: the
//! client sends and receives.
//!
//! ```text
//! header (20 bytes): type (2) || length (2, of the attributes) || magic cookie 0x2112A442 (4)
//!                    || transaction id (12)
//! attribute:         type (2) || length (2) || value, padded to a multiple of 4
//! XOR-MAPPED-ADDRESS (0x0020): 0 (1) || family 1 = IPv4, 2 = IPv6 (1) || port ^ 0x2112 (2)
//!                    || address ^ cookie (IPv4) or ^ (cookie || transaction id) (IPv6)
//! MAPPED-ADDRESS (0x0001): the same, not XORed (RFC 3489 servers)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_a442;
/// Length of a transaction id.
pub const TRANSACTION_ID_LEN: usize = 12;
/// Length of the message header.
pub const HEADER_LEN: usize = 20;

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_ERROR_CODE: u16 = 0x0009;

/// Why a datagram is not the Binding response we wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a STUN header, or the length field disagrees with the datagram.
    #[error("not a complete STUN message")]
    Truncated,
    /// The magic cookie or the first two bits are wrong.
    #[error("not a STUN message")]
    NotStun,
    /// A response to another request.
    #[error("a STUN response to another request")]
    OtherTransaction,
    /// The server answered with an error (the code, e.g. 400).
    #[error("the STUN server answered with error {0}")]
    ErrorResponse(u16),
    /// Some other message type.
    #[error("not a STUN Binding response (type {0:#06x})")]
    NotBindingResponse(u16),
    /// An attribute runs past the end of the message, or an address attribute is malformed.
    #[error("a malformed STUN attribute")]
    BadAttribute,
    /// A success response without a (XOR-)MAPPED-ADDRESS.
    #[error("the STUN response carries no address")]
    NoAddress,
}

/// A Binding request with the given transaction id (random, fresh for every request).
pub fn binding_request(transaction_id: &[u8; TRANSACTION_ID_LEN]) -> [u8; HEADER_LEN] {
    let mut m = [0u8; HEADER_LEN];
    m[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m[8..].copy_from_slice(transaction_id);
    m
}

/// The public address and port a Binding success response reports, checked strictly against
/// the request's transaction id. XOR-MAPPED-ADDRESS wins over MAPPED-ADDRESS. Never panics.
pub fn parse_binding_response(
    msg: &[u8],
    transaction_id: &[u8; TRANSACTION_ID_LEN],
) -> Result<SocketAddr, StunError> {
    let header = msg.get(..HEADER_LEN).ok_or(StunError::Truncated)?;
    let kind = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if kind & 0xc000 != 0 || header[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err(StunError::NotStun);
    }
    if len % 4 != 0 || msg.len() != HEADER_LEN + len {
        return Err(StunError::Truncated);
    }
    if header[8..] != transaction_id[..] {
        return Err(StunError::OtherTransaction);
    }
    let attrs = &msg[HEADER_LEN..];
    if kind == BINDING_ERROR {
        let code = find(attrs, ATTR_ERROR_CODE)?
            .filter(|v| v.len() >= 4)
            .map_or(0, |v| u16::from(v[2] & 0x7) * 100 + u16::from(v[3]));
        return Err(StunError::ErrorResponse(code));
    }
    if kind != BINDING_SUCCESS {
        return Err(StunError::NotBindingResponse(kind));
    }
    if let Some(v) = find(attrs, ATTR_XOR_MAPPED_ADDRESS)? {
        return address(v, Some(transaction_id));
    }
    if let Some(v) = find(attrs, ATTR_MAPPED_ADDRESS)? {
        return address(v, None);
    }
    Err(StunError::NoAddress)
}

/// The value of the first attribute of `kind`; an error if the attribute list is malformed
/// anywhere.
fn find(mut attrs: &[u8], kind: u16) -> Result<Option<&[u8]>, StunError> {
    let mut found = None;
    while !attrs.is_empty() {
        let head = attrs.get(..4).ok_or(StunError::BadAttribute)?;
        let t = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let padded = len.div_ceil(4) * 4;
        let value = attrs.get(4..4 + len).ok_or(StunError::BadAttribute)?;
        if found.is_none() && t == kind {
            found = Some(value);
        }
        attrs = attrs.get(4 + padded..).ok_or(StunError::BadAttribute)?;
    }
    Ok(found)
}

fn address(v: &[u8], xor: Option<&[u8; TRANSACTION_ID_LEN]>) -> Result<SocketAddr, StunError> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut mask = [0u8; 16];
    if let Some(tid) = xor {
        mask[..4].copy_from_slice(&cookie);
        mask[4..].copy_from_slice(tid);
    }
    let port = u16::from_be_bytes([
        v.get(2).copied().unwrap_or(0),
        v.get(3).copied().unwrap_or(0),
    ]) ^ u16::from_be_bytes([mask[0], mask[1]]);
    let ip = match (v.first(), v.get(1), v.len()) {
        (Some(0), Some(1), 8) => {
            let mut a = [0u8; 4];
            for (i, b) in a.iter_mut().enumerate() {
                *b = v[4 + i] ^ mask[i];
            }
            IpAddr::V4(Ipv4Addr::from(a))
        }
        (Some(0), Some(2), 20) => {
            let mut a = [0u8; 16];
            for (i, b) in a.iter_mut().enumerate() {
                *b = v[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Err(StunError::BadAttribute),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5769 section 2.2: an IPv4 response (XOR-MAPPED-ADDRESS 192.0.2.1:32853, with a
    /// SOFTWARE, a MESSAGE-INTEGRITY and a FINGERPRINT attribute, which are skipped).
    const RFC5769_V4: &str = "0101003c2112a442b7e7a701bc34d686fa87dfae\
        8022000b7465737420766563746f7220\
        002000080001a147e112a643\
        000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7\
        80280004c07d4c96";
    /// RFC 5769 section 2.3: IPv6, 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
    const RFC5769_V6: &str = "010100482112a442b7e7a701bc34d686fa87dfae\
        8022000b7465737420766563746f7220\
        002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9\
        00080014a382954e4be67bf11784c97c8292c275bfe3ed41\
        80280004c8fb0b4c";
    const TID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc5769_responses_parse() {
        assert_eq!(
            parse_binding_response(&unhex(RFC5769_V4), &TID),
            Ok("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(
            parse_binding_response(&unhex(RFC5769_V6), &TID),
            Ok("[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap())
        );
    }

    #[test]
    fn requests_have_the_cookie_and_the_id() {
        let r = binding_request(&TID);
        assert_eq!(&r[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&r[8..], &TID);
    }

    #[test]
    fn wrong_or_broken_answers_are_refused() {
        let good = unhex(RFC5769_V4);
        let mut other = TID;
        other[0] ^= 1;
        assert_eq!(
            parse_binding_response(&good, &other),
            Err(StunError::OtherTransaction)
        );
        for cut in [0, 19, 20, 40, good.len() - 1] {
            assert_eq!(
                parse_binding_response(&good[..cut], &TID),
                Err(StunError::Truncated),
                "{cut}"
            );
        }
        let mut bad = good.clone();
        bad[4] ^= 1;
        assert_eq!(parse_binding_response(&bad, &TID), Err(StunError::NotStun));
        let mut bad = good.clone();
        bad[1] = 0x11; // error response without ERROR-CODE
        assert_eq!(
            parse_binding_response(&bad, &TID),
            Err(StunError::ErrorResponse(0))
        );
        // An attribute that runs past the end.
        let mut bad = good.clone();
        bad[22..24].copy_from_slice(&0x00ffu16.to_be_bytes());
        assert_eq!(
            parse_binding_response(&bad, &TID),
            Err(StunError::BadAttribute)
        );
        // A request is not a response; a response without an address has none.
        let mut req = binding_request(&TID).to_vec();
        assert_eq!(
            parse_binding_response(&req, &TID),
            Err(StunError::NotBindingResponse(1))
        );
        req[1] = 0x01;
        req[0] = 0x01;
        assert_eq!(
            parse_binding_response(&req, &TID),
            Err(StunError::NoAddress)
        );
    }

    #[test]
    fn a_plain_mapped_address_is_accepted() {
        let mut m = binding_request(&TID).to_vec();
        m[0] = 0x01;
        m[1] = 0x01;
        m[3] = 12;
        m.extend_from_slice(&[0, 1, 0, 8, 0, 1, 0x1f, 0x90, 198, 18, 0, 9]);
        assert_eq!(
            parse_binding_response(&m, &TID),
            Ok("198.18.0.9:8080".parse().unwrap())
        );
    }
}
