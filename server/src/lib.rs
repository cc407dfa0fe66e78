//! `sesamed`, the sesame knock daemon.
//!
//! The binary is a thin `main` around [`main`]. Unsafe code lives only in [`capture`].
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod capture;
pub mod config;
pub mod daemon;
pub mod firewall;
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
