//! The daemon: capture → tracker → (persist replay state) → firewall, on one thread.
//!
//! Everything runs on a single-threaded tokio runtime: the capture tasks feed packets straight
//! into the tracker (no queue, no allocation per packet), grants go to the firewall task over a
//! channel, and the control socket reads the shared state between packets.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sesame_keys::PublicKey;
use sesame_proto::{
    ClientEntry, ClientId, ClientKeys, Event, Policy, Reason, Service, Tracker, TrackerConfig,
    UnixMillis,
};
use tokio::sync::mpsc;

use crate::capture;
use crate::config::{Config, Interfaces, Secrets};
use crate::control::{self, ClientStatus, Counters, LeaseStatus, Status};
use crate::firewall::{AnyFirewall, Firewall, FirewallError, Lease};
use crate::state::{ReplayStore, StateError};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The replay state could not be read.
    #[error("replay state: {0}")]
    State(#[from] StateError),
    /// A client's keys could not be combined with the server key.
    #[error("client '{0}': key exchange with the server key failed (low-order key)")]
    Keys(String),
    /// The knock sequences could not be derived.
    #[error("knock sequences: {0}")]
    Sequences(String),
    /// The firewall could not be set up.
    #[error("firewall setup failed: {0}")]
    Firewall(#[from] FirewallError),
    /// Packet capture could not start.
    #[error("packet capture on {interface} failed: {source} (sesamed needs CAP_NET_RAW)")]
    Capture {
        /// The interface.
        interface: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The control socket could not be created.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Capabilities are missing, or could not be dropped.
    #[error("privileges: {0}")]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// The async runtime could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// The current time from the system clock.
pub fn system_now() -> UnixMillis {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    UnixMillis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(t: UnixMillis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.0.to_string())
}

/// What the firewall task is asked to do.
enum FwMsg {
    /// Open (or refresh) leases.
    Grant(GrantJob),
    /// Use another backend and policy from now on (after a reload).
    Replace(Box<AnyFirewall>, LeasePolicy),
    /// End the leases of these clients now (they were removed from the configuration).
    RevokeClients(Vec<String>),
}

/// A grant to carry out: open `services` for `address`.
#[derive(Debug)]
struct GrantJob {
    client: String,
    source: IpAddr,
    address: IpAddr,
    services: Vec<Service>,
}

/// At most this many rejection lines per second are logged; the rest are counted and summed
/// up once a second, so a flood cannot fill the disk through the log.
const REJECTION_LINES_PER_SECOND: u32 = 50;

struct LogLimiter {
    window: Instant,
    lines: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn new() -> Self {
        LogLimiter {
            window: Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }

    fn allow(&mut self) -> bool {
        self.flush_if_due();
        if self.lines < REJECTION_LINES_PER_SECOND {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    fn flush_if_due(&mut self) {
        if self.window.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!(
                suppressed = self.suppressed,
                "rejection log lines suppressed in the last second (rate limit)"
            );
        }
        self.window = Instant::now();
        self.lines = 0;
        self.suppressed = 0;
    }
}

/// A client's last knock: when, from where, and what came of it.
#[derive(Clone, Debug)]
struct LastKnock {
    at: UnixMillis,
    source: IpAddr,
    result: &'static str,
}

/// Everything the packet path touches.
struct Core {
    tracker: Tracker,
    store: ReplayStore,
    names: Vec<String>,
    keys: Vec<PublicKey>,
    last: Vec<Option<LastKnock>>,
    grants: mpsc::UnboundedSender<FwMsg>,
    /// The configuration in force.
    config: Config,
    /// The server's private key (kept: key files may not be readable after the privilege drop).
    server_key: sesame_keys::PrivateKey,
    events: Vec<Event>,
    limiter: LogLimiter,
    state_write_failures: u64,
    /// Clients whose last grant could not be saved (refused): saved with the next grant.
    unsaved: Vec<PublicKey>,
    /// Wakes the timer task when the tracker has an earlier deadline.
    timer: Rc<tokio::sync::Notify>,
}

impl Core {
    fn handle_packet(&mut self, raw: &[u8]) {
        let Some(p) = capture::parse_ip(raw) else {
            return;
        };
        let now = system_now();
        let armed = self.tracker.poll_timeout();
        self.tracker
            .packet(now, p.source, p.proto, p.port, p.payload, &mut self.events);
        self.flush_events(now);
        let next = self.tracker.poll_timeout();
        if next.is_some() && (armed.is_none() || next < armed) {
            self.timer.notify_one();
        }
    }

    /// Ends the completed sequences whose payload did not come in time.
    fn handle_timeout(&mut self) {
        let now = system_now();
        self.tracker.handle_timeout(now, &mut self.events);
        self.flush_events(now);
    }

    fn flush_events(&mut self, now: UnixMillis) {
        if !self.events.is_empty() {
            let events = std::mem::take(&mut self.events);
            for event in &events {
                self.handle_event(now, event);
            }
            self.events = events;
            self.events.clear();
        }
    }

    fn name(&self, id: ClientId) -> &str {
        self.names.get(id.0 as usize).map_or("?", String::as_str)
    }

    fn remember(&mut self, client: ClientId, at: UnixMillis, source: IpAddr, result: &'static str) {
        if let Some(slot) = self.last.get_mut(client.0 as usize) {
            *slot = Some(LastKnock { at, source, result });
        }
    }

    fn handle_event(&mut self, now: UnixMillis, event: &Event) {
        match event {
            Event::Granted(g) => {
                // Persist before granting: a restart must never make this knock valid again.
                // Only this client's state changed (the grant carries it), plus any whose
                // earlier save failed.
                let replay = self.tracker.replay_states();
                let key = self.keys[g.client.0 as usize];
                let mut states = vec![(key, g.replay.clone())];
                for k in self.unsaved.iter().filter(|k| **k != key) {
                    if let Some(i) = self.keys.iter().position(|x| x == k) {
                        states.push((*k, replay[i].clone()));
                    }
                }
                if let Err(e) = self.store.save(states.iter().map(|(k, s)| (k, s.clone()))) {
                    if !self.unsaved.contains(&key) {
                        self.unsaved.push(key);
                    }
                    self.state_write_failures += 1;
                    self.remember(g.client, now, g.source, "state_write_failed");
                    tracing::error!(
                        client = %self.name(g.client),
                        source = %g.source,
                        error = %e,
                        "replay state could not be written: nothing granted (fail closed)"
                    );
                    return;
                }
                self.unsaved.clear();
                self.remember(g.client, now, g.source, "granted");
                tracing::debug!(
                    client = %self.name(g.client),
                    source = %g.source,
                    "knock accepted; replay state saved"
                );
                let job = GrantJob {
                    client: self.name(g.client).to_owned(),
                    source: g.source,
                    address: g.address,
                    services: g.services.clone(),
                };
                if self.grants.send(FwMsg::Grant(job)).is_err() {
                    tracing::error!("firewall task is gone; grant dropped");
                }
            }
            Event::Rejected {
                source,
                client,
                reason,
            } => {
                if let Some(c) = client {
                    self.remember(*c, now, *source, reason.code());
                }
                if self.limiter.allow() {
                    match client {
                        Some(c) => tracing::warn!(
                            source = %source,
                            client = %self.name(*c),
                            reason = %reason.code(),
                            detail = %reason,
                            "rejected"
                        ),
                        None => tracing::warn!(
                            source = %source,
                            reason = %reason.code(),
                            detail = %reason,
                            "rejected"
                        ),
                    }
                }
            }
            Event::PayloadMissing { source, client } => {
                let optional = self.config.knock.payload == sesame_proto::PayloadMode::Optional;
                if !optional {
                    self.remember(*client, now, *source, "payload_missing");
                }
                if self.limiter.allow() {
                    if optional {
                        tracing::info!(
                            source = %source,
                            client = %self.name(*client),
                            timeout_ms = self.config.knock.timeout_ms,
                            "sequence completed, no payload within timeout_ms: the sequence alone decides (payload = optional)"
                        );
                    } else {
                        tracing::warn!(
                            source = %source,
                            client = %self.name(*client),
                            reason = "payload_missing",
                            timeout_ms = self.config.knock.timeout_ms,
                            "sequence completed, no payload within timeout_ms (is UDP to the knock range blocked on the client's network?)"
                        );
                    }
                }
            }
            Event::SequenceComplete {
                source,
                client,
                counter,
            } => {
                tracing::debug!(
                    source = %source,
                    client = %self.name(*client),
                    counter,
                    "sequence complete"
                );
            }
        }
    }
}

/// The firewall task's state, readable by the control socket.
#[derive(Default)]
struct Leases {
    active: HashMap<(String, IpAddr, Service), Instant>,
    opened: u64,
    refreshed: u64,
    failures: u64,
    cooldown_skips: u64,
    /// Knocks for a lease that had more than half of its time left: nothing to do.
    kept: u64,
    /// Per client, when a grant of theirs last failed in the firewall (shown by `status` as
    /// the last knock's result while no newer knock came).
    failed_at: HashMap<String, UnixMillis>,
}

/// Builds the tracker's client list from the configuration and its secrets.
fn client_entries(config: &Config, secrets: &Secrets) -> Result<Vec<ClientEntry>, StartError> {
    config
        .clients
        .iter()
        .zip(&secrets.psks)
        .map(|(c, psk)| {
            let keys = ClientKeys::for_server(&secrets.server_key, &c.public_key, psk.as_ref())
                .map_err(|_| StartError::Keys(c.name.clone()))?;
            Ok(ClientEntry {
                name: c.name.clone(),
                keys,
                policy: Policy {
                    allow: c.allow.clone(),
                    sources: c.source.clone(),
                    allow_other_ip: c.allow_other_ip,
                    require_address: c.require_address,
                    expires: c.expires,
                },
            })
        })
        .collect()
}

/// The tracker's settings for a configuration.
fn tracker_config(config: &Config) -> TrackerConfig {
    TrackerConfig {
        params: config.knock.params.clone(),
        skew_steps: config.knock.skew_steps,
        timeout_ms: config.knock.timeout_ms,
        payload: config.knock.payload,
        max_ahead_ms: config.knock.max_ahead_ms,
        x25519_per_second: config.knock.x25519_per_client_per_second,
        max_sources: TrackerConfig::DEFAULT_MAX_SOURCES,
        max_candidates: TrackerConfig::DEFAULT_MAX_CANDIDATES,
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config, secrets: Secrets) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run_local(config, secrets))
}

fn status(config: &Config, started: Instant, core: &Core, leases: &Leases) -> Status {
    let stats = core.tracker.stats();
    let now = Instant::now();
    let mut lease_list: Vec<LeaseStatus> = leases
        .active
        .iter()
        .filter(|(_, end)| **end > now)
        .map(|((client, address, service), end)| LeaseStatus {
            client: client.clone(),
            address: address.to_string(),
            service: service.to_string(),
            seconds_left: end.duration_since(now).as_secs_f64().ceil() as u64,
        })
        .collect();
    lease_list.sort_by(|a, b| {
        (&a.client, &a.address, &a.service).cmp(&(&b.client, &b.address, &b.service))
    });
    let clients = core
        .names
        .iter()
        .zip(&core.last)
        .map(|(name, last)| ClientStatus {
            name: name.clone(),
            last_knock: last.as_ref().map(|l| rfc3339(l.at)),
            last_source: last.as_ref().map(|l| l.source.to_string()),
            last_result: last.as_ref().map(|l| {
                let failed = leases.failed_at.get(name).is_some_and(|t| *t >= l.at);
                if l.result == "granted" && failed {
                    "firewall_failed".to_owned()
                } else {
                    l.result.to_owned()
                }
            }),
        })
        .collect();
    let rejections: BTreeMap<String, u64> = Reason::CODES
        .iter()
        .zip(stats.rejections.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| ((*code).to_owned(), *n))
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: started.elapsed().as_secs(),
        pid: std::process::id(),
        config: config.path.display().to_string(),
        leases: lease_list,
        clients,
        counters: Counters {
            packets_seen: stats.packets,
            packets_in_range: stats.in_range,
            resets: stats.resets,
            sequences_completed: stats.sequences_completed,
            payloads_seen: stats.payloads_seen,
            replays_cached: stats.replays_cached,
            gate_passed: stats.gate_passed,
            x25519: stats.x25519,
            payloads_accepted: stats.payloads_accepted,
            payloads_missing: stats.payloads_missing,
            grants: stats.grants,
            leases_opened: leases.opened,
            leases_refreshed: leases.refreshed,
            firewall_failures: leases.failures,
            hook_cooldown_skips: leases.cooldown_skips,
            leases_kept: leases.kept,
            state_write_failures: core.state_write_failures,
            sources_evicted: stats.sources_evicted,
            sources_tracked: core.tracker.tracked_sources() as u64,
            macs_remembered: core.tracker.seen_macs() as u64,
            rejections,
        },
    }
}

async fn run_local(config: Config, secrets: Secrets) -> Result<(), StartError> {
    let started = Instant::now();
    let mut needed = vec![caps::Capability::CAP_NET_RAW];
    if config.firewall.backend == crate::config::Backend::Nftables {
        needed.push(caps::Capability::CAP_NET_ADMIN);
    }
    crate::privileges::check_capabilities(&needed)?;
    let store = ReplayStore::open(&config.state_dir)?;
    if store.found_legacy() {
        tracing::info!(
            state_dir = %config.state_dir.display(),
            "replay state of sesame protocol 1 found and ignored (no protocol-1 knock is valid under protocol 2); it is replaced by the next write"
        );
    }
    let entries = client_entries(&config, &secrets)?;
    let keys: Vec<PublicKey> = config.clients.iter().map(|c| c.public_key).collect();
    let names: Vec<String> = config.clients.iter().map(|c| c.name.clone()).collect();
    let replay = keys.iter().map(|k| store.get(k)).collect();
    let tracker = Tracker::new(
        tracker_config(&config),
        secrets.server_key.clone(),
        entries,
        replay,
        system_now(),
    )
    .map_err(|e| StartError::Sequences(e.to_string()))?;
    // The gate MACs saved at the last clean shutdown stay refused before any key work. After a
    // crash, those of datagrams that passed the gate but were refused are lost: unbound payloads
    // that may have been made before this start (their timestamps run at most max_ahead_ms
    // ahead) are refused; bound ones are useless to anyone else.
    let mut tracker = tracker;
    tracker.remember_seen(store.seen(), system_now());
    let crashed = store.mark_running().unwrap_or_else(|e| {
        tracing::error!(error = %e, "replay state: cannot mark the state as in use; treating the last stop as a crash");
        true
    });
    let unbound_from = system_now().plus_millis(config.knock.max_ahead_ms);
    if crashed {
        tracker.refuse_unbound_before(unbound_from);
    }

    let mut firewall = AnyFirewall::from_config(&config);
    firewall.setup().await?;

    // Open the capture sockets now, so a missing capability fails the start.
    let (lo, hi) = (config.knock.params.port_lo, config.knock.params.port_hi);
    let interfaces: Vec<Option<String>> = match &config.interfaces {
        Interfaces::Any => vec![None],
        Interfaces::Named(names) => names.iter().cloned().map(Some).collect(),
    };
    for iface in &interfaces {
        if let Err(source) = capture::open_socket(iface.as_deref(), lo, hi) {
            let interface = iface.clone().unwrap_or_else(|| "any".into());
            if iface.is_none() || source.raw_os_error() == Some(libc::EPERM) {
                return Err(StartError::Capture { interface, source });
            }
            tracing::warn!(interface, error = %source, "interface not available yet; will retry");
        }
    }
    let control = control::bind(&config.control_socket).map_err(|source| StartError::Control {
        path: config.control_socket.display().to_string(),
        source,
    })?;

    // Setup is done: keep only CAP_NET_RAW and CAP_NET_ADMIN, and switch user if asked.
    let dropped = crate::privileges::drop_privileges(config.user.as_deref(), &config.state_dir)?;
    tracing::info!(
        uid = dropped.uid,
        gid = dropped.gid,
        "privileges dropped: only CAP_NET_RAW and CAP_NET_ADMIN kept"
    );

    let (grants_tx, grants_rx) = mpsc::unbounded_channel();
    let last = vec![None; names.len()];
    let timer = Rc::new(tokio::sync::Notify::new());
    let core = Rc::new(RefCell::new(Core {
        tracker,
        store,
        names,
        keys,
        last,
        grants: grants_tx,
        events: Vec::new(),
        limiter: LogLimiter::new(),
        state_write_failures: 0,
        unsaved: Vec::new(),
        config: config.clone(),
        server_key: secrets.server_key.clone(),
        timer: Rc::clone(&timer),
    }));
    let leases = Rc::new(RefCell::new(Leases::default()));

    let backend = firewall.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let policy = lease_policy(&config);
    let fw_task = tokio::task::spawn_local(firewall_task(
        firewall,
        grants_rx,
        stop_rx,
        policy,
        Rc::clone(&leases),
    ));
    for iface in interfaces {
        let core = Rc::clone(&core);
        tokio::task::spawn_local(capture::run_capture(iface, lo, hi, move |raw| {
            core.borrow_mut().handle_packet(raw);
        }));
    }
    {
        let core = Rc::clone(&core);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let now = system_now();
                let mut core = core.borrow_mut();
                if let Err(e) = core.tracker.advance(now) {
                    tracing::error!(error = %e, "step tables could not be computed");
                }
                // Also forgets the gate MACs whose step has left the window.
                core.handle_timeout();
                core.limiter.flush_if_due();
            }
        });
    }
    {
        // Completed sequences whose payload did not come: wake at the tracker's next deadline.
        let core = Rc::clone(&core);
        tokio::task::spawn_local(async move {
            loop {
                let next = core.borrow().tracker.poll_timeout();
                match next {
                    None => timer.notified().await,
                    Some(at) => {
                        let wait = Duration::from_millis(at.since(system_now()));
                        tokio::select! {
                            () = tokio::time::sleep(wait) => core.borrow_mut().handle_timeout(),
                            () = timer.notified() => {}
                        }
                    }
                }
            }
        });
    }
    {
        let core = Rc::clone(&core);
        let leases = Rc::clone(&leases);
        tokio::task::spawn_local(control::serve(control, move |request| {
            let core = Rc::clone(&core);
            let leases = Rc::clone(&leases);
            let request = request.to_owned();
            Box::pin(async move {
                let answer = match request.as_str() {
                    "status" => {
                        let s = {
                            let core = core.borrow();
                            status(&core.config, started, &core, &leases.borrow())
                        };
                        serde_json::to_value(&s)
                    }
                    "reload" => serde_json::to_value(reload(&core).await),
                    other => {
                        Ok(serde_json::json!({ "error": format!("unknown request '{other}'") }))
                    }
                };
                answer.map_or_else(
                    |e| serde_json::json!({ "error": e.to_string() }).to_string(),
                    |v| v.to_string(),
                )
            })
        }));
    }
    {
        let core = Rc::clone(&core);
        tokio::task::spawn_local(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::error!("cannot watch SIGHUP; use `sesamed reload`");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload(&core).await;
            }
        });
    }

    if crashed && config.knock.payload != sesame_proto::PayloadMode::None {
        tracing::warn!(
            until = %rfc3339(unbound_from),
            "sesamed did not stop cleanly last time: payloads that name no address and may have been made before this start are refused until then (knocks bound to an address are not affected)"
        );
    }
    tracing::info!(
        clients = config.clients.len(),
        backend = %backend,
        interfaces = ?config.interfaces,
        port_range = %format!("{lo}-{hi}"),
        payload = %config.knock.payload,
        control = %config.control_socket.display(),
        "ready"
    );

    wait_for_stop().await;
    tracing::info!("stopping");
    // The firewall task closes what needs closing (command-backend leases); the nftables
    // table stays, so the services stay hidden and granted elements expire in the kernel.
    let _ = stop_tx.send(());
    if tokio::time::timeout(Duration::from_secs(15), fw_task)
        .await
        .is_err()
    {
        tracing::warn!("closing leases took too long; exiting anyway");
    }
    // The journal into the snapshot, so the snapshot alone is the whole state at rest, with the
    // remembered gate MACs; then the marker goes: this was a clean stop.
    {
        let mut core = core.borrow_mut();
        let seen = core.tracker.seen_list();
        core.store.set_seen(seen);
        match core.store.checkpoint() {
            Ok(()) => {
                if let Err(e) = core.store.mark_stopped() {
                    tracing::warn!(error = %e, "replay state: could not mark the stop as clean; the next start treats it as a crash");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "replay state: could not write the snapshot; the journal keeps the state and the next start treats this stop as a crash")
            }
        }
    }
    let _ = std::fs::remove_file(&config.control_socket);
    Ok(())
}

