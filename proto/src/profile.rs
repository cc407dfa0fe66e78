//! Client profiles: the TOML file that describes one server to the `sesame` client, and the
//! one-line error type shared by every TOML file sesame reads.
//!
//! ```toml
//! host = "server.example.com"
//! server_public_key = "base64..."
//! private_key_file = "~/.config/sesame/laptop.key"
//! # psk_file = "~/.config/sesame/laptop.psk"
//! step_seconds = 30
//! length = 3
//! port_range = [10000, 32767]
//! exclude_ports = []
//! protocol = "udp"        # udp | tcp | mixed
//! payload = "required"    # required | optional | none
//! open = ["tcp/22"]
//! # stun = "stun.example.net:3478"   # discover this device's public address (off by default)
//! # bind_address = true              # put this device's address in the payload (default)
//! # lease = "connection"             # the server's leases admit one connection per knock
//! ```
//!
//! `lease` says what the server's leases admit (its `[firewall] lease`, written by
//! `sesamed export-client`): `"window"` (the default) lets new connections in until the lease
//! ends; `"connection"` lets in one, so the client must not connect to check a knock
//! (`sesame open --wait` then only knocks, and `sesame proxy` makes that one connection).

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use sesame_keys::PublicKey;
use toml::Spanned;

use crate::params::{KnockParams, KnockProtocol, LeaseKind, PayloadMode};
use crate::payload::MAX_SERVICES;
use crate::service::Service;

/// Default `step_seconds`.
pub const DEFAULT_STEP_SECONDS: u32 = 30;
/// Default `length`.
pub const DEFAULT_LENGTH: u8 = 3;
/// Default `port_range`.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (10000, 32767);

/// A one-line error about a TOML file: where (line, key) and why. The caller adds the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key (dotted path) the error is about, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// One line, without control characters: whatever the fields hold, a control character
    /// (and a Unicode line or paragraph separator) is written escaped, e.g. `\u{1b}`, so text
    /// from the file can neither break the line nor send terminal escape sequences.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write_escaped(f, key)?;
            f.write_str(": ")?;
        }
        write_escaped(f, &self.message)
    }
}

/// Whether `c` must not appear in a one-line message as it is.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if needs_escape(c) {
            write!(f, "{}", c.escape_unicode())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error about `key`, located by `span` in `text`.
    pub fn at(
        text: &str,
        span: Option<Range<usize>>,
        key: &str,
        message: impl fmt::Display,
    ) -> Self {
        ConfigError {
            line: span.map(|s| line_of(text, s.start)),
            key: Some(key.to_owned()),
            message: one_line(&message.to_string()),
        }
    }

    /// Converts a TOML parse or type error into one line.
    pub fn from_toml(text: &str, err: &toml::de::Error) -> Self {
        let line = err.span().map(|s| line_of(text, s.start));
        ConfigError {
            line,
            key: line.and_then(|l| key_at_line(text, l)),
            message: one_line(err.message()),
        }
    }
}

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key assigned on a 1-based line (`section.key`), if that line is `key = ...` and
/// both the key and the last `[section]` header are made of bare keys (anything else, e.g. a
/// header holding control characters, names no key).
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let is_bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut section = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if i + 1 == line {
            let key = l.split_once('=')?.0.trim();
            let bare_section = section.is_empty() || section.split('.').all(|p| is_bare(p.trim()));
            if !is_bare(key) || !bare_section {
                return None;
            }
            return Some(if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            });
        }
        if let Some(h) = l.strip_prefix('[') {
            let h = h.trim_start_matches('[');
            if let Some(end) = h.find(']') {
                section = h[..end].trim().to_owned();
            }
        }
    }
    None
}

