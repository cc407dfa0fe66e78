//! Micro-benchmarks of the protocol crate (issue "Performance"):
//! port derivation, the tracker on garbage / out-of-range / valid knocks with 10, 1 000 and
//! 100 000 clients, the step refresh, payload build and open, and the MAC gate alone.
//!
//! Run: `cargo bench -p sesame-proto --bench proto` (full), or with `-- --quick` for a smoke run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sesame_keys::PrivateKey;
use sesame_proto::derive::derive_sequence;
use sesame_proto::params::{KnockParams, KnockProtocol, PayloadMode};
use sesame_proto::time::TimeWindow;
use sesame_proto::tracker::{ClientEntry, Policy, StepTable};
use sesame_proto::wire::{Opener, Request, WireNoise, build_payload};
use sesame_proto::{ClientKeys, Incoming, Proto, Service, Tracker, TrackerConfig, UnixMillis};

const T0: UnixMillis = UnixMillis(1_764_000_000_000);

/// The client counts to measure; `SESAME_BENCH_SMOKE=1` (CI) keeps them small so a
/// `-- --test` run only proves the benchmarks still work.
fn sizes(full: &[u64]) -> Vec<u64> {
    if std::env::var_os("SESAME_BENCH_SMOKE").is_some() {
        full.iter().copied().filter(|n| *n <= 1_000).collect()
    } else {
        full.to_vec()
    }
}

fn params() -> KnockParams {
    KnockParams::new(30, 3, (10000, 32767), &[], KnockProtocol::Udp).unwrap()
}

fn client_key(i: u64) -> PrivateKey {
    let mut b = [7u8; 32];
    b[8..16].copy_from_slice(&i.to_le_bytes());
    PrivateKey::from_bytes(b)
}

fn server() -> PrivateKey {
    PrivateKey::from_bytes([0x42; 32])
}

/// Server-side entries for `n` clients (derived in parallel-free order; takes a while for
/// 100 000).
fn entries(n: u64) -> Vec<ClientEntry> {
    let s = server();
    (0..n)
        .map(|i| {
            // Deriving 100 000 X25519 public keys is the slow part of the setup, not of the
            // benchmark: use distinct public keys from an LCG instead of real key pairs.
            let mut pk = [0u8; 32];
            let mut x = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            for chunk in pk.chunks_mut(8) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            pk[31] &= 0x7f;
            let public = sesame_keys::PublicKey::from_bytes(pk);
            let keys = ClientKeys::for_server(&s, &public, None)
                .or_else(|_| ClientKeys::for_server(&s, &client_key(i).public_key(), None))
                .unwrap();
            ClientEntry {
                name: format!("c{i}"),
                keys,
                policy: Policy {
                    allow: vec![Service::new(Proto::Tcp, 22)],
                    ..Policy::default()
                },
            }
        })
        .collect()
}

fn tracker(n: u64) -> Tracker {
    let config = TrackerConfig {
        // The benchmark measures the work of valid knocks, not the per-client X25519 cap.
        x25519_per_second: u32::MAX,
        ..TrackerConfig::new(params(), 1, 5000, PayloadMode::Required)
    };
    Tracker::new(config, server(), entries(n), Vec::new(), T0).unwrap()
}

/// Random packets: sources from a pool of 65 536 (IPv4 and IPv6), ports in or out of range.
fn garbage(count: usize, in_range: bool, seed: u64) -> Vec<(IpAddr, u16)> {
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s = (x >> 16) as u16;
            let src = if x & 1 == 0 {
                IpAddr::V4(Ipv4Addr::new(198, 19, (s >> 8) as u8, s as u8))
            } else {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, s))
            };
            let port = if in_range {
                10000 + ((x >> 32) % 22768) as u16
            } else {
                1000 + ((x >> 32) % 8000) as u16
            };
            (src, port)
        })
        .collect()
}

fn bench_derivation(c: &mut Criterion) {
    let keys = ClientKeys::for_client(&client_key(1), &server().public_key(), None).unwrap();
    let p = params();
    let mut g = c.benchmark_group("derive");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sequence_length_3", |b| {
        let mut counter = 58_800_000u64;
        b.iter(|| {
            counter += 1;
            black_box(derive_sequence(&keys, &p, counter).unwrap())
        })
    });
    g.finish();
}

