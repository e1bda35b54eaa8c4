//! The speed tail kept ready for reads.
//!
//! Between two batch runs the speed layer appends a user's events as speed
//! entries. Decoding and folding all of them on every read made a popular
//! user's read cost O(tail): the tail is a tenth of the history or more by
//! the end of the day, and the users read most are the ones who write most.
//!
//! A [`SpeedTail`] holds the entries seen so far as a few runs of events,
//! each newest first and tiled like a batch record ([`crate::tiles`]). The
//! runs' sizes more than halve from the oldest run to the newest (a binary
//! counter: an event is copied O(log n) times over the tail's life), and
//! runs too small to tile total fewer than [`TILED_RUN`] events, so a read
//! costs O(log n) block lookups per signal, not n events. Extending a tail
//! makes a new value that shares the old runs: a reader holding the old one
//! is not disturbed, and the serving process keeps one per user, extended
//! with what the store has made durable since (see `signals-store`'s
//! `TailCache`).
//!
//! The entries' rules are [`crate::UserView::merge`]'s: a retraction hides
//! its ids wherever they are (the batch record, the runs, or events still
//! to come), a deletion empties the user for good, and an id the batch
//! record already holds does not count twice.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use signals_schemas::{Event, Millis};

use crate::aggregate::State;
use crate::definition::SignalDefinition;
use crate::tiles::{TileShape, Tiles};
use crate::view::{newest_first, SpeedEntry, UserRecord};

/// Runs smaller than this are folded event by event; together they hold
/// fewer events than this.
pub const TILED_RUN: usize = 64;

/// A user's speed entries since a batch position, prepared for reads.
#[derive(Clone, Debug, Default)]
pub struct SpeedTail {
    /// Largest (oldest) first; each newest first, none hidden.
    runs: Vec<Arc<Run>>,
    /// Ids retracted by entries of the tail.
    hidden: Arc<HashSet<String>>,
    /// A deletion marker was among the entries: nothing of the user counts.
    deleted: bool,
    /// Drawn anew whenever an extension changes the tail (0: the empty
    /// tail): equal generations, equal tails.
    generation: u64,
}

/// The last generation drawn by any tail of this process.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Events newest first (by event time, then event id, like a record), and
/// their tiles, built on the first read that needs them.
#[derive(Debug)]
struct Run {
    events: Vec<Event>,
    tiles: Tiles,
}

impl Run {
    fn new(events: Vec<Event>) -> Arc<Run> {
        Arc::new(Run {
            events,
            tiles: Tiles::with_shape(run_shape()),
        })
    }
}

/// Blocks from 16 events: a run of a few hundred events already answers
/// with a handful of merges.
fn run_shape() -> TileShape {
    TileShape {
        sizes: vec![16, 128, 1024, 8192, 65_536, 524_288],
        map_sizes: vec![128, 1024, 8192, 65_536, 524_288],
        min_events: TILED_RUN,
        ..TileShape::default()
    }
}

impl SpeedTail {
    /// The tail of a user whose speed entries are `entries`, in log order.
    pub fn from_entries(
        batch: Option<&UserRecord>,
        entries: impl IntoIterator<Item = SpeedEntry>,
    ) -> SpeedTail {
        SpeedTail::default().extended(batch, entries)
    }

    /// This tail followed by `entries` (newer in log order than those in
    /// it), for a user whose published record is `batch`.
    pub fn extended(
        &self,
        batch: Option<&UserRecord>,
        entries: impl IntoIterator<Item = SpeedEntry>,
    ) -> SpeedTail {
        if self.deleted {
            return self.clone();
        }
        let mut events = Vec::new();
        let mut retracted = HashSet::new();
        for entry in entries {
            match entry {
                SpeedEntry::Event(event) => events.push(event),
                SpeedEntry::Retracted { event_ids } => retracted.extend(event_ids),
                SpeedEntry::Deleted => {
                    return SpeedTail {
                        deleted: true,
                        generation: next_generation(),
                        ..SpeedTail::default()
                    }
                }
            }
        }
        let mut tail = self.clone();
        retracted.retain(|id| !tail.hidden.contains(id));
        if !retracted.is_empty() {
            tail.generation = next_generation();
            tail.hide(&retracted);
            Arc::make_mut(&mut tail.hidden).extend(retracted);
        }
        events.retain(|e| !tail.hidden.contains(e.event_id.as_str()));
        if let Some(batch) = batch.filter(|b| !b.events.is_empty()) {
            drop_batch_ids(batch, &mut events);
        }
        if !events.is_empty() {
            tail.generation = next_generation();
            tail.push(events);
        }
        tail
    }

