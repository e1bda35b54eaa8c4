//! A user's history as serving sees it, and the handoff between the layers.
//!
//! The batch layer publishes one [`UserRecord`] per user: the raw events of
//! the serving horizon plus, for lifetime signals, the pre-aggregated state of
//! everything older. The speed layer appends [`SpeedEntry`]s for log
//! positions the batch did not cover. [`UserView::merge`] joins the two, and
//! evaluation over the result equals a recompute over the whole log:
//!
//! * no gap: speed entries are taken from exactly the batch's log position;
//! * no double count: an event id appears once (the first occurrence in log
//!   order wins, in both layers), retracted ids are hidden;
//! * exact windows: raw events are kept for `retention + widest window`, so
//!   any `at` within retention sees every event of its windows individually.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use signals_schemas::{Event, Millis};

use crate::aggregate::{SortedMarks, State};
use crate::definition::{Definitions, EventTypes, SignalDefinition, Window};
use crate::tail::{EventIds, SpeedTail};
use crate::tiles::{DefinitionTiles, Holes, Tiles};

/// Pre-aggregated state of one lifetime signal over events older than the
/// record's horizon, tagged with the definition that produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseState {
    pub fingerprint: String,
    pub state: State,
}

/// Most events a record's decoding reserves room for before it has read
/// them: a corrupt length reserves no more than this (address space,
/// untouched until filled).
const EVENTS_RESERVED_UP_FRONT: usize = 1 << 21;

/// A record's events, in a vector sized from their count up front. serde
/// grows a vector of unknown trust from 1 MiB by doubling, which for a
/// million events copied them over and over and briefly held one and a
/// half times their memory: decoding took 11 % longer (criterion, a
/// million events, under the binaries' allocator).
fn events_sized_up_front<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Event>, D::Error> {
    struct Events;
    impl<'de> serde::de::Visitor<'de> for Events {
        type Value = Vec<Event>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence of events")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Event>, A::Error> {
            let count = seq.size_hint().unwrap_or(0);
            let mut events = Vec::with_capacity(count.min(EVENTS_RESERVED_UP_FRONT));
            while let Some(event) = seq.next_element()? {
                events.push(event);
            }
            Ok(events)
        }
    }
    deserializer.deserialize_seq(Events)
}

/// What the batch layer publishes for one user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Events older than this are folded into `base`, not kept raw.
    pub horizon: Millis,
    /// Signal name → state of lifetime signals over events before `horizon`.
    pub base: BTreeMap<String, BaseState>,
    /// Events at or after `horizon`: deduplicated, retractions applied,
    /// newest first (by event time, then event id), which reads rely on.
    #[serde(deserialize_with = "events_sized_up_front")]
    pub events: Vec<Event>,
    /// The user was deleted: nothing of theirs counts, neither what came
    /// before the deletion nor anything the speed layer wrote after it.
    pub deleted: bool,
    /// Blocks of `events` per definition, built on first read, never stored.
    #[serde(skip)]
    pub tiles: Tiles,
    /// Which ids `events` holds, built on first use, never stored.
    #[serde(skip)]
    pub ids: EventIds,
}

impl UserRecord {
    /// Builds a user's record from their deduplicated, unretracted events.
    pub fn compact(definitions: &Definitions, events: Vec<Event>, horizon: Millis) -> UserRecord {
        let (old, mut recent): (Vec<Event>, Vec<Event>) =
            events.into_iter().partition(|e| e.event_time < horizon);
        let mut base = BaseStates::new(definitions);
        for event in &old {
            base.add(event);
        }
        recent.sort_unstable_by(newest_first);
        UserRecord {
            horizon,
            base: base.finish(),
            events: recent,
            deleted: false,
            tiles: Tiles::default(),
            ids: EventIds::default(),
        }
    }

    /// The record of a deleted user: empty, and it voids later speed entries.
    pub fn erased(horizon: Millis) -> UserRecord {
        UserRecord {
            horizon,
            deleted: true,
            ..UserRecord::default()
        }
    }
}

/// The base states of a record, built event by event from its events
/// before the horizon (in any order): what [`UserRecord::compact`] keeps,
/// for a caller that never holds those events at once.
pub struct BaseStates<'d> {
    states: Vec<(&'d SignalDefinition, State)>,
    /// Whether any event was added: a record with no old events keeps no
    /// base state at all, not empty ones.
    any: bool,
}

impl<'d> BaseStates<'d> {
    /// Base states of those of `definitions` that keep one.
    pub fn new(definitions: impl IntoIterator<Item = &'d SignalDefinition>) -> BaseStates<'d> {
        let states = definitions
            .into_iter()
            .filter(|d| d.keeps_base_state())
            .map(|d| (d, State::empty(&d.aggregation)))
            .collect();
        BaseStates { states, any: false }
    }

    /// Adds an event before the horizon.
    pub fn add(&mut self, event: &Event) {
        self.any = true;
        for (definition, state) in &mut self.states {
            definition.add_old(state, event);
        }
    }

    /// Signal name → base state, as a record keeps them.
    pub fn finish(self) -> BTreeMap<String, BaseState> {
        if !self.any {
            return BTreeMap::new();
        }
        self.states
            .into_iter()
            .map(|(definition, state)| {
                let base = BaseState {
                    fingerprint: definition.fingerprint(),
                    state: definition.finish_base(state),
                };
                (definition.name.clone(), base)
            })
            .collect()
    }
}

/// One entry the speed layer wrote for a user, in log order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SpeedEntry {
    /// The first occurrence of an event id.
    Event(Event),
    /// Events of this user were retracted by one retraction record.
    Retracted { event_ids: Vec<String> },
    /// The user was deleted: none of their entries counts any more, before
    /// or after this one (deletion is permanent, as in the batch layer).
    Deleted,
}

