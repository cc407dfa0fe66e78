//! `sesamed reload` and SIGHUP: a new configuration without a restart.
//!
//! Everything that grows with the clients runs off the packet thread: reading and checking
//! the file, the key work (an X25519 per client), matching the clients to the running ones,
//! the new tracker and its step tables ([`prepare`], then `Tracker::new` on a blocking
//! thread). The packet thread copies the replay states, and swaps in the finished tracker.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

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

/// What [`prepare`] makes of the new configuration, off the packet thread.
struct Prepared {
    new: Config,
    server_key: sesame_keys::PrivateKey,
    entries: Vec<super::ClientEntry>,
    notes: Vec<String>,
    /// For each new client, its index among the running ones with the same public key (its
    /// replay state carries over).
    by_key: Vec<Option<usize>>,
    /// For each new client, the index of the running one of the same name (its last knock
    /// carries over).
    by_name: Vec<Option<usize>>,
    names: Vec<String>,
    added: Vec<String>,
    removed: Vec<String>,
    /// The public keys of the new configuration, and whether a running one is not among them
    /// (its leases end).
    keep: HashSet<PublicKey>,
    keys_gone: bool,
}

/// Reads and checks the new configuration against `old` (the running one), reads the keys,
/// and does the key work; an error is the reason to refuse the reload.
fn prepare(old: &Config, server_key: sesame_keys::PrivateKey) -> Result<Prepared, String> {
    let path = &old.path;
    let new = Config::load(path).map_err(|e| e.to_string())?;
    let mut psks = Vec::with_capacity(new.clients.len());
    for c in &new.clients {
        match &c.psk_file {
            Some(p) => match sesame_keys::read_psk_file_with(p, sesame_keys::Links::Refuse) {
                Ok(k) => psks.push(Some(k)),
                Err(e) => {
                    return Err(format!("{}: client '{}': {e}", path.display(), c.name));
                }
            },
            None => psks.push(None),
        }
    }
    let mut notes: Vec<String> = Vec::new();
    // The server key is read again, with the checks `sesamed check` makes (owner-only mode,
    // no link, a valid key): a rotated key takes effect now, a bad one refuses the reload.
    let old_public = server_key.public_key();
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
        Err(e) => return Err(format!("{}: private_key_file: {e}", path.display())),
    };
    if server_key.public_key() != old_public {
        notes.push(
            "the server key changed: profiles exported before it carry the old public key; export every client's profile again (sesamed export-client NAME)".to_owned(),
        );
    }
    let secrets = Secrets {
        server_key: server_key.clone(),
        psks,
    };
    // The key work of every client (spread over the cores); a low-order key fails it.
    let entries = client_entries(&new, &secrets).map_err(|e| match e {
        super::StartError::Keys(name) => format!(
            "{}: client '{name}': the key is a low-order point",
            path.display()
        ),
        e => e.to_string(),
    })?;
    let changed = crate::config::profile_changes(old, &new);
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
    // The running clients are those of `old`, in its order (the core's keys and names).
    let old_by_key: HashMap<PublicKey, usize> = old
        .clients
        .iter()
        .enumerate()
        .map(|(i, c)| (c.public_key, i))
        .collect();
    let old_by_name: HashMap<&str, usize> = old
        .clients
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let by_key = new
        .clients
        .iter()
        .map(|c| old_by_key.get(&c.public_key).copied())
        .collect();
    let by_name: Vec<Option<usize>> = new
        .clients
        .iter()
        .map(|c| old_by_name.get(c.name.as_str()).copied())
        .collect();
    let names: Vec<String> = new.clients.iter().map(|x| x.name.clone()).collect();
    let new_names: HashSet<&str> = names.iter().map(String::as_str).collect();
    let added = names
        .iter()
        .zip(&by_name)
        .filter(|(_, old)| old.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let removed = old
        .clients
        .iter()
        .filter(|c| !new_names.contains(c.name.as_str()))
        .map(|c| c.name.clone())
        .collect();
    let keep: HashSet<PublicKey> = new.clients.iter().map(|x| x.public_key).collect();
    let keys_gone = old.clients.iter().any(|c| !keep.contains(&c.public_key));
    Ok(Prepared {
        new,
        server_key,
        entries,
        notes,
        by_key,
        by_name,
        names,
        added,
        removed,
        keep,
        keys_gone,
    })
}

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
    let (old, server_key) = {
        let c = core.borrow();
        (Arc::clone(&c.config), c.server_key.clone())
    };
    let prepared = {
        let old = Arc::clone(&old);
        tokio::task::spawn_blocking(move || prepare(&old, server_key)).await
    };
    let Prepared {
        new,
        server_key,
        entries,
        notes,
        by_key,
        by_name,
        names,
        added,
        removed,
        keep,
        keys_gone,
    } = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(message)) => return refuse(message),
        Err(e) => return refuse(format!("reload: {e}")),
    };
    let mut notes = notes;
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
    // Replay state: what the running tracker holds (it may be ahead of the disk), else the
    // store, for every client kept or added. Copied here; the tracker is built from the copy
    // on a blocking thread, and the clients granted meanwhile are noted to be brought over.
    let replay: Vec<_> = {
        let mut c = core.borrow_mut();
        c.granted_during_reload = Some(Vec::new());
        let states = c.tracker.replay_states();
        new.clients
            .iter()
            .zip(&by_key)
            .map(|(client, old)| match old.and_then(|i| states.get(i)) {
                Some(state) => state.clone(),
                None => c.store.get(&client.public_key),
            })
            .collect()
    };
    let built = {
        let config = tracker_config(&new);
        let server_key = server_key.clone();
        tokio::task::spawn_blocking(move || {
            Tracker::new(config, server_key, entries, replay, system_now())
        })
        .await
    };
    let mut c = core.borrow_mut();
    let granted = c.granted_during_reload.take().unwrap_or_default();
    let mut tracker = match built {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            drop(c);
            abort(runner_staged);
            return refuse(format!("knock sequences: {e}"));
        }
        Err(e) => {
            drop(c);
            abort(runner_staged);
            return refuse(format!("reload: {e}"));
        }
    };
    // The knocks the running tracker accepted while the new one was built: their newer
    // replay state (a replay of them must stay refused).
    let now = system_now();
    for i in granted {
        let i = i as usize;
        if let (Some(key), Some(state)) = (c.keys.get(i), c.tracker.replay_states().get(i)) {
            tracker.update_replay(key, state.clone(), now);
        }
    }
    // A crash from now on must refuse what the new window lets through the gate: a wider one
    // goes into the crash marker before the new tracker sees a packet, or the reload is refused.
    if let Err(e) = c.store.note_window(tracker.config().saved_window()) {
        drop(c);
        abort(runner_staged);
        return refuse(format!(
            "the new window cannot be recorded in the crash marker: {e}"
        ));
    }
    // Datagrams the running tracker saw stay refused before any key work.
    tracker.inherit_seen(&c.tracker);
    // Keep the last-knock record of the clients that stay.
    let last: Vec<Option<LastKnock>> = by_name
        .iter()
        .map(|old| old.and_then(|i| c.last.get(i).cloned().flatten()))
        .collect();
    if let Some(fw) = replacement {
        let policy = lease_policy(&new);
        let _ = c.grants.send(FwMsg::Replace(Box::new(fw), policy));
    }
    // Leases of keys that are gone (a client removed, or its key replaced) end now.
    if keys_gone {
        let _ = c.grants.send(FwMsg::KeepOnly(keep));
    }
    let old_tracker = std::mem::replace(&mut c.tracker, tracker);
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
    c.keys = new.clients.iter().map(|x| x.public_key).collect();
    c.names = Arc::new(names);
    c.last = last;
    c.store.set_max_ahead(new.knock.max_ahead_ms);
    let old_config = std::mem::replace(&mut c.config, Arc::new(new));
    // The old tracker and configuration are freed off the packet thread (large at 1 000 000
    // clients), and the memory of them and of the reload's parse goes back to the kernel.
    drop(c);
    tokio::task::spawn_blocking(move || {
        drop((old_tracker, old_config, old));
        crate::memory::release_freed();
    });
    let c = core.borrow();
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
