//! The event log port.
//!
//! An append-only log of framed Avro records (see `signals-schemas`), split
//! into partitions by key like a Kafka topic. Guarantees every backend keeps:
//!
//! * `append` returns only once its records are durable, and appends all of
//!   them or none;
//! * records of one key keep their order (one key, one partition);
//! * offsets are dense per partition and never reused, so a position can be
//!   replayed from at any time.

mod dead_letter;
pub mod embedded;
mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "registry")]
pub mod registry;

use std::time::Duration;

use async_trait::async_trait;
pub use dead_letter::{DeadLetter, DeadLetterFile, DeadLetterSink};
pub use error::LogError;
pub use signals_core::{LogPosition, Offset, Partition};

/// A record read back from the log, still encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub partition: Partition,
    pub offset: Offset,
    /// Framed Avro bytes exactly as appended (or produced by an outside writer).
    pub bytes: Vec<u8>,
}

/// A record to append: its partitioning key and its framed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    pub key: String,
    pub bytes: Vec<u8>,
}

impl Append {
    /// `record`, keyed by its user (or its first event id), Avro-framed.
    pub fn record(record: &signals_schemas::LogRecord) -> Append {
        Append {
            key: record.key().to_owned(),
            bytes: signals_schemas::avro::encode(record),
        }
    }
}

/// The event log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends `records` durably, all or none; returns each one's position.
    async fn append(&self, records: Vec<Append>) -> Result<Vec<(Partition, Offset)>, LogError>;

    /// The position just past the last durable record of every partition.
    async fn end(&self) -> Result<LogPosition, LogError>;

    /// A reader over every partition from `from` (batch recompute, replays).
    async fn read_from(&self, from: &LogPosition) -> Result<Box<dyn LogReader>, LogError>;

    /// A reader for one member of consumer group `group`, resuming at
    /// `checkpoint` (the durable progress kept beside the speed layer's
    /// writes). Backends with group management may assign only some
    /// partitions to each member.
    async fn subscribe(
        &self,
        group: &str,
        checkpoint: &LogPosition,
    ) -> Result<Box<dyn LogReader>, LogError>;

    /// Whether the log answers now (readiness).
    async fn check(&self) -> Result<(), LogError>;
}

/// Reads records in order within each partition.
#[async_trait]
pub trait LogReader: Send {
    /// Up to `max` records after the last ones returned, waiting at most
    /// `wait` for the first; empty when nothing arrived in time.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError>;

    /// The next offset this reader would return in each partition it reads.
    /// It may pass the last returned record's offset + 1 where the log has
    /// offsets that hold no record (Kafka's transaction markers).
    fn position(&self) -> LogPosition;

    /// Tells the log that everything before `position` is durably processed.
    async fn commit(&mut self, position: &LogPosition) -> Result<(), LogError> {
        let _ = position;
        Ok(())
    }

    /// Hands back entries the caller is done with, so that a reader may
    /// fill their buffers again instead of allocating new ones.
    fn recycle(&mut self, entries: Vec<LogEntry>) {
        drop(entries);
    }
}

/// Which partition a key belongs to: stable across processes and versions.
pub fn partition_for(key: &str, partitions: u32) -> Partition {
    // FNV-1a: tiny, stable, well spread for short ids.
    let hash = key.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % partitions.max(1)
}
