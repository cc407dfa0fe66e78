//! The payload datagram (PROTOCOL.md, "Payload datagram").
//!
//! ```text
//! datagram  = E (32) || ciphertext (120 + 16) || mac (16) || padding (0..=56)  = 184..=240 bytes
//! plaintext = version (1) || flags (1) || timestamp_ms (8) || random (16)
//!             || count (1) || services (8 x 3) || family (1) || address (16)
//!             || action (16) || argument (32) || zero (4)
//! ```
//!
//! `E` is the ephemeral public key with its most significant bit (which X25519 ignores) set at
//! random, and the padding is random bytes of random length outside the authenticated part, so
//! no bit and no length of the datagram is constant.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use ring::hmac;
use sesame_keys::{PrivateKey, PublicKey};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kdf::{ClientKeys, hkdf_sha256};
use crate::service::{Proto, Service};
use crate::time::{TimeWindow, UnixMillis};

/// Protocol version carried inside the plaintext and bound into the AEAD key.
pub(crate) const PROTOCOL_VERSION: u8 = 2;
/// Length of the ephemeral public key at the start of the datagram.
pub(crate) const EPHEMERAL_LEN: usize = 32;
/// Length of the random field of the plaintext.
pub(crate) const RANDOM_LEN: usize = 16;
/// Most services one payload can ask for.
pub const MAX_SERVICES: usize = 8;
/// Length of the address field of the plaintext.
pub(crate) const ADDRESS_LEN: usize = 16;
/// Length of the action name field of the plaintext.
pub(crate) const ACTION_LEN: usize = 16;
/// Length of the action argument field of the plaintext.
pub const ARGUMENT_LEN: usize = 32;
/// Length of the plaintext.
pub const PLAINTEXT_LEN: usize = 120;
/// Length of the Poly1305 tag.
pub(crate) const TAG_LEN: usize = 16;
/// Length of the truncated HMAC-SHA256 gate at the end of the datagram.
pub const MAC_LEN: usize = 16;
/// Length of the ciphertext (plaintext and tag).
pub(crate) const CIPHERTEXT_LEN: usize = PLAINTEXT_LEN + TAG_LEN;
/// Length of the authenticated part of a payload datagram (the shortest datagram).
pub const DATAGRAM_LEN: usize = EPHEMERAL_LEN + CIPHERTEXT_LEN + MAC_LEN;
/// Most random padding bytes after the authenticated part.
pub const MAX_PADDING: usize = 56;
/// Length of the longest payload datagram.
pub const MAX_DATAGRAM_LEN: usize = DATAGRAM_LEN + MAX_PADDING;
/// Where the gate MAC starts.
pub const MAC_OFFSET: usize = DATAGRAM_LEN - MAC_LEN;
/// Flag bits defined by version 2 (none): any other bit set is refused.
pub(crate) const FLAGS_KNOWN: u8 = 0;

const OFF_VERSION: usize = 0;
const OFF_FLAGS: usize = 1;
const OFF_TIMESTAMP: usize = 2;
const OFF_RANDOM: usize = 10;
const OFF_COUNT: usize = 26;
const OFF_SERVICES: usize = 27;
const SERVICE_LEN: usize = 3;
const OFF_FAMILY: usize = OFF_SERVICES + MAX_SERVICES * SERVICE_LEN; // 51
const OFF_ADDRESS: usize = OFF_FAMILY + 1; // 52
const OFF_ACTION: usize = OFF_ADDRESS + ADDRESS_LEN; // 68
const OFF_ARGUMENT: usize = OFF_ACTION + ACTION_LEN; // 84
const OFF_PADDING: usize = OFF_ARGUMENT + ARGUMENT_LEN; // 116

const FAMILY_NONE: u8 = 0;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

pub(crate) const LABEL_MAC: &[u8] = b"sesame v2 mac";
pub(crate) const LABEL_AEAD: &[u8] = b"sesame v2 aead";

const _: () = assert!(OFF_PADDING + 4 == PLAINTEXT_LEN);
const _: () = assert!(DATAGRAM_LEN == 184);

/// A named server action the payload asks to run, with its optional argument.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Action {
    /// The action's name: 1 to 16 characters of `a-z`, `0-9`, `_` and `-`.
    pub name: String,
    /// Its argument: 0 to 32 printable ASCII characters (`!` to `~`); empty for none.
    pub argument: String,
}