/// Raised when a stored base state no longer matches its definition: the
/// signal changed and awaits the next batch run to be exact again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleSignal(pub String);

/// How long after its time an event can still move `definition`'s value:
/// entering the read range (0), leaving a sliding window (its width),
/// closing a session (the gap). It moves it at its time + reach + 1.
fn reaches_of(definition: &SignalDefinition) -> impl Iterator<Item = Millis> {
    let width = match definition.window {
        Window::Sliding(width) => Some(width),
        Window::Lifetime => None,
    };
    let gap = match definition.aggregation {
        crate::definition::Aggregation::Sessions { gap, .. } => Some(gap),
        _ => None,
    };
    [Some(0), width, gap].into_iter().flatten()
}

/// How many events [`UserView::next_change`] scans for one that matches
/// a definition before it settles for an earlier instant.
pub const NEXT_CHANGE_SCAN: usize = 32;

/// Batch record and speed tail of one user, merged.
#[derive(Clone, Debug, Default)]
pub struct UserView {
    batch: Option<Arc<UserRecord>>,
    tail: SpeedTail,
}

impl UserView {
    /// Joins a published batch record with the speed entries written after
    /// the batch's log position, in log order.
    ///
    /// A deleted user (a deleted batch record, or a deletion marker among the
    /// speed entries) has an empty view: deletion is permanent, so events
    /// the speed layer wrote after it do not count either. A retraction
    /// hides its ids wherever they are; a marker may sort before the event
    /// it retracts, since retraction records live in another partition than
    /// the user's events.
    pub fn merge(
        batch: Option<Arc<UserRecord>>,
        speed: impl IntoIterator<Item = SpeedEntry>,
    ) -> UserView {
        let tail = SpeedTail::from_entries(batch.as_deref(), speed);
        UserView::with_tail(batch, tail)
    }

    /// Joins a published batch record with its speed tail, prepared
    /// (extended entry by entry over reads, see [`SpeedTail`]).
    pub fn with_tail(batch: Option<Arc<UserRecord>>, tail: SpeedTail) -> UserView {
        if batch.as_ref().is_some_and(|b| b.deleted) || tail.is_deleted() {
            return UserView::default();
        }
        UserView { batch, tail }
    }

