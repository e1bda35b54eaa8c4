//! Answers kept until they can change (ADR 011).
//!
//! The users asked about most are the heaviest, and their answers cost the
//! most to compute. Between two changes of a user's view (a speed entry,
//! a published version) a signal's value only changes at the instants
//! [`UserView::holds_until`] finds. So each value is kept with the interval
//! `[at, until)` it holds for, and given again for any `at` in it while the
//! view is the same: the same published version and the same generation of
//! the kept speed tail ([`signals_core::SpeedTail::generation`]).
//!
//! Values are kept one by one, not as whole answers: a heavy user's count
//! over the last hour changes every few milliseconds, while their wishlist
//! and recent items (tens of kilobytes, the contract bounds no wishlist)
//! change only with the view. Each value is kept encoded, so an answer is
//! copied out, never re-encoded.

use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
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

/// One signal's value at some instant, kept as its JSON encoding: half the
/// memory of the value itself, and nothing to encode again.
#[derive(Debug)]
pub struct SignalValue {
    name: String,
    encoded: Box<RawValue>,
    /// A lifetime signal whose definition changed after the batch ran.
    stale: bool,
}

impl SignalValue {
    fn new(name: &str, encoded: Box<RawValue>, stale: bool) -> SignalValue {
        SignalValue {
            name: name.to_owned(),
            encoded,
            stale,
        }
    }

    /// About how many bytes it holds in memory.
    fn weight(&self) -> usize {
        64 + self.name.len() + self.encoded.get().len()
    }
}

/// Encodings made by one encoder are equal exactly when the values are.
impl PartialEq for SignalValue {
    fn eq(&self, other: &SignalValue) -> bool {
        (&self.name, self.encoded.get(), self.stale)
            == (&other.name, other.encoded.get(), other.stale)
    }
}

/// One evaluation of some signals; serializes as the response's `signals`
/// object (name → value), in the order the definitions were named. Not
/// sorted by name: in a multi-get, that sort (a memory miss per name
/// compared) cost a tenth of the time.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Without repeats.
    signals: Vec<Arc<SignalValue>>,
}

impl Answer {
    /// The value of the signal `name`, if it was asked for (decoded: for
    /// the few values segment rules read).
    pub fn get(&self, name: &str) -> Option<Value> {
        let value = self.signals.iter().find(|s| s.name == name)?;
        serde_json::from_str(value.encoded.get()).ok()
    }

    /// About how many bytes its JSON takes.
    pub fn encoded_len(&self) -> usize {
        self.signals
            .iter()
            .map(|s| s.name.len() + s.encoded.get().len() + 4)
            .sum()
    }

    /// Lifetime signals whose definition changed after the batch ran.
    pub fn stale(&self) -> Vec<String> {
        self.signals
            .iter()
            .filter(|s| s.stale)
            .map(|s| s.name.clone())
            .collect()
    }
}

impl Serialize for Answer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.signals.len()))?;
        for signal in &self.signals {
            map.serialize_entry(&signal.name, &*signal.encoded)?;
        }
        map.end()
    }
}

/// A value and the instants `[from, until)` it holds for.
#[derive(Clone)]
struct Kept {
    from: Millis,
    until: Millis,
    value: Arc<SignalValue>,
}

/// One user's kept values, all over one view.
struct KeptView {
    view: ViewId,
    /// By [`SignalDefinition::index`]: a multi-get looks up every signal of
    /// every user, and finding them by name (a memory miss per name
    /// compared) was a fifth of its time.
    values: Vec<Option<Kept>>,
}

impl KeptView {
    fn holding(&self, definition: &SignalDefinition, at: Millis) -> Option<Arc<SignalValue>> {
        let kept = self.values.get(definition.index)?.as_ref()?;
        (kept.from <= at && at < kept.until).then(|| kept.value.clone())
    }

    fn weight(&self) -> usize {
        64 + self
            .values
            .iter()
            .map(|k| 32 + k.as_ref().map_or(0, |k| k.value.weight()))
            .sum::<usize>()
    }
}

/// Each user's kept values, bounded in (estimated) bytes.
pub struct AnswerCache {
    kept: Option<VersionedCache<KeptView>>,
}

impl AnswerCache {
    /// A cache of about `budget` bytes of values; 0 keeps none.
    pub fn new(budget: usize) -> AnswerCache {
        AnswerCache {
            kept: (budget > 0).then(|| VersionedCache::new(budget)),
        }
    }

