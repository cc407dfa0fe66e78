//! Where profiles live (`$XDG_CONFIG_HOME/sesame/profiles/NAME.toml`, by default
//! `~/.config/sesame/profiles/`), and importing them from files or `sesame://` URIs.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use sesame_proto::Profile;
use sesame_proto::uri::{ProfileUri, is_valid_name};

use crate::usage;

/// `$XDG_CONFIG_HOME/sesame`, or `$HOME/.config/sesame`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(x);
        if p.is_absolute() {
            return Ok(p.join("sesame"));
        }
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| usage("neither XDG_CONFIG_HOME nor HOME is set; use --profile FILE"))?;
    Ok(PathBuf::from(home).join(".config/sesame"))
}

/// The directory of installed profiles.
pub fn profiles_dir() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("profiles"))
}

/// The file of the installed profile NAME.
pub fn profile_path(name: &str) -> anyhow::Result<PathBuf> {
    if !is_valid_name(name) {
        return Err(usage(format!(
            "'{name}' is not a profile name (letters, digits, '.', '_', '-')"
        )));
    }
    Ok(profiles_dir()?.join(format!("{name}.toml")))
}

fn make_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes a new file with mode 0600; refuses to replace an existing one unless `replace`.
fn write_private(path: &Path, text: &str, replace: bool) -> anyhow::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o600);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            usage(format!(
                "{} already exists (use --force to replace it)",
                path.display()
            ))
        } else {
            anyhow!("cannot write {}: {e}", path.display())
        }
    })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What `sesame import` did for one profile.
#[derive(Debug)]
pub struct Imported {
    /// The profile's name.
    pub name: String,
    /// Where the profile was written.
    pub path: PathBuf,
    /// Key files written from the URI.
    pub secrets_written: Vec<PathBuf>,
    /// The private key file the profile names, and whether it exists.
    pub key_file: PathBuf,
    /// Whether that key file exists.
    pub key_exists: bool,
}

/// What `sesame import` did.
#[derive(Debug)]
pub struct ImportDone {
    /// The profiles installed, in the source's order.
    pub profiles: Vec<Imported>,
    /// The group they were added to, with all its members.
    pub group: Option<(String, Vec<String>)>,
}

/// Installs the profiles of a file (TOML or saved URIs), of a `sesame://` URI, or of standard
/// input (`-`), and adds them to `group` if one is given. A source may hold several profiles:
/// TOML profiles one after the other (each starts at its `host =` line, with the comments right
/// before it: several `sesamed export-client` outputs put together), or one URI per line. Each
/// is then named after its host, and they form a group (`group`, else the file's name). All are
/// checked before anything is written.
pub fn import(
    source: &str,
    name: Option<&str>,
    group: Option<&str>,
    force: bool,
) -> anyhow::Result<ImportDone> {
    if let Some(g) = group {
        crate::groups::check_name(g)?;
    }
    if source == "-" {
        use std::io::Read;
        let mut text = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .take(1024 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("standard input: {e}")))?;
        return import_text(&text, None, "standard input", name, group, force);
    }
    let is_uri = source.starts_with("sesame://");
    let (text, from_file) = if is_uri {
        (source.to_owned(), None)
    } else {
        if let Some((scheme, _)) = source.split_once("://") {
            return Err(usage(format!(
                "'{scheme}://...' is neither a file nor a sesame:// URI"
            )));
        }
        // Absolute, so paths inside the profile stay reachable once it is copied.
        let path = std::path::absolute(source).map_err(|e| usage(format!("{source}: {e}")))?;
        let text = std::fs::read_to_string(&path).map_err(|e| usage(format!("{source}: {e}")))?;
        (text, Some(path))
    };
    // A URI may carry a private key or PSK: never repeat it in an error.
    let shown = if is_uri { "the URI" } else { source };
    let text = zeroize::Zeroizing::new(text);
    import_text(&text, from_file, shown, name, group, force)
}

