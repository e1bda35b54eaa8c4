//! Bot and abuse filtering: a batch correction the stream cannot make,
//! because it needs a user's whole minute in hand.
//!
//! The rule: a user's events are grouped by the minute of their
//! `event_time` (UTC, `[m, m + 60 s)`); a minute with more than
//! `max_events_per_minute` events is bot traffic and none of its events
//! count. Applied after deduplication, retractions and deletions, so the
//! result depends only on the set of events (not their order), and applying
//! it twice removes nothing more.

use std::collections::HashMap;

use serde::Serialize;
use signals_schemas::Millis;

use crate::user_events::UserEvents;

const MINUTE: Millis = 60_000;

/// The configured rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BotFilter {
    pub max_events_per_minute: u32,
}

impl BotFilter {
    /// Removes `events` of over-limit minutes; returns how many it removed.
    pub fn apply(&self, events: &mut UserEvents) -> u64 {
        let limit = self.max_events_per_minute as usize;
        if events.len() <= limit {
            return 0;
        }
        let mut per_minute: HashMap<Millis, usize> = HashMap::new();
        for time in events.times() {
            *per_minute.entry(time.div_euclid(MINUTE)).or_default() += 1;
        }
        events.retain_times(|time| per_minute[&time.div_euclid(MINUTE)] <= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use signals_core::testing::event;
    use signals_schemas::{Event, EventType};

    fn at(id: usize, time: Millis) -> Event {
        event(&format!("e{id}"), EventType::View, "i", time)
    }

    /// What `filter` removes of `events` (packed as the batch holds them),
    /// and the events it keeps.
    fn filtered(filter: BotFilter, events: &[Event]) -> (u64, Vec<Event>) {
        let mut packed = UserEvents::of(events).expect("packs");
        let removed = filter.apply(&mut packed);
        (removed, packed.decode().expect("unpacks"))
    }

    #[test]
    fn only_over_limit_minutes_go() {
        let filter = BotFilter {
            max_events_per_minute: 2,
        };
        // Minute 0 holds 3 events (over), minute 1 holds 2 (at the limit).
        let events = vec![
            at(1, 0),
            at(2, 59_999),
            at(3, 30_000),
            at(4, 60_000),
            at(5, 119_999),
        ];
        let (removed, events) = filtered(filter, &events);
        assert_eq!(removed, 3);
        let kept: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(kept, vec!["e4", "e5"]);
    }

    proptest! {
        #[test]
        fn the_rule_depends_on_the_set_only_and_is_idempotent(
            times in prop::collection::vec(0i64..600_000, 0..80),
            limit in 0u32..6,
            seed in any::<u64>(),
        ) {
            let filter = BotFilter { max_events_per_minute: limit };
            let events: Vec<Event> = times.iter().enumerate().map(|(i, &t)| at(i, t)).collect();
            let (removed, forward) = filtered(filter, &events);
            prop_assert_eq!(removed as usize + forward.len(), events.len());

            let mut shuffled = events.clone();
            let n = shuffled.len();
            if n > 1 {
                for i in 0..n {
                    shuffled.swap(i, (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize);
                }
            }
            let (_, shuffled) = filtered(filter, &shuffled);
            let ids = |v: &[Event]| {
                let mut ids: Vec<String> = v.iter().map(|e| e.event_id.to_string()).collect();
                ids.sort();
                ids
            };
            prop_assert_eq!(ids(&forward), ids(&shuffled));

            prop_assert_eq!(filtered(filter, &forward).0, 0);

            // Every removed event sat in a minute over the limit.
            for event in &events {
                let minute = event.event_time.div_euclid(MINUTE);
                let in_minute = events.iter().filter(|e| e.event_time.div_euclid(MINUTE) == minute).count();
                let kept = forward.iter().any(|e| e.event_id == event.event_id);
                prop_assert_eq!(kept, in_minute <= limit as usize);
            }
        }
    }
}
