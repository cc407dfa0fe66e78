//! The control socket: a Unix socket (mode 0600) answering one request per connection.
//!
//! A request is one line: `status` (the status as JSON) or `reload`. The answer is one JSON
//! document followed by a newline; the server then closes the connection.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// A lease as `sesamed status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The client.
    pub client: String,
    /// The address let in.
    pub address: String,
    /// The service, e.g. `tcp/22`.
    pub service: String,
    /// Seconds until it ends.
    pub seconds_left: u64,
}

/// A client's last knock.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientStatus {
    /// The client.
    pub name: String,
    /// When it last knocked (RFC 3339), if it did since sesamed started.
    pub last_knock: Option<String>,
    /// From where.
    pub last_source: Option<String>,
    /// `granted`, `firewall_failed` (granted, but the firewall refused it),
    /// `state_write_failed`, or the reason code of the refusal.
    pub last_result: Option<String>,
}

/// An `[[action]]` and its last run, as `sesamed status` shows them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActionStatus {
    /// The action.
    pub name: String,
    /// The account it runs as.
    pub user: String,
    /// Runs going now.
    pub running: u64,
    /// When its last run started (RFC 3339), if it ran since sesamed started.
    pub last_run: Option<String>,
    /// For which client.
    pub last_client: Option<String>,
    /// From which source address that client's knock came.
    pub last_source: Option<String>,
    /// How it ended: `exited`, `killed`, `failed`, or `running`.
    pub last_outcome: Option<String>,
    /// Its exit status, when it exited.
    pub last_code: Option<u8>,
    /// How long it ran, in milliseconds, once it ended.
    pub last_ms: Option<u64>,
    /// Knocks for it by outcome since sesamed started: `exited_zero`, `exited_nonzero`,
    /// `killed` (at its timeout), `failed` (it never ran: no runner, the program could not
    /// start, the runner refused it), and not run: `cooldown` (the client's), `busy`
    /// (`max_concurrent`), `other_ip` (the knock came from another address than the one its
    /// payload names).
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

/// The action runner (`sesamed action-runner`), as `sesamed status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunnerStatus {
    /// `running`, or `exited` (then no action runs until a reload starts a new runner or
    /// sesamed restarts).
    pub state: String,
    /// Its process id, while it runs.
    pub pid: Option<u32>,
    /// When it exited (RFC 3339).
    pub since: Option<String>,
}

/// Counters since sesamed started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Packets that passed the capture filter.
    pub packets_seen: u64,
    /// Packets that passed the capture filter but were dropped by the capture socket, its
    /// queue full (`PACKET_STATISTICS` `tp_drops`, read every second): sesamed did not read
    /// them fast enough, and never saw them.
    #[serde(default)]
    pub capture_drops: u64,
    /// Packets to a port of the knock range.
    pub packets_in_range: u64,
    /// Progress resets (stray in-range packets).
    pub resets: u64,
    /// Sequences completed.
    pub sequences_completed: u64,
    /// Payload datagrams examined.
    pub payloads_seen: u64,
    /// Payloads whose gate MAC had been seen before: refused before any key was used.
    #[serde(default)]
    pub replays_cached: u64,
    /// Payloads that passed the MAC gate.
    #[serde(default)]
    pub gate_passed: u64,
    /// X25519 operations (payloads that passed the MAC gate and the per-client cap).
    pub x25519: u64,
    /// Payloads that opened (decrypted and decoded); policy may still refuse them.
    pub payloads_accepted: u64,
    /// Completed sequences that got no payload within `timeout_ms`.
    #[serde(default)]
    pub payloads_missing: u64,
    /// Grants decided (before the firewall).
    pub grants: u64,
    /// Leases opened in the firewall.
    pub leases_opened: u64,
    /// Leases refreshed by a new knock (once less than half of the lease was left).
    pub leases_refreshed: u64,
    /// Knocks for a lease with more than half of its time left (nothing to change).
    #[serde(default)]
    pub leases_kept: u64,
    /// Firewall actions that failed.
    pub firewall_failures: u64,
    /// New leases not opened because the client's hook cooldown had not passed.
    pub hook_cooldown_skips: u64,
    /// Grants refused because the replay state could not be written.
    pub state_write_failures: u64,
    /// Sources evicted from the tracker by its cap.
    pub sources_evicted: u64,
    /// Sources tracked now.
    pub sources_tracked: u64,
    /// Gate MACs remembered now (datagrams seen while their step is in the window).
    #[serde(default)]
    pub macs_remembered: u64,
    /// Rejections by reason code.
    pub rejections: std::collections::BTreeMap<String, u64>,
}

