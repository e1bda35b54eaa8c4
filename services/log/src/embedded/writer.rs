//! The one writer thread: group commit of every queued append.
//!
//! Each round takes every queued request (up to a cap), frames their records
//! per partition, writes each touched partition's frames at its durable end,
//! syncs each touched file once, then makes the records visible and answers
//! every request. On any failure every touched file is truncated back to its
//! durable end and every request of the round fails.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use super::frame;
use super::{write_state, EmbeddedLogOptions, FsyncPolicy, Shared};
use crate::{LogError, LogPosition, Offset, Partition};

/// Requests waiting for the writer; `append` waits for room beyond this.
pub(super) const QUEUE: usize = 1024;
/// Most requests folded into one group commit.
const MAX_GROUP_REQUESTS: usize = 1024;
/// A group stops taking requests once it holds this many payload bytes.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// A partition's frame buffer is given back above this capacity.
const KEEP_BUFFER: usize = 4 * 1024 * 1024;

pub(super) type Reply = Result<Vec<(Partition, Offset)>, LogError>;

/// Records to append, already assigned to partitions; empty is a ping.
pub(super) struct Request {
    pub records: Vec<(Partition, Vec<u8>)>,
    pub reply: oneshot::Sender<Reply>,
}

impl Request {
    fn payload_bytes(&self) -> usize {
        self.records.iter().map(|(_, b)| b.len()).sum()
    }
}

/// Starts the writer thread; it stops once the returned sender is dropped
/// and the queue is drained.
pub(super) fn spawn(
    shared: Arc<Shared>,
    options: EmbeddedLogOptions,
    end: watch::Sender<LogPosition>,
) -> Result<(mpsc::Sender<Request>, JoinHandle<()>), LogError> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let partitions = (0..shared.partitions.len())
        .map(|p| PartitionWriter::new(end.borrow().next(p as Partition)))
        .collect();
    let writer = Writer {
        shared,
        options,
        end,
        partitions,
        #[cfg(test)]
        crashed: false,
    };
    let handle = std::thread::Builder::new()
        .name("signals-log-writer".into())
        .spawn(move || writer.run(receiver))?;
    Ok((sender, handle))
}

/// The writer's view of one partition.
struct PartitionWriter {
    /// The open handle on the active segment, with that segment's base.
    file: Option<(Offset, File)>,
    /// The next offset to hand out: the durable end between groups.
    next: Offset,
    /// This group's frames and their payload lengths.
    frames: Vec<u8>,
    lengths: Vec<usize>,
    /// Why the partition refuses appends: its file could not be restored
    /// after a failed write, so only a reopen (which recovers) may use it.
    broken: Option<String>,
}

impl PartitionWriter {
    fn new(next: Offset) -> PartitionWriter {
        PartitionWriter {
            file: None,
            next,
            frames: Vec::new(),
            lengths: Vec::new(),
            broken: None,
        }
    }

