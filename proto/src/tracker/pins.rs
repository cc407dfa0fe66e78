//! Tests that pin the tracker's behaviour where a mutation run (`scripts/mutants`,
//! docs/TESTING.md) found it unpinned: the step tables at the window's edges
//! ([`step_tables`]), when a source's state is reclaimed ([`sources`]), the reason codes and
//! counters the server exports as metrics ([`accounting`]), the cache of gate MACs and
//! gated steps ([`seen_cache`]), a client's replay state at its bounds ([`replay_state`]), and
//! the floors of a start after a crash at their edge ([`crash_floor`]).
//!
//! Everything runs on a virtual clock. The tracker is fed only through [`Lab::send`], so a
//! change of [`Tracker::packet`]'s signature touches one line here.

use super::*;
use crate::params::KnockProtocol;
use crate::payload::{WireNoise, build_payload};
use crate::sequence::Sequence;
use sesame_fixtures::{EXCLUDED_PORT, PORT_RANGE, SKEW_STEPS, client_key, server_key};
use std::net::Ipv4Addr;

mod accounting;
mod crash_floor;
mod gone_keys_growth;
mod replay_state;
mod seen_cache;
mod sources;
mod step_tables;

// The shared fixtures' settings (`sesame-fixtures`), as this crate's own types.
const STEP: u32 = sesame_fixtures::STEP_SECONDS;
const STEP_MS: u64 = STEP as u64 * 1000;
/// The start of a step (1 764 000 000 is a multiple of 30).
const T0: UnixMillis = UnixMillis(sesame_fixtures::T0_MS);
const TIMEOUT_MS: u64 = sesame_fixtures::TIMEOUT_MS;
const OUT_OF_RANGE: u16 = 9000;

/// The counter of [`T0`].
fn c0() -> u64 {
    T0.counter(STEP)
}

/// `ms` milliseconds into the step `steps` after [`T0`]'s.
fn at(steps: u64, ms: u64) -> UnixMillis {
    T0.plus_millis(steps * STEP_MS + ms)
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, last))
}

fn tcp22() -> Service {
    Service::new(Proto::Tcp, 22)
}

fn config(mode: PayloadMode) -> TrackerConfig {
    config_of_length(3, mode)
}

/// `length` UDP knocks (0: single-packet mode) in 10000..=19999 (10022 excluded), one step of
/// skew either side (the fixtures' settings).
fn config_of_length(length: u64, mode: PayloadMode) -> TrackerConfig {
    let params = KnockParams::new(
        STEP,
        length,
        PORT_RANGE,
        &[EXCLUDED_PORT],
        KnockProtocol::Udp,
    )
    .unwrap();
    TrackerConfig {
        max_sources: 1024,
        ..TrackerConfig::new(params, SKEW_STEPS, TIMEOUT_MS, mode)
    }
}

/// A tracker with clients `0..n` (each may open tcp/22), and the events it emitted.
struct Lab {
    server: PrivateKey,
    clients: Vec<PrivateKey>,
    tracker: Tracker,
    events: Vec<Event>,
}

impl Lab {
    fn new(mode: PayloadMode, n: usize) -> Self {
        Lab::with(config(mode), n, |_| Policy {
            allow: vec![tcp22()],
            ..Policy::default()
        })
    }

    fn with(config: TrackerConfig, n: usize, policy: impl Fn(usize) -> Policy) -> Self {
        Lab::starting_at(config, n, policy, T0)
    }

    fn starting_at(
        config: TrackerConfig,
        n: usize,
        policy: impl Fn(usize) -> Policy,
        now: UnixMillis,
    ) -> Self {
        let server = server_key();
        let clients: Vec<PrivateKey> = (0..n).map(|i| client_key(i as u64 + 1)).collect();
        let entries = clients
            .iter()
            .enumerate()
            .map(|(i, c)| ClientEntry {
                name: format!("client{i}"),
                keys: ClientKeys::for_server(&server, &c.public_key(), None).unwrap(),
                policy: policy(i),
            })
            .collect();
        let tracker = Tracker::new(config, server.clone(), entries, Vec::new(), now).unwrap();
        Lab {
            server,
            clients,
            tracker,
            events: Vec::new(),
        }
    }

    /// Feeds one packet (the only call of [`Tracker::packet`] in these tests).
    fn send(
        &mut self,
        now: UnixMillis,
        source: IpAddr,
        proto: Proto,
        port: u16,
        datagram: Option<&[u8]>,
    ) -> Outcome {
        let out = self.tracker.packet(
            now,
            Incoming {
                source,
                proto,
                port,
                payload: datagram,
            },
            &mut self.events,
        );
        self.tracker.assert_invariants();
        out
    }

    fn client_keys(&self, i: usize) -> ClientKeys {
        ClientKeys::for_client(&self.clients[i], &self.server.public_key(), None).unwrap()
    }

    fn sequence(&self, i: usize, counter: u64) -> Sequence {
        derive_sequence(&self.client_keys(i), &self.tracker.config.params, counter).unwrap()
    }

    /// Client `i`'s knocks for `counter`, all sent at `now` from `source`; the last outcome.
    fn knocks(&mut self, i: usize, counter: u64, now: UnixMillis, source: IpAddr) -> Outcome {
        let seq = self.sequence(i, counter);
        let mut out = Outcome::Ignored;
        for k in seq.knocks {
            out = self.send(now, source, k.proto, k.port, None);
        }
        out
    }

    /// Client `i`'s payload for `counter`, stamped `stamp` (asking for tcp/22).
    fn payload(&self, i: usize, counter: u64, stamp: UnixMillis) -> Vec<u8> {
        let request = Request {
            timestamp: stamp,
            random: [i as u8; 16],
            services: vec![tcp22()],
            address: None,
            action: None,
            flags: 0,
        };
        build_payload(
            &self.client_keys(i),
            counter,
            &request,
            // An ephemeral key of its own (the fixtures' keys are deterministic).
            &client_key(1000 + i as u64),
            &WireNoise::from_random(&[stamp.0 as u8; 64]),
        )
        .unwrap()
    }

    /// Sends `datagram` to client `i`'s payload port of `counter`.
    fn send_payload(
        &mut self,
        i: usize,
        counter: u64,
        now: UnixMillis,
        source: IpAddr,
        datagram: &[u8],
    ) -> Outcome {
        let port = self.sequence(i, counter).payload_port;
        self.send(now, source, Proto::Udp, port, Some(datagram))
    }

    /// The counters of the tracker's tables, in its order.
    fn table_counters(&self) -> Vec<u64> {
        self.tracker.tables.iter().map(|t| t.counter).collect()
    }

    /// The table of `counter`, built as a server's blocking thread does.
    fn build(&self, counter: u64) -> StepTable {
        let clients = self.tracker.clients_shared();
        let config = self.tracker.config();
        StepTable::build(&clients, &config.params, config.payload, counter).unwrap()
    }

    /// Takes the events out.
    fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Takes the events out and returns the grants' (client, counter).
    fn grants(&mut self) -> Vec<(ClientId, u64)> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Event::Granted(g) => Some((g.client, g.counter)),
                _ => None,
            })
            .collect()
    }

    /// A port of the knock range that is no knock or payload port of any client at any counter
    /// of the window at `now` and the step after it.
    fn stray_port(&self, now: UnixMillis) -> u16 {
        let live = self.tracker.live_ports(now).unwrap();
        (PORT_RANGE.0 as u16..=PORT_RANGE.1 as u16)
            .find(|p| *p != EXCLUDED_PORT && !live.ports.contains(p))
            .unwrap()
    }
}
