//! The targets of `sesame-server` (sesamed): `frame_tracker` (raw IP packets through the
//! capture's parser into a tracker), `config_parse`, `metrics_request` and `action_protocol`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::OnceLock;

use etherparse::PacketBuilder;
use sesame_fixtures::{STEP_SECONDS as STEP, T0, client_key, server_key, tracker_config};
use sesame_keys::{PrivateKey, PublicKey};
use sesame_proto::derive::derive_sequence;
use sesame_proto::params::{KnockProtocol, PayloadMode};
use sesame_proto::tracker::{ClientEntry, Policy, canonical_ip};
use sesame_proto::wire::{Request, WireNoise, build_payload};
use sesame_proto::{ClientKeys, Event, Proto, Service, Tracker, TrackerConfig, UnixMillis};

use sesame_server::capture::parse_ip;
use sesame_server::config::{Config, ConfigFileError, DEFAULT_CONFIG};

/// The fixed clients' private keys: the shared fixtures' clients 1 and 2.
fn client(i: usize) -> PrivateKey {
    client_key(i as u64 + 1)
}

/// The fixed clients' public keys, computed once (X25519 dominates the cost of an input).
fn client_publics() -> &'static [PublicKey; 2] {
    static PUBLICS: OnceLock<[PublicKey; 2]> = OnceLock::new();
    PUBLICS.get_or_init(|| [client(0).public_key(), client(1).public_key()])
}

/// `frame_tracker`'s knock settings: byte 0 of the input picks the payload mode (`% 3`) and
/// single-packet mode (bit 2); the shared fixtures' settings (30 s steps, ports 10000-19999
/// without 10022, one step of skew, 5 s timeout), mixed UDP/TCP.
fn frame_config(sel: u8) -> TrackerConfig {
    let mode = [
        PayloadMode::Required,
        PayloadMode::Optional,
        PayloadMode::None,
    ][usize::from(sel % 3)];
    let length = if sel & 4 != 0 { 0 } else { 3 };
    tracker_config(length, KnockProtocol::Mixed, mode, 16, 4)
}

/// Two fixed clients: 0 may open tcp/22 for its source; 1 may open tcp/22 and udp/51820 for
/// any address.
fn frame_tracker_for(config: TrackerConfig) -> Tracker {
    let server = server_key();
    let clients = (0..2)
        .map(|i| {
            let keys = match ClientKeys::for_server(&server, &client_publics()[i], None) {
                Ok(k) => k,
                Err(e) => panic!("fixed fuzzing keys are contributory: {e}"),
            };
            let mut allow = vec![Service::new(Proto::Tcp, 22)];
            if i == 1 {
                allow.push(Service::new(Proto::Udp, 51820));
            }
            ClientEntry {
                name: format!("client{i}"),
                keys,
                policy: Policy {
                    allow,
                    allow_other_ip: i == 1,
                    ..Policy::default()
                },
            }
        })
        .collect();
    match Tracker::new(config, server, clients, Vec::new(), T0) {
        Ok(t) => t,
        Err(e) => panic!("valid parameters: {e}"),
    }
}

/// What one `frame_tracker` input did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameSummary {
    /// Frames fed to the parser.
    pub frames: u64,
    /// Frames the parser accepted.
    pub parsed: u64,
    /// Sequences completed.
    pub completed: u64,
    /// Grants.
    pub grants: u64,
}

/// Control bytes of the `frame_tracker` input format (anything below 0xF0 starts a frame).
pub mod control {
    /// Followed by a big-endian u16: move the clock by that many milliseconds.
    pub const WAIT_MS: u8 = 0xF0;
    /// Move the clock to the start of the next step.
    pub const NEXT_STEP: u8 = 0xF1;
    /// Run `Tracker::advance` (the daemon does every 500 ms).
    pub const ADVANCE: u8 = 0xF2;
    // 0xF3..=0xFF: move the clock by (byte - 0xF2) × 500 ms.
}

