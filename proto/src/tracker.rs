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
//! A completed sequence waits for its payload until `timeout_ms` after its first knock: stray
//! packets from the source (a scan, or one spoofed in its name) do not discard that slot, and
//! neither does a datagram that fails the MAC gate. In `optional` mode the sequence-only grant
//! comes only when no payload arrived by then ([`Tracker::handle_timeout`]).
//!
//! Payloads are checked in order of cost: length and window, then the cache of gate MACs
//! already seen (a replayed datagram stops here, before any key is used), then the MAC gate,
//! then a per-client cap on X25519 operations, then X25519 and the AEAD, then the replay state
//! (a windowed set of accepted datagrams per client, [`ReplayState`]) and the policy.
//!
//! State is bounded: at most `max_sources` sources (least recently active evicted first), at
//! most `max_candidates` partial sequences and [`MAX_AWAITING`] completed ones per source, at
//! most one buffered payload per source, at most [`MAX_SEEN`] gate MACs, and per client at most
//! [`MAX_ACCEPTED`] accepted payloads and [`MAX_STEPS`] used steps.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use ipnet::IpNet;
use sesame_keys::{PrivateKey, PublicKey};

use crate::action::{ActionName, AllowedAction};
use crate::kdf::ClientKeys;
use crate::params::{KnockParams, PayloadMode};
use crate::payload::{
    Action, DATAGRAM_LEN, MAC_LEN, Opener, RejectReason, Request, carried_mac, check_len,
    is_payload_len,
};
use crate::sequence::{SequenceError, derive_sequence};
use crate::service::{Proto, Service};
use crate::time::{TimeWindow, UnixMillis};

/// Most completed sequences one source can have waiting for their payload at once.
pub const MAX_AWAITING: usize = 4;
pub use seen::{MAX_SEEN, MAX_SEEN_PER_CLIENT};
use seen::{SeenCache, UNKNOWN_STEP};
/// Most accepted payloads remembered per client (the oldest is dropped first, raising
/// [`ReplayState::floor`]).
pub const MAX_ACCEPTED: usize = 64;
/// Most used steps remembered per client (as for [`MAX_ACCEPTED`]).
pub const MAX_STEPS: usize = 32;

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
    /// How far ahead of `now` a payload's timestamp may be, in milliseconds.
    pub max_ahead_ms: u64,
    /// Per client, X25519 operations allowed per second (and in a burst).
    pub x25519_per_second: u32,
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
    /// Default of [`TrackerConfig::x25519_per_second`].
    pub const DEFAULT_X25519_PER_SECOND: u32 = 100;

    /// A configuration with the default caps, `max_ahead_ms` of `skew_steps` steps, and the
    /// default X25519 rate.
    pub fn new(
        params: KnockParams,
        skew_steps: u32,
        timeout_ms: u64,
        payload: PayloadMode,
    ) -> Self {
        let max_ahead_ms = u64::from(skew_steps) * u64::from(params.step_seconds) * 1000;
        TrackerConfig {
            params,
            skew_steps,
            timeout_ms,
            payload,
            max_ahead_ms,
            x25519_per_second: Self::DEFAULT_X25519_PER_SECOND,
            max_sources: Self::DEFAULT_MAX_SOURCES,
            max_candidates: Self::DEFAULT_MAX_CANDIDATES,
        }
    }

    fn window(&self) -> TimeWindow {
        TimeWindow {
            step_seconds: self.params.step_seconds,
            skew_steps: self.skew_steps,
        }
    }

    /// The window of this configuration, as the server saves it ([`SavedWindow`]).
    pub fn saved_window(&self) -> SavedWindow {
        SavedWindow {
            step_seconds: self.params.step_seconds,
            skew_steps: self.skew_steps,
            timeout_ms: self.timeout_ms,
        }
    }
}

/// The acceptance window a tracker ran with: what decides how long a datagram that passed its
/// gate could still be used. The server saves it with what depends on it: in the crash marker
/// (a start after a crash refuses what the crashed run's window let through the gate,
/// [`Tracker::after_crash`]), and with the gate MACs and gated steps of a clean stop (their
/// expiries were computed for it: [`Tracker::remember_seen`] widens them for a wider one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SavedWindow {
    /// [`KnockParams::step_seconds`].
    pub step_seconds: u32,
    /// [`TrackerConfig::skew_steps`].
    pub skew_steps: u32,
    /// [`TrackerConfig::timeout_ms`].
    pub timeout_ms: u64,
}

impl SavedWindow {
    /// Whether a crash under `self` needs nothing `other` does not (same step length, at
    /// least as many skew steps).
    pub fn covers(&self, other: &SavedWindow) -> bool {
        self.step_seconds == other.step_seconds && self.skew_steps >= other.skew_steps
    }

    /// The last step before this window at `now` (`None` before the first step, or for a step
    /// length of 0: no window): a run with this window that stopped at `now` could have
    /// forgotten the records of that step and older ones, never of a newer one.
    pub fn step_before(&self, now: UnixMillis) -> Option<UsedStep> {
        if self.step_seconds == 0 {
            return None;
        }
        let counter = now
            .counter(self.step_seconds)
            .checked_sub(u64::from(self.skew_steps) + 1)?;
        Some(UsedStep {
            step_seconds: self.step_seconds,
            counter,
        })
    }

    /// The end of the last step whose datagrams could have passed the gate of a run with this
    /// window that stopped at or before `start`: the step after the window at `start`
    /// (a payload for it is checked against its gate and burnt on arrival). `None` for a step
    /// length of 0 (no window).
    fn gate_reach(&self, start: UnixMillis) -> Option<UnixMillis> {
        if self.step_seconds == 0 {
            return None;
        }
        let last = start
            .counter(self.step_seconds)
            .saturating_add(u64::from(self.skew_steps))
            .saturating_add(2);
        Some(UnixMillis::from_secs(
            last.saturating_mul(u64::from(self.step_seconds)),
        ))
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
    /// Whether its payload must name an address (a knock without one is refused).
    pub require_address: bool,
    /// After this moment it is refused.
    pub expires: Option<UnixMillis>,
    /// Actions it may run, each with the argument it accepts. Empty: none.
    pub actions: Vec<AllowedAction>,
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

/// A payload that was accepted: its timestamp and gate MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AcceptedPayload {
    /// The payload's timestamp.
    pub timestamp: UnixMillis,
    /// Its gate MAC (it identifies the datagram).
    pub mac: [u8; MAC_LEN],
}

/// A time step in which a client was granted something: its length and counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UsedStep {
    /// The step length the knock was derived with.
    pub step_seconds: u32,
    /// The step.
    pub counter: u64,
}

impl UsedStep {
    /// When the step starts.
    pub fn start(&self) -> UnixMillis {
        UnixMillis::from_secs(self.counter.saturating_mul(u64::from(self.step_seconds)))
    }

    /// When the step ends (exclusive).
    pub fn end(&self) -> UnixMillis {
        UnixMillis::from_secs(
            self.counter
                .saturating_add(1)
                .saturating_mul(u64::from(self.step_seconds)),
        )
    }
}

/// One packet as the tracker sees it: who sent it, to which port, and what it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// The source address (the one a grant is for unless the payload names another).
    pub source: IpAddr,
    /// UDP, or TCP (a SYN without ACK; anything else is not a knock).
    pub proto: Proto,
    /// The destination port.
    pub port: u16,
    /// The UDP payload (None for a TCP SYN).
    pub payload: Option<&'a [u8]>,
}

