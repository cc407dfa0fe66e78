//! `include/sesame.h` is what cbindgen makes of `src/c_api.rs` with `cbindgen.toml`: this test
//! regenerates it and fails when the checked-in header differs (`SESAME_REGEN_HEADER=1`
//! rewrites it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

#[test]
fn the_checked_in_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen cannot read the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = dir.join("include/sesame.h");
    if std::env::var_os("SESAME_REGEN_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let line = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || current.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "ffi/include/sesame.h is stale (first difference at line {line}): regenerate it with \
             `SESAME_REGEN_HEADER=1 cargo test -p sesame-ffi --test header` and commit it"
        );
    }
}
