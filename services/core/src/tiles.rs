//! Tiles: aggregation states over blocks of a batch record's events, so that
//! a read costs about the same for the heaviest user as for a light one.
//!
//! A published record holds a user's raw events of the serving horizon
//! (retention + widest window), newest first. Folding all of them into every
//! requested signal on every read made a read cost O(events). Instead, the
//! record's events, in time order, are cut into blocks of fixed *counts* at a
//! few levels (64, 512, … 262144 events; fan-out 8), and for each definition
//! every block keeps the state of its matching events. A window `[from,
//! until)` is two binary searches, then whole blocks merged (largest first)
//! and raw events only at the two edges, fewer than a smallest block on each
//! side; a window from the first event (lifetime signals, sessions) starts
//! from a running state kept at block boundaries. O(log n + levels ×
//! fan-out) per signal, exact at any millisecond, because states merge
//! exactly like folding (the monoid law of [`State::merge`], property-tested
//! there and for tiles below).
//!
//! Blocks by count rather than by time bucket: a heavy user's hour holds
//! thousands of events, a light user's day a handful, and a block's cost is
//! what it holds. Map-valued states (last-k, sets, top-k, distinct, sessions)
//! start at 128 events a block, leave out levels of more than 8,192 blocks
//! (a record of millions starts at 512) and keep few running states: their
//! blocks weigh kilobytes, and memory beside the record stays a fraction of
//! it (a 1M-event user over 20k items: 139 MiB of tiles beside 819 MiB,
//! against 79 MiB at 2,048 blocks, which made reads at past hours 16 %
//! slower with edges of up to 511 events). A set's running states are
//! kept newest first ([`SortedMarks`]), to be finished beside the rest of
//! a read rather than copied into it.
//! Tiles are derived data: built on a record's first read (every definition
//! that read asks for, in one pass over the events), kept beside the
//! decoded record in the store's record cache, never stored.
//! Records too small for tiles to pay keep the plain fold.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use signals_schemas::{Event, Millis};

use crate::aggregate::{SortedMarks, State};
use crate::definition::{Aggregation, SignalDefinition, SignalSpec};
use crate::session::Sessions;

/// Block sizes (events per block, each a multiple of the one before), the
/// smallest record worth tiling, and how many running states to keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileShape {
    /// For states of fixed size (counts, sums, extremes, first/last seen).
    pub sizes: Vec<usize>,
    /// For states that grow with distinct values or sessions.
    pub map_sizes: Vec<usize>,
    pub min_events: usize,
    /// Running states are kept at the finest level with at most this many
    /// blocks (fixed-size states / the others).
    pub max_prefixes: usize,
    pub max_map_prefixes: usize,
    /// A level of map-valued states with more blocks than this is left
    /// out: fine blocks pay for a record of thousands of events (edges of
    /// at most 127 events, not 511), not for one of millions.
    pub max_map_blocks: usize,
}

impl Default for TileShape {
    fn default() -> Self {
        TileShape {
            sizes: vec![64, 512, 4096, 32_768, 262_144],
            map_sizes: vec![128, 512, 4096, 32_768, 262_144],
            min_events: 1024,
            max_prefixes: 2048,
            max_map_prefixes: 64,
            max_map_blocks: 8192,
        }
    }
}

/// One definition's states over blocks of a record's events.
///
/// Positions count the record's events in time order: position `p` is
/// `events[n - 1 - p]` (records keep their events newest first).
#[derive(Debug)]
pub struct DefinitionTiles {
    /// The definition the blocks were folded with.
    spec: SignalSpec,
    /// Per level, smallest first: its block size and the state of each
    /// complete block (`states[b]` folds positions `b * size..(b + 1) * size`).
    levels: Vec<(usize, Vec<State>)>,
    /// Running states at the block boundaries of one level (`states[k]`
    /// folds positions `..(k + 1) * size`): one merge replaces most of the
    /// blocks a window from the first event would merge.
    prefixes: Option<(usize, Vec<Running>)>,
}

