//! The sans-IO knock tracker: packets in, events out, `now` always a parameter.
//!
//! For every client the tracker precomputes the ports of the counters in the skew window into
//! per-step tables (a port-indexed CSR array of `(client, position)` slots), so the cost of a
//! packet does not depend on the number of clients beyond the handful of slots that share its
//! port. Progress is kept per source address as a set of candidate `(client, counter)`
//! sequences that contain every port the source hit since its last reset:
//!
//! * the first in-range packet of a source only records its port (no per-client work);
//! * the second intersects the slots of both ports (usually nothing, or the one client);
//! * later packets filter the candidates; a packet that fits no candidate resets the source's
//!   progress and becomes its new first hit, so a range scan never completes a sequence;
//! * duplicates and reordering are harmless by construction (a hit is a bit in a mask).
//!
//! State is bounded: at most `max_sources` sources (least recently active evicted first), at
//! most `max_candidates` partial sequences per source, at most one buffered payload per source.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sesame_keys::PrivateKey;

use crate::kdf::ClientKeys;
use crate::params::{KnockParams, PayloadMode};
use crate::payload::{DATAGRAM_LEN, Opener, RejectReason, Request, check_len};
use crate::sequence::{SequenceError, derive_sequence};
use crate::service::{Proto, Service};
use crate::time::{TimeWindow, UnixMillis};

/// Tracker settings (the server's `[knock]` section plus resource caps).
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Knock parameters shared with the clients.
    pub params: KnockParams,
    /// Steps accepted on either side of the current one.
    pub skew_steps: u32,
    /// All knocks and the payload must arrive within this many milliseconds of the first.
    pub timeout_ms: u64,
    /// Whether a payload is required, optional or unused.
    pub payload: PayloadMode,
    /// Most sources tracked at once; the least recently active is evicted first.
    pub max_sources: usize,
    /// Most partial sequences per source; the oldest is evicted first.
    pub max_candidates: usize,
}

impl TrackerConfig {
    /// The default caps: 65 536 sources, 8 partial sequences per source.
    pub const DEFAULT_MAX_SOURCES: usize = 65_536;
    /// See [`TrackerConfig::DEFAULT_MAX_SOURCES`].
    pub const DEFAULT_MAX_CANDIDATES: usize = 8;

    fn window(&self) -> TimeWindow {
        TimeWindow {
            step_seconds: self.params.step_seconds,
            skew_steps: self.skew_steps,
        }
    }
}

/// Index of a client in the tracker's client list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u32);

impl ClientId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a client may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Services it may open. Empty: nothing.
    pub allow: Vec<Service>,
    /// Source prefixes it may knock from. Empty: any source.
    pub sources: Vec<IpNet>,
    /// Whether its payload may name an address other than the packet source.
    pub allow_other_ip: bool,
    /// After this moment it is refused.
    pub expires: Option<UnixMillis>,
}

/// A client as the tracker knows it.
pub struct ClientEntry {
    /// Its name, for logs.
    pub name: String,
    /// The keys it shares with the server.
    pub keys: ClientKeys,
    /// What it may do.
    pub policy: Policy,
}

impl fmt::Debug for ClientEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEntry")
            .field("name", &self.name)
            .field("public_key", self.keys.client_public())
            .field("policy", &self.policy)
            .finish()
    }
}

/// Per-client replay state: the last accepted payload timestamp and sequence-only counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayState {
    /// Timestamp of the last accepted payload.
    pub last_timestamp: Option<UnixMillis>,
    /// Counter of the last accepted sequence-only knock.
    pub last_counter: Option<u64>,
}

/// Access granted: open `services` for `address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The client.
    pub client: ClientId,
    /// Where the knock came from.
    pub source: IpAddr,
    /// The address to open (the source, or the payload's address).
    pub address: IpAddr,
    /// The services to open.
    pub services: Vec<Service>,
    /// The step of the knock.
    pub counter: u64,
    /// The payload's timestamp, if a payload was accepted.
    pub timestamp: Option<UnixMillis>,
}

