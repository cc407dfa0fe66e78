//! What the shared library exports (BENCHMARKS.md, docs/EMBEDDING.md): the `sesame_*` functions
//! of `include/sesame.h`, exactly, and UniFFI's scaffolding for the Kotlin and Swift bindings
//! (`uniffi_sesame_ffi_*` and `ffi_sesame_ffi_*` functions, `UNIFFI_META_*` metadata that the
//! generator reads); nothing else. Read with `nm -D` (binutils).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

#[test]
fn the_library_exports_the_c_api_and_the_uniffi_scaffolding_only() {
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().unwrap().join("libsesame_ffi.so");
    assert!(lib.is_file(), "{} is missing", lib.display());
    let o = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) must be installed to read the library's symbols");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut c_api = BTreeSet::new();
    let mut uniffi = 0;
    let mut meta = 0;
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        let mut fields = line.split_whitespace().rev();
        let (Some(name), Some(kind)) = (fields.next(), fields.next()) else {
            continue;
        };
        if name.starts_with("sesame_") && kind == "T" {
            c_api.insert(name.to_owned());
        } else if (name.starts_with("uniffi_sesame_ffi_") || name.starts_with("ffi_sesame_ffi_"))
            && kind == "T"
        {
            uniffi += 1;
        } else if name.starts_with("UNIFFI_META_") && kind == "R" {
            meta += 1;
        } else {
            panic!("the library exports `{line}`, which is neither the C API nor UniFFI's");
        }
    }
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/sesame.h"))
            .unwrap();
    // The functions the header declares: `sesame_NAME(` anywhere in it.
    let mut declared = BTreeSet::new();
    for (i, _) in header.match_indices("sesame_") {
        let name: String = header[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let before = header[..i].chars().next_back();
        let word_start = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if word_start && header[i + name.len()..].starts_with('(') {
            declared.insert(name);
        }
    }
    assert_eq!(
        c_api, declared,
        "the C functions exported are not the header's"
    );
    assert!(
        uniffi > 0 && meta > 0,
        "no UniFFI scaffolding ({uniffi} functions, {meta} metadata)"
    );
    eprintln!(
        "exported: {} sesame_* functions, {uniffi} UniFFI functions, {meta} UniFFI metadata",
        c_api.len()
    );
}
