//! Key layout of the embedded store's tables.
//!
//! Every key is plain bytes compared lexicographically by redb, so all
//! integers are big-endian and every variable-length part that is followed
//! by more key is length-prefixed (prefix-free):
//!
//! | table | key |
//! | --- | --- |
//! | `speed` | `u16 len(user) ‖ user ‖ u32 partition ‖ u64 offset` (of the row's last entry) |
//! | `batch` | `u64 version ‖ user` |
//! | `index_log` | `u64 write ‖ u8 log2(buckets) ‖ u8 bucket` |
//! | `index_writes` | `u64 write` |
//! | `meta` | a fixed name, see [`super::tables`] |
//!
//! One user's speed rows are thus one contiguous range in (partition,
//! offset) order, one version's records are one contiguous range, and one
//! write's index rows are one contiguous range.

use signals_core::{Offset, Partition};

use crate::StoreError;

/// The `index_log` key of bucket `bucket` of write `write`, whose index
/// updates were split into `1 << buckets_log2` buckets.
pub fn index_log_key(write: u64, buckets_log2: u8, bucket: u8) -> [u8; 10] {
    let mut key = [0; 10];
    key[..8].copy_from_slice(&write.to_be_bytes());
    key[8] = buckets_log2;
    key[9] = bucket;
    key
}

/// The write and the bucket count (log2) of an `index_log` key.
pub fn index_log_parts(key: &[u8]) -> Option<(u64, u8)> {
    let key: &[u8; 10] = key.try_into().ok()?;
    let (write, rest) = key.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*write), rest[0]))
}

/// The inclusive `index_log` key range of every row of `write`.
pub fn index_log_range(write: u64) -> ([u8; 10], [u8; 10]) {
    (
        index_log_key(write, 0, 0),
        index_log_key(write, u8::MAX, u8::MAX),
    )
}

/// Bytes after the user part of a speed key: partition and offset.
const POSITION_LEN: usize = 4 + 8;

/// The speed-table prefix shared by all entries of `user`.
pub fn user_prefix(user: &str) -> Result<Vec<u8>, StoreError> {
    let len = u16::try_from(user.len()).map_err(|_| {
        StoreError::Backend(format!(
            "user id of {} bytes is longer than the embedded store's limit of {} bytes",
            user.len(),
            u16::MAX
        ))
    })?;
    let mut key = Vec::with_capacity(2 + user.len() + POSITION_LEN);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(user.as_bytes());
    Ok(key)
}

/// The speed key of `user`'s entry at (`partition`, `offset`).
pub fn speed_key(user: &str, partition: Partition, offset: Offset) -> Result<Vec<u8>, StoreError> {
    let mut key = user_prefix(user)?;
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(&offset.to_be_bytes());
    Ok(key)
}

/// The inclusive key range holding every speed entry of `user`.
pub fn user_range(user: &str) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let prefix = user_prefix(user)?;
    let mut start = prefix.clone();
    start.extend_from_slice(&[0; POSITION_LEN]);
    let mut end = prefix;
    end.extend_from_slice(&[0xff; POSITION_LEN]);
    Ok((start, end))
}

/// The (partition, offset) at the end of a speed key, without decoding the user.
pub fn speed_position(key: &[u8]) -> Option<(Partition, Offset)> {
    let split = key.len().checked_sub(POSITION_LEN)?;
    let (partition, offset) = key[split..].split_at(4);
    Some((
        Partition::from_be_bytes(partition.try_into().ok()?),
        Offset::from_be_bytes(offset.try_into().ok()?),
    ))
}

/// The user, partition and offset of a speed key.
pub fn decode_speed_key(key: &[u8]) -> Option<(&str, Partition, Offset)> {
    let len = u16::from_be_bytes(key.get(..2)?.try_into().ok()?) as usize;
    if key.len() != 2 + len + POSITION_LEN {
        return None;
    }
    let user = std::str::from_utf8(&key[2..2 + len]).ok()?;
    let (partition, offset) = speed_position(key)?;
    Some((user, partition, offset))
}

/// The batch key of `user`'s record in `version`.
pub fn batch_key(version: u64, user: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + user.len());
    key.extend_from_slice(&version.to_be_bytes());
    key.extend_from_slice(user.as_bytes());
    key
}

/// The exclusive upper bound of every batch key of versions below `version`.
pub fn versions_below(version: u64) -> [u8; 8] {
    version.to_be_bytes()
}

/// A readable rendering of a key for error messages.
pub fn describe_speed_key(key: &[u8]) -> String {
    match decode_speed_key(key) {
        Some((user, partition, offset)) => {
            format!("user {user:?} partition {partition} offset {offset}")
        }
        None => format!("malformed key {key:02x?}"),
    }
}

/// A readable rendering of a batch key for error messages.
pub fn describe_batch_key(key: &[u8]) -> String {
    match key.split_at_checked(8) {
        Some((version, user)) => format!(
            "version {} user {:?}",
            u64::from_be_bytes(version.try_into().unwrap_or_default()),
            String::from_utf8_lossy(user)
        ),
        None => format!("malformed key {key:02x?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_entries_sort_by_partition_then_offset_and_never_interleave() {
        let mut keys = [
            speed_key("ab", 1, 0),
            speed_key("a", 2, 5),
            speed_key("a", 1, 300),
            speed_key("a", 1, 7),
            speed_key("b", 0, 0),
            speed_key("", 9, 9),
        ]
        .map(|k| k.expect("short user ids encode"));
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| decode_speed_key(k).expect("decodes"))
            .collect();
        // Length-prefixed: "a" (len 1) sorts apart from "ab" (len 2).
        assert_eq!(
            decoded,
            [
                ("", 9, 9),
                ("a", 1, 7),
                ("a", 1, 300),
                ("a", 2, 5),
                ("b", 0, 0),
                ("ab", 1, 0)
            ]
        );
        let (start, end) = user_range("a").expect("encodes");
        let in_range = keys
            .iter()
            .filter(|k| (start.as_slice()..=end.as_slice()).contains(&k.as_slice()));
        assert_eq!(in_range.count(), 3);
    }

    #[test]
    fn oversized_user_ids_are_refused_and_positions_read_back() {
        assert!(speed_key(&"x".repeat(70_000), 0, 0).is_err());
        let key = speed_key("u", u32::MAX, u64::MAX).expect("encodes");
        assert_eq!(speed_position(&key), Some((u32::MAX, u64::MAX)));
        assert_eq!(decode_speed_key(&key[1..]), None);
        assert!(batch_key(1, "zz").as_slice() < versions_below(2).as_slice());
        assert!(batch_key(2, "").as_slice() >= versions_below(2).as_slice());
    }
}
