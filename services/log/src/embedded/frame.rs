//! The record frame, `[u32 LE length][u32 LE CRC-32 of payload][payload]`,
//! and a reader that walks frames through a segment file in large chunks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::MAX_RECORD_BYTES;

/// Bytes before each payload: its length and its CRC-32.
pub(super) const HEADER: usize = 8;
/// Bytes read from the file at a time (more when one frame is larger).
const CHUNK: usize = 256 * 1024;

/// Appends the frame of `payload` to `out`. The caller has checked that
/// `payload` is within [`MAX_RECORD_BYTES`], so its length fits a `u32`.
pub(super) fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why the bytes at a position are not one whole, valid frame.
#[derive(Debug, thiserror::Error)]
pub(super) enum FrameError {
    #[error("the frame is cut short")]
    Truncated,
    /// Zero is never written (empty records are refused), so a zeroed
    /// region, which a crash can leave behind, is not mistaken for records.
    #[error("the frame claims an impossible length of {0} bytes")]
    Length(u32),
    #[error("the payload's CRC-32 is {actual:#010x}, its header says {expected:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads frames one after another from a file, buffering large chunks and
/// never reading at or past the `limit` each call is given (the bytes known
/// to be durable), so bytes of an unfinished write are never even buffered.
pub(super) struct FrameReader {
    file: File,
    /// File position of `buffer[0]`; the file's own cursor is at
    /// `buffer_at + buffer.len()`.
    buffer_at: u64,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already returned.
    consumed: usize,
}

impl FrameReader {
    /// Opens `path` to read frames from byte `at`.
    pub(super) fn open(path: &Path, at: u64) -> std::io::Result<FrameReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(at))?;
        Ok(FrameReader {
            file,
            buffer_at: at,
            buffer: Vec::new(),
            consumed: 0,
        })
    }

    /// File position of the next frame.
    pub(super) fn position(&self) -> u64 {
        self.buffer_at + self.consumed as u64
    }

    /// The next frame's payload, or `None` exactly at `limit`. With `verify`
    /// off the CRC is not computed (walking frames only to count them).
    pub(super) fn next(&mut self, limit: u64, verify: bool) -> Result<Option<&[u8]>, FrameError> {
        if self.position() >= limit {
            return Ok(None);
        }
        if !self.fill(HEADER, limit)? {
            return Err(FrameError::Truncated);
        }
        let header = &self.buffer[self.consumed..self.consumed + HEADER];
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let expected = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if length == 0 || length as usize > MAX_RECORD_BYTES {
            return Err(FrameError::Length(length));
        }
        let total = HEADER + length as usize;
        if !self.fill(total, limit)? {
            return Err(FrameError::Truncated);
        }
        let payload = self.consumed + HEADER..self.consumed + total;
        if verify {
            let actual = crc32fast::hash(&self.buffer[payload.clone()]);
            if actual != expected {
                return Err(FrameError::Crc { expected, actual });
            }
        }
        self.consumed += total;
        Ok(Some(&self.buffer[payload]))
    }

    /// Makes `need` unconsumed bytes available, reading a chunk at a time
    /// but never past `limit`; false when the file or `limit` ends first.
    fn fill(&mut self, need: usize, limit: u64) -> std::io::Result<bool> {
        if self.buffer.len() - self.consumed >= need {
            return Ok(true);
        }
        self.buffer.drain(..self.consumed);
        self.buffer_at += self.consumed as u64;
        self.consumed = 0;
        let file_at = self.buffer_at + self.buffer.len() as u64;
        let room = usize::try_from(limit.saturating_sub(file_at)).unwrap_or(usize::MAX);
        let reachable = self.buffer.len().saturating_add(room);
        if reachable < need {
            return Ok(false);
        }
        let target = need.max(CHUNK).min(reachable);
        let mut filled = self.buffer.len();
        self.buffer.resize(target, 0);
        while filled < need {
            match self.file.read(&mut self.buffer[filled..target]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buffer.truncate(filled);
                    return Err(e);
                }
            }
        }
        self.buffer.truncate(filled);
        Ok(filled >= need)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(bytes).expect("write");
        file
    }

    #[test]
    fn frames_round_trip_across_chunks() {
        let mut bytes = Vec::new();
        let payloads: Vec<Vec<u8>> = (1..2000u32)
            .map(|i| vec![i as u8; (i % 700 + 1) as usize])
            .collect();
        payloads.iter().for_each(|p| encode(p, &mut bytes));
        let big = vec![7u8; 3 * CHUNK];
        encode(&big, &mut bytes);
        let file = file_with(&bytes);
        let mut reader = FrameReader::open(file.path(), 0).expect("open");
        let limit = bytes.len() as u64;
        for payload in &payloads {
            assert_eq!(
                reader.next(limit, true).expect("frame"),
                Some(payload.as_slice())
            );
        }
        assert_eq!(
            reader.next(limit, true).expect("frame"),
            Some(big.as_slice())
        );
        assert_eq!(reader.next(limit, true).expect("end"), None);
        assert_eq!(reader.position(), limit);
    }

    #[test]
    fn nothing_at_or_past_the_limit_is_read() {
        let mut bytes = Vec::new();
        encode(b"durable", &mut bytes);
        let durable = bytes.len() as u64;
        encode(b"in flight", &mut bytes);
        let file = file_with(&bytes);
        let mut reader = FrameReader::open(file.path(), 0).expect("open");
        assert_eq!(
            reader.next(durable, true).expect("frame"),
            Some(&b"durable"[..])
        );
        assert_eq!(reader.next(durable, true).expect("end"), None);
        assert!(
            reader.buffer.len() as u64 <= durable,
            "buffered past the limit"
        );
        assert_eq!(
            reader.next(bytes.len() as u64, true).expect("frame"),
            Some(&b"in flight"[..])
        );
    }

    #[test]
    fn bad_frames_are_named() {
        let mut bytes = Vec::new();
        encode(b"abcd", &mut bytes);
        bytes[10] ^= 1;
        let file = file_with(&bytes);
        let mut reader = FrameReader::open(file.path(), 0).expect("open");
        assert!(matches!(reader.next(12, true), Err(FrameError::Crc { .. })));
        let mut reader = FrameReader::open(file.path(), 0).expect("open");
        assert!(matches!(reader.next(12, false), Ok(Some(_))));
        let zeros = file_with(&[0; 32]);
        let mut reader = FrameReader::open(zeros.path(), 0).expect("open");
        assert!(matches!(reader.next(32, true), Err(FrameError::Length(0))));
        let mut reader = FrameReader::open(file.path(), 0).expect("open");
        assert!(matches!(reader.next(11, true), Err(FrameError::Truncated)));
        let mut torn = Vec::new();
        encode(&[1; 100], &mut torn);
        torn.truncate(20);
        let torn = file_with(&torn);
        let mut reader = FrameReader::open(torn.path(), 0).expect("open");
        assert!(matches!(reader.next(108, true), Err(FrameError::Truncated)));
    }
}
