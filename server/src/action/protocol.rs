//! The lines the daemon and its action runner exchange over a pipe pair.
//!
//! Daemon → runner (the runner's stdin):
//!
//! ```text
//! run ID ACTION CLIENT SOURCE [ARGUMENT]   run ACTION for CLIENT, whose knock came from SOURCE
//! reload                                   read the configuration again, and keep it aside
//! commit                                   use what `reload` read from now on
//! abort                                    forget what `reload` read
//! ```
//!
//! Runner → daemon (its stdout):
//!
//! ```text
//! ready FINGERPRINT                        started, with these actions (see `fingerprint`)
//! error MESSAGE                            could not start (then it exits)
//! start ID PID                             the command of request ID runs as process PID
//! done ID OUTCOME CODE MS [TEXT]           it ended: exited (CODE: its status), killed (at its
//!                                          timeout; CODE -) or failed (never ran; CODE -),
//!                                          after MS milliseconds; TEXT: the first line of its
//!                                          stderr, or why it failed
//! reloaded FINGERPRINT                     the configuration was read again (and is kept aside
//!                                          until `commit`)
//! refused MESSAGE                          it was not (the one in use stays)
//! ```
//!
//! The parser is strict: single spaces between fields, no leading or trailing space, printable
//! ASCII only, at most [`MAX_LINE`] bytes, every field checked (an action name is a wire action
//! name, a source an address in its canonical text form, an argument a wire argument), and a
//! line that parses is exactly what [`ToRunner::to_line`] or [`FromRunner::to_line`] would
//! write for it. The runner trusts nothing the daemon sends: it checks every request again
//! against its own reading of the configuration.

use std::fmt;
use std::net::IpAddr;

/// Longest line either side sends or accepts (without its newline).
pub const MAX_LINE: usize = 1024;

/// Longest text of a `done` line (the first line of the command's stderr).
pub const MAX_TEXT: usize = 200;

/// A request to run an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRequest {
    /// Chosen by the daemon; answered in `start` and `done`.
    pub id: u64,
    /// The action's name.
    pub action: String,
    /// The client's name.
    pub client: String,
    /// Where its knock came from.
    pub source: IpAddr,
    /// The knock's argument (empty: none).
    pub argument: String,
}

/// What the daemon asks of the runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToRunner {
    /// Run an action.
    Run(RunRequest),
    /// Read the configuration again, and keep it aside until [`ToRunner::Commit`].
    Reload,
    /// Use the configuration the last `reload` read.
    Commit,
    /// Forget the configuration the last `reload` read.
    Abort,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The command exited (with the status in [`Done::code`]).
    Exited,
    /// It was still running at its timeout and was killed, with its process group.
    Killed,
    /// It never ran (the program could not be started, or the runner refused the request).
    Failed,
}

impl Outcome {
    /// As written on the wire and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Exited => "exited",
            Outcome::Killed => "killed",
            Outcome::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "exited" => Some(Outcome::Exited),
            "killed" => Some(Outcome::Killed),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// The request.
    pub id: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The exit status (0 to 255; 128 + N for a command ended by signal N), for `exited`.
    pub code: Option<u8>,
    /// How long it ran, in milliseconds.
    pub ms: u64,
    /// The first line of its stderr (or why it failed), at most [`MAX_TEXT`] printable
    /// characters; may be empty.
    pub text: String,
}

/// What the runner tells the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromRunner {
    /// Started, with the actions of this fingerprint.
    Ready {
        /// See [`crate::action::fingerprint`].
        fingerprint: String,
    },
    /// Could not start (it exits after this line).
    Error {
        /// Why.
        message: String,
    },
    /// A request's command runs.
    Started {
        /// The request.
        id: u64,
        /// The command's process id (also its process group).
        pid: u32,
    },
    /// A request's command ended (or never ran).
    Done(Done),
    /// The configuration was read again.
    Reloaded {
        /// The new actions' fingerprint.
        fingerprint: String,
    },
    /// Reading the configuration again failed; the previous one stays.
    Refused {
        /// Why.
        message: String,
    },
}

/// Why a line was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The line is longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    /// The line holds a byte that is not printable ASCII (or a tab, CR, ...).
    #[error("line holds a byte that is not printable ASCII")]
    NotPrintable,
    /// The line does not start with a known word.
    #[error("unknown line")]
    Unknown,
    /// A field is missing, extra, empty or out of its values.
    #[error("bad {0} field")]
    Field(&'static str),
}

/// Printable ASCII, space included.
fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Text made safe for a `done` line, a log line and a status field: the first line with
/// anything but spaces and printable characters in it, trimmed, everything not printable
/// ASCII replaced by `?`, at most `max` characters.
pub fn sanitize(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(max)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

fn id(s: &str) -> Result<u64, ProtocolError> {
    number(s).ok_or(ProtocolError::Field("id"))
}

/// A decimal number without sign or leading zero (`0` itself excepted).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// A client name as the configuration allows it: 1 to 64 of letters, digits, `.`, `_`, `-`.
pub fn is_client_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn fingerprint(s: &str) -> Result<String, ProtocolError> {
    if s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(s.to_owned())
    } else {
        Err(ProtocolError::Field("fingerprint"))
    }
}

