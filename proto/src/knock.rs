//! The knock builder: everything a client sends for one knock, computed without I/O, without
//! reading the clock and without a random generator of its own (the caller passes `now` and
//! fills random bytes), so apps and tests get exactly the same packets for the same inputs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use sesame_keys::PrivateKey;

use crate::kdf::ClientKeys;
use crate::params::{KnockParams, PayloadMode};
use crate::payload::{
    Action, BuildError, MAX_SERVICES, RANDOM_LEN, Request, WireNoise, build_payload,
};
use crate::sequence::{SequenceError, derive_sequence};
use crate::service::{Proto, Service};
use crate::time::UnixMillis;

pub use crate::address::is_bindable;

/// The shortest random body of a UDP knock.
pub(crate) const KNOCK_BODY_MIN: usize = 8;
/// The longest random body of a UDP knock (always shorter than a payload datagram, so the
/// server never takes a knock for a payload).
pub(crate) const KNOCK_BODY_MAX: usize = 120;

/// What one knock is for.
#[derive(Clone, Debug)]
pub struct KnockRequest<'a> {
    /// The knock parameters (the profile's).
    pub params: &'a KnockParams,
    /// The payload mode (the profile's).
    pub payload: PayloadMode,
    /// The client's keys for this server.
    pub keys: &'a ClientKeys,
    /// The server's address.
    pub target: IpAddr,
    /// The client's clock, with any offset applied.
    pub now: UnixMillis,
    /// Services to ask for (empty: every service the client is allowed, or none with an
    /// action).
    pub services: Vec<Service>,
    /// The address to open, bound into the payload (`None`: the packets' source).
    pub address: Option<IpAddr>,
    /// A server action to run.
    pub action: Option<Action>,
}

/// What a packet of a knock is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// Knock `index` (1-based) of `of`.
    Knock {
        /// 1-based position.
        index: usize,
        /// Sequence length.
        of: usize,
    },
    /// The payload datagram.
    Payload,
}

/// One packet of a knock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Knock or payload.
    pub kind: PacketKind,
    /// UDP datagram or TCP SYN.
    pub proto: Proto,
    /// Destination.
    pub dest: SocketAddr,
    /// The UDP datagram's bytes (empty for a TCP SYN).
    pub data: Vec<u8>,
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.kind {
            PacketKind::Knock { index, of } => format!("knock {index}/{of}"),
            PacketKind::Payload => "payload".to_owned(),
        };
        let size = match self.proto {
            Proto::Tcp => "SYN".to_owned(),
            Proto::Udp => format!("{} bytes", self.data.len()),
        };
        write!(
            f,
            "{what:<11} {} {:<24} {size}",
            self.proto,
            self.dest.to_string()
        )
    }
}

/// Everything a knock sends, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnockPlan {
    /// The time step.
    pub counter: u64,
    /// The packets, in sending order.
    pub packets: Vec<Packet>,
}

