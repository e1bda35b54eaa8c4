//! Aggregation state: what a signal remembers about a set of events.
//!
//! Every state forms a commutative monoid under [`State::merge`] with
//! [`State::empty`] as identity, and folding is a homomorphism:
//! `fold(A ∪ B) = merge(fold(A), fold(B))` for disjoint A and B. That law is
//! what lets the batch layer pre-aggregate old history and serving add the
//! rest, and it is checked by the property tests below.
//!
//! Ties between events at the same `event_time` are broken by `event_id`, so
//! results never depend on arrival order.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use signals_schemas::{Event, Millis};
use smol_str::SmolStr;

use crate::definition::{Aggregation, Field, Window};
use crate::session::Sessions;
use crate::time::format_millis;

/// Values to what a state knows of each: foldhash under seeds drawn per
/// process (values are client input), several times SipHash's speed on
/// short strings; a heavy user's read hashes thousands.
pub type ValueMap<V> = HashMap<SmolStr, V, foldhash::fast::RandomState>;

/// Orders events in time; the later stamp is the newer event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub time: Millis,
    pub event_id: SmolStr,
}

impl Stamp {
    pub fn of(event: &Event) -> Stamp {
        Stamp {
            time: event.event_time,
            event_id: SmolStr::new(&event.event_id),
        }
    }
}

/// The latest add/remove seen for one member of a set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMark {
    pub stamp: Stamp,
    pub present: bool,
}

/// Aggregation state of one signal over some set of events.
///
/// Values and event ids are [`SmolStr`]s: a read starts from a block's or a
/// running state and copies it, and a heavy user's wishlist holds thousands
/// of values. Ids and values of up to 23 bytes are copied without touching
/// the allocator, longer ones share their bytes; either encodes as a string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum State {
    Count(u64),
    Sum(f64),
    Min(Option<f64>),
    Max(Option<f64>),
    /// Value → its newest stamp; only the newest `limit` values are kept.
    Latest(ValueMap<Stamp>),
    /// Value → its latest add or remove.
    Set(ValueMap<SetMark>),
    /// Value → number of events; complete, truncated only when finished.
    Counts(ValueMap<u64>),
    Distinct(HashSet<SmolStr, foldhash::fast::RandomState>),
    FirstSeen(Option<Millis>),
    LastSeen(Option<Millis>),
    /// Sessions as intervals with their edges (added last: stored states
    /// encode the variant's index).
    Sessions(Sessions),
}

fn numeric(field: &Field, event: &Event) -> Option<f64> {
    field
        .get(event)
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) | (None, x) => x,
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) | (None, x) => x,
    }
}

fn opt_extreme(
    a: Option<Millis>,
    b: Option<Millis>,
    pick: fn(Millis, Millis) -> Millis,
) -> Option<Millis> {
    match (a, b) {
        (Some(x), Some(y)) => Some(pick(x, y)),
        (x, None) | (None, x) => x,
    }
}

/// Keeps the `limit` newest entries once the map has grown to twice that, so
/// pruning costs amortised O(1) per insert.
fn prune_latest(map: &mut ValueMap<Stamp>, limit: usize) {
    if map.len() < limit.saturating_mul(2).max(limit + 1) {
        return;
    }
    let mut entries: Vec<(SmolStr, Stamp)> = map.drain().collect();
    entries.sort_unstable_by(|a, b| b.1.cmp(&a.1));
    entries.truncate(limit);
    map.extend(entries);
}

/// Whether `event` is newer than `stamp` (compared without building a stamp:
/// this runs for every event of every request).
fn newer(event: &Event, stamp: &Stamp) -> bool {
    (event.event_time, event.event_id.as_str()) > (stamp.time, stamp.event_id.as_str())
}

/// Keeps for `value` the newer of what `map` holds and a candidate that
/// `is_newer` compares with it; `make` builds the candidate only if it is
/// kept (on the read path, cloning ids cost more than comparing them).
fn keep_newest<V>(
    map: &mut ValueMap<V>,
    value: &str,
    is_newer: impl FnOnce(&V) -> bool,
    make: impl FnOnce() -> V,
) {
    match map.get_mut(value) {
        Some(current) if !is_newer(current) => {}
        Some(current) => *current = make(),
        None => {
            map.insert(SmolStr::new(value), make());
        }
    }
}

