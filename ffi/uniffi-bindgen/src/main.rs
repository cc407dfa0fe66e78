//! UniFFI's `uniffi-bindgen`, built with this workspace's version of UniFFI (the generator and
//! the library's scaffolding must be the same version). `bindings/` is its output:
//!
//! ```sh
//! cargo build -p sesame-ffi
//! cargo run -p sesame-uniffi-bindgen -- generate --no-format --library target/debug/libsesame_ffi.so \
//!     --language kotlin --out-dir bindings/kotlin/src/main/kotlin
//! ```
//!
//! `tests/generated.rs` runs it the same way and fails when the checked-in bindings differ
//! (`SESAME_REGEN_BINDINGS=1` rewrites them).

fn main() {
    uniffi::uniffi_bindgen_main()
}