/// Per-client replay state, kept in time (not in counters of one step length), so it stays
/// right when `step_seconds` changes.
///
/// * A payload is refused if its gate MAC is among `accepted` (the same datagram twice), or if
///   its timestamp is at or before `floor`. Any other timestamp inside the window is accepted,
///   even one older than a payload accepted before (two devices, a clock a little ahead).
/// * A payload that names an action is also refused if its timestamp is at or before
///   `action_floor`, the timestamp of the newest payload naming an action accepted before:
///   actions run in timestamp order, so a knock an attacker held back (the user retried, the
///   retry ran) never runs after a later one. Held back with no later action knock accepted,
///   it can still run late, once, while the window admits it.
/// * A sequence-only knock is refused if its step is among `steps`, or starts at or before
///   `floor`: one grant per client per step.
///
/// Entries leave the lists once they have left the acceptance window, and `floor` rises to
/// cover them, so the lists stay small and nothing they held becomes valid again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayState {
    /// Accepted payloads that the window may still admit, oldest first.
    pub accepted: Vec<AcceptedPayload>,
    /// Steps with a grant that the window may still admit, oldest first.
    pub steps: Vec<UsedStep>,
    /// Nothing at or before this moment is accepted.
    pub floor: Option<UnixMillis>,
    /// No payload naming an action is accepted at or before this moment (the timestamp of the
    /// newest one accepted; `None`: none yet, as 0). It never leaves: one number per client.
    pub action_floor: Option<UnixMillis>,
}

impl ReplayState {
    /// Whether the state holds nothing.
    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
            && self.steps.is_empty()
            && self.floor.is_none()
            && self.action_floor.is_none()
    }

    fn below_floor(&self, t: UnixMillis) -> bool {
        self.floor.is_some_and(|f| t <= f)
    }

    fn raise_floor(&mut self, t: UnixMillis) {
        self.floor = Some(self.floor.map_or(t, |f| f.max(t)));
    }

    /// Whether a payload with this timestamp and MAC was accepted before, or is too old.
    pub(crate) fn payload_replayed(&self, timestamp: UnixMillis, mac: &[u8; MAC_LEN]) -> bool {
        self.below_floor(timestamp) || self.accepted.iter().any(|a| a.mac == *mac)
    }

    /// Whether a payload naming an action with this timestamp is refused by the action floor:
    /// one naming an action with this timestamp or a later one was accepted before.
    pub(crate) fn action_replayed(&self, timestamp: UnixMillis) -> bool {
        self.action_floor.is_some_and(|f| timestamp <= f)
    }

    fn record_action(&mut self, timestamp: UnixMillis) {
        self.action_floor = Some(self.action_floor.map_or(timestamp, |f| f.max(timestamp)));
    }

    /// Whether a sequence-only grant for this step was given before, or is too old.
    pub(crate) fn step_used(&self, step: UsedStep) -> bool {
        self.below_floor(step.start()) || self.steps.contains(&step)
    }

    fn record_payload(&mut self, accepted: AcceptedPayload) {
        self.accepted.push(accepted);
        if self.accepted.len() > MAX_ACCEPTED {
            let oldest = (0..self.accepted.len())
                .min_by_key(|&i| self.accepted[i].timestamp)
                .unwrap_or(0);
            let gone = self.accepted.remove(oldest);
            self.raise_floor(gone.timestamp);
        }
    }

    fn record_step(&mut self, step: UsedStep) {
        if self.steps.contains(&step) {
            return;
        }
        self.steps.push(step);
        if self.steps.len() > MAX_STEPS {
            let oldest = (0..self.steps.len())
                .min_by_key(|&i| self.steps[i].end())
                .unwrap_or(0);
            let gone = self.steps.remove(oldest);
            self.raise_floor(UnixMillis(gone.end().0.saturating_sub(1)));
        }
    }

    /// Drops the entries that the window starting at `window_start` no longer admits, raising
    /// `floor` to cover them.
    pub fn prune(&mut self, window_start: UnixMillis) {
        let mut floor = self.floor;
        let mut raise = |t: UnixMillis| floor = Some(floor.map_or(t, |f: UnixMillis| f.max(t)));
        self.accepted.retain(|a| {
            let keep = a.timestamp >= window_start;
            if !keep {
                raise(a.timestamp);
            }
            keep
        });
        self.steps.retain(|s| {
            let keep = s.end() > window_start;
            if !keep {
                raise(UnixMillis(s.end().0.saturating_sub(1)));
            }
            keep
        });
        self.floor = floor;
    }
}

/// Access granted: open `services` for `address`, and run `action` if there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The client.
    pub client: ClientId,
    /// Where the knock came from.
    pub source: IpAddr,
    /// The address to open (the source, or the payload's address).
    pub address: IpAddr,
    /// Whether the payload named the address (false: the packets' source was taken).
    pub bound: bool,
    /// The services to open (empty when the payload asked for an action alone).
    pub services: Vec<Service>,
    /// The action to run (its name and argument), checked against the client's policy.
    pub action: Option<Action>,
    /// The step of the knock.
    pub counter: u64,
    /// The payload's timestamp, if a payload was accepted.
    pub timestamp: Option<UnixMillis>,
    /// The payload's gate MAC, if a payload was accepted.
    pub mac: Option<[u8; MAC_LEN]>,
    /// The client's replay state including this grant: persist it before acting.
    pub replay: ReplayState,
}

/// Why a knock was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The payload datagram failed to open.
    Payload(RejectReason),
    /// The same datagram (or the same step, for a sequence-only knock) was seen before, or
    /// is older than what the replay state still remembers, or it names an action and is not
    /// newer than the client's last accepted action knock ([`ReplayState::action_floor`]).
    Replay,
    /// The payload's timestamp is further ahead of the server's clock than `max_ahead_ms`.
    TooFarAhead,
    /// The client's X25519 budget for this second is spent.
    RateLimited,
    /// The client's `expires` has passed.
    Expired,
    /// The source address is outside the client's `source` prefixes.
    SourceNotAllowed,
    /// The client must name an address in its payload (`require_address`) and did not.
    AddressRequired,
    /// The payload names another address and the client lacks `allow_other_ip`.
    OtherIpNotAllowed(IpAddr),
    /// The payload names an address that cannot be opened (unspecified, loopback, multicast,
    /// broadcast).
    BadAddress(IpAddr),
    /// The payload asks for a service outside the client's `allow` list.
    ServiceNotAllowed(Service),
    /// The payload names an action the client may not run.
    ActionNotAllowed(ActionName),
    /// The payload's argument breaks the action's rule (or the action takes none, or it needs
    /// one and the payload has none).
    ArgumentNotAllowed(ActionName),
}

impl Reason {
    /// Every reason code, in a fixed order (for metrics).
    pub const CODES: [&'static str; 20] = [
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
        "too_far_ahead",
        "rate_limited",
        "expired",
        "source_not_allowed",
        "address_required",
        "other_ip_not_allowed",
        "bad_address",
        "service_not_allowed",
        "action_not_allowed",
        "argument_not_allowed",
    ];

    /// A short stable identifier (`bad_mac`, `replay`, ...).
    pub const fn code(&self) -> &'static str {
        match self {
            Reason::Payload(r) => r.code(),
            Reason::Replay => "replay",
            Reason::TooFarAhead => "too_far_ahead",
            Reason::RateLimited => "rate_limited",
            Reason::Expired => "expired",
            Reason::SourceNotAllowed => "source_not_allowed",
            Reason::AddressRequired => "address_required",
            Reason::OtherIpNotAllowed(_) => "other_ip_not_allowed",
            Reason::BadAddress(_) => "bad_address",
            Reason::ServiceNotAllowed(_) => "service_not_allowed",
            Reason::ActionNotAllowed(_) => "action_not_allowed",
            Reason::ArgumentNotAllowed(_) => "argument_not_allowed",
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
            Reason::TooFarAhead => f.write_str("timestamp too far ahead of the server's clock"),
            Reason::RateLimited => {
                f.write_str("too many payloads from this client this second (x25519 cap)")
            }
            Reason::Expired => f.write_str("client expired"),
            Reason::SourceNotAllowed => f.write_str("source address not allowed for this client"),
            Reason::AddressRequired => {
                f.write_str("the payload names no address (require_address is on)")
            }
            Reason::OtherIpNotAllowed(a) => {
                write!(
                    f,
                    "asks to open {a}, which is not the source (allow_other_ip is off)"
                )
            }
            Reason::BadAddress(a) => write!(f, "asks to open {a}, which cannot be opened"),
            Reason::ServiceNotAllowed(s) => write!(f, "asks for {s}, which is not allowed"),
            Reason::ActionNotAllowed(a) => write!(f, "asks for action '{a}', which it may not run"),
            Reason::ArgumentNotAllowed(a) => write!(
                f,
                "asks for action '{a}' with an argument its rule does not allow (or without the one it needs)"
            ),
        }
    }
}

