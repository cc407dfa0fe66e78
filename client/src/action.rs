//! `sesame run PROFILE ACTION [ARG]`: a knock whose payload asks the server to run one of the
//! actions its administrator configured (`[[action]]` in sesamed.toml).
//!
//! The knock is `open`'s: the same sequence, the same payload builder (the action and its
//! argument travel inside the AEAD), bound to this device's address the same way. The server
//! never answers a knock, so the client can say only what it sent and how to check the rest.

use std::path::PathBuf;
use std::time::Duration;

use sesame_proto::Service;
use sesame_proto::params::PayloadMode;
use sesame_proto::wire::Action;

use crate::knock;
use crate::{BindArgs, ProfileArg, family_of, format_time, system_now, usage};

/// What `run` says after sending: the server's silence means the client cannot know more.
pub(crate) const SILENT_SERVER_NOTE: &str = "the server does not answer a knock, so sesame cannot tell whether the action ran: check `sesamed status` (or its log: \"action started\", \"action finished\", \"action not run\", \"rejected\") on the server, or the action's own effect";

#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
The server never answers a knock, so there is no --wait here: exit status 0 means the knock was \
sent, not that the action ran (1: it could not be sent; 2: a usage error, a bad profile or key). The server runs it once per accepted knock, and not at all for a \
client not allowed it, an argument its rule refuses, a replay, a knock inside the action's \
cooldown, a knock from another address than the one it is bound to, or too many runs at once. \
`sesamed status` on the server shows each action's last run, and its log says why a knock ran \
nothing.

