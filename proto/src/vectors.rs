//! Generates the test vectors in `proto/tests/vectors/`.
//!
//! `cargo test -p sesame-proto vectors` checks that the files on disk are exactly what this
//! code generates; `SESAME_REGEN_VECTORS=1 cargo test -p sesame-proto vectors` rewrites them.
//! The files are then checked independently, through the public API only, by
//! `proto/tests/vectors.rs`, and by the Python reference implementation.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Value, json};
use sesame_keys::{PresharedKey, PrivateKey};

use crate::action::ArgumentRule;
use crate::params::{KnockParams, KnockProtocol};
use crate::payload::{
    Action, DATAGRAM_LEN, MAX_PADDING, PLAINTEXT_LEN, Request, WireNoise, build_payload,
    encode_plaintext, remac, seal,
};
use crate::sequence::{PortTrace, derive_sequence_traced};
use crate::{ClientKeys, Proto, Service, UnixMillis};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A deterministic key from a seed byte (the vectors must not depend on a random generator).
fn key(seed: u8) -> PrivateKey {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = seed
            .wrapping_mul(31)
            .wrapping_add((i as u8).wrapping_mul(7))
            ^ 0x5a;
    }
    PrivateKey::from_bytes(bytes)
}

fn psk(seed: u8) -> PresharedKey {
    PresharedKey::from_bytes([seed; 32])
}

struct Case {
    name: &'static str,
    client: PrivateKey,
    server: PrivateKey,
    psk: Option<PresharedKey>,
}

impl Case {
    fn keys_json(&self) -> Value {
        json!({
            "client_private": &*self.client.to_base64(),
            "client_public": self.client.public_key().to_base64(),
            "server_private": &*self.server.to_base64(),
            "server_public": self.server.public_key().to_base64(),
            "psk": self.psk.as_ref().map(|p| p.to_base64().to_string()),
        })
    }

    fn client_keys(&self) -> ClientKeys {
        ClientKeys::for_client(&self.client, &self.server.public_key(), self.psk.as_ref()).unwrap()
    }
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut a, b) {
        a.extend(b);
    }
    a
}

/// A sequence vector: keys, time, step, length, range, exclusions, protocol.
type SeqCase = (Case, u64, u32, u8, (u16, u16), Vec<u16>, KnockProtocol);

