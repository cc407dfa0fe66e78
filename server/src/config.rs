//! `sesamed.toml`: parsing and validation with one-line errors naming the file and the key.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sesame_keys::{PresharedKey, PrivateKey, PublicKey};
use sesame_proto::action::ArgumentRule;
use sesame_proto::params::{KnockParams, KnockProtocol, PayloadMode};
use sesame_proto::profile::{DEFAULT_LENGTH, DEFAULT_PORT_RANGE, DEFAULT_STEP_SECONDS};
use sesame_proto::tracker::IpNet;
use sesame_proto::{ConfigError, ParamsError, Service, UnixMillis};
use toml::Spanned;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/sesame/sesamed.toml";

/// A configuration error: the file and a one-line description (line, key, why).
#[derive(Debug)]
pub struct ConfigFileError {
    /// The configuration file.
    pub path: PathBuf,
    /// What is wrong.
    pub error: ConfigError,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

impl std::error::Error for ConfigFileError {}

/// Which firewall backend grants access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// sesamed's own nftables table with kernel-expiring set elements.
    #[default]
    Nftables,
    /// `open_command` / `close_command` hooks.
    Command,
    /// Log the grant only.
    Log,
}

impl std::fmt::Display for Backend {
    /// As written in the configuration.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Nftables => "nftables",
            Backend::Command => "command",
            Backend::Log => "log",
        })
    }
}

/// What a lease admits (shared with client profiles, which carry it).
pub use sesame_proto::params::LeaseKind;

/// Which interfaces to capture on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// Every interface (one socket).
    Any,
    /// These interfaces (one socket each).
    Named(Vec<String>),
}

impl std::fmt::Display for Interfaces {
    /// As written in the configuration: `any`, or the names separated by commas.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interfaces::Any => f.write_str("any"),
            Interfaces::Named(names) => f.write_str(&names.join(",")),
        }
    }
}

/// The `[knock]` settings that every client profile carries and that differ between `old`
/// and `new` (a change makes every profile exported before it useless).
pub fn profile_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    crate::control::KnockStatus::of(old).differences(&crate::control::KnockStatus::of(new))
}

/// `1 client`, `2 clients`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The `[knock]` section.
#[derive(Clone, Debug)]
pub struct KnockConfig {
    /// Parameters shared with clients.
    pub params: KnockParams,
    /// Steps accepted on either side of now.
    pub skew_steps: u32,
    /// Time allowed for a whole knock, in milliseconds.
    pub timeout_ms: u64,
    /// Payload mode.
    pub payload: PayloadMode,
    /// Refuse payloads that name no address (default for every client).
    pub require_address: bool,
    /// How far ahead of the server's clock a payload's timestamp may be, in milliseconds.
    pub max_ahead_ms: u64,
    /// Per client, X25519 operations allowed per second (and in a burst).
    pub x25519_per_client_per_second: u32,
}

/// The `[firewall]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallConfig {
    /// The backend.
    pub backend: Backend,
    /// What a lease admits.
    pub lease: LeaseKind,
    /// Name of the nftables table (family `inet`).
    pub table: String,
    /// The `nft` program.
    pub nft: PathBuf,
    /// Grants and revocations over netlink instead of running `nft` for each.
    pub netlink: bool,
    /// Services hidden until a knock.
    pub protect: Vec<Service>,
    /// How long a grant lasts.
    pub lease_seconds: u32,
    /// argv run for a grant (command backend).
    pub open_command: Vec<String>,
    /// argv run when a lease ends (command backend; may be empty).
    pub close_command: Vec<String>,
    /// Time limit for a hook command, in milliseconds.
    pub command_timeout_ms: u64,
    /// Per client, the time to earn one more hook run for new leases, in milliseconds.
    pub command_cooldown_ms: u64,
    /// Per client, hook runs for new leases allowed in a burst.
    pub command_burst: u32,
    /// Most hook commands running at once.
    pub command_concurrency: usize,
}

/// A `[[client]]`.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Name for logs, placeholders and export.
    pub name: String,
    /// The client's public key.
    pub public_key: PublicKey,
    /// Its pre-shared key file, if any.
    pub psk_file: Option<PathBuf>,
    /// Services it may open.
    pub allow: Vec<Service>,
    /// Prefixes it may knock from (empty: any).
    pub source: Vec<IpNet>,
    /// Whether it may ask to open another address.
    pub allow_other_ip: bool,
    /// Whether its payloads must name an address (`[knock] require_address` unless set).
    pub require_address: bool,
    /// When it stops being accepted.
    pub expires: Option<UnixMillis>,
    /// The IPv4 block a grant opens: 32 (the address alone, the default) down to 24.
    pub lease_prefix_v4: u8,
    /// The IPv6 block a grant opens: 128 (the address alone, the default) down to 48.
    pub lease_prefix_v6: u8,
    /// The `[[action]]`s it may run, by name.
    pub actions: Vec<String>,
}

/// The account an action runs as when its `user` is not set.
pub const DEFAULT_ACTION_USER: &str = "nobody";

/// The placeholders an action's `command` may hold.
pub const ACTION_PLACEHOLDERS: [&str; 3] = ["{client}", "{source}", "{argument}"];

/// An `[[action]]`: a command the administrator configured, which a knock names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActionConfig {
    /// The name a knock carries (1 to 16 characters of `a-z 0-9 _ -`).
    pub name: String,
    /// The argv, never a shell: an absolute program path, then its arguments, which may hold
    /// the placeholders `{client}`, `{source}` and `{argument}`.
    pub command: Vec<String>,
    /// The account it runs as.
    pub user: String,
    /// Whether it may run as root (uid 0).
    pub allow_root: bool,
    /// It is killed (its whole process group) after this many milliseconds.
    pub timeout_ms: u64,
    /// Per client, the time after a run before the same client's knock runs it again.
    pub cooldown_ms: u64,
    /// Most runs of it at once.
    pub max_concurrent: usize,
    /// The argument a knock may carry for it.
    pub argument: ArgumentRule,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// The server's private key file.
    pub private_key_file: PathBuf,
    /// Where replay state lives.
    pub state_dir: PathBuf,
    /// `state_sync`: when the replay state is made durable.
    pub state_sync: StateSync,
    /// Interfaces to capture on.
    pub interfaces: Interfaces,
    /// The control socket (status, reload).
    pub control_socket: PathBuf,
    /// The account to switch to after setup (None: stay as started).
    pub user: Option<String>,
    /// `[knock]`.
    pub knock: KnockConfig,
    /// `[firewall]`.
    pub firewall: FirewallConfig,
    /// `[metrics] listen`: where the Prometheus scrape endpoint listens (`None`: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[[client]]`s.
    pub clients: Vec<ClientConfig>,
    /// `[[action]]`s.
    pub actions: Vec<ActionConfig>,
}