/// A running state as kept: a set's in answer order (a heavy user's
/// wishlist holds thousands of members, and a read then walks them
/// instead of copying and sorting them), any other as it is.
#[derive(Debug)]
enum Running {
    State(State),
    Marks(SortedMarks),
}

/// The block sizes of `aggregation`'s levels over `events` events,
/// smallest first.
fn level_sizes(aggregation: &Aggregation, events: usize, shape: &TileShape) -> Vec<usize> {
    let grows = grows(aggregation);
    let sizes = if grows {
        &shape.map_sizes
    } else {
        &shape.sizes
    };
    sizes
        .iter()
        .copied()
        .filter(|&size| size > 0 && size <= events)
        .filter(|&size| !grows || events / size <= shape.max_map_blocks)
        .collect()
}

/// `definition`'s state over the matching events of `block`.
fn fold_block(definition: &SignalDefinition, block: &[Event]) -> State {
    let aggregation = &definition.aggregation;
    let matching = block.iter().filter(|e| definition.matches(e));
    // A block is in time order, so its sessions are one sweep; folded one
    // event at a time, newest first, each event would move the start (the
    // key) of the session it joins.
    if let Aggregation::Sessions { gap, .. } = aggregation {
        let oldest_first = matching.rev().map(|e| e.event_time);
        return State::Sessions(Sessions::of_sorted_times(oldest_first, *gap));
    }
    let mut state = State::empty(aggregation);
    for event in matching {
        state.add(aggregation, event);
    }
    state.trim(aggregation);
    state
}

/// `definition`'s states over `events` in blocks of `size`, oldest first.
fn fold_blocks(definition: &SignalDefinition, events: &[Event], size: usize) -> Vec<State> {
    events
        .rchunks_exact(size)
        .map(|block| fold_block(definition, block))
        .collect()
}

/// Whether `aggregation`'s states grow with what they see.
fn grows(aggregation: &Aggregation) -> bool {
    matches!(
        aggregation,
        Aggregation::LastDistinct { .. }
            | Aggregation::Set { .. }
            | Aggregation::TopK { .. }
            | Aggregation::DistinctCount(_)
            | Aggregation::Sessions { .. }
    )
}

impl DefinitionTiles {
    /// Folds the blocks of `definition` over `events` (newest first) at the
    /// sizes `shape` gives its kind of state.
    pub fn build(definition: &SignalDefinition, events: &[Event], shape: &TileShape) -> Self {
        let mut built = DefinitionTiles::build_all(&[definition], events, shape);
        built
            .pop()
            .unwrap_or_else(|| DefinitionTiles::over(definition, Vec::new(), shape))
    }

    /// [`build`](DefinitionTiles::build) for each of `definitions`, with
    /// one pass over the events for all of them: block by block, each
    /// block folded by every definition while it is in the cache. A first
    /// read asks for every signal, and a pass each was a read of the whole
    /// record from memory per definition.
    pub fn build_all(
        definitions: &[&SignalDefinition],
        events: &[Event],
        shape: &TileShape,
    ) -> Vec<Self> {
        let sizes: Vec<Vec<usize>> = definitions
            .iter()
            .map(|d| level_sizes(&d.aggregation, events.len(), shape))
            .collect();
        let mut smallest: Vec<Vec<State>> = vec![Vec::new(); definitions.len()];
        let mut firsts: Vec<usize> = sizes.iter().filter_map(|s| s.first().copied()).collect();
        firsts.sort_unstable();
        firsts.dedup();
        for size in firsts {
            let at: Vec<usize> = (0..definitions.len())
                .filter(|&i| sizes[i].first() == Some(&size))
                .collect();
            for &i in &at {
                smallest[i].reserve_exact(events.len() / size);
            }
            // From the oldest events on: position order.
            for block in events.rchunks_exact(size) {
                for &i in &at {
                    smallest[i].push(fold_block(definitions[i], block));
                }
            }
        }
        definitions
            .iter()
            .zip(sizes)
            .zip(smallest)
            .map(|((definition, sizes), mut smallest)| {
                let mut levels: Vec<(usize, Vec<State>)> = Vec::new();
                for size in sizes {
                    let states = match levels.last() {
                        // A block of this level merges whole blocks of the one below.
                        Some((below, below_states)) if size % below == 0 => below_states
                            .chunks_exact(size / below)
                            .map(|parts| {
                                let aggregation = &definition.aggregation;
                                let mut state = State::empty(aggregation);
                                for part in parts {
                                    state.merge(aggregation, part);
                                }
                                state.trim(aggregation);
                                state
                            })
                            .collect(),
                        Some(_) => fold_blocks(definition, events, size),
                        None => std::mem::take(&mut smallest),
                    };
                    levels.push((size, states));
                }
                DefinitionTiles::over(definition, levels, shape)
            })
            .collect()
    }

