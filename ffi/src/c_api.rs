//! The C ABI of sesame (`include/sesame.h` is generated from this file by cbindgen).
//!
//! Conventions, for every function:
//!
//! - **Status.** A fallible function returns a [`SesameStatus`]: `SESAME_STATUS_OK` (0) or an
//!   error code. The message of the last error on the calling thread is
//!   [`sesame_last_error`]; every fallible call replaces it (with `""` on success). Messages
//!   never contain a secret.
//! - **Handles** ([`SesameProfile`], [`SesameKey`], [`SesameClient`], [`SesameKnock`]) are
//!   opaque, made by the library and freed by the matching `sesame_*_free` (which accepts
//!   NULL). A handle is immutable once made: functions taking `const` handles may be called on
//!   the same handle from several threads at once. Freeing must not race with another use.
//! - **Outputs.** A new handle is written to an out-pointer, which is set to NULL first and on
//!   failure. Text goes into a buffer the caller owns (`out`, `out_len` bytes), NUL-terminated;
//!   if it does not fit, `SESAME_STATUS_BUFFER_TOO_SMALL` and nothing is written but the
//!   size needed (with the NUL) to `*needed` when `needed` is not NULL.
//! - **Inputs.** Text arguments are NUL-terminated UTF-8; optional ones may be NULL. Nothing is
//!   kept after a call returns, except what the new handle holds.
//! - **Panics** never cross the boundary: a bug inside the library returns
//!   `SESAME_STATUS_PANIC`.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use crate::core::{
    self, Client, Error, KnockOptions, KnockPlan, PacketKind, PresharedKey, PrivateKey, Profile,
};

/// The version of this ABI; see `sesame_abi_version`.
pub const SESAME_ABI_VERSION: u32 = 1;
/// The size of a key in bytes.
pub const SESAME_KEY_SIZE: usize = 32;
/// The size of a buffer for a key's text form: 44 base64 characters and the NUL.
pub const SESAME_KEY_TEXT_SIZE: usize = 45;
/// The most knocks a sequence has (a knock has at most this many packets plus the payload).
pub const SESAME_MAX_KNOCKS: usize = 16;
/// How many random bytes `sesame_client_build_knock_with_random` needs at most in practice.
pub const SESAME_RANDOM_BYTES_ENOUGH: usize = 4096;
/// `proto` of a TCP packet or service (the IP protocol number).
pub const SESAME_PROTO_TCP: u8 = 6;
/// `proto` of a UDP packet or service (the IP protocol number).
pub const SESAME_PROTO_UDP: u8 = 17;
/// `sesame_profile_lease`: a lease lets new connections in until it ends.
pub const SESAME_LEASE_WINDOW: u8 = 0;
/// `sesame_profile_lease`: the first new connection uses a lease up; make no connection of
/// your own to check a knock.
pub const SESAME_LEASE_CONNECTION: u8 = 1;
/// `kind` of a knock packet.
pub const SESAME_PACKET_KNOCK: u8 = 0;
/// `kind` of the payload datagram.
pub const SESAME_PACKET_PAYLOAD: u8 = 1;

/// What a call returned.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SesameStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// A text argument is not valid UTF-8.
    InvalidUtf8 = 2,
    /// The profile URI was refused (not `sesame://2/`, or a bad field).
    InvalidUri = 3,
    /// The profile's TOML text was refused.
    InvalidProfile = 4,
    /// A key's text or bytes were refused.
    InvalidKey = 5,
    /// An argument is malformed (services, an address, an index out of range).
    InvalidArgument = 6,
    /// The client's and the server's keys cannot be used together (a low-order key).
    KeyExchange = 7,
    /// No private key was given and the profile carries none.
    NoPrivateKey = 8,
    /// The knock cannot be built (too many services, an address with `payload = "none"`).
    KnockFailed = 9,
    /// The caller's random bytes ran out.
    RandomExhausted = 10,
    /// An output buffer is too small; `*needed` says how large it must be.
    BufferTooSmall = 11,
    /// The item asked for is not there (a key the profile does not carry).
    Absent = 12,
    /// The server's host name could not be resolved.
    Resolve = 13,
    /// A packet could not be sent (no route, no socket).
    Network = 14,
    /// A bug inside the library (a Rust panic, caught at the boundary).
    Panic = 15,
}

/// A server's profile, imported from a URI or TOML text. Free with `sesame_profile_free`.
pub struct SesameProfile(Profile);

/// A 32-byte key: a private key or a pre-shared key. Its bytes are zeroed when it is freed
/// with `sesame_key_free`.
pub struct SesameKey(PrivateKey);

/// A profile with the client's keys, ready to knock. Free with `sesame_client_free`.
pub struct SesameClient(Client);

