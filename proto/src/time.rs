//! Time as the protocol sees it: milliseconds since the Unix epoch, and time steps.

use std::fmt;

/// A point in time: milliseconds since 1970-01-01T00:00:00Z (UTC, leap seconds ignored).
///
/// The protocol crate never reads the clock; callers pass `now` in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// From whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        UnixMillis(secs.saturating_mul(1000))
    }

    /// Whole seconds (rounded down).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// The time step counter: `floor(unix_seconds / step_seconds)`.
    ///
    /// `step_seconds` must not be zero ([`crate::KnockParams::validate`] guarantees it); a zero
    /// step is treated as one second rather than dividing by zero.
    pub const fn counter(self, step_seconds: u32) -> u64 {
        let step = if step_seconds == 0 {
            1
        } else {
            step_seconds as u64
        };
        self.as_secs() / step
    }

    /// `self + ms`, saturating.
    pub const fn plus_millis(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }

    /// Shifts by a signed number of milliseconds, saturating at the ends of the range.
    pub const fn offset_millis(self, ms: i64) -> Self {
        UnixMillis(self.0.saturating_add_signed(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub const fn since(self, earlier: UnixMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Debug for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

/// The acceptance window around `now`: counters `c - skew_steps ..= c + skew_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWindow {
    /// Length of a time step in seconds (at least 1).
    pub step_seconds: u32,
    /// Number of steps accepted on either side of the current one.
    pub skew_steps: u32,
}

impl TimeWindow {
    /// The counters accepted at `now`, lowest first.
    pub fn counters(&self, now: UnixMillis) -> std::ops::RangeInclusive<u64> {
        let c = now.counter(self.step_seconds);
        let skew = u64::from(self.skew_steps);
        c.saturating_sub(skew)..=c.saturating_add(skew)
    }

    /// Whether `counter` is inside the window at `now`.
    pub fn contains(&self, now: UnixMillis, counter: u64) -> bool {
        self.counters(now).contains(&counter)
    }
}
