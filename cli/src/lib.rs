//! What the two programs, `sesame` (the client) and `sesamed` (the daemon), share at their
//! edge: one set of exit statuses ([`Exit`]), the parsing of the command line with clap
//! ([`parse`]), the one-line error on stderr ([`fail`]) and times as RFC 3339 text
//! ([`rfc3339`]).
//!
//! The statuses are ripgrep's, plus the client's 3: 0 success, 1 a failure, 2 a usage or
//! configuration error, 3 a knock sent that `sesame open --wait` cannot confirm. Each
//! binary's `run` maps its errors to them; this crate only prints and converts.
#![forbid(unsafe_code)]

pub mod rfc3339;

use std::ffi::OsString;
use std::fmt::Display;
use std::process::ExitCode;

/// How a run of `sesame` or `sesamed` ends: its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: it did what it was asked (also `--help` and `--version`).
    Success = 0,
    /// 1: a failure while running (a knock not sent, a daemon stopped by an error, …).
    Failure = 1,
    /// 2: a usage or configuration error: bad arguments, an invalid configuration or profile.
    Usage = 2,
    /// 3: `sesame open --wait` sent the knock but cannot tell whether it worked (the service
    /// answered already before it).
    Unconfirmed = 3,
}

impl Exit {
    /// The status as the process's exit code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The status of two outcomes together: a usage error over a failure over an unconfirmed
    /// knock over success (`sesame open` with several profiles).
    #[must_use]
    pub fn worse(self, other: Exit) -> Exit {
        let rank = |e: Exit| match e {
            Exit::Success => 0,
            Exit::Unconfirmed => 1,
            Exit::Failure => 2,
            Exit::Usage => 3,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// Parses a command line (its first word is the program's name) into `C`. When clap answers
/// instead (help, version, or an error in the arguments) its text is printed, the help and
/// version on stdout and an error on stderr, and the status to exit with is returned:
/// [`Exit::Success`] after help or version, [`Exit::Usage`] after an error.
pub fn parse<C, I, T>(args: I) -> Result<C, Exit>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    C::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        status_of(&e)
    })
}

/// The status after clap's answer: help and version go to stdout and end well, errors (and
/// the help clap prints for a missing subcommand) go to stderr.
fn status_of(e: &clap::Error) -> Exit {
    if e.use_stderr() {
        Exit::Usage
    } else {
        Exit::Success
    }
}

/// Prints `PROGRAM: MESSAGE` on stderr (the message on one line is the caller's part) and
/// returns `status` to exit with.
pub fn fail(program: &str, message: impl Display, status: Exit) -> ExitCode {
    eprintln!("{program}: {message}");
    status.into()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser, Debug)]
    #[command(name = "prog", version)]
    struct Cli {
        #[arg(long)]
        count: u8,
    }

    #[test]
    fn the_codes_are_the_documented_ones() {
        let codes = [Exit::Success, Exit::Failure, Exit::Usage, Exit::Unconfirmed].map(Exit::code);
        assert_eq!(codes, [0, 1, 2, 3]);
    }

    #[test]
    fn parse_returns_the_arguments() {
        let cli: Result<Cli, Exit> = parse(["prog", "--count", "7"]);
        assert_eq!(cli.map(|c| c.count).ok(), Some(7));
    }

    #[test]
    fn help_and_version_succeed_and_errors_are_usage_errors() {
        let status = |args: &[&str]| match Cli::try_parse_from(args) {
            Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
            Err(e) => status_of(&e),
        };
        assert_eq!(status(&["prog", "--help"]), Exit::Success);
        assert_eq!(status(&["prog", "--version"]), Exit::Success);
        assert_eq!(status(&["prog", "--count", "x"]), Exit::Usage);
        assert_eq!(status(&["prog"]), Exit::Usage);
        assert_eq!(status(&["prog", "--count", "1", "--other"]), Exit::Usage);
    }

    #[test]
    fn worse_ranks_usage_over_failure_over_unconfirmed_over_success() {
        let order = [Exit::Success, Exit::Unconfirmed, Exit::Failure, Exit::Usage];
        for (i, a) in order.iter().enumerate() {
            for (j, b) in order.iter().enumerate() {
                let want = order[i.max(j)];
                assert_eq!(a.worse(*b), want, "{a:?} with {b:?}");
            }
        }
    }
}
