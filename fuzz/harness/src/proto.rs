//! The targets of `sesame-proto`: the payload datagram, the plaintext codec, key and profile
//! parsing, STUN, and the tracker as a stateful target.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use sesame_fixtures::{STEP_SECONDS, T0, TIMEOUT_MS, client_key, server_key};
use sesame_keys::{PresharedKey, PrivateKey, PublicKey};
use sesame_proto::action::{ActionName, AllowedAction, ArgumentRule};
use sesame_proto::derive::derive_sequence;
use sesame_proto::fuzzing::{remac, seal};
use sesame_proto::params::{KnockParams, KnockProtocol, PayloadMode};
use sesame_proto::time::TimeWindow;
use sesame_proto::tracker::{ClientEntry, Grant, IpNet, Policy, Reason, canonical_ip};
use sesame_proto::wire::{
    Action, DATAGRAM_LEN, MAC_LEN, MAX_DATAGRAM_LEN, Opener, PLAINTEXT_LEN, Request, WireNoise,
    build_payload, carried_mac, decode_plaintext, encode_plaintext, is_payload_len,
};
use sesame_proto::{
    ClientKeys, Event, Incoming, Profile, Proto, RejectReason, Service, Tracker, TrackerConfig,
    UnixMillis,
};

/// The client private key of the `ssh-from-source` payload vector (and of most
/// `fail_payloads.json` vectors), so that datagrams from the vectors pass the MAC gate.
const CLIENT_KEY: [u8; 32] = [
    0x45, 0x7c, 0x77, 0x6e, 0x61, 0x18, 0x13, 0x0a, 0x0d, 0x04, 0x3f, 0x36, 0x29, 0x20, 0xdb, 0xd2,
    0xd5, 0xcc, 0xc7, 0xfe, 0xf1, 0xe8, 0xe3, 0x9a, 0x9d, 0x94, 0x8f, 0x86, 0xb9, 0xb0, 0xab, 0xa2,
];
/// The server private key of the same vectors.
const SERVER_KEY: [u8; 32] = [
    0x64, 0x1f, 0x16, 0x09, 0x00, 0x3b, 0x32, 0x35, 0x2c, 0x27, 0xde, 0xd1, 0xc8, 0xc3, 0xfa, 0xfd,
    0xf4, 0xef, 0xe6, 0x99, 0x90, 0x8b, 0x82, 0x85, 0xbc, 0xb7, 0xae, 0xa1, 0x58, 0x53, 0x4a, 0x4d,
];
/// A fixed ephemeral key for re-sealing decoded plaintexts.
const EPHEMERAL_KEY: [u8; 32] = [0x42; 32];
/// The vectors' window: 30-second steps, one step of skew.
const WINDOW: TimeWindow = TimeWindow {
    step_seconds: 30,
    skew_steps: 1,
};
/// The vectors' `now_ms`.
const BASE_NOW_MS: u64 = 1_764_000_000_373;

/// The opener and the per-client keys, derived once (each derivation is an X25519).
fn fixture() -> &'static (Opener, ClientKeys) {
    static FIXTURE: OnceLock<(Opener, ClientKeys)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = PrivateKey::from_bytes(SERVER_KEY);
        let client = PrivateKey::from_bytes(CLIENT_KEY).public_key();
        let keys = match ClientKeys::for_server(&server, &client, None) {
            Ok(keys) => keys,
            Err(e) => panic!("fixed fuzzing keys are contributory: {e}"),
        };
        (Opener::new(server, WINDOW), keys)
    })
}

/// `now` from one byte: 0x80 is the epoch, 0x7f the end of time, anything else the vectors'
/// `now_ms` shifted by a signed number of half steps.
fn pick_now(b: u8) -> UnixMillis {
    match b {
        0x7f => UnixMillis(u64::MAX),
        0x80 => UnixMillis(0),
        b => UnixMillis(BASE_NOW_MS).offset_millis(i64::from(b as i8) * 15_000),
    }
}

/// Input layout: `now` selector (1 byte), signed counter offset from now's step (1 byte), then
/// the datagram. Also re-MACs the datagram to get past the gate, and, when the datagram
/// starts with a valid plaintext, seals it and checks that it opens to the same request.
pub fn payload_open(data: &[u8]) {
    let [now_sel, offset, datagram @ ..] = data else {
        return;
    };
    let (opener, keys) = fixture();
    let now = pick_now(*now_sel);
    let counter = now
        .counter(WINDOW.step_seconds)
        .wrapping_add_signed(i64::from(*offset as i8));
    let in_window = WINDOW.contains(now, counter);

    match opener.open(now, keys, counter, datagram) {
        Ok(req) => {
            assert!(in_window && is_payload_len(datagram.len()));
            assert_eq!(req.timestamp.counter(WINDOW.step_seconds), counter);
            assert!(encode_plaintext(&req).is_ok(), "{req:?}");
        }
        Err(RejectReason::Truncated { len }) => {
            assert!(len == datagram.len() && len < DATAGRAM_LEN);
        }
        Err(RejectReason::TooLong { len }) => {
            assert!(len == datagram.len() && len > MAX_DATAGRAM_LEN);
        }
        Err(RejectReason::Stale { .. }) => {
            assert!(!in_window && is_payload_len(datagram.len()));
        }
        Err(_) => assert!(in_window),
    }

    // With a correct gate MAC, the datagram must get past the length, window and gate checks.
    let core = datagram
        .get(..DATAGRAM_LEN)
        .filter(|_| is_payload_len(datagram.len()));
    if let (true, Some(Ok(mut fixed))) = (in_window, core.map(<[u8; DATAGRAM_LEN]>::try_from)) {
        remac(keys, counter, &mut fixed);
        let r = opener.open(now, keys, counter, &fixed);
        assert!(
            !matches!(
                r,
                Err(RejectReason::Truncated { .. }
                    | RejectReason::TooLong { .. }
                    | RejectReason::Stale { .. }
                    | RejectReason::BadMac)
            ),
            "{r:?}"
        );
    }

    if let Some(pt) = datagram.get(..PLAINTEXT_LEN) {
        plaintext_decode(pt);
        seal_and_open(pt);
    }
}

/// A plaintext that decodes must, sealed in its own time step, open to the same request.
fn seal_and_open(pt: &[u8]) {
    let (Ok(req), Ok(pt)) = (decode_plaintext(pt), <&[u8; PLAINTEXT_LEN]>::try_from(pt)) else {
        return;
    };
    let (opener, keys) = fixture();
    let counter = req.timestamp.counter(WINDOW.step_seconds);
    let datagram = match seal(
        keys,
        counter,
        pt,
        &PrivateKey::from_bytes(EPHEMERAL_KEY),
        true,
    ) {
        Ok(d) => d,
        Err(e) => panic!("sealing a decodable plaintext failed: {e}"),
    };
    assert_eq!(
        opener.open(req.timestamp, keys, counter, &datagram),
        Ok(req)
    );
}

