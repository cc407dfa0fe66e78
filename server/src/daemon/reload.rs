//! `sesamed reload` and SIGHUP: a new configuration without a restart.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use sesame_keys::PublicKey;

use super::actions::Actions;
use super::core::{Core, LastKnock};
use super::firewall_task::FwMsg;
use super::{client_entries, lease_policy, system_now, tracker_config};
use crate::config::{Config, Secrets};
use crate::control;
use crate::firewall::{AnyFirewall, Firewall};
use crate::state::ReplayStore;
use sesame_proto::Tracker;

/// Re-reads the configuration: clients added, removed or changed take effect, knock and
/// firewall settings are applied, leases and replay state are kept. A configuration with
/// errors is refused and the running one keeps serving.
pub(super) async fn reload(core: &Rc<RefCell<Core>>) -> control::ReloadResult {
    // One reload at a time (SIGHUP and `sesamed reload` may come together): the action
    // runner's `reload` and `commit` must pair with this one's.
    let lock = core.borrow().actions.borrow().reload_lock();
    let _one_at_a_time = lock.lock().await;
    let refuse = |message: String| {
        tracing::error!(error = %message, "reload refused; the running configuration stays");
        control::ReloadResult { ok: false, message }
    };
    let (path, old, server_key) = {
        let c = core.borrow();
        (
            c.config.path.clone(),
            c.config.clone(),
            c.server_key.clone(),
        )
    };
    let new = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    let mut psks = Vec::with_capacity(new.clients.len());
    for c in &new.clients {
        match &c.psk_file {
            Some(p) => match sesame_keys::read_psk_file_with(p, sesame_keys::Links::Refuse) {
                Ok(k) => psks.push(Some(k)),
                Err(e) => {
                    return refuse(format!("{}: client '{}': {e}", path.display(), c.name));
                }
            },
            None => psks.push(None),
        }
    }
    let mut notes: Vec<String> = Vec::new();
    // The server key is read again, with the checks `sesamed check` makes (owner-only mode,
    // no link, a valid key): a rotated key takes effect now, a bad one refuses the reload.
    let server_key = match sesame_keys::read_private_key_file_with(
        &new.private_key_file,
        sesame_keys::Links::Refuse,
    ) {
        Ok(k) => k,
        // Started as root with `user`, the key may be readable by root only: the key read at
        // start stays, and the admin is told how to change it.
        Err(sesame_keys::KeyFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::PermissionDenied
                && new.private_key_file == old.private_key_file =>
        {
            notes.push(format!(
                "private_key_file cannot be read as uid {} (permission denied): the key read at start stays in use; restart sesamed to use a new one",
                nix::unistd::geteuid()
            ));
            server_key
        }
        Err(e) => return refuse(format!("{}: private_key_file: {e}", path.display())),
    };
    let key_changed = server_key.public_key() != old_server_public(core);
    if key_changed {
        notes.push(
            "the server key changed: profiles exported before it carry the old public key; export every client's profile again (sesamed export-client NAME)".to_owned(),
        );
    }
    for c in &new.clients {
        if server_key.diffie_hellman(&c.public_key).is_err() {
            return refuse(format!(
                "{}: client '{}': the key is a low-order point",
                path.display(),
                c.name
            ));
        }
    }
    let changed = crate::config::profile_changes(&old, &new);
    if !changed.is_empty() {
        let names: Vec<&str> = new.clients.iter().map(|c| c.name.as_str()).collect();
        notes.push(format!(
            "{} changed: every client needs a new profile (sesamed export-client NAME): {}",
            changed.join(", "),
            if names.is_empty() {
                "no clients".to_owned()
            } else {
                names.join(", ")
            }
        ));
    }
    if new.state_dir != old.state_dir
        || new.interfaces != old.interfaces
        || new.control_socket != old.control_socket
        || new.user != old.user
        || new.metrics_listen != old.metrics_listen
    {
        notes.push(
            "changes to state_dir, interfaces, control_socket, user or metrics.listen take effect at the next restart".to_owned(),
        );
    }
    let secrets = Secrets {
        server_key: server_key.clone(),
        psks,
    };
    let entries = match client_entries(&new, &secrets) {
        Ok(e) => e,
        Err(e) => return refuse(e.to_string()),
    };
    // Actions: the runner reads the new configuration too and keeps it aside until the
    // commit below (it checks the accounts itself); without a runner (none was needed, or it
    // exited), one starts now if the new configuration has actions, with the privileges
    // sesamed has now. Before the firewall, so a refusal here changes nothing. Commands running
    // go on to their end (or timeout) under the settings they started with.
    let actions = Rc::clone(&core.borrow().actions);
    let mut runner_staged = false;
    let mut new_runner = None;
    let has_runner = actions.borrow().has_runner();
    if has_runner {
        if !crate::action::same_actions(&old, &new) {
            match Actions::reload_runner(&actions).await {
                Ok(fp) if fp == crate::action::fingerprint(&new) => runner_staged = true,
                Ok(_) => {
                    actions.borrow().finish_reload(false);
                    return refuse(
                        "the action runner read other actions than sesamed (the configuration changed during the reload); reload again".to_owned(),
                    );
                }
                Err(e) => return refuse(format!("action runner: {e}")),
            }
        }
    } else if !new.actions.is_empty() {
        match super::actions::spawn_runner(&new).await {
            Ok(spawned) => {
                new_runner = Some(spawned);
                notes.push(format!(
                    "the action runner started now, with the privileges sesamed has after setup: actions run as uid {} only (to run them as other accounts, restart sesamed)",
                    nix::unistd::geteuid()
                ));
            }
            Err(e) => {
                return refuse(format!(
                    "the action runner (none runs now) cannot start with the privileges sesamed has now (uid {}): {e}; no action runs until a reload starts one, or sesamed restarts",
                    nix::unistd::geteuid()
                ));
            }
        }
    }
    let abort = |staged: bool| {
        if staged {
            actions.borrow().finish_reload(false);
        }
    };
    // The firewall first: if its new setup fails, nothing changes.
    let firewall_changed = new.firewall != old.firewall
        || new.knock.params != old.knock.params
        || new.lease_prefixes() != old.lease_prefixes();
    let replacement = if firewall_changed {
        let mut fw = AnyFirewall::from_config(&new);
        if let Err(e) = fw.setup().await {
            abort(runner_staged);
            return refuse(format!(
                "firewall setup for the new configuration failed: {e}"
            ));
        }
        Some(fw)
    } else {
        None
    };
    let mut c = core.borrow_mut();
    // Replay state: what the running tracker holds (it may be ahead of the disk), else the
    // store, for every client kept or added.
    let current: HashMap<PublicKey, sesame_proto::ReplayState> = c
        .keys
        .iter()
        .copied()
        .zip(c.tracker.replay_states().iter().cloned())
        .collect();
    let keys: Vec<PublicKey> = new.clients.iter().map(|x| x.public_key).collect();
    let replay = keys
        .iter()
        .map(|k| current.get(k).cloned().unwrap_or_else(|| c.store.get(k)))
        .collect();
    let tracker = match Tracker::new(
        tracker_config(&new),
        server_key.clone(),
        entries,
        replay,
        system_now(),
    ) {
        Ok(mut t) => {
            // Datagrams the running tracker saw stay refused before any key work.
            t.inherit_seen(&c.tracker);
            t
        }
        Err(e) => {
            drop(c);
            abort(runner_staged);
            return refuse(format!("knock sequences: {e}"));
        }
    };
    let old_names = std::mem::take(&mut c.names);
    let names: Vec<String> = new.clients.iter().map(|x| x.name.clone()).collect();
    let added: Vec<String> = names
        .iter()
        .filter(|n| !old_names.contains(n))
        .cloned()
        .collect();
    let removed: Vec<String> = old_names
        .iter()
        .filter(|n| !names.contains(n))
        .cloned()
        .collect();
    // Keep the last-knock record of the clients that stay.
    let last: Vec<Option<LastKnock>> = names
        .iter()
        .map(|n| {
            old_names
                .iter()
                .position(|o| o == n)
                .and_then(|i| c.last.get(i).cloned().flatten())
        })
        .collect();
    if let Some(fw) = replacement {
        let policy = lease_policy(&new);
        let _ = c.grants.send(FwMsg::Replace(Box::new(fw), policy));
    }
    // Leases of keys that are gone (a client removed, or its key replaced) end now.
    let keep: std::collections::HashSet<PublicKey> = keys.iter().copied().collect();
    if c.keys.iter().any(|k| !keep.contains(k)) {
        let _ = c.grants.send(FwMsg::KeepOnly(keep));
    }
    c.tracker = tracker;
    c.server_key = server_key;
    if runner_staged {
        actions.borrow().finish_reload(true);
    }
    if let Some(spawned) = new_runner {
        Actions::attach(&actions, spawned);
    }
    actions.borrow_mut().set_config(&new);
    let range = (new.knock.params.port_lo, new.knock.params.port_hi);
    c.capture_range
        .send_if_modified(|r| std::mem::replace(r, range) != range);
    c.keys = keys;
    c.names = names;
    c.last = last;
    c.store.set_max_ahead(new.knock.max_ahead_ms);
    c.config = new;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let message = format!(
        "reloaded: {}{} (added: {}; removed: {}){}",
        crate::config::count(c.names.len(), "client", "clients"),
        if c.config.actions.is_empty() {
            String::new()
        } else {
            format!(
                ", {}",
                crate::config::count(c.config.actions.len(), "action", "actions")
            )
        },
        list(&added),
        list(&removed),
        notes
            .iter()
            .map(|n| format!("; note: {n}"))
            .collect::<String>()
    );
    tracing::info!("{message}");
    control::ReloadResult { ok: true, message }
}

/// The public key of the server key in use.
fn old_server_public(core: &Rc<RefCell<Core>>) -> PublicKey {
    core.borrow().server_key.public_key()
}