impl Action {
    /// Checks the name and argument against the wire format's character sets and lengths.
    pub fn new(name: &str, argument: &str) -> Result<Self, BuildError> {
        if !is_action_name(name.as_bytes()) {
            return Err(BuildError::ActionName);
        }
        if !is_action_argument(argument.as_bytes()) {
            return Err(BuildError::ActionArgument);
        }
        Ok(Action {
            name: name.to_owned(),
            argument: argument.to_owned(),
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.argument.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{} {}", self.name, self.argument)
        }
    }
}

/// Whether `b` is a valid action name: 1..=16 bytes of `a-z 0-9 _ -`.
pub fn is_action_name(b: &[u8]) -> bool {
    (1..=ACTION_LEN).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Whether `b` is a valid action argument: 0..=32 bytes of printable ASCII without space.
pub fn is_action_argument(b: &[u8]) -> bool {
    b.len() <= ARGUMENT_LEN && b.iter().all(|&c| (0x21..=0x7e).contains(&c))
}

/// The bytes of a datagram that only disguise it: the top bit of `E` and the padding. They
/// come from the caller's random generator (this crate reads none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireNoise {
    /// The most significant bit of `E` on the wire (X25519 ignores it).
    pub high_bit: bool,
    /// Padding after the MAC, at most [`MAX_PADDING`] bytes.
    pub padding: Vec<u8>,
}

impl WireNoise {
    /// Noise from 64 random bytes: bit 0 of byte 0 is the high bit; the padding length is the
    /// first of bytes 1..8 below 228 (the largest multiple of 57 under 256), modulo
    /// `MAX_PADDING + 1`, so every length is equally likely (byte 7 is taken whatever it is
    /// when all seven are at or above 228, a chance of 1 in 5 million); bytes 8.. are the
    /// padding.
    pub fn from_random(bytes: &[u8; 64]) -> Self {
        let n = MAX_PADDING + 1;
        let limit = 256 - 256 % n;
        let pick = bytes[1..8]
            .iter()
            .copied()
            .find(|b| usize::from(*b) < limit)
            .unwrap_or(bytes[7]);
        let len = usize::from(pick) % n;
        WireNoise {
            high_bit: bytes[0] & 1 == 1,
            padding: bytes[8..8 + len].to_vec(),
        }
    }
}

/// What a payload asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// When the client built the payload (its clock, with any configured offset).
    pub timestamp: UnixMillis,
    /// 16 random bytes: two payloads never encrypt the same plaintext.
    pub random: [u8; RANDOM_LEN],
    /// Services to open (at most [`MAX_SERVICES`]); empty means every service the client
    /// is allowed.
    pub services: Vec<Service>,
    /// Address to open; `None` means the packet's source address.
    pub address: Option<IpAddr>,
    /// A server action to run; with an action, an empty `services` list opens nothing.
    pub action: Option<Action>,
    /// Flag bits; version 2 defines none.
    pub flags: u8,
}

/// Why a payload datagram was refused (by [`Opener::open`] or [`decode_plaintext`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The datagram is shorter than [`DATAGRAM_LEN`].
    #[error("truncated payload ({len} bytes, expected at least {DATAGRAM_LEN})")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// The datagram is longer than [`MAX_DATAGRAM_LEN`].
    #[error("oversized payload ({len} bytes, expected at most {MAX_DATAGRAM_LEN})")]
    TooLong {
        /// Bytes received.
        len: usize,
    },
    /// The datagram's time step is outside the skew window around now (stale or future
    /// timestamp).
    #[error("stale timestamp: step {counter} is {offset_steps:+} steps from now")]
    Stale {
        /// The counter the datagram was tried with.
        counter: u64,
        /// Its distance from the current counter, in steps.
        offset_steps: i64,
    },
    /// The cheap MAC gate failed: not this client, not this step, or damaged.
    #[error("bad mac")]
    BadMac,
    /// The ephemeral key is a low-order point.
    #[error("bad ephemeral key (non-contributory)")]
    BadEphemeral,
    /// The AEAD tag did not verify.
    #[error("bad aead tag")]
    BadAead,
    /// The plaintext's version byte is not one this implementation speaks.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// A plaintext field is out of its allowed values.
    #[error("malformed payload field: {0}")]
    Malformed(&'static str),
    /// The timestamp does not fall in the time step the datagram was sent for.
    #[error("timestamp does not match the knock's time step")]
    CounterMismatch,
}

