//! Readers: stream durable records from any offset, waiting for new ones.
//!
//! File reads run on the blocking pool, one `spawn_blocking` per batch, with
//! each partition's segment file and read buffer kept across batches. A
//! batch cancelled while its read runs is not lost: the read finishes in the
//! background and the next call returns it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::frame::{FrameError, FrameReader};
use super::{read_state, Shared};
use crate::{LogEntry, LogError, LogPosition, LogReader, Offset, Partition};

/// Most payload bytes returned by one `next_batch` (at least one record).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Most bytes of recycled entry buffers kept for the next reads.
const MAX_SPARE_BYTES: usize = 2 * MAX_BATCH_BYTES;

/// Where one partition is being read.
struct Cursor {
    partition: Partition,
    /// The next offset to return.
    next: Offset,
    /// The segment being read (its base), positioned at `next`.
    open: Option<(Offset, FrameReader)>,
}

/// What a background read hands back: the cursors, the spare buffers it
/// did not use, and the records read.
type Read = (Vec<Cursor>, Spare, Result<Vec<LogEntry>, LogError>);

/// Buffers of entries handed back ([`LogReader::recycle`]), filled again
/// by the next reads. Reading allocates on a blocking thread and the caller
/// frees on its own: freeing another thread's allocation was 8 % of a batch
/// run's CPU.
#[derive(Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl Spare {
    fn keep(&mut self, entries: Vec<LogEntry>) {
        // Taken from the end: reversed, the buffers are filled again in the
        // order they were, mostly one after another in memory.
        for entry in entries.into_iter().rev() {
            let capacity = entry.bytes.capacity();
            if self.bytes + capacity > MAX_SPARE_BYTES {
                break;
            }
            self.bytes += capacity;
            self.buffers.push(entry.bytes);
        }
    }

    /// A copy of `payload`, in a spare buffer if one is left.
    fn filled(&mut self, payload: &[u8]) -> Vec<u8> {
        match self.buffers.pop() {
            Some(mut buffer) => {
                self.bytes -= buffer.capacity();
                buffer.clear();
                buffer.extend_from_slice(payload);
                buffer
            }
            None => payload.to_vec(),
        }
    }
}

pub(super) struct EmbeddedReader {
    shared: Arc<Shared>,
    end: watch::Receiver<LogPosition>,
    /// The next offset of every partition, as returned so far.
    position: LogPosition,
    /// Absent while a read is in flight (or after one panicked).
    cursors: Option<Vec<Cursor>>,
    in_flight: Option<JoinHandle<Read>>,
    /// Partition that starts the next batch, so that none starves.
    turn: usize,
    /// Absent while a read is in flight.
    spare: Option<Spare>,
}

impl EmbeddedReader {
    /// A reader of every partition from `from`, already validated.
    pub fn new(shared: Arc<Shared>, from: &LogPosition) -> EmbeddedReader {
        let end = shared.end.clone();
        let cursors: Vec<Cursor> = (0..shared.partitions.len() as Partition)
            .map(|partition| Cursor {
                partition,
                next: from.next(partition),
                open: None,
            })
            .collect();
        EmbeddedReader {
            shared,
            end,
            position: cursors.iter().map(|c| (c.partition, c.next)).collect(),
            cursors: Some(cursors),
            in_flight: None,
            turn: 0,
            spare: Some(Spare::default()),
        }
    }

    /// Waits until some partition has records past this reader, or until
    /// `wait` has passed (false).
    async fn wait_for_records(&mut self, wait: Duration) -> Result<bool, LogError> {
        let deadline = Instant::now() + wait;
        loop {
            if has_more(&self.position, &self.end.borrow_and_update()) {
                return Ok(true);
            }
            match tokio::time::timeout_at(deadline, self.end.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(LogError::Unavailable(
                        "the embedded event log was closed".into(),
                    ))
                }
                Err(_) => return Ok(false),
            }
        }
    }

    /// Starts reading up to `max` records in the background.
    fn start_read(&mut self, max: usize) -> Result<(), LogError> {
        let mut cursors = self.cursors.take().ok_or_else(|| {
            LogError::Unavailable("this reader is unusable: an earlier read of it panicked".into())
        })?;
        let end = self.end.borrow().clone();
        let shared = self.shared.clone();
        let turn = self.turn;
        self.turn = self.turn.wrapping_add(1);
        let mut spare = self.spare.take().unwrap_or_default();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let result = read_batch(&shared, &mut cursors, &mut spare, &end, max.max(1), turn);
            (cursors, spare, result)
        }));
        Ok(())
    }

    /// Waits for the read in flight; cancel-safe (the handle stays until done).
    async fn finish_read(&mut self) -> Result<Vec<LogEntry>, LogError> {
        let Some(handle) = self.in_flight.as_mut() else {
            return Ok(Vec::new());
        };
        let joined = handle.await;
        self.in_flight = None;
        let (cursors, spare, result) = joined
            .map_err(|e| LogError::Unavailable(format!("a read of the event log failed: {e}")))?;
        for cursor in &cursors {
            self.position.set(cursor.partition, cursor.next);
        }
        self.cursors = Some(cursors);
        self.spare = Some(spare);
        result
    }
}

