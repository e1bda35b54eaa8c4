//! The embedded event log: append-only segment files on local disk, with
//! Kafka's semantics (partitions by key, dense offsets, replay from any
//! offset). The default backend of `signals up`.
//!
//! # Guarantees
//!
//! * **Durability.** With [`FsyncPolicy::Always`] (the default) `append`
//!   returns `Ok` only after its records are written and `fdatasync`ed: a
//!   crash of the process or of the machine after that keeps them.
//!   [`FsyncPolicy::Never`] leaves flushing to the OS (benchmarks and tests
//!   only): a crash of the process still keeps every acknowledged record (it
//!   is in the page cache), a crash of the machine may lose a tail of them.
//!   Segments are synced when they are sealed and on a clean close under
//!   either policy.
//! * **Group commit.** One writer thread takes every queued append, writes
//!   them, syncs each touched partition file once, then answers them all:
//!   concurrent appends share fsyncs.
//! * **All or none.** If a write or sync fails, every touched file is
//!   truncated back to its durable size and every append of that group fails
//!   with [`LogError::Unavailable`]: no record of it is visible, now or after
//!   a restart, and its offsets are handed out again to the next append. (A
//!   partition whose file cannot even be truncated refuses appends, and
//!   [`EventLog::check`] fails, until the log is reopened.) An append that
//!   was never answered (its caller gave up, or the process crashed) may
//!   survive whole, in part (whole records only) or not at all, like a Kafka
//!   produce that timed out: the caller retries, and events are idempotent
//!   by event id.
//! * **Order.** Offsets are dense per partition from 0; a key always maps to
//!   the same partition ([`partition_for`]), so one key's records keep their
//!   order. Readers return records in offset order per partition and see
//!   only durable records.
//! * **Recovery.** On open, the tail segment of every partition is checked
//!   record by record (length and CRC-32). A torn or corrupt tail can only
//!   hold records never acknowledged; it is cut off with a warning naming the
//!   bytes dropped. A bad record in a sealed segment is reported as
//!   [`LogError::Corrupt`] instead, and readers verify every record's CRC.
//! * **Retention.** [`EmbeddedLog::delete_before`] removes whole segments
//!   below a position, never the active one. Reading below
//!   [`EmbeddedLog::earliest`] fails with a precise [`LogError::Invalid`],
//!   never skips silently.
//! * **One owner.** The directory is locked (`flock`) while the log is open:
//!   a second process, or a second `EmbeddedLog` on the same directory, gets
//!   [`LogError::Unavailable`] instead of two writers.
//!
//! Nothing here blocks the async runtime except [`EmbeddedLog::open`] and
//! [`EmbeddedLog::delete_before`] (file-system calls, meant for start-up and
//! maintenance) and dropping the log, which joins the writer thread after it
//! drains the requests already queued.
//!
//! # Layout
//!
//! `dir/meta.json` holds the partition count, fixed at creation; `dir/lock`
//! is the lock file. `dir/partition-<p>/<base offset, 20 digits>.log` are the
//! segments; each record is framed `[u32 LE length][u32 LE CRC-32 of
//! payload][payload]`. Empty records are refused, so zeroed bytes (which a
//! machine crash can leave at the end of a file) never parse as records. A
//! segment is sealed at the first group commit after it reaches
//! `segment_bytes`. Each segment keeps an in-memory sparse index (an entry
//! every 4 KiB) so that a reader starting at any offset seeks directly.

mod config;
mod dir;
#[cfg(test)]
mod faults;
mod frame;
mod reader;
mod segment;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error};

use crate::{partition_for, Append, EventLog, LogError, LogPosition, LogReader, Offset, Partition};
pub use config::{EmbeddedLogOptions, FsyncPolicy};
use segment::PartitionState;

/// Largest record accepted, in bytes.
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// How long [`EventLog::check`] waits for the writer to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by the writer thread, the log and its readers.
struct Shared {
    partitions: Vec<RwLock<PartitionState>>,
    /// The durable end of every partition, moved after each group commit;
    /// closed when the writer stops.
    end: watch::Receiver<LogPosition>,
    #[cfg(test)]
    faults: faults::Faults,
}

/// A partition's state for reading. Locks are only held for bookkeeping
/// that cannot panic, so a poisoned lock still holds consistent state.
fn read_state(shared: &Shared, partition: Partition) -> RwLockReadGuard<'_, PartitionState> {
    shared.partitions[partition as usize]
        .read()
        .unwrap_or_else(|e| e.into_inner())
}

fn write_state(shared: &Shared, partition: Partition) -> RwLockWriteGuard<'_, PartitionState> {
    shared.partitions[partition as usize]
        .write()
        .unwrap_or_else(|e| e.into_inner())
}

