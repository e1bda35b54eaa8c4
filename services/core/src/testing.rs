//! Generators and builders for tests of this crate and of the layers above.

use proptest::prelude::*;
use signals_schemas::{Attributes, Event, EventType, Millis};
use smol_str::format_smolstr;

use crate::definition::{Aggregation, EventTypes, Field};
use crate::session::SessionMeasure;

/// A view/click/wishlist event on `item`.
pub fn event(id: &str, event_type: EventType, item: &str, time: Millis) -> Event {
    Event {
        event_id: id.into(),
        user_id: "u".into(),
        event_type,
        item_id: Some(item.into()),
        query: None,
        event_time: time,
        attributes: Attributes::new(),
    }
}

/// A view event carrying `attributes.city`.
pub fn event_with_city(id: &str, city: &str, time: Millis) -> Event {
    let mut e = event(id, EventType::View, "item", time);
    e.attributes.insert("city".to_owned(), city.to_owned());
    e
}

/// One instance of every aggregation kind, over small value domains so that
/// collisions (ties, repeats, add-then-remove) happen often.
pub fn aggregations() -> Vec<Aggregation> {
    let mut add = EventTypes::default();
    add.insert(EventType::WishlistAdd);
    let mut remove = EventTypes::default();
    remove.insert(EventType::WishlistRemove);
    let price = Field::Attribute("price".to_owned());
    vec![
        Aggregation::Count,
        Aggregation::Sum(price.clone()),
        Aggregation::Min(price.clone()),
        Aggregation::Max(price),
        Aggregation::LastDistinct {
            field: Field::ItemId,
            limit: 3,
        },
        Aggregation::Set {
            field: Field::ItemId,
            add,
            remove,
            limit: None,
        },
        Aggregation::TopK {
            field: Field::Attribute("city".to_owned()),
            limit: 2,
        },
        Aggregation::DistinctCount(Field::Query),
        Aggregation::FirstSeen,
        Aggregation::LastSeen,
        Aggregation::Sessions {
            gap: 30,
            measure: SessionMeasure::Count,
        },
        Aggregation::Sessions {
            gap: 30,
            measure: SessionMeasure::Minutes,
        },
        Aggregation::Sessions {
            gap: 30,
            measure: SessionMeasure::Current,
        },
    ]
}

/// An event whose fields come from small domains; ids are unique per index.
pub fn arb_event(index: usize) -> impl Strategy<Value = Event> {
    (
        prop::sample::select(EventType::ALL.to_vec()),
        0u8..6,
        0u8..4,
        0i64..200,
        prop::option::of(0u8..4),
        prop::option::of(0i32..50),
        0u8..3,
    )
        .prop_map(move |(event_type, item, query, time, city, price, user)| {
            let mut attributes = Attributes::new();
            if let Some(c) = city {
                attributes.insert("city".to_owned(), format!("c{c}"));
            }
            if let Some(p) = price {
                attributes.insert("price".to_owned(), p.to_string());
            }
            Event {
                event_id: format_smolstr!("e{index:04}"),
                user_id: format_smolstr!("u{user}"),
                event_type,
                item_id: (event_type != EventType::Search).then(|| format_smolstr!("i{item}")),
                query: (event_type == EventType::Search).then(|| format_smolstr!("q{query}")),
                event_time: time,
                attributes,
            }
        })
}

/// Up to `max` events with distinct ids.
pub fn arb_events(max: usize) -> impl Strategy<Value = Vec<Event>> {
    (0..=max).prop_flat_map(|n| (0..n).map(arb_event).collect::<Vec<_>>())
}

/// Definitions compiled from `[[signals]]` tables in TOML, as a config
/// file declares them.
#[cfg(test)]
pub fn compile_definitions(toml_text: &str) -> crate::Definitions {
    #[derive(serde::Deserialize)]
    struct File {
        signals: Vec<crate::SignalSpec>,
    }
    let file: File = toml::from_str(toml_text).expect("test definitions parse");
    crate::Definitions::compile(&file.signals).expect("test definitions compile")
}