/// The `[knock]` settings every client profile carries, as the running sesamed uses them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KnockStatus {
    /// `step_seconds`.
    pub step_seconds: u32,
    /// `length`.
    pub length: u8,
    /// `port_range`.
    pub port_range: [u16; 2],
    /// `exclude_ports`.
    pub exclude_ports: Vec<u16>,
    /// `protocol`.
    pub protocol: String,
    /// `payload`.
    pub payload: String,
    /// `[firewall] lease` (profiles carry it too).
    #[serde(default)]
    pub lease: String,
}

impl KnockStatus {
    /// The settings of a configuration.
    pub fn of(config: &crate::config::Config) -> Self {
        let p = &config.knock.params;
        KnockStatus {
            step_seconds: p.step_seconds,
            length: p.length,
            port_range: [p.port_lo, p.port_hi],
            exclude_ports: p.exclude_ports().to_vec(),
            protocol: p.protocol.to_string(),
            payload: config.knock.payload.to_string(),
            lease: config.firewall.lease.to_string(),
        }
    }

    /// The keys whose values differ (`knock.port_range`, `firewall.lease`, …).
    pub fn differences(&self, other: &KnockStatus) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.step_seconds != other.step_seconds {
            out.push("knock.step_seconds");
        }
        if self.length != other.length {
            out.push("knock.length");
        }
        if self.port_range != other.port_range {
            out.push("knock.port_range");
        }
        if self.exclude_ports != other.exclude_ports {
            out.push("knock.exclude_ports");
        }
        if self.protocol != other.protocol {
            out.push("knock.protocol");
        }
        if self.payload != other.payload {
            out.push("knock.payload");
        }
        // A daemon from before profiles carried `lease` reports none: no difference then.
        if self.lease != other.lease && !self.lease.is_empty() && !other.lease.is_empty() {
            out.push("firewall.lease");
        }
        out
    }
}

/// Everything `sesamed status` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// sesamed's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Process id.
    pub pid: u32,
    /// The configuration file.
    pub config: String,
    /// The user and group it runs as (after dropping privileges): the owner its files need.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Its group.
    #[serde(default)]
    pub gid: Option<u32>,
    /// Which server key is in use: the first 8 bytes of the SHA-256 of its public key, in
    /// hex (enough to notice a rotation; keys themselves stay out of status output).
    #[serde(default)]
    pub server_key_id: String,
    /// The `[knock]` settings in use.
    #[serde(default)]
    pub knock: KnockStatus,
    /// Active leases.
    pub leases: Vec<LeaseStatus>,
    /// Clients and their last knock.
    pub clients: Vec<ClientStatus>,
    /// `[[action]]`s and their last run.
    #[serde(default)]
    pub actions: Vec<ActionStatus>,
    /// The action runner; none without actions.
    #[serde(default)]
    pub action_runner: Option<RunnerStatus>,
    /// What the capture filter admits (none from a sesamed before 0.2).
    #[serde(default)]
    pub capture_filter: Option<CaptureFilterStatus>,
    /// Until when (RFC 3339) the rules of a start after a crash hold: payloads that name no
    /// address are refused and, in `optional` mode, a sequence alone opens nothing for a step
    /// that starts before then (none with `payload = "none"`, where they refuse nothing); after
    /// a crash of the machine under `state_sync = "fence"`, every knock stamped before the
    /// fence is refused too. The later of the two; kept across a clean restart as the
    /// snapshot's `after_crash` line. None (null) when no such rule holds: a clean start, or
    /// once the clock has passed it (and from a sesamed before this field).
    #[serde(default)]
    pub after_crash_until: Option<String>,
    /// Counters.
    pub counters: Counters,
}

/// The capture filter in use: which mechanism, and what it admits.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaptureFilterStatus {
    /// `range` (every port of the knock range), `classic` (the live ports, as a classic BPF
    /// program) or `ebpf` (the live ports, in the eBPF filter's bitmap).
    pub kind: String,
    /// One line: how many live ports, and how the filter holds them (or why the whole range).
    pub detail: String,
    /// Whether the eBPF filter was loaded at start (it needs CAP_BPF then; without it, live
    /// ports are filtered only while they fit in a classic program).
    pub ebpf_loaded: bool,
}

