use super::*;
use proptest::prelude::*;

const STEP: u32 = 30;

fn setup() -> (PrivateKey, PrivateKey, ClientKeys, ClientKeys) {
    let c = PrivateKey::from_bytes([0x11; 32]);
    let s = PrivateKey::from_bytes([0x22; 32]);
    let ck = ClientKeys::for_client(&c, &s.public_key(), None).unwrap();
    let sk = ClientKeys::for_server(&s, &c.public_key(), None).unwrap();
    (c, s, ck, sk)
}

fn request(now: UnixMillis) -> Request {
    Request {
        timestamp: now,
        random: [9; RANDOM_LEN],
        services: vec![
            Service::new(Proto::Tcp, 22),
            Service::new(Proto::Udp, 51820),
        ],
        address: Some("198.18.0.7".parse().unwrap()),
        action: None,
        flags: 0,
    }
}

fn noise() -> WireNoise {
    WireNoise::default()
}

fn opener_for(s: &PrivateKey) -> Opener {
    Opener::new(s.clone(), window())
}

fn window() -> TimeWindow {
    TimeWindow {
        step_seconds: STEP,
        skew_steps: 1,
    }
}

#[test]
fn round_trip() {
    let (_, s, ck, sk) = setup();
    let now = UnixMillis(1_764_000_000_123);
    let counter = now.counter(STEP);
    let req = request(now);
    let dgram = build_payload(&ck, counter, &req, &PrivateKey::generate(), &noise()).unwrap();
    assert_eq!(dgram.len(), DATAGRAM_LEN);
    // With noise: a random high bit of E and padding, which the opener ignores.
    for (bit, pad) in [(true, 0usize), (false, 1), (true, MAX_PADDING)] {
        let noisy = WireNoise {
            high_bit: bit,
            padding: vec![0xa5; pad],
        };
        let d = build_payload(&ck, counter, &req, &PrivateKey::generate(), &noisy).unwrap();
        assert_eq!(d.len(), DATAGRAM_LEN + pad);
        assert_eq!(d[31] & 0x80 != 0, bit);
        assert_eq!(opener_for(&s).open(now, &sk, counter, &d).unwrap(), req);
    }
    let opener = Opener::new(s, window());
    assert_eq!(opener.open(now, &sk, counter, &dgram).unwrap(), req);
    // The neighbouring steps are inside the window.
    assert!(
        opener
            .open(now.plus_millis(30_000), &sk, counter, &dgram)
            .is_ok()
    );
    // Two steps later it is stale.
    assert_eq!(
        opener.open(now.plus_millis(60_000), &sk, counter, &dgram),
        Err(RejectReason::Stale {
            counter,
            offset_steps: -2
        })
    );
    // Tried with the wrong counter, the gate refuses it.
    assert_eq!(
        opener.open(now, &sk, counter + 1, &dgram),
        Err(RejectReason::BadMac)
    );
}

#[test]
fn other_clients_and_servers_are_refused() {
    let (_, s, ck, _) = setup();
    let now = UnixMillis(1_764_000_000_000);
    let counter = now.counter(STEP);
    let dgram = build_payload(
        &ck,
        counter,
        &request(now),
        &PrivateKey::generate(),
        &noise(),
    )
    .unwrap();
    let other = PrivateKey::generate();
    let other_keys = ClientKeys::for_server(&s, &other.public_key(), None).unwrap();
    let opener = Opener::new(s, window());
    assert_eq!(
        opener.open(now, &other_keys, counter, &dgram),
        Err(RejectReason::BadMac)
    );
    // Right client keys but wrong server private key: the gate passes (keys are per client),
    // the AEAD fails because X25519(e, S) differs.
    let (_, _, _, sk) = setup();
    let wrong_server = Opener::new(PrivateKey::generate(), window());
    assert_eq!(
        wrong_server.open(now, &sk, counter, &dgram),
        Err(RejectReason::BadAead)
    );
}

