//! Answers kept until they can change (ADR 011).
//!
//! The users asked about most are the heaviest, and their answers cost the
//! most to compute. Between two changes of a user's view (a speed entry,
//! a published version) the values only change at the instants
//! [`UserView::holds_until`] finds, which are usually minutes apart for
//! sliding windows of hours and days. So an answer is kept with the
//! interval `[at, until)` it holds for, and given again for any `at` in it
//! while the view is the same: the same published version and the same
//! generation of the kept speed tail ([`signals_core::SpeedTail::generation`]).

use std::sync::Arc;

use serde_json::Value;
use signals_core::{SignalDefinition, UserView};
use signals_schemas::Millis;
use signals_store::VersionedCache;

/// What the answer was computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewId {
    pub version: Option<u64>,
    pub tail_generation: u64,
}

/// Values and stale signal names of one answer.
pub type Answer = (Vec<Value>, Vec<String>);

struct Kept {
    view: ViewId,
    names: Vec<String>,
    from: Millis,
    until: Millis,
    values: Vec<Value>,
    stale: Vec<String>,
}

/// Each user's latest answer, bounded in (estimated) bytes.
pub struct AnswerCache {
    kept: Option<VersionedCache<Kept>>,
}

impl AnswerCache {
    /// A cache of about `budget` bytes of answers; 0 keeps none.
    pub fn new(budget: usize) -> AnswerCache {
        AnswerCache {
            kept: (budget > 0).then(|| VersionedCache::new(budget)),
        }
    }

    /// `user`'s answer of `definitions` at `at` over `view`, if one is kept
    /// that holds then.
    pub fn get(
        &self,
        user: &str,
        view: ViewId,
        definitions: &[&SignalDefinition],
        at: Millis,
    ) -> Option<Answer> {
        let kept = self.kept.as_ref()?.latest(user)?;
        let holds = kept.view == view
            && kept.from <= at
            && at < kept.until
            && kept.names.len() == definitions.len()
            && kept
                .names
                .iter()
                .zip(definitions)
                .all(|(n, d)| *n == d.name);
        holds.then(|| (kept.values.clone(), kept.stale.clone()))
    }

    /// Evaluates `user`'s `view` at `at`, through the kept answer when one
    /// holds, and keeps a new one otherwise.
    pub fn answer(
        &self,
        user: &str,
        id: ViewId,
        view: impl FnOnce() -> UserView,
        definitions: &[&SignalDefinition],
        at: Millis,
    ) -> Answer {
        if let Some(answer) = self.get(user, id, definitions, at) {
            metrics::counter!("signals_serving_answers_total", "answer" => "kept").increment(1);
            return answer;
        }
        metrics::counter!("signals_serving_answers_total", "answer" => "computed").increment(1);
        let view = view();
        let (values, stale) = view.evaluate(definitions, at);
        let stale: Vec<String> = stale.into_iter().map(|s| s.0).collect();
        if let Some(kept) = &self.kept {
            let until = view.holds_until(definitions, at);
            let weight = 128
                + values.iter().map(weight_of).sum::<usize>()
                + definitions.iter().map(|d| d.name.len() + 24).sum::<usize>();
            let answer = Kept {
                view: id,
                names: definitions.iter().map(|d| d.name.clone()).collect(),
                from: at,
                until,
                values: values.clone(),
                stale: stale.clone(),
            };
            kept.insert(0, user, Arc::new(answer), weight);
        }
        (values, stale)
    }
}

/// About how many bytes a JSON value holds in memory.
fn weight_of(value: &Value) -> usize {
    const NODE: usize = 32;
    NODE + match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(weight_of).sum(),
        Value::Object(fields) => fields.iter().map(|(k, v)| k.len() + weight_of(v)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use signals_core::testing::event;
    use signals_core::{Definitions, SignalSpec, SpeedEntry};
    use signals_schemas::EventType;

    fn definitions() -> Definitions {
        let specs: Vec<SignalSpec> = serde_json::from_value(json!([
            {"name": "views_1h", "events": ["view"], "aggregation": "count", "window": "1h"},
            {"name": "views_24h", "events": ["view"], "aggregation": "count", "window": "24h"},
            {"name": "recent_views", "events": ["view", "click"], "aggregation": "last_distinct", "field": "item_id", "limit": 5}
        ]))
        .expect("specs");
        Definitions::compile(&specs).expect("valid")
    }

    /// A kept answer is given again only for the same view and
    /// definitions, and only before it can change; what it gives equals a
    /// fresh evaluation.
    #[test]
    fn a_kept_answer_holds_for_its_view_and_interval_only() {
        let defs = definitions();
        let all: Vec<&SignalDefinition> = defs.iter().collect();
        let hour = 3_600_000;
        let view = UserView::merge(
            None,
            [SpeedEntry::Event(event(
                "e1",
                EventType::View,
                "i",
                10 * hour,
            ))],
        );
        let id = ViewId {
            version: Some(1),
            tail_generation: 7,
        };
        let cache = AnswerCache::new(1 << 20);
        let at = 10 * hour + 60_000;
        let first = cache.answer("u", id, || view.clone(), &all, at);
        assert_eq!(first, {
            let (values, stale) = view.evaluate(&all, at);
            (values, stale.into_iter().map(|s| s.0).collect())
        });
        let until = view.holds_until(&all, at);
        assert!(until > at + 1);
        assert_eq!(cache.get("u", id, &all, at + 1), Some(first.clone()));
        assert_eq!(cache.get("u", id, &all, until - 1), Some(first.clone()));
        // The view's 1 h window lets the event go at `until` at the latest.
        assert_eq!(cache.get("u", id, &all, until), None);
        assert_eq!(
            cache.get("u", id, &all, at - 1),
            None,
            "before it was computed"
        );
        let newer = ViewId {
            tail_generation: 8,
            ..id
        };
        assert_eq!(cache.get("u", newer, &all, at + 1), None);
        let republished = ViewId {
            version: Some(2),
            ..id
        };
        assert_eq!(cache.get("u", republished, &all, at + 1), None);
        assert_eq!(cache.get("u", id, &all[..2], at + 1), None, "other names");
        assert_eq!(cache.get("v", id, &all, at + 1), None, "another user");
        assert!(AnswerCache::new(0).get("u", id, &all, at).is_none());
    }
}