/// The packets of one knock. Free with `sesame_knock_free`.
pub struct SesameKnock(KnockPlan);

/// One port of a sequence.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SesamePort {
    /// `SESAME_PROTO_UDP` or `SESAME_PROTO_TCP`.
    pub proto: u8,
    /// The port.
    pub port: u16,
}

/// One packet of a knock, as `sesame_knock_packet` describes it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SesamePacket {
    /// `SESAME_PACKET_KNOCK` or `SESAME_PACKET_PAYLOAD`.
    pub kind: u8,
    /// `SESAME_PROTO_UDP` (a datagram of `data`) or `SESAME_PROTO_TCP` (a SYN: connect, then
    /// abandon the connection).
    pub proto: u8,
    /// The destination port.
    pub port: u16,
    /// 4 or 6: the family of `address`.
    pub family: u8,
    /// The destination address: 4 bytes (then zeros) for IPv4, 16 for IPv6.
    pub address: [u8; 16],
    /// The datagram's bytes (NULL for TCP). Owned by the knock: valid until
    /// `sesame_knock_free`.
    pub data: *const u8,
    /// The number of bytes at `data` (0 for TCP).
    pub data_len: usize,
}

/// Why a call failed: an error of the core API, or one of the boundary itself.
enum Fail {
    Core(Error),
    Null(&'static str),
    Utf8(&'static str),
    Buffer {
        what: &'static str,
        needed: usize,
        given: usize,
    },
    Absent(&'static str),
    Index {
        index: usize,
        count: usize,
    },
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Core(e)
    }
}

impl Fail {
    fn status(&self) -> SesameStatus {
        match self {
            Fail::Core(e) => match e {
                Error::Uri(_) => SesameStatus::InvalidUri,
                Error::Profile(_) => SesameStatus::InvalidProfile,
                Error::Key(_) => SesameStatus::InvalidKey,
                Error::KeyExchange(_) => SesameStatus::KeyExchange,
                Error::NoPrivateKey => SesameStatus::NoPrivateKey,
                Error::Argument { .. } => SesameStatus::InvalidArgument,
                Error::Sequence(_) | Error::Knock(_) => SesameStatus::KnockFailed,
                Error::RandomExhausted { .. } => SesameStatus::RandomExhausted,
                Error::Resolve(_) => SesameStatus::Resolve,
                Error::Send(_) => SesameStatus::Network,
            },
            Fail::Null(_) => SesameStatus::NullArgument,
            Fail::Utf8(_) => SesameStatus::InvalidUtf8,
            Fail::Buffer { .. } => SesameStatus::BufferTooSmall,
            Fail::Absent(_) => SesameStatus::Absent,
            Fail::Index { .. } => SesameStatus::InvalidArgument,
        }
    }

    fn message(&self) -> String {
        match self {
            Fail::Core(e) => e.message(),
            Fail::Null(what) => format!("{what} is NULL"),
            Fail::Utf8(what) => format!("{what} is not valid UTF-8"),
            Fail::Buffer {
                what,
                needed,
                given,
            } => format!("{what} needs a buffer of {needed} bytes, {given} given"),
            Fail::Absent(what) => format!("the profile carries no {what}"),
            Fail::Index { index, count } => {
                format!("packet {index} does not exist (the knock has {count})")
            }
        }
    }
}

const PANIC_MESSAGE: &str = "internal error: a bug in the sesame library (please report it)";

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Messages hold no NUL; if one ever did, it is shown rather than cutting the message.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // During thread teardown the slot may be gone: the message is lost, nothing else.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// Runs `f`, catching panics; records the message and returns the status.
fn guard(f: impl FnOnce() -> Result<(), Fail>) -> SesameStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            SesameStatus::Ok
        }
        Ok(Err(fail)) => {
            set_last_error(&fail.message());
            fail.status()
        }
        Err(_) => {
            set_last_error(PANIC_MESSAGE);
            SesameStatus::Panic
        }
    }
}

/// Runs an infallible `f`, catching panics (which give `fallback`).
fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// # Safety
/// `p` is NULL or a NUL-terminated string that stays valid and unchanged during the call.
unsafe fn text<'a>(p: *const c_char, what: &'static str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::Null(what));
    }
    // SAFETY: not NULL, and the caller guarantees a NUL-terminated string valid for the call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| Fail::Utf8(what))
}

/// # Safety
/// As [`text`].
unsafe fn opt_text<'a>(p: *const c_char, what: &'static str) -> Result<Option<&'a str>, Fail> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's guarantee, passed on.
    unsafe { text(p, what) }.map(Some)
}