#[test]
fn psk_changes_everything() {
    let (c, s, _, _) = setup();
    let psk = sesame_keys::PresharedKey::from_bytes([5; 32]);
    let ck = ClientKeys::for_client(&c, &s.public_key(), Some(&psk)).unwrap();
    let sk_nopsk = ClientKeys::for_server(&s, &c.public_key(), None).unwrap();
    let sk = ClientKeys::for_server(&s, &c.public_key(), Some(&psk)).unwrap();
    let now = UnixMillis(1_764_000_000_000);
    let counter = now.counter(STEP);
    let dgram = build_payload(
        &ck,
        counter,
        &request(now),
        &PrivateKey::generate(),
        &noise(),
    )
    .unwrap();
    let opener = Opener::new(s, window());
    assert_eq!(
        opener.open(now, &sk_nopsk, counter, &dgram),
        Err(RejectReason::BadMac)
    );
    assert!(opener.open(now, &sk, counter, &dgram).is_ok());
}

#[test]
fn lengths_are_checked_first() {
    let (_, s, _, sk) = setup();
    let opener = Opener::new(s, window());
    let now = UnixMillis(1_764_000_000_000);
    let c = now.counter(STEP);
    assert_eq!(
        opener.open(now, &sk, c, &[0; DATAGRAM_LEN - 1]),
        Err(RejectReason::Truncated {
            len: DATAGRAM_LEN - 1
        })
    );
    assert_eq!(
        opener.open(now, &sk, c, &[0; MAX_DATAGRAM_LEN + 1]),
        Err(RejectReason::TooLong {
            len: MAX_DATAGRAM_LEN + 1
        })
    );
    // Anything from the shortest to the longest length gets to the gate.
    for len in [DATAGRAM_LEN, DATAGRAM_LEN + 1, MAX_DATAGRAM_LEN] {
        assert_eq!(
            opener.open(now, &sk, c, &vec![0; len]),
            Err(RejectReason::BadMac)
        );
    }
    assert_eq!(
        opener.open(now, &sk, c, &[]),
        Err(RejectReason::Truncated { len: 0 })
    );
}

#[test]
fn timestamp_must_match_the_step() {
    let (_, s, ck, sk) = setup();
    let now = UnixMillis(1_764_000_000_000);
    let counter = now.counter(STEP);
    // Built for `counter` but stamped a step later.
    let req = request(now.plus_millis(30_000));
    let dgram = build_payload(&ck, counter, &req, &PrivateKey::generate(), &noise()).unwrap();
    let opener = Opener::new(s, window());
    assert_eq!(
        opener.open(now, &sk, counter, &dgram),
        Err(RejectReason::CounterMismatch)
    );
}

#[test]
fn codec_is_strict() {
    let req = request(UnixMillis(5));
    let pt = encode_plaintext(&req).unwrap();
    assert_eq!(decode_plaintext(&pt).unwrap(), req);
    let mut bad = pt;
    bad[OFF_VERSION] = 1;
    assert_eq!(decode_plaintext(&bad), Err(RejectReason::BadVersion(1)));
    let mut bad = pt;
    bad[OFF_FLAGS] = 1;
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("flags"))
    );
    let mut bad = pt;
    bad[OFF_COUNT] = 9;
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("service count"))
    );
    let mut bad = pt;
    bad[OFF_SERVICES + 2 * SERVICE_LEN + 2] = 1; // beyond the 2 used entries
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("unused service entry"))
    );
    let mut bad = pt;
    bad[OFF_SERVICES] = 1; // ICMP is not a service
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("service protocol"))
    );
    let mut bad = pt;
    bad[OFF_SERVICES + 1] = 0;
    bad[OFF_SERVICES + 2] = 0;
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("service port"))
    );
    let mut bad = pt;
    bad[OFF_ADDRESS + 5] = 1; // IPv4 uses 4 bytes
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("address padding"))
    );
    let mut bad = pt;
    bad[OFF_FAMILY] = 5;
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("address family"))
    );
    let mut bad = pt;
    bad[PLAINTEXT_LEN - 1] = 1;
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("padding"))
    );
    // Actions: name and argument in their charsets, NUL-padded, no argument without a name.
    let with_action = Request {
        action: Some(Action::new("wake", "aa:bb:cc:dd:ee:ff").unwrap()),
        ..req.clone()
    };
    let apt = encode_plaintext(&with_action).unwrap();
    assert_eq!(decode_plaintext(&apt).unwrap(), with_action);
    for (at, value, field) in [
        (OFF_ACTION, b'A', "action"),
        (OFF_ACTION + 5, b'x', "action"),
        (OFF_ARGUMENT, b' ', "argument"),
        (OFF_ARGUMENT + 20, b'x', "argument"),
    ] {
        let mut bad = apt;
        bad[at] = value;
        assert_eq!(
            decode_plaintext(&bad),
            Err(RejectReason::Malformed(field)),
            "{at}"
        );
    }
    let mut bad = pt;
    bad[OFF_ARGUMENT] = b'x';
    assert_eq!(
        decode_plaintext(&bad),
        Err(RejectReason::Malformed("argument"))
    );
    assert_eq!(Action::new("", ""), Err(BuildError::ActionName));
    assert_eq!(Action::new("Wake", ""), Err(BuildError::ActionName));
    assert_eq!(
        Action::new("a".repeat(17).as_str(), ""),
        Err(BuildError::ActionName)
    );
    assert_eq!(Action::new("wake", "a b"), Err(BuildError::ActionArgument));
    assert_eq!(
        Action::new("wake", &"a".repeat(33)),
        Err(BuildError::ActionArgument)
    );
    assert!(Action::new(&"a".repeat(16), &"~".repeat(32)).is_ok());
    let too_many = Request {
        services: vec![Service::new(Proto::Tcp, 1); 9],
        ..req.clone()
    };
    assert_eq!(
        encode_plaintext(&too_many),
        Err(BuildError::TooManyServices(9))
    );
}

