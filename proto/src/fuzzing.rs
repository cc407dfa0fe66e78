//! Fuzzing-only hooks (compiled only with `--cfg fuzzing`); the target bodies are in `fuzz_targets`.