/// `decode_plaintext` on arbitrary bytes; what decodes must encode back to the same bytes.
pub fn plaintext_decode(data: &[u8]) {
    match decode_plaintext(data) {
        Ok(req) => assert_eq!(encode_plaintext(&req).as_ref().map(|b| &b[..]), Ok(data)),
        Err(RejectReason::Truncated { len }) => assert!(len == data.len() && len < PLAINTEXT_LEN),
        Err(RejectReason::TooLong { len }) => assert!(len == data.len() && len > PLAINTEXT_LEN),
        Err(_) => assert_eq!(data.len(), PLAINTEXT_LEN),
    }
}

/// The three key parsers on UTF-8 text: they agree, and an accepted key's canonical text is
/// 44 characters, parses back to the same key and is the input without its trailing ASCII
/// whitespace.
pub fn key_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let public = PublicKey::from_base64(text);
    let private = PrivateKey::from_base64(text);
    let psk = PresharedKey::from_base64(text);
    match (&public, &private, &psk) {
        (Ok(public), Ok(private), Ok(psk)) => {
            assert_eq!(public.as_bytes(), private.expose_bytes());
            assert_eq!(public.as_bytes(), psk.expose_bytes());
        }
        (Err(a), Err(b), Err(c)) => assert!(a == b && b == c, "{a:?} {b:?} {c:?}"),
        _ => panic!("key parsers disagree on {text:?}"),
    }
    if let Ok(key) = public {
        check_canonical(text, &key.to_base64(), PublicKey::from_base64, &key);
    }
    if let Ok(key) = private {
        check_canonical(text, &key.to_base64(), PrivateKey::from_base64, &key);
    }
    if let Ok(key) = psk {
        check_canonical(text, &key.to_base64(), PresharedKey::from_base64, &key);
    }
}

fn check_canonical<K: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    input: &str,
    canonical: &str,
    parse: impl Fn(&str) -> Result<K, E>,
    key: &K,
) {
    assert_eq!(canonical.len(), sesame_keys::KEY_TEXT_LEN, "{canonical:?}");
    assert_eq!(
        input.trim_end_matches(sesame_keys::TRAILING_WHITESPACE),
        canonical
    );
    match parse(canonical) {
        Ok(back) => assert_eq!(&back, key),
        Err(e) => panic!("canonical text {canonical:?} does not parse: {e:?}"),
    }
}

/// `Profile::parse` on UTF-8 text: an error is one line without control characters; a profile
/// survives `to_toml`.
pub fn profile_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Profile::parse(text) {
        Ok(p) => assert_eq!(Profile::parse(&p.to_toml()), Ok(p)),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.chars().any(char::is_control), "{msg:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tracker as a stateful target, and the payload policy past the crypto.
// ---------------------------------------------------------------------------------------------

/// The virtual clock's start (the shared fixtures', as in the tracker tests).
const TRACKER_T0: UnixMillis = T0;
/// Step length of the tracker targets (the shared fixtures').
const TRACKER_STEP: u32 = STEP_SECONDS;
/// Timeout of the tracker targets (the shared fixtures').
const TRACKER_TIMEOUT_MS: u64 = TIMEOUT_MS;
/// The knock range of `tracker_stateful`: 64 ports (one excluded), so that the sequences of two
/// clients over three steps collide and resets happen.
const TRACKER_RANGE: (u16, u16) = (10000, 10063);
const TRACKER_EXCLUDED: u16 = 10005;

/// Most valid payloads built per input (each costs an X25519 in the tracker); resends of them
/// are unlimited.
const MAX_BUILDS: usize = 8;

/// The two fixed clients' private keys: the shared fixtures' clients 1 and 2.
fn tracker_client_key(i: usize) -> PrivateKey {
    client_key(i as u64 + 1)
}

fn tcp22() -> Service {
    Service::new(Proto::Tcp, 22)
}

fn udp51820() -> Service {
    Service::new(Proto::Udp, 51820)
}

/// Client 0: may open tcp/22 and udp/51820 from anywhere, for its source only, and run `wake`
/// (argument: a MAC address) and `ping` (no argument). Client 1: may open tcp/22 from
/// `198.18.0.0/24` and `2001:db8::/64`, for any address, until `T0 + 90 s`; no action.
fn tracker_policy(i: usize) -> Policy {
    if i == 0 {
        Policy {
            allow: vec![tcp22(), udp51820()],
            actions: vec![
                AllowedAction {
                    name: "wake".into(),
                    argument: ArgumentRule::parse("^[0-9a-f:]{17}$")
                        .unwrap_or_else(|e| panic!("valid rule: {e}")),
                },
                AllowedAction {
                    name: "ping".into(),
                    argument: ArgumentRule::None,
                },
            ],
            ..Policy::default()
        }
    } else {
        Policy {
            allow: vec![tcp22()],
            sources: vec![
                net(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)), 24),
                net(
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0)),
                    64,
                ),
            ],
            allow_other_ip: true,
            require_address: false,
            expires: Some(TRACKER_T0.plus_millis(90_000)),
            actions: Vec::new(),
        }
    }
}

fn net(addr: IpAddr, len: u8) -> IpNet {
    IpNet::new(addr, len).unwrap_or_else(|_| IpNet::from(addr))
}

/// The source pool of the tracker targets: IPv4 and IPv6, inside and outside client 1's
/// prefixes, and the IPv4-mapped form of the first address (the same source).
const SOURCES: [IpAddr; 8] = [
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
    IpAddr::V4(Ipv4Addr::new(198, 18, 1, 9)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0001)),
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
];

/// A payload's address choices: none, another public address, the IPv4-mapped form of
/// 198.18.0.1, loopback.
const ADDRESSES: [Option<IpAddr>; 4] = [
    None,
    Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99))),
    Some(IpAddr::V6(Ipv6Addr::new(
        0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0001,
    ))),
    Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
];

/// The fixed clients' public keys, computed once.
fn tracker_client_publics() -> &'static [PublicKey; 2] {
    static PUBLICS: OnceLock<[PublicKey; 2]> = OnceLock::new();
    PUBLICS.get_or_init(|| {
        [
            tracker_client_key(0).public_key(),
            tracker_client_key(1).public_key(),
        ]
    })
}

