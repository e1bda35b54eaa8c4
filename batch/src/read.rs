//! Reading the log up to a position, as every batch job does.

use std::time::Duration;

use signals_core::{LogPosition, Offset, Partition};
use signals_log::{EventLog, LogError};
use signals_schemas::{avro, Millis, RecordBody};

/// What reading saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Read {
    pub records: u64,
    /// Records that did not decode: the speed layer dead-letters them, the
    /// batch skips them alike.
    pub undecodable: u64,
}

/// Hands every record of the log before `until`, in log order per
/// partition, with its position and acceptance time, to `each`; `progress`
/// hears the offsets read so far.
pub async fn read_log(
    log: &dyn EventLog,
    until: &LogPosition,
    chunk: usize,
    mut each: impl FnMut(Partition, Offset, Millis, RecordBody),
    mut progress: impl FnMut(u64),
) -> Result<Read, LogError> {
    let mut read = Read::default();
    let mut reader = log.read_from(&LogPosition::new()).await?;
    let mut done = LogPosition::new();
    // The reader's own position also passes offsets that hold no record
    // (Kafka's transaction markers).
    while !reader.position().reaches(until) {
        let entries = reader.next_batch(chunk, Duration::from_millis(50)).await?;
        for entry in entries {
            if !until.covers(entry.partition, entry.offset) {
                continue;
            }
            done.advance(entry.partition, entry.offset + 1);
            read.records += 1;
            match avro::decode(&entry.bytes) {
                Ok(record) => each(
                    entry.partition,
                    entry.offset,
                    record.accepted_at,
                    record.body,
                ),
                Err(_) => read.undecodable += 1,
            }
        }
        progress(done.total());
    }
    Ok(read)
}
