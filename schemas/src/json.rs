//! The JSON the collector accepts, checked field by field.
//!
//! A body is a JSON array of events or NDJSON (one event per line). A body
//! that is neither is refused whole ([`BodyError`]); otherwise each event is
//! accepted or refused on its own with a reason naming the field
//! ([`EventError`]). The rules live in [`check_event`], which the Avro
//! decoder applies too, so records from outside producers meet the same bar.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value};

use crate::event::{Event, EventType, Millis, Retraction};

/// Longest id (event, user, item) in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest search query or attribute value in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Most attributes per event.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute key in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Most event ids in one retraction.
pub const MAX_RETRACTED_IDS: usize = 10_000;
/// Accepted `event_time` range: 2000-01-01T00:00:00Z up to 2100-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: Millis = 946_684_800_000;
pub const MAX_EVENT_TIME: Millis = 4_102_444_800_000;

const FIELDS: [&str; 7] = [
    "event_id",
    "user_id",
    "event_type",
    "item_id",
    "query",
    "event_time",
    "attributes",
];

/// The whole body is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// One event is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EventError(pub String);

fn error(message: impl Into<String>) -> EventError {
    EventError(message.into())
}

/// Parses a collector body: a JSON array, or NDJSON when the content type
/// says so or the first non-blank byte is not `[`.
pub fn parse_events(
    body: &[u8],
    content_type: Option<&str>,
) -> Result<Vec<Result<Event, EventError>>, BodyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(BodyError(
            "the body is empty: send a JSON array of events or NDJSON".into(),
        ));
    };
    let ndjson = content_type.is_some_and(|t| {
        t.starts_with("application/x-ndjson") || t.starts_with("application/jsonl")
    });
    if ndjson || *first != b'[' {
        if *first == b'[' {
            return Err(BodyError(
                "an NDJSON body must have one JSON object per line, not an array".into(),
            ));
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| BodyError(format!("the body is not UTF-8: {e}")))?;
        return Ok(text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .enumerate()
            .map(|(index, line)| {
                serde_json::from_str::<Value>(line)
                    .map_err(|e| error(format!("line {} is not JSON: {e}", index + 1)))
                    .and_then(event_from_json)
            })
            .collect());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BodyError(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Array(items) => Ok(items.into_iter().map(event_from_json).collect()),
        _ => Err(BodyError("a JSON body must be an array of events".into())),
    }
}

/// Parses `{"event_ids": [...], "reason": "..."}`.
pub fn parse_retraction(body: &[u8]) -> Result<Retraction, BodyError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BodyError(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(BodyError(
            "a retraction must be a JSON object with `event_ids`".into(),
        ));
    };
    if let Some(unknown) = object.keys().find(|k| *k != "event_ids" && *k != "reason") {
        return Err(BodyError(format!(
            "unknown field `{unknown}` (expected event_ids, reason)"
        )));
    }
    let ids = match object.remove("event_ids") {
        Some(Value::Array(ids)) => ids,
        Some(_) => return Err(BodyError("`event_ids` must be an array of strings".into())),
        None => return Err(BodyError("missing `event_ids`".into())),
    };
    if ids.is_empty() {
        return Err(BodyError("`event_ids` must not be empty".into()));
    }
    if ids.len() > MAX_RETRACTED_IDS {
        return Err(BodyError(format!(
            "`event_ids` has {} ids; at most {MAX_RETRACTED_IDS} per retraction",
            ids.len()
        )));
    }
    let event_ids = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| match id {
            Value::String(s) => check_id(&format!("event_ids[{i}]"), &s).map(|()| s),
            _ => Err(error(format!("`event_ids[{i}]` must be a string"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BodyError(e.0))?;
    let reason = match object.remove("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= MAX_TEXT_BYTES => s,
        Some(Value::String(_)) => {
            return Err(BodyError(format!(
                "`reason` is longer than {MAX_TEXT_BYTES} bytes"
            )))
        }
        Some(_) => return Err(BodyError("`reason` must be a string".into())),
    };
    Ok(Retraction { event_ids, reason })
}

fn string_field(object: &mut Map<String, Value>, name: &str) -> Result<Option<String>, EventError> {
    match object.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(error(format!("`{name}` must be a string"))),
    }
}

fn required(object: &mut Map<String, Value>, name: &str) -> Result<String, EventError> {
    string_field(object, name)?.ok_or_else(|| error(format!("missing `{name}`")))
}

/// Parses an RFC 3339 string or integer epoch milliseconds.
pub fn parse_event_time(value: &Value) -> Option<Millis> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => None,
    }
}