    /// Every raw event that counts, in no particular order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.batch_events().chain(self.tail.events())
    }

    /// The batch record's events that count.
    fn batch_events(&self) -> impl Iterator<Item = &Event> {
        let batch = self.batch.iter().flat_map(|b| b.events.iter());
        let hidden = self.tail.hidden();
        batch.filter(move |e| hidden.is_empty() || !hidden.contains(e.event_id.as_str()))
    }

    /// Whether the user has no history at all.
    pub fn is_empty(&self) -> bool {
        self.events().next().is_none() && self.batch.as_ref().is_none_or(|b| b.base.is_empty())
    }

    /// How many events a read of `definitions` would tile before it
    /// answers (record and speed tail): a first read of a heavy user's
    /// version tiles hundreds of milliseconds' worth, which a caller on an
    /// async runtime does apart ([`UserView::tile`]) rather than on a
    /// thread that other requests wait for.
    pub fn untiled(&self, definitions: &[&SignalDefinition]) -> usize {
        let batch = self
            .batch
            .as_ref()
            .map_or(0, |b| b.tiles.untiled(definitions, &b.events));
        batch + self.tail.untiled(definitions)
    }

    /// Builds the tiles a read of `definitions` needs, as that read would:
    /// reads after it find them built.
    pub fn tile(&self, definitions: &[&SignalDefinition]) {
        if let Some(batch) = &self.batch {
            batch.tiles.for_definitions(definitions, &batch.events);
        }
        self.tail.tile(definitions);
    }

    /// The value of each definition at `at`.
    ///
    /// Values of lifetime signals whose pre-aggregated state was made by a
    /// different definition, and of sliding windows reaching before the
    /// record's horizon, are computed from raw events only and reported in
    /// the second list.
    pub fn evaluate(
        &self,
        definitions: &[&SignalDefinition],
        at: Millis,
    ) -> (Vec<Value>, Vec<StaleSignal>) {
        self.evaluate_with(definitions, at, SignalDefinition::value_over)
    }

    /// [`UserView::evaluate`], each value as its JSON: what serving keeps
    /// and answers with, written without building large values first.
    pub fn evaluate_encoded(
        &self,
        definitions: &[&SignalDefinition],
        at: Millis,
    ) -> (Vec<Box<RawValue>>, Vec<StaleSignal>) {
        self.evaluate_with(definitions, at, SignalDefinition::encode_over)
    }

    fn evaluate_with<T>(
        &self,
        definitions: &[&SignalDefinition],
        at: Millis,
        finish: impl Fn(&SignalDefinition, &State, Option<&SortedMarks>, Millis) -> T,
    ) -> (Vec<T>, Vec<StaleSignal>) {
        let mut states: Vec<State> = definitions
            .iter()
            .map(|d| State::empty(&d.aggregation))
            .collect();
        // The batch's events through its tiles where it has them, the
        // events a retraction hid left out as holes.
        let tiled: Vec<Option<Arc<DefinitionTiles>>> = match &self.batch {
            Some(batch) => batch.tiles.for_definitions(definitions, &batch.events),
            None => vec![None; definitions.len()],
        };
        let hidden = self.tail.hidden();
        let holes = match &self.batch {
            Some(batch) if !hidden.is_empty() && tiled.iter().any(Option::is_some) => batch
                .ids
                .positions_of(&batch.events, hidden.iter().map(String::as_str)),
            _ => Vec::new(),
        };
        let plain: Vec<usize> = (0..definitions.len())
            .filter(|&i| tiled[i].is_none())
            .collect();
        // A set's running state over most of the record is finished beside
        // the rest, never copied into it.
        let mut marks: Vec<Option<&SortedMarks>> = vec![None; definitions.len()];
        if let Some(batch) = &self.batch {
            for (i, tiles) in tiled.iter().enumerate() {
                if let Some(tiles) = tiles {
                    let (from, until) = definitions[i].read_range(at);
                    marks[i] = tiles.fold_leaving_marks(
                        definitions[i],
                        &batch.events,
                        Holes::new(&holes),
                        from,
                        until,
                        &mut states[i],
                    );
                }
            }
        }
        if !plain.is_empty() {
            for event in self.batch_events() {
                for &i in &plain {
                    let definition = definitions[i];
                    if definition.reads(event.event_time, at) && definition.matches(event) {
                        states[i].add(&definition.aggregation, event);
                    }
                }
            }
        }
        self.tail.fold(definitions, at, &mut states);
        let mut stale = Vec::new();
        if let Some(batch) = &self.batch {
            for (definition, state) in definitions.iter().zip(states.iter_mut()) {
                // A window wider than the record's raw history (a new or
                // widened definition) misses the folded events.
                let mut is_stale = matches!(definition.window,
                    Window::Sliding(width) if at.saturating_sub(width) < batch.horizon);
                if definition.keeps_base_state() && batch.horizon <= at {
                    match batch.base.get(&definition.name) {
                        Some(base)
                            if base.fingerprint == definition.fingerprint()
                                && base.state.fits(&definition.aggregation) =>
                        {
                            state.merge(&definition.aggregation, &base.state)
                        }
                        // No old events for this user, or no old state at all.
                        None if batch.base.is_empty() => {}
                        _ => is_stale = true,
                    }
                }
                if is_stale {
                    stale.push(StaleSignal(definition.name.clone()));
                }
            }
        }
        let values = definitions
            .iter()
            .zip(states.iter())
            .zip(marks)
            .map(|((d, s), marks)| finish(d, s, marks, at))
            .collect();
        (values, stale)
    }

    /// The earliest instant after `now` at which the value of any of
    /// `definitions` can change with no new event: an event entering its
    /// windows (future event times), leaving a sliding window, or ending
    /// the current session. Re-evaluating at that instant (a timer) keeps
    /// values that time alone moves current. May name an instant at which
    /// nothing turns out to change, never one later than a change.
    ///
    /// For each definition and each way an event can move its value, the
    /// first matching event to do so is a binary search in the record's and
    /// each run's events (newest first), then a scan of at most
    /// [`NEXT_CHANGE_SCAN`] events toward newer ones for one that matches;
    /// past that the scanned events' newest time stands in (earlier than the
    /// change, so never late). A heavy user's timer is thus O(definitions ×
    /// runs × log n), not a pass over the history.
    pub fn next_change(&self, definitions: &[&SignalDefinition], now: Millis) -> Option<Millis> {
        let mut next: Option<Millis> = None;
        let record = self.batch.iter().map(|b| b.events.as_slice());
        for events in record.chain(self.tail.sorted_runs()) {
            for definition in definitions {
                for reach in reaches_of(definition) {
                    // An event at `t` moves the value at `t + reach + 1`,
                    // which is after `now` for `t >= now - reach`.
                    let after =
                        events.partition_point(|e| e.event_time >= now.saturating_sub(reach));
                    let scanned = events[..after].iter().rev().take(NEXT_CHANGE_SCAN);
                    let mut oldest_moving = None;
                    for event in scanned {
                        oldest_moving = Some(event.event_time);
                        if definition.matches(event) {
                            break;
                        }
                    }
                    if let Some(t) = oldest_moving {
                        let t = t.saturating_add(reach).saturating_add(1);
                        next = Some(next.map_or(t, |n| n.min(t)));
                    }
                }
            }
        }
        next
    }

    /// An instant after `at` before which the values of `definitions` (and
    /// which of them are stale) stay what they are at `at`, as long as the
    /// view gains no entry: never later than [`Self::next_change`] after
    /// `at`, and `Millis::MAX` when time alone changes nothing.
    ///
    /// An event moves a value when it enters the read range (one
    /// millisecond after its time) and when it leaves a window or closes a
    /// session (one millisecond after its time plus the width or the gap).
    /// For each such reach the first event to do so
    /// is found by a binary search in the record's and each run's events,
    /// which are kept newest first: the cost is O(reaches × runs × log n),
    /// not a pass over the history, so an answer can be kept until then
    /// (ADR 011). Events a retraction hides only make the bound earlier.
    pub fn holds_until(&self, definitions: &[&SignalDefinition], at: Millis) -> Millis {
        self.holds_until_each(definitions, at)
            .into_iter()
            .min()
            .unwrap_or(Millis::MAX)
    }

    /// [`Self::holds_until`] of each definition alone: the instants their
    /// values can change, found in one pass over the reaches they share.
    pub fn holds_until_each(&self, definitions: &[&SignalDefinition], at: Millis) -> Vec<Millis> {
        let mut reaches: Vec<Millis> = definitions.iter().flat_map(|d| reaches_of(d)).collect();
        reaches.sort_unstable();
        reaches.dedup();
        // For each reach, the first instant after `at` at which an event
        // reaches that far past its time.
        let reached: Vec<Millis> = reaches
            .iter()
            .map(|&reach| {
                let record = self.batch.iter().map(|b| b.events.as_slice());
                let mut until = Millis::MAX;
                for events in record.chain(self.tail.sorted_runs()) {
                    // Newest first: the events at or after `at - reach` lead.
                    let after =
                        events.partition_point(|e| e.event_time >= at.saturating_sub(reach));
                    if let Some(first) = after.checked_sub(1).map(|i| &events[i]) {
                        until = until.min(first.event_time.saturating_add(reach).saturating_add(1));
                    }
                }
                until
            })
            .collect();
        definitions
            .iter()
            .map(|definition| {
                let mut until = reaches_of(definition)
                    .map(|r| {
                        reaches
                            .binary_search(&r)
                            .map_or(Millis::MAX, |i| reached[i])
                    })
                    .min()
                    .unwrap_or(Millis::MAX);
                if let Some(batch) = &self.batch {
                    // Base states count from the horizon on, and a window
                    // reaching before the horizon is stale until it no
                    // longer does.
                    let mut consider = |t: Millis| {
                        if t > at {
                            until = until.min(t);
                        }
                    };
                    consider(batch.horizon);
                    if let Window::Sliding(width) = definition.window {
                        consider(batch.horizon.saturating_add(width));
                    }
                    // Sessions folded into the base state have events before
                    // the horizon that are not at hand: while a window or gap
                    // reaches behind the horizon, any next instant may move them.
                    if matches!(
                        definition.aggregation,
                        crate::definition::Aggregation::Sessions { .. }
                    ) {
                        let reach = reaches_of(definition).max().unwrap_or(0);
                        let reaches_behind = at.saturating_sub(reach) < batch.horizon;
                        if reaches_behind && batch.base.contains_key(&definition.name) {
                            consider(at.saturating_add(1));
                        }
                    }
                }
                until
            })
            .collect()
    }

    /// The user's events of `types` with `since <= event_time < until`,
    /// newest first (ties: larger event id first), at most `limit`.
    ///
    /// The batch record and each run of the speed tail keep their events
    /// newest first, so each is read from `until` on and the merge stops at
    /// `limit` matches or at `since`: the cost is the events skipped and
    /// taken, not the user's history.
    pub fn activity(
        &self,
        types: EventTypes,
        since: Millis,
        until: Millis,
        limit: usize,
    ) -> Vec<Event> {
        let hidden = self.tail.hidden();
        let batch_events: &[Event] = self.batch.as_ref().map_or(&[], |b| &b.events);
        let mut sources: Vec<_> = std::iter::once(batch_events)
            .chain(self.tail.sorted_runs())
            .map(|events| {
                let start = events.partition_point(|e| e.event_time >= until);
                events[start..]
                    .iter()
                    .take_while(move |e| e.event_time >= since)
                    .filter(move |e| types.contains(e.event_type))
                    .filter(move |e| hidden.is_empty() || !hidden.contains(e.event_id.as_str()))
                    .peekable()
            })
            .collect();
        let mut taken = Vec::with_capacity(limit.min(1024));
        while taken.len() < limit {
            // Few sources (the record and O(log n) runs): a scan for the
            // newest head is cheaper than a heap.
            let newest = sources
                .iter_mut()
                .enumerate()
                .filter_map(|(i, source)| source.peek().map(|e| (i, *e)))
                .min_by(|(_, a), (_, b)| newest_first(a, b))
                .map(|(i, _)| i);
            match newest.and_then(|i| sources[i].next()) {
                Some(event) => taken.push(event.clone()),
                None => break,
            }
        }
        taken
    }
}