/// Whether a line of a profile file is its `host = ...` line.
fn is_host_line(line: &str) -> bool {
    line.trim_start()
        .strip_prefix("host")
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// The profiles in `text`: one per URI line when it holds URIs, else one per `host =` line
/// (each with the comments and blank lines right before it). A TOML profile comes with as
/// many blank lines before it as it had lines before it in `text`, so that a parse error names
/// its line in the file.
pub fn split_profiles(text: &str) -> Vec<String> {
    let content = |l: &str| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    if lines
        .iter()
        .find(|l| content(l))
        .is_some_and(|l| l.trim().starts_with("sesame://"))
    {
        return lines
            .iter()
            .filter(|l| content(l))
            .map(|l| l.trim().to_owned())
            .collect();
    }
    let hosts: Vec<usize> = (0..lines.len())
        .filter(|&i| is_host_line(lines[i]))
        .collect();
    if hosts.len() <= 1 {
        return vec![text.to_owned()];
    }
    let mut starts = vec![0];
    for pair in hosts.windows(2) {
        let mut at = pair[1];
        while at > pair[0] + 1 && !content(lines[at - 1]) {
            at -= 1;
        }
        starts.push(at);
    }
    starts.push(lines.len());
    starts
        .windows(2)
        .map(|w| "\n".repeat(w[0]) + &lines[w[0]..w[1]].concat())
        .collect()
}

/// The name a profile gets after its host when a source holds several: the first label of a
/// host name (`web1` for `web1.example.org`), or the address (`:` written `-`); the whole host
/// when `full`.
fn name_for_host(host: &str, full: bool) -> String {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() || full {
        bare.replace(':', "-")
    } else {
        bare.split('.').next().unwrap_or(bare).to_owned()
    }
}

/// A profile read from a source, not written yet.
struct Pending {
    /// Its name (set by [`name_after_hosts`] when the source holds several).
    name: String,
    profile: Profile,
    /// From a URI: the client it names, and the private key and PSK it carries.
    uri: Option<UriSecrets>,
}

/// What a URI says of the client's key files.
struct UriSecrets {
    client: String,
    key: Option<zeroize::Zeroizing<String>>,
    psk: Option<zeroize::Zeroizing<String>>,
}

impl Pending {
    /// Points a URI's profile at its key and PSK files, now that it has its name, and returns
    /// the secret files to write with their content. A key or PSK the URI carries goes to
    /// `NAME.key` / `NAME.psk`. Without a key, the profile names `NAME.key` too, except among
    /// several profiles named after their hosts: there it names the key of the client the URI
    /// names (`laptop.key`, the same on every server that knows this device by that name), as
    /// `sesamed export-client` writes it into a TOML profile.
    fn secret_files(
        &mut self,
        dir: &Path,
        after_host: bool,
    ) -> Vec<(PathBuf, zeroize::Zeroizing<String>)> {
        let Some(uri) = &self.uri else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let key_name = if uri.key.is_none() && after_host {
            &uri.client
        } else {
            &self.name
        };
        self.profile.private_key_file = dir.join(format!("{key_name}.key"));
        if let Some(k) = &uri.key {
            out.push((self.profile.private_key_file.clone(), k.clone()));
        }
        if let Some(p) = &uri.psk {
            let path = dir.join(format!("{}.psk", self.name));
            out.push((path.clone(), p.clone()));
            self.profile.psk_file = Some(path);
        }
        out
    }
}

/// Reads one profile (a URI or TOML) of a source; `name` is `--name` (none: the URI's name or
/// the file's). Its name is replaced when the source holds several ([`name_after_hosts`]).
fn read_one(
    text: &str,
    from_file: Option<&Path>,
    shown: &str,
    name: Option<&str>,
    several: bool,
) -> anyhow::Result<Pending> {
    if text.trim_start().starts_with("sesame://") {
        let uri = ProfileUri::decode(text).map_err(|e| usage(format!("{shown}: {e}")))?;
        let secrets = UriSecrets {
            client: uri.name.clone(),
            key: uri
                .private_key
                .as_ref()
                .map(|k| zeroize::Zeroizing::new(k.to_base64().to_string())),
            psk: uri
                .psk
                .as_ref()
                .map(|p| zeroize::Zeroizing::new(p.to_base64().to_string())),
        };
        return Ok(Pending {
            name: name.unwrap_or(&uri.name).to_owned(),
            profile: uri.profile,
            uri: Some(secrets),
        });
    }
    if from_file.is_none() && name.is_none() && !several {
        return Err(usage(format!(
            "{shown}: a profile in TOML needs a name: sesame import - --name NAME"
        )));
    }
    let file = match from_file {
        Some(f) => f.to_path_buf(),
        // From standard input: relative paths are relative to the current directory.
        None => std::env::current_dir()
            .map_err(|e| usage(format!("current directory: {e}")))?
            .join("stdin.toml"),
    };
    let mut profile = Profile::parse(text).map_err(|e| usage(format!("{shown}: {e}")))?;
    // Paths relative to the imported file would break once it is copied: make them
    // absolute now.
    profile.private_key_file = crate::resolve_path(&profile.private_key_file, &file);
    profile.psk_file = profile.psk_file.map(|p| crate::resolve_path(&p, &file));
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Pending {
        name: name.map_or(stem, str::to_owned),
        profile,
        uri: None,
    })
}

/// Names the profiles of a source that holds several after their hosts: the short form where
/// it is unique, else the whole host.
fn name_after_hosts(all: &mut [Pending], shown: &str) -> anyhow::Result<()> {
    let short: Vec<String> = all
        .iter()
        .map(|p| name_for_host(&p.profile.host, false))
        .collect();
    for (i, p) in all.iter_mut().enumerate() {
        let shared = short.iter().filter(|s| **s == short[i]).count() > 1;
        p.name = if shared {
            name_for_host(&p.profile.host, true)
        } else {
            short[i].clone()
        };
        if !is_valid_name(&p.name) {
            return Err(usage(format!(
                "{shown}: the host '{}' makes no profile name (letters, digits, '.', '_', '-'): import it alone, with --name",
                p.profile.host.escape_default()
            )));
        }
    }
    for (i, p) in all.iter().enumerate() {
        if all[..i].iter().any(|q| q.name == p.name) {
            return Err(usage(format!(
                "{shown}: two profiles for the host '{}'",
                p.profile.host.escape_default()
            )));
        }
    }
    Ok(())
}

