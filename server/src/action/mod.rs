//! Server actions (`[[action]]`): a knock names one, sesamed runs the argv an administrator
//! configured for it.
//!
//! The daemon never runs an action itself. Before it drops its privileges it starts an
//! *action runner*: itself, re-executed as `sesamed action-runner --config FILE`, with a pipe
//! pair. The runner reads the configuration on its own, keeps only the privileges running the
//! actions needs ([`runner`]), and runs only requests it checks against its own reading of the
//! configuration ([`protocol`]): the action exists, the client may run it, its argument fits
//! the action's rule. Nothing from the network becomes a shell string: the command is the
//! configured argv, with `{client}`, `{source}` and `{argument}` replaced by those values (each
//! inside the argument where it stands, never split, never parsed).

pub mod protocol;
pub mod runner;

use std::net::IpAddr;

use nix::unistd::{Gid, Uid, User};

use crate::config::{ActionConfig, Config};

/// The environment every action gets (and nothing else of sesamed's): `PATH`, and
/// `SESAME_ACTION`, `SESAME_CLIENT`, `SESAME_SOURCE` and, with an argument, `SESAME_ARGUMENT`.
pub const ACTION_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The argv of a run: every placeholder of `command` replaced in one pass (a value that holds
/// `{client}` is not replaced again).
pub fn expand(command: &[String], client: &str, source: IpAddr, argument: &str) -> Vec<String> {
    let source = source.to_string();
    command
        .iter()
        .map(|word| {
            let mut out = String::with_capacity(word.len());
            let mut rest = word.as_str();
            'scan: while !rest.is_empty() {
                for (name, value) in [
                    ("{client}", client),
                    ("{source}", source.as_str()),
                    ("{argument}", argument),
                ] {
                    if let Some(after) = rest.strip_prefix(name) {
                        out.push_str(value);
                        rest = after;
                        continue 'scan;
                    }
                }
                let mut chars = rest.chars();
                if let Some(c) = chars.next() {
                    out.push(c);
                }
                rest = chars.as_str();
            }
            out
        })
        .collect()
}

/// What the runner must know to run actions, in a stable text: every action (all its keys)
/// and, per client, the actions it may run.
fn canonical(config: &Config) -> String {
    let mut text = String::new();
    for a in &config.actions {
        text.push_str(&format!(
            "action {:?} {:?} {:?} {} {} {} {} {:?}\n",
            a.name,
            a.command,
            a.user,
            a.allow_root,
            a.timeout_ms,
            a.cooldown_ms,
            a.max_concurrent,
            a.argument.to_string()
        ));
    }
    for c in &config.clients {
        if !c.actions.is_empty() {
            text.push_str(&format!("client {:?} {:?}\n", c.name, c.actions));
        }
    }
    text
}

/// A short digest of the actions of a configuration (16 hex digits): the daemon and the runner
/// each read the file, and compare this to be sure they read the same actions.
pub fn fingerprint(config: &Config) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, canonical(config).as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two configurations have the same actions (and the same clients allowed them).
pub fn same_actions(a: &Config, b: &Config) -> bool {
    canonical(a) == canonical(b)
}

/// An action with its account looked up.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The action as configured.
    pub config: ActionConfig,
    /// Its account's uid.
    pub uid: Uid,
    /// Its account's primary gid.
    pub gid: Gid,
}

/// Why actions cannot be run as configured.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The action's user does not exist.
    #[error("action '{action}': user '{user}' does not exist")]
    NoSuchUser {
        /// The action.
        action: String,
        /// Its user.
        user: String,
    },
    /// Looking the user up failed.
    #[error("action '{action}': cannot look up user '{user}': {source}")]
    Lookup {
        /// The action.
        action: String,
        /// Its user.
        user: String,
        /// The underlying error.
        source: nix::Error,
    },
    /// The action's user has uid 0 and the action lacks `allow_root = true`.
    #[error(
        "action '{action}': user '{user}' is uid 0 (root); running it as root needs allow_root = true"
    )]
    Root {
        /// The action.
        action: String,
        /// Its user.
        user: String,
    },
    /// The action runs as another account than sesamed's, which sesamed cannot switch to.
    #[error(
        "action '{action}': user = \"{user}\" (uid {uid}) is not the account sesamed runs as (uid {own}), and switching to it needs sesamed to start as root (CAP_SETUID, CAP_SETGID); set user = \"{own_name}\" for this action, or start sesamed as root with user = \"{own_name}\" in the configuration"
    )]
    CannotSwitch {
        /// The action.
        action: String,
        /// Its user.
        user: String,
        /// Its uid.
        uid: u32,
        /// The uid sesamed runs as.
        own: u32,
        /// That account's name (or its number).
        own_name: String,
    },
}

/// Looks up each action's account and checks it may run as it: not root without
/// `allow_root`, and another account than `me` only if `can_switch`.
pub fn resolve(config: &Config, me: Uid, can_switch: bool) -> Result<Vec<Resolved>, ActionError> {
    let mut out = Vec::with_capacity(config.actions.len());
    for a in &config.actions {
        let account = User::from_name(&a.user)
            .map_err(|source| ActionError::Lookup {
                action: a.name.clone(),
                user: a.user.clone(),
                source,
            })?
            .ok_or_else(|| ActionError::NoSuchUser {
                action: a.name.clone(),
                user: a.user.clone(),
            })?;
        if account.uid.is_root() && !a.allow_root {
            return Err(ActionError::Root {
                action: a.name.clone(),
                user: a.user.clone(),
            });
        }
        if account.uid != me && !can_switch {
            let own_name = User::from_uid(me)
                .ok()
                .flatten()
                .map_or_else(|| me.to_string(), |u| u.name);
            return Err(ActionError::CannotSwitch {
                action: a.name.clone(),
                user: a.user.clone(),
                uid: account.uid.as_raw(),
                own: me.as_raw(),
                own_name,
            });
        }
        out.push(Resolved {
            config: a.clone(),
            uid: account.uid,
            gid: account.gid,
        });
    }
    Ok(out)
}

