//! Times as RFC 3339 text (`2026-01-01T12:00:00Z`): how both programs print a time (sesamed's
//! log lines, `sesamed status` and its JSON, `sesame ports`) and read one (`expires` in
//! sesamed's configuration, `sesame ports --at`). The calendar maths is the `time` crate's.

use sesame_proto::UnixMillis;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a text is not a time [`parse`] accepts. Its message names the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rfc3339Error {
    /// The text is not an RFC 3339 time (the reason is the `time` crate's).
    #[error("'{text}' is not an RFC 3339 time ({reason})")]
    Invalid {
        /// The text.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An RFC 3339 time before 1970-01-01T00:00:00Z, which a [`UnixMillis`] cannot hold.
    #[error("'{text}' is before 1970")]
    Before1970 {
        /// The text.
        text: String,
    },
}

/// `t` in UTC, with the fraction of a second only when it is not zero
/// (`2026-01-01T12:00:00Z`, `2026-01-01T12:00:00.25Z`); `None` after the year 9999.
pub fn format(t: UnixMillis) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Reads an RFC 3339 time (any offset; a fraction finer than a millisecond is cut off).
pub fn parse(text: &str) -> Result<UnixMillis, Rfc3339Error> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| Rfc3339Error::Invalid {
        text: text.to_owned(),
        reason: e.to_string(),
    })?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map(UnixMillis)
        .map_err(|_| Rfc3339Error::Before1970 {
            text: text.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch from GNU date (`date -u -d TIME +%s`), not from the code tested.
    const KNOWN: &[(&str, u64)] = &[
        ("1970-01-01T00:00:00Z", 0),
        ("1972-12-31T23:59:59Z", 94_694_399),
        ("2000-02-29T00:00:00Z", 951_782_400),
        ("2000-03-01T00:00:00Z", 951_868_800),
        ("2024-02-29T23:59:59Z", 1_709_251_199),
        ("2024-03-01T00:00:00Z", 1_709_251_200),
        ("2026-01-01T12:00:00Z", 1_767_268_800),
        ("2100-03-01T00:00:00Z", 4_107_542_400),
        ("9999-12-31T23:59:59Z", 253_402_300_799),
    ];

    #[test]
    fn known_times_format_and_parse_both_ways() {
        for &(text, secs) in KNOWN {
            let t = UnixMillis::from_secs(secs);
            assert_eq!(format(t).as_deref(), Some(text), "{secs}");
            assert_eq!(parse(text), Ok(t), "{text}");
        }
    }

    /// The last millisecond of a leap day and of a year, where a day or month off by one shows.
    #[test]
    fn the_edges_of_days_and_years() {
        let leap_day_end = UnixMillis(1_709_251_199_999);
        assert_eq!(
            format(leap_day_end).as_deref(),
            Some("2024-02-29T23:59:59.999Z")
        );
        assert_eq!(
            format(leap_day_end.plus_millis(1)).as_deref(),
            Some("2024-03-01T00:00:00Z")
        );
        assert_eq!(
            format(UnixMillis(94_694_399_999)).as_deref(),
            Some("1972-12-31T23:59:59.999Z")
        );
        assert_eq!(
            format(UnixMillis(94_694_400_000)).as_deref(),
            Some("1973-01-01T00:00:00Z")
        );
    }

    /// The exact text the daemon's log, status and JSON have always shown.
    #[test]
    fn a_fraction_is_shown_only_when_there_is_one() {
        assert_eq!(
            format(UnixMillis(1_500)).as_deref(),
            Some("1970-01-01T00:00:01.5Z")
        );
        assert_eq!(
            format(UnixMillis(1_250)).as_deref(),
            Some("1970-01-01T00:00:01.25Z")
        );
        assert_eq!(
            format(UnixMillis(1_001)).as_deref(),
            Some("1970-01-01T00:00:01.001Z")
        );
        assert_eq!(
            format(UnixMillis(1_000)).as_deref(),
            Some("1970-01-01T00:00:01Z")
        );
    }

    #[test]
    fn after_the_year_9999_there_is_no_text() {
        let last = UnixMillis(253_402_300_799_999);
        assert_eq!(format(last).as_deref(), Some("9999-12-31T23:59:59.999Z"));
        assert_eq!(format(last.plus_millis(1)), None);
        assert_eq!(format(UnixMillis(u64::MAX)), None);
    }

    #[test]
    fn parse_takes_offsets_and_fractions() {
        let noon = UnixMillis::from_secs(1_767_268_800);
        assert_eq!(parse("2026-01-01T13:00:00+01:00"), Ok(noon));
        assert_eq!(parse("2026-01-01t12:00:00z"), Ok(noon));
        // RFC 3339 lets a space stand for the T (section 5.6's note); `time` takes it.
        assert_eq!(parse("2026-01-01 12:00:00Z"), Ok(noon));
        assert_eq!(
            parse("2026-01-01T12:00:00.1239Z"),
            Ok(noon.plus_millis(123))
        );
    }

    #[test]
    fn parse_errors_name_the_text() {
        let e = parse("tomorrow").unwrap_err();
        assert_eq!(
            e.to_string(),
            "'tomorrow' is not an RFC 3339 time (the 'year' component could not be parsed)"
        );
        assert_eq!(
            parse("1969-12-31T23:59:59Z").unwrap_err().to_string(),
            "'1969-12-31T23:59:59Z' is before 1970"
        );
        assert!(matches!(
            parse("2026-02-30T12:00:00Z"),
            Err(Rfc3339Error::Invalid { .. })
        ));
    }
}
