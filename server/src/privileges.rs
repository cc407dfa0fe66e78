//! Least privilege: after setup sesamed keeps only CAP_NET_RAW (packet capture, reopening a
//! socket when an interface comes back) and CAP_NET_ADMIN (nftables changes), and with
//! `user = "name"` it also stops being root.
//!
//! The capability sets after [`drop_privileges`]: effective = permitted = inheritable =
//! ambient = {CAP_NET_RAW, CAP_NET_ADMIN}, and the bounding set too when sesamed may shrink it
//! (CAP_SETPCAP, as root). CAP_BPF, which the shipped unit grants for loading the eBPF capture
//! filter at start, is dropped here with everything else. Ambient capabilities carry over to
//! the `nft` program and to hook commands; `no_new_privs` is set so no exec can gain more.

use std::collections::HashSet;
use std::path::Path;

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Uid, User};

/// The capabilities sesamed keeps.
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_RAW, Capability::CAP_NET_ADMIN];

/// Set once [`drop_privileges`] succeeded.
static DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process's privileges are dropped. Until then no thread may be started (a
/// tokio blocking thread included): capabilities belong to each thread, and
/// [`drop_privileges`] changes only the thread that calls it.
pub fn dropped() -> bool {
    DROPPED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The number of threads of this process (`/proc/self/task`).
fn threads() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Why privileges could not be dropped (sesamed refuses to run rather than keep them).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The configured user does not exist.
    #[error("user '{0}' does not exist")]
    NoSuchUser(String),
    /// Looking the user up failed.
    #[error("cannot look up user '{name}': {source}")]
    Lookup {
        /// The user.
        name: String,
        /// The underlying error.
        source: nix::Error,
    },
    /// Switching to `user` needs root (CAP_SETUID and CAP_SETGID).
    #[error("user = \"{0}\" needs sesamed to start as root")]
    NotRoot(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A capability sesamed needs is missing.
    #[error("missing capability {0} (sesamed needs CAP_NET_RAW and CAP_NET_ADMIN)")]
    Missing(Capability),
    /// Other threads run already: they would keep every privilege (capabilities are per
    /// thread), so sesamed refuses to run.
    #[error(
        "{0} threads run before the privileges are dropped; they would keep every capability (a bug in sesamed: please report it)"
    )]
    Threads(usize),
    /// The state directory holds an entry sesamed did not create (or one that is not a plain
    /// file): handing it to the service account could hand over whatever it points at.
    #[error(
        "state_dir {dir}: '{entry}' {why}; sesamed hands only its own files to the service account: remove it",
        dir = .dir.display()
    )]
    UnexpectedEntry {
        /// The state directory.
        dir: std::path::PathBuf,
        /// The entry's name.
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

fn sys(what: &'static str) -> impl Fn(caps::errors::CapsError) -> PrivilegeError {
    move |e| PrivilegeError::Sys {
        what,
        source: std::io::Error::other(e.to_string()),
    }
}

fn nix_err(what: &'static str) -> impl Fn(nix::Error) -> PrivilegeError {
    move |e| PrivilegeError::Sys {
        what,
        source: std::io::Error::from(e),
    }
}

/// Checks that the process has `needed` capabilities (effective), naming the first missing
/// one.
pub fn check_capabilities(needed: &[Capability]) -> Result<(), PrivilegeError> {
    for &cap in needed {
        if !caps::has_cap(None, CapSet::Effective, cap).map_err(sys("reading capabilities"))? {
            return Err(PrivilegeError::Missing(cap));
        }
    }
    Ok(())
}

/// What the process runs as after [`drop_privileges`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

/// Hands `state_dir` and the files sesamed keeps in it to `uid`/`gid`, so the replay state can
/// still be written after the switch. The service account can write that directory, so what
/// is in it is not trusted: every entry must be one of sesamed's own files and a plain file
/// (never a symbolic link, which a chown as root would follow to whatever it names, say
/// /etc/shadow), and is changed with `fchownat(AT_SYMLINK_NOFOLLOW)`. Anything else stops the
/// start, named.
fn hand_over(state_dir: &Path, uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::Mode;
    let dir = nix::fcntl::open(
        state_dir,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nix_err("opening the state directory"))?;
    nix::unistd::fchown(&dir, Some(uid), Some(gid))
        .map_err(nix_err("chown of the state directory"))?;
    let entries = std::fs::read_dir(state_dir).map_err(|source| PrivilegeError::Sys {
        what: "reading the state directory",
        source,
    })?;
    let unexpected = |entry: &str, why| PrivilegeError::UnexpectedEntry {
        dir: state_dir.to_path_buf(),
        entry: entry.to_owned(),
        why,
    };
    for entry in entries {
        let entry = entry.map_err(|source| PrivilegeError::Sys {
            what: "reading the state directory",
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !crate::state::OWN_FILES.contains(&name.as_str()) {
            return Err(unexpected(&name, "is not a file sesamed keeps there"));
        }
        // The entry's own type, not what a link points at.
        let kind = entry.file_type().map_err(|source| PrivilegeError::Sys {
            what: "reading the state directory",
            source,
        })?;
        if !kind.is_file() {
            return Err(unexpected(&name, "is not a plain file (a symbolic link?)"));
        }
        nix::unistd::fchownat(
            &dir,
            name.as_str(),
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(nix_err("chown of a state file"))?;
    }
    Ok(())
}

/// Drops everything but CAP_NET_RAW and CAP_NET_ADMIN, and switches to `user` if given.
/// Called once all privileged setup is done (firewall table, packet sockets, control socket).
pub fn drop_privileges(user: Option<&str>, state_dir: &Path) -> Result<Dropped, PrivilegeError> {
    // Fail closed: a thread started before now would keep what this drops.
    match threads().map_err(|source| PrivilegeError::Sys {
        what: "counting threads (/proc/self/task)",
        source,
    })? {
        1 => {}
        n => return Err(PrivilegeError::Threads(n)),
    }
    // Keep what sesamed may need and has; never gain anything.
    let permitted = caps::read(None, CapSet::Permitted).map_err(sys("reading capabilities"))?;
    let keep: HashSet<Capability> = KEPT.into_iter().filter(|c| permitted.contains(c)).collect();
    // The bounding set first, while we may still have CAP_SETPCAP (as root); a process that
    // started with a reduced bounding set (setpriv, systemd) cannot and need not do this.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(sys("dropping the bounding set"))?;
            }
        }
    }
    if let Some(name) = user {
        let account = User::from_name(name)
            .map_err(|source| PrivilegeError::Lookup {
                name: name.to_owned(),
                source,
            })?
            .ok_or_else(|| PrivilegeError::NoSuchUser(name.to_owned()))?;
        if !Uid::effective().is_root() {
            return Err(PrivilegeError::NotRoot(name.to_owned()));
        }
        hand_over(state_dir, account.uid, account.gid)?;
        // Keep the permitted set across the uid change, then switch.
        caps::securebits::set_keepcaps(true).map_err(sys("PR_SET_KEEPCAPS"))?;
        nix::unistd::setgroups(&[]).map_err(nix_err("setgroups"))?;
        nix::unistd::setresgid(account.gid, account.gid, account.gid)
            .map_err(nix_err("setresgid"))?;
        nix::unistd::setresuid(account.uid, account.uid, account.uid)
            .map_err(nix_err("setresuid"))?;
        caps::securebits::set_keepcaps(false).map_err(sys("PR_SET_KEEPCAPS"))?;
    }
    caps::set(None, CapSet::Effective, &keep).map_err(sys("setting effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(sys("setting permitted capabilities"))?;
    caps::set(None, CapSet::Inheritable, &keep).map_err(sys("setting inheritable capabilities"))?;
    for &cap in &keep {
        caps::raise(None, CapSet::Ambient, cap).map_err(sys("raising ambient capabilities"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(nix_err("PR_SET_NO_NEW_PRIVS"))?;
    DROPPED.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(Dropped {
        uid: Uid::effective().as_raw(),
        gid: Gid::effective().as_raw(),
    })
}

/// The capabilities the action runner keeps when an action runs as another account than its
/// own: switching to it (CAP_SETUID, CAP_SETGID) and signalling its process group at the
/// timeout (CAP_KILL: a process may signal another account's processes only with it).
pub const RUNNER_KEPT: [Capability; 3] = [
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_KILL,
];

/// The action runner's privileges, set once before it serves a single request: with
/// `switch_users`, exactly [`RUNNER_KEPT`] (those it has), otherwise no capability at all, in
/// every set (ambient, inheritable, effective, permitted, and the bounding set when it may
/// shrink it); no supplementary groups when it keeps CAP_SETGID (the commands start without
/// them); `no_new_privs`. Its uid stays what it was started as. Returns what it kept.
pub fn drop_for_runner(switch_users: bool) -> Result<Vec<Capability>, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(sys("reading capabilities"))?;
    let keep: HashSet<Capability> = if switch_users {
        RUNNER_KEPT
            .into_iter()
            .filter(|c| permitted.contains(c))
            .collect()
    } else {
        HashSet::new()
    };
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(sys("dropping the bounding set"))?;
            }
        }
    }
    if keep.contains(&Capability::CAP_SETGID) {
        nix::unistd::setgroups(&[]).map_err(nix_err("setgroups"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(sys("clearing ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(sys("clearing inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(sys("setting effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(sys("setting permitted capabilities"))?;
    nix::sys::prctl::set_no_new_privs().map_err(nix_err("PR_SET_NO_NEW_PRIVS"))?;
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}