/// A tracker for the fixed clients (four X25519 per call: `ClientKeys` cannot be cloned, and
/// X25519 under the fuzzer's coverage instrumentation is what limits the executions per
/// second of the stateful targets).
fn fuzz_tracker(config: TrackerConfig) -> Tracker {
    let server = server_key();
    let clients = (0..2)
        .map(|i| {
            let keys = match ClientKeys::for_server(&server, &tracker_client_publics()[i], None) {
                Ok(k) => k,
                Err(e) => panic!("fixed fuzzing keys are contributory: {e}"),
            };
            ClientEntry {
                name: format!("client{i}"),
                keys,
                policy: tracker_policy(i),
            }
        })
        .collect();
    match Tracker::new(config, server, clients, Vec::new(), TRACKER_T0) {
        Ok(t) => t,
        Err(e) => panic!("valid parameters: {e}"),
    }
}

/// Reads the fuzz input a byte at a time; exhausted input reads as `None`.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// The start of a step.
fn step_start(counter: u64) -> UnixMillis {
    UnixMillis(counter.saturating_mul(u64::from(TRACKER_STEP) * 1000))
}

/// `build_payload` with the ephemeral key `[r | 1; 32]`, memoised across inputs (the fuzzer
/// rebuilds the same payloads over and over; each build costs two X25519). Deterministic.
fn cached_payload(
    keys: &ClientKeys,
    client: u32,
    counter: u64,
    request: &Request,
    r: u8,
) -> Option<Vec<u8>> {
    type Cache = HashMap<(u32, u64, [u8; PLAINTEXT_LEN], u8), Vec<u8>>;
    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new(HashMap::new());
    }
    let pt = encode_plaintext(request).ok()?;
    let key = (client, counter, pt, r);
    if let Some(d) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return Some(d);
    }
    // Noise from `r`: the high bit of E and 0..=7 bytes of padding, so padded datagrams are
    // exercised too.
    let noise = WireNoise {
        high_bit: r & 1 == 1,
        padding: vec![r; usize::from(r >> 5)],
    };
    let d = build_payload(
        keys,
        counter,
        request,
        &PrivateKey::from_bytes([r | 1; 32]),
        &noise,
    )
    .ok()?;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 4096 {
            c.clear();
        }
        c.insert(key, d.clone());
    });
    Some(d)
}

/// What `tracker_stateful` needs to know about one input's run (for tests and seeds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatefulSummary {
    /// Grants from a sequence alone.
    pub sequence_grants: u64,
    /// Grants from a payload.
    pub payload_grants: u64,
    /// Sequences completed.
    pub completed: u64,
    /// Resets.
    pub resets: u64,
    /// Sources evicted because of `max_sources`.
    pub evicted: u64,
}

/// A valid payload the harness sent: from where, when, for whom, asking what.
struct SentPayload {
    at: UnixMillis,
    source: IpAddr,
    client: u32,
    counter: u64,
    request: Request,
}

/// The harness's record of everything it fed to the tracker, and what the tracker granted.
struct Ledger {
    config: TrackerConfig,
    /// In-range packets: (time, canonical source, proto, port).
    hits: Vec<(UnixMillis, IpAddr, Proto, u16)>,
    /// Valid payload datagrams sent (including resends of one).
    payloads: Vec<SentPayload>,
    /// The datagrams built so far, with what they carry.
    built: Vec<(Vec<u8>, u32, u64, Request)>,
    /// Per client, the steps with a grant (one sequence-only grant per step, and none in a
    /// step a payload was granted in).
    used_steps: [Vec<u64>; 2],
    /// Gate MACs of the payloads granted (a datagram is granted at most once).
    granted_macs: Vec<[u8; MAC_LEN]>,
    summary: StatefulSummary,
}

impl Ledger {
    fn window(&self) -> TimeWindow {
        TimeWindow {
            step_seconds: self.config.params.step_seconds,
            skew_steps: self.config.skew_steps,
        }
    }

    /// Whether `source` hit every knock of `client`'s sequence at `counter` within the timeout
    /// before `now`.
    fn knocked(
        &self,
        tracker: &Tracker,
        now: UnixMillis,
        source: IpAddr,
        client: u32,
        counter: u64,
    ) -> bool {
        self.knocked_at(tracker, source, client, counter, |t| {
            now.since(t) <= self.config.timeout_ms
        })
    }

    /// Whether `source` hit every knock of `client`'s sequence at `counter` at times that
    /// `ok` accepts.
    fn knocked_at(
        &self,
        tracker: &Tracker,
        source: IpAddr,
        client: u32,
        counter: u64,
        ok: impl Fn(UnixMillis) -> bool,
    ) -> bool {
        let keys = &tracker.clients()[client as usize].keys;
        let Ok(seq) = derive_sequence(keys, &self.config.params, counter) else {
            return false;
        };
        seq.knocks.iter().all(|k| {
            self.hits.iter().any(|&(t, s, proto, port)| {
                s == source && proto == k.proto && port == k.port && ok(t)
            })
        })
    }

    /// For a sequence-only grant in `optional` mode, which comes when the payload's time is
    /// up (possibly long before `now`, if the clock jumped): some moment at which every knock
    /// was at most `timeout_ms` old and the counter was in the window.
    fn knocked_before_deadline(
        &self,
        tracker: &Tracker,
        now: UnixMillis,
        source: IpAddr,
        client: u32,
        counter: u64,
    ) -> bool {
        let timeout = self.config.timeout_ms;
        self.hits
            .iter()
            .filter(|&&(t, s, ..)| s == source && t <= now)
            .any(|&(anchor, ..)| {
                self.window().contains(anchor, counter)
                    && self.knocked_at(tracker, source, client, counter, |t| {
                        t <= anchor && anchor.since(t) <= timeout
                    })
            })
    }