impl RejectReason {
    /// A short, stable identifier for logs and metrics (`bad_mac`, `stale`, ...).
    pub const fn code(&self) -> &'static str {
        match self {
            RejectReason::Truncated { .. } => "truncated",
            RejectReason::TooLong { .. } => "too_long",
            RejectReason::Stale { .. } => "stale",
            RejectReason::BadMac => "bad_mac",
            RejectReason::BadEphemeral => "bad_ephemeral",
            RejectReason::BadAead => "bad_aead",
            RejectReason::BadVersion(_) => "bad_version",
            RejectReason::Malformed(_) => "malformed",
            RejectReason::CounterMismatch => "counter_mismatch",
        }
    }
}

/// Why a payload could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// More than [`MAX_SERVICES`] services were requested.
    #[error("at most {MAX_SERVICES} services fit in one payload, {0} requested")]
    TooManyServices(usize),
    /// Flag bits that version 1 does not define were set.
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// A service has port 0.
    #[error("port 0 cannot be requested")]
    PortZero,
    /// An action name is empty, too long or has characters outside `a-z 0-9 _ -`.
    #[error("an action name is 1 to 16 characters of a-z, 0-9, _ and -")]
    ActionName,
    /// An action argument is too long or has characters outside printable ASCII.
    #[error("an action argument is at most 32 printable ASCII characters, without spaces")]
    ActionArgument,
    /// More padding than [`MAX_PADDING`] bytes.
    #[error("at most {MAX_PADDING} bytes of padding")]
    Padding,
    /// The server public key is a low-order point.
    #[error("server public key is a low-order point")]
    BadServerKey,
}

/// Encodes the plaintext of a payload.
pub fn encode_plaintext(req: &Request) -> Result<[u8; PLAINTEXT_LEN], BuildError> {
    if req.services.len() > MAX_SERVICES {
        return Err(BuildError::TooManyServices(req.services.len()));
    }
    if req.flags & !FLAGS_KNOWN != 0 {
        return Err(BuildError::UnknownFlags(req.flags));
    }
    let mut out = [0u8; PLAINTEXT_LEN];
    out[OFF_VERSION] = PROTOCOL_VERSION;
    out[OFF_FLAGS] = req.flags;
    out[OFF_TIMESTAMP..OFF_RANDOM].copy_from_slice(&req.timestamp.0.to_be_bytes());
    out[OFF_RANDOM..OFF_COUNT].copy_from_slice(&req.random);
    out[OFF_COUNT] = req.services.len() as u8;
    for (i, s) in req.services.iter().enumerate() {
        if s.port == 0 {
            return Err(BuildError::PortZero);
        }
        let o = OFF_SERVICES + i * SERVICE_LEN;
        out[o] = s.proto.number();
        out[o + 1..o + 3].copy_from_slice(&s.port.to_be_bytes());
    }
    match req.address {
        None => out[OFF_FAMILY] = FAMILY_NONE,
        Some(IpAddr::V4(a)) => {
            out[OFF_FAMILY] = FAMILY_V4;
            out[OFF_ADDRESS..OFF_ADDRESS + 4].copy_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            out[OFF_FAMILY] = FAMILY_V6;
            out[OFF_ADDRESS..OFF_ACTION].copy_from_slice(&a.octets());
        }
    }
    if let Some(action) = &req.action {
        let (name, arg) = (action.name.as_bytes(), action.argument.as_bytes());
        if !is_action_name(name) {
            return Err(BuildError::ActionName);
        }
        if !is_action_argument(arg) {
            return Err(BuildError::ActionArgument);
        }
        out[OFF_ACTION..OFF_ACTION + name.len()].copy_from_slice(name);
        out[OFF_ARGUMENT..OFF_ARGUMENT + arg.len()].copy_from_slice(arg);
    }
    Ok(out)
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// The text of a NUL-padded field: the bytes before the first zero, if every byte after it is
/// zero too.
fn nul_padded(field: &[u8]) -> Option<&[u8]> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    all_zero(&field[end..]).then_some(&field[..end])
}

