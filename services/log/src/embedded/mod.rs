//! The embedded event log: append-only segment files on local disk, with
//! Kafka's semantics (partitions, dense offsets, replay from any offset).
//!
//! # Guarantees
//!
//! * **Durability.** With [`FsyncPolicy::Always`] (the default) `append`
//!   returns only after its records are written and `fdatasync`ed; a crash
//!   after that keeps them. Concurrent appends share fsyncs (group commit):
//!   one writer thread takes every queued request, writes them all, syncs
//!   each touched partition once, then answers them all.
//!   [`FsyncPolicy::Never`] leaves flushing to the OS: a crash of the
//!   process keeps everything, a crash of the machine may lose the tail.
//! * **All or none.** If writing or syncing fails, the partition files are
//!   truncated back to their size before the group, every request of the
//!   group fails, and no offset is handed out.
//! * **Readers see only durable records**, in offset order per partition.
//! * **Recovery.** On open, the tail segment of every partition is checked
//!   record by record (length and CRC-32); a torn or corrupt tail, which can
//!   only hold records never acknowledged, is cut off with a warning.
//! * **Retention.** [`EmbeddedLog::delete_before`] removes whole segments
//!   below a position (never the active one); reading below the earliest
//!   retained offset is an error, never a silent skip.
//!
//! # Layout
//!
//! `dir/meta.json` holds the partition count, fixed at creation.
//! `dir/partition-<p>/<base offset, 20 digits>.log` are the segments; each
//! record is `[u32 LE length][u32 LE CRC-32 of payload][payload]`.

mod reader;
mod segment;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

use crate::{partition_for, Append, EventLog, LogError, LogPosition, LogReader, Offset, Partition};
use segment::PartitionState;

/// Largest record accepted, in bytes.
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// When appended records reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before `append` returns (crash-safe; the default).
    Always,
    /// Whenever the OS decides (benchmarks and tests only).
    Never,
}

/// How an [`EmbeddedLog`] is created and run.
#[derive(Clone, Debug)]
pub struct EmbeddedLogOptions {
    /// Fixed at creation; reopening with another count is refused.
    pub partitions: u32,
    /// A segment rolls over once it holds this many bytes.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl Default for EmbeddedLogOptions {
    fn default() -> Self {
        EmbeddedLogOptions {
            partitions: 1,
            segment_bytes: 128 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// State shared by the writer thread and readers.
pub(crate) struct Shared {
    pub(crate) partitions: Vec<RwLock<PartitionState>>,
    /// The durable end of every partition, bumped after each group commit.
    pub(crate) end: watch::Sender<LogPosition>,
}

/// The embedded event log.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    partitions: u32,
    requests: std::sync::mpsc::Sender<writer::Request>,
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    partitions: u32,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`, recovering a torn tail.
    pub fn open(dir: &Path, options: EmbeddedLogOptions) -> Result<EmbeddedLog, LogError> {
        std::fs::create_dir_all(dir)?;
        let partitions = check_meta(dir, options.partitions)?;
        let mut states = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            states.push(RwLock::new(PartitionState::open(
                &partition_dir(dir, p),
                p,
            )?));
        }
        let end: LogPosition = states
            .iter()
            .enumerate()
            .map(|(p, s)| (p as Partition, s.read().map_or(0, |s| s.next_offset())))
            .collect();
        let shared = Arc::new(Shared {
            partitions: states,
            end: watch::Sender::new(end),
        });
        let requests = writer::spawn(shared.clone(), options)?;
        Ok(EmbeddedLog {
            shared,
            partitions,
            requests,
            dir: dir.to_owned(),
        })
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The first offset still held by every partition.
    pub fn earliest(&self) -> LogPosition {
        self.shared
            .partitions
            .iter()
            .enumerate()
            .map(|(p, s)| (p as Partition, s.read().map_or(0, |s| s.first_offset())))
            .collect()
    }

    /// Deletes whole segments whose records are all before `position`.
    /// Returns how many segment files were removed.
    pub fn delete_before(&self, position: &LogPosition) -> Result<usize, LogError> {
        let mut removed = 0;
        for (p, state) in self.shared.partitions.iter().enumerate() {
            let mut state = state
                .write()
                .map_err(|_| LogError::Unavailable("embedded log lock poisoned".into()))?;
            removed += state.delete_before(position.next(p as Partition))?;
        }
        Ok(removed)
    }

    /// Where the log keeps its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn partition_dir(dir: &Path, partition: Partition) -> PathBuf {
    dir.join(format!("partition-{partition}"))
}

fn check_meta(dir: &Path, partitions: u32) -> Result<u32, LogError> {
    let path = dir.join("meta.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let meta: Meta = serde_json::from_slice(&bytes)
                .map_err(|e| LogError::Corrupt(format!("{}: {e}", path.display())))?;
            if meta.partitions != partitions {
                return Err(LogError::Invalid(format!(
                    "the log in {} has {} partitions; it cannot be opened with {partitions} (the count is fixed at creation)",
                    dir.display(),
                    meta.partitions
                )));
            }
            Ok(partitions)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if partitions == 0 {
                return Err(LogError::Invalid(
                    "a log needs at least one partition".into(),
                ));
            }
            let bytes = serde_json::to_vec(&Meta { partitions })
                .map_err(|e| LogError::Invalid(e.to_string()))?;
            let temp = dir.join("meta.json.tmp");
            std::fs::write(&temp, bytes)?;
            std::fs::File::open(&temp)?.sync_all()?;
            std::fs::rename(&temp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(partitions)
        }
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, records: Vec<Append>) -> Result<Vec<(Partition, Offset)>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(big) = records.iter().find(|r| r.bytes.len() > MAX_RECORD_BYTES) {
            return Err(LogError::Invalid(format!(
                "a record of {} bytes exceeds the limit of {MAX_RECORD_BYTES}",
                big.bytes.len()
            )));
        }
        let records = records
            .into_iter()
            .map(|r| (partition_for(&r.key, self.partitions), r.bytes))
            .collect();
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(writer::Request { records, reply })
            .map_err(|_| LogError::Unavailable("the embedded log writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| LogError::Unavailable("the embedded log writer has stopped".into()))?
    }

    async fn end(&self) -> Result<LogPosition, LogError> {
        Ok(self.shared.end.borrow().clone())
    }

    async fn read_from(&self, from: &LogPosition) -> Result<Box<dyn LogReader>, LogError> {
        Ok(Box::new(reader::EmbeddedReader::new(
            self.shared.clone(),
            from,
            self.partitions,
        )?))
    }

    async fn subscribe(
        &self,
        _group: &str,
        checkpoint: &LogPosition,
    ) -> Result<Box<dyn LogReader>, LogError> {
        // One process owns the embedded log: the group has all partitions.
        self.read_from(checkpoint).await
    }

    async fn check(&self) -> Result<(), LogError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(writer::Request {
                records: Vec::new(),
                reply,
            })
            .map_err(|_| LogError::Unavailable("the embedded log writer has stopped".into()))?;
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .map_err(|_| LogError::Unavailable("the embedded log writer does not answer".into()))?
            .map_err(|_| LogError::Unavailable("the embedded log writer has stopped".into()))?
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests;
