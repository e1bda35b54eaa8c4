//! The JSON the collector accepts, checked field by field.
//!
//! A body is a JSON array of events, or NDJSON (one event object per line,
//! blank lines ignored): NDJSON when the content type says
//! `application/x-ndjson` (or `application/jsonl`) or when the first
//! non-blank byte is not `[`. A body that is neither is refused whole with a
//! [`BodyError`] that gives the line and column; otherwise every event is
//! accepted or refused on its own with an [`EventError`] naming the field, and
//! in NDJSON a line that is not JSON refuses only that event. The rules shared
//! with the log are in [`crate::rules`].

#[cfg(test)]
mod tests;

use chrono::DateTime;
use serde_json::{Map, Value};

use crate::event::{Event, EventType, Millis, Retraction};
pub use crate::rules::{
    check_event, format_time, EventError, MAX_ATTRIBUTES, MAX_EVENT_TIME, MAX_ID_BYTES,
    MAX_KEY_BYTES, MAX_RETRACTED_IDS, MAX_TEXT_BYTES, MIN_EVENT_TIME,
};
use crate::rules::{check_id, error, excerpt};
use crate::Attributes;

/// The fields of an event object, in the contract's order.
pub const EVENT_FIELDS: [&str; 7] = [
    "event_id",
    "user_id",
    "event_type",
    "item_id",
    "query",
    "event_time",
    "attributes",
];

const RETRACTION_FIELDS: [&str; 2] = ["event_ids", "reason"];

/// The whole body is unusable; nothing in it counts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// Parses a collector body into one result per event, in order: the index in
/// the returned vector is the event's index in the array, or its rank among
/// the non-blank lines of NDJSON.
pub fn parse_events(
    body: &[u8],
    content_type: Option<&str>,
) -> Result<Vec<Result<Event, EventError>>, BodyError> {
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err(BodyError(
            "the body is empty: send a JSON array of events or NDJSON".into(),
        ));
    };
    match body[start] {
        b'[' if content_type.is_some_and(is_ndjson) => Err(BodyError(
            "an NDJSON body must have one JSON object per line, not an array".into(),
        )),
        b'[' => match serde_json::from_slice(body) {
            Ok(Value::Array(items)) => Ok(items.into_iter().map(event_from_json).collect()),
            Ok(_) => Err(BodyError("a JSON body must be an array of events".into())),
            Err(e) => Err(BodyError(format!("the body is not valid JSON: {e}"))),
        },
        b'{' => Ok(ndjson(body)),
        other => {
            let before = &body[..start];
            let line = 1 + before.iter().filter(|b| **b == b'\n').count();
            let column = 1 + before.iter().rev().take_while(|b| **b != b'\n').count();
            let found = if other.is_ascii_graphic() {
                format!("`{}`", char::from(other))
            } else {
                format!("byte 0x{other:02x}")
            };
            Err(BodyError(format!(
                "the body is neither a JSON array nor NDJSON: expected `[` or `{{` \
                 at line {line} column {column}, found {found}"
            )))
        }
    }
}

fn is_ndjson(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    [
        "application/x-ndjson",
        "application/jsonl",
        "application/ndjson",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

fn ndjson(body: &[u8]) -> Vec<Result<Event, EventError>> {
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, line)| {
            serde_json::from_slice(line)
                .map_err(|e| line_not_json(index, &e))
                .and_then(event_from_json)
        })
        .collect()
}

/// The rejection of NDJSON line `index` (from 0) that is not JSON, with
/// the column in that line.
pub fn line_not_json(index: usize, e: &serde_json::Error) -> EventError {
    // serde_json counts from the start of the line it was given.
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&position).unwrap_or(&full);
    error(format!(
        "line {} is not JSON: {message} at column {}",
        index + 1,
        e.column()
    ))
}

