//! Faults the tests inject into the writer: a failed write, a failed fsync,
//! or a crash in the middle of a write.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::LogError;

/// What the next write of the writer does instead of succeeding.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WriteFault {
    /// Writes half of the frames, then fails (a full disk).
    Fail,
    /// Writes half of the frames, then the writer stops without answering
    /// or cleaning up, as a killed process would.
    Crash,
}

/// One-shot faults: each is used by the next write or sync, then cleared.
#[derive(Default)]
pub(crate) struct Faults {
    write: Mutex<Option<WriteFault>>,
    fail_sync: Mutex<bool>,
    slow_sync: Mutex<Option<Duration>>,
    /// fsyncs of appended data so far.
    syncs: AtomicU64,
}

impl Faults {
    pub(crate) fn fail_next_write(&self, fault: WriteFault) {
        *self.write.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault);
    }

    pub(crate) fn fail_next_sync(&self) {
        *self.fail_sync.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    pub(crate) fn slow_next_sync(&self, by: Duration) {
        *self.slow_sync.lock().unwrap_or_else(|e| e.into_inner()) = Some(by);
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    pub(super) fn take_write(&self) -> Option<WriteFault> {
        self.write.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Counts an fsync about to happen, delays or fails it if asked to.
    pub(super) fn on_sync(&self) -> std::io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let slow = self
            .slow_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(by) = slow {
            std::thread::sleep(by);
        }
        if std::mem::take(&mut *self.fail_sync.lock().unwrap_or_else(|e| e.into_inner())) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
}

impl WriteFault {
    /// Writes the first half of `frames` at `start`, then fails.
    pub(super) fn apply(
        self,
        file: &mut File,
        start: u64,
        frames: &[u8],
        crashed: &mut bool,
    ) -> Result<(), LogError> {
        file.seek(SeekFrom::Start(start))?;
        file.write_all(&frames[..frames.len() / 2])?;
        *crashed = matches!(self, WriteFault::Crash);
        Err(std::io::Error::other("injected write failure").into())
    }
}