/// `s` on one line: whitespace runs (line breaks included) become one space, and other
/// control characters are escaped (`\u{1b}`), as [`ConfigError`]'s `Display` does anyway.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            if needs_escape(c) {
                out.extend(c.escape_unicode());
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// A validated client profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Server host name or address.
    pub host: String,
    /// The server's X25519 public key.
    pub server_public_key: PublicKey,
    /// Path of the client's private key (may start with `~/`; relative paths are relative to
    /// the profile file).
    pub private_key_file: PathBuf,
    /// Path of the pre-shared key, if the server uses one for this client.
    pub psk_file: Option<PathBuf>,
    /// Knock parameters.
    pub params: KnockParams,
    /// Payload mode.
    pub payload: PayloadMode,
    /// Services to ask for by default.
    pub open: Vec<Service>,
    /// A STUN server (`host:port`) that tells the client its public address, to bind knocks
    /// to it behind a NAT. `None`: no STUN (the default).
    pub stun: Option<String>,
    /// Whether knocks name the client's address (its public source address, the STUN answer,
    /// or `--allow-ip`) so that nobody else can use them. `false` sends no address: the
    /// server opens whatever address the packets come from.
    pub bind_address: bool,
    /// What the server's leases admit: with [`LeaseKind::Connection`] the first new
    /// connection uses a lease up, so the client makes no connection to check a knock.
    pub lease: LeaseKind,
}

/// Whether `s` is a `host:port` (or `[v6]:port`) a client can resolve: a non-empty host
/// without spaces or control characters, and a port 1..=65535.
pub(crate) fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && !host.contains(':')
            && !host.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0) && s.len() <= 255
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    host: Spanned<String>,
    server_public_key: Spanned<String>,
    private_key_file: Spanned<String>,
    #[serde(default)]
    psk_file: Option<Spanned<String>>,
    #[serde(default = "default_step")]
    step_seconds: Spanned<u32>,
    #[serde(default = "default_length")]
    length: Spanned<u64>,
    #[serde(default = "default_range")]
    port_range: Spanned<[u64; 2]>,
    #[serde(default)]
    exclude_ports: Vec<u16>,
    #[serde(default)]
    protocol: KnockProtocol,
    #[serde(default)]
    payload: PayloadMode,
    #[serde(default = "default_open")]
    open: Spanned<Vec<String>>,
    #[serde(default)]
    stun: Option<Spanned<String>>,
    #[serde(default = "default_true")]
    bind_address: bool,
    #[serde(default)]
    lease: LeaseKind,
}

fn default_true() -> bool {
    true
}

fn default_step() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_STEP_SECONDS)
}
fn default_length() -> Spanned<u64> {
    Spanned::new(0..0, u64::from(DEFAULT_LENGTH))
}
fn default_open() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
}
fn default_range() -> Spanned<[u64; 2]> {
    Spanned::new(
        0..0,
        [
            u64::from(DEFAULT_PORT_RANGE.0),
            u64::from(DEFAULT_PORT_RANGE.1),
        ],
    )
}

fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    let r = s.span();
    (r != (0..0)).then_some(r)
}

/// Parses a list of `proto/port` services, at most [`MAX_SERVICES`] (what fits in a payload).
pub fn parse_services(items: &[String]) -> Result<Vec<Service>, String> {
    let services = parse_services_unbounded(items)?;
    if services.len() > MAX_SERVICES {
        return Err(format!(
            "at most {MAX_SERVICES} services fit in one payload, found {}",
            services.len()
        ));
    }
    Ok(services)
}

/// Parses a list of `proto/port` services of any length, dropping duplicates.
pub fn parse_services_unbounded(items: &[String]) -> Result<Vec<Service>, String> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s: Service = item
            .parse()
            .map_err(|e: crate::ServiceParseError| e.to_string())?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

