//! `sesamed`, the sesame knock daemon.
//!
//! The binary is a thin `main` around [`main`]. Unsafe code lives only in [`capture`], in
//! two functions of [`action::runner`] (a command's `setsid` between fork and exec, and marking
//! inherited descriptors close-on-exec), and in [`memory::release_freed`] (glibc's
//! `malloc_trim`).
#![deny(unsafe_code)]

pub mod action;
#[allow(unsafe_code)]
pub mod capture;
pub mod config;
pub mod control;
pub mod daemon;
pub mod edit;
pub mod firewall;
pub mod instance;
pub mod lease;
pub mod logging;
pub mod manpage;
pub mod memory;
pub mod metrics;
pub mod netlink;
pub mod privileges;
pub mod state;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sesame_cli::Exit;

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "sesamed",
    version,
    about = "The sesame knock daemon: hides services until a client knocks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run in the foreground (logs to stderr; SIGTERM or SIGINT stop it, SIGHUP reloads).
    Run {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Ask the running sesamed to re-read its configuration.
    Reload {
        /// The configuration file (for the control socket's path).
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Add or remove clients in the configuration file (comments are kept), then reload.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write every page (sesamed.1, sesamed-run.1, ...) to
    /// DIR.
    Man {
        /// Write sesamed.1 and one page per subcommand here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Validate the configuration and the key files it names.
    Check {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Check as this user would see it (the service user of the systemd unit): the files
        /// are opened with its uid and primary gid. Needs root.
        #[arg(long, value_name = "USER")]
        as_user: Option<String>,
    },
    /// Print the nftables rules that keep the protected services closed while sesamed is not
    /// running (for the boot ruleset: see "Closed even when sesamed is down" in the README).
    GateRules {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show what a running sesamed is doing: leases, last knocks, counters.
    Status {
        /// The configuration file (for the control socket's path).
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print the counters in Prometheus text format.
        #[arg(long)]
        prometheus: bool,
    },
    /// The action runner: started by `sesamed run` (with a pipe pair) when the configuration
    /// has actions; not for people.
    #[command(hide = true)]
    ActionRunner {
        /// The configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the client profile for NAME (the TOML that `sesame open --profile` reads).
    ExportClient {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// The client's name in the configuration.
        name: String,
        /// The host name or address clients use to reach this server.
        #[arg(long, value_name = "HOST")]
        host: String,
        /// Print a sesame:// URI instead of TOML (for `sesame import`).
        #[arg(long)]
        uri: bool,
        /// Print the URI as a QR code for a phone's camera.
        #[arg(long)]
        qr: bool,
    },
    /// Print a new private key for private_key_file (the format of `sesame genkey` and `wg
    /// genkey`).
    Genkey,
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Add a client.
    Add {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// The client's name.
        name: String,
        /// The client's public key (from `sesame pubkey`).
        #[arg(long, value_name = "KEY", required_unless_present = "generate_key")]
        public_key: Option<String>,
        /// Make the client's key pair here, for a device that cannot: the private key is
        /// printed once, inside the profile URI and QR code, and not stored.
        #[arg(long, conflicts_with = "public_key", requires = "host")]
        generate_key: bool,
        /// The host clients knock on (for the printed profile).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// A service it may open (repeatable; default: every protected service).
        #[arg(long, value_name = "PROTO/PORT")]
        allow: Vec<String>,
        /// A source prefix it may knock from (repeatable; default: anywhere).
        #[arg(long, value_name = "PREFIX")]
        source: Vec<String>,
        /// Its pre-shared key file.
        #[arg(long, value_name = "FILE")]
        psk_file: Option<String>,
        /// Allow its payload to name another address than the packets' source.
        #[arg(long)]
        allow_other_ip: bool,
        /// When it stops being accepted (RFC 3339).
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
    },
    /// Remove a client (its leases end now).
    Remove {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// The client's name.
        name: String,
    },
    /// List the clients: name, key, what they may open, from where, PSK, expiry, and their
    /// last knock (when the running sesamed of this file answers).
    List {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON (one array; the full public keys).
        #[arg(long)]
        json: bool,
    },
}

/// How `sesamed run` writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// A failure with its exit status: [`Exit::Failure`] at run time, [`Exit::Usage`] for usage
/// and configuration.
struct Failure {
    status: Exit,
    message: String,
}

fn config_error(e: impl std::fmt::Display) -> Failure {
    Failure {
        status: Exit::Usage,
        message: e.to_string(),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(logging::StderrWriter)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn runtime_error(e: impl std::fmt::Display) -> Failure {
    Failure {
        status: Exit::Failure,
        message: e.to_string(),
    }
}

/// The new client of `change` as the daemon will see it: its PSK file must be a valid key
/// (read as this user), and the running sesamed of this file must be able to read it.
fn check_new_client(
    change: &edit::Edit,
    name: &str,
    running: &edit::Running,
) -> Result<(), String> {
    let Some(psk) = change
        .config
        .clients
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.psk_file.as_ref())
    else {
        return Ok(());
    };
    let unchanged = "the configuration was not changed";
    sesame_keys::read_psk_file_with(psk, sesame_keys::Links::Refuse)
        .map_err(|e| format!("client '{name}': psk_file: {e}; {unchanged}"))?;
    if let edit::Running::This(status) = running {
        if let (Some(uid), Some(gid)) = (status.uid, status.gid) {
            edit::readable_by(psk, uid, gid)
                .map_err(|e| format!("client '{name}': psk_file: {e}; {unchanged}"))?;
        }
    }
    Ok(())
}

/// The URI of a client's profile, with its secrets when it has them here.
fn profile_uri(
    config: &Config,
    name: &str,
    host: &str,
    private_key: Option<sesame_keys::PrivateKey>,
) -> Result<zeroize::Zeroizing<String>, Failure> {
    let key = sesame_keys::read_private_key_file_with(
        &config.private_key_file,
        sesame_keys::Links::Refuse,
    )
    .map_err(|e| config_error(format!("{}: private_key_file: {e}", config.path.display())))?;
    let text = config
        .export_profile(name, host, key.public_key())
        .ok_or_else(|| {
            config_error(format!(
                "{}: no client named '{name}'",
                config.path.display()
            ))
        })?;
    let profile = sesame_proto::Profile::parse(&text).map_err(|e| runtime_error(e.to_string()))?;
    let client = config.clients.iter().find(|c| c.name == name);
    let psk = match client.and_then(|c| c.psk_file.as_ref()) {
        Some(p) => Some(
            sesame_keys::read_psk_file_with(p, sesame_keys::Links::Refuse)
                .map_err(|e| config_error(e.to_string()))?,
        ),
        None => None,
    };
    if psk.is_some() {
        eprintln!(
            "sesamed: note: this URI carries the client's pre-shared key; treat it as a secret"
        );
    }
    let uri = sesame_proto::uri::ProfileUri {
        name: name.to_owned(),
        profile,
        private_key,
        psk,
    };
    uri.encode().map_err(|e| runtime_error(e.to_string()))
}

/// Draws `text` as a QR code with Unicode half blocks: a light module is a block in the
/// foreground colour and a dark one a space, so the code is dark-on-light (what phone cameras
/// expect) on a terminal with a dark background. On a terminal (and without `NO_COLOR`),
/// [`qr_for_stdout`] also sets those colours, so the code reads on light themes too.
pub fn qr_text(text: &str) -> Result<String, String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| format!("cannot make a QR code: {e}"))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// [`qr_text`] with every line drawn white on black (ANSI SGR 97;40) when `colors`.
pub fn qr_colored(text: &str, colors: bool) -> Result<String, String> {
    let qr = qr_text(text)?;
    if !colors {
        return Ok(qr);
    }
    Ok(qr
        .lines()
        .map(|l| format!("\x1b[97;40m{l}\x1b[0m"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The QR code for standard output: coloured when it is a terminal and `NO_COLOR` is unset.
fn qr_for_stdout(text: &str) -> Result<String, String> {
    use std::io::IsTerminal;
    let colors = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    qr_colored(text, colors)
}

/// `sesamed genkey`: the key on stdout, with a warning (as `wg genkey` and `sesame genkey`
/// give) when stdout is a file that group or others can read.
fn print_private_key(key: &str) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let stdout = std::io::stdout();
    if let Ok(fd) = stdout.as_fd().try_clone_to_owned() {
        let meta = std::fs::File::from(fd).metadata();
        if let Ok(meta) = meta {
            if meta.is_file() && sesame_keys::mode_is_too_open(meta.mode()) {
                eprintln!(
                    "sesamed: warning: writing a private key to a file that group or others can read (mode {:04o}); set `umask 077` first, or chmod 600 the file",
                    meta.mode() & 0o7777
                );
            }
        }
    }
    let mut out = stdout.lock();
    writeln!(out, "{key}")
        .and_then(|()| out.flush())
        .map_err(|e| runtime_error(format!("cannot write the key: {e}")))
}

/// Entry point of the `sesamed` binary: 0 ok, 1 failure, 2 usage or configuration error.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs the daemon CLI with the given arguments (the first is the program name).
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli: Cli = match sesame_cli::parse(args) {
        Ok(cli) => cli,
        Err(status) => return status.into(),
    };
    if !matches!(
        cli.command,
        Command::Run { .. } | Command::ActionRunner { .. }
    ) {
        // The one-shot commands end quietly when a pipe reader goes away (`sesamed status |
        // head`). The daemon keeps Rust's default (SIGPIPE ignored): a control-socket peer
        // that disconnects must never kill it.
        sigpipe::reset();
    }
    if let Command::ActionRunner { config } = &cli.command {
        return action::runner::main(config);
    }
    match dispatch(cli) {
        Ok(()) => Exit::Success.into(),
        Err(f) => sesame_cli::fail("sesamed", f.message, f.status),
    }
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run { config, log_format } => {
            init_logging(log_format);
            let config = Config::load(&config).map_err(config_error)?;
            let secrets = config.load_secrets().map_err(config_error)?;
            daemon::run(config, secrets).map_err(|e| Failure {
                status: Exit::Failure,
                message: e.to_string(),
            })
        }
        Command::Check {
            config,
            as_user: Some(user),
        } => check_as_user(&config, &user),
        // It says why it stops on its pipe to the daemon, which logs it; handled in `run`.
        Command::ActionRunner { .. } => Ok(()),
        Command::GateRules { config } => {
            let config = Config::load(&config).map_err(config_error)?;
            match firewall::AnyFirewall::from_config(&config) {
                firewall::AnyFirewall::Nftables(nft) => {
                    print!("{}", nft.gate_rules());
                    Ok(())
                }
                _ => Err(Failure {
                    status: Exit::Usage,
                    message: format!(
                        "{}: firewall.backend is not \"nftables\": the gate rules are sesamed's nftables table; with the command backend, close the services in your own boot rules",
                        config.path.display()
                    ),
                }),
            }
        }
        Command::Check {
            config,
            as_user: None,
        } => {
            let config = Config::load(&config).map_err(config_error)?;
            let secrets = config.load_secrets().map_err(config_error)?;
            let action_notes = action::check(&config)
                .map_err(|e| config_error(format!("{}: {e}", config.path.display())))?;
            for note in knock_notes(&config)
                .into_iter()
                .chain(prefix_notes(&config))
                .chain(action_notes.notes)
            {
                eprintln!("sesamed: note: {note}");
            }
            for warning in action_notes.warnings {
                eprintln!("sesamed: warning: {warning}");
            }
            for note in control::notes_against_running(&config, &secrets.server_key.public_key()) {
                eprintln!("sesamed: note: {note}");
            }
            if config.user.is_none() && nix::unistd::geteuid().is_root() {
                eprintln!(
                    "sesamed: warning: user is not set: started as root, sesamed stays uid 0 (its capabilities are dropped, its access to files is not); set user = \"sesame\", or start it as that user (the shipped systemd unit does)"
                );
            }
            if let firewall::AnyFirewall::Nftables(nft) =
                firewall::AnyFirewall::from_config(&config)
            {
                match nft.check_ruleset() {
                    Ok(true) => {}
                    Ok(false) => eprintln!(
                        "sesamed: note: the nftables table was not tried against the kernel (nft is missing or this user lacks CAP_NET_ADMIN); run check as root to try it"
                    ),
                    Err(e) => {
                        return Err(Failure {
                            status: Exit::Failure,
                            message: format!(
                                "the kernel refuses the nftables table sesamed would build: {e}"
                            ),
                        });
                    }
                }
            }
            let p = &config.knock.params;
            println!(
                "{}: ok ({}, knock range {}-{}, length {}, {} knocks, payload {}, backend {}, protecting {}{})",
                config.path.display(),
                config::count(config.clients.len(), "client", "clients"),
                p.port_lo,
                p.port_hi,
                p.length,
                p.protocol,
                config.knock.payload,
                config.firewall.backend,
                config
                    .firewall
                    .protect
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                actions_summary(&config)
            );
            for line in action::describe(&config) {
                println!("{line}");
            }
            Ok(())
        }
        Command::Status {
            config,
            json,
            prometheus,
        } => {
            // Only the socket is needed: the clients are not parsed (seconds at 1 000 000).
            let socket = Config::control_socket_of(&config).map_err(config_error)?;
            let answer = control::request(&socket, "status").map_err(|e| Failure {
                status: Exit::Failure,
                message: e.to_string(),
            })?;
            let status: control::Status =
                serde_json::from_str(answer.trim()).map_err(|e| Failure {
                    status: Exit::Failure,
                    message: format!("unexpected answer from sesamed: {e}"),
                })?;
            if json {
                println!("{}", answer.trim());
            } else if prometheus {
                print!("{}", control::prometheus(&status));
            } else {
                print!("{}", human_status(&status));
            }
            Ok(())
        }
        Command::Reload { config } => {
            let config = Config::load(&config).map_err(config_error)?;
            let answer =
                control::request(&config.control_socket, "reload").map_err(runtime_error)?;
            let r: control::ReloadResult = serde_json::from_str(answer.trim())
                .map_err(|e| runtime_error(format!("unexpected answer from sesamed: {e}")))?;
            if r.ok {
                println!("{}", r.message);
                Ok(())
            } else {
                Err(runtime_error(format!(
                    "sesamed refused the reload (the running configuration stays): {}",
                    r.message
                )))
            }
        }
        Command::Client { command } => match command {
            ClientCommand::Add {
                config,
                name,
                public_key,
                generate_key,
                host,
                allow,
                source,
                psk_file,
                allow_other_ip,
                expires,
            } => {
                let generated = generate_key.then(sesame_keys::PrivateKey::generate);
                let public_key = match (&generated, public_key) {
                    (Some(k), _) => k.public_key().to_base64(),
                    (None, Some(k)) => k,
                    (None, None) => {
                        return Err(config_error("--public-key or --generate-key is needed"));
                    }
                };
                let new = edit::NewClient {
                    name: name.clone(),
                    public_key,
                    allow,
                    source,
                    psk_file,
                    allow_other_ip,
                    expires,
                };
                let change = edit::add_client(&config, &new).map_err(config_error)?;
                // With a generated key, everything that prints it must work before the
                // configuration changes: a key nobody saw must never be added.
                let shown = match (generated, &host) {
                    (Some(key), Some(host)) => {
                        let uri = profile_uri(&change.config, &name, host, Some(key))?;
                        let qr = qr_for_stdout(&uri).map_err(runtime_error)?;
                        Some((uri, qr))
                    }
                    _ => None,
                };
                let done = format!("added client '{name}' to {}", config.display());
                let printed = edit::apply(&config, change, &done, |change, running| {
                    check_new_client(change, &name, running)
                })
                .map_err(|e| Failure {
                    status: Exit::Failure,
                    message: e,
                })?;
                println!("{}", printed[0]);
                if let Some((uri, qr)) = shown {
                    println!(
                        "profile URI with the client's private key (shown once, not stored):\n{}",
                        &*uri
                    );
                    println!("{qr}");
                    println!(
                        "on the device: run `sesame import -` and paste the URI (it stays out of the shell history), or scan the code"
                    );
                }
                for line in &printed[1..] {
                    println!("{line}");
                }
                Ok(())
            }
            ClientCommand::List { config, json } => {
                let config = Config::load(&config).map_err(config_error)?;
                let running = match edit::running(&config) {
                    edit::Running::This(s) => Some(s),
                    _ => None,
                };
                let rows = edit::client_rows(&config, running.as_ref(), daemon::system_now());
                if json {
                    println!("{}", serde_json::to_string(&rows).map_err(runtime_error)?);
                } else {
                    print!("{}", edit::client_table(&rows));
                    if running.is_none() {
                        eprintln!(
                            "sesamed: note: the sesamed of this file is not reachable; last knocks are not shown"
                        );
                    }
                }
                Ok(())
            }
            ClientCommand::Remove { config, name } => {
                let change = edit::remove_client(&config, &name).map_err(config_error)?;
                let done = format!("removed client '{name}' from {}", config.display());
                let printed =
                    edit::apply(&config, change, &done, |_, _| Ok(())).map_err(|e| Failure {
                        status: Exit::Failure,
                        message: e,
                    })?;
                for line in &printed {
                    println!("{line}");
                }
                Ok(())
            }
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sesamed",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Genkey => print_private_key(&sesame_keys::PrivateKey::generate().to_base64()),
        Command::Man { dir } => {
            use clap::CommandFactory;
            manpage::man(Cli::command(), dir.as_deref()).map_err(runtime_error)
        }
        Command::ExportClient {
            config,
            name,
            host,
            uri,
            qr,
        } if uri || qr => {
            let config = Config::load(&config).map_err(config_error)?;
            let text = profile_uri(&config, &name, &host, None)?;
            if uri {
                println!("{}", &*text);
                eprintln!(
                    "sesamed: on the device, run `sesame import -` and paste the line above (not `sesame import URI`, which leaves it in the shell history and in ps), or scan --qr"
                );
            }
            if qr {
                print!("{}", qr_for_stdout(&text).map_err(runtime_error)?);
                println!();
            }
            Ok(())
        }
        Command::ExportClient {
            config, name, host, ..
        } => {
            let config = Config::load(&config).map_err(config_error)?;
            let key = sesame_keys::read_private_key_file_with(
                &config.private_key_file,
                sesame_keys::Links::Refuse,
            )
            .map_err(|e| {
                config_error(format!("{}: private_key_file: {e}", config.path.display()))
            })?;
            let Some(profile) = config.export_profile(&name, &host, key.public_key()) else {
                let known: Vec<&str> = config.clients.iter().map(|c| c.name.as_str()).collect();
                return Err(config_error(format!(
                    "{}: no client named '{name}' (clients: {})",
                    config.path.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            print!(
                "# sesame profile for client '{name}' (from sesamed export-client)\n# Put this client's private key in private_key_file (chmod 600), then: sesame open --profile THIS_FILE\n{profile}"
            );
            Ok(())
        }
    }
}

fn human_status(s: &control::Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let up = s.uptime_seconds;
    let _ = writeln!(
        out,
        "sesamed {} (pid {}), up {}h{:02}m{:02}s, config {}",
        s.version,
        s.pid,
        up / 3600,
        up / 60 % 60,
        up % 60,
        s.config
    );
    if let Some(f) = &s.capture_filter {
        let ebpf = if f.ebpf_loaded {
            ""
        } else {
            " (eBPF filter not loaded: the log at start says why)"
        };
        let _ = writeln!(out, "{}{ebpf}", f.detail);
    }
    if let Some(until) = &s.after_crash_until {
        let _ = writeln!(
            out,
            "after a crash: until {until}, payloads that name no address are refused and in optional mode a sequence alone opens nothing (after a machine crash under state_sync = \"fence\", knocks stamped before the fence too; the log at start says which)"
        );
    }
    let _ = writeln!(out, "leases ({}):", s.leases.len());
    for l in &s.leases {
        let _ = writeln!(
            out,
            "  {:<16} {:<40} {:<10} {} s left",
            l.client, l.address, l.service, l.seconds_left
        );
    }
    let _ = writeln!(out, "clients ({}):", s.clients.len());
    for c in &s.clients {
        match (&c.last_knock, &c.last_source, &c.last_result) {
            (Some(at), Some(src), Some(result)) => {
                let _ = writeln!(out, "  {:<16} last knock {at} from {src}: {result}", c.name);
            }
            _ => {
                let _ = writeln!(out, "  {:<16} no knock since start", c.name);
            }
        }
    }
    if !s.actions.is_empty() {
        let runner = match &s.action_runner {
            Some(r) if r.state == "running" => {
                format!("runner running, pid {}", r.pid.unwrap_or(0))
            }
            Some(r) => format!(
                "the runner {} at {}: no action runs",
                r.state,
                r.since.as_deref().unwrap_or("?")
            ),
            None => "no runner: no action runs".to_owned(),
        };
        let _ = writeln!(out, "actions ({}; {runner}):", s.actions.len());
        for a in &s.actions {
            let last = match (&a.last_run, &a.last_client, &a.last_source, &a.last_outcome) {
                (Some(at), Some(client), Some(src), Some(outcome)) => {
                    let how = match (outcome.as_str(), a.last_code, a.last_ms) {
                        ("running", _, _) => "running".to_owned(),
                        (o, Some(code), Some(ms)) => format!("{o} {code} in {ms} ms"),
                        (o, None, Some(ms)) => format!("{o} after {ms} ms"),
                        (o, _, None) => o.to_owned(),
                    };
                    format!("last run {at} for {client} from {src}: {how}")
                }
                _ => "no run since start".to_owned(),
            };
            let counts: Vec<String> = a.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                out,
                "  {:<16} as {}: {last}{}",
                a.name,
                a.user,
                if counts.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", counts.join(", "))
                }
            );
        }
    }
    let c = &s.counters;
    let _ = writeln!(
        out,
        "counters: packets {} (in range {}, dropped by the capture socket {}), resets {}, sequences {}, payloads {} (accepted {}), x25519 {}, grants {}, leases opened {} refreshed {}, firewall failures {}, state write failures {}, sources tracked {} evicted {}",
        c.packets_seen,
        c.packets_in_range,
        c.capture_drops,
        c.resets,
        c.sequences_completed,
        c.payloads_seen,
        c.payloads_accepted,
        c.x25519,
        c.grants,
        c.leases_opened,
        c.leases_refreshed,
        c.firewall_failures,
        c.state_write_failures,
        c.sources_tracked,
        c.sources_evicted
    );
    let rejections: Vec<String> = c
        .rejections
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        out,
        "rejections: {}",
        if rejections.is_empty() {
            "none".to_owned()
        } else {
            rejections.join(", ")
        }
    );
    out
}

/// `sesamed check --as-user USER`: the same check, run again by this binary with USER's uid
/// and primary gid (no supplementary groups), so files it cannot read fail here.
fn check_as_user(config: &std::path::Path, user: &str) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt;
    let usage = |message: String| Failure {
        status: Exit::Usage,
        message,
    };
    let account = nix::unistd::User::from_name(user)
        .map_err(|e| usage(format!("--as-user {user}: {e}")))?
        .ok_or_else(|| usage(format!("--as-user {user}: no such user")))?;
    let me = nix::unistd::geteuid();
    if me != account.uid && !me.is_root() {
        return Err(usage(format!(
            "--as-user {user}: checking as another user needs root (run it with sudo)"
        )));
    }
    let exe = std::env::current_exe().map_err(|e| Failure {
        status: Exit::Failure,
        message: format!("cannot find this program: {e}"),
    })?;
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    eprintln!(
        "sesamed: checking as {user} (uid {}, gid {})",
        account.uid, account.gid
    );
    let status = std::process::Command::new(exe)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .uid(account.uid.as_raw())
        .gid(account.gid.as_raw())
        .current_dir("/")
        .status()
        .map_err(|e| Failure {
            status: Exit::Failure,
            message: format!("cannot run the check as {user}: {e}"),
        })?;
    match status.code() {
        Some(0) => Ok(()),
        // The child said why; keep its status.
        Some(code) => Err(Failure {
            status: if code >= 2 {
                Exit::Usage
            } else {
                Exit::Failure
            },
            message: format!("the check as {user} failed (above)"),
        }),
        None => Err(Failure {
            status: Exit::Failure,
            message: format!("the check as {user} was killed"),
        }),
    }
}

/// `; actions wake, restart-vpn` for check's summary line (nothing without actions).
fn actions_summary(config: &Config) -> String {
    if config.actions.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = config.actions.iter().map(|a| a.name.as_str()).collect();
    format!(
        "; {} {}",
        if names.len() == 1 {
            "action"
        } else {
            "actions"
        },
        names.join(", ")
    )
}

/// What `[knock]` means for clients on networks that block UDP (`sesamed check`).
fn knock_notes(config: &Config) -> Vec<String> {
    use sesame_proto::params::{KnockProtocol, PayloadMode};
    let p = &config.knock.params;
    let mut notes = Vec::new();
    if p.length == 0 {
        if p.protocol != KnockProtocol::Udp {
            notes.push(format!(
                "[knock] length = 0: the knock is one UDP datagram to a port of port_range whatever protocol (\"{}\") says; networks that block UDP cannot knock",
                p.protocol
            ));
        }
    } else if p.protocol == KnockProtocol::Tcp && config.knock.payload == PayloadMode::Required {
        notes.push(
            "[knock] protocol = \"tcp\" with payload = \"required\": every knock still ends with a UDP datagram to a port of port_range, so clients on networks that block UDP cannot get in; for them, payload = \"optional\" (the TCP knocks alone open, unbound, timeout_ms after the sequence when no payload comes; not with require_address = true) or payload = \"none\" (sequence-only, never bound)".to_owned(),
        );
    }
    notes
}

/// What a client's `lease_prefix_v4`/`_v6` opens (`sesamed check`): every address of the
/// block, so everyone behind the same carrier NAT block gets in with the client's knock.
fn prefix_notes(config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    for c in &config.clients {
        if c.lease_prefix_v4 < 32 {
            notes.push(format!(
                "client '{}': lease_prefix_v4 = {}: each grant opens a /{} ({} addresses) around the knock's address, not the address alone",
                c.name,
                c.lease_prefix_v4,
                c.lease_prefix_v4,
                1u64 << (32 - c.lease_prefix_v4)
            ));
        }
        if c.lease_prefix_v6 < 128 {
            notes.push(format!(
                "client '{}': lease_prefix_v6 = {}: each grant opens a /{} (2^{} addresses) around the knock's address, not the address alone",
                c.name,
                c.lease_prefix_v6,
                c.lease_prefix_v6,
                128 - c.lease_prefix_v6
            ));
        }
    }
    notes
}

#[cfg(test)]
mod status_tests {
    use super::*;

    fn a_status(after_crash_until: Option<&str>) -> control::Status {
        control::Status {
            version: "0.0.0".into(),
            uptime_seconds: 5,
            pid: 1,
            config: "/etc/sesame/sesamed.toml".into(),
            uid: Some(0),
            gid: Some(0),
            server_key_id: "00".into(),
            knock: control::KnockStatus::default(),
            leases: Vec::new(),
            clients: Vec::new(),
            actions: Vec::new(),
            action_runner: None,
            capture_filter: None,
            after_crash_until: after_crash_until.map(str::to_owned),
            counters: control::Counters::default(),
        }
    }

    /// `after_crash_until` is in the JSON (null when no rule of a start after a crash holds)
    /// and, while one does, a line of the human status; a status without it (an older
    /// sesamed's) still parses.
    #[test]
    fn status_shows_until_when_the_rules_of_a_start_after_a_crash_hold() {
        let clean = a_status(None);
        let json = serde_json::to_value(&clean).unwrap();
        assert_eq!(json["after_crash_until"], serde_json::Value::Null);
        assert!(!human_status(&clean).contains("after a crash"));

        let until = "2026-11-30T13:30:00.000Z";
        let crashed = a_status(Some(until));
        let json = serde_json::to_value(&crashed).unwrap();
        assert_eq!(json["after_crash_until"], until);
        let human = human_status(&crashed);
        assert!(
            human.contains(&format!("\nafter a crash: until {until}, ")),
            "{human}"
        );
        // Every line of before is still there, as it was.
        for line in human_status(&clean).lines() {
            assert!(human.lines().any(|l| l == line), "{line} in {human}");
        }

        let mut older = serde_json::to_value(&clean).unwrap();
        older.as_object_mut().unwrap().remove("after_crash_until");
        let parsed: control::Status = serde_json::from_value(older).unwrap();
        assert_eq!(parsed, clean);
    }
}