    /// The tiles of `levels`, with running states at the finest level few
    /// enough to keep.
    fn over(
        definition: &SignalDefinition,
        levels: Vec<(usize, Vec<State>)>,
        shape: &TileShape,
    ) -> Self {
        let aggregation = &definition.aggregation;
        let grows = grows(aggregation);
        let max_prefixes = if grows {
            shape.max_map_prefixes
        } else {
            shape.max_prefixes
        };
        // Distinct counts' running states would each hold every value seen.
        let prefixes = levels
            .iter()
            .find(|(_, blocks)| blocks.len() <= max_prefixes)
            .filter(|_| !matches!(aggregation, Aggregation::DistinctCount(_)))
            .map(|(size, blocks)| {
                let mut running = State::empty(aggregation);
                let states = blocks
                    .iter()
                    .map(|block| {
                        running.merge(aggregation, block);
                        running.trim(aggregation);
                        match &running {
                            State::Set(marks) => Running::Marks(SortedMarks::of(marks)),
                            state => Running::State(state.clone()),
                        }
                    })
                    .collect();
                (*size, states)
            });
        DefinitionTiles {
            spec: definition.spec.clone(),
            levels,
            prefixes,
        }
    }

    /// Adds to `state` the matching events of `events` (the record the
    /// tiles were built over) with `from <= event_time < until`.
    pub fn fold(
        &self,
        definition: &SignalDefinition,
        events: &[Event],
        from: Millis,
        until: Millis,
        state: &mut State,
    ) {
        let marks = self.fold_leaving_marks(definition, events, Holes::NONE, from, until, state);
        if let Some(marks) = marks {
            marks.merge_into(state);
        }
    }

    /// Like [`DefinitionTiles::fold`], but leaving out the events at
    /// `holes`, and a set's running state is given back rather than
    /// merged, to be finished beside `state` ([`SortedMarks::members_with`]).
    pub fn fold_leaving_marks(
        &self,
        definition: &SignalDefinition,
        events: &[Event],
        holes: Holes<'_>,
        from: Millis,
        until: Millis,
        state: &mut State,
    ) -> Option<&SortedMarks> {
        let n = events.len();
        let mut marks = None;
        // Newest first: events at or after a time form a prefix of the slice.
        let mut lo = n - events.partition_point(|e| e.event_time >= from);
        let hi = n - events.partition_point(|e| e.event_time >= until);
        if let Some((size, prefixes)) = &self.prefixes {
            // A running state holds every event before its boundary, so it
            // serves only up to the first hole.
            let whole = holes.0.first().map_or(hi, |&hole| hole.min(hi)) / size;
            if lo == 0 && whole > 0 {
                match &prefixes[whole - 1] {
                    Running::State(running) => state.merge(&definition.aggregation, running),
                    Running::Marks(running) => marks = Some(running),
                }
                lo = whole * size;
            }
        }
        if lo < hi {
            self.fold_positions(self.levels.len(), lo, hi, definition, events, holes, state);
        }
        marks
    }