#[test]
fn every_datagram_without_padding_has_the_same_size() {
    let (_, _, ck, _) = setup();
    let minimal = Request {
        timestamp: UnixMillis(0),
        random: [0; 16],
        services: vec![],
        address: None,
        action: None,
        flags: 0,
    };
    let maximal = Request {
        timestamp: UnixMillis(u64::MAX),
        random: [0xff; 16],
        services: vec![Service::new(Proto::Udp, 65535); MAX_SERVICES],
        address: Some("2001:db8::ffff:1".parse().unwrap()),
        action: Some(Action::new(&"z".repeat(16), &"~".repeat(32)).unwrap()),
        flags: 0,
    };
    let e = PrivateKey::generate();
    assert_eq!(
        build_payload(&ck, 0, &minimal, &e, &noise()).unwrap().len(),
        build_payload(&ck, 0, &maximal, &e, &noise()).unwrap().len()
    );
}

fn arb_service() -> impl Strategy<Value = Service> {
    (prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)], 1u16..)
        .prop_map(|(p, port)| Service::new(p, port))
}

fn arb_address() -> impl Strategy<Value = Option<IpAddr>> {
    prop_oneof![
        Just(None),
        any::<[u8; 4]>().prop_map(|a| Some(IpAddr::from(a))),
        any::<[u8; 16]>().prop_map(|a| Some(IpAddr::from(a))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Build then open gives back the request, for arbitrary keys, times and requests.
    #[test]
    fn build_open_round_trip(
        client in any::<[u8; 32]>(),
        server in any::<[u8; 32]>(),
        eph in any::<[u8; 32]>(),
        psk in proptest::option::of(any::<[u8; 32]>()),
        now_ms in 0u64..4_000_000_000_000,
        step in 1u32..=3600,
        skew in 0u32..4,
        services in proptest::collection::vec(arb_service(), 0..=MAX_SERVICES),
        address in arb_address(),
        random in any::<[u8; 16]>(),
    ) {
        let c = PrivateKey::from_bytes(client);
        let s = PrivateKey::from_bytes(server);
        let psk = psk.map(sesame_keys::PresharedKey::from_bytes);
        let ck = ClientKeys::for_client(&c, &s.public_key(), psk.as_ref()).unwrap();
        let sk = ClientKeys::for_server(&s, &c.public_key(), psk.as_ref()).unwrap();
        let now = UnixMillis(now_ms);
        let counter = now.counter(step);
        let req = Request { timestamp: now, random, services, address, action: None, flags: 0 };
        let dgram = build_payload(&ck, counter, &req, &PrivateKey::from_bytes(eph), &noise()).unwrap();
        let opener = Opener::new(s, TimeWindow { step_seconds: step, skew_steps: skew });
        prop_assert_eq!(opener.open(now, &sk, counter, &dgram).unwrap(), req);
    }

    /// Flipping any single bit of a valid datagram makes it fail.
    #[test]
    fn any_bit_flip_is_rejected(bit in 0usize..DATAGRAM_LEN * 8) {
        let (_, s, ck, sk) = setup();
        let now = UnixMillis(1_764_000_000_000);
        let counter = now.counter(STEP);
        let mut dgram = build_payload(&ck, counter, &request(now), &PrivateKey::from_bytes([3; 32]), &noise()).unwrap();
        dgram[bit / 8] ^= 1 << (bit % 8);
        let opener = Opener::new(s, window());
        prop_assert_eq!(opener.open(now, &sk, counter, &dgram), Err(RejectReason::BadMac));
    }

    /// A counter outside the window is rejected, before any key is used.
    #[test]
    fn counter_outside_window_is_rejected(delta in 2u64..1_000_000, later in any::<bool>()) {
        let (_, s, ck, sk) = setup();
        let now = UnixMillis(1_764_000_000_000);
        let current = now.counter(STEP);
        let counter = if later { current + delta } else { current - delta };
        let ts = UnixMillis(counter * u64::from(STEP) * 1000);
        let dgram = build_payload(&ck, counter, &request(ts), &PrivateKey::generate(), &noise()).unwrap();
        let opener = Opener::new(s, window());
        let rejected = matches!(
            opener.open(now, &sk, counter, &dgram),
            Err(RejectReason::Stale { .. })
        );
        prop_assert!(rejected);
    }

    /// Decoding arbitrary bytes never panics, and whatever decodes re-encodes identically.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..140)) {
        if let Ok(req) = decode_plaintext(&bytes) {
            prop_assert_eq!(&encode_plaintext(&req).unwrap()[..], &bytes[..]);
        }
    }

    /// Opening arbitrary bytes never panics.
    #[test]
    fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..260)) {
        let (_, s, _, sk) = setup();
        let opener = Opener::new(s, window());
        let now = UnixMillis(1_764_000_000_000);
        prop_assert!(opener.open(now, &sk, now.counter(STEP), &bytes).is_err());
    }
}