/// Raw IP packets (no link header: sesamed captures in cooked mode, so "L2-L4" is IP and the
/// transport) through [`parse_ip`] into a tracker with two fixed clients, on a virtual clock.
///
/// Input: byte 0 picks the mode (see `frame_config`); then records: a control byte of
/// [`control`], or a frame: any byte below 0xF0, a big-endian u16 length, and that many bytes
/// (fewer at the end of the input) of IP packet.
///
/// Invariants: no panic; [`Tracker::assert_invariants`] after every frame; what the parser
/// returns is consistent with the frame (a UDP datagram has a payload no longer than the
/// frame, a TCP SYN none, the source family is the IP version); every event is about the
/// canonical source of the frame that triggered it; in `required` mode and in single-packet
/// mode every grant carries a payload timestamp; completions happen only with length > 0; the
/// tracker's grant and completion counters match its events.
pub fn frame_tracker(data: &[u8]) {
    frame_tracker_run(data);
}

/// [`frame_tracker`], returning what happened.
pub fn frame_tracker_run(data: &[u8]) -> FrameSummary {
    let Some((&sel, mut rest)) = data.split_first() else {
        return FrameSummary::default();
    };
    let config = frame_config(sel);
    let mode = config.payload;
    let length = config.params.length;
    let mut tracker = frame_tracker_for(config);
    let mut now = T0;
    let mut events = Vec::new();
    let mut summary = FrameSummary::default();
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        match tag {
            control::WAIT_MS => {
                let ms = match rest {
                    [a, b, tail @ ..] => {
                        rest = tail;
                        u16::from_be_bytes([*a, *b])
                    }
                    _ => 0,
                };
                now = now.plus_millis(u64::from(ms));
            }
            control::NEXT_STEP => {
                let next = now.counter(STEP) + 1;
                now = UnixMillis(next * u64::from(STEP) * 1000);
            }
            control::ADVANCE => {
                if let Err(e) = tracker.advance(now) {
                    panic!("advance: {e}");
                }
            }
            0xF3..=0xFF => now = now.plus_millis(u64::from(tag - 0xF2) * 500),
            _ => {
                let len = match rest {
                    [a, b, tail @ ..] => {
                        rest = tail;
                        usize::from(u16::from_be_bytes([*a, *b]))
                    }
                    _ => {
                        rest = &[];
                        0
                    }
                };
                let (frame, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                summary.frames += 1;
                let Some(p) = parse_ip(frame) else {
                    continue;
                };
                summary.parsed += 1;
                match p.proto {
                    Proto::Udp => {
                        let payload = p.payload.map_or(usize::MAX, <[u8]>::len);
                        assert!(payload + 8 <= frame.len(), "{p:?}");
                    }
                    Proto::Tcp => assert!(p.payload.is_none(), "{p:?}"),
                }
                let version = frame.first().map(|b| b >> 4);
                match p.source {
                    IpAddr::V4(_) => assert_eq!(version, Some(4)),
                    IpAddr::V6(_) => assert_eq!(version, Some(6)),
                }
                tracker.packet(now, p, &mut events);
                tracker.assert_invariants();
                for e in events.drain(..) {
                    match e {
                        Event::Granted(g) => {
                            summary.grants += 1;
                            assert_eq!(g.source, canonical_ip(p.source), "{g:?}");
                            if mode == PayloadMode::Required || length == 0 {
                                assert!(g.timestamp.is_some(), "{g:?}");
                            }
                            assert!(g.client.0 < 2);
                        }
                        Event::SequenceComplete { source, .. } => {
                            summary.completed += 1;
                            assert!(length > 0);
                            assert_eq!(source, canonical_ip(p.source));
                        }
                        Event::Rejected { source, .. } => {
                            assert_eq!(source, canonical_ip(p.source));
                        }
                        Event::PayloadMissing { client, .. } => {
                            assert!(length > 0 && mode != PayloadMode::None && client.0 < 2);
                        }
                    }
                }
            }
        }
    }
    assert_eq!(tracker.stats().grants, summary.grants);
    assert_eq!(tracker.stats().sequences_completed, summary.completed);
    summary
}

/// One frame record of the `frame_tracker` input format.
pub fn frame(packet: &[u8]) -> Vec<u8> {
    let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
    let mut out = vec![0x00];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&packet[..usize::from(len)]);
    out
}