/// The answer to `reload`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadResult {
    /// Whether the new configuration is in force.
    pub ok: bool,
    /// What happened (the error when `ok` is false).
    pub message: String,
}

/// Longest request line.
const MAX_REQUEST: usize = 256;

/// Refuses when a daemon answers on the control socket at `path` (another sesamed, whose
/// socket must not be taken over); a socket file nobody answers on is stale.
pub fn ensure_free(path: &Path) -> std::io::Result<()> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => {
            let who = match crate::instance::peer_pid(&stream) {
                Some(pid) if pid > 0 => format!("pid {pid}"),
                _ => "pid unknown".to_owned(),
            };
            Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another sesamed ({who}) answers on it; stop it, or give this one its own control_socket"
                ),
            ))
        }
        Err(_) => Ok(()),
    }
}

/// Which file the bound control socket is, so that only that file is removed.
pub struct SocketFile {
    path: std::path::PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    /// Removes the socket file if it is still the one this daemon created (another daemon may
    /// have replaced it: that one is not ours to remove).
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds the control socket: refuses when another daemon answers on it, removes a stale
/// socket file, creates the parent directory (0700) and binds with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<(UnixListener, SocketFile)> {
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            ensure_free(path)?;
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    // Created with the umask, then restricted before anyone is told the socket exists.
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        },
    ))
}

/// The answer to a request, computed asynchronously (a reload runs `nft`).
pub type Answer = std::pin::Pin<Box<dyn std::future::Future<Output = String>>>;

/// How long a connection may take to send its request line (a busy client may stall for
/// seconds: see [`WRITE_STALL`]).
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// Connections answered at once; more wait in the kernel's backlog. Each holds its answer
/// (`status` of 1 000 000 clients is about 85 MB) until its reader has taken it.
const MAX_CONNECTIONS: usize = 4;

/// Serves requests until the listener fails, each connection in a task of its own (on the
/// current `LocalSet`), so a slow reader of a large answer holds up no other request; `handle`
/// maps a request line to the answer.
pub async fn serve<F>(listener: UnixListener, handle: F)
where
    F: Fn(&str) -> Answer + 'static,
{
    let handle = std::rc::Rc::new(handle);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = std::rc::Rc::clone(&handle);
        tokio::task::spawn_local(async move {
            let _slot = slot;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
            let request = tokio::time::timeout(REQUEST_WAIT, reader.read_line(&mut line)).await;
            let answer = match request {
                Ok(Ok(_)) => handle(line.trim()).await,
                _ => return,
            };
            write_answer(&mut write, &answer, WRITE_STALL).await;
        });
    }
}

/// How long writing an answer may make no progress before the reader is dropped. Generous:
/// a reader only holds its own connection, and a busy reader may take nothing for seconds
/// (`sesamed status` on a 1 000 000-client configuration stalled 1.5–2.3 s inside its first
/// large allocation, the allocator merging the freed parse of the configuration, and a
/// 2-second limit cut its answer at 233 152 bytes).
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Writes `answer` and a newline in 64 KiB pieces, dropping a reader that takes none of a
/// piece for `stall`: a stalled reader does not keep its connection for ever, and a large
/// answer (`status` of 1 000 000 clients is about 85 MB) to a reader that keeps reading is
/// written whole, however busy the machine (a 2-second limit on the whole answer cut it).
async fn write_answer<W: tokio::io::AsyncWrite + Unpin>(
    write: &mut W,
    answer: &str,
    stall: Duration,
) {
    let pieces = answer
        .as_bytes()
        .chunks(1 << 16)
        .chain(std::iter::once(&b"\n"[..]));
    for piece in pieces {
        match tokio::time::timeout(stall, write.write_all(piece)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Sends one request to a running sesamed and returns its answer.
pub fn request(path: &Path, request: &str) -> std::io::Result<String> {
    // The buffer is allocated before connecting: after a large configuration was parsed and
    // freed, the allocator's first large allocation merges the freed pieces (seconds at
    // 1 000 000 clients), and sesamed must not be kept waiting meanwhile, neither for the
    // request nor while it writes the answer.
    let mut answer = String::with_capacity(1 << 20);
    let mut stream = UnixStream::connect(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot reach sesamed at {}: {e} (is it running? are you root?)",
                path.display()
            ),
        )
    })?;
    // sesamed answers once the answer is built: a status or a reload of 1 000 000 clients
    // takes seconds to minutes.
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.write_all(request.as_bytes())?;
    stream.write_all(b"\n")?;
    // One byte more than the cap tells an answer cut short from one that ends there.
    stream
        .take(MAX_ANSWER_BYTES + 1)
        .read_to_string(&mut answer)?;
    if answer.len() as u64 > MAX_ANSWER_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "the answer of sesamed at {} is longer than the {} MiB read from it",
                path.display(),
                MAX_ANSWER_BYTES >> 20
            ),
        ));
    }
    Ok(answer)
}

