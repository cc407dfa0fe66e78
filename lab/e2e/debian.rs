//! The Debian packages `sesamed` and `sesame` (scripts/build-debs; scripts/test builds them and
//! names their directory in `SESAME_DEBS`), installed with this machine's own dpkg into a
//! scratch copy of this machine (the one lab/e2e/install.rs makes: `/etc`, `/usr` and `/var`
//! copy-on-write, `/run` empty, so nothing outside the test changes, also when it fails):
//!
//! - `dpkg -i`: the files each package lists (binary, unit, sysusers.d and tmpfiles.d, manual
//!   pages, completions, the example configuration under /usr/share/doc), the `sesame` system
//!   user, the owners and modes of /etc/sesame, its configuration (a conffile, the example
//!   byte for byte), the server's key made on install, /var/lib/sesame; the unit not enabled;
//!   `systemd-analyze verify` on the installed unit; `sesamed check` on the example
//!   configuration (as root, which tries the nftables table on the kernel) and as the service
//!   user;
//! - installed again (an upgrade): the admin's edits of the configuration, the key and the
//!   owners and modes are kept, and no key is made;
//! - `dpkg -r`: the programs go, the configuration, keys and state stay;
//! - `dpkg -P`: the state and the configuration go, the keys and PSKs stay (listed), and so do
//!   no statoverrides.
//!
//! And the same layout on a host without systemd-sysusers and systemd-tmpfiles (useradd and
//! install -d instead).

use std::path::{Path, PathBuf};

use sesame_tests::{Host, Lab, require_netns, text};

use crate::install::{SYSTEM_PATH, Scratch, assert_layout, sh_argv};

/// The two packages.
pub(crate) struct Debs {
    pub(crate) sesamed: PathBuf,
    pub(crate) sesame: PathBuf,
}

/// The environment variable naming the directory with the packages.
const DEBS_ENV: &str = "SESAME_DEBS";

/// The packages in the directory `SESAME_DEBS` names, one of each; without it the test is
/// skipped (and fails in CI).
pub(crate) fn debs() -> Option<Debs> {
    let Some(dir) = std::env::var_os(DEBS_ENV) else {
        sesame_tests::skip(
            "the Debian packages are not built: scripts/test builds them (scripts/build-debs) and names their directory in SESAME_DEBS",
        );
        return None;
    };
    let dir = PathBuf::from(dir);
    let names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{DEBS_ENV}={}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    let one = |prefix: &str| -> PathBuf {
        let found: Vec<&PathBuf> = names
            .iter()
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(prefix) && name.ends_with(".deb")
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{DEBS_ENV}={}: want one {prefix}*.deb, found {found:?}",
            dir.display()
        );
        std::path::absolute(found[0]).unwrap()
    };
    Some(Debs {
        sesamed: one("sesamed_"),
        sesame: one("sesame_"),
    })
}

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the packages must hold (`dpkg -L`).
const FILES: &[&str] = &[
    "/usr/sbin/sesamed",
    "/usr/lib/systemd/system/sesamed.service",
    "/usr/lib/sysusers.d/sesame.conf",
    "/usr/lib/tmpfiles.d/sesame.conf",
    "/etc/sesame/sesamed.toml",
    "/usr/share/doc/sesamed/examples/sesamed.toml",
    "/usr/share/doc/sesamed/README.md",
    "/usr/share/doc/sesamed/copyright",
    "/usr/share/man/man1/sesamed.1.gz",
    "/usr/share/man/man1/sesamed-check.1.gz",
    "/usr/share/man/man1/sesamed-client-add.1.gz",
    "/usr/share/man/man5/sesamed.toml.5.gz",
    "/usr/share/bash-completion/completions/sesamed",
    "/usr/share/zsh/vendor-completions/_sesamed",
    "/usr/share/fish/vendor_completions.d/sesamed.fish",
    "/usr/bin/sesame",
    "/usr/share/man/man1/sesame.1.gz",
    "/usr/share/man/man1/sesame-open.1.gz",
    "/usr/share/bash-completion/completions/sesame",
    "/usr/share/zsh/vendor-completions/_sesame",
    "/usr/share/fish/vendor_completions.d/sesame.fish",
];

/// Besides `install::LAYOUT` (sesamed, /etc/sesame, its configuration and key,
/// /var/lib/sesame): the client and what the packages install root's.
const PACKAGE_LAYOUT: &[(&str, &str, &str, u32, &str)] = &[
    crate::install::CLIENT,
    (
        "/usr/lib/systemd/system/sesamed.service",
        "root",
        "root",
        0o644,
        "regular file",
    ),
    (
        "/usr/share/doc/sesamed/examples/sesamed.toml",
        "root",
        "root",
        0o644,
        "regular file",
    ),
];

