//! Persistent replay state: the last accepted payload timestamp and sequence counter of every
//! client, keyed by public key, written atomically (temporary file, fsync, rename, fsync of the
//! directory) before any grant.
//!
//! ```text
//! sesame-replay 1
//! <client public key> <last timestamp ms or -> <last counter or ->
//! ...
//! sha256 <hex digest of every preceding byte>
//! ```
//!
//! A file that is truncated or altered fails its checksum and is refused with a clear error:
//! starting with empty state would make old knocks valid again.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sesame_keys::PublicKey;
use sesame_proto::{ReplayState, UnixMillis};

const HEADER: &str = "sesame-replay 1";
/// The state file's name inside `state_dir`.
pub const FILE_NAME: &str = "replay.state";

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory or file could not be created, read or written.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists but is not a complete, intact state file.
    #[error("{path}: corrupt replay state ({why}); refusing to start with empty state, which would make old knocks valid again. Inspect the file; delete it only if you accept that risk", path = .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The replay state of every client ever seen (removed clients are kept, so re-adding one
/// does not make its old knocks valid again).
#[derive(Debug)]
pub struct ReplayStore {
    dir: PathBuf,
    entries: BTreeMap<PublicKey, ReplayState>,
}

impl ReplayStore {
    /// Opens (creating the directory with mode 0700 if needed) and loads the state.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StateError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let path = dir.join(FILE_NAME);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes).map_err(|why| StateError::Corrupt {
                path: path.clone(),
                why,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        Ok(ReplayStore {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// The state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The stored state of `key` (empty if unknown).
    pub fn get(&self, key: &PublicKey) -> ReplayState {
        self.entries.get(key).copied().unwrap_or_default()
    }

    /// Records the current state of these clients and writes the file atomically. On error the
    /// caller must not grant anything.
    pub fn save<'a>(
        &mut self,
        states: impl IntoIterator<Item = (&'a PublicKey, ReplayState)>,
    ) -> Result<(), StateError> {
        for (key, state) in states {
            if state != ReplayState::default() {
                self.entries.insert(*key, state);
            }
        }
        let text = render(&self.entries);
        let path = self.path();
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StateError::Io { path: p, source }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}

fn field(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn render(entries: &BTreeMap<PublicKey, ReplayState>) -> String {
    let mut body = format!("{HEADER}\n");
    for (key, s) in entries {
        body.push_str(&format!(
            "{key} {} {}\n",
            field(s.last_timestamp.map(|t| t.0)),
            field(s.last_counter)
        ));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    body.push_str(&format!("sha256 {}\n", hex(digest.as_ref())));
    body
}

fn parse(bytes: &[u8]) -> Result<BTreeMap<PublicKey, ReplayState>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let Some(body_end) = text.rfind("sha256 ") else {
        return Err("no checksum line (truncated?)".into());
    };
    let (body, trailer) = text.split_at(body_end);
    let want = trailer
        .strip_prefix("sha256 ")
        .and_then(|t| t.strip_suffix('\n'))
        .ok_or("checksum line is incomplete (truncated?)")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    if hex(digest.as_ref()) != want {
        return Err("checksum mismatch (truncated or altered)".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("first line is not '{HEADER}'"));
    }
    let mut out = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let bad = || format!("line {}: expected '<key> <timestamp|-> <counter|->'", i + 2);
        let mut parts = line.split(' ');
        let (Some(key), Some(ts), Some(counter), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let key = PublicKey::from_base64(key).map_err(|_| bad())?;
        let num = |s: &str| -> Result<Option<u64>, String> {
            if s == "-" {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| bad())
            }
        };
        out.insert(
            key,
            ReplayState {
                last_timestamp: num(ts)?.map(UnixMillis),
                last_counter: num(counter)?,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let mut r = [0u8; 6];
        sesame_keys::fill_random(&mut r);
        std::env::temp_dir().join(format!("sesame-state-{tag}-{}", hex(&r)))
    }

    #[test]
    fn round_trip_and_merge() {
        let dir = tmpdir("rt");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let b = sesame_keys::PrivateKey::generate().public_key();
        let mut store = ReplayStore::open(&dir).unwrap();
        let sa = ReplayState {
            last_timestamp: Some(UnixMillis(1234)),
            last_counter: None,
        };
        store.save([(&a, sa)]).unwrap();
        let sb = ReplayState {
            last_timestamp: None,
            last_counter: Some(99),
        };
        store.save([(&b, sb)]).unwrap();
        let again = ReplayStore::open(&dir).unwrap();
        assert_eq!(again.get(&a), sa, "entries not saved again are kept");
        assert_eq!(again.get(&b), sb);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_or_altered_files_are_refused() {
        let dir = tmpdir("trunc");
        let a = sesame_keys::PrivateKey::generate().public_key();
        let mut store = ReplayStore::open(&dir).unwrap();
        let s = ReplayState {
            last_timestamp: Some(UnixMillis(1_764_000_000_000)),
            last_counter: Some(58_800_000),
        };
        store.save([(&a, s)]).unwrap();
        let full = std::fs::read(store.path()).unwrap();
        for cut in [0, 5, full.len() / 2, full.len() - 1] {
            std::fs::write(store.path(), &full[..cut]).unwrap();
            let err = ReplayStore::open(&dir).unwrap_err().to_string();
            assert!(err.contains("corrupt replay state"), "{cut}: {err}");
            assert!(!err.contains('\n'));
        }
        let mut altered = full.clone();
        let i = altered.iter().position(|&b| b == b'1').unwrap();
        altered[i] = b'2';
        std::fs::write(store.path(), &altered).unwrap();
        assert!(ReplayStore::open(&dir).is_err());
        std::fs::write(store.path(), &full).unwrap();
        assert_eq!(ReplayStore::open(&dir).unwrap().get(&a), s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let dir = tmpdir("ro");
        let mut store = ReplayStore::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let a = sesame_keys::PrivateKey::generate().public_key();
        let s = ReplayState {
            last_timestamp: Some(UnixMillis(1)),
            last_counter: None,
        };
        assert!(store.save([(&a, s)]).is_err());
    }
}