/// Something the server should act on or log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Open the services; the caller must persist [`Grant::replay`] first.
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
    /// A completed sequence got no payload within `timeout_ms` (in `required` mode the knock
    /// is lost; in `optional` mode the sequence-only grant follows).
    PayloadMissing {
        /// Where the sequence came from.
        source: IpAddr,
        /// The client.
        client: ClientId,
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
    /// Payload datagrams examined (of a payload's size, at a payload port).
    pub payloads_seen: u64,
    /// Payloads whose gate MAC had been seen before (refused before any key was used).
    pub replays_cached: u64,
    /// Payloads that passed the MAC gate.
    pub gate_passed: u64,
    /// X25519 operations (each payload that passed the gate and the rate cap).
    pub x25519: u64,
    /// Payloads accepted.
    pub payloads_accepted: u64,
    /// Completed sequences that got no payload in time.
    pub payloads_missing: u64,
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

impl StepTable {
    /// The position of the payload in this table's sequences, if it is indexed.
    fn payload_position(&self, length: usize) -> Option<u8> {
        if length == 0 {
            Some(0)
        } else {
            (self.stride > length).then_some(length as u8)
        }
    }

    /// The clients whose payload port at this counter is `port`.
    fn payload_clients(&self, port: u16, length: usize) -> impl Iterator<Item = u32> + '_ {
        let position = self.payload_position(length);
        self.slots_on(port)
            .iter()
            .filter(move |s| Some(s.position) == position && s.proto == Proto::Udp)
            .map(|s| s.client)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    counter: u64,
    client: u32,
    mask: u32,
}

/// A completed sequence waiting for its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Awaiting {
    counter: u64,
    client: u32,
    payload_port: u16,
    deadline: UnixMillis,
    /// `optional` mode: grant the sequence alone if no payload came by the deadline.
    fallback: bool,
    /// Its entry in the deadline queue.
    id: u64,
}

impl Awaiting {
    /// The same completed sequence (whatever its queue entry).
    fn same(&self, other: &Awaiting) -> bool {
        (self.counter, self.client, self.payload_port, self.deadline)
            == (
                other.counter,
                other.client,
                other.payload_port,
                other.deadline,
            )
    }
}

/// A payload that arrived before its sequence was complete, already through the MAC gate of
/// `(client, counter)` (and remembered in the seen cache).
#[derive(Debug)]
struct Pending {
    port: u16,
    client: u32,
    counter: u64,
    datagram: Box<[u8; DATAGRAM_LEN]>,
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
    /// Completed sequences waiting for their payload (at most [`MAX_AWAITING`]).
    awaiting: Vec<Awaiting>,
    /// A payload that arrived before its sequence completed.
    pending: Option<Pending>,
}

impl SourceState {
    fn new(generation: u64, now: UnixMillis) -> Self {
        SourceState {
            generation,
            started: now,
            first: None,
            candidates: Vec::new(),
            awaiting: Vec::new(),
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
            && self.awaiting.is_empty()
            && self.pending.is_none()
    }
}

/// A remembered gate MAC, as the server saves it at a clean shutdown ([`Tracker::seen_list`])
/// and gives it back at the next start ([`Tracker::remember_seen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenMac {
    /// The datagram's gate MAC.
    pub mac: [u8; MAC_LEN],
    /// The client whose gate it passed.
    pub client: PublicKey,
    /// The step whose gate it passed (its length and counter): a later window with that step
    /// length remembers it for as long as it admits the step. `None`: not known (saved by a
    /// sesamed of before this field; its expiry is widened by the window saved with it).
    pub step: Option<UsedStep>,
    /// When its step has left every window (it is forgotten then).
    pub expires: UnixMillis,
}

/// A step some datagram passed the gate for (so `optional` mode grants no sequence alone for
/// it), as the server saves it at a clean shutdown ([`Tracker::gated_list`]) and gives it back
/// at the next start ([`Tracker::remember_gated`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatedStep {
    /// The client whose gate the datagram passed.
    pub client: PublicKey,
    /// The step (its length and counter).
    pub step: UsedStep,
    /// Until when it matters (every sequence of the step has had its deadline then).
    pub expires: UnixMillis,
}

/// A completed sequence's deadline, in the timer queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at: UnixMillis,
    seq: u64,
    source: IpAddr,
    client: u32,
    counter: u64,
}

/// The ports a capture filter must admit ([`Tracker::live_ports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivePorts {
    /// The counters whose ports are in the set: the window and the step after it.
    pub counters: std::ops::RangeInclusive<u64>,
    /// The ports, ascending, each once.
    pub ports: Vec<u16>,
}