/// Decodes a plaintext. Strict: every reserved or unused byte must be zero. Never panics.
pub fn decode_plaintext(pt: &[u8]) -> Result<Request, RejectReason> {
    if pt.len() < PLAINTEXT_LEN {
        return Err(RejectReason::Truncated { len: pt.len() });
    }
    if pt.len() > PLAINTEXT_LEN {
        return Err(RejectReason::TooLong { len: pt.len() });
    }
    if pt[OFF_VERSION] != PROTOCOL_VERSION {
        return Err(RejectReason::BadVersion(pt[OFF_VERSION]));
    }
    let flags = pt[OFF_FLAGS];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(RejectReason::Malformed("flags"));
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&pt[OFF_TIMESTAMP..OFF_RANDOM]);
    let mut random = [0u8; RANDOM_LEN];
    random.copy_from_slice(&pt[OFF_RANDOM..OFF_COUNT]);
    let count = usize::from(pt[OFF_COUNT]);
    if count > MAX_SERVICES {
        return Err(RejectReason::Malformed("service count"));
    }
    let mut services = Vec::with_capacity(count);
    for (i, entry) in pt[OFF_SERVICES..OFF_FAMILY]
        .chunks_exact(SERVICE_LEN)
        .enumerate()
    {
        if i >= count {
            if !all_zero(entry) {
                return Err(RejectReason::Malformed("unused service entry"));
            }
            continue;
        }
        let proto =
            Proto::from_number(entry[0]).ok_or(RejectReason::Malformed("service protocol"))?;
        let port = u16::from_be_bytes([entry[1], entry[2]]);
        if port == 0 {
            return Err(RejectReason::Malformed("service port"));
        }
        services.push(Service { proto, port });
    }
    let addr = &pt[OFF_ADDRESS..OFF_ACTION];
    let address = match pt[OFF_FAMILY] {
        FAMILY_NONE if all_zero(addr) => None,
        FAMILY_V4 if all_zero(&addr[4..]) => Some(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        FAMILY_V6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(addr);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        FAMILY_NONE | FAMILY_V4 => return Err(RejectReason::Malformed("address padding")),
        _ => return Err(RejectReason::Malformed("address family")),
    };
    let name =
        nul_padded(&pt[OFF_ACTION..OFF_ARGUMENT]).ok_or(RejectReason::Malformed("action"))?;
    let arg =
        nul_padded(&pt[OFF_ARGUMENT..OFF_PADDING]).ok_or(RejectReason::Malformed("argument"))?;
    let action = if name.is_empty() {
        if !arg.is_empty() {
            return Err(RejectReason::Malformed("argument"));
        }
        None
    } else {
        if !is_action_name(name) {
            return Err(RejectReason::Malformed("action"));
        }
        if !is_action_argument(arg) {
            return Err(RejectReason::Malformed("argument"));
        }
        // Both are ASCII, checked above.
        Some(Action {
            name: String::from_utf8_lossy(name).into_owned(),
            argument: String::from_utf8_lossy(arg).into_owned(),
        })
    };
    if !all_zero(&pt[OFF_PADDING..]) {
        return Err(RejectReason::Malformed("padding"));
    }
    Ok(Request {
        timestamp: UnixMillis(u64::from_be_bytes(ts)),
        random,
        services,
        address,
        action,
        flags,
    })
}

/// The AEAD key of one datagram: HKDF(salt = k_pay, ikm = X25519(e, S),
/// info = "sesame v2 aead" || version || counter || E).
fn aead_key(keys: &ClientKeys, dh: &[u8; 32], counter: u64, eph: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(
        &keys.payload[..],
        dh,
        &[LABEL_AEAD, &[PROTOCOL_VERSION], &counter.to_be_bytes(), eph],
        &mut key[..],
    );
    key
}

/// Additional data of the AEAD: version || counter || E.
fn aead_aad(counter: u64, eph: &[u8; 32]) -> [u8; 41] {
    let mut aad = [0u8; 41];
    aad[0] = PROTOCOL_VERSION;
    aad[1..9].copy_from_slice(&counter.to_be_bytes());
    aad[9..].copy_from_slice(eph);
    aad
}

/// The gate: HMAC-SHA256(k_mac, "sesame v2 mac" || counter || E || ciphertext || tag), first
/// 16 bytes.
fn gate_mac(keys: &ClientKeys, counter: u64, covered: &[u8]) -> [u8; MAC_LEN] {
    let mut ctx = hmac::Context::with_key(&keys.mac);
    ctx.update(LABEL_MAC);
    ctx.update(&counter.to_be_bytes());
    ctx.update(covered);
    let tag = ctx.sign();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    out
}

/// The gate MAC a datagram carries (bytes 168..184), or `None` if it is too short. It
/// identifies the datagram: the replay caches key on it.
pub fn carried_mac(datagram: &[u8]) -> Option<[u8; MAC_LEN]> {
    let mac = datagram.get(MAC_OFFSET..DATAGRAM_LEN)?;
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(mac);
    Some(out)
}

