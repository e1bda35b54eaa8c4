//! The contract every [`SignalStore`] backend passes.
//!
//! Each case takes a fresh, empty store and panics with a message naming
//! what broke. [`run_all`] runs every case, each on a store of its own made by
//! the backend's factory; the factory also returns a guard (a temp dir, a
//! keyspace dropper) that lives as long as the store. Backends run it from
//! their tests: `cargo test` for the embedded store, the integration tests
//! against `infra/local/up` for the others (enable the `contract-tests`
//! feature of this crate to reach it from another crate).
//!
//! What the cases pin down, beyond the trait's docs:
//! * a user's speed entries come back in (partition, offset) order, whatever
//!   order they were written in, and no other user's entries with them;
//! * `user_history` returns exactly the entries the published manifest's
//!   position does not cover: the entry at the position is in, the one before
//!   it is out, partitions absent from the position are in entirely;
//! * publishing refuses a lower version (and the same version with another
//!   manifest); writing records into a published version is refused;
//! * `collect_garbage` never removes what the published manifest needs,
//!   whatever position and version it is given.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use signals_core::{LogPosition, Offset, Partition, SpeedEntry, UserRecord};
use signals_schemas::{Attributes, Event, EventType};

use crate::{
    BatchCheckpoint, BatchManifest, BatchPart, GarbageStats, IndexEntry, PositionedEntry,
    ServingStore, SignalStore, SpeedProgress, SpeedWrite, TailCache, TailMark,
};

/// Runs every case, each on a fresh store from `make`.
pub async fn run_all<F, Fut, G>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Box<dyn SignalStore>, G)>,
{
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            tracing::info!(case = stringify!($case), "store contract case");
            let (store, guard) = make().await;
            $case(store.as_ref()).await;
            drop(store);
            drop(guard);
        )*};
    }
    cases!(
        an_empty_store_answers_empty,
        speed_entries_come_back_in_log_order_per_user,
        every_kind_of_speed_entry_round_trips,
        reapplying_a_write_changes_nothing,
        a_write_to_a_position_replaces_what_an_earlier_write_left_there,
        progress_is_recorded,
        the_index_answers_present_absent_and_retracted,
        index_entries_go_once_they_expire,
        history_merges_the_published_record_with_uncovered_entries_only,
        a_history_since_a_mark_holds_only_the_entries_past_it,
        a_long_tail_read_past_any_mark_holds_exactly_the_entries_past_it,
        publishing_never_goes_back_and_published_versions_are_immutable,
        garbage_collection_keeps_what_the_published_version_needs,
        a_user_with_only_speed_entries_has_no_record,
        erasing_a_user_leaves_a_marker_and_erased_records_only,
        the_batch_checkpoint_is_saved_replaced_and_cleared,
        a_claimed_checkpoint_is_shared_and_shares_are_listed_per_version,
    );
    // The one case that needs the store shared (the cache holds it).
    let (store, guard) = make().await;
    a_tail_cache_answers_like_a_fresh_read_through_writes_publications_and_erasure(Arc::from(
        store,
    ))
    .await;
    drop(guard);
}

/// A store as the binary wires it: the speed and batch layers write to
/// `store`, serving reads through `serving` (a path of wrappers over it),
/// and an erasure is followed by an eviction from that path.
pub struct ServedThrough<S> {
    store: Arc<S>,
    serving: Arc<dyn ServingStore>,
}

impl<S> ServedThrough<S> {
    pub fn new(store: Arc<S>, serving: Arc<dyn ServingStore>) -> ServedThrough<S> {
        ServedThrough { store, serving }
    }
}

#[async_trait::async_trait]
impl<S: SignalStore> crate::StoreReads for ServedThrough<S> {
    crate::forward::forward_to!(serving: speed_progress, lookup_events, published, batch_record, speed_entries, check);
}

#[async_trait::async_trait]
impl<S: SignalStore> crate::SpeedStore for ServedThrough<S> {
    async fn apply_speed(&self, write: Arc<SpeedWrite>) -> Result<(), crate::StoreError> {
        self.store.apply_speed(write).await
    }
}

#[async_trait::async_trait]
impl<S: SignalStore> ServingStore for ServedThrough<S> {
    crate::forward::forward_to!(serving: serving_manifest, user_history_since, degraded, evict_user);
}

#[async_trait::async_trait]
impl<S: SignalStore> crate::BatchStore for ServedThrough<S> {
    async fn write_records(
        &self,
        version: u64,
        records: Vec<(String, crate::EncodedRecord)>,
    ) -> Result<(), crate::StoreError> {
        self.store.write_records(version, records).await
    }

    async fn publish(&self, manifest: &BatchManifest) -> Result<(), crate::StoreError> {
        self.store.publish(manifest).await
    }

