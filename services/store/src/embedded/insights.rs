//! The insights port on the embedded store: four more tables in the same
//! redb file, written by one durable transaction per worker pass.
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
//! if they were empty.

use std::collections::HashMap;

use async_trait::async_trait;
use redb::{Durability, ReadTransaction, ReadableTable, TableDefinition, TableError};
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
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        let meta = txn.open_table(META).map_err(engine("open table meta"))?;
        match meta
            .get(PROGRESS_KEY)
            .map_err(engine("read insights progress"))?
        {
            Some(bytes) => codec::decode(bytes.value(), "meta", || PROGRESS_KEY.to_owned()),
            None => Ok(InsightsProgress::default()),
        }
    }

    fn memberships(&self, users: &[String]) -> Result<HashMap<String, Membership>, StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
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
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
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
        let mut txn = self.db.begin_write().map_err(engine("begin a write"))?;
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
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
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
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
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

    #[tokio::test]
    async fn membership_and_the_feed_keep_the_port_contract() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("opens");
        crate::insights::contract::membership_and_feed(&store).await;
    }
}
