//! Tests that pin what a mutation run of this crate (`scripts/mutants --crate proto`,
//! docs/TESTING.md) found unpinned outside the tracker (whose pins are in
//! `src/tracker/pins/`): each is named for the behaviour it pins.

// Test helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

use sesame_keys::PrivateKey;
use sesame_proto::action::{ArgumentRule, ArgumentRuleError};
use sesame_proto::knock::{KnockError, Packet, PacketKind};
use sesame_proto::params::{KnockParams, KnockProtocol, PayloadMode};
use sesame_proto::stun::{StunError, parse_binding_response};
use sesame_proto::wire::{BuildError, MAX_SERVICES};
use sesame_proto::{
    ClientKeys, KnockRequest, Proto, Service, ServiceParseError, UnixMillis, plan_knock,
};
use std::collections::BTreeSet;

/// `sesame --dry-run` prints each packet it would send as one aligned line: what it is, the
/// protocol, the destination, and the datagram's size (a TCP knock is a SYN).
#[test]
fn a_packet_prints_as_one_aligned_line() {
    let knock = Packet {
        kind: PacketKind::Knock { index: 2, of: 3 },
        proto: Proto::Tcp,
        dest: "198.18.0.1:10022".parse().unwrap(),
        data: Vec::new(),
    };
    assert_eq!(
        knock.to_string(),
        "knock 2/3   tcp 198.18.0.1:10022         SYN"
    );
    let payload = Packet {
        kind: PacketKind::Payload,
        proto: Proto::Udp,
        dest: "[2001:db8::1]:31000".parse().unwrap(),
        data: vec![0; 136],
    };
    assert_eq!(
        payload.to_string(),
        "payload     udp [2001:db8::1]:31000      136 bytes"
    );
}

fn client_keys() -> ClientKeys {
    let client = PrivateKey::from_bytes([1; 32]);
    let server = PrivateKey::from_bytes([2; 32]);
    ClientKeys::for_client(&client, &server.public_key(), None).unwrap()
}

/// Random-looking bytes from a seed (xorshift64): deterministic, and every byte value comes.
fn xorshift(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    move |buf: &mut [u8]| {
        for b in buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
}

/// The sizes of the UDP knocks' bodies (not the payload's) of one knock of 3, drawn by `rng`.
fn knock_body_sizes(rng: &mut dyn FnMut(&mut [u8])) -> Vec<usize> {
    let keys = client_keys();
    let params = KnockParams::new(30, 3, (10000, 20000), &[], KnockProtocol::Udp).unwrap();
    let req = KnockRequest {
        params: &params,
        payload: PayloadMode::None,
        keys: &keys,
        target: "198.18.0.1".parse().unwrap(),
        now: UnixMillis(1_764_000_000_000),
        services: vec![],
        address: None,
        action: None,
    };
    let plan = plan_knock(&req, rng).unwrap();
    assert_eq!(plan.packets.len(), 3);
    plan.packets.iter().map(|p| p.data.len()).collect()
}

/// A knock's UDP bodies are 8 to 120 bytes, each size as likely as any other: over many knocks
/// the sizes of the knocks themselves (not only the payload's) vary across the range.
#[test]
fn knock_bodies_take_sizes_across_the_whole_range() {
    let mut sizes = BTreeSet::new();
    for seed in 0..40 {
        sizes.extend(knock_body_sizes(&mut xorshift(seed)));
    }
    assert!(sizes.iter().all(|n| (8..=120).contains(n)), "{sizes:?}");
    assert!(sizes.len() > 40, "{sizes:?}");
    assert!(
        *sizes.first().unwrap() < 20 && *sizes.last().unwrap() > 108,
        "{sizes:?}"
    );
}

/// The size is drawn from one random byte by rejection: 113 sizes, so a byte of 226 or more
/// (the part of 0..=255 above the largest multiple of 113) is drawn again instead of making the
/// smallest sizes likelier; a byte below it gives 8 + byte % 113.
#[test]
fn a_knock_size_byte_above_the_last_whole_multiple_is_drawn_again() {
    // Size bytes in the order they are asked for; the bodies themselves get 0xAA.
    let mut size_bytes = vec![230u8, 5, 225, 255, 226, 7].into_iter();
    let mut rng = |buf: &mut [u8]| {
        if buf.len() == 1 {
            buf[0] = size_bytes.next().expect("more size bytes than scripted");
        } else {
            buf.fill(0xAA);
        }
    };
    // 230 redrawn -> 5: 13 bytes; 225 (below 226): 8 + 225 % 113 = 120; 255 and 226 redrawn
    // -> 7: 15.
    assert_eq!(knock_body_sizes(&mut rng), vec![13, 120, 15]);
}

/// A knock's packets are numbered from 1, and it carries up to MAX_SERVICES services (8); one
/// more is refused before anything is derived or drawn.
#[test]
fn a_knock_numbers_its_packets_from_one_and_carries_up_to_max_services() {
    let keys = client_keys();
    let params = KnockParams::new(30, 3, (10000, 20000), &[], KnockProtocol::Udp).unwrap();
    let services =
        |n: u16| -> Vec<Service> { (0..n).map(|i| Service::new(Proto::Tcp, 22 + i)).collect() };
    let mut rng = xorshift(7);
    let mut req = KnockRequest {
        params: &params,
        payload: PayloadMode::Required,
        keys: &keys,
        target: "198.18.0.1".parse().unwrap(),
        now: UnixMillis(1_764_000_000_000),
        services: services(MAX_SERVICES as u16),
        address: None,
        action: None,
    };
    let plan = plan_knock(&req, &mut rng).unwrap();
    // The knocks are numbered from 1 (as `sesame --dry-run` prints them), then the payload.
    let kinds: Vec<PacketKind> = plan.packets.iter().map(|p| p.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            PacketKind::Knock { index: 1, of: 3 },
            PacketKind::Knock { index: 2, of: 3 },
            PacketKind::Knock { index: 3, of: 3 },
            PacketKind::Payload,
        ]
    );
    req.services = services(MAX_SERVICES as u16 + 1);
    assert_eq!(
        plan_knock(&req, &mut rng).unwrap_err(),
        KnockError::Build(BuildError::TooManyServices(MAX_SERVICES + 1))
    );
}

