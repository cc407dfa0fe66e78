//! CLI snapshot tests of `sesamed` (trycmd): every case is in `tests/cmd/` — `*.md` files (a
//! sequence of commands with their expected output and exit status, run in `NAME.in/`, and in
//! a copy of it compared with `NAME.out/` when that exists) and `*.toml` files (one command,
//! with `.stdout`, `.stderr`, `.in/` and `.out/` beside it). Regenerate after an intended
//! change with `TRYCMD=overwrite cargo test -p sesame-server --test snapshots`, then review the
//! diff. The configurations use the RFC 7748 test keys.
//!
//! The other tests check what a snapshot cannot: the terminal QR code decodes back to the URI
//! (with rqrr, as a camera would read the screen), `client add` then `client remove` gives the
//! file back byte for byte, comments that are not the removed client's survive, a failed
//! `--generate-key` leaves the configuration alone, and the completion and manual page work.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SESAMED: &str = env!("CARGO_BIN_EXE_sesamed");

/// Git does not keep file modes other than the executable bit: the key files of the cases
/// must be made 0600 before sesamed reads them (it refuses keys that others can read).
fn restrict_key_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            restrict_key_files(&path);
        } else if path.extension().is_some_and(|e| e == "key" || e == "psk") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

#[test]
fn cli_snapshots() {
    restrict_key_files(Path::new("tests/cmd"));
    trycmd::TestCases::new()
        .register_bin("sesamed", Path::new(SESAMED))
        .env("NO_COLOR", "1")
        .env("CLICOLOR_FORCE", "0")
        .env("RUST_BACKTRACE", "0")
        .case("tests/cmd/*.md")
        .case("tests/cmd/*.toml")
        .run();
}

use sesame_test_support::TempDir;

