//! Generators of valid records, for property tests here and in other crates
//! (feature `testing`).

use proptest::prelude::*;

use crate::event::{Event, EventType, LogRecord, RecordBody, Retraction, UserDeletion};
use crate::rules::{MAX_EVENT_TIME, MIN_EVENT_TIME};

/// Ids as clients send them, plus any printable Unicode.
fn id() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9_.:-]{1,24}", "\\PC{1,12}"]
}

/// Any valid event: every type, optional fields present or not where the
/// type allows, times over the whole accepted range.
pub fn arb_event() -> impl Strategy<Value = Event> {
    (
        (id(), id(), prop::sample::select(EventType::ALL.to_vec())),
        (id(), any::<bool>(), "\\PC{0,12}[a-z]", any::<bool>()),
        MIN_EVENT_TIME..MAX_EVENT_TIME,
        prop::collection::btree_map("\\PC{1,8}", "\\PC{0,12}", 0..4),
    )
        .prop_map(
            |(
                (event_id, user_id, event_type),
                (item, has_item, query, has_query),
                event_time,
                attributes,
            )| Event {
                event_id: event_id.into(),
                user_id: user_id.into(),
                event_type,
                item_id: (event_type.requires_item() || has_item).then(|| item.into()),
                query: (event_type.requires_query() || has_query).then(|| query.into()),
                event_time,
                attributes: attributes.into(),
            },
        )
}

/// Any valid log record.
pub fn arb_log_record() -> impl Strategy<Value = LogRecord> {
    let body = prop_oneof![
        3 => arb_event().prop_map(RecordBody::Event),
        1 => (prop::collection::vec(id(), 1..5), "\\PC{0,20}").prop_map(|(event_ids, reason)| {
            RecordBody::Retraction(Retraction { event_ids, reason })
        }),
        1 => (id(), "\\PC{0,20}").prop_map(|(user_id, reason)| RecordBody::UserDeletion(UserDeletion {
            user_id,
            reason
        })),
    ];
    (any::<i64>(), body).prop_map(|(accepted_at, body)| LogRecord { accepted_at, body })
}
