//! `sesame`, the port-knocking client: key generation, profiles, knocks.
//!
//! The binary is a thin `main` around [`main`]; everything is testable from here.
#![forbid(unsafe_code)]

pub mod knock;

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use sesame_keys::{PresharedKey, PrivateKey};
use sesame_proto::{ClientKeys, Profile, Service, UnixMillis, derive_sequence};

use crate::knock::Family;

/// A usage or configuration error: exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

#[derive(Parser, Debug)]
#[command(
    name = "sesame",
    version,
    about = "Knock on a sesamed server to open a service for your address",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a new private key (base64, WireGuard format).
    Genkey,
    /// Read a private key on stdin and print its public key.
    Pubkey,
    /// Print a new pre-shared key.
    Genpsk,
    /// Knock: send the current sequence and payload to the profile's server.
    Open(OpenArgs),
    /// Print the knock sequence and payload port for a moment (default: now).
    Ports(PortsArgs),
}

#[derive(clap::Args, Debug)]
struct OpenArgs {
    /// The profile describing the server (TOML).
    #[arg(long, value_name = "FILE")]
    profile: PathBuf,
    /// A service to open, e.g. tcp/22 (repeatable; default: the profile's `open`).
    #[arg(long = "port", value_name = "PROTO/PORT")]
    ports: Vec<Service>,
    /// Ask the server to open this address instead of the packets' source address.
    #[arg(long, value_name = "ADDR")]
    allow_ip: Option<IpAddr>,
    /// Seconds to add to the local clock (negative if it runs ahead of the server).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    time_offset: i64,
    /// Milliseconds to wait between packets.
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,
    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6')]
    ipv6: bool,
    /// Print every packet that would be sent, and send nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args, Debug)]
struct PortsArgs {
    /// The profile describing the server (TOML).
    #[arg(long, value_name = "FILE")]
    profile: PathBuf,
    /// The moment to compute the sequence for (RFC 3339, e.g. 2026-01-01T12:00:00Z).
    #[arg(long, value_name = "RFC3339-TIME", value_parser = parse_rfc3339)]
    at: Option<UnixMillis>,
}

fn parse_rfc3339(s: &str) -> Result<UnixMillis, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!("'{s}' is not an RFC 3339 time ({e}); example: 2026-01-01T12:00:00Z")
        })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms)
        .map(UnixMillis)
        .map_err(|_| format!("'{s}' is before 1970"))
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn format_time(t: UnixMillis) -> String {
    let nanos = i128::from(t.0) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} ms", t.0))
}

/// The current time from the system clock.
pub fn system_now() -> UnixMillis {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    UnixMillis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Entry point of the `sesame` binary: 0 ok, 1 failure, 2 usage or configuration error.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs the client with the given arguments (the first is the program name).
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sesame: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Genkey => print_secret(&PrivateKey::generate().to_base64()),
        Command::Genpsk => print_secret(&PresharedKey::generate().to_base64()),
        Command::Pubkey => pubkey(),
        Command::Open(args) => open(args),
        Command::Ports(args) => ports(args),
    }
}

/// Prints a secret on stdout, warning (like `wg genkey`) when stdout is a file that group or
/// others can access.
fn print_secret(text: &str) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    if let Ok(fd) = stdout.as_fd().try_clone_to_owned() {
        let file = std::fs::File::from(fd);
        if let Ok(meta) = file.metadata() {
            if meta.is_file() && sesame_keys::mode_is_too_open(meta.mode()) {
                eprintln!(
                    "sesame: warning: writing a secret key to a file that group or others can read (mode {:04o}); set `umask 077` first, or chmod 600 the file",
                    meta.mode() & 0o7777
                );
            }
        }
    }
    let mut out = stdout.lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

fn pubkey() -> anyhow::Result<()> {
    let mut input = zeroize::Zeroizing::new(String::new());
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("sesame pubkey: reading a private key from stdin");
    }
    stdin
        .lock()
        .take(4096)
        .read_to_string(&mut input)
        .context("cannot read stdin")?;
    let key = PrivateKey::from_base64(&input).map_err(|e| anyhow!("stdin: {e}"))?;
    println!("{}", key.public_key());
    Ok(())
}

