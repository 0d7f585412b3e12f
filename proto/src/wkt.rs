//! The API's times and durations (`google.protobuf.Timestamp` and
//! `Duration`, which prost maps to [`prost_types`]) to and from the
//! milliseconds the components count in.

pub use prost_types::{Duration, Timestamp};

const NANOS_PER_MS: i32 = 1_000_000;

/// Why a `Duration` from a client is not a span of whole milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0} is negative")]
    Negative(Duration),
    #[error("{0} is not a whole number of milliseconds")]
    NotWholeMillis(Duration),
    #[error("{0} is out of range (nanos must be within ±999,999,999)")]
    OutOfRange(Duration),
}

/// The instant `unix_ms` milliseconds after the Unix epoch.
pub fn timestamp(unix_ms: i64) -> Timestamp {
    Timestamp {
        seconds: unix_ms.div_euclid(1000),
        // In 0..1_000_000_000: rem_euclid(1000) is in 0..1000.
        nanos: unix_ms.rem_euclid(1000) as i32 * NANOS_PER_MS,
    }
}

/// `t` as milliseconds after the Unix epoch, rounded down, saturating at
/// the ends of `i64`.
pub fn unix_ms(t: &Timestamp) -> i64 {
    let mut t = *t;
    t.normalize();
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos.div_euclid(NANOS_PER_MS)))
}

/// A span of `ms` milliseconds.
pub fn duration(ms: u64) -> Duration {
    Duration {
        // At most u64::MAX / 1000, below i64::MAX.
        seconds: (ms / 1000) as i64,
        // In 0..1_000_000_000.
        nanos: (ms % 1000) as i32 * NANOS_PER_MS,
    }
}

/// `d` in milliseconds: refused when negative, malformed or finer than a
/// millisecond (the scheduler counts time in milliseconds).
pub fn duration_ms(d: &Duration) -> Result<u64, DurationError> {
    if !(-999_999_999..=999_999_999).contains(&d.nanos) {
        return Err(DurationError::OutOfRange(*d));
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err(DurationError::Negative(*d));
    }
    if d.nanos % NANOS_PER_MS != 0 {
        return Err(DurationError::NotWholeMillis(*d));
    }
    u64::try_from(d.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add((d.nanos / NANOS_PER_MS) as u64))
        .ok_or(DurationError::OutOfRange(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_milliseconds_on_both_sides_of_the_epoch() {
        for ms in [0, 1, 999, 1000, 1_795_000_000_123, -1, -999, -1001] {
            let t = timestamp(ms);
            assert!((0..1_000_000_000).contains(&t.nanos), "{t:?}");
            assert_eq!(unix_ms(&t), ms);
        }
        assert_eq!(timestamp(1_500).to_string(), "1970-01-01T00:00:01.500Z");
        assert_eq!(timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn durations_round_trip_and_print_as_protobuf_json_does() {
        for ms in [0, 1, 1500, 90_000, 365 * 86_400_000] {
            assert_eq!(duration_ms(&duration(ms)), Ok(ms));
        }
        assert_eq!(duration(1500).to_string(), "1.500s");
        assert_eq!(duration(90_000).to_string(), "90s");
    }

    #[test]
    fn negative_sub_millisecond_and_malformed_durations_are_refused() {
        let d = |seconds, nanos| Duration { seconds, nanos };
        assert!(matches!(
            duration_ms(&d(-1, 0)),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            duration_ms(&d(0, -1_000_000)),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            duration_ms(&d(1, 1)),
            Err(DurationError::NotWholeMillis(_))
        ));
        assert!(matches!(
            duration_ms(&d(0, 1_000_000_000)),
            Err(DurationError::OutOfRange(_))
        ));
        assert!(matches!(
            duration_ms(&d(i64::MAX, 0)),
            Err(DurationError::OutOfRange(_))
        ));
        assert_eq!(
            duration_ms(&d(1, 5)).unwrap_err().to_string(),
            "1.000000005s is not a whole number of milliseconds"
        );
    }
}
