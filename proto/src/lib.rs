//! The sesame protocol: key schedule, port sequences, the payload datagram and the sans-IO
//! knock tracker.
//!
//! This crate does no I/O and never reads the clock: every function that depends on time takes
//! `now` as a [`UnixMillis`] parameter, so time windows and replay rules can be tested on a
//! virtual clock. `docs/PROTOCOL.md` specifies every byte.
//!
//! # Layout
//!
//! The API is grouped by the job each part does, one public module per seam (who uses it in
//! parentheses):
//!
//! * [`profile`], [`uri`]: the client's TOML profile and its `sesame://` one-line form, and
//!   [`ConfigError`], the one-line error of every TOML file sesame reads (client, apps; the
//!   server exports profiles);
//! * [`derive`](mod@derive): the per-client key schedule ([`ClientKeys`]) and the port
//!   sequences derived from it (client and server);
//! * [`knock`]: everything a client sends for one knock ([`plan_knock`]), and which source
//!   address it can bind (client, apps);
//! * [`wire`]: the payload datagram: its layout, building one, and opening one
//!   ([`wire::Opener`], which the tracker does for a server);
//! * [`tracker`]: the server's sans-IO state machine: packets in ([`Incoming`]), events out
//!   ([`Event`]), the replay state and the per-client policy;
//! * [`action`]: server actions as policy: which action a client may run, with which argument;
//! * [`params`], [`service`], [`time`]: what a server and its clients agree on: knock
//!   parameters, services (`tcp/22`), [`UnixMillis`] and time steps;
//! * [`stun`]: the two STUN messages a client needs to learn its public address.
//!
//! The crate root re-exports only what a user needs first: the two entry points with their
//! inputs and outputs ([`Tracker`], [`TrackerConfig`], [`Incoming`], [`Event`] for a server;
//! [`Profile`], [`ClientKeys`], [`KnockRequest`], [`plan_knock`], [`KnockPlan`] for a client),
//! the vocabulary every call takes ([`UnixMillis`], [`Service`], [`Proto`]), and every error
//! type a fallible function of the crate returns (except [`stun::StunError`], which only the
//! optional STUN lookup meets). Everything else is reached through its module, so a name says
//! where it belongs (`wire::MAC_LEN`, `tracker::ReplayState`).
#![forbid(unsafe_code)]

// The implementation files whose items a public module below re-exports under the name of its
// job (`derive` = `kdf` + `sequence`, `wire` = `payload`, `knock` also has `address`).
mod address;
mod kdf;
mod payload;
mod sequence;

pub mod action;
pub mod knock;
pub mod params;
pub mod profile;
pub mod service;
pub mod stun;
pub mod time;
pub mod tracker;
pub mod uri;

pub mod derive {
    //! The per-client key schedule (PROTOCOL.md, "Key schedule") and the port sequences derived
    //! from it (PROTOCOL.md, "Port sequence"): what a client and the server compute alike from
    //! their keys and the time step's counter.
    pub use crate::kdf::{ClientKeys, KeysError};
    pub use crate::sequence::{Knock, Sequence, SequenceError, derive_sequence};
}

pub mod wire {
    //! The payload datagram (PROTOCOL.md, "Payload datagram"): its layout and lengths, building
    //! one ([`build_payload`]), and opening one ([`Opener`]), which the tracker does for a server.
    pub use crate::payload::{
        ARGUMENT_LEN, Action, BuildError, DATAGRAM_LEN, MAC_LEN, MAC_OFFSET, MAX_DATAGRAM_LEN,
        MAX_PADDING, MAX_SERVICES, Opener, PLAINTEXT_LEN, RejectReason, Request, WireNoise,
        build_payload, carried_mac, decode_plaintext, encode_plaintext, is_action_argument,
        is_action_name, is_payload_len,
    };
}

pub use action::ArgumentRuleError;
pub use derive::{ClientKeys, KeysError, SequenceError};
pub use knock::{KnockError, KnockPlan, KnockRequest, plan_knock};
pub use params::ParamsError;
pub use profile::{ConfigError, Profile};
pub use service::{Proto, Service, ServiceParseError};
pub use time::UnixMillis;
pub use tracker::{Event, Incoming, Tracker, TrackerConfig};
pub use uri::UriError;
pub use wire::{BuildError, RejectReason};

// Hooks for the fuzz harness (`fuzz/harness`), which holds the fuzz targets' bodies: only with
// `--cfg fuzzing` (cargo-fuzz) or the `test-hooks` feature (which the harness turns on).
#[cfg(any(fuzzing, feature = "test-hooks"))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod vectors;
