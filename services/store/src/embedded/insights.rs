//! The insights port on the embedded store: four tables in a redb file of
//! their own beside the store's ([`insights_path`]), written by one durable
//! transaction per worker pass.
//!
//! A file of their own because redb lets one transaction write a file at a
//! time: a worker pass rewrites the membership of every user it saw (about
//! 3,000 rows per pass at 10k events/s) and held the file for 40–60 ms,
//! during which the speed layer's writes waited, and so did the freshness
//! of every signal. Nothing is written to both files at once: the worker's
//! writes are its own, as is its progress.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `segment_membership` | user | [`Membership`] |
//! | `segment_members` | segment ‖ 0x00 ‖ user | empty |
//! | `segment_timers` | due (order-preserving) ‖ user | empty |
//! | `segment_changes` | cursor | [`Transition`] |
//!
//! and the `meta` key `insights_progress` ([`InsightsProgress`]). Tables are
//! created by the first write; reads of a file that has none yet answer as
//! if they were empty. Files of layout 2 and before kept these tables in the
//! store's file; opening one moves them here ([`move_from_the_store`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use redb::{
    Database, Durability, ReadTransaction, ReadableTable, TableDefinition, TableError,
    WriteTransaction,
};
use signals_schemas::Millis;

use super::tables::META;
use super::{codec, engine, EmbeddedStore, Inner};
use crate::insights::{
    Applied, FeedEntry, InsightsProgress, InsightsStore, Membership, MembershipUpdate, Transition,
};
use crate::StoreError;

const MEMBERSHIP: TableDefinition<&str, &[u8]> = TableDefinition::new("segment_membership");
const MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("segment_members");
const TIMERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("segment_timers");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("segment_changes");
const PROGRESS_KEY: &str = "insights_progress";

fn member_key(segment: &str, user: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(segment.len() + 1 + user.len());
    key.extend_from_slice(segment.as_bytes());
    key.push(0);
    key.extend_from_slice(user.as_bytes());
    key
}

/// Big-endian with the sign bit flipped, so byte order is time order.
fn timer_key(due: Millis, user: &str) -> Vec<u8> {
    let mut key = ((due as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    key.extend_from_slice(user.as_bytes());
    key
}

fn timer_of(key: &[u8]) -> Option<(Millis, String)> {
    let (time, user) = key.split_at_checked(8)?;
    let bits = u64::from_be_bytes(time.try_into().ok()?) ^ (1 << 63);
    Some((bits as Millis, String::from_utf8(user.to_vec()).ok()?))
}

/// The insights file of the store file at `store`: `x.redb` → `x.insights.redb`.
pub(super) fn insights_path(store: &Path) -> PathBuf {
    let stem = store.file_stem().unwrap_or_default().to_string_lossy();
    store.with_file_name(format!("{stem}.insights.redb"))
}

/// Moves the insights tables and progress of a store file written before
/// they had a file of their own into `insights`, and drops them from the
/// store file's transaction `store`. The insights file's transaction
/// commits first: a crash before `store` commits finds the tables still in
/// the store file and moves them again, over an identical copy.
pub(super) fn move_from_the_store(
    store: &WriteTransaction,
    insights: &Database,
) -> Result<u64, StoreError> {
    let mut txn = insights.begin_write().map_err(engine("begin a write"))?;
    txn.set_durability(Durability::Immediate);
    let mut moved = move_table(store, &txn, MEMBERSHIP)?;
    moved += move_table(store, &txn, MEMBERS)?;
    moved += move_table(store, &txn, TIMERS)?;
    moved += move_table(store, &txn, CHANGES)?;
    {
        let mut from = store.open_table(META).map_err(engine("open table meta"))?;
        let progress = from
            .remove(PROGRESS_KEY)
            .map_err(engine("move insights progress"))?
            .map(|bytes| bytes.value().to_vec());
        if let Some(progress) = progress {
            let mut to = txn.open_table(META).map_err(engine("open table meta"))?;
            to.insert(PROGRESS_KEY, progress.as_slice())
                .map_err(engine("move insights progress"))?;
            moved += 1;
        }
    }
    txn.commit()
        .map_err(engine("commit the moved insights tables"))?;
    Ok(moved)
}

/// Copies `table` from `from` to `to` and deletes it in `from`; rows moved.
fn move_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &WriteTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let exists = from
        .list_tables()
        .map_err(engine("list tables"))?
        .any(|t| redb::TableHandle::name(&t) == redb::TableHandle::name(&table));
    if !exists {
        return Ok(0);
    }
    let mut moved = 0;
    {
        let source = from
            .open_table(table)
            .map_err(engine("open an insights table"))?;
        let mut target = to
            .open_table(table)
            .map_err(engine("open an insights table"))?;
        for row in source.iter().map_err(engine("read an insights table"))? {
            let (key, value) = row.map_err(engine("read an insights table"))?;
            target
                .insert(key.value(), value.value())
                .map_err(engine("copy an insights table"))?;
            moved += 1;
        }
    }
    from.delete_table(table)
        .map_err(engine("drop a moved insights table"))?;
    Ok(moved)
}

/// Opens `table` for reading; `None` when no write has created it yet.
fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(engine("open an insights table")(e)),
    }
}

