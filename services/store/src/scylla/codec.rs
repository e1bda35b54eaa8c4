//! Values and keys as the CQL tables hold them.
//!
//! Blobs are the store's value format ([`crate::codec`]), byte for byte
//! the embedded store's.
//!
//! Log partitions (u32), offsets and versions (u64) are CQL `bigint`s.

use serde::{Deserialize, Serialize};

use crate::codec::PIECES_FORMAT;
use crate::StoreError;

pub use crate::codec::{
    chunk_len, decode, decode_chunk, decode_record, encode, encode_chunk, encode_record,
};

/// Buckets of a version's user listing (`batch_users`). Fixed forever:
/// changing it makes the listings of existing versions unreadable.
pub const USER_BUCKETS: u32 = 256;

/// The listing bucket (`batch_users`) of `user`: FNV-1a (64 bit) of its bytes, modulo
/// [`USER_BUCKETS`]. Stable across builds, platforms and processes.
pub fn user_bucket(user: &str) -> u32 {
    // Below USER_BUCKETS: always fits.
    (signals_core::fnv1a64(user.as_bytes()) % u64::from(USER_BUCKETS)) as u32
}

/// The listing bucket (`batch_users`) that names, once more, the users of
/// a version whose records are in pieces: garbage collection and erasure
/// find their pieces there.
pub const PIECED_BUCKET: i32 = -1;

/// Most bytes of a record in its `batch_records` cell; a longer record is
/// written to `batch_record_pieces` in pieces of this size. A MiB: a cell
/// that size is still cheap to compact and read, and a request far below
/// the 16 MiB a CQL server takes (a user with some 13,000 events in the
/// horizon reaches it; one with 400,000 made a request of 23 MB, which
/// Cassandra refused, and with it the whole batch run).
pub const RECORD_PIECE_BYTES: usize = 1 << 20;

/// What a `batch_records` cell holds for a record in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordPieces {
    pub pieces: u32,
    /// The record's length: its pieces are `RECORD_PIECE_BYTES` each but
    /// the last.
    pub bytes: u64,
}

impl RecordPieces {
    /// The cell's value, behind [`PIECES_FORMAT`].
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        postcard::to_extend(self, vec![PIECES_FORMAT])
            .map_err(|e| StoreError::Backend(format!("cannot encode a record's pieces: {e}")))
    }

    /// What `cell` says of pieces, if it stands for a record in pieces.
    pub fn of_cell(cell: &[u8], key: impl FnOnce() -> String) -> Result<Option<Self>, StoreError> {
        match cell.split_first() {
            Some((&PIECES_FORMAT, body)) => postcard::from_bytes(body).map(Some).map_err(|e| {
                StoreError::Corrupt(format!(
                    "table batch_records, {}: undecodable record pieces: {e}",
                    key()
                ))
            }),
            _ => Ok(None),
        }
    }
}

/// Buckets of the event index (`event_index_buckets`). Fixed forever:
/// changing it hides every entry from the lookups of the new count. 1,024
/// keeps a bucket near 100 MB at a billion live ids (a week's window and
/// its grace, ~100 B a row), and groups a speed write of 20,000 ids into
/// about a thousand requests.
pub const INDEX_BUCKETS: u32 = 1024;

/// The event index bucket of `event_id`: FNV-1a (64 bit) of its bytes,
/// modulo [`INDEX_BUCKETS`]. Stable across builds, platforms and processes.
pub fn index_bucket(event_id: &str) -> i32 {
    // Below INDEX_BUCKETS: always fits.
    (signals_core::fnv1a64(event_id.as_bytes()) % u64::from(INDEX_BUCKETS)) as i32
}

/// A u64 (offset, version) as a CQL bigint.
pub fn to_bigint(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Backend(format!("{what} {value} does not fit a CQL bigint")))
}

/// A CQL bigint read from `table` as a u64 (offset, version).
pub fn from_bigint(value: i64, table: &str, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("table {table}: negative {what} {value}")))
}

/// A CQL bigint read from `table` as a log partition.
pub fn partition_from_bigint(value: i64, table: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| {
        StoreError::Corrupt(format!("table {table}: log partition {value} out of range"))
    })
}
