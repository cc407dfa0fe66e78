//! Key files on unix (the default feature `files`): created with mode 0600 in one step, read
//! only when group and others cannot access them, opened without blocking and, for the daemon,
//! without following a symbolic link.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::{KeyError, PresharedKey, PrivateKey, PublicKey};

/// Largest key file we read; a key file is one line.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened, read or created.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is readable or writable by group or others.
    #[error(
        "{path}: permissions {mode:04o} are too open; a secret key file must not be accessible by group or others (fix: chmod 600 {path})",
        path = .path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a regular file, or it is too large to be a key file.
    #[error("{path}: not a key file ({why})", path = .path.display())]
    NotAKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// The file's content is not a key.
    #[error("{path}: {source}", path = .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why the content was refused.
        source: KeyError,
    },
}

impl KeyFileError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl KeyFileError {
    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            KeyFileError::Io { path, .. }
            | KeyFileError::TooOpen { path, .. }
            | KeyFileError::NotAKeyFile { path, .. }
            | KeyFileError::Parse { path, .. } => path,
        }
    }
}

/// Permission bits that must be clear on a secret key file (group and other access).
pub const SECRET_FILE_FORBIDDEN_MODE: u32 = 0o077;

/// Whether reading a secret follows a symbolic link at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    /// Follow it (the client: key files under a dotfiles manager may be links).
    Follow,
    /// Refuse it (the daemon, which reads as root).
    Refuse,
}

/// Reads a secret file after checking it is a small regular file that group and others cannot
/// access. The content is returned in a buffer that is zeroized on drop. The file is opened
/// without blocking (a FIFO or a device at the path is refused, never waited on) and checked
/// with `fstat` on the open file, so what is read is what was checked.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    read_secret_file_with(path, Links::Follow)
}

/// [`read_secret_file`], choosing whether a symbolic link is followed.
pub fn read_secret_file_with(path: &Path, links: Links) -> Result<Zeroizing<String>, KeyFileError> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                KeyFileError::NotAKeyFile {
                    path: path.to_path_buf(),
                    why: "a symbolic link (sesamed reads secrets only from the file itself)",
                }
            } else {
                KeyFileError::io(path, e)
            }
        })?;
    let meta = file.metadata().map_err(|e| KeyFileError::io(path, e))?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_path_buf(),
            why: "not a regular file",
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode_is_too_open(mode) {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::NotAKeyFile {
            path: path.to_path_buf(),
            why: "larger than 4096 bytes",
        });
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(64));
    Read::by_ref(&mut file)
        .take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut raw)
        .map_err(|e| KeyFileError::io(path, e))?;
    let text = std::str::from_utf8(&raw).map_err(|_| KeyFileError::NotAKeyFile {
        path: path.to_path_buf(),
        why: "not UTF-8 text",
    })?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Reads a private key file (refusing files accessible by group or others).
pub fn read_private_key_file(path: &Path) -> Result<PrivateKey, KeyFileError> {
    read_private_key_file_with(path, Links::Follow)
}

/// [`read_private_key_file`], choosing whether a symbolic link is followed.
pub fn read_private_key_file_with(path: &Path, links: Links) -> Result<PrivateKey, KeyFileError> {
    let text = read_secret_file_with(path, links)?;
    PrivateKey::from_base64(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a pre-shared key file (refusing files accessible by group or others).
pub fn read_psk_file(path: &Path) -> Result<PresharedKey, KeyFileError> {
    read_psk_file_with(path, Links::Follow)
}

/// [`read_psk_file`], choosing whether a symbolic link is followed.
pub fn read_psk_file_with(path: &Path, links: Links) -> Result<PresharedKey, KeyFileError> {
    let text = read_secret_file_with(path, links)?;
    PresharedKey::from_base64(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a public key file (any permissions).
pub fn read_public_key_file(path: &Path) -> Result<PublicKey, KeyFileError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE_LEN).read_to_string(&mut text))
        .map_err(|e| KeyFileError::io(path, e))?;
    PublicKey::from_base64(&text).map_err(|source| KeyFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a new file with mode 0600 in one step (never replacing an existing file) and
/// writes `text` followed by a newline.
pub fn write_secret_file(path: &Path, text: &str) -> Result<(), KeyFileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeyFileError::io(path, e))?;
    // The umask can only remove bits, but a pre-set ACL default could add some: make sure.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| KeyFileError::io(path, e))?;
    let mut line = Zeroizing::new(String::with_capacity(text.len() + 1));
    line.push_str(text);
    line.push('\n');
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyFileError::io(path, e))
}

/// Writes a private key to a new 0600 file.
pub fn write_private_key_file(path: &Path, key: &PrivateKey) -> Result<(), KeyFileError> {
    write_secret_file(path, &key.to_base64())
}

/// True when `mode` lets group or others access a file holding a secret.
pub fn mode_is_too_open(mode: u32) -> bool {
    mode & SECRET_FILE_FORBIDDEN_MODE != 0
}

#[cfg(test)]
mod tests;
