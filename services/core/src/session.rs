//! Sessions: a user's events split wherever two consecutive events are more
//! than `gap` apart (exactly `gap` apart stays one session).
//!
//! The state is the set of sessions as intervals with their edges (first and
//! last event time) and event counts. Two states over disjoint sets of events
//! merge by coalescing every pair of intervals that overlap or lie at most
//! `gap` apart, which is exactly what sessionizing the union does: adding
//! events only shortens the gaps between neighbours, so every session of a
//! part lies inside one session of the union, and two of them share a
//! session of the union exactly when a chain of intervals at most `gap`
//! apart links them. Hence:
//!
//! * `fold(A ∪ B) = merge(fold A, fold B)` for disjoint `A`, `B`;
//! * merge is associative and commutative, with the empty state as identity;
//! * the intervals (not the counts) are idempotent: merging a state with
//!   itself keeps its edges and doubles its counts, which is why the layers
//!   deduplicate events before they fold them.
//!
//! The property tests below check each of these against the plain
//! computation (sort the times, split at gaps).

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use signals_schemas::Millis;

use crate::definition::Window;
use crate::time::format_millis;

/// One session: the times of its first and last event and how many events
/// it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub start: Millis,
    pub end: Millis,
    pub events: u64,
}

impl Session {
    /// The session's whole minutes: `floor((end - start) / 60000)`.
    pub fn whole_minutes(&self) -> u64 {
        u64::try_from((self.end - self.start) / 60_000).unwrap_or(0)
    }
}

/// What a session signal reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionMeasure {
    /// Number of sessions starting in the window.
    Count,
    /// Sum of the whole minutes of the sessions starting in the window.
    Minutes,
    /// The session holding the last event, unless that event is more than
    /// `gap` before `at`: `{"start", "events"}` or null.
    Current,
}

/// The sessions of a set of events, keyed by start; any two are more than
/// the gap apart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    /// start → (end, events)
    by_start: BTreeMap<Millis, (Millis, u64)>,
}

impl Sessions {
    /// Sessions of `times` (any order, one entry per event), the plain way.
    pub fn of_times(times: impl IntoIterator<Item = Millis>, gap: Millis) -> Sessions {
        let mut sorted: Vec<Millis> = times.into_iter().collect();
        sorted.sort_unstable();
        Sessions::of_sorted_times(sorted, gap)
    }

    /// Sessions of `sorted` (oldest first, one entry per event): one sweep.
    pub fn of_sorted_times(sorted: impl IntoIterator<Item = Millis>, gap: Millis) -> Sessions {
        let mut sessions = Sessions::default();
        let mut current: Option<Session> = None;
        for t in sorted {
            current = match current {
                Some(mut s) if t - s.end <= gap => {
                    s.end = t;
                    s.events += 1;
                    Some(s)
                }
                other => {
                    if let Some(s) = other {
                        sessions.by_start.insert(s.start, (s.end, s.events));
                    }
                    Some(Session {
                        start: t,
                        end: t,
                        events: 1,
                    })
                }
            };
        }
        if let Some(s) = current {
            sessions.by_start.insert(s.start, (s.end, s.events));
        }
        sessions
    }

    /// Adds one event at `time`.
    pub fn add(&mut self, time: Millis, gap: Millis) {
        self.insert(
            Session {
                start: time,
                end: time,
                events: 1,
            },
            gap,
        );
    }

    /// Adds a session of events disjoint from those already folded in,
    /// coalescing it with every session it overlaps or lies within `gap` of.
    pub fn insert(&mut self, session: Session, gap: Millis) {
        let reach_from = session.start.saturating_sub(gap);
        let reach_to = session.end.saturating_add(gap);
        let later_in_reach = self
            .by_start
            .range((Excluded(session.start), Included(reach_to)))
            .next()
            .is_some();
        // Events folded in time order land here: the session they extend
        // keeps its start, the map's key, so it grows in place.
        if !later_in_reach {
            if let Some((_, (end, events))) = self.by_start.range_mut(..=session.start).next_back()
            {
                if *end >= reach_from {
                    *end = (*end).max(session.end);
                    *events += session.events;
                    return;
                }
            }
        }
        // Sessions are more than `gap` apart, so those within reach are
        // consecutive: at most one starts before `session` does.
        let first = self
            .by_start
            .range(..session.start)
            .next_back()
            .filter(|(_, (end, _))| *end >= reach_from)
            .map(|(start, _)| *start)
            .unwrap_or(session.start);
        let mut merged = session;
        while let Some((start, (end, events))) = self.by_start.range(first..=reach_to).next() {
            let (start, end, events) = (*start, *end, *events);
            self.by_start.remove(&start);
            merged.start = merged.start.min(start);
            merged.end = merged.end.max(end);
            merged.events += events;
        }
        self.by_start
            .insert(merged.start, (merged.end, merged.events));
    }