    /// Checks one grant against everything the harness knows. Panics on a violation.
    fn check_grant(&mut self, tracker: &Tracker, now: UnixMillis, g: &Grant) {
        let c = g.client.0 as usize;
        assert!(c < 2, "{g:?}");
        assert_eq!(
            canonical_ip(g.source),
            g.source,
            "source not canonical: {g:?}"
        );
        let policy = tracker_policy(c);
        assert!(
            policy.expires.is_none_or(|e| now < e),
            "expired client granted: {g:?}"
        );
        assert!(
            policy.sources.is_empty() || policy.sources.iter().any(|n| n.contains(&g.source)),
            "source outside the client's prefixes: {g:?}"
        );
        assert!(g.services.iter().all(|s| policy.allow.contains(s)), "{g:?}");
        let length = self.config.params.length;
        let late = g.timestamp.is_none() && self.config.payload == PayloadMode::Optional;
        if length > 0 && !late {
            assert!(
                self.knocked(tracker, now, g.source, g.client.0, g.counter),
                "grant without the client's knocks from that source within the timeout: {g:?}"
            );
        }
        match g.timestamp {
            None => {
                assert!(
                    self.config.payload != PayloadMode::Required && length > 0,
                    "sequence-only grant in {} mode, length {length}: {g:?}",
                    self.config.payload
                );
                if late {
                    // `optional`: granted when the payload's time was up.
                    assert!(
                        self.knocked_before_deadline(tracker, now, g.source, g.client.0, g.counter),
                        "optional-mode sequence grant without the knocks: {g:?}"
                    );
                } else {
                    // Strictly the window at `now`, also between two `advance`s (the daemon
                    // runs it every 500 ms): a step table that has left the window must not
                    // complete a knock.
                    assert!(
                        self.window().contains(now, g.counter),
                        "sequence grant for a counter outside the window: {g:?}"
                    );
                }
                assert!(
                    !self.used_steps[c].contains(&g.counter),
                    "a second grant in one step without a payload: {g:?} after {:?}",
                    self.used_steps[c]
                );
                self.used_steps[c].push(g.counter);
                assert!(!g.bound && g.mac.is_none());
                assert_eq!(g.address, g.source);
                assert_eq!(g.services, policy.allow);
                self.summary.sequence_grants += 1;
            }
            Some(ts) => {
                assert!(self.window().contains(now, g.counter), "{g:?}");
                let Some(mac) = g.mac else {
                    panic!("payload grant without its MAC: {g:?}")
                };
                assert!(
                    !self.granted_macs.contains(&mac),
                    "the same datagram granted twice: {g:?}"
                );
                self.granted_macs.push(mac);
                if !self.used_steps[c].contains(&g.counter) {
                    self.used_steps[c].push(g.counter);
                }
                assert!(
                    ts <= now.plus_millis(self.config.max_ahead_ms),
                    "timestamp too far ahead: {g:?}"
                );
                // Several payloads may carry the same timestamp: one of them must explain
                // the grant exactly.
                let timeout = self.config.timeout_ms;
                let explains = |p: &&SentPayload| {
                    let r = &p.request;
                    let address = r.address.map_or(g.source, canonical_ip);
                    let mut wanted: Vec<Service> = Vec::new();
                    for s in &r.services {
                        if !wanted.contains(s) {
                            wanted.push(*s);
                        }
                    }
                    if wanted.is_empty() {
                        wanted = policy.allow.clone();
                    }
                    p.source == g.source
                        && r.address.is_some() == g.bound
                        && p.client == g.client.0
                        && p.counter == g.counter
                        && r.timestamp == ts
                        && now.since(p.at) <= timeout
                        && g.address == address
                        && g.services == wanted
                };
                assert!(
                    self.payloads.iter().any(|p| explains(&p)),
                    "payload grant without a matching valid payload from that source: {g:?}"
                );
                assert!(g.address == g.source || policy.allow_other_ip, "{g:?}");
                self.summary.payload_grants += 1;
            }
        }
    }
}

/// The tracker as a stateful target: an arbitrary sequence of packets (from a pool of eight
/// v4/v6 sources, to ports of the fixed clients' live sequences or anywhere, with empty,
/// garbage, valid or replayed payload datagrams) and clock moves, in `required`, `optional` or
/// `none` mode with length 3 or 0, with small caps (4 sources of the pool's 7, 2 candidates)
/// so eviction runs.
///
/// Invariants (see `fuzz/README.md`): no panic; [`Tracker::assert_invariants`] after every op;
/// every grant is justified by what the harness sent (see `Ledger::check_grant`); grant and
/// completion counters match the events; X25519 runs only for datagrams with a valid MAC.
pub fn tracker_stateful(data: &[u8]) {
    tracker_stateful_run(data);
}