impl Inner {
    fn insights_progress(&self) -> Result<InsightsProgress, StoreError> {
        let txn = self.insights.begin_read().map_err(engine("begin a read"))?;
        let Some(meta) = open_read(&txn, META)? else {
            return Ok(InsightsProgress::default());
        };
        match meta
            .get(PROGRESS_KEY)
            .map_err(engine("read insights progress"))?
        {
            Some(bytes) => codec::decode(bytes.value(), "meta", || PROGRESS_KEY.to_owned()),
            None => Ok(InsightsProgress::default()),
        }
    }

    fn memberships(&self, users: &[String]) -> Result<HashMap<String, Membership>, StoreError> {
        let txn = self.insights.begin_read().map_err(engine("begin a read"))?;
        let Some(table) = open_read(&txn, MEMBERSHIP)? else {
            return Ok(HashMap::new());
        };
        let mut found = HashMap::new();
        for user in users {
            if let Some(bytes) = table
                .get(user.as_str())
                .map_err(engine("read a membership"))?
            {
                let membership: Membership =
                    codec::decode(bytes.value(), "segment_membership", || {
                        format!("user {user}")
                    })?;
                found.insert(user.clone(), membership);
            }
        }
        Ok(found)
    }

    fn due(&self, until: Millis, limit: usize) -> Result<Vec<(Millis, String)>, StoreError> {
        let txn = self.insights.begin_read().map_err(engine("begin a read"))?;
        let Some(table) = open_read(&txn, TIMERS)? else {
            return Ok(Vec::new());
        };
        let end = timer_key(until.saturating_add(1), "");
        let mut due = Vec::new();
        for row in table
            .range(..end.as_slice())
            .map_err(engine("scan timers"))?
            .take(limit)
        {
            let (key, _) = row.map_err(engine("scan timers"))?;
            let timer = timer_of(key.value()).ok_or_else(|| {
                StoreError::Corrupt("table segment_timers: a key is not due ‖ user".into())
            })?;
            due.push(timer);
        }
        Ok(due)
    }

