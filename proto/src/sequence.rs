//! Port sequences (PROTOCOL.md, "Port sequence").

use ring::hmac;

use crate::kdf::ClientKeys;
use crate::params::{KnockParams, KnockProtocol};
use crate::service::Proto;

pub(crate) const LABEL_PORT: &[u8] = b"sesame v2 port";
pub(crate) const LABEL_PROTO: &[u8] = b"sesame v2 proto";

/// HMAC blocks tried per position before giving up (each block yields 8 candidates). With the
/// range checks of [`KnockParams::new`] a candidate is accepted with probability at least 1/4,
/// so running out is practically impossible; it is still an error rather than a loop.
const MAX_BLOCKS: u16 = 256;

/// One knock: the transport and port of one position of a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Knock {
    /// Transport (always UDP for the payload position).
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
}

/// The knocks of one client at one time step, and the port that takes its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// The counter this sequence belongs to.
    pub counter: u64,
    /// Positions `0..length`: the knocks, in order.
    pub knocks: Vec<Knock>,
    /// Position `length`: the UDP port the payload datagram goes to.
    pub payload_port: u16,
}

/// Why no sequence could be derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// Rejection sampling ran out of candidates (only with parameters that skipped
    /// [`KnockParams::new`]'s checks).
    #[error("port range exhausted while deriving position {position}")]
    Exhausted {
        /// The position that could not be filled.
        position: u8,
    },
}

/// Derives the sequence of `keys` at `counter`.
pub fn derive_sequence(
    keys: &ClientKeys,
    params: &KnockParams,
    counter: u64,
) -> Result<Sequence, SequenceError> {
    derive_sequence_traced(keys, params, counter, &mut PortTrace::default())
}

/// How hard rejection sampling had to work for a sequence (used to prove that the test vectors
/// exercise every branch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PortTrace {
    /// Highest block index any position needed.
    pub max_block: u8,
    /// Highest candidate index (0..=7) within a block that was accepted.
    pub max_candidate: u8,
    /// Candidates rejected because `v >= limit`.
    pub limit_rejections: u32,
    /// Candidates rejected because the port was excluded or already used.
    pub port_rejections: u32,
}

pub(crate) fn derive_sequence_traced(
    keys: &ClientKeys,
    params: &KnockParams,
    counter: u64,
    trace: &mut PortTrace,
) -> Result<Sequence, SequenceError> {
    let mut ports: Vec<u16> = Vec::with_capacity(usize::from(params.length) + 1);
    let mut knocks = Vec::with_capacity(usize::from(params.length));
    for position in 0..=params.length {
        let port = derive_port(&keys.seq, params, counter, position, &ports, trace)?;
        ports.push(port);
        if position < params.length {
            knocks.push(Knock {
                proto: knock_proto(&keys.seq, params, counter, position),
                port,
            });
        }
    }
    let payload_port = ports[usize::from(params.length)];
    Ok(Sequence {
        counter,
        knocks,
        payload_port,
    })
}

