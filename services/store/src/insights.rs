//! The insights port: segment membership, the change feed and the insights
//! worker's timers and log position.
//!
//! The worker is the only writer. Each [`InsightsStore::apply_insights`]
//! call makes its membership updates, the transitions they publish, the
//! timers they set and the worker's log position durable together, and
//! applies an update only when the stored membership still is the one the
//! worker read (compare-and-set): a replay after a crash, or a second worker
//! still running with an old view, never publishes a transition twice.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use signals_core::LogPosition;
use signals_schemas::Millis;

use crate::StoreError;

/// A user's segments as the worker last recorded them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Segment names, sorted.
    pub segments: Vec<String>,
    /// The instant the segments were evaluated at.
    pub evaluated_at: Millis,
    /// When time alone may change them next (the worker's timer), if ever.
    pub due: Option<Millis>,
}

/// Entering or leaving a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    Entered,
    Left,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Entered => "entered",
            Change::Left => "left",
        }
    }
}

/// One transition of one user in one segment, at the instant it happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transition {
    pub user_id: String,
    pub segment: String,
    pub change: Change,
    pub at: Millis,
}

/// A transition in the feed, with its cursor (1, 2, 3, … one per entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub cursor: u64,
    pub transition: Transition,
}

/// One user's new membership and the transitions leading to it, applied
/// only if the stored membership equals `previous` (absent: none stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipUpdate {
    pub user_id: String,
    pub previous: Option<Membership>,
    pub next: Membership,
    pub transitions: Vec<Transition>,
}

/// How far the insights worker has got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsightsProgress {
    /// Every log record before this position is reflected in membership.
    pub position: LogPosition,
    /// The worker's clock at its last durable pass: timers due before it
    /// have fired.
    pub evaluated_until: Option<Millis>,
    /// The cursor the next feed entry gets (0 before the first: read as 1).
    pub next_cursor: u64,
}

/// What [`InsightsStore::apply_insights`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Feed entries appended, in order.
    pub published: Vec<FeedEntry>,
    /// Updates skipped because the stored membership had moved on.
    pub conflicts: usize,
}

/// Segment membership, the change feed and the worker's progress.
#[async_trait]
pub trait InsightsStore: Send + Sync + 'static {
    /// Where the worker resumes.
    async fn insights_progress(&self) -> Result<InsightsProgress, StoreError>;

    /// The recorded membership of each of `users` that has one.
    async fn memberships(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Membership>, StoreError>;

    /// Users whose timer is due at or before `until`, earliest first.
    async fn due(&self, until: Millis, limit: usize) -> Result<Vec<(Millis, String)>, StoreError>;

    /// Applies `updates` (each compare-and-set), appends their transitions
    /// to the feed, moves timers and records `progress`, durably, together.
    async fn apply_insights(
        &self,
        updates: Vec<MembershipUpdate>,
        progress: InsightsProgress,
    ) -> Result<Applied, StoreError>;

    /// Members of `segment` after the user id `after`, by user id.
    async fn segment_members(
        &self,
        segment: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Feed entries with a cursor greater than `after`, in cursor order.
    async fn segment_changes(&self, after: u64, limit: usize)
        -> Result<Vec<FeedEntry>, StoreError>;
}

/// The contract every [`InsightsStore`] keeps, run on each backend.
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract {
    use super::*;

    fn entered(user: &str, segment: &str, at: Millis) -> Transition {
        Transition {
            user_id: user.into(),
            segment: segment.into(),
            change: Change::Entered,
            at,
        }
    }

    /// Compare-and-set, replays, cursors, paging, timers.
    pub async fn membership_and_feed(store: &dyn InsightsStore) {
        assert_eq!(
            store.insights_progress().await.expect("read"),
            InsightsProgress::default()
        );
        assert!(store.segment_changes(0, 10).await.expect("read").is_empty());
        let next = Membership {
            segments: vec!["a".into()],
            evaluated_at: 10,
            due: Some(50),
        };
        let update = MembershipUpdate {
            user_id: "u1".into(),
            previous: None,
            next: next.clone(),
            transitions: vec![entered("u1", "a", 10)],
        };
        let second = MembershipUpdate {
            user_id: "u2".into(),
            previous: None,
            next: Membership {
                due: Some(40),
                ..next.clone()
            },
            transitions: vec![entered("u2", "a", 10)],
        };
        let progress = InsightsProgress {
            evaluated_until: Some(10),
            ..InsightsProgress::default()
        };
        let applied = store
            .apply_insights(vec![update.clone(), second], progress.clone())
            .await
            .expect("applied");
        assert_eq!(applied.published.len(), 2);
        assert_eq!(applied.published[0].cursor, 1);
        // A replay of the same update conflicts and publishes nothing.
        let replay = store
            .apply_insights(vec![update], progress)
            .await
            .expect("applied");
        assert_eq!((replay.published.len(), replay.conflicts), (0, 1));
        let feed = store.segment_changes(0, 10).await.expect("feed");
        assert_eq!(
            feed.iter().map(|e| e.cursor).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(store.segment_changes(1, 10).await.expect("feed").len(), 1);
        assert_eq!(
            store.insights_progress().await.expect("read").next_cursor,
            3
        );
        assert_eq!(
            store.segment_members("a", None, 1).await.expect("members"),
            vec!["u1"]
        );
        assert_eq!(
            store
                .segment_members("a", Some("u1"), 10)
                .await
                .expect("members"),
            vec!["u2"]
        );
        assert!(store
            .segment_members("ab", None, 10)
            .await
            .expect("members")
            .is_empty());
        assert_eq!(
            store.due(45, 10).await.expect("due"),
            vec![(40, "u2".to_owned())]
        );
        assert_eq!(store.due(50, 10).await.expect("due").len(), 2);

        // Leaving moves the timer and the member list.
        let left = MembershipUpdate {
            user_id: "u1".into(),
            previous: Some(next.clone()),
            next: Membership {
                segments: vec![],
                evaluated_at: 50,
                due: None,
            },
            transitions: vec![Transition {
                change: Change::Left,
                ..entered("u1", "a", 50)
            }],
        };
        let applied = store
            .apply_insights(vec![left], InsightsProgress::default())
            .await
            .expect("applied");
        assert_eq!(applied.published[0].cursor, 3, "the stored cursor wins");
        assert_eq!(
            store.segment_members("a", None, 10).await.expect("members"),
            vec!["u2"]
        );
        assert_eq!(
            store.due(100, 10).await.expect("due"),
            vec![(40, "u2".to_owned())]
        );
    }
}