/// # Safety
/// `p` is NULL or a handle made by this library and not freed.
unsafe fn handle<'a, T>(p: *const T, what: &'static str) -> Result<&'a T, Fail> {
    // SAFETY: a non-NULL `p` is a live handle (the caller's guarantee); handles are immutable.
    unsafe { p.as_ref() }.ok_or(Fail::Null(what))
}

/// # Safety
/// `out` is NULL or valid for writing one pointer.
unsafe fn out_handle<'a, T>(out: *mut *mut T, what: &'static str) -> Result<&'a mut *mut T, Fail> {
    // SAFETY: a non-NULL `out` is writable (the caller's guarantee).
    let slot = unsafe { out.as_mut() }.ok_or(Fail::Null(what))?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

/// # Safety
/// `p` is NULL or a pointer returned by [`Box::into_raw`] for a `T` and not freed since.
unsafe fn free_handle<T>(p: *mut T) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if !p.is_null() {
            // SAFETY: the caller's guarantee: `p` came from Box::into_raw and is freed once.
            drop(unsafe { Box::from_raw(p) });
        }
    }));
}

/// Writes `s` and a NUL to the caller's buffer.
///
/// # Safety
/// `out` is NULL or valid for writing `out_len` bytes; `needed` is NULL or valid for writing.
unsafe fn write_text(
    s: &str,
    out: *mut c_char,
    out_len: usize,
    needed: *mut usize,
    what: &'static str,
) -> Result<(), Fail> {
    let size = s.len() + 1;
    // SAFETY: a non-NULL `needed` is writable (the caller's guarantee).
    if let Some(n) = unsafe { needed.as_mut() } {
        *n = size;
    }
    if out.is_null() {
        return Err(Fail::Null(what));
    }
    if out_len < size {
        return Err(Fail::Buffer {
            what,
            needed: size,
            given: out_len,
        });
    }
    // SAFETY: `out` holds `out_len >= s.len() + 1` writable bytes that do not overlap `s`
    // (a Rust string the library owns).
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), out.cast::<u8>(), s.len());
        *out.add(s.len()) = 0;
    }
    Ok(())
}

/// # Safety
/// `p` is NULL or valid for reading 32 bytes.
unsafe fn key_bytes(p: *const u8, what: &'static str) -> Result<[u8; 32], Fail> {
    if p.is_null() {
        return Err(Fail::Null(what));
    }
    let mut bytes = [0u8; 32];
    // SAFETY: `p` is readable for 32 bytes (the caller's guarantee); `bytes` is a local.
    unsafe { std::ptr::copy_nonoverlapping(p, bytes.as_mut_ptr(), 32) };
    Ok(bytes)
}

fn new_handle<T>(slot: &mut *mut T, value: T) {
    *slot = Box::into_raw(Box::new(value));
}

fn as_psk(key: &SesameKey) -> PresharedKey {
    PresharedKey::from_bytes(*key.0.expose_bytes())
}

// ---------------------------------------------------------------------------------------------
// Library

/// The ABI version of the library loaded; compare it with `SESAME_ABI_VERSION` of the header
/// the program was built with.
#[unsafe(no_mangle)]
pub extern "C" fn sesame_abi_version() -> u32 {
    SESAME_ABI_VERSION
}

/// The library's version, e.g. `"0.1.0"` (a static string: never free it).
#[unsafe(no_mangle)]
pub extern "C" fn sesame_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// The message of the last failed call on this thread (`""` after a call that succeeded).
/// The string belongs to the library and stays valid until the next `sesame_*` call on this
/// thread; copy it to keep it. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn sesame_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The name of a status code, e.g. `"SESAME_STATUS_INVALID_URI"` (a static string), or
/// `"unknown"`.
#[unsafe(no_mangle)]
pub extern "C" fn sesame_status_name(status: i32) -> *const c_char {
    let name: &CStr = match status {
        0 => c"SESAME_STATUS_OK",
        1 => c"SESAME_STATUS_NULL_ARGUMENT",
        2 => c"SESAME_STATUS_INVALID_UTF8",
        3 => c"SESAME_STATUS_INVALID_URI",
        4 => c"SESAME_STATUS_INVALID_PROFILE",
        5 => c"SESAME_STATUS_INVALID_KEY",
        6 => c"SESAME_STATUS_INVALID_ARGUMENT",
        7 => c"SESAME_STATUS_KEY_EXCHANGE",
        8 => c"SESAME_STATUS_NO_PRIVATE_KEY",
        9 => c"SESAME_STATUS_KNOCK_FAILED",
        10 => c"SESAME_STATUS_RANDOM_EXHAUSTED",
        11 => c"SESAME_STATUS_BUFFER_TOO_SMALL",
        12 => c"SESAME_STATUS_ABSENT",
        13 => c"SESAME_STATUS_RESOLVE",
        14 => c"SESAME_STATUS_NETWORK",
        15 => c"SESAME_STATUS_PANIC",
        _ => c"unknown",
    };
    name.as_ptr()
}

