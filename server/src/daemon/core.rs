//! The packet path: capture → tracker → replay state persisted → grants to the firewall task;
//! rejections and missing payloads logged (rate-limited).

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use sesame_keys::PublicKey;
use sesame_proto::tracker::ClientId;
use sesame_proto::{Event, Service, Tracker, UnixMillis};
use tokio::sync::mpsc;

use super::firewall_task::FwMsg;
use super::system_now;
use crate::capture;
use crate::config::Config;
use crate::state::{JournalStore, ReplayStore};

/// A grant to carry out: open `services` for `address`.
#[derive(Debug)]
pub(super) struct GrantJob {
    pub(super) client: PublicKey,
    pub(super) client_name: String,
    pub(super) source: IpAddr,
    pub(super) address: IpAddr,
    /// The block the grant opens around `address` (its `lease_prefix_v4`/`_v6`).
    pub(super) prefix: u8,
    pub(super) services: Vec<Service>,
}

const REJECTION_LINES_PER_SECOND: u32 = 50;

pub(super) struct LogLimiter {
    window: Instant,
    lines: u32,
    suppressed: u64,
    /// Limits debug lines: what it suppresses is said at debug level, not as suppressed
    /// rejections (a flood of debug lines must not hide the `rejected` lines either).
    debug: bool,
}

impl LogLimiter {
    /// The limiter of the `rejected` and `action not run` lines.
    pub(super) fn new() -> Self {
        LogLimiter {
            window: Instant::now(),
            lines: 0,
            suppressed: 0,
            debug: false,
        }
    }

    /// A limiter of its own for debug lines.
    pub(super) fn new_debug() -> Self {
        LogLimiter {
            debug: true,
            ..LogLimiter::new()
        }
    }

    pub(super) fn allow(&mut self) -> bool {
        self.flush_if_due();
        if self.lines < REJECTION_LINES_PER_SECOND {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    pub(super) fn flush_if_due(&mut self) {
        if self.window.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self.suppressed > 0 && self.debug {
            tracing::debug!(
                suppressed = self.suppressed,
                "debug log lines suppressed in the last second (rate limit)"
            );
        } else if self.suppressed > 0 {
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
pub(super) struct LastKnock {
    pub(super) at: UnixMillis,
    pub(super) source: IpAddr,
    pub(super) result: &'static str,
}

/// Everything the packet path touches. The packet path persists replay state only through
/// the [`ReplayStore`] trait (`S`); the daemon runs it with the local journal.
pub(super) struct Core<S = JournalStore> {
    pub(super) tracker: Tracker,
    pub(super) store: S,
    /// The clients' names, by index (shared with the status built off the packet thread).
    pub(super) names: std::sync::Arc<Vec<String>>,
    pub(super) keys: Vec<PublicKey>,
    pub(super) last: Vec<Option<LastKnock>>,
    pub(super) grants: mpsc::UnboundedSender<FwMsg>,
    /// The configuration in force (shared with a reload, which reads it off the packet
    /// thread).
    pub(super) config: std::sync::Arc<Config>,
    /// The server's private key (kept: key files may not be readable after the privilege drop).
    pub(super) server_key: sesame_keys::PrivateKey,
    pub(super) events: Vec<Event>,
    pub(super) limiter: LogLimiter,
    /// The rate limit of the debug lines of the packet path (their own: under a flood they
    /// must not use up the budget of the `rejected` lines).
    pub(super) debug_limiter: LogLimiter,
    pub(super) state_write_failures: u64,
    /// Clients whose last grant could not be saved (refused): saved with the next grant.
    pub(super) unsaved: Vec<PublicKey>,
    /// Wakes the timer task when the tracker has an earlier deadline.
    pub(super) timer: Rc<tokio::sync::Notify>,
    /// The knock range the capture sockets filter for (a reload may change it).
    pub(super) capture_range: tokio::sync::watch::Sender<(u16, u16)>,
    /// Actions: the runner, cooldowns, caps, last runs.
    pub(super) actions: Rc<std::cell::RefCell<super::actions::Actions>>,
    /// While a reload builds the new tracker off the packet thread: the clients (indices in
    /// this tracker) granted meanwhile, whose newer replay state the new tracker takes over.
    pub(super) granted_during_reload: Option<Vec<u32>>,
    /// After a machine crash under `state_sync = "fence"`: every knock stamped before this is
    /// refused, for every client (in their floors; kept here for `sesamed status`).
    pub(super) lost_writes_floor: Option<UnixMillis>,
}

impl<S: ReplayStore> Core<S> {
    pub(super) fn handle_packet(&mut self, raw: &[u8]) {
        let Some(p) = capture::parse_ip(raw) else {
            return;
        };
        let now = system_now();
        let armed = self.tracker.poll_timeout();
        self.tracker.packet(now, p, &mut self.events);
        self.flush_events(now);
        let next = self.tracker.poll_timeout();
        if next.is_some() && (armed.is_none() || next < armed) {
            self.timer.notify_one();
        }
    }

    /// Ends the completed sequences whose payload did not come in time.
    pub(super) fn handle_timeout(&mut self) {
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
                if let Some(granted) = &mut self.granted_during_reload {
                    granted.push(g.client.0);
                }
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
                if let Err(e) = self
                    .store
                    .advance(states.iter().map(|(k, s)| (k, s.clone())))
                {
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
                let prefix = self.config.clients.get(g.client.0 as usize).map_or(
                    crate::lease::full_prefix(g.address),
                    |c| {
                        if g.address.is_ipv4() {
                            c.lease_prefix_v4
                        } else {
                            c.lease_prefix_v6
                        }
                    },
                );
                // A knock for an action alone opens nothing.
                if g.action.is_none() || !g.services.is_empty() {
                    let job = GrantJob {
                        client: key,
                        client_name: self.name(g.client).to_owned(),
                        source: g.source,
                        address: g.address,
                        prefix,
                        services: g.services.clone(),
                    };
                    if self.grants.send(FwMsg::Grant(job)).is_err() {
                        tracing::error!("firewall task is gone; grant dropped");
                    }
                }
                // Its replay state is saved (above): a replay of this knock never gets here.
                if let Some(action) = &g.action {
                    let name = self.name(g.client).to_owned();
                    let bound = g.bound.then_some(g.address);
                    self.actions.borrow_mut().request(
                        &name,
                        g.source,
                        bound,
                        action,
                        &mut self.limiter,
                    );
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
                let optional =
                    self.config.knock.payload == sesame_proto::params::PayloadMode::Optional;
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
                // Under a flood of knocks at the live ports every spoofed source completes a
                // sequence: at debug level one line each (tens of thousands a second, a tenth
                // of sesamed's time spent formatting and writing them) unless they have a
                // rate limit of their own (50 a second).
                if tracing::enabled!(tracing::Level::DEBUG) && self.debug_limiter.allow() {
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
}
