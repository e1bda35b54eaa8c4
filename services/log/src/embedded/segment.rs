//! The segments of one partition: which file holds which offsets, where in
//! it a given offset starts, and crash recovery of the tail.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::frame::{FrameError, FrameReader, HEADER};
use crate::{LogError, Offset, Partition};

/// The sparse index has an entry at least every this many bytes, so a seek
/// skips at most this much (plus one record) by walking frames.
const INDEX_EVERY_BYTES: u64 = 4096;

/// One segment file: records `base..end()`, `bytes` of them durable.
pub(super) struct Segment {
    pub base: Offset,
    pub path: PathBuf,
    /// Records in the segment.
    pub count: u64,
    /// Bytes of whole, durable records; nothing past them is ever read.
    pub bytes: u64,
    /// (offset, byte position) of a record every `INDEX_EVERY_BYTES`.
    index: Vec<(Offset, u64)>,
}

impl Segment {
    fn empty(base: Offset, path: PathBuf) -> Segment {
        Segment {
            base,
            path,
            count: 0,
            bytes: 0,
            index: Vec::new(),
        }
    }

    /// The offset after the segment's last record.
    pub fn end(&self) -> Offset {
        self.base + self.count
    }

    /// The last indexed record at or before `offset`: (its offset, its byte).
    pub fn seek_hint(&self, offset: Offset) -> (Offset, u64) {
        match self.index.partition_point(|(o, _)| *o <= offset) {
            0 => (self.base, 0),
            i => self.index[i - 1],
        }
    }

    /// Notes one more record of `length` payload bytes after the last.
    pub fn push(&mut self, length: usize) {
        let indexed = self.index.last().map(|(_, at)| *at);
        if indexed.is_none_or(|at| self.bytes - at >= INDEX_EVERY_BYTES) {
            self.index.push((self.end(), self.bytes));
        }
        self.count += 1;
        self.bytes += (HEADER + length) as u64;
    }
}

/// Every segment of one partition, oldest first; never empty.
pub(super) struct PartitionState {
    pub partition: Partition,
    dir: PathBuf,
    segments: Vec<Segment>,
}

fn segment_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// The error for a read below what retention kept.
pub(super) fn deleted(partition: Partition, offset: Offset, earliest: Offset) -> LogError {
    LogError::Invalid(format!(
        "offset {offset} of partition {partition} was deleted by retention; earliest is {earliest}"
    ))
}

impl PartitionState {
    /// Loads the partition's segments, cutting a torn or corrupt tail off
    /// the last one; an empty partition gets its first segment.
    pub fn open(dir: &Path, partition: Partition) -> Result<PartitionState, LogError> {
        std::fs::create_dir_all(dir)?;
        let bases = segment_bases(dir)?;
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for (i, base) in bases.iter().enumerate() {
            let tail = i + 1 == bases.len();
            segments.push(scan(segment_path(dir, *base), *base, tail)?);
        }
        check_contiguous(partition, &segments)?;
        let mut state = PartitionState {
            partition,
            dir: dir.to_owned(),
            segments,
        };
        if state.segments.is_empty() {
            state.roll()?;
        }
        Ok(state)
    }

    /// The offset the next appended record gets.
    pub fn next_offset(&self) -> Offset {
        self.segments.last().map_or(0, Segment::end)
    }

    /// The first offset retention kept.
    pub fn first_offset(&self) -> Offset {
        self.segments.first().map_or(0, |s| s.base)
    }

    /// The segment appends go to.
    pub fn active(&self) -> Option<&Segment> {
        self.segments.last()
    }

    pub fn active_mut(&mut self) -> Option<&mut Segment> {
        self.segments.last_mut()
    }

    /// Starts a new, empty active segment at the next offset.
    pub fn roll(&mut self) -> Result<(), LogError> {
        let base = self.next_offset();
        let path = segment_path(&self.dir, base);
        OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment::empty(base, path));
        Ok(())
    }

    /// The segment holding `offset`, which must be below the durable end.
    pub fn find(&self, offset: Offset) -> Result<&Segment, LogError> {
        if offset < self.first_offset() {
            return Err(deleted(self.partition, offset, self.first_offset()));
        }
        let i = self.segments.partition_point(|s| s.base <= offset);
        self.segments
            .get(i.wrapping_sub(1))
            .filter(|s| offset < s.end())
            .ok_or_else(|| {
                LogError::Corrupt(format!(
                    "offset {offset} of partition {} is in no segment (the partition ends at {})",
                    self.partition,
                    self.next_offset()
                ))
            })
    }

    /// Removes the segments entirely below `before`, never the active one;
    /// returns how many.
    pub fn delete_before(&mut self, before: Offset) -> Result<usize, LogError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].end() <= before {
            match std::fs::remove_file(&self.segments[0].path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

/// Base offsets of the segment files in `dir`, ascending.
fn segment_bases(dir: &Path) -> Result<Vec<Offset>, LogError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let base = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<Offset>().ok());
        bases.extend(base);
    }
    bases.sort_unstable();
    Ok(bases)
}

fn check_contiguous(partition: Partition, segments: &[Segment]) -> Result<(), LogError> {
    for pair in segments.windows(2) {
        if pair[0].end() != pair[1].base {
            return Err(LogError::Corrupt(format!(
                "partition {partition}: segment {} ends at offset {} but the next one starts at {}",
                pair[0].path.display(),
                pair[0].end(),
                pair[1].base
            )));
        }
    }
    Ok(())
}

/// Walks a segment's frames to build its index. The tail segment is also
/// checked record by record (length and CRC) and cut at the first bad one:
/// only records never acknowledged can be there. Sealed segments were synced
/// when the next one started, so a bad frame in one is corruption.
fn scan(path: PathBuf, base: Offset, tail: bool) -> Result<Segment, LogError> {
    let size = std::fs::metadata(&path)?.len();
    let mut frames = FrameReader::open(&path, 0)?;
    let mut segment = Segment::empty(base, path);
    loop {
        match frames.next(size, tail) {
            Ok(Some(payload)) => segment.push(payload.len()),
            Ok(None) => return Ok(segment),
            Err(FrameError::Io(e)) => return Err(e.into()),
            Err(bad) if tail => {
                cut_tail(&segment, size, &bad)?;
                return Ok(segment);
            }
            Err(bad) => {
                return Err(LogError::Corrupt(format!(
                    "{}: {bad} at byte {} (offset {}) of a sealed segment",
                    segment.path.display(),
                    segment.bytes,
                    segment.end()
                )))
            }
        }
    }
}

/// Truncates the tail segment to its last whole, valid record.
fn cut_tail(segment: &Segment, size: u64, why: &FrameError) -> Result<(), LogError> {
    warn!(
        segment = %segment.path.display(),
        kept_records = segment.count,
        kept_bytes = segment.bytes,
        dropped_bytes = size - segment.bytes,
        reason = %why,
        "cutting a torn or corrupt tail off the event log"
    );
    let file = OpenOptions::new().write(true).open(&segment.path)?;
    file.set_len(segment.bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Makes creations and removals of files in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}
