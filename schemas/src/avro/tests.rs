use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use proptest::prelude::*;

use super::*;
use crate::event::{Event, EventType, Millis, Retraction, UserDeletion};
use crate::testing::{arb_event, arb_log_record};
use crate::Attributes;
use smol_str::SmolStr;

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
            attributes: Attributes::from([("city", "Paris")]),
        }),
    }
}

/// Avro binary by hand: a zigzag varint.
fn long(v: i64) -> Vec<u8> {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Avro binary by hand: length-prefixed bytes.
fn string(s: &[u8]) -> Vec<u8> {
    [long(s.len() as i64), s.to_vec()].concat()
}

/// `view()` by hand, with the event type's enum index as given.
fn view_datum(type_index: i64) -> Vec<u8> {
    [
        long(1_795_428_000_500),
        long(0),
        string(b"e-1"),
        string(b"u-42"),
        long(type_index),
        long(1),
        string(b"listing-9"),
        long(0),
        long(1_795_428_000_123),
        long(1),
        string(b"city"),
        string(b"Paris"),
        long(0),
    ]
    .concat()
}

fn framed(id: u32, datum: &[u8]) -> Vec<u8> {
    [&[MAGIC_BYTE][..], &id.to_be_bytes(), datum].concat()
}

fn optional(value: &Option<impl AsRef<str>>) -> Value {
    match value {
        Some(s) => Value::Union(1, Box::new(Value::String(s.as_ref().to_owned()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn event_fields(e: &Event) -> Vec<(String, Value)> {
    vec![
        ("event_id".into(), Value::String(e.event_id.to_string())),
        ("user_id".into(), Value::String(e.user_id.to_string())),
        (
            "event_type".into(),
            Value::Enum(e.event_type as u32, e.event_type.as_str().to_owned()),
        ),
        ("item_id".into(), optional(&e.item_id)),
        ("query".into(), optional(&e.query)),
        ("event_time".into(), Value::TimestampMillis(e.event_time)),
    ]
}

fn retraction_fields(r: &Retraction) -> Vec<(String, Value)> {
    vec![
        (
            "event_ids".into(),
            Value::Array(r.event_ids.iter().cloned().map(Value::String).collect()),
        ),
        ("reason".into(), Value::String(r.reason.clone())),
    ]
}

fn envelope(accepted_at: Millis, branch: u32, fields: Vec<(String, Value)>) -> Value {
    Value::Record(vec![
        ("accepted_at".into(), Value::TimestampMillis(accepted_at)),
        (
            "body".into(),
            Value::Union(branch, Box::new(Value::Record(fields))),
        ),
    ])
}

/// The current schema's value for `record`, built by field and branch name
/// rather than through serde.
fn current_value(record: &LogRecord) -> Value {
    let (branch, fields) = match &record.body {
        RecordBody::Event(e) => {
            let mut fields = event_fields(e);
            fields.push((
                "attributes".into(),
                Value::Map(
                    e.attributes
                        .iter()
                        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                        .collect(),
                ),
            ));
            (0, fields)
        }
        RecordBody::Retraction(r) => (1, retraction_fields(r)),
        RecordBody::UserDeletion(d) => (
            2,
            vec![
                ("user_id".into(), Value::String(d.user_id.clone())),
                ("reason".into(), Value::String(d.reason.clone())),
            ],
        ),
    };
    envelope(record.accepted_at, branch, fields)
}

/// `record` as the first schema version would have written it, if it can.
fn v1_value(record: &LogRecord) -> Option<Value> {
    let (branch, fields) = match &record.body {
        RecordBody::Event(e) => (0, event_fields(e)),
        RecordBody::Retraction(r) => (1, retraction_fields(r)),
        RecordBody::UserDeletion(_) => return None,
    };
    Some(envelope(record.accepted_at, branch, fields))
}

fn write_with(id: u32, value: Value) -> Vec<u8> {
    let writer = GenericDatumWriter::builder(schema(id).expect("known id"))
        .build()
        .expect("writer");
    let mut bytes = framed(id, &[]);
    writer.write_value(&mut bytes, value).expect("datum fits");
    bytes
}

fn decoded_message(bytes: &[u8]) -> String {
    decode(bytes).expect_err("refused").to_string()
}

proptest! {
    #[test]
    fn records_round_trip(record in arb_log_record()) {
        prop_assert_eq!(decode(&encode(&record)), Ok(record));
    }

    /// The serde path writes what the schema says, by name (map entries may
    /// come in any order, so the datums are compared as values).
    #[test]
    fn serde_bytes_equal_the_generic_writer(record in arb_log_record()) {
        let reader = GenericDatumReader::builder(current_schema()).build().expect("reader");
        let read = |bytes: &[u8]| reader.read_value(&mut &bytes[HEADER_LEN..]).map_err(|e| e.to_string());
        let generic = write_with(CURRENT_SCHEMA_ID, current_value(&record));
        prop_assert_eq!(read(&encode(&record)), read(&generic));
        prop_assert_eq!(encode(&record).len(), generic.len());
    }

    /// The resolving path agrees with the serde path on current records.
    #[test]
    fn the_generic_reader_agrees(record in arb_log_record()) {
        let bytes = encode(&record);
        let reader = GenericDatumReader::builder(current_schema()).build().expect("reader");
        let value = reader.read_value(&mut &bytes[HEADER_LEN..]).expect("datum");
        prop_assert_eq!(resolve::record(value), Ok(record));
    }

    #[test]
    fn version_1_records_read_as_today(record in arb_log_record()) {
        if let Some(value) = v1_value(&record) {
            let mut expected = record;
            if let RecordBody::Event(e) = &mut expected.body {
                e.attributes.clear();
            }
            prop_assert_eq!(decode(&write_with(1, value)), Ok(expected));
        }
    }
}

#[test]
fn the_frame_is_confluent_with_the_current_id_and_plain_avro() {
    let bytes = encode(&view());
    assert_eq!(&bytes[..HEADER_LEN], &[0, 0, 0, 0, 2]);
    assert_eq!(&bytes[HEADER_LEN..], view_datum(0));
    assert_eq!(decode(&framed(2, &view_datum(0))), Ok(view()));
}

#[test]
fn a_version_1_search_gets_empty_attributes() {
    let mut record = view();
    let event = Event {
        event_id: "e-old".into(),
        user_id: "u-1".into(),
        event_type: EventType::Search,
        item_id: None,
        query: Some("lofts".into()),
        event_time: 1_795_428_000_000,
        attributes: Attributes::new(),
    };
    record.body = RecordBody::Event(event);
    let bytes = write_with(1, v1_value(&record).expect("an event"));
    assert_eq!(&bytes[..HEADER_LEN], &[0, 0, 0, 0, 1]);
    assert_eq!(decode(&bytes), Ok(record));
}

#[test]
fn a_version_1_retraction_reads_as_today() {
    let record = LogRecord {
        accepted_at: 7,
        body: RecordBody::Retraction(Retraction {
            event_ids: vec!["e-1".into(), "e-2".into()],
            reason: "bot".into(),
        }),
    };
    let bytes = write_with(1, v1_value(&record).expect("a retraction"));
    assert_eq!(decode(&bytes), Ok(record));
}

#[test]
fn every_older_schema_resolves_to_the_current_one() {
    let current = current_schema();
    for version in VERSIONS {
        let writer = schema(version.id).expect("parsed");
        assert_eq!(
            SchemaCompatibility::can_read(writer, current).map_err(|e| e.to_string()),
            Ok(apache_avro::schema_compatibility::Compatibility::Full),
            "schema id {} must stay readable",
            version.id
        );
    }
}

#[test]
fn user_deletions_are_the_third_branch() {
    let record = LogRecord {
        accepted_at: 1,
        body: RecordBody::UserDeletion(UserDeletion {
            user_id: "u-9".into(),
            reason: "gdpr".into(),
        }),
    };
    let bytes = encode(&record);
    assert_eq!(
        &bytes[HEADER_LEN..],
        [long(1), long(2), string(b"u-9"), string(b"gdpr")].concat()
    );
}

/// The Avro spec's 64-bit Rabin fingerprint (CRC-64-AVRO) of any bytes.
fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    bytes.iter().fold(EMPTY, |fp, &byte| {
        let entry = (0..8).fold((fp ^ u64::from(byte)) & 0xff, |x, _| {
            (x >> 1) ^ (EMPTY & 0u64.wrapping_sub(x & 1))
        });
        (fp >> 8) ^ entry
    })
}

/// `schemas/versions` is the table of record; `VERSIONS` must match it row
/// for row, and no shipped schema may change once it has an id.
#[test]
fn the_versions_file_matches_the_compiled_table() {
    let table = include_str!("../../versions");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), VERSIONS.len(), "{table}");
    for (i, (row, version)) in rows.iter().zip(VERSIONS).enumerate() {
        assert_eq!(row.len(), 4, "id, file, fingerprint, change: {row:?}");
        assert_eq!(
            row[0],
            (i + 1).to_string(),
            "ids are 1, 2, ... without gaps"
        );
        assert_eq!(row[0], version.id.to_string());
        assert_eq!(row[1], version.path);
        let on_disk = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(version.path),
        )
        .expect("schema file");
        assert_eq!(on_disk, version.text, "{}", version.path);
        let fingerprint = crc64_avro(version.text.as_bytes()).to_le_bytes();
        let hex: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            row[2], hex,
            "{} changed after it got id {}",
            version.path, version.id
        );
    }
    assert_eq!(VERSIONS.last().map(|v| v.id), Some(CURRENT_SCHEMA_ID));
}

#[test]
fn every_schema_file_loads_on_its_own_and_as_a_list() {
    let texts: Vec<&str> = VERSIONS.iter().map(|v| v.text).collect();
    for text in &texts {
        assert!(Schema::parse_str(text).is_ok());
        assert_eq!(Schema::parse_list([text]).map(|l| l.len()).ok(), Some(1));
    }
}

#[test]
fn framing_errors_are_precise() {
    let cases: [(&[u8], &str); 4] = [
        (&[], "record of 0 bytes is shorter than the 5-byte header"),
        (
            &[0, 0],
            "record of 2 bytes is shorter than the 5-byte header",
        ),
        (
            &[0xc3, 1, 0, 0, 2, 0],
            "bad magic byte 0xc3 (expected 0x00: Confluent wire format)",
        ),
        (
            &[0, 0, 0, 0, 9, 0],
            "unknown schema id 9 (this build reads ids 1, 2)",
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decoded_message(bytes), expected, "{bytes:?}");
    }
    assert_eq!(decode(&[0, 0]), Err(DecodeError::TooShort(2)));
    assert_eq!(
        decode(&[0, 0, 0, 1, 0]),
        Err(DecodeError::UnknownSchema(256))
    );
    assert_eq!(decode(&[0, 0, 0, 0, 0]), Err(DecodeError::UnknownSchema(0)));
}

#[test]
fn datum_errors_are_precise() {
    let mut trailing = encode(&view());
    trailing.extend_from_slice(&[0, 0]);
    assert_eq!(
        decoded_message(&trailing),
        "2 bytes left over after the Avro datum for schema id 2"
    );
    let mut truncated = encode(&view());
    truncated.truncate(truncated.len() - 3);
    let mut bad_branch = view_datum(0);
    bad_branch[long(1_795_428_000_500).len()] = 6;
    let mut bad_utf8 = view_datum(0);
    bad_utf8[long(1_795_428_000_500).len() + 2] = 0xff;
    let huge = [long(1), long(0), long(1 << 40)].concat();
    // The texts after the colon are apache-avro's.
    let cases = [
        (truncated, "invalid Avro datum for schema id 2: Failed to read bytes: failed to fill whole buffer"),
        (framed(2, &view_datum(7)), "invalid Avro datum for schema id 2: Enum symbol index out of bounds: got 7 but there are only 5 variants"),
        (framed(1, &view_datum(9)), "invalid Avro datum for schema id 1: Enum value index 9 is out of bounds 5"),
        (framed(2, &view_datum(-1)), "invalid Avro datum for schema id 2: Cannot convert i32 to usize: -1"),
        (framed(2, &bad_branch), "invalid Avro datum for schema id 2: Union index 3 out of bounds: 3"),
        (framed(1, &bad_branch), "invalid Avro datum for schema id 1: Union index 3 out of bounds: 2"),
        (framed(2, &bad_utf8), "invalid Avro datum for schema id 2: Invalid utf-8 string"),
        (framed(2, &[0xff; 12]), "invalid Avro datum for schema id 2: Overflow when decoding integer value"),
        (framed(2, &huge), "invalid Avro datum for schema id 2: Unable to allocate 1099511627776 bytes (maximum allowed: 8388608). Change the limit using `apache_avro::util::max_allocation_bytes`"),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decoded_message(&bytes), expected, "{bytes:?}");
    }
}