impl State {
    /// The state of no events: the identity of [`State::merge`].
    pub fn empty(aggregation: &Aggregation) -> State {
        match aggregation {
            Aggregation::Count => State::Count(0),
            Aggregation::Sum(_) => State::Sum(0.0),
            Aggregation::Min(_) => State::Min(None),
            Aggregation::Max(_) => State::Max(None),
            Aggregation::LastDistinct { .. } => State::Latest(ValueMap::default()),
            Aggregation::Set { .. } => State::Set(ValueMap::default()),
            Aggregation::TopK { .. } => State::Counts(ValueMap::default()),
            Aggregation::DistinctCount(_) => State::Distinct(HashSet::default()),
            Aggregation::FirstSeen => State::FirstSeen(None),
            Aggregation::LastSeen => State::LastSeen(None),
            Aggregation::Sessions { .. } => State::Sessions(Sessions::default()),
        }
    }

    /// Drops what can no longer reach a value, however the state is merged
    /// later: a last-k state keeps its newest `k` values (a value not among
    /// a part's newest `k` has `k` newer ones in that part alone).
    pub fn trim(&mut self, aggregation: &Aggregation) {
        if let (State::Latest(map), Aggregation::LastDistinct { limit, .. }) = (self, aggregation) {
            if map.len() > *limit {
                let mut entries: Vec<(SmolStr, Stamp)> = map.drain().collect();
                entries.sort_unstable_by(|a, b| b.1.cmp(&a.1));
                entries.truncate(*limit);
                map.extend(entries);
            }
        }
    }

