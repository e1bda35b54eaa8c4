//! What the batch layer reports to operators: a run's summary, a run in
//! progress, a deletion's receipt. Plain data, so that the HTTP surface
//! can serve it without depending on the batch layer.

use serde::Serialize;
use signals_schemas::Millis;

use crate::{LogPosition, Partition};

/// What a run computes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Everything, from the whole log up to its current end.
    Run,
    /// Part of the published version, at its log position.
    Backfill(Backfill),
}

/// What a backfill recomputes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Backfill {
    /// `[from, to)` of `event_time`, in epoch milliseconds.
    pub range: Option<(Millis, Millis)>,
    /// Signals whose pre-aggregated state is recomputed.
    pub signals: Vec<String>,
}

/// Counts of what the recompute saw and corrected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Corrections {
    pub duplicates: u64,
    pub retracted: u64,
    pub deleted_user_events: u64,
    pub deleted_users: u64,
    pub bot_events: u64,
    pub bot_users: u64,
}

/// What one run did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchSummary {
    pub job: Job,
    pub version: u64,
    pub position: LogPosition,
    pub horizon: Millis,
    pub started_at: Millis,
    pub duration_ms: u64,
    pub records_read: u64,
    pub undecodable: u64,
    /// Raw events kept in the version's records.
    pub events: u64,
    /// Users with something that counts.
    pub users: u64,
    /// Records (one per user seen in the log) written by this process.
    pub records_written: u64,
    /// Users whose record differs from the published version's (backfills
    /// and dry runs, which read the published records).
    pub changed_users: Option<u64>,
    /// A resumed run skipped the users up to this one, already written.
    pub resumed_after: Option<String>,
    /// The log partitions this process recomputed, when the run was split
    /// (`--partitions`); its counts are then those of its share.
    pub partitions: Option<Vec<Partition>>,
    /// Partitions whose share is not done yet: the version publishes when
    /// the last share is done, by whichever worker finishes it.
    pub waiting_for: Vec<Partition>,
    pub corrections: Corrections,
    pub dry_run: bool,
    pub published: bool,
}

/// The phase a running batch is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Reading,
    Writing,
    Publishing,
    Comparing,
}

/// A run in progress, as the admin endpoint shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Running {
    pub version: u64,
    pub started_at: Millis,
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// Where a user's deletion was recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeletionReceipt {
    pub user_id: String,
    /// The log position of the `UserDeletion` record.
    pub partition: u32,
    pub offset: u64,
}
