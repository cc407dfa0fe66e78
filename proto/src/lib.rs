//! The sesame protocol: key schedule, port sequences, the payload datagram and the sans-IO
//! knock tracker.
//!
//! This crate does no I/O and never reads the clock: every function that depends on time takes
//! `now` as a [`UnixMillis`] parameter, so time windows and replay rules can be tested on a
//! virtual clock. `docs/PROTOCOL.md` specifies every byte.
#![forbid(unsafe_code)]

mod action;
mod address;
mod kdf;
mod knock;
mod params;
mod payload;
mod profile;
mod sequence;
mod service;
pub mod stun;
mod time;
mod tracker;
mod uri;

pub use action::{ActionName, AllowedAction, ArgumentPattern, ArgumentRule, ArgumentRuleError};
pub use address::is_bindable;
pub use ipnet::IpNet;
pub use kdf::{ClientKeys, KeysError};
pub use knock::{
    KNOCK_BODY_MAX, KNOCK_BODY_MIN, KnockError, KnockPlan, KnockRequest, Packet, PacketKind,
    plan_knock,
};
pub use params::{KnockParams, KnockProtocol, LeaseKind, MAX_LENGTH, ParamsError, PayloadMode};
pub use payload::{
    ACTION_LEN, ADDRESS_LEN, ARGUMENT_LEN, Action, BuildError, DATAGRAM_LEN, EPHEMERAL_LEN,
    FLAGS_KNOWN, MAC_LEN, MAC_OFFSET, MAX_DATAGRAM_LEN, MAX_PADDING, MAX_SERVICES, Opener,
    PLAINTEXT_LEN, PROTOCOL_VERSION, RANDOM_LEN, RejectReason, Request, TAG_LEN, WireNoise,
    build_payload, carried_mac, check_len, decode_plaintext, encode_plaintext, is_action_argument,
    is_action_name, is_payload_len,
};
pub use profile::{
    ConfigError, DEFAULT_LENGTH, DEFAULT_PORT_RANGE, DEFAULT_STEP_SECONDS, Profile, is_host_port,
    line_of, parse_services, parse_services_unbounded, toml_string,
};
pub use sequence::{Knock, Sequence, SequenceError, derive_sequence};
pub use service::{Proto, Service, ServiceParseError};
pub use time::{TimeWindow, UnixMillis};
pub use tracker::{
    AcceptedPayload, ClientEntry, ClientId, Event, Grant, Incoming, LivePorts, MAX_ACCEPTED,
    MAX_AWAITING, MAX_SEEN, MAX_SEEN_PER_CLIENT, MAX_STEPS, Outcome, Policy, Reason, ReplayState,
    SeenMac, Stats, StepTable, Tracker, TrackerConfig, UsedStep, canonical_ip,
};
pub use uri::{ProfileUri, URI_PREFIX, UriError, is_valid_name};

// Hooks for the fuzz harness (`fuzz/harness`), which holds the fuzz targets' bodies: only with
// `--cfg fuzzing` (cargo-fuzz) or the `test-hooks` feature (which the harness turns on).
#[cfg(any(fuzzing, feature = "test-hooks"))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod vectors;
