//! `sesame`, the port-knocking client: key generation, profiles, knocks.
//!
//! The binary is a thin `main` around [`main`]; everything is testable from here.
#![forbid(unsafe_code)]

pub mod groups;
pub mod knock;
pub mod manpage;
mod open;
pub mod profiles;
pub mod wait;

mod action;

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use clap::{CommandFactory, Parser, Subcommand};
use sesame_cli::Exit;
use sesame_cli::rfc3339::{self, Rfc3339Error};
use sesame_keys::{PresharedKey, PrivateKey};
use sesame_proto::derive::derive_sequence;
use sesame_proto::params::LeaseKind;
use sesame_proto::{ClientKeys, Profile, Service, UnixMillis};

use crate::knock::Family;

/// A usage or configuration error: [`Exit::Usage`].
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

/// What `open --wait` says instead of connecting when the profile's leases admit one connection
/// per knock.
pub const ONE_CONNECTION_NOTE: &str = "this server's leases admit one connection per knock (lease = \"connection\" in the profile): --wait does not connect, since that would use the lease up; connect now, or use `sesame proxy NAME %h %p` as ssh's ProxyCommand, which knocks and makes that one connection";

/// The knock was sent, but `--wait` cannot tell whether it worked (the service answered
/// already before it): [`Exit::Unconfirmed`].
#[derive(Debug)]
pub struct Unconfirmed(pub String);

impl std::fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unconfirmed {}

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
    /// Knock: send the current sequence and payload to the profile's server (or several:
    /// NAME... or @GROUP).
    Open(OpenArgs),
    /// Knock to run an action on the profile's server: a command its admin configured under
    /// that name (the server does not answer).
    Run(action::RunArgs),
    /// Print the knock sequence and payload port for a moment (default: now).
    Ports(PortsArgs),
    /// Install a profile from a file, a sesame:// URI, or standard input (`-`).
    Import {
        /// A profile file (TOML), a file holding a URI, a sesame:// URI, or `-` to read either
        /// from standard input (keeps a URI with keys out of the shell history and `ps`).
        source: String,
        /// The name to install it under (default: the URI's name or the file's name). A source
        /// with several profiles names each after its host.
        #[arg(long)]
        name: Option<String>,
        /// Add the profiles to this group (`sesame open @GROUP`); a source with several
        /// profiles makes a group anyway, named after the file unless this names it.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Replace an existing profile or key file.
        #[arg(long)]
        force: bool,
    },
    /// List the installed profiles and groups.
    List,
    /// Knock, wait for HOST PORT to answer, then relay stdin/stdout to it (for OpenSSH:
    /// ProxyCommand sesame proxy NAME %h %p).
    Proxy {
        /// The profile.
        name: String,
        /// The host to connect to.
        host: String,
        /// The TCP port to connect to.
        port: u16,
        #[command(flatten)]
        wait: WaitArgs,
        /// Use IPv4 only.
        #[arg(short = '4', conflicts_with = "ipv6")]
        ipv4: bool,
        /// Use IPv6 only.
        #[arg(short = '6')]
        ipv6: bool,
        /// Seconds to add to the local clock (negative if it runs ahead of the server).
        #[arg(
            long,
            value_name = "SECS",
            default_value_t = 0,
            allow_negative_numbers = true
        )]
        time_offset: i64,
        #[command(flatten)]
        bind: BindArgs,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write every page (sesame.1, sesame-open.1, ...) to DIR.
    Man {
        /// Write sesame.1 and one page per subcommand here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct BindArgs {
    /// Ask the server to open this address instead of the packets' source address (the
    /// knock is bound to it).
    #[arg(long, value_name = "ADDR")]
    allow_ip: Option<IpAddr>,
    /// Name no address in the payload: the server opens whatever address the packets come
    /// from, and anyone who captures this knock can use it from elsewhere until it is used.
    /// For NATs whose inside addresses look public (same as bind_address = false).
    #[arg(long, conflicts_with = "allow_ip")]
    no_bind: bool,
}

