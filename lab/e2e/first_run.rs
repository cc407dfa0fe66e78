//! A first run on a fresh machine: the README's two commands install what they lack and say
//! honestly what did not run.
//!
//! - `scripts/install-deps` (which `scripts/demo`, `scripts/test` and `.ci/run` use): as root
//!   with apt-get it installs the packages whose programs are missing (here in a scratch copy of
//!   this machine from which `nft` was removed, with an `apt-get` stand-in that puts it back),
//!   without leaving its policy-rc.d behind; without root it names the packages and the
//!   command that installs them, and the demo stops there instead of failing later.
//! - `scripts/test` with a `cargo` stand-in: tests that recorded a skip (`sesame_tests::skip`)
//!   are counted as skipped, not passed, with their reason; the exit status is 3, not 0; 1 when
//!   a test failed; 0 only when everything ran.
//!
//! On the tree before these scripts, the demo said "'nft' is missing" and stopped, and the
//! README's test command counted skipped end-to-end tests as passed: these tests fail there
//! (the scripts do not exist).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sesame_tests::{Lab, require_netns, text};

use crate::install::{SYSTEM_PATH, Scratch};

fn repo() -> PathBuf {
    std::path::absolute(Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap()
}

/// A directory for stand-ins, removed at the end.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new(tag: &str) -> Dir {
        Dir(tempfile::Builder::new()
            .prefix(&format!("sesame-{tag}-"))
            .tempdir()
            .unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn script(&self, name: &str, body: &str) {
        let p = self.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The directory of the cargo (and rustc) that built this test.
fn toolchain_dir() -> PathBuf {
    Path::new(env!("CARGO")).parent().unwrap().to_owned()
}

/// As root, where `nft` is missing: `scripts/install-deps demo` asks apt-get for nftables and
/// nothing else the demo needs, blocks service starts while it installs and removes its
/// blocker afterwards.
#[test]
fn first_run_install_deps_installs_what_the_demo_lacks_with_apt_get() {
    if !require_netns() {
        return;
    }
    let lab = Lab::new("firstrun");
    let scratch = Scratch::new(&lab, "firstrun");
    let fake = Dir::new("firstrun-apt");
    let log = fake.path().join("apt-get.log");
    // apt-get: records its arguments and the blocker it finds, and installs nftables by
    // putting the real nft back.
    fake.script(
        "apt-get",
        &format!(
            "echo \"$* | policy-rc.d: $(cat /usr/sbin/policy-rc.d 2>/dev/null | tail -1)\" >> '{}'\ncase \"$*\" in *nftables*) mv /usr/local/lib/nft.real /usr/sbin/nft ;; esac\n",
            log.display()
        ),
    );
    let blocker_before = scratch.sh("test -e /usr/sbin/policy-rc.d").status.success();
    scratch.sh_ok("mkdir -p /usr/local/lib && mv /usr/sbin/nft /usr/local/lib/nft.real");
    let path = format!(
        "{}:{}:{SYSTEM_PATH}",
        fake.path().display(),
        toolchain_dir().display()
    );
    let env = [("PATH", path.into()), ("HOME", "/root".into())];
    let argv = ["scripts/install-deps", "demo"].map(std::ffi::OsString::from);
    let o = scratch
        .command(None, &repo(), &env, &argv)
        .output()
        .unwrap();
    assert!(o.status.success(), "install-deps demo: {}", text(&o));
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 2, "apt-get calls: {calls}");
    assert!(lines[0].starts_with("update"), "{calls}");
    assert!(
        lines[1].starts_with("install -y -qq --no-install-recommends nftables |"),
        "only nftables is missing: {calls}"
    );
    if !blocker_before {
        assert!(
            lines[1].ends_with("exit 101"),
            "services may start while it installs: {calls}"
        );
        assert!(
            !scratch.sh("test -e /usr/sbin/policy-rc.d").status.success(),
            "install-deps left /usr/sbin/policy-rc.d behind"
        );
    }
    scratch.sh_ok("command -v nft");
    // Nothing missing any more: no apt-get at all.
    std::fs::remove_file(&log).unwrap();
    let o = scratch
        .command(None, &repo(), &env, &argv)
        .output()
        .unwrap();
    assert!(o.status.success(), "install-deps demo: {}", text(&o));
    assert!(!log.exists(), "apt-get ran with nothing missing");
}

/// Runs `program args` with exactly `path` as PATH and `env`, in the repository.
fn run_with_path(program: &str, args: &[&str], path: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join(program))
        .args(args)
        .current_dir(repo())
        .env_clear()
        .env("PATH", path)
        .env("HOME", std::env::var_os("HOME").unwrap_or_default());
    if let Some(tmp) = std::env::var_os("TMPDIR") {
        cmd.env("TMPDIR", tmp);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Not root, and `ip` and `nft` missing: install-deps installs nothing, names the two packages
/// and the command that installs them, and exits 1; the demo stops with that, before it
/// builds anything.
#[test]
fn first_run_without_root_names_the_missing_packages() {
    let fake = Dir::new("firstrun-user");
    // A PATH with the programs the scripts use, less ip and nft; id says "not root";
    // apt-get must not be run.
    for tool in [
        "bash", "dirname", "sed", "awk", "sort", "cat", "tail", "cc", "dpkg", "mktemp", "rm",
        "tee", "cut", "uniq", "wc", "env", "sh",
    ] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(real, fake.path().join(tool)).unwrap();
    }
    for tool in ["cargo", "rustc"] {
        std::os::unix::fs::symlink(toolchain_dir().join(tool), fake.path().join(tool)).unwrap();
    }
    fake.script("id", "[ \"$1\" = -u ] && { echo 1000; exit 0; }; exit 1\n");
    fake.script("apt-get", "echo \"apt-get ran: $*\" >&2; exit 99\n");
    let path = fake.path().to_string_lossy().into_owned();
    let o = run_with_path("scripts/install-deps", &["demo"], &path, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing: iproute2 nftables\n"), "{err}");
    assert!(
        err.contains("sudo apt-get install --no-install-recommends iproute2 nftables"),
        "{err}"
    );
    assert!(!err.contains("apt-get ran"), "{err}");

    let o = run_with_path("scripts/demo", &[], &path, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("missing: iproute2 nftables"), "{err}");
    assert!(
        err.contains("demo: install what is missing (above), then run it again"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("building"));
}

/// `scripts/test`'s account, with a `cargo` stand-in whose "tests" pass, record skips, or fail,
/// and whose replay of the fuzz corpora with `--cfg fuzzing` (one check) passes or fails.
#[test]
fn first_run_scripts_test_counts_skipped_tests_as_skipped_not_passed() {
    let fake = Dir::new("firstrun-test");
    fake.script(
        "cargo",
        r#"echo "cargo $*"
case "$*" in
*"-p sesame-fuzz-harness --test corpus"*)
    echo "fuzz replay with RUSTFLAGS=$RUSTFLAGS"
    if [ "$FAKE_CARGO" = fuzz-fails ]; then exit 101; fi
    exit 0
    ;;
esac
echo "test result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
case "$FAKE_CARGO" in
skips)
    printf 'e2e::a\tend-to-end tests need root, ip netns and nft: not root (euid 1000)\n' >> "$SESAME_SKIP_LOG"
    printf 'e2e::b\tend-to-end tests need root, ip netns and nft: not root (euid 1000)\n' >> "$SESAME_SKIP_LOG"
    printf 'e2e::c\tnmap is not installed\n' >> "$SESAME_SKIP_LOG"
    ;;
fails)
    echo "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
    exit 101
    ;;
esac
"#,
    );
    fake.script("python3", "echo 'vectors: ok'\n");
    fake.script(
        "id",
        "[ \"$1\" = -u ] && { echo 1000; exit 0; }; exec /usr/bin/id \"$@\"\n",
    );
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fake.path().display());
    let run = |mode: &str| {
        let o = run_with_path("scripts/test", &[], &path, &[("FAKE_CARGO", mode)]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            o,
        )
    };

    let (code, out, o) = run("skips");
    assert_eq!(code, Some(3), "skipped tests must not exit 0: {}", text(&o));
    assert!(
        out.contains("3 end-to-end tests were SKIPPED, not passed:"),
        "{out}"
    );
    assert!(
        out.contains("   2 × end-to-end tests need root, ip netns and nft: not root (euid 1000)"),
        "{out}"
    );
    assert!(out.contains("   1 × nmap is not installed"), "{out}");
    assert!(
        out.contains("sudo env \"PATH=$PATH\" scripts/test"),
        "{out}"
    );
    // 7 passed, 3 of which skipped; the vector check and the fuzz replay passed.
    assert!(
        out.contains("\ntests: 6 passed, 0 failed, 3 skipped\n"),
        "{out}"
    );

    let (code, out, o) = run("ok");
    assert_eq!(code, Some(0), "{}", text(&o));
    assert!(
        out.contains("\ntests: 9 passed, 0 failed, 0 skipped\n"),
        "{out}"
    );
    assert!(!out.contains("SKIPPED"), "{out}");
    assert!(
        out.contains("fuzz replay with RUSTFLAGS=--cfg fuzzing\n"),
        "{out}"
    );

    let (code, out, o) = run("fails");
    assert_eq!(code, Some(1), "{}", text(&o));
    assert!(
        out.contains("\ntests: 12 passed, 1 failed, 0 skipped\n"),
        "{out}"
    );

    let (code, out, o) = run("fuzz-fails");
    assert_eq!(code, Some(1), "{}", text(&o));
    assert!(
        out.contains("the fuzz corpora's replay with --cfg fuzzing FAILED\n")
            && out.contains("\ntests: 8 passed, 1 failed, 0 skipped\n"),
        "{out}"
    );
}

/// `sesame_tests::skip` writes one `TEST<TAB>WHY` line per call to the file
/// `SESAME_SKIP_LOG` names, the test being the thread's name; several tests at once give
/// whole lines.
#[test]
fn first_run_skip_records_the_test_and_its_reason() {
    if sesame_tests::in_ci() {
        // skip() fails in CI by design; the recording is checked outside CI.
        return;
    }
    let dir = Dir::new("firstrun-skiplog");
    let log = dir.path().join("skipped");
    let o = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "first_run::first_run_skip_helper",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env("SESAME_SKIP_LOG", &log)
        .env("SESAME_FIRST_RUN_SKIP_HELPER", "1")
        .env_remove("CI")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        recorded,
        "first_run::first_run_skip_helper\ta reason with a tab and a new line\n"
    );
}

/// Run by [`first_run_skip_records_the_test_and_its_reason`] in a process of its own.
#[test]
#[ignore = "a helper: first_run_skip_records_the_test_and_its_reason runs it"]
fn first_run_skip_helper() {
    if std::env::var_os("SESAME_FIRST_RUN_SKIP_HELPER").is_some() {
        sesame_tests::skip("a reason with a tab\tand a new\nline");
    }
}
