//! Avro on the log, framed as Confluent's wire format.
//!
//! A record is `0x00`, the writer's schema id as 4 bytes big-endian, then the
//! Avro binary datum. Ids are assigned by this repository (see
//! `schemas/EVOLUTION.md`): 1 is `history/log_record.v1.avsc`, 2 is the
//! current `log_record.avsc`. Decoding resolves the writer's schema to the
//! current one, so records written by any known version read as today's
//! types. Schemas are parsed once per process.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::event::{Event, EventType, LogRecord, RecordBody, Retraction, UserDeletion};
use crate::json::check_event;

/// The schema id written by this version.
pub const CURRENT_SCHEMA_ID: u32 = 2;

/// The current schema's text (`schemas/log_record.avsc`).
pub const CURRENT_SCHEMA: &str = include_str!("../log_record.avsc");

/// Every schema this version can read, by id.
const KNOWN: [(u32, &str); 2] = [
    (1, include_str!("../history/log_record.v1.avsc")),
    (CURRENT_SCHEMA_ID, CURRENT_SCHEMA),
];

static SCHEMAS: LazyLock<HashMap<u32, Schema>> = LazyLock::new(|| {
    KNOWN
        .iter()
        .map(|(id, text)| {
            // The schemas are compiled into the binary and covered by tests.
            #[allow(clippy::expect_used)]
            let schema = Schema::parse_str(text).expect("a shipped schema parses");
            (*id, schema)
        })
        .collect()
});

/// One reader per known writer schema, resolving to the current schema;
/// building them resolves names once instead of on every record.
static READERS: LazyLock<HashMap<u32, GenericDatumReader<'static>>> = LazyLock::new(|| {
    SCHEMAS
        .iter()
        .map(|(id, writer)| {
            let builder = GenericDatumReader::builder(writer);
            #[allow(clippy::expect_used)]
            let reader = if *id == CURRENT_SCHEMA_ID {
                builder.build()
            } else {
                builder.reader_schema(current()).build()
            }
            .expect("a shipped schema resolves");
            (*id, reader)
        })
        .collect()
});

static WRITER: LazyLock<GenericDatumWriter<'static>> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    GenericDatumWriter::builder(current())
        .build()
        .expect("the current schema resolves")
});

fn current() -> &'static Schema {
    #[allow(clippy::expect_used)]
    SCHEMAS
        .get(&CURRENT_SCHEMA_ID)
        .expect("the current schema is known")
}

/// The schema registered under `id`, if this version knows it.
pub fn schema(id: u32) -> Option<&'static Schema> {
    SCHEMAS.get(&id)
}

/// Why bytes on the log are not a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the 5-byte header")]
    TooShort(usize),
    #[error("bad magic byte 0x{0:02x} (expected 0x00)")]
    BadMagic(u8),
    #[error("unknown schema id {0} (known: 1, 2)")]
    UnknownSchema(u32),
    #[error("invalid Avro for schema id {id}: {message}")]
    Avro { id: u32, message: String },
    #[error("invalid record: {0}")]
    Invalid(String),
}

/// Encodes `record` with the current schema, framed.
pub fn encode(record: &LogRecord) -> Vec<u8> {
    let mut framed = Vec::with_capacity(64);
    framed.push(0);
    framed.extend_from_slice(&CURRENT_SCHEMA_ID.to_be_bytes());
    // Values built here always match the current schema.
    #[allow(clippy::expect_used)]
    WRITER
        .write_value(&mut framed, to_value(record))
        .expect("a LogRecord fits its schema");
    framed
}

/// Decodes framed bytes written with any known schema version.
pub fn decode(bytes: &[u8]) -> Result<LogRecord, DecodeError> {
    let (id, mut datum) = frame(bytes)?;
    let reader = READERS.get(&id).ok_or(DecodeError::UnknownSchema(id))?;
    let value = reader
        .read_value(&mut datum)
        .map_err(|e| DecodeError::Avro {
            id,
            message: e.to_string(),
        })?;
    if !datum.is_empty() {
        return Err(DecodeError::Avro {
            id,
            message: format!("{} bytes left after the record", datum.len()),
        });
    }
    from_value(value)
}

