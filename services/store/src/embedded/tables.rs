//! Table definitions, the `meta` keys and opening-time checks.

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use tracing::info;

use super::{codec, engine, index, Inner};
use crate::StoreError;

/// user ‖ partition ‖ last offset → the user's entries of that partition
/// in one speed write (a chunk, see `codec::encode_chunk`).
pub const SPEED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("speed");
/// write ‖ log2(buckets) ‖ bucket → that bucket's index updates of one
/// speed write, sorted by event id (see [`super::index`]).
pub const INDEX_LOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index_log");
/// write → when all of that write's index updates have expired, and how
/// many there are: what garbage collection scans.
pub const INDEX_WRITES: TableDefinition<u64, &[u8]> = TableDefinition::new("index_writes");
/// Layout 1's event index (event id → IndexEntry), moved into `index_log`
/// when a layout 1 file is opened.
const LEGACY_EVENT_INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("event_index");
/// Layout 1's expiry hints of `event_index`, dropped with it.
const LEGACY_INDEX_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("index_expiry");
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
/// Layout 2 coalesced speed rows per user and write, and turned the event
/// index into a log; layout 3 moved the insights tables to a file of their
/// own. Older files are converted when opened.
pub const LAYOUT: u8 = 3;

/// Creates the tables of a new file, checks the layout of an existing one
/// and converts an older one, in one transaction of the store file (moving
/// insights tables commits the insights file's transaction first).
pub fn initialise(db: &Database, insights: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(engine("begin a write"))?;
    txn.set_durability(Durability::Immediate);
    {
        txn.open_table(SPEED)
            .map_err(engine("create table speed"))?;
        txn.open_table(INDEX_LOG)
            .map_err(engine("create table index_log"))?;
        txn.open_table(INDEX_WRITES)
            .map_err(engine("create table index_writes"))?;
        txn.open_table(BATCH)
            .map_err(engine("create table batch"))?;
        let stored = txn
            .open_table(META)
            .map_err(engine("create table meta"))?
            .get(LAYOUT_KEY)
            .map_err(engine("read the layout"))?
            .map(|v| v.value().to_vec());
        match stored.as_deref() {
            None => {}
            Some([LAYOUT]) => {}
            Some([1]) => {
                convert_layout_1(&txn)?;
                move_insights(&txn, insights)?;
            }
            Some([2]) => move_insights(&txn, insights)?,
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "table meta, key {LAYOUT_KEY}: the file has layout {other:?}, this build reads layouts 1 to {LAYOUT}"
                )))
            }
        }
        let mut meta = txn.open_table(META).map_err(engine("open table meta"))?;
        meta.insert(LAYOUT_KEY, [LAYOUT].as_slice())
            .map_err(engine("write the layout"))?;
    }
    txn.commit().map_err(engine("commit the table set-up"))
}

/// Layout 2 → 3: the insights tables move to their own file.
fn move_insights(txn: &WriteTransaction, insights: &Database) -> Result<(), StoreError> {
    let moved = super::insights::move_from_the_store(txn, insights)?;
    info!(
        rows = moved,
        "embedded store moved the insights tables to their own file"
    );
    Ok(())
}

/// Layout 1 → 2: the `event_index` rows become index log writes (their
/// speed rows, one entry each, are valid layout 2 rows as they are).
fn convert_layout_1(txn: &WriteTransaction) -> Result<(), StoreError> {
    let entries = {
        let legacy = txn
            .open_table(LEGACY_EVENT_INDEX)
            .map_err(engine("open table event_index"))?;
        let mut entries = Vec::new();
        for item in legacy.iter().map_err(engine("scan the event index"))? {
            let (id, value) = item.map_err(engine("scan the event index"))?;
            let id = id.value();
            let entry =
                codec::decode_index(value.value(), "event_index", || format!("event id {id:?}"))?;
            entries.push((id.to_owned(), entry));
        }
        entries
    };
    let moved = entries.len();
    for (write, chunk) in entries.chunks(index::CONVERSION_CHUNK).enumerate() {
        index::append(txn, write as u64, &index::IndexRows::of(chunk)?)?;
    }
    txn.delete_table(LEGACY_EVENT_INDEX)
        .map_err(engine("drop table event_index"))?;
    txn.delete_table(LEGACY_INDEX_EXPIRY)
        .map_err(engine("drop table index_expiry"))?;
    info!(
        entries = moved,
        "embedded store converted from layout 1 to layout {LAYOUT}"
    );
    Ok(())
}

impl Inner {
    /// Whether a read transaction can be opened and sees the tables.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(engine("begin a read"))?;
        txn.open_table(META).map_err(engine("open table meta"))?;
        Ok(())
    }
}