The knock goes over one family only (-4, -6, or the server's first address), so that the action \
runs once.

Examples:
  sesame run myserver restart-vpn
  sesame run myserver wake nas
  sesame run ./lab.toml wake nas --dry-run")]
pub(crate) struct RunArgs {
    /// The profile: an installed profile's name (see `sesame list`), or a profile file (any
    /// path with a '/', e.g. ./server.toml).
    #[arg(value_name = "PROFILE")]
    profile: String,
    /// The action's name, as the server configured it (1 to 16 characters of a-z, 0-9, _ and -).
    #[arg(value_name = "ACTION")]
    action: String,
    /// Its argument, if the action takes one: 1 to 32 printable ASCII characters, no spaces, not
    /// starting with '-' (the server's rule for the action decides the rest).
    #[arg(value_name = "ARG")]
    argument: Option<String>,
    /// Also ask for a service with the same knock, e.g. tcp/22 (repeatable; default: none, the
    /// knock only runs the action).
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
    /// Knock over IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Knock over IPv6 only.
    #[arg(short = '6')]
    ipv6: bool,
    /// Milliseconds to wait between packets.
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,
    /// Print every packet that would be sent, and send nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The action a knock carries, from the command line: the name and argument checked against
/// what the protocol can carry and what any server's argument rule refuses (an argument that
/// starts with '-'), so that a typo is a clear local error instead of a knock the server drops.
pub(crate) fn parse_action(name: &str, argument: Option<&str>) -> Result<Action, String> {
    if !sesame_proto::wire::is_action_name(name.as_bytes()) {
        return Err(format!(
            "{name:?} is not an action name: 1 to 16 characters of a-z, 0-9, _ and -"
        ));
    }
    let argument = match argument {
        None => "",
        Some("") => {
            return Err("the argument is empty: leave it out for an action that takes none".into());
        }
        Some(arg) if !sesame_proto::wire::is_action_argument(arg.as_bytes()) => {
            return Err(format!(
                "{arg:?} is not an argument a knock can carry: at most {} printable ASCII characters (! to ~), without spaces",
                sesame_proto::wire::ARGUMENT_LEN
            ));
        }
        Some(arg) if arg.starts_with('-') => {
            return Err(format!(
                "{arg:?} starts with '-', which no server accepts (a program could take it for an option)"
            ));
        }
        Some(arg) => arg,
    };
    Action::new(name, argument).map_err(|e| e.to_string())
}

fn profile_path(profile: &str) -> anyhow::Result<PathBuf> {
    if profile.contains('/') {
        return Ok(PathBuf::from(profile));
    }
    ProfileArg {
        name: Some(profile.to_owned()),
        profile: None,
    }
    .path()
}

/// `sesame run`.
pub(crate) fn run(args: RunArgs) -> anyhow::Result<()> {
    let action = parse_action(&args.action, args.argument.as_deref()).map_err(usage)?;
    let mut services = args.ports.clone();
    services.dedup();
    if services.len() > sesame_proto::wire::MAX_SERVICES {
        return Err(usage(format!(
            "at most {} services fit in one knock, {} given",
            sesame_proto::wire::MAX_SERVICES,
            services.len()
        )));
    }
    let path = profile_path(&args.profile)?;
    let profile = crate::load_profile(&path)?;
    if profile.payload == PayloadMode::None && profile.params.length > 0 {
        return Err(usage(format!(
            "{}: payload = \"none\" sends no payload, and the action travels in the payload: actions need payload = \"required\" or \"optional\" (as the server has it)",
            path.display()
        )));
    }
    let keys = crate::load_keys(&profile, &path)?;
    let target = knock::resolve(&profile.host, family_of(args.ipv4, args.ipv6))?;
    let binding = crate::binding_for(&args.bind, &profile, target)?;
    let now = system_now().offset_millis(args.time_offset.saturating_mul(1000));
    let plan = knock::plan_with_action(
        &profile,
        &keys,
        target,
        now,
        services.clone(),
        binding.address,
        Some(action.clone()),
    )?;
    let what = describe(&action, &services);
    let bound = match binding.address {
        Some(ip) => format!("bound to {ip} ({})", binding.how),
        None => format!(
            "{}; anyone who captures this knock can get it run from another address before it arrives",
            binding.how
        ),
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
        println!("# asks to run {what}, {bound}");
        return Ok(());
    }
    knock::send(&plan, Duration::from_millis(args.delay_ms))?;
    let n = plan.packets.len();
    println!(
        "sent {what} to {} ({target}): {n} packet{} at step {}, {bound}",
        profile.host,
        if n == 1 { "" } else { "s" },
        plan.counter
    );
    println!("{SILENT_SERVER_NOTE}");
    Ok(())
}

/// "action 'wake' with argument 'nas' (and tcp/22)".
fn describe(action: &Action, services: &[Service]) -> String {
    let mut what = format!("action '{}'", action.name);
    if !action.argument.is_empty() {
        what.push_str(&format!(" with argument '{}'", action.argument));
    }
    if !services.is_empty() {
        let list: Vec<String> = services.iter().map(Service::to_string).collect();
        what.push_str(&format!(" (and open {})", list.join(", ")));
    }
    what
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn names_and_arguments_are_checked_as_the_protocol_carries_them() {
        let a = parse_action("wake", Some("nas-1")).unwrap();
        assert_eq!((a.name.as_str(), a.argument.as_str()), ("wake", "nas-1"));
        let a = parse_action("restart_vpn", None).unwrap();
        assert_eq!(a.argument, "");
        assert!(parse_action("x", Some(&"a".repeat(32))).is_ok());
        for (name, arg, says) in [
            ("", None, "not an action name"),
            ("Wake", None, "not an action name"),
            ("wake up", None, "not an action name"),
            (&*"a".repeat(17), None, "not an action name"),
            ("wake", Some("two words"), "without spaces"),
            ("wake", Some(&*"a".repeat(33)), "at most 32"),
            ("wake", Some("caf\u{e9}"), "printable ASCII"),
            ("wake", Some("a\nb"), "printable ASCII"),
            ("wake", Some("-rf"), "starts with '-'"),
            ("wake", Some(""), "empty"),
        ] {
            let e = parse_action(name, arg).unwrap_err();
            assert!(e.contains(says), "{name:?} {arg:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