/// The knock tracker. See the module documentation.
pub struct Tracker {
    config: TrackerConfig,
    opener: Opener,
    clients: Arc<Vec<ClientEntry>>,
    /// Client index by public key.
    by_key: HashMap<PublicKey, u32>,
    replay: Vec<ReplayState>,
    /// Per client: X25519 credits and when they were last topped up.
    credits: Vec<(f64, UnixMillis)>,
    /// Step tables, oldest first, covering the window and one step ahead.
    tables: VecDeque<StepTable>,
    sources: HashMap<IpAddr, SourceState, foldhash::quality::RandomState>,
    lru: VecDeque<(IpAddr, u64)>,
    generation: u64,
    /// Gate MACs of every datagram that passed the gate while its step is in the window.
    seen: SeenCache,
    /// Deadlines of completed sequences, earliest first.
    deadlines: std::collections::BinaryHeap<std::cmp::Reverse<Deadline>>,
    deadline_seq: u64,
    /// Unbound payloads (naming no address) stamped before this are refused: see
    /// [`Tracker::refuse_unbound_before`].
    unbound_floor: Option<UnixMillis>,
    /// `optional` mode: no sequence-only grant for a step that starts before this (set after a
    /// crash, [`Tracker::after_crash`]).
    fallback_floor: Option<UnixMillis>,
    stats: Stats,
    knock_mask: u32,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("clients", &self.clients.len())
            .field("sources", &self.sources.len())
            .field("seen", &self.seen.len())
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
    /// empty), primed for `now`. The gate MACs of the accepted payloads in `replay` are
    /// remembered, so a replay of them after a restart costs no X25519.
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
        let by_key = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (*c.keys.client_public(), i as u32))
            .collect();
        let burst = f64::from(config.x25519_per_second.max(1));
        let n_clients = clients.len();
        let mut tracker = Tracker {
            opener: Opener::new(server_key, config.window()),
            credits: vec![(burst, now); clients.len()],
            config,
            clients: Arc::new(clients),
            by_key,
            replay,
            tables: VecDeque::new(),
            sources: HashMap::with_hasher(foldhash::quality::RandomState::default()),
            lru: VecDeque::new(),
            generation: 0,
            seen: SeenCache::new(n_clients),
            deadlines: std::collections::BinaryHeap::new(),
            deadline_seq: 0,
            unbound_floor: None,
            fallback_floor: None,
            stats: Stats::default(),
            knock_mask: if length >= 32 {
                u32::MAX
            } else {
                (1u32 << length) - 1
            },
        };
        let step = tracker.config.params.step_seconds;
        for i in 0..tracker.clients.len() {
            for a in tracker.replay[i].accepted.clone() {
                let counter = a.timestamp.counter(step);
                let expires = tracker.seen_expiry(counter);
                if expires > now {
                    let step = tracker.used_step(counter);
                    tracker.seen.insert(a.mac, i as u32, step, expires);
                    let gated_until = expires.plus_millis(tracker.config.timeout_ms);
                    let _ = tracker.seen.gated(i as u32, step, gated_until);
                }
            }
        }
        tracker.advance(now)?;
        Ok(tracker)
    }

    /// Refuses, from now on, every payload that names no address and is stamped before `t`.
    /// The server calls it when it starts after a crash, with its start time plus
    /// `max_ahead_ms`: the MACs of *accepted* payloads are in the replay state, and the others
    /// are saved at a clean shutdown ([`Tracker::seen_list`]), but a crash loses those of
    /// datagrams that passed the gate and were refused (a sequence broken by a spoofed packet,
    /// the X25519 cap, a timestamp too far ahead); an unbound one of those, stamped at most
    /// `max_ahead_ms` ahead of the old server's clock, could otherwise be used from anywhere. A
    /// bound one is useless to anyone else anyway. Costs unbound knocks for `max_ahead_ms`
    /// after a crash.
    pub fn refuse_unbound_before(&mut self, t: UnixMillis) {
        self.unbound_floor = Some(self.unbound_floor.map_or(t, |f| f.max(t)));
    }

    /// Refuses, for every client, every payload stamped at or before `t` and every step that
    /// starts then (it raises each client's floor). For a server whose journal records may
    /// not have reached the disk before a machine crash: `t` is a fence it had made durable,
    /// at or after the timestamp of anything it accepted.
    pub fn refuse_all_before(&mut self, t: UnixMillis) {
        for state in &mut self.replay {
            state.raise_floor(t);
        }
    }

    /// What a server starting at `start` after a crash must refuse: every datagram that passed
    /// the gate before the crash had a counter at most `counter(start) + skew_steps + 1` (the
    /// step after the window, whose payloads are burnt on arrival), so an unbound payload
    /// stamped before the end of that step, or `max_ahead_ms` after `start` (whichever is
    /// later), may be one whose MAC the crash lost; and `optional` mode grants no sequence
    /// alone for a step that starts before then (the record of which steps had a payload is
    /// lost too). `before` are the windows the crashed run used (saved with its crash marker;
    /// a reload may have changed it): a wider one than this tracker's reaches further, and the
    /// latest end of them all counts. Returns that moment.
    pub fn after_crash(&mut self, start: UnixMillis, before: &[SavedWindow]) -> UnixMillis {
        let until = before
            .iter()
            .chain(std::iter::once(&self.config.saved_window()))
            .filter_map(|w| w.gate_reach(start))
            .fold(start.plus_millis(self.config.max_ahead_ms), UnixMillis::max);
        self.keep_crash_floor(until);
        until
    }

    /// Until when the rules of [`Tracker::after_crash`] hold (the later of its floors), if ever
    /// set. A clean stop while they last saves it, and the next start gives it back
    /// ([`Tracker::keep_crash_floor`]): what the crash lost is not found again by a clean
    /// restart.
    pub fn crash_floor(&self) -> Option<UnixMillis> {
        self.unbound_floor.max(self.fallback_floor)
    }

    /// The rules of [`Tracker::after_crash`] until `until` (saved by [`Tracker::crash_floor`]
    /// at a clean stop), as a start after a crash applies them; a later floor already set stays.
    pub fn keep_crash_floor(&mut self, until: UnixMillis) {
        self.refuse_unbound_before(until);
        self.fallback_floor = Some(self.fallback_floor.map_or(until, |f| f.max(until)));
    }

    /// Every gate MAC remembered now (saved at a clean shutdown: the ones of refused datagrams
    /// are in no replay state), with those of clients this tracker does not have.
    pub fn seen_list(&self) -> Vec<SeenMac> {
        self.seen
            .iter()
            .filter_map(|(mac, s)| {
                let client = *self.key_of(s.client)?;
                Some(SeenMac {
                    mac: *mac,
                    client,
                    step: (s.step != UNKNOWN_STEP).then_some(s.step),
                    expires: s.expires,
                })
            })
            .collect()
    }

    /// Remembers gate MACs saved by [`Tracker::seen_list`] (the expired ones are dropped),
    /// each until the later of its saved expiry and the end of this tracker's window for its
    /// step ([`Tracker::mac_expiry`]: a wider window now keeps it longer, as
    /// [`Tracker::inherit_seen`] does at a reload). `saved_under` is the window the expiries
    /// were computed for (the stopped tracker's [`TrackerConfig::saved_window`], saved with
    /// them; `None`: unknown, taken as this one's): it widens only MACs saved without their step
    /// (by a sesamed of before [`SeenMac::step`]).
    pub fn remember_seen(
        &mut self,
        list: &[SeenMac],
        saved_under: Option<SavedWindow>,
        now: UnixMillis,
    ) {
        let widen = saved_under.map_or(0, |w| self.widening(&w));
        for m in list {
            let (step, expires) = match m.step {
                Some(step) => (step, self.mac_expiry(step, m.expires)),
                None => (UNKNOWN_STEP, m.expires.plus_millis(widen)),
            };
            if expires > now {
                let client = self.id_of(&m.client);
                self.seen.insert(m.mac, client, step, expires);
            } else {
                self.seen.raise_floor(step);
            }
        }
    }

    /// How much longer this tracker's window admits a step than `old` did (more skew steps),
    /// for a gate MAC whose step is not known. With another step length no old datagram
    /// passes the gate at all: nothing.
    fn widening(&self, old: &SavedWindow) -> u64 {
        let step_ms = u64::from(self.config.params.step_seconds) * 1000;
        if self.config.params.step_seconds == old.step_seconds {
            u64::from(self.config.skew_steps.saturating_sub(old.skew_steps)).saturating_mul(step_ms)
        } else {
            0
        }
    }

    /// Until when to remember a gate MAC that passed the gate of `step` and was to be
    /// remembered until `expires`: the later of that and the end of this tracker's window for
    /// the step ([`Tracker::seen_expiry`]), when the step has this tracker's length. A record
    /// made under another length keeps its expiry (no datagram of it passes this gate), and is
    /// recomputed when a window with its length comes back (a reload or restart to another
    /// step length and back to a wider window: review s21, finding 3).
    fn mac_expiry(&self, step: UsedStep, expires: UnixMillis) -> UnixMillis {
        if step.step_seconds == self.config.params.step_seconds {
            expires.max(self.seen_expiry(step.counter))
        } else {
            expires
        }
    }

    /// As [`Tracker::mac_expiry`], for a gated step: until every sequence of the step this
    /// tracker's window admits has had its deadline (`timeout_ms` after the window).
    fn gated_expiry(&self, step: UsedStep, expires: UnixMillis) -> UnixMillis {
        if step.step_seconds == self.config.params.step_seconds {
            expires.max(
                self.seen_expiry(step.counter)
                    .plus_millis(self.config.timeout_ms),
            )
        } else {
            expires
        }
    }

    /// Every step some datagram passed the gate for, remembered now (saved at a clean shutdown
    /// with [`Tracker::seen_list`]: in `optional` mode it decides that a replay of the step's
    /// sequence without its payload opens nothing, and it is in no replay state when the
    /// payload was refused or burnt), with those of clients this tracker does not have.
    pub fn gated_list(&self) -> Vec<GatedStep> {
        self.seen
            .gated_steps()
            .filter_map(|(client, step, expires)| {
                let client = *self.key_of(client)?;
                Some(GatedStep {
                    client,
                    step,
                    expires,
                })
            })
            .collect()
    }

    /// Remembers gated steps saved by [`Tracker::gated_list`] (the expired ones are dropped;
    /// those of clients this tracker does not have are kept under their key, and are theirs
    /// again if a reload brings them back), each until the later of its saved expiry and the
    /// end of this tracker's window for it plus `timeout_ms` (a wider window or a longer
    /// timeout keeps it longer). A step of another length than the running one is kept as it
    /// is: no sequence of the running length is that step, and it matters again if a reload
    /// brings that length back while it lasts.
    pub fn remember_gated(&mut self, list: &[GatedStep], now: UnixMillis) {
        for g in list {
            let expires = self.gated_expiry(g.step, g.expires);
            if expires > now {
                let client = self.id_of(&g.client);
                let _ = self.seen.gated(client, g.step, expires);
            } else {
                self.seen.raise_floor(g.step);
            }
        }
    }

    /// Per step length, the newest step whose records (gate MACs, gated steps) this tracker
    /// forgot as expired: it admits no datagram of that step or an older one of its length
    /// again, whatever window a reload or restart brings (a wider one would otherwise make a
    /// copy of a refused datagram valid once its record is gone: review s22, finding 2); and
    /// for the running step length at least the last step before the window at `now`. The
    /// server saves them at a clean stop with [`Tracker::seen_list`], and gives them back with
    /// [`Tracker::remember_forgotten`]; a reload carries them ([`Tracker::inherit_seen`]).
    pub fn forgotten_steps(&self, now: UnixMillis) -> Vec<UsedStep> {
        let mut floors = self.seen.floors().to_vec();
        if let Some(before) = self.config.saved_window().step_before(now) {
            seen::raise(&mut floors, before);
        }
        floors
    }

    /// Admits no datagram of the steps saved by [`Tracker::forgotten_steps`] (or older ones
    /// of their length) again.
    pub fn remember_forgotten(&mut self, steps: &[UsedStep]) {
        for &step in steps {
            self.seen.raise_floor(step);
        }
    }

    /// Takes over the gate MACs `old` has seen (after a reload), so that datagrams seen by the
    /// old tracker stay refused before any key work, and its counters, which run on.
    pub fn inherit_seen(&mut self, old: &Tracker) {
        self.stats = old.stats.clone();
        if let Some(f) = old.unbound_floor {
            self.refuse_unbound_before(f);
        }
        if let Some(f) = old.fallback_floor {
            self.fallback_floor = Some(self.fallback_floor.map_or(f, |g| g.max(f)));
        }
        self.remember_forgotten(old.seen.floors());
        // The old expiries were computed for an older window: a wider one (more skew steps, a
        // longer payload timeout) admits a datagram's step for longer, and its MAC must be
        // remembered as long (else a refused or burnt datagram becomes acceptable once the old
        // expiry passes). Each record knows its step, so its expiry is recomputed for this
        // window (whatever windows it went through); a MAC restored without its step is
        // widened against the old window.
        let widen = self.widening(&old.config.saved_window());
        // Each old client's id here (a gone client's if this tracker does not have it, and a
        // client's own again if a gone one is back), looked up once, when its first entry is
        // carried over: a client or gone key without entries gets no gone id (else the gone
        // keys would grow with every key a reload removes: review s22, finding 3). One pass
        // over each of the old caches (O(clients + entries), not their product: this runs on
        // the packet thread at a reload's swap).
        let mut memo: Vec<Option<u32>> = vec![None; old.clients.len() + old.seen.gone_keys().len()];
        for (mac, s) in old.seen.iter() {
            let expires = if s.step == UNKNOWN_STEP {
                s.expires.plus_millis(widen)
            } else {
                self.mac_expiry(s.step, s.expires)
            };
            if let Some(client) = self.mapped(&mut memo, old, s.client) {
                self.seen.insert(*mac, client, s.step, expires);
            }
        }
        for (client, step, expires) in old.seen.gated_steps() {
            let expires = self.gated_expiry(step, expires);
            if let Some(client) = self.mapped(&mut memo, old, client) {
                let _ = self.seen.gated(client, step, expires);
            }
        }
    }

    /// The id here of `old`'s client (or gone client) `client`, from `memo` (indexed by the
    /// old id) or looked up and noted there ([`Tracker::id_of`]: a gone id is made only now,
    /// for a client that has an entry to carry).
    fn mapped(&mut self, memo: &mut [Option<u32>], old: &Tracker, client: u32) -> Option<u32> {
        let slot = memo.get_mut(client as usize)?;
        if slot.is_none() {
            *slot = Some(self.id_of(old.key_of(client)?));
        }
        *slot
    }

    /// Replaces the replay state of the client with public key `key` by `state`, a newer
    /// state of the same client: a reload builds the new tracker away from the packet path
    /// from a copy of the running tracker's states, and a knock accepted by the running one
    /// meanwhile moved that client's state on (the grant carries it). The gate MACs of its
    /// accepted payloads are remembered as [`Tracker::new`] remembers them. False if this
    /// tracker has no such client.
    pub fn update_replay(&mut self, key: &PublicKey, state: ReplayState, now: UnixMillis) -> bool {
        let Some(&i) = self.by_key.get(key) else {
            return false;
        };
        let step = self.config.params.step_seconds;
        for a in &state.accepted {
            let counter = a.timestamp.counter(step);
            let expires = self.seen_expiry(counter);
            if expires > now {
                let step = self.used_step(counter);
                self.seen.insert(a.mac, i, step, expires);
                let gated_until = expires.plus_millis(self.config.timeout_ms);
                let _ = self.seen.gated(i, step, gated_until);
            }
        }
        self.replay[i as usize] = state;
        true
    }

    /// The configuration.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// The clients, in [`ClientId`] order.
    // Not part of the shipping API: for the fuzz harness and the tests (`--cfg fuzzing`, the
    // `test-hooks` feature), like `crate::fuzzing`.
    #[cfg(any(test, fuzzing, feature = "test-hooks"))]
    #[doc(hidden)]
    pub fn clients(&self) -> &[ClientEntry] {
        &self.clients
    }

    /// The client list, shared (to build [`StepTable`]s on another thread).
    pub fn clients_shared(&self) -> Arc<Vec<ClientEntry>> {
        Arc::clone(&self.clients)
    }

    /// Replay state of every client, in [`ClientId`] order.
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

    /// Number of gate MACs remembered.
    pub fn seen_macs(&self) -> usize {
        self.seen.len()
    }

    /// Checks the state caps (for tests and fuzzing): panics if one is exceeded.
    // Not part of the shipping API: for the fuzz harness and the tests (`--cfg fuzzing`, the
    // `test-hooks` feature), like `crate::fuzzing`.
    #[cfg(any(test, fuzzing, feature = "test-hooks"))]
    #[doc(hidden)]
    pub fn assert_invariants(&self) {
        assert!(self.sources.len() <= self.config.max_sources);
        assert!(self.lru.len() <= 2 * self.config.max_sources + 64);
        for s in self.sources.values() {
            assert!(s.candidates.len() <= self.config.max_candidates);
            assert!(s.awaiting.len() <= MAX_AWAITING);
        }
        assert!(self.tables.len() <= 2 * self.config.skew_steps as usize + 2);
        assert!(self.seen.len() <= MAX_SEEN);
        assert!(self.seen.shares().iter().all(|n| *n <= MAX_SEEN_PER_CLIENT));
        assert!(self.deadlines.len() <= self.max_deadlines());
        for r in &self.replay {
            assert!(r.accepted.len() <= MAX_ACCEPTED && r.steps.len() <= MAX_STEPS);
        }
    }

    fn max_deadlines(&self) -> usize {
        4 * self.config.max_sources + 64
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

    /// Drops the tables that left the window (and any beyond the step after it), building
    /// nothing: a server that builds the step-ahead table on another thread calls this at the
    /// turn, then [`Tracker::install`]s the table when it is ready.
    pub fn retire(&mut self, now: UnixMillis) {
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
    }

    /// Drops the tables that left the window and builds the missing ones (synchronously).
    pub fn advance(&mut self, now: UnixMillis) -> Result<(), SequenceError> {
        self.retire(now);
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

    /// The counters whose ports the capture filter must admit at `now`: the window and the
    /// step after it (the tables [`Tracker::advance`] keeps). Cheap: a server recomputes
    /// [`Tracker::live_ports`] only when this changes (or the tracker was replaced).
    pub fn live_counters(&self, now: UnixMillis) -> std::ops::RangeInclusive<u64> {
        let w = self.config.window().counters(now);
        *w.start()..=w.end().saturating_add(1)
    }

    /// Every port a packet of a knock valid at `now` can use: each client's knock ports and
    /// payload port (when payloads are used) at every counter of [`Tracker::live_counters`],
    /// sorted, each once.
    ///
    /// Because it covers the step after the window too, the set computed at `now` still holds
    /// every port of every window until the end of the step after `now`'s: a capture filter
    /// built from it and replaced after the step turns never drops a valid knock, and the
    /// replacement may come late by up to a step. At a turn the new set is the union of what
    /// the old window ends with and what the new one needs. `None` when a table of those
    /// counters is missing ([`Tracker::advance`] failed): the caller must then admit the whole
    /// knock range.
    pub fn live_ports(&self, now: UnixMillis) -> Option<LivePorts> {
        let counters = self.live_counters(now);
        let mut bits = vec![0u64; 1024];
        for counter in counters.clone() {
            let table = self.table(counter)?;
            for &p in &table.ports {
                bits[usize::from(p >> 6)] |= 1 << (p & 63);
            }
        }
        let mut ports = Vec::new();
        for (word, &b) in bits.iter().enumerate() {
            let mut b = b;
            while b != 0 {
                let bit = b.trailing_zeros();
                ports.push((word as u32 * 64 + bit) as u16);
                b &= b - 1;
            }
        }
        Some(LivePorts { counters, ports })
    }

    fn in_window(&self, now: UnixMillis) -> impl Iterator<Item = &StepTable> {
        let w = self.admitted(now);
        self.tables.iter().filter(move |t| w.contains(&t.counter))
    }

    /// The counters a datagram may have at `now`: the window, from after the newest step of
    /// the running length whose records were forgotten ([`Tracker::forgotten_steps`]). The
    /// window's lower edge never moves back over a forgotten step, even when a reload or a
    /// restart widens it. Empty when the whole window is at or before that step.
    fn admitted(&self, now: UnixMillis) -> std::ops::RangeInclusive<u64> {
        let w = self.config.window().counters(now);
        match self.seen.floor(self.config.params.step_seconds) {
            Some(f) => f.saturating_add(1).max(*w.start())..=*w.end(),
            None => w,
        }
    }

    fn table(&self, counter: u64) -> Option<&StepTable> {
        self.tables.iter().find(|t| t.counter == counter)
    }

    /// Step `counter` of the running step length.
    fn used_step(&self, counter: u64) -> UsedStep {
        UsedStep {
            step_seconds: self.config.params.step_seconds,
            counter,
        }
    }

    /// When the window that admits `counter` last ends: the end of step `counter + skew`.
    fn seen_expiry(&self, counter: u64) -> UnixMillis {
        let step = u64::from(self.config.params.step_seconds);
        let last = counter
            .saturating_add(u64::from(self.config.skew_steps))
            .saturating_add(1);
        UnixMillis::from_secs(last.saturating_mul(step))
    }

    /// The start of the acceptance window at `now`.
    fn window_start(&self, now: UnixMillis) -> UnixMillis {
        let w = self.config.window().counters(now);
        UnixMillis::from_secs(
            w.start()
                .saturating_mul(u64::from(self.config.params.step_seconds)),
        )
    }

    /// The earliest moment [`Tracker::handle_timeout`] has something to do, if any.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        self.deadlines.peek().map(|d| d.0.at)
    }

    /// Ends the completed sequences whose payload did not come in time: a
    /// [`Event::PayloadMissing`] for each, and in `optional` mode the sequence-only grant; then
    /// forgets the gate MACs whose step has left the window. Call it when
    /// [`Tracker::poll_timeout`] says, and now and then (the server does twice a second).
    pub fn handle_timeout(&mut self, now: UnixMillis, events: &mut Vec<Event>) {
        self.end_waits(now, events);
        // After the waits: a fallback that was due must still see its step's record.
        self.seen.expire(now);
    }

    fn end_waits(&mut self, now: UnixMillis, events: &mut Vec<Event>) {
        while self.deadlines.peek().is_some_and(|d| d.0.at <= now) {
            let Some(std::cmp::Reverse(d)) = self.deadlines.pop() else {
                break;
            };
            let Some(state) = self.sources.get_mut(&d.source) else {
                continue;
            };
            let Some(i) = state.awaiting.iter().position(|a| a.id == d.seq) else {
                continue;
            };
            let slot = state.awaiting.remove(i);
            self.stats.payloads_missing += 1;
            events.push(Event::PayloadMissing {
                source: d.source,
                client: ClientId(slot.client),
            });
            if slot.fallback {
                self.sequence_grant(now, d.source, slot.client, slot.counter, events);
            }
            self.forget_if_empty(d.source);
        }
    }

    /// Feeds one packet that arrived at `now`.
    #[inline]
    pub fn packet(
        &mut self,
        now: UnixMillis,
        packet: Incoming<'_>,
        events: &mut Vec<Event>,
    ) -> Outcome {
        self.stats.packets += 1;
        // The out-of-range test is inlined into the caller (a packet outside the knock range
        // costs a compare, not a call with the 40-byte `Incoming` copied through memory).
        if !self.config.params.in_range(packet.port) {
            return Outcome::OutOfRange;
        }
        self.in_range_packet(now, packet, events)
    }

    /// [`Tracker::packet`] for a packet in the knock range.
    fn in_range_packet(
        &mut self,
        now: UnixMillis,
        packet: Incoming<'_>,
        events: &mut Vec<Event>,
    ) -> Outcome {
        let Incoming {
            source,
            proto,
            port,
            payload: datagram,
        } = packet;
        self.stats.in_range += 1;
        let source = canonical_ip(source);
        // Normally the server keeps the tables current (`advance` every 500 ms); never miss a
        // step if it did not, and never let a table that has left the window (and the partial
        // sequences that point into it) complete a knock for a counter outside the window.
        let w = self.config.window().counters(now);
        let a = self.admitted(now);
        let expected = a.end().saturating_add(1).saturating_sub(*a.start()) as usize;
        if self.in_window(now).count() < expected {
            // Errors are impossible with validated parameters; without tables nothing matches.
            let _ = self.advance(now);
        } else if self.tables.front().is_some_and(|t| t.counter < *w.start()) {
            // The step turned and the window's tables are all there: only drop the old one.
            // The step-ahead table is the server's to build (off the packet path), and is
            // needed only at the next turn, where the line above builds it if it is missing.
            self.retire(now);
        }
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.end_waits(now, events);
        }
        if self.config.params.length == 0 {
            return self.single_packet(now, source, proto, port, datagram, events);
        }
        self.sequence_packet(now, source, proto, port, datagram, events)
    }

    /// The client a remembered gate MAC belongs to, if it is seen.
    fn seen_client(&self, mac: &[u8; MAC_LEN]) -> Option<Option<ClientId>> {
        self.seen
            .get(mac)
            .map(|s| self.seen.is_client(s.client).then_some(ClientId(s.client)))
    }

    /// The public key of client `id`: one of this tracker's, or a gone one's whose entries
    /// the seen cache keeps.
    fn key_of(&self, id: u32) -> Option<&PublicKey> {
        match self.clients.get(id as usize) {
            Some(c) => Some(c.keys.client_public()),
            None => self.seen.gone_key(id),
        }
    }

    /// The id of the client with public key `key`: this tracker's, or else a gone client's
    /// in the seen cache (made for it if it has none).
    fn id_of(&mut self, key: &PublicKey) -> u32 {
        match self.by_key.get(key) {
            Some(&id) => id,
            None => self.seen.gone_id(key),
        }
    }

    /// Remembers the gate MAC of a datagram that passed the gate for `(client, counter)`, and
    /// that the step had a payload. When the client's share of the cache (or the cache, or the
    /// record of gated steps) is full, the datagram is refused (`rate_limited`): a datagram is
    /// never processed unremembered.
    fn remember(
        &mut self,
        mac: [u8; MAC_LEN],
        client: u32,
        counter: u64,
        source: IpAddr,
        events: &mut Vec<Event>,
    ) -> bool {
        self.stats.gate_passed += 1;
        let expires = self.seen_expiry(counter);
        if !self
            .seen
            .insert(mac, client, self.used_step(counter), expires)
        {
            self.reject(events, source, Some(ClientId(client)), Reason::RateLimited);
            return false;
        }
        // Kept until every deadline of a sequence of that step has passed. When the record is
        // full the datagram is refused too: in `optional` mode a step with a payload but no
        // record would get a sequence-only grant (the MAC stays remembered: copies are refused).
        let gated_until = expires.plus_millis(self.config.timeout_ms);
        if !self
            .seen
            .gated(client, self.used_step(counter), gated_until)
        {
            self.reject(events, source, Some(ClientId(client)), Reason::RateLimited);
            return false;
        }
        true
    }

    /// Refuses a datagram whose gate MAC was seen before (before any key is used).
    fn refuse_if_seen(
        &mut self,
        source: IpAddr,
        mac: &[u8; MAC_LEN],
        events: &mut Vec<Event>,
    ) -> bool {
        let Some(client) = self.seen_client(mac) else {
            return false;
        };
        self.stats.replays_cached += 1;
        self.reject(events, source, client, Reason::Replay);
        true
    }

    /// A payload for the step after the window (sent by a clock ahead, or a forward clock
    /// probe): nothing can use it now, and later it would be a knock valid long after it was
    /// sent, for whoever captured it. If it passes the gate of that step its MAC is remembered,
    /// so it never opens anything, and it is refused as stale. True if the datagram was that.
    fn burn_ahead(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        port: u16,
        datagram: &[u8],
        events: &mut Vec<Event>,
    ) -> bool {
        if !is_payload_len(datagram.len()) {
            return false;
        }
        let ahead = self.config.window().counters(now).end().saturating_add(1);
        let length = usize::from(self.config.params.length);
        let owners: Vec<u32> = match self.table(ahead) {
            Some(t) => t.payload_clients(port, length).collect(),
            None => return false,
        };
        if owners.is_empty() {
            return false;
        }
        let Some(mac) = carried_mac(datagram) else {
            return false;
        };
        if self.seen.get(&mac).is_some() {
            return false; // the normal path refuses it as a replay
        }
        for client in owners {
            let keys = &self.clients[client as usize].keys;
            if self.opener.check_mac(keys, ahead, datagram).is_ok() {
                self.stats.payloads_seen += 1;
                if self.remember(mac, client, ahead, source, events) {
                    let offset_steps = i64::from(self.config.skew_steps) + 1;
                    self.reject(
                        events,
                        source,
                        Some(ClientId(client)),
                        Reason::Payload(RejectReason::Stale {
                            counter: ahead,
                            offset_steps,
                        }),
                    );
                }
                return true;
            }
        }
        false
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
        if self.burn_ahead(now, source, port, datagram, events) {
            return Outcome::Payload;
        }
        let mut matches: Vec<(u64, u32)> = Vec::new();
        for t in self.in_window(now) {
            for client in t.payload_clients(port, 0) {
                matches.push((t.counter, client));
            }
        }
        if matches.is_empty() {
            return Outcome::Ignored;
        }
        self.stats.payloads_seen += 1;
        let Some(mac) = carried_mac(datagram).filter(|_| check_len(datagram).is_ok()) else {
            if let Err(r) = check_len(datagram) {
                self.reject(events, source, None, Reason::Payload(r));
            }
            return Outcome::Payload;
        };
        if self.refuse_if_seen(source, &mac, events) {
            return Outcome::Payload;
        }
        for (counter, client) in matches {
            let keys = &self.clients[client as usize].keys;
            if self.opener.check_gate(now, keys, counter, datagram).is_ok() {
                if self.remember(mac, client, counter, source, events) {
                    self.open_payload(now, source, client, counter, datagram, mac, events);
                }
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

    /// A payload-sized datagram to some client's payload port, from a source whose sequence is
    /// not complete: if it passes the gate, it is remembered (so a copy replayed from elsewhere
    /// is refused even if this source never completes its sequence) and kept for the
    /// sequence's completion. A datagram seen before is refused; one that passes no gate is
    /// not kept.
    fn gate_pending(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        port: u16,
        datagram: &[u8],
        events: &mut Vec<Event>,
    ) -> Option<Pending> {
        if !is_payload_len(datagram.len()) {
            return None;
        }
        let length = usize::from(self.config.params.length);
        let mut matches: Vec<(u64, u32)> = Vec::new();
        for t in self.in_window(now) {
            for client in t.payload_clients(port, length) {
                matches.push((t.counter, client));
            }
        }
        if matches.is_empty() {
            return None;
        }
        self.stats.payloads_seen += 1;
        let mac = carried_mac(datagram)?;
        if self.refuse_if_seen(source, &mac, events) {
            return None;
        }
        for (counter, client) in matches {
            let keys = &self.clients[client as usize].keys;
            if self.opener.check_mac(keys, counter, datagram).is_ok() {
                if !self.remember(mac, client, counter, source, events) {
                    return None;
                }
                let mut buf = Box::new([0u8; DATAGRAM_LEN]);
                buf.copy_from_slice(&datagram[..DATAGRAM_LEN]);
                return Some(Pending {
                    port,
                    client,
                    counter,
                    datagram: buf,
                });
            }
        }
        None
    }

    /// A datagram to the payload port of one of the source's completed sequences. A datagram
    /// that was seen before or fails the gate is refused and the sequence keeps waiting.
    fn awaited_payload(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        port: u16,
        datagram: &[u8],
        events: &mut Vec<Event>,
    ) -> Outcome {
        self.stats.payloads_seen += 1;
        let slots: Vec<Awaiting> = self
            .sources
            .get(&source)
            .map(|s| {
                s.awaiting
                    .iter()
                    .filter(|a| a.payload_port == port)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        let first = slots.first().map(|a| ClientId(a.client));
        let mac = match check_len(datagram).map(|()| carried_mac(datagram)) {
            Ok(Some(mac)) => mac,
            Ok(None) | Err(_) => {
                let r = check_len(datagram).err().unwrap_or(RejectReason::BadMac);
                self.reject(events, source, first, Reason::Payload(r));
                return Outcome::Payload;
            }
        };
        if self.refuse_if_seen(source, &mac, events) {
            return Outcome::Payload;
        }
        let mut last_error = RejectReason::BadMac;
        for slot in slots {
            let keys = &self.clients[slot.client as usize].keys;
            match self.opener.check_gate(now, keys, slot.counter, datagram) {
                Ok(()) => {
                    if !self.remember(mac, slot.client, slot.counter, source, events) {
                        // Refused (the client's share of the cache is full); the slot waits.
                        return Outcome::Payload;
                    }
                    if let Some(state) = self.sources.get_mut(&source) {
                        state.awaiting.retain(|a| *a != slot);
                    }
                    self.open_payload(
                        now,
                        source,
                        slot.client,
                        slot.counter,
                        datagram,
                        mac,
                        events,
                    );
                    self.forget_if_empty(source);
                    return Outcome::Payload;
                }
                Err(r) => last_error = r,
            }
        }
        self.reject(events, source, first, Reason::Payload(last_error));
        Outcome::Payload
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
        if let (Proto::Udp, Some(d)) = (proto, datagram) {
            if self.burn_ahead(now, source, port, d, events) {
                return Outcome::Payload;
            }
        }
        if let Some(state) = self.sources.get_mut(&source) {
            // Expire progress older than the timeout, and completed sequences past their
            // deadline (normally `handle_timeout` did).
            if now.since(state.started) > timeout {
                state.clear_progress();
            }
            state.awaiting.retain(|a| now <= a.deadline);
            // The payload of a completed sequence.
            if let (Proto::Udp, Some(d)) = (proto, datagram) {
                if is_payload_len(d.len()) && state.awaiting.iter().any(|a| a.payload_port == port)
                {
                    return self.awaited_payload(now, source, port, d, events);
                }
            }
            // A late duplicate of a knock of a completed sequence, with no other progress.
            let tables = &self.tables;
            let member = state.awaiting.iter().any(|a| {
                tables
                    .iter()
                    .find(|t| t.counter == a.counter)
                    .and_then(|t| t.position_of(a.client, proto, port))
                    .is_some()
            });
            if member && state.first.is_none() && state.candidates.is_empty() {
                return Outcome::Progress;
            }
        }
        let has_slots = self
            .in_window(now)
            .any(|t| t.slots_on(port).iter().any(|s| s.proto == proto));
        if !has_slots && !self.sources.contains_key(&source) {
            return Outcome::Ignored;
        }
        // A payload that may belong to a sequence that is not complete yet.
        let mut pending = match (proto, datagram) {
            (Proto::Udp, Some(d)) if has_slots => self.gate_pending(now, source, port, d, events),
            _ => None,
        };

        let admitted = self.admitted(now);
        let Some(state) = self.sources.get_mut(&source) else {
            let state = self.touch(source, now);
            state.started = now;
            state.first = Some((port, proto));
            state.pending = pending;
            return Outcome::Progress;
        };

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
                for t in self.tables.iter().filter(|t| admitted.contains(&t.counter)) {
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
            // No progress (e.g. only completed sequences): this packet starts anew.
            Outcome::Reset
        };

        if outcome == Outcome::Reset {
            let fresh = state.first.is_none() && state.candidates.is_empty();
            state.clear_progress();
            if !fresh {
                self.stats.resets += 1;
            }
            if has_slots {
                state.started = now;
                state.first = Some((port, proto));
                state.pending = pending;
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

        if pending.is_some() {
            state.pending = pending.take();
        }
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
        let mode = self.config.payload;
        let deadline = match self.sources.get(&source) {
            Some(state) => state.started.plus_millis(self.config.timeout_ms),
            None => return,
        };
        let max_deadlines = self.max_deadlines();
        let Some(state) = self.sources.get_mut(&source) else {
            return;
        };
        let pending = state.pending.take();
        state.clear_progress();
        if mode == PayloadMode::None {
            self.sequence_grant(now, source, done.client, done.counter, events);
            self.forget_if_empty(source);
            return;
        }
        let Some(payload_port) = payload_port else {
            return;
        };
        // The payload overtook the last knock: it is already through the gate.
        if let Some(p) = pending.filter(|p| {
            p.port == payload_port && p.client == done.client && p.counter == done.counter
        }) {
            let mac = carried_mac(&p.datagram[..]).unwrap_or([0; MAC_LEN]);
            self.open_payload(
                now,
                source,
                done.client,
                done.counter,
                &p.datagram[..],
                mac,
                events,
            );
            self.forget_if_empty(source);
            return;
        }
        let slot = Awaiting {
            counter: done.counter,
            client: done.client,
            payload_port,
            deadline,
            fallback: mode == PayloadMode::Optional,
            id: self.deadline_seq + 1,
        };
        if state.awaiting.iter().any(|a| a.same(&slot)) {
            return;
        }
        if state.awaiting.len() >= MAX_AWAITING {
            state.awaiting.remove(0);
        }
        state.awaiting.push(slot);
        self.deadline_seq += 1;
        if self.deadlines.len() < max_deadlines {
            self.deadlines.push(std::cmp::Reverse(Deadline {
                at: deadline,
                seq: self.deadline_seq,
                source,
                client: done.client,
                counter: done.counter,
            }));
        }
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

    /// A sequence alone opens every allowed service for the source (`none` mode, and
    /// `optional` mode when no payload came): once per client and step.
    fn sequence_grant(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        client: u32,
        counter: u64,
        events: &mut Vec<Event>,
    ) {
        let id = ClientId(client);
        if let Err(reason) = self.check_client(now, client, source) {
            self.reject(events, source, Some(id), reason);
            return;
        }
        if self.clients[id.index()].policy.require_address {
            self.reject(events, source, Some(id), Reason::AddressRequired);
            return;
        }
        let step = UsedStep {
            step_seconds: self.config.params.step_seconds,
            counter,
        };
        // `optional`: a step for which some datagram passed the gate (from any source) had a
        // payload, which alone decides; and after a crash that record is lost.
        let fallback_refused = self.config.payload == PayloadMode::Optional
            && (self.seen.was_gated(client, step)
                || self.fallback_floor.is_some_and(|f| step.start() < f));
        let window_start = self.window_start(now);
        let replay = &mut self.replay[id.index()];
        replay.prune(window_start);
        if fallback_refused || replay.step_used(step) {
            self.reject(events, source, Some(id), Reason::Replay);
            return;
        }
        replay.record_step(step);
        let replay = replay.clone();
        self.stats.grants += 1;
        events.push(Event::Granted(Grant {
            client: id,
            source,
            address: source,
            bound: false,
            services: self.clients[id.index()].policy.allow.clone(),
            action: None,
            counter,
            timestamp: None,
            mac: None,
            replay,
        }));
    }

    /// Takes one X25519 credit of `client` (a token bucket: `x25519_per_second` credits, one
    /// more every `1 / x25519_per_second` seconds).
    fn take_credit(&mut self, now: UnixMillis, client: u32) -> bool {
        let rate = f64::from(self.config.x25519_per_second.max(1));
        let Some((credits, at)) = self.credits.get_mut(client as usize) else {
            return false;
        };
        let earned = now.since(*at) as f64 / 1000.0 * rate;
        *credits = (*credits + earned).min(rate);
        *at = now.max(*at);
        if *credits >= 1.0 {
            *credits -= 1.0;
            true
        } else {
            false
        }
    }

    /// Opens a datagram that passed the gate of `(client, counter)` (and whose MAC is
    /// remembered): the X25519 cap, X25519 and the AEAD, then the replay state and the policy.
    #[allow(clippy::too_many_arguments)]
    fn open_payload(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        client: u32,
        counter: u64,
        datagram: &[u8],
        mac: [u8; MAC_LEN],
        events: &mut Vec<Event>,
    ) {
        let id = ClientId(client);
        if !self.take_credit(now, client) {
            self.reject(events, source, Some(id), Reason::RateLimited);
            return;
        }
        self.stats.x25519 += 1;
        let keys = &self.clients[client as usize].keys;
        let request = match self.opener.open_after_gate(keys, counter, datagram) {
            Ok(r) => r,
            Err(r) => {
                self.reject(events, source, Some(id), Reason::Payload(r));
                return;
            }
        };
        self.stats.payloads_accepted += 1;
        match self.payload_grant(now, source, client, counter, &request, mac) {
            Ok(grant) => {
                self.stats.grants += 1;
                events.push(Event::Granted(grant));
            }
            Err(reason) => self.reject(events, source, Some(id), reason),
        }
    }

    fn payload_grant(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        client: u32,
        counter: u64,
        request: &Request,
        mac: [u8; MAC_LEN],
    ) -> Result<Grant, Reason> {
        let window_start = self.window_start(now);
        self.replay[client as usize].prune(window_start);
        let replay = &self.replay[client as usize];
        if replay.payload_replayed(request.timestamp, &mac)
            || (request.action.is_some() && replay.action_replayed(request.timestamp))
            || (request.address.is_none()
                && self.unbound_floor.is_some_and(|f| request.timestamp < f))
        {
            return Err(Reason::Replay);
        }
        if request.timestamp > now.plus_millis(self.config.max_ahead_ms) {
            return Err(Reason::TooFarAhead);
        }
        self.check_client(now, client, source)?;
        let policy = &self.clients[client as usize].policy;
        if request.address.is_none() && policy.require_address {
            return Err(Reason::AddressRequired);
        }
        let address = request.address.map_or(source, canonical_ip);
        if !openable(address) {
            return Err(Reason::BadAddress(address));
        }
        if address != source && !policy.allow_other_ip {
            return Err(Reason::OtherIpNotAllowed(address));
        }
        if let Some(action) = &request.action {
            // The decoder only returns valid names.
            let name = ActionName::new(&action.name)
                .ok_or(Reason::Payload(RejectReason::Malformed("action")))?;
            let allowed = policy
                .actions
                .iter()
                .find(|a| a.name == action.name)
                .ok_or(Reason::ActionNotAllowed(name))?;
            if !allowed.argument.allows(&action.argument) {
                return Err(Reason::ArgumentNotAllowed(name));
            }
        }
        let services = if request.services.is_empty() {
            // An action alone asks for no service; otherwise, every allowed one.
            if request.action.is_some() {
                Vec::new()
            } else {
                policy.allow.clone()
            }
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
        let step_seconds = self.config.params.step_seconds;
        let replay = &mut self.replay[client as usize];
        replay.record_payload(AcceptedPayload {
            timestamp: request.timestamp,
            mac,
        });
        replay.record_step(UsedStep {
            step_seconds,
            counter,
        });
        if request.action.is_some() {
            replay.record_action(request.timestamp);
        }
        Ok(Grant {
            client: ClientId(client),
            source,
            address,
            bound: request.address.is_some(),
            services,
            action: request.action.clone(),
            counter,
            timestamp: Some(request.timestamp),
            mac: Some(mac),
            replay: replay.clone(),
        })
    }
}

#[cfg(test)]
mod pins;
mod seen;
#[cfg(test)]
mod tests;