    async fn collect_garbage(
        &self,
        covered: &LogPosition,
        keep_version: u64,
    ) -> Result<GarbageStats, crate::StoreError> {
        self.store.collect_garbage(covered, keep_version).await
    }

    async fn erase_user(
        &self,
        user_id: &str,
        marker: (Partition, Offset),
    ) -> Result<(), crate::StoreError> {
        self.store.erase_user(user_id, marker).await?;
        self.serving.evict_user(user_id).await
    }

    async fn batch_checkpoint(&self) -> Result<Option<BatchCheckpoint>, crate::StoreError> {
        self.store.batch_checkpoint().await
    }

    async fn save_batch_checkpoint(
        &self,
        checkpoint: Option<&BatchCheckpoint>,
    ) -> Result<(), crate::StoreError> {
        self.store.save_batch_checkpoint(checkpoint).await
    }

    async fn claim_batch_checkpoint(
        &self,
        candidate: &BatchCheckpoint,
    ) -> Result<BatchCheckpoint, crate::StoreError> {
        self.store.claim_batch_checkpoint(candidate).await
    }

    async fn save_batch_part(
        &self,
        version: u64,
        part: &BatchPart,
    ) -> Result<(), crate::StoreError> {
        self.store.save_batch_part(version, part).await
    }

    async fn batch_parts(&self, version: u64) -> Result<Vec<BatchPart>, crate::StoreError> {
        self.store.batch_parts(version).await
    }
}

/// Writes `records` as version `version`, covering `position`, and
/// publishes it.
pub async fn publish_version(
    store: &(impl crate::BatchStore + ?Sized),
    version: u64,
    position: &[(Partition, Offset)],
    records: Vec<(String, UserRecord)>,
) -> BatchManifest {
    store
        .write_batch(version, records)
        .await
        .expect("records written");
    let manifest = manifest(version, position);
    store.publish(&manifest).await.expect("published");
    manifest
}

/// A view event of `user` with id `id`.
pub fn event(id: &str, user: &str, time: i64) -> Event {
    Event {
        event_id: id.into(),
        user_id: user.into(),
        event_type: EventType::View,
        item_id: Some(signals_schemas::format_smolstr!("item-{id}")),
        query: None,
        event_time: time,
        attributes: Attributes::from([("city", "Paris")]),
    }
}

/// The speed entry of `user` at (`partition`, `offset`), an event with id `p{partition}-{offset}`.
pub fn at(user: &str, partition: Partition, offset: Offset) -> PositionedEntry {
    PositionedEntry {
        user_id: user.to_owned(),
        partition,
        offset,
        entry: SpeedEntry::Event(event(
            &format!("p{partition}-{offset}"),
            user,
            offset as i64,
        )),
    }
}

/// A write of `entries` with progress `position`.
pub fn write(entries: Vec<PositionedEntry>, position: &[(Partition, Offset)]) -> SpeedWrite {
    SpeedWrite {
        entries,
        index: Vec::new(),
        progress: SpeedProgress {
            position: position.iter().copied().collect(),
            last_accepted_at: Some(1_000),
        },
    }
}

/// A manifest of `version` covering `position`.
pub fn manifest(version: u64, position: &[(Partition, Offset)]) -> BatchManifest {
    BatchManifest {
        version,
        position: position.iter().copied().collect(),
        horizon: 0,
        created_at: 42,
        definitions: BTreeMap::from([("views_1h".to_owned(), "fp".to_owned())]),
        users: 1,
        events: 1,
    }
}

/// A record holding one event with id `id`.
pub fn record(user: &str, id: &str) -> UserRecord {
    UserRecord {
        horizon: 0,
        base: BTreeMap::new(),
        events: vec![event(id, user, 1)],
        deleted: false,
        tiles: Default::default(),
        ids: Default::default(),
    }
}

/// A record of `events` view events of `user` of about a KiB each
/// (a long attribute), newest first: a record of `events` KiB.
pub fn large_record(user: &str, events: i64) -> UserRecord {
    let mut record = record(user, "unused");
    record.events = (0..events)
        .rev()
        .map(|i| {
            let mut event = event(&format!("{user}-{i}"), user, i);
            event.attributes.insert("note", format!("{i:0>1000}"));
            event
        })
        .collect();
    record
}

/// The ids of the events a served history holds (record and tail, with
/// retractions applied), sorted.
pub fn served_ids(history: crate::ServedHistory) -> Vec<String> {
    let view = signals_core::UserView::with_tail(history.record, history.tail);
    let mut ids: Vec<String> = view.events().map(|e| e.event_id.to_string()).collect();
    ids.sort();
    ids
}

