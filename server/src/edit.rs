//! `sesamed client add` / `client remove`: edit `sesamed.toml` in place, keeping its comments
//! and formatting (toml_edit), validate the result, and replace the file atomically.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, value};

use crate::config::Config;

/// A new `[[client]]`.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// Its name.
    pub name: String,
    /// Its public key (base64).
    pub public_key: String,
    /// Services it may open (empty: every protected service).
    pub allow: Vec<String>,
    /// Source prefixes (empty: any).
    pub source: Vec<String>,
    /// Its PSK file, if any.
    pub psk_file: Option<String>,
    /// Whether it may open another address.
    pub allow_other_ip: bool,
    /// When it expires (RFC 3339).
    pub expires: Option<String>,
}

fn strings(items: &[String]) -> Array {
    items.iter().map(String::as_str).collect()
}

fn parse(path: &Path) -> Result<(String, DocumentMut), String> {
    let text =
        crate::config::read_config_text(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc = text.parse::<DocumentMut>().map_err(|e| {
        format!(
            "{}: {}",
            path.display(),
            e.to_string().lines().next().unwrap_or("")
        )
    })?;
    Ok((text, doc))
}

/// The text of a decor part (comments and blank lines), or "".
fn raw(r: Option<&toml_edit::RawString>) -> String {
    r.and_then(|r| r.as_str()).unwrap_or("").to_owned()
}

/// An edited configuration, validated but not yet written.
#[derive(Debug)]
pub struct Edit {
    /// The new file content.
    pub text: String,
    /// It, parsed.
    pub config: Config,
}

/// Validates `text` as the new configuration of `path`.
fn validate(path: &Path, text: String) -> Result<Edit, String> {
    let config = Config::parse(&text, path).map_err(|e| {
        format!(
            "{}: the edited configuration would be invalid: {e}",
            path.display()
        )
    })?;
    Ok(Edit { text, config })
}

/// Writes an edit over `path` atomically, keeping the file's owner and mode.
pub fn commit(path: &Path, edit: Edit) -> Result<Config, String> {
    let text = edit.text.as_str();
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.sesamed-edit",
        path.file_name()
            .map_or_else(|| "config".into(), |n| n.to_string_lossy())
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(meta.mode() & 0o7777)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: cannot write: {e}", path.display()));
    }
    Ok(edit.config)
}

/// Appends a `[[client]]` table (validated, not written); refuses a name or key already
/// present. Comments at the end of the file belong to the last client and stay above the new
/// one.
pub fn add_client(path: &Path, c: &NewClient) -> Result<Edit, String> {
    let (_, mut doc) = parse(path)?;
    let mut t = Table::new();
    t["name"] = value(c.name.as_str());
    t["public_key"] = value(c.public_key.as_str());
    if let Some(p) = &c.psk_file {
        t["psk_file"] = value(p.as_str());
    }
    if !c.allow.is_empty() {
        t["allow"] = value(strings(&c.allow));
    }
    if !c.source.is_empty() {
        t["source"] = value(strings(&c.source));
    }
    if c.allow_other_ip {
        t["allow_other_ip"] = value(true);
    }
    if let Some(e) = &c.expires {
        t["expires"] = value(e.as_str());
    }
    let trailing = raw(Some(doc.trailing()));
    t.decor_mut().set_prefix(format!("{trailing}\n"));
    doc.set_trailing("");
    match doc.get_mut("client") {
        None => {
            let mut a = ArrayOfTables::new();
            a.push(t);
            doc.insert("client", Item::ArrayOfTables(a));
        }
        Some(Item::ArrayOfTables(a)) => {
            if a.iter()
                .any(|x| x.get("name").and_then(Item::as_str) == Some(&c.name))
            {
                return Err(format!(
                    "{}: a client named '{}' already exists",
                    path.display(),
                    c.name
                ));
            }
            a.push(t);
        }
        Some(_) => {
            return Err(format!(
                "{}: 'client' is not a list of [[client]] tables",
                path.display()
            ));
        }
    }
    validate(path, doc.to_string())
}

