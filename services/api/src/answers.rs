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
//!
//! A kept value holds no name (answers take names from the definitions,
//! which every answer shares and stay in the CPU's cache), and an answer
//! holds the user's kept values whole rather than a handle per value: a
//! multi-get reads a hundred users' values, and a name or a reference
//! count per value was a memory miss each, a sixth of its time.

use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use signals_core::{Definitions, SignalDefinition, UserView};
use signals_schemas::Millis;
use signals_store::VersionedCache;

/// What the answer was computed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewId {
    pub version: Option<u64>,
    pub tail_generation: u64,
}

/// One signal's value, kept as its JSON encoding (half the memory of the
/// value itself, and nothing to encode again) with the instants
/// `[from, until)` it holds for.
#[derive(Clone, Debug)]
struct Kept {
    from: Millis,
    until: Millis,
    encoded: Arc<RawValue>,
    /// A lifetime signal whose definition changed after the batch ran.
    stale: bool,
}

/// One user's kept values, all over one view.
#[derive(Debug)]
struct KeptView {
    view: ViewId,
    /// By [`SignalDefinition::index`]: a multi-get looks up every signal of
    /// every user, and finding them by name (a memory miss per name
    /// compared) was a fifth of its time.
    values: Vec<Option<Kept>>,
}

impl KeptView {
    fn holds(&self, definition: &SignalDefinition, at: Millis) -> bool {
        self.values
            .get(definition.index)
            .and_then(Option::as_ref)
            .is_some_and(|kept| kept.from <= at && at < kept.until)
    }

    /// About how many bytes it holds in memory.
    fn weight(&self) -> usize {
        64 + self.values.len() * std::mem::size_of::<Option<Kept>>()
            + self
                .values
                .iter()
                .flatten()
                .map(|k| 16 + k.encoded.get().len())
                .sum::<usize>()
    }
}

/// One evaluation of some signals; serializes as the response's `signals`
/// object (name → value), in the order the definitions were named. Not
/// sorted by name: in a multi-get, that sort (a memory miss per name
/// compared) cost a tenth of the time.
#[derive(Clone, Debug)]
pub struct Answer {
    definitions: Arc<Definitions>,
    values: Arc<KeptView>,
    /// The definitions asked for, by index, without repeats; `values`
    /// holds each of them.
    asked: Vec<usize>,
}

impl Answer {
    /// The signals asked for: name, encoded value, staleness.
    fn signals(&self) -> impl Iterator<Item = (&str, &Kept)> {
        self.asked.iter().filter_map(|&index| {
            let definition = self.definitions.by_index(index)?;
            let kept = self.values.values.get(index)?.as_ref()?;
            Some((definition.name.as_str(), kept))
        })
    }

    /// The value of the signal `name`, if it was asked for (decoded: for
    /// the few values segment rules read).
    pub fn get(&self, name: &str) -> Option<Value> {
        let (_, kept) = self.signals().find(|(n, _)| *n == name)?;
        serde_json::from_str(kept.encoded.get()).ok()
    }

    /// About how many bytes its JSON takes.
    pub fn encoded_len(&self) -> usize {
        self.signals()
            .map(|(name, kept)| name.len() + kept.encoded.get().len() + 4)
            .sum()
    }