    /// Evaluates `definitions` for `user` at `at` over `view`: the values
    /// kept for that view that hold at `at` are given again, the others are
    /// evaluated (building the view only then) and kept. Every call names
    /// definitions of one and the same [`signals_core::Definitions`].
    pub fn answer(
        &self,
        user: &str,
        id: ViewId,
        view: impl FnOnce() -> UserView,
        definitions: &[&SignalDefinition],
        at: Millis,
    ) -> Answer {
        let kept = self
            .kept
            .as_ref()
            .and_then(|cache| cache.latest(user))
            .filter(|kept| kept.view == id);
        let mut signals = Vec::with_capacity(definitions.len());
        let mut missing = Vec::new();
        for definition in definitions {
            let value = kept.as_ref().and_then(|k| k.holding(definition, at));
            if value.is_none() {
                missing.push(*definition);
            }
            signals.push(value);
        }
        metrics::counter!("signals_serving_values_total", "value" => "kept")
            .increment((definitions.len() - missing.len()) as u64);
        if missing.is_empty() {
            return Answer {
                signals: signals.into_iter().flatten().collect(),
            };
        }
        metrics::counter!("signals_serving_values_total", "value" => "computed")
            .increment(missing.len() as u64);
        let view = view();
        let (values, stale) = view.evaluate_encoded(&missing, at);
        let fresh: Vec<Arc<SignalValue>> = missing
            .iter()
            .zip(values)
            .map(|(definition, value)| {
                let is_stale = stale.iter().any(|s| s.0 == definition.name);
                Arc::new(SignalValue::new(&definition.name, value, is_stale))
            })
            .collect();
        let mut computed = fresh.iter();
        let signals = signals
            .into_iter()
            .filter_map(|kept| kept.or_else(|| computed.next().cloned()))
            .collect();
        if let Some(cache) = &self.kept {
            let until = view.holds_until_each(&missing, at);
            // Values of other signals kept for the same view stay kept.
            let mut values = kept.map(|k| k.values.clone()).unwrap_or_default();
            for ((definition, value), until) in missing.iter().zip(fresh).zip(until) {
                if values.len() <= definition.index {
                    values.resize(definition.index + 1, None);
                }
                values[definition.index] = Some(Kept {
                    from: at,
                    until,
                    value,
                });
            }
            let kept = KeptView { view: id, values };
            let weight = kept.weight();
            cache.insert(0, user, Arc::new(kept), weight);
        }
        Answer { signals }
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

    /// The answer as evaluated from scratch.
    fn evaluated(view: &UserView, definitions: &[&SignalDefinition], at: Millis) -> Answer {
        let (values, stale) = view.evaluate(definitions, at);
        let signals = definitions
            .iter()
            .zip(values)
            .map(|(d, v)| {
                let is_stale = stale.iter().any(|s| s.0 == d.name);
                // Through `Value`s: the encoded path must write the same.
                let encoded = serde_json::value::to_raw_value(&v).expect("encodes");
                Arc::new(SignalValue::new(&d.name, encoded, is_stale))
            })
            .collect();
        Answer { signals }
    }

    fn kept_value(answer: &Answer, name: &str) -> Arc<SignalValue> {
        let i = answer
            .signals
            .iter()
            .position(|s| s.name == name)
            .expect("asked for");
        answer.signals[i].clone()
    }

    /// A kept value is given again only for the same view, and only before
    /// it can change; a value that changes is evaluated again while the
    /// others stay kept; every answer equals a fresh evaluation.
    #[test]
    fn kept_values_hold_for_their_view_and_interval_only() {
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
        assert_eq!(first, evaluated(&view, &all, at));
        // It encodes as the name → value object, in the order the
        // definitions were named, and gives each value it was asked for.
        let members: Vec<String> = all
            .iter()
            .map(|d| {
                let value = first.get(&d.name).expect("asked for");
                format!("{}:{value}", json!(d.name))
            })
            .collect();
        assert_eq!(
            serde_json::to_string(&first).expect("encodes"),
            format!("{{{}}}", members.join(","))
        );
        assert_eq!(first.get("views_1h"), Some(json!(1)));
        assert_eq!(first.get("recent_views"), Some(json!(["i"])));
        assert_eq!(first.get("views_7d"), None, "not asked for");

        let unbuilt = || -> UserView { panic!("every value is kept: no view is built") };
        // The 1 h window lets the event go at `until` at the latest.
        let until = view.holds_until(&all, at);
        assert!(until > at + 1);
        assert_eq!(cache.answer("u", id, unbuilt, &all, at + 1), first);
        assert_eq!(cache.answer("u", id, unbuilt, &all, until - 1), first);
        assert_eq!(cache.answer("u", id, unbuilt, &all[2..], at + 1), {
            Answer {
                signals: vec![kept_value(&first, "recent_views")],
            }
        });

        // At `until` the hour's count changes: it alone is evaluated again.
        let later = cache.answer("u", id, || view.clone(), &all, until);
        assert_eq!(later, evaluated(&view, &all, until));
        assert_eq!(later.get("views_1h"), Some(json!(0)));
        assert!(Arc::ptr_eq(
            &kept_value(&first, "recent_views"),
            &kept_value(&later, "recent_views")
        ));
        assert!(!Arc::ptr_eq(
            &kept_value(&first, "views_1h"),
            &kept_value(&later, "views_1h")
        ));

        // Before it was computed, over another view, for another user: evaluated.
        for (user, id, at) in [
            ("u", id, at - 1),
            (
                "u",
                ViewId {
                    tail_generation: 8,
                    ..id
                },
                at + 1,
            ),
            (
                "u",
                ViewId {
                    version: Some(2),
                    ..id
                },
                at + 1,
            ),
            ("v", id, at + 1),
        ] {
            let mut built = false;
            let answer = cache.answer(
                user,
                id,
                || {
                    built = true;
                    view.clone()
                },
                &all,
                at,
            );
            assert!(built, "{user} {id:?} {at}");
            assert_eq!(answer, evaluated(&view, &all, at));
        }
        let mut built = 0;
        let none = AnswerCache::new(0);
        for _ in 0..2 {
            none.answer(
                "u",
                id,
                || {
                    built += 1;
                    view.clone()
                },
                &all,
                at,
            );
        }
        assert_eq!(built, 2, "a cache of no bytes keeps nothing");
    }
}