/// The order of records, runs and activity: newest first, ties by larger
/// event id first.
pub fn newest_first(a: &Event, b: &Event) -> std::cmp::Ordering {
    (b.event_time, &b.event_id).cmp(&(a.event_time, &a.event_id))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::testing::arb_events;
    use proptest::prelude::*;
    use smol_str::format_smolstr;

    fn definitions() -> Definitions {
        let text = r#"
            [[signals]]
            name = "recent"
            events = ["view", "click"]
            aggregation = "last_distinct"
            field = "item_id"
            limit = 3
            [[signals]]
            name = "views_50"
            events = ["view"]
            aggregation = "count"
            window = "50ms"
            [[signals]]
            name = "wishlist"
            aggregation = "set"
            field = "item_id"
            add = ["wishlist_add"]
            remove = ["wishlist_remove"]
            [[signals]]
            name = "cities"
            aggregation = "top_k"
            field = "attributes.city"
            limit = 2
            [[signals]]
            name = "last_active"
            aggregation = "last_seen"
            [[signals]]
            name = "sessions_50"
            aggregation = "session_count"
            gap = "30ms"
            window = "50ms"
            [[signals]]
            name = "current_session"
            aggregation = "current_session"
            gap = "30ms"
        "#;
        crate::testing::compile_definitions(text)
    }

    /// The reference: recompute from scratch over unique, unretracted events.
    fn recompute(defs: &Definitions, events: &[Event], at: Millis) -> Vec<Value> {
        let all: Vec<&SignalDefinition> = defs.iter().collect();
        let record = UserRecord::compact(defs, events.to_vec(), Millis::MIN);
        UserView::merge(Some(Arc::new(record)), [])
            .evaluate(&all, at)
            .0
    }

    proptest! {
        /// serving(batch(log[..p]), speed(log[p..])) == recompute(log), for
        /// any split point, any horizon below `at - window`, with duplicates
        /// and retractions arriving on either side.
        #[test]
        fn batch_plus_speed_equals_recompute(
            events in arb_events(50),
            dups in prop::collection::vec(0usize..50, 0..10),
            retracted in prop::collection::vec(0usize..50, 0..5),
            split in 0usize..70,
            horizon in 0i64..60,
            at in 110i64..260,
        ) {
            let defs = definitions();
            let all: Vec<&SignalDefinition> = defs.iter().collect();
            if events.is_empty() { return Ok(()); }
            // The log: events, some repeated later (with other content), then retractions interleaved.
            let mut log: Vec<SpeedLogItem> = events.iter().cloned().map(SpeedLogItem::Event).collect();
            for d in &dups {
                let mut dup = events[d % events.len()].clone();
                dup.event_time += 7;
                log.push(SpeedLogItem::Event(dup));
            }
            let retracted_ids: HashSet<String> = retracted.iter().map(|r| events[r % events.len()].event_id.to_string()).collect();
            for id in &retracted_ids {
                log.insert(log.len() / 2, SpeedLogItem::Retract(id.clone()));
            }
            let split = split.min(log.len());

            // Reference: first occurrence per id, minus retracted ids.
            let mut seen = HashSet::new();
            let unique: Vec<Event> = log.iter().filter_map(|item| match item {
                SpeedLogItem::Event(e) if seen.insert(e.event_id.clone()) => Some(e.clone()),
                _ => None,
            }).filter(|e| !retracted_ids.contains(e.event_id.as_str())).collect();
            let expected = recompute(&defs, &unique, at);

            // Batch over log[..split], exactly as the batch layer does it.
            let mut seen = HashSet::new();
            let mut batch_retracted = HashSet::new();
            let mut batch_events = Vec::new();
            for item in &log[..split] {
                match item {
                    SpeedLogItem::Event(e) => if seen.insert(e.event_id.clone()) { batch_events.push(e.clone()) },
                    SpeedLogItem::Retract(id) => { batch_retracted.insert(id.clone()); }
                }
            }
            batch_events.retain(|e| !batch_retracted.contains(e.event_id.as_str()));
            let record = UserRecord::compact(&defs, batch_events, horizon);

            // Speed over log[split..], deduplicating against everything seen
            // before (its index covers the whole log).
            let mut speed = Vec::new();
            let mut all_retracted = batch_retracted.clone();
            for item in &log[split..] {
                match item {
                    SpeedLogItem::Event(e) => {
                        if seen.insert(e.event_id.clone()) && !all_retracted.contains(e.event_id.as_str()) {
                            speed.push(SpeedEntry::Event(e.clone()));
                        }
                    }
                    SpeedLogItem::Retract(id) => {
                        all_retracted.insert(id.clone());
                        speed.push(SpeedEntry::Retracted { event_ids: vec![id.clone()] });
                    }
                }
            }
            // Retracting an event folded into the base state cannot be undone
            // until the next batch: compare only when none was.
            let base_hit = log[split..].iter().any(|item| matches!(item, SpeedLogItem::Retract(id)
                if unique.iter().chain(events.iter()).any(|e| e.event_id == *id && e.event_time < horizon)));
            prop_assume!(!base_hit);
            // The record keeps only the last session before its horizon: a
            // late event before the horizon that joins it to an older one
            // changes the start and size of a session holding the horizon,
            // until the next batch run (documented in ADR 005).
            let session_spans_horizon = expected[current_session_index(&defs)]["start"]
                .as_str()
                .is_some_and(|start| start < crate::time::format_millis(horizon).as_str());
            let late_before_horizon = log[split..].iter().any(|item| matches!(item, SpeedLogItem::Event(e) if e.event_time < horizon));
            prop_assume!(!(session_spans_horizon && late_before_horizon));

            let view = UserView::merge(Some(Arc::new(record)), speed);
            let (values, stale) = view.evaluate(&all, at);
            prop_assert!(stale.is_empty());
            prop_assert_eq!(values, expected);
        }
    }

    proptest! {
        /// Tiles change no answer: a record read through blocks of any
        /// small sizes answers what folding its events one by one does,
        /// with speed entries (retractions included) and any `at`.
        #[test]
        fn tiles_change_no_answer(
            events in arb_events(80),
            speed_events in arb_events(10),
            retracted in prop::collection::vec(0usize..80, 0..3),
            horizon in 0i64..60,
            at in 0i64..260,
            base in 1usize..5,
        ) {
            let defs = definitions();
            let all: Vec<&SignalDefinition> = defs.iter().collect();
            let speed = speed_tail(speed_events, &events, &retracted);
            let record = |shape: crate::tiles::TileShape| {
                let mut record = UserRecord::compact(&defs, events.clone(), horizon);
                record.tiles = Tiles::with_shape(shape);
                Arc::new(record)
            };
            let sizes = vec![base, base * 3, base * 9];
            let tiled = record(crate::tiles::TileShape {
                sizes: sizes.clone(),
                map_sizes: sizes,
                min_events: 0,
                max_prefixes: 4,
                max_map_prefixes: 2,
                max_map_blocks: 6,
            });
            let plain = record(crate::tiles::TileShape { min_events: usize::MAX, ..Default::default() });
            let tiled_view = UserView::merge(Some(tiled), speed.clone());
            let with_tiles = tiled_view.evaluate(&all, at);
            let plain_view = UserView::merge(Some(plain), speed);
            let without = plain_view.evaluate(&all, at);
            prop_assert_eq!(&with_tiles, &without);
            // Written straight as JSON, with and without tiles: the same.
            let expected: Vec<String> = without.0.iter().map(Value::to_string).collect();
            for view in [&tiled_view, &plain_view] {
                let (encoded, stale) = view.evaluate_encoded(&all, at);
                let encoded: Vec<&str> = encoded.iter().map(|e| e.get()).collect();
                prop_assert_eq!(&encoded, &expected);
                prop_assert_eq!(&stale, &without.1);
            }
        }
    }

    proptest! {
        /// Activity read from the sorted record stops early and answers
        /// what filtering and sorting every event does.
        #[test]
        fn activity_reads_only_what_it_returns_and_answers_the_same(
            events in arb_events(60),
            speed_events in arb_events(10),
            retracted in prop::collection::vec(0usize..60, 0..3),
            type_bits in 1u8..32,
            since in -10i64..210,
            width in 0i64..220,
            limit in 0usize..30,
        ) {
            let defs = definitions();
            let speed = speed_tail(speed_events, &events, &retracted);
            let mut types = EventTypes::default();
            for t in signals_schemas::EventType::ALL {
                if type_bits & (1 << (t as u8)) != 0 {
                    types.insert(t);
                }
            }
            let until = since + width;
            let record = Arc::new(UserRecord::compact(&defs, events, Millis::MIN));
            let view = UserView::merge(Some(record), speed);
            let mut expected: Vec<&Event> = view
                .events()
                .filter(|e| types.contains(e.event_type) && e.event_time >= since && e.event_time < until)
                .collect();
            expected.sort_by(|a, b| (b.event_time, &b.event_id).cmp(&(a.event_time, &a.event_id)));
            let expected: Vec<Event> = expected.into_iter().take(limit).cloned().collect();
            prop_assert_eq!(view.activity(types, since, until, limit), expected);
        }
    }

    proptest! {
        /// A speed tail extended write by write, its runs merged and tiled
        /// on the way, answers signals and activity like recomputing every
        /// counted event from scratch: retractions of batch and tail events
        /// (before or after them), ids the record already holds, any `at`.
        #[test]
        fn a_tail_extended_write_by_write_answers_like_a_recompute(
            batch_events in arb_events(40),
            tail_events in arb_events(400),
            retractions in prop::collection::vec((0usize..440, 0usize..440), 0..6),
            cuts in prop::collection::vec(1usize..90, 1..12),
            copies in prop::collection::vec(0usize..40, 0..3),
            at in 0i64..260,
            limit in 1usize..40,
        ) {
            let defs = definitions();
            let all: Vec<&SignalDefinition> = defs.iter().collect();
            let batch_events: Vec<Event> = batch_events.into_iter().map(|mut e| {
                e.event_id = format_smolstr!("b-{}", e.event_id);
                e
            }).collect();
            let mut entries: Vec<SpeedEntry> = tail_events.into_iter().map(|mut e| {
                e.event_id = format_smolstr!("s-{}", e.event_id);
                SpeedEntry::Event(e)
            }).collect();
            // Copies of record events reaching the speed layer too.
            for &c in &copies {
                if let Some(e) = batch_events.get(c) {
                    entries.push(SpeedEntry::Event(e.clone()));
                }
            }
            let ids: Vec<String> = batch_events.iter().map(|e| e.event_id.to_string())
                .chain(entries.iter().filter_map(|e| match e { SpeedEntry::Event(e) => Some(e.event_id.to_string()), _ => None }))
                .collect();
            let mut retracted = HashSet::new();
            for &(which, place) in &retractions {
                if ids.is_empty() { break; }
                let id = ids[which % ids.len()].clone();
                retracted.insert(id.clone());
                entries.insert(place % (entries.len() + 1), SpeedEntry::Retracted { event_ids: vec![id] });
            }
            let mut counted: Vec<Event> = batch_events.clone();
            for entry in &entries {
                if let SpeedEntry::Event(e) = entry {
                    if !counted.iter().any(|c| c.event_id == e.event_id) {
                        counted.push(e.clone());
                    }
                }
            }
            counted.retain(|e| !retracted.contains(e.event_id.as_str()));
            let expected = recompute(&defs, &counted, at);

            let record = Arc::new(UserRecord::compact(&defs, batch_events, Millis::MIN));
            let mut tail = SpeedTail::default();
            let mut rest = entries.as_slice();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let (now, later) = rest.split_at((*cut).min(rest.len()));
                tail = tail.extended(Some(&record), now.to_vec());
                rest = later;
            }
            let view = UserView::with_tail(Some(record), tail);
            prop_assert_eq!(view.evaluate(&all, at).0, expected);

            let mut types = EventTypes::default();
            for t in signals_schemas::EventType::ALL {
                types.insert(t);
            }
            let mut newest: Vec<Event> = counted.into_iter().filter(|e| e.event_time < at).collect();
            newest.sort_by(newest_first);
            newest.truncate(limit);
            prop_assert_eq!(view.activity(types, Millis::MIN, at, limit), newest);
        }
    }

    /// A speed tail of `speed_events` (ids of their own) and a retraction
    /// of the batch `events` that `retracted` picks, if any.
    fn speed_tail(
        speed_events: Vec<Event>,
        events: &[Event],
        retracted: &[usize],
    ) -> Vec<SpeedEntry> {
        let mut speed: Vec<SpeedEntry> = speed_events
            .into_iter()
            .map(|mut e| {
                e.event_id = format_smolstr!("s-{}", e.event_id);
                SpeedEntry::Event(e)
            })
            .collect();
        if !events.is_empty() && !retracted.is_empty() {
            let event_ids = retracted
                .iter()
                .map(|r| events[r % events.len()].event_id.to_string())
                .collect();
            speed.push(SpeedEntry::Retracted { event_ids });
        }
        speed
    }

    fn current_session_index(defs: &Definitions) -> usize {
        defs.iter()
            .position(|d| d.name == "current_session")
            .expect("defined")
    }

    proptest! {
        /// Values stay what they are from `now` until `next_change`.
        #[test]
        fn values_hold_until_the_next_change(events in arb_events(40), now in 0i64..260) {
            let defs = definitions();
            let all: Vec<&SignalDefinition> = defs.iter().collect();
            let record = UserRecord::compact(&defs, events, Millis::MIN);
            let view = UserView::merge(Some(Arc::new(record)), []);
            let at_now = view.evaluate(&all, now).0;
            let until = view.next_change(&all, now).unwrap_or(now + 400);
            prop_assert!(until > now);
            for at in now..until {
                prop_assert_eq!(&view.evaluate(&all, at).0, &at_now, "at {}", at);
            }
        }
    }

    proptest! {
        /// An answer kept until `holds_until` is the answer at every instant
        /// before it, with a speed tail and hidden record events too, and
        /// `holds_until` is never later than `next_change`.
        #[test]
        fn values_hold_until_holds_until(
            events in arb_events(40),
            speed_events in arb_events(30),
            retracted in prop::collection::vec(0usize..40, 0..3),
            horizon in prop::option::of(-50i64..150),
            at in 0i64..260,
        ) {
            let defs = definitions();
            let all: Vec<&SignalDefinition> = defs.iter().collect();
            let horizon = horizon.unwrap_or(Millis::MIN);
            let record = UserRecord::compact(&defs, events.clone(), horizon);
            let speed = speed_tail(speed_events, &events, &retracted);
            let view = UserView::merge(Some(Arc::new(record)), speed);
            let until = view.holds_until(&all, at);
            prop_assert!(until > at);
            let next = view.next_change(&all, at);
            if let Some(next) = next {
                prop_assert!(until <= next, "{} > {}", until, next);
            }
            // Never later than the exhaustive pass over every counted event.
            if let Some(exact) = exhaustive_next_change(&view, &all, at) {
                prop_assert!(next.is_some_and(|n| at < n && n <= exact), "{:?} vs {}", next, exact);
            }
            let answer = view.evaluate(&all, at);
            // Each value alone holds until its own bound, the earliest of
            // which is the answer's.
            let each = view.holds_until_each(&all, at);
            prop_assert_eq!(each.iter().copied().min(), Some(until));
            let last = each.iter().copied().max().unwrap_or(until);
            let stale = |answer: &(Vec<Value>, Vec<StaleSignal>), name: &str| {
                answer.1.iter().any(|s| s.0 == name)
            };
            for later in at..last.min(at + 400) {
                let then = view.evaluate(&all, later);
                if later < until {
                    prop_assert_eq!(&then, &answer, "at {}", later);
                }
                for (i, definition) in all.iter().enumerate().filter(|(i, _)| later < each[*i]) {
                    prop_assert_eq!(&then.0[i], &answer.0[i], "{} at {}", definition.name, later);
                    prop_assert_eq!(stale(&then, &definition.name), stale(&answer, &definition.name));
                }
            }
        }
    }

    /// What `next_change` answered before it searched: every counted
    /// event, every definition it matches.
    fn exhaustive_next_change(
        view: &UserView,
        definitions: &[&SignalDefinition],
        now: Millis,
    ) -> Option<Millis> {
        let mut next: Option<Millis> = None;
        let mut consider = |t: Millis| {
            if t > now && next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        for event in view.events() {
            for definition in definitions.iter().filter(|d| d.matches(event)) {
                let t = event.event_time;
                consider(t.saturating_add(1));
                if let Window::Sliding(width) = definition.window {
                    consider(t.saturating_add(width).saturating_add(1));
                }
                if let crate::definition::Aggregation::Sessions { gap, .. } = definition.aggregation
                {
                    consider(t.saturating_add(gap).saturating_add(1));
                }
            }
        }
        next
    }

    #[derive(Clone, Debug)]
    enum SpeedLogItem {
        Event(Event),
        Retract(String),
    }

    #[test]
    fn tiling_ahead_builds_what_the_read_would_and_changes_no_answer() {
        let defs = definitions();
        let all: Vec<&SignalDefinition> = defs.iter().collect();
        let view_at = |id: String, time| {
            crate::testing::event(&id, signals_schemas::EventType::View, "a", time)
        };
        let events: Vec<Event> = (0..3_000).map(|i| view_at(format!("e{i}"), i)).collect();
        let speed: Vec<SpeedEntry> = (0..300)
            .map(|i| SpeedEntry::Event(view_at(format!("s{i}"), 3_000 + i)))
            .collect();
        let record = || Arc::new(UserRecord::compact(&defs, events.clone(), 0));
        let view = UserView::merge(Some(record()), speed.clone());
        assert!(view.untiled(&all) >= 3_000, "{}", view.untiled(&all));

        // Tiled through a clone (what a caller hands to another thread).
        view.clone().tile(&all[..2]);
        assert_eq!(view.untiled(&all[..2]), 0);
        assert!(
            view.untiled(&all) >= 3_000,
            "the other definitions are not built"
        );
        view.clone().tile(&all);
        assert_eq!(view.untiled(&all), 0);

        let untouched = UserView::merge(Some(record()), speed);
        for at in [10, 2_999, 3_150, 4_000] {
            assert_eq!(view.evaluate(&all, at), untouched.evaluate(&all, at));
        }
    }

    #[test]
    fn deletion_voids_everything_before_and_after_it() {
        let defs = definitions();
        let all: Vec<&SignalDefinition> = defs.iter().collect();
        let event =
            |id: &str, time| crate::testing::event(id, signals_schemas::EventType::View, "a", time);
        let empty = UserView::default().evaluate(&all, 100).0;
        let record = Arc::new(UserRecord::compact(&defs, vec![event("e1", 10)], 0));

        let speed = [
            SpeedEntry::Event(event("e2", 20)),
            SpeedEntry::Deleted,
            SpeedEntry::Event(event("e3", 30)),
        ];
        let view = UserView::merge(Some(record.clone()), speed.clone());
        assert!(view.is_empty());
        assert_eq!(view.evaluate(&all, 100).0, empty);

        // Once the batch has seen the deletion, its record voids what the
        // speed layer wrote after it.
        let after_batch = UserView::merge(
            Some(Arc::new(UserRecord::erased(0))),
            [SpeedEntry::Event(event("e4", 40))],
        );
        assert!(after_batch.is_empty());
        assert_eq!(after_batch.evaluate(&all, 100).0, empty);

        // Without a deletion the same entries count.
        let alive = UserView::merge(Some(record), [SpeedEntry::Event(event("e4", 40))]);
        assert_eq!(alive.events().count(), 2);
    }

    #[test]
    fn a_changed_definition_reports_its_base_state_as_stale() {
        let defs = definitions();
        let old = crate::testing::event("e1", signals_schemas::EventType::View, "a", 10);
        let record = UserRecord::compact(&defs, vec![old], 50);
        let mut changed_spec = defs.get("recent").expect("defined").spec.clone();
        changed_spec.limit = Some(5);
        let changed = Definitions::compile(&[changed_spec]).expect("valid");
        let selected: Vec<&SignalDefinition> = changed.iter().collect();
        let (_, stale) = UserView::merge(Some(Arc::new(record)), []).evaluate(&selected, 100);
        assert_eq!(stale, vec![StaleSignal("recent".into())]);
    }

    #[test]
    fn a_window_reaching_before_the_horizon_is_stale() {
        let defs = definitions();
        let views_50 = [defs.get("views_50").expect("defined")];
        let record = Arc::new(UserRecord::compact(&defs, Vec::new(), 100));
        let view = UserView::merge(Some(record), []);
        assert!(view.evaluate(&views_50, 150).1.is_empty());
        assert_eq!(
            view.evaluate(&views_50, 149).1,
            vec![StaleSignal("views_50".into())]
        );
    }
}