/// [`tracker_stateful`], returning what happened.
pub fn tracker_stateful_run(data: &[u8]) -> StatefulSummary {
    let mut input = Input(data);
    let Some(sel) = input.byte() else {
        return StatefulSummary::default();
    };
    let mode = [
        PayloadMode::Required,
        PayloadMode::Optional,
        PayloadMode::None,
    ][usize::from(sel % 3)];
    let length: u8 = if (sel / 3) % 2 == 0 { 3 } else { 0 };
    let protocol =
        [KnockProtocol::Udp, KnockProtocol::Tcp, KnockProtocol::Mixed][usize::from((sel / 6) % 3)];
    let params = match KnockParams::new(
        TRACKER_STEP,
        u64::from(length),
        (u64::from(TRACKER_RANGE.0), u64::from(TRACKER_RANGE.1)),
        &[TRACKER_EXCLUDED],
        protocol,
    ) {
        Ok(p) => p,
        Err(e) => panic!("valid parameters: {e}"),
    };
    let config = TrackerConfig {
        max_sources: 4,
        max_candidates: 2,
        ..TrackerConfig::new(params, 1, TRACKER_TIMEOUT_MS, mode)
    };
    let mut tracker = fuzz_tracker(config.clone());
    let mut ledger = Ledger {
        config,
        hits: Vec::new(),
        payloads: Vec::new(),
        built: Vec::new(),
        used_steps: [Vec::new(), Vec::new()],
        granted_macs: Vec::new(),
        summary: StatefulSummary::default(),
    };
    let mut now = TRACKER_T0;
    let mut events = Vec::new();
    let mut grants = 0u64;
    let mut completed = 0u64;
    let mut valid_sends = 0u64;
    let mut garbage = [0u8; DATAGRAM_LEN + 8];
    for _ in 0..512 {
        let Some(op) = input.byte() else { break };
        match op % 8 {
            0..=4 => {
                let (Some(a), Some(b)) = (input.byte(), input.byte()) else {
                    break;
                };
                let source = SOURCES[usize::from(a & 7)];
                let client = u32::from(b & 1);
                let counter = now
                    .counter(TRACKER_STEP)
                    .wrapping_add_signed(i64::from(((b >> 1) & 3) % 3) - 1);
                let (proto, port) = if b & 0x80 != 0 {
                    // A port of a live sequence: position 0..=length (length: the payload port).
                    let keys = &tracker.clients()[client as usize].keys;
                    let Ok(seq) = derive_sequence(keys, &tracker.config().params, counter) else {
                        continue;
                    };
                    let pos = usize::from((b >> 3) & 0xf) % (usize::from(length) + 1);
                    match seq.knocks.get(pos) {
                        Some(k) => (k.proto, k.port),
                        None => (Proto::Udp, seq.payload_port),
                    }
                } else {
                    let proto = if a & 8 != 0 { Proto::Tcp } else { Proto::Udp };
                    (proto, 9990 + u16::from(b & 0x7f))
                };
                let mut datagram: Vec<u8> = Vec::new();
                if proto == Proto::Udp {
                    match (a >> 4) & 3 {
                        0 => {}
                        1 => {
                            let n = usize::from(input.byte().unwrap_or(0));
                            datagram.extend_from_slice(input.take(n));
                        }
                        2 if a & 0x40 != 0 && !ledger.built.is_empty() => {
                            // Resend a datagram built earlier (a replay, maybe from elsewhere).
                            let i = usize::from(input.byte().unwrap_or(0)) % ledger.built.len();
                            datagram.extend_from_slice(&ledger.built[i].0);
                        }
                        2 => {
                            let x = input.byte().unwrap_or(0);
                            for (i, g) in garbage.iter_mut().enumerate() {
                                *g = g.wrapping_add(x).rotate_left(i as u32 % 8) ^ i as u8;
                            }
                            datagram.extend_from_slice(&garbage);
                        }
                        _ if ledger.built.len() < MAX_BUILDS => {
                            let r = input.byte().unwrap_or(0);
                            let mut ts = step_start(counter).plus_millis(u64::from(r % 32) * 937);
                            if r & 0x20 != 0 {
                                // Not in the step it is sent for: counter_mismatch.
                                ts = ts.plus_millis(u64::from(TRACKER_STEP) * 1000);
                            }
                            let services = match r >> 6 {
                                0 => vec![],
                                1 => vec![tcp22()],
                                2 => vec![udp51820(), tcp22(), udp51820()],
                                _ => vec![Service::new(Proto::Tcp, 23)],
                            };
                            let request = Request {
                                timestamp: ts,
                                random: [r; 16],
                                services,
                                address: ADDRESSES[usize::from(a >> 6)],
                                action: None,
                                flags: 0,
                            };
                            let keys = &tracker.clients()[client as usize].keys;
                            if let Some(d) = cached_payload(keys, client, counter, &request, r) {
                                datagram.extend_from_slice(&d);
                                ledger.built.push((d, client, counter, request));
                            }
                        }
                        // Enough payloads built for one input: an empty datagram.
                        _ => {}
                    }
                }
                let canon = canonical_ip(source);
                if tracker.config().params.in_range(port) {
                    ledger.hits.push((now, canon, proto, port));
                }
                if let Some((_, c, k, req)) =
                    ledger.built.iter().find(|(d, ..)| d[..] == datagram[..])
                {
                    valid_sends += 1;
                    ledger.payloads.push(SentPayload {
                        at: now,
                        source: canon,
                        client: *c,
                        counter: *k,
                        request: req.clone(),
                    });
                }
                let d = (proto == Proto::Udp).then_some(&datagram[..]);
                tracker.packet(
                    now,
                    Incoming {
                        source,
                        proto,
                        port,
                        payload: d,
                    },
                    &mut events,
                );
            }
            5 => {
                now = now.plus_millis(u64::from(input.u16().unwrap_or(0)));
                tracker.handle_timeout(now, &mut events);
            }
            6 => {
                let next = now.counter(TRACKER_STEP) + 1;
                now = step_start(next).plus_millis(u64::from(input.byte().unwrap_or(0)) * 10);
                tracker.handle_timeout(now, &mut events);
            }
            _ => {
                if let Err(e) = tracker.advance(now) {
                    panic!("advance: {e}");
                }
            }
        }
        tracker.assert_invariants();
        for e in events.drain(..) {
            match e {
                Event::Granted(g) => {
                    grants += 1;
                    ledger.check_grant(&tracker, now, &g);
                }
                Event::SequenceComplete {
                    source,
                    client,
                    counter,
                } => {
                    completed += 1;
                    assert_eq!(canonical_ip(source), source);
                    assert!(length > 0 && client.0 < 2);
                    assert!(ledger.knocked(&tracker, now, source, client.0, counter));
                }
                Event::Rejected { source, client, .. } => {
                    assert_eq!(canonical_ip(source), source);
                    assert!(client.is_none_or(|c| c.0 < 2));
                }
                Event::PayloadMissing { source, client } => {
                    assert_eq!(canonical_ip(source), source);
                    assert!(length > 0 && client.0 < 2 && mode != PayloadMode::None);
                }
            }
        }
    }
    let stats = tracker.stats();
    assert_eq!(stats.grants, grants);
    assert_eq!(stats.sequences_completed, completed);
    assert!(
        stats.x25519 <= valid_sends,
        "X25519 without a valid MAC: {stats:?}"
    );
    assert!(stats.payloads_accepted <= stats.x25519);
    ledger.summary.completed = completed;
    ledger.summary.resets = stats.resets;
    ledger.summary.evicted = stats.sources_evicted;
    ledger.summary
}

/// Encodes a `tracker_stateful` input (for seeds): `sel`, then ops.
#[derive(Debug, Default)]
pub struct StatefulInput(Vec<u8>);

impl StatefulInput {
    /// Starts an input with the mode/length/protocol selector byte.
    pub fn new(sel: u8) -> Self {
        StatefulInput(vec![sel])
    }

    /// Sends position `pos` of `client`'s sequence at now's step + `offset` (-1..=1) from
    /// `SOURCES[source]`; `payload` is `Some(r)` for a valid payload whose byte `r` picks the
    /// timestamp and services, `address` the `ADDRESSES` entry.
    pub fn knock(
        mut self,
        source: u8,
        client: u8,
        offset: i8,
        pos: u8,
        payload: Option<(u8, u8)>,
    ) -> Self {
        let off = (offset + 1) as u8 % 3;
        let b = 0x80 | (pos & 0xf) << 3 | off << 1 | (client & 1);
        match payload {
            None => self.0.extend_from_slice(&[0, source & 7, b]),
            Some((r, address)) => {
                let a = (source & 7) | 0x30 | (address & 3) << 6;
                self.0.extend_from_slice(&[0, a, b, r]);
            }
        }
        self
    }

    /// Resends the `i`-th datagram built so far from `SOURCES[source]` to position `pos`.
    pub fn resend(mut self, source: u8, client: u8, pos: u8, i: u8) -> Self {
        let b = 0x80 | (pos & 0xf) << 3 | 1 << 1 | (client & 1);
        self.0
            .extend_from_slice(&[0, (source & 7) | 0x20 | 0x40, b, i]);
        self
    }

    /// A packet to an arbitrary port `9990 + (p & 0x7f)`.
    pub fn noise(mut self, source: u8, tcp: bool, p: u8) -> Self {
        let a = (source & 7) | if tcp { 8 } else { 0 };
        self.0.extend_from_slice(&[1, a, p & 0x7f]);
        self
    }

    /// Moves the clock by `ms`.
    pub fn wait(mut self, ms: u16) -> Self {
        self.0.push(5);
        self.0.extend_from_slice(&ms.to_be_bytes());
        self
    }

