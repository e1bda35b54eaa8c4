//! Avro on the log, framed as Confluent's wire format.
//!
//! A record is the magic byte `0x00`, the writer's schema id as 4 bytes
//! big-endian, then the Avro binary datum written with that schema. Ids are
//! assigned by this repository in `schemas/versions` (see
//! `schemas/EVOLUTION.md`); [`VERSIONS`] is the same table compiled in.
//!
//! Guarantees:
//! - [`encode`] always writes [`CURRENT_SCHEMA_ID`].
//! - [`decode`] reads every id in [`VERSIONS`]: a record written with an older
//!   schema is resolved to the current one by Avro schema resolution (new
//!   fields take their defaults), so it reads as today's types.
//! - Whatever [`decode`] returns satisfies the collector's rules
//!   ([`crate::json::check_event`]); anything else is a [`DecodeError`] that
//!   says precisely why. Every `DecodeError` is permanent: the bytes will never
//!   decode, so callers dead-letter them and never retry.
//!
//! Cost: schemas are parsed and resolved once per process (which also caps
//! apache-avro's per-allocation limit at [`MAX_ALLOCATION_BYTES`] for the
//! process, so a corrupt length prefix fails fast). The current id is
//! written and read through apache-avro's schema-aware serde path (well under
//! a microsecond each way for a typical event); older ids go through the
//! generic `Value` path with resolution (a few microseconds), which only
//! records written before an upgrade take. `cargo bench -p signals-schemas`
//! measures both.
//!
//! The serde derives of [`LogRecord`] and its parts *are* the Avro mapping:
//! field names are the schema's, and the variant order of [`RecordBody`] is
//! the order of the branches of the `body` union. The tests compare this path
//! with a name-based mapping on arbitrary records so that a drift fails them.

pub mod direct;
mod foreign;
mod resolve;
#[cfg(test)]
mod tests;

pub use foreign::{known_id_of, ForeignWriter};

use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::event::{LogRecord, RecordBody};
use crate::json::check_event;

/// The first byte of every framed record.
pub const MAGIC_BYTE: u8 = 0x00;

/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// The schema id written by this build: the last row of [`VERSIONS`].
pub const CURRENT_SCHEMA_ID: u32 = 2;

/// The current schema's text (`schemas/log_record.avsc`).
pub const CURRENT_SCHEMA: &str = include_str!("../../log_record.avsc");

/// Largest single allocation the Avro decoder may make for one string, map or
/// array. The biggest legitimate one is a retraction's 10 000 ids; a corrupt
/// length prefix must not reserve hundreds of megabytes first.
pub const MAX_ALLOCATION_BYTES: usize = 8 << 20;

/// One row of `schemas/versions`: a schema id and the schema it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaVersion {
    /// The id in the frame header.
    pub id: u32,
    /// The file under `schemas/` holding the schema text.
    pub path: &'static str,
    /// The schema text (Avro JSON), compiled in.
    pub text: &'static str,
}

/// Every schema this build can read, oldest first; ids are 1, 2, ... without
/// gaps and the last one is [`CURRENT_SCHEMA_ID`]. Mirrors `schemas/versions`
/// (a test holds them equal).
pub const VERSIONS: &[SchemaVersion] = &[
    SchemaVersion {
        id: 1,
        path: "history/log_record.v1.avsc",
        text: include_str!("../../history/log_record.v1.avsc"),
    },
    SchemaVersion {
        id: CURRENT_SCHEMA_ID,
        path: "log_record.avsc",
        text: CURRENT_SCHEMA,
    },
];

/// Why bytes on the log are not a record. Every variant is permanent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("bad magic byte 0x{0:02x} (expected 0x00: Confluent wire format)")]
    BadMagic(u8),
    #[error("unknown schema id {0} (this build reads ids {ids})", ids = known_ids())]
    UnknownSchema(u32),
    #[error("invalid Avro datum for schema id {id}: {message}")]
    Avro { id: u32, message: String },
    #[error("{count} bytes left over after the Avro datum for schema id {id}")]
    TrailingBytes { id: u32, count: usize },
    #[error("invalid record: {0}")]
    Invalid(String),
}