/// A UDP datagram or a TCP SYN from `src` to `dst:port`, as the capture delivers it.
pub fn ip_packet(src: IpAddr, proto: Proto, port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = match src {
        IpAddr::V4(s) => PacketBuilder::ipv4(s.octets(), [192, 0, 2, 1], 64),
        IpAddr::V6(s) => PacketBuilder::ipv6(
            s.octets(),
            Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1).octets(),
            64,
        ),
    };
    let mut out = Vec::new();
    let written = match proto {
        Proto::Udp => builder.udp(40000, port).write(&mut out, payload),
        Proto::Tcp => builder
            .tcp(40001, port, 0x1234_5678, 64240)
            .syn()
            .write(&mut out, &[]),
    };
    if let Err(e) = written {
        panic!("building a packet: {e}");
    }
    out
}

/// Seeds for `frame_tracker`: for every mode (and single-packet mode), the fixed clients'
/// real knocks (UDP datagrams and TCP SYNs built with etherparse) and payload datagrams, from
/// IPv4 and IPv6, in and out of order, plus noise (a SYN-ACK, a fragment, garbage, an
/// out-of-range port) and clock moves. Each returns the input bytes.
pub fn frame_tracker_seeds() -> Vec<Vec<u8>> {
    let server = server_key().public_key();
    let counter = T0.counter(STEP);
    let mut seeds = Vec::new();
    for sel in [0u8, 1, 2, 4] {
        let config = frame_config(sel);
        let mut input = vec![sel];
        for (i, src) in [
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        ]
        .into_iter()
        .enumerate()
        {
            let keys = match ClientKeys::for_client(&client(i), &server, None) {
                Ok(k) => k,
                Err(e) => panic!("fixed keys: {e}"),
            };
            let seq = match derive_sequence(&keys, &config.params, counter) {
                Ok(s) => s,
                Err(e) => panic!("sequence: {e}"),
            };
            let mut order: Vec<usize> = (0..seq.knocks.len()).collect();
            if i == 1 {
                order.reverse();
            }
            for k in order {
                let knock = seq.knocks[k];
                input.extend(frame(&ip_packet(src, knock.proto, knock.port, &[])));
            }
            if config.payload != PayloadMode::None || config.params.length == 0 {
                let request = Request {
                    timestamp: T0.plus_millis(100 * i as u64 + 1),
                    random: [i as u8; 16],
                    services: vec![Service::new(Proto::Tcp, 22)],
                    address: None,
                    action: None,
                    flags: 0,
                };
                let eph = PrivateKey::from_bytes([0x33 + i as u8; 32]);
                let noise = WireNoise::from_random(&[0x5c + i as u8; 64]);
                match build_payload(&keys, counter, &request, &eph, &noise) {
                    Ok(d) => input.extend(frame(&ip_packet(src, Proto::Udp, seq.payload_port, &d))),
                    Err(e) => panic!("payload: {e}"),
                }
            }
            input.extend([0xF4]);
        }
        // Noise: a SYN-ACK, an out-of-range port, a truncated header, an IPv4 fragment.
        let noise_src = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
        let mut synack = ip_packet(noise_src, Proto::Tcp, 12345, &[]);
        if let Some(flags) = synack.get_mut(20 + 13) {
            *flags |= 0x10;
        }
        input.extend(frame(&synack));
        input.extend(frame(&ip_packet(noise_src, Proto::Udp, 22, b"x")));
        input.extend(frame(
            &ip_packet(noise_src, Proto::Udp, 15000, b"hello")[..30],
        ));
        let mut fragment = ip_packet(noise_src, Proto::Udp, 15001, &[0; 184]);
        if let Some(b) = fragment.get_mut(6) {
            *b |= 0x20; // more fragments
        }
        input.extend(frame(&fragment));
        input.extend([
            control::WAIT_MS,
            0x13,
            0x88,
            control::NEXT_STEP,
            control::ADVANCE,
        ]);
        seeds.push(input);
    }
    seeds
}

