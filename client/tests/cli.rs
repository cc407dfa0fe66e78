//! Tests of the `sesame` binary as a user runs it.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SESAME: &str = env!("CARGO_BIN_EXE_sesame");

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

use sesame_test_support::TempDir;

fn run(args: &[&str], stdin: Option<&str>, dir: &Path) -> Output {
    let mut child = Command::new(SESAME)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn sh(script: &str, dir: &Path) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("SESAME", SESAME)
        .output()
        .unwrap()
}

#[test]
fn genkey_pubkey_pipeline_like_wg() {
    let dir = TempDir::new("wg");
    let o = sh(
        "umask 077; \"$SESAME\" genkey | tee k | \"$SESAME\" pubkey",
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let public = stdout(&o);
    assert_eq!(public.trim_end().len(), 44, "{public}");
    assert!(public.ends_with('\n'));
    let key_file = dir.path("k");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        stderr(&o).is_empty(),
        "no warning with umask 077: {}",
        stderr(&o)
    );
    // The same public key as `wg pubkey` (WireGuard tools are installed in CI).
    let wg = sh("wg pubkey < k", &dir.0);
    if wg.status.success() {
        assert_eq!(stdout(&wg), public);
    } else {
        assert!(!in_ci(), "wg is missing in CI: {}", stderr(&wg));
        eprintln!("skipping the wg comparison: wg is not installed");
    }
    // And the other way round: a key made by `wg genkey` is read by `sesame pubkey`.
    let o = sh(
        "wg genkey > w 2>/dev/null && wg pubkey < w && \"$SESAME\" pubkey < w",
        &dir.0,
    );
    if o.status.success() {
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], lines[1]);
    } else {
        assert!(!in_ci(), "wg genkey failed in CI: {}", stderr(&o));
    }
}

#[test]
fn rfc7748_key_through_the_cli() {
    let dir = TempDir::new("rfc");
    let o = run(
        &["pubkey"],
        Some("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n"),
        &dir.0,
    );
    assert!(o.status.success());
    assert_eq!(stdout(&o), "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n");
}

#[test]
fn genkey_warns_about_world_readable_files() {
    let dir = TempDir::new("warn");
    let o = sh(
        "umask 022; \"$SESAME\" genkey > k; \"$SESAME\" genpsk > p",
        &dir.0,
    );
    assert!(o.status.success());
    let err = stderr(&o);
    assert_eq!(err.matches("warning").count(), 2, "{err}");
    assert!(err.contains("umask 077"), "{err}");
}