    /// Whether this state has the shape `aggregation` produces.
    pub fn fits(&self, aggregation: &Aggregation) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(&State::empty(aggregation))
    }

    /// Adds one event that already passed the definition's type, filter and
    /// window checks.
    pub fn add(&mut self, aggregation: &Aggregation, event: &Event) {
        match (self, aggregation) {
            (State::Count(n), Aggregation::Count) => *n += 1,
            (State::Sum(total), Aggregation::Sum(field)) => {
                if let Some(v) = numeric(field, event) {
                    *total += v;
                }
            }
            (State::Min(m), Aggregation::Min(field)) => *m = min_opt(*m, numeric(field, event)),
            (State::Max(m), Aggregation::Max(field)) => *m = max_opt(*m, numeric(field, event)),
            (State::Latest(map), Aggregation::LastDistinct { field, limit }) => {
                if let Some(value) = field.get(event) {
                    keep_newest(map, value, |c| newer(event, c), || Stamp::of(event));
                    prune_latest(map, *limit);
                }
            }
            (State::Set(map), Aggregation::Set { field, add, .. }) => {
                if let Some(value) = field.get(event) {
                    let mark = || SetMark {
                        stamp: Stamp::of(event),
                        present: add.contains(event.event_type),
                    };
                    keep_newest(map, value, |c| newer(event, &c.stamp), mark);
                }
            }
            (State::Counts(map), Aggregation::TopK { field, .. }) => {
                if let Some(value) = field.get(event) {
                    match map.get_mut(value) {
                        Some(n) => *n += 1,
                        None => {
                            map.insert(SmolStr::new(value), 1);
                        }
                    }
                }
            }
            (State::Distinct(set), Aggregation::DistinctCount(field)) => {
                if let Some(value) = field.get(event) {
                    if !set.contains(value) {
                        set.insert(SmolStr::new(value));
                    }
                }
            }
            (State::FirstSeen(t), Aggregation::FirstSeen) => {
                *t = opt_extreme(*t, Some(event.event_time), Millis::min)
            }
            (State::LastSeen(t), Aggregation::LastSeen) => {
                *t = opt_extreme(*t, Some(event.event_time), Millis::max)
            }
            (State::Sessions(sessions), Aggregation::Sessions { gap, .. }) => {
                sessions.add(event.event_time, *gap)
            }
            // A state of another shape never meets this aggregation: states
            // are created by `empty` for the same definition.
            _ => {}
        }
    }

    /// Folds `other` (over a disjoint set of events) into `self`.
    pub fn merge(&mut self, aggregation: &Aggregation, other: &State) {
        match (self, other) {
            (State::Count(a), State::Count(b)) => *a += b,
            (State::Sum(a), State::Sum(b)) => *a += b,
            (State::Min(a), State::Min(b)) => *a = min_opt(*a, *b),
            (State::Max(a), State::Max(b)) => *a = max_opt(*a, *b),
            // Into an empty map (a read starts from a block's or running
            // state), a copy of the table: no hashing, no probing.
            (State::Set(a), State::Set(b)) if a.is_empty() => a.clone_from(b),
            (State::Counts(a), State::Counts(b)) if a.is_empty() => a.clone_from(b),
            (State::Distinct(a), State::Distinct(b)) if a.is_empty() => a.clone_from(b),
            (State::Latest(a), State::Latest(b)) => {
                if a.is_empty() {
                    a.clone_from(b);
                } else {
                    for (value, stamp) in b {
                        keep_newest(a, value, |c| stamp > c, || stamp.clone());
                    }
                }
                if let Aggregation::LastDistinct { limit, .. } = aggregation {
                    prune_latest(a, *limit);
                }
            }
            (State::Set(a), State::Set(b)) => {
                for (value, mark) in b {
                    keep_newest(a, value, |c| mark.stamp > c.stamp, || mark.clone());
                }
            }
            (State::Counts(a), State::Counts(b)) => {
                for (value, n) in b {
                    *a.entry(value.clone()).or_insert(0) += n;
                }
            }
            (State::Distinct(a), State::Distinct(b)) => a.extend(b.iter().cloned()),
            (State::FirstSeen(a), State::FirstSeen(b)) => *a = opt_extreme(*a, *b, Millis::min),
            (State::LastSeen(a), State::LastSeen(b)) => *a = opt_extreme(*a, *b, Millis::max),
            (State::Sessions(a), State::Sessions(b)) => {
                if let Aggregation::Sessions { gap, .. } = aggregation {
                    a.merge(b, *gap)
                }
            }
            // Mismatched shapes come only from a definition that changed
            // since `other` was computed; callers check `fits` first.
            _ => {}
        }
    }

    /// The signal's value, as served.
    pub fn finish(&self, aggregation: &Aggregation) -> Value {
        match (self, aggregation) {
            (State::Count(n), _) => json!(n),
            (State::Sum(total), _) => number(*total),
            (State::Min(m) | State::Max(m), _) => m.map_or(Value::Null, number),
            (State::Latest(map), Aggregation::LastDistinct { limit, .. }) => {
                let mut entries: Vec<(&SmolStr, &Stamp)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| b.1.cmp(a.1));
                Value::from_iter(entries.into_iter().take(*limit).map(|(v, _)| v.as_str()))
            }
            (State::Set(map), Aggregation::Set { limit, .. }) => {
                Value::from_iter(set_members(map, *limit))
            }
            (State::Counts(map), Aggregation::TopK { limit, .. }) => {
                let mut entries: Vec<(&SmolStr, &u64)> = map.iter().collect();
                entries.sort_unstable_by_key(|(key, count)| (Reverse(**count), *key));
                Value::from_iter(
                    entries
                        .into_iter()
                        .take(*limit)
                        .map(|(key, count)| json!({"key": key, "count": count})),
                )
            }
            (State::Distinct(set), _) => json!(set.len()),
            (State::FirstSeen(t) | State::LastSeen(t), _) => {
                t.map_or(Value::Null, |t| Value::String(format_millis(t)))
            }
            // Without an `at`: over every session the state holds
            // ([`crate::SignalDefinition::value`] measures at `at`).
            (State::Sessions(sessions), Aggregation::Sessions { gap, measure }) => {
                sessions.value(*measure, Window::Lifetime, Millis::MAX, *gap)
            }
            // Unreachable for states made by `empty(aggregation)`.
            _ => Value::Null,
        }
    }
}

/// A set's marks, newest first: how a set's running state over a heavy
/// user's history is kept, so that a read walks it in the answer's order,
/// beside what the rest of the read folded, instead of copying it and
/// sorting it again (ADR 007). Each mark carries its value's hash, so the
/// walk meets the read's own marks without hashing a string.
#[derive(Debug)]
pub struct SortedMarks(Vec<(SmolStr, SetMark, u64)>);

/// Hashes values for [`SortedMarks`]: seeded once per process (the marks
/// are derived data, never stored).
static VALUE_HASHER: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

fn value_hash(value: &str) -> u64 {
    VALUE_HASHER.hash_one(value)
}

impl SortedMarks {
    pub fn of(marks: &ValueMap<SetMark>) -> SortedMarks {
        let mut sorted: Vec<(SmolStr, SetMark, u64)> = marks
            .iter()
            .map(|(value, mark)| (value.clone(), mark.clone(), value_hash(value)))
            .collect();
        sorted.sort_unstable_by(|a, b| b.1.stamp.cmp(&a.1.stamp));
        SortedMarks(sorted)
    }