/// How long [`request`] waits for each piece of the answer (the first comes once sesamed has
/// built it: a reload of 1 000 000 clients reads and checks the whole configuration first).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest answer [`request`] reads: 256 MiB. `status` lists every client (about 85
/// bytes each with 14-character names and no knock yet, 150 with one), so 1 000 000 clients
/// answer 85 to 150 MB.
pub const MAX_ANSWER_BYTES: u64 = 256 << 20;

/// What the running sesamed of `config` (if one answers on its control socket and runs this
/// file) would change at the next reload that clients must know about: other `[knock]`
/// settings, another server key. For `sesamed check`.
pub fn notes_against_running(
    config: &crate::config::Config,
    server_public_key: &sesame_keys::PublicKey,
) -> Vec<String> {
    let Ok(answer) = request(&config.control_socket, "status") else {
        return Vec::new();
    };
    let Ok(running) = serde_json::from_str::<Status>(answer.trim()) else {
        return Vec::new();
    };
    let same_file =
        std::fs::canonicalize(&running.config).ok() == std::fs::canonicalize(&config.path).ok();
    if !same_file {
        return Vec::new();
    }
    let mut notes = Vec::new();
    let names: Vec<&str> = config.clients.iter().map(|c| c.name.as_str()).collect();
    let changed = running.knock.differences(&KnockStatus::of(config));
    if !changed.is_empty() && running.knock != KnockStatus::default() {
        notes.push(format!(
            "the running sesamed (pid {}) uses other settings that profiles carry ({}): after a reload or restart every client needs a new profile (sesamed export-client NAME): {}",
            running.pid,
            changed.join(", "),
            if names.is_empty() { "no clients".to_owned() } else { names.join(", ") }
        ));
    }
    if !running.server_key_id.is_empty() && running.server_key_id != key_id(server_public_key) {
        notes.push(format!(
            "the running sesamed (pid {}) uses another server key: after a reload or restart, profiles exported before carry the old public key; export them again",
            running.pid
        ));
    }
    notes
}