fn sesamed(args: &[&str], cwd: &Path) -> Output {
    Command::new(SESAMED)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
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
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A copy of `tests/cmd/check.in` (configuration, server key, phone PSK) in a temporary
/// directory.
fn check_config() -> TempDir {
    let dir = TempDir::new("cfg");
    for f in ["sesamed.toml", "server.key", "phone.psk"] {
        std::fs::copy(Path::new("tests/cmd/check.in").join(f), dir.path(f)).unwrap();
        std::fs::set_permissions(dir.path(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

// ---------------------------------------------------------------------------------------------
// QR codes

/// The modules of a QR code drawn with Unicode half blocks, as the terminal shows them:
/// `true` where a glyph is drawn (the foreground colour), `false` where the background shows.
/// Each text line holds two rows of modules (`▀` top, `▄` bottom, `█` both, space neither).
fn half_block_rows(text: &str) -> Vec<Vec<bool>> {
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for c in line.chars() {
            let (t, b) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                ' ' => (false, false),
                other => panic!("unexpected character {other:?} in the QR code:\n{text}"),
            };
            top.push(t);
            bottom.push(b);
        }
        rows.push(top);
        rows.push(bottom);
    }
    let width = rows.first().map_or(0, Vec::len);
    assert!(width > 21, "no QR code in:\n{text}");
    assert!(
        rows.iter().all(|r| r.len() == width),
        "ragged QR code:\n{text}"
    );
    // A code with its quiet zone is square and has an odd side: the last text line's bottom
    // half is padding.
    assert!(
        rows.len() == width || rows.len() == width + 1,
        "the QR code is {width} modules wide and {} high:\n{text}",
        rows.len()
    );
    rows.truncate(width);
    rows
}

/// Decodes a module matrix (`true` = dark) the way a camera would: as an image (4 pixels per
/// module, a white border), located and read by rqrr.
fn decode_modules(dark: &[Vec<bool>]) -> Result<String, String> {
    const SCALE: usize = 4;
    const BORDER: usize = 8;
    let n = dark.len();
    let side = n * SCALE + 2 * BORDER;
    let mut img = rqrr::PreparedImage::prepare_from_bitmap(side, side, |x, y| {
        if x < BORDER || y < BORDER || x >= BORDER + n * SCALE || y >= BORDER + n * SCALE {
            return false;
        }
        dark[(y - BORDER) / SCALE][(x - BORDER) / SCALE]
    });
    let grids = img.detect_grids();
    if grids.len() != 1 {
        return Err(format!("found {} QR codes, expected 1", grids.len()));
    }
    grids[0]
        .decode()
        .map(|(_, content)| content)
        .map_err(|e| format!("cannot decode the QR code: {e:?}"))
}

/// Reads a terminal QR code as it appears on a dark-background terminal (glyphs light, the
/// background dark), which is what `sesamed` draws for.
fn decode_terminal_qr(text: &str) -> Result<String, String> {
    let rows = half_block_rows(text);
    let dark: Vec<Vec<bool>> = rows
        .iter()
        .map(|r| r.iter().map(|glyph| !glyph).collect())
        .collect();
    decode_modules(&dark)
}

#[test]
fn export_client_qr_decodes_to_the_uri() {
    let dir = check_config();
    for (client, host) in [("laptop", "198.18.0.1"), ("phone", "ssh.example.org")] {
        let args = |extra: &str| {
            vec![
                "export-client".to_owned(),
                "--config".to_owned(),
                "sesamed.toml".to_owned(),
                client.to_owned(),
                "--host".to_owned(),
                host.to_owned(),
                extra.to_owned(),
            ]
        };
        let a = args("--uri");
        let uri_out = sesamed(&a.iter().map(String::as_str).collect::<Vec<_>>(), &dir.0);
        assert!(uri_out.status.success(), "{}", text(&uri_out));
        let uri = stdout(&uri_out).trim().to_owned();
        assert!(uri.starts_with("sesame://2/"), "{uri}");
        let a = args("--qr");
        let qr_out = sesamed(&a.iter().map(String::as_str).collect::<Vec<_>>(), &dir.0);
        assert!(qr_out.status.success(), "{}", text(&qr_out));
        let qr = stdout(&qr_out);
        assert!(!qr.contains("sesame://"), "--qr alone prints only the code");
        let decoded =
            decode_terminal_qr(&qr).unwrap_or_else(|e| panic!("{client}: {e}; the code:\n{qr}"));
        assert_eq!(decoded, uri, "{client}: the QR code carries the --uri text");
        // Both at once: the URI line, then the same code.
        let both = sesamed(
            &[
                "export-client",
                "--config",
                "sesamed.toml",
                client,
                "--host",
                host,
                "--uri",
                "--qr",
            ],
            &dir.0,
        );
        assert!(both.status.success(), "{}", text(&both));
        let both = stdout(&both);
        let (first, rest) = both.split_once('\n').unwrap();
        assert_eq!(first, uri);
        assert_eq!(decode_terminal_qr(rest).unwrap(), uri);
    }
}

/// `client add --generate-key`: the QR code carries the printed URI, and the private key in it
/// belongs to the public key written to the configuration.
#[test]
fn generated_key_qr_matches_the_configuration() {
    let dir = check_config();
    let o = sesamed(
        &[
            "client",
            "add",
            "--config",
            "sesamed.toml",
            "tablet",
            "--generate-key",
            "--host",
            "198.18.0.1",
            "--allow",
            "tcp/22",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    let uri = out
        .lines()
        .find(|l| l.starts_with("sesame://2/"))
        .unwrap_or_else(|| panic!("no URI in:\n{out}"))
        .to_owned();
    let qr: String = out
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| " ▀▄█".contains(c)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(decode_terminal_qr(&qr).unwrap(), uri);
    let decoded = sesame_proto::uri::ProfileUri::decode(&uri).unwrap();
    assert_eq!(decoded.name, "tablet");
    assert_eq!(decoded.profile.host, "198.18.0.1");
    let key = decoded
        .private_key
        .expect("the URI carries the private key");
    let config = std::fs::read_to_string(dir.path("sesamed.toml")).unwrap();
    let public = key.public_key().to_base64();
    assert!(
        config.contains(&format!("public_key = \"{public}\"")),
        "the configuration has the generated key's public half {public}:\n{config}"
    );
    assert!(
        !config.contains(&*key.to_base64()),
        "the private key is not stored"
    );
    let check = sesamed(&["check", "--config", "sesamed.toml"], &dir.0);
    assert!(check.status.success(), "{}", text(&check));
    assert!(stdout(&check).contains("3 clients"), "{}", text(&check));
}

/// If the profile cannot be made (here: the server key is unreadable), `--generate-key` must
/// not leave a client in the configuration whose private key nobody was ever shown.
#[test]
fn generate_key_that_cannot_print_the_key_changes_nothing() {
    let dir = check_config();
    std::fs::remove_file(dir.path("server.key")).unwrap();
    let before = std::fs::read_to_string(dir.path("sesamed.toml")).unwrap();
    let o = sesamed(
        &[
            "client",
            "add",
            "--config",
            "sesamed.toml",
            "tablet",
            "--generate-key",
            "--host",
            "198.18.0.1",
        ],
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("server.key"),
        "{}",
        text(&o)
    );
    let after = std::fs::read_to_string(dir.path("sesamed.toml")).unwrap();
    assert_eq!(
        after,
        before,
        "sesamed client add --generate-key failed ({}) but added the client anyway; its private key was never printed",
        String::from_utf8_lossy(&o.stderr).trim()
    );
}

// ---------------------------------------------------------------------------------------------
// Editing examples/sesamed.toml

/// A copy of examples/sesamed.toml whose paths point into `dir`.
fn example_copy(dir: &TempDir) -> (PathBuf, String) {
    let text = std::fs::read_to_string("../examples/sesamed.toml").unwrap();
    let text = text
        .replace("/etc/sesame/server.key", "server.key")
        .replace("/run/sesame/sesamed.sock", "sesamed.sock")
        .replace("/var/lib/sesame", "state");
    let path = dir.path("sesamed.toml");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

#[test]
fn client_add_then_remove_gives_the_example_back_byte_for_byte() {
    let dir = TempDir::new("roundtrip");
    let (path, original) = example_copy(&dir);
    let p = path.to_str().unwrap();
    let key = sesame_keys::PrivateKey::generate().public_key().to_base64();
    let o = sesamed(
        &[
            "client",
            "add",
            "--config",
            p,
            "phone",
            "--public-key",
            &key,
            "--allow",
            "tcp/22",
            "--source",
            "198.18.0.0/15",
            "--expires",
            "2030-01-01T00:00:00Z",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", text(&o));
    let added = std::fs::read_to_string(&path).unwrap();
    assert!(
        added.starts_with(&original),
        "client add only appends; the example's text is untouched:\n{added}"
    );
    assert!(added.contains("name = \"phone\""), "{added}");
    let o = sesamed(&["client", "remove", "--config", p, "phone"], &dir.0);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
}

/// Removing the only client (added the README's way to the example, which has none) keeps the
/// comments that document the section (how to add clients, the commented-out example) and
/// drops only the client's own lines.
#[test]
fn client_remove_keeps_the_comments_that_are_not_the_clients() {
    let dir = TempDir::new("rmfirst");
    let (path, original) = example_copy(&dir);
    let key = sesame_keys::PrivateKey::generate().public_key().to_base64();
    let p = path.to_str().unwrap();
    let o = sesamed(
        &[
            "client",
            "add",
            "--config",
            p,
            "laptop",
            "--public-key",
            &key,
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = sesamed(
        &[
            "client",
            "remove",
            "--config",
            path.to_str().unwrap(),
            "laptop",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", text(&o));
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(!after.contains("\nname = \"laptop\""), "{after}");
    // Everything before the client section is unchanged.
    let head = &original[..original.find("# One [[client]] per device").unwrap()];
    assert!(after.starts_with(head.trim_end()), "{after}");
    for comment in [
        "# One [[client]] per device.",
        "#   sesamed client add NAME --public-key KEY --allow tcp/22",
        "# [[client]]",
        "# name = \"laptop\"",
    ] {
        assert!(
            after.contains(comment),
            "`sesamed client remove laptop` on examples/sesamed.toml dropped the comment `{comment}`, which documents the [[client]] section, not the laptop; the file afterwards:\n{after}"
        );
    }
    // The file is still valid and can take a client again.
    let key = sesame_keys::PrivateKey::generate().public_key().to_base64();
    let o = sesamed(
        &[
            "client",
            "add",
            "--config",
            path.to_str().unwrap(),
            "phone",
            "--public-key",
            &key,
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", text(&o));
}

// ---------------------------------------------------------------------------------------------
// Completions and manual page

#[test]
fn bash_completion_completes() {
    let script = r#"
        source <("$SESAMED" completions bash) || exit 3
        complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=();
            _sesamed "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}";
            echo "${COMPREPLY[*]}"; }
        complete_words sesamed rel
        complete_words sesamed client re
        complete_words sesamed status --pro
        complete_words sesamed export-client --q
    "#;
    let o = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("SESAMED", SESAMED)
        .output()
        .expect("bash is installed");
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["reload", "remove", "--prometheus", "--qr"], "{out}");
}

#[test]
fn man_page_renders() {
    let o = Command::new(SESAMED).arg("man").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH sesamed 1"), "{page}");
    sesame_test_support::assert_man_page_renders(
        &page,
        "sesamed.8",
        &[
            "run",
            "reload",
            "client",
            "check",
            "status",
            "export",
            "completions",
        ],
    );
}

/// On a terminal, the code is drawn with explicit colours (white glyphs on black), so it reads
/// the same on light and dark themes: every line carries the colours and resets them, and
/// what is between is the code a camera decodes.
#[test]
fn terminal_qr_sets_its_own_colours() {
    let uri = "sesame://2/AAZsYXB0b3AKMTk4LjE4LjAuMd6e2317fcG001thwuzkNTc_g0PIW3hnTa38fhRviCtPAAAAHh5OIFXvAAAAAQYAFg";
    let plain = sesame_server::qr_colored(uri, false).unwrap();
    assert!(!plain.contains('\x1b'));
    let colored = sesame_server::qr_colored(uri, true).unwrap();
    let inner: Vec<&str> = colored
        .lines()
        .map(|l| {
            l.strip_prefix("\x1b[97;40m")
                .and_then(|l| l.strip_suffix("\x1b[0m"))
                .unwrap_or_else(|| panic!("line without its colours: {l:?}"))
        })
        .collect();
    assert_eq!(inner.join("\n"), plain.trim_end_matches('\n'));
    assert_eq!(decode_terminal_qr(&inner.join("\n")).unwrap(), uri);
}
