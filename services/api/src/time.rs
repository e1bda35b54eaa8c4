//! Times at the HTTP edge: RFC 3339 strings or integer epoch milliseconds.

use chrono::DateTime;
use signals_schemas::Millis;

pub use signals_schemas::now_millis;

/// Largest epoch milliseconds accepted (18 digits, as the API document
/// states): far beyond any real time, and always an `i64`.
pub const MAX_EPOCH_MILLIS: i64 = 999_999_999_999_999_999;

/// Parses a query-string time: RFC 3339 or integer epoch milliseconds
/// (an optional `-` and at most 18 digits).
pub fn parse_time(text: &str) -> Result<Millis, String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .ok()
            .filter(|ms| ms.abs() <= MAX_EPOCH_MILLIS)
            .ok_or_else(|| format!("`{text}`: epoch milliseconds have at most 18 digits"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("`{text}` is not an RFC 3339 time or integer epoch milliseconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(parse_time("1795428000123"), Ok(1_795_428_000_123));
        assert_eq!(
            parse_time("2026-11-23T10:00:00.123Z"),
            Ok(1_795_428_000_123)
        );
        assert_eq!(
            parse_time("2026-11-23T11:00:00.123+01:00"),
            Ok(1_795_428_000_123)
        );
        assert!(parse_time("1234567890123456789").is_err());
        assert!(parse_time("+5").is_err());
        assert_eq!(parse_time("-5"), Ok(-5));
        assert_eq!(
            parse_time("yesterday"),
            Err("`yesterday` is not an RFC 3339 time or integer epoch milliseconds".to_owned())
        );
    }
}
