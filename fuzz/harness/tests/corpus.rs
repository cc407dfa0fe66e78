//! Replays the committed fuzzing corpora (`fuzz/corpus/<target>/`) and the crash reproducers
//! (`fuzz/regressions/<target>/`) through the target bodies of this crate, so a plain `cargo
//! test` catches a regression on any input the fuzzer has ever kept; checks that the seeds
//! reach what their targets are about, and the fixes of what the fuzzer found.
//!
//! `payload_open_bypass` replays on the genuine path here: without `--cfg fuzzing` there is no
//! crypto bypass, so its harness really seals each plaintext for the client and counter.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use sesame_fuzz_harness as targets;

/// A fuzz target's body.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 11] = [
    ("payload_open", targets::payload_open),
    ("plaintext_decode", targets::plaintext_decode),
    ("key_parse", targets::key_parse),
    ("profile_parse", targets::profile_parse),
    ("tracker_stateful", targets::tracker_stateful),
    ("payload_open_bypass", targets::payload_open_bypass),
    ("stun_parse", targets::stun_parse),
    ("frame_tracker", targets::frame_tracker),
    ("config_parse", targets::config_parse),
    ("metrics_request", targets::metrics_request),
    ("action_protocol", targets::action_protocol),
];

/// The `fuzz/` directory of the repository.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs every file of `dir` through `target`; returns how many there were.
fn replay(dir: &Path, target: Target) -> usize {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // A panic names the file, so a failure here can be reproduced with `cargo fuzz run`.
        eprintln!("replaying {}", path.display());
        target(&data);
    }
    files.len()
}

/// Every committed corpus (`fuzz/corpus/<target>/`) replays, and none is missing or empty.
#[test]
fn corpus_replays() {
    for (name, target) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        assert!(dir.is_dir(), "missing corpus directory {}", dir.display());
        let n = replay(&dir, target);
        assert!(n > 0, "empty corpus directory {}", dir.display());
    }
}

/// The reproducers of the crashes the fuzzer found (`fuzz/regressions/<target>/`), all fixed,
/// replay; there is at least one.
#[test]
fn regressions_replay() {
    let mut n = 0;
    for (name, target) in TARGETS {
        let dir = fuzz_dir().join("regressions").join(name);
        if dir.is_dir() {
            n += replay(&dir, target);
        }
    }
    assert!(n > 0, "no regressions found under {}", fuzz_dir().display());
}

/// Finding 1 (`fuzz/README.md`), in profiles: a `[section]` header holding control characters,
/// then a TOML error on a later line, used to put the header's text as it was into the
/// one-line error.
#[test]
fn control_chars_in_a_profile_section_name_stay_out_of_the_error() {
    let path = fuzz_dir().join("regressions/profile_parse/control-chars-in-section-name");
    let text = String::from_utf8(fs::read(&path).unwrap()).unwrap();
    assert!(text.chars().any(|c| c == '\r'), "{text:?}");
    let err = sesame_proto::Profile::parse(&text).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    assert_eq!(err.line, Some(3), "{msg:?}");
    assert_eq!(err.key, None, "{msg:?}");
}

/// Finding 1 in sesamed's configuration, also with the file name in front.
#[test]
fn control_chars_in_a_config_section_name_stay_out_of_the_error() {
    let path = fuzz_dir().join("regressions/config_parse/control-chars-in-section-name");
    let text = String::from_utf8(fs::read(&path).unwrap()).unwrap();
    assert!(text.chars().any(|c| c == '\r'), "{text:?}");
    let config = Path::new(sesame_server::config::DEFAULT_CONFIG);
    let err = sesame_server::config::Config::parse(&text, config).unwrap_err();
    assert_eq!(err.line, Some(3), "{err:?}");
    assert_eq!(err.key, None, "{err:?}");
    let full = sesame_server::config::ConfigFileError {
        path: config.to_path_buf(),
        error: err,
    }
    .to_string();
    assert!(!full.chars().any(char::is_control), "{full:?}");
    assert!(
        full.starts_with("/etc/sesame/sesamed.toml: line 3: "),
        "{full:?}"
    );
}