    /// Rebuilds the runs holding any of `ids` without them: a retraction
    /// reaching the speed tail is rare, and blocks cannot take one event out.
    fn hide(&mut self, ids: &HashSet<String>) {
        for run in &mut self.runs {
            if run.events.iter().any(|e| ids.contains(e.event_id.as_str())) {
                let kept = run
                    .events
                    .iter()
                    .filter(|e| !ids.contains(e.event_id.as_str()))
                    .cloned()
                    .collect();
                *run = Run::new(kept);
            }
        }
        self.runs.retain(|run| !run.events.is_empty());
    }

    /// Adds `events` as the newest run, then merges runs until their sizes
    /// more than halve from one to the next and the small ones are few.
    fn push(&mut self, mut events: Vec<Event>) {
        events.sort_unstable_by(newest_first);
        self.runs.push(Run::new(events));
        loop {
            let n = self.runs.len();
            if n < 2 {
                return;
            }
            let (older, newer) = (self.runs[n - 2].events.len(), self.runs[n - 1].events.len());
            // Binary counter, and the runs too small to tile never adding
            // up to a tiled run's worth of plain folding.
            let small: usize = self
                .runs
                .iter()
                .map(|r| r.events.len())
                .filter(|&len| len < TILED_RUN)
                .sum();
            let merge = older <= 2 * newer || (older < TILED_RUN && small >= TILED_RUN);
            if !merge {
                return;
            }
            let (Some(newer), Some(older)) = (self.runs.pop(), self.runs.pop()) else {
                return;
            };
            self.runs
                .push(Run::new(merge_newest_first(&older.events, &newer.events)));
        }
    }

    /// Which version of a kept tail this is: a tail extended with entries
    /// that change it gets a generation no other tail of this process has,
    /// one extended with nothing keeps its own, and the empty tail is 0. So
    /// an answer computed over one generation holds for that generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a deletion marker was among the entries.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// Ids retracted by the tail's entries (they may be batch events).
    pub fn hidden(&self) -> &HashSet<String> {
        &self.hidden
    }

    /// Events that count, in no particular order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.runs.iter().flat_map(|r| r.events.iter())
    }

    /// How many events count.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.events.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The runs' events, each newest first.
    pub(crate) fn sorted_runs(&self) -> impl Iterator<Item = &[Event]> {
        self.runs.iter().map(|r| r.events.as_slice())
    }

    /// How many of the tail's events a read of `definitions` would tile
    /// first ([`Tiles::untiled`]).
    pub(crate) fn untiled(&self, definitions: &[&SignalDefinition]) -> usize {
        self.runs
            .iter()
            .map(|run| run.tiles.untiled(definitions, &run.events))
            .sum()
    }

    /// Builds the tiles a read of `definitions` needs, as such a read would.
    pub(crate) fn tile(&self, definitions: &[&SignalDefinition]) {
        for run in &self.runs {
            run.tiles.for_definitions(definitions, &run.events);
        }
    }

    /// Adds to `states[i]` what `definitions[i]` reads at `at` of the tail.
    pub(crate) fn fold(&self, definitions: &[&SignalDefinition], at: Millis, states: &mut [State]) {
        for run in &self.runs {
            let tiled = run.tiles.for_definitions(definitions, &run.events);
            for ((definition, state), tiles) in definitions.iter().zip(states.iter_mut()).zip(tiled)
            {
                let (from, until) = definition.read_range(at);
                match tiles {
                    Some(tiles) => tiles.fold(definition, &run.events, from, until, state),
                    None => {
                        for event in run.events.iter().filter(|e| {
                            from <= e.event_time && e.event_time < until && definition.matches(e)
                        }) {
                            state.add(&definition.aggregation, event);
                        }
                    }
                }
            }
        }
    }
}