fn bench_tracker(c: &mut Criterion) {
    let mut g = c.benchmark_group("tracker");
    for n in sizes(&[10, 1_000, 100_000]) {
        let mut t = tracker(n);
        let mut events = Vec::new();
        let batch = garbage(1 << 16, true, n);
        g.throughput(Throughput::Elements(batch.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("in_range_garbage", n),
            &batch,
            |b, batch| {
                b.iter(|| {
                    for &(src, port) in batch {
                        t.packet(
                            T0,
                            Incoming {
                                source: src,
                                proto: Proto::Udp,
                                port,
                                payload: None,
                            },
                            &mut events,
                        );
                    }
                    events.clear();
                })
            },
        );
        let outside = garbage(1 << 16, false, n + 1);
        g.bench_with_input(BenchmarkId::new("out_of_range", n), &outside, |b, batch| {
            b.iter(|| {
                for &(src, port) in batch {
                    t.packet(
                        T0,
                        Incoming {
                            source: src,
                            proto: Proto::Udp,
                            port,
                            payload: None,
                        },
                        &mut events,
                    );
                }
                events.clear();
            })
        });
    }
    // A valid knock (3 knocks + payload) among 100 000 clients, payload build excluded.
    // Timestamps must rise and stay in the knock's step (30 000 ms from T0), and a client's
    // share of the gate-MAC cache (1 024, none expiring: `now` stays T0) must not fill up, so
    // each real client serves PER_CLIENT iterations and the next one takes over: REAL of them
    // cover far more iterations than criterion runs.
    const REAL: usize = 256;
    const PER_CLIENT: u64 = 1000;
    for n in sizes(&[10, 100_000]) {
        let s = server();
        // The generated entries have no private keys: make the first REAL ones real.
        let real: Vec<PrivateKey> = (0..REAL as u64).map(|r| client_key(999 - r)).collect();
        let mut list = entries(n.max(REAL as u64));
        for (i, k) in real.iter().enumerate() {
            list[i] = ClientEntry {
                name: format!("real{i}"),
                keys: ClientKeys::for_server(&s, &k.public_key(), None).unwrap(),
                policy: Policy {
                    allow: vec![Service::new(Proto::Tcp, 22)],
                    ..Policy::default()
                },
            };
        }
        // Every iteration is one knock of one of REAL clients, far above the per-client X25519
        // cap sesamed sets (which would refuse them as rate limited): this measures the work.
        let mut config = tracker(10).config().clone();
        config.x25519_per_second = u32::MAX;
        let mut t = Tracker::new(config, s.clone(), list, Vec::new(), T0).unwrap();
        let counter = T0.counter(30);
        let clients: Vec<_> = real
            .iter()
            .map(|k| {
                let keys = ClientKeys::for_client(k, &s.public_key(), None).unwrap();
                let seq = derive_sequence(&keys, &params(), counter).unwrap();
                (keys, seq)
            })
            .collect();
        let mut events = Vec::new();
        let (mut who, mut ts) = (0usize, T0.0);
        let mut src = 0u32;
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("valid_knock_with_payload", n), |b| {
            b.iter_batched(
                || {
                    ts += 1;
                    if ts > T0.0 + PER_CLIENT {
                        who += 1;
                        ts = T0.0 + 1;
                    }
                    assert!(who < REAL, "more iterations than {REAL} clients can serve");
                    let req = Request {
                        timestamp: UnixMillis(ts),
                        random: [1; 16],
                        services: vec![Service::new(Proto::Tcp, 22)],
                        address: None,
                        action: None,
                        flags: 0,
                    };
                    let d = build_payload(
                        &clients[who].0,
                        counter,
                        &req,
                        &PrivateKey::generate(),
                        &WireNoise::default(),
                    )
                    .unwrap();
                    (who, d)
                },
                |(who, d)| {
                    src += 1;
                    let ip = IpAddr::V4(Ipv4Addr::from(0xc612_0000 + (src & 0xffff)));
                    let seq = &clients[who].1;
                    for k in &seq.knocks {
                        t.packet(
                            T0,
                            Incoming {
                                source: ip,
                                proto: k.proto,
                                port: k.port,
                                payload: None,
                            },
                            &mut events,
                        );
                    }
                    t.packet(
                        T0,
                        Incoming {
                            source: ip,
                            proto: Proto::Udp,
                            port: seq.payload_port,
                            payload: Some(&d),
                        },
                        &mut events,
                    );
                    assert!(
                        events
                            .iter()
                            .any(|e| matches!(e, sesame_proto::Event::Granted(_))),
                        "{events:?}"
                    );
                    events.clear();
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_refresh(c: &mut Criterion) {
    let mut g = c.benchmark_group("step_refresh");
    g.sample_size(10);
    for n in sizes(&[1_000, 100_000]) {
        let list = entries(n);
        let p = params();
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("clients", n), &list, |b, list| {
            let mut counter = 58_800_000u64;
            b.iter(|| {
                counter += 1;
                black_box(StepTable::build(list, &p, PayloadMode::Required, counter).unwrap())
            })
        });
    }
    g.finish();
}

fn bench_payload(c: &mut Criterion) {
    let s = server();
    let client = client_key(1);
    let ck = ClientKeys::for_client(&client, &s.public_key(), None).unwrap();
    let sk = ClientKeys::for_server(&s, &client.public_key(), None).unwrap();
    let counter = T0.counter(30);
    let req = Request {
        timestamp: T0,
        random: [1; 16],
        services: vec![Service::new(Proto::Tcp, 22)],
        address: None,
        action: None,
        flags: 0,
    };
    let opener = Opener::new(
        s.clone(),
        TimeWindow {
            step_seconds: 30,
            skew_steps: 1,
        },
    );
    let noise = WireNoise::default();
    let dgram = build_payload(&ck, counter, &req, &PrivateKey::generate(), &noise).unwrap();
    let mut g = c.benchmark_group("payload");
    g.throughput(Throughput::Elements(1));
    g.bench_function("build", |b| {
        b.iter(|| {
            black_box(build_payload(&ck, counter, &req, &PrivateKey::generate(), &noise).unwrap())
        })
    });
    g.bench_function("open_valid", |b| {
        b.iter(|| black_box(opener.open(T0, &sk, counter, &dgram).unwrap()))
    });
    let mut garbage = dgram.clone();
    garbage[40] ^= 1;
    g.bench_function("gate_rejects_garbage", |b| {
        b.iter(|| black_box(opener.check_gate(T0, &sk, counter, &garbage).is_err()))
    });
    g.bench_function("gate_alone_valid", |b| {
        b.iter(|| black_box(opener.check_gate(T0, &sk, counter, &dgram).is_ok()))
    });
    // The part of `open_valid` that is not the gate: one X25519 with the server's key.
    let eph_public = PrivateKey::generate().public_key();
    g.bench_function("x25519_alone", |b| {
        b.iter(|| black_box(s.diffie_hellman(&eph_public).is_ok()))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_derivation,
    bench_tracker,
    bench_refresh,
    bench_payload
);
criterion_main!(benches);