/// Re-reads the configuration: clients added, removed or changed take effect, knock and
/// firewall settings are applied, leases and replay state are kept. A configuration with
/// errors is refused and the running one keeps serving.
async fn reload(core: &Rc<RefCell<Core>>) -> control::ReloadResult {
    let refuse = |message: String| {
        tracing::error!(error = %message, "reload refused; the running configuration stays");
        control::ReloadResult { ok: false, message }
    };
    let (path, old, server_key) = {
        let c = core.borrow();
        (
            c.config.path.clone(),
            c.config.clone(),
            c.server_key.clone(),
        )
    };
    let new = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    let mut psks = Vec::with_capacity(new.clients.len());
    for c in &new.clients {
        match &c.psk_file {
            Some(p) => match sesame_keys::read_psk_file(p) {
                Ok(k) => psks.push(Some(k)),
                Err(e) => {
                    return refuse(format!("{}: client '{}': {e}", path.display(), c.name));
                }
            },
            None => psks.push(None),
        }
    }
    let mut notes = Vec::new();
    if new.private_key_file != old.private_key_file
        || new.state_dir != old.state_dir
        || new.interfaces != old.interfaces
        || new.control_socket != old.control_socket
        || new.user != old.user
    {
        notes.push(
            "changes to private_key_file, state_dir, interfaces, control_socket or user take effect at the next restart",
        );
    }
    let secrets = Secrets {
        server_key: server_key.clone(),
        psks,
    };
    let entries = match client_entries(&new, &secrets) {
        Ok(e) => e,
        Err(e) => return refuse(e.to_string()),
    };
    // The firewall first: if its new setup fails, nothing changes.
    let firewall_changed = format!("{:?}", new.firewall) != format!("{:?}", old.firewall)
        || new.knock.params != old.knock.params;
    let replacement = if firewall_changed {
        let mut fw = AnyFirewall::from_config(&new);
        if let Err(e) = fw.setup().await {
            return refuse(format!(
                "firewall setup for the new configuration failed: {e}"
            ));
        }
        Some(fw)
    } else {
        None
    };
    let mut c = core.borrow_mut();
    // Replay state: what the running tracker holds (it may be ahead of the disk), else the
    // store, for every client kept or added.
    let current: HashMap<PublicKey, sesame_proto::ReplayState> = c
        .keys
        .iter()
        .copied()
        .zip(c.tracker.replay_states().iter().cloned())
        .collect();
    let keys: Vec<PublicKey> = new.clients.iter().map(|x| x.public_key).collect();
    let replay = keys
        .iter()
        .map(|k| current.get(k).cloned().unwrap_or_else(|| c.store.get(k)))
        .collect();
    let tracker = match Tracker::new(
        tracker_config(&new),
        server_key,
        entries,
        replay,
        system_now(),
    ) {
        Ok(mut t) => {
            // Datagrams the running tracker saw stay refused before any key work.
            t.inherit_seen(&c.tracker);
            t
        }
        Err(e) => {
            drop(c);
            return refuse(format!("knock sequences: {e}"));
        }
    };
    let old_names = std::mem::take(&mut c.names);
    let names: Vec<String> = new.clients.iter().map(|x| x.name.clone()).collect();
    let added: Vec<String> = names
        .iter()
        .filter(|n| !old_names.contains(n))
        .cloned()
        .collect();
    let removed: Vec<String> = old_names
        .iter()
        .filter(|n| !names.contains(n))
        .cloned()
        .collect();
    // Keep the last-knock record of the clients that stay.
    let last: Vec<Option<LastKnock>> = names
        .iter()
        .map(|n| {
            old_names
                .iter()
                .position(|o| o == n)
                .and_then(|i| c.last.get(i).cloned().flatten())
        })
        .collect();
    if let Some(fw) = replacement {
        let policy = lease_policy(&new);
        let _ = c.grants.send(FwMsg::Replace(Box::new(fw), policy));
    }
    if !removed.is_empty() {
        let _ = c.grants.send(FwMsg::RevokeClients(removed.clone()));
    }
    c.tracker = tracker;
    c.keys = keys;
    c.names = names;
    c.last = last;
    c.config = new;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let message = format!(
        "reloaded: {} clients (added: {}; removed: {}){}",
        c.names.len(),
        list(&added),
        list(&removed),
        notes
            .first()
            .map_or_else(String::new, |n| format!("; note: {n}"))
    );
    tracing::info!("{message}");
    control::ReloadResult { ok: true, message }
}