    /// Folds these marks into `state`, a set's.
    pub fn merge_into(&self, state: &mut State) {
        if let State::Set(map) = state {
            for (value, mark, _) in &self.0 {
                keep_newest(map, value, |c| mark.stamp > c.stamp, || mark.clone());
            }
        }
    }

    /// The set's members over these marks and `newer` (the marks of a
    /// disjoint set of events, usually few): those whose latest mark of
    /// either adds, newest first, at most `limit`. The members of merging
    /// both; costs a pass over these marks and a sort of `newer`.
    pub fn members_with<'a>(
        &'a self,
        newer: &'a ValueMap<SetMark>,
        limit: Option<usize>,
    ) -> Vec<&'a str> {
        let mut own: Vec<(&SmolStr, &SetMark)> = newer.iter().collect();
        own.sort_unstable_by(|a, b| b.1.stamp.cmp(&a.1.stamp));
        let at: HashMap<&str, usize, foldhash::fast::RandomState> = own
            .iter()
            .enumerate()
            .map(|(i, (value, _))| (value.as_str(), i))
            .collect();
        // Most kept values have no own mark: a probe by their hash answers
        // that without hashing them again.
        let hashes: HashSet<u64, foldhash::fast::RandomState> =
            own.iter().map(|(value, _)| value_hash(value)).collect();
        // A kept mark beaten by an own mark is left out; an own mark beaten
        // by a kept one is passed over when the merge reaches it, which is
        // after the kept one (newer) was walked.
        let mut beaten = vec![false; own.len()];
        let mut kept = self.0.iter().peekable();
        let mut next_own = 0;
        let mut members = Vec::new();
        let limit = limit.unwrap_or(usize::MAX);
        while members.len() < limit {
            let take_kept = match (kept.peek(), own.get(next_own)) {
                (Some((_, k, _)), Some((_, o))) => k.stamp >= o.stamp,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_kept {
                let Some((value, mark, hash)) = kept.next() else {
                    break;
                };
                let mine = if hashes.contains(hash) {
                    at.get(value.as_str())
                } else {
                    None
                };
                if let Some(&i) = mine {
                    if own[i].1.stamp > mark.stamp {
                        continue;
                    }
                    beaten[i] = true;
                }
                if mark.present {
                    members.push(value.as_str());
                }
            } else {
                let (value, mark) = own[next_own];
                if !beaten[next_own] && mark.present {
                    members.push(value.as_str());
                }
                next_own += 1;
            }
        }
        members
    }
}

/// A set's members: the values whose latest mark adds, newest first, at
/// most `limit`.
pub(crate) fn set_members(map: &ValueMap<SetMark>, limit: Option<usize>) -> Vec<&str> {
    let mut present: Vec<(&SmolStr, &Stamp)> = map
        .iter()
        .filter(|(_, mark)| mark.present)
        .map(|(v, mark)| (v, &mark.stamp))
        .collect();
    present.sort_unstable_by(|a, b| b.1.cmp(a.1));
    let limit = limit.unwrap_or(usize::MAX);
    present
        .into_iter()
        .take(limit)
        .map(|(v, _)| v.as_str())
        .collect()
}

