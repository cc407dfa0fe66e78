//! Where profiles live (`$XDG_CONFIG_HOME/sesame/profiles/NAME.toml`, by default
//! `~/.config/sesame/profiles/`), and importing them from files or `sesame://` URIs.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use sesame_proto::{Profile, ProfileUri, is_valid_name};

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

/// What `sesame import` did.
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

/// Installs a profile from a file (TOML or a saved URI) or a `sesame://` URI.
pub fn import(source: &str, name: Option<&str>, force: bool) -> anyhow::Result<Imported> {
    if source == "-" {
        use std::io::Read;
        let mut text = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("standard input: {e}")))?;
        return import_text(&text, None, "standard input", name, force);
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
    import_text(&text, from_file, shown, name, force)
}

/// Installs a profile from its text (TOML or a URI); `from_file` is where TOML came from (its
/// relative paths are relative to it), `shown` names the source in errors.
fn import_text(
    text: &str,
    from_file: Option<PathBuf>,
    shown: &str,
    name: Option<&str>,
    force: bool,
) -> anyhow::Result<Imported> {
    let dir = config_dir()?;
    let mut secrets: Vec<(PathBuf, String)> = Vec::new();
    let (profile, suggested) = if text.trim_start().starts_with("sesame://") {
        let uri = ProfileUri::decode(text).map_err(|e| usage(format!("{shown}: {e}")))?;
        let n = name.unwrap_or(&uri.name).to_owned();
        let mut profile = uri.profile;
        profile.private_key_file = dir.join(format!("{n}.key"));
        if let Some(k) = &uri.private_key {
            secrets.push((profile.private_key_file.clone(), k.to_base64().to_string()));
        }
        if let Some(p) = &uri.psk {
            let path = dir.join(format!("{n}.psk"));
            secrets.push((path.clone(), p.to_base64().to_string()));
            profile.psk_file = Some(path);
        }
        (profile, n)
    } else {
        if from_file.is_none() && name.is_none() {
            return Err(usage(format!(
                "{shown}: a profile in TOML needs a name: sesame import - --name NAME"
            )));
        }
        let file = match from_file {
            Some(f) => f,
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
        (profile, name.map_or(stem, str::to_owned))
    };
    let path = profile_path(&suggested)?;
    make_dir(&profiles_dir()?)?;
    let mut written = Vec::new();
    for (file, text) in &secrets {
        make_dir(&dir)?;
        write_private(file, &format!("{text}\n"), force)?;
        written.push(file.clone());
    }
    let header = format!("# sesame profile '{suggested}' (installed by sesame import)\n");
    write_private(&path, &(header + &profile.to_toml()), force)?;
    let key_exists = profile.private_key_file.exists();
    Ok(Imported {
        name: suggested,
        path,
        secrets_written: written,
        key_file: profile.private_key_file,
        key_exists,
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
