//! The one writer thread: group commit of every queued append.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::error;

use super::{EmbeddedLogOptions, FsyncPolicy, Shared};
use crate::{LogError, Offset, Partition};

/// Most requests folded into one group commit.
const MAX_GROUP: usize = 4096;

/// Records to append, already assigned to partitions; empty is a ping.
pub struct Request {
    pub records: Vec<(Partition, Vec<u8>)>,
    pub reply: oneshot::Sender<Result<Vec<(Partition, Offset)>, LogError>>,
}

pub fn spawn(
    shared: Arc<Shared>,
    options: EmbeddedLogOptions,
) -> Result<Sender<Request>, LogError> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals-log-writer".into())
        .spawn(move || run(&shared, &options, &receiver))?;
    Ok(sender)
}

/// The open append handle of each partition's active segment.
struct Files(Vec<Option<(Offset, File)>>);

fn run(shared: &Shared, options: &EmbeddedLogOptions, requests: &Receiver<Request>) {
    let mut files = Files((0..shared.partitions.len()).map(|_| None).collect());
    // Ends when every sender (the log) is dropped: queued requests drain first.
    while let Ok(first) = requests.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        match commit(shared, options, &mut files, &group) {
            Ok(assigned) => {
                for (request, positions) in group.into_iter().zip(assigned) {
                    let _ = request.reply.send(Ok(positions));
                }
            }
            Err(failure) => {
                error!(error = %failure, "event log append failed; nothing of it was kept");
                // Handles may point at truncated files; reopen on next use.
                files.0.iter_mut().for_each(|f| *f = None);
                for request in group {
                    let _ = request.reply.send(Err(LogError::Unavailable(format!(
                        "append failed: {failure}"
                    ))));
                }
            }
        }
    }
}

/// What one partition gets in a group.
struct Pending {
    frames: Vec<u8>,
    /// (payload length, position in `frames`) per record.
    records: Vec<(u64, u64)>,
}

fn commit(
    shared: &Shared,
    options: &EmbeddedLogOptions,
    files: &mut Files,
    group: &[Request],
) -> Result<Vec<Vec<(Partition, Offset)>>, LogError> {
    // Frame everything first and hand out offsets, touching nothing yet.
    let mut pending: BTreeMap<Partition, Pending> = BTreeMap::new();
    let mut next: BTreeMap<Partition, Offset> = BTreeMap::new();
    let mut assigned = Vec::with_capacity(group.len());
    for request in group {
        let mut positions = Vec::with_capacity(request.records.len());
        for (partition, bytes) in &request.records {
            let offset = match next.get_mut(partition) {
                Some(o) => o,
                None => {
                    let state = lock(shared, *partition)?;
                    next.entry(*partition).or_insert(state.next_offset())
                }
            };
            positions.push((*partition, *offset));
            *offset += 1;
            let slot = pending.entry(*partition).or_insert_with(|| Pending {
                frames: Vec::new(),
                records: Vec::new(),
            });
            slot.records
                .push((bytes.len() as u64, slot.frames.len() as u64));
            slot.frames
                .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            slot.frames
                .extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
            slot.frames.extend_from_slice(bytes);
        }
        assigned.push(positions);
    }

    // Write and sync each partition; undo every partition on any failure.
    let mut written: Vec<(Partition, u64)> = Vec::new();
    let outcome = (|| -> Result<(), LogError> {
        for (partition, slot) in &pending {
            let (base, start) = {
                let mut state = write_lock(shared, *partition)?;
                if state.active().bytes >= options.segment_bytes {
                    let base = state.next_offset();
                    state.roll(base)?;
                }
                let active = state.active();
                (active.base, active.bytes)
            };
            let file = open_active(shared, files, *partition, base)?;
            written.push((*partition, start));
            file.write_all(&slot.frames)?;
            if options.fsync == FsyncPolicy::Always {
                file.sync_data()?;
            }
        }
        Ok(())
    })();
    if let Err(failure) = outcome {
        for (partition, start) in written {
            if let Ok(state) = lock(shared, partition) {
                let path = state.segments.last().map(|s| s.path.clone());
                if let Some(path) = path {
                    if let Ok(file) = OpenOptions::new().write(true).open(path) {
                        let _ = file.set_len(start).and_then(|()| file.sync_all());
                    }
                }
            }
        }
        return Err(failure);
    }

    // Durable: make the records visible to readers.
    for (partition, slot) in &pending {
        let mut state = write_lock(shared, *partition)?;
        let active = state.active();
        let start = active.bytes;
        for (length, at) in &slot.records {
            active.push(start + at, *length);
        }
        debug_assert_eq!(active.bytes, start + slot.frames.len() as u64);
    }
    shared.end.send_modify(|end| {
        for (partition, offset) in &next {
            end.advance(*partition, *offset);
        }
    });
    Ok(assigned)
}

fn open_active<'f>(
    shared: &Shared,
    files: &'f mut Files,
    partition: Partition,
    base: Offset,
) -> Result<&'f mut File, LogError> {
    let slot = &mut files.0[partition as usize];
    if slot.as_ref().is_none_or(|(b, _)| *b != base) {
        let path = lock(shared, partition)?
            .segments
            .last()
            .map(|s| s.path.clone())
            .ok_or_else(|| LogError::Corrupt(format!("partition {partition} has no segment")))?;
        *slot = Some((base, OpenOptions::new().append(true).open(path)?));
    }
    slot.as_mut()
        .map(|(_, f)| f)
        .ok_or_else(|| LogError::Unavailable("segment handle missing".into()))
}

fn lock(
    shared: &Shared,
    partition: Partition,
) -> Result<std::sync::RwLockReadGuard<'_, super::segment::PartitionState>, LogError> {
    shared
        .partitions
        .get(partition as usize)
        .ok_or_else(|| LogError::Invalid(format!("no partition {partition}")))?
        .read()
        .map_err(|_| LogError::Unavailable("embedded log lock poisoned".into()))
}

fn write_lock(
    shared: &Shared,
    partition: Partition,
) -> Result<std::sync::RwLockWriteGuard<'_, super::segment::PartitionState>, LogError> {
    shared
        .partitions
        .get(partition as usize)
        .ok_or_else(|| LogError::Invalid(format!("no partition {partition}")))?
        .write()
        .map_err(|_| LogError::Unavailable("embedded log lock poisoned".into()))
}