/// Installs the profiles in `text` (TOML or URIs); `from_file` is where TOML came from (its
/// relative paths are relative to it), `shown` names the source in errors.
fn import_text(
    text: &str,
    from_file: Option<PathBuf>,
    shown: &str,
    name: Option<&str>,
    group: Option<&str>,
    force: bool,
) -> anyhow::Result<ImportDone> {
    let dir = config_dir()?;
    // A URI may carry a private key or PSK: its copy is wiped too.
    let parts: Vec<zeroize::Zeroizing<String>> = split_profiles(text)
        .into_iter()
        .map(zeroize::Zeroizing::new)
        .collect();
    let several = parts.len() > 1;
    if several && name.is_some() {
        return Err(usage(format!(
            "{shown} holds {} profiles: each is named after its host, and --name names one (use --group to name them together)",
            parts.len()
        )));
    }
    let mut all = parts
        .iter()
        .map(|part| read_one(part, from_file.as_deref(), shown, name, several))
        .collect::<anyhow::Result<Vec<Pending>>>()?;
    if several {
        name_after_hosts(&mut all, shown)?;
    }
    let secrets: Vec<_> = all
        .iter_mut()
        .map(|p| p.secret_files(&dir, several))
        .collect();
    let group = match group {
        Some(g) => Some(g.to_owned()),
        None if several => {
            let stem = from_file
                .as_deref()
                .and_then(Path::file_stem)
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| is_valid_name(s));
            Some(stem.ok_or_else(|| {
                usage(format!(
                    "{shown} holds {} profiles: name their group with --group NAME",
                    all.len()
                ))
            })?)
        }
        None => None,
    };
    // Everything is checked before anything is written: the group's entry too (a groups file
    // edited by hand may not parse).
    if let Some(g) = &group {
        crate::groups::check_add(g)?;
    }
    let mut paths = Vec::with_capacity(all.len());
    for (p, secrets) in all.iter().zip(&secrets) {
        let path = profile_path(&p.name)?;
        if !force {
            for file in std::iter::once(&path).chain(secrets.iter().map(|(f, _)| f)) {
                if std::fs::symlink_metadata(file).is_ok() {
                    return Err(usage(format!(
                        "{} already exists (use --force to replace it)",
                        file.display()
                    )));
                }
            }
        }
        paths.push(path);
    }
    make_dir(&profiles_dir()?)?;
    let mut done = Vec::with_capacity(all.len());
    for ((p, path), secrets) in all.into_iter().zip(paths).zip(secrets) {
        let mut written = Vec::new();
        for (file, text) in &secrets {
            make_dir(&dir)?;
            write_private(file, &format!("{}\n", text.as_str()), force)?;
            written.push(file.clone());
        }
        let header = format!(
            "# sesame profile '{}' (installed by sesame import)\n",
            p.name
        );
        write_private(&path, &(header + &p.profile.to_toml()), force)?;
        let key_exists = p.profile.private_key_file.exists();
        done.push(Imported {
            name: p.name,
            path,
            secrets_written: written,
            key_file: p.profile.private_key_file,
            key_exists,
        });
    }
    let group = match group {
        Some(g) => {
            let names: Vec<String> = done.iter().map(|d| d.name.clone()).collect();
            let members = crate::groups::add(&g, &names)?;
            Some((g, members))
        }
        None => None,
    };
    Ok(ImportDone {
        profiles: done,
        group,
    })
}

/// Writes `text` to `path` (mode 0600) through a temporary file renamed over it, so that a
/// reader sees the old file or the new one, never a part.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        make_dir(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, text, false)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write {}: {e}", path.display())
    })
}

/// One installed profile, as `sesame list` shows it.
#[derive(Debug)]
pub struct Listed {
    /// Its name.
    pub name: String,
    /// The profile, or why it does not load.
    pub profile: Result<Profile, String>,
    /// Its file.
    pub path: PathBuf,
}

/// The installed profiles, by name.
pub fn list() -> anyhow::Result<Vec<Listed>> {
    let dir = profiles_dir()?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!("cannot read {}: {e}", dir.display())),
    };
    let mut out: Vec<Listed> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_stem()?.to_string_lossy().into_owned();
            (path.extension()? == "toml").then_some((name, path))
        })
        .map(|(name, path)| {
            let profile = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| Profile::parse(&t).map_err(|e| e.to_string()));
            Listed {
                name,
                profile,
                path,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
