//! Checks every vector in `proto/tests/vectors/` through the public API only.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::Value;
use sesame_keys::{PresharedKey, PrivateKey, PublicKey};
use sesame_proto::derive::derive_sequence;
use sesame_proto::params::KnockParams;
use sesame_proto::time::TimeWindow;
use sesame_proto::wire::{Action, Opener, Request, WireNoise, build_payload, encode_plaintext};
use sesame_proto::{ClientKeys, Service, UnixMillis};

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

struct Keys {
    client: PrivateKey,
    server: PrivateKey,
    psk: Option<PresharedKey>,
}

fn keys(v: &Value) -> Keys {
    let client = PrivateKey::from_base64(v["client_private"].as_str().unwrap()).unwrap();
    let server = PrivateKey::from_base64(v["server_private"].as_str().unwrap()).unwrap();
    assert_eq!(
        client.public_key(),
        PublicKey::from_base64(v["client_public"].as_str().unwrap()).unwrap()
    );
    assert_eq!(
        server.public_key(),
        PublicKey::from_base64(v["server_public"].as_str().unwrap()).unwrap()
    );
    let psk = v["psk"]
        .as_str()
        .map(|p| PresharedKey::from_base64(p).unwrap());
    Keys {
        client,
        server,
        psk,
    }
}

fn request(v: &Value) -> Request {
    let mut random = [0u8; 16];
    random.copy_from_slice(&unhex(v["random"].as_str().unwrap()));
    Request {
        timestamp: UnixMillis(v["timestamp_ms"].as_u64().unwrap()),
        random,
        services: v["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().parse::<Service>().unwrap())
            .collect(),
        address: v["address"].as_str().map(|a| a.parse().unwrap()),
        action: v["action"].as_object().map(|a| {
            Action::new(a["name"].as_str().unwrap(), a["argument"].as_str().unwrap()).unwrap()
        }),
        flags: v["flags"].as_u64().unwrap() as u8,
    }
}

#[test]
fn sequences() {
    let file = load("sequences.json");
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 5);
    for v in vectors {
        let k = keys(v);
        let ck = ClientKeys::for_client(&k.client, &k.server.public_key(), k.psk.as_ref()).unwrap();
        let sk = ClientKeys::for_server(&k.server, &k.client.public_key(), k.psk.as_ref()).unwrap();
        let p = &v["params"];
        let excl: Vec<u16> = p["exclude_ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u16)
            .collect();
        let params = KnockParams::new(
            p["step_seconds"].as_u64().unwrap() as u32,
            p["length"].as_u64().unwrap(),
            (
                p["port_range"][0].as_u64().unwrap(),
                p["port_range"][1].as_u64().unwrap(),
            ),
            &excl,
            p["protocol"].as_str().unwrap().parse().unwrap(),
        )
        .unwrap();
        let now = UnixMillis(v["unix_time_ms"].as_u64().unwrap());
        let counter = now.counter(params.step_seconds);
        assert_eq!(counter, v["counter"].as_u64().unwrap(), "{}", v["name"]);
        for keys in [&ck, &sk] {
            let seq = derive_sequence(keys, &params, counter).unwrap();
            let knocks: Vec<Value> = seq
                .knocks
                .iter()
                .map(|k| serde_json::json!({"proto": k.proto.as_str(), "port": k.port}))
                .collect();
            assert_eq!(Value::from(knocks), v["knocks"], "{}", v["name"]);
            assert_eq!(
                u64::from(seq.payload_port),
                v["payload_port"].as_u64().unwrap(),
                "{}",
                v["name"]
            );
        }
    }
}

#[test]
fn payloads() {
    let file = load("payloads.json");
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 4);
    for v in vectors {
        let k = keys(v);
        let eph = PrivateKey::from_base64(v["ephemeral_private"].as_str().unwrap()).unwrap();
        let ck = ClientKeys::for_client(&k.client, &k.server.public_key(), k.psk.as_ref()).unwrap();
        let counter = v["counter"].as_u64().unwrap();
        let req = request(&v["request"]);
        assert_eq!(
            hex(&encode_plaintext(&req).unwrap()),
            v["plaintext"].as_str().unwrap()
        );
        let noise = WireNoise {
            high_bit: v["e_high_bit"].as_bool().unwrap(),
            padding: unhex(v["padding"].as_str().unwrap()),
        };
        let dgram = build_payload(&ck, counter, &req, &eph, &noise).unwrap();
        assert_eq!(
            hex(&dgram),
            v["datagram"].as_str().unwrap(),
            "{}",
            v["name"]
        );
        let sk = ClientKeys::for_server(&k.server, &k.client.public_key(), k.psk.as_ref()).unwrap();
        let window = TimeWindow {
            step_seconds: v["step_seconds"].as_u64().unwrap() as u32,
            skew_steps: v["skew_steps"].as_u64().unwrap() as u32,
        };
        let opener = Opener::new(k.server.clone(), window);
        let now = UnixMillis(v["now_ms"].as_u64().unwrap());
        assert_eq!(opener.open(now, &sk, counter, &dgram).unwrap(), req);
    }
}

