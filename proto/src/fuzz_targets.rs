//! Bodies of the cargo-fuzz targets in `fuzz/`, one function per target.
//!
//! They live here, always compiled, so that `proto/tests/fuzz_corpus.rs` can replay the
//! committed corpus in an ordinary `cargo test`. Each function takes arbitrary bytes, must
//! never panic, and asserts only genuine invariants of the code under test.

use std::sync::OnceLock;

use sesame_keys::{PresharedKey, PrivateKey, PublicKey};

use crate::payload::{remac, seal};
use crate::{
    ClientKeys, DATAGRAM_LEN, Opener, PLAINTEXT_LEN, Profile, RejectReason, TimeWindow, UnixMillis,
    decode_plaintext, encode_plaintext,
};

/// The client private key of the `ssh-from-source` payload vector (and of most
/// `fail_payloads.json` vectors), so that datagrams from the vectors pass the MAC gate.
const CLIENT_KEY: [u8; 32] = [
    0x45, 0x7c, 0x77, 0x6e, 0x61, 0x18, 0x13, 0x0a, 0x0d, 0x04, 0x3f, 0x36, 0x29, 0x20, 0xdb, 0xd2,
    0xd5, 0xcc, 0xc7, 0xfe, 0xf1, 0xe8, 0xe3, 0x9a, 0x9d, 0x94, 0x8f, 0x86, 0xb9, 0xb0, 0xab, 0xa2,
];
/// The server private key of the same vectors.
const SERVER_KEY: [u8; 32] = [
    0x64, 0x1f, 0x16, 0x09, 0x00, 0x3b, 0x32, 0x35, 0x2c, 0x27, 0xde, 0xd1, 0xc8, 0xc3, 0xfa, 0xfd,
    0xf4, 0xef, 0xe6, 0x99, 0x90, 0x8b, 0x82, 0x85, 0xbc, 0xb7, 0xae, 0xa1, 0x58, 0x53, 0x4a, 0x4d,
];
/// A fixed ephemeral key for re-sealing decoded plaintexts.
const EPHEMERAL_KEY: [u8; 32] = [0x42; 32];
/// The vectors' window: 30-second steps, one step of skew.
const WINDOW: TimeWindow = TimeWindow {
    step_seconds: 30,
    skew_steps: 1,
};
/// The vectors' `now_ms`.
const BASE_NOW_MS: u64 = 1_764_000_000_373;

/// The opener and the per-client keys, derived once (each derivation is an X25519).
fn fixture() -> &'static (Opener, ClientKeys) {
    static FIXTURE: OnceLock<(Opener, ClientKeys)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = PrivateKey::from_bytes(SERVER_KEY);
        let client = PrivateKey::from_bytes(CLIENT_KEY).public_key();
        let keys = match ClientKeys::for_server(&server, &client, None) {
            Ok(keys) => keys,
            Err(e) => panic!("fixed fuzzing keys are contributory: {e}"),
        };
        (Opener::new(server, WINDOW), keys)
    })
}

/// `now` from one byte: 0x80 is the epoch, 0x7f the end of time, anything else the vectors'
/// `now_ms` shifted by a signed number of half steps.
fn pick_now(b: u8) -> UnixMillis {
    match b {
        0x7f => UnixMillis(u64::MAX),
        0x80 => UnixMillis(0),
        b => UnixMillis(BASE_NOW_MS).offset_millis(i64::from(b as i8) * 15_000),
    }
}

/// Input layout: `now` selector (1 byte), signed counter offset from now's step (1 byte), then
/// the datagram. Also re-MACs the datagram to get past the gate, and, when the datagram
/// starts with a valid plaintext, seals it and checks that it opens to the same request.
pub fn payload_open(data: &[u8]) {
    let [now_sel, offset, datagram @ ..] = data else {
        return;
    };
    let (opener, keys) = fixture();
    let now = pick_now(*now_sel);
    let counter = now
        .counter(WINDOW.step_seconds)
        .wrapping_add_signed(i64::from(*offset as i8));
    let in_window = WINDOW.contains(now, counter);

    match opener.open(now, keys, counter, datagram) {
        Ok(req) => {
            assert!(in_window && datagram.len() == DATAGRAM_LEN);
            assert_eq!(req.timestamp.counter(WINDOW.step_seconds), counter);
            assert!(encode_plaintext(&req).is_ok(), "{req:?}");
        }
        Err(RejectReason::Truncated { len }) => {
            assert!(len == datagram.len() && len < DATAGRAM_LEN);
        }
        Err(RejectReason::TooLong { len }) => {
            assert!(len == datagram.len() && len > DATAGRAM_LEN);
        }
        Err(RejectReason::Stale { .. }) => {
            assert!(!in_window && datagram.len() == DATAGRAM_LEN);
        }
        Err(_) => assert!(in_window),
    }

    // With a correct gate MAC, the datagram must get past the length, window and gate checks.
    if let (true, Ok(mut fixed)) = (in_window, <[u8; DATAGRAM_LEN]>::try_from(datagram)) {
        remac(keys, counter, &mut fixed);
        let r = opener.open(now, keys, counter, &fixed);
        assert!(
            !matches!(
                r,
                Err(RejectReason::Truncated { .. }
                    | RejectReason::TooLong { .. }
                    | RejectReason::Stale { .. }
                    | RejectReason::BadMac)
            ),
            "{r:?}"
        );
    }

    if let Some(pt) = datagram.get(..PLAINTEXT_LEN) {
        plaintext_decode(pt);
        seal_and_open(pt);
    }
}

