//! One sesamed per state directory, per nftables table and per control socket.
//!
//! A second `sesamed run` used to start without complaint: it rebuilt the table, took over the
//! control socket (unlinking the first daemon's), and when it exited the first one kept
//! granting with no way to reach it. Now a start takes, before it touches anything:
//!
//! - an exclusive `flock` on `state_dir/sesamed.lock` (which holds the pid, for the message);
//! - for the nftables backend, an abstract Unix socket named after the table. Abstract
//!   sockets live in the network namespace, exactly where the table lives, and the kernel
//!   drops them when the process dies, so a crash never leaves a stale lock;
//! - the control socket only if no daemon answers on it ([`crate::control::bind`]).
//!
//! Each refusal is one line naming the pid that holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name inside `state_dir`.
pub const LOCK_NAME: &str = "sesamed.lock";

/// Why this instance may not run.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another sesamed holds the state directory.
    #[error(
        "another sesamed ({holder}) is running on state_dir {dir}; stop it first (two daemons on one state would each accept what the other did)",
        dir = .dir.display()
    )]
    StateBusy {
        /// The state directory.
        dir: PathBuf,
        /// `pid N` or what is known about the holder.
        holder: String,
    },
    /// Another sesamed owns the nftables table in this network namespace.
    #[error(
        "another sesamed ({holder}) owns the nftables table inet {table} in this network namespace; stop it, or give this one its own [firewall] table"
    )]
    TableBusy {
        /// The table's name.
        table: String,
        /// `pid N` or what is known about the holder.
        holder: String,
    },
    /// The lock could not be taken for another reason.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The locks of a running sesamed; they are released when it is dropped (or the process ends).
#[derive(Debug)]
pub struct InstanceLock {
    _state: nix::fcntl::Flock<File>,
    _table: Option<std::os::unix::net::UnixListener>,
}

/// `pid N` of the peer of a connected Unix socket.
pub fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<i32> {
    nix::sys::socket::getsockopt(&stream.as_fd(), nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

fn holder(pid: Option<i32>) -> String {
    match pid {
        Some(p) if p > 0 => format!("pid {p}"),
        _ => "pid unknown".to_owned(),
    }
}

impl InstanceLock {
    /// Takes the locks for `state_dir` and, when `table` is set, for the nftables table.
    pub fn acquire(state_dir: &Path, table: Option<&str>) -> Result<Self, InstanceError> {
        let io = |what: String| move |source| InstanceError::Io { what, source };
        if !state_dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(io(format!("state_dir {}", state_dir.display())))?;
        }
        let path = state_dir.join(LOCK_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io(path.display().to_string()))?;
        if !file
            .metadata()
            .map_err(io(path.display().to_string()))?
            .is_file()
        {
            return Err(InstanceError::Io {
                what: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"),
            });
        }
        let mut state =
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(InstanceError::StateBusy {
                        dir: state_dir.to_path_buf(),
                        holder: holder(text.trim().parse().ok()),
                    });
                }
                Err((_, errno)) => {
                    return Err(InstanceError::Io {
                        what: format!("locking {}", path.display()),
                        source: errno.into(),
                    });
                }
            };
        // Ours now: say who holds it.
        let pid = std::process::id();
        state
            .set_len(0)
            .and_then(|()| state.rewind())
            .and_then(|()| state.write_all(format!("{pid}\n").as_bytes()))
            .map_err(io(path.display().to_string()))?;
        let table = match table {
            Some(t) => Some(lock_table(t)?),
            None => None,
        };
        Ok(InstanceLock {
            _state: state,
            _table: table,
        })
    }
}

/// Binds the abstract socket `sesamed/nft/inet/TABLE` of this network namespace.
fn lock_table(table: &str) -> Result<std::os::unix::net::UnixListener, InstanceError> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
    let name = format!("sesamed/nft/inet/{table}");
    let addr =
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(|source| InstanceError::Io {
            what: format!("the lock of table inet {table}"),
            source,
        })?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let pid = UnixStream::connect_addr(&addr)
                .ok()
                .and_then(|s| peer_pid(&s));
            Err(InstanceError::TableBusy {
                table: table.to_owned(),
                holder: holder(pid),
            })
        }
        Err(source) => Err(InstanceError::Io {
            what: format!("the lock of table inet {table}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_state_dir_is_refused_with_the_pid() {
        let dir = std::env::temp_dir().join(format!("sesame-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = InstanceLock::acquire(&dir, None).unwrap();
        let second = InstanceLock::acquire(&dir, None).unwrap_err();
        let msg = second.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        InstanceLock::acquire(&dir, None).expect("free again once dropped");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_lock_on_one_table_is_refused_with_the_pid() {
        let table = format!("locktest{}", std::process::id());
        let a = lock_table(&table).unwrap();
        let msg = lock_table(&table).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains(&table),
            "{msg}"
        );
        drop(a);
        lock_table(&table).expect("free again once dropped");
    }
}
