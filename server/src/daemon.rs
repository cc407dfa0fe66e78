//! The daemon: capture → tracker → (persist replay state) → firewall, on one thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sesame_keys::PublicKey;
use sesame_proto::{
    ClientEntry, ClientKeys, Event, Policy, Service, Tracker, TrackerConfig, UnixMillis,
};
use tokio::sync::mpsc;

use crate::capture;
use crate::config::{Config, Interfaces, Secrets};
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
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.flush();
        }
        if self.lines < REJECTION_LINES_PER_SECOND {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    fn flush(&mut self) {
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

/// Everything the packet path touches.
struct Core {
    tracker: Tracker,
    store: ReplayStore,
    names: Vec<String>,
    keys: Vec<PublicKey>,
    grants: mpsc::UnboundedSender<GrantJob>,
    events: Vec<Event>,
    limiter: LogLimiter,
}

impl Core {
    fn handle_packet(&mut self, raw: &[u8]) {
        let Some(p) = capture::parse_ip(raw) else {
            return;
        };
        let now = system_now();
        self.tracker
            .packet(now, p.source, p.proto, p.port, p.payload, &mut self.events);
        if !self.events.is_empty() {
            let events = std::mem::take(&mut self.events);
            for event in &events {
                self.handle_event(event);
            }
            self.events = events;
            self.events.clear();
        }
    }

    fn name(&self, id: sesame_proto::ClientId) -> &str {
        self.names.get(id.0 as usize).map_or("?", String::as_str)
    }

    fn handle_event(&mut self, event: &Event) {
        match event {
            Event::Granted(g) => {
                // Persist before granting: a restart must never make this knock valid again.
                let states = self
                    .keys
                    .iter()
                    .zip(self.tracker.replay_states().iter().copied());
                if let Err(e) = self.store.save(states) {
                    tracing::error!(
                        client = %self.name(g.client),
                        source = %g.source,
                        error = %e,
                        "replay state could not be written: nothing granted (fail closed)"
                    );
                    return;
                }
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
                if self.grants.send(job).is_err() {
                    tracing::error!("firewall task is gone; grant dropped");
                }
            }
            Event::Rejected {
                source,
                client,
                reason,
            } => {
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
                    expires: c.expires,
                },
            })
        })
        .collect()
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

async fn run_local(config: Config, secrets: Secrets) -> Result<(), StartError> {
    let store = ReplayStore::open(&config.state_dir)?;
    let entries = client_entries(&config, &secrets)?;
    let keys: Vec<PublicKey> = config.clients.iter().map(|c| c.public_key).collect();
    let names: Vec<String> = config.clients.iter().map(|c| c.name.clone()).collect();
    let replay = keys.iter().map(|k| store.get(k)).collect();
    let tracker_config = TrackerConfig {
        params: config.knock.params.clone(),
        skew_steps: config.knock.skew_steps,
        timeout_ms: config.knock.timeout_ms,
        payload: config.knock.payload,
        max_sources: TrackerConfig::DEFAULT_MAX_SOURCES,
        max_candidates: TrackerConfig::DEFAULT_MAX_CANDIDATES,
    };
    let tracker = Tracker::new(
        tracker_config,
        secrets.server_key.clone(),
        entries,
        replay,
        system_now(),
    )
    .map_err(|e| StartError::Capture {
        interface: "-".into(),
        source: std::io::Error::other(e.to_string()),
    })?;

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

    let (grants_tx, grants_rx) = mpsc::unbounded_channel();
    let lease_seconds = config.firewall.lease_seconds;
    let core = Rc::new(RefCell::new(Core {
        tracker,
        store,
        names,
        keys,
        grants: grants_tx,
        events: Vec::new(),
        limiter: LogLimiter {
            window: Instant::now(),
            lines: 0,
            suppressed: 0,
        },
    }));

    let backend = firewall.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let fw_task =
        tokio::task::spawn_local(firewall_task(firewall, grants_rx, stop_rx, lease_seconds));
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
                core.limiter.flush_if_due();
            }
        });
    }

    tracing::info!(
        clients = config.clients.len(),
        backend = %backend,
        interfaces = ?config.interfaces,
        port_range = %format!("{lo}-{hi}"),
        payload = %config.knock.payload,
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
    Ok(())
}

impl LogLimiter {
    fn flush_if_due(&mut self) {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.flush();
        }
    }
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGINT");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Owns the backend and the lease table: opens, refreshes and ends leases.
async fn firewall_task(
    mut firewall: AnyFirewall,
    mut jobs: mpsc::UnboundedReceiver<GrantJob>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    lease_seconds: u32,
) {
    let mut leases: HashMap<(String, IpAddr, Service), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = &mut stop => {
                if firewall.needs_revoke() {
                    for (client, address, service) in leases.into_keys() {
                        let lease = Lease { client, address, service, lease_seconds };
                        match firewall.revoke(&lease).await {
                            Ok(()) => tracing::info!(client = %lease.client, address = %lease.address, service = %lease.service, "lease closed at shutdown"),
                            Err(e) => tracing::error!(client = %lease.client, address = %lease.address, service = %lease.service, error = %e, "closing the lease failed"),
                        }
                    }
                }
                return;
            }
            job = jobs.recv() => {
                let Some(job) = job else { break };
                let mut opened: Vec<String> = Vec::new();
                for service in &job.services {
                    let service = *service;
                    let key = (job.client.clone(), job.address, service);
                    let refresh = leases.get(&key).is_some_and(|end| *end > Instant::now());
                    let lease = Lease {
                        client: job.client.clone(),
                        address: job.address,
                        service,
                        lease_seconds,
                    };
                    match firewall.grant(&lease, refresh).await {
                        Ok(()) => {
                            leases.insert(key, Instant::now() + Duration::from_secs(u64::from(lease_seconds)));
                            opened.push(service.to_string());
                        }
                        Err(e) => tracing::error!(
                            client = %lease.client,
                            address = %lease.address,
                            service = %lease.service,
                            error = %e,
                            "firewall grant failed"
                        ),
                    }
                }
                // Logged once the firewall has the rule, so a client that connects after this
                // line is let in.
                if !opened.is_empty() {
                    tracing::info!(
                        client = %job.client,
                        source = %job.source,
                        address = %job.address,
                        services = %opened.join(","),
                        lease_seconds,
                        "granted"
                    );
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let ended: Vec<_> = leases.iter().filter(|(_, end)| **end <= now).map(|(k, _)| k.clone()).collect();
                for key in ended {
                    leases.remove(&key);
                    let (client, address, service) = key;
                    let lease = Lease { client, address, service, lease_seconds };
                    if firewall.needs_revoke() {
                        if let Err(e) = firewall.revoke(&lease).await {
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