/// Whether this process may switch to other accounts (effective CAP_SETUID and CAP_SETGID).
pub fn can_switch_users() -> bool {
    use caps::{CapSet, Capability};
    [Capability::CAP_SETUID, Capability::CAP_SETGID]
        .iter()
        .all(|c| caps::has_cap(None, CapSet::Effective, *c).unwrap_or(false))
}

/// What `sesamed check` says about the actions besides errors.
#[derive(Debug, Default)]
pub struct CheckNotes {
    /// Odd but works (`sesamed: note: ...`).
    pub notes: Vec<String>,
    /// Works, but weakens what sesamed protects (`sesamed: warning: ...`).
    pub warnings: Vec<String>,
}

/// `sesamed check`: the actions' accounts, as this process would run them (an error for what
/// stops sesamed from starting), notes about what is odd but works, and warnings about what
/// works but weakens sesamed (an action that runs as sesamed's own account).
pub fn check(config: &Config) -> Result<CheckNotes, String> {
    let mut out = CheckNotes::default();
    if config.actions.is_empty() {
        return Ok(out);
    }
    let me = Uid::effective();
    // The account the daemon runs as: `user` when started as root, else this one.
    let daemon = match &config.user {
        Some(name) if me.is_root() => User::from_name(name).ok().flatten().map(|u| u.uid),
        _ => Some(me),
    };
    let resolved =
        resolve(config, me, can_switch_users()).map_err(|e| format!("action.user: {e}"))?;
    let mut notes = Vec::new();
    let key_owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&config.private_key_file)
            .ok()
            .map(|m| m.uid())
    };
    for r in &resolved {
        let a = &r.config;
        let program = std::path::Path::new(&a.command[0]);
        match std::fs::metadata(program) {
            Ok(m) if m.is_file() => {}
            Ok(_) => notes.push(format!(
                "action '{}': {} is not a file: the action fails until it is",
                a.name,
                program.display()
            )),
            Err(e) => notes.push(format!(
                "action '{}': {}: {e}: the action fails until it exists",
                a.name,
                program.display()
            )),
        }
        if a.command.iter().any(|w| w.contains("{source}")) {
            for c in config
                .clients
                .iter()
                .filter(|c| c.actions.contains(&a.name) && !c.require_address)
            {
                notes.push(format!(
                    "action '{}' passes {{source}}, and client '{}' may send knocks that name no address: an on-path attacker who holds such a knock back can send it first from its own address, which {{source}} then is (set require_address = true for it)",
                    a.name, c.name
                ));
            }
        }
        if !config.clients.iter().any(|c| c.actions.contains(&a.name)) {
            notes.push(format!(
                "action '{}': no client may run it (add it to a client's actions)",
                a.name
            ));
        }
        if daemon == Some(r.uid) && !r.uid.is_root() {
            out.warnings.push(format!(
                "action '{}' runs as '{}', the account sesamed itself runs as: a flaw in its command then runs code as sesamed, which can read the server key (and with it forge any client's knock), rewrite sesamed's state (its replay protection, after the next restart), and signal or stop sesamed; run it as an account of its own (start sesamed as root with user = \"{}\" in the configuration, so that its action runner can switch accounts, and give the action user = \"<another account>\")",
                a.name, a.user, a.user
            ));
        } else if key_owner == Some(r.uid.as_raw()) && !r.uid.is_root() {
            notes.push(format!(
                "action '{}' runs as '{}', which owns the server key (private_key_file): a flaw in its command can give the key away; an account of its own is safer (that needs sesamed started as root with user = \"...\")",
                a.name, a.user
            ));
        }
    }
    out.notes = notes;
    Ok(out)
}

/// What `sesamed check` prints under its summary: each action as it would run, and what each
/// client may run.
pub fn describe(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    for a in &config.actions {
        lines.push(format!(
            "  action '{}' runs {:?} as {} (argument {}; timeout {} ms, cooldown {} ms per client, at most {} at once)",
            a.name,
            a.command,
            a.user,
            a.argument,
            a.timeout_ms,
            a.cooldown_ms,
            a.max_concurrent
        ));
    }
    for c in &config.clients {
        if !c.actions.is_empty() {
            lines.push(format!(
                "  client '{}' may run: {}",
                c.name,
                c.actions.join(", ")
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn placeholders_are_replaced_in_place_once() {
        let src: IpAddr = "2001:db8::7".parse().unwrap();
        let argv = expand(
            &words(&[
                "/usr/bin/x",
                "{argument}",
                "--for={client}@{source}",
                "{client}{client}",
                "{unknown}",
                "{",
                "a{argument",
                "-- {argument} --",
            ]),
            "laptop",
            src,
            "{client}",
        );
        assert_eq!(
            argv,
            words(&[
                "/usr/bin/x",
                "{client}",
                "--for=laptop@2001:db8::7",
                "laptoplaptop",
                "{unknown}",
                "{",
                "a{argument",
                "-- {client} --",
            ])
        );
        // Values never split an argument, whatever they hold.
        let argv = expand(&words(&["/bin/x", "{argument}"]), "c", src, "a;b$(c)'\"");
        assert_eq!(argv, words(&["/bin/x", "a;b$(c)'\""]));
    }
}
