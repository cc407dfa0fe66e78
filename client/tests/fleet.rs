//! Many servers from the client's side, without a network: `sesame import` of a file holding
//! several profiles (`sesamed export-client` outputs put together, or URI lines) installs each
//! under its host's name and records a group in `groups.toml`; `sesame open NAME NAME…` and
//! `sesame open @GROUP` check every profile before anything is sent (exit 2), and report each
//! profile on a line of its own with the worst exit status. The knocks themselves are tested
//! against two real daemons in lab/e2e/fleet.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use sesame_keys::{PresharedKey, PrivateKey};
use sesame_proto::Profile;
use sesame_proto::params::{KnockParams, KnockProtocol, LeaseKind, PayloadMode};
use sesame_proto::uri::ProfileUri;

const SESAME: &str = env!("CARGO_BIN_EXE_sesame");

use sesame_test_support::TempDir;

/// `sesame ARGS` with HOME = `home` (XDG_CONFIG_HOME unset), in `home`, with `stdin`.
fn sesame(home: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(SESAME)
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "[{}] stdout: {} stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A profile for `host` as `sesamed export-client laptop --host HOST` prints it.
fn exported(host: &str, server: &PrivateKey) -> String {
    format!(
        "# sesame profile for client 'laptop' (from sesamed export-client)\n# Put this client's private key in private_key_file (chmod 600), then: sesame open --profile THIS_FILE\nhost = \"{host}\"\nserver_public_key = \"{}\"\nprivate_key_file = \"~/.config/sesame/laptop.key\"\n# psk_file = \"...\"  (only if the server gave you a PSK)\nstep_seconds = 30\nlength = 3\nport_range = [20000, 21999]\nexclude_ports = []\nprotocol = \"udp\"\npayload = \"required\"\nopen = [\"tcp/22\"]\n",
        server.public_key()
    )
}

/// A home with the laptop's key where exported profiles look for it.
fn home(tag: &str) -> TempDir {
    let home = TempDir::new(tag);
    let dir = home.path(".config/sesame");
    std::fs::create_dir_all(&dir).unwrap();
    sesame_keys::write_private_key_file(&dir.join("laptop.key"), &PrivateKey::generate()).unwrap();
    home
}

fn installed(home: &TempDir, name: &str) -> Profile {
    let path = home.path(&format!(".config/sesame/profiles/{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Profile::parse(&text).unwrap()
}

#[test]
fn export_client_outputs_put_together_import_as_one_group() {
    let home = home("fleet-import");
    let servers: Vec<PrivateKey> = (0..3).map(|_| PrivateKey::generate()).collect();
    let fleet = [
        exported("web1.example.org", &servers[0]),
        exported("web2.example.org", &servers[1]),
        exported("198.18.0.1", &servers[2]),
    ]
    .join("\n");
    std::fs::write(home.path("prod.toml"), &fleet).unwrap();
    let o = sesame(&home.0, &["import", "prod.toml"], "");
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    for name in ["web1", "web2", "198.18.0.1"] {
        assert!(
            out.contains(&format!("installed profile '{name}' at ")),
            "{out}"
        );
    }
    // The group is named after the file; every profile uses the one laptop key.
    assert!(
        out.ends_with("group 'prod': web1, web2, 198.18.0.1 (knock with: sesame open @prod)\n"),
        "{out}"
    );
    assert!(!out.contains("does not exist yet"), "{out}");
    for (name, server) in [
        ("web1", &servers[0]),
        ("web2", &servers[1]),
        ("198.18.0.1", &servers[2]),
    ] {
        let p = installed(&home, name);
        assert_eq!(p.server_public_key, server.public_key(), "{name}");
        assert_eq!(p.private_key_file, home.path(".config/sesame/laptop.key"));
    }
    let groups = std::fs::read_to_string(home.path(".config/sesame/groups.toml")).unwrap();
    assert!(
        groups.contains("prod = [\"web1\", \"web2\", \"198.18.0.1\"]"),
        "{groups}"
    );

    // A profile added to the group later, from a file of its own; a hand edit (a comment)
    // stays.
    let groups_file = home.path(".config/sesame/groups.toml");
    std::fs::write(&groups_file, format!("{groups}# the database servers\n")).unwrap();
    std::fs::write(
        home.path("db.toml"),
        exported("db1.example.org", &PrivateKey::generate()),
    )
    .unwrap();
    let o = sesame(
        &home.0,
        &["import", "db.toml", "--name", "db1", "--group", "prod"],
        "",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("group 'prod': web1, web2, 198.18.0.1, db1"),
        "{}",
        text(&o)
    );
    let groups = std::fs::read_to_string(&groups_file).unwrap();
    assert!(groups.contains("# the database servers"), "{groups}");
    let o = sesame(&home.0, &["list"], "");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("@prod ") && l.ends_with(" web1, web2, 198.18.0.1, db1")),
        "{}",
        text(&o)
    );

    // The same file again: refused as a whole, nothing replaced; with --force it is.
    let o = sesame(&home.0, &["import", "prod.toml"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("web1.toml already exists"),
        "{}",
        text(&o)
    );
    let o = sesame(&home.0, &["import", "prod.toml", "--force"], "");
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_file_of_several_profiles_is_checked_before_anything_is_written() {
    let home = home("fleet-refusals");
    let key = PrivateKey::generate();
    let profiles = home.path(".config/sesame/profiles");
    let write = |name: &str, text: &str| std::fs::write(home.path(name), text).unwrap();

    // Names come from the hosts: --name cannot name several.
    write(
        "two.toml",
        &(exported("a.example.org", &key) + &exported("b.example.org", &key)),
    );
    let o = sesame(&home.0, &["import", "two.toml", "--name", "x"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("two.toml holds 2 profiles: each is named after its host"),
        "{}",
        text(&o)
    );
    // From standard input, the group must be named.
    let both = std::fs::read_to_string(home.path("two.toml")).unwrap();
    let o = sesame(&home.0, &["import", "-"], &both);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("standard input holds 2 profiles: name their group with --group NAME"),
        "{}",
        text(&o)
    );
    // The same host twice.
    write(
        "dup.toml",
        &(exported("a.example.org", &key) + &exported("a.example.org", &key)),
    );
    let o = sesame(&home.0, &["import", "dup.toml"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("two profiles for the host 'a.example.org'"),
        "{}",
        text(&o)
    );
    // An error in the second profile names its line in the file.
    let broken = exported("a.example.org", &key)
        + &exported("b.example.org", &key).replace("length = 3", "lenght = 3");
    write("broken.toml", &broken);
    let line = broken
        .lines()
        .position(|l| l.starts_with("lenght"))
        .unwrap()
        + 1;
    let o = sesame(&home.0, &["import", "broken.toml"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).starts_with(&format!(
            "sesame: broken.toml: line {line}: lenght: unknown field"
        )),
        "{}",
        text(&o)
    );
    assert!(
        !profiles.exists() || std::fs::read_dir(&profiles).unwrap().next().is_none(),
        "a refused import wrote a profile"
    );
    assert!(!home.path(".config/sesame/groups.toml").exists());

    // Hosts whose first labels are the same are named in full.
    write(
        "same.toml",
        &(exported("web1.a.example", &key) + &exported("web1.b.example", &key)),
    );
    let o = sesame(
        &home.0,
        &["import", "-", "--group", "ab"],
        &std::fs::read_to_string(home.path("same.toml")).unwrap(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("group 'ab': web1.a.example, web1.b.example"),
        "{}",
        text(&o)
    );
}

#[test]
fn uri_lines_import_as_a_group_sharing_the_clients_key() {
    let home = home("fleet-uris");
    let uri = |host: &str, secrets: Option<(&PrivateKey, &PresharedKey)>| {
        let profile = Profile {
            host: host.to_owned(),
            server_public_key: PrivateKey::generate().public_key(),
            private_key_file: "unused".into(),
            psk_file: None,
            params: KnockParams::new(30, 3, (20000, 21999), &[], KnockProtocol::Udp).unwrap(),
            payload: PayloadMode::Required,
            open: vec!["tcp/22".parse().unwrap()],
            stun: None,
            bind_address: true,
            lease: LeaseKind::Window,
        };
        ProfileUri {
            name: "laptop".to_owned(),
            profile,
            private_key: secrets.map(|s| s.0.clone()),
            psk: secrets.map(|s| s.1.clone()),
        }
        .encode()
        .unwrap()
        .to_string()
    };
    let (key, psk) = (PrivateKey::generate(), PresharedKey::generate());
    let lines = format!(
        "# the fleet\n{}\n\n{}\n{}\n",
        uri("web1.example.org", None),
        uri("2001:db8::7", None),
        uri("db1.example.org", Some((&key, &psk)))
    );
    let o = sesame(&home.0, &["import", "-", "--group", "prod"], &lines);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stdout(&o).contains("group 'prod': web1, 2001-db8--7, db1 (knock with: sesame open @prod)"),
        "{}",
        text(&o)
    );
    let dir = home.path(".config/sesame");
    for name in ["web1", "2001-db8--7"] {
        let p = installed(&home, name);
        assert_eq!(
            p.private_key_file,
            dir.join("laptop.key"),
            "{name}: a URI without a key uses the key of the client it names"
        );
        assert_eq!(p.psk_file, None);
    }
    // A URI that carries the keys: they are that profile's.
    let db1 = installed(&home, "db1");
    assert_eq!(db1.private_key_file, dir.join("db1.key"));
    assert_eq!(db1.psk_file, Some(dir.join("db1.psk")));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("db1.key").trim(), &*key.to_base64());
    assert_eq!(read("db1.psk").trim(), &*psk.to_base64());
}

#[test]
fn open_checks_every_profile_first_and_reports_each() {
    let home = home("fleet-open");
    let key = PrivateKey::generate();
    std::fs::write(
        home.path("lab.toml"),
        exported("198.18.0.1", &key) + &exported("2001:db8::1", &key),
    )
    .unwrap();
    let o = sesame(&home.0, &["import", "lab.toml"], "");
    assert!(o.status.success(), "{}", text(&o));

    // A dry run of the group: each profile under its name.
    let o = sesame(&home.0, &["open", "@lab", "--dry-run"], "");
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    let v4 = out.find("# 198.18.0.1\n# dry run: nothing is sent. server 198.18.0.1 ");
    let v6 = out.find("# 2001-db8--1\n# dry run: nothing is sent. server 2001:db8::1 ");
    assert!(v4.is_some() && v6.is_some() && v4 < v6, "{out}");
    assert_eq!(out.matches("payload ").count(), 2, "{out}");

    // One profile that cannot be knocked (-6 on an IPv4 server): named, exit 1, and the other
    // is knocked all the same.
    let o = sesame(&home.0, &["open", "@lab", "-6", "--dry-run"], "");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("sesame: 198.18.0.1: host '198.18.0.1' has no IPv6 address\n"),
        "{err}"
    );
    assert!(stdout(&o).contains("server 2001:db8::1 "), "{}", text(&o));

    // Names and groups together, each profile once.
    let o = sesame(&home.0, &["open", "198.18.0.1", "@lab", "--dry-run"], "");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        stdout(&o).matches("# 198.18.0.1\n").count(),
        1,
        "{}",
        text(&o)
    );

    // Usage errors stop everything before a packet is sent: exit 2.
    for (args, says) in [
        (
            &["open", "198.18.0.1", "nosuch"][..],
            "no profile named 'nosuch'",
        ),
        (&["open", "@nosuch"][..], "no group named 'nosuch'"),
        (
            &["open", "@lab", "--wait", "udp/53"][..],
            "198.18.0.1: --wait udp/53: only tcp services can be confirmed",
        ),
    ] {
        let o = sesame(&home.0, args, "");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", text(&o));
        assert!(stdout(&o).is_empty(), "{args:?}: {}", text(&o));
    }
    // A profile whose key is missing; a group that names a profile that is gone.
    let key_file = home.path(".config/sesame/laptop.key");
    std::fs::remove_file(&key_file).unwrap();
    let o = sesame(&home.0, &["open", "@lab"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).starts_with(&format!("sesame: 198.18.0.1: {}", key_file.display())),
        "{}",
        text(&o)
    );
    assert!(stdout(&o).is_empty(), "{}", text(&o));
    std::fs::remove_file(home.path(".config/sesame/profiles/2001-db8--1.toml")).unwrap();
    let o = sesame(&home.0, &["open", "@lab"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o)
            .contains("the group 'lab' names '2001-db8--1', which is not an installed profile"),
        "{}",
        text(&o)
    );
}

/// A groups file edited by hand that does not parse: one line naming the file and the line,
/// exit 2; an import that would add to it writes nothing; `sesame list` still lists the
/// profiles. A group name must be a profile-like name.
#[test]
fn a_broken_groups_file_is_named_and_an_import_into_it_writes_nothing() {
    let home = home("fleet-broken-groups");
    let key = PrivateKey::generate();
    std::fs::write(home.path("web1.toml"), exported("198.18.0.1", &key)).unwrap();
    let o = sesame(&home.0, &["import", "web1.toml"], "");
    assert!(o.status.success(), "{}", text(&o));
    let groups = home.path(".config/sesame/groups.toml");
    std::fs::write(&groups, "# mine\nprod = [\"web1\",\n").unwrap();
    let o = sesame(&home.0, &["open", "@prod", "--dry-run"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("sesame: {}: line 2: ", groups.display())),
        "{err}"
    );
    std::fs::write(home.path("db.toml"), exported("198.18.0.2", &key)).unwrap();
    let o = sesame(
        &home.0,
        &["import", "db.toml", "--name", "db1", "--group", "prod"],
        "",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("line 2: "), "{}", text(&o));
    assert!(!home.path(".config/sesame/profiles/db1.toml").exists());
    let o = sesame(&home.0, &["list"], "");
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("web1 "), "{}", text(&o));
    assert!(
        stdout(&o).contains("(groups)         invalid: "),
        "{}",
        text(&o)
    );
    // An entry that is not a list of names.
    std::fs::write(&groups, "prod = \"web1\"\n").unwrap();
    let o = sesame(&home.0, &["open", "@prod"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("groups.toml: prod: must be a list of profile names"),
        "{}",
        text(&o)
    );
    for bad in ["a b", "../x", ".hidden", ""] {
        let o = sesame(
            &home.0,
            &["import", "db.toml", "--name", "db1", "--group", bad],
            "",
        );
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
        assert!(
            stderr(&o).contains("is not a group name"),
            "{bad:?}: {}",
            text(&o)
        );
        assert!(!home.path(".config/sesame/profiles/db1.toml").exists());
    }
}
