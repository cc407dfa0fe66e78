//! The shipped examples: examples/sesamed.toml and examples/profile.toml parse, the example
//! configuration sets no client (its `[[client]]` table is a commented-out example, which
//! parses once uncommented), it mentions every configuration key (set or commented out), the
//! example profile every profile key, the two agree on the knock parameters, the README's
//! configuration snippet is a valid configuration, and sesamed.toml(5), generated from the
//! example, has an entry for every key.
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

/// The example configuration with its commented-out `[[client]]` table made real: from the
/// `# [[client]]` line on, every `# key = value` line (and that header) loses its `# `; the
/// comments around them stay comments.
fn with_example_client(text: &str) -> String {
    let mut out = String::new();
    let mut in_client = false;
    for line in text.lines() {
        // The commented-out tables: `# [metrics]` (off by default), `# [[client]]` and
        // `# [[action]]`.
        if ["# [[client]]", "# [metrics]", "# [[action]]"].contains(&line.trim()) {
            in_client = true;
        }
        let body = line.strip_prefix("# ").unwrap_or(line);
        let is_key = body.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        });
        if in_client && (["[[client]]", "[metrics]", "[[action]]"].contains(&body) || is_key) {
            out.push_str(body);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(in_client, "{EXAMPLE_CONFIG} has no `# [[client]]` example");
    out
}

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
    assert_eq!(
        config.private_key_file,
        Path::new("/etc/sesame/server.key"),
        "the example uses the paths the README installs to"
    );
    assert_eq!(config.state_dir, Path::new("/var/lib/sesame"));
    assert_eq!(config.control_socket, Path::new("/run/sesame/sesamed.sock"));
    assert!(
        config.user.is_none(),
        "the unit starts sesamed as its user: the example must not set `user`"
    );
}

/// The README installs the example and then adds `laptop` with `sesamed client add`: a client
/// in the example (even a placeholder) makes that fail with "already exists". Its
/// `[[client]]` table is an example in comments, and a valid one.
#[test]
fn the_example_configuration_sets_no_client_and_shows_one_in_comments() {
    let text = read(EXAMPLE_CONFIG);
    let config = Config::parse(&text, Path::new("/etc/sesame/sesamed.toml")).unwrap();
    let names: Vec<&str> = config.clients.iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.is_empty(),
        "{EXAMPLE_CONFIG} sets clients {names:?}: `sesamed client add` of the README would collide"
    );
    let uncommented = with_example_client(&text);
    let config =
        Config::parse(&uncommented, Path::new("/etc/sesame/sesamed.toml")).unwrap_or_else(|e| {
            panic!("the commented [[client]] example, uncommented: {e}\n{uncommented}")
        });
    assert_eq!(config.clients.len(), 1);
    assert_eq!(config.clients[0].name, "laptop");
}