#[test]
fn fail_payloads() {
    let file = load("fail_payloads.json");
    let vectors = file["vectors"].as_array().unwrap();
    let mut reasons = std::collections::BTreeSet::new();
    for v in vectors {
        let k = keys(v);
        let sk = ClientKeys::for_server(&k.server, &k.client.public_key(), k.psk.as_ref()).unwrap();
        let window = TimeWindow {
            step_seconds: v["step_seconds"].as_u64().unwrap() as u32,
            skew_steps: v["skew_steps"].as_u64().unwrap() as u32,
        };
        let opener = Opener::new(k.server.clone(), window);
        let now = UnixMillis(v["now_ms"].as_u64().unwrap());
        let dgram = unhex(v["datagram"].as_str().unwrap());
        let err = opener
            .open(now, &sk, v["counter"].as_u64().unwrap(), &dgram)
            .unwrap_err();
        assert_eq!(err.code(), v["reason"].as_str().unwrap(), "{}", v["name"]);
        reasons.insert(err.code());
    }
    // Every reason code the opener has is covered by at least one vector.
    assert_eq!(reasons.len(), 9, "{reasons:?}");
}

#[test]
fn fail_keys() {
    let file = load("fail_keys.json");
    for bad in file["bad_text"].as_array().unwrap() {
        let text = bad["text"].as_str().unwrap();
        assert!(PublicKey::from_base64(text).is_err(), "{}", bad["why"]);
        assert!(PrivateKey::from_base64(text).is_err(), "{}", bad["why"]);
        assert!(PresharedKey::from_base64(text).is_err(), "{}", bad["why"]);
    }
    for good in file["good_text"].as_array().unwrap() {
        let k = PublicKey::from_base64(good["text"].as_str().unwrap()).unwrap();
        assert_eq!(hex(k.as_bytes()), good["hex"].as_str().unwrap());
    }
    let me = PrivateKey::generate();
    for low in file["low_order_public"].as_array().unwrap() {
        let mut b = [0u8; 32];
        b.copy_from_slice(&unhex(low.as_str().unwrap()));
        assert!(me.diffie_hellman(&PublicKey::from_bytes(b)).is_err());
    }
}

#[test]
fn argument_rules() {
    let v = load("argument_rules.json");
    let rules = v["rules"].as_array().unwrap();
    assert!(rules.len() >= 20);
    for r in rules {
        let text = r["rule"].as_str().unwrap();
        let parsed = sesame_proto::action::ArgumentRule::parse(text);
        if !r["valid"].as_bool().unwrap() {
            assert!(parsed.is_err(), "{text} must be refused");
            continue;
        }
        let rule = parsed.unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(rule.to_string(), text);
        for a in r["allows"].as_array().unwrap() {
            assert!(rule.allows(a.as_str().unwrap()), "{text} allows {a}");
        }
        for a in r["refuses"].as_array().unwrap() {
            assert!(!rule.allows(a.as_str().unwrap()), "{text} refuses {a}");
        }
    }
}