/// Finding 2 (`fuzz/README.md`): a one-knock sequence never completed by itself, so
/// `length = 1` is refused, with an error that names the key.
#[test]
fn length_one_is_refused_naming_the_key() {
    let valid = &config_seeds()[0];
    let config = Path::new(sesame_server::config::DEFAULT_CONFIG);
    for (length, ok) in [(0, true), (1, false), (2, true), (16, true), (17, false)] {
        let text = valid.replacen("length = 3", &format!("length = {length}"), 1);
        match sesame_server::config::Config::parse(&text, config) {
            Ok(c) => {
                assert!(ok, "length = {length} accepted");
                assert_eq!(c.knock.params.length, length as u8);
            }
            Err(e) => {
                assert!(!ok, "length = {length}: {e}");
                assert_eq!(e.key.as_deref(), Some("knock.length"), "{e}");
                assert_eq!(e.line, Some(9), "{e}");
                assert!(
                    e.to_string()
                        .contains("0 (single-packet mode) or between 2 and 16"),
                    "{e}"
                );
            }
        }
    }
}

/// The `tracker_stateful` seeds reach what the target is about: completed sequences,
/// sequence-only and payload grants in every mode, resets and evictions; the
/// `payload_open_bypass` seeds run.
#[test]
fn stateful_seeds_reach_grants() {
    let mut total = targets::StatefulSummary::default();
    for (i, seed) in targets::tracker_stateful_seeds().iter().enumerate() {
        let s = targets::tracker_stateful_run(seed);
        eprintln!("seed {i} (sel {}): {s:?}", seed[0]);
        total.sequence_grants += s.sequence_grants;
        total.payload_grants += s.payload_grants;
        total.completed += s.completed;
        total.resets += s.resets;
        total.evicted += s.evicted;
    }
    assert!(total.sequence_grants >= 6, "{total:?}");
    assert!(total.payload_grants >= 6, "{total:?}");
    assert!(total.completed >= 18, "{total:?}");
    assert!(total.resets > 0 && total.evicted > 0, "{total:?}");
    for seed in targets::payload_open_bypass_seeds() {
        targets::payload_open_bypass(&seed);
    }
}

/// The `frame_tracker` seeds are real knocks: they get through the parser and complete
/// sequences and grants in every mode.
#[test]
fn frame_seeds_reach_grants() {
    for seed in targets::frame_tracker_seeds() {
        let s = targets::frame_tracker_run(&seed);
        eprintln!("sel {}: {s:?}", seed[0]);
        // One grant per knock in every mode: in `optional` mode the payload's (the sequence
        // alone grants only when no payload comes).
        assert_eq!(s.grants, 2, "{s:?}");
        assert_eq!(s.completed, if seed[0] == 4 { 0 } else { 2 }, "{s:?}");
    }
}