    /// Lifetime signals whose definition changed after the batch ran.
    pub fn stale(&self) -> Vec<String> {
        self.signals()
            .filter(|(_, kept)| kept.stale)
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}

/// Encodings made by one encoder are equal exactly when the values are.
impl PartialEq for Answer {
    fn eq(&self, other: &Answer) -> bool {
        self.signals()
            .map(|(n, k)| (n, k.encoded.get(), k.stale))
            .eq(other.signals().map(|(n, k)| (n, k.encoded.get(), k.stale)))
    }
}

impl Serialize for Answer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.asked.len()))?;
        for (name, kept) in self.signals() {
            map.serialize_entry(name, &*kept.encoded)?;
        }
        map.end()
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

    /// Evaluates `asked` (definitions of `definitions`, without repeats)
    /// for `user` at `at` over `view`: the values kept for that view that
    /// hold at `at` are given again, the others are evaluated (building the
    /// view only then) and kept.
    pub fn answer(
        &self,
        user: &str,
        id: ViewId,
        view: impl FnOnce() -> UserView,
        definitions: &Arc<Definitions>,
        asked: &[&SignalDefinition],
        at: Millis,
    ) -> Answer {
        let kept = self
            .kept
            .as_ref()
            .and_then(|cache| cache.latest(user))
            .filter(|kept| kept.view == id);
        let missing: Vec<&SignalDefinition> = asked
            .iter()
            .copied()
            .filter(|d| !kept.as_ref().is_some_and(|k| k.holds(d, at)))
            .collect();
        let answer = |values| Answer {
            definitions: definitions.clone(),
            values,
            asked: asked.iter().map(|d| d.index).collect(),
        };
        metrics::counter!("signals_serving_values_total", "value" => "kept")
            .increment((asked.len() - missing.len()) as u64);
        if missing.is_empty() {
            let values = kept.unwrap_or_else(|| {
                Arc::new(KeptView {
                    view: id,
                    values: Vec::new(),
                })
            });
            return answer(values);
        }
        metrics::counter!("signals_serving_values_total", "value" => "computed")
            .increment(missing.len() as u64);
        let view = view();
        let (encoded, stale) = view.evaluate_encoded(&missing, at);
        // Only kept values need to know how long they hold.
        let until = match &self.kept {
            Some(_) => view.holds_until_each(&missing, at),
            None => vec![at; missing.len()],
        };
        // Values of other signals kept for the same view stay kept.
        let mut values = kept.map(|k| k.values.clone()).unwrap_or_default();
        for ((definition, encoded), until) in missing.iter().zip(encoded).zip(until) {
            if values.len() <= definition.index {
                values.resize(definition.index + 1, None);
            }
            values[definition.index] = Some(Kept {
                from: at,
                until,
                encoded: Arc::from(encoded),
                stale: stale.iter().any(|s| s.0 == definition.name),
            });
        }
        let values = Arc::new(KeptView { view: id, values });
        if let Some(cache) = &self.kept {
            cache.insert(0, user, values.clone(), values.weight());
        }
        answer(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use signals_core::testing::event;
    use signals_core::{Definitions, SignalSpec, SpeedEntry};
    use signals_schemas::EventType;

    fn definitions() -> Arc<Definitions> {
        let specs: Vec<SignalSpec> = serde_json::from_value(json!([
            {"name": "views_1h", "events": ["view"], "aggregation": "count", "window": "1h"},
            {"name": "views_24h", "events": ["view"], "aggregation": "count", "window": "24h"},
            {"name": "recent_views", "events": ["view", "click"], "aggregation": "last_distinct", "field": "item_id", "limit": 5}
        ]))
        .expect("specs");
        Arc::new(Definitions::compile(&specs).expect("valid"))
    }

    /// The answer as evaluated from scratch.
    fn evaluated(
        view: &UserView,
        all: &Arc<Definitions>,
        definitions: &[&SignalDefinition],
        at: Millis,
    ) -> Answer {
        let (values, stale) = view.evaluate(definitions, at);
        let mut kept = vec![None; all.len()];
        for (d, v) in definitions.iter().zip(values) {
            kept[d.index] = Some(Kept {
                from: at,
                until: at + 1,
                // Through `Value`s: the encoded path must write the same.
                encoded: Arc::from(serde_json::value::to_raw_value(&v).expect("encodes")),
                stale: stale.iter().any(|s| s.0 == d.name),
            });
        }
        Answer {
            definitions: all.clone(),
            values: Arc::new(KeptView {
                view: ViewId {
                    version: None,
                    tail_generation: 0,
                },
                values: kept,
            }),
            asked: definitions.iter().map(|d| d.index).collect(),
        }
    }

    /// The kept encoding of `name` in `answer`, to tell a kept value from
    /// one evaluated again.
    fn kept_value(answer: &Answer, name: &str) -> Arc<RawValue> {
        let (_, kept) = answer
            .signals()
            .find(|(n, _)| *n == name)
            .expect("asked for");
        kept.encoded.clone()
    }

    /// A kept value is given again only for the same view, and only before
    /// it can change; a value that changes is evaluated again while the
    /// others stay kept; every answer equals a fresh evaluation.
    #[test]
    fn kept_values_hold_for_their_view_and_interval_only() {
        let defs = definitions();
        let all: Vec<&SignalDefinition> = defs.iter().collect();
        let ask = |cache: &AnswerCache,
                   user: &str,
                   id: ViewId,
                   view: &dyn Fn() -> UserView,
                   asked: &[&SignalDefinition],
                   at: Millis| cache.answer(user, id, view, &defs, asked, at);
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
        let first = ask(&cache, "u", id, &|| view.clone(), &all, at);
        assert_eq!(first, evaluated(&view, &defs, &all, at));
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
        assert_eq!(ask(&cache, "u", id, &unbuilt, &all, at + 1), first);
        assert_eq!(ask(&cache, "u", id, &unbuilt, &all, until - 1), first);
        let one = ask(&cache, "u", id, &unbuilt, &all[2..], at + 1);
        assert_eq!(one, evaluated(&view, &defs, &all[2..], at + 1));
        assert!(Arc::ptr_eq(
            &kept_value(&first, "recent_views"),
            &kept_value(&one, "recent_views")
        ));
        assert_eq!(one.get("views_1h"), None, "not asked for");

        // At `until` the hour's count changes: it alone is evaluated again.
        let later = ask(&cache, "u", id, &|| view.clone(), &all, until);
        assert_eq!(later, evaluated(&view, &defs, &all, until));
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
            let built = std::cell::Cell::new(false);
            let answer = ask(
                &cache,
                user,
                id,
                &|| {
                    built.set(true);
                    view.clone()
                },
                &all,
                at,
            );
            assert!(built.get(), "{user} {id:?} {at}");
            assert_eq!(answer, evaluated(&view, &defs, &all, at));
        }
        let built = std::cell::Cell::new(0);
        let none = AnswerCache::new(0);
        for _ in 0..2 {
            let answer = ask(
                &none,
                "u",
                id,
                &|| {
                    built.set(built.get() + 1);
                    view.clone()
                },
                &all,
                at,
            );
            assert_eq!(answer, first);
        }
        assert_eq!(built.get(), 2, "a cache of no bytes keeps nothing");
    }
}
