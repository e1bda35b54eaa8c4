//! Table definitions, the `meta` keys and opening-time checks.

use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::{engine, Inner};
use crate::StoreError;

/// user ‖ partition ‖ offset → SpeedEntry.
pub const SPEED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("speed");
/// event id → IndexEntry.
pub const EVENT_INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("event_index");
/// expiry (big-endian, sign bit flipped) ‖ event id → (): when index
/// entries may go, in time order. A key is a hint: the entry itself says
/// whether it expires then (a later write may have moved it on).
pub const INDEX_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("index_expiry");
/// version ‖ user → UserRecord.
pub const BATCH: TableDefinition<&[u8], &[u8]> = TableDefinition::new("batch");
/// Named singletons.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `meta` key: the key and value layout the file was written with (one byte).
pub const LAYOUT_KEY: &str = "layout";
/// `meta` key: the speed layer's progress.
pub const PROGRESS_KEY: &str = "speed_progress";
/// `meta` key: the published manifest.
pub const PUBLISHED_KEY: &str = "published";
/// `meta` key: the checkpoint of an unpublished batch run.
pub const CHECKPOINT_KEY: &str = "batch_checkpoint";

/// The layout this build reads and writes (see `keys` and `codec`).
pub const LAYOUT: u8 = 1;

/// Creates the tables of a new file and checks the layout of an existing one.
pub fn initialise(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(engine("begin a write"))?;
    txn.set_durability(Durability::Immediate);
    {
        txn.open_table(SPEED)
            .map_err(engine("create table speed"))?;
        txn.open_table(EVENT_INDEX)
            .map_err(engine("create table event_index"))?;
        txn.open_table(INDEX_EXPIRY)
            .map_err(engine("create table index_expiry"))?;
        txn.open_table(BATCH)
            .map_err(engine("create table batch"))?;
        let mut meta = txn.open_table(META).map_err(engine("create table meta"))?;
        let stored = meta
            .get(LAYOUT_KEY)
            .map_err(engine("read the layout"))?
            .map(|v| v.value().to_vec());
        match stored.as_deref() {
            None => {
                meta.insert(LAYOUT_KEY, [LAYOUT].as_slice()).map_err(engine("write the layout"))?;
            }
            Some([LAYOUT]) => {}
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "table meta, key {LAYOUT_KEY}: the file has layout {other:?}, this build reads layout {LAYOUT}"
                )))
            }
        }
    }
    txn.commit().map_err(engine("commit the table set-up"))
}

impl Inner {
    /// Whether a read transaction can be opened and sees the tables.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        txn.open_table(META).map_err(engine("open table meta"))?;
        Ok(())
    }
}
