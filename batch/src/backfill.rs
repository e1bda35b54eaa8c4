//! Backfills: a new version made from the published one, with part of it
//! recomputed from the log the published version covers.
//!
//! * `range`: every user's raw events with `event_time` in `[from, to)` are
//!   replaced by the ones the log holds now (with today's corrections: bot
//!   rule, retractions, deletions). Needs `from` at or after the published
//!   version's horizon: older events are pre-aggregated, not raw.
//! * `signals`: the pre-aggregated state of these lifetime or session signals is
//!   recomputed with the definitions in force (how a new or changed lifetime
//!   signal becomes exact without a full run). A sliding-window signal needs
//!   nothing recomputed as long as its window lies within the raw events a
//!   record keeps; a wider one needs a full `batch run`.
//!
//! The new version covers the same log position as the published one, so
//! serving goes on merging the same speed entries after it.

use std::collections::BTreeMap;

use signals_core::{newest_first, BaseStates, SignalDefinition, UserRecord, Window};
use signals_schemas::Millis;

use crate::recompute::UserOutcome;

pub use signals_core::operations::Backfill;

/// Why a backfill cannot run as asked.
pub fn check(
    backfill: &Backfill,
    signals: &[&SignalDefinition],
    horizon: Millis,
    retention: Millis,
    now: Millis,
) -> Result<(), String> {
    if backfill.range.is_none() && backfill.signals.is_empty() {
        return Err("a backfill needs a range (--from and --to) or at least one --signal".into());
    }
    if let Some((from, to)) = backfill.range {
        if from >= to {
            return Err(format!(
                "the range is empty: --from {} is not before --to {}",
                iso(from),
                iso(to)
            ));
        }
        if from < horizon {
            return Err(format!(
                "--from {} is before the published version's horizon {}: older events are pre-aggregated; run `signals batch run` to recompute everything",
                iso(from),
                iso(horizon)
            ));
        }
    }
    for signal in signals {
        if let Window::Sliding(width) = signal.window {
            if now - retention - width < horizon {
                return Err(format!(
                    "signal {}: its window of {} ms reaches before the published version's horizon {}; run `signals batch run` to rebuild the records with it",
                    signal.name,
                    width,
                    iso(horizon)
                ));
            }
        }
    }
    Ok(())
}

/// A user's record of the new version.
pub fn merge(
    previous: Option<&UserRecord>,
    outcome: UserOutcome,
    backfill: &Backfill,
    signals: &[&SignalDefinition],
    horizon: Millis,
) -> Result<UserRecord, postcard::Error> {
    let events = match outcome {
        UserOutcome::Deleted => return Ok(UserRecord::erased(horizon)),
        UserOutcome::Events(events) => events.decode()?,
    };
    let mut record = previous.cloned().unwrap_or_else(|| UserRecord {
        horizon,
        ..UserRecord::default()
    });
    if let Some((from, to)) = backfill.range {
        let in_range = |time: Millis| time >= from && time < to;
        record.events.retain(|e| !in_range(e.event_time));
        record.events.extend(
            events
                .iter()
                .filter(|e| in_range(e.event_time) && e.event_time >= horizon)
                .cloned(),
        );
        record.events.sort_unstable_by(newest_first);
    }
    // Lifetime signals and sessions (whose last session before the horizon
    // can still reach the window) keep a state of the events before it;
    // with no old events, none (as `UserRecord::compact`).
    let mut base = BaseStates::new(signals.iter().copied());
    for event in events.iter().filter(|e| e.event_time < horizon) {
        base.add(event);
    }
    for signal in signals.iter().filter(|s| s.keeps_base_state()) {
        record.base.remove(&signal.name);
    }
    record.base.extend(base.finish());
    Ok(record)
}

/// The manifest's definitions after a backfill of `signals`.
pub fn definitions_after(
    previous: &BTreeMap<String, String>,
    signals: &[&SignalDefinition],
) -> BTreeMap<String, String> {
    let mut definitions = previous.clone();
    for signal in signals {
        definitions.insert(signal.name.clone(), signal.fingerprint());
    }
    definitions
}

