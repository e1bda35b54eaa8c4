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

/// Mostly plain ids; sometimes empty, blank, with a control character, or
/// long enough to break a limit.
fn text_near_the_rules() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9-]{1,12}",
        1 => Just(String::new()),
        1 => Just("  ".to_owned()),
        1 => Just("a\u{7}b".to_owned()),
        1 => Just("é\u{85}".to_owned()),
        1 => Just("a\u{7f}".to_owned()),
        1 => "é[a-z]{0,3}",
        1 => (250usize..1_100).prop_map(|n| "x".repeat(n)),
    ]
}

/// Events valid or not, near the edges of the log's rules: for the paths
/// that must refuse exactly what the rules refuse.
pub fn arb_event_near_the_rules() -> impl Strategy<Value = Event> {
    (
        (text_near_the_rules(), text_near_the_rules(), 0usize..5),
        (
            proptest::option::of(text_near_the_rules()),
            proptest::option::of(text_near_the_rules()),
        ),
        prop_oneof![
            8 => MIN_EVENT_TIME..MAX_EVENT_TIME,
            1 => any::<i64>(),
            1 => Just(MAX_EVENT_TIME),
        ],
        proptest::collection::btree_map(text_near_the_rules(), text_near_the_rules(), 0..4),
        0usize..70,
    )
        .prop_map(
            |((event_id, user_id, kind), (item_id, query), event_time, mut attributes, many)| {
                if many > 62 {
                    for i in 0..many {
                        attributes.insert(format!("k{i}"), "v".to_owned());
                    }
                }
                Event {
                    event_id: event_id.into(),
                    user_id: user_id.into(),
                    event_type: EventType::ALL[kind],
                    item_id: item_id.map(Into::into),
                    query: query.map(Into::into),
                    event_time,
                    attributes: attributes.into(),
                }
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
