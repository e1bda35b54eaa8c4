//! The log's directory: the metadata fixed at creation, and the lock that
//! keeps a second process (or a second `EmbeddedLog`) out of it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::segment::sync_dir;
use crate::{LogError, Partition};

const META: &str = "meta.json";
const LOCK: &str = "lock";

/// What `meta.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    partitions: u32,
}

/// The directory of partition `partition`.
pub(super) fn partition_dir(dir: &Path, partition: Partition) -> PathBuf {
    dir.join(format!("partition-{partition}"))
}

/// Takes the directory's exclusive lock, held until the returned file is
/// dropped. Two writers on one log would cut each other's unfinished writes
/// as torn tails and hand out the same offsets twice.
pub(super) fn lock(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    #[cfg(unix)]
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| {
            if e == rustix::io::Errno::WOULDBLOCK {
                LogError::Unavailable(format!(
                    "the event log in {} is in use by another process or another open log (it holds {})",
                    dir.display(),
                    path.display()
                ))
            } else {
                LogError::Io(e.into())
            }
        },
    )?;
    Ok(file)
}

/// Checks the partition count against the one fixed at creation, or fixes
/// it now for a new log.
pub(super) fn check_partitions(dir: &Path, partitions: u32) -> Result<(), LogError> {
    if partitions == 0 {
        return Err(LogError::Invalid(
            "an event log needs at least one partition; 0 were configured".into(),
        ));
    }
    let path = dir.join(META);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return create_meta(dir, &Meta { partitions });
        }
        Err(e) => return Err(e.into()),
    };
    let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| {
        LogError::Corrupt(format!("{} is not valid log metadata: {e}", path.display()))
    })?;
    if meta.partitions != partitions {
        return Err(LogError::Invalid(format!(
            "the event log in {} was created with {} partitions and cannot be opened with {partitions}: the count is fixed at creation",
            dir.display(),
            meta.partitions
        )));
    }
    Ok(())
}

/// Writes `meta.json` atomically (temp file, sync, rename, sync the dir).
fn create_meta(dir: &Path, meta: &Meta) -> Result<(), LogError> {
    let bytes =
        serde_json::to_vec(meta).map_err(|e| LogError::Invalid(format!("log metadata: {e}")))?;
    let temp = dir.join(format!("{META}.tmp"));
    std::fs::write(&temp, bytes)?;
    File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, dir.join(META))?;
    sync_dir(dir)
}
