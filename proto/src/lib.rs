//! The sesame protocol: key schedule, port sequences, the payload datagram and the sans-IO
//! knock tracker.
//!
//! This crate does no I/O and never reads the clock: every function that depends on time takes
//! `now` as a [`UnixMillis`] parameter, so time windows and replay rules can be tested on a
//! virtual clock. `docs/PROTOCOL.md` specifies every byte.
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod fuzz_targets;
mod kdf;
mod params;
mod payload;
mod profile;
mod sequence;
mod service;
mod time;
mod tracker;
mod uri;

pub use ipnet::IpNet;
pub use kdf::{ClientKeys, KeysError};
pub use params::{KnockParams, KnockProtocol, MAX_LENGTH, ParamsError, PayloadMode};
pub use payload::{
    ADDRESS_LEN, BuildError, DATAGRAM_LEN, EPHEMERAL_LEN, FLAGS_V1_KNOWN, MAC_LEN, MAX_SERVICES,
    Opener, PLAINTEXT_LEN, PROTOCOL_VERSION, RANDOM_LEN, RejectReason, Request, TAG_LEN,
    build_payload, check_len, decode_plaintext, encode_plaintext,
};
pub use profile::{
    ConfigError, DEFAULT_LENGTH, DEFAULT_PORT_RANGE, DEFAULT_STEP_SECONDS, Profile, line_of,
    parse_services, parse_services_unbounded, toml_string,
};
pub use sequence::{Knock, Sequence, SequenceError, derive_sequence};
pub use service::{Proto, Service, ServiceParseError};
pub use time::{TimeWindow, UnixMillis};
pub use tracker::{
    ClientEntry, ClientId, Event, Grant, Outcome, Policy, Reason, ReplayState, Stats, StepTable,
    Tracker, TrackerConfig, canonical_ip,
};
pub use uri::{ProfileUri, URI_PREFIX, UriError, is_valid_name};

#[cfg(fuzzing)]
pub mod fuzzing;

#[cfg(test)]
mod vectors;