#[derive(clap::Args, Debug)]
struct WaitArgs {
    /// How long to wait for the service after each knock (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = wait::parse_duration)]
    timeout: Duration,
    /// Knocks to retry when the service does not answer.
    #[arg(long, value_name = "N", default_value_t = 2)]
    retries: u32,
    /// Milliseconds to wait between packets.
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "profile"])))]
struct ProfileArg {
    /// An installed profile (see `sesame list`).
    name: Option<String>,
    /// A profile file instead.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
}

impl ProfileArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match (&self.profile, &self.name) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(n)) => {
                let path = profiles::profile_path(n)?;
                if !path.exists() {
                    return Err(usage(format!(
                        "no profile named '{n}' ({} does not exist; see `sesame list`, `sesame import`)",
                        path.display()
                    )));
                }
                Ok(path)
            }
            (None, None) => Err(usage("name a profile, or give --profile FILE")),
        }
    }
}

/// The profiles `open` knocks.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["names", "profile"])))]
struct OpenTargets {
    /// Installed profiles (see `sesame list`), or @GROUP for every profile of a group; several
    /// are knocked in parallel, with one line each.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// A profile file instead.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct OpenArgs {
    #[command(flatten)]
    which: OpenTargets,
    /// A service to open, e.g. tcp/22 (repeatable; default: the profile's `open`).
    #[arg(long = "port", value_name = "PROTO/PORT")]
    ports: Vec<Service>,
    #[command(flatten)]
    bind: BindArgs,
    /// Seconds to add to the local clock (negative if it runs ahead of the server).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    time_offset: i64,
    /// Use IPv4 only (default: both families when the host has both).
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6')]
    ipv6: bool,
    /// Print every packet that would be sent, and send nothing.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// After knocking, confirm the service answers (default: the first tcp service asked
    /// for) at the address connections try first; re-knock if not; explain when it never
    /// does. Exit 3 if it answered already before the knock (a lease for this address): the
    /// knock is then unconfirmed. With lease = "connection" in the profile it does not
    /// connect (that would use up the one connection a knock admits): it knocks once, lets
    /// the knock land, and exits 0.
    #[arg(long, value_name = "tcp/PORT", num_args = 0..=1, default_missing_value = "")]
    wait: Option<String>,
    #[command(flatten)]
    waiting: WaitArgs,
}

#[derive(clap::Args, Debug)]
struct PortsArgs {
    #[command(flatten)]
    which: ProfileArg,
    /// The moment to compute the sequence for (RFC 3339, e.g. 2026-01-01T12:00:00Z).
    #[arg(long, value_name = "RFC3339-TIME", value_parser = parse_time_arg)]
    at: Option<UnixMillis>,
}

/// `--at`: an RFC 3339 time, with an example when the text is not one.
fn parse_time_arg(s: &str) -> Result<UnixMillis, String> {
    rfc3339::parse(s).map_err(|e| match e {
        Rfc3339Error::Invalid { .. } => format!("{e}; example: 2026-01-01T12:00:00Z"),
        Rfc3339Error::Before1970 { .. } => e.to_string(),
    })
}

/// A time as sesame prints it: RFC 3339 in UTC with the milliseconds when there are some
/// ([`rfc3339::format`]), or `N ms` after the year 9999.
pub fn format_time(t: UnixMillis) -> String {
    rfc3339::format(t).unwrap_or_else(|| format!("{} ms", t.0))
}

/// The current time from the system clock.
pub fn system_now() -> UnixMillis {
    UnixMillis::from(SystemTime::now())
}

/// Entry point of the `sesame` binary: 0 ok, 1 failure, 2 usage or configuration error, 3 a
/// knock sent that `--wait` cannot confirm (the service answered already before it). With
/// several profiles: 2 if one is not valid (nothing is sent), else 1 if a knock failed, else 3
/// if one is unconfirmed.
pub fn main() -> ExitCode {
    // Like any Unix tool: `sesame … | head` ends quietly when `head` has read enough, instead
    // of a panic on a closed stdout. (Sockets are unaffected: std sends with MSG_NOSIGNAL.)
    sigpipe::reset();
    run(std::env::args_os())
}