const NONCE: [u8; 12] = [0u8; 12];

/// Builds the payload datagram for `request` at `counter`, with the given ephemeral key (a
/// fresh [`PrivateKey::generate`] for every datagram; fixed only in test vectors) and wire
/// noise ([`WireNoise::from_random`]; [`WireNoise::default`] gives the plain 184 bytes).
pub fn build_payload(
    keys: &ClientKeys,
    counter: u64,
    request: &Request,
    ephemeral: &PrivateKey,
    noise: &WireNoise,
) -> Result<Vec<u8>, BuildError> {
    if noise.padding.len() > MAX_PADDING {
        return Err(BuildError::Padding);
    }
    let plaintext = Zeroizing::new(encode_plaintext(request)?);
    let core = seal(keys, counter, &plaintext, ephemeral, noise.high_bit)?;
    let mut out = Vec::with_capacity(DATAGRAM_LEN + noise.padding.len());
    out.extend_from_slice(&core);
    out.extend_from_slice(&noise.padding);
    Ok(out)
}

/// Encrypts an encoded plaintext and appends the gate MAC.
pub(crate) fn seal(
    keys: &ClientKeys,
    counter: u64,
    plaintext: &[u8; PLAINTEXT_LEN],
    ephemeral: &PrivateKey,
    high_bit: bool,
) -> Result<[u8; DATAGRAM_LEN], BuildError> {
    let mut eph = *ephemeral.public_key().as_bytes();
    // X25519 public keys never set bit 255; a random one hides that E is a public key.
    eph[31] = (eph[31] & 0x7f) | if high_bit { 0x80 } else { 0 };
    let dh = ephemeral
        .diffie_hellman(keys.server_public())
        .map_err(|_| BuildError::BadServerKey)?;
    let key = aead_key(keys, dh.expose_bytes(), counter, &eph);
    let cipher = ChaCha20Poly1305::new((&*key).into());
    let mut out = [0u8; DATAGRAM_LEN];
    out[..EPHEMERAL_LEN].copy_from_slice(&eph);
    let body = &mut out[EPHEMERAL_LEN..EPHEMERAL_LEN + PLAINTEXT_LEN];
    body.copy_from_slice(plaintext);
    // Encrypting into a buffer of the right size cannot fail.
    #[allow(clippy::expect_used)]
    let tag = cipher
        .encrypt_in_place_detached(&NONCE.into(), &aead_aad(counter, &eph), body)
        .expect("ChaCha20-Poly1305 encryption of 120 bytes");
    out[EPHEMERAL_LEN + PLAINTEXT_LEN..MAC_OFFSET].copy_from_slice(tag.as_slice());
    remac(keys, counter, &mut out);
    Ok(out)
}

/// Recomputes the gate MAC of a datagram in place.
pub(crate) fn remac(keys: &ClientKeys, counter: u64, datagram: &mut [u8; DATAGRAM_LEN]) {
    let mac = gate_mac(keys, counter, &datagram[..MAC_OFFSET]);
    datagram[MAC_OFFSET..].copy_from_slice(&mac);
}

/// The server side: opens payload datagrams with the server's private key.
pub struct Opener {
    server_key: PrivateKey,
    window: TimeWindow,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("server_public", &self.server_key.public_key())
            .field("window", &self.window)
            .finish()
    }
}

impl Opener {
    /// An opener for the server key, accepting counters within `window` of now.
    pub fn new(server_key: PrivateKey, window: TimeWindow) -> Self {
        Opener { server_key, window }
    }

    /// The acceptance window.
    pub fn window(&self) -> TimeWindow {
        self.window
    }

    /// The length and window checks: everything that is checked before any key is used.
    pub(crate) fn check_window(
        &self,
        now: UnixMillis,
        counter: u64,
        datagram: &[u8],
    ) -> Result<(), RejectReason> {
        check_len(datagram)?;
        if !self.window.contains(now, counter) {
            let current = now.counter(self.window.step_seconds);
            return Err(RejectReason::Stale {
                counter,
                offset_steps: (counter as i128 - current as i128)
                    .clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            });
        }
        Ok(())
    }

    /// The length and window checks and the MAC gate: everything that is checked before any
    /// X25519 work. Constant time in the MAC comparison.
    pub fn check_gate(
        &self,
        now: UnixMillis,
        keys: &ClientKeys,
        counter: u64,
        datagram: &[u8],
    ) -> Result<(), RejectReason> {
        self.check_window(now, counter, datagram)?;
        self.check_mac(keys, counter, datagram)
    }