    /// Folds `other` (over events disjoint from this state's) into `self`.
    pub fn merge(&mut self, other: &Sessions, gap: Millis) {
        for session in other.iter() {
            self.insert(session, gap);
        }
    }

    /// Sessions in order of start.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Session> + '_ {
        self.by_start
            .iter()
            .map(|(&start, &(end, events))| Session { start, end, events })
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// Only the last session: what a batch record keeps of the events
    /// before its horizon (see [`crate::view::UserRecord::compact`]).
    pub fn last_only(&self) -> Sessions {
        Sessions {
            by_start: self
                .by_start
                .iter()
                .next_back()
                .map(|(&start, &span)| (start, span))
                .into_iter()
                .collect(),
        }
    }

    /// The signal's value at `at` for a state over events before `at`.
    pub fn value(&self, measure: SessionMeasure, window: Window, at: Millis, gap: Millis) -> Value {
        let counted = || self.iter().filter(|s| window.covers(s.start, at));
        match measure {
            SessionMeasure::Count => json!(counted().count()),
            SessionMeasure::Minutes => json!(counted().map(|s| s.whole_minutes()).sum::<u64>()),
            SessionMeasure::Current => match self.iter().next_back() {
                Some(last) if at.saturating_sub(last.end) <= gap => {
                    json!({"start": format_millis(last.start), "events": last.events})
                }
                _ => Value::Null,
            },
        }
    }