#[test]
fn the_example_configuration_mentions_every_key() {
    // The section probe needs a `[[client]]` line: the commented example's, uncommented.
    let text = with_example_client(&read(EXAMPLE_CONFIG));
    let mut missing = Vec::new();
    let mut total = 0;
    for (header, section) in [
        ("", ""),
        ("[knock]", "knock."),
        ("[firewall]", "firewall."),
        ("[metrics]", "metrics."),
        ("[[client]]", "client."),
        ("[[action]]", "action."),
    ] {
        let keys = config_section_keys(&text, header);
        let least = if header == "[metrics]" { 1 } else { 5 };
        assert!(keys.len() >= least, "{header}: {keys:?}");
        for key in keys {
            total += 1;
            // Sections are tables, not `key =` lines.
            if header.is_empty()
                && ["knock", "firewall", "metrics", "client", "action"].contains(&key.as_str())
            {
                let table = if key == "client" || key == "action" {
                    format!("[[{key}]]")
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
    let config = Config::parse(
        &with_example_client(&read(EXAMPLE_CONFIG)),
        Path::new("/etc/sesame/sesamed.toml"),
    )
    .unwrap();
    let profile = Profile::parse(&read(EXAMPLE_PROFILE)).unwrap();
    assert_eq!(
        profile.params, config.knock.params,
        "the example profile's knock parameters are the example server's"
    );
    assert_eq!(profile.payload, config.knock.payload);
    assert_eq!(profile.lease, config.firewall.lease);
    assert_eq!(profile.open, config.clients[0].allow);
}

/// The README's "essentials" snippet (step 4 of "Protecting ssh on a real server") is a valid
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

/// Every configuration key (as the parser lists them) in a section of the page.
fn all_config_keys() -> Vec<(String, String)> {
    let text = with_example_client(&read(EXAMPLE_CONFIG));
    let mut all = Vec::new();
    for (header, table) in [
        ("", ""),
        ("[knock]", "knock"),
        ("[firewall]", "firewall"),
        ("[metrics]", "metrics"),
        ("[[client]]", "client"),
        ("[[action]]", "action"),
    ] {
        for key in config_section_keys(&text, header) {
            if header.is_empty()
                && ["knock", "firewall", "metrics", "client", "action"].contains(&key.as_str())
            {
                continue;
            }
            all.push((table.to_owned(), key));
        }
    }
    all
}

/// sesamed.toml(5) is generated from examples/sesamed.toml: every key the parser accepts has
/// an entry (a `.TP` tag naming it in bold) under its table's heading, and the page renders
/// without a groff warning.
#[test]
fn the_configuration_manual_page_has_every_key() {
    let page = sesame_server::manpage::config_page();
    assert!(page.contains(".TH sesamed.toml 5"), "{page}");
    // The page's sections, by heading: `.SH "[knock]"` → the text up to the next `.SH`.
    let section = |title: &str| -> &str {
        let head = if title.contains(' ') || title.contains('[') {
            format!(".SH \"{title}\"")
        } else {
            format!(".SH {title}")
        };
        let head = if page.contains(&head) {
            head
        } else {
            format!(".SH {title}")
        };
        let at = page
            .find(&head)
            .unwrap_or_else(|| panic!("no {head} in the page:\n{page}"));
        let rest = &page[at + head.len()..];
        &rest[..rest.find("\n.SH ").unwrap_or(rest.len())]
    };
    let mut missing = Vec::new();
    let keys = all_config_keys();
    assert!(keys.len() > 25, "{keys:?}");
    for (table, key) in &keys {
        let title = match table.as_str() {
            "" => "TOP-LEVEL KEYS".to_owned(),
            "client" => "[[client]]".to_owned(),
            "action" => "[[action]]".to_owned(),
            t => format!("[{t}]"),
        };
        let body = section(&title);
        let tag = format!("\\fB{key}\\fR = ");
        let entry = body
            .lines()
            .zip(body.lines().skip(1))
            .any(|(a, b)| (a == ".TP" || a == ".TQ") && b.starts_with(&tag));
        if !entry {
            missing.push(format!("{title} {key}"));
        }
    }
    assert!(
        missing.is_empty(),
        "sesamed.toml(5) has no entry for: {missing:?}"
    );
    sesame_test_support::assert_man_page_renders(
        &page,
        "sesamed.toml.5",
        &[
            "private_key_file",
            "step_seconds",
            "lease_seconds",
            "public_key",
        ],
    );
}

/// The configuration shown under EXAMPLES in sesamed.toml(5) is valid.
#[test]
fn the_configuration_manual_page_example_is_valid() {
    let page = sesame_server::manpage::config_page();
    let example = sesame_server::manpage::CONFIG_PAGE_EXAMPLE;
    assert!(
        page.contains(&example.lines().next().unwrap().replace('-', "\\-")),
        "the page shows its example"
    );
    let config = Config::parse(example, Path::new("/etc/sesame/sesamed.toml"))
        .unwrap_or_else(|e| panic!("sesamed.toml(5) example: {e}\n{example}"));
    assert_eq!(config.clients.len(), 1);
}

/// `sesamed man` has FILES, EXIT STATUS, EXAMPLES and SEE ALSO, naming the paths the example
/// configuration uses; `sesamed man --dir` also writes sesamed.toml.5; both render.
#[test]
fn the_manual_pages_have_files_exit_status_and_examples() {
    let sesamed = env!("CARGO_BIN_EXE_sesamed");
    let o = std::process::Command::new(sesamed)
        .arg("man")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let page = String::from_utf8(o.stdout).unwrap();
    for section in [
        ".SH FILES",
        ".SH \"EXIT STATUS\"",
        ".SH EXAMPLES",
        ".SH \"SEE ALSO\"",
    ] {
        assert!(
            page.contains(section),
            "sesamed(1) lacks {section}:\n{page}"
        );
    }
    let config =
        Config::parse(&read(EXAMPLE_CONFIG), Path::new("/etc/sesame/sesamed.toml")).unwrap();
    let files = &page[page.find(".SH FILES").unwrap()..page.find(".SH \"EXIT STATUS\"").unwrap()];
    for path in [
        Path::new(sesame_server::config::DEFAULT_CONFIG),
        &config.private_key_file,
        &config.state_dir,
        &config.control_socket,
    ] {
        let shown = path.to_string_lossy().replace('-', "\\-");
        assert!(
            files.contains(&shown),
            "FILES lacks {}:\n{files}",
            path.display()
        );
    }
    sesame_test_support::assert_man_page_renders(
        &page,
        "sesamed.1",
        &["FILES", "EXIT STATUS", "EXAMPLES"],
    );

    let dir = sesame_test_support::TempDir::new("man-dir");
    let o = std::process::Command::new(sesamed)
        .args(["man", "--dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    for name in ["sesamed.1", "sesamed-check.1", "sesamed.toml.5"] {
        assert!(
            dir.path(name).is_file(),
            "sesamed man --dir wrote no {name}"
        );
    }
    let top = std::fs::read_to_string(dir.path("sesamed.1")).unwrap();
    assert_eq!(top, page, "--dir writes the same sesamed.1");
    let five = std::fs::read_to_string(dir.path("sesamed.toml.5")).unwrap();
    assert_eq!(five, sesame_server::manpage::config_page());
}

/// The example configuration and the README say what a knock during a lease does (the rule of
/// `sesame_server::lease`): with more than half of it left the lease is kept as it is.
#[test]
fn the_lease_rule_is_documented() {
    // The comment right above `lease_seconds = …` in the example.
    let example = read(EXAMPLE_CONFIG);
    let lines: Vec<&str> = example.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("lease_seconds ="))
        .expect("lease_seconds in the example");
    let above = lines[..at]
        .iter()
        .rev()
        .take_while(|l| l.starts_with('#'))
        .count();
    let comment = lines[at - above..at].join(" ");
    let readme = read("README.md");
    for (what, text) in [
        (EXAMPLE_CONFIG, comment.as_str()),
        ("README.md", readme.as_str()),
    ] {
        for phrase in ["more than half", "kept", "leases_kept", "leases_refreshed"] {
            assert!(
                text.contains(phrase),
                "{what} does not say what a knock during a lease does (`{phrase}`)"
            );
        }
    }
}
