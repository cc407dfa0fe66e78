//! Fuzzing-only hooks, compiled only with `--cfg fuzzing` (which cargo-fuzz passes to every
//! crate of the fuzz build): nothing here exists in a normal build. The target bodies are in
//! `fuzz_targets`.
//!
//! [`CryptoBypass`] lets the `payload_open_bypass` target reach what comes after the crypto
//! (plaintext decoding, the step check, and the tracker's replay and policy checks) with
//! arbitrary plaintexts, which random bytes could otherwise never get to: while one is alive,
//! on its thread, [`crate::Opener::check_gate`] accepts any MAC (the length and window checks
//! still run) and [`crate::Opener::open_after_gate`] skips X25519 and the AEAD and takes bytes
//! 32..104 of the datagram as the decrypted plaintext.

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