/// Why a knock was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The payload datagram failed to open.
    Payload(RejectReason),
    /// The payload timestamp (or the sequence's counter) is not newer than the last accepted.
    Replay,
    /// The client's `expires` has passed.
    Expired,
    /// The source address is outside the client's `source` prefixes.
    SourceNotAllowed,
    /// The payload names another address and the client lacks `allow_other_ip`.
    OtherIpNotAllowed(IpAddr),
    /// The payload names an address that cannot be opened (unspecified, loopback, multicast,
    /// broadcast).
    BadAddress(IpAddr),
    /// The payload asks for a service outside the client's `allow` list.
    ServiceNotAllowed(Service),
}

impl Reason {
    /// Every reason code, in a fixed order (for metrics).
    pub const CODES: [&'static str; 15] = [
        "truncated",
        "too_long",
        "stale",
        "bad_mac",
        "bad_ephemeral",
        "bad_aead",
        "bad_version",
        "malformed",
        "counter_mismatch",
        "replay",
        "expired",
        "source_not_allowed",
        "other_ip_not_allowed",
        "bad_address",
        "service_not_allowed",
    ];

    /// A short stable identifier (`bad_mac`, `replay`, ...).
    pub const fn code(&self) -> &'static str {
        match self {
            Reason::Payload(r) => r.code(),
            Reason::Replay => "replay",
            Reason::Expired => "expired",
            Reason::SourceNotAllowed => "source_not_allowed",
            Reason::OtherIpNotAllowed(_) => "other_ip_not_allowed",
            Reason::BadAddress(_) => "bad_address",
            Reason::ServiceNotAllowed(_) => "service_not_allowed",
        }
    }

    fn index(&self) -> usize {
        let code = self.code();
        Self::CODES.iter().position(|c| *c == code).unwrap_or(0)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Payload(r) => write!(f, "{r}"),
            Reason::Replay => f.write_str("replayed or old knock"),
            Reason::Expired => f.write_str("client expired"),
            Reason::SourceNotAllowed => f.write_str("source address not allowed for this client"),
            Reason::OtherIpNotAllowed(a) => {
                write!(
                    f,
                    "asks to open {a}, which is not the source (allow_other_ip is off)"
                )
            }
            Reason::BadAddress(a) => write!(f, "asks to open {a}, which cannot be opened"),
            Reason::ServiceNotAllowed(s) => write!(f, "asks for {s}, which is not allowed"),
        }
    }
}

/// Something the server should act on or log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Open the services; the caller must persist [`Tracker::replay_states`] first.
    Granted(Grant),
    /// A knock or payload was refused.
    Rejected {
        /// Where it came from.
        source: IpAddr,
        /// The client, when the ports or the MAC identified one.
        client: Option<ClientId>,
        /// Why.
        reason: Reason,
    },
    /// A source completed a client's sequence.
    SequenceComplete {
        /// Where it came from.
        source: IpAddr,
        /// The client.
        client: ClientId,
        /// The step.
        counter: u64,
    },
}

/// What happened to one packet (for counters and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Outside the knock range (or an excluded port).
    OutOfRange,
    /// In range, but no sequence uses that port now, and the source had no progress.
    Ignored,
    /// Recorded as progress.
    Progress,
    /// Did not fit the source's progress: progress reset (this packet may start anew).
    Reset,
    /// Completed a sequence.
    Complete,
    /// A payload datagram was processed (see the events for the result).
    Payload,
}

/// Counters since the tracker was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets fed in.
    pub packets: u64,
    /// Packets to a port of the knock range.
    pub in_range: u64,
    /// Packets that reset a source's progress.
    pub resets: u64,
    /// Sequences completed.
    pub sequences_completed: u64,
    /// Payload datagrams examined (of the right size, at a payload port).
    pub payloads_seen: u64,
    /// Payloads that passed the MAC gate (each costs one X25519).
    pub x25519: u64,
    /// Payloads accepted.
    pub payloads_accepted: u64,
    /// Grants issued.
    pub grants: u64,
    /// Sources evicted because of the cap.
    pub sources_evicted: u64,
    /// Rejections by reason, indexed like [`Reason::CODES`].
    pub rejections: [u64; Reason::CODES.len()],
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    client: u32,
    position: u8,
    proto: Proto,
}

