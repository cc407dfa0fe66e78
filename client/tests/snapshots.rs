//! CLI snapshot tests of `sesame` (trycmd): every case is in `tests/cmd/` (`*.md`, each a
//! sequence of commands with their expected output and exit status). Regenerate after an
//! intended change with `TRYCMD=overwrite cargo test -p sesame-client --test snapshots`, then
//! review the diff.
//!
//! The cases in `tests/cmd/home/` run with `HOME` set to an empty temporary directory (shown
//! as `[HOME]` in the snapshots) and `XDG_CONFIG_HOME` empty; after they ran,
//! [`cli_snapshots_with_a_home`] checks the files `home/import.md` installed. The other tests here check what a snapshot cannot: a URI carrying
//! every profile field survives `sesame import`, a profile imported through a relative path
//! still finds its key, the bash completion completes, the manual page renders.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sesame_keys::{PresharedKey, PrivateKey};
use sesame_proto::params::{KnockParams, KnockProtocol, LeaseKind, PayloadMode};
use sesame_proto::uri::ProfileUri;
use sesame_proto::{Profile, Service};

const SESAME: &str = env!("CARGO_BIN_EXE_sesame");

use sesame_test_support::TempDir;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(o: &Output) -> String {
    format!(
        "[{}] stdout: {} stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `sesame ARGS` with HOME set and XDG_CONFIG_HOME unset, in `cwd`.
fn sesame(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(SESAME)
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap()
}

/// The RFC 7748 private key of Alice, which `import.md` installs as the phone's key.
const ALICE_PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
/// The PSK carried by the `vpn` URI of `import.md` (bytes 0 to 31).
const VPN_PSK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The cases that need no home directory: each command of them that reads profiles sets HOME
/// (to a directory that does not exist) and XDG_CONFIG_HOME itself.
#[test]
fn cli_snapshots() {
    trycmd::TestCases::new()
        .register_bin("sesame", Path::new(SESAME))
        .env("NO_COLOR", "1")
        .env("CLICOLOR_FORCE", "0")
        .env("RUST_BACKTRACE", "0")
        .case("tests/cmd/*.md")
        .run();
}

/// The cases in `tests/cmd/home/` run with HOME set to an empty temporary directory (`[HOME]`
/// in the snapshots; trycmd's defaults override a command's own `VAR=value`, so these are kept
/// apart), then the files they wrote are checked.
#[test]
fn cli_snapshots_with_a_home() {
    let home = TempDir::new("home");
    let home_str = home.0.to_str().expect("temporary path is UTF-8").to_owned();
    let cases = trycmd::TestCases::new();
    cases
        .register_bin("sesame", Path::new(SESAME))
        .env("HOME", home_str.clone())
        .env("XDG_CONFIG_HOME", "")
        .env("NO_COLOR", "1")
        .env("CLICOLOR_FORCE", "0")
        .env("RUST_BACKTRACE", "0")
        .case("tests/cmd/home/*.md");
    cases.insert_var("[HOME]", home_str).unwrap();
    cases.run();

    // What import.md installed.
    let dir = home.path(".config/sesame");
    let profiles = dir.join("profiles");
    assert_eq!(mode(&profiles), 0o700, "the profiles directory is private");
    let mut names: Vec<String> = std::fs::read_dir(&profiles)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "laptop.toml",
            "office.toml",
            "phone.toml",
            "vpn.toml",
            "work.toml"
        ]
    );
    for n in &names {
        assert_eq!(mode(&profiles.join(n)), 0o600, "{n}");
    }
    let key = dir.join("phone.key");
    assert_eq!(mode(&key), 0o600, "the private key from the URI is 0600");
    assert_eq!(read(&key).trim(), ALICE_PRIVATE);
    let psk = dir.join("vpn.psk");
    assert_eq!(mode(&psk), 0o600, "the PSK from the URI is 0600");
    assert_eq!(read(&psk).trim(), VPN_PSK);
    assert!(
        !dir.join("laptop.key").exists() && !dir.join("vpn.key").exists(),
        "no key is invented for a URI without one"
    );

    // The installed profiles are complete profiles pointing at absolute key paths.
    let load = |name: &str| -> Profile {
        Profile::parse(&read(&profiles.join(format!("{name}.toml"))))
            .unwrap_or_else(|e| panic!("installed profile {name}: {e}"))
    };
    let phone = load("phone");
    assert_eq!(phone.private_key_file, key);
    assert_eq!(phone.psk_file, None);
    let work = load("work");
    assert_eq!(
        work.private_key_file, key,
        "`~/` in an imported file is expanded at import"
    );
    assert_eq!(work.server_public_key, phone.server_public_key);
    let vpn = load("vpn");
    assert_eq!(vpn.psk_file.as_deref(), Some(psk.as_path()));
    assert_eq!(vpn.host, "ssh.example.org");
    let laptop = load("laptop");
    assert_eq!(laptop.private_key_file, dir.join("laptop.key"));
    assert_eq!(load("office").server_public_key, laptop.server_public_key);
}

