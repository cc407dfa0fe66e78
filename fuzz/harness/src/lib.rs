//! The bodies of sesame's cargo-fuzz targets, one function per target, with their seeds.
//!
//! Each file in `fuzz/fuzz_targets/` is a one-line `fuzz_target!` that calls one of these;
//! `tests/corpus.rs` replays the committed corpora (`fuzz/corpus/<target>/`) and the crash
//! reproducers (`fuzz/regressions/<target>/`) through the same functions in a plain `cargo
//! test`. Each function takes arbitrary bytes, must never panic, and asserts only genuine
//! invariants of the code under test.
//!
//! The targets use the public API of `sesame-proto` and `sesame-server`, plus the hooks of
//! `sesame_proto::fuzzing` (compiled only with `--cfg fuzzing`, which cargo-fuzz passes, or
//! with the `test-hooks` feature this crate turns on): `seal` and `remac` for datagrams with
//! valid crypto around bytes of the target's choosing, and, under `--cfg fuzzing` only, the
//! crypto bypass of `payload_open_bypass`. This crate is not published.

mod proto;
mod server;

pub use proto::{
    StatefulInput, StatefulSummary, key_parse, payload_open, payload_open_bypass,
    payload_open_bypass_seeds, plaintext_decode, profile_parse, stun_parse, tracker_stateful,
    tracker_stateful_run, tracker_stateful_seeds,
};
pub use server::{
    FrameSummary, action_protocol, config_parse, control, frame, frame_tracker, frame_tracker_run,
    frame_tracker_seeds, ip_packet, metrics_request,
};