/// One JSON value as an event, or why not.
pub fn event_from_json(value: Value) -> Result<Event, EventError> {
    let Value::Object(mut object) = value else {
        return Err(error("an event must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(error(format!(
            "unknown field `{unknown}` (expected {})",
            FIELDS.join(", ")
        )));
    }
    let event_id = required(&mut object, "event_id")?;
    let user_id = required(&mut object, "user_id")?;
    let type_name = required(&mut object, "event_type")?;
    let event_type = EventType::parse(&type_name).ok_or_else(|| {
        error(format!(
            "unknown `event_type` `{type_name}` (expected one of {})",
            EventType::ALL.map(EventType::as_str).join(", ")
        ))
    })?;
    let item_id = string_field(&mut object, "item_id")?;
    let query = string_field(&mut object, "query")?;
    let event_time = match object.remove("event_time") {
        None | Some(Value::Null) => return Err(error("missing `event_time`")),
        Some(value) => parse_event_time(&value).ok_or_else(|| {
            error("`event_time` must be an RFC 3339 string or integer epoch milliseconds")
        })?,
    };
    let attributes = match object.remove("attributes") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(key, value)| match value {
                Value::String(s) => Ok((key, s)),
                Value::Number(n) => Ok((key, n.to_string())),
                Value::Bool(b) => Ok((key, b.to_string())),
                _ => Err(error(format!(
                    "`attributes.{key}` must be a string, number or boolean"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(error("`attributes` must be an object")),
    };
    let event = Event {
        event_id,
        user_id,
        event_type,
        item_id,
        query,
        event_time,
        attributes,
    };
    check_event(&event)?;
    Ok(event)
}

fn check_id(name: &str, id: &str) -> Result<(), EventError> {
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
            "`event_time` {} is outside the accepted range 2000-01-01 to 2100-01-01",
            format_time(event.event_time)
        )));
    }
    if event.attributes.len() > MAX_ATTRIBUTES {
        return Err(error(format!(
            "{} attributes; at most {MAX_ATTRIBUTES}",
            event.attributes.len()
        )));
    }
    for (key, value) in &event.attributes {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(error(format!(
                "attribute keys must be 1 to {MAX_KEY_BYTES} bytes"
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

fn format_time(t: Millis) -> String {
    DateTime::from_timestamp_millis(t).map_or_else(
        || t.to_string(),
        |d| d.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// An event in the collector's JSON shape; times as RFC 3339 with milliseconds.
pub fn to_json(event: &Event) -> Value {
    serde_json::json!({
        "event_id": event.event_id,
        "user_id": event.user_id,
        "event_type": event.event_type.as_str(),
        "item_id": event.item_id,
        "query": event.query,
        "event_time": format_time(event.event_time),
        "attributes": event.attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::arb_event;
    use proptest::prelude::*;
    use serde_json::json;

    fn one(value: Value) -> Result<Event, String> {
        event_from_json(value).map_err(|e| e.0)
    }

    fn view() -> Value {
        json!({"event_id": "e-1", "user_id": "u-42", "event_type": "view", "item_id": "listing-9",
               "query": null, "event_time": "2026-11-23T10:00:00.123Z", "attributes": {"city": "Paris"}})
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        base.as_object_mut().map(|o| o.remove(key));
        base
    }

    #[test]
    fn the_contract_example_parses() {
        let event = one(view()).expect("valid");
        assert_eq!(event.event_time, 1_795_428_000_123);
        assert_eq!(
            event.attributes.get("city").map(String::as_str),
            Some("Paris")
        );
        let millis = one(with(view(), "event_time", json!(1_795_428_000_123_i64))).expect("valid");
        assert_eq!(millis, event);
    }

    #[test]
    fn every_refusal_names_the_field() {
        let cases = [
            (without(view(), "event_id"), "missing `event_id`"),
            (with(view(), "user_id", json!(42)), "`user_id` must be a string"),
            (with(view(), "event_type", json!("purchase")), "unknown `event_type` `purchase` (expected one of view, click, search, wishlist_add, wishlist_remove)"),
            (without(view(), "item_id"), "`item_id` is required for view events"),
            (with(with(view(), "event_type", json!("search")), "item_id", Value::Null), "`query` is required for search events"),
            (with(view(), "event_time", json!("yesterday")), "`event_time` must be an RFC 3339 string or integer epoch milliseconds"),
            (with(view(), "event_time", json!(5)), "`event_time` 1970-01-01T00:00:00.005Z is outside the accepted range 2000-01-01 to 2100-01-01"),
            (without(view(), "event_time"), "missing `event_time`"),
            (with(view(), "colour", json!("red")), "unknown field `colour` (expected event_id, user_id, event_type, item_id, query, event_time, attributes)"),
            (with(view(), "attributes", json!({"tags": ["a"]})), "`attributes.tags` must be a string, number or boolean"),
            (with(view(), "event_id", json!("")), "`event_id` must not be empty"),
            (with(view(), "event_id", json!("x".repeat(257))), "`event_id` is longer than 256 bytes"),
            (with(view(), "user_id", json!("a\nb")), "`user_id` must not contain control characters"),
            (json!([1]), "an event must be a JSON object"),
        ];
        for (input, expected) in cases {
            assert_eq!(one(input.clone()), Err(expected.to_owned()), "{input}");
        }
    }

    #[test]
    fn numbers_and_booleans_become_attribute_text() {
        let event = one(with(
            view(),
            "attributes",
            json!({"price": 12.5, "mobile": true}),
        ))
        .expect("valid");
        assert_eq!(
            event.attributes.get("price").map(String::as_str),
            Some("12.5")
        );
        assert_eq!(
            event.attributes.get("mobile").map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn arrays_and_ndjson_with_per_event_errors() {
        let body = format!("[{}, {{\"event_id\": \"x\"}}]", view());
        let parsed = parse_events(body.as_bytes(), Some("application/json")).expect("array");
        assert!(parsed[0].is_ok());
        assert_eq!(parsed[1], Err(EventError("missing `user_id`".into())));

        let body = format!(
            "{}\n\nnot json\n{}\n",
            view(),
            with(view(), "event_id", json!("e-2"))
        );
        let parsed = parse_events(body.as_bytes(), Some("application/x-ndjson")).expect("ndjson");
        assert_eq!(parsed.len(), 3);
        assert!(parsed[0].is_ok() && parsed[2].is_ok());
        let message = parsed[1].clone().expect_err("bad line").0;
        assert!(
            message.starts_with("line 2 is not JSON: expected ident"),
            "{message}"
        );
    }

    #[test]
    fn unusable_bodies_are_refused_whole() {
        let refuse = |body: &str| parse_events(body.as_bytes(), None).expect_err("refused").0;
        assert_eq!(
            refuse("  "),
            "the body is empty: send a JSON array of events or NDJSON"
        );
        assert!(refuse("[{\"a\": 1}").starts_with("the body is not valid JSON: EOF while parsing"));
        assert_eq!(
            parse_events(b"[]", Some("application/x-ndjson"))
                .expect_err("refused")
                .0,
            "an NDJSON body must have one JSON object per line, not an array"
        );
    }

    #[test]
    fn retractions_are_checked() {
        let ok =
            parse_retraction(br#"{"event_ids": ["e-1", "e-2"], "reason": "bot"}"#).expect("valid");
        assert_eq!(
            ok,
            Retraction {
                event_ids: vec!["e-1".into(), "e-2".into()],
                reason: "bot".into()
            }
        );
        let refuse = |body: &str| parse_retraction(body.as_bytes()).expect_err("refused").0;
        assert_eq!(
            refuse(r#"{"event_ids": []}"#),
            "`event_ids` must not be empty"
        );
        assert_eq!(refuse(r#"{"reason": "x"}"#), "missing `event_ids`");
        assert_eq!(
            refuse(r#"{"event_ids": ["a", 3]}"#),
            "`event_ids[1]` must be a string"
        );
        assert_eq!(
            refuse(r#"{"event_ids": ["a"], "why": 1}"#),
            "unknown field `why` (expected event_ids, reason)"
        );
    }

    proptest! {
        #[test]
        fn events_round_trip_through_json(event in arb_event()) {
            prop_assert_eq!(event_from_json(to_json(&event)), Ok(event));
        }
    }
}