/// Drops from `events` the ids `batch` holds: the speed layer already drops
/// ids it saw, this guards the handoff against one that reached both layers.
fn drop_batch_ids(batch: &UserRecord, events: &mut Vec<Event>) {
    batch.ids.retain_absent(&batch.events, events);
}

/// Which ids a record's events hold: their hashes with the event's index,
/// sorted, built on first use (derived from the events like tiles, never
/// stored). A lookup is a binary search, then a comparison with the few
/// events of that hash: an extension of a heavy user's tail costs
/// O(k log n), not a pass over the record.
#[derive(Default)]
pub struct EventIds(OnceLock<Vec<(u64, u32)>>);

impl EventIds {
    /// Whether the digest is built: a first use builds it, O(n log n).
    pub fn is_built(&self) -> bool {
        self.0.get().is_some()
    }

    /// Whether `events` (the record the digest is of) holds `id`.
    pub fn contains(&self, events: &[Event], id: &str) -> bool {
        let hashes = self.hashes(events);
        let hash = id_hash(id);
        let first = hashes.partition_point(|&(h, _)| h < hash);
        holds(&hashes[first..], events, id, hash)
    }

    /// Keeps the `others` whose ids `events` (the record the digest is
    /// of) does not hold. Many at once (a cold read of a heavy user's tail:
    /// 100k ids against a million) are sorted by hash and walked beside the
    /// record's hashes in one pass, in memory order; a binary search each
    /// was a cache miss per step, a fifth of that read.
    pub fn retain_absent(&self, events: &[Event], others: &mut Vec<Event>) {
        let hashes = self.hashes(events);
        if others.len() < hashes.len() / 64 {
            others.retain(|e| !self.contains(events, &e.event_id));
            return;
        }
        let mut probes: Vec<(u64, usize)> = others
            .iter()
            .enumerate()
            .map(|(i, e)| (id_hash(&e.event_id), i))
            .collect();
        probes.sort_unstable();
        let mut held = vec![false; others.len()];
        let mut at = 0;
        for (hash, i) in probes {
            while hashes.get(at).is_some_and(|&(h, _)| h < hash) {
                at += 1;
            }
            held[i] = holds(&hashes[at..], events, &others[i].event_id, hash);
        }
        let mut held = held.into_iter();
        others.retain(|_| !held.next().unwrap_or(false));
    }

    /// The positions (time order: `events[n - 1 - p]` is at `p`) of the
    /// events of `events` (the record the digest is of) whose ids are in
    /// `ids`, ascending: O(|ids| log n), not a pass over the record.
    pub fn positions_of<'i>(
        &self,
        events: &[Event],
        ids: impl IntoIterator<Item = &'i str>,
    ) -> Vec<usize> {
        let hashes = self.hashes(events);
        let n = events.len();
        let mut positions: Vec<usize> = ids
            .into_iter()
            .flat_map(|id| {
                let hash = id_hash(id);
                let first = hashes.partition_point(|&(h, _)| h < hash);
                hashes[first..]
                    .iter()
                    .take_while(move |&&(h, _)| h == hash)
                    .map(|&(_, i)| i as usize)
                    .filter(move |&i| events.get(i).is_some_and(|e| e.event_id == id))
            })
            .map(|i| n - 1 - i)
            .collect();
        positions.sort_unstable();
        positions.dedup();
        positions
    }

    /// The record's (id hash, index) pairs, sorted.
    fn hashes(&self, events: &[Event]) -> &[(u64, u32)] {
        self.0.get_or_init(|| {
            let mut hashes: Vec<(u64, u32)> = events
                .iter()
                .zip(0u32..)
                .map(|(e, i)| (id_hash(&e.event_id), i))
                .collect();
            hashes.sort_unstable();
            hashes
        })
    }
}

/// Whether an event of `events` that `from` (sorted hashes, starting at
/// the first not below `hash`, `id`'s) points at is `id`.
fn holds(from: &[(u64, u32)], events: &[Event], id: &str, hash: u64) -> bool {
    from.iter()
        .take_while(|&&(h, _)| h == hash)
        .any(|&(_, i)| events.get(i as usize).is_some_and(|e| e.event_id == id))
}

