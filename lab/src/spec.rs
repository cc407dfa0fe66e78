//! The spec of a deployment: the daemon's configuration and client profiles, written as TOML.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `s` as a TOML string (quoted and escaped by `toml_edit`).
fn toml_str(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

/// `items` as a TOML array of strings (`["a", "b"]`).
fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<toml_edit::Array>()
        .to_string()
}

/// The `[knock]` parameters, shared by the daemon config and client profiles.
#[derive(Clone, Debug)]
pub struct KnockSpec {
    /// `step_seconds`.
    pub step_seconds: u32,
    /// `skew_steps` (server only).
    pub skew_steps: u32,
    /// `length`.
    pub length: u32,
    /// `port_range`.
    pub port_range: (u16, u16),
    /// `exclude_ports`.
    pub exclude_ports: Vec<u16>,
    /// `protocol`: udp, tcp, mixed.
    pub protocol: String,
    /// `timeout_ms` (server only).
    pub timeout_ms: u64,
    /// `payload`: required, optional, none.
    pub payload: String,
    /// Raw TOML lines appended to `[knock]`, for keys this spec lacks.
    pub extra: String,
}

impl Default for KnockSpec {
    fn default() -> Self {
        KnockSpec {
            step_seconds: 30,
            skew_steps: 1,
            length: 3,
            port_range: (20000, 21999),
            exclude_ports: Vec::new(),
            protocol: "udp".to_owned(),
            timeout_ms: 5000,
            payload: "required".to_owned(),
            extra: String::new(),
        }
    }
}

/// One `[[client]]` of the daemon config.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// `name`.
    pub name: String,
    /// `public_key`.
    pub public_key: String,
    /// `psk_file`.
    pub psk_file: Option<PathBuf>,
    /// `allow` (`None`: not written, i.e. every protected service).
    pub allow: Option<Vec<String>>,
    /// `source` (`None`: not written, i.e. any).
    pub source: Option<Vec<String>>,
    /// `allow_other_ip`.
    pub allow_other_ip: bool,
    /// `expires` (RFC 3339).
    pub expires: Option<String>,
    /// Raw TOML lines appended to this `[[client]]`, for keys this spec lacks.
    pub extra: String,
}

impl ClientSpec {
    /// A client with defaults for everything but its name and key.
    pub fn new(name: &str, public_key: &str) -> ClientSpec {
        ClientSpec {
            name: name.to_owned(),
            public_key: public_key.to_owned(),
            psk_file: None,
            allow: None,
            source: None,
            allow_other_ip: false,
            expires: None,
            extra: String::new(),
        }
    }
}

/// The daemon's configuration file, with every knob.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    /// `private_key_file`.
    pub private_key_file: PathBuf,
    /// `state_dir`.
    pub state_dir: String,
    /// `interfaces`.
    pub interfaces: Vec<String>,
    /// `control_socket`.
    pub control_socket: String,
    /// `[knock]`.
    pub knock: KnockSpec,
    /// `[firewall] backend`.
    pub backend: String,
    /// `[firewall] table`.
    pub table: String,
    /// `[firewall] protect`.
    pub protect: Vec<String>,
    /// `[firewall] lease_seconds`.
    pub lease_seconds: u32,
    /// `[firewall] open_command`.
    pub open_command: Option<Vec<String>>,
    /// `[firewall] close_command`.
    pub close_command: Option<Vec<String>>,
    /// `[[client]]`.
    pub clients: Vec<ClientSpec>,
    /// Raw TOML appended to the top level (before any table), for keys this spec lacks.
    pub extra_top: String,
    /// Raw TOML lines appended to `[firewall]`, for keys this spec lacks.
    pub extra_firewall: String,
}

impl DaemonSpec {
    /// Test defaults: knock range 20000–21999, length 3, UDP, payload required, nftables
    /// protecting tcp/22 with 3-second leases.
    pub fn new(private_key_file: &Path) -> DaemonSpec {
        DaemonSpec {
            private_key_file: private_key_file.to_path_buf(),
            state_dir: "state".to_owned(),
            interfaces: vec!["any".to_owned()],
            control_socket: "sesamed.sock".to_owned(),
            knock: KnockSpec::default(),
            backend: "nftables".to_owned(),
            table: "sesame".to_owned(),
            protect: vec!["tcp/22".to_owned()],
            lease_seconds: 3,
            open_command: None,
            close_command: None,
            clients: Vec::new(),
            extra_top: String::new(),
            extra_firewall: String::new(),
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let k = &self.knock;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "private_key_file = {}",
            toml_str(&self.private_key_file.to_string_lossy())
        );
        let _ = writeln!(s, "state_dir = {}", toml_str(&self.state_dir));
        let _ = writeln!(s, "interfaces = {}", toml_list(&self.interfaces));
        let _ = writeln!(s, "control_socket = {}", toml_str(&self.control_socket));
        s.push_str(&self.extra_top);
        let _ = writeln!(s, "\n[knock]");
        let _ = writeln!(s, "step_seconds = {}", k.step_seconds);
        let _ = writeln!(s, "skew_steps = {}", k.skew_steps);
        let _ = writeln!(s, "length = {}", k.length);
        let _ = writeln!(s, "port_range = [{}, {}]", k.port_range.0, k.port_range.1);
        let _ = writeln!(s, "exclude_ports = {:?}", k.exclude_ports);
        let _ = writeln!(s, "protocol = {}", toml_str(&k.protocol));
        let _ = writeln!(s, "timeout_ms = {}", k.timeout_ms);
        let _ = writeln!(s, "payload = {}", toml_str(&k.payload));
        s.push_str(&k.extra);
        let _ = writeln!(s, "\n[firewall]");
        let _ = writeln!(s, "backend = {}", toml_str(&self.backend));
        let _ = writeln!(s, "table = {}", toml_str(&self.table));
        let _ = writeln!(s, "protect = {}", toml_list(&self.protect));
        let _ = writeln!(s, "lease_seconds = {}", self.lease_seconds);
        if let Some(c) = &self.open_command {
            let _ = writeln!(s, "open_command = {}", toml_list(c));
        }
        if let Some(c) = &self.close_command {
            let _ = writeln!(s, "close_command = {}", toml_list(c));
        }
        s.push_str(&self.extra_firewall);
        for c in &self.clients {
            let _ = writeln!(s, "\n[[client]]");
            let _ = writeln!(s, "name = {}", toml_str(&c.name));
            let _ = writeln!(s, "public_key = {}", toml_str(&c.public_key));
            if let Some(p) = &c.psk_file {
                let _ = writeln!(s, "psk_file = {}", toml_str(&p.to_string_lossy()));
            }
            if let Some(a) = &c.allow {
                let _ = writeln!(s, "allow = {}", toml_list(a));
            }
            if let Some(src) = &c.source {
                let _ = writeln!(s, "source = {}", toml_list(src));
            }
            let _ = writeln!(s, "allow_other_ip = {}", c.allow_other_ip);
            if let Some(e) = &c.expires {
                let _ = writeln!(s, "expires = {}", toml_str(e));
            }
            s.push_str(&c.extra);
        }
        s
    }

