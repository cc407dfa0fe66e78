//! `sesamed`, the sesame knock daemon.
//!
//! The binary is a thin `main` around [`main`]. Unsafe code lives only in [`capture`].
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod capture;
pub mod config;
pub mod control;
pub mod daemon;
pub mod firewall;
pub mod privileges;
pub mod state;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Run in the foreground (logs to stderr; SIGTERM or SIGINT stop it).
    Run {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the configuration and the key files it names.
    Check {
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
    },
}

/// A failure with its exit status: 1 for runtime failures, 2 for usage and configuration.
struct Failure {
    code: u8,
    message: String,
}

fn config_error(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 2,
        message: e.to_string(),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Entry point of the `sesamed` binary: 0 ok, 1 failure, 2 usage or configuration error.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs the daemon CLI with the given arguments (the first is the program name).
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
        Err(f) => {
            eprintln!("sesamed: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run { config } => {
            init_logging();
            let config = Config::load(&config).map_err(config_error)?;
            let secrets = config.load_secrets().map_err(config_error)?;
            daemon::run(config, secrets).map_err(|e| Failure {
                code: 1,
                message: e.to_string(),
            })
        }
        Command::Check { config } => {
            let config = Config::load(&config).map_err(config_error)?;
            config.load_secrets().map_err(config_error)?;
            let p = &config.knock.params;
            println!(
                "{}: ok ({} clients, knock range {}-{}, length {}, {} knocks, payload {}, backend {:?}, protecting {})",
                config.path.display(),
                config.clients.len(),
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
                    .join(", ")
            );
            Ok(())
        }
        Command::Status {
            config,
            json,
            prometheus,
        } => {
            let config = Config::load(&config).map_err(config_error)?;
            let answer =
                control::request(&config.control_socket, "status").map_err(|e| Failure {
                    code: 1,
                    message: e.to_string(),
                })?;
            let status: control::Status =
                serde_json::from_str(answer.trim()).map_err(|e| Failure {
                    code: 1,
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
        Command::ExportClient { config, name, host } => {
            let config = Config::load(&config).map_err(config_error)?;
            let key =
                sesame_keys::read_private_key_file(&config.private_key_file).map_err(|e| {
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
    let c = &s.counters;
    let _ = writeln!(
        out,
        "counters: packets {} (in range {}), resets {}, sequences {}, payloads {} (accepted {}), x25519 {}, grants {}, leases opened {} refreshed {}, firewall failures {}, state write failures {}, sources tracked {} evicted {}",
        c.packets_seen,
        c.packets_in_range,
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