/// The ports of every client at one counter, indexed by port.
pub struct StepTable {
    counter: u64,
    lo: u16,
    /// Positions per client in this table (length + 1, or length in `none` mode; 1 if length 0).
    stride: usize,
    /// `slots[offsets[p - lo] .. offsets[p - lo + 1]]` are the slots on port `p`.
    offsets: Vec<u32>,
    slots: Vec<Slot>,
    /// `slots[i].client`, contiguous: the intersection reads only these (half the memory of
    /// the slots, so fewer cache misses with many clients).
    clients: Vec<u32>,
    /// `ports[c * stride + position]`.
    ports: Vec<u16>,
    /// `protos[c]`: bit `position` set when that position is TCP.
    tcp_mask: Vec<u32>,
}

impl fmt::Debug for StepTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepTable")
            .field("counter", &self.counter)
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl StepTable {
    /// Derives every client's sequence at `counter`. Pure: can run on another thread.
    pub fn build(
        clients: &[ClientEntry],
        params: &KnockParams,
        mode: PayloadMode,
        counter: u64,
    ) -> Result<Self, SequenceError> {
        let length = usize::from(params.length);
        // Positions that are indexed: the knocks, plus the payload port unless payloads are
        // unused. In single-packet mode the payload port is the knock.
        let stride = if length == 0 {
            1
        } else if mode == PayloadMode::None {
            length
        } else {
            length + 1
        };
        let mut ports = Vec::with_capacity(clients.len() * stride);
        let mut tcp_mask = Vec::with_capacity(clients.len());
        for client in clients {
            let seq = derive_sequence(&client.keys, params, counter)?;
            let mut mask = 0u32;
            for (i, k) in seq.knocks.iter().enumerate() {
                ports.push(k.port);
                if k.proto == Proto::Tcp {
                    mask |= 1 << i;
                }
            }
            if stride > length {
                ports.push(seq.payload_port);
            }
            tcp_mask.push(mask);
        }
        // Counting sort into a CSR array indexed by port.
        let size = params.range_size() as usize;
        let lo = params.port_lo;
        let mut offsets = vec![0u32; size + 1];
        for &p in &ports {
            offsets[usize::from(p - lo) + 1] += 1;
        }
        for i in 0..size {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut slots = vec![
            Slot {
                client: 0,
                position: 0,
                proto: Proto::Udp
            };
            ports.len()
        ];
        for (i, &p) in ports.iter().enumerate() {
            let client = i / stride;
            let position = i % stride;
            let at = &mut fill[usize::from(p - lo)];
            slots[*at as usize] = Slot {
                client: client as u32,
                position: position as u8,
                proto: if tcp_mask[client] & (1 << position) != 0 {
                    Proto::Tcp
                } else {
                    Proto::Udp
                },
            };
            *at += 1;
        }
        let clients = slots.iter().map(|s| s.client).collect();
        Ok(StepTable {
            counter,
            lo,
            stride,
            offsets,
            slots,
            clients,
            ports,
            tcp_mask,
        })
    }

    /// The counter this table belongs to.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    fn range_on(&self, port: u16) -> std::ops::Range<usize> {
        let i = usize::from(port.wrapping_sub(self.lo));
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => a as usize..b as usize,
            _ => 0..0,
        }
    }

    fn slots_on(&self, port: u16) -> &[Slot] {
        &self.slots[self.range_on(port)]
    }

    /// The clients whose sequence holds both (proto a, port a) and (proto b, port b), with the
    /// two positions, pushed as candidates. A port's slots are sorted by client (the table is
    /// filled in client order) and hold each client at most once, so a merge finds them.
    fn intersect(&self, a: (u16, Proto), b: (u16, Proto), found: &mut Vec<Candidate>) {
        let (ra, rb) = (self.range_on(a.0), self.range_on(b.0));
        let (xs, ys) = (&self.clients[ra.clone()], &self.clients[rb.clone()]);
        let (mut i, mut j) = (0, 0);
        // A branch-free merge over the client ids: the only data-dependent branch is the
        // (rare) match.
        while i < xs.len() && j < ys.len() {
            let (x, y) = (xs[i], ys[j]);
            if x == y {
                let (sx, sy) = (self.slots[ra.start + i], self.slots[rb.start + j]);
                if sx.proto == a.1 && sy.proto == b.1 {
                    found.push(Candidate {
                        counter: self.counter,
                        client: x,
                        mask: (1 << sx.position) | (1 << sy.position),
                    });
                }
            }
            i += usize::from(x <= y);
            j += usize::from(y <= x);
        }
    }

    /// The position of (proto, port) in a client's sequence.
    fn position_of(&self, client: u32, proto: Proto, port: u16) -> Option<u8> {
        let base = client as usize * self.stride;
        let seq = self.ports.get(base..base + self.stride)?;
        let pos = seq.iter().position(|&p| p == port)?;
        let is_tcp = self.tcp_mask[client as usize] & (1 << pos) != 0;
        (is_tcp == (proto == Proto::Tcp)).then_some(pos as u8)
    }

    fn payload_port(&self, client: u32, length: usize) -> Option<u16> {
        (self.stride > length).then(|| self.ports[client as usize * self.stride + length])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    counter: u64,
    client: u32,
    mask: u32,
}

