//! Time helpers shared by both layers; all times are epoch milliseconds, UTC.

use chrono::{DateTime, SecondsFormat};
use signals_schemas::Millis;

pub const SECOND: Millis = 1_000;
pub const HOUR: Millis = 3_600 * SECOND;
pub const DAY: Millis = 24 * HOUR;

/// RFC 3339 with milliseconds and `Z`, the only time format the API prints.
pub fn format_millis(t: Millis) -> String {
    DateTime::from_timestamp_millis(t)
        .map(|dt| dt.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| t.to_string())
}

/// The start of the hour containing `t`.
pub fn floor_hour(t: Millis) -> Millis {
    t - t.rem_euclid(HOUR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_z() {
        assert_eq!(format_millis(1_795_428_000_123), "2026-11-23T10:00:00.123Z");
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn floors_to_the_hour() {
        assert_eq!(floor_hour(HOUR + 1), HOUR);
        assert_eq!(floor_hour(HOUR), HOUR);
        assert_eq!(floor_hour(-1), -HOUR);
    }
}
