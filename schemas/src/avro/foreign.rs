//! Writer schemas from outside this build: a schema registry hands out ids
//! for schemas that may be ours under another id, or an outside producer's
//! compatible variant of ours.

use std::sync::Arc;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;

use super::{current_schema, resolve, DecodeError, SCHEMAS, VERSIONS};
use crate::event::{LogRecord, RecordBody};
use crate::json::check_event;

/// The compiled-in id of the schema that writes the same bytes as `schema`:
/// the same Parsing Canonical Form (docs, defaults and logical types aside,
/// which never change the binary encoding).
pub fn known_id_of(schema: &Schema) -> Option<u32> {
    let form = schema.canonical_form();
    VERSIONS
        .iter()
        .zip(SCHEMAS.iter())
        .find(|(_, known)| known.canonical_form() == form)
        .map(|(version, _)| version.id)
}

/// An outside writer schema, resolved to the current schema once.
pub struct ForeignWriter {
    reader: GenericDatumReader<'static>,
}

impl ForeignWriter {
    /// Resolves `schema` against the current one. A schema whose records
    /// Avro resolution cannot read as ours fails on each record instead.
    pub fn new(schema: Arc<Schema>) -> Result<ForeignWriter, String> {
        // The reader borrows its writer schema for as long as it lives; a
        // process meets few distinct writer schemas (one per registry id
        // of this subject), and each stays needed until exit.
        let writer: &'static Schema = Box::leak(Box::new(Schema::clone(&schema)));
        let reader = GenericDatumReader::builder(writer)
            .reader_schema(current_schema())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ForeignWriter { reader })
    }

    /// Decodes an unframed Avro datum written with this schema, held to the
    /// same rules as [`super::decode`]. `id` is only for error messages.
    pub fn decode_datum(&self, id: u32, mut datum: &[u8]) -> Result<LogRecord, DecodeError> {
        let value = self
            .reader
            .read_value(&mut datum)
            .map_err(|e| DecodeError::Avro {
                id,
                message: e.to_string(),
            })?;
        if !datum.is_empty() {
            return Err(DecodeError::TrailingBytes {
                id,
                count: datum.len(),
            });
        }
        let record = resolve::record(value)?;
        if let RecordBody::Event(event) = &record.body {
            check_event(event).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use apache_avro::types::Value;
    use apache_avro::Schema;

    use super::{known_id_of, ForeignWriter};
    use crate::avro::{
        decode, encode, frame, set_schema_id, DecodeError, CURRENT_SCHEMA, VERSIONS,
    };
    use crate::event::{Event, EventType, LogRecord, RecordBody};
    use crate::Attributes;

    /// The current schema with `Event.referrer` (optional) appended: an
    /// outside producer's compatible evolution.
    fn evolved() -> Schema {
        let mut json: serde_json::Value = serde_json::from_str(CURRENT_SCHEMA).expect("json");
        let event = json["fields"][1]["type"]
            .as_array_mut()
            .and_then(|branches| branches.iter_mut().find(|b| b["name"] == "Event"))
            .expect("an Event branch");
        event["fields"].as_array_mut().expect("fields").push(
            serde_json::json!({"name": "referrer", "type": ["null", "string"], "default": null}),
        );
        Schema::parse_str(&json.to_string()).expect("the evolved schema parses")
    }

    fn evolved_datum(event_type: &str, referrer: Option<&str>) -> Vec<u8> {
        let string = |s: &str| Value::String(s.to_owned());
        let optional = |s: Option<&str>| match s {
            Some(s) => Value::Union(1, Box::new(string(s))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let event = Value::Record(vec![
            ("event_id".into(), string("e-1")),
            ("user_id".into(), string("u-1")),
            ("event_type".into(), Value::Enum(0, event_type.to_owned())),
            ("item_id".into(), optional(Some("listing-9"))),
            ("query".into(), optional(None)),
            (
                "event_time".into(),
                Value::TimestampMillis(1_795_428_000_000),
            ),
            (
                "attributes".into(),
                Value::Map([("city".to_owned(), string("Paris"))].into_iter().collect()),
            ),
            ("referrer".into(), optional(referrer)),
        ]);
        let record = Value::Record(vec![
            (
                "accepted_at".into(),
                Value::TimestampMillis(1_795_428_000_500),
            ),
            ("body".into(), Value::Union(0, Box::new(event))),
        ]);
        let schema = evolved();
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .expect("resolves")
            .write_value_to_vec(record)
            .expect("fits the evolved schema")
    }

    fn expected() -> LogRecord {
        LogRecord {
            accepted_at: 1_795_428_000_500,
            body: RecordBody::Event(Event {
                event_id: "e-1".into(),
                user_id: "u-1".into(),
                event_type: EventType::View,
                item_id: Some("listing-9".into()),
                query: None,
                event_time: 1_795_428_000_000,
                attributes: Attributes::from([("city", "Paris")]),
            }),
        }
    }

    #[test]
    fn every_shipped_schema_is_known_by_its_own_id() {
        for version in VERSIONS {
            let schema = Schema::parse_str(version.text).expect("parses");
            assert_eq!(known_id_of(&schema), Some(version.id), "{}", version.path);
        }
    }

    #[test]
    fn docs_and_defaults_do_not_make_another_schema_but_a_field_does() {
        let mut json: serde_json::Value = serde_json::from_str(CURRENT_SCHEMA).expect("json");
        json["doc"] = serde_json::json!("registered by someone else, with a doc");
        let documented = Schema::parse_str(&json.to_string()).expect("parses");
        assert_eq!(
            known_id_of(&documented),
            Some(crate::avro::CURRENT_SCHEMA_ID)
        );
        assert_eq!(known_id_of(&evolved()), None);
        assert_eq!(known_id_of(&Schema::String), None);
    }

    #[test]
    fn an_evolved_writer_reads_as_todays_record() {
        let writer = ForeignWriter::new(Arc::new(evolved())).expect("resolves to ours");
        let record = writer
            .decode_datum(7, &evolved_datum("view", Some("newsletter")))
            .expect("decodes");
        assert_eq!(record, expected());
        // Re-encoded with the current schema, the platform's own decoder reads it.
        assert_eq!(decode(&encode(&record)), Ok(expected()));
    }

    #[test]
    fn an_evolved_writer_holds_records_to_the_rules_and_the_datum_to_its_length() {
        let writer = ForeignWriter::new(Arc::new(evolved())).expect("resolves to ours");
        let mut datum = evolved_datum("view", None);
        datum.push(0);
        assert_eq!(
            writer.decode_datum(7, &datum),
            Err(DecodeError::TrailingBytes { id: 7, count: 1 })
        );
        let truncated = &evolved_datum("view", None)[..10];
        assert!(matches!(
            writer.decode_datum(7, truncated),
            Err(DecodeError::Avro { id: 7, .. })
        ));
    }

    #[test]
    fn a_schema_that_cannot_read_as_ours_fails_to_decode() {
        // Resolution is checked as records are read: a string is no LogRecord.
        let writer = ForeignWriter::new(Arc::new(Schema::String)).expect("built");
        assert!(matches!(
            writer.decode_datum(9, b"\x06abc"),
            Err(DecodeError::Avro { id: 9, .. })
        ));
    }

    #[test]
    fn setting_the_schema_id_changes_only_the_header() {
        let mut framed = encode(&expected());
        let datum = frame(&framed).expect("framed").1.to_vec();
        set_schema_id(&mut framed, 41);
        assert_eq!(frame(&framed), Ok((41, datum.as_slice())));
        set_schema_id(&mut framed, crate::avro::CURRENT_SCHEMA_ID);
        assert_eq!(decode(&framed), Ok(expected()));
        let mut short = vec![0, 0];
        set_schema_id(&mut short, 41);
        assert_eq!(short, vec![0, 0]);
    }
}
