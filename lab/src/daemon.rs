//! `sesame` and `sesamed` in a lab: one-shot commands and the running daemon.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::lab::{Host, Lab};
use crate::process::{Proc, bin, text};

impl Lab {
    /// Runs `sesame ARGS` in the client namespace (or another) and returns the output.
    pub fn sesame<S: AsRef<OsStr>>(&self, host: Host, args: &[S]) -> Output {
        self.run(host, bin("sesame"), args)
    }

    /// Runs `sesamed ARGS` in the server namespace and returns the output.
    pub fn sesamed<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.run(Host::Server, bin("sesamed"), args)
    }

    /// Starts `sesamed run --config CONFIG` in the server namespace and waits for its `ready`
    /// line; panics (with the log) if it exits or is not ready in 15 s.
    pub fn start_sesamed(&self, config: &Path) -> Proc {
        let level = std::env::var("SESAME_E2E_RUST_LOG").unwrap_or_else(|_| "info".to_owned());
        let mut p = self.spawn(
            Host::Server,
            "sesamed",
            bin("sesamed"),
            &[
                OsStr::new("run"),
                OsStr::new("--config"),
                config.as_os_str(),
            ],
            &[("RUST_LOG", level.as_str()), ("NO_COLOR", "1")],
        );
        if p.wait_for(&["ready"], Duration::from_secs(15)).is_none() {
            let status = p.exited();
            panic!(
                "lab {}: sesamed did not log `ready` within 15 s (exit status {status:?}); output:\n{}",
                self.tag,
                p.output()
            );
        }
        p
    }

    /// `nft list ruleset` in the server namespace (for messages).
    pub fn server_ruleset(&self) -> String {
        let o = self.run(Host::Server, "nft", &["list", "ruleset"]);
        text(&o)
    }
}
