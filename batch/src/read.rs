//! Reading the log up to a position, as every batch job does.

use std::time::Duration;

use signals_core::{LogPosition, Offset, Partition};
use signals_log::{EventLog, LogError};
use signals_schemas::{avro, Millis, RecordBody};

use crate::packed::{self, EventFields};

/// One record of the log as the batch reads it.
pub enum Record<'a> {
    /// A plain event, read straight into its packed form (the bytes).
    Event(EventFields<'a>, &'a [u8]),
    /// Anything else, decoded in full, with its acceptance time.
    Other(Millis, RecordBody),
}

impl Record<'_> {
    /// The event id, if the record is an event.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            Record::Event(fields, _) => Some(fields.event_id),
            Record::Other(_, RecordBody::Event(event)) => Some(&event.event_id),
            Record::Other(..) => None,
        }
    }

    /// When the record was accepted.
    pub fn accepted_at(&self) -> Millis {
        match self {
            Record::Event(fields, _) => fields.accepted_at,
            Record::Other(accepted_at, _) => *accepted_at,
        }
    }
}

/// What reading saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Read {
    pub records: u64,
    /// Records that did not decode: the speed layer dead-letters them, the
    /// batch skips them alike.
    pub undecodable: u64,
}

/// Hands every record of the log before `until`, in log order per
/// partition, with its position, to `each`; `progress` hears the offsets
/// read so far.
pub async fn read_log(
    log: &dyn EventLog,
    until: &LogPosition,
    chunk: usize,
    mut each: impl FnMut(Partition, Offset, Record<'_>),
    mut progress: impl FnMut(u64),
) -> Result<Read, LogError> {
    let mut read = Read::default();
    let mut reader = log.read_from(&LogPosition::new()).await?;
    let mut done = LogPosition::new();
    let mut packed = Vec::new();
    // The reader's own position also passes offsets that hold no record
    // (Kafka's transaction markers).
    while !reader.position().reaches(until) {
        let entries = reader.next_batch(chunk, Duration::from_millis(50)).await?;
        for entry in &entries {
            if !until.covers(entry.partition, entry.offset) {
                continue;
            }
            done.advance(entry.partition, entry.offset + 1);
            read.records += 1;
            if let Some(fields) = packed::read_event(&entry.bytes, &mut packed) {
                each(
                    entry.partition,
                    entry.offset,
                    Record::Event(fields, &packed),
                );
                continue;
            }
            match avro::decode(&entry.bytes) {
                Ok(record) => each(
                    entry.partition,
                    entry.offset,
                    Record::Other(record.accepted_at, record.body),
                ),
                Err(_) => read.undecodable += 1,
            }
        }
        reader.recycle(entries);
        progress(done.total());
    }
    Ok(read)
}
