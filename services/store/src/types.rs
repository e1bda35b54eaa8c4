//! Values that cross the store port.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
pub use signals_core::IndexEntry;
use signals_core::{LogPosition, Offset, Partition, SpeedEntry, SpeedTail, UserRecord};
use signals_schemas::Millis;

/// The speed layer's durable progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeedProgress {
    /// Everything before this position is durably applied.
    pub position: LogPosition,
    /// When the collector accepted the newest applied record.
    pub last_accepted_at: Option<Millis>,
}

/// One speed entry of a user at the log position that produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionedEntry {
    pub user_id: String,
    pub partition: Partition,
    pub offset: Offset,
    pub entry: SpeedEntry,
}

/// One durable step of the speed layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpeedWrite {
    pub entries: Vec<PositionedEntry>,
    /// Index updates; an id may appear once per write.
    pub index: Vec<(String, IndexEntry)>,
    /// Progress after this write; recorded only once the rest is durable.
    pub progress: SpeedProgress,
}

impl SpeedWrite {
    /// The write's entries of each user on each log partition, offsets
    /// ascending, in (user, partition) order: what both stores keep as
    /// runs, one row each (ADR 010).
    pub(crate) fn runs(&self) -> Vec<Vec<&PositionedEntry>> {
        let mut sorted: Vec<&PositionedEntry> = self.entries.iter().collect();
        sorted.sort_unstable_by(|a, b| {
            (a.user_id.as_str(), a.partition, a.offset).cmp(&(
                b.user_id.as_str(),
                b.partition,
                b.offset,
            ))
        });
        sorted
            .chunk_by(|a, b| a.user_id == b.user_id && a.partition == b.partition)
            .map(<[_]>::to_vec)
            .collect()
    }
}

/// A published (or about to be published) batch version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchManifest {
    pub version: u64,
    /// The log position the version covers: records before it, no others.
    pub position: LogPosition,
    /// Raw events before this time are pre-aggregated in user records.
    pub horizon: Millis,
    /// When the run that made it started.
    pub created_at: Millis,
    /// Signal name → definition fingerprint the version was computed with.
    pub definitions: BTreeMap<String, String>,
    pub users: u64,
    pub events: u64,
}

/// Where an unpublished batch run got to, so that a rerun after a crash
/// finishes the same version with the same result instead of starting over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCheckpoint {
    /// The version the run writes.
    pub version: u64,
    /// What the run computes (the batch layer's own description: kind,
    /// range, signals, definitions); a rerun resumes only an identical plan.
    pub plan: String,
    /// The log position the run covers.
    pub position: LogPosition,
    /// When the run started (it fixes the run's horizon).
    pub started_at: Millis,
    /// Records of users up to and including this one (in user id order)
    /// are written.
    pub written_through: Option<String>,
}

/// One worker's share of a run split by log partitions (`signals batch run
/// --partitions`): written only by that worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPart {
    /// The log partitions whose users this worker recomputes.
    pub partitions: Vec<Partition>,
    /// Records of users up to and including this one are written.
    pub written_through: Option<String>,
    /// Every record of the share is written.
    pub done: bool,
    /// Users with something that counts, and raw events, in the share.
    pub users: u64,
    pub events: u64,
}

impl BatchPart {
    /// The share's name: its partitions, e.g. `0-3,7`... as given, sorted.
    pub fn name(&self) -> String {
        let parts: Vec<String> = self.partitions.iter().map(|p| p.to_string()).collect();
        parts.join(",")
    }
}

/// One user's data as serving merges it.
#[derive(Clone, Debug, Default)]
pub struct UserHistory {
    pub manifest: Option<Arc<BatchManifest>>,
    pub record: Option<Arc<UserRecord>>,
    /// Entries at or after the manifest's position, ordered by (partition, offset).
    pub speed: Vec<SpeedEntry>,
}

/// How far a reader already holds a user's speed entries: everything that
/// `frontier` covers, over the manifest of `version` (`None`: nothing was
/// published). A store asked for a history since a mark returns only the
/// entries past it, as long as the mark's version is still the published one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailMark {
    pub version: Option<u64>,
    /// Shared with the reader's kept tail: a mark is made on every read.
    pub frontier: Arc<LogPosition>,
    /// [`HistorySince::change_token`] of the read the tail was kept from.
    pub change_token: Option<u64>,
}

impl TailMark {
    /// Where to read `manifest`'s speed entries from given `mark`, and
    /// whether the mark applies (same version): its frontier, but never
    /// before the manifest's position.
    pub fn read_from(
        mark: Option<&TailMark>,
        manifest: Option<&BatchManifest>,
    ) -> (Arc<LogPosition>, bool) {
        let position = manifest.map(|m| &m.position);
        match mark {
            Some(mark) if mark.version == manifest.map(|m| m.version) => {
                // A kept tail's frontier is at or past its version's
                // position: shared, not copied (a mark is made per read).
                if position.is_none_or(|p| mark.frontier.reaches(p)) {
                    return (mark.frontier.clone(), true);
                }
                let mut from = position.cloned().unwrap_or_default();
                for (partition, next) in mark.frontier.iter() {
                    from.advance(partition, next);
                }
                (Arc::new(from), true)
            }
            _ => (Arc::new(position.cloned().unwrap_or_default()), false),
        }
    }
}

/// One user's history past a [`TailMark`].
#[derive(Clone, Debug, Default)]
pub struct HistorySince {
    pub manifest: Option<Arc<BatchManifest>>,
    pub record: Option<Arc<UserRecord>>,
    /// Entries past the mark's frontier (or, when it did not apply, at or
    /// after the manifest's position), ordered by (partition, offset).
    pub entries: Vec<PositionedEntry>,
    /// Whether the mark applied: `false` means `entries` is the whole tail.
    pub resumed: bool,
    /// Where `entries` were read from ([`TailMark::read_from`]).
    pub from: Arc<LogPosition>,
    /// A store that knows which users changed since a read (the embedded
    /// one: it is the file's only writer) names the read here; given back
    /// in a [`TailMark`], it lets the store answer "nothing new" from
    /// memory. `None`: every read goes to the store.
    pub change_token: Option<u64>,
}

/// One user's data prepared for a read: the published record and the speed
/// tail since it.
#[derive(Clone, Debug, Default)]
pub struct ServedHistory {
    pub manifest: Option<Arc<BatchManifest>>,
    pub record: Option<Arc<UserRecord>>,
    pub tail: SpeedTail,
}

/// What garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GarbageStats {
    pub speed_entries: u64,
    pub batch_records: u64,
    /// Event index entries past their expiry (on CQL a time to live drops
    /// them, uncounted).
    pub index_entries: u64,
}

/// Refuses to publish `next` over `current` unless it is newer, or
/// `current` itself again: published versions only move forward. Every
/// backend applies this one rule.
pub(crate) fn refuse_backwards(
    current: &BatchManifest,
    next: &BatchManifest,
) -> Result<(), crate::StoreError> {
    if next.version < current.version {
        return Err(crate::StoreError::Backend(format!(
            "cannot publish version {}: version {} is already published and versions only move forward",
            next.version, current.version
        )));
    }
    if next.version == current.version && next != current {
        return Err(crate::StoreError::Backend(format!(
            "cannot publish version {}: it is already published with a different manifest",
            next.version
        )));
    }
    Ok(())
}