    /// Moves the clock to the next step (+ `tens` × 10 ms).
    pub fn next_step(mut self, tens: u8) -> Self {
        self.0.extend_from_slice(&[6, tens]);
        self
    }

    /// Runs `Tracker::advance`.
    pub fn advance(mut self) -> Self {
        self.0.push(7);
        self
    }

    /// The bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// The datagram that carries `pt` past the crypto: with `--cfg fuzzing` the crypto is bypassed
/// (see `sesame_proto::fuzzing`), so any ephemeral key, tag and MAC do; in a normal build (the corpus
/// replay) it is really sealed for the client and counter, so the same checks run on the
/// genuine path.
#[cfg(fuzzing)]
fn bypass_datagram(
    keys: &ClientKeys,
    counter: u64,
    pt: &[u8; PLAINTEXT_LEN],
) -> [u8; DATAGRAM_LEN] {
    let mut d = [0u8; DATAGRAM_LEN];
    d[32..32 + PLAINTEXT_LEN].copy_from_slice(pt);
    // The MAC field identifies the datagram (the tracker's replay cache keys on it), as a real
    // MAC would: a digest of the client, the counter and the plaintext.
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(keys.client_public().as_bytes());
    ctx.update(&counter.to_be_bytes());
    ctx.update(pt);
    d[sesame_proto::wire::MAC_OFFSET..].copy_from_slice(&ctx.finish().as_ref()[..MAC_LEN]);
    d
}

#[cfg(not(fuzzing))]
fn bypass_datagram(
    keys: &ClientKeys,
    counter: u64,
    pt: &[u8; PLAINTEXT_LEN],
) -> [u8; DATAGRAM_LEN] {
    match seal(
        keys,
        counter,
        pt,
        &PrivateKey::from_bytes(EPHEMERAL_KEY),
        false,
    ) {
        Ok(d) => d,
        Err(e) => panic!("sealing failed: {e}"),
    }
}

/// What opening a datagram carrying `pt` for `counter` must give once the crypto has passed.
fn expected_open(pt: &[u8], counter: u64) -> Result<Request, RejectReason> {
    let r = decode_plaintext(pt)?;
    if r.timestamp.counter(TRACKER_STEP) != counter {
        return Err(RejectReason::CounterMismatch);
    }
    Ok(r)
}

/// The harness's model of one client's replay state (written from the documentation of
/// `ReplayState`, not its code): the timestamps accepted while the window may still admit
/// them, and the floor that rises as they leave it.
#[derive(Clone, Debug, Default)]
struct ReplayModel {
    accepted: Vec<UnixMillis>,
    floor: Option<UnixMillis>,
}

impl ReplayModel {
    /// Forgets what the window starting at `start` no longer admits.
    fn prune(&mut self, start: UnixMillis) {
        for t in self.accepted.iter().filter(|t| **t < start) {
            self.floor = Some(self.floor.map_or(*t, |f| f.max(*t)));
        }
        self.accepted.retain(|t| *t >= start);
    }
}

/// The start of the window (one step of skew) at `now`.
fn window_start(now: UnixMillis) -> UnixMillis {
    step_start(now.counter(TRACKER_STEP).saturating_sub(1))
}

/// Every policy rule `r` breaks for `client` (written from the tracker's documentation, not its
/// code), and otherwise the address and services to grant.
fn policy_verdict(
    client: usize,
    now: UnixMillis,
    source: IpAddr,
    replay: &ReplayModel,
    r: &Request,
) -> Result<(IpAddr, Vec<Service>), Vec<Reason>> {
    let policy = tracker_policy(client);
    let mut broken = Vec::new();
    if replay.floor.is_some_and(|f| r.timestamp <= f) {
        broken.push(Reason::Replay);
    }
    if r.timestamp > now.plus_millis(u64::from(TRACKER_STEP) * 1000) {
        broken.push(Reason::TooFarAhead);
    }
    if let Some(a) = &r.action {
        // A decoded name is always valid.
        if let Some(name) = ActionName::new(&a.name) {
            match policy.actions.iter().find(|x| x.name == a.name) {
                None => broken.push(Reason::ActionNotAllowed(name)),
                Some(x) if !x.argument.allows(&a.argument) => {
                    broken.push(Reason::ArgumentNotAllowed(name));
                }
                Some(_) => {}
            }
        }
    }
    if policy.expires.is_some_and(|e| now >= e) {
        broken.push(Reason::Expired);
    }
    if !policy.sources.is_empty() && !policy.sources.iter().any(|n| n.contains(&source)) {
        broken.push(Reason::SourceNotAllowed);
    }
    let address = match r.address {
        Some(IpAddr::V6(a)) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
        Some(a) => a,
        None => source,
    };
    let unopenable = match address {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast()
        }
        IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
    };
    if unopenable {
        broken.push(Reason::BadAddress(address));
    }
    if address != source && !policy.allow_other_ip {
        broken.push(Reason::OtherIpNotAllowed(address));
    }
    let mut services: Vec<Service> = Vec::new();
    for s in &r.services {
        if !policy.allow.contains(s) {
            broken.push(Reason::ServiceNotAllowed(*s));
        } else if !services.contains(s) {
            services.push(*s);
        }
    }
    // No service asked for: every allowed one, or none next to an action.
    if services.is_empty() && r.services.is_empty() && r.action.is_none() {
        services = policy.allow.clone();
    }
    if broken.is_empty() {
        Ok((address, services))
    } else {
        Err(broken)
    }
}