/// Removes the `[[client]]` named `name` (validated, not written). The comments above it are
/// kept (they usually describe the section, not the client).
pub fn remove_client(path: &Path, name: &str) -> Result<Edit, String> {
    let (_, mut doc) = parse(path)?;
    let Some(Item::ArrayOfTables(a)) = doc.get_mut("client") else {
        return Err(format!("{}: no client named '{name}'", path.display()));
    };
    let Some(i) = a
        .iter()
        .position(|x| x.get("name").and_then(Item::as_str) == Some(name))
    else {
        return Err(format!("{}: no client named '{name}'", path.display()));
    };
    let removed = a.remove(i);
    let mut prefix = raw(removed.decor().prefix());
    let was_last = i >= a.len();
    if let Some(next) = a.get_mut(i) {
        let rest = raw(next.decor().prefix());
        next.decor_mut().set_prefix(prefix.clone() + &rest);
    }
    let now_empty = a.is_empty();
    if was_last {
        // The last table: its comments go back to the end of the file (without the blank line
        // `add_client` put before it).
        if prefix.ends_with("\n\n") || prefix == "\n" {
            prefix.pop();
        }
        let trailing = raw(Some(doc.trailing()));
        doc.set_trailing(prefix + &trailing);
    }
    if now_empty {
        doc.remove("client");
    }
    validate(path, doc.to_string())
}

/// The sesamed that answers on a configuration's control socket, if any.
#[derive(Debug)]
pub enum Running {
    /// Nobody answers (not running, or not reachable by this user).
    Unreachable(String),
    /// A sesamed that runs another configuration file: not to be reloaded for this one.
    Other(crate::control::Status),
    /// The sesamed of this file.
    This(crate::control::Status),
}

/// Asks the control socket of `config` who answers.
pub fn running(config: &Config) -> Running {
    let answer = match crate::control::request(&config.control_socket, "status") {
        Ok(a) => a,
        Err(e) => return Running::Unreachable(e.to_string()),
    };
    match serde_json::from_str::<crate::control::Status>(answer.trim()) {
        Ok(s) => {
            let same =
                std::fs::canonicalize(&s.config).ok() == std::fs::canonicalize(&config.path).ok();
            if same {
                Running::This(s)
            } else {
                Running::Other(s)
            }
        }
        Err(e) => Running::Unreachable(format!("unexpected answer from sesamed: {e}")),
    }
}

/// Whether a process with `uid`/`gid` and no capabilities (sesamed keeps none that bypass file
/// permissions) can read the file at `path`, judged from its owner and mode. `Err` says why not.
pub fn readable_by(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.mode();
    let ok = (meta.uid() == uid && mode & 0o400 != 0)
        || (meta.gid() == gid && mode & 0o040 != 0)
        || mode & 0o004 != 0;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} belongs to uid {} (mode {:04o}) and the running sesamed runs as uid {uid}, which cannot read it: chown {uid} {}",
            path.display(),
            meta.uid(),
            mode & 0o7777,
            path.display()
        ))
    }
}

