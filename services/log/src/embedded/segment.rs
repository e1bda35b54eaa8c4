//! Segments of one partition: files of framed records, and where offsets are.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::{LogError, Offset, Partition};

/// Bytes before each payload: length and CRC-32, both u32 little-endian.
pub const HEADER: u64 = 8;
/// One sparse index entry per this many records.
const INDEX_EVERY: u64 = 256;

/// One segment file.
pub struct Segment {
    pub base: Offset,
    pub path: PathBuf,
    /// Records in the segment.
    pub count: u64,
    /// Durable bytes in the segment.
    pub bytes: u64,
    /// (offset, byte position) of every `INDEX_EVERY`-th record.
    index: Vec<(Offset, u64)>,
}

impl Segment {
    /// The byte position of the last indexed record at or before `offset`.
    pub fn seek_hint(&self, offset: Offset) -> (Offset, u64) {
        let i = self.index.partition_point(|(o, _)| *o <= offset);
        if i == 0 {
            (self.base, 0)
        } else {
            self.index[i - 1]
        }
    }

    /// Notes a record appended at `position` (bytes) as the next offset.
    pub fn push(&mut self, position: u64, length: u64) {
        let offset = self.base + self.count;
        if self.count.is_multiple_of(INDEX_EVERY) {
            self.index.push((offset, position));
        }
        self.count += 1;
        self.bytes = position + HEADER + length;
    }

    /// The offset after the segment's last record.
    pub fn end(&self) -> Offset {
        self.base + self.count
    }
}

/// Every segment of one partition, oldest first.
pub struct PartitionState {
    pub partition: Partition,
    pub dir: PathBuf,
    pub segments: Vec<Segment>,
}

fn segment_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

impl PartitionState {
    /// Loads the partition's segments, cutting a torn tail off the last.
    pub fn open(dir: &Path, partition: Partition) -> Result<PartitionState, LogError> {
        std::fs::create_dir_all(dir)?;
        let mut bases: Vec<Offset> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse::<Offset>().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let last = bases.len().saturating_sub(1);
        for (i, base) in bases.iter().enumerate() {
            let path = segment_path(dir, *base);
            segments.push(scan(&path, *base, i == last)?);
        }
        for pair in segments.windows(2) {
            if pair[0].end() != pair[1].base {
                return Err(LogError::Corrupt(format!(
                    "partition {partition}: segment {} ends at offset {} but the next starts at {}",
                    pair[0].path.display(),
                    pair[0].end(),
                    pair[1].base
                )));
            }
        }
        let mut state = PartitionState {
            partition,
            dir: dir.to_owned(),
            segments,
        };
        if state.segments.is_empty() {
            state.roll(0)?;
        }
        Ok(state)
    }

    pub fn next_offset(&self) -> Offset {
        self.segments.last().map_or(0, Segment::end)
    }

    pub fn first_offset(&self) -> Offset {
        self.segments.first().map_or(0, |s| s.base)
    }

    pub fn active(&mut self) -> &mut Segment {
        // `open` and `roll` guarantee at least one segment.
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Starts a new, empty segment at `base`.
    pub fn roll(&mut self, base: Offset) -> Result<(), LogError> {
        let path = segment_path(&self.dir, base);
        OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.segments.push(Segment {
            base,
            path,
            count: 0,
            bytes: 0,
            index: Vec::new(),
        });
        Ok(())
    }

    /// The segment holding `offset`, if it is retained and durable.
    pub fn find(&self, offset: Offset) -> Result<Option<&Segment>, LogError> {
        if offset < self.first_offset() {
            return Err(LogError::Invalid(format!(
                "offset {offset} of partition {} was deleted by retention; earliest is {}",
                self.partition,
                self.first_offset()
            )));
        }
        let i = self.segments.partition_point(|s| s.base <= offset);
        Ok(self
            .segments
            .get(i.wrapping_sub(1))
            .filter(|s| offset < s.end()))
    }

    /// Removes segments entirely below `before`, never the active one.
    pub fn delete_before(&mut self, before: Offset) -> Result<usize, LogError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].end() <= before {
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path)?;
            removed += 1;
        }
        if removed > 0 {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(removed)
    }
}

/// Reads one framed record; `None` at a clean end of data.
pub fn read_record(
    reader: &mut impl Read,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<(u32, u32)>> {
    let mut header = [0u8; HEADER as usize];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    buffer.resize(length as usize, 0);
    match reader.read_exact(buffer) {
        Ok(()) => Ok(Some((length, crc))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Walks a segment, building its index; the tail segment is also checked
/// (length and CRC) and cut at the first bad record.
fn scan(path: &Path, base: Offset, is_tail: bool) -> Result<Segment, LogError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut segment = Segment {
        base,
        path: path.to_owned(),
        count: 0,
        bytes: 0,
        index: Vec::new(),
    };
    let mut buffer = Vec::new();
    loop {
        let position = segment.bytes;
        if is_tail {
            match read_record(&mut reader, &mut buffer)? {
                Some((length, crc))
                    if length as usize <= super::MAX_RECORD_BYTES
                        && crc32fast::hash(&buffer) == crc =>
                {
                    segment.push(position, u64::from(length));
                }
                _ => break,
            }
        } else {
            let mut header = [0u8; HEADER as usize];
            if position + HEADER > size || reader.read_exact(&mut header).is_err() {
                break;
            }
            let length = u64::from(u32::from_le_bytes([
                header[0], header[1], header[2], header[3],
            ]));
            if position + HEADER + length > size {
                return Err(LogError::Corrupt(format!(
                    "{}: record at byte {position} runs past the end",
                    path.display()
                )));
            }
            reader.seek(SeekFrom::Current(length as i64))?;
            segment.push(position, length);
        }
    }
    if segment.bytes < size {
        if !is_tail {
            return Err(LogError::Corrupt(format!(
                "{}: {} stray bytes after the last record",
                path.display(),
                size - segment.bytes
            )));
        }
        warn!(segment = %path.display(), dropped_bytes = size - segment.bytes, "cutting a torn tail off the event log");
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(segment.bytes)?;
        file.sync_all()?;
    }
    Ok(segment)
}
