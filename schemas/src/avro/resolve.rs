//! Records written with an older schema: the generic Avro value, already
//! resolved to the current schema, mapped to Rust types by field name.

use std::collections::HashMap;

use apache_avro::types::Value;

use super::DecodeError;
use crate::event::{Event, EventType, LogRecord, RecordBody, Retraction, UserDeletion};
use crate::Attributes;

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

/// A `LogRecord` value, resolved to the current schema, as Rust types. The
/// body's union index is the current schema's branch index.
pub(super) fn record(value: Value) -> Result<LogRecord, DecodeError> {
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
            .collect::<Result<Attributes, _>>()?,
        other => {
            return Err(DecodeError::Invalid(format!(
                "`attributes` is not a map: {other:?}"
            )))
        }
    };
    Ok(Event {
        event_id: fields.string("event_id")?.into(),
        user_id: fields.string("user_id")?.into(),
        event_type,
        item_id: fields.optional_string("item_id")?.map(Into::into),
        query: fields.optional_string("query")?.map(Into::into),
        event_time: fields.millis("event_time")?,
        attributes,
    })
}
