//! Time as the protocol sees it: milliseconds since the Unix epoch, and time steps.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// `step_seconds` must not be zero ([`crate::params::KnockParams::new`] guarantees it); a zero
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

/// A time of a clock, such as `SystemTime::now()` read by the caller: 0 before the epoch, and
/// `u64::MAX` milliseconds at most. A conversion only: this crate never reads the clock itself.
impl From<SystemTime> for UnixMillis {
    fn from(t: SystemTime) -> Self {
        t.duration_since(UNIX_EPOCH).map_or(UnixMillis(0), |d| {
            UnixMillis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::UnixMillis;

    #[test]
    fn a_system_time_converts_to_whole_milliseconds_since_the_epoch() {
        let at = |d: Duration| UnixMillis::from(UNIX_EPOCH + d);
        assert_eq!(at(Duration::ZERO), UnixMillis(0));
        assert_eq!(at(Duration::from_micros(1_999)), UnixMillis(1));
        assert_eq!(
            at(Duration::from_secs(1_767_268_800)),
            UnixMillis::from_secs(1_767_268_800)
        );
        assert_eq!(
            UnixMillis::from(UNIX_EPOCH - Duration::from_secs(1)),
            UnixMillis(0)
        );
    }

    #[test]
    fn a_time_past_u64_milliseconds_saturates() {
        let far = UNIX_EPOCH.checked_add(Duration::from_millis(u64::MAX) + Duration::from_secs(1));
        // Only where SystemTime reaches that far (it does on Linux).
        if let Some(far) = far {
            assert_eq!(UnixMillis::from(far), UnixMillis(u64::MAX));
        }
    }
}
