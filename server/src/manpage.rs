//! Manual pages: `sesamed(1)` (clap_mangen's page with FILES, EXIT STATUS, EXAMPLES and SEE
//! ALSO added), one page per subcommand, and `sesamed.toml(5)`, generated from the example
//! configuration (examples/sesamed.toml) so that the page and the example never disagree: every
//! key there, set or commented out, becomes an entry with the comment above it.

use std::io::Write;
use std::path::Path;

use clap_mangen::roff::{Inline, Roff, bold, italic, line_break, roman};

use crate::config::DEFAULT_CONFIG;

/// The example configuration, the source of `sesamed.toml(5)`.
pub const EXAMPLE_CONFIG: &str = include_str!("../../examples/sesamed.toml");

/// `sesamed man`: the page on standard output, or with `dir` every page (`sesamed.1`, one per
/// subcommand, `sesamed.toml.5`) written there.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> Result<(), String> {
    match dir {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(main_page(cmd).as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write the manual page: {e}"))
        }
        Some(dir) => {
            let failed =
                |e: std::io::Error| format!("cannot write manual pages to {}: {e}", dir.display());
            clap_mangen::generate_to(cmd.clone(), dir).map_err(failed)?;
            let name = cmd.get_name().to_owned();
            std::fs::write(dir.join(format!("{name}.1")), main_page(cmd)).map_err(failed)?;
            std::fs::write(dir.join("sesamed.toml.5"), config_page()).map_err(failed)
        }
    }
}

/// `sesamed(1)`: clap_mangen's page with FILES, EXIT STATUS, EXAMPLES and SEE ALSO before its
/// VERSION section.
pub fn main_page(cmd: clap::Command) -> String {
    let mut buf = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = clap_mangen::Man::new(cmd).render(&mut buf);
    let page = String::from_utf8_lossy(&buf).into_owned();
    let example = ExampleFiles::read();
    let mut extra = Roff::new();
    extra.control("SH", ["FILES"]);
    for (path, what) in [
        (
            DEFAULT_CONFIG.to_owned(),
            "The configuration (see sesamed.toml(5)); --config FILE names another. Owned by root, group sesame, mode 0640: the service user reads it, only root changes it.".to_owned(),
        ),
        (
            example.private_key_file.clone(),
            "The server's private key (private_key_file). Owned by the user sesamed runs as, mode 0600: a key the group or others can read is refused.".to_owned(),
        ),
        (
            example.state_dir.clone(),
            "The replay state (state_dir): replay.journal, replay.state and the lock sesamed.lock. Mode 0700, owned by the user sesamed runs as; nothing is granted if it cannot be written.".to_owned(),
        ),
        (
            example.control_socket.clone(),
            "The control socket (control_socket, mode 0600) that sesamed status and sesamed reload talk to.".to_owned(),
        ),
        (
            "/usr/lib/systemd/system/sesamed.service".to_owned(),
            "The systemd unit (installed by the Debian package, not enabled; from source, /etc/systemd/system/sesamed.service): runs sesamed as the user sesame with only CAP_NET_RAW and CAP_NET_ADMIN (and CAP_BPF until the capture filter is loaded), after sesamed check.".to_owned(),
        ),
        (
            "/usr/lib/sysusers.d/sesame.conf, /usr/lib/tmpfiles.d/sesame.conf".to_owned(),
            "The sesame user and the owners and modes of /etc/sesame and /var/lib/sesame (from source, in /etc/sysusers.d and /etc/tmpfiles.d).".to_owned(),
        ),
        (
            "/usr/share/doc/sesamed/examples/sesamed.toml".to_owned(),
            "The example configuration, every key explained (the Debian package installs it, and the same file as /etc/sesame/sesamed.toml). Purging the package removes the configuration and the state but keeps the keys.".to_owned(),
        ),
    ] {
        extra.control("TP", []);
        extra.text([italic(path)]);
        extra.text([roman(what)]);
    }
    extra.control("SH", ["EXIT STATUS"]);
    for (code, what) in [
        ("0", "Success (for run: stopped by SIGTERM or SIGINT)."),
        (
            "1",
            "Failure: sesamed could not start or stopped on an error, status or reload could not reach it or it refused the reload, the kernel refuses the nftables table (check).",
        ),
        (
            "2",
            "Usage or configuration error: a bad option, or a configuration or key file that is not valid (the message names the file, line, key and reason).",
        ),
    ] {
        extra.control("TP", []);
        extra.text([bold(code)]);
        extra.text([roman(what)]);
    }
    extra.control("SH", ["EXAMPLES"]);
    for (what, lines) in [
        (
            "Check the configuration as the service user of the systemd unit reads it:",
            &["sesamed check --as-user sesame"][..],
        ),
        (
            "Add a client (its public key from sesame pubkey on the device); a running sesamed reloads:",
            &["sesamed client add laptop --public-key 'BASE64...' --allow tcp/22"][..],
        ),
        (
            "Give the client its profile (for sesame import):",
            &["sesamed export-client laptop --host ssh.example.org > laptop.toml"][..],
        ),
        (
            "See the leases, the last knock of every client and the counters:",
            &["sesamed status"][..],
        ),
        (
            "Install the manual pages:",
            &[
                "sesamed man --dir man",
                "install -m 0644 man/*.1 /usr/local/share/man/man1/",
                "install -m 0644 man/*.5 /usr/local/share/man/man5/",
            ][..],
        ),
    ] {
        extra.control("PP", []);
        extra.text([roman(what)]);
        example_block(&mut extra, lines);
    }
    see_also(
        &mut extra,
        &["sesame(1)", "sesamed.toml(5)", "nft(8)", "systemd.exec(5)"],
    );
    ascii(&insert_before_version(&page, &without_preamble(&extra)))
}