/// The current time in milliseconds since the Unix epoch, as the knock functions take it.
#[unsafe(no_mangle)]
pub extern "C" fn sesame_now_ms() -> u64 {
    guard_value(0, core::now_ms)
}

// ---------------------------------------------------------------------------------------------
// Profiles

/// Imports a `sesame://2/…` profile URI (what `sesamed export-client --uri` prints and its
/// `--qr` code holds) into `*out`.
///
/// # Safety
/// `uri` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_from_uri(
    uri: *const c_char,
    out: *mut *mut SesameProfile,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let uri = unsafe { text(uri, "uri") }?;
        new_handle(slot, SesameProfile(Profile::from_uri(uri)?));
        Ok(())
    })
}

/// Imports a profile's TOML text (what `sesamed export-client` prints) into `*out`. Its
/// `private_key_file` and `psk_file` are not read: give the keys to `sesame_client_new`.
///
/// # Safety
/// `toml` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_from_toml(
    toml: *const c_char,
    out: *mut *mut SesameProfile,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let toml = unsafe { text(toml, "toml") }?;
        new_handle(slot, SesameProfile(Profile::from_toml(toml)?));
        Ok(())
    })
}

/// Frees a profile (NULL is allowed).
///
/// # Safety
/// `profile` is NULL or a profile from this library, not freed before and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_free(profile: *mut SesameProfile) {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { free_handle(profile) }
}

/// Writes the profile's name (the client's name on the server; `""` for a profile from TOML).
///
/// # Safety
/// `profile` is NULL or a live profile; `out` is NULL or writable for `out_len` bytes;
/// `needed` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_name(
    profile: *const SesameProfile,
    out: *mut c_char,
    out_len: usize,
    needed: *mut usize,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let p = unsafe { handle(profile, "profile") }?;
        // SAFETY: as above.
        unsafe { write_text(p.0.name().unwrap_or(""), out, out_len, needed, "the name") }
    })
}

/// Writes the server's host name or address.
///
/// # Safety
/// As `sesame_profile_name`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_host(
    profile: *const SesameProfile,
    out: *mut c_char,
    out_len: usize,
    needed: *mut usize,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let p = unsafe { handle(profile, "profile") }?;
        // SAFETY: as above.
        unsafe { write_text(p.0.host(), out, out_len, needed, "the host") }
    })
}

/// Writes the services a knock asks for by default, e.g. `"tcp/22,udp/51820"` (`""`: every
/// service the client is allowed).
///
/// # Safety
/// As `sesame_profile_name`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_services(
    profile: *const SesameProfile,
    out: *mut c_char,
    out_len: usize,
    needed: *mut usize,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let p = unsafe { handle(profile, "profile") }?;
        let list: Vec<String> = p.0.services().iter().map(ToString::to_string).collect();
        // SAFETY: as above.
        unsafe { write_text(&list.join(","), out, out_len, needed, "the services") }
    })
}

/// Writes the server's public key (base64, 44 characters) to `out`
/// (`SESAME_KEY_TEXT_SIZE` bytes).
///
/// # Safety
/// `profile` is NULL or a live profile; `out` is NULL or writable for `out_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_server_public_key(
    profile: *const SesameProfile,
    out: *mut c_char,
    out_len: usize,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let p = unsafe { handle(profile, "profile") }?;
        let text = p.0.server_public_key().to_base64();
        // SAFETY: as above.
        unsafe { write_text(&text, out, out_len, std::ptr::null_mut(), "a key") }
    })
}

/// What the server's leases admit: `SESAME_LEASE_WINDOW` (new connections until the lease
/// ends) or `SESAME_LEASE_CONNECTION` (the first new connection uses it up: an app must not
/// connect to check that a knock worked). `SESAME_LEASE_WINDOW` for NULL.
///
/// # Safety
/// `profile` is NULL or a live profile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_lease(profile: *const SesameProfile) -> u8 {
    guard_value(SESAME_LEASE_WINDOW, || {
        // SAFETY: `profile` is NULL or a live profile (the caller's guarantee).
        match unsafe { profile.as_ref() }.map(|p| p.0.lease()) {
            Some(core::LeaseKind::Connection) => SESAME_LEASE_CONNECTION,
            Some(core::LeaseKind::Window) | None => SESAME_LEASE_WINDOW,
        }
    })
}

