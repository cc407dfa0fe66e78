//! X25519 key types and key files for sesame.
//!
//! Keys use the same text format as WireGuard: 32 bytes in standard base64 with padding
//! (44 characters). `sesame genkey | sesame pubkey` and `wg genkey | wg pubkey` agree.
//!
//! Secret types ([`PrivateKey`], [`PresharedKey`], [`SharedSecret`]) never print their bytes,
//! are zeroized on drop, and compare in constant time.
//!
//! The key types, their text form and X25519 build on every target. Key files (created 0600,
//! refused when group or others can access them, read without following links or blocking on
//! a FIFO when asked) are unix-only and sit behind the default feature `files`: a crate that
//! keeps keys elsewhere (the protocol crate, the embedding library, whose apps keep keys in the
//! Android Keystore or the iOS Keychain) depends on this one with `default-features = false`.
#![forbid(unsafe_code)]

#[cfg(all(feature = "files", not(unix)))]
compile_error!(
    "sesame-keys: the `files` feature (key files with unix permissions) needs a unix target; \
     build with `default-features = false` for the key types alone"
);

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

#[cfg(all(feature = "files", unix))]
mod files;
#[cfg(all(feature = "files", unix))]
pub use files::{
    KeyFileError, Links, SECRET_FILE_FORBIDDEN_MODE, mode_is_too_open, read_private_key_file,
    read_private_key_file_with, read_psk_file, read_psk_file_with, read_public_key_file,
    read_secret_file, read_secret_file_with, write_private_key_file, write_secret_file,
};

/// Length of every key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key in its base64 text form.
pub const KEY_TEXT_LEN: usize = 44;

/// Why a key's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text (after trailing whitespace is removed) is empty.
    #[error("key is empty")]
    Empty,
    /// The text starts with whitespace; only trailing whitespace is allowed.
    #[error("key starts with whitespace")]
    LeadingWhitespace,
    /// The text is not 44 characters long.
    #[error("key must be {KEY_TEXT_LEN} base64 characters (32 bytes), found {found} characters")]
    WrongLength {
        /// Number of characters found (after trailing whitespace is removed).
        found: usize,
    },
    /// The text is not canonical standard base64 (bad character, padding or trailing bits).
    #[error("key is not valid base64 of 32 bytes: {0}")]
    Base64(String),
}

/// Why a Diffie-Hellman exchange was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    /// The peer key is a low-order point, so the shared secret would be all zeros.
    #[error("peer public key is a low-order point (non-contributory key exchange)")]
    NonContributory,
}

/// The characters allowed after a key: ASCII space, TAB, LF and CR (PROTOCOL.md section 2.1).
pub const TRAILING_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// Decodes 32 bytes from strict WireGuard-style base64.
fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    if text.starts_with(char::is_whitespace) {
        return Err(KeyError::LeadingWhitespace);
    }
    let text = text.trim_end_matches(TRAILING_WHITESPACE);
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    let found = text.chars().count();
    if found != KEY_TEXT_LEN {
        return Err(KeyError::WrongLength { found });
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // 44 characters decode to at most 33 bytes; the slice must come back with exactly 32.
    let mut buf = Zeroizing::new([0u8; KEY_LEN + 3]);
    let n = STANDARD
        .decode_slice(text.as_bytes(), &mut buf[..])
        .map_err(|e| KeyError::Base64(describe_base64_error(&e)))?;
    if n != KEY_LEN {
        return Err(KeyError::Base64(format!("decodes to {n} bytes, not 32")));
    }
    out.copy_from_slice(&buf[..KEY_LEN]);
    Ok(out)
}