/// `sesamed.toml(5)`, generated from [`EXAMPLE_CONFIG`].
pub fn config_page() -> String {
    let doc = parse_example(EXAMPLE_CONFIG);
    let mut r = Roff::new();
    let version = format!("sesamed {}", env!("CARGO_PKG_VERSION"));
    r.control("TH", ["sesamed.toml", "5", "", &version, "File Formats"]);
    r.control("SH", ["NAME"]);
    r.text([roman(
        "sesamed.toml - configuration file of sesamed, the sesame knock daemon",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([italic(DEFAULT_CONFIG)]);
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "sesamed(1) reads a TOML file: top-level keys, then the [knock] and [firewall] tables, the optional [metrics] table, one [[client]] table per client and one [[action]] table per action. Unknown keys are refused; sesamed check validates the file and the key files it names.",
    )]);
    r.control("PP", []);
    r.text([roman(
        "This page is generated from the example configuration shipped with sesame (examples/sesamed.toml). Each entry shows a key as it is written there, with the comment above it; an entry marked (commented out) is not set in the example.",
    )]);
    r.control("PP", []);
    for (i, line) in doc.intro.iter().enumerate() {
        if i > 0 {
            r.text([line_break(), roman(line.as_str())]);
        } else {
            r.text([roman(line.as_str())]);
        }
    }
    for section in &doc.sections {
        let title = match section.table.as_str() {
            "" => "TOP-LEVEL KEYS".to_owned(),
            "client" => "[[client]]".to_owned(),
            "action" => "[[action]]".to_owned(),
            t => format!("[{t}]"),
        };
        r.control("SH", [title.as_str()]);
        description(&mut r, &section.intro);
        for entry in &section.entries {
            for (i, key) in entry.keys.iter().enumerate() {
                r.control(if i == 0 { "TP" } else { "TQ" }, []);
                let mut tag = vec![bold(key.name.as_str()), roman(format!(" = {}", key.value))];
                if key.commented && section.table != "client" && section.table != "action" {
                    tag.push(roman(" (commented out)"));
                }
                r.text(tag);
            }
            description(&mut r, &entry.text);
        }
    }
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([italic(DEFAULT_CONFIG)]);
    r.text([roman(
        "The default configuration. Owned by root, group sesame, mode 0640 when sesamed runs as the user sesame (the systemd unit).",
    )]);
    r.control("SH", ["EXAMPLES"]);
    r.text([roman(
        "The smallest useful configuration: ssh hidden until the laptop knocks.",
    )]);
    example_block(
        &mut r,
        CONFIG_PAGE_EXAMPLE.lines().collect::<Vec<_>>().as_slice(),
    );
    see_also(&mut r, &["sesamed(1)", "sesame(1)"]);
    ascii(&r.render())
}

/// Non-ASCII characters as roff escapes (`—` → `\[u2014]`): groff reads its input as Latin-1
/// unless told otherwise.
fn ascii(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out
}

/// The configuration shown under EXAMPLES in `sesamed.toml(5)` (a test parses it).
pub const CONFIG_PAGE_EXAMPLE: &str = r#"private_key_file = "/etc/sesame/server.key"
[firewall]
protect = ["tcp/22"]
[[client]]
name = "laptop"
public_key = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
allow = ["tcp/22"]"#;

