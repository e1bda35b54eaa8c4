//! Readers: stream durable records from any offset, waiting for new ones.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::segment::{read_record, HEADER};
use super::Shared;
use crate::{LogEntry, LogError, LogPosition, LogReader, Offset, Partition};

/// Most payload bytes returned by one `next_batch`.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Where one partition is being read.
struct Cursor {
    partition: Partition,
    next: Offset,
    /// The open segment (its base) positioned at `next`.
    file: Option<(Offset, BufReader<File>)>,
}

pub struct EmbeddedReader {
    shared: Arc<Shared>,
    end: watch::Receiver<LogPosition>,
    cursors: Option<Vec<Cursor>>,
    /// Partition to start the next batch with, so none starves.
    turn: usize,
}

impl EmbeddedReader {
    pub fn new(
        shared: Arc<Shared>,
        from: &LogPosition,
        partitions: u32,
    ) -> Result<EmbeddedReader, LogError> {
        let end = shared.end.subscribe();
        let cursors = (0..partitions)
            .map(|p| Cursor {
                partition: p,
                next: from.next(p),
                file: None,
            })
            .collect();
        Ok(EmbeddedReader {
            shared,
            end,
            cursors: Some(cursors),
            turn: 0,
        })
    }

    fn has_more(&self, end: &LogPosition) -> bool {
        self.cursors
            .iter()
            .flatten()
            .any(|c| c.next < end.next(c.partition))
    }
}

#[async_trait]
impl LogReader for EmbeddedReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        let mut end = self.end.borrow_and_update().clone();
        if !self.has_more(&end) {
            let changed = tokio::time::timeout(wait, self.end.changed()).await;
            match changed {
                Ok(Ok(())) => end = self.end.borrow_and_update().clone(),
                Ok(Err(_)) => {
                    return Err(LogError::Unavailable("the embedded log was closed".into()))
                }
                Err(_) => return Ok(Vec::new()),
            }
            if !self.has_more(&end) {
                return Ok(Vec::new());
            }
        }
        let mut cursors = self.cursors.take().ok_or_else(|| {
            LogError::Unavailable("a previous read of this reader was interrupted".into())
        })?;
        let shared = self.shared.clone();
        let turn = self.turn;
        let (cursors, result) = tokio::task::spawn_blocking(move || {
            let result = read_batch(&shared, &mut cursors, &end, max.max(1), turn);
            (cursors, result)
        })
        .await
        .map_err(|e| LogError::Unavailable(format!("log read failed: {e}")))?;
        self.turn = (turn + 1) % cursors.len().max(1);
        self.cursors = Some(cursors);
        result
    }

    fn position(&self) -> LogPosition {
        self.cursors
            .iter()
            .flatten()
            .map(|c| (c.partition, c.next))
            .collect()
    }
}

fn read_batch(
    shared: &Shared,
    cursors: &mut [Cursor],
    end: &LogPosition,
    max: usize,
    turn: usize,
) -> Result<Vec<LogEntry>, LogError> {
    let mut entries = Vec::new();
    let mut bytes = 0;
    let count = cursors.len();
    // A fair share per partition first, then whatever budget is left.
    let share = (max / count.max(1)).max(1);
    for round in [share, max] {
        for i in 0..count {
            let cursor = &mut cursors[(turn + i) % count];
            let stop = end.next(cursor.partition);
            let mut taken = 0;
            while cursor.next < stop
                && taken < round
                && entries.len() < max
                && bytes < MAX_BATCH_BYTES
            {
                let entry = read_one(shared, cursor)?;
                bytes += entry.bytes.len();
                entries.push(entry);
                taken += 1;
            }
        }
        if entries.len() >= max || bytes >= MAX_BATCH_BYTES {
            break;
        }
    }
    Ok(entries)
}

/// Reads the record at `cursor.next`, which is known to be durable.
fn read_one(shared: &Shared, cursor: &mut Cursor) -> Result<LogEntry, LogError> {
    let in_file = cursor.file.as_ref().map(|(base, _)| *base);
    let segment_base = {
        let state = shared.partitions[cursor.partition as usize]
            .read()
            .map_err(|_| LogError::Unavailable("embedded log lock poisoned".into()))?;
        let segment = state.find(cursor.next)?.ok_or_else(|| {
            LogError::Corrupt(format!(
                "offset {} of partition {} is not in any segment",
                cursor.next, cursor.partition
            ))
        })?;
        if in_file != Some(segment.base) {
            // Open the segment and skip from the nearest indexed record.
            let (mut offset, position) = segment.seek_hint(cursor.next);
            let mut file = BufReader::with_capacity(256 * 1024, File::open(&segment.path)?);
            file.seek(SeekFrom::Start(position))?;
            let mut scratch = Vec::new();
            while offset < cursor.next {
                read_record(&mut file, &mut scratch)?.ok_or_else(|| {
                    LogError::Corrupt(format!(
                        "{} ends before offset {}",
                        segment.path.display(),
                        cursor.next
                    ))
                })?;
                offset += 1;
            }
            cursor.file = Some((segment.base, file));
        }
        segment.base
    };
    let Some((_, file)) = cursor.file.as_mut() else {
        return Err(LogError::Unavailable("segment handle missing".into()));
    };
    let mut payload = Vec::new();
    let (_, crc) = read_record(file, &mut payload)?.ok_or_else(|| {
        LogError::Corrupt(format!(
            "partition {} segment {segment_base}: record {} is missing",
            cursor.partition, cursor.next
        ))
    })?;
    if crc32fast::hash(&payload) != crc {
        return Err(LogError::Corrupt(format!(
            "partition {} offset {}: CRC mismatch ({} header bytes + {} payload)",
            cursor.partition,
            cursor.next,
            HEADER,
            payload.len()
        )));
    }
    let entry = LogEntry {
        partition: cursor.partition,
        offset: cursor.next,
        bytes: payload,
    };
    cursor.next += 1;
    // Past a segment's end the next read opens the following segment; the
    // active segment's handle stays open and sees later appends.
    Ok(entry)
}
