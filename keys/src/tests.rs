use super::*;

fn hex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).unwrap(), 16).unwrap();
    }
    out
}

// RFC 7748 section 6.1.
const ALICE_PRIV: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const ALICE_PUB: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
const BOB_PRIV: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
const BOB_PUB: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
const SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

#[test]
fn rfc7748_public_keys_and_shared_secret() {
    let alice = PrivateKey::from_bytes(hex(ALICE_PRIV));
    let bob = PrivateKey::from_bytes(hex(BOB_PRIV));
    assert_eq!(alice.public_key().as_bytes(), &hex(ALICE_PUB));
    assert_eq!(bob.public_key().as_bytes(), &hex(BOB_PUB));
    let ab = alice.diffie_hellman(&bob.public_key()).unwrap();
    let ba = bob.diffie_hellman(&alice.public_key()).unwrap();
    assert_eq!(ab.expose_bytes(), &hex(SHARED));
    assert_eq!(ba.expose_bytes(), &hex(SHARED));
}

#[test]
fn rfc7748_section_5_2_scalar_mult() {
    let k = PrivateKey::from_bytes(hex(
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
    ));
    let u = PublicKey::from_bytes(hex(
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
    ));
    let out = k.diffie_hellman(&u).unwrap();
    assert_eq!(
        out.expose_bytes(),
        &hex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    );
}

#[test]
fn wireguard_text_form_known_pair() {
    // The RFC 7748 Alice pair in WireGuard's base64 text form.
    let private =
        PrivateKey::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n").unwrap();
    assert_eq!(
        private.public_key().to_base64(),
        "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
    );
    assert_eq!(
        &*private.to_base64(),
        "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
    );
}

#[test]
fn low_order_point_is_refused() {
    let k = PrivateKey::generate();
    // u = 0 and u = 1 are low-order points: the exchange is non-contributory.
    for bad in [[0u8; 32], {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }] {
        assert_eq!(
            k.diffie_hellman(&PublicKey::from_bytes(bad)).unwrap_err(),
            DhError::NonContributory
        );
    }
}

#[test]
fn generated_keys_are_clamped_and_distinct() {
    let a = PrivateKey::generate();
    let b = PrivateKey::generate();
    assert!(a != b);
    let bytes = a.expose_bytes();
    assert_eq!(bytes[0] & 7, 0);
    assert_eq!(bytes[31] & 128, 0);
    assert_eq!(bytes[31] & 64, 64);
}

#[test]
fn strict_parsing() {
    let good = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    assert!(PublicKey::from_base64(good).is_ok());
    assert!(PublicKey::from_base64(&format!("{good} \n\t")).is_ok());
    assert_eq!(
        PublicKey::from_base64(&format!(" {good}")),
        Err(KeyError::LeadingWhitespace)
    );
    assert_eq!(PublicKey::from_base64(""), Err(KeyError::Empty));
    assert_eq!(
        PublicKey::from_base64("  \n"),
        Err(KeyError::LeadingWhitespace)
    );
    assert_eq!(
        PublicKey::from_base64(&good[..43]),
        Err(KeyError::WrongLength { found: 43 })
    );
    assert_eq!(
        PublicKey::from_base64(&format!("{good}A")),
        Err(KeyError::WrongLength { found: 45 })
    );
    // Non-canonical: the last character carries non-zero trailing bits ("o" vs "p").
    assert!(matches!(
        PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmp="),
        Err(KeyError::Base64(_))
    ));
    // URL-safe alphabet is not the WireGuard format.
    assert!(matches!(
        PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo="),
        Err(KeyError::Base64(_))
    ));
    // 44 characters that are not 32 bytes (no padding) must not silently become a key.
    assert!(matches!(
        PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmoA"),
        Err(KeyError::Base64(_))
    ));
    // Inner whitespace is refused.
    assert!(PublicKey::from_base64("hSDwCYkwp1R0i33ctD73Wg2/ g0mOBr066SpjqqbTmo=").is_err());
    // Multi-byte characters count as characters, not bytes.
    assert!(PublicKey::from_base64(&"é".repeat(44)).is_err());
}

#[test]
fn debug_never_shows_secret() {
    let k = PrivateKey::from_bytes(hex(ALICE_PRIV));
    let shown = format!("{k:?}");
    assert!(!shown.contains("dwdtCnMYpX08"), "{shown}");
    assert!(!shown.contains("77076d0a"), "{shown}");
    assert!(shown.contains("hSDwCYkwp1R0"), "{shown}");
    let psk = PresharedKey::from_bytes([7; 32]);
    assert_eq!(format!("{psk:?}"), "PresharedKey(..)");
}

proptest::proptest! {
    #[test]
    fn base64_round_trip(bytes: [u8; 32]) {
        let k = PublicKey::from_bytes(bytes);
        proptest::prop_assert_eq!(PublicKey::from_base64(&k.to_base64()).unwrap(), k);
    }

    #[test]
    fn parsing_never_panics(text: String) {
        let _ = PublicKey::from_base64(&text);
    }
}

/// A malformed key's error names the position of the problem, never a character of the key:
/// a private key with one typo is still a private key.
#[test]
fn parse_errors_never_echo_key_characters() {
    let good = PrivateKey::generate().to_base64();
    let mut cases = Vec::new();
    for (i, bad) in ["!", "-", "_", "é", "\u{7f}"].iter().enumerate() {
        let mut t: String = good.chars().take(43).collect();
        t.replace_range(5 + i..6 + i, bad);
        t.push('=');
        cases.push(t);
    }
    // Non-canonical last character, and bad padding.
    let mut t: String = good.chars().take(42).collect();
    t.push('B');
    t.push('=');
    cases.push(t);
    let mut t: String = good.chars().take(42).collect();
    t.push_str("==");
    cases.push(t);
    for text in cases {
        let err = PrivateKey::from_base64(&text).unwrap_err().to_string();
        // No run of 4 characters of the key text appears in the message.
        let chars: Vec<char> = text.chars().collect();
        for w in chars.windows(4) {
            let piece: String = w.iter().collect();
            assert!(!err.contains(&piece), "{err:?} quotes {piece:?} of the key");
        }
        for c in ["symbol", "Invalid"] {
            assert!(!err.contains(c), "{err}");
        }
    }
}
