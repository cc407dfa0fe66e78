//! Tests of `sesamed check` and `sesamed export-client` as an admin runs them.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use sesame_keys::PrivateKey;

const SESAMED: &str = env!("CARGO_BIN_EXE_sesamed");

use sesame_test_support::TempDir as Dir;

fn sesamed(args: &[&str]) -> Output {
    Command::new(SESAMED).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A valid configuration with two clients; `edit` changes its text.
fn setup(tag: &str, edit: impl Fn(String) -> String) -> (Dir, PathBuf, PrivateKey) {
    let dir = Dir::new(tag);
    let server = PrivateKey::generate();
    sesame_keys::write_private_key_file(&dir.path("server.key"), &server).unwrap();
    sesame_keys::write_secret_file(
        &dir.path("phone.psk"),
        &sesame_keys::PresharedKey::generate().to_base64(),
    )
    .unwrap();
    let laptop = PrivateKey::generate().public_key();
    let phone = PrivateKey::generate().public_key();
    // The configuration the tests share (also the `config_parse` fuzz seeds').
    let text = include_str!("data/sesamed-test.toml")
        .replace("LAPTOP_PUBLIC_KEY", &laptop.to_string())
        .replace("PHONE_PUBLIC_KEY", &phone.to_string());
    let path = dir.path("sesamed.toml");
    std::fs::write(&path, edit(text)).unwrap();
    (dir, path, server)
}

#[test]
fn a_valid_configuration_checks_ok() {
    let (_d, path, _) = setup("ok", |t| t);
    let o = sesamed(&["check", "--config", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("2 clients"), "{out}");
}

/// What is wrong, how to make the configuration wrong, and what the error must say.
type Case = (
    &'static str,
    Box<dyn Fn(String) -> String>,
    &'static [&'static str],
);

#[test]
fn validation_errors_exit_2_with_file_key_and_reason() {
    let cases: Vec<Case> = vec![
        (
            "protected port inside the knock range",
            Box::new(|t| {
                t.replace(
                    "protect = [\"tcp/22\", \"udp/51820\"]",
                    "protect = [\"tcp/22\", \"tcp/12345\"]",
                )
            }),
            &["firewall.protect", "tcp/12345", "inside knock.port_range"],
        ),
        (
            "duplicate client keys",
            Box::new(|t| {
                let first = t.split("public_key = \"").nth(1).unwrap()[..44].to_owned();
                let second = t.split("public_key = \"").nth(2).unwrap()[..44].to_owned();
                t.replace(&second, &first)
            }),
            &[
                "client.public_key",
                "'laptop' and 'phone'",
                "same public key",
            ],
        ),
        (
            "range smaller than the sequence needs",
            Box::new(|t| t.replace("port_range = [10000, 32767]", "port_range = [10000, 10006]")),
            &["knock.port_range", "usable ports"],
        ),
        (
            "bad prefix",
            Box::new(|t| t.replace("198.18.0.0/15", "198.18.0.0/33")),
            &["client.source", "198.18.0.0/33"],
        ),
        (
            "unknown key",
            Box::new(|t| t.replace("lease_seconds = 30", "lease_secs = 30")),
            &["firewall.lease_secs", "unknown field"],
        ),
        (
            "bad key text",
            Box::new(|t| t.replacen("public_key = \"", "public_key = \"x", 1)),
            &["client.public_key", "laptop", "44 base64"],
        ),
        (
            "allow outside protect",
            Box::new(|t| t.replace("allow = [\"tcp/22\"]", "allow = [\"tcp/23\"]")),
            &["client.allow", "tcp/23", "not in firewall.protect"],
        ),
        (
            "command backend without a command",
            Box::new(|t| t.replace("backend = \"nftables\"", "backend = \"command\"")),
            &["firewall.open_command"],
        ),
        (
            "bad expiry",
            Box::new(|t| t.replace("2030-01-01T00:00:00Z", "next year")),
            &["client.expires", "RFC 3339"],
        ),
        (
            "missing server key file",
            Box::new(|t| t.replace("\"server.key\"", "\"missing.key\"")),
            &["private_key_file", "missing.key"],
        ),
    ];
    for (what, edit, needles) in cases {
        let (_d, path, _) = setup("bad", edit);
        let o = sesamed(&["check", "--config", path.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
        assert!(
            err.contains("sesamed.toml"),
            "{what}: names the file: {err}"
        );
        for n in needles {
            assert!(err.contains(n), "{what}: '{n}' missing in: {err}");
        }
    }
}

#[test]
fn too_open_key_files_are_refused() {
    let (d, path, _) = setup("perm", |t| t);
    for file in ["server.key", "phone.psk"] {
        std::fs::set_permissions(d.path(file), std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = sesamed(&["check", "--config", path.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(file) && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(d.path(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn export_client_prints_a_profile_the_client_reads() {
    let (d, path, server) = setup("export", |t| t);
    let o = sesamed(&[
        "export-client",
        "--config",
        path.to_str().unwrap(),
        "phone",
        "--host",
        "vpn.example.org",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let profile = sesame_proto::Profile::parse(&text).unwrap();
    assert_eq!(profile.host, "vpn.example.org");
    assert_eq!(profile.server_public_key, server.public_key());
    assert_eq!(
        profile.private_key_file,
        PathBuf::from("~/.config/sesame/phone.key")
    );
    assert_eq!(
        profile.psk_file,
        Some(PathBuf::from("~/.config/sesame/phone.psk"))
    );
    assert_eq!(
        profile.params.protocol,
        sesame_proto::params::KnockProtocol::Mixed
    );
    assert_eq!(profile.params.exclude_ports(), &[10022]);
    assert_eq!(profile.open.len(), 2, "phone may open everything protected");
    assert!(
        !text.contains(&*server.to_base64()),
        "no private key in the profile"
    );
    let o = sesamed(&[
        "export-client",
        "--config",
        path.to_str().unwrap(),
        "tablet",
        "--host",
        "h",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("laptop, phone"), "{}", stderr(&o));
    drop(d);
}

/// The profile says when the server's leases admit one connection per knock (`[firewall]
/// lease = "connection"`), in TOML and in the URI, so that the client does not spend them
/// checking knocks; with the default "window" it says nothing (older clients read it).
#[test]
fn export_client_carries_a_connection_lease() {
    let export = |path: &PathBuf, uri: bool| {
        let mut args = vec![
            "export-client",
            "--config",
            path.to_str().unwrap(),
            "laptop",
            "--host",
            "198.18.0.1",
        ];
        if uri {
            args.push("--uri");
        }
        let o = sesamed(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let (_d, window, _) = setup("export-window", |t| t);
    let text = export(&window, false);
    assert!(!text.contains("lease"), "{text}");
    let uri = sesame_proto::uri::ProfileUri::decode(&export(&window, true)).unwrap();
    assert_eq!(uri.profile.lease, sesame_proto::params::LeaseKind::Window);
    let (_d, connection, _) = setup("export-connection", |t| {
        t.replace(
            "lease_seconds = 30",
            "lease = \"connection\"\nlease_seconds = 30",
        )
    });
    let text = export(&connection, false);
    let profile = sesame_proto::Profile::parse(&text).unwrap();
    assert_eq!(
        profile.lease,
        sesame_proto::params::LeaseKind::Connection,
        "{text}"
    );
    assert!(text.contains("\nlease = \"connection\"\n"), "{text}");
    let uri = sesame_proto::uri::ProfileUri::decode(&export(&connection, true)).unwrap();
    assert_eq!(uri.profile, profile);
}

/// `sesamed genkey` (what the Debian package makes the server's key with): a new key each
/// time, in the format key files hold, that `sesamed check` accepts as private_key_file; a
/// warning when it goes to a file that others can read.
#[test]
fn genkey_makes_a_key_that_check_accepts() {
    let (dir, config, _) = setup("genkey", |t| t);
    let sh = |script: &str| {
        Command::new("sh")
            .args(["-c", script])
            .current_dir(dir.path(""))
            .env("SESAMED", SESAMED)
            .output()
            .unwrap()
    };
    let o = sh("umask 077; \"$SESAMED\" genkey > server.key");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let made = sesame_keys::read_private_key_file(&dir.path("server.key")).unwrap();
    let again = sesamed(&["genkey"]);
    let again = String::from_utf8(again.stdout).unwrap();
    assert_ne!(again.trim(), &*made.to_base64(), "the same key twice");
    let o = sesamed(&["check", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sh("umask 022; \"$SESAMED\" genkey > open.key");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "warning: writing a private key to a file that group or others can read (mode 0644)"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_with_a_bad_config_exits_2() {
    let (_d, path, _) = setup("run", |t| t.replace("length = 3", "length = 30"));
    let o = sesamed(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("knock.length"), "{}", stderr(&o));
}

/// `sesamed completions bash | head`, `sesamed export-client … | head` quit early: sesamed
/// ends quietly, killed by SIGPIPE like any Unix tool, instead of panicking or printing an
/// error about the closed pipe. (The reader is closed before sesamed writes.)
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (dir, config, _) = setup("sigpipe", |t| t);
    let config = config.to_string_lossy().into_owned();
    let cases: [&[&str]; 3] = [
        &["completions", "bash"],
        &["man"],
        &[
            "export-client",
            "laptop",
            "--config",
            &config,
            "--host",
            "198.18.0.1",
            "--qr",
        ],
    ];
    for args in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(SESAMED)
            .args(args)
            .current_dir(&dir.0)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(
            o.status.signal(),
            Some(13),
            "{args:?}: {:?} {err}",
            o.status
        );
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
