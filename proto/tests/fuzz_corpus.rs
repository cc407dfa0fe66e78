//! Replays the committed fuzzing corpus (`fuzz/corpus/<target>/`) and any crash reproducers
//! (`fuzz/regressions/<target>/`) through the fuzz target bodies, so a plain `cargo test`
//! catches a regression on any input the fuzzer has ever kept.

use std::fs;
use std::path::{Path, PathBuf};

use sesame_proto::fuzz_targets;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("payload_open", fuzz_targets::payload_open),
    ("plaintext_decode", fuzz_targets::plaintext_decode),
    ("key_parse", fuzz_targets::key_parse),
    ("profile_parse", fuzz_targets::profile_parse),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs every file of `dir` through `target`; returns how many there were.
fn replay(dir: &Path, target: Target) -> usize {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // A panic names the file, so a failure here can be reproduced with `cargo fuzz run`.
        eprintln!("replaying {}", path.display());
        target(&data);
    }
    files.len()
}

#[test]
fn corpus_replays() {
    for (name, target) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        assert!(dir.is_dir(), "missing corpus directory {}", dir.display());
        let n = replay(&dir, target);
        assert!(n > 0, "empty corpus directory {}", dir.display());
    }
}

#[test]
fn regressions_replay() {
    for (name, target) in TARGETS {
        let dir = fuzz_dir().join("regressions").join(name);
        if dir.is_dir() {
            replay(&dir, target);
        }
    }
}