/// `Config::parse` on UTF-8 text, as `/etc/sesame/sesamed.toml`.
///
/// Invariants: no panic; an error renders as one line without control characters (no `\n`, `\r`,
/// ESC, ...), also with the file name in front; an accepted configuration is consistent (every
/// client's `allow` is inside `firewall.protect`, no protected port is in the knock range, names
/// are unique) and every client's exported profile parses back with the same knock parameters,
/// mode and services.
pub fn config_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(DEFAULT_CONFIG);
    match Config::parse(text, path) {
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.chars().any(char::is_control), "{msg:?}");
            let full = ConfigFileError {
                path: path.to_path_buf(),
                error: e,
            }
            .to_string();
            assert!(!full.chars().any(char::is_control), "{full:?}");
        }
        Ok(config) => {
            let protect = &config.firewall.protect;
            assert!(!protect.is_empty());
            assert!(
                protect
                    .iter()
                    .all(|s| !config.knock.params.in_range(s.port))
            );
            assert!(config.knock.skew_steps <= 10);
            assert!((1..=600_000).contains(&config.knock.timeout_ms));
            for (i, a) in config.actions.iter().enumerate() {
                assert!(config.actions[..i].iter().all(|o| o.name != a.name));
                assert!(
                    sesame_proto::wire::is_action_name(a.name.as_bytes()),
                    "{a:?}"
                );
                assert!(
                    a.command.first().is_some_and(|p| p.starts_with('/')),
                    "{a:?}"
                );
                assert!(a.user != "root" || a.allow_root, "{a:?}");
                assert!((1..=64).contains(&a.max_concurrent), "{a:?}");
                // The rule reads back as itself.
                let rule = a.argument.to_string();
                assert_eq!(
                    sesame_proto::action::ArgumentRule::parse(&rule).as_ref(),
                    Ok(&a.argument)
                );
            }
            for c in &config.clients {
                assert!(
                    c.actions.iter().all(|n| config.action(n).is_some()),
                    "{c:?}"
                );
            }
            let server = server_key().public_key();
            for (i, c) in config.clients.iter().enumerate() {
                assert!(c.allow.iter().all(|s| protect.contains(s)), "{c:?}");
                assert!(config.clients[..i].iter().all(|o| o.name != c.name));
                let Some(text) = config.export_profile(&c.name, "vpn.example.org", server) else {
                    panic!("no profile for client {}", c.name);
                };
                match sesame_proto::Profile::parse(&text) {
                    Ok(p) => {
                        assert_eq!(p.params, config.knock.params);
                        assert_eq!(p.payload, config.knock.payload);
                        assert_eq!(p.lease, config.firewall.lease);
                        assert_eq!(p.open[..], c.allow[..c.allow.len().min(p.open.len())]);
                    }
                    Err(e) => panic!("exported profile of {} does not parse: {e}\n{text}", c.name),
                }
            }
        }
    }
}

/// `metrics_request`: any bytes as the request head of the metrics endpoint. The answer is
/// always one well-formed HTTP/1.1 response whose `Content-Length` is its body's length, and
/// nothing of the request ever appears in it.
pub fn metrics_request(data: &[u8]) {
    use sesame_server::metrics::{Request, parse_request, respond};
    const BODY: &str = "sesamed_grants_total 1\n";
    let request = parse_request(data);
    let answer = respond(request, || BODY.to_owned());
    let text = std::str::from_utf8(&answer).expect("the answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse()
        .expect("a number");
    match request {
        Request::Metrics { head_only: true } => assert!(body.is_empty()),
        _ => assert_eq!(length, body.len()),
    }
    if matches!(request, Request::Metrics { head_only: false }) {
        assert_eq!(body, BODY);
    }
}

/// `action_protocol`: any bytes as a line between the daemon and the action runner (both
/// directions). A line either side accepts is exactly what that side would write for what it
/// parsed, and writing it again parses to the same thing; `sanitize` always gives printable
/// ASCII within its limit.
pub fn action_protocol(data: &[u8]) {
    use sesame_server::action::protocol::{FromRunner, MAX_TEXT, ToRunner, sanitize};
    let text = String::from_utf8_lossy(data);
    if let Ok(req) = ToRunner::parse(&text) {
        assert_eq!(req.to_line(), text, "{req:?}");
        assert_eq!(ToRunner::parse(&req.to_line()), Ok(req));
    }
    if let Ok(msg) = FromRunner::parse(&text) {
        assert_eq!(msg.to_line(), text, "{msg:?}");
        assert_eq!(FromRunner::parse(&msg.to_line()), Ok(msg));
    }
    let clean = sanitize(&text, MAX_TEXT);
    assert!(clean.len() <= MAX_TEXT);
    assert!(
        clean.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "{clean:?}"
    );
    assert_eq!(clean.trim(), clean);
}
