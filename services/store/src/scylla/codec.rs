//! Values and keys as the CQL tables hold them.
//!
//! Blobs are the store's value format ([`crate::codec`]), byte for byte
//! the embedded store's.
//!
//! Log partitions (u32), offsets and versions (u64) are CQL `bigint`s.

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