/// `state_sync`: when a grant's replay state reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StateSync {
    /// `"grant"` (the default): every grant's journal record is synced (`fdatasync`) before
    /// the grant.
    #[default]
    Grant,
    /// `"fence"`: a background task keeps a durable fence a few seconds ahead of the newest
    /// timestamp sesamed may accept; a grant covered by it writes its journal record without
    /// waiting for the disk. After a machine crash (another boot) everything stamped before
    /// the fence is refused, for every client, until the clock passes it.
    Fence,
}

impl StateSync {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            StateSync::Grant => "grant",
            StateSync::Fence => "fence",
        }
    }
}

/// The secrets a configuration points at.
pub struct Secrets {
    /// The server's private key.
    pub server_key: PrivateKey,
    /// Per client (same order as `Config::clients`), its PSK if it has one.
    pub psks: Vec<Option<PresharedKey>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    private_key_file: Spanned<String>,
    #[serde(default = "default_state_dir")]
    state_dir: String,
    #[serde(default)]
    state_sync: Option<Spanned<String>>,
    #[serde(default = "default_interfaces")]
    interfaces: Spanned<Vec<String>>,
    #[serde(default = "default_control_socket")]
    control_socket: String,
    #[serde(default)]
    user: Option<Spanned<String>>,
    #[serde(default)]
    knock: RawKnock,
    firewall: RawFirewall,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default, rename = "client")]
    clients: Vec<RawClient>,
    #[serde(default, rename = "action")]
    actions: Vec<RawAction>,
}

/// `[[action]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    name: Spanned<String>,
    command: Spanned<Vec<String>>,
    #[serde(default)]
    user: Option<Spanned<String>>,
    #[serde(default)]
    allow_root: bool,
    #[serde(default = "default_action_timeout")]
    timeout_ms: Spanned<u64>,
    #[serde(default = "default_action_cooldown")]
    cooldown_ms: Spanned<u64>,
    #[serde(default = "default_action_concurrency")]
    max_concurrent: Spanned<u64>,
    #[serde(default)]
    argument: Option<Spanned<String>>,
}

fn default_action_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}
fn default_action_cooldown() -> Spanned<u64> {
    Spanned::new(0..0, 5_000)
}
fn default_action_concurrency() -> Spanned<u64> {
    Spanned::new(0..0, 1)
}

/// `[metrics]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// `host:port` of the scrape endpoint; absent: no endpoint.
    #[serde(default)]
    listen: Option<Spanned<String>>,
}

fn default_state_dir() -> String {
    "/var/lib/sesame".into()
}
fn default_interfaces() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["any".into()])
}
fn default_control_socket() -> String {
    "/run/sesame/sesamed.sock".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKnock {
    #[serde(default = "default_step")]
    step_seconds: Spanned<u32>,
    #[serde(default = "default_skew")]
    skew_steps: Spanned<u32>,
    #[serde(default = "default_length")]
    length: Spanned<u64>,
    #[serde(default = "default_range")]
    port_range: Spanned<[u64; 2]>,
    #[serde(default)]
    exclude_ports: Vec<u16>,
    #[serde(default)]
    protocol: KnockProtocol,
    #[serde(default = "default_timeout")]
    timeout_ms: Spanned<u64>,
    #[serde(default)]
    payload: PayloadMode,
    #[serde(default)]
    require_address: Option<Spanned<bool>>,
    #[serde(default)]
    max_ahead_ms: Option<Spanned<u64>>,
    #[serde(default = "default_x25519_rate")]
    x25519_per_client_per_second: Spanned<u32>,
}

fn default_x25519_rate() -> Spanned<u32> {
    Spanned::new(0..0, sesame_proto::TrackerConfig::DEFAULT_X25519_PER_SECOND)
}

impl Default for RawKnock {
    fn default() -> Self {
        RawKnock {
            step_seconds: default_step(),
            skew_steps: default_skew(),
            length: default_length(),
            port_range: default_range(),
            exclude_ports: Vec::new(),
            protocol: KnockProtocol::default(),
            timeout_ms: default_timeout(),
            payload: PayloadMode::default(),
            require_address: None,
            max_ahead_ms: None,
            x25519_per_client_per_second: default_x25519_rate(),
        }
    }
}

fn default_step() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_STEP_SECONDS)
}
fn default_skew() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn default_length() -> Spanned<u64> {
    Spanned::new(0..0, u64::from(DEFAULT_LENGTH))
}
fn default_range() -> Spanned<[u64; 2]> {
    Spanned::new(
        0..0,
        [
            u64::from(DEFAULT_PORT_RANGE.0),
            u64::from(DEFAULT_PORT_RANGE.1),
        ],
    )
}
fn default_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 5000)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirewall {
    #[serde(default)]
    backend: Backend,
    #[serde(default = "default_lease_kind")]
    lease: Spanned<LeaseKind>,
    #[serde(default = "default_table")]
    table: Spanned<String>,
    #[serde(default = "default_nft")]
    nft: String,
    #[serde(default = "default_netlink")]
    netlink: bool,
    protect: Spanned<Vec<String>>,
    #[serde(default = "default_lease")]
    lease_seconds: Spanned<u32>,
    #[serde(default)]
    open_command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    close_command: Option<Spanned<Vec<String>>>,
    #[serde(default = "default_command_timeout")]
    command_timeout_ms: u64,
    #[serde(default = "default_command_cooldown")]
    command_cooldown_ms: u64,
    #[serde(default = "default_command_burst")]
    command_burst: u32,
    #[serde(default = "default_command_concurrency")]
    command_concurrency: Spanned<usize>,
}