/// The event ids of `user`'s speed entries as `user_history` returns them.
async fn speed_ids(store: &dyn SignalStore, user: &str) -> Vec<String> {
    let history = store
        .user_history(user)
        .await
        .expect("user_history answers");
    history
        .speed
        .iter()
        .map(|entry| match entry {
            SpeedEntry::Event(e) => e.event_id.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

pub async fn an_empty_store_answers_empty(store: &dyn SignalStore) {
    store.check().await.expect("an empty store is ready");
    assert_eq!(
        store.speed_progress().await.expect("progress"),
        SpeedProgress::default()
    );
    assert_eq!(store.published().await.expect("published"), None);
    let history = store.user_history("nobody").await.expect("history");
    assert!(history.manifest.is_none() && history.record.is_none() && history.speed.is_empty());
    assert!(store
        .lookup_events(&ids(&["e1"]))
        .await
        .expect("lookup")
        .is_empty());
    let stats = store
        .collect_garbage(&[(0, 10)].into_iter().collect(), 5)
        .await
        .expect("gc");
    assert_eq!(stats, GarbageStats::default());
}

pub async fn speed_entries_come_back_in_log_order_per_user(store: &dyn SignalStore) {
    let first = vec![
        at("u1", 1, 5),
        at("u", 0, 1),
        at("u1", 0, 7),
        at("u12", 0, 2),
    ];
    store
        .apply_speed(write(first, &[(0, 8), (1, 6)]).into())
        .await
        .expect("apply");
    let second = vec![at("u1", 0, 9), at("u1", 0, 3), at("u1", 1, 2)];
    store
        .apply_speed(write(second, &[(0, 10), (1, 6)]).into())
        .await
        .expect("apply");
    assert_eq!(
        speed_ids(store, "u1").await,
        ids(&["p0-3", "p0-7", "p0-9", "p1-2", "p1-5"])
    );
    assert_eq!(
        speed_ids(store, "u").await,
        ids(&["p0-1"]),
        "a user whose id prefixes another's"
    );
    assert_eq!(speed_ids(store, "u12").await, ids(&["p0-2"]));
    assert!(speed_ids(store, "u2").await.is_empty());
}

pub async fn every_kind_of_speed_entry_round_trips(store: &dyn SignalStore) {
    let entries = vec![
        at("u", 0, 0),
        PositionedEntry {
            user_id: "u".into(),
            partition: 0,
            offset: 1,
            entry: SpeedEntry::Retracted {
                event_ids: ids(&["p0-0", "other"]),
            },
        },
        PositionedEntry {
            user_id: "u".into(),
            partition: 0,
            offset: 2,
            entry: SpeedEntry::Deleted,
        },
    ];
    let expected: Vec<SpeedEntry> = entries.iter().map(|e| e.entry.clone()).collect();
    store
        .apply_speed(write(entries, &[(0, 3)]).into())
        .await
        .expect("apply");
    assert_eq!(
        store.user_history("u").await.expect("history").speed,
        expected
    );
}

pub async fn reapplying_a_write_changes_nothing(store: &dyn SignalStore) {
    let mut w = write(vec![at("u", 0, 0), at("u", 0, 1)], &[(0, 2)]);
    w.index = vec![
        ("p0-0".into(), counted("u", None)),
        ("p0-1".into(), counted("u", None)),
    ];
    store.apply_speed(w.clone().into()).await.expect("apply");
    store
        .apply_speed(w.clone().into())
        .await
        .expect("apply again");
    assert_eq!(speed_ids(store, "u").await, ids(&["p0-0", "p0-1"]));
    assert_eq!(store.speed_progress().await.expect("progress"), w.progress);
    assert_eq!(
        store
            .lookup_events(&ids(&["p0-0", "p0-1"]))
            .await
            .expect("lookup")
            .len(),
        2
    );
}

/// A replay may plan a record differently from the write it replays, cut
/// short (the speed layer meets an event and its retraction in another
/// order): what it writes at a position replaces what was there.
pub async fn a_write_to_a_position_replaces_what_an_earlier_write_left_there(
    store: &dyn SignalStore,
) {
    let cut_short = write(vec![at("u", 0, 0), at("u", 0, 1)], &[]);
    store.apply_speed(cut_short.into()).await.expect("apply");
    let withdrawn = PositionedEntry {
        entry: SpeedEntry::Retracted {
            event_ids: vec!["p0-1".into()],
        },
        ..at("u", 0, 1)
    };
    let replay = write(vec![at("u", 0, 0), withdrawn.clone()], &[(0, 2)]);
    store
        .apply_speed(replay.into())
        .await
        .expect("apply the replay");
    let entries = store
        .speed_entries("u", &LogPosition::new())
        .await
        .expect("entries");
    assert_eq!(entries, vec![at("u", 0, 0), withdrawn]);
}

pub async fn progress_is_recorded(store: &dyn SignalStore) {
    let mut first = write(vec![at("u", 0, 0)], &[(0, 1)]);
    first.progress.last_accepted_at = Some(10);
    store
        .apply_speed(first.clone().into())
        .await
        .expect("apply");
    assert_eq!(
        store.speed_progress().await.expect("progress"),
        first.progress
    );
    // A write with no entries still moves progress (e.g. only bad records).
    let mut second = write(Vec::new(), &[(0, 4), (3, 2)]);
    second.progress.last_accepted_at = Some(20);
    store
        .apply_speed(second.clone().into())
        .await
        .expect("apply");
    assert_eq!(
        store.speed_progress().await.expect("progress"),
        second.progress
    );
}

/// An index entry counting an occurrence of `user`'s, accepted at 0.
pub fn counted(user: &str, expires_at: Option<i64>) -> IndexEntry {
    IndexEntry {
        user_id: Some(user.to_owned()),
        accepted_at: Some(0),
        retracted_at: None,
        expires_at,
    }
}

/// The index forgets an entry once its expiry is past (CQL: its time to
/// live; the embedded store: garbage collection), and only then.
pub async fn index_entries_go_once_they_expire(store: &dyn SignalStore) {
    let now = signals_schemas::now_millis();
    let expiring = |expires_at| counted("u", expires_at);
    let mut w = write(Vec::new(), &[(0, 1)]);
    w.index = vec![
        ("due".into(), expiring(Some(now - 1))),
        ("soon".into(), expiring(Some(now + 1_500))),
        ("later".into(), expiring(Some(now + 3_600_000))),
        ("never".into(), expiring(None)),
    ];
    store.apply_speed(w.into()).await.expect("apply");
    let all = ids(&["due", "soon", "later", "never"]);
    store
        .collect_garbage(&LogPosition::new(), 0)
        .await
        .expect("collect");
    let found = store.lookup_events(&all).await.expect("lookup");
    assert!(
        found.contains_key("soon") && found.contains_key("later") && found.contains_key("never")
    );
    // CQL's time to live counts whole seconds.
    tokio::time::sleep(std::time::Duration::from_millis(3_100)).await;
    store
        .collect_garbage(&LogPosition::new(), 0)
        .await
        .expect("collect");
    let mut left: Vec<String> = store
        .lookup_events(&all)
        .await
        .expect("lookup")
        .into_keys()
        .collect();
    left.sort();
    assert_eq!(left, ids(&["later", "never"]));
}

pub async fn the_index_answers_present_absent_and_retracted(store: &dyn SignalStore) {
    let retracted_unseen = IndexEntry {
        user_id: None,
        accepted_at: None,
        retracted_at: Some(0),
        expires_at: None,
    };
    let mut w = write(vec![at("u", 0, 0)], &[(0, 2)]);
    w.index = vec![
        ("a".into(), counted("u", None)),
        ("b".into(), retracted_unseen.clone()),
    ];
    store.apply_speed(w.into()).await.expect("apply");
    let found = store
        .lookup_events(&ids(&["a", "b", "c"]))
        .await
        .expect("lookup");
    assert_eq!(found.len(), 2, "absent ids are left out: {found:?}");
    assert_eq!(found.get("a"), Some(&counted("u", None)));
    assert_eq!(found.get("b"), Some(&retracted_unseen));

    let retracted_seen = IndexEntry {
        user_id: Some("u".into()),
        accepted_at: Some(0),
        retracted_at: Some(0),
        expires_at: None,
    };
    let mut later = write(Vec::new(), &[(0, 3)]);
    later.index = vec![("a".into(), retracted_seen.clone())];
    store.apply_speed(later.into()).await.expect("apply");
    let found = store.lookup_events(&ids(&["a"])).await.expect("lookup");
    assert_eq!(
        found.get("a"),
        Some(&retracted_seen),
        "a later update replaces the entry"
    );
    assert!(store
        .lookup_events(&[])
        .await
        .expect("lookup of nothing")
        .is_empty());
}

/// A popular user's tail spans many rows on several log partitions (CQL
/// reads it in pages and seeks past what a mark covers): whatever the mark,
/// exactly the uncovered entries come back, in log order.
pub async fn a_long_tail_read_past_any_mark_holds_exactly_the_entries_past_it(
    store: &dyn SignalStore,
) {
    let layout: [(Partition, Offset); 3] = [(0, 5), (1, 150), (3, 100)];
    let all: Vec<(Partition, Offset)> = layout
        .iter()
        .flat_map(|&(p, n)| (0..n).map(move |o| (p, o)))
        .collect();
    let entries = all.iter().map(|&(p, o)| at("long", p, o)).collect();
    store
        .apply_speed(write(entries, &layout).into())
        .await
        .expect("apply");
    let frontiers: [&[(Partition, Offset)]; 7] = [
        &[],
        &[(1, 140)],
        &[(1, 70), (3, 30)],
        &[(0, 5), (1, 150), (3, 99)],
        &[(0, 5), (1, 150), (3, 100)],
        &[(0, 2), (3, 100)],
        &[(0, 5), (1, 64), (2, 9), (3, 1)],
    ];
    for frontier in frontiers {
        let mark = TailMark {
            version: None,
            frontier: Arc::new(frontier.iter().copied().collect()),
            change_token: None,
        };
        let since = store
            .user_history_since("long", Some(&mark))
            .await
            .expect("since");
        let got: Vec<(Partition, Offset)> = since
            .entries
            .iter()
            .map(|e| (e.partition, e.offset))
            .collect();
        let expected: Vec<(Partition, Offset)> = all
            .iter()
            .copied()
            .filter(|&(p, o)| !mark.frontier.covers(p, o))
            .collect();
        assert_eq!(got, expected, "past {frontier:?}");
    }
}

pub async fn a_history_since_a_mark_holds_only_the_entries_past_it(store: &dyn SignalStore) {
    let entries = (0..6)
        .map(|o| at("u", 0, o))
        .chain((0..3).map(|o| at("u", 1, o)));
    store
        .apply_speed(write(entries.collect(), &[(0, 6), (1, 3)]).into())
        .await
        .expect("apply");
    let positions = |history: &crate::HistorySince| -> Vec<(Partition, Offset)> {
        history
            .entries
            .iter()
            .map(|e| (e.partition, e.offset))
            .collect()
    };
    // Nothing published: a mark of no version applies from its frontier.
    let mark = TailMark {
        version: None,
        frontier: Arc::new([(0, 4)].into_iter().collect()),
        change_token: None,
    };
    let since = store
        .user_history_since("u", Some(&mark))
        .await
        .expect("since");
    assert!(since.resumed && since.manifest.is_none());
    assert_eq!(positions(&since), [(0, 4), (0, 5), (1, 0), (1, 1), (1, 2)]);

    store
        .write_batch(1, vec![("u".into(), record("u", "old"))])
        .await
        .expect("write_batch");
    store
        .publish(&manifest(1, &[(0, 2), (1, 1)]))
        .await
        .expect("publish");
    // A mark of the published version: past both its frontier and the
    // manifest's position.
    let mark = TailMark {
        version: Some(1),
        frontier: Arc::new([(0, 5)].into_iter().collect()),
        change_token: None,
    };
    let since = store
        .user_history_since("u", Some(&mark))
        .await
        .expect("since");
    assert!(since.resumed);
    assert_eq!(since.record.as_deref(), Some(&record("u", "old")));
    assert_eq!(positions(&since), [(0, 5), (1, 1), (1, 2)]);
    // A mark of another version does not apply: the whole tail comes back.
    for stale in [None, Some(7)] {
        let mark = TailMark {
            version: stale,
            frontier: Arc::new([(0, 5), (1, 3)].into_iter().collect()),
            change_token: None,
        };
        let since = store
            .user_history_since("u", Some(&mark))
            .await
            .expect("since");
        assert!(!since.resumed, "a mark of version {stale:?} over version 1");
        assert_eq!(
            positions(&since),
            [(0, 2), (0, 3), (0, 4), (0, 5), (1, 1), (1, 2)]
        );
    }
}

/// The ids of the events that count in `history`, sorted.
fn counted_ids(history: crate::ServedHistory) -> Vec<String> {
    let view = signals_core::UserView::with_tail(history.record, history.tail);
    let mut ids: Vec<String> = view.events().map(|e| e.event_id.to_string()).collect();
    ids.sort();
    ids
}

/// A [`TailCache`] in front of the store answers what a read of the whole
/// tail does, as the speed layer writes, a version is published, entries
/// are retracted and the user is erased.
pub async fn a_tail_cache_answers_like_a_fresh_read_through_writes_publications_and_erasure(
    store: Arc<dyn SignalStore>,
) {
    let serving: Arc<dyn ServingStore> = store.clone();
    let cached = TailCache::new(serving.clone(), 1 << 20, std::time::Duration::ZERO);
    let both = |what: &'static str| {
        let (serving, cached) = (&serving, &cached);
        async move {
            let fresh = counted_ids(serving.served_history("u").await.expect("fresh read"));
            let kept = counted_ids(cached.served_history("u").await.expect("cached read"));
            assert_eq!(kept, fresh, "{what}");
            kept
        }
    };
    let mut offset = 0;
    // Tail events counted after each round: version 1, published after
    // round 1, covers offsets below 60 and holds one event of its own.
    for (round, expected) in [40, 80, 61, 101].into_iter().enumerate() {
        let entries: Vec<PositionedEntry> = (offset..offset + 40).map(|o| at("u", 0, o)).collect();
        offset += 40;
        store
            .apply_speed(write(entries, &[(0, offset)]).into())
            .await
            .expect("apply");
        assert_eq!(both("after a write").await.len(), expected, "round {round}");
        assert_eq!(both("read again").await.len(), expected, "round {round}");
        if round == 1 {
            store
                .write_batch(1, vec![("u".into(), record("u", "old"))])
                .await
                .expect("write_batch");
            store
                .publish(&manifest(1, &[(0, 60)]))
                .await
                .expect("publish");
        }
    }
    let retraction = PositionedEntry {
        user_id: "u".into(),
        partition: 1,
        offset: 0,
        entry: SpeedEntry::Retracted {
            event_ids: vec!["old".into(), "p0-100".into()],
        },
    };
    store
        .apply_speed(write(vec![retraction], &[(0, offset), (1, 1)]).into())
        .await
        .expect("apply");
    let after = both("after a retraction").await;
    assert_eq!(after.len(), 99);
    assert!(!after.contains(&"old".to_owned()) && !after.contains(&"p0-100".to_owned()));
    // The deletion marker reaches the kept tail like any entry.
    store.erase_user("u", (0, offset)).await.expect("erase");
    assert!(both("after an erasure").await.is_empty());
    cached.evict_user("u").await.expect("evict");
    assert!(both("after eviction").await.is_empty());
}

pub async fn history_merges_the_published_record_with_uncovered_entries_only(
    store: &dyn SignalStore,
) {
    let entries = (0..10)
        .map(|o| at("u", 0, o))
        .chain((0..3).map(|o| at("u", 1, o)))
        .chain([at("u", 2, 0)]);
    store
        .apply_speed(write(entries.collect(), &[(0, 10), (1, 3), (2, 1)]).into())
        .await
        .expect("apply");
    store
        .write_batch(
            1,
            vec![
                ("u".into(), record("u", "old")),
                ("v".into(), record("v", "x")),
            ],
        )
        .await
        .expect("write_batch");

    let before = store.user_history("u").await.expect("history");
    assert!(
        before.manifest.is_none() && before.record.is_none(),
        "an unpublished version is invisible"
    );
    assert_eq!(before.speed.len(), 14);

    // Partition 2 is absent from the position: nothing of it is covered.
    let published = manifest(1, &[(0, 5), (1, 3)]);
    store.publish(&published).await.expect("publish");
    assert_eq!(
        store.published().await.expect("published"),
        Some(published.clone())
    );
    let history = store.user_history("u").await.expect("history");
    assert_eq!(history.manifest.as_deref(), Some(&published));
    assert_eq!(history.record.as_deref(), Some(&record("u", "old")));
    assert_eq!(
        speed_ids(store, "u").await,
        ids(&["p0-5", "p0-6", "p0-7", "p0-8", "p0-9", "p2-0"])
    );
    let again = store.user_history("u").await.expect("history");
    assert_eq!(
        again.record.as_deref(),
        Some(&record("u", "old")),
        "a repeated read answers the same"
    );

    // The parts of a history, read one by one, agree with the whole.
    assert_eq!(
        store.batch_record(1, "u").await.expect("record").as_deref(),
        Some(&record("u", "old"))
    );
    assert!(store.batch_record(1, "w").await.expect("record").is_none());
    assert!(store.batch_record(2, "u").await.expect("record").is_none());
    assert_eq!(
        store
            .speed_entries("u", &published.position)
            .await
            .expect("entries")
            .into_iter()
            .map(|p| p.entry)
            .collect::<Vec<_>>(),
        history.speed
    );
}

pub async fn publishing_never_goes_back_and_published_versions_are_immutable(
    store: &dyn SignalStore,
) {
    store
        .write_batch(2, vec![("u".into(), record("u", "v2"))])
        .await
        .expect("write_batch");
    let v2 = manifest(2, &[(0, 1)]);
    store.publish(&v2).await.expect("publish v2");
    let error = store
        .publish(&manifest(1, &[(0, 9)]))
        .await
        .expect_err("an older version is refused");
    let message = error.to_string();
    assert!(
        message.contains('1') && message.contains('2'),
        "the error names both versions: {message}"
    );
    store
        .publish(&v2)
        .await
        .expect("publishing the same manifest again is harmless");
    store
        .publish(&manifest(2, &[(0, 7)]))
        .await
        .expect_err("the same version with another manifest is refused");
    assert_eq!(store.published().await.expect("published"), Some(v2));
    store
        .write_batch(2, vec![("u".into(), record("u", "changed"))])
        .await
        .expect_err("records of a published version cannot change");
    let history = store.user_history("u").await.expect("history");
    assert_eq!(history.record.as_deref(), Some(&record("u", "v2")));
    store
        .write_batch(3, vec![("u".into(), record("u", "v3"))])
        .await
        .expect("the next version is writable");
    store
        .publish(&manifest(3, &[(0, 2)]))
        .await
        .expect("publish v3");
    assert_eq!(
        store
            .user_history("u")
            .await
            .expect("history")
            .record
            .as_deref(),
        Some(&record("u", "v3"))
    );
}

pub async fn garbage_collection_keeps_what_the_published_version_needs(store: &dyn SignalStore) {
    // One write per entry: a backend may keep a user's entries of one write
    // as one row, which goes once all of them are covered.
    for o in 0..10 {
        store
            .apply_speed(write(vec![at("u", 0, o)], &[(0, o + 1)]).into())
            .await
            .expect("apply");
    }
    store
        .apply_speed(write(vec![at("w", 1, 0)], &[(0, 10), (1, 1)]).into())
        .await
        .expect("apply");
    let users = |tag: &str| {
        vec![
            ("u".to_owned(), record("u", tag)),
            ("v".to_owned(), record("v", tag)),
        ]
    };
    store.write_batch(1, users("v1")).await.expect("write v1");
    let v1 = manifest(1, &[(0, 4)]);
    store.publish(&v1).await.expect("publish v1");
    store.write_batch(2, users("v2")).await.expect("write v2");
    let v2 = manifest(2, &[(0, 8)]);
    store.publish(&v2).await.expect("publish v2");

    // Lagging one version: what a reader of v1 needs goes, nothing else.
    let stats = store
        .collect_garbage(&v1.position, v1.version)
        .await
        .expect("gc");
    assert_eq!(
        stats,
        GarbageStats {
            speed_entries: 4,
            batch_records: 0,
            index_entries: 0
        }
    );
    assert_eq!(speed_ids(store, "u").await, ids(&["p0-8", "p0-9"]));
    let stats = store
        .collect_garbage(&v2.position, v2.version)
        .await
        .expect("gc");
    assert_eq!(
        stats,
        GarbageStats {
            speed_entries: 4,
            batch_records: 2,
            index_entries: 0
        }
    );
    let history = store.user_history("u").await.expect("history");
    assert_eq!(history.record.as_deref(), Some(&record("u", "v2")));
    assert_eq!(speed_ids(store, "u").await, ids(&["p0-8", "p0-9"]));

    // Beyond the published manifest: clamped to it, so nothing it needs goes.
    let everything: LogPosition = [(0, 100), (1, 100)].into_iter().collect();
    let stats = store.collect_garbage(&everything, 99).await.expect("gc");
    assert_eq!(stats, GarbageStats::default());
    assert_eq!(speed_ids(store, "u").await, ids(&["p0-8", "p0-9"]));
    assert_eq!(speed_ids(store, "w").await, ids(&["p1-0"]));
    let history = store.user_history("v").await.expect("history");
    assert_eq!(history.record.as_deref(), Some(&record("v", "v2")));
    assert_eq!(
        store
            .speed_progress()
            .await
            .expect("progress")
            .position
            .next(0),
        10,
        "progress is untouched"
    );
}

pub async fn a_user_with_only_speed_entries_has_no_record(store: &dyn SignalStore) {
    store
        .write_batch(1, vec![("other".into(), record("other", "x"))])
        .await
        .expect("write_batch");
    let published = manifest(1, &[(0, 1)]);
    store.publish(&published).await.expect("publish");
    store
        .apply_speed(write(vec![at("fresh", 0, 1), at("fresh", 0, 0)], &[(0, 2)]).into())
        .await
        .expect("apply");
    let history = store.user_history("fresh").await.expect("history");
    assert_eq!(history.manifest.map(Arc::unwrap_or_clone), Some(published));
    assert!(history.record.is_none());
    assert_eq!(
        speed_ids(store, "fresh").await,
        ids(&["p0-1"]),
        "offset 0 is covered by the manifest"
    );
}

pub async fn erasing_a_user_leaves_a_marker_and_erased_records_only(store: &dyn SignalStore) {
    let entry = |user: &str, partition, offset, id: &str| PositionedEntry {
        user_id: user.into(),
        partition,
        offset,
        entry: SpeedEntry::Event(event(id, user, 1)),
    };
    store
        .write_batch(
            1,
            vec![
                ("u".into(), record("u", "b1")),
                ("w".into(), record("w", "b2")),
            ],
        )
        .await
        .expect("write_batch");
    store
        .publish(&manifest(1, &[(0, 2)]))
        .await
        .expect("publish");
    store
        .write_batch(2, vec![("u".into(), record("u", "b3"))])
        .await
        .expect("write_batch");
    let write = SpeedWrite {
        entries: vec![
            entry("u", 0, 1, "covered"),
            entry("u", 0, 3, "s1"),
            entry("u", 1, 0, "s2"),
            entry("w", 0, 4, "w1"),
        ],
        index: Vec::new(),
        progress: SpeedProgress {
            position: [(0, 5), (1, 1)].into_iter().collect(),
            last_accepted_at: None,
        },
    };
    store.apply_speed(write.into()).await.expect("apply");
    assert!(store
        .user_history("u")
        .await
        .expect("history")
        .record
        .is_some());

    for _ in 0..2 {
        store
            .erase_user("u", (0, 7))
            .await
            .expect("erase (idempotent)");
    }
    let history = store.user_history("u").await.expect("history");
    let erased = history
        .record
        .expect("the published version keeps an erased record");
    assert!(erased.deleted && erased.events.is_empty() && erased.base.is_empty());
    assert_eq!(history.speed, vec![SpeedEntry::Deleted]);
    let unpublished = store
        .batch_record(2, "u")
        .await
        .expect("record")
        .expect("erased");
    assert!(unpublished.deleted && unpublished.events.is_empty());
    let entries = store
        .speed_entries("u", &LogPosition::new())
        .await
        .expect("entries");
    assert_eq!(
        entries,
        vec![PositionedEntry {
            user_id: "u".into(),
            partition: 0,
            offset: 7,
            entry: SpeedEntry::Deleted,
        }],
        "every other entry of the user is gone, covered ones too"
    );

    // Nobody else is touched.
    let other = store.user_history("w").await.expect("history");
    assert_eq!(other.record.as_deref(), Some(&record("w", "b2")));
    assert_eq!(speed_ids(store, "w").await, ids(&["w1"]));
}

pub async fn the_batch_checkpoint_is_saved_replaced_and_cleared(store: &dyn SignalStore) {
    assert_eq!(store.batch_checkpoint().await.expect("read"), None);
    let mut checkpoint = BatchCheckpoint {
        version: 3,
        plan: "run".into(),
        position: [(0, 10), (3, 2)].into_iter().collect(),
        started_at: 1_700_000_000_000,
        written_through: None,
    };
    store
        .save_batch_checkpoint(Some(&checkpoint))
        .await
        .expect("save");
    assert_eq!(
        store.batch_checkpoint().await.expect("read").as_ref(),
        Some(&checkpoint)
    );
    checkpoint.written_through = Some("user-0042".into());
    store
        .save_batch_checkpoint(Some(&checkpoint))
        .await
        .expect("replace");
    assert_eq!(
        store.batch_checkpoint().await.expect("read").as_ref(),
        Some(&checkpoint)
    );
    store.save_batch_checkpoint(None).await.expect("clear");
    assert_eq!(store.batch_checkpoint().await.expect("read"), None);
}

pub async fn a_claimed_checkpoint_is_shared_and_shares_are_listed_per_version(
    store: &dyn SignalStore,
) {
    let checkpoint = |version, started_at| BatchCheckpoint {
        version,
        plan: "partitioned".into(),
        position: [(0, 10), (1, 4)].into_iter().collect(),
        started_at,
        written_through: None,
    };
    // The first claim wins; later claims of the version get the winner.
    let first = store
        .claim_batch_checkpoint(&checkpoint(2, 100))
        .await
        .expect("claim");
    assert_eq!(first, checkpoint(2, 100));
    let second = store
        .claim_batch_checkpoint(&checkpoint(2, 200))
        .await
        .expect("claim");
    assert_eq!(second, checkpoint(2, 100));
    // An older version's checkpoint is replaced by a newer claim.
    store
        .save_batch_checkpoint(Some(&checkpoint(1, 50)))
        .await
        .expect("save");
    let newer = store
        .claim_batch_checkpoint(&checkpoint(3, 300))
        .await
        .expect("claim");
    assert_eq!(newer, checkpoint(3, 300));

    let part = |partitions: Vec<Partition>, done| BatchPart {
        partitions,
        written_through: Some("u-9".into()),
        done,
        users: 3,
        events: 7,
    };
    store
        .save_batch_part(3, &part(vec![0], false))
        .await
        .expect("save");
    store
        .save_batch_part(3, &part(vec![0], true))
        .await
        .expect("replace");
    store
        .save_batch_part(3, &part(vec![1, 2], false))
        .await
        .expect("save");
    store
        .save_batch_part(30, &part(vec![5], true))
        .await
        .expect("save");
    let mut parts = store.batch_parts(3).await.expect("list");
    parts.sort_by(|a, b| a.partitions.cmp(&b.partitions));
    assert_eq!(parts, vec![part(vec![0], true), part(vec![1, 2], false)]);
    assert_eq!(
        store.batch_parts(30).await.expect("list"),
        vec![part(vec![5], true)]
    );

    store.save_batch_checkpoint(None).await.expect("clear");
    assert!(store.batch_parts(3).await.expect("list").is_empty());
    assert!(store.batch_parts(30).await.expect("list").is_empty());
    assert_eq!(store.batch_checkpoint().await.expect("read"), None);
}