/// Copies the client's private key that the profile carries (a URI made by
/// `sesamed client add --generate-key`) into a new key `*out`, for the app to store in its key
/// store; `SESAME_STATUS_ABSENT` when the profile carries none.
///
/// # Safety
/// `profile` is NULL or a live profile; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_private_key(
    profile: *const SesameProfile,
    out: *mut *mut SesameKey,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let p = unsafe { handle(profile, "profile") }?;
        let key = p.0.private_key().ok_or(Fail::Absent("private key"))?;
        new_handle(slot, SesameKey(key.clone()));
        Ok(())
    })
}

/// Copies the client's pre-shared key that the profile carries into a new key `*out`;
/// `SESAME_STATUS_ABSENT` when it carries none.
///
/// # Safety
/// As `sesame_profile_private_key`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_profile_psk(
    profile: *const SesameProfile,
    out: *mut *mut SesameKey,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let p = unsafe { handle(profile, "profile") }?;
        let psk = p.0.psk().ok_or(Fail::Absent("pre-shared key"))?;
        new_handle(slot, SesameKey(PrivateKey::from_bytes(*psk.expose_bytes())));
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Keys

/// Makes a new private key from the operating system's random generator (clamped, as
/// `wg genkey` and `sesame genkey` do).
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_key_generate(out: *mut *mut SesameKey) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantee, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        new_handle(slot, SesameKey(core::generate_private_key()));
        Ok(())
    })
}

/// Reads a key in its text form: 44 characters of standard base64 (the WireGuard format;
/// trailing whitespace allowed, nothing else).
///
/// # Safety
/// `text` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_key_from_base64(
    text: *const c_char,
    out: *mut *mut SesameKey,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let t = unsafe { self::text(text, "text") }?;
        let key = PrivateKey::from_base64(t).map_err(Error::from)?;
        new_handle(slot, SesameKey(key));
        Ok(())
    })
}

/// Makes a key of 32 bytes (`SESAME_KEY_SIZE`).
///
/// # Safety
/// `bytes` is NULL or readable for 32 bytes; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_key_from_bytes(
    bytes: *const u8,
    out: *mut *mut SesameKey,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let mut b = unsafe { key_bytes(bytes, "bytes") }?;
        new_handle(slot, SesameKey(PrivateKey::from_bytes(b)));
        zeroize::Zeroize::zeroize(&mut b);
        Ok(())
    })
}

/// Writes the key's text form (44 characters and a NUL: `SESAME_KEY_TEXT_SIZE` bytes). For a
/// private key or a PSK this is the secret itself: write it only to the app's key store.
///
/// # Safety
/// `key` is NULL or a live key; `out` is NULL or writable for `out_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_key_to_base64(
    key: *const SesameKey,
    out: *mut c_char,
    out_len: usize,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let k = unsafe { handle(key, "key") }?;
        let text = k.0.to_base64();
        // SAFETY: as above.
        unsafe { write_text(&text, out, out_len, std::ptr::null_mut(), "a key") }
    })
}

/// Writes the key's 32 bytes (`SESAME_KEY_SIZE`) to `out`.
///
/// # Safety
/// `key` is NULL or a live key; `out` is NULL or writable for 32 bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_key_to_bytes(key: *const SesameKey, out: *mut u8) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantee, passed on.
        let k = unsafe { handle(key, "key") }?;
        if out.is_null() {
            return Err(Fail::Null("out"));
        }
        // SAFETY: `out` is writable for 32 bytes (the caller's guarantee) and is not the key's
        // own storage.
        unsafe { std::ptr::copy_nonoverlapping(k.0.expose_bytes().as_ptr(), out, 32) };
        Ok(())
    })
}

/// Writes the public key of a private key (base64, `SESAME_KEY_TEXT_SIZE` bytes): what the
/// server's admin adds with `sesamed client add NAME --public-key …`.
///
/// # Safety
/// `key` is NULL or a live key; `out` is NULL or writable for `out_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_key_public_key(
    key: *const SesameKey,
    out: *mut c_char,
    out_len: usize,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let k = unsafe { handle(key, "key") }?;
        let text = k.0.public_key().to_base64();
        // SAFETY: as above.
        unsafe { write_text(&text, out, out_len, std::ptr::null_mut(), "a key") }
    })
}

/// Frees a key, zeroing its bytes (NULL is allowed).
///
/// # Safety
/// `key` is NULL or a key from this library, not freed before and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_key_free(key: *mut SesameKey) {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { free_handle(key) }
}

// ---------------------------------------------------------------------------------------------
// Clients and knocks