#[test]
fn records_breaking_the_collector_rules_are_refused() {
    let mut record = view();
    if let RecordBody::Event(e) = &mut record.body {
        e.item_id = None;
    }
    assert_eq!(
        decoded_message(&encode(&record)),
        "invalid record: `item_id` is required for view events"
    );
    assert_eq!(
        decoded_message(&write_with(1, v1_value(&record).expect("an event"))),
        "invalid record: `item_id` is required for view events"
    );
    if let RecordBody::Event(e) = &mut record.body {
        e.item_id = Some(SmolStr::default());
    }
    assert_eq!(
        decoded_message(&encode(&record)),
        "invalid record: `item_id` must not be empty"
    );
}

#[test]
fn any_event_survives_the_log() {
    proptest!(|(event in arb_event())| {
        let record = LogRecord { accepted_at: 0, body: RecordBody::Event(event) };
        prop_assert_eq!(decode(&encode(&record)), Ok(record));
    });
}

/// Records written by `examples/fastavro_producer.py` (Python, fastavro).
#[test]
fn records_from_an_outside_fastavro_producer_decode() {
    let hex = include_str!("../../testdata/fastavro.hex");
    let records: Vec<Vec<u8>> = hex
        .lines()
        .map(|line| {
            (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect();
    let event = |event_id: &str,
                 user_id: &str,
                 event_type,
                 item: Option<&str>,
                 query: Option<&str>,
                 time,
                 attributes: &[(&str, &str)]| {
        RecordBody::Event(Event {
            event_id: event_id.into(),
            user_id: user_id.into(),
            event_type,
            item_id: item.map(Into::into),
            query: query.map(Into::into),
            event_time: time,
            attributes: attributes.iter().copied().collect(),
        })
    };
    let expected = [
        LogRecord {
            accepted_at: 1_795_428_000_500,
            body: event(
                "e-1",
                "u-42",
                EventType::View,
                Some("listing-9"),
                None,
                1_795_428_000_123,
                &[("city", "Paris")],
            ),
        },
        LogRecord {
            accepted_at: 1_795_428_000_600,
            body: event(
                "e-2",
                "u-42",
                EventType::Search,
                None,
                Some("lofts"),
                1_795_428_000_200,
                &[],
            ),
        },
        LogRecord {
            accepted_at: 1_795_428_000_700,
            body: RecordBody::Retraction(Retraction {
                event_ids: vec!["e-1".into()],
                reason: "bot".into(),
            }),
        },
        LogRecord {
            accepted_at: 1_795_428_000_800,
            body: RecordBody::UserDeletion(UserDeletion {
                user_id: "u-42".into(),
                reason: String::new(),
            }),
        },
        LogRecord {
            accepted_at: 1_795_428_000_900,
            body: event(
                "e-3",
                "u-7",
                EventType::Click,
                Some("listing-3"),
                None,
                1_795_428_000_300,
                &[],
            ),
        },
    ];
    assert_eq!(records.len(), expected.len());
    for (bytes, record) in records.iter().zip(&expected) {
        assert_eq!(decode(bytes).as_ref(), Ok(record));
        if bytes[..HEADER_LEN] == [0, 0, 0, 0, 2] {
            // Both implementations write the same bytes.
            assert_eq!(&encode(record), bytes);
        }
    }
}

/// Another producer's map in another order, or with a key twice: the
/// direct path sorts the first as the full decoder does and leaves the
/// second to it.
#[test]
fn attributes_in_any_order_read_as_the_full_decoder_reads() {
    let with_attributes = |pairs: &[(&[u8], &[u8])]| {
        let mut datum = view_datum(0);
        // `view_datum` ends with a one-pair block and the closing 0.
        datum.truncate(datum.len() - (string(b"city").len() + string(b"Paris").len() + 2));
        datum.extend(long(pairs.len() as i64));
        for (key, value) in pairs {
            datum.extend(string(key));
            datum.extend(string(value));
        }
        datum.extend(long(0));
        framed(CURRENT_SCHEMA_ID, &datum)
    };
    let unsorted = with_attributes(&[(b"city", b"Paris"), (b"area", b"north")]);
    let full = decode_in_full(&unsorted).expect("decodes");
    let direct = direct::read_event(&unsorted).expect("read directly");
    assert_eq!(RecordBody::Event(direct.to_event()), full.body);
    assert_eq!(
        direct.attributes,
        vec![("area", "north"), ("city", "Paris")]
    );

    let repeated = with_attributes(&[(b"city", b"Paris"), (b"city", b"Lyon")]);
    assert_eq!(direct::read_event(&repeated), None);
    assert_eq!(decode(&repeated), decode_in_full(&repeated));
    let RecordBody::Event(event) = decode(&repeated).expect("decodes").body else {
        panic!("an event");
    };
    assert_eq!(event.attributes.get("city"), Some("Lyon"));
}