/// Why a knock could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KnockError {
    /// The sequence could not be derived (parameters that skipped validation).
    #[error("{0}")]
    Sequence(#[from] SequenceError),
    /// The payload could not be built (too many services, a bad action, a bad server key).
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The profile's payload mode is `none`, which has no payload to carry an address or an
    /// action.
    #[error("payload = \"none\" sends no payload, so it cannot carry {0}")]
    NoPayload(&'static str),
}

/// A number uniform in `0..n` (`n` at most 256) from random bytes: a byte at or above the
/// largest multiple of `n` is drawn again (rejection sampling, so no length is likelier than
/// another).
fn uniform_below(n: usize, rng: &mut dyn FnMut(&mut [u8])) -> usize {
    let limit = 256 - 256 % n;
    loop {
        let mut b = [0u8; 1];
        rng(&mut b);
        if usize::from(b[0]) < limit {
            return usize::from(b[0]) % n;
        }
    }
}

/// Builds the packets of one knock. `rng` fills buffers with random bytes (the OS generator
/// in the client; anything deterministic in tests): the ephemeral key, the payload's random
/// field, the wire noise and the knock bodies come from it.
pub fn plan_knock(
    req: &KnockRequest<'_>,
    rng: &mut dyn FnMut(&mut [u8]),
) -> Result<KnockPlan, KnockError> {
    if req.services.len() > MAX_SERVICES {
        return Err(BuildError::TooManyServices(req.services.len()).into());
    }
    let counter = req.now.counter(req.params.step_seconds);
    let seq = derive_sequence(req.keys, req.params, counter)?;
    let of = seq.knocks.len();
    // In single-packet mode (length 0) the payload is the knock, whatever the mode says.
    let with_payload = req.payload != PayloadMode::None || of == 0;
    if !with_payload {
        if req.address.is_some() {
            return Err(KnockError::NoPayload("an address"));
        }
        if req.action.is_some() {
            return Err(KnockError::NoPayload("an action"));
        }
    }
    let mut packets = Vec::with_capacity(of + 1);
    for (i, k) in seq.knocks.iter().enumerate() {
        let data = match k.proto {
            Proto::Tcp => Vec::new(),
            Proto::Udp => {
                let span = KNOCK_BODY_MAX - KNOCK_BODY_MIN + 1;
                let n = KNOCK_BODY_MIN + uniform_below(span, rng);
                let mut body = vec![0u8; n];
                rng(&mut body);
                body
            }
        };
        packets.push(Packet {
            kind: PacketKind::Knock { index: i + 1, of },
            proto: k.proto,
            dest: SocketAddr::new(req.target, k.port),
            data,
        });
    }
    if with_payload {
        let mut random = [0u8; RANDOM_LEN];
        rng(&mut random);
        let mut eph = [0u8; 32];
        rng(&mut eph);
        let mut noise = [0u8; 64];
        rng(&mut noise);
        let request = Request {
            timestamp: req.now,
            random,
            services: req.services.clone(),
            address: req.address,
            action: req.action.clone(),
            flags: 0,
        };
        let data = build_payload(
            req.keys,
            counter,
            &request,
            &PrivateKey::from_bytes(eph),
            &WireNoise::from_random(&noise),
        )?;
        packets.push(Packet {
            kind: PacketKind::Payload,
            proto: Proto::Udp,
            dest: SocketAddr::new(req.target, seq.payload_port),
            data,
        });
    }
    Ok(KnockPlan { counter, packets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::KnockProtocol;
    use crate::payload::{DATAGRAM_LEN, MAX_DATAGRAM_LEN, Opener, is_payload_len};
    use crate::time::TimeWindow;

    fn counter_rng(seed: u8) -> impl FnMut(&mut [u8]) {
        let mut x = u64::from(seed) + 1;
        move |buf: &mut [u8]| {
            for b in buf {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
    }

    #[test]
    fn a_knock_is_the_sequence_then_the_payload_and_opens() {
        let c = PrivateKey::from_bytes([1; 32]);
        let s = PrivateKey::from_bytes([2; 32]);
        let ck = ClientKeys::for_client(&c, &s.public_key(), None).unwrap();
        let sk = ClientKeys::for_server(&s, &c.public_key(), None).unwrap();
        let params = KnockParams::new(30, 3, (10000, 20000), &[], KnockProtocol::Mixed).unwrap();
        let now = UnixMillis(1_764_000_012_345);
        let target: IpAddr = "198.18.0.1".parse().unwrap();
        let req = KnockRequest {
            params: &params,
            payload: PayloadMode::Required,
            keys: &ck,
            target,
            now,
            services: vec![Service::new(Proto::Tcp, 22)],
            address: Some("198.18.0.2".parse().unwrap()),
            action: None,
        };
        let plan = plan_knock(&req, &mut counter_rng(1)).unwrap();
        // Deterministic for the same randomness, different for other randomness.
        assert_eq!(plan, plan_knock(&req, &mut counter_rng(1)).unwrap());
        assert_ne!(plan, plan_knock(&req, &mut counter_rng(2)).unwrap());
        let seq = derive_sequence(&ck, &params, now.counter(30)).unwrap();
        assert_eq!(plan.packets.len(), 4);
        for (p, k) in plan.packets.iter().zip(&seq.knocks) {
            assert_eq!((p.proto, p.dest.port()), (k.proto, k.port));
            match p.proto {
                Proto::Udp => {
                    assert!((KNOCK_BODY_MIN..=KNOCK_BODY_MAX).contains(&p.data.len()));
                    assert!(!is_payload_len(p.data.len()));
                }
                Proto::Tcp => assert!(p.data.is_empty()),
            }
        }
        let payload = &plan.packets[3];
        assert_eq!(payload.kind, PacketKind::Payload);
        assert_eq!(payload.dest, SocketAddr::new(target, seq.payload_port));
        assert!((DATAGRAM_LEN..=MAX_DATAGRAM_LEN).contains(&payload.data.len()));
        let opener = Opener::new(
            s,
            TimeWindow {
                step_seconds: 30,
                skew_steps: 1,
            },
        );
        let opened = opener.open(now, &sk, plan.counter, &payload.data).unwrap();
        assert_eq!(opened.address, req.address);
        assert_eq!(opened.services, req.services);
    }

    #[test]
    fn sizes_vary_over_knocks() {
        let c = PrivateKey::from_bytes([1; 32]);
        let s = PrivateKey::from_bytes([2; 32]);
        let ck = ClientKeys::for_client(&c, &s.public_key(), None).unwrap();
        let params = KnockParams::new(30, 3, (10000, 20000), &[], KnockProtocol::Udp).unwrap();
        let mut sizes = std::collections::BTreeSet::new();
        let mut high_bits = std::collections::BTreeSet::new();
        for seed in 0..40u8 {
            let req = KnockRequest {
                params: &params,
                payload: PayloadMode::Required,
                keys: &ck,
                target: "198.18.0.1".parse().unwrap(),
                now: UnixMillis(1_764_000_000_000),
                services: vec![],
                address: None,
                action: None,
            };
            let plan = plan_knock(&req, &mut counter_rng(seed)).unwrap();
            sizes.insert(plan.packets[3].data.len());
            sizes.insert(plan.packets[0].data.len());
            high_bits.insert(plan.packets[3].data[31] >> 7);
        }
        assert!(sizes.len() > 20, "{sizes:?}");
        assert_eq!(high_bits.len(), 2);
    }

    #[test]
    fn none_mode_cannot_carry_an_address() {
        let c = PrivateKey::from_bytes([1; 32]);
        let s = PrivateKey::from_bytes([2; 32]);
        let ck = ClientKeys::for_client(&c, &s.public_key(), None).unwrap();
        let params = KnockParams::new(30, 3, (10000, 20000), &[], KnockProtocol::Udp).unwrap();
        let mut req = KnockRequest {
            params: &params,
            payload: PayloadMode::None,
            keys: &ck,
            target: "198.18.0.1".parse().unwrap(),
            now: UnixMillis(1_764_000_000_000),
            services: vec![],
            address: None,
            action: None,
        };
        assert_eq!(
            plan_knock(&req, &mut counter_rng(0)).unwrap().packets.len(),
            3
        );
        req.address = Some("198.18.0.2".parse().unwrap());
        assert_eq!(
            plan_knock(&req, &mut counter_rng(0)),
            Err(KnockError::NoPayload("an address"))
        );
    }
}
