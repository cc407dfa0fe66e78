//! Replays the committed fuzzing corpus (`fuzz/corpus/<target>/`) and any crash reproducers
//! (`fuzz/regressions/<target>/`) through the fuzz target bodies, so a plain `cargo test`
//! catches a regression on any input the fuzzer has ever kept.
//!
//! `payload_open_bypass` replays on the genuine path here: without `--cfg fuzzing` there is no
//! crypto bypass, so its harness really seals each plaintext for the client and counter.
#![allow(clippy::unwrap_used)]

use std::fs;

#[path = "common/corpus.rs"]
mod corpus;
use corpus::{Target, fuzz_dir};

use sesame_proto::fuzz_targets;

const TARGETS: [(&str, Target); 7] = [
    ("payload_open", fuzz_targets::payload_open),
    ("plaintext_decode", fuzz_targets::plaintext_decode),
    ("key_parse", fuzz_targets::key_parse),
    ("profile_parse", fuzz_targets::profile_parse),
    ("tracker_stateful", fuzz_targets::tracker_stateful),
    ("payload_open_bypass", fuzz_targets::payload_open_bypass),
    ("stun_parse", fuzz_targets::stun_parse),
];

corpus::replay_tests!(TARGETS);

/// Finding 1 (`fuzz/README.md`): a `[section]` header holding control characters, then a TOML
/// error on a later line, used to put the header's text as it was into the one-line error.
#[test]
fn control_chars_in_a_section_name_stay_out_of_the_error() {
    let path = fuzz_dir().join("regressions/profile_parse/control-chars-in-section-name");
    let text = String::from_utf8(fs::read(&path).unwrap()).unwrap();
    assert!(text.chars().any(|c| c == '\r'), "{text:?}");
    let err = sesame_proto::Profile::parse(&text).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    assert_eq!(err.line, Some(3), "{msg:?}");
    assert_eq!(err.key, None, "{msg:?}");
}

/// The seeds reach what the targets are about: completed sequences, sequence-only and payload
/// grants in every mode, resets and evictions.
#[test]
fn stateful_seeds_reach_grants() {
    let mut total = fuzz_targets::StatefulSummary::default();
    for (i, seed) in fuzz_targets::tracker_stateful_seeds().iter().enumerate() {
        let s = fuzz_targets::tracker_stateful_run(seed);
        eprintln!("seed {i} (sel {}): {s:?}", seed[0]);
        total.sequence_grants += s.sequence_grants;
        total.payload_grants += s.payload_grants;
        total.completed += s.completed;
        total.resets += s.resets;
        total.evicted += s.evicted;
    }
    assert!(total.sequence_grants >= 6, "{total:?}");
    assert!(total.payload_grants >= 6, "{total:?}");
    assert!(total.completed >= 18, "{total:?}");
    assert!(total.resets > 0 && total.evicted > 0, "{total:?}");
    for seed in fuzz_targets::payload_open_bypass_seeds() {
        fuzz_targets::payload_open_bypass(&seed);
    }
}

/// Writes the seeds of the stateful targets into `fuzz/corpus/` (run once before fuzzing:
/// `cargo test -p sesame-proto --test fuzz_corpus -- --ignored write_seeds`).
#[test]
#[ignore]
fn write_seeds() {
    for (name, seeds) in [
        ("tracker_stateful", fuzz_targets::tracker_stateful_seeds()),
        (
            "payload_open_bypass",
            fuzz_targets::payload_open_bypass_seeds(),
        ),
    ] {
        let dir = fuzz_dir().join("corpus").join(name);
        fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
}