fn known_ids() -> String {
    VERSIONS
        .iter()
        .map(|v| v.id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The parsed schemas, in the order of [`VERSIONS`].
static SCHEMAS: LazyLock<Vec<Schema>> = LazyLock::new(|| {
    // Set before anything decodes; the first call in a process wins.
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    VERSIONS
        .iter()
        .map(|version| {
            // Compiled in and parsed by the tests: a failure is a build defect.
            #[allow(clippy::expect_used)]
            Schema::parse_str(version.text).expect("a shipped schema parses")
        })
        .collect()
});

/// Readers and the writer, each resolved once.
struct Codec {
    writer: GenericDatumWriter<'static>,
    /// Reads the current id straight into Rust types (serde, no resolution).
    current: GenericDatumReader<'static>,
    /// Reads an older id as a generic value resolved to the current schema.
    older: Vec<(u32, GenericDatumReader<'static>)>,
}

static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    let current = current_schema();
    // Same as above: the tests build every one of these.
    #[allow(clippy::expect_used)]
    let older = VERSIONS
        .iter()
        .zip(SCHEMAS.iter())
        .filter(|(version, _)| version.id != CURRENT_SCHEMA_ID)
        .map(|(version, writer)| {
            let reader = GenericDatumReader::builder(writer)
                .reader_schema(current)
                .build()
                .expect("an older schema resolves to the current one");
            (version.id, reader)
        })
        .collect();
    #[allow(clippy::expect_used)]
    Codec {
        writer: GenericDatumWriter::builder(current)
            .build()
            .expect("the current schema resolves"),
        current: GenericDatumReader::builder(current)
            .build()
            .expect("the current schema resolves"),
        older,
    }
});

fn current_schema() -> &'static Schema {
    // VERSIONS ends with the current id (tested), so the lookup succeeds.
    #[allow(clippy::expect_used)]
    schema(CURRENT_SCHEMA_ID).expect("the current schema is in VERSIONS")
}

/// The parsed schema registered under `id`, if this build knows it.
pub fn schema(id: u32) -> Option<&'static Schema> {
    VERSIONS
        .iter()
        .position(|v| v.id == id)
        .and_then(|i| SCHEMAS.get(i))
}

/// Encodes `record` with the current schema, framed.
pub fn encode(record: &LogRecord) -> Vec<u8> {
    let mut framed = Vec::with_capacity(128);
    framed.push(MAGIC_BYTE);
    framed.extend_from_slice(&CURRENT_SCHEMA_ID.to_be_bytes());
    // Every LogRecord fits the current schema (the round-trip property test
    // covers all shapes); a failure here is a defect in this crate.
    #[allow(clippy::expect_used)]
    CODEC
        .writer
        .write_ser(&mut framed, record)
        .expect("a LogRecord fits the current schema");
    framed
}

/// Decodes a framed record written with any known schema version.
pub fn decode(bytes: &[u8]) -> Result<LogRecord, DecodeError> {
    // Almost every record is an event of the current schema: read without
    // an allocation per string (most of what decoding cost the speed layer).
    match direct::read_event(bytes) {
        Some(event) => Ok(LogRecord {
            accepted_at: event.accepted_at,
            body: RecordBody::Event(event.to_event()),
        }),
        None => decode_in_full(bytes),
    }
}

/// [`decode`] without its direct path: every record through the Avro
/// library. The reference the direct path is held to.
pub fn decode_in_full(bytes: &[u8]) -> Result<LogRecord, DecodeError> {
    let (id, mut datum) = frame(bytes)?;
    let avro = |e: apache_avro::Error| DecodeError::Avro {
        id,
        message: e.to_string(),
    };
    let record = if id == CURRENT_SCHEMA_ID {
        CODEC
            .current
            .read_deser::<LogRecord>(&mut datum)
            .map_err(avro)?
    } else {
        let (_, reader) = CODEC
            .older
            .iter()
            .find(|(known, _)| *known == id)
            .ok_or(DecodeError::UnknownSchema(id))?;
        resolve::record(reader.read_value(&mut datum).map_err(avro)?)?
    };
    if !datum.is_empty() {
        return Err(DecodeError::TrailingBytes {
            id,
            count: datum.len(),
        });
    }
    if let RecordBody::Event(event) = &record.body {
        // Outside producers write to the log too: hold them to the collector's rules.
        check_event(event).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    }
    Ok(record)
}

/// Sets the schema id in the header of a framed record (a registry's id for
/// the same schema); bytes shorter than the header are left alone.
pub fn set_schema_id(framed: &mut [u8], id: u32) {
    if let Some(header) = framed.get_mut(1..HEADER_LEN) {
        header.copy_from_slice(&id.to_be_bytes());
    }
}

/// Splits the header off: the schema id and the Avro datum.
pub fn frame(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    let Some((header, datum)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    let [magic, id @ ..] = *header;
    if magic != MAGIC_BYTE {
        return Err(DecodeError::BadMagic(magic));
    }
    Ok((u32::from_be_bytes(id), datum))
}