    /// Folds positions `lo..hi` but `holes` with the blocks of levels
    /// below `level`: a block holding a hole is folded from the level
    /// below it, down to raw events.
    #[allow(clippy::too_many_arguments)]
    fn fold_positions(
        &self,
        level: usize,
        lo: usize,
        hi: usize,
        definition: &SignalDefinition,
        events: &[Event],
        holes: Holes<'_>,
        state: &mut State,
    ) {
        let holes = holes.within(lo, hi);
        let Some(below) = level.checked_sub(1) else {
            let n = events.len();
            let mut fold_raw = |from: usize, until: usize| {
                for event in events[n - until..n - from]
                    .iter()
                    .filter(|e| definition.matches(e))
                {
                    state.add(&definition.aggregation, event);
                }
            };
            // Newest first, as the record keeps them, between the holes.
            let mut until = hi;
            for &hole in holes.0.iter().rev() {
                fold_raw(hole + 1, until);
                until = hole;
            }
            fold_raw(lo, until);
            return;
        };
        let (size, states) = &self.levels[below];
        let first = lo.div_ceil(*size);
        let last = hi / size;
        if first >= last {
            return self.fold_positions(below, lo, hi, definition, events, holes, state);
        }
        self.fold_positions(below, lo, first * size, definition, events, holes, state);
        let mut next = first;
        for &hole in holes.within(first * size, last * size).0 {
            let block = hole / size;
            if block < next {
                continue;
            }
            for whole in &states[next..block] {
                state.merge(&definition.aggregation, whole);
            }
            let (start, end) = (block * size, (block + 1) * size);
            self.fold_positions(below, start, end, definition, events, holes, state);
            next = block + 1;
        }
        for whole in &states[next..last] {
            state.merge(&definition.aggregation, whole);
        }
        self.fold_positions(below, last * size, hi, definition, events, holes, state);
    }

    /// How many states the blocks and running states hold.
    pub fn states(&self) -> usize {
        let prefixes = self.prefixes.as_ref().map_or(0, |(_, p)| p.len());
        self.levels
            .iter()
            .map(|(_, states)| states.len())
            .sum::<usize>()
            + prefixes
    }
}

/// Positions of a record's events (in time order: position `p` is
/// `events[n - 1 - p]`) that a fold leaves out, ascending: the events a
/// retraction hid after the batch ran. Blocks cannot take one event out,
/// so a block holding a hole is folded from the blocks below it, and raw
/// events only in the smallest block around each hole.
#[derive(Clone, Copy, Debug, Default)]
pub struct Holes<'a>(&'a [usize]);

impl<'a> Holes<'a> {
    pub const NONE: Holes<'static> = Holes(&[]);

    /// `positions`, which must be ascending with no repeats.
    pub fn new(positions: &'a [usize]) -> Holes<'a> {
        debug_assert!(positions.is_sorted_by(|a, b| a < b));
        Holes(positions)
    }

    /// The holes at `lo..hi`.
    fn within(self, lo: usize, hi: usize) -> Holes<'a> {
        let start = self.0.partition_point(|&p| p < lo);
        let end = start + self.0[start..].partition_point(|&p| p < hi);
        Holes(&self.0[start..end])
    }
}

/// The tiles of one record, built per definition on first use and shared
/// by every read of the record after that.
#[derive(Default)]
pub struct Tiles {
    shape: TileShape,
    built: RwLock<HashMap<String, Arc<TileCell>>>,
}

/// A definition's tiles once built (`None`: the record is not in order).
type TileCell = OnceLock<Option<Arc<DefinitionTiles>>>;

impl Tiles {
    pub fn with_shape(shape: TileShape) -> Tiles {
        Tiles {
            shape,
            built: RwLock::default(),
        }
    }

    /// `definition`'s tiles over `events` (the record's, newest first),
    /// built now if this is their first use; `None` when the record is too
    /// small to tile or not in order.
    pub fn for_definition(
        &self,
        definition: &SignalDefinition,
        events: &[Event],
    ) -> Option<Arc<DefinitionTiles>> {
        self.for_definitions(&[definition], events).pop().flatten()
    }