    /// The earliest time after `now` at which this state's value changes
    /// without a new event: a session start leaving the window, or the
    /// current session ending. None when nothing is left to change.
    pub fn next_change(
        &self,
        measure: SessionMeasure,
        window: Window,
        now: Millis,
        gap: Millis,
    ) -> Option<Millis> {
        match (measure, window) {
            (SessionMeasure::Current, _) => self
                .iter()
                .next_back()
                .map(|last| last.end.saturating_add(gap).saturating_add(1))
                .filter(|t| *t > now),
            (_, Window::Sliding(width)) => self
                .iter()
                .map(|s| s.start.saturating_add(width).saturating_add(1))
                .find(|t| *t > now),
            (_, Window::Lifetime) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GAP: Millis = 30;

    fn sessions(times: &[Millis]) -> Vec<Session> {
        Sessions::of_times(times.iter().copied(), GAP)
            .iter()
            .collect()
    }

    fn folded(times: &[Millis]) -> Sessions {
        let mut state = Sessions::default();
        for t in times {
            state.add(*t, GAP);
        }
        state
    }

    #[test]
    fn exactly_the_gap_apart_stays_one_session() {
        let s = sessions(&[0, 30, 61, 91]);
        assert_eq!(
            s,
            vec![
                Session {
                    start: 0,
                    end: 30,
                    events: 2
                },
                Session {
                    start: 61,
                    end: 91,
                    events: 2
                }
            ]
        );
    }

    #[test]
    fn a_late_event_joins_two_sessions() {
        let mut state = folded(&[0, 40]);
        assert_eq!(state.iter().count(), 2);
        state.add(20, GAP);
        assert_eq!(
            state.iter().collect::<Vec<_>>(),
            vec![Session {
                start: 0,
                end: 40,
                events: 3
            }]
        );
    }

    #[test]
    fn values_follow_the_contract() {
        let minute = 60_000;
        let gap = 30 * minute;
        let state = Sessions::of_times([0, 10 * minute + 59_999, 100 * minute], gap);
        let window = Window::Sliding(200 * minute);
        let at = 120 * minute;
        assert_eq!(
            state.value(SessionMeasure::Count, window, at, gap),
            json!(2)
        );
        // floor(10:59.999) = 10 minutes, plus 0 for the one-event session.
        assert_eq!(
            state.value(SessionMeasure::Minutes, window, at, gap),
            json!(10)
        );
        assert_eq!(
            state.value(SessionMeasure::Current, window, at, gap),
            json!({"start": format_millis(100 * minute), "events": 1})
        );
        // Exactly the gap after the last event is still the current session.
        assert_eq!(
            state.value(SessionMeasure::Current, window, 130 * minute, gap),
            json!({"start": format_millis(100 * minute), "events": 1})
        );
        assert_eq!(
            state.value(SessionMeasure::Current, window, 130 * minute + 1, gap),
            Value::Null
        );
        // Counted by start: the first session leaves a 110-minute window
        // one millisecond after its start is 110 minutes old.
        let narrow = Window::Sliding(110 * minute);
        assert_eq!(
            state.value(SessionMeasure::Count, narrow, 110 * minute, gap),
            json!(2)
        );
        assert_eq!(
            state.value(SessionMeasure::Count, narrow, 110 * minute + 1, gap),
            json!(1)
        );
        assert_eq!(
            state.next_change(SessionMeasure::Count, narrow, 110 * minute, gap),
            Some(110 * minute + 1)
        );
        assert_eq!(
            state.next_change(SessionMeasure::Current, narrow, 120 * minute, gap),
            Some(130 * minute + 1)
        );
    }

    fn arb_times() -> impl Strategy<Value = Vec<Millis>> {
        prop::collection::vec(0i64..400, 0..40)
    }

    proptest! {
        #[test]
        fn folding_one_by_one_equals_the_plain_split(mut times in arb_times()) {
            let plain = Sessions::of_times(times.iter().copied(), GAP);
            prop_assert_eq!(&folded(&times), &plain);
            // In time order (a speed tail's) sessions grow in place; newest
            // first (a record's blocks), each event moves a session's start.
            times.sort_unstable();
            prop_assert_eq!(&folded(&times), &plain);
            times.reverse();
            prop_assert_eq!(&folded(&times), &plain);
        }

        #[test]
        fn merge_of_parts_equals_the_whole(times in arb_times(), cut in 0usize..40, mut order in prop::collection::vec(0usize..1000, 0..40)) {
            // Any partition of the events, not only a prefix: the parts of
            // a batch record and speed entries interleave in time.
            order.resize(times.len(), 0);
            let in_a = |i: usize| order[i] % 3 == 0 || i < cut.min(times.len()) / 2;
            let a: Vec<Millis> = (0..times.len()).filter(|i| in_a(*i)).map(|i| times[i]).collect();
            let b: Vec<Millis> = (0..times.len()).filter(|i| !in_a(*i)).map(|i| times[i]).collect();
            let mut merged = Sessions::of_times(a.iter().copied(), GAP);
            merged.merge(&Sessions::of_times(b.iter().copied(), GAP), GAP);
            prop_assert_eq!(merged, Sessions::of_times(times.iter().copied(), GAP));
        }

        #[test]
        fn merge_is_associative_and_commutative(a in arb_times(), b in arb_times(), c in arb_times()) {
            let (a, b, c) = (folded(&a), folded(&b), folded(&c));
            let mut left = a.clone();
            left.merge(&b, GAP);
            left.merge(&c, GAP);
            let mut bc = b.clone();
            bc.merge(&c, GAP);
            let mut right = a.clone();
            right.merge(&bc, GAP);
            let mut swapped = c.clone();
            swapped.merge(&b, GAP);
            swapped.merge(&a, GAP);
            prop_assert_eq!(&left, &right);
            prop_assert_eq!(&left, &swapped);
            let mut identity = Sessions::default();
            identity.merge(&a, GAP);
            prop_assert_eq!(identity, a);
        }

        #[test]
        fn the_edges_are_idempotent(times in arb_times()) {
            let state = folded(&times);
            let mut twice = state.clone();
            twice.merge(&state, GAP);
            let edges = |s: &Sessions| s.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>();
            prop_assert_eq!(edges(&twice), edges(&state));
            prop_assert_eq!(twice.iter().map(|s| s.events).sum::<u64>(), 2 * times.len() as u64);
        }

        /// The record keeps only the last session before its horizon; with
        /// the events from the horizon on, every session starting at or
        /// after the horizon, and the last session, are those of the whole.
        #[test]
        fn the_last_session_before_a_horizon_is_enough(times in arb_times(), horizon in 0i64..400) {
            let (old, recent): (Vec<Millis>, Vec<Millis>) = times.iter().partition(|t| **t < horizon);
            let mut served = Sessions::of_times(old, GAP).last_only();
            served.merge(&Sessions::of_times(recent, GAP), GAP);
            let whole = Sessions::of_times(times.iter().copied(), GAP);
            let from_horizon = |s: &Sessions| s.iter().filter(|s| s.start >= horizon).collect::<Vec<_>>();
            prop_assert_eq!(from_horizon(&served), from_horizon(&whole));
            prop_assert_eq!(served.iter().next_back(), whole.iter().next_back());
        }

        /// The value stays what it is until the instant `next_change` names
        /// (the earliest at which it can change), and for ever when it names
        /// none.
        #[test]
        fn next_change_is_the_first_change(times in arb_times(), now in 400i64..500, width in 1i64..200) {
            let state = Sessions::of_times(times.iter().copied(), GAP);
            for measure in [SessionMeasure::Count, SessionMeasure::Minutes, SessionMeasure::Current] {
                let window = Window::Sliding(width);
                let value = |at| state.value(measure, window, at, GAP);
                match state.next_change(measure, window, now, GAP) {
                    Some(t) => {
                        prop_assert!(t > now);
                        for at in now..t { prop_assert_eq!(value(at), value(now)); }
                    }
                    None => for at in now..now + 700 { prop_assert_eq!(value(at), value(now)); },
                }
            }
        }
    }
}