fn iso(millis: Millis) -> String {
    signals_schemas::rules::format_time(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signals_core::testing::event;
    use signals_core::{Definitions, UserView};
    use signals_schemas::EventType;

    use crate::user_events::UserEvents;

    #[test]
    fn a_range_backfill_of_unchanged_history_changes_nothing() {
        let definitions = Definitions::default();
        let events: Vec<_> = (0..40)
            .map(|i| {
                event(
                    &format!("e{i}"),
                    EventType::View,
                    &format!("i{}", i % 7),
                    i * 3_600_000,
                )
            })
            .collect();
        let horizon = 10 * 3_600_000;
        let published = UserRecord::compact(&definitions, events.clone(), horizon);
        let backfill = Backfill {
            range: Some((horizon, 30 * 3_600_000)),
            signals: Vec::new(),
        };
        let all: Vec<&SignalDefinition> = definitions.iter().collect();
        let merged =
            merge(Some(&published), packed(events), &backfill, &all, horizon).expect("unpacks");
        assert_eq!(merged, published);
    }

    #[test]
    fn a_range_backfill_replaces_only_its_range() {
        let definitions = Definitions::default();
        let hour = 3_600_000;
        let e = |id: &str, t| event(id, EventType::View, id, t * hour);
        let published = UserRecord::compact(&definitions, vec![e("a", 1), e("b", 2), e("c", 3)], 0);
        let backfill = Backfill {
            range: Some((2 * hour, 3 * hour)),
            signals: Vec::new(),
        };
        // The log now says: b is gone (say, bot traffic), d is in the range.
        let merged = merge(
            Some(&published),
            packed(vec![e("a", 1), e("c", 3), e("d", 2)]),
            &backfill,
            &[],
            0,
        )
        .expect("unpacks");
        let ids: Vec<&str> = merged.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, vec!["c", "d", "a"]);
    }

    /// What the recompute hands over of `events`.
    fn packed(events: Vec<signals_schemas::Event>) -> UserOutcome {
        UserOutcome::Events(UserEvents::of(&events).expect("packs"))
    }

    /// Definitions from JSON specs, as the configuration file has them.
    fn definitions(specs: serde_json::Value) -> Definitions {
        let specs: Vec<signals_core::definition::SignalSpec> =
            serde_json::from_value(specs).expect("specs");
        Definitions::compile(&specs).expect("valid")
    }

    #[test]
    fn a_signal_backfill_makes_a_new_lifetime_signal_exact() {
        let count =
            serde_json::json!({"name": "views_ever", "events": ["view"], "aggregation": "count"});
        let first = serde_json::json!({"name": "first_view", "events": ["view"], "aggregation": "first_seen"});
        let old = definitions(serde_json::json!([count.clone()]));
        let hour = 3_600_000;
        let events: Vec<_> = (0..6)
            .map(|i| event(&format!("e{i}"), EventType::View, "i", i * hour))
            .collect();
        let horizon = 4 * hour;
        let published = UserRecord::compact(&old, events.clone(), horizon);

        // A second lifetime signal is added: stale until backfilled.
        let now = definitions(serde_json::json!([count, first]));
        let all: Vec<&SignalDefinition> = now.iter().collect();
        let at = 10 * hour;
        let view = UserView::merge(Some(std::sync::Arc::new(published.clone())), []);
        assert_eq!(view.evaluate(&all, at).1.len(), 1, "first_view is stale");

        let added = [now.get("first_view").expect("defined")];
        let backfill = Backfill {
            range: None,
            signals: vec!["first_view".into()],
        };
        let merged = merge(
            Some(&published),
            packed(events.clone()),
            &backfill,
            &added,
            horizon,
        )
        .expect("unpacks");
        let (values, stale) =
            UserView::merge(Some(std::sync::Arc::new(merged)), []).evaluate(&all, at);
        assert!(stale.is_empty());
        let full = UserRecord::compact(&now, events, horizon);
        let (expected, _) = UserView::merge(Some(std::sync::Arc::new(full)), []).evaluate(&all, at);
        assert_eq!(values, expected);
    }

    #[test]
    fn a_signal_backfill_of_a_session_signal_keeps_the_session_crossing_the_horizon() {
        let count =
            serde_json::json!({"name": "views_ever", "events": ["view"], "aggregation": "count"});
        let sessions = serde_json::json!({"name": "sessions", "aggregation": "session_count", "gap": "30m", "window": "1h"});
        let old = definitions(serde_json::json!([count.clone()]));
        let minute = 60_000;
        // One session: a view every 20 minutes for 5 hours, across the horizon.
        let events: Vec<_> = (0..16)
            .map(|i| event(&format!("e{i:02}"), EventType::View, "i", i * 20 * minute))
            .collect();
        let horizon = 4 * 60 * minute;
        let published = UserRecord::compact(&old, events.clone(), horizon);

        let now = definitions(serde_json::json!([count, sessions]));
        let all: Vec<&SignalDefinition> = now.iter().collect();
        let added = [now.get("sessions").expect("defined")];
        let backfill = Backfill {
            range: None,
            signals: vec!["sessions".into()],
        };
        let merged = merge(
            Some(&published),
            packed(events.clone()),
            &backfill,
            &added,
            horizon,
        )
        .expect("unpacks");
        let at = 5 * 60 * minute;
        let (values, stale) =
            UserView::merge(Some(std::sync::Arc::new(merged)), []).evaluate(&all, at);
        assert!(stale.is_empty(), "{stale:?}");
        let full = UserRecord::compact(&now, events, horizon);
        let (expected, _) = UserView::merge(Some(std::sync::Arc::new(full)), []).evaluate(&all, at);
        assert_eq!(values, expected);
        // The one session started at 0, before the horizon: none starts in
        // [4h, 5h), although the raw events kept begin a run at 4h.
        assert_eq!(values[1], serde_json::json!(0));
    }
}