/// The embedded event log. See the module documentation for guarantees.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    partitions: u32,
    dir: PathBuf,
    /// Dropped to stop the writer.
    requests: Option<mpsc::Sender<writer::Request>>,
    writer: Option<JoinHandle<()>>,
    /// Held (locked) until the log is dropped, after the writer stopped.
    _lock: File,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`, recovering torn tails, and
    /// starts its writer thread. Does file I/O: call it at start-up or from
    /// a blocking context.
    pub fn open(dir: &Path, options: EmbeddedLogOptions) -> Result<EmbeddedLog, LogError> {
        std::fs::create_dir_all(dir)?;
        let lock = dir::lock(dir)?;
        dir::check_partitions(dir, options.partitions)?;
        let states = (0..options.partitions)
            .map(|p| PartitionState::open(&dir::partition_dir(dir, p), p))
            .collect::<Result<Vec<_>, _>>()?;
        segment::sync_dir(dir)?; // the partition directories themselves
        let end: LogPosition = states
            .iter()
            .map(|s| (s.partition, s.next_offset()))
            .collect();
        let (end_sender, end) = watch::channel(end);
        let shared = Arc::new(Shared {
            partitions: states.into_iter().map(RwLock::new).collect(),
            end,
            #[cfg(test)]
            faults: faults::Faults::default(),
        });
        let (requests, writer) = writer::spawn(shared.clone(), options.clone(), end_sender)?;
        debug!(dir = %dir.display(), partitions = options.partitions, "embedded event log open");
        Ok(EmbeddedLog {
            shared,
            partitions: options.partitions,
            dir: dir.to_owned(),
            requests: Some(requests),
            writer: Some(writer),
            _lock: lock,
        })
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Where the log keeps its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first offset retention kept in every partition.
    pub fn earliest(&self) -> LogPosition {
        (0..self.partitions)
            .map(|p| (p, read_state(&self.shared, p).first_offset()))
            .collect()
    }

    /// Deletes the segments whose records all lie before `position` (never
    /// a partition's active segment); returns how many files were removed.
    pub fn delete_before(&self, position: &LogPosition) -> Result<usize, LogError> {
        let mut removed = 0;
        for p in 0..self.partitions {
            removed += write_state(&self.shared, p).delete_before(position.next(p))?;
        }
        debug!(removed, "event log retention");
        Ok(removed)
    }

    /// Stops the writer after it drained the queued appends, without
    /// blocking the runtime.
    pub async fn close(mut self) -> Result<(), LogError> {
        self.requests = None;
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(|e| LogError::Unavailable(format!("closing the event log: {e}")))?
            .map_err(|_| LogError::Unavailable("the event log writer panicked".into()))
    }

    fn sender(&self) -> Result<&mpsc::Sender<writer::Request>, LogError> {
        self.requests.as_ref().ok_or_else(writer_stopped)
    }

    /// Refuses positions the log cannot read from.
    fn check_start(&self, from: &LogPosition) -> Result<(), LogError> {
        if let Some((p, _)) = from.iter().find(|(p, _)| *p >= self.partitions) {
            return Err(LogError::Invalid(format!(
                "partition {p} does not exist: the log has {} partitions",
                self.partitions
            )));
        }
        let end = self.shared.end.borrow().clone();
        for p in 0..self.partitions {
            let offset = from.next(p);
            let earliest = read_state(&self.shared, p).first_offset();
            if offset < earliest {
                return Err(segment::deleted(p, offset, earliest));
            }
            if offset > end.next(p) {
                return Err(LogError::Invalid(format!(
                    "offset {offset} of partition {p} is past the end of the log ({})",
                    end.next(p)
                )));
            }
        }
        Ok(())
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                error!("the event log writer panicked");
            }
        }
    }
}

fn writer_stopped() -> LogError {
    LogError::Unavailable("the embedded event log writer has stopped".into())
}

/// Refuses empty and oversized records, naming the first one.
fn check_records(records: &[Append]) -> Result<(), LogError> {
    for (i, record) in records.iter().enumerate() {
        if record.bytes.is_empty() {
            return Err(LogError::Invalid(format!("record {i} is empty")));
        }
        if record.bytes.len() > MAX_RECORD_BYTES {
            return Err(LogError::Invalid(format!(
                "record {i} has {} bytes; the limit is {MAX_RECORD_BYTES}",
                record.bytes.len()
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, records: Vec<Append>) -> Result<Vec<(Partition, Offset)>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        check_records(&records)?;
        let records = records
            .into_iter()
            .map(|r| (partition_for(&r.key, self.partitions), r.bytes))
            .collect();
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(writer::Request { records, reply })
            .await
            .map_err(|_| writer_stopped())?;
        answer.await.map_err(|_| writer_stopped())?
    }

    async fn end(&self) -> Result<LogPosition, LogError> {
        Ok(self.shared.end.borrow().clone())
    }

    async fn read_from(&self, from: &LogPosition) -> Result<Box<dyn LogReader>, LogError> {
        self.check_start(from)?;
        Ok(Box::new(reader::EmbeddedReader::new(
            self.shared.clone(),
            from,
        )))
    }

    async fn subscribe(
        &self,
        group: &str,
        checkpoint: &LogPosition,
    ) -> Result<Box<dyn LogReader>, LogError> {
        // One process owns the embedded log: the group gets every partition.
        debug!(
            group,
            partitions = self.partitions,
            "consumer group subscribed to the embedded log"
        );
        self.read_from(checkpoint).await
    }

    async fn check(&self) -> Result<(), LogError> {
        let (reply, answer) = oneshot::channel();
        let ping = writer::Request {
            records: Vec::new(),
            reply,
        };
        let sender = self.sender()?;
        tokio::time::timeout(CHECK_TIMEOUT, async {
            sender.send(ping).await.map_err(|_| writer_stopped())?;
            answer.await.map_err(|_| writer_stopped())?
        })
        .await
        .map_err(|_| {
            LogError::Unavailable(format!(
                "the embedded event log writer did not answer within {CHECK_TIMEOUT:?}"
            ))
        })?
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests;
