//! `bindings/` is what UniFFI generates from the library cargo built for this test: this test
//! runs the generator (library mode, no formatter) into a scratch directory and fails when a
//! checked-in file differs, is missing, or is left over. `SESAME_REGEN_BINDINGS=1` rewrites
//! them. The Kotlin and Swift bindings come from the same library in the same run, so they
//! always describe the same API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shared library cargo built for this test run (a dev-dependency: `target/debug/deps`,
/// beside this test; `cargo test` does not copy it to `target/debug`, where an older
/// `cargo build` may have left another).
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().unwrap().join("libsesame_ffi.so");
    assert!(lib.is_file(), "{} is missing", lib.display());
    lib
}

/// The files under `dir`, relative to it.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(path.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Generates `language` into `out` with the workspace's `uniffi-bindgen`.
fn generate(language: &str, out: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .args(["generate", "--no-format", "--metadata-no-deps", "--library"])
        .arg(library())
        .args(["--language", language, "--out-dir"])
        .arg(out)
        // Library mode runs `cargo metadata` to find the crate and its uniffi.toml.
        .current_dir(root())
        .output()
        .expect("cannot run uniffi-bindgen");
    assert!(
        o.status.success(),
        "uniffi-bindgen --language {language}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Compares `generated` with the checked-in `dir` (only generated files live there), or
/// rewrites `dir` with `SESAME_REGEN_BINDINGS=1`.
fn check(language: &str, dir: &str) {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bindings-{language}"));
    let _ = std::fs::remove_dir_all(&scratch);
    generate(language, &scratch);
    let checked_in = root().join(dir);
    let new = files(&scratch);
    assert!(!new.is_empty(), "uniffi-bindgen wrote no {language} file");
    if std::env::var_os("SESAME_REGEN_BINDINGS").is_some() {
        for old in files(&checked_in) {
            std::fs::remove_file(checked_in.join(old)).unwrap();
        }
        for f in &new {
            let to = checked_in.join(f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(scratch.join(f), to).unwrap();
        }
        return;
    }
    let regen = "regenerate them with `SESAME_REGEN_BINDINGS=1 cargo test -p sesame-uniffi-bindgen` \
                 and commit them";
    let old = files(&checked_in);
    assert_eq!(
        old, new,
        "the files of {dir} are not those UniFFI generates: {regen}"
    );
    for f in &new {
        let want = std::fs::read_to_string(scratch.join(f)).unwrap();
        let have = std::fs::read_to_string(checked_in.join(f)).unwrap();
        if want != have {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .map_or_else(
                    || have.lines().count().min(want.lines().count()) + 1,
                    |i| i + 1,
                );
            panic!(
                "{dir}/{} is stale (first difference at line {line}): {regen}",
                f.display()
            );
        }
    }
}

#[test]
fn the_checked_in_kotlin_bindings_are_current() {
    check("kotlin", "bindings/kotlin/src/main/kotlin");
}

#[test]
fn the_checked_in_swift_bindings_are_current() {
    check("swift", "bindings/swift");
}