/// Splits the header off; returns the schema id and the datum.
pub fn frame(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    if bytes.len() < 5 {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if bytes[0] != 0 {
        return Err(DecodeError::BadMagic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[5..]))
}

fn optional(value: &Option<String>) -> Value {
    match value {
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn to_value(record: &LogRecord) -> Value {
    let body = match &record.body {
        RecordBody::Event(e) => Value::Union(
            0,
            Box::new(Value::Record(vec![
                ("event_id".into(), Value::String(e.event_id.clone())),
                ("user_id".into(), Value::String(e.user_id.clone())),
                (
                    "event_type".into(),
                    Value::Enum(e.event_type as u32, e.event_type.as_str().to_owned()),
                ),
                ("item_id".into(), optional(&e.item_id)),
                ("query".into(), optional(&e.query)),
                ("event_time".into(), Value::TimestampMillis(e.event_time)),
                (
                    "attributes".into(),
                    Value::Map(
                        e.attributes
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect(),
                    ),
                ),
            ])),
        ),
        RecordBody::Retraction(r) => Value::Union(
            1,
            Box::new(Value::Record(vec![
                (
                    "event_ids".into(),
                    Value::Array(r.event_ids.iter().cloned().map(Value::String).collect()),
                ),
                ("reason".into(), Value::String(r.reason.clone())),
            ])),
        ),
        RecordBody::UserDeletion(d) => Value::Union(
            2,
            Box::new(Value::Record(vec![
                ("user_id".into(), Value::String(d.user_id.clone())),
                ("reason".into(), Value::String(d.reason.clone())),
            ])),
        ),
    };
    Value::Record(vec![
        (
            "accepted_at".into(),
            Value::TimestampMillis(record.accepted_at),
        ),
        ("body".into(), body),
    ])
}

/// Takes the fields of a record value by name.
struct Fields(HashMap<String, Value>);

impl Fields {
    fn of(value: Value, what: &str) -> Result<Fields, DecodeError> {
        match value {
            Value::Record(fields) => Ok(Fields(fields.into_iter().collect())),
            other => Err(DecodeError::Invalid(format!(
                "{what} is not a record: {other:?}"
            ))),
        }
    }

    fn take(&mut self, name: &str) -> Result<Value, DecodeError> {
        self.0
            .remove(name)
            .ok_or_else(|| DecodeError::Invalid(format!("field `{name}` is missing")))
    }

    fn string(&mut self, name: &str) -> Result<String, DecodeError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(DecodeError::Invalid(format!(
                "`{name}` is not a string: {other:?}"
            ))),
        }
    }

    fn optional_string(&mut self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                other => Err(DecodeError::Invalid(format!(
                    "`{name}` is not a string: {other:?}"
                ))),
            },
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(DecodeError::Invalid(format!(
                "`{name}` is not a string: {other:?}"
            ))),
        }
    }

    fn millis(&mut self, name: &str) -> Result<i64, DecodeError> {
        match self.take(name)? {
            Value::TimestampMillis(t) | Value::Long(t) => Ok(t),
            other => Err(DecodeError::Invalid(format!(
                "`{name}` is not a time: {other:?}"
            ))),
        }
    }
}