fn has_more(position: &LogPosition, end: &LogPosition) -> bool {
    end.iter().any(|(p, e)| position.next(p) < e)
}

#[async_trait]
impl LogReader for EmbeddedReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        if self.in_flight.is_none() {
            if !self.wait_for_records(wait).await? {
                return Ok(Vec::new());
            }
            self.start_read(max)?;
        }
        self.finish_read().await
    }

    fn position(&self) -> LogPosition {
        self.position.clone()
    }

    fn recycle(&mut self, entries: Vec<LogEntry>) {
        // While a read is in flight its spare buffers are with it: these go.
        if let Some(spare) = &mut self.spare {
            spare.keep(entries);
        }
    }
}

/// The records of one batch and what they weigh.
struct Batch {
    entries: Vec<LogEntry>,
    bytes: usize,
    max: usize,
}

impl Batch {
    fn full(&self) -> bool {
        self.entries.len() >= self.max || self.bytes >= MAX_BATCH_BYTES
    }
}

/// Reads up to `max` durable records: first a fair share of every partition
/// (starting with partition `turn`), then whatever room is left. A failure
/// after some records were read returns those; the next call meets it again.
fn read_batch(
    shared: &Shared,
    cursors: &mut [Cursor],
    spare: &mut Spare,
    end: &LogPosition,
    max: usize,
    turn: usize,
) -> Result<Vec<LogEntry>, LogError> {
    let mut batch = Batch {
        entries: Vec::with_capacity(max.min(4096)),
        bytes: 0,
        max,
    };
    let count = cursors.len().max(1);
    for quota in [max.div_ceil(count), max] {
        for i in 0..cursors.len() {
            let cursor = &mut cursors[(turn % count + i) % count];
            if let Err(error) = read_partition(shared, cursor, spare, end, quota, &mut batch) {
                // Re-open and seek afresh next time.
                cursor.open = None;
                if batch.entries.is_empty() {
                    return Err(error);
                }
                return Ok(batch.entries);
            }
        }
        if batch.full() {
            break;
        }
    }
    Ok(batch.entries)
}

/// Reads up to `quota` records of one partition into `batch`.
fn read_partition(
    shared: &Shared,
    cursor: &mut Cursor,
    spare: &mut Spare,
    end: &LogPosition,
    quota: usize,
    batch: &mut Batch,
) -> Result<(), LogError> {
    let stop = end.next(cursor.partition);
    let mut taken = 0;
    while taken < quota && cursor.next < stop && !batch.full() {
        let (segment_end, durable_bytes) = locate(shared, cursor)?;
        let Some((base, frames)) = cursor.open.as_mut() else {
            return Err(LogError::Unavailable("no segment open".into()));
        };
        while taken < quota && cursor.next < stop.min(segment_end) && !batch.full() {
            let payload = frames
                .next(durable_bytes, true)
                .map_err(|e| bad_record(cursor.partition, cursor.next, *base, &e))?
                .ok_or_else(|| {
                    bad_record(cursor.partition, cursor.next, *base, &FrameError::Truncated)
                })?;
            batch.bytes += payload.len();
            batch.entries.push(LogEntry {
                partition: cursor.partition,
                offset: cursor.next,
                bytes: spare.filled(payload),
            });
            cursor.next += 1;
            taken += 1;
        }
    }
    Ok(())
}

/// Makes sure the segment holding `cursor.next` is open and positioned at
/// it; returns that segment's end offset and durable size.
fn locate(shared: &Shared, cursor: &mut Cursor) -> Result<(Offset, u64), LogError> {
    let state = read_state(shared, cursor.partition);
    let segment = state.find(cursor.next)?;
    if cursor
        .open
        .as_ref()
        .is_none_or(|(base, _)| *base != segment.base)
    {
        let (mut offset, at) = segment.seek_hint(cursor.next);
        let mut frames = FrameReader::open(&segment.path, at)?;
        while offset < cursor.next {
            frames
                .next(segment.bytes, false)
                .map_err(|e| bad_record(cursor.partition, offset, segment.base, &e))?
                .ok_or_else(|| {
                    bad_record(
                        cursor.partition,
                        offset,
                        segment.base,
                        &FrameError::Truncated,
                    )
                })?;
            offset += 1;
        }
        cursor.open = Some((segment.base, frames));
    }
    Ok((segment.end(), segment.bytes))
}

fn bad_record(partition: Partition, offset: Offset, base: Offset, error: &FrameError) -> LogError {
    match error {
        FrameError::Io(e) => LogError::Io(std::io::Error::new(
            e.kind(),
            format!(
                "reading offset {offset} of partition {partition} (segment {base:020}.log): {e}"
            ),
        )),
        bad => LogError::Corrupt(format!(
            "offset {offset} of partition {partition} (segment {base:020}.log): {bad}"
        )),
    }
}