    /// The MAC gate alone, for a datagram that passed [`Opener::check_window`].
    pub(crate) fn check_mac(
        &self,
        keys: &ClientKeys,
        counter: u64,
        datagram: &[u8],
    ) -> Result<(), RejectReason> {
        check_len(datagram)?;
        #[cfg(fuzzing)]
        if crate::fuzzing::crypto_bypassed() {
            return Ok(());
        }
        let expected = gate_mac(keys, counter, &datagram[..MAC_OFFSET]);
        if bool::from(expected.ct_eq(&datagram[MAC_OFFSET..DATAGRAM_LEN])) {
            Ok(())
        } else {
            Err(RejectReason::BadMac)
        }
    }

    /// Opens a payload datagram sent by the client of `keys` for `counter`: the gate first,
    /// then X25519, the AEAD, the plaintext codec and the timestamp/step check.
    ///
    /// Replay protection is the caller's job: it needs persistent state.
    pub fn open(
        &self,
        now: UnixMillis,
        keys: &ClientKeys,
        counter: u64,
        datagram: &[u8],
    ) -> Result<Request, RejectReason> {
        self.check_gate(now, keys, counter, datagram)?;
        self.open_after_gate(keys, counter, datagram)
    }

    /// The steps after the gate (X25519, AEAD, decoding, step check), for a datagram that
    /// passed [`Opener::check_gate`] with the same keys and counter.
    pub(crate) fn open_after_gate(
        &self,
        keys: &ClientKeys,
        counter: u64,
        datagram: &[u8],
    ) -> Result<Request, RejectReason> {
        check_len(datagram)?;
        #[cfg(fuzzing)]
        if crate::fuzzing::crypto_bypassed() {
            return self.after_aead(
                counter,
                &datagram[EPHEMERAL_LEN..EPHEMERAL_LEN + PLAINTEXT_LEN],
            );
        }
        let mut eph = [0u8; EPHEMERAL_LEN];
        eph.copy_from_slice(&datagram[..EPHEMERAL_LEN]);
        // X25519 masks bit 255 of E (RFC 7748 section 5); the labels use E as sent.
        let dh = self
            .server_key
            .diffie_hellman(&PublicKey::from_bytes(eph))
            .map_err(|_| RejectReason::BadEphemeral)?;
        let key = aead_key(keys, dh.expose_bytes(), counter, &eph);
        let cipher = ChaCha20Poly1305::new((&*key).into());
        let mut buf = Zeroizing::new([0u8; PLAINTEXT_LEN]);
        buf.copy_from_slice(&datagram[EPHEMERAL_LEN..EPHEMERAL_LEN + PLAINTEXT_LEN]);
        let tag = &datagram[EPHEMERAL_LEN + PLAINTEXT_LEN..MAC_OFFSET];
        cipher
            .decrypt_in_place_detached(
                &NONCE.into(),
                &aead_aad(counter, &eph),
                &mut buf[..],
                tag.into(),
            )
            .map_err(|_| RejectReason::BadAead)?;
        self.after_aead(counter, &buf[..])
    }

    /// The steps after the AEAD: decoding the plaintext and the step check.
    fn after_aead(&self, counter: u64, plaintext: &[u8]) -> Result<Request, RejectReason> {
        let request = decode_plaintext(plaintext)?;
        check_timestamp(&request, counter, self.window.step_seconds)?;
        Ok(request)
    }
}

/// A payload datagram is [`DATAGRAM_LEN`] to [`MAX_DATAGRAM_LEN`] bytes.
pub(crate) fn check_len(datagram: &[u8]) -> Result<(), RejectReason> {
    match datagram.len() {
        DATAGRAM_LEN..=MAX_DATAGRAM_LEN => Ok(()),
        len if len < DATAGRAM_LEN => Err(RejectReason::Truncated { len }),
        len => Err(RejectReason::TooLong { len }),
    }
}

/// Whether a UDP datagram of this length may be a payload.
pub fn is_payload_len(len: usize) -> bool {
    (DATAGRAM_LEN..=MAX_DATAGRAM_LEN).contains(&len)
}

/// The timestamp must fall inside the time step the datagram was built for.
pub(crate) fn check_timestamp(
    request: &Request,
    counter: u64,
    step_seconds: u32,
) -> Result<(), RejectReason> {
    if request.timestamp.counter(step_seconds) != counter {
        return Err(RejectReason::CounterMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
