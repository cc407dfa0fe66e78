//! The daemon: capture → tracker → (persist replay state) → firewall, on one thread.
//!
//! Everything runs on a single-threaded tokio runtime: the capture tasks feed packets straight
//! into the tracker (no queue, no allocation per packet), grants go to the firewall task over a
//! channel, and the control socket reads the shared state between packets.
//!
//! * `mod.rs`: starting, wiring the tasks, stopping;
//! * [`core`]: the packet path and the persistence of replay state;
//! * [`firewall_task`]: leases ([`crate::lease::LeaseTable`]) and the backend;
//! * [`reload`]: a new configuration without a restart;
//! * [`status`]: what the control socket reports;
//! * [`actions`]: the action runner, and what becomes of a knock's action;
//! * [`steps`]: the step tables (the next step's built off the packet thread).

mod actions;
mod core;
mod firewall_task;
mod reload;
mod status;
mod steps;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use sesame_keys::PublicKey;
use sesame_proto::tracker::{ClientEntry, Policy};
use sesame_proto::{ClientKeys, Tracker, TrackerConfig, UnixMillis};
use tokio::sync::mpsc;

use self::core::{Core, LogLimiter};
use self::firewall_task::{FwState, firewall_task};
use crate::capture::{self, CaptureSource};
use crate::config::{Config, Interfaces, Secrets, StateSync};
use crate::control;
use crate::firewall::{AnyFirewall, Firewall, FirewallError};
use crate::lease::LeaseTable;
use crate::state::{JournalStore, ReplayStore, StateError};

/// The capture backend: the capture tasks read packets through [`CaptureSource`]; a new
/// backend implements that trait (`capture.rs`) and replaces `PacketSocket` here.
type Capture = capture::PacketSocket;

/// Why sesamed could not start (one line each; `sesamed run` exits 1 with it).
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
    /// The metrics endpoint could not listen.
    #[error("metrics.listen {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another sesamed runs on the same state directory or nftables table.
    #[error("{0}")]
    Instance(#[from] crate::instance::InstanceError),
    /// The action runner could not start (the configuration has `[[action]]`s).
    #[error("{0}")]
    Actions(String),
    /// The async runtime could not start.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
}

/// The current time from the system clock.
pub fn system_now() -> UnixMillis {
    UnixMillis::from(SystemTime::now())
}

/// A time as sesamed's log lines, status and JSON show it: RFC 3339 in UTC
/// ([`sesame_cli::rfc3339::format`]), or the bare milliseconds after the year 9999.
pub fn rfc3339(t: UnixMillis) -> String {
    sesame_cli::rfc3339::format(t).unwrap_or_else(|| t.0.to_string())
}