/// Runs the client with the given arguments (the first is the program name).
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli: Cli = match sesame_cli::parse(wait_value_apart(args.into_iter().collect())) {
        Ok(cli) => cli,
        Err(status) => return status.into(),
    };
    match dispatch(cli) {
        Ok(status) => status.into(),
        Err(e) => sesame_cli::fail("sesame", format_args!("{e:#}"), exit_status(&e)),
    }
}

/// The exit status for an error: usage or configuration, unconfirmed, else a failure.
fn exit_status(e: &anyhow::Error) -> Exit {
    if e.downcast_ref::<UsageError>().is_some() {
        Exit::Usage
    } else if e.downcast_ref::<Unconfirmed>().is_some() {
        Exit::Unconfirmed
    } else {
        Exit::Failure
    }
}

/// `sesame open --wait NAME`: `--wait` takes an optional `tcp/PORT`, and the parser would take
/// NAME for it. A profile name never holds a '/', and a service always does: a word after
/// `--wait` (in `open`, before any `--`) without one, and not a bare number, is not its value,
/// so `--wait` becomes `--wait=` (the default service) and the word stays a word of its own.
fn wait_value_apart(mut args: Vec<OsString>) -> Vec<OsString> {
    // The subcommand is the first word after the program name that is not an option.
    let Some(sub) = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map(|i| i + 1)
    else {
        return args;
    };
    if args[sub] != "open" {
        return args;
    }
    let mut i = sub + 1;
    while i + 1 < args.len() {
        if args[i] == "--" {
            break;
        }
        if args[i] == "--wait" {
            let next = args[i + 1].to_string_lossy();
            // A bare number is a port given without its protocol: left to --wait, which says so.
            let number = next.bytes().all(|b| b.is_ascii_digit());
            if !next.starts_with('-') && !next.contains('/') && !number {
                args[i] = OsString::from("--wait=");
            }
        }
        i += 1;
    }
    args
}

/// Runs a command: its exit status, or the error that ends it.
fn dispatch(cli: Cli) -> anyhow::Result<Exit> {
    let done = match cli.command {
        // With several profiles, open prints what became of each and returns the status.
        Command::Open(args) => return open::open(args),
        Command::Genkey => print_secret(&PrivateKey::generate().to_base64()),
        Command::Genpsk => print_secret(&PresharedKey::generate().to_base64()),
        Command::Pubkey => pubkey(),
        Command::Ports(args) => ports(args),
        Command::Run(args) => action::run(args),
        Command::Import {
            source,
            name,
            group,
            force,
        } => import(&source, name.as_deref(), group.as_deref(), force),
        Command::List => list(),
        Command::Proxy {
            name,
            host,
            port,
            wait,
            ipv4,
            ipv6,
            time_offset,
            bind,
        } => proxy(
            &name,
            &host,
            port,
            &wait,
            family_of(ipv4, ipv6),
            time_offset,
            &bind,
        ),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sesame", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => manpage::man(Cli::command(), dir.as_deref()),
    };
    done.map(|()| Exit::Success)
}

fn family_of(ipv4: bool, ipv6: bool) -> Family {
    match (ipv4, ipv6) {
        (true, _) => Family::V4,
        (_, true) => Family::V6,
        _ => Family::Any,
    }
}