impl Profile {
    /// Parses and validates a profile. Never panics; errors are one line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ConfigError::from_toml(text, &e))?;
        let host = raw.host.get_ref();
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::at(
                text,
                span_of(&raw.host),
                "host",
                "must be a host name or address, without spaces",
            ));
        }
        let server_public_key =
            PublicKey::from_base64(raw.server_public_key.get_ref()).map_err(|e| {
                ConfigError::at(
                    text,
                    span_of(&raw.server_public_key),
                    "server_public_key",
                    e,
                )
            })?;
        if raw.private_key_file.get_ref().is_empty() {
            return Err(ConfigError::at(
                text,
                span_of(&raw.private_key_file),
                "private_key_file",
                "must not be empty",
            ));
        }
        let psk_file = match &raw.psk_file {
            Some(p) if p.get_ref().is_empty() => {
                return Err(ConfigError::at(
                    text,
                    span_of(p),
                    "psk_file",
                    "must not be empty",
                ));
            }
            Some(p) => Some(PathBuf::from(p.get_ref())),
            None => None,
        };
        let range = raw.port_range.get_ref();
        let params = KnockParams::new(
            *raw.step_seconds.get_ref(),
            *raw.length.get_ref(),
            (range[0], range[1]),
            &raw.exclude_ports,
            raw.protocol,
        )
        .map_err(|e| {
            let (key, span) = match e {
                crate::ParamsError::Step(_) => ("step_seconds", span_of(&raw.step_seconds)),
                crate::ParamsError::Length(_) => ("length", span_of(&raw.length)),
                _ => ("port_range", span_of(&raw.port_range)),
            };
            ConfigError::at(text, span, key, e)
        })?;
        let open = parse_services(raw.open.get_ref())
            .map_err(|e| ConfigError::at(text, span_of(&raw.open), "open", e))?;
        let stun = match &raw.stun {
            Some(s) if !is_host_port(s.get_ref()) => {
                return Err(ConfigError::at(
                    text,
                    span_of(s),
                    "stun",
                    "must be host:port, e.g. \"stun.example.net:3478\" or \"[2001:db8::1]:3478\"",
                ));
            }
            Some(s) => Some(s.get_ref().clone()),
            None => None,
        };
        Ok(Profile {
            host: raw.host.into_inner(),
            server_public_key,
            private_key_file: PathBuf::from(raw.private_key_file.into_inner()),
            psk_file,
            params,
            payload: raw.payload,
            open,
            stun,
            bind_address: raw.bind_address,
            lease: raw.lease,
        })
    }

    /// The profile as TOML, with comments; [`Profile::parse`] reads it back unchanged.
    pub fn to_toml(&self) -> String {
        let quote = |s: &str| toml_string(s);
        let list = |items: Vec<String>| format!("[{}]", items.join(", "));
        let mut out = String::new();
        out.push_str(&format!("host = {}\n", quote(&self.host)));
        out.push_str(&format!(
            "server_public_key = {}\n",
            quote(&self.server_public_key.to_base64())
        ));
        out.push_str(&format!(
            "private_key_file = {}\n",
            quote(&self.private_key_file.to_string_lossy())
        ));
        match &self.psk_file {
            Some(p) => out.push_str(&format!("psk_file = {}\n", quote(&p.to_string_lossy()))),
            None => out.push_str("# psk_file = \"...\"  (only if the server gave you a PSK)\n"),
        }
        let p = &self.params;
        out.push_str(&format!("step_seconds = {}\n", p.step_seconds));
        out.push_str(&format!("length = {}\n", p.length));
        out.push_str(&format!("port_range = [{}, {}]\n", p.port_lo, p.port_hi));
        out.push_str(&format!(
            "exclude_ports = {}\n",
            list(p.exclude_ports().iter().map(u16::to_string).collect())
        ));
        out.push_str(&format!("protocol = \"{}\"\n", p.protocol));
        out.push_str(&format!("payload = \"{}\"\n", self.payload));
        out.push_str(&format!(
            "open = {}\n",
            list(self.open.iter().map(|s| format!("\"{s}\"")).collect())
        ));
        match &self.stun {
            Some(s) => out.push_str(&format!("stun = {}\n", quote(s))),
            None => out.push_str(
                "# stun = \"stun.example.net:3478\"  (behind a NAT: learn the public address to bind knocks to)\n",
            ),
        }
        if !self.bind_address {
            out.push_str("bind_address = false\n");
        }
        if self.lease != LeaseKind::Window {
            out.push_str(
                "# One connection per knock (the server's [firewall] lease): `sesame open --wait` does not\n# connect, `sesame proxy` makes that one connection\n",
            );
            out.push_str(&format!("lease = \"{}\"\n", self.lease));
        }
        out
    }
}