/// Parses `{"event_ids": [...], "reason": "..."}`; `reason` is optional.
pub fn parse_retraction(body: &[u8]) -> Result<Retraction, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError(
            "the body is empty: send {\"event_ids\": [...], \"reason\": \"...\"}".into(),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BodyError(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(BodyError(format!(
            "a retraction must be a JSON object with `event_ids`, not {}",
            kind(&value)
        )));
    };
    unknown_field(&object, &RETRACTION_FIELDS).map_err(|e| BodyError(e.0))?;
    let ids = match object.remove("event_ids") {
        Some(Value::Array(ids)) => ids,
        Some(other) => {
            return Err(BodyError(format!(
                "`event_ids` must be an array of strings, not {}",
                kind(&other)
            )))
        }
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
            other => Err(error(format!(
                "`event_ids[{i}]` must be a string, not {}",
                kind(&other)
            ))),
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
        Some(other) => {
            return Err(BodyError(format!(
                "`reason` must be a string, not {}",
                kind(&other)
            )))
        }
    };
    Ok(Retraction { event_ids, reason })
}

/// "a string", "an array", ... for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn unknown_field(object: &Map<String, Value>, known: &[&str]) -> Result<(), EventError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(error(format!(
            "unknown field `{}` (expected {})",
            excerpt(unknown, 64),
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A string field that may be absent or `null`.
fn optional_string(
    object: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<String>, EventError> {
    match object.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(error(format!(
            "`{name}` must be a string, not {}",
            kind(&other)
        ))),
    }
}

fn required_string(object: &mut Map<String, Value>, name: &str) -> Result<String, EventError> {
    match object.remove(name) {
        None => Err(error(format!("missing `{name}`"))),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(error(format!(
            "`{name}` must be a string, not {}",
            kind(&other)
        ))),
    }
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
        return Err(error(format!(
            "an event must be a JSON object, not {}",
            kind(&value)
        )));
    };
    unknown_field(&object, &EVENT_FIELDS)?;
    let event_id = required_string(&mut object, "event_id")?;
    let user_id = required_string(&mut object, "user_id")?;
    let type_name = required_string(&mut object, "event_type")?;
    let event_type = EventType::parse(&type_name).ok_or_else(|| {
        error(format!(
            "unknown `event_type` `{}` (expected one of {})",
            excerpt(&type_name, 64),
            EventType::ALL.map(EventType::as_str).join(", ")
        ))
    })?;
    let item_id = optional_string(&mut object, "item_id")?;
    let query = optional_string(&mut object, "query")?;
    let event_time = match object.remove("event_time") {
        None => return Err(error("missing `event_time`")),
        Some(value) => parse_event_time(&value).ok_or_else(|| {
            error(format!(
                "`event_time` must be an RFC 3339 string or integer epoch milliseconds, not {}",
                excerpt(&value.to_string(), 64)
            ))
        })?,
    };
    let attributes = match object.remove("attributes") {
        None | Some(Value::Null) => Attributes::new(),
        Some(Value::Object(map)) => attributes(map)?,
        Some(other) => {
            return Err(error(format!(
                "`attributes` must be an object, not {}",
                kind(&other)
            )))
        }
    };
    let event = Event {
        event_id: event_id.into(),
        user_id: user_id.into(),
        event_type,
        item_id: item_id.map(Into::into),
        query: query.map(Into::into),
        event_time,
        attributes,
    };
    check_event(&event)?;
    Ok(event)
}

/// Strings as they are, numbers and booleans as their JSON text.
fn attributes(map: Map<String, Value>) -> Result<Attributes, EventError> {
    if map.len() > MAX_ATTRIBUTES {
        // Refuse before copying a huge object; check_event says the same.
        return Err(error(format!(
            "`attributes` has {} entries; at most {MAX_ATTRIBUTES}",
            map.len()
        )));
    }
    map.into_iter()
        .map(|(key, value)| match value {
            Value::String(s) => Ok((key, s)),
            Value::Number(n) => Ok((key, n.to_string())),
            Value::Bool(b) => Ok((key, b.to_string())),
            other => Err(error(format!(
                "`attributes.{}` must be a string, number or boolean, not {}",
                excerpt(&key, 64),
                kind(&other)
            ))),
        })
        .collect()
}

/// An event in the collector's JSON shape, every field present (`null` when
/// absent), `event_time` as RFC 3339 with milliseconds and `Z`.
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