/// Expands `~/` and makes a relative path relative to the profile's directory.
pub fn resolve_path(path: &Path, profile_file: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    if path.is_relative() {
        if let Some(dir) = profile_file.parent() {
            return dir.join(path);
        }
    }
    path.to_path_buf()
}

/// Reads and validates a profile file (errors are usage errors naming the file).
pub fn load_profile(path: &Path) -> anyhow::Result<Profile> {
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    Profile::parse(&text).map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// Loads the client's keys for a profile (errors are usage errors naming the file).
pub fn load_keys(profile: &Profile, profile_file: &Path) -> anyhow::Result<ClientKeys> {
    let key_path = resolve_path(&profile.private_key_file, profile_file);
    let key = sesame_keys::read_private_key_file(&key_path).map_err(|e| usage(e.to_string()))?;
    let psk = match &profile.psk_file {
        Some(p) => Some(
            sesame_keys::read_psk_file(&resolve_path(p, profile_file))
                .map_err(|e| usage(e.to_string()))?,
        ),
        None => None,
    };
    ClientKeys::for_client(&key, &profile.server_public_key, psk.as_ref()).map_err(|e| {
        usage(format!(
            "{}: server_public_key: {e}",
            profile_file.display()
        ))
    })
}

fn open(args: OpenArgs) -> anyhow::Result<()> {
    let profile = load_profile(&args.profile)?;
    let keys = load_keys(&profile, &args.profile)?;
    let services = if args.ports.is_empty() {
        profile.open.clone()
    } else {
        let mut s = args.ports.clone();
        s.dedup();
        s
    };
    if services.len() > sesame_proto::MAX_SERVICES {
        return Err(usage(format!(
            "at most {} services fit in one knock, {} given",
            sesame_proto::MAX_SERVICES,
            services.len()
        )));
    }
    let family = match (args.ipv4, args.ipv6) {
        (true, _) => Family::V4,
        (_, true) => Family::V6,
        _ => Family::Any,
    };
    let target = knock::resolve(&profile.host, family)?;
    let now = system_now().offset_millis(args.time_offset.saturating_mul(1000));
    let plan = knock::plan(&profile, &keys, target, now, services, args.allow_ip)?;
    let what = if plan.services.is_empty() {
        "every allowed service".to_owned()
    } else {
        plan.services
            .iter()
            .map(Service::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let whom = match plan.allow_ip {
        Some(ip) => format!("for {ip}"),
        None => "for the source address".to_owned(),
    };
    if args.dry_run {
        println!(
            "# dry run: nothing is sent. server {target} ({}), step {} ({} s), time {}",
            profile.host,
            plan.counter,
            profile.params.step_seconds,
            format_time(now)
        );
        for p in &plan.packets {
            println!("{p}");
        }
        println!("# asks for {what} {whom}");
        return Ok(());
    }
    knock::send(&plan, Duration::from_millis(args.delay_ms))?;
    println!(
        "knocked {} ({target}): {} packets at step {}, asking for {what} {whom}",
        profile.host,
        plan.packets.len(),
        plan.counter
    );
    Ok(())
}

fn ports(args: PortsArgs) -> anyhow::Result<()> {
    let profile = load_profile(&args.profile)?;
    let keys = load_keys(&profile, &args.profile)?;
    let now = args.at.unwrap_or_else(system_now);
    let step = profile.params.step_seconds;
    let counter = now.counter(step);
    let seq = derive_sequence(&keys, &profile.params, counter)?;
    let start = UnixMillis::from_secs(counter * u64::from(step));
    let end = UnixMillis::from_secs((counter + 1) * u64::from(step));
    println!("time     {}", format_time(now));
    println!(
        "step     {counter} ({} to {})",
        format_time(start),
        format_time(end)
    );
    for (i, k) in seq.knocks.iter().enumerate() {
        println!("knock {:<2} {}/{}", i + 1, k.proto, k.port);
    }
    println!("payload  udp/{}", seq.payload_port);
    Ok(())
}
