//! Replaying fuzz corpora in `cargo test`: shared by `proto/tests/fuzz_corpus.rs` and
//! `server/tests/fuzz_corpus.rs` (included there by path).

use std::fs;
use std::path::{Path, PathBuf};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The `fuzz/` directory of the repository.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs every file of `dir` through `target`; returns how many there were.
pub fn replay(dir: &Path, target: Target) -> usize {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
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

/// Every committed corpus (`fuzz/corpus/<target>/`) replays, and none is missing or empty.
pub fn replay_corpora(targets: &[(&str, Target)]) {
    for (name, target) in targets {
        let dir = fuzz_dir().join("corpus").join(name);
        assert!(dir.is_dir(), "missing corpus directory {}", dir.display());
        let n = replay(&dir, *target);
        assert!(n > 0, "empty corpus directory {}", dir.display());
    }
}

/// The reproducers of the crashes the fuzzer found (`fuzz/regressions/<target>/`) replay;
/// there is at least one.
pub fn replay_regressions(targets: &[(&str, Target)]) {
    let mut n = 0;
    for (name, target) in targets {
        let dir = fuzz_dir().join("regressions").join(name);
        if dir.is_dir() {
            n += replay(&dir, *target);
        }
    }
    assert!(n > 0, "no regressions found under {}", fuzz_dir().display());
}

/// The two replay tests (`corpus_replays`, `regressions_replay`) for a crate's targets.
macro_rules! replay_tests {
    ($targets:expr) => {
        #[test]
        fn corpus_replays() {
            $crate::corpus::replay_corpora(&$targets);
        }

        /// The reproducers of the crashes the fuzzer found, all fixed.
        #[test]
        fn regressions_replay() {
            $crate::corpus::replay_regressions(&$targets);
        }
    };
}
pub(crate) use replay_tests;