/// Past the MAC and the AEAD: arbitrary plaintexts through the opener's last steps (decoding,
/// the step check) and through a single-packet tracker's replay and policy checks.
///
/// Input: chunks of a control byte (bit 0: client; bits 1-2: counter offset -1..=1 mod 3;
/// bits 3-5: source; bit 7: first move the clock by `(ctrl >> 1 & 0x3f)` seconds) and a
/// 120-byte plaintext (zero-padded at the end of the input).
///
/// Invariants: `Opener::open` returns exactly what decoding and the step check say; the
/// tracker answers each datagram with exactly one event; a grant happens exactly when the
/// plaintext decodes, is in the step of a (client, counter) whose payload port it reached,
/// its timestamp is newer than the client's last, and no policy rule is broken, and then its
/// address and services are the ones asked for (canonical, deduplicated; everything allowed
/// when none are asked); a rejection names the client and a reason that applies.
pub fn payload_open_bypass(data: &[u8]) {
    let mut input = Input(data);
    let params = match KnockParams::new(
        TRACKER_STEP,
        0,
        (u64::from(TRACKER_RANGE.0), u64::from(TRACKER_RANGE.1)),
        &[TRACKER_EXCLUDED],
        KnockProtocol::Udp,
    ) {
        Ok(p) => p,
        Err(e) => panic!("valid parameters: {e}"),
    };
    let config = TrackerConfig {
        max_sources: 8,
        max_candidates: 2,
        // No X25519 cap here: the rate limit has its own tests.
        x25519_per_second: u32::MAX,
        ..TrackerConfig::new(params.clone(), 1, TRACKER_TIMEOUT_MS, PayloadMode::Required)
    };
    let window = TimeWindow {
        step_seconds: TRACKER_STEP,
        skew_steps: 1,
    };
    let mut tracker = fuzz_tracker(config);
    let opener = Opener::new(server_key(), window);
    #[cfg(fuzzing)]
    let _bypass = sesame_proto::fuzzing::CryptoBypass::enable();
    let mut now = TRACKER_T0;
    let mut replay: [ReplayModel; 2] = Default::default();
    // Gate MACs of the datagrams that reached the gate: a second copy is a replay.
    let mut seen: Vec<[u8; MAC_LEN]> = Vec::new();
    let mut events = Vec::new();
    for _ in 0..64 {
        let Some(ctrl) = input.byte() else { break };
        if ctrl & 0x80 != 0 {
            now = now.plus_millis(u64::from((ctrl >> 1) & 0x3f) * 1000);
        }
        let client = usize::from(ctrl & 1);
        let counter = now
            .counter(TRACKER_STEP)
            .wrapping_add_signed(i64::from(((ctrl >> 1) & 3) % 3) - 1);
        let source = SOURCES[usize::from((ctrl >> 3) & 7)];
        let canon = canonical_ip(source);
        let mut pt = [0u8; PLAINTEXT_LEN];
        let bytes = input.take(PLAINTEXT_LEN);
        pt[..bytes.len()].copy_from_slice(bytes);

        let keys = &tracker.clients()[client].keys;
        let datagram = bypass_datagram(keys, counter, &pt);
        assert_eq!(
            opener.open(now, keys, counter, &datagram),
            expected_open(&pt, counter)
        );

        // Every (client, counter) of the window whose payload port is this one.
        let Ok(seq) = derive_sequence(keys, &params, counter) else {
            continue;
        };
        let port = seq.payload_port;
        let mut matches = Vec::new();
        for k in window.counters(now) {
            for (c, entry) in tracker.clients().iter().enumerate() {
                if derive_sequence(&entry.keys, &params, k).is_ok_and(|s| s.payload_port == port) {
                    matches.push((c, k));
                }
            }
        }
        // The tracker also holds the table of the step after the window (built ahead of the
        // turn): a datagram whose port is that step's is judged, and refused (not stale for
        // the window's counters, but for that one).
        let mut judged = matches.clone();
        let ahead = window.counters(now).end() + 1;
        for (c, entry) in tracker.clients().iter().enumerate() {
            if derive_sequence(&entry.keys, &params, ahead).is_ok_and(|s| s.payload_port == port) {
                judged.push((c, ahead));
            }
        }
        let mac = carried_mac(&datagram).unwrap_or_default();
        let was_seen = seen.contains(&mac);
        seen.push(mac);
        for r in &mut replay {
            r.prune(window_start(now));
        }
        tracker.packet(
            now,
            Incoming {
                source,
                proto: Proto::Udp,
                port,
                payload: Some(&datagram),
            },
            &mut events,
        );
        tracker.assert_invariants();
        assert_eq!(events.len(), 1, "{events:?}");
        if was_seen {
            assert!(
                matches!(
                    events[0],
                    Event::Rejected {
                        reason: Reason::Replay,
                        ..
                    }
                ),
                "a datagram seen before must be refused as a replay: {events:?}"
            );
            events.clear();
            continue;
        }
        match events.remove(0) {
            Event::Granted(g) => {
                let c = g.client.0 as usize;
                assert!(matches.contains(&(c, g.counter)), "{g:?} {matches:?}");
                let r = match expected_open(&pt, g.counter) {
                    Ok(r) => r,
                    Err(e) => panic!("granted {g:?} although opening gives {e:?}"),
                };
                match policy_verdict(c, now, canon, &replay[c], &r) {
                    Ok((address, services)) => {
                        assert_eq!(g.source, canon);
                        assert_eq!(g.address, address);
                        assert_eq!(g.services, services);
                        assert_eq!(g.action, r.action);
                        assert_eq!(g.timestamp, Some(r.timestamp));
                        assert_eq!(g.bound, r.address.is_some());
                    }
                    Err(broken) => panic!("granted {g:?} although it breaks {broken:?}"),
                }
                replay[c].accepted.push(r.timestamp);
            }
            Event::Rejected {
                source: s,
                client: Some(id),
                reason,
            } => {
                assert_eq!(s, canon);
                let c = id.0 as usize;
                let explained = judged.iter().filter(|m| m.0 == c).any(|&(_, k)| {
                    if k == ahead {
                        // Outside the window: refused as stale for that counter, unopened.
                        return matches!(
                            reason,
                            Reason::Payload(RejectReason::Stale { counter, .. }) if counter == k
                        );
                    }
                    match (expected_open(&pt, k), reason) {
                        (Err(e), Reason::Payload(got)) => e == got,
                        (Ok(r), reason) => policy_verdict(c, now, canon, &replay[c], &r)
                            .is_err_and(|broken| broken.contains(&reason)),
                        _ => false,
                    }
                });
                assert!(
                    explained,
                    "unexplained rejection {reason:?} for client {c}: {judged:?}"
                );
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

/// Seeds for `payload_open_bypass`: valid plaintexts for each client and counter offset, a
/// replay, other addresses and services, and a few broken fields.
pub fn payload_open_bypass_seeds() -> Vec<Vec<u8>> {
    let t0 = TRACKER_T0;
    let base = |ts: UnixMillis, services: Vec<Service>, address: Option<IpAddr>| Request {
        timestamp: ts,
        random: [7; 16],
        services,
        address,
        action: None,
        flags: 0,
    };
    let enc = |r: &Request| encode_plaintext(r).map(|p| p.to_vec()).unwrap_or_default();
    let counter = t0.counter(TRACKER_STEP);
    let mut seeds = Vec::new();
    // ctrl: client | offset << 1 | source << 3.
    let ctrl =
        |client: u8, offset: i8, source: u8| client | (((offset + 1) as u8) % 3) << 1 | source << 3;
    for client in 0..2u8 {
        for offset in -1i8..=1 {
            let ts = step_start(counter.wrapping_add_signed(i64::from(offset))).plus_millis(1234);
            let mut s = vec![ctrl(client, offset, 0)];
            s.extend(enc(&base(ts, vec![tcp22()], None)));
            // The same again: a replay.
            s.push(ctrl(client, offset, 0));
            s.extend(enc(&base(ts, vec![tcp22()], None)));
            seeds.push(s);
        }
        let mut s = Vec::new();
        for (i, (services, address)) in [
            (vec![], None),
            (vec![udp51820(), udp51820()], None),
            (vec![Service::new(Proto::Tcp, 23)], None),
            (vec![tcp22()], ADDRESSES[1]),
            (vec![tcp22()], ADDRESSES[2]),
            (vec![tcp22()], ADDRESSES[3]),
        ]
        .into_iter()
        .enumerate()
        {
            s.push(ctrl(client, 0, i as u8 % 8));
            s.extend(enc(&base(t0.plus_millis(i as u64 * 10), services, address)));
        }
        // Actions: allowed (alone, with a service), another client's, a bad argument.
        for (i, (name, arg, services)) in [
            ("wake", "00:11:22:33:44:55", vec![]),
            ("ping", "", vec![tcp22()]),
            ("wake", "00:11:22:33:44:5", vec![]),
            ("ping", "x", vec![]),
            ("reboot", "", vec![]),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = base(t0.plus_millis(100 + i as u64), services, None);
            r.action = Action::new(name, arg).ok();
            s.push(ctrl(client, 0, 0));
            s.extend(enc(&r));
        }
        // After the clock moves past client 1's expiry.
        s.push(0x80 | 0x7e | client);
        s.extend(enc(&base(t0.plus_millis(200_000), vec![], None)));
        seeds.push(s);
    }
    let mut bad = enc(&base(t0, vec![tcp22()], None));
    bad[0] = 1; // version
    let mut s = vec![0];
    s.extend(&bad);
    bad[0] = 2;
    bad[1] = 1; // flags
    s.push(0);
    s.extend(&bad);
    seeds.push(s);
    seeds
}

/// Seeds for `tracker_stateful`: complete knocks (with and without payloads) in every mode,
/// out of order, replayed, interleaved with noise, across a step, and a flood that evicts.
pub fn tracker_stateful_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for protocol in 0..3u8 {
        for mode in 0..3u8 {
            let sel = mode + 6 * protocol;
            // Length 3: client 0 from source 0, then its payload; client 1 from source 4.
            let s = StatefulInput::new(sel)
                .knock(0, 0, 0, 0, None)
                .knock(0, 0, 0, 2, None)
                .knock(0, 0, 0, 1, None)
                .knock(0, 0, 0, 3, Some((1 << 6, 0)))
                .wait(200)
                .knock(4, 1, 1, 2, None)
                .noise(5, true, 20)
                .knock(4, 1, 1, 0, None)
                .knock(4, 1, 1, 1, None)
                .knock(4, 1, 1, 3, Some((2, 1)))
                .resend(2, 0, 3, 0)
                .into_bytes();
            seeds.push(s);
            // The payload overtakes the last knock; then a replay from another source; then
            // the next step.
            let s = StatefulInput::new(sel)
                .knock(1, 0, 0, 0, None)
                .knock(1, 0, 0, 3, Some((3, 0)))
                .knock(1, 0, 0, 1, None)
                .knock(1, 0, 0, 2, None)
                .knock(6, 0, 0, 0, None)
                .knock(6, 0, 0, 1, None)
                .knock(6, 0, 0, 2, None)
                .resend(6, 0, 3, 0)
                .next_step(5)
                .advance()
                .knock(0, 0, 0, 0, None)
                .knock(0, 0, 0, 1, None)
                .noise(0, false, 15)
                .knock(0, 0, 0, 0, None)
                .knock(0, 0, 0, 1, None)
                .knock(0, 0, 0, 2, None)
                .knock(0, 0, 0, 3, Some((4, 0)))
                .into_bytes();
            seeds.push(s);
            // Single-packet mode (length 0): payloads alone, one replayed, one late.
            let s = StatefulInput::new(sel + 3)
                .knock(0, 0, 0, 0, Some((1, 0)))
                .knock(4, 1, -1, 0, Some((2, 1)))
                .resend(3, 0, 0, 0)
                .wait(30_000)
                .advance()
                .knock(3, 1, 0, 0, Some((5, 0)))
                .knock(1, 0, 1, 0, Some((3 << 6, 0)))
                .into_bytes();
            seeds.push(s);
        }
    }
    // A flood from every source (more than max_sources = 8 are not needed: 8 sources + the
    // mapped one), then a knock that times out, then one that works.
    let mut s = StatefulInput::new(2);
    for i in 0..40u8 {
        s = s.noise(i % 8, i % 3 == 0, i.wrapping_mul(37));
        s = s.knock(i % 8, i & 1, 0, i % 4, None);
    }
    s = s
        .knock(0, 0, 0, 0, None)
        .knock(0, 0, 0, 1, None)
        .wait(5001)
        .knock(0, 0, 0, 2, None)
        .knock(0, 0, 0, 0, None)
        .knock(0, 0, 0, 1, None)
        .knock(0, 0, 0, 2, None);
    seeds.push(s.into_bytes());
    seeds
}

/// The STUN response parser: input is a 12-byte transaction id, then the datagram. Never
/// panics; an address comes back only from a Binding success response with that transaction
/// id; and a response built from that address (XOR-MAPPED-ADDRESS) parses back to it.
pub fn stun_parse(data: &[u8]) {
    use sesame_proto::stun::{
        HEADER_LEN, MAGIC_COOKIE, TRANSACTION_ID_LEN, parse_binding_response,
    };
    let Some((tid, msg)) = data.split_first_chunk::<TRANSACTION_ID_LEN>() else {
        return;
    };
    let Ok(addr) = parse_binding_response(msg, tid) else {
        return;
    };
    assert!(msg.len() >= HEADER_LEN && msg[..2] == [0x01, 0x01] && &msg[8..20] == tid);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&cookie);
    mask[4..].copy_from_slice(tid);
    let mut value = vec![0, 0];
    value[1] = if addr.is_ipv4() { 1 } else { 2 };
    value.extend_from_slice(&(addr.port() ^ 0x2112).to_be_bytes());
    let octets: Vec<u8> = match addr.ip() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    value.extend(octets.iter().zip(mask).map(|(b, m)| b ^ m));
    let mut built = vec![0x01, 0x01];
    built.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
    built.extend_from_slice(&cookie);
    built.extend_from_slice(tid);
    built.extend_from_slice(&[0x00, 0x20]);
    built.extend_from_slice(&(value.len() as u16).to_be_bytes());
    built.extend_from_slice(&value);
    assert_eq!(parse_binding_response(&built, tid), Ok(addr));
}
