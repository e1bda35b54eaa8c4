//! The collector's body, read in one pass with bounded memory.
//!
//! `serde_json::from_slice::<Value>` on an 8 MiB `[1,1,1,…]` holds four
//! million `Value`s (128 MiB) and then as many rejection messages. Here
//! the array (or NDJSON) is walked item by item: an item that is not an
//! object is refused by its index without being built, an object keeps
//! only the fields an event has (unknown ones are remembered by name,
//! nested values only by their kind), and the walk stops at the
//! configured number of events. The rules themselves stay in
//! [`signals_schemas::json::event_from_json`], so every message is the
//! one the collector always gave.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use signals_schemas::json::{event_from_json, line_not_json, EVENT_FIELDS, MAX_ATTRIBUTES};
use signals_schemas::{Event, EventError};

/// One result per event, in request order.
pub type ParsedEvents = Vec<Result<Event, EventError>>;

/// Why a body is refused whole.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Not a JSON array of events, nor NDJSON.
    Malformed(String),
    /// More events than one request may carry.
    TooManyEvents(usize),
}

/// Parses a collector body: a JSON array of events, or NDJSON when the
/// content type says so or the first non-blank byte is `{`.
pub fn parse(
    body: &[u8],
    content_type: Option<&str>,
    max_events: usize,
) -> Result<ParsedEvents, BodyRefusal> {
    let Some(start) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err(BodyRefusal::Malformed(
            "the body is empty: send a JSON array of events or NDJSON".into(),
        ));
    };
    match body[start] {
        b'[' if content_type.is_some_and(is_ndjson) => Err(BodyRefusal::Malformed(
            "an NDJSON body must have one JSON object per line, not an array".into(),
        )),
        b'[' => array(body, max_events),
        b'{' => ndjson(body, max_events),
        other => {
            let before = &body[..start];
            let line = 1 + before.iter().filter(|b| **b == b'\n').count();
            let column = 1 + before.iter().rev().take_while(|b| **b != b'\n').count();
            let found = if other.is_ascii_graphic() {
                format!("`{}`", char::from(other))
            } else {
                format!("byte 0x{other:02x}")
            };
            Err(BodyRefusal::Malformed(format!(
                "the body is neither a JSON array nor NDJSON: expected `[` or `{{` \
                 at line {line} column {column}, found {found}"
            )))
        }
    }
}

/// Whether a content type names NDJSON.
pub fn is_ndjson(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    [
        "application/x-ndjson",
        "application/jsonl",
        "application/ndjson",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

fn array(body: &[u8], max_events: usize) -> Result<ParsedEvents, BodyRefusal> {
    let mut events = Vec::new();
    let mut too_many = false;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let walked = EventsSeed {
        max: max_events,
        events: &mut events,
        too_many: &mut too_many,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    if too_many {
        return Err(BodyRefusal::TooManyEvents(max_events));
    }
    walked.map_err(|e| BodyRefusal::Malformed(format!("the body is not valid JSON: {e}")))?;
    Ok(events)
}

fn ndjson(body: &[u8], max_events: usize) -> Result<ParsedEvents, BodyRefusal> {
    let mut events = Vec::new();
    let lines = body
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace));
    for (index, line) in lines {
        if events.len() == max_events {
            return Err(BodyRefusal::TooManyEvents(max_events));
        }
        let event = serde_json::from_slice::<Item>(line)
            .map_err(|e| line_not_json(index, &e))
            .and_then(Item::into_event);
        events.push(event);
    }
    Ok(events)
}

/// The top-level array, item by item.
struct EventsSeed<'a> {
    max: usize,
    events: &'a mut ParsedEvents,
    too_many: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<Item>()? {
            if self.events.len() == self.max {
                *self.too_many = true;
                return Err(de::Error::custom("too many events"));
            }
            self.events.push(item.into_event());
        }
        Ok(())
    }
}