fn import(
    source: &str,
    name: Option<&str>,
    group: Option<&str>,
    force: bool,
) -> anyhow::Result<()> {
    let done = profiles::import(source, name, group, force)?;
    for p in &done.profiles {
        println!("installed profile '{}' at {}", p.name, p.path.display());
        for f in &p.secrets_written {
            println!("wrote {} (mode 0600)", f.display());
        }
    }
    // One line per key file that is missing, naming the profiles that use it.
    let mut missing: Vec<(&Path, Vec<&str>)> = Vec::new();
    for p in done.profiles.iter().filter(|p| !p.key_exists) {
        match missing.iter_mut().find(|(k, _)| *k == p.key_file) {
            Some((_, names)) => names.push(&p.name),
            None => missing.push((&p.key_file, vec![&p.name])),
        }
    }
    for (key, names) in &missing {
        let users = if done.profiles.len() == 1 {
            "the profile uses".to_owned()
        } else {
            format!(
                "the profile{} {} use{}",
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                if names.len() == 1 { "s" } else { "" }
            )
        };
        println!(
            "{users} the private key {}, which does not exist yet: put this client's key there (chmod 600), or make one with `sesame genkey > {}` and give its public key (`sesame pubkey < {}`) to the server's admin",
            key.display(),
            key.display(),
            key.display()
        );
    }
    match &done.group {
        Some((group, members)) => println!(
            "group '{group}': {} (knock with: sesame open @{group})",
            members.join(", ")
        ),
        None => {
            if let [p] = &done.profiles[..] {
                if p.key_exists {
                    println!("knock with: sesame open {}", p.name);
                }
            }
        }
    }
    Ok(())
}

fn list() -> anyhow::Result<()> {
    let all = profiles::list()?;
    // A groups file that does not parse is shown as such: the profiles are still listed.
    let groups = groups::list();
    if all.is_empty() && groups.as_ref().is_ok_and(Vec::is_empty) {
        println!(
            "no profiles in {} (install one with `sesame import FILE|URI`)",
            profiles::profiles_dir()?.display()
        );
        return Ok(());
    }
    for l in &all {
        match &l.profile {
            Ok(p) => {
                let services: Vec<String> = p.open.iter().map(Service::to_string).collect();
                let key = resolve_path(&p.private_key_file, &l.path);
                // The very check `open` makes (key and PSK files, the server's key).
                let keys = match load_keys(p, &l.path) {
                    Ok(_) => "key ok".to_owned(),
                    Err(_) if std::fs::symlink_metadata(&key).is_err() => "key missing".to_owned(),
                    Err(e) => format!("keys refused: {e}"),
                };
                println!(
                    "{:<16} {:<32} {:<24} {}",
                    l.name,
                    p.host,
                    if services.is_empty() {
                        "(all allowed)".to_owned()
                    } else {
                        services.join(",")
                    },
                    keys
                );
            }
            Err(e) => println!("{:<16} invalid: {e}", l.name),
        }
    }
    let groups = match groups {
        Ok(g) => g,
        Err(e) => {
            println!("{:<16} invalid: {e:#}", "(groups)");
            Vec::new()
        }
    };
    for (group, members) in groups {
        let label = format!("@{group}");
        match members {
            Ok(members) => {
                let missing: Vec<&str> = members
                    .iter()
                    .filter(|m| !all.iter().any(|l| l.name == **m))
                    .map(String::as_str)
                    .collect();
                println!(
                    "{label:<16} {}{}",
                    members.join(", "),
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!(" (not installed: {})", missing.join(", "))
                    }
                );
            }
            Err(e) => println!("{label:<16} invalid: {e}"),
        }
    }
    Ok(())
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

/// A loaded profile with its keys, ready to plan knocks.
struct Knocker {
    profile: Profile,
    keys: ClientKeys,
}

impl Knocker {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let profile = load_profile(path)?;
        let keys = load_keys(&profile, path)?;
        Ok(Knocker { profile, keys })
    }

    /// The plan of a knock at `offset_seconds` from the local clock.
    fn plan(
        &self,
        target: IpAddr,
        offset_seconds: i64,
        services: &[Service],
        allow_ip: Option<IpAddr>,
    ) -> anyhow::Result<knock::KnockPlan> {
        let now = system_now().offset_millis(offset_seconds.saturating_mul(1000));
        knock::plan(
            &self.profile,
            &self.keys,
            target,
            now,
            services.to_vec(),
            allow_ip,
        )
    }

    fn skew_hint(&self) -> String {
        format!(
            "steps of {} s; the server accepts its own step plus or minus skew_steps",
            self.profile.params.step_seconds
        )
    }

    /// What `--wait` needs to explain a failure.
    fn diagnosis(
        &self,
        binding: &knock::Binding,
        other_address: Option<IpAddr>,
    ) -> wait::Diagnosis {
        wait::Diagnosis {
            step_seconds: self.profile.params.step_seconds,
            bound: binding.is_bound(),
            payload: self.profile.payload != sesame_proto::params::PayloadMode::None,
            skew_hint: self.skew_hint(),
            network_hint: wait::blocked_network_hint(&self.profile.params, self.profile.payload),
            other_address,
        }
    }
}