/// A URI that sets every profile field to a non-default value, with a private key and a PSK,
/// installs a profile equal to the original, and the secrets with mode 0600.
#[test]
fn a_uri_carries_every_profile_field() {
    let home = TempDir::new("every");
    let server = PrivateKey::generate();
    let client = PrivateKey::generate();
    let psk = PresharedKey::generate();
    let params =
        KnockParams::new(45, 5, (40000, 40999), &[40022, 40443], KnockProtocol::Mixed).unwrap();
    let profile = Profile {
        host: "2001:db8::1".to_owned(),
        server_public_key: server.public_key(),
        private_key_file: PathBuf::from("unused"),
        psk_file: None,
        params,
        payload: PayloadMode::Optional,
        open: vec![
            "tcp/22".parse::<Service>().unwrap(),
            "udp/51820".parse().unwrap(),
            "tcp/8443".parse().unwrap(),
        ],
        stun: Some("[2001:db8::3478]:3479".to_owned()),
        bind_address: false,
        lease: LeaseKind::Connection,
    };
    let uri = ProfileUri {
        name: "every-field_1.0".to_owned(),
        profile: profile.clone(),
        private_key: Some(client.clone()),
        psk: Some(psk.clone()),
    }
    .encode()
    .unwrap();
    assert!(uri.starts_with("sesame://2/"), "{}", &*uri);
    assert!(
        uri["sesame://2/".len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "compact base64url without padding: {}",
        &*uri
    );
    let o = sesame(&home.0, &home.0, &["import", &uri]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = home.path(".config/sesame");
    let installed = Profile::parse(&read(&dir.join("profiles/every-field_1.0.toml"))).unwrap();
    assert_eq!(installed.host, profile.host);
    assert_eq!(installed.server_public_key, profile.server_public_key);
    assert_eq!(installed.params, profile.params);
    assert_eq!(installed.payload, profile.payload);
    assert_eq!(installed.open, profile.open);
    assert_eq!(installed.stun, profile.stun);
    assert_eq!(installed.bind_address, profile.bind_address);
    assert_eq!(installed.lease, LeaseKind::Connection);
    assert_eq!(installed.private_key_file, dir.join("every-field_1.0.key"));
    assert_eq!(
        installed.psk_file.as_deref(),
        Some(dir.join("every-field_1.0.psk").as_path())
    );
    let key = read(&installed.private_key_file);
    assert_eq!(key.trim(), &*client.to_base64());
    assert_eq!(mode(&installed.private_key_file), 0o600);
    let psk_file = installed.psk_file.unwrap();
    assert_eq!(read(&psk_file).trim(), &*psk.to_base64());
    assert_eq!(mode(&psk_file), 0o600);
    // The same URI without secrets carries no key: the profile still names where it goes.
    let public = ProfileUri {
        name: "nokey".to_owned(),
        profile,
        private_key: None,
        psk: None,
    }
    .encode()
    .unwrap();
    assert!(
        public.len() + 80 < uri.len(),
        "a URI without secrets is shorter by two 32-byte keys"
    );
    let o = sesame(&home.0, &home.0, &["import", &public]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!dir.join("nokey.key").exists());
}

/// `sesame import DIR/profile.toml` where the profile names its key relative to itself
/// (`private_key_file = "client.key"`): the installed copy must still find that key.
#[test]
fn import_through_a_relative_path_keeps_the_key_reachable() {
    let home = TempDir::new("relhome");
    let work = TempDir::new("relwork");
    let sub = work.path("from-admin");
    std::fs::create_dir_all(&sub).unwrap();
    let client = PrivateKey::generate();
    sesame_keys::write_private_key_file(&sub.join("client.key"), &client).unwrap();
    let server = PrivateKey::generate().public_key();
    std::fs::write(
        sub.join("srv.toml"),
        format!(
            "host = \"198.18.0.1\"\nserver_public_key = \"{server}\"\nprivate_key_file = \"client.key\"\nport_range = [20000, 21999]\nopen = [\"tcp/22\"]\n"
        ),
    )
    .unwrap();
    let o = sesame(&home.0, &work.0, &["import", "from-admin/srv.toml"]);
    assert!(o.status.success(), "{}", text(&o));
    let installed = Profile::parse(&read(&home.path(".config/sesame/profiles/srv.toml"))).unwrap();
    assert!(
        installed.private_key_file.is_absolute(),
        "sesame import from-admin/srv.toml (private_key_file = \"client.key\") installed private_key_file = {:?}: a relative path, which later resolves against the profiles directory instead of from-admin/",
        installed.private_key_file
    );
    assert_eq!(
        std::fs::canonicalize(&installed.private_key_file).ok(),
        std::fs::canonicalize(sub.join("client.key")).ok()
    );
    // And from anywhere else, the profile works by name.
    let o = sesame(
        &home.0,
        Path::new("/"),
        &["ports", "srv", "--at", "2026-01-01T00:00:00Z"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = sesame(&home.0, Path::new("/"), &["list"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("key ok"), "{out}");
}

/// The bash completion script loads into bash and completes subcommands and options.
#[test]
fn bash_completion_completes() {
    let script = r#"
        source <("$SESAME" completions bash) || exit 3
        complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=();
            _sesame "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}";
            echo "${COMPREPLY[*]}"; }
        complete_words sesame im
        complete_words sesame open --w
        complete_words sesame pro
        complete -p sesame
    "#;
    let o = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("SESAME", SESAME)
        .output()
        .expect("bash is installed");
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "import", "{out}");
    assert_eq!(lines[1], "--wait", "{out}");
    assert_eq!(lines[2], "proxy", "{out}");
    assert!(
        lines[3].contains("_sesame") && lines[3].ends_with(" sesame"),
        "{out}"
    );
}

/// The manual page is valid roff: groff renders it without warnings, with every subcommand.
#[test]
fn man_page_renders() {
    let o = Command::new(SESAME).arg("man").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let page = String::from_utf8(o.stdout).unwrap();
    assert!(page.contains(".TH sesame 1"), "{page}");
    sesame_test_support::assert_man_page_renders(
        &page,
        "sesame.1",
        &[
            "genkey",
            "pubkey",
            "genpsk",
            "open",
            "ports",
            "import",
            "list",
            "proxy",
            "completions",
            "man",
        ],
    );
}