/// Comment lines as a paragraph, filled, except that a `"value": …` line starts a new line
/// (a list of values), and an indented line after one ending in `:` stands on its own (a
/// command); other indented lines continue the one before.
fn description(r: &mut Roff, lines: &[String]) {
    let mut previous: Option<&str> = None;
    let mut after_display = false;
    for line in lines {
        let trimmed = line.trim_start();
        let indented = trimmed.len() < line.len();
        let display = indented && previous.is_some_and(|p| p.trim_end().ends_with(':'));
        let item = trimmed.starts_with('"') && trimmed.contains("\": ");
        if previous.is_some() && (display || item || after_display) {
            r.text([line_break(), roman(trimmed)]);
        } else {
            r.text([roman(trimmed)]);
        }
        after_display = display;
        previous = Some(line);
    }
}

fn example_block(r: &mut Roff, lines: &[&str]) {
    r.control("PP", []);
    r.control("RS", ["4"]);
    r.control("nf", []);
    for line in lines {
        r.text([roman(*line)]);
    }
    r.control("fi", []);
    r.control("RE", []);
}

fn see_also(r: &mut Roff, pages: &[&str]) {
    r.control("SH", ["SEE ALSO"]);
    let mut parts: Vec<Inline> = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        let (name, section) = page.split_once('(').unwrap_or((page, ""));
        if i > 0 {
            parts.push(roman(", "));
        }
        parts.push(bold(name));
        parts.push(roman(format!("({section}")));
    }
    r.text(parts);
}

/// The roff crate starts every rendering with the same two lines defining `Aq`; a page needs
/// them once.
fn without_preamble(r: &Roff) -> String {
    let text = r.render();
    let mut lines = text.split_inclusive('\n');
    let mut out = String::new();
    let mut skipping = true;
    for line in lines.by_ref() {
        if skipping && (line.starts_with(".ie ") || line.starts_with(".el ")) {
            continue;
        }
        skipping = false;
        out.push_str(line);
    }
    out
}

/// `extra` before the page's `.SH VERSION` (or at its end).
fn insert_before_version(page: &str, extra: &str) -> String {
    match page.find("\n.SH VERSION") {
        Some(at) => format!("{}\n{}{}", &page[..at], extra, &page[at + 1..]),
        None => format!("{page}{extra}"),
    }
}

/// The paths the example configuration names (for FILES).
struct ExampleFiles {
    private_key_file: String,
    state_dir: String,
    control_socket: String,
}

impl ExampleFiles {
    fn read() -> ExampleFiles {
        let table: toml::Table = EXAMPLE_CONFIG.parse().unwrap_or_default();
        let get = |key: &str, default: &str| {
            table
                .get(key)
                .and_then(toml::Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        ExampleFiles {
            private_key_file: get("private_key_file", "/etc/sesame/server.key"),
            state_dir: get("state_dir", "/var/lib/sesame"),
            control_socket: get("control_socket", "/run/sesame/sesamed.sock"),
        }
    }
}

/// A key as the example writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExampleKey {
    /// Its name.
    pub name: String,
    /// Its value, as written.
    pub value: String,
    /// Shown commented out (`# key = value`).
    pub commented: bool,
}

/// One or more keys and the comment above them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExampleEntry {
    /// The keys, in order.
    pub keys: Vec<ExampleKey>,
    /// The comment lines above them.
    pub text: Vec<String>,
}

/// The keys of one table (`""` for the top level).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExampleSection {
    /// `""`, `knock`, `firewall` or `client`.
    pub table: String,
    /// Comment lines before the table's header.
    pub intro: Vec<String>,
    /// Its keys.
    pub entries: Vec<ExampleEntry>,
}

/// The example configuration, read as documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExampleDoc {
    /// The comment at the top of the file.
    pub intro: Vec<String>,
    /// The tables in order.
    pub sections: Vec<ExampleSection>,
}

/// `key = value` (or `# key = value`) where `value` is a TOML value: a key line.
fn key_line(line: &str) -> Option<ExampleKey> {
    let (commented, body) = match line.strip_prefix('#') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, line),
    };
    let (name, value) = body.split_once('=')?;
    let name = name.trim();
    let ident = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !ident
        || format!("{name} = {}", value.trim())
            .parse::<toml::Table>()
            .is_err()
    {
        return None;
    }
    Some(ExampleKey {
        name: name.to_owned(),
        value: value.trim().to_owned(),
        commented,
    })
}

/// `[knock]`, `[[client]]`, `# [[client]]`: the table's name.
fn header_line(line: &str) -> Option<&str> {
    let body = line.strip_prefix('#').map_or(line, str::trim_start).trim();
    let name = body
        .strip_prefix("[[")
        .and_then(|b| b.strip_suffix("]]"))
        .or_else(|| body.strip_prefix('[').and_then(|b| b.strip_suffix(']')))?;
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c == '_')
        .then_some(name)
}

