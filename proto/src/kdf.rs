//! The per-client key schedule (PROTOCOL.md, "Key schedule").

use std::fmt;

use ring::{hkdf, hmac};
use sesame_keys::{DhError, PresharedKey, PrivateKey, PublicKey};
use zeroize::Zeroizing;

pub(crate) const LABEL_STATIC_SALT: &[u8] = b"sesame v2 static";
pub(crate) const LABEL_SEQUENCE: &[u8] = b"sesame v2 sequence";
pub(crate) const LABEL_MAC_KEY: &[u8] = b"sesame v2 mac key";
pub(crate) const LABEL_PAYLOAD_KEY: &[u8] = b"sesame v2 payload key";

/// Why the per-client keys could not be derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// The X25519 exchange between the client and server keys gave the all-zero value.
    #[error("client/server key exchange is non-contributory (a low-order public key)")]
    NonContributory,
}

impl From<DhError> for KeysError {
    fn from(_: DhError) -> Self {
        KeysError::NonContributory
    }
}

/// An output length for ring's HKDF.
pub(crate) struct Len(pub usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` over `ikm`, then expand `info` (the
/// concatenation of the parts) into `out`.
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    // Expanding fails only for outputs longer than 255 * 32 bytes; ours are 32.
    #[allow(clippy::expect_used)]
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output length is within bounds");
}

/// The symmetric keys one client shares with the server, derived from their static X25519
/// keys and the optional PSK. Both sides derive the same value.
pub struct ClientKeys {
    client_public: PublicKey,
    server_public: PublicKey,
    /// `k_seq`: keys the port sequence.
    pub(crate) seq: hmac::Key,
    /// `k_mac`: keys the payload's cheap MAC gate.
    pub(crate) mac: hmac::Key,
    /// `k_pay`: salt of the per-datagram AEAD key derivation.
    pub(crate) payload: Zeroizing<[u8; 32]>,
}

impl ClientKeys {
    /// The client's view: its private key and the server's public key.
    pub fn for_client(
        client: &PrivateKey,
        server: &PublicKey,
        psk: Option<&PresharedKey>,
    ) -> Result<Self, KeysError> {
        let dh = client.diffie_hellman(server)?;
        Ok(Self::derive(
            dh.expose_bytes(),
            psk,
            client.public_key(),
            *server,
        ))
    }

    /// The server's view: its private key and the client's public key.
    pub fn for_server(
        server: &PrivateKey,
        client: &PublicKey,
        psk: Option<&PresharedKey>,
    ) -> Result<Self, KeysError> {
        let dh = server.diffie_hellman(client)?;
        Ok(Self::derive(
            dh.expose_bytes(),
            psk,
            *client,
            server.public_key(),
        ))
    }

    fn derive(
        dh: &[u8; 32],
        psk: Option<&PresharedKey>,
        client_public: PublicKey,
        server_public: PublicKey,
    ) -> Self {
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(dh);
        if let Some(psk) = psk {
            ikm[32..].copy_from_slice(psk.expose_bytes());
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, LABEL_STATIC_SALT).extract(&ikm[..]);
        let expand = |label: &[u8]| {
            let mut out = Zeroizing::new([0u8; 32]);
            #[allow(clippy::expect_used)]
            prk.expand(
                &[label, client_public.as_bytes(), server_public.as_bytes()],
                Len(32),
            )
            .and_then(|okm| okm.fill(&mut out[..]))
            .expect("HKDF output length is within bounds");
            out
        };
        let seq = expand(LABEL_SEQUENCE);
        let mac = expand(LABEL_MAC_KEY);
        let payload = expand(LABEL_PAYLOAD_KEY);
        ClientKeys {
            client_public,
            server_public,
            seq: hmac::Key::new(hmac::HMAC_SHA256, &seq[..]),
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac[..]),
            payload,
        }
    }

    /// The client's public key.
    pub fn client_public(&self) -> &PublicKey {
        &self.client_public
    }

    /// The server's public key.
    pub fn server_public(&self) -> &PublicKey {
        &self.server_public
    }
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeys")
            .field("client_public", &self.client_public)
            .field("server_public", &self.server_public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_keys() {
        let c = PrivateKey::generate();
        let s = PrivateKey::generate();
        let psk = PresharedKey::generate();
        for psk in [None, Some(&psk)] {
            let a = ClientKeys::for_client(&c, &s.public_key(), psk).unwrap();
            let b = ClientKeys::for_server(&s, &c.public_key(), psk).unwrap();
            assert_eq!(a.payload[..], b.payload[..]);
            let ta = hmac::sign(&a.seq, b"x");
            let tb = hmac::sign(&b.seq, b"x");
            assert_eq!(ta.as_ref(), tb.as_ref());
            // Domain separation: the subkeys differ from each other.
            assert_ne!(
                hmac::sign(&a.seq, b"x").as_ref(),
                hmac::sign(&a.mac, b"x").as_ref()
            );
        }
        let without = ClientKeys::for_client(&c, &s.public_key(), None).unwrap();
        let with = ClientKeys::for_client(&c, &s.public_key(), Some(&psk)).unwrap();
        assert_ne!(without.payload[..], with.payload[..]);
    }

    #[test]
    fn low_order_server_key_is_refused() {
        let c = PrivateKey::generate();
        assert_eq!(
            ClientKeys::for_client(&c, &PublicKey::from_bytes([0; 32]), None).unwrap_err(),
            KeysError::NonContributory
        );
    }
}