fn default_lease_kind() -> Spanned<LeaseKind> {
    Spanned::new(0..0, LeaseKind::Window)
}
fn default_table() -> Spanned<String> {
    Spanned::new(0..0, "sesame".into())
}
fn default_nft() -> String {
    "nft".into()
}
fn default_netlink() -> bool {
    true
}
fn default_lease() -> Spanned<u32> {
    Spanned::new(0..0, 30)
}
fn default_command_timeout() -> u64 {
    5000
}
fn default_command_cooldown() -> u64 {
    1000
}
fn default_command_burst() -> u32 {
    4
}
fn default_command_concurrency() -> Spanned<usize> {
    Spanned::new(0..0, 4)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: Spanned<String>,
    public_key: Spanned<String>,
    #[serde(default)]
    psk_file: Option<String>,
    #[serde(default)]
    allow: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    source: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    allow_other_ip: bool,
    #[serde(default)]
    require_address: Option<Spanned<bool>>,
    #[serde(default)]
    expires: Option<Spanned<toml::Value>>,
    #[serde(default)]
    lease_prefix_v4: Option<Spanned<u8>>,
    #[serde(default)]
    lease_prefix_v6: Option<Spanned<u8>>,
    #[serde(default)]
    actions: Option<Spanned<Vec<String>>>,
}

fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    let r = s.span();
    (r != (0..0)).then_some(r)
}

/// The text of an unquoted TOML time (`expires = 2027-01-01T00:00Z`) as `client.expires` reads
/// it: the seconds written out and a zero fraction left off, so `00:00Z` is the RFC 3339 time
/// `00:00:00Z` (toml 1 keeps what the file wrote; this is how toml 0.9 printed it).
fn toml_datetime_text(mut d: toml::value::Datetime) -> String {
    if let Some(t) = &mut d.time {
        t.second.get_or_insert(0);
        if t.nanosecond == Some(0) {
            t.nanosecond = None;
        }
    }
    d.to_string()
}

/// Names used in logs, hook arguments and file names: letters, digits, `.`, `_`, `-`.
fn is_simple_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The largest configuration file sesamed reads: 256 MiB. 1 000 000 clients as
/// `sesamed client add` writes them (a 14-character name, the key, one `allow`: 115 bytes
/// each) make a file of 115 MB (110 MiB), so this leaves room for 2.3 times that (268 bytes
/// per client at 1 000 000). A larger file is refused by its size, never parsed cut short.
pub const MAX_CONFIG_BYTES: u64 = 256 << 20;

/// Reads a configuration file without blocking on a FIFO or a device at its path: it must be
/// a regular file (a symbolic link to one is fine: only root can put one in /etc/sesame) of
/// at most [`MAX_CONFIG_BYTES`].
pub fn read_config_text(path: &Path) -> std::io::Result<String> {
    read_text_capped(path, MAX_CONFIG_BYTES)
}

fn read_text_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_big = |size: u64| {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "the file is {size} bytes, more than the {cap} bytes ({} MiB) a configuration may have",
                cap >> 20
            ),
        )
    };
    if meta.len() > cap {
        return Err(too_big(meta.len()));
    }
    let mut text = String::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte more than the cap tells a file that grew past it since from one that ends there.
    file.take(cap + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(too_big(text.len() as u64));
    }
    Ok(text)
}

/// Validates the `[[action]]` tables.
fn parse_actions(
    raw: &[RawAction],
    err: &impl Fn(Option<Range<usize>>, &str, String) -> ConfigError,
) -> Result<Vec<ActionConfig>, ConfigError> {
    let mut out: Vec<ActionConfig> = Vec::with_capacity(raw.len());
    for a in raw {
        let name = a.name.get_ref().clone();
        if !sesame_proto::wire::is_action_name(name.as_bytes()) {
            return Err(err(
                span_of(&a.name),
                "action.name",
                format!("'{name}' is not an action name (1 to 16 characters of a-z, 0-9, _ and -)"),
            ));
        }
        if out.iter().any(|x| x.name == name) {
            return Err(err(
                span_of(&a.name),
                "action.name",
                format!("'{name}' is used by two actions"),
            ));
        }
        let argument = match &a.argument {
            None => ArgumentRule::None,
            Some(text) => ArgumentRule::parse(text.get_ref()).map_err(|e| {
                err(
                    span_of(text),
                    "action.argument",
                    format!("action '{name}': {e}"),
                )
            })?,
        };
        let command = a.command.get_ref().clone();
        let command_error = |message: String| {
            err(
                span_of(&a.command),
                "action.command",
                format!("action '{name}': {message}"),
            )
        };
        let Some(program) = command.first() else {
            return Err(command_error(
                "must name a program, e.g. [\"/usr/bin/wakeonlan\", \"{argument}\"]".into(),
            ));
        };
        if !program.starts_with('/') || program.contains('{') {
            return Err(command_error(format!(
                "the first element must be the program's absolute path (no shell, no PATH lookup, no placeholder), found '{program}'"
            )));
        }
        for word in &command {
            if word.contains('\0') {
                return Err(command_error("an element holds a NUL character".into()));
            }
            if let Some(unknown) = unknown_placeholder(word) {
                return Err(command_error(format!(
                    "unknown placeholder {unknown} (the placeholders are {{client}}, {{source}} and {{argument}})"
                )));
            }
            if word.contains("{argument}") && !argument.takes_argument() {
                return Err(command_error(
                    "uses {argument}, but the action takes none (set argument = \"^[CLASS]{m,n}$\")"
                        .into(),
                ));
            }
        }
        let user = match &a.user {
            Some(u) if !is_simple_name(u.get_ref(), 32) => {
                return Err(err(
                    span_of(u),
                    "action.user",
                    format!("action '{name}': '{}' is not a user name", u.get_ref()),
                ));
            }
            Some(u) => u.get_ref().clone(),
            None => DEFAULT_ACTION_USER.to_owned(),
        };
        if user == "root" && !a.allow_root {
            return Err(err(
                a.user.as_ref().and_then(span_of),
                "action.user",
                format!(
                    "action '{name}': running as root needs allow_root = true (and sesamed started as root)"
                ),
            ));
        }
        let timeout_ms = *a.timeout_ms.get_ref();
        if !(100..=3_600_000).contains(&timeout_ms) {
            return Err(err(
                span_of(&a.timeout_ms),
                "action.timeout_ms",
                format!("action '{name}': must be between 100 and 3600000, found {timeout_ms}"),
            ));
        }
        let cooldown_ms = *a.cooldown_ms.get_ref();
        if cooldown_ms > 86_400_000 {
            return Err(err(
                span_of(&a.cooldown_ms),
                "action.cooldown_ms",
                format!("action '{name}': must be at most 86400000 (a day), found {cooldown_ms}"),
            ));
        }
        let max_concurrent = *a.max_concurrent.get_ref();
        if !(1..=64).contains(&max_concurrent) {
            return Err(err(
                span_of(&a.max_concurrent),
                "action.max_concurrent",
                format!("action '{name}': must be between 1 and 64, found {max_concurrent}"),
            ));
        }
        out.push(ActionConfig {
            name,
            command,
            user,
            allow_root: a.allow_root,
            timeout_ms,
            cooldown_ms,
            max_concurrent: max_concurrent as usize,
            argument,
        });
    }
    Ok(out)
}