/// Runs `dpkg ARGS` in the scratch root and returns its output; it must succeed.
fn dpkg(scratch: &Scratch, args: &str) -> String {
    let o = scratch.sh(&format!("dpkg {args}"));
    assert!(o.status.success(), "dpkg {args}: {}", text(&o));
    text(&o)
}

/// A scratch root for the packages: man-db's index is not rebuilt at every install (its
/// trigger does that only when /var/lib/man-db/auto-update exists).
fn scratch_for_packages(lab: &Lab, tag: &str) -> Scratch {
    let scratch = Scratch::new(lab, tag);
    scratch.sh_ok("rm -f /var/lib/man-db/auto-update");
    let o = scratch.sh("dpkg-query -W -f='${Status}' sesamed");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("installed"),
        "sesamed is installed on this machine already: {}",
        text(&o)
    );
    scratch
}

fn exists(scratch: &Scratch, path: &str) -> bool {
    scratch.sh(&format!("test -e {path}")).status.success()
}

#[test]
fn debian_packages_install_check_upgrade_remove_and_purge() {
    if !require_netns() {
        return;
    }
    let Some(debs) = debs() else {
        return;
    };
    let lab = Lab::new("deb");
    let scratch = scratch_for_packages(&lab, "deb");
    let both = format!("'{}' '{}'", debs.sesamed.display(), debs.sesame.display());

    // Install.
    let out = dpkg(&scratch, &format!("-i {both}"));
    assert!(
        out.contains("made the server's key /etc/sesame/server.key"),
        "{out}"
    );
    assert!(out.contains("not enabled and not running"), "{out}");
    let listed = scratch.sh_ok("dpkg -L sesamed sesame");
    let missing: Vec<&&str> = FILES
        .iter()
        .filter(|f| !listed.lines().any(|l| l == **f))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the packages: {missing:?}\n{listed}"
    );
    assert_layout(&scratch, PACKAGE_LAYOUT, "the packages");
    let conffiles = scratch.sh_ok("dpkg-query -W -f='${Conffiles}' sesamed");
    assert!(
        conffiles.contains("/etc/sesame/sesamed.toml "),
        "conffiles: {conffiles}"
    );
    let example = std::fs::read_to_string(repo().join("examples/sesamed.toml")).unwrap();
    for file in [
        "/etc/sesame/sesamed.toml",
        "/usr/share/doc/sesamed/examples/sesamed.toml",
    ] {
        assert!(
            scratch.sh_ok(&format!("cat {file}")) == example,
            "{file} is not examples/sesamed.toml"
        );
    }
    let version = format!("sesamed {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(scratch.sh_ok("sesamed --version"), version);
    // Manual pages (gzipped) and completions for three shells.
    for (page, th) in [
        ("man1/sesamed.1.gz", ".TH sesamed 1"),
        ("man1/sesamed-check.1.gz", ".TH sesamed-check 1"),
        ("man5/sesamed.toml.5.gz", ".TH sesamed.toml 5"),
        ("man1/sesame.1.gz", ".TH sesame 1"),
    ] {
        let text = scratch.sh_ok(&format!("zcat /usr/share/man/{page}"));
        assert!(text.contains(th), "{page}: no `{th}`");
    }
    for cmd in ["sesamed", "sesame"] {
        scratch.sh_ok(&format!(
            "bash -c '. /usr/share/bash-completion/completions/{cmd} && complete -p {cmd}'"
        ));
        let zsh = scratch.sh_ok(&format!("cat /usr/share/zsh/vendor-completions/_{cmd}"));
        assert!(zsh.starts_with(&format!("#compdef {cmd}")), "_{cmd}: {zsh}");
        let fish = scratch.sh_ok(&format!(
            "cat /usr/share/fish/vendor_completions.d/{cmd}.fish"
        ));
        assert!(
            fish.contains(&format!("complete -c {cmd} ")),
            "{cmd}.fish: {fish}"
        );
    }
    // The unit: valid, installed, not enabled (with no client it would hide ssh from all).
    let env = [("PATH", std::ffi::OsString::from(SYSTEM_PATH))];
    let verify = [
        "systemd-analyze",
        "verify",
        "/usr/lib/systemd/system/sesamed.service",
    ]
    .map(std::ffi::OsString::from);
    let o = scratch
        .command(None, Path::new("/"), &env, &verify)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "systemd-analyze verify on the installed unit: {}",
        text(&o)
    );
    assert!(
        !exists(
            &scratch,
            "/etc/systemd/system/multi-user.target.wants/sesamed.service"
        ),
        "the package enabled sesamed"
    );
    // sesamed check on the example as installed: as root (in a namespace of its own, where
    // it also tries the nftables table with nft -c), and as the unit's user would.
    let o = scratch
        .command(
            Some(lab.ns(Host::Server)),
            Path::new("/"),
            &env,
            &sh_argv("sesamed check --config /usr/share/doc/sesamed/examples/sesamed.toml"),
        )
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(": ok (0 clients"),
        "sesamed check on the example: {}",
        text(&o)
    );
    let out = scratch.sh_ok("sesamed check --as-user sesame");
    assert!(out.contains("/etc/sesame/sesamed.toml: ok"), "{out}");

    // The admin adds a client and a PSK; the package is installed again (an upgrade).
    let key = scratch.sh_ok("cat /etc/sesame/server.key");
    let client = sesame_keys::PrivateKey::generate().public_key();
    scratch.sh_ok(&format!(
        "sesamed client add laptop --public-key '{client}' --allow tcp/22"
    ));
    scratch.sh_ok(
        "(umask 077; sesame genpsk > /etc/sesame/laptop.psk) && chown sesame:sesame /etc/sesame/laptop.psk",
    );
    let psk = scratch.sh_ok("cat /etc/sesame/laptop.psk");
    let config = scratch.sh_ok("cat /etc/sesame/sesamed.toml");
    assert!(config.contains("name = \"laptop\""), "{config}");
    let out = dpkg(&scratch, &format!("-i {both}"));
    assert!(!out.contains("made the server's key"), "{out}");
    assert_eq!(scratch.sh_ok("cat /etc/sesame/server.key"), key);
    assert_eq!(
        scratch.sh_ok("cat /etc/sesame/sesamed.toml"),
        config,
        "the upgrade changed the admin's configuration"
    );
    assert_layout(&scratch, PACKAGE_LAYOUT, "after an upgrade");
    let out = scratch.sh_ok("sesamed check --as-user sesame");
    assert!(out.contains(": ok (1 client"), "{out}");

    // Remove: the programs go; configuration, keys and state stay.
    scratch.sh_ok("install -d -o sesame -g sesame -m 0700 /var/lib/sesame && touch /var/lib/sesame/replay.journal");
    dpkg(&scratch, "-r sesamed sesame");
    for gone in ["/usr/sbin/sesamed", "/usr/bin/sesame"] {
        assert!(!exists(&scratch, gone), "{gone} is still there after -r");
    }
    for kept in [
        "/etc/sesame/sesamed.toml",
        "/etc/sesame/server.key",
        "/var/lib/sesame/replay.journal",
    ] {
        assert!(exists(&scratch, kept), "{kept} is gone after -r");
    }

    // Purge: state and configuration go, the keys stay (and are named), nothing else of ours.
    let out = dpkg(&scratch, "-P sesamed sesame");
    for named in ["/etc/sesame/server.key", "/etc/sesame/laptop.psk"] {
        assert!(
            out.contains(named),
            "purge does not say it kept {named}: {out}"
        );
    }
    for gone in [
        "/var/lib/sesame",
        "/etc/sesame/sesamed.toml",
        "/usr/lib/sysusers.d/sesame.conf",
        "/usr/lib/systemd/system/sesamed.service",
    ] {
        assert!(!exists(&scratch, gone), "{gone} is still there after -P");
    }
    assert_eq!(scratch.sh_ok("cat /etc/sesame/server.key"), key);
    assert_eq!(scratch.sh_ok("cat /etc/sesame/laptop.psk"), psk);
    let overrides = scratch.sh_ok("dpkg-statoverride --list");
    assert!(
        !overrides.contains("/etc/sesame"),
        "statoverrides left: {overrides}"
    );
    let o = scratch.sh("dpkg-query -W -f='${Status}' sesamed sesame");
    let status = String::from_utf8_lossy(&o.stdout);
    assert!(
        !status.contains("installed") || status.contains("not-installed"),
        "after purge: {}",
        text(&o)
    );
}