// What a mutation run of payload.rs found unpinned (docs/TESTING.md).

#[test]
fn an_action_prints_as_its_name_and_argument() {
    assert_eq!(
        Action::new("restart", "web").unwrap().to_string(),
        "restart web"
    );
    assert_eq!(Action::new("restart", "").unwrap().to_string(), "restart");
}

#[test]
fn wire_noise_takes_the_first_unbiased_byte_as_the_padding_length() {
    let n = MAX_PADDING + 1;
    let limit = 256 - 256 % n;
    assert_eq!(limit, 228, "the largest multiple of 57 under 256");
    let mut bytes = [0u8; 64];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    // Byte 1 is below the limit: it is the length (5), the padding is bytes 8..13.
    bytes[0] = 3;
    bytes[1] = 5;
    let w = WireNoise::from_random(&bytes);
    assert!(w.high_bit);
    assert_eq!(w.padding, (8u8..13).collect::<Vec<_>>());
    // Bit 0 of byte 0 alone is the high bit.
    bytes[0] = 2;
    assert!(!WireNoise::from_random(&bytes).high_bit);
    // Bytes at or above the limit are skipped (228 itself too); the first below it counts,
    // modulo 57.
    bytes[1] = 228;
    bytes[2] = 250;
    bytes[3] = 100;
    assert_eq!(WireNoise::from_random(&bytes).padding.len(), 100 % n);
    // All seven at or above the limit: byte 7, modulo 57.
    bytes[1..8].copy_from_slice(&[228, 229, 240, 250, 255, 231, 230]);
    assert_eq!(WireNoise::from_random(&bytes).padding.len(), 230 % n);
    assert_eq!(WireNoise::from_random(&bytes).padding, vec![8, 9]);
}

#[test]
fn a_request_with_an_unknown_flag_is_not_encoded() {
    let mut req = request(UnixMillis(1_764_000_000_000));
    req.flags = 1;
    assert!(matches!(
        encode_plaintext(&req),
        Err(BuildError::UnknownFlags(1))
    ));
}

#[test]
fn a_plaintext_one_byte_too_long_is_refused_as_too_long() {
    let pt = encode_plaintext(&request(UnixMillis(1_764_000_000_000))).unwrap();
    let mut long = pt.to_vec();
    long.push(0);
    assert!(matches!(
        decode_plaintext(&long),
        Err(RejectReason::TooLong { len }) if len == PLAINTEXT_LEN + 1
    ));
    assert!(decode_plaintext(&pt).is_ok());
}
