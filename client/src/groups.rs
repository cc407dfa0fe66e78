//! Groups of profiles: `$XDG_CONFIG_HOME/sesame/groups.toml` (by default
//! `~/.config/sesame/groups.toml`), one line per group naming its profiles:
//!
//! ```toml
//! prod = ["web1", "web2", "db1"]
//! ```
//!
//! `sesame import --group NAME` adds the profiles it installs to a group (a file of several
//! profiles, such as the `sesamed export-client` outputs of several servers put together, makes
//! one); `sesame open @NAME` knocks every profile of the group. The file may be edited by hand;
//! `sesame import` keeps its comments and order when it adds to it.

use std::path::PathBuf;

use anyhow::anyhow;
use sesame_proto::ConfigError;
use sesame_proto::profile::line_of;
use sesame_proto::uri::is_valid_name;
use toml_edit::{Array, DocumentMut, Item, Value};

use crate::profiles::config_dir;
use crate::usage;

/// The groups file.
pub fn groups_path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("groups.toml"))
}

/// Refuses a group name that is not also a valid profile name.
pub fn check_name(group: &str) -> anyhow::Result<()> {
    if is_valid_name(group) {
        Ok(())
    } else {
        Err(usage(format!(
            "'{group}' is not a group name (letters, digits, '.', '_', '-')"
        )))
    }
}

/// The groups file as a document (empty when it does not exist).
fn read() -> anyhow::Result<(PathBuf, DocumentMut)> {
    let path = groups_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(usage(format!("{}: {e}", path.display()))),
    };
    let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        // One line, with the line of the error, like every other file sesame reads.
        let err = ConfigError {
            line: e.span().map(|s| line_of(&text, s.start)),
            key: None,
            message: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
        };
        usage(format!("{}: {err}", path.display()))
    })?;
    Ok((path, doc))
}

/// The members of one group's entry, or why it is not a list of profile names.
fn members_of(item: &Item) -> Result<Vec<String>, String> {
    let Some(array) = item.as_array() else {
        return Err("must be a list of profile names, e.g. [\"web1\", \"web2\"]".to_owned());
    };
    let mut out: Vec<String> = Vec::with_capacity(array.len());
    for v in array {
        let Some(name) = v.as_str() else {
            return Err("must be a list of profile names (strings)".to_owned());
        };
        if !is_valid_name(name) {
            return Err(format!("'{}' is not a profile name", name.escape_default()));
        }
        if !out.iter().any(|o| o == name) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// A group as `sesame list` shows it: its name, and its members or why the entry is not valid.
pub type Listed = (String, Result<Vec<String>, String>);

/// Every group, in the file's order (a name that is not a group name is shown escaped, and
/// its entry as not valid: `sesame open @NAME` could not name it).
pub fn list() -> anyhow::Result<Vec<Listed>> {
    let (_, doc) = read()?;
    Ok(doc
        .iter()
        .map(|(name, item)| {
            if is_valid_name(name) {
                (name.to_owned(), members_of(item))
            } else {
                (
                    name.escape_default().to_string(),
                    Err("not a group name (letters, digits, '.', '_', '-')".to_owned()),
                )
            }
        })
        .collect())
}

/// The members of `group`, in order; a usage error when there is no such group.
pub fn members(group: &str) -> anyhow::Result<Vec<String>> {
    check_name(group)?;
    let (path, doc) = read()?;
    let Some(item) = doc.get(group) else {
        return Err(usage(format!(
            "no group named '{group}' in {} (see `sesame list`; `sesame import FILE --group {group}` makes one)",
            path.display()
        )));
    };
    let members =
        members_of(item).map_err(|e| usage(format!("{}: {group}: {e}", path.display())))?;
    if members.is_empty() {
        return Err(usage(format!(
            "{}: the group '{group}' names no profile",
            path.display()
        )));
    }
    Ok(members)
}

/// Checks that [`add`] can add to `group`: a valid name, and a groups file that parses with
/// an entry for it that is a list of profile names, if it has one. `sesame import` calls it
/// before it writes anything.
pub fn check_add(group: &str) -> anyhow::Result<()> {
    check_name(group)?;
    let (path, doc) = read()?;
    current_members(&path, &doc, group).map(drop)
}

/// The members `group` has in `doc` (none if it has no entry).
fn current_members(
    path: &std::path::Path,
    doc: &DocumentMut,
    group: &str,
) -> anyhow::Result<Vec<String>> {
    match doc.get(group) {
        Some(item) => {
            members_of(item).map_err(|e| usage(format!("{}: {group}: {e}", path.display())))
        }
        None => Ok(Vec::new()),
    }
}

/// Adds `names` to `group` (made if it does not exist; names it has already stay where they
/// are) and returns its members.
pub fn add(group: &str, names: &[String]) -> anyhow::Result<Vec<String>> {
    check_name(group)?;
    let (path, mut doc) = read()?;
    let new_file = !path.exists();
    let mut members = current_members(&path, &doc, group)?;
    for n in names {
        if !members.contains(n) {
            members.push(n.clone());
        }
    }
    let array: Array = members.iter().map(String::as_str).collect();
    match doc.get_mut(group).and_then(Item::as_value_mut) {
        // In place, so that a comment after the entry stays with it.
        Some(value) => {
            let decor = value.decor().clone();
            *value = Value::Array(array);
            *value.decor_mut() = decor;
        }
        None => {
            doc.insert(group, toml_edit::value(array));
        }
    }
    let mut text = doc.to_string();
    if new_file {
        text = format!(
            "# sesame groups: `sesame open @GROUP` knocks every profile of a group\n{text}"
        );
    }
    crate::profiles::write_file(&path, &text)
        .map_err(|e| anyhow!("cannot write {}: {e:#}", path.display()))?;
    Ok(members)
}