/// A plaintext that decodes must, sealed in its own time step, open to the same request.
fn seal_and_open(pt: &[u8]) {
    let (Ok(req), Ok(pt)) = (decode_plaintext(pt), <&[u8; PLAINTEXT_LEN]>::try_from(pt)) else {
        return;
    };
    let (opener, keys) = fixture();
    let counter = req.timestamp.counter(WINDOW.step_seconds);
    let datagram = match seal(keys, counter, pt, &PrivateKey::from_bytes(EPHEMERAL_KEY)) {
        Ok(d) => d,
        Err(e) => panic!("sealing a decodable plaintext failed: {e}"),
    };
    assert_eq!(
        opener.open(req.timestamp, keys, counter, &datagram),
        Ok(req)
    );
}

/// `decode_plaintext` on arbitrary bytes; what decodes must encode back to the same bytes.
pub fn plaintext_decode(data: &[u8]) {
    match decode_plaintext(data) {
        Ok(req) => assert_eq!(encode_plaintext(&req).as_ref().map(|b| &b[..]), Ok(data)),
        Err(RejectReason::Truncated { len }) => assert!(len == data.len() && len < PLAINTEXT_LEN),
        Err(RejectReason::TooLong { len }) => assert!(len == data.len() && len > PLAINTEXT_LEN),
        Err(_) => assert_eq!(data.len(), PLAINTEXT_LEN),
    }
}

/// The three key parsers on UTF-8 text: they agree, and an accepted key's canonical text is
/// 44 characters, parses back to the same key and is the input without its trailing ASCII
/// whitespace.
pub fn key_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let public = PublicKey::from_base64(text);
    let private = PrivateKey::from_base64(text);
    let psk = PresharedKey::from_base64(text);
    match (&public, &private, &psk) {
        (Ok(public), Ok(private), Ok(psk)) => {
            assert_eq!(public.as_bytes(), private.expose_bytes());
            assert_eq!(public.as_bytes(), psk.expose_bytes());
        }
        (Err(a), Err(b), Err(c)) => assert!(a == b && b == c, "{a:?} {b:?} {c:?}"),
        _ => panic!("key parsers disagree on {text:?}"),
    }
    if let Ok(key) = public {
        check_canonical(text, &key.to_base64(), PublicKey::from_base64, &key);
    }
    if let Ok(key) = private {
        check_canonical(text, &key.to_base64(), PrivateKey::from_base64, &key);
    }
    if let Ok(key) = psk {
        check_canonical(text, &key.to_base64(), PresharedKey::from_base64, &key);
    }
}

fn check_canonical<K: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    input: &str,
    canonical: &str,
    parse: impl Fn(&str) -> Result<K, E>,
    key: &K,
) {
    assert_eq!(canonical.len(), sesame_keys::KEY_TEXT_LEN, "{canonical:?}");
    assert_eq!(
        input.trim_end_matches(sesame_keys::TRAILING_WHITESPACE),
        canonical
    );
    match parse(canonical) {
        Ok(back) => assert_eq!(&back, key),
        Err(e) => panic!("canonical text {canonical:?} does not parse: {e:?}"),
    }
}

/// `Profile::parse` on UTF-8 text: an error is one line; a profile survives `to_toml`.
pub fn profile_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Profile::parse(text) {
        Ok(p) => assert_eq!(Profile::parse(&p.to_toml()), Ok(p)),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains(['\n', '\r']), "{msg:?}");
        }
    }
}