fn message(s: &str) -> Result<String, ProtocolError> {
    if s.is_empty() || s != s.trim() {
        return Err(ProtocolError::Field("message"));
    }
    Ok(s.to_owned())
}

fn check_line(line: &str) -> Result<(), ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    if !printable(line) {
        return Err(ProtocolError::NotPrintable);
    }
    Ok(())
}

impl ToRunner {
    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        check_line(line)?;
        match line {
            "reload" => return Ok(ToRunner::Reload),
            "commit" => return Ok(ToRunner::Commit),
            "abort" => return Ok(ToRunner::Abort),
            _ => {}
        }
        let rest = line.strip_prefix("run ").ok_or(ProtocolError::Unknown)?;
        let fields: Vec<&str> = rest.split(' ').collect();
        if !(4..=5).contains(&fields.len()) {
            return Err(ProtocolError::Field("count"));
        }
        let id = id(fields[0])?;
        let action = fields[1];
        if !sesame_proto::wire::is_action_name(action.as_bytes()) {
            return Err(ProtocolError::Field("action"));
        }
        let client = fields[2];
        if !is_client_name(client) {
            return Err(ProtocolError::Field("client"));
        }
        let source: IpAddr = fields[3]
            .parse()
            .map_err(|_| ProtocolError::Field("source"))?;
        if source.to_string() != fields[3] {
            return Err(ProtocolError::Field("source"));
        }
        let argument = fields.get(4).copied().unwrap_or("");
        if fields.len() == 5
            && (argument.is_empty() || !sesame_proto::wire::is_action_argument(argument.as_bytes()))
        {
            return Err(ProtocolError::Field("argument"));
        }
        Ok(ToRunner::Run(RunRequest {
            id,
            action: action.to_owned(),
            client: client.to_owned(),
            source,
            argument: argument.to_owned(),
        }))
    }

    /// The line (without its newline).
    pub fn to_line(&self) -> String {
        match self {
            ToRunner::Reload => "reload".to_owned(),
            ToRunner::Commit => "commit".to_owned(),
            ToRunner::Abort => "abort".to_owned(),
            ToRunner::Run(r) => {
                let mut line = format!("run {} {} {} {}", r.id, r.action, r.client, r.source);
                if !r.argument.is_empty() {
                    line.push(' ');
                    line.push_str(&r.argument);
                }
                line
            }
        }
    }
}

