//! The `sesamed` daemon binary.
fn main() -> std::process::ExitCode {
    sesame_server::main()
}