/// `--allow-ip X` when X is not this host's own source address toward `service`: the probe of
/// `--wait` (or `proxy`'s connection) then comes from another address than the one the knock
/// opens, unless a NAT makes this host's connections come from X.
fn elsewhere(allow_ip: Option<IpAddr>, service: std::net::SocketAddr) -> Option<IpAddr> {
    let ip = allow_ip?;
    match knock::local_source(service.ip()) {
        Ok(own) if own == ip => None,
        _ => Some(ip),
    }
}

fn describe(services: &[Service], binding: &knock::Binding) -> (String, String) {
    let what = if services.is_empty() {
        "every allowed service".to_owned()
    } else {
        services
            .iter()
            .map(Service::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let whom = match binding.address {
        Some(ip) => format!("for {ip} ({})", binding.how),
        None => format!("for the source address ({})", binding.how),
    };
    (what, whom)
}

/// The binding of a knock to `target`, as the arguments and the profile ask.
fn binding_for(
    args: &BindArgs,
    profile: &Profile,
    target: IpAddr,
) -> anyhow::Result<knock::Binding> {
    knock::choose_binding(
        args.allow_ip,
        profile.bind_address && !args.no_bind,
        profile.stun.as_deref(),
        target,
    )
}

fn proxy(
    name: &str,
    host: &str,
    port: u16,
    w: &WaitArgs,
    family: Family,
    time_offset: i64,
    bind: &BindArgs,
) -> anyhow::Result<()> {
    // stdout belongs to the relayed connection: everything else goes to stderr.
    let path = ProfileArg {
        name: Some(name.to_owned()),
        profile: None,
    }
    .path()?;
    let k = Knocker::load(&path)?;
    // The knock goes over the family of the connection it relays: a knock opens only the
    // address it names (or its source), in its own family. The other family is not knocked:
    // nothing would use that lease.
    let service_ip = knock::resolve(host, family)?;
    let knock_family = if service_ip.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let knock_target = knock::resolve(&k.profile.host, knock_family).map_err(|e| {
        if let sesame_net::ResolveError::NoAddressInFamily { family, .. } = &e {
            anyhow!(
                "proxy connects to {} over {family}, but {e}: a knock opens only the family it is sent in; connect over the other family (ssh -4 or -6), or give the profile's host an {family} address",
                std::net::SocketAddr::new(service_ip, port)
            )
        } else {
            anyhow::Error::new(e)
        }
    })?;
    let services = k.profile.open.clone();
    let binding = if k.profile.payload == sesame_proto::params::PayloadMode::None
        && k.profile.params.length > 0
    {
        knock::Binding {
            address: None,
            how: "not bound: a sequence-only knock (mode none) names no address".into(),
        }
    } else {
        binding_for(bind, &k.profile, knock_target)?
    };
    let service = std::net::SocketAddr::new(service_ip, port);
    let other_address = elsewhere(bind.allow_ip, service);
    if let Some(ip) = other_address {
        eprintln!(
            "sesame: proxy connects to {service} from this host, not from {ip}: the knock opens {ip}, which lets this connection in only if the server sees this host's connections come from {ip} (a NAT's public address, say)"
        );
    }
    let opened = wait::knock_and_wait(
        &|shift| {
            k.plan(
                knock_target,
                time_offset + shift,
                &services,
                binding.address,
            )
        },
        time_offset,
        service,
        wait::WaitPolicy {
            timeout: w.timeout,
            retries: w.retries,
            delay: Duration::from_millis(w.delay_ms),
            // The connection relayed is the one a connection-bound lease admits: no other is
            // tried, so this is the way to ssh to a server with such leases.
            one_connection: k.profile.lease == LeaseKind::Connection,
        },
        &k.diagnosis(&binding, other_address),
        &mut |line| eprintln!("sesame: {line}"),
    )?;
    if opened.answered_before {
        eprintln!(
            "sesame: {service} already answered from this host before the knock (a lease for this address, or the port is not protected): the knock was sent, but this connection does not show that it worked"
        );
    }
    wait::relay(opened.stream)
}

fn ports(args: PortsArgs) -> anyhow::Result<()> {
    let path = args.which.path()?;
    let Knocker { profile, keys } = Knocker::load(&path)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open_args(args: &[&str]) -> OpenArgs {
        let argv = std::iter::once("sesame")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        match Cli::try_parse_from(wait_value_apart(argv)) {
            Ok(Cli {
                command: Command::Open(a),
            }) => a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// `--wait` takes an optional tcp/PORT; a profile name after it is the profile's.
    #[test]
    fn wait_never_takes_the_profile_name() {
        let cases: &[(&[&str], Option<&str>, Option<&str>)] = &[
            (&["open", "--wait", "myserver"], Some("myserver"), Some("")),
            (&["open", "myserver", "--wait"], Some("myserver"), Some("")),
            (
                &["open", "myserver", "--wait", "tcp/2222"],
                Some("myserver"),
                Some("tcp/2222"),
            ),
            (
                &["open", "myserver", "--wait=tcp/2222"],
                Some("myserver"),
                Some("tcp/2222"),
            ),
            (
                &["open", "--wait", "tcp/2222", "myserver"],
                Some("myserver"),
                Some("tcp/2222"),
            ),
            (
                &[
                    "open",
                    "--wait",
                    "myserver",
                    "--timeout",
                    "1s",
                    "--retries",
                    "0",
                ],
                Some("myserver"),
                Some(""),
            ),
            (
                &[
                    "open",
                    "myserver",
                    "--wait",
                    "tcp/22",
                    "--timeout",
                    "5s",
                    "--retries",
                    "1",
                ],
                Some("myserver"),
                Some("tcp/22"),
            ),
            (
                &["open", "--profile", "p.toml", "--wait", "tcp/22"],
                None,
                Some("tcp/22"),
            ),
            (&["open", "--wait", "--profile", "p.toml"], None, Some("")),
            (&["open", "myserver"], Some("myserver"), None),
        ];
        for (args, name, wait) in cases {
            let a = open_args(args);
            assert_eq!(a.which.names.first().map(String::as_str), *name, "{args:?}");
            assert_eq!(a.wait.as_deref(), *wait, "{args:?}");
        }
        // Several profiles and groups: every word without a '/' is a name.
        let a = open_args(&["open", "web1", "--wait", "@prod", "db1"]);
        assert_eq!(a.which.names, ["web1", "@prod", "db1"]);
        assert_eq!(a.wait.as_deref(), Some(""));
        let a = open_args(&["open", "web1", "web2", "--wait", "tcp/2222"]);
        assert_eq!(a.which.names, ["web1", "web2"]);
        assert_eq!(a.wait.as_deref(), Some("tcp/2222"));
        // A bare port is left to --wait, which refuses it with the right form.
        assert_eq!(
            open_args(&["open", "myserver", "--wait", "22"])
                .wait
                .as_deref(),
            Some("22")
        );
        // Only `open` is touched, and nothing after `--`.
        let argv: Vec<OsString> = ["sesame", "ports", "--wait", "x"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(wait_value_apart(argv.clone()), argv);
        let argv: Vec<OsString> = ["sesame", "open", "--", "--wait", "x"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(wait_value_apart(argv.clone()), argv);
    }
}