/// Makes the client of `profile` with its keys into `*out` (one X25519: make it once, knock
/// often). `private_key` NULL: the one the profile carries (else
/// `SESAME_STATUS_NO_PRIVATE_KEY`). `psk` NULL: the one the profile carries, if any. The
/// client keeps copies: the profile and keys may be freed afterwards.
///
/// # Safety
/// `profile`, `private_key` and `psk` are NULL or live handles; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_client_new(
    profile: *const SesameProfile,
    private_key: *const SesameKey,
    psk: *const SesameKey,
    out: *mut *mut SesameClient,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let p = unsafe { handle(profile, "profile") }?;
        // SAFETY: NULL or live handles (the caller's guarantee).
        let (key, psk) = unsafe { (private_key.as_ref(), psk.as_ref()) };
        let psk = psk.map(as_psk);
        let client = Client::new(&p.0, key.map(|k| &k.0), psk.as_ref())?;
        new_handle(slot, SesameClient(client));
        Ok(())
    })
}

/// Frees a client (NULL is allowed).
///
/// # Safety
/// `client` is NULL or a client from this library, not freed before and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_client_free(client: *mut SesameClient) {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { free_handle(client) }
}

/// The ports of the client's knock at `now_ms` (what `sesame ports` prints): the knocks in
/// order into `knocks` (room for `knocks_cap`; `SESAME_MAX_KNOCKS` always suffice), their
/// number into `*count`, the payload's UDP port into `*payload_port` (with
/// `payload = "none"` nothing is sent there) and the time step into `*counter`
/// (`payload_port` and `counter` may be NULL).
///
/// # Safety
/// `client` is NULL or a live client; `knocks` is NULL or writable for `knocks_cap` ports;
/// `count` is NULL or writable; `payload_port` and `counter` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_client_ports(
    client: *const SesameClient,
    now_ms: u64,
    knocks: *mut SesamePort,
    knocks_cap: usize,
    count: *mut usize,
    payload_port: *mut u16,
    counter: *mut u64,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: NULL or writable (the caller's guarantee).
        let count = unsafe { count.as_mut() }.ok_or(Fail::Null("count"))?;
        let seq = c.0.sequence(now_ms)?;
        *count = seq.knocks.len();
        if seq.knocks.len() > knocks_cap {
            return Err(Fail::Buffer {
                what: "the knocks",
                needed: seq.knocks.len(),
                given: knocks_cap,
            });
        }
        if !seq.knocks.is_empty() && knocks.is_null() {
            return Err(Fail::Null("knocks"));
        }
        for (i, k) in seq.knocks.iter().enumerate() {
            // SAFETY: `knocks` is writable for `knocks_cap > i` ports (checked above).
            unsafe {
                knocks.add(i).write(SesamePort {
                    proto: k.proto.number(),
                    port: k.port,
                });
            }
        }
        // SAFETY: NULL or writable (the caller's guarantee).
        if let Some(p) = unsafe { payload_port.as_mut() } {
            *p = seq.payload_port;
        }
        // SAFETY: as above.
        if let Some(n) = unsafe { counter.as_mut() } {
            *n = seq.counter;
        }
        Ok(())
    })
}

/// The target and options of a knock from the C arguments.
///
/// # Safety
/// Text arguments are NULL or NUL-terminated strings.
unsafe fn knock_args(
    client: &Client,
    target: *const c_char,
    services: *const c_char,
    address: *const c_char,
) -> Result<(IpAddr, KnockOptions), Fail> {
    // SAFETY: the caller's guarantees, passed on.
    let (target, services, address) = unsafe {
        (
            opt_text(target, "target")?,
            opt_text(services, "services")?,
            opt_text(address, "address")?,
        )
    };
    let target = match target {
        Some(t) => core::parse_address(t, "target")?,
        None => client.resolve_host()?,
    };
    let options = KnockOptions {
        services: services.map(core::parse_services).transpose()?,
        address: address
            .map(|a| core::parse_address(a, "address"))
            .transpose()?,
    };
    Ok((target, options))
}

/// Builds the packets of a knock at `now_ms` (`sesame_now_ms()` for now) into `*out`, with
/// randomness from the operating system.
///
/// - `target`: the server's address (`"198.18.0.1"`, `"2001:db8::1"`); NULL: the profile's
///   host, resolved here (a blocking DNS lookup when it is a name).
/// - `services`: e.g. `"tcp/22,udp/51820"` (at most 8); `""`: every service the client is
///   allowed; NULL: the profile's.
/// - `address`: the address the server should open, bound into the payload so that a captured
///   knock opens nothing for anyone else (this device's public address); NULL: the address
///   the packets come from, unbound.
///
/// # Safety
/// `client` is NULL or a live client; text arguments are NULL or NUL-terminated strings; `out`
/// is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_client_build_knock(
    client: *const SesameClient,
    target: *const c_char,
    now_ms: u64,
    services: *const c_char,
    address: *const c_char,
    out: *mut *mut SesameKnock,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: as above.
        let (target, options) = unsafe { knock_args(&c.0, target, services, address) }?;
        let plan = c.0.build_knock(target, now_ms, &options)?;
        new_handle(slot, SesameKnock(plan));
        Ok(())
    })
}

