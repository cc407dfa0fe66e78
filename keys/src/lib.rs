//! X25519 key types and key files for sesame.
//!
//! Keys use the same text format as WireGuard: 32 bytes in standard base64 with padding
//! (44 characters). `sesame genkey | sesame pubkey` and `wg genkey | wg pubkey` agree.
//!
//! Secret types ([`PrivateKey`], [`PresharedKey`], [`SharedSecret`]) never print their bytes,
//! are zeroized on drop, and compare in constant time.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key in its base64 text form.
pub const KEY_TEXT_LEN: usize = 44;
/// Largest key file we read; a key file is one line.
const MAX_KEY_FILE_LEN: u64 = 4096;

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

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened, read or created.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is readable or writable by group or others.
    #[error(
        "{path}: permissions {mode:04o} are too open; a secret key file must not be accessible by group or others (fix: chmod 600 {path})",
        path = .path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a regular file, or it is too large to be a key file.
    #[error("{path}: not a key file ({why})", path = .path.display())]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// The file's content is not a key.
    #[error("{path}: {source}", path = .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why the content was refused.
        source: KeyError,
    },
}

impl KeyFileError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl KeyFileError {
    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            KeyFileError::Io { path, .. }
            | KeyFileError::TooOpen { path, .. }
            | KeyFileError::NotAKeyFile { path, .. }
            | KeyFileError::Parse { path, .. } => path,
        }
    }
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

/// Permission bits that must be clear on a secret key file (group and other access).
pub const SECRET_FILE_FORBIDDEN_MODE: u32 = 0o077;

/// Whether reading a secret follows a symbolic link at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Follow it (the client: key files under a dotfiles manager may be links).
    Follow,
    /// Refuse it (the daemon, which reads as root).
    Refuse,
}

/// Reads a secret file after checking it is a small regular file that group and others cannot
/// access. The content is returned in a buffer that is zeroized on drop. The file is opened
/// without blocking (a FIFO or a device at the path is refused, never waited on) and checked
/// with `fstat` on the open file, so what is read is what was checked.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    read_secret_file_with(path, Links::Follow)
}

/// [`read_secret_file`], choosing whether a symbolic link is followed.
pub fn read_secret_file_with(path: &Path, links: Links) -> Result<Zeroizing<String>, KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                KeyFileError::NotAKeyFile {
                    path: path.to_path_buf(),
                    why: "a symbolic link (sesamed reads secrets only from the file itself)",
                }
            } else {
                KeyFileError::io(path, e)
            }
        })?;
    let meta = file.metadata().map_err(|e| KeyFileError::io(path, e))?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_path_buf(),
            why: "not a regular file",
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & SECRET_FILE_FORBIDDEN_MODE != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_path_buf(),
            why: "larger than 4096 bytes",
        });
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(64));
    Read::by_ref(&mut file)
        .take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut raw)
        .map_err(|e| KeyFileError::io(path, e))?;
    let text = std::str::from_utf8(&raw).map_err(|_| KeyFileError::NotAKeyFile {
        path: path.to_path_buf(),
        why: "not UTF-8 text",
    })?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Reads a private key file (refusing files accessible by group or others).
pub fn read_private_key_file(path: &Path) -> Result<PrivateKey, KeyFileError> {
    read_private_key_file_with(path, Links::Follow)
}

/// [`read_private_key_file`], choosing whether a symbolic link is followed.
pub fn read_private_key_file_with(path: &Path, links: Links) -> Result<PrivateKey, KeyFileError> {
    let text = read_secret_file_with(path, links)?;
    PrivateKey::from_base64(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a pre-shared key file (refusing files accessible by group or others).
pub fn read_psk_file(path: &Path) -> Result<PresharedKey, KeyFileError> {
    read_psk_file_with(path, Links::Follow)
}

/// [`read_psk_file`], choosing whether a symbolic link is followed.
pub fn read_psk_file_with(path: &Path, links: Links) -> Result<PresharedKey, KeyFileError> {
    let text = read_secret_file_with(path, links)?;
    PresharedKey::from_base64(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a public key file (any permissions).
pub fn read_public_key_file(path: &Path) -> Result<PublicKey, KeyFileError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE_LEN).read_to_string(&mut text))
        .map_err(|e| KeyFileError::io(path, e))?;
    PublicKey::from_base64(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a new file with mode 0600 in one step (never replacing an existing file) and
/// writes `text` followed by a newline.
pub fn write_secret_file(path: &Path, text: &str) -> Result<(), KeyFileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeyFileError::io(path, e))?;
    // The umask can only remove bits, but a pre-set ACL default could add some: make sure.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| KeyFileError::io(path, e))?;
    let mut line = Zeroizing::new(String::with_capacity(text.len() + 1));
    line.push_str(text);
    line.push('\n');
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyFileError::io(path, e))
}

/// Writes a private key to a new 0600 file.
pub fn write_private_key_file(path: &Path, key: &PrivateKey) -> Result<(), KeyFileError> {
    write_secret_file(path, &key.to_base64())
}

/// True when `mode` lets group or others access a file holding a secret.
pub fn mode_is_too_open(mode: u32) -> bool {
    mode & SECRET_FILE_FORBIDDEN_MODE != 0
}

#[cfg(test)]
mod tests;