/// A millisecond clock that never jumps: the wall clock at start plus the monotonic time since
/// (leases are timed with it, so an NTP step does not end or stretch them).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    base: UnixMillis,
    started: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base: system_now(),
            started: Instant::now(),
        }
    }

    /// Now.
    pub(crate) fn now(&self) -> UnixMillis {
        self.base
            .plus_millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// The tracker's entry of every client: its keys (an X25519 with the server key each, spread
/// over the cores) and its policy.
fn client_entries(config: &Config, secrets: &Secrets) -> Result<Vec<ClientEntry>, StartError> {
    let keys = crate::config::par_map(config.clients.len(), |i| {
        let psk = secrets.psks.get(i).and_then(Option::as_ref);
        ClientKeys::for_server(&secrets.server_key, &config.clients[i].public_key, psk)
    });
    config
        .clients
        .iter()
        .zip(keys)
        .map(|(c, keys)| {
            let keys = keys.map_err(|_| StartError::Keys(c.name.clone()))?;
            Ok(ClientEntry {
                name: c.name.clone(),
                keys,
                policy: Policy {
                    allow: c.allow.clone(),
                    sources: c.source.clone(),
                    allow_other_ip: c.allow_other_ip,
                    require_address: c.require_address,
                    expires: c.expires,
                    actions: config.allowed_actions(c),
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

/// How far ahead of the latest timestamp the tracker accepts (now + `max_ahead_ms`) the fence
/// of `state_sync = "fence"` is written, and how often it is rewritten: a grant skips the
/// journal's sync while the fence is ahead, so the writer has `FENCE_LEAD_MS -
/// FENCE_PERIOD_MS` for a write before grants fall back to syncing.
const FENCE_LEAD_MS: u64 = 5_000;
const FENCE_PERIOD_MS: u64 = 2_000;

/// What [`start_fence`] returns: the fence the writer task keeps ahead (under "fence"), and
/// the floor refused after a machine crash (`sesamed status` shows until when).
type StartedFence = (
    Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    Option<UnixMillis>,
);

/// `state_sync`: after a machine crash under "fence", refuses everything stamped before the
/// fence (and saves those floors, synced) and returns that floor; then, under "fence", writes
/// the first fence before any grant and returns it (the writer task keeps it ahead), or under
/// "grant" removes a fence file that nothing needs any more.
fn start_fence(
    config: &Config,
    store: &mut JournalStore,
    tracker: &mut Tracker,
    keys: &[PublicKey],
    lost_writes: bool,
    fence_file: std::io::Result<Option<UnixMillis>>,
) -> Result<StartedFence, StartError> {
    let dir = &config.state_dir;
    let fence_io = |source| {
        StartError::State(crate::state::StateError::Io {
            path: dir.join(crate::state::FENCE_NAME),
            source,
        })
    };
    let now = system_now();
    let previous = match &fence_file {
        Ok(f) => *f,
        Err(e) => {
            tracing::error!(error = %e, file = %dir.join(crate::state::FENCE_NAME).display(), "replay state: the fence is unreadable; treating it as the latest possible");
            None
        }
    };
    let mut lost_floor = None;
    if lost_writes {
        // Anything accepted before the crash was stamped at most at the fence; without a
        // readable one, at most max_ahead_ms + the lead after the crash, which was before now.
        let floor = previous
            .unwrap_or(now.plus_millis(config.knock.max_ahead_ms + FENCE_LEAD_MS))
            .max(now.plus_millis(config.knock.max_ahead_ms));
        tracker.refuse_all_before(floor);
        store.advance(
            keys.iter()
                .zip(tracker.replay_states())
                .map(|(k, s)| (k, s.clone())),
        )?;
        tracing::warn!(
            until = %rfc3339(floor),
            seconds = floor.since(now).div_ceil(1000),
            "the machine stopped while state_sync = \"fence\" (another boot since): journal records may be lost, so every knock stamped before the fence is refused, for every client, until the clock passes it"
        );
        lost_floor = Some(floor);
    }
    if config.state_sync != StateSync::Fence {
        if let Err(e) = crate::state::remove_fence(dir) {
            tracing::warn!(error = %e, "replay state: cannot remove the old fence file");
        }
        return Ok((None, lost_floor));
    }
    let first = now
        .plus_millis(config.knock.max_ahead_ms + FENCE_LEAD_MS)
        .max(previous.unwrap_or(UnixMillis(0)));
    crate::state::write_fence(dir, first).map_err(fence_io)?;
    let fence = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(first.0));
    store.use_fence(std::sync::Arc::clone(&fence), config.knock.max_ahead_ms);
    Ok((Some(fence), lost_floor))
}

/// Keeps the fence of `state_sync = "fence"` ahead of the clock: rewrites it every
/// FENCE_PERIOD_MS on a blocking thread, and publishes it once it is durable. A failed write
/// is logged (once until one succeeds again); grants then sync their records as under "grant".
async fn keep_fence(core: Rc<RefCell<Core>>, fence: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    let mut tick = tokio::time::interval(Duration::from_millis(FENCE_PERIOD_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let (dir, ahead) = {
            let c = core.borrow();
            (c.config.state_dir.clone(), c.config.knock.max_ahead_ms)
        };
        let next = system_now()
            .plus_millis(ahead + FENCE_LEAD_MS)
            .max(UnixMillis(fence.load(Ordering::Acquire)));
        match tokio::task::spawn_blocking(move || crate::state::write_fence(&dir, next)).await {
            Ok(Ok(())) => {
                fence.store(next.0, Ordering::Release);
                if failing {
                    tracing::info!("replay state: the fence is written again");
                    failing = false;
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::error!(error = %e, "replay state: the fence cannot be written; grants sync their journal records until it can");
                    failing = true;
                }
            }
            Err(_) => {}
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config, secrets: Secrets) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, run_local(config, secrets));
    // A blocking task still running (a reload's key work or tracker build, minutes at
    // 1 000 000 clients; a status being serialized) must not hold the exit: dropping the
    // runtime would wait for it, and `systemctl stop`/`restart` with it (until systemd's
    // SIGKILL), every client locked out meanwhile. The state is saved by now.
    drop(local);
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn run_local(config: Config, secrets: Secrets) -> Result<(), StartError> {
    let started = Instant::now();
    let mut firewall = AnyFirewall::from_config(&config);
    let mut needed = vec![caps::Capability::CAP_NET_RAW];
    if firewall.needs_net_admin() {
        needed.push(caps::Capability::CAP_NET_ADMIN);
    }
    crate::privileges::check_capabilities(&needed)?;
    // Before anything is read or changed: no other sesamed on this state, table or socket.
    let table = match &firewall {
        AnyFirewall::Nftables(_) => Some(config.firewall.table.as_str()),
        _ => None,
    };
    let _instance = crate::instance::InstanceLock::acquire(&config.state_dir, table)?;
    // The action runner starts now, with the privileges sesamed started with (it keeps only
    // what the actions need), before any socket is open and before the privileges are dropped.
    let actions = actions::Actions::new(&config);
    if !config.actions.is_empty() {
        let spawned = actions::spawn_runner(&config)
            .await
            .map_err(StartError::Actions)?;
        actions::Actions::attach(&actions, spawned);
    }
    control::ensure_free(&config.control_socket).map_err(|source| StartError::Control {
        path: config.control_socket.display().to_string(),
        source,
    })?;
    // Under state_sync = "fence" journal records reach the disk without a sync: a crash of the
    // machine (another boot, not just of sesamed) may have lost some, and the fence says
    // what to refuse instead.
    let previous = crate::state::previous_run(&config.state_dir);
    // The windows the last run used, if it crashed (its marker is still there; the widest the
    // configuration allows if the marker is damaged).
    let windows_before =
        crate::state::previous_windows(&config.state_dir, config.knock.params.step_seconds);
    let fence_file = crate::state::read_fence(&config.state_dir);
    // Until when the state files say the last run ran (read before this start writes any): a
    // start after a crash with a clock behind that counts its rules from there.
    let last_running = crate::state::newest_state_file(&config.state_dir);
    let lost_writes = previous == Some(false) && !matches!(fence_file, Ok(None));
    let mut store = JournalStore::open_with(&config.state_dir, lost_writes)?;
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
    // Each is kept until the later of its saved expiry and the end of this window for its step
    // (a wider one now keeps them longer).
    tracker.remember_seen(store.seen(), store.seen_window(), system_now());
    // And the steps a datagram passed the gate for: `optional` mode grants no sequence alone
    // for them (a replay of a refused or burnt knock's sequence without its payload).
    tracker.remember_gated(store.gated(), system_now());
    // The steps whose records the last run had forgotten stay refused, whatever window this
    // start has (a wider one must not admit a refused datagram again once its record is gone:
    // review s22, finding 2). A snapshot of before `forgotten` lines were saved has its window:
    // everything before that window at this start is refused (fail closed: the stopped run had
    // forgotten at most that much).
    tracker.remember_forgotten(store.forgotten());
    if store.forgotten().is_empty() {
        let before = store
            .seen_window()
            .and_then(|w| w.step_before(system_now()));
        tracker.remember_forgotten(before.as_slice());
    }
    // A clean stop while the rules of a start after a crash held: they go on (what the crash
    // lost is still lost).
    if let Some(until) = store.crash_floor() {
        tracker.keep_crash_floor(until);
    }
    let mut windows = windows_before.clone();
    windows.push(tracker.config().saved_window());
    let crashed = store.mark_running(&windows).unwrap_or_else(|e| {
        tracing::error!(error = %e, "replay state: cannot mark the state as in use; treating the last stop as a crash");
        true
    });
    // After a crash: refuse every unbound payload that may have passed the gate before it (up
    // to the end of the last step the gate admitted, or max_ahead_ms from now, whichever is
    // later; a payload refused as too far ahead is remembered only by its lost gate MAC), and
    // grant no sequence alone in `optional` mode for a step that starts before then. The
    // window the crashed run used counts if it reached further than this one (a smaller
    // skew_steps now). "Now" is the crashed run's last time the state files record, if this
    // clock is behind it.
    if crashed {
        let now = system_now();
        // A file time more than a day ahead of the clock refuses the start, naming the file.
        let from = crate::state::crash_anchor(now, last_running.as_ref())?;
        if from > now {
            tracing::warn!(
                clock = %rfc3339(now),
                state_files = %rfc3339(from),
                "the clock is behind the last run's state files (a start before NTP?): the rules of a start after a crash count from the state files' time"
            );
        }
        tracker.after_crash(from, &windows_before);
    }
    // Those rules, after this crash or kept from an earlier one across a clean stop.
    let crash_rules_until = tracker.crash_floor().filter(|until| *until > system_now());
    let (fence, lost_writes_floor) = start_fence(
        &config,
        &mut store,
        &mut tracker,
        &keys,
        lost_writes,
        fence_file,
    )?;

    firewall.setup().await?;

    // Open the capture sockets now, so a missing capability fails the start.
    let (lo, hi) = (config.knock.params.port_lo, config.knock.params.port_hi);
    let interfaces: Vec<Option<String>> = match &config.interfaces {
        Interfaces::Any => vec![None],
        Interfaces::Named(names) => names.iter().cloned().map(Some).collect(),
    };
    for iface in &interfaces {
        if let Err(source) = Capture::open(iface.as_deref(), (lo, hi)) {
            let interface = iface.clone().unwrap_or_else(|| "any".into());
            if iface.is_none() || source.raw_os_error() == Some(libc::EPERM) {
                return Err(StartError::Capture { interface, source });
            }
            tracing::warn!(interface, error = %source, "interface not available yet; will retry");
        }
    }
    // The live-port capture filter: the eBPF program (if any) is loaded now, while sesamed
    // still has the privileges that takes.
    let (live_filter, live_rx) = capture::LiveFilter::new((lo, hi));
    let live_filter = Rc::new(RefCell::new(live_filter));
    live_filter
        .borrow_mut()
        .update(&tracker, system_now(), true);
    let (control, socket_file) =
        control::bind(&config.control_socket).map_err(|source| StartError::Control {
            path: config.control_socket.display().to_string(),
            source,
        })?;

    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Metrics { addr, source })?,
        ),
        None => None,
    };

    // Setup is done: keep only CAP_NET_RAW and CAP_NET_ADMIN, and switch user if asked.
    let dropped = crate::privileges::drop_privileges(config.user.as_deref(), &config.state_dir)?;
    // From here on the log is written by a thread of its own (started now: a thread started
    // before the drop would keep every capability), so that the packet thread never waits
    // for the log's file or pipe. Dropped at the end of the run: the queued lines are written.
    let _log = match crate::logging::Background::start() {
        Ok(log) => Some(log),
        Err(e) => {
            tracing::warn!(error = %e, "log writer thread not started: the log is written directly");
            None
        }
    };
    tracing::info!(
        uid = dropped.uid,
        gid = dropped.gid,
        "privileges dropped: only CAP_NET_RAW and CAP_NET_ADMIN kept"
    );
    if dropped.uid == 0 {
        tracing::warn!(
            "running as root (uid 0) without `user`: capabilities are dropped, but sesamed keeps root's access to files; set user = \"sesame\" in the configuration, or start it as that user (the shipped systemd unit does)"
        );
    }

    let (grants_tx, grants_rx) = mpsc::unbounded_channel();
    let (range_tx, range_rx) = tokio::sync::watch::channel((lo, hi));
    let last = vec![None; names.len()];
    let timer = Rc::new(tokio::sync::Notify::new());
    let core = Rc::new(RefCell::new(Core {
        tracker,
        store,
        names: std::sync::Arc::new(names),
        keys,
        last,
        grants: grants_tx,
        events: Vec::new(),
        limiter: LogLimiter::new(),
        debug_limiter: LogLimiter::new_debug(),
        state_write_failures: 0,
        unsaved: Vec::new(),
        config: std::sync::Arc::new(config.clone()),
        server_key: secrets.server_key.clone(),
        timer: Rc::clone(&timer),
        capture_range: range_tx,
        actions: Rc::clone(&actions),
        granted_during_reload: None,
        lost_writes_floor,
    }));
    if let Some(fence) = fence {
        tokio::task::spawn_local(keep_fence(Rc::clone(&core), fence));
    }
    let clock = Clock::new();
    let fw_state = Rc::new(RefCell::new(FwState {
        table: LeaseTable::new(firewall.traits(), lease_policy(&config)),
        failed_at: std::collections::HashMap::new(),
    }));
    // The leases of the previous run that are still on: known again (status, owners), and
    // put back in the firewall by the firewall task (after a reboot its table was empty).
    // Those of clients no longer configured are ended there too.
    let adopted = {
        let now = clock.now();
        let wall = system_now();
        let mut fw = fw_state.borrow_mut();
        let mut n = 0;
        for l in crate::state::load_leases(&config.state_dir) {
            let end = now.plus_millis(l.end.since(wall));
            let key = crate::lease::LeaseKey {
                client: l.client,
                address: l.address,
                prefix: l.prefix,
                service: l.service,
            };
            fw.table.adopt(key, &l.name, end, now);
            n += 1;
        }
        n
    };

    let backend = firewall.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let fw_task = tokio::task::spawn_local(firewall_task(
        firewall,
        grants_rx,
        stop_rx,
        Rc::clone(&fw_state),
        clock,
        firewall_task::Persist {
            state_dir: config.state_dir.clone(),
            restore: adopted > 0,
            keep: config.clients.iter().map(|c| c.public_key).collect(),
        },
    ));
    for iface in interfaces {
        let core = Rc::clone(&core);
        let live_rx = live_rx.clone();
        let capture_drops = live_filter.borrow().capture_drops();
        tokio::task::spawn_local(capture::run_capture::<Capture, _>(
            iface,
            range_rx.clone(),
            live_rx,
            capture_drops,
            move |raw| {
                core.borrow_mut().handle_packet(raw);
            },
        ));
    }
    {
        let core = Rc::clone(&core);
        let live_filter = Rc::clone(&live_filter);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let building = Rc::new(std::cell::Cell::new(false));
            loop {
                tick.tick().await;
                let now = system_now();
                // The step tables (the next step's off the packet thread) and, once they are
                // all there, the new live ports of the capture filter.
                steps::refresh(&core, &live_filter, &building, now);
                let mut core = core.borrow_mut();
                // Also forgets the gate MACs whose step has left the window.
                core.handle_timeout();
                core.limiter.flush_if_due();
                core.debug_limiter.flush_if_due();
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
    if let Some(listener) = metrics {
        let core = Rc::clone(&core);
        let fw_state = Rc::clone(&fw_state);
        let live_filter = Rc::clone(&live_filter);
        // Prometheus shows no client list: the status without it is cheap (counters,
        // leases, actions), so it is built here.
        let render = move || {
            let core = core.borrow();
            let s = status::status(
                &core.config,
                started,
                &core,
                &fw_state.borrow(),
                &live_filter.borrow(),
                clock.now(),
            );
            control::prometheus(&s)
        };
        tokio::task::spawn_local(crate::metrics::serve(listener, render));
    }
    {
        let core = Rc::clone(&core);
        let fw_state = Rc::clone(&fw_state);
        let live_filter = Rc::clone(&live_filter);
        tokio::task::spawn_local(control::serve(control, move |request| {
            let core = Rc::clone(&core);
            let fw_state = Rc::clone(&fw_state);
            let live_filter = Rc::clone(&live_filter);
            let request = request.to_owned();
            Box::pin(async move {
                let answer = match request.as_str() {
                    "status" => {
                        // On the packet thread only what is cheap to copy; the list of
                        // clients and the JSON (82 MB at 1 000 000 clients) are made on a
                        // blocking thread while knocks keep flowing.
                        let (mut s, list) = {
                            let core = core.borrow();
                            let fw = fw_state.borrow();
                            let s = status::status(
                                &core.config,
                                started,
                                &core,
                                &fw,
                                &live_filter.borrow(),
                                clock.now(),
                            );
                            (s, status::ClientList::of(&core, &fw))
                        };
                        let json = tokio::task::spawn_blocking(move || {
                            s.clients = list.build();
                            let json = serde_json::to_value(&s).map(|v| v.to_string());
                            drop(s);
                            crate::memory::release_freed();
                            json
                        })
                        .await;
                        return match json {
                            Ok(Ok(json)) => json,
                            Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }).to_string(),
                            Err(e) => {
                                serde_json::json!({ "error": format!("status: {e}") }).to_string()
                            }
                        };
                    }
                    "reload" => {
                        let result = reload::reload(&core).await;
                        let tracker = &core.borrow().tracker;
                        live_filter.borrow_mut().update(tracker, system_now(), true);
                        serde_json::to_value(result)
                    }
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
    // The signals are watched from before `ready`: until then SIGTERM, SIGINT and SIGHUP end
    // sesamed at once (their default), without the clean stop's snapshot.
    let stop_signals = stop_signals();
    {
        use tokio::signal::unix::{SignalKind, signal};
        let core = Rc::clone(&core);
        let live_filter = Rc::clone(&live_filter);
        let hup = signal(SignalKind::hangup());
        tokio::task::spawn_local(async move {
            let Ok(mut hup) = hup else {
                tracing::error!("cannot watch SIGHUP; use `sesamed reload`");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload::reload(&core).await;
                let tracker = &core.borrow().tracker;
                live_filter.borrow_mut().update(tracker, system_now(), true);
            }
        });
    }

    if let Some(until) = crash_rules_until
        && config.knock.payload != sesame_proto::params::PayloadMode::None
    {
        tracing::warn!(
            until = %rfc3339(until),
            "sesamed did not stop cleanly last time (or a clean restart followed such a stop within the time below): payloads that name no address and may have reached it before the crash are refused until then, and in optional mode a sequence alone opens nothing for a step that starts before then (knocks bound to an address are not affected)"
        );
    }
    tracing::info!(
        clients = config.clients.len(),
        actions = config.actions.len(),
        backend = %backend,
        interfaces = %config.interfaces,
        port_range = %format!("{lo}-{hi}"),
        payload = %config.knock.payload,
        control = %config.control_socket.display(),
        metrics = %config
            .metrics_listen
            .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics")),
        "ready"
    );
    // The start-up's parse and key work ran on every core; their arenas keep what they freed.
    tokio::task::spawn_blocking(crate::memory::release_freed);

    wait_for_stop(stop_signals).await;
    tracing::info!("stopping");
    actions.borrow_mut().stopping();
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
    // remembered gate MACs and gated steps; then the marker goes: this was a clean stop.
    {
        let mut core = core.borrow_mut();
        let seen = core.tracker.seen_list();
        core.store.set_seen(seen);
        let gated = core.tracker.gated_list();
        core.store.set_gated(gated);
        let window = core.tracker.config().saved_window();
        core.store.set_seen_window(window);
        let now = system_now();
        let crash_floor = core.tracker.crash_floor().filter(|until| *until > now);
        core.store.set_crash_floor(crash_floor);
        let forgotten = core.tracker.forgotten_steps(now);
        core.store.set_forgotten(forgotten);
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
    socket_file.remove();
    Ok(())
}

fn lease_policy(config: &Config) -> crate::lease::Policy {
    crate::lease::Policy {
        lease_ms: u64::from(config.firewall.lease_seconds) * 1000,
        cooldown_ms: config.firewall.command_cooldown_ms,
        burst: config.firewall.command_burst,
    }
}

type StopSignals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// SIGTERM and SIGINT, watched from now on (`None` if they cannot be).
fn stop_signals() -> Option<StopSignals> {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => None,
    }
}

async fn wait_for_stop(signals: Option<StopSignals>) {
    let Some((mut term, mut int)) = signals else {
        tracing::error!("cannot watch SIGTERM/SIGINT; stop sesamed with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