/// The `config_parse` seeds: the configuration of `tests/cli.rs` and the ways it is broken
/// there, plus variants. The first one is valid.
fn config_seeds() -> Vec<String> {
    let valid = include_str!("../../../server/tests/data/sesamed-test.toml")
        .replace(
            "LAPTOP_PUBLIC_KEY",
            "O7wpzy8hg16eO+wSQAhuylX7Q3e/2cIUj4Fxa3z/ymY=",
        )
        .replace(
            "PHONE_PUBLIC_KEY",
            "Yhu2XKH8ZSNR0FnBXuKlC1mDCm4qgBKTtl1Ip6nq0Bc=",
        );
    let edits: &[(&str, &str)] = &[
        (
            "protect = [\"tcp/22\", \"udp/51820\"]",
            "protect = [\"tcp/22\", \"tcp/12345\"]",
        ),
        (
            "Yhu2XKH8ZSNR0FnBXuKlC1mDCm4qgBKTtl1Ip6nq0Bc=",
            "O7wpzy8hg16eO+wSQAhuylX7Q3e/2cIUj4Fxa3z/ymY=",
        ),
        ("port_range = [10000, 32767]", "port_range = [10000, 10006]"),
        ("198.18.0.0/15", "198.18.0.0/33"),
        ("lease_seconds = 30", "lease_secs = 30"),
        ("public_key = \"O7", "public_key = \"xO7"),
        ("allow = [\"tcp/22\"]", "allow = [\"tcp/23\"]"),
        ("backend = \"nftables\"", "backend = \"command\""),
        (
            "backend = \"nftables\"",
            "backend = \"command\"\nopen_command = [\"/usr/local/bin/open\", \"{ip}\"]\nclose_command = [\"{ip}\"]",
        ),
        (
            "backend = \"nftables\"",
            "backend = \"command\"\nopen_command = [\"/usr/local/bin/open\", \"{ip}\", \"{port}\"]\ncommand_timeout_ms = 1",
        ),
        ("2030-01-01T00:00:00Z", "next year"),
        (
            "expires = \"2030-01-01T00:00:00Z\"",
            "expires = 2030-01-01T00:00:00Z",
        ),
        (
            "expires = \"2030-01-01T00:00:00Z\"",
            "expires = 1969-12-31T23:59:59Z",
        ),
        ("length = 3", "length = 30"),
        ("length = 3", "length = 1"),
        ("length = 3", "length = 0"),
        ("step_seconds = 30", "step_seconds = 0"),
        ("skew_steps = 1", "skew_steps = 11"),
        ("timeout_ms = 5000", "timeout_ms = 0"),
        ("payload = \"required\"", "payload = \"none\""),
        ("payload = \"required\"", "payload = \"sometimes\""),
        ("protocol = \"mixed\"", "protocol = \"tcp\""),
        ("interfaces = [\"any\"]", "interfaces = [\"eth0\", \"wg0\"]"),
        ("interfaces = [\"any\"]", "interfaces = [\"any\", \"eth0\"]"),
        ("interfaces = [\"any\"]", "interfaces = []"),
        ("interfaces = [\"any\"]", "interfaces = [\"eth 0\"]"),
        ("name = \"phone\"", "name = \"laptop\""),
        ("name = \"phone\"", "name = \"ph one\""),
        ("lease_seconds = 30", "lease_seconds = 0"),
        ("protect = [\"tcp/22\", \"udp/51820\"]", "protect = []"),
        ("allow = [\"tcp/22\"]", "allow = []"),
        (
            "backend = \"nftables\"",
            "backend = \"log\"\ntable = \"bad.table\"",
        ),
        (
            "private_key_file = \"server.key\"",
            "private_key_file = \"\"",
        ),
        ("exclude_ports = [10022]", "exclude_ports = [10022, 70000]"),
        ("[knock]", "[knock]\nstep_seconds = 31"),
        ("[firewall]", "[firewall\n"),
        ("\"tcp/22\"", "\"tcp/0\""),
        ("\"tcp/22\"", "\"sctp/22\""),
        // Valid: the exported profiles carry lease = "connection".
        (
            "lease_seconds = 30",
            "lease = \"connection\"\nlease_seconds = 30",
        ),
    ];
    let mut seeds = vec![valid.to_owned()];
    for (from, to) in edits {
        assert!(valid.contains(from), "{from}");
        seeds.push(valid.replacen(from, to, 1));
    }
    // Minimal configurations.
    seeds.push("private_key_file = \"k\"\n[firewall]\nprotect = [\"tcp/22\"]\n".into());
    seeds.push("private_key_file = \"k\"\n".into());
    seeds.push(String::new());
    seeds
}

/// The `config_parse` seeds are what `config_seeds` says: the first valid, a few more, most
/// broken; all run through the target.
#[test]
fn config_seeds_are_what_they_say() {
    let seeds = config_seeds();
    let path = Path::new("/etc/sesame/sesamed.toml");
    assert!(sesame_server::config::Config::parse(&seeds[0], path).is_ok());
    let ok = seeds
        .iter()
        .filter(|s| sesame_server::config::Config::parse(s, path).is_ok())
        .count();
    assert!(
        ok >= 5 && ok < seeds.len() / 2,
        "{ok} of {} valid",
        seeds.len()
    );
    for s in &seeds {
        targets::config_parse(s.as_bytes());
    }
}

/// Writes the seeds of `tracker_stateful`, `payload_open_bypass`, `frame_tracker` and
/// `config_parse` into `fuzz/corpus/` (run once before fuzzing:
/// `cargo test -p sesame-fuzz-harness --test corpus -- --ignored write_seeds`).
#[test]
#[ignore]
fn write_seeds() {
    let config: Vec<Vec<u8>> = config_seeds().into_iter().map(String::into_bytes).collect();
    for (name, seeds) in [
        ("tracker_stateful", targets::tracker_stateful_seeds()),
        ("payload_open_bypass", targets::payload_open_bypass_seeds()),
        ("frame_tracker", targets::frame_tracker_seeds()),
        ("config_parse", config),
    ] {
        let dir = fuzz_dir().join("corpus").join(name);
        fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
}
