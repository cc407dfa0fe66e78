//! `sesame://` profile URIs: a whole profile in one line (and one QR code), for provisioning
//! phones and laptops.
//!
//! ```text
//! sesame://2/<base64url without padding of:>
//!   u8 flags            bit 0: a private key follows, bit 1: a PSK follows,
//!                       bit 2: bind_address = false,
//!                       bit 3: lease = "connection" (a client that does not know the bit
//!                       refuses the URI rather than spend its leases checking knocks)
//!   u8 n, n bytes       suggested profile name (letters, digits, '.', '_', '-')
//!   u8 n, n bytes       host
//!   32 bytes            server public key
//!   u32 be              step_seconds
//!   u8                  length
//!   u16 be, u16 be      port_range
//!   u8                  protocol: 0 udp, 1 tcp, 2 mixed
//!   u8                  payload: 0 required, 1 optional, 2 none
//!   u8 n, n x u16 be    exclude_ports
//!   u8 n, n x (u8 ip protocol, u16 be port)   open (n <= 8)
//!   u8 n, n bytes       STUN server host:port (n = 0: none)
//!   [32 bytes]          private key (flag bit 0)
//!   [32 bytes]          PSK (flag bit 1)
//! ```
//!
//! Nothing may follow. A URI with a private key or PSK is a secret: whoever holds it can knock.
//!
//! Version 2 goes with protocol 2 (the knock of sesame 0.2); a version-1 URI describes a server
//! of protocol 1 and is refused with a message saying so.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sesame_keys::{PresharedKey, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::params::{KnockParams, KnockProtocol, LeaseKind, PayloadMode};
use crate::payload::MAX_SERVICES;
use crate::profile::Profile;
use crate::service::{Proto, Service};

/// The scheme and the version this implementation writes and reads.
pub(crate) const URI_PREFIX: &str = "sesame://2/";
const FLAG_PRIVATE_KEY: u8 = 1;
const FLAG_PSK: u8 = 2;
const FLAG_NO_BIND: u8 = 4;
const FLAG_CONNECTION_LEASE: u8 = 8;
const FLAGS_KNOWN: u8 = FLAG_PRIVATE_KEY | FLAG_PSK | FLAG_NO_BIND | FLAG_CONNECTION_LEASE;

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// It does not start with `sesame://`.
    #[error("not a sesame:// URI")]
    Scheme,
    /// It is a sesame URI of another version.
    #[error("sesame URI version '{0}' is not supported (this sesame reads version 2)")]
    Version(String),
    /// It is a version-1 URI, for a server of protocol 1.
    #[error(
        "this is a version-1 URI, for a server of sesame protocol 1; this sesame speaks protocol 2: ask the server's admin for a new export (sesamed export-client --uri)"
    )]
    OldVersion,
    /// The data is not base64url.
    #[error("the URI data is not valid base64url")]
    Base64,
    /// The data ends inside a field.
    #[error("the URI is truncated (it ends inside {0})")]
    Truncated(&'static str),
    /// Bytes follow the last field.
    #[error("the URI has {0} unexpected bytes at the end")]
    Trailing(usize),
    /// A field has a value out of range.
    #[error("the URI's {0} is invalid: {1}")]
    Field(&'static str, String),
}

/// A profile as carried by a URI, with the secrets it may carry.
pub struct ProfileUri {
    /// Suggested profile name (the client's name on the server).
    pub name: String,
    /// The profile. `private_key_file` and `psk_file` are not carried: decoding sets them to
    /// `~/.config/sesame/NAME.key` / `.psk`, where `sesame import` writes the secrets.
    pub profile: Profile,
    /// The client's private key, for devices that cannot make their own.
    pub private_key: Option<PrivateKey>,
    /// The client's pre-shared key.
    pub psk: Option<PresharedKey>,
}

impl std::fmt::Debug for ProfileUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileUri")
            .field("name", &self.name)
            .field("profile", &self.profile)
            .field("private_key", &self.private_key.is_some())
            .field("psk", &self.psk.is_some())
            .finish()
    }
}