/// `sesame_client_build_knock` with the random bytes taken, in order, from `random`
/// (`random_len` bytes; `SESAME_RANDOM_BYTES_ENOUGH` suffice): the same bytes give the same
/// packets, for tests and reproducible knocks. `SESAME_STATUS_RANDOM_EXHAUSTED` if they run
/// out. Never send two knocks built from the same bytes.
///
/// # Safety
/// As `sesame_client_build_knock`; `random` is NULL or readable for `random_len` bytes.
#[allow(clippy::too_many_arguments)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_client_build_knock_with_random(
    client: *const SesameClient,
    target: *const c_char,
    now_ms: u64,
    services: *const c_char,
    address: *const c_char,
    random: *const u8,
    random_len: usize,
    out: *mut *mut SesameKnock,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let slot = unsafe { out_handle(out, "out") }?;
        // SAFETY: as above.
        let c = unsafe { handle(client, "client") }?;
        let random: &[u8] = if random_len == 0 {
            &[]
        } else if random.is_null() {
            return Err(Fail::Null("random"));
        } else {
            // SAFETY: `random` is readable for `random_len` bytes (the caller's guarantee) and
            // not written during the call.
            unsafe { std::slice::from_raw_parts(random, random_len) }
        };
        // SAFETY: the caller's guarantees, passed on.
        let (target, options) = unsafe { knock_args(&c.0, target, services, address) }?;
        let plan =
            c.0.build_knock_from_bytes(target, now_ms, &options, random)?;
        new_handle(slot, SesameKnock(plan));
        Ok(())
    })
}

/// Builds a knock now (OS randomness, as `sesame_client_build_knock` with
/// `sesame_now_ms()`) and sends it from this host, `delay_ms` between packets (0 is fine on
/// most networks; `sesame open` uses 0). Returns once the packets are sent: the server never
/// answers, so whether it opened is seen only by connecting to the service.
///
/// # Safety
/// As `sesame_client_build_knock`, without `out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_client_knock(
    client: *const SesameClient,
    target: *const c_char,
    services: *const c_char,
    address: *const c_char,
    delay_ms: u32,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantees, passed on.
        let c = unsafe { handle(client, "client") }?;
        // SAFETY: as above.
        let (target, options) = unsafe { knock_args(&c.0, target, services, address) }?;
        let plan = c.0.build_knock(target, core::now_ms(), &options)?;
        core::send_knock(&plan, Duration::from_millis(u64::from(delay_ms)))?;
        Ok(())
    })
}

/// The time step the knock was built for (0 for NULL).
///
/// # Safety
/// `knock` is NULL or a live knock.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_knock_counter(knock: *const SesameKnock) -> u64 {
    guard_value(0, || {
        // SAFETY: `knock` is NULL or a live knock (the caller's guarantee).
        unsafe { knock.as_ref() }.map_or(0, |k| k.0.counter)
    })
}

/// The number of packets of the knock, the payload included (0 for NULL).
///
/// # Safety
/// `knock` is NULL or a live knock.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_knock_packet_count(knock: *const SesameKnock) -> usize {
    guard_value(0, || {
        // SAFETY: `knock` is NULL or a live knock (the caller's guarantee).
        unsafe { knock.as_ref() }.map_or(0, |k| k.0.packets.len())
    })
}

/// Describes packet `index` (0-based, in sending order) in `*out`. Its `data` points into the
/// knock: valid until `sesame_knock_free`.
///
/// # Safety
/// `knock` is NULL or a live knock; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_knock_packet(
    knock: *const SesameKnock,
    index: usize,
    out: *mut SesamePacket,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantee, passed on.
        let k = unsafe { handle(knock, "knock") }?;
        if out.is_null() {
            return Err(Fail::Null("out"));
        }
        let p = k.0.packets.get(index).ok_or(Fail::Index {
            index,
            count: k.0.packets.len(),
        })?;
        let mut address = [0u8; 16];
        let family = match p.dest.ip() {
            IpAddr::V4(a) => {
                address[..4].copy_from_slice(&a.octets());
                4
            }
            IpAddr::V6(a) => {
                address.copy_from_slice(&a.octets());
                6
            }
        };
        let packet = SesamePacket {
            kind: match p.kind {
                PacketKind::Knock { .. } => SESAME_PACKET_KNOCK,
                PacketKind::Payload => SESAME_PACKET_PAYLOAD,
            },
            proto: p.proto.number(),
            port: p.dest.port(),
            family,
            address,
            data: if p.data.is_empty() {
                std::ptr::null()
            } else {
                p.data.as_ptr()
            },
            data_len: p.data.len(),
        };
        // SAFETY: `out` is not NULL and writable (the caller's guarantee).
        unsafe { out.write(packet) };
        Ok(())
    })
}