/// A named change to a valid plaintext.
type Tweak = (&'static str, Box<dyn Fn(&mut [u8; PLAINTEXT_LEN])>);

fn sequences() -> Value {
    let cases: Vec<SeqCase> = vec![
        (
            Case {
                name: "default-udp",
                client: key(1),
                server: key(2),
                psk: None,
            },
            1_764_000_000_123,
            30,
            3,
            (10000, 32767),
            vec![],
            KnockProtocol::Udp,
        ),
        (
            Case {
                name: "psk-tcp",
                client: key(3),
                server: key(2),
                psk: Some(psk(0x42)),
            },
            1_764_000_029_999,
            30,
            4,
            (1024, 65535),
            vec![],
            KnockProtocol::Tcp,
        ),
        (
            Case {
                name: "mixed-long",
                client: key(4),
                server: key(5),
                psk: None,
            },
            1_900_000_000_000,
            60,
            16,
            (40000, 40999),
            vec![40001, 40500, 40999, 22],
            KnockProtocol::Mixed,
        ),
        (
            Case {
                name: "single-packet",
                client: key(6),
                server: key(5),
                psk: Some(psk(7)),
            },
            0,
            1,
            0,
            (1, 65535),
            vec![22, 443],
            KnockProtocol::Udp,
        ),
        (
            // A tiny range with exclusions: rejection of excluded and already used ports is
            // exercised on almost every position.
            Case {
                name: "tiny-range",
                client: key(8),
                server: key(9),
                psk: None,
            },
            1_764_000_000_000,
            30,
            3,
            (50000, 50009),
            vec![50002, 50003],
            KnockProtocol::Mixed,
        ),
        (
            // n = 32769 is the worst case for rejection sampling with 32-bit candidates.
            Case {
                name: "odd-range",
                client: key(10),
                server: key(11),
                psk: None,
            },
            4_102_444_800_000,
            86400,
            5,
            (32767, 65535),
            vec![],
            KnockProtocol::Udp,
        ),
    ];
    // Cases chosen (with the Python reference) so that rejection sampling takes every branch:
    // a port accepted at the 8th candidate of a block, a position that needs a second block,
    // and a candidate rejected by `v >= limit` (n = 65175 rejects about 1 draw in 5,000).
    let at = |counter: u64, step: u32| counter * u64::from(step) * 1000 + 1234;
    let cases = cases.into_iter().chain([
        (
            Case {
                name: "candidate-8",
                client: key(8),
                server: key(9),
                psk: None,
            },
            at(58_800_033, 30),
            30,
            16,
            (50000, 50035),
            vec![],
            KnockProtocol::Mixed,
        ),
        (
            Case {
                name: "second-block",
                client: key(8),
                server: key(9),
                psk: None,
            },
            at(58_800_019, 30),
            30,
            16,
            (50000, 50035),
            vec![],
            KnockProtocol::Mixed,
        ),
        (
            Case {
                name: "limit-rejection",
                client: key(10),
                server: key(11),
                psk: None,
            },
            at(61_556, 86400),
            86400,
            16,
            (100, 65274),
            vec![],
            KnockProtocol::Udp,
        ),
    ]);
    let mut trace = PortTrace::default();
    let mut out = Vec::new();
    for (case, now_ms, step, length, range, excl, protocol) in cases {
        let params = KnockParams::new(
            step,
            u64::from(length),
            (u64::from(range.0), u64::from(range.1)),
            &excl,
            protocol,
        )
        .unwrap();
        let now = UnixMillis(now_ms);
        let counter = now.counter(step);
        let seq =
            derive_sequence_traced(&case.client_keys(), &params, counter, &mut trace).unwrap();
        out.push(merge(
            json!({ "name": case.name }),
            merge(
                case.keys_json(),
                json!({
                    "unix_time_ms": now_ms,
                    "params": {
                        "step_seconds": step,
                        "length": length,
                        "port_range": [range.0, range.1],
                        "exclude_ports": excl,
                        "protocol": protocol.as_str(),
                    },
                    "counter": counter,
                    "knocks": seq.knocks.iter().map(|k| json!({
                        "proto": k.proto.as_str(), "port": k.port
                    })).collect::<Vec<_>>(),
                    "payload_port": seq.payload_port,
                }),
            ),
        ));
    }
    assert_eq!(
        trace.max_candidate, 7,
        "no vector accepts the 8th candidate: {trace:?}"
    );
    assert!(
        trace.max_block >= 1,
        "no vector needs a second block: {trace:?}"
    );
    assert!(
        trace.limit_rejections >= 1,
        "no vector rejects v >= limit: {trace:?}"
    );
    assert!(
        trace.port_rejections >= 1,
        "no vector skips a used or excluded port: {trace:?}"
    );
    json!({
        "description": "Port sequences: keys, PSK, time and parameters give the counter, the knocks and the payload port (PROTOCOL.md sections 3-5).",
        "vectors": out,
    })
}

fn request_json(r: &Request) -> Value {
    json!({
        "timestamp_ms": r.timestamp.0,
        "random": hex(&r.random),
        "services": r.services.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "address": r.address.map(|a| a.to_string()),
        "action": r.action.as_ref().map(|a| json!({"name": a.name, "argument": a.argument})),
        "flags": r.flags,
    })
}

struct PayloadCase {
    case: Case,
    eph: PrivateKey,
    step: u32,
    skew: u32,
    request: Request,
    noise: WireNoise,
}

fn payload_cases() -> Vec<PayloadCase> {
    let svc = |p, port| Service::new(p, port);
    vec![
        PayloadCase {
            case: Case {
                name: "ssh-from-source",
                client: key(1),
                server: key(2),
                psk: None,
            },
            eph: key(100),
            step: 30,
            skew: 1,
            request: Request {
                timestamp: UnixMillis(1_764_000_000_123),
                random: [0xa5; 16],
                services: vec![svc(Proto::Tcp, 22)],
                address: None,
                action: None,
                flags: 0,
            },
            noise: WireNoise::default(),
        },
        PayloadCase {
            case: Case {
                name: "psk-ipv4-two-services",
                client: key(3),
                server: key(2),
                psk: Some(psk(0x42)),
            },
            eph: key(101),
            step: 30,
            skew: 2,
            request: Request {
                timestamp: UnixMillis(1_764_000_029_999),
                random: *b"0123456789abcdef",
                services: vec![svc(Proto::Tcp, 22), svc(Proto::Udp, 51820)],
                address: Some("198.18.0.2".parse::<IpAddr>().unwrap()),
                action: None,
                flags: 0,
            },
            noise: WireNoise {
                high_bit: true,
                padding: Vec::new(),
            },
        },
        PayloadCase {
            case: Case {
                name: "ipv6-all-allowed",
                client: key(4),
                server: key(5),
                psk: None,
            },
            eph: key(102),
            step: 60,
            skew: 0,
            request: Request {
                timestamp: UnixMillis(1_900_000_000_000),
                random: [0; 16],
                services: vec![],
                address: Some("2001:db8::1:2".parse::<IpAddr>().unwrap()),
                action: None,
                flags: 0,
            },
            noise: WireNoise {
                high_bit: false,
                padding: (0..13).map(|i| i * 19).collect(),
            },
        },
        PayloadCase {
            case: Case {
                name: "eight-services",
                client: key(6),
                server: key(5),
                psk: Some(psk(7)),
            },
            eph: key(103),
            step: 1,
            skew: 5,
            request: Request {
                timestamp: UnixMillis(4_102_444_800_999),
                random: [0xff; 16],
                services: (0..8)
                    .map(|i| svc(if i % 2 == 0 { Proto::Tcp } else { Proto::Udp }, 1000 + i))
                    .collect(),
                address: Some("198.19.255.254".parse::<IpAddr>().unwrap()),
                action: None,
                flags: 0,
            },
            noise: WireNoise {
                high_bit: true,
                padding: vec![0xee; MAX_PADDING],
            },
        },
        PayloadCase {
            case: Case {
                name: "action-with-argument",
                client: key(8),
                server: key(2),
                psk: None,
            },
            eph: key(104),
            step: 30,
            skew: 1,
            request: Request {
                timestamp: UnixMillis(1_764_000_045_000),
                random: [0x3c; 16],
                services: vec![],
                address: Some("198.18.7.9".parse::<IpAddr>().unwrap()),
                action: Some(Action::new("wake-host_2", "aa:bb:cc:dd:ee:ff").unwrap()),
                flags: 0,
            },
            noise: WireNoise {
                high_bit: false,
                padding: vec![1],
            },
        },
        PayloadCase {
            case: Case {
                name: "action-longest",
                client: key(8),
                server: key(2),
                psk: Some(psk(0x11)),
            },
            eph: key(105),
            step: 30,
            skew: 1,
            request: Request {
                timestamp: UnixMillis(1_764_000_046_000),
                random: [0x5a; 16],
                services: vec![svc(Proto::Tcp, 22)],
                address: None,
                action: Some(
                    Action::new("restart-vpn-0123", "!\"#$%&'()*+,-./0123456789:;<=>?@").unwrap(),
                ),
                flags: 0,
            },
            noise: WireNoise::default(),
        },
        PayloadCase {
            case: Case {
                name: "action-no-argument-and-services",
                client: key(9),
                server: key(2),
                psk: None,
            },
            eph: key(106),
            step: 30,
            skew: 1,
            request: Request {
                timestamp: UnixMillis(1_764_000_047_000),
                random: [0x77; 16],
                services: vec![svc(Proto::Tcp, 22), svc(Proto::Udp, 51820)],
                address: Some("2001:db8::7".parse::<IpAddr>().unwrap()),
                action: Some(Action::new("restart-vpn", "").unwrap()),
                flags: 0,
            },
            noise: WireNoise {
                high_bit: true,
                padding: vec![0x42; 3],
            },
        },
    ]
}

fn payload_case_json(p: &PayloadCase, counter: u64, now_ms: u64) -> Value {
    merge(
        json!({ "name": p.case.name }),
        merge(
            p.case.keys_json(),
            json!({
                "ephemeral_private": &*p.eph.to_base64(),
                "step_seconds": p.step,
                "skew_steps": p.skew,
                "now_ms": now_ms,
                "counter": counter,
            }),
        ),
    )
}

fn payloads() -> Value {
    let mut out = Vec::new();
    for p in payload_cases() {
        let counter = p.request.timestamp.counter(p.step);
        let dgram =
            build_payload(&p.case.client_keys(), counter, &p.request, &p.eph, &p.noise).unwrap();
        let pt = encode_plaintext(&p.request).unwrap();
        // The server receives it 250 ms after it was built.
        let now_ms = p.request.timestamp.0 + 250;
        out.push(merge(
            payload_case_json(&p, counter, now_ms),
            json!({
                "e_high_bit": p.noise.high_bit,
                "padding": hex(&p.noise.padding),
                "request": request_json(&p.request),
                "plaintext": hex(&pt),
                "datagram": hex(&dgram),
            }),
        ));
    }
    json!({
        "description": "Payload datagrams: keys, PSK, ephemeral key, the high bit of E, padding, counter and request give the exact datagram of 184 bytes plus the padding (PROTOCOL.md section 6). Opening it at now_ms with the window (step_seconds, skew_steps) gives the request back.",
        "vectors": out,
    })
}

fn fail_payloads() -> Value {
    let mut out = Vec::new();
    let cases = payload_cases();
    let base = &cases[0];
    let base2 = &cases[1];
    let counter = base.request.timestamp.counter(base.step);
    let now_ms = base.request.timestamp.0 + 250;
    let keys = base.case.client_keys();
    let good: [u8; DATAGRAM_LEN] = build_payload(
        &keys,
        counter,
        &base.request,
        &base.eph,
        &WireNoise::default(),
    )
    .unwrap()
    .try_into()
    .unwrap();
    let mut push = |name: &str,
                    why: &str,
                    case: &PayloadCase,
                    counter: u64,
                    now_ms: u64,
                    d: &[u8],
                    reason: &str| {
        out.push(merge(
            payload_case_json(case, counter, now_ms),
            json!({ "name": name, "why": why, "datagram": hex(d), "reason": reason }),
        ));
    };

    push(
        "truncated",
        "183 bytes",
        base,
        counter,
        now_ms,
        &good[..DATAGRAM_LEN - 1],
        "truncated",
    );
    let mut long = good.to_vec();
    long.extend_from_slice(&[0; MAX_PADDING + 1]);
    push(
        "too-long",
        "241 bytes (57 bytes of padding)",
        base,
        counter,
        now_ms,
        &long,
        "too_long",
    );
    push(
        "stale",
        "opened two steps (60 s) after the step it was built for, window +-1",
        base,
        counter,
        now_ms + 60_000,
        &good,
        "stale",
    );
    push(
        "future",
        "opened two steps before the step it was built for",
        base,
        counter,
        now_ms - 60_000,
        &good,
        "stale",
    );
    for (i, byte) in [0usize, 40, 110, 170].into_iter().enumerate() {
        let mut d = good;
        d[byte] ^= 0x01 << i;
        push(
            "bit-flip",
            "one bit flipped",
            base,
            counter,
            now_ms,
            &d,
            "bad_mac",
        );
    }
    {
        let mut d = good;
        d[31] ^= 0x80;
        push(
            "high-bit-flip",
            "the most significant bit of E flipped (X25519 ignores it, the MAC does not)",
            base,
            counter,
            now_ms,
            &d,
            "bad_mac",
        );
    }
    push(
        "wrong-counter",
        "a valid datagram tried with the next counter",
        base,
        counter + 1,
        now_ms,
        &good,
        "bad_mac",
    );
    // Built with the PSK but the opener has none: the vector lists the opener's keys.
    {
        let with_psk = Case {
            name: "",
            client: key(1),
            server: key(2),
            psk: Some(psk(9)),
        };
        let d = build_payload(
            &with_psk.client_keys(),
            counter,
            &base.request,
            &base.eph,
            &WireNoise::default(),
        )
        .unwrap();
        push(
            "wrong-psk",
            "built with a PSK the server does not have",
            base,
            counter,
            now_ms,
            &d,
            "bad_mac",
        );
    }
    {
        let other = Case {
            name: "",
            client: key(77),
            server: key(2),
            psk: None,
        };
        let d = build_payload(
            &other.client_keys(),
            counter,
            &base.request,
            &base.eph,
            &WireNoise::default(),
        )
        .unwrap();
        push(
            "other-client",
            "built by another client of the same server",
            base,
            counter,
            now_ms,
            &d,
            "bad_mac",
        );
    }
    {
        let mut d = good;
        d[50] ^= 0x80;
        remac(&keys, counter, &mut d);
        push(
            "bad-aead",
            "ciphertext changed and the MAC recomputed",
            base,
            counter,
            now_ms,
            &d,
            "bad_aead",
        );
    }
    {
        let mut d = good;
        d[..32].fill(0);
        remac(&keys, counter, &mut d);
        push(
            "low-order-ephemeral",
            "E = 0 (low-order point), MAC recomputed",
            base,
            counter,
            now_ms,
            &d,
            "bad_ephemeral",
        );
    }
    {
        let mut pt = encode_plaintext(&base.request).unwrap();
        pt[0] = 1;
        let d = seal(&keys, counter, &pt, &base.eph, false).unwrap();
        push(
            "bad-version",
            "plaintext version 1",
            base,
            counter,
            now_ms,
            &d,
            "bad_version",
        );
    }
    let malformed: Vec<Tweak> = vec![
        ("flags", Box::new(|pt| pt[1] = 0x01)),
        ("count", Box::new(|pt| pt[26] = 9)),
        ("unused-service", Box::new(|pt| pt[27 + 3 * 7 + 2] = 1)),
        ("service-proto", Box::new(|pt| pt[27] = 1)),
        (
            "service-port-zero",
            Box::new(|pt| {
                pt[28] = 0;
                pt[29] = 0;
            }),
        ),
        ("family", Box::new(|pt| pt[51] = 5)),
        ("address-without-family", Box::new(|pt| pt[60] = 1)),
        ("action-uppercase", Box::new(|pt| pt[68] = b'W')),
        (
            "action-after-nul",
            Box::new(|pt| {
                pt[68] = b'w';
                pt[70] = b'x';
            }),
        ),
        ("argument-without-action", Box::new(|pt| pt[84] = b'x')),
        (
            "argument-space",
            Box::new(|pt| {
                pt[68] = b'w';
                pt[84] = b' ';
            }),
        ),
        ("padding", Box::new(|pt| pt[119] = 1)),
    ];
    for (name, tweak) in malformed {
        let mut pt = encode_plaintext(&base.request).unwrap();
        tweak(&mut pt);
        let d = seal(&keys, counter, &pt, &base.eph, false).unwrap();
        let full = format!("malformed-{name}");
        push(
            &full,
            "a plaintext field out of range, properly encrypted",
            base,
            counter,
            now_ms,
            &d,
            "malformed",
        );
    }
    {
        let keys2 = base2.case.client_keys();
        let counter2 = base2.request.timestamp.counter(base2.step);
        let mut pt = encode_plaintext(&base2.request).unwrap();
        pt[52 + 4] = 1;
        let d = seal(&keys2, counter2, &pt, &base2.eph, true).unwrap();
        push(
            "malformed-ipv4-address-padding",
            "family 4 with a non-zero byte after the 4 address bytes",
            base2,
            counter2,
            base2.request.timestamp.0 + 250,
            &d,
            "malformed",
        );
        let mut pt = encode_plaintext(&base2.request).unwrap();
        pt[0] = 7;
        pt[1] = 0x80;
        let d = seal(&keys2, counter2, &pt, &base2.eph, true).unwrap();
        push(
            "version-checked-first",
            "version 7 and an unknown flag: the version is checked first",
            base2,
            counter2,
            base2.request.timestamp.0 + 250,
            &d,
            "bad_version",
        );
    }
    {
        let mut req = base.request.clone();
        req.timestamp = req.timestamp.plus_millis(30_000);
        let d = build_payload(&keys, counter, &req, &base.eph, &WireNoise::default()).unwrap();
        push(
            "counter-mismatch",
            "timestamp one step after the counter it was built for",
            base,
            counter,
            now_ms,
            &d,
            "counter_mismatch",
        );
    }
    {
        let keys2 = base2.case.client_keys();
        let counter2 = base2.request.timestamp.counter(base2.step);
        let d = build_payload(
            &keys2,
            counter2,
            &base2.request,
            &base2.eph,
            &WireNoise::default(),
        )
        .unwrap();
        push(
            "stale-skew-2",
            "valid datagram opened 3 steps later with skew 2",
            base2,
            counter2,
            base2.request.timestamp.0 + 90_000,
            &d,
            "stale",
        );
    }
    json!({
        "description": "Payload datagrams that MUST be rejected, each with the reason code of the first failing check (PROTOCOL.md section 6.3). Keys are the opener's keys.",
        "vectors": out,
    })
}

fn fail_keys() -> Value {
    json!({
        "description": "Key texts that MUST be refused by a strict parser (PROTOCOL.md section 2.1), and low-order public keys for which X25519 MUST be refused.",
        "bad_text": [
            {"text": "", "why": "empty"},
            {"text": " hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=", "why": "leading whitespace"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm=", "why": "43 characters"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=A", "why": "45 characters"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmp=", "why": "non-zero trailing bits"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo=", "why": "URL-safe alphabet"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmoA", "why": "no padding: 33 bytes"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/ g0mOBr066SpjqqbTmo=", "why": "inner space"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066Spjqqb====", "why": "bad padding"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\u{0b}", "why": "trailing vertical tab (only space, TAB, LF, CR may follow)"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\u{a0}", "why": "trailing no-break space (only ASCII whitespace may follow)"},
            {"text": "\u{a0}hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=", "why": "leading no-break space"},
        ],
        "good_text": [
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=", "hex": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n", "hex": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"},
            {"text": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo= \t\r\n", "hex": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"},
        ],
        "low_order_public": [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ],
    })
}

/// The argument rules of `[[action]]` (PROTOCOL.md section 7.2): rule texts, whether they
/// parse, and arguments each accepts and refuses.
fn argument_rules() -> Value {
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("none", vec!["", "x", "-"]),
        (
            "^[0-9a-fA-F:]{17}$",
            vec![
                "00:1a:2B:3c:4d:5e",
                "00:1a:2B:3c:4d:5",
                "00:1a:2B:3c:4d:5e:",
                "00:1g:2b:3c:4d:5e",
                "",
                "-0:1a:2b:3c:4d:5e",
            ],
        ),
        (
            "^[a-z0-9-]{1,16}$",
            vec![
                "a",
                "web-1",
                "0123456789abcdef",
                "0123456789abcdefg",
                "-rf",
                "Web",
                "a_b",
                "",
            ],
        ),
        ("^[a-z]{3}$", vec!["abc", "ab", "abcd", "ABC"]),
        (
            r"^[\]\\\-\^a]{1,4}$",
            vec!["]", "\\", "-", "^", "a^]\\", "a-", "b", "[", ""],
        ),
        ("^[-.a]{1,3}$", vec!["a-.", "a", "-a", ".", "b"]),
        ("^[[]{1}$", vec!["[", "]"]),
        (
            "^[!-~]{1,32}$",
            vec![
                "!\"#$%&'()*+,./0123456789:;<=>?@",
                "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
                "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
                "a b",
                "-x",
                "é",
            ],
        ),
        // Refused rules.
        ("None", vec![]),
        ("", vec![]),
        ("[a-z]{1,2}", vec![]),
        ("^[a-z]{1,2}", vec![]),
        ("^[a-z]+$", vec![]),
        ("^[a-z]*$", vec![]),
        ("^[a-z]{,2}$", vec![]),
        ("^[a-z]{1,}$", vec![]),
        ("^[a-z]{1, 2}$", vec![]),
        ("^[a-z]$", vec![]),
        ("^[a-z]{1,2}$$", vec![]),
        ("^([a-z]){1,2}$", vec![]),
        ("^[^a]{1,2}$", vec![]),
        ("^[]{1,2}$", vec![]),
        ("^[a z]{1,2}$", vec![]),
        ("^[a\u{e9}]{1,2}$", vec![]),
        ("^[z-a]{1,2}$", vec![]),
        ("^[a]{0,2}$", vec![]),
        ("^[a]{3,2}$", vec![]),
        ("^[a]{1,33}$", vec![]),
        ("^[a]{33}$", vec![]),
    ];
    let mut out = Vec::new();
    for (text, args) in cases {
        match ArgumentRule::parse(text) {
            Ok(rule) => {
                let (allows, refuses): (Vec<&str>, Vec<&str>) =
                    args.into_iter().partition(|a| rule.allows(a));
                out.push(json!({
                    "rule": text,
                    "valid": true,
                    "allows": allows,
                    "refuses": refuses,
                }));
            }
            Err(_) => {
                assert!(args.is_empty(), "{text}");
                out.push(json!({ "rule": text, "valid": false }));
            }
        }
    }
    json!({
        "description": "Argument rules of server actions (PROTOCOL.md section 7.2): `rule` is the text of an [[action]] argument key; `valid` whether it is \"none\" or a pattern of the form ^[CLASS]{m,n}$ a server accepts; for a valid rule, the arguments (as the payload carries them; \"\" for none) it allows and refuses.",
        "rules": out,
    })
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[test]
fn vectors_on_disk_are_current() {
    let files = [
        ("sequences.json", sequences()),
        ("payloads.json", payloads()),
        ("fail_payloads.json", fail_payloads()),
        ("fail_keys.json", fail_keys()),
        ("argument_rules.json", argument_rules()),
    ];
    let regen = std::env::var_os("SESAME_REGEN_VECTORS").is_some();
    for (name, value) in files {
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        let path = vectors_dir().join(name);
        if regen {
            std::fs::create_dir_all(vectors_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else {
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (regenerate with SESAME_REGEN_VECTORS=1)",
                    path.display()
                )
            });
            assert!(
                on_disk == text,
                "{} differs from what the implementation generates; if the protocol changed on purpose, regenerate with SESAME_REGEN_VECTORS=1",
                path.display()
            );
        }
    }
}