    fn apply_insights(
        &self,
        updates: &[MembershipUpdate],
        progress: &InsightsProgress,
    ) -> Result<Applied, StoreError> {
        let mut txn = self
            .insights
            .begin_write()
            .map_err(engine("begin a write"))?;
        txn.set_durability(Durability::Immediate);
        let mut applied = Applied::default();
        {
            let mut meta = txn.open_table(META).map_err(engine("open table meta"))?;
            let stored: InsightsProgress = match meta
                .get(PROGRESS_KEY)
                .map_err(engine("read insights progress"))?
            {
                Some(bytes) => codec::decode(bytes.value(), "meta", || PROGRESS_KEY.to_owned())?,
                None => InsightsProgress::default(),
            };
            // The stored cursor wins over the caller's: it is the one that
            // is durably past every entry written so far.
            // Cursors start at 1, so `after = 0` reads the feed from its start.
            let mut next_cursor = stored.next_cursor.max(progress.next_cursor).max(1);
            let mut membership = txn
                .open_table(MEMBERSHIP)
                .map_err(engine("open table segment_membership"))?;
            let mut members = txn
                .open_table(MEMBERS)
                .map_err(engine("open table segment_members"))?;
            let mut timers = txn
                .open_table(TIMERS)
                .map_err(engine("open table segment_timers"))?;
            let mut changes = txn
                .open_table(CHANGES)
                .map_err(engine("open table segment_changes"))?;
            for update in updates {
                let user = update.user_id.as_str();
                let current: Option<Membership> =
                    match membership.get(user).map_err(engine("read a membership"))? {
                        Some(bytes) => {
                            Some(codec::decode(bytes.value(), "segment_membership", || {
                                format!("user {user}")
                            })?)
                        }
                        None => None,
                    };
                if current != update.previous {
                    applied.conflicts += 1;
                    continue;
                }
                if let Some(due) = current.as_ref().and_then(|m| m.due) {
                    timers
                        .remove(timer_key(due, user).as_slice())
                        .map_err(engine("remove a timer"))?;
                }
                if let Some(due) = update.next.due {
                    timers
                        .insert(timer_key(due, user).as_slice(), [].as_slice())
                        .map_err(engine("set a timer"))?;
                }
                for transition in &update.transitions {
                    let key = member_key(&transition.segment, user);
                    match transition.change {
                        crate::insights::Change::Entered => {
                            members.insert(key.as_slice(), [].as_slice()).map(drop)
                        }
                        crate::insights::Change::Left => members.remove(key.as_slice()).map(drop),
                    }
                    .map_err(engine("update segment members"))?;
                    changes
                        .insert(next_cursor, codec::encode(transition)?.as_slice())
                        .map_err(engine("append a segment change"))?;
                    applied.published.push(FeedEntry {
                        cursor: next_cursor,
                        transition: transition.clone(),
                    });
                    next_cursor += 1;
                }
                membership
                    .insert(user, codec::encode(&update.next)?.as_slice())
                    .map_err(engine("write a membership"))?;
            }
            // Progress only moves forward, whatever a caller passes.
            let mut position = stored.position;
            for (partition, next) in progress.position.iter() {
                position.advance(partition, next);
            }
            let recorded = InsightsProgress {
                position,
                evaluated_until: stored.evaluated_until.max(progress.evaluated_until),
                next_cursor,
            };
            meta.insert(PROGRESS_KEY, codec::encode(&recorded)?.as_slice())
                .map_err(engine("write insights progress"))?;
        }
        txn.commit().map_err(engine("commit insights"))?;
        Ok(applied)
    }