#[test]
fn pubkey_refuses_bad_input_with_one_line() {
    let dir = TempDir::new("bad");
    for bad in [
        "",
        "garbage",
        " dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=",
    ] {
        let o = run(&["pubkey"], Some(bad), &dir.0);
        assert_eq!(o.status.code(), Some(1), "{bad:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("sesame: stdin: "), "{err}");
        assert!(stdout(&o).is_empty());
    }
}

/// Writes a profile whose keys are those of the `default-udp` vector in
/// proto/tests/vectors/sequences.json.
fn vector_profile(dir: &TempDir, extra: &str) -> PathBuf {
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/vectors/sequences.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let v = &vectors["vectors"][0];
    assert_eq!(v["name"], "default-udp");
    sesame_keys::write_secret_file(
        &dir.path("client.key"),
        v["client_private"].as_str().unwrap(),
    )
    .unwrap();
    let profile = dir.path("server.toml");
    std::fs::write(
        &profile,
        format!(
            "host = \"198.18.0.1\"\nserver_public_key = \"{}\"\nprivate_key_file = \"client.key\"\nstep_seconds = 30\nlength = 3\nport_range = [10000, 32767]\nprotocol = \"udp\"\npayload = \"required\"\nopen = [\"tcp/22\"]\n{extra}",
            v["server_public"].as_str().unwrap()
        ),
    )
    .unwrap();
    profile
}

#[test]
fn ports_at_matches_the_vectors_and_is_deterministic() {
    let dir = TempDir::new("ports");
    let profile = vector_profile(&dir, "");
    let p = profile.to_str().unwrap();
    // default-udp vector: unix_time_ms 1764000000123.
    let at = "2025-11-24T16:00:00.123Z";
    let a = run(&["ports", "--profile", p, "--at", at], None, &dir.0);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = run(
        &[
            "ports",
            "--profile",
            p,
            "--at",
            "2025-11-24T17:00:00.123+01:00",
        ],
        None,
        &dir.0,
    );
    assert_eq!(stdout(&a), stdout(&b), "the same instant in another offset");
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/vectors/sequences.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let v = &vectors["vectors"][0];
    let out = stdout(&a);
    assert!(
        out.contains(&format!("step     {} ", v["counter"])),
        "{out}"
    );
    for (i, k) in v["knocks"].as_array().unwrap().iter().enumerate() {
        let line = format!(
            "knock {:<2} {}/{}",
            i + 1,
            k["proto"].as_str().unwrap(),
            k["port"]
        );
        assert!(out.contains(&line), "missing {line:?} in {out}");
    }
    assert!(
        out.contains(&format!("payload  udp/{}", v["payload_port"])),
        "{out}"
    );
    // Another step gives other ports.
    let c = run(
        &["ports", "--profile", p, "--at", "2025-11-24T16:00:30Z"],
        None,
        &dir.0,
    );
    assert_ne!(stdout(&a), stdout(&c));
}

#[test]
fn dry_run_prints_every_packet_and_agrees_with_ports() {
    let dir = TempDir::new("dry");
    let profile = vector_profile(&dir, "");
    let p = profile.to_str().unwrap();
    let o = run(
        &[
            "open",
            "--profile",
            p,
            "--dry-run",
            "--port",
            "tcp/22",
            "--port",
            "udp/51820",
        ],
        None,
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let packets: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(packets.len(), 4, "{out}");
    for (i, line) in packets[..3].iter().enumerate() {
        assert!(line.starts_with(&format!("knock {}/3", i + 1)), "{line}");
        assert!(line.contains(" udp 198.18.0.1:"), "{line}");
        // Knocks carry 8 to 120 random bytes, never a payload's size.
        let size: usize = line
            .strip_suffix(" bytes")
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!((8..=120).contains(&size), "{line}");
    }
    assert!(packets[3].starts_with("payload"), "{}", packets[3]);
    let size: usize = packets[3]
        .strip_suffix(" bytes")
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((184..=240).contains(&size), "{}", packets[3]);
    assert!(out.contains("tcp/22, udp/51820"), "{out}");
    // The time printed by the dry run gives the same ports through `sesame ports --at`.
    let time = out
        .split("time ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let ports = stdout(&run(&["ports", "--profile", p, "--at", time], None, &dir.0));
    for line in ports.lines().filter(|l| l.starts_with("knock")) {
        let port = line.rsplit('/').next().unwrap();
        assert!(
            out.contains(&format!("198.18.0.1:{port} ")),
            "{port} not in {out}"
        );
    }
    // With payload = "none" there is no payload datagram.
    let none_dir = TempDir::new("none");
    let none = vector_profile(&none_dir, "");
    let text = std::fs::read_to_string(&none)
        .unwrap()
        .replace("\"required\"", "\"none\"");
    std::fs::write(&none, text).unwrap();
    let o = run(
        &["open", "--profile", none.to_str().unwrap(), "--dry-run"],
        None,
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("payload "), "{}", stdout(&o));
}

#[test]
fn time_offset_moves_the_step() {
    let dir = TempDir::new("offset");
    let profile = vector_profile(&dir, "");
    let p = profile.to_str().unwrap();
    let step_of = |args: &[&str]| {
        let mut all = vec!["open", "--profile", p, "--dry-run"];
        all.extend_from_slice(args);
        let out = stdout(&run(&all, None, &dir.0));
        out.split("step ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let now = step_of(&[]);
    let later = step_of(&["--time-offset", "3000"]);
    let earlier = step_of(&["--time-offset", "-3000"]);
    assert!((99..=101).contains(&(later - now)), "{now} {later}");
    assert!((99..=101).contains(&(now - earlier)), "{now} {earlier}");
}

#[test]
fn configuration_errors_exit_2_and_name_the_file() {
    let dir = TempDir::new("errors");
    let profile = vector_profile(&dir, "");
    let p = profile.to_str().unwrap();

    let o = run(&["open", "--profile", "missing.toml"], None, &dir.0);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.toml"), "{}", stderr(&o));

    let bad = dir.path("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&profile)
            .unwrap()
            .replace("length = 3", "length = 3\nlenght = 4"),
    )
    .unwrap();
    let o = run(
        &["open", "--profile", bad.to_str().unwrap(), "--dry-run"],
        None,
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.toml: line 6: lenght"), "{err}");

    std::fs::set_permissions(
        dir.path("client.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = run(&["open", "--profile", p, "--dry-run"], None, &dir.0);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));

    let o = run(
        &["open", "--profile", p, "--port", "tcp/99999"],
        None,
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
    let o = run(&["open"], None, &dir.0);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["--help"], None, &dir.0);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn man_pages_for_every_subcommand() {
    let dir = TempDir::new("man");
    let o = run(&["man", "--dir", dir.0.to_str().unwrap()], None, &dir.0);
    assert!(o.status.success(), "{}", stderr(&o));
    let open = std::fs::read_to_string(dir.path("sesame-open.1")).unwrap();
    assert!(open.contains(".TH"), "{open}");
    for option in ["wait", "time\\-offset", "allow\\-ip", "dry\\-run"] {
        assert!(open.contains(option), "sesame-open.1 documents --{option}");
    }
    for page in [
        "sesame.1",
        "sesame-proxy.1",
        "sesame-import.1",
        "sesame-list.1",
    ] {
        assert!(dir.path(page).exists(), "{page}");
    }
}

/// `sesame completions bash | head -1`, `sesame man | less` quit early: sesame ends quietly,
/// killed by SIGPIPE like any Unix tool, instead of panicking or printing an error about the
/// closed pipe. (The reader is closed before sesame writes, so every write meets EPIPE.)
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [&["completions", "bash"][..], &["man"][..], &["genkey"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(SESAME)
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.signal(),
            Some(13),
            "{args:?}: {:?} {err}",
            o.status
        );
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

/// `sesame import -` reads a URI (or, with --name, a profile) from standard input, so a URI
/// that carries keys never appears in the shell history or in `ps`.
#[test]
fn import_reads_a_uri_or_a_profile_from_stdin() {
    let home = TempDir::new("stdin");
    let env_run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(SESAME)
            .args(args)
            .env("HOME", &home.0)
            .env("XDG_CONFIG_HOME", home.path("config"))
            .current_dir(&home.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let uri = "sesame://2/AQVwaG9uZQoxOTguMTguMC4x3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08AAAAeA04gVe8AAAABBgAWAHcHbQpzGKV9PBbBclGyZkXfTC-H68CZKrF3-6UduSwq";
    let o = env_run(&["import", "-"], &format!("{uri}\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("installed profile 'phone'"),
        "{}",
        stdout(&o)
    );
    let key = home.path("config/sesame/phone.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A profile in TOML needs a name; with one it is installed.
    let profile = std::fs::read_to_string(home.path("config/sesame/profiles/phone.toml")).unwrap();
    let o = env_run(&["import", "-"], &profile);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--name"), "{}", stderr(&o));
    let o = env_run(&["import", "-", "--name", "again"], &profile);
    assert!(o.status.success(), "{}", stderr(&o));
    // A broken URI on stdin is refused without echoing it.
    let o = env_run(&["import", "-"], "sesame://2/AQVwaG9uZQoxOTguMTg\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(!stderr(&o).contains("AQVwaG9uZQ"), "{}", stderr(&o));
}

/// `sesame list` says "key ok" only for keys `open` accepts: it makes the same check (the key
/// and PSK files, their modes, their content, the server's key), and shows the same reason.
#[test]
fn list_refuses_the_keys_that_open_refuses() {
    let dir = TempDir::new("list-keys");
    let config = dir.path("config");
    let profiles = config.join("sesame/profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let profile = vector_profile(&dir, "");
    let text = std::fs::read_to_string(&profile).unwrap();
    let key = dir.path("client.key");
    let install = |name: &str, key_file: &Path| {
        let t = text.replace(
            "private_key_file = \"client.key\"",
            &format!("private_key_file = \"{}\"", key_file.display()),
        );
        std::fs::write(profiles.join(format!("{name}.toml")), t).unwrap();
    };
    // good: the vector's key, mode 0600.
    install("good", &key);
    // open: the same key, readable by everyone.
    let open_key = dir.path("open.key");
    std::fs::copy(&key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    install("open", &open_key);
    // garbage: mode 0600, not a key.
    let garbage = dir.path("garbage.key");
    sesame_keys::write_secret_file(&garbage, "not a key").unwrap();
    install("garbage", &garbage);
    // dir: a directory where the key should be.
    let not_file = dir.path("dir.key");
    std::fs::create_dir(&not_file).unwrap();
    install("dir", &not_file);
    // missing: no file at all.
    install("missing", &dir.path("missing.key"));

    let sesame = |args: &[&str]| {
        Command::new(SESAME)
            .args(args)
            .env("XDG_CONFIG_HOME", &config)
            .env("HOME", &dir.0)
            .current_dir(&dir.0)
            .output()
            .unwrap()
    };
    let o = sesame(&["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    assert!(line("good").ends_with(" key ok"), "{out}");
    assert!(line("missing").ends_with(" key missing"), "{out}");
    for name in ["open", "garbage", "dir"] {
        let listed = line(name);
        assert!(
            !listed.contains("key ok"),
            "sesame list says the key of '{name}' is ok, which `sesame open {name}` refuses: {listed}"
        );
        let o = sesame(&["open", name, "--dry-run"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let refused = stderr(&o);
        let reason = refused.trim_end().strip_prefix("sesame: ").unwrap();
        assert!(
            listed.ends_with(&format!("keys refused: {reason}")),
            "list and open give different reasons for '{name}':\n{listed}\n{refused}"
        );
    }
}
