//! How an embedded log is created and run.

/// When appended records reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Synced before `append` returns: survives a machine crash (default).
    #[default]
    Always,
    /// Whenever the OS decides: survives a process crash only (benchmarks
    /// and tests).
    Never,
}

/// How an [`EmbeddedLog`](super::EmbeddedLog) is created and run.
#[derive(Clone, Debug)]
pub struct EmbeddedLogOptions {
    /// Fixed at creation; reopening with another count is refused.
    pub partitions: u32,
    /// A segment is sealed once it holds this many bytes.
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