/// A TOML basic string with the necessary escapes.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    fn full() -> String {
        format!(
            r#"host = "198.18.0.1"
server_public_key = "{KEY}"
private_key_file = "client.key"
psk_file = "client.psk"
step_seconds = 30
length = 3
port_range = [10000, 32767]
exclude_ports = [22, 10022]
protocol = "mixed"
payload = "optional"
open = ["tcp/22", "udp/51820"]
lease = "connection"
"#
        )
    }

    #[test]
    fn parses_every_key() {
        let p = Profile::parse(&full()).unwrap();
        assert_eq!(p.host, "198.18.0.1");
        assert_eq!(p.server_public_key.to_base64(), KEY);
        assert_eq!(p.psk_file, Some(PathBuf::from("client.psk")));
        assert_eq!(p.params.protocol, KnockProtocol::Mixed);
        assert_eq!(p.params.exclude_ports(), &[10022]);
        assert_eq!(p.payload, PayloadMode::Optional);
        assert_eq!(p.open.len(), 2);
        assert_eq!(p.lease, LeaseKind::Connection);
        let text = p.to_toml();
        assert!(text.contains("\nlease = \"connection\"\n"), "{text}");
        assert_eq!(Profile::parse(&text).unwrap(), p);
    }

    #[test]
    fn defaults() {
        let p = Profile::parse(&format!(
            "host = \"h\"\nserver_public_key = \"{KEY}\"\nprivate_key_file = \"k\"\n"
        ))
        .unwrap();
        assert_eq!(p.params.step_seconds, 30);
        assert_eq!(p.params.length, 3);
        assert_eq!((p.params.port_lo, p.params.port_hi), DEFAULT_PORT_RANGE);
        assert_eq!(p.payload, PayloadMode::Required);
        assert!(p.open.is_empty());
        assert_eq!(p.lease, LeaseKind::Window);
        // The default is not written, so an older client reads the profile.
        assert!(!p.to_toml().contains("lease"), "{}", p.to_toml());
        assert_eq!(Profile::parse(&p.to_toml()).unwrap(), p);
        let window = format!(
            "host = \"h\"\nserver_public_key = \"{KEY}\"\nprivate_key_file = \"k\"\nlease = \"window\"\n"
        );
        assert_eq!(Profile::parse(&window).unwrap(), p);
    }

    #[test]
    fn errors_are_one_line_and_name_the_key() {
        let cases = [
            (full().replace("mixed", "sctp"), "line 9", "protocol"),
            (full().replace(KEY, "short"), "line 2", "server_public_key"),
            (
                full().replace("[10000, 32767]", "[10000, 10003]"),
                "line 7",
                "port_range",
            ),
            (full().replace("\"tcp/22\"", "\"tcp/0\""), "line 11", "open"),
            (
                full().replace("length = 3", "length = 99"),
                "line 6",
                "length",
            ),
            (full() + "colour = \"blue\"\n", "line 13", "colour"),
            (
                full().replace("\"connection\"", "\"session\""),
                "line 12",
                "lease",
            ),
            (
                full().replace("\"198.18.0.1\"", "\" 198.18.0.1\""),
                "line 1",
                "host",
            ),
            (full().replace("host = \"198.18.0.1\"\n", ""), "", "host"),
            ("host = ".to_owned(), "line 1", ""),
        ];
        for (text, line, key) in cases {
            let msg = Profile::parse(&text).unwrap_err().to_string();
            assert!(msg.contains(line), "{msg}");
            assert!(msg.contains(key), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn service_limit_counts_distinct_services() {
        let nine: Vec<String> = (1..=8)
            .map(|p| format!("tcp/{p}"))
            .chain(["tcp/1".to_owned()])
            .collect();
        assert_eq!(parse_services(&nine).unwrap().len(), 8);
        let nine: Vec<String> = (1..=9).map(|p| format!("tcp/{p}")).collect();
        assert!(parse_services(&nine).is_err());
    }

    #[test]
    fn toml_strings_escape() {
        let s = "a\"b\\c\nd\u{1}";
        let parsed: toml::Value = toml::from_str(&format!("x = {}", toml_string(s))).unwrap();
        assert_eq!(parsed["x"].as_str().unwrap(), s);
    }

    /// Found by fuzzing (`config_parse`, `profile_parse`): text from the file (a section header,
    /// an unknown key, a service, an enum value) used to reach the one-line error as it was,
    /// control characters included.
    #[test]
    fn errors_are_one_line_without_control_characters() {
        let base =
            format!("host = \"h\"\nserver_public_key = \"{KEY}\"\nprivate_key_file = \"c\"\n");
        let cases = [
            "'''\n[\0\rl]\ne=".to_owned(),
            "[a\u{1b}[31m]\nx = \n".to_owned(),
            "[a\u{2028}b]\nx = \n".to_owned(),
            format!("{base}\"\\u001b[31m\" = 1\n"),
            format!("{base}open = [\"\\u001b[31m\\u0085\"]\n"),
            format!("{base}payload = \"\\u001b[31m\"\n"),
            format!("{base}protocol = \"\\u0007x\\r\\n\"\n"),
        ];
        for text in cases {
            let err = Profile::parse(&text).unwrap_err();
            let msg = err.to_string();
            assert!(
                !msg.chars().any(|c| c.is_control() || c == '\u{2028}'),
                "{text:?}: {msg:?}"
            );
            assert!(!err.message.chars().any(char::is_control), "{msg:?}");
        }
        // The section of a key is named only when it is made of bare keys.
        let err = Profile::parse("'''\n[\0\rl]\ne=").unwrap_err();
        assert_eq!(err.key, None);
        assert_eq!(key_at_line("[a.b]\nc = 1", 2).as_deref(), Some("a.b.c"));
        // Whatever a caller puts in the fields, Display escapes it.
        let err = ConfigError {
            line: Some(1),
            key: Some("k\u{1b}".into()),
            message: "m\n\u{9b}".into(),
        };
        assert_eq!(err.to_string(), "line 1: k\\u{1b}: m\\u{a}\\u{9b}");
    }

    // What a mutation run of profile.rs found unpinned (docs/TESTING.md).

    #[test]
    fn keys_with_dashes_and_underscores_are_named() {
        let text = "[knock]\nport-range = 1\nstep_seconds = 2\nbad key = 3\n";
        assert_eq!(key_at_line(text, 2).as_deref(), Some("knock.port-range"));
        assert_eq!(key_at_line(text, 3).as_deref(), Some("knock.step_seconds"));
        assert_eq!(key_at_line(text, 4), None);
    }

    #[test]
    fn one_line_joins_words_with_single_spaces() {
        assert_eq!(one_line("  a\n\t b  c "), "a b c");
        assert_eq!(one_line("x\u{1b}y"), "x\\u{1b}y");
    }

    #[test]
    fn only_a_host_and_a_port_is_a_host_port() {
        for ok in [
            "stun.example.net:3478",
            "198.18.0.1:1",
            "[2001:db8::1]:65535",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "stun.example.net",
            "stun.example.net:0",
            "stun.example.net:65536",
            ":3478",
            "a b:3478",
            "[2001:db8::1:3478",
            "2001:db8::1:3478",
            "a\u{7}b:3478",
        ] {
            assert!(!is_host_port(bad), "{bad:?}");
        }
        let long = format!("{}:3478", "a".repeat(251));
        assert!(!is_host_port(&long), "longer than 255 bytes");
        assert!(
            is_host_port(&format!("{}:3478", "a".repeat(250))),
            "255 bytes"
        );
    }

    #[test]
    fn bind_address_is_on_unless_the_profile_turns_it_off() {
        assert!(Profile::parse(&full()).unwrap().bind_address);
        let off = format!("{}bind_address = false\n", full());
        assert!(!Profile::parse(&off).unwrap().bind_address);
    }

    #[test]
    fn an_empty_psk_file_is_refused_and_named() {
        let text = full().replace("psk_file = \"client.psk\"", "psk_file = \"\"");
        assert_eq!(
            Profile::parse(&text).unwrap_err().key.as_deref(),
            Some("psk_file")
        );
    }

    #[test]
    fn a_bad_step_is_named_as_step_seconds() {
        let text = full().replace("step_seconds = 30", "step_seconds = 0");
        let err = Profile::parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("step_seconds"), "{err}");
    }

    #[test]
    fn the_stun_server_must_be_host_and_port() {
        let with = |stun: &str| format!("{}stun = \"{stun}\"\n", full());
        let p = Profile::parse(&with("stun.example.net:3478")).unwrap();
        assert_eq!(p.stun.as_deref(), Some("stun.example.net:3478"));
        let err = Profile::parse(&with("stun.example.net")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("stun"), "{err}");
    }

    #[test]
    fn toml_strings_escape_other_control_characters_as_unicode() {
        assert_eq!(toml_string("a\u{7}b"), "\"a\\u0007b\"");
        assert_eq!(toml_string("caf\u{e9}"), "\"caf\u{e9}\"");
    }
}
