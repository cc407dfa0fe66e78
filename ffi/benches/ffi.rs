//! Building one knock: the protocol crate's `plan_knock` (the baseline), the same through the
//! library's Rust core, and through its C ABI (`sesame_client_build_knock`: text arguments
//! parsed, the panic guard, a handle allocated and freed). Also the one-off `sesame_client_new`
//! (the key exchange) and the ports of a step.
//!
//! Run: `cargo bench -p sesame-ffi --bench ffi` (BENCHMARKS.md, "The embedding library").
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use sesame_ffi::c_api::{
    SesameClient, SesameKey, SesameKnock, SesameProfile, SesameStatus, sesame_client_build_knock,
    sesame_client_free, sesame_client_new, sesame_key_free, sesame_key_from_base64,
    sesame_knock_free, sesame_profile_free, sesame_profile_from_toml,
};
use sesame_ffi::core::{Client, KnockOptions, PrivateKey, Profile};
use sesame_proto::{ClientKeys, KnockRequest, UnixMillis, plan_knock};

/// The `default-udp` vector's server and client: 3 UDP knocks and a payload.
const PROFILE: &std::ffi::CStr = c"host = \"198.18.0.1\"
server_public_key = \"O0zfQijMZ3b1Vrg3VVxj8bKdvxDaQlzcOR8kd6yhwho=\"
private_key_file = \"unused.key\"
open = [\"tcp/22\"]
";
const KEY: &std::ffi::CStr = c"RXx3bmEYEwoNBD82KSDb0tXMx/7x6OOanZSPhrmwq6I=";
const NOW: u64 = 1_764_000_000_123;

fn knock_build(c: &mut Criterion) {
    let profile = Profile::from_toml(PROFILE.to_str().unwrap()).unwrap();
    let key = PrivateKey::from_base64(KEY.to_str().unwrap()).unwrap();
    let target: IpAddr = "198.18.0.1".parse().unwrap();
    let address: IpAddr = "198.18.0.2".parse().unwrap();
    let mut g = c.benchmark_group("knock_build");

    let keys = ClientKeys::for_client(&key, profile.server_public_key(), None).unwrap();
    let p = profile.as_proto();
    g.bench_function("proto_plan_knock", |b| {
        b.iter(|| {
            let req = KnockRequest {
                params: &p.params,
                payload: p.payload,
                keys: &keys,
                target,
                now: UnixMillis(NOW),
                services: p.open.clone(),
                address: Some(address),
                action: None,
            };
            black_box(plan_knock(&req, &mut sesame_keys::fill_random).unwrap())
        })
    });

    let client = Client::new(&profile, Some(&key), None).unwrap();
    let options = KnockOptions {
        services: None,
        address: Some(address),
    };
    g.bench_function("core_build_knock", |b| {
        b.iter(|| black_box(client.build_knock(target, NOW, &options).unwrap()))
    });

    let mut c_profile: *mut SesameProfile = std::ptr::null_mut();
    let mut c_key: *mut SesameKey = std::ptr::null_mut();
    let mut c_client: *mut SesameClient = std::ptr::null_mut();
    // SAFETY: NUL-terminated strings and writable out-pointers; each handle is used while live
    // and freed once below.
    unsafe {
        assert_eq!(
            sesame_profile_from_toml(PROFILE.as_ptr(), &mut c_profile),
            SesameStatus::Ok
        );
        assert_eq!(
            sesame_key_from_base64(KEY.as_ptr(), &mut c_key),
            SesameStatus::Ok
        );
        assert_eq!(
            sesame_client_new(c_profile, c_key, std::ptr::null(), &mut c_client),
            SesameStatus::Ok
        );
    }
    g.bench_function("c_abi_build_knock", |b| {
        b.iter(|| {
            let mut knock: *mut SesameKnock = std::ptr::null_mut();
            // SAFETY: a live client, NUL-terminated strings, a writable out-pointer; the knock
            // is freed once.
            unsafe {
                let s = sesame_client_build_knock(
                    c_client,
                    c"198.18.0.1".as_ptr(),
                    NOW,
                    std::ptr::null(),
                    c"198.18.0.2".as_ptr(),
                    &mut knock,
                );
                assert_eq!(s, SesameStatus::Ok);
                sesame_knock_free(black_box(knock));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("client");
    g.bench_function("c_abi_client_new", |b| {
        b.iter(|| {
            let mut client: *mut SesameClient = std::ptr::null_mut();
            // SAFETY: live profile and key, a writable out-pointer; the client is freed once.
            unsafe {
                let s = sesame_client_new(c_profile, c_key, std::ptr::null(), &mut client);
                assert_eq!(s, SesameStatus::Ok);
                sesame_client_free(black_box(client));
            }
        })
    });
    g.bench_function("core_sequence", |b| {
        b.iter(|| black_box(client.sequence(black_box(NOW)).unwrap()))
    });
    g.finish();

    // SAFETY: the handles made above, each freed once and not used afterwards.
    unsafe {
        sesame_client_free(c_client);
        sesame_key_free(c_key);
        sesame_profile_free(c_profile);
    }
}

criterion_group!(benches, knock_build);
criterion_main!(benches);