fn derive_port(
    key: &hmac::Key,
    params: &KnockParams,
    counter: u64,
    position: u8,
    used: &[u16],
    trace: &mut PortTrace,
) -> Result<u16, SequenceError> {
    let n = params.range_size() as u64;
    // Largest multiple of n that fits in 2^32: candidates at or above it are rejected so that
    // `v mod n` is uniform.
    let limit = (1u64 << 32) - ((1u64 << 32) % n);
    let counter_be = counter.to_be_bytes();
    // The step length is part of the input: a sequence of one step length is never valid
    // under another, so changing `step_seconds` cannot make old knocks valid again.
    let step_be = params.step_seconds.to_be_bytes();
    for block_index in 0..MAX_BLOCKS {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(LABEL_PORT);
        ctx.update(&step_be);
        ctx.update(&counter_be);
        ctx.update(&[position, block_index as u8]);
        let block = ctx.sign();
        for (candidate, chunk) in block.as_ref().chunks_exact(4).enumerate() {
            let v = u64::from(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
            if v >= limit {
                trace.limit_rejections += 1;
                continue;
            }
            let port = (u64::from(params.port_lo) + v % n) as u16;
            if params.is_excluded(port) || used.contains(&port) {
                trace.port_rejections += 1;
                continue;
            }
            trace.max_block = trace.max_block.max(block_index as u8);
            trace.max_candidate = trace.max_candidate.max(candidate as u8);
            return Ok(port);
        }
    }
    Err(SequenceError::Exhausted { position })
}

fn knock_proto(key: &hmac::Key, params: &KnockParams, counter: u64, position: u8) -> Proto {
    match params.protocol {
        KnockProtocol::Udp => Proto::Udp,
        KnockProtocol::Tcp => Proto::Tcp,
        KnockProtocol::Mixed => {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(LABEL_PROTO);
            ctx.update(&params.step_seconds.to_be_bytes());
            ctx.update(&counter.to_be_bytes());
            ctx.update(&[position]);
            if ctx.sign().as_ref()[0] & 1 == 0 {
                Proto::Udp
            } else {
                Proto::Tcp
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesame_keys::PrivateKey;

    fn keys() -> ClientKeys {
        let c = PrivateKey::from_bytes([1; 32]);
        let s = PrivateKey::from_bytes([2; 32]);
        ClientKeys::for_client(&c, &s.public_key(), None).unwrap()
    }

    #[test]
    fn ports_are_in_range_distinct_and_not_excluded() {
        let k = keys();
        let params = KnockParams::new(
            30,
            16,
            (1000, 1100),
            &[1000, 1050, 1099],
            KnockProtocol::Mixed,
        )
        .unwrap();
        for counter in 0..500 {
            let s = derive_sequence(&k, &params, counter).unwrap();
            let mut all: Vec<u16> = s.knocks.iter().map(|k| k.port).collect();
            all.push(s.payload_port);
            assert_eq!(all.len(), 17);
            for p in &all {
                assert!(params.in_range(*p), "{p}");
            }
            all.sort_unstable();
            all.dedup();
            assert_eq!(all.len(), 17, "ports repeat at counter {counter}");
        }
    }

    #[test]
    fn sequences_rotate_with_the_counter() {
        let k = keys();
        let params = KnockParams::new(30, 3, (1024, 65535), &[], KnockProtocol::Udp).unwrap();
        let a = derive_sequence(&k, &params, 100).unwrap();
        let b = derive_sequence(&k, &params, 101).unwrap();
        assert_ne!(a.knocks, b.knocks);
        assert_eq!(a, derive_sequence(&k, &params, 100).unwrap());
    }

    /// Every port of a small range is hit about equally often (no modulo bias, no multiples
    /// of 256 as in a peer's bug).
    #[test]
    fn ports_are_uniform() {
        let k = keys();
        let params = KnockParams::new(30, 0, (5000, 5099), &[], KnockProtocol::Udp).unwrap();
        let mut counts = [0u32; 100];
        let draws = 50_000u32;
        for counter in 0..u64::from(draws) {
            let s = derive_sequence(&k, &params, counter).unwrap();
            counts[usize::from(s.payload_port - 5000)] += 1;
        }
        // Chi-square with 99 degrees of freedom; 99.9th percentile is about 148.2.
        let expected = f64::from(draws) / 100.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 148.2, "chi-square {chi2}: {counts:?}");
    }

    /// A full 16-bit range: low byte and high byte are both spread (a peer's knocker produced
    /// only multiples of 256).
    #[test]
    fn low_bits_vary_over_full_range() {
        let k = keys();
        let params = KnockParams::new(30, 3, (1, 65535), &[], KnockProtocol::Udp).unwrap();
        let mut low = std::collections::HashSet::new();
        let mut high = std::collections::HashSet::new();
        for counter in 0..2000 {
            for knock in derive_sequence(&k, &params, counter).unwrap().knocks {
                low.insert(knock.port & 0xff);
                high.insert(knock.port >> 8);
            }
        }
        assert!(low.len() > 250, "{}", low.len());
        assert!(high.len() > 250, "{}", high.len());
    }

    #[test]
    fn mixed_uses_both_protocols() {
        let k = keys();
        let params = KnockParams::new(30, 8, (2000, 3000), &[], KnockProtocol::Mixed).unwrap();
        let (mut udp, mut tcp) = (0, 0);
        for counter in 0..200 {
            for knock in derive_sequence(&k, &params, counter).unwrap().knocks {
                match knock.proto {
                    Proto::Udp => udp += 1,
                    Proto::Tcp => tcp += 1,
                }
            }
        }
        assert!(udp > 700 && tcp > 700, "udp {udp} tcp {tcp}");
    }
}
