//! The value format every backend stores (redb values, CQL blobs, Redis
//! cache entries), so that bytes mean the same wherever they sit.
//!
//! Every stored value is one format byte followed by the value encoded with
//! postcard (serde, compact, not self-describing):
//!
//! ```text
//! [FORMAT = 1] [postcard bytes …]
//! ```
//!
//! postcard does not carry field names, so a change to a stored type
//! (`SpeedEntry`, `UserRecord`, `IndexEntry`, `SpeedProgress`,
//! `BatchManifest`) must bump [`FORMAT`] and teach [`decode`] the old one.
//! A value with an unknown format byte is reported as corrupt, never guessed.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StoreError;

/// The format byte written in front of every value.
pub const FORMAT: u8 = 1;

/// Encodes `value` behind the format byte.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT])
        .map_err(|e| StoreError::Backend(format!("cannot encode a value: {e}")))
}

/// Decodes a value read from `table` at the key `key` describes.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    table: &str,
    key: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(|e| {
            StoreError::Corrupt(format!("table {table}, {}: undecodable value: {e}", key()))
        }),
        Some((format, _)) => Err(StoreError::Corrupt(format!(
            "table {table}, {}: unknown value format {format} (this build reads format {FORMAT})",
            key()
        ))),
        None => Err(StoreError::Corrupt(format!(
            "table {table}, {}: empty value",
            key()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IndexEntry;

    #[test]
    fn values_round_trip_and_foreign_bytes_are_corrupt_with_context() {
        let entry = IndexEntry {
            user_id: Some("u".into()),
            retracted: true,
        };
        let bytes = encode(&entry).expect("encodes");
        assert_eq!(bytes[0], FORMAT);
        let back: IndexEntry =
            decode(&bytes, "event_index", || "event e1".into()).expect("decodes");
        assert_eq!(back, entry);

        let mut future = bytes.clone();
        future[0] = 9;
        let error = decode::<IndexEntry>(&future, "event_index", || "event e1".into())
            .expect_err("unknown format");
        assert!(
            matches!(&error, StoreError::Corrupt(m) if m.contains("event_index") && m.contains("e1") && m.contains("format 9"))
        );
        assert!(matches!(
            decode::<IndexEntry>(&[], "t", String::new),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode::<IndexEntry>(&[FORMAT, 7], "t", String::new),
            Err(StoreError::Corrupt(_))
        ));
    }
}