    fn segment_members(
        &self,
        segment: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let txn = self.insights.begin_read().map_err(engine("begin a read"))?;
        let Some(table) = open_read(&txn, MEMBERS)? else {
            return Ok(Vec::new());
        };
        let prefix = member_key(segment, "");
        let start = match after {
            // The smallest key after `segment ‖ 0 ‖ after`.
            Some(user) => {
                let mut key = member_key(segment, user);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let mut users = Vec::new();
        for row in table
            .range(start.as_slice()..)
            .map_err(engine("scan segment members"))?
        {
            let (key, _) = row.map_err(engine("scan segment members"))?;
            let Some(user) = key.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            users.push(String::from_utf8_lossy(user).into_owned());
            if users.len() >= limit {
                break;
            }
        }
        Ok(users)
    }

    fn segment_changes(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        let txn = self.insights.begin_read().map_err(engine("begin a read"))?;
        let Some(table) = open_read(&txn, CHANGES)? else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for row in table
            .range(after.saturating_add(1)..)
            .map_err(engine("scan segment changes"))?
            .take(limit)
        {
            let (cursor, bytes) = row.map_err(engine("scan segment changes"))?;
            let cursor = cursor.value();
            let transition: Transition = codec::decode(bytes.value(), "segment_changes", || {
                format!("cursor {cursor}")
            })?;
            entries.push(FeedEntry { cursor, transition });
        }
        Ok(entries)
    }
}

#[async_trait]
impl InsightsStore for EmbeddedStore {
    async fn insights_progress(&self) -> Result<InsightsProgress, StoreError> {
        self.blocking(Inner::insights_progress).await
    }

    async fn memberships(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Membership>, StoreError> {
        let users = users.to_vec();
        self.blocking(move |inner| inner.memberships(&users)).await
    }

    async fn due(&self, until: Millis, limit: usize) -> Result<Vec<(Millis, String)>, StoreError> {
        self.blocking(move |inner| inner.due(until, limit)).await
    }

    async fn apply_insights(
        &self,
        updates: Vec<MembershipUpdate>,
        progress: InsightsProgress,
    ) -> Result<Applied, StoreError> {
        self.blocking(move |inner| inner.apply_insights(&updates, &progress))
            .await
    }

    async fn segment_members(
        &self,
        segment: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (segment, after) = (segment.to_owned(), after.map(str::to_owned));
        self.blocking(move |inner| inner.segment_members(&segment, after.as_deref(), limit))
            .await
    }

    async fn segment_changes(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<FeedEntry>, StoreError> {
        self.blocking(move |inner| inner.segment_changes(after, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::SpeedStore;

    #[tokio::test]
    async fn membership_and_the_feed_keep_the_port_contract() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("opens");
        crate::insights::contract::membership_and_feed(&store).await;
    }

    /// Everything the port answers, to compare a store before and after.
    async fn answers(store: &EmbeddedStore) -> impl PartialEq + std::fmt::Debug {
        let users = vec!["u1".to_owned(), "u2".to_owned()];
        (
            store.insights_progress().await.expect("progress"),
            store.memberships(&users).await.expect("memberships"),
            store.due(Millis::MAX, 10).await.expect("due"),
            store.segment_members("a", None, 10).await.expect("members"),
            store.segment_changes(0, 10).await.expect("feed"),
        )
    }

    /// The store file's table names.
    fn tables_of(path: &Path) -> Vec<String> {
        let db = Database::open(path).expect("open");
        let txn = db.begin_read().expect("read");
        txn.list_tables()
            .expect("tables")
            .map(|t| redb::TableHandle::name(&t).to_owned())
            .collect()
    }

    /// A store written before insights had a file of their own (layout 2)
    /// opens with the same answers, its insights tables moved; so does one
    /// whose move was cut short after the insights file committed.
    #[tokio::test]
    async fn a_layout_2_file_moves_its_insights_tables_when_opened() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.redb");
        let before = {
            let store = EmbeddedStore::open(&path).expect("opens");
            crate::insights::contract::membership_and_feed(&store).await;
            answers(&store).await
        };
        // Back to layout 2: the tables and the progress into the store file.
        {
            let db = Database::open(&path).expect("open the store file");
            let insights = Database::open(insights_path(&path)).expect("open the insights file");
            let (to, from) = (
                db.begin_write().expect("write"),
                insights.begin_write().expect("write"),
            );
            for moved in [
                move_table(&from, &to, MEMBERSHIP),
                move_table(&from, &to, MEMBERS),
                move_table(&from, &to, TIMERS),
                move_table(&from, &to, CHANGES),
            ] {
                assert!(moved.expect("moved") > 0);
            }
            {
                let meta = from.open_table(META).expect("meta");
                let progress = meta.get(PROGRESS_KEY).expect("get").expect("progress");
                let mut store_meta = to.open_table(META).expect("meta");
                store_meta
                    .insert(PROGRESS_KEY, progress.value())
                    .expect("insert");
                store_meta
                    .insert(super::super::tables::LAYOUT_KEY, [2u8].as_slice())
                    .expect("layout");
            }
            to.commit().expect("commit");
            drop(from);
        }
        std::fs::remove_file(insights_path(&path)).expect("remove the insights file");
        assert!(tables_of(&path).contains(&"segment_changes".to_owned()));

        // Cut short: the insights file has its copy, the store file still
        // says layout 2 and holds the tables.
        {
            let db = Database::open(&path).expect("open the store file");
            let insights = Database::create(insights_path(&path)).expect("create");
            let txn = db.begin_write().expect("write");
            assert!(move_from_the_store(&txn, &insights).expect("moved") > 0);
            txn.abort().expect("abort");
        }
        assert!(tables_of(&path).contains(&"segment_changes".to_owned()));

        let store = EmbeddedStore::open(&path).expect("opens a layout 2 file");
        assert_eq!(answers(&store).await, before);
        drop(store);
        let left = tables_of(&path);
        assert!(!left.iter().any(|t| t.starts_with("segment_")), "{left:?}");
        let store = EmbeddedStore::open(&path).expect("opens again");
        assert_eq!(answers(&store).await, before);
    }

    /// A worker's pass holding its file does not hold up the speed layer.
    #[tokio::test]
    async fn a_write_of_insights_does_not_hold_up_a_speed_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("opens");
        let pass = store.inner.insights.begin_write().expect("write");
        let w = crate::contract::write(vec![crate::contract::at("u", 0, 0)], &[(0, 1)]);
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.apply_speed(w.into()),
        )
        .await
        .expect("the speed write does not wait for the insights pass")
        .expect("applied");
        pass.abort().expect("abort");
    }
}