/// What is wrong with a key's base64, by position only: the error never quotes a character of
/// the key (a typo'd private key in an error message or a log is still most of the key).
fn describe_base64_error(e: &base64::DecodeSliceError) -> String {
    use base64::{DecodeError, DecodeSliceError};
    match e {
        DecodeSliceError::DecodeError(DecodeError::InvalidByte(at, _)) => {
            format!("character {} is not in the base64 alphabet", at + 1)
        }
        DecodeSliceError::DecodeError(DecodeError::InvalidLastSymbol(at, _)) => format!(
            "character {} has low bits set that a canonical key leaves zero",
            at + 1
        ),
        DecodeSliceError::DecodeError(DecodeError::InvalidPadding) => {
            "the padding is wrong (a key ends with exactly one '=')".to_owned()
        }
        DecodeSliceError::DecodeError(DecodeError::InvalidLength(_))
        | DecodeSliceError::OutputSliceTooSmall => "it does not decode to 32 bytes".to_owned(),
    }
}

fn encode_key(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    Zeroizing::new(STANDARD.encode(bytes))
}

fn random_bytes() -> Zeroizing<[u8; KEY_LEN]> {
    use ring::rand::SecureRandom;
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    // The system RNG only fails when the OS has no entropy source at all; there is no safe
    // way to continue without one.
    #[allow(clippy::expect_used)]
    ring::rand::SystemRandom::new()
        .fill(&mut bytes[..])
        .expect("operating system random number generator failed");
    bytes
}

/// Fills `out` with bytes from the operating system's random number generator.
pub fn fill_random(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    #[allow(clippy::expect_used)]
    ring::rand::SystemRandom::new()
        .fill(out)
        .expect("operating system random number generator failed");
}

/// Constant-time equality of two byte strings of the same length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// An X25519 private key. Never printed, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Generates a new key from the OS random number generator, clamped like `wg genkey`.
    pub fn generate() -> Self {
        let mut bytes = random_bytes();
        clamp(&mut bytes);
        PrivateKey(*bytes)
    }

    /// A key from raw bytes (used for test vectors and ephemeral keys). Not clamped: X25519
    /// clamps at use, exactly as WireGuard does.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PrivateKey(bytes)
    }

    /// Raw bytes of the key. Handle with care.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the base64 text form (trailing whitespace allowed).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(PrivateKey(*decode_key(text)?))
    }

    /// The base64 text form (44 characters), in a buffer that is zeroized on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_key(&self.0)
    }

    /// The matching public key: X25519(clamp(k), 9).
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// X25519 with a peer's public key. Refuses a non-contributory (all-zero) result.
    pub fn diffie_hellman(&self, peer: &PublicKey) -> Result<SharedSecret, DhError> {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        if !shared.was_contributory() {
            return Err(DhError::NonContributory);
        }
        Ok(SharedSecret(shared.to_bytes()))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the public half is shown; the secret never prints.
        f.debug_struct("PrivateKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}
impl Eq for PrivateKey {}

/// Clamps a scalar as X25519 does (RFC 7748 section 5).
fn clamp(bytes: &mut [u8; KEY_LEN]) {
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
}

/// The output of an X25519 exchange. Never printed, zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; KEY_LEN]);

impl SharedSecret {
    /// Raw bytes of the shared secret. Handle with care.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// A public key from raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// Raw bytes of the key.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the base64 text form (trailing whitespace allowed).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(PublicKey(*decode_key(text)?))
    }

    /// The base64 text form (44 characters).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_base64(s)
    }
}

/// A 32-byte pre-shared key mixed into the per-client secret. Never printed, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// Generates a new PSK from the OS random number generator.
    pub fn generate() -> Self {
        PresharedKey(*random_bytes())
    }

    /// A PSK from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PresharedKey(bytes)
    }

    /// Raw bytes of the key. Handle with care.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the base64 text form (trailing whitespace allowed).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(PresharedKey(*decode_key(text)?))
    }

    /// The base64 text form, in a buffer that is zeroized on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        encode_key(&self.0)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

impl PartialEq for PresharedKey {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}
impl Eq for PresharedKey {}

#[cfg(test)]
mod tests;