/// Sends the knock's packets from this host, in order, `delay_ms` apart (UDP datagrams from
/// one socket; a TCP knock is a SYN whose connection is abandoned).
///
/// # Safety
/// `knock` is NULL or a live knock.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_knock_send(
    knock: *const SesameKnock,
    delay_ms: u32,
) -> SesameStatus {
    guard(|| {
        // SAFETY: the caller's guarantee, passed on.
        let k = unsafe { handle(knock, "knock") }?;
        core::send_knock(&k.0, Duration::from_millis(u64::from(delay_ms)))?;
        Ok(())
    })
}

/// Frees a knock (NULL is allowed).
///
/// # Safety
/// `knock` is NULL or a knock from this library, not freed before and not in use (no
/// `SesamePacket.data` of it is read afterwards).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sesame_knock_free(knock: *mut SesameKnock) {
    // SAFETY: the caller's guarantee, passed on.
    unsafe { free_handle(knock) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_agree_with_the_core() {
        assert_eq!(SESAME_RANDOM_BYTES_ENOUGH, core::RANDOM_BYTES_ENOUGH);
        assert_eq!(
            SESAME_MAX_KNOCKS,
            usize::from(sesame_proto::params::MAX_LENGTH)
        );
        assert_eq!(SESAME_KEY_SIZE, sesame_keys::KEY_LEN);
        assert_eq!(SESAME_KEY_TEXT_SIZE, sesame_keys::KEY_TEXT_LEN + 1);
        assert_eq!(SESAME_PROTO_TCP, sesame_proto::Proto::Tcp.number());
        assert_eq!(SESAME_PROTO_UDP, sesame_proto::Proto::Udp.number());
    }

    #[test]
    fn status_names_match_the_codes() {
        for code in 0..=15 {
            // SAFETY: sesame_status_name returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(sesame_status_name(code)) };
            assert!(name.to_str().unwrap().starts_with("SESAME_STATUS_"));
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(sesame_status_name(16)) };
        assert_eq!(unknown, c"unknown");
        assert_eq!(SesameStatus::Panic as i32, 15);
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, SesameStatus::Panic);
        // SAFETY: sesame_last_error returns a NUL-terminated string valid until the next call.
        let msg = unsafe { CStr::from_ptr(sesame_last_error()) };
        assert_eq!(msg.to_str().unwrap(), PANIC_MESSAGE);
        assert_eq!(guard(|| Ok(())), SesameStatus::Ok);
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(sesame_last_error()) };
        assert_eq!(msg, c"");
    }

    #[test]
    fn null_arguments_and_small_buffers_are_refused() {
        let mut profile: *mut SesameProfile = std::ptr::dangling_mut();
        // SAFETY: NULL text, a writable out-pointer.
        let s = unsafe { sesame_profile_from_uri(std::ptr::null(), &mut profile) };
        assert_eq!(s, SesameStatus::NullArgument);
        assert!(profile.is_null(), "the out-pointer is cleared on failure");
        // SAFETY: a NUL-terminated string, NULL out.
        let s = unsafe { sesame_profile_from_uri(c"sesame://2/AA".as_ptr(), std::ptr::null_mut()) };
        assert_eq!(s, SesameStatus::NullArgument);

        let mut key: *mut SesameKey = std::ptr::null_mut();
        // SAFETY: a writable out-pointer.
        assert_eq!(unsafe { sesame_key_generate(&mut key) }, SesameStatus::Ok);
        let mut small = [0 as c_char; 44];
        // SAFETY: `key` is live; `small` is writable for its length.
        let s = unsafe { sesame_key_public_key(key, small.as_mut_ptr(), small.len()) };
        assert_eq!(s, SesameStatus::BufferTooSmall);
        let mut text = [0 as c_char; SESAME_KEY_TEXT_SIZE];
        // SAFETY: as above.
        let s = unsafe { sesame_key_public_key(key, text.as_mut_ptr(), text.len()) };
        assert_eq!(s, SesameStatus::Ok);
        // SAFETY: `text` was NUL-terminated by the call.
        let public = unsafe { CStr::from_ptr(text.as_ptr()) }.to_str().unwrap();
        assert_eq!(public.len(), 44);
        // SAFETY: `key` is live and freed once; NULL is allowed.
        unsafe {
            sesame_key_free(key);
            sesame_key_free(std::ptr::null_mut());
        }
    }
}
