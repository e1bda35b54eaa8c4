//! The records of the `signals.segments` topic: one transition of the
//! segment feed each, schema `segment_change.avsc`, in Avro's single-object
//! encoding (the schema's Rabin fingerprint identifies it without a
//! registry).

use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, GenericSingleObjectWriter, Schema};

use crate::Millis;

/// `schemas/segment_change.avsc`.
pub const SCHEMA_TEXT: &str = include_str!("../segment_change.avsc");

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::parse_str(SCHEMA_TEXT).expect("segment_change.avsc is a valid schema (tested)")
});

/// One transition, as on the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentChange {
    pub user_id: String,
    pub segment: String,
    /// `true`: entered; `false`: left.
    pub entered: bool,
    pub at: Millis,
    pub cursor: u64,
}

/// Why bytes are not a segment change.
#[derive(Debug, thiserror::Error)]
#[error("not a segment change: {0}")]
pub struct SegmentChangeError(String);

/// The single-object encoding of `change`.
pub fn encode(change: &SegmentChange) -> Result<Vec<u8>, SegmentChangeError> {
    let value = Value::Record(vec![
        ("user_id".into(), Value::String(change.user_id.clone())),
        ("segment".into(), Value::String(change.segment.clone())),
        (
            "change".into(),
            if change.entered {
                Value::Enum(0, "entered".into())
            } else {
                Value::Enum(1, "left".into())
            },
        ),
        ("at".into(), Value::TimestampMillis(change.at)),
        (
            "cursor".into(),
            Value::Long(i64::try_from(change.cursor).map_err(|_| {
                SegmentChangeError(format!("cursor {} is out of range", change.cursor))
            })?),
        ),
    ]);
    let mut writer = GenericSingleObjectWriter::new_with_capacity(&SCHEMA, 128)
        .map_err(|e| SegmentChangeError(e.to_string()))?;
    let mut bytes = Vec::with_capacity(128);
    writer
        .write_value(value, &mut bytes)
        .map_err(|e| SegmentChangeError(e.to_string()))?;
    Ok(bytes)
}

/// Reads what [`encode`] wrote.
pub fn decode(mut bytes: &[u8]) -> Result<SegmentChange, SegmentChangeError> {
    let reader = GenericSingleObjectReader::builder()
        .schema(SCHEMA.clone())
        .build()
        .map_err(|e| SegmentChangeError(e.to_string()))?;
    let value = reader
        .read_value(&mut bytes)
        .map_err(|e| SegmentChangeError(e.to_string()))?;
    let Value::Record(fields) = value else {
        return Err(SegmentChangeError("not a record".into()));
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| SegmentChangeError(format!("no field `{name}`")))
    };
    let text = |name: &str| match field(name)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(SegmentChangeError(format!("`{name}` is {other:?}"))),
    };
    Ok(SegmentChange {
        user_id: text("user_id")?,
        segment: text("segment")?,
        entered: match field("change")? {
            Value::Enum(0, _) => true,
            Value::Enum(1, _) => false,
            other => return Err(SegmentChangeError(format!("`change` is {other:?}"))),
        },
        at: match field("at")? {
            Value::TimestampMillis(t) | Value::Long(t) => *t,
            other => return Err(SegmentChangeError(format!("`at` is {other:?}"))),
        },
        cursor: match field("cursor")? {
            Value::Long(c) => {
                u64::try_from(*c).map_err(|_| SegmentChangeError(format!("negative cursor {c}")))?
            }
            other => return Err(SegmentChangeError(format!("`cursor` is {other:?}"))),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn changes_round_trip(user in "[a-z0-9-]{1,20}", segment in "[a-z_]{1,20}", entered: bool,
                              at in 0i64..4_000_000_000_000, cursor in 1u64..u64::MAX / 2) {
            let change = SegmentChange { user_id: user, segment, entered, at, cursor };
            let bytes = encode(&change).expect("encodes");
            prop_assert_eq!(&bytes[..2], &[0xC3, 0x01]);
            prop_assert_eq!(decode(&bytes).expect("decodes"), change);
        }
    }

    #[test]
    fn foreign_bytes_are_refused() {
        assert!(decode(b"\x00\x00\x00\x00\x02hello").is_err());
    }
}
