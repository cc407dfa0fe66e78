//! The shipped examples: examples/sesamed.toml and examples/profile.toml parse, the example
//! configuration mentions every configuration key (set or commented out), the example profile
//! every profile key, the two agree on the knock parameters, and the README's configuration
//! snippet is a valid configuration.
//!
//! The lists of keys come from the parsers themselves (the "expected one of …" of an unknown
//! key in each section), so a key added to the code and not to the example fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use sesame_proto::Profile;
use sesame_server::config::Config;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const EXAMPLE_CONFIG: &str = "examples/sesamed.toml";
const EXAMPLE_PROFILE: &str = "examples/profile.toml";

/// The keys listed by a parser's "unknown field `x`, expected one of `a`, `b`" message.
fn expected_keys(message: &str) -> Vec<String> {
    let list = message
        .split("expected one of ")
        .nth(1)
        .or_else(|| message.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no list of keys in: {message}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Inserts `unknown_key_for_the_test = 1` right after `header` (or at the top when empty) and
/// returns the keys the configuration parser says that section accepts.
fn config_section_keys(text: &str, header: &str) -> Vec<String> {
    let probe = "unknown_key_for_the_test = 1\n";
    let edited = if header.is_empty() {
        format!("{probe}{text}")
    } else {
        let at = text
            .find(&format!("\n{header}\n"))
            .unwrap_or_else(|| panic!("{EXAMPLE_CONFIG} has no {header} line"))
            + header.len()
            + 2;
        format!("{}{probe}{}", &text[..at], &text[at..])
    };
    let err = Config::parse(&edited, Path::new("/etc/sesame/sesamed.toml"))
        .err()
        .unwrap_or_else(|| panic!("an unknown key in {header:?} was accepted"))
        .to_string();
    assert!(
        err.contains("unknown_key_for_the_test"),
        "unexpected error: {err}"
    );
    expected_keys(&err)
}

/// True if `key` is set (`key =`), or shown commented out (`# key =`), at the start of a line.
fn mentions(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        let l = l.strip_prefix('#').map_or(l, str::trim_start);
        l.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

#[test]
fn the_example_configuration_parses() {
    let text = read(EXAMPLE_CONFIG);
    let config = Config::parse(&text, Path::new("/etc/sesame/sesamed.toml"))
        .unwrap_or_else(|e| panic!("{EXAMPLE_CONFIG}: {e}"));
    assert_eq!(config.clients.len(), 1);
    assert_eq!(config.clients[0].name, "laptop");
    assert_eq!(
        config.private_key_file,
        Path::new("/etc/sesame/server.key"),
        "the example uses the paths the README installs to"
    );
    assert_eq!(config.control_socket, Path::new("/run/sesame/sesamed.sock"));
}

#[test]
fn the_example_configuration_mentions_every_key() {
    let text = read(EXAMPLE_CONFIG);
    let mut missing = Vec::new();
    let mut total = 0;
    for (header, section) in [
        ("", ""),
        ("[knock]", "knock."),
        ("[firewall]", "firewall."),
        ("[[client]]", "client."),
    ] {
        let keys = config_section_keys(&text, header);
        assert!(keys.len() >= 5, "{header}: {keys:?}");
        for key in keys {
            total += 1;
            // Sections are tables, not `key =` lines.
            if header.is_empty() && ["knock", "firewall", "client"].contains(&key.as_str()) {
                let table = if key == "client" {
                    "[[client]]".to_owned()
                } else {
                    format!("[{key}]")
                };
                if !text.lines().any(|l| l.trim() == table) {
                    missing.push(table);
                }
                continue;
            }
            if !mentions(&text, &key) {
                missing.push(format!("{section}{key}"));
            }
        }
    }
    assert!(total > 25, "only {total} keys found");
    assert!(
        missing.is_empty(),
        "{EXAMPLE_CONFIG} does not mention (as `key = …` or `# key = …`): {missing:?}"
    );
}

#[test]
fn the_example_profile_parses_and_mentions_every_key() {
    let text = read(EXAMPLE_PROFILE);
    let profile = Profile::parse(&text).unwrap_or_else(|e| panic!("{EXAMPLE_PROFILE}: {e}"));
    assert_eq!(profile.host, "ssh.example.org");
    let err = Profile::parse(&format!("unknown_key_for_the_test = 1\n{text}"))
        .expect_err("an unknown key is refused")
        .to_string();
    let keys = expected_keys(&err);
    assert!(keys.len() >= 8, "{keys:?}");
    let missing: Vec<&String> = keys.iter().filter(|k| !mentions(&text, k)).collect();
    assert!(
        missing.is_empty(),
        "{EXAMPLE_PROFILE} does not mention: {missing:?}"
    );
}

#[test]
fn the_example_profile_matches_the_example_configuration() {
    let config =
        Config::parse(&read(EXAMPLE_CONFIG), Path::new("/etc/sesame/sesamed.toml")).unwrap();
    let profile = Profile::parse(&read(EXAMPLE_PROFILE)).unwrap();
    assert_eq!(
        profile.params, config.knock.params,
        "the example profile's knock parameters are the example server's"
    );
    assert_eq!(profile.payload, config.knock.payload);
    assert_eq!(profile.open, config.clients[0].allow);
}

/// The README's "essentials" snippet (step 3 of "Protecting ssh on a real server") is a valid
/// configuration on its own; every other ```toml block of the README is a valid configuration
/// when laid over it (a fragment: `[firewall] lease = …`), so no key in the README is misspelt.
#[test]
fn the_readme_configuration_snippet_is_valid() {
    fn overlay(base: &mut toml::Table, top: toml::Table) {
        for (k, v) in top {
            match (base.get_mut(&k), v) {
                (Some(toml::Value::Table(b)), toml::Value::Table(t)) => overlay(b, t),
                (_, v) => {
                    base.insert(k, v);
                }
            }
        }
    }
    let readme = read("README.md");
    let snippets: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(!snippets.is_empty(), "no ```toml block in the README");
    let essentials = snippets
        .iter()
        .find(|s| s.contains("private_key_file"))
        .expect("no complete configuration in the README");
    for s in &snippets {
        let text = if s.contains("private_key_file") {
            (*s).to_owned()
        } else {
            let mut base: toml::Table = essentials.parse().unwrap();
            let top: toml::Table = s
                .parse()
                .unwrap_or_else(|e| panic!("README snippet is not TOML: {e}\n{s}"));
            overlay(&mut base, top);
            toml::to_string(&base).unwrap()
        };
        Config::parse(&text, Path::new("/etc/sesame/sesamed.toml"))
            .unwrap_or_else(|e| panic!("README snippet: {e}\n{s}"));
    }
}
