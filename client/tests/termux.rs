//! The Termux:Widget shortcut shipped in packaging/termux/ (README, "sesame on Android
//! (Termux)"): its syntax (bash -n, and shellcheck where it is installed; CI installs it), and
//! what it does, run by bash against a stand-in `sesame` and `termux-toast`.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/termux/sesame-open-myserver")
}

/// bash, from this process's PATH.
fn bash() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("bash"))
        .find(|p| p.is_file())
        .expect("bash is not on PATH")
}

#[test]
fn script_is_valid_bash() {
    let path = script();
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "{} is not executable", path.display());
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("#!/data/data/com.termux/files/usr/bin/bash\n"),
        "Termux's bash is not at /bin/bash: the shebang must name its own"
    );
    let o = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn script_passes_shellcheck() {
    match Command::new("shellcheck").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ if std::env::var_os("CI").is_some() => {
            panic!("shellcheck is not installed (.ci/run installs it)")
        }
        _ => {
            eprintln!("skipped: shellcheck is not installed");
            return;
        }
    }
    let o = Command::new("shellcheck").arg(script()).output().unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A scratch HOME with the shortcut installed as ~/.shortcuts/NAME, a stand-in `sesame` in
/// ~/.cargo/bin (where `cargo install` puts it, off Termux:Widget's PATH) and, optionally, a
/// stand-in `termux-toast`. Each records its arguments.
struct Phone {
    home: PathBuf,
    bin: PathBuf,
    shortcut: PathBuf,
}

impl Phone {
    fn new(tag: &str, name: &str) -> Phone {
        let home = std::env::temp_dir().join(format!("sesame-termux-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&home);
        let bin = home.join("usr/bin");
        for d in [&bin, &home.join(".shortcuts"), &home.join(".cargo/bin")] {
            fs::create_dir_all(d).unwrap();
        }
        let shortcut = home.join(".shortcuts").join(name);
        fs::copy(script(), &shortcut).unwrap();
        Phone {
            home,
            bin,
            shortcut,
        }
    }

    fn tool(&self, path: &Path, body: &str) {
        fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A `sesame` that prints `line`, says `err` on stderr and exits with `status`.
    fn sesame(&self, line: &str, err: &str, status: i32) {
        let log = self.home.join("sesame.args");
        self.tool(
            &self.home.join(".cargo/bin/sesame"),
            &format!(
                "printf '%s\\n' \"$*\" > '{}'\necho '{line}'\necho '{err}' >&2\nexit {status}",
                log.display()
            ),
        );
    }

    fn toast(&self) {
        let log = self.home.join("toast.args");
        self.tool(
            &self.bin.join("termux-toast"),
            &format!("printf '%s\\n' \"$*\" > '{}'", log.display()),
        );
    }

    fn run(&self) -> Output {
        // PATH holds only the stand-ins: the script needs nothing else (and must not find a
        // real sesame on this host). bash itself is found on this process's PATH.
        Command::new(bash())
            .arg(&self.shortcut)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", &self.bin)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn read(&self, file: &str) -> Option<String> {
        fs::read_to_string(self.home.join(file)).ok()
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.home);
    }
}

#[test]
fn opens_the_profile_named_by_the_file_and_toasts_the_result() {
    let phone = Phone::new("open", "sesame-open-work");
    phone.sesame("ssh.example.org tcp/22 answers (after 1 knock)", "", 0);
    phone.toast();
    let o = phone.run();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(phone.read("sesame.args").unwrap(), "open work --wait\n");
    assert_eq!(
        phone.read("toast.args").unwrap(),
        "-g bottom sesame: work is open\n"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("tcp/22 answers"), "{out}");
}

#[test]
fn a_failure_keeps_sesames_status_and_shows_its_last_line() {
    let phone = Phone::new("fail", "sesame-open-myserver");
    phone.sesame(
        "",
        "sesame: ssh.example.org:22 never answered after 3 knocks",
        1,
    );
    phone.toast();
    let o = phone.run();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(phone.read("sesame.args").unwrap(), "open myserver --wait\n");
    assert_eq!(
        phone.read("toast.args").unwrap(),
        "-g bottom sesame: myserver failed (1): sesame: ssh.example.org:22 never answered after 3 knocks\n"
    );
}

#[test]
fn answered_before_the_knock_is_status_3() {
    let phone = Phone::new("before", "sesame-open-myserver");
    phone.sesame("", "sesame: already answered", 3);
    phone.toast();
    let o = phone.run();
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        phone
            .read("toast.args")
            .unwrap()
            .contains("answered before the knock"),
    );
}

#[test]
fn without_termux_api_the_result_goes_to_the_terminal() {
    let phone = Phone::new("notoast", "sesame-open-myserver");
    phone.sesame("knocked", "", 0);
    let o = phone.run();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("sesame: myserver is open"), "{out}");
    assert!(phone.read("toast.args").is_none());
}

#[test]
fn without_sesame_it_says_how_to_install_it() {
    let phone = Phone::new("missing", "sesame-open-myserver");
    phone.toast();
    let o = phone.run();
    assert_eq!(o.status.code(), Some(127), "{o:?}");
    assert!(
        phone
            .read("toast.args")
            .unwrap()
            .contains("sesame is not installed"),
    );
}