    /// A client profile matching this config's knock parameters.
    pub fn profile(&self, host: &str, server_public_key: &str, key: &Path) -> ProfileSpec {
        ProfileSpec {
            host: host.to_owned(),
            server_public_key: server_public_key.to_owned(),
            private_key_file: key.to_path_buf(),
            psk_file: None,
            knock: self.knock.clone(),
            open: Vec::new(),
            stun: None,
            bind_address: true,
        }
    }
}

/// A client profile (`sesame open --profile`).
#[derive(Clone, Debug)]
pub struct ProfileSpec {
    /// `host`.
    pub host: String,
    /// `server_public_key`.
    pub server_public_key: String,
    /// `private_key_file`.
    pub private_key_file: PathBuf,
    /// `psk_file`.
    pub psk_file: Option<PathBuf>,
    /// Knock parameters (the server-only ones are not written).
    pub knock: KnockSpec,
    /// `open`.
    pub open: Vec<String>,
    /// `stun` (`host:port`).
    pub stun: Option<String>,
    /// `bind_address` (written only when false).
    pub bind_address: bool,
}

impl ProfileSpec {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let k = &self.knock;
        let mut s = String::new();
        let _ = writeln!(s, "host = {}", toml_str(&self.host));
        let _ = writeln!(
            s,
            "server_public_key = {}",
            toml_str(&self.server_public_key)
        );
        let _ = writeln!(
            s,
            "private_key_file = {}",
            toml_str(&self.private_key_file.to_string_lossy())
        );
        if let Some(p) = &self.psk_file {
            let _ = writeln!(s, "psk_file = {}", toml_str(&p.to_string_lossy()));
        }
        let _ = writeln!(s, "step_seconds = {}", k.step_seconds);
        let _ = writeln!(s, "length = {}", k.length);
        let _ = writeln!(s, "port_range = [{}, {}]", k.port_range.0, k.port_range.1);
        let _ = writeln!(s, "exclude_ports = {:?}", k.exclude_ports);
        let _ = writeln!(s, "protocol = {}", toml_str(&k.protocol));
        let _ = writeln!(s, "payload = {}", toml_str(&k.payload));
        let _ = writeln!(s, "open = {}", toml_list(&self.open));
        if let Some(stun) = &self.stun {
            let _ = writeln!(s, "stun = {}", toml_str(stun));
        }
        if !self.bind_address {
            let _ = writeln!(s, "bind_address = false");
        }
        s
    }
}

/// Rewrites the `private_key_file = ...` line of a profile (as printed by
/// `sesamed export-client`) to point at `key`. Panics if there is no such line.
pub fn set_profile_key(profile: &str, key: &Path) -> String {
    let mut found = false;
    let mut out = String::new();
    for line in profile.lines() {
        if line.trim_start().starts_with("private_key_file") && line.contains('=') {
            found = true;
            let _ = writeln!(
                out,
                "private_key_file = {}",
                toml_str(&key.to_string_lossy())
            );
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        found,
        "no private_key_file line in the exported profile:\n{profile}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::{toml_list, toml_str};

    /// What the writers produce is TOML that reads back as the same strings, also for quotes,
    /// backslashes and control characters; plain strings and lists look as a person writes them.
    #[test]
    fn strings_and_lists_are_escaped_toml() {
        assert_eq!(toml_str("required"), "\"required\"");
        assert_eq!(toml_list(&["tcp/22", "udp/53"]), "[\"tcp/22\", \"udp/53\"]");
        assert_eq!(toml_list::<&str>(&[]), "[]");
        for s in [
            "plain",
            "a \"quoted\" word",
            "back\\slash",
            "tab\there",
            "new\nline",
            "\u{7f}",
        ] {
            let doc = format!("s = {}\nl = {}\n", toml_str(s), toml_list(&[s, "x"]));
            let parsed: toml_edit::DocumentMut =
                doc.parse().unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(parsed["s"].as_str(), Some(s), "{doc}");
            assert_eq!(parsed["l"][0].as_str(), Some(s), "{doc}");
        }
    }
}