    /// [`for_definition`](Tiles::for_definition) of each of `definitions`;
    /// those not built yet are built together, in one pass over the events
    /// ([`DefinitionTiles::build_all`]).
    pub fn for_definitions(
        &self,
        definitions: &[&SignalDefinition],
        events: &[Event],
    ) -> Vec<Option<Arc<DefinitionTiles>>> {
        if events.len() < self.shape.min_events.max(1) {
            return vec![None; definitions.len()];
        }
        let cells: Vec<Arc<TileCell>> = definitions.iter().map(|d| self.cell(d)).collect();
        let unbuilt: Vec<usize> = (0..cells.len())
            .filter(|&i| cells[i].get().is_none())
            .collect();
        if unbuilt.len() > 1 && in_order(events) {
            let building: Vec<&SignalDefinition> =
                unbuilt.iter().map(|&i| definitions[i]).collect();
            let built = DefinitionTiles::build_all(&building, events, &self.shape);
            for (&i, tiles) in unbuilt.iter().zip(built) {
                // A concurrent first read may have set it: the same tiles.
                let _ = cells[i].set(Some(Arc::new(tiles)));
            }
        }
        definitions
            .iter()
            .zip(&cells)
            .map(|(definition, cell)| self.finish(definition, cell, events))
            .collect()
    }

    /// How many of `events` (the record's) a read of `definitions` would
    /// tile first: all of them when some definition's tiles are not built
    /// yet, else none.
    pub fn untiled(&self, definitions: &[&SignalDefinition], events: &[Event]) -> usize {
        if events.len() < self.shape.min_events.max(1) {
            return 0;
        }
        let built = self.built.read().unwrap_or_else(|p| p.into_inner());
        let unbuilt = definitions
            .iter()
            .any(|d| built.get(&d.name).is_none_or(|cell| cell.get().is_none()));
        if unbuilt {
            events.len()
        } else {
            0
        }
    }

    /// `definition`'s cell, made empty on its first use.
    fn cell(&self, definition: &SignalDefinition) -> Arc<TileCell> {
        let cell = {
            let built = self.built.read().unwrap_or_else(|p| p.into_inner());
            built.get(&definition.name).cloned()
        };
        match cell {
            Some(cell) => cell,
            None => {
                let mut built = self.built.write().unwrap_or_else(|p| p.into_inner());
                built.entry(definition.name.clone()).or_default().clone()
            }
        }
    }

    /// The tiles of `cell`, built now if they are not yet.
    fn finish(
        &self,
        definition: &SignalDefinition,
        cell: &TileCell,
        events: &[Event],
    ) -> Option<Arc<DefinitionTiles>> {
        // Concurrent first reads wait for one build instead of each doing it.
        let tiles = cell
            .get_or_init(|| {
                in_order(events)
                    .then(|| Arc::new(DefinitionTiles::build(definition, events, &self.shape)))
            })
            .clone()?;
        // A definition of the same name but other content (a test, or a
        // reload) is folded plainly rather than with blocks of another.
        (tiles.spec == definition.spec).then_some(tiles)
    }
}

/// Whether a record's `events` are newest first, as tiles need.
fn in_order(events: &[Event]) -> bool {
    events.is_sorted_by(|a, b| a.event_time >= b.event_time)
}

/// Tiles are derived from the record's events: a copy starts without them.
impl Clone for Tiles {
    fn clone(&self) -> Self {
        Tiles::with_shape(self.shape.clone())
    }
}

/// Tiles never make two records differ: they are derived from the events.
impl PartialEq for Tiles {
    fn eq(&self, _: &Tiles) -> bool {
        true
    }
}