#[derive(Clone, Copy, Debug)]
struct Awaiting {
    counter: u64,
    client: u32,
    payload_port: u16,
    deadline: UnixMillis,
}

#[derive(Debug)]
struct SourceState {
    /// LRU generation of the last touch.
    generation: u64,
    /// When the current progress started (first hit).
    started: UnixMillis,
    /// The first hit since the last reset: (port, proto).
    first: Option<(u16, Proto)>,
    /// Sequences containing every port hit since the last reset (after two hits).
    candidates: Vec<Candidate>,
    /// Completed sequences waiting for their payload.
    awaiting: Option<Awaiting>,
    /// A payload-sized datagram that arrived before its sequence completed.
    pending: Option<(u16, Box<[u8; DATAGRAM_LEN]>)>,
}

impl SourceState {
    fn new(generation: u64, now: UnixMillis) -> Self {
        SourceState {
            generation,
            started: now,
            first: None,
            candidates: Vec::new(),
            awaiting: None,
            pending: None,
        }
    }

    fn clear_progress(&mut self) {
        self.first = None;
        self.candidates.clear();
        self.pending = None;
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
            && self.candidates.is_empty()
            && self.awaiting.is_none()
            && self.pending.is_none()
    }
}

/// The knock tracker. See the module documentation.
pub struct Tracker {
    config: TrackerConfig,
    opener: Opener,
    clients: Arc<Vec<ClientEntry>>,
    replay: Vec<ReplayState>,
    /// Step tables, oldest first, covering the window and one step ahead.
    tables: VecDeque<StepTable>,
    sources: HashMap<IpAddr, SourceState, foldhash::quality::RandomState>,
    lru: VecDeque<(IpAddr, u64)>,
    generation: u64,
    stats: Stats,
    knock_mask: u32,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("clients", &self.clients.len())
            .field("sources", &self.sources.len())
            .field("tables", &self.tables)
            .finish_non_exhaustive()
    }
}

/// Maps IPv4-mapped IPv6 addresses to IPv4, so one host is one source.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Whether a payload may ask to open this address: not unspecified, loopback, multicast or
/// broadcast (the address is canonical: IPv4-mapped IPv6 is already IPv4).
fn openable(ip: IpAddr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(a) if a.is_broadcast()))
}

impl Tracker {
    /// A tracker for `clients`, with their persisted replay state (missing entries start
    /// empty), primed for `now`.
    pub fn new(
        config: TrackerConfig,
        server_key: PrivateKey,
        clients: Vec<ClientEntry>,
        replay: Vec<ReplayState>,
        now: UnixMillis,
    ) -> Result<Self, SequenceError> {
        let mut replay = replay;
        replay.resize(clients.len(), ReplayState::default());
        let length = u32::from(config.params.length);
        let mut tracker = Tracker {
            opener: Opener::new(server_key, config.window()),
            config,
            clients: Arc::new(clients),
            replay,
            tables: VecDeque::new(),
            sources: HashMap::with_hasher(foldhash::quality::RandomState::default()),
            lru: VecDeque::new(),
            generation: 0,
            stats: Stats::default(),
            knock_mask: if length >= 32 {
                u32::MAX
            } else {
                (1u32 << length) - 1
            },
        };
        tracker.advance(now)?;
        Ok(tracker)
    }

    /// The configuration.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// The clients, in [`ClientId`] order.
    pub fn clients(&self) -> &[ClientEntry] {
        &self.clients
    }