/// One array item or NDJSON line, kept only as far as an event needs.
enum Item {
    /// The fields of an event (and the first unknown field, as null);
    /// `attributes` is left out when it has too many entries (counted).
    Object {
        fields: Map<String, Value>,
        too_many_attributes: Option<usize>,
    },
    /// Not an object: its kind, for the message.
    Other(&'static str),
}

impl Item {
    fn into_event(self) -> Result<Event, EventError> {
        match self {
            Item::Object {
                fields,
                too_many_attributes: None,
            } => event_from_json(Value::Object(fields)),
            // The rules check the attributes after every other field.
            Item::Object {
                fields,
                too_many_attributes: Some(count),
            } => event_from_json(Value::Object(fields)).and(Err(EventError(format!(
                "`attributes` has {count} entries; at most {MAX_ATTRIBUTES}"
            )))),
            Item::Other(kind) => Err(EventError(format!(
                "an event must be a JSON object, not {kind}"
            ))),
        }
    }
}

impl<'de> de::Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Item, E> {
        Ok(Item::Other("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Item, E> {
        Ok(Item::Other("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Item, E> {
        Ok(Item::Other("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Item, E> {
        Ok(Item::Other("a number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Item, E> {
        Ok(Item::Other("a string"))
    }
    fn visit_unit<E>(self) -> Result<Item, E> {
        Ok(Item::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Item::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let mut fields = Map::new();
        let mut too_many_attributes = None;
        // The rules name the first unknown field in key order.
        let mut unknown: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "attributes" {
                match map.next_value::<AttributesField>()? {
                    AttributesField::Value(value) => {
                        fields.insert(key, value);
                    }
                    AttributesField::TooMany(count) => too_many_attributes = Some(count),
                }
            } else if EVENT_FIELDS.contains(&key.as_str()) {
                let value = map.next_value::<Scalar>()?.0;
                fields.insert(key, value);
            } else {
                map.next_value::<IgnoredAny>()?;
                if unknown.as_ref().is_none_or(|first| key < *first) {
                    unknown = Some(key);
                }
            }
        }
        if let Some(key) = unknown {
            fields.insert(key, Value::Null);
        }
        Ok(Item::Object {
            fields,
            too_many_attributes,
        })
    }
}

/// A field value: scalars as they are, arrays and objects as an empty one
/// of their kind (the rules refuse them by kind).
struct Scalar(Value);

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor).map(Scalar)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array(Vec::new()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Object(Map::new()))
    }
}

/// `attributes`: an object of at most [`MAX_ATTRIBUTES`] scalars is kept;
/// a larger one is only counted.
enum AttributesField {
    Value(Value),
    TooMany(usize),
}

impl<'de> de::Deserialize<'de> for AttributesField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AttributesVisitor)
    }
}

struct AttributesVisitor;

impl<'de> Visitor<'de> for AttributesVisitor {
    type Value = AttributesField;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of attributes")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttributesField, A::Error> {
        let mut kept = Map::new();
        let mut count = 0usize;
        while let Some(key) = map.next_key::<String>()? {
            count += 1;
            if count > MAX_ATTRIBUTES {
                map.next_value::<IgnoredAny>()?;
            } else {
                let value = map.next_value::<Scalar>()?.0;
                kept.insert(key, value);
            }
        }
        Ok(if count > MAX_ATTRIBUTES {
            AttributesField::TooMany(count)
        } else {
            AttributesField::Value(Value::Object(kept))
        })
    }

