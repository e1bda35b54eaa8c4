//! Times at the HTTP edge: RFC 3339 strings or integer epoch milliseconds.

use chrono::DateTime;
use signals_schemas::Millis;

pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Parses a query-string time: RFC 3339 or integer epoch milliseconds.
pub fn parse_time(text: &str) -> Result<Millis, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
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
        assert_eq!(
            parse_time("yesterday"),
            Err("`yesterday` is not an RFC 3339 time or integer epoch milliseconds".to_owned())
        );
    }
}
