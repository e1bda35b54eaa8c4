//! The rules every event on the log satisfies, whoever wrote it.
//!
//! The collector applies them to JSON ([`crate::json`]) and the Avro decoder
//! to every record it reads ([`crate::avro::decode`]), so an outside producer
//! writing straight to the log meets the same bar. Each refusal names the
//! field and the limit.

use chrono::{DateTime, SecondsFormat};

use crate::event::{Event, Millis};

/// Longest id (event, user, item) in bytes; ids are non-empty and free of
/// control characters.
pub const MAX_ID_BYTES: usize = 256;
/// Longest search query, attribute value or retraction reason in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Most attributes per event.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Most event ids in one retraction.
pub const MAX_RETRACTED_IDS: usize = 10_000;
/// Earliest accepted `event_time`: 2000-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: Millis = 946_684_800_000;
/// First `event_time` past the accepted range: 2101-01-01T00:00:00Z, so the
/// years 2000 to 2100 inclusive are accepted.
pub const MAX_EVENT_TIME: Millis = 4_133_980_800_000;

/// One event is refused; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(pub String);

pub(crate) fn error(message: impl Into<String>) -> EventError {
    EventError(message.into())
}

/// At most `max` characters of `text` for an error message, marked when cut.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// An id (`name` says which) is non-empty, short, and has no control characters.
pub fn check_id(name: &str, id: &str) -> Result<(), EventError> {
    if id.is_empty() {
        return Err(error(format!("`{name}` must not be empty")));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(error(format!(
            "`{name}` is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(error(format!(
            "`{name}` must not contain control characters"
        )));
    }
    Ok(())
}

/// The rules every event on the log satisfies.
pub fn check_event(event: &Event) -> Result<(), EventError> {
    check_id("event_id", &event.event_id)?;
    check_id("user_id", &event.user_id)?;
    match &event.item_id {
        Some(item) => check_id("item_id", item)?,
        None if event.event_type.requires_item() => {
            return Err(error(format!(
                "`item_id` is required for {} events",
                event.event_type
            )))
        }
        None => {}
    }
    match &event.query {
        Some(query) if query.len() > MAX_TEXT_BYTES => {
            return Err(error(format!(
                "`query` is longer than {MAX_TEXT_BYTES} bytes"
            )))
        }
        Some(query) if query.trim().is_empty() && event.event_type.requires_query() => {
            return Err(error("`query` must not be blank for search events"))
        }
        Some(_) => {}
        None if event.event_type.requires_query() => {
            return Err(error("`query` is required for search events"))
        }
        None => {}
    }
    if !(MIN_EVENT_TIME..MAX_EVENT_TIME).contains(&event.event_time) {
        return Err(error(format!(
            "`event_time` {} is outside the years 2000 to 2100",
            format_time(event.event_time)
        )));
    }
    if event.attributes.len() > MAX_ATTRIBUTES {
        return Err(error(format!(
            "`attributes` has {} entries; at most {MAX_ATTRIBUTES}",
            event.attributes.len()
        )));
    }
    for (key, value) in event.attributes.iter() {
        if key.is_empty() {
            return Err(error("attribute keys must not be empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(error(format!(
                "attribute key `{}` is longer than {MAX_KEY_BYTES} bytes",
                excerpt(key, 32)
            )));
        }
        if value.len() > MAX_TEXT_BYTES {
            return Err(error(format!(
                "`attributes.{key}` is longer than {MAX_TEXT_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// RFC 3339 with milliseconds and `Z`, e.g. `2026-11-23T10:00:00.123Z`; the
/// plain number if chrono cannot represent it.
pub fn format_time(t: Millis) -> String {
    DateTime::from_timestamp_millis(t).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::Attributes;
    use smol_str::SmolStr;

    fn search() -> Event {
        Event {
            event_id: "e-1".into(),
            user_id: "u-1".into(),
            event_type: EventType::Search,
            item_id: None,
            query: Some("lofts".into()),
            event_time: MIN_EVENT_TIME,
            attributes: Attributes::new(),
        }
    }

    fn refusal(change: impl FnOnce(&mut Event)) -> String {
        let mut event = search();
        change(&mut event);
        check_event(&event).expect_err("refused").0
    }

    #[test]
    fn the_bounds_are_the_years_2000_to_2100() {
        assert_eq!(format_time(MIN_EVENT_TIME), "2000-01-01T00:00:00.000Z");
        assert_eq!(format_time(MAX_EVENT_TIME), "2101-01-01T00:00:00.000Z");
        let mut event = search();
        event.event_time = MAX_EVENT_TIME - 1;
        assert_eq!(check_event(&event), Ok(()));
        assert_eq!(
            refusal(|e| e.event_time = MAX_EVENT_TIME),
            "`event_time` 2101-01-01T00:00:00.000Z is outside the years 2000 to 2100"
        );
        assert_eq!(
            refusal(|e| e.event_time = MIN_EVENT_TIME - 1),
            "`event_time` 1999-12-31T23:59:59.999Z is outside the years 2000 to 2100"
        );
        assert_eq!(
            refusal(|e| e.event_time = i64::MAX),
            "`event_time` 9223372036854775807 is outside the years 2000 to 2100"
        );
    }

    #[test]
    fn every_rule_has_its_message() {
        let long = |n: usize| "x".repeat(n);
        let cases: Vec<(String, &str)> = vec![
            (
                refusal(|e| e.event_id = SmolStr::default()),
                "`event_id` must not be empty",
            ),
            (
                refusal(|e| e.user_id = long(257).into()),
                "`user_id` is longer than 256 bytes",
            ),
            (
                refusal(|e| e.event_id = "a\u{7f}".into()),
                "`event_id` must not contain control characters",
            ),
            (
                refusal(|e| e.item_id = Some("i\tj".into())),
                "`item_id` must not contain control characters",
            ),
            (
                refusal(|e| e.event_type = EventType::WishlistRemove),
                "`item_id` is required for wishlist_remove events",
            ),
            (
                refusal(|e| e.query = None),
                "`query` is required for search events",
            ),
            (
                refusal(|e| e.query = Some(" \t".into())),
                "`query` must not be blank for search events",
            ),
            (
                refusal(|e| e.query = Some(long(1025).into())),
                "`query` is longer than 1024 bytes",
            ),
            (
                refusal(|e| {
                    e.attributes = (0..65).map(|i| (i.to_string(), String::new())).collect()
                }),
                "`attributes` has 65 entries; at most 64",
            ),
            (
                refusal(|e| {
                    e.attributes.insert(String::new(), "v");
                }),
                "attribute keys must not be empty",
            ),
            (
                refusal(|e| {
                    e.attributes.insert(long(129), "v");
                }),
                "attribute key `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…` is longer than 128 bytes",
            ),
            (
                refusal(|e| {
                    e.attributes.insert("city", long(1025));
                }),
                "`attributes.city` is longer than 1024 bytes",
            ),
        ];
        for (actual, expected) in cases {
            assert_eq!(actual, expected);
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let mut event = search();
        event.event_id = "é".repeat(128).into();
        event.query = Some("q".repeat(MAX_TEXT_BYTES).into());
        event.attributes = (0..MAX_ATTRIBUTES)
            .map(|i| (format!("{i:0>128}"), "v".repeat(MAX_TEXT_BYTES)))
            .collect();
        assert_eq!(check_event(&event), Ok(()));
    }
}