fn id_hash(id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

/// Derived from the events: a copy starts without it.
impl Clone for EventIds {
    fn clone(&self) -> Self {
        EventIds::default()
    }
}

/// Derived from the events: never makes two records differ.
impl PartialEq for EventIds {
    fn eq(&self, _: &EventIds) -> bool {
        true
    }
}

impl std::fmt::Debug for EventIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventIds")
            .field("built", &self.0.get().map(Vec::len))
            .finish()
    }
}

/// Two newest-first runs as one.
fn merge_newest_first(a: &[Event], b: &[Event]) -> Vec<Event> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if newest_first(x, y).is_le() => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some(event) => merged.push(event.clone()),
            None => return merged,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::arb_events;

    proptest! {
        /// However a tail is cut into extensions, it holds the same events,
        /// its runs stay sorted and few, and the small ones stay small.
        #[test]
        fn runs_stay_sorted_few_and_mostly_tiled(
            events in arb_events(400),
            cuts in prop::collection::vec(1usize..40, 1..60),
        ) {
            let mut tail = SpeedTail::default();
            let mut rest = events.as_slice();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let (now, later) = rest.split_at((*cut).min(rest.len()));
                tail = tail.extended(None, now.iter().cloned().map(SpeedEntry::Event));
                rest = later;
            }
            let mut held: Vec<&str> = tail.events().map(|e| e.event_id.as_str()).collect();
            let mut given: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
            held.sort_unstable();
            given.sort_unstable();
            prop_assert_eq!(held, given);
            for run in tail.sorted_runs() {
                prop_assert!(run.is_sorted_by(|a, b| newest_first(a, b).is_le()));
            }
            let sizes: Vec<usize> = tail.sorted_runs().map(<[Event]>::len).collect();
            prop_assert!(sizes.windows(2).all(|w| w[0] > 2 * w[1] || w[0] < TILED_RUN), "{:?}", sizes);
            let small: usize = sizes.iter().filter(|&&s| s < TILED_RUN).sum();
            prop_assert!(small < TILED_RUN, "{:?}", sizes);
        }
    }

    proptest! {
        /// Few ids or many (searched one by one, or walked beside the
        /// record's hashes), the ids a record holds are dropped and no
        /// other, in order.
        #[test]
        fn a_records_ids_are_dropped_however_many_are_asked(
            record in prop::collection::vec(0u16..400, 0..300),
            asked in prop::collection::vec(0u16..400, 0..300),
        ) {
            let event = |n: &u16| crate::testing::event(&format!("e{n}"), signals_schemas::EventType::View, "i", 1);
            let record: Vec<Event> = record.iter().map(event).collect();
            let asked: Vec<Event> = asked.iter().map(event).collect();
            let expected: Vec<Event> = asked
                .iter()
                .filter(|e| !record.iter().any(|r| r.event_id == e.event_id))
                .cloned()
                .collect();
            let ids = EventIds::default();
            let mut kept = asked.clone();
            ids.retain_absent(&record, &mut kept);
            prop_assert_eq!(&kept, &expected);
            // A few at a time: the binary searches.
            let mut kept = Vec::new();
            for one in &asked {
                let mut few = vec![one.clone()];
                ids.retain_absent(&record, &mut few);
                kept.extend(few);
            }
            prop_assert_eq!(&kept, &expected);
        }
    }

    #[test]
    fn a_retraction_hides_events_before_and_after_it_and_a_deletion_ends_the_tail() {
        let event =
            |id: &str, time| crate::testing::event(id, signals_schemas::EventType::View, "i", time);
        let tail = SpeedTail::from_entries(
            None,
            [
                SpeedEntry::Event(event("a", 1)),
                SpeedEntry::Retracted {
                    event_ids: vec!["a".into(), "b".into()],
                },
            ],
        );
        assert!(tail.is_empty());
        let tail = tail.extended(
            None,
            [
                SpeedEntry::Event(event("b", 2)),
                SpeedEntry::Event(event("c", 3)),
            ],
        );
        let ids: Vec<&str> = tail.events().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["c"]);
        assert!(tail.hidden().contains("a") && tail.hidden().contains("b"));
        let gone = tail.extended(None, [SpeedEntry::Deleted]);
        assert!(gone.is_deleted() && gone.is_empty());
        let still = gone.extended(None, [SpeedEntry::Event(event("d", 4))]);
        assert!(still.is_deleted() && still.is_empty());
    }
}