fn from_value(value: Value) -> Result<LogRecord, DecodeError> {
    let mut record = Fields::of(value, "the log record")?;
    let accepted_at = record.millis("accepted_at")?;
    let body = match record.take("body")? {
        Value::Union(0, event) => RecordBody::Event(event_from(*event)?),
        Value::Union(1, retraction) => {
            let mut fields = Fields::of(*retraction, "a retraction")?;
            let event_ids = match fields.take("event_ids")? {
                Value::Array(items) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s),
                        other => Err(DecodeError::Invalid(format!(
                            "an event id is not a string: {other:?}"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                other => {
                    return Err(DecodeError::Invalid(format!(
                        "`event_ids` is not an array: {other:?}"
                    )))
                }
            };
            RecordBody::Retraction(Retraction {
                event_ids,
                reason: fields.string("reason")?,
            })
        }
        Value::Union(2, deletion) => {
            let mut fields = Fields::of(*deletion, "a user deletion")?;
            RecordBody::UserDeletion(UserDeletion {
                user_id: fields.string("user_id")?,
                reason: fields.string("reason")?,
            })
        }
        other => {
            return Err(DecodeError::Invalid(format!(
                "unknown record body: {other:?}"
            )))
        }
    };
    Ok(LogRecord { accepted_at, body })
}

fn event_from(value: Value) -> Result<Event, DecodeError> {
    let mut fields = Fields::of(value, "an event")?;
    let event_type = match fields.take("event_type")? {
        Value::Enum(_, symbol) => EventType::parse(&symbol)
            .ok_or_else(|| DecodeError::Invalid(format!("unknown event type `{symbol}`")))?,
        other => {
            return Err(DecodeError::Invalid(format!(
                "`event_type` is not an enum: {other:?}"
            )))
        }
    };
    let attributes = match fields.take("attributes")? {
        Value::Map(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(DecodeError::Invalid(format!(
                    "attribute `{k}` is not a string: {other:?}"
                ))),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?,
        other => {
            return Err(DecodeError::Invalid(format!(
                "`attributes` is not a map: {other:?}"
            )))
        }
    };
    let event = Event {
        event_id: fields.string("event_id")?,
        user_id: fields.string("user_id")?,
        event_type,
        item_id: fields.optional_string("item_id")?,
        query: fields.optional_string("query")?,
        event_time: fields.millis("event_time")?,
        attributes,
    };
    // Outside producers write to the log too: hold them to the collector's rules.
    check_event(&event).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::arb_log_record;
    use proptest::prelude::*;

    fn view() -> LogRecord {
        LogRecord {
            accepted_at: 1_795_428_000_500,
            body: RecordBody::Event(Event {
                event_id: "e-1".into(),
                user_id: "u-42".into(),
                event_type: EventType::View,
                item_id: Some("listing-9".into()),
                query: None,
                event_time: 1_795_428_000_123,
                attributes: BTreeMap::from([("city".into(), "Paris".into())]),
            }),
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(record in arb_log_record()) {
            prop_assert_eq!(decode(&encode(&record)), Ok(record));
        }
    }

    #[test]
    fn the_frame_is_confluent_with_the_current_id() {
        let bytes = encode(&view());
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 2]);
    }

    #[test]
    fn records_written_with_version_1_read_as_today() {
        let v1 = schema(1).expect("v1 known");
        let body = Value::Union(
            0,
            Box::new(Value::Record(vec![
                ("event_id".into(), Value::String("e-old".into())),
                ("user_id".into(), Value::String("u-1".into())),
                ("event_type".into(), Value::Enum(2, "search".into())),
                ("item_id".into(), Value::Union(0, Box::new(Value::Null))),
                (
                    "query".into(),
                    Value::Union(1, Box::new(Value::String("lofts".into()))),
                ),
                (
                    "event_time".into(),
                    Value::TimestampMillis(1_795_428_000_000),
                ),
            ])),
        );
        let record = Value::Record(vec![
            (
                "accepted_at".into(),
                Value::TimestampMillis(1_795_428_000_500),
            ),
            ("body".into(), body),
        ]);
        let mut bytes = vec![0, 0, 0, 0, 1];
        GenericDatumWriter::builder(v1)
            .build()
            .expect("v1 resolves")
            .write_value(&mut bytes, record)
            .expect("v1 datum");
        let decoded = decode(&bytes).expect("v1 decodes");
        assert_eq!(
            decoded,
            LogRecord {
                accepted_at: 1_795_428_000_500,
                body: RecordBody::Event(Event {
                    event_id: "e-old".into(),
                    user_id: "u-1".into(),
                    event_type: EventType::Search,
                    item_id: None,
                    query: Some("lofts".into()),
                    event_time: 1_795_428_000_000,
                    attributes: BTreeMap::new(),
                }),
            }
        );
    }

    #[test]
    fn bad_input_gets_a_precise_error() {
        assert_eq!(decode(&[0, 0]), Err(DecodeError::TooShort(2)));
        assert_eq!(decode(&[7, 0, 0, 0, 2, 0]), Err(DecodeError::BadMagic(7)));
        assert_eq!(
            decode(&[0, 0, 0, 0, 9, 0]),
            Err(DecodeError::UnknownSchema(9))
        );
        assert_eq!(
            decode(&[0, 0, 0, 0, 9, 0]).map_err(|e| e.to_string()),
            Err("unknown schema id 9 (known: 1, 2)".to_owned())
        );
        let mut truncated = encode(&view());
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(
            decode(&truncated),
            Err(DecodeError::Avro { id: 2, .. })
        ));
        let mut trailing = encode(&view());
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(DecodeError::Avro { id: 2, .. })
        ));
    }

    #[test]
    fn an_event_breaking_the_rules_is_refused() {
        let mut record = view();
        if let RecordBody::Event(e) = &mut record.body {
            e.item_id = None;
        }
        assert_eq!(
            decode(&encode(&record)).map_err(|e| e.to_string()),
            Err("invalid record: `item_id` is required for view events".to_owned())
        );
    }
}