fn lease_policy(config: &Config) -> LeasePolicy {
    LeasePolicy {
        lease_seconds: config.firewall.lease_seconds,
        cooldown: Duration::from_millis(config.firewall.command_cooldown_ms),
        burst: config.firewall.command_burst,
        concurrency: match config.firewall.backend {
            crate::config::Backend::Command => config.firewall.command_concurrency,
            _ => 1,
        },
    }
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot watch SIGTERM/SIGINT; stop sesamed with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Settings of the firewall task.
#[derive(Clone, Copy, Debug)]
struct LeasePolicy {
    lease_seconds: u32,
    /// Per client, the time to earn one more hook run for new leases (command backend).
    cooldown: Duration,
    /// Per client, hook runs allowed in a burst before the cooldown applies.
    burst: u32,
    /// Most backend actions running at once.
    concurrency: usize,
}

type LeaseKey = (String, IpAddr, Service);

/// The result of one backend action, sent back to the firewall task.
struct Done {
    job: u64,
    key: LeaseKey,
    refresh: bool,
    result: Result<(), FirewallError>,
}

/// A grant job whose services are being opened.
struct JobProgress {
    client: String,
    source: IpAddr,
    address: IpAddr,
    remaining: usize,
    opened: Vec<String>,
}

/// Owns the backend: opens, refreshes and ends leases. Backend actions run as separate tasks,
/// at most `concurrency` at once (one at a time for nftables, which keeps them in order); a
/// knock for a lease that is active or being opened refreshes it instead of running anything
/// new, and the command backend runs hooks for a client's new leases at most once per
/// cooldown.
async fn firewall_task(
    mut firewall: AnyFirewall,
    mut jobs: mpsc::UnboundedReceiver<FwMsg>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    mut policy: LeasePolicy,
    leases: Rc<RefCell<Leases>>,
) {
    let mut lease_seconds = policy.lease_seconds;
    let lease_of = |(client, address, service): LeaseKey, lease_seconds: u32| Lease {
        client,
        address,
        service,
        lease_seconds,
    };
    let mut is_command = matches!(firewall, AnyFirewall::Command(_));
    let mut limit = Rc::new(tokio::sync::Semaphore::new(policy.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut pending: HashMap<LeaseKey, u32> = HashMap::new();
    // Per client: hook-run credits (a token bucket: `burst` credits, one more per cooldown).
    let mut credits: HashMap<String, (f64, Instant)> = HashMap::new();
    let mut progress: HashMap<u64, JobProgress> = HashMap::new();
    let mut next_job = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut verify = tokio::time::interval(Duration::from_secs(5));
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let spawn_grant = |firewall: &AnyFirewall,
                       limit: &Rc<tokio::sync::Semaphore>,
                       lease_seconds: u32,
                       job: u64,
                       key: LeaseKey,
                       refresh: bool| {
        let mut fw = firewall.clone();
        let limit = Rc::clone(limit);
        let done = done_tx.clone();
        let lease = lease_of(key.clone(), lease_seconds);
        tokio::task::spawn_local(async move {
            let _permit = limit.acquire().await;
            let result = fw.grant(&lease, refresh).await;
            let _ = done.send(Done {
                job,
                key,
                refresh,
                result,
            });
        });
    };

    loop {
        tokio::select! {
            _ = &mut stop => {
                if firewall.needs_revoke() {
                    let keys: Vec<_> = leases.borrow_mut().active.drain().map(|(k, _)| k).collect();
                    for key in keys {
                        let lease = lease_of(key, lease_seconds);
                        match firewall.revoke(&lease).await {
                            Ok(()) => tracing::info!(client = %lease.client, address = %lease.address, service = %lease.service, "lease closed at shutdown"),
                            Err(e) => tracing::error!(client = %lease.client, address = %lease.address, service = %lease.service, error = %e, "closing the lease failed"),
                        }
                    }
                }
                return;
            }
            msg = jobs.recv() => {
                let job = match msg {
                    None => break,
                    Some(FwMsg::Grant(job)) => job,
                    Some(FwMsg::Replace(fw, p)) => {
                        firewall = *fw;
                        policy = p;
                        lease_seconds = p.lease_seconds;
                        is_command = matches!(firewall, AnyFirewall::Command(_));
                        limit = Rc::new(tokio::sync::Semaphore::new(p.concurrency.max(1)));
                        continue;
                    }
                    Some(FwMsg::RevokeClients(names)) => {
                        let keys: Vec<LeaseKey> = {
                            let mut l = leases.borrow_mut();
                            let keys: Vec<LeaseKey> = l.active.keys().filter(|k| names.contains(&k.0)).cloned().collect();
                            for k in &keys {
                                l.active.remove(k);
                            }
                            keys
                        };
                        for key in keys {
                            let lease = lease_of(key, lease_seconds);
                            match firewall.revoke(&lease).await {
                                Ok(()) => tracing::info!(client = %lease.client, address = %lease.address, service = %lease.service, "lease ended: client removed"),
                                Err(e) => tracing::error!(client = %lease.client, address = %lease.address, service = %lease.service, error = %e, "closing the lease of a removed client failed"),
                            }
                        }
                        continue;
                    }
                };
                let id = next_job;
                next_job += 1;
                let mut entry = JobProgress {
                    client: job.client.clone(),
                    source: job.source,
                    address: job.address,
                    remaining: 0,
                    opened: Vec::new(),
                };
                let now = Instant::now();
                // Whether this knock may run hooks for new leases (one credit per knock).
                let mut may_run: Option<bool> = None;
                for service in &job.services {
                    let key: LeaseKey = (job.client.clone(), job.address, *service);
                    let end = leases.borrow().active.get(&key).copied().filter(|end| *end > now);
                    let active = end.is_some();
                    let refresh = active || pending.contains_key(&key);
                    // A knock while more than half of the lease remains (or while it is being
                    // opened) changes nothing: refreshing on every knock would let one client's
                    // burst of knocks queue up firewall work ahead of everyone else's grants.
                    let half = Duration::from_secs(u64::from(lease_seconds)) / 2;
                    if refresh && !is_command
                        && (pending.contains_key(&key) || end.is_some_and(|e| e.duration_since(now) > half))
                    {
                        leases.borrow_mut().kept += 1;
                        entry.opened.push(service.to_string());
                        continue;
                    }
                    if refresh && is_command {
                        // Extend; a hook run would only pile up rules.
                        let mut l = leases.borrow_mut();
                        l.refreshed += 1;
                        if active {
                            l.active.insert(key, now + Duration::from_secs(u64::from(lease_seconds)));
                        }
                        entry.opened.push(service.to_string());
                        continue;
                    }
                    if !refresh && is_command {
                        let allowed = *may_run.get_or_insert_with(|| {
                            let burst = f64::from(policy.burst.max(1));
                            let (tokens, at) = credits.entry(job.client.clone()).or_insert((burst, now));
                            let per = policy.cooldown.as_secs_f64();
                            let earned = if per > 0.0 { now.duration_since(*at).as_secs_f64() / per } else { burst };
                            *tokens = (*tokens + earned).min(burst);
                            *at = now;
                            if *tokens >= 1.0 {
                                *tokens -= 1.0;
                                true
                            } else {
                                false
                            }
                        });
                        if !allowed {
                            leases.borrow_mut().cooldown_skips += 1;
                            tracing::warn!(
                                client = %job.client,
                                address = %job.address,
                                service = %service,
                                cooldown_ms = policy.cooldown.as_millis() as u64,
                                "hook cooldown: open_command not run for this new lease"
                            );
                            continue;
                        }
                    }
                    *pending.entry(key.clone()).or_insert(0) += 1;
                    entry.remaining += 1;
                    spawn_grant(&firewall, &limit, lease_seconds, id, key, refresh);
                }
                if entry.remaining == 0 {
                    log_granted(&entry, lease_seconds);
                } else {
                    progress.insert(id, entry);
                }
            }
            Some(done) = done_rx.recv() => {
                if let Some(n) = pending.get_mut(&done.key) {
                    *n -= 1;
                    if *n == 0 {
                        pending.remove(&done.key);
                    }
                }
                let service = done.key.2;
                let ok = match done.result {
                    Ok(()) => {
                        let mut l = leases.borrow_mut();
                        l.active.insert(done.key, Instant::now() + Duration::from_secs(u64::from(lease_seconds)));
                        if done.refresh { l.refreshed += 1 } else { l.opened += 1 }
                        true
                    }
                    Err(e) => {
                        let mut l = leases.borrow_mut();
                        l.failures += 1;
                        l.failed_at.insert(done.key.0.clone(), system_now());
                        drop(l);
                        tracing::error!(
                            client = %done.key.0,
                            address = %done.key.1,
                            service = %service,
                            error = %e,
                            "firewall grant failed"
                        );
                        false
                    }
                };
                if let Some(entry) = progress.get_mut(&done.job) {
                    entry.remaining -= 1;
                    if ok {
                        entry.opened.push(service.to_string());
                    }
                    if entry.remaining == 0 {
                        if let Some(entry) = progress.remove(&done.job) {
                            log_granted(&entry, lease_seconds);
                        }
                    }
                }
            }
            _ = verify.tick() => {
                let _permit = limit.acquire().await;
                match firewall.verify().await {
                    Ok(false) => {}
                    Ok(true) => tracing::error!(
                        backend = %firewall,
                        "the firewall table had been removed (e.g. nft flush ruleset): the protected services were exposed; it is rebuilt, and active leases need a new knock"
                    ),
                    Err(e) => tracing::error!(backend = %firewall, error = %e, "cannot check or rebuild the firewall table"),
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let ended: Vec<_> = {
                    let mut l = leases.borrow_mut();
                    let keys: Vec<_> = l
                        .active
                        .iter()
                        .filter(|(k, end)| **end <= now && !pending.contains_key(*k))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in &keys {
                        l.active.remove(k);
                    }
                    keys
                };
                for key in ended {
                    let lease = lease_of(key, lease_seconds);
                    if firewall.needs_revoke() {
                        let _permit = limit.acquire().await;
                        if let Err(e) = firewall.revoke(&lease).await {
                            leases.borrow_mut().failures += 1;
                            tracing::error!(client = %lease.client, address = %lease.address, service = %lease.service, error = %e, "closing the lease failed");
                            continue;
                        }
                    }
                    tracing::info!(client = %lease.client, address = %lease.address, service = %lease.service, "lease ended");
                }
            }
        }
    }
}

/// One line per grant, once the firewall has every rule, so a client that connects after this
/// line is let in.
fn log_granted(entry: &JobProgress, lease_seconds: u32) {
    if entry.opened.is_empty() {
        return;
    }
    tracing::info!(
        client = %entry.client,
        source = %entry.source,
        address = %entry.address,
        services = %entry.opened.join(","),
        lease_seconds,
        "granted"
    );
}