/// The id of a server key that `status` shows (see [`Status::server_key_id`]).
pub fn key_id(key: &sesame_keys::PublicKey) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats the counters in the Prometheus text exposition format.
pub fn prometheus(status: &Status) -> String {
    let c = &status.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP sesamed_{name} {help}\n# TYPE sesamed_{name} {kind}\nsesamed_{name} {value}\n"
        ));
    };
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since sesamed started.",
        status.uptime_seconds,
    );
    metric(
        "packets_seen_total",
        "counter",
        "Packets that passed the capture filter.",
        c.packets_seen,
    );
    metric(
        "capture_drops_total",
        "counter",
        "Packets that passed the capture filter but were dropped by the capture socket (its queue full).",
        c.capture_drops,
    );
    metric(
        "packets_in_range_total",
        "counter",
        "Packets to a port of the knock range.",
        c.packets_in_range,
    );
    metric(
        "resets_total",
        "counter",
        "Knock progress reset by a stray packet.",
        c.resets,
    );
    metric(
        "sequences_completed_total",
        "counter",
        "Knock sequences completed.",
        c.sequences_completed,
    );
    metric(
        "payloads_seen_total",
        "counter",
        "Payload datagrams examined.",
        c.payloads_seen,
    );
    metric(
        "replays_cached_total",
        "counter",
        "Payloads refused because their gate MAC was seen before (no key work).",
        c.replays_cached,
    );
    metric(
        "gate_passed_total",
        "counter",
        "Payloads that passed the MAC gate.",
        c.gate_passed,
    );
    metric(
        "x25519_total",
        "counter",
        "X25519 operations (payloads past the MAC gate and the per-client cap).",
        c.x25519,
    );
    metric(
        "payloads_accepted_total",
        "counter",
        "Payloads that opened (decrypted and decoded); policy may still refuse them.",
        c.payloads_accepted,
    );
    metric(
        "payloads_missing_total",
        "counter",
        "Completed sequences that got no payload within timeout_ms.",
        c.payloads_missing,
    );
    metric("grants_total", "counter", "Grants decided.", c.grants);
    metric(
        "leases_opened_total",
        "counter",
        "Leases opened in the firewall.",
        c.leases_opened,
    );
    metric(
        "leases_refreshed_total",
        "counter",
        "Leases refreshed by a new knock.",
        c.leases_refreshed,
    );
    metric(
        "leases_kept_total",
        "counter",
        "Knocks for a lease with more than half of its time left.",
        c.leases_kept,
    );
    metric(
        "firewall_failures_total",
        "counter",
        "Firewall actions that failed.",
        c.firewall_failures,
    );
    metric(
        "hook_cooldown_skips_total",
        "counter",
        "New leases not opened because of the hook cooldown.",
        c.hook_cooldown_skips,
    );
    metric(
        "state_write_failures_total",
        "counter",
        "Grants refused because replay state could not be written.",
        c.state_write_failures,
    );
    metric(
        "sources_evicted_total",
        "counter",
        "Sources evicted by the tracker's cap.",
        c.sources_evicted,
    );
    metric(
        "sources_tracked",
        "gauge",
        "Sources tracked now.",
        c.sources_tracked,
    );
    metric(
        "macs_remembered",
        "gauge",
        "Gate MACs remembered now.",
        c.macs_remembered,
    );
    metric(
        "leases_active",
        "gauge",
        "Active leases.",
        status.leases.len() as u64,
    );
    out.push_str("# HELP sesamed_rejections_total Knocks refused, by reason.\n# TYPE sesamed_rejections_total counter\n");
    for (reason, n) in &c.rejections {
        out.push_str(&format!(
            "sesamed_rejections_total{{reason=\"{reason}\"}} {n}\n"
        ));
    }
    if !status.actions.is_empty() {
        out.push_str("# HELP sesamed_actions_total Accepted knocks for an action, by outcome: exited_zero, exited_nonzero, killed (at its timeout), failed (never ran), and not run: cooldown, busy (max_concurrent), other_ip (sent from another address than its payload names).\n# TYPE sesamed_actions_total counter\n");
        for a in &status.actions {
            for outcome in ACTION_OUTCOMES {
                let n = a.outcomes.get(outcome).copied().unwrap_or(0);
                out.push_str(&format!(
                    "sesamed_actions_total{{action=\"{}\",outcome=\"{outcome}\"}} {n}\n",
                    a.name
                ));
            }
        }
        out.push_str("# HELP sesamed_actions_running Runs of an action going now.\n# TYPE sesamed_actions_running gauge\n");
        for a in &status.actions {
            out.push_str(&format!(
                "sesamed_actions_running{{action=\"{}\"}} {}\n",
                a.name, a.running
            ));
        }
        let up = status
            .action_runner
            .as_ref()
            .is_some_and(|r| r.state == "running");
        out.push_str(&format!(
            "# HELP sesamed_action_runner_up Whether the action runner runs (0: no action can run).\n# TYPE sesamed_action_runner_up gauge\nsesamed_action_runner_up {}\n",
            u8::from(up)
        ));
    }
    if let Some(f) = &status.capture_filter {
        out.push_str(&format!(
            "# HELP sesamed_capture_filter_info The capture filter in use (range, classic or ebpf).\n# TYPE sesamed_capture_filter_info gauge\nsesamed_capture_filter_info{{filter=\"{}\",ebpf_loaded=\"{}\"}} 1\n",
            f.kind, f.ebpf_loaded
        ));
    }
    out
}

/// The outcomes `sesamed_actions_total` counts (every one is printed, 0 included, so a rate
/// over it works from the first scrape).
pub const ACTION_OUTCOMES: [&str; 7] = [
    "exited_zero",
    "exited_nonzero",
    "killed",
    "failed",
    "cooldown",
    "busy",
    "other_ip",
];

#[cfg(test)]
mod answer_cap_tests {
    use super::*;

    /// Answers one request with `len` bytes; returns what [`request`] made of it.
    fn answer_of(tag: &str, len: u64) -> std::io::Result<String> {
        let dir = std::env::temp_dir().join(format!("sesame-answer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The request first (closing with it unread would reset the connection).
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut line).unwrap();
            let chunk = vec![b'x'; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if stream.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
        });
        let answer = request(&path, "status");
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        answer
    }