/// The first `{word}` in `text` (word: lower-case letters and `_`) that is not one of the
/// [`ACTION_PLACEHOLDERS`]. Other braces are literal text.
fn unknown_placeholder(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let word_len = after
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
            .count();
        if word_len > 0 && after.as_bytes().get(word_len) == Some(&b'}') {
            let placeholder = &rest[open..open + word_len + 2];
            if !ACTION_PLACEHOLDERS.contains(&placeholder) {
                return Some(placeholder.to_owned());
            }
        }
        rest = after;
    }
    None
}

impl Config {
    /// Reads and validates a configuration file (secrets are not read; see
    /// [`Config::load_secrets`]).
    pub fn load(path: &Path) -> Result<Config, ConfigFileError> {
        let text = Self::read(path)?;
        Self::parse(&text, path).map_err(|error| ConfigFileError {
            path: path.to_path_buf(),
            error,
        })
    }

    /// The text of the configuration file at `path` (capped), its read error naming the file.
    fn read(path: &Path) -> Result<String, ConfigFileError> {
        read_config_text(path).map_err(|e| ConfigFileError {
            path: path.to_path_buf(),
            error: ConfigError {
                line: None,
                key: None,
                message: e.to_string(),
            },
        })
    }

    /// The control socket of the configuration at `path` (`control_socket`, resolved as
    /// [`Config::load`] resolves it), without reading the clients: `sesamed status` needs only
    /// this, and at 1 000 000 clients a whole parse takes seconds. In TOML every top-level key
    /// comes before the first table header, so the text before the first line that starts
    /// with `[` holds it. When that text does not parse on its own (a multi-line value with a
    /// line that starts with `[`, or a `control_socket` that is not a string), the whole
    /// configuration is loaded, and its error is the one reported.
    pub fn control_socket_of(path: &Path) -> Result<PathBuf, ConfigFileError> {
        #[derive(Deserialize)]
        struct Top {
            #[serde(default = "default_control_socket")]
            control_socket: String,
        }
        let text = Self::read(path)?;
        let mut head_len = text.len();
        let mut at = 0;
        for line in text.split_inclusive('\n') {
            if line.trim_start().starts_with('[') {
                head_len = at;
                break;
            }
            at += line.len();
        }
        match toml::from_str::<Top>(&text[..head_len]) {
            Ok(top) => {
                let socket = PathBuf::from(top.control_socket);
                Ok(if socket.is_relative() {
                    path.parent().unwrap_or(Path::new(".")).join(socket)
                } else {
                    socket
                })
            }
            Err(_) => Self::parse(&text, path)
                .map(|c| c.control_socket)
                .map_err(|error| ConfigFileError {
                    path: path.to_path_buf(),
                    error,
                }),
        }
    }

    /// Parses and validates configuration text; relative paths are resolved against the
    /// directory of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::from_toml(text, &e))?;
        let err = |span: Option<Range<usize>>, key: &str, msg: String| {
            ConfigError::at(text, span, key, msg)
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_relative() { base.join(p) } else { p }
        };

        if raw.private_key_file.get_ref().is_empty() {
            return Err(err(
                span_of(&raw.private_key_file),
                "private_key_file",
                "must not be empty".into(),
            ));
        }
        let interfaces = {
            let list = raw.interfaces.get_ref();
            if list.is_empty() {
                return Err(err(
                    span_of(&raw.interfaces),
                    "interfaces",
                    "must name at least one interface, or [\"any\"]".into(),
                ));
            }
            if list.iter().any(|i| i == "any") {
                if list.len() > 1 {
                    return Err(err(
                        span_of(&raw.interfaces),
                        "interfaces",
                        "\"any\" cannot be combined with interface names".into(),
                    ));
                }
                Interfaces::Any
            } else {
                for name in list {
                    if !is_simple_name(name, 15) {
                        return Err(err(
                            span_of(&raw.interfaces),
                            "interfaces",
                            format!("'{name}' is not an interface name"),
                        ));
                    }
                }
                Interfaces::Named(list.clone())
            }
        };