    /// The client list, shared (to build [`StepTable`]s on another thread).
    pub fn clients_shared(&self) -> Arc<Vec<ClientEntry>> {
        Arc::clone(&self.clients)
    }

    /// Replay state of every client, in [`ClientId`] order. Persist it before acting on a
    /// [`Event::Granted`].
    pub fn replay_states(&self) -> &[ReplayState] {
        &self.replay
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Number of sources with state.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Checks the state caps (for tests and fuzzing): panics if one is exceeded.
    pub fn assert_invariants(&self) {
        assert!(self.sources.len() <= self.config.max_sources);
        assert!(self.lru.len() <= 2 * self.config.max_sources + 64);
        for s in self.sources.values() {
            assert!(s.candidates.len() <= self.config.max_candidates);
        }
        assert!(self.tables.len() <= 2 * self.config.skew_steps as usize + 2);
    }

    /// The counters whose tables are missing for `now` (the window and one step ahead).
    pub fn missing_counters(&self, now: UnixMillis) -> Vec<u64> {
        let w = self.config.window().counters(now);
        (*w.start()..=w.end().saturating_add(1))
            .filter(|c| !self.tables.iter().any(|t| t.counter == *c))
            .collect()
    }

    /// Installs a table built by [`StepTable::build`] (ignored if it is outside the window).
    pub fn install(&mut self, table: StepTable, now: UnixMillis) {
        let w = self.config.window().counters(now);
        if table.counter < *w.start() || table.counter > w.end().saturating_add(1) {
            return;
        }
        if self.tables.iter().any(|t| t.counter == table.counter) {
            return;
        }
        let at = self
            .tables
            .iter()
            .position(|t| t.counter > table.counter)
            .unwrap_or(self.tables.len());
        self.tables.insert(at, table);
    }

    /// Drops the tables that left the window and builds the missing ones (synchronously).
    pub fn advance(&mut self, now: UnixMillis) -> Result<(), SequenceError> {
        let w = self.config.window().counters(now);
        while self.tables.front().is_some_and(|t| t.counter < *w.start()) {
            self.tables.pop_front();
        }
        while self
            .tables
            .back()
            .is_some_and(|t| t.counter > w.end().saturating_add(1))
        {
            self.tables.pop_back();
        }
        for counter in self.missing_counters(now) {
            let table = StepTable::build(
                &self.clients,
                &self.config.params,
                self.config.payload,
                counter,
            )?;
            self.install(table, now);
        }
        Ok(())
    }

    fn in_window(&self, now: UnixMillis) -> impl Iterator<Item = &StepTable> {
        let w = self.config.window().counters(now);
        self.tables.iter().filter(move |t| w.contains(&t.counter))
    }

    fn table(&self, counter: u64) -> Option<&StepTable> {
        self.tables.iter().find(|t| t.counter == counter)
    }

    /// Feeds one packet: `datagram` is the UDP payload (None for TCP SYNs).
    pub fn packet(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        proto: Proto,
        port: u16,
        datagram: Option<&[u8]>,
        events: &mut Vec<Event>,
    ) -> Outcome {
        self.stats.packets += 1;
        if !self.config.params.in_range(port) {
            return Outcome::OutOfRange;
        }
        self.stats.in_range += 1;
        let source = canonical_ip(source);
        // Normally the server keeps the tables current (`advance` every 500 ms); never miss a
        // step if it did not, and never let a table that has left the window (and the partial
        // sequences that point into it) complete a knock for a counter outside the window.
        let w = self.config.window().counters(now);
        let expected = (w.end() - w.start() + 1) as usize;
        if self.in_window(now).count() < expected
            || self.tables.front().is_some_and(|t| t.counter < *w.start())
        {
            // Errors are impossible with validated parameters; without tables nothing matches.
            let _ = self.advance(now);
        }
        if self.config.params.length == 0 {
            return self.single_packet(now, source, proto, port, datagram, events);
        }
        self.sequence_packet(now, source, proto, port, datagram, events)
    }

    /// Single-packet mode: the payload alone, on the client's rotating payload port.
    fn single_packet(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        proto: Proto,
        port: u16,
        datagram: Option<&[u8]>,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let (Proto::Udp, Some(datagram)) = (proto, datagram) else {
            return Outcome::Ignored;
        };
        let mut matches: Vec<(u64, u32)> = Vec::new();
        for t in self.in_window(now) {
            for s in t.slots_on(port) {
                matches.push((t.counter, s.client));
            }
        }
        if matches.is_empty() {
            return Outcome::Ignored;
        }
        self.stats.payloads_seen += 1;
        if let Err(r) = check_len(datagram) {
            self.reject(events, source, None, Reason::Payload(r));
            return Outcome::Payload;
        }
        for (counter, client) in matches {
            let keys = &self.clients[client as usize].keys;
            if self.opener.check_gate(now, keys, counter, datagram).is_ok() {
                self.open_payload(now, source, client, counter, datagram, events);
                return Outcome::Payload;
            }
        }
        self.reject(events, source, None, Reason::Payload(RejectReason::BadMac));
        Outcome::Payload
    }

    /// Marks `source` as active (creating its state). The LRU order is kept at a granularity
    /// of a quarter of the cap: a source queued less than that many touches ago keeps its
    /// place, so the queue grows with sources, not with packets.
    fn touch(&mut self, source: IpAddr, now: UnixMillis) -> &mut SourceState {
        self.generation += 1;
        let generation = self.generation;
        let granularity = (self.config.max_sources as u64 / 4).max(1);
        let queued = self.sources.get(&source).map(|s| s.generation);
        let requeue = queued.is_none_or(|g| generation - g >= granularity);
        if requeue {
            self.lru.push_back((source, generation));
        }
        if queued.is_none() {
            while self.sources.len() >= self.config.max_sources {
                self.evict_one();
            }
        }
        if self.lru.len() > 2 * self.config.max_sources + 64 {
            self.compact_lru();
        }
        let state = self
            .sources
            .entry(source)
            .or_insert_with(|| SourceState::new(generation, now));
        if requeue {
            state.generation = generation;
        }
        state
    }

    fn evict_one(&mut self) {
        while let Some((ip, generation)) = self.lru.pop_front() {
            if self
                .sources
                .get(&ip)
                .is_some_and(|s| s.generation == generation)
            {
                self.sources.remove(&ip);
                self.stats.sources_evicted += 1;
                return;
            }
        }
        // The queue lost track (cannot happen): drop an arbitrary entry to keep the cap.
        if let Some(ip) = self.sources.keys().next().copied() {
            self.sources.remove(&ip);
            self.stats.sources_evicted += 1;
        }
    }

    fn compact_lru(&mut self) {
        let mut live: Vec<(IpAddr, u64)> = self
            .sources
            .iter()
            .map(|(ip, s)| (*ip, s.generation))
            .collect();
        live.sort_by_key(|(_, g)| *g);
        self.lru = live.into();
    }

    fn sequence_packet(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        proto: Proto,
        port: u16,
        datagram: Option<&[u8]>,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let length = usize::from(self.config.params.length);
        let timeout = self.config.timeout_ms;
        let has_slots = self
            .in_window(now)
            .any(|t| t.slots_on(port).iter().any(|s| s.proto == proto));
        let Some(state) = self.sources.get_mut(&source) else {
            if !has_slots {
                return Outcome::Ignored;
            }
            let state = self.touch(source, now);
            state.started = now;
            state.first = Some((port, proto));
            Self::maybe_buffer(state, port, proto, datagram);
            return Outcome::Progress;
        };

        // Expire progress older than the timeout.
        if now.since(state.started) > timeout {
            state.clear_progress();
        }
        if state.awaiting.is_some_and(|a| now > a.deadline) {
            state.awaiting = None;
        }

        // The payload of a completed sequence, or a late duplicate of one of its knocks.
        if let Some(a) = state.awaiting {
            if port == a.payload_port && proto == Proto::Udp {
                if let Some(d) = datagram {
                    state.awaiting = None;
                    self.stats.payloads_seen += 1;
                    self.open_payload(now, source, a.client, a.counter, d, events);
                    self.forget_if_empty(source);
                    return Outcome::Payload;
                }
            }
            let member = self
                .tables
                .iter()
                .find(|t| t.counter == a.counter)
                .and_then(|t| t.position_of(a.client, proto, port))
                .is_some();
            if member && state.first.is_none() && state.candidates.is_empty() {
                return Outcome::Progress;
            }
        }

        let outcome = if !state.candidates.is_empty() {
            let tables = &self.tables;
            state.candidates.retain_mut(|c| {
                match tables
                    .iter()
                    .find(|t| t.counter == c.counter)
                    .and_then(|t| t.position_of(c.client, proto, port))
                {
                    Some(pos) => {
                        c.mask |= 1 << pos;
                        true
                    }
                    None => false,
                }
            });
            if state.candidates.is_empty() {
                Outcome::Reset
            } else {
                Outcome::Progress
            }
        } else if let Some((fport, fproto)) = state.first {
            if fport == port && fproto == proto {
                Outcome::Progress // a duplicate of the first knock
            } else {
                let mut found = Vec::new();
                let w = self.config.window().counters(now);
                for t in self.tables.iter().filter(|t| w.contains(&t.counter)) {
                    t.intersect((fport, fproto), (port, proto), &mut found);
                }
                if found.is_empty() {
                    Outcome::Reset
                } else {
                    let cap = self.config.max_candidates;
                    if found.len() > cap {
                        // Keep the newest counters: the oldest partial sequences go first.
                        found.sort_by_key(|c| c.counter);
                        found.drain(..found.len() - cap);
                    }
                    state.candidates = found;
                    Outcome::Progress
                }
            }
        } else {
            // No progress (e.g. only an awaited payload): this packet starts anew.
            Outcome::Reset
        };

        if outcome == Outcome::Reset {
            let fresh = state.first.is_none() && state.candidates.is_empty();
            state.clear_progress();
            state.awaiting = None;
            if !fresh {
                self.stats.resets += 1;
            }
            if has_slots {
                state.started = now;
                state.first = Some((port, proto));
                Self::maybe_buffer(state, port, proto, datagram);
                self.touch(source, now);
                return if fresh {
                    Outcome::Progress
                } else {
                    Outcome::Reset
                };
            }
            self.forget_if_empty(source);
            return if fresh {
                Outcome::Ignored
            } else {
                Outcome::Reset
            };
        }

        Self::maybe_buffer(state, port, proto, datagram);
        // Completion: every knock position hit by one candidate.
        let knock_mask = self.knock_mask;
        let done = state
            .candidates
            .iter()
            .copied()
            .find(|c| c.mask & knock_mask == knock_mask);
        self.touch(source, now);
        let Some(done) = done else {
            return Outcome::Progress;
        };
        self.complete(now, source, done, length, events);
        Outcome::Complete
    }

    /// Keeps a payload-sized UDP datagram that may be the payload of a sequence not yet
    /// complete (the payload overtook a knock).
    fn maybe_buffer(state: &mut SourceState, port: u16, proto: Proto, datagram: Option<&[u8]>) {
        if let (Proto::Udp, Some(d)) = (proto, datagram) {
            if d.len() == DATAGRAM_LEN {
                let mut buf = Box::new([0u8; DATAGRAM_LEN]);
                buf.copy_from_slice(d);
                state.pending = Some((port, buf));
            }
        }
    }

    fn forget_if_empty(&mut self, source: IpAddr) {
        if self.sources.get(&source).is_some_and(SourceState::is_empty) {
            self.sources.remove(&source);
        }
    }

    fn complete(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        done: Candidate,
        length: usize,
        events: &mut Vec<Event>,
    ) {
        self.stats.sequences_completed += 1;
        events.push(Event::SequenceComplete {
            source,
            client: ClientId(done.client),
            counter: done.counter,
        });
        let payload_port = self
            .table(done.counter)
            .and_then(|t| t.payload_port(done.client, length));
        let Some(state) = self.sources.get_mut(&source) else {
            return;
        };
        let started = state.started;
        let pending = state.pending.take();
        state.clear_progress();
        let mode = self.config.payload;
        if mode != PayloadMode::None {
            if let Some(payload_port) = payload_port {
                state.awaiting = Some(Awaiting {
                    counter: done.counter,
                    client: done.client,
                    payload_port,
                    deadline: started.plus_millis(self.config.timeout_ms),
                });
            }
        }
        if mode != PayloadMode::Required {
            self.sequence_grant(now, source, done, events);
        }
        // A payload that overtook the last knock.
        if let (Some((port, d)), Some(payload_port)) = (pending, payload_port) {
            if port == payload_port && mode != PayloadMode::None {
                if let Some(state) = self.sources.get_mut(&source) {
                    state.awaiting = None;
                }
                self.stats.payloads_seen += 1;
                self.open_payload(now, source, done.client, done.counter, &d[..], events);
            }
        }
        self.forget_if_empty(source);
    }

    fn reject(
        &mut self,
        events: &mut Vec<Event>,
        source: IpAddr,
        client: Option<ClientId>,
        reason: Reason,
    ) {
        self.stats.rejections[reason.index()] += 1;
        events.push(Event::Rejected {
            source,
            client,
            reason,
        });
    }

    /// Checks what every grant needs: not expired, source inside the prefixes.
    fn check_client(&self, now: UnixMillis, client: u32, source: IpAddr) -> Result<(), Reason> {
        let policy = &self.clients[client as usize].policy;
        if policy.expires.is_some_and(|e| now >= e) {
            return Err(Reason::Expired);
        }
        if !policy.sources.is_empty() && !policy.sources.iter().any(|n| n.contains(&source)) {
            return Err(Reason::SourceNotAllowed);
        }
        Ok(())
    }

    /// A sequence alone opens every allowed service for the source (`optional`, `none`).
    fn sequence_grant(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        done: Candidate,
        events: &mut Vec<Event>,
    ) {
        let client = ClientId(done.client);
        if let Err(reason) = self.check_client(now, done.client, source) {
            self.reject(events, source, Some(client), reason);
            return;
        }
        let replay = &mut self.replay[client.index()];
        if replay.last_counter.is_some_and(|c| done.counter <= c) {
            self.reject(events, source, Some(client), Reason::Replay);
            return;
        }
        replay.last_counter = Some(done.counter);
        self.stats.grants += 1;
        events.push(Event::Granted(Grant {
            client,
            source,
            address: source,
            services: self.clients[client.index()].policy.allow.clone(),
            counter: done.counter,
            timestamp: None,
        }));
    }

    fn open_payload(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        client: u32,
        counter: u64,
        datagram: &[u8],
        events: &mut Vec<Event>,
    ) {
        let id = ClientId(client);
        let keys = &self.clients[client as usize].keys;
        if let Err(r) = self.opener.check_gate(now, keys, counter, datagram) {
            // In sequence mode the ports identified the client; in single-packet mode only a
            // passed gate does.
            self.reject(events, source, Some(id), Reason::Payload(r));
            return;
        }
        self.stats.x25519 += 1;
        let request = match self.opener.open_after_gate(keys, counter, datagram) {
            Ok(r) => r,
            Err(r) => {
                self.reject(events, source, Some(id), Reason::Payload(r));
                return;
            }
        };
        self.stats.payloads_accepted += 1;
        match self.payload_grant(now, source, client, counter, &request) {
            Ok(grant) => {
                self.replay[client as usize].last_timestamp = Some(request.timestamp);
                self.stats.grants += 1;
                events.push(Event::Granted(grant));
            }
            Err(reason) => self.reject(events, source, Some(id), reason),
        }
    }

    fn payload_grant(
        &self,
        now: UnixMillis,
        source: IpAddr,
        client: u32,
        counter: u64,
        request: &Request,
    ) -> Result<Grant, Reason> {
        if self.replay[client as usize]
            .last_timestamp
            .is_some_and(|t| request.timestamp <= t)
        {
            return Err(Reason::Replay);
        }
        self.check_client(now, client, source)?;
        let policy = &self.clients[client as usize].policy;
        let address = request.address.map_or(source, canonical_ip);
        if !openable(address) {
            return Err(Reason::BadAddress(address));
        }
        if address != source && !policy.allow_other_ip {
            return Err(Reason::OtherIpNotAllowed(address));
        }
        let services = if request.services.is_empty() {
            policy.allow.clone()
        } else {
            let mut out: Vec<Service> = Vec::with_capacity(request.services.len());
            for s in &request.services {
                if !policy.allow.contains(s) {
                    return Err(Reason::ServiceNotAllowed(*s));
                }
                if !out.contains(s) {
                    out.push(*s);
                }
            }
            out
        };
        Ok(Grant {
            client: ClientId(client),
            source,
            address,
            services,
            counter,
            timestamp: Some(request.timestamp),
        })
    }
}

#[cfg(test)]
mod tests;