impl std::fmt::Debug for Tiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.built.read().map_or(0, |b| b.len());
        f.debug_struct("Tiles")
            .field("shape", &self.shape)
            .field("definitions", &built)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::definition::Definitions;
    use crate::testing::arb_events;

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
            name = "cities_70"
            aggregation = "top_k"
            field = "attributes.city"
            limit = 2
            window = "70ms"
            [[signals]]
            name = "price_sum"
            aggregation = "sum"
            field = "attributes.price"
            [[signals]]
            name = "price_max_30"
            aggregation = "max"
            field = "attributes.price"
            window = "30ms"
            [[signals]]
            name = "items"
            aggregation = "distinct_count"
            field = "item_id"
            [[signals]]
            name = "first"
            aggregation = "first_seen"
            [[signals]]
            name = "last_active"
            aggregation = "last_seen"
            [[signals]]
            name = "sessions_50"
            aggregation = "session_count"
            gap = "7ms"
            window = "50ms"
            [[signals]]
            name = "session_minutes"
            aggregation = "session_minutes"
            gap = "7ms"
            window = "90ms"
            [[signals]]
            name = "current_session"
            aggregation = "current_session"
            gap = "7ms"
        "#;
        crate::testing::compile_definitions(text)
    }

    proptest! {
        /// Folding a window through blocks of any sizes gives the value of
        /// folding its events one by one, for every aggregation, any
        /// window edges and any events left out (holes).
        #[test]
        fn blocks_fold_like_the_events_one_by_one(
            events in arb_events(120),
            base in 1usize..6,
            fan_out in 2usize..4,
            from in -10i64..210,
            width in 0i64..220,
            prefixes in 0usize..40,
            max_blocks in 0usize..40,
            holes in prop::collection::vec(0usize..120, 0..8),
        ) {
            let until = from + width;
            let sizes = vec![base, base * fan_out, base * fan_out * fan_out];
            let shape = TileShape {
                sizes: sizes.clone(),
                map_sizes: sizes,
                min_events: 0,
                max_prefixes: prefixes,
                max_map_prefixes: prefixes,
                max_map_blocks: max_blocks,
            };
            let mut events = events;
            events.sort_by_key(|e| std::cmp::Reverse(e.event_time));
            let n = events.len();
            let mut holes: Vec<usize> = holes.into_iter().filter(|&p| p < n).collect();
            holes.sort_unstable();
            holes.dedup();
            for definition in definitions().iter() {
                let tiles = DefinitionTiles::build(definition, &events, &shape);
                let mut tiled = State::empty(&definition.aggregation);
                let marks = tiles.fold_leaving_marks(
                    definition, &events, Holes::new(&holes), from, until, &mut tiled,
                );
                if let Some(marks) = marks {
                    marks.merge_into(&mut tiled);
                }
                let mut plain = State::empty(&definition.aggregation);
                for (_, event) in events.iter().enumerate().filter(|(i, e)| {
                    !holes.contains(&(n - 1 - i))
                        && definition.matches(e)
                        && e.event_time >= from
                        && e.event_time < until
                }) {
                    plain.add(&definition.aggregation, event);
                }
                prop_assert_eq!(
                    definition.value(&tiled, until),
                    definition.value(&plain, until),
                    "{} over [{}, {})", definition.name, from, until
                );
            }
        }
    }

    #[test]
    fn small_or_unordered_records_are_not_tiled_nor_changed_definitions_served_old_blocks() {
        let defs = definitions();
        let recent = defs.get("recent").expect("defined");
        let mut events: Vec<Event> = (0..8)
            .rev()
            .map(|i| {
                crate::testing::event(&format!("e{i}"), signals_schemas::EventType::View, "a", i)
            })
            .collect();
        let shape = |min_events| TileShape {
            sizes: vec![2, 4],
            map_sizes: vec![2, 4],
            min_events,
            max_prefixes: 4,
            max_map_prefixes: 4,
            max_map_blocks: usize::MAX,
        };
        assert!(Tiles::with_shape(shape(9))
            .for_definition(recent, &events)
            .is_none());
        let tiles = Tiles::with_shape(shape(8));
        let built = tiles.for_definition(recent, &events).expect("tiled");
        assert_eq!(built.states(), 4 + 2 + 4);
        let mut changed = recent.spec.clone();
        changed.limit = Some(5);
        let changed = Definitions::compile(&[changed]).expect("valid");
        let changed = changed.get("recent").expect("defined");
        assert!(tiles.for_definition(changed, &events).is_none());

        events.swap(0, 7);
        assert!(Tiles::with_shape(shape(8))
            .for_definition(recent, &events)
            .is_none());
    }
}