        let k = &raw.knock;
        let range = k.port_range.get_ref();
        let params = KnockParams::new(
            *k.step_seconds.get_ref(),
            *k.length.get_ref(),
            (range[0], range[1]),
            &k.exclude_ports,
            k.protocol,
        )
        .map_err(|e| {
            let (key, span) = match e {
                ParamsError::Step(_) => ("knock.step_seconds", span_of(&k.step_seconds)),
                ParamsError::Length(_) => ("knock.length", span_of(&k.length)),
                _ => ("knock.port_range", span_of(&k.port_range)),
            };
            err(span, key, e.to_string())
        })?;
        let skew_steps = *k.skew_steps.get_ref();
        if skew_steps > 10 {
            return Err(err(
                span_of(&k.skew_steps),
                "knock.skew_steps",
                format!("must be at most 10, found {skew_steps}"),
            ));
        }
        let timeout_ms = *k.timeout_ms.get_ref();
        if !(1..=600_000).contains(&timeout_ms) {
            return Err(err(
                span_of(&k.timeout_ms),
                "knock.timeout_ms",
                format!("must be between 1 and 600000, found {timeout_ms}"),
            ));
        }
        let payload = k.payload;
        let require_address = k.require_address.as_ref().is_some_and(|r| *r.get_ref());
        if require_address && payload == PayloadMode::None {
            return Err(err(
                k.require_address.as_ref().and_then(span_of),
                "knock.require_address",
                "needs a payload to carry the address, but knock.payload is \"none\"".into(),
            ));
        }
        let step_ms = u64::from(params.step_seconds) * 1000;
        let max_ahead_ms = match &k.max_ahead_ms {
            Some(m) => {
                let v = *m.get_ref();
                let most = u64::from(skew_steps + 1) * step_ms;
                if v > most {
                    return Err(err(
                        span_of(m),
                        "knock.max_ahead_ms",
                        format!(
                            "must be at most (skew_steps + 1) x step_seconds = {most} ms (the window admits nothing later), found {v}"
                        ),
                    ));
                }
                v
            }
            None => u64::from(skew_steps) * step_ms,
        };
        let x25519_rate = *k.x25519_per_client_per_second.get_ref();
        if !(1..=100_000).contains(&x25519_rate) {
            return Err(err(
                span_of(&k.x25519_per_client_per_second),
                "knock.x25519_per_client_per_second",
                format!("must be between 1 and 100000, found {x25519_rate}"),
            ));
        }

        let fw = &raw.firewall;
        if !is_simple_name(fw.table.get_ref(), 64) || fw.table.get_ref().contains('.') {
            return Err(err(
                span_of(&fw.table),
                "firewall.table",
                format!(
                    "'{}' is not a valid table name (letters, digits, _ and -)",
                    fw.table.get_ref()
                ),
            ));
        }
        let protect = sesame_proto::profile::parse_services_unbounded(fw.protect.get_ref())
            .map_err(|e| err(span_of(&fw.protect), "firewall.protect", e))?;
        if protect.is_empty() {
            return Err(err(
                span_of(&fw.protect),
                "firewall.protect",
                "must list at least one service, e.g. [\"tcp/22\"]".into(),
            ));
        }
        for s in &protect {
            if params.in_range(s.port) {
                return Err(err(
                    span_of(&fw.protect),
                    "firewall.protect",
                    format!(
                        "{s} is inside knock.port_range [{}, {}]; move the range or add {} to knock.exclude_ports",
                        params.port_lo, params.port_hi, s.port
                    ),
                ));
            }
        }
        let lease_seconds = *fw.lease_seconds.get_ref();
        if !(1..=86_400 * 7).contains(&lease_seconds) {
            return Err(err(
                span_of(&fw.lease_seconds),
                "firewall.lease_seconds",
                format!("must be between 1 and 604800, found {lease_seconds}"),
            ));
        }
        let argv = |v: &Option<Spanned<Vec<String>>>| {
            v.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default()
        };
        let open_command = argv(&fw.open_command);
        let close_command = argv(&fw.close_command);
        if fw.backend == Backend::Command && open_command.is_empty() {
            return Err(err(
                fw.open_command.as_ref().and_then(span_of),
                "firewall.open_command",
                "the command backend needs open_command = [\"/path/to/program\", \"{ip}\", ...]"
                    .into(),
            ));
        }
        for (key, cmd, v) in [
            ("firewall.open_command", &open_command, &fw.open_command),
            ("firewall.close_command", &close_command, &fw.close_command),
        ] {
            if let Some(prog) = cmd.first() {
                if prog.is_empty() || prog.contains('{') {
                    return Err(err(
                        v.as_ref().and_then(span_of),
                        key,
                        "the first element must be a program path, not a placeholder".into(),
                    ));
                }
            }
        }

        if *fw.lease.get_ref() == LeaseKind::Connection && fw.backend != Backend::Nftables {
            return Err(err(
                span_of(&fw.lease),
                "firewall.lease",
                "\"connection\" needs backend = \"nftables\" (the kernel ends the lease on the first connection)".into(),
            ));
        }
        let concurrency = *fw.command_concurrency.get_ref();
        if !(1..=64).contains(&concurrency) {
            return Err(err(
                span_of(&fw.command_concurrency),
                "firewall.command_concurrency",
                format!("must be between 1 and 64, found {concurrency}"),
            ));
        }
        let user = match &raw.user {
            Some(u) if !is_simple_name(u.get_ref(), 32) => {
                return Err(err(
                    span_of(u),
                    "user",
                    format!("'{}' is not a user name", u.get_ref()),
                ));
            }
            Some(u) => Some(u.get_ref().clone()),
            None => None,
        };

        let actions = parse_actions(&raw.actions, &err)?;