    #[test]
    fn a_status_of_a_million_clients_is_read_whole() {
        // 1 000 000 clients without a knock: about 85 MB (the old 16 MiB cap cut it).
        let answer = answer_of("million", 85_000_000).unwrap();
        assert_eq!(answer.len(), 85_000_000);
    }

    /// Serves one connection's answer of `len` bytes with [`write_answer`] (a reader that
    /// takes nothing for `stall` is dropped) to a reader that takes 1 MiB at a time, after
    /// `pause(i)` before the `i`-th; returns how many bytes it got.
    fn reader_gets(len: usize, stall: Duration, pause: impl Fn(usize) -> Duration) -> usize {
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let writer = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut stream = tokio::net::UnixStream::from_std(theirs).unwrap();
                write_answer(&mut stream, &"x".repeat(len), stall).await;
            });
        });
        let mut got = 0;
        let mut buf = vec![0u8; 1 << 20];
        for i in 0.. {
            std::thread::sleep(pause(i));
            let mut piece = 0;
            while piece < buf.len() {
                match ours.read(&mut buf[piece..]) {
                    Ok(0) => break,
                    Ok(n) => piece += n,
                    Err(e) => panic!("{e}"),
                }
            }
            got += piece;
            if piece < buf.len() {
                break;
            }
        }
        writer.join().unwrap();
        got
    }

    #[test]
    fn a_slow_reader_gets_a_large_answer_whole() {
        // 40 MiB at 1 MiB per 100 ms: 4 s, longer than a stall, never stalled that long.
        assert_eq!(
            reader_gets(40 << 20, WRITE_STALL, |_| Duration::from_millis(100)),
            (40 << 20) + 1
        );
    }

    #[test]
    fn a_reader_busy_for_seconds_gets_the_whole_answer() {
        // `sesamed status` on 1 000 000 clients: the CLI took ~230 KB, then spent 1.5–2.3 s
        // in the allocator before its next read; with a 2-second stall limit sesamed hung up
        // and the answer was cut. 3 s without a read, then the rest.
        let pause = |i| Duration::from_secs(if i == 1 { 3 } else { 0 });
        assert_eq!(reader_gets(8 << 20, WRITE_STALL, pause), (8 << 20) + 1);
    }

    #[test]
    fn a_stalled_reader_is_dropped() {
        let stall = Duration::from_millis(300);
        let got = reader_gets(40 << 20, stall, |_| stall * 3);
        assert!(got < 40 << 20, "{got}");
    }

    /// Serves the control socket at `dir/sock` on a thread of its own, answering `REQUEST:`
    /// and 16 MiB of `x`; returns the socket's path.
    fn serving(dir: &Path) -> std::path::PathBuf {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("sock");
        let std_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let listener = UnixListener::from_std(std_listener).unwrap();
                serve(listener, |request| {
                    let answer = format!("{request}:{}", "x".repeat(16 << 20));
                    Box::pin(async move { answer })
                })
                .await;
            });
        });
        path
    }

    /// A client busy for seconds between connecting and sending its request (the CLI in the
    /// allocator after parsing 1 000 000 clients) is still answered.
    #[test]
    fn a_client_slow_to_send_its_request_is_answered() {
        let dir = std::env::temp_dir().join(format!("sesame-slowreq-{}", std::process::id()));
        let path = serving(&dir);
        let mut stream = UnixStream::connect(&path).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        stream.write_all(b"late\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.len(), "late:".len() + (16 << 20) + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A reader that never reads its (large) answer holds up no other request: each
    /// connection is served in its own task.
    #[test]
    fn a_stalled_reader_holds_up_no_other_request() {
        let dir = std::env::temp_dir().join(format!("sesame-serve-{}", std::process::id()));
        let path = serving(&dir);
        let mut stalled = UnixStream::connect(&path).unwrap();
        stalled.write_all(b"first\n").unwrap();
        // Served one at a time, the second would wait WRITE_STALL for the first to stall.
        let asked = std::time::Instant::now();
        let answer = request(&path, "second").unwrap();
        assert!(asked.elapsed() < WRITE_STALL, "{:?}", asked.elapsed());
        assert!(answer.starts_with("second:"));
        assert_eq!(answer.len(), "second:".len() + (16 << 20) + 1);
        drop(stalled);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_answer_over_the_cap_is_an_error_not_cut() {
        let e = answer_of("over", MAX_ANSWER_BYTES + 1).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(
            e.to_string()
                .contains("is longer than the 256 MiB read from it")
        );
    }
}