/// Integral sums print as integers (`3`, not `3.0`).
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::EventTypes;
    use crate::testing::{aggregations, arb_events};
    use proptest::prelude::*;

    fn fold(aggregation: &Aggregation, events: &[Event]) -> State {
        let mut state = State::empty(aggregation);
        for e in events {
            state.add(aggregation, e);
        }
        state
    }

    proptest! {
        #[test]
        fn folding_is_a_homomorphism(events in arb_events(60), split in 0usize..60) {
            for aggregation in aggregations() {
                let split = split.min(events.len());
                let whole = fold(&aggregation, &events);
                let mut merged = fold(&aggregation, &events[..split]);
                merged.merge(&aggregation, &fold(&aggregation, &events[split..]));
                prop_assert_eq!(whole.finish(&aggregation), merged.finish(&aggregation), "{:?}", aggregation);
            }
        }

        #[test]
        fn merge_is_associative_and_commutative(events in arb_events(60), i in 0usize..60, j in 0usize..60) {
            let (i, j) = (i.min(events.len()), j.min(events.len()));
            let (i, j) = (i.min(j), i.max(j));
            for aggregation in aggregations() {
                let a = fold(&aggregation, &events[..i]);
                let b = fold(&aggregation, &events[i..j]);
                let c = fold(&aggregation, &events[j..]);
                let mut left = a.clone();
                left.merge(&aggregation, &b);
                left.merge(&aggregation, &c);
                let mut bc = b.clone();
                bc.merge(&aggregation, &c);
                let mut right = a.clone();
                right.merge(&aggregation, &bc);
                let mut swapped = c.clone();
                swapped.merge(&aggregation, &a);
                swapped.merge(&aggregation, &b);
                prop_assert_eq!(left.finish(&aggregation), right.finish(&aggregation));
                prop_assert_eq!(left.finish(&aggregation), swapped.finish(&aggregation));
            }
        }

        #[test]
        fn order_of_events_does_not_matter(mut events in arb_events(60)) {
            for aggregation in aggregations() {
                let forward = fold(&aggregation, &events).finish(&aggregation);
                events.reverse();
                prop_assert_eq!(forward, fold(&aggregation, &events).finish(&aggregation));
            }
        }

        /// A set finished over its running marks and the marks of any
        /// other events (older, newer or interleaved in time) answers what
        /// merging them does, under any limit.
        #[test]
        fn sorted_marks_finish_like_a_merge(
            events in arb_events(80),
            split in 0usize..80,
            limit in prop::option::of(0usize..6),
        ) {
            for aggregation in aggregations() {
                let Aggregation::Set { field, add, remove, .. } = aggregation else { continue };
                let aggregation = Aggregation::Set { field, add, remove, limit };
                let split = split.min(events.len());
                let (kept, newer) = (fold(&aggregation, &events[..split]), fold(&aggregation, &events[split..]));
                let (State::Set(kept_marks), State::Set(newer_marks)) = (&kept, &newer) else {
                    unreachable!("sets fold to sets")
                };
                let mut merged = kept.clone();
                merged.merge(&aggregation, &newer);
                let marks = SortedMarks::of(kept_marks);
                prop_assert_eq!(Value::from_iter(marks.members_with(newer_marks, limit)), merged.finish(&aggregation));
                let mut folded = newer.clone();
                marks.merge_into(&mut folded);
                prop_assert_eq!(folded.finish(&aggregation), merged.finish(&aggregation));
            }
        }

        #[test]
        fn empty_is_the_identity(events in arb_events(30)) {
            for aggregation in aggregations() {
                let state = fold(&aggregation, &events);
                let mut merged = State::empty(&aggregation);
                merged.merge(&aggregation, &state);
                prop_assert_eq!(merged.finish(&aggregation), state.finish(&aggregation));
            }
        }
    }

    #[test]
    fn set_keeps_values_whose_latest_event_adds() {
        use crate::testing::event;
        use signals_schemas::EventType::{WishlistAdd, WishlistRemove};
        let mut add = EventTypes::default();
        add.insert(WishlistAdd);
        let mut remove = EventTypes::default();
        remove.insert(WishlistRemove);
        let aggregation = Aggregation::Set {
            field: Field::ItemId,
            add,
            remove,
            limit: None,
        };
        let events = [
            event("e1", WishlistAdd, "a", 10),
            event("e2", WishlistAdd, "b", 20),
            event("e3", WishlistRemove, "a", 30),
            event("e4", WishlistAdd, "c", 5),
            // Same time as e5: the larger event id is the later one.
            event("e6", WishlistRemove, "c", 40),
            event("e5", WishlistAdd, "c", 40),
        ];
        assert_eq!(
            fold(&aggregation, &events).finish(&aggregation),
            json!(["b"])
        );
    }

    #[test]
    fn top_k_orders_by_count_then_key() {
        use crate::testing::event_with_city;
        let aggregation = Aggregation::TopK {
            field: Field::Attribute("city".into()),
            limit: 3,
        };
        let events: Vec<Event> = ["Rome", "Paris", "Oslo", "Rome", "Oslo", "Lima", "Bern"]
            .iter()
            .enumerate()
            .map(|(i, city)| event_with_city(&format!("e{i}"), city, i as i64))
            .collect();
        assert_eq!(
            fold(&aggregation, &events).finish(&aggregation),
            json!([{"key": "Oslo", "count": 2}, {"key": "Rome", "count": 2}, {"key": "Bern", "count": 1}])
        );
    }
}