        let mut clients = Vec::with_capacity(raw.clients.len());
        let mut by_key: HashMap<PublicKey, String> = HashMap::new();
        let mut by_name: HashMap<String, ()> = HashMap::new();
        for c in &raw.clients {
            let name = c.name.get_ref().clone();
            if !is_simple_name(&name, 64) {
                return Err(err(
                    span_of(&c.name),
                    "client.name",
                    format!("'{name}' is not a valid name (letters, digits, ., _ and -)"),
                ));
            }
            if name.starts_with('-') {
                // `{client}` alone in an action's argv element would pass for an option.
                return Err(err(
                    span_of(&c.name),
                    "client.name",
                    format!("'{name}' is not a valid name: it may not start with '-'"),
                ));
            }
            if by_name.insert(name.clone(), ()).is_some() {
                return Err(err(
                    span_of(&c.name),
                    "client.name",
                    format!("'{name}' is used by two clients"),
                ));
            }
            let public_key = PublicKey::from_base64(c.public_key.get_ref()).map_err(|e| {
                err(
                    span_of(&c.public_key),
                    "client.public_key",
                    format!("client '{name}': {e}"),
                )
            })?;
            if let Some(other) = by_key.insert(public_key, name.clone()) {
                return Err(err(
                    span_of(&c.public_key),
                    "client.public_key",
                    format!("clients '{other}' and '{name}' have the same public key"),
                ));
            }
            let allow = match &c.allow {
                Some(a) => {
                    let list = sesame_proto::profile::parse_services_unbounded(a.get_ref())
                        .map_err(|e| {
                            err(span_of(a), "client.allow", format!("client '{name}': {e}"))
                        })?;
                    for s in &list {
                        if !protect.contains(s) {
                            return Err(err(
                                span_of(a),
                                "client.allow",
                                format!("client '{name}': {s} is not in firewall.protect"),
                            ));
                        }
                    }
                    list
                }
                None => protect.clone(),
            };
            let source = match &c.source {
                Some(s) => {
                    let mut out = Vec::new();
                    for p in s.get_ref() {
                        let net = p
                            .parse::<IpNet>()
                            .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map_err(|_| err(span_of(s), "client.source", format!("client '{name}': '{p}' is not an address prefix like 198.18.0.0/15 or 2001:db8::/32")))?;
                        out.push(net.trunc());
                    }
                    out
                }
                None => Vec::new(),
            };
            let expires = match &c.expires {
                Some(v) => {
                    let text = match v.get_ref() {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Datetime(d) => toml_datetime_text(*d),
                        other => other.to_string(),
                    };
                    Some(sesame_cli::rfc3339::parse(&text).map_err(|e| {
                        err(
                            span_of(v),
                            "client.expires",
                            format!("client '{name}': {e}"),
                        )
                    })?)
                }
                None => None,
            };
            let client_requires = match &c.require_address {
                Some(r) if *r.get_ref() && payload == PayloadMode::None => {
                    return Err(err(
                        span_of(r),
                        "client.require_address",
                        format!(
                            "client '{name}': needs a payload to carry the address, but knock.payload is \"none\""
                        ),
                    ));
                }
                Some(r) => *r.get_ref(),
                None => require_address,
            };
            let prefix = |v: &Option<Spanned<u8>>, key: &str, least: u8, full: u8| {
                let Some(p) = v else { return Ok(full) };
                let n = *p.get_ref();
                if n < least || n > full {
                    return Err(err(
                        span_of(p),
                        key,
                        format!(
                            "client '{name}': {n} is not a prefix length from {least} to {full}"
                        ),
                    ));
                }
                if n < full && fw.backend == Backend::Command {
                    return Err(err(
                        span_of(p),
                        key,
                        format!(
                            "client '{name}': a lease for a block of addresses needs the nftables backend (the command backend's hooks open one address)"
                        ),
                    ));
                }
                Ok(n)
            };
            let lease_prefix_v4 = prefix(&c.lease_prefix_v4, "client.lease_prefix_v4", 24, 32)?;
            let lease_prefix_v6 = prefix(&c.lease_prefix_v6, "client.lease_prefix_v6", 48, 128)?;
            let mut allowed_actions: Vec<String> = Vec::new();
            if let Some(list) = &c.actions {
                for a in list.get_ref() {
                    if !actions.iter().any(|x| x.name == *a) {
                        let known: Vec<&str> = actions.iter().map(|x| x.name.as_str()).collect();
                        return Err(err(
                            span_of(list),
                            "client.actions",
                            format!(
                                "client '{name}': there is no [[action]] named '{a}' (actions: {})",
                                if known.is_empty() {
                                    "none".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        ));
                    }
                    if !allowed_actions.contains(a) {
                        allowed_actions.push(a.clone());
                    }
                }
                if !allowed_actions.is_empty() && payload == PayloadMode::None {
                    return Err(err(
                        span_of(list),
                        "client.actions",
                        format!(
                            "client '{name}': an action is named in the payload, but knock.payload is \"none\""
                        ),
                    ));
                }
            }
            clients.push(ClientConfig {
                name,
                public_key,
                psk_file: c.psk_file.as_deref().map(resolve),
                allow,
                source,
                allow_other_ip: c.allow_other_ip,
                require_address: client_requires,
                expires,
                lease_prefix_v4,
                lease_prefix_v6,
                actions: allowed_actions,
            });
        }

        let state_sync = match &raw.state_sync {
            None => StateSync::Grant,
            Some(v) => match v.get_ref().as_str() {
                "grant" => StateSync::Grant,
                "fence" => StateSync::Fence,
                other => {
                    return Err(err(
                        Some(v.span()),
                        "state_sync",
                        format!("'{other}' is not \"grant\" or \"fence\""),
                    ));
                }
            },
        };
        let metrics_listen = match &raw.metrics.listen {
            None => None,
            Some(l) => Some(l.get_ref().parse::<std::net::SocketAddr>().map_err(|_| {
                err(
                    Some(l.span()),
                    "metrics.listen",
                    format!(
                        "'{}' is not an address and port (for example \"127.0.0.1:9811\" or \"[::1]:9811\")",
                        l.get_ref()
                    ),
                )
            })?),
        };
        Ok(Config {
            path: path.to_path_buf(),
            private_key_file: resolve(raw.private_key_file.get_ref()),
            state_dir: resolve(&raw.state_dir),
            state_sync,
            interfaces,
            control_socket: resolve(&raw.control_socket),
            user,
            knock: KnockConfig {
                params,
                skew_steps,
                timeout_ms,
                payload,
                require_address,
                max_ahead_ms,
                x25519_per_client_per_second: x25519_rate,
            },
            firewall: FirewallConfig {
                backend: fw.backend,
                lease: *fw.lease.get_ref(),
                table: fw.table.get_ref().clone(),
                nft: PathBuf::from(&fw.nft),
                netlink: fw.netlink,
                protect,
                lease_seconds,
                open_command,
                close_command,
                command_timeout_ms: fw.command_timeout_ms.clamp(100, 600_000),
                command_cooldown_ms: fw.command_cooldown_ms.min(3_600_000),
                command_burst: fw.command_burst.clamp(1, 1000),
                command_concurrency: concurrency,
            },
            metrics_listen,
            clients,
            actions,
        })
    }

    /// The argument rules of the actions a client may run (for the tracker's policy).
    pub fn allowed_actions(
        &self,
        client: &ClientConfig,
    ) -> Vec<sesame_proto::action::AllowedAction> {
        client
            .actions
            .iter()
            .filter_map(|n| self.actions.iter().find(|a| a.name == *n))
            .map(|a| sesame_proto::action::AllowedAction {
                name: a.name.clone(),
                argument: a.argument.clone(),
            })
            .collect()
    }

    /// The action named `name`.
    pub fn action(&self, name: &str) -> Option<&ActionConfig> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// The block sizes the clients' leases use (`lease_prefix_v4`/`_v6`; 32 and 128 included).
    pub fn lease_prefixes(&self) -> std::collections::BTreeSet<u8> {
        self.clients
            .iter()
            .flat_map(|c| [c.lease_prefix_v4, c.lease_prefix_v6])
            .collect()
    }

    /// Reads the server key and the clients' PSKs (refusing files that group or others can
    /// read), and checks that every client key works with the server key.
    pub fn load_secrets(&self) -> Result<Secrets, ConfigFileError> {
        let fail = |key: &str, message: String| ConfigFileError {
            path: self.path.clone(),
            error: ConfigError {
                line: None,
                key: Some(key.to_owned()),
                message,
            },
        };
        let server_key = sesame_keys::read_private_key_file_with(
            &self.private_key_file,
            sesame_keys::Links::Refuse,
        )
        .map_err(|e| fail("private_key_file", e.to_string()))?;
        let mut psks = Vec::with_capacity(self.clients.len());
        // One X25519 per client: spread over the cores (minutes at 1 000 000 on one).
        let low_order = par_map(self.clients.len(), |i| {
            server_key
                .diffie_hellman(&self.clients[i].public_key)
                .is_err()
        });
        for (c, low_order) in self.clients.iter().zip(low_order) {
            if low_order {
                return Err(fail(
                    "client.public_key",
                    format!("client '{}': the key is a low-order point", c.name),
                ));
            }
            psks.push(match &c.psk_file {
                Some(p) => Some(
                    sesame_keys::read_psk_file_with(p, sesame_keys::Links::Refuse).map_err(
                        |e| fail("client.psk_file", format!("client '{}': {e}", c.name)),
                    )?,
                ),
                None => None,
            });
        }
        Ok(Secrets { server_key, psks })
    }

    /// The client profile TOML for `name`, as `sesame open --profile` reads it.
    pub fn export_profile(
        &self,
        name: &str,
        host: &str,
        server_public_key: PublicKey,
    ) -> Option<String> {
        let c = self.clients.iter().find(|c| c.name == name)?;
        let profile = sesame_proto::Profile {
            host: host.to_owned(),
            server_public_key,
            private_key_file: PathBuf::from(format!("~/.config/sesame/{name}.key")),
            psk_file: c
                .psk_file
                .as_ref()
                .map(|_| PathBuf::from(format!("~/.config/sesame/{name}.psk"))),
            params: self.knock.params.clone(),
            payload: self.knock.payload,
            stun: None,
            bind_address: true,
            lease: self.firewall.lease,
            open: c
                .allow
                .iter()
                .take(sesame_proto::wire::MAX_SERVICES)
                .copied()
                .collect(),
        };
        Some(profile.to_toml())
    }
}

/// `f(0)`, …, `f(n - 1)` in order, computed on every core (`std::thread::scope`, one block of
/// indices per thread): the per-client key work of a large configuration (an X25519 each, 8
/// minutes for 1 000 000 clients on one core of a busy machine). Small counts stay on this
/// thread.
pub(crate) fn par_map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if threads < 2 || n < 1024 {
        return (0..n).map(f).collect();
    }
    let block = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..n)
            .step_by(block)
            .map(|lo| s.spawn(move || (lo..n.min(lo + block)).map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(n);
        for part in parts {
            out.extend(
                part.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        out
    })
}

#[cfg(test)]
mod par_map_tests {
    #[test]
    fn par_map_keeps_the_order_on_every_core() {
        for n in [0, 1, 1023, 1024, 1025, 10_007] {
            let v = super::par_map(n, |i| i * 3);
            assert_eq!(v, (0..n).map(|i| i * 3).collect::<Vec<_>>());
        }
    }
}

#[cfg(test)]
mod read_cap_tests {
    use super::*;

    /// A valid configuration of exactly `total` bytes whose one `[[client]]` comes after a
    /// comment that pads it, so that a file cut anywhere in the padding loses the client.
    fn padded_config(dir: &Path, total: u64) -> PathBuf {
        let key = PrivateKey::generate();
        let key_file = dir.join("server.key");
        std::fs::write(&key_file, format!("{}\n", key.to_base64().as_str())).unwrap();
        let head = format!(
            "private_key_file = \"{}\"\nstate_dir = \"{}\"\n\n[firewall]\nbackend = \"log\"\nprotect = [\"tcp/22\"]\n",
            key_file.display(),
            dir.join("state").display()
        );
        let tail = format!(
            "\n[[client]]\nname = \"last\"\npublic_key = \"{}\"\n",
            PrivateKey::generate().public_key().to_base64()
        );
        let fixed = (head.len() + tail.len() + 2) as u64;
        let pad = usize::try_from(total - fixed).unwrap();
        let mut text = String::with_capacity(total as usize);
        text.push_str(&head);
        text.push('#');
        text.push_str(&"x".repeat(pad));
        text.push('\n');
        text.push_str(&tail);
        assert_eq!(text.len() as u64, total);
        let path = dir.join("sesamed.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sesame-readcap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_file_one_byte_over_the_cap_is_refused_by_its_size() {
        let dir = temp_dir("over");
        let path = dir.join("sesamed.toml");
        // Sparse: no disk space, and never read.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_CONFIG_BYTES + 1)
            .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            e,
            format!(
                "{}: the file is 268435457 bytes, more than the 268435456 bytes (256 MiB) a configuration may have",
                path.display()
            )
        );
    }

    #[test]
    fn a_file_at_the_cap_is_read_whole() {
        // Read, not parsed: parsing 256 MiB takes seconds in a debug build; the_cap_is_exact
        // parses a file at its cap.
        let dir = temp_dir("at");
        let path = padded_config(&dir, MAX_CONFIG_BYTES);
        let text = read_config_text(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        let text = text.unwrap();
        assert_eq!(text.len() as u64, MAX_CONFIG_BYTES);
        assert!(text.ends_with("\"\n") && text.contains("\n[[client]]\nname = \"last\"\n"));
    }

    #[test]
    fn the_cap_is_exact() {
        let dir = temp_dir("small");
        let path = padded_config(&dir, 4096);
        let text = read_text_capped(&path, 4096);
        let e = read_text_capped(&path, 4095).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let config = Config::parse(&text.unwrap(), &path).unwrap();
        assert_eq!(config.clients.len(), 1);
        assert_eq!(config.clients[0].name, "last");
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(
            e.to_string()
                .contains("4096 bytes, more than the 4095 bytes")
        );
    }
}

#[cfg(test)]
mod control_socket_tests {
    use super::*;

    fn socket_of(tag: &str, text: &str) -> Result<PathBuf, String> {
        let dir = std::env::temp_dir().join(format!("sesame-socket-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("server.key");
        std::fs::write(
            &key_file,
            format!("{}\n", PrivateKey::generate().to_base64().as_str()),
        )
        .unwrap();
        let path = dir.join("sesamed.toml");
        std::fs::write(
            &path,
            text.replace("KEY_FILE", &key_file.display().to_string()),
        )
        .unwrap();
        let fast = Config::control_socket_of(&path).map_err(|e| e.to_string());
        // Whatever the shortcut finds is what the whole load finds.
        if let Ok(socket) = &fast {
            assert_eq!(
                socket,
                &Config::load(&path).unwrap().control_socket,
                "{tag}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        fast.map(|p| p.strip_prefix(&dir).map(Path::to_path_buf).unwrap_or(p))
    }

    const REST: &str = "\n[firewall]\nbackend = \"log\"\nprotect = [\"tcp/22\"]\n\n[[client]]\nname = \"c\"\npublic_key = \"uJeWEQ0M8TQ6FOs7+mpPb+JWE8YZ1u5BxYYeWTqUkVs=\"\n";

    #[test]
    fn the_control_socket_is_read_from_the_keys_before_the_first_table() {
        let head = "private_key_file = \"KEY_FILE\"\nstate_dir = \"state\"\n";
        assert_eq!(
            socket_of("default", &format!("{head}{REST}")),
            Ok(PathBuf::from("/run/sesame/sesamed.sock"))
        );
        assert_eq!(
            socket_of(
                "relative",
                &format!("{head}control_socket = \"run/s.sock\"\n{REST}")
            ),
            Ok(PathBuf::from("run/s.sock"))
        );
        assert_eq!(
            socket_of(
                "absolute",
                &format!("control_socket = \"/run/x/s.sock\"\n{head}{REST}")
            ),
            Ok(PathBuf::from("/run/x/s.sock"))
        );
        // A top-level array whose lines start with `[`: the text before its first such line
        // does not parse, so the whole file is read.
        assert_eq!(
            socket_of(
                "array",
                &format!(
                    "{head}interfaces = [\n[\"lo\"],\n]\ncontrol_socket = \"/run/y.sock\"\n{REST}"
                )
            )
            .map_err(|e| e.contains("sesamed.toml: line 4: invalid type: sequence")),
            Err(true),
            "an array of arrays is the whole load's error"
        );
        assert_eq!(
            socket_of(
                "array-ok",
                &format!(
                    "{head}interfaces = [\n\"lo\",\n]\ncontrol_socket = \"/run/y.sock\"\n{REST}"
                )
            ),
            Ok(PathBuf::from("/run/y.sock"))
        );
        // Not a string: the whole load's error, naming the key.
        let e = socket_of("number", &format!("{head}control_socket = 7\n{REST}")).unwrap_err();
        assert!(e.contains("control_socket"), "{e}");
    }
}

#[cfg(test)]
mod expires_tests {
    use super::*;

    fn expires_of(expires: &str) -> Result<Option<UnixMillis>, String> {
        let dir = std::env::temp_dir().join(format!("sesame-expires-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("server.key");
        let key = PrivateKey::generate();
        std::fs::write(&key_file, format!("{}\n", key.to_base64().as_str())).unwrap();
        let text = format!(
            "private_key_file = \"{}\"\nstate_dir = \"{}\"\n\n[firewall]\nbackend = \"log\"\nprotect = [\"tcp/22\"]\n\n[[client]]\nname = \"c\"\npublic_key = \"{}\"\nexpires = {expires}\n",
            key_file.display(),
            dir.join("state").display(),
            PrivateKey::generate().public_key().to_base64()
        );
        let config = Config::parse(&text, &dir.join("sesamed.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
        config
            .map(|c| c.clients[0].expires)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_unquoted_time_reads_as_its_rfc3339_text() {
        let t = Some(UnixMillis(1_893_456_000_000)); // 2030-01-01T00:00:00Z
        assert_eq!(expires_of("\"2030-01-01T00:00:00Z\""), Ok(t));
        assert_eq!(expires_of("2030-01-01T00:00:00Z"), Ok(t));
        // No seconds (TOML 1.1) and a zero fraction: the seconds are 0, as before.
        assert_eq!(expires_of("2030-01-01T00:00Z"), Ok(t));
        assert_eq!(expires_of("2030-01-01T00:00:00.000Z"), Ok(t));
        assert_eq!(
            expires_of("2030-01-01T01:00:00.5+01:00"),
            Ok(Some(UnixMillis(1_893_456_000_500)))
        );
        // Without an offset it is no RFC 3339 time; the message shows the seconds.
        let e = expires_of("2030-01-01T00:00").unwrap_err();
        assert!(
            e.contains("client.expires: client 'c': '2030-01-01T00:00:00' is not an RFC 3339 time"),
            "{e}"
        );
    }
}