    // Anything else is kept as its scalar (or an empty one of its kind), so
    // that the rules name the kind.
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<AttributesField, E> {
        ScalarVisitor.visit_bool(v).map(AttributesField::Value)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<AttributesField, E> {
        ScalarVisitor.visit_i64(v).map(AttributesField::Value)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<AttributesField, E> {
        ScalarVisitor.visit_u64(v).map(AttributesField::Value)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<AttributesField, E> {
        ScalarVisitor.visit_f64(v).map(AttributesField::Value)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<AttributesField, E> {
        ScalarVisitor.visit_str(v).map(AttributesField::Value)
    }
    fn visit_unit<E: de::Error>(self) -> Result<AttributesField, E> {
        Ok(AttributesField::Value(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<AttributesField, A::Error> {
        ScalarVisitor.visit_seq(seq).map(AttributesField::Value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(parsed: &ParsedEvents) -> Vec<Option<String>> {
        parsed
            .iter()
            .map(|r| r.as_ref().err().map(|e| e.0.clone()))
            .collect()
    }

    const VIEW: &str = r#"{"event_id":"e-1","user_id":"u-1","event_type":"view","item_id":"i","event_time":1795428000000}"#;

    #[test]
    fn agrees_with_the_schemas_parser_on_every_kind_of_item() {
        let many: Vec<String> = (0..70).map(|i| format!("\"k{i}\":{i}")).collect();
        let many = many.join(",");
        let body = format!(
            r#"[{VIEW}, 1, "x", null, true, [1,[2]], {{"event_id":"e-2"}},
                {{"event_id":"e-3","user_id":"u","event_type":"view","item_id":"i","event_time":1795428000000,"size":[1],"color":2}},
                {{"user_id":"u","attributes":{{{many}}}}},
                {{"event_id":["a"],"user_id":"u","event_type":"view","item_id":"i","event_time":1}},
                {{"event_id":"e-4","user_id":"u","event_type":"view","item_id":"i","event_time":1795428000000,"attributes":{{"a":{{"b":1}}}}}},
                {{"event_id":"e-5","user_id":"u","event_type":"view","item_id":"i","event_time":1795428000000,"attributes":[1]}}]"#
        );
        let ours = parse(body.as_bytes(), None, 100).expect("parsed");
        let theirs = signals_schemas::parse_events(body.as_bytes(), None).expect("parsed");
        assert_eq!(ours, theirs);
        assert_eq!(errors(&ours)[0], None);
        assert_eq!(
            errors(&ours)[1].as_deref(),
            Some("an event must be a JSON object, not a number")
        );
    }

    #[test]
    fn agrees_on_ndjson_and_body_errors() {
        let body = format!("{VIEW}\n\n{{oops\n[1]\n{VIEW}\n");
        assert_eq!(
            parse(body.as_bytes(), None, 100).expect("parsed"),
            signals_schemas::parse_events(body.as_bytes(), None).expect("parsed")
        );
        for body in ["", "  ", "x", "[1,", "[1] 2", "\n\n  7"] {
            let theirs = signals_schemas::parse_events(body.as_bytes(), None)
                .expect_err("refused")
                .0;
            match parse(body.as_bytes(), None, 100) {
                Err(BodyRefusal::Malformed(ours)) => assert_eq!(ours, theirs, "{body:?}"),
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn too_many_attributes_are_counted_not_kept() {
        let attributes: Vec<String> = (0..70).map(|i| format!("\"k{i}\":{i}")).collect();
        let body = format!(
            r#"[{{"event_id":"e","user_id":"u","event_type":"view","item_id":"i","event_time":1795428000000,"attributes":{{{}}}}}]"#,
            attributes.join(",")
        );
        let ours = parse(body.as_bytes(), None, 100).expect("parsed");
        assert_eq!(
            errors(&ours),
            [Some("`attributes` has 70 entries; at most 64".to_owned())]
        );
    }

    #[test]
    fn stops_at_the_event_cap_in_both_forms() {
        let body = format!("[{}]", ["1"; 11].join(","));
        assert_eq!(
            parse(body.as_bytes(), None, 10),
            Err(BodyRefusal::TooManyEvents(10))
        );
        assert_eq!(
            parse(format!("[{}]", ["1"; 10].join(",")).as_bytes(), None, 10)
                .expect("ten")
                .len(),
            10
        );
        let lines = [VIEW; 11].join("\n");
        assert_eq!(
            parse(lines.as_bytes(), None, 10),
            Err(BodyRefusal::TooManyEvents(10))
        );
    }

    #[test]
    fn deep_nesting_is_one_rejected_item_not_a_stack_overflow() {
        let depth = 1_000_000;
        let body = format!("[{}{}]", "[".repeat(depth), "]".repeat(depth));
        let parsed = parse(body.as_bytes(), None, 10).expect("parsed");
        assert_eq!(
            errors(&parsed),
            [Some(
                "an event must be a JSON object, not an array".to_owned()
            )]
        );
        let body = format!(
            "[{{\"event_id\":{}1{}}}]",
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        );
        assert!(parse(body.as_bytes(), None, 10).is_ok());
    }
}