/// Reads the example configuration as documentation: the comment at the top, then for each
/// table its entries (keys, set or commented out, with the comment lines above them).
pub fn parse_example(text: &str) -> ExampleDoc {
    let mut doc = ExampleDoc::default();
    let mut lines = text.lines().peekable();
    // The file's own comment: up to the first blank line.
    while let Some(line) = lines.next_if(|l| !l.trim().is_empty()) {
        doc.intro.push(comment_text(line));
    }
    let mut section = ExampleSection::default();
    let mut comment: Vec<String> = Vec::new();
    let mut entry = ExampleEntry::default();
    for line in lines {
        let line = line.trim_end();
        if let Some(name) = header_line(line) {
            if !entry.keys.is_empty() {
                section.entries.push(std::mem::take(&mut entry));
            }
            doc.sections.push(std::mem::take(&mut section));
            section.table = name.to_owned();
            section.intro = std::mem::take(&mut comment);
        } else if let Some(key) = key_line(line) {
            if !comment.is_empty() && !entry.keys.is_empty() {
                section.entries.push(std::mem::take(&mut entry));
            }
            if entry.keys.is_empty() {
                entry.text = std::mem::take(&mut comment);
            }
            entry.keys.push(key);
        } else if line.starts_with('#') {
            if !entry.keys.is_empty() {
                section.entries.push(std::mem::take(&mut entry));
            }
            let text = comment_text(line);
            if !text.trim().is_empty() {
                comment.push(text);
            }
        } else if line.is_empty() && !entry.keys.is_empty() {
            section.entries.push(std::mem::take(&mut entry));
        }
    }
    if !entry.keys.is_empty() {
        section.entries.push(entry);
    }
    doc.sections.push(section);
    doc
}

/// A comment line without its `#` and the one space after it (more spaces stay: they indent).
fn comment_text(line: &str) -> String {
    let body = line.strip_prefix('#').unwrap_or(line);
    body.strip_prefix(' ').unwrap_or(body).to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn key_lines_and_prose_are_told_apart() {
        assert_eq!(
            key_line("# max_ahead_ms = 30000").map(|k| (k.name, k.commented)),
            Some(("max_ahead_ms".to_owned(), true))
        );
        assert_eq!(
            key_line("interfaces = [\"any\"]").map(|k| (k.name, k.commented)),
            Some(("interfaces".to_owned(), false))
        );
        for prose in [
            "# The sequence rotates every step: counter = floor(unix_seconds / step_seconds).",
            "#   sesamed client add NAME --public-key KEY --allow tcp/22",
            "# step = the time (not a value)",
            "# Name for logs, hook arguments and export-client.",
        ] {
            assert_eq!(key_line(prose), None, "{prose}");
        }
        assert_eq!(header_line("# [[client]]"), Some("client"));
        assert_eq!(header_line("[knock]"), Some("knock"));
        assert_eq!(header_line("# [see the README]"), None);
    }

    #[test]
    fn entries_keep_their_comment_and_groups() {
        let doc = parse_example(
            "# intro\n\n# A.\na = 1\n\n[t]\n# B and C.\n# b = 2\nc = 3\n# D.\nd = \"x\"\n\n# About u.\n#\n# [[u]]\n# E.\n# e = true\n",
        );
        assert_eq!(doc.intro, ["intro"]);
        let tables: Vec<&str> = doc.sections.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(tables, ["", "t", "u"]);
        let t = &doc.sections[1];
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.entries[0].text, ["B and C."]);
        let names: Vec<&str> = t.entries[0].keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert!(t.entries[0].keys[0].commented && !t.entries[0].keys[1].commented);
        assert_eq!(doc.sections[2].intro, ["About u."]);
        assert_eq!(doc.sections[2].entries[0].text, ["E."]);
    }

    #[test]
    fn the_main_page_has_the_extra_sections_before_version() {
        let cmd = clap::Command::new("sesamed").version("1.0").about("x");
        let page = main_page(cmd);
        let at = |s: &str| page.find(s).unwrap_or_else(|| panic!("no {s}:\n{page}"));
        assert!(at(".SH FILES") < at(".SH \"EXIT STATUS\""));
        assert!(at(".SH \"EXIT STATUS\"") < at(".SH EXAMPLES"));
        assert!(at(".SH \"SEE ALSO\"") < at(".SH VERSION"));
        assert_eq!(page.matches(".ie ").count(), 1, "one preamble:\n{page}");
    }
}
