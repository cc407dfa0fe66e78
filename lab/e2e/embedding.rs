//! The embedding library (`sesame-ffi`) against a real sesamed: a C program built with gcc
//! against `libsesame_ffi.so`, the Python ctypes test, and the Kotlin bindings' test on the JVM
//! (Maven, JNA), each run in the client namespace. Each imports the URI `sesamed export-client
//! --uri` printed, checks the ports of the test vector `default-udp` (the server and the client
//! use that vector's keys and parameters), and knocks; sesamed must grant and the client must
//! then connect.
//!
//! The URI carries no private key (the server did not make it): as an app would, the programs
//! get the client's key apart.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sesame_tests::{Family, Host, Key, bin_dir, require_netns, text};

use crate::common::{Fixture, assert_line_has};

/// The `default-udp` sequence vector: keys, time and the ports they give.
struct Vector {
    server_private: String,
    server_public: String,
    client_private: String,
    client_public: String,
    at_ms: u64,
    knocks: String,
    payload_port: u64,
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn default_udp() -> Vector {
    let path = repo().join("proto/tests/vectors/sequences.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let v = doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "default-udp")
        .expect("the default-udp vector")
        .clone();
    let p = &v["params"];
    // The lab's sesamed runs with exactly these parameters (the profile's defaults).
    assert_eq!(
        (
            &p["step_seconds"],
            &p["length"],
            &p["port_range"],
            &p["protocol"]
        ),
        (
            &serde_json::json!(30),
            &serde_json::json!(3),
            &serde_json::json!([10000, 32767]),
            &serde_json::json!("udp")
        )
    );
    assert!(v["psk"].is_null() && p["exclude_ports"] == serde_json::json!([]));
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    Vector {
        server_private: s("server_private"),
        server_public: s("server_public"),
        client_private: s("client_private"),
        client_public: s("client_public"),
        at_ms: v["unix_time_ms"].as_u64().unwrap(),
        knocks: v["knocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| format!("{}/{}", k["proto"].as_str().unwrap(), k["port"]))
            .collect::<Vec<_>>()
            .join(","),
        payload_port: v["payload_port"].as_u64().unwrap(),
    }
}

/// The directory holding `libsesame_ffi.so` as cargo built it for this test run (a dependency
/// of this package: `target/debug/deps`).
fn lib_dir() -> PathBuf {
    let dir = bin_dir().join("deps");
    assert!(
        dir.join("libsesame_ffi.so").is_file(),
        "libsesame_ffi.so is missing from {}: `cargo test -p sesame-tests` builds it",
        dir.display()
    );
    dir
}

/// A lab whose sesamed and `laptop` use the vector's keys and parameters; started.
fn vector_fixture(tag: &str, v: &Vector) -> Fixture {
    let mut f = Fixture::new(tag);
    let path = f.lab.write_secret("server.key", &v.server_private);
    f.server_key = Key {
        path,
        public: v.server_public.clone(),
    };
    let path = f.lab.write_secret("laptop.key", &v.client_private);
    f.client_key = Key {
        path,
        public: v.client_public.clone(),
    };
    f.client().public_key = v.client_public.clone();
    f.spec.knock.port_range = (10000, 32767);
    f.start();
    f
}

/// `sesamed export-client laptop --host SERVER --uri`.
fn export_uri(f: &Fixture) -> String {
    let host = f.server(Family::V4).to_string();
    let o = f.lab.sesamed(&[
        "export-client".as_ref(),
        "--config".as_ref(),
        f.config.as_os_str(),
        "laptop".as_ref(),
        "--host".as_ref(),
        host.as_ref(),
        "--uri".as_ref(),
    ]);
    assert!(o.status.success(), "sesamed export-client: {}", text(&o));
    let uri = String::from_utf8(o.stdout).unwrap().trim().to_owned();
    assert!(uri.starts_with("sesame://2/"), "not a URI: {uri}");
    uri
}

/// Runs `program ARGS` in the client namespace with `envs`.
fn in_client(f: &Fixture, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", f.lab.ns(Host::Client)])
        .arg(program)
        .args(args)
        .envs(envs.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // cargo's LD_LIBRARY_PATH for tests lists target/debug before target/debug/deps, and
        // would win over the program's rpath: a `cargo build` may have left an older library
        // there.
        .env_remove("LD_LIBRARY_PATH")
        .current_dir(&f.lab.dir);
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// After a knock from the client: sesamed grants tcp/22 to the client, and it connects.
fn assert_granted(f: &Fixture, mark: usize) {
    let client = f.lab.addr(Host::Client, Family::V4);
    let line = f.expect_grant(mark, client);
    assert_line_has(&line, &[&format!("address={client}"), "services=tcp/22"]);
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "after the library's knock the client must connect; ruleset:\n{}",
        f.lab.server_ruleset()
    );
}

#[test]
fn c_program_imports_the_exported_uri_and_knocks() {
    if !require_netns() {
        return;
    }
    let v = default_udp();
    let f = vector_fixture("ffi-c", &v);
    let uri = export_uri(&f);
    f.assert_closed(Family::V4, 22, "before the knock");

    let dir = lib_dir();
    let program = f.lab.path("sesame_knock");
    let o = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(repo().join("ffi/include"))
        .arg(repo().join("ffi/tests/c/sesame_knock.c"))
        .arg("-L")
        .arg(&dir)
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .args(["-lsesame_ffi", "-o"])
        .arg(&program)
        .output()
        .expect("gcc must be installed for the embedding tests");
    assert!(o.status.success(), "gcc: {}", text(&o));

    let client = f.lab.v4(Host::Client).to_string();
    let at = v.at_ms.to_string();
    let payload_port = v.payload_port.to_string();
    let mark = f.mark();
    let o = in_client(
        &f,
        &program,
        &[
            "--uri",
            &uri,
            "--key",
            &v.client_private,
            "--at",
            &at,
            "--expect",
            &v.knocks,
            "--payload-port",
            &payload_port,
            "--knock",
            "--address",
            &client,
        ],
        &[],
    );
    assert!(o.status.success(), "the C program failed: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for part in [
        "profile laptop: host ",
        "3 knocks and payload port 14118 as expected",
        "knock sent to",
        "all checks passed",
    ] {
        assert!(
            out.contains(part),
            "the C program did not say `{part}`: {out}"
        );
    }
    assert_granted(&f, mark);
}

#[test]
fn python_imports_the_exported_uri_and_knocks() {
    if !require_netns() {
        return;
    }
    let v = default_udp();
    let f = vector_fixture("ffi-py", &v);
    let uri = export_uri(&f);
    f.assert_closed(Family::V4, 22, "before the knock");

    let lib = lib_dir().join("libsesame_ffi.so");
    let script = repo().join("ffi/tests/python/test_sesame.py");
    let lib_arg = lib.to_string_lossy().into_owned();
    let script_arg = script.to_string_lossy().into_owned();
    let mark = f.mark();
    // Unbound (no SESAME_TEST_ADDRESS): the server opens the address the packets come from.
    let o = in_client(
        &f,
        Path::new("python3"),
        &[&script_arg, "--lib", &lib_arg, "-v"],
        &[
            ("SESAME_TEST_URI", uri.as_str()),
            ("SESAME_TEST_KEY", v.client_private.as_str()),
            ("SESAME_TEST_VECTOR", "default-udp"),
            ("SESAME_TEST_KNOCK", "1"),
        ],
    );
    assert!(o.status.success(), "the Python test failed: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for part in [
        "test_uri_from_sesamed_ports_and_knock",
        "default-udp: ports ['udp/18918', 'udp/13386', 'udp/21002'] and payload port 14118",
        "knock sent to",
    ] {
        assert!(
            err.contains(part),
            "the Python test did not say `{part}`: {err}"
        );
    }
    assert!(
        !err.contains("test_uri_from_sesamed_ports_and_knock (__main__.Deployment.test_uri_from_sesamed_ports_and_knock) ... skipped"),
        "the deployment test was skipped: {err}"
    );
    assert_granted(&f, mark);
}

#[test]
fn kotlin_imports_the_exported_uri_and_knocks() {
    if !require_netns() {
        return;
    }
    let v = default_udp();
    // The namespace has no route out. Maven first runs here, outside it: it fetches what it
    // needs from Maven Central (nothing when .ci/run's Kotlin step already has) and compiles,
    // and the test skips itself without SESAME_TEST_URI. In the namespace it runs offline.
    let pom = repo().join("bindings/kotlin/pom.xml");
    let lib = lib_dir().join("libsesame_ffi.so");
    let maven_args = [
        "--batch-mode".to_owned(),
        "--no-transfer-progress".to_owned(),
        "--file".to_owned(),
        pom.to_string_lossy().into_owned(),
        "test".to_owned(),
        "-Dtest=DeploymentTest".to_owned(),
        format!("-Dsesame.lib={}", lib.display()),
    ];
    let o = Command::new("mvn")
        .args(&maven_args)
        .env_remove("SESAME_TEST_URI")
        .output()
        .expect("the Kotlin test needs Maven (mvn) and a JDK");
    assert!(
        o.status.success(),
        "Maven, outside the namespace: {}",
        text(&o)
    );
    let f = vector_fixture("ffi-kt", &v);
    let uri = export_uri(&f);
    f.assert_closed(Family::V4, 22, "before the knock");

    let client = f.lab.v4(Host::Client).to_string();
    let mark = f.mark();
    // Bound: the knock names the client's address.
    let o = in_client(
        &f,
        Path::new("mvn"),
        &maven_args
            .iter()
            .map(String::as_str)
            .chain(["--offline"])
            .collect::<Vec<_>>(),
        &[
            ("SESAME_TEST_URI", uri.as_str()),
            ("SESAME_TEST_KEY", v.client_private.as_str()),
            ("SESAME_TEST_VECTOR", "default-udp"),
            ("SESAME_TEST_KNOCK", "1"),
            ("SESAME_TEST_ADDRESS", client.as_str()),
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "the Kotlin test failed in the namespace: {}",
        text(&o)
    );
    for part in [
        "profile laptop: host ",
        "default-udp: ports [udp/18918, udp/13386, udp/21002] and payload port 14118 as in the vectors",
        &format!("knock sent to {}, payload port ", f.server(Family::V4)),
        "Tests run: 1, Failures: 0, Errors: 0, Skipped: 0",
    ] {
        assert!(
            out.contains(part),
            "the Kotlin test did not say `{part}`: {out}"
        );
    }
    assert_granted(&f, mark);
}
