//! Generators of valid records, for property tests here and in other crates.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::event::{Event, EventType, LogRecord, RecordBody, Retraction, UserDeletion};
use crate::json::{MAX_EVENT_TIME, MIN_EVENT_TIME};

fn id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.:-]{1,24}"
}

/// Any valid event.
pub fn arb_event() -> impl Strategy<Value = Event> {
    (
        id(),
        id(),
        prop::sample::select(EventType::ALL.to_vec()),
        id(),
        "[a-z ]{0,10}[a-z]",
        MIN_EVENT_TIME..MAX_EVENT_TIME,
        prop::collection::btree_map("[a-z]{1,8}", "\\PC{0,12}", 0..4),
    )
        .prop_map(
            |(event_id, user_id, event_type, item, query, event_time, attributes)| Event {
                event_id,
                user_id,
                event_type,
                item_id: (event_type != EventType::Search).then_some(item),
                query: (event_type == EventType::Search).then_some(query),
                event_time,
                attributes: attributes.into_iter().collect::<BTreeMap<_, _>>(),
            },
        )
}

/// Any valid log record.
pub fn arb_log_record() -> impl Strategy<Value = LogRecord> {
    let body = prop_oneof![
        arb_event().prop_map(RecordBody::Event),
        (prop::collection::vec(id(), 1..5), "\\PC{0,20}").prop_map(|(event_ids, reason)| {
            RecordBody::Retraction(Retraction { event_ids, reason })
        }),
        (id(), "\\PC{0,20}").prop_map(|(user_id, reason)| RecordBody::UserDeletion(UserDeletion {
            user_id,
            reason
        })),
    ];
    (0i64..MAX_EVENT_TIME, body).prop_map(|(accepted_at, body)| LogRecord { accepted_at, body })
}