/// Whether `name` is usable as a profile or client name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn protocol_code(p: KnockProtocol) -> u8 {
    match p {
        KnockProtocol::Udp => 0,
        KnockProtocol::Tcp => 1,
        KnockProtocol::Mixed => 2,
    }
}

fn payload_code(p: PayloadMode) -> u8 {
    match p {
        PayloadMode::Required => 0,
        PayloadMode::Optional => 1,
        PayloadMode::None => 2,
    }
}

impl ProfileUri {
    /// The URI text. Panics never; fields that do not fit (a name or host over 255 bytes,
    /// more than 255 excluded ports in the range) are refused.
    pub fn encode(&self) -> Result<Zeroizing<String>, UriError> {
        let p = &self.profile;
        let mut out = Zeroizing::new(Vec::with_capacity(160));
        let mut flags = 0;
        if self.private_key.is_some() {
            flags |= FLAG_PRIVATE_KEY;
        }
        if self.psk.is_some() {
            flags |= FLAG_PSK;
        }
        if !self.profile.bind_address {
            flags |= FLAG_NO_BIND;
        }
        if self.profile.lease == LeaseKind::Connection {
            flags |= FLAG_CONNECTION_LEASE;
        }
        out.push(flags);
        for (what, text) in [("name", &self.name), ("host", &p.host)] {
            let len = u8::try_from(text.len())
                .map_err(|_| UriError::Field(what, "longer than 255 bytes".into()))?;
            out.push(len);
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(p.server_public_key.as_bytes());
        out.extend_from_slice(&p.params.step_seconds.to_be_bytes());
        out.push(p.params.length);
        out.extend_from_slice(&p.params.port_lo.to_be_bytes());
        out.extend_from_slice(&p.params.port_hi.to_be_bytes());
        out.push(protocol_code(p.params.protocol));
        out.push(payload_code(p.payload));
        let excl = p.params.exclude_ports();
        out.push(
            u8::try_from(excl.len())
                .map_err(|_| UriError::Field("exclude_ports", "more than 255 ports".into()))?,
        );
        for port in excl {
            out.extend_from_slice(&port.to_be_bytes());
        }
        if p.open.len() > MAX_SERVICES {
            return Err(UriError::Field(
                "open",
                format!("more than {MAX_SERVICES} services"),
            ));
        }
        out.push(p.open.len() as u8);
        for s in &p.open {
            out.push(s.proto.number());
            out.extend_from_slice(&s.port.to_be_bytes());
        }
        let stun = p.stun.as_deref().unwrap_or("");
        out.push(
            u8::try_from(stun.len())
                .map_err(|_| UriError::Field("stun", "longer than 255 bytes".into()))?,
        );
        out.extend_from_slice(stun.as_bytes());
        if let Some(k) = &self.private_key {
            out.extend_from_slice(k.expose_bytes());
        }
        if let Some(k) = &self.psk {
            out.extend_from_slice(k.expose_bytes());
        }
        let mut text = Zeroizing::new(String::with_capacity(
            URI_PREFIX.len() + out.len() * 4 / 3 + 4,
        ));
        text.push_str(URI_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&out[..], &mut text);
        Ok(text)
    }

    /// Parses a URI (surrounding whitespace allowed). Never panics.
    pub fn decode(text: &str) -> Result<ProfileUri, UriError> {
        let text = text.trim();
        let Some(rest) = text.strip_prefix("sesame://") else {
            return Err(UriError::Scheme);
        };
        let (version, data) = rest.split_once('/').unwrap_or((rest, ""));
        if version == "1" {
            return Err(UriError::OldVersion);
        }
        if version != "2" {
            return Err(UriError::Version(version.chars().take(16).collect()));
        }
        let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(data).map_err(|_| UriError::Base64)?);
        let mut r = Reader {
            data: &bytes,
            at: 0,
        };
        let flags = r.u8("flags")?;
        if flags & !FLAGS_KNOWN != 0 {
            return Err(UriError::Field(
                "flags",
                format!("unknown bits {flags:#04x}"),
            ));
        }
        let name = r.text("name")?;
        if !is_valid_name(&name) {
            return Err(UriError::Field(
                "name",
                format!("'{name}' is not a valid name"),
            ));
        }
        let host = r.text("host")?;
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UriError::Field("host", format!("'{host}' is not a host")));
        }
        let server_public_key = PublicKey::from_bytes(r.array32("server public key")?);
        let step = u32::from_be_bytes([r.u8("step")?, r.u8("step")?, r.u8("step")?, r.u8("step")?]);
        let length = r.u8("length")?;
        let lo = r.u16("port range")?;
        let hi = r.u16("port range")?;
        let protocol = match r.u8("protocol")? {
            0 => KnockProtocol::Udp,
            1 => KnockProtocol::Tcp,
            2 => KnockProtocol::Mixed,
            n => return Err(UriError::Field("protocol", format!("unknown code {n}"))),
        };
        let payload = match r.u8("payload mode")? {
            0 => PayloadMode::Required,
            1 => PayloadMode::Optional,
            2 => PayloadMode::None,
            n => return Err(UriError::Field("payload mode", format!("unknown code {n}"))),
        };
        let n = r.u8("exclude_ports")?;
        let mut excl = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            excl.push(r.u16("exclude_ports")?);
        }
        let params = KnockParams::new(
            step,
            u64::from(length),
            (u64::from(lo), u64::from(hi)),
            &excl,
            protocol,
        )
        .map_err(|e| UriError::Field("knock parameters", e.to_string()))?;
        let n = usize::from(r.u8("open")?);
        if n > MAX_SERVICES {
            return Err(UriError::Field(
                "open",
                format!("{n} services, at most {MAX_SERVICES}"),
            ));
        }
        let mut open = Vec::with_capacity(n);
        for _ in 0..n {
            let proto = Proto::from_number(r.u8("open")?)
                .ok_or_else(|| UriError::Field("open", "unknown protocol".into()))?;
            let port = r.u16("open")?;
            if port == 0 {
                return Err(UriError::Field("open", "port 0".into()));
            }
            open.push(Service::new(proto, port));
        }
        let stun = r.text("stun")?;
        if !stun.is_empty() && !crate::profile::is_host_port(&stun) {
            return Err(UriError::Field(
                "stun",
                format!("'{stun}' is not host:port"),
            ));
        }
        let private_key = if flags & FLAG_PRIVATE_KEY != 0 {
            Some(PrivateKey::from_bytes(r.array32("private key")?))
        } else {
            None
        };
        let psk = if flags & FLAG_PSK != 0 {
            Some(PresharedKey::from_bytes(r.array32("psk")?))
        } else {
            None
        };
        if r.at != bytes.len() {
            return Err(UriError::Trailing(bytes.len() - r.at));
        }
        let profile = Profile {
            host,
            server_public_key,
            private_key_file: PathBuf::from(format!("~/.config/sesame/{name}.key")),
            psk_file: psk
                .as_ref()
                .map(|_| PathBuf::from(format!("~/.config/sesame/{name}.psk"))),
            params,
            payload,
            open,
            stun: (!stun.is_empty()).then_some(stun),
            bind_address: flags & FLAG_NO_BIND == 0,
            lease: if flags & FLAG_CONNECTION_LEASE != 0 {
                LeaseKind::Connection
            } else {
                LeaseKind::Window
            },
        };
        Ok(ProfileUri {
            name,
            profile,
            private_key,
            psk,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], UriError> {
        let end = self.at.checked_add(n).ok_or(UriError::Truncated(what))?;
        let s = self
            .data
            .get(self.at..end)
            .ok_or(UriError::Truncated(what))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, UriError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, UriError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn array32(&mut self, what: &'static str) -> Result<[u8; 32], UriError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32, what)?);
        Ok(out)
    }
    fn text(&mut self, what: &'static str) -> Result<String, UriError> {
        let n = usize::from(self.u8(what)?);
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| UriError::Field(what, "not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secret: bool) -> ProfileUri {
        let server = PrivateKey::generate();
        ProfileUri {
            name: "phone".into(),
            profile: Profile {
                host: "vpn.example.org".into(),
                server_public_key: server.public_key(),
                private_key_file: PathBuf::from("~/.config/sesame/phone.key"),
                psk_file: secret.then(|| PathBuf::from("~/.config/sesame/phone.psk")),
                params: KnockParams::new(
                    30,
                    3,
                    (10000, 32767),
                    &[10022, 20000],
                    KnockProtocol::Mixed,
                )
                .unwrap(),
                payload: PayloadMode::Optional,
                open: vec![
                    Service::new(Proto::Tcp, 22),
                    Service::new(Proto::Udp, 51820),
                ],
                stun: secret.then(|| "stun.example.net:3478".to_owned()),
                bind_address: !secret,
                lease: if secret {
                    LeaseKind::Connection
                } else {
                    LeaseKind::Window
                },
            },
            private_key: secret.then(PrivateKey::generate),
            psk: secret.then(PresharedKey::generate),
        }
    }

    #[test]
    fn round_trip_with_and_without_secrets() {
        for secret in [false, true] {
            let u = sample(secret);
            let text = u.encode().unwrap();
            assert!(text.starts_with("sesame://2/"));
            assert!(text.len() < 240, "{} chars", text.len());
            let back = ProfileUri::decode(&text).unwrap();
            assert_eq!(back.name, u.name);
            assert_eq!(back.profile, u.profile);
            assert_eq!(back.private_key, u.private_key);
            assert_eq!(back.psk, u.psk);
        }
    }

    /// Each profile flag travels alone, in its own bit; the bits after them are refused.
    #[test]
    fn flags_round_trip_one_by_one_and_unknown_bits_are_refused() {
        let flags_of = |u: &ProfileUri| {
            let text = u.encode().unwrap();
            URL_SAFE_NO_PAD.decode(&text[URI_PREFIX.len()..]).unwrap()[0]
        };
        let mut u = sample(false);
        assert_eq!(flags_of(&u), 0);
        u.profile.lease = LeaseKind::Connection;
        assert_eq!(flags_of(&u), FLAG_CONNECTION_LEASE);
        let back = ProfileUri::decode(&u.encode().unwrap()).unwrap();
        assert_eq!(back.profile.lease, LeaseKind::Connection);
        assert!(back.profile.bind_address);
        u.profile.lease = LeaseKind::Window;
        u.profile.bind_address = false;
        assert_eq!(flags_of(&u), FLAG_NO_BIND);
        let back = ProfileUri::decode(&u.encode().unwrap()).unwrap();
        assert_eq!(back.profile.lease, LeaseKind::Window);
        assert!(!back.profile.bind_address);
        // A client that knew bits 0-2 only refuses bit 3 (lease = "connection"); this one
        // refuses bit 4 and above the same way.
        let good = sample(false).encode().unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&good[URI_PREFIX.len()..]).unwrap();
        for bit in 4..8 {
            bytes[0] = 1 << bit;
            let e = ProfileUri::decode(&format!("{URI_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes)))
                .unwrap_err();
            assert!(
                matches!(&e, UriError::Field("flags", m) if m.contains("unknown bits")),
                "{e}"
            );
        }
    }

    #[test]
    fn malformed_uris_get_clear_errors() {
        let good = sample(false).encode().unwrap().to_string();
        assert_eq!(
            ProfileUri::decode("https://x").unwrap_err(),
            UriError::Scheme
        );
        assert!(
            matches!(ProfileUri::decode("sesame://3/AAAA"), Err(UriError::Version(v)) if v == "3")
        );
        assert_eq!(
            ProfileUri::decode("sesame://1/AAAA").unwrap_err(),
            UriError::OldVersion
        );
        assert_eq!(
            ProfileUri::decode("sesame://2/!!!").unwrap_err(),
            UriError::Base64
        );
        for cut in [12, 20, 40, good.len() - 3] {
            let e = ProfileUri::decode(&good[..cut]).unwrap_err();
            assert!(
                matches!(
                    e,
                    UriError::Truncated(_) | UriError::Base64 | UriError::Field(..)
                ),
                "{cut}: {e}"
            );
        }
        let mut bytes = URL_SAFE_NO_PAD
            .decode(&good["sesame://2/".len()..])
            .unwrap();
        bytes.push(0);
        let e = ProfileUri::decode(&format!("sesame://2/{}", URL_SAFE_NO_PAD.encode(&bytes)))
            .unwrap_err();
        assert_eq!(e, UriError::Trailing(1));
        for e in [
            UriError::Scheme,
            UriError::Base64,
            UriError::Truncated("host"),
            UriError::Trailing(1),
        ] {
            assert!(!e.to_string().contains('\n'));
        }
    }

    /// Random data, and valid URIs with bits changed: decoding never panics, and what decodes
    /// encodes to a URI of the same profile. (This test used to decode `sesame://1/` URIs, which are
    /// refused by their version before any byte is read.)
    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut x = 1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let check = |bytes: &[u8]| {
            let text = format!("{URI_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
            if let Ok(u) = ProfileUri::decode(&text) {
                // Not always the same bytes (an excluded port outside the range is dropped),
                // but the same profile.
                let back = ProfileUri::decode(&u.encode().unwrap()).unwrap();
                assert_eq!(back.name, u.name);
                assert_eq!(back.profile, u.profile);
                assert_eq!(back.private_key, u.private_key);
                assert_eq!(back.psk, u.psk);
            }
        };
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            check(&bytes);
        }
        let mut decoded = 0;
        for secret in [false, true] {
            let mut u = sample(secret);
            u.profile.lease = LeaseKind::Connection;
            let good = u.encode().unwrap();
            let good = URL_SAFE_NO_PAD.decode(&good[URI_PREFIX.len()..]).unwrap();
            for _ in 0..2000 {
                let mut bytes = good.clone();
                for _ in 0..=next() % 3 {
                    let at = (next() % bytes.len() as u64) as usize;
                    // Small changes mostly, so that many still decode.
                    bytes[at] ^= 1 << (next() % 8);
                }
                check(&bytes);
                decoded += usize::from(
                    ProfileUri::decode(&format!("{URI_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes)))
                        .is_ok(),
                );
            }
        }
        assert!(decoded > 100, "{decoded} of 4000 changed URIs decoded");
    }

    // What a mutation run of uri.rs found unpinned (docs/TESTING.md).

    #[test]
    fn names_are_1_to_64_bytes_of_letters_digits_dot_underscore_dash_not_starting_with_a_dot() {
        let longest = "a".repeat(64);
        for ok in ["phone", "laptop-1.home_x", longest.as_str()] {
            assert!(is_valid_name(ok), "{ok}");
        }
        let too_long = "a".repeat(65);
        for bad in ["", ".hidden", "a b", "caf\u{e9}", too_long.as_str()] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_profile_with_the_most_services_round_trips_and_one_more_is_refused() {
        let mut u = sample(false);
        u.profile.open = (1..=MAX_SERVICES as u16)
            .map(|p| Service::new(Proto::Tcp, p))
            .collect();
        let text = u.encode().unwrap();
        assert_eq!(
            ProfileUri::decode(&text).unwrap().profile.open,
            u.profile.open
        );
        u.profile.open.push(Service::new(Proto::Tcp, 9999));
        assert!(matches!(u.encode(), Err(UriError::Field("open", _))));
    }

    #[test]
    fn a_uri_whose_host_is_empty_or_has_a_space_or_a_control_character_is_refused() {
        for host in ["", "vpn example.org", "vpn\u{7}.example.org"] {
            let mut u = sample(false);
            u.profile.host = host.into();
            let text = u.encode().unwrap();
            assert!(
                matches!(ProfileUri::decode(&text), Err(UriError::Field("host", _))),
                "{host:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_counted() {
        let good = sample(false).encode().unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&good[URI_PREFIX.len()..]).unwrap();
        bytes.extend_from_slice(&[0, 0, 0]);
        let e = ProfileUri::decode(&format!("{URI_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes)))
            .unwrap_err();
        assert_eq!(e, UriError::Trailing(3));
    }
}