/// Without systemd-sysusers and systemd-tmpfiles (a host without systemd), the package makes
/// the same user and layout with useradd and install -d, and purges as well.
#[test]
fn debian_package_without_systemd_tools_gives_the_same_layout() {
    if !require_netns() {
        return;
    }
    let Some(debs) = debs() else {
        return;
    };
    let lab = Lab::new("deb-nosd");
    let scratch = scratch_for_packages(&lab, "deb-nosd");
    scratch.sh_ok("rm -f /usr/bin/systemd-sysusers /usr/bin/systemd-tmpfiles /bin/systemd-sysusers /bin/systemd-tmpfiles");
    assert!(
        !scratch
            .sh("command -v systemd-sysusers || command -v systemd-tmpfiles")
            .status
            .success()
    );
    dpkg(
        &scratch,
        &format!(
            "-i '{}' '{}'",
            debs.sesamed.display(),
            debs.sesame.display()
        ),
    );
    assert_layout(&scratch, PACKAGE_LAYOUT, "without systemd tools");
    let out = scratch.sh_ok("sesamed check --as-user sesame");
    assert!(out.contains("/etc/sesame/sesamed.toml: ok"), "{out}");
    dpkg(&scratch, "-P sesamed sesame");
    assert!(!exists(&scratch, "/var/lib/sesame"));
    assert!(exists(&scratch, "/etc/sesame/server.key"));
}