    fn clear_group(&mut self) {
        self.frames.clear();
        self.lengths.clear();
        if self.frames.capacity() > KEEP_BUFFER {
            self.frames = Vec::new();
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    options: EmbeddedLogOptions,
    /// The durable end; readers wait on it.
    end: watch::Sender<LogPosition>,
    partitions: Vec<PartitionWriter>,
    /// A test fault stopped the writer as a crash would.
    #[cfg(test)]
    crashed: bool,
}

impl Writer {
    fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        // Ends when the log drops its sender; queued requests drain first.
        while let Some(first) = requests.blocking_recv() {
            let group = self.gather(first, &mut requests);
            let outcome = self.commit(&group);
            if self.crashed() {
                return; // like a killed process: nobody is answered
            }
            self.answer(group, outcome);
        }
        self.sync_on_close();
    }

    /// The requests of one group: `first` and whatever else is queued, up
    /// to the caps. Requests touching a broken partition are refused here.
    fn gather(&mut self, first: Request, requests: &mut mpsc::Receiver<Request>) -> Vec<Request> {
        let mut group = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match self.refusal(&request) {
                Some(why) => {
                    let _ = request.reply.send(Err(LogError::Unavailable(why)));
                }
                None => {
                    bytes += request.payload_bytes();
                    group.push(request);
                }
            }
            if group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
                next = requests.try_recv().ok();
            }
        }
        group
    }

    fn refusal(&self, request: &Request) -> Option<String> {
        let broken = |p: Partition| self.partitions[p as usize].broken.clone();
        match request.records.is_empty() {
            // A ping (readiness) is refused while any partition is broken.
            true => (0..self.partitions.len() as Partition).find_map(broken),
            false => request.records.iter().find_map(|(p, _)| broken(*p)),
        }
    }

    fn answer(
        &self,
        group: Vec<Request>,
        outcome: Result<Vec<Vec<(Partition, Offset)>>, LogError>,
    ) {
        match outcome {
            Ok(assigned) => {
                for (request, positions) in group.into_iter().zip(assigned) {
                    let _ = request.reply.send(Ok(positions));
                }
            }
            Err(failure) => {
                error!(error = %failure, requests = group.len(), "event log append failed; nothing of it was kept");
                let why = format!("the append was not kept: {failure}");
                for request in group {
                    let _ = request.reply.send(Err(LogError::Unavailable(why.clone())));
                }
            }
        }
    }

    /// Whether a test fault stopped the writer as a crash would.
    fn crashed(&self) -> bool {
        #[cfg(test)]
        return self.crashed;
        #[cfg(not(test))]
        false
    }

    /// Writes, syncs and publishes one group; all or none.
    fn commit(&mut self, group: &[Request]) -> Result<Vec<Vec<(Partition, Offset)>>, LogError> {
        let assigned = self.frame(group);
        let touched: Vec<Partition> = (0..self.partitions.len() as Partition)
            .filter(|p| !self.partitions[*p as usize].lengths.is_empty())
            .collect();
        let mut written = Vec::with_capacity(touched.len());
        let outcome = self.write_all(&touched, &mut written);
        match outcome {
            Ok(()) => self.publish(&touched),
            Err(_) if self.crashed() => {} // a crash cleans nothing up
            Err(_) => self.roll_back(&written),
        }
        for p in &touched {
            self.partitions[*p as usize].clear_group();
        }
        outcome.map(|()| assigned)
    }

    /// Frames every record into its partition's buffer and assigns offsets.
    fn frame(&mut self, group: &[Request]) -> Vec<Vec<(Partition, Offset)>> {
        let mut assigned = Vec::with_capacity(group.len());
        for request in group {
            let mut positions = Vec::with_capacity(request.records.len());
            for (partition, bytes) in &request.records {
                let writer = &mut self.partitions[*partition as usize];
                positions.push((*partition, writer.next + writer.lengths.len() as Offset));
                frame::encode(bytes, &mut writer.frames);
                writer.lengths.push(bytes.len());
            }
            assigned.push(positions);
        }
        assigned
    }

    /// Writes every touched partition, then syncs each once. `written`
    /// gets (partition, durable size) of each file as it is touched.
    fn write_all(
        &mut self,
        touched: &[Partition],
        written: &mut Vec<(Partition, u64)>,
    ) -> Result<(), LogError> {
        for p in touched {
            let start = self.prepare(*p).map_err(|e| in_partition(*p, e))?;
            written.push((*p, start));
            self.write_partition(*p, start)
                .map_err(|e| in_partition(*p, e))?;
        }
        if self.options.fsync == FsyncPolicy::Always {
            for p in touched {
                self.sync_partition(*p).map_err(|e| in_partition(*p, e))?;
            }
        }
        Ok(())
    }

    /// Rolls the partition to a new segment if the active one is full and
    /// opens the active segment; returns its durable size.
    fn prepare(&mut self, partition: Partition) -> Result<u64, LogError> {
        let mut state = write_state(&self.shared, partition);
        let full = state
            .active()
            .is_some_and(|s| s.count > 0 && s.bytes >= self.options.segment_bytes);
        if full {
            // Seal the old segment durably whatever the policy, so only the
            // tail segment can ever need recovery.
            if let Some((_, file)) = &self.partitions[partition as usize].file {
                file.sync_data()?;
            }
            state.roll()?;
        }
        let active = state
            .active()
            .ok_or_else(|| LogError::Corrupt(format!("partition {partition} has no segment")))?;
        let (base, start) = (active.base, active.bytes);
        let writer = &mut self.partitions[partition as usize];
        if writer.file.as_ref().is_none_or(|(b, _)| *b != base) {
            let file = OpenOptions::new().write(true).open(&active.path)?;
            writer.file = Some((base, file));
        }
        Ok(start)
    }

    fn write_partition(&mut self, partition: Partition, start: u64) -> Result<(), LogError> {
        let writer = &mut self.partitions[partition as usize];
        let Some((_, file)) = writer.file.as_mut() else {
            return Err(LogError::Unavailable(format!(
                "partition {partition} has no open segment"
            )));
        };
        #[cfg(test)]
        if let Some(fault) = self.shared.faults.take_write() {
            return fault.apply(file, start, &writer.frames, &mut self.crashed);
        }
        file.seek(SeekFrom::Start(start))?;
        file.write_all(&writer.frames)?;
        Ok(())
    }

    fn sync_partition(&mut self, partition: Partition) -> Result<(), LogError> {
        #[cfg(test)]
        self.shared.faults.on_sync()?;
        if let Some((_, file)) = &self.partitions[partition as usize].file {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Truncates every touched file back to its durable size. A partition
    /// whose file cannot be restored refuses appends until the log is
    /// reopened (recovery then cuts whatever is left past its records).
    fn roll_back(&mut self, written: &[(Partition, u64)]) {
        for (partition, start) in written {
            let writer = &mut self.partitions[*partition as usize];
            let restored = match &writer.file {
                Some((_, file)) => file.set_len(*start).and_then(|()| file.sync_all()),
                None => Ok(()),
            };
            if let Err(e) = restored {
                let why = format!(
                    "partition {partition} could not be restored after a failed append ({e}); reopen the log to recover it"
                );
                warn!(partition, error = %e, "event log partition refuses appends until reopened");
                writer.broken = Some(why);
            }
        }
    }

    /// The group is durable: index its records, then let readers see them.
    fn publish(&mut self, touched: &[Partition]) {
        if touched.is_empty() {
            return; // pings: no reader needs waking
        }
        for p in touched {
            let writer = &mut self.partitions[*p as usize];
            let mut state = write_state(&self.shared, *p);
            if let Some(active) = state.active_mut() {
                writer
                    .lengths
                    .iter()
                    .for_each(|length| active.push(*length));
            }
            writer.next += writer.lengths.len() as Offset;
        }
        let partitions = &self.partitions;
        self.end.send_modify(|end| {
            for p in touched {
                end.set(*p, partitions[*p as usize].next);
            }
        });
    }

    /// On a clean stop, whatever `FsyncPolicy::Never` left unsynced is synced.
    fn sync_on_close(&mut self) {
        if self.options.fsync == FsyncPolicy::Always {
            return;
        }
        for (p, writer) in self.partitions.iter().enumerate() {
            if let Some((_, file)) = &writer.file {
                if let Err(e) = file.sync_data() {
                    warn!(partition = p, error = %e, "could not sync the event log on close");
                }
            }
        }
    }
}

/// Names the partition in an I/O error of the writer.
fn in_partition(partition: Partition, error: LogError) -> LogError {
    match error {
        LogError::Io(e) => LogError::Io(std::io::Error::new(
            e.kind(),
            format!("writing partition {partition}: {e}"),
        )),
        other => other,
    }
}
