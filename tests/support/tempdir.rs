//! A temporary directory for the CLI tests of `sesame` and `sesamed`, removed on drop. One
//! file, included by path from each test crate that needs it (`client/tests`, `server/tests`).
// Each test crate uses what it needs of this file.
#![allow(dead_code)]

use std::path::PathBuf;

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `sesame-test-TAG-RANDOM`.
    pub fn new(tag: &str) -> Self {
        let mut rnd = [0u8; 6];
        sesame_keys::fill_random(&mut rnd);
        let name: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("sesame-test-{tag}-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// `rel` inside the directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
