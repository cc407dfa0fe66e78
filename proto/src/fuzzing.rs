//! Hooks for sesame's fuzz harness (`fuzz/harness`), which holds the target bodies. Nothing
//! here is part of the crate's API, and none of it exists in a normal build: the module is
//! compiled only with `--cfg fuzzing` (which cargo-fuzz passes to every crate of the fuzz
//! build) or with the `test-hooks` feature, which only the harness turns on (for the corpus
//! replay in `cargo test`).
//!
//! [`seal`] and [`remac`] give the harness datagrams whose crypto is valid around bytes of its
//! choosing (a plaintext that does not decode, a ciphertext that does not open), which the
//! public [`crate::wire::build_payload`] never makes.
//!
//! `CryptoBypass` (`--cfg fuzzing` only, never with the feature) lets the
//! `payload_open_bypass` target reach what comes after the crypto (plaintext decoding, the step
//! check, and the tracker's replay and policy checks) with arbitrary plaintexts, which random
//! bytes could otherwise never get to: while one is alive, on its thread,
//! [`crate::wire::Opener::check_gate`] accepts any MAC (the length and window checks still
//! run) and `Opener::open_after_gate` skips X25519 and the AEAD and takes bytes 32..152 of the
//! datagram as the decrypted plaintext.

use sesame_keys::PrivateKey;

use crate::ClientKeys;
use crate::payload::{BuildError, DATAGRAM_LEN, PLAINTEXT_LEN};

/// Encrypts an encoded plaintext (any 120 bytes, decodable or not) with `ephemeral` and appends
/// the gate MAC: the datagram a client would send for it.
pub fn seal(
    keys: &ClientKeys,
    counter: u64,
    plaintext: &[u8; PLAINTEXT_LEN],
    ephemeral: &PrivateKey,
    high_bit: bool,
) -> Result<[u8; DATAGRAM_LEN], BuildError> {
    crate::payload::seal(keys, counter, plaintext, ephemeral, high_bit)
}

/// Recomputes the gate MAC of a datagram in place.
pub fn remac(keys: &ClientKeys, counter: u64, datagram: &mut [u8; DATAGRAM_LEN]) {
    crate::payload::remac(keys, counter, datagram);
}

#[cfg(fuzzing)]
pub use bypass::CryptoBypass;
#[cfg(fuzzing)]
pub(crate) use bypass::crypto_bypassed;

#[cfg(fuzzing)]
mod bypass {
    use std::cell::Cell;

    thread_local! {
        static BYPASS: Cell<bool> = const { Cell::new(false) };
    }

    /// Turns the crypto bypass on for this thread until dropped.
    #[derive(Debug)]
    pub struct CryptoBypass(());

    impl CryptoBypass {
        /// Turns the bypass on.
        pub fn enable() -> Self {
            BYPASS.with(|b| b.set(true));
            CryptoBypass(())
        }
    }

    impl Drop for CryptoBypass {
        fn drop(&mut self) {
            BYPASS.with(|b| b.set(false));
        }
    }

    /// Whether the bypass is on (the hooks in `payload.rs` ask).
    pub(crate) fn crypto_bypassed() -> bool {
        BYPASS.with(Cell::get)
    }
}
