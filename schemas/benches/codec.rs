//! The codec's hot paths, timed: `cargo bench -p signals-schemas`.
//!
//! Plain loops over `std::time::Instant` (no harness): each figure is the best
//! of several rounds, in nanoseconds per record.

use std::hint::black_box;
use std::time::Instant;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use signals_schemas::avro::{self, schema};
use signals_schemas::{json, Attributes, Event, EventType, LogRecord, RecordBody};

const ROUNDS: usize = 5;
const PER_ROUND: u32 = 100_000;

fn best_ns(mut f: impl FnMut()) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..PER_ROUND {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(PER_ROUND)
        })
        .fold(f64::INFINITY, f64::min)
}

fn typical() -> LogRecord {
    LogRecord {
        accepted_at: 1_795_428_000_500,
        body: RecordBody::Event(Event {
            event_id: "0b8f7c1e-5d2a-4c61-9a8e-2f4b6d0c9e17".into(),
            user_id: "u-4242".into(),
            event_type: EventType::View,
            item_id: Some("listing-90210".into()),
            query: None,
            event_time: 1_795_428_000_123,
            attributes: Attributes::from([("city", "Paris"), ("device", "mobile")]),
        }),
    }
}

/// The typical event as a version-1 producer wrote it (no attributes).
fn typical_v1() -> Option<Vec<u8>> {
    let RecordBody::Event(e) = typical().body else {
        return None;
    };
    let text = |s: &str| Value::String(s.to_owned());
    let event = Value::Record(vec![
        ("event_id".into(), text(&e.event_id)),
        ("user_id".into(), text(&e.user_id)),
        ("event_type".into(), Value::Enum(0, "view".into())),
        (
            "item_id".into(),
            Value::Union(1, Box::new(text(e.item_id.as_deref()?))),
        ),
        ("query".into(), Value::Union(0, Box::new(Value::Null))),
        ("event_time".into(), Value::TimestampMillis(e.event_time)),
    ]);
    let record = Value::Record(vec![
        (
            "accepted_at".into(),
            Value::TimestampMillis(1_795_428_000_500),
        ),
        ("body".into(), Value::Union(0, Box::new(event))),
    ]);
    let mut bytes = vec![0, 0, 0, 0, 1];
    GenericDatumWriter::builder(schema(1)?)
        .build()
        .ok()?
        .write_value(&mut bytes, record)
        .ok()?;
    Some(bytes)
}

fn main() {
    let record = typical();
    let bytes = avro::encode(&record);
    assert_eq!(avro::decode(&bytes).as_ref(), Ok(&record));
    let v1 = typical_v1().expect("a version-1 record");
    assert!(avro::decode(&v1).is_ok());
    let RecordBody::Event(event) = &record.body else {
        return;
    };
    let body = serde_json::Value::Array(vec![json::to_json(event); 100]).to_string();

    let encode = best_ns(|| {
        black_box(avro::encode(black_box(&record)));
    });
    let decode = best_ns(|| {
        let _ = black_box(avro::decode(black_box(&bytes)));
    });
    let read_view = best_ns(|| {
        black_box(avro::direct::read_event(black_box(&bytes)));
    });
    let decode_v1 = best_ns(|| {
        let _ = black_box(avro::decode(black_box(&v1)));
    });
    let parse = best_ns(|| {
        let _ = black_box(json::parse_events(black_box(body.as_bytes()), None));
    }) / 100.0;
    println!("record of {} bytes", bytes.len());
    println!("avro::encode                 {encode:>8.0} ns/record");
    println!("avro::decode (current id)    {decode:>8.0} ns/record");
    println!("avro::direct::read_event     {read_view:>8.0} ns/record (borrowed)");
    println!(
        "avro::encode + decode        {:>8.0} ns/record",
        encode + decode
    );
    println!("avro::decode (id 1, resolve) {decode_v1:>8.0} ns/record");
    println!("json::parse_events (array)   {parse:>8.0} ns/event");
}
