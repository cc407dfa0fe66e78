//! The `sesame` client binary.
fn main() -> std::process::ExitCode {
    sesame_client::main()
}
