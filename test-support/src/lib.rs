//! Helpers shared by the CLI tests of `sesame` and `sesamed` (`client/tests`, `server/tests`):
//! a temporary directory and a check of the manual pages. A dev-dependency only; not
//! published.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(
    /// The directory's path.
    pub PathBuf,
    // Held for its `Drop`, which removes the directory.
    #[allow(dead_code)] tempfile::TempDir,
);

impl TempDir {
    /// `sesame-test-TAG-RANDOM`, mode 0755 (as `mkdir` makes it; tempfile's is 0700).
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sesame-test-{tag}-"))
            .tempdir()
            .expect("create a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temporary directory");
        TempDir(dir.path().to_path_buf(), dir)
    }

    /// `rel` inside the directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

/// Checks that a manual page is valid roff: groff renders it without warnings, and the
/// rendering names each of `subcommands`. Skipped (with a note) where groff is missing.
pub fn assert_man_page_renders(page: &str, file_name: &str, subcommands: &[&str]) {
    let tmp = TempDir::new("man");
    std::fs::write(tmp.path(file_name), page).unwrap();
    let r = match std::process::Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(tmp.path(file_name))
        .output()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("groff not available ({e}); rendering not checked");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "groff failed: {stderr}");
    assert!(stderr.is_empty(), "groff warnings: {stderr}");
    let rendered = String::from_utf8_lossy(&r.stdout);
    for sub in subcommands {
        assert!(
            rendered.contains(sub),
            "the manual page lists `{sub}`: {rendered}"
        );
    }
}
