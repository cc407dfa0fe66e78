//! The C API from C and from Python, without a network: the C program of `tests/c/` compiled
//! with gcc against the static library and run on every sequence vector, and the ctypes test of
//! `tests/python/` run against the shared library. `lab/e2e/embedding.rs` runs both again in
//! network namespaces against a real sesamed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sesame_ffi::core::{PresharedKey, PrivateKey};
use sesame_proto::Profile;
use sesame_proto::uri::ProfileUri;

/// The directory holding the libraries cargo built for this test run: the test's own
/// (`target/debug/deps`). `cargo test` does not copy them to `target/debug`, where an older
/// `cargo build` may have left others.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

fn text(o: &Output) -> String {
    format!(
        "[{}]\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The C program, compiled once, linked statically against `libsesame_ffi.a`.
fn c_program() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let archive = lib_dir().join("libsesame_ffi.a");
        assert!(archive.is_file(), "{} is missing", archive.display());
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sesame_knock_static");
        let o = Command::new("gcc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
            .arg(crate_dir.join("include"))
            .arg(crate_dir.join("tests/c/sesame_knock.c"))
            .arg(&archive)
            // What the static library needs from the system (rustc --print native-static-libs).
            .args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
                "-lc",
                "-o",
            ])
            .arg(&out)
            .output()
            .expect("gcc must be installed to test the C API");
        assert!(o.status.success(), "gcc failed: {}", text(&o));
        out
    })
}

fn vectors() -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/vectors/sequences.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

/// A URI for a vector's server and parameters, carrying the client's keys when `with_keys`.
fn vector_uri(v: &serde_json::Value, with_keys: bool) -> String {
    let p = &v["params"];
    let excl: Vec<String> = p["exclude_ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let toml = format!(
        "host = \"198.18.0.1\"\nserver_public_key = \"{}\"\nprivate_key_file = \"k\"\n\
         step_seconds = {}\nlength = {}\nport_range = [{}, {}]\nexclude_ports = [{}]\n\
         protocol = \"{}\"\nopen = [\"tcp/22\"]\n",
        v["server_public"].as_str().unwrap(),
        p["step_seconds"],
        p["length"],
        p["port_range"][0],
        p["port_range"][1],
        excl.join(", "),
        p["protocol"].as_str().unwrap(),
    );
    let key = || PrivateKey::from_base64(v["client_private"].as_str().unwrap()).unwrap();
    let psk = || {
        v["psk"]
            .as_str()
            .map(|t| PresharedKey::from_base64(t).unwrap())
    };
    ProfileUri {
        name: "laptop".into(),
        profile: Profile::parse(&toml).unwrap(),
        private_key: with_keys.then(key),
        psk: if with_keys { psk() } else { None },
    }
    .encode()
    .unwrap()
    .to_string()
}

fn expect_arg(v: &serde_json::Value) -> String {
    v["knocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| format!("{}/{}", k["proto"].as_str().unwrap(), k["port"]))
        .collect::<Vec<_>>()
        .join(",")
}

fn run_c(args: &[String]) -> Output {
    Command::new(c_program()).args(args).output().unwrap()
}

fn vector_args(v: &serde_json::Value, uri: String) -> Vec<String> {
    vec![
        "--uri".into(),
        uri,
        "--at".into(),
        v["unix_time_ms"].to_string(),
        "--expect".into(),
        expect_arg(v),
        "--payload-port".into(),
        v["payload_port"].to_string(),
    ]
}

#[test]
fn c_program_gets_every_vector_from_a_uri_with_keys() {
    for v in vectors() {
        let o = run_c(&vector_args(&v, vector_uri(&v, true)));
        assert!(o.status.success(), "{}: {}", v["name"], text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("as expected"), "{}: {out}", v["name"]);
        assert!(out.ends_with("all checks passed\n"), "{}: {out}", v["name"]);
    }
}

#[test]
fn c_program_gets_a_vector_with_keys_given_apart() {
    let v = vectors()
        .into_iter()
        .find(|v| v["name"] == "psk-tcp")
        .unwrap();
    let mut args = vector_args(&v, vector_uri(&v, false));
    args.extend([
        "--key".into(),
        v["client_private"].as_str().unwrap().into(),
        "--psk".into(),
        v["psk"].as_str().unwrap().into(),
    ]);
    let o = run_c(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(with a PSK)"),
        "{}",
        text(&o)
    );
}

#[test]
fn c_program_fails_on_wrong_ports_and_missing_keys() {
    let v = vectors()
        .into_iter()
        .find(|v| v["name"] == "default-udp")
        .unwrap();
    // One port off: the check must fail, not pass quietly.
    let mut args = vector_args(&v, vector_uri(&v, true));
    let wrong = expect_arg(&v).replacen("udp/18918", "udp/18919", 1);
    args[5] = wrong;
    let o = run_c(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("knock 1: 17/18918, expected 17/18919"),
        "{}",
        text(&o)
    );
    // Without the PSK the ports differ from the vector's: psk-tcp has one.
    let psk = vectors()
        .into_iter()
        .find(|v| v["name"] == "psk-tcp")
        .unwrap();
    let mut args = vector_args(&psk, vector_uri(&psk, false));
    args.extend([
        "--key".into(),
        psk["client_private"].as_str().unwrap().into(),
    ]);
    let o = run_c(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // No key at all: the library says so, the program stops.
    let o = run_c(&vector_args(&v, vector_uri(&v, false)));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SESAME_STATUS_ABSENT"),
        "{}",
        text(&o)
    );
}

#[test]
fn python_ctypes_test_passes() {
    let lib = lib_dir().join("libsesame_ffi.so");
    assert!(lib.is_file(), "{} is missing", lib.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_sesame.py");
    let o = Command::new("python3")
        .arg(&script)
        .arg("--lib")
        .arg(&lib)
        .env_remove("SESAME_TEST_URI")
        .output()
        .expect("python3 must be installed to test the C API from Python");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(&o));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(
        summary.contains(" passed, 0 failed") && !summary.starts_with("0 passed"),
        "{}\n{err}",
        text(&o)
    );
}