/// A service's port is one to five digits: `tcp/00022` is port 22, but six digits are refused
/// even when they are leading zeros of a valid port (and an empty port is refused too).
#[test]
fn a_service_port_has_at_most_five_digits() {
    let s: Service = "tcp/00022".parse().unwrap();
    assert_eq!(s, Service::new(Proto::Tcp, 22));
    for bad in ["tcp/000022", "udp/0065535", "tcp/"] {
        assert!(
            matches!(bad.parse::<Service>(), Err(ServiceParseError::Port(_))),
            "{bad}"
        );
    }
}

/// A STUN Binding error response (0x0111) with one ERROR-CODE attribute whose value is `value`.
fn stun_error_response(id: &[u8; 12], value: &[u8]) -> Vec<u8> {
    let padded = value.len().div_ceil(4) * 4;
    let mut m = Vec::new();
    m.extend_from_slice(&0x0111u16.to_be_bytes());
    m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
    m.extend_from_slice(id);
    m.extend_from_slice(&0x0009u16.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(value);
    m.resize(m.len() + padded - value.len(), 0);
    m
}

/// A STUN server's error is reported with its code: the class (the low 3 bits of the third
/// byte) times 100 plus the number (the fourth byte), the bits above the class ignored; an
/// ERROR-CODE too short to hold a code reports 0.
#[test]
fn a_stun_error_response_reports_its_error_code() {
    let id = [7u8; 12];
    let parse = |value: &[u8]| parse_binding_response(&stun_error_response(&id, value), &id);
    // 420 Unknown Attribute, with its reason phrase.
    let mut v = vec![0, 0, 4, 20];
    v.extend_from_slice(b"Unknown Attribute");
    assert_eq!(parse(&v), Err(StunError::ErrorResponse(420)));
    // 300 Try Alternate, with reserved bits set above the class.
    assert_eq!(
        parse(&[0xff, 0xff, 0xf8 | 3, 0]),
        Err(StunError::ErrorResponse(300))
    );
    assert_eq!(parse(&[0, 0, 6, 99]), Err(StunError::ErrorResponse(699)));
    assert_eq!(parse(&[0, 4, 20]), Err(StunError::ErrorResponse(0)));
}

/// An argument pattern's counts are one to six digits, leading zeros allowed (`{000001,32}` is
/// `{1,32}`); seven digits are not a count, whatever their value.
#[test]
fn an_argument_patterns_counts_have_at_most_six_digits() {
    let rule = ArgumentRule::parse("^[a-z]{000001,000032}$").unwrap();
    assert!(rule.allows("a") && rule.allows(&"z".repeat(32)));
    assert!(!rule.allows("") && !rule.allows("A"));
    for bad in ["^[a-z]{0000001,32}$", "^[a-z]{1,0000032}$"] {
        assert!(
            matches!(ArgumentRule::parse(bad), Err(ArgumentRuleError::Form(_))),
            "{bad}"
        );
    }
}

/// A range in an argument pattern's class may start and end at the same character (`a-a` is
/// `a`); only one that runs backwards is refused.
#[test]
fn an_argument_class_range_may_be_one_character() {
    let rule = ArgumentRule::parse("^[a-a0-9]{1,4}$").unwrap();
    assert!(rule.allows("a0") && !rule.allows("b"));
    assert!(matches!(
        ArgumentRule::parse("^[b-a]{1,4}$"),
        Err(ArgumentRuleError::Range {
            lo: 'b',
            hi: 'a',
            ..
        })
    ));
}