impl FromRunner {
    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        check_line(line)?;
        let (word, rest) = line.split_once(' ').ok_or(ProtocolError::Unknown)?;
        match word {
            "ready" => Ok(FromRunner::Ready {
                fingerprint: fingerprint(rest)?,
            }),
            "reloaded" => Ok(FromRunner::Reloaded {
                fingerprint: fingerprint(rest)?,
            }),
            "error" => Ok(FromRunner::Error {
                message: message(rest)?,
            }),
            "refused" => Ok(FromRunner::Refused {
                message: message(rest)?,
            }),
            "start" => {
                let (i, pid) = rest.split_once(' ').ok_or(ProtocolError::Field("count"))?;
                let pid = number(pid)
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or(ProtocolError::Field("pid"))?;
                Ok(FromRunner::Started { id: id(i)?, pid })
            }
            "done" => {
                let mut parts = rest.splitn(5, ' ');
                let id = id(parts.next().unwrap_or(""))?;
                let outcome = Outcome::parse(parts.next().unwrap_or(""))
                    .ok_or(ProtocolError::Field("outcome"))?;
                let code = match (outcome, parts.next().unwrap_or("")) {
                    (Outcome::Exited, c) => Some(
                        number(c)
                            .and_then(|c| u8::try_from(c).ok())
                            .ok_or(ProtocolError::Field("code"))?,
                    ),
                    (_, "-") => None,
                    _ => return Err(ProtocolError::Field("code")),
                };
                let ms = number(parts.next().unwrap_or("")).ok_or(ProtocolError::Field("ms"))?;
                let text = match parts.next() {
                    None => String::new(),
                    Some(t) if !t.is_empty() && t == sanitize(t, MAX_TEXT) => t.to_owned(),
                    Some(_) => return Err(ProtocolError::Field("text")),
                };
                Ok(FromRunner::Done(Done {
                    id,
                    outcome,
                    code,
                    ms,
                    text,
                }))
            }
            _ => Err(ProtocolError::Unknown),
        }
    }

    /// The line (without its newline). Messages and texts are sanitized on the way.
    pub fn to_line(&self) -> String {
        match self {
            FromRunner::Ready { fingerprint } => format!("ready {fingerprint}"),
            FromRunner::Reloaded { fingerprint } => format!("reloaded {fingerprint}"),
            FromRunner::Error { message } => {
                format!("error {}", or_dash(sanitize(message, MAX_LINE - 6)))
            }
            FromRunner::Refused { message } => {
                format!("refused {}", or_dash(sanitize(message, MAX_LINE - 8)))
            }
            FromRunner::Started { id, pid } => format!("start {id} {pid}"),
            FromRunner::Done(d) => {
                let code = d.code.map_or_else(|| "-".to_owned(), |c| c.to_string());
                let mut line = format!("done {} {} {code} {}", d.id, d.outcome, d.ms);
                let text = sanitize(&d.text, MAX_TEXT);
                if !text.is_empty() {
                    line.push(' ');
                    line.push_str(&text);
                }
                line
            }
        }
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_nothing_else_parses() {
        for line in [
            "reload",
            "commit",
            "abort",
            "run 1 wake laptop 198.18.0.2 00:11:22:33:44:55",
            "run 18446744073709551615 restart-vpn phone.1 2001:db8::7",
            "run 0 a b ::ffff:198.18.0.1 ~",
        ] {
            let r = ToRunner::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(r.to_line(), line);
        }
        for line in [
            "",
            "reload ",
            " reload",
            "run",
            "run 1 wake laptop",
            "run 1 wake laptop 198.18.0.2 a b",
            "run 1 wake laptop 198.18.0.2 ",
            "run 1  wake laptop 198.18.0.2",
            "run 01 wake laptop 198.18.0.2",
            "run -1 wake laptop 198.18.0.2",
            "run 18446744073709551616 wake laptop 198.18.0.2",
            "run 1 Wake laptop 198.18.0.2",
            "run 1 wake-host-with-a-long-name laptop 198.18.0.2",
            "run 1 wake lap/top 198.18.0.2",
            "run 1 wake laptop 198.018.0.2",
            "run 1 wake laptop 2001:DB8::7",
            "run 1 wake laptop 2001:0db8::7",
            "run 1 wake laptop 198.18.0.2 x\ty",
            "run 1 wake laptop 198.18.0.2 \u{e9}",
            "run 1 wake laptop 198.18.0.2 012345678901234567890123456789012",
            "RUN 1 wake laptop 198.18.0.2",
        ] {
            assert!(ToRunner::parse(line).is_err(), "{line:?} must not parse");
        }
        assert_eq!(
            ToRunner::parse(&format!("run 1 {}", "a".repeat(MAX_LINE))),
            Err(ProtocolError::TooLong)
        );
    }

    #[test]
    fn replies_round_trip_and_nothing_else_parses() {
        for line in [
            "ready 0123456789abcdef",
            "reloaded fedcba9876543210",
            "error action 'wake': user 'nobody' ...",
            "refused no",
            "start 7 4242",
            "done 7 exited 0 12",
            "done 7 exited 255 0 some: error text",
            "done 8 killed - 1500",
            "done 9 failed - 0 /usr/bin/x: No such file or directory (os error 2)",
        ] {
            let r = FromRunner::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(r.to_line(), line);
        }
        for line in [
            "ready",
            "ready 0123456789ABCDEF",
            "ready 0123456789abcde",
            "error",
            "error ",
            "error  x",
            "start 7",
            "start 7 0",
            "start 7 4294967296",
            "done 7 exited - 12",
            "done 7 killed 0 12",
            "done 7 exited 256 12",
            "done 7 exited 0",
            "done 7 exited 0 12 ",
            "done 7 exited 0 12 text ",
            "done 7 sleeping 0 12",
            "done 7 exited 0 12 a\u{7}",
            "hello there",
        ] {
            assert!(FromRunner::parse(line).is_err(), "{line:?} must not parse");
        }
    }

    #[test]
    fn texts_are_sanitized_on_the_way_out() {
        let d = FromRunner::Done(Done {
            id: 1,
            outcome: Outcome::Exited,
            code: Some(1),
            ms: 3,
            text: "\n  \x1b[31mfailed:\tbad\u{e9}  \nsecond line".to_owned(),
        });
        let line = d.to_line();
        assert_eq!(line, "done 1 exited 1 3 ?[31mfailed:?bad?");
        assert!(FromRunner::parse(&line).is_ok());
        let long = sanitize(&"x".repeat(500), MAX_TEXT);
        assert_eq!(long.len(), MAX_TEXT);
        let e = FromRunner::Error {
            message: "two\nlines".to_owned(),
        };
        assert_eq!(e.to_line(), "error two");
        let e = FromRunner::Refused {
            message: String::new(),
        };
        assert_eq!(
            FromRunner::parse(&e.to_line()),
            Ok(e.clone()).map(|_| {
                FromRunner::Refused {
                    message: "-".to_owned(),
                }
            })
        );
    }
}