/// Writes `change` over `path` and has the sesamed of that file reload it; when that sesamed
/// refuses the reload, the file gets its old content back, so a refused change leaves nothing
/// half done. A sesamed that runs another file is left alone. `check` runs first, with what
/// answers on the socket; its error leaves the file untouched. Returns what to print.
pub fn apply(
    path: &Path,
    change: Edit,
    done: &str,
    check: impl FnOnce(&Edit, &Running) -> Result<(), String>,
) -> Result<Vec<String>, String> {
    let before =
        crate::config::read_config_text(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let old = Config::parse(&before, path).map_err(|e| format!("{}: {e}", path.display()))?;
    let running = running(&change.config);
    check(&change, &running)?;
    let config = commit(path, change)?;
    let mut out = vec![done.to_owned()];
    match running {
        Running::Unreachable(e) => {
            out.push(format!(
                "sesamed is not reachable ({e}); the change takes effect when it starts"
            ));
        }
        Running::Other(s) => out.push(format!(
            "the sesamed answering on {} (pid {}) runs {}, not {}: it was not reloaded",
            config.control_socket.display(),
            s.pid,
            s.config,
            path.display()
        )),
        Running::This(_) => {
            let refused = match crate::control::request(&config.control_socket, "reload") {
                Ok(answer) => {
                    match serde_json::from_str::<crate::control::ReloadResult>(answer.trim()) {
                        Ok(r) if r.ok => {
                            out.push(r.message);
                            None
                        }
                        Ok(r) => Some(r.message),
                        Err(e) => Some(format!("unexpected answer from sesamed: {e}")),
                    }
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = refused {
                let restored = commit(
                    path,
                    Edit {
                        text: before,
                        config: old,
                    },
                );
                return Err(match restored {
                    Ok(_) => format!(
                        "sesamed refused the reload ({why}); {} has its previous content again, nothing changed",
                        path.display()
                    ),
                    Err(e) => format!(
                        "sesamed refused the reload ({why}), and restoring the previous content failed: {e}"
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// One row of `sesamed client list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientRow {
    /// Its name.
    pub name: String,
    /// Its public key (base64, as `sesame pubkey` prints it).
    pub public_key: String,
    /// Services it may open.
    pub allow: Vec<String>,
    /// Prefixes it may knock from (empty: anywhere).
    pub source: Vec<String>,
    /// Whether it has a PSK.
    pub psk: bool,
    /// When it stops being accepted (RFC 3339), if ever.
    pub expires: Option<String>,
    /// Whether it has expired.
    pub expired: bool,
    /// Its last knock, as the running sesamed saw it: when, from where, with what result.
    pub last_knock: Option<String>,
    /// From where.
    pub last_source: Option<String>,
    /// The result (`granted` or a refusal reason).
    pub last_result: Option<String>,
}

/// The clients of `config`, with their last knock when `running` (this file's daemon) says.
pub fn client_rows(
    config: &Config,
    running: Option<&crate::control::Status>,
    now: sesame_proto::UnixMillis,
) -> Vec<ClientRow> {
    config
        .clients
        .iter()
        .map(|c| {
            let last = running.and_then(|s| s.clients.iter().find(|x| x.name == c.name));
            ClientRow {
                name: c.name.clone(),
                public_key: c.public_key.to_base64(),
                allow: c.allow.iter().map(ToString::to_string).collect(),
                source: c.source.iter().map(ToString::to_string).collect(),
                psk: c.psk_file.is_some(),
                expires: c.expires.map(crate::daemon::rfc3339),
                expired: c.expires.is_some_and(|e| e <= now),
                last_knock: last.and_then(|l| l.last_knock.clone()),
                last_source: last.and_then(|l| l.last_source.clone()),
                last_result: last.and_then(|l| l.last_result.clone()),
            }
        })
        .collect()
}

/// The rows as a table: the key shortened to its first 12 characters (enough to tell keys
/// apart and to compare with `sesame pubkey`).
pub fn client_table(rows: &[ClientRow]) -> String {
    let mut lines = vec![[
        "NAME".to_owned(),
        "KEY".to_owned(),
        "ALLOW".to_owned(),
        "SOURCE".to_owned(),
        "PSK".to_owned(),
        "EXPIRES".to_owned(),
        "LAST KNOCK".to_owned(),
    ]];
    for r in rows {
        let or = |v: &[String], none: &str| {
            if v.is_empty() {
                none.to_owned()
            } else {
                v.join(",")
            }
        };
        let last = match (&r.last_knock, &r.last_source, &r.last_result) {
            (Some(t), Some(s), Some(res)) => format!("{t} from {s}: {res}"),
            (Some(t), _, _) => t.clone(),
            _ => "-".to_owned(),
        };
        lines.push([
            r.name.clone(),
            format!("{}…", r.public_key.chars().take(12).collect::<String>()),
            or(&r.allow, "-"),
            or(&r.source, "any"),
            if r.psk { "yes" } else { "no" }.to_owned(),
            match (&r.expires, r.expired) {
                (Some(e), true) => format!("{e} (expired)"),
                (Some(e), false) => e.clone(),
                (None, _) => "never".to_owned(),
            },
            last,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
